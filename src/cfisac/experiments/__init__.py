"""The experiments of Section V: one module per figure / table, resumable sweeps, and the report.

Each experiment module (``fig6`` ... ``fig14``, ``table3``, ``fronthaul``) exposes ``NAME``, ``TITLE``,
``points(ctx) -> list[Point]`` (the sweep, in a fixed order: ``--point K`` runs the K-th), ``figures(ctx, rows)``
(PNG + SVG paths) and ``discussion(ctx, rows)`` (markdown lines comparing with the paper). Results are stored point
by point in ``reports/<preset>/points/<name>.csv`` (:mod:`cfisac.experiments.store`); :mod:`.report` collects what is
there into ``reports/<preset>/report.md`` and ``report.html``.

Python use::

    from cfisac.experiments import make_context, run_experiment, write_report
    ctx = make_context("quick")
    run_experiment("fig6", ctx)            # resumes: finished points are skipped
    write_report(ctx)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .common import BUDGETS, Budget, Context, make_context
from .registry import DEMO, EXPERIMENTS, get, load_rows, run_experiment, store_of
from .store import COLUMNS, Point, PointStore, run_points

__all__ = [
    "BUDGETS", "COLUMNS", "DEMO", "EXPERIMENTS", "Budget", "Context", "Point", "PointStore", "get", "load_rows",
    "make_context", "run_experiment", "run_points", "store_of", "write_report",
]


def write_report(ctx: Context, names: Iterable[str] | None = None, **kw: Any):
    from .report import write_report as _write

    return _write(ctx, names, **kw)
