"""Physics-aware AP front ends (issue 9): what a receive AP feeds its encoder instead of (or as) Re/Im of Y_m.

Every front end maps the echoes of one receive AP, ``y_m`` [B, Mr, Ns, Ts] complex (Eq. 6), and, when it needs them,
the transmit signals ``x`` [B, N, Nt, Ns, Ts] complex (Eq. 3), to a real float32 tensor [B, C, D1, D2, D3] for the
3D-CNN encoder of Fig. 3. Its shape is fixed by the config and the options alone (``output_shape``), so the encoder
(and with it the fronthaul message length L = D1 D2 D3 / 8^L_cnn) is known before any data is seen. They plug into
the registry of :mod:`cfisac.models.front_end` (``ModelConfig(front_end=..., front_end_options=...)``), which
holds the paper's ``"raw"`` input; this module registers:

``"matched"`` -- transmit-beam matched filter + angle-delay-Doppler transform. Needs X at the receive AP.
    The CPU already sends the precoded data x_{i,n}[t] to every transmit AP (Section II-B: centralised MMSE
    precoding); this front end assumes the CPU also sends it to the receive APs. That downlink is NOT part of the
    AP -> CPU fronthaul message the paper counts (Section III-D); the fronthaul table must list it separately
    (N Nt Ns Ts complex values per update, 64 N Nt Ns Ts bits in complex64).
    For each transmit AP n and each of ``tx_beams`` (Nb) fixed transmit beams with cos c_b (a shifted DFT grid,
    c_b = -1 + (2b + 1) / Nb: orthogonal beams when Nb = Nt and d = lambda/2), the beam's transmitted signal is

        s_{n,b}[i, t] = a_t(c_b)^H x_{i,n}[t]                                  (a_t of Eq. 1, unit norm)

    and the matched-filter map of receive AP m is (receive angle a, bistatic range r_k, bistatic Doppler f_l)

        F_{n,b}[a, k, l] = 1 / sqrt(Ns Ts) sum_{i', t'} a_r(c_a)^H y_{i,m}[t] conj(s_{n,b}[i, t])
                           e^{+j 2 pi i df r_k / c} e^{-j 2 pi t f_l dT}

    at the absolute comb indices i = subcarrier_stride i', t = 1 + symbol_stride t' (:func:`cfisac.sensing.
    sensing_indices`). For one path of Eq. (6), y_{i,m}[t] = g a_r(c_m) e^{-j 2 pi (i tau df - t f_D dT)}
    a_t(c_n)^H x_{i,n}[t], the product y conj(s) removes the data symbols wherever c_b is near c_n, the
    delay / Doppler sums undo the phases of Eq. (6) with the paper's signs, and |F| peaks at c_a = c_m,
    r_k = c tau (the bistatic range d_n + d_m), f_l = f_D. The delay and Doppler sums are zero-padded DFTs
    evaluated on a zoomed grid ("infinitely zero-padded", i.e. the DTFT sampled where targets can be): ``delay_bins``
    (D2) bistatic ranges evenly spanning [d_min - dr, d_max + dr] and ``doppler_bins`` (D3) bistatic velocities
    f_l c / fc evenly spanning [-w - dv, w + dv], with d_min / d_max the extreme bistatic ranges and w the largest
    bistatic speed v . (e_n + e_m) over the area and the velocity box, dr / dv the range / velocity resolution
    (capped at the unambiguous intervals). The receive antennas go to ``angle_bins`` (D1) receive beams
    c_a = -1 + (2a + 1) / D1 (``angle_transform=False`` keeps the antennas: D1 = Mr, no angle transform).
    Defaults D1, D2, D3 = Mr, Ns, Ts: the same grid as ``"raw"``, hence the same encoder, the same L and the same
    fronthaul bits per update. Output ``"magnitude"`` (default): C = N Nb channels |F_{n,b}|, channel n Nb + b.
    The reflection coefficient beta (Eq. 6) has a uniformly random phase, so the phase of a peak carries no
    information about the target; the magnitude is the natural sufficient statistic for peak positions and halves
    the input. ``"complex"``: C = 2 N Nb channels, (Re, Im) of F_{n,b} at channels 2 (n Nb + b) + (0, 1).
    ``beam_pool="max"`` (resp. ``"rms"``) pools the magnitudes over the Nb transmit beams of each transmit AP,
    C = N: the angle of departure is dropped (the AoA and the bistatic ranges already fix the location), the peak
    energy is kept, and the encoder's first layer costs the same as for ``"raw"`` (2 channels at N = 2).

``"covariance"`` -- X-free, second-order only: receive-beamspace energies per block of subcarriers and symbols,

        E[a, u, w] = mean_{i' in block u, t' in block w} |a_r(c_a)^H y_{i,m}[t]|^2,

    [B, 1, D1, Ns / block[0], Ts / block[1]]. It shows what the encoder can learn without X: angles of arrival and
    path energies, but no delay and no Doppler (independent data symbols make E[y_i[t] y_i'[t']^*] = 0 off the
    diagonal cell, so second-order statistics of Y_m carry no delay / Doppler phase).

Normalisation (``norm``, as for ``"raw"``; nothing label-dependent is used, only the AP's own inputs and the
known noise power xi^2 of the config):

- ``"noise"``: the map is divided by the standard deviation of its noise-only part. With the unitary scaling
  above, the noise z ~ CN(0, xi^2 I) gives F_{n,b} ~ CN(0, xi^2 mean_{i,t} |s_{n,b}[i,t]|^2) in every bin,
  given x; dividing by that (computed from the AP's own x) makes noise-only bins unit-variance at every
  transmit power while a peak reads sqrt(integrated SNR) of its path. For ``"covariance"`` the energies are
  divided by xi^2 (noise-only mean 1).
- ``"rms"``: divided by the per-sample root-mean-square of the complex map (resp. the mean energy), over all
  channels and bins. Noise dominates the RMS of a sparse map, so this is close to ``"noise"`` without needing xi^2.
- ``"none"``: the values in the units of the echoes (V^2-like, ~1e-8 at 30 dBm).

``compress="log"`` optionally applies log1p to the (non-negative) magnitudes / energies, bounding the dynamic range
of peaks across transmit powers; ``"none"`` (default) keeps the linear matched-filter magnitude.

All computations are batched: einsum / matmul over chunks of the batch whose intermediate product
[chunk, N, Nb, D1, Ns, Ts] stays under ``chunk_cells`` complex cells (bounded memory); complex64 arithmetic
(complex128 if y is complex128), float32 output; the DFT matrices are non-persistent buffers (they follow
``.to(device)`` and are not written to checkpoints).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from .config import SPEED_OF_LIGHT, SystemConfig
from .geometry import bistatic_geometry, steering_vectors
from .models.front_end import FrontEnd, make_front_end, register_front_end
from .sensing import sensing_indices

__all__ = [
    "CovarianceFrontEnd", "MatchedFrontEnd", "area_extent", "create_front_end", "front_end_output_shape",
]

DEFAULT_CHUNK_CELLS = 2**23  # complex cells of the [chunk, N, Nb, D1, Ns, Ts] product (64 MB in complex64)
_NORMS = ("noise", "rms", "none")
_COMPRESS = ("none", "log")


# --------------------------------------------------------------------------------------------------- helpers
def area_extent(cfg: SystemConfig, *, points_per_axis: int = 101) -> dict[str, float]:
    """Extreme bistatic range and bistatic speed a target in the area can produce, over every (n, m) pair.

    Returns ``min_range`` / ``max_range`` (m) of d_n + d_m and ``max_bistatic_speed`` (m/s), the largest
    |v . (e_n + e_m)| over the area and the velocity box |v_x|, |v_y| <= max_speed, which is
    max_speed (|u_x| + |u_y|) for u = e_n + e_m. Evaluated on a ``points_per_axis``^2 grid of the area (edges
    included): the range extremes of a smooth function on a fine grid, accurate to well under a resolution cell.
    Cached per (config, points_per_axis).
    """
    return dict(_area_extent(cfg, points_per_axis))


@functools.lru_cache(maxsize=32)
def _area_extent(cfg: SystemConfig, points_per_axis: int) -> dict[str, float]:
    with torch.device("cpu"):  # also inside a meta-device context (parameter counting without allocation)
        return _area_extent_cpu(cfg, points_per_axis)


def _area_extent_cpu(cfg: SystemConfig, points_per_axis: int) -> dict[str, float]:
    (x0, x1), (y0, y1) = cfg.area
    gx = torch.linspace(x0, x1, points_per_axis, dtype=torch.float64)
    gy = torch.linspace(y0, y1, points_per_axis, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(gx, gy, indexing="ij"), -1).reshape(1, -1, 2)
    aps = torch.tensor(cfg.tx_positions + cfg.rx_positions, dtype=torch.float64)
    # Drop grid points on top of an AP (angle undefined there); they cannot host a target either.
    keep = (torch.linalg.vector_norm(pts[0, :, None] - aps, dim=-1) > 1e-6).all(-1)
    pts = pts[:, keep]
    geo = bistatic_geometry(cfg, pts, torch.zeros_like(pts))
    u = geo.tx.direction[:, :, None] + geo.rx.direction[:, None, :]  # [1, N, M, P, 2]
    return {
        "min_range": float(geo.bistatic_range.min()),
        "max_range": float(geo.bistatic_range.max()),
        "max_bistatic_speed": float(cfg.max_speed * u.abs().sum(-1).max()),
    }


def _centred_grid(n: int) -> torch.Tensor:
    """n cosines -1 + (2k + 1) / n, k = 0..n-1 (a shifted DFT grid, symmetric about broadside), float64."""
    return -1.0 + (2.0 * torch.arange(n, dtype=torch.float64) + 1.0) / n


def _check_bins(name: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def _check_y(y_m: torch.Tensor, shape: tuple[int, int, int]) -> None:
    if not isinstance(y_m, torch.Tensor) or not y_m.is_complex():
        raise ValueError("y_m must be a complex torch.Tensor [B, Mr, Ns, Ts]")
    if y_m.dim() != 4 or tuple(y_m.shape[1:]) != shape or y_m.shape[0] == 0:
        raise ValueError(f"y_m must be complex [B, Mr, Ns, Ts] = [B, {', '.join(map(str, shape))}] with B >= 1, "
                         f"got {tuple(y_m.shape)}")


def _check_options(norm: str, compress: str, chunk_cells: int) -> None:
    if norm not in _NORMS:
        raise ValueError(f"unknown input normalisation {norm!r}; choose one of {list(_NORMS)}")
    if compress not in _COMPRESS:
        raise ValueError(f"compress must be one of {list(_COMPRESS)}, got {compress!r}")
    _check_bins("chunk_cells", chunk_cells)


def _matched_constants(
    cfg: SystemConfig, nb: int, shape: tuple[int, int, int], angle_transform: bool
) -> tuple[dict[str, torch.Tensor | None], dict[str, torch.Tensor]]:
    """Grids (physical axes, float64) and transform matrices (complex128) of :class:`MatchedFrontEnd`."""
    d1, d2, d3 = shape
    c, fc, df, dT = SPEED_OF_LIGHT, cfg.carrier_frequency, cfg.subcarrier_spacing, cfg.symbol_duration
    res, ext = cfg.resolution(), area_extent(cfg)
    r_lo = max(0.0, ext["min_range"] - res["range_resolution_m"])
    r_hi = min(res["unambiguous_range_m"], ext["max_range"] + res["range_resolution_m"])
    v_amb = res["unambiguous_doppler_hz"] * c / fc
    v_hi = min(v_amb, ext["max_bistatic_speed"] + res["velocity_resolution_mps"])
    cos_tx = _centred_grid(nb)
    cos_rx = _centred_grid(d1) if angle_transform else None
    f64 = torch.float64
    ranges = torch.linspace(r_lo, r_hi, d2, dtype=f64) if d2 > 1 else torch.tensor([(r_lo + r_hi) / 2], dtype=f64)
    vels = torch.linspace(-v_hi, v_hi, d3, dtype=f64) if d3 > 1 else torch.zeros(1, dtype=f64)
    grid = {"cos_tx": cos_tx, "cos_rx": cos_rx, "bistatic_range": ranges, "bistatic_velocity": vels}
    i_idx, t_idx = sensing_indices(cfg)
    one = torch.ones((), dtype=f64)
    cdt = torch.complex128  # kept in double; cast to the working precision at use (small matrices)
    # Transmit beams: s = a_t(c_b)^H x -> weights conj(a_t(c_b)) [Nb, Nt].
    beams = steering_vectors(cos_tx, cfg.n_tx_antennas, cfg.antenna_spacing, cdt).conj()
    # Receive beams: a_r(c_a)^H y -> [D1, Mr] (identity when the antennas are kept).
    rx = (steering_vectors(cos_rx, cfg.n_rx_antennas, cfg.antenna_spacing, cdt).conj()
          if cos_rx is not None else torch.eye(cfg.n_rx_antennas, dtype=cdt))
    # Delay: e^{+j 2 pi i df r_k / c} / sqrt(Ns) [D2, Ns]; Doppler: e^{-j 2 pi t f_l dT} / sqrt(Ts) [D3, Ts].
    delay = torch.polar(one, 2 * math.pi * df / c * ranges[:, None] * i_idx[None]) / math.sqrt(cfg.n_subcarriers)
    dop = torch.polar(one, -2 * math.pi * dT * (vels * fc / c)[:, None] * t_idx[None]) / math.sqrt(cfg.n_symbols)
    return grid, {"tx_weights": beams, "rx_weights": rx, "delay_matrix": delay, "doppler_matrix": dop}


# --------------------------------------------------------------------------------------------------- matched
class MatchedFrontEnd(FrontEnd):
    """Transmit-beam matched filter + receive-angle / bistatic-delay / Doppler transform (module docstring).

    ``forward(y_m [B, Mr, Ns, Ts] complex, x [B, N, Nt, Ns, Ts] complex) -> [B, C, D1, D2, D3] float32`` with
    C = N Nb (``output="magnitude"``), N (with ``beam_pool``) or 2 N Nb (``"complex"``), (D1, D2, D3) =
    (angle_bins or Mr, delay_bins, doppler_bins). ``grid`` holds the physical axes: ``cos_tx`` [Nb], ``cos_rx`` [D1]
    (None without the angle transform), ``bistatic_range`` [D2] (m), ``bistatic_velocity`` [D3] (m/s, f_D c / fc).
    All float64.
    """

    name = "matched"
    needs_x = True

    def __init__(
        self, cfg: SystemConfig, *, norm: str = "noise", tx_beams: int | None = None,
        angle_bins: int | None = None, delay_bins: int | None = None, doppler_bins: int | None = None,
        angle_transform: bool = True, output: str = "magnitude", beam_pool: str = "none", compress: str = "none",
        chunk_cells: int = DEFAULT_CHUNK_CELLS,
    ) -> None:
        super().__init__()
        _check_options(norm, compress, chunk_cells)
        if output not in ("magnitude", "complex"):
            raise ValueError(f"output must be 'magnitude' or 'complex', got {output!r}")
        if beam_pool not in ("none", "max", "rms"):
            raise ValueError(f"beam_pool must be 'none', 'max' or 'rms', got {beam_pool!r}")
        if beam_pool != "none" and output != "magnitude":
            raise ValueError("beam_pool pools magnitudes: it needs output='magnitude'")
        self.beam_pool = beam_pool
        self.cfg, self.norm, self.output, self.compress, self.chunk_cells = cfg, norm, output, compress, chunk_cells
        nb = _check_bins("tx_beams", cfg.n_tx_antennas if tx_beams is None else tx_beams)
        if not isinstance(angle_transform, bool):
            raise ValueError(f"angle_transform must be a bool, got {angle_transform!r}")
        if not angle_transform and angle_bins not in (None, cfg.n_rx_antennas):
            raise ValueError(f"angle_bins={angle_bins} needs angle_transform=True (without it D1 = Mr antennas)")
        d1 = _check_bins("angle_bins", cfg.n_rx_antennas if angle_bins is None else angle_bins)
        d2 = _check_bins("delay_bins", cfg.n_subcarriers if delay_bins is None else delay_bins)
        d3 = _check_bins("doppler_bins", cfg.n_symbols if doppler_bins is None else doppler_bins)
        self.tx_beams, self.angle_transform = nb, angle_transform
        self.in_channels = cfg.n_tx * (1 if beam_pool != "none" else nb) * (2 if output == "complex" else 1)
        self.spatial_shape = (d1, d2, d3)
        self._y_shape = (cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols)
        self._x_shape = (cfg.n_tx, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols)

        with torch.device("cpu"):  # constants on the CPU even inside a meta-device context; .to() moves them
            self.grid, mats = _matched_constants(cfg, nb, (d1, d2, d3), angle_transform)
        for name, mat in mats.items():
            self.register_buffer(name, mat, persistent=False)

    @property
    def needs_transmit_signals(self) -> bool:
        return self.needs_x

    def extra_repr(self) -> str:
        return (f"tx_beams={self.tx_beams}, grid={self.spatial_shape}, angle_transform={self.angle_transform}, "
                f"norm={self.norm!r}, output={self.output!r}, beam_pool={self.beam_pool!r}, compress={self.compress!r}")

    def complex_map(self, y_m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The normalised complex map F [B, N, Nb, D1, D2, D3] (complex64, or complex128 for complex128 y)."""
        _check_y(y_m, self._y_shape)
        if x is None:
            raise ValueError("the 'matched' front end needs the transmit signals x [B, N, Nt, Ns, Ts]: the receive "
                             "AP must receive them from the CPU (see cfisac.front_ends)")
        if not isinstance(x, torch.Tensor) or not x.is_complex() or x.dim() != 5 \
                or tuple(x.shape[1:]) != self._x_shape or x.shape[0] != y_m.shape[0]:
            raise ValueError(f"x must be complex [B, N, Nt, Ns, Ts] = [{y_m.shape[0]}, "
                             f"{', '.join(map(str, self._x_shape))}] like y_m's batch, got "
                             f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
        cdt = torch.complex128 if y_m.dtype == torch.complex128 else torch.complex64
        B = y_m.shape[0]
        N, Nb = self.cfg.n_tx, self.tx_beams
        d1, d2, d3 = self.spatial_shape
        Ns, Ts = self.cfg.n_subcarriers, self.cfg.n_symbols
        mats = [m.to(device=y_m.device, dtype=cdt) for m in
                (self.tx_weights, self.rx_weights, self.delay_matrix, self.doppler_matrix)]
        tx_w, rx_w, dmat, fmat = mats
        noise_std = math.sqrt(self.cfg.noise_watt)
        chunk = max(1, self.chunk_cells // (N * Nb * d1 * Ns * Ts))
        out = torch.empty(B, N, Nb, d1, d2, d3, dtype=cdt, device=y_m.device)
        for lo in range(0, B, chunk):
            yc = y_m[lo:lo + chunk].to(cdt)
            xc = x[lo:lo + chunk].to(device=y_m.device, dtype=cdt)
            yb = torch.einsum("ar,brit->bait", rx_w, yc)  # receive beams [b, D1, Ns, Ts]
            s = torch.einsum("ck,bnkit->bncit", tx_w, xc)  # transmit beams [b, N, Nb, Ns, Ts]
            if self.norm == "noise":
                # F ~ CN(0, xi^2 mean|s|^2) on noise only (unitary transforms): unit-variance noise bins.
                scale = s.abs().pow(2).mean((-2, -1)).sqrt().mul_(noise_std).clamp_min_(1e-30)  # [b, N, Nb]
                s = s / scale[..., None, None]
            prod = yb[:, None, None] * s.conj()[:, :, :, None]  # [b, N, Nb, D1, Ns, Ts]
            f = torch.matmul(dmat, torch.matmul(prod, fmat.mT))  # [b, N, Nb, D1, D2, D3]
            if self.norm == "rms":
                f = f / f.abs().pow(2).mean((1, 2, 3, 4, 5), keepdim=True).sqrt().clamp_min(1e-30)
            out[lo:lo + chunk] = f
        return out

    def forward(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        f = self.complex_map(y_m, x)
        B, (d1, d2, d3) = f.shape[0], self.spatial_shape
        if self.output == "magnitude":
            v = f.abs()
            if self.beam_pool == "max":
                v = v.amax(2)
            elif self.beam_pool == "rms":
                v = v.pow(2).mean(2).sqrt()
            if self.compress == "log":
                v = torch.log1p(v)
            return v.reshape(B, -1, d1, d2, d3).float()
        if self.compress == "log":  # compress the magnitude, keep the phase
            mag = f.abs()
            f = f * (torch.log1p(mag) / mag.clamp_min(1e-30))
        return torch.stack([f.real, f.imag], 3).reshape(B, -1, d1, d2, d3).float()


# --------------------------------------------------------------------------------------------------- covariance
class CovarianceFrontEnd(FrontEnd):
    """X-free second-order front end: receive-beamspace energies per (subcarrier, symbol) block.

    ``forward(y_m [B, Mr, Ns, Ts] complex, x ignored) -> [B, 1, D1, Ns / block[0], Ts / block[1]] float32``;
    ``angle_bins`` D1 receive beams c_a = -1 + (2a + 1) / D1 (default Mr); ``block`` = (subcarriers, symbols) per
    block, each dividing Ns resp. Ts (default (1, 1): the same grid, encoder and fronthaul bits as ``"raw"``).
    """

    name = "covariance"
    needs_x = False

    def __init__(
        self, cfg: SystemConfig, *, norm: str = "noise", angle_bins: int | None = None,
        block: tuple[int, int] = (1, 1), compress: str = "none", chunk_cells: int = DEFAULT_CHUNK_CELLS,
    ) -> None:
        super().__init__()
        _check_options(norm, compress, chunk_cells)
        d1 = _check_bins("angle_bins", cfg.n_rx_antennas if angle_bins is None else angle_bins)
        if not (isinstance(block, (tuple, list)) and len(block) == 2):
            raise ValueError(f"block must be a pair (subcarriers, symbols), got {block!r}")
        bs, bt = (_check_bins("block", v) for v in block)
        if cfg.n_subcarriers % bs or cfg.n_symbols % bt:
            raise ValueError(f"block {tuple(block)} must divide (Ns, Ts) = ({cfg.n_subcarriers}, {cfg.n_symbols})")
        self.cfg, self.norm, self.compress, self.chunk_cells, self.block = cfg, norm, compress, chunk_cells, (bs, bt)
        self.in_channels = 1
        self.spatial_shape = (d1, cfg.n_subcarriers // bs, cfg.n_symbols // bt)
        self._y_shape = (cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols)
        with torch.device("cpu"):  # see MatchedFrontEnd
            cos_rx = _centred_grid(d1)
            rx = steering_vectors(cos_rx, cfg.n_rx_antennas, cfg.antenna_spacing, torch.complex128).conj()
        self.grid = {"cos_rx": cos_rx}
        self.register_buffer("rx_weights", rx, persistent=False)

    @property
    def needs_transmit_signals(self) -> bool:
        return self.needs_x

    def extra_repr(self) -> str:
        return f"grid={self.spatial_shape}, block={self.block}, norm={self.norm!r}, compress={self.compress!r}"

    def forward(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        _check_y(y_m, self._y_shape)
        cdt = torch.complex128 if y_m.dtype == torch.complex128 else torch.complex64
        rx_w = self.rx_weights.to(device=y_m.device, dtype=cdt)
        B, (d1, d2, d3), (bs, bt) = y_m.shape[0], self.spatial_shape, self.block
        chunk = max(1, self.chunk_cells // (d1 * self.cfg.n_subcarriers * self.cfg.n_symbols))
        rdt = torch.float64 if cdt == torch.complex128 else torch.float32
        out = torch.empty(B, 1, d1, d2, d3, dtype=rdt, device=y_m.device)
        for lo in range(0, B, chunk):
            yb = torch.einsum("ar,brit->bait", rx_w, y_m[lo:lo + chunk].to(cdt))
            e = yb.abs().pow(2).reshape(-1, d1, d2, bs, d3, bt).mean((3, 5))
            if self.norm == "noise":
                e = e / self.cfg.noise_watt  # noise only: E|a^H z|^2 = xi^2 (unit-norm beams)
            elif self.norm == "rms":
                e = e / e.mean((1, 2, 3), keepdim=True).clamp_min(1e-30)
            out[lo:lo + chunk, 0] = e
        if self.compress == "log":
            out = torch.log1p(out)
        return out.float()


# --------------------------------------------------------------------------------------------------- registry
@register_front_end("matched")
def _matched(cfg: SystemConfig, *, norm: str = "noise", **options: Any) -> MatchedFrontEnd:
    return MatchedFrontEnd(cfg, norm=norm, **options)


@register_front_end("covariance")
def _covariance(cfg: SystemConfig, *, norm: str = "noise", **options: Any) -> CovarianceFrontEnd:
    return CovarianceFrontEnd(cfg, norm=norm, **options)


def create_front_end(name: str, cfg: SystemConfig, *, norm: str = "noise", **options: Any) -> FrontEnd:
    """Build the front end ``name`` ("raw", "matched", "covariance", ...) for ``cfg`` (alias of
    :func:`cfisac.models.front_end.make_front_end`). The object has ``name``, ``in_channels``, ``spatial_shape``,
    ``output_shape`` ((C, D1, D2, D3) of one sample), ``needs_x`` and is called as ``fe(y_m, x)``."""
    return make_front_end(name, cfg, norm=norm, **options)


def front_end_output_shape(name: str, cfg: SystemConfig, **options: Any) -> tuple[int, int, int, int]:
    """(C, D1, D2, D3) of one sample of front end ``name`` for ``cfg`` (no data needed)."""
    return create_front_end(name, cfg, **options).output_shape
