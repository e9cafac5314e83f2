"""Regression tests of issue 19: torn store rows, launcher timeouts, --retrain, reproduce's exit status and checks,
config booleans, checkpoint and cache checksums, one-line CLI errors, stale temporaries."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch

import cfisac
from cfisac.cli import main
from cfisac.config import SystemConfig
from cfisac.data import open_hdf5, remove_stale_temporaries, write_hdf5
from cfisac.experiments.store import COLUMNS, MalformedRowWarning, Point, PointStore
from cfisac.models import ModelConfig
from cfisac.train import TrainConfig, find_checkpoint, load_checkpoint, train

TINY = SystemConfig.preset("tiny")
TINY_M = ModelConfig.preset("tiny")


def _tcfg(**kw) -> TrainConfig:
    return TrainConfig(**{"kind": "dvqvae", "epochs": 1, "batch_size": 8, "n_train": 16, "n_val": 4, "seed": 0, **kw})


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny D-VQVAE run (one epoch of two steps)."""
    out = tmp_path_factory.mktemp("run") / "dvqvae"
    train(TINY, TINY_M, _tcfg(), out, progress=False, log=None, plot=False)
    return out


# ---------------------------------------------------------------------------------------------------- 1: store
def _point(key: str, value: float) -> Point:
    return Point(key=key, scheme="prior", x_name="power_dbm", x_value=value, cfg=TINY, run=lambda: {})


def _result(v: float) -> dict:
    return {"position_rmse": v, "velocity_rmse": v + 0.5, "n_scenes": 6, "metrics": {"median": v}}


@pytest.mark.parametrize("cut", ["mid-field", "between-fields"])
def test_append_after_a_torn_row_starts_on_a_fresh_line(tmp_path, cut, capsys):
    store = PointStore(tmp_path, "fig6")
    store.append(_point("a", 1.0), 0, _result(1.25), wall_s=0.1)
    size = store.path.stat().st_size
    store.append(_point("b", 2.0), 1, _result(2.25), wall_s=0.1)
    text = store.path.read_bytes()
    row_b = text[size:]
    # the writer of row b was killed: the file ends inside the row, without its newline
    k = row_b.index(b"2.25") + 2 if cut == "mid-field" else row_b.index(b"2.25,") + 5
    store.path.write_bytes(text[: size + k])
    assert set(store.latest()) == {"a"}  # the torn row is not a finished point
    store.append(_point("c", 3.0), 2, _result(3.25), wall_s=0.1)
    assert "torn last row" in capsys.readouterr().err
    latest = store.latest()  # no "could not convert string to float", no point lost
    assert set(latest) == {"a", "c"}
    assert latest["c"]["position_rmse"] == 3.25 and latest["c"]["velocity_rmse"] == 3.75
    assert latest["c"]["metrics"] == {"median": 3.25}
    with open(store.path, newline="") as f:
        rows = list(csv.reader(f))
    assert [len(r) for r in rows] == [len(COLUMNS)] * 3  # header, a, c: the torn row was cut off
    store.append(_point("b", 2.0), 1, _result(2.5), wall_s=0.1)  # the lost point is simply computed again
    assert store.latest()["b"]["position_rmse"] == 2.5


def test_a_malformed_row_is_reported_with_file_and_line(tmp_path):
    store = PointStore(tmp_path, "fig6")
    store.append(_point("a", 1.0), 0, _result(1.25), wall_s=0.1)
    store.append(_point("b", 2.0), 1, _result(2.25), wall_s=0.1)
    lines = store.path.read_text().splitlines(keepends=True)
    glued = lines[1].rstrip("\r\n")[:40] + lines[2]  # what the old append made of a torn row
    store.path.write_text(lines[0] + glued + lines[1])
    with pytest.warns(MalformedRowWarning, match=rf"{store.path}:2: malformed point-store row"):
        latest = store.latest()
    assert set(latest) == {"a"}


