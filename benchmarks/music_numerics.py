"""MUSIC's refinement numerics: the reference's (5-point zoom, complex128) against complex64, Newton steps, and both.

    .venv/bin/python benchmarks/music_numerics.py 128 48,60,30

Same noisy ``quick`` scenes (seed 11) for every variant, batches of 64, one torch thread; prints the CPU seconds per
scene (``time.process_time``), the position RMSE with its 95 % bootstrap interval, the velocity RMSE and the scenes
whose estimate moved by more than 1 mm against the reference numerics. Results: ``results/batched.md``, section
"MUSIC: Newton and complex64".
"""

from __future__ import annotations

import sys
import time

import torch

import cfisac
from cfisac.metrics import accuracy, rmse_confidence_interval

VARIANTS = {"zoom, complex128 (reference numerics)": dict(refine_method="zoom", dtype=torch.complex128),
            "zoom, complex64": dict(refine_method="zoom", dtype=torch.complex64),
            "newton, complex128": dict(refine_method="newton", dtype=torch.complex128),
            "newton, complex64 (default)": {}}


def main() -> None:
    torch.set_num_threads(1)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    powers = [float(p) for p in (sys.argv[2] if len(sys.argv) > 2 else "48,60,30").split(",")]
    print("| P (dBm) | numerics | CPU s/scene | position RMSE (m) [95 %] | velocity RMSE (m/s) | scenes moved > 1 mm |")
    print("|---|---|---|---|---|---|")
    for p in powers:
        cfg = cfisac.SystemConfig.preset("quick").replace(power_dbm=p)
        sc = cfisac.sample_scenes(cfg, batch_size=n, seed=11)
        x = cfisac.transmit_signals(cfg, sc, seed=11)
        y = cfisac.sensing_echoes(cfg, sc, x, noise=True, seed=11)
        ref = None
        for name, opts in VARIANTS.items():
            est = cfisac.estimators.create("music", cfg, **opts)
            t = time.process_time()
            outs = [est(y[lo:lo + 64], x[lo:lo + 64]) for lo in range(0, n, 64)]
            sec = (time.process_time() - t) / n
            pos = torch.cat([o.positions for o in outs])
            vel = torch.cat([o.velocities for o in outs])
            ref = pos if ref is None else ref
            a = accuracy(pos, vel, sc.positions, sc.velocities)
            lo, hi = rmse_confidence_interval(a.position_errors)
            moved = int(((pos - ref).norm(dim=-1) > 1e-3).any(-1).sum())
            print(f"| {p:g} | {name} | {sec:.4f} | {a.position_rmse:.4f} [{lo:.3g}-{hi:.3g}] | {a.velocity_rmse:.4f} | "
                  f"{moved} / {n} |", flush=True)


if __name__ == "__main__":
    main()
