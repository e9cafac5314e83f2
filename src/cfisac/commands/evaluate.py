"""``cfisac evaluate``: RMSE (Hungarian-assigned), per-target error CDFs, prior and root-CRLB of a trained learned
scheme on held-out test scenes; writes a results JSON and a CDF figure.

Example: ``cfisac evaluate --checkpoint runs/quick/dvqvae --n-test 500``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..data import remove_stale_temporaries
from ._checks import check_device, check_output_file, check_positive_int, check_threads
from .train import add_system_arguments, system_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a trained learned scheme on test scenes",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="run directory of `cfisac train` (or a ckpt dir)")
    p.add_argument("--which", choices=("latest", "best"), default="latest",
                   help="latest checkpoint or lowest validation loss")
    add_system_arguments(p, default_preset=None)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--seed", type=int, help="test dataset seed (default: the training seed + 1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--crlb", action="store_true", help="also the root-CRLB of the test scenes (cfisac.crlb)")
    p.add_argument("--out", type=Path, help="results JSON (default: <run>/eval-seed<S>-P<P>dBm.json)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import find_checkpoint, load_checkpoint
    from ..estimators import create
    from ..experiments.evaluation import evaluate, plot_cdf, write_results
    from ..fit import NORMALISER_MAX_SAMPLES, DataSource
    from ..fronthaul import format_bits

    check_threads("--threads", args.threads)
    check_device("--device", args.device)
    check_positive_int("--n-test", args.n_test, allow_none=False)
    check_positive_int("--batch-size", args.batch_size, allow_none=False)
    check_positive_int("--seed", args.seed, minimum=0)
    check_output_file("--out", args.out)
    if not args.checkpoint.exists():
        raise ValueError(f"--checkpoint {args.checkpoint} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    ck = load_checkpoint(args.checkpoint, which=args.which)
    cfg = system_from_args(args, base=ck.cfg)
    seed = ck.tcfg.seed + 1 if args.seed is None else args.seed
    est = create(ck.kind, cfg, checkpoint=str(find_checkpoint(args.checkpoint, args.which)), device=args.device,
                 batch_size=args.batch_size)
    mean_label = DataSource(ck.cfg, ck.tcfg.seed, ck.tcfg.n_train).labels(NORMALISER_MAX_SAMPLES).mean(0)
    res = evaluate(est, cfg, n_test=args.n_test, seed=seed, batch_size=args.batch_size, with_crlb=args.crlb,
                   mean_label=mean_label, progress=not args.no_progress)
    res["checkpoint"] = str(est.checkpoint)
    run_dir = args.checkpoint if (args.checkpoint / "latest.json").is_file() else args.checkpoint.parent
    out = args.out or run_dir / f"eval-seed{seed}-P{cfg.power_dbm:g}dBm.json"
    # temporaries of an earlier, killed evaluation to the same files (cfisac.experiments.evaluation's atomic writers)
    png_path = out.with_suffix(".png")
    remove_stale_temporaries(out.parent, re.escape(f".{out.name}.tmp-") + r"(?P<pid>\d+)")
    remove_stale_temporaries(out.parent, re.escape(f".{png_path.stem}.tmp-") + r"(?P<pid>\d+)"
                             + re.escape(png_path.suffix))
    write_results(out, res)
    png = plot_cdf(png_path, [res], title=f"{ck.kind}, P = {cfg.power_dbm:g} dBm, {args.n_test} scenes")
    print(f"{ck.kind} on {args.n_test} test scenes (seed {seed}, P = {cfg.power_dbm:g} dBm): "
          f"position RMSE {res['position_rmse']:.3f} m, velocity RMSE {res['velocity_rmse']:.3f} m/s; "
          f"fronthaul {format_bits(res['fronthaul_bits_per_ap'])} per AP and update")
    if res["prior"]:
        print(f"prior predictor on the same scenes: {res['prior']['position_rmse']:.3f} m, "
              f"{res['prior']['velocity_rmse']:.3f} m/s")
    if res["training_mean"]:
        print(f"training-mean predictor (canonical target order): {res['training_mean']['position_rmse']:.3f} m, "
              f"{res['training_mean']['velocity_rmse']:.3f} m/s")
    if isinstance(res["root_crlb"], dict):
        print(f"root-CRLB: {res['root_crlb']['position']:.4g} m, {res['root_crlb']['velocity']:.4g} m/s")
    elif res["root_crlb"]:
        print(f"root-CRLB: {res['root_crlb']}")
    print(f"results {out}, CDF {png}")
    return 0
