"""MUSIC-based fully distributed sensing (paper Section V-A, extension of [11] to cell-free ISAC).

Each receive AP m processes only its own echoes Y_m [Mr, Ns, Ts] and the known transmit signals X (the receive AP
is assumed to know X, i.e. the data symbols and precoders, for this scheme; see :mod:`.signal_processing`):

1. **AoA by MUSIC** on the spatial covariance ``R = Y_m Y_m^H / (Ns Ts)`` of the cells of Y_m, as [11] (the random
   data make the targets' echoes uncorrelated over the cells, so every cell is a snapshot), with forward-backward
   averaging. Option ``covariance="gated"`` uses instead the range-Doppler-compressed snapshots inside the feasible
   gates (:meth:`MusicEstimator.gated_covariance`); at the ``quick`` preset it did not locate AoAs better than the
   raw covariance (benchmarks/results/classical.md), so it is not the default. The signal subspace dimension is Q,
   or estimated by MDL / AIC (Wax-Kailath) with ``model_order="mdl" | "aic"``. Peaks of the pseudo-spectrum are
   found on a fine direction-cosine grid (``scipy.signal.find_peaks``; the grid is circular for half-wavelength
   spacing, so endfire targets are handled) and refined by zooming on the exact pseudo-spectrum. When fewer than Q
   peaks exist (targets unresolved in angle), the strongest peaks are reused: such a beam then carries several
   targets, which the range / Doppler stage separates. MUSIC needs the per-antenna SNR of a cell to exceed roughly
   ``2 sqrt(Mr / (Ns Ts)) / Mr`` (signal eigenvalue above the spread of the noise eigenvalues): with the paper's
   Table I powers this is the scheme's threshold. It is reached 9 dB later at the ``quick`` preset (1024 cells)
   than at ``paper`` (65536 cells), and the coherent range-Doppler gain is 18 dB lower there.
2. **Receive beams**: least-squares (zero-forcing) spatial separation onto the distinct MUSIC steering vectors,
   ``r = A^+ y`` per cell.
3. **Range and Doppler per transmit AP** on every beam. Symbol removal is geometry-constrained matched filtering:
   every bistatic range fixes the point of the AoA ray on the ellipse and hence the AoD whose transmit beam the
   target saw (:func:`.signal_processing.ray_delay_doppler_map`), followed by a zero-padded 2-D DFT over subcarriers
   and symbols. The echoes of the N transmit APs overlap in every beam (and their data are correlated through the
   common user streams), so detection is per target: a point of the ray implies all N bistatic ranges, and the
   point maximising the energy its N paths explain is taken (:meth:`MusicEstimator.target_candidates`). The best
   candidates are refined continuously (zoom on the exact DTFT with the AoD following the range,
   :func:`.signal_processing.refine_delay_doppler`), polished jointly by alternating projection (each path's
   least-squares fit with the others projected out) with re-detection of paths captured by another path's
   cross-terms, and the candidate leaving the smallest residual wins; several targets in one beam are found by
   cancelling the previous ones (CLEAN). Near endfire both rays of the half-wavelength ULA's ambiguity are tried.
4. **CPU fusion** (:func:`.signal_processing.fuse_messages`): AoA line x bistatic ellipses per AP, Hungarian
   association across APs, robust least squares over all AoAs / ranges, velocity from all N*M bistatic Dopplers.

Fronthaul: ``fronthaul_bits_per_ap = 96 Q`` as counted by the paper (Section III-D: angle, range and radial
velocity per target, 32 bits each). The message this implementation actually uses carries the AoA and, per transmit
AP, one bistatic range and one bistatic Doppler: ``message_bits_per_ap = 32 (1 + 2N) Q`` (160 Q for N = 2).

Two targets in one resolution cell: when MUSIC resolves one AoA, its beam serves both targets and the range-Doppler
stage looks for two paths per transmit AP in it; when they also share the range-Doppler cell, both estimates land
near the cell (never NaN). ``Q >= Mr`` raises ``ValueError`` (MUSIC needs a noise subspace).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.signal import find_peaks

from ...config import SPEED_OF_LIGHT, SystemConfig
from .. import Estimate, register_without_checkpoint
from .fusion import ApMessages, Layout, fuse_messages
from .signal_processing import (
    Comb,
    Path,
    aoa_direction,
    direction_cosine,
    endfire_alias,
    path_signal,
    ray_delay_doppler_map,
    ray_distance,
    ray_exit,
    refine_delay_doppler,
    steering,
    tx_beam,
    validate_inputs,
    zoom_maximize,
)

__all__ = ["MusicEstimator", "estimate_model_order", "music_doa"]

MODEL_ORDERS = ("given", "mdl", "aic")


def estimate_model_order(eigenvalues: np.ndarray, n_snapshots: int, criterion: str) -> int:
    """Number of sources by MDL or AIC (Wax & Kailath 1985) from covariance eigenvalues [Mr] (any order).

    ``MDL(k) = -S (Mr - k) log(g_k / a_k) + k (2 Mr - k) log(S) / 2`` and
    ``AIC(k) = -2 S (Mr - k) log(g_k / a_k) + 2 k (2 Mr - k)``, with ``g_k`` / ``a_k`` the geometric / arithmetic
    means of the ``Mr - k`` smallest eigenvalues and S snapshots; returns the minimiser over ``k = 0 .. Mr - 1``.
    """
    if criterion not in ("mdl", "aic"):
        raise ValueError(f"criterion must be 'mdl' or 'aic', got {criterion!r}")
    lam = np.sort(np.maximum(np.real(eigenvalues), 1e-300))[::-1]
    mr = lam.size
    scores = []
    for k in range(mr):
        tail = lam[k:]
        log_ratio = np.mean(np.log(tail)) - np.log(np.mean(tail))
        penalty = k * (2 * mr - k)
        if criterion == "mdl":
            scores.append(-n_snapshots * (mr - k) * log_ratio + 0.5 * penalty * math.log(n_snapshots))
        else:
            scores.append(-2 * n_snapshots * (mr - k) * log_ratio + 2 * penalty)
    return int(np.argmin(scores))


def music_doa(cov: np.ndarray, n_sources: int, *, spacing: float, n_signal: int | None = None,
              grid_size: int | None = None) -> np.ndarray:
    """MUSIC direction cosines [n_sources] from a spatial covariance [Mr, Mr] (Eq. (2) steering vectors).

    The noise subspace is spanned by the ``Mr - n_signal`` smallest eigenvectors (``n_signal`` defaults to
    ``n_sources``). The pseudo-spectrum ``1 / ||E_n^H a(u)||^2`` is evaluated on ``grid_size`` direction cosines,
    its ``n_sources`` highest local maxima (``scipy.signal.find_peaks``; circular grid for half-wavelength spacing)
    are refined by zooming, and missing peaks are filled by repeating the strongest ones. Sorted by peak height.
    """
    mr = cov.shape[0]
    k = n_sources if n_signal is None else n_signal
    k = int(min(max(k, 1), mr - 1))
    _, vecs = np.linalg.eigh(cov)
    en = vecs[:, : mr - k]  # noise subspace (ascending eigenvalues)
    periodic = spacing >= 0.5 - 1e-12
    g = grid_size or max(512, 64 * mr)
    u = np.linspace(-1.0, 1.0, g, endpoint=not periodic)

    def null(uc: np.ndarray) -> np.ndarray:
        a = steering(uc, mr, spacing)
        return np.sum(np.abs(a.conj() @ en) ** 2, axis=-1)

    spec = -np.log(np.maximum(null(u), 1e-300))
    if periodic:
        ext = np.concatenate([spec[-1:], spec, spec[:1]])
    else:
        ext = np.concatenate([[-np.inf], spec, [-np.inf]])
    peaks, _ = find_peaks(ext)
    peaks = peaks - 1
    peaks = peaks[(peaks >= 0) & (peaks < g)]
    if peaks.size == 0:
        peaks = np.array([int(np.argmax(spec))])
    order = peaks[np.argsort(spec[peaks])[::-1]][:n_sources]
    sel = np.resize(order, n_sources)  # fewer peaks than sources: reuse the strongest
    step = u[1] - u[0]
    lo, hi = (None, None) if periodic else (-1.0, 1.0)
    ref, _ = zoom_maximize(lambda c: -null(c), u[sel], step, lower=lo, upper=hi)
    if periodic:
        ref = (ref + 1.0) % 2.0 - 1.0
    return ref


class MusicEstimator:
    """MUSIC-based fully distributed sensing (module docstring). ``est(y, x) -> Estimate``.

    Options (keyword-only): ``model_order`` ``"given"`` (Q, default) / ``"mdl"`` / ``"aic"``; ``oversample``
    zero-padding factor of the range / Doppler DFTs (4); ``refine_rounds`` maximum cyclic refinement rounds (8,
    stopped early once no path moves by 1e-5 cell); ``n_candidates`` target candidates tried at every detection
    step (refined and jointly polished; the one leaving the smallest least-squares residual wins) (3);
    ``angle_grid`` MUSIC grid size (default ``max(512, 64 Mr)``); ``forward_backward`` forward-backward averaging
    of the covariance (True; valid for the ULA, it doubles the effective snapshots); ``covariance`` ``"raw"``
    (default: the cells of Y_m, as [11]) or ``"gated"`` (snapshots after range-Doppler compression, inside the
    feasible gates, :meth:`gated_covariance`).
    """

    name = "music"

    def __init__(self, cfg: SystemConfig, *, model_order: str = "given", oversample: int = 4, refine_rounds: int = 8,
                 n_candidates: int = 3, angle_grid: int | None = None, forward_backward: bool = True,
                 covariance: str = "raw") -> None:
        if cfg.n_targets >= cfg.n_rx_antennas:
            raise ValueError(
                f"MUSIC resolves at most Mr - 1 = {cfg.n_rx_antennas - 1} targets per receive AP, got n_targets="
                f"{cfg.n_targets}")
        if covariance not in ("gated", "raw"):
            raise ValueError(f"covariance must be 'gated' or 'raw', got {covariance!r}")
        if model_order not in MODEL_ORDERS:
            raise ValueError(f"model_order must be one of {MODEL_ORDERS}, got {model_order!r}")
        for name, v, low in (("oversample", oversample, 1), ("refine_rounds", refine_rounds, 0),
                             ("n_candidates", n_candidates, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        self.cfg = cfg
        self.model_order = model_order
        self.oversample = oversample
        self.refine_rounds = refine_rounds
        self.n_candidates = n_candidates
        self.angle_grid = angle_grid
        self.forward_backward = forward_backward
        self.covariance = covariance
        self.fronthaul_bits_per_ap = 96 * cfg.n_targets
        self.message_bits_per_ap = 32 * (1 + 2 * cfg.n_tx) * cfg.n_targets
        self.comb = Comb.from_config(cfg)
        self.layout = Layout(cfg)
        res = cfg.resolution()
        self.f_max = min(res["max_doppler_hz"] + self.comb.doppler_res, res["unambiguous_doppler_hz"])

    # ------------------------------------------------------------------ public
    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> Estimate:
        """Positions / velocities [B, Q, 2] float64 from y [B, M, Mr, Ns, Ts] and x [B, N, Nt, Ns, Ts]."""
        yn, xn = validate_inputs(self.cfg, y, x)
        return fuse_messages(self.cfg, self.messages(yn, xn))

    def messages(self, y: np.ndarray, x: np.ndarray) -> ApMessages:
        """The receive APs' fronthaul messages for numpy inputs (complex128)."""
        B, M, Q, N = y.shape[0], self.cfg.n_rx, self.cfg.n_targets, self.cfg.n_tx
        aoa = np.empty((B, M, Q))
        ranges = np.empty((B, M, Q, N))
        dopplers = np.empty((B, M, Q, N))
        for b in range(B):
            for m in range(M):
                aoa[b, m], ranges[b, m], dopplers[b, m] = self.process_ap(y[b, m], x[b], m)
        return ApMessages(aoa, ranges, dopplers)

    # ------------------------------------------------------------------ receive AP
    def process_ap(self, ym: np.ndarray, x: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One receive AP: AoA [Q], bistatic ranges [Q, N] and Dopplers [Q, N] from Y_m [Mr, Ns, Ts], X [N, Nt, ...]."""
        cfg, Q = self.cfg, self.cfg.n_targets
        mr = ym.shape[0]
        snap = ym.reshape(mr, -1)
        if self.covariance == "gated":
            cov, n_snap = self.gated_covariance(ym, x, m)
        else:
            cov, n_snap = snap @ snap.conj().T / snap.shape[1], snap.shape[1]
        if self.forward_backward:  # J conj(R) J: the ULA's steering vectors are conjugate-centro-symmetric
            cov = 0.5 * (cov + cov[::-1, ::-1].conj())
        n_signal = Q
        if self.model_order != "given":
            n_signal = estimate_model_order(np.linalg.eigvalsh(cov), n_snap, self.model_order)
        us = music_doa(cov, Q, spacing=cfg.antenna_spacing, n_signal=n_signal, grid_size=self.angle_grid)
        uniq, counts = [], []
        for u in us:
            for j, v in enumerate(uniq):
                if abs(u - v) < 1e-9:
                    counts[j] += 1
                    break
            else:
                uniq.append(float(u))
                counts.append(1)
        a = steering(np.array(uniq), mr, cfg.antenna_spacing).T  # [Mr, U]
        beams = (np.linalg.pinv(a) @ snap).reshape(len(uniq), *ym.shape[1:])  # LS spatial separation
        out_u, out_d, out_f = [], [], []
        for j, (u, c) in enumerate(zip(uniq, counts, strict=True)):
            for group in self.beam_targets(beams[j], x, m, u, c):
                out_u.append(group[0].u_rx)
                out_d.append([p.d for p in group])
                out_f.append([p.f for p in group])
        return np.array(out_u), np.array(out_d), np.array(out_f)

    def gated_covariance(self, ym: np.ndarray, x: np.ndarray, m: int) -> tuple[np.ndarray, int]:
        """Spatial covariance [Mr, Mr] of the range-Doppler-compressed snapshots inside the feasible gates.

        For every transmit AP n and transmit antenna l, each receive antenna's data is matched-filtered with
        ``conj(x_{n,l})`` and transformed by an (unpadded) 2-D DFT over subcarriers and symbols onto the bistatic
        range / Doppler grid; only the bins a target in the area can produce (bistatic range between the Tx-Rx
        baseline and the farthest corner, |Doppler| up to the largest possible) are kept as snapshots: the targets'
        energy is kept while the noise of the impossible bins is discarded; the covariance keeps the Q-source
        structure. The snapshots of different transmit antennas are strongly correlated (the precoded signals span
        only K user streams), which offsets most of the gain at the ``quick`` preset. Returns (R, snapshots).
        """
        cfg, comb, lay = self.cfg, self.comb, self.layout
        mr, ns, ts = ym.shape
        d = np.arange(ns) * SPEED_OF_LIGHT / (ns * comb.subcarrier_stride * comb.df)
        f = np.fft.fftfreq(ts, comb.symbol_stride * comb.dT)
        (x0, x1), (y0, y1) = cfg.area
        corners = np.array([[x0, y0], [x0, y1], [x1, y0], [x1, y1]])
        cov = np.zeros((mr, mr), dtype=np.complex128)
        count = 0
        fk = np.abs(f) <= self.f_max + comb.doppler_res
        for n in range(cfg.n_tx):
            lo = np.linalg.norm(lay.rx[m] - lay.tx[n]) - comb.range_res
            hi = (np.linalg.norm(corners - lay.tx[n], axis=1) + np.linalg.norm(corners - lay.rx[m], axis=1)).max()
            dk = (d >= lo) & (d <= hi + comb.range_res)
            for xl in x[n]:  # [Ns, Ts] per transmit antenna
                z = np.fft.ifft(ym * np.conj(xl), axis=1)[:, dk]
                z = np.fft.fft(z, axis=2)[:, :, fk].reshape(mr, -1)
                cov += z @ z.conj().T
                count += z.shape[1]
        return cov / max(count, 1), count

    def beam_targets(self, r: np.ndarray, x: np.ndarray, m: int, u: float, count: int) -> list[list[Path]]:
        """``count`` targets of one receive beam r [Ns, Ts]: per target one refined path per transmit AP.

        Detection is per target (CLEAN): the targets' candidate points on the AoA ray maximise the energy the N
        paths they imply explain together (:meth:`target_candidates`); the ``n_candidates`` best are refined and
        polished jointly with the targets already found, and the one leaving the smallest least-squares residual is
        kept and cancelled before the next detection. All paths are then refined cyclically (alternating
        projection, up to ``refine_rounds``).
        """
        paths: list[Path] = []
        residual = r
        for _ in range(count):
            best = (np.inf, None)
            for _, cand in self.target_candidates(residual, x, m, u, self.n_candidates):
                trial = list(paths)
                for p in cand:
                    p, _ = self._refine(r, x[p.n], m, p, self._signatures(trial, x))
                    trial.append(p)
                trial = self._polish(r, x, m, trial, rounds=2, redetect=1)
                err = float(np.linalg.norm(r - self._reconstruct(r, trial, x)))
                if err < best[0]:
                    best = (err, trial)
            paths = best[1]
            residual = r - self._reconstruct(r, paths, x)
        paths = self._polish(r, x, m, paths, rounds=self.refine_rounds, redetect=2)
        N = self.cfg.n_tx
        return [paths[k * N:(k + 1) * N] for k in range(count)]

    def target_candidates(self, r: np.ndarray, x: np.ndarray, m: int, u: float, top: int,
                          ) -> list[tuple[float, list[Path]]]:
        """Target-level detection on one beam output r [Ns, Ts]: the ``top`` best points of the AoA ray.

        For every transmit AP n the geometry-constrained range-Doppler map (:func:`ray_delay_doppler_map`, the
        energy a single path of range d and Doppler f explains) is computed; a point at distance rho on the ray
        implies the bistatic ranges d_n(rho) of all N paths, so the target statistic is
        ``T(rho) = sum_n max_f P_n(d_n(rho), f)`` (maps interpolated linearly in range; the Dopplers are free:
        the velocity is unknown). Local maxima of T (``scipy.signal.find_peaks``) give the candidates, each with
        its N initial paths. Near endfire the alias ray is searched as well. Best first.
        """
        lay, comb, N = self.layout, self.comb, self.cfg.n_tx
        rays = [u]
        alias = endfire_alias(u, comb.spacing, comb.u_res / 2)
        if alias is not None:
            rays.append(alias)
        found: list[tuple[float, list[Path]]] = []
        for uc in rays:
            e = aoa_direction(np.float64(uc), lay.rx_axes[m], lay.rx_side[m])
            rho_max = ray_exit(lay.rx[m], e, lay.lower, lay.upper) + comb.range_res / 2
            rho = np.arange(0.0, rho_max + 1e-9, comb.range_res / (2 * self.oversample))
            pts = lay.rx[m] + rho[:, None] * e
            total = np.zeros(rho.size)
            per_n = []
            for n in range(N):
                d_n = rho + np.linalg.norm(pts - lay.tx[n], axis=1)
                pmap, d, f, _ = ray_delay_doppler_map(r, x[n], comb, rx=lay.rx[m], e=e, tx=lay.tx[n],
                                                      tx_axis=lay.tx_axes[n], d_max=d_n.max() + comb.range_res,
                                                      oversample=self.oversample)
                pmap = np.where((np.abs(f) <= self.f_max)[None, :], pmap, 0.0)
                pos = np.clip((d_n - d[0]) / (d[1] - d[0]), 0, d.size - 1 - 1e-9)
                k0 = np.floor(pos).astype(int)
                k1 = np.minimum(k0 + 1, d.size - 1)
                w = (pos - k0)[:, None]
                prof = (1 - w) * pmap[k0] + w * pmap[k1]  # [R, Lt]
                jbest = prof.argmax(1)
                total += prof[np.arange(rho.size), jbest]
                per_n.append((d_n, f[jbest], direction_cosine(pts, lay.tx[n], lay.tx_axes[n])))
            ext = np.concatenate([[-np.inf], total, [-np.inf]])
            peaks = find_peaks(ext)[0] - 1
            for i in peaks[np.argsort(total[peaks])[::-1][:top]]:
                found.append((float(total[i]), [Path(n=n, u_rx=float(uc), u_tx=float(per_n[n][2][i]),
                                                     d=float(per_n[n][0][i]), f=float(per_n[n][1][i]))
                                                for n in range(N)]))
        found.sort(key=lambda c: -c[0])
        return found[:top]

    def _u_tx(self, m: int, e: np.ndarray, n: int, d: float) -> float:
        lay = self.layout
        rho = ray_distance(np.float64(d), lay.rx[m], e, lay.tx[n])
        return float(direction_cosine(lay.rx[m] + rho * e, lay.tx[n], lay.tx_axes[n]))

    def _refine(self, r: np.ndarray, x_n: np.ndarray, m: int, path: Path, others: list[np.ndarray],
                ) -> tuple[Path, float]:
        """Continuous (d, f) refinement of one path on beam output r, the other paths' signatures ``others``
        projected out (alternating projection, :func:`.signal_processing.refine_delay_doppler`). The AoD of every
        candidate range follows from the AoA ray (it varies fast with the range when the ray passes near the
        transmit AP). Returns the path and the energy it explains (the concentrated least-squares objective)."""
        comb, lay = self.comb, self.layout
        e = aoa_direction(np.float64(path.u_rx), lay.rx_axes[m], lay.rx_side[m])

        def beam(cd: np.ndarray) -> np.ndarray:  # [1, G] ranges -> [1, G, Ns, Ts] symbols
            rho = ray_distance(cd[0], lay.rx[m], e[None, :], lay.tx[path.n])
            u_tx = direction_cosine(lay.rx[m] + rho[:, None] * e, lay.tx[path.n], lay.tx_axes[path.n])
            return tx_beam(x_n, u_tx, comb.spacing)[None]

        extra = None
        if others:
            o = np.stack(others)
            extra = (o[None], np.einsum("kit,lit->kl", o.conj(), o)[None], np.einsum("kit,it->k", o.conj(), r)[None])
        # Zoom half-widths: one FFT bin (a grid peak lies within half a bin of the optimum).
        dd, ff, aa, oo = refine_delay_doppler(r[None], beam, comb, np.array([path.d]), np.array([path.f]),
                                              step_d=comb.range_res / self.oversample,
                                              step_f=comb.doppler_res / self.oversample, others=extra)
        d = float(dd[0])
        return Path(n=path.n, u_rx=path.u_rx, u_tx=self._u_tx(m, e, path.n, d), d=d, f=float(ff[0]),
                    amp=complex(aa[0])), float(oo[0])

    def _polish(self, r: np.ndarray, x: np.ndarray, m: int, paths: list[Path], rounds: int,
                redetect: int = 0) -> list[Path]:
        """Cyclic alternating-projection refinement of all paths (each with the others projected out).

        In the first ``redetect`` rounds every path is also re-detected: the peak of its transmit AP's map on the
        data with the other paths cancelled is refined the same way and replaces the path when it explains more
        energy. This recovers a weak path whose first estimate was captured by the cross-terms of a strong path
        of the other transmit AP (their data symbols are correlated through the common user streams).
        """
        comb = self.comb
        paths = list(paths)
        for rnd in range(rounds if len(paths) > 1 else 0):
            change = 0.0
            for j in range(len(paths)):
                old = paths[j]
                others = paths[:j] + paths[j + 1:]
                sigs = self._signatures(others, x)
                new, obj = self._refine(r, x[old.n], m, old, sigs)
                if rnd < redetect:
                    cand = self._path_peak(r - self._reconstruct(r, others, x), x[old.n], m, old)
                    cand, obj_c = self._refine(r, x[old.n], m, cand, sigs)
                    if obj_c > obj * (1.0 + 1e-6):
                        new, obj = cand, obj_c
                paths[j] = new
                change = max(change, abs(new.d - old.d) / comb.range_res, abs(new.f - old.f) / comb.doppler_res)
            if change < 1e-5 and rnd >= redetect - 1:
                break
        return paths

    def _path_peak(self, r: np.ndarray, x_n: np.ndarray, m: int, path: Path) -> Path:
        """Grid peak of the constrained range-Doppler map of transmit AP ``path.n`` on the path's AoA ray."""
        lay, comb = self.layout, self.comb
        e = aoa_direction(np.float64(path.u_rx), lay.rx_axes[m], lay.rx_side[m])
        rho = ray_exit(lay.rx[m], e, lay.lower, lay.upper)
        d_lo = float(np.linalg.norm(lay.rx[m] - lay.tx[path.n]))
        d_hi = rho + float(np.linalg.norm(lay.rx[m] + rho * e - lay.tx[path.n]))
        pmap, d, f, u_tx = ray_delay_doppler_map(r, x_n, comb, rx=lay.rx[m], e=e, tx=lay.tx[path.n],
                                                 tx_axis=lay.tx_axes[path.n], d_max=d_hi + comb.range_res / 2,
                                                 oversample=self.oversample)
        pmap = np.where((d >= d_lo)[:, None] & (np.abs(f) <= self.f_max)[None, :], pmap, -np.inf)
        k, jf = np.unravel_index(np.argmax(pmap), pmap.shape)
        return Path(n=path.n, u_rx=path.u_rx, u_tx=float(u_tx[k]), d=float(d[k]), f=float(f[jf]))

    def _signatures(self, paths: list[Path], x: np.ndarray) -> list[np.ndarray]:
        """Unit-amplitude signatures [Ns, Ts] of paths on a beam output."""
        return [path_signal(self.comb, Path(p.n, p.u_rx, p.u_tx, p.d, p.f, 1.0), x[p.n]) for p in paths]

    def _reconstruct(self, r: np.ndarray, paths: list[Path], x: np.ndarray) -> np.ndarray:
        """Joint least-squares fit of the paths' amplitudes to r; returns the fitted signal (amplitudes updated)."""
        if not paths:
            return np.zeros_like(r)
        sigs = np.stack([s.ravel() for s in self._signatures(paths, x)], axis=1)
        amps = np.linalg.lstsq(sigs, r.ravel(), rcond=None)[0]
        for p, a in zip(paths, amps, strict=True):
            p.amp = complex(a)
        return (sigs @ amps).reshape(r.shape)


register_without_checkpoint("music-reference", MusicEstimator, "MUSIC baseline")
register_without_checkpoint("music-gated-reference", MusicEstimator, "MUSIC baseline", covariance="gated")
