"""CPU vs CUDA: every classical estimator and AP front end on the same scenes, on both devices, in one process.

    python3 benchmarks/cuda_equivalence.py --preset quick --scenes 32 --out cuda_quick.md

For each estimator (``music``, ``music-gated``, ``cs``, ``monostatic``, ``ml``, ``ml-joint``): the same noisy scenes
(simulated once on the CPU, seed ``--seed``, ``--power-dbm``) are estimated with ``device="cpu"`` and with
``device="cuda"``; the table holds the seconds per scene of both (CUDA after a one-scene warm-up, synchronised),
the peak allocated CUDA memory, the largest position / velocity difference between the two devices (after the
Hungarian assignment to the true targets), the number of scenes whose estimates differ by more than 1 mm, and the
position RMSE (95 % bootstrap interval) on each device. Front ends: the relative max difference of AP 0's output.
Without CUDA it exits with a message (nothing to compare). Writes ``--out`` (markdown) with the machine header.
MUSIC (complex64 by default) is rounding-sensitive scene by scene (``results/batched.md``, "MUSIC's refinement
numerics"): judge it by its RMSE columns; the other estimators compute in complex128 and should agree per scene.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ESTIMATORS = ("music", "music-gated", "cs", "monostatic", "ml", "ml-joint")
FRONT_ENDS = ("matched", "image", "velocity-image", "covariance")


def _scenes(cfg, n: int, seed: int):
    import cfisac

    scenes = cfisac.sample_scenes(cfg, batch_size=n, seed=seed)
    x = cfisac.transmit_signals(cfg, scenes, seed=seed)
    y = cfisac.sensing_echoes(cfg, scenes, x, noise=True, seed=seed)
    return scenes, y, x


def _timed(fn, sync=lambda: None):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--power-dbm", type=float, default=55.0)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--schemes", nargs="+", default=list(ESTIMATORS))
    p.add_argument("--front-ends", nargs="*", default=list(FRONT_ENDS))
    p.add_argument("--device", default="cuda", help="the device compared with the CPU")
    p.add_argument("--out", default=str(HERE / "results" / "cuda_equivalence.md"))
    args = p.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to compare")
        return 0

    import cfisac
    from cfisac.experiments.common import monostatic_config
    from cfisac.metrics import accuracy, rmse_confidence_interval
    from cfisac.models.front_ends import make_front_end
    from machine import header

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    base = cfisac.SystemConfig.preset(args.preset).replace(power_dbm=args.power_dbm)
    lines = [header(f"CPU vs {args.device}: the same estimators on the same scenes"), "",
             f"`{args.preset}` preset, {args.scenes} noisy scenes at {args.power_dbm:g} dBm, seed {args.seed}. "
             f"CPU: {torch.get_num_threads()} torch threads.", "",
             f"| scheme | CPU s/scene | {args.device} s/scene | peak {args.device} GiB | max position diff (m) | "
             "max velocity diff (m/s) | scenes differing > 1 mm | CPU position RMSE (m) [95 %] | "
             f"{args.device} position RMSE |", "|---" * 9 + "|"]
    ok = True
    for scheme in args.schemes:
        cfg = monostatic_config(base) if scheme == "monostatic" else base
        scenes, y, x = _scenes(cfg, args.scenes, args.seed)
        try:
            with torch.no_grad():
                cpu_est, t_cpu = _timed(lambda cfg=cfg, y=y, x=x, s=scheme: cfisac.estimators.create(
                    s, cfg, device="cpu")(y, x))
                gpu = cfisac.estimators.create(scheme, cfg, device=dev)
                yd, xd = y.to(dev), x.to(dev)
                gpu(yd[:1], xd[:1])
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                gpu_est, t_gpu = _timed(lambda gpu=gpu, yd=yd, xd=xd: gpu(yd, xd), sync)
        except Exception as exc:  # noqa: BLE001 - reported in the table, the other rows still run
            ok = False
            lines.append(f"| {scheme} | (failed: {type(exc).__name__}: {str(exc)[:200]}) |" + " |" * 7)
            print(scheme, "FAILED", repr(exc), flush=True)
            continue
        peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
        reps = [accuracy(e.positions.cpu(), e.velocities.cpu(), scenes.positions, scenes.velocities)
                for e in (cpu_est, gpu_est)]
        dp = (reps[0].position_errors - reps[1].position_errors).abs()
        dpos = (cpu_est.positions.cpu().double() - gpu_est.positions.cpu().double()).norm(dim=-1)
        dvel = (cpu_est.velocities.cpu().double() - gpu_est.velocities.cpu().double()).norm(dim=-1)
        finite = torch.isfinite(dvel)
        n_diff = int(((dpos > 1e-3) | (dp > 1e-3)).any(-1).sum())
        rm = []
        for r in reps:
            lo, hi = rmse_confidence_interval(r.position_errors)
            rm.append(f"{float(r.position_errors.pow(2).mean().sqrt()):.4g} [{lo:.3g}-{hi:.3g}]")
        lines.append(f"| {scheme} | {t_cpu / args.scenes:.4g} | {t_gpu / args.scenes:.4g} | {peak:.3f} | "
                     f"{float(dpos.max()):.3g} | {float(dvel[finite].max()) if finite.any() else float('nan'):.3g} | "
                     f"{n_diff} / {args.scenes} | {rm[0]} | {rm[1]} |")
        print(lines[-1], flush=True)
    if args.front_ends:
        lines += ["", f"Front ends, AP 0, {args.scenes} scenes: ms per scene and AP on each device, relative max "
                  "difference of the outputs.", "", f"| front end | CPU ms | {args.device} ms | rel. max diff |",
                  "|---|---|---|---|"]
        scenes, y, x = _scenes(base, args.scenes, args.seed)
        for name in args.front_ends:
            try:
                fe = make_front_end(name, base, ap_index=0)
                with torch.no_grad():
                    a, t_cpu = _timed(lambda fe=fe: fe(y[:, 0], x if fe.needs_x else None))
                    fe = fe.to(dev)
                    yd, xd = y[:, 0].to(dev), x.to(dev)
                    fe(yd[:1], xd[:1] if fe.needs_x else None)
                    b, t_gpu = _timed(lambda fe=fe, yd=yd, xd=xd: fe(yd, xd if fe.needs_x else None), sync)
            except Exception as exc:  # noqa: BLE001
                ok = False
                lines.append(f"| {name} | (failed: {type(exc).__name__}: {str(exc)[:200]}) | | |")
                print(name, "FAILED", repr(exc), flush=True)
                continue
            rel = float((a - b.cpu()).abs().max() / a.abs().max().clamp_min(1e-30))
            lines.append(f"| {name} | {t_cpu / args.scenes * 1e3:.4g} | {t_gpu / args.scenes * 1e3:.4g} | "
                         f"{rel:.2g} |")
            print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
