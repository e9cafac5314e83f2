"""Benchmark of the classical baselines (paper Section V-A): runtime per scene and accuracy.

    .venv/bin/python benchmarks/bench_classical.py                      # everything, writes results/classical.md
    .venv/bin/python benchmarks/bench_classical.py --scenes 10 --no-paper --powers 30   # a quick look

1. Seconds per scene of ``music``, ``cs`` and ``monostatic`` at the ``quick`` preset and at the ``paper`` preset
   (``--paper-scenes`` scenes, 1 by default). The monostatic scheme runs on ``SystemConfig.preset("monostatic")``
   with the same sensing comb as the distributed schemes.
2. Position / velocity RMSE (after Hungarian assignment, :func:`cfisac.metrics.accuracy`) and medians at the
   ``quick`` preset over ``--scenes`` scenes for every power of ``--powers``, next to the prior predictor; the same
   target positions and velocities for every scheme (``sample_scenes`` draws them before anything that depends on
   the AP layout). ``music-gated`` is the MUSIC scheme with ``covariance="gated"``.

The script writes the tables; the "Findings" section of results/classical.md was written by hand from the run.

BLAS is pinned to one thread unless ``--blas-threads`` says otherwise (set before numpy loads): the estimators make
many small matrix products, for which a multi-threaded BLAS on a shared machine is slower, not faster.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=50, help="scenes per power for the accuracy table (quick preset)")
    p.add_argument("--powers", type=str, default="30,40,50,60", help="comma-separated transmit powers (dBm)")
    p.add_argument("--timing-scenes", type=int, default=4, help="scenes for the quick-preset timing")
    p.add_argument("--paper-scenes", type=int, default=1, help="scenes for the paper-preset timing")
    p.add_argument("--no-paper", action="store_true", help="skip the paper-preset timing")
    p.add_argument("--sweep-scenes", type=int, default=20, help="scenes for the powers other than the first")
    p.add_argument("--schemes", type=str, default="music,cs,monostatic,music-gated")
    p.add_argument("--blas-threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--out", type=str, default=os.path.join(os.path.dirname(__file__), "results", "classical.md"))
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.blas_threads)

import datetime  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import cfisac  # noqa: E402
from cfisac.estimators import create  # noqa: E402
from cfisac.metrics import accuracy  # noqa: E402

COMB_QUICK = dict(n_subcarriers=64, subcarrier_stride=4, n_symbols=16, symbol_stride=16)


def config(scheme: str, preset: str, power: float | None = None) -> cfisac.SystemConfig:
    over = {} if power is None else {"power_dbm": power}
    if scheme == "monostatic":
        return cfisac.SystemConfig.preset("monostatic", **(COMB_QUICK if preset == "quick" else {}), **over)
    return cfisac.SystemConfig.preset(preset, **over)


def estimator(scheme: str, cfg: cfisac.SystemConfig):
    if scheme == "music-gated":
        return create("music", cfg, covariance="gated")
    return create(scheme, cfg)


def simulate(cfg: cfisac.SystemConfig, n: int, seed: int):
    scenes = cfisac.sample_scenes(cfg, n, seed)
    x = cfisac.transmit_signals(cfg, scenes, seed)
    return scenes, x, cfisac.sensing_echoes(cfg, scenes, x, noise=True, seed=seed)


def timing(scheme: str, preset: str, n: int, seed: int) -> float:
    cfg = config(scheme, preset)
    _, x, y = simulate(cfg, n, seed)
    est = estimator(scheme, cfg)
    t0 = time.perf_counter()
    est(y, x)
    return (time.perf_counter() - t0) / n


def evaluate(scheme: str, power: float, n: int, seed: int) -> dict:
    cfg = config("music" if scheme == "prior" else scheme, "quick", power)
    scenes, x, y = simulate(cfg, n, seed)
    est = create("prior", cfg) if scheme == "prior" else estimator(scheme, cfg)
    t0 = time.perf_counter()
    out = est(y, x)
    sec = (time.perf_counter() - t0) / n
    rep = accuracy(out.positions, out.velocities, scenes.positions, scenes.velocities)
    vel = scheme != "monostatic"
    return dict(
        pos_rmse=rep.position_rmse, pos_med=float(rep.position_errors.median()),
        vel_rmse=rep.velocity_rmse if vel else float("nan"),
        vel_med=float(rep.velocity_errors.median()) if vel else float("nan"), sec=sec,
    )


def main() -> int:
    args = ARGS
    schemes = args.schemes.split(",")
    powers = [float(p) for p in args.powers.split(",")]
    lines = ["# Classical baselines: runtime and accuracy", ""]
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),)
    lines += [
        f"Command: `{' '.join(['.venv/bin/python benchmarks/bench_classical.py', *sys.argv[1:]])}`",
        f"Date: {stamp}. Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}, BLAS threads {args.blas_threads}; load "
        f"average at start {load[0]:.1f} (shared machine: timings may be inflated by other jobs).", "",
    ]
    print("\n".join(lines), flush=True)

    rows = ["| scheme | quick: s / scene | paper: s / scene |", "|---|---|---|"]
    for scheme in schemes:
        tq = timing(scheme, "quick", args.timing_scenes, args.seed)
        tp = float("nan") if args.no_paper else timing(scheme, "paper", args.paper_scenes, args.seed)
        rows.append(f"| {scheme} | {tq:.2f} | {tp:.1f} |")
        print(rows[-1], flush=True)
    lines += ["## Seconds per scene (one CPU process)", "",
              f"quick: {args.timing_scenes} scenes, paper: {args.paper_scenes} scene(s), P = 30 dBm, noisy echoes.",
              "", *rows, ""]

    acc = ["| P (dBm) | scheme | scenes | position RMSE (m) | median (m) | velocity RMSE (m/s) | median (m/s) | "
           "s / scene |", "|---|---|---|---|---|---|---|---|"]
    for i, power in enumerate(powers):
        n = args.scenes if i == 0 else args.sweep_scenes
        for scheme in ["prior", *schemes]:
            r = evaluate(scheme, power, n, args.seed + 1)
            acc.append(f"| {power:g} | {scheme} | {n} | {r['pos_rmse']:.2f} | {r['pos_med']:.2f} | "
                       f"{r['vel_rmse']:.2f} | {r['vel_med']:.2f} | {r['sec']:.2f} |")
            print(acc[-1], flush=True)
    res = cfisac.SystemConfig.preset("quick").resolution()
    lines += ["## Accuracy at the quick preset", "",
              f"Resolution cells: bistatic range {res['range_resolution_m']:.2f} m, bistatic velocity "
              f"{res['velocity_resolution_mps']:.2f} m/s, receive direction cosine "
              f"{2 / cfisac.SystemConfig.preset('quick').n_rx_antennas:.3f}. Monostatic: no velocity (NaN).", "",
              *acc, ""]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
