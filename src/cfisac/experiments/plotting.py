"""Matplotlib (Agg) figures of the experiments: RMSE panels with the root-CRLB as a line, saved as PNG and SVG."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .scheme import Scheme, scheme_label, scheme_style  # noqa: E402

__all__ = ["SERIES_STYLES", "plot_accuracy", "save"]

SERIES_STYLES = ("-", "--", ":", "-.")
FEW = 20  # points evaluated on fewer test scenes are drawn with hollow markers
ORDER = ("crlb", "prior", "monostatic", "music", "cs", "ml", "cnn", "dvae", "dvqvae")


def _order(scheme: str) -> tuple[int, str]:
    """Sort key of a scheme name: the paper's order of its kind (:data:`ORDER`), then the name."""
    kind = Scheme.parse(scheme).kind
    return (ORDER.index(kind) if kind in ORDER else len(ORDER), scheme)


def save(fig: Any, out_base: Path) -> list[Path]:
    """Write ``out_base``.png (150 dpi) and .svg; close the figure."""
    out_base.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_base.with_suffix(".png"), out_base.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=130)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def log_ticks(ax: Any, axis: str = "y") -> None:
    """Plain-number tick labels on a log axis (0.5, 1, 2, 5, 10, ... instead of 5x10^-1); minor ticks labelled too
    when the axis spans less than about two decades."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    a = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    a.set_major_locator(LogLocator(base=10))
    a.set_major_formatter(fmt)
    if lo > 0 and hi / lo < 120:
        a.set_minor_locator(LogLocator(base=10, subs=(2.0, 3.0, 5.0)))
        a.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        a.set_minor_formatter(NullFormatter())


def _mark_at_prior(ax: Any, rows: Sequence[dict[str, Any]], col: str, series: str) -> None:
    """Name the curves hidden under the prior predictor's line (within 10 % of it at every x)."""
    prior = {r["x_value"]: r[col] for r in rows if r["scheme"] == "prior" and r["series"] == series
             and _finite(r[col])}
    if not prior:
        return
    hidden = []
    for scheme in sorted({r["scheme"] for r in rows} - {"prior", "crlb"}, key=_order):
        pts = [r for r in rows if r["scheme"] == scheme and r["series"] == series and _finite(r[col])]
        if pts and all(r["x_value"] in prior and abs(r[col] / prior[r["x_value"]] - 1) < 0.1 for r in pts):
            hidden.append(scheme_label(scheme).split(" [")[0])
    if len(hidden) >= 2:
        x1 = max(prior)
        ax.annotate("level with the prior: " + ", ".join(hidden), (x1, prior[x1]), xytext=(-2, -8),
                    textcoords="offset points", fontsize=7, color="0.2", va="top", ha="right", zorder=11,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))


