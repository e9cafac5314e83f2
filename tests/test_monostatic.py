"""The batched monostatic baseline (cfisac.estimators.monostatic) against its scene-at-a-time literal reference
(cfisac.estimators.reference.monostatic), on a tiny co-located configuration.

Tolerance of the equivalence tests: every AoA cosine, round-trip range and Doppler within 1e-8 of its resolution
cell of the reference's (the two differ only by floating-point summation order; observed differences are 0 to
1e-14 of a cell), positions within 1e-6 m.
"""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import maximum_filter

import cfisac
from cfisac.estimators import create
from cfisac.estimators import monostatic as mono
from cfisac.estimators.monostatic import MonostaticEstimator
from cfisac.estimators.reference.monostatic import MonostaticEstimator as Reference
from cfisac.geometry import bistatic_geometry
from cfisac.metrics import accuracy
from cfisac.physics import SensingGrid

MONO = cfisac.SystemConfig.preset(
    "monostatic", n_subcarriers=16, subcarrier_stride=4, n_symbols=8, symbol_stride=16, n_tx_antennas=4,
    n_rx_antennas=4, n_users=2, n_targets=2, user_n_paths=2,
)
CELL = 1e-8  # tolerance in resolution cells


def simulate(cfg, n, seed, noise=True):
    scenes = cfisac.sample_scenes(cfg, n, seed)
    x = cfisac.transmit_signals(cfg, scenes, seed)
    return scenes, x, cfisac.sensing_echoes(cfg, scenes, x, noise=noise, seed=seed)


def assert_same_detections(cfg, new, ref):
    g = SensingGrid.from_config(cfg)
    for a, b, cell in zip(new, ref, (g.u_res, g.range_res, g.doppler_res), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=CELL * cell)


@pytest.mark.parametrize("power", [50.0, 35.0])
def test_equals_the_reference_on_noisy_scenes(power):
    cfg = MONO.replace(power_dbm=power)
    scenes, x, y = simulate(cfg, 3, 5)
    new, ref = MonostaticEstimator(cfg), Reference(cfg)
    if power == 35.0:
        assert_same_detections(cfg, new.detections(y, x), ref.detections(y, x))
        return
    out, want = new(y, x), ref(y, x)
    torch.testing.assert_close(out.positions, want.positions, rtol=0, atol=1e-6)
    assert torch.isnan(out.velocities).all() and out.positions.dtype == torch.float64
    # the reference is right on these scenes (within a quarter of a 19.5 m range cell)
    err = accuracy(want.positions, want.velocities, scenes.positions, scenes.velocities).position_errors
    assert float(err.max()) < 0.25 * cfg.resolution()["range_resolution_m"]


def test_three_targets_other_options_and_tilted_arrays_equal_the_reference():
    # the second config's arrays are not collinear: the angle search takes the general Mr x Nt path
    tilted = MONO.replace(tx_axes=((-0.6, -0.8),))
    for cfg, q, options, collinear in ((MONO, 3, {"n_candidates": 2}, True),
                                       (tilted, 2, {"n_candidates": 1, "refine_rounds": 2}, False)):
        cfg = cfg.replace(n_targets=q, power_dbm=45.0)
        _, x, y = simulate(cfg, 2, 9)
        new, ref = MonostaticEstimator(cfg, **options), Reference(cfg, **options)
        assert (new.kernels(torch.device("cpu")).sigma is not None) == collinear
        assert_same_detections(cfg, new.detections(y, x), ref.detections(y, x))


def test_noiseless_scenes_are_located_exactly():
    for q in (1, 2):
        cfg = MONO.replace(n_targets=q)
        scenes, x, y = simulate(cfg, 3, 0, noise=False)
        est = MonostaticEstimator(cfg)
        out = est(y, x)
        rep = accuracy(out.positions, out.velocities, scenes.positions, scenes.velocities)
        assert float(rep.position_errors.max()) < 0.02 * cfg.resolution()["range_resolution_m"], q
        if q == 1:  # the detections are the round trip and the radial velocity (positive away from the BS)
            u, d, f = est.detections(y, x)
            geo = bistatic_geometry(cfg, scenes.positions, scenes.velocities)
            torch.testing.assert_close(d, 2 * geo.tx.distance[:, 0], rtol=0, atol=1e-3)
            torch.testing.assert_close(cfg.wavelength * f / 2, geo.rx.radial_velocity[:, 0], rtol=0, atol=1e-3)


