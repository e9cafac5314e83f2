"""Collaborative training of the learned schemes (paper Algorithm 1, Section IV) with resumable checkpoints.

The AP side and the CPU side are separate objects that exchange only what Algorithm 1 says:

- forward, AP m -> CPU (line 9): the payload [B, D, d1, d2, d3] float32 (the quantized features for the D-VQVAE,
  footnote 4: the codebook is updated locally and not shared during training; the continuous features for the
  D-VAE; the normalised echoes for the CNN centralized scheme);
- backward, CPU -> AP m (line 14): the gradient of the loss w.r.t. that payload, same shape and dtype, which the AP
  copies to its encoder output (straight-through estimator) and back-propagates together with its local commitment
  loss (Eq. 21) before updating its encoder with its own Adam optimizer (line 16).

Both sides draw the same batch because the sampling is predefined (Section IV): the batch indices of step r of
epoch e are a pure function of ``(seed, e)`` (:func:`epoch_batches`); the AP simulates / reads only Y_m of those
samples, the CPU only X and the labels. :class:`ApTrainer` and :class:`CpuTrainer` are written so that a process per
side (one rank) runs the same code with ``torch.distributed`` send / recv in place of the in-process hand-over of
:func:`train_step`, and ends with the same parameters.

Loss: ``L_est`` = mean squared error of the min-max normalised labels (Eq. 17, a mean instead of a sum) plus the
commitment loss of every AP (Eq. 21, omega applied in the quantizer); codebooks by EMA (Eq. 18-20). Adam, learning
rate 1e-4 by default (paper Section V). With ``ModelConfig(decoder="geometry")`` the CPU trains with the geometry
decoder's heat-map loss (:class:`cfisac.models.geometry_decoder.GeometryCpuTrainer`, :func:`make_cpu_trainer`; the
``mse`` columns then hold that loss) and the decoder's label range is set to the training normaliser's.

The epochs, budget, validation, checkpoints (:mod:`cfisac.checkpoint`: ``out/ckpt-eEEEE-sSSSSSS/``, ``latest.json``,
``best.json``, ``history.csv``, ``steps.csv``) and resume are :func:`cfisac.fit.fit`'s; this module supplies its
in-process strategy (:class:`InProcess`). ``resume=True`` continues from ``latest.json`` (or, when that checkpoint is
corrupted, from ``best.json``'s) and ends with the same parameters as an uninterrupted run with the same seed (data
order, initialisation and every random draw are functions of the seed, epoch and step). ``loss.png`` (paper
Fig. 11) is drawn when the call returns (finished or stopped by its time budget).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import (
    LOSSES,
    RESUMABLE_CHANGES,
    Checkpoint,
    TrainConfig,
    find_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    optimizer_state_tensors,
)
from .config import SystemConfig
from .fit import (
    NORMALISER_MAX_SAMPLES,
    DataSource,
    TrainResult,
    codebook_stat,
    epoch_batches,
    fit,
    model_summary_lines,
    open_run,
    plot_loss,
    prefetch,
    split_psi,
    start_model,
)
from .metrics import accuracy
from .models import ApSide, CpuSide, LabelNormaliser, ModelConfig, SplitModel, build_model

__all__ = [
    "NORMALISER_MAX_SAMPLES", "RESUMABLE_CHANGES", "ApTrainer", "Checkpoint", "CpuTrainer", "DataSource",
    "FeatureCache",
    "InProcess", "TrainConfig", "TrainResult", "epoch_batches", "estimation_loss", "find_checkpoint",
    "load_checkpoint", "make_cpu_trainer", "predict", "split_psi", "train", "train_step", "validate",
]


# ---------------------------------------------------------------------------------------------------- loss
_MAX_PERMUTATION_TARGETS = 6  # Q! permutations enumerated up to Q = 6 (720); the Hungarian algorithm beyond

def _per_target(psi: torch.Tensor, Q: int) -> torch.Tensor:
    """psi [B, 4Q] = [g_1x, g_1y, .., g_Qx, g_Qy, v_1x, .., v_Qy] -> [B, Q, 4] rows (g_qx, g_qy, v_qx, v_qy)."""
    return psi.reshape(psi.shape[0], 2, Q, 2).transpose(1, 2).reshape(psi.shape[0], Q, 4)


def target_assignment(pred: torch.Tensor, target: torch.Tensor, Q: int) -> torch.Tensor:
    """The output slot of each true target that minimises the summed squared error of (normalised) position and
    velocity: [B, Q] int64, ``perm[b, q]`` the slot assigned to target q. Exhaustive over the Q! permutations
    (vectorised) up to Q = 6, the Hungarian algorithm (scipy) per sample beyond."""
    p, t = _per_target(pred.detach(), Q), _per_target(target.detach(), Q)
    cost = (p[:, :, None, :] - t[:, None, :, :]).pow(2).sum(-1)  # [B, slot, target]
    if Q <= _MAX_PERMUTATION_TARGETS:
        perms = torch.tensor(list(itertools.permutations(range(Q))), device=cost.device)  # [P, Q]: target -> slot
        total = cost.transpose(1, 2)[:, torch.arange(Q, device=cost.device), perms].sum(-1)  # [B, P]
        return perms[total.argmin(1)]
    from scipy.optimize import linear_sum_assignment

    c = cost.transpose(1, 2).double().cpu().numpy()  # [B, target, slot]
    return torch.from_numpy(np.stack([linear_sum_assignment(cb)[1] for cb in c])).to(pred.device)


def estimation_loss(pred: torch.Tensor, target: torch.Tensor, Q: int, kind: str = "canonical",
                    reduction: str = "mean") -> torch.Tensor:
    """L_est of Eq. (17) on min-max normalised psi, ``pred`` / ``target`` [B, 4Q] float32.

    ``"canonical"`` (the paper): squared error with the targets in the canonical order of :mod:`cfisac.scene`
    (ascending x). ``"assignment"``: the targets are unordered, so each scene's targets are first assigned to the
    output slots that fit them best (:func:`target_assignment`, on position and velocity), then the squared error is
    taken; the order-by-x labels jump when two targets' x cross, which a canonical-order regression can only average
    over. ``reduction`` "mean" (over batch and 4Q, as F.mse_loss) or "sum"."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; choose one of {list(LOSSES)}")
    if kind == "assignment" and Q > 1:
        perm = target_assignment(pred, target, Q)  # [B, Q]
        slots = _per_target(pred, Q).gather(1, perm[..., None].expand(-1, -1, 4))  # [B, Q(target), 4]
        t = _per_target(target, Q)
        sq = (slots - t).pow(2)
        return sq.mean() if reduction == "mean" else sq.sum()
    return F.mse_loss(pred, target, reduction=reduction)



