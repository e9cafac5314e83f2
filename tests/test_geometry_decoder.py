"""The geometry-aware CPU decoder: shapes, the fixed geometric layers against literal references, gradients,
learning on a fixed batch, bad options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import cfisac
from cfisac.geometry import bistatic_geometry
from cfisac.models import ModelConfig, build_model
from cfisac.models.geometry_decoder import (
    GeometryCpuTrainer,
    GeometryDecoder,
    bistatic_directions,
    focal_heatmap_loss,
    gaussian_heatmap,
    geometry_loss,
    pixel_centres,
    soft_argmax_window,
    top_peaks,
    velocity_least_squares,
)
from cfisac.train import ApTrainer, train_step


def _mcfg(**options) -> ModelConfig:
    return ModelConfig.preset("tiny", front_end="image", input_norm="noise", decoder="geometry",
                              decoder_options=options)


@pytest.fixture(scope="module")
def cfg2() -> cfisac.SystemConfig:
    """``tiny`` with two targets (the readout's ordering and peak picking need Q > 1)."""
    return cfisac.SystemConfig.preset("tiny").replace(power_dbm=55.0, n_targets=2)


# ---------------------------------------------------------------------------------------------------- shapes
def test_model_shapes_and_fronthaul_unchanged(tiny_cfg, tiny_batch):
    _, x, y = tiny_batch
    geo = build_model("dvqvae", tiny_cfg, _mcfg(), seed=0)
    gen = build_model("dvqvae", tiny_cfg, ModelConfig.preset("tiny", front_end="image", input_norm="noise"), seed=0)
    assert geo.fronthaul_bits_per_ap == gen.fronthaul_bits_per_ap  # same encoder + quantizer, same message
    dec = geo.cpu_side.decoder
    assert isinstance(dec, GeometryDecoder)
    payloads = [torch.randn(4, *geo.cpu_side.payload_shape) for _ in range(tiny_cfg.n_rx)]
    maps = dec.maps(payloads)
    g = dec.map_shape
    assert g == (8, 8)  # the image front end's pixel grid of tiny (latent 2 x 2, two upsamplings)
    P = tiny_cfg.n_rx * tiny_cfg.n_tx
    assert maps["heat"].shape == (4, *g) and maps["offset"].shape == (4, 2, *g)
    assert maps["bistatic"].shape == (4, P, *g) and maps["log_weight"].shape == (4, P, *g)
    out = geo(y, x)
    assert out.prediction.shape == (4, 4 * tiny_cfg.n_targets) and out.prediction.dtype == torch.float32
    geo.sync_codebooks()
    psi = geo.decode(geo.encode(y, x), x)  # Algorithm 2: messages -> psi
    assert psi.shape == (4, 4 * tiny_cfg.n_targets) and torch.isfinite(psi).all()
    # the D-VAE works with it too; half resolution maps with map_upsample=1
    dvae = build_model("dvae", tiny_cfg, _mcfg(map_upsample=1, fusion="sum"), seed=0)
    assert dvae.cpu_side.decoder.map_shape == (4, 4)
    assert dvae(y, x).prediction.shape == (4, 4 * tiny_cfg.n_targets)


def test_model_config_json_round_trip():
    m = _mcfg(map_channels=8, peak_readout="softargmax")
    assert ModelConfig.from_dict(m.to_dict()) == m
    assert ModelConfig.preset("tiny").decoder == "generic"  # the paper's decoder stays the default


# ---------------------------------------------------------------------------------------------------- geometry
def test_velocity_least_squares_matches_numpy_lstsq():
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(5, 4, 2, generator=gen, dtype=torch.float64)
    b = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    w = torch.rand(5, 4, generator=gen, dtype=torch.float64) + 0.1
    v = velocity_least_squares(u, b, w, ridge=0.0)
    for k in range(5):
        sw = np.sqrt(w[k].numpy())
        ref = np.linalg.lstsq(sw[:, None] * u[k].numpy(), sw * b[k].numpy(), rcond=None)[0]
        np.testing.assert_allclose(v[k].numpy(), ref, rtol=1e-10, atol=1e-12)
    v1 = velocity_least_squares(u, b, None, ridge=0.0)  # unweighted
    np.testing.assert_allclose(v1[0].numpy(), np.linalg.lstsq(u[0].numpy(), b[0].numpy(), rcond=None)[0],
                               rtol=1e-10)


def test_bistatic_directions_give_the_simulator_doppler(cfg2):
    gen = torch.Generator().manual_seed(1)
    pts = torch.rand(3, 2, 2, generator=gen, dtype=torch.float64) * 80 + 10
    vel = (torch.rand(3, 2, 2, generator=gen, dtype=torch.float64) - 0.5) * 40
    u = bistatic_directions(pts, torch.tensor(cfg2.tx_positions, dtype=torch.float64),
                            torch.tensor(cfg2.rx_positions, dtype=torch.float64))  # [3, Q, M N, 2]
    geo = bistatic_geometry(cfg2, pts, vel)  # doppler [B, N, M, Q]
    bv = geo.doppler * cfisac.config.SPEED_OF_LIGHT / cfg2.carrier_frequency
    N, M = cfg2.n_tx, cfg2.n_rx
    for m in range(M):
        for n in range(N):
            np.testing.assert_allclose((u[:, :, m * N + n] * vel).sum(-1).numpy(), bv[:, n, m].numpy(), rtol=1e-12)
    # and the least squares on exact bistatic velocities returns the velocity
    b = (u * vel[..., None, :]).sum(-1)
    np.testing.assert_allclose(velocity_least_squares(u, b, ridge=0.0).numpy(), vel.numpy(), rtol=1e-9, atol=1e-9)


def test_soft_argmax_window_hand_computed():
    xs = torch.tensor([0.5, 1.5, 2.5, 3.5], dtype=torch.float64)
    ys = torch.tensor([10.0, 20.0, 30.0, 40.0], dtype=torch.float64)
    logits = torch.full((1, 4, 4), -50.0, dtype=torch.float64)
    logits[0, 1, 2] = math.log(2.0)  # the peak (x 1.5, y 30)
    logits[0, 2, 2] = 0.0  # its neighbour in x (2.5, 30): weight 1 against the peak's 2
    logits[0, 3, 3] = 5.0  # outside the 3x3 window of (1, 2): ignored
    pos = soft_argmax_window(logits, torch.tensor([[1 * 4 + 2]]), xs, ys, window=3)
    # exp(-50) terms are ~1e-22 of the two: x = (2 * 1.5 + 1 * 2.5) / 3, y = 30
    np.testing.assert_allclose(pos[0, 0].numpy(), [(2 * 1.5 + 2.5) / 3, 30.0], rtol=1e-12)
    # at a corner only the pixels inside the grid count: (0, 0) and (1, 0) equal, the rest -inf-like
    logits = torch.full((1, 4, 4), -1e9, dtype=torch.float64)
    logits[0, 0, 0] = logits[0, 1, 0] = 1.0
    pos = soft_argmax_window(logits, torch.tensor([[0]]), xs, ys, window=3)
    np.testing.assert_allclose(pos[0, 0].numpy(), [1.0, 10.0], rtol=1e-12)


def test_top_peaks_suppresses_neighbours():
    heat = torch.zeros(1, 6, 6)
    heat[0, 1, 1], heat[0, 1, 2], heat[0, 4, 4] = 5.0, 4.0, 3.0  # (1, 2) is next to the largest: not a peak
    flat = top_peaks(heat, 2)
    assert flat.tolist() == [[1 * 6 + 1, 4 * 6 + 4]]


def test_gaussian_heatmap_and_focal_loss_against_literal_loops():
    xs, ys = pixel_centres(((0.0, 8.0), (0.0, 8.0)), (8, 8))
    pos = torch.tensor([[[2.2, 5.9], [6.5, 0.4]]], dtype=torch.float64)
    hm = gaussian_heatmap(pos, xs, ys, sigma_px=1.5)
    ref = np.zeros((8, 8))
    for i in range(8):
        for j in range(8):
            ref[i, j] = max(math.exp(-((i - int(px)) ** 2 + (j - int(py)) ** 2) / (2 * 1.5**2)) for px, py in pos[0])
    np.testing.assert_allclose(hm[0].numpy(), ref, rtol=1e-12)
    assert hm[0, 2, 5] == 1.0 and hm[0, 6, 0] == 1.0
    logits = torch.linspace(-3, 3, 64, dtype=torch.float64).reshape(1, 8, 8)
    loss = focal_heatmap_loss(logits, hm, 2)
    acc = 0.0
    for i in range(8):
        for j in range(8):
            p = 1 / (1 + math.exp(-float(logits[0, i, j])))
            t = float(hm[0, i, j])
            acc += (1 - p) ** 2 * math.log(p) if t == 1.0 else (1 - t) ** 4 * p**2 * math.log(1 - p)
    assert float(loss) == pytest.approx(-acc / 2, rel=1e-10)


def test_readout_on_exact_maps_returns_the_targets(cfg2):
    """Hand-made maps: heat peaks at the targets' pixels, exact offsets and bistatic velocities (with weights that
    make the prior's ridge negligible) -> the positions and velocities themselves, in ascending x."""
    mcfg = _mcfg()
    dec = build_model("dvqvae", cfg2, mcfg, seed=0).cpu_side.decoder
    pos = torch.tensor([[[71.0, 33.0], [12.3, 80.2]]], dtype=torch.float64)  # not in canonical order
    vel = torch.tensor([[[3.0, -7.5], [-12.0, 4.0]]], dtype=torch.float64)
    g1, g2 = dec.map_shape
    P = cfg2.n_rx * cfg2.n_tx
    maps = {"heat": torch.full((1, g1, g2), -5.0), "offset": torch.zeros(1, 2, g1, g2),
            "bistatic": torch.zeros(1, P, g1, g2), "log_weight": torch.full((1, P, g1, g2), 1e4),
            "velocity": torch.zeros(1, 2, g1, g2)}
    u = bistatic_directions(pos, dec.tx_positions, dec.rx_positions)
    dx, dy = dec.pixel_size
    for q in range(2):
        i, j = int(pos[0, q, 0] // dx), int(pos[0, q, 1] // dy)
        maps["heat"][0, i, j] = 3.0
        maps["offset"][0, :, i, j] = torch.tensor([(pos[0, q, 0] - dec.pixel_x[i]) / dx,
                                                  (pos[0, q, 1] - dec.pixel_y[j]) / dy])
        maps["bistatic"][0, :, i, j] = (u[0, q] * vel[0, q]).sum(-1).float()
    p_hat, v_hat = dec.readout(maps)
    np.testing.assert_allclose(p_hat[0].numpy(), pos[0].flip(0).numpy(), atol=1e-4)
    np.testing.assert_allclose(v_hat[0].numpy(), vel[0].flip(0).numpy(), atol=1e-3)


# ---------------------------------------------------------------------------------------------------- training
def test_gradients_flow_to_every_parameter_and_payload(cfg2):
    model = build_model("dvqvae", cfg2, _mcfg(fusion_layers=1), seed=0)
    dec = model.cpu_side.decoder
    gen = torch.Generator().manual_seed(0)
    payloads = [torch.randn(3, *model.cpu_side.payload_shape, generator=gen).requires_grad_() for _ in range(2)]
    pos = torch.rand(3, 2, 2, generator=gen, dtype=torch.float64) * 90 + 5
    vel = (torch.rand(3, 2, 2, generator=gen, dtype=torch.float64) - 0.5) * 40
    geometry_loss(dec, dec.maps(payloads), pos, vel)["loss"].backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert all(float(p.grad.abs().sum()) > 0 for p in payloads)
    # the readout's output is differentiable too (offsets and least squares at the peaks)
    for p in payloads:
        p.grad = None
    dec(payloads, None).sum().backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in payloads)


def test_tiny_model_lowers_its_loss_on_a_fixed_batch(cfg2):
    scenes = cfisac.sample_scenes(cfg2, batch_size=8, seed=5)
    x = cfisac.transmit_signals(cfg2, scenes, seed=5)
    y = cfisac.sensing_echoes(cfg2, scenes, x, noise=True, seed=5)
    torch.manual_seed(0)
    model = build_model("dvqvae", cfg2, _mcfg(), seed=0)
    dec = model.cpu_side.decoder
    target = dec.normalise(cfisac.labels_from_scene(scenes))
    aps = [ApTrainer(ap, lr=3e-3) for ap in model.aps]
    cpu = GeometryCpuTrainer(model.cpu_side, lr=3e-3)
    fe = [torch.no_grad()(ap.front_end)(y[:, m], x) for m, ap in enumerate(model.aps)]
    for ap in model.aps:  # the front end is fixed: compute it once (as the cached benchmark does)
        ap.front_end = _Identity()
    feats = torch.stack(fe, 1)
    losses = [train_step(aps, cpu, feats, None, target)["mse"] for _ in range(40)]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


class _Identity(torch.nn.Module):
    needs_x = False

    def forward(self, v, x=None):
        return v


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("changes, match", [
    (dict(decoder="fancy"), "decoder must be one of"),
    (dict(decoder="generic", decoder_options={"map_channels": 8}), "need decoder='geometry'"),
    (dict(front_end="raw", input_norm="rms"), "position grid"),
    (dict(decoder_options={"fusion": "max"}), "fusion"),
    (dict(decoder_options={"peak_window": 4}), "peak_window"),
    (dict(decoder_options={"map_channels": 0}), "map_channels"),
    (dict(decoder_options={"heatmap_sigma": -1.0}), "heatmap_sigma"),
    (dict(decoder_options={"map_upsample": 9}), "map_upsample"),
    (dict(decoder_options={"colour": "red"}), "unknown geometry decoder option"),
    (dict(decoder_options={"velocity_readout": "magic"}), "velocity_readout"),
])
def test_bad_options_raise(changes, match):
    base = dict(front_end="image", input_norm="noise", decoder="geometry")
    with pytest.raises(ValueError, match=match):
        ModelConfig.preset("tiny", **{**base, **changes})


def test_cnn_kind_and_bad_payloads_raise(tiny_cfg):
    with pytest.raises(ValueError, match="not 'cnn'"):
        build_model("cnn", tiny_cfg, _mcfg(), seed=0)
    model = build_model("dvqvae", tiny_cfg, _mcfg(), seed=0)
    with pytest.raises(ValueError, match="expected features of 2"):
        model.cpu_side.decoder.maps([torch.zeros(1, *model.cpu_side.payload_shape)])
    with pytest.raises(ValueError, match="features of AP 1"):
        model.cpu_side.decoder.maps([torch.zeros(1, *model.cpu_side.payload_shape), torch.zeros(1, 3, 2, 2, 2)])


# ---------------------------------------------------------------------------------------------------- Doppler bins
@pytest.mark.parametrize("fusion", ["conv", "sum"])
def test_doppler_readout_shapes_loss_and_gradients(cfg2, fusion):
    model = build_model("dvqvae", cfg2, _mcfg(velocity_readout="doppler", velocity_bins=8, fusion=fusion), seed=0)
    dec = model.cpu_side.decoder
    P, K = cfg2.n_rx * cfg2.n_tx, 8
    bins = dec.velocity_bins
    assert bins.shape == (K,) and float(bins[0]) == -float(bins[-1])
    assert float(bins[-1]) > cfg2.max_speed  # b = u . v reaches beyond max_speed (|u| up to 2)
    gen = torch.Generator().manual_seed(0)
    payloads = [torch.randn(3, *model.cpu_side.payload_shape, generator=gen).requires_grad_() for _ in range(2)]
    maps = dec.maps(payloads)
    assert maps["doppler"].shape == (3, P, K, *dec.map_shape)
    # bistatic = the soft-argmax of the bins, inside their range
    ref = (torch.softmax(maps["doppler"], 2) * bins.float()[:, None, None]).sum(2)
    torch.testing.assert_close(maps["bistatic"], ref)
    pos = torch.rand(3, 2, 2, generator=gen, dtype=torch.float64) * 90 + 5
    vel = (torch.rand(3, 2, 2, generator=gen, dtype=torch.float64) - 0.5) * 40
    parts = geometry_loss(dec, maps, pos, vel)
    assert float(parts["doppler"].detach()) > 0.5  # untrained: far from the two-hot targets
    parts["loss"].backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in payloads)
    assert float(dec.head.weight.grad[5 + 2 * P:].abs().sum()) > 0  # the bin logits are trained


