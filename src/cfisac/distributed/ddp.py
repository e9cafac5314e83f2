"""Data-parallel training of the whole D-VQVAE (every AP side and the CPU side in each replica) with
``DistributedDataParallel`` under ``torchrun``: R replicas (GPUs / nodes), one process each.

What is averaged and what is not:

- gradients: DDP all-reduces (means) them across replicas. Replica k holds n_k samples of the global batch of N
  and scales its loss by ``n_k R / N``, so the mean is the gradient of the global-batch loss whatever the split.
- EMA codebook statistics (Eq. 18-19): the quantizer of AP m calls ``stats_hook(counts, sums)`` before its EMA
  update; the hook all-reduces (sums) the batch counts N_j and vector sums of *that AP's* quantizer across the
  replicas, so every replica applies the update of the global batch and AP m's codebook stays identical on every
  replica. The APs are never mixed: replica k's AP m meets only the other replicas' AP m (each replica runs the
  hooks in the same order m = 0..M-1). DDP's own buffer broadcast (``broadcast_buffers``) is off: it would
  overwrite codebooks from rank 0 every step and hide a divergence instead of preventing it.
- data: step r of epoch e uses the global batch ``cfisac.train.epoch_batches(seed, e, n_train, B)[r]``; replica k
  simulates only its contiguous share of those sample indices, on its own device (disjoint indices).

Hence R replicas give the parameters of :func:`cfisac.train.train` with batch size B (to float rounding), and the
checkpoints are in its format (rank 0 writes them; resuming reads them on every rank: use a shared directory or
copy it). Options that draw from one replica's local data (``kmeans_init``, dead-codeword restarts) would give the
replicas different codebooks and are refused.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import SystemConfig
from ..data import simulate_batch
from ..metrics import accuracy
from ..models import LabelNormaliser, ModelConfig, SplitModel, build_model
from ..train import (
    NORMALISER_MAX_SAMPLES,
    RESUMABLE_CHANGES,
    DataSource,
    TrainConfig,
    TrainResult,
    epoch_batches,
    estimation_loss,
)
from .checkpoint import CheckpointWriter, read_checkpoint
from .training import validation_batches

__all__ = ["codebook_allreduce_hook", "ddp_train", "shard"]


def shard(rows: list[int] | range, rank: int, world: int) -> list[int]:
    """Replica ``rank``'s contiguous share of a global batch (sizes differ by at most one)."""
    rows = list(rows)
    n = len(rows)
    lo, hi = rank * n // world, (rank + 1) * n // world
    return rows[lo:hi]


