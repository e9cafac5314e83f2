import math

import pytest
import torch

import cfisac
from cfisac import SystemConfig
from cfisac.geometry import bistatic_geometry
from cfisac.models.front_ends import (
    CovarianceFrontEnd,
    ImageFrontEnd,
    MatchedFrontEnd,
    VelocityImageFrontEnd,
    area_extent,
    create_front_end,
    front_end_output_shape,
    make_front_end,
)
from cfisac.sensing import sensing_indices

C = 299792458.0
CFG = SystemConfig.preset("tiny")  # N = M = 2, Nt = Mr = 4, Ns = 16, Ts = 8, Q = 1


def steer(c: float, n: int, d: float = 0.5) -> torch.Tensor:
    """Eq. (1)-(2) element by element."""
    return torch.tensor([complex(math.cos(-2 * math.pi * k * d * c), math.sin(-2 * math.pi * k * d * c))
                         for k in range(n)], dtype=torch.complex128) / math.sqrt(n)


def small_literal_case(*, seed: int) -> tuple[SystemConfig, torch.Tensor, torch.Tensor]:
    """A config small enough for the literal references (Ns = 8, Ts = 4, Nt = 3, Mr = 2) and 2 random scenes:
    y [2, Mr, Ns, Ts], x [2, N, Nt, Ns, Ts] complex128."""
    cfg = CFG.replace(n_subcarriers=8, n_symbols=4, n_tx_antennas=3, n_rx_antennas=2)
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(2, 2, 8, 4, dtype=torch.complex128, generator=g)
    x = torch.randn(2, 2, 3, 8, 4, dtype=torch.complex128, generator=g)
    return cfg, y, x


def white_x(cfg: SystemConfig, B: int, seed: int) -> torch.Tensor:
    """Independent QPSK symbols on every transmit antenna (a white, full-rank probing signal), complex128."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (B, cfg.n_tx, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols, 2), generator=g)
    return torch.complex(2.0 * bits[..., 0] - 1, 2.0 * bits[..., 1] - 1).to(torch.complex128) / math.sqrt(2) * 1e-2


def nearest(axis: torch.Tensor, v: float) -> int:
    return int((axis - v).abs().argmin())


def true_bins(fe: MatchedFrontEnd, cfg: SystemConfig, scenes: cfisac.Scene, b: int, n: int, m: int) -> tuple:
    geo = bistatic_geometry(cfg, scenes.positions, scenes.velocities)
    g = fe.grid
    return (nearest(g["cos_tx"], float(geo.tx.cos_angle[b, n, 0])),
            nearest(g["cos_rx"], float(geo.rx.cos_angle[b, m, 0])),
            nearest(g["bistatic_range"], float(geo.bistatic_range[b, n, m, 0])),
            nearest(g["bistatic_velocity"], float(geo.doppler[b, n, m, 0]) * C / cfg.carrier_frequency))


def argmax_bins(v: torch.Tensor) -> tuple:
    return tuple(int(i) for i in torch.unravel_index(v.argmax(), v.shape))


def only_tx(scenes: cfisac.Scene, n: int) -> cfisac.Scene:
    """The same scenes with the echoes of every transmit AP but n switched off (beta = 0)."""
    s = scenes.select(slice(None))
    s.reflection = torch.zeros_like(scenes.reflection)
    s.reflection[:, n] = scenes.reflection[:, n]
    return s


# ------------------------------------------------------------------------------------------- shapes and registry
def test_shapes_dtypes_and_registry():
    B = 3
    scenes = cfisac.sample_scenes(CFG, B, 0)
    x = cfisac.transmit_signals(CFG, scenes, 0)
    y = cfisac.sensing_echoes(CFG, scenes, x, seed=0)
    cases = [
        ("matched", {}, (2 * 4, 4, 16, 8)),
        ("matched", dict(tx_beams=2, angle_bins=8, delay_bins=8, doppler_bins=4), (2 * 2, 8, 8, 4)),
        ("matched", dict(output="complex"), (2 * 2 * 4, 4, 16, 8)),
        ("matched", dict(angle_transform=False, compress="log", norm="rms"), (8, 4, 16, 8)),
        ("matched", dict(beam_pool="max"), (2, 4, 16, 8)),
        ("image", dict(ap_index=1), (2, 8, 8, 8)),
        ("image", dict(ap_index=0, pixels=(4, 2), doppler_bins=4, norm="rms"), (2, 4, 2, 4)),
        ("covariance", {}, (1, 4, 16, 8)),
        ("covariance", dict(block=(4, 2), angle_bins=8), (1, 8, 4, 4)),
    ]
    for name, opts, shape in cases:
        fe = make_front_end(name, CFG, **opts)  # the model's registry finds this module's front ends
        assert fe.output_shape == shape == front_end_output_shape(name, CFG, **opts)
        assert fe.needs_x == fe.needs_transmit_signals == (name in ("matched", "image"))
        out = fe(y[:, 1], x if fe.needs_x else None)
        assert out.shape == (B, *shape) and out.dtype == torch.float32 and bool(torch.isfinite(out).all())
        assert fe.state_dict() == {}  # DFT matrices are not written to checkpoints
    assert create_front_end("raw", CFG).output_shape == (2, 4, 16, 8)
    assert isinstance(create_front_end("matched", CFG), MatchedFrontEnd)
    assert isinstance(create_front_end("covariance", CFG), CovarianceFrontEnd)


def test_default_grid_equals_raw_grid_so_fronthaul_bits_match():
    for preset in ("tiny", "quick", "paper"):
        cfg = SystemConfig.preset(preset)
        raw = create_front_end("raw", cfg).spatial_shape
        assert create_front_end("matched", cfg).spatial_shape == raw
        assert math.prod(create_front_end("image", cfg, ap_index=0).spatial_shape) == math.prod(raw)
        assert create_front_end("covariance", cfg).spatial_shape == raw
    assert create_front_end("matched", SystemConfig.preset("quick")).output_shape == (32, 16, 64, 16)


def test_grid_covers_every_target_in_the_area():
    cfg = SystemConfig.preset("quick")
    fe = create_front_end("matched", cfg)
    ext = area_extent(cfg)
    # Paper layout: d_n + d_m >= |p_n - p_m| = 100 m on the segment between AP 0s; corner (100, 0) to the far AP pair.
    assert ext["min_range"] == pytest.approx(100.0, abs=1e-6)
    assert ext["max_range"] == pytest.approx(cfg.max_bistatic_range(), abs=1e-6)  # attained at a corner
    scenes = cfisac.sample_scenes(cfg, 256, 1)
    geo = bistatic_geometry(cfg, scenes.positions, scenes.velocities)
    r, v = fe.grid["bistatic_range"], fe.grid["bistatic_velocity"]
    assert float(geo.bistatic_range.min()) > float(r[0]) and float(geo.bistatic_range.max()) < float(r[-1])
    bv = geo.doppler * C / cfg.carrier_frequency
    v_amb = cfg.resolution()["unambiguous_doppler_hz"] * C / cfg.carrier_frequency
    assert float(bv.abs().max()) < float(v[-1]) <= v_amb
    assert torch.allclose(v, -v.flip(0))  # symmetric about zero Doppler


# ------------------------------------------------------------------------------------------- literal reference
def literal_matched(cfg: SystemConfig, fe: MatchedFrontEnd, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The module docstring's F_{n,b}[a, k, l] (norm='none') summed literally over antennas, i and t."""
    B, N, Nt = x.shape[0], cfg.n_tx, cfg.n_tx_antennas
    i_idx, t_idx = sensing_indices(cfg)
    df, dT, fc = cfg.subcarrier_spacing, cfg.symbol_duration, cfg.carrier_frequency
    g = fe.grid
    out = torch.zeros(B, N, fe.tx_beams, *fe.spatial_shape, dtype=torch.complex128)
    for n in range(N):
        for bb, cb in enumerate(g["cos_tx"].tolist()):
            s = torch.einsum("k,bkit->bit", steer(cb, Nt).conj(), x[:, n])  # a_t(c_b)^H x
            for a, ca in enumerate(g["cos_rx"].tolist()):
                ya = torch.einsum("r,brit->bit", steer(ca, cfg.n_rx_antennas).conj(), y)  # a_r(c_a)^H y
                prod = ya * s.conj()
                for k, r in enumerate(g["bistatic_range"].tolist()):
                    for lv, v in enumerate(g["bistatic_velocity"].tolist()):
                        ph = 2 * math.pi * (i_idx[:, None] * df * r / C - t_idx[None, :] * (v * fc / C) * dT)
                        w = torch.polar(torch.ones_like(ph), ph)
                        out[:, n, bb, a, k, lv] = (prod * w).sum((1, 2)) / math.sqrt(cfg.n_subcarriers * cfg.n_symbols)
    return out


