"""Fig. 8: location and velocity RMSE versus the number of OFDM symbols Ts at the operating power P0 (Section V-B).

The symbol stride of the preset's sensing comb is kept, so fewer symbols mean a shorter frame and a coarser Doppler
resolution, as in the paper. The encoder's input grid changes, so every learned scheme is trained once per Ts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import Context, titled
from .discuss import compare_lines, growth_line
from .plotting import plot_accuracy
from .store import Point
from .sweep import AccuracySweep, system_sweep

NAME = "fig8"
TITLE = "Fig. 8: RMSE versus the number of OFDM symbols Ts (operating power P0)"
X_NAME = "n_symbols"
VALUES = {"tiny": (4, 8), "quick": (4, 8, 16), "paper": (32, 64, 128, 256)}

PAPER = ("Ts has little effect on location; fewer symbols degrade velocity (coarser Doppler resolution), and the "
         "D-VQVAE is more robust to this than the other schemes.")


def sweep(ctx: Context) -> AccuracySweep:
    return system_sweep(ctx, name=NAME, x_name=X_NAME, values=VALUES[ctx.preset], field_name="n_symbols")


def points(ctx: Context) -> list[Point]:
    return sweep(ctx).points(ctx)


def figures(ctx: Context, rows: list[dict[str, Any]]) -> list[Path]:
    vals = VALUES[ctx.preset]
    stride = ctx.base_cfg.symbol_stride
    note = f"symbol stride {stride}: the frame spans Ts x {stride} OFDM symbols" if stride > 1 else ""
    return plot_accuracy(rows, x_label="number of OFDM symbols Ts", title=titled(ctx, TITLE),
                         out_base=ctx.figures_dir / NAME,
                         x_log=True, x_ticks=vals, x_ticklabels=[str(v) for v in vals], note=note)


def discussion(ctx: Context, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"- **Paper:** {PAPER}"]
    lines += growth_line(rows, "Ts", VALUES[ctx.preset])
    lines += compare_lines(rows, reference_x=VALUES[ctx.preset][-1], x_unit="symbols")
    return lines
