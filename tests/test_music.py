"""The batched MUSIC baseline (cfisac.estimators.music) against its literal scene-at-a-time reference
(cfisac.estimators.reference.music) on fixed noisy tiny scenes, its MUSIC / model-order pieces against the
reference's on random covariances, noiseless exactness, chunking invariance and bad options."""

import numpy as np
import pytest
import torch

import cfisac
from cfisac import SystemConfig
from cfisac.estimators import create
from cfisac.estimators.fusion import BistaticMessages, fuse_bistatic
from cfisac.estimators.music import MusicEstimator, estimate_model_order, music_doa
from cfisac.estimators.reference import music as ref_music
from cfisac.estimators.reference.signal_processing import fuse_messages, steering, validate_inputs
from cfisac.geometry import bistatic_geometry

TINY = SystemConfig.preset("tiny")
TINY2 = TINY.replace(n_targets=2)
FINE = TINY.replace(n_subcarriers=32)  # 9.8 m bistatic range cells

# Messages of the batched path equal the reference's to this tolerance (direction cosine, m, Hz). Observed: 3e-14;
# the two differ only in the order of floating-point sums (FFT / matmul layouts, pinv vs lstsq).
TOL = 1e-6


def simulate(cfg, n, seed, noise=True):
    scenes = cfisac.sample_scenes(cfg, n, seed)
    x = cfisac.transmit_signals(cfg, scenes, seed, dtype=torch.complex128)
    y = cfisac.sensing_echoes(cfg, scenes, x, noise=noise, seed=seed)
    return scenes, x, y


# The reference's numerics (the product defaults are Newton steps in complex64: compared in their own test).
REFERENCE_NUMERICS = dict(refine_method="zoom", dtype=torch.complex128)


def assert_same_messages(cfg, y, x, **options):
    new = MusicEstimator(cfg, **REFERENCE_NUMERICS, **options).ap_messages(y.to(torch.complex128),
                                                                          x.to(torch.complex128))
    ref = ref_music.MusicEstimator(cfg, **options).messages(*validate_inputs(cfg, y, x))
    for key in ("aoa", "ranges", "dopplers"):
        np.testing.assert_allclose(getattr(new, key).numpy(), getattr(ref, key), atol=TOL, rtol=0, err_msg=key)
    return new, ref


# ---------------------------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("power, seed, n", [(48.0, 11, 2), (60.0, 12, 1)])
def test_messages_and_estimates_equal_the_reference_on_noisy_two_target_scenes(power, seed, n):
    cfg = TINY2.replace(power_dbm=power)
    _, x, y = simulate(cfg, n, seed)
    new, ref = assert_same_messages(cfg, y, x)
    out = create("music", cfg, **REFERENCE_NUMERICS)(y, x)  # the registered product path, fused at the CPU
    # The same fusion on the reference's messages (the fusion itself is tested in its own module).
    expect = fuse_bistatic(cfg, BistaticMessages(*(torch.from_numpy(getattr(ref, k)) for k in ("aoa", "ranges",
                                                                                              "dopplers"))))
    torch.testing.assert_close(out.positions, expect.positions, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.velocities, expect.velocities, atol=1e-6, rtol=0)
    if power >= 60.0:  # above threshold the reference's own numpy fusion agrees too
        torch.testing.assert_close(out.positions, fuse_messages(cfg, ref).positions, atol=1e-3, rtol=0)


@pytest.mark.parametrize("options", [dict(model_order="mdl"), dict(model_order="aic", forward_backward=False),
                                     dict(covariance="gated"), dict(n_candidates=1, refine_rounds=3, oversample=2)])
def test_options_follow_the_reference(options):
    cfg = TINY2.replace(power_dbm=52.0)
    _, x, y = simulate(cfg, 1, 21)
    assert_same_messages(cfg, y, x, **options)


