"""Non-learned readout of cached front-end outputs (issue 9 diagnostic): what a greedy peak picker gets from the
``image`` maps (positions) and the ``velocity-image`` maps (velocities) of ``bench_front_ends.py``'s test scenes.

Per scene: the two receive APs' ``image`` powers are summed over transmit APs and receive APs (maximum over the
Doppler axis), the strongest pixel is target 1, the pixels within 2 of it are blanked and the next strongest is
target 2; each target's velocity is the peak of the summed ``velocity-image`` plane at its pixel. Also prints how far
each receive AP's single strongest ``image`` peak is from the nearest true target.

    .venv/bin/python benchmarks/explorations/peak_readout.py --features data/front_end_features/quick-P48 --power-dbm 48
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import cfisac
from cfisac.data import simulate_batch
from cfisac.metrics import accuracy
from cfisac.models.front_ends import create_front_end


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", type=Path, required=True, help="folder of the cached test features")
    p.add_argument("--preset", default="quick")
    p.add_argument("--power-dbm", type=float, default=48.0)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--test-seed", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = cfisac.SystemConfig.preset(args.preset, power_dbm=args.power_dbm)
    test = simulate_batch(cfg, args.test_seed, range(args.n_test))
    name = f"test{args.n_test}-seed{args.test_seed}.f16.npy"
    img = np.load(args.features / f"image-{name}").astype(np.float32)  # [n, M, N, Gx, Gy, D]
    vim = np.load(args.features / f"velocity-image-{name}").astype(np.float32)  # [n, M, Vy, Gx, Gy, Vx]
    grid = create_front_end("velocity-image", cfg, ap_index=0).grid
    xs, ys, vxs, vys = (grid[k].numpy() for k in ("x", "y", "velocity_x", "velocity_y"))
    Q, true_pos = cfg.n_targets, test["positions"].numpy()
    pmap, vmap = (img**2).max(-1).sum((1, 2)), (vim**2).sum(1)
    pos, vel = np.zeros((len(pmap), Q, 2)), np.zeros((len(pmap), Q, 2))
    for s in range(len(pmap)):
        m = pmap[s].copy()
        for q in range(Q):
            gx, gy = np.unravel_index(np.argmax(m), m.shape)
            ky, kx = np.unravel_index(np.argmax(vmap[s, :, gx, gy, :]), vmap.shape[1::3])
            pos[s, q], vel[s, q] = (xs[gx], ys[gy]), (vxs[kx], vys[ky])
            m[max(0, gx - 2):gx + 3, max(0, gy - 2):gy + 3] = 0
    acc = accuracy(torch.from_numpy(pos), torch.from_numpy(vel), test["positions"], test["velocities"])
    per_scene = acc.position_errors.reshape(len(pos), -1).pow(2).mean(1).sqrt().numpy()
    print(f"greedy two-peak readout: {acc.position_rmse:.2f} m / {acc.velocity_rmse:.2f} m/s; per-scene position "
          f"RMSE p25 / p50 / p75 {np.percentile(per_scene, [25, 50, 75]).round(2).tolist()} m")
    for ap in range(cfg.n_rx):
        one = (img[:, ap] ** 2).max(-1).sum(1)
        gx, gy = np.unravel_index(one.reshape(len(one), -1).argmax(1), one.shape[1:])
        d = np.sqrt(((np.stack([xs[gx], ys[gy]], -1)[:, None] - true_pos) ** 2).sum(-1)).min(1)
        print(f"receive AP {ap}: strongest image peak to the nearest target p10 / p50 / p90 "
              f"{np.percentile(d, [10, 50, 90]).round(2).tolist()} m")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
