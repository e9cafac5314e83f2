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

Checkpoints (every epoch, and when a ``minutes`` budget stops the run) go to ``out/ckpt-eEEEE-sSSSSSS/``:
``model.safetensors`` (all weights and buffers, codebooks included), ``optim.safetensors`` (Adam moments and the
torch RNG state) and ``state.json`` (configs, label normaliser, epoch / step reached, history, optimizer
hyper-parameters). A checkpoint is written to a temporary directory and renamed; ``out/latest.json`` (and
``out/best.json``, the lowest validation loss) then point to it atomically; older checkpoints are removed.
``state.json`` holds the SHA-256 of both safetensors files and of its own content (``sha256``); every reader
(:func:`find_checkpoint`, hence :func:`load_checkpoint`, the estimators and the distributed runtime) verifies them
and refuses a corrupted or truncated checkpoint with a ``ValueError`` naming the file (checkpoints written before
the checksums are read unverified). Temporaries of a killed writer (``.tmp-ckpt-*-PID/``, ``.latest.json.tmp-PID``
...) are removed at the next checkpoint of the run directory.
``resume=True`` continues from ``latest.json`` (or, when that checkpoint is corrupted, from ``best.json``'s) and ends
with the same parameters as an uninterrupted run with the same seed (data order, initialisation and every random
draw are functions of the seed, epoch and step).
``history.csv`` (per epoch) and ``steps.csv`` (per step) are rewritten at every checkpoint, ``loss.png`` (paper
Fig. 11) when the call returns (finished or stopped by its time budget).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import SystemConfig
from .metrics import accuracy
from .models import ApSide, CpuSide, LabelNormaliser, ModelConfig, SplitModel, build_model
from .models.config import MODEL_KINDS
from .scene import labels_from_scene, sample_scenes

__all__ = [
    "ApTrainer", "Checkpoint", "CpuTrainer", "TrainConfig", "TrainResult", "epoch_batches", "find_checkpoint",
    "load_checkpoint", "predict", "train", "train_step",
]

FORMAT_VERSION = 1
NORMALISER_MAX_SAMPLES = 20_000


# ---------------------------------------------------------------------------------------------------- loss
LOSSES = ("canonical", "assignment")
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


# ---------------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class TrainConfig:
    """Training options. ``seed`` selects the training / validation data (dataset seed: training samples
    ``0 .. n_train-1``, validation samples ``n_train .. n_train+n_val-1``), the initial parameters and the data
    order. ``minutes`` stops the run (with a checkpoint) when that much training time has passed. ``data`` is an
    HDF5 cache (:func:`cfisac.data.write_hdf5`) used instead of on-the-fly simulation for training. ``n_val`` must
    be at least 1: the validation loss selects ``best.json`` (``n_val=0`` is a ``ValueError`` naming it)."""

    kind: str = "dvqvae"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    n_train: int = 16_000
    n_val: int = 500
    seed: int = 0
    minutes: float | None = None
    workers: int = 0
    device: str = "cpu"
    amp: bool = False
    data: str | None = None
    loss: str = "canonical"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {list(LOSSES)}")
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; choose one of {list(MODEL_KINDS)}")
        for name in ("epochs", "batch_size", "n_train"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.n_val, int) or isinstance(self.n_val, bool) or self.n_val < 1:  # 0: NaN val loss
            raise ValueError(f"n_val must be a positive integer (the validation set selects best.json), "
                             f"got {self.n_val!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be positive, got {self.minutes!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {sorted(unknown)}")
        return cls(**d)


# Options that may change when a run is resumed (they do not change what the steps compute).
RESUMABLE_CHANGES = ("epochs", "minutes", "workers")


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
    cache. ``batch(positions)`` -> dict(y, x, labels, positions, velocities)."""

    def __init__(self, cfg: SystemConfig, seed: int, n: int, *, offset: int = 0, cache: str | None = None) -> None:
        self.cfg, self.seed, self.n, self.offset, self.cache = cfg, seed, n, offset, None
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

        return simulate_batch(self.cfg, self.seed, [self.offset + p for p in positions])


def _prefetch(source: DataSource, batches: list[list[int]], workers: int) -> Iterator[dict[str, torch.Tensor]]:
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

    def forward(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Lines 7-10: the payload to send to the CPU (detached float32 [B, D, d1, d2, d3])."""
        self.ap.train()
        with torch.autocast(y_m.device.type, dtype=torch.bfloat16, enabled=self.amp):
            self._out = self.ap(y_m, x if self.ap.needs_x else None)
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


def train_step(aps: Sequence[ApTrainer], cpu: CpuTrainer, y: torch.Tensor, x: torch.Tensor,
               target: torch.Tensor) -> dict[str, Any]:
    """One step of Algorithm 1 in one process: every AP's forward, the CPU's step, every AP's backward."""
    payloads = [ap.forward(y[:, m], x) for m, ap in enumerate(aps)]
    need = any(ap.optimizer is not None for ap in aps)
    loss, grads, pred = cpu.step(payloads, x, target, need_grads=need)
    ap_stats = [ap.backward(g) for ap, g in zip(aps, grads, strict=True)]
    commitment = sum(s["commitment"] for s in ap_stats)
    return {"mse": loss, "commitment": commitment, "loss": loss + commitment, "prediction": pred,
            "perplexity": [s["perplexity"] for s in ap_stats], "usage": [s["usage"] for s in ap_stats]}


# ---------------------------------------------------------------------------------------------------- checkpoints
@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (codebooks synchronised to the CPU side), configs, normaliser and state."""

    path: Path
    kind: str
    cfg: SystemConfig
    mcfg: ModelConfig
    tcfg: TrainConfig
    normaliser: LabelNormaliser
    model: SplitModel
    state: dict[str, Any]


CHECKPOINT_FILES = ("model.safetensors", "optim.safetensors")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _state_digest(state: dict[str, Any]) -> str:
    """SHA-256 of ``state`` (canonical JSON) without its own ``sha256["state.json"]`` entry."""
    st = dict(state)
    st["sha256"] = {k: v for k, v in state.get("sha256", {}).items() if k != "state.json"}
    canonical = json.loads(json.dumps(st))  # as read back from state.json (tuples -> lists, keys -> strings)
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def seal_checkpoint(ckpt: Path, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with ``sha256``: the digests of the safetensors files written in ``ckpt`` and of the state."""
    st = {**state, "sha256": {name: file_sha256(ckpt / name) for name in CHECKPOINT_FILES}}
    st["sha256"]["state.json"] = _state_digest(st)
    return st


def damaged(path: Path, why: str) -> ValueError:
    """The one-line error of a damaged checkpoint file: names it and says what to do."""
    why = " ".join(why.split())
    return ValueError(f"checkpoint file {path} {why}; delete {path.parent} (a resumed run then continues from "
                      "best.json's checkpoint) or train again into a new --out")


def read_state(ckpt: Path) -> dict[str, Any]:
    """``ckpt/state.json``, verified (with the safetensors files) against its checksums; a ``ValueError`` naming
    the file that is missing, truncated or corrupted."""
    path = ckpt / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise damaged(path, f"is unreadable or not valid JSON (corrupted?): {err}") from None
    if not isinstance(state, dict):
        raise damaged(path, "is not a JSON object (corrupted?)")
    digests = state.get("sha256")
    if digests is None:  # written before checksums existed: read unverified
        return state
    if not isinstance(digests, dict) or digests.get("state.json") != _state_digest(state):
        raise damaged(path, "is corrupted (checksum mismatch)")
    for name in CHECKPOINT_FILES:
        f = ckpt / name
        if not f.is_file():
            raise damaged(f, "is missing")
        if file_sha256(f) != digests.get(name):
            raise damaged(f, "is corrupted or truncated (SHA-256 mismatch with state.json)")
    return state


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """``load_file`` with a ``ValueError`` naming the file instead of a raw ``SafetensorError``."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise damaged(path, f"cannot be read (truncated or corrupted?): {err}") from None


def remove_stale_checkpoint_temporaries(out: Path) -> list[Path]:
    """Remove the temporaries a killed writer left in the run directory ``out`` (checkpoint directories, pointers,
    CSVs, the loss plot; see :func:`cfisac.data.remove_stale_temporaries`)."""
    from .data import remove_stale_temporaries

    removed = remove_stale_temporaries(out, r"\.tmp-ckpt-e\d+-s\d+-(?P<pid>\d+)")
    removed += remove_stale_temporaries(out, r"\.(?:latest|best)\.json\.tmp-(?P<pid>\d+)")
    removed += remove_stale_temporaries(out, r"\.(?:history|steps)\.csv\.tmp-(?P<pid>\d+)")
    removed += remove_stale_temporaries(out, r"\.loss\.tmp-(?P<pid>\d+)\.png")
    return removed


def find_checkpoint(path: str | Path, which: str = "latest", *, verify: bool = True) -> Path:
    """The checkpoint directory of a run directory (via ``latest.json`` / ``best.json``) or the directory itself;
    with ``verify``, its files are checked against the checksums of its ``state.json`` (:func:`read_state`)."""
    path = Path(path)
    if (path / "state.json").is_file():
        if verify:
            read_state(path)
        return path
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
    pointer = path / f"{which}.json"
    if not pointer.is_file():
        raise ValueError(f"{path} holds no checkpoint (no state.json and no {which}.json)")
    try:
        target = path / json.loads(pointer.read_text())["checkpoint"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"checkpoint pointer {pointer} is unreadable (corrupted?): {err}") from None
    if not (target / "state.json").is_file():
        raise ValueError(f"{pointer} points to {target}, which is not a complete checkpoint")
    if verify:
        read_state(target)
    return target


def resume_checkpoint(out: Path, log: Callable[[str], Any] | None = None) -> Path:
    """The checkpoint a resumed run of ``out`` continues from: ``latest.json``'s, or when that one is corrupted
    ``best.json``'s (an earlier step: the run then repeats the steps after it, with the same result)."""
    try:
        return find_checkpoint(out, "latest")
    except ValueError as err:
        if not (out / "best.json").is_file():
            raise
        try:
            best = find_checkpoint(out, "best")
        except ValueError:
            raise err from None
        if log is not None:
            log(f"warning: {err}; resuming from the best checkpoint {best.name} instead")
        return best


def model_from_state(state: dict[str, Any]) -> tuple[str, SystemConfig, ModelConfig, TrainConfig, LabelNormaliser]:
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"checkpoint format {state.get('format')!r} is not supported (expected {FORMAT_VERSION})")
    return (state["kind"], SystemConfig.from_dict(state["system"]), ModelConfig.from_dict(state["model"]),
            TrainConfig.from_dict(state["train"]), LabelNormaliser.from_dict(state["normaliser"]))


