"""The per-AP stage of the ML estimator: search, successive cancellation, RELAX, model-order selection.

All receive APs of a chunk of scenes are processed in lockstep: one problem per (scene, receive AP), every
candidate of every problem refined together by the batched Levenberg-Marquardt of :mod:`.model` (package
docstring, steps 1-5). Loops run over the Q target slots, the RELAX rounds and the N transmit APs only.
"""

from __future__ import annotations

import torch

from .model import C128, F64, PathSystem, _levenberg_marquardt, path_signals, path_system


class ApStageMixin:
    """The per-AP stage of :class:`~.estimator.MLEstimator` (uses its options, geometry and search)."""

    def local_messages(self, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                         dict | None]:
        """Every receive AP's estimate (float64, before float32 rounding; package docstring, steps 1-5) from
        y [B, M, Mr, Ns, Ts] and x [B, N, Nt, Ns, Ts] complex128: theta [B, M, Q, 2 + N] (NaN where undetected),
        gains [B, M, Q, N] complex128, statistics [B, M, Q, N] and (``joint``) the first search's maps."""
        cfg = self.cfg
        B, M, Q, N = y.shape[0], cfg.n_rx, cfg.n_targets, cfg.n_tx
        dev = y.device
        L = B * M
        yl = y.reshape(L, *y.shape[2:])
        x_idx = torch.arange(B, device=dev).repeat_interleave(M)
        m_idx = torch.arange(M, device=dev).repeat(B)
        rows = torch.arange(L, device=dev)
        tol = 1e-3 * cfg.noise_watt  # energy units: 1e-3 of a log-likelihood unit
        K1 = 2 + N
        theta = torch.zeros(L, 0, K1, dtype=F64, device=dev)
        resid = yl.to(C128)
        maps = {} if self.joint else None  # the first detection's maps feed the CPU's coarse search
        quiet = torch.ones(L, dtype=torch.bool, device=dev)  # no target slot detected yet (second-search floor)
        fit = None
        for q in range(Q):
            if q:  # the LM's last system: path energies of the slots found so far
                quiet = (fit.path_energy / cfg.noise_watt).amax(-1) < self.threshold
            best = self._search(resid, rows, x, x_idx, m_idx, tol, maps=maps if q == 0 else None,
                                quiet=quiet)  # [L, K1]
            theta = torch.cat([theta, best[:, None]], 1)
            theta, fit = self._refine_local(yl, theta, x, x_idx, m_idx, tol)
            resid = yl.to(C128) - self._signals(theta, fit.gains, x, x_idx, m_idx)
        energy = fit.energy
        # RELAX only on the problems where some slot's strongest path reaches ``relax_floor`` (opt-in, default 0:
        # every problem)
        act = ((fit.path_energy / cfg.noise_watt).amax(-1) >= self.relax_floor).nonzero().flatten()
        if Q > 1 and act.numel():
            ya, xa, ma, ra = yl[act], x_idx[act], m_idx[act], torch.arange(act.numel(), device=dev)
            th_a, en_a = theta[act], energy[act]
            for _ in range(self.relax_rounds):
                new = th_a.clone()
                for q in range(Q):
                    others = [k for k in range(Q) if k != q]
                    sub, sfit = self._fit_local(ya, new[:, others], x, xa, ma)
                    r_q = ya.to(C128) - self._signals(sub, sfit.gains, x, xa, ma)
                    quiet = (sfit.path_energy / cfg.noise_watt).amax(-1) < self.threshold
                    new[:, q] = self._search(r_q, ra, x, xa, ma, tol, current=new[:, q], quiet=quiet)
                    new, nfit = self._refine_local(ya, new, x, xa, ma, tol)
                better = nfit.energy > en_a
                th_a = torch.where(better[:, None, None], new, th_a)
                en_a = torch.where(better, nfit.energy, en_a)
            theta, energy = theta.clone(), energy.clone()
            theta[act], energy[act] = th_a, en_a
        # model-order selection (two-level GLRT): a target slot is detected when its strongest path passes the
        # search-wide threshold; a further path of a detected target only needs the Doppler-search threshold (its
        # delay, AoA and AoD are fixed by the target's position). Paths below it leave the model, the rest is
        # refined again.
        theta, fit = self._fit_local(yl, theta, x, x_idx, m_idx)
        use, _ = self._detect((fit.path_energy / cfg.noise_watt).view(L, Q, N))
        if not bool(use.all()):
            theta, _ = self._refine_local(yl, theta, x, x_idx, m_idx, tol, mask=use.view(L, Q * N))
        theta, fit = self._fit_local(yl, theta, x, x_idx, m_idx, mask=use.view(L, Q * N))
        stat = (fit.path_energy / cfg.noise_watt).view(L, Q, N)
        _, det = self._detect(stat, use)
        theta = theta.clone()
        nan = torch.tensor(float("nan"), dtype=F64, device=dev)
        theta[..., 2:] = torch.where(det, theta[..., 2:], nan)
        theta[..., :2] = torch.where(det.any(-1, keepdim=True), theta[..., :2], nan)
        gains = torch.where(det, fit.gains.view(L, Q, N), torch.complex(nan, nan))
        self._ctx = None  # the chunk's search context (transmit-side constants) is not kept
        return theta.reshape(B, M, Q, K1), gains.reshape(B, M, Q, N), stat.reshape(B, M, Q, N), maps

    def _detect(self, stat: torch.Tensor, use: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-level detection from the per-path GLRT statistics ``stat`` [L, Q, N] of the paths in ``use``
        (default all): a slot is detected when its largest statistic reaches ``threshold`` (search-wide), a path
        of a detected slot when its own reaches ``path_threshold`` (Doppler search only). Returns the paths to keep
        in the model (those of undetected slots too, their values are sent as NaN) and the detected paths, both
        [L, Q, N] bool."""
        if use is None:
            use = torch.ones_like(stat, dtype=torch.bool)
        stat = torch.where(use, stat, torch.zeros_like(stat))
        slot = stat.amax(-1, keepdim=True) >= self.threshold
        det = use & slot & (stat >= self.path_threshold)
        return det | (use & ~slot), det

    def _paths(self, Q: int, dev: torch.device) -> torch.Tensor:
        return torch.arange(self.cfg.n_tx, device=dev).repeat(Q)

    def _project_local(self, theta: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Keep local positions in the area and Dopplers inside the ambiguity (``m`` unused: same for every AP)."""
        geo = self._geometry(theta.device)
        out = theta.clone()
        out[..., :2] = geo.project_position(theta[..., :2])
        out[..., 2:] = theta[..., 2:].clamp(-geo.f_amb, geo.f_amb)
        return out

    def _fit_local(self, yl, theta, x, x_idx, m_idx, rows=None, jac=False, mask=None
                   ) -> tuple[torch.Tensor, PathSystem]:
        geo = self._geometry(theta.device)
        L, Q = theta.shape[:2]
        if rows is None:
            rows = torch.arange(L, device=theta.device)
        if Q == 0:
            z = torch.zeros(L, dtype=F64, device=theta.device)
            return theta, PathSystem(z, torch.zeros(L, 0, dtype=C128, device=theta.device))
        geom, J = geo.local_paths(m_idx[rows], theta)
        fit = path_system(geo, x, x_idx[rows], self._paths(Q, theta.device), geom, y=yl, y_idx=rows,
                          jac=J if jac else None, path_mask=mask)
        return theta, fit

    def _refine_local(self, yl, theta, x, x_idx, m_idx, tol, rows=None, mask=None) -> tuple[torch.Tensor, PathSystem]:
        """Joint LM over all targets' per-AP parameters of problems ``rows`` (data ``yl[rows]``; ``mask`` [L, Q N]
        paths switched off)."""
        L, Q, K1 = theta.shape
        if rows is None:
            rows = torch.arange(L, device=theta.device)

        def evaluate(th: torch.Tensor, idx: torch.Tensor) -> PathSystem:
            return self._fit_local(yl, th.view(-1, Q, K1), x, x_idx, m_idx, rows=rows[idx], jac=True,
                                   mask=None if mask is None else mask[idx])[1]

        def project(th: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return self._project_local(th.view(-1, Q, K1), m_idx[rows[idx]]).reshape(th.shape)

        geo = self._geometry(theta.device)
        N = self.cfg.n_tx
        per_target = torch.tensor([geo.range_res / 2] * 2 + [geo.doppler_res / 2] * N, dtype=F64,
                                  device=theta.device)
        th, fit = _levenberg_marquardt(evaluate, self._project_local(theta, m_idx[rows]).reshape(L, Q * K1),
                                       project, tol=tol, max_iter=self.max_iter, max_step=per_target.repeat(Q))
        return th.view(L, Q, K1), fit

    def _search(self, resid, rows, x, x_idx, m_idx, tol, current=None, maps=None, quiet=None) -> torch.Tensor:
        """One target [L, 2 + N] on ``resid`` [L, ...]: coarse candidates refined by LM, the most likely kept
        (``current`` [L, 2 + N] competes too); then a second coarse search with the best result's strongest path
        cancelled, whose candidates compete again on ``resid`` with all paths. ``quiet`` [L] bool (default all):
        the problems whose other target slots hold no detected path, where ``second_search_floor`` applies.

        The second search handles a dominant path that does not fix the position: a target on a transmit-receive
        baseline scatters forward on it, and that path's delay, AoA, AoD and Doppler (0) are the same at every point
        of the baseline, so its coarse statistic ranks the whole baseline alike (up to a ~20 % straddle-loss ripple
        that hides the weaker paths) and its leakage into the other transmit AP's matched filter (same user
        streams) fills that map along the baseline too: every first-stage candidate may sit on the baseline metres
        away from the target, where LM stays on a local maximum. Cancelling the strongest path (exactly, wherever
        on the baseline it was fitted) leaves the other paths' own peaks at the target."""
        def refine(cand: torch.Tensor, keep: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
            if extra is not None:  # competes too
                cand = torch.cat([cand, extra[:, None]], 1)
                keep = torch.cat([keep, torch.ones_like(keep[:, :1])], 1)
            return self._best_single(resid, cand, keep, x, x_idx, m_idx, tol)

        best, gains, path_energy = refine(*self._candidates(resid, rows, x, x_idx, m_idx, maps=maps), current)
        if self.cfg.n_tx < 2:
            return best
        fit = PathSystem(None, gains, path_energy=path_energy)  # of ``best`` on ``resid``
        # the second search only where the best explains some path weakly (a candidate off the target on a baseline
        # fits the forward-scatter path, not the others: benchmarks/results/ml.md, "second-search gate")
        stat = fit.path_energy / self.cfg.noise_watt  # [L, N]
        # ... and, on problems with no detected target slot yet (``quiet``), where its strongest path reaches
        # ``second_search_floor``: the path to cancel is the dominant forward-scatter one of a baseline target, not
        # noise (default the detection threshold: a winner below it fits noise, e.g. every problem at 10 dBm). Not
        # where another slot is detected: the undetected slot stays in the model and its noise fit would move the
        # detected one (by up to 0.17 m at tiny; benchmarks/results/ml.md, "low-power gate")
        floor_ok = stat.amax(-1) >= self.second_search_floor
        if quiet is not None:
            floor_ok |= ~quiet
        sel = ((stat.amin(-1) < self.second_search_level) & floor_ok).nonzero().flatten()
        if sel.numel() == 0:
            return best
        strongest = fit.path_energy[sel].argmax(-1, keepdim=True)  # [S, 1]
        gains = fit.gains[sel]
        only = torch.zeros_like(gains).scatter(-1, strongest, gains.gather(-1, strongest))
        r2 = resid[sel] - self._signals(best[sel, None], only, x, x_idx[sel], m_idx[sel])
        cand, keep = self._candidates(r2, rows[sel], x, x_idx, m_idx)
        cand = torch.cat([cand, best[sel, None]], 1)
        keep = torch.cat([keep, torch.ones_like(keep[:, :1])], 1)
        out = best.clone()
        out[sel] = self._best_single(resid[sel], cand, keep, x, x_idx[sel], m_idx[sel], tol)[0]
        return out

    def _best_single(self, resid, cand, keep, x, x_idx, m_idx, tol
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Refine the candidates [L, C, K1] flagged in ``keep`` [L, C] as single targets on ``resid`` [L, ...];
        keep the most likely (exact likelihood). Returns it [L, K1] with its gains [L, N] complex128 and path
        energies [L, N] on ``resid`` (the LM's last system at it)."""
        L, C, K1 = cand.shape
        dev = cand.device
        keep = keep.clone()
        keep[:, 0] |= ~keep.any(1)
        rows, cols = keep.nonzero(as_tuple=True)
        th, fit = self._refine_local(resid, cand[rows, cols][:, None], x, x_idx, m_idx, tol, rows=rows)
        # Doppler retry: a candidate found through one strong path may carry a noise Doppler for the others (LM
        # steps cannot cross Doppler sidelobes); search every path's Doppler again at the refined geometry, where
        # some path is explained weakly (a noise Doppler explains little of its path)
        # (and where its strongest path reaches ``doppler_retry_floor``: a candidate explaining every path at noise
        # level holds no strong path whose Doppler could be right while the others' are not; default 0: no floor)
        cfg = self.cfg
        ps = fit.path_energy / cfg.noise_watt  # [R, N] at the refined candidates (the LM's last system)
        sub = ((ps.amin(-1) < self.doppler_retry_level) & (ps.amax(-1) >= self.doppler_retry_floor)).nonzero().flatten()
        if sub.numel():
            start = self._doppler_search(resid, th[sub], x, x_idx, m_idx, rows[sub])
            # where the re-searched Dopplers all lie within ``doppler_retry_same`` grid steps (the 4x oversampled
            # grid of _doppler_search) of the refined ones, the LM from there returns to the same maximum: skipped
            step = 1.0 / (4 * cfg.n_symbols * cfg.symbol_stride * cfg.symbol_duration)
            moved = ((start[:, 0, 2:] - th[sub, 0, 2:]).abs() > self.doppler_retry_same * step).any(-1)
            sub, start = sub[moved], start[moved]
        if sub.numel():
            th2, fit2 = self._refine_local(resid, start, x, x_idx, m_idx, tol, rows=rows[sub])
            better = fit2.energy > fit.energy[sub]
            th[sub] = torch.where(better[:, None, None], th2, th[sub])
            fit.energy[sub] = torch.where(better, fit2.energy, fit.energy[sub])
            fit.gains[sub] = torch.where(better[:, None], fit2.gains, fit.gains[sub])
            fit.path_energy[sub] = torch.where(better[:, None], fit2.path_energy, fit.path_energy[sub])
        energy = torch.full((L, C), -float("inf"), dtype=F64, device=dev)
        energy[rows, cols] = fit.energy
        pick = energy.argmax(1)  # [L]
        best = cand.clone()
        best[rows, cols] = th[:, 0]
        at = torch.full((L, C), -1, dtype=torch.long, device=dev)
        at[rows, cols] = torch.arange(rows.numel(), device=dev)
        j = at[torch.arange(L, device=dev), pick]  # the picked candidate's row in fit (always refined)
        return best[torch.arange(L, device=dev), pick], fit.gains[j], fit.path_energy[j]


    def _signals(self, theta, gains, x, x_idx, m_idx) -> torch.Tensor:
        geo = self._geometry(theta.device)
        geom, _ = geo.local_paths(m_idx, theta)
        return path_signals(geo, x, x_idx, self._paths(theta.shape[1], theta.device), geom, gains)

    # ------------------------------------------------------------------------------------------ coarse grid