# ---------------------------------------------------------------------------------------------------- 2: launcher
def _stop_self_or_fail(rank: int, delay: float) -> None:
    """Rank 1 stops itself (SIGSTOP, as with `kill -STOP`); rank 0 fails after ``delay`` (its peer timeout)."""
    if rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
        time.sleep(600)
    time.sleep(delay)
    raise RuntimeError("peer rank 1 timed out")


def test_local_launcher_ends_a_stopped_rank_after_the_timeout(tmp_path):
    from cfisac.distributed import spawn_local

    if str(Path(__file__).parent) not in sys.path:  # spawned children import this module by name
        sys.path.insert(0, str(Path(__file__).parent))
    t0 = time.monotonic()
    reports = spawn_local(2, "", [{"rank": 0, "delay": 0.5}, {"rank": 1, "delay": 0.0}], tmp_path / "ranks",
                          deadline_s=None, straggler_s=1.0, entry="test_reliability._stop_self_or_fail")
    wall = time.monotonic() - t0
    assert wall < 60  # not forever
    assert not reports[0]["ok"] and "timed out" in reports[0]["error"]
    assert not reports[1]["ok"] and "did not end within 1 s after rank 0 ended" in reports[1]["error"]
    assert reports[1]["exitcode"] in (-signal.SIGTERM, -signal.SIGKILL)


def test_dist_train_local_gives_the_launcher_the_timeout(tmp_path, monkeypatch, capsys):
    """`cfisac dist-train --local --timeout T` bounds the wait for the ranks (the launcher itself is tested above
    with real processes; here only that the command hands it the timeout instead of waiting forever)."""
    import cfisac.distributed as dist_pkg

    seen = {}

    def fake_spawn(world, task, options, workdir, **kw):
        seen.update(kw, world=world, timeout_s=options["timeout_s"])
        return [{"rank": r, "ok": r != 2, "error": "stopped", "result": {"checkpoint": "x"}} for r in range(world)]

    monkeypatch.setattr(dist_pkg, "spawn_local", fake_spawn)
    rc = main(["dist-train", "--local", "--preset", "tiny", "--timeout", "20", "--out", str(tmp_path / "d"),
               "--no-progress"])
    assert rc == 1 and "(rank 2): error: stopped" in capsys.readouterr().err
    assert seen["world"] == 3 and seen["timeout_s"] == 20.0
    assert seen["straggler_s"] is not None and 20.0 <= seen["straggler_s"] <= 30.0


# ---------------------------------------------------------------------------------------------------- 3: --retrain
def test_retrain_trains_from_scratch_once_per_process(tmp_path):
    from cfisac.experiments import make_context
    from cfisac.experiments.learned import ensure_trained

    lines: list[str] = []
    ctx = make_context("tiny", root=tmp_path, log=lines.append, train_seconds={"*": 30.0})
    ctx.progress = False
    out = ensure_trained(ctx, "dvqvae", [TINY])
    first = json.loads((out / "done.json").read_text())
    ckpt0 = find_checkpoint(out)
    state0 = json.loads((ckpt0 / "state.json").read_text())
    (out / "marker").write_text("old run")
    lines.clear()
    ctx = make_context("tiny", root=tmp_path, log=lines.append, train_seconds={"*": 30.0})  # a later run, --retrain
    ctx.progress, ctx.force_training = False, True
    out2 = ensure_trained(ctx, "dvqvae", [TINY])
    assert out2 == out
    assert not any("resuming" in ln for ln in lines), lines
    assert any(ln.startswith("epoch 1.00: train loss") for ln in lines), lines  # an epoch was trained again
    assert not (out / "marker").exists()  # the cached run was replaced, not continued
    state1 = json.loads((find_checkpoint(out) / "state.json").read_text())
    assert state1["global_step"] == state0["global_step"] == 2  # from step 0, not on top of the old steps
    assert state1["history"][-1]["train_loss"] == pytest.approx(state0["history"][-1]["train_loss"], rel=1e-6)
    assert json.loads((out / "done.json").read_text())["wall_s"] != first["wall_s"]
    lines.clear()
    assert ensure_trained(ctx, "dvqvae", [TINY]) == out  # the next point of the sweep: no third training
    assert not any("training dvqvae" in ln for ln in lines)


