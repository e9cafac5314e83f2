"""``cfisac dist-train`` / ``dist-sense`` / ``ddp-train`` / ``entropy-fit``: the receive APs and the CPU as separate
processes (Algorithms 1 and 2 over torch.distributed), data-parallel training, entropy-coded fronthaul.

Launch with torchrun, one rank per receive AP plus the CPU (rank 0), the same command on every rank:

    torchrun --nproc-per-node 3 --no-python cfisac dist-train --preset quick --out runs/dist/quick
    torchrun --nproc-per-node 3 --no-python cfisac dist-sense --checkpoint runs/dist/quick --n 500
    torchrun --nproc-per-node 4 --no-python cfisac ddp-train --preset paper --device cuda --out runs/ddp/paper

or on this machine without torchrun: add ``--local`` (dist-*: M + 1 processes; ddp-train: ``--local N``).
See docs/distributed.md (multi-node launch, schedule, message format).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._checks import check_device, check_finite, check_output_file, check_positive_int, check_threads
from .train import MODEL_PRESETS, add_system_arguments, check_training_arguments, parse_set, system_from_args

# After the first rank of a --local run ends, the others get the peer timeout plus this margin to end as well
# before the launcher terminates them (a rank stopped with SIGSTOP or hung never ends by itself).
STRAGGLER_MARGIN_S = 5.0


def _writes_out(args: argparse.Namespace) -> bool:
    """Whether this process writes the run directory: the launcher of --local, else rank 0 only."""
    import os

    return bool(args.local) or os.environ.get("RANK", "0") == "0"


def _check_runtime(args: argparse.Namespace) -> None:
    check_finite("--timeout", args.timeout, minimum=0.0, strict=True)
    check_threads("--threads", args.threads)
    check_device("--device", args.device)


def _training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="dvqvae", choices=("dvqvae", "dvae", "cnn"))
    add_system_arguments(p)
    p.add_argument("--model-preset", choices=MODEL_PRESETS,
                   help="hyper-parameters (default: the system preset's name, else quick)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ModelConfig field, e.g. --set num_codes=64 (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="run directory (written by rank 0)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    p.add_argument("--batch-size", type=int, default=32, help="(global) batch size")
    p.add_argument("--loss", choices=("canonical", "assignment"), default="canonical",
                   help="estimation loss (cfisac.train.estimation_loss; canonical = Eq. (17) of the paper)")
    p.add_argument("--n-train", type=int, default=16_000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, help="stop (with a checkpoint) after this much training time")
    p.add_argument("--device", default="cpu", help="cpu or cuda (each rank uses cuda:LOCAL_RANK)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--threads", type=int, help="torch intra-op threads per rank")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plot", action="store_true", help="do not write loss.png")
    p.add_argument("--backend", default="auto", choices=("auto", "gloo", "nccl"),
                   help="torch.distributed backend (auto: NCCL for CUDA devices, gloo otherwise)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds any rank waits for a peer before failing")


def _configs(args: argparse.Namespace):
    from ..checkpoint import TrainConfig
    from ..models import ModelConfig

    cfg = system_from_args(args)
    preset = args.model_preset or (args.preset if args.preset in MODEL_PRESETS else "quick")
    mcfg = ModelConfig.preset(preset, **parse_set(args.set))
    tcfg = TrainConfig(kind=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       n_train=args.n_train, n_val=args.n_val, seed=args.seed, minutes=args.minutes,
                       device=args.device, amp=args.amp, loss=args.loss)
    return cfg, mcfg, tcfg


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("dist-train", help="Algorithm 1 with the APs and the CPU as separate processes (torchrun)",
                       description=__doc__, formatter_class=fmt)
    _training_arguments(p)
    p.add_argument("--uplink", default="auto", choices=("auto", "indices", "features"),
                   help="what an AP sends per step: bit-packed indices + new codewords, or float32 features "
                        "(paper footnote 4); auto: indices for the D-VQVAE")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every k steps")
    p.add_argument("--no-checksum", action="store_true", help="no CRC-32 on message bodies")
    p.add_argument("--local", action="store_true", help="start the M + 1 ranks here (loopback), no torchrun")
    p.add_argument("--inject-fault", metavar="RANK:ACTION@STEP", help=argparse.SUPPRESS)  # testing: exit, hang, ...
    p.set_defaults(func=run_dist_train)

    p = sub.add_parser("dist-sense", help="Algorithm 2 with the APs and the CPU as separate processes (torchrun)",
                       description=__doc__, formatter_class=fmt)
    p.add_argument("--checkpoint", type=Path, required=True, help="run directory or checkpoint directory")
    p.add_argument("--which", default="latest", choices=("latest", "best"))
    p.add_argument("--seed", type=int, help="dataset seed of the test samples (default: training seed + 1)")
    p.add_argument("--n", type=int, default=500, help="test samples (updates)")
    p.add_argument("--start", type=int, default=0, help="first test sample index")
    p.add_argument("--batch-size", type=int, default=64, help="updates per transport message")
    p.add_argument("--coder", default="packed", choices=("packed", "entropy"),
                   help="packed: Nb bits per index (the paper); entropy: range coder (cfisac entropy-fit)")
    p.add_argument("--entropy-model", type=Path, help="entropy model file of cfisac entropy-fit")
    p.add_argument("--out", type=Path, help="write the CPU's results (estimates summary, bytes) as JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--backend", default="auto", choices=("auto", "gloo", "nccl"))
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--no-checksum", action="store_true")
    p.add_argument("--local", action="store_true", help="start the M + 1 ranks here (loopback), no torchrun")
    p.set_defaults(func=run_dist_sense)

    p = sub.add_parser("ddp-train", help="data-parallel training of the whole model (DistributedDataParallel)",
                       description=__doc__, formatter_class=fmt)
    _training_arguments(p)
    p.add_argument("--local", type=int, metavar="R", help="start R replicas here (loopback), no torchrun")
    p.set_defaults(func=run_ddp_train)

    p = sub.add_parser("entropy-fit", help="learn the entropy coder's index model from training samples and "
                       "report bits per update against Nb L", description=__doc__, formatter_class=fmt)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--which", default="latest", choices=("latest", "best"))
    p.add_argument("--n", type=int, default=1000, help="training samples to count indices on")
    p.add_argument("--context", default="none", choices=("none", "position", "previous"))
    p.add_argument("--prior", type=float, default=0.5, help="additive smoothing of the counts")
    p.add_argument("--eval-n", type=int, default=200, help="held-out samples (training seed + 1) for the report")
    p.add_argument("--out", type=Path, required=True, help="entropy model file (safetensors)")
    p.set_defaults(func=run_entropy_fit)


def _report(reports: list[dict[str, Any]], command: str) -> int:
    code = 0
    for rep in reports:
        if rep.get("ok"):
            continue
        code = 1
        print(f"cfisac {command} (rank {rep['rank']}): error: {rep.get('error')}", file=sys.stderr)
    return code


def _worker(task: str, options: dict[str, Any], command: str) -> int:
    import os

    from ..distributed import run_worker
    from ..distributed.training import DistributedTrainingError

    try:
        run_worker(task, options)
    except DistributedTrainingError as err:
        print(f"cfisac {command} (rank {os.environ.get('RANK', '?')}): error: {err}", file=sys.stderr)
        return 1
    return 0


def run_dist_train(args: argparse.Namespace) -> int:
    from ..distributed import DistConfig, spawn_local

    _check_runtime(args)
    check_training_arguments(args, check_out=_writes_out(args))
    check_positive_int("--checkpoint-every", args.checkpoint_every, allow_none=False, minimum=0)
    cfg, mcfg, tcfg = _configs(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    dcfg = DistConfig(mode=args.uplink, timeout_s=args.timeout, checksum=not args.no_checksum,
                      checkpoint_every=args.checkpoint_every, plot=not args.no_plot)
    options = {"system": cfg.to_dict(), "model": mcfg.to_dict(), "train": tcfg.to_dict(),
               "distributed": dcfg.to_dict(), "out": str(args.out), "resume": args.resume,
               "progress": not args.no_progress, "backend": args.backend, "device": args.device,
               "timeout_s": args.timeout, "threads": args.threads}
    if args.inject_fault:
        rank, _, action = args.inject_fault.partition(":")
        options["fault"] = {"rank": int(rank), "action": action}
    if args.local:
        reports = spawn_local(cfg.n_rx + 1, "train", options, args.out / ".ranks",
                              deadline_s=None, straggler_s=args.timeout + STRAGGLER_MARGIN_S)
        code = _report(reports, "dist-train")
        if code == 0:
            print(f"finished; checkpoint {reports[0]['result']['checkpoint']}")
        return code
    return _worker("train", options, "dist-train")


def _sense_options(args: argparse.Namespace) -> dict[str, Any]:
    from ..checkpoint import find_checkpoint, model_from_state

    _check_runtime(args)
    check_positive_int("--n", args.n, allow_none=False)
    check_positive_int("--batch-size", args.batch_size, allow_none=False)
    check_positive_int("--start", args.start, allow_none=False, minimum=0)
    check_positive_int("--seed", args.seed, minimum=0)
    check_output_file("--out", args.out)
    if args.coder == "entropy" and (args.entropy_model is None or not args.entropy_model.is_file()):
        raise ValueError(f"--coder entropy needs --entropy-model FILE (cfisac entropy-fit), got {args.entropy_model}")

    ckpt = find_checkpoint(args.checkpoint, args.which)
    seed = args.seed
    if seed is None:
        seed = model_from_state(json.loads((ckpt / "state.json").read_text()))[3].seed + 1
    return {"checkpoint": str(args.checkpoint), "which": args.which, "seed": seed, "n": args.n, "start": args.start,
            "batch_size": args.batch_size, "coder": args.coder,
            "entropy_model": str(args.entropy_model) if args.entropy_model else None,
            "checksum": not args.no_checksum, "backend": args.backend, "device": args.device,
            "timeout_s": args.timeout, "threads": args.threads}


def run_dist_sense(args: argparse.Namespace) -> int:
    import os

    from ..distributed import run_worker, spawn_local
    from ..distributed.training import DistributedTrainingError

    options = _sense_options(args)
    if args.local:
        from ..distributed.sensing import load_side

        n_rx = load_side(args.checkpoint, "cpu", which=args.which)[2].n_rx
        workdir = (args.out.parent if args.out else Path(args.checkpoint)) / ".ranks-sense"
        reports = spawn_local(n_rx + 1, "sense", options, workdir, deadline_s=None,
                              straggler_s=args.timeout + STRAGGLER_MARGIN_S)
        code = _report(reports, "dist-sense")
        if code == 0:
            summary = reports[0]["result"]
            print(json.dumps(summary, indent=1))
            if args.out:
                args.out.write_text(json.dumps(summary, indent=1))
        return code
    try:
        res = run_worker("sense", options)
    except DistributedTrainingError as err:
        print(f"cfisac dist-sense (rank {os.environ.get('RANK', '?')}): error: {err}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        summary = res.summary()
        print(json.dumps(summary, indent=1))
        if args.out:
            args.out.write_text(json.dumps(summary, indent=1))
    return 0


def run_ddp_train(args: argparse.Namespace) -> int:
    from ..distributed import spawn_local

    _check_runtime(args)
    check_training_arguments(args, check_out=_writes_out(args))
    check_positive_int("--local", args.local)
    cfg, mcfg, tcfg = _configs(args)
    options = {"system": cfg.to_dict(), "model": mcfg.to_dict(), "train": tcfg.to_dict(), "out": str(args.out),
               "resume": args.resume, "progress": not args.no_progress, "plot": not args.no_plot,
               "backend": args.backend, "device": args.device, "timeout_s": args.timeout, "threads": args.threads}
    if args.local:
        reports = spawn_local(args.local, "ddp", options, args.out / ".ranks", deadline_s=None,
                              straggler_s=args.timeout + STRAGGLER_MARGIN_S)
        code = _report(reports, "ddp-train")
        if code == 0:
            print(f"finished; checkpoint {reports[0]['result']['checkpoint']}")
        return code
    return _worker("ddp", options, "ddp-train")


def run_entropy_fit(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import load_checkpoint
    from ..data import simulate_batch
    from ..entropy import fit_entropy_model
    from ..quantize import bits_per_index

    check_positive_int("--n", args.n, allow_none=False)
    check_positive_int("--eval-n", args.eval_n, allow_none=False)
    check_finite("--prior", args.prior, minimum=0.0, strict=True)
    check_output_file("--out", args.out)
    em = fit_entropy_model(args.checkpoint, n=args.n, context=args.context, prior=args.prior, which=args.which)
    em.save(args.out)
    ck = load_checkpoint(args.checkpoint, which=args.which)
    y = simulate_batch(ck.cfg, ck.tcfg.seed + 1, range(args.eval_n))["y"]
    nb_l = bits_per_index(em.num_codes) * em.length
    print(f"entropy model ({args.context}) of {args.n} training samples -> {args.out}")
    for m, ap in enumerate(ck.model.aps):
        idx = ap.indices(y[:, m])
        codes = em.encode(m, idx)
        if not torch.equal(em.decode(m, codes), idx):
            raise ValueError("entropy coding is not lossless on the held-out indices (bug)")
        measured = 8 * sum(len(c) for c in codes) / len(codes)
        ideal = float(em.code_length_bits(m, idx).mean())
        print(f"  AP {m}: {measured:.1f} bit/update measured (ideal {ideal:.1f}) vs Nb L = {nb_l} "
              f"({100 * measured / nb_l:.1f} %), {measured / em.length:.3f} bit/index vs log2 Nc = "
              f"{bits_per_index(em.num_codes)}")
    return 0
