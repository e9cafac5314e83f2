"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest
import torch

import cfisac


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one intra-op thread avoids the OpenMP synchronisation costs of a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_cfg() -> cfisac.SystemConfig:
    """The ``tiny`` preset at a power where every classical scheme is above its threshold."""
    return cfisac.SystemConfig.preset("tiny").replace(power_dbm=55.0)


@pytest.fixture(scope="module")
def tiny_batch(tiny_cfg):
    """Four noisy ``tiny`` scenes (seed 7): ``(scenes, x, y)``."""
    scenes = cfisac.sample_scenes(tiny_cfg, batch_size=4, seed=7)
    x = cfisac.transmit_signals(tiny_cfg, scenes, seed=7)
    y = cfisac.sensing_echoes(tiny_cfg, scenes, x, noise=True, seed=7)
    return scenes, x, y
