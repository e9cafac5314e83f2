"""Batched signal processing of the bistatic baselines (MUSIC, CS; paper Section V-A), in PyTorch on any device.

Every function works on P independent problems at once (a problem is one beam / receive AP / scene / candidate of
the caller), tensors on the inputs' device, float64 parameters and complex data in the data's dtype. They are the
batched counterparts of :mod:`cfisac.estimators.reference.signal_processing` (the literal scene-at-a-time
references): same grids, same zoom searches, same objectives.

Signal model (Eq. 6). On the sensed subcarrier with absolute index ``i`` and the sensed symbol with absolute index
``t`` (:class:`cfisac.physics.SensingGrid`), one path of bistatic range ``d`` (m), bistatic Doppler ``f`` (Hz) and
AoD cosine ``u_tx`` from transmit AP n contributes, at a receive-beam output,

    s[i, t] = exp(-j 2 pi i d df / c) exp(+j 2 pi t f dT) b[i, t],     b[i, t] = a_t^H(u_tx) x_{i,n}[t]

(:func:`path_signatures`). Symbol removal is the matched filter ``conj(b)``; paths are separated by least squares on
the known x (:func:`joint_fit`, and the projection of :func:`refine_delay_doppler`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..config import SPEED_OF_LIGHT
from ..geometry import steering_vectors
from ..physics import SensingGrid, delay_phase, direction_cosine, doppler_phase, ray_distance

__all__ = [
    "MAP_CHUNK_CELLS", "delay_doppler_dft", "endfire_alias", "find_peaks", "joint_fit", "music_null_spectrum",
    "path_signatures", "ray_delay_doppler_map", "refine_delay_doppler", "top_peaks", "transmit_covariance",
    "zoom_maximize", "zoom_maximize_2d", "zoom_newton_maximize", "zoom_newton_maximize_2d",
]

MAP_CHUNK_CELLS = 2**23  # complex cells of the padded per-antenna DFT of ray_delay_doppler_map per sub-batch
MAP_DFT_FACTOR = 8.0  # ray maps: DFT matrix product when K Ns <= this times L_f log2(L_f), else the padded FFT


# ---------------------------------------------------------------------------------------------------- grids
def _range_grid(grid: SensingGrid, n_sub: int, oversample: int, device: torch.device) -> torch.Tensor:
    """Bistatic ranges ``d_k = k c / (L_f s_f df)`` [L_f] float64 of a zero-padded subcarrier DFT."""
    lf = oversample * n_sub
    return torch.arange(lf, dtype=torch.float64, device=device) * (SPEED_OF_LIGHT / (lf * grid.subcarrier_stride
                                                                                     * grid.df))


def _doppler_grid(grid: SensingGrid, n_sym: int, oversample: int, device: torch.device) -> torch.Tensor:
    """Ascending Dopplers ``fftshift(fftfreq(L_t, s_t dT))`` [L_t] float64 (Hz)."""
    lt = oversample * n_sym
    f = torch.fft.fftfreq(lt, grid.symbol_stride * grid.dT, dtype=torch.float64, device=device)
    return torch.fft.fftshift(f)


def delay_doppler_dft(z: torch.Tensor, grid: SensingGrid, *, oversample: int = 4, d_max: float | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-padded 2-D DFT of symbol-removed data ``z`` [..., Ns, Ts] onto the bistatic range / Doppler grid.

    ``S[k, j] = sum_{i', t'} z[i', t'] exp(+j 2 pi s_f i' d_k df / c) exp(-j 2 pi s_t t' f_j dT)`` (the conjugate
    Eq. 6 phases at the comb's relative indices) on ``d_k = k c / (L_f s_f df)``, ``L_f = oversample Ns`` (only
    ``d_k <= d_max`` kept) and ``f_j`` = fft-shifted ``fftfreq(L_t, s_t dT)``, ``L_t = oversample Ts``. The common
    phase of the comb offset ``t = 1 + s_t t'`` is omitted (magnitudes only). Returns (S [..., K, L_t] complex, d [K],
    f [L_t] float64).
    """
    ns, ts = z.shape[-2:]
    lf, lt = oversample * ns, oversample * ts
    d = _range_grid(grid, ns, oversample, z.device)
    keep = lf if d_max is None else int(torch.searchsorted(d, torch.tensor(d_max, dtype=d.dtype, device=d.device),
                                                           right=True))
    s = torch.fft.ifft(z, n=lf, dim=-2)[..., :keep, :] * lf
    s = torch.fft.fftshift(torch.fft.fft(s, n=lt, dim=-1), dim=-1)
    return s, d[:keep], _doppler_grid(grid, ts, oversample, z.device)


def transmit_covariance(x_n: torch.Tensor) -> torch.Tensor:
    """``R_x = sum_{i,t} x_{i,n}[t] x_{i,n}[t]^H`` [..., Nt, Nt] of transmit signals ``x_n`` [..., Nt, Ns, Ts].

    ``a_t^H R_x a_t = sum |b|^2`` is the energy of the symbols a point at AoD ``a_t`` sees (matched-filter norm).
    """
    xf = x_n.reshape(*x_n.shape[:-2], -1)
    return xf @ xf.conj().transpose(-1, -2)


def _beam_energy(a: torch.Tensor, rx: torch.Tensor) -> torch.Tensor:
    """``a^H R_x a`` [P, G] float64 for steering vectors ``a`` [P, G, Nt] and ``R_x`` [P, Nt, Nt]."""
    return torch.einsum("pgk,pkl,pgl->pg", a.conj(), rx, a).real.to(torch.float64)


