"""Fig. 7: location and velocity RMSE versus the number of targets Q at the operating power P0 (Section V-B).

The network's output has 4Q numbers, so every learned scheme is trained once per Q. MUSIC needs Q < Mr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import Context, titled
from .discuss import compare_lines, curve, growth_line
from .plotting import plot_accuracy
from .store import Point
from .sweep import AccuracySweep, system_sweep

NAME = "fig7"
TITLE = "Fig. 7: RMSE versus the number of targets Q (operating power P0)"
X_NAME = "n_targets"
VALUES = {"tiny": (1, 2), "quick": (1, 2, 3), "paper": (1, 2, 3, 4, 5)}
REFERENCE = {"tiny": 1, "quick": 2, "paper": 2}

PAPER = ("As Q grows, the conventional schemes (monostatic, CS, MUSIC) degrade significantly while the DNN schemes "
         "keep a satisfactory accuracy.")


def sweep(ctx: Context) -> AccuracySweep:
    return system_sweep(ctx, name=NAME, x_name=X_NAME, values=VALUES[ctx.preset], field_name="n_targets")


def points(ctx: Context) -> list[Point]:
    return sweep(ctx).points(ctx)


def figures(ctx: Context, rows: list[dict[str, Any]]) -> list[Path]:
    vals = VALUES[ctx.preset]
    return plot_accuracy(rows, x_label="number of targets Q", title=titled(ctx, TITLE),
                         out_base=ctx.figures_dir / NAME,
                         x_ticks=vals, x_ticklabels=[str(v) for v in vals])


def discussion(ctx: Context, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"- **Paper:** {PAPER}"]
    lines += growth_line(rows, "Q", VALUES[ctx.preset])
    lines += compare_lines(rows, reference_x=VALUES[ctx.preset][-1], x_unit="targets")
    if curve(rows, "crlb"):
        lines.append("- The root-CRLB grows with Q as well: more unknowns (4Q + 2NMQ) share the same observations.")
    return lines
