"""D-VQVAE / D-VAE / CNN models: Table II shapes and parameter counts (meta device), AP / CPU split, online
execution (Algorithm 2), front-end registry."""

from __future__ import annotations

import math

import pytest
import torch

import cfisac
from cfisac.data import simulate_batch
from cfisac.estimators import create
from cfisac.models import (
    FRONT_ENDS,
    ApSide,
    FrontEnd,
    LabelNormaliser,
    ModelConfig,
    build_ap_side,
    build_cpu_side,
    build_model,
    macs_per_sample,
    make_front_end,
    meta_model,
    parameter_counts,
    register_front_end,
)
from cfisac.models.dvqvae import ResidualBlock

TINY = cfisac.SystemConfig.preset("tiny")
TINY_M = ModelConfig.preset("tiny")



def conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k**3 + cout


def test_paper_preset_shapes_and_parameter_counts_on_meta():
    cfg = cfisac.SystemConfig.preset("paper")
    mcfg = ModelConfig.preset("paper")
    assert (mcfg.encoder_layers, mcfg.encoder_res_layers, mcfg.hidden_channels, mcfg.code_dim, mcfg.num_codes,
            mcfg.tx_layers, mcfg.tx_res_layers, mcfg.cpu_res_layers) == (2, 2, 128, 512, 32, 2, 2, 1)  # Table II
    model = meta_model("dvqvae", cfg, mcfg)
    assert all(p.is_meta for p in model.parameters())
    ap = model.aps[0]
    assert ap.payload_shape == (512, 4, 64, 64) and ap.latent_length == 16384
    enc = conv(2, 32, 4) + conv(32, 128, 4) + 2 * conv(128, 128, 3)
    c = parameter_counts("dvqvae", cfg, mcfg)
    assert c["encoder_per_ap"] == enc == 1_151_392
    assert c["projector_per_ap"] == 128 * 512
    assert c["codebook_per_ap"] == 32 * 512
    assert c["ap_side_per_ap"] == pytest.approx(1.2e6, rel=0.02)  # the paper's "about 1.2 M" per encoder
    assert c["ap_bytes_per_ap"] == pytest.approx(5e6, rel=0.02)  # "about 5 MB" with the codebook
    tx = 2 * 16  # N Nt rows of X -> (8, 64, 64) after two downsamplings
    dec = (conv(1024, 1024, 3) + (1024 * 16384 * 8 + 8) + conv(2, 32, 4) + conv(32, 128, 4) + 2 * conv(128, 128, 3)
           + (128 * (tx // 4) * 64 * 64 * 8 + 8) + (16 * 256 + 256) + (256 * 8 + 8))
    assert c["decoder"] == dec
    assert 190e6 < dec < 206e6  # the paper's 206 M does not follow from Table II alone (widths unspecified)


def test_macs_per_stage_match_hand_count():
    cfg = cfisac.SystemConfig.preset("paper")
    mcfg = ModelConfig.preset("paper")
    m = macs_per_sample("dvqvae", cfg, mcfg)
    enc = 8 * 128 * 128 * 32 * 2 * 64 + 4 * 64 * 64 * 128 * 32 * 64 + 2 * 4 * 64 * 64 * 128 * 128 * 27
    assert m["encoder"] == enc
    assert m["quantization"] == 16384 * 128 * 512 + 16384 * 32 * 512


@pytest.mark.parametrize("kind", ["dvqvae", "dvae", "cnn"])
def test_forward_shapes_and_online_equals_in_graph(kind):
    torch.manual_seed(0)
    b = simulate_batch(TINY, 0, range(6))
    model = build_model(kind, TINY, TINY_M, seed=3).eval()
    model.sync_codebooks()
    out = model(b["y"], b["x"])
    assert out.prediction.shape == (6, 4 * TINY.n_targets)
    assert out.aps[0].payload.shape == (6, *model.aps[0].payload_shape)
    msgs = model.encode(b["y"], b["x"])
    online = model.decode(msgs, b["x"])
    assert torch.allclose(online, out.prediction, atol=1e-6)
    if kind == "dvqvae":
        assert all(len(m) == model.aps[0].message_nbytes for m in msgs[0])
        idx = model.aps[1].indices(b["y"][:, 1])
        assert idx.shape == (6, model.aps[1].latent_length)
        assert torch.equal(model.cpu_side.dequantize(1, idx), out.aps[1].payload)


def test_estimator_rescales_to_metres_and_rejects_bad_messages():
    b = simulate_batch(TINY, 0, range(4))
    est = create("dvqvae", TINY, model_preset="tiny", seed=1)
    res = est(b["y"], b["x"])
    assert res.positions.shape == (4, 1, 2) and res.velocities.shape == (4, 1, 2)
    psi_n = est.model(b["y"], b["x"]).prediction
    psi = est.normaliser.denormalise(psi_n)
    assert torch.allclose(res.positions.reshape(4, 2), psi[:, :2])
    msgs = est.encode(b["y"])
    with pytest.raises(ValueError, match="bytes"):
        est.decode([msgs[0], [m + b"\x00" for m in msgs[1]]], b["x"])
    with pytest.raises(ValueError, match="receive APs"):
        est.decode([msgs[0]], b["x"])
    with pytest.raises(ValueError, match="same number"):
        est.decode([msgs[0], msgs[1][:2]], b["x"])
    with pytest.raises(ValueError, match="differs"):
        est.__class__("dvqvae", TINY.replace(n_rx_antennas=8), est.model, est.normaliser)
    with pytest.raises(ValueError, match="not 'dvae'"):
        est.__class__("dvae", TINY, est.model, est.normaliser)


def test_each_side_built_alone_has_the_in_process_initial_parameters():
    model = build_model("dvqvae", TINY, TINY_M, seed=5)
    ap1 = build_ap_side("dvqvae", TINY, TINY_M, 1, seed=5)
    for (k, v), (k2, v2) in zip(model.aps[1].state_dict().items(), ap1.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    cpu = build_cpu_side("dvqvae", TINY, TINY_M, seed=5)
    pairs = zip(model.cpu_side.state_dict().values(), cpu.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    other = build_model("dvqvae", TINY, TINY_M, seed=6)
    assert not torch.equal(other.aps[1].encoder.down[0].weight, ap1.encoder.down[0].weight)
    assert not torch.equal(model.aps[0].encoder.down[0].weight, model.aps[1].encoder.down[0].weight)


def test_raw_front_end_is_normalised_re_im():
    y = simulate_batch(TINY, 0, range(3))["y"][:, 0]
    fe = make_front_end("raw", TINY)
    v = fe.transform(y)
    assert v.shape == (3, 2, *fe.spatial_shape) and fe.in_channels == 2 and not fe.needs_x
    rms = y.abs().pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert torch.allclose(v[:, 0], (y.real / rms[:, None, None, None] * math.sqrt(2)).float(), rtol=1e-5)
    assert torch.allclose(v[:, 1], (y.imag / rms[:, None, None, None] * math.sqrt(2)).float(), rtol=1e-5)
    assert torch.allclose(v.pow(2).mean(dim=(1, 2, 3, 4)), torch.ones(3), rtol=1e-4)
    noise = make_front_end("raw", TINY, norm="noise").transform(y)
    assert torch.allclose(noise[:, 0], (y.real / math.sqrt(TINY.noise_watt)).float(), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown front end"):
        make_front_end("nope", TINY)
    with pytest.raises(ValueError, match="y_m must be"):
        fe.transform(y[:, :2])


def test_front_end_registry_plugs_into_the_ap_side():
    class Magnitude(FrontEnd):
        name = "test-magnitude"
        needs_x = True

        def __init__(self, cfg, *, norm="rms", scale=1.0):
            super().__init__()
            self.in_channels, self.spatial_shape, self.scale = 1, (cfg.n_rx_antennas, cfg.n_subcarriers, 8), scale

        def forward(self, y_m, x=None):
            assert x is not None  # needs_x: the AP receives X
            return (y_m.abs()[:, None] * self.scale).float()

    register_front_end("test-magnitude")(Magnitude)
    try:
        mcfg = TINY_M.replace(front_end="test-magnitude", front_end_options={"scale": 2.0})
        model = build_model("dvqvae", TINY, mcfg)
        assert isinstance(model.aps[0], ApSide) and model.aps[0].needs_x
        b = simulate_batch(TINY, 0, range(2))
        assert model(b["y"], b["x"]).prediction.shape == (2, 4)
        assert model.aps[0].payload_shape == (TINY_M.code_dim, 1, 4, 2)
    finally:
        FRONT_ENDS.pop("test-magnitude")


def test_residual_block_and_grid_checks():
    assert isinstance(ResidualBlock(4, 0)(torch.ones(1, 4, 2, 2, 2)), torch.Tensor)
    v = torch.randn(1, 4, 2, 2, 2)
    assert torch.equal(ResidualBlock(4, 0)(v), v)
    with pytest.raises(ValueError, match="not divisible"):
        build_model("dvqvae", TINY, TINY_M.replace(encoder_layers=3, encoder_widths=None, hidden_channels=8))
    with pytest.raises(ValueError, match="power of two"):
        ModelConfig.preset("tiny", num_codes=24)
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("vae", TINY, TINY_M)


def test_label_normaliser_round_trip():
    lab = torch.tensor([[0.0, 10.0, -5.0, 5.0], [100.0, 50.0, 5.0, -20.0]], dtype=torch.float64)
    n = LabelNormaliser.fit(lab)
    z = n.normalise(lab)
    assert torch.allclose(z, torch.tensor([[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]]))
    assert torch.allclose(n.denormalise(z), lab, atol=1e-5)
    assert torch.equal(LabelNormaliser.from_dict(n.to_dict()).minimum, n.minimum)


def test_model_config_json_round_trip():
    m = ModelConfig.preset("quick", front_end_options={"beams": 8})
    assert ModelConfig.from_dict(m.to_dict()) == m
    with pytest.raises(ValueError, match="unknown ModelConfig"):
        ModelConfig.from_dict({"bogus": 1})
