"""CS-based fully distributed sensing (paper Section V-A, after [25]), batched over scenes in PyTorch.

This is the product path of ``create("cs", cfg)``; the scene-at-a-time literal reference is
:mod:`cfisac.estimators.reference.cs` (``"cs-reference"``), whose algorithm is reproduced step by step for all
scenes x receive APs (x OMP candidates) in lockstep, on the inputs' device. Each receive AP m processes only its own
echoes Y_m [Mr, Ns, Ts] and the known transmit signals X:

1. **Delays by simultaneous OMP** over an oversampled (bistatic range, transmit AP, AoD) dictionary. The atom of
   transmit AP n, range ``d`` and AoD cosine ``u_tx`` on symbol t is ``phi_t[i] = exp(-j 2 pi i d df / c)
   a_t^H(u_tx) x_{i,n}[t]`` (Eq. 6 with the data kept in the atom); its coefficients are free per receive antenna and
   symbol, so the support is shared by the Mr * Ts measurement vectors. Each step ranks the grid atoms by
   ``sum_{k,t} |phi_t^H r_{k,t}|^2 / ||phi_t||^2`` (zero-padded FFTs over subcarriers and transmit antennas, local
   maxima of a 3 x 3 max filter, transmit APs with their quota of Q atoms used up excluded), refines the
   ``n_candidates`` best continuously in range and AoD with the chosen atoms projected out (:meth:`_refine`:
   alternating 1-D searches on the concentrated least-squares objective: 4 five-point zoom halvings, then 3-point
   parabolic Newton steps until the step is below the old 14-halving resolution), gives every trial
   set one cyclic polish round and keeps the trial leaving the smallest least-squares residual. N Q atoms are taken;
   a final cyclic polish (``refine_rounds`` rounds, per AP stopped once nothing moves by 1e-5 cell; the first two
   rounds re-detect every atom on the data with the others' least-squares fit removed) follows.
2. **AoA and Doppler per atom** from the per-symbol least-squares coefficients ``C[k, t] ~ alpha a_r(u_rx)[k]
   exp(+j 2 pi t f_D dT)``: a zero-padded 2-D DFT peak, 4 halvings of a 5 x 5 zoom, then 3 x 3 Newton steps.
3. **Pairing**: the paths of transmit APs n > 0 are matched to those of AP 0 (minimum-cost assignment on the
   disagreement of the locations they imply plus the AoA difference, in cells, by enumerating the Q! assignments);
   a target's AoA is the power-weighted mean of its paths' AoAs that agree with the strongest within a cell.
4. **CPU fusion**: :func:`cfisac.estimators.fusion.fuse_bistatic`, as MUSIC.

Batching: every stage works on R "rows" (one receive AP of one scene, or one OMP candidate of it) at once; the
sequential parts (OMP steps, the cyclic polish over atoms, polish rounds) are Python loops over the small fixed
numbers N Q (atoms) and rounds, never over scenes; converged rows drop out of the polish. Memory is bounded by the
chunk size (:meth:`CsEstimator.default_chunk_size`) and by computing the correlation statistic in blocks of rows x
symbols of at most :data:`PICK_BLOCK` complex cells (peak RSS growth 1.5 GiB for one ``paper`` scene, 1.7 GiB for
a 64-scene ``quick`` chunk). Results equal the reference's up to its zoom resolution (the reference zooms 14
halvings, this path converges by Newton steps to the continuous optimum; ``tests/test_cs.py`` states the tolerance,
1e-4 of a cell; on 64 noisy ``quick`` scenes at 48 dBm the messages moved by at most 1.5e-5 of a cell).

Cost: the work is arithmetic, not interpreter overhead, so batching alone gains little; the correlation step is
computed with fewer operations than the reference's (see :meth:`CsEstimator._correlation`): the data's part of the
statistic is computed once per row and transmit AP (:meth:`CsEstimator._data_lags`) and every pick on a residual
only range-transforms the 2J columns of the fitted atoms (the statistic is quadratic in the residual), the rest is
the same algorithm. The continuous refinements (about 80 per AP) use few objective evaluations: 4 zoom halvings
(14 evaluations per 1-D search) then parabolic Newton steps (3 evaluations each, at most 6, until every row's step
is below the old resolution) instead of 14 halvings (44 evaluations), and 4 halvings of the 5 x 5 AoA/Doppler zoom
then 3 x 3 Newton steps instead of 14 halvings: CPU s/scene 1.02 -> 0.77 at ``quick``, 48 dBm, B = 64, one thread
(benchmarks/results/batched.md). Their per-symbol products read the rows' data and conjugate transmit signals in
the layouts made once per row (``_Rows.yt``, ``_Rows.xt``: one more copy of x per row), not re-transposed per
refinement. Each refinement projects the data off the other atoms once (``P_t y_t``, so the objectives' numerators
are ``|phi_t^H P_t y|^2`` directly), evaluates ``a^H R_x,t a`` from the lag sums of ``R_x,t`` (Nt terms instead of
Nt^2) and, on the CPU, runs on blocks of rows that fit the cache (:data:`REFINE_BLOCK`; the 1-D searches read each
block's products ~20 times): 0.79 -> 0.68 (48 dBm) and 0.81 -> 0.57 (30 dBm) CPU s/scene at ``quick``, B = 64, one
thread, the same messages to 2e-9 m / 1.2e-6 Hz.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from ..config import SPEED_OF_LIGHT, SystemConfig
from ..physics import (
    ApLayout,
    SensingGrid,
    aoa_direction,
    delay_phase,
    doppler_phase,
    ray_distance,
    steering_vectors,
    wrap_cosine,
)
from . import register_without_checkpoint
from .base import BatchedEstimator, check_int_options
from .dsp import path_signatures, zoom_newton_maximize, zoom_newton_maximize_2d
from .fusion import BistaticMessages, bistatic_message_bits, fuse_bistatic

__all__ = ["CsEstimator"]

FFT_RATIO = 6.0  # range DFT of the correlation step by FFT when Ns Kw > FFT_RATIO Lf log2 Lf (paper), else a product
PICK_BLOCK = 2**21  # complex cells of the padded per-antenna delay DFT computed at once by the correlation step
ROW_BUDGET = 2**24  # complex cells of x (over all rows of a chunk, candidates included) per default chunk
TINY = 1e-300  # floor of denominators (as the reference)
REPLACE = 1e-6  # a re-detected atom replaces the refined one when it explains (1 + REPLACE) times more energy
CONVERGED = 1e-5  # a polish round moving no atom by more than this fraction of a cell stops the polish of that AP
REDETECT = 2  # polish rounds that re-detect every atom
REFINE_BLOCK = 2**18  # complex cells (Ts Ns max(Mr, Nt) per row) of a block of rows refined at once (cache-sized:
#   16 rows at quick, 4 MiB per per-row tensor in complex128)


def _abs2(z: torch.Tensor) -> torch.Tensor:
    return z.real.square() + z.imag.square()


def _flipped_lag_sums(xf: torch.Tensor) -> torch.Tensor:
    """Lag sums ``out[..., l - l' + L - 1] = sum X[l, l']`` [..., 2L - 1] of ``X`` [..., L, L] given with its columns
    reversed, ``xf[..., l, L - 1 - l'] = X[l, l']``: with the columns reversed X[l, l'] sits at (l, l + L - 1 - l'),
    its lag's column, once each row is shifted by its index (pad to 2L columns, re-read as rows of 2L - 1)."""
    L = xf.shape[-1]
    lead = xf.shape[:-2]
    sk = torch.nn.functional.pad(xf, (0, L)).reshape(*lead, 2 * L * L)[..., :L * (2 * L - 1)]
    return sk.reshape(*lead, L, 2 * L - 1).sum(-2)


