"""The prior predictor: ignores the echoes and predicts the mean of the scene prior for every target.

Targets uniform in the area and velocities uniform in [-max_speed, max_speed] give the area's centre and zero
velocity. A scheme that does not beat this has learned nothing from the echoes.
"""

from __future__ import annotations

import torch

from ..config import SystemConfig
from . import Estimate, register
from .base import check_inputs


class PriorEstimator:
    name = "prior"
    fronthaul_bits_per_ap = 0

    def __init__(self, cfg: SystemConfig) -> None:
        self.cfg = cfg

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> Estimate:
        check_inputs(self.cfg, y, x)  # the same contract as every estimator, though the echoes are not used
        B, Q = y.shape[0], self.cfg.n_targets
        (x0, x1), (y0, y1) = self.cfg.area
        centre = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2], dtype=torch.float64)
        return Estimate(centre.expand(B, Q, 2).clone(), torch.zeros(B, Q, 2, dtype=torch.float64))


@register("prior")
def _create(cfg: SystemConfig, checkpoint: str | None = None) -> PriorEstimator:
    return PriorEstimator(cfg)
