"""Trained learned schemes behind the common estimator interface (Algorithm 2, online execution).

``cfisac.estimators.create("dvqvae" | "dvae" | "cnn", cfg, checkpoint="runs/quick/dvqvae")`` loads the checkpoint
(a run directory of ``cfisac train`` or one checkpoint directory; ``which="best"`` selects the lowest validation
loss instead of the latest) and returns a :class:`LearnedEstimator`: ``est(y, x)`` makes every receive AP encode its
Y_m into a fronthaul message (bit-packed indices for the D-VQVAE, float32 bytes otherwise), the CPU parses the
messages, dequantizes, decodes with X and rescales the min-max normalised output to metres and m/s.

Without a checkpoint the estimator is *untrained* (random weights, the prior's label range): only for timing and
shape checks; pass ``model_preset`` ("paper", "quick", "tiny") and ``seed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import SystemConfig
from ..estimators import Estimate, register
from ..estimators.base import check_inputs
from .config import ModelConfig
from .split import LabelNormaliser, SplitModel, build_model

__all__ = ["LearnedEstimator", "SHAPE_FIELDS", "prior_normaliser"]

# SystemConfig fields that fix the tensor shapes a trained model accepts.
SHAPE_FIELDS = ("n_tx", "n_rx", "n_tx_antennas", "n_rx_antennas", "n_subcarriers", "n_symbols", "n_targets")


def prior_normaliser(cfg: SystemConfig) -> LabelNormaliser:
    """Min-max normaliser of the scene prior's support (area, +-max_speed) in the label order psi = [g; v]."""
    (x0, x1), (y0, y1) = cfg.area
    Q, v = cfg.n_targets, cfg.max_speed
    lo = torch.tensor([x0, y0] * Q + [-v, -v] * Q, dtype=torch.float64)
    hi = torch.tensor([x1, y1] * Q + [v, v] * Q, dtype=torch.float64)
    return LabelNormaliser(lo, hi)


class LearnedEstimator:
    """A learned scheme in online execution (Algorithm 2); ``fronthaul_bits_per_ap`` from the message size."""

    def __init__(self, name: str, cfg: SystemConfig, model: SplitModel, normaliser: LabelNormaliser, *,
                 batch_size: int = 64, device: str | torch.device = "cpu", checkpoint: Path | None = None) -> None:
        if name != model.kind:
            raise ValueError(f"checkpoint holds a {model.kind!r} model, not {name!r}")
        bad = [f for f in SHAPE_FIELDS if getattr(cfg, f) != getattr(model.cfg, f)]
        if bad:
            raise ValueError(f"the system configuration differs from the model's in {bad}: the model was trained "
                             f"for {[getattr(model.cfg, f) for f in bad]}, got {[getattr(cfg, f) for f in bad]}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.name, self.cfg, self.model, self.normaliser = name, cfg, model, normaliser
        self.batch_size, self.device, self.checkpoint = batch_size, torch.device(device), checkpoint
        self.model.to(self.device).eval()
        self.model.sync_codebooks()
        self.fronthaul_bits_per_ap = model.fronthaul_bits_per_ap

    def encode(self, y: torch.Tensor, x: torch.Tensor | None = None) -> list[list[bytes]]:
        """AP side: messages[m][b] for echoes y [B, M, Mr, Ns, Ts] (x only for front ends that need it)."""
        return self.model.encode(y.to(self.device), None if x is None else x.to(self.device))

    def decode(self, messages: list[list[bytes]], x: torch.Tensor) -> Estimate:
        """CPU side: messages and X [B, N, Nt, Ns, Ts] -> positions / velocities [B, Q, 2] float64."""
        psi = self.normaliser.denormalise(self.model.decode(messages, x.to(self.device)))
        B, Q = psi.shape[0], self.cfg.n_targets
        return Estimate(psi[:, : 2 * Q].reshape(B, Q, 2).cpu(), psi[:, 2 * Q:].reshape(B, Q, 2).cpu())

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> Estimate:
        check_inputs(self.cfg, y, x)
        parts = []
        for lo in range(0, y.shape[0], self.batch_size):
            ys, xs = y[lo: lo + self.batch_size], x[lo: lo + self.batch_size]
            parts.append(self.decode(self.encode(ys, xs), xs))
        return Estimate(torch.cat([p.positions for p in parts]), torch.cat([p.velocities for p in parts]))


def _factory(name: str):
    def create(cfg: SystemConfig, checkpoint: str | Path | None = None, *, which: str = "latest",
               device: str = "cpu", batch_size: int = 64, model_preset: str = "quick", seed: int = 0,
               **model_overrides: Any) -> LearnedEstimator:
        if checkpoint is None:
            mcfg = ModelConfig.preset(model_preset, **model_overrides)
            return LearnedEstimator(name, cfg, build_model(name, cfg, mcfg, seed=seed), prior_normaliser(cfg),
                                    batch_size=batch_size, device=device)
        if model_overrides:
            raise ValueError(f"model options {sorted(model_overrides)} cannot be changed on a trained checkpoint")
        from ..checkpoint import load_checkpoint

        ck = load_checkpoint(checkpoint, which=which, device=device)
        return LearnedEstimator(name, cfg, ck.model, ck.normaliser, batch_size=batch_size, device=device,
                                checkpoint=ck.path)

    create.__name__ = f"create_{name}"
    return create


for _name in ("dvqvae", "dvae", "cnn"):
    register(_name)(_factory(_name))
