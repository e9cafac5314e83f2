"""Classical baselines (paper Section V-A): MUSIC- and CS-based fully distributed sensing, monostatic sensing, and
their shared signal processing / CPU fusion. Tiny configurations only (the heavy checks are in benchmarks/)."""

import math

import numpy as np
import pytest
import torch

import cfisac
from cfisac import SystemConfig
from cfisac.estimators import create
from cfisac.estimators.reference.music import estimate_model_order, music_doa
from cfisac.estimators.reference.signal_processing import (
    ApMessages,
    Comb,
    delay_doppler_spectrum,
    fuse_messages,
    ray_distance,
    refine_delay_doppler,
    steering,
)
from cfisac.geometry import bistatic_geometry
from cfisac.metrics import accuracy

TINY = SystemConfig.preset("tiny")
FINE = TINY.replace(n_subcarriers=32)  # "fine enough": 9.8 m bistatic range cells, 4 x 4 antennas
MONO = SystemConfig.preset(
    "monostatic", n_subcarriers=16, subcarrier_stride=4, n_symbols=8, symbol_stride=16, n_tx_antennas=4,
    n_rx_antennas=4, n_users=2, n_targets=1, user_n_paths=2,
)


def simulate(cfg, scenes, seed=0, noise=False):
    x = cfisac.transmit_signals(cfg, scenes, seed, dtype=torch.complex128)
    y = cfisac.sensing_echoes(cfg, scenes, x, noise=noise, seed=seed)
    return x, y


def hand_scenes(cfg, positions, velocities, seed=0):
    """Scenes with hand-placed targets (users and reflection coefficients drawn as usual)."""
    s = cfisac.sample_scenes(cfg, 1, seed)
    s.positions = torch.tensor([positions], dtype=torch.float64)
    s.velocities = torch.tensor([velocities], dtype=torch.float64)
    return s


# ---------------------------------------------------------------------------------------------------- shared pieces
def test_fronthaul_bits_follow_section_iii_d():
    cfg = TINY.replace(n_targets=2)
    for name in ("music", "cs"):
        est = create(name, cfg)
        assert est.name == name and est.cfg is cfg
        assert est.fronthaul_bits_per_ap == 96 * 2
        assert est.message_bits_per_ap == 32 * (1 + 2 * cfg.n_tx) * 2
    assert create("monostatic", MONO).fronthaul_bits_per_ap == 0


def test_ray_distance_lands_on_the_bistatic_ellipse():
    g = np.random.default_rng(0)
    rx, tx = np.array([25.0, 100.0]), np.array([75.0, 0.0])
    ang = g.uniform(-np.pi, 0, 20)
    e = np.stack([np.cos(ang), np.sin(ang)], 1)
    d = np.linalg.norm(rx - tx) + g.uniform(1, 150, 20)
    rho = ray_distance(d, rx, e, tx)
    np.testing.assert_allclose(rho + np.linalg.norm(rx + rho[:, None] * e - tx, axis=1), d, rtol=1e-12)
    np.testing.assert_allclose(ray_distance(d, rx, e, rx), d / 2)  # co-located (monostatic): half the round trip


def test_refinement_recovers_off_grid_paths_and_separates_a_close_pair():
    comb = Comb.from_config(TINY)
    g = np.random.default_rng(1)
    b1, b2 = (g.standard_normal((16, 8)) + 1j * g.standard_normal((16, 8)) for _ in range(2))

    def sig(b, d, f):  # Eq. (6) phases at the comb's absolute indices
        return b * comb.delay_phase(d)[:, None] * comb.doppler_phase(f)[None, :]

    d1, f1, d2, f2 = 131.37, 812.5, 134.9, 1113.0  # 0.18 range cells / 0.2 Doppler cells apart
    r = (0.7 - 0.2j) * sig(b1, d1, f1)
    d, f, amp, _ = refine_delay_doppler(r[None], b1[None], comb, np.array([d1 + 3.0]), np.array([f1 - 300.0]),
                                        step_d=comb.range_res / 4, step_f=comb.doppler_res / 4)
    assert abs(d[0] - d1) < 1e-3 and abs(f[0] - f1) < 0.1 and abs(amp[0] - (0.7 - 0.2j)) < 1e-4  # 1e-4 cell
    # Two overlapping paths: with the second one projected out, the first is found exactly.
    r = r + (1.5 + 1j) * sig(b2, d2, f2)
    o = sig(b2, d2, f2)[None]
    others = (o[None], np.einsum("kit,lit->kl", o.conj(), o)[None], np.einsum("kit,it->k", o.conj(), r)[None])
    d, f, amp, _ = refine_delay_doppler(r[None], b1[None], comb, np.array([d1 + 3.0]), np.array([f1 - 300.0]),
                                        step_d=comb.range_res / 4, step_f=comb.doppler_res / 4, others=others)
    assert abs(d[0] - d1) < 1e-3 and abs(f[0] - f1) < 0.1 and abs(amp[0] - (0.7 - 0.2j)) < 1e-4  # 1e-4 cell