def test_endfire_target_uses_the_alias_ray_like_the_reference():
    cfg = TINY.replace(power_dbm=58.0)
    scenes = cfisac.sample_scenes(cfg, 2, 5)
    scenes.positions = torch.tensor([[[97.0, 99.0]], [[3.0, 96.5]]], dtype=torch.float64)  # near both rx axes
    x = cfisac.transmit_signals(cfg, scenes, 5, dtype=torch.complex128)
    y = cfisac.sensing_echoes(cfg, scenes, x, noise=True, seed=5)
    new, _ = assert_same_messages(cfg, y, x)
    assert float(new.aoa.abs().max()) > 0.9  # the test really exercises the endfire branch


# ---------------------------------------------------------------------------------------------------- pieces
def random_covariances(g, n, mr, spacing):
    covs, k = [], []
    for i in range(n):
        q = 1 + i % 3
        u = g.uniform(-1, 1, q)
        a = steering(u, mr, spacing).T
        s = (g.standard_normal((q, 64)) + 1j * g.standard_normal((q, 64))) * g.uniform(0.3, 2.0, (q, 1))
        z = a @ s + 0.3 * (g.standard_normal((mr, 64)) + 1j * g.standard_normal((mr, 64)))
        covs.append(z @ z.conj().T / 64)
        k.append(q)
    return np.stack(covs), k


@pytest.mark.parametrize("spacing", [0.5, 0.4])
def test_music_doa_matches_the_reference_on_random_covariances(spacing):
    g = np.random.default_rng(3)
    covs, k = random_covariances(g, 12, 8, spacing)
    n_signal = torch.tensor(k)
    got = music_doa(torch.from_numpy(covs), 3, spacing=spacing, n_signal=n_signal)
    for i in range(len(k)):
        want = ref_music.music_doa(covs[i], 3, spacing=spacing, n_signal=k[i])
        np.testing.assert_allclose(got[i].numpy(), want, atol=1e-9, rtol=0)


def test_music_doa_is_exact_on_noise_free_covariances_including_endfire():
    covs = []
    truth = ([0.3, 0.9995], [-0.9993, 0.1], [-0.5, 0.45])
    for u in truth:
        a = steering(np.array(u), 8, 0.5).T
        covs.append(a @ np.diag([1.0, 0.3]) @ a.conj().T + 1e-9 * np.eye(8))
    got = music_doa(torch.from_numpy(np.stack(covs)), 2, spacing=0.5)
    np.testing.assert_allclose(np.sort(got.numpy(), 1), np.sort(np.array(truth), 1), atol=1e-5)


def test_model_order_matches_the_reference_and_counts_two_sources():
    g = np.random.default_rng(2)
    a = steering(np.array([-0.4, 0.35]), 8, 0.5).T
    s = (g.standard_normal((2, 4000)) + 1j * g.standard_normal((2, 4000))) * np.array([[1.0], [0.5]])
    noise = (g.standard_normal((8, 4000)) + 1j * g.standard_normal((8, 4000))) * 0.3
    ev = np.linalg.eigvalsh((a @ s + noise) @ (a @ s + noise).conj().T / 4000)
    others = np.sort(g.gamma(0.7, size=(20, 8)), 1)  # random spectra: every order 0 .. 7 can win
    eigs = torch.from_numpy(np.concatenate([ev[None], others]))
    for crit in ("mdl", "aic"):
        got = estimate_model_order(eigs, 40, crit).tolist()
        assert got == [ref_music.estimate_model_order(e, 40, crit) for e in eigs.numpy()]
        assert int(estimate_model_order(torch.from_numpy(ev[None]), 4000, crit)[0]) == 2
    with pytest.raises(ValueError, match="criterion"):
        estimate_model_order(eigs, 40, "bic")


# ---------------------------------------------------------------------------------------------------- end to end
def test_noiseless_messages_are_the_true_geometry_and_estimates_exact():
    scenes, x, y = simulate(FINE, 3, 0, noise=False)
    est = create("music", FINE)
    msgs = est.ap_messages(y, x)
    geo = bistatic_geometry(FINE, scenes.positions, scenes.velocities)
    np.testing.assert_allclose(msgs.aoa.numpy(), geo.rx.cos_angle.numpy(), atol=1e-4)
    np.testing.assert_allclose(msgs.ranges.numpy(), geo.bistatic_range.numpy().transpose(0, 2, 3, 1), atol=0.05)
    np.testing.assert_allclose(msgs.dopplers.numpy(), geo.doppler.numpy().transpose(0, 2, 3, 1), atol=20.0)
    out = est(y, x)
    err = (out.positions - scenes.positions).norm(dim=-1)
    assert float(err.max()) < 0.02 * FINE.resolution()["range_resolution_m"]
    assert float((out.velocities - scenes.velocities).norm(dim=-1).max()) < 0.5