# ---------------------------------------------------------------------------------------------------- 4: reproduce
@pytest.mark.parametrize("argv, needle", [
    (["--seed", "-1"], "--seed"),
    (["--train-seconds", "-5"], "--train-seconds"),
    (["--train-seconds", "nan"], "--train-seconds"),
    (["--scheme-seconds", "inf"], "--scheme-seconds"),
    (["--schemes", "nosuch"], "'nosuch'"),
    (["--schemes", "dvqvae-nosuch"], "'nosuch'"),
    (["--threads", "-2"], "--threads"),
    (["--device", "nosuch"], "--device"),
    (["--report-only", "--no-report"], "--no-report"),
    (["--n-test", "0"], "--n-test"),
])
def test_reproduce_checks_global_options_before_any_work(tmp_path, capsys, argv, needle):
    out = tmp_path / "rep"
    assert main(["reproduce", "fig6", "--preset", "tiny", "--out", str(out), "--no-progress", *argv]) == 2
    line = _error_line(capsys)
    assert line.startswith("cfisac reproduce: error:") and needle in line
    assert not (out / "points").exists()  # nothing was computed


def test_reproduce_exits_nonzero_when_points_fail_after_writing_the_report(tmp_path, monkeypatch, capsys):
    from cfisac.experiments import evaluation

    def broken(*a, **k):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(evaluation, "crlb_of_scenes", broken)
    out = tmp_path / "rep"
    rc = main(["reproduce", "fig6", "--preset", "tiny", "--out", str(out), "--schemes", "prior", "--no-progress",
               "--threads", "1"])
    assert rc == 1
    assert (out / "report.md").is_file()  # the report is still written
    report = (out / "report.md").read_text()
    assert "Points missing or failed" in report and "failed (RuntimeError: injected failure)" in report  # and why
    rows = PointStore(out, "fig6").rows()
    assert rows and all(r["status"] == "failed" for r in rows)
    assert "point(s) failed" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- 5: config
@pytest.mark.parametrize("change, field", [
    ({"clutter_moving": "false"}, "clutter_moving"),
    ({"allow_grating_lobes": "false", "antenna_spacing": 0.7}, "allow_grating_lobes"),
    ({"allow_grating_lobes": 1}, "allow_grating_lobes"),
    ({"power_dbm": "30"}, "power_dbm"),
    ({"max_speed": True}, "max_speed"),
    ({"tx_positions": 5}, "tx_positions"),
    ({"rx_positions": "ab"}, "rx_positions"),
    ({"area": [[0, 100]]}, "area"),
])
def test_config_json_needs_real_booleans_and_types(change, field):
    with pytest.raises(ValueError, match=field):
        SystemConfig.from_json(json.dumps({**TINY.to_dict(), **change}))
    ok = SystemConfig.from_json(json.dumps({**TINY.to_dict(), "clutter_moving": True}))
    assert ok.clutter_moving is True


# ---------------------------------------------------------------------------------------------------- 6: checkpoints
def _flip_bit(path: Path, offset_from_end: int = 9) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01  # inside the tensor data (after the header)
    path.write_bytes(bytes(data))


