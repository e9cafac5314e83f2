"""One contract for every registered estimator and every AP front end (as scikit-learn's parametrize_with_checks).

Each estimator of :func:`cfisac.estimators.available` is built at the ``tiny`` preset (learned schemes untrained,
the monostatic one on its own co-located configuration) and must: return positions / velocities [B, Q, 2] float64
on the CPU, finite positions, finite velocities (NaN everywhere for the monostatic BS, which cannot see them),
report a non-negative integer ``fronthaul_bits_per_ap``, give identical estimates on a second call, and reject bad
input (wrong shape, batch mismatch, real dtype, NaN echoes, tensors on two devices) with a ``ValueError`` naming the
tensor before any work. Each front end must give its declared output shape, finite float values, the same output
twice, and reject echoes of the wrong shape.
"""

from __future__ import annotations

import pytest
import torch

import cfisac
from cfisac.experiments.common import monostatic_config
from cfisac.models.front_ends import available_front_ends, make_front_end

NAMES = cfisac.estimators.available()
TINY = cfisac.SystemConfig.preset("tiny").replace(power_dbm=55.0)


def _config(name: str) -> cfisac.SystemConfig:
    return monostatic_config(TINY) if name.startswith("monostatic") else TINY


_DATA: dict[str, tuple] = {}


def _data(cfg: cfisac.SystemConfig) -> tuple[torch.Tensor, torch.Tensor]:
    key = cfg.to_json()
    if key not in _DATA:
        scenes = cfisac.sample_scenes(cfg, batch_size=2, seed=11)
        x = cfisac.transmit_signals(cfg, scenes, seed=11)
        _DATA[key] = (x, cfisac.sensing_echoes(cfg, scenes, x, noise=True, seed=11))
    return _DATA[key]


def _create(name: str, cfg: cfisac.SystemConfig):
    if name in ("dvqvae", "dvae", "cnn"):
        return cfisac.estimators.create(name, cfg, model_preset="tiny", seed=0)
    return cfisac.estimators.create(name, cfg)


def test_registry_lists_the_schemes():
    for name in ("prior", "music", "music-gated", "cs", "monostatic", "ml", "ml-joint", "dvqvae", "dvae", "cnn"):
        assert name in NAMES
    with pytest.raises(ValueError, match="unknown estimator 'nosuch'"):
        cfisac.estimators.create("nosuch", TINY)


@pytest.mark.parametrize("name", NAMES)
def test_estimator_contract(name):
    cfg = _config(name)
    x, y = _data(cfg)
    est = _create(name, cfg)
    assert isinstance(est.fronthaul_bits_per_ap, int) and est.fronthaul_bits_per_ap >= 0
    with torch.no_grad():
        out = est(y, x)
        again = est(y, x)
    Q = cfg.n_targets
    for t in (out.positions, out.velocities):
        assert t.shape == (2, Q, 2) and t.dtype == torch.float64 and t.device.type == "cpu"
    assert bool(torch.isfinite(out.positions).all())
    if name.startswith("monostatic"):
        assert bool(torch.isnan(out.velocities).all())
    else:
        assert bool(torch.isfinite(out.velocities).all())
    assert torch.equal(out.positions, again.positions)
    assert torch.equal(out.velocities.nan_to_num(), again.velocities.nan_to_num())


@pytest.mark.parametrize("name", NAMES)
def test_estimator_rejects_bad_input(name):
    cfg = _config(name)
    x, y = _data(cfg)
    est = _create(name, cfg)
    bad_y = y.clone()
    bad_y[0, 0, 0, 0, 0] = complex(float("nan"), 0.0)
    cases = [
        (y[:, :, :-1], x, r"\by\b.*shape"),
        (y, x[:1], r"\bx\b.*shape"),
        (y.real, x, r"\by\b.*complex"),
        (y, x.real, r"\bx\b.*complex"),
        (bad_y, x, r"\by\b.*NaN"),
        (y[None], x, r"\by\b.*shape"),
    ]
    if torch.cuda.is_available():
        cases.append((y.cuda(), x, "device"))
    for yy, xx, match in cases:
        with pytest.raises(ValueError, match=match):
            est(yy, xx)


@pytest.mark.parametrize("name", available_front_ends())
def test_front_end_contract(name):
    x, y = _data(TINY)
    fe = make_front_end(name, TINY, ap_index=0)
    ym = y[:, 0]
    xx = x if fe.needs_x else None
    with torch.no_grad():
        out = fe(ym, xx)
        again = fe(ym, xx)
    assert tuple(out.shape) == (2, *fe.output_shape)
    assert out.is_floating_point() and bool(torch.isfinite(out).all())
    assert float(out.abs().max()) > 0
    assert torch.equal(out, again)
    with pytest.raises(ValueError):
        fe(ym[:, :-1], xx)
