"""Benchmark of the geometry-aware CPU decoder (``ModelConfig(decoder="geometry")``) against the ML estimator.

Two modes:

``--prepare``: the ``image`` front-end outputs of both receive APs for training scenes (dataset seed
``--train-seed``, indices 0..n-1) and the held-out test scenes (seed ``--test-seed``, indices 0..n_test-1, the 500
scenes of ``benchmarks/results/front_ends.md``), float16 memory maps [n, M, C, Gx, Gy, D3] under ``--feature-dir``,
written chunk by chunk with a progress file (a partial training cache is usable while it grows). One torch thread.

``--train``: Algorithm 1 on the cached features (each AP's front end replaced by the identity), the geometry
decoder's heat-map / offset / bistatic-velocity loss (:func:`cfisac.models.geometry_decoder.geometry_loss`) plus the
commitment losses, for ``--minutes`` of training-step wall clock; the test RMSE is measured through Algorithm 2 (the
bit-packed index messages decoded at the CPU), Hungarian-assigned, on the test scenes.

    .venv/bin/python benchmarks/bench_geometry_decoder.py --prepare --n-train 8192
    .venv/bin/python benchmarks/bench_geometry_decoder.py --train --minutes 10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cfisac
from cfisac.data import simulate_batch
from cfisac.models.front_ends import create_front_end


def _config(args: argparse.Namespace) -> cfisac.SystemConfig:
    return cfisac.SystemConfig.preset(args.preset, power_dbm=args.power_dbm)


def _feature_path(args: argparse.Namespace, split: str, seed: int, n: int) -> Path:
    return args.feature_dir / f"{args.preset}-P{args.power_dbm:g}" / f"image-{split}-seed{seed}-n{n}.f16.npy"


def prepare(args: argparse.Namespace, split: str, seed: int, n: int, chunk: int = 32) -> None:
    """Front-end outputs of scenes 0..n-1 of dataset ``seed`` into a float16 memory map (resumable)."""
    cfg = _config(args)
    fes = [create_front_end("image", cfg, norm="noise", ap_index=m) for m in range(cfg.n_rx)]
    path = _feature_path(args, split, seed, n)
    prog = path.with_suffix(".progress.json")
    shape = (n, cfg.n_rx, *fes[0].output_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(prog.read_text())["done"] if prog.exists() else 0
    mm = np.lib.format.open_memmap(path, mode="r+" if path.exists() else "w+", dtype=np.float16, shape=shape)
    t0 = time.time()
    for lo in range(done, n, chunk):
        b = simulate_batch(cfg, seed, range(lo, min(n, lo + chunk)))
        with torch.no_grad():
            for m, fe in enumerate(fes):
                mm[lo:lo + len(b["y"]), m] = fe(b["y"][:, m], b["x"]).numpy().astype(np.float16)
        mm.flush()
        done = lo + len(b["y"])
        prog.write_text(json.dumps({"done": done, "n": n, "seconds_per_scene": (time.time() - t0) / max(1, done)}))
        if (lo // chunk) % 16 == 0:
            print(f"[prepare {split}] {done}/{n} ({time.time() - t0:.0f} s, load {os.getloadavg()[0]:.2f})",
                  flush=True)


def _load(args: argparse.Namespace, split: str, seed: int, n: int) -> tuple[torch.Tensor, int]:
    """The completed rows of a feature cache (float16 tensor in memory) and their count."""
    path = _feature_path(args, split, seed, n)
    done = json.loads(path.with_suffix(".progress.json").read_text())["done"]
    mm = np.load(path, mmap_mode="r")
    return torch.from_numpy(np.array(mm[:done])), done


def _scenes(cfg: cfisac.SystemConfig, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = cfisac.sample_scenes(cfg, n, seed)
    return s.positions, s.velocities


def diagnose(model: Any, feats: torch.Tensor, positions: torch.Tensor, velocities: torch.Tensor, *,
             chunk: int = 100) -> dict[str, Any]:
    """Algorithm 2 on cached test features: every AP's bit-packed index messages decoded at the CPU; the RMSE
    (Hungarian-assigned, with 95 % bootstrap intervals), the share of targets missed (error > 10 m), the RMSE over
    the detected ones, and the velocity RMSE of the least squares read at the true positions (velocity quality
    without position errors)."""
    from cfisac.metrics import accuracy, rmse_confidence_interval
    from cfisac.models.geometry_decoder import _pixel_of

    dec = model.cpu_side.decoder
    model.sync_codebooks()
    model.eval()
    P, V, VT = [], [], []
    with torch.no_grad():
        for lo in range(0, len(feats), chunk):
            f = feats[lo:lo + chunk].float()
            messages = [ap.encode(f[:, m]) for m, ap in enumerate(model.aps)]
            payloads = model.cpu_side.payloads_from_messages(messages)
            maps = dec.maps(payloads)
            p, v = dec.readout(maps)
            P.append(p)
            V.append(v)
            tp = positions[lo:lo + chunk].to(dec.pixel_x.dtype)
            i, j = _pixel_of(tp, dec.pixel_x, dec.pixel_y)
            VT.append(dec.velocity_at(maps, i * dec.map_shape[1] + j, tp))
    model.train()
    acc = accuracy(torch.cat(P), torch.cat(V), positions, velocities)
    pe, ve = acc.position_errors, acc.velocity_errors
    det = pe <= 10.0
    vt = torch.linalg.vector_norm(torch.cat(VT) - velocities, dim=-1)
    return {"position_rmse": acc.position_rmse, "velocity_rmse": acc.velocity_rmse,
            "position_ci95": rmse_confidence_interval(pe), "velocity_ci95": rmse_confidence_interval(ve),
            "missed_share": float((~det).double().mean()),
            "position_rmse_detected": float(pe[det].pow(2).mean().sqrt()) if det.any() else float("nan"),
            "velocity_rmse_detected": float(ve[det].pow(2).mean().sqrt()) if det.any() else float("nan"),
            "position_median": float(pe.median()), "velocity_median": float(ve.median()),
            "velocity_rmse_at_true_positions": float(vt.pow(2).mean().sqrt())}


def _mirror_half(cfg: cfisac.SystemConfig, dec: Any, feats: torch.Tensor, psi: torch.Tensor,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmentation by the layout's mirror symmetry x -> x0 + x1 - x (``--mirror``): for a random half of the batch
    the ``image`` features [B, M, N, Gx, Gy, D3] of the mirrored scene are those of the scene with the x pixels
    reversed and both the receive and the transmit APs in reverse order (the mirror maps AP k to AP K-1-k; a
    bistatic velocity u . v is unchanged, so the Doppler axis stays), and its labels have x -> x0 + x1 - x and
    v_x -> -v_x. Returns the features and the normalised targets [B, 4Q]."""
    (x0, x1), _ = cfg.area

    def mirrored(aps: tuple) -> tuple:
        return tuple((x0 + x1 - x, y) for x, y in aps[::-1])

    if mirrored(cfg.tx_positions) != tuple(cfg.tx_positions) or mirrored(cfg.rx_positions) != tuple(cfg.rx_positions):
        raise ValueError("--mirror needs AP layouts symmetric under x -> x0 + x1 - x")
    flip = torch.rand(feats.shape[0], generator=gen) < 0.5
    feats = feats.clone()
    feats[flip] = feats[flip].flip(1, 2, 3)  # receive APs, transmit APs and x pixels reversed
    Q = cfg.n_targets
    psi = psi.clone()
    pos, vel = psi[:, :2 * Q].view(-1, Q, 2), psi[:, 2 * Q:].view(-1, Q, 2)
    pos[flip, :, 0] = x0 + x1 - pos[flip, :, 0]
    vel[flip, :, 0] = -vel[flip, :, 0]
    return feats, dec.normalise(psi)


