"""Shared signal processing of the classical baselines (paper Section V-A): symbol removal, zero-padded delay-Doppler
DFTs with local peak refinement, bistatic geometry inversion, association and fusion at the CPU.

Signal model (Eq. 6, as simulated by :mod:`cfisac.sensing`). At receive AP m, on the sensed subcarrier with absolute
index ``i`` and the sensed symbol with absolute index ``t`` (:func:`cfisac.sensing.sensing_indices`: ``i = s_f i'``,
``t = 1 + s_t t'``), one propagation path ``p = (n, q)`` (transmit AP n, target q) contributes

    alpha_p a_r(u_rx) exp(-j 2 pi i d df / c) exp(+j 2 pi t f_D dT) b_p[i, t],     b_p[i, t] = a_t^H(u_tx) x_{i,n}[t]

with ``d`` the bistatic range (m), ``f_D`` the bistatic Doppler (Hz), ``u_rx = cos(AoA)`` and ``u_tx = cos(AoD)`` the
direction cosines w.r.t. the array axes (``cos(angle) = axis . e``, :mod:`cfisac.physics`) and
``alpha_p = beta sqrt(PL)``.

Symbol removal (documented choice). The scalar "symbol" ``b_p`` seen by a target is the precoded transmit vector
projected on the transmit steering vector of its unknown AoD; with N transmit APs sending simultaneously, the echoes
of all transmit APs overlap at every receive antenna and cell. The baselines therefore do **not** divide by the data
(the precoded 16-QAM combination ``b_p`` is Gaussian-like and a reciprocal filter blows up the noise and the other
transmit AP's echo wherever ``|b_p|`` is small); they use the **matched filter** ``conj(b_p)`` per transmit AP and
hypothesised AoD (the correlation receiver; for one path in white noise it is the maximum-likelihood statistic
``|<r, s>|^2 / ||s||^2``), and separate the transmit APs by **least squares on the known x**: detected paths are
reconstructed from x and cancelled before the next detection (CLEAN / successive cancellation), and every path is
then refined with all the others projected out (alternating projection, the joint least-squares fit of all paths;
:func:`refine_delay_doppler`). This matters because the two transmit APs' data are correlated (both send
precoded combinations of the same user streams), so one AP's echo leaks into the other's matched filter. The
receive AP is assumed to know the transmit signals X (equivalently the data symbols and precoders) for these
schemes (docs/architecture.md, "what the receive AP knows"): the paper's own D-VQVAE receive APs do not.

Peak refinement: every FFT peak is refined by a vectorised local zoom search on the exact DTFT of the matched-filter
output (:func:`zoom_maximize`, :func:`refine_delay_doppler`), i.e. a continuous maximisation of the periodogram;
the zero-padded FFT only has to land in the main lobe.

CPU fusion (:func:`.fusion.fuse_messages`, also importable from here): each receive AP sends, per target, the AoA
cosine, the N bistatic ranges and
the N bistatic Dopplers (one per transmit AP). The CPU (1) locates every AP's targets from the AoA line and the
bistatic ellipses, (2) associates the targets across receive APs by the Hungarian algorithm on the cost of fitting
one position to both APs' measurements,
(3) fuses positions by robust (Cauchy loss, multi-start) nonlinear least squares over all AoAs and bistatic
ranges, residuals in units of the resolution cells, and (4) solves the velocity vector by robust linear least
squares from all N*M bistatic Dopplers ``lambda f_D = (e_n + e_m) . v``. Positions are constrained to the area and
velocities to the prior box ``[-max_speed, max_speed]^2`` (bounded least squares): the classical schemes use the
same prior support as the learned ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ...config import SPEED_OF_LIGHT, SystemConfig
from ...sensing import check_transmit_signals, sensing_indices

if TYPE_CHECKING:
    from .fusion import Layout

__all__ = [  # and, from .fusion: ApMessages, Layout, associate, fuse_messages, local_location
    "Comb", "Path", "aoa_direction", "delay_doppler_spectrum", "direction_cosine", "endfire_alias", "locate_on_ray",
    "pair_paths", "path_signal", "ray_delay_doppler_map", "ray_distance", "ray_exit", "ray_side",
    "refine_delay_doppler", "steering", "tx_beam", "tx_beam_energy", "validate_inputs", "wrap_cosine",
    "zoom_maximize", "zoom_maximize_2d",
]

TWO_PI = 2.0 * math.pi
_FUSION = ("ApMessages", "Layout", "_position_residuals", "associate", "fuse_messages", "local_location")  # in .fusion


def __getattr__(name: str) -> object:
    """The CPU-fusion names live in :mod:`.fusion` (imported on first use: it imports this module)."""
    if name in _FUSION:
        from . import fusion

        return getattr(fusion, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------- grid / inputs
@dataclass(frozen=True)
class Comb:
    """The sensing grid of a config in the units the estimators use (float64 numpy).

    ``i_abs`` [Ns] / ``t_abs`` [Ts]: absolute subcarrier / symbol indices of the sensing comb; ``range_res`` (m),
    ``doppler_res`` (Hz), ``velocity_res`` (m/s, of a bistatic Doppler) and ``u_res`` (direction cosine, receive
    array) are the Rayleigh resolution cells used to scale residuals and zoom steps.
    """

    i_abs: np.ndarray
    t_abs: np.ndarray
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

    @classmethod
    def from_config(cls, cfg: SystemConfig) -> Comb:
        i, t = sensing_indices(cfg)
        res = cfg.resolution()
        return cls(
            i_abs=i.numpy(), t_abs=t.numpy(), subcarrier_stride=cfg.subcarrier_stride,
            symbol_stride=cfg.symbol_stride, df=cfg.subcarrier_spacing, dT=cfg.symbol_duration,
            fc=cfg.carrier_frequency, wavelength=cfg.wavelength, spacing=cfg.antenna_spacing,
            range_res=res["range_resolution_m"], doppler_res=res["doppler_resolution_hz"],
            velocity_res=res["velocity_resolution_mps"], u_res=1.0 / (cfg.n_rx_antennas * cfg.antenna_spacing),
            unambiguous_range=res["unambiguous_range_m"], unambiguous_doppler=res["unambiguous_doppler_hz"],
        )

    def delay_phase(self, d: np.ndarray) -> np.ndarray:
        """``exp(-j 2 pi i d df / c)`` of Eq. (6) for bistatic ranges ``d`` [...]: [..., Ns] complex128."""
        return np.exp(-1j * TWO_PI * self.df / SPEED_OF_LIGHT * np.asarray(d)[..., None] * self.i_abs)

    def doppler_phase(self, f: np.ndarray) -> np.ndarray:
        """``exp(+j 2 pi t f_D dT)`` of Eq. (6) for Dopplers ``f`` [...] (Hz): [..., Ts] complex128."""
        return np.exp(1j * TWO_PI * self.dT * np.asarray(f)[..., None] * self.t_abs)


def validate_inputs(cfg: SystemConfig, y: torch.Tensor, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Check ``y`` [B, M, Mr, Ns, Ts] and ``x`` [B, N, Nt, Ns, Ts] against ``cfg``; return complex128 numpy copies.

    Raises ``ValueError`` on a wrong type, shape, batch mismatch or non-finite entries.
    """
    if not isinstance(y, torch.Tensor) or not y.is_complex():
        raise ValueError("y must be a complex torch.Tensor [B, M, Mr, Ns, Ts]")
    expect = (cfg.n_rx, cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols)
    if y.dim() != 5 or tuple(y.shape[1:]) != expect:
        raise ValueError(f"y has shape {tuple(y.shape)}, expected (B, {', '.join(map(str, expect))})")
    if y.shape[0] == 0:
        raise ValueError("y has an empty batch")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or inf")
    check_transmit_signals(cfg, x, y.shape[0])
    return (np.ascontiguousarray(y.detach().cpu().to(torch.complex128).numpy()),
            np.ascontiguousarray(x.detach().cpu().to(torch.complex128).numpy()))


