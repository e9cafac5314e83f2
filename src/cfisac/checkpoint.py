"""Checkpoints of the learned schemes: the one place that writes, reads, finds, verifies and loads them.

Layout: ``out/ckpt-eEEEE-sSSSSSS/`` holds ``model.safetensors`` (all weights and buffers, codebooks included),
``optim.safetensors`` (Adam moments of every side, keys ``<side>.<pid>.<field>`` with side ``ap{m}`` or ``cpu``, and
the torch RNG state ``rng.torch``) and ``state.json`` (format version, kind, system / model / training configs,
label normaliser, epoch / step reached, history, optimizer param groups, best validation loss, ``finished``,
``fronthaul_bits_per_ap``; distributed runs add ``distributed``: runtime options, world size). A checkpoint is
written to a temporary directory ``.tmp-ckpt-...-PID/`` and renamed (:class:`CheckpointWriter`, used by in-process,
split-process and data-parallel training); ``out/latest.json`` (and ``out/best.json``, the lowest validation loss)
then point to it atomically and older checkpoints are removed (:func:`publish_checkpoint`).

``state.json`` holds the SHA-256 of both safetensors files and of its own content (``sha256``); every reader
(:func:`find_checkpoint`, hence :func:`load_checkpoint`, the estimators and the distributed runtime) verifies them
and refuses a corrupted or truncated checkpoint with a ``ValueError`` naming the file (checkpoints written before
the checksums are read unverified). Temporaries of a killed writer are removed at the next checkpoint of the run
directory (:func:`remove_stale_checkpoint_temporaries`). ``history.csv`` (per epoch) and ``steps.csv`` (per step)
are rewritten at every checkpoint.

Inference (:mod:`cfisac.models.estimator`, :mod:`cfisac.entropy`, the distributed sensing runtime, ``cfisac
evaluate``) imports this module only, never the trainer.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import SystemConfig
from .models import LabelNormaliser, ModelConfig, SplitModel, build_model
from .models.config import MODEL_KINDS

__all__ = [
    "Checkpoint", "CheckpointWriter", "FORMAT_VERSION", "HISTORY_FIELDS", "LOSSES", "RESUMABLE_CHANGES",
    "STEP_FIELDS", "TrainConfig", "file_sha256", "find_checkpoint", "load_checkpoint", "load_optimizer_state",
    "load_tensors", "model_from_state", "optimizer_state_tensors", "publish_checkpoint", "read_checkpoint",
    "read_state", "read_steps", "remove_stale_checkpoint_temporaries", "resume_checkpoint", "seal_checkpoint",
    "write_csv", "write_json_atomic",
]

FORMAT_VERSION = 1
LOSSES = ("canonical", "assignment")  # the estimation losses of cfisac.train.estimation_loss
HISTORY_FIELDS = ("epoch", "steps", "samples", "train_loss", "train_mse", "train_commitment", "val_loss",
                  "val_position_rmse", "val_velocity_rmse", "perplexity", "usage", "elapsed_s")
STEP_FIELDS = ("step", "epoch", "loss", "mse", "commitment", "perplexity")


LR_SCHEDULES = ("constant", "cosine")


def cosine_lr_factor(elapsed_s: float, budget_s: float | None, done_steps: int, total_steps: int) -> float:
    """``(1 + cos(pi p)) / 2`` of :attr:`TrainConfig.lr_schedule` ``"cosine"``: ``p`` the larger of the time and
    the step fractions spent (clipped to [0, 1])."""
    p = done_steps / max(1, total_steps)
    if budget_s is not None and budget_s > 0:
        p = max(p, elapsed_s / budget_s)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, p))))


# ---------------------------------------------------------------------------------------------------- what it records
@dataclass(frozen=True)
class TrainConfig:
    """Training options. ``seed`` selects the training / validation data (dataset seed: training samples
    ``0 .. n_train-1``, validation samples ``n_train .. n_train+n_val-1``), the initial parameters and the data
    order. ``minutes`` stops the run (with a checkpoint) when that much training time has passed. ``data`` is an
    HDF5 cache (:func:`cfisac.data.write_hdf5`) used instead of on-the-fly simulation for training. ``n_val`` must
    be at least 1: the validation loss selects ``best.json`` (``n_val=0`` is a ``ValueError`` naming it).
    ``feature_cache_gb``: memory (GB) for the AP front ends' outputs of the training and validation samples, kept
    from their first use and reused in later epochs (the front ends are fixed transforms, so the steps compute the
    same values: it only saves time, chiefly for the physics front ends at 14 ms per scene and AP at ``quick``); 0
    recomputes them every step. In-process training only (:func:`cfisac.train.train`). ``power_dbm_pool``: the
    transmit powers P (dBm) the samples cycle through (sample ``k`` of the dataset, training or validation, is
    simulated at ``power_dbm_pool[k % len(power_dbm_pool)]``, every other system parameter as the run's config),
    so one model learns every power of a sweep (Fig. 6) instead of one; empty: the config's power for every sample.
    On-the-fly data and in-process training only. ``lr_schedule``: ``"constant"`` (the paper's) or ``"cosine"``:
    before each step every optimizer's learning rate is set to ``lr (1 + cos(pi p)) / 2`` with ``p`` the larger of
    the fraction of the ``minutes`` budget spent and the fraction of the ``epochs`` steps done (the budget nearer its
    end), so a run stopped by either ends near zero; in-process training only."""

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
    feature_cache_gb: float = 0.0
    power_dbm_pool: tuple[float, ...] = ()
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        pool = self.power_dbm_pool
        if isinstance(pool, (str, bytes)) or not isinstance(pool, Sequence):
            raise ValueError(f"power_dbm_pool must be a sequence of transmit powers (dBm), got {pool!r}")
        if any(isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) for p in pool):
            raise ValueError(f"power_dbm_pool must hold finite numbers (dBm), got {list(pool)!r}")
        object.__setattr__(self, "power_dbm_pool", tuple(float(p) for p in pool))
        if self.power_dbm_pool and self.data is not None:
            raise ValueError("power_dbm_pool simulates its samples on the fly; it cannot be combined with an HDF5 "
                             "dataset (data)")
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
        c = self.feature_cache_gb
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0:
            raise ValueError(f"feature_cache_gb must be a non-negative number (GB; 0: no cache), got {c!r}")
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
RESUMABLE_CHANGES = ("epochs", "minutes", "workers", "feature_cache_gb")


# ---------------------------------------------------------------------------------------------------- reading
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

def write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)



def read_steps(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]



# ---------------------------------------------------------------------------------------------------- writing
def checkpoint_name(epoch: int, step: int) -> str:
    """``ckpt-eEEEE-sSSSSSS``: the directory name of the checkpoint after ``step`` steps of ``epoch``."""
    return f"ckpt-e{epoch:04d}-s{step:06d}"


class CheckpointWriter:
    """Writes the checkpoints of one run directory ``out`` (the one writer of in-process, split-process and
    data-parallel training). ``extra`` (distributed runs) is stored as ``state.json["distributed"]``; ``best`` is
    the best validation loss so far (of a resumed run)."""

    def __init__(self, out: Path, *, kind: str, cfg: SystemConfig, mcfg: ModelConfig, tcfg: TrainConfig,
                 normaliser: LabelNormaliser, extra: dict[str, Any] | None = None,
                 best: float | None = None) -> None:
        self.out, self.kind, self.cfg, self.mcfg, self.tcfg = Path(out), kind, cfg, mcfg, tcfg
        self.normaliser, self.extra, self.best = normaliser, extra, best

    def write(self, model: SplitModel, optim_tensors: dict[str, torch.Tensor], groups: dict[str, Any], *,
              epoch: int, step: int, global_step: int, elapsed: float, history: list[dict[str, Any]],
              steps: Sequence[dict[str, Any]], finished: bool) -> Path:
        """Write ``out/ckpt-eEEEE-sSSSSSS`` and publish it; returns its path. ``model`` holds every side's current
        state (its codebooks are copied to the CPU side here); ``optim_tensors`` / ``groups`` as
        :func:`optimizer_state_tensors` returns them. An ``OSError`` (disk full, file too large, denied) names the
        checkpoint and leaves the earlier ones in place."""
        out = self.out
        model.sync_codebooks()
        name = checkpoint_name(epoch, step)
        remove_stale_checkpoint_temporaries(out)
        tmp, final = out / f".tmp-{name}-{os.getpid()}", out / name
        try:
            is_best = self._write_dir(tmp, final, model, optim_tensors, groups, epoch=epoch, step=step,
                                      global_step=global_step, elapsed=elapsed, history=history, finished=finished)
        except (OSError, SafetensorError) as err:  # the earlier checkpoints stay
            shutil.rmtree(tmp, ignore_errors=True)
            why = getattr(err, "strerror", None) or " ".join(str(err).split())
            raise OSError(f"cannot write the checkpoint {final}: {why}; the run can be resumed from "
                          f"{out / 'latest.json'} (if any) once there is space") from None
        publish_checkpoint(out, {"checkpoint": name, "epoch": epoch, "step": step, "global_step": global_step},
                           self.best if is_best else None, history, steps)
        return final

    def _write_dir(self, tmp: Path, final: Path, model: SplitModel, optim_tensors: dict[str, torch.Tensor],
                   groups: dict[str, Any], *, epoch: int, step: int, global_step: int, elapsed: float,
                   history: list[dict[str, Any]], finished: bool) -> bool:
        """The checkpoint (weights, optimiser, sealed state.json) into ``tmp``, renamed to ``final``; whether it is
        the best so far."""
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        tensors = dict(optim_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "optim.safetensors"))
        val_loss = history[-1]["val_loss"] if history else None
        is_best = val_loss is not None and math.isfinite(val_loss) and (self.best is None or val_loss < self.best)
        if is_best:
            self.best = val_loss
        st = {"format": FORMAT_VERSION, "kind": self.kind, "system": self.cfg.to_dict(), "model": self.mcfg.to_dict(),
              "train": self.tcfg.to_dict(), "normaliser": self.normaliser.to_dict(), "epoch": epoch, "step": step,
              "global_step": global_step, "elapsed_s": elapsed, "history": history, "optim": groups,
              "best_val_loss": self.best, "finished": finished,
              "fronthaul_bits_per_ap": model.fronthaul_bits_per_ap}
        if self.extra is not None:
            st["distributed"] = self.extra
        with open(tmp / "state.json", "w") as f:
            json.dump(seal_checkpoint(tmp, st), f, indent=1)
        for p in tmp.iterdir():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return is_best


def read_checkpoint(out: Path, log: Callable[[str], Any] | None = None,
                    ) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(checkpoint dir, state.json, model tensors, optim tensors) of the checkpoint a resumed run of ``out``
    continues from (verified; ``best.json``'s when the latest one is corrupted, :func:`resume_checkpoint`)."""
    ckpt = resume_checkpoint(Path(out), log)
    state = read_state(ckpt)
    return ckpt, state, load_tensors(ckpt / "model.safetensors"), load_tensors(ckpt / "optim.safetensors")