def ray_delay_doppler_map(r: torch.Tensor, x_n: torch.Tensor, grid: SensingGrid, *, rx: torch.Tensor,
                          e: torch.Tensor, tx: torch.Tensor, tx_axis: torch.Tensor, d_max: torch.Tensor,
                          oversample: int = 4, x_index: torch.Tensor | None = None,
                          x_cov: torch.Tensor | None = None, map_dtype: torch.dtype | None = None,
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Geometry-constrained matched filter of P receive beams against one transmit AP each: 2-D DFT power maps.

    ``r`` [P, Ns, Ts] are receive-beam outputs towards the AoA rays ``rx + rho e`` (``rx``, ``e`` [P, 2]), ``x_n``
    [P, Nt, Ns, Ts] the transmit AP's signals (AP at ``tx`` [P, 2] or [2], axis ``tx_axis``). Every bistatic range
    bin ``d_k`` fixes the point of the ray on the bistatic ellipse (:func:`cfisac.physics.ray_distance`) and hence
    the AoD ``u_tx(d_k)`` whose transmit beam ``b = a_t^H(u_tx) x`` is removed by matched filtering:

    M[p,k,j] = |sum_{i,t} r[i,t] conj(b_{u_tx(d_k)}[i,t]) e^{+j 2 pi i d_k df / c} e^{-j 2 pi t f_j dT}|^2 / E(d_k)

    with ``E = sum |b|^2`` (GLRT normalisation); zero-padded subcarrier DFT per transmit antenna (only the kept
    bins: a DFT matrix product where :data:`MAP_DFT_FACTOR` says it is cheaper than the padded FFT, e.g. 164 of
    1024 bins at the ``paper`` preset), transmit beamforming per range bin, zero-padded symbol DFT
    (:func:`delay_doppler_dft` grid). Problem p keeps the bins
    ``d_k <= d_max[p]`` (at least one); the common grid runs to the largest ``d_max``. Computed in sub-batches of
    :data:`MAP_CHUNK_CELLS` cells. ``x_n`` may also be [S, Nt, Ns, Ts] shared by problems (problem p uses
    ``x_n[x_index[p]]``; ``x_cov`` [S, Nt, Nt] optionally their :func:`transmit_covariance`). ``map_dtype``
    (default the dtype of ``r``) is the complex dtype of the DFTs and the beamforming (``torch.complex64``: half the
    memory traffic, relative error ~1e-7 of the map; the energies E stay in float64). Returns (M [P, K, L_t]
    float64, d [K], f [L_t], u_tx [P, K], valid [P, K] bool).
    """
    P, (nt, ns, ts) = r.shape[0], x_n.shape[1:]
    index = torch.arange(P, device=r.device) if x_index is None else x_index
    lf, lt = oversample * ns, oversample * ts
    d = _range_grid(grid, ns, oversample, r.device)
    keep_p = torch.searchsorted(d, d_max.to(torch.float64).contiguous(), right=True).clamp_min(1)  # [P]
    keep = int(keep_p.max())
    d = d[:keep]
    valid = torch.arange(keep, device=r.device)[None, :] < keep_p[:, None]
    rho = ray_distance(d[None, :], rx[:, None, :], e[:, None, :], tx[..., None, :] if tx.dim() == 2 else tx)
    pts = rx[:, None, :] + rho[..., None] * e[:, None, :]
    u_tx = direction_cosine(pts, tx[..., None, :] if tx.dim() == 2 else tx,
                            tx_axis[..., None, :] if tx_axis.dim() == 2 else tx_axis)
    a = steering_vectors(u_tx, nt, grid.spacing, r.dtype)  # [P, K, Nt]; conj(b) = a^T conj(x)
    rx_cov = (transmit_covariance(x_n) if x_cov is None else x_cov)[index]
    energy = _beam_energy(a, rx_cov).clamp_min(1e-300)
    mdt = r.dtype if map_dtype is None else map_dtype
    rm, xm, am = r.to(mdt), x_n.to(mdt), a.to(mdt).transpose(1, 2)[:, :, None, :]  # am [P, Nt, 1, K]
    # Only the K <= L_f kept range bins: a DFT matrix product where that is cheaper than the padded FFT.
    dft = None
    if keep * ns <= MAP_DFT_FACTOR * lf * math.log2(lf):
        k_i = torch.outer(torch.arange(ns, dtype=torch.float64, device=r.device),
                          torch.arange(keep, dtype=torch.float64, device=r.device))
        dft = torch.polar(torch.ones_like(k_i), 2 * math.pi * k_i.remainder(lf) / lf).to(mdt)  # e^{+j2 pi ik/L_f}
    step = max(1, MAP_CHUNK_CELLS // (nt * lf * ts))
    z = torch.empty((P, keep, ts), dtype=mdt, device=r.device)
    for lo in range(0, P, step):  # bounded memory: the padded per-antenna DFT is nt * lf * ts cells per problem
        g = (rm[lo:lo + step, None] * xm[index[lo:lo + step]].conj()).transpose(2, 3)  # [p, Nt, Ts, Ns]
        if dft is None:
            f1 = torch.fft.ifft(g, n=lf, dim=-1)[..., :keep] * lf  # [p, Nt, Ts, K]
        else:
            f1 = g @ dft
        ab = am[lo:lo + step]
        acc = ab[:, 0] * f1[:, 0]  # transmit beamforming sum_l a_l f1_l, in the order of .sum(1), no [p, Nt, Ts, K]
        for l_ in range(1, nt):
            acc += ab[:, l_] * f1[:, l_]
        z[lo:lo + step] = acc.transpose(1, 2)
    s = torch.fft.fftshift(torch.fft.fft(z, n=lt, dim=-1), dim=-1)
    power = s.abs().to(torch.float64) ** 2 / energy[..., None]
    return power, d, _doppler_grid(grid, ts, oversample, r.device), u_tx, valid


def endfire_alias(u: torch.Tensor, spacing: float, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The other direction cosine with (almost) the same steering vector near endfire: (alias [...], exists [...]).

    Only half-wavelength arrays have one inside [-1, 1]: ``u - sign(u) / spacing`` clipped to the endfire point,
    for ``|u| > 1 - margin`` (the estimators use half a receive resolution cell).
    """
    alias = (u - torch.sign(u) / spacing).clamp(-1.0, 1.0)
    alias = torch.where(u == 0, u - 1.0 / spacing, alias).clamp(-1.0, 1.0)  # copysign(+0) is +
    exists = (u.abs() > 1.0 - margin) & (spacing >= 0.5 - 1e-12)
    return alias, exists


# ---------------------------------------------------------------------------------------------------- peaks
def find_peaks(values: torch.Tensor, valid: torch.Tensor | None = None, *, circular: bool = False) -> torch.Tensor:
    """Strict local maxima of ``values`` [..., G] along the last axis: bool [..., G].

    ``values[g] > values[g-1]`` and ``values[g] > values[g+1]``; the ends compare with ``-inf`` (every problem's
    first and last valid entries can be peaks) unless ``circular``. Entries with ``valid`` False (padding) are
    ``-inf`` and never peaks. As ``scipy.signal.find_peaks`` except that flat plateaus give no peak.
    """
    v = values if valid is None else torch.where(valid, values, torch.full_like(values, -math.inf))
    if circular:
        left, right = v.roll(1, -1), v.roll(-1, -1)
    else:
        pad = torch.full_like(v[..., :1], -math.inf)
        left = torch.cat([pad, v[..., :-1]], -1)
        right = torch.cat([v[..., 1:], pad], -1)
    peak = (v > left) & (v > right)
    return peak if valid is None else peak & valid


def top_peaks(values: torch.Tensor, peaks: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` highest peaks of ``values`` [..., G] (``peaks`` bool [..., G]), best first.

    Returns (index [..., k] long, value [..., k], exists [..., k] bool); missing peaks have ``exists`` False.
    """
    masked = torch.where(peaks, values, torch.full_like(values, -math.inf))
    kk = min(k, values.shape[-1])
    val, idx = torch.topk(masked, kk, dim=-1)
    if kk < k:
        pad = k - kk
        idx = torch.cat([idx, idx[..., :1].expand(*idx.shape[:-1], pad)], -1)
        val = torch.cat([val, torch.full_like(val[..., :1], -math.inf).expand(*val.shape[:-1], pad)], -1)
    return idx, val, val > -math.inf


def music_null_spectrum(noise: torch.Tensor, u: torch.Tensor, spacing: float) -> torch.Tensor:
    """MUSIC null spectrum ``||E_n^H a(u)||^2`` [P, G] float64 (its inverse is the pseudo-spectrum).

    ``noise`` [P, Mr, Mr] complex: noise-subspace eigenvectors as columns, columns outside the subspace zeroed (so
    every problem may have its own subspace dimension); ``u`` [P, G] direction cosines; Eq. (2) steering vectors.
    """
    a = steering_vectors(u, noise.shape[-2], spacing, noise.dtype)  # [P, G, Mr]
    return (a.conj() @ noise).abs().to(torch.float64).pow(2).sum(-1)


# ---------------------------------------------------------------------------------------------------- zoom searches
def zoom_maximize(objective: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, step: torch.Tensor | float,
                  *, lower: float | None = None, upper: float | None = None, n_points: int = 5, n_iter: int = 14,
                  reuse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Local 1-D maximisation by successive zooming, batched: problems ``x0`` [...] float64.

    ``objective(c)`` maps candidates [..., G] to values [..., G]. Each iteration evaluates ``n_points`` equispaced
    candidates in ``[x - step, x + step]`` (clipped to [lower, upper]), moves to the best (first on ties) and halves
    the step: accuracy ``step / 2^n_iter`` if the start lies within ``step / 2`` of the maximum's lobe. With
    ``reuse``, ``n_points = 5`` and no bounds, the candidates 0, 2, 4 of an iteration are the previous best and its
    two neighbours (when inside the previous grid): their values are reused and only 3 candidates (1, 3 and the one
    outside the previous grid, or a repeat of the best) are evaluated, the same maximisation with 3/5 of the
    objective evaluations (worth it for costly objectives only: CS; MUSIC's cheap null spectrum was slower).
    Returns (argmax [...], max value [...]).
    """
    x = x0.to(torch.float64).clone()
    h = torch.as_tensor(step, dtype=torch.float64, device=x.device).expand(x.shape).clone()
    offs = torch.linspace(-1.0, 1.0, n_points, dtype=torch.float64, device=x.device)
    best = torch.zeros_like(x)
    reuse = reuse and n_points == 5 and lower is None and upper is None
    cand = val = k = None
    for it in range(n_iter):
        if reuse and it > 0:
            cand, val = _zoom_step(objective, cand, val, k, x, h)
        else:
            cand = x[..., None] + h[..., None] * offs
            if lower is not None or upper is not None:
                cand = cand.clamp(lower, upper)
            val = objective(cand)
        k = val.argmax(-1, keepdim=True)
        x = cand.gather(-1, k)[..., 0]
        best = val.gather(-1, k)[..., 0]
        h = h * 0.5
    return x, best


def zoom_newton_maximize(objective: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor,
                         step: torch.Tensor | float, *, lower: float | None = None, upper: float | None = None,
                         n_zoom: int = 4, n_iter: int = 14, max_newton: int = 6,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Local 1-D maximisation, batched like :func:`zoom_maximize` (same arguments and returns): ``n_zoom`` 5-point
    zoom halvings (``reuse``) bring every problem inside its maximum's lobe, then 3-point parabolic (Newton) steps
    on the same smooth objective until every problem's step is below ``step / 2^n_iter`` (the accuracy of
    ``zoom_maximize(..., n_iter=n_iter)``) or ``max_newton`` steps are done.

    A Newton step evaluates ``x`` and ``x -+ h`` (clipped to [lower, upper]; ``h`` the last zoom grid's spacing,
    then ``4 |step|`` clamped to [tol, h / 2]) and moves to the vertex of the interpolating parabola, kept within
    the three points; where the parabola is not concave it moves to the best of the three. The value returned is the
    parabola's at the final point (the objective's to second order in the last step, which is below ``tol``).
    Typically 4 zooms + 2-3 Newton steps: 14 + 6-9 evaluations instead of 5 + 3 (n_iter - 1) = 44.
    """
    x, best = zoom_maximize(objective, x0, step, lower=lower, upper=upper, n_iter=n_zoom,
                            reuse=lower is None and upper is None)
    st = torch.as_tensor(step, dtype=torch.float64, device=x.device).expand(x.shape)
    h = st / 2**n_zoom
    tol = st / 2**n_iter
    offs = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64, device=x.device)
    done = torch.zeros_like(x, dtype=torch.bool)
    for _ in range(max_newton):
        cand = x[..., None] + h[..., None] * offs
        if lower is not None or upper is not None:
            cand = cand.clamp(lower, upper)
        v = objective(cand)
        a, b, c = cand.unbind(-1)
        fa, fb, fc = v.unbind(-1)
        # vertex of the parabola through (a, fa), (b, fb), (c, fc); concave iff the 2nd divided difference < 0
        da, dc = b - a, c - b
        ok = (da > 0) & (dc > 0)
        sa = (fb - fa) / torch.where(ok, da, 1.0)
        sc = (fc - fb) / torch.where(ok, dc, 1.0)
        curv = (sc - sa) / torch.where(ok, c - a, 1.0)  # half the 2nd derivative
        ok = ok & (curv < 0)
        slope_b = (sa * dc + sc * da) / torch.where(ok, c - a, 1.0)  # derivative at b
        s = torch.where(ok, -slope_b / (2 * torch.where(ok, curv, -1.0)), 0.0)
        s = torch.maximum(torch.minimum(s, c - b), a - b)
        k = v.argmax(-1, keepdim=True)
        xb, vb = cand.gather(-1, k)[..., 0], v.gather(-1, k)[..., 0]
        step_ = torch.where(ok, s, xb - b)
        x = torch.where(done, x, torch.where(ok, b + s, xb))
        best = torch.where(done, best, torch.where(ok, fb + slope_b * s + curv * s * s, vb))
        done = done | (step_.abs() < tol)  # per problem: results independent of the batch's other problems
        if bool(done.all()):
            break
        h = torch.minimum(torch.maximum(4 * step_.abs(), tol), h / 2)
    return x, best


def _zoom_step(objective: Callable[[torch.Tensor], torch.Tensor], prev: torch.Tensor, prev_val: torch.Tensor,
               k: torch.Tensor, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One 5-point :func:`zoom_maximize` iteration around the previous best ``x = prev[k]`` (half-width ``h``):
    candidates [..., 5] and values [..., 5], new points 0, 2, 4 taken from the previous grid ``prev`` / ``prev_val``
    [..., 5] where it has them (best ``k`` [..., 1] and its neighbours), the rest evaluated (3 per problem)."""
    offs = torch.tensor([-1.0, -0.5, 0.5, 1.0], dtype=torch.float64, device=x.device)
    fresh = x[..., None] + h[..., None] * offs  # new points 0, 1, 3, 4
    at_lo, at_hi = k == 0, k == 4
    edge = torch.where(at_lo, fresh[..., :1], torch.where(at_hi, fresh[..., 3:], x[..., None]))
    v = objective(torch.cat([fresh[..., 1:3], edge], -1))  # [..., 3]: points 1, 3, the edge point
    left = (k - 1).clamp_min(0)
    right = (k + 1).clamp_max(4)
    c0 = torch.where(at_lo, fresh[..., :1], prev.gather(-1, left))
    c4 = torch.where(at_hi, fresh[..., 3:], prev.gather(-1, right))
    v0 = torch.where(at_lo, v[..., 2:], prev_val.gather(-1, left))
    v4 = torch.where(at_hi, v[..., 2:], prev_val.gather(-1, right))
    cand = torch.cat([c0, fresh[..., 1:2], x[..., None], fresh[..., 2:3], c4], -1)
    val = torch.cat([v0, v[..., :1], prev_val.gather(-1, k), v[..., 1:2], v4], -1)
    return cand, val


def zoom_maximize_2d(z: torch.Tensor, kernel_a: Callable[[torch.Tensor], torch.Tensor],
                     kernel_b: Callable[[torch.Tensor], torch.Tensor], a0: torch.Tensor, b0: torch.Tensor,
                     step_a: float, step_b: float, *, n_points: int = 5, n_iter: int = 14,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maximise ``|k_a(a)^T z k_b(b)|`` over two continuous parameters by zooming, batched over P problems.

    ``z`` [P, A, B] complex; ``kernel_a(c)`` maps candidates [P, G] float64 to [P, G, A] (``kernel_b`` likewise to
    [P, G, B]). Starts at (a0, b0) [P] with half-widths (step_a, step_b), halved ``n_iter`` times. Returns (a [P],
    b [P], value [P] complex: the bilinear form at the optimum).
    """
    a, b = a0.to(torch.float64).clone(), b0.to(torch.float64).clone()
    ha, hb = float(step_a), float(step_b)
    offs = torch.linspace(-1.0, 1.0, n_points, dtype=torch.float64, device=z.device)
    rows = torch.arange(a.shape[0], device=z.device)
    val = torch.zeros(a.shape[0], dtype=z.dtype, device=z.device)
    for _ in range(n_iter):
        ca, cb = a[:, None] + ha * offs, b[:, None] + hb * offs
        s = kernel_a(ca) @ (z @ kernel_b(cb).transpose(1, 2))  # [P, G, G]
        flat = s.abs().reshape(a.shape[0], -1).argmax(1)
        ia, ib = flat // n_points, flat % n_points
        a, b, val = ca[rows, ia], cb[rows, ib], s[rows, ia, ib]
        ha, hb = ha * 0.5, hb * 0.5
    return a, b, val


def zoom_newton_maximize_2d(z: torch.Tensor, kernel_a: Callable[[torch.Tensor], torch.Tensor],
                            kernel_b: Callable[[torch.Tensor], torch.Tensor], a0: torch.Tensor, b0: torch.Tensor,
                            step_a: float, step_b: float, *, n_zoom: int = 4, n_iter: int = 14, max_newton: int = 6,
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`zoom_maximize_2d` (same arguments and returns) with ``n_zoom`` 5 x 5 halvings, then Newton steps on
    ``|k_a(a)^T z k_b(b)|^2`` from 3 x 3 central differences (gradient and full Hessian; half-widths the last zoom
    grid's spacing, then 4 |step| clamped to [tol, h / 2]), each kept within the stencil and replaced by the best
    stencil point where the Hessian is not negative definite, until every step is below ``step / 2^n_iter`` in both
    coordinates or ``max_newton`` steps are done; the bilinear form is evaluated once more at the final point."""
    a, b, _ = zoom_maximize_2d(z, kernel_a, kernel_b, a0, b0, step_a, step_b, n_iter=n_zoom)
    P = a.shape[0]
    rows = torch.arange(P, device=z.device)
    ha = torch.full_like(a, float(step_a) / 2**n_zoom)
    hb = torch.full_like(b, float(step_b) / 2**n_zoom)
    ta, tb = float(step_a) / 2**n_iter, float(step_b) / 2**n_iter
    offs = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64, device=z.device)
    done = torch.zeros_like(a, dtype=torch.bool)
    for _ in range(max_newton):
        ca, cb = a[:, None] + ha[:, None] * offs, b[:, None] + hb[:, None] * offs
        f = _abs2c(kernel_a(ca) @ (z @ kernel_b(cb).transpose(1, 2)))  # [P, 3, 3]
        f0 = f[:, 1, 1]
        ga = (f[:, 2, 1] - f[:, 0, 1]) / (2 * ha)
        gb = (f[:, 1, 2] - f[:, 1, 0]) / (2 * hb)
        haa = (f[:, 2, 1] - 2 * f0 + f[:, 0, 1]) / ha**2
        hbb = (f[:, 1, 2] - 2 * f0 + f[:, 1, 0]) / hb**2
        hab = (f[:, 2, 2] - f[:, 2, 0] - f[:, 0, 2] + f[:, 0, 0]) / (4 * ha * hb)
        det = haa * hbb - hab * hab
        ok = (haa < 0) & (det > 0)
        dets = torch.where(ok, det, 1.0)
        sa = torch.where(ok, -(hbb * ga - hab * gb) / dets, 0.0)
        sb = torch.where(ok, -(haa * gb - hab * ga) / dets, 0.0)
        sa = torch.maximum(torch.minimum(sa, ha), -ha)
        sb = torch.maximum(torch.minimum(sb, hb), -hb)
        flat = f.reshape(P, -1).argmax(1)
        sa = torch.where(ok, sa, ca[rows, flat // 3] - a)
        sb = torch.where(ok, sb, cb[rows, flat % 3] - b)
        a, b = torch.where(done, a, a + sa), torch.where(done, b, b + sb)
        done = done | ((sa.abs() < ta) & (sb.abs() < tb))  # per problem: independent of the batch's others
        if bool(done.all()):
            break
        ha = torch.minimum(torch.maximum(4 * sa.abs(), torch.full_like(ha, ta)), ha / 2)
        hb = torch.minimum(torch.maximum(4 * sb.abs(), torch.full_like(hb, tb)), hb / 2)
    val = (kernel_a(a[:, None]) @ (z @ kernel_b(b[:, None]).transpose(1, 2)))[:, 0, 0]
    return a, b, val


def _abs2c(s: torch.Tensor) -> torch.Tensor:
    return s.real.to(torch.float64) ** 2 + s.imag.to(torch.float64) ** 2


def _group_rank(index: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rank of every entry among the entries with the same value of ``index`` [P] (long), and the largest group."""
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(index)
    rank[order] = torch.arange(index.numel(), device=index.device) - start[index[order]]
    return rank, int(counts.max())


def _grouped_beams(a: torch.Tensor, xc: torch.Tensor, index: torch.Tensor, rank: torch.Tensor, n_group: int,
                   ) -> torch.Tensor:
    """``conj(b) = a^T conj(x)`` [P, G, C] for steering vectors ``a`` [P, G, Nt] and conj signals ``xc`` [S, Nt, C].

    Problems sharing a signal (same ``index``) are stacked into one matrix product per signal, so every signal is
    read once per call (the product is memory-bound on ``xc``).
    """
    P, G, nt = a.shape
    stacked = torch.zeros((xc.shape[0], n_group, G, nt), dtype=a.dtype, device=a.device)
    stacked[index, rank] = a
    out = stacked.reshape(xc.shape[0], n_group * G, nt) @ xc  # [S, n_group G, C]
    return out.reshape(xc.shape[0], n_group, G, -1)[index, rank]


def refine_delay_doppler(r: torch.Tensor, grid: SensingGrid, d0: torch.Tensor, f0: torch.Tensor, *,
                         beam: torch.Tensor | None = None, x_n: torch.Tensor | None = None,
                         aod: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         others: torch.Tensor | None = None, step_d: float | None = None,
                         step_f: float | None = None, n_points: int = 5, n_iter: int = 14,
                         x_index: torch.Tensor | None = None, x_cov: torch.Tensor | None = None,
                         method: str = "zoom", n_newton: int = 6,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Continuous least-squares refinement of one path's bistatic range and Doppler, batched over P problems.

    The path signature on data ``r`` [P, Ns, Ts] is ``s(d, f) = b exp(-j 2 pi i d df / c) exp(+j 2 pi t f dT)``
    (Eq. 6) with fixed symbols ``b = beam`` [P, Ns, Ts], or, when the AoD follows the range (bistatic geometry on a
    known AoA ray), ``b = a_t^H(aod(d)) x_n`` with transmit signals ``x_n`` [P, Nt, Ns, Ts] (or [S, Nt, Ns, Ts]
    shared by problems, problem p using ``x_n[x_index[p]]``; ``x_cov`` [S, Nt, Nt] optionally their
    :func:`transmit_covariance`) and ``aod`` mapping candidate ranges [P, G] to AoD cosines [P, G]. Maximised is
    the energy the path explains,

        ``|s^H P r|^2 / (s^H P s)``,

    with ``P = I`` (matched-filter periodogram, single-path ML) or, given the other paths' signatures ``others``
    [P, K, Ns, Ts] (all-zero rows are padding), the projector orthogonal to them (alternating projection,
    Ziskind-Wax: the joint least-squares fit of all paths maximised over this path's (d, f) only; ``O^H O`` is
    pseudo-inverted). The search zooms on ``n_points^2`` grids around ``(d0, f0)`` [P] with half-widths ``step_d``
    (m) / ``step_f`` (Hz) (default half a resolution cell), halved ``n_iter`` times; every grid contains the current
    point, so the objective never decreases. With ``n_points = 5`` the range columns an iteration shares with the
    previous one are reused, not recomputed. ``method="newton"`` replaces the zoom by at most ``n_newton`` damped
    Newton steps on the same objective (:func:`_newton_steps`: 3 x 3 central-difference stencil, 3 range columns per
    step instead of the zoom's 31 in all; converges to the local maximum itself, which the zoom brackets to
    ``step / 2^n_iter``), confined to the region the zoom can reach (``2 step`` around the start). Returns (d [P],
    f [P], amplitude [P] complex, objective [P] float64).
    """
    if (beam is None) == (x_n is None) or (x_n is not None and aod is None):
        raise ValueError("refine_delay_doppler needs either beam, or x_n together with aod")
    if method not in ("zoom", "newton"):
        raise ValueError(f"method must be 'zoom' or 'newton', got {method!r}")
    P, ns, ts = r.shape
    dev, cdt = r.device, r.dtype
    d = d0.to(torch.float64).clone()
    f = f0.to(torch.float64).clone()
    hd = torch.full_like(d, grid.range_res / 2 if step_d is None else step_d)
    hf = torch.full_like(f, grid.doppler_res / 2 if step_f is None else step_f)
    offs = torch.linspace(-1.0, 1.0, n_points, dtype=torch.float64, device=dev)
    rows = torch.arange(P, device=dev)
    if others is not None:  # slots that are padding in every problem carry nothing: dropped
        used = (others != 0).flatten(2).any(2).any(0)
        others = others[:, used] if bool(used.any()) else None
    data = r[:, None] if others is None else torch.cat([r[:, None], others], 1)  # [P, 1 + K, Ns, Ts]
    if others is not None:
        gram = torch.einsum("pkit,plit->pkl", others.conj(), others)
        ginv = torch.linalg.pinv(gram, rtol=1e-15, hermitian=True)
        w = ginv @ torch.einsum("pkit,pit->pk", others.conj(), r)[..., None]  # [P, K, 1]
    if beam is not None:
        zb = (data * beam.conj()[:, None]).permute(0, 3, 2, 1).contiguous()  # [P, Ts, Ns, 1 + K]
        energy = beam.abs().to(torch.float64).pow(2).sum((1, 2))[:, None]

        def columns(cd: torch.Tensor, sel: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            ed = delay_phase(grid, cd).conj().to(cdt)  # exp(+j ...) [p, G, Ns]
            z = zb if sel is None else zb[sel]
            en = energy if sel is None else energy[sel]
            return (ed[:, None] @ z), en.expand(cd.shape)  # [p, Ts, G, 1 + K]
    else:
        index = torch.arange(P, device=dev) if x_index is None else x_index
        rank, n_group = _group_rank(index)
        S, nt = x_n.shape[:2]
        rx_cov = (transmit_covariance(x_n) if x_cov is None else x_cov)[index]  # [P, Nt, Nt]
        xq = x_n.permute(0, 3, 1, 2).conj().resolve_conj().contiguous()  # conj(x) [S, Ts, Nt, Ns]
        data_t = data.permute(0, 3, 2, 1)  # [P, Ts, Ns, 1 + K]

        def layout(sel: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]:
            """Problems-per-signal layout of the rows ``sel`` (all if None): their signal and rank in its group, the
            group size, the signals conj(x) [S', Ts, Nt, Ns] and the data [S', Ts, n_group, Ns, 1 + K] (zero
            padding); a subset is laid out over the signals it uses only."""
            if sel is None:
                sig, rk, ng, xs, dsel = index, rank, n_group, xq, data_t
            else:
                used_s, sig = torch.unique(index[sel], return_inverse=True)
                rk, ng = _group_rank(sig)
                xs, dsel = xq[used_s], data_t[sel]
            dq = torch.zeros((xs.shape[0], ts, ng, ns, data_t.shape[-1]), dtype=cdt, device=dev)
            dq[sig, :, rk] = dsel
            return sig, rk, ng, xs, dq

        full = layout(None)

        def columns(cd: torch.Tensor, sel: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            sig, rk, ng, xs, dq = full if sel is None else layout(sel)
            a = steering_vectors(aod(cd) if sel is None else aod_sub(cd, sel), nt, grid.spacing, cdt)  # [p, G, Nt]
            # conj(b) e^{+j 2 pi i d df / c} = (a^T conj(x)) * phase per symbol, in the layout [S', Ts, n_group, G,
            # Ns] (phase applied in place), whose (signal, symbol, group) blocks [G, Ns] meet the data's [Ns, 1 + K]
            # in one batched product; only the small result is gathered back to the problems.
            g = cd.shape[1]
            sg = xs.shape[0]
            stacked = torch.zeros((sg, ng, g, nt), dtype=cdt, device=dev)
            stacked[sig, rk] = a
            phase = torch.zeros((sg, 1, ng, g, ns), dtype=cdt, device=dev)
            phase[sig, 0, rk] = delay_phase(grid, cd).conj().to(cdt)
            e = (stacked.reshape(sg, 1, ng * g, nt) @ xs).view(sg, ts, ng, g, ns).mul_(phase)
            out = (e.view(-1, g, ns) @ dq.view(-1, ns, dq.shape[-1])).view(sg, ts, ng, g, -1)
            en = _beam_energy(a, rx_cov if sel is None else rx_cov[sel])
            return out[sig, :, rk], en  # [p, Ts, G, 1 + K], [p, G]

        def aod_sub(cd: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
            full = torch.zeros((P, cd.shape[1]), dtype=cd.dtype, device=dev)
            full[sel] = cd
            return aod(full)[sel]

    def evaluate(cols: torch.Tensor, en_cols: torch.Tensor, cf: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Objective, projected ``s^H P r`` and ``s^H P s`` [P, Gd, Gf] on range columns x Doppler candidates."""
        ef = doppler_phase(grid, cf).conj().to(cdt)  # exp(-j ...) [P, Gf, Ts]
        s = torch.einsum("ptgk,pht->pkgh", cols, ef)  # [P, 1 + K, Gd, Gf]: s^H r and s^H o_k
        en = en_cols[:, :, None]
        num = s[:, 0]
        if others is None:
            den = en.expand(num.shape)
        else:
            c = s[:, 1:]  # [P, K, Gd, Gf]
            num = num - (c * w[..., None]).sum(1)
            quad = torch.einsum("pkab,pkl,plab->pab", c, ginv, c.conj()).real.to(torch.float64)
            den = torch.maximum(en - quad, 1e-12 * en)
        den = den.clamp_min(1e-300)
        return num.abs().to(torch.float64) ** 2 / den, num, den

    if method == "newton":
        return _newton_steps(lambda cd: columns(cd, None), evaluate, d, f, hd, hf, grid.range_res,
                             grid.doppler_res, n_newton)
    amp = torch.zeros(P, dtype=cdt, device=dev)
    best = torch.zeros(P, dtype=torch.float64, device=dev)
    reuse = n_points == 5
    cols = en_cols = cd_prev = ia = None
    for it in range(n_iter):
        cd = d[:, None] + hd[:, None] * offs  # [P, G]
        cf = f[:, None] + hf[:, None] * offs
        if not reuse or it == 0:
            cols, en_cols = columns(cd, None)
        else:  # new columns 0, 2, 4 are the old ia - 1, ia, ia + 1 (when inside the old grid): only 1, 3 are new
            old, old_en = cols, en_cols
            cols, en_cols = torch.empty_like(old), torch.empty_like(old_en)
            for new_c, shift in ((0, -1), (2, 0), (4, 1)):
                src = ia + shift
                ok = (src >= 0) & (src < 5)
                srcc = src.clamp(0, 4)
                cols[:, :, new_c] = old[rows, :, srcc]
                en_cols[:, new_c] = old_en[rows, srcc]
                cd[:, new_c] = torch.where(ok, cd_prev[rows, srcc], cd[:, new_c])
                if not bool(ok.all()):
                    sel = torch.nonzero(~ok, as_tuple=True)[0]
                    c_new, e_new = columns(cd[sel, new_c:new_c + 1], sel)
                    cols[sel, :, new_c] = c_new[:, :, 0]
                    en_cols[sel, new_c] = e_new[:, 0]
            c_new, e_new = columns(cd[:, 1::2], None)
            cols[:, :, 1::2] = c_new
            en_cols[:, 1::2] = e_new
        obj, num, den = evaluate(cols, en_cols, cf)
        flat = obj.reshape(P, -1).argmax(1)
        ia, ib = flat // n_points, flat % n_points
        d, f = cd[rows, ia], cf[rows, ib]
        amp = num[rows, ia, ib] / den[rows, ia, ib]
        best = obj[rows, ia, ib]
        cd_prev = cd
        hd, hf = hd * 0.5, hf * 0.5
    return d, f, amp, best


def _newton_steps(columns: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], evaluate: Callable,
                  d: torch.Tensor, f: torch.Tensor, hd: torch.Tensor, hf: torch.Tensor, res_d: float, res_f: float,
                  n_steps: int, eps: float = 1e-3, tol: float = 1e-9,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Damped 2-D Newton maximisation of the :func:`refine_delay_doppler` objective J(d, f), batched over P problems.

    In resolution-cell units ``(d / res_d, f / res_f)``, every step evaluates J on the 3 x 3 stencil
    ``(d + i eps res_d, f + j eps res_f)``, i, j in {-1, 0, 1} (``columns`` [P, 3] ranges -> the range columns,
    ``evaluate`` -> J [P, 3, 3]); central differences give the gradient g and Hessian H (error ``O(eps^2)`` of the
    cell-scale curvature: the fixed point lies within ~``eps^2`` cell of the true maximum), and the step is
    ``-H^-1 g`` where H is negative definite, else ``g / |g|`` times the trust radius; each coordinate's step is
    clipped to the trust radius (the zoom's first half-width ``hd`` / ``hf``), the iterate to ``2 hd`` / ``2 hf``
    around the start (the zoom's reach). A step that lowers J is halved back towards the best point (the result
    never has a lower J than the start). Stops after ``n_steps`` steps or once every step is below ``tol`` cell.
    Returns (d [P], f [P], amplitude ``num / den`` [P] complex, J [P] float64) at the best evaluated point.
    """
    P = d.shape[0]
    dev = d.device
    offs = torch.tensor([-eps, 0.0, eps], dtype=torch.float64, device=dev)
    d0, f0 = d.clone(), f.clone()
    reach_d, reach_f = 2 * hd, 2 * hf
    tr_d, tr_f = hd / res_d, hf / res_f  # trust radius in cells
    best_d, best_f = d.clone(), f.clone()
    best = torch.full((P,), -math.inf, dtype=torch.float64, device=dev)
    amp = None
    rows = torch.arange(P, device=dev)
    for it in range(n_steps + 1):
        cd = d[:, None] + res_d * offs
        cf = f[:, None] + res_f * offs
        cols, en = columns(cd)
        obj, num, den = evaluate(cols, en, cf)  # [P, 3, 3]
        amp = torch.zeros(P, dtype=num.dtype, device=dev) if amp is None else amp
        j0 = obj[:, 1, 1]
        up = j0 >= best
        best = torch.where(up, j0, best)
        best_d, best_f = torch.where(up, d, best_d), torch.where(up, f, best_f)
        amp = torch.where(up, num[rows, 1, 1] / den[rows, 1, 1], amp)
        if it == n_steps:
            break
        gd = (obj[:, 2, 1] - obj[:, 0, 1]) / (2 * eps)
        gf = (obj[:, 1, 2] - obj[:, 1, 0]) / (2 * eps)
        hdd = (obj[:, 2, 1] - 2 * j0 + obj[:, 0, 1]) / eps**2
        hff = (obj[:, 1, 2] - 2 * j0 + obj[:, 1, 0]) / eps**2
        hdf = (obj[:, 2, 2] - obj[:, 2, 0] - obj[:, 0, 2] + obj[:, 0, 0]) / (4 * eps**2)
        det = hdd * hff - hdf**2
        concave = (hdd < 0) & (det > 0)
        safe = torch.where(concave, det, torch.ones_like(det))
        nd = -(hff * gd - hdf * gf) / safe
        nf = -(-hdf * gd + hdd * gf) / safe
        norm = torch.sqrt((gd / tr_d) ** 2 + (gf / tr_f) ** 2).clamp_min(1e-300)
        nd = torch.where(concave, nd, gd / norm).clamp(-tr_d, tr_d)
        nf = torch.where(concave, nf, gf / norm).clamp(-tr_f, tr_f)
        # A point worse than the best: back half-way towards the best instead of stepping from it.
        back_d, back_f = 0.5 * (best_d - d) / res_d, 0.5 * (best_f - f) / res_f
        nd, nf = torch.where(up, nd, back_d), torch.where(up, nf, back_f)
        d = torch.minimum(torch.maximum(d + nd * res_d, d0 - reach_d), d0 + reach_d)
        f = torch.minimum(torch.maximum(f + nf * res_f, f0 - reach_f), f0 + reach_f)
        if bool(((nd.abs() < tol) & (nf.abs() < tol) & up).all()):
            break
    return best_d, best_f, amp, best


# ---------------------------------------------------------------------------------------------------- paths
def path_signatures(grid: SensingGrid, x: torch.Tensor, n: torch.Tensor, u_tx: torch.Tensor, d: torch.Tensor,
                    f: torch.Tensor, *, x_index: torch.Tensor | None = None) -> torch.Tensor:
    """Unit-amplitude path signatures (Eq. 6 at a beam output): [P, L, Ns, Ts] in the dtype of ``x``.

    ``x`` [P, N, Nt, Ns, Ts] transmit signals of each problem; per problem and path slot l: transmit AP ``n``
    [L] or [P, L] (long), AoD cosine ``u_tx``, bistatic range ``d`` (m) and Doppler ``f`` (Hz) [P, L] float64.
    ``s = exp(-j 2 pi i d df / c) exp(+j 2 pi t f dT) a_t^H(u_tx) x_n``. ``x`` may also be [S, N, Nt, Ns, Ts]
    shared by problems (problem p uses ``x[x_index[p]]``).
    """
    P, (N, nt, ns, ts) = u_tx.shape[0], x.shape[1:]
    index = torch.arange(P, device=x.device) if x_index is None else x_index
    rank, n_group = _group_rank(index)
    n = n.expand(u_tx.shape)
    a = steering_vectors(u_tx, nt, grid.spacing, x.dtype).conj()  # [P, L, Nt]
    b = torch.zeros((P, u_tx.shape[1], ns * ts), dtype=x.dtype, device=x.device)
    for k in range(N):
        sel = (n == k)
        if bool(sel.any()):
            b = b + _grouped_beams(a * sel[..., None], x[:, k].reshape(x.shape[0], nt, -1), index, rank, n_group)
    phase = (delay_phase(grid, d)[..., :, None] * doppler_phase(grid, f)[..., None, :]).to(x.dtype)
    return phase * b.reshape(P, -1, ns, ts)


def joint_fit(r: torch.Tensor, sigs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint least-squares amplitudes of signatures ``sigs`` [P, L, Ns, Ts] to data ``r`` [P, Ns, Ts].

    ``alpha = (S^H S)^+ S^H r`` (all-zero signatures are padding and get amplitude 0; pseudo-inverse, so coincident
    paths share their amplitude). Returns (alpha [P, L], fitted signal ``S alpha`` [P, Ns, Ts]).
    """
    gram = torch.einsum("plit,pkit->plk", sigs.conj(), sigs)
    rhs = torch.einsum("plit,pit->pl", sigs.conj(), r)
    amps = (torch.linalg.pinv(gram, rtol=1e-15, hermitian=True) @ rhs[..., None])[..., 0]
    return amps, torch.einsum("pl,plit->pit", amps, sigs)