def test_a_flipped_weight_bit_is_refused_naming_the_file(run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    load_checkpoint(run)  # intact
    model_file = find_checkpoint(run, verify=False) / "model.safetensors"
    _flip_bit(model_file)
    with pytest.raises(ValueError, match=rf"{model_file}.*corrupted"):
        load_checkpoint(run)
    with pytest.raises(ValueError, match="model.safetensors"):
        cfisac.estimators.create("dvqvae", TINY, checkpoint=str(run))


def test_a_truncated_checkpoint_is_a_clear_error_and_resume_falls_back(run_dir, tmp_path, capsys):
    import shutil

    # resume: latest corrupted -> continue from best.json's (older, intact) checkpoint
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    good = find_checkpoint(run)
    older = run / "ckpt-e0000-s000009"  # an intact older checkpoint that best.json points to
    shutil.copytree(good, older)
    (run / "best.json").write_text(json.dumps({"checkpoint": older.name}))
    latest_model = good / "model.safetensors"
    latest_model.write_bytes(latest_model.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=rf"{latest_model}"):
        load_checkpoint(run)
    assert main(["evaluate", "--checkpoint", str(run), "--n-test", "2", "--no-progress"]) == 2
    assert "model.safetensors" in _error_line(capsys)
    logs: list[str] = []
    res = train(TINY, TINY_M, _tcfg(epochs=2), run, resume=True, progress=False, log=logs.append, plot=False)
    assert any("resuming from the best checkpoint ckpt-e0000-s000009" in ln for ln in logs), logs
    assert res.finished and len(res.history) == 2
    ref = train(TINY, TINY_M, _tcfg(epochs=2), tmp_path / "ref", progress=False, log=None, plot=False)
    wr, wf = ref.model.state_dict(), res.model.state_dict()
    assert all(torch.equal(wr[k], wf[k]) for k in wr)
    load_checkpoint(run)  # the new latest checkpoint is intact


# ---------------------------------------------------------------------------------------------------- 7: HDF5
@pytest.mark.parametrize("edit", ["config", "seed", "n", "indices"])
def test_cache_checksum_covers_attributes_and_indices(tmp_path, edit):
    path = write_hdf5(tmp_path / "d.h5", TINY, 4, seed=3, chunk=2)
    open_hdf5(path)
    with h5py.File(path, "r+") as f:
        if edit == "config":
            cfg = json.loads(f.attrs["config"])
            cfg["power_dbm"] = 55.0
            f.attrs["config"] = json.dumps(cfg, sort_keys=True)
        elif edit == "seed":
            f.attrs["seed"] = 4
        elif edit == "n":
            f.attrs["n"] = 2
        else:
            f["indices"][0] = 7
    with pytest.raises(ValueError, match=rf"{path} is corrupted: checksum mismatch in its attributes"):
        open_hdf5(path)
    with pytest.raises(ValueError, match="corrupted"):
        open_hdf5(path, verify=False)  # the attribute check is cheap: always done


# ---------------------------------------------------------------------------------------------------- 8: CLI
@pytest.mark.parametrize("argv, needle", [
    (["simulate", "--preset", "tiny", "--config", "/nonexistent/c.json", "--out", "{tmp}/a.h5"], "/nonexistent"),
    (["simulate", "--preset", "tiny", "--config", "{tmp}", "--out", "{tmp}/a.h5"], "is a directory"),
    (["simulate", "--preset", "tiny", "--out", "/proc/x/a.h5"], "/proc"),
    (["simulate", "--preset", "tiny", "--out", "{tmp}"], "existing directory"),
    (["simulate", "--preset", "tiny", "--power-dbm", "1e6", "--out", "{tmp}/a.h5"], "power_dbm"),
    (["crlb", "--preset", "tiny", "--power-dbm", "10", "1e6", "--n-scenes", "1"], "power_dbm"),
    (["train", "--preset", "tiny", "--set", "nosuch=3", "--out", "{tmp}/r"], "nosuch"),
    (["train", "--preset", "tiny", "--threads", "-2", "--out", "{tmp}/r"], "--threads"),
    (["train", "--preset", "tiny", "--device", "nosuch", "--out", "{tmp}/r"], "--device"),
    (["train", "--preset", "tiny", "--n-val", "0", "--out", "{tmp}/r"], "--n-val"),
    (["train", "--preset", "tiny", "--feature-cache-gb", "-1", "--out", "{tmp}/r"], "--feature-cache-gb"),
    (["train", "--preset", "tiny", "--out", "{tmp}/f.txt"], "existing file"),
    (["evaluate", "--checkpoint", "{tmp}/none", "--threads", "-2"], "--threads"),
    (["evaluate", "--checkpoint", "{tmp}/none"], "does not exist"),
    (["dist-train", "--preset", "tiny", "--local", "--timeout", "-1", "--out", "{tmp}/d"], "--timeout"),
    (["dist-train", "--preset", "tiny", "--local", "--set", "nosuch=1", "--out", "{tmp}/d"], "nosuch"),
])
def test_bad_cli_values_give_one_line_and_exit_2_before_work(tmp_path, capsys, monkeypatch, argv, needle):
    import cfisac.data

    def no_work(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(cfisac.data, "simulate_batch", no_work)
    (tmp_path / "f.txt").write_text("a file")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith(f"cfisac {argv[0]}: error:") and needle in line, line


# ---------------------------------------------------------------------------------------------------- 9: temporaries
def test_stale_temporaries_of_dead_writers_are_removed(run_dir, tmp_path):
    import shutil

    dead, alive = _dead_pid(), os.getppid()
    # simulate: .NAME.h5.tmp-PID
    (tmp_path / f".d.h5.tmp-{dead}").write_bytes(b"partial")
    (tmp_path / f".d.h5.tmp-{alive}").write_bytes(b"in progress elsewhere")
    (tmp_path / f".other.h5.tmp-{dead}").write_bytes(b"another target")
    write_hdf5(tmp_path / "d.h5", TINY, 2, seed=0)
    assert not (tmp_path / f".d.h5.tmp-{dead}").exists()
    assert (tmp_path / f".d.h5.tmp-{alive}").exists() and (tmp_path / f".other.h5.tmp-{dead}").exists()
    # a run directory: .tmp-ckpt-*-PID/ and the pointer temporaries
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    stale = run / f".tmp-ckpt-e0001-s000001-{dead}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    (run / f".latest.json.tmp-{dead}").write_text("{")
    keep = run / f".tmp-ckpt-e0001-s000001-{alive}"
    keep.mkdir()
    train(TINY, TINY_M, _tcfg(epochs=2), run, resume=True, progress=False, log=None, plot=False)
    assert not stale.exists() and not (run / f".latest.json.tmp-{dead}").exists() and keep.exists()
    # evaluate --out: .NAME.tmp-PID
    res = tmp_path / "eval"
    res.mkdir()
    (res / f".r.json.tmp-{dead}").write_text("{")
    assert main(["evaluate", "--checkpoint", str(run_dir), "--n-test", "2", "--no-progress",
                 "--out", str(res / "r.json")]) == 0
    assert (res / "r.json").is_file() and not (res / f".r.json.tmp-{dead}").exists()
    assert sorted(p.name for p in res.iterdir()) == ["r.json", "r.png"]


def test_remove_stale_temporaries_keeps_live_and_own_writers(tmp_path):
    dead = _dead_pid()
    for pid in (dead, os.getpid(), os.getppid()):
        (tmp_path / f".x.tmp-{pid}").write_text("")
    removed = remove_stale_temporaries(tmp_path, r"\.x\.tmp-(?P<pid>\d+)")
    assert removed == [tmp_path / f".x.tmp-{dead}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f".x.tmp-{p}" for p in (os.getpid(), os.getppid()))
    assert math.isfinite(float(dead))


# ==================================================================================================== issue 18
# The quick rows of the fault matrix (the long ones, real kill -9 / dead ranks / a full tmpfs, are in
# benchmarks/faults.py, results in benchmarks/results/faults.md).

# ---------------------------------------------------------------------------------------------------- 10: cache
_KILLED_WRITER = """
import os, signal, sys
import cfisac.data as data
from cfisac.config import SystemConfig
real, calls = data.simulate_batch, []
def killed_after_three(cfg, seed, indices, **kw):
    calls.append(1)
    if len(calls) == 4:
        os.kill(os.getpid(), signal.SIGKILL)  # as kill -9: no except clause, no atexit
    return real(cfg, seed, indices, **kw)
data.simulate_batch = killed_after_three
data.write_hdf5(sys.argv[1], SystemConfig.preset("tiny"), 10, seed=5, chunk=2)
"""


def test_a_killed_write_hdf5_resumes_with_the_same_contents(tmp_path, monkeypatch):
    import numpy as np

    import cfisac.data as data

    ref = write_hdf5(tmp_path / "ref.h5", TINY, 10, seed=5, chunk=2)
    p = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path / "d.h5")], capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    parts = tmp_path / ".d.h5.parts"
    assert not (tmp_path / "d.h5").exists() and len(list(parts.glob("c*.npz"))) == 3
    # a part damaged on disk is simulated again, not trusted
    part = parts / "c000001.npz"
    part.write_bytes(part.read_bytes()[:-30])
    real, calls = data.simulate_batch, []
    monkeypatch.setattr(data, "simulate_batch", lambda cfg, seed, indices, **kw: (calls.append(indices[0]),
                                                                                  real(cfg, seed, indices, **kw))[1])
    logs: list[str] = []
    write_hdf5(tmp_path / "d.h5", TINY, 10, seed=5, chunk=2, log=logs.append)
    assert calls == [2, 6, 8]  # chunks 0 and 2 were reused, 1 (damaged), 3 and 4 simulated
    assert any("resuming" in ln and "3 of 5 chunk files" in ln for ln in logs), logs
    assert not parts.exists() and not [q for q in tmp_path.iterdir() if ".tmp-" in q.name]
    with h5py.File(ref) as a, h5py.File(tmp_path / "d.h5") as b:
        for k in ("y", "x", "labels", "indices", "sha256"):
            assert np.array_equal(a[k][()], b[k][()]), k
        assert dict(a.attrs) == dict(b.attrs)
    open_hdf5(tmp_path / "d.h5")


def test_write_hdf5_with_other_arguments_does_not_reuse_the_chunks(tmp_path):
    import numpy as np

    p = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path / "d.h5")], capture_output=True)
    assert p.returncode == -signal.SIGKILL and (tmp_path / ".d.h5.parts" / "c000000.npz").is_file()
    write_hdf5(tmp_path / "d.h5", TINY, 10, seed=6, chunk=2)  # another seed: the chunks of seed 5 must not be used
    ref = write_hdf5(tmp_path / "ref.h5", TINY, 10, seed=6, chunk=2)
    with h5py.File(ref) as a, h5py.File(tmp_path / "d.h5") as b:
        assert np.array_equal(a["y"][()], b["y"][()])


