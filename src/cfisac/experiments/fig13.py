"""Fig. 13: location and velocity RMSE versus the number of clutter scatterers S for clutter variances
chi~^2 in {1, 0.1, 0.01} (Section V-D, Eq. 29), the operating power P0.

Static scatterers uniform in the area (Eq. 29). Every learned scheme is trained on the clutter condition it is
evaluated on (one model per (S, chi~^2)). The root-CRLB treats the scatterers' positions and coefficients as
unknown nuisance parameters (``cfisac.crlb(..., clutter="nuisance")``), so it rises with S; one curve per
chi~^2 (line style).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import SystemConfig
from .common import Context, operating_config, titled
from .discuss import curve, fmt_pair
from .plotting import plot_accuracy
from .store import Point
from .sweep import AccuracySweep

NAME = "fig13"
TITLE = "Fig. 13: RMSE versus the number of clutter scatterers S (operating power P0)"
X_NAME = "n_clutter"
VALUES = {"tiny": (3, 9), "quick": (3, 9, 18), "paper": (3, 6, 9, 12, 15, 18)}
VARIANCES = {"tiny": ("1", "0.01"), "quick": ("1", "0.1", "0.01"), "paper": ("1", "0.1", "0.01")}
PAPER = ("The RMSE grows slowly with S (more clutter interference, lower SNR); even with chi~^2 = 1 the D-VQVAE "
         "keeps a satisfactory accuracy.")


def schemes(ctx: Context) -> list[str]:
    return ["prior", *[s for s in ctx.budget.classical if s != "monostatic"], *ctx.budget.learned]


def sweep(ctx: Context) -> AccuracySweep:
    def cfg_for(ctx: Context, s: float, series: str) -> SystemConfig:
        return operating_config(ctx, n_clutter=int(s), clutter_variance=float(series))

    return AccuracySweep(name=NAME, x_name=X_NAME, values=VALUES[ctx.preset], cfg_for=cfg_for,
                         schemes=schemes(ctx), series=VARIANCES[ctx.preset], training="per_point",
                         crlb_options={"clutter": "nuisance"})


def points(ctx: Context) -> list[Point]:
    return sweep(ctx).points(ctx)


def figures(ctx: Context, rows: list[dict[str, Any]]) -> list[Path]:
    vals = VALUES[ctx.preset]
    return plot_accuracy(rows, x_label="number of clutter scatterers S", title=titled(ctx, TITLE),
                         out_base=ctx.figures_dir / NAME,
                         x_ticks=vals, x_ticklabels=[str(v) for v in vals],
                         series_label=r"clutter variance $\tilde{\chi}^2$ = ", series_order=VARIANCES[ctx.preset],
                         crlb_label="root-CRLB (clutter unknown)")


def discussion(ctx: Context, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"- **Paper:** {PAPER}"]
    for series in VARIANCES[ctx.preset]:
        parts = []
        for scheme in ["crlb", *schemes(ctx)]:
            c = curve(rows, scheme, series)
            if len(c) >= 2:
                parts.append(f"{scheme}: {fmt_pair(c[0][1], c[0][2])} at S = {c[0][0]:g} -> "
                             f"{fmt_pair(c[-1][1], c[-1][2])} at S = {c[-1][0]:g}")
        if parts:
            lines.append(f"- **Ours, chi~^2 = {series}:** " + "; ".join(parts) + ".")
    return lines