def codebook_allreduce_hook(group=None) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``stats_hook`` summing one quantizer's batch statistics (counts [Nc], sums [Nc, D]) over ``group``."""
    import torch.distributed as dist

    def hook(counts: torch.Tensor, sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = torch.cat([counts.reshape(-1, 1), sums], dim=1).contiguous()
        dist.all_reduce(both, op=dist.ReduceOp.SUM, group=group)
        return both[:, 0].contiguous(), both[:, 1:].contiguous()

    return hook


class _Forward(nn.Module):
    """DDP-wrappable forward of a :class:`SplitModel`: prediction [B, 4Q], commitment summed over APs, and the
    local batch's codebook perplexity and usage per AP [M] (NaN without a quantizer)."""

    def __init__(self, model: SplitModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(y, x)
        perp = torch.tensor([o.perplexity for o in out.aps], dtype=torch.float64)
        usage = torch.tensor([o.usage for o in out.aps], dtype=torch.float64)
        return out.prediction, out.commitment, perp, usage


def _allreduce(values: list[float], device: torch.device, group=None) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, group=group)
    return t.tolist()


def ddp_train(
    cfg: SystemConfig, mcfg: ModelConfig, tcfg: TrainConfig, out: str | Path, *, resume: bool = False,
    progress: bool = True, log: Callable[[str], Any] | None = print, group=None, plot: bool = True,
) -> TrainResult:
    """Train on every rank of the (initialised) process group ``group`` (default: the world); rank 0 writes the
    checkpoints, every rank returns the same :class:`cfisac.train.TrainResult`. ``tcfg.batch_size`` is the global
    batch; ``tcfg.device`` "cuda" means this rank's ``cuda:LOCAL_RANK``."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ..train import (
        load_optimizer_state,
        make_adam,
        model_from_state,
        model_summary_lines,
        optimizer_state_tensors,
        progress_bar,
        read_steps,
        split_psi,
    )

    if not dist.is_initialized():
        raise ValueError("ddp_train needs an initialised process group (launch with torchrun)")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    log = log if (log is not None and rank == 0) else (lambda s: None)
    out = Path(out)
    if tcfg.data is not None:
        raise ValueError("ddp_train simulates on the fly (each replica its own samples); --data is not supported")
    if mcfg.kmeans_init or mcfg.dead_code_threshold > 0:
        raise ValueError("kmeans_init and dead-codeword restarts draw from one replica's local batch and would give "
                         "the replicas different codebooks: not supported with data parallelism")
    if tcfg.batch_size < world or 0 < tcfg.n_train % tcfg.batch_size < world:
        raise ValueError(f"every global batch needs at least one sample per replica: batch size {tcfg.batch_size} "
                         f"and last batch {tcfg.n_train % tcfg.batch_size or tcfg.batch_size} with {world} replicas")
    device = torch.device(tcfg.device)
    if device.type == "cuda" and device.index is None:
        import os

        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if resume:
        if not (out / "latest.json").is_file():
            raise ValueError(f"--resume: {out} holds no checkpoint to resume (no latest.json)")
        ckpt, state, weights, opt_tensors = read_checkpoint(out)
        kind0, cfg0, mcfg0, tcfg0, normaliser = model_from_state(state)
        if cfg0 != cfg or mcfg0 != mcfg:
            raise ValueError("--resume: the system or model configuration differs from the checkpoint's")
        diff = [k for k in tcfg.to_dict()
                if k not in (*RESUMABLE_CHANGES, "device") and getattr(tcfg, k) != getattr(tcfg0, k)]
        if diff:
            raise ValueError(f"--resume: training options {diff} differ from the checkpoint's")
    elif rank == 0 and (out / "latest.json").exists():
        raise ValueError(f"{out} already holds a run; pass resume=True (--resume) or choose another output")

    model = build_model(tcfg.kind, cfg, mcfg, seed=tcfg.seed).to(device)
    for ap in model.aps:
        if ap.quantizer is not None:
            ap.quantizer.stats_hook = codebook_allreduce_hook(group)
    optimizers = {**{f"ap{m}": make_adam(ap, tcfg.lr) for m, ap in enumerate(model.aps)},
                  "cpu": make_adam(model.cpu_side, tcfg.lr)}
    if resume:
        model.load_state_dict(weights)
        torch.set_rng_state(opt_tensors.pop("rng.torch"))
        moved = {k: v.to(device) if not k.endswith(".step") else v for k, v in opt_tensors.items()}
        load_optimizer_state(optimizers, moved, state["optim"])
        epoch, step_in_epoch, global_step = state["epoch"], state["step"], state["global_step"]
        history, elapsed0, best = state["history"], state["elapsed_s"], state.get("best_val_loss")
        steps = read_steps(out / "steps.csv", global_step)
        last_ckpt: Path | None = ckpt
    else:
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        normaliser = LabelNormaliser.fit(DataSource(cfg, tcfg.seed, tcfg.n_train).labels(NORMALISER_MAX_SAMPLES))
        epoch, step_in_epoch, global_step, history, elapsed0, best, steps = 0, 0, 0, [], 0.0, None, []
        last_ckpt = None
    for line in model_summary_lines(tcfg.kind, cfg, mcfg):
        log(line)
    log(f"data parallel: {world} replicas, global batch {tcfg.batch_size}, device {device}")
    import inspect

    # no buffer broadcast in forward (the codebooks are kept equal by the statistics hook, see the docstring)
    sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(
        DistributedDataParallel.__init__).parameters else {"broadcast_buffers": False})
    ddp = DistributedDataParallel(_Forward(model), device_ids=[device] if device.type == "cuda" else None,
                                  process_group=group, **sync)
    writer = CheckpointWriter(out, kind=tcfg.kind, cfg=cfg, mcfg=mcfg, tcfg=tcfg, normaliser=normaliser,
                              extra={"data_parallel": world}, plot=plot, best=best, log=log)

    def save(finished: bool) -> Path:
        path = out / f"ckpt-e{epoch:04d}-s{step_in_epoch:06d}"
        if rank == 0:
            tensors, groups = optimizer_state_tensors(optimizers)
            path = writer.write(model, tensors, groups, epoch=epoch, step=step_in_epoch, global_step=global_step,
                                elapsed=elapsed, history=history, steps=steps, finished=finished)
        dist.barrier(group=group)
        return path

    def validate() -> dict[str, float]:
        if tcfg.n_val == 0:
            return {"val_loss": float("nan"), "val_position_rmse": float("nan"), "val_velocity_rmse": float("nan")}
        sq, count, pe2, ve2, nerr = 0.0, 0, 0.0, 0.0, 0
        model.eval()
        with torch.no_grad():
            for rows in validation_batches(tcfg):
                mine = shard(rows, rank, world)
                if not mine:  # eval mode: the quantizers make no collective calls, shards may be empty
                    continue
                b = simulate_batch(cfg, tcfg.seed, [tcfg.n_train + p for p in mine])
                pred = model(b["y"].to(device), b["x"].to(device)).prediction.float()
                target = normaliser.normalise(b["labels"].to(device))
                sq += float(estimation_loss(pred, target, cfg.n_targets, tcfg.loss, reduction="sum"))
                count += target.numel()
                pos, vel = split_psi(normaliser.denormalise(pred), cfg.n_targets)
                acc = accuracy(pos, vel, b["positions"], b["velocities"])
                pe2 += float(acc.position_errors.pow(2).sum())
                ve2 += float(acc.velocity_errors.pow(2).sum())
                nerr += acc.position_errors.numel()
        model.train()
        sq, count, pe2, ve2, nerr = _allreduce([sq, count, pe2, ve2, nerr], device, group)
        return {"val_loss": sq / count, "val_position_rmse": math.sqrt(pe2 / nerr),
                "val_velocity_rmse": math.sqrt(ve2 / nerr)}

    elapsed = elapsed0
    stopped = False
    if not resume:
        last_ckpt = save(finished=False)
    t_start = time.monotonic()
    budget = None if tcfg.minutes is None else tcfg.minutes * 60.0
    model.train()
    while epoch < tcfg.epochs and not stopped:
        if budget is not None and elapsed >= budget:  # e.g. resuming a run whose budget is spent
            stopped = True
            break
        batches = epoch_batches(tcfg.seed, epoch, tcfg.n_train, tcfg.batch_size)
        sums = {"loss": 0.0, "mse": 0.0, "commitment": 0.0, "n": 0, "perplexity": 0.0, "usage": 0.0}
        bar = progress_bar(progress and rank == 0, len(batches), step_in_epoch, f"epoch {epoch + 1}/{tcfg.epochs}")
        while step_in_epoch < len(batches):
            rows = batches[step_in_epoch]
            mine = shard(rows, rank, world)
            b = simulate_batch(cfg, tcfg.seed, mine)
            y, x = b["y"].to(device), b["x"].to(device)
            target = normaliser.normalise(b["labels"].to(device))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tcfg.amp):
                pred, commitment, perps, usages = ddp(y, x)
            mse = estimation_loss(pred.float(), target, cfg.n_targets, tcfg.loss)
            weight = len(mine) * world / len(rows)
            for opt in optimizers.values():
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
            ((mse + commitment) * weight).backward()
            for opt in optimizers.values():
                if opt is not None:
                    opt.step()
            # global-batch means of the loss terms (exact); perplexity / usage: mean of the replicas' local values
            k_local = len(mine)
            quant = tcfg.kind == "dvqvae"
            g = _allreduce([float(mse.detach()) * k_local, float(commitment.detach()) * k_local,
                            float(perps.mean()) if quant else 0.0, float(usages.mean()) if quant else 0.0],
                           device, group)
            r_mse, r_com = g[0] / len(rows), g[1] / len(rows)
            perp = g[2] / world if quant else float("nan")
            usage = g[3] / world if quant else float("nan")
            step_in_epoch += 1
            global_step += 1
            k = len(rows)
            for key, v in (("loss", r_mse + r_com), ("mse", r_mse), ("commitment", r_com)):
                sums[key] += v * k
            sums["perplexity"] += perp * k
            sums["usage"] += usage * k
            sums["n"] += k
            steps.append({"step": global_step, "epoch": epoch + step_in_epoch / len(batches), "loss": r_mse + r_com,
                          "mse": r_mse, "commitment": r_com, "perplexity": perp})
            elapsed = elapsed0 + time.monotonic() - t_start
            if bar is not None:
                bar.set_postfix({"loss": f"{r_mse + r_com:.4f}"}, refresh=False)
                bar.update(1)
            stop_now = budget is not None and _allreduce([float(elapsed >= budget)], device, group)[0] > 0
            if stop_now:
                stopped = step_in_epoch < len(batches) or epoch + 1 < tcfg.epochs
                break
        if bar is not None:
            bar.close()
        n = max(1, sums["n"])
        row = {"epoch": epoch + step_in_epoch / len(batches), "steps": global_step,
               "samples": epoch * tcfg.n_train + sum(len(bb) for bb in batches[:step_in_epoch]),
               "train_loss": sums["loss"] / n, "train_mse": sums["mse"] / n,
               "train_commitment": sums["commitment"] / n, "perplexity": sums["perplexity"] / n,
               "usage": sums["usage"] / n}
        row.update(validate())
        row["elapsed_s"] = elapsed
        if step_in_epoch >= len(batches):
            epoch, step_in_epoch = epoch + 1, 0
        if sums["n"]:
            history.append(row)
            log(f"epoch {row['epoch']:.2f}: train loss {row['train_loss']:.5f}, val loss {row['val_loss']:.5f}, "
                f"val RMSE {row['val_position_rmse']:.2f} m / {row['val_velocity_rmse']:.2f} m/s ({elapsed:.0f} s)")
        last_ckpt = save(finished=epoch >= tcfg.epochs)
    model.sync_codebooks()
    model.eval()
    if rank == 0:
        log(json.dumps({"replicas": world, "steps": global_step}))
    return TrainResult(out, last_ckpt, history, not stopped, model, normaliser)
