"""The paper's input (Section III-A) and the decoder's transmit-signal input (Section III-C): Re and Im as two
channels of the complex volume, normalised (``"raw"`` front end and :class:`TxFrontEnd`)."""

from __future__ import annotations

import math

import torch

from ...config import SystemConfig
from .base import FrontEnd, complex_to_channels, register_front_end


class RawFrontEnd(FrontEnd):
    """The paper's input (Section III-A): Re/Im of Y_m [B, Mr, Ns, Ts] -> [B, 2, Mr, Ns, Ts], normalised."""

    name = "raw"
    needs_x = False

    def __init__(self, cfg: SystemConfig, *, norm: str = "rms") -> None:
        super().__init__()
        self.norm, self.noise_std = norm, math.sqrt(cfg.noise_watt)
        self.in_channels = 2
        self.spatial_shape = (cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols)

    def forward(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        if not y_m.is_complex() or y_m.dim() != 4 or tuple(y_m.shape[1:]) != self.spatial_shape:
            raise ValueError(f"y_m must be complex [B, Mr, Ns, Ts] = [B, {', '.join(map(str, self.spatial_shape))}],"
                             f" got {y_m.dtype} {tuple(y_m.shape)}")
        return complex_to_channels(y_m, norm=self.norm, noise_std=self.noise_std)


@register_front_end("raw")
def _raw(cfg: SystemConfig, *, norm: str = "rms") -> RawFrontEnd:
    return RawFrontEnd(cfg, norm=norm)


class TxFrontEnd(torch.nn.Module):
    """The decoder's transmit-signal input (Section III-C): X [B, N, Nt, Ns, Ts] -> Re/Im [B, 2, N*Nt, Ns, Ts],
    RMS-normalised per sample (the CPU knows X exactly; only its shape matters to the network)."""

    def __init__(self, cfg: SystemConfig) -> None:
        super().__init__()
        self.in_channels = 2
        self.spatial_shape = (cfg.n_tx * cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols)
        self._shape = (cfg.n_tx, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_complex() or x.dim() != 5 or tuple(x.shape[1:]) != self._shape:
            raise ValueError(f"x must be complex [B, N, Nt, Ns, Ts] = [B, {', '.join(map(str, self._shape))}], "
                             f"got {x.dtype} {tuple(x.shape)}")
        return complex_to_channels(x.reshape(x.shape[0], *self.spatial_shape), norm="rms")
