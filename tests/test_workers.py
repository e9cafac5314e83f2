"""Worker processes of the sweeps (cfisac.experiments.workers, run_points(workers=...)): the same rows as in the main
process, in the points' order, failures recorded, points without a task run in the main process after the queued
ones."""

from __future__ import annotations

import os
import time

import pytest

from cfisac.cli import main
from cfisac.experiments import PointStore, make_context, run_points
from cfisac.experiments.store import Point
from cfisac.experiments.workers import PointTask, auto_workers, run_task, worker_pool


def pid_task(value: float, *, log) -> dict:
    """A worker task: the process id it ran in, after a pause (so that the points overlap)."""
    time.sleep(0.3)
    log(f"ran {value}")
    return {"position_rmse": float(os.getpid()), "velocity_rmse": value}


def failing_task(*, log) -> dict:
    raise RuntimeError("boom in a worker")


def dying_task(*, log) -> dict:
    os._exit(3)  # a worker killed (e.g. for memory)


def test_run_task_here_returns_result_wall_and_log():
    out = run_task(PointTask(pid_task, (2.5,)))
    assert out.result == {"position_rmse": float(os.getpid()), "velocity_rmse": 2.5}
    assert out.wall_s >= 0.3 and out.log_lines == ("ran 2.5",)


def test_points_with_tasks_run_in_workers_in_order_and_failures_are_recorded(tmp_path):
    ctx = make_context("tiny", root=tmp_path, log=lambda s: None)
    store = PointStore(tmp_path, "x", base_cfg=ctx.base_cfg)
    order: list[str] = []

    def here(key):
        def run():
            order.append(key)
            return {"position_rmse": float(os.getpid()), "velocity_rmse": -1.0}
        return run

    def point(key, task=None):
        return Point(key=key, scheme="s", x_name="x", x_value=0.0, cfg=ctx.base_cfg, run=here(key), task=task)

    pts = [point("a", PointTask(pid_task, (1.0,))), point("b", PointTask(pid_task, (2.0,))),
           point("c", PointTask(failing_task, ())), point("d"), point("e", PointTask(pid_task, (3.0,)))]
    lines: list[str] = []
    counts = run_points(store, pts, log=lines.append, workers=2)
    assert counts == {"done": 4, "skipped": 0, "failed": 1}
    rows = store.rows()
    assert [r["key"] for r in rows] == ["a", "b", "c", "d", "e"]  # appended in the points' order
    assert rows[2]["status"] == "failed" and "boom in a worker" in rows[2]["message"]
    pids = {r["key"]: float(r["position_rmse"]) for r in rows if r["status"] == "ok"}
    assert pids["d"] == os.getpid() and order == ["d"]  # the point without a task ran here
    assert all(pids[k] != os.getpid() for k in "abe")
    assert [float(r["velocity_rmse"]) for r in rows if r["key"] in "abe"] == [1.0, 2.0, 3.0]
    assert "ran 1.0" in lines and "ran 3.0" in lines  # the workers' log lines reach the main log
    # finished points are skipped; a single point left to compute runs in the main process (its ``run``)
    assert run_points(store, pts, log=lambda s: None, workers=2) == {"done": 1, "skipped": 4, "failed": 0}
    assert order == ["d", "c"] and store.latest()["c"]["position_rmse"] == os.getpid()
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        run_points(store, pts, log=lambda s: None, workers=0)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        worker_pool(0)