def test_matched_map_equals_literal_sums():
    cfg, y, x = small_literal_case(seed=0)
    fe = MatchedFrontEnd(cfg, norm="none", tx_beams=3, angle_bins=3, delay_bins=5, doppler_bins=4, output="complex")
    ref = literal_matched(cfg, fe, y, x)
    got = fe.complex_map(y, x)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    # "complex" output: (Re, Im) of channel (n, b) at 2 (n Nb + b) + (0, 1).
    out = fe(y, x)
    torch.testing.assert_close(out[:, 2 * (1 * 3 + 2)], ref[:, 1, 2].real.float())
    torch.testing.assert_close(out[:, 2 * (1 * 3 + 2) + 1], ref[:, 1, 2].imag.float())
    mag = MatchedFrontEnd(cfg, norm="none", tx_beams=3, angle_bins=3, delay_bins=5, doppler_bins=4)(y, x)
    torch.testing.assert_close(mag[:, 1 * 3 + 2], ref[:, 1, 2].abs().float())
    for pool, ref_pool in (("max", ref.abs().amax(2)), ("rms", ref.abs().pow(2).mean(2).sqrt())):
        fe_pool = MatchedFrontEnd(cfg, norm="none", tx_beams=3, angle_bins=3, delay_bins=5, doppler_bins=4,
                                  beam_pool=pool)
        torch.testing.assert_close(fe_pool(y, x), ref_pool.float())


