import cmath
import math

import pytest
import torch

import cfisac
from cfisac import Scene, SystemConfig
from cfisac.sensing import sensing_indices

C = 299792458.0


def steer(c: float, n: int) -> torch.Tensor:
    """Eq. (1)-(2) element by element, d = lambda / 2."""
    return torch.tensor([cmath.exp(-2j * math.pi * k * 0.5 * c) for k in range(n)], dtype=torch.complex128) / n**0.5


def literal_eq6(cfg: SystemConfig, scenes: Scene, x: torch.Tensor) -> torch.Tensor:
    """Eq. (6) (+ Eq. 29 clutter, Eq. 30 offsets with the subcarrier index) as plain loops, complex128."""
    B, M, Mr, Ns, Ts = x.shape[0], cfg.n_rx, cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols
    Nt, lam, dT, df = cfg.n_tx_antennas, cfg.wavelength, cfg.symbol_duration, cfg.subcarrier_spacing
    y = torch.zeros(B, M, Mr, Ns, Ts, dtype=torch.complex128)
    pts = [(scenes.positions, scenes.velocities, scenes.reflection)]
    if scenes.clutter_positions is not None:
        pts.append((scenes.clutter_positions, scenes.clutter_velocities, scenes.clutter_reflection))
    for b in range(B):
        for m in range(M):
            for n in range(cfg.n_tx):
                for pos, vel, beta in pts:
                    for q in range(pos.shape[1]):
                        g = pos[b, q].tolist()
                        v = vel[b, q].tolist()
                        tp, rp = cfg.tx_positions[n], cfg.rx_positions[m]
                        dn, dm = math.dist(tp, g), math.dist(g, rp)
                        en = [(g[0] - tp[0]) / dn, (g[1] - tp[1]) / dn]
                        em = [(g[0] - rp[0]) / dm, (g[1] - rp[1]) / dm]
                        cos_t = cfg.tx_axes[n][0] * en[0] + cfg.tx_axes[n][1] * en[1]
                        cos_r = cfg.rx_axes[m][0] * em[0] + cfg.rx_axes[m][1] * em[1]
                        tau = (dn + dm) / C
                        fd = (v[0] * en[0] + v[1] * en[1] + v[0] * em[0] + v[1] * em[1]) / C * cfg.carrier_frequency
                        pl = cfg.pathloss_ref * ((dn + dm) / cfg.reference_distance) ** (-cfg.pathloss_exponent)
                        a_t = steer(cos_t, Nt)
                        a_r = steer(cos_r, Mr)
                        G0 = complex(beta[b, n, m, q]) * math.sqrt(pl) * torch.outer(a_r, a_t.conj())
                        for ii in range(Ns):
                            i = ii * cfg.subcarrier_stride
                            for tt in range(Ts):
                                t = 1 + tt * cfg.symbol_stride
                                ph = cmath.exp(-2j * math.pi * (i * tau * df - t * fd * dT))
                                if scenes.timing_offsets is not None:
                                    ph *= cmath.exp(-2j * math.pi * i * float(scenes.timing_offsets[b, n, m, tt]) * df)
                                    ph *= cmath.exp(2j * math.pi * float(scenes.frequency_offsets[b, n, m, tt]) * dT)
                                y[b, m, :, ii, tt] += ph * (G0 @ x[b, n, :, ii, tt])
    assert lam > 0
    return y


@pytest.mark.parametrize("clutter, clock", [(0, False), (2, True)])
def test_vectorised_echoes_equal_literal_eq6(clutter, clock):
    cfg = SystemConfig.preset("tiny").replace(
        n_targets=2, n_clutter=clutter, clutter_moving=True, timing_offset_std=2e-9 if clock else 0.0,
        frequency_offset_std=300.0 if clock else 0.0, n_subcarriers=6, n_symbols=5, n_rx_antennas=3,
    )
    scenes = cfisac.sample_scenes(cfg, 2, seed=3)
    x = cfisac.transmit_signals(cfg, scenes, seed=3, dtype=torch.complex128)
    y = cfisac.sensing_echoes(cfg, scenes, x, noise=False)
    ref = literal_eq6(cfg, scenes, x)
    assert float((y - ref).abs().max() / ref.abs().max()) < 1e-10
    y32 = cfisac.sensing_echoes(cfg, scenes, x.to(torch.complex64), noise=False)
    assert y32.dtype == torch.complex64
    assert float((y32 - ref).abs().max() / ref.abs().max()) < 1e-5


def _single_path(cfg: SystemConfig):
    """Noiseless single target seen through one tx AP: z[i, t] = a_r^H y / (a_t^H x) = c e^{-j phi}."""
    g = torch.tensor([[[37.0, 61.0]]], dtype=torch.float64)
    v = torch.tensor([[[7.0, -12.0]]], dtype=torch.float64)
    scenes = Scene(positions=g, velocities=v, reflection=torch.ones(1, 1, 1, 1, dtype=torch.complex128),
                   user_positions=torch.tensor([[[10.0, 20.0], [80.0, 40.0]]], dtype=torch.float64))
    x = cfisac.transmit_signals(cfg, scenes, seed=1, dtype=torch.complex128)
    y = cfisac.sensing_echoes(cfg, scenes, x, noise=False)[0, 0]  # [Mr, Ns, Ts]
    return scenes, x[0, 0], y


