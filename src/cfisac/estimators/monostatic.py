"""Monostatic sensing by a single full-duplex BS (paper Section V-A, after [13]), batched over scenes in PyTorch.

The BS transmits and receives with co-located arrays (perfect self-interference cancellation assumed): the
configuration ``SystemConfig.preset("monostatic")`` -- one transmit and one receive AP at (50, 0), transmit axis
(-1, 0), receive axis (+1, 0) -- or any config with one transmit and one receive AP at the same point. The BS knows
its own transmit signals X. This is the product path of ``create("monostatic", cfg)``; the scene-at-a-time literal
reference is :mod:`cfisac.estimators.reference.monostatic` (``"monostatic-reference"``), whose algorithm is
reproduced step by step, for a batch of scenes in lockstep:

1. Cube (Eq. 6 matched filter): for every receive direction cosine u of the zero-padded angle grid, the receive beam
   ``a_r^H(u) y`` is multiplied by ``conj(b_u)``, ``b_u = a_t^H(u_tx(u)) x`` the symbols the BS sent towards that
   direction (co-located arrays: ``u_tx = axis_t . e(u)``), and a zero-padded 2-D DFT over subcarriers and symbols
   gives the angle x range x Doppler cube ``|S|^2 / ||b_u||^2`` (GLRT normalisation); Dopplers beyond the prior
   bound are zeroed. Local maxima: a 3 x 3 x 3 max filter (``max_pool3d``; the angle axis wraps for a
   half-wavelength array).
2. CLEAN: at step q the ``n_candidates`` highest local maxima of the cube of the residual (the data minus the
   least-squares fit of the q targets found) are refined continuously, the q targets projected out (alternating
   projection, Ziskind-Wax), each trial set gets one cyclic polish round, and the trial leaving the smallest
   least-squares residual is kept. All scenes x candidates are one batch of problems.
3. Refinement of one target (:func:`refine_target`): three shrinking scales, each a 5 x 5 zoom search over (range,
   Doppler) on the exact DTFT followed by a 5-point zoom over the AoA cosine, 14 halvings each. The angle objective
   is evaluated through ``M = sum_{i,t} conj(ph) y conj(x)^T`` [Mr, Nt], so every angle candidate costs Mr x Nt
   operations (``|a_r^H M a_t|^2 / a_t^H R_x a_t``) instead of a pass over the data. A final cyclic polish of all
   targets (``refine_rounds`` rounds, per scene stopped once nothing moves by 1e-5 of a cell) ends it.
4. Fusion: ``g = p + (d / 2) e(u)`` with ``d`` the round-trip range, clipped to the area. Only the radial velocity
   ``lambda f_D / 2`` is observable by one BS: velocities are NaN (paper Fig. 6(b)); :meth:`detections` returns the
   AoA cosines, ranges and Dopplers. ``fronthaul_bits_per_ap = 0`` (one BS, no fronthaul).

Results equal the reference's up to floating-point rounding (different summation orders; ``tests/test_monostatic.py``
states the tolerance). Everything runs on the inputs' device (or ``device=``); memory is bounded by chunking the
batch (:meth:`MonostaticEstimator.default_chunk_size`) and by computing the cube in blocks of angles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

from ..config import SPEED_OF_LIGHT, SystemConfig
from ..physics import (
    ApLayout,
    SensingGrid,
    aoa_direction,
    delay_phase,
    doppler_phase,
    path_phase,
    steering_vectors,
)
from . import Estimate
from .base import BatchedEstimator, check_inputs

__all__ = ["MonostaticDetections", "MonostaticEstimator"]

ZOOM_POINTS = 5  # candidates per axis and zoom iteration (as the reference)
ZOOM_ITERS = 14  # halvings of the zoom window
SCALES = (1.0, 0.5, 0.25)  # zoom windows of the alternating refinement, in grid steps
CONVERGED = 1e-5  # a polish round moving no parameter by more than this fraction of a cell stops the polish
CUBE_BLOCK_CELLS = 2**23  # complex cells of the largest cube intermediate per angle block
CHUNK_BYTES = 2**31  # working memory aimed at per chunk of scenes (default_chunk_size)


@dataclass
class MonostaticDetections:
    """The BS's per-target detections (the per-AP stage's output): ``aoa`` cosines, round-trip ``ranges`` d (m) and
    ``dopplers`` f_D (Hz), each [B, Q] float64 on the compute device."""

    aoa: torch.Tensor
    ranges: torch.Tensor
    dopplers: torch.Tensor


@dataclass
class _Data:
    """One batch of P problems: echoes ``y`` [P, Mr, Ns, Ts], signals ``x`` [P, Nt, Ns, Ts] (complex) and the
    transmit covariance ``rx`` = X X^H [P, Nt, Nt] (``||a_t^H x||^2 = a_t^H R_x a_t``)."""

    y: torch.Tensor
    x: torch.Tensor
    rx: torch.Tensor

    @classmethod
    def of(cls, y: torch.Tensor, x: torch.Tensor) -> _Data:
        xf = x.flatten(2)
        return cls(y, x, xf @ xf.conj().transpose(1, 2))

    def take(self, idx: torch.Tensor) -> _Data:
        return _Data(self.y[idx], self.x[idx], self.rx[idx])

    def repeat(self, c: int) -> _Data:
        """Every problem ``c`` times in a row (problem p*c + j is a copy of p)."""
        return _Data(*(t.repeat_interleave(c, 0) for t in (self.y, self.x, self.rx)))


class MonostaticEstimator(BatchedEstimator):
    """Monostatic sensing by one co-located BS (module docstring). ``est(y, x) -> Estimate`` with NaN velocities.

    ``y`` [B, 1, Mr, Ns, Ts], ``x`` [B, 1, Nt, Ns, Ts] complex; positions [B, Q, 2] float64 (CPU). Options
    (keyword-only): ``oversample`` zero padding of the range / Doppler DFTs (4); ``angle_oversample`` zero padding of
    the angle grid (4); ``refine_rounds`` final cyclic refinement rounds (4); ``n_candidates`` cube peaks tried at
    every CLEAN step (3); ``device``, ``dtype``, ``chunk_size`` as :class:`.base.BatchedEstimator`.
    """

    name = "monostatic"
    fronthaul_bits_per_ap = 0

    def __init__(self, cfg: SystemConfig, *, oversample: int = 4, angle_oversample: int = 4, refine_rounds: int = 4,
                 n_candidates: int = 3, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.complex128, chunk_size: int | None = None) -> None:
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
        super().__init__(cfg, device=device, dtype=dtype, chunk_size=chunk_size)
        self.oversample = oversample
        self.angle_oversample = angle_oversample
        self.refine_rounds = refine_rounds
        self.n_candidates = n_candidates
        self.periodic = cfg.antenna_spacing >= 0.5 - 1e-12
        res = cfg.resolution()
        self.f_max = min(res["max_doppler_hz"] + res["doppler_resolution_hz"], res["unambiguous_doppler_hz"])
        (x0, x1), (y0, y1) = cfg.area
        bs = cfg.rx_positions[0]
        far = max(math.dist(bs, c) for c in ((x0, y0), (x0, y1), (x1, y0), (x1, y1)))
        self.d_max = 2.0 * far + res["range_resolution_m"]
        self._kernels: dict[torch.device, _Kernels] = {}

    def kernels(self, device: torch.device) -> _Kernels:
        """The grids and geometry on ``device`` (built once per device)."""
        if device not in self._kernels:
            self._kernels[device] = _Kernels(self, device)
        return self._kernels[device]

    def default_chunk_size(self) -> int:
        """Scenes per chunk so that the cube (float) and the candidates' working copies of the data stay within
        about :data:`CHUNK_BYTES` (2 GiB at complex128; measured peak in ``tests/test_monostatic.py``'s notes)."""
        cfg = self.cfg
        k = self.kernels(torch.device("cpu"))
        real = 8 if self.dtype == torch.complex128 else 4
        cube = 2 * real * k.u_grid.numel() * k.n_range * k.n_doppler
        data = 2 * real * (cfg.n_rx_antennas + cfg.n_tx_antennas) * cfg.n_subcarriers * cfg.n_symbols
        return max(1, CHUNK_BYTES // (cube + 6 * self.n_candidates * data))

    # ------------------------------------------------------------------ stages
    def ap_messages(self, y: torch.Tensor, x: torch.Tensor) -> MonostaticDetections:
        """The BS's detections from y [b, 1, Mr, Ns, Ts] and x [b, 1, Nt, Ns, Ts] (module docstring, steps 1-3)."""
        k = self.kernels(y.device)
        data = _Data.of(y[:, 0], x[:, 0])
        b, q_all, c = y.shape[0], self.cfg.n_targets, self.n_candidates
        u = d = f = torch.zeros(b, 0, dtype=torch.float64, device=y.device)
        rows = torch.arange(b, device=y.device)
        for q in range(q_all):
            residual = data.y - k.fit(data, u, d, f) if q else data.y
            cu, cd, cf, valid = k.peaks(residual, data.x, c)  # [b, C]
            trial = data.repeat(c)
            old = [t.repeat_interleave(c, 0) for t in (u, d, f)]
            nu, nd, nf = k.refine(trial, cu.flatten(), cd.flatten(), cf.flatten(), *old)
            tu, td, tf = (torch.cat([o, n[:, None]], 1) for o, n in zip(old, (nu, nd, nf), strict=True))
            tu, td, tf = k.polish(trial, tu, td, tf, rounds=1)
            err = k.residual_norm(trial, tu, td, tf).view(b, c)
            best = torch.where(valid, err, torch.full_like(err, math.inf)).argmin(1)
            u, d, f = (t.view(b, c, q + 1)[rows, best] for t in (tu, td, tf))
        u, d, f = k.polish(data, u, d, f, rounds=self.refine_rounds)
        return MonostaticDetections(u, d, f)

    def fuse(self, messages: MonostaticDetections, x: torch.Tensor) -> Estimate:
        """Positions ``p + (d / 2) e(u)`` [b, Q, 2] clipped to the area, velocities NaN (module docstring, step 4)."""
        lay = self.kernels(messages.aoa.device).layout
        e = aoa_direction(messages.aoa, lay.rx_axes[0], lay.rx_side[0])
        pos = lay.rx[0] + (messages.ranges / 2.0)[..., None] * e
        pos = torch.maximum(torch.minimum(pos, lay.upper), lay.lower)
        return Estimate(pos, torch.full_like(pos, math.nan))

    def detections(self, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per scene and target: AoA cosine, round-trip range d (m) and Doppler f_D (Hz), each [B, Q] float64 (CPU).

        The radial velocity (positive away from the BS) is ``wavelength * f_D / 2``.
        """
        check_inputs(self.cfg, y, x)
        dev = self.device if self.device is not None else y.device
        step = self.chunk_size or self.default_chunk_size()
        parts = []
        for lo in range(0, y.shape[0], step):
            m = self.ap_messages(y[lo:lo + step].to(dev, self.dtype), x[lo:lo + step].to(dev, self.dtype))
            parts.append(torch.stack([m.aoa, m.ranges, m.dopplers]).to("cpu", torch.float64))
        u, d, f = torch.cat(parts, 1)
        return u, d, f


class _Kernels:
    """The batched monostatic kernels of one estimator on one device: all methods take problems [P, ...]."""

    def __init__(self, est: MonostaticEstimator, device: torch.device) -> None:
        cfg = est.cfg
        self.est = est
        self.grid = SensingGrid.from_config(cfg, device)
        self.layout = ApLayout.from_config(cfg, device)
        self.mr, self.nt = cfg.n_rx_antennas, cfg.n_tx_antennas
        self.spacing = cfg.antenna_spacing
        lu = est.angle_oversample * cfg.n_rx_antennas
        u = torch.fft.fftshift(torch.fft.fftfreq(lu, dtype=torch.float64, device=device)) / cfg.antenna_spacing
        self.u_grid = u[u.abs() <= 1.0]
        g = self.grid
        self.lf, self.lt = est.oversample * cfg.n_subcarriers, est.oversample * cfg.n_symbols
        d = torch.arange(self.lf, dtype=torch.float64, device=device) * (
            SPEED_OF_LIGHT / (self.lf * g.subcarrier_stride * g.df))
        self.n_range = int(torch.searchsorted(d, torch.tensor(est.d_max, dtype=torch.float64, device=device),
                                              right=True))
        self.d_grid = d[:self.n_range]
        f = torch.fft.fftfreq(self.lt, g.symbol_stride * g.dT, dtype=torch.float64, device=device)
        self.f_grid = torch.fft.fftshift(f)
        self.n_doppler = self.lt
        self.f_out = self.f_grid.abs() > est.f_max
        self.h_u = 1.0 / (est.angle_oversample * self.mr * self.spacing)
        self.h_d = g.range_res / est.oversample
        self.h_f = g.doppler_res / est.oversample
        self.offs = torch.linspace(-1.0, 1.0, ZOOM_POINTS, dtype=torch.float64, device=device)

    # ------------------------------------------------------------------ geometry / signatures
    def u_tx(self, u: torch.Tensor) -> torch.Tensor:
        """AoD cosine of the direction with AoA cosine ``u`` (co-located arrays; ``u`` clipped to [-1, 1])."""
        lay = self.layout
        return (aoa_direction(u, lay.rx_axes[0], lay.rx_side[0]) * lay.tx_axes[0]).sum(-1)

    def parts(self, data: _Data, u: torch.Tensor, d: torch.Tensor, f: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Kronecker factors of the unit-amplitude signatures (Eq. 6, co-located arrays) of targets [P, K]:
        ``a`` = a_r(u) [P, K, Mr] and ``s`` = path_phase(d, f) * a_t^H(u_tx) x [P, K, Ns, Ts]; the signature is
        ``a[r] s[i, t]``."""
        dt = data.y.dtype
        a = steering_vectors(u, self.mr, self.spacing, dt)
        at = steering_vectors(self.u_tx(u), self.nt, self.spacing, dt)
        b = torch.einsum("pkl,plit->pkit", at.conj(), data.x)
        return a, path_phase(self.grid, d, f).to(dt) * b

    def _normal(self, data: _Data, a: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gram ``S^H S`` [P, K, K] and ``S^H y`` [P, K] of signatures with factors a [P, K, Mr], s [P, K, Ns, Ts]."""
        sf = s.flatten(2)
        gram = (a.conj() @ a.transpose(1, 2)) * (sf.conj() @ sf.transpose(1, 2))
        ay = torch.einsum("pkr,prn->pkn", a.conj(), data.y.flatten(2))
        return gram, (sf.conj() * ay).sum(-1)

    def fit(self, data: _Data, u: torch.Tensor, d: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """The joint least-squares fit of the targets' amplitudes: the fitted signal [P, Mr, Ns, Ts]."""
        a, s = self.parts(data, u, d, f)
        gram, rhs = self._normal(data, a, s)
        amps = (_pinv(gram) @ rhs[..., None])[..., 0]
        return torch.einsum("pk,pkr,pkit->prit", amps, a, s)

    def residual_norm(self, data: _Data, u: torch.Tensor, d: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """``||y - fit||`` [P] float64 of targets [P, K]."""
        return torch.linalg.vector_norm((data.y - self.fit(data, u, d, f)).flatten(1), dim=1).double()

    # ------------------------------------------------------------------ detection
    def peaks(self, r: torch.Tensor, x: torch.Tensor, top: int,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``top`` highest local maxima of the angle x range x Doppler cube of data r [P, Mr, Ns, Ts]:
        their (u, d, f) [P, top] float64 and ``valid`` [P, top] (False where the cube has fewer maxima)."""
        p, _, ns, ts = r.shape
        u = self.u_grid
        n_u = u.numel()
        a = steering_vectors(u, self.mr, self.spacing, r.dtype)  # [U, Mr]
        at = steering_vectors(self.u_tx(u), self.nt, self.spacing, r.dtype)  # [U, Nt]
        real = torch.float64 if r.dtype == torch.complex128 else torch.float32
        cube = torch.empty(p, n_u, self.n_range, self.n_doppler, dtype=real, device=r.device)
        block = max(1, CUBE_BLOCK_CELLS // (p * self.lf * max(ts, self.n_doppler)))
        rf, xf = r.flatten(2), x.flatten(2)
        for lo in range(0, n_u, block):
            sl = slice(lo, lo + block)
            beams = torch.einsum("ur,prn->pun", a[sl].conj(), rf)
            b = torch.einsum("ul,pln->pun", at[sl].conj(), xf)
            energy = (b.real**2 + b.imag**2).sum(-1).clamp_min(1e-300)
            z = (beams * b.conj()).reshape(p, -1, ns, ts)
            s = torch.fft.ifft(z, n=self.lf, dim=-2)[..., :self.n_range, :] * self.lf
            s = torch.fft.fftshift(torch.fft.fft(s, n=self.lt, dim=-1), dim=-1)
            cube[:, sl] = (s.real**2 + s.imag**2) / energy[..., None, None]
        cube[..., self.f_out] = 0.0
        if self.est.periodic:
            pooled = nnf.max_pool3d(torch.cat([cube[:, -1:], cube, cube[:, :1]], 1)[:, None], 3, 1, (0, 1, 1))
        else:
            pooled = nnf.max_pool3d(cube[:, None], 3, 1, 1)
        vals = torch.where(pooled[:, 0] == cube, cube, torch.full_like(cube, -math.inf)).flatten(1)
        v, idx = vals.topk(min(top, vals.shape[1]), dim=1)
        ia = idx // (self.n_range * self.n_doppler)
        ik = (idx // self.n_doppler) % self.n_range
        ij = idx % self.n_doppler
        return u[ia], self.d_grid[ik], self.f_grid[ij], v > -math.inf

    # ------------------------------------------------------------------ refinement
    def refine(self, data: _Data, u: torch.Tensor, d: torch.Tensor, f: torch.Tensor, ou: torch.Tensor,
               od: torch.Tensor, of: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Continuous refinement of one target (u, d, f) [P] with the others (ou, od, of) [P, K] projected out:
        range-Doppler then angle, alternately, at the window scales :data:`SCALES` (reference ``_refine``)."""
        dt = data.y.dtype
        others = ou.shape[1] > 0
        if others:
            oa, os_ = self.parts(data, ou, od, of)  # [P, K, Mr], [P, K, Ns, Ts]
            gram, o_r = self._normal(data, oa, os_)
            ginv = _pinv(gram)
            w = (ginv @ o_r[..., None])[..., 0]  # [P, K]
        for scale in SCALES:
            a = steering_vectors(u, self.mr, self.spacing, dt)  # [P, Mr]
            at = steering_vectors(self.u_tx(u), self.nt, self.spacing, dt)
            b = torch.einsum("pl,plit->pit", at.conj(), data.x)
            r = torch.einsum("pr,prit->pit", a.conj(), data.y)
            bc = b.conj()
            en = (b.real**2 + b.imag**2).sum((1, 2))
            zo = None
            if others:
                zo = (a.conj()[:, None] @ oa.transpose(1, 2))[:, 0, :, None, None] * os_ * bc[:, None]
            d, f = self._zoom_range_doppler(r * bc, zo, en, w if others else None, ginv if others else None,
                                            d, f, self.h_d * scale, self.h_f * scale)
            ph = path_phase(self.grid, d, f).conj().to(dt)  # [P, Ns, Ts]
            m = torch.einsum("prn,pln->prl", (ph[:, None] * data.y).flatten(2), data.x.flatten(2).conj())
            v = torch.einsum("pkn,pln->pkl", (ph[:, None] * os_).flatten(2), data.x.flatten(2).conj()) \
                if others else None
            u = self._zoom_angle(data, m, oa if others else None, v, w if others else None,
                                 ginv if others else None, u, self.h_u * scale)
        return u, d, f

    def _zoom_range_doppler(self, z: torch.Tensor, zo: torch.Tensor | None, en: torch.Tensor, w: torch.Tensor | None,
                            ginv: torch.Tensor | None, d: torch.Tensor, f: torch.Tensor, hd: float, hf: float,
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """5 x 5 zoom maximisation of ``|s^H P r|^2 / s^H P s`` over (d, f) [P] (reference ``refine_delay_doppler``
        with a fixed beam): ``z`` = r conj(b) [P, Ns, Ts], ``zo`` = o_k conj(b) [P, K, Ns, Ts] (beam-space other
        signatures), ``en`` = ||b||^2 [P], ``w`` = G^-1 O^H y [P, K], ``ginv`` = G^-1 [P, K, K]."""
        dt = z.dtype
        g = ZOOM_POINTS
        for _ in range(ZOOM_ITERS):
            cd = d[:, None] + hd * self.offs  # [P, G]
            cf = f[:, None] + hf * self.offs
            ed = delay_phase(self.grid, cd).conj().to(dt)  # [P, G, Ns]
            ef = doppler_phase(self.grid, cf).conj().to(dt).transpose(1, 2)  # [P, Ts, G]
            num = ed @ (z @ ef)  # [P, G, G]
            if zo is None:
                den = en[:, None, None].expand(num.shape)
            else:
                c = ed[:, None] @ (zo @ ef[:, None])  # [P, K, G, G]
                num = num - torch.einsum("pkab,pk->pab", c, w)
                proj = torch.einsum("pkab,pkl,plab->pab", c, ginv, c.conj()).real
                den = torch.maximum(en[:, None, None] - proj, 1e-12 * en[:, None, None])
            obj = (num.real**2 + num.imag**2) / den.clamp_min(1e-300)
            flat = obj.flatten(1).argmax(1)
            d = cd.gather(1, (flat // g)[:, None])[:, 0]
            f = cf.gather(1, (flat % g)[:, None])[:, 0]
            hd, hf = hd * 0.5, hf * 0.5
        return d, f

    def _zoom_angle(self, data: _Data, m: torch.Tensor, oa: torch.Tensor | None, v: torch.Tensor | None,
                    w: torch.Tensor | None, ginv: torch.Tensor | None, u: torch.Tensor, h: float) -> torch.Tensor:
        """5-point zoom maximisation over the AoA cosine u [P] of ``|n - c^T w|^2 / (||b||^2 - c^H G^-1 c)`` with
        ``n = a_r^H M a_t`` (``M`` [P, Mr, Nt] the phase-compensated data x signal correlation), ``||b||^2 = a_t^H
        R_x a_t`` and ``c_k = (a_r^H a_k)(a_t^T v_k)`` the other targets' terms (``oa`` [P, K, Mr], ``v``
        [P, K, Nt]); wraps u into [-1, 1) for a half-wavelength array (reference ``zoom_maximize`` on ``obj_u``)."""
        dt = m.dtype
        rows = torch.arange(u.numel(), device=u.device)
        for _ in range(ZOOM_ITERS):
            cand = u[:, None] + h * self.offs  # [P, G]
            if not self.est.periodic:
                cand = cand.clamp(-1.0, 1.0)
            ar = steering_vectors(cand, self.mr, self.spacing, dt)  # [P, G, Mr]
            at = steering_vectors(self.u_tx(cand), self.nt, self.spacing, dt)  # [P, G, Nt]
            num = ((ar.conj() @ m) * at).sum(-1)  # [P, G]
            en = ((at.conj() @ data.rx) * at).sum(-1).real
            if oa is not None:
                cs = (ar.conj() @ oa.transpose(1, 2)) * (at @ v.transpose(1, 2))  # [P, G, K]
                num = num - (cs @ w[..., None])[..., 0]
                proj = ((cs @ ginv) * cs.conj()).sum(-1).real
                en = torch.maximum(en - proj, 1e-12 * en)
            obj = (num.real**2 + num.imag**2) / en.clamp_min(1e-300)
            u = cand[rows, obj.argmax(1)]
            h = h * 0.5
        if self.est.periodic:
            u = torch.remainder(u + 1.0, 2.0) - 1.0
        return u

    def polish(self, data: _Data, u: torch.Tensor, d: torch.Tensor, f: torch.Tensor, rounds: int,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cyclic refinement of all targets [P, K], each with the others projected out; a problem stops once a round
        moved nothing by :data:`CONVERGED` of a resolution cell (reference ``_polish``)."""
        k_all = u.shape[1]
        if k_all < 2:
            return u, d, f
        u, d, f = u.clone(), d.clone(), f.clone()
        g = self.grid
        active = torch.ones(u.shape[0], dtype=torch.bool, device=u.device)
        for _ in range(rounds):
            idx = active.nonzero()[:, 0]
            if idx.numel() == 0:
                break
            sub = data.take(idx)
            su, sd, sf = u[idx], d[idx], f[idx]
            change = torch.zeros(idx.numel(), dtype=torch.float64, device=u.device)
            for j in range(k_all):
                keep = [i for i in range(k_all) if i != j]
                nu, nd, nf = self.refine(sub, su[:, j], sd[:, j], sf[:, j], su[:, keep], sd[:, keep], sf[:, keep])
                change = torch.maximum(change, torch.stack([
                    (nd - sd[:, j]).abs() / g.range_res, (nf - sf[:, j]).abs() / g.doppler_res,
                    (nu - su[:, j]).abs() / g.u_res]).amax(0))
                su[:, j], sd[:, j], sf[:, j] = nu, nd, nf
            u[idx], d[idx], f[idx] = su, sd, sf
            active[idx] = change >= CONVERGED
        return u, d, f


def _pinv(gram: torch.Tensor) -> torch.Tensor:
    """Pseudo-inverse [P, K, K] with numpy's default cut-off (1e-15 of the largest singular value)."""
    return torch.linalg.pinv(gram, rtol=1e-15)


def _create(cfg: SystemConfig, checkpoint: str | None = None, **options) -> MonostaticEstimator:
    if checkpoint is not None:
        raise ValueError("the monostatic baseline has no checkpoint")
    return MonostaticEstimator(cfg, **options)