# ---------------------------------------------------------------------------------------------------- Algorithm 1
def make_adam(module: nn.Module, lr: float) -> torch.optim.Adam | None:
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr) if params else None


class ApTrainer:
    """Receive AP m's part of Algorithm 1: local encoding, quantization and EMA codebook update (lines 7-10), then
    the encoder update from the gradient the CPU returns (line 16). Holds its own Adam optimizer."""

    def __init__(self, ap: ApSide, *, lr: float, amp: bool = False) -> None:
        self.ap, self.amp = ap, amp
        self.optimizer = make_adam(ap, lr)
        self._out = None

    @property
    def last_output(self):
        """The :class:`cfisac.models.ApOutput` of the last ``forward`` (indices, commitment, perplexity, usage),
        until ``backward`` consumes it; None otherwise."""
        return self._out

    def forward(self, y_m: torch.Tensor | None, x: torch.Tensor | None = None,
                features: torch.Tensor | None = None) -> torch.Tensor:
        """Lines 7-10: the payload to send to the CPU (detached float32 [B, D, d1, d2, d3]). ``features``: the
        AP front end's output for these samples when already computed (:class:`FeatureCache`; y_m may then be
        None)."""
        if y_m is None and features is None:
            raise ValueError("ApTrainer.forward needs the echoes y_m or the front end's features")
        self.ap.train()
        with torch.autocast((features if y_m is None else y_m).device.type, dtype=torch.bfloat16, enabled=self.amp):
            self._out = self.ap(y_m, x if self.ap.needs_x else None, features)
        return self._out.payload.detach()

    def backward(self, grad: torch.Tensor | None) -> dict[str, float]:
        """Line 16: copy the CPU's gradient to the encoder output (straight through), add the commitment loss,
        update the encoder. Returns the AP's local statistics (commitment, perplexity, usage)."""
        out, self._out = self._out, None
        if out is None:
            raise ValueError("backward called before forward")
        stats = {"commitment": float(out.commitment.detach()), "perplexity": out.perplexity, "usage": out.usage}
        if self.optimizer is None:
            return stats
        if grad is None or tuple(grad.shape) != tuple(out.payload.shape):
            raise ValueError(f"gradient for AP {self.ap.index} must have shape {tuple(out.payload.shape)}, got "
                             f"{None if grad is None else tuple(grad.shape)}")
        self.optimizer.zero_grad(set_to_none=True)
        tensors, grads = [out.payload], [grad.to(out.payload.dtype)]
        if out.commitment.requires_grad:
            tensors.append(out.commitment)
            grads.append(torch.ones_like(out.commitment))
        torch.autograd.backward(tensors, grads)
        self.optimizer.step()
        return stats


