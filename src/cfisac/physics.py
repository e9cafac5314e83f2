"""The physics kernel of the estimators and front ends: sensing grid, Eq. (6) phases, inverse bistatic geometry.

Everything here is PyTorch, batched over leading dimensions and device-agnostic (the device and dtype of the inputs
are kept; float64 / complex128 unless the caller passes otherwise). The forward geometry (Eq. 7-11) and the
steering vectors (Eq. 1-2) are :mod:`cfisac.geometry`; this module adds what the receivers need to invert them.

Conventions (one place, pinned by ``tests/test_physics.py``):

- Steering vectors, Eq. (1)-(2): element k of a ULA has phase ``-2 pi k (d / lambda) cos(angle)``, normalised by
  ``1 / sqrt(n)``; ``cos(angle) = axis . e`` with ``e`` the unit vector from the AP to the point. Sionna's
  ``ULA`` places element k at ``+k d`` along its axis and uses ``exp(+j 2 pi k d / lambda . e)``: our receive array
  is therefore Sionna's with the elements running along ``-axis`` (equivalently: its axis reversed), our transmit
  precoding applies ``a_t^H`` (Eq. 3-6) so the transmit elements run along ``+axis``.
- Eq. (6) phase of a path of bistatic range ``d`` (m) and bistatic Doppler ``f`` (Hz) at absolute subcarrier index
  ``i`` and absolute symbol index ``t`` (:func:`cfisac.sensing.sensing_indices`): ``exp(-j 2 pi i d df / c)`` times
  ``exp(+j 2 pi t f dT)``. Doppler is ``f = (v . e_tx + v . e_rx) / lambda``: **positive for a receding target**
  (the paper's Eq. 9 sign), the opposite of 3GPP TR 38.901 / Sionna, where an approaching target has positive
  Doppler.
- The users' downlink channel applies ``conj(h)`` (``y_k = h_k^H W s``, Eq. 3), as Sionna's ``h^H`` convention.

Inverse geometry: a receive AP measures the AoA cosine ``u`` (a ray from the AP, on the side of its array that faces
the area, :func:`ray_side`) and per transmit AP a bistatic range ``d``; the point is where the ray cuts the bistatic
ellipse (:func:`ray_distance`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import SPEED_OF_LIGHT, SystemConfig
from .geometry import steering_vectors

__all__ = [
    "ApLayout", "SensingGrid", "aoa_direction", "delay_phase", "direction_cosine", "doppler_phase", "path_phase",
    "ray_distance", "ray_exit", "ray_side", "steering_vectors", "transmit_beam", "wrap_cosine",
]

TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class SensingGrid:
    """The sensing comb of a config on a device: absolute indices and the resolution figures.

    ``i_abs`` [Ns] / ``t_abs`` [Ts] float64: absolute subcarrier / symbol indices of the comb (``i = s_f i'``,
    ``t = 1 + s_t t'``); ``range_res`` (m), ``doppler_res`` (Hz), ``velocity_res`` (m/s of a bistatic Doppler) and
    ``u_res`` (receive direction cosine) are the Rayleigh cells; ``spacing`` is d / lambda.
    """

    i_abs: torch.Tensor
    t_abs: torch.Tensor
    subcarrier_stride: int
    symbol_stride: int
    df: float
    dT: float
    fc: float
    wavelength: float
    spacing: float
    range_res: float
    doppler_res: float
    velocity_res: float
    u_res: float
    unambiguous_range: float
    unambiguous_doppler: float
    max_doppler: float

    @classmethod
    def from_config(cls, cfg: SystemConfig, device: torch.device | str = "cpu") -> SensingGrid:
        i = torch.arange(cfg.n_subcarriers, dtype=torch.float64, device=device) * cfg.subcarrier_stride
        t = 1.0 + torch.arange(cfg.n_symbols, dtype=torch.float64, device=device) * cfg.symbol_stride
        res = cfg.resolution()
        return cls(
            i_abs=i, t_abs=t, subcarrier_stride=cfg.subcarrier_stride, symbol_stride=cfg.symbol_stride,
            df=cfg.subcarrier_spacing, dT=cfg.symbol_duration, fc=cfg.carrier_frequency, wavelength=cfg.wavelength,
            spacing=cfg.antenna_spacing, range_res=res["range_resolution_m"],
            doppler_res=res["doppler_resolution_hz"], velocity_res=res["velocity_resolution_mps"],
            u_res=1.0 / (cfg.n_rx_antennas * cfg.antenna_spacing), unambiguous_range=res["unambiguous_range_m"],
            unambiguous_doppler=res["unambiguous_doppler_hz"], max_doppler=res["max_doppler_hz"],
        )

    @property
    def device(self) -> torch.device:
        return self.i_abs.device


def delay_phase(grid: SensingGrid, d: torch.Tensor) -> torch.Tensor:
    """``exp(-j 2 pi i d df / c)`` of Eq. (6) for bistatic ranges ``d`` [...] (m, float64): [..., Ns] complex128."""
    return torch.polar(torch.ones((), dtype=d.dtype, device=d.device),
                       (-TWO_PI * grid.df / SPEED_OF_LIGHT) * d[..., None] * grid.i_abs)


def doppler_phase(grid: SensingGrid, f: torch.Tensor) -> torch.Tensor:
    """``exp(+j 2 pi t f dT)`` of Eq. (6) for bistatic Dopplers ``f`` [...] (Hz, float64): [..., Ts] complex128."""
    return torch.polar(torch.ones((), dtype=f.dtype, device=f.device), (TWO_PI * grid.dT) * f[..., None] * grid.t_abs)


def path_phase(grid: SensingGrid, d: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """The delay-Doppler factor of one path in Eq. (6): [..., Ns, Ts] complex128 for ``d``, ``f`` [...]."""
    return delay_phase(grid, d)[..., :, None] * doppler_phase(grid, f)[..., None, :]


def transmit_beam(x_n: torch.Tensor, u_tx: torch.Tensor, spacing: float) -> torch.Tensor:
    """The symbols ``b[i, t] = a_t^H(u_tx) x_{i,n}[t]`` a point at AoD cosine ``u_tx`` sees from one transmit AP.

    ``x_n`` [B, Nt, Ns, Ts] complex, ``u_tx`` [B, K] float64 -> [B, K, Ns, Ts] in the dtype of ``x_n``.
    """
    a = steering_vectors(u_tx, x_n.shape[1], spacing, x_n.dtype)  # [B, K, Nt]
    return torch.einsum("bkl,blit->bkit", a.conj(), x_n)


def direction_cosine(points: torch.Tensor, ap: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """``axis . (g - ap) / ||g - ap||`` for points [..., 2] and an AP / axis broadcastable to [..., 2]: [...]."""
    diff = points - ap
    return (diff * axis).sum(-1) / torch.linalg.vector_norm(diff, dim=-1).clamp_min(1e-9)


def ray_side(ap: torch.Tensor, axis: torch.Tensor, area: tuple[tuple[float, float], tuple[float, float]],
             ) -> torch.Tensor:
    """Which half-plane of a ULA faces the area: +1 / -1 along ``perp = (-axis_y, axis_x)``, for APs [A, 2].

    A ULA measures only ``u = cos(angle)``; its front / back ambiguity is resolved by the known area (the side of the
    area's centre).
    """
    (x0, x1), (y0, y1) = area
    centre = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2], dtype=ap.dtype, device=ap.device)
    perp = torch.stack([-axis[..., 1], axis[..., 0]], -1)
    s = (perp * (centre - ap)).sum(-1)
    return torch.where(s >= 0, 1.0, -1.0).to(ap.dtype)


def aoa_direction(u: torch.Tensor, axis: torch.Tensor, side: torch.Tensor | float) -> torch.Tensor:
    """Unit vectors ``e`` [..., 2] with ``axis . e = u`` on ``side`` of the array (``u`` clipped to [-1, 1]).

    ``axis`` [..., 2] and ``side`` [...] broadcast against ``u`` [...].
    """
    u = u.clamp(-1.0, 1.0)
    s = side * torch.sqrt((1.0 - u**2).clamp_min(0.0))
    perp = torch.stack([-axis[..., 1], axis[..., 0]], -1)
    return u[..., None] * axis + s[..., None] * perp


def ray_distance(d: torch.Tensor, rx: torch.Tensor, e: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
    """Distance ``rho`` along the AoA ray ``rx + rho e`` at which the bistatic range to ``tx`` is ``d``: [...].

    Closed form of ``rho + ||rx + rho e - tx|| = d``: ``rho = (d^2 - |w|^2) / (2 (d + w . e))``, ``w = rx - tx``
    (``rho = d / 2`` for a co-located AP); non-physical ``d < |w|`` give ``rho <= 0``, clipped to 0. ``rx``, ``tx``,
    ``e`` [..., 2] broadcast against ``d`` [...].
    """
    w = rx - tx
    den = 2.0 * (d + (e * w).sum(-1))
    den = torch.where(den.abs() < 1e-12, torch.full_like(den, 1e-12), den)
    return ((d**2 - (w * w).sum(-1)) / den).clamp_min(0.0)


def ray_exit(start: torch.Tensor, e: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Largest ``rho >= 0`` with ``start + rho e`` inside the box [lower, upper], for rays [..., 2]: [...].

    0 when the ray misses the box.
    """
    small = e.abs() < 1e-12
    safe = torch.where(small, torch.ones_like(e), e)
    a, b = (lower - start) / safe, (upper - start) / safe
    inside = (start >= lower - 1e-9) & (start <= upper + 1e-9)
    inf = torch.full_like(a, math.inf)
    lo = torch.where(small, torch.where(inside, -inf, inf), torch.minimum(a, b))
    hi = torch.where(small, torch.where(inside, inf, -inf), torch.maximum(a, b))
    t_lo = lo.amax(-1).clamp_min(0.0)
    t_hi = hi.amin(-1)
    return torch.where(t_hi >= t_lo, t_hi.clamp_min(0.0), torch.zeros_like(t_hi))


def wrap_cosine(du: torch.Tensor, spacing: float) -> torch.Tensor:
    """Wrap a direction-cosine difference into one period ``[-1/(2 spacing), 1/(2 spacing))`` of the ULA phase."""
    period = 1.0 / spacing
    return torch.remainder(du + period / 2, period) - period / 2


@dataclass(frozen=True)
class ApLayout:
    """AP positions / axes [N or M, 2], the receive arrays' sides [M] (:func:`ray_side`) and the area box [2]."""

    tx: torch.Tensor
    rx: torch.Tensor
    tx_axes: torch.Tensor
    rx_axes: torch.Tensor
    rx_side: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor

    @classmethod
    def from_config(cls, cfg: SystemConfig, device: torch.device | str = "cpu") -> ApLayout:
        kw = dict(dtype=torch.float64, device=device)
        rx = torch.tensor(cfg.rx_positions, **kw)
        rx_axes = torch.tensor(cfg.rx_axes, **kw)
        (x0, x1), (y0, y1) = cfg.area
        return cls(tx=torch.tensor(cfg.tx_positions, **kw), rx=rx, tx_axes=torch.tensor(cfg.tx_axes, **kw),
                   rx_axes=rx_axes, rx_side=ray_side(rx, rx_axes, cfg.area), lower=torch.tensor([x0, y0], **kw),
                   upper=torch.tensor([x1, y1], **kw))