def test_classical_points_in_workers_equal_the_main_process(tmp_path, one_thread):
    from cfisac.experiments import fig6

    rows = {}
    for workers in (1, 2):
        ctx = make_context("tiny", root=tmp_path / str(workers), log=lambda s: None, n_test=4, eval_batch=2,
                           classical=("music", "cs", "monostatic"), learned=(), crlb_max_scenes=4)
        sw = fig6.sweep(ctx)
        sw.values = (20.0, 40.0)
        store = PointStore(ctx.root, "fig6", base_cfg=ctx.base_cfg)
        assert run_points(store, sw.points(ctx), log=lambda s: None, workers=workers)["done"] == 10
        volatile = {"wall_s", "finished_at", "metrics", "row_sha256"}
        rows[workers] = {k: {c: repr(v) for c, v in r.items() if c not in volatile}  # repr: NaN == NaN
                         for k, r in store.latest().items()}
    assert rows[1] == rows[2]
    assert {r["scheme"] for r in rows[2].values()} == {repr(s) for s in ("crlb", "prior", "music", "cs", "monostatic")}
    assert all(float(r["position_rmse"]) > 0 for r in rows[2].values() if r["scheme"] != "'crlb'")


def test_auto_workers_and_cli_option(tmp_path, capsys):
    assert auto_workers("cpu", 2) == 2 and auto_workers("cuda", 16) == 1 and auto_workers("cpu", 0) == 1
    assert main(["reproduce", "fig6", "--preset", "tiny", "--out", str(tmp_path), "--workers", "0"]) != 0
    assert "--workers must be a positive integer or 'auto', got '0'" in capsys.readouterr().err


def test_a_dead_worker_fails_its_points_and_the_sweep_goes_on(tmp_path):
    ctx = make_context("tiny", root=tmp_path, log=lambda s: None)
    store = PointStore(tmp_path, "x", base_cfg=ctx.base_cfg)

    def point(key, task):
        return Point(key=key, scheme="s", x_name="x", x_value=0.0, cfg=ctx.base_cfg, run=lambda: {}, task=task)

    dead = [point("a", PointTask(dying_task, ())), point("b", PointTask(pid_task, (1.0,)))]
    later = [point("c", PointTask(pid_task, (2.0,))), point("d", PointTask(pid_task, (3.0,)))]
    counts = run_points(store, [*dead, Point(key="here", scheme="s", x_name="x", x_value=0.0, cfg=ctx.base_cfg,
                                             run=lambda: {"velocity_rmse": 0.0}), *later],
                        log=lambda s: None, workers=2)
    rows = {r["key"]: r for r in store.rows()}
    assert rows["a"]["status"] == "failed" and "BrokenProcessPool" in rows["a"]["message"]
    assert counts["failed"] >= 1 and rows["here"]["status"] == "ok"
    # the points after the dead worker run in a new pool
    assert rows["c"]["status"] == rows["d"]["status"] == "ok" and float(rows["d"]["velocity_rmse"]) == 3.0


def test_auto_threads_read_the_cpu_time_now_not_the_lagging_load_average(monkeypatch):
    """``--threads auto`` counts the busy cores from /proc/stat over a short window (the load average still counts a
    job that ended a minute ago); the parser reads the aggregate line's busy and total ticks."""
    from cfisac.commands import reproduce

    stat = ("cpu  100 5 50 1000 20 3 2 1 0 0\n"
            "cpu0 50 2 25 500 10 1 1 0 0 0\n"
            "intr 12345\n")
    assert reproduce.cpu_times(stat) == (100 + 5 + 50 + 3 + 2 + 1, 1181)
    with pytest.raises(ValueError, match="cpu"):
        reproduce.cpu_times("intr 1\n")
    cores = os.cpu_count() or 1
    monkeypatch.setattr(reproduce, "busy_cores", lambda: (float(cores), f"{cores} of {cores} cores busy"))
    assert reproduce._threads("auto") == (1, f"auto, {cores} of {cores} cores busy")
    monkeypatch.setattr(reproduce, "busy_cores", lambda: (0.1, "0.1 busy"))
    assert reproduce._threads("auto")[0] == cores
    assert reproduce._threads("3") == (3, "--threads")
    monkeypatch.undo()
    if os.path.exists("/proc/stat"):
        busy, why = reproduce.busy_cores(0.05)
        assert 0.0 <= busy <= cores + 1e-9 and "cores busy" in why
