"""CPU fusion of the bistatic baselines' fronthaul messages (MUSIC, CS): AoA and per-transmit-AP range / Doppler.

Each receive AP m sends, per target slot q, the AoA direction cosine ``u_{m,q} = cos(vartheta_{m,q})`` and, per
transmit AP n, one bistatic range ``d_{n,m,q} = d_{n,q} + d_{m,q}`` (Eq. 7) and one bistatic Doppler
``f_{D,n,m,q} = (v_{n,q} + v_{m,q}) f_c / c`` (Eq. 9-11) (:class:`BistaticMessages`). The CPU, batched over scenes
(and over slot pairs, targets and fit starts) in float64 (torch on the messages' device; the fits in numpy on
the CPU):

1. locates every AP's slots: the AoA ray cut with each bistatic ellipse (:func:`cfisac.physics.ray_distance`),
   averaged over n; near endfire the half-wavelength alias of the AoA is tried and kept when its N intersections
   agree better;
2. associates every AP m's slots with AP 0's: the cost of merging AP 0's slot a with AP m's slot c is the robust
   cost of fitting one position to both slots' measurements; the assignment minimising the total cost is found by
   an exhaustive search over the Q! permutations (batched, Q <= 6) or the Hungarian algorithm (larger Q);
3. fuses each target's position by a multi-start robust (Cauchy loss, scale :data:`ROBUST_SCALE` resolution cells)
   bounded least-squares fit of all M AoAs (wrapped residuals) and N*M bistatic ranges, residuals in resolution
   cells; measurements off the robust fit by more than ``REJECT * ROBUST_SCALE`` cells are dropped and the rest
   refitted by plain least squares;
4. solves the velocity from all N*M Dopplers ``lambda f_D = (e_n + e_m) . v`` by the same robust bounded least
   squares (starts: the full and every leave-one-out least-squares solution, as the reference) and rejection.

It is the batched equivalent of :func:`cfisac.estimators.reference.signal_processing.fuse_messages` (the literal,
scene-at-a-time reference): every scipy ``least_squares(method="trf", loss="cauchy" or "linear", bounds=...)``
call of the reference is replaced by the same trust-region-reflective iteration batched over all problems
(:func:`trf_box_lsq`: Coleman-Li scaling, More's trust-region step, reflective step selection, scipy's radius
update and termination tests, the same evaluation caps), with the same starts, the same choice among them and the
same rejection masks. The path matters, not only the minimum: with several minima (a wrong range or AoA, starts
clipped onto the area's or the velocity box's edge) trf ends in a minimum that depends on its steps (it slides
along an edge from a start there), and an LM solver with projection ends elsewhere (measured: one CS scene 56 m
off at 50 dBm, 5 % / 11 % RMSE at 55 dBm). Positions are constrained to the area and velocities to
``[-max_speed, max_speed]^2``. Memory is a few hundred kB per scene (independent of Ns, Ts); on the reference
estimators' messages (quick, 45-55 dBm, 200 scenes) the estimates match the reference to < 1e-6 m and < 1e-5 m/s
except for a target fitted onto a receive AP, where the velocity rows are ill-defined (6e-4 m/s).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..config import SystemConfig
from ..physics import ApLayout, SensingGrid, aoa_direction, ray_distance
from . import Estimate

__all__ = ["BistaticMessages", "bistatic_message_bits", "fuse_bistatic", "trf_box_lsq"]

ROBUST_SCALE = 0.5  # Cauchy loss scale of the fusion, in resolution cells (as the reference)
REJECT = 4.0  # measurements off the robust fit by more than REJECT * ROBUST_SCALE cells are dropped
EXHAUSTIVE_MAX_Q = 6  # association by exhaustive permutation search up to this many targets

Residuals = Callable[..., tuple[np.ndarray, np.ndarray]]


@dataclass
class BistaticMessages:
    """What the receive APs send (Section III-D), per AP m and target slot q (slots of different APs unordered):

    ``aoa`` [B, M, Q] AoA direction cosine, ``ranges`` [B, M, Q, N] bistatic ranges d_{n,m,q} (m), ``dopplers``
    [B, M, Q, N] bistatic Dopplers f_{D,n,m,q} (Hz); float64 tensors on one device.
    """

    aoa: torch.Tensor
    ranges: torch.Tensor
    dopplers: torch.Tensor


def bistatic_message_bits(n_tx: int, n_targets: int) -> tuple[int, int]:
    """Bits per receive AP and update of a :class:`BistaticMessages` sender: (``fronthaul_bits_per_ap`` = 96 Q, the
    paper's count of Section III-D: AoA, range and Doppler of every target in 32-bit floats; ``message_bits_per_ap``
    = 32 (1 + 2N) Q, the message actually sent: the AoA and one range and Doppler per transmit AP)."""
    return 96 * n_targets, 32 * (1 + 2 * n_tx) * n_targets


# ---------------------------------------------------------------------------------------------------- solver
EPS = float(np.finfo(np.float64).eps)  # scipy's EPS
TRF_TOL = 1e-12  # ftol = xtol = gtol of the reference's least_squares calls


def _norm2(x: np.ndarray) -> np.ndarray:
    """Euclidean norms of the 2-vectors x [..., 2]."""
    return np.hypot(x[..., 0], x[..., 1])


def _trust_region_step(l1: np.ndarray, l2: np.ndarray, suf1: np.ndarray, suf2: np.ndarray, delta: np.ndarray,
                       alpha: np.ndarray, n_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched ``scipy.optimize._lsq.common.solve_lsq_trust_region`` for two unknowns.

    ``l1 >= l2`` [K] squared singular values of the augmented scaled Jacobian, ``suf1``, ``suf2`` [K] the
    components of ``s * U^T f`` (= ``V^T g_h``) on its right singular vectors, ``delta`` the radii, ``alpha`` the
    previous Levenberg-Marquardt parameters, ``n_rows`` the residual counts (rank threshold). The Gauss-Newton step
    where it is in the region, else More's iteration on ``alpha`` (10 at most, relative tolerance 0.01 on
    ``||p|| - delta``) and the step rescaled to norm ``delta``. Returns the step's components on the singular
    vectors (w1, w2: ``p_h = -(w1 v1 + w2 v2)``) and the new ``alpha``.
    """
    full_rank = l2 > (EPS * n_rows) ** 2 * l1
    w1, w2 = suf1 / l1, suf2 / l2
    gn_ok = full_rank & (np.hypot(w1, w2) <= delta)
    if gn_ok.all():
        return w1, w2, np.zeros_like(alpha)

    def phi_and_derivative(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        d1, d2 = l1 + a, l2 + a
        q1, q2 = suf1 / d1, suf2 / d2
        p_norm = np.hypot(q1, q2)
        return p_norm - delta, -(q1 * q1 / d1 + q2 * q2 / d2) / p_norm, q1, q2

    upper = np.hypot(suf1, suf2) / delta
    phi0, dphi0 = phi_and_derivative(np.zeros_like(delta))[:2]
    lower = np.where(full_rank, -phi0 / dphi0, 0.0)
    a = np.where(~full_rank & (alpha == 0), np.maximum(0.001 * upper, np.sqrt(lower * upper)), alpha)
    active = ~gn_ok
    for _ in range(10):
        a_in = np.where((a < lower) | (a > upper), np.maximum(0.001 * upper, np.sqrt(lower * upper)), a)
        phi, dphi = phi_and_derivative(a_in)[:2]
        ratio = phi / dphi
        upper = np.where(active & (phi < 0), a_in, upper)
        lower = np.where(active, np.maximum(lower, a_in - ratio), lower)
        a = np.where(active, a_in - (phi + delta) * ratio / delta, a)
        active &= np.abs(phi) >= 0.01 * delta
        if not active.any():
            break
    _, _, q1, q2 = phi_and_derivative(a)
    scale = delta / np.hypot(q1, q2)
    return np.where(gn_ok, w1, q1 * scale), np.where(gn_ok, w2, q2 * scale), np.where(gn_ok, 0.0, a)


def _step_to_bound(x: np.ndarray, s: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``step_size_to_bound``: (smallest t >= 0 with x + t s on the box [K], hits [K, 2] bool)."""
    t = np.where(s != 0, np.maximum((lo - x) / s, (hi - x) / s), np.inf)
    t_min = t.min(-1)
    return t_min, (t == t_min[:, None]) & (s != 0)


def _quadratic(a00: np.ndarray, a01: np.ndarray, a11: np.ndarray, g_h: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``evaluate_quadratic``: ``0.5 s^T aug s + g_h^T s`` with ``aug = J_h^T J_h + diag_h = [[a00, a01], [a01,
    a11]]``."""
    s0, s1 = s[:, 0], s[:, 1]
    return 0.5 * (a00 * s0 * s0 + 2.0 * a01 * s0 * s1 + a11 * s1 * s1) + g_h[:, 0] * s0 + g_h[:, 1] * s1


def _minimize_1d(a: np.ndarray, b: np.ndarray, c: np.ndarray | float, lo: np.ndarray, hi: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``minimize_quadratic_1d`` of ``a t^2 + b t + c`` on [lo, hi]: (t, value); the first of lo, hi, extremum."""
    ext = -0.5 * b / a
    ext_ok = (a != 0) & (lo < ext) & (ext < hi)
    ts = np.stack([lo, hi, np.where(ext_ok, ext, lo)], -1)
    ys = ts * (a[:, None] * ts + b[:, None]) + np.asarray(c)[..., None]
    ys[:, 2] = np.where(ext_ok, ys[:, 2], np.inf)
    i = ys.argmin(-1)[:, None]
    return np.take_along_axis(ts, i, 1)[:, 0], np.take_along_axis(ys, i, 1)[:, 0]


def _select_step(x: np.ndarray, aug: tuple[np.ndarray, np.ndarray, np.ndarray], g_h: np.ndarray, p: np.ndarray,
                 p_h: np.ndarray, d: np.ndarray, delta: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched ``scipy.optimize._lsq.trf.select_step``: (step [K, 2], step_h [K, 2], predicted reduction [K]).

    The trust-region step where it stays in the box; else the best (on the quadratic model) of the step cut at the
    bound and shrunk by ``theta``, its reflection and the scaled gradient step.
    """
    xp = x + p
    inside = ((xp >= lo) & (xp <= hi)).all(-1)
    p_value_full = _quadratic(*aug, g_h, p_h)
    if inside.all():
        return p, p_h, -p_value_full
    p_stride, hits = _step_to_bound(x, p, lo, hi)
    r_h = np.where(hits, -p_h, p_h)
    r = d * r_h
    p_b, p_hb = p * p_stride[:, None], p_h * p_stride[:, None]
    # intersect_trust_region(p_hb, r_h, delta): the positive root
    qa, qb, qc = (r_h * r_h).sum(-1), (p_hb * r_h).sum(-1), (p_hb * p_hb).sum(-1) - delta**2
    disc = np.sqrt(np.maximum(qb * qb - qa * qc, 0.0))
    qq = -(qb + np.where(qb >= 0, disc, -disc))
    to_tr = np.maximum(qq / qa, qc / qq)
    to_bound = _step_to_bound(x + p_b, r, lo, hi)[0]
    r_stride = np.minimum(to_bound, to_tr)
    pos = r_stride > 0
    r_lo = np.where(pos, (1 - theta) * p_stride / r_stride, 0.0)
    r_hi = np.where(pos, np.where(r_stride == to_bound, theta * to_bound, to_tr), -1.0)
    avail = r_lo <= r_hi
    # build_quadratic_1d(J_h, g_h, r_h, s0=p_hb, diag=diag_h)
    a00, a01, a11 = aug
    ar = np.stack([a00 * r_h[:, 0] + a01 * r_h[:, 1], a01 * r_h[:, 0] + a11 * r_h[:, 1]], -1)
    ap = np.stack([a00 * p_hb[:, 0] + a01 * p_hb[:, 1], a01 * p_hb[:, 0] + a11 * p_hb[:, 1]], -1)
    a = 0.5 * (ar * r_h).sum(-1)
    b = ((g_h + ap) * r_h).sum(-1)
    c = ((0.5 * ap + g_h) * p_hb).sum(-1)
    t_r, r_value = _minimize_1d(a, b, c, r_lo, np.where(avail, r_hi, r_lo))
    r_value = np.where(avail, r_value, np.inf)
    r_h2 = r_h * t_r[:, None] + p_hb
    p_t, p_ht = p_b * theta[:, None], p_hb * theta[:, None]
    p_value = _quadratic(*aug, g_h, p_ht)
    ag_h = -g_h
    ag = d * ag_h
    to_tr_g = delta / _norm2(ag_h)
    to_bound_g = _step_to_bound(x, ag, lo, hi)[0]
    ag_stride = np.where(to_bound_g < to_tr_g, theta * to_bound_g, to_tr_g)
    qa_g = _quadratic(a00, a01, a11, np.zeros_like(g_h), ag_h)
    qb_g = (g_h * ag_h).sum(-1)
    t_g, ag_value = _minimize_1d(qa_g, qb_g, 0.0, np.zeros_like(qa_g), ag_stride)
    use_p = ((p_value < r_value) & (p_value < ag_value))[:, None]
    use_r = ((r_value < p_value) & (r_value < ag_value))[:, None]
    keep = inside[:, None]
    step = np.where(keep, p, np.where(use_p, p_t, np.where(use_r, r_h2 * d, ag * t_g[:, None])))
    step_h = np.where(keep, p_h, np.where(use_p, p_ht, np.where(use_r, r_h2, ag_h * t_g[:, None])))
    value = np.where(use_p[:, 0], p_value, np.where(use_r[:, 0], r_value, ag_value))
    return step, step_h, -np.where(inside, p_value_full, value)


def _scaled(r: np.ndarray, jac: np.ndarray, m: np.ndarray, robust: bool,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cost [K], scaled residuals [K, R], scaled Jacobian [K, R, 2]) as scipy's ``scale_for_robust_loss_function``
    (Cauchy loss of scale :data:`ROBUST_SCALE`, ``robust``) or the plain residuals; ``m`` masks the dropped ones."""
    if not robust:
        mr = m * r
        return 0.5 * (mr * r).sum(-1), mr, m[..., None] * jac
    z = (r / ROBUST_SCALE) ** 2
    rho1 = 1.0 / (1.0 + z)
    js = np.sqrt(np.maximum(rho1 * (1.0 - 2.0 * z * rho1), EPS))  # rho' + 2 rho'' r^2, at least EPS, square root
    cost = 0.5 * ROBUST_SCALE**2 * (m * np.log1p(z)).sum(-1)
    return cost, m * r * rho1 / js, (m * js)[..., None] * jac


def trf_box_lsq(fn: Residuals, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                data: tuple[np.ndarray, ...] = (), mask: np.ndarray | None = None, *, robust: bool,
                max_nfev: int) -> tuple[np.ndarray, np.ndarray]:
    """Batched trust-region-reflective bounded (robust) least squares in two unknowns, step for step scipy's
    ``least_squares(method="trf", loss="cauchy" or "linear", f_scale=ROBUST_SCALE, bounds=(lower, upper),
    x_scale=1, tr_solver="exact", ftol=xtol=gtol=1e-12, max_nfev=max_nfev)``; numpy float64 on the CPU.

    ``x0`` [*batch, 2]: the starts, strictly inside the box ``lower < x < upper`` ([2] each). ``data``: arrays
    [*batch, ...] (leading dims broadcastable to ``batch``) describing each problem;
    ``fn(x [K, 2], *data [K, ...]) -> (r [K, R], J [K, R, 2] or broadcastable)`` evaluates the residuals and their
    Jacobian of K problems. ``mask`` [*batch, R] (broadcastable; None: all ones) is 1 for the residuals used, 0 for
    dropped ones. ``robust``: Cauchy loss ``s^2 / 2 log(1 + (r/s)^2)`` of scale :data:`ROBUST_SCALE`, else
    ``r^2 / 2``.

    Coleman-Li scaling ``v`` (distance to the bound the gradient points to), More's trust-region step on the
    closed-form 2 x 2 eigen-decomposition of the scaled augmented normal matrix (= the SVD scipy takes), the
    reflective / truncated / scaled-gradient step selection, strictly feasible iterates (``nextafter`` of a bound),
    scipy's radius update and termination tests. Every loop iteration is one function evaluation of every running
    problem (a rejected step shrinks the radius and is retried at the next one); finished problems leave the
    batch. Returns (x [*batch, 2], cost [*batch]).
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # in branches np.where discards
        return _trf_box_lsq(fn, x0, lower, upper, data, mask, robust, max_nfev)


def _trf_box_lsq(fn: Residuals, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray, data: tuple[np.ndarray, ...],
                 mask: np.ndarray | None, robust: bool, max_nfev: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`trf_box_lsq` (floating-point warnings not suppressed)."""
    batch = x0.shape[:-1]
    n = int(np.prod(batch))

    def flat(t: np.ndarray) -> np.ndarray:
        tail = t.shape[len(batch):]
        return np.broadcast_to(t, (*batch, *tail)).reshape(n, *tail)

    lo, hi = lower, upper
    lo_in, hi_in = np.nextafter(lo, hi), np.nextafter(hi, lo)
    data = tuple(flat(t) for t in data)
    x = x0.reshape(n, 2).copy()
    r, jac = fn(x, *data)
    m = np.ones_like(r) if mask is None else np.broadcast_to(flat(mask).astype(r.dtype), r.shape).copy()
    n_rows = m.sum(-1)
    cost, f, J = _scaled(r, np.broadcast_to(jac, (*r.shape, 2)), m, robust)
    g = np.einsum("kr,krj->kj", f, J)
    v = np.where(g < 0, hi - x, np.where(g > 0, x - lo, 1.0))
    delta = _norm2(x / np.sqrt(v))
    delta = np.where(delta == 0, 1.0, delta)
    alpha = np.zeros_like(delta)
    nfev = np.ones_like(delta)  # +inf once a termination test is met
    out_x, out_cost = x.copy(), cost.copy()
    idx = np.arange(n)
    while True:
        v = np.where(g < 0, hi - x, np.where(g > 0, x - lo, 1.0))
        g_norm = np.abs(g * v).max(-1)
        stop = (g_norm < TRF_TOL) | (nfev >= max_nfev)
        if stop.any():  # retire the finished problems
            out_x[idx[stop]], out_cost[idx[stop]] = x[stop], cost[stop]
            run = ~stop
            if not run.any():
                break
            idx, x, f, J, g, cost, delta, alpha, nfev, m, n_rows, v, g_norm = (
                t[run] for t in (idx, x, f, J, g, cost, delta, alpha, nfev, m, n_rows, v, g_norm))
            data = tuple(t[run] for t in data)
        d = np.sqrt(v)
        g_h = d * g
        jh = J * d[:, None, :]
        j0, j1 = jh[..., 0], jh[..., 1]
        a00 = (j0 * j0).sum(-1) + np.abs(g[:, 0])  # J_h^T J_h + diag(g dv), dv = sign(g) (finite bounds)
        a01 = (j0 * j1).sum(-1)
        a11 = (j1 * j1).sum(-1) + np.abs(g[:, 1])
        l1 = 0.5 * (a00 + a11) + np.hypot(0.5 * (a00 - a11), a01)
        l2 = np.maximum((a00 * a11 - a01 * a01) / l1, 0.0)
        ang = 0.5 * np.arctan2(2.0 * a01, a00 - a11)  # first singular vector (cos, sin)
        cs, sn = np.cos(ang), np.sin(ang)
        w1, w2, alpha = _trust_region_step(l1, l2, cs * g_h[:, 0] + sn * g_h[:, 1], cs * g_h[:, 1] - sn * g_h[:, 0],
                                           delta, alpha, n_rows)
        p_h = -np.stack([w1 * cs - w2 * sn, w1 * sn + w2 * cs], -1)
        theta = np.maximum(1.0 - g_norm, 0.995)
        step, step_h, predicted = _select_step(x, (a00, a01, a11), g_h, d * p_h, p_h, d, delta, lo, hi, theta)
        x_new = x + step
        x_new = np.where(x_new <= lo, lo_in, np.where(x_new >= hi, hi_in, x_new))
        r_new, jac_new = fn(x_new, *data)
        cost_new, f_new, J_new = _scaled(r_new, np.broadcast_to(jac_new, (*r_new.shape, 2)), m, robust)
        step_h_norm = _norm2(step_h)
        reduction = cost - cost_new
        ratio = np.where(predicted > 0, reduction / predicted, ((predicted == 0) & (reduction == 0)) * 1.0)
        delta_new = np.where(ratio < 0.25, 0.25 * step_h_norm,
                             np.where((ratio > 0.75) & (step_h_norm > 0.95 * delta), 2.0 * delta, delta))
        terminated = ((reduction < TRF_TOL * cost) & (ratio > 0.25)) | (
            _norm2(step) < TRF_TOL * (TRF_TOL + _norm2(x)))
        alpha = np.where(terminated, alpha, alpha * delta / delta_new)
        delta = np.where(terminated, delta, delta_new)
        ok = reduction > 0
        x = np.where(ok[:, None], x_new, x)
        f = np.where(ok[:, None], f_new, f)
        J = np.where(ok[:, None, None], J_new, J)
        cost = np.where(ok, cost_new, cost)
        g = np.einsum("kr,krj->kj", f, J)
        nfev = np.where(terminated, np.inf, nfev + 1)
    return out_x.reshape(*batch, 2), out_cost.reshape(batch)


# ---------------------------------------------------------------------------------------------------- geometry
def _ray_points(lay: ApLayout, u: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """AoA ray of every AP and slot cut with each transmit AP's bistatic ellipse: [B, M, Q, N, 2] (not clipped).

    ``u`` [B, M, Q] AoA cosines, ``d`` [B, M, Q, N] bistatic ranges.
    """
    e = aoa_direction(u, lay.rx_axes[:, None, :], lay.rx_side[:, None])[..., None, :]  # [B, M, Q, 1, 2]
    rx = lay.rx[:, None, None, :]
    return rx + ray_distance(d, rx, e, lay.tx)[..., None] * e


def _local_locations(lay: ApLayout, grid: SensingGrid, u: torch.Tensor, d: torch.Tensor,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-AP locations of every slot [B, M, Q, 2] and the clipped ray / ellipse points [B, M, Q, N, 2].

    The location is the mean of the N ray / ellipse intersections; near endfire (``|u| > 1 - u_res / 2``, a
    half-wavelength array, N > 1) the aliased cosine ``u - sign(u) / spacing`` is used instead when its N
    intersections spread (sum of distances to their mean) less, as
    :func:`cfisac.estimators.reference.signal_processing.local_location`. Both outputs are clipped to the area.
    """
    pts = _ray_points(lay, u, d)
    loc = pts.mean(-2)
    spread = torch.linalg.vector_norm(pts - loc[..., None, :], dim=-1).sum(-1)
    n_tx = d.shape[-1]
    if grid.spacing >= 0.5 - 1e-12 and n_tx > 1:
        alias_u = (u - torch.sign(u) / grid.spacing).clamp(-1.0, 1.0)
        apts = _ray_points(lay, alias_u, d)
        aloc = apts.mean(-2)
        aspread = torch.linalg.vector_norm(apts - aloc[..., None, :], dim=-1).sum(-1)
        use = (u.abs() > 1.0 - grid.u_res / 2) & (aspread < spread - 1e-9)
        loc = torch.where(use[..., None], aloc, loc)
    lo, hi = lay.lower, lay.upper
    return torch.clamp(loc, lo, hi), torch.clamp(pts, lo, hi)


def _position_residuals(g: np.ndarray, tx: np.ndarray, rx: np.ndarray, axes: np.ndarray, u: np.ndarray,
                        d: np.ndarray, grid: SensingGrid) -> tuple[np.ndarray, np.ndarray]:
    """Residuals (resolution cells) [K, R] and Jacobian [K, R, 2] at ``g`` [K, 2] (numpy).

    The A receive APs at ``rx`` with axes ``axes`` [K, A, 2] measured AoA cosines ``u`` [K, A] and bistatic
    ranges ``d`` [K, A, N] of the transmit APs ``tx`` [N, 2]; ``R = A + A N`` residuals
    ``wrap(axis . e_m(g) - u_m) / u_res`` then ``(||g - t_n|| + ||g - r_m|| - d_{m,n}) / range_res`` in (m, n)
    row-major order (Eq. 7); the AoA cosine ``axis . e`` has gradient ``(axis - u e) / rho``.
    """
    dr = g[:, None, :] - rx  # [K, A, 2]
    rr = np.maximum(_norm2(dr), 1e-6)
    er = dr / rr[..., None]
    dt = g[:, None, :] - tx  # [K, N, 2]
    rt = np.maximum(_norm2(dt), 1e-6)
    et = dt / rt[..., None]
    u_model = (er * axes).sum(-1)
    du = (axes - u_model[..., None] * er) / rr[..., None]
    d_model = rt[:, None, :] + rr[:, :, None]  # [K, A, N]
    dd = et[:, None, :, :] + er[:, :, None, :]  # [K, A, N, 2]
    period = 1.0 / grid.spacing
    wrapped = (u_model - u + period / 2) % period - period / 2
    K = g.shape[0]
    res = np.concatenate([wrapped / grid.u_res, ((d_model - d) / grid.range_res).reshape(K, -1)], -1)
    jac = np.concatenate([du / grid.u_res, dd.reshape(K, -1, 2) / grid.range_res], -2)
    return res, jac


def _numpy(t: torch.Tensor) -> np.ndarray:
    """float64 numpy copy of a tensor (on the CPU)."""
    return t.detach().to("cpu", torch.float64).numpy()


def _fit_positions(lay: ApLayout, grid: SensingGrid, rx: torch.Tensor, axes: torch.Tensor, u: torch.Tensor,
                   d: torch.Tensor, starts: torch.Tensor, *, refit: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-start robust bounded position fits of P problems: (positions [P, 2], robust cost [P]) on the device.

    ``rx`` / ``axes`` [P, A, 2], ``u`` [P, A], ``d`` [P, A, N], ``starts`` [P, S, 2]; as the reference, each start
    (moved 1e-6 m into the area) is fitted by :func:`trf_box_lsq` (100 evaluations at most) and the first of
    lowest Cauchy cost wins; with ``refit`` the residuals beyond ``REJECT * ROBUST_SCALE`` cells of it are dropped
    and the rest refitted by plain bounded least squares when some are dropped and at least 3 remain.
    """
    dev = u.device
    lo, hi, tx = _numpy(lay.lower), _numpy(lay.upper), _numpy(lay.tx)
    rx, axes, u, d = _numpy(rx), _numpy(axes), _numpy(u), _numpy(d)
    x0 = np.minimum(np.maximum(_numpy(starts), lo + 1e-6), hi - 1e-6)

    def fn(g: np.ndarray, rx: np.ndarray, axes: np.ndarray, u: np.ndarray, d: np.ndarray,
           ) -> tuple[np.ndarray, np.ndarray]:
        return _position_residuals(g, tx, rx, axes, u, d, grid)

    x, cost = trf_box_lsq(fn, x0, lo, hi, (rx[:, None], axes[:, None], u[:, None], d[:, None]), robust=True,
                          max_nfev=100)
    rows = np.arange(x.shape[0])
    best = cost.argmin(-1)
    g, best_cost = x[rows, best], cost[rows, best]
    if refit:
        keep = np.abs(fn(g, rx, axes, u, d)[0]) <= REJECT * ROBUST_SCALE
        need = ~keep.all(-1) & (keep.sum(-1) >= 3)
        if need.any():
            g[need] = trf_box_lsq(fn, g[need], lo, hi, (rx[need], axes[need], u[need], d[need]), keep[need],
                                  robust=False, max_nfev=100)[0]
    return torch.from_numpy(g).to(dev), torch.from_numpy(best_cost).to(dev)


def _lstsq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Least-squares solutions of ``a`` [..., R, 2] x = ``b`` [..., R]: [..., 2].

    The 2 x 2 normal equations in closed form; the minimum-norm pseudo-inverse solution where they are singular.
    """
    a0, a1 = a[..., 0], a[..., 1]
    n00, n01, n11 = (a0 * a0).sum(-1), (a0 * a1).sum(-1), (a1 * a1).sum(-1)
    c0, c1 = (a0 * b).sum(-1), (a1 * b).sum(-1)
    det = n00 * n11 - n01 * n01
    singular = det <= 1e-10 * (n00 + n11) ** 2
    safe = torch.where(singular, torch.ones_like(det), det)
    x = torch.stack([n11 * c0 - n01 * c1, n00 * c1 - n01 * c0], -1) / safe[..., None]
    if bool(singular.any()):
        x = torch.where(singular[..., None], (torch.linalg.pinv(a) @ b[..., None])[..., 0], x)
    return x


def _fit_velocities(lay: ApLayout, grid: SensingGrid, g: torch.Tensor, f: torch.Tensor, vmax: float) -> torch.Tensor:
    """Velocities [P, 2] of P targets at ``g`` [P, 2] from their Dopplers ``f`` [P, M, N] (Eq. 9-11).

    Rows ``(e_m + e_n) / velocity_res`` and targets ``lambda f / velocity_res`` in (m, n) row-major order; as the
    reference, the robust bounded fit (:func:`trf_box_lsq`, 200 evaluations at most) starts from the least-squares
    solution and every leave-one-out one (clipped to the box), the first start that lowers the best cost by more
    than 1e-15 wins, then the same rejection and plain refit as the positions.
    """
    er = g[:, None, :] - lay.rx
    er = er / torch.linalg.vector_norm(er, dim=-1, keepdim=True).clamp_min(1e-6)
    et = g[:, None, :] - lay.tx
    et = et / torch.linalg.vector_norm(et, dim=-1, keepdim=True).clamp_min(1e-6)
    a = (er[:, :, None, :] + et[:, None, :, :]).flatten(1, 2) / grid.velocity_res  # [P, R, 2]
    b = grid.wavelength * f.flatten(1) / grid.velocity_res  # [P, R]
    n_rows = a.shape[1]
    lim = vmax - 1e-9
    v0 = _lstsq(a, b).clamp(-lim, lim)
    if n_rows <= 2:
        return v0
    loo = 1.0 - torch.eye(n_rows, dtype=a.dtype, device=a.device)  # [R (left out), R]
    starts = torch.cat([v0[:, None], _lstsq(a[:, None] * loo[..., None], b[:, None] * loo).clamp(-lim, lim)], 1)
    lo, hi = np.full(2, -vmax), np.full(2, vmax)
    a, b, starts = _numpy(a), _numpy(b), _numpy(starts)

    def fn(v: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (a * v[:, None, :]).sum(-1) - b, a

    x, cost = trf_box_lsq(fn, starts, lo, hi, (a[:, None], b[:, None]), robust=True, max_nfev=200)
    v, best = x[:, 0].copy(), np.full(cost.shape[0], np.inf)
    for k in range(x.shape[1]):  # the first start that lowers the best cost by more than 1e-15 (as the reference)
        better = cost[:, k] < best - 1e-15
        v[better], best[better] = x[better, k], cost[better, k]
    keep = np.abs(fn(v, a, b)[0]) <= REJECT * ROBUST_SCALE
    need = ~keep.all(-1) & (keep.sum(-1) >= 3)
    if need.any():
        v[need] = trf_box_lsq(fn, v[need], lo, hi, (a[need], b[need]), keep[need], robust=False, max_nfev=200)[0]
    return torch.from_numpy(v).to(g.device)


# ---------------------------------------------------------------------------------------------------- association
def _assign(cost: torch.Tensor) -> torch.Tensor:
    """Minimum-total-cost assignments of cost matrices [..., Q, Q]: ``perm`` [..., Q] with row a -> column perm[a].

    Exhaustive search over the Q! permutations in torch for Q <= :data:`EXHAUSTIVE_MAX_Q` (first minimum in
    lexicographic order), else ``scipy.optimize.linear_sum_assignment`` per matrix on the CPU.
    """
    Q = cost.shape[-1]
    if Q <= EXHAUSTIVE_MAX_Q:
        perms = torch.tensor(list(itertools.permutations(range(Q))), dtype=torch.long, device=cost.device)  # [K, Q]
        rows = torch.arange(Q, device=cost.device)
        total = cost[..., rows, perms].sum(-1)  # [..., K]
        return perms[total.argmin(-1)]
    from scipy.optimize import linear_sum_assignment

    flat = cost.detach().cpu().reshape(-1, Q, Q).numpy()
    out = torch.stack([torch.as_tensor(linear_sum_assignment(c)[1]) for c in flat])
    return out.reshape(cost.shape[:-1]).to(cost.device)


def _associate(lay: ApLayout, grid: SensingGrid, u: torch.Tensor, d: torch.Tensor, local: torch.Tensor,
               rays: torch.Tensor) -> torch.Tensor:
    """Slot permutations [B, M, Q]: AP m's slot ``perm[b, m, q]`` is matched to AP 0's slot q (AP 0: identity).

    The cost of merging AP 0's slot a with AP m's slot c is the robust cost of the 2-AP position fit of both
    slots' AoAs and ranges, started from both slots' locations and ray / ellipse points; all B (M - 1) Q Q fits
    run as one batch. ``u`` [B, M, Q], ``d`` [B, M, Q, N], ``local`` [B, M, Q, 2], ``rays`` [B, M, Q, N, 2].
    """
    B, M, Q, N = d.shape
    ident = torch.arange(Q, device=u.device).expand(B, 1, Q)
    if M == 1:
        return ident
    shape = (B, M - 1, Q, Q)

    def pair(t: torch.Tensor) -> torch.Tensor:
        """Stack AP 0's slot a and AP m's slot c of a [B, M, Q, ...] tensor: [B, M-1, Q, Q, 2, ...]."""
        t0 = t[:, :1, :, None].expand(*shape, *t.shape[3:])
        tm = t[:, 1:, None, :].expand(*shape, *t.shape[3:])
        return torch.stack([t0, tm], 4)

    u2, d2, loc2, ray2 = pair(u), pair(d), pair(local), pair(rays)
    starts = torch.cat([loc2, ray2.flatten(4, 5)], 4)  # [B, M-1, Q, Q, 2 + 2N, 2]
    rx = torch.stack([lay.rx[:1].expand(M - 1, 2), lay.rx[1:]], 1)  # [M-1, 2, 2]
    axes = torch.stack([lay.rx_axes[:1].expand(M - 1, 2), lay.rx_axes[1:]], 1)
    P = B * (M - 1) * Q * Q
    rx = rx[None, :, None, None].expand(*shape, 2, 2).reshape(P, 2, 2)
    axes = axes[None, :, None, None].expand(*shape, 2, 2).reshape(P, 2, 2)
    cost = _fit_positions(lay, grid, rx, axes, u2.reshape(P, 2), d2.reshape(P, 2, N),
                          starts.reshape(P, 2 + 2 * N, 2), refit=False)[1]
    return torch.cat([ident, _assign(cost.reshape(shape))], 1)


# ---------------------------------------------------------------------------------------------------- fusion
def _check_messages(cfg: SystemConfig, msgs: BistaticMessages, velocity: bool) -> None:
    """``ValueError`` naming the field unless the messages are finite float tensors of ``cfg``'s shapes."""
    if not isinstance(msgs, BistaticMessages):
        raise ValueError(f"msgs must be a BistaticMessages, got {type(msgs).__name__}")
    M, N, Q = cfg.n_rx, cfg.n_tx, cfg.n_targets
    want = {"aoa": (M, Q), "ranges": (M, Q, N), "dopplers": (M, Q, N)}
    axes = {"aoa": "B, M, Q", "ranges": "B, M, Q, N", "dopplers": "B, M, Q, N"}
    batch, device = None, None
    for name, tail in want.items():
        t = getattr(msgs, name)
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"msgs.{name} must be a real floating torch.Tensor [{axes[name]}], got {got}")
        if t.dim() != len(tail) + 1 or tuple(t.shape[1:]) != tail or t.shape[0] == 0:
            raise ValueError(f"msgs.{name} has shape {tuple(t.shape)}, expected [{axes[name]}] = (B, "
                             f"{', '.join(map(str, tail))}) with B >= 1")
        if batch is not None and t.shape[0] != batch:
            raise ValueError(f"msgs.{name} has batch {t.shape[0]} but msgs.aoa has {batch}")
        if device is not None and t.device != device:
            raise ValueError(f"msgs.{name} is on {t.device} but msgs.aoa is on {device}")
        batch, device = t.shape[0], t.device
        if (name != "dopplers" or velocity) and not bool(torch.isfinite(t).all()):
            raise ValueError(f"msgs.{name} contains NaN or inf")


def fuse_bistatic(cfg: SystemConfig, msgs: BistaticMessages, *, velocity: bool = True) -> Estimate:
    """Positions / velocities [B, Q, 2] float64 on the messages' device from the messages (module docstring).

    ``msgs`` holds ``aoa`` [B, M, Q], ``ranges`` / ``dopplers`` [B, M, Q, N] (real floating tensors, computed in
    float64; Q = ``cfg.n_targets``). ``velocity=False`` returns NaN velocities (the Dopplers may then be NaN).
    Raises ``ValueError`` naming the field on a wrong type, shape, batch, device or non-finite entry.
    """
    _check_messages(cfg, msgs, velocity)
    dev = msgs.aoa.device
    u, d = msgs.aoa.double(), msgs.ranges.double()
    grid = SensingGrid.from_config(cfg, dev)
    lay = ApLayout.from_config(cfg, dev)
    B, M, Q, N = d.shape
    local, rays = _local_locations(lay, grid, u, d)
    perm = _associate(lay, grid, u, d, local, rays)  # [B, M, Q]

    def gather(t: torch.Tensor) -> torch.Tensor:
        """AP m's slot perm[b, m, q] of a [B, M, Q, ...] tensor, targets first: [B, Q, M, ...]."""
        idx = perm.reshape(B, M, Q, *([1] * (t.dim() - 3))).expand(B, M, Q, *t.shape[3:])
        return torch.gather(t, 2, idx).transpose(1, 2)

    starts = torch.cat([gather(local), gather(rays).flatten(2, 3)], 2).reshape(B * Q, M * (1 + N), 2)
    rx = lay.rx.expand(B * Q, M, 2)
    axes = lay.rx_axes.expand(B * Q, M, 2)
    g = _fit_positions(lay, grid, rx, axes, gather(u).reshape(B * Q, M), gather(d).reshape(B * Q, M, N), starts,
                       refit=True)[0]
    if velocity:
        f = gather(msgs.dopplers.double()).reshape(B * Q, M, N)
        v = _fit_velocities(lay, grid, g, f, cfg.max_speed)
    else:
        v = torch.full_like(g, float("nan"))
    return Estimate(g.reshape(B, Q, 2), v.reshape(B, Q, 2))
