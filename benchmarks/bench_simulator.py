"""Simulator throughput (issue 2): scenes per second at the paper and quick presets.

Compares, in the same run and on the same scenes and transmit signals, the factorised Eq. (6) of
``cfisac.sensing`` with a straightforward einsum implementation that forms G_{i,n,m}[t] (chunked over subcarriers
so that it fits in memory) and multiplies it with x. Also times the whole sample (scene, precoding, x, y + noise).

    .venv/bin/python benchmarks/bench_simulator.py [--presets paper quick] [--batch 4]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import resource
import time

import torch

import cfisac
from cfisac.geometry import bistatic_geometry, steering_vectors
from cfisac.sensing import sensing_indices


def einsum_reference(cfg: cfisac.SystemConfig, scenes: cfisac.Scene, x: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Eq. (6) noiseless, literally: G_{i,n,m}[t] = sum_q A e^{-j phi} a_r a_t^H, then y = sum_n G x."""
    geo = bistatic_geometry(cfg, scenes.positions, scenes.velocities)
    a_t = steering_vectors(geo.tx.cos_angle, cfg.n_tx_antennas, cfg.antenna_spacing, x.dtype)  # [B,N,Q,Nt]
    a_r = steering_vectors(geo.rx.cos_angle, cfg.n_rx_antennas, cfg.antenna_spacing, x.dtype)  # [B,M,Q,Mr]
    pl = cfg.pathloss_ref * (geo.bistatic_range / cfg.reference_distance) ** (-cfg.pathloss_exponent)
    amp = (scenes.reflection * pl.sqrt()).to(x.dtype)  # [B,N,M,Q]
    i_idx, t_idx = sensing_indices(cfg)
    y = torch.zeros(x.shape[0], cfg.n_rx, cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols, dtype=x.dtype)
    for lo in range(0, cfg.n_subcarriers, chunk):
        i = i_idx[lo:lo + chunk]
        phi = 2 * math.pi * (geo.delay[..., None, None] * i[:, None] * cfg.subcarrier_spacing
                             - geo.doppler[..., None, None] * t_idx * cfg.symbol_duration)  # [B,N,M,Q,i,t]
        ph = torch.polar(torch.ones_like(phi), -phi).to(x.dtype)
        G = torch.einsum("bnmq,bnmqit,bmqr,bnqk->bnmitrk", amp, ph, a_r, a_t.conj())
        y[:, :, :, lo:lo + chunk] = torch.einsum("bnmitrk,bnkit->bmrit", G, x[:, :, :, lo:lo + chunk])
    return y


def timed(fn, reps: int) -> tuple[float, object]:
    fn()  # warm-up
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["paper", "quick"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/simulator.md")
    args = ap.parse_args()
    rows = []
    for name in args.presets:
        cfg = cfisac.SystemConfig.preset(name)
        B = args.batch
        scenes = cfisac.sample_scenes(cfg, B, seed=0)
        x = cfisac.transmit_signals(cfg, scenes, seed=0)
        t_ours, y = timed(lambda: cfisac.noiseless_echoes(cfg, scenes, x), args.reps)  # noqa: B023
        t_ref, y_ref = timed(lambda: einsum_reference(cfg, scenes, x), max(1, args.reps - 1))  # noqa: B023
        err = float((y - y_ref).abs().max() / y_ref.abs().max())

        def full():
            sc = cfisac.sample_scenes(cfg, B, seed=1)  # noqa: B023
            xx = cfisac.transmit_signals(cfg, sc, seed=1)  # noqa: B023
            return cfisac.sensing_echoes(cfg, sc, xx, seed=1)  # noqa: B023

        t_full, _ = timed(full, args.reps)
        rows.append((name, B, t_ours / B, t_ref / B, t_ref / t_ours, t_full / B, B / t_full, err))
        print(rows[-1], flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        "# Simulator throughput",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_simulator.py --presets {' '.join(args.presets)} "
        f"--batch {args.batch}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; date {datetime.date.today()}; "
        f"load average at the end {os.getloadavg()[0]:.2f} (other jobs may have shared the cores).  ",
        f"Peak resident memory of the run: {rss:.0f} MiB.",
        "",
        "| preset | batch | ours, noiseless Eq. (6) (s/scene) | einsum reference (s/scene) | speed-up | "
        "full sample incl. precoding + noise (s/scene) | scenes/s | max rel. diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]:.4f} | {r[3]:.4f} | {r[4]:.1f}x | {r[5]:.4f} | {r[6]:.1f} | "
                     f"{r[7]:.1e} |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
