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
- data: step r of epoch e uses the global batch ``cfisac.fit.epoch_batches(seed, e, n_train, B)[r]``; replica k
  simulates only its contiguous share of those sample indices, on its own device (disjoint indices).

Hence R replicas give the parameters of :func:`cfisac.train.train` with batch size B (to float rounding), and the
checkpoints are in its format (rank 0 writes them; resuming reads them on every rank: use a shared directory or
copy it). Options that draw from one replica's local data (``kmeans_init``, dead-codeword restarts) would give the
replicas different codebooks and are refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import RESUMABLE_CHANGES, TrainConfig, load_optimizer_state, optimizer_state_tensors
from ..config import SystemConfig
from ..data import simulate_batch
from ..fit import (
    NORMALISER_MAX_SAMPLES,
    DataSource,
    TrainResult,
    fit,
    model_summary_lines,
    open_run,
    split_psi,
    start_model,
)
from ..metrics import accuracy
from ..models import LabelNormaliser, ModelConfig, SplitModel, build_model
from ..train import estimation_loss, make_adam
from .training import check_in_process_only_options, validation_batches

__all__ = ["DataParallel", "codebook_allreduce_hook", "ddp_train", "shard"]


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


class DataParallel:
    """:func:`cfisac.fit.fit`'s strategy on one replica: its share of every global batch through the DDP-wrapped
    model (gradients averaged, EMA statistics summed per AP), the loss terms all-reduced; rank 0 writes."""

    checkpoint_at_start, checkpoint_every = True, 0

    def __init__(self, model: SplitModel, ddp: nn.Module, optimizers: dict[str, torch.optim.Optimizer | None],
                 normaliser: LabelNormaliser, cfg: SystemConfig, tcfg: TrainConfig, device: torch.device, *,
                 rank: int, world: int, group=None, plot: bool = True) -> None:
        self.model, self.ddp, self.optimizers, self.normaliser = model, ddp, optimizers, normaliser
        self.cfg, self.tcfg, self.device, self.rank, self.world, self.group = cfg, tcfg, device, rank, world, group
        self.is_writer, self.plot_each_checkpoint = rank == 0, plot
        self.extra = {"data_parallel": world}

    def start_epoch(self, epoch: int, todo: list[list[int]]) -> None:
        self.model.train()

    def end_epoch(self) -> None:
        pass

    def step(self, epoch: int, step: int, rows: list[int], global_step: int) -> dict[str, Any]:
        cfg, tcfg, device = self.cfg, self.tcfg, self.device
        mine = shard(rows, self.rank, self.world)
        b = simulate_batch(cfg, tcfg.seed, mine)
        y, x = b["y"].to(device), b["x"].to(device)
        target = self.normaliser.normalise(b["labels"].to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tcfg.amp):
            pred, commitment, perps, usages = self.ddp(y, x)
        mse = estimation_loss(pred.float(), target, cfg.n_targets, tcfg.loss)
        weight = len(mine) * self.world / len(rows)
        for opt in self.optimizers.values():
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        ((mse + commitment) * weight).backward()
        for opt in self.optimizers.values():
            if opt is not None:
                opt.step()
        # global-batch means of the loss terms (exact); perplexity / usage: mean of the replicas' local values
        k_local = len(mine)
        quant = tcfg.kind == "dvqvae"
        g = _allreduce([float(mse.detach()) * k_local, float(commitment.detach()) * k_local,
                        float(perps.mean()) if quant else 0.0, float(usages.mean()) if quant else 0.0],
                       device, self.group)
        r_mse, r_com = g[0] / len(rows), g[1] / len(rows)
        return {"loss": r_mse + r_com, "mse": r_mse, "commitment": r_com, "n": len(rows),
                "perplexity": g[2] / self.world if quant else float("nan"),
                "usage": g[3] / self.world if quant else float("nan"), "prediction": None}

    def validate(self) -> dict[str, float]:
        cfg, tcfg, device, model = self.cfg, self.tcfg, self.device, self.model
        sq, count, pe2, ve2, nerr = 0.0, 0, 0.0, 0.0, 0
        model.eval()
        with torch.no_grad():
            for rows in validation_batches(tcfg):
                mine = shard(rows, self.rank, self.world)
                if not mine:  # eval mode: the quantizers make no collective calls, shards may be empty
                    continue
                b = simulate_batch(cfg, tcfg.seed, [tcfg.n_train + p for p in mine])
                pred = model(b["y"].to(device), b["x"].to(device)).prediction.float()
                target = self.normaliser.normalise(b["labels"].to(device))
                sq += float(estimation_loss(pred, target, cfg.n_targets, tcfg.loss, reduction="sum"))
                count += target.numel()
                pos, vel = split_psi(self.normaliser.denormalise(pred), cfg.n_targets)
                acc = accuracy(pos, vel, b["positions"], b["velocities"])
                pe2 += float(acc.position_errors.pow(2).sum())
                ve2 += float(acc.velocity_errors.pow(2).sum())
                nerr += acc.position_errors.numel()
        model.train()
        sq, count, pe2, ve2, nerr = _allreduce([sq, count, pe2, ve2, nerr], device, self.group)
        return {"val_loss": sq / count, "val_position_rmse": math.sqrt(pe2 / nerr),
                "val_velocity_rmse": math.sqrt(ve2 / nerr)}

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return optimizer_state_tensors(self.optimizers) if self.is_writer else ({}, {})

    def after_checkpoint(self, path: Path) -> None:
        import torch.distributed as dist

        dist.barrier(group=self.group)

    def any_rank(self, flag: bool) -> bool:
        return _allreduce([float(flag)], self.device, self.group)[0] > 0


