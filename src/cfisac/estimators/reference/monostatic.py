"""Monostatic sensing by a single full-duplex BS (paper Section V-A, after [13]).

The BS transmits and receives with co-located arrays (perfect self-interference cancellation assumed): this is the
configuration ``SystemConfig.preset("monostatic")`` -- one transmit and one receive AP at (50, 0), transmit axis
(-1, 0), receive axis (+1, 0) -- or any ``cfg.replace(tx_positions=(p,), rx_positions=(p,), tx_axes=(a_t,),
rx_axes=(a_r,))``; the simulator's general orientation support makes it a configuration, not a special case. The BS
knows its own transmit signals X.

Processing (joint angle-range-velocity estimation by DFTs after symbol removal, as [13]):

1. For every receive direction cosine u of a zero-padded angle grid, the receive beam ``a_r^H(u) y`` is matched-
   filtered with the symbols ``b_u = a_t^H(u_tx(u)) x`` the BS sent towards that direction (co-located arrays: the
   AoD follows from the AoA, ``u_tx = axis_t . e(u)``), and a zero-padded 2-D DFT over subcarriers and symbols
   gives the angle x range x Doppler cube ``|.|^2 / ||b_u||^2`` (:func:`.signal_processing.delay_doppler_spectrum`).
2. Targets are detected by CLEAN: the highest local maxima of the cube (``scipy.ndimage.maximum_filter``) are
   refined continuously (zoom on the exact DTFT, range-Doppler and angle alternately, the targets already found
   projected out), the candidate leaving the smallest least-squares residual is kept and cancelled, and the next
   target is searched on the residual cube; a final cyclic refinement polishes all targets jointly.
3. Location from angle and range: ``g = p + (d / 2) e(u)``, ``d`` the round-trip range. Only the radial velocity
   ``lambda f_D / 2`` is observable by one BS: velocities are NaN (the scheme is excluded from velocity results,
   paper Fig. 6(b)); :meth:`MonostaticEstimator.detections` returns AoA cosines, ranges and Dopplers.

``fronthaul_bits_per_ap = 0`` (one BS, no fronthaul). A config that is not one co-located AP raises ``ValueError``.
Two targets in one angle-range-Doppler cell: CLEAN returns two estimates near that cell (never NaN). A
half-wavelength ULA cannot tell the two endfire directions apart; with the BS on the area's edge both are inside the
area, so targets within half a beamwidth of endfire may be mirrored.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import maximum_filter

from ...config import SystemConfig
from .. import Estimate, register_without_checkpoint
from .fusion import Layout
from .signal_processing import (
    Comb,
    Path,
    aoa_direction,
    delay_doppler_spectrum,
    refine_delay_doppler,
    steering,
    tx_beam,
    validate_inputs,
    zoom_maximize,
)

__all__ = ["MonostaticEstimator"]


class MonostaticEstimator:
    """Monostatic sensing by one co-located BS (module docstring). ``est(y, x) -> Estimate`` with NaN velocities.

    Options (keyword-only): ``oversample`` zero padding of the range / Doppler DFTs (4); ``angle_oversample``
    zero padding of the angle grid (4); ``refine_rounds`` final cyclic refinement rounds (4); ``n_candidates``
    cube peaks tried at every CLEAN step (3).
    """

    name = "monostatic"
    fronthaul_bits_per_ap = 0

    def __init__(self, cfg: SystemConfig, *, oversample: int = 4, angle_oversample: int = 4, refine_rounds: int = 4,
                 n_candidates: int = 3) -> None:
        if cfg.n_tx != 1 or cfg.n_rx != 1 or math.dist(cfg.tx_positions[0], cfg.rx_positions[0]) > 1e-9:
            raise ValueError(
                "monostatic sensing needs one co-located transmit / receive AP (got tx_positions="
                f"{cfg.tx_positions}, rx_positions={cfg.rx_positions}); use SystemConfig.preset('monostatic') or "
                "cfg.replace(tx_positions=((50.0, 0.0),), rx_positions=((50.0, 0.0),), tx_axes=((-1.0, 0.0),), "
                "rx_axes=((1.0, 0.0),))")
        for name, v, low in (("oversample", oversample, 1), ("angle_oversample", angle_oversample, 1),
                             ("refine_rounds", refine_rounds, 0), ("n_candidates", n_candidates, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        self.cfg = cfg
        self.oversample = oversample
        self.angle_oversample = angle_oversample
        self.refine_rounds = refine_rounds
        self.n_candidates = n_candidates
        self.comb = Comb.from_config(cfg)
        lay = Layout(cfg)
        self.layout = lay
        self.bs, self.rx_axis, self.tx_axis, self.side = lay.rx[0], lay.rx_axes[0], lay.tx_axes[0], lay.rx_side[0]
        res = cfg.resolution()
        self.f_max = min(res["max_doppler_hz"] + self.comb.doppler_res, res["unambiguous_doppler_hz"])
        (x0, x1), (y0, y1) = cfg.area
        corners = np.array([[x0, y0], [x0, y1], [x1, y0], [x1, y1]])
        self.d_max = 2.0 * float(np.linalg.norm(corners - self.bs, axis=1).max()) + self.comb.range_res
        lu = angle_oversample * cfg.n_rx_antennas
        u = np.fft.fftshift(np.fft.fftfreq(lu)) / cfg.antenna_spacing
        self.u_grid = u[np.abs(u) <= 1.0]
        self.periodic = cfg.antenna_spacing >= 0.5 - 1e-12

    # ------------------------------------------------------------------ public
    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> Estimate:
        """Positions [B, Q, 2] float64 (velocities NaN) from y [B, 1, Mr, Ns, Ts] and x [B, 1, Nt, Ns, Ts]."""
        u, d, _ = self.detections(y, x)
        pos = self.bs + (d / 2.0)[..., None] * aoa_direction(u, self.rx_axis, self.side)
        pos = np.clip(pos, self.layout.lower, self.layout.upper)
        return Estimate(torch.from_numpy(pos), torch.full(pos.shape, float("nan"), dtype=torch.float64))

    def detections(self, y: torch.Tensor, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per scene and target: AoA cosine, round-trip range d (m) and Doppler f_D (Hz), each [B, Q] float64.

        The radial velocity (positive away from the BS) is ``wavelength * f_D / 2``.
        """
        yn, xn = validate_inputs(self.cfg, y, x)
        B, Q = yn.shape[0], self.cfg.n_targets
        out = np.empty((3, B, Q))
        for b in range(B):
            paths = self.process(yn[b, 0], xn[b, 0])
            out[:, b] = np.array([[p.u_rx for p in paths], [p.d for p in paths], [p.f for p in paths]])
        return out[0], out[1], out[2]

    # ------------------------------------------------------------------ processing
    def process(self, ym: np.ndarray, xm: np.ndarray) -> list[Path]:
        """Q targets (as paths: ``u_rx``, ``d``, ``f``) from Y [Mr, Ns, Ts] and X [Nt, Ns, Ts] of the BS."""
        paths: list[Path] = []
        for _ in range(self.cfg.n_targets):
            residual = ym - self._reconstruct(ym, paths, xm)
            best = (np.inf, None)
            for cand in self._peaks(residual, xm, self.n_candidates):
                p = self._refine(ym, xm, cand, paths)
                trial = self._polish(ym, xm, paths + [p], rounds=1)
                err = float(np.linalg.norm(ym - self._reconstruct(ym, trial, xm)))
                if err < best[0]:
                    best = (err, trial)
            paths = best[1]
        return self._polish(ym, xm, paths, rounds=self.refine_rounds)

    def _u_tx(self, u: np.ndarray) -> np.ndarray:
        """AoD cosine of the direction with AoA cosine u (co-located arrays)."""
        return aoa_direction(u, self.rx_axis, self.side) @ self.tx_axis

    def _peaks(self, r: np.ndarray, xm: np.ndarray, top: int) -> list[Path]:
        """The ``top`` highest local maxima of the angle x range x Doppler cube of data r [Mr, Ns, Ts]."""
        comb, mr = self.comb, r.shape[0]
        u = self.u_grid
        beams = (steering(u, mr, comb.spacing).conj() @ r.reshape(mr, -1)).reshape(u.size, *r.shape[1:])
        b = tx_beam(xm, self._u_tx(u), comb.spacing)  # [U, Ns, Ts]
        energy = np.maximum(np.sum(np.abs(b) ** 2, axis=(1, 2)), 1e-300)
        s, d, f = delay_doppler_spectrum(beams * np.conj(b), comb, oversample=self.oversample, d_max=self.d_max)
        cube = np.abs(s) ** 2 / energy[:, None, None]
        cube[:, :, np.abs(f) > self.f_max] = 0.0
        mode = ("wrap", "nearest", "nearest") if self.periodic else "nearest"
        peaks = np.argwhere(maximum_filter(cube, size=3, mode=mode) == cube)
        vals = cube[tuple(peaks.T)]
        order = np.argsort(vals)[::-1][:top]
        return [Path(n=0, u_rx=float(u[a]), u_tx=float(self._u_tx(u[a])), d=float(d[k]), f=float(f[j]))
                for a, k, j in peaks[order]]

    def _signature(self, p: Path, xm: np.ndarray, mr: int) -> np.ndarray:
        """Unit-amplitude signature [Mr, Ns, Ts] of a target (Eq. 6 with co-located arrays)."""
        comb = self.comb
        b = tx_beam(xm, np.float64(p.u_tx), comb.spacing)
        ph = comb.delay_phase(np.float64(p.d))[:, None] * comb.doppler_phase(np.float64(p.f))[None, :]
        return steering(np.float64(p.u_rx), mr, comb.spacing)[:, None, None] * (ph * b)[None]

    def _reconstruct(self, ym: np.ndarray, paths: list[Path], xm: np.ndarray) -> np.ndarray:
        """Joint least-squares fit of the targets' amplitudes; the fitted signal [Mr, Ns, Ts]."""
        if not paths:
            return np.zeros_like(ym)
        sig = np.stack([self._signature(p, xm, ym.shape[0]).ravel() for p in paths], axis=1)
        amps = np.linalg.lstsq(sig, ym.ravel(), rcond=None)[0]
        for p, a in zip(paths, amps, strict=True):
            p.amp = complex(a)
        return (sig @ amps).reshape(ym.shape)

    def _refine(self, ym: np.ndarray, xm: np.ndarray, path: Path, others: list[Path]) -> Path:
        """Continuous refinement of one target (range-Doppler, then angle, alternately, with shrinking windows),
        the other targets projected out (alternating projection)."""
        comb, mr = self.comb, ym.shape[0]
        if others:
            o = np.stack([self._signature(p, xm, mr) for p in others])  # [K, Mr, Ns, Ts]
            of = o.reshape(len(others), -1)
            gram = of.conj() @ of.T
            ginv = np.linalg.pinv(gram)
            o_r = of.conj() @ ym.ravel()
            w = ginv @ o_r
        u, d, f = path.u_rx, path.d, path.f
        hu = 1.0 / (self.angle_oversample * mr * comb.spacing)
        hd, hf = comb.range_res / self.oversample, comb.doppler_res / self.oversample
        for scale in (1.0, 0.5, 0.25):
            a = steering(np.float64(u), mr, comb.spacing)
            b = tx_beam(xm, np.float64(self._u_tx(np.float64(u))), comb.spacing)
            extra = None
            if others:
                extra = (np.einsum("r,krit->kit", a.conj(), o)[None], gram[None], o_r[None])
            dd, ff, _, _ = refine_delay_doppler(np.einsum("r,rit->it", a.conj(), ym)[None], b[None], comb,
                                                np.array([d]), np.array([f]), step_d=hd * scale, step_f=hf * scale,
                                                others=extra)
            d, f = float(dd[0]), float(ff[0])
            ph = np.conj(comb.delay_phase(np.float64(d))[:, None] * comb.doppler_phase(np.float64(f))[None, :])

            def obj_u(cand: np.ndarray, ph=ph) -> np.ndarray:
                c = cand[0]
                bc = tx_beam(xm, self._u_tx(c), comb.spacing)  # [C, Ns, Ts]
                mf = np.conj(bc) * ph
                ac = steering(c, mr, comb.spacing).conj()  # [C, Mr]
                num = np.einsum("cr,cit,rit->c", ac, mf, ym, optimize=True)
                en = np.sum(np.abs(bc) ** 2, axis=(1, 2))
                if others:
                    cs = np.einsum("cr,cit,krit->ck", ac, mf, o, optimize=True)
                    num = num - cs @ w
                    en = np.maximum(en - np.real(np.einsum("ck,kl,cl->c", cs, ginv, cs.conj())), 1e-12 * en)
                return (np.abs(num) ** 2 / np.maximum(en, 1e-300))[None]

            lo, hi = (None, None) if self.periodic else (-1.0, 1.0)
            u = float(zoom_maximize(obj_u, np.array([u]), hu * scale, lower=lo, upper=hi)[0][0])
            if self.periodic:
                u = (u + 1.0) % 2.0 - 1.0
        return Path(n=0, u_rx=u, u_tx=float(self._u_tx(np.float64(u))), d=d, f=f)

    def _polish(self, ym: np.ndarray, xm: np.ndarray, paths: list[Path], rounds: int) -> list[Path]:
        """Cyclic refinement of all targets, each with the others projected out."""
        comb = self.comb
        paths = list(paths)
        for _ in range(rounds if len(paths) > 1 else 0):
            change = 0.0
            for j in range(len(paths)):
                old = paths[j]
                paths[j] = self._refine(ym, xm, old, paths[:j] + paths[j + 1:])
                change = max(change, abs(paths[j].d - old.d) / comb.range_res,
                             abs(paths[j].f - old.f) / comb.doppler_res, abs(paths[j].u_rx - old.u_rx) / comb.u_res)
            if change < 1e-5:
                break
        return paths


register_without_checkpoint("monostatic-reference", MonostaticEstimator, "monostatic baseline")