def load_checkpoint(path: str | Path, *, which: str = "latest", device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`train` (a run directory or one checkpoint directory)."""
    ckpt = find_checkpoint(path, which, verify=False)
    state = read_state(ckpt)
    kind, cfg, mcfg, tcfg, normaliser = model_from_state(state)
    model = build_model(kind, cfg, mcfg, seed=tcfg.seed)
    weights = load_tensors(ckpt / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {ckpt} does not match the model: missing {missing}, unexpected {unexpected}")
    model.to(device)
    model.sync_codebooks()
    model.eval()
    return Checkpoint(ckpt, kind, cfg, mcfg, tcfg, normaliser, model, state)


def optimizer_state_tensors(trainers: dict[str, torch.optim.Optimizer | None]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[str, Any] = {}
    for name, opt in trainers.items():
        if opt is None:
            continue
        sd = opt.state_dict()
        groups[name] = sd["param_groups"]
        for pid, st in sd["state"].items():
            for key, val in st.items():
                t = val if isinstance(val, torch.Tensor) else torch.tensor(val)
                tensors[f"{name}.{pid}.{key}"] = t.detach().cpu().contiguous()
    return tensors, groups


def load_optimizer_state(trainers: dict[str, torch.optim.Optimizer | None], tensors: dict[str, torch.Tensor],
                groups: dict[str, Any]) -> None:
    for name, opt in trainers.items():
        if opt is None:
            continue
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, val in tensors.items():
            owner, pid, field_ = key.split(".", 2)
            if owner == name:
                state.setdefault(int(pid), {})[field_] = val
        opt.load_state_dict({"state": state, "param_groups": groups[name]})


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_checkpoint(out: Path, pointer: dict[str, Any], best_val_loss: float | None,
                       history: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]]) -> None:
    """Make the checkpoint ``out / pointer["checkpoint"]`` (already renamed into place) the run's latest: fsync the
    run directory, point ``latest.json`` at it (and ``best.json`` with ``best_val_loss`` when that is given: the new
    checkpoint is the best), remove every other checkpoint but the best, rewrite ``history.csv`` / ``steps.csv``.
    The one publication step of in-process, split-process and data-parallel training."""
    fsync_dir(out)
    write_json_atomic(out / "latest.json", pointer)
    if best_val_loss is not None:
        write_json_atomic(out / "best.json", {**pointer, "val_loss": best_val_loss})
    keep = {pointer["checkpoint"]}
    if (out / "best.json").is_file():
        keep.add(json.loads((out / "best.json").read_text())["checkpoint"])
    for old in out.glob("ckpt-e*"):
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    write_csv(out / "history.csv", HISTORY_FIELDS, history)
    write_csv(out / "steps.csv", STEP_FIELDS, steps)


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- the run
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


HISTORY_FIELDS = ("epoch", "steps", "samples", "train_loss", "train_mse", "train_commitment", "val_loss",
                  "val_position_rmse", "val_velocity_rmse", "perplexity", "usage", "elapsed_s")
STEP_FIELDS = ("step", "epoch", "loss", "mse", "commitment", "perplexity")


def predict(model: SplitModel, normaliser: LabelNormaliser, y: torch.Tensor, x: torch.Tensor,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """In-graph prediction (eval mode, no codebook update) -> positions, velocities [B, Q, 2] float64."""
    was = model.training
    model.eval()
    with torch.no_grad():
        psi = normaliser.denormalise(model(y, x).prediction)
    model.train(was)
    return split_psi(psi, model.cfg.n_targets)


def split_psi(psi: torch.Tensor, Q: int) -> tuple[torch.Tensor, torch.Tensor]:
    B = psi.shape[0]
    return psi[:, : 2 * Q].reshape(B, Q, 2).cpu(), psi[:, 2 * Q:].reshape(B, Q, 2).cpu()


def validate(model: SplitModel, normaliser: LabelNormaliser, source: DataSource, *, batch_size: int,
             device: torch.device, loss: str = "canonical") -> dict[str, float]:
    """Validation loss (normalised MSE, :func:`estimation_loss` ``loss``) and Hungarian-assigned RMSEs (m, m/s) on
    every sample of ``source``."""
    if source.n == 0:
        return {"val_loss": float("nan"), "val_position_rmse": float("nan"), "val_velocity_rmse": float("nan")}
    sq, count, pe, ve = 0.0, 0, [], []
    model.eval()
    with torch.no_grad():
        for lo in range(0, source.n, batch_size):
            b = source.batch(range(lo, min(source.n, lo + batch_size)))
            y, x = b["y"].to(device), b["x"].to(device)
            pred = model(y, x).prediction.float()
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


def write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


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


def read_steps(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]


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
    if resume:
        if not (out / "latest.json").is_file():
            raise ValueError(f"--resume: {out} holds no checkpoint to resume (no latest.json)")
        ckpt = resume_checkpoint(out, log)
        state = read_state(ckpt)
        kind, cfg0, mcfg0, tcfg0, normaliser = model_from_state(state)
        if cfg0 != cfg or mcfg0 != mcfg:
            raise ValueError("--resume: the system or model configuration differs from the checkpoint's")
        diff = [k for k in tcfg.to_dict() if k not in RESUMABLE_CHANGES and getattr(tcfg, k) != getattr(tcfg0, k)]
        if diff:
            raise ValueError(f"--resume: training options {diff} differ from the checkpoint's "
                             f"(only {list(RESUMABLE_CHANGES)} may change)")
    elif (out / "latest.json").exists():
        raise ValueError(f"{out} already holds a run; pass resume=True (--resume) or choose another output")

    model = build_model(tcfg.kind, cfg, mcfg, seed=tcfg.seed).to(device)
    ap_trainers = [ApTrainer(ap, lr=tcfg.lr, amp=tcfg.amp) for ap in model.aps]
    cpu_trainer = make_cpu_trainer(model.cpu_side, mcfg, tcfg)
    optimizers = {**{f"ap{m}": t.optimizer for m, t in enumerate(ap_trainers)}, "cpu": cpu_trainer.optimizer}
    train_src = DataSource(cfg, tcfg.seed, tcfg.n_train, cache=tcfg.data)
    val_seed = train_src.cache.seed if train_src.cache is not None else tcfg.seed
    val_offset = (int(train_src.cache.__getitems__([0])[0]["indices"]) + len(train_src.cache)
                  if train_src.cache is not None else tcfg.n_train)
    val_src = DataSource(cfg, val_seed, tcfg.n_val, offset=val_offset)

    if resume:
        weights = load_tensors(ckpt / "model.safetensors")
        model.load_state_dict(weights)
        opt_tensors = load_tensors(ckpt / "optim.safetensors")
        torch.set_rng_state(opt_tensors.pop("rng.torch"))
        moved = {k: v.to(device) if not k.endswith(".step") else v for k, v in opt_tensors.items()}
        load_optimizer_state(optimizers, moved, state["optim"])
        epoch, step_in_epoch, global_step = state["epoch"], state["step"], state["global_step"]
        history, elapsed0, best = state["history"], state["elapsed_s"], state.get("best_val_loss")
        steps = read_steps(out / "steps.csv", global_step)
        log(f"resuming {out} at epoch {epoch} step {step_in_epoch} (global step {global_step})")
    else:
        out.mkdir(parents=True, exist_ok=True)
        normaliser = LabelNormaliser.fit(train_src.labels(NORMALISER_MAX_SAMPLES))
        if mcfg.decoder == "geometry":  # the decoder's output range (a saved buffer) = the training labels' range
            model.cpu_side.decoder.set_label_range(normaliser.minimum, normaliser.maximum)
        epoch, step_in_epoch, global_step, history, elapsed0, best, steps = 0, 0, 0, [], 0.0, None, []
    for line in model_summary_lines(tcfg.kind, cfg, mcfg):
        log(line)

    def save(finished: bool) -> Path:
        model.sync_codebooks()
        name = f"ckpt-e{epoch:04d}-s{step_in_epoch:06d}"
        remove_stale_checkpoint_temporaries(out)
        tmp = out / f".tmp-{name}-{os.getpid()}"
        final = out / name
        try:
            is_best = write_checkpoint_dir(tmp, final, finished)
        except (OSError, SafetensorError) as err:  # disk full, file too large, denied: the earlier checkpoints stay
            shutil.rmtree(tmp, ignore_errors=True)
            why = getattr(err, "strerror", None) or " ".join(str(err).split())
            raise OSError(f"cannot write the checkpoint {final}: {why}; the run can be resumed from "
                          f"{out / 'latest.json'} (if any) once there is space") from None
        publish_checkpoint(out, {"checkpoint": name, "epoch": epoch, "step": step_in_epoch,
                                 "global_step": global_step}, best if is_best else None, history, steps)
        return final

    def write_checkpoint_dir(tmp: Path, final: Path, finished: bool) -> bool:
        """The checkpoint (weights, optimiser, sealed state.json) into ``tmp``, renamed to ``final``; whether it is
        the best so far."""
        nonlocal best
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        tensors, groups = optimizer_state_tensors(optimizers)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "optim.safetensors"))
        val_loss = history[-1]["val_loss"] if history else None
        is_best = val_loss is not None and math.isfinite(val_loss) and (best is None or val_loss < best)
        if is_best:
            best = val_loss
        st = {"format": FORMAT_VERSION, "kind": tcfg.kind, "system": cfg.to_dict(), "model": mcfg.to_dict(),
              "train": tcfg.to_dict(), "normaliser": normaliser.to_dict(), "epoch": epoch, "step": step_in_epoch,
              "global_step": global_step, "elapsed_s": elapsed, "history": history, "optim": groups,
              "best_val_loss": best, "finished": finished,
              "fronthaul_bits_per_ap": model.fronthaul_bits_per_ap}
        with open(tmp / "state.json", "w") as f:
            json.dump(seal_checkpoint(tmp, st), f, indent=1)
        for p in tmp.iterdir():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return is_best

    t_start = time.monotonic()
    elapsed = elapsed0
    budget = None if tcfg.minutes is None else tcfg.minutes * 60.0
    stopped = False
    last_ckpt = ckpt if resume else None
    while epoch < tcfg.epochs and not stopped:
        if budget is not None and elapsed >= budget:  # e.g. resuming a run whose budget is spent
            stopped = True
            break
        batches = epoch_batches(tcfg.seed, epoch, tcfg.n_train, tcfg.batch_size)
        todo = batches[step_in_epoch:]
        sums = {"loss": 0.0, "mse": 0.0, "commitment": 0.0, "n": 0, "perplexity": 0.0, "usage": 0.0}
        bar = progress_bar(progress, len(batches), step_in_epoch, f"epoch {epoch + 1}/{tcfg.epochs}")
        for b in _prefetch(train_src, todo, tcfg.workers):
            y, x = b["y"].to(device), b["x"].to(device)
            target = normaliser.normalise(b["labels"].to(device))
            r = train_step(ap_trainers, cpu_trainer, y, x, target)
            step_in_epoch += 1
            global_step += 1
            k = y.shape[0]
            perp = float(np.nanmean(r["perplexity"])) if tcfg.kind == "dvqvae" else float("nan")
            usage = float(np.nanmean(r["usage"])) if tcfg.kind == "dvqvae" else float("nan")
            for key in ("loss", "mse", "commitment"):
                sums[key] += r[key] * k
            sums["perplexity"] += perp * k
            sums["usage"] += usage * k
            sums["n"] += k
            steps.append({"step": global_step, "epoch": epoch + step_in_epoch / len(batches), "loss": r["loss"],
                          "mse": r["mse"], "commitment": r["commitment"], "perplexity": perp})
            elapsed = elapsed0 + time.monotonic() - t_start
            if bar is not None:
                pos, vel = split_psi(normaliser.denormalise(r["prediction"]), cfg.n_targets)
                acc = accuracy(pos, vel, b["positions"], b["velocities"])
                post = {"loss": f"{r['loss']:.4f}", "rmse_pos": f"{acc.position_rmse:.1f}m",
                        "rmse_vel": f"{acc.velocity_rmse:.1f}m/s"}
                if tcfg.kind == "dvqvae":
                    post["perplexity"] = f"{perp:.1f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
            if budget is not None and elapsed >= budget:
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
        row.update(validate(model, normaliser, val_src, batch_size=max(tcfg.batch_size, 64), device=device,
                            loss=tcfg.loss))
        row["elapsed_s"] = elapsed
        if step_in_epoch >= len(batches):
            epoch, step_in_epoch = epoch + 1, 0
        if sums["n"]:
            history.append(row)
            log(f"epoch {row['epoch']:.2f}: train loss {row['train_loss']:.5f}, val loss {row['val_loss']:.5f}, "
                f"val RMSE {row['val_position_rmse']:.2f} m / {row['val_velocity_rmse']:.2f} m/s"
                + (f", perplexity {row['perplexity']:.1f}" if tcfg.kind == "dvqvae" else "")
                + f" ({elapsed:.0f} s)")
        last_ckpt = save(finished=epoch >= tcfg.epochs)
    if last_ckpt is None:
        last_ckpt = save(finished=True)
    try:
        if plot:  # once per call (about a second): the CSVs above are current at every checkpoint
            plot_loss(out / "loss.png", history, steps, title=f"{tcfg.kind}, lr {tcfg.lr:g}")
    except Exception as err:  # plotting must never lose a run
        log(f"warning: loss plot failed: {err}")
    model.sync_codebooks()
    model.eval()
    return TrainResult(out, last_ckpt, history, not stopped, model, normaliser)


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