def train_cached(args: argparse.Namespace) -> dict[str, Any]:
    """Train on the cached features for ``--minutes`` of step time; returns the result row."""
    from cfisac.models import ModelConfig, build_model
    from cfisac.models.geometry_decoder import GeometryCpuTrainer
    from cfisac.train import ApTrainer, epoch_batches, train_step

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_front_ends import CachedFrontEnd

    cfg = _config(args)
    load0 = os.getloadavg()
    tr, n_train = _load(args, "train", args.train_seed, args.n_train)
    te, n_test = _load(args, "test", args.test_seed, args.n_test)
    if args.train_limit:
        tr, n_train = tr[:args.train_limit], min(n_train, args.train_limit)
    tr_pos, tr_vel = _scenes(cfg, args.train_seed, n_train)
    te_pos, te_vel = _scenes(cfg, args.test_seed, n_test)
    mcfg = ModelConfig.preset(args.model_preset, **{
        **dict(front_end="image", input_norm="noise", decoder="geometry", decoder_options=args.decoder_options or {},
               kmeans_init=True, dead_code_threshold=1.0), **(args.model_options or {})})
    torch.manual_seed(args.seed)
    model = build_model(args.kind, cfg, mcfg, seed=args.seed)
    for ap in model.aps:
        ap.front_end = CachedFrontEnd()
    dec = model.cpu_side.decoder
    Q = cfg.n_targets
    psi = torch.cat([tr_pos.reshape(n_train, -1), tr_vel.reshape(n_train, -1)], 1)
    target_all = dec.normalise(psi)
    aps = [ApTrainer(ap, lr=args.lr) for ap in model.aps]
    cpu = GeometryCpuTrainer(model.cpu_side, lr=args.lr)
    optimizers = [t.optimizer for t in (*aps, cpu) if t.optimizer is not None]
    budget, trained, step, epoch, curve, next_eval = args.minutes * 60.0, 0.0, 0, 0, [], 0.0
    cpu0, train_cpu = time.process_time(), 0.0  # train_cpu: CPU seconds of the training steps alone
    losses: list[dict[str, float]] = []
    max_steps = args.max_steps or math.inf
    while trained < budget and step < max_steps:
        for idx in epoch_batches(args.seed, epoch, n_train, args.batch_size):
            if args.lr_schedule == "cosine":  # over the time or the step budget, whichever is nearer its end
                progress = min(1.0, max(trained / budget, step / max_steps))
                for opt in optimizers:
                    for group in opt.param_groups:
                        group["lr"] = 0.5 * args.lr * (1 + math.cos(math.pi * progress))
            t1, c1 = time.time(), time.process_time()
            idx = torch.as_tensor(idx)
            feats, target = tr[idx].float(), target_all[idx]
            if args.mirror:
                feats, target = _mirror_half(cfg, dec, feats, psi[idx], torch.Generator().manual_seed(step))
            st = train_step(aps, cpu, feats, None, target)
            step += 1
            trained += time.time() - t1
            train_cpu += time.process_time() - c1
            losses.append({**cpu.last, "commitment": st["commitment"]})
            done = trained >= budget or step >= max_steps
            if trained >= next_eval or done:
                d = diagnose(model, te[:args.eval_scenes], te_pos[:args.eval_scenes], te_vel[:args.eval_scenes])
                tail = losses[-20:]
                mean = {k: sum(r[k] for r in tail) / len(tail) for k in tail[0]}
                curve.append({"train_s": round(trained, 1), "train_cpu_s": round(train_cpu, 1), "steps": step,
                              "epoch": epoch,
                              "train_loss": mean, **{k: d[k] for k in ("position_rmse", "velocity_rmse",
                                                                        "missed_share",
                                                                        "velocity_rmse_at_true_positions")}})
                print(f"[geometry] {trained:.0f} s, step {step}, epoch {epoch}: loss {mean['loss']:.3f} (heat "
                      f"{mean['heat']:.3f}, offset {mean['offset']:.3f}, bistatic {mean['bistatic']:.3f}, velocity "
                      f"{mean['velocity']:.3f}); test-{args.eval_scenes} RMSE {d['position_rmse']:.2f} m / "
                      f"{d['velocity_rmse']:.2f} m/s, missed {100 * d['missed_share']:.1f} %, velocity at true "
                      f"positions {d['velocity_rmse_at_true_positions']:.2f} m/s; load {os.getloadavg()[0]:.2f}",
                      flush=True)
                next_eval = trained + args.eval_every
            if done:
                break
        epoch += 1
    cpu_s = time.process_time() - cpu0
    final = diagnose(model, te, te_pos, te_vel)
    print(f"[geometry] test-{n_test}: {json.dumps(final)}", flush=True)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": mcfg.to_dict(), "state": model.state_dict()}, args.save)
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
            "threads": torch.get_num_threads(), "command": " ".join(sys.argv), "load_start": load0,
            "load_end": os.getloadavg(), "preset": args.preset, "power_dbm": args.power_dbm, "n_train": n_train,
            "n_test": n_test, "test_seed": args.test_seed, "kind": args.kind, "model": mcfg.to_dict(),
            "max_steps": args.max_steps, "lr": args.lr,
            "lr_schedule": args.lr_schedule, "batch_size": args.batch_size, "minutes": args.minutes,
            "steps": step, "epochs": epoch, "train_wall_s": trained, "process_cpu_s": cpu_s,
            "train_cpu_s": train_cpu,
            "fronthaul_bits_per_ap": model.fronthaul_bits_per_ap, "test": final, "curve": curve, "Q": Q}


