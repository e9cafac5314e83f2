"""``cfisac reproduce``: run (resume) the experiments of Section V and write the report.

    cfisac reproduce --preset quick                  # the demo: Fig. 6 power sweep + fronthaul table, report, summary
    cfisac reproduce fig7 fig8 --preset quick        # chosen figures / tables
    cfisac reproduce all --preset quick              # every figure and table (hours on a CPU; resumes)
    cfisac reproduce fig6 --preset quick --list-points
    cfisac reproduce fig6 --preset quick --point 4 --no-report   # one point (job arrays); --report-only collects
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch


def _experiments(names: list[str]) -> list[str]:
    from ..experiments import DEMO, EXPERIMENTS

    if not names or names == ["demo"]:
        return list(DEMO)
    out: list[str] = []
    for n in names:
        for e in (EXPERIMENTS if n == "all" else DEMO if n == "demo" else (n,)):
            if e not in EXPERIMENTS:
                raise ValueError(f"unknown experiment {e!r}; choose from {['demo', 'all', *EXPERIMENTS]}")
            if e not in out:
                out.append(e)
    return out


def limit_blas_threads(n: int) -> list[str]:
    """Set the thread count of every OpenBLAS library loaded in this process (numpy's and scipy's bundled copies),
    as threadpoolctl does, after they are loaded (environment variables only act before). The classical estimators
    make many small matrix products, for which several BLAS threads on a busy machine are 10-30x slower than one.
    Returns the libraries changed."""
    import ctypes

    import numpy  # noqa: F401 - load the libraries first
    import scipy.linalg  # noqa: F401

    changed = []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ln.split()[-1].startswith("/")})
    except OSError:
        return changed
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn(int(n))
                changed.append(path)
                break
    return changed


def cpu_times(stat: str) -> tuple[int, int]:
    """(busy, total) clock ticks of all cores from the text of ``/proc/stat`` (its first ``cpu`` line: user nice
    system idle iowait irq softirq steal ...; idle and iowait are not busy; guest time is already in user)."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(v) for v in fields[1:9]]
            total = sum(ticks)
            return total - ticks[3] - ticks[4], total
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def busy_cores(window: float = 0.25) -> tuple[float, str]:
    """Cores busy right now: the busy share of the CPU time over ``window`` seconds of ``/proc/stat`` times the
    core count (Linux); elsewhere the 1-minute load average, which lags by about a minute (a job that has just ended
    still counts: on the demo machine it once chose one thread for the whole 12-minute run)."""
    cores = os.cpu_count() or 1
    try:
        with open("/proc/stat") as f:
            b0, t0 = cpu_times(f.read())
        time.sleep(window)
        with open("/proc/stat") as f:
            b1, t1 = cpu_times(f.read())
        if t1 > t0:
            busy = cores * (b1 - b0) / (t1 - t0)
            return busy, f"{busy:.1f} of {cores} cores busy"
    except (OSError, ValueError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return load, f"load average {load:.1f} on {cores} cores"


def _threads(requested: str) -> tuple[int, str]:
    """Torch intra-op threads: a number, or ``auto``: every core on an idle machine, one thread when other work
    already fills the cores (:func:`busy_cores`; OpenMP threads that wait for a busy core make small 3D convolutions
    several times slower than one thread)."""
    cores = os.cpu_count() or 1
    if requested != "auto":
        return _count_or_auto("--threads", requested), "--threads"
    busy, why = busy_cores()
    return (1 if busy >= cores - 0.5 else cores), f"auto, {why}"


def _workers(requested: str, device: str, threads: int) -> int:
    """Processes of the classical, prior and root-CRLB points: a number, or ``auto``: one per torch thread of the
    run on a CPU, one on a GPU (:func:`cfisac.experiments.workers.auto_workers`)."""
    from ..experiments.workers import auto_workers

    if requested == "auto":
        return auto_workers(device, threads)
    return _count_or_auto("--workers", requested)


def _count_or_auto(option: str, requested: str) -> int:
    """The positive integer of ``option`` (its value is not ``auto``); a ``ValueError`` naming it otherwise."""
    try:
        n = int(requested)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{option} must be a positive integer or 'auto', got {requested!r}")
    return n


def check_schemes(text: str) -> list[str]:
    """The comma-separated ``--schemes``: each one ``prior``, ``crlb``, a registered classical estimator
    (:func:`cfisac.estimators.available`) or a learned ``dvqvae`` / ``dvae`` / ``cnn`` with an optional registered
    ``-<front end>`` and ``-<decoder>`` (:meth:`cfisac.experiments.scheme.Scheme.parse`); a ``ValueError`` naming
    the first unknown one."""
    from ..experiments.scheme import Scheme

    wanted = [s.strip() for s in text.split(",") if s.strip()]
    if not wanted:
        raise ValueError(f"--schemes lists no scheme: {text!r}")
    for s in wanted:
        try:
            Scheme.parse(s)
        except ValueError as err:
            raise ValueError(f"--schemes: {s!r}: {err}") from None
    return wanted


def check_arguments(args: argparse.Namespace) -> None:
    """Every global option of ``cfisac reproduce``, before any work (one-line ``ValueError`` s)."""
    from ._checks import check_device, check_finite, check_positive_int

    if args.report_only and args.no_report:
        raise ValueError("--report-only and --no-report contradict each other (choose one)")
    check_positive_int("--seed", args.seed, allow_none=False, minimum=0)
    check_positive_int("--point", args.point, minimum=0)
    check_positive_int("--n-test", args.n_test)
    check_positive_int("--blas-threads", args.blas_threads, allow_none=False)
    check_finite("--train-seconds", args.train_seconds, minimum=0.0, strict=True)
    check_finite("--scheme-seconds", args.scheme_seconds, minimum=0.0)
    check_device("--device", args.device)
    _workers(args.workers, "cpu", (os.cpu_count() or 1) if args.threads == "auto" else _threads(args.threads)[0])
    if args.schemes is not None:
        check_schemes(args.schemes)


def run(args: argparse.Namespace) -> int:
    from ..experiments import get, make_context, run_experiment, write_report
    from ..experiments.report import format_summary
    from ..experiments.store import SweepInterrupted

    names = _experiments(args.experiments)
    if args.point is not None and len(names) != 1:
        raise ValueError("--point needs exactly one experiment (e.g. `cfisac reproduce fig6 --point 3`)")
    check_arguments(args)
    overrides = {}
    if args.n_test is not None:
        overrides["n_test"] = args.n_test
    if args.train_seconds is not None:
        overrides["train_seconds"] = {"*": float(args.train_seconds)}
    if args.scheme_seconds is not None:
        overrides["scheme_seconds"] = float(args.scheme_seconds) if args.scheme_seconds > 0 else None
    if args.schemes is not None:
        from ..experiments.scheme import is_learned

        wanted = check_schemes(args.schemes)
        overrides["classical"] = tuple(s for s in wanted if not is_learned(s) and s not in ("prior", "crlb"))
        overrides["learned"] = tuple(s for s in wanted if is_learned(s))
    device = args.device or ("cuda" if torch.cuda.is_available() and args.preset == "paper" else "cpu")
    ctx = make_context(args.preset, root=args.out, seed=args.seed, device=device, force=args.force, **overrides)
    if args.point is not None:
        n_points = len(get(names[0]).points(ctx))
        if args.point >= n_points:
            raise ValueError(f"--point {args.point} out of range: {names[0]} has {n_points} points "
                             f"(0..{n_points - 1}); list them with --list-points")
    if not args.list_points:
        from ._checks import check_output_dir

        check_output_dir("--out", ctx.root)
    ctx.force_training = args.retrain
    ctx.progress = not args.no_progress
    threads, why = _threads(args.threads)
    torch.set_num_threads(threads)
    limit_blas_threads(args.blas_threads)
    ctx.workers = _workers(args.workers, device, threads)
    ctx.worker_threads = max(1, threads // ctx.workers)
    if args.list_points:
        for name in names:
            for k, p in enumerate(get(name).points(ctx)):
                print(f"{name} {k} {p.key}")
        return 0
    t0 = time.perf_counter()
    failed = 0
    if not args.report_only:
        ctx.log(f"cfisac reproduce {' '.join(names)} --preset {args.preset} -> {ctx.root} (device {device}, "
                f"{torch.get_num_threads()} torch threads: {why}; {args.blas_threads} BLAS thread(s); classical, "
                f"prior and root-CRLB points in {ctx.workers} process(es) of {ctx.worker_threads} thread(s))")
        for name in names:
            only = [args.point] if args.point is not None else None
            try:
                counts = run_experiment(name, ctx, only=only, fail_fast=args.fail_fast)
            except SweepInterrupted as err:  # --fail-fast: stop here, still write the report of what is stored
                failed += 1
                ctx.log(f"{name}: stopped at the first failing point (--fail-fast): {err}")
                break
            failed += counts["failed"]
            ctx.log(f"{name}: {counts['done']} computed, {counts['skipped']} already done, {counts['failed']} failed "
                    f"({time.perf_counter() - t0:.0f} s so far)")
    if args.report_only or (args.point is None and not args.no_report):
        cmd = "cfisac reproduce " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == [
            "reproduce"] else f"cfisac reproduce {' '.join(args.experiments)} --preset {args.preset}"
        path = write_report(ctx, None if args.report_only else names, commands=[cmd])
        ctx.log(f"report: {path} and {path.with_suffix('.html')}")
    if args.point is None:
        print(format_summary(ctx), flush=True)
    ctx.log(f"done in {time.perf_counter() - t0:.0f} s" + (f"; {failed} point(s) failed or unavailable "
                                                             "(see the report)" if failed else ""))
    if failed:
        print(f"cfisac reproduce: {failed} point(s) failed or unavailable (exit status 1)", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run the experiments of Section V (resumable) and write the report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                   help="demo (default) | all | fig6 fig7 fig8 fig9 fig10 fig11 fig12 fig13 fig14 table3 fronthaul")
    p.add_argument("--preset", default="quick", help="tiny | quick | paper (default: quick)")
    p.add_argument("--out", type=Path, help="output directory (default: reports/<preset>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--point", type=int, help="run only point K of the (single) experiment's sweep")
    p.add_argument("--list-points", action="store_true", help="list the sweep's points and exit")
    p.add_argument("--force", action="store_true", help="recompute finished points")
    p.add_argument("--retrain", action="store_true", help="retrain learned models even when trained before")
    p.add_argument("--report-only", action="store_true", help="only collect the stored points into the report")
    p.add_argument("--no-report", action="store_true", help="do not write the report")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing point")
    p.add_argument("--device", help="cpu | cuda (default: cuda for --preset paper when available)")
    p.add_argument("--threads", default="auto",
                   help="torch CPU threads, or auto (default): all cores, 1 when the machine is already loaded")
    p.add_argument("--workers", default="auto",
                   help="processes for the classical, prior and root-CRLB points (one torch thread each, or threads / "
                        "workers), or auto (default): one per torch thread on a CPU, 1 on a GPU")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OpenBLAS threads of numpy / scipy (default 1: the estimators' small products are fastest so)")
    p.add_argument("--n-test", type=int, help="override the number of test scenes per point")
    p.add_argument("--train-seconds", type=float, help="override the training budget of every learned model (s)")
    p.add_argument("--scheme-seconds", type=float,
                   help="wall-clock cap of a classical point's evaluation (s; 0: none, all its test scenes)")
    p.add_argument("--schemes", help="comma-separated schemes to evaluate (default: the preset's), e.g. music,dvqvae")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
