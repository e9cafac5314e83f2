"""Physics-aware AP front ends: what a receive AP feeds its encoder instead of (or as) Re/Im of Y_m.

Every front end maps the echoes of one receive AP, ``y_m`` [B, Mr, Ns, Ts] complex (Eq. 6), and, when it needs them,
the transmit signals ``x`` [B, N, Nt, Ns, Ts] complex (Eq. 3), to a real float32 tensor [B, C, D1, D2, D3] for the
3D-CNN encoder of Fig. 3. Its shape is fixed by the config and the options alone (``output_shape``), so the encoder
(and with it the fronthaul message length L = D1 D2 D3 / 8^L_cnn) is known before any data is seen. This module
holds the front-end registry (``register_front_end``, ``make_front_end``; :mod:`cfisac.models.front_end` re-exports
it for ``ModelConfig(front_end=..., front_end_options=...)``), the paper's ``"raw"`` input and:

``"matched"`` -- transmit-beam matched filter + angle-delay-Doppler transform. Needs X at the receive AP.
    The CPU already sends the precoded data x_{i,n}[t] to every transmit AP (Section II-B: centralised MMSE
    precoding); this front end assumes the CPU also sends it to the receive APs. That downlink is NOT part of the
    AP -> CPU fronthaul message the paper counts (Section III-D); the fronthaul table must list it separately:
    N Nt Ns Ts complex values per update (64 N Nt Ns Ts bits as complex64: 134 Mbit at the paper preset, more than
    the centralized uplink), or, far cheaper, the users' 16-QAM symbols (4 K Ns Ts bits) and the precoders
    (64 N Nt K Ns bits per frame) from which the AP rebuilds x_{i,n}[t] = W_{i,n} c_i[t] (3.1 Mbit at the paper
    preset).
    For each transmit AP n and each of ``tx_beams`` (Nb) fixed transmit beams with cos c_b (a shifted DFT grid,
    c_b = -1 + (2b + 1) / Nb: orthogonal beams when Nb = Nt and d = lambda/2), the beam's transmitted signal is

        s_{n,b}[i, t] = a_t(c_b)^H x_{i,n}[t]                                  (a_t of Eq. 1, unit norm)

    and the matched-filter map of receive AP m is (receive angle a, bistatic range r_k, bistatic Doppler f_l)

        F_{n,b}[a, k, l] = 1 / sqrt(Ns Ts) sum_{i', t'} a_r(c_a)^H y_{i,m}[t] conj(s_{n,b}[i, t])
                           e^{+j 2 pi i df r_k / c} e^{-j 2 pi t f_l dT}

    at the absolute comb indices i = subcarrier_stride i', t = 1 + symbol_stride t' (:func:`cfisac.sensing.
    sensing_indices`). For one path of Eq. (6), y_{i,m}[t] = g a_r(c_m) e^{-j 2 pi (i tau df - t f_D dT)}
    a_t(c_n)^H x_{i,n}[t], the product y conj(s) removes the data symbols wherever c_b is near c_n, the
    delay / Doppler sums undo the phases of Eq. (6) with the paper's signs, and |F| peaks at c_a = c_m,
    r_k = c tau (the bistatic range d_n + d_m), f_l = f_D. The delay and Doppler sums are zero-padded DFTs
    evaluated on a zoomed grid ("infinitely zero-padded", i.e. the DTFT sampled where targets can be): ``delay_bins``
    (D2) bistatic ranges evenly spanning [d_min - dr, d_max + dr] and ``doppler_bins`` (D3) bistatic velocities
    f_l c / fc evenly spanning [-w - dv, w + dv], with d_min / d_max the extreme bistatic ranges and w the largest
    bistatic speed v . (e_n + e_m) over the area and the velocity box, dr / dv the range / velocity resolution
    (capped at the unambiguous intervals). The receive antennas go to ``angle_bins`` (D1) receive beams
    c_a = -1 + (2a + 1) / D1 (``angle_transform=False`` keeps the antennas: D1 = Mr, no angle transform).
    Defaults D1, D2, D3 = Mr, Ns, Ts: the same grid as ``"raw"``, hence the same encoder, the same L and the same
    fronthaul bits per update. Output ``"magnitude"`` (default): C = N Nb channels |F_{n,b}|, channel n Nb + b.
    The reflection coefficient beta (Eq. 6) has a uniformly random phase, so the phase of a peak carries no
    information about the target; the magnitude is the natural sufficient statistic for peak positions and halves
    the input. ``"complex"``: C = 2 N Nb channels, (Re, Im) of F_{n,b} at channels 2 (n Nb + b) + (0, 1).
    ``beam_pool="max"`` (resp. ``"rms"``) pools the magnitudes over the Nb transmit beams of each transmit AP,
    C = N: the angle of departure is dropped (the AoA and the bistatic ranges already fix the location), the peak
    energy is kept, and the encoder's first layer costs the same as for ``"raw"`` (2 channels at N = 2).

``"covariance"`` -- X-free, second-order only: receive-beamspace energies per block of subcarriers and symbols,

        E[a, u, w] = mean_{i' in block u, t' in block w} |a_r(c_a)^H y_{i,m}[t]|^2,

    [B, 1, D1, Ns / block[0], Ts / block[1]]. It shows what the encoder can learn without X: angles of arrival and
    path energies, but no delay and no Doppler (independent data symbols make E[y_i[t] y_i'[t']^*] = 0 off the
    diagonal cell, so second-order statistics of Y_m carry no delay / Doppler phase).

Normalisation (``norm``, as for ``"raw"``; nothing label-dependent is used, only the AP's own inputs and the
known noise power xi^2 of the config):

- ``"noise"``: the map is divided by the standard deviation of its noise-only part. With the unitary scaling
  above, the noise z ~ CN(0, xi^2 I) gives F_{n,b} ~ CN(0, xi^2 mean_{i,t} |s_{n,b}[i,t]|^2) in every bin,
  given x; dividing by that (computed from the AP's own x) makes noise-only bins unit-variance at every
  transmit power while a peak reads sqrt(integrated SNR) of its path. For ``"covariance"`` the energies are
  divided by xi^2 (noise-only mean 1).
- ``"rms"``: divided by the per-sample root-mean-square of the complex map (resp. the mean energy), over all
  channels and bins. Noise dominates the RMS of a sparse map, so this is close to ``"noise"`` without needing xi^2.
- ``"none"``: the values in the units of the echoes (V^2-like, ~1e-8 at 30 dBm).

``compress="log"`` optionally applies log1p to the (non-negative) magnitudes / energies, bounding the dynamic range
of peaks across transmit powers; ``"none"`` (default) keeps the linear matched-filter magnitude.

All computations are batched matmuls over chunks of scenes -- and, for the pixel front ends, of pixels -- whose
largest intermediate stays under ``chunk_cells`` complex cells (bounded memory); on a CPU the chunk is further capped
at the cache-sized ``FAST_CHUNK_CELLS``, which only changes the speed (at the quick preset: one scene per chunk for
``"matched"``, whose per-scene matmuls are already large, 8 scenes x 32 pixels for the pixel front ends). complex64
arithmetic (complex128 if y is complex128), float32 output, on the device of y. The constant matrices (beams, delay
and Doppler phases, the pixels' velocity phases when small) are non-persistent complex128 buffers built once (they
follow ``.to(device)`` and are not written to checkpoints); their casts to the working dtype / device are cached.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .config import SPEED_OF_LIGHT, SystemConfig
from .geometry import bistatic_geometry, steering_vectors
from .sensing import sensing_indices

__all__ = [
    "FRONT_ENDS", "NORMS", "CovarianceFrontEnd", "FrontEnd", "ImageFrontEnd", "MatchedFrontEnd", "RawFrontEnd",
    "VelocityImageFrontEnd", "area_extent", "available_front_ends", "complex_to_channels", "create_front_end",
    "front_end_output_shape", "make_front_end", "register_front_end",
]

DEFAULT_CHUNK_CELLS = 2**23  # memory bound: complex cells of a chunk's largest intermediate (64 MB in complex64)
FAST_CHUNK_CELLS = 2**18  # cache-sized working chunk (2 MB in complex64); smaller than the bound, faster on a CPU
VELOCITY_PHASE_CELLS = 2**22  # the velocity image keeps its pixels' velocity phases as buffers up to this size
NORMS = ("rms", "noise", "none")
_COMPRESS = ("none", "log")
FrontEndFactory = Callable[..., "FrontEnd"]
FRONT_ENDS: dict[str, FrontEndFactory] = {}


# --------------------------------------------------------------------------------------------------- registry
def register_front_end(name: str) -> Callable[[FrontEndFactory], FrontEndFactory]:
    """Decorator registering ``factory(cfg, *, norm, **options) -> FrontEnd`` under ``name``."""

    def deco(factory: FrontEndFactory) -> FrontEndFactory:
        FRONT_ENDS[name] = factory
        return factory

    return deco


def available_front_ends() -> list[str]:
    return sorted(FRONT_ENDS)


def make_front_end(name: str, cfg: SystemConfig, *, norm: str = "rms", ap_index: int | None = None,
                   **options: Any) -> FrontEnd:
    """Build the registered front end ``name`` for ``cfg``. ``ap_index`` (the receive AP m) is handed to factories
    that take it (front ends specific to their AP, e.g. ``"image"``) and ignored by the others."""
    if name not in FRONT_ENDS:
        raise ValueError(f"unknown front end {name!r}; choose one of {sorted(FRONT_ENDS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown input normalisation {norm!r}; choose one of {list(NORMS)}")
    factory = FRONT_ENDS[name]
    if ap_index is not None and "ap_index" in inspect.signature(factory).parameters:
        options["ap_index"] = ap_index
    return factory(cfg, norm=norm, **options)


def create_front_end(name: str, cfg: SystemConfig, *, norm: str = "noise", ap_index: int | None = None,
                     **options: Any) -> FrontEnd:
    """Build the front end ``name`` ("raw", "matched", "image", "covariance", ...) for ``cfg``: :func:`make_front_end`
    with the ``"noise"`` normalisation by default, plus ``ap_index`` (the receive AP m), handed only to factories
    that take it (``"image"`` needs it; ``"raw"`` does not know it). The object has ``name``, ``in_channels``,
    ``spatial_shape``, ``output_shape`` ((C, D1, D2, D3) of one sample), ``needs_x`` and is called as ``fe(y_m, x)``.
    """
    return make_front_end(name, cfg, norm=norm, ap_index=ap_index, **options)


def front_end_output_shape(name: str, cfg: SystemConfig, **options: Any) -> tuple[int, int, int, int]:
    """(C, D1, D2, D3) of one sample of front end ``name`` for ``cfg`` (no data needed)."""
    return create_front_end(name, cfg, **options).output_shape


class FrontEnd(nn.Module):
    """Base class: subclasses set ``name``, ``needs_x``, ``in_channels``, ``spatial_shape`` and ``forward``."""

    name: str = "base"
    needs_x: bool = False
    in_channels: int
    spatial_shape: tuple[int, int, int]

    def transform(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return self(y_m, x)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """(C, D1, D2, D3) of one sample."""
        return (self.in_channels, *self.spatial_shape)

    @property
    def needs_transmit_signals(self) -> bool:
        return self.needs_x

    def _const(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Buffer ``name`` cast to the working dtype of ``like`` (complex, or the matching real) on its device; the
        cast is cached until the buffer is replaced (``.to()`` replaces it)."""
        buf = getattr(self, name)
        dtype = like.dtype if buf.is_complex() else like.real.dtype
        cache = self.__dict__.setdefault("_cast_cache", {})
        key = (name, dtype, like.device)
        hit = cache.get(key)
        if hit is None or hit[0] is not buf:
            hit = cache[key] = (buf, buf.to(device=like.device, dtype=dtype))
        return hit[1]