# ---------------------------------------------------------------------------------------------------- arrays
def steering(u: np.ndarray, n: int, spacing: float) -> np.ndarray:
    """ULA steering vectors of Eq. (1)-(2) for direction cosines ``u`` [...]: [..., n] complex128.

    Element k is ``exp(-j 2 pi k spacing u) / sqrt(n)`` (``spacing`` = d / lambda), as
    :func:`cfisac.geometry.steering_vectors`.
    """
    k = np.arange(n)
    return np.exp(-1j * TWO_PI * spacing * np.asarray(u, dtype=np.float64)[..., None] * k) / math.sqrt(n)


def tx_beam(x_n: np.ndarray, u_tx: np.ndarray, spacing: float) -> np.ndarray:
    """The scalar symbols ``b[i, t] = a_t^H(u_tx) x_{i,n}[t]`` a target at AoD cosine ``u_tx`` sees.

    ``x_n`` [Nt, Ns, Ts] (one transmit AP), ``u_tx`` [...] -> [..., Ns, Ts] complex128.
    """
    a = steering(u_tx, x_n.shape[0], spacing)
    return (a.conj() @ x_n.reshape(x_n.shape[0], -1)).reshape(*a.shape[:-1], *x_n.shape[1:])


def tx_beam_energy(x_n: np.ndarray, u_tx: np.ndarray, spacing: float) -> np.ndarray:
    """``sum_{i,t} |b[i, t]|^2 = a_t^H R_x a_t`` with ``R_x = sum x x^H``: [...] float64 (matched-filter norm)."""
    xf = x_n.reshape(x_n.shape[0], -1)
    rx = xf @ xf.conj().T
    a = steering(u_tx, x_n.shape[0], spacing)
    return np.real(np.einsum("...k,kl,...l->...", a.conj(), rx, a))


