"""The prior predictor: ignores the echoes and predicts the best fixed guess of the scene prior.

A scheme that does not beat this has learned nothing from the echoes. The errors are measured after the optimal
assignment of estimates to targets (:func:`cfisac.metrics.accuracy`), so the best fixed guess is not the area's
centre repeated Q times: Q distinct fixed positions do better (at ``quick``, Q = 2 in a 100 m square: 37.2 m
against the centre's 40.8 m), and a model that learns only to output them looks 10 % better than the centre while
it has extracted nothing. The positions minimise the mean assigned squared error over draws of the scene prior
(Q targets independent and uniform in the area, as :func:`cfisac.scene.sample_scenes` draws them; Lloyd
iterations with the optimal assignment from several seeded starts on ``PRIOR_SAMPLES`` draws: a function of the
area and Q alone); the velocity guess is zero (velocities are symmetric about zero and
independent of the positions, so zero is optimal for the assigned pairs). :func:`area_centre_guess` is the older,
weaker reference (quoted as "prior (area centre)" in benchmark files written before this predictor).
"""

from __future__ import annotations

import itertools
import math

import torch

from ..config import SystemConfig
from . import Estimate, register
from .base import check_inputs

__all__ = ["PRIOR_SAMPLES", "PriorEstimator", "area_centre_guess", "best_fixed_guess"]

PRIOR_SAMPLES = 4096  # draws of the scene prior the fixed guess is fitted on
PRIOR_SEED = 2**31 - 1  # the seed of the fit's draws
_STARTS = 4  # seeded starts of the Lloyd iterations (the best is kept)
_MAX_PERMUTATION_TARGETS = 4  # the assignment enumerates the Q! permutations up to here (Hungarian beyond)
_FITTED: dict[str, torch.Tensor] = {}


def area_centre_guess(cfg: SystemConfig) -> torch.Tensor:
    """The area's centre for every target: [Q, 2] float64."""
    (x0, x1), (y0, y1) = cfg.area
    return torch.tensor([[(x0 + x1) / 2, (y0 + y1) / 2]] * cfg.n_targets, dtype=torch.float64)


def _assigned(points: torch.Tensor, guess: torch.Tensor,
              perms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """For targets ``points`` [S, Q, 2] and a guess [Q, 2]: the targets reordered so that target k is matched to
    guess k [S, Q, 2], and each scene's assigned squared error summed over its targets [S]."""
    if perms is not None:  # exact: every permutation (cost [S, Q!])
        cost = ((points[:, perms] - guess) ** 2).sum((-1, -2))
        best = perms[cost.argmin(1)]  # [S, Q]: guess k takes target best[s, k]
        return torch.gather(points, 1, best[..., None].expand(-1, -1, 2)), cost.min(1).values
    from ..metrics import assign_targets

    perm = assign_targets(guess.expand_as(points), points)  # estimate perm[s, q] is matched to target q
    inv = torch.argsort(perm, 1)  # guess k takes target inv[s, k]
    out = torch.gather(points, 1, inv[..., None].expand(-1, -1, 2))
    return out, ((out - guess) ** 2).sum((-1, -2))


def best_fixed_guess(cfg: SystemConfig, *, samples: int = PRIOR_SAMPLES) -> torch.Tensor:
    """The Q fixed positions [Q, 2] float64 (sorted by x) that minimise the mean assigned squared position error
    over scenes of ``cfg``'s prior: Lloyd iterations (assign each scene's targets optimally, move each guess to the
    mean of its targets) from ``_STARTS`` seeded starts (Q drawn targets each), the best kept. Cached per (Q, area).
    """
    Q, ((x0, x1), (y0, y1)) = cfg.n_targets, cfg.area
    if Q == 1:  # the mean of the uniform prior, exactly
        return area_centre_guess(cfg)
    key = f"{Q}|{cfg.area}|{samples}"
    if key in _FITTED:
        return _FITTED[key].clone()
    gen = torch.Generator().manual_seed(PRIOR_SEED)
    u = torch.rand(samples, Q, 2, generator=gen, dtype=torch.float64)
    pts = torch.stack([x0 + (x1 - x0) * u[..., 0], y0 + (y1 - y0) * u[..., 1]], -1)  # [S, Q, 2]
    perms = (torch.tensor(list(itertools.permutations(range(Q)))) if Q <= _MAX_PERMUTATION_TARGETS else None)
    flat = pts.reshape(-1, 2)
    best, best_cost = area_centre_guess(cfg), math.inf
    for _ in range(_STARTS):
        guess = flat[torch.randperm(flat.shape[0], generator=gen)[:Q]].clone()
        cost = math.inf
        for _ in range(60):
            matched, err = _assigned(pts, guess, perms)
            new_cost = float(err.mean())
            guess = matched.mean(0)
            if new_cost >= cost * (1 - 1e-7):
                break
            cost = new_cost
        cost = float(_assigned(pts, guess, perms)[1].mean())
        if cost < best_cost:
            best, best_cost = guess, cost
    best = best[torch.argsort(best[:, 0])]
    _FITTED[key] = best
    return best.clone()


class PriorEstimator:
    """Predicts :func:`best_fixed_guess` for every scene and zero velocity (``guess="best"``), or the area's centre
    (``guess="centre"``, :func:`area_centre_guess`)."""

    name = "prior"
    fronthaul_bits_per_ap = 0

    def __init__(self, cfg: SystemConfig, *, guess: str = "best") -> None:
        if guess not in ("best", "centre"):
            raise ValueError(f"guess must be 'best' or 'centre', got {guess!r}")
        self.cfg, self.guess = cfg, guess
        self.positions = best_fixed_guess(cfg) if guess == "best" else area_centre_guess(cfg)  # [Q, 2]

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> Estimate:
        check_inputs(self.cfg, y, x)  # the same contract as every estimator, though the echoes are not used
        B, Q = y.shape[0], self.cfg.n_targets
        return Estimate(self.positions.expand(B, Q, 2).clone(), torch.zeros(B, Q, 2, dtype=torch.float64))


@register("prior")
def _create(cfg: SystemConfig, checkpoint: str | None = None, guess: str = "best") -> PriorEstimator:
    return PriorEstimator(cfg, guess=guess)
