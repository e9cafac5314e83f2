"""``"covariance"``: X-free, second-order only: receive-beamspace energies per block of subcarriers and symbols,

    E[a, u, w] = mean_{i' in block u, t' in block w} |a_r(c_a)^H y_{i,m}[t]|^2,

[B, 1, D1, Ns / block[0], Ts / block[1]]. It shows what the encoder can learn without X: angles of arrival and
path energies, but no delay and no Doppler (independent data symbols make E[y_i[t] y_i'[t']^*] = 0 off the
diagonal cell, so second-order statistics of Y_m carry no delay / Doppler phase). Normalisation and compression as
in :mod:`cfisac.models.front_ends` (``"noise"``: the energies divided by xi^2, noise-only mean 1).
"""

from __future__ import annotations

from typing import Any

import torch

from ...config import SystemConfig
from ...geometry import steering_vectors
from .base import (
    DEFAULT_CHUNK_CELLS,
    FrontEnd,
    abs2,
    centred_grid,
    check_bins,
    check_options,
    check_y,
    register_front_end,
)


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
        check_options(norm, compress, chunk_cells)
        d1 = check_bins("angle_bins", cfg.n_rx_antennas if angle_bins is None else angle_bins)
        if not (isinstance(block, (tuple, list)) and len(block) == 2):
            raise ValueError(f"block must be a pair (subcarriers, symbols), got {block!r}")
        bs, bt = (check_bins("block", v) for v in block)
        if cfg.n_subcarriers % bs or cfg.n_symbols % bt:
            raise ValueError(f"block {tuple(block)} must divide (Ns, Ts) = ({cfg.n_subcarriers}, {cfg.n_symbols})")
        self.cfg, self.norm, self.compress, self.chunk_cells, self.block = cfg, norm, compress, chunk_cells, (bs, bt)
        self.in_channels = 1
        self.spatial_shape = (d1, cfg.n_subcarriers // bs, cfg.n_symbols // bt)
        self._y_shape = (cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols)
        with torch.device("cpu"):  # see MatchedFrontEnd
            cos_rx = centred_grid(d1)
            rx = steering_vectors(cos_rx, cfg.n_rx_antennas, cfg.antenna_spacing, torch.complex128).conj()
        self.grid = {"cos_rx": cos_rx}
        self.register_buffer("rx_weights", rx, persistent=False)

    def extra_repr(self) -> str:
        return f"grid={self.spatial_shape}, block={self.block}, norm={self.norm!r}, compress={self.compress!r}"

    def forward(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        check_y(y_m, self._y_shape)
        cdt = torch.complex128 if y_m.dtype == torch.complex128 else torch.complex64
        rx_w = self._const("rx_weights", torch.empty(0, dtype=cdt, device=y_m.device))
        B, (d1, d2, d3), (bs, bt) = y_m.shape[0], self.spatial_shape, self.block
        chunk = max(1, self.chunk_cells // (d1 * self.cfg.n_subcarriers * self.cfg.n_symbols))
        rdt = torch.float64 if cdt == torch.complex128 else torch.float32
        out = torch.empty(B, 1, d1, d2, d3, dtype=rdt, device=y_m.device)
        for lo in range(0, B, chunk):
            yb = torch.einsum("ar,brit->bait", rx_w, y_m[lo:lo + chunk].to(cdt))
            e = abs2(yb).reshape(-1, d1, d2, bs, d3, bt).mean((3, 5))
            if self.norm == "noise":
                e = e / self.cfg.noise_watt  # noise only: E|a^H z|^2 = xi^2 (unit-norm beams)
            elif self.norm == "rms":
                e = e / e.mean((1, 2, 3), keepdim=True).clamp_min(1e-30)
            out[lo:lo + chunk, 0] = e
        if self.compress == "log":
            out = torch.log1p(out)
        return out.float()


@register_front_end("covariance")
def _covariance(cfg: SystemConfig, *, norm: str = "noise", ap_index: int | None = None,
                **options: Any) -> CovarianceFrontEnd:
    return CovarianceFrontEnd(cfg, norm=norm, **options)
