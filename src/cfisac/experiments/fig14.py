"""Fig. 14: location and velocity RMSE under residual timing and carrier frequency offsets (Section V-E, Eq. 30).

Offsets are drawn independently per (transmit AP, receive AP, OFDM symbol) with standard deviations
sigma_tau = s ns and sigma_f = s kHz for the offset level s on the x axis (the paper gives no values). A
timing offset of 1 ns turns the phase by up to 2 pi x 1 ns x the sensed bandwidth (0.39 rad at 61 MHz); a frequency
offset of 1 kHz by 2 pi x 1 kHz x dT (0.03 rad) per symbol. Every learned scheme is trained with the offsets it is
evaluated on (the paper trains in a "dynamic setting" including offsets). The root-CRLB assumes the offsets known
(``cfisac.crlb(..., clock="known")``): with unknown independent offsets per symbol the velocities are unidentifiable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import SystemConfig
from .common import Context, operating_config, titled
from .discuss import compare_lines, growth_line
from .plotting import plot_accuracy
from .store import Point
from .sweep import AccuracySweep

NAME = "fig14"
TITLE = "Fig. 14: RMSE under residual timing / frequency offsets (operating power P0)"
X_NAME = "offset_level"
VALUES = {"tiny": (0.0, 10.0), "quick": (0.0, 1.0, 3.0, 10.0), "paper": (0.0, 1.0, 3.0, 10.0, 30.0)}
SERIES = {"tiny": ("TO+CFO",), "quick": ("TO+CFO",), "paper": ("TO", "CFO", "TO+CFO")}
PAPER = ("The D-VQVAE stays robust to the residual TO / CFO: their effect on location and velocity accuracy is "
         "small given enough OFDM symbols.")


def schemes(ctx: Context) -> list[str]:
    return ["prior", *[s for s in ctx.budget.classical if s != "monostatic"], *ctx.budget.learned]


def offsets(level: float, series: str) -> dict[str, float]:
    return {"timing_offset_std": level * 1e-9 if "TO" in series else 0.0,
            "frequency_offset_std": level * 1e3 if "CFO" in series else 0.0}


def sweep(ctx: Context) -> AccuracySweep:
    def cfg_for(ctx: Context, s: float, series: str) -> SystemConfig:
        return operating_config(ctx, **offsets(s, series))

    series = SERIES[ctx.preset]
    return AccuracySweep(name=NAME, x_name=X_NAME, values=VALUES[ctx.preset], cfg_for=cfg_for, schemes=schemes(ctx),
                         series=series if len(series) > 1 else ("",), training="per_point",
                         crlb_options={"clock": "known"})


def points(ctx: Context) -> list[Point]:
    if len(SERIES[ctx.preset]) == 1:  # one series: store it unnamed, but simulate its offsets
        sw = sweep(ctx)
        only = SERIES[ctx.preset][0]
        inner = sw.cfg_for
        sw.cfg_for = lambda c, s, series: inner(c, s, only)
        return sw.points(ctx)
    return sweep(ctx).points(ctx)


def figures(ctx: Context, rows: list[dict[str, Any]]) -> list[Path]:
    vals = VALUES[ctx.preset]
    return plot_accuracy(rows, x_label="offset level s (sigma_tau = s ns, sigma_f = s kHz)", title=titled(ctx, TITLE),
                         out_base=ctx.figures_dir / NAME, x_symlog=True, x_ticks=vals,
                         x_ticklabels=[f"{v:g}" for v in vals], crlb_label="root-CRLB (offsets known)",
                         note=f"offsets: {' / '.join(SERIES[ctx.preset])}, independent per AP pair and OFDM symbol")


def discussion(ctx: Context, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"- **Paper:** {PAPER}"]
    lines += growth_line(rows, "s", VALUES[ctx.preset])
    lines += compare_lines(rows, reference_x=VALUES[ctx.preset][-1], x_unit="(offset level)")
    return lines