class CpuTrainer:
    """The CPU's part of Algorithm 1: decoding (line 12), decoder update (line 13) and the gradients w.r.t. the
    received payloads (line 14). Holds its own Adam optimizer."""

    def __init__(self, cpu: CpuSide, *, lr: float, amp: bool = False, loss: str = "canonical") -> None:
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {list(LOSSES)}")
        self.cpu, self.amp, self.loss = cpu, amp, loss
        self.optimizer = make_adam(cpu, lr)

    def step(self, payloads: Sequence[torch.Tensor], x: torch.Tensor, target: torch.Tensor,
             *, need_grads: bool = True) -> tuple[float, list[torch.Tensor | None], torch.Tensor]:
        """Returns (estimation loss, gradient per payload, prediction [B, 4Q] detached)."""
        self.cpu.train()
        inputs = [p.detach().requires_grad_(need_grads) for p in payloads]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            pred = self.cpu(inputs, x)
        loss = estimation_loss(pred.float(), target, self.cpu.n_targets, self.loss)  # Eq. (17), mean
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach()), [i.grad if need_grads else None for i in inputs], pred.detach().float()


def make_cpu_trainer(cpu: CpuSide, mcfg: ModelConfig, tcfg: TrainConfig):
    """The CPU trainer of ``mcfg.decoder``: :class:`CpuTrainer` (Eq. 17 with ``tcfg.loss``) for the paper's decoder,
    :class:`cfisac.models.geometry_decoder.GeometryCpuTrainer` (its heat-map loss; ``tcfg.loss`` then only selects
    the validation loss) for ``decoder="geometry"``. Both have the same ``step`` and ``optimizer``."""
    if mcfg.decoder == "geometry":
        from .models.geometry_decoder import GeometryCpuTrainer

        if tcfg.amp:
            raise ValueError("amp=True is not supported with decoder='geometry' (its trainer runs in float32)")
        return GeometryCpuTrainer(cpu, lr=tcfg.lr)
    return CpuTrainer(cpu, lr=tcfg.lr, amp=tcfg.amp, loss=tcfg.loss)


def train_step(aps: Sequence[ApTrainer], cpu: CpuTrainer, y: torch.Tensor | None, x: torch.Tensor | None,
               target: torch.Tensor, features: Sequence[torch.Tensor] | None = None) -> dict[str, Any]:
    """One step of Algorithm 1 in one process: every AP's forward, the CPU's step, every AP's backward.
    ``features``: each AP's front-end output for the batch when already computed (:class:`FeatureCache`); y (and
    x, for a decoder that does not read it, ``CpuSide.uses_x``) may then be None."""
    fs = [None] * len(aps) if features is None else list(features)
    payloads = [ap.forward(None if y is None else y[:, m], x, f) for m, (ap, f) in enumerate(zip(aps, fs, strict=True))]
    need = any(ap.optimizer is not None for ap in aps)
    loss, grads, pred = cpu.step(payloads, x, target, need_grads=need)
    ap_stats = [ap.backward(g) for ap, g in zip(aps, grads, strict=True)]
    commitment = sum(s["commitment"] for s in ap_stats)
    return {"mse": loss, "commitment": commitment, "loss": loss + commitment, "prediction": pred,
            "perplexity": [s["perplexity"] for s in ap_stats], "usage": [s["usage"] for s in ap_stats]}