def _lag_sums(m: torch.Tensor) -> torch.Tensor:
    """Weighted lag sums of Hermitian matrices ``m`` [..., L, L]: ``out[..., 0] = sum_l m[l, l]``, ``out[...,
    lam] = 2 sum_l m[l + lam, l]`` (lam >= 1), [..., L], so that ``sum_{l,l'} conj(v_l) m[l, l'] v_l' =
    |v_0|^2 Re sum_lam out[lam] conj(v_lam / v_0)`` for every Vandermonde ``v_l = v_0 q^l``, |q| = 1."""
    L = m.shape[-1]
    return torch.stack([torch.diagonal(m, offset=-lam, dim1=-2, dim2=-1).sum(-1) * (1.0 if lam == 0 else 2.0)
                        for lam in range(L)], -1)


@dataclass
class _Rows:
    """The data of R rows (receive AP of a scene, or a candidate of one): ``y`` [R, Mr, Ns, Ts], ``x`` [R, N, Nt, Ns,
    Ts] (the scene's transmit signals), ``rxx`` [R, N, Ts, Nt, Nt] (``sum_i x x^H`` per symbol), ``m`` [R] long and
    ``rho`` [R, N, Ts, Kw, 2, 2Nt - 1] the data's lag correlations of the OMP statistic (:meth:`CsEstimator._data_lags`)
    and ``inv_e`` [R, N, La, Ts] float64 the inverse atom energies ``1 / (a^H R_x,t a)`` of the AoD grid (both None
    on candidate copies, which pick nothing); ``yt`` the data per symbol [R, Ts, Ns, Mr] (:meth:`y_t`, made once
    and carried by :meth:`take` / :meth:`repeat`) and ``xt`` the conjugate transmit signals per symbol [R, N, Ts, Nt,
    Ns] (the layout of the AoD zoom's products)."""

    y: torch.Tensor
    x: torch.Tensor
    rxx: torch.Tensor
    m: torch.Tensor
    rho: torch.Tensor | None = None
    inv_e: torch.Tensor | None = None
    yt: torch.Tensor | None = None
    xt: torch.Tensor | None = None

    def take(self, idx: torch.Tensor) -> _Rows:
        return _Rows(self.y[idx], self.x[idx], self.rxx[idx], self.m[idx],
                     *(None if t is None else t[idx] for t in (self.rho, self.inv_e, self.yt, self.xt)))

    def slice(self, r0: int, r1: int) -> _Rows:
        """Rows r0 .. r1 - 1 as views (no copies)."""
        return _Rows(*(None if t is None else t[r0:r1] for t in (self.y, self.x, self.rxx, self.m, self.rho,
                                                                  self.inv_e, self.yt, self.xt)))

    def repeat(self, c: int) -> _Rows:
        """Every row ``c`` times (row r * c + j is copy j of row r), without ``rho``."""
        yt, xt = (None if t is None else t.repeat_interleave(c, 0) for t in (self.yt, self.xt))
        return _Rows(*(t.repeat_interleave(c, 0) for t in (self.y, self.x, self.rxx, self.m)), yt=yt, xt=xt)

    def y_t(self) -> torch.Tensor:
        """``y`` per symbol, [R, Ts, Ns, Mr] contiguous (the layout of every per-symbol product with the data)."""
        if self.yt is None:
            self.yt = self.y.permute(0, 3, 2, 1).contiguous()
        return self.yt


@dataclass
class _Context:
    """Device-side constants: sensing grid, AP layout, dictionary grids and the per-(n, m) range windows."""

    grid: SensingGrid
    layout: ApLayout
    u_tx: torch.Tensor  # [La] transmit direction cosines of the AoD grid (spatial-FFT bins)
    u_valid: torch.Tensor  # [La] bool, |u| <= 1
    a_tx: torch.Tensor  # [La, Nt] complex steering vectors of the AoD grid
    bins: tuple[int, int]  # delay bins [b0, b1) covering every (n, m) window
    d_bins: torch.Tensor  # [b1 - b0] bistatic ranges of those bins
    window: torch.Tensor  # [N, M, b1 - b0] bool, bin inside the feasible range window of (n, m)
    cache: dict = field(default_factory=dict)  # derived constants (kernels of the correlation step)


