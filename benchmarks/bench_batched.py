"""Old (scene-at-a-time) vs new (batched) estimators and AP front ends: seconds per scene, peak memory, accuracy.

    .venv/bin/python benchmarks/bench_batched.py                                  # timing, quick + paper
    .venv/bin/python benchmarks/bench_batched.py --presets quick --accuracy 50    # + RMSE old vs new, 50 scenes
    .venv/bin/python benchmarks/bench_batched.py --device cuda --presets paper    # on a GPU

The old path is the code at ``--old-rev`` (default: the last commit before the batched estimators), checked out
into a temporary git worktree and imported from there; the new path is this working tree. Every measurement runs
in its own process (``--child``), so its peak resident memory (``ru_maxrss``) is its own; on CUDA the peak
allocated device memory is reported too. The test scenes are simulated once by the parent and loaded by every
child (same scenes for both paths). A warm-up call on one scene precedes each timed call (unless ``--no-warmup``).

Estimators: ``seconds / scene`` of one call on ``B`` scenes (``--batches`` for the new path; the old path loops over
scenes, so ``--old-batches`` small batches give its per-scene cost). Front ends: seconds per scene and receive AP
of one forward call of AP 0's front end on ``B`` scenes. Accuracy (``--accuracy N``): position / velocity RMSE with
95 % bootstrap intervals of both paths on the same N quick scenes at ``--power-dbm``, and the relative difference.
Writes ``--out`` (markdown) with the command, machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OLD_REV = "3435591"
ESTIMATORS = ("music", "cs", "monostatic", "ml")
FRONT_ENDS = ("matched", "image", "velocity-image", "covariance")


# ---------------------------------------------------------------------------------------------------- child
def _config(preset: str, scheme: str, power: float):
    import cfisac
    from cfisac.experiments.common import monostatic_config

    cfg = cfisac.SystemConfig.preset(preset).replace(power_dbm=power)
    return monostatic_config(cfg) if scheme == "monostatic" else cfg


def _child(spec: dict) -> dict:
    import torch

    import cfisac

    torch.set_num_threads(spec["threads"])
    data = torch.load(spec["data"])
    y, x = data["y"][: spec["batch"]], data["x"][: spec["batch"]]
    cfg = _config(spec["preset"], spec["scheme"], spec["power"])
    dev = torch.device(spec["device"])
    y, x = y.to(dev), x.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if spec["kind"] == "front_end":
        from cfisac.models.front_ends import make_front_end

        fe = make_front_end(spec["scheme"], cfg, ap_index=0).to(dev)
        run = (lambda yy, xx: fe(yy[:, 0], xx if fe.needs_x else None))
    else:
        # the same registry name in both trees: the old tree's estimators know no device option
        run = cfisac.estimators.create(spec["scheme"], cfg, **({} if spec["old"] else {"device": dev}))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        if spec.get("warmup", True):
            run(y[:1], x[:1])  # warm-up
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = run(y, x)
        sync()
        sec = time.perf_counter() - t
    res = {"seconds_per_scene": sec / y.shape[0], "peak_rss_gib": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 2**20, "rss_before_gib": rss0 / 2**20}
    if dev.type == "cuda":
        res["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if spec.get("save"):
        torch.save({"positions": out.positions, "velocities": out.velocities}, spec["save"])
    return res


# ---------------------------------------------------------------------------------------------------- parent
def _worktree(rev: str) -> Path:
    path = Path(tempfile.gettempdir()) / f"cfisac-old-{rev}"
    if not (path / "src" / "cfisac").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev], check=True,
                       capture_output=True)
    return path


def _simulate(preset: str, scheme: str, power: float, n: int, seed: int, cache: Path) -> Path:
    import torch

    import cfisac

    path = cache / f"{preset}-{scheme == 'monostatic'}-{power:g}-{seed}-{n}.pt"
    if not path.exists():
        cfg = _config(preset, scheme, power)
        scenes = cfisac.sample_scenes(cfg, batch_size=n, seed=seed)
        x = cfisac.transmit_signals(cfg, scenes, seed=seed)
        y = cfisac.sensing_echoes(cfg, scenes, x, noise=True, seed=seed)
        torch.save({"y": y, "x": x, "positions": scenes.positions, "velocities": scenes.velocities}, path)
    return path


def _run_child(spec: dict, src: Path, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(spec["threads"]),
               OPENBLAS_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(res: dict, key: str, scale: float = 1.0, digits: int = 4) -> str:
    if "error" in res:
        return f"({res['error']})"
    return f"{res[key] * scale:.{digits}g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="*", default=["quick", "paper"])
    p.add_argument("--schemes", nargs="+", default=list(ESTIMATORS))
    p.add_argument("--front-ends", nargs="*", default=list(FRONT_ENDS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--old-batches", nargs="+", type=int, default=[1, 4])
    p.add_argument("--paper-batches", nargs="+", type=int, default=None, help="new-path batches at paper")
    p.add_argument("--paper-old-batches", nargs="+", type=int, default=[1])
    p.add_argument("--power-dbm", type=float, default=55.0)
    p.add_argument("--accuracy", type=int, default=0, help="scenes of the RMSE comparison (0: none)")
    p.add_argument("--accuracy-preset", default="quick")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--old-rev", default=OLD_REV)
    p.add_argument("--no-old", action="store_true", help="time only the new path")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement")
    p.add_argument("--no-warmup", action="store_true", help="no warm-up call (for slow paper-preset runs)")
    p.add_argument("--out", default=str(HERE / "results" / "batched.md"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(_child(json.loads(args.child))))
        return

    sys.path.insert(0, str(HERE))
    import torch

    from machine import header

    old_src = None if args.no_old else _worktree(args.old_rev) / "src"
    new_src = ROOT / "src"
    cache = Path(tempfile.gettempdir()) / "cfisac-bench-batched"
    cache.mkdir(exist_ok=True)
    lines = [header("Batched vs scene-at-a-time estimators and front ends", threads=args.threads), "",
             f"Old path: commit `{args.old_rev}` (scene-at-a-time); new path: this tree. Noisy scenes at "
             f"{args.power_dbm:g} dBm, seed {args.seed}, device `{args.device}`, {args.threads} thread(s) per process."]
    for preset in args.presets:
        batches = args.paper_batches if preset == "paper" and args.paper_batches else args.batches
        old_batches = args.paper_old_batches if preset == "paper" else args.old_batches
        lines += ["", f"## `{preset}`: estimators, seconds per scene (peak RSS GiB)", "",
                  "| scheme | " + " | ".join([f"old B={b}" for b in old_batches] * (old_src is not None)
                                             + [f"new B={b}" for b in batches]) + " |",
                  "|---" * (1 + len(batches) + len(old_batches) * (old_src is not None)) + "|"]
        for scheme in args.schemes:
            data = _simulate(preset, scheme, args.power_dbm, max(batches + old_batches), args.seed, cache)
            cells = []
            runs = ([(True, b) for b in old_batches] if old_src is not None else []) + [(False, b) for b in batches]
            for old, b in runs:
                spec = dict(kind="estimator", preset=preset, scheme=scheme, batch=b, old=old, device=args.device,
                            threads=args.threads, power=args.power_dbm, data=str(data), warmup=not args.no_warmup)
                res = _run_child(spec, old_src if old else new_src, args.timeout)
                cells.append(_fmt(res, "seconds_per_scene") if "error" in res else
                             f"{_fmt(res, 'seconds_per_scene')} ({_fmt(res, 'peak_rss_gib', digits=3)})"
                             + (f" [cuda {res['peak_cuda_gib']:.2f}]" if "peak_cuda_gib" in res else ""))
                print(preset, scheme, "old" if old else "new", b, res, flush=True)
            lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
        lines += ["", f"## `{preset}`: AP front ends, milliseconds per scene and AP (peak RSS GiB)", "",
                  "| front end | " + " | ".join([f"old B={b}" for b in batches] * (old_src is not None)
                                                + [f"new B={b}" for b in batches]) + " |",
                  "|---" * (1 + len(batches) * (1 + (old_src is not None))) + "|"]
        data = _simulate(preset, "fe", args.power_dbm, max(batches + old_batches), args.seed, cache)
        for fe in args.front_ends:
            cells = []
            for old in ([True] if old_src is not None else []) + [False]:
                for b in batches:
                    spec = dict(kind="front_end", preset=preset, scheme=fe, batch=b, old=old, device=args.device,
                                threads=args.threads, power=args.power_dbm, data=str(data))
                    res = _run_child(spec, old_src if old else new_src, args.timeout)
                    cells.append(_fmt(res, "seconds_per_scene") if "error" in res else
                                 f"{_fmt(res, 'seconds_per_scene', 1e3)} ({_fmt(res, 'peak_rss_gib', digits=3)})")
                    print(preset, fe, "old" if old else "new", b, res, flush=True)
            lines.append(f"| {fe} | " + " | ".join(cells) + " |")
    if args.accuracy and old_src is not None:
        from cfisac.metrics import accuracy, rmse_confidence_interval

        n = args.accuracy
        ap = args.accuracy_preset
        lines += ["", f"## Accuracy, `{ap}`, {n} scenes at {args.power_dbm:g} dBm (same scenes, both paths)", "",
                  "| scheme | old position RMSE (m) [95 %] | new | rel. diff | old velocity RMSE (m/s) [95 %] | new "
                  "| rel. diff |", "|---|---|---|---|---|---|---|"]
        for scheme in args.schemes:
            data = _simulate(ap, scheme, args.power_dbm, n, args.seed, cache)
            truth = torch.load(data)
            cols = []
            for old in (True, False):
                save = cache / f"est-{ap}-{scheme}-{old}-{n}.pt"
                spec = dict(kind="estimator", preset=ap, scheme=scheme, batch=n, old=old, device=args.device,
                            threads=args.threads, power=args.power_dbm, data=str(data), save=str(save))
                res = _run_child(spec, old_src if old else new_src, args.timeout)
                print("accuracy", scheme, "old" if old else "new", res, flush=True)
                if "error" in res:
                    cols.append(None)
                    continue
                est = torch.load(save)
                cols.append(accuracy(est["positions"], est["velocities"], truth["positions"], truth["velocities"]))
            cells = []
            for kind in ("position", "velocity"):
                vals = []
                for rep in cols:
                    if rep is None:
                        vals.append("(failed)")
                        continue
                    err = getattr(rep, f"{kind}_errors")
                    lo, hi = rmse_confidence_interval(err)
                    vals.append(f"{float(err.pow(2).mean().sqrt()):.4g} [{lo:.3g}-{hi:.3g}]")
                if None not in cols:
                    a, b = (float(getattr(r, f"{kind}_errors").pow(2).mean().sqrt()) for r in cols)
                    vals.append(f"{(b - a) / a * 100:+.2f} %" if a == a and a > 0 else "–")
                else:
                    vals.append("–")
                cells += vals
            lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
