"""The prior predictor's best fixed guess: optimal under the assigned error (it beats the area's centre, no nearby
guess beats it), the centre for one target, deterministic, and scored by the same metric as every estimator."""

from __future__ import annotations

import pytest
import torch

import cfisac
from cfisac.estimators.prior import PriorEstimator, area_centre_guess, best_fixed_guess
from cfisac.metrics import accuracy

QUICK = cfisac.SystemConfig.preset("quick")


def _assigned_rmse(guess: torch.Tensor, positions: torch.Tensor) -> float:
    est = guess.expand(positions.shape[0], -1, -1)
    return accuracy(est, torch.zeros_like(est), positions, torch.zeros_like(positions)).position_rmse


@pytest.fixture(scope="module")
def fresh_positions():
    """Targets of 3000 scenes of the simulator (not the draws the guess was fitted on)."""
    return cfisac.sample_scenes(QUICK, batch_size=3000, seed=5).positions.double()


def test_best_fixed_guess_beats_the_centre_and_is_a_local_optimum(fresh_positions):
    guess = best_fixed_guess(QUICK)
    assert guess.shape == (2, 2) and guess.dtype == torch.float64
    best = _assigned_rmse(guess, fresh_positions)
    centre = _assigned_rmse(area_centre_guess(QUICK), fresh_positions)
    # two targets uniform in a 100 m square: about 37.2 m against the centre's 40.8 m (sqrt(2 * 100^2 / 12))
    assert best == pytest.approx(37.2, abs=0.6) and centre == pytest.approx(40.8, abs=0.6)
    for k in range(2):  # moving any coordinate of the guess by 3 m makes it worse
        for d in range(2):
            for step in (-3.0, 3.0):
                moved = guess.clone()
                moved[k, d] += step
                assert _assigned_rmse(moved, fresh_positions) > best


def test_one_target_gets_the_centre_and_fits_are_deterministic():
    tiny = cfisac.SystemConfig.preset("tiny").replace(n_targets=1)
    assert torch.equal(best_fixed_guess(tiny), area_centre_guess(tiny))
    three = QUICK.replace(n_targets=3)
    a = best_fixed_guess(three)
    a[0, 0] = -1.0  # callers get a copy: the cache is not changed
    assert torch.equal(best_fixed_guess(three), best_fixed_guess(three)) and best_fixed_guess(three)[0, 0] > 0
    g = best_fixed_guess(three)
    assert bool((g[1:, 0] >= g[:-1, 0]).all())  # sorted by x, inside the area
    assert bool(((g >= 0) & (g <= 100)).all())


def test_prior_estimator_predicts_the_guess_and_zero_velocity():
    cfg = QUICK
    scenes = cfisac.sample_scenes(cfg, batch_size=3, seed=1)
    x = cfisac.transmit_signals(cfg, scenes, seed=1)
    y = cfisac.sensing_echoes(cfg, scenes, x, noise=True, seed=1)
    est = cfisac.estimators.create("prior", cfg)(y, x)
    assert torch.equal(est.positions, best_fixed_guess(cfg).expand(3, 2, 2))
    assert torch.equal(est.velocities, torch.zeros(3, 2, 2, dtype=torch.float64))
    centre = cfisac.estimators.create("prior", cfg, guess="centre")(y, x)
    assert torch.equal(centre.positions, torch.full((3, 2, 2), 50.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="guess must be 'best' or 'centre'"):
        PriorEstimator(cfg, guess="mean")
