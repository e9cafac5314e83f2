"""Seconds per scene and receive AP of each AP front end (issue 9) at the quick preset: one batch of 32 simulated
scenes, one torch thread, the minimum of three calls after a warm-up.

    .venv/bin/python benchmarks/bench_front_end_cost.py [--preset quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

import cfisac
from cfisac.front_ends import create_front_end

FRONT_ENDS = (("raw", {}), ("matched", {"beam_pool": "max"}), ("image", {}), ("velocity-image", {}),
              ("covariance", {}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = cfisac.SystemConfig.preset(a.preset)
    b = cfisac.data.simulate_batch(cfg, 0, range(a.batch))
    for name, opts in FRONT_ENDS:
        fe = create_front_end(name, cfg, ap_index=0, norm="noise", **opts)
        x = b["x"] if fe.needs_x else None
        fe(b["y"][:2, 0], None if x is None else x[:2])
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fe(b["y"][:, 0], x)
            times.append((time.perf_counter() - t0) / a.batch)
        print(f"{name} {opts or ''}: output {tuple(fe.output_shape)}, {min(times):.4f} s per scene and AP")


if __name__ == "__main__":
    main()
