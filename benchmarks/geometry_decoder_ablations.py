"""Ablation helpers of the geometry-aware CPU decoder (``benchmarks/results/geometry_decoder.md``).

``--fit RUN.pt``: the trained model of a ``bench_geometry_decoder.py --train --save`` run evaluated (Algorithm 2,
bit-packed messages) on the first ``--n`` training scenes it saw and on the first ``--n`` test scenes: a gap
says the cached scenes were over-fitted (an on-line run on fresh scenes would then do better at equal steps).

``--online-cost``: seconds of one on-line step's data (simulate a batch of ``--batch-size`` fresh scenes and both
receive APs' ``image`` front ends), one torch thread: what each step would cost on top of the cached step.

``--plot RESULTS.jsonl ... --out FIG.png``: learning curves (test-200 position and velocity RMSE against steps and
against CPU seconds of the training steps, where recorded) of the rows of ``bench_geometry_decoder.py`` results.

    .venv/bin/python benchmarks/geometry_decoder_ablations.py --fit runs/geodec/velw4.pt
    .venv/bin/python benchmarks/geometry_decoder_ablations.py --online-cost
    .venv/bin/python benchmarks/geometry_decoder_ablations.py --plot runs/geodec/s3.jsonl \\
        --out benchmarks/results/geometry_decoder_curves.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import cfisac

sys.path.insert(0, str(Path(__file__).parent))


def load_run(path: Path, cfg: cfisac.SystemConfig) -> Any:
    """The model of a saved run (``{"model": ModelConfig dict, "state": state dict}``), front ends = identity."""
    from bench_front_ends import CachedFrontEnd
    from cfisac.models import ModelConfig, build_model

    blob = torch.load(path, weights_only=False)
    mcfg = ModelConfig.from_dict(blob["model"])
    model = build_model("dvqvae", cfg, mcfg, seed=0)
    for ap in model.aps:
        ap.front_end = CachedFrontEnd()
    missing, unexpected = model.load_state_dict(blob["state"], strict=False)
    if unexpected or any("front_end" not in k for k in missing):
        raise ValueError(f"state of {path} does not fit: missing {missing}, unexpected {unexpected}")
    return model


def fit_gap(args: argparse.Namespace) -> dict[str, Any]:
    from bench_geometry_decoder import _load, _scenes, diagnose

    cfg = cfisac.SystemConfig.preset(args.preset, power_dbm=args.power_dbm)
    model = load_run(args.fit, cfg)
    ns = argparse.Namespace(feature_dir=args.feature_dir, preset=args.preset, power_dbm=args.power_dbm)
    row: dict[str, Any] = {"run": str(args.fit), "n": args.n, "load": os.getloadavg()}
    for split, seed, n_file in (("train", 0, args.n_train), ("test", 1, 500)):
        feats, done = _load(ns, split, seed, n_file)
        k = min(args.n, done)
        pos, vel = _scenes(cfg, seed, k)
        d = diagnose(model, feats[:k], pos, vel)
        row[split] = {key: d[key] for key in ("position_rmse", "velocity_rmse", "missed_share",
                                              "position_rmse_detected", "velocity_rmse_at_true_positions")}
    print(json.dumps(row), flush=True)
    return row


def online_cost(args: argparse.Namespace) -> dict[str, Any]:
    from cfisac.data import simulate_batch
    from cfisac.models.front_ends import create_front_end

    cfg = cfisac.SystemConfig.preset(args.preset, power_dbm=args.power_dbm)
    fes = [create_front_end("image", cfg, norm="noise", ap_index=m) for m in range(cfg.n_rx)]
    times = []
    for rep in range(args.repeats):
        w0, c0 = time.time(), time.process_time()
        b = simulate_batch(cfg, 100 + rep, range(args.batch_size))
        with torch.no_grad():
            for m, fe in enumerate(fes):
                fe(b["y"][:, m], b["x"])
        times.append((time.time() - w0, time.process_time() - c0))
    row = {"batch_size": args.batch_size, "wall_s": [round(t[0], 2) for t in times],
           "cpu_s": [round(t[1], 2) for t in times], "load": os.getloadavg()}
    print(json.dumps(row), flush=True)
    return row


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for path in args.plot for line in open(path) if line.strip()]
    if args.labels:
        labels = args.labels.split(",")
        if len(labels) != len(rows):
            raise ValueError(f"--labels has {len(labels)} names for {len(rows)} rows")
    else:
        labels = [r["command"].split("--save")[-1].strip() for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharey="row")
    for r, label in zip(rows, labels, strict=True):
        c = r["curve"]
        steps = [p["steps"] for p in c]
        for row_i, key in enumerate(("position_rmse", "velocity_rmse")):
            (line,) = axes[row_i, 0].plot(steps, [p[key] for p in c], marker="o", ms=3, label=label)
            if all("train_cpu_s" in p for p in c):
                axes[row_i, 1].plot([p["train_cpu_s"] for p in c], [p[key] for p in c], marker="o", ms=3,
                                    color=line.get_color(), label=label)
    for ax, (target, ml) in zip(axes, ((4.60, 2.30), (3.24, 1.62)), strict=True):
        for a in ax:
            a.axhline(target, color="k", ls="--", lw=0.8)
            a.axhline(ml, color="k", ls=":", lw=0.8)
            a.grid(alpha=0.3)
    axes[0, 0].set_ylabel("position RMSE (m), test-200")
    axes[1, 0].set_ylabel("velocity RMSE (m/s), test-200")
    axes[1, 0].set_xlabel("training steps (of each run's batch size)")
    axes[1, 1].set_xlabel("CPU seconds of the training steps (one thread, shared machine)")
    axes[0, 0].set_title("against steps (dashed: 2x ML, dotted: ML)")
    axes[0, 1].set_title("against CPU seconds (runs that recorded them)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("geometry decoder, quick 48 dBm, image front end, D-VQVAE (learning curves on 200 test scenes)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fit", type=Path, default=None)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--n-train", type=int, default=16384, help="the n of the training cache's file name")
    p.add_argument("--online-cost", action="store_true")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--plot", type=Path, nargs="*", default=None)
    p.add_argument("--labels", default="", help="comma-separated legend labels, one per results row")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/geometry_decoder_curves.png"))
    p.add_argument("--preset", default="quick")
    p.add_argument("--power-dbm", type=float, default=48.0)
    p.add_argument("--feature-dir", type=Path, default=Path("data/geometry_decoder"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.fit:
        fit_gap(args)
    if args.online_cost:
        online_cost(args)
    if args.plot:
        plot(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