def test_an_exception_or_ctrl_c_in_write_hdf5_leaves_nothing(tmp_path):
    def stop(k):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_hdf5(tmp_path / "d.h5", TINY, 6, seed=0, chunk=2, progress=stop)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_the_cache_keeps_the_previous_file(tmp_path, monkeypatch, capsys):
    import errno

    import numpy as np

    prev = write_hdf5(tmp_path / "d.h5", TINY, 2, seed=0)
    before = prev.read_bytes()
    calls = []

    def full(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(*a, **k)

    real_savez = np.savez
    monkeypatch.setattr(np, "savez", full)
    assert main(["simulate", "--preset", "tiny", "--n", "6", "--chunk", "2", "--out", str(prev)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]  # after the progress bar
    assert f"cannot write the dataset to {prev}: No space left on device" in line
    assert "free space and rerun to resume" in line
    assert prev.read_bytes() == before  # the previous cache is intact
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("edit", ["truncate", "flip"])
def test_a_damaged_cache_says_which_file_and_what_to_do(tmp_path, edit, capsys):
    path = write_hdf5(tmp_path / "d.h5", TINY, 8, seed=0, chunk=4)
    data = bytearray(path.read_bytes())
    if edit == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-2000] ^= 0x10  # inside the last chunk's rows
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{path}.*delete it and re-create it with `cfisac simulate`"):
        open_hdf5(path)
    assert main(["train", "--preset", "tiny", "--data", str(path), "--n-train", "4", "--n-val", "2", "--epochs", "1",
                 "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    line = _error_line(capsys)
    assert str(path) in line and "delete it" in line
    assert not (tmp_path / "r" / "latest.json").exists()


# ---------------------------------------------------------------------------------------------------- 11: store
def test_a_bit_flip_in_a_stored_result_is_never_reported(tmp_path):
    store = PointStore(tmp_path, "fig6")
    store.append(_point("a", 1.0), 0, _result(1.25), wall_s=0.1)
    store.append(_point("b", 2.0), 1, _result(2.25), wall_s=0.1)
    text = store.path.read_bytes()
    assert text.index(b"2.25") > 0
    store.path.write_bytes(text.replace(b",2.25,", b",3.25,", 1))  # one digit of b's position RMSE
    with pytest.warns(MalformedRowWarning, match=rf"{store.path}:3: .*row_sha256 mismatch"):
        latest = store.latest()
    assert set(latest) == {"a"}  # b is not finished: it is computed again, the wrong 3.25 never shown
    store.append(_point("b", 2.0), 1, _result(2.25), wall_s=0.1)
    with pytest.warns(MalformedRowWarning):
        assert store.latest()["b"]["position_rmse"] == 2.25


def test_a_store_without_row_checksums_is_read_and_extended_in_its_format(tmp_path):
    from cfisac.experiments.store import LEGACY_COLUMNS

    store = PointStore(tmp_path, "fig6")
    store.append(_point("a", 1.0), 0, _result(1.25), wall_s=0.1)
    with open(store.path, newline="") as f:
        rows = list(csv.reader(f))
    with open(store.path, "w", newline="") as f:  # as an older version wrote it
        csv.writer(f).writerows([r[:-1] for r in rows])
    store.append(_point("b", 2.0), 1, _result(2.25), wall_s=0.1)
    with open(store.path, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == LEGACY_COLUMNS and [len(r) for r in rows] == [len(LEGACY_COLUMNS)] * 3
    assert {k: v["position_rmse"] for k, v in store.latest().items()} == {"a": 1.25, "b": 2.25}


def test_a_corrupted_store_header_names_the_file_and_what_to_do(tmp_path, capsys):
    store = PointStore(tmp_path, "fig6")
    store.path.parent.mkdir(parents=True)
    store.path.write_text("experiment,poi\n")
    with pytest.raises(ValueError, match=rf"{store.path} .*delete it and rerun"):
        store.latest()


# ---------------------------------------------------------------------------------------------------- 12: report
def test_the_report_is_written_atomically_and_a_full_disk_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    from cfisac.experiments import report

    path = tmp_path / "report.md"
    dead = _dead_pid()
    (tmp_path / f".report.md.tmp-{dead}").write_text("partial")
    report.write_text_atomic(path, "old report\n")
    assert path.read_text() == "old report\n" and not (tmp_path / f".report.md.tmp-{dead}").exists()

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report.os, "replace", full)
    with pytest.raises(ValueError, match=rf"cannot write {path}: No space left on device"):
        report.write_text_atomic(path, "new report\n")
    assert path.read_text() == "old report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]  # no temporary left


# ---------------------------------------------------------------------------------------------------- 13: CLI
@pytest.mark.parametrize("argv, needle", [
    (["simulate", "--preset", "tiny", "--n", "abc", "--out", "x.h5"], "'abc'"),
    (["crlb", "--preset", "tiny", "--power-dbm", "ten"], "'ten'"),
    (["train", "--model", "nosuch", "--out", "r"], "'nosuch'"),
    (["nosuch"], "'nosuch'"),
    (["simulate", "--no-such-flag", "--out", "x.h5"], "--no-such-flag"),
])
def test_argparse_errors_are_one_line_with_exit_2(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    line = _error_line(capsys)
    assert line.startswith("cfisac") and ": error: " in line and needle in line, line
    assert list(tmp_path.iterdir()) == []


def test_an_os_error_of_a_command_is_one_line_with_exit_1(tmp_path, monkeypatch, capsys):
    import errno

    import cfisac.commands.simulate as sim

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(sim, "system_summary", full)
    assert main(["simulate", "--preset", "tiny", "--n", "2", "--out", str(tmp_path / "a.h5")]) == 1
    line = _error_line(capsys)
    assert "No space left on device" in line and str(tmp_path / "x") in line


def test_reproduce_point_out_of_range_writes_nothing(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["reproduce", "fig6", "--preset", "tiny", "--point", "999", "--no-report", "--out", str(out)]) == 2
    assert "--point 999 out of range" in _error_line(capsys)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------- 14: train
def test_train_config_rejects_n_val_zero():
    with pytest.raises(ValueError, match="n_val"):
        TrainConfig(n_val=0)
    with pytest.raises(ValueError, match="n_val"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "n_val": 0})


def test_train_resume_before_the_first_checkpoint_starts_the_run(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / f".tmp-ckpt-e0000-s000000-{_dead_pid()}").mkdir()  # killed while writing its first checkpoint
    argv = ["train", "--preset", "tiny", "--n-train", "8", "--n-val", "2", "--batch-size", "8", "--epochs", "1",
            "--out", str(out), "--no-progress", "--resume"]
    assert main(argv) == 0
    assert "holds no checkpoint yet; starting the run" in capsys.readouterr().out
    assert (out / "latest.json").is_file() and [p.name for p in out.glob(".tmp-*")] == []
    assert main(argv) == 0  # the same command again: resumes the finished run, trains nothing
    assert "resuming" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- 15: fronthaul
def test_a_corrupted_fronthaul_message_is_rejected_by_its_crc_and_counted():
    from cfisac.distributed.transport import queue_pair
    from cfisac.distributed.wire import Kind, MessageError, make_message

    a, b = queue_pair(1, 0, timeout_s=5)
    for step in (1, 2):
        msg = make_message(Kind.FORWARD, [torch.arange(64, dtype=torch.uint8)], sender=1, ap=0, step=step)
        msg.body[10] ^= 0x10  # after the CRC was computed: a bit flipped on the way
        a.send(msg)
        with pytest.raises(MessageError, match=rf"FORWARD message from rank 1 is corrupted \(CRC-32.*rejected "
                                               rf"\({step} corrupted message"):
            b.recv(Kind.FORWARD)
    assert b.traffic.to_dict()["rejected_messages"] == {"FORWARD": 2}
    good = make_message(Kind.FORWARD, [torch.arange(64, dtype=torch.uint8)], sender=1, ap=0, step=3)
    a.send(good)
    assert b.recv(Kind.FORWARD).header.step == 3 and b.traffic.rejected_messages == {"FORWARD": 2}


def test_write_results_and_plot_cdf_remove_their_own_stale_temporaries(tmp_path, monkeypatch):
    import errno

    from cfisac.experiments import evaluation as evaluate

    dead = _dead_pid()
    (tmp_path / f".r.json.tmp-{dead}").write_text("{")
    (tmp_path / f".r.tmp-{dead}.png").write_bytes(b"half")
    (tmp_path / f".r.json.tmp-{os.getppid()}").write_text("a live writer's")
    evaluate.write_results(tmp_path / "r.json", {"a": math.nan})
    res = {"estimator": "x", "position_errors": [1.0, 2.0], "velocity_errors": [0.5], "position_rmse": 1.6,
           "velocity_rmse": 0.5}
    evaluate.plot_cdf(tmp_path / "r.png", [res])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["r.json", "r.png", f".r.json.tmp-{os.getppid()}"])
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None}

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluate.os, "replace", full)
    with pytest.raises(OSError):
        evaluate.write_results(tmp_path / "r.json", {"a": 1.0})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None}
    assert not (tmp_path / f".r.json.tmp-{os.getpid()}").exists()


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_keeps_the_last_one(run_dir, tmp_path, monkeypatch, capsys):
    import shutil

    from safetensors import SafetensorError

    import cfisac.checkpoint as checkpoint_mod

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = find_checkpoint(run)

    def too_large(tensors, path, *a, **k):
        raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

    monkeypatch.setattr(checkpoint_mod, "save_file", too_large)
    with pytest.raises(OSError, match=r"cannot write the checkpoint .*ckpt-e0002-s000000: Error while serializing"):
        train(TINY, TINY_M, _tcfg(epochs=2), run, resume=True, progress=False, log=None, plot=False)
    assert find_checkpoint(run) == before  # latest.json still names the intact earlier checkpoint
    assert not list(run.glob(".tmp-*"))
    assert main(["train", "--preset", "tiny", "--n-train", "16", "--n-val", "4", "--batch-size", "8", "--epochs", "2",
                 "--seed", "0", "--out", str(run), "--resume", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("cfisac train: error: cannot write the")
