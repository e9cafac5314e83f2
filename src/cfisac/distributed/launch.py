"""Starting the ranks: under ``torchrun`` (environment variables), as local processes on the loopback interface,
or as threads of one process (tests).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and opens the default process group (gloo, or NCCL for CUDA devices) with a
timeout, and :func:`links_for_rank` gives the point-to-point links of a rank (the CPU: one per AP; an AP: one to
the CPU). :func:`run_worker` is what every rank of ``cfisac dist-train`` / ``dist-sense`` runs.

:func:`spawn_local` starts the ranks as processes of this machine (``MASTER_ADDR=127.0.0.1``, a free port) without
``torchrun`` and waits for all of them with a deadline; each rank's outcome (result or error text) is written to a
JSON file so that a failing rank does not take the others' reports with it. :func:`run_threads` runs the same
roles as threads joined by in-memory queues (no sockets; used by the tests and as the in-process reference).
"""

from __future__ import annotations

import datetime
import json
import math
import multiprocessing
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .transport import DEFAULT_MAX_MESSAGE_BYTES, Link, TorchLink, queue_pair

__all__ = ["free_port", "init_distributed", "links_for_rank", "run_threads", "run_worker", "spawn_local"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def init_distributed(*, backend: str = "auto", device: str = "cpu", timeout_s: float = 300.0,
                     ) -> tuple[int, int, torch.device, torch.device]:
    """Open the default process group from torchrun's environment.

    Returns (rank, world size, compute device, message device). ``backend`` "auto": NCCL when ``device`` is CUDA,
    gloo otherwise. With NCCL every rank uses ``cuda:LOCAL_RANK`` (one GPU per rank) and messages live on it; with
    gloo messages live on the CPU (the compute device may still be a GPU, shared by several ranks).
    """
    import torch.distributed as dist

    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"environment variables {missing} are not set: launch with torchrun (or --local)")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    compute = torch.device(device)
    if backend == "auto":
        backend = "nccl" if compute.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be auto, gloo or nccl, got {backend!r}")
    if compute.type == "cuda" and compute.index is None:
        compute = torch.device("cuda", local % max(1, torch.cuda.device_count()))
    if backend == "nccl":
        if compute.type != "cuda":
            raise ValueError("the NCCL backend needs a CUDA device (--device cuda)")
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")  # waits honour their timeout
        torch.cuda.set_device(compute)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = compute
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return rank, world, compute, (compute if backend == "nccl" else torch.device("cpu"))