# ---------------------------------------------------------------------------------------------------- geometry
def ray_side(ap: np.ndarray, axis: np.ndarray, area: tuple[tuple[float, float], tuple[float, float]]) -> float:
    """Which half-plane of a ULA faces the area: +1 / -1 along ``perp = (-axis_y, axis_x)``.

    A ULA only measures ``u = cos(angle)``; its front/back ambiguity is resolved by the known area. For an AP whose
    axis line cuts the area (both sides face targets) the side of the area's centre is taken.
    """
    (x0, x1), (y0, y1) = area
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    perp = np.array([-axis[1], axis[0]])
    s = float(perp @ (centre - ap))
    return 1.0 if s >= 0 else -1.0


def aoa_direction(u: np.ndarray, axis: np.ndarray, side: float) -> np.ndarray:
    """Unit vectors ``e`` [..., 2] with ``axis . e = u`` on side ``side`` of the array (``u`` clipped to [-1, 1])."""
    u = np.clip(np.asarray(u, dtype=np.float64), -1.0, 1.0)
    s = side * np.sqrt(np.maximum(1.0 - u**2, 0.0))
    perp = np.array([-axis[1], axis[0]])
    return u[..., None] * axis + s[..., None] * perp


def ray_distance(d: np.ndarray, rx: np.ndarray, e: np.ndarray, tx: np.ndarray) -> np.ndarray:
    """Distance ``rho`` from the receive AP along the AoA ray ``rx + rho e`` at which the bistatic range is ``d``.

    Solves ``rho + ||rx + rho e - tx|| = d`` in closed form: ``rho = (d^2 - |w|^2) / (2 (d + w . e))`` with
    ``w = rx - tx`` (the intersection of the AoA line with the bistatic ellipse; ``rho = d / 2`` for a co-located
    monostatic AP). Non-physical ``d < |w|`` give ``rho <= 0``, clipped to 0. Broadcasts over ``d`` and ``e``.
    """
    w = rx - tx
    d = np.asarray(d, dtype=np.float64)
    den = 2.0 * (d + (e * w).sum(-1))
    rho = (d**2 - (w @ w)) / np.where(np.abs(den) < 1e-12, 1e-12, den)
    return np.maximum(rho, 0.0)


def locate_on_ray(u: np.ndarray, d: np.ndarray, rx: np.ndarray, axis: np.ndarray, side: float,
                  tx: np.ndarray) -> np.ndarray:
    """Location [..., 2] from one AoA cosine and one bistatic range (AoA line intersected with the ellipse)."""
    e = aoa_direction(u, axis, side)
    return rx + ray_distance(d, rx, e, tx)[..., None] * e


