import pytest
import torch

import cfisac
from cfisac import SystemConfig
from cfisac.seeding import sample_generator
from cfisac.waveform import qam16


def test_qam16_unit_power_and_constellation():
    s = qam16((200000,), sample_generator(0, 0, "symbols"))
    assert float(s.abs().pow(2).mean()) == pytest.approx(1.0, rel=0.01)
    levels = sorted(set((s.real * 10**0.5).round().tolist()))
    assert levels == [-3.0, -1.0, 1.0, 3.0]


def test_per_ap_power_meets_p_with_equality_at_the_busiest_ap():
    cfg = SystemConfig.preset("tiny").replace(subcarrier_stride=1, power_dbm=20.0)
    scenes = cfisac.sample_scenes(cfg, 4, seed=1)
    links = cfisac.communication_links(cfg, scenes, seed=1)
    W = links.precoders.reshape(4, cfg.n_subcarriers, cfg.n_tx, cfg.n_tx_antennas, cfg.n_users)
    per_ap = W.abs().pow(2).sum(dim=(1, 3, 4))  # sum_i ||W_{n,i}||_F^2
    torch.testing.assert_close(per_ap.max(dim=1).values, torch.full((4,), 0.1, dtype=torch.float64))
    assert bool((per_ap <= 0.1 * (1 + 1e-12)).all())
    # the realised signal carries that power on average (unit-power symbols)
    x = cfisac.transmit_signals(cfg, scenes, seed=1, dtype=torch.complex128, links=links)
    realised = x.abs().pow(2).sum(dim=(2, 3)).mean(-1)  # [B, N]: sum over antennas, subcarriers; mean over t
    torch.testing.assert_close(realised, per_ap, rtol=0.15, atol=0.0)


def test_mmse_precoding_is_near_diagonal_at_high_snr():
    cfg = SystemConfig.preset("tiny").replace(power_dbm=60.0, user_noise_dbm=-120.0)
    scenes = cfisac.sample_scenes(cfg, 3, seed=2)
    links = cfisac.communication_links(cfg, scenes, seed=2)
    eff = links.channels.conj() @ links.precoders  # h_k^H w_l
    diag = torch.diagonal(eff, dim1=-2, dim2=-1).abs().pow(2)
    off = eff.abs().pow(2).sum(-1) - diag
    assert float((off / diag).max()) < 1e-6
    assert float(links.sinr.min()) > 1e3


def test_transmit_signal_shape_dtype_and_errors():
    cfg = SystemConfig.preset("tiny")
    scenes = cfisac.sample_scenes(cfg, 2, seed=0)
    x = cfisac.transmit_signals(cfg, scenes, seed=0)
    assert x.shape == (2, cfg.n_tx, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols) and x.dtype == torch.complex64
    with pytest.raises(ValueError, match="dtype"):
        cfisac.transmit_signals(cfg, scenes, seed=0, dtype=torch.float32)
    scenes.user_positions = None
    with pytest.raises(ValueError, match="user_positions"):
        cfisac.transmit_signals(cfg, scenes, seed=0)
