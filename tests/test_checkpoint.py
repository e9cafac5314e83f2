"""The checkpoint module: one writer (in-process, split-process and data-parallel runs), verified reads, loading for
inference without the trainer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import cfisac
from cfisac.checkpoint import (
    CheckpointWriter,
    TrainConfig,
    find_checkpoint,
    load_checkpoint,
    optimizer_state_tensors,
    read_state,
)
from cfisac.models import LabelNormaliser, ModelConfig, build_model

TINY = cfisac.SystemConfig.preset("tiny")
TINY_M = ModelConfig.preset("tiny")


def test_inference_modules_do_not_import_the_trainer():
    code = ("import sys, cfisac.checkpoint, cfisac.models.estimator, cfisac.entropy, cfisac.commands.evaluate, "
            "cfisac.distributed.sensing; "
            "print(sorted(m for m in ('cfisac.train', 'cfisac.fit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _writer_run(tmp_path, extra=None):
    tcfg = TrainConfig(kind="dvqvae", epochs=2, batch_size=8, n_train=16, n_val=4, seed=1)
    model = build_model("dvqvae", TINY, TINY_M, seed=1)
    normaliser = LabelNormaliser(torch.zeros(4 * TINY.n_targets, dtype=torch.float64),
                                 torch.arange(1, 4 * TINY.n_targets + 1, dtype=torch.float64))
    opt = torch.optim.Adam(model.cpu_side.parameters(), lr=1e-3)
    model.cpu_side.decoder.out.weight.grad = torch.ones_like(model.cpu_side.decoder.out.weight)
    opt.step()  # an Adam state to save
    writer = CheckpointWriter(tmp_path, kind="dvqvae", cfg=TINY, mcfg=TINY_M, tcfg=tcfg, normaliser=normaliser,
                              extra=extra)
    tensors, groups = optimizer_state_tensors({"cpu": opt})
    history = [{"epoch": 1.0, "val_loss": 0.5}]
    first = writer.write(model, tensors, groups, epoch=1, step=0, global_step=2, elapsed=1.0, history=history,
                         steps=[], finished=False)
    history = [*history, {"epoch": 2.0, "val_loss": 0.7}]  # worse: best.json keeps the first
    second = writer.write(model, tensors, groups, epoch=2, step=0, global_step=4, elapsed=2.0, history=history,
                          steps=[], finished=True)
    return model, normaliser, first, second


def test_one_writer_publishes_verified_checkpoints(tmp_path):
    model, normaliser, first, second = _writer_run(tmp_path, extra={"world_size": 3})
    assert find_checkpoint(tmp_path) == second and find_checkpoint(tmp_path, "best") == first
    assert json.loads((tmp_path / "best.json").read_text())["val_loss"] == 0.5
    state = read_state(second)
    assert state["distributed"] == {"world_size": 3} and state["best_val_loss"] == 0.5 and state["finished"]
    assert state["fronthaul_bits_per_ap"] == model.fronthaul_bits_per_ap
    ck = load_checkpoint(tmp_path)
    assert ck.kind == "dvqvae" and ck.cfg == TINY and ck.mcfg == TINY_M and ck.tcfg.seed == 1
    assert torch.equal(ck.normaliser.maximum, normaliser.maximum)
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v), k
    # no distributed entry for an in-process run
    _, _, _, plain = _writer_run(tmp_path / "plain")
    assert "distributed" not in read_state(plain)


def test_a_tampered_file_is_named_and_a_checkpoint_without_checksums_still_loads(tmp_path):
    _, _, _, ckpt = _writer_run(tmp_path)
    raw = bytearray((ckpt / "optim.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (ckpt / "optim.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"optim\.safetensors is corrupted or truncated"):
        load_checkpoint(ckpt)
    state = json.loads((ckpt / "state.json").read_text())
    del state["sha256"]  # as written before the checksums existed: read unverified
    (ckpt / "state.json").write_text(json.dumps(state))
    assert load_checkpoint(ckpt).state["global_step"] == 4
