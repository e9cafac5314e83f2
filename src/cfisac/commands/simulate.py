"""``cfisac simulate``: simulate a dataset (HDF5 cache) and print a summary of the system it was drawn from."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import SystemConfig
from ..data import write_hdf5
from ..scene import sample_scenes
from ..sensing import noiseless_echoes
from ..waveform import communication_links, transmit_signals


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """``--preset``, ``--config`` (JSON file) and common overrides shared by sub-commands."""
    p.add_argument("--preset", default="quick", help="paper | quick | tiny | monostatic (default: quick)")
    p.add_argument("--config", type=Path, help="a SystemConfig JSON file (overrides --preset)")
    p.add_argument("--power-dbm", type=float, help="override the transmit power P (dBm)")
    p.add_argument("--n-targets", type=int, help="override Q")


def config_from_args(args: argparse.Namespace) -> SystemConfig:
    cfg = SystemConfig.from_json(args.config) if args.config else SystemConfig.preset(args.preset)
    overrides = {k: v for k, v in (("power_dbm", args.power_dbm), ("n_targets", args.n_targets)) if v is not None}
    return cfg.replace(**overrides) if overrides else cfg


def system_summary(cfg: SystemConfig, seed: int, n_probe: int = 8) -> list[str]:
    """Lines describing the grid, its resolution / ambiguity, the echo SNR and the users' rates."""
    r = cfg.resolution()
    scenes = sample_scenes(cfg, n_probe, seed)
    links = communication_links(cfg, scenes, seed)
    x = transmit_signals(cfg, scenes, seed, links=links)
    rho = noiseless_echoes(cfg, scenes, x)
    cell_snr = rho.abs().pow(2).mean(dim=(2, 3, 4)) / cfg.noise_watt  # [B, M]
    cells = cfg.n_rx_antennas * cfg.n_subcarriers * cfg.n_symbols
    db = lambda v: 10 * math.log10(max(float(v), 1e-30))  # noqa: E731
    return [
        f"system: N={cfg.n_tx} tx APs x {cfg.n_tx_antennas} antennas, M={cfg.n_rx} rx APs x {cfg.n_rx_antennas}, "
        f"K={cfg.n_users} users, Q={cfg.n_targets} targets, P={cfg.power_dbm:g} dBm, xi^2={cfg.noise_dbm:g} dBm",
        f"grid: {cfg.n_subcarriers} subcarriers (stride {cfg.subcarrier_stride}) x {cfg.n_symbols} symbols "
        f"(stride {cfg.symbol_stride}); bandwidth {r['bandwidth_hz'] / 1e6:.2f} MHz, "
        f"observation {r['observation_time_s'] * 1e3:.3f} ms",
        f"range: resolution {r['range_resolution_m']:.2f} m, unambiguous {r['unambiguous_range_m']:.1f} m "
        f"(largest bistatic range {r['max_bistatic_range_m']:.1f} m)",
        f"Doppler: resolution {r['doppler_resolution_hz']:.1f} Hz ({r['velocity_resolution_mps']:.2f} m/s), "
        f"unambiguous +-{r['unambiguous_doppler_hz']:.0f} Hz (largest {r['max_doppler_hz']:.0f} Hz)",
        f"echo SNR per cell: median {db(cell_snr.median()):.1f} dB; integrated over {cells} cells per AP: "
        f"median {db(cell_snr.median() * cells):.1f} dB",
        f"users: mean SINR {db(links.sinr.mean()):.1f} dB, sum rate {float(links.sum_rate.mean()):.2f} bit/s/Hz, "
        f"max per-AP power {float(links.tx_power.max()) * 1e3:.1f} mW (P = {cfg.power_watt * 1e3:.1f} mW)",
    ]


def run(args: argparse.Namespace) -> int:
    from ._checks import check_output_file, check_positive_int

    check_positive_int("--n", args.n, allow_none=False)
    check_positive_int("--chunk", args.chunk, allow_none=False)
    check_positive_int("--seed", args.seed, allow_none=False, minimum=0)
    cfg = config_from_args(args)
    check_output_file("--out", args.out)
    for line in system_summary(cfg, args.seed):
        print(line)
    t0 = time.perf_counter()
    with tqdm(total=args.n, desc=f"simulate {args.out.name}", unit="scene") as bar:
        write_hdf5(args.out, cfg, args.n, args.seed, chunk=args.chunk,
                   progress=lambda k: bar.update(k - bar.n), log=lambda s: tqdm.write(s))
    dt = time.perf_counter() - t0
    size = args.out.stat().st_size
    print(f"wrote {args.n} scenes to {args.out} ({size / 2**20:.1f} MiB) in {dt:.1f} s "
          f"({args.n / dt:.1f} scenes/s); y {tuple([cfg.n_rx, cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols])}"
          f", x {tuple([cfg.n_tx, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols])} per scene, seed {args.seed}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate a dataset to an HDF5 file and print a system summary")
    add_config_arguments(p)
    p.add_argument("--n", type=int, default=1000, help="number of scenes")
    p.add_argument("--out", type=Path, required=True,
                   help="output .h5 file (written atomically; a killed run resumes when rerun with the same options)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=64, help="scenes per simulated / checksummed chunk")
    p.set_defaults(func=run)
    torch.set_num_threads(max(1, torch.get_num_threads()))
