"""Short exploratory runs of the D-VQVAE on cached front-end outputs (issue 9): which input scaling, learning rate
and quantizer option lets a front end learn at all within a few CPU minutes.

It reads the float16 feature caches written by ``benchmarks/bench_front_ends.py --cached`` (or the float32 caches of
its earlier versions) for ``quick`` at ``--power`` dBm, the matching HDF5 training cache (for X and the labels, the
same first 4096 scenes), holds everything in memory, trains Algorithm 1 (``cfisac.train.train_step``, each AP's front
end replaced by the identity on its cached output) for ``--minutes`` and prints the test RMSE of Algorithm 2's
messages (500 held-out scenes, seed 1) every 30 s (first 250 scenes) and at the end (all 500). Options:

- ``--max``: divide each AP's map by its own maximum (label-free, per sample) before the encoder;
- ``--log``: log1p of the map; ``--over``: JSON ModelConfig overrides (e.g. k-means codebook initialisation and
  dead-codeword restarts, both options of :class:`cfisac.quantize.VectorQuantizer`);
- ``--zero-x``: feed zeros to the decoder's transmit-signal branch (a diagnostic: does the decoder memorise the
  training scenes through X?).

    .venv/bin/python benchmarks/explorations/explore_front_ends.py --fe image --minutes 4 \
        --over '{"kmeans_init": true, "dead_code_threshold": 1.0}'

Results are exploratory (one seed, a few minutes, other processes on the machine): see
``benchmarks/results/front_ends.md`` for how they were used. The 10-minute comparisons are made with
``bench_front_ends.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from front_end_bench import CachedFrontEnd, message_rmse  # this folder's loader of ../bench_front_ends.py

import cfisac
from cfisac.data import open_hdf5, simulate_batch
from cfisac.models import LabelNormaliser, ModelConfig, build_model
from cfisac.train import ApTrainer, CpuTrainer, train_step

FRONT_ENDS = {"velocity-image": ("velocity-image", {}), "image": ("image", {}), "matched-max": ("matched",
              {"beam_pool": "max"}), "raw": ("raw", {}), "covariance": ("covariance", {})}


def _load(path: Path) -> torch.Tensor:
    f16 = path.with_name(path.name.replace(".npy", ".f16.npy"))
    return torch.from_numpy(np.load(f16 if f16.exists() else path))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fe", default="image", choices=sorted(FRONT_ENDS))
    p.add_argument("--power", type=float, default=48.0)
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--log", action="store_true")
    p.add_argument("--max", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--over", type=json.loads, default={})
    p.add_argument("--zero-x", action="store_true")
    p.add_argument("--features", type=Path, default=Path("data/front_end_features"))
    p.add_argument("--data", type=Path, default=None, help="HDF5 cache (default data/quick-P<power>-seed0-n4096.h5)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = cfisac.SystemConfig.preset("quick", power_dbm=a.power)
    d = a.features / f"quick-P{a.power:g}"
    tr, te = _load(d / f"{a.fe}-train4096.npy"), _load(d / f"{a.fe}-test500-seed1.npy").float()

    def prep(f: torch.Tensor) -> torch.Tensor:
        f = f.float()
        if a.log:
            f = torch.log1p(f)
        return f / f.amax((2, 3, 4, 5), keepdim=True).clamp_min(1e-12) if a.max else f

    rows = open_hdf5(a.data or Path(f"data/quick-P{a.power:g}-seed0-n4096.h5")).__getitems__(list(range(4096)))
    X = torch.stack([r["x"] for r in rows])
    labels = torch.stack([r["labels"] for r in rows]).double()
    del rows
    test = simulate_batch(cfg, 1, range(500))
    norm = LabelNormaliser.fit(labels)
    T = norm.normalise(labels).float()
    fe, opts = FRONT_ENDS[a.fe]
    mcfg = ModelConfig.preset("quick", front_end=fe, input_norm="noise", front_end_options=opts, **a.over)
    torch.manual_seed(0)
    model = build_model("dvqvae", cfg, mcfg, seed=0)
    for ap in model.aps:
        ap.front_end = CachedFrontEnd()
    aps = [ApTrainer(ap, lr=a.lr) for ap in model.aps]
    cpu = CpuTrainer(model.cpu_side, lr=a.lr)
    if a.zero_x:
        X, test["x"] = torch.zeros_like(X), torch.zeros_like(test["x"])

    def rmse(k: int = 500) -> tuple[float, float]:
        return message_rmse(model, norm, te, test, k, prep=prep, chunk=125)

    g = torch.Generator().manual_seed(0)
    t0, step, nxt = time.time(), 0, 30.0
    print(a, flush=True)
    while time.time() - t0 < a.minutes * 60:
        perm = torch.randperm(4096, generator=g)
        for lo in range(0, 4096 - a.bs + 1, a.bs):
            idx = perm[lo:lo + a.bs]
            st = train_step(aps, cpu, prep(tr[idx]), X[idx], T[idx])
            step += 1
            if time.time() - t0 > nxt:
                p_, v_ = rmse(250)
                print(f"{time.time() - t0:.0f}s step {step}: {p_:.2f} m {v_:.2f} m/s perplexity "
                      f"{[round(float(x), 1) for x in st['perplexity']]} train mse {float(st['mse']):.4f}", flush=True)
                nxt += 30.0
            if time.time() - t0 > a.minutes * 60:
                break
    p_, v_ = rmse()
    print(f"FINAL {a.fe} log={a.log} max={a.max} lr={a.lr} bs={a.bs} over={a.over} zero_x={a.zero_x} steps={step}: "
          f"{p_:.2f} m / {v_:.2f} m/s", flush=True)


if __name__ == "__main__":
    main()
