"""``"image"`` and ``"velocity-image"``: bistatic back-projection of the echoes of one receive AP onto a grid of
positions of the area (and, for the velocity image, of target velocities). Both need X at the receive AP, like
``"matched"`` (:mod:`cfisac.models.front_ends.matched` for that downlink), and are specific to their receive AP
(``ap_index``). Normalisation, compression and chunking as in :mod:`cfisac.models.front_ends`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from ...config import SPEED_OF_LIGHT, SystemConfig
from ...geometry import bistatic_geometry, steering_vectors
from ...physics import SensingGrid, delay_phase
from ...sensing import sensing_indices
from .base import (
    DEFAULT_CHUNK_CELLS,
    FrontEnd,
    abs2,
    check_bins,
    check_options,
    check_x,
    check_y,
    doppler_matrix,
    register_front_end,
    velocity_grid,
    working_cells,
)

VELOCITY_PHASE_CELLS = 2**22  # the velocity image keeps its pixels' velocity phases as buffers up to this size
WINDOWS = ("none", "hann", "taylor")


def taper(name: str, n: int) -> torch.Tensor:
    """The amplitude taper ``name`` over n samples, scaled to unit root-mean-square (so the noise of a tapered sum
    keeps its variance), [n] float64. ``"none"``: ones. ``"hann"``: sin^2(pi (k + 1) / (n + 1)), k = 0..n-1 (the Hann
    window without its zero end points; peak sidelobe -31 dB against -13 dB, main lobe ~1.6x wider).
    ``"taylor"``: :func:`scipy.signal.windows.taylor` with nbar = 4 and -30 dB sidelobes (main lobe ~1.3x wider)."""
    if name not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {name!r}")
    k = torch.arange(n, dtype=torch.float64)
    if name == "none":
        w = torch.ones(n, dtype=torch.float64)
    elif name == "hann":
        w = torch.sin(math.pi * (k + 1) / (n + 1)) ** 2
    else:
        from scipy.signal.windows import taylor

        w = torch.from_numpy(taylor(n, nbar=4, sll=30, norm=False)).double() if n > 1 else torch.ones(1).double()
    return w / w.square().mean().sqrt()


def _linear_phases(u: torch.Tensor, v: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """e^{j u_g v_l phi_t} [g, V, Ts] complex128 from u [g], v [V], phi [Ts] (float64), as cos + j sin (2x cheaper
    than torch.polar on a CPU)."""
    ang = u[:, None, None] * v[None, :, None] * phi
    return torch.complex(torch.cos(ang), torch.sin(ang))



def _beam_power(weights: torch.Tensor, x: torch.Tensor, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """mean_{i,t} |s[i, t]|^2 of every beam signal s = sum_k weights[..., k] x[:, k, i, t], as the quadratic form
    w^T R w^* with R = mean_{i,t} x x^H the sample covariance of x [b, Nt, Ns, Ts] (O(Nt^2 Ns Ts) once instead of
    touching every beam signal). ``weights`` [..., Nt] -> [b, ...] real. ``sample_weights`` [Ns, Ts] (real, >= 0):
    the weighted mean sum_{i,t} omega_it |s[i, t]|^2 / sum omega instead."""
    if sample_weights is not None:
        x = x * (sample_weights / sample_weights.mean()).sqrt().to(x.real.dtype)
    xf = x.reshape(x.shape[0], x.shape[1], -1)
    cov = torch.matmul(xf, xf.mH) / xf.shape[-1]  # [b, Nt, Nt]
    w = weights.reshape(-1, weights.shape[-1])  # [P, Nt]
    p = torch.einsum("pk,bkl,pl->bp", w, cov, w.conj()).real.clamp_min(0.0)
    return p.reshape(x.shape[0], *weights.shape[:-1])



# --------------------------------------------------------------------------------------------------- image
def _default_pixels(cfg: SystemConfig) -> tuple[int, int]:
    """(Gx, Gy) with Gx Gy = Mr Ns (the raw grid's first two sizes), Gx the largest divisor <= sqrt(Mr Ns)."""
    p = cfg.n_rx_antennas * cfg.n_subcarriers
    gx = max(d for d in range(1, math.isqrt(p) + 1) if p % d == 0)
    return gx, p // gx


def _image_constants(
    cfg: SystemConfig, m: int, pixels: tuple[int, int], d3: int, window: str = "none"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Pixel grid and per-pixel beams / bistatic delay phases of :class:`ImageFrontEnd` for receive AP m, with the
    tapers of ``window`` over receive antennas, transmit antennas and subcarriers folded in (and the subcarriers' and
    symbols' tapers as ``subcarrier_window``, ``symbol_window`` for the noise scale and the symbol sum)."""
    (x0, x1), (y0, y1) = cfg.area
    gx, gy = pixels
    f64, cdt = torch.float64, torch.complex128
    xs = x0 + (torch.arange(gx, dtype=f64) + 0.5) * (x1 - x0) / gx
    ys = y0 + (torch.arange(gy, dtype=f64) + 0.5) * (y1 - y0) / gy
    pts = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(1, -1, 2)  # [1, G, 2], x-major
    geo = bistatic_geometry(cfg, pts, torch.zeros_like(pts))
    if bool((geo.tx.distance < 1e-6).any()) or bool((geo.rx.distance < 1e-6).any()):
        raise ValueError("a pixel centre coincides with an AP; choose another pixel grid")
    vels = velocity_grid(cfg, d3)
    rx = steering_vectors(geo.rx.cos_angle[0, m], cfg.n_rx_antennas, cfg.antenna_spacing, cdt).conj()  # [G, Mr]
    tx = steering_vectors(geo.tx.cos_angle[0], cfg.n_tx_antennas, cfg.antenna_spacing, cdt).conj()  # [N, G, Nt]
    rng = geo.bistatic_range[0, :, m]  # [N, G]
    delay = delay_phase(SensingGrid.from_config(cfg), rng).conj()  # e^{+j 2 pi i df d / c}: undoes Eq. (6)
    rx, tx = rx * taper(window, cfg.n_rx_antennas), tx * taper(window, cfg.n_tx_antennas)
    delay = delay * taper(window, cfg.n_subcarriers)
    grid = {"x": xs, "y": ys, "bistatic_velocity": vels}
    return grid, {"rx_weights": rx, "tx_weights": tx, "delay_phase": delay / math.sqrt(cfg.n_subcarriers),
                  "doppler_matrix": doppler_matrix(cfg, vels), "subcarrier_window": taper(window, cfg.n_subcarriers),
                  "symbol_window": taper(window, cfg.n_symbols)}


class ImageFrontEnd(FrontEnd):
    """Bistatic back-projection onto a position grid: for receive AP m, every pixel g of the area and transmit AP n,
    the matched filter of Eq. (6)'s path through g (the data removed by the beam steered at g, delay and angles of g):

        I_n[g, l] = 1 / sqrt(Ns Ts) sum_{i', t'} a_r(c_m(g))^H y_{i,m}[t] conj(a_t(c_n(g))^H x_{i,n}[t])
                    e^{+j 2 pi i df (d_n(g) + d_m(g)) / c} e^{-j 2 pi t f_l dT}

    with f_l the bistatic Doppler grid of :class:`MatchedFrontEnd`. Output |I_n| (noise-normalised like
    ``"matched"``): [B, N, Gx, Gy, D3] float32, Gx Gy = Mr Ns and D3 = Ts by default (the raw grid size: same encoder
    L, same fronthaul bits). A target appears at its own pixel in the maps of every transmit AP and, after the
    encoders, of every receive AP: the evidence of the N M bistatic pairs is aligned in the target's coordinates
    (the angle-delay-Doppler maps of ``"matched"`` place it at AP-dependent bins). The front end is specific to
    its receive AP: ``ap_index`` (m) is required. Needs X at the receive AP, like ``"matched"``.
    ``grid``: pixel centres ``x`` [Gx], ``y`` [Gy] (m) and ``bistatic_velocity`` [D3] (m/s).

    ``window`` (``"none"``, ``"hann"``, ``"taylor"``; :func:`taper`) weights the sum with unit-RMS amplitude tapers
    w_r, w_k, w_i, w_t over the receive antennas, transmit antennas, subcarriers and symbols (the classical radar
    trade: sidelobes of a strong target -31 / -30 dB instead of -13 dB, so a weak target beside it stands out, for a
    ~1.3-1.6x wider main lobe). With ``norm="noise"`` the scale becomes xi sqrt(sum_{i,t} w_i^2 w_t^2
    |a_t^H x_{i,n}[t]|^2 / sum_{i,t} w_i^2 w_t^2) (the noise's standard deviation in the tapered pixel).
    """

    name = "image"
    needs_x = True

    def __init__(
        self, cfg: SystemConfig, *, ap_index: int | None = None, norm: str = "noise",
        pixels: tuple[int, int] | None = None, doppler_bins: int | None = None, compress: str = "none",
        chunk_cells: int = DEFAULT_CHUNK_CELLS, window: str = "none",
    ) -> None:
        super().__init__()
        check_options(norm, compress, chunk_cells)
        if not isinstance(ap_index, int) or isinstance(ap_index, bool) or not 0 <= ap_index < cfg.n_rx:
            raise ValueError(f"the {self.name!r} front end is specific to its receive AP: ap_index must be an "
                             f"integer in [0, {cfg.n_rx}), got {ap_index!r}")
        if pixels is None:
            pixels = _default_pixels(cfg)
        if not (isinstance(pixels, (tuple, list)) and len(pixels) == 2):
            raise ValueError(f"pixels must be a pair (Gx, Gy), got {pixels!r}")
        gx, gy = (check_bins("pixels", v) for v in pixels)
        d3 = check_bins("doppler_bins", cfg.n_symbols if doppler_bins is None else doppler_bins)
        self.cfg, self.ap_index, self.norm, self.compress, self.chunk_cells = cfg, ap_index, norm, compress, chunk_cells
        self.window = window
        self.in_channels = cfg.n_tx
        self.spatial_shape = (gx, gy, d3)
        self._y_shape = (cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols)
        self._x_shape = (cfg.n_tx, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols)
        with torch.device("cpu"):  # see MatchedFrontEnd
            self.grid, mats = _image_constants(cfg, ap_index, (gx, gy), d3, window)
        for name, mat in mats.items():
            self.register_buffer(name, mat, persistent=False)

    def extra_repr(self) -> str:
        return (f"ap_index={self.ap_index}, grid={self.spatial_shape}, norm={self.norm!r}, "
                f"compress={self.compress!r}, window={self.window!r}")

    def _pixel_cells(self) -> int:
        """Complex cells of the largest per-pixel intermediate of one scene (sets the pixel chunk)."""
        return self.cfg.n_subcarriers * self.cfg.n_symbols

    def _products(self, y_m: torch.Tensor, x: torch.Tensor) -> Iterator[tuple[slice, slice, int, torch.Tensor]]:
        """Yields (scenes, pixels, n, p) for chunks of scenes and pixels and each transmit AP n, p [b, Ts, g] the
        delay-summed, data-removed product sum_{i'} e^{+j 2 pi i df (d_n(g) + d_m(g)) / c} / sqrt(Ns)
        a_r(c_m(g))^H y_{i,m}[t] conj(a_t(c_n(g))^H x_{i,n}[t]) (noise-normalised if ``norm="noise"``). Computed
        as r = a_r^H y (one matmul per chunk), then per n a matmul over the subcarriers of the delay-weighted r with
        conj(x_n) [Ns, Nt] per symbol and the transmit beam last (an Nt-term sum per pixel and symbol): the
        [g, Ns, Ts] transmit-beam signals are never formed."""
        check_y(y_m, self._y_shape)
        check_x(x, self._x_shape, y_m.shape[0], self.name)
        cdt = torch.complex128 if y_m.dtype == torch.complex128 else torch.complex64
        B, N, G = y_m.shape[0], self.cfg.n_tx, self.spatial_shape[0] * self.spatial_shape[1]
        like = torch.empty(0, dtype=cdt, device=y_m.device)
        rx_w, tx_w, dph = (self._const(k, like) for k in ("rx_weights", "tx_weights", "delay_phase"))
        tapered = self.window != "none"
        if tapered:  # the symbols' taper on p, and the (subcarrier, symbol) weights of the noise scale
            w_t = self.symbol_window.to(device=y_m.device, dtype=like.real.dtype)[:, None]  # [Ts, 1]
            w_i = self.subcarrier_window.to(device=y_m.device, dtype=like.real.dtype)  # [Ns]
            omega = (w_i[:, None] * w_t.T) ** 2  # [Ns, Ts]
        noise_std = math.sqrt(self.cfg.noise_watt)
        budget, per_pixel = working_cells(self.chunk_cells, y_m.device), self._pixel_cells()
        # >= 32 pixels per chunk where chunk_cells allows (small matmuls are slow), scenes per chunk to match
        least = max(1, min(G, 32, self.chunk_cells // per_pixel))
        chunk = max(1, budget // (least * per_pixel))
        for lo in range(0, B, chunk):
            sl = slice(lo, min(B, lo + chunk))
            xc = x[sl].to(device=y_m.device, dtype=cdt)
            yt = y_m[sl].to(cdt).permute(0, 3, 1, 2).contiguous()  # [b, Ts, Mr, Ns]
            xt = xc.conj().permute(0, 1, 4, 3, 2).contiguous()  # conj(x) [b, N, Ts, Ns, Nt]
            b = yt.shape[0]
            if self.norm == "noise":  # xi sqrt(mean_{i,t} |a_t(c_n(g))^H x_n|^2) [b, N, G]
                scale = torch.stack([_beam_power(tx_w[n], xc[:, n], omega if tapered else None)
                                     for n in range(N)], 1)
                scale = scale.sqrt_().mul_(noise_std).clamp_min_(1e-30)
            step = max(least, budget // (b * per_pixel))
            for g0 in range(0, G, step):
                gs = slice(g0, min(G, g0 + step))
                r = torch.matmul(rx_w[gs], yt)  # a_r(c_m(g))^H y: [b, Ts, g, Ns]
                for n in range(N):
                    u = torch.matmul(r * dph[n, gs], xt[:, n])  # [b, Ts, g, Nt]
                    p = torch.linalg.vecdot(tx_w[n, gs], u)  # sum_k conj(conj(a_t(c_n(g))))_k u_k: [b, Ts, g]
                    if tapered:
                        p = p * w_t
                    if self.norm == "noise":
                        p = p / scale[:, n, None, gs]
                    yield sl, gs, n, p

    def _doppler_shape(self) -> tuple[int, ...]:
        return (self.spatial_shape[2],)

    def _doppler_stage(self, p: torch.Tensor, n: int, gs: slice) -> torch.Tensor:
        """Sum over the symbols t of p [b, Ts, g] (transmit AP n, pixels gs) with the Doppler phases of the grid:
        [b, g, D3]."""
        return torch.matmul(p.mT, self._const("doppler_matrix", p).mT)

    def complex_map(self, y_m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The normalised complex image [B, N, Gx, Gy, *D] (complex64, or complex128 for complex128 y); D = (D3,)
        here, (Vy, Vx) for the velocity image."""
        cdt = torch.complex128 if y_m.dtype == torch.complex128 else torch.complex64
        B, N, (gx, gy) = y_m.shape[0], self.cfg.n_tx, self.spatial_shape[:2]
        out = torch.empty(B, N, gx * gy, *self._doppler_shape(), dtype=cdt, device=y_m.device)
        for sl, gs, n, p in self._products(y_m, x):
            out[sl, n, gs] = self._doppler_stage(p, n, gs)
        if self.norm == "rms":
            out = out / abs2(out).mean(tuple(range(1, out.dim())), keepdim=True).sqrt().clamp_min(1e-30)
        return out.reshape(B, N, gx, gy, *out.shape[3:])

    def forward(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        v = abs2(self.complex_map(y_m, x)).sqrt()
        if self.compress == "log":
            v = torch.log1p(v)
        return v.float()


class VelocityImageFrontEnd(ImageFrontEnd):
    """Position-velocity back-projection: the image of :class:`ImageFrontEnd` with its bistatic-Doppler axis replaced by
    the target velocity v = (v_x, v_y) itself. For a point g the bistatic Doppler of transmit AP n is
    f_n(g, v) = v . (e_n(g) + e_m(g)) f_c / c (Eq. 9-11, e the unit vectors from the APs to g), so one receive AP
    with N >= 2 transmit APs (not collinear with g) already fixes both velocity components. With p_n[g, t] the
    delay-summed, data-removed product of :class:`ImageFrontEnd`,

        V[g, k, l] = sqrt( 1/N sum_n | 1/sqrt(Ts) sum_{t'} p_n[g, t] e^{-j 2 pi t f_n(g, (vx_l, vy_k)) dT} |^2 )

    (non-coherent over the transmit APs: each path has its own random reflection phase), evaluated on a grid of
    ``velocity_bins`` = (Vx, Vy) velocities evenly spanning [-max_speed, max_speed] per axis (the prior box of the
    scenes). Output [B, Vy, Gx, Gy, Vx] float32: the Vy velocities are the encoder's input channels, the pixels and
    Vx its grid. Defaults Gx Gy = Mr Ns and Vx = Ts (the raw grid size, hence the same encoder L and fronthaul bits),
    Vy = 16. A target is a single peak at (its pixel, its velocity) in every receive AP's map: position and velocity
    are read off the grid position alike, and the decoder's fusion of the APs' latents (concatenated channels,
    Section III-C) sees the evidence of all APs aligned. Needs X at the receive AP (like ``"image"``); the pixel
    Doppler phases are built per chunk of pixels (memory bounded by ``chunk_cells``), so the paper preset fits.
    ``velocity_output="marginals"`` replaces the velocity plane by its two max-projections,

        W[0, g, k] = max_l V[g, l, k]   (the v_x profile),      W[1, g, k] = max_l V[g, k, l]   (the v_y profile),

    [B, 2, Gx, Gy, V] with V = Vx = Vy (default 16): like ``"image"``, two input channels and a grid of pixels x one
    velocity axis, but each channel's peak sits at a velocity component itself (no position-dependent bistatic
    geometry left for the decoder to undo); the pairing of v_x and v_y of one target is kept by its pixel.
    ``grid``: ``x`` [Gx], ``y`` [Gy] (m), ``velocity_x`` [Vx], ``velocity_y`` [Vy] (m/s).
    """

    name = "velocity-image"

    def __init__(
        self, cfg: SystemConfig, *, ap_index: int | None = None, norm: str = "noise",
        pixels: tuple[int, int] | None = None, velocity_bins: tuple[int, int] | None = None, compress: str = "none",
        chunk_cells: int = DEFAULT_CHUNK_CELLS, velocity_output: str = "plane", window: str = "none",
    ) -> None:
        if velocity_output not in ("plane", "marginals"):
            raise ValueError(f"velocity_output must be 'plane' or 'marginals', got {velocity_output!r}")
        if velocity_bins is None:
            velocity_bins = (cfg.n_symbols, 16 if velocity_output == "plane" else cfg.n_symbols)
        if not (isinstance(velocity_bins, (tuple, list)) and len(velocity_bins) == 2):
            raise ValueError(f"velocity_bins must be a pair (Vx, Vy), got {velocity_bins!r}")
        vx_n, vy_n = (check_bins("velocity_bins", v) for v in velocity_bins)
        if velocity_output == "marginals" and vx_n != vy_n:
            raise ValueError(f"velocity_output='marginals' needs as many v_x as v_y bins (one velocity axis), got "
                             f"velocity_bins={tuple(velocity_bins)!r}")
        super().__init__(cfg, ap_index=ap_index, norm=norm, pixels=pixels, doppler_bins=vx_n, compress=compress,
                         chunk_cells=chunk_cells, window=window)
        self.velocity_output = velocity_output
        self.velocity_bins = (vx_n, vy_n)
        self.in_channels = vy_n if velocity_output == "plane" else 2
        f64 = torch.float64
        with torch.device("cpu"):
            vx, vy = (torch.linspace(-cfg.max_speed, cfg.max_speed, k, dtype=f64) if k > 1 else
                      torch.zeros(1, dtype=f64) for k in (vx_n, vy_n))
            xs, ys = self.grid["x"], self.grid["y"]
            pts = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(1, -1, 2)
            geo = bistatic_geometry(cfg, pts, torch.zeros_like(pts))
            u = geo.tx.direction[0] + geo.rx.direction[0, ap_index][None]  # [N, G, 2] = e_n(g) + e_m(g)
            _, t_idx = sensing_indices(cfg)
        self.grid = {"x": xs, "y": ys, "velocity_x": vx, "velocity_y": vy}
        # -2 pi dT f_c / c t: the Doppler phase per unit of v . u at every sensing symbol t [Ts].
        scale = -2 * math.pi * cfg.symbol_duration * cfg.carrier_frequency / SPEED_OF_LIGHT
        self.register_buffer("phase_per_mps", scale * t_idx.to(f64), persistent=False)
        self.register_buffer("bistatic_directions", u, persistent=False)
        self.register_buffer("velocity_x", vx, persistent=False)
        self.register_buffer("velocity_y", vy, persistent=False)

        # The pixels' velocity phases [N, G, V, Ts] are kept when small (quick: 16 MB), else built per pixel chunk.
        small = cfg.n_tx * u.shape[1] * (vx_n + vy_n) * cfg.n_symbols <= VELOCITY_PHASE_CELLS
        with torch.device("cpu"):
            phases = [self._phases(n, slice(None), torch.device("cpu")) for n in range(cfg.n_tx)] if small else None
        self.register_buffer("velocity_phase_x", torch.stack([p[0] for p in phases]) if small else None,
                             persistent=False)
        self.register_buffer("velocity_phase_y", torch.stack([p[1] for p in phases]) if small else None,
                             persistent=False)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", velocity_output={self.velocity_output!r}"

    def _pixel_cells(self) -> int:
        vx_n, vy_n = self.velocity_bins
        return max(self.cfg.n_subcarriers * self.cfg.n_symbols, vy_n * max(self.cfg.n_symbols, vx_n))

    def _doppler_shape(self) -> tuple[int, ...]:
        return self.velocity_bins[::-1]  # (Vy, Vx)

    def _phases(self, n: int, gs: slice, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """e^{-j 2 pi t (vx ux(g)) fc dT / c} / sqrt(Ts) [g, Vx, Ts] and e^{-j 2 pi t (vy uy(g)) fc dT / c}
        [g, Vy, Ts] of transmit AP n (u = e_n(g) + e_m(g)), complex128."""
        f64 = torch.float64
        phi = self.phase_per_mps.to(device=device, dtype=f64)
        u = self.bistatic_directions[n, gs].to(device=device, dtype=f64)  # [g, 2]
        vx, vy = self.velocity_x.to(device), self.velocity_y.to(device)
        return _linear_phases(u[:, 0], vx, phi) / math.sqrt(phi.shape[0]), _linear_phases(u[:, 1], vy, phi)

    def _doppler_stage(self, p: torch.Tensor, n: int, gs: slice) -> torch.Tensor:
        return self._velocity_plane(p, n, gs).transpose(0, 1)

    def _velocity_plane(self, p: torch.Tensor, n: int, gs: slice) -> torch.Tensor:
        """p [b, Ts, g] of transmit AP n -> sum_t p e^{-j 2 pi t f_n(g, v) dT} / sqrt(Ts) on the velocity grid,
        [g, b, Vy, Vx] (pixel-major); the phase factorises as e^{j phi_t vx ux(g)} e^{j phi_t vy uy(g)}: one matmul
        per pixel of the ey-weighted products [b Vy, Ts] with ex [Ts, Vx]."""
        if self.velocity_phase_x is not None:
            ex, ey = self._const("velocity_phase_x", p)[n, gs], self._const("velocity_phase_y", p)[n, gs]
        else:
            ex, ey = (v.to(p.dtype) for v in self._phases(n, gs, p.device))
        b, Ts, g = p.shape
        vy_n, vx_n = self._doppler_shape()
        pe = p.permute(2, 0, 1)[:, :, None, :] * ey[:, None]  # [g, b, Vy, Ts]
        c = torch.matmul(pe.reshape(g, b * vy_n, Ts), ex.mT)  # [g, b Vy, Vx]
        return c.reshape(g, b, vy_n, vx_n)

    def forward(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        rdt = torch.float64 if y_m.dtype == torch.complex128 else torch.float32
        B, N, (gx, gy) = y_m.shape[0], self.cfg.n_tx, self.spatial_shape[:2]
        vy_n, vx_n = self._doppler_shape()
        acc = torch.zeros(B, gx * gy, vy_n, vx_n, dtype=rdt, device=y_m.device)  # sum_n |map_n|^2
        for sl, gs, n, p in self._products(y_m, x):
            acc[sl, gs] += abs2(self._velocity_plane(p, n, gs)).transpose(0, 1)
        acc = acc.div_(N)
        # norm="rms": the complex map divided by its root-mean-square over (n, pixels, velocities)
        rms = acc.mean((1, 2, 3)).sqrt().clamp_min(1e-30).reshape(B, 1, 1, 1) if self.norm == "rms" else None
        if self.velocity_output == "marginals":  # [B, 2, G, V]: v_x profile, v_y profile
            v = torch.stack([acc.amax(2), acc.amax(3)], 1).sqrt_()
        else:
            v = acc.sqrt_().permute(0, 2, 1, 3)  # [B, Vy, G, Vx]
        if rms is not None:
            v = v / rms
        if self.compress == "log":
            v = torch.log1p(v)
        return v.reshape(B, v.shape[1], gx, gy, -1).float().contiguous()


@register_front_end("image")
def _image(cfg: SystemConfig, *, norm: str = "noise", ap_index: int | None = None, **options: Any) -> ImageFrontEnd:
    return ImageFrontEnd(cfg, norm=norm, ap_index=ap_index, **options)


@register_front_end("velocity-image")
def _velocity_image(cfg: SystemConfig, *, norm: str = "noise", ap_index: int | None = None,
                    **options: Any) -> VelocityImageFrontEnd:
    return VelocityImageFrontEnd(cfg, norm=norm, ap_index=ap_index, **options)
