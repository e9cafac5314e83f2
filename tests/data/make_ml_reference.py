"""Regenerate ``ml_reference.json``: the ML estimator's estimates on fixed scenes (the regression reference).

    OMP_NUM_THREADS=1 .venv/bin/python tests/data/make_ml_reference.py [--check]

Made with the scene-looping implementation of ``src/cfisac/estimators/ml.py`` at commit f995b09 (before the
batched rewrite). ``--check`` prints the largest differences of the current code against the stored file instead
of writing it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

import cfisac
from cfisac.estimators import create

OUT = Path(__file__).with_name("ml_reference.json")
# (preset, Q, power dBm, scenes, seed): tiny and quick at high SNR (the estimator's asymptotic regime)
CASES = (("tiny", 2, 50.0, 8, 7), ("quick", 2, 52.0, 4, 11))


def scenes(preset: str, Q: int, power: float, n: int, seed: int):
    cfg = cfisac.SystemConfig.preset(preset, n_targets=Q, power_dbm=power)
    sc = cfisac.sample_scenes(cfg, n, seed)
    x = cfisac.transmit_signals(cfg, sc, seed, dtype=torch.complex128)
    y = cfisac.sensing_echoes(cfg, sc, x, seed=seed)
    return cfg, sc, x, y


def compute() -> dict:
    torch.set_num_threads(1)
    out = {"command": "OMP_NUM_THREADS=1 .venv/bin/python tests/data/make_ml_reference.py", "cases": []}
    for preset, Q, power, n, seed in CASES:
        cfg, sc, x, y = scenes(preset, Q, power, n, seed)
        t0 = time.perf_counter()
        est = create("ml-joint", cfg)(y, x)
        dt = time.perf_counter() - t0
        out["cases"].append(dict(
            preset=preset, n_targets=Q, power_dbm=power, scenes=n, seed=seed, seconds=round(dt, 2),
            true_positions=sc.positions.tolist(), true_velocities=sc.velocities.tolist(),
            positions=est.positions.tolist(), velocities=est.velocities.tolist(),
            distributed_positions=est.distributed_positions.tolist(),
            distributed_velocities=est.distributed_velocities.tolist()))
        print(preset, Q, power, n, f"{dt:.1f} s", flush=True)
    return out


if __name__ == "__main__":
    new = compute()
    if "--check" in sys.argv:
        ref = json.loads(OUT.read_text())
        for a, b in zip(ref["cases"], new["cases"], strict=True):
            for k in ("positions", "velocities", "distributed_positions", "distributed_velocities"):
                d = (torch.tensor(a[k]) - torch.tensor(b[k])).abs().max()
                print(a["preset"], k, f"max abs diff {float(d):.3g}", f"ref {a['seconds']} s new {b['seconds']} s")
    else:
        OUT.write_text(json.dumps(new, indent=1) + "\n")
