"""Fig. 9: location and velocity RMSE versus the number of receive antennas Mr at the operating power P0 (Section V-B).

The encoder's input grid changes, so every learned scheme is trained once per Mr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import Context, titled
from .discuss import compare_lines, growth_line
from .plotting import plot_accuracy
from .store import Point
from .sweep import AccuracySweep, system_sweep

NAME = "fig9"
TITLE = "Fig. 9: RMSE versus the number of antennas per receive AP Mr (operating power P0)"
X_NAME = "n_rx_antennas"
VALUES = {"tiny": (4, 8), "quick": (4, 8, 16), "paper": (4, 8, 16, 32)}

PAPER = ("More receive antennas improve localization (finer angular resolution); Mr has little effect on velocity.")


def sweep(ctx: Context) -> AccuracySweep:
    return system_sweep(ctx, name=NAME, x_name=X_NAME, values=VALUES[ctx.preset], field_name="n_rx_antennas")


def points(ctx: Context) -> list[Point]:
    return sweep(ctx).points(ctx)


def figures(ctx: Context, rows: list[dict[str, Any]]) -> list[Path]:
    vals = VALUES[ctx.preset]
    return plot_accuracy(rows, x_label="antennas per receive AP Mr", title=titled(ctx, TITLE),
                         out_base=ctx.figures_dir / NAME,
                         x_log=True, x_ticks=vals, x_ticklabels=[str(v) for v in vals])


def discussion(ctx: Context, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"- **Paper:** {PAPER}"]
    lines += growth_line(rows, "Mr", VALUES[ctx.preset])
    lines += compare_lines(rows, reference_x=VALUES[ctx.preset][-1], x_unit="antennas")
    return lines
