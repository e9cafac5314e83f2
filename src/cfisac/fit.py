"""The one training loop of the learned schemes (paper Algorithm 1): :func:`fit` and the run bookkeeping it owns.

Three ways to run Algorithm 1 share this loop and differ only in a small strategy object (:class:`Strategy`):
in-process (:func:`cfisac.train.train`: the ApTrainers and the CpuTrainer in one process), split processes
(:func:`cfisac.distributed.run_cpu_training`: the CPU side sends controls and receives payloads and states over
links) and data parallel (:func:`cfisac.distributed.ddp.ddp_train`). :func:`fit` owns what they have in common:
epochs of predefined batches (:func:`epoch_batches`, Section IV), step counting, the wall-clock budget and
``epochs``, validation once per epoch and the best validation loss, the checkpoint cadence (every epoch, every
``checkpoint_every`` steps, at the start of a fresh run, when the budget stops the run), resume
(:func:`open_run`: the checkpoint, the counters, the history and the steps so far), ``history.csv`` /
``steps.csv`` (written with every checkpoint, :mod:`cfisac.checkpoint`), the progress bar and the result.

A strategy provides: ``model`` (the :class:`cfisac.models.SplitModel` that holds every side's current state at a
checkpoint), ``start_epoch(epoch, todo)`` / ``step(epoch, step, rows, global_step)`` / ``end_epoch()`` (one step of
Algorithm 1 on the sample positions ``rows``; a dict: ``loss``, ``mse``, ``commitment`` (floats, means over the
batch), ``perplexity`` / ``usage`` (float, NaN without a quantizer), ``n`` (batch size), ``prediction`` (the
normalised psi_hat [B, 4Q] float32 or None), ``positions`` / ``velocities`` (the batch's truth [B, Q, 2] or None),
``validate()`` (``val_loss``, ``val_position_rmse``, ``val_velocity_rmse``), ``optimizer_state()`` (tensors and
param groups of every side, :func:`cfisac.checkpoint.optimizer_state_tensors`), ``after_checkpoint(path)``,
``any_rank(flag)`` (True when the flag is set on any rank) and the attributes ``is_writer``,
``checkpoint_at_start``, ``checkpoint_every``, ``plot_each_checkpoint`` and ``extra`` (``state.json``'s
``distributed`` entry or None).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .checkpoint import (
    RESUMABLE_CHANGES,
    CheckpointWriter,
    TrainConfig,
    checkpoint_name,
    cosine_lr_factor,
    model_from_state,
    read_checkpoint,
    read_steps,
)
from .config import SystemConfig
from .metrics import accuracy
from .models import LabelNormaliser, ModelConfig, SplitModel
from .scene import labels_from_scene, sample_scenes

__all__ = [
    "NORMALISER_MAX_SAMPLES", "DataSource", "RunState", "Strategy", "TrainResult", "epoch_batches", "fit",
    "model_summary_lines", "open_run", "plot_loss", "prefetch", "progress_bar", "split_psi", "start_model",
]

NORMALISER_MAX_SAMPLES = 20_000


# ---------------------------------------------------------------------------------------------------- data
def epoch_batches(seed: int, epoch: int, n: int, batch_size: int) -> list[list[int]]:
    """Dataset positions of every batch of ``epoch``: a permutation of 0..n-1 drawn from (seed, epoch), cut into
    batches (the last may be smaller). Both sides of Algorithm 1 compute it, so they draw the same samples."""
    state = np.random.SeedSequence([int(seed), 104729, int(epoch)]).generate_state(1, np.uint64)[0]
    g = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
    perm = torch.randperm(n, generator=g).tolist()
    return [perm[k: k + batch_size] for k in range(0, n, batch_size)]


class DataSource:
    """Samples of one dataset: simulated on the fly from ``(cfg, seed)`` with an index offset, or rows of an HDF5
    cache. ``batch(positions)`` -> dict(y, x, labels, positions, velocities). With ``power_dbm_pool``
    (:class:`TrainConfig`) dataset sample ``k`` (``k = offset + position``) is simulated at transmit power
    ``power_dbm_pool[k % len(power_dbm_pool)]``: the scene (targets, users, gains) is that of ``(cfg, seed, k)``,
    only the power differs, so a sample stays a function of (config, seed, index)."""

    def __init__(self, cfg: SystemConfig, seed: int, n: int, *, offset: int = 0, cache: str | None = None,
                 power_dbm_pool: Sequence[float] = ()) -> None:
        self.cfg, self.seed, self.n, self.offset, self.cache = cfg, seed, n, offset, None
        self.power_dbm_pool = tuple(float(p) for p in power_dbm_pool)
        if self.power_dbm_pool and cache is not None:
            raise ValueError("power_dbm_pool simulates its samples on the fly; it cannot read an HDF5 cache")
        if cache is not None:
            from .data import open_hdf5

            self.cache = open_hdf5(cache)
            if self.cache.cfg != cfg:
                raise ValueError(f"dataset {cache} was simulated with another system configuration")
            if n > len(self.cache):
                raise ValueError(f"dataset {cache} holds {len(self.cache)} samples, {n} requested")

    def labels(self, limit: int | None = None) -> torch.Tensor:
        """psi [k, 4Q] float64 of the first ``limit`` samples (all by default)."""
        k = self.n if limit is None else min(self.n, limit)
        if self.cache is not None:
            return torch.stack([r["labels"] for r in self.cache.__getitems__(list(range(k)))]).double()
        # float32 like the labels of simulate_batch and of the HDF5 cache: both sources give the same normaliser
        return labels_from_scene(sample_scenes(self.cfg, k, self.seed, start_index=self.offset)).float().double()

    def labels_batch(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        """The ``labels`` [B, 4Q] float32, ``positions`` / ``velocities`` [B, Q, 2] float64 of the samples at
        ``positions``, equal to :meth:`batch`'s, without simulating echoes or transmit signals (the scenes alone;
        the transmit power of ``power_dbm_pool`` does not change them)."""
        if self.cache is not None:
            b = self.batch(positions)
            return {k: b[k] for k in ("labels", "positions", "velocities")}
        idx = torch.tensor([self.offset + int(p) for p in positions], dtype=torch.int64)
        scenes = sample_scenes(self.cfg, len(idx), self.seed, indices=idx)
        return {"labels": labels_from_scene(scenes).float(), "positions": scenes.positions,
                "velocities": scenes.velocities}

    def batch(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        if self.cache is not None:
            rows = self.cache.__getitems__(list(positions))
            out = {k: torch.stack([r[k] for r in rows]) for k in ("y", "x", "labels")}
            Q = self.cfg.n_targets
            lab = out["labels"].double()
            out["positions"] = lab[:, : 2 * Q].reshape(-1, Q, 2)
            out["velocities"] = lab[:, 2 * Q:].reshape(-1, Q, 2)
            return out
        from .data import simulate_batch

        indices = [self.offset + p for p in positions]
        pool = self.power_dbm_pool
        if not pool:
            return simulate_batch(self.cfg, self.seed, indices)
        groups = [[j for j, k in enumerate(indices) if k % len(pool) == g] for g in range(len(pool))]
        parts = [(g, simulate_batch(self.cfg.replace(power_dbm=pool[g]), self.seed, [indices[j] for j in rows]))
                 for g, rows in enumerate(groups) if rows]
        order = torch.tensor([j for g, _ in parts for j in groups[g]])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return {key: torch.cat([part[key] for _, part in parts])[inverse] for key in parts[0][1]}


def prefetch(source: DataSource, batches: list[list[int]], workers: int) -> Iterator[dict[str, torch.Tensor]]:
    """The batches of ``source`` at ``batches`` in order; simulated by ``workers`` DataLoader processes if > 0."""
    if workers <= 0:
        for b in batches:
            yield source.batch(b)
        return

    class _Batches(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(batches)

        def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
            return source.batch(batches[k])

    loader = torch.utils.data.DataLoader(_Batches(), batch_size=None, shuffle=False, num_workers=workers)
    yield from loader


# ---------------------------------------------------------------------------------------------------- helpers
@dataclass
class TrainResult:
    """``history`` one dict per epoch (see ``history.csv``), ``checkpoint`` the last checkpoint directory,
    ``finished`` False when the ``minutes`` budget stopped the run early."""

    out: Path
    checkpoint: Path
    history: list[dict[str, Any]]
    finished: bool
    model: SplitModel
    normaliser: LabelNormaliser


def split_psi(psi: torch.Tensor, Q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """psi [B, 4Q] = [g; v] -> positions, velocities [B, Q, 2] (on the CPU, dtype kept)."""
    B = psi.shape[0]
    return psi[:, : 2 * Q].reshape(B, Q, 2).cpu(), psi[:, 2 * Q:].reshape(B, Q, 2).cpu()


def progress_bar(progress: bool, total: int, initial: int, desc: str):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def model_summary_lines(kind: str, cfg: SystemConfig, mcfg: ModelConfig) -> list[str]:
    from .fronthaul import format_bits, learned_bits
    from .models import summary_lines

    lines = summary_lines(kind, cfg, mcfg)
    bits = learned_bits(kind, cfg, mcfg)
    lines.append(f"  fronthaul per receive AP and update: {format_bits(bits)} ({bits:,} bit)")
    return lines


def plot_loss(path: Path, history: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]], *,
              title: str = "") -> None:
    """Training loss per step (light) and per epoch, validation loss per epoch (log scale; paper Fig. 11)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if steps:
        ax.plot([float(s["epoch"]) for s in steps], [float(s["loss"]) for s in steps], color="C0", alpha=0.25,
                lw=0.7, label="train (per step)")
    if history:
        ep = [float(h["epoch"]) for h in history]
        ax.plot(ep, [float(h["train_loss"]) for h in history], "o-", color="C0", label="train (epoch mean)")
        ax.plot(ep, [float(h["val_loss"]) for h in history], "s-", color="C1", label="validation (MSE only)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (normalised MSE + commitment)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def codebook_stat(values: Sequence[float], kind: str) -> float:
    """Mean over the APs of a per-AP codebook statistic (perplexity, usage); NaN for the schemes without one."""
    return float(np.nanmean(values)) if kind == "dvqvae" else float("nan")


# ---------------------------------------------------------------------------------------------------- run state
@dataclass
class RunState:
    """Where a run stands: the counters (epoch, step in the epoch, global step), the history and steps so far, the
    training time spent, the best validation loss, the last complete checkpoint and the label normaliser; for a
    resumed run also the checkpoint's weights, optimizer tensors and torch RNG state (consumed by
    :func:`start_model` and :func:`fit`)."""

    out: Path
    normaliser: LabelNormaliser
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    best: float | None = None
    checkpoint: Path | None = None
    state: dict[str, Any] | None = None
    weights: dict[str, torch.Tensor] | None = None
    optim: dict[str, torch.Tensor] | None = None
    rng: torch.Tensor | None = None

    @property
    def resumed(self) -> bool:
        return self.state is not None


def open_run(out: str | Path, cfg: SystemConfig, mcfg: ModelConfig, tcfg: TrainConfig, *, resume: bool,
             labels: Callable[[], torch.Tensor], log: Callable[[str], Any], is_writer: bool = True,
             resumable: Sequence[str] = RESUMABLE_CHANGES) -> RunState:
    """The state a run starts from. With ``resume``: the checkpoint of ``out/latest.json`` (``best.json``'s when
    that one is corrupted), verified; the system and model configs must equal the checkpoint's and the training
    options may differ only in ``resumable`` (``ValueError`` naming them). Without: ``out`` must not hold a run
    (checked by the writing rank), the normaliser is fitted on ``labels()`` [n, 4Q]."""
    out = Path(out)
    if not resume:
        if is_writer and (out / "latest.json").exists():
            raise ValueError(f"{out} already holds a run; pass resume=True (--resume) or choose another output")
        return RunState(out, LabelNormaliser.fit(labels()))
    if not (out / "latest.json").is_file():
        raise ValueError(f"--resume: {out} holds no checkpoint to resume (no latest.json)")
    ckpt, state, weights, optim = read_checkpoint(out, log)
    _, cfg0, mcfg0, tcfg0, normaliser = model_from_state(state)
    if cfg0 != cfg or mcfg0 != mcfg:
        raise ValueError("--resume: the system or model configuration differs from the checkpoint's")
    diff = [k for k in tcfg.to_dict() if k not in resumable and getattr(tcfg, k) != getattr(tcfg0, k)]
    if diff:
        raise ValueError(f"--resume: training options {diff} differ from the checkpoint's "
                         f"(only {list(resumable)} may change)")
    rng = optim.pop("rng.torch")
    run = RunState(out, normaliser, epoch=state["epoch"], step=state["step"], global_step=state["global_step"],
                   history=state["history"], steps=read_steps(out / "steps.csv", state["global_step"]),
                   elapsed=state["elapsed_s"], best=state.get("best_val_loss"), checkpoint=ckpt, state=state,
                   weights=weights, optim=optim, rng=rng)
    log(f"resuming {out} at epoch {run.epoch} step {run.step} (global step {run.global_step})")
    return run


def start_model(model: SplitModel, run: RunState) -> None:
    """The resumed weights into ``model``; for a fresh run with the geometry decoder, its output range (a saved
    buffer) set to the training normaliser's."""
    if run.weights is not None:
        model.load_state_dict(run.weights)
    elif model.mcfg.decoder == "geometry":
        model.cpu_side.decoder.set_label_range(run.normaliser.minimum, run.normaliser.maximum)


# ---------------------------------------------------------------------------------------------------- the loop
class Strategy(Protocol):
    """How the steps of Algorithm 1 run (module docstring)."""

    model: SplitModel
    is_writer: bool
    checkpoint_at_start: bool
    checkpoint_every: int
    plot_each_checkpoint: bool
    extra: dict[str, Any] | None

    def start_epoch(self, epoch: int, todo: list[list[int]]) -> None: ...

    def step(self, epoch: int, step: int, rows: list[int], global_step: int) -> dict[str, Any]: ...

    def end_epoch(self) -> None: ...

    def validate(self) -> dict[str, float]: ...

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...

    def after_checkpoint(self, path: Path) -> None: ...

    def any_rank(self, flag: bool) -> bool: ...


def fit(strategy: Strategy, run: RunState, cfg: SystemConfig, mcfg: ModelConfig, tcfg: TrainConfig, *,
        progress: bool = True, log: Callable[[str], Any] = print, plot_title: str = "") -> TrainResult:
    """Run ``tcfg.epochs`` epochs (or until the ``tcfg.minutes`` budget) of ``strategy`` from ``run`` (updated in
    place); checkpoints in ``run.out``. ``plot_title`` titles ``loss.png`` when the strategy plots at every
    checkpoint."""
    out, model, kind = run.out, strategy.model, tcfg.kind
    if run.rng is not None:
        torch.set_rng_state(run.rng)
    if strategy.is_writer:
        out.mkdir(parents=True, exist_ok=True)
    writer = CheckpointWriter(out, kind=kind, cfg=cfg, mcfg=mcfg, tcfg=tcfg, normaliser=run.normaliser,
                              extra=strategy.extra, best=run.best)

    def save(finished: bool) -> Path:
        tensors, groups = strategy.optimizer_state()
        path = out / checkpoint_name(run.epoch, run.step)
        if strategy.is_writer:
            path = writer.write(model, tensors, groups, epoch=run.epoch, step=run.step, global_step=run.global_step,
                                elapsed=run.elapsed, history=run.history, steps=run.steps, finished=finished)
            run.best = writer.best
            if strategy.plot_each_checkpoint:
                try:
                    plot_loss(out / "loss.png", run.history, run.steps, title=plot_title)
                except Exception as err:  # plotting must never lose a checkpoint
                    log(f"warning: loss plot failed: {err}")
        run.checkpoint = path
        strategy.after_checkpoint(path)
        return path

    if strategy.checkpoint_at_start and not run.resumed:
        save(finished=False)
    elapsed0, t_start = run.elapsed, time.monotonic()
    budget = None if tcfg.minutes is None else tcfg.minutes * 60.0
    stopped = False
    while run.epoch < tcfg.epochs and not stopped:
        if budget is not None and strategy.any_rank(run.elapsed >= budget):  # e.g. resuming a spent budget
            stopped = True
            break
        batches = epoch_batches(tcfg.seed, run.epoch, tcfg.n_train, tcfg.batch_size)
        sums = {"loss": 0.0, "mse": 0.0, "commitment": 0.0, "n": 0, "perplexity": 0.0, "usage": 0.0}
        bar = progress_bar(progress and strategy.is_writer, len(batches), run.step,
                           f"epoch {run.epoch + 1}/{tcfg.epochs}")
        strategy.start_epoch(run.epoch, batches[run.step:])
        try:
            while run.step < len(batches):
                if tcfg.lr_schedule == "cosine":
                    strategy.set_lr_factor(cosine_lr_factor(elapsed0 + time.monotonic() - t_start, budget,
                                                            run.global_step, tcfg.epochs * len(batches)))
                r = strategy.step(run.epoch, run.step, batches[run.step], run.global_step)
                run.step += 1
                run.global_step += 1
                k = r["n"]
                for key in ("loss", "mse", "commitment", "perplexity", "usage"):
                    sums[key] += r[key] * k
                sums["n"] += k
                run.steps.append({"step": run.global_step, "epoch": run.epoch + run.step / len(batches),
                                  "loss": r["loss"], "mse": r["mse"], "commitment": r["commitment"],
                                  "perplexity": r["perplexity"]})
                run.elapsed = elapsed0 + time.monotonic() - t_start
                if bar is not None:
                    bar.set_postfix(_postfix(r, run.normaliser, cfg.n_targets, kind), refresh=False)
                    bar.update(1)
                if budget is not None and strategy.any_rank(run.elapsed >= budget):
                    stopped = run.step < len(batches) or run.epoch + 1 < tcfg.epochs
                    break
                if strategy.checkpoint_every and run.global_step % strategy.checkpoint_every == 0 and (
                        run.step < len(batches)):
                    save(finished=False)
        finally:
            strategy.end_epoch()
            if bar is not None:
                bar.close()
        n = max(1, sums["n"])
        row = {"epoch": run.epoch + run.step / len(batches), "steps": run.global_step,
               "samples": run.epoch * tcfg.n_train + sum(len(bb) for bb in batches[:run.step]),
               "train_loss": sums["loss"] / n, "train_mse": sums["mse"] / n,
               "train_commitment": sums["commitment"] / n, "perplexity": sums["perplexity"] / n,
               "usage": sums["usage"] / n}
        row.update(strategy.validate())
        row["elapsed_s"] = run.elapsed
        if run.step >= len(batches):
            run.epoch, run.step = run.epoch + 1, 0
        if sums["n"]:
            run.history.append(row)
            log(f"epoch {row['epoch']:.2f}: train loss {row['train_loss']:.5f}, val loss {row['val_loss']:.5f}, "
                f"val RMSE {row['val_position_rmse']:.2f} m / {row['val_velocity_rmse']:.2f} m/s"
                + (f", perplexity {row['perplexity']:.1f}" if kind == "dvqvae" else "")
                + f" ({run.elapsed:.0f} s)")
        save(finished=run.epoch >= tcfg.epochs)
    if run.checkpoint is None:
        save(finished=True)
    model.sync_codebooks()
    model.eval()
    return TrainResult(out, run.checkpoint, run.history, not stopped, model, run.normaliser)


def _postfix(r: dict[str, Any], normaliser: LabelNormaliser, Q: int, kind: str) -> dict[str, str]:
    """The progress bar's postfix of one step: the loss, and the batch RMSEs when the strategy returns them."""
    post = {"loss": f"{r['loss']:.4f}"}
    if r.get("prediction") is None:
        return post
    pos, vel = split_psi(normaliser.denormalise(r["prediction"]), Q)
    acc = accuracy(pos, vel, r["positions"], r["velocities"])
    post.update(rmse_pos=f"{acc.position_rmse:.1f}m", rmse_vel=f"{acc.velocity_rmse:.1f}m/s")
    if kind == "dvqvae":
        post["perplexity"] = f"{r['perplexity']:.1f}"
    return post

