"""AP input front ends: the transform a receive AP applies to its echoes Y_m before its encoder (issue 9 hook).

A front end is an ``nn.Module`` built by ``make_front_end(name, cfg, norm=..., **options)`` with

- ``transform(y_m, x)`` (= ``forward``): ``y_m`` [B, Mr, Ns, Ts] complex, ``x`` [B, N, Nt, Ns, Ts] complex or None
  -> real float32 [B, C, D1, D2, D3];
- ``in_channels`` (C) and ``spatial_shape`` ((D1, D2, D3)), known from the config without running it;
- ``needs_x``: True when the receive AP must also receive the transmit signals X (a downlink the fronthaul table
  counts separately; the paper's receive AP knows only Y_m, Section III-C).

Front ends live in a plain dict registry: ``@register_front_end("name")`` on a factory ``(cfg, *, norm, **options)``.
``"raw"`` is the paper's (Section III-A): Re{Y_m} and Im{Y_m} as two channels of an [Mr, Ns, Ts] volume, normalised.
Other front ends (``"matched"``, ``"covariance"``) are registered by :mod:`cfisac.front_ends` when it exists; it is
imported on the first lookup of an unknown name.

Normalisation ``norm`` (the paper only says "normalized"): ``"rms"`` (default) divides each sample's Y_m by its
root-mean-square magnitude (computable locally by the AP, independent of the transmit power), times sqrt(2) so that
Re and Im have unit variance; ``"noise"`` divides by the noise standard deviation xi_z (keeps the absolute echo
power); ``"none"`` leaves the values (in volts, ~1e-6) as they are.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import SystemConfig
from .config import ModelConfig

__all__ = [
    "FRONT_ENDS", "NORMS", "FrontEnd", "RawFrontEnd", "TxFrontEnd", "available_front_ends", "complex_to_channels",
    "make_front_end", "register_front_end",
]

NORMS = ("rms", "noise", "none")
FrontEndFactory = Callable[..., "FrontEnd"]
FRONT_ENDS: dict[str, FrontEndFactory] = {}


def register_front_end(name: str) -> Callable[[FrontEndFactory], FrontEndFactory]:
    """Decorator registering ``factory(cfg, *, norm, **options) -> FrontEnd`` under ``name``."""

    def deco(factory: FrontEndFactory) -> FrontEndFactory:
        FRONT_ENDS[name] = factory
        return factory

    return deco


def available_front_ends() -> list[str]:
    _load_plugins()
    return sorted(FRONT_ENDS)


def _load_plugins() -> None:
    try:
        importlib.import_module("cfisac.front_ends")
    except ModuleNotFoundError as err:  # not written yet: only the built-in front ends
        if err.name != "cfisac.front_ends":
            raise


def make_front_end(name: str, cfg: SystemConfig, *, norm: str = "rms", ap_index: int | None = None,
                   **options: Any) -> FrontEnd:
    """Build the registered front end ``name`` for ``cfg``. ``ap_index`` (the receive AP m) is handed to factories
    that take it (front ends specific to their AP, e.g. ``"image"``) and ignored by the others."""
    if name not in FRONT_ENDS:
        _load_plugins()
    if name not in FRONT_ENDS:
        raise ValueError(f"unknown front end {name!r}; choose one of {sorted(FRONT_ENDS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown input normalisation {norm!r}; choose one of {list(NORMS)}")
    factory = FRONT_ENDS[name]
    if ap_index is not None and "ap_index" in inspect.signature(factory).parameters:
        options["ap_index"] = ap_index
    return factory(cfg, norm=norm, **options)


def model_front_end(cfg: SystemConfig, mcfg: ModelConfig, ap_index: int = 0) -> FrontEnd:
    """The input front end of receive AP ``ap_index`` of a learned model: ``mcfg.front_end`` with its options and
    normalisation; front ends specific to their AP (e.g. ``"image"``) get ``ap_index`` (it overrides one in the
    options). Shapes and ``needs_x`` do not depend on the AP, so index 0 serves callers that only need those."""
    return make_front_end(mcfg.front_end, cfg, norm=mcfg.input_norm, **{**mcfg.front_end_options, "ap_index": ap_index})


def complex_to_channels(v: torch.Tensor, *, norm: str, noise_std: float = 1.0) -> torch.Tensor:
    """[B, *S] complex -> [B, 2, *S] float32 (Re, Im), normalised per sample as ``norm`` says (module docstring)."""
    v = v.to(torch.complex64) if v.dtype != torch.complex128 else v
    if norm == "rms":
        dims = tuple(range(1, v.dim()))
        rms = v.abs().pow(2).mean(dim=dims, keepdim=True).sqrt().clamp_min(1e-30)
        v = v / rms * math.sqrt(2.0)
    elif norm == "noise":
        v = v / noise_std
    elif norm != "none":
        raise ValueError(f"unknown input normalisation {norm!r}; choose one of {list(NORMS)}")
    return torch.stack([v.real, v.imag], dim=1).float()


class FrontEnd(nn.Module):
    """Base class: subclasses set ``name``, ``needs_x``, ``in_channels``, ``spatial_shape`` and ``forward``."""

    name: str = "base"
    needs_x: bool = False
    in_channels: int
    spatial_shape: tuple[int, int, int]

    def transform(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return self(y_m, x)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """(C, D1, D2, D3) of one sample."""
        return (self.in_channels, *self.spatial_shape)


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
