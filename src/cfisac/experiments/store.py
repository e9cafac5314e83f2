"""Resumable sweep storage: one CSV row per finished point, appended as soon as the point completes.

A sweep is a list of :class:`Point` s in a fixed order (``--point K`` runs the K-th alone, so a job array can spread a
sweep over machines). Each point has a stable ``key`` (e.g. ``"power_dbm=30|scheme=music"``) and a ``spec``: every
input that determines its result (the system config, the budget, the seed, the model config ...), hashed into
``spec_hash``. :class:`PointStore` keeps ``<root>/points/<experiment>.csv``; a point counts as finished when a row
with its key, its current spec hash and ``status == "ok"`` exists. Rows are only ever appended (under an exclusive
``fcntl`` lock, so several processes may share a store): a rerun with ``force`` appends a new row and the last row
of a key wins. Failed points are recorded with ``status == "failed"`` and the error message, and are rerun next time.

Torn rows: a process killed while appending can leave a last line cut short (no trailing newline). Readers ignore
it (the point counts as not finished) and the next append, under the lock, cuts it off before writing, so every
row starts on a fresh line. Any other malformed row (wrong number of fields, unparsable numbers, e.g. from an older
version that glued a row onto a torn one) is skipped with a warning naming the file and line (``warnings``
category :class:`MalformedRowWarning`), so its point is computed again instead of being dropped silently.

Bit flips and edits: the last column, ``row_sha256``, is the SHA-256 (first 16 hex digits) of the row's other
fields; a row whose fields do not match it is skipped with the same warning (its point is computed again), so a
corrupted number is never reported. Stores written before that column existed (header without ``row_sha256``) are
read and appended to in their own format, unverified.

Columns (:data:`COLUMNS`): ``experiment, point, key, scheme, series, x_name, x_value`` (what the point is);
``position_rmse`` (m), ``velocity_rmse`` (m/s), ``root_crlb_position`` (m), ``root_crlb_velocity`` (m/s),
``fronthaul_bits_per_ap``, ``n_scenes`` (results; empty when not applicable), ``metrics`` (a JSON object of further
results, e.g. medians or stage runtimes); ``seed, spec_hash, config_hash, config_diff`` (the system config's fields
that differ from the preset, as JSON; the full config is in ``points/configs/<config_hash>.json``),
``code_version, git_commit, host, wall_s, finished_at, status, message``, ``row_sha256``.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import SystemConfig

__all__ = [
    "COLUMNS", "MalformedRowWarning", "Point", "PointStore", "SweepInterrupted", "code_identity", "config_diff",
    "run_points", "spec_hash",
]

COLUMNS = (
    "experiment", "point", "key", "scheme", "series", "x_name", "x_value",
    "position_rmse", "velocity_rmse", "root_crlb_position", "root_crlb_velocity", "fronthaul_bits_per_ap",
    "n_scenes", "metrics",
    "seed", "spec_hash", "config_hash", "config_diff", "code_version", "git_commit", "host", "wall_s", "finished_at",
    "status", "message", "row_sha256",
)
LEGACY_COLUMNS = COLUMNS[:-1]  # stores written before rows were checksummed
RESULT_COLUMNS = ("position_rmse", "velocity_rmse", "root_crlb_position", "root_crlb_velocity",
                  "fronthaul_bits_per_ap", "n_scenes", "metrics")
NUMERIC_COLUMNS = ("x_value", "position_rmse", "velocity_rmse", "root_crlb_position", "root_crlb_velocity",
                   "fronthaul_bits_per_ap", "n_scenes", "seed", "wall_s")


class MalformedRowWarning(UserWarning):
    """A stored row that cannot be parsed (its file and line are in the message); the row is skipped."""


class SweepInterrupted(RuntimeError):
    """Raised by :func:`run_points` with ``fail_fast`` when a point fails (the rows before it are stored)."""


def _jsonable(v: Any) -> Any:
    if isinstance(v, SystemConfig):
        return v.to_dict()
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    return v


def spec_hash(spec: Any) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON of ``spec`` (configs serialised by ``to_dict``)."""
    text = json.dumps(_jsonable(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_diff(cfg: SystemConfig, base: SystemConfig) -> dict[str, Any]:
    """Fields of ``cfg`` that differ from ``base`` (JSON values)."""
    a, b = cfg.to_dict(), base.to_dict()
    return {k: _jsonable(v) for k, v in a.items() if _jsonable(v) != _jsonable(b[k])}


_IDENTITY: dict[str, str] | None = None


def code_identity() -> dict[str, str]:
    """``code_version`` (``cfisac.__version__``), ``git_commit`` (HEAD, ``+dirty`` with local changes; empty outside
    a git checkout) and ``host`` (machine name, CPU count, processor)."""
    global _IDENTITY
    if _IDENTITY is None:
        from .. import __version__

        commit = ""
        try:
            here = Path(__file__).resolve().parent
            commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                                    text=True, timeout=5).stdout.strip()
            if commit:
                dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                       capture_output=True, text=True, timeout=5).stdout.strip()
                commit += "+dirty" if dirty else ""
        except (OSError, subprocess.SubprocessError):
            commit = ""
        host = f"{platform.node()} ({os.cpu_count()} cpu, {platform.machine()})"
        _IDENTITY = {"code_version": __version__, "git_commit": commit, "host": host}
    return dict(_IDENTITY)


