"""Coarse search of the per-AP ML estimator: adaptive position grid, GLRT maps, peaks, Doppler re-search.

Batched over problems (one problem = one receive AP of one scene, on its current residual): the maps of all
problems of a chunk are computed as tensors, receive APs in a loop of M (each has its own grid geometry). Per
problem and transmit AP the work is ``U Nt Ts`` zero-padded FFTs over subcarriers (U receive beams), read directly
at the (beam, range bin) cells of the grid points; memory is bounded by chunking problems and beams to
``CHUNK_BYTES``.
"""

from __future__ import annotations

import math

import torch

from ...config import SPEED_OF_LIGHT, SystemConfig
from .model import AP_CLEARANCE, C64, C128, CHUNK_BYTES, F64, TWO_PI, _beams, _phases

CANDIDATE_RATIO = 0.3  # coarse peaks below this fraction of the best are not refined (straddle loss < 5 dB)


class SearchMixin:
    """The coarse-search stage of :class:`~.estimator.MLEstimator` (uses its options and geometry cache)."""

    def _doppler_search(self, yl, theta, x, x_idx, m_idx, rows, sweeps: int = 2) -> torch.Tensor:
        """Single targets ``theta`` [L, 1, 2 + N] with the N Dopplers re-searched globally at the target's position
        (data ``yl[rows]``): coordinate ascent over the paths, each path's Doppler over a 4x oversampled grid
        (|f| <= the largest physical Doppler) maximising the exact N-path explained energy ``Sy^H G^-1 Sy`` with
        the other paths' Dopplers fixed. The cross terms ``G_nk`` matter: both transmit APs send the same user
        symbols, so two paths of one target at close delays are strongly correlated and a per-path periodogram
        would lock onto the stronger path's Doppler.

        With ``s_n[i, t] = e^{-j 2 pi i df d_n / c} e^{j 2 pi t f_n dT} b_n[i, t]`` and ``z = a_r^H y``:
        ``Sy_n(f) = sum_t r_n[t] e^{-j 2 pi t f dT}`` with ``r_n[t] = sum_i conj(b_n) e^{j 2 pi i df d_n / c} z``,
        ``G_nk(f_n, f_k) = sum_t c_nk[t] e^{-j 2 pi t (f_n - f_k) dT}`` with
        ``c_nk[t] = sum_i conj(b_n) b_k e^{j 2 pi i df (d_n - d_k) / c}`` (a_r^H a_r = 1: one AoA per target).
        """
        cfg = self.cfg
        geo = self._geometry(theta.device)
        dev = theta.device
        L, N, Mr = theta.shape[0], cfg.n_tx, cfg.n_rx_antennas
        Ns, Ts = cfg.n_subcarriers, cfg.n_symbols
        geom, _ = geo.local_paths(m_idx[rows], theta)
        u, d, _, w = geom  # [L, N]
        lt = 4 * Ts
        fg = torch.fft.fftfreq(lt, cfg.symbol_stride * cfg.symbol_duration, dtype=F64, device=dev)
        fg = fg[fg.abs() <= geo.f_max]  # [J]
        t_abs = geo.t_abs
        E = torch.polar(torch.ones((), dtype=F64, device=dev), -TWO_PI * geo.dT * t_abs[:, None] * fg)  # [Ts, J]
        out = theta.clone()
        eye = torch.eye(N, dtype=C128, device=dev)
        step = max(1, CHUNK_BYTES // (N * (cfg.n_tx_antennas + 4) * Ns * Ts * 16 + Mr * Ns * Ts * 16))
        for s0 in range(0, L, step):
            sl = slice(s0, min(L, s0 + step))
            nl = sl.stop - sl.start
            z = (geo.steer(u[sl, :1], Mr).conj() @ yl[rows[sl]].to(C128).reshape(nl, Mr, Ns * Ts)).view(nl, Ns, Ts)
            b = _beams(geo.steer(w[sl], cfg.n_tx_antennas).conj(), x, x_idx[rows[sl]], self._paths(1, dev))
            bd = b * _phases(geo, d[sl], torch.zeros_like(d[sl]))[..., 0][..., None]  # s_n at f = 0: [nl, N, Ns, Ts]
            r = (bd.conj() * z[:, None]).sum(-2)  # [nl, N, Ts]
            c = torch.einsum("lnit,lkit->lnkt", bd.conj(), bd)  # [nl, N, N, Ts]
            f = out[sl, 0, 2:].clone()  # [nl, N]
            for _ in range(sweeps):
                for n in range(N):
                    ph = torch.polar(torch.ones((), dtype=F64, device=dev), TWO_PI * geo.dT * f[..., None] * t_abs)
                    sy = (r * ph.conj()).sum(-1)  # Sy_k at the current Dopplers [nl, N]
                    G = torch.einsum("lnkt,lnt,lkt->lnk", c, ph.conj(), ph)  # [nl, N, N] at current Dopplers
                    Sy = sy[:, None, :].expand(nl, fg.numel(), N).clone()
                    Sy[:, :, n] = r[:, n] @ E  # Sy_n over the grid
                    Gj = G[:, None].expand(nl, fg.numel(), N, N).clone()
                    row = (c[:, n] * ph) @ E  # G_nk(f_grid, f_k): sum_t c_nk e^{-j f_grid t} e^{+j f_k t}
                    Gj[:, :, n, :] = row.transpose(1, 2)
                    Gj[:, :, :, n] = row.transpose(1, 2).conj()
                    Gj[:, :, n, n] = c[:, n, n].sum(-1)[:, None]
                    tr = torch.diagonal(Gj, dim1=-2, dim2=-1).real.sum(-1).clamp_min(1e-300)
                    alpha = torch.linalg.solve(Gj + (1e-10 * tr / N)[..., None, None] * eye, Sy[..., None])[..., 0]
                    energy = (Sy.conj() * alpha).sum(-1).real  # [nl, J]
                    f[:, n] = fg[energy.argmax(-1)]
            out[sl, 0, 2:] = f
        return out


    def _grid(self, dev: torch.device) -> dict[str, torch.Tensor]:
        """Coarse-search geometry (cached): an adaptive position grid over the area and, per receive AP m, grid
        point g and transmit AP n, the nearest receive beam of the AoA-cosine grid, the nearest bin of the
        zero-padded range DFT and the AoD steering vector of g.

        The grid starts at spacing ``range_res / oversample`` and cells are halved (down to 0.25 m) wherever the
        likelihood can vary faster: close to an AP the angle seen by its array changes quickly with position, and
        the likelihood ripples on the scale ``ell = min(min_n d_n / Nt, min_m d_m / Mr) / grid_refinement`` (half a
        beamwidth in direction cosine, times the distance to the array).
        """
        key = str(dev)
        if key in self._grid_cache:
            return self._grid_cache[key]
        cfg, geo = self.cfg, self._geometry(dev)
        M, N = cfg.n_rx, cfg.n_tx
        U = self.angle_oversample * cfg.n_rx_antennas
        u = -1 + (torch.arange(U, dtype=F64, device=dev) + 0.5) * (2.0 / U)
        lf = self.oversample * cfg.n_subcarriers
        dd = SPEED_OF_LIGHT / (lf * cfg.subcarrier_stride * cfg.subcarrier_spacing)
        K = min(lf, int(math.floor(geo.d_max / dd)) + 2)
        pts = _adaptive_grid(cfg, geo.range_res / self.oversample, self.grid_refinement, dev)  # [G, 2]
        G = pts.shape[0]
        th = torch.cat([pts.repeat(M, 1), torch.zeros(M * G, N, dtype=F64, device=dev)], -1)[:, None]
        geom, _ = geo.local_paths(torch.arange(M, device=dev).repeat_interleave(G), th)  # each [M G, N]
        u_g = geom[0].view(M, G, N)[..., 0]
        d_g = geom[1].view(M, G, N)
        w_g = geom[3].view(M, G, N)
        iu = torch.round((u_g + 1) * U / 2 - 0.5).long().clamp(0, U - 1)  # nearest AoA beam [M, G]
        idn = torch.round(d_g / dd).long()  # [M, G, N]
        ok = ((idn >= 0) & (idn < K)).all(-1)
        lt = self.oversample * cfg.n_symbols
        f = torch.fft.fftfreq(lt, cfg.symbol_stride * cfg.symbol_duration, dtype=F64, device=dev)
        idn = idn.clamp(0, K - 1)
        a_t = geo.steer(w_g, cfg.n_tx_antennas, C64)  # [M, G, N, Nt]
        out = dict(u=u, pts=pts, iu=iu, idn=idn, ok=ok, a_r=geo.steer(u, cfg.n_rx_antennas, C64), a_t=a_t,
                   f=f, f_ok=(f.abs() <= geo.f_max), lf=torch.tensor(lf), lt=torch.tensor(lt), K=torch.tensor(K))
        out["groups"] = [[_cell_groups(iu[m] * K + idn[m, :, n], a_t[m, :, n]) for n in range(N)] for m in range(M)]
        for grp in (g for row in out["groups"] for g in row):
            grp["beam"], grp["bin"] = grp["cell"] // K, grp["cell"] % K
        self._grid_cache[key] = out
        return out

    def _search_context(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the coarse search needs from the transmit signals alone (once per chunk of scenes): conj(x) in
        complex64 [B, N, Nt, Ns Ts] and the transmit beam energies ``a_t^H R_x a_t`` [B, M, N, G] of the grid."""
        ctx = getattr(self, "_ctx", None)
        if ctx is not None and ctx["x"] is x:
            return ctx
        grid = self._grid(x.device)
        B, N, Nt, Ns, Ts = x.shape
        xc = x.to(C64).reshape(B, N, Nt, Ns * Ts)
        Rx = xc @ xc.mH  # [B, N, Nt, Nt]
        at = grid["a_t"]  # [M, G, N, Nt]
        E = torch.einsum("mgnp,bnpq,mgnq->bmng", at.conj(), Rx, at).real.clamp_min(1e-30)
        self._ctx = dict(x=x, xconj_t=xc.conj().view(B, N, Nt, Ns, Ts).transpose(3, 4).contiguous(), E=E)
        return self._ctx

    def _candidates(self, r: torch.Tensor, rows: torch.Tensor, x: torch.Tensor, x_idx: torch.Tensor,
                    m_idx: torch.Tensor, maps: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates per problem: [L, 2C, 2 + N] (local position and the N Dopplers) and which of them to refine
        [L, 2C] bool (statistic at least ``CANDIDATE_RATIO`` of its list's best), with C = ``n_candidates``.

        For every grid point g and transmit AP n: the receive beam towards g, symbols removed by the matched filter
        of the transmit beam towards g (``conj(a_t^H x)``), a zero-padded DFT over subcarriers read at the range
        bin of d_n(g), a zero-padded DFT over symbols, the best Doppler, GLRT-normalised by the transmit beam
        energy ``a_t^H R_x a_t``. Two lists of C peaks: of the sum over n (non-coherent over a target's paths) and of
        the max over n. Both transmit APs send the same user symbols, so a strong path of transmit AP k also
        excites transmit AP n's matched filter wherever d_n(g) matches its delay; the sum then counts it twice and
        can outrank the true position, the max cannot (the exact likelihood arbitrates between the lists).
        ``r`` [L, Mr, Ns, Ts]: the residual of problem l (scene ``x_idx[rows[l]]``, AP ``m_idx[rows[l]]``).
        With ``maps`` (a dict), the per-path statistics ``T`` [L, N, G] float32 and best Doppler bins ``F``
        [L, N, G] are stored in it.
        """
        cfg = self.cfg
        dev = r.device
        grid = self._grid(dev)
        ctx = self._search_context(x)
        N, Nt, Mr, Ns, Ts = cfg.n_tx, cfg.n_tx_antennas, cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols
        U = grid["u"].numel()
        lf, lt = int(grid["lf"]), int(grid["lt"])
        G = grid["pts"].shape[0]
        L = rows.numel()
        Tn = torch.zeros(L, N, G, dtype=torch.float32, device=dev)
        Fi = torch.zeros(L, N, G, dtype=torch.long, device=dev)
        scene, ap = x_idx[rows], m_idx[rows]
        per_beam = Nt * lf * Ts * 8 * 3  # bytes of one (problem, beam) FFT block with its temporaries
        step_u = max(1, min(U, CHUNK_BYTES // per_beam))
        step_l = max(1, CHUNK_BYTES // (per_beam * U)) if step_u == U else 1
        zero = torch.zeros((), device=dev)
        a_rh = grid["a_r"].conj()  # [U, Mr] complex64
        f_all = bool(grid["f_ok"].all())
        pad = None
        for m in range(cfg.n_rx):  # each receive AP has its own grid geometry
            prob = (ap == m).nonzero().flatten()
            for l0 in range(0, prob.numel(), step_l):
                pl = prob[l0:l0 + step_l]
                nl = pl.numel()
                # receive beams, symbols last, problems inside: [U, 1, nl, Ts, Ns] (a view)
                zb = (a_rh @ r[pl].to(C64).reshape(nl, Mr, Ns * Ts)).view(nl, U, Ns, Ts).permute(1, 0, 3, 2)[:, None]
                for n in range(N):
                    xn = ctx["xconj_t"][scene[pl], n].transpose(0, 1)  # [Nt, nl, Ts, Ns]
                    grp = grid["groups"][m][n]
                    # every grid point is in exactly one group: every row is written (row G: padding sink)
                    z2 = torch.empty(G + 1, nl * Ts, dtype=C64, device=dev)
                    for u0 in range(0, U, step_u):
                        u1 = min(U, u0 + step_u)
                        vs = ((grp["beam"] >= u0) & (grp["beam"] < u1)).nonzero().flatten()
                        if vs.numel() == 0:
                            continue
                        # the products written into a zero-padded buffer (its tail stays zero; reused)
                        shape = (u1 - u0, Nt, nl, Ts, lf)
                        if pad is None or pad.shape != shape:
                            pad = torch.zeros(shape, dtype=C64, device=dev)
                        torch.mul(zb[u0:u1], xn, out=pad[..., :Ns])
                        # unnormalised inverse DFT (norm="forward": no 1 / lf): [u, Nt, nl, Ts, lf]
                        F1 = torch.fft.ifft(pad, dim=-1, norm="forward")
                        # every group of grid points sharing a (beam, range bin) cell: a_t(g)^T times its block,
                        # read from F1 at (beam, bin) directly: [V, Nt, nl Ts]
                        X = F1[grp["beam"][vs] - u0, :, :, :, grp["bin"][vs]].view(-1, Nt, nl * Ts)
                        del F1
                        z2[grp["points"][vs]] = grp["a_t"][vs] @ X
                        del X
                    S = torch.fft.fft(z2[:G].view(G, nl, Ts), n=lt, dim=-1)  # [G, nl, lt]
                    pw = S.real**2 + S.imag**2
                    del S
                    pw /= ctx["E"][scene[pl], m, n].T[..., None]
                    if not f_all:
                        pw.masked_fill_(~grid["f_ok"], 0.0)
                    val, arg = pw.max(-1)  # [G, nl]
                    Tn[pl, n], Fi[pl, n] = val.T, arg.T
        ok = grid["ok"][ap]  # [L, G]
        Tn = torch.where(ok[:, None], Tn, zero)
        if maps is not None:
            maps["T"], maps["F"] = Tn, Fi
        Cn = self.n_candidates
        radius = self._geometry(dev).range_res
        tops, keep = [], []
        for T in (Tn.sum(1), Tn.max(1).values):
            T = torch.where(ok, T, torch.full_like(T, -1.0))
            top = _peaks(T, grid["pts"], Cn, radius)  # [L, Cn]
            Tt = T.gather(1, top)
            tops.append(top)
            keep.append(Tt >= CANDIDATE_RATIO * Tt.amax(1, keepdim=True))
        top = torch.cat(tops, 1)  # [L, 2 Cn]
        out = torch.empty(L, 2 * Cn, 2 + N, dtype=F64, device=dev)
        out[..., :2] = grid["pts"][top]
        out[..., 2:] = grid["f"][Fi.gather(2, top[:, None].expand(L, N, 2 * Cn))].transpose(1, 2)
        return out, torch.cat(keep, 1)


def _adaptive_grid(cfg: SystemConfig, h0: float, refinement: float, device: torch.device,
                   h_min: float = 0.25) -> torch.Tensor:
    """Cell centres [G, 2] float64 of a quadtree over the area: start at spacing ``h0``, halve a cell while its size
    exceeds the local ripple length ``min(min_n d_n / Nt, min_m d_m / Mr) / refinement`` and ``h_min``."""
    tx = torch.tensor(cfg.tx_positions, dtype=F64, device=device)
    rx = torch.tensor(cfg.rx_positions, dtype=F64, device=device)
    (x0, x1), (y0, y1) = cfg.area
    gx = torch.arange(x0 + h0 / 2, x1, h0, dtype=F64, device=device)
    gy = torch.arange(y0 + h0 / 2, y1, h0, dtype=F64, device=device)
    pts = torch.stack(torch.meshgrid(gx, gy, indexing="ij"), -1).reshape(-1, 2)
    h, out = h0, []
    aps = torch.cat([tx, rx])
    while pts.shape[0]:
        dt = torch.cdist(pts, tx).min(1).values
        dr = torch.cdist(pts, rx).min(1).values
        ell = torch.minimum(dt / cfg.n_tx_antennas, dr / cfg.n_rx_antennas) / refinement
        split = (h > ell) & (h / 2 >= h_min)
        far = torch.cdist(pts, aps).min(1).values >= AP_CLEARANCE
        out.append(pts[~split & far])
        q = h / 4
        pts = torch.cat([pts[split] + torch.tensor([dx, dy], dtype=F64, device=device)
                         for dx in (-q, q) for dy in (-q, q)])
        h /= 2
    return torch.cat(out)


def _cell_groups(cell: torch.Tensor, a_t: torch.Tensor, size: int = 32) -> dict[str, torch.Tensor]:
    """Grid points grouped by their (receive beam, range bin) cell ``cell`` [G] (long), at most ``size`` per
    group: ``cell`` [V] of each group, ``points`` [V, size] (G where padded) and their AoD steering vectors
    ``a_t`` [V, size, Nt] (zero where padded), so that one batched product serves every grid point."""
    G = cell.numel()
    order = torch.argsort(cell, stable=True)
    cs = cell[order]
    uniq, counts = torch.unique_consecutive(cs, return_counts=True)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(G, device=cell.device) - torch.repeat_interleave(start, counts)  # rank within its cell
    n_groups = (counts + size - 1) // size
    first_group = torch.cumsum(n_groups, 0) - n_groups
    cell_id = torch.repeat_interleave(torch.arange(uniq.numel(), device=cell.device), counts)
    group = first_group[cell_id] + rank // size  # [G] in sorted order
    V = int(n_groups.sum())
    points = torch.full((V, size), G, dtype=torch.long, device=cell.device)
    points[group, rank % size] = order
    at = torch.zeros(V, size, a_t.shape[-1], dtype=a_t.dtype, device=a_t.device)
    at[group, rank % size] = a_t[order]
    return dict(cell=torch.repeat_interleave(uniq, n_groups), points=points, a_t=at)


def _peaks(T: torch.Tensor, pts: torch.Tensor, count: int, radius: float) -> torch.Tensor:
    """Indices [L, count] of the ``count`` highest values of each row of T [L, G] at points [G, 2], greedily at least
    ``radius`` apart (non-maximum suppression over the best ``max(64 count, 256)``; after the first, only positive
    values are taken; the best is repeated when fewer exist). Batched over rows, sequential over the sorted list."""
    L, G = T.shape
    S = min(G, max(64 * count, 256))
    order = torch.argsort(T, dim=1, descending=True)[:, :S]  # [L, S]
    Ts = T.gather(1, order)
    p = pts[order]  # [L, S, 2]
    near = torch.cdist(p, p, compute_mode="donot_use_mm_for_euclid_dist") < radius  # [L, S, S]
    taken = torch.zeros(L, S, dtype=torch.bool, device=T.device)
    taken[:, 0] = True
    n_taken = torch.ones(L, dtype=torch.long, device=T.device)
    for j in range(1, S):
        ok = (Ts[:, j] > 0) & (n_taken < count) & ~(near[:, j, :j] & taken[:, :j]).any(1)
        taken[:, j] = ok
        n_taken += ok
        if j % 16 == 0 and bool((n_taken >= count).all()):
            break
    # the taken indices in sorted order, padded with the best
    rank = torch.where(taken, torch.arange(S, device=T.device), S)
    first = torch.sort(rank, dim=1).values[:, :count]  # [L, count]
    first = torch.where(first < S, first, torch.zeros_like(first))
    return order.gather(1, first)
