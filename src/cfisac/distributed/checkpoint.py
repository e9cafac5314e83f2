"""Checkpoints of distributed runs in the format of :func:`cfisac.train.train` (so ``cfisac evaluate``,
``cfisac.estimators.create`` and an in-process ``--resume`` read them, and vice versa).

Layout (``cfisac.train`` docstring): ``out/ckpt-eEEEE-sSSSSSS/{model,optim}.safetensors`` + ``state.json``, written to
a temporary directory and renamed, then ``out/latest.json`` (and ``best.json``) point to it atomically. The CPU rank
writes it from its own decoder and the states every AP sent it (``STATE`` messages); ``state.json`` gains a
``distributed`` entry (runtime options, world size). Multi-node: only the CPU rank's node writes; resuming needs
that directory on the CPU rank's node only (the CPU sends every AP its state, paper Step 1). Checksums and
temporaries as in :mod:`cfisac.train`: ``state.json`` carries the SHA-256 of every file, :func:`read_checkpoint`
verifies them (falling back to ``best.json``'s checkpoint when the latest one is corrupted).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .. import train as _train
from ..config import SystemConfig
from ..models import LabelNormaliser, ModelConfig, SplitModel

__all__ = ["CheckpointWriter", "read_checkpoint"]


class CheckpointWriter:
    """Writes checkpoints of one run directory exactly as ``cfisac.train.train``'s ``save`` does."""

    def __init__(self, out: Path, *, kind: str, cfg: SystemConfig, mcfg: ModelConfig, tcfg: _train.TrainConfig,
                 normaliser: LabelNormaliser, extra: dict[str, Any] | None = None, plot: bool = True,
                 best: float | None = None, log: Callable[[str], Any] = print) -> None:
        self.out, self.kind, self.cfg, self.mcfg, self.tcfg = Path(out), kind, cfg, mcfg, tcfg
        self.normaliser, self.extra, self.plot, self.best, self.log = normaliser, extra or {}, plot, best, log

    def write(self, model: SplitModel, optim_tensors: dict[str, torch.Tensor], groups: dict[str, Any], *,
              epoch: int, step: int, global_step: int, elapsed: float, history: list[dict[str, Any]],
              steps: Sequence[dict[str, Any]], finished: bool) -> Path:
        """``model`` holds every AP's received state (its codebooks are copied to the CPU side here)."""
        out = self.out
        model.sync_codebooks()
        name = f"ckpt-e{epoch:04d}-s{step:06d}"
        _train.remove_stale_checkpoint_temporaries(out)
        tmp = out / f".tmp-{name}-{os.getpid()}"
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
        st = {"format": _train.FORMAT_VERSION, "kind": self.kind, "system": self.cfg.to_dict(),
              "model": self.mcfg.to_dict(), "train": self.tcfg.to_dict(), "normaliser": self.normaliser.to_dict(),
              "epoch": epoch, "step": step, "global_step": global_step, "elapsed_s": elapsed, "history": history,
              "optim": groups, "best_val_loss": self.best, "finished": finished,
              "fronthaul_bits_per_ap": model.fronthaul_bits_per_ap, "distributed": self.extra}
        with open(tmp / "state.json", "w") as f:
            json.dump(_train.seal_checkpoint(tmp, st), f, indent=1)
        for p in tmp.iterdir():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        final = out / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _train.publish_checkpoint(out, {"checkpoint": name, "epoch": epoch, "step": step, "global_step": global_step},
                                  self.best if is_best else None, history, steps)
        if self.plot:
            try:
                _train.plot_loss(out / "loss.png", history, steps, title=f"{self.kind}, lr {self.tcfg.lr:g} "
                                 "(distributed)")
            except Exception as err:  # plotting must never lose a checkpoint
                self.log(f"warning: loss plot failed: {err}")
        return final


def read_checkpoint(out: Path, log: Callable[[str], Any] | None = None,
                    ) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(checkpoint dir, state.json, model tensors, optim tensors) of ``out/latest.json`` (verified; ``best.json``'s
    when the latest checkpoint is corrupted, see :func:`cfisac.train.resume_checkpoint`)."""
    ckpt = _train.resume_checkpoint(Path(out), log)
    state = _train.read_state(ckpt)
    return (ckpt, state, _train.load_tensors(ckpt / "model.safetensors"),
            _train.load_tensors(ckpt / "optim.safetensors"))