def test_chunking_and_complex64_inputs_do_not_change_the_estimates():
    cfg = TINY2.replace(power_dbm=55.0)
    _, x, y = simulate(cfg, 2, 31)
    whole = MusicEstimator(cfg, **REFERENCE_NUMERICS)(y, x)
    one = MusicEstimator(cfg, **REFERENCE_NUMERICS, chunk_size=1)(y, x)
    torch.testing.assert_close(one.positions, whole.positions, atol=1e-9, rtol=0)
    torch.testing.assert_close(one.velocities, whole.velocities, atol=1e-9, rtol=0)
    # complex64 (the default): the batch composition changes the rounding of the grouped products (measured 3e-4 m)
    default, default_one = MusicEstimator(cfg)(y, x), MusicEstimator(cfg, chunk_size=1)(y, x)
    torch.testing.assert_close(default_one.positions, default.positions, atol=2e-3, rtol=0)
    single = MusicEstimator(cfg, device="cpu", **REFERENCE_NUMERICS)(y.to(torch.complex64), x.to(torch.complex64))
    assert single.positions.dtype == torch.float64 and default.positions.dtype == torch.float64
    assert float((single.positions - whole.positions).norm(dim=-1).max()) < 1e-2
    assert float((default.positions - whole.positions).norm(dim=-1).max()) < 1e-2


def test_registry_names_and_fronthaul_bits():
    est = create("music", TINY2, device="cpu")
    assert isinstance(est, MusicEstimator) and est.covariance == "raw" and est.name == "music"
    assert create("music-gated", TINY2).covariance == "gated"
    assert isinstance(create("music-reference", TINY2), ref_music.MusicEstimator)
    assert est.fronthaul_bits_per_ap == 96 * 2 and est.message_bits_per_ap == 32 * (1 + 2 * TINY2.n_tx) * 2


@pytest.mark.parametrize("options, match", [
    (dict(model_order="bic"), "model_order"), (dict(covariance="cooked"), "covariance"),
    (dict(oversample=0), "oversample"), (dict(refine_rounds=-1), "refine_rounds"),
    (dict(n_candidates=True), "n_candidates"), (dict(angle_grid=2), "angle_grid"),
    (dict(forward_backward="yes"), "forward_backward"), (dict(chunk_size=0), "chunk_size"),
    (dict(dtype=torch.float64), "dtype"), (dict(device="gpu0"), "device"),
    (dict(checkpoint="runs/x"), "checkpoint"), (dict(refine_method="exact"), "refine_method"),
    (dict(map_dtype=torch.float32), "map_dtype"),
])
def test_bad_options_raise_clear_errors(options, match):
    with pytest.raises(ValueError, match=match):
        create("music", TINY, **options)


def test_bad_inputs_raise_clear_errors():
    _, x, y = simulate(TINY, 1, 0)
    est = create("music", TINY)
    with pytest.raises(ValueError, match="y has shape"):
        est(y[:, :, :3], x)
    with pytest.raises(ValueError, match="x has shape"):
        est(y, x[..., :4])
    with pytest.raises(ValueError, match="y must be complex"):
        est(y.real, x)
    with pytest.raises(ValueError, match="at most Mr - 1"):
        create("music", TINY.replace(n_targets=TINY.n_rx_antennas))


