"""AP input front ends: the transform a receive AP applies to its echoes Y_m before its encoder.

A front end is an ``nn.Module`` built by ``make_front_end(name, cfg, norm=..., **options)`` with

- ``transform(y_m, x)`` (= ``forward``): ``y_m`` [B, Mr, Ns, Ts] complex, ``x`` [B, N, Nt, Ns, Ts] complex or None
  -> real float32 [B, C, D1, D2, D3];
- ``in_channels`` (C) and ``spatial_shape`` ((D1, D2, D3)), known from the config without running it;
- ``needs_x``: True when the receive AP must also receive the transmit signals X (a downlink the fronthaul table
  counts separately; the paper's receive AP knows only Y_m, Section III-C).

Front ends live in a plain dict registry: ``@register_front_end("name")`` on a factory ``(cfg, *, norm, **options)``.
``"raw"`` is the paper's (Section III-A): Re{Y_m} and Im{Y_m} as two channels of an [Mr, Ns, Ts] volume, normalised.
The registry, the base class, ``"raw"`` and the physics-aware front ends (``"matched"``, ``"image"``,
``"velocity-image"``, ``"covariance"``) live in :mod:`cfisac.front_ends` and are re-exported here (the import runs
one way, ``models.front_end -> front_ends``); this module adds the decoder's X input and the model's front end.

Normalisation ``norm`` (the paper only says "normalized"): ``"rms"`` (default) divides each sample's Y_m by its
root-mean-square magnitude (computable locally by the AP, independent of the transmit power), times sqrt(2) so that
Re and Im have unit variance; ``"noise"`` divides by the noise standard deviation xi_z (keeps the absolute echo
power); ``"none"`` leaves the values (in volts, ~1e-6) as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import SystemConfig
from ..front_ends import (
    FRONT_ENDS,
    NORMS,
    FrontEnd,
    RawFrontEnd,
    available_front_ends,
    complex_to_channels,
    make_front_end,
    register_front_end,
)
from .config import ModelConfig

__all__ = [
    "FRONT_ENDS", "NORMS", "FrontEnd", "RawFrontEnd", "TxFrontEnd", "available_front_ends", "complex_to_channels",
    "make_front_end", "model_front_end", "register_front_end",
]


def model_front_end(cfg: SystemConfig, mcfg: ModelConfig, ap_index: int = 0) -> FrontEnd:
    """The input front end of receive AP ``ap_index`` of a learned model: ``mcfg.front_end`` with its options and
    normalisation; front ends specific to their AP (e.g. ``"image"``) get ``ap_index`` (it overrides one in the
    options). Shapes and ``needs_x`` do not depend on the AP, so index 0 serves callers that only need those."""
    return make_front_end(mcfg.front_end, cfg, norm=mcfg.input_norm, **{**mcfg.front_end_options, "ap_index": ap_index})


class TxFrontEnd(nn.Module):
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