def test_peak_search_equals_a_full_max_filter():
    # The row-limited local-maximum search (also when forced to widen it) gives the reference's cube peaks.
    cfg = MONO.replace(power_dbm=30.0)
    _, x, y = simulate(cfg, 3, 2)
    ref = Reference(cfg)
    data = mono._Data.of(y[:, 0].to(torch.complex128), x[:, 0].to(torch.complex128))
    yn, xn = y[:, 0].to(torch.complex128).numpy(), x[:, 0].to(torch.complex128).numpy()
    for rows, matmul in ((mono.PEAK_ROWS, mono.DFT_MATMUL_MAX), (1, mono.DFT_MATMUL_MAX), (4, 0)):
        saved = mono.PEAK_ROWS, mono.DFT_MATMUL_MAX
        mono.PEAK_ROWS, mono.DFT_MATMUL_MAX = rows, matmul  # few rows: widened search; 0: the FFT cube
        try:
            k = MonostaticEstimator(cfg).kernels(torch.device("cpu"))
            assert k.fft_range == k.fft_doppler == (matmul == 0)
            u, d, f, valid = k.peaks(data.y, data, 6)
        finally:
            mono.PEAK_ROWS, mono.DFT_MATMUL_MAX = saved
        assert valid.all()
        for b in range(3):
            want = ref._peaks(yn[b], xn[b], 6)
            np.testing.assert_allclose(u[b].numpy(), [p.u_rx for p in want], atol=1e-12)
            np.testing.assert_allclose(d[b].numpy(), [p.d for p in want], atol=1e-9)
            np.testing.assert_allclose(f[b].numpy(), [p.f for p in want], atol=1e-6)
    # and the reference's own max filter agrees on what a local maximum is
    cube = k.cube(data.y, data)[0].double().numpy()
    peaks = maximum_filter(cube, size=3, mode=("wrap", "nearest", "nearest")) == cube
    flat = np.flatnonzero(peaks)
    top = flat[np.argsort(cube.ravel()[flat])[::-1][:6]]
    np.testing.assert_allclose(k.u_grid[torch.from_numpy(top // cube[0].size)].numpy(), u[0].numpy())


def test_chunking_does_not_change_the_estimates():
    cfg = MONO.replace(power_dbm=40.0)
    _, x, y = simulate(cfg, 5, 3)
    whole = MonostaticEstimator(cfg)(y, x)
    chunked = MonostaticEstimator(cfg, chunk_size=2)(y, x)
    torch.testing.assert_close(chunked.positions, whole.positions, rtol=0, atol=1e-9)
    one = MonostaticEstimator(cfg, chunk_size=1)(y[3:4], x[3:4])
    torch.testing.assert_close(one.positions, whole.positions[3:4], rtol=0, atol=1e-9)


def test_registry_device_and_single_precision():
    cfg = MONO.replace(power_dbm=50.0)
    _, x, y = simulate(cfg, 2, 4)
    est = create("monostatic", cfg, device="cpu")
    assert isinstance(est, MonostaticEstimator) and est.fronthaul_bits_per_ap == 0 and est.name == "monostatic"
    assert isinstance(create("monostatic-reference", cfg), Reference)
    assert 1 <= est.default_chunk_size() and MonostaticEstimator(cfg.replace(
        n_subcarriers=256, subcarrier_stride=1, n_symbols=256, symbol_stride=1)).default_chunk_size() >= 1
    single = create("monostatic", cfg, dtype=torch.complex64)(y, x)
    torch.testing.assert_close(single.positions, est(y, x).positions, rtol=0, atol=0.01)


def test_bad_configs_options_and_inputs_raise_value_errors():
    tiny = cfisac.SystemConfig.preset("tiny")
    with pytest.raises(ValueError, match="co-located"):
        MonostaticEstimator(tiny)
    with pytest.raises(ValueError, match="co-located"):
        create("monostatic", MONO.replace(rx_positions=((60.0, 0.0),)))
    for name, bad in (("oversample", 0), ("n_candidates", 1.5), ("refine_rounds", -1), ("angle_oversample", True)):
        with pytest.raises(ValueError, match=name):
            MonostaticEstimator(MONO, **{name: bad})
    with pytest.raises(ValueError, match="checkpoint"):
        create("monostatic", MONO, checkpoint="runs/x")
    with pytest.raises(ValueError, match="chunk_size"):
        MonostaticEstimator(MONO, chunk_size=0)
    _, x, y = simulate(MONO, 1, 0)
    est = MonostaticEstimator(MONO)
    with pytest.raises(ValueError, match="y has shape"):
        est(y[..., :4], x)
    with pytest.raises(ValueError, match="x has shape"):
        est.detections(y, x[:, :, :2])
    with pytest.raises(ValueError, match="y contains NaN"):
        est(torch.full_like(y, complex(math.nan, 0.0)), x)