@dataclass
class Point:
    """One point of a sweep.

    ``key``: stable name within the experiment; ``scheme`` / ``series`` / ``x_name`` / ``x_value``: what the figure
    plots (series distinguishes curves of one scheme, e.g. the clutter variance of Fig. 13); ``cfg``: the system
    config evaluated; ``spec``: everything else the result depends on (budgets, seeds, model configs); ``run``: a
    callable returning a dict of :data:`RESULT_COLUMNS` (missing ones stay empty); ``task``: the same computation
    as a :class:`cfisac.experiments.workers.PointTask` that a worker process can run (None: the point runs in the
    main process only, e.g. a learned scheme, whose trained model the run caches).
    """

    key: str
    scheme: str
    x_name: str
    x_value: float
    cfg: SystemConfig
    run: Callable[[], dict[str, Any]]
    series: str = ""
    seed: int = 0
    spec: dict[str, Any] = field(default_factory=dict)
    task: Any = None

    @property
    def spec_hash(self) -> str:
        return spec_hash({"key": self.key, "cfg": self.cfg, "seed": self.seed, "spec": self.spec})


def row_digest(fields: Sequence[str]) -> str:
    """The ``row_sha256`` of a row: SHA-256 (16 hex digits) of its other fields, joined by a unit separator."""
    return hashlib.sha256("\x1f".join(fields).encode()).hexdigest()[:16]


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    if isinstance(v, (dict, list)):
        return json.dumps(_jsonable(v), sort_keys=True)
    return str(v)


