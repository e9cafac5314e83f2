"""CPU fusion of the ML estimator's messages: Fisher weights, association, Gaussian / uniform mixture WLS.

Batched over scenes and targets as tensors (float64, on the messages' device). Per scene, target slots are
associated across APs (exact assignment over the Q! permutations, Q small), then each target's psi = (g, v)
minimises ``sum_m min(r_m^T J_m r_m / 2 - log det(J_m) / 2, log|area| + n_f log(2 f_max))`` (an inlier is Gaussian
with covariance ``J_m^-1``, an outlier uniform over the area and the Doppler span), solved by bounded
Gauss-Newton / Levenberg-Marquardt on every non-empty inlier subset of APs, multi-started from each inlier's local
estimate; the lowest cost wins. The association is then redone on whitened distances and the fusion repeated.
"""

from __future__ import annotations

import itertools
import math

import torch

from .model import C128, F64, _Geometry, path_system

_WLS_ITER = 60  # bounded Gauss-Newton iterations of one weighted least-squares fit (converges in far fewer)


def placeholders(msgs, geo: _Geometry, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoded messages with finite placeholders for the NaN (undetected) entries: theta (area centre, Doppler 0)
    [B, M, Q, 2 + N], gains (0) [B, M, Q, N] and the detection mask [B, M, Q, N]."""
    th = msgs.theta.to(dev, F64)
    det = torch.isfinite(th[..., 2:]) & torch.isfinite(msgs.gains.to(dev))
    th = th.clone()
    centre = (geo.lower + geo.upper) / 2
    th[..., :2] = torch.where(torch.isfinite(th[..., :2]), th[..., :2], centre)
    th[..., 2:] = torch.where(det, th[..., 2:], torch.zeros((), dtype=F64, device=dev))
    gains = torch.where(det, msgs.gains.to(dev, C128), torch.zeros((), dtype=C128, device=dev))
    return th, gains, det


def slot_whiteners(J: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whiteners W [B, M, Q, K1, K1] (``||W r||^2 = r^T J_s r``, zero columns on dropped entries) and log det J_s
    [B, M, Q] of the Fisher information J_s of each target slot's kept entries, the other slots' parameters and
    the dropped entries eliminated as nuisance (Schur complement, pseudo-inverse at rcond 1e-12). Eigenvalues are
    clipped at 1e-12 of the largest. ``J`` [B, M, D, D] with D = Q K1, ``keep`` [B, M, Q, K1] bool."""
    B, M, Q, K1 = keep.shape
    D = Q * K1
    J = 0.5 * (J + J.mT)
    eye = torch.eye(D, dtype=F64, device=J.device)
    mine = torch.eye(Q, dtype=torch.bool, device=J.device).repeat_interleave(K1, 1)  # [Q, D]: slot s's entries
    k = mine & keep.reshape(B, M, 1, D)  # [B, M, Q, D]: the kept entries of slot s
    rest = ~k
    Jb = J[:, :, None]  # [B, M, 1, D, D]
    both_r = (rest[..., :, None] & rest[..., None, :]).to(F64)
    # pinv of J[rest, rest] embedded as a block diagonal with a (kept-entry) block that the cut cannot touch
    scale = torch.diagonal(Jb * both_r, dim1=-2, dim2=-1).amax(-1).clamp_min(1e-300)  # <= lambda_max(J_rr)
    Jrr = Jb * both_r + (scale[..., None] * k.to(F64))[..., None] * eye
    P = torch.linalg.pinv(Jrr, rtol=1e-12, hermitian=True) * both_r
    Jr = Jb * rest[..., None, :].to(F64)  # columns of the nuisance entries
    S = Jb - Jr @ P @ Jr.mT
    S = 0.5 * (S + S.mT)
    # the slot's own K1 x K1 block, dropped entries replaced by a negative block (sorted first by eigh)
    idx = torch.arange(Q, device=J.device)[:, None] * K1 + torch.arange(K1, device=J.device)  # [Q, K1]
    Ss = torch.stack([S[:, :, q, idx[q][:, None], idx[q][None, :]] for q in range(Q)], 2)  # [B, M, Q, K1, K1]
    ks = keep.to(F64)
    both_k = ks[..., :, None] * ks[..., None, :]
    big = torch.diagonal(Ss * both_k, dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1e-300)
    Sk = Ss * both_k - (big[..., None] * (1 - ks))[..., None] * torch.eye(K1, dtype=F64, device=J.device)
    w, V = torch.linalg.eigh(Sk)
    real = torch.arange(K1, device=J.device) >= (K1 - keep.sum(-1, keepdim=True))  # [B, M, Q, K1]
    wmax = torch.where(real, w, torch.full_like(w, -math.inf)).amax(-1, keepdim=True).clamp_min(1e-300)
    w = torch.maximum(w, 1e-12 * wmax)
    W = ((V * torch.sqrt(w)[..., None, :]) * real[..., None, :]).mT * ks[..., None, :]
    logdet = torch.where(real, torch.log(w), torch.zeros_like(w)).sum(-1)
    return W, logdet


def target_model(geo: _Geometry, psi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """theta_m of targets psi [..., 4] = (g, v) at every receive AP: [g_x, g_y, f_0 .. f_{N-1}] [..., M, 2 + N] and
    the Jacobian [..., M, 2 + N, 4] (Eq. 7-9)."""
    g, v = psi[..., None, :2], psi[..., None, 2:]  # [..., 1, 2]
    dm_vec = g - geo.rx  # [..., M, 2]
    dm = torch.linalg.vector_norm(dm_vec, dim=-1, keepdim=True).clamp_min(1e-9)
    em = dm_vec / dm
    dn_vec = g[..., None, :] - geo.tx  # [..., 1, N, 2]
    dn = torch.linalg.vector_norm(dn_vec, dim=-1, keepdim=True).clamp_min(1e-9)
    en = dn_vec / dn
    vm = (em * v).sum(-1, keepdim=True)  # [..., M, 1]
    vn = (en * v[..., None, :]).sum(-1)  # [..., 1, N]
    M, N = geo.rx.shape[0], geo.tx.shape[0]
    shape = psi.shape[:-1]
    h = torch.cat([g.expand(*shape, M, 2), geo.kf * (vn + vm)], -1)
    pv_m = (v - vm * em) / dm  # [..., M, 2]
    pv_n = (v[..., None, :] - vn[..., None] * en) / dn  # [..., 1, N, 2]
    jac = torch.zeros(*shape, M, 2 + N, 4, dtype=F64, device=psi.device)
    jac[..., 0, 0] = 1.0
    jac[..., 1, 1] = 1.0
    jac[..., 2:, :2] = geo.kf * (pv_n + pv_m[..., None, :])
    jac[..., 2:, 2:] = geo.kf * (en + em[..., None, :])
    return h, jac


def local_estimates(geo: _Geometry, theta: torch.Tensor, det: torch.Tensor, vmax: float) -> torch.Tensor:
    """Each AP's (g, v) [B, M, Q, 4] of each slot: its local position and the velocity from its detected Dopplers
    (minimum-norm least squares; all N when none is detected). ``theta`` [B, M, Q, 2 + N], ``det`` [B, M, Q, N]."""
    use = torch.where(det.any(-1, keepdim=True), det, torch.ones_like(det)).to(F64)
    g = torch.minimum(torch.maximum(theta[..., :2], geo.lower + 1e-6), geo.upper - 1e-6)
    em = g - geo.rx[:, None]  # [B, M, Q, 2]
    em = em / torch.linalg.vector_norm(em, dim=-1, keepdim=True).clamp_min(1e-9)
    en = g[..., None, :] - geo.tx  # [B, M, Q, N, 2]
    en = en / torch.linalg.vector_norm(en, dim=-1, keepdim=True).clamp_min(1e-9)
    A = geo.kf * (en + em[..., None, :]) * use[..., None]
    v = (torch.linalg.pinv(A) @ (theta[..., 2:] * use)[..., None])[..., 0]
    return torch.cat([g, v.clamp(-vmax + 1e-9, vmax - 1e-9)], -1)


def best_assignment(cost: torch.Tensor) -> torch.Tensor:
    """perm [..., Q] minimising ``sum_q cost[..., q, perm[q]]`` over all Q! permutations (``cost`` [..., Q, Q])."""
    Q = cost.shape[-1]
    perms = torch.tensor(list(itertools.permutations(range(Q))), dtype=torch.long, device=cost.device)  # [P, Q]
    total = cost[..., torch.arange(Q, device=cost.device), perms].sum(-1)  # [..., P]
    return perms[total.argmin(-1)]


def associate(points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """perm [B, M, Q]: AP m's slot matched to the reference AP's slot q (assignment on squared distances of the
    local positions [B, M, Q, 2]); the reference is the first AP with the most detected slots (``valid``)."""
    B, M, Q, _ = points.shape
    ref = valid.sum(-1).argmax(-1)  # [B]
    pr = points[torch.arange(B, device=points.device), ref]  # [B, Q, 2]
    cost = ((pr[:, None, :, None, :] - points[:, :, None, :, :]) ** 2).sum(-1)  # [B, M, Q, Q]
    perm = best_assignment(cost)
    ident = torch.arange(Q, device=points.device).expand(B, M, Q)
    is_ref = torch.arange(M, device=points.device)[None, :, None] == ref[:, None, None]
    return torch.where(is_ref, ident, perm)


def _gather_slots(t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``t[b, m, perm[b, m, q]]`` for t [B, M, Q, ...] -> [B, M, Q, ...]."""
    idx = perm.reshape(*perm.shape, *([1] * (t.dim() - 3))).expand(*perm.shape, *t.shape[3:])
    return t.gather(2, idx)


def fuse_targets(geo: _Geometry, theta: torch.Tensor, W: torch.Tensor, logdet: torch.Tensor, c_out: torch.Tensor,
                 local: torch.Tensor, member: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """psi [B, Q, 4] of every target from its messages: AP m's message of target q is its slot's theta, whitener,
    log det, outlier cost and local estimate (each [B, M, Q, ...], already permuted to the targets), used where
    ``member`` [B, M, Q]; the inlier subset (and start) of lowest mixture cost wins (ties: the larger subset, then
    the earlier start, as in a sequential search); targets without messages get the prior mean."""
    B, M, Q, K1 = theta.shape
    combos = [(sub, m) for r in range(M, 0, -1) for sub in itertools.combinations(range(M), r) for m in sub]
    dev = theta.device
    sub = torch.zeros(len(combos), M, dtype=torch.bool, device=dev)
    for c, (s, _) in enumerate(combos):
        sub[c, list(s)] = True
    start = torch.tensor([m for _, m in combos], device=dev)
    mem = member.permute(0, 2, 1)  # [B, Q, M]
    use = sub[None, None] & mem[:, :, None]  # [B, Q, S, M]
    ok = (sub[None, None] <= mem[:, :, None]).all(-1)  # the subset is among the target's messages
    th = theta.permute(0, 2, 1, 3)[:, :, None]  # [B, Q, 1, M, K1]
    Wq = W.permute(0, 2, 1, 3, 4)[:, :, None]  # [B, Q, 1, M, K1, K1]
    p0 = local.permute(0, 2, 1, 3)[:, :, start]  # [B, Q, S, 4]
    p = _bounded_wls(geo, th, Wq, use, torch.minimum(torch.maximum(p0, lo + 1e-9), hi - 1e-9), lo, hi)
    h, _ = target_model(geo, p)  # [B, Q, S, M, K1]
    r = (Wq @ (th - h)[..., None])[..., 0]
    per = torch.minimum(0.5 * (r * r).sum(-1) - 0.5 * logdet.permute(0, 2, 1)[:, :, None],
                        c_out.permute(0, 2, 1)[:, :, None])
    cost = torch.where(mem[:, :, None], per, torch.zeros_like(per)).sum(-1)  # [B, Q, S]
    cost = torch.where(ok, cost, torch.full_like(cost, math.inf))
    best_cost = torch.full((B, Q), math.inf, dtype=F64, device=dev)
    best = torch.zeros(B, Q, 4, dtype=F64, device=dev)
    for c in range(len(combos)):  # sequential "strictly better by 1e-12" rule over a fixed list
        better = cost[:, :, c] < best_cost - 1e-12
        best = torch.where(better[..., None], p[:, :, c], best)
        best_cost = torch.where(better, cost[:, :, c], best_cost)
    prior = torch.cat([(geo.lower + geo.upper) / 2, torch.zeros(2, dtype=F64, device=dev)])
    return torch.where(mem.any(-1, keepdim=True), best, prior)


def _bounded_wls(geo: _Geometry, th: torch.Tensor, W: torch.Tensor, use: torch.Tensor, p: torch.Tensor,
                 lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Bounded weighted least squares ``min_p sum_m use_m ||W_m (theta_m - h_m(p))||^2``, lo <= p <= hi, for
    p [..., 4] (th [..., 1, M, K1], W [..., 1, M, K1, K1], use [..., M]): Levenberg-Marquardt on the free variables
    (a variable at a bound whose gradient points outwards is held), steps clipped into the box."""
    wgt = use.to(F64)[..., None]

    def residual(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, jh = target_model(geo, q)
        r = (W @ (th - h)[..., None])[..., 0] * wgt  # [..., M, K1]
        Jr = -(W @ jh) * wgt[..., None]  # [..., M, K1, 4]
        return r.flatten(-2), Jr.flatten(-3, -2), (r * r).sum((-1, -2))

    r, Jr, cost = residual(p)
    lam = torch.full(cost.shape, 1e-3, dtype=F64, device=p.device)
    eye = torch.eye(4, dtype=F64, device=p.device)
    for _ in range(_WLS_ITER):
        grad = (Jr.mT @ r[..., None])[..., 0]
        held = ((p <= lo) & (grad > 0)) | ((p >= hi) & (grad < 0))
        free = (~held).to(F64)
        H = Jr.mT @ Jr * (free[..., :, None] * free[..., None, :])
        dg = torch.diagonal(H, dim1=-2, dim2=-1)
        A = H + (lam[..., None] * dg + (1 - free) + 1e-30)[..., None] * eye
        step = -torch.linalg.solve(A, (grad * free)[..., None])[..., 0]
        trial = torch.minimum(torch.maximum(p + step, lo), hi)
        r2, J2, c2 = residual(trial)
        acc = c2 < cost
        p = torch.where(acc[..., None], trial, p)
        r = torch.where(acc[..., None], r2, r)
        Jr = torch.where(acc[..., None, None], J2, Jr)
        lam = torch.where(acc, (lam / 3).clamp_min(1e-12), lam * 4)
        done = (~acc & (lam > 1e10)) | (acc & (cost - c2 <= 1e-15 * cost))
        cost = torch.where(acc, c2, cost)
        if bool(done.all()):
            break
    return p


class FusionMixin:
    """The CPU fusion of :class:`~.estimator.MLEstimator` (uses its geometry and path model)."""

    def fisher_weights(self, msgs, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the CPU computes from the messages and X: the per-AP Fisher information of theta (gains
        eliminated) [B, M, Q K1, Q K1] and every path's detection statistic ``path_energy / xi^2`` [B, M, Q, N]."""
        cfg = self.cfg
        B, M, Q, K1 = msgs.theta.shape
        dev = x.device
        geo = self._geometry(dev)
        m_idx = torch.arange(M, device=dev).repeat(B)
        x_idx = torch.arange(B, device=dev).repeat_interleave(M)
        th, gains, det = placeholders(msgs, geo, dev)
        geom, J = geo.local_paths(m_idx, th.reshape(B * M, Q, K1))
        fit = path_system(geo, x, x_idx, self._paths(Q, dev), geom, jac=J, gains=gains.reshape(B * M, -1),
                          path_mask=det.reshape(B * M, -1))
        return ((2.0 / cfg.noise_watt * fit.jtj).reshape(B, M, Q * K1, Q * K1),
                (fit.path_energy / cfg.noise_watt).reshape(B, M, Q, cfg.n_tx))

    def fuse_messages(self, msgs, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CPU fusion (module docstring): psi [B, Q, 4] (g, v per target) and every AP's local estimate
        [B, M, Q, 4] associated with the fused targets (starts for the joint refinement).

        Each AP's target slot is one message ``theta_{m,s}`` with the Fisher weight ``J_{m,s}`` (the AP's FIM
        with the other slots' parameters and the undetected entries eliminated by the Schur complement). When two
        APs conflict, the more precise one wins. A target that no AP detected gets the prior mean (area centre,
        zero velocity).
        """
        cfg = self.cfg
        B, M, Q, K1 = msgs.theta.shape
        dev = x.device
        geo = self._geometry(dev)
        Jw, _ = self.fisher_weights(msgs, x)
        theta, _, det = placeholders(msgs, geo, dev)
        valid = det.any(-1)  # [B, M, Q] slots with a detected target
        keep = torch.cat([valid[..., None].expand(B, M, Q, 2), det], -1)
        W, logdet = slot_whiteners(Jw, keep)
        res = cfg.resolution()
        f_max = min(res["max_doppler_hz"] + res["doppler_resolution_hz"], res["unambiguous_doppler_hz"])
        log_area = math.log(float(torch.prod(geo.upper - geo.lower)))
        c_out = log_area + det.sum(-1).to(F64) * math.log(2 * f_max)  # [B, M, Q]
        local = local_estimates(geo, theta, det, cfg.max_speed)  # [B, M, Q, 4]
        vmax = cfg.max_speed
        lo = torch.cat([geo.lower, torch.tensor([-vmax, -vmax], dtype=F64, device=dev)])
        hi = torch.cat([geo.upper, torch.tensor([vmax, vmax], dtype=F64, device=dev)])
        perm = associate(local[..., :2], valid)  # [B, M, Q]: AP m's slot for target q
        for it in range(2 if Q > 1 else 1):
            th_p, W_p, ld_p, co_p, loc_p, val_p = (_gather_slots(t, perm) for t in (theta, W, logdet, c_out, local,
                                                                                     valid))
            psi = fuse_targets(geo, th_p, W_p, ld_p, co_p, loc_p, val_p, lo, hi)
            if it == 0 and Q > 1:  # re-associate on the whitened distances to the fused targets
                h, _ = target_model(geo, psi)  # [B, Q, M, K1]
                r = (W[:, :, :, None] @ (theta[:, :, :, None] - h.permute(0, 2, 1, 3)[:, :, None])[..., None])[..., 0]
                cost = torch.log1p((r * r).sum(-1))  # [B, M, slot, q]
                cost = torch.where(valid[..., None], cost, torch.zeros_like(cost)).mT  # [B, M, q, slot]
                perm = best_assignment(cost)
        return psi, _gather_slots(local, perm)