def links_for_rank(rank: int, world: int, *, device: torch.device | str = "cpu", timeout_s: float = 300.0,
                   max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[Link]:
    """The CPU (rank 0): links to ranks 1..world-1 in order; an AP rank: one link to rank 0."""
    if world < 2:
        raise ValueError(f"the distributed runtime needs M + 1 >= 2 ranks, got a world of {world}")
    peers = range(1, world) if rank == 0 else [0]
    return [TorchLink(rank, p, device=device, timeout_s=timeout_s, max_message_bytes=max_message_bytes)
            for p in peers]


# ---------------------------------------------------------------------------------------------------- worker
def run_worker(task: str, options: dict[str, Any]) -> Any:
    """Run this rank's role of ``task`` ("train", "sense" or "ddp") under an initialised environment (torchrun or
    :func:`spawn_local`). ``options`` are the keyword arguments of the role functions plus ``backend``,
    ``device``, ``timeout_s``, ``threads``; configs are given as dicts (``system``, ``model``, ``train``,
    ``distributed``). Returns the role function's result."""
    import torch.distributed as dist

    from ..checkpoint import TrainConfig
    from ..config import SystemConfig
    from ..models import ModelConfig
    from .common import DistConfig
    from .sensing import run_ap_sensing, run_cpu_sensing
    from .training import run_ap_training, run_cpu_training

    opts = dict(options)
    timeout_s = float(opts.pop("timeout_s", 300.0))
    owned = not dist.is_initialized()  # tear down only a process group this call opened
    rank, world, compute, msg_device = init_distributed(backend=opts.pop("backend", "auto"),
                                                        device=opts.pop("device", "cpu"), timeout_s=timeout_s)
    threads = opts.pop("threads", None)
    fault = opts.pop("fault", None)
    try:
        if task == "train":
            dcfg = DistConfig(**opts.pop("distributed", {}))
            links = links_for_rank(rank, world, device=msg_device, timeout_s=dcfg.timeout_s,
                                   max_message_bytes=dcfg.max_message_bytes)
            if rank == 0:
                cfg = SystemConfig.from_dict(opts.pop("system"))
                mcfg = ModelConfig.from_dict(opts.pop("model"))
                tcfg = TrainConfig.from_dict({**opts.pop("train"), "device": str(compute)})
                return run_cpu_training(links, cfg, mcfg, tcfg, opts.pop("out"), dcfg=dcfg, threads=threads, **opts)
            ap_fault = fault if fault and fault.get("rank") == rank else None
            return run_ap_training(links[0], rank - 1, device=compute, threads=threads,
                                   fault=ap_fault["action"] if ap_fault else None)
        if task == "sense":
            links = links_for_rank(rank, world, device=msg_device, timeout_s=timeout_s)
            if rank == 0:
                return run_cpu_sensing(links, device=compute, threads=threads, **opts)
            opts.pop("log", None)
            return run_ap_sensing(links[0], rank - 1, device=compute, threads=threads, **opts)
        if task == "ddp":
            import hashlib

            from .ddp import ddp_train

            cfg = SystemConfig.from_dict(opts.pop("system"))
            mcfg = ModelConfig.from_dict(opts.pop("model"))
            tcfg = TrainConfig.from_dict({**opts.pop("train"), "device": str(compute)})
            if threads:
                torch.set_num_threads(threads)
            res = ddp_train(cfg, mcfg, tcfg, opts.pop("out"), **opts)
            books = [hashlib.sha256(ap.quantizer.codebook.cpu().numpy().tobytes()).hexdigest()
                     for ap in res.model.aps if ap.quantizer is not None]
            return {"checkpoint": str(res.checkpoint), "history": res.history, "finished": res.finished,
                    "codebook_sha256": books, "rank": rank, "world": world}
        raise ValueError(f"unknown task {task!r}")
    finally:
        if owned and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass


def _spawn_entry(rank: int, world: int, port: int, task: str, options: dict[str, Any], report: str,
                 entry: str | None) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    out: dict[str, Any] = {"rank": rank}
    try:
        if entry is None:
            res = run_worker(task, options)
        else:
            import importlib

            mod, _, fn = entry.rpartition(".")
            res = getattr(importlib.import_module(mod), fn)(**options)
        out["ok"] = True
        out["result"] = _jsonable(res)
    except BaseException as err:  # report everything, including KeyboardInterrupt
        out["ok"] = False
        out["error_type"] = type(err).__name__
        out["error"] = str(err)
        out["traceback"] = traceback.format_exc()
    tmp = Path(f"{report}.tmp-{os.getpid()}")  # atomic: a rank killed while writing leaves no half report
    tmp.write_text(json.dumps(out, default=str))
    os.replace(tmp, report)


def _jsonable(res: Any) -> Any:
    if res is None or isinstance(res, (int, float, str, bool)):
        return res
    if isinstance(res, dict):
        return {str(k): _jsonable(v) for k, v in res.items()}
    if isinstance(res, (list, tuple)):
        return [_jsonable(v) for v in res]
    if hasattr(res, "summary"):
        return _jsonable(res.summary())
    if hasattr(res, "checkpoint"):
        return {"checkpoint": str(res.checkpoint), "history": _jsonable(res.history), "finished": res.finished}
    if isinstance(res, torch.Tensor):
        return res.tolist()
    return str(res)


def _end(p: multiprocessing.process.BaseProcess) -> None:
    """Terminate ``p`` (SIGTERM, and SIGCONT so that a stopped process receives it; SIGKILL after 5 s) and reap
    it."""
    import signal

    if not p.is_alive():
        return
    p.terminate()
    try:
        os.kill(p.pid, signal.SIGCONT)
    except OSError:
        pass
    p.join(5)
    if p.is_alive():
        p.kill()
        p.join()


def spawn_local(world: int, task: str, options: dict[str, Any] | list[dict[str, Any]], workdir: str | Path, *,
                deadline_s: float | None = 600.0, entry: str | None = None,
                straggler_s: float | None = None, poll_s: float = 0.1) -> list[dict[str, Any]]:
    """Start ``world`` ranks as local processes on the loopback interface and wait for them (at most
    ``deadline_s``, None: no limit; stragglers are terminated and reported). ``options`` is one dict for every rank
    or a list of per-rank dicts. ``entry`` ("module.function") replaces :func:`run_worker` (called with the rank's
    options).

    ``straggler_s``: once any rank has ended, the others get at most this long to end too (the runtime's peer
    timeout plus a margin: a rank whose peer is gone fails within the timeout, so one still running after it is
    stopped or hung, e.g. by SIGSTOP); they are then terminated (SIGTERM, then SIGKILL) and reported. Every child
    is ended when this call returns or raises (KeyboardInterrupt, SIGTERM of the launcher): none outlives it.

    Returns one report per rank: {"rank", "ok", "result" | "error", "error_type", "traceback", "exitcode"}.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    per_rank = options if isinstance(options, list) else [options] * world
    if len(per_rank) != world:
        raise ValueError(f"{len(per_rank)} option dicts for {world} ranks")
    reports = [workdir / f"rank{r}.json" for r in range(world)]
    for p in reports:
        p.unlink(missing_ok=True)
    from ..data import remove_stale_temporaries

    remove_stale_temporaries(workdir, r"rank\d+\.json\.tmp-(?P<pid>\d+)")
    procs = [ctx.Process(target=_spawn_entry, args=(r, world, port, task, per_rank[r], str(reports[r]), entry),
                         daemon=False) for r in range(world)]
    if straggler_s is not None and not (straggler_s >= 0):
        raise ValueError(f"straggler_s must be non-negative, got {straggler_s!r}")
    end = None if deadline_s is None or math.isinf(deadline_s) else time.monotonic() + deadline_s
    why: dict[int, str] = {}
    previous = _terminate_on_sigterm()
    try:
        for p in procs:
            p.start()
        first_end: tuple[float, int] | None = None  # (when, rank) of the first rank that ended
        while any(p.is_alive() for p in procs):
            now = time.monotonic()
            if first_end is None:
                ended = [r for r, p in enumerate(procs) if not p.is_alive()]
                if ended:
                    first_end = (now, ended[0])
            if end is not None and now >= end:
                for r, p in enumerate(procs):
                    if p.is_alive():
                        why[r] = f"rank {r} did not finish within {deadline_s:g} s (terminated)"
                break
            if first_end is not None and straggler_s is not None and now - first_end[0] >= straggler_s:
                for r, p in enumerate(procs):
                    if p.is_alive():
                        why[r] = (f"rank {r} did not end within {straggler_s:g} s after rank {first_end[1]} ended "
                                  "(stopped or hung; terminated)")
                break
            alive = [p for p in procs if p.is_alive()]  # the ranks may all end between the loop test and here
            if alive:
                alive[0].join(poll_s)
    finally:
        for p in procs:  # whatever happened, no rank outlives the launcher
            if p.pid is not None:
                _end(p)
        _restore_sigterm(previous)
    out = []
    for r, (p, rp) in enumerate(zip(procs, reports, strict=True)):
        if rp.is_file():  # a rank that reported and then hung in its teardown still counts with its report
            rec = json.loads(rp.read_text())
        elif r in why:
            rec = {"rank": r, "ok": False, "error": why[r]}
        else:
            rec = {"rank": r, "ok": False, "error": f"rank {r} exited with code {p.exitcode} without a report"}
        rec["exitcode"] = p.exitcode
        out.append(rec)
    return out


def _terminate_on_sigterm() -> Any:
    """In the main thread: make SIGTERM raise ``SystemExit`` (so that the ``finally`` of :func:`spawn_local` ends
    the children); returns the previous handler (None elsewhere: signals belong to the main thread)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


def _restore_sigterm(previous: Any) -> None:
    import signal

    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------------- threads
def run_threads(cpu_fn: Callable[[list[Link]], Any], ap_fn: Callable[[Link, int], Any], n_aps: int, *,
                timeout_s: float = 60.0) -> tuple[Any, list[Any], list[BaseException | None]]:
    """Run the CPU role in this thread and AP m's role in thread m, joined by in-memory queue links.

    ``cpu_fn(links)`` and ``ap_fn(link, m)`` are the role functions with their options bound. Returns (CPU result,
    AP results, AP errors); the CPU's own error propagates after the AP threads ended.
    """
    pairs = [queue_pair(0, m + 1, timeout_s=timeout_s) for m in range(n_aps)]
    results: list[Any] = [None] * n_aps
    errors: list[BaseException | None] = [None] * n_aps

    def target(m: int) -> None:
        try:
            results[m] = ap_fn(pairs[m][1], m)
        except BaseException as err:
            errors[m] = err
        finally:
            pairs[m][1].close()  # a peer waiting on this AP notices at once (like a closed socket)

    threads = [threading.Thread(target=target, args=(m,), daemon=True) for m in range(n_aps)]
    for t in threads:
        t.start()
    try:
        res = cpu_fn([p[0] for p in pairs])
    finally:
        for p in pairs:
            p[0].close()
        for t in threads:
            t.join(timeout_s + 5)
    return res, results, errors