def test_chunking_does_not_change_the_result():
    scenes = cfisac.sample_scenes(CFG, 5, 2)
    x = cfisac.transmit_signals(CFG, scenes, 2)
    y = cfisac.sensing_echoes(CFG, scenes, x, seed=2)[:, 0]
    for name in ("matched", "covariance"):
        a = create_front_end(name, CFG)(y, x)
        b = create_front_end(name, CFG, chunk_cells=1)(y, x)  # one sample per chunk
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------- physics
def test_on_grid_path_peaks_with_the_hand_computed_value():
    """y = g a_r(c_a) e^{-j 2 pi (i tau df - t fD dT)} s_{n,b}: the peak sits at (n, b, a, k, l) and reads
    |g| ||s_{n,b}|| / xi = sqrt(integrated SNR) with noise normalisation."""
    cfg = CFG
    fe = MatchedFrontEnd(cfg)
    g = fe.grid
    n, b, a, k, lv = 1, 2, 1, 9, 5
    x = white_x(cfg, 1, 3)
    i_idx, t_idx = sensing_indices(cfg)
    s = torch.einsum("k,kit->it", steer(float(g["cos_tx"][b]), cfg.n_tx_antennas).conj(), x[0, n])
    tau = float(g["bistatic_range"][k]) / C
    fd = float(g["bistatic_velocity"][lv]) * cfg.carrier_frequency / C
    ph = -2 * math.pi * (i_idx[:, None] * tau * cfg.subcarrier_spacing - t_idx[None] * fd * cfg.symbol_duration)
    gain = 3e-5 * complex(math.cos(1.0), math.sin(1.0))
    y = gain * steer(float(g["cos_rx"][a]), cfg.n_rx_antennas)[:, None, None] * torch.polar(torch.ones_like(ph), ph) * s
    out = fe(y[None], x)
    assert argmax_bins(out[0]) == (n * fe.tx_beams + b, a, k, lv)
    expect = abs(gain) * float(s.abs().pow(2).sum().sqrt()) / math.sqrt(cfg.noise_watt)
    assert float(out[0, n * fe.tx_beams + b, a, k, lv]) == pytest.approx(expect, rel=1e-4)
    assert expect == pytest.approx(float(y.abs().pow(2).sum().sqrt()) / math.sqrt(cfg.noise_watt), rel=1e-9)


def test_noiseless_single_target_peaks_at_its_true_bins_with_white_x():
    """Eq. (6) echoes of one target (cfisac.noiseless_echoes), a white probing signal: in the block of transmit AP n
    the map peaks at the nearest (transmit beam, AoA, bistatic delay, Doppler) bins of the (n, m) path."""
    cfg = CFG.replace(n_subcarriers=32, n_symbols=16, symbol_stride=8)
    fe = MatchedFrontEnd(cfg)
    scenes = cfisac.sample_scenes(cfg, 6, 11)
    x = white_x(cfg, 6, 4)
    y = cfisac.noiseless_echoes(cfg, scenes, x)
    hits, total = 0, 0
    for m in range(cfg.n_rx):
        out = fe(y[:, m], x).reshape(6, cfg.n_tx, fe.tx_beams, *fe.spatial_shape)
        for b in range(6):
            for n in range(cfg.n_tx):
                got, want = argmax_bins(out[b, n]), true_bins(fe, cfg, scenes, b, n, m)
                assert all(abs(u - v) <= 1 for u, v in zip(got, want, strict=True)), (b, n, m, got, want)
                hits += got == want
                total += 1
    assert hits >= 0.75 * total


def test_noiseless_single_target_peaks_at_true_delay_and_doppler_with_mmse_precoding():
    """The paper's MMSE-precoded x (low rank: K users): with only transmit AP n echoing, block n of the map peaks
    at the true delay and Doppler bins (+-1) and AoA (+-1); the peak magnitude is at most sqrt(integrated SNR)."""
    cfg = CFG.replace(n_subcarriers=32, n_symbols=16, symbol_stride=8)
    fe = MatchedFrontEnd(cfg)
    scenes = cfisac.sample_scenes(cfg, 6, 5)
    x = cfisac.transmit_signals(cfg, scenes, 5, dtype=torch.complex128)
    for n in range(cfg.n_tx):
        y = cfisac.noiseless_echoes(cfg, only_tx(scenes, n), x)[:, 0]
        out = fe(y, x).reshape(6, cfg.n_tx, fe.tx_beams, *fe.spatial_shape)
        snr = y.abs().pow(2).sum((1, 2, 3)) / cfg.noise_watt
        for b in range(6):
            got, want = argmax_bins(out[b, n]), true_bins(fe, cfg, scenes, b, n, 0)
            assert all(abs(u - v) <= 1 for u, v in zip(got[1:], want[1:], strict=True)), (b, n, got, want)
            assert float(out[b].max()) <= math.sqrt(float(snr[b])) * (1 + 1e-4)  # Cauchy-Schwarz


def test_noise_only_bins_are_unit_variance():
    cfg = CFG
    g = torch.Generator().manual_seed(1)
    y = torch.randn(64, cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols, dtype=torch.complex64, generator=g)
    y *= math.sqrt(cfg.noise_watt)
    scenes = cfisac.sample_scenes(cfg, 64, 1)
    x = cfisac.transmit_signals(cfg, scenes, 1)
    out = MatchedFrontEnd(cfg)(y, x)
    assert float(out.pow(2).mean()) == pytest.approx(1.0, abs=0.03)
    cov = CovarianceFrontEnd(cfg)(y)
    assert float(cov.mean()) == pytest.approx(1.0, abs=0.03)
    rms = MatchedFrontEnd(cfg, norm="rms")(y, x)
    torch.testing.assert_close(rms.pow(2).mean((1, 2, 3, 4)), torch.ones(64), rtol=1e-4, atol=1e-4)


def test_covariance_is_x_free_and_peaks_at_the_aoa():
    cfg = CFG.replace(n_rx_antennas=8)
    fe = CovarianceFrontEnd(cfg, angle_bins=16, block=(16, 8))  # one block: the spatial covariance's beam energies
    scenes = cfisac.sample_scenes(cfg, 8, 6)
    x = cfisac.transmit_signals(cfg, scenes, 6)
    y = cfisac.noiseless_echoes(cfg, scenes, x)
    geo = bistatic_geometry(cfg, scenes.positions, scenes.velocities)
    for m in range(cfg.n_rx):
        e = fe(y[:, m])  # no x
        assert e.shape == (8, 1, 16, 1, 1)
        for b in range(8):
            assert int(e[b].flatten().argmax()) == nearest(fe.grid["cos_rx"], float(geo.rx.cos_angle[b, m, 0]))
    # Literal: mean over the block of |a_r(c_a)^H y|^2 / xi^2.
    fe2 = CovarianceFrontEnd(cfg, block=(4, 2))
    a = 3
    ya = torch.einsum("r,brit->bit", steer(float(fe2.grid["cos_rx"][a]), 8).conj(), y[:, 1].to(torch.complex128))
    ref = ya.abs().pow(2).reshape(8, 4, 4, 4, 2).mean((2, 4)) / cfg.noise_watt
    torch.testing.assert_close(fe2(y[:, 1])[:, 0, a], ref.float(), rtol=1e-4, atol=0)


