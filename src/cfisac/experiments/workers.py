"""Evaluation worker processes: the classical, prior and root-CRLB points of a sweep spread over several processes.

The classical estimators' work is many small tensor operations, which intra-op threads parallelise poorly (the ML
estimator even pins itself to one thread); separate processes, one torch thread each, use every core. A point that
can run in another process carries a :class:`PointTask`: a module-level function and picklable arguments (for the
sweeps: the run's context settings, the scheme and the system config) from which a worker rebuilds what it needs,
simulates the same test scenes (a sample is a function of (config, seed, index)) and returns the point's result
columns. :func:`cfisac.experiments.store.run_points` submits consecutive such points to a pool of ``workers``
processes and waits for all of them before the next point that must run in the main process (a learned scheme:
its training keeps the machine to itself, as without workers); rows are still appended by the main process, in
the points' order.

Workers are started with ``spawn`` (no fork of a process whose OpenMP / BLAS thread pools already run), once per
:func:`~cfisac.experiments.store.run_points` call; each keeps its contexts (and so its simulated test sets) for the
points it runs. A worker's estimates equal the main process's up to floating-point rounding: the same scenes and
estimator options, but one torch thread (multi-threaded products may sum in another order); at ``tiny`` the stored
rows are identical (``tests/test_workers.py``) and in the ``quick`` demo every printed digit was
(``benchmarks/results/demo.md``).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["PointTask", "WorkerResult", "auto_workers", "worker_pool"]


@dataclass(frozen=True)
class PointTask:
    """What a worker process needs to compute a point: ``fn(*args, log=...)`` returns the point's result dict
    (``fn`` a module-level function, ``args`` picklable; ``log`` receives the progress lines, which the worker sends
    back with the result)."""

    fn: Callable[..., dict[str, Any]]
    args: tuple


@dataclass(frozen=True)
class WorkerResult:
    result: dict[str, Any]
    wall_s: float
    log_lines: tuple[str, ...]


def auto_workers(device: str, threads: int) -> int:
    """``--workers auto``: one process per torch thread chosen for the run on a CPU (every core of an idle machine,
    one on a loaded one: see ``cfisac reproduce --threads``), one on a GPU (the device is shared, not the cores)."""
    return 1 if str(device).startswith("cuda") else max(1, int(threads))


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:  # numpy / scipy BLAS to one thread, as the main process of cfisac reproduce
        from ..commands.reproduce import limit_blas_threads

        limit_blas_threads(1)
    except Exception:  # noqa: BLE001 - best effort; only speed depends on it
        pass


def run_task(task: PointTask) -> WorkerResult:
    """Run ``task`` here (what a worker process does with it): its result, wall seconds and log lines."""
    lines: list[str] = []
    t0 = time.perf_counter()
    result = task.fn(*task.args, log=lines.append)
    return WorkerResult(result, time.perf_counter() - t0, tuple(lines))


def worker_pool(workers: int, threads_per_worker: int = 1) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes with ``threads_per_worker`` torch threads each; submit
    :func:`run_task` with a :class:`PointTask`."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if not isinstance(threads_per_worker, int) or isinstance(threads_per_worker, bool) or threads_per_worker < 1:
        raise ValueError(f"threads_per_worker must be a positive integer, got {threads_per_worker!r}")
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads_per_worker,))
