"""Collaborative training (Algorithm 1): split AP / CPU equals the joint gradient, learning works (overfit), resume
matches an uninterrupted run, checkpoints are atomic and complete; the train / evaluate commands."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

import cfisac
from cfisac.cli import main
from cfisac.data import simulate_batch
from cfisac.models import LabelNormaliser, ModelConfig, build_model
from cfisac.train import ApTrainer, CpuTrainer, TrainConfig, epoch_batches, load_checkpoint, train, train_step

TINY = cfisac.SystemConfig.preset("tiny")
TINY_M = ModelConfig.preset("tiny")


@pytest.fixture(scope="module")
def batch32():
    b = simulate_batch(TINY, 0, range(32))
    norm = LabelNormaliser.fit(b["labels"])
    return b, norm.normalise(b["labels"]), norm


@pytest.mark.parametrize("kind", ["dvqvae", "dvae", "cnn"])
def test_split_training_equals_joint_loss_with_one_optimizer(kind, batch32):
    b, target, _ = batch32
    split = build_model(kind, TINY, TINY_M, seed=1)
    joint = build_model(kind, TINY, TINY_M, seed=1)
    aps = [ApTrainer(ap, lr=1e-3) for ap in split.aps]
    cpu = CpuTrainer(split.cpu_side, lr=1e-3)
    opt = torch.optim.Adam(joint.parameters(), lr=1e-3)
    for step in range(3):
        rows = slice(8 * step, 8 * step + 8)
        y, x, t = b["y"][rows], b["x"][rows], target[rows]
        r = train_step(aps, cpu, y, x, t)
        out = joint(y, x)
        loss = F.mse_loss(out.prediction, t) + out.commitment  # Eq. (17) + Eq. (21) in one graph
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert r["loss"] == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-8)
    for (k, v), (k2, v2) in zip(split.state_dict().items(), joint.state_dict().items(), strict=True):
        assert k == k2
        assert torch.allclose(v.float(), v2.float(), rtol=1e-5, atol=1e-7), k


def test_ap_receives_only_the_gradient_of_its_payload(batch32):
    b, target, _ = batch32
    model = build_model("dvqvae", TINY, TINY_M, seed=2)
    ap = ApTrainer(model.aps[0], lr=1e-3)
    payload = ap.forward(b["y"][:, 0])
    assert not payload.requires_grad and payload.dtype == torch.float32
    assert payload.shape == (32, *model.aps[0].payload_shape)
    with pytest.raises(ValueError, match="gradient for AP 0"):
        ap.backward(torch.zeros(3))
    ap.forward(b["y"][:, 0])
    before = [p.clone() for p in model.aps[0].parameters()]
    stats = ap.backward(torch.zeros_like(payload))  # zero upstream gradient: only the commitment loss acts
    assert stats["commitment"] > 0 and 1 <= stats["perplexity"] <= TINY_M.num_codes
    assert any(not torch.equal(a, p) for a, p in zip(before, model.aps[0].parameters(), strict=True))


def test_overfits_32_scenes(batch32):
    b, target, norm = batch32
    torch.manual_seed(0)
    model = build_model("dvqvae", TINY, TINY_M, seed=0)
    aps = [ApTrainer(ap, lr=3e-3) for ap in model.aps]
    cpu = CpuTrainer(model.cpu_side, lr=3e-3)
    first = None
    for _ in range(200):
        r = train_step(aps, cpu, b["y"], b["x"], target)
        first = first if first is not None else r["mse"]
    model.eval()
    with torch.no_grad():
        mse = float(F.mse_loss(model(b["y"], b["x"]).prediction, target))
    assert first > 0.1 and mse < 1e-3
    psi = norm.denormalise(model(b["y"], b["x"]).prediction.detach())
    assert float((psi[:, :2] - b["labels"][:, :2].double()).norm(dim=1).pow(2).mean().sqrt()) < 3.0  # metres


def test_epoch_batches_are_a_seeded_permutation():
    a = epoch_batches(0, 3, 10, 4)
    assert [len(x) for x in a] == [4, 4, 2] and sorted(sum(a, [])) == list(range(10))
    assert a == epoch_batches(0, 3, 10, 4) and a != epoch_batches(0, 4, 10, 4) and a != epoch_batches(1, 3, 10, 4)


def _tcfg(**kw) -> TrainConfig:
    base = dict(kind="dvqvae", epochs=2, batch_size=16, lr=3e-3, n_train=32, n_val=8, seed=4)
    return TrainConfig(**{**base, **kw})


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_after_an_epoch_and_mid_epoch_matches_uninterrupted_run(tmp_path):
    full = train(TINY, TINY_M, _tcfg(), tmp_path / "full", progress=False, log=None, plot=False)
    # a run "killed" after epoch 1, then resumed
    part = train(TINY, TINY_M, _tcfg(epochs=1), tmp_path / "part", progress=False, log=None, plot=False)
    assert part.finished and len(part.history) == 1
    resumed = train(TINY, TINY_M, _tcfg(), tmp_path / "part", resume=True, progress=False, log=None, plot=False)
    wf, wr = _weights(full.model), _weights(resumed.model)
    assert wf.keys() == wr.keys() and all(torch.equal(wf[k], wr[k]) for k in wf)
    for key in ("train_loss", "val_loss", "val_position_rmse", "val_velocity_rmse"):
        assert resumed.history[-1][key] == full.history[-1][key]
    # a time budget stops the run after its first step (mid-epoch checkpoint); resuming ends at the same place
    cut = train(TINY, TINY_M, _tcfg(minutes=1e-9), tmp_path / "cut", progress=False, log=None, plot=False)
    assert not cut.finished
    state = json.loads((cut.checkpoint / "state.json").read_text())
    assert (state["epoch"], state["step"], state["global_step"]) == (0, 1, 1)
    again = train(TINY, TINY_M, _tcfg(minutes=1e-9), tmp_path / "cut", resume=True, progress=False, log=None,
                  plot=False)
    assert not again.finished and json.loads((tmp_path / "cut" / "latest.json").read_text())["global_step"] == 1
    done = train(TINY, TINY_M, _tcfg(), tmp_path / "cut", resume=True, progress=False, log=None, plot=False)
    wd = _weights(done.model)
    assert all(torch.equal(wf[k], wd[k]) for k in wf)
    with open(tmp_path / "cut" / "steps.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 5))


def test_checkpoint_layout_is_complete_and_atomic(tmp_path):
    out = tmp_path / "run"
    res = train(TINY, TINY_M, _tcfg(kind="dvae"), out, progress=False, log=None)
    latest = json.loads((out / "latest.json").read_text())
    assert latest["checkpoint"] == res.checkpoint.name == "ckpt-e0002-s000000"
    assert {p.name for p in res.checkpoint.iterdir()} == {"model.safetensors", "optim.safetensors", "state.json"}
    assert len(list(out.glob("ckpt-e*"))) <= 2 and not list(out.glob(".tmp*"))
    assert (out / "loss.png").stat().st_size > 0
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["epoch"]) for r in rows] == [1.0, 2.0] and all(float(r["val_loss"]) > 0 for r in rows)
    ck = load_checkpoint(out)
    assert ck.kind == "dvae" and ck.cfg == TINY and ck.mcfg == TINY_M and ck.state["finished"]
    pairs = zip(ck.model.state_dict().values(), res.model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    # a stale temporary directory (a crash while writing) is ignored; an existing run is not overwritten
    (out / ".tmp-ckpt-e0009-s000000-1").mkdir()
    assert load_checkpoint(out).path == res.checkpoint
    with pytest.raises(ValueError, match="already holds a run"):
        train(TINY, TINY_M, _tcfg(kind="dvae"), out, progress=False, log=None, plot=False)
    with pytest.raises(ValueError, match=r"\['lr'\] differ"):
        train(TINY, TINY_M, _tcfg(kind="dvae", lr=1e-4), out, resume=True, progress=False, log=None, plot=False)
    with pytest.raises(ValueError, match="no checkpoint"):
        train(TINY, TINY_M, _tcfg(), tmp_path / "none", resume=True, progress=False, log=None, plot=False)


def test_train_and_evaluate_commands(tmp_path, capsys):
    out = tmp_path / "cnn"
    assert main(["train", "--model", "cnn", "--preset", "tiny", "--out", str(out), "--epochs", "1", "--n-train", "32",
                 "--n-val", "8", "--lr", "1e-3", "--no-progress", "--power-pool", "20,30",
                 "--lr-schedule", "cosine"]) == 0
    assert load_checkpoint(out).tcfg.power_dbm_pool == (20.0, 30.0)
    assert load_checkpoint(out).tcfg.lr_schedule == "cosine"
    assert main(["evaluate", "--checkpoint", str(out), "--n-test", "16", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "position RMSE" in text and "prior predictor" in text
    res = json.loads((out / "eval-seed1-P30dBm.json").read_text())
    assert res["estimator"] == "cnn" and len(res["position_errors"]) == 16 * TINY.n_targets
    assert res["fronthaul_bits_per_ap"] == 64 * 4 * 16 * 8
    assert res["prior"]["position_rmse"] > 0 and (out / "eval-seed1-P30dBm.png").is_file()
    est = cfisac.estimators.create("cnn", TINY, checkpoint=str(out))
    assert est(simulate_batch(TINY, 1, range(2))["y"], simulate_batch(TINY, 1, range(2))["x"]).positions.shape == (
        2, 1, 2)
    assert main(["train", "--model", "dvqvae", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "bad"), "--power-pool", "20,high"]) == 2
    assert "--power-pool must be comma-separated numbers" in capsys.readouterr().err


def test_training_from_an_hdf5_cache_matches_on_the_fly_simulation(tmp_path):
    from cfisac.data import write_hdf5

    write_hdf5(tmp_path / "train.h5", TINY, 32, 4)
    fly = train(TINY, TINY_M, _tcfg(epochs=1), tmp_path / "fly", progress=False, log=None, plot=False)
    cached = train(TINY, TINY_M, _tcfg(epochs=1, data=str(tmp_path / "train.h5")), tmp_path / "cached",
                   progress=False, log=None, plot=False)
    assert cached.normaliser.to_dict() == fly.normaliser.to_dict()
    for k, v in fly.model.state_dict().items():  # same samples; equal up to float rounding of the kernels
        assert torch.allclose(v.float(), cached.model.state_dict()[k].float(), rtol=1e-5, atol=1e-6), k
    assert cached.history[-1]["val_loss"] == pytest.approx(fly.history[-1]["val_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="holds 32 samples"):
        train(TINY, TINY_M, _tcfg(n_train=64, data=str(tmp_path / "train.h5")), tmp_path / "x", progress=False,
              log=None, plot=False)


def _psi(targets: list[tuple[float, float, float, float]]) -> torch.Tensor:
    """psi [4Q] = [g_1x, g_1y, .., g_Qx, g_Qy, v_1x, v_1y, .., v_Qy] from rows (gx, gy, vx, vy) per target."""
    t = torch.tensor(targets, dtype=torch.float32)
    return torch.cat([t[:, :2].reshape(-1), t[:, 2:].reshape(-1)])


def test_assignment_loss_hand_computed():
    from cfisac.train import estimation_loss, target_assignment

    target = _psi([(0.1, 0.9, 0.5, 0.5), (0.2, 0.1, 0.0, 1.0)])[None]
    # slot 0 is near target 1 and slot 1 near target 0: squared errors 0.01 (target 0, slot 1: g_y off by 0.1)
    # and 0.04 (target 1, slot 0: v_x off by 0.2); the canonical order pays the swapped targets instead.
    pred = _psi([(0.2, 0.1, 0.2, 1.0), (0.1, 0.8, 0.5, 0.5)])[None]
    assert target_assignment(pred, target, 2).tolist() == [[1, 0]]
    assert float(estimation_loss(pred, target, 2, "assignment")) == pytest.approx((0.01 + 0.04) / 8)
    assert float(estimation_loss(pred, target, 2, "assignment", reduction="sum")) == pytest.approx(0.05)
    swapped = ((0.2 - 0.1) ** 2 + (0.1 - 0.9) ** 2 + (0.2 - 0.5) ** 2 + (1.0 - 0.5) ** 2  # slot 0 - target 0
               + (0.1 - 0.2) ** 2 + (0.8 - 0.1) ** 2 + (0.5 - 0.0) ** 2 + (0.5 - 1.0) ** 2)  # slot 1 - target 1
    assert float(estimation_loss(pred, target, 2, "canonical")) == pytest.approx(swapped / 8)
    assert float(estimation_loss(pred, target, 2)) == pytest.approx(float(F.mse_loss(pred, target)))
    # in the canonical order already: both losses agree; Q = 1: nothing to assign
    assert float(estimation_loss(target + 0.1, target, 2, "assignment")) == pytest.approx(0.01)
    one = _psi([(0.3, 0.4, 0.5, 0.6)])[None]
    assert float(estimation_loss(one + 0.2, one, 1, "assignment")) == pytest.approx(0.04)
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        estimation_loss(pred, target, 2, "l1")


def test_assignment_gradient_reaches_the_assigned_slots_only():
    from cfisac.train import estimation_loss

    target = _psi([(0.1, 0.9, 0.5, 0.5), (0.2, 0.1, 0.0, 1.0)])[None]
    pred = _psi([(0.2, 0.1, 0.2, 1.0), (0.1, 0.8, 0.5, 0.5)])[None].requires_grad_()
    estimation_loss(pred, target, 2, "assignment", reduction="sum").backward()
    # d/d pred of (pred - assigned target)^2: slot 0 minus target 1, slot 1 minus target 0
    expected = 2 * (pred.detach() - _psi([(0.2, 0.1, 0.0, 1.0), (0.1, 0.9, 0.5, 0.5)])[None])
    assert torch.allclose(pred.grad, expected)


def test_assignment_exhaustive_and_hungarian_agree():
    from cfisac.train import _MAX_PERMUTATION_TARGETS, target_assignment

    g = torch.Generator().manual_seed(3)
    for Q in (3, 5):
        pred, target = torch.rand(16, 4 * Q, generator=g), torch.rand(16, 4 * Q, generator=g)
        exhaustive = target_assignment(pred, target, Q)
        import cfisac.train as tr

        old = tr._MAX_PERMUTATION_TARGETS
        tr._MAX_PERMUTATION_TARGETS = 0  # force the Hungarian branch
        try:
            hungarian = target_assignment(pred, target, Q)
        finally:
            tr._MAX_PERMUTATION_TARGETS = old
        assert torch.equal(exhaustive, hungarian)
        assert all(sorted(p) == list(range(Q)) for p in exhaustive.tolist())
    assert _MAX_PERMUTATION_TARGETS == 6


def test_train_config_rejects_an_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss 'hungarian'"):
        TrainConfig(loss="hungarian")
    model = build_model("dvqvae", TINY, TINY_M, seed=0)
    with pytest.raises(ValueError, match="unknown loss"):
        CpuTrainer(model.cpu_side, lr=1e-3, loss="hungarian")


@pytest.mark.parametrize("loss", ["canonical", "assignment"])
def test_assignment_training_ignores_the_label_order(loss):
    """Two targets: with the assignment loss, training on labels whose targets are swapped gives the same parameters
    (the loss sees unordered targets); the canonical loss of Eq. (17) does not."""
    cfg = TINY.replace(n_targets=2)
    b = simulate_batch(cfg, 0, range(8))
    target = LabelNormaliser.fit(b["labels"]).normalise(b["labels"])
    swapped = target.reshape(8, 2, 2, 2).flip(2).reshape(8, 8)  # target 0 <-> target 1, positions and velocities
    states = []
    for t in (target, swapped):
        model = build_model("dvae", cfg, TINY_M, seed=4)
        aps = [ApTrainer(ap, lr=1e-3) for ap in model.aps]
        cpu = CpuTrainer(model.cpu_side, lr=1e-3, loss=loss)
        for _ in range(2):
            train_step(aps, cpu, b["y"], b["x"], t)
        states.append(model.state_dict())
    same = all(torch.allclose(states[0][k], states[1][k], rtol=1e-5, atol=1e-7) for k in states[0])
    assert same == (loss == "assignment")


# ---------------------------------------------------------------------------------------------------- geometry decoder
GEO_M = ModelConfig.preset("tiny", front_end="image", input_norm="noise", decoder="geometry")


@pytest.mark.parametrize("kind", ["dvqvae", "dvae"])
def test_train_trains_resumes_and_loads_the_geometry_decoder(kind, tmp_path):
    from cfisac.models.geometry_decoder import GeometryCpuTrainer
    from cfisac.models.summary import macs_per_sample
    from cfisac.train import make_cpu_trainer

    torch.set_num_threads(1)
    tcfg = _tcfg(kind=kind, n_train=16, batch_size=8)
    model0 = build_model(kind, TINY, GEO_M, seed=tcfg.seed)  # the initial parameters of the run
    assert isinstance(make_cpu_trainer(model0.cpu_side, GEO_M, tcfg), GeometryCpuTrainer)
    full = train(TINY, GEO_M, tcfg, tmp_path / "full", progress=False, log=None, plot=False)
    part = train(TINY, GEO_M, _tcfg(kind=kind, n_train=16, batch_size=8, epochs=1), tmp_path / "part",
                 progress=False, log=None, plot=False)
    assert part.finished and len(part.history) == 1
    resumed = train(TINY, GEO_M, tcfg, tmp_path / "part", resume=True, progress=False, log=None, plot=False)
    wf, wr = _weights(full.model), _weights(resumed.model)
    assert wf.keys() == wr.keys() and all(torch.equal(wf[k], wr[k]) for k in wf)  # optimizer state resumed
    w0 = _weights(model0)
    trained = [k for k in w0 if k.startswith("cpu_side.decoder.") and "weight" in k and not torch.equal(w0[k], wf[k])]
    assert trained  # the decoder was updated
    # the decoder's output range is the training normaliser's, and it is saved with the weights
    dec = full.model.cpu_side.decoder
    assert torch.equal(dec.label_minimum, full.normaliser.minimum.to(dec.label_minimum))
    assert torch.equal(dec.label_maximum, full.normaliser.maximum.to(dec.label_maximum))
    assert not torch.equal(dec.label_minimum, model0.cpu_side.decoder.label_minimum)
    ck = load_checkpoint(tmp_path / "full")
    assert torch.equal(ck.model.cpu_side.decoder.label_minimum, dec.label_minimum)
    for h in full.history:
        assert all(torch.isfinite(torch.tensor(h[k])) for k in ("train_loss", "val_loss", "val_position_rmse"))
    b = simulate_batch(TINY, 99, range(6))
    from cfisac.train import predict

    pos_mem, vel_mem = predict(full.model, full.normaliser, b["y"], b["x"])
    pos_ck, vel_ck = predict(ck.model, ck.normaliser, b["y"], b["x"])
    assert torch.equal(pos_mem, pos_ck) and torch.equal(vel_mem, vel_ck)
    est = cfisac.estimators.create(kind, TINY, checkpoint=tmp_path / "full")
    e = est(b["y"], b["x"])
    assert torch.allclose(e.positions, pos_mem, atol=1e-6) and torch.allclose(e.velocities, vel_mem, atol=1e-6)
    (x0, x1), (y0, y1) = TINY.area
    p = e.positions
    assert torch.isfinite(p).all() and torch.isfinite(e.velocities).all()
    assert ((p[..., 0] >= x0) & (p[..., 0] <= x1) & (p[..., 1] >= y0) & (p[..., 1] <= y1)).all()
    macs = macs_per_sample(kind, TINY, GEO_M)
    assert macs["decoder"] > 0 and macs["encoder"] == macs_per_sample(kind, TINY, TINY_M)["encoder"]


def test_geometry_decoder_refuses_amp():
    from cfisac.train import make_cpu_trainer

    with pytest.raises(ValueError, match="amp"):
        make_cpu_trainer(build_model("dvae", TINY, GEO_M).cpu_side, GEO_M, _tcfg(kind="dvae", amp=True))


def test_fit_drives_any_strategy_with_the_shared_bookkeeping(tmp_path):
    """cfisac.fit.fit with a stub strategy: the predefined batches in order, global steps, validation once per
    epoch, checkpoints at the start, every ``checkpoint_every`` steps and at each epoch end, history and steps."""
    from cfisac.checkpoint import find_checkpoint as find
    from cfisac.fit import epoch_batches as batches_of
    from cfisac.fit import fit, open_run

    class Stub:
        is_writer, checkpoint_at_start, checkpoint_every, plot_each_checkpoint, extra = True, True, 2, False, None

        def __init__(self) -> None:
            self.model = build_model("dvae", TINY, TINY_M)
            self.calls, self.saved = [], []

        def start_epoch(self, epoch, todo):
            self.calls.append(("start", epoch, len(todo)))

        def step(self, epoch, step, rows, global_step):
            self.calls.append(("step", epoch, step, tuple(rows), global_step))
            return {"loss": 1.0 + global_step, "mse": 1.0, "commitment": float(global_step), "n": len(rows),
                    "perplexity": float("nan"), "usage": float("nan"), "prediction": None}

        def end_epoch(self):
            self.calls.append(("end",))

        def validate(self):
            return {"val_loss": 0.5, "val_position_rmse": 1.0, "val_velocity_rmse": 2.0}

        def optimizer_state(self):
            return {}, {}

        def after_checkpoint(self, path):
            self.saved.append(path.name)

        def any_rank(self, flag):
            return flag

    tcfg = _tcfg(kind="dvae", n_train=24, batch_size=8)  # 3 steps per epoch, 2 epochs
    run = open_run(tmp_path, TINY, TINY_M, tcfg, resume=False, log=lambda s: None,
                   labels=lambda: simulate_batch(TINY, 0, range(4))["labels"].double())
    stub = Stub()
    res = fit(stub, run, TINY, TINY_M, tcfg, progress=False, log=lambda s: None)
    steps = [c for c in stub.calls if c[0] == "step"]
    want = [(e, r, tuple(rows)) for e in range(2) for r, rows in enumerate(batches_of(tcfg.seed, e, 24, 8))]
    assert [c[1:4] for c in steps] == want and [c[4] for c in steps] == list(range(6))
    assert stub.saved == ["ckpt-e0000-s000000", "ckpt-e0000-s000002", "ckpt-e0001-s000000", "ckpt-e0001-s000001",
                          "ckpt-e0002-s000000"]
    assert res.finished and res.checkpoint == find(tmp_path) and res.checkpoint.name == "ckpt-e0002-s000000"
    assert [h["epoch"] for h in res.history] == [1.0, 2.0] and res.history[1]["train_loss"] == pytest.approx(5.0)
    with open(tmp_path / "steps.csv") as f:
        assert [float(r["loss"]) for r in csv.DictReader(f)] == [1.0 + s for s in range(6)]


def test_feature_cache_serves_later_epochs_and_changes_nothing(tmp_path, monkeypatch):
    """TrainConfig.feature_cache_gb: the image front end's outputs are computed once per sample (epoch 1), read
    from memory in epochs 2-3, and the run ends with the same weights and validation numbers as without the cache;
    a cache too small for every sample still gives the same run."""
    from cfisac.models.split import ApSide
    from cfisac.train import FeatureCache

    torch.set_num_threads(1)
    mcfg = ModelConfig.preset("tiny", front_end="image", input_norm="noise")
    calls = []
    real = ApSide.front_end_features

    def counted(self, y_m, x=None):
        calls.append(y_m.shape[0])
        return real(self, y_m, x)

    monkeypatch.setattr(ApSide, "front_end_features", counted)
    base = _tcfg(epochs=3, n_train=16, batch_size=8)
    plain = train(TINY, mcfg, base, tmp_path / "plain", progress=False, log=None, plot=False)
    n_plain, calls[:] = sum(calls), []
    cached = train(TINY, mcfg, _tcfg(epochs=3, n_train=16, batch_size=8, feature_cache_gb=1.0), tmp_path / "cached",
                   progress=False, log=None, plot=False)
    n_cached, calls[:] = sum(calls), []
    # without the cache: 3 epochs x 16 training + 3 validations x 8 samples, per AP; with it: each sample once
    assert n_plain == TINY.n_rx * (3 * 16 + 3 * 8) and n_cached == TINY.n_rx * (16 + 8)
    wp, wc = _weights(plain.model), _weights(cached.model)
    assert all(torch.equal(wp[k], wc[k]) for k in wp)
    assert cached.history[-1]["val_loss"] == plain.history[-1]["val_loss"]
    per_sample = FeatureCache(plain.model.aps, 0).per_sample
    assert per_sample == 4 * TINY.n_rx * math.prod(plain.model.aps[0].front_end.output_shape)
    small = train(TINY, mcfg, _tcfg(epochs=3, n_train=16, batch_size=8, feature_cache_gb=per_sample * 12 / 1e9),
                  tmp_path / "small", progress=False, log=None, plot=False)
    assert sum(calls) > n_cached  # not every sample fits: some batches are recomputed
    ws = _weights(small.model)
    assert all(torch.equal(wp[k], ws[k]) for k in wp)
    for bad in (-1.0, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="feature_cache_gb"):
            _tcfg(feature_cache_gb=bad)


def test_cached_epochs_of_the_geometry_decoder_simulate_nothing_and_change_nothing(tmp_path, monkeypatch):
    """The geometry decoder does not read X: once every sample's front-end outputs are kept, a training step needs
    only the labels, so epochs 2-3 simulate nothing (only the validation samples' echoes, which validation reads);
    the weights equal those of the run without the cache, which simulates every batch."""
    from cfisac.fit import DataSource

    torch.set_num_threads(1)
    mcfg = ModelConfig.preset("tiny", front_end="image", input_norm="noise", decoder="geometry")
    simulated = []
    real = DataSource.batch

    def counted(self, positions):
        simulated.append(len(positions))
        return real(self, positions)

    monkeypatch.setattr(DataSource, "batch", counted)
    plain = train(TINY, mcfg, _tcfg(epochs=3, n_train=16, batch_size=8), tmp_path / "plain", progress=False,
                  log=None, plot=False)
    n_plain, simulated[:] = sum(simulated), []
    tcfg = _tcfg(epochs=3, n_train=16, batch_size=8, feature_cache_gb=1.0)
    cached = train(TINY, mcfg, tcfg, tmp_path / "cached", progress=False, log=None, plot=False)
    n_cached = sum(simulated)
    assert n_plain >= 3 * 16 and n_cached == n_plain - 2 * 16  # epochs 2 and 3 simulate no training sample
    wp, wc = _weights(plain.model), _weights(cached.model)
    assert all(torch.equal(wp[k], wc[k]) for k in wp)
    assert cached.history[-1]["val_loss"] == plain.history[-1]["val_loss"]
    # the labels of a labels-only batch are the simulated batch's
    src = DataSource(TINY, 4, 16)
    lab, full = src.labels_batch([3, 0, 7]), real(src, [3, 0, 7])
    for k in ("labels", "positions", "velocities"):
        assert lab[k].dtype == full[k].dtype and torch.equal(lab[k], full[k])


def test_feature_cache_checks_positions_and_feature_shapes(batch32):
    from cfisac.train import FeatureCache

    b, _, _ = batch32
    model = build_model("dvqvae", TINY, ModelConfig.preset("tiny", front_end="image"), seed=0)
    cache = FeatureCache(model.aps, 10**9)
    y, x = b["y"][:4], b["x"][:4]
    first = cache.features([5, 6, 7, 8], y, x)
    again = cache.features([5, 6, 7, 8], y, x)
    assert (cache.hits, cache.misses) == (4, 4)
    assert all(torch.equal(a, c) for a, c in zip(first, again, strict=True))
    # a kept sample is the front end's output for that sample alone
    assert torch.equal(cache.features([6], y[1:2], x[1:2])[0], model.aps[0].front_end_features(y[1:2, 0], x[1:2]))
    with pytest.raises(ValueError, match="3 positions for a batch of 4"):
        cache.features([1, 2, 3], y, x)
    with pytest.raises(ValueError, match=r"features of AP 0 must be float32"):
        model.aps[0](y[:, 0], x, first[0][:, :1])


def test_power_pool_samples_cycle_through_the_powers_and_keep_their_scenes():
    """DataSource with power_dbm_pool: sample k is simulate_batch at pool[k % len(pool)] (scene unchanged), in the
    order asked for, training and validation offsets alike; bad pools are refused at the boundary."""
    from cfisac.fit import DataSource

    pool = (20.0, 45.0, 60.0)
    src = DataSource(TINY, 3, 40, offset=5, power_dbm_pool=pool)
    positions = [7, 0, 4, 2, 9]  # dataset indices 12, 5, 9, 7, 14 -> powers 20, 45, 20, 45, 45
    got = src.batch(positions)
    for row, p in enumerate(positions):
        k = 5 + p
        ref = simulate_batch(TINY.replace(power_dbm=pool[k % 3]), 3, [k])
        for key in ("y", "x", "labels", "positions", "velocities", "indices"):
            assert torch.equal(got[key][row], ref[key][0]), (key, k)
    # the power is what differs: the same scene at its own power and at another one
    other = simulate_batch(TINY.replace(power_dbm=60.0), 3, [12])
    assert torch.equal(other["positions"][0], got["positions"][0])
    assert not torch.allclose(other["y"][0], got["y"][0])
    with pytest.raises(ValueError, match="power_dbm_pool"):
        TrainConfig(power_dbm_pool=(30.0, float("nan")))
    with pytest.raises(ValueError, match="power_dbm_pool"):
        TrainConfig(power_dbm_pool="30")
    with pytest.raises(ValueError, match="HDF5"):
        TrainConfig(power_dbm_pool=(30.0,), data="train.h5")
    assert TrainConfig.from_dict(TrainConfig(power_dbm_pool=[30, 40]).to_dict()).power_dbm_pool == (30.0, 40.0)



def test_cosine_lr_schedule_follows_the_nearer_budget(tmp_path, monkeypatch):
    """lr_schedule="cosine": the factor is (1 + cos(pi p)) / 2 of the larger of the step and time fractions
    (hand-computed points); in a run every optimizer's learning rate at step k is lr times the factor of k / steps
    (no time budget); the schedule is recorded in the checkpoint and an unknown one is refused."""
    import cfisac.train as train_module
    from cfisac.checkpoint import cosine_lr_factor

    assert cosine_lr_factor(0.0, None, 0, 8) == 1.0
    assert cosine_lr_factor(0.0, None, 4, 8) == pytest.approx(0.5)
    assert cosine_lr_factor(0.0, None, 6, 8) == pytest.approx((1 + math.cos(0.75 * math.pi)) / 2)
    assert cosine_lr_factor(30.0, 40.0, 2, 8) == pytest.approx((1 + math.cos(0.75 * math.pi)) / 2)  # time nearer
    assert cosine_lr_factor(90.0, 40.0, 2, 8) == 0.0  # past the budget: clipped
    seen = []
    original = train_module.InProcess.set_lr_factor

    def spy(self, factor):
        original(self, factor)
        seen.append([g["lr"] for opt in self.optimizers.values() if opt is not None for g in opt.param_groups])

    monkeypatch.setattr(train_module.InProcess, "set_lr_factor", spy)
    res = train(TINY, TINY_M, _tcfg(epochs=2, lr=1e-3, lr_schedule="cosine"), tmp_path / "cos", progress=False,
                log=None, plot=False)
    steps = res.history[-1]["steps"]
    assert len(seen) == steps == 4
    for k, lrs in enumerate(seen):
        assert len(lrs) == TINY.n_rx + 1  # every AP's optimizer and the CPU's
        assert all(lr == pytest.approx(1e-3 * (1 + math.cos(math.pi * k / steps)) / 2) for lr in lrs), k
    assert load_checkpoint(res.checkpoint).tcfg.lr_schedule == "cosine"
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")


def test_distributed_runtimes_refuse_the_in_process_only_options():
    from cfisac.distributed.training import check_in_process_only_options

    check_in_process_only_options(TrainConfig())
    with pytest.raises(ValueError, match="lr_schedule='cosine' is an option of in-process training"):
        check_in_process_only_options(TrainConfig(lr_schedule="cosine"))
    with pytest.raises(ValueError, match="power_dbm_pool"):
        check_in_process_only_options(TrainConfig(power_dbm_pool=(30.0, 40.0)))
