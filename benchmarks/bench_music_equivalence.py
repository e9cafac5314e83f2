"""Batched MUSIC (``cfisac.estimators.music``) against its literal reference on 50 ``quick`` scenes: messages, RMSE.

Scenes: ``sample_scenes(cfg, n, 2026)``, ``transmit_signals(cfg, sc, 2026)``, ``sensing_echoes(cfg, sc, x, noise=True,
seed=2026)``, ``cfg = SystemConfig.preset("quick", power_dbm=P)``. The reference's messages take minutes per scene
batch: ``--save-reference FILE`` runs it and saves aoa / ranges / dopplers and its estimates (pos / vel, fused by
``reference.signal_processing.fuse_messages``) to FILE (.npz); ``--reference FILE`` compares the batched messages with
a saved run. The RMSE of the batched messages is taken with the same reference fusion, so only MUSIC differs.
Single-threaded (``torch.set_num_threads(1)``); CPU time (``time.process_time``) and wall time are printed.

    .venv/bin/python benchmarks/bench_music_equivalence.py --power 55 --save-reference /tmp/mus/ref50_55.npz
    .venv/bin/python benchmarks/bench_music_equivalence.py --power 55 --reference /tmp/mus/ref50_55.npz
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import cfisac
from cfisac.estimators.music import MusicEstimator
from cfisac.estimators.reference.music import MusicEstimator as ReferenceMusic
from cfisac.estimators.reference.signal_processing import ApMessages, fuse_messages, validate_inputs
from cfisac.metrics import accuracy
from cfisac.physics import SensingGrid

SEED = 2026


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--power", type=float, default=55.0, help="transmit power (dBm)")
    ap.add_argument("--scenes", type=int, default=50)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--reference", help="saved reference run (.npz) to compare with")
    group.add_argument("--save-reference", help="run the reference and save its messages / estimates here (.npz)")
    ap.add_argument("--refine-method", default="zoom", choices=("zoom", "newton"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = cfisac.SystemConfig.preset("quick", power_dbm=args.power)
    sc = cfisac.sample_scenes(cfg, args.scenes, SEED)
    x = cfisac.transmit_signals(cfg, sc, SEED)
    y = cfisac.sensing_echoes(cfg, sc, x, noise=True, seed=SEED)
    if args.save_reference:
        yn, xn = validate_inputs(cfg, y, x)
        t = time.perf_counter()
        msg = ReferenceMusic(cfg).messages(yn, xn)
        tm = time.perf_counter() - t
        est = fuse_messages(cfg, msg)
        np.savez(args.save_reference, aoa=msg.aoa, ranges=msg.ranges, dopplers=msg.dopplers,
                 pos=est.positions.numpy(), vel=est.velocities.numpy(), t_msg=tm)
        print(f"reference messages {tm / args.scenes:.2f} s/scene (wall); saved {args.save_reference}")
        return
    ref = np.load(args.reference)
    est = MusicEstimator(cfg, refine_method=args.refine_method)
    c, t = time.process_time(), time.perf_counter()
    msg = est.ap_messages(y.to(torch.complex128), x.to(torch.complex128))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    grid = SensingGrid.from_config(cfg, "cpu")
    for key, unit in (("aoa", 1.0), ("ranges", grid.range_res), ("dopplers", grid.doppler_res)):
        diff = np.abs(getattr(msg, key).numpy() - ref[key]).reshape(args.scenes, -1).max(1) / unit
        print(f"{key}: max |new - ref| {diff.max():.3g} {'' if unit == 1.0 else 'cells'}; scenes above 1e-4: "
              f"{np.nonzero(diff > 1e-4)[0].tolist()}")
    mixed = fuse_messages(cfg, ApMessages(msg.aoa.numpy(), msg.ranges.numpy(), msg.dopplers.numpy()))
    a_new = accuracy(mixed.positions, mixed.velocities, sc.positions, sc.velocities)
    a_ref = accuracy(torch.from_numpy(ref["pos"]), torch.from_numpy(ref["vel"]), sc.positions, sc.velocities)
    for name, old, new in (("position RMSE (m)", a_ref.position_rmse, a_new.position_rmse),
                           ("velocity RMSE (m/s)", a_ref.velocity_rmse, a_new.velocity_rmse)):
        print(f"{name}: reference {old:.4f}, batched {new:.4f} ({100 * (new / old - 1):+.2f} %)")
    print(f"batched ap_messages, batch {args.scenes}: {cpu / args.scenes * 1e3:.0f} ms/scene CPU time, "
          f"{wall / args.scenes * 1e3:.0f} ms/scene wall")


if __name__ == "__main__":
    main()
