"""The experiment registry: the names of the experiments of Section V, their modules, their point stores, running a
sweep and reading its stored rows (re-exported by :mod:`cfisac.experiments`)."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from .common import Context
from .store import PointStore, run_points

__all__ = ["DEMO", "EXPERIMENTS", "get", "load_rows", "run_experiment", "store_of"]

EXPERIMENTS = ("fig6", "fig7", "fig8", "fig9", "fig10", "fig11", "fig12", "fig13", "fig14", "table3", "fronthaul")
DEMO = ("fig6", "fronthaul")  # ``cfisac reproduce --preset quick``


def get(name: str) -> ModuleType:
    """The experiment module ``name`` (one of :data:`EXPERIMENTS`)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {list(EXPERIMENTS)} (or 'all', 'demo')")
    return importlib.import_module(f"{__package__}.{name}")


def store_of(ctx: Context, name: str) -> PointStore:
    return PointStore(ctx.root, name, base_cfg=ctx.base_cfg)


def run_experiment(name: str, ctx: Context, *, only: Iterable[int] | None = None, fail_fast: bool = False) -> dict:
    """Run (resume) the sweep of experiment ``name``; returns the counts of :func:`run_points`."""
    mod = get(name)
    pts = mod.points(ctx)
    ctx.log(f"== {mod.TITLE}: {len(pts)} points -> {store_of(ctx, name).path}")
    return run_points(store_of(ctx, name), pts, only=only, force=ctx.force, fail_fast=fail_fast, log=ctx.log,
                      workers=ctx.workers, threads_per_worker=ctx.worker_threads)


def load_rows(ctx: Context, name: str, *, current_only: bool = True) -> list[dict[str, Any]]:
    """The latest successful row of every point of ``name``; with ``current_only``, only rows whose spec matches
    the current points (rows of an older configuration are left out of figures)."""
    store = store_of(ctx, name)
    latest = store.latest()
    if not current_only:
        return list(latest.values())
    current = {p.key: p.spec_hash for p in get(name).points(ctx)}
    return [r for k, r in latest.items() if current.get(k) == r["spec_hash"]]