def test_delay_doppler_spectrum_peaks_at_the_path_bin():
    cfg = SystemConfig.preset("quick")
    comb = Comb.from_config(cfg)
    d_true = 37 * comb.range_res / 4  # on the 4x zero-padded grid
    f_true = -5 * comb.doppler_res / 4
    z = comb.delay_phase(d_true)[:, None] * comb.doppler_phase(f_true)[None, :]  # a path after symbol removal
    s, d, f = delay_doppler_spectrum(z, comb, oversample=4)
    k, j = np.unravel_index(np.argmax(np.abs(s)), s.shape)
    assert abs(d[k] - d_true) < 1e-9 and abs(f[j] - f_true) < 1e-6
    assert abs(abs(s[k, j]) - z.size) < 1e-6  # coherent gain Ns Ts


def test_model_order_criteria_count_two_sources():
    g = np.random.default_rng(2)
    a = steering(np.array([-0.4, 0.35]), 8, 0.5).T
    s = (g.standard_normal((2, 4000)) + 1j * g.standard_normal((2, 4000))) * np.array([[1.0], [0.5]])
    n = (g.standard_normal((8, 4000)) + 1j * g.standard_normal((8, 4000))) * 0.3
    y = a @ s + n
    ev = np.linalg.eigvalsh(y @ y.conj().T / 4000)
    assert estimate_model_order(ev, 4000, "mdl") == 2
    assert estimate_model_order(ev, 4000, "aic") == 2


def test_music_is_exact_on_a_noise_free_covariance_including_endfire():
    for u_true in ([0.3, 0.9995], [-0.9993, 0.1]):
        a = steering(np.array(u_true), 8, 0.5).T
        cov = a @ np.diag([1.0, 0.3]) @ a.conj().T + 1e-9 * np.eye(8)
        u = np.sort(music_doa(cov, 2, spacing=0.5))
        np.testing.assert_allclose(u, np.sort(u_true), atol=1e-5)


def test_fusion_is_exact_on_exact_messages_and_robust_to_one_wrong_range():
    cfg = SystemConfig.preset("quick")
    g = torch.tensor([[[20.0, 30.0], [70.0, 80.0]]], dtype=torch.float64)
    v = torch.tensor([[[5.0, -12.0], [-17.0, 3.0]]], dtype=torch.float64)
    geo = bistatic_geometry(cfg, g, v)
    aoa = geo.rx.cos_angle.numpy().copy()  # [B, M, Q]
    ranges = geo.bistatic_range.numpy().transpose(0, 2, 3, 1).copy()  # [B, M, Q, N]
    dopplers = geo.doppler.numpy().transpose(0, 2, 3, 1).copy()
    for arr in (aoa, ranges, dopplers):  # AP 1 lists its targets in the other order: the CPU must associate
        arr[:, 1] = arr[:, 1, ::-1].copy()
    out = fuse_messages(cfg, ApMessages(aoa, ranges, dopplers))
    torch.testing.assert_close(out.positions, g, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.velocities, v, atol=1e-6, rtol=0)
    ranges[0, 0, 1, 1] += 3 * cfg.resolution()["range_resolution_m"]  # one AP's detection captured elsewhere
    dopplers[0, 0, 1, 1] += 3 * cfg.resolution()["doppler_resolution_hz"]
    out = fuse_messages(cfg, ApMessages(aoa, ranges, dopplers))
    assert float((out.positions - g).norm(dim=-1).max()) < 0.05
    assert float((out.velocities - v).norm(dim=-1).max()) < 0.05


# ---------------------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("name", ["music", "cs"])
def test_noiseless_single_target_is_located_within_a_small_fraction_of_a_cell(name):
    scenes = cfisac.sample_scenes(FINE, 3, 0)
    x, y = simulate(FINE, scenes)
    out = create(name, FINE)(y, x)
    assert out.positions.dtype == torch.float64 and out.positions.shape == (3, 1, 2)
    rep = accuracy(out.positions, out.velocities, scenes.positions, scenes.velocities)
    assert float(rep.position_errors.max()) < 0.02 * FINE.resolution()["range_resolution_m"]
    assert float(rep.velocity_errors.max()) < 0.5


