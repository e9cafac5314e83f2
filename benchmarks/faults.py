"""The fault matrix of issue 18: what cfisac does at each boundary when a job is killed, a disk fills, a file is
corrupted or a rank dies. Every case runs the real command line (``cfisac ...`` in a child process, tiny preset) and
checks the behaviour; the table goes to ``benchmarks/results/faults.md`` (case -> behaviour -> verdict, with the
command). The quick cases are also regression tests in ``tests/test_reliability.py``; the long ones (kill -9 at
random moments, killed ranks, a full tmpfs) live here.

    .venv/bin/python benchmarks/faults.py                 # everything (~15-25 min on a loaded 2-core machine)
    .venv/bin/python benchmarks/faults.py --only cli,files --kills 2
    .venv/bin/python benchmarks/faults.py --out /tmp/faults.md

Verdicts: ``clear error`` (exit status 2, or 1 for the machine's faults, one stderr line naming the bad value or
file and what to do, no traceback, nothing written / previous files intact), ``resumed, identical`` (the restarted
command continued from what the killed one stored and ended with bit-identical numbers to an uninterrupted run on
CPU), ``FAIL: ...`` otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
CFISAC = str(Path(sys.executable).with_name("cfisac"))
ENV = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}

CLEAR, RESUMED = "clear error", "resumed, identical"
REPRODUCE_N_TEST = ["--n-test", "24"]  # test scenes per point of the reproduce kill chain (--reproduce-n-test)


@dataclasses.dataclass
class Row:
    group: str
    case: str
    command: str
    behaviour: str
    verdict: str


ROWS: list[Row] = []


def record(group: str, case: str, command: str, behaviour: str, verdict: str) -> None:
    ROWS.append(Row(group, case, command, behaviour, verdict))
    print(f"[{group}] {case}: {verdict} -- {behaviour}", flush=True)


def short(cmd: list[str], work: Path) -> str:
    return " ".join(cmd).replace(CFISAC, "cfisac").replace(str(work), "$W")


def run(cmd: list[str], *, timeout: float = 600, cwd: Path | None = None, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=ENV,
                          preexec_fn=preexec)


def one_line_error(p: subprocess.CompletedProcess, needle: str, *, rc: int = 2) -> tuple[bool, str]:
    """(ok, behaviour): exit status ``rc``, one stderr line containing ``needle``, no traceback."""
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else ""
    ok = p.returncode == rc and len(lines) == 1 and "Traceback" not in p.stderr and needle in text
    why = "" if ok else f" [rc {p.returncode}, {len(lines)} stderr line(s), needle {needle!r}]"
    return ok, f"exit {p.returncode}: `{text[:220]}`{why}"


def files_under(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")} if d.exists() else set()


# ---------------------------------------------------------------------------------------------------- 1: CLI
def cli_cases(work: Path) -> None:
    w = work / "cli"
    w.mkdir()
    (w / "file.txt").write_text("a file")
    cases = [
        ("unknown preset", ["simulate", "--preset", "nosuch", "--n", "4", "--out", "$W/a.h5"], "'nosuch'"),
        ("unknown experiment", ["reproduce", "fig99", "--preset", "tiny", "--out", "$W/rep"], "'fig99'"),
        ("unknown scheme", ["reproduce", "fig6", "--preset", "tiny", "--schemes", "nosuch", "--out", "$W/rep"],
         "'nosuch'"),
        ("unknown model (choice)", ["train", "--model", "nosuch", "--preset", "tiny", "--out", "$W/r"], "'nosuch'"),
        ("non-numeric --n", ["simulate", "--preset", "tiny", "--n", "abc", "--out", "$W/a.h5"], "'abc'"),
        ("non-numeric --power-dbm", ["crlb", "--preset", "tiny", "--power-dbm", "ten"], "'ten'"),
        ("negative --n-test", ["evaluate", "--checkpoint", "$W/none", "--n-test", "-5"], "--n-test"),
        ("negative --n-test (reproduce)", ["reproduce", "fig6", "--preset", "tiny", "--n-test", "-5", "--out",
                                           "$W/rep"], "--n-test"),
        ("NaN power", ["simulate", "--preset", "tiny", "--power-dbm", "nan", "--n", "4", "--out", "$W/a.h5"],
         "power_dbm"),
        ("inf power (crlb)", ["crlb", "--preset", "tiny", "--power-dbm", "inf"], "power_dbm"),
        ("out-of-range power", ["simulate", "--preset", "tiny", "--power-dbm", "1e6", "--n", "4", "--out",
                                "$W/a.h5"], "power_dbm"),
        ("zero --n", ["simulate", "--preset", "tiny", "--n", "0", "--out", "$W/a.h5"], "--n"),
        ("zero targets", ["simulate", "--preset", "tiny", "--n-targets", "0", "--n", "4", "--out", "$W/a.h5"],
         "n_targets"),
        ("negative --seed", ["simulate", "--preset", "tiny", "--seed", "-3", "--n", "4", "--out", "$W/a.h5"],
         "--seed"),
        ("NaN --lr", ["train", "--preset", "tiny", "--lr", "nan", "--out", "$W/r"], "--lr"),
        ("--n-val 0", ["train", "--preset", "tiny", "--n-val", "0", "--out", "$W/r"], "--n-val"),
        ("missing --config", ["simulate", "--preset", "tiny", "--config", "$W/none.json", "--out", "$W/a.h5"],
         "none.json"),
        ("missing --data", ["train", "--preset", "tiny", "--data", "$W/none.h5", "--out", "$W/r"], "none.h5"),
        ("missing checkpoint", ["evaluate", "--checkpoint", "$W/none"], "does not exist"),
        ("unwritable --out (simulate)", ["simulate", "--preset", "tiny", "--n", "4", "--out", "/proc/cfisac/a.h5"],
         "/proc"),
        ("unwritable --out (train)", ["train", "--preset", "tiny", "--out", "/proc/cfisac/r"], "/proc"),
        ("unwritable --out (reproduce)", ["reproduce", "fig6", "--preset", "tiny", "--out", "/proc/cfisac/rep"],
         "/proc"),
        ("--out is a directory", ["simulate", "--preset", "tiny", "--n", "4", "--out", "$W"], "existing directory"),
        ("--out is a file", ["train", "--preset", "tiny", "--out", "$W/file.txt"], "existing file"),
        ("conflicting --report-only --no-report", ["reproduce", "fig6", "--preset", "tiny", "--report-only",
                                                   "--no-report", "--out", "$W/rep"], "--no-report"),
        ("--point with two experiments", ["reproduce", "fig6", "fig7", "--preset", "tiny", "--point", "1",
                                          "--out", "$W/rep"], "--point"),
        ("--point out of range", ["reproduce", "fig6", "--preset", "tiny", "--point", "999", "--no-report",
                                  "--out", "$W/rep"], "999"),
        ("negative --timeout", ["dist-train", "--local", "--preset", "tiny", "--timeout", "-1", "--out", "$W/d"],
         "--timeout"),
    ]
    for case, argv, needle in cases:
        argv = [a.replace("$W", str(w)) for a in argv]
        before = files_under(w)
        p = run([CFISAC, *argv], timeout=300)
        ok, behaviour = one_line_error(p, needle)
        created = files_under(w) - before
        if created:
            ok, behaviour = False, behaviour + f"; created {sorted(created)[:4]}"
        else:
            behaviour += "; nothing written"
        record("CLI", case, short([CFISAC, *argv], w), behaviour, CLEAR if ok else "FAIL")


# ---------------------------------------------------------------------------------------------------- 2: config
def config_cases(work: Path) -> None:
    from cfisac.config import SystemConfig

    tiny = SystemConfig.preset("tiny")
    # per kind of field, values that no field of that kind may take
    bad_int = [0, -1, 2.5, "3", None, True]
    bad_count = [-1, 2.5, "3", None, True]  # n_clutter, user_n_paths: 0 is valid
    bad_pos_float = [0.0, -1.0, math.nan, math.inf, -math.inf, "1.0", None, True]
    bad_nonneg_float = [-1.0, math.nan, math.inf, "1.0", None, True]
    bad_db = [math.nan, math.inf, -math.inf, 1e6, "30", None, True]
    bad_bool = ["false", 1, None]
    zero_ok = {"n_clutter", "user_n_paths"}
    nonneg = {"cyclic_prefix", "max_speed", "timing_offset_std", "frequency_offset_std"}
    db = {"power_dbm", "noise_dbm", "user_noise_dbm", "pathloss_ref_db", "user_rician_factor_db"}
    for f in dataclasses.fields(SystemConfig):
        v = getattr(tiny, f.name)
        if isinstance(v, bool):
            vals = bad_bool
        elif isinstance(v, int):
            vals = bad_count if f.name in zero_ok else bad_int
        elif isinstance(v, float):
            vals = bad_db if f.name in db else bad_nonneg_float if f.name in nonneg else bad_pos_float
        else:
            n = len(v)
            vals = [tuple((math.nan, 0.0) for _ in range(n)), tuple((math.inf, 0.0) for _ in range(n)),
                    tuple(("a", 0.0) for _ in range(n)), "ab", None, 5]
            if f.name == "area":
                vals += [((100.0, 0.0), (0.0, 100.0)), ((0.0, 0.0), (0.0, 100.0))]
        accepted, unnamed = [], []
        for b in vals:
            try:
                tiny.replace(**{f.name: b})
                accepted.append(b)
            except ValueError as err:
                if f.name not in str(err):
                    unnamed.append((b, str(err)[:80]))
            except Exception as err:  # noqa: BLE001 - a TypeError etc. is a failure of the check
                unnamed.append((b, f"{type(err).__name__}: {err}"[:80]))
        ok = not accepted and not unnamed
        behaviour = (f"{len(vals)} bad values -> ValueError naming `{f.name}`" if ok else
                     f"accepted {accepted!r}" * bool(accepted) + f" unnamed {unnamed!r}" * bool(unnamed))
        record("config", f"SystemConfig.{f.name}", f"SystemConfig.preset('tiny').replace({f.name}=...)",
               behaviour, CLEAR if ok else "FAIL")
    for q in (50, 10_000):
        try:
            tiny.replace(n_targets=q)
            behaviour, ok = f"n_targets={q} accepted", False
        except ValueError as err:
            behaviour, ok = f"ValueError: {str(err)[:120]}", "n_targets" in str(err)
        record("config", f"more targets than the area allows (Q={q})",
               f"SystemConfig.preset('tiny').replace(n_targets={q})", behaviour, CLEAR if ok else "FAIL")
    from cfisac.train import TrainConfig

    try:
        TrainConfig(n_val=0)
        behaviour, ok = "accepted (NaN validation, no best.json)", False
    except ValueError as err:
        behaviour, ok = f"ValueError: {err}", "n_val" in str(err)
    record("config", "TrainConfig(n_val=0)", "cfisac.train.TrainConfig(n_val=0)", behaviour, CLEAR if ok else "FAIL")


# ---------------------------------------------------------------------------------------------------- 3: files
def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def files_cases(work: Path) -> None:
    w = work / "files"
    w.mkdir()
    h5 = w / "d.h5"
    p = run([CFISAC, "simulate", "--preset", "tiny", "--n", "64", "--chunk", "16", "--out", str(h5)])
    assert p.returncode == 0, p.stderr
    size = h5.stat().st_size
    for case, edit in (("HDF5 cache truncated to half", lambda f: f.write_bytes(f.read_bytes()[: size // 2])),
                       ("HDF5 cache truncated to 100 bytes", lambda f: f.write_bytes(f.read_bytes()[:100])),
                       ("HDF5 cache, one bit flipped in the data", lambda f: flip_bit(f, size - 4096)),
                       ("HDF5 cache, one bit flipped in the middle", lambda f: flip_bit(f, size // 2))):
        bad = w / "bad.h5"
        shutil.copy(h5, bad)
        edit(bad)
        cmd = [CFISAC, "train", "--preset", "tiny", "--data", str(bad), "--n-train", "16", "--n-val", "4",
               "--epochs", "1", "--batch-size", "8", "--out", str(w / "r-bad"), "--no-progress"]
        p = run(cmd)
        ok, behaviour = one_line_error(p, str(bad))
        ok = ok and "delete it" in p.stderr and not (w / "r-bad" / "latest.json").exists()
        record("files", case, short(cmd, w), behaviour, CLEAR if ok else "FAIL")
    # checkpoints
    run_dir = w / "run"
    p = run([CFISAC, "train", "--preset", "tiny", "--n-train", "16", "--n-val", "4", "--epochs", "1",
             "--batch-size", "8", "--out", str(run_dir), "--no-progress"])
    assert p.returncode == 0, p.stderr
    ckpt = run_dir / json.loads((run_dir / "latest.json").read_text())["checkpoint"]
    for case, name, edit in (
            ("checkpoint model.safetensors truncated", "model.safetensors",
             lambda f: f.write_bytes(f.read_bytes()[:200])),
            ("checkpoint model.safetensors, one bit flipped", "model.safetensors", lambda f: flip_bit(f, -9)),
            ("checkpoint optim.safetensors, one bit flipped", "optim.safetensors", lambda f: flip_bit(f, -9)),
            ("checkpoint state.json, one bit flipped", "state.json", lambda f: flip_bit(f, 200)),
            ("checkpoint state.json truncated", "state.json", lambda f: f.write_bytes(f.read_bytes()[:50]))):
        bad = w / "run-bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(run_dir, bad)
        edit(bad / ckpt.name / name)
        for cmd in ([CFISAC, "evaluate", "--checkpoint", str(bad), "--n-test", "2", "--no-progress"],
                    [CFISAC, "train", "--preset", "tiny", "--n-train", "16", "--n-val", "4", "--epochs", "2",
                     "--batch-size", "8", "--out", str(bad), "--no-progress", "--resume"]):
            p = run(cmd)
            ok, behaviour = one_line_error(p, str(bad / ckpt.name))
            ok = ok and ("corrupted" in p.stderr or "truncated" in p.stderr)
            record("files", f"{case} ({cmd[1]})", short(cmd, w), behaviour, CLEAR if ok else "FAIL")
    # the point store
    rep = w / "rep"
    base = [CFISAC, "reproduce", "fig6", "--preset", "tiny", "--schemes", "prior", "--n-test", "4", "--out",
            str(rep), "--no-progress", "--threads", "1", "--scheme-seconds", "0"]
    p = run(base)
    assert p.returncode == 0, p.stderr
    csv_path = rep / "points" / "fig6.csv"
    good = csv_path.read_bytes()
    good_report = (rep / "report.md").read_text()
    lines = good.split(b"\n")
    row = lines[2]
    k = row.index(b",prior,") + 7
    k += row[k:].index(b",") + 1  # the x_value field, then the first digit of position_rmse
    flipped = bytearray(row)
    flipped[k] = ord("9") if flipped[k] != ord("9") else ord("1")
    csv_path.write_bytes(b"\n".join([*lines[:2], bytes(flipped), *lines[3:]]))
    p = run([*base, "--report-only"])
    report = (rep / "report.md").read_text()
    wrong = bytes(flipped).split(b",")[7].decode()
    shown = wrong in report
    ok = ("malformed point-store row" in p.stderr and f"{csv_path}:3" in p.stderr and not shown
          and "Points missing or failed" in report)
    record("files", "point-store CSV, one digit of a result changed (bit flip)", short([*base, "--report-only"], w),
           f"warning `{csv_path.name}:3: malformed point-store row skipped (row_sha256 mismatch ...)`; the report "
           f"lists the point as not run; the wrong value shown: {shown}", CLEAR if ok else "FAIL")
    p = run(base)
    again = {r.split(b",")[2]: r.split(b",")[7] for r in csv_path.read_bytes().split(b"\n")[1:] if r}
    ref = {r.split(b",")[2]: r.split(b",")[7] for r in good.split(b"\n")[1:] if r}
    ok = p.returncode == 0 and again == ref and "1 computed" in p.stdout + p.stderr
    record("files", "... then rerun", short(base, w), "the corrupted point is recomputed (1 computed), every "
           f"position_rmse equal to the original: {again == ref}", RESUMED if ok else "FAIL")
    csv_path.write_bytes(b"experiment,poi\n")
    p = run([*base, "--report-only"])
    ok, behaviour = one_line_error(p, str(csv_path))
    ok = ok and "delete it" in p.stderr
    record("files", "point-store CSV header corrupted", short([*base, "--report-only"], w), behaviour,
           CLEAR if ok else "FAIL")
    csv_path.write_bytes(good[: len(good) - 40])  # torn last row
    p = run(base)
    again = {r.split(b",")[2]: r.split(b",")[7] for r in csv_path.read_bytes().split(b"\n")[1:] if r}
    ok = p.returncode == 0 and again == ref and "torn last row" in p.stderr
    record("files", "point-store CSV truncated mid-row", short(base, w),
           "warning `removed a torn last row`, that point recomputed, all values equal", RESUMED if ok else "FAIL")
    assert good_report


# ---------------------------------------------------------------------------------------------------- 4: kill -9
def kill_chain(name: str, cmd: list[str], work: Path, kills: int, window: tuple[float, float], *,
               compare, resumed_marker: str, rng: random.Random, output: Path) -> None:
    """Run ``cmd`` until it was killed ``kills`` times with SIGKILL, each after a random delay in ``window`` (s),
    each restart being the same command (a run that ends before its kill is a finished job: ``output`` is deleted
    and the chain goes on); then once to the end. ``compare()`` -> (identical, detail) against the reference."""
    events, killed, attempts = [], 0, 0
    while killed < kills and attempts < 3 * kills:
        attempts += 1
        delay = rng.uniform(*window)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
        try:
            out, _ = proc.communicate(timeout=delay)
            events.append(f"ended before its kill at {delay:.1f} s (output deleted)")
            shutil.rmtree(output, ignore_errors=True) if output.is_dir() else output.unlink(missing_ok=True)
            continue
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate()
            killed += 1
            events.append(f"killed at {delay:.1f} s" + (" after resuming" if resumed_marker in out else ""))
    t0 = time.monotonic()
    p = run(cmd)
    wall = time.monotonic() - t0
    resumed = resumed_marker in p.stdout + p.stderr
    identical, detail = compare()
    ok = p.returncode == 0 and identical and resumed and killed >= kills
    record("kill -9", f"{name}: {killed} x SIGKILL at random moments, then restart", short(cmd, work),
           f"{'; '.join(events)}; last restart exit {p.returncode} in {wall:.0f} s, resumed: {resumed}; {detail}",
           RESUMED if ok else f"FAIL{'' if identical else ' (different numbers)'}")


def kill_cases(work: Path, kills: int, rng: random.Random, which: str = "simulate,train,reproduce") -> None:
    w = work / "kill"
    w.mkdir()
    if "simulate" in which:
        kill_simulate(w, kills, rng)
    if "train" in which:
        kill_train(w, kills, rng)
    if "reproduce" in which:
        kill_reproduce(w, kills, rng)


def kill_simulate(w: Path, kills: int, rng: random.Random) -> None:
    import h5py
    import numpy as np

    sim = lambda out: [CFISAC, "simulate", "--preset", "tiny", "--n", "3072", "--chunk", "32", "--out", str(out)]  # noqa: E731
    t0 = time.monotonic()
    p = run(sim(w / "ref.h5"))
    t_ref = time.monotonic() - t0
    assert p.returncode == 0, p.stderr

    def same_h5() -> tuple[bool, str]:
        with h5py.File(w / "ref.h5") as a, h5py.File(w / "k.h5") as b:
            keys = ("y", "x", "labels", "indices", "sha256")
            same = all(np.array_equal(a[k][()], b[k][()]) for k in keys) and dict(a.attrs) == dict(b.attrs)
        from cfisac.data import open_hdf5

        open_hdf5(w / "k.h5")
        leftovers = [q.name for q in w.iterdir() if q.name.startswith(".k.h5")]
        return same and not leftovers, (f"datasets y, x, labels, indices, sha256 and attributes equal to the "
                                        f"uninterrupted run ({t_ref:.0f} s): {same}; leftovers {leftovers}")

    kill_chain("cfisac simulate", sim(w / "k.h5"), w, kills, (0.2 * t_ref, 0.8 * t_ref), compare=same_h5,
               resumed_marker="resuming", rng=rng, output=w / "k.h5")


def kill_train(w: Path, kills: int, rng: random.Random) -> None:
    from safetensors.torch import load_file

    tr = lambda out: [CFISAC, "train", "--preset", "tiny", "--n-train", "32", "--n-val", "8", "--batch-size", "8",  # noqa: E731
                      "--epochs", "30", "--out", str(out), "--no-progress", "--threads", "1", "--resume"]
    t0 = time.monotonic()
    p = run(tr(w / "ref-run"))
    t_ref = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr

    def same_run() -> tuple[bool, str]:
        from cfisac.train import find_checkpoint

        a, b = find_checkpoint(w / "ref-run"), find_checkpoint(w / "k-run")
        wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
        oa, ob = load_file(str(a / "optim.safetensors")), load_file(str(b / "optim.safetensors"))
        same_w = wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)
        # rng.torch (the global generator's state) differs between two uninterrupted runs too: nothing draws from it
        same_o = oa.keys() == ob.keys() and all(bool((oa[k] == ob[k]).all()) for k in oa if k != "rng.torch")
        ha = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in json.loads((a / "state.json").read_text())[
            "history"]]
        hb = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in json.loads((b / "state.json").read_text())[
            "history"]]
        return same_w and same_o and ha == hb, (f"final weights, Adam moments and per-epoch losses equal to the "
                                                f"uninterrupted run ({t_ref:.0f} s): {same_w}, {same_o}, {ha == hb}")

    kill_chain("cfisac train", tr(w / "k-run"), w, kills, (0.2 * t_ref, 0.9 * t_ref), compare=same_run,
               resumed_marker="resuming", rng=rng, output=w / "k-run")


def kill_reproduce(w: Path, kills: int, rng: random.Random) -> None:
    rp = lambda out: [CFISAC, "reproduce", "fig6", "--preset", "tiny", "--schemes", "prior,music", "--out",  # noqa: E731
                      str(out), "--no-progress", "--threads", "1", "--scheme-seconds", "0", *REPRODUCE_N_TEST]
    t0 = time.monotonic()
    p = run(rp(w / "ref-rep"))
    t_ref = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr

    def same_points() -> tuple[bool, str]:
        from cfisac.experiments.store import PointStore

        def numbers(root: Path) -> dict[str, str]:  # JSON: NaN == NaN; wall-clock metrics left out
            cols = ("position_rmse", "velocity_rmse", "root_crlb_position", "root_crlb_velocity", "n_scenes",
                    "fronthaul_bits_per_ap", "spec_hash")
            return {k: json.dumps([[r[c] for c in cols], {m: v for m, v in r["metrics"].items() if "second" not in m
                                                          and "time" not in m and not m.endswith("_s")}],
                                  sort_keys=True)
                    for k, r in PointStore(root, "fig6").latest().items()}

        a, b = numbers(w / "ref-rep"), numbers(w / "k-rep")
        same = a == b and len(a) > 0
        commits = {r["git_commit"] for d in ("ref-rep", "k-rep") for r in PointStore(w / d, "fig6").rows()}
        if len(commits) > 1:  # a shared checkout: someone committed estimator code between the two runs
            print(f"warning: the rows come from several commits {sorted(commits)}: a difference may be the code's",
                  flush=True)
        if not same:  # keep both for a look
            for d in ("ref-rep", "k-rep"):
                shutil.copytree(w / d, Path(tempfile.gettempdir()) / f"faults-{d}-{os.getpid()}", dirs_exist_ok=True)
            diff = [k for k in a if a[k] != b.get(k)]
            print(f"differing points: {diff}; kept in {tempfile.gettempdir()}/faults-*-{os.getpid()}", flush=True)
        return same and (w / "k-rep" / "report.md").is_file(), (
            f"{len(b)} points; RMSEs, root-CRLBs, n_scenes, bits and metrics (but wall times) equal to the "
            f"uninterrupted run ({t_ref:.0f} s): {same}; rows from commit(s) {', '.join(sorted(commits))}")

    kill_chain("cfisac reproduce", rp(w / "k-rep"), w, kills, (0.2 * t_ref, 0.9 * t_ref), compare=same_points,
               resumed_marker="done before, skipped", rng=rng, output=w / "k-rep")


# ---------------------------------------------------------------------------------------------------- 5: distributed
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(argv: list[str], world: int, logs: Path) -> list[tuple[subprocess.Popen, Path]]:
    port = free_port()
    procs = []
    for r in range(world):
        env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(r), "WORLD_SIZE": str(world),
               "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(world)}
        log = logs / f"rank{r}.log"
        procs.append((subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env), log))
    return procs


def distributed_cases(work: Path) -> None:
    from cfisac.train import find_checkpoint

    w = work / "dist"
    w.mkdir()
    timeout = 30  # s: a rank waits this long for a peer (startup included; the machine may be loaded)
    for phase in ("training", "inference"):
        run_dir = w / f"run-{phase}"
        train_argv = [CFISAC, "dist-train", "--preset", "tiny", "--n-train", "64", "--n-val", "8", "--batch-size",
                      "8", "--epochs", "40" if phase == "training" else "1", "--timeout", str(timeout),
                      "--checkpoint-every", "2", "--threads", "1", "--out", str(run_dir), "--no-progress"]
        if phase == "training":
            argv = train_argv
        else:
            procs = start_ranks(train_argv, 3, w)
            for proc, _ in procs:
                proc.wait(timeout=600)
            argv = [CFISAC, "dist-sense", "--checkpoint", str(run_dir), "--n", "200000", "--batch-size", "64",
                    "--timeout", str(timeout), "--threads", "1"]
        logs = w / phase
        logs.mkdir()
        procs = start_ranks(argv, 3, logs)
        started = time.monotonic()
        # wait until the run is under way (a checkpoint beyond the first / updates flowing), then kill AP 1
        while time.monotonic() - started < 300:
            if phase == "training" and (run_dir / "latest.json").is_file() and json.loads(
                    (run_dir / "latest.json").read_text())["global_step"] >= 4:
                break
            if phase == "inference" and time.monotonic() - started > 25:
                break
            if any(proc.poll() is not None for proc, _ in procs):
                break
            time.sleep(0.5)
        victim = procs[2][0]
        alive_before = victim.poll() is None
        victim.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        codes, ends = [], []
        for proc, _ in procs[:2]:
            try:
                proc.wait(timeout=120)
                ends.append(time.monotonic() - t_kill)
            except subprocess.TimeoutExpired:
                proc.kill()
                ends.append(math.inf)
            codes.append(proc.returncode)
        victim.wait()
        err0 = [ln for ln in procs[0][1].read_text().splitlines() if "error" in ln]
        err1 = [ln for ln in procs[1][1].read_text().splitlines() if "error" in ln]
        try:
            ckpt = find_checkpoint(run_dir)
            resumable = f"{ckpt.name} verified"
        except ValueError as err:
            ckpt, resumable = None, f"no resumable checkpoint: {err}"
        ok = (alive_before and all(c not in (0, None) for c in codes) and max(ends) < 60 and bool(err0)
              and ckpt is not None and "Traceback" not in procs[0][1].read_text())
        record("distributed", f"kill -9 of receive AP 1 (rank 2) mid-{phase}", short(argv, w) + " (3 ranks, "
               "torchrun environment)", f"CPU exit {codes[0]} after {ends[0]:.1f} s, AP 0 exit {codes[1]} after "
               f"{ends[1]:.1f} s; CPU: `{(err0 or ['(none)'])[-1][:200]}`; AP 0: `{(err1 or ['(none)'])[-1][:120]}`; "
               f"{resumable}", CLEAR if ok else "FAIL")
        if phase == "training" and ckpt is not None:
            t0 = time.monotonic()
            procs = start_ranks([*train_argv[:train_argv.index("--epochs") + 1], "3",
                                 *train_argv[train_argv.index("--epochs") + 2:], "--resume"], 3, logs)
            codes = [proc.wait(timeout=600) for proc, _ in procs]
            text = procs[0][1].read_text()
            ok = codes == [0, 0, 0] and "resuming" in text
            record("distributed", "... restart of the 3 ranks with --resume", short(argv, w) + " --resume",
                   f"exit {codes} in {time.monotonic() - t0:.0f} s; resumed from the checkpoint: {'resuming' in text}",
                   "resumed" if ok else "FAIL")
    # a corrupted fronthaul message (in process: a bit flipped in a message body on the link)
    import torch

    from cfisac.distributed.transport import queue_pair
    from cfisac.distributed.wire import Kind, MessageError, make_message

    a, b = queue_pair(1, 0, timeout_s=5)
    msg = make_message(Kind.FORWARD, [torch.arange(64, dtype=torch.uint8)], sender=1, ap=0, step=3)
    msg.body[10] ^= 0x10
    a.send(msg)
    try:
        b.recv(Kind.FORWARD)
        behaviour, ok = "accepted", False
    except MessageError as err:
        counted = dict(b.traffic.rejected_messages)
        behaviour, ok = f"`MessageError: {err}`; Traffic.rejected_messages = {counted}", counted == {"FORWARD": 1}
    record("distributed", "fronthaul message with one bit flipped", "Link.recv of a FORWARD message whose body was "
           "changed after its CRC-32 was computed", behaviour, CLEAR if ok else "FAIL")


# ---------------------------------------------------------------------------------------------------- 6: disk full
def tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def limit_file_size(n: int):
    def pre() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))

    return pre


def disk_cases(work: Path) -> None:
    w = work / "disk"
    w.mkdir()
    mnt = w / "small"
    mounted = tmpfs(mnt, "3m")
    how = "a 3 MiB tmpfs" if mounted else "RLIMIT_FSIZE 3 MiB in the child"
    pre = None if mounted else limit_file_size(3 << 20)
    target = mnt if mounted else w
    try:
        # the cache: a previous (small) file must survive a failed bigger write
        prev = target / "d.h5"
        p = run([CFISAC, "simulate", "--preset", "tiny", "--n", "16", "--out", str(prev)])
        assert p.returncode == 0, p.stderr
        before = prev.read_bytes()
        cmd = [CFISAC, "simulate", "--preset", "tiny", "--n", "1024", "--chunk", "32", "--out", str(prev)]
        p = run(cmd, preexec=pre)
        ok, behaviour = one_line_error(p, str(prev))
        intact = prev.read_bytes() == before
        stray = [q.name for q in target.iterdir() if q.name.startswith(".d.h5.tmp")]
        ok = ok and intact and not stray and ("No space" in p.stderr or "too large" in p.stderr)
        record("disk", f"disk full while writing the HDF5 cache ({how})", short(cmd, w),
               f"{behaviour}; previous d.h5 intact: {intact}; temporaries left: {stray}", CLEAR if ok else "FAIL")
        shutil.rmtree(target / ".d.h5.parts", ignore_errors=True)
        # the report: a previous report must survive
        rep = target / "rep"
        base = [CFISAC, "reproduce", "fig6", "--preset", "tiny", "--schemes", "prior", "--n-test", "4", "--out",
                str(rep), "--no-progress", "--threads", "1"]
        p = run(base)
        assert p.returncode == 0, p.stderr
        before = (rep / "report.md").read_text()
        filler = target / "filler"
        if mounted:
            with open(filler, "wb") as f:  # fill the disk
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
        cmd = [*base, "--report-only"]
        p = run(cmd, preexec=None if mounted else limit_file_size(4096))
        ok, behaviour = one_line_error(p, "report")
        intact = (rep / "report.md").read_text() == before
        stray = [q.name for q in rep.iterdir() if ".tmp-" in q.name]
        ok = ok and intact and not stray
        record("disk", f"disk full while writing the report ({'full tmpfs' if mounted else 'RLIMIT_FSIZE 4 KiB'})",
               short(cmd, w), f"{behaviour}; previous report.md intact: {intact}; temporaries left: {stray}",
               CLEAR if ok else "FAIL")
        filler.unlink(missing_ok=True)
        # a training checkpoint on a full disk
        rd = target / "run"
        cmd = [CFISAC, "train", "--preset", "tiny", "--n-train", "16", "--n-val", "4", "--epochs", "1",
               "--batch-size", "8", "--out", str(rd), "--no-progress"]
        p = run(cmd, preexec=limit_file_size(20_000))
        ok, behaviour = one_line_error(p, "", rc=1)
        ok = ok and not (rd / "latest.json").exists()
        record("disk", "file size limit while writing a checkpoint (RLIMIT_FSIZE 20 kB)", short(cmd, w), behaviour,
               CLEAR if ok else "FAIL")
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], capture_output=True)
    # a read-only place (root ignores permission bits; /proc refuses everyone)
    cmd = [CFISAC, "reproduce", "fig6", "--preset", "tiny", "--schemes", "prior", "--out", "/proc/self/rep"]
    p = run(cmd)
    ok, behaviour = one_line_error(p, "/proc/self/rep")
    record("disk", "permission denied: reproduce --out in /proc", short(cmd, w), behaviour, CLEAR if ok else "FAIL")


# ---------------------------------------------------------------------------------------------------- main
def write_table(path: Path, header: str) -> None:
    """The markdown table of :data:`ROWS` to ``path``, and the rows with ``header`` to ``path`` .json (for
    ``--merge``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps({"header": header, "rows": [dataclasses.asdict(r) for r in ROWS]},
                                                    indent=1))
    lines = [header, "", "| # | group | case | command | behaviour | verdict |", "|---|---|---|---|---|---|"]
    for k, r in enumerate(ROWS, 1):
        cells = [str(k), r.group, r.case, f"`{r.command}`", r.behaviour.replace("`", "'"), f"**{r.verdict}**"]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    fails = [r for r in ROWS if r.verdict.startswith("FAIL")]
    lines += ["", f"{len(ROWS)} cases, {len(ROWS) - len(fails)} clear error / resumed, {len(fails)} FAIL."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="cli,config,files,kill,distributed,disk")
    ap.add_argument("--kills", type=int, default=5, help="SIGKILLs per command (default 5)")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--kill", default="simulate,train,reproduce", help="the commands of the kill group")
    ap.add_argument("--reproduce-n-test", type=int, default=24, help="test scenes per point (0: the preset's)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "faults.md")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="only write --out from the .json files of earlier runs (e.g. one per group)")
    args = ap.parse_args()
    from machine import header

    REPRODUCE_N_TEST[:] = ["--n-test", str(args.reproduce_n_test)] if args.reproduce_n_test else []

    if args.merge:
        heads, merged = [], {}
        for part in args.merge:  # a later run's row of the same case replaces an earlier one (a rerun)
            d = json.loads(part.read_text())
            heads.append(d["header"].replace("# Fault matrix (issue 18)\n\n", ""))
            for r in d["rows"]:
                merged[(r["group"], r["case"])] = Row(**r)
        ROWS.extend(merged.values())
        write_table(args.out, "# Fault matrix (issue 18)\n\nMerged from runs of `benchmarks/faults.py` (one per "
                    "group of cases):\n\n" + "\n\n".join(f"- {h.strip()}" for h in heads))
        print(f"wrote {args.out}")
        return 0

    groups = {"cli": cli_cases, "config": config_cases, "files": files_cases,
              "kill": lambda w: kill_cases(w, args.kills, random.Random(args.seed), args.kill),
              "distributed": distributed_cases, "disk": disk_cases}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cfisac-faults-") as tmp:
        for g in args.only.split(","):
            try:
                groups[g](Path(tmp))
            except Exception as err:  # noqa: BLE001 - a broken harness is a row, not a lost table
                record(g, "harness", "-", f"{type(err).__name__}: {err}", "FAIL (harness)")
    head = header("Fault matrix (issue 18)") + (f"\n\nAll cases ran on the `tiny` preset, on CPU, in "
                                                f"{time.monotonic() - t0:.0f} s; see the docstring of "
                                                "`benchmarks/faults.py` for the verdicts.")
    write_table(args.out, head)
    print(f"wrote {args.out}")
    return 0 if not any(r.verdict.startswith("FAIL") for r in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