class PointStore:
    """Append-only CSV of an experiment's points under ``root/points``; see the module docstring."""

    def __init__(self, root: str | Path, experiment: str, *, base_cfg: SystemConfig | None = None) -> None:
        if not experiment or "/" in experiment:
            raise ValueError(f"experiment name must be a plain non-empty name, got {experiment!r}")
        self.root = Path(root)
        self.experiment = experiment
        self.base_cfg = base_cfg
        self.path = self.root / "points" / f"{experiment}.csv"
        self.config_dir = self.root / "points" / "configs"

    # ------------------------------------------------------------------ reading
    def rows(self) -> list[dict[str, str]]:
        """Every stored row (oldest first), as strings. A torn last line (no trailing newline: its writer was
        killed) is ignored; other malformed rows are skipped with a :class:`MalformedRowWarning` naming the line."""
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_SH)  # not while another process appends
            try:
                data = f.read()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        if not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]  # the torn tail; the next append cuts it off
        if not data:
            return []
        reader = csv.reader(io.StringIO(data.decode("utf-8", errors="replace"), newline=""))
        header = next(reader, None)
        if header is None or tuple(header) not in (COLUMNS, LEGACY_COLUMNS):
            raise ValueError(f"{self.path} does not have the point-store columns (its header is corrupted or it "
                             f"was written by another version): move it away or delete it and rerun, or rerun "
                             f"with --force; got the header {header}")
        columns = tuple(header)
        out: list[dict[str, str]] = []
        line = reader.line_num
        for fields in reader:
            first, line = line + 1, reader.line_num
            if not fields:
                continue
            problem = _row_problem(fields, columns)
            if problem:
                msg = f"{self.path}:{first}: malformed point-store row skipped ({problem}); its point will be rerun"
                warnings.warn(msg, MalformedRowWarning, stacklevel=2)
                continue
            row = dict(zip(columns, fields, strict=True))
            row.setdefault("row_sha256", "")
            out.append(row)
        return out

    def latest(self, *, ok_only: bool = True) -> dict[str, dict[str, Any]]:
        """The last row of each key (``ok_only``: of the successful rows), numeric columns parsed to float."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.rows():
            if ok_only and r["status"] != "ok":
                continue
            out[r["key"]] = parse_row(r)
        return out

    def is_done(self, point: Point, latest: dict[str, dict[str, Any]] | None = None) -> bool:
        latest = self.latest() if latest is None else latest
        row = latest.get(point.key)
        return row is not None and row["spec_hash"] == point.spec_hash

    # ------------------------------------------------------------------ writing
    def append(self, point: Point, index: int, result: dict[str, Any], *, wall_s: float, status: str = "ok",
               message: str = "") -> dict[str, str]:
        """Append the row of ``point`` (atomically w.r.t. other processes: exclusive lock, one write, fsync)."""
        unknown = set(result) - set(RESULT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns {sorted(unknown)}; allowed: {RESULT_COLUMNS}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        chash = spec_hash(point.cfg)
        cpath = self.config_dir / f"{chash}.json"
        if not cpath.exists():
            from ..data import remove_stale_temporaries

            remove_stale_temporaries(self.config_dir, re.escape(f".{cpath.name}.") + r"(?P<pid>\d+)")
            tmp = cpath.with_name(f".{cpath.name}.{os.getpid()}")
            tmp.write_text(json.dumps(point.cfg.to_dict(), indent=1, sort_keys=True))
            os.replace(tmp, cpath)
        diff = config_diff(point.cfg, self.base_cfg) if self.base_cfg is not None else {}
        row = {
            "experiment": self.experiment, "point": index, "key": point.key, "scheme": point.scheme,
            "series": point.series, "x_name": point.x_name, "x_value": point.x_value, **result,
            "seed": point.seed, "spec_hash": point.spec_hash, "config_hash": chash, "config_diff": diff,
            **code_identity(), "wall_s": round(wall_s, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "status": status,
            "message": message.replace("\n", " ")[:500],
        }
        text_row = {c: _fmt(row.get(c)) for c in LEGACY_COLUMNS}
        text_row["row_sha256"] = row_digest([text_row[c] for c in LEGACY_COLUMNS])
        with open(self.path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                fd = f.fileno()
                size = _repair_torn_tail(fd, self.path)
                legacy = size > 0 and _header_of(fd) == LEGACY_COLUMNS
                buf = io.StringIO()
                csv.writer(buf).writerow([text_row[c] for c in (LEGACY_COLUMNS if legacy else COLUMNS)])
                line = buf.getvalue().encode()
                if size == 0:
                    hbuf = io.StringIO()
                    csv.writer(hbuf).writerow(COLUMNS)
                    line = hbuf.getvalue().encode() + line
                os.write(fd, line)  # one write, starting on a fresh line
                os.fsync(fd)
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return text_row


def _header_of(fd: int) -> tuple[str, ...]:
    """The column names on the first line of the store open as ``fd``."""
    first = os.pread(fd, 1 << 16, 0).split(b"\n", 1)[0].decode("utf-8", errors="replace")
    return tuple(next(csv.reader([first]), []))


def _repair_torn_tail(fd: int, path: Path) -> int:
    """Cut a torn last line (the file does not end with a newline: its writer was killed mid-row) off the file
    open (append mode, exclusively locked) as ``fd``; returns the size after the repair."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    keep, pos = 0, size
    while pos > 0:  # the last newline, searched backwards in blocks
        lo = max(0, pos - 65536)
        k = os.pread(fd, pos - lo, lo).rfind(b"\n")
        if k >= 0:
            keep = lo + k + 1
            break
        pos = lo
    print(f"warning: {path}: removed a torn last row ({size - keep} bytes without a newline, left by a killed "
          "writer); its point will be rerun", file=sys.stderr)
    os.ftruncate(fd, keep)
    return keep


def _row_problem(fields: list[str], columns: Sequence[str] = COLUMNS) -> str:
    """Why a stored row (a list of fields under the header ``columns``) cannot be used, or "" when it can."""
    if len(fields) != len(columns):
        return f"{len(fields)} fields instead of {len(columns)}"
    r = dict(zip(columns, fields, strict=True))
    if "row_sha256" in r and r["row_sha256"] != row_digest(fields[:-1]):
        return "row_sha256 mismatch: the row was corrupted (bit flip?) or edited"
    if not r["status"]:
        return "no status"
    for c in NUMERIC_COLUMNS:
        try:
            float(r[c]) if r[c] else None
        except ValueError:
            return f"{c} is not a number: {r[c]!r}"
    for c in ("metrics", "config_diff"):
        try:
            json.loads(r[c]) if r[c] else None
        except ValueError:
            return f"{c} is not valid JSON"
    if r["point"]:
        try:
            int(r["point"])
        except ValueError:
            return f"point is not an integer: {r['point']!r}"
    return ""


def parse_row(r: dict[str, str]) -> dict[str, Any]:
    """A stored row with numeric columns as floats (NaN when empty) and ``metrics`` / ``config_diff`` as dicts."""
    out: dict[str, Any] = dict(r)
    for c in NUMERIC_COLUMNS:
        v = r.get(c, "")
        out[c] = float(v) if v not in ("", None) else math.nan
    for c in ("metrics", "config_diff"):
        out[c] = json.loads(r[c]) if r.get(c) else {}
    out["point"] = int(r["point"]) if r.get("point") else -1
    return out


