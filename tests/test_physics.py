"""The physics kernel pins each convention once: steering vectors (and their relation to Sionna's ULA), the Doppler
sign, the Eq. (6) phase against the simulator, the inverse bistatic geometry and the users' conj(h)."""

from __future__ import annotations

import math

import pytest
import torch

import cfisac
from cfisac.config import SPEED_OF_LIGHT
from cfisac.geometry import bistatic_geometry
from cfisac.physics import (
    ApLayout,
    SensingGrid,
    aoa_direction,
    delay_phase,
    direction_cosine,
    doppler_phase,
    path_phase,
    ray_distance,
    ray_exit,
    transmit_beam,
    wrap_cosine,
)
from cfisac.physics import steering_vectors as steer

F64 = torch.float64


def test_steering_vector_elementwise_and_sionna_relation():
    u = torch.tensor([-0.7, 0.0, 0.31, 1.0], dtype=F64)
    a = steer(u, 5, 0.5, torch.complex128)
    for j, uj in enumerate(u.tolist()):
        for k in range(5):
            want = complex(math.cos(-math.pi * k * uj), math.sin(-math.pi * k * uj)) / math.sqrt(5)
            assert complex(a[j, k]) == pytest.approx(want, abs=1e-14)
    # Sionna's ULA response exp(+j 2 pi / lambda p_k . e) with element k at p_k = -k d axis reproduces ours
    wavelength, d = 0.01, 0.005
    axis = torch.tensor([math.cos(0.4), math.sin(0.4)], dtype=F64)
    e = torch.tensor([math.cos(1.3), math.sin(1.3)], dtype=F64)
    p = -torch.arange(4, dtype=F64)[:, None] * d * axis
    sionna = torch.polar(torch.ones(4, dtype=F64), 2 * math.pi / wavelength * (p @ e)) / 2
    ours = steer((axis @ e).reshape(1), 4, d / wavelength, torch.complex128)[0]
    assert torch.allclose(ours, sionna, atol=1e-12)


def test_doppler_positive_for_receding_target():
    cfg = cfisac.SystemConfig.preset("tiny")
    g = torch.tensor([[[50.0, 50.0]]], dtype=F64)
    geo0 = bistatic_geometry(cfg, g, torch.zeros(1, 1, 2, dtype=F64))
    away = geo0.tx.direction[:, 0] + geo0.rx.direction[:, 0]  # moving along e_tx + e_rx: away from both APs
    v = 3.0 * away / away.norm(dim=-1, keepdim=True)  # [1, 1, 2]
    geo = bistatic_geometry(cfg, g, v)
    assert float(geo.doppler[0, 0, 0, 0]) > 0  # transmit AP 0, receive AP 0
    assert float(bistatic_geometry(cfg, g, -v).doppler[0, 0, 0, 0]) < 0  # approaching: negative
    # f_D = (v . e_tx + v . e_rx) / lambda, Eq. (9)
    want = float((v * away).sum()) / cfg.wavelength
    assert float(geo.doppler[0, 0, 0, 0]) == pytest.approx(want, rel=1e-12)


def test_phase_of_eq6_against_literal_and_simulator():
    cfg = cfisac.SystemConfig.preset("tiny").replace(n_targets=1)
    grid = SensingGrid.from_config(cfg)
    d, f = torch.tensor([87.3], dtype=F64), torch.tensor([-1234.5], dtype=F64)
    ph = path_phase(grid, d, f)[0]
    i, t = cfisac.sensing.sensing_indices(cfg)
    for a in (0, 3, cfg.n_subcarriers - 1):
        for b in (0, 2, cfg.n_symbols - 1):
            arg = -2 * math.pi * (float(i[a]) * float(d) / SPEED_OF_LIGHT * cfg.subcarrier_spacing
                                  - float(t[b]) * float(f) * cfg.symbol_duration)
            assert complex(ph[a, b]) == pytest.approx(complex(math.cos(arg), math.sin(arg)), abs=1e-12)
    assert torch.allclose(ph, delay_phase(grid, d)[0][:, None] * doppler_phase(grid, f)[0][None, :])
    # one target, reflection only towards (n=1, m=0): the simulator's echo is gain * a_r (x) phase * beam
    scenes = cfisac.sample_scenes(cfg, batch_size=1, seed=3)
    beta = torch.zeros_like(scenes.reflection)
    beta[0, 1, 0, 0] = 0.8 - 0.3j
    scenes.reflection = beta
    x = cfisac.transmit_signals(cfg, scenes, seed=3).to(torch.complex128)
    y = cfisac.sensing.noiseless_echoes(cfg, scenes, x)
    geo = bistatic_geometry(cfg, scenes.positions.double(), scenes.velocities.double())
    dist = geo.bistatic_range[0, 1, 0]
    pl = cfg.pathloss_ref * (dist / cfg.reference_distance) ** (-cfg.pathloss_exponent)
    beam = transmit_beam(x[:, 1], geo.tx.cos_angle[:, 1], cfg.antenna_spacing)[0, 0]  # [Ns, Ts]
    a_r = steer(geo.rx.cos_angle[0, 0], cfg.n_rx_antennas, cfg.antenna_spacing, torch.complex128)[0]
    want = (0.8 - 0.3j) * pl.sqrt()[0] * a_r[:, None, None] * path_phase(grid, dist, geo.doppler[0, 1, 0])[0] * beam
    assert torch.allclose(y[0, 0], want, rtol=1e-9, atol=1e-12 * float(want.abs().max()))
    assert float(y[0, 1].abs().max()) == 0.0


