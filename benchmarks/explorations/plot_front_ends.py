"""Training curves of the cached-mode rows of ``bench_front_ends.py``: test RMSE (first 256 test scenes, Algorithm 2
messages) against training seconds, next to the prior predictor, the training-label mean and the root-CRLB.

With ``--online-steps`` (the ``steps.csv`` of on-line runs, e.g. ``bench_front_ends.py --variants raw-paper ...``) it
also draws their training loss (normalised MSE of Eq. 17, mean of 50 steps) against scenes seen, next to the loss of
predicting the training-label mean (the mean variance of the min-max normalised labels of ``--data``).

    .venv/bin/python benchmarks/explorations/plot_front_ends.py benchmarks/results/front_ends.jsonl \
        --out benchmarks/results/front_ends_curves.png --power-dbm 48 --prior 40.56 16.32 --train-mean 37.25 16.32 \
        --crlb 0.172 0.751 --ml 2.30 1.62 --online-steps runs/bench_front_ends_raw/*/steps.csv \
        --online-out benchmarks/results/front_ends_raw_loss.png --data data/quick-P48-seed0-n16384.h5
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(row: dict) -> str:
    extra = [f"{row['n_train']} scenes"]
    minutes = (row.get("train") or {}).get("minutes", 10)
    if minutes != 10:
        extra.append(f"{minutes:g} min")
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
    p.add_argument("--online-steps", type=Path, nargs="*", default=[], help="steps.csv files of on-line runs")
    p.add_argument("--online-out", type=Path, help="figure of the on-line training losses")
    p.add_argument("--data", type=Path, help="HDF5 cache whose labels give the loss of the label mean")
    args = p.parse_args(argv)
    if args.online_steps:
        if not (args.online_out and args.data):
            raise SystemExit("--online-steps needs --online-out and --data")
        online_losses(args.online_steps, args.online_out, args.data)
    rows = [json.loads(line) for path in args.results for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("curve") and r["power_dbm"] == args.power_dbm]
    if not rows:
        raise SystemExit(f"no cached-mode rows with curves at {args.power_dbm:g} dBm in {args.results}")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for k, (ax, what, unit) in enumerate(zip(axes, ("position", "velocity"), ("m", "m/s"), strict=True)):
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors[:len(rows)])
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


def online_losses(paths: list[Path], out: Path, data: Path, window: int = 50) -> None:
    """Training loss of on-line runs against scenes seen, and the loss of predicting the label mean."""
    from cfisac.data import open_hdf5
    from cfisac.models import LabelNormaliser

    labels = torch.from_numpy(open_hdf5(data, verify=False)._f()["labels"][()])
    normed = LabelNormaliser.fit(labels).normalise(labels)
    mean_loss = float(normed.var(0, unbiased=False).mean())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for path in paths:
        rows = list(csv.DictReader(path.open()))
        mse = np.array([float(r["mse"]) for r in rows])
        smooth = np.convolve(mse, np.ones(window) / window, mode="valid")
        state = json.loads(next(path.parent.glob("ckpt-*/state.json")).read_text())
        batch = state["train"]["batch_size"]
        steps = np.arange(window, len(mse) + 1) * batch
        ax.plot(steps, smooth, label=f"{path.parent.name} (lr {state['train']['lr']:g}, batch {batch})")
    ax.axhline(mean_loss, color="k", ls=":", label=f"predicting the training-label mean ({mean_loss:.4f})")
    ax.set_xlabel("training scenes seen (fresh scenes every step)")
    ax.set_ylabel(f"training loss (normalised MSE, mean of {window} steps)")
    ax.set_title("Paper's D-VQVAE (raw Y_m), on-line, quick preset, 48 dBm, 10 minutes")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)
    print(f"wrote {out} ({len(paths)} runs; label-mean loss {mean_loss:.4f})")


if __name__ == "__main__":
    raise SystemExit(main())