def run_points(
    store: PointStore, points: Sequence[Point], *, only: Iterable[int] | None = None, force: bool = False,
    fail_fast: bool = False, log: Callable[[str], Any] = print, workers: int = 1, threads_per_worker: int = 1,
) -> dict[str, int]:
    """Run the points of a sweep that are not finished yet, storing each row as soon as it completes.

    ``only``: indices of the points to consider (``--point K``); ``force``: recompute finished points too;
    ``fail_fast``: raise :class:`SweepInterrupted` at the first failing point instead of recording it and going on.
    ``workers`` > 1: consecutive points with a ``task`` run in that many worker processes
    (:mod:`cfisac.experiments.workers`, ``threads_per_worker`` torch threads each), all of them finished before the
    next point without one runs here; rows are appended in the points' order, each as soon as it and the points
    before it are done. ``KeyboardInterrupt`` (and any other ``BaseException``) stops the sweep at once (queued
    points are cancelled); finished rows stay stored. Returns counts ``{"done": computed now, "skipped": already
    finished, "failed": failed now}``.
    """
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate point keys in {store.experiment}: {sorted(k for k in keys if keys.count(k) > 1)}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    indices = list(range(len(points))) if only is None else list(only)
    for k in indices:
        if not 0 <= k < len(points):
            raise ValueError(f"--point {k} out of range: {store.experiment} has {len(points)} points (0.."
                             f"{len(points) - 1}); list them with --list-points")
    latest = store.latest()
    counts = {"done": 0, "skipped": 0, "failed": 0}
    pending: list[tuple[str, int, Point, Any]] = []  # (tag, index, point, future) in the points' order
    pool = None
    portable = sum(1 for k in indices if points[k].task is not None and (force or not store.is_done(points[k], latest)))
    if portable < 2:  # one point (e.g. --point K) is not worth starting processes for
        workers = 1

    def record(tag: str, k: int, p: Point, result: dict[str, Any] | None, err: Exception | None, dt: float) -> None:
        if err is not None:
            # "unavailable": a scheme whose code is not there; "failed": anything else
            status = "unavailable" if isinstance(err, (ImportError, NotImplementedError)) else "failed"
            counts["failed"] += 1
            store.append(p, k, {}, wall_s=dt, status=status, message=f"{type(err).__name__}: {err}")
            log(f"{tag}: {status.upper()} ({type(err).__name__}: {err})")
            if fail_fast:
                raise SweepInterrupted(f"{tag} {status}: {err}") from err
            return
        row = store.append(p, k, result, wall_s=dt)
        counts["done"] += 1
        shown = ", ".join(f"{c} {float(row[c]):.4g}" for c in ("position_rmse", "velocity_rmse", "root_crlb_position",
                                                                 "root_crlb_velocity") if row[c] not in ("", "nan"))
        log(f"{tag}: {shown or 'ok'} ({dt:.1f} s)")

    def drain() -> None:
        while pending:
            tag, k, p, fut = pending.pop(0)
            try:
                out = fut.result()
            except Exception as err:  # noqa: BLE001 - recorded in the store, the sweep goes on
                record(tag, k, p, None, err, 0.0)
                continue
            for line in out.log_lines:
                log(line)
            record(tag, k, p, out.result, None, out.wall_s)

    try:
        for n, k in enumerate(indices):
            p = points[k]
            tag = f"[{store.experiment} {n + 1}/{len(indices)}] point {k} {p.key}"
            if not force and store.is_done(p, latest):
                counts["skipped"] += 1
                log(f"{tag}: done before, skipped")
                continue
            if workers > 1 and p.task is not None:
                from concurrent.futures.process import BrokenProcessPool

                from .workers import run_task, worker_pool

                pool = pool or worker_pool(workers, threads_per_worker)
                try:
                    fut = pool.submit(run_task, p.task)
                except BrokenProcessPool:  # a worker died (e.g. killed for memory): its points fail, a new pool
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = worker_pool(workers, threads_per_worker)
                    fut = pool.submit(run_task, p.task)
                pending.append((tag, k, p, fut))
                continue
            drain()
            t0 = time.perf_counter()
            try:
                result = p.run()
            except Exception as err:  # noqa: BLE001 - recorded in the store, the sweep goes on
                record(tag, k, p, None, err, time.perf_counter() - t0)
                continue
            record(tag, k, p, result, None, time.perf_counter() - t0)
        drain()
    except BaseException:
        if pool is not None:  # stop at once: cancel the queued points, end the running ones
            procs = list(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                proc.terminate()
            pool = None
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return counts
