"""Seconds per scene and receive AP of each AP front end (issue 9) at a preset, for batch sizes 1 and 64: simulated
scenes, ``--threads`` torch threads, the minimum of ``--repeats`` calls after a warm-up call. Each front end runs in
its own process, so the peak resident memory it reports (``ru_maxrss``, after the largest batch) is its own; the
baseline (interpreter, torch, the simulated scenes) is printed first.

    .venv/bin/python benchmarks/bench_front_end_cost.py [--preset quick] [--threads 1] [--batches 1 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

FRONT_ENDS = (("raw", {}), ("matched", {"beam_pool": "max"}), ("image", {}), ("velocity-image", {}),
              ("velocity-image", {"velocity_output": "marginals"}), ("covariance", {}))


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _child(a: argparse.Namespace) -> None:
    import torch

    import cfisac
    from cfisac.models.front_ends import create_front_end

    torch.set_num_threads(a.threads)
    cfg = cfisac.SystemConfig.preset(a.preset)
    b = cfisac.data.simulate_batch(cfg, 0, range(max(a.batches)))
    y, x = b["y"][:, 0].contiguous(), b["x"]
    name, opts = FRONT_ENDS[a.child]
    fe = create_front_end(name, cfg, ap_index=0, norm="noise", **opts)
    base = _rss_gib()
    row = {"front_end": name, "options": opts, "output": list(fe.output_shape), "baseline_rss_gib": base}
    for batch in sorted(a.batches):
        xb = x[:batch] if fe.needs_x else None
        fe(y[:batch], xb)
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            fe(y[:batch], xb)
            times.append((time.perf_counter() - t0) / batch)
        row[f"s_per_scene_ap_b{batch}"] = min(times)
        row[f"peak_rss_gib_b{batch}"] = _rss_gib()
    print(json.dumps(row))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--front-ends", type=int, nargs="+", default=list(range(len(FRONT_ENDS))),
                   help="indices into FRONT_ENDS")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:
        _child(a)
        return
    print(f"preset {a.preset}, {a.threads} thread(s), min of {a.repeats} calls; ms per scene and receive AP "
          f"(peak RSS GiB of the front end's process after that batch)")
    for i in a.front_ends:
        cmd = [sys.executable, __file__, "--child", str(i), "--preset", a.preset, "--threads", str(a.threads),
               "--repeats", str(a.repeats), "--batches", *map(str, a.batches)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        cells = ", ".join(f"B={b}: {row[f's_per_scene_ap_b{b}'] * 1e3:.2f} ms ({row[f'peak_rss_gib_b{b}']:.2f} GiB)"
                          for b in sorted(a.batches))
        print(f"{row['front_end']} {row['options'] or ''} output {tuple(row['output'])}: {cells}; "
              f"baseline {row['baseline_rss_gib']:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