def direction_cosine(points: np.ndarray, ap: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """``axis . (g - ap) / ||g - ap||`` for points [..., 2]: [...]."""
    diff = points - ap
    return (diff @ axis) / np.maximum(np.linalg.norm(diff, axis=-1), 1e-9)


def wrap_cosine(du: np.ndarray, spacing: float) -> np.ndarray:
    """Wrap a direction-cosine difference into one period ``[-1/(2 spacing), 1/(2 spacing))`` of the ULA phase.

    A ULA measures the spatial frequency ``spacing * u`` modulo 1: with ``spacing = 1/2`` the endfire directions
    ``u = +1`` and ``u = -1`` give the same steering vector, so AoA residuals are taken modulo the period.
    """
    period = 1.0 / spacing
    return (np.asarray(du) + period / 2) % period - period / 2


def endfire_alias(u: float, spacing: float, margin: float) -> float | None:
    """The other direction cosine with (almost) the same steering vector, for ``|u| > 1 - margin``; else None.

    Only half-wavelength arrays have an alias inside [-1, 1] (``u - 2 sign(u)``, clipped to the endfire point).
    The estimators use half a receive resolution cell as the margin.
    """
    if spacing < 0.5 - 1e-12 or abs(u) <= 1.0 - margin:
        return None
    return float(np.clip(u - math.copysign(1.0 / spacing, u), -1.0, 1.0))


def ray_exit(start: np.ndarray, e: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Largest ``rho >= 0`` with ``start + rho e`` inside the box [lower, upper] (0 when the ray misses it)."""
    t_lo, t_hi = 0.0, np.inf
    for k in range(2):
        if abs(e[k]) < 1e-12:
            if not (lower[k] - 1e-9 <= start[k] <= upper[k] + 1e-9):
                return 0.0
            continue
        a, b = (lower[k] - start[k]) / e[k], (upper[k] - start[k]) / e[k]
        t_lo, t_hi = max(t_lo, min(a, b)), min(t_hi, max(a, b))
    return float(max(t_hi, 0.0)) if t_hi >= t_lo else 0.0


def ray_delay_doppler_map(r: np.ndarray, x_n: np.ndarray, comb: Comb, *, rx: np.ndarray, e: np.ndarray,
                          tx: np.ndarray, tx_axis: np.ndarray, d_max: float, oversample: int = 4,
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Geometry-constrained matched filter of one receive beam against one transmit AP: a 2-D DFT power map.

    ``r`` [Ns, Ts] is the receive-beam output towards the AoA ray ``rx + rho e`` and ``x_n`` [Nt, Ns, Ts] the
    transmit AP's signals. Every bistatic range bin ``d_k`` fixes the point of the ray on the bistatic ellipse
    (:func:`ray_distance`) and hence the AoD ``u_tx(d_k)`` whose transmit beam ``b = a_t^H(u_tx) x`` is the symbol
    removed by matched filtering: the map is

        P[k, j] = |sum_{i,t} r[i,t] conj(b_{u_tx(d_k)}[i,t]) e^{+j 2 pi i d_k df / c} e^{-j 2 pi t f_j dT}|^2 / E(d_k)

    with ``E = sum |b|^2`` (GLRT normalisation), computed as a zero-padded DFT over subcarriers per transmit antenna,
    a transmit beamforming per range bin, and a zero-padded DFT over symbols (:func:`delay_doppler_spectrum` grid).
    Returns (P [K, L_t], d [K], f [L_t], u_tx [K]).
    """
    g = r[None] * np.conj(x_n)  # [Nt, Ns, Ts]: matched filter per transmit antenna
    ns, ts = r.shape
    lf, lt = oversample * ns, oversample * ts
    d = np.arange(lf) * SPEED_OF_LIGHT / (lf * comb.subcarrier_stride * comb.df)
    keep = max(1, int(np.searchsorted(d, d_max, side="right")))
    d = d[:keep]
    f1 = np.fft.ifft(g, n=lf, axis=1)[:, :keep, :] * lf  # [Nt, K, Ts]
    rho = ray_distance(d, rx, e[None, :], tx)
    u_tx = direction_cosine(rx + rho[:, None] * e, tx, tx_axis)
    a = steering(u_tx, x_n.shape[0], comb.spacing)  # [K, Nt]; conj(b) = a^T conj(x)
    z = np.einsum("kl,lkt->kt", a, f1)
    s = np.fft.fftshift(np.fft.fft(z, n=lt, axis=-1), axes=-1)
    f = np.fft.fftshift(np.fft.fftfreq(lt, comb.symbol_stride * comb.dT))
    energy = np.maximum(tx_beam_energy(x_n, u_tx, comb.spacing), 1e-300)
    return np.abs(s) ** 2 / energy[:, None], d, f, u_tx


# ---------------------------------------------------------------------------------------------------- refinement
def zoom_maximize(objective: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, step: np.ndarray | float, *,
                  lower: float | np.ndarray | None = None, upper: float | np.ndarray | None = None,
                  n_points: int = 5, n_iter: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised local 1-D maximisation by successive zooming: P problems at once.

    ``objective(c)`` maps candidates [P, G] to values [P, G]. Each iteration evaluates ``n_points`` equispaced
    candidates in ``[x - step, x + step]``, moves to the best and halves the step, so the final accuracy is
    ``step / 2^n_iter`` provided the start lies within ``step / 2`` of the maximum's lobe (the zero-padded FFT /
    fine grid peak guarantees it). Returns (argmax [P], max value [P]).
    """
    x = np.asarray(x0, dtype=np.float64).copy()
    h = np.broadcast_to(np.asarray(step, dtype=np.float64), x.shape).copy()
    offs = np.linspace(-1.0, 1.0, n_points)
    best = None
    for _ in range(n_iter):
        cand = x[:, None] + h[:, None] * offs
        if lower is not None or upper is not None:
            cand = np.clip(cand, lower, upper)
        val = objective(cand)
        k = np.argmax(val, axis=1)
        x = cand[np.arange(x.size), k]
        best = val[np.arange(x.size), k]
        h = h * 0.5
    return x, best


def refine_delay_doppler(r: np.ndarray, beam: np.ndarray | Callable[[np.ndarray], np.ndarray], comb: Comb,
                         d0: np.ndarray, f0: np.ndarray, *, step_d: float | None = None, step_f: float | None = None,
                         others: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, n_points: int = 5,
                         n_iter: int = 14) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Continuous least-squares refinement of one path's bistatic range and Doppler (vectorised over P problems).

    The path signature on data ``r`` [P, Ns, Ts] is ``s(d, f)[i, t] = b[i, t] exp(-j 2 pi i d df / c)
    exp(+j 2 pi t f dT)`` (Eq. 6 at the comb's absolute indices) with symbols ``b = beam`` [P, Ns, Ts], or
    ``beam(d)`` [P, G, Ns, Ts] for candidate ranges d [P, G] when the AoD depends on the range (bistatic
    geometry on a known AoA ray). Maximised is the energy the path explains,

        ``|s^H P r|^2 / (s^H P s)``,   ``s^H r = sum_{i,t} r conj(b) exp(+j 2 pi i d df / c) exp(-j 2 pi t f dT)``

    with ``P = I`` (matched-filter periodogram, single-path ML) or, given ``others = (o [P, K, Ns, Ts], gram
    [P, K, K], o_r [P, K])`` -- the K other paths' signatures, ``O^H O`` and ``O^H r`` -- the projector orthogonal
    to them (alternating projection, Ziskind-Wax: the joint least-squares fit of all paths, maximised over this
    path's (d, f) only). The search zooms on ``n_points^2`` grids around ``(d0, f0)`` [P] with initial
    half-widths ``step_d`` (m) / ``step_f`` (Hz) (default half a resolution cell), halving them ``n_iter`` times;
    the optimum must lie within the initial half-widths. Every grid contains the current point, so the objective
    never decreases. Returns (d [P], f [P], amplitude [P] complex (least-squares gain), objective [P]).
    """
    d = np.asarray(d0, dtype=np.float64).copy()
    f = np.asarray(f0, dtype=np.float64).copy()
    hd = np.full(d.shape, comb.range_res / 2 if step_d is None else step_d)
    hf = np.full(f.shape, comb.doppler_res / 2 if step_f is None else step_f)
    offs = np.linspace(-1.0, 1.0, n_points)
    P = d.size
    rows = np.arange(P)
    amp = np.zeros(P, dtype=np.complex128)
    best = np.zeros(P)
    if others is not None:
        o, gram, o_r = others
        ginv = np.linalg.pinv(gram)
        w = np.einsum("pkl,pl->pk", ginv, o_r)
    fixed = not callable(beam)
    if fixed:
        bc = np.conj(beam)
        z, energy = r * bc, np.sum(np.abs(beam) ** 2, axis=(1, 2))[:, None, None]
        zo = None if others is None else o * bc[:, None]
    for _ in range(n_iter):
        cd = d[:, None] + hd[:, None] * offs  # [P, G]
        cf = f[:, None] + hf[:, None] * offs
        ed = np.conj(comb.delay_phase(cd))  # exp(+j ...) [P, G, Ns]
        ef = np.swapaxes(np.conj(comb.doppler_phase(cf)), 1, 2)  # exp(-j ...) [P, Ts, G]
        if fixed:
            num = ed @ (z @ ef)  # s^H r: [P, G, G]
            c = None if others is None else ed[:, None] @ (zo @ ef[:, None])  # s^H o_k: [P, K, G, G]
            en = energy
        else:
            bc = np.conj(beam(cd))  # [P, G, Ns, Ts], one AoD per candidate range
            num = np.einsum("pai,pait,ptb->pab", ed, r[:, None] * bc, ef, optimize=True)
            c = None if others is None else np.einsum("pai,pkait,ptb->pkab", ed, o[:, :, None] * bc[:, None], ef,
                                                      optimize=True)
            en = np.sum(np.abs(bc) ** 2, axis=(2, 3))[:, :, None]
        if others is None:
            den = np.broadcast_to(en, num.shape)
        else:
            num = num - np.einsum("pkab,pk->pab", c, w)
            den = en - np.real(np.einsum("pkab,pkl,plab->pab", c, ginv, np.conj(c)))
            den = np.maximum(den, 1e-12 * en)
        den = np.maximum(den, 1e-300)
        obj = np.abs(num) ** 2 / den
        flat = obj.reshape(P, -1).argmax(1)
        a, b = np.unravel_index(flat, (n_points, n_points))
        d, f = cd[rows, a], cf[rows, b]
        amp = num[rows, a, b] / den[rows, a, b]
        best = obj[rows, a, b]
        hd, hf = hd * 0.5, hf * 0.5
    return d, f, amp, best


def zoom_maximize_2d(z: np.ndarray, kernel_a: Callable[[np.ndarray], np.ndarray],
                     kernel_b: Callable[[np.ndarray], np.ndarray], a0: np.ndarray, b0: np.ndarray, step_a: float,
                     step_b: float, *, n_points: int = 5, n_iter: int = 14,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximise ``|k_a(a)^T z k_b(b)|`` over two continuous parameters by zooming (vectorised over P problems).

    ``z`` [P, A, B]; ``kernel_a(c)`` maps candidates [P, G] to [P, G, A] (``kernel_b`` likewise to [P, G, B]).
    Starts at (a0, b0) [P] with half-widths (step_a, step_b), halved ``n_iter`` times. Returns (a, b, value)
    with the complex bilinear form at the optimum.
    """
    a = np.asarray(a0, dtype=np.float64).copy()
    b = np.asarray(b0, dtype=np.float64).copy()
    ha, hb = float(step_a), float(step_b)
    offs = np.linspace(-1.0, 1.0, n_points)
    P = a.size
    rows = np.arange(P)
    val = np.zeros(P, dtype=np.complex128)
    for _ in range(n_iter):
        ca = a[:, None] + ha * offs
        cb = b[:, None] + hb * offs
        s = kernel_a(ca) @ (z @ np.swapaxes(kernel_b(cb), 1, 2))  # [P, G, G]
        ia, ib = np.unravel_index(np.abs(s).reshape(P, -1).argmax(1), (n_points, n_points))
        a, b, val = ca[rows, ia], cb[rows, ib], s[rows, ia, ib]
        ha, hb = ha * 0.5, hb * 0.5
    return a, b, val


def delay_doppler_spectrum(z: np.ndarray, comb: Comb, *, oversample: int = 4,
                           d_max: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero-padded 2-D DFT of symbol-removed data ``z`` [..., Ns, Ts] onto the bistatic range / Doppler grid.

    ``S[k, j] = sum_{i', t'} z[i', t'] exp(+j 2 pi s_f i' d_k df / c) exp(-j 2 pi s_t t' f_j dT)`` on the grid
    ``d_k = k c / (L_f s_f df)`` (``L_f = oversample * Ns``; only ``d_k <= d_max`` kept) and
    ``f_j = fftfreq(L_t, s_t dT)`` (``L_t = oversample * Ts``, fft-shifted to ascending order). The common phase of
    the comb offset ``t = 1 + s_t t'`` is omitted (magnitudes only). Returns (S [..., K, L_t], d [K], f [L_t]).
    """
    ns, ts = z.shape[-2:]
    lf, lt = oversample * ns, oversample * ts
    d = np.arange(lf) * SPEED_OF_LIGHT / (lf * comb.subcarrier_stride * comb.df)
    keep = lf if d_max is None else int(np.searchsorted(d, d_max, side="right"))
    s = np.fft.ifft(z, n=lf, axis=-2)[..., :keep, :] * lf
    s = np.fft.fftshift(np.fft.fft(s, n=lt, axis=-1), axes=-1)
    f = np.fft.fftshift(np.fft.fftfreq(lt, comb.symbol_stride * comb.dT))
    return s, d[:keep], f


# ---------------------------------------------------------------------------------------------------- paths
@dataclass
class Path:
    """One propagation path (transmit AP ``n`` -> target -> this receive AP) as estimated at a receive AP.

    ``u_rx`` / ``u_tx``: AoA / AoD direction cosines; ``d``: bistatic range (m); ``f``: bistatic Doppler (Hz);
    ``amp``: complex gain alpha (matched-filter least-squares fit).
    """

    n: int
    u_rx: float
    u_tx: float
    d: float
    f: float
    amp: complex = 0j


def path_signal(comb: Comb, path: Path, x_n: np.ndarray, n_rx: int | None = None) -> np.ndarray:
    """Noiseless contribution of ``path`` (Eq. 6): [Ns, Ts] at a beam output (``n_rx`` None) or [Mr, Ns, Ts]."""
    b = tx_beam(x_n, np.float64(path.u_tx), comb.spacing)
    s = path.amp * comb.delay_phase(path.d)[:, None] * comb.doppler_phase(path.f)[None, :] * b
    if n_rx is None:
        return s
    return steering(np.float64(path.u_rx), n_rx, comb.spacing)[:, None, None] * s


def pair_paths(paths_by_tx: list[list[Path]], lay: Layout, m: int, comb: Comb) -> list[list[Path]]:
    """Group one receive AP's paths into targets: one path per transmit AP each (Hungarian).

    ``paths_by_tx[n]`` holds the same number of paths J for every n. Paths of transmit AP n > 0 are matched to
    those of AP 0 on the disagreement of the locations each implies (AoA line x own bistatic ellipse) plus the AoA
    difference, both in resolution cells. Returns J groups, each ``[path for n in range(N)]``.
    """
    ref = paths_by_tx[0]
    groups = [[p] for p in ref]
    for n in range(1, len(paths_by_tx)):
        cand = paths_by_tx[n]
        cost = np.empty((len(ref), len(cand)))
        for a, p in enumerate(ref):
            ga = locate_on_ray(np.float64(p.u_rx), np.float64(p.d), lay.rx[m], lay.rx_axes[m], lay.rx_side[m],
                               lay.tx[p.n])
            for c, r in enumerate(cand):
                gb = locate_on_ray(np.float64(r.u_rx), np.float64(r.d), lay.rx[m], lay.rx_axes[m],
                                   lay.rx_side[m], lay.tx[r.n])
                cost[a, c] = np.linalg.norm(ga - gb) / comb.range_res + abs(p.u_rx - r.u_rx) / comb.u_res
        rows, cols = linear_sum_assignment(cost)
        for a, c in zip(rows, cols, strict=True):
            groups[a].append(cand[c])
    return groups