def test_newton_refinement_reaches_the_zoom_optimum_on_smooth_two_path_data():
    """refine_method="newton" (opt-in): on a clean two-path beam output it lands on the zoom's maximum (to 1e-4 of a
    cell, the zoom brackets it to ~1e-5 cell) with at least the zoom's objective, alone and with the other path
    projected out."""
    from cfisac.estimators.dsp import path_signatures, refine_delay_doppler, transmit_covariance
    from cfisac.physics import SensingGrid

    cfg = TINY.replace(n_subcarriers=32, n_symbols=16)
    scenes = cfisac.sample_scenes(cfg, 2, 4)
    x = cfisac.transmit_signals(cfg, scenes, 4, dtype=torch.complex128)
    grid = SensingGrid.from_config(cfg, "cpu")
    g = torch.Generator().manual_seed(8)
    P = 4
    xi = torch.tensor([0, 1, 0, 1])
    u = torch.tensor([0.3, -0.2, 0.55, 0.1], dtype=torch.float64)[:, None].repeat(1, 2)
    u[:, 1] -= 0.4
    d = 60.0 + 80.0 * torch.rand(P, 2, generator=g, dtype=torch.float64)
    d[:, 1] = d[:, 0] + 2.5 * grid.range_res
    f = (torch.rand(P, 2, generator=g, dtype=torch.float64) - 0.5) * 4000.0
    sig = path_signatures(grid, x[:, :1], torch.zeros(1, dtype=torch.long), u, d, f, x_index=xi)
    noise = torch.randn(P, cfg.n_subcarriers, cfg.n_symbols, 2, generator=g, dtype=torch.float64)
    rms = float(sig[:, 0].abs().pow(2).mean().sqrt())
    r = sig[:, 0] + 0.6 * sig[:, 1] + 0.1 * rms * torch.view_as_complex(noise)  # 20 dB per cell
    cov = transmit_covariance(x[:, 0])

    def aod(cd):  # the AoD of each problem's first path, fixed
        return u[:, :1].expand(cd.shape)

    d0 = d[:, 0] + 0.11 * grid.range_res
    f0 = f[:, 0] - 0.09 * grid.doppler_res
    for others in (None, sig[:, 1:]):
        common = dict(x_n=x[:, 0], aod=aod, others=others, x_index=xi, x_cov=cov, step_d=grid.range_res / 4,
                      step_f=grid.doppler_res / 4)
        dz, fz, _, oz = refine_delay_doppler(r, grid, d0, f0, method="zoom", **common)
        dn, fn, an, on = refine_delay_doppler(r, grid, d0, f0, method="newton", **common)
        _, _, _, o_start = refine_delay_doppler(r, grid, d0, f0, method="newton", n_newton=0, **common)
        np.testing.assert_allclose(dn.numpy(), dz.numpy(), atol=1e-4 * grid.range_res, rtol=0)
        np.testing.assert_allclose(fn.numpy(), fz.numpy(), atol=1e-4 * grid.doppler_res, rtol=0)
        assert bool((on >= oz * (1 - 1e-9)).all()) and bool((on > o_start).all())
        if others is not None:  # the other path projected out: the maximum is the path's own (noise only)
            assert float((dn - d[:, 0]).abs().max()) < 0.05 * grid.range_res
    with pytest.raises(ValueError, match="method"):
        refine_delay_doppler(r, grid, d0, f0, method="gauss", **common)


@pytest.mark.parametrize("power, seed, n", [(60.0, 12, 1), (55.0, 31, 2)])
def test_default_numerics_newton_complex64_land_on_the_reference_messages(power, seed, n):
    """The product defaults (Newton refinement in complex64) against the reference's numerics (zoom, complex128) on
    noisy scenes with clear targets: the same AoAs, ranges within 1e-3 m and Dopplers within 0.1 Hz (measured 2e-4 m,
    0.014 Hz; a cell is 19.5 m and ~600 Hz). MUSIC's per-scene result is rounding-sensitive where a target is weak
    (a 48 dBm tiny scene changes its detection), so the comparison is on clear scenes."""
    cfg = TINY2.replace(power_dbm=power)
    _, x, y = simulate(cfg, n, seed)
    est = MusicEstimator(cfg)
    assert est.refine_method == "newton" and est.dtype == torch.complex64
    a = MusicEstimator(cfg, **REFERENCE_NUMERICS).ap_messages(y, x)
    b = est.ap_messages(y, x)
    for key, tol in (("aoa", 1e-6), ("ranges", 1e-3), ("dopplers", 0.1)):
        np.testing.assert_allclose(getattr(b, key).numpy(), getattr(a, key).numpy(), atol=tol, rtol=0, err_msg=key)