class CsEstimator(BatchedEstimator):
    """Batched CS-based fully distributed sensing (module docstring). ``est(y, x) -> Estimate``.

    Options (keyword-only, as the reference): ``delay_oversample`` / ``aod_oversample`` dictionary oversampling of the
    range grid (vs. ``c / B``) and of the transmit beam grid (vs. ``Nt``) (4, 4); ``oversample`` zero padding of the
    angle / Doppler DFT (4); ``refine_rounds`` maximum cyclic refinement rounds after OMP (8); ``n_candidates`` grid
    atoms tried at every OMP step (3); ``symbol_chunk`` most symbols per block of the correlation step (32); plus the
    :class:`BatchedEstimator` keywords ``device``, ``dtype``, ``chunk_size``.
    """

    name = "cs"

    def __init__(self, cfg: SystemConfig, *, delay_oversample: int = 4, aod_oversample: int = 4, oversample: int = 4,
                 refine_rounds: int = 8, n_candidates: int = 3, symbol_chunk: int = 32,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.complex128,
                 chunk_size: int | None = None) -> None:
        super().__init__(cfg, device=device, dtype=dtype, chunk_size=chunk_size)
        if cfg.n_tx * cfg.n_targets > cfg.n_subcarriers // 2:
            raise ValueError(
                f"CS needs N Q <= Ns / 2 atoms per symbol: N={cfg.n_tx}, Q={cfg.n_targets}, Ns={cfg.n_subcarriers}")
        check_int_options(delay_oversample=(delay_oversample, 1), aod_oversample=(aod_oversample, 1),
                          oversample=(oversample, 1), symbol_chunk=(symbol_chunk, 1), n_candidates=(n_candidates, 1),
                          refine_rounds=(refine_rounds, 0))
        self.delay_oversample = delay_oversample
        self.aod_oversample = aod_oversample
        self.oversample = oversample
        self.refine_rounds = refine_rounds
        self.n_candidates = n_candidates
        self.symbol_chunk = symbol_chunk
        self.fronthaul_bits_per_ap, self.message_bits_per_ap = bistatic_message_bits(cfg.n_tx, cfg.n_targets)
        self.lf = delay_oversample * cfg.n_subcarriers
        self.la = aod_oversample * cfg.n_tx_antennas
        self.periodic = cfg.antenna_spacing >= 0.5 - 1e-12
        self._contexts: dict[torch.device, _Context] = {}

    def default_chunk_size(self) -> int:
        """Scenes per chunk: the rows' copies of x (M APs x ``n_candidates``) stay under :data:`ROW_BUDGET` cells
        (85 scenes at ``quick``, 1 at ``paper``)."""
        cfg = self.cfg
        per_scene = cfg.n_rx * self.n_candidates * cfg.n_tx * cfg.n_tx_antennas * cfg.n_subcarriers * cfg.n_symbols
        return max(1, ROW_BUDGET // per_scene)

    # ------------------------------------------------------------------ constants
    def _context(self, device: torch.device) -> _Context:
        if device in self._contexts:
            return self._contexts[device]
        cfg = self.cfg
        grid = SensingGrid.from_config(cfg, device)
        layout = ApLayout.from_config(cfg, device)
        f64 = dict(dtype=torch.float64, device=device)
        d_grid = torch.arange(self.lf, **f64) * SPEED_OF_LIGHT / (self.lf * cfg.subcarrier_stride
                                                                     * cfg.subcarrier_spacing)
        (x0, x1), (y0, y1) = cfg.area
        corners = torch.tensor([[x0, y0], [x0, y1], [x1, y0], [x1, y1]], **f64)
        to_c = lambda p: torch.linalg.vector_norm(corners[None] - p[:, None], dim=-1)  # noqa: E731  [A, 4]
        lo = torch.linalg.vector_norm(layout.tx[:, None] - layout.rx[None], dim=-1) - grid.range_res  # [N, M]
        hi = (to_c(layout.tx)[:, None] + to_c(layout.rx)[None]).amax(-1) + grid.range_res
        inside = (d_grid >= lo[..., None]) & (d_grid <= hi[..., None])  # [N, M, Lf]
        used = inside.any(0).any(0).nonzero()[:, 0]
        b0, b1 = int(used.min()), int(used.max()) + 1
        u_tx = torch.fft.fftfreq(self.la, **f64) / cfg.antenna_spacing
        ctx = _Context(grid=grid, layout=layout, u_tx=u_tx, u_valid=u_tx.abs() <= 1.0,
                       a_tx=steering_vectors(u_tx, cfg.n_tx_antennas, cfg.antenna_spacing, self.dtype),
                       bins=(b0, b1), d_bins=d_grid[b0:b1], window=inside[..., b0:b1])
        self._contexts[device] = ctx
        return ctx

    # ------------------------------------------------------------------ stages
    def ap_messages(self, y: torch.Tensor, x: torch.Tensor) -> BistaticMessages:
        """Every receive AP's message (steps 1-3): AoA [b, M, Q], ranges / Dopplers [b, M, Q, N] float64."""
        cfg = self.cfg
        S, M, N, Q = y.shape[0], cfg.n_rx, cfg.n_tx, cfg.n_targets
        ctx = self._context(y.device)
        rows = self._rows(ctx, y, x)
        n, d, u = self._omp(ctx, rows)
        coeffs, _ = self._least_squares(ctx, rows, n, d, u)
        u_rx, f, amp = self._angle_doppler(ctx, coeffs)
        aoa, ranges, dopplers = self._pair(ctx, rows.m, n, d, u_rx, f, amp)
        return BistaticMessages(aoa.reshape(S, M, Q), ranges.reshape(S, M, Q, N), dopplers.reshape(S, M, Q, N))

    def _rows(self, ctx: _Context, y: torch.Tensor, x: torch.Tensor) -> _Rows:
        """One row per (scene, receive AP) of ``y`` [S, M, Mr, Ns, Ts] and ``x`` [S, N, Nt, Ns, Ts], with the data's
        lag correlations and the inverse atom energies of the OMP statistic."""
        S, M, N = y.shape[0], self.cfg.n_rx, self.cfg.n_tx
        rxx = torch.einsum("snlit,snkit->sntlk", x, x.conj())
        rows = _Rows(y.reshape(S * M, *y.shape[2:]), x.repeat_interleave(M, 0), rxx.repeat_interleave(M, 0),
                     torch.arange(M, device=y.device).repeat(S),
                     xt=x.conj().permute(0, 1, 4, 2, 3).contiguous().resolve_conj().repeat_interleave(M, 0))
        rows.rho = torch.stack([self._data_lags(ctx, rows.y, rows.x[:, k]) for k in range(N)], 1)
        energy = torch.einsum("pl,rntlk,pk->rnpt", ctx.a_tx.conj(), rows.rxx, ctx.a_tx).real.to(torch.float64)
        rows.inv_e = 1.0 / energy.clamp_min(TINY)  # [R, N, La, Ts]
        return rows

    def fuse(self, messages: BistaticMessages, x: torch.Tensor) -> object:
        """CPU fusion (step 4): :func:`cfisac.estimators.fusion.fuse_bistatic`."""
        return fuse_bistatic(self.cfg, messages)

    # ------------------------------------------------------------------ OMP
    def _omp(self, ctx: _Context, rows: _Rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Greedy atom picking with quotas, candidate refinement + one polish round, smallest residual wins, then the
        final polish. Returns the atoms' transmit AP n [P, NQ] long, range d and AoD u [P, NQ] float64."""
        cfg = self.cfg
        P, dev = rows.y.shape[0], rows.y.device
        N, Q, C = cfg.n_tx, cfg.n_targets, self.n_candidates
        n = torch.zeros((P, 0), dtype=torch.long, device=dev)
        d = torch.zeros((P, 0), dtype=torch.float64, device=dev)
        u = torch.zeros_like(d)
        quota = torch.full((P, N), Q, dtype=torch.long, device=dev)
        fit = None  # the residual is y - Phi C (atoms Phi, least-squares coefficients C of the atoms chosen so far)
        crows = rows.repeat(C)
        for _ in range(N * Q):
            cn, cd, cu, ok = self._pick(ctx, rows, fit, quota > 0, C)  # [P, C]
            on, od, ou = (t.repeat_interleave(C, 0) for t in (n, d, u))
            others = (on, od, ou) if on.shape[1] else None
            nd, nu, _ = self._refine(ctx, crows, cn.reshape(-1), cd.reshape(-1), cu.reshape(-1), others, first=True)
            tn = torch.cat([on, cn.reshape(-1, 1)], 1)
            td, tu = self._polish(ctx, crows, tn, torch.cat([od, nd[:, None]], 1), torch.cat([ou, nu[:, None]], 1),
                                  rounds=1, redetect=0)
            _, fit = self._least_squares(ctx, crows, tn, td, tu)
            err = _abs2(crows.y - fit).sum((1, 2, 3)).sqrt()
            err = torch.where(ok.reshape(-1), err, torch.full_like(err, math.inf)).reshape(P, C)
            sel = torch.arange(P, device=dev) * C + err.argmin(1)
            n, d, u = tn[sel], td[sel], tu[sel]
            quota[torch.arange(P, device=dev), n[:, -1]] -= 1
            fit = self._solve(ctx, rows, n, d, u)
        d, u = self._polish(ctx, rows, n, d, u, rounds=self.refine_rounds, redetect=REDETECT)
        return n, d, u

    def _pick(self, ctx: _Context, rows: _Rows, fit: tuple[torch.Tensor, torch.Tensor] | None, allowed: torch.Tensor,
              top: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """OMP selection: the ``top`` grid atoms with the largest normalised correlation energy
        ``sum_{k,t} |phi_t^H r_{k,t}|^2 / ||phi_t||^2`` among the local maxima (3 x 3 max filter, wrapping in AoD for a
        half-wavelength array) of every allowed transmit AP's statistic, inside each (n, m) range window; best first.

        The residual is ``r = y - Phi C`` with ``fit = (Phi [R, Ts, Ns, J], C [R, Ts, J, Mr])`` the atoms and
        least-squares coefficients of :meth:`_solve` (None: ``r = y``); ``rows.rho`` must hold the data's lag
        correlations (:meth:`_data_lags`). ``allowed`` [R, N] bool. Returns (n [R, top] long, d, u [R, top] float64,
        exists [R, top] bool).
        """
        R, N = rows.y.shape[0], self.cfg.n_tx
        kw = ctx.d_bins.shape[0]
        stat = torch.full((R, N, self.la, kw), -math.inf, dtype=torch.float64, device=rows.y.device)
        for k in range(N):
            idx = allowed[:, k].nonzero()[:, 0]
            if idx.numel() == 0:
                continue
            sub_fit = None if fit is None else (fit[0][idx], fit[1][idx])
            s = self._correlation(ctx, rows.rho[idx, k], rows.y[idx], rows.x[idx, k], rows.inv_e[idx, k], sub_fit)
            ok = ctx.window[k][rows.m[idx]][:, None, :] & ctx.u_valid[None, :, None]
            stat[idx, k] = torch.where(ok, s, torch.full_like(s, -math.inf))
        # 3 x 3 max filter: 'wrap' (periodic AoD) or 'nearest' along AoD, 'nearest' along range (-inf outside windows)
        pad_u = (stat[:, :, -1:], stat, stat[:, :, :1]) if self.periodic else (stat[:, :, :1], stat, stat[:, :, -1:])
        su = torch.cat(pad_u, 2)
        mu = torch.maximum(torch.maximum(su[:, :, :-2], su[:, :, 1:-1]), su[:, :, 2:])
        sg = torch.cat([mu[..., :1], mu, mu[..., -1:]], -1)
        mf = torch.maximum(torch.maximum(sg[..., :-2], sg[..., 1:-1]), sg[..., 2:])
        peaks = (mf == stat) & torch.isfinite(stat)
        vals = torch.where(peaks, stat, torch.full_like(stat, -math.inf)).reshape(R, -1)
        kk = min(top, vals.shape[1])
        best, flat = torch.topk(vals, kk, dim=1)
        if kk < top:
            flat = torch.cat([flat, flat[:, :1].expand(R, top - kk)], 1)
            best = torch.cat([best, torch.full_like(best[:, :1], -math.inf).expand(R, top - kk)], 1)
        g = flat % kw
        p = (flat // kw) % self.la
        n = flat // (kw * self.la)
        return n, ctx.d_bins[g], ctx.u_tx[p], best > -math.inf

    def _range_dft(self, ctx: _Context, xc: torch.Tensor, v: torch.Tensor, dft_t: torch.Tensor | None) -> torch.Tensor:
        """``c[l, k] = sum_i e^{+j 2 pi i b / L_f} conj(x_l[i]) v_k[i]`` on the window bins b: [r, T, Kw, Nt, V] for
        ``xc = conj(x)`` [r, T, Ns, Nt, 1] and columns ``v`` [r, T, Ns, 1, V] (the reference's ``ifft(., Lf) * Lf``:
        by the padded FFT when ``dft_t`` [Kw, Ns] is None, else by the product with it)."""
        g = xc * v  # [r, T, Ns, Nt, V]
        if dft_t is None:  # long combs: the zero-padded FFT is cheaper than the product
            b0, b1 = ctx.bins
            c = torch.fft.ifft(g, n=self.lf, dim=2)[:, :, b0:b1] * self.lf
            return c.contiguous()
        r, t, ns, nt, nv = g.shape
        return (dft_t @ g.reshape(r, t, ns, nt * nv)).reshape(r, t, -1, nt, nv)

    def _data_lags(self, ctx: _Context, y: torch.Tensor, x_n: torch.Tensor) -> torch.Tensor:
        """Transmit-antenna lag correlations of the data ``y`` [R, Mr, Ns, Ts] against one transmit AP's ``x_n``
        [R, Nt, Ns, Ts]: ``rho[t, b, lambda] = sum_{l - l' = lambda} sum_k c[l, k] conj(c[l', k])`` (``c`` of
        :meth:`_range_dft` per symbol t and window bin b), as [R, Ts, Kw, 2, 2 Nt - 1] float64 (real, imaginary)."""
        R, mr, ns, ts = y.shape
        nt = x_n.shape[1]
        dft, lag, _ = self._correlation_kernels(ctx, ns, nt, y.dtype)
        kw = dft.shape[1]
        use_fft = ns * kw > FFT_RATIO * self.lf * math.log2(self.lf)
        dft_t = None if use_fft else dft.transpose(0, 1).contiguous()  # [Kw, Ns]
        per = nt * mr * (self.lf if use_fft else max(ns, kw))
        tc = max(1, min(self.symbol_chunk, ts, PICK_BLOCK // per))
        rc = max(1, PICK_BLOCK // (per * tc))
        xc = x_n.conj().permute(0, 3, 2, 1)[..., None]  # [R, Ts, Ns, Nt, 1]
        yp = y.permute(0, 3, 2, 1)[..., None, :]  # [R, Ts, Ns, 1, Mr]
        out = torch.empty((R, ts, kw, 2, 2 * nt - 1), dtype=lag.dtype, device=y.device)
        for r0 in range(0, R, rc):
            for t0 in range(0, ts, tc):
                c = self._range_dft(ctx, xc[r0:r0 + rc, t0:t0 + tc], yp[r0:r0 + rc, t0:t0 + tc], dft_t)
                rcc = c @ c.conj().transpose(-1, -2)  # [r, T, Kw, Nt, Nt]
                out[r0:r0 + rc, t0:t0 + tc] = (torch.view_as_real(rcc.reshape(*rcc.shape[:3], nt * nt))
                                               .transpose(-1, -2) @ lag)
        return out

    def _correlation(self, ctx: _Context, rho_y: torch.Tensor, y: torch.Tensor, x_n: torch.Tensor,
                     inv_e: torch.Tensor, fit: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """The OMP statistic of one transmit AP on the residual ``r = y - Phi C``: [R, La, Kw] float64.

        ``rho_y`` [R, Ts, Kw, 2, 2Nt - 1] the data's lag correlations (:meth:`_data_lags`), ``y`` [R, Mr, Ns, Ts],
        ``x_n`` [R, Nt, Ns, Ts], ``inv_e`` [R, La, Ts] (``1 / a^H R_x,t a``), ``fit`` = (Phi [R, Ts, Ns, J],
        C [R, Ts, J, Mr]) or None.
        Per symbol, ``c = conj(x_l) r_k`` range-transformed (:meth:`_range_dft`) gives ``c[l, k]``; the AoD DFT
        ``v[p, k] = sum_l a_l(u_p) c[l, k]`` enters only through ``sum_k |v[p, k]|^2 = sum_lambda W[lambda, p]
        rho[lambda]`` with the transmit-antenna lag correlation ``rho[lambda] = sum_{l - l' = lambda} (c c^H)[l, l']``
        and ``W = exp(-j 2 pi lambda p / La) / Nt``, divided by ``||phi_t||^2 = a^H R_x,t a`` and summed over symbols
        (the same numbers as the reference's zero-padded FFTs and ``|.|^2``, fewer operations). ``c`` is linear in
        r: ``c = c_y - D C`` with ``D = c(Phi)`` [Nt, J], so ``c c^H = c_y c_y^H + U V^H`` with ``U = [D G - F, -D]``,
        ``V = [D, F]``, ``F = c(y C^H)`` [Nt, J] and ``G = C C^H`` [J, J]: only 2J columns are range-transformed per
        pick (``c_y c_y^H`` is ``rho_y``, computed once), and the lags of ``U V^H`` are sums over ``l`` directly.
        """
        R, mr, ns, ts = y.shape
        nt = x_n.shape[1]
        dft, lag, w = self._correlation_kernels(ctx, ns, nt, y.dtype)
        kw = dft.shape[1]
        J = 0 if fit is None else fit[0].shape[-1]
        use_fft = ns * kw > FFT_RATIO * self.lf * math.log2(self.lf)
        dft_t = None if use_fft else dft.transpose(0, 1).contiguous()  # [Kw, Ns]
        per = nt * max(2 * J, 1) * (self.lf if use_fft else max(ns, kw)) + kw * (2 * nt - 1) * self.la
        tc = max(1, min(self.symbol_chunk, ts, PICK_BLOCK // per))
        rc = max(1, PICK_BLOCK // (per * tc))
        out = torch.zeros((R, self.la, kw), dtype=torch.float64, device=y.device)
        if J:
            phi, coef = fit
            xc = x_n.conj().permute(0, 3, 2, 1)[..., None]  # [R, Ts, Ns, Nt, 1]
            yc = y.permute(0, 3, 2, 1) @ coef.conj().transpose(-1, -2)  # y C^H: [R, Ts, Ns, J]
            cols = torch.cat([phi, yc], -1)[..., None, :]  # [R, Ts, Ns, 1, 2J]
            gram = coef @ coef.conj().transpose(-1, -2)  # G = C C^H: [R, Ts, J, J]
        for r0 in range(0, R, rc):
            for t0 in range(0, ts, tc):
                rho = rho_y[r0:r0 + rc, t0:t0 + tc]
                if J:
                    c = self._range_dft(ctx, xc[r0:r0 + rc, t0:t0 + tc], cols[r0:r0 + rc, t0:t0 + tc], dft_t)
                    dd, ff = c[..., :J], c[..., J:]  # [r, T, Kw, Nt, J]
                    u = torch.cat([dd @ gram[r0:r0 + rc, t0:t0 + tc, None] - ff, -dd], -1)  # [r, T, Kw, Nt, 2J]
                    v = torch.cat([dd, ff], -1)
                    # lags of X = U V^H (columns reversed: X[l, Nt - 1 - l'])
                    lags = _flipped_lag_sums(u @ v.flip(-2).conj().transpose(-1, -2))  # [r, T, Kw, 2Nt - 1]
                    rho = rho + torch.view_as_real(lags).transpose(-1, -2)
                # sum_t sum_lambda rho[t, b, lambda] W[lambda, p] / E[p, t]: one product per row over (t, lambda)
                nr = rho.shape[0]
                wt = w.T.to(torch.float64)[None, :, None, :] * inv_e[r0:r0 + rc, :, t0:t0 + tc, None]  # [r, La, T, *]
                rt = rho.to(torch.float64).permute(0, 1, 3, 4, 2).reshape(nr, -1, kw)  # [r, T 2 (2Nt - 1), Kw]
                out[r0:r0 + rc] += wt.reshape(nr, self.la, -1) @ rt
        return out

    def _correlation_kernels(self, ctx: _Context, ns: int, nt: int, dtype: torch.dtype,
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Constants of :meth:`_correlation`: range DFT [Ns, Kw] complex, lag sums [Nt^2, 2Nt - 1] and the AoD
        kernel [2 (2Nt - 1), La] real (rows: real parts, then minus the imaginary parts' weights)."""
        key = ("corr", dtype)
        if key in ctx.cache:
            return ctx.cache[key]
        dev = ctx.u_tx.device
        f64 = dict(dtype=torch.float64, device=dev)
        b0, b1 = ctx.bins
        i = torch.arange(ns, **f64)
        dft = torch.polar(torch.ones(ns, b1 - b0, **f64),
                          (2 * math.pi / self.lf) * i[:, None] * torch.arange(b0, b1, **f64)).to(dtype)
        ll = torch.arange(nt, device=dev)
        lam = (ll[:, None] - ll[None, :]).reshape(-1) + nt - 1  # lag l - l' of entry (l, l')
        lag = torch.nn.functional.one_hot(lam, 2 * nt - 1).to(torch.float64 if dtype == torch.complex128
                                                                else torch.float32)
        ang = -2 * math.pi * torch.arange(-(nt - 1), nt, **f64)[:, None] * torch.arange(self.la, **f64) / self.la
        w = torch.cat([torch.cos(ang), -torch.sin(ang)], 0) / nt  # Re(rho W) = rho_re W_re - rho_im W_im
        ctx.cache[key] = (dft, lag, w.to(lag.dtype))
        return ctx.cache[key]

    # ------------------------------------------------------------------ refinement
    def _atoms(self, ctx: _Context, rows: _Rows, n: torch.Tensor, d: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Atom matrices per symbol [R, Ts, Ns, J]: ``phi_j[i, t] = exp(-j 2 pi i d_j df / c) a_t^H(u_j) x_{i,n_j}[t]``
        (Eq. 6 without the Doppler) for atoms n, d, u [R, J]."""
        sig = path_signatures(ctx.grid, rows.x, n, u, d, torch.zeros_like(d))  # [R, J, Ns, Ts]
        return sig.permute(0, 3, 2, 1)

    def _least_squares(self, ctx: _Context, rows: _Rows, n: torch.Tensor, d: torch.Tensor, u: torch.Tensor,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-symbol ridge-regularised least squares of all atoms [R, J]: coefficients [R, Ts, J, Mr] and the fitted
        signal [R, Mr, Ns, Ts]."""
        phi, coeffs = self._solve(ctx, rows, n, d, u)
        return coeffs, (phi @ coeffs).permute(0, 3, 2, 1)

    def _solve(self, ctx: _Context, rows: _Rows, n: torch.Tensor, d: torch.Tensor, u: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The atoms [R, Ts, Ns, J] (:meth:`_atoms`) and their :meth:`_least_squares` coefficients [R, Ts, J, Mr]."""
        phi = self._atoms(ctx, rows, n, d, u)
        ph = phi.conj().transpose(-1, -2)
        gram = ph @ phi
        J = phi.shape[-1]
        ridge = 1e-10 * torch.diagonal(gram, dim1=-2, dim2=-1).real.sum(-1) / J + TINY
        eye = torch.eye(J, dtype=gram.dtype, device=gram.device)
        return phi, torch.linalg.solve(gram + ridge[..., None, None] * eye, ph @ rows.y_t())

    def _refine(self, ctx: _Context, rows: _Rows, n: torch.Tensor, d: torch.Tensor, u: torch.Tensor,
                others: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, first: bool,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_refine_block` on blocks of rows (views, no copies) of at most :data:`REFINE_BLOCK` cells
        ``Ts Ns max(Mr, Nt)`` (16 rows at ``quick``), so that a block's per-row products, which the 1-D searches
        read about 20 times each, stay in the cache (CPU only: on a GPU one pass over all rows; at ``quick``, 48 dBm,
        B = 64, one thread: 0.79 -> 0.68 CPU s/scene with the changes of ca8ae36). Every row's search is independent
        of the others', so the results do not depend on the blocking."""
        R, mr, ns, ts = rows.y.shape
        rb = max(1, REFINE_BLOCK // (ts * ns * max(mr, self.cfg.n_tx_antennas)))
        if R <= rb or rows.y.device.type != "cpu":
            return self._refine_block(ctx, rows, n, d, u, others, first)
        parts = [self._refine_block(ctx, rows.slice(r0, r0 + rb), n[r0:r0 + rb], d[r0:r0 + rb], u[r0:r0 + rb],
                                    None if others is None else tuple(t[r0:r0 + rb] for t in others), first)
                 for r0 in range(0, R, rb)]
        return tuple(torch.cat(t) for t in zip(*parts, strict=True))

    def _refine_block(self, ctx: _Context, rows: _Rows, n: torch.Tensor, d: torch.Tensor, u: torch.Tensor,
                      others: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, first: bool,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Continuous refinement of one atom per row (n, d, u [R]) in range and AoD: alternating 1-D zoom + Newton
        searches (:func:`~cfisac.estimators.dsp.zoom_newton_maximize`, scales 1 and 1/4) on the multiple-measurement
        objective with the ``others`` atoms ([R, K] each) projected out per symbol::

            J(d, u) = sum_{k,t} |phi_t^H P_t y_{k,t}|^2 / (phi_t^H P_t phi_t),   P_t = I - O_t (O_t^H O_t)^+ O_t^H

        Returns (d [R], u [R], J at the optimum [R]: the energy the atom explains).
        """
        cfg, grid = self.cfg, ctx.grid
        R, mr, ns, ts = rows.y.shape
        nt, dt = cfg.n_tx_antennas, rows.y.dtype
        ar = torch.arange(R, device=rows.y.device)
        rxx_lags = _lag_sums(rows.rxx[ar, n])  # R_x,t lags [R, Ts, Nt]: a^H R_x,t a = Re(conj(a) . lags) / sqrt(Nt)
        xt_n = rows.xt[ar, n]  # conj(x) of each row's transmit AP per symbol: [R, Ts, Nt, Ns]
        width = 1.0 if first else 0.5
        hd = grid.range_res / self.delay_oversample * width
        hu = 1.0 / (nt * grid.spacing * self.aod_oversample) * width
        lo, hi = (None, None) if self.periodic else (-1.0, 1.0)
        K = 0 if others is None else others[0].shape[1]
        z = rows.y_t()  # the data projected off the other atoms, P_t y_t: [R, Ts, Ns, Mr]
        if K:
            o = self._atoms(ctx, rows, *others)  # [R, Ts, Ns, K]
            oh = o.conj().transpose(-1, -2)
            ginv = torch.linalg.pinv(oh @ o, rtol=1e-15, hermitian=True)  # [R, Ts, K, K]
            z = z - o @ (ginv @ (oh @ z))  # y - O G^+ O^H y

        def concentrated(num: torch.Tensor, c_: torch.Tensor | None, e_: torch.Tensor) -> torch.Tensor:
            """num = sum_k |phi_t^H P_t y_{k,t}|^2 [R, C, Ts] float64, c_ = phi^H O [R, C, Ts, K] or None,
            e_ = ||phi_t||^2 [R, C, Ts]."""
            if c_ is None:
                return (num / e_.clamp_min(TINY)).sum(2)
            den = e_ - torch.einsum("rctk,rtkl,rctl->rct", c_, ginv, c_.conj()).real
            return (num / torch.maximum(den, 1e-12 * e_ + TINY)).sum(2)

        obj = torch.zeros_like(d)
        for scale in (1.0, 0.25):
            # range zoom at fixed AoD: phi_t^H v = sum_i e^{+j w(d) i} conj(b[i,t]) v[i]
            a_u = steering_vectors(u[:, None], nt, grid.spacing, dt)  # [R, 1, Nt]
            bct = (a_u[:, None] @ xt_n)[:, :, 0]  # conj(b) = a^T conj(x): [R, Ts, Ns]
            e_t = _abs2(bct).sum(2)  # [R, Ts]
            zb = z.new_empty((R, ns, ts, mr))  # conj(b) P y, written in the layout of the range products
            torch.mul(bct[..., None], z, out=zb.transpose(1, 2))
            zb = zb.view(R, ns, ts * mr)
            ob = (bct[..., None] * o).transpose(1, 2).reshape(R, ns, ts * K) if K else None

            def obj_d(cand: torch.Tensor, zb=zb, ob=ob, e_t=e_t) -> torch.Tensor:
                e = delay_phase(grid, cand).conj().to(dt)  # [R, C, Ns]
                c_ = None if ob is None else (e @ ob).reshape(R, -1, ts, K)
                num = _abs2((e @ zb).reshape(R, -1, ts, mr)).sum(3)  # [R, C, Ts]
                return concentrated(num, c_, e_t[:, None].expand(R, cand.shape[1], ts))

            d, _ = zoom_newton_maximize(obj_d, d, hd * scale)
            # AoD zoom at fixed range: conj(b) = a^T conj(x): phi_t^H v = sum_l a_l sum_i e^{+j w i} conj(x_l) v
            ph = delay_phase(grid, d).conj().to(dt)
            xph = xt_n * ph[:, None, None, :]  # conj(x) e^{+j w i}: [R, Ts, Nt, Ns]
            wz = (xph @ z).permute(0, 2, 3, 1).reshape(R, nt, mr * ts)  # [R, Nt, Mr*Ts]
            wo = (xph @ o).transpose(1, 2).reshape(R, nt, ts * K) if K else None  # [R, Nt, Ts*K]

            def obj_u(cand: torch.Tensor, wz=wz, wo=wo) -> torch.Tensor:
                a = steering_vectors(cand, nt, grid.spacing, dt)  # [R, C, Nt]
                c_ = None if wo is None else (a @ wo).reshape(R, -1, ts, K)
                e_ = (a.conj() @ rxx_lags.transpose(1, 2)).real.to(torch.float64) / math.sqrt(nt)  # [R, C, Ts]
                num = _abs2((a @ wz).reshape(R, -1, mr, ts)).sum(2)
                return concentrated(num, c_, e_)

            u, obj = zoom_newton_maximize(obj_u, u, hu * scale, lower=lo, upper=hi)
            if self.periodic:  # half-wavelength ULA: u and u -+ 2 are the same steering vector
                u = torch.remainder(u + 1.0, 2.0) - 1.0
        return d, u, obj

    def _polish(self, ctx: _Context, rows: _Rows, n: torch.Tensor, d: torch.Tensor, u: torch.Tensor, rounds: int,
                redetect: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cyclic alternating-projection refinement of all atoms (n, d, u [R, J]); in the first ``redetect`` rounds
        every atom is also re-detected on the data with the other atoms' least-squares fit removed and replaced when
        the re-detected atom explains more energy. A row stops once a round (from round ``redetect - 1`` on) moves
        no atom by :data:`CONVERGED` of a cell. Returns the new (d, u)."""
        cfg, grid = self.cfg, ctx.grid
        J = n.shape[1]
        d, u = d.clone(), u.clone()
        if J <= 1:
            return d, u
        active = torch.arange(n.shape[0], device=n.device)
        for rnd in range(rounds):
            every = active.numel() == n.shape[0]  # no copies of the rows while none has converged
            sub, sn, sd, su = (rows, n, d, u) if every else (rows.take(active), n[active], d[active], u[active])
            sd, su = sd.clone(), su.clone()
            change = torch.zeros_like(sd[:, 0])
            for j in range(J):
                keep = [k for k in range(J) if k != j]
                others = (sn[:, keep], sd[:, keep], su[:, keep])
                od, ou = sd[:, j].clone(), su[:, j].clone()
                nd, nu, obj = self._refine(ctx, sub, sn[:, j], od, ou, others, first=False)
                if rnd < redetect:
                    allowed = torch.nn.functional.one_hot(sn[:, j], cfg.n_tx).bool()
                    pn, pd, pu, ok = self._pick(ctx, sub, self._solve(ctx, sub, *others), allowed, 1)
                    cd, cu, objc = self._refine(ctx, sub, pn[:, 0], pd[:, 0], pu[:, 0], others, first=True)
                    swap = ok[:, 0] & (objc > obj * (1.0 + REPLACE))
                    nd, nu = torch.where(swap, cd, nd), torch.where(swap, cu, nu)
                sd[:, j], su[:, j] = nd, nu
                step = torch.maximum((nd - od).abs() / grid.range_res,
                                     wrap_cosine(nu - ou, grid.spacing).abs() * cfg.n_tx_antennas * grid.spacing)
                change = torch.maximum(change, step)
            d[active], u[active] = sd, su
            if rnd >= redetect - 1:
                active = active[~(change < CONVERGED)]
            if active.numel() == 0:
                break
        return d, u

    # ------------------------------------------------------------------ angle, Doppler, pairing
    def _angle_doppler(self, ctx: _Context, coeffs: torch.Tensor,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """AoA and Doppler of every atom from its coefficients C[k, t] (``coeffs`` [R, Ts, J, Mr]): zero-padded 2-D DFT
        peak (|u| <= 1, |f| <= the prior Doppler bound + a cell) and a 2-D zoom. Returns (u_rx, f, amplitude) [R, J]."""
        grid = ctx.grid
        R, ts, J, mr = coeffs.shape
        dev = coeffs.device
        c = coeffs.permute(0, 2, 3, 1).reshape(R * J, mr, ts)
        lu, lt = self.oversample * mr, self.oversample * ts
        spec = torch.fft.fft(torch.fft.ifft(c, n=lu, dim=1) * lu, n=lt, dim=2)
        spec = torch.fft.fftshift(spec, dim=(1, 2))
        f64 = dict(dtype=torch.float64, device=dev)
        ug = torch.fft.fftshift(torch.fft.fftfreq(lu, **f64)) / grid.spacing
        fg = torch.fft.fftshift(torch.fft.fftfreq(lt, grid.symbol_stride * grid.dT, **f64))
        f_max = min(grid.max_doppler + grid.doppler_res, grid.unambiguous_doppler)
        mask = (ug.abs() <= 1.0)[:, None] & (fg.abs() <= f_max)[None, :]
        power = torch.where(mask, _abs2(spec).to(torch.float64), torch.full_like(spec.real, -math.inf,
                                                                                 dtype=torch.float64))
        flat = power.reshape(R * J, -1).argmax(1)
        k = torch.arange(mr, **f64)

        def kern_u(cand: torch.Tensor) -> torch.Tensor:  # conj(a_r(u)) * sqrt(Mr)
            return torch.polar(torch.ones_like(cand[..., None] * k), 2 * math.pi * grid.spacing * cand[..., None] * k
                               ).to(c.dtype)

        def kern_f(cand: torch.Tensor) -> torch.Tensor:  # exp(-j 2 pi t f dT)
            return doppler_phase(grid, cand).conj().to(c.dtype)

        uu, ff, val = zoom_newton_maximize_2d(c, kern_u, kern_f, ug[flat // lt], fg[flat % lt],
                                              1.0 / (lu * grid.spacing), grid.doppler_res / self.oversample)
        if self.periodic:
            uu = torch.remainder(uu + 1.0, 2.0) - 1.0
        amp = val / (mr * ts)
        return uu.clamp(-1.0, 1.0).reshape(R, J), ff.reshape(R, J), amp.reshape(R, J)

    def _pair(self, ctx: _Context, m: torch.Tensor, n: torch.Tensor, d: torch.Tensor, u_rx: torch.Tensor,
              f: torch.Tensor, amp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Group every row's N Q paths into Q targets, one path per transmit AP (module docstring, step 3).

        Paths of transmit AP n (in atom order) are matched to AP 0's by the assignment minimising the summed cost
        ``||g_a - g_c|| / range_res + |u_a - u_c| / u_res`` (``g`` the AoA ray x own bistatic ellipse). Returns the
        AoA [R, Q], ranges [R, Q, N] and Dopplers [R, Q, N] of the groups, in AP 0's path order.
        """
        cfg, grid, lay = self.cfg, ctx.grid, ctx.layout
        R, J = n.shape
        N, Q = cfg.n_tx, cfg.n_targets
        order = (n * J + torch.arange(J, device=n.device)).argsort(1)
        by_tx = [t.gather(1, order).reshape(R, N, Q) for t in (d, u_rx, f, amp)]
        d_, u_, f_, a_ = by_tx
        rx, axis, side = lay.rx[m][:, None, None], lay.rx_axes[m][:, None, None], lay.rx_side[m][:, None, None]
        e = aoa_direction(u_, axis, side)  # [R, N, Q, 2]
        loc = rx + ray_distance(d_, rx, e, lay.tx[None, :, None, :])[..., None] * e
        perms = torch.tensor(list(itertools.permutations(range(Q))), device=n.device)  # [F, Q]
        idx = [torch.arange(Q, device=n.device).expand(R, Q)]
        for k in range(1, N):
            cost = (torch.linalg.vector_norm(loc[:, 0, :, None] - loc[:, k, None, :], dim=-1) / grid.range_res
                    + (u_[:, 0, :, None] - u_[:, k, None, :]).abs() / grid.u_res)  # [R, Q, Q]
            total = cost[:, torch.arange(Q, device=n.device), perms].sum(-1)  # [R, F]
            idx.append(perms[total.argmin(1)])
        idx = torch.stack(idx, 2)  # [R, Q, N]: target q takes path idx[r, q, k] of transmit AP k
        group = [t.transpose(1, 2).gather(1, idx) for t in (d_, u_, f_, a_)]  # [R, Q, N] each
        gd, gu, gf, ga = group
        w = _abs2(ga).to(torch.float64)
        ref = gu.gather(2, w.argmax(2, keepdim=True))
        du = wrap_cosine(gu - ref, grid.spacing)
        ok = du.abs() < grid.u_res
        aoa = (ref[..., 0] + (w * du * ok).sum(2) / (w * ok).sum(2)).clamp(-1.0, 1.0)
        return aoa, gd, gf


register_without_checkpoint("cs", CsEstimator, "CS baseline")