def ddp_train(
    cfg: SystemConfig, mcfg: ModelConfig, tcfg: TrainConfig, out: str | Path, *, resume: bool = False,
    progress: bool = True, log: Callable[[str], Any] | None = print, group=None, plot: bool = True,
) -> TrainResult:
    """Train on every rank of the (initialised) process group ``group`` (default: the world); rank 0 writes the
    checkpoints, every rank returns the same :class:`cfisac.fit.TrainResult`. ``tcfg.batch_size`` is the global
    batch; ``tcfg.device`` "cuda" means this rank's ``cuda:LOCAL_RANK``."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not dist.is_initialized():
        raise ValueError("ddp_train needs an initialised process group (launch with torchrun)")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    log = log if (log is not None and rank == 0) else (lambda s: None)
    out = Path(out)
    if tcfg.data is not None:
        raise ValueError("ddp_train simulates on the fly (each replica its own samples); --data is not supported")
    if tcfg.feature_cache_gb:
        raise ValueError("feature_cache_gb is an option of in-process training (cfisac.train.train); ddp_train "
                         "recomputes the front ends (set feature_cache_gb=0)")
    if mcfg.kmeans_init or mcfg.dead_code_threshold > 0:
        raise ValueError("kmeans_init and dead-codeword restarts draw from one replica's local batch and would give "
                         "the replicas different codebooks: not supported with data parallelism")
    if mcfg.decoder != "generic":
        raise ValueError(f"ddp_train trains with the estimation loss of Eq. (17): decoder={mcfg.decoder!r} (its own "
                         "loss, cfisac.train.make_cpu_trainer) is not supported with data parallelism")
    if tcfg.batch_size < world or 0 < tcfg.n_train % tcfg.batch_size < world:
        raise ValueError(f"every global batch needs at least one sample per replica: batch size {tcfg.batch_size} "
                         f"and last batch {tcfg.n_train % tcfg.batch_size or tcfg.batch_size} with {world} replicas")
    device = torch.device(tcfg.device)
    if device.type == "cuda" and device.index is None:
        import os

        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    check_in_process_only_options(tcfg)
    run = open_run(out, cfg, mcfg, tcfg, resume=resume, log=log, is_writer=rank == 0,
                   resumable=(*RESUMABLE_CHANGES, "device"),
                   labels=lambda: DataSource(cfg, tcfg.seed, tcfg.n_train).labels(NORMALISER_MAX_SAMPLES))
    model = build_model(tcfg.kind, cfg, mcfg, seed=tcfg.seed).to(device)
    for ap in model.aps:
        if ap.quantizer is not None:
            ap.quantizer.stats_hook = codebook_allreduce_hook(group)
    optimizers = {**{f"ap{m}": make_adam(ap, tcfg.lr) for m, ap in enumerate(model.aps)},
                  "cpu": make_adam(model.cpu_side, tcfg.lr)}
    start_model(model, run)
    if run.optim is not None:
        moved = {k: v.to(device) if not k.endswith(".step") else v for k, v in run.optim.items()}
        load_optimizer_state(optimizers, moved, run.state["optim"])
    for line in model_summary_lines(tcfg.kind, cfg, mcfg):
        log(line)
    log(f"data parallel: {world} replicas, global batch {tcfg.batch_size}, device {device}")
    import inspect

    # no buffer broadcast in forward (the codebooks are kept equal by the statistics hook, see the docstring)
    sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(
        DistributedDataParallel.__init__).parameters else {"broadcast_buffers": False})
    ddp = DistributedDataParallel(_Forward(model), device_ids=[device] if device.type == "cuda" else None,
                                  process_group=group, **sync)
    strategy = DataParallel(model, ddp, optimizers, run.normaliser, cfg, tcfg, device, rank=rank, world=world,
                            group=group, plot=plot)
    result = fit(strategy, run, cfg, mcfg, tcfg, progress=progress, log=log,
                 plot_title=f"{tcfg.kind}, lr {tcfg.lr:g} (distributed)")
    log(json.dumps({"replicas": world, "steps": run.global_step}))
    return result