def complex_to_channels(v: torch.Tensor, *, norm: str, noise_std: float = 1.0) -> torch.Tensor:
    """[B, *S] complex -> [B, 2, *S] float32 (Re, Im), normalised per sample as ``norm`` says (models.front_end)."""
    v = v.to(torch.complex64) if v.dtype != torch.complex128 else v
    if norm == "rms":
        dims = tuple(range(1, v.dim()))
        rms = v.abs().pow(2).mean(dim=dims, keepdim=True).sqrt().clamp_min(1e-30)
        v = v / rms * math.sqrt(2.0)
    elif norm == "noise":
        v = v / noise_std
    elif norm != "none":
        raise ValueError(f"unknown input normalisation {norm!r}; choose one of {list(NORMS)}")
    return torch.stack([v.real, v.imag], dim=1).float()


class RawFrontEnd(FrontEnd):
    """The paper's input (Section III-A): Re/Im of Y_m [B, Mr, Ns, Ts] -> [B, 2, Mr, Ns, Ts], normalised."""

    name = "raw"
    needs_x = False

    def __init__(self, cfg: SystemConfig, *, norm: str = "rms") -> None:
        super().__init__()
        self.norm, self.noise_std = norm, math.sqrt(cfg.noise_watt)
        self.in_channels = 2
        self.spatial_shape = (cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols)

    def forward(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        if not y_m.is_complex() or y_m.dim() != 4 or tuple(y_m.shape[1:]) != self.spatial_shape:
            raise ValueError(f"y_m must be complex [B, Mr, Ns, Ts] = [B, {', '.join(map(str, self.spatial_shape))}],"
                             f" got {y_m.dtype} {tuple(y_m.shape)}")
        return complex_to_channels(y_m, norm=self.norm, noise_std=self.noise_std)


@register_front_end("raw")
def _raw(cfg: SystemConfig, *, norm: str = "rms") -> RawFrontEnd:
    return RawFrontEnd(cfg, norm=norm)


# --------------------------------------------------------------------------------------------------- helpers
def area_extent(cfg: SystemConfig, *, points_per_axis: int = 101) -> dict[str, float]:
    """Extreme bistatic range and bistatic speed a target in the area can produce, over every (n, m) pair.

    Returns ``min_range`` / ``max_range`` (m) of d_n + d_m and ``max_bistatic_speed`` (m/s), the largest
    |v . (e_n + e_m)| over the area and the velocity box |v_x|, |v_y| <= max_speed, which is
    max_speed (|u_x| + |u_y|) for u = e_n + e_m. Evaluated on a ``points_per_axis``^2 grid of the area (edges
    included): the range extremes of a smooth function on a fine grid, accurate to well under a resolution cell.
    Cached per (config, points_per_axis).
    """
    return dict(_area_extent(cfg, points_per_axis))


@functools.lru_cache(maxsize=32)
def _area_extent(cfg: SystemConfig, points_per_axis: int) -> dict[str, float]:
    with torch.device("cpu"):  # also inside a meta-device context (parameter counting without allocation)
        return _area_extent_cpu(cfg, points_per_axis)


def _area_extent_cpu(cfg: SystemConfig, points_per_axis: int) -> dict[str, float]:
    (x0, x1), (y0, y1) = cfg.area
    gx = torch.linspace(x0, x1, points_per_axis, dtype=torch.float64)
    gy = torch.linspace(y0, y1, points_per_axis, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(gx, gy, indexing="ij"), -1).reshape(1, -1, 2)
    aps = torch.tensor(cfg.tx_positions + cfg.rx_positions, dtype=torch.float64)
    # Drop grid points on top of an AP (angle undefined there); they cannot host a target either.
    keep = (torch.linalg.vector_norm(pts[0, :, None] - aps, dim=-1) > 1e-6).all(-1)
    pts = pts[:, keep]
    geo = bistatic_geometry(cfg, pts, torch.zeros_like(pts))
    u = geo.tx.direction[:, :, None] + geo.rx.direction[:, None, :]  # [1, N, M, P, 2]
    return {
        "min_range": float(geo.bistatic_range.min()),
        "max_range": float(geo.bistatic_range.max()),
        "max_bistatic_speed": float(cfg.max_speed * u.abs().sum(-1).max()),
    }


def _centred_grid(n: int) -> torch.Tensor:
    """n cosines -1 + (2k + 1) / n, k = 0..n-1 (a shifted DFT grid, symmetric about broadside), float64."""
    return -1.0 + (2.0 * torch.arange(n, dtype=torch.float64) + 1.0) / n


def _check_bins(name: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def _check_y(y_m: torch.Tensor, shape: tuple[int, int, int]) -> None:
    if not isinstance(y_m, torch.Tensor) or not y_m.is_complex():
        raise ValueError("y_m must be a complex torch.Tensor [B, Mr, Ns, Ts]")
    if y_m.dim() != 4 or tuple(y_m.shape[1:]) != shape or y_m.shape[0] == 0:
        raise ValueError(f"y_m must be complex [B, Mr, Ns, Ts] = [B, {', '.join(map(str, shape))}] with B >= 1, "
                         f"got {tuple(y_m.shape)}")


def _check_options(norm: str, compress: str, chunk_cells: int) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown input normalisation {norm!r}; choose one of {list(NORMS)}")
    if compress not in _COMPRESS:
        raise ValueError(f"compress must be one of {list(_COMPRESS)}, got {compress!r}")
    _check_bins("chunk_cells", chunk_cells)


def _velocity_grid(cfg: SystemConfig, d3: int) -> torch.Tensor:
    """D3 bistatic velocities (m/s) evenly spanning +-(largest bistatic speed + one resolution cell), within the
    unambiguous Doppler interval; float64."""
    res, ext = cfg.resolution(), area_extent(cfg)
    v_amb = res["unambiguous_doppler_hz"] * SPEED_OF_LIGHT / cfg.carrier_frequency
    v_hi = min(v_amb, ext["max_bistatic_speed"] + res["velocity_resolution_mps"])
    if d3 == 1:
        return torch.zeros(1, dtype=torch.float64)
    return torch.linspace(-v_hi, v_hi, d3, dtype=torch.float64)


def _doppler_matrix(cfg: SystemConfig, vels: torch.Tensor) -> torch.Tensor:
    """e^{-j 2 pi t f_l dT} / sqrt(Ts), f_l = v_l fc / c, t the absolute symbol indices: [D3, Ts] complex128."""
    _, t_idx = sensing_indices(cfg)
    fd = vels * cfg.carrier_frequency / SPEED_OF_LIGHT
    phase = -2 * math.pi * cfg.symbol_duration * fd[:, None] * t_idx[None]
    return torch.polar(torch.ones_like(phase), phase) / math.sqrt(cfg.n_symbols)


def _abs2(v: torch.Tensor) -> torch.Tensor:
    """|v|^2 of a complex tensor as re^2 + im^2 (one fused multiply-add; 5x cheaper than complex abs or a sum over
    the real view on the CPU)."""
    re = v.real
    return torch.addcmul(re * re, v.imag, v.imag)


def _linear_phases(u: torch.Tensor, v: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """e^{j u_g v_l phi_t} [g, V, Ts] complex128 from u [g], v [V], phi [Ts] (float64), as cos + j sin (2x cheaper
    than torch.polar on a CPU)."""
    ang = u[:, None, None] * v[None, :, None] * phi
    return torch.complex(torch.cos(ang), torch.sin(ang))


def _working_cells(chunk_cells: int, device: torch.device) -> int:
    """Complex cells of a chunk's largest intermediate: ``chunk_cells`` (the memory bound), on a CPU at most the
    cache-sized ``FAST_CHUNK_CELLS`` (larger chunks only add cache misses there)."""
    return min(chunk_cells, FAST_CHUNK_CELLS) if device.type == "cpu" else chunk_cells


def _beam_power(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mean_{i,t} |s[i, t]|^2 of every beam signal s = sum_k weights[..., k] x[:, k, i, t], as the quadratic form
    w^T R w^* with R = mean_{i,t} x x^H the sample covariance of x [b, Nt, Ns, Ts] (O(Nt^2 Ns Ts) once instead of
    touching every beam signal). ``weights`` [..., Nt] -> [b, ...] real."""
    xf = x.reshape(x.shape[0], x.shape[1], -1)
    cov = torch.matmul(xf, xf.mH) / xf.shape[-1]  # [b, Nt, Nt]
    w = weights.reshape(-1, weights.shape[-1])  # [P, Nt]
    p = torch.einsum("pk,bkl,pl->bp", w, cov, w.conj()).real.clamp_min(0.0)
    return p.reshape(x.shape[0], *weights.shape[:-1])


def _check_x(x: Any, shape: tuple[int, int, int, int], batch: int, name: str) -> None:
    if x is None:
        raise ValueError(f"the {name!r} front end needs the transmit signals x [B, N, Nt, Ns, Ts]: the receive AP "
                         "must receive them from the CPU (see cfisac.front_ends)")
    if not isinstance(x, torch.Tensor) or not x.is_complex() or x.dim() != 5 or tuple(x.shape[1:]) != shape \
            or x.shape[0] != batch:
        raise ValueError(f"x must be complex [B, N, Nt, Ns, Ts] = [{batch}, {', '.join(map(str, shape))}] like "
                         f"y_m's batch, got {getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")


def _matched_constants(
    cfg: SystemConfig, nb: int, shape: tuple[int, int, int], angle_transform: bool
) -> tuple[dict[str, torch.Tensor | None], dict[str, torch.Tensor]]:
    """Grids (physical axes, float64) and transform matrices (complex128) of :class:`MatchedFrontEnd`."""
    d1, d2, d3 = shape
    c, df = SPEED_OF_LIGHT, cfg.subcarrier_spacing
    res, ext = cfg.resolution(), area_extent(cfg)
    r_lo = max(0.0, ext["min_range"] - res["range_resolution_m"])
    r_hi = min(res["unambiguous_range_m"], ext["max_range"] + res["range_resolution_m"])
    cos_tx = _centred_grid(nb)
    cos_rx = _centred_grid(d1) if angle_transform else None
    f64 = torch.float64
    ranges = torch.linspace(r_lo, r_hi, d2, dtype=f64) if d2 > 1 else torch.tensor([(r_lo + r_hi) / 2], dtype=f64)
    vels = _velocity_grid(cfg, d3)
    grid = {"cos_tx": cos_tx, "cos_rx": cos_rx, "bistatic_range": ranges, "bistatic_velocity": vels}
    i_idx, _ = sensing_indices(cfg)
    one = torch.ones((), dtype=f64)
    cdt = torch.complex128  # kept in double; cast to the working precision at use (small matrices)
    # Transmit beams: s = a_t(c_b)^H x -> weights conj(a_t(c_b)) [Nb, Nt].
    beams = steering_vectors(cos_tx, cfg.n_tx_antennas, cfg.antenna_spacing, cdt).conj()
    # Receive beams: a_r(c_a)^H y -> [D1, Mr] (identity when the antennas are kept).
    rx = (steering_vectors(cos_rx, cfg.n_rx_antennas, cfg.antenna_spacing, cdt).conj()
          if cos_rx is not None else torch.eye(cfg.n_rx_antennas, dtype=cdt))
    # Delay: e^{+j 2 pi i df r_k / c} / sqrt(Ns) [D2, Ns]; Doppler: e^{-j 2 pi t f_l dT} / sqrt(Ts) [D3, Ts].
    delay = torch.polar(one, 2 * math.pi * df / c * ranges[:, None] * i_idx[None]) / math.sqrt(cfg.n_subcarriers)
    dop = _doppler_matrix(cfg, vels)
    return grid, {"tx_weights": beams, "rx_weights": rx, "delay_matrix": delay, "doppler_matrix": dop}




# --------------------------------------------------------------------------------------------------- matched
class MatchedFrontEnd(FrontEnd):
    """Transmit-beam matched filter + receive-angle / bistatic-delay / Doppler transform (module docstring).

    ``forward(y_m [B, Mr, Ns, Ts] complex, x [B, N, Nt, Ns, Ts] complex) -> [B, C, D1, D2, D3] float32`` with
    C = N Nb (``output="magnitude"``), N (with ``beam_pool``) or 2 N Nb (``"complex"``), (D1, D2, D3) =
    (angle_bins or Mr, delay_bins, doppler_bins). ``grid`` holds the physical axes: ``cos_tx`` [Nb], ``cos_rx`` [D1]
    (None without the angle transform), ``bistatic_range`` [D2] (m), ``bistatic_velocity`` [D3] (m/s, f_D c / fc).
    All float64.
    """

    name = "matched"
    needs_x = True

    def __init__(
        self, cfg: SystemConfig, *, norm: str = "noise", tx_beams: int | None = None,
        angle_bins: int | None = None, delay_bins: int | None = None, doppler_bins: int | None = None,
        angle_transform: bool = True, output: str = "magnitude", beam_pool: str = "none", compress: str = "none",
        chunk_cells: int = DEFAULT_CHUNK_CELLS,
    ) -> None:
        super().__init__()
        _check_options(norm, compress, chunk_cells)
        if output not in ("magnitude", "complex"):
            raise ValueError(f"output must be 'magnitude' or 'complex', got {output!r}")
        if beam_pool not in ("none", "max", "rms"):
            raise ValueError(f"beam_pool must be 'none', 'max' or 'rms', got {beam_pool!r}")
        if beam_pool != "none" and output != "magnitude":
            raise ValueError("beam_pool pools magnitudes: it needs output='magnitude'")
        self.beam_pool = beam_pool
        self.cfg, self.norm, self.output, self.compress, self.chunk_cells = cfg, norm, output, compress, chunk_cells
        nb = _check_bins("tx_beams", cfg.n_tx_antennas if tx_beams is None else tx_beams)
        if not isinstance(angle_transform, bool):
            raise ValueError(f"angle_transform must be a bool, got {angle_transform!r}")
        if not angle_transform and angle_bins not in (None, cfg.n_rx_antennas):
            raise ValueError(f"angle_bins={angle_bins} needs angle_transform=True (without it D1 = Mr antennas)")
        d1 = _check_bins("angle_bins", cfg.n_rx_antennas if angle_bins is None else angle_bins)
        d2 = _check_bins("delay_bins", cfg.n_subcarriers if delay_bins is None else delay_bins)
        d3 = _check_bins("doppler_bins", cfg.n_symbols if doppler_bins is None else doppler_bins)
        self.tx_beams, self.angle_transform = nb, angle_transform
        self.in_channels = cfg.n_tx * (1 if beam_pool != "none" else nb) * (2 if output == "complex" else 1)
        self.spatial_shape = (d1, d2, d3)
        self._y_shape = (cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols)
        self._x_shape = (cfg.n_tx, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols)

        with torch.device("cpu"):  # constants on the CPU even inside a meta-device context; .to() moves them
            self.grid, mats = _matched_constants(cfg, nb, (d1, d2, d3), angle_transform)
        for name, mat in mats.items():
            self.register_buffer(name, mat, persistent=False)

    def extra_repr(self) -> str:
        return (f"tx_beams={self.tx_beams}, grid={self.spatial_shape}, angle_transform={self.angle_transform}, "
                f"norm={self.norm!r}, output={self.output!r}, beam_pool={self.beam_pool!r}, compress={self.compress!r}")

    def _maps(self, y_m: torch.Tensor, x: torch.Tensor) -> Iterator[tuple[slice, int, slice, torch.Tensor]]:
        """Yields (scenes, n, beams, F) for chunks of scenes, each transmit AP n and chunks of its transmit beams:
        F [b, nb, D1, D2, D3] the map of the module docstring (noise-normalised if ``norm="noise"``; not
        RMS-normalised): the data-removed product [b, nb, D1, Ns, Ts], then the Doppler sum (a matmul with the
        [Ts, D3] phases) and the delay sum (a matmul with the [D2, Ns] phases)."""
        _check_y(y_m, self._y_shape)
        _check_x(x, self._x_shape, y_m.shape[0], self.name)
        cdt = torch.complex128 if y_m.dtype == torch.complex128 else torch.complex64
        B, Nb, (d1, d2, d3) = y_m.shape[0], self.tx_beams, self.spatial_shape
        Mr, Nt, Ns, Ts = self.cfg.n_rx_antennas, self.cfg.n_tx_antennas, self.cfg.n_subcarriers, self.cfg.n_symbols
        like = torch.empty(0, dtype=cdt, device=y_m.device)
        tx_w, rx_w, dmat = (self._const(k, like) for k in ("tx_weights", "rx_weights", "delay_matrix"))
        fmat_t = self._const("doppler_matrix", like).mT  # [Ts, D3]
        noise_std = math.sqrt(self.cfg.noise_watt)
        budget, per_beam = _working_cells(self.chunk_cells, y_m.device), d1 * max(Ns, d2) * max(Ts, d3)
        beams = max(1, min(Nb, budget // per_beam))
        chunk = max(1, budget // (beams * per_beam))
        for lo in range(0, B, chunk):
            sl = slice(lo, min(B, lo + chunk))
            yc = y_m[sl].to(cdt)
            b = yc.shape[0]
            yb = torch.matmul(rx_w, yc.reshape(b, Mr, Ns * Ts)).reshape(b, 1, d1, Ns, Ts)  # receive beams
            for n in range(self.cfg.n_tx):
                xc = x[sl, n].to(device=y_m.device, dtype=cdt).reshape(b, Nt, Ns * Ts)
                for b0 in range(0, Nb, beams):
                    bs = slice(b0, min(Nb, b0 + beams))
                    s = torch.matmul(tx_w[bs], xc).reshape(b, -1, Ns, Ts)  # a_t(c_b)^H x_n [b, nb, Ns, Ts]
                    if self.norm == "noise":
                        # F ~ CN(0, xi^2 mean|s|^2) on noise only (unitary transforms): unit-variance noise bins.
                        scale = _abs2(s).mean((-2, -1)).sqrt().mul_(noise_std).clamp_min_(1e-30)  # [b, nb]
                        s = s / scale[..., None, None]
                    prod = yb * s.conj()[:, :, None]  # [b, nb, D1, Ns, Ts]
                    yield sl, n, bs, torch.matmul(dmat, torch.matmul(prod, fmat_t))  # [b, nb, D1, D2, D3]

    def complex_map(self, y_m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The normalised complex map F [B, N, Nb, D1, D2, D3] (complex64, or complex128 for complex128 y)."""
        cdt = torch.complex128 if y_m.dtype == torch.complex128 else torch.complex64
        out = torch.empty(y_m.shape[0], self.cfg.n_tx, self.tx_beams, *self.spatial_shape, dtype=cdt,
                          device=y_m.device)
        for sl, n, bs, f in self._maps(y_m, x):
            out[sl, n, bs] = f
        if self.norm == "rms":
            out = out / _abs2(out).mean((1, 2, 3, 4, 5), keepdim=True).sqrt().clamp_min(1e-30)
        return out

    def forward(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        B, (d1, d2, d3) = y_m.shape[0], self.spatial_shape
        if self.output == "complex":
            f = self.complex_map(y_m, x)
            if self.compress == "log":  # compress the magnitude, keep the phase
                mag = f.abs()
                f = f * (torch.log1p(mag) / mag.clamp_min(1e-30))
            return torch.stack([f.real, f.imag], 3).reshape(B, -1, d1, d2, d3).float()
        rdt = torch.float64 if y_m.dtype == torch.complex128 else torch.float32
        pooled = self.beam_pool != "none"
        out = torch.zeros(B, self.cfg.n_tx, *(() if pooled else (self.tx_beams,)), d1, d2, d3, dtype=rdt,
                          device=y_m.device)  # |F|^2, pooled over the beams
        energy = torch.zeros(B, dtype=rdt, device=y_m.device)  # sum of |F|^2 per sample (for norm="rms")
        for sl, n, bs, f in self._maps(y_m, x):
            e = _abs2(f)  # [b, nb, D1, D2, D3]
            if self.norm == "rms":
                energy[sl] += e.sum((1, 2, 3, 4))
            if self.beam_pool == "max":
                out[sl, n] = torch.maximum(out[sl, n], e.amax(1))
            elif self.beam_pool == "rms":
                out[sl, n] += e.sum(1) / self.tx_beams
            else:
                out[sl, n, bs] = e
        out = out.sqrt_()
        if self.norm == "rms":  # divide by the root-mean-square of the complex map (before pooling)
            rms = (energy / (self.cfg.n_tx * self.tx_beams * d1 * d2 * d3)).sqrt().clamp_min(1e-30)
            out = out / rms.reshape(B, *([1] * (out.dim() - 1)))
        if self.compress == "log":
            out = torch.log1p(out)
        return out.reshape(B, -1, d1, d2, d3).float()


# --------------------------------------------------------------------------------------------------- image
def _default_pixels(cfg: SystemConfig) -> tuple[int, int]:
    """(Gx, Gy) with Gx Gy = Mr Ns (the raw grid's first two sizes), Gx the largest divisor <= sqrt(Mr Ns)."""
    p = cfg.n_rx_antennas * cfg.n_subcarriers
    gx = max(d for d in range(1, math.isqrt(p) + 1) if p % d == 0)
    return gx, p // gx


def _image_constants(
    cfg: SystemConfig, m: int, pixels: tuple[int, int], d3: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Pixel grid and per-pixel beams / bistatic delay phases of :class:`ImageFrontEnd` for receive AP m."""
    (x0, x1), (y0, y1) = cfg.area
    gx, gy = pixels
    f64, cdt = torch.float64, torch.complex128
    xs = x0 + (torch.arange(gx, dtype=f64) + 0.5) * (x1 - x0) / gx
    ys = y0 + (torch.arange(gy, dtype=f64) + 0.5) * (y1 - y0) / gy
    pts = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(1, -1, 2)  # [1, G, 2], x-major
    geo = bistatic_geometry(cfg, pts, torch.zeros_like(pts))
    if bool((geo.tx.distance < 1e-6).any()) or bool((geo.rx.distance < 1e-6).any()):
        raise ValueError("a pixel centre coincides with an AP; choose another pixel grid")
    vels = _velocity_grid(cfg, d3)
    i_idx, _ = sensing_indices(cfg)
    one = torch.ones((), dtype=f64)
    rx = steering_vectors(geo.rx.cos_angle[0, m], cfg.n_rx_antennas, cfg.antenna_spacing, cdt).conj()  # [G, Mr]
    tx = steering_vectors(geo.tx.cos_angle[0], cfg.n_tx_antennas, cfg.antenna_spacing, cdt).conj()  # [N, G, Nt]
    rng = geo.bistatic_range[0, :, m]  # [N, G]
    delay = torch.polar(one, 2 * math.pi * cfg.subcarrier_spacing / SPEED_OF_LIGHT * rng[..., None] * i_idx)
    grid = {"x": xs, "y": ys, "bistatic_velocity": vels}
    return grid, {"rx_weights": rx, "tx_weights": tx, "delay_phase": delay / math.sqrt(cfg.n_subcarriers),
                  "doppler_matrix": _doppler_matrix(cfg, vels)}


class ImageFrontEnd(FrontEnd):
    """Bistatic back-projection onto a position grid: for receive AP m, every pixel g of the area and transmit AP n,
    the matched filter of Eq. (6)'s path through g (the data removed by the beam steered at g, delay and angles of g):

        I_n[g, l] = 1 / sqrt(Ns Ts) sum_{i', t'} a_r(c_m(g))^H y_{i,m}[t] conj(a_t(c_n(g))^H x_{i,n}[t])
                    e^{+j 2 pi i df (d_n(g) + d_m(g)) / c} e^{-j 2 pi t f_l dT}

    with f_l the bistatic Doppler grid of :class:`MatchedFrontEnd`. Output |I_n| (noise-normalised like
    ``"matched"``): [B, N, Gx, Gy, D3] float32, Gx Gy = Mr Ns and D3 = Ts by default (the raw grid size: same encoder
    L, same fronthaul bits). A target appears at its own pixel in the maps of every transmit AP and, after the
    encoders, of every receive AP: the evidence of the N M bistatic pairs is aligned in the target's coordinates
    (the angle-delay-Doppler maps of ``"matched"`` place it at AP-dependent bins). The front end is specific to
    its receive AP: ``ap_index`` (m) is required. Needs X at the receive AP, like ``"matched"``.
    ``grid``: pixel centres ``x`` [Gx], ``y`` [Gy] (m) and ``bistatic_velocity`` [D3] (m/s).
    """

    name = "image"
    needs_x = True

    def __init__(
        self, cfg: SystemConfig, *, ap_index: int | None = None, norm: str = "noise",
        pixels: tuple[int, int] | None = None, doppler_bins: int | None = None, compress: str = "none",
        chunk_cells: int = DEFAULT_CHUNK_CELLS,
    ) -> None:
        super().__init__()
        _check_options(norm, compress, chunk_cells)
        if not isinstance(ap_index, int) or isinstance(ap_index, bool) or not 0 <= ap_index < cfg.n_rx:
            raise ValueError(f"the {self.name!r} front end is specific to its receive AP: ap_index must be an "
                             f"integer in [0, {cfg.n_rx}), got {ap_index!r}")
        if pixels is None:
            pixels = _default_pixels(cfg)
        if not (isinstance(pixels, (tuple, list)) and len(pixels) == 2):
            raise ValueError(f"pixels must be a pair (Gx, Gy), got {pixels!r}")
        gx, gy = (_check_bins("pixels", v) for v in pixels)
        d3 = _check_bins("doppler_bins", cfg.n_symbols if doppler_bins is None else doppler_bins)
        self.cfg, self.ap_index, self.norm, self.compress, self.chunk_cells = cfg, ap_index, norm, compress, chunk_cells
        self.in_channels = cfg.n_tx
        self.spatial_shape = (gx, gy, d3)
        self._y_shape = (cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols)
        self._x_shape = (cfg.n_tx, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols)
        with torch.device("cpu"):  # see MatchedFrontEnd
            self.grid, mats = _image_constants(cfg, ap_index, (gx, gy), d3)
        for name, mat in mats.items():
            self.register_buffer(name, mat, persistent=False)

    def extra_repr(self) -> str:
        return (f"ap_index={self.ap_index}, grid={self.spatial_shape}, norm={self.norm!r}, "
                f"compress={self.compress!r}")

    def _pixel_cells(self) -> int:
        """Complex cells of the largest per-pixel intermediate of one scene (sets the pixel chunk)."""
        return self.cfg.n_subcarriers * self.cfg.n_symbols

    def _products(self, y_m: torch.Tensor, x: torch.Tensor) -> Iterator[tuple[slice, slice, int, torch.Tensor]]:
        """Yields (scenes, pixels, n, p) for chunks of scenes and pixels and each transmit AP n, p [b, Ts, g] the
        delay-summed, data-removed product sum_{i'} e^{+j 2 pi i df (d_n(g) + d_m(g)) / c} / sqrt(Ns)
        a_r(c_m(g))^H y_{i,m}[t] conj(a_t(c_n(g))^H x_{i,n}[t]) (noise-normalised if ``norm="noise"``). Computed
        as r = a_r^H y (one matmul per chunk), then per n a matmul over the subcarriers of the delay-weighted r with
        conj(x_n) [Ns, Nt] per symbol and the transmit beam last (an Nt-term sum per pixel and symbol): the
        [g, Ns, Ts] transmit-beam signals are never formed."""
        _check_y(y_m, self._y_shape)
        _check_x(x, self._x_shape, y_m.shape[0], self.name)
        cdt = torch.complex128 if y_m.dtype == torch.complex128 else torch.complex64
        B, N, G = y_m.shape[0], self.cfg.n_tx, self.spatial_shape[0] * self.spatial_shape[1]
        like = torch.empty(0, dtype=cdt, device=y_m.device)
        rx_w, tx_w, dph = (self._const(k, like) for k in ("rx_weights", "tx_weights", "delay_phase"))
        noise_std = math.sqrt(self.cfg.noise_watt)
        budget, per_pixel = _working_cells(self.chunk_cells, y_m.device), self._pixel_cells()
        # >= 32 pixels per chunk where chunk_cells allows (small matmuls are slow), scenes per chunk to match
        least = max(1, min(G, 32, self.chunk_cells // per_pixel))
        chunk = max(1, budget // (least * per_pixel))
        for lo in range(0, B, chunk):
            sl = slice(lo, min(B, lo + chunk))
            xc = x[sl].to(device=y_m.device, dtype=cdt)
            yt = y_m[sl].to(cdt).permute(0, 3, 1, 2).contiguous()  # [b, Ts, Mr, Ns]
            xt = xc.conj().permute(0, 1, 4, 3, 2).contiguous()  # conj(x) [b, N, Ts, Ns, Nt]
            b = yt.shape[0]
            if self.norm == "noise":  # xi sqrt(mean_{i,t} |a_t(c_n(g))^H x_n|^2) [b, N, G]
                scale = torch.stack([_beam_power(tx_w[n], xc[:, n]) for n in range(N)], 1)
                scale = scale.sqrt_().mul_(noise_std).clamp_min_(1e-30)
            step = max(least, budget // (b * per_pixel))
            for g0 in range(0, G, step):
                gs = slice(g0, min(G, g0 + step))
                r = torch.matmul(rx_w[gs], yt)  # a_r(c_m(g))^H y: [b, Ts, g, Ns]
                for n in range(N):
                    u = torch.matmul(r * dph[n, gs], xt[:, n])  # [b, Ts, g, Nt]
                    p = torch.linalg.vecdot(tx_w[n, gs], u)  # sum_k conj(conj(a_t(c_n(g))))_k u_k: [b, Ts, g]
                    if self.norm == "noise":
                        p = p / scale[:, n, None, gs]
                    yield sl, gs, n, p

    def _doppler_shape(self) -> tuple[int, ...]:
        return (self.spatial_shape[2],)

    def _doppler_stage(self, p: torch.Tensor, n: int, gs: slice) -> torch.Tensor:
        """Sum over the symbols t of p [b, Ts, g] (transmit AP n, pixels gs) with the Doppler phases of the grid:
        [b, g, D3]."""
        return torch.matmul(p.mT, self._const("doppler_matrix", p).mT)

    def complex_map(self, y_m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The normalised complex image [B, N, Gx, Gy, *D] (complex64, or complex128 for complex128 y); D = (D3,)
        here, (Vy, Vx) for the velocity image."""
        cdt = torch.complex128 if y_m.dtype == torch.complex128 else torch.complex64
        B, N, (gx, gy) = y_m.shape[0], self.cfg.n_tx, self.spatial_shape[:2]
        out = torch.empty(B, N, gx * gy, *self._doppler_shape(), dtype=cdt, device=y_m.device)
        for sl, gs, n, p in self._products(y_m, x):
            out[sl, n, gs] = self._doppler_stage(p, n, gs)
        if self.norm == "rms":
            out = out / _abs2(out).mean(tuple(range(1, out.dim())), keepdim=True).sqrt().clamp_min(1e-30)
        return out.reshape(B, N, gx, gy, *out.shape[3:])

    def forward(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        v = _abs2(self.complex_map(y_m, x)).sqrt()
        if self.compress == "log":
            v = torch.log1p(v)
        return v.float()


class VelocityImageFrontEnd(ImageFrontEnd):
    """Position-velocity back-projection: the image of :class:`ImageFrontEnd` with its bistatic-Doppler axis replaced by
    the target velocity v = (v_x, v_y) itself. For a point g the bistatic Doppler of transmit AP n is
    f_n(g, v) = v . (e_n(g) + e_m(g)) f_c / c (Eq. 9-11, e the unit vectors from the APs to g), so one receive AP
    with N >= 2 transmit APs (not collinear with g) already fixes both velocity components. With p_n[g, t] the
    delay-summed, data-removed product of :class:`ImageFrontEnd`,

        V[g, k, l] = sqrt( 1/N sum_n | 1/sqrt(Ts) sum_{t'} p_n[g, t] e^{-j 2 pi t f_n(g, (vx_l, vy_k)) dT} |^2 )

    (non-coherent over the transmit APs: each path has its own random reflection phase), evaluated on a grid of
    ``velocity_bins`` = (Vx, Vy) velocities evenly spanning [-max_speed, max_speed] per axis (the prior box of the
    scenes). Output [B, Vy, Gx, Gy, Vx] float32: the Vy velocities are the encoder's input channels, the pixels and
    Vx its grid. Defaults Gx Gy = Mr Ns and Vx = Ts (the raw grid size, hence the same encoder L and fronthaul bits),
    Vy = 16. A target is a single peak at (its pixel, its velocity) in every receive AP's map: position and velocity
    are read off the grid position alike, and the decoder's fusion of the APs' latents (concatenated channels,
    Section III-C) sees the evidence of all APs aligned. Needs X at the receive AP (like ``"image"``); the pixel
    Doppler phases are built per chunk of pixels (memory bounded by ``chunk_cells``), so the paper preset fits.
    ``velocity_output="marginals"`` replaces the velocity plane by its two max-projections,

        W[0, g, k] = max_l V[g, l, k]   (the v_x profile),      W[1, g, k] = max_l V[g, k, l]   (the v_y profile),

    [B, 2, Gx, Gy, V] with V = Vx = Vy (default 16): like ``"image"``, two input channels and a grid of pixels x one
    velocity axis, but each channel's peak sits at a velocity component itself (no position-dependent bistatic
    geometry left for the decoder to undo); the pairing of v_x and v_y of one target is kept by its pixel.
    ``grid``: ``x`` [Gx], ``y`` [Gy] (m), ``velocity_x`` [Vx], ``velocity_y`` [Vy] (m/s).
    """

    name = "velocity-image"

    def __init__(
        self, cfg: SystemConfig, *, ap_index: int | None = None, norm: str = "noise",
        pixels: tuple[int, int] | None = None, velocity_bins: tuple[int, int] | None = None, compress: str = "none",
        chunk_cells: int = DEFAULT_CHUNK_CELLS, velocity_output: str = "plane",
    ) -> None:
        if velocity_output not in ("plane", "marginals"):
            raise ValueError(f"velocity_output must be 'plane' or 'marginals', got {velocity_output!r}")
        if velocity_bins is None:
            velocity_bins = (cfg.n_symbols, 16 if velocity_output == "plane" else cfg.n_symbols)
        if not (isinstance(velocity_bins, (tuple, list)) and len(velocity_bins) == 2):
            raise ValueError(f"velocity_bins must be a pair (Vx, Vy), got {velocity_bins!r}")
        vx_n, vy_n = (_check_bins("velocity_bins", v) for v in velocity_bins)
        if velocity_output == "marginals" and vx_n != vy_n:
            raise ValueError(f"velocity_output='marginals' needs as many v_x as v_y bins (one velocity axis), got "
                             f"velocity_bins={tuple(velocity_bins)!r}")
        super().__init__(cfg, ap_index=ap_index, norm=norm, pixels=pixels, doppler_bins=vx_n, compress=compress,
                         chunk_cells=chunk_cells)
        self.velocity_output = velocity_output
        self.velocity_bins = (vx_n, vy_n)
        self.in_channels = vy_n if velocity_output == "plane" else 2
        f64 = torch.float64
        with torch.device("cpu"):
            vx, vy = (torch.linspace(-cfg.max_speed, cfg.max_speed, k, dtype=f64) if k > 1 else
                      torch.zeros(1, dtype=f64) for k in (vx_n, vy_n))
            xs, ys = self.grid["x"], self.grid["y"]
            pts = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(1, -1, 2)
            geo = bistatic_geometry(cfg, pts, torch.zeros_like(pts))
            u = geo.tx.direction[0] + geo.rx.direction[0, ap_index][None]  # [N, G, 2] = e_n(g) + e_m(g)
            _, t_idx = sensing_indices(cfg)
        self.grid = {"x": xs, "y": ys, "velocity_x": vx, "velocity_y": vy}
        # -2 pi dT f_c / c t: the Doppler phase per unit of v . u at every sensing symbol t [Ts].
        scale = -2 * math.pi * cfg.symbol_duration * cfg.carrier_frequency / SPEED_OF_LIGHT
        self.register_buffer("phase_per_mps", scale * t_idx.to(f64), persistent=False)
        self.register_buffer("bistatic_directions", u, persistent=False)
        self.register_buffer("velocity_x", vx, persistent=False)
        self.register_buffer("velocity_y", vy, persistent=False)

        # The pixels' velocity phases [N, G, V, Ts] are kept when small (quick: 16 MB), else built per pixel chunk.
        small = cfg.n_tx * u.shape[1] * (vx_n + vy_n) * cfg.n_symbols <= VELOCITY_PHASE_CELLS
        with torch.device("cpu"):
            phases = [self._phases(n, slice(None), torch.device("cpu")) for n in range(cfg.n_tx)] if small else None
        self.register_buffer("velocity_phase_x", torch.stack([p[0] for p in phases]) if small else None,
                             persistent=False)
        self.register_buffer("velocity_phase_y", torch.stack([p[1] for p in phases]) if small else None,
                             persistent=False)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", velocity_output={self.velocity_output!r}"

    def _pixel_cells(self) -> int:
        vx_n, vy_n = self.velocity_bins
        return max(self.cfg.n_subcarriers * self.cfg.n_symbols, vy_n * max(self.cfg.n_symbols, vx_n))

    def _doppler_shape(self) -> tuple[int, ...]:
        return self.velocity_bins[::-1]  # (Vy, Vx)

    def _phases(self, n: int, gs: slice, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """e^{-j 2 pi t (vx ux(g)) fc dT / c} / sqrt(Ts) [g, Vx, Ts] and e^{-j 2 pi t (vy uy(g)) fc dT / c}
        [g, Vy, Ts] of transmit AP n (u = e_n(g) + e_m(g)), complex128."""
        f64 = torch.float64
        phi = self.phase_per_mps.to(device=device, dtype=f64)
        u = self.bistatic_directions[n, gs].to(device=device, dtype=f64)  # [g, 2]
        vx, vy = self.velocity_x.to(device), self.velocity_y.to(device)
        return _linear_phases(u[:, 0], vx, phi) / math.sqrt(phi.shape[0]), _linear_phases(u[:, 1], vy, phi)

    def _doppler_stage(self, p: torch.Tensor, n: int, gs: slice) -> torch.Tensor:
        return self._velocity_plane(p, n, gs).transpose(0, 1)

    def _velocity_plane(self, p: torch.Tensor, n: int, gs: slice) -> torch.Tensor:
        """p [b, Ts, g] of transmit AP n -> sum_t p e^{-j 2 pi t f_n(g, v) dT} / sqrt(Ts) on the velocity grid,
        [g, b, Vy, Vx] (pixel-major); the phase factorises as e^{j phi_t vx ux(g)} e^{j phi_t vy uy(g)}: one matmul
        per pixel of the ey-weighted products [b Vy, Ts] with ex [Ts, Vx]."""
        if self.velocity_phase_x is not None:
            ex, ey = self._const("velocity_phase_x", p)[n, gs], self._const("velocity_phase_y", p)[n, gs]
        else:
            ex, ey = (v.to(p.dtype) for v in self._phases(n, gs, p.device))
        b, Ts, g = p.shape
        vy_n, vx_n = self._doppler_shape()
        pe = p.permute(2, 0, 1)[:, :, None, :] * ey[:, None]  # [g, b, Vy, Ts]
        c = torch.matmul(pe.reshape(g, b * vy_n, Ts), ex.mT)  # [g, b Vy, Vx]
        return c.reshape(g, b, vy_n, vx_n)

    def forward(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        rdt = torch.float64 if y_m.dtype == torch.complex128 else torch.float32
        B, N, (gx, gy) = y_m.shape[0], self.cfg.n_tx, self.spatial_shape[:2]
        vy_n, vx_n = self._doppler_shape()
        acc = torch.zeros(B, gx * gy, vy_n, vx_n, dtype=rdt, device=y_m.device)  # sum_n |map_n|^2
        for sl, gs, n, p in self._products(y_m, x):
            acc[sl, gs] += _abs2(self._velocity_plane(p, n, gs)).transpose(0, 1)
        acc = acc.div_(N)
        # norm="rms": the complex map divided by its root-mean-square over (n, pixels, velocities)
        rms = acc.mean((1, 2, 3)).sqrt().clamp_min(1e-30).reshape(B, 1, 1, 1) if self.norm == "rms" else None
        if self.velocity_output == "marginals":  # [B, 2, G, V]: v_x profile, v_y profile
            v = torch.stack([acc.amax(2), acc.amax(3)], 1).sqrt_()
        else:
            v = acc.sqrt_().permute(0, 2, 1, 3)  # [B, Vy, G, Vx]
        if rms is not None:
            v = v / rms
        if self.compress == "log":
            v = torch.log1p(v)
        return v.reshape(B, v.shape[1], gx, gy, -1).float().contiguous()


# --------------------------------------------------------------------------------------------------- covariance
class CovarianceFrontEnd(FrontEnd):
    """X-free second-order front end: receive-beamspace energies per (subcarrier, symbol) block.

    ``forward(y_m [B, Mr, Ns, Ts] complex, x ignored) -> [B, 1, D1, Ns / block[0], Ts / block[1]] float32``;
    ``angle_bins`` D1 receive beams c_a = -1 + (2a + 1) / D1 (default Mr); ``block`` = (subcarriers, symbols) per
    block, each dividing Ns resp. Ts (default (1, 1): the same grid, encoder and fronthaul bits as ``"raw"``).
    """

    name = "covariance"
    needs_x = False

    def __init__(
        self, cfg: SystemConfig, *, norm: str = "noise", angle_bins: int | None = None,
        block: tuple[int, int] = (1, 1), compress: str = "none", chunk_cells: int = DEFAULT_CHUNK_CELLS,
    ) -> None:
        super().__init__()
        _check_options(norm, compress, chunk_cells)
        d1 = _check_bins("angle_bins", cfg.n_rx_antennas if angle_bins is None else angle_bins)
        if not (isinstance(block, (tuple, list)) and len(block) == 2):
            raise ValueError(f"block must be a pair (subcarriers, symbols), got {block!r}")
        bs, bt = (_check_bins("block", v) for v in block)
        if cfg.n_subcarriers % bs or cfg.n_symbols % bt:
            raise ValueError(f"block {tuple(block)} must divide (Ns, Ts) = ({cfg.n_subcarriers}, {cfg.n_symbols})")
        self.cfg, self.norm, self.compress, self.chunk_cells, self.block = cfg, norm, compress, chunk_cells, (bs, bt)
        self.in_channels = 1
        self.spatial_shape = (d1, cfg.n_subcarriers // bs, cfg.n_symbols // bt)
        self._y_shape = (cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols)
        with torch.device("cpu"):  # see MatchedFrontEnd
            cos_rx = _centred_grid(d1)
            rx = steering_vectors(cos_rx, cfg.n_rx_antennas, cfg.antenna_spacing, torch.complex128).conj()
        self.grid = {"cos_rx": cos_rx}
        self.register_buffer("rx_weights", rx, persistent=False)

    def extra_repr(self) -> str:
        return f"grid={self.spatial_shape}, block={self.block}, norm={self.norm!r}, compress={self.compress!r}"

    def forward(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        _check_y(y_m, self._y_shape)
        cdt = torch.complex128 if y_m.dtype == torch.complex128 else torch.complex64
        rx_w = self._const("rx_weights", torch.empty(0, dtype=cdt, device=y_m.device))
        B, (d1, d2, d3), (bs, bt) = y_m.shape[0], self.spatial_shape, self.block
        chunk = max(1, self.chunk_cells // (d1 * self.cfg.n_subcarriers * self.cfg.n_symbols))
        rdt = torch.float64 if cdt == torch.complex128 else torch.float32
        out = torch.empty(B, 1, d1, d2, d3, dtype=rdt, device=y_m.device)
        for lo in range(0, B, chunk):
            yb = torch.einsum("ar,brit->bait", rx_w, y_m[lo:lo + chunk].to(cdt))
            e = _abs2(yb).reshape(-1, d1, d2, bs, d3, bt).mean((3, 5))
            if self.norm == "noise":
                e = e / self.cfg.noise_watt  # noise only: E|a^H z|^2 = xi^2 (unit-norm beams)
            elif self.norm == "rms":
                e = e / e.mean((1, 2, 3), keepdim=True).clamp_min(1e-30)
            out[lo:lo + chunk, 0] = e
        if self.compress == "log":
            out = torch.log1p(out)
        return out.float()


@register_front_end("matched")
def _matched(cfg: SystemConfig, *, norm: str = "noise", ap_index: int | None = None,
             **options: Any) -> MatchedFrontEnd:
    return MatchedFrontEnd(cfg, norm=norm, **options)  # the same transform at every receive AP


@register_front_end("image")
def _image(cfg: SystemConfig, *, norm: str = "noise", ap_index: int | None = None, **options: Any) -> ImageFrontEnd:
    return ImageFrontEnd(cfg, norm=norm, ap_index=ap_index, **options)


@register_front_end("velocity-image")
def _velocity_image(cfg: SystemConfig, *, norm: str = "noise", ap_index: int | None = None,
                    **options: Any) -> VelocityImageFrontEnd:
    return VelocityImageFrontEnd(cfg, norm=norm, ap_index=ap_index, **options)


@register_front_end("covariance")
def _covariance(cfg: SystemConfig, *, norm: str = "noise", ap_index: int | None = None,
                **options: Any) -> CovarianceFrontEnd:
    return CovarianceFrontEnd(cfg, norm=norm, **options)
