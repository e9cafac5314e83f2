"""Training curves of the cached-mode rows of ``bench_front_ends.py``: test RMSE (first 256 test scenes, Algorithm 2
messages) against training seconds, next to the prior predictor, the training-label mean and the root-CRLB.

    .venv/bin/python benchmarks/plot_front_ends.py benchmarks/results/front_ends.jsonl \
        --out benchmarks/results/front_ends_curves.png --power-dbm 48 --prior 40.56 16.32 --train-mean 37.25 16.32 \
        --crlb 0.172 0.751 --ml 2.30 1.62
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(row: dict) -> str:
    extra = [f"{row['n_train']} scenes"]
    if row.get("kind", "dvqvae") != "dvqvae":
        extra.append(f"{row['kind']} (no quantizer)")
    if row.get("lr_schedule", "constant") != "constant":
        extra.append(f"lr {row['lr_schedule']}")
    if row.get("loss", "canonical") != "canonical":
        extra.append(f"{row['loss']} loss")
    return f"{row['variant'].split(' (')[0]}: " + ", ".join(extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, nargs="+", help="JSONL files of bench_front_ends.py")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--power-dbm", type=float, default=48.0, help="plot the rows of this power")
    p.add_argument("--prior", type=float, nargs=2, metavar=("POS", "VEL"), required=True)
    p.add_argument("--train-mean", type=float, nargs=2, metavar=("POS", "VEL"))
    p.add_argument("--crlb", type=float, nargs=2, metavar=("POS", "VEL"), required=True)
    p.add_argument("--ml", type=float, nargs=2, metavar=("POS", "VEL"), help="the ML estimator on the same scenes")
    args = p.parse_args(argv)
    rows = [json.loads(line) for path in args.results for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("curve") and r["power_dbm"] == args.power_dbm]
    if not rows:
        raise SystemExit(f"no cached-mode rows with curves at {args.power_dbm:g} dBm in {args.results}")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for k, (ax, what, unit) in enumerate(zip(axes, ("position", "velocity"), ("m", "m/s"), strict=True)):
        for r in rows:
            c = r["curve"]
            ax.plot([e["train_s"] for e in c], [e[f"{what}_rmse_256"] for e in c], marker=".", label=label(r))
        ax.axhline(args.prior[k], color="k", ls="--", lw=1, label="prior predictor")
        if args.train_mean:
            ax.axhline(args.train_mean[k], color="k", ls=":", lw=1, label="training-label mean")
        ax.axhline(args.prior[k] / 10, color="tab:red", ls="-.", lw=1, label="issue 9 target (prior / 10)")
        if args.ml:
            ax.axhline(args.ml[k], color="tab:purple", ls="--", lw=1, label="ML estimator (issue 8)")
        ax.axhline(args.crlb[k], color="tab:green", ls="-", lw=1, label="root-CRLB")
        ax.set_yscale("log")
        ax.set_xlabel("training time (s, one CPU thread)")
        ax.set_ylabel(f"{what} RMSE ({unit}), first 256 test scenes")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"D-VQVAE at the quick preset, {args.power_dbm:g} dBm, 1280 bit per AP: learning curves by front end")
    fig.tight_layout()
    tmp = args.out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({len(rows)} curves)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
