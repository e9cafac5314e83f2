"""The APs and the CPU as separate ranks (issue 7): wire format, links, Algorithm 1 / 2 across ranks (threads and
real processes on the loopback interface), failures, data-parallel training."""

from __future__ import annotations

import json
import shutil
import struct
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cfisac
from cfisac.data import simulate_batch
from cfisac.distributed import (
    DistConfig,
    DistributedTrainingError,
    Kind,
    MessageError,
    PeerAborted,
    PeerFailure,
    ap_echoes,
    cpu_inputs,
    queue_pair,
    run_ap_sensing,
    run_ap_training,
    run_cpu_sensing,
    run_cpu_training,
    run_threads,
    spawn_local,
)
from cfisac.distributed import training as dtraining
from cfisac.distributed.ddp import shard
from cfisac.distributed.training import CodebookMirror, CodebookSender
from cfisac.distributed.wire import (
    FLAG_INDICES,
    HEADER_BYTES,
    Header,
    Message,
    decode_index_record,
    decode_tensor,
    encode_index_record,
    encode_tensor,
    make_message,
    open_body,
    pack_header,
    unpack_header,
)
from cfisac.models import ModelConfig, build_ap_side
from cfisac.quantize import message_nbytes
from cfisac.train import TrainConfig, train

CFG = cfisac.SystemConfig.preset("tiny")
MCFG = ModelConfig.preset("tiny")
TCFG = TrainConfig(epochs=1, n_train=12, n_val=4, batch_size=4)  # 3 steps
FAST = DistConfig(plot=False, timeout_s=20.0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The in-process run of issue 4 (cfisac.train.train) with the same seeds."""
    out = tmp_path_factory.mktemp("ref") / "run"
    return train(CFG, MCFG, TCFG, out, progress=False, log=None).checkpoint


def _weights(ckpt: Path | str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(ckpt) / "model.safetensors"))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *, exact: bool = False) -> None:
    assert set(a) == set(b)
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def _threads_train(out: Path, *, dcfg: DistConfig = FAST, tcfg: TrainConfig = TCFG, resume: bool = False,
                   faults: dict[int, str] | None = None):
    faults = faults or {}
    return run_threads(
        lambda links: run_cpu_training(links, CFG, MCFG, tcfg, out, dcfg=dcfg, resume=resume, progress=False,
                                       log=None),
        lambda link, m: run_ap_training(link, m, fault=faults.get(m)), CFG.n_rx, timeout_s=dcfg.timeout_s)


# ---------------------------------------------------------------------------------------------------- wire
def test_header_round_trip_and_rejections():
    h = Header(Kind.FORWARD, FLAG_INDICES, sender=2, ap=1, step=123456789012, length=4096)
    raw = pack_header(h)
    assert len(raw) == HEADER_BYTES == 32
    assert raw[:4] == b"CFI7" and struct.unpack("<q", raw[12:20])[0] == 123456789012
    assert unpack_header(raw) == h
    with pytest.raises(MessageError, match="magic"):
        unpack_header(b"XXXX" + raw[4:])
    with pytest.raises(MessageError, match="version"):
        unpack_header(raw[:4] + b"\x09" + raw[5:])
    with pytest.raises(MessageError, match="unknown message kind"):
        unpack_header(raw[:5] + b"\xee" + raw[6:])
    with pytest.raises(MessageError, match="limit"):
        unpack_header(raw, max_length=1000)
    with pytest.raises(MessageError, match="32"):
        unpack_header(raw[:31])
    with pytest.raises(MessageError, match="reserved"):
        unpack_header(raw[:28] + b"\x01\0\0\0")


def test_tensor_record_round_trip_and_truncation():
    for t in (torch.randn(3, 5, 2), torch.randn(4).to(torch.bfloat16), torch.arange(7), torch.zeros(0, 3)):
        msg = make_message(Kind.GRAD, encode_tensor(t), sender=0)
        got = decode_tensor(open_body(msg), what="t", shape=tuple(t.shape), dtype=t.dtype)
        assert torch.equal(got, t)
    body = open_body(make_message(Kind.GRAD, encode_tensor(torch.randn(2, 3)), sender=0))
    with pytest.raises(MessageError, match="needs"):
        decode_tensor(body[:-4], what="grad")
    with pytest.raises(MessageError, match="shape"):
        decode_tensor(body, what="grad", shape=(3, 2))
    with pytest.raises(MessageError, match="dtype"):
        decode_tensor(body, what="grad", dtype=torch.float64)


def test_index_record_round_trip_and_rejections():
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 16, (3, 8), generator=g)
    rows = torch.zeros(16, dtype=torch.bool)
    rows[[0, 5, 15]] = True
    vals = torch.randn(3, 8, generator=g)
    body = open_body(make_message(Kind.FORWARD, encode_index_record(idx, num_codes=16, rows=rows, values=vals),
                                  sender=1))
    # 16 bytes meta + 3 messages of 4 bytes + 2-byte bitmap, padded to 32, then 3 x 8 float32
    assert body.numel() == 32 + 3 * 8 * 4
    rec = decode_index_record(body, what="f", batch=3, length=8, num_codes=16, dim=8)
    assert torch.equal(rec.indices, idx) and torch.equal(rec.rows, rows) and torch.equal(rec.values, vals)
    with pytest.raises(MessageError, match="expected B=4"):
        decode_index_record(body, what="f", batch=4, length=8, num_codes=16, dim=8)
    with pytest.raises(MessageError, match="truncated or padded"):
        decode_index_record(body[:-4], what="f", batch=3, length=8, num_codes=16, dim=8)
    raw = bytearray(body.numpy().tobytes())
    raw[16 + 4 * 3] |= 0x02  # bitmap: codeword 1 flagged too, a 4th row claimed without its values
    with pytest.raises(MessageError, match="4 codeword rows of D=8"):
        decode_index_record(torch.frombuffer(raw, dtype=torch.uint8), what="f", batch=3, length=8, num_codes=16,
                            dim=8)
    # Nc = 8 (3 bits, L = 3 -> 9 bits: 7 padding bits) with a padding bit set
    body8 = open_body(make_message(Kind.FORWARD, encode_index_record(
        torch.tensor([[7, 0, 3]]), num_codes=8, rows=torch.zeros(8, dtype=torch.bool), values=torch.zeros(0, 2)),
        sender=1))
    raw8 = bytearray(body8.numpy().tobytes())
    assert raw8[16:18] == bytes([0b11100001, 0b10000000])  # 111 000 011, MSB first
    raw8[17] |= 1
    with pytest.raises(MessageError, match="padding"):
        decode_index_record(torch.frombuffer(raw8, dtype=torch.uint8), what="f", batch=1, length=3, num_codes=8,
                            dim=2)


def test_body_trailer_detects_truncation_and_corruption():
    msg = make_message(Kind.GRAD, encode_tensor(torch.randn(10)), sender=0, step=3)
    assert torch.equal(decode_tensor(open_body(msg), what="g"), decode_tensor(open_body(msg), what="g"))
    short = torch.zeros(msg.header.length, dtype=torch.uint8)
    short[:-10] = msg.body[:-10]  # what a receive buffer holds when the sender sent 10 bytes less (gloo)
    with pytest.raises(MessageError, match="truncated"):
        open_body(Message(msg.header, short))
    flipped = msg.body.clone()
    flipped[20] ^= 1
    with pytest.raises(MessageError, match="CRC-32"):
        open_body(Message(msg.header, flipped))
    unchecked = make_message(Kind.GRAD, encode_tensor(torch.randn(10)), sender=0, checksum=False)
    assert unchecked.header.flags == 0
    open_body(unchecked)


def test_queue_links_fail_clearly():
    cpu, ap = queue_pair(0, 1, timeout_s=0.3)
    ap.send(make_message(Kind.HELLO, [b"{}"], sender=1))
    with pytest.raises(MessageError, match="expected GRAD from receive AP 0 .rank 1., got a HELLO"):
        cpu.recv(Kind.GRAD)
    t0 = time.monotonic()
    with pytest.raises(PeerFailure, match="did not deliver FORWARD within 0.3 s"):
        cpu.recv(Kind.FORWARD)
    assert time.monotonic() - t0 < 2
    ap.send(make_message(Kind.ABORT, [b'{"reason": "disk full"}'], sender=1))
    with pytest.raises(PeerAborted, match="disk full"):
        cpu.recv(Kind.FORWARD)
    with pytest.raises(ValueError, match="sender"):
        ap.send(make_message(Kind.HELLO, [b"{}"], sender=0))
    cpu.timeout_s = 30.0
    ap.close()
    t0 = time.monotonic()
    with pytest.raises(PeerFailure, match="closed by peer"):
        cpu.recv(Kind.FORWARD)
    assert time.monotonic() - t0 < 2
    assert cpu.traffic.recv_messages["HELLO"] == 1 and cpu.traffic.recv_bytes["HELLO"] == 32 + 2 + 8


# ---------------------------------------------------------------------------------------------------- pieces
def test_codebook_delta_reproduces_the_payload_bit_for_bit():
    ap = build_ap_side("dvqvae", CFG, MCFG, 0, seed=3)
    sender = CodebookSender(MCFG.num_codes, MCFG.code_dim)
    mirror = CodebookMirror(MCFG.num_codes, MCFG.code_dim, tuple(ap.payload_shape[1:]))
    y = simulate_batch(CFG, 5, range(12))["y"]
    sent, used_first = [], None
    for k in range(3):  # training mode: the EMA moves the codebook every step
        out = ap(y[4 * k: 4 * k + 4, 0])
        used_first = used_first if used_first is not None else len(torch.unique(out.indices))
        rows, values = sender.delta(out.payload, out.indices)
        body = open_body(make_message(Kind.FORWARD, encode_index_record(out.indices, num_codes=MCFG.num_codes,
                                                                        rows=rows, values=values), sender=1))
        got = mirror.payload(body, what="f", batch=4)
        assert torch.equal(got, out.payload.detach())
        used = torch.unique(out.indices)
        assert set(torch.nonzero(rows).flatten().tolist()) <= set(used.tolist())
        sent.append(int(rows.sum()))
    assert sent[0] == used_first  # the first message carries every codeword it uses
    ap.eval()
    out = ap(y[:4, 0])
    sender.delta(out.payload, out.indices)
    rows, _ = sender.delta(out.payload, out.indices)  # same codewords again, codebook unchanged in eval mode
    assert int(rows.sum()) == 0


def test_each_role_gets_only_its_share_of_a_sample():
    rows = [3, 0, 7]
    full = simulate_batch(CFG, 11, [20 + r for r in rows])
    for m in range(CFG.n_rx):
        assert torch.equal(ap_echoes(CFG, 11, rows, m, offset=20), full["y"][:, m])
    cpu = cpu_inputs(CFG, 11, rows, offset=20)
    assert set(cpu) == {"x", "labels", "positions", "velocities"}
    for k in cpu:
        assert torch.equal(cpu[k], full[k]), k
    with pytest.raises(ValueError, match="AP index"):
        ap_echoes(CFG, 11, rows, CFG.n_rx)


def test_shard_splits_global_batches_disjointly():
    rows = list(range(10, 17))
    parts = [shard(rows, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [2, 2, 3] and sum(parts, []) == rows


# ---------------------------------------------------------------------------------------------------- Algorithm 1
@pytest.mark.parametrize("mode", ["indices", "features"])
def test_distributed_training_equals_in_process_training(reference, tmp_path, mode, monkeypatch):
    seen = {"ap": set(), "cpu": set()}
    orig_ap, orig_cpu = dtraining.ap_echoes, dtraining.cpu_inputs

    def spy_ap(*a, **k):
        seen["ap"].add(threading.current_thread().name)
        return orig_ap(*a, **k)

    def spy_cpu(*a, **k):
        seen["cpu"].add(threading.current_thread().name)
        return orig_cpu(*a, **k)

    monkeypatch.setattr(dtraining, "ap_echoes", spy_ap)
    monkeypatch.setattr(dtraining, "cpu_inputs", spy_cpu)
    res, aps, errors = _threads_train(tmp_path / "run", dcfg=DistConfig(mode=mode, plot=False, timeout_s=20.0))
    assert errors == [None, None]
    assert res.checkpoint.name == reference.name == "ckpt-e0001-s000000"
    _assert_same_weights(_weights(res.checkpoint), _weights(reference))
    st, st0 = (json.loads((p / "state.json").read_text()) for p in (res.checkpoint, reference))
    for key in ("train_loss", "val_loss", "val_position_rmse", "perplexity"):
        assert st["history"][-1][key] == pytest.approx(st0["history"][-1][key], rel=1e-5)
    # isolation: the CPU never simulates echoes, the APs never touch X or labels; what crosses the links
    assert seen["cpu"] == {"MainThread"} and "MainThread" not in seen["ap"] and len(seen["ap"]) == 2
    for rep in aps:
        assert set(rep["traffic"]["recv_bytes"]) == {"INIT", "CONTROL", "GRAD"}
        assert set(rep["traffic"]["sent_bytes"]) == {"HELLO", "FORWARD", "EVAL", "STATE", "DONE"}
    # bytes of one step's forward message, computed by hand
    L, D, B, Nc = 8, MCFG.code_dim, TCFG.batch_size, MCFG.num_codes
    fwd = aps[0]["traffic"]["sent_bytes"]["FORWARD"]
    if mode == "features":
        meta = 4 + 4 * 5  # dtype, ndim, shape [B, D, 1, 4, 2]
        assert fwd == 3 * (32 + 24 + meta + B * D * L * 4 + 8)
    else:
        head = 16 + B * message_nbytes(L, Nc) + Nc // 8  # 16 + 4 x 4 + 2 = 34 -> padded to 40
        fixed = 32 + 24 + (head + (-head % 8)) + 8
        rows = (fwd - 3 * fixed) / (4 * D)  # the codewords sent over the 3 steps
        assert rows == int(rows) and 1 <= rows <= 3 * Nc
        assert fwd < 3 * (32 + 24 + 24 + B * D * L * 4 + 8)
    # the distributed checkpoint is an ordinary one
    est = cfisac.estimators.create("dvqvae", CFG, checkpoint=str(res.out))
    b = simulate_batch(CFG, 1, range(3))
    assert est(b["y"], b["x"]).positions.shape == (3, CFG.n_targets, 2)


def test_failed_ap_stops_every_rank_and_the_run_resumes(reference, tmp_path):
    dcfg = DistConfig(plot=False, timeout_s=20.0, checkpoint_every=1)
    with pytest.raises(DistributedTrainingError, match=r"receive AP 1 \(rank 2\) aborted the run.*injected fault"
                       r".*global step 2.*ckpt-e0000-s000002"):
        res, aps, errors = _threads_train(tmp_path / "run", dcfg=dcfg, faults={1: "raise@2"})
    out = tmp_path / "run"
    assert json.loads((out / "latest.json").read_text())["checkpoint"] == "ckpt-e0000-s000002"
    shutil.copytree(out, tmp_path / "copy")
    res, aps, errors = _threads_train(out, dcfg=dcfg, resume=True)
    assert errors == [None, None]
    _assert_same_weights(_weights(res.checkpoint), _weights(reference))
    # the checkpoint of a distributed run also resumes in one process (cfisac train --resume)
    inproc = train(CFG, MCFG, TCFG, tmp_path / "copy", resume=True, progress=False, log=None)
    _assert_same_weights(_weights(inproc.checkpoint), _weights(reference))


def test_silent_ap_times_out_and_a_truncated_message_is_rejected(tmp_path):
    t0 = time.monotonic()
    errors = []
    for fault, dcfg, match in (
        ("hang@1", DistConfig(plot=False, timeout_s=1.0), r"receive AP 0 \(rank 1\) did not deliver FORWARD"),
        ("truncate@1", FAST, r"FORWARD message from rank 1 is truncated or corrupted"),
    ):
        with pytest.raises(DistributedTrainingError, match=match) as info:
            _threads_train(tmp_path / fault.split("@")[0], dcfg=dcfg, faults={0: fault})
        assert "ckpt-e0000-s000000" in str(info.value)  # the initial checkpoint resumes the run
        errors.append(info)
    assert time.monotonic() - t0 < 15


def test_every_rank_reports_the_failure(tmp_path):
    captured = {}

    def ap_fn(link, m):
        try:
            return run_ap_training(link, m, fault="raise@1" if m == 0 else None)
        except DistributedTrainingError as err:
            captured[m] = str(err)
            raise

    with pytest.raises(DistributedTrainingError):
        run_threads(lambda links: run_cpu_training(links, CFG, MCFG, TCFG, tmp_path / "r", dcfg=FAST,
                                                   progress=False, log=None), ap_fn, CFG.n_rx, timeout_s=20)
    assert "receive AP 0 (rank 1) failed: RuntimeError: injected fault at global step 1" in captured[0]
    assert "receive AP 1 (rank 2) stops" in captured[1] and "CPU (rank 0) aborted the run" in captured[1]


# ---------------------------------------------------------------------------------------------------- Algorithm 2
def test_online_sensing_across_ranks_gives_the_in_process_estimates(reference, tmp_path):
    pytest.importorskip("constriction")
    from cfisac.entropy import fit_entropy_model

    run = reference.parent
    est = cfisac.estimators.create("dvqvae", CFG, checkpoint=str(run), batch_size=4)
    b = simulate_batch(CFG, 9, range(10))
    ref = est(b["y"], b["x"])
    em_path = fit_entropy_model(run, n=40, context="previous").save(tmp_path / "em.safetensors")
    results = {}
    for coder in ("packed", "entropy"):
        kw = dict(seed=9, n=10, batch_size=4, coder=coder, entropy_model=em_path if coder == "entropy" else None)
        res, aps, errors = run_threads(lambda links, kw=kw: run_cpu_sensing(links, run, **kw),
                                       lambda link, m, kw=kw: run_ap_sensing(link, m, run, **kw), CFG.n_rx)
        assert errors == [None, None]
        assert torch.equal(res.positions, ref.positions) and torch.equal(res.velocities, ref.velocities)
        for rep in aps:  # the APs sent nothing but their hello, codebook, fronthaul messages and done
            assert set(rep["traffic"]["sent_bytes"]) <= {"HELLO", "CODEBOOK", "UPDATES", "ENTROPY", "DONE"}
            assert not rep["traffic"]["recv_bytes"]
        results[coder] = res
    packed = results["packed"]
    L, nb = 8, 4  # tiny: 1 x 4 x 2 grid, Nc = 16
    assert packed.formula_bits == nb * L == packed.message_bits == 32
    assert packed.payload_bits_per_update == [32.0, 32.0]
    assert packed.wire_bits_per_update == [8 * (10 * 4 + 3 * 40) / 10] * 2  # 3 messages of 32 + 8 bytes framing
    # lossless: same estimates; a varint byte per update at most above the packed message
    assert all(v <= 32 + 8 for v in results["entropy"].payload_bits_per_update)


# ---------------------------------------------------------------------------------------------------- processes
def _scenario(out: str) -> dict:
    """Runs in each of 3 spawned ranks (MASTER_ADDR=127.0.0.1): the CLI under a torchrun-like environment."""
    import argparse

    import torch.distributed as dist

    from cfisac.commands import distributed as commands
    from cfisac.distributed import init_distributed, run_worker

    def main(argv: list[str]) -> int:  # `cfisac <argv>` with only this module's sub-commands (faster to import)
        parser = argparse.ArgumentParser(prog="cfisac")
        commands.register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        return args.func(args)

    from cfisac.distributed.ddp import ddp_train

    torch.set_num_threads(1)
    rank = init_distributed(backend="gloo", timeout_s=60)[0]
    report: dict = {}
    common = ["--preset", "tiny", "--epochs", "1", "--n-train", "12", "--n-val", "4", "--batch-size", "4",
              "--no-progress", "--no-plot", "--timeout", "30", "--threads", "1"]
    report["train_rc"] = main(["dist-train", *common, "--out", f"{out}/train"])
    report["sense_rc"] = main(["dist-sense", "--checkpoint", f"{out}/train", "--seed", "9", "--n", "10",
                               "--batch-size", "4", "--out", f"{out}/sense.json", "--threads", "1"])
    sub = dist.new_group([1, 2])  # data parallel: 2 replicas on ranks 1 and 2, rank 0 idle
    if rank in (1, 2):
        res = ddp_train(CFG, MCFG, TCFG, f"{out}/ddp", group=sub, progress=False, log=None, plot=False)
        books = [ap.quantizer.codebook.tolist() for ap in res.model.aps]
        Path(f"{out}/codebooks-rank{rank}.json").write_text(json.dumps(books))
    dist.barrier()
    # AP 1 (rank 2) dies in the middle of a step: every other rank must fail clearly, not hang
    try:
        run_worker("train", {"system": CFG.to_dict(), "model": MCFG.to_dict(), "train": TCFG.to_dict(),
                             "distributed": {"plot": False, "timeout_s": 30.0}, "out": f"{out}/fault",
                             "progress": False, "log": None, "fault": {"rank": 2, "action": "exit@1"}})
        report["fault"] = "no error"
    except DistributedTrainingError as err:
        report["fault"] = str(err)
    return report


def test_processes_on_loopback(reference, tmp_path):
    t0 = time.monotonic()
    reports = spawn_local(3, "", {"out": str(tmp_path)}, tmp_path / "ranks", deadline_s=150,
                          entry="test_distributed._scenario")
    wall = time.monotonic() - t0
    assert reports[2]["exitcode"] == 17 and "without a report" in reports[2]["error"]  # the killed AP
    r0, r1 = reports[0], reports[1]
    assert r0["ok"] and r1["ok"], (r0.get("traceback"), r1.get("traceback"))
    assert r0["result"]["train_rc"] == r1["result"]["train_rc"] == 0
    assert r0["result"]["sense_rc"] == 0
    # k steps across processes = the in-process training
    _assert_same_weights(_weights(tmp_path / "train" / "ckpt-e0001-s000000"), _weights(reference))
    # online sensing across processes = the in-process estimator of the same checkpoint
    est = cfisac.estimators.create("dvqvae", CFG, checkpoint=str(tmp_path / "train"), batch_size=4)
    b = simulate_batch(CFG, 9, range(10))
    sense = json.loads((tmp_path / "sense.json").read_text())
    acc = cfisac.metrics.accuracy(est(b["y"], b["x"]).positions, est(b["y"], b["x"]).velocities, b["positions"],
                                  b["velocities"])
    assert sense["position_rmse"] == pytest.approx(float(acc.position_rmse), rel=1e-12)
    assert sense["payload_bits_per_update"] == [32.0, 32.0] and sense["formula_bits"] == 32
    # data parallel over 2 replicas = one process with the global batch; codebooks equal on both replicas
    _assert_same_weights(_weights(tmp_path / "ddp" / "ckpt-e0001-s000000"), _weights(reference))
    books = [json.loads((tmp_path / f"codebooks-rank{r}.json").read_text()) for r in (1, 2)]
    assert books[0] == books[1]
    # the fault: clear errors on the surviving ranks, a resumable checkpoint
    assert "receive AP 1 (rank 2)" in r0["result"]["fault"] and "ckpt-e0000-s000000" in r0["result"]["fault"]
    assert "CPU (rank 0) aborted the run" in r1["result"]["fault"]
    assert (tmp_path / "fault" / "ckpt-e0000-s000000" / "state.json").is_file()
    assert wall < 120


def test_distributed_training_uses_the_assignment_loss(tmp_path):
    """TrainConfig.loss reaches the CPU rank: two targets, distributed = in-process with the assignment loss."""
    cfg = CFG.replace(n_targets=2)
    tcfg = TrainConfig(epochs=1, n_train=8, n_val=4, batch_size=4, loss="assignment")
    ref = train(cfg, MCFG, tcfg, tmp_path / "ref", progress=False, log=None)
    canon = train(cfg, MCFG, TrainConfig(epochs=1, n_train=8, n_val=4, batch_size=4), tmp_path / "canon",
                  progress=False, log=None)
    res, _, errors = run_threads(
        lambda links: run_cpu_training(links, cfg, MCFG, tcfg, tmp_path / "run", dcfg=FAST, progress=False,
                                       log=None),
        lambda link, m: run_ap_training(link, m), cfg.n_rx, timeout_s=FAST.timeout_s)
    assert errors == [None, None]
    _assert_same_weights(_weights(res.checkpoint), _weights(ref.checkpoint))
    st = json.loads((res.checkpoint / "state.json").read_text())
    assert st["train"]["loss"] == "assignment"
    assert st["history"][-1]["val_loss"] == pytest.approx(ref.history[-1]["val_loss"], rel=1e-5)
    assert ref.history[-1]["val_loss"] != pytest.approx(canon.history[-1]["val_loss"], rel=1e-3)
    w, wc = _weights(ref.checkpoint), _weights(canon.checkpoint)
    assert any(not torch.allclose(w[k], wc[k], rtol=1e-4, atol=1e-6) for k in w)  # the option changed the steps
