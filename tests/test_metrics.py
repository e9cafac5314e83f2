"""RMSE confidence intervals: a literal bootstrap reference, degenerate cases and coverage."""

from __future__ import annotations

import math

import pytest
import torch

from cfisac.metrics import rmse_confidence_interval


def literal_bootstrap(errors: torch.Tensor, level: float, n_boot: int, seed: int) -> tuple[float, float]:
    """Scene resampling written out loop by loop, with the same random indices."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, errors.shape[0], (n_boot, errors.shape[0]), generator=gen)
    values = []
    for row in idx.tolist():
        sq = [float(errors[b, q]) ** 2 for b in row for q in range(errors.shape[1])]
        values.append(math.sqrt(sum(sq) / len(sq)))
    values.sort()
    q = torch.tensor(values, dtype=torch.float64)
    a = (1 - level) / 2
    return float(torch.quantile(q, a)), float(torch.quantile(q, 1 - a))


def test_matches_literal_bootstrap():
    e = torch.rand(13, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 5
    got = rmse_confidence_interval(e, level=0.9, n_boot=300, seed=4)
    want = literal_bootstrap(e, 0.9, 300, 4)
    assert got == pytest.approx(want, rel=1e-12)
    rmse = float(e.pow(2).mean().sqrt())
    assert got[0] < rmse < got[1]


def test_equal_scenes_give_a_point_and_nan_gives_nan():
    e = torch.full((20, 2), 3.0, dtype=torch.float64)
    assert rmse_confidence_interval(e) == pytest.approx((3.0, 3.0))
    lo, hi = rmse_confidence_interval(torch.full((5, 2), float("nan")))
    assert math.isnan(lo) and math.isnan(hi)


def test_resamples_whole_scenes():
    # one scene with a huge error on both targets: resampling targets independently would make the interval narrower
    e = torch.ones(10, 2, dtype=torch.float64)
    e[0] = 30.0
    lo, hi = rmse_confidence_interval(e, n_boot=4000)
    assert lo == pytest.approx(1.0)  # resamples without scene 0 exist
    assert hi > 14.0  # and resamples with it twice or more: sqrt((3*900 + 7) / 10) = 16.5


def test_coverage_of_gaussian_errors():
    # errors ~ N(0, 1) per target: the true RMSE is 1; a 90 % interval covers it in about 90 % of experiments
    gen = torch.Generator().manual_seed(0)
    hits = 0
    trials = 200
    for k in range(trials):
        e = torch.randn(60, 2, generator=gen, dtype=torch.float64)
        lo, hi = rmse_confidence_interval(e, level=0.9, n_boot=400, seed=k)
        hits += lo <= 1.0 <= hi
    assert 0.8 <= hits / trials <= 0.97


@pytest.mark.parametrize("bad", [torch.ones(0, 2), torch.ones(4)])
def test_bad_shapes(bad):
    with pytest.raises(ValueError, match="errors must be"):
        rmse_confidence_interval(bad)
    with pytest.raises(ValueError, match="level"):
        rmse_confidence_interval(torch.ones(3, 2), level=1.5)