def test_noiseless_monostatic_locates_and_measures_the_radial_velocity():
    scenes = cfisac.sample_scenes(MONO, 3, 0)
    x, y = simulate(MONO, scenes)
    est = create("monostatic", MONO)
    out = est(y, x)
    assert torch.isnan(out.velocities).all()  # one BS sees only the radial velocity (paper Fig. 6(b))
    err = (out.positions - scenes.positions).norm(dim=-1)
    assert float(err.max()) < 0.02 * MONO.resolution()["range_resolution_m"]
    u, d, f = est.detections(y, x)
    geo = bistatic_geometry(MONO, scenes.positions, scenes.velocities)
    np.testing.assert_allclose(d, 2 * geo.tx.distance[:, 0].numpy(), atol=1e-3)  # round trip
    np.testing.assert_allclose(MONO.wavelength * f / 2, geo.rx.radial_velocity[:, 0].numpy(), atol=1e-3)


@pytest.mark.parametrize("name", ["music", "cs"])
def test_two_separated_targets_are_found_and_associated(name):
    cfg = FINE.replace(n_targets=2)
    scenes = hand_scenes(cfg, [[20.0, 30.0], [80.0, 65.0]], [[6.0, -11.0], [-15.0, 4.0]])
    x, y = simulate(cfg, scenes)
    out = create(name, cfg)(y, x)
    rep = accuracy(out.positions, out.velocities, scenes.positions, scenes.velocities)
    assert float(rep.position_errors.max()) < 0.05 * cfg.resolution()["range_resolution_m"]
    assert float(rep.velocity_errors.max()) < 0.5  # the velocity belongs to the right target


def test_two_targets_in_one_resolution_cell_give_two_estimates_near_the_cell():
    # Documented behaviour: no crash, no NaN, both estimates near the unresolved pair.
    for name, cfg in (("music", FINE), ("cs", FINE), ("monostatic", MONO)):
        cfg = cfg.replace(n_targets=2)
        scenes = hand_scenes(cfg, [[50.0, 50.0], [51.0, 50.5]], [[3.0, 1.0], [3.5, 1.2]])
        x, y = simulate(cfg, scenes)
        out = create(name, cfg)(y, x)
        assert out.positions.shape == (1, 2, 2) and torch.isfinite(out.positions).all()
        centre = scenes.positions.mean(1, keepdim=True)
        assert float((out.positions - centre).norm(dim=-1).max()) < cfg.resolution()["range_resolution_m"], name


def test_rmse_decreases_with_power_and_saturates_at_the_noiseless_floor():
    scenes = cfisac.sample_scenes(TINY, 3, 3)
    est = create("music", TINY)

    def rmse(power, noise=True):
        cfg = TINY.replace(power_dbm=power)
        x, y = simulate(cfg, scenes, seed=3, noise=noise)
        out = est(y, x)
        return accuracy(out.positions, out.velocities, scenes.positions, scenes.velocities).position_rmse

    r = [rmse(p) for p in (10.0, 35.0, 60.0, 100.0)]
    floor = rmse(30.0, noise=False)
    assert r[0] > r[1] > r[2] > r[3], r
    assert r[2] < 0.01 * TINY.resolution()["range_resolution_m"]
    assert abs(r[3] - floor) < 1e-3, (r, floor)  # no further gain: the error floor of the estimator


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    scenes = cfisac.sample_scenes(TINY, 2, 0)
    x, y = simulate(TINY, scenes)
    for name in ("music", "cs"):
        est = create(name, TINY)
        with pytest.raises(ValueError, match="y has shape"):
            est(y[:, :, :3], x)
        with pytest.raises(ValueError, match="x has shape"):
            est(y, x[:1])
        with pytest.raises(ValueError, match="NaN"):
            est(torch.where(torch.arange(y.numel()).reshape(y.shape) == 7, complex("nan"), y), x)
        with pytest.raises(ValueError, match="complex"):
            est(y.real, x)
        with pytest.raises(ValueError, match="checkpoint"):
            create(name, TINY, checkpoint="runs/x")
    with pytest.raises(ValueError, match="at most Mr - 1"):
        create("music", TINY.replace(n_targets=TINY.n_rx_antennas))
    with pytest.raises(ValueError, match="N Q <= Ns / 2"):
        create("cs", TINY.replace(n_targets=5))
    with pytest.raises(ValueError, match="model_order"):
        create("music", TINY, model_order="bic")
    with pytest.raises(ValueError, match="co-located"):
        create("monostatic", TINY)
    xm, ym = simulate(MONO, cfisac.sample_scenes(MONO, 1, 0))
    with pytest.raises(ValueError, match="y has shape"):
        create("monostatic", MONO)(ym[..., :4], xm)
    assert math.isfinite(float(create("music", TINY, model_order="mdl")(y, x).positions.sum()))
