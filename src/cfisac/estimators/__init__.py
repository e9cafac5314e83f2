"""One interface for every location / velocity estimator, learned or classical.

``est = cfisac.estimators.create(name, cfg, checkpoint=None, **options)``; ``out = est(y, x)`` with
``y`` [B, M, Mr, Ns, Ts] and ``x`` [B, N, Nt, Ns, Ts] returns an :class:`Estimate` (``positions`` [B, Q, 2] m,
``velocities`` [B, Q, 2] m/s, float64; NaN velocities where a scheme cannot estimate them, e.g. monostatic).
Every estimator reports ``fronthaul_bits_per_ap``: the bits each receive AP sends to the CPU per update.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..config import SystemConfig

__all__ = ["Estimate", "Estimator", "available", "create", "register"]


@dataclass
class Estimate:
    positions: torch.Tensor  # [B, Q, 2] float64, m
    velocities: torch.Tensor  # [B, Q, 2] float64, m/s (NaN when not estimated)


class Estimator(Protocol):
    name: str
    cfg: SystemConfig
    fronthaul_bits_per_ap: int

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> Estimate: ...


# name -> module that registers it on import (kept here so that ``create`` can import lazily).
_PROVIDERS: dict[str, str] = {
    "prior": "cfisac.estimators.prior",
    "music": "cfisac.estimators.music",
    "cs": "cfisac.estimators.cs",
    "monostatic": "cfisac.estimators.monostatic",
    "ml": "cfisac.estimators.ml",
    "dvqvae": "cfisac.models.estimator",
    "dvae": "cfisac.models.estimator",
    "cnn": "cfisac.models.estimator",
}
_FACTORIES: dict[str, Callable[..., Estimator]] = {}


def register(name: str) -> Callable[[Callable[..., Estimator]], Callable[..., Estimator]]:
    """Decorator registering ``factory(cfg, checkpoint=None, **options) -> Estimator`` under ``name``."""

    def deco(factory: Callable[..., Estimator]) -> Callable[..., Estimator]:
        _FACTORIES[name] = factory
        return factory

    return deco


def available() -> list[str]:
    return sorted(_PROVIDERS)


def create(name: str, cfg: SystemConfig, checkpoint: str | None = None, **options: Any) -> Estimator:
    """Build the estimator ``name`` for ``cfg`` (learned ones load ``checkpoint``)."""
    if name not in _PROVIDERS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {available()}")
    if name not in _FACTORIES:
        importlib.import_module(_PROVIDERS[name])
    return _FACTORIES[name](cfg, checkpoint=checkpoint, **options)