class FeatureCache:
    """The AP front ends' outputs of samples of one data source, kept in memory from their first use
    (``TrainConfig.feature_cache_gb``). The front ends are fixed transforms (no trainable parameters), so a kept
    output equals what recomputing it would give; only the time is saved. A batch whose samples are all kept is
    read from memory; otherwise every AP's front end runs on the whole batch (as without a cache) and the new
    samples are kept while ``max_bytes`` allows (later ones are then recomputed every time)."""

    def __init__(self, aps: Sequence[ApSide], max_bytes: int) -> None:
        self.aps, self.max_bytes = list(aps), int(max_bytes)
        self.per_sample = 4 * sum(math.prod(ap.front_end.output_shape) for ap in self.aps)  # float32 bytes
        self.kept: dict[int, list[torch.Tensor]] = {}  # sample position -> one output per AP
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return len(self.kept) * self.per_sample

    def has(self, positions: Sequence[int]) -> bool:
        """Whether the outputs of every sample at ``positions`` are kept (:meth:`features` needs no echoes)."""
        return bool(positions) and all(int(p) in self.kept for p in positions)

    def features(self, positions: Sequence[int], y: torch.Tensor | None, x: torch.Tensor | None,
                 device: torch.device | str | None = None) -> list[torch.Tensor]:
        """Every AP's front-end output [B, C, D1, D2, D3] float32 for the samples at ``positions`` (y [B, M, ...],
        x: their echoes and transmit signals; both may be None when :meth:`has` them, the outputs then go to
        ``device``, default the CPU)."""
        positions = [int(p) for p in positions]
        if self.has(positions):
            self.hits += len(positions)
            dev = y.device if y is not None else device
            return [torch.stack([self.kept[p][m] for p in positions]).to(dev) for m in range(len(self.aps))]
        if y is None:
            raise ValueError("FeatureCache.features: the samples are not all kept, the echoes y are needed")
        if len(positions) != y.shape[0]:
            raise ValueError(f"{len(positions)} positions for a batch of {y.shape[0]} samples")
        self.misses += len(positions)
        with torch.no_grad():
            out = [ap.front_end_features(y[:, m], x).float() for m, ap in enumerate(self.aps)]
        for k, p in enumerate(positions):
            if p not in self.kept and self.nbytes + self.per_sample <= self.max_bytes:
                self.kept[p] = [o[k].detach().to("cpu", copy=True) for o in out]
        return out


