"""Compute cached front-end outputs of ``bench_front_ends.py`` for training scenes [lo, hi) in parallel processes.

Writes rows lo..hi-1 of the float16 memory map ``<features>/<name>-train<n>.f16.npy`` (the file
``bench_front_ends.prepare_features`` would write, same computation: batches of 32 scenes, float16), simulating the
scenes on the fly (a sample is a function of config, seed and index, hence the scenes of the HDF5 cache of the same
config and seed); ``--copy K`` first copies rows 0..K-1 from an existing ``<name>-train<K>`` cache. Run one process
per range, then ``--finish`` once: it checks every row is filled and writes the ``.done`` / ``.json`` files that
``prepare_features`` accepts. Prints the front-end seconds per scene and AP of its range.

    P=benchmarks/explorations/extend_front_end_features.py
    .venv/bin/python $P image --n 32768 --range 16384 24576 --copy 16384 &
    .venv/bin/python $P image --n 32768 --range 24576 32768 &
    wait; .venv/bin/python $P image --n 32768 --finish
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from front_end_bench import front_end_modules

import cfisac
from cfisac.data import simulate_batch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="a CACHED front end of bench_front_ends.py (image, velocity-marginals, ...)")
    p.add_argument("--n", type=int, required=True, help="training scenes of the cache")
    p.add_argument("--range", type=int, nargs=2, metavar=("LO", "HI"), help="scenes this process computes")
    p.add_argument("--copy", type=int, default=0, help="copy rows 0..K-1 from the <name>-train<K> cache")
    p.add_argument("--finish", action="store_true", help="check the rows and write .done / .json")
    p.add_argument("--preset", default="quick")
    p.add_argument("--power-dbm", type=float, default=48.0)
    p.add_argument("--seed", type=int, default=0, help="dataset seed of the training scenes")
    p.add_argument("--features", type=Path, default=None, help="default data/front_end_features/<preset>-P<P>")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = cfisac.SystemConfig.preset(args.preset, power_dbm=args.power_dbm)
    fes = front_end_modules(args.name, cfg)
    shape = (args.n, cfg.n_rx, *fes[0].output_shape)
    folder = args.features or Path("data/front_end_features") / f"{args.preset}-P{args.power_dbm:g}"
    path = folder / f"{args.name}-train{args.n}.f16.npy"
    costs = path.with_suffix(".costs.jsonl")
    if args.finish:
        mm = np.load(path, mmap_mode="r")
        empty = [k for k in range(0, args.n, 256) if not np.abs(mm[k]).max() > 0]
        if tuple(mm.shape) != shape or empty:
            raise SystemExit(f"{path}: shape {mm.shape} (expected {shape}) or unfilled rows {empty[:5]}")
        runs = [json.loads(line) for line in costs.read_text().splitlines()]
        cost = sum(r["seconds"] for r in runs) / sum(r["scenes"] for r in runs) / cfg.n_rx
        path.with_suffix(".json").write_text(json.dumps({"front_end_seconds_per_sample_per_ap": cost}))
        path.with_suffix(".done").write_text(json.dumps(list(shape)))
        print(f"{path}: complete, {cost:.4f} s per scene and AP")
        return 0
    if not args.range or not 0 <= args.range[0] < args.range[1] <= args.n:
        raise SystemExit(f"--range LO HI must satisfy 0 <= LO < HI <= {args.n}")
    folder.mkdir(parents=True, exist_ok=True)
    mm = np.lib.format.open_memmap(path, mode="r+" if path.exists() else "w+", dtype=np.float16, shape=shape)
    if args.copy:
        mm[:args.copy] = np.load(folder / f"{args.name}-train{args.copy}.f16.npy", mmap_mode="r")
    lo0, hi0 = args.range
    t0, t_fe = time.time(), 0.0
    for lo in range(lo0, hi0, 32):
        hi = min(hi0, lo + 32)
        b = simulate_batch(cfg, args.seed, range(lo, hi))
        t1 = time.time()
        with torch.no_grad():
            for m, fe in enumerate(fes):
                mm[lo:hi, m] = fe(b["y"][:, m], b["x"] if fe.needs_x else None).numpy().astype(np.float16)
        t_fe += time.time() - t1
        if (lo // 32) % 32 == 0:
            print(f"{hi}/{hi0} ({time.time() - t0:.0f} s)", flush=True)
    mm.flush()
    with costs.open("a") as f:
        f.write(json.dumps({"range": [lo0, hi0], "scenes": hi0 - lo0, "seconds": t_fe}) + "\n")
    print(f"scenes {lo0}..{hi0 - 1}: {t_fe / (hi0 - lo0) / cfg.n_rx:.4f} s per scene and AP")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
