"""Issue 9 benchmark: the D-VQVAE with each AP front end ("raw" = the paper, "matched", "covariance") against the
prior predictor, the root-CRLB and the classical baselines, under a fixed CPU training budget.

Every variant is trained with :func:`cfisac.train.train` (Algorithm 1, fresh on-the-fly scenes, ``minutes`` of
wall-clock training) at the ``quick`` system preset and ``quick`` model preset, then evaluated on the same held-out
test scenes (dataset seed ``--test-seed``) with :func:`cfisac.experiments.evaluation.evaluate` (Hungarian-assigned
RMSE, the prior predictor and the root-CRLB of the same scenes). Results are appended to ``<out>/results.jsonl``
(one JSON object per variant); ``--report`` prints a Markdown table of that file.

    .venv/bin/python benchmarks/bench_front_ends.py --variants raw-paper raw matched-max --minutes 10
    .venv/bin/python benchmarks/bench_front_ends.py --baselines music cs      # classical schemes, same scenes
    .venv/bin/python benchmarks/bench_front_ends.py --report                   # Markdown table of results.jsonl

The machine is shared (2 cores, other agents running): a 10-minute budget buys a varying number of steps, which
each row records (``steps``, ``samples``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cfisac
from cfisac.experiments.evaluation import evaluate
from cfisac.models import ModelConfig
from cfisac.train import TrainConfig, train

# name -> (model-config overrides, train-config overrides). "raw-paper" is the paper's recipe (Re/Im of Y_m,
# per-sample RMS normalisation, Adam lr 1e-4); the others try one remedy or one front end at a time.
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "raw-paper": (dict(front_end="raw", input_norm="rms"), dict(lr=1e-4)),
    "raw": (dict(front_end="raw", input_norm="rms"), dict(lr=1e-3)),
    "raw-noise": (dict(front_end="raw", input_norm="noise"), dict(lr=1e-3)),
    "raw-b8": (dict(front_end="raw", input_norm="rms"), dict(lr=1e-3, batch_size=8)),
    "raw-b128": (dict(front_end="raw", input_norm="rms"), dict(lr=1e-3, batch_size=128)),
    "raw-lr3e-4": (dict(front_end="raw", input_norm="rms"), dict(lr=3e-4)),
    "covariance": (dict(front_end="covariance", input_norm="noise"), dict(lr=1e-3)),
    "covariance-log": (dict(front_end="covariance", input_norm="noise", front_end_options=dict(compress="log")),
                       dict(lr=1e-3)),
    "matched": (dict(front_end="matched", input_norm="noise"), dict(lr=1e-3)),
    "matched-paper-lr": (dict(front_end="matched", input_norm="noise", front_end_options=dict(beam_pool="max")),
                         dict(lr=1e-4)),
    "matched-max": (dict(front_end="matched", input_norm="noise", front_end_options=dict(beam_pool="max")),
                    dict(lr=1e-3)),
    "matched-max-log": (dict(front_end="matched", input_norm="noise",
                             front_end_options=dict(beam_pool="max", compress="log")), dict(lr=1e-3)),
    "matched-rms": (dict(front_end="matched", input_norm="noise", front_end_options=dict(beam_pool="rms")),
                    dict(lr=1e-3)),
}


def _config(args: argparse.Namespace) -> cfisac.SystemConfig:
    return cfisac.SystemConfig.preset(args.preset, power_dbm=args.power_dbm)


def _append(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.processor()
            or platform.machine(), "threads": torch.get_num_threads(), "command": " ".join(sys.argv),
            "preset": args.preset, "power_dbm": args.power_dbm, "n_test": args.n_test, "test_seed": args.test_seed}


def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = _config(args)
    m_over, t_over = VARIANTS[name]
    mcfg = ModelConfig.preset(args.model_preset, **m_over)
    t_over = {**dict(batch_size=32), **t_over}
    minutes = args.minutes * (args.minutes_factor.get(name, 1.0) if args.minutes_factor else 1.0)
    tcfg = TrainConfig(kind="dvqvae", epochs=10_000, n_train=args.n_train, n_val=args.n_val, seed=args.train_seed,
                       minutes=minutes, **t_over)
    out = args.out / f"{name}-P{args.power_dbm:g}-{args.minutes:g}min"
    if out.exists() and (out / "latest.json").exists():
        raise SystemExit(f"{out} already holds a run: remove it or change --out")
    t0 = time.time()
    res = train(cfg, mcfg, tcfg, out, progress=False, log=lambda s: print(f"[{name}] {s}", flush=True))
    train_s = time.time() - t0
    est = cfisac.estimators.create("dvqvae", cfg, checkpoint=str(out))
    ev = evaluate(est, cfg, n_test=args.n_test, seed=args.test_seed, with_crlb=args.crlb, batch_size=64)
    last = res.history[-1] if res.history else {}
    row = {**_meta(args), "variant": name, "model": mcfg.to_dict(), "train": tcfg.to_dict(),
           "steps": last.get("steps"), "samples": last.get("samples"), "train_wall_s": train_s,
           "val_position_rmse": last.get("val_position_rmse"), "val_velocity_rmse": last.get("val_velocity_rmse"),
           "position_rmse": ev["position_rmse"], "velocity_rmse": ev["velocity_rmse"], "prior": ev["prior"],
           "root_crlb": ev["root_crlb"], "fronthaul_bits_per_ap": ev["fronthaul_bits_per_ap"],
           "history": res.history, "run_dir": str(out)}
    print(f"[{name}] test RMSE {row['position_rmse']:.2f} m / {row['velocity_rmse']:.2f} m/s; prior "
          f"{ev['prior']['position_rmse']:.2f} m / {ev['prior']['velocity_rmse']:.2f} m/s; root-CRLB "
          f"{ev['root_crlb']}; {row['steps']} steps, {row['samples']} samples", flush=True)
    return row


class TrainMeanEstimator:
    """The prior predictor of issue 9: the mean of the training labels in the canonical target order (ascending x).

    For Q > 1 it beats ``cfisac.estimators.create("prior")`` (the area's centre for every target): the sorted x
    coordinates have means (k / (Q + 1)) of the area, e.g. 33.3 m and 66.7 m for Q = 2 (37.3 m position RMSE instead
    of 40.8 m). A learned model that reaches only this number has learned the label statistics, not the echoes.
    """

    name = "train-mean"
    fronthaul_bits_per_ap = 0

    def __init__(self, cfg: cfisac.SystemConfig, *, seed: int, n: int = 20_000) -> None:
        lab = cfisac.labels_from_scene(cfisac.sample_scenes(cfg, n, seed))
        self.mean, self.Q = lab.mean(0), cfg.n_targets

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> cfisac.estimators.Estimate:
        B, Q = y.shape[0], self.Q
        psi = self.mean.expand(B, -1)
        return cfisac.estimators.Estimate(psi[:, : 2 * Q].reshape(B, Q, 2).clone(),
                                          psi[:, 2 * Q:].reshape(B, Q, 2).clone())


def run_baseline(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = _config(args)
    est = TrainMeanEstimator(cfg, seed=args.train_seed) if name == "train-mean" else cfisac.estimators.create(name, cfg)
    t0 = time.time()
    ev = evaluate(est, cfg, n_test=args.n_test, seed=args.test_seed, with_crlb=args.crlb, batch_size=16)
    row = {**_meta(args), "variant": name, "position_rmse": ev["position_rmse"],
           "velocity_rmse": ev["velocity_rmse"], "prior": ev["prior"], "root_crlb": ev["root_crlb"],
           "fronthaul_bits_per_ap": ev["fronthaul_bits_per_ap"], "eval_wall_s": time.time() - t0}
    print(f"[{name}] test RMSE {row['position_rmse']:.2f} m / {row['velocity_rmse']:.2f} m/s", flush=True)
    return row


# ---------------------------------------------------------------------------------------------------- cached mode
# Representation comparison at equal network compute: the AP front ends are fixed transforms (nothing in them is
# trained), so their outputs are computed once for a fixed training set (an HDF5 cache of ``cfisac.data.write_hdf5``)
# and the held-out test scenes, stored as float16 arrays, and every variant then trains the same D-VQVAE
# (Algorithm 1 through ``cfisac.train.train_step``, each AP's front end replaced by the identity on its cached
# output) for the same wall-clock budget. The front-end cost per update is measured and reported separately.
CACHED: dict[str, tuple[str, dict[str, Any], str]] = {  # name -> (front end, options, normalisation)
    "raw": ("raw", {}, "rms"),
    "raw-noise": ("raw", {}, "noise"),
    "covariance": ("covariance", {}, "noise"),
    "matched-max": ("matched", dict(beam_pool="max"), "noise"),
    "image": ("image", {}, "noise"),
    "velocity-image": ("velocity-image", {}, "noise"),
    "velocity-marginals": ("velocity-image", dict(velocity_output="marginals"), "noise"),
}


class CachedFrontEnd(torch.nn.Module):
    """Identity front end: the AP's input already is its front end's output [B, C, D1, D2, D3] float32."""

    needs_x = False

    def forward(self, v: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return v


def message_rmse(model: Any, normaliser: Any, features: Any, test: dict[str, torch.Tensor], k: int, *,
                 prep: Any = None, chunk: int = 128) -> tuple[float, float]:
    """Position / velocity RMSE of Algorithm 2 on the first ``k`` test scenes: each AP's bit-packed index messages of
    its cached front-end output ``features`` [n, M, C, D1, D2, D3] (``prep`` maps a chunk to the encoder input,
    default float32), decoded at the CPU with ``test["x"]``, Hungarian-assigned to ``test`` positions / velocities."""
    from cfisac.metrics import accuracy
    from cfisac.train import split_psi

    model.sync_codebooks()
    model.eval()
    pos, vel = [], []
    with torch.no_grad():
        for lo in range(0, k, chunk):
            sl = slice(lo, min(k, lo + chunk))
            f = torch.as_tensor(np.asarray(features[sl]))
            f = prep(f) if prep is not None else f.float()
            messages = [ap.encode(f[:, m]) for m, ap in enumerate(model.aps)]
            p, v = split_psi(normaliser.denormalise(model.cpu_side.decode(messages, test["x"][sl])),
                             model.cfg.n_targets)
            pos.append(p)
            vel.append(v)
    model.train()
    acc = accuracy(torch.cat(pos), torch.cat(vel), test["positions"][:k], test["velocities"][:k])
    return acc.position_rmse, acc.velocity_rmse


def front_end_modules(name: str, cfg: cfisac.SystemConfig) -> list[torch.nn.Module]:
    from cfisac.models.front_ends import create_front_end

    fe, opts, norm = CACHED[name]
    return [create_front_end(fe, cfg, norm=norm, ap_index=m, **opts) for m in range(cfg.n_rx)]


def prepare_features(name: str, cfg: cfisac.SystemConfig, source: Any, n: int, path: Path,
                     chunk: int = 32) -> np.ndarray:
    """Front-end outputs of the M receive APs for samples 0..n-1 of ``source`` (a callable range -> batch dict):
    a float32 memory map [n, M, C, D1, D2, D3] at ``path`` (reused when complete)."""
    fes = front_end_modules(name, cfg)
    shape = (n, cfg.n_rx, *fes[0].output_shape)
    done = path.with_suffix(".done")
    if done.exists() and json.loads(done.read_text()) == list(shape):
        return np.lib.format.open_memmap(path, mode="r")
    path.parent.mkdir(parents=True, exist_ok=True)
    # float16 storage (3 significant digits of a non-negative magnitude; halves disk and memory), float32 in training
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    t0, t_fe = time.time(), 0.0
    for lo in range(0, n, chunk):
        b = source(range(lo, min(n, lo + chunk)))
        t1 = time.time()
        with torch.no_grad():
            for m, fe in enumerate(fes):
                mm[lo:lo + len(b["y"]), m] = fe(b["y"][:, m], b["x"] if fe.needs_x else None).numpy().astype(np.float16)
        t_fe += time.time() - t1
        if (lo // chunk) % 16 == 0:
            print(f"[features {name}] {lo + len(b['y'])}/{n} ({time.time() - t0:.0f} s)", flush=True)
    mm.flush()
    done.write_text(json.dumps(list(shape)))
    (path.with_suffix(".json")).write_text(json.dumps({"front_end_seconds_per_sample_per_ap": t_fe / n / cfg.n_rx}))
    return np.lib.format.open_memmap(path, mode="r")


def run_cached(name: str, args: argparse.Namespace, test: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Train the D-VQVAE on the cached outputs of front end ``name`` for ``--minutes``; test on ``test`` (a
    ``simulate_batch`` dict of the test scenes)."""
    from cfisac.data import open_hdf5
    from cfisac.models import LabelNormaliser, build_model
    from cfisac.train import ApTrainer, CpuTrainer, epoch_batches, train_step

    cfg = _config(args)
    cache = open_hdf5(args.data)
    if cache.cfg != cfg:
        raise SystemExit(f"{args.data} was simulated with another configuration than --preset/--power-dbm")
    n_train = min(args.n_train, len(cache))

    def train_source(idx: range) -> dict[str, torch.Tensor]:
        rows = cache.__getitems__(list(idx))
        return {k: torch.stack([r[k] for r in rows]) for k in ("y", "x", "labels")}

    def test_source(idx: range) -> dict[str, torch.Tensor]:
        return {k: test[k][idx.start:idx.stop] for k in ("y", "x")}

    feat_dir = args.feature_dir / f"{args.preset}-P{args.power_dbm:g}"
    tr = prepare_features(name, cfg, train_source, n_train, feat_dir / f"{name}-train{n_train}.f16.npy")
    te = prepare_features(name, cfg, test_source, args.n_test, feat_dir / f"{name}-test{args.n_test}-seed"
                          f"{args.test_seed}.f16.npy")
    fe_cost = json.loads((feat_dir / f"{name}-train{n_train}.f16.json").read_text())
    tr = torch.from_numpy(np.array(tr))  # a copy in memory (float16): random batches without disk reads
    # Only X and the labels are held in memory (X alone is 4.3 GB for 16384 quick scenes); Y is in the features.
    train_x = torch.from_numpy(cache._f()["x"][:n_train])
    train_labels = torch.from_numpy(cache._f()["labels"][:n_train]).double()
    normaliser = LabelNormaliser.fit(train_labels)

    fe_name, opts, norm = CACHED[name]
    mcfg = ModelConfig.preset(args.model_preset, front_end=fe_name, input_norm=norm,
                              front_end_options=opts, **(args.model_overrides or {}))
    torch.manual_seed(args.train_seed)
    model = build_model(args.kind, cfg, mcfg, seed=args.train_seed)
    for ap in model.aps:
        ap.front_end = CachedFrontEnd()
    aps = [ApTrainer(ap, lr=args.lr) for ap in model.aps]
    cpu = CpuTrainer(model.cpu_side, lr=args.lr, loss=args.loss)
    optimizers = [t.optimizer for t in (*aps, cpu) if t.optimizer is not None]

    def test_rmse(k: int | None = None) -> tuple[float, float]:
        return message_rmse(model, normaliser, te, test, args.n_test if k is None else k)

    # The budget counts training steps only (reading the cached batch included), not the test-256 evaluations.
    budget, trained, step, epoch, curve, next_eval = args.minutes * 60.0, 0.0, 0, 0, [], 0.0
    while trained < budget:
        for idx in epoch_batches(args.train_seed, epoch, n_train, args.batch_size):
            if args.lr_schedule == "cosine":  # lr follows the spent share of the wall-clock budget down to 0
                for opt in optimizers:
                    for group in opt.param_groups:
                        group["lr"] = 0.5 * args.lr * (1 + math.cos(math.pi * min(1.0, trained / budget)))
            t1 = time.time()
            idx = torch.as_tensor(idx)
            target = normaliser.normalise(train_labels[idx]).float()
            train_step(aps, cpu, tr[idx].float(), train_x[idx], target)
            step += 1
            trained += time.time() - t1
            if trained >= next_eval or trained >= budget:
                p, v = test_rmse(min(256, args.n_test))
                curve.append({"train_s": round(trained, 1), "steps": step, "epoch": epoch, "position_rmse_256": p,
                              "velocity_rmse_256": v})
                print(f"[{name} cached] {trained:.0f} s, step {step}, epoch {epoch}: test-256 RMSE {p:.2f} m / "
                      f"{v:.2f} m/s", flush=True)
                next_eval = trained + args.eval_every
            if trained >= budget:
                break
        epoch += 1
    p, v = test_rmse()
    row = {**_meta(args), "variant": f"{name} (cached{'' if args.kind == 'dvqvae' else ', ' + args.kind})",
           "mode": "cached", "kind": args.kind, "lr_schedule": args.lr_schedule,
           "loss": args.loss, "front_end": fe_name,
           "front_end_options": opts, "input_norm": norm,
           "model_overrides": args.model_overrides, "lr": args.lr, "batch_size": args.batch_size,
           "n_train": n_train, "steps": step, "samples": step * args.batch_size, "train": {"minutes": args.minutes},
           "position_rmse": p, "velocity_rmse": v, "fronthaul_bits_per_ap": model.fronthaul_bits_per_ap,
           "front_end_seconds_per_sample_per_ap": fe_cost["front_end_seconds_per_sample_per_ap"],
           "curve": curve, "data": str(args.data)}
    print(f"[{name} cached] test RMSE {p:.2f} m / {v:.2f} m/s after {step} steps", flush=True)
    return row


def report(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    head = ("| variant | P (dBm) | budget (min) | steps | scenes seen | fronthaul bit/AP | position RMSE (m) | "
            "velocity RMSE (m/s) | prior (m, m/s) | root-CRLB (m, m/s) |")
    lines = [head, "|" + "|".join(["---"] * 10) + "|"]
    for r in rows:
        pr, cr = r.get("prior") or {}, r.get("root_crlb")
        crs = f"{cr['position']:.2f}, {cr['velocity']:.2f}" if isinstance(cr, dict) else "-"
        budget = (r.get("train") or {}).get("minutes")
        lines.append(
            f"| {r['variant']} | {r['power_dbm']:g} | {budget if budget is not None else '-'} | "
            f"{r.get('steps', '-')} | {r.get('samples', '-')} | {r.get('fronthaul_bits_per_ap')} | "
            f"{r['position_rmse']:.2f} | {r['velocity_rmse']:.2f} | "
            f"{pr.get('position_rmse', float('nan')):.2f}, {pr.get('velocity_rmse', float('nan')):.2f} | {crs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS))
    p.add_argument("--baselines", nargs="*", default=[],
                   help="train-mean (the training-label mean) or registered estimators (music, cs, ...), same scenes")
    p.add_argument("--preset", default="quick")
    p.add_argument("--model-preset", default="quick")
    p.add_argument("--power-dbm", type=float, default=30.0)
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per variant (wall clock)")
    p.add_argument("--minutes-factor", type=json.loads, default=None,
                   help='JSON {variant: factor} multiplying --minutes for some variants ("longer training")')
    p.add_argument("--n-train", type=int, default=200_000, help="training scenes (fresh ones until the budget ends)")
    p.add_argument("--n-val", type=int, default=256)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--test-seed", type=int, default=1)
    p.add_argument("--no-crlb", dest="crlb", action="store_false")
    p.add_argument("--out", type=Path, default=Path("runs/bench_front_ends"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report", action="store_true", help="print the Markdown table of <out>/results.jsonl")
    p.add_argument("--cached", nargs="*", default=[], choices=sorted(CACHED),
                   help="cached mode (see the comment above CACHED): train on precomputed front-end outputs")
    p.add_argument("--data", type=Path, help="cached mode: HDF5 training cache (cfisac.data.write_hdf5)")
    p.add_argument("--feature-dir", type=Path, default=Path("data/front_end_features"))
    p.add_argument("--lr", type=float, default=1e-3, help="cached mode: Adam learning rate")
    p.add_argument("--batch-size", type=int, default=32, help="cached mode: batch size")
    p.add_argument("--model-overrides", type=json.loads, default=None,
                   help='cached mode: JSON ModelConfig overrides, e.g. {"kmeans_init": true, "dead_code_threshold": 1}')
    p.add_argument("--kind", default="dvqvae", choices=["dvqvae", "dvae"],
                   help="cached mode: dvae = continuous float32 latents (diagnostic: is the quantizer the bottleneck?)")
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                   help="cached mode: cosine = lr decays to 0 over the wall-clock budget")
    p.add_argument("--loss", default="canonical", choices=["canonical", "assignment"],
                   help="cached mode: training loss (cfisac.train.estimation_loss)")
    p.add_argument("--eval-every", type=float, default=120.0, help="cached mode: seconds between test-256 points")
    args = p.parse_args(argv)
    results = args.out / "results.jsonl"
    if args.report:
        print(report(results))
        return 0
    torch.set_num_threads(args.threads)
    for name in args.variants:
        _append(results, run_variant(name, args))
    for name in args.baselines:
        _append(results, run_baseline(name, args))
    if args.cached:
        from cfisac.data import simulate_batch

        test = simulate_batch(_config(args), args.test_seed, range(args.n_test))
        for name in args.cached:
            _append(results, run_cached(name, args, test))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