def smoke_paper(args: argparse.Namespace) -> dict[str, Any]:
    """One Algorithm 1 step of the D-VQVAE with the geometry decoder at the ``paper`` presets, batch 1, on this
    machine: the ``image`` front end's output shape [M, 2, 64, 64, 256] filled with seeded noise (the front end is
    a fixed transform, tested elsewhere; it is skipped here to keep the check short), then Algorithm 2 (messages ->
    psi). Reports shapes, fronthaul bits, seconds and the peak resident memory."""
    import resource

    from cfisac.models import ModelConfig, build_model
    from cfisac.models.geometry_decoder import GeometryCpuTrainer
    from cfisac.train import ApTrainer, train_step

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_front_ends import CachedFrontEnd

    cfg = cfisac.SystemConfig.preset("paper")
    mcfg = ModelConfig.preset("paper", front_end="image", input_norm="noise", decoder="geometry",
                              decoder_options=args.decoder_options or {})
    model = build_model("dvqvae", cfg, mcfg, seed=0)
    shape = model.aps[0].front_end.output_shape
    for ap in model.aps:
        ap.front_end = CachedFrontEnd()
    gen = torch.Generator().manual_seed(0)
    feats = torch.rand(1, cfg.n_rx, *shape, generator=gen)
    dec = model.cpu_side.decoder
    s = cfisac.sample_scenes(cfg, 1, 0)
    target = dec.normalise(torch.cat([s.positions.reshape(1, -1), s.velocities.reshape(1, -1)], 1))
    aps = [ApTrainer(ap, lr=1e-4) for ap in model.aps]
    cpu = GeometryCpuTrainer(model.cpu_side, lr=1e-4)
    t0 = time.time()
    st = train_step(aps, cpu, feats, None, target)
    step_s = time.time() - t0
    model.sync_codebooks()
    model.eval()
    with torch.no_grad():
        msgs = [ap.encode(feats[:, m]) for m, ap in enumerate(model.aps)]
        psi = model.decode(msgs, None)
    row = {"preset": "paper", "front_end_output_per_ap": list(shape), "payload": list(model.cpu_side.payload_shape),
           "map_shape": list(dec.map_shape), "decoder_parameters": sum(p.numel() for p in dec.parameters()),
           "fronthaul_bits_per_ap": model.fronthaul_bits_per_ap, "loss": st["loss"], "psi_shape": list(psi.shape),
           "finite": bool(torch.isfinite(psi).all()), "step_seconds": step_s,
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "load": os.getloadavg()}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare", action="store_true")
    p.add_argument("--preset", default="quick")
    p.add_argument("--power-dbm", type=float, default=48.0)
    p.add_argument("--n-train", type=int, default=16384)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--test-seed", type=int, default=1)
    p.add_argument("--feature-dir", type=Path, default=Path("data/geometry_decoder"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train", action="store_true")
    p.add_argument("--train-limit", type=int, default=0, help="use at most this many cached training scenes")
    p.add_argument("--model-preset", default="quick")
    p.add_argument("--kind", default="dvqvae", choices=["dvqvae", "dvae"])
    p.add_argument("--decoder-options", type=json.loads, default=None, help="JSON GeometryOptions fields")
    p.add_argument("--model-options", type=json.loads, default=None,
                   help="JSON ModelConfig fields over the geometry defaults (e.g. encoder_layers / encoder_widths)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--max-steps", type=int, default=0, help="also stop after this many steps (0: no limit)")
    p.add_argument("--mirror", action="store_true", help="augment by the layout's mirror symmetry in x")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", default="cosine", choices=["constant", "cosine"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=float, default=60.0)
    p.add_argument("--eval-scenes", type=int, default=200)
    p.add_argument("--save", type=Path, default=None, help="write the trained model's state dict here")
    p.add_argument("--results", type=Path, default=Path("runs/geodec/results.jsonl"))
    p.add_argument("--smoke-paper", action="store_true", help="one step at the paper presets, batch 1")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke_paper:
        smoke_paper(args)
    if args.prepare:
        prepare(args, "test", args.test_seed, args.n_test)
        prepare(args, "train", args.train_seed, args.n_train)
    if args.train:
        row = train_cached(args)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