def test_inverse_geometry_recovers_points():
    cfg = cfisac.SystemConfig.preset("quick")
    lay = ApLayout.from_config(cfg)
    g = torch.tensor([[12.0, 70.0], [55.0, 3.0], [91.0, 48.0]], dtype=F64)
    for m in range(cfg.n_rx):
        u = direction_cosine(g, lay.rx[m], lay.rx_axes[m])
        e = aoa_direction(u, lay.rx_axes[m], lay.rx_side[m])
        assert torch.allclose((e * lay.rx_axes[m]).sum(-1), u, atol=1e-12)
        for n in range(cfg.n_tx):
            d = (g - lay.rx[m]).norm(dim=-1) + (g - lay.tx[n]).norm(dim=-1)
            rho = ray_distance(d, lay.rx[m], e, lay.tx[n])
            assert torch.allclose(lay.rx[m] + rho[:, None] * e, g, atol=1e-9)
    # a co-located AP: the round trip d gives rho = d / 2
    p = torch.tensor([50.0, 0.0], dtype=F64)
    e = torch.tensor([0.6, 0.8], dtype=F64)
    assert float(ray_distance(torch.tensor(40.0, dtype=F64), p, e, p)) == pytest.approx(20.0)


def test_ray_exit_and_wrap():
    lo, hi = torch.tensor([0.0, 0.0], dtype=F64), torch.tensor([100.0, 100.0], dtype=F64)
    starts = torch.tensor([[50.0, 0.0], [0.0, 50.0], [50.0, -10.0], [50.0, 50.0]], dtype=F64)
    dirs = torch.tensor([[0.0, 1.0], [math.sqrt(0.5), math.sqrt(0.5)], [0.0, -1.0], [1.0, 0.0]], dtype=F64)
    got = ray_exit(starts, dirs, lo, hi)
    assert torch.allclose(got, torch.tensor([100.0, 50 * math.sqrt(2), 0.0, 50.0], dtype=F64))
    du = torch.tensor([1.9, -1.9, 0.2, 1.0], dtype=F64)
    assert torch.allclose(wrap_cosine(du, 0.5), torch.tensor([-0.1, 0.1, 0.2, -1.0], dtype=F64), atol=1e-12)


def test_users_channel_is_applied_conjugated():
    cfg = cfisac.SystemConfig.preset("tiny")
    scenes = cfisac.sample_scenes(cfg, batch_size=1, seed=0)
    links = cfisac.communication_links(cfg, scenes, seed=0)
    H, W = links.channels, links.precoders  # [B, Ns, K, NNt], [B, Ns, NNt, K]
    eff = H.conj() @ W  # y_k = h_k^H W s: the MMSE precoder makes this close to diagonal
    diag = torch.diagonal(eff, dim1=-2, dim2=-1).abs().mean()
    off = (eff - torch.diag_embed(torch.diagonal(eff, dim1=-2, dim2=-1))).abs().mean()
    wrong = H @ W  # without the conjugate the users' streams are not separated
    diag_w = torch.diagonal(wrong, dim1=-2, dim2=-1).abs().mean()
    off_w = (wrong - torch.diag_embed(torch.diagonal(wrong, dim1=-2, dim2=-1))).abs().mean()
    assert diag > 50 * off  # MMSE at high SNR: nearly zero-forcing on h^H
    assert diag_w < 10 * off_w
