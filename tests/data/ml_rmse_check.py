"""One-off equivalence benchmark of the ML estimator: RMSE on 50 quick scenes (Q = 2, 50 dBm, seed 2024).

    OMP_NUM_THREADS=1 .venv/bin/python tests/data/ml_rmse_check.py OUT.pt          # the current code
    PYTHONPATH=/tmp/mlold/src OMP_NUM_THREADS=1 .venv/bin/python tests/data/ml_rmse_check.py OLD.pt
    .venv/bin/python tests/data/ml_rmse_check.py --compare OLD.pt OUT.pt

(/tmp/mlold/src: ``git archive f995b09 src | tar -x -C /tmp/mlold``, the scene-looping ml.py.) Prints the RMSE of
both variants (targets matched to the truth by the metrics' assignment), seconds per scene (wall and CPU) and,
with ``--compare``, the relative RMSE change and the largest per-scene difference.
"""

from __future__ import annotations

import sys
import time

import torch

import cfisac
from cfisac.estimators import create
from cfisac.metrics import accuracy

PRESET, Q, POWER, SCENES, SEED, BATCH = "quick", 2, 50.0, 50, 2024, 25


def run(path: str) -> None:
    torch.set_num_threads(1)
    cfg = cfisac.SystemConfig.preset(PRESET, n_targets=Q, power_dbm=POWER)
    est = create("ml-joint", cfg)
    keys = ("positions", "velocities", "distributed_positions", "distributed_velocities")
    out = {k: [] for k in keys}
    truth_p, truth_v, wall, cpu = [], [], 0.0, 0.0
    for start in range(0, SCENES, BATCH):
        sc = cfisac.sample_scenes(cfg, BATCH, SEED, start_index=start)
        x = cfisac.transmit_signals(cfg, sc, SEED, dtype=torch.complex128)
        y = cfisac.sensing_echoes(cfg, sc, x, seed=SEED)
        t0, c0 = time.perf_counter(), time.process_time()
        e = est(y, x)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        for k in keys:
            out[k].append(getattr(e, k))
        truth_p.append(sc.positions)
        truth_v.append(sc.velocities)
    res = {k: torch.cat(v) for k, v in out.items()}
    res.update(truth_p=torch.cat(truth_p), truth_v=torch.cat(truth_v), wall=wall / SCENES, cpu=cpu / SCENES)
    torch.save(res, path)
    report(res)


def report(r: dict) -> None:
    j = accuracy(r["positions"], r["velocities"], r["truth_p"], r["truth_v"])
    d = accuracy(r["distributed_positions"], r["distributed_velocities"], r["truth_p"], r["truth_v"])
    print(f"ml-joint RMSE {j.position_rmse:.5f} m / {j.velocity_rmse:.5f} m/s; ml {d.position_rmse:.5f} m / "
          f"{d.velocity_rmse:.5f} m/s; {r['wall']:.3f} s/scene wall, {r['cpu']:.3f} s/scene CPU")


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        a, b = torch.load(sys.argv[2]), torch.load(sys.argv[3])
        for r in (a, b):
            report(r)
        for k in ("positions", "velocities", "distributed_positions", "distributed_velocities"):
            diff = (a[k] - b[k]).abs().flatten(1).amax(1)
            print(k, f"max per-scene difference {float(diff.max()):.3g}, scenes differing by > 1e-3: "
                     f"{int((diff > 1e-3).sum())}")
    else:
        run(sys.argv[1])
