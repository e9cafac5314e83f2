"""The centralized ML refinement of ``ml-joint``: the CPU's own coarse search and LM over psi on all raw echoes.

Gains per (n, m, q) are eliminated (variable projection, :mod:`.model`); psi = (g_x, g_y, v_x, v_y) per target.
Batched over scenes and starts: every (scene, start) is one problem of the Levenberg-Marquardt driver, whose M
receive APs' systems are summed.
"""

from __future__ import annotations

import torch

from .model import F64, PathSystem, _levenberg_marquardt, path_system
from .search import _peaks


class JointMixin:
    """The centralized stage of :class:`~.estimator.MLEstimator` (uses its geometry, grid and path model)."""

    def _central_starts(self, maps: dict, psi_d: torch.Tensor) -> torch.Tensor:
        """Starts [B, C Q, Q, 4] from the CPU's coarse search: the per-path statistics of every AP (``maps``,
        T / F [B M, N, G] from the first search) summed on the common position grid (all N M paths
        non-coherently), its ``n_candidates`` best peaks, each with the velocity fitted to the paths' best Dopplers
        (least squares weighted by their statistics) and put in place of each fused target in turn."""
        cfg = self.cfg
        B, Q = psi_d.shape[:2]
        M, N = cfg.n_rx, cfg.n_tx
        dev = psi_d.device
        grid = self._grid(dev)
        geo = self._geometry(dev)
        Tn = maps["T"].view(B, M, N, -1)
        Fi = maps["F"].view(B, M, N, -1)
        C = self.n_candidates
        top = _peaks(Tn.sum((1, 2)), grid["pts"], C, geo.range_res)  # [B, C]
        g = grid["pts"][top]  # [B, C, 2]
        em = g[:, :, None] - geo.rx  # [B, C, M, 2]
        em = em / torch.linalg.vector_norm(em, dim=-1, keepdim=True).clamp_min(1e-9)
        en = g[:, :, None] - geo.tx  # [B, C, N, 2]
        en = en / torch.linalg.vector_norm(en, dim=-1, keepdim=True).clamp_min(1e-9)
        A = (geo.kf * (em[:, :, :, None] + en[:, :, None])).reshape(B, C, M * N, 2)
        gi = top[:, None, None].expand(B, M, N, C)
        f = grid["f"][Fi.gather(3, gi)].permute(0, 3, 1, 2).reshape(B, C, M * N)
        w = Tn.gather(3, gi).permute(0, 3, 1, 2).reshape(B, C, M * N).to(F64).clamp_min(0).sqrt()
        v = torch.linalg.lstsq(w[..., None] * A, (w * f)[..., None]).solution[..., 0]  # [B, C, 2]
        v = v.clamp(-cfg.max_speed, cfg.max_speed)
        out = psi_d[:, None].expand(B, C * Q, Q, 4).clone().view(B, C, Q, Q, 4)
        cand = torch.cat([g, v], -1)  # [B, C, 4]
        for q in range(Q):
            out[:, :, q, q] = cand
        return out.view(B, C * Q, Q, 4)

    def joint_refine(self, y: torch.Tensor, x: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centralized ML over psi from every start [B, S, Q, 4]; returns the most likely psi [B, Q, 4] and its
        explained energy [B] (the CPU's likelihood check)."""
        cfg = self.cfg
        B, S, Q, _ = starts.shape
        M, N = cfg.n_rx, cfg.n_tx
        dev = y.device
        geo = self._geometry(dev)
        yl = y.reshape(B * M, *y.shape[2:])
        scene = torch.arange(B, device=dev).repeat_interleave(S)  # problem -> scene
        lo = torch.cat([geo.lower, torch.full((2,), -cfg.max_speed, dtype=F64, device=dev)])
        hi = torch.cat([geo.upper, torch.full((2,), cfg.max_speed, dtype=F64, device=dev)])
        paths = self._paths(Q, dev)

        def evaluate(th: torch.Tensor, idx: torch.Tensor) -> PathSystem:
            P_ = th.shape[0]
            geom, J = geo.joint_paths(th.view(P_, Q, 4))
            sc = scene[idx]
            y_idx = (sc[:, None] * M + torch.arange(M, device=dev)).reshape(-1)
            fit = path_system(geo, x, sc.repeat_interleave(M), paths, geom, y=yl, y_idx=y_idx, jac=J)
            return PathSystem(fit.energy.view(P_, M).sum(1), fit.gains.view(P_, M * Q * N),
                              fit.jtj.view(P_, M, 4 * Q, 4 * Q).sum(1), fit.grad.view(P_, M, 4 * Q).sum(1))

        def project(th: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            v = torch.maximum(torch.minimum(th.view(-1, Q, 4), hi), lo)
            return torch.cat([geo.project_position(v[..., :2]), v[..., 2:]], -1).reshape(th.shape)

        th0 = project(starts.reshape(B * S, Q * 4).to(dev, F64), scene)
        vstep = geo.doppler_res / geo.kf / 2
        max_step = torch.tensor([geo.range_res / 2] * 2 + [vstep] * 2, dtype=F64, device=dev).repeat(Q)
        th, fit = _levenberg_marquardt(evaluate, th0, project, tol=1e-4 * cfg.noise_watt, max_iter=self.max_iter,
                                       max_step=max_step)
        e = fit.energy.view(B, S)
        k = e.argmax(1)
        ar = torch.arange(B, device=dev)
        return th.view(B, S, Q, 4)[ar, k], e[ar, k]
