"""Fig. 12: D-VQVAE location and velocity RMSE versus the fronthaul bits per AP and update (codebook size Nc).

One D-VQVAE per codebook size Nc at the operating power P0; the fronthaul of each is Nb L bits with Nb = log2(Nc)
(Section III-D), computed from the message the AP actually emits. The root-CRLB and the prior predictor of the same
scenes do not depend on Nc and are drawn as horizontal lines; the D-VAE (continuous latents, 32 bits per value) is
shown at its own fronthaul cost for reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.ticker import FuncFormatter

from .common import Context, operating_config, titled
from .discuss import fmt_pair
from .evaluation import evaluate_scheme
from .plotting import log_ticks, plt, save
from .scheme import Scheme, scheme_label, scheme_style
from .store import Point

NAME = "fig12"
TITLE = "Fig. 12: D-VQVAE RMSE versus the fronthaul overhead (codebook size Nc, operating power P0)"
CODEBOOKS = {"tiny": (4, 16), "quick": (4, 32, 256), "paper": (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)}
PAPER = ("A larger codebook lowers the error; Nc = 32 (Nb = 5 bit, 82 kbit per update at the paper's scale) already "
         "performs well, larger codebooks bring small gains.")


def points(ctx: Context) -> list[Point]:
    from ..fronthaul import learned_bits
    from .learned import model_config, training_spec

    cfg = operating_config(ctx)
    base = {"n_test": ctx.budget.n_test, "crlb_max_scenes": ctx.budget.crlb_max_scenes}
    prior_spec = {**base, "n_test": ctx.budget.n_test_of("prior"), "guess": "best"}
    pts = [
        Point(key="scheme=crlb", scheme="crlb", x_name="fronthaul_bits_per_ap", x_value=0.0, cfg=cfg, seed=ctx.seed,
              spec=base, run=lambda: evaluate_scheme(ctx, "crlb", cfg)),
        Point(key="scheme=prior", scheme="prior", x_name="fronthaul_bits_per_ap", x_value=0.0, cfg=cfg,
              seed=ctx.seed, spec=prior_spec, run=lambda: evaluate_scheme(ctx, "prior", cfg)),
    ]
    learned = [s for s in ctx.budget.learned if Scheme.parse(s).kind == "dvqvae"] or ["dvqvae"]
    for scheme in learned:
        for nc in CODEBOOKS[ctx.preset]:
            over = {"num_codes": nc}
            bits = learned_bits("dvqvae", cfg, model_config(ctx, scheme, **over))
            spec = {**base, "training": training_spec(ctx, scheme, [cfg], model_overrides=over)}
            pts.append(Point(
                key=f"Nc={nc}|scheme={scheme}", scheme=scheme, series=f"Nc={nc}", x_name="fronthaul_bits_per_ap",
                x_value=float(bits), cfg=cfg, seed=ctx.seed, spec=spec,
                run=lambda scheme=scheme, over=over: evaluate_scheme(
                    ctx, scheme, cfg, train_cfgs=[cfg], train_options={"model_overrides": over})))
    if "dvae" in ctx.budget.learned:
        spec = {**base, "training": training_spec(ctx, "dvae", [cfg])}
        bits = learned_bits("dvae", cfg, model_config(ctx, "dvae"))
        pts.append(Point(key="scheme=dvae", scheme="dvae", x_name="fronthaul_bits_per_ap", x_value=float(bits),
                         cfg=cfg, seed=ctx.seed, spec=spec, run=lambda: evaluate_scheme(ctx, "dvae", cfg)))
    return pts


def figures(ctx: Context, rows: list[dict[str, Any]]) -> list[Path]:
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 5.0), layout="constrained")
    for ax, col, crlb_col, ylabel in zip(axes, ("position_rmse", "velocity_rmse"),
                                         ("root_crlb_position", "root_crlb_velocity"),
                                         ("location RMSE (m)", "velocity RMSE (m/s)"), strict=True):
        vq: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if Scheme.parse(r["scheme"]).kind == "dvqvae":
                vq.setdefault(r["scheme"], []).append(r)
        labelled: set[float] = set()
        for scheme, pts in sorted(vq.items(), key=lambda kv: kv[0] == "dvqvae"):
            pts.sort(key=lambda r: r["x_value"])
            st = {k2: v for k2, v in scheme_style(scheme).items() if v is not None}
            if scheme != "dvqvae":  # front-end variants under the paper's curve, dashed, so both stay visible
                st.update(linestyle="--", markersize=9, markerfacecolor="none")
            else:
                st.update(linewidth=1.6)
            ax.plot([r["x_value"] for r in pts], [r[col] for r in pts], label=scheme_label(scheme), **st)
            for r in pts:
                if r["x_value"] not in labelled:
                    labelled.add(r["x_value"])
                    up = len(labelled) % 2 == 0  # alternate below / above: neighbouring sizes are close in bits
                    ax.annotate(r["series"].replace("Nc=", "Nc "), (r["x_value"], r[col]),
                                textcoords="offset points", xytext=(0, 9 if up else -15), ha="center",
                                fontsize=7.5, color="0.3")
        for r in rows:
            if r["scheme"] == "dvae":
                st = scheme_style("dvae")
                ax.plot([r["x_value"]], [r[col]], linestyle="none", marker=st["marker"], color=st["color"],
                        label=scheme_label("dvae") + " (32-bit latents)")
            if r["scheme"] == "crlb":
                ax.axhline(r[crlb_col], color="black", lw=2, label="root-CRLB")
            if r["scheme"] == "prior":
                ax.axhline(r[col], color="0.55", ls=":", lw=1.5, label=scheme_label("prior"))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        log_ticks(ax)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_xlabel("fronthaul bits per receive AP per update")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("(a) location")
    axes[1].set_title("(b) velocity")
    h, lab = axes[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="outside lower center", ncol=min(4, len(lab)), fontsize=8.5, frameon=False)
    fig.suptitle(titled(ctx, TITLE), fontsize=11)
    return save(fig, ctx.figures_dir / NAME)


def discussion(ctx: Context, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"- **Paper:** {PAPER}"]
    vq = sorted([r for r in rows if r["scheme"] == "dvqvae"], key=lambda r: r["x_value"])
    if vq:
        lines.append("- **Ours (D-VQVAE):** " + "; ".join(
            f"{r['series']} ({int(r['x_value']):,} bit): {fmt_pair(r['position_rmse'], r['velocity_rmse'])}"
            for r in vq) + ".")
        if len(vq) >= 2:
            better = vq[-1]["position_rmse"] < vq[0]["position_rmse"]
            lines.append(f"- Largest vs smallest codebook: location RMSE {'lower' if better else 'NOT lower'} "
                         f"({vq[-1]['position_rmse']:.3g} vs {vq[0]['position_rmse']:.3g} m): "
                         f"{'agrees with' if better else 'disagrees with'} the paper's trend.")
    return lines
