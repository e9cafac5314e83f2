"""Speed against accuracy of an estimator's algorithmic options, on the same noisy scenes.

    .venv/bin/python benchmarks/estimator_knobs.py cs '{"default": {}, "1 candidate": {"n_candidates": 1}}' \
        --powers 10,30,48,60 --scenes 128

For every power and variant: CPU seconds per scene (``time.process_time``, one torch thread, batches of 64), the
position and velocity RMSE with their 95 % bootstrap intervals, the root-CRLB of the same scenes' targets is not
recomputed here (see ``results/crlb.md``), and how many scenes moved by more than 1 m against the first variant.
Same scenes (seed 11) for every variant; monostatic runs on the monostatic system of the preset.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import cfisac
from cfisac.experiments.common import monostatic_config
from cfisac.metrics import accuracy, rmse_confidence_interval


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scheme")
    ap.add_argument("variants", help="JSON object: variant name -> estimator options")
    ap.add_argument("--powers", default="48")
    ap.add_argument("--scenes", type=int, default=128)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    variants = json.loads(args.variants)
    print(f"`{args.scheme}`, preset {args.preset}, {args.scenes} scenes (seed {args.seed}), batches of {args.batch}, "
          "one torch thread")
    print("| P (dBm) | variant | CPU s/scene | position RMSE (m) [95 %] | velocity RMSE (m/s) [95 %] | moved > 1 m |")
    print("|---|---|---|---|---|---|")
    for p in (float(v) for v in args.powers.split(",")):
        cfg = cfisac.SystemConfig.preset(args.preset).replace(power_dbm=p)
        if args.scheme == "monostatic":
            cfg = monostatic_config(cfg)
        sc = cfisac.sample_scenes(cfg, batch_size=args.scenes, seed=args.seed)
        x = cfisac.transmit_signals(cfg, sc, seed=args.seed)
        y = cfisac.sensing_echoes(cfg, sc, x, noise=True, seed=args.seed)
        ref = None
        for name, opts in variants.items():
            est = cfisac.estimators.create(args.scheme, cfg, **opts)
            t = time.process_time()
            outs = [est(y[lo:lo + args.batch], x[lo:lo + args.batch]) for lo in range(0, args.scenes, args.batch)]
            sec = (time.process_time() - t) / args.scenes
            pos = torch.cat([o.positions for o in outs])
            vel = torch.cat([o.velocities for o in outs])
            ref = pos if ref is None else ref
            a = accuracy(pos, vel, sc.positions, sc.velocities)
            plo, phi = rmse_confidence_interval(a.position_errors)
            vlo, vhi = rmse_confidence_interval(a.velocity_errors)
            moved = int(((pos - ref).norm(dim=-1) > 1.0).any(-1).sum())
            print(f"| {p:g} | {name} | {sec:.4f} | {a.position_rmse:.3f} [{plo:.3g}-{phi:.3g}] | "
                  f"{a.velocity_rmse:.3f} [{vlo:.3g}-{vhi:.3g}] | {moved} / {args.scenes} |", flush=True)


if __name__ == "__main__":
    main()
