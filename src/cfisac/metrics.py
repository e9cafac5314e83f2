"""Accuracy metrics: RMSE of positions (m) and velocities (m/s) after the optimal assignment of estimates to targets.

Targets are unordered, so for every scene the estimates are matched to the true targets by the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) on the squared position error; velocity errors use the same assignment.
RMSEs average the squared error norm over scenes and targets, the same averaging as
:func:`cfisac.crlb.root_crlb` (position: ``sqrt(mean_q (CRLB_xx + CRLB_yy))``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["AccuracyReport", "accuracy", "assign_targets", "rmse_confidence_interval"]


def assign_targets(est_positions: torch.Tensor, true_positions: torch.Tensor) -> torch.Tensor:
    """Permutation [B, Q] such that ``est_positions[b, perm[b, q]]`` is the estimate matched to true target q."""
    if est_positions.shape != true_positions.shape or est_positions.shape[-1] != 2:
        raise ValueError(f"positions must both be [B, Q, 2], got {tuple(est_positions.shape)} and "
                         f"{tuple(true_positions.shape)}")
    e = est_positions.detach().double().cpu().numpy()
    t = true_positions.detach().double().cpu().numpy()
    cost = ((t[:, :, None, :] - e[:, None, :, :]) ** 2).sum(-1)  # [B, Qtrue, Qest]
    cost = np.where(np.isfinite(cost), cost, 1e30)
    perm = np.empty(cost.shape[:2], dtype=np.int64)
    for b in range(cost.shape[0]):
        rows, cols = linear_sum_assignment(cost[b])
        perm[b, rows] = cols
    return torch.from_numpy(perm)


@dataclass
class AccuracyReport:
    """Per-target errors [B, Q] (m, m/s; velocity NaN where the estimator gives none) and their RMSEs."""

    position_errors: torch.Tensor
    velocity_errors: torch.Tensor

    @property
    def position_rmse(self) -> float:
        return float(self.position_errors.pow(2).mean().sqrt())

    @property
    def velocity_rmse(self) -> float:
        return float(self.velocity_errors.pow(2).mean().sqrt())


def accuracy(est_positions: torch.Tensor, est_velocities: torch.Tensor, true_positions: torch.Tensor,
             true_velocities: torch.Tensor) -> AccuracyReport:
    """Errors after the optimal (Hungarian, on positions) assignment of estimates to true targets."""
    perm = assign_targets(est_positions, true_positions)
    idx = perm[..., None].expand(-1, -1, 2).to(est_positions.device)
    p = torch.gather(est_positions.double(), 1, idx)
    v = torch.gather(est_velocities.double(), 1, idx)
    pe = torch.linalg.vector_norm(p - true_positions.double().to(p.device), dim=-1).cpu()
    ve = torch.linalg.vector_norm(v - true_velocities.double().to(v.device), dim=-1).cpu()
    return AccuracyReport(pe, ve)


def rmse_confidence_interval(errors: torch.Tensor, *, level: float = 0.95, n_boot: int = 2000,
                             seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of an RMSE over scenes: (low, high).

    ``errors`` [B, Q] per-target errors (m or m/s) of B scenes; the targets of one scene share its echoes, so whole
    scenes are resampled (B with replacement, ``n_boot`` times, from an explicit ``seed``) and the RMSE
    ``sqrt(mean(errors^2))`` of each resample is computed; the interval holds the central ``level`` of them.
    NaN errors (a scheme without velocities) give (NaN, NaN).
    """
    if errors.dim() != 2 or errors.shape[0] == 0:
        raise ValueError(f"errors must be [B, Q] with B >= 1, got {tuple(errors.shape)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    e = errors.detach().double().cpu()
    if not bool(torch.isfinite(e).all()):
        return float("nan"), float("nan")
    per_scene = e.pow(2).mean(1)  # [B]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, e.shape[0], (n_boot, e.shape[0]), generator=gen)
    boot = per_scene[idx].mean(1).sqrt()
    a = (1.0 - level) / 2
    lo, hi = torch.quantile(boot, torch.tensor([a, 1.0 - a], dtype=torch.float64))
    return float(lo), float(hi)
