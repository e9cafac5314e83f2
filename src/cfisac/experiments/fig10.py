"""Fig. 10: estimated locations and velocities against the ground truth on a few test scenes (Section V-B).

The learned schemes of Fig. 6 (the same cached models: ``Budget.power_training`` at the CPU presets, at P0 at
``paper``) and the classical ones on
the first test scenes at P0; arrows show one second of motion (true: black, estimated: the scheme's colour).
The estimates are stored in ``artifacts/fig10/<scheme>.npz``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .common import Context, operating_config, operating_power, titled
from .discuss import fmt_pair
from .plotting import plt, save
from .scheme import is_learned, scheme_label, scheme_style
from .store import Point

NAME = "fig10"
TITLE = "Fig. 10: estimates versus ground truth (operating power P0)"
N_SCENES = {"tiny": 2, "quick": 4, "paper": 4}
PAPER = "D-VQVAE location errors below 1 m; estimated velocities close to the ground truth."


def schemes(ctx: Context) -> list[str]:
    classical = [s for s in ctx.budget.classical if s != "monostatic"]  # no velocity vector
    return [*ctx.budget.learned, *classical]


def _artifact(ctx: Context, scheme: str) -> Path:
    return ctx.artifacts_dir / NAME / f"{scheme}.npz"


def points(ctx: Context) -> list[Point]:
    from . import fig6
    from .evaluation import estimates_of
    from .learned import training_spec

    cfg = operating_config(ctx)
    fig6_sweep = fig6.sweep(ctx)
    n = N_SCENES[ctx.preset]
    pts = []
    for k, scheme in enumerate(schemes(ctx)):
        spec: dict[str, Any] = {"n_scenes": n}
        if is_learned(scheme):
            cfgs, opts = fig6_sweep.train_spec(ctx, scheme, operating_power(ctx), "")
            spec["training"] = training_spec(ctx, scheme, cfgs, **opts)

        def run(scheme: str = scheme) -> dict[str, Any]:
            if is_learned(scheme):
                cfgs, opts = fig6_sweep.train_spec(ctx, scheme, operating_power(ctx), "")
                est = estimates_of(ctx, scheme, cfg, n, train_cfgs=cfgs, train_options=opts)
            else:
                est = estimates_of(ctx, scheme, cfg, n)
            arrays = {k: v.numpy() for k, v in est.items()}
            path = _artifact(ctx, scheme)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **arrays)
            pe = np.linalg.norm(arrays["est_positions"] - arrays["true_positions"], axis=-1)
            ve = np.linalg.norm(arrays["est_velocities"] - arrays["true_velocities"], axis=-1)
            return {"position_rmse": float(np.sqrt((pe**2).mean())), "velocity_rmse": float(np.sqrt((ve**2).mean())),
                    "n_scenes": n, "metrics": {"position_errors": pe.round(3).tolist(),
                                               "velocity_errors": ve.round(3).tolist()}}

        pts.append(Point(key=f"scheme={scheme}", scheme=scheme, x_name="scene", x_value=float(k), cfg=cfg,
                         seed=ctx.seed, spec=spec, run=run))
    return pts


def figures(ctx: Context, rows: list[dict[str, Any]]) -> list[Path]:
    data = {r["scheme"]: np.load(_artifact(ctx, r["scheme"])) for r in rows if _artifact(ctx, r["scheme"]).is_file()}
    if not data:
        return []
    first = next(iter(data.values()))
    n = first["true_positions"].shape[0]
    cols = min(n, 2)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.6 * cols, 5.0 * nrows + 0.8), squeeze=False,
                             layout="constrained")
    cfg = ctx.base_cfg
    (x0, x1), (y0, y1) = cfg.area
    for b in range(nrows * cols):
        ax = axes[b // cols][b % cols]
        if b >= n:
            ax.axis("off")
            continue
        for t, p in enumerate(cfg.tx_positions):
            ax.plot(*p, "^", color="0.3", markersize=10, label="transmit AP" if t == 0 else None, clip_on=False)
        for r_, p in enumerate(cfg.rx_positions):
            ax.plot(*p, "s", color="0.3", markersize=9, label="receive AP" if r_ == 0 else None, clip_on=False)
        tp, tv = first["true_positions"][b], first["true_velocities"][b]
        ax.plot(tp[:, 0], tp[:, 1], "o", markersize=11, markerfacecolor="none", markeredgecolor="black",
                markeredgewidth=2, label="ground truth")
        for q in range(tp.shape[0]):
            ax.annotate("", xy=tp[q] + tv[q], xytext=tp[q],
                        arrowprops=dict(arrowstyle="->", color="black", lw=1.8))
        for scheme, d in data.items():
            st = scheme_style(scheme)
            ep, ev = d["est_positions"][b], d["est_velocities"][b]
            ax.plot(ep[:, 0], ep[:, 1], linestyle="none", marker=st.get("marker") or "o", color=st["color"],
                    markersize=8, label=scheme_label(scheme))
            for q in range(ep.shape[0]):
                ax.plot([tp[q, 0], ep[q, 0]], [tp[q, 1], ep[q, 1]], ":", color=st["color"], lw=0.8)
                if np.all(np.isfinite(ev[q])):
                    ax.annotate("", xy=ep[q] + ev[q], xytext=ep[q],
                                arrowprops=dict(arrowstyle="->", color=st["color"], lw=1.2))
        ax.set_xlim(x0 - 5, x1 + 5)
        ax.set_ylim(y0 - 5, y1 + 5)
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        ax.set_title(f"test scene {b}", fontsize=10)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=9, frameon=False)
    fig.suptitle(titled(ctx, TITLE) + "; arrows: 1 s of motion (m/s -> m)", fontsize=11)
    return save(fig, ctx.figures_dir / NAME)


def discussion(ctx: Context, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"- **Paper:** {PAPER}"]
    for r in sorted(rows, key=lambda r: r["position_rmse"]):
        pe = r["metrics"].get("position_errors", [])
        flat = [e for s in pe for e in s]
        below = sum(e < 1.0 for e in flat)
        lines.append(f"- **{scheme_label(r['scheme'])}:** RMSE {fmt_pair(r['position_rmse'], r['velocity_rmse'])} "
                     f"on these {int(r['n_scenes'])} scenes; {below} of {len(flat)} targets located within 1 m.")
    return lines