# ---------------------------------------------------------------------------------------------------- the run
def predict(model: SplitModel, normaliser: LabelNormaliser, y: torch.Tensor, x: torch.Tensor,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """In-graph prediction (eval mode, no codebook update) -> positions, velocities [B, Q, 2] float64."""
    was = model.training
    model.eval()
    with torch.no_grad():
        psi = normaliser.denormalise(model(y, x).prediction)
    model.train(was)
    return split_psi(psi, model.cfg.n_targets)


def validate(model: SplitModel, normaliser: LabelNormaliser, source: DataSource, *, batch_size: int,
             device: torch.device, loss: str = "canonical", cache: FeatureCache | None = None) -> dict[str, float]:
    """Validation loss (normalised MSE, :func:`estimation_loss` ``loss``) and Hungarian-assigned RMSEs (m, m/s) on
    every sample of ``source`` (its front-end outputs from ``cache`` where given)."""
    if source.n == 0:
        return {"val_loss": float("nan"), "val_position_rmse": float("nan"), "val_velocity_rmse": float("nan")}
    sq, count, pe, ve = 0.0, 0, [], []
    model.eval()
    with torch.no_grad():
        for lo in range(0, source.n, batch_size):
            rows = range(lo, min(source.n, lo + batch_size))
            b = source.batch(rows)
            y, x = b["y"].to(device), b["x"].to(device)
            features = None if cache is None else cache.features(rows, y, x)
            pred = model(y, x, features).prediction.float()
            target = normaliser.normalise(b["labels"].to(device))
            sq += float(estimation_loss(pred, target, model.cfg.n_targets, loss, reduction="sum"))
            count += target.numel()
            pos, vel = split_psi(normaliser.denormalise(pred), model.cfg.n_targets)
            acc = accuracy(pos, vel, b["positions"], b["velocities"])
            pe.append(acc.position_errors)
            ve.append(acc.velocity_errors)
    model.train()
    pe_all, ve_all = torch.cat(pe), torch.cat(ve)
    return {"val_loss": sq / count, "val_position_rmse": float(pe_all.pow(2).mean().sqrt()),
            "val_velocity_rmse": float(ve_all.pow(2).mean().sqrt())}




class InProcess:
    """:func:`cfisac.fit.fit`'s strategy for Algorithm 1 in one process: every AP's :class:`ApTrainer` and the CPU's
    trainer exchange payloads and gradients in memory (:func:`train_step`); batches from ``train_src`` (prefetched
    by ``tcfg.workers`` processes), validation on ``val_src``; with ``tcfg.feature_cache_gb`` > 0 the front ends'
    outputs of both are kept (:class:`FeatureCache`, the budget shared in proportion to the sources' sizes)."""

    is_writer, checkpoint_at_start, checkpoint_every, plot_each_checkpoint, extra = True, False, 0, False, None

    def __init__(self, model: SplitModel, aps: Sequence[ApTrainer], cpu: CpuTrainer, normaliser: LabelNormaliser,
                 train_src: DataSource, val_src: DataSource, tcfg: TrainConfig, device: torch.device) -> None:
        self.model, self.aps, self.cpu, self.normaliser = model, list(aps), cpu, normaliser
        self.train_src, self.val_src, self.tcfg, self.device = train_src, val_src, tcfg, device
        self.optimizers = {**{f"ap{m}": t.optimizer for m, t in enumerate(self.aps)}, "cpu": cpu.optimizer}
        self._batches: Iterator[dict[str, torch.Tensor]] | None = None
        self.caches: dict[str, FeatureCache] = {}
        if tcfg.feature_cache_gb > 0:
            total, n = tcfg.feature_cache_gb * 1e9, train_src.n + val_src.n
            self.caches = {"train": FeatureCache(model.aps, int(total * train_src.n / n)),
                           "val": FeatureCache(model.aps, int(total * val_src.n / n))}

    def start_epoch(self, epoch: int, todo: list[list[int]]) -> None:
        # Batches whose front-end outputs are all kept need no echoes, and no X where the decoder does not read it
        # (the geometry decoder): only their labels are made (a sample is a function of (config, seed, index), so
        # the weights are those of a run that simulates them); the others are simulated (prefetched) as before.
        cache = self.caches.get("train")
        self._labels_only = {k for k, b in enumerate(todo) if cache is not None and not self.model.cpu_side.uses_x
                             and self.train_src.cache is None and cache.has(b)}
        self._todo, self._next = todo, 0
        self._batches = prefetch(self.train_src, [b for k, b in enumerate(todo) if k not in self._labels_only],
                                 self.tcfg.workers)

    def step(self, epoch: int, step: int, rows: list[int], global_step: int) -> dict[str, Any]:
        k, self._next = self._next, self._next + 1  # steps follow the epoch's list of batches
        if list(rows) != list(self._todo[k]):
            raise RuntimeError(f"training step {k} of the epoch got rows {rows[:4]}..., expected "
                               f"{self._todo[k][:4]}...")
        cache = self.caches.get("train")
        if k in self._labels_only:
            b = self.train_src.labels_batch(rows)
            y = x = None
            feats = cache.features(rows, None, None, self.device)
        else:
            b = next(self._batches)  # the batch at ``rows`` (prefetch follows the same list)
            y, x = b["y"].to(self.device), b["x"].to(self.device)
            feats = None if cache is None else cache.features(rows, y, x)
        target = self.normaliser.normalise(b["labels"].to(self.device))
        r = train_step(self.aps, self.cpu, y, x, target, feats)
        return {"loss": r["loss"], "mse": r["mse"], "commitment": r["commitment"], "n": len(rows),
                "perplexity": codebook_stat(r["perplexity"], self.tcfg.kind),
                "usage": codebook_stat(r["usage"], self.tcfg.kind), "prediction": r["prediction"],
                "positions": b["positions"], "velocities": b["velocities"]}

    def end_epoch(self) -> None:
        self._batches = None

    def validate(self) -> dict[str, float]:
        return validate(self.model, self.normaliser, self.val_src, batch_size=max(self.tcfg.batch_size, 64),
                        device=self.device, loss=self.tcfg.loss, cache=self.caches.get("val"))

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return optimizer_state_tensors(self.optimizers)

    def set_lr_factor(self, factor: float) -> None:
        """Every optimizer's learning rate := ``tcfg.lr * factor`` (``TrainConfig.lr_schedule``)."""
        for opt in self.optimizers.values():
            for group in [] if opt is None else opt.param_groups:
                group["lr"] = self.tcfg.lr * factor

    def after_checkpoint(self, path: Path) -> None:
        pass

    def any_rank(self, flag: bool) -> bool:
        return flag


def train(
    cfg: SystemConfig, mcfg: ModelConfig, tcfg: TrainConfig, out: str | Path, *, resume: bool = False,
    progress: bool = True, log: Callable[[str], Any] | None = print, plot: bool = True,
) -> TrainResult:
    """Train ``tcfg.kind`` on ``cfg`` with hyper-parameters ``mcfg`` (Algorithm 1); checkpoints in ``out``.

    With ``resume`` the run continues from ``out/latest.json`` (``epochs``, ``minutes`` and ``workers`` may differ
    from the original run, nothing else). Without it, ``out`` must not already hold a run. ``plot=False`` skips
    ``loss.png`` (matplotlib costs about a second per call).
    """
    out = Path(out)
    device = torch.device(tcfg.device)
    log = log or (lambda s: None)
    model = build_model(tcfg.kind, cfg, mcfg, seed=tcfg.seed).to(device)
    ap_trainers = [ApTrainer(ap, lr=tcfg.lr, amp=tcfg.amp) for ap in model.aps]
    cpu_trainer = make_cpu_trainer(model.cpu_side, mcfg, tcfg)
    train_src = DataSource(cfg, tcfg.seed, tcfg.n_train, cache=tcfg.data, power_dbm_pool=tcfg.power_dbm_pool)
    val_seed = train_src.cache.seed if train_src.cache is not None else tcfg.seed
    val_offset = (int(train_src.cache.__getitems__([0])[0]["indices"]) + len(train_src.cache)
                  if train_src.cache is not None else tcfg.n_train)
    val_src = DataSource(cfg, val_seed, tcfg.n_val, offset=val_offset, power_dbm_pool=tcfg.power_dbm_pool)
    run = open_run(out, cfg, mcfg, tcfg, resume=resume, log=log,
                   labels=lambda: train_src.labels(NORMALISER_MAX_SAMPLES))
    start_model(model, run)
    strategy = InProcess(model, ap_trainers, cpu_trainer, run.normaliser, train_src, val_src, tcfg, device)
    if run.optim is not None:
        moved = {k: v.to(device) if not k.endswith(".step") else v for k, v in run.optim.items()}
        load_optimizer_state(strategy.optimizers, moved, run.state["optim"])
    for line in model_summary_lines(tcfg.kind, cfg, mcfg):
        log(line)
    result = fit(strategy, run, cfg, mcfg, tcfg, progress=progress, log=log)
    try:
        if plot:  # once per call (about a second): the CSVs are current at every checkpoint
            plot_loss(out / "loss.png", run.history, run.steps, title=f"{tcfg.kind}, lr {tcfg.lr:g}")
    except Exception as err:  # plotting must never lose a run
        log(f"warning: loss plot failed: {err}")
    return result