def test_doppler_two_hot_logits_give_the_exact_velocity(cfg2):
    """Bin logits = log of the two-hot encoding of the true bistatic velocities: the soft-argmax returns b, the
    least squares the velocity, and the cross entropy equals the two-hot entropy (its minimum)."""
    dec = build_model("dvqvae", cfg2, _mcfg(velocity_readout="doppler"), seed=0).cpu_side.decoder
    pos = torch.tensor([[[71.0, 33.0], [12.3, 80.2]]], dtype=torch.float64)
    vel = torch.tensor([[[3.0, -7.5], [-12.0, 4.0]]], dtype=torch.float64)
    g1, g2 = dec.map_shape
    P, bins = cfg2.n_rx * cfg2.n_tx, dec.velocity_bins
    K, width = len(bins), float(bins[1] - bins[0])
    u = bistatic_directions(pos, dec.tx_positions, dec.rx_positions)
    b = (u * vel[..., None, :]).sum(-1)  # [1, Q, P]
    logits = torch.full((1, P, K, g1, g2), -30.0, dtype=torch.float64)
    i, j = (pos[0, :, 0] // dec.pixel_size[0]).long(), (pos[0, :, 1] // dec.pixel_size[1]).long()
    entropy = 0.0
    for q in range(2):
        for p in range(P):
            t = (float(b[0, q, p]) - float(bins[0])) / width
            lo = int(math.floor(t))
            w_hi = t - lo
            logits[0, p, :, i[q], j[q]] = -1e3
            logits[0, p, lo, i[q], j[q]] = math.log(1 - w_hi)
            logits[0, p, lo + 1, i[q], j[q]] = math.log(w_hi)
            entropy -= (1 - w_hi) * math.log(1 - w_hi) + w_hi * math.log(w_hi)
    bistatic = (torch.softmax(logits, 2) * bins[:, None, None]).sum(2)
    flat = i * g2 + j
    got = bistatic.flatten(2)[0][:, flat].T  # [Q, P]
    np.testing.assert_allclose(got.numpy(), b[0].numpy(), atol=1e-9)
    maps = {"bistatic": bistatic.float(), "log_weight": torch.full((1, P, g1, g2), 1e4)}
    v = dec.velocity_at(maps, flat[None], pos)
    np.testing.assert_allclose(v[0].numpy(), vel[0].numpy(), atol=1e-3)
    zeros = torch.zeros(1, g1, g2)
    full = {"heat": zeros, "offset": torch.zeros(1, 2, g1, g2), "doppler": logits.float(), **maps}
    dec2 = build_model("dvqvae", cfg2, _mcfg(velocity_readout="doppler", velocity_support=0), seed=0).cpu_side.decoder
    parts = geometry_loss(dec2, full, pos, vel)
    assert float(parts["doppler"]) == pytest.approx(entropy / (2 * P), abs=1e-4)


def test_latent_velocity_branch_pairs_come_from_their_own_ap(cfg2):
    model = build_model("dvqvae", cfg2, _mcfg(velocity_branch="latent", velocity_hidden=8), seed=0)
    dec = model.cpu_side.decoder
    N, P = cfg2.n_tx, cfg2.n_rx * cfg2.n_tx
    gen = torch.Generator().manual_seed(0)
    payloads = [torch.randn(2, *model.cpu_side.payload_shape, generator=gen) for _ in range(2)]
    maps = dec.maps(payloads)
    assert maps["bistatic"].shape == (2, P, *dec.map_shape) and maps["log_weight"].shape == (2, P, *dec.map_shape)
    changed = dec.maps([payloads[0], payloads[1] + torch.randn(payloads[1].shape, generator=gen)])
    # pairs m N + n of AP 0 unchanged, those of AP 1 changed (and the fused heat changes with either AP)
    torch.testing.assert_close(changed["bistatic"][:, :N], maps["bistatic"][:, :N])
    assert (changed["bistatic"][:, N:] - maps["bistatic"][:, N:]).abs().amax() > 1e-3
    pos = torch.rand(2, 2, 2, generator=gen, dtype=torch.float64) * 90 + 5
    vel = (torch.rand(2, 2, 2, generator=gen, dtype=torch.float64) - 0.5) * 40
    geometry_loss(dec, maps, pos, vel)["loss"].backward()
    for m in range(2):
        assert all(float(p.grad.abs().sum()) > 0 for p in dec.ap_maps[m].vel.parameters())
    with pytest.raises(ValueError, match="velocity_branch"):
        _mcfg(velocity_branch="latent", velocity_readout="doppler")


def test_prior_fallback_blends_weak_peaks_into_the_prior_guess_and_only_calibrates(cfg2):
    """prior_fallback: a peak with a huge heat logit is read as without the option, a very weak one gives the
    prior's best fixed guess (velocity 0), the blend w = sigmoid(e^a H + c) in between (hand-computed); its loss
    trains a, c and leaves the maps without gradient from it."""
    from cfisac.estimators.prior import best_fixed_guess

    plain = build_model("dvqvae", cfg2, _mcfg(), seed=0).cpu_side.decoder
    dec = build_model("dvqvae", cfg2, _mcfg(prior_fallback=True), seed=0).cpu_side.decoder
    guess = best_fixed_guess(cfg2)
    g1, g2 = dec.map_shape
    P = cfg2.n_rx * cfg2.n_tx
    gen = torch.Generator().manual_seed(3)
    maps = {"offset": torch.rand(1, 2, g1, g2, generator=gen) - 0.5,
            "bistatic": (torch.rand(1, P, g1, g2, generator=gen) - 0.5) * 20,
            "log_weight": torch.zeros(1, P, g1, g2), "velocity": torch.zeros(1, 2, g1, g2)}
    heat = torch.full((1, g1, g2), -50.0)
    heat[0, 1, 2], heat[0, 6, 5] = 1.5, -0.7  # two peaks: w = sigmoid(1.5), sigmoid(-0.7) with a = 0, c = 0
    for value, check in ((40.0, "plain"), (-40.0, "prior")):
        h = heat.clone()
        h[0, 1, 2] = h[0, 6, 5] = value
        p0, v0 = plain.readout({**maps, "heat": h})
        p1, v1 = dec.readout({**maps, "heat": h})
        if check == "plain":
            torch.testing.assert_close(p1, p0)
            torch.testing.assert_close(v1, v0)
        else:
            torch.testing.assert_close(p1[0], guess)
            assert float(v1.detach().abs().max()) < 1e-12
    p0, v0 = plain.readout({**maps, "heat": heat})
    p1, v1 = dec.readout({**maps, "heat": heat})
    w = torch.sigmoid(torch.tensor([1.5, -0.7], dtype=torch.float64))  # peaks in x order: pixel row 1, then row 6
    torch.testing.assert_close(p1[0], w[:, None] * p0[0] + (1 - w[:, None]) * guess)
    torch.testing.assert_close(v1[0], w[:, None] * v0[0])
    pos = torch.tensor([[[20.0, 60.0], [80.0, 30.0]]], dtype=torch.float64)
    vel = torch.tensor([[[5.0, -3.0], [-8.0, 2.0]]], dtype=torch.float64)
    h = heat.clone().requires_grad_()
    parts = geometry_loss(dec, {**maps, "heat": h}, pos, vel)
    assert float(parts["fallback"]) > 0
    grads = torch.autograd.grad(parts["fallback"], [dec.fallback_log_scale, dec.fallback_bias, h], allow_unused=True)
    assert float(grads[0].abs()) > 0 and float(grads[1].abs()) > 0 and grads[2] is None
    with pytest.raises(ValueError, match="prior_fallback"):
        _mcfg(prior_fallback=1)