def plot_accuracy(
    rows: Sequence[dict[str, Any]], *, x_label: str, title: str, out_base: Path, x_log: bool = False,
    x_symlog: bool = False, x_ticks: Sequence[float] | None = None, x_ticklabels: Sequence[str] | None = None,
    series_label: str = "", series_order: Sequence[str] | None = None, crlb_label: str = "root-CRLB",
    note: str = "", x_marks: Sequence[tuple[float, str]] = (),
) -> list[Path]:
    """Two panels, (a) location RMSE (m) and (b) velocity RMSE (m/s) against ``x_value`` on a log y axis.

    One curve per (scheme, series); the ``crlb`` scheme is drawn as a thick black line without markers (its values
    are in ``root_crlb_position`` / ``root_crlb_velocity``), the prior predictor as a dotted grey line. With several
    series (e.g. clutter variances) the colour gives the scheme and the line style the series, each with its own
    legend entries. ``x_marks``: vertical dashed lines with a label (e.g. the operating power).
    """
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 5.2), layout="constrained")
    present = {r["series"] for r in rows}
    series_all = [s for s in (series_order or sorted(present)) if s in present]
    series_all += sorted(present - set(series_all))
    multi = len(series_all) > 1
    curves: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        curves.setdefault((r["scheme"], r["series"]), []).append(r)
    if x_ticks is None:
        x_ticks = sorted({r["x_value"] for r in rows})
        x_ticklabels = [f"{v:g}" for v in x_ticks]
    schemes_drawn: list[str] = []
    few_any = False
    for ax, (col, crlb_col, ylabel) in zip(
        axes, (("position_rmse", "root_crlb_position", "location RMSE (m)"),
               ("velocity_rmse", "root_crlb_velocity", "velocity RMSE (m/s)")), strict=True,
    ):
        for (scheme, series), pts in sorted(curves.items(), key=lambda kv: (_order(kv[0][0]), kv[0][1])):
            if multi and scheme == "prior" and series != series_all[0]:
                continue  # the prior ignores the echoes: the same for every series
            pts = sorted(pts, key=lambda r: r["x_value"])
            key = crlb_col if scheme == "crlb" else col
            ys = [r[key] for r in pts if _finite(r[key])]
            xs = [r["x_value"] for r in pts if _finite(r[key])]
            if not ys:
                continue
            style = dict(scheme_style(scheme))
            if multi and scheme != "prior":
                style["linestyle"] = SERIES_STYLES[series_all.index(series) % len(SERIES_STYLES)]
            label = crlb_label if scheme == "crlb" else scheme_label(scheme)
            if scheme not in schemes_drawn:
                schemes_drawn.append(scheme)
            if scheme == "prior":  # often level with schemes that learned nothing: keep it visible on top
                style.update(zorder=10, linewidth=2.2)
            (line,) = ax.plot(xs, ys, label=None if multi else label, markersize=6,
                              **{k: v for k, v in style.items() if v is not None})
            kind = col.split("_")[0]
            bars = [(r["x_value"], r[key], (r.get("metrics") or {}).get(f"{kind}_rmse_ci95")) for r in pts
                    if _finite(r[key])]
            bars = [(x, y, ci) for x, y, ci in bars if ci and all(_finite(c) for c in ci)]
            if bars and scheme != "crlb":  # 95 % bootstrap interval of every RMSE
                bx, by, bci = zip(*bars, strict=True)
                err = [[max(y - c[0], 0.0) for y, c in zip(by, bci, strict=True)],
                       [max(c[1] - y, 0.0) for y, c in zip(by, bci, strict=True)]]
                ax.errorbar(bx, by, yerr=err, fmt="none", ecolor=line.get_color(), elinewidth=1.0, capsize=2.5,
                            alpha=0.8, zorder=line.get_zorder())
            few = [(r["x_value"], r[key]) for r in pts if _finite(r[key]) and r.get("n_scenes", math.inf) < FEW]
            if few and scheme != "crlb" and style.get("marker"):
                ax.plot(*zip(*few, strict=True), linestyle="none", marker=style["marker"], markersize=6,
                        markerfacecolor="white", markeredgecolor=line.get_color())
                few_any = True
        ax.set_yscale("log")
        if x_log:
            ax.set_xscale("log", base=2)
        elif x_symlog:
            ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xticks(list(x_ticks))
        ax.set_xticklabels(list(x_ticklabels) if x_ticklabels is not None else [f"{v:g}" for v in x_ticks])
        if x_log or x_symlog:
            ax.xaxis.set_minor_locator(plt.NullLocator())
        log_ticks(ax)
        _mark_at_prior(ax, rows, col, series_all[0] if multi else "")
        for xm, text in x_marks:
            ax.axvline(xm, color="0.45", linestyle=(0, (4, 3)), linewidth=1.0, zorder=0)
            ax.annotate(text, (xm, 0.0), xycoords=("data", "axes fraction"), xytext=(3, 4),
                        textcoords="offset points", ha="left", va="bottom", fontsize=7.5, color="0.3")
        ax.set_xlabel(x_label)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.4)
        ax.grid(True, which="minor", alpha=0.12)
    axes[0].set_title("(a) location")
    axes[1].set_title("(b) velocity")
    if multi:
        handles, labels = [], []
        for scheme in sorted(schemes_drawn, key=_order):
            st = scheme_style(scheme)
            handles.append(Line2D([], [], color=st["color"], marker=st.get("marker"), linestyle="-" if scheme not in (
                "prior",) else ":", lw=st.get("linewidth", 1.5)))
            labels.append(crlb_label if scheme == "crlb" else scheme_label(scheme))
        for k, s in enumerate(series_all):
            handles.append(Line2D([], [], color="0.2", linestyle=SERIES_STYLES[k % len(SERIES_STYLES)]))
            labels.append(f"{series_label}{s}")
    else:
        handles, labels = axes[0].get_legend_handles_labels()
        h1, l1 = axes[1].get_legend_handles_labels()
        for h, lab in zip(h1, l1, strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    ncol = min(4, max(1, len(labels)))
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8.5, frameon=False)
    if few_any:
        note = (note + "; " if note else "") + (f"hollow markers: fewer than {FEW} test scenes (the line of the "
                                                 "bound is that of all test scenes; the tables give each row's own)")
    note = (note + "; " if note else "") + "error bars: 95 % bootstrap intervals over the test scenes"
    fig.suptitle(title + ("\n" + "\n".join(textwrap.wrap(note, 150)) if note else ""), fontsize=11)
    return save(fig, out_base)
