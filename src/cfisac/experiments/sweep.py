"""Accuracy sweeps (Figs. 6-9, 13, 14): RMSE of every scheme and the root-CRLB against one system parameter.

A sweep evaluates, for every value of the swept parameter (and every series, e.g. the clutter variance of Fig. 13),
the root-CRLB of the test scenes, the prior predictor, the classical baselines and the learned schemes. Learned
schemes are trained either once at a reference point of the sweep and evaluated at every point
(``training="reference"``: possible where the network's input and output shapes do not change along the sweep),
once on the union of the sweep's points (``training="pooled"``: the samples cycle through the points' transmit
powers, :attr:`cfisac.train.TrainConfig.power_dbm_pool`; Fig. 6 with ``Budget.power_training="pooled"``), or once
per point (``training="per_point"``: where the shapes change, e.g. Q, Ts, Mr, and wherever the budget allows).
Pooling needs points that differ in the transmit power only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import SystemConfig
from .common import Context
from .evaluation import evaluate_scheme
from .scheme import is_learned
from .store import Point
from .workers import PointTask

__all__ = ["AccuracySweep", "fmt_value", "system_sweep"]


def fmt_value(v: float) -> str:
    return f"{v:g}"


@dataclass
class AccuracySweep:
    """The points of one accuracy figure; see the module docstring.

    ``cfg_for(ctx, value, series)`` gives the system config of a point; ``schemes`` the schemes besides ``crlb``
    (which is always added); ``crlb_options`` are passed to :func:`cfisac.crlb` (``clutter`` / ``clock``).
    """

    name: str
    x_name: str
    values: Sequence[float]
    cfg_for: Callable[[Context, float, str], SystemConfig]
    schemes: Sequence[str]
    series: Sequence[str] = ("",)
    training: str = "per_point"
    reference: tuple[float, str] | None = None  # (value, series) trained at under training="reference"
    crlb_options: dict[str, Any] = field(default_factory=dict)
    learned_overrides: Callable[[float, str], dict[str, Any]] | None = None
    # under training="reference": the swept values a learned scheme's training samples cycle through instead of the
    # reference value alone (None: the reference value), by scheme (Fig. 6: Recipe.lowest_power_every)
    train_values: Callable[[str], Sequence[float] | None] | None = None

    def __post_init__(self) -> None:
        if self.training not in ("reference", "per_point", "pooled"):
            raise ValueError(f"training must be 'reference', 'pooled' or 'per_point', got {self.training!r}")
        if self.training == "reference" and self.reference is None:
            raise ValueError("training='reference' needs reference=(value, series)")
        if not self.values:
            raise ValueError(f"sweep {self.name} has no values")

    def train_spec(self, ctx: Context, scheme: str, value: float, series: str) -> tuple[list[SystemConfig], dict]:
        """Training configs and options of a learned point (the same for every point under ``reference`` and, for
        one series, under ``pooled``: every value's config, in the order of ``values``)."""
        custom = None
        if self.training == "reference":
            assert self.reference is not None
            value, series = self.reference
            custom = self.train_values(scheme) if self.train_values is not None else None
        overrides = self.learned_overrides(value, series) if self.learned_overrides else {}
        values = self.values if self.training == "pooled" else tuple(custom) if custom else (value,)
        return [self.cfg_for(ctx, v, series) for v in values], {"model_overrides": overrides}

    def points(self, ctx: Context) -> list[Point]:
        """CRLB, prior and classical points first (cheap), then the learned ones; within each pass all schemes of
        one value before the next value (the test scenes of a value are simulated once)."""
        schemes = ["crlb", *[s for s in self.schemes if s != "crlb"]]
        base_spec = {"crlb_max_scenes": ctx.budget.crlb_max_scenes}
        pts: list[Point] = []
        for learned_pass in (False, True):
            for series in self.series:
                for value in self.values:
                    cfg = self.cfg_for(ctx, value, series)
                    for scheme in schemes:
                        if is_learned(scheme) != learned_pass:
                            continue
                        key = f"{self.x_name}={fmt_value(value)}|" + (f"series={series}|" if series else "") + \
                              f"scheme={scheme}"
                        spec: dict[str, Any] = {**base_spec, "n_test": ctx.budget.n_test_of(scheme)}
                        if scheme not in ("crlb", "prior") and not is_learned(scheme):
                            spec["max_seconds"] = ctx.budget.scheme_seconds
                        if scheme == "crlb":
                            spec["crlb_options"] = self.crlb_options
                        if scheme == "prior":  # the best fixed guess (not the area centre of older stores)
                            spec["guess"] = "best"
                        if is_learned(scheme):
                            from .learned import training_spec

                            cfgs, opts = self.train_spec(ctx, scheme, value, series)
                            spec["training"] = training_spec(ctx, scheme, cfgs, **opts)
                        task = None if is_learned(scheme) else PointTask(
                            evaluate_point, (ctx.settings(), scheme, cfg, dict(self.crlb_options)))
                        pts.append(Point(key=key, scheme=scheme, series=series, x_name=self.x_name,
                                         x_value=float(value), cfg=cfg, seed=ctx.seed, spec=spec,
                                         run=self._runner(ctx, scheme, value, series, cfg), task=task))
        return pts

    def _runner(self, ctx: Context, scheme: str, value: float, series: str,
                cfg: SystemConfig) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            if scheme == "crlb":
                from . import evaluation  # looked up at call time (tests replace it)

                return evaluation.crlb_of_scenes(ctx, cfg, **self.crlb_options)
            if is_learned(scheme):
                cfgs, opts = self.train_spec(ctx, scheme, value, series)
                return evaluate_scheme(ctx, scheme, cfg, train_cfgs=cfgs, train_options=opts,
                                       crlb_options=self.crlb_options)
            return evaluate_scheme(ctx, scheme, cfg, crlb_options=self.crlb_options)

        return run


def evaluate_point(settings: dict[str, Any], scheme: str, cfg: SystemConfig, crlb_options: dict[str, Any], *,
                   log: Callable[[str], Any]) -> dict[str, Any]:
    """A sweep's root-CRLB, prior or classical point in a worker process (its :class:`PointTask`): the same result
    as the point's in-process ``run``, on a context rebuilt from ``settings`` (:meth:`Context.settings`)."""
    from . import evaluation
    from .common import context_from_settings

    ctx = context_from_settings(settings, log)
    if scheme == "crlb":
        return evaluation.crlb_of_scenes(ctx, cfg, **crlb_options)
    return evaluate_scheme(ctx, scheme, cfg, crlb_options=crlb_options)


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def system_sweep(ctx: Context, *, name: str, x_name: str, values: Sequence[float], field_name: str) -> AccuracySweep:
    """The sweep of one integer :class:`SystemConfig` field ``field_name`` (Figs. 7-9: Q, Ts, Mr) at the operating
    power P0, every scheme of the budget, learned schemes trained once per value (the shapes change)."""
    from .common import operating_config

    def cfg_for(ctx: Context, value: float, series: str) -> SystemConfig:
        return operating_config(ctx, **{field_name: int(value)})

    return AccuracySweep(name=name, x_name=x_name, values=values, cfg_for=cfg_for,
                         schemes=["prior", *ctx.budget.classical, *ctx.budget.learned], training="per_point")
