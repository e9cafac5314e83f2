"""``"matched"``: transmit-beam matched filter + angle-delay-Doppler transform. Needs X at the receive AP.

The CPU already sends the precoded data x_{i,n}[t] to every transmit AP (Section II-B: centralised MMSE
precoding); this front end assumes the CPU also sends it to the receive APs. That downlink is NOT part of the
AP -> CPU fronthaul message the paper counts (Section III-D); the fronthaul table must list it separately:
N Nt Ns Ts complex values per update (64 N Nt Ns Ts bits as complex64: 134 Mbit at the paper preset, more than
the centralized uplink), or, far cheaper, the users' 16-QAM symbols (4 K Ns Ts bits) and the precoders
(64 N Nt K Ns bits per frame) from which the AP rebuilds x_{i,n}[t] = W_{i,n} c_i[t] (3.1 Mbit at the paper
preset).
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
Normalisation, compression and chunking as in :mod:`cfisac.models.front_ends`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from ...config import SystemConfig
from ...geometry import steering_vectors
from ...physics import SensingGrid, delay_phase
from .base import (
    DEFAULT_CHUNK_CELLS,
    FrontEnd,
    abs2,
    area_extent,
    centred_grid,
    check_bins,
    check_options,
    check_x,
    check_y,
    doppler_matrix,
    register_front_end,
    velocity_grid,
    working_cells,
)


def _matched_constants(
    cfg: SystemConfig, nb: int, shape: tuple[int, int, int], angle_transform: bool
) -> tuple[dict[str, torch.Tensor | None], dict[str, torch.Tensor]]:
    """Grids (physical axes, float64) and transform matrices (complex128) of :class:`MatchedFrontEnd`."""
    d1, d2, d3 = shape
    res, ext = cfg.resolution(), area_extent(cfg)
    r_lo = max(0.0, ext["min_range"] - res["range_resolution_m"])
    r_hi = min(res["unambiguous_range_m"], ext["max_range"] + res["range_resolution_m"])
    cos_tx = centred_grid(nb)
    cos_rx = centred_grid(d1) if angle_transform else None
    f64 = torch.float64
    ranges = torch.linspace(r_lo, r_hi, d2, dtype=f64) if d2 > 1 else torch.tensor([(r_lo + r_hi) / 2], dtype=f64)
    vels = velocity_grid(cfg, d3)
    grid = {"cos_tx": cos_tx, "cos_rx": cos_rx, "bistatic_range": ranges, "bistatic_velocity": vels}
    cdt = torch.complex128  # kept in double; cast to the working precision at use (small matrices)
    # Transmit beams: s = a_t(c_b)^H x -> weights conj(a_t(c_b)) [Nb, Nt].
    beams = steering_vectors(cos_tx, cfg.n_tx_antennas, cfg.antenna_spacing, cdt).conj()
    # Receive beams: a_r(c_a)^H y -> [D1, Mr] (identity when the antennas are kept).
    rx = (steering_vectors(cos_rx, cfg.n_rx_antennas, cfg.antenna_spacing, cdt).conj()
          if cos_rx is not None else torch.eye(cfg.n_rx_antennas, dtype=cdt))
    # Delay: e^{+j 2 pi i df r_k / c} / sqrt(Ns) [D2, Ns]; Doppler: e^{-j 2 pi t f_l dT} / sqrt(Ts) [D3, Ts]:
    # the conjugate Eq. (6) phases (cfisac.physics), whose sums undo those of a path at (r_k, f_l).
    delay = delay_phase(SensingGrid.from_config(cfg), ranges).conj() / math.sqrt(cfg.n_subcarriers)
    dop = doppler_matrix(cfg, vels)
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
        check_options(norm, compress, chunk_cells)
        if output not in ("magnitude", "complex"):
            raise ValueError(f"output must be 'magnitude' or 'complex', got {output!r}")
        if beam_pool not in ("none", "max", "rms"):
            raise ValueError(f"beam_pool must be 'none', 'max' or 'rms', got {beam_pool!r}")
        if beam_pool != "none" and output != "magnitude":
            raise ValueError("beam_pool pools magnitudes: it needs output='magnitude'")
        self.beam_pool = beam_pool
        self.cfg, self.norm, self.output, self.compress, self.chunk_cells = cfg, norm, output, compress, chunk_cells
        nb = check_bins("tx_beams", cfg.n_tx_antennas if tx_beams is None else tx_beams)
        if not isinstance(angle_transform, bool):
            raise ValueError(f"angle_transform must be a bool, got {angle_transform!r}")
        if not angle_transform and angle_bins not in (None, cfg.n_rx_antennas):
            raise ValueError(f"angle_bins={angle_bins} needs angle_transform=True (without it D1 = Mr antennas)")
        d1 = check_bins("angle_bins", cfg.n_rx_antennas if angle_bins is None else angle_bins)
        d2 = check_bins("delay_bins", cfg.n_subcarriers if delay_bins is None else delay_bins)
        d3 = check_bins("doppler_bins", cfg.n_symbols if doppler_bins is None else doppler_bins)
        self.tx_beams, self.angle_transform = nb, angle_transform
        self.in_channels = cfg.n_tx * (1 if beam_pool != "none" else nb) * (2 if output == "complex" else 1)
        self.spatial_shape = (d1, d2, d3)
        self._y_shape = (cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols)
        self._x_shape = (cfg.n_tx, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols)

        with torch.device("cpu"):  # constants on the CPU even inside a meta-device context; .to() moves them
            self.grid, mats = _matched_constants(cfg, nb, (d1, d2, d3), angle_transform)
        for name, mat in mats.items():
            self.register_buffer(name, mat, persistent=False)

    def extra_repr(self) -> str:
        return (f"tx_beams={self.tx_beams}, grid={self.spatial_shape}, angle_transform={self.angle_transform}, "
                f"norm={self.norm!r}, output={self.output!r}, beam_pool={self.beam_pool!r}, compress={self.compress!r}")

    def _maps(self, y_m: torch.Tensor, x: torch.Tensor) -> Iterator[tuple[slice, int, slice, torch.Tensor]]:
        """Yields (scenes, n, beams, F) for chunks of scenes, each transmit AP n and chunks of its transmit beams:
        F [b, nb, D1, D2, D3] the map of the module docstring (noise-normalised if ``norm="noise"``; not
        RMS-normalised): the data-removed product [b, nb, D1, Ns, Ts], then the Doppler sum (a matmul with the
        [Ts, D3] phases) and the delay sum (a matmul with the [D2, Ns] phases)."""
        check_y(y_m, self._y_shape)
        check_x(x, self._x_shape, y_m.shape[0], self.name)
        cdt = torch.complex128 if y_m.dtype == torch.complex128 else torch.complex64
        B, Nb, (d1, d2, d3) = y_m.shape[0], self.tx_beams, self.spatial_shape
        Mr, Nt, Ns, Ts = self.cfg.n_rx_antennas, self.cfg.n_tx_antennas, self.cfg.n_subcarriers, self.cfg.n_symbols
        like = torch.empty(0, dtype=cdt, device=y_m.device)
        tx_w, rx_w, dmat = (self._const(k, like) for k in ("tx_weights", "rx_weights", "delay_matrix"))
        fmat_t = self._const("doppler_matrix", like).mT  # [Ts, D3]
        noise_std = math.sqrt(self.cfg.noise_watt)
        budget, per_beam = working_cells(self.chunk_cells, y_m.device), d1 * max(Ns, d2) * max(Ts, d3)
        beams = max(1, min(Nb, budget // per_beam))
        chunk = max(1, budget // (beams * per_beam))
        for lo in range(0, B, chunk):
            sl = slice(lo, min(B, lo + chunk))
            yc = y_m[sl].to(cdt)
            b = yc.shape[0]
            yb = torch.matmul(rx_w, yc.reshape(b, Mr, Ns * Ts)).reshape(b, 1, d1, Ns, Ts)  # receive beams
            for n in range(self.cfg.n_tx):
                xc = x[sl, n].to(device=y_m.device, dtype=cdt).reshape(b, Nt, Ns * Ts)
                for b0 in range(0, Nb, beams):
                    bs = slice(b0, min(Nb, b0 + beams))
                    s = torch.matmul(tx_w[bs], xc).reshape(b, -1, Ns, Ts)  # a_t(c_b)^H x_n [b, nb, Ns, Ts]
                    if self.norm == "noise":
                        # F ~ CN(0, xi^2 mean|s|^2) on noise only (unitary transforms): unit-variance noise bins.
                        scale = abs2(s).mean((-2, -1)).sqrt().mul_(noise_std).clamp_min_(1e-30)  # [b, nb]
                        s = s / scale[..., None, None]
                    prod = yb * s.conj()[:, :, None]  # [b, nb, D1, Ns, Ts]
                    yield sl, n, bs, torch.matmul(dmat, torch.matmul(prod, fmat_t))  # [b, nb, D1, D2, D3]

    def complex_map(self, y_m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The normalised complex map F [B, N, Nb, D1, D2, D3] (complex64, or complex128 for complex128 y)."""
        cdt = torch.complex128 if y_m.dtype == torch.complex128 else torch.complex64
        out = torch.empty(y_m.shape[0], self.cfg.n_tx, self.tx_beams, *self.spatial_shape, dtype=cdt,
                          device=y_m.device)
        for sl, n, bs, f in self._maps(y_m, x):
            out[sl, n, bs] = f
        if self.norm == "rms":
            out = out / abs2(out).mean((1, 2, 3, 4, 5), keepdim=True).sqrt().clamp_min(1e-30)
        return out

    def forward(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        B, (d1, d2, d3) = y_m.shape[0], self.spatial_shape
        if self.output == "complex":
            f = self.complex_map(y_m, x)
            if self.compress == "log":  # compress the magnitude, keep the phase
                mag = f.abs()
                f = f * (torch.log1p(mag) / mag.clamp_min(1e-30))
            return torch.stack([f.real, f.imag], 3).reshape(B, -1, d1, d2, d3).float()
        rdt = torch.float64 if y_m.dtype == torch.complex128 else torch.float32
        pooled = self.beam_pool != "none"
        out = torch.zeros(B, self.cfg.n_tx, *(() if pooled else (self.tx_beams,)), d1, d2, d3, dtype=rdt,
                          device=y_m.device)  # |F|^2, pooled over the beams
        energy = torch.zeros(B, dtype=rdt, device=y_m.device)  # sum of |F|^2 per sample (for norm="rms")
        for sl, n, bs, f in self._maps(y_m, x):
            e = abs2(f)  # [b, nb, D1, D2, D3]
            if self.norm == "rms":
                energy[sl] += e.sum((1, 2, 3, 4))
            if self.beam_pool == "max":
                out[sl, n] = torch.maximum(out[sl, n], e.amax(1))
            elif self.beam_pool == "rms":
                out[sl, n] += e.sum(1) / self.tx_beams
            else:
                out[sl, n, bs] = e
        out = out.sqrt_()
        if self.norm == "rms":  # divide by the root-mean-square of the complex map (before pooling)
            rms = (energy / (self.cfg.n_tx * self.tx_beams * d1 * d2 * d3)).sqrt().clamp_min(1e-30)
            out = out / rms.reshape(B, *([1] * (out.dim() - 1)))
        if self.compress == "log":
            out = torch.log1p(out)
        return out.reshape(B, -1, d1, d2, d3).float()


@register_front_end("matched")
def _matched(cfg: SystemConfig, *, norm: str = "noise", ap_index: int | None = None,
             **options: Any) -> MatchedFrontEnd:
    return MatchedFrontEnd(cfg, norm=norm, **options)  # the same transform at every receive AP
