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
   operations (``|a_r^H M a_t|^2 / a_t^H R_x a_t``) instead of a pass over the data; for collinear arrays (the
   paper's BS: u_tx = -u) only its Mr + Nt - 1 co-array sums are needed. A final cyclic polish of all targets
   (``refine_rounds`` rounds, per scene stopped once nothing moves by 1e-5 of a cell) ends it.
4. Fusion: ``g = p + (d / 2) e(u)`` with ``d`` the round-trip range, clipped to the area. Only the radial velocity
   ``lambda f_D / 2`` is observable by one BS: velocities are NaN (paper Fig. 6(b)); :meth:`detections` returns the
   AoA cosines, ranges and Dopplers. ``fronthaul_bits_per_ap = 0`` (one BS, no fronthaul).

Results equal the reference's up to floating-point rounding (different summation orders; ``tests/test_monostatic.py``
states the tolerance). The cube only ranks grid cells and is computed in single precision (matmul DFTs for short
axes, FFTs for long ones); its local maxima are searched in the best (angle, range) rows first, widening until the
result is provably that of the full 3 x 3 x 3 max filter. Everything runs on the inputs' device (or ``device=``);
memory is bounded by chunking the batch (:meth:`MonostaticEstimator.default_chunk_size`) and by computing the cube
in blocks of angles (``paper`` preset: 2 scenes per chunk, peak RSS 1.75 GiB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
from . import Estimate, register_without_checkpoint
from .base import BatchedEstimator, check_inputs, check_int_options

__all__ = ["MonostaticDetections", "MonostaticEstimator"]

ZOOM_POINTS = 5  # candidates per axis and zoom iteration (as the reference)
ZOOM_ITERS = 14  # halvings of the zoom window
TWO_PI = 2.0 * math.pi
SCALES = (1.0, 0.5, 0.25)  # zoom windows of the alternating refinement, in grid steps
CONVERGED = 1e-5  # a polish round moving no parameter by more than this fraction of a cell stops the polish
CUBE_BLOCK_CELLS = 2**23  # complex cells of the largest cube intermediate per angle block
CUBE_DTYPE = torch.complex64  # precision of the cube's DFTs: it only ranks grid cells (the refinement is complex128)
DFT_MATMUL_MAX = 2**14  # an axis of the cube is a matmul DFT up to (input x output) length products this size, else FFT
PEAK_ROWS = 128  # (angle, range) rows of the cube searched for local maxima before the full max filter
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
    """One batch of P problems: echoes ``y`` [P, Mr, Ns Ts], signals ``x`` [P, Nt, Ns Ts] and ``xc = conj(x)``
    (complex), and the transmit covariance ``rx = X X^H`` [P, Nt, Nt] (``||a_t^H x||^2 = a_t^H R_x a_t``).

    For collinear arrays (:meth:`_Kernels.data`) also the co-array products ``lags`` [P, Mr + Nt - 1, Ns Ts] and
    the endfire transmit beams ``edge`` [P, Ns Ts, 2] (else None)."""

    y: torch.Tensor
    x: torch.Tensor
    xc: torch.Tensor
    rx: torch.Tensor
    lags: torch.Tensor | None = None
    edge: torch.Tensor | None = None

    @classmethod
    def of(cls, y: torch.Tensor, x: torch.Tensor) -> _Data:
        """From y [P, Mr, Ns, Ts] and x [P, Nt, Ns, Ts]."""
        xf = x.flatten(2)
        xc = xf.conj().resolve_conj()
        return cls(y.flatten(2), xf, xc, xf @ xc.transpose(1, 2))

    def _map(self, fn) -> _Data:
        return _Data(*(None if t is None else fn(t) for t in (self.y, self.x, self.xc, self.rx, self.lags,
                                                               self.edge)))

    def take(self, idx: torch.Tensor) -> _Data:
        return self._map(lambda t: t[idx])

    def repeat(self, c: int) -> _Data:
        """Every problem ``c`` times in a row (problem p*c + j is a copy of p)."""
        return self._map(lambda t: t.repeat_interleave(c, 0))


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
        check_int_options(oversample=(oversample, 1), angle_oversample=(angle_oversample, 1),
                          refine_rounds=(refine_rounds, 0), n_candidates=(n_candidates, 1))
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
        """Scenes per chunk so that the single-precision cube and the candidates' working copies of the data (y, x,
        conj(x), co-array lags, about three copies in flight) stay within about :data:`CHUNK_BYTES` (2 GiB): 2
        scenes at the ``paper`` preset (measured peak RSS 1.3 GiB), hundreds at ``quick``."""
        cfg = self.cfg
        k = self.kernels(torch.device("cpu"))
        real = 8 if self.dtype == torch.complex128 else 4
        cube = 4 * k.u_grid.numel() * k.n_range * k.n_doppler
        rows = 2 * cfg.n_rx_antennas + 3 * cfg.n_tx_antennas
        data = 2 * real * rows * cfg.n_subcarriers * cfg.n_symbols
        return max(1, CHUNK_BYTES // (cube + 3 * self.n_candidates * data))

    # ------------------------------------------------------------------ stages
    def ap_messages(self, y: torch.Tensor, x: torch.Tensor) -> MonostaticDetections:
        """The BS's detections from y [b, 1, Mr, Ns, Ts] and x [b, 1, Nt, Ns, Ts] (module docstring, steps 1-3)."""
        k = self.kernels(y.device)
        data = k.data(y[:, 0], x[:, 0])
        b, q_all, c = y.shape[0], self.cfg.n_targets, self.n_candidates
        u = d = f = torch.zeros(b, 0, dtype=torch.float64, device=y.device)
        rows = torch.arange(b, device=y.device)
        for q in range(q_all):
            residual = data.y - k.fit(data, u, d, f) if q else data.y
            cu, cd, cf, valid = k.peaks(residual, data, c)  # [b, C]
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
        cfg, dt = est.cfg, est.dtype
        self.est = est
        self.grid = g = SensingGrid.from_config(cfg, device)
        self.layout = ApLayout.from_config(cfg, device)
        self.mr, self.nt = cfg.n_rx_antennas, cfg.n_tx_antennas
        self.spacing = cfg.antenna_spacing
        f64 = dict(dtype=torch.float64, device=device)
        lu = est.angle_oversample * cfg.n_rx_antennas
        n_u = torch.fft.fftshift(torch.fft.fftfreq(lu, 1.0 / lu, **f64)).round()
        u = n_u * (1.0 / lu) / cfg.antenna_spacing  # the reference's fftshift(fftfreq(lu)) / spacing
        self.u_grid = u[u.abs() <= 1.0]
        # Receive beams a_r^H(u) [U, Mr] and the transmit steering a_t(u_tx(u)) [U, Nt] of the angle grid.
        self.grid_rx = steering_vectors(self.u_grid, self.mr, self.spacing, dt).conj().resolve_conj()
        self.grid_tx = steering_vectors(self.u_tx(self.u_grid), self.nt, self.spacing, dt)
        # Zero-padded DFT kernels of delay_doppler_spectrum: range bins d_k = k c / (L_f s_f df) (k = 0..K-1,
        # d_k <= d_max) and fft-shifted Doppler bins f_j = n_j / (L_t s_t dT); phases from exact integer products.
        self.lf, self.lt = est.oversample * cfg.n_subcarriers, est.oversample * cfg.n_symbols
        d = torch.arange(self.lf, **f64) * SPEED_OF_LIGHT / (self.lf * g.subcarrier_stride * g.df)
        self.n_range = int(torch.searchsorted(d, torch.tensor(est.d_max, **f64), right=True))
        self.d_grid = d[:self.n_range]
        n_j = torch.fft.fftshift(torch.fft.fftfreq(self.lt, 1.0 / self.lt, **f64)).round().long()
        self.f_grid = n_j.double() * (1.0 / (self.lt * (g.symbol_stride * g.dT)))
        self.n_doppler = self.lt
        i = torch.arange(cfg.n_subcarriers, device=device)
        t = torch.arange(cfg.n_symbols, device=device)
        k = torch.arange(self.n_range, device=device)
        self.dft_range = _unit(TWO_PI / self.lf * ((k[:, None] * i) % self.lf).double(), CUBE_DTYPE)  # [K, Ns]
        dft = _unit(-TWO_PI / self.lt * ((t[:, None] * n_j) % self.lt).double(), CUBE_DTYPE)  # [Ts, L]
        dft = dft * (self.f_grid.abs() <= est.f_max)  # Dopplers beyond the prior zeroed
        # The Doppler DFT as one real matrix [2 Ts, 2 L] acting on interleaved (re, im) rows: out = [Re S | Im S].
        self.dft_doppler = torch.stack([torch.cat([dft.real, dft.imag], 1), torch.cat([-dft.imag, dft.real], 1)],
                                       1).reshape(2 * cfg.n_symbols, 2 * self.lt)
        # Long axes use FFTs instead (paper preset): the Doppler shift of fftshift as a modulation of the input.
        self.fft_range = cfg.n_subcarriers * self.n_range > DFT_MATMUL_MAX
        self.fft_doppler = cfg.n_symbols * self.lt > DFT_MATMUL_MAX
        self.shift = _unit(TWO_PI / self.lt * ((t * (self.lt // 2)) % self.lt).double(), CUBE_DTYPE)  # [Ts]
        self.f_keep = self.f_grid.abs() <= est.f_max
        self.h_u = 1.0 / (est.angle_oversample * self.mr * self.spacing)
        self.h_d = g.range_res / est.oversample
        self.h_f = g.doppler_res / est.oversample
        self.offs = torch.linspace(-1.0, 1.0, ZOOM_POINTS, **f64)
        # Collinear arrays (axis_t = sigma axis_r, as the paper's BS): u_tx = sigma u, so the angle objective
        # a_r^H(c) M a_t(sigma c) only depends on the co-array lags r - sigma l (Mr + Nt - 1 instead of Mr Nt terms).
        ax_r, ax_t = self.layout.rx_axes[0], self.layout.tx_axes[0]
        dot, cross = float(ax_t @ ax_r), float(ax_t[1] * ax_r[0] - ax_t[0] * ax_r[1])
        self.sigma = (1 if dot > 0 else -1) if abs(cross) < 1e-12 and abs(abs(dot) - 1.0) < 1e-12 else None
        if self.sigma is not None:
            lag = torch.arange(self.mr, device=device)[:, None] - self.sigma * torch.arange(self.nt, device=device)
            self.lag_index = lag - lag.min()  # [Mr, Nt] -> co-array slot
            self.lag = (torch.arange(self.mr + self.nt - 1, device=device) + lag.min()).double()
        # Zoom grids relative to the current point: exp(+j 2 pi i h o df / c) [scales, iters, G, Ns] and
        # exp(-j 2 pi t h o dT) [scales, iters, Ts, G] for the halving half-widths h of every scale.
        halve = 0.5 ** torch.arange(ZOOM_ITERS, **f64)
        sc = torch.tensor(SCALES, **f64)
        hd = (self.h_d * sc[:, None] * halve)[..., None] * self.offs  # [S, I, G]
        hf = (self.h_f * sc[:, None] * halve)[..., None] * self.offs
        self.zoom_hd, self.zoom_hf = hd, hf
        self.zoom_d = delay_phase(g, hd).conj().to(dt)
        self.zoom_f = doppler_phase(g, hf).conj().to(dt).transpose(-1, -2)

    def data(self, y: torch.Tensor, x: torch.Tensor) -> _Data:
        """The problems of y [P, Mr, Ns, Ts], x [P, Nt, Ns, Ts], with the co-array products for collinear arrays:
        ``lags[m] = sum_{r - sigma l = m} y_r conj(x_l)`` and ``edge = a_t(u_tx(+-1))^T conj(x)``."""
        data = _Data.of(y, x)
        if self.sigma is None:
            return data
        lags = torch.zeros(data.y.shape[0], self.lag.numel(), data.y.shape[2], dtype=y.dtype, device=y.device)
        for n in range(self.nt):
            lags.index_add_(1, self.lag_index[:, n], data.y * data.xc[:, n:n + 1])
        at_edge = steering_vectors(self.u_tx(torch.tensor([1.0, -1.0], dtype=torch.float64, device=y.device)),
                                   self.nt, self.spacing, y.dtype)
        data.lags, data.edge = lags, (at_edge @ data.xc).transpose(1, 2)
        return data

    # ------------------------------------------------------------------ geometry / signatures
    def u_tx(self, u: torch.Tensor) -> torch.Tensor:
        """AoD cosine of the direction with AoA cosine ``u`` (co-located arrays; ``u`` clipped to [-1, 1])."""
        lay = self.layout
        return (aoa_direction(u, lay.rx_axes[0], lay.rx_side[0]) * lay.tx_axes[0]).sum(-1)

    def beams(self, u: torch.Tensor, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Receive and transmit steering vectors a_r(u) [..., Mr] and a_t(u_tx(u)) [..., Nt] for cosines u [...]."""
        return (steering_vectors(u, self.mr, self.spacing, dt),
                steering_vectors(self.u_tx(u), self.nt, self.spacing, dt))

    def parts(self, data: _Data, u: torch.Tensor, d: torch.Tensor, f: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Kronecker factors of the unit-amplitude signatures (Eq. 6, co-located arrays) of targets [P, K]:
        ``a`` = a_r(u) [P, K, Mr] and ``s`` = path_phase(d, f) * a_t^H(u_tx) x [P, K, Ns * Ts]; the signature is
        ``a[r] s[i, t]``."""
        a, at = self.beams(u, data.y.dtype)
        return a, path_phase(self.grid, d, f).to(data.y.dtype).flatten(2) * (at.conj() @ data.x)

    def _normal(self, data: _Data, a: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gram ``S^H S`` [P, K, K] and ``S^H y`` [P, K] of signatures with factors a [P, K, Mr], s [P, K, Ns Ts]."""
        sc = s.conj()
        gram = (a.conj() @ a.transpose(1, 2)) * (sc @ s.transpose(1, 2))
        return gram, (sc * (a.conj() @ data.y)).sum(-1)

    def fit(self, data: _Data, u: torch.Tensor, d: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """The joint least-squares fit of the targets' amplitudes: the fitted signal [P, Mr, Ns Ts]."""
        a, s = self.parts(data, u, d, f)
        gram, rhs = self._normal(data, a, s)
        amps = (_pinv(gram) @ rhs[..., None])[..., 0]
        return (a * amps[..., None]).transpose(1, 2) @ s

    def residual_norm(self, data: _Data, u: torch.Tensor, d: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """``||y - fit||`` [P] float64 of targets [P, K]."""
        return torch.view_as_real(data.y - self.fit(data, u, d, f)).square().sum((1, 2, 3)).sqrt().double()

    # ------------------------------------------------------------------ detection
    def cube(self, r: torch.Tensor, data: _Data) -> torch.Tensor:
        """The angle x range x Doppler cube [P, U, K, L] (real) of data r [P, Mr, Ns Ts]: ``|S|^2 / ||b_u||^2`` with
        ``S`` the zero-padded 2-D DFT (matmuls, or FFTs for long axes) of ``(a_r^H(u) r) conj(b_u)``, in blocks of
        angles."""
        p, ns, ts = r.shape[0], self.est.cfg.n_subcarriers, self.est.cfg.n_symbols
        n_u = self.u_grid.numel()
        energy = ((self.grid_tx.conj() @ data.rx) * self.grid_tx).sum(-1).real  # ||b_u||^2 = a_t^H R_x a_t [P, U]
        # GLRT normalisation, and the data's norm divided out so that the single-precision cube is <= 1 (the scale
        # of a problem's cube does not change its local maxima or their order).
        norm = torch.view_as_real(r).square().sum((1, 2, 3)).sqrt().clamp_min(1e-300)[:, None]
        scale = energy.clamp_min(1e-300).rsqrt().to(CUBE_DTYPE)[..., None]
        r, xc = (r / norm[..., None]).to(CUBE_DTYPE), data.xc.to(CUBE_DTYPE)
        grid_rx, grid_tx = self.grid_rx.to(CUBE_DTYPE), self.grid_tx.to(CUBE_DTYPE)
        cube = torch.empty(p, n_u, self.n_range, self.n_doppler, dtype=self.dft_doppler.dtype, device=r.device)
        block = max(1, CUBE_BLOCK_CELLS // (p * max(self.lf * ts, self.n_range * self.n_doppler)))
        for lo in range(0, n_u, block):
            sl = slice(lo, lo + block)
            z = (grid_rx[sl] @ r) * (grid_tx[sl] @ xc) * scale[:, sl]  # [P, u, Ns Ts]
            z = z.view(p, -1, ns, ts)
            if self.fft_range:  # range DFT [P, u, K, Ts]
                s1 = torch.fft.ifft(z.transpose(-1, -2).contiguous(), n=self.lf, dim=-1, norm="forward")
                s1 = s1[..., :self.n_range].transpose(-1, -2).contiguous()
            else:
                s1 = self.dft_range @ z
            if self.fft_doppler:
                s = torch.view_as_real(torch.fft.fft(s1 * self.shift, n=self.lt, dim=-1))
                re, im = s[..., 0], s[..., 1]
            else:
                s = torch.view_as_real(s1.contiguous()).view(*s1.shape[:-1], 2 * ts) @ self.dft_doppler  # [.., 2 L]
                re, im = s[..., :self.n_doppler], s[..., self.n_doppler:]
            torch.addcmul(re * re, im, im, out=cube[:, sl])
        if self.fft_doppler and not self.f_keep.all():
            cube[..., ~self.f_keep] = 0.0
        return cube

    def peaks(self, r: torch.Tensor, data: _Data, top: int,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``top`` highest local maxima (3 x 3 x 3 max filter, angle axis wrapping for a half-wavelength array)
        of the cube of data r [P, Mr, Ns Ts]: their (u, d, f) [P, top] float64 and ``valid`` [P, top] (False where
        the cube has fewer maxima).

        Exact search without a full max filter: the local maxima are sought among the cells of the ``n`` (angle,
        range) rows with the highest maxima (``n`` = :data:`PEAK_ROWS`); a problem whose ``top``-th maximum found
        is not above the best row left out is searched again with 4 n rows, until it is (or all rows are in). Within
        the rows only the best Doppler-row maxima get the 26-neighbour test (enough of them that the ``top`` found
        are above all others)."""
        cube = self.cube(r, data)
        p, n_u, n_k, n_l = cube.shape
        flat = cube.view(p, -1)
        rowmax = cube.amax(-1).view(p, -1)
        n_all = rowmax.shape[1]
        top = min(top, flat.shape[1])
        pv = torch.full((p, top), -math.inf, dtype=cube.dtype, device=r.device)
        idx = torch.zeros((p, top), dtype=torch.long, device=r.device)
        todo = torch.arange(p, device=r.device)
        n_rows = min(n_all, max(PEAK_ROWS, -(-top // n_l)))
        n_cand = 8 * top
        while todo.numel():
            rv, rows = rowmax[todo].topk(min(n_rows + 1, n_all), dim=1)
            vals = cube.view(p, n_u * n_k, n_l)[todo[:, None], rows[:, :n_rows]]  # [S, rows, L]
            # Prefilter: a local maximum is one along its Doppler row; the best of those get the full test.
            pre = torch.ones_like(vals, dtype=torch.bool)
            pre[..., 1:] &= vals[..., 1:] >= vals[..., :-1]
            pre[..., :-1] &= vals[..., :-1] >= vals[..., 1:]
            n_cand = min(vals[0].numel(), max(n_cand, 2 * n_rows))
            v, i = torch.where(pre, vals, -math.inf).view(todo.numel(), -1).topk(n_cand, dim=1)
            cells = rows.gather(1, i // n_l) * n_l + i % n_l
            v, i = torch.where(self._is_peak(flat, todo, cells, v, (n_u, n_k, n_l)), v, -math.inf).topk(top, dim=1)
            done = v[:, -1] > (rv[:, -1] if n_rows < n_all else -math.inf)
            if n_rows == n_all and n_cand == vals[0].numel():
                done[:] = True
            pv[todo[done]], idx[todo[done]] = v[done], cells.gather(1, i)[done]
            todo, n_rows, n_cand = todo[~done], min(n_all, 4 * n_rows), 4 * n_cand
        ia, ik, ij = idx // (n_k * n_l), (idx // n_l) % n_k, idx % n_l
        return self.u_grid[ia], self.d_grid[ik], self.f_grid[ij], pv > -math.inf

    def _is_peak(self, flat: torch.Tensor, sel: torch.Tensor, cells: torch.Tensor, vals: torch.Tensor,
                 shape: tuple[int, int, int]) -> torch.Tensor:
        """Whether the cells ``cells`` [S, C] (values ``vals``) of the cubes ``flat[sel]`` are >= all 26 neighbours
        (as the reference's ``maximum_filter(size=3) == cube``: 'wrap' on the angle axis if periodic, 'nearest'
        elsewhere)."""
        n_u, n_k, n_l = shape
        ia, ik, ij = cells // (n_k * n_l), (cells // n_l) % n_k, cells % n_l
        ok = torch.ones_like(cells, dtype=torch.bool)
        sel = sel[:, None]
        for da in (-1, 0, 1):
            na = ia + da
            va = torch.ones_like(ok) if self.est.periodic else (na >= 0) & (na < n_u)
            na = na % n_u
            for dk in (-1, 0, 1):
                nk = ik + dk
                vk = va & (nk >= 0) & (nk < n_k)
                base = (na * n_k + nk.clamp(0, n_k - 1)) * n_l
                for dj in (-1, 0, 1):
                    if da == dk == dj == 0:
                        continue
                    nj = ij + dj
                    v = vk & (nj >= 0) & (nj < n_l)
                    ok &= (flat[sel, base + nj.clamp(0, n_l - 1)] <= vals) | ~v
        return ok

    # ------------------------------------------------------------------ refinement
    def refine(self, data: _Data, u: torch.Tensor, d: torch.Tensor, f: torch.Tensor, ou: torch.Tensor,
               od: torch.Tensor, of: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Continuous refinement of one target (u, d, f) [P] with the others (ou, od, of) [P, K] projected out:
        range-Doppler then angle, alternately, at the window scales :data:`SCALES` (reference ``_refine``).

        With the others' signature factors ``oa`` [P, K, Mr], ``os`` [P, K, Ns Ts], their Gram ``G`` and ``w = G^-1
        O^H y``, the objectives are the energy the target explains orthogonally to them (alternating projection)."""
        dt = data.y.dtype
        proj = None
        if ou.shape[1]:
            oa, os_ = self.parts(data, ou, od, of)
            gram, o_r = self._normal(data, oa, os_)
            ginv = _pinv(gram)
            proj = (oa, os_, ginv, (ginv @ o_r[..., None])[..., 0])
        xh = data.xc.transpose(1, 2)  # conj(x)^T [P, Ns Ts, Nt]
        for s in range(len(SCALES)):
            a, at = self.beams(u, dt)
            bc = (at[:, None] @ data.xc)[:, 0]  # conj(b) = conj(a_t^H x) [P, Ns Ts]
            r = (a.conj()[:, None] @ data.y)[:, 0]  # a_r^H y
            zo = None
            if proj is not None:  # the others in this receive beam, times conj(b)
                zo = (proj[0] @ a.conj()[..., None]) * proj[1] * bc[:, None]
            d, f = self._zoom_range_doppler(s, r * bc, zo, (bc.real**2 + bc.imag**2).sum(-1), proj, d, f)
            ph = path_phase(self.grid, d, f).conj().to(dt).flatten(1)  # [P, Ns Ts]
            xph = xh * ph[..., None] if proj is not None or data.lags is None else None
            v = None if proj is None else proj[1] @ xph  # [P, K, Nt]
            if data.lags is None:
                m = data.y @ xph  # M [P, Mr, Nt]
            else:  # M summed over the co-array lags [P, lags], and M a_t(u_tx(+-1)) [P, Mr, 2]
                m = ((data.lags @ ph[..., None])[..., 0], data.y @ (data.edge * ph[..., None]))
            u = self._zoom_angle(s, data, m, v, proj, u)
        return u, d, f

    def _zoom_range_doppler(self, s: int, z: torch.Tensor, zo: torch.Tensor | None, en: torch.Tensor,
                            proj: tuple | None, d: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """5 x 5 zoom maximisation of ``|s^H P r|^2 / s^H P s`` over (d, f) [P] at scale index ``s`` (reference
        ``refine_delay_doppler`` with a fixed beam): ``z`` = r conj(b) [P, Ns Ts], ``zo`` = o_k conj(b)
        [P, K, Ns Ts] (beam-space other signatures), ``en`` = ||b||^2 [P]."""
        p, dt, g = z.shape[0], z.dtype, ZOOM_POINTS
        ns, ts = self.est.cfg.n_subcarriers, self.est.cfg.n_symbols
        z = z.view(p, ns, ts)
        if zo is not None:
            zo = zo.view(p, -1, ns, ts)
            _, _, ginv, w = proj
        en = en[:, None, None]
        for it in range(ZOOM_ITERS):
            ed = delay_phase(self.grid, d).conj().to(dt)[:, None, :] * self.zoom_d[s, it]  # [P, G, Ns]
            ef = doppler_phase(self.grid, f).conj().to(dt)[:, :, None] * self.zoom_f[s, it]  # [P, Ts, G]
            num = ed @ (z @ ef)  # s^H r [P, G, G]
            den = en
            if zo is not None:
                c = ed[:, None] @ (zo @ ef[:, None])  # s^H o_k [P, K, G, G]
                num = num - (c * w[..., None, None]).sum(1)
                quad = (torch.einsum("pkab,pkl->plab", c, ginv) * c.conj()).sum(1).real
                den = torch.maximum(en - quad, 1e-12 * en)
            obj = (num.real**2 + num.imag**2) / den.clamp_min(1e-300)
            best = obj.view(p, -1).argmax(1)
            d = d + self.zoom_hd[s, it, best // g]
            f = f + self.zoom_hf[s, it, best % g]
        return d, f

    def _zoom_angle(self, s: int, data: _Data, m: torch.Tensor | tuple, v: torch.Tensor | None,
                    proj: tuple | None, u: torch.Tensor) -> torch.Tensor:
        """5-point zoom maximisation over the AoA cosine u [P] at scale index ``s`` of ``|n - c^T w|^2 / (||b||^2 -
        c^H G^-1 c)``, ``n = a_r^H M a_t`` (``M = sum_{i,t} conj(ph) y conj(x)^T`` [P, Mr, Nt] at the refined range
        and Doppler), ``||b||^2 = a_t^H R_x a_t``, ``c_k = (a_r^H a_k)(a_t^T v_k)`` the other targets' terms (``v``
        [P, K, Nt]); u wraps into [-1, 1) for a half-wavelength array (reference ``zoom_maximize`` of ``obj_u``).
        ``m`` = (co-array sums, endfire products) for collinear arrays: ``n = sum_m e^{j 2 pi spacing c m} M_m /
        sqrt(Mr Nt)`` for |c| <= 1, ``a_r^H (M a_t(u_tx(+-1)))`` beyond (u_tx is clipped there)."""
        rows = torch.arange(u.numel(), device=u.device)
        h = self.h_u * SCALES[s]
        for _ in range(ZOOM_ITERS):
            cand = u[:, None] + h * self.offs  # [P, G]
            if not self.est.periodic:
                cand = cand.clamp(-1.0, 1.0)
            ar, at = self.beams(cand, data.y.dtype)  # [P, G, Mr], [P, G, Nt]
            arc = ar.conj()
            if isinstance(m, tuple):
                co = _unit(TWO_PI * self.spacing * cand[..., None] * self.lag, data.y.dtype)  # [P, G, lags]
                num = (co @ m[0][..., None])[..., 0] / math.sqrt(self.mr * self.nt)
                if self.est.periodic:
                    edge = arc @ m[1]  # [P, G, 2]
                    num = torch.where(cand > 1.0, edge[..., 0], torch.where(cand < -1.0, edge[..., 1], num))
            else:
                num = ((arc @ m) * at).sum(-1)
            en = ((at.conj() @ data.rx) * at).sum(-1).real
            if proj is not None:
                oa, _, ginv, w = proj
                cs = (arc @ oa.transpose(1, 2)) * (at @ v.transpose(1, 2))  # [P, G, K]
                num = num - (cs @ w[..., None])[..., 0]
                en = torch.maximum(en - ((cs @ ginv) * cs.conj()).sum(-1).real, 1e-12 * en)
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


def _unit(phase: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``exp(j phase)`` in ``dtype``."""
    return torch.polar(torch.ones_like(phase), phase).to(dtype)


register_without_checkpoint("monostatic", MonostaticEstimator, "monostatic baseline")
