"""``cfisac crlb``: root-CRLB of positions (m) and velocities (m/s) versus the transmit power (paper Eq. 24-28).

For each power the scenes, precoders and transmit signals are drawn at that power (the MMSE precoder depends on P),
the CRLB of every scene is computed and averaged like the RMSE: sqrt of the mean over scenes and targets of
CRLB_xx + CRLB_yy (see :func:`cfisac.crlb.average_root_crlb`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..config import SystemConfig
from ..crlb import average_root_crlb, crlb
from ..scene import sample_scenes
from ..waveform import transmit_signals


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "crlb", help="root-CRLB of positions and velocities versus transmit power",
        description="Print the root-CRLB (m, m/s) averaged like the RMSE over random scenes, per transmit power.",
    )
    p.add_argument("--preset", default="quick", help="paper | quick | tiny | monostatic (default: quick)")
    p.add_argument("--config", type=Path, help="a SystemConfig JSON file (overrides --preset)")
    p.add_argument("--power-dbm", type=float, nargs="+", help="transmit powers P (dBm; default: the config's)")
    p.add_argument("--n-targets", type=int, help="override Q")
    p.add_argument("--n-scenes", type=int, default=20, help="random scenes per power (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed of the scenes and transmit symbols")
    p.add_argument("--clutter", choices=("known", "nuisance"), default="known",
                   help="clutter (Eq. 29) as known interference or as nuisance parameters (default: known)")
    p.add_argument("--batch", type=int, default=4, help="scenes per batch (bounds memory; default: 4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = SystemConfig.from_json(args.config) if args.config else SystemConfig.preset(args.preset)
    if args.n_targets is not None:
        cfg = cfg.replace(n_targets=args.n_targets)
    if args.n_scenes <= 0 or args.batch <= 0:
        raise ValueError(f"--n-scenes and --batch must be positive, got {args.n_scenes} and {args.batch}")
    if args.seed < 0:
        raise ValueError(f"--seed must be an integer >= 0, got {args.seed}")
    powers = args.power_dbm if args.power_dbm else [cfg.power_dbm]
    configs = [cfg.replace(power_dbm=float(power)) for power in powers]  # every power checked before any work
    name = args.config if args.config else args.preset
    print(f"root-CRLB over {args.n_scenes} scenes (seed {args.seed}), {name}: Q={cfg.n_targets}, "
          f"{cfg.n_subcarriers}x{cfg.n_symbols} cells, noise {cfg.noise_dbm:g} dBm, clutter {args.clutter}")
    print(f"{'P (dBm)':>8}  {'position (m)':>13}  {'velocity (m/s)':>15}  {'s/scene':>8}")
    for power, c in zip(powers, configs, strict=True):
        bounds, seconds = [], 0.0
        for start in range(0, args.n_scenes, args.batch):
            size = min(args.batch, args.n_scenes - start)
            scenes = sample_scenes(c, size, args.seed, start_index=start)
            x = transmit_signals(c, scenes, args.seed)
            t0 = time.perf_counter()
            bounds.append(crlb(c, scenes, x, clutter=args.clutter))
            seconds += time.perf_counter() - t0
        pos, vel = average_root_crlb(torch.cat(bounds))
        print(f"{power:>8g}  {pos:>13.4g}  {vel:>15.4g}  {seconds / args.n_scenes:>8.3f}")
    return 0
