"""Fronthaul accounting (Section III-D, V-C): the paper's figures and the sizes of the messages actually sent."""

from __future__ import annotations

import math

import pytest

import cfisac
from cfisac.estimators import create
from cfisac.fronthaul import (
    centralized_bits,
    dvae_bits,
    dvqvae_bits,
    format_bits,
    fronthaul_table,
    fully_distributed_bits,
    learned_bits,
    measured_bits,
    transmit_signal_bits,
)
from cfisac.models import ModelConfig, payload_shape


def test_paper_figures_exactly():
    cfg = cfisac.SystemConfig.preset("paper")
    mcfg = ModelConfig.preset("paper")
    assert payload_shape("dvqvae", cfg, mcfg) == (512, 4, 64, 64)  # 4x downsampling of 16 x 256 x 256
    L = 4 * 64 * 64
    assert L == 16384
    assert fully_distributed_bits(cfg) == 192 == 96 * 2
    assert centralized_bits(cfg) == 2 * 32 * 16 * 256 * 256 == 67_108_864
    assert dvqvae_bits(L, 32) == 5 * 16384 == 81_920 == learned_bits("dvqvae", cfg, mcfg)
    assert [format_bits(b) for b in (192, 67_108_864, 81_920)] == ["192 bit", "67 Mbit", "82 kbit"]
    rows = {r.scheme: r for r in fronthaul_table(cfg)}
    assert rows["D-VQVAE"].bits_per_ap == 81_920
    red = rows["D-VQVAE"].reduction_vs_centralized
    assert red == pytest.approx(1 - 81_920 / 67_108_864) and math.floor(100 * red) == 99
    assert rows["D-VAE"].bits_per_ap == dvae_bits(512 * 16384) == 32 * 512 * 16384
    assert all(r.downlink_bits_per_ap == 0 for r in rows.values())  # the paper's receive APs know only Y_m
    assert transmit_signal_bits(cfg) == 64 * 2 * 16 * 256 * 256


@pytest.mark.parametrize("kind", ["dvqvae", "dvae", "cnn"])
def test_bits_from_the_messages_actually_sent(kind):
    cfg = cfisac.SystemConfig.preset("tiny")
    mcfg = ModelConfig.preset("tiny")
    from cfisac.data import simulate_batch

    b = simulate_batch(cfg, 0, range(3))
    est = create(kind, cfg, model_preset="tiny")
    msgs = est.encode(b["y"], b["x"])
    assert len(msgs) == cfg.n_rx and all(len(m) == 3 for m in msgs)
    sent = measured_bits([m for ap in msgs for m in ap])
    assert sent == est.fronthaul_bits_per_ap == learned_bits(kind, cfg, mcfg)
    shape = payload_shape(kind, cfg, mcfg)
    if kind == "dvqvae":
        L = math.prod(shape[1:])
        assert sent == 8 * math.ceil(L * math.log2(mcfg.num_codes) / 8)
    elif kind == "dvae":
        assert sent == 32 * math.prod(shape)
    else:
        assert sent == centralized_bits(cfg) == 64 * cfg.n_rx_antennas * cfg.n_subcarriers * cfg.n_symbols


def test_measured_bits_and_errors():
    assert measured_bits([b"\x00" * 3, b"\x00" * 5]) == 32.0
    with pytest.raises(ValueError):
        measured_bits([])
    with pytest.raises(ValueError, match="power of two"):
        dvqvae_bits(10, 30)
    with pytest.raises(ValueError):
        dvae_bits(0)
