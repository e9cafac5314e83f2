"""Benchmark of :func:`cfisac.crlb.crlb` at the paper preset: seconds per scene, peak memory, and a chunked
forward-mode autograd reference (``torch.func.jacfwd`` over eta, accumulated over chunks of subcarriers).

Also tabulates the root-CRLB (averaged like the RMSE) at the ``paper`` and ``quick`` presets for several powers.
Writes ``benchmarks/results/crlb.md``.

    .venv/bin/python benchmarks/bench_crlb.py [--scenes 8] [--threads 2] [--table-scenes 20] [--no-autograd]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.func import jacfwd

import cfisac
from cfisac import SystemConfig
from cfisac.config import SPEED_OF_LIGHT
from cfisac.crlb import average_root_crlb, crlb, fisher_information
from cfisac.sensing import sensing_indices

RESULTS = Path(__file__).parent / "results" / "crlb.md"


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _reset_peak() -> None:
    """Reset the peak-RSS high-water mark (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def autograd_fim(cfg: SystemConfig, scenes: cfisac.Scene, x: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Reference FIM of Eq. (23) for one scene: jacfwd of a factorised rho(eta) per chunk of subcarriers."""
    N, M, Q = cfg.n_tx, cfg.n_rx, cfg.n_targets
    tx = torch.tensor(cfg.tx_positions, dtype=torch.float64)
    rx = torch.tensor(cfg.rx_positions, dtype=torch.float64)
    ut = torch.tensor(cfg.tx_axes, dtype=torch.float64)
    ur = torch.tensor(cfg.rx_axes, dtype=torch.float64)
    i_all, t = sensing_indices(cfg)
    kt = torch.arange(cfg.n_tx_antennas, dtype=torch.float64)
    kr = torch.arange(cfg.n_rx_antennas, dtype=torch.float64)
    beta0 = scenes.reflection[0]
    eta0 = torch.cat([scenes.positions[0].reshape(-1), scenes.velocities[0].reshape(-1), beta0.real.reshape(-1),
                      beta0.imag.reshape(-1)])
    nb = N * M * Q

    def rho(eta: torch.Tensor, xc: torch.Tensor, ic: torch.Tensor) -> torch.Tensor:
        g, v = eta[: 2 * Q].reshape(Q, 2), eta[2 * Q: 4 * Q].reshape(Q, 2)
        beta = torch.complex(eta[4 * Q: 4 * Q + nb], eta[4 * Q + nb:]).reshape(N, M, Q)
        dn_vec, dm_vec = g[None] - tx[:, None], g[None] - rx[:, None]
        dn, dm = dn_vec.norm(dim=-1), dm_vec.norm(dim=-1)
        en, em = dn_vec / dn[..., None], dm_vec / dm[..., None]
        d = dn[:, None] + dm[None]
        fd = ((v * en).sum(-1)[:, None] + (v * em).sum(-1)[None]) * cfg.carrier_frequency / SPEED_OF_LIGHT
        amp = beta * torch.sqrt(cfg.pathloss_ref * (d / cfg.reference_distance) ** (-cfg.pathloss_exponent))
        a_t = torch.exp(-2j * math.pi * cfg.antenna_spacing * kt * (en * ut[:, None]).sum(-1)[..., None])
        a_r = torch.exp(-2j * math.pi * cfg.antenna_spacing * kr * (em * ur[:, None]).sum(-1)[..., None])
        a_t, a_r = a_t / math.sqrt(len(kt)), a_r / math.sqrt(len(kr))
        beams = torch.einsum("npk,nkit->npit", a_t.conj(), xc)
        ph_i = torch.exp(-2j * math.pi * cfg.subcarrier_spacing * (d / SPEED_OF_LIGHT)[..., None] * ic)
        ph_t = torch.exp(2j * math.pi * cfg.symbol_duration * fd[..., None] * t)
        u = torch.einsum("nmp,nmpi,nmpt,npit->mpit", amp, ph_i, ph_t, beams)
        return torch.view_as_real(torch.einsum("mpr,mpit->mrit", a_r, u))

    F = torch.zeros(eta0.numel(), eta0.numel(), dtype=torch.float64)
    for i0 in range(0, cfg.n_subcarriers, chunk):
        xc = x[0, :, :, i0:i0 + chunk].to(torch.complex128)
        ic = i_all[i0:i0 + chunk]
        J = jacfwd(lambda e, xc=xc, ic=ic: rho(e, xc, ic))(eta0).reshape(-1, eta0.numel())
        F += J.T @ J
    return F * (2.0 / cfg.noise_watt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=8, help="scenes timed at the paper preset")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table-scenes", type=int, default=20, help="scenes of the root-CRLB tables (0: skip)")
    ap.add_argument("--no-autograd", action="store_true", help="skip the autograd reference")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = SystemConfig.preset("paper")
    scenes = cfisac.sample_scenes(cfg, args.scenes, 0)
    x = cfisac.transmit_signals(cfg, scenes, 0)  # complex64, as the simulator produces it
    crlb(cfg, scenes.select(slice(0, 1)), x[:1])  # warm-up
    rss0 = _rss_kib("VmRSS")
    _reset_peak()
    times = []
    for b in range(args.scenes):
        t0 = time.perf_counter()
        crlb(cfg, scenes.select(slice(b, b + 1)), x[b:b + 1])
        times.append(time.perf_counter() - t0)
    peak_mib = (_rss_kib("VmHWM") - rss0) / 1024
    t0 = time.perf_counter()
    crlb(cfg, scenes, x)
    batched = (time.perf_counter() - t0) / args.scenes
    lines = [
        "# CRLB benchmark (paper preset)",
        "",
        f"- command: `.venv/bin/python benchmarks/bench_crlb.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {args.threads} threads; the machine is shared by several agents and may have been "
        "loaded",
        f"- preset `paper`: N={cfg.n_tx}, M={cfg.n_rx}, Nt=Mr={cfg.n_tx_antennas}, Q={cfg.n_targets}, "
        f"{cfg.n_subcarriers} x {cfg.n_symbols} cells, x complex64",
        "",
        "| what | value |",
        "|---|---|",
        f"| analytic `crlb`, one scene per call (median of {args.scenes}) | {statistics.median(times):.3f} s/scene |",
        f"| analytic `crlb`, one scene per call (max) | {max(times):.3f} s/scene |",
        f"| analytic `crlb`, {args.scenes} scenes in one call | {batched:.3f} s/scene |",
        f"| peak memory above the inputs (RSS high-water mark, one scene per call) | {peak_mib:.0f} MiB |",
    ]
    if not args.no_autograd:
        n_ref = min(2, args.scenes)
        ref_times, errs = [], []
        for b in range(n_ref):
            one = scenes.select(slice(b, b + 1))
            t0 = time.perf_counter()
            R = autograd_fim(cfg, one, x[b:b + 1])
            ref_times.append(time.perf_counter() - t0)
            F = fisher_information(cfg, one, x[b:b + 1])[0]
            d = torch.diagonal(R).sqrt()
            errs.append(float(((F - R).abs() / (d[:, None] * d[None, :])).max()))
        lines += [
            f"| chunked `jacfwd` reference FIM (mean of {n_ref}) | {statistics.mean(ref_times):.3f} s/scene |",
            "| max over (a, b) of abs(F - R)[a, b] / sqrt(R[a, a] R[b, b]), analytic F vs reference R "
            f"| {max(errs):.1e} |",
        ]
    if args.table_scenes > 0:
        lines += ["", f"## Root-CRLB averaged like the RMSE ({args.table_scenes} scenes, seed 0, clutter known)", "",
                  "Same numbers as `cfisac crlb --preset <preset> --power-dbm 0 10 20 30 --n-scenes "
                  f"{args.table_scenes} --seed 0` (scenes, precoders and symbols redrawn at each power).", "",
                  "| preset | P (dBm) | position (m) | velocity (m/s) |", "|---|---|---|---|"]
        for preset in ("paper", "quick"):
            for power in (0.0, 10.0, 20.0, 30.0):
                c = SystemConfig.preset(preset, power_dbm=power)
                bounds = []
                for start in range(0, args.table_scenes, 4):
                    sc = cfisac.sample_scenes(c, min(4, args.table_scenes - start), 0, start_index=start)
                    bounds.append(crlb(c, sc, cfisac.transmit_signals(c, sc, 0)))
                p, v = average_root_crlb(torch.cat(bounds))
                lines.append(f"| {preset} | {power:g} | {p:.4g} | {v:.4g} |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
