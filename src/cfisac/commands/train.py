"""``cfisac train``: collaborative training (Algorithm 1) of the D-VQVAE, the D-VAE or the CNN centralized scheme.

Example: ``cfisac train --model dvqvae --preset quick --out runs/quick/dvqvae --minutes 10``; continue a killed
run with the same command plus ``--resume``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..config import SystemConfig

MODEL_PRESETS = ("paper", "quick", "tiny")


def add_system_arguments(p: argparse.ArgumentParser, *, default_preset: str | None = "quick") -> None:
    """``--preset``, ``--config`` (SystemConfig JSON) and common overrides."""
    p.add_argument("--preset", default=default_preset,
                   help=f"system preset: paper | quick | tiny | monostatic (default: {default_preset})")
    p.add_argument("--config", type=Path, help="a SystemConfig JSON file (overrides --preset)")
    p.add_argument("--power-dbm", type=float, help="override the transmit power P (dBm)")
    p.add_argument("--n-targets", type=int, help="override Q")


def system_from_args(args: argparse.Namespace, base: SystemConfig | None = None) -> SystemConfig:
    if args.config:
        cfg = SystemConfig.from_json(args.config)
    elif base is not None and args.preset is None:
        cfg = base
    else:
        cfg = SystemConfig.preset(args.preset or "quick")
    over = {k: v for k, v in (("power_dbm", args.power_dbm), ("n_targets", args.n_targets)) if v is not None}
    return cfg.replace(**over) if over else cfg


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as ModelConfig overrides (values parsed as JSON, else kept as strings); an unknown
    field is a ``ValueError`` naming it and the valid ones."""
    import dataclasses

    from ..models import ModelConfig

    fields = sorted(f.name for f in dataclasses.fields(ModelConfig))
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        if k not in fields:
            raise ValueError(f"--set {item!r}: unknown ModelConfig field {k!r}; choose from {fields}")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def check_training_arguments(args: argparse.Namespace, *, check_out: bool = True) -> None:
    """Checks shared by train / dist-train / ddp-train, before any work: one-line ``ValueError`` s. ``check_out``:
    also that ``--out`` is a writable directory (only where it is written: rank 0 of a distributed run)."""
    from ._checks import check_device, check_finite, check_output_dir, check_positive_int, check_threads

    check_threads("--threads", args.threads)
    check_device("--device", args.device)
    for opt, v in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--n-train", args.n_train)):
        check_positive_int(opt, v, allow_none=False)
    if args.n_val < 1:  # no validation set: NaN validation losses and no best.json
        raise ValueError(f"--n-val must be at least 1 (the validation set selects best.json), got {args.n_val}")
    check_positive_int("--seed", args.seed, allow_none=False, minimum=0)
    check_finite("--lr", args.lr, minimum=0.0, strict=True)
    check_finite("--minutes", args.minutes, minimum=0.0, strict=True)
    if getattr(args, "workers", None) is not None:
        check_positive_int("--workers", args.workers, allow_none=False, minimum=0)
    if getattr(args, "feature_cache_gb", None) is not None:
        check_finite("--feature-cache-gb", args.feature_cache_gb, minimum=0.0)
    if getattr(args, "front_end", None):
        from ..models.front_ends import available_front_ends

        if args.front_end not in available_front_ends():
            raise ValueError(f"--front-end {args.front_end!r} is unknown; choose one of {available_front_ends()}")
    if getattr(args, "data", None) is not None and not args.data.is_file():
        raise ValueError(f"--data {args.data} is not a file (create one with `cfisac simulate`)")
    if check_out:
        check_output_dir("--out", args.out)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a learned scheme (D-VQVAE, D-VAE, CNN centralized): Algorithm 1",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dvqvae", choices=("dvqvae", "dvae", "cnn"))
    add_system_arguments(p)
    p.add_argument("--model-preset", choices=MODEL_PRESETS,
                   help="hyper-parameters (default: the system preset's name, else quick)")
    p.add_argument("--front-end", help="AP input front end (default: raw, the paper's)")
    p.add_argument("--input-norm", choices=("rms", "noise", "none"), help="input normalisation (default: rms)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ModelConfig field, e.g. --set num_codes=64 (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, history.csv, loss.png)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant (the paper's) or cosine decay to 0 over --minutes or --epochs, whichever ends first")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--loss", choices=("canonical", "assignment"), default="canonical",
                   help="canonical: Eq. (17) with the targets ordered by x (the paper); assignment: each scene's "
                        "targets matched to the output slots first (unordered targets)")
    p.add_argument("--n-train", type=int, default=16_000, help="training samples (paper: 16000)")
    p.add_argument("--n-val", type=int, default=500, help="validation samples")
    p.add_argument("--seed", type=int, default=0, help="dataset / initialisation seed")
    p.add_argument("--minutes", type=float, help="stop (with a checkpoint) after this much training time")
    p.add_argument("--data", type=Path, help="HDF5 training set from `cfisac simulate` instead of on-the-fly data")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes simulating batches")
    p.add_argument("--feature-cache-gb", type=float, default=0.0,
                   help="memory (GB) for the AP front ends' outputs of the training / validation samples, computed "
                        "once and reused in later epochs (same weights, less time; default 0: recompute)")
    p.add_argument("--power-pool", metavar="P1,P2,...",
                   help="train on samples cycling through these transmit powers (dBm; sample k at the k mod n-th), "
                        "e.g. 10,20,30,40,48,60 for one model of every power of Fig. 6 (default: the config's power)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (the quantizer stays float32)")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (start it when it has none yet)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models import ModelConfig
    from ..train import TrainConfig, train

    check_training_arguments(args)
    cfg = system_from_args(args)
    preset = args.model_preset or (args.preset if args.preset in MODEL_PRESETS else "quick")
    over = parse_set(args.set)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.front_end:
        over["front_end"] = args.front_end
    if args.input_norm:
        over["input_norm"] = args.input_norm
    mcfg = ModelConfig.preset(preset, **over)
    tcfg = TrainConfig(kind=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       n_train=args.n_train, n_val=args.n_val, seed=args.seed, minutes=args.minutes,
                       workers=args.workers, device=args.device, amp=args.amp,
                       data=str(args.data) if args.data else None, loss=args.loss,
                       feature_cache_gb=args.feature_cache_gb, power_dbm_pool=_power_pool(args.power_pool),
                       lr_schedule=args.lr_schedule)
    resume = args.resume
    if resume and not (args.out / "latest.json").exists():  # killed before its first checkpoint: nothing to lose
        print(f"--resume: {args.out} holds no checkpoint yet; starting the run from the beginning", flush=True)
        resume = False
    res = train(cfg, mcfg, tcfg, args.out, resume=resume, progress=not args.no_progress)
    last = res.history[-1] if res.history else None
    status = "finished" if res.finished else "stopped by the time budget (continue with --resume)"
    print(f"{status}; checkpoint {res.checkpoint}")
    if last:
        print(f"validation RMSE: {last['val_position_rmse']:.3f} m, {last['val_velocity_rmse']:.3f} m/s; "
              f"loss curve {args.out / 'loss.png'}")
    return 0


def _power_pool(text: str | None) -> tuple[float, ...]:
    """``--power-pool``: comma-separated finite numbers (dBm), or nothing."""
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--power-pool must be comma-separated numbers (dBm), got {text!r}") from None
