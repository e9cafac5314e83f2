"""CPU fusion of the classical baselines' receive-AP messages (paper Section V-A), the literal scene-at-a-time
reference of :func:`cfisac.estimators.fusion.fuse_bistatic`.

Each receive AP sends, per target, the AoA cosine, the N bistatic ranges and the N bistatic Dopplers (one per
transmit AP). The CPU (1) locates every AP's targets from the AoA line and the bistatic ellipses, (2) associates the
targets across receive APs by the Hungarian algorithm on the cost of fitting one position to both APs'
measurements, (3) fuses positions by robust (Cauchy loss, multi-start) nonlinear least squares over all AoAs and
bistatic ranges, residuals in units of the resolution cells, and (4) solves the velocity vector by robust linear
least squares from all N*M bistatic Dopplers ``lambda f_D = (e_n + e_m) . v``. Positions are constrained to the
area and velocities to the prior box ``[-max_speed, max_speed]^2`` (bounded least squares). Split from
:mod:`.signal_processing` (which still exports these names).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import least_squares, linear_sum_assignment

from ...config import SystemConfig
from .. import Estimate
from .signal_processing import Comb, endfire_alias, locate_on_ray, ray_side, wrap_cosine

__all__ = ["REJECT", "ROBUST_SCALE", "ApMessages", "Layout", "associate", "fuse_messages", "local_location"]

# ---------------------------------------------------------------------------------------------------- CPU fusion
@dataclass
class ApMessages:
    """What the receive APs send to the CPU (Section III-D): per AP m and target slot q

    ``aoa`` [B, M, Q] AoA direction cosine, ``ranges`` [B, M, Q, N] bistatic ranges d_{n,m,q} (m), ``dopplers``
    [B, M, Q, N] bistatic Dopplers f_{D,n,m,q} (Hz), float64. The target slots of different APs are unordered.
    """

    aoa: np.ndarray
    ranges: np.ndarray
    dopplers: np.ndarray


def associate(points: np.ndarray) -> np.ndarray:
    """Permutations [M, Q] aligning each AP's target slots with AP 0's (Hungarian on squared distances).

    ``points`` [M, Q, 2]: one location per AP and slot; ``points[m, perm[m, q]]`` is AP m's slot matched to AP 0's
    slot q (``scipy.optimize.linear_sum_assignment``).
    """
    M, Q, _ = points.shape
    perm = np.tile(np.arange(Q), (M, 1))
    for m in range(1, M):
        cost = ((points[0][:, None, :] - points[m][None, :, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        perm[m, rows] = cols
    return perm


class Layout:
    """AP positions, axes, receive-array sides (:func:`ray_side`) and the area box of a config, as numpy arrays."""

    def __init__(self, cfg: SystemConfig) -> None:
        self.tx = np.array(cfg.tx_positions, dtype=np.float64)
        self.rx = np.array(cfg.rx_positions, dtype=np.float64)
        self.tx_axes = np.array(cfg.tx_axes, dtype=np.float64)
        self.rx_axes = np.array(cfg.rx_axes, dtype=np.float64)
        self.rx_side = np.array([ray_side(p, a, cfg.area) for p, a in zip(self.rx, self.rx_axes, strict=True)])
        (x0, x1), (y0, y1) = cfg.area
        self.lower = np.array([x0, y0])
        self.upper = np.array([x1, y1])


def _position_residuals(g: np.ndarray, lay: Layout, aps: np.ndarray, u: np.ndarray, d: np.ndarray,
                        comb: Comb) -> tuple[np.ndarray, np.ndarray]:
    """Residuals (in resolution cells) and Jacobian of AoAs ``u`` [A] and bistatic ranges ``d`` [A, N]."""
    rx, ax = lay.rx[aps], lay.rx_axes[aps]
    dr = g - rx
    rr = np.maximum(np.linalg.norm(dr, axis=-1), 1e-6)
    er = dr / rr[:, None]
    dt = g - lay.tx
    rt = np.maximum(np.linalg.norm(dt, axis=-1), 1e-6)
    et = dt / rt[:, None]
    u_model = (er * ax).sum(-1)
    du = (ax - u_model[:, None] * er) / rr[:, None]  # d(axis . e)/dg
    d_model = rt[None, :] + rr[:, None]  # [A, N]
    dd = et[None, :, :] + er[:, None, :]  # [A, N, 2]
    du_res = wrap_cosine(u_model - u, comb.spacing)
    res = np.concatenate([du_res / comb.u_res, ((d_model - d) / comb.range_res).ravel()])
    jac = np.concatenate([du / comb.u_res, dd.reshape(-1, 2) / comb.range_res])
    return res, jac


ROBUST_SCALE = 0.5  # Cauchy loss scale of the CPU fusion, in resolution cells
REJECT = 4.0  # measurements off the robust fit by more than REJECT * ROBUST_SCALE cells are dropped


def _fit_position(g0s: list[np.ndarray], lay: Layout, aps: np.ndarray, u: np.ndarray, d: np.ndarray,
                  comb: Comb, refit: bool = True) -> tuple[np.ndarray, float]:
    """Robust bounded least squares position from several starts; the lowest cost wins.

    Residuals are in resolution cells; the Cauchy loss (scale :data:`ROBUST_SCALE` cells) is a redescending
    M-estimator: a wrong range or angle from one AP (a detection captured by another path) is rejected instead of
    pulling the fit, as a quadratic or soft-L1 loss would. Measurements farther than ``REJECT * ROBUST_SCALE`` cells
    from the robust fit are then dropped and the others refitted by plain least squares (``refit``). Returns the
    position and the robust cost (used to associate target slots across APs).
    """
    best, best_cost = None, np.inf
    lo, hi = lay.lower, lay.upper
    for g0 in g0s:
        g0 = np.clip(g0, lo + 1e-6, hi - 1e-6)
        sol = least_squares(lambda g: _position_residuals(g, lay, aps, u, d, comb)[0], g0,
                            jac=lambda g: _position_residuals(g, lay, aps, u, d, comb)[1], bounds=(lo, hi),
                            loss="cauchy", f_scale=ROBUST_SCALE, xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=100)
        if sol.cost < best_cost:
            best, best_cost = sol.x, sol.cost
    if not refit:
        return best, best_cost
    # Hard rejection: measurements more than REJECT cells off the robust fit are dropped and the rest refitted by
    # plain least squares (exact on consistent measurements), if enough remain to stay over-determined.
    res = _position_residuals(best, lay, aps, u, d, comb)[0]
    keep = np.abs(res) <= REJECT * ROBUST_SCALE
    if not keep.all() and keep.sum() >= 3:
        sol = least_squares(lambda g: _position_residuals(g, lay, aps, u, d, comb)[0][keep], best,
                            jac=lambda g: _position_residuals(g, lay, aps, u, d, comb)[1][keep], bounds=(lo, hi),
                            xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=100)
        best = sol.x
    return best, best_cost


def _fit_velocity(g: np.ndarray, lay: Layout, f: np.ndarray, comb: Comb, vmax: float) -> np.ndarray:
    """Velocity [2] from bistatic Dopplers ``f`` [M, N]: robust bounded LS of ``lambda f = (e_n + e_m) . v``."""
    er = g - lay.rx
    er = er / np.maximum(np.linalg.norm(er, axis=-1, keepdims=True), 1e-6)
    et = g - lay.tx
    et = et / np.maximum(np.linalg.norm(et, axis=-1, keepdims=True), 1e-6)
    a = (er[:, None, :] + et[None, :, :]).reshape(-1, 2) / comb.velocity_res
    b = comb.wavelength * f.ravel() / comb.velocity_res
    v0 = np.clip(np.linalg.lstsq(a, b, rcond=None)[0], -vmax + 1e-9, vmax - 1e-9)
    if a.shape[0] <= 2:
        return v0
    best, best_cost = v0, np.inf
    starts = [v0] + [np.clip(np.linalg.lstsq(a[np.arange(len(b)) != k], b[np.arange(len(b)) != k], rcond=None)[0],
                             -vmax + 1e-9, vmax - 1e-9) for k in range(len(b))]
    for s0 in starts:
        sol = least_squares(lambda v: a @ v - b, s0, jac=lambda v: a, bounds=(-vmax, vmax), loss="cauchy",
                            f_scale=ROBUST_SCALE, xtol=1e-12, ftol=1e-12, gtol=1e-12)
        if sol.cost < best_cost - 1e-15:
            best, best_cost = sol.x, sol.cost
    keep = np.abs(a @ best - b) <= REJECT * ROBUST_SCALE
    if not keep.all() and keep.sum() >= 3:
        best = least_squares(lambda v: a[keep] @ v - b[keep], best, jac=lambda v: a[keep], bounds=(-vmax, vmax),
                             xtol=1e-12, ftol=1e-12, gtol=1e-12).x
    return best


def local_location(u: float, d: np.ndarray, lay: Layout, m: int, comb: Comb) -> np.ndarray:
    """One receive AP's location of one target [2]: AoA line x each bistatic ellipse ``d`` [N], averaged.

    Near endfire a half-wavelength ULA cannot tell ``u`` from its alias (:func:`endfire_alias`); both rays are
    tried and the one on which the N ellipse intersections agree best is kept. Clipped to the area.
    """
    cands = [float(u)]
    alias = endfire_alias(float(u), comb.spacing, comb.u_res / 2)
    if alias is not None and len(d) > 1:
        cands.append(alias)
    best, best_spread = None, np.inf
    for uc in cands:
        pts = np.stack([locate_on_ray(np.float64(uc), np.float64(d[n]), lay.rx[m], lay.rx_axes[m], lay.rx_side[m],
                                      lay.tx[n]) for n in range(len(d))])
        loc = pts.mean(0)
        spread = float(np.linalg.norm(pts - loc, axis=-1).sum())
        if spread < best_spread - 1e-9:
            best, best_spread = loc, spread
    return np.clip(best, lay.lower, lay.upper)


def fuse_messages(cfg: SystemConfig, msgs: ApMessages, *, velocity: bool = True) -> Estimate:
    """CPU fusion of the receive APs' messages into positions / velocities [B, Q, 2] float64 (module docstring).

    Per AP and target slot, initial locations are the AoA-line / bistatic-ellipse intersections (per transmit AP and
    averaged); the slots of every AP m are associated with AP 0's by the Hungarian algorithm on the robust cost of
    fitting one position to both slots' measurements (a slot with one wrong range still associates correctly, which
    distances between per-AP locations do not guarantee); each target's position is then the robust bounded
    least-squares fit of all M AoAs and N*M bistatic ranges (multi-start from all those intersections), and its
    velocity the robust least-squares fit of all N*M bistatic Dopplers. ``velocity=False`` returns NaN velocities.
    """
    comb = Comb.from_config(cfg)
    lay = Layout(cfg)
    B, M, Q = msgs.aoa.shape
    N = msgs.ranges.shape[-1]
    pos = np.empty((B, Q, 2))
    vel = np.full((B, Q, 2), np.nan)
    aps = np.arange(M)
    for b in range(B):
        local = np.stack([
            np.stack([local_location(msgs.aoa[b, m, q], msgs.ranges[b, m, q], lay, m, comb) for q in range(Q)])
            for m in range(M)
        ])  # [M, Q, 2]

        def starts(ms: np.ndarray, sl: np.ndarray, b: int = b, local: np.ndarray = local) -> list[np.ndarray]:
            """Fit starts: each slot's mean location and its N AoA-line x ellipse intersections."""
            out = [local[m, s] for m, s in zip(ms, sl, strict=True)]
            for m, s in zip(ms, sl, strict=True):
                out += [np.clip(locate_on_ray(np.float64(msgs.aoa[b, m, s]), np.float64(msgs.ranges[b, m, s, n]),
                                              lay.rx[m], lay.rx_axes[m], lay.rx_side[m], lay.tx[n]),
                                lay.lower, lay.upper) for n in range(N)]
            return out

        # Association: the cost of merging AP 0's slot a with AP m's slot b is the robust cost of their joint fit.
        perm = np.tile(np.arange(Q), (M, 1))
        for m in range(1, M):
            pair = np.array([0, m])
            cost = np.empty((Q, Q))
            for a in range(Q):
                for c in range(Q):
                    sl = np.array([a, c])
                    cost[a, c] = _fit_position(starts(pair, sl), lay, pair, msgs.aoa[b, pair, sl],
                                               msgs.ranges[b, pair, sl], comb, refit=False)[1]
            rows, cols = linear_sum_assignment(cost)
            perm[m, rows] = cols
        for q in range(Q):
            sl = perm[:, q]
            u = msgs.aoa[b, aps, sl]
            d = msgs.ranges[b, aps, sl]  # [M, N]
            g, _ = _fit_position(starts(aps, sl), lay, aps, u, d, comb)
            pos[b, q] = g
            if velocity:
                vel[b, q] = _fit_velocity(g, lay, msgs.dopplers[b, aps, sl].reshape(M, N), comb, cfg.max_speed)
    return Estimate(torch.from_numpy(pos), torch.from_numpy(vel))