# ------------------------------------------------------------------------------------------- bad input
def test_bad_input_raises_value_error():
    fe = create_front_end("matched", CFG)
    y = torch.zeros(2, 4, 16, 8, dtype=torch.complex64)
    x = torch.zeros(2, 2, 4, 16, 8, dtype=torch.complex64)
    with pytest.raises(ValueError, match="needs the transmit signals"):
        fe(y, None)
    with pytest.raises(ValueError, match="complex"):
        fe(y.real, x)
    with pytest.raises(ValueError, match=r"\[B, Mr, Ns, Ts\]"):
        fe(y[:, :3], x)
    with pytest.raises(ValueError, match="x must be complex"):
        fe(y, x[:1])
    with pytest.raises(ValueError, match="x must be complex"):
        fe(y, x[:, :, :3])
    with pytest.raises(ValueError, match="complex"):
        create_front_end("covariance", CFG)(y.abs())
    for opts, msg in [(dict(tx_beams=0), "tx_beams"), (dict(output="phase"), "output"),
                      (dict(norm="max"), "normalisation"), (dict(compress="sqrt"), "compress"),
                      (dict(delay_bins=2.5), "delay_bins"),
                      (dict(angle_transform=False, angle_bins=8), "angle_transform"),
                      (dict(beam_pool="sum"), "beam_pool"), (dict(beam_pool="max", output="complex"), "magnitude")]:
        with pytest.raises(ValueError, match=msg):
            MatchedFrontEnd(CFG, **opts)
    with pytest.raises(ValueError, match="block"):
        CovarianceFrontEnd(CFG, block=(3, 1))
    with pytest.raises(ValueError, match="unknown front end"):
        create_front_end("nope", CFG)


def test_front_ends_build_inside_a_meta_device_context():
    """The model code counts parameters under ``torch.device("meta")``: the constants must stay real."""
    with torch.device("meta"):
        fe = create_front_end("matched", CFG)
        cov = create_front_end("covariance", CFG)
    assert fe.delay_matrix.device.type == "cpu" and cov.rx_weights.device.type == "cpu"
    assert fe.output_shape == (8, 4, 16, 8)


def literal_pixel_paths(cfg: SystemConfig, fe: ImageFrontEnd, y: torch.Tensor, x: torch.Tensor, noise: bool = False):
    """For every pixel (a, b) of ``fe.grid`` and transmit AP n, with the geometry computed by hand: yields
    (a, b, n, z, delay phase, u) with z [B, Ns, Ts] = a_r(c_m(g))^H y conj(a_t(c_n(g))^H x_n) (the data-removed
    product; with ``noise`` divided by xi sqrt(mean_{i,t} |a_t(c_n(g))^H x_n|^2)), the delay phase
    e^{+j 2 pi i df (d_n + d_m) / c} [Ns, 1] and u = e_n(g) + e_m(g)."""
    m = fe.ap_index
    i_idx, _ = sensing_indices(cfg)
    rp, ra = cfg.rx_positions[m], cfg.rx_axes[m]
    for a, px in enumerate(fe.grid["x"].tolist()):
        for b, py in enumerate(fe.grid["y"].tolist()):
            dm = math.dist(rp, (px, py))
            em = ((px - rp[0]) / dm, (py - rp[1]) / dm)
            ya = torch.einsum("r,brit->bit", steer(ra[0] * em[0] + ra[1] * em[1], cfg.n_rx_antennas).conj(), y)
            for n in range(cfg.n_tx):
                tp, ta = cfg.tx_positions[n], cfg.tx_axes[n]
                dn = math.dist(tp, (px, py))
                en = ((px - tp[0]) / dn, (py - tp[1]) / dn)
                s = torch.einsum("k,bkit->bit", steer(ta[0] * en[0] + ta[1] * en[1], cfg.n_tx_antennas).conj(), x[:, n])
                ph = 2 * math.pi * i_idx[:, None] * cfg.subcarrier_spacing * (dn + dm) / C
                z = ya * s.conj()
                if noise:
                    z = z / (s.abs().pow(2).mean((1, 2)).sqrt() * math.sqrt(cfg.noise_watt))[:, None, None]
                yield a, b, n, z, torch.polar(torch.ones_like(ph), ph), (en[0] + em[0], en[1] + em[1])


def doppler_phase(cfg: SystemConfig, fd: float) -> torch.Tensor:
    """e^{-j 2 pi t fD dT} at the sensing symbols [1, Ts]."""
    _, t_idx = sensing_indices(cfg)
    ph = -2 * math.pi * t_idx[None, :] * fd * cfg.symbol_duration
    return torch.polar(torch.ones_like(ph), ph)


