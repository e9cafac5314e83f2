"""CS-based fully distributed sensing (paper Section V-A, after [25]).

Each receive AP m processes only its own echoes Y_m [Mr, Ns, Ts] and the known transmit signals X (the receive AP
is assumed to know X, i.e. the data symbols and precoders, for this scheme; see :mod:`.signal_processing`):

1. **Delays by 1-D compressive sensing**: simultaneous orthogonal matching pursuit (multiple measurement vectors)
   over an oversampled bistatic-range dictionary. For transmit AP n, range ``d`` and transmit direction cosine
   ``u_tx`` the atom on symbol t is the subcarrier vector ``phi_t[i] = exp(-j 2 pi i d df / c) a_t^H(u_tx) x_{i,n}[t]``
   (Eq. 6 with the data kept in the atom: this is how the known symbols are removed, and it separates the
   simultaneously transmitting APs, whose atoms differ); its coefficients are free per receive antenna and symbol
   (they carry the AoA and the Doppler), so the sparse support is shared by the Mr * Ts measurement vectors. The
   AoD is a nuisance parameter of the atom, searched on an oversampled transmit beam grid. Each OMP step ranks the
   grid atoms by their normalised correlation energy ``sum_{k,t} |phi_t^H r_{k,t}|^2 / ||phi_t||^2`` with the
   residual (zero-padded FFTs over subcarriers and transmit antennas), refines the ``n_candidates`` best ones
   continuously in range and AoD with the atoms already chosen projected out (Newtonised-OMP-like local zoom on the
   concentrated least-squares objective, so that an off-grid path leaves no residual that would be picked again),
   and keeps the one leaving the smallest least-squares residual (per-symbol LS fit of all atoms). Q atoms are taken
   per transmit AP; cyclic refinement rounds follow, the first two re-detecting every atom on the data with the
   others removed. The detection is non-coherent over antennas and symbols (the Doppler and AoA are not yet
   known): this is the scheme's SNR limit (benchmarks/results/classical.md).
2. **Angle and radial velocity per detected path** from the least-squares coefficients ``C[k, t] ~ alpha
   a_r(u_rx)[k] exp(+j 2 pi t f_D dT)``: a zero-padded 2-D DFT over receive antennas and symbols and a continuous
   zoom on its peak.
3. The paths of the N transmit APs are grouped into targets (Hungarian on the location each implies and on the AoA,
   :func:`.signal_processing.pair_paths`); the AP sends AoA, N bistatic ranges and N Dopplers per target.
4. **CPU fusion** (:func:`.signal_processing.fuse_messages`), the same as the MUSIC scheme.

Fronthaul: ``fronthaul_bits_per_ap = 96 Q`` as counted by the paper; ``message_bits_per_ap = 32 (1 + 2N) Q`` is what
the message above carries. ``N Q > Ns / 2`` raises ``ValueError`` (too few subcarriers for the sparse fit). Two
targets in one range cell of a transmit AP are separated by their AoD (atoms differ) and by the LS fit; when they
also share the AoD beam, OMP may return one path twice shifted by a fraction of a cell: both estimates then land near
the pair (never NaN).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import maximum_filter

from ...config import SPEED_OF_LIGHT, SystemConfig
from .. import Estimate, register_without_checkpoint
from .fusion import ApMessages, Layout, fuse_messages
from .signal_processing import (
    Comb,
    Path,
    pair_paths,
    steering,
    tx_beam,
    validate_inputs,
    wrap_cosine,
    zoom_maximize,
    zoom_maximize_2d,
)

__all__ = ["CsEstimator"]


class CsEstimator:
    """CS-based fully distributed sensing (module docstring). ``est(y, x) -> Estimate``.

    Options (keyword-only): ``delay_oversample`` / ``aod_oversample`` dictionary oversampling of the range grid
    (vs. ``c / B``) and of the transmit beam grid (vs. ``Nt``) (4, 4); ``oversample`` zero padding of the angle /
    Doppler DFT (4); ``refine_rounds`` maximum cyclic refinement rounds after OMP (8, stopped early once no atom
    moves by 1e-5 cell); ``n_candidates`` grid atoms tried at every OMP step (refined and polished; the one leaving
    the smallest least-squares residual wins) (3); ``symbol_chunk`` symbols per block in the correlation step.
    """

    name = "cs"

    def __init__(self, cfg: SystemConfig, *, delay_oversample: int = 4, aod_oversample: int = 4, oversample: int = 4,
                 refine_rounds: int = 8, n_candidates: int = 3, symbol_chunk: int = 32) -> None:
        if cfg.n_tx * cfg.n_targets > cfg.n_subcarriers // 2:
            raise ValueError(
                f"CS needs N Q <= Ns / 2 atoms per symbol: N={cfg.n_tx}, Q={cfg.n_targets}, Ns={cfg.n_subcarriers}")
        for name, v in (("delay_oversample", delay_oversample), ("aod_oversample", aod_oversample),
                        ("oversample", oversample), ("symbol_chunk", symbol_chunk)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(refine_rounds, int) or refine_rounds < 0:
            raise ValueError(f"refine_rounds must be a non-negative integer, got {refine_rounds!r}")
        self.cfg = cfg
        self.delay_oversample = delay_oversample
        self.aod_oversample = aod_oversample
        self.oversample = oversample
        self.refine_rounds = refine_rounds
        self.n_candidates = n_candidates
        self.symbol_chunk = symbol_chunk
        self.fronthaul_bits_per_ap = 96 * cfg.n_targets
        self.message_bits_per_ap = 32 * (1 + 2 * cfg.n_tx) * cfg.n_targets
        self.comb = Comb.from_config(cfg)
        self.layout = Layout(cfg)
        res = cfg.resolution()
        self.f_max = min(res["max_doppler_hz"] + self.comb.doppler_res, res["unambiguous_doppler_hz"])
        # Dictionary grids: bistatic ranges per (n, m) inside the feasible interval, transmit direction cosines.
        lf = delay_oversample * cfg.n_subcarriers
        self.lf = lf
        self.d_grid = np.arange(lf) * SPEED_OF_LIGHT / (lf * cfg.subcarrier_stride * cfg.subcarrier_spacing)
        (x0, x1), (y0, y1) = cfg.area
        corners = np.array([[x0, y0], [x0, y1], [x1, y0], [x1, y1]])
        lay = self.layout
        self.d_window = np.empty((cfg.n_tx, cfg.n_rx, 2))
        for n in range(cfg.n_tx):
            for m in range(cfg.n_rx):
                hi = (np.linalg.norm(corners - lay.tx[n], axis=1) + np.linalg.norm(corners - lay.rx[m], axis=1)).max()
                self.d_window[n, m] = (np.linalg.norm(lay.tx[n] - lay.rx[m]) - self.comb.range_res,
                                       hi + self.comb.range_res)
        la = aod_oversample * cfg.n_tx_antennas
        self.u_tx_grid = np.fft.fftfreq(la) / cfg.antenna_spacing  # spatial-FFT bins over transmit antennas
        self.u_tx_valid = np.abs(self.u_tx_grid) <= 1.0

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
        cfg, comb = self.cfg, self.comb
        N, Q = cfg.n_tx, cfg.n_targets
        rxx = [np.einsum("lit,kit->tlk", x[n], x[n].conj()) for n in range(N)]  # sum_i x x^H per symbol
        atoms: list[Path] = []
        quota = [Q] * N
        residual = ym
        for _ in range(N * Q):
            best = (np.inf, None)
            for cand in self._pick(residual, x, m, quota, top=self.n_candidates):
                new, _ = self._refine_atom(ym, x, rxx[cand.n], cand, atoms, first=True)
                trial = self._polish(ym, x, m, rxx, atoms + [new], rounds=1)
                err = float(np.linalg.norm(ym - self._least_squares(ym, x, trial)[1]))
                if err < best[0]:
                    best = (err, trial)
            atoms = best[1]
            quota[atoms[-1].n] -= 1
            residual = ym - self._least_squares(ym, x, atoms)[1]
        atoms = self._polish(ym, x, m, rxx, atoms, rounds=self.refine_rounds, redetect=2)
        coeffs, _ = self._least_squares(ym, x, atoms)
        self._angle_doppler(atoms, coeffs)
        groups = pair_paths([[p for p in atoms if p.n == n] for n in range(N)], self.layout, m, comb)
        out_u = [self._group_aoa(g) for g in groups]
        return (np.array(out_u), np.array([[p.d for p in g] for g in groups]),
                np.array([[p.f for p in g] for g in groups]))

    def _pick(self, r: np.ndarray, x: np.ndarray, m: int, quota: list[int], top: int = 1) -> list[Path]:
        """OMP selection: the ``top`` grid atoms (n, range, AoD) with the largest normalised correlation energy
        ``sum_{k,t} |phi_t^H r_{k,t}|^2 / ||phi_t||^2`` among the local maxima of every allowed transmit AP's
        statistic (``scipy.ndimage.maximum_filter``); best first."""
        cfg, comb = self.cfg, self.comb
        mr, ns, ts = r.shape
        la = self.u_tx_grid.size
        found: list[tuple[float, Path]] = []
        for n in range(cfg.n_tx):
            if quota[n] <= 0:
                continue
            lo, hi = self.d_window[n, m]
            keep = np.nonzero((self.d_grid >= lo) & (self.d_grid <= hi))[0]
            stat = np.zeros((la, keep.size))
            for t0 in range(0, ts, self.symbol_chunk):
                sl = slice(t0, min(ts, t0 + self.symbol_chunk))
                g = np.conj(x[n][:, None, :, sl]) * r[None, :, :, sl]  # [Nt, Mr, Ns, T]
                c = np.fft.ifft(g, n=self.lf, axis=2)[:, :, keep, :] * self.lf  # delay bins
                v = np.fft.fft(c, n=la, axis=0) / np.sqrt(cfg.n_tx_antennas)  # sum_l a_l(u_p) c_l
                xs = x[n][:, :, sl]
                energy = (np.abs(tx_beam(xs, self.u_tx_grid, comb.spacing)) ** 2).sum(1)  # ||phi_t||^2 [La, T]
                stat += np.einsum("pkgt,pt->pg", np.abs(v) ** 2, 1.0 / np.maximum(energy, 1e-300))
            stat[~self.u_tx_valid] = -np.inf
            mode = ("wrap" if comb.spacing >= 0.5 - 1e-12 else "nearest", "nearest")
            peaks = np.argwhere((maximum_filter(stat, size=3, mode=mode) == stat) & np.isfinite(stat))
            vals = stat[peaks[:, 0], peaks[:, 1]]
            for i in np.argsort(vals)[::-1][:top]:
                p, g = peaks[i]
                found.append((float(vals[i]), Path(n=n, u_rx=0.0, u_tx=float(self.u_tx_grid[p]),
                                                   d=float(self.d_grid[keep[g]]), f=0.0)))
        found.sort(key=lambda c: -c[0])
        return [p for _, p in found[:top]]

    def _refine_atom(self, ym: np.ndarray, x: np.ndarray, rxx: np.ndarray, atom: Path, others: list[Path],
                     first: bool) -> tuple[Path, float]:
        """Continuous refinement of an atom's range and AoD (alternating 1-D zooms) on the MMV objective with the
        other atoms projected out per symbol (alternating projection: the joint least-squares fit of all atoms)::

            J(d, u) = sum_{k,t} |phi_t^H P_t y_{k,t}|^2 / (phi_t^H P_t phi_t),   P_t = I - O_t (O_t^H O_t)^-1 O_t^H

        Returns the atom and J at the optimum (the energy it explains).
        """
        comb, cfg = self.comb, self.cfg
        x_n = x[atom.n]
        d, u = atom.d, atom.u_tx
        hd = comb.range_res / self.delay_oversample * (1.0 if first else 0.5)
        hu = 1.0 / (cfg.n_tx_antennas * comb.spacing * self.aod_oversample) * (1.0 if first else 0.5)
        mr, ns, ts = ym.shape
        periodic = comb.spacing >= 0.5 - 1e-12
        lo, hi = (None, None) if periodic else (-1.0, 1.0)
        if others:
            o = self._atoms(x, others)  # [Ts, Ns, K]
            ginv = np.linalg.pinv(np.conj(np.swapaxes(o, 1, 2)) @ o)  # [Ts, K, K]
            w = ginv @ (np.conj(np.swapaxes(o, 1, 2)) @ ym.transpose(2, 1, 0))  # G^-1 O^H y: [Ts, K, Mr]

        def concentrated(a_: np.ndarray, c_: np.ndarray | None, e_: np.ndarray) -> np.ndarray:
            """a_ = phi^H y [C, Mr, Ts], c_ = phi^H O [C, Ts, K] or None, e_ = ||phi_t||^2 [C, Ts] -> J [C]."""
            if c_ is None:
                return (np.abs(a_) ** 2 / np.maximum(e_, 1e-300)[:, None, :]).sum(axis=(1, 2))
            num = a_ - np.einsum("ctk,tkm->cmt", c_, w)
            den = e_ - np.einsum("ctk,tkl,ctl->ct", c_, ginv, np.conj(c_)).real
            return (np.abs(num) ** 2 / np.maximum(den, 1e-12 * e_ + 1e-300)[:, None, :]).sum(axis=(1, 2))

        for scale in (1.0, 0.25):
            # range zoom at fixed AoD: phi_t^H v = sum_i e^{+j w(d) i} conj(b[i,t]) v[i]
            b = tx_beam(x_n, np.float64(u), comb.spacing)
            e_t = np.sum(np.abs(b) ** 2, axis=0)
            yb = (np.conj(b)[None] * ym).transpose(1, 0, 2).reshape(ns, -1)  # [Ns, Mr*Ts]
            ob = (np.conj(b).T[:, :, None] * o).transpose(1, 0, 2).reshape(ns, -1) if others else None

            def obj_d(cand: np.ndarray, yb=yb, ob=ob, e_t=e_t) -> np.ndarray:
                e = np.conj(comb.delay_phase(cand[0]))  # [C, Ns]
                a_ = (e @ yb).reshape(-1, mr, ts)
                c_ = None if ob is None else (e @ ob).reshape(-1, ts, len(others))
                return concentrated(a_, c_, np.broadcast_to(e_t, (cand.shape[1], ts)))[None]

            d = float(zoom_maximize(obj_d, np.array([d]), hd * scale)[0][0])
            # AoD zoom at fixed range: conj(b) = a^T conj(x), so phi_t^H v = sum_l a_l sum_i e^{+j w i} conj(x_l) v
            ph = np.conj(comb.delay_phase(np.float64(d)))
            wy = np.einsum("i,lit,kit->lkt", ph, x_n.conj(), ym, optimize=True).reshape(x_n.shape[0], -1)
            wo = (np.einsum("i,lit,tik->ltk", ph, x_n.conj(), o, optimize=True).reshape(x_n.shape[0], -1)
                  if others else None)

            def obj_u(cand: np.ndarray, wy=wy, wo=wo) -> np.ndarray:
                a = steering(cand[0], cfg.n_tx_antennas, comb.spacing)
                a_ = (a @ wy).reshape(-1, mr, ts)
                c_ = None if wo is None else (a @ wo).reshape(-1, ts, len(others))
                e_ = np.einsum("cl,tlk,ck->ct", a.conj(), rxx, a, optimize=True).real
                return concentrated(a_, c_, e_)[None]

            uu, val = zoom_maximize(obj_u, np.array([u]), hu * scale, lower=lo, upper=hi)
            u, obj = float(uu[0]), float(val[0])
            if periodic:  # half-wavelength ULA: u and u -+ 2 are the same steering vector
                u = (u + 1.0) % 2.0 - 1.0
        return Path(n=atom.n, u_rx=atom.u_rx, u_tx=u, d=d, f=atom.f), obj

    def _polish(self, ym: np.ndarray, x: np.ndarray, m: int, rxx: list[np.ndarray], atoms: list[Path], rounds: int,
                redetect: int = 0) -> list[Path]:
        """Cyclic alternating-projection refinement of all atoms; in the first ``redetect`` rounds every atom is also
        re-detected on the data with the other atoms' least-squares fit removed, and replaced when the re-detected
        atom explains more energy (escapes atoms captured by another path's cross-terms)."""
        cfg, comb = self.cfg, self.comb
        atoms = list(atoms)
        for rnd in range(rounds if len(atoms) > 1 else 0):
            change = 0.0
            for j in range(len(atoms)):
                old = atoms[j]
                others = atoms[:j] + atoms[j + 1:]
                new, obj = self._refine_atom(ym, x, rxx[old.n], old, others, first=False)
                if rnd < redetect:
                    quota = [1 if n == old.n else 0 for n in range(cfg.n_tx)]
                    res_j = ym - self._least_squares(ym, x, others)[1]
                    for cand in self._pick(res_j, x, m, quota):
                        cand, obj_c = self._refine_atom(ym, x, rxx[old.n], cand, others, first=True)
                        if obj_c > obj * (1.0 + 1e-6):
                            new, obj = cand, obj_c
                atoms[j] = new
                change = max(change, abs(new.d - old.d) / comb.range_res,
                             abs(wrap_cosine(new.u_tx - old.u_tx, comb.spacing)) * cfg.n_tx_antennas * comb.spacing)
            if change < 1e-5 and rnd >= redetect - 1:
                break
        return atoms

    def _atoms(self, x: np.ndarray, atoms: list[Path]) -> np.ndarray:
        """Atom matrix per symbol: [Ts, Ns, J] with ``phi_j[i, t] = exp(-j 2 pi i d_j df / c) b_j[i, t]``."""
        comb = self.comb
        cols = [comb.delay_phase(np.float64(p.d))[:, None] * tx_beam(x[p.n], np.float64(p.u_tx), comb.spacing)
                for p in atoms]
        return np.stack(cols, axis=-1).transpose(1, 0, 2)

    def _least_squares(self, ym: np.ndarray, x: np.ndarray, atoms: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        """Per-symbol least squares of all atoms: coefficients [Ts, J, Mr] and the fitted signal [Mr, Ns, Ts]."""
        phi = self._atoms(x, atoms)  # [Ts, Ns, J]
        yt = ym.transpose(2, 1, 0)  # [Ts, Ns, Mr]
        gram = np.conj(np.swapaxes(phi, 1, 2)) @ phi
        ridge = 1e-10 * np.trace(gram, axis1=1, axis2=2).real[:, None, None] / len(atoms) + 1e-300
        coeffs = np.linalg.solve(gram + ridge * np.eye(len(atoms)), np.conj(np.swapaxes(phi, 1, 2)) @ yt)
        fitted = (phi @ coeffs).transpose(2, 1, 0)
        return coeffs, fitted

    def _angle_doppler(self, atoms: list[Path], coeffs: np.ndarray) -> None:
        """AoA and Doppler of every atom from its coefficients C[k, t] (2-D DFT peak + zoom), in place."""
        cfg, comb = self.cfg, self.comb
        mr, ts = cfg.n_rx_antennas, cfg.n_symbols
        c = coeffs.transpose(1, 2, 0)  # [J, Mr, Ts]
        lu, lt = self.oversample * mr, self.oversample * ts
        spec = np.fft.fftshift(np.fft.fft(np.fft.ifft(c, n=lu, axis=1) * lu, n=lt, axis=2), axes=(1, 2))
        u = np.fft.fftshift(np.fft.fftfreq(lu)) / comb.spacing
        f = np.fft.fftshift(np.fft.fftfreq(lt, comb.symbol_stride * comb.dT))
        mask = (np.abs(u) <= 1.0)[:, None] & (np.abs(f) <= self.f_max)[None, :]
        power = np.where(mask[None], np.abs(spec) ** 2, -np.inf)
        ia, ib = np.unravel_index(power.reshape(len(atoms), -1).argmax(1), (lu, lt))
        k = np.arange(mr)

        def kern_u(cand: np.ndarray) -> np.ndarray:  # conj(a_r(u)) * sqrt(Mr)
            return np.exp(1j * 2 * np.pi * comb.spacing * cand[..., None] * k)

        def kern_f(cand: np.ndarray) -> np.ndarray:  # exp(-j 2 pi t f dT)
            return np.conj(comb.doppler_phase(cand))

        uu, ff, val = zoom_maximize_2d(c, kern_u, kern_f, u[ia], f[ib], 1.0 / (lu * comb.spacing),
                                       comb.doppler_res / self.oversample)
        if comb.spacing >= 0.5 - 1e-12:
            uu = (uu + 1.0) % 2.0 - 1.0
        for j, p in enumerate(atoms):
            p.u_rx, p.f = float(np.clip(uu[j], -1.0, 1.0)), float(ff[j])
            p.amp = complex(val[j] / (mr * ts))

    def _group_aoa(self, group: list[Path]) -> float:
        """A target's AoA from its N paths: power-weighted mean when they agree within a cell, else the strongest."""
        comb = self.comb
        w = np.array([abs(p.amp) ** 2 for p in group])
        ref = group[int(np.argmax(w))].u_rx
        du = wrap_cosine(np.array([p.u_rx - ref for p in group]), comb.spacing)
        ok = np.abs(du) < comb.u_res
        return float(np.clip(ref + np.sum(w[ok] * du[ok]) / np.sum(w[ok]), -1.0, 1.0))


register_without_checkpoint("cs-reference", CsEstimator, "CS baseline")