def test_phase_slopes_give_back_delay_doppler_and_aoa():
    cfg = SystemConfig.preset("tiny").replace(tx_positions=((30.0, 0.0),), tx_axes=((-1.0, 0.0),),
                                              rx_positions=((60.0, 100.0),), rx_axes=((1.0, 0.0),))
    scenes, x, y = _single_path(cfg)
    g, v = scenes.positions[0, 0].tolist(), scenes.velocities[0, 0].tolist()
    tp, rp = cfg.tx_positions[0], cfg.rx_positions[0]
    dn, dm = math.dist(tp, g), math.dist(g, rp)
    theta = math.acos(-(g[0] - tp[0]) / dn)
    vartheta = math.acos((g[0] - rp[0]) / dm)
    beam = torch.einsum("k,kit->it", steer(math.cos(theta), cfg.n_tx_antennas).conj(), x)
    z = torch.einsum("r,rit->it", steer(math.cos(vartheta), cfg.n_rx_antennas).conj(), y) / beam
    # delay: the phase falls by 2 pi tau df per subcarrier (stride subcarriers between comb cells)
    slope_i = torch.angle(z[1:, 0] / z[:-1, 0]).mean()
    tau = -float(slope_i) / (2 * math.pi * cfg.subcarrier_spacing * cfg.subcarrier_stride)
    assert tau == pytest.approx((dn + dm) / C, rel=1e-9)
    # Doppler with the paper's sign: the phase rises by 2 pi fD dT per symbol
    slope_t = torch.angle(z[0, 1:] / z[0, :-1]).mean()
    fd = float(slope_t) / (2 * math.pi * cfg.symbol_duration * cfg.symbol_stride)
    v_n = -v[0] * math.cos(theta) + v[1] * math.sin(theta)  # Eq. (10)
    v_m = v[0] * math.cos(vartheta) - v[1] * math.sin(vartheta)  # Eq. (11)
    assert fd == pytest.approx((v_n + v_m) * cfg.carrier_frequency / C, rel=1e-9)
    # AoA: element k of a_r has phase -pi k cos(vartheta)
    slope_r = torch.angle(y[1:, 3, 2] / y[:-1, 3, 2]).mean()
    assert -float(slope_r) / math.pi == pytest.approx(math.cos(vartheta), abs=1e-9)
    # amplitude: |z| = sqrt(PL(d_n + d_m)) for beta = 1
    pl = cfg.pathloss_ref * (dn + dm) ** (-cfg.pathloss_exponent)
    assert float(z.abs().mean()) == pytest.approx(math.sqrt(pl), rel=1e-9)


def test_noise_power_per_element_is_xi_squared():
    cfg = SystemConfig.preset("tiny").replace(noise_dbm=-80.0)
    scenes = cfisac.sample_scenes(cfg, 16, seed=5)
    x = cfisac.transmit_signals(cfg, scenes, seed=5)
    z = cfisac.sensing_echoes(cfg, scenes, x, seed=5) - cfisac.sensing_echoes(cfg, scenes, x, noise=False)
    assert float(z.abs().pow(2).mean()) == pytest.approx(1e-11, rel=0.03)
    assert float(z.real.pow(2).mean()) == pytest.approx(0.5e-11, rel=0.05)
    assert abs(float((z[..., 1:] * z[..., :-1].conj()).mean().abs())) < 0.05e-11  # white over symbols


def test_sensing_indices_follow_the_comb():
    i, t = sensing_indices(SystemConfig.preset("quick"))
    assert i[:3].tolist() == [0, 4, 8] and t[:3].tolist() == [1, 17, 33] and len(i) == 64 and len(t) == 16


def test_bad_inputs_raise_clear_errors():
    cfg = SystemConfig.preset("tiny")
    scenes = cfisac.sample_scenes(cfg, 2, seed=0)
    x = cfisac.transmit_signals(cfg, scenes, seed=0)
    with pytest.raises(ValueError, match="x has shape"):
        cfisac.sensing_echoes(cfg, scenes, x[:, :, :2])
    bad = x.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        cfisac.sensing_echoes(cfg, scenes, bad)
    with pytest.raises(ValueError, match="complex"):
        cfisac.sensing_echoes(cfg, scenes, x.real)
    out = Scene(positions=scenes.positions + 200.0, velocities=scenes.velocities, reflection=scenes.reflection)
    with pytest.raises(ValueError, match="outside the area"):
        cfisac.sensing_echoes(cfg, out, x)
    assert cfisac.sensing_echoes(cfg, out, x, allow_outside_area=True).shape[0] == 2
    wrong = Scene(positions=scenes.positions, velocities=scenes.velocities, reflection=scenes.reflection[:, :, :, :0])
    with pytest.raises(ValueError, match="reflection"):
        cfisac.sensing_echoes(cfg, wrong, x)
    on_ap = Scene(positions=torch.tensor([[[cfg.rx_positions[0][0], 100.0]]] * 2, dtype=torch.float64),
                  velocities=scenes.velocities, reflection=scenes.reflection)
    with pytest.raises(ValueError, match="coincides with an AP"):
        cfisac.sensing_echoes(cfg, on_ap, x)


def test_chunking_does_not_change_the_result():
    cfg = SystemConfig.preset("tiny").replace(n_targets=2)
    scenes = cfisac.sample_scenes(cfg, 5, seed=2)
    x = cfisac.transmit_signals(cfg, scenes, seed=2)
    a = cfisac.sensing_echoes(cfg, scenes, x, seed=2, chunk_size=2)
    b = cfisac.sensing_echoes(cfg, scenes, x, seed=2, chunk_size=5)
    assert torch.equal(a, b)
