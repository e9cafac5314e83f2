"""One interface for every location / velocity estimator, learned or classical.

``est = cfisac.estimators.create(name, cfg, checkpoint=None, **options)``; ``out = est(y, x)`` with
``y`` [B, M, Mr, Ns, Ts] and ``x`` [B, N, Nt, Ns, Ts] returns an :class:`Estimate` (``positions`` [B, Q, 2] m,
``velocities`` [B, Q, 2] m/s, float64; NaN velocities where a scheme cannot estimate them, e.g. monostatic).
Every estimator reports ``fronthaul_bits_per_ap``: the bits each receive AP sends to the CPU per update.

The names are those the estimator modules give to :func:`register`: the registry imports every module of this
package (and :mod:`cfisac.models.estimator`, the learned schemes) the first time a name is looked up.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..config import SystemConfig

__all__ = ["Estimate", "Estimator", "available", "create", "register", "register_without_checkpoint"]


@dataclass
class Estimate:
    positions: torch.Tensor  # [B, Q, 2] float64, m
    velocities: torch.Tensor  # [B, Q, 2] float64, m/s (NaN when not estimated)


class Estimator(Protocol):
    name: str
    cfg: SystemConfig
    fronthaul_bits_per_ap: int

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> Estimate: ...


_FACTORIES: dict[str, Callable[..., Estimator]] = {}
_EXTRA_PROVIDERS = ("cfisac.models.estimator",)  # learned schemes live with their models
_discovered = False


def register(name: str) -> Callable[[Callable[..., Estimator]], Callable[..., Estimator]]:
    """Decorator registering ``factory(cfg, checkpoint=None, **options) -> Estimator`` under ``name``."""

    def deco(factory: Callable[..., Estimator]) -> Callable[..., Estimator]:
        known = _FACTORIES.get(name)
        if known is not None and known is not factory and known.__module__ != factory.__module__:
            raise ValueError(f"estimator name {name!r} registered twice ({known.__module__}, {factory.__module__})")
        _FACTORIES[name] = factory
        return factory

    return deco


def register_without_checkpoint(name: str, cls: type, label: str, **fixed: Any) -> None:
    """Register ``cls(cfg, **fixed, **options)`` under ``name`` for an estimator that has nothing to load
    (``checkpoint`` must be None: ``ValueError`` naming ``label`` otherwise)."""

    def factory(cfg: SystemConfig, checkpoint: str | None = None, **options: Any) -> Estimator:
        if checkpoint is not None:
            raise ValueError(f"the {label} has no checkpoint")
        return cls(cfg, **fixed, **options)

    factory.__module__ = cls.__module__  # the registry tells a second module's registration of a name by this
    factory.__name__ = f"create_{name.replace('-', '_')}"
    register(name)(factory)


def _discover() -> None:
    """Import every estimator module once so that each has made its :func:`register` calls."""
    global _discovered
    if _discovered:
        return
    for info in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
        importlib.import_module(info.name)
    for name in _EXTRA_PROVIDERS:
        importlib.import_module(name)
    _discovered = True


def available() -> list[str]:
    """Every registered estimator name, sorted."""
    _discover()
    return sorted(_FACTORIES)


def create(name: str, cfg: SystemConfig, checkpoint: str | None = None, **options: Any) -> Estimator:
    """Build the estimator ``name`` for ``cfg`` (learned ones load ``checkpoint``)."""
    if name not in _FACTORIES:
        _discover()
    if name not in _FACTORIES:
        raise ValueError(f"unknown estimator {name!r}; choose one of {available()}")
    return _FACTORIES[name](cfg, checkpoint=checkpoint, **options)