def literal_image(cfg: SystemConfig, fe: ImageFrontEnd, y: torch.Tensor, x: torch.Tensor,
                  noise: bool = False) -> torch.Tensor:
    """ImageFrontEnd's I_n[g, l] (norm='none', or 'noise') with the geometry of every pixel computed by hand."""
    gx, gy, d3 = fe.spatial_shape
    out = torch.zeros(x.shape[0], cfg.n_tx, gx, gy, d3, dtype=torch.complex128)
    for a, b, n, z, w_delay, _ in literal_pixel_paths(cfg, fe, y, x, noise):
        for lv, v in enumerate(fe.grid["bistatic_velocity"].tolist()):
            w = w_delay * doppler_phase(cfg, v * cfg.carrier_frequency / C)
            out[:, n, a, b, lv] = (z * w).sum((1, 2)) / math.sqrt(cfg.n_subcarriers * cfg.n_symbols)
    return out


def test_image_equals_literal_back_projection():
    cfg, y, x = small_literal_case(seed=5)
    for m in range(cfg.n_rx):
        fe = ImageFrontEnd(cfg, ap_index=m, norm="none", pixels=(3, 2), doppler_bins=3)
        ref = literal_image(cfg, fe, y, x)
        torch.testing.assert_close(fe.complex_map(y, x), ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(fe(y, x), ref.abs().float())
    # noise normalisation: per (n, pixel) by xi sqrt(mean |a_t(c_n(g))^H x_n|^2)
    fe = ImageFrontEnd(cfg, ap_index=1, pixels=(3, 2), doppler_bins=3)
    s = torch.einsum("gk,bkit->bgit", fe.tx_weights[0], x[:, 0])
    scale = s.abs().pow(2).mean((-2, -1)).sqrt() * math.sqrt(cfg.noise_watt)
    ref = literal_image(cfg, ImageFrontEnd(cfg, ap_index=1, norm="none", pixels=(3, 2), doppler_bins=3), y, x)
    torch.testing.assert_close(fe(y, x)[:, 0], (ref[:, 0].abs() / scale.reshape(2, 3, 2, 1)).float())


def test_image_of_a_noiseless_target_peaks_at_its_pixel():
    """White x, one target, each transmit AP alone: the image of receive AP m peaks at the target's pixel and its
    Doppler bin, in the channel of that transmit AP (near the baseline the bistatic range hardly changes with y, so
    a peak may sit a pixel or two off in y: the true pixel then still holds >= 0.7 of the peak)."""
    cfg = CFG.replace(n_subcarriers=32, n_symbols=16, symbol_stride=8, n_rx_antennas=8)
    scenes = cfisac.sample_scenes(cfg, 5, 21)
    x = white_x(cfg, 5, 8)
    geo = bistatic_geometry(cfg, scenes.positions, scenes.velocities)
    exact = 0
    for m in range(cfg.n_rx):
        fe = ImageFrontEnd(cfg, ap_index=m)
        assert fe.output_shape == (2, 16, 16, 16)
        vel = geo.doppler[:, :, m, 0] * C / cfg.carrier_frequency
        for n in range(cfg.n_tx):
            out = fe(cfisac.noiseless_echoes(cfg, only_tx(scenes, n), x)[:, m], x)
            for b in range(5):
                got = argmax_bins(out[b, n])
                want = (nearest(fe.grid["x"], float(scenes.positions[b, 0, 0])),
                        nearest(fe.grid["y"], float(scenes.positions[b, 0, 1])),
                        nearest(fe.grid["bistatic_velocity"], float(vel[b, n])))
                assert abs(got[0] - want[0]) <= 1 and abs(got[1] - want[1]) <= 2 and got[2] == want[2], (got, want)
                assert float(out[b, n][want]) >= 0.7 * float(out[b, n].max())
                assert float(out[b, 1 - n].max()) < 0.35 * float(out[b, n].max())  # the other AP: only sidelobes
                exact += got == want
    assert exact >= 12  # of 20 (13 with these seeds)


def test_image_tapers_equal_tapered_data_and_keep_the_noise_scale():
    """window='hann' / 'taylor' is the untapered back-projection of tapered data: y w_r w_i w_t over receive antennas,
    subcarriers and symbols, x w_k over transmit antennas (literal identity of the linear sums); the tapers have unit
    RMS, and with norm='noise' an echo of pure noise still has unit mean power per pixel (the weighted beam power)."""
    from cfisac.models.front_ends.image import taper

    cfg, y, x = small_literal_case(seed=11)
    for window in ("hann", "taylor"):
        w = [taper(window, n) for n in (cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols, cfg.n_tx_antennas)]
        for v in w:
            torch.testing.assert_close(v.square().mean(), torch.tensor(1.0, dtype=torch.float64))
            assert v.numel() < 3 or float(v.max() - v.min()) > 0.1  # a taper, not ones (symmetric: n = 2 is flat)
        yt = y * w[0][:, None, None] * w[1][:, None] * w[2]
        xt = x * w[3][:, None, None]
        for m in range(cfg.n_rx):
            opts = dict(ap_index=m, norm="none", pixels=(3, 2), doppler_bins=3)
            got = ImageFrontEnd(cfg, window=window, **opts).complex_map(y, x)
            torch.testing.assert_close(got, ImageFrontEnd(cfg, **opts).complex_map(yt, xt), rtol=1e-10, atol=1e-10)
            vel = VelocityImageFrontEnd(cfg, window=window, ap_index=m, norm="none", pixels=(3, 2),
                                        velocity_bins=(3, 2))(y, x)
            ref = VelocityImageFrontEnd(cfg, ap_index=m, norm="none", pixels=(3, 2), velocity_bins=(3, 2))(yt, xt)
            torch.testing.assert_close(vel, ref, rtol=1e-5, atol=1e-6)
    # noise normalisation: noise-only echoes with the config's noise power, MMSE-precoded x of the simulator
    cfg = SystemConfig.preset("tiny")
    scenes = cfisac.sample_scenes(cfg, 8, 5)
    x = cfisac.transmit_signals(cfg, scenes, 5, dtype=torch.complex128)
    g = torch.Generator().manual_seed(3)
    shape = (8, cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols)
    noise = [torch.randn(*shape, dtype=torch.complex128, generator=g) * math.sqrt(cfg.noise_watt) for _ in range(16)]
    for window in ("none", "hann", "taylor"):
        fe = ImageFrontEnd(cfg, ap_index=0, window=window)
        power = torch.stack([fe.complex_map(v, x).abs().square().mean() for v in noise]).mean()
        assert abs(float(power) - 1.0) < 0.05, (window, float(power))
    with pytest.raises(ValueError, match="window must be one of"):
        ImageFrontEnd(cfg, ap_index=0, window="hamming")


def test_image_needs_its_receive_ap():
    with pytest.raises(ValueError, match="ap_index"):
        create_front_end("image", CFG)
    with pytest.raises(ValueError, match="ap_index"):
        ImageFrontEnd(CFG, ap_index=2)
    with pytest.raises(ValueError, match="needs the transmit signals"):
        ImageFrontEnd(CFG, ap_index=0)(torch.zeros(1, 4, 16, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="'velocity-image' front end is specific to its receive AP"):
        create_front_end("velocity-image", CFG)
    with pytest.raises(ValueError, match="velocity_bins must be a pair"):
        VelocityImageFrontEnd(CFG, ap_index=0, velocity_bins=(8,))
    with pytest.raises(ValueError, match="velocity_bins"):
        VelocityImageFrontEnd(CFG, ap_index=0, velocity_bins=(8, 0))
    with pytest.raises(ValueError, match="velocity_output must be 'plane' or 'marginals'"):
        VelocityImageFrontEnd(CFG, ap_index=0, velocity_output="max")
    with pytest.raises(ValueError, match="as many v_x as v_y bins"):
        VelocityImageFrontEnd(CFG, ap_index=0, velocity_bins=(8, 4), velocity_output="marginals")
    # matched / covariance accept (and ignore) the receive AP index the model may pass
    assert create_front_end("matched", CFG, ap_index=1).output_shape == create_front_end("matched", CFG).output_shape


# ------------------------------------------------------------------------------------------- velocity image
def literal_velocity_image(cfg: SystemConfig, fe: VelocityImageFrontEnd, y: torch.Tensor,
                           x: torch.Tensor, noise: bool = False) -> torch.Tensor:
    """VelocityImageFrontEnd (norm='none') by hand: for every pixel, velocity (vx, vy) and transmit AP n the matched
    filter with the pixel's delay, angles and the bistatic Doppler v . (e_n + e_m) fc / c; root-mean over n."""
    gx, gy, vxn = fe.spatial_shape
    out = torch.zeros(x.shape[0], fe.in_channels, gx, gy, vxn, dtype=torch.float64)
    for a, b, _, z, w_delay, u in literal_pixel_paths(cfg, fe, y, x, noise):
        for ky, vy in enumerate(fe.grid["velocity_y"].tolist()):
            for kx, vx in enumerate(fe.grid["velocity_x"].tolist()):
                w = w_delay * doppler_phase(cfg, (vx * u[0] + vy * u[1]) * cfg.carrier_frequency / C)
                v = (z * w).sum((1, 2))
                out[:, ky, a, b, kx] += v.abs() ** 2 / (cfg.n_subcarriers * cfg.n_symbols) / cfg.n_tx
    return out.sqrt()


def test_velocity_image_equals_literal_back_projection_and_chunking_is_exact():
    cfg, y, x = small_literal_case(seed=7)
    for m in range(cfg.n_rx):
        fe = VelocityImageFrontEnd(cfg, ap_index=m, norm="none", pixels=(3, 2), velocity_bins=(3, 2))
        assert fe.output_shape == (2, 3, 2, 3)
        ref = literal_velocity_image(cfg, fe, y, x)
        torch.testing.assert_close(fe(y, x), ref.float(), rtol=1e-5, atol=1e-6)
        small = VelocityImageFrontEnd(cfg, ap_index=m, norm="none", pixels=(3, 2), velocity_bins=(3, 2),
                                      chunk_cells=5)  # one pixel and one sample per chunk
        torch.testing.assert_close(small(y, x), fe(y, x))
        # the marginals: max over v_y of the literal plane (the v_x profile), max over v_x (the v_y profile)
        marg = VelocityImageFrontEnd(cfg, ap_index=m, norm="none", pixels=(3, 2), velocity_bins=(3, 3),
                                     velocity_output="marginals")
        plane = literal_velocity_image(cfg, VelocityImageFrontEnd(cfg, ap_index=m, norm="none", pixels=(3, 2),
                                                                  velocity_bins=(3, 3)), y, x)  # [B, Vy, Gx, Gy, Vx]
        assert marg.output_shape == (2, 3, 2, 3)
        want = torch.stack([plane.amax(1), plane.amax(4).permute(0, 2, 3, 1)], 1)  # [B, 2, Gx, Gy, V]
        torch.testing.assert_close(marg(y, x), want.float(), rtol=1e-5, atol=1e-6)


def test_velocity_image_of_a_noiseless_target_peaks_at_its_position_and_velocity():
    """MMSE-precoded x of the simulator, one target, both transmit APs: each receive AP's map peaks within a pixel of
    the target and within one velocity bin of its velocity (the velocity grid spans the prior box)."""
    cfg = SystemConfig.preset("tiny", n_subcarriers=32, n_symbols=16, symbol_stride=8, n_rx_antennas=8)
    scenes = cfisac.sample_scenes(cfg, 6, 3)
    x = cfisac.transmit_signals(cfg, scenes, 3, dtype=torch.complex128)
    y = cfisac.noiseless_echoes(cfg, scenes, x)
    hits = marg_hits = 0
    for m in range(cfg.n_rx):
        fe = create_front_end("velocity-image", cfg, ap_index=m, velocity_bins=(16, 16))
        assert fe.output_shape == (16, 16, 16, 16)  # (Vy, Gx, Gy, Vx)
        out = fe(y[:, m], x)
        for b in range(6):
            ky, gx, gy, kx = argmax_bins(out[b])
            want = (nearest(fe.grid["velocity_y"], float(scenes.velocities[b, 0, 1])),
                    nearest(fe.grid["x"], float(scenes.positions[b, 0, 0])),
                    nearest(fe.grid["y"], float(scenes.positions[b, 0, 1])),
                    nearest(fe.grid["velocity_x"], float(scenes.velocities[b, 0, 0])))
            hits += max(abs(ky - want[0]), abs(gx - want[1]), abs(gy - want[2]), abs(kx - want[3])) <= 1
        # marginals: at the peak pixel of the v_x profile, the v_x and v_y profiles peak at the two components
        marg = create_front_end("velocity-image", cfg, ap_index=m, velocity_output="marginals",
                                velocity_bins=(16, 16))(y[:, m], x)
        assert marg.shape == (6, 2, 16, 16, 16)
        for b in range(6):
            gx, gy, kx = argmax_bins(marg[b, 0])
            ky = int(marg[b, 1, gx, gy].argmax())
            want = (nearest(fe.grid["x"], float(scenes.positions[b, 0, 0])),
                    nearest(fe.grid["y"], float(scenes.positions[b, 0, 1])),
                    nearest(fe.grid["velocity_x"], float(scenes.velocities[b, 0, 0])),
                    nearest(fe.grid["velocity_y"], float(scenes.velocities[b, 0, 1])))
            marg_hits += max(abs(gx - want[0]), abs(gy - want[1]), abs(kx - want[2]), abs(ky - want[3])) <= 1
    assert hits >= 10, hits  # of 12
    assert marg_hits >= 10, marg_hits


def test_models_give_each_receive_ap_its_own_index():
    from cfisac.models import ModelConfig, build_model

    mcfg = ModelConfig.preset("tiny", front_end="image", input_norm="noise")
    model = build_model("dvqvae", CFG, mcfg)
    assert [ap.front_end.ap_index for ap in model.aps] == list(range(CFG.n_rx))
    # an explicit ap_index in the options does not pin every AP to one receive AP
    mcfg = ModelConfig.preset("tiny", front_end="velocity-image", input_norm="noise",
                              front_end_options={"ap_index": 0, "velocity_bins": (8, 4)})
    model = build_model("dvqvae", CFG, mcfg)
    assert [ap.front_end.ap_index for ap in model.aps] == list(range(CFG.n_rx))
    assert model.fronthaul_bits_per_ap == build_model("dvqvae", CFG, ModelConfig.preset("tiny")).fronthaul_bits_per_ap
    # Algorithm 1 forward and Algorithm 2 messages run through the velocity-image front end
    batch = cfisac.data.simulate_batch(CFG, 0, range(3))
    assert model(batch["y"], batch["x"]).prediction.shape == (3, 4 * CFG.n_targets)
    messages = model.encode(batch["y"], batch["x"])
    assert all(len(m) == 3 for m in messages)
    assert model.decode(messages, batch["x"]).shape == (3, 4 * CFG.n_targets)


# ------------------------------------------------------------------------------------------- fast paths
def noisy_tiny_scenes(B: int = 3, seed: int = 12):
    """Simulated noisy echoes of the tiny preset (complex64, as the simulator gives them) and their x."""
    scenes = cfisac.sample_scenes(CFG, B, seed)
    x = cfisac.transmit_signals(CFG, scenes, seed)
    return cfisac.sensing_echoes(CFG, scenes, x, seed=seed), x


def close_to(got: torch.Tensor, ref: torch.Tensor) -> None:
    """complex64 / float32 computation against a complex128 reference: float32 rounding of the peak."""
    torch.testing.assert_close(got, ref.to(got.dtype), rtol=2e-4, atol=2e-5 * float(ref.abs().max()))


def test_complex64_matched_on_noisy_scenes_equals_literal_sums():
    y, x = noisy_tiny_scenes()
    y1, x64 = y[:, 1].to(torch.complex128), x.to(torch.complex128)
    fe = MatchedFrontEnd(CFG, norm="none")
    ref = literal_matched(CFG, fe, y1, x64)  # [B, N, Nb, D1, D2, D3] complex128
    close_to(fe.complex_map(y[:, 1], x), ref)
    # noise normalisation: channel (n, b) divided by xi sqrt(mean |a_t(c_b)^H x_n|^2)
    beams = torch.stack([torch.einsum("k,bkit->bit", steer(float(c), CFG.n_tx_antennas).conj(), x64[:, n])
                         for n in range(CFG.n_tx) for c in fe.grid["cos_tx"]], 1)
    scale = beams.abs().pow(2).mean((2, 3)).sqrt().reshape(3, CFG.n_tx, fe.tx_beams) * math.sqrt(CFG.noise_watt)
    noise_ref = ref.abs() / scale[..., None, None, None]
    close_to(MatchedFrontEnd(CFG)(y[:, 1], x), noise_ref.reshape(3, -1, *fe.spatial_shape))
    close_to(MatchedFrontEnd(CFG, beam_pool="max")(y[:, 1], x), noise_ref.amax(2))
    rms = ref.abs() / ref.abs().pow(2).mean((1, 2, 3, 4, 5), keepdim=True).sqrt()
    close_to(MatchedFrontEnd(CFG, norm="rms", beam_pool="rms", compress="log")(y[:, 1], x),
             torch.log1p(rms.pow(2).mean(2).sqrt()))


def test_complex64_image_and_velocity_image_on_noisy_scenes_equal_literal_back_projections():
    y, x = noisy_tiny_scenes()
    x64 = x.to(torch.complex128)
    for m in range(CFG.n_rx):
        ym = y[:, m]
        fe = ImageFrontEnd(CFG, ap_index=m)  # default noise normalisation, 8 x 8 pixels
        ref = literal_image(CFG, fe, ym.to(torch.complex128), x64, noise=True)
        close_to(fe.complex_map(ym, x), ref)
        close_to(fe(ym, x), ref.abs())
        raw = literal_image(CFG, fe, ym.to(torch.complex128), x64).abs()  # rms: of the un-normalised map
        rms = ImageFrontEnd(CFG, ap_index=m, norm="rms", compress="log")(ym, x)
        close_to(rms, torch.log1p(raw / raw.pow(2).mean((1, 2, 3, 4), keepdim=True).sqrt()))
    vfe = VelocityImageFrontEnd(CFG, ap_index=1, velocity_bins=(8, 8))
    plane = literal_velocity_image(CFG, vfe, y[:, 1].to(torch.complex128), x64, noise=True)  # [B, Vy, Gx, Gy, Vx]
    close_to(vfe(y[:, 1], x), plane)
    marg = VelocityImageFrontEnd(CFG, ap_index=1, velocity_bins=(8, 8), velocity_output="marginals")(y[:, 1], x)
    close_to(marg, torch.stack([plane.amax(1), plane.amax(4).permute(0, 2, 3, 1)], 1))
    raw = literal_velocity_image(CFG, vfe, y[:, 1].to(torch.complex128), x64)
    rms = VelocityImageFrontEnd(CFG, ap_index=1, velocity_bins=(8, 8), norm="rms")(y[:, 1], x)
    close_to(rms, raw / raw.pow(2).mean((1, 2, 3, 4), keepdim=True).sqrt())


def test_beam_and_pixel_chunks_and_uncached_velocity_phases_give_the_same_maps(monkeypatch):
    y, x = noisy_tiny_scenes(B=4, seed=13)
    ym = y[:, 0]
    img = ImageFrontEnd(CFG, ap_index=0)(ym, x)
    torch.testing.assert_close(ImageFrontEnd(CFG, ap_index=0, chunk_cells=1)(ym, x), img)  # 1 scene x 1 pixel
    for opts in (dict(beam_pool="max"), dict(beam_pool="rms", norm="rms")):  # pooled over chunks of one beam
        one = MatchedFrontEnd(CFG, chunk_cells=1, **opts)
        torch.testing.assert_close(one(ym, x), MatchedFrontEnd(CFG, **opts)(ym, x))
    vel = VelocityImageFrontEnd(CFG, ap_index=0)
    assert vel.velocity_phase_x is not None  # small enough to keep
    ref = vel(ym, x)
    monkeypatch.setattr("cfisac.models.front_ends.image.VELOCITY_PHASE_CELLS", 0)
    uncached = VelocityImageFrontEnd(CFG, ap_index=0, chunk_cells=300)
    assert uncached.velocity_phase_x is None  # built per pixel chunk, as at the paper preset
    torch.testing.assert_close(uncached(ym, x), ref)


def test_cached_constants_follow_the_buffers():
    y, x = noisy_tiny_scenes(B=2, seed=14)
    fe = MatchedFrontEnd(CFG, norm="none")
    a = fe(y[:, 0], x)
    fe.rx_weights = fe.rx_weights * 2.0  # a new buffer tensor (as .to() makes): the cached cast must not be reused
    torch.testing.assert_close(fe(y[:, 0], x), 2.0 * a)
    assert fe(y[:, 0].to(torch.complex128), x).dtype == torch.float32  # complex128 path, own cast


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_front_ends_run_on_cuda_like_on_the_cpu():
    y, x = noisy_tiny_scenes(B=2, seed=15)
    for fe in (MatchedFrontEnd(CFG, beam_pool="max"), ImageFrontEnd(CFG, ap_index=1),
               VelocityImageFrontEnd(CFG, ap_index=0, velocity_output="marginals"), CovarianceFrontEnd(CFG)):
        cpu = fe(y[:, 0], x)
        gpu = fe.to("cuda")(y[:, 0].cuda(), x.cuda())
        assert gpu.device.type == "cuda"
        close_to(gpu.cpu(), cpu.double())


def test_front_end_modules_import_no_model_module():
    """One import direction: the front-end modules import the simulator layer and each other, no model module (the
    models import the front ends)."""
    import ast
    import importlib
    import inspect
    import pkgutil

    import cfisac.models.front_ends as package

    names = ["cfisac.models.front_ends"] + [f"cfisac.models.front_ends.{m.name}"
                                            for m in pkgutil.iter_modules(package.__path__)]
    assert len(names) == 6, names  # the package, base, raw, matched, image, covariance
    for name in names:
        tree = ast.parse(inspect.getsource(importlib.import_module(name)))
        imported = [("." * n.level) + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        outside = [m for m in imported if m.startswith("..") and not m.startswith("...")]
        assert outside in ([], ["..config"]), (name, outside)  # ..config: ModelConfig, for type hints only
        assert not [m for m in imported if m.startswith("cfisac")], (name, imported)
    assert package.available_front_ends() == ["covariance", "image", "matched", "raw", "velocity-image"]
