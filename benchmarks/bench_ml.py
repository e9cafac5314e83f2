"""Benchmark of the ML estimator (:mod:`cfisac.estimators.ml`): accuracy against the CRLB and seconds per scene.

Sections (each result is stored in ``benchmarks/results/ml.json`` as soon as it is computed, and
``benchmarks/results/ml.md`` is re-rendered from the JSON after every section, so partial runs keep their numbers):

- ``accuracy``: RMSE of the distributed (``joint=False``) and centralized (``joint=True``) variants against the
  root-CRLB averaged like the RMSE, over ``--scenes`` scenes (default 200) for the configs of ``--configs``, each
  ``preset:Q:power_dbm[:min_separation_cells]`` (the last field draws only scenes whose targets are separated by
  that many resolution cells, :func:`separation_cells`).
- ``sweep``: the same at the quick preset, Q = 2, over the powers of Fig. 6 (0, 5, ..., 30 dBm) and 40, 50 dBm
  (``--sweep-powers``), ``--sweep-scenes`` scenes per power.
- ``timing``: seconds per scene at the quick and paper presets (Q = 2, 30 dBm; ``--timing-scenes`` /
  ``--paper-scenes`` scenes, 0 skips a preset) and the peak resident memory.

Rows are merged into the stored JSON (a row with the same preset / Q / power / separation is replaced, the others
are kept), and every row records the commit of ``src/cfisac/estimators/ml.py`` that produced it (``ml_code``) and
its date; the markdown marks the rows computed with an older ml.py as stale.

Both variants come from one call (``joint=True`` also returns the distributed fusion), timed together in the
accuracy sections; the ``timing`` section times the distributed variant alone (its own call at the quick preset,
the time until the fusion returned inside the joint call at the paper preset).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ml.py [--sections accuracy sweep timing]
        [--scenes 200] [--sweep-scenes 50] [--sweep-powers 30 40 50] [--configs quick:2:55:1 tiny:2:50:1]
        [--timing-scenes 3] [--paper-scenes 2] [--threads 1] [--batch 25]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import cfisac
from cfisac.crlb import root_crlb
from cfisac.estimators.ml import MLEstimator
from cfisac.geometry import bistatic_geometry
from cfisac.metrics import accuracy

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
ML_SOURCE = "src/cfisac/estimators/ml"  # the package (ml.py before the split)
SWEEP_POWERS = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0)


def code_version() -> dict:
    """The code that produces a row: ``ml_code`` = the last commit touching ml.py (``+dirty`` when the working
    tree differs from it), ``head`` = the repository HEAD; ``?`` outside a git checkout."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"
    ml = git("log", "-1", "--format=%h", "--", ML_SOURCE) or "?"
    dirty = git("status", "--porcelain", "--", ML_SOURCE)
    return {"ml_code": ml + ("+dirty" if dirty and dirty != "?" else ""), "head": git("rev-parse", "--short", "HEAD")}


def merge(rows: list[dict], new: dict, keys: tuple[str, ...]) -> list[dict]:
    """``rows`` with ``new`` replacing the row that has the same values of ``keys`` (appended otherwise)."""
    out = [r for r in rows if any(r.get(k) != new.get(k) for k in keys)]
    return out + [new]


def path_snr_db(cfg: cfisac.SystemConfig, scenes: cfisac.Scene, x: torch.Tensor) -> np.ndarray:
    """Integrated SNR of every path (n, m, q) in dB: |beta|^2 PL ||a_t^H x||^2 / xi^2 (the matched-filter SNR)."""
    geo = bistatic_geometry(cfg, scenes.positions, scenes.velocities)
    a_t = cfisac.geometry.steering_vectors(geo.tx.cos_angle, cfg.n_tx_antennas, cfg.antenna_spacing,
                                           torch.complex128)
    energy = (torch.einsum("bnqk,bnkit->bnqit", a_t.conj(), x.to(torch.complex128)).abs() ** 2).sum((-1, -2))
    pl = cfg.pathloss_ref * (geo.bistatic_range / cfg.reference_distance) ** (-cfg.pathloss_exponent)
    snr = scenes.reflection.abs() ** 2 * pl * energy[:, :, None, :] / cfg.noise_watt
    return 10 * np.log10(snr.numpy().ravel())


def separation_cells(cfg: cfisac.SystemConfig, scenes: cfisac.Scene) -> torch.Tensor:
    """Worst-case separation of the targets in resolution cells, [B]: for every pair of targets and every AP pair
    (n, m) the largest of |delta bistatic range| / range cell, |delta bistatic Doppler| / Doppler cell and
    |delta AoA cosine at m| / (2 / Mr); then the smallest over AP pairs and target pairs (inf for Q = 1)."""
    g = bistatic_geometry(cfg, scenes.positions, scenes.velocities)
    res = cfg.resolution()
    out = torch.full((scenes.batch_size,), math.inf, dtype=torch.float64)
    for a in range(cfg.n_targets):
        for b in range(a + 1, cfg.n_targets):
            du = (g.rx.cos_angle[..., a] - g.rx.cos_angle[..., b]).abs() / (2 / cfg.n_rx_antennas)  # [B, M]
            dd = (g.bistatic_range[..., a] - g.bistatic_range[..., b]).abs() / res["range_resolution_m"]
            df = (g.doppler[..., a] - g.doppler[..., b]).abs() / res["doppler_resolution_hz"]
            sep = torch.maximum(torch.maximum(dd, df), du[:, None]).amin((1, 2))
            out = torch.minimum(out, sep)
    return out


def scene_indices(cfg: cfisac.SystemConfig, n: int, seed: int, min_sep: float) -> torch.Tensor:
    """The first n dataset indices whose scenes have targets separated by at least ``min_sep`` cells."""
    if min_sep <= 0 or cfg.n_targets < 2:
        return torch.arange(n)
    keep, start = [], 0
    while len(keep) < n:
        sc = cfisac.sample_scenes(cfg, 500, seed, start_index=start)
        ok = separation_cells(cfg, sc) >= min_sep
        keep += sc.indices[ok].tolist()
        start += 500
    return torch.tensor(keep[:n])


def evaluate(preset: str, Q: int, power: float, n: int, seed: int, batch: int, min_sep: float = 0.0) -> dict:
    """RMSE of both variants vs the root-CRLB over n scenes (scenes with a singular FIM are excluded); with
    ``min_sep`` > 0 only scenes whose targets are separated by that many resolution cells (separation_cells)."""
    cfg = cfisac.SystemConfig.preset(preset, n_targets=Q, power_dbm=power)
    est = MLEstimator(cfg, joint=True)
    errs = {k: [] for k in ("jp", "jv", "dp", "dv")}
    bounds, snrs, seconds, singular, kept = [], [], 0.0, 0, []
    all_idx = scene_indices(cfg, n, seed, min_sep)
    for start in range(0, n, batch):
        idx = all_idx[start:start + batch]
        sc = cfisac.sample_scenes(cfg, len(idx), seed, indices=idx)
        x = cfisac.transmit_signals(cfg, sc, seed)
        y = cfisac.sensing_echoes(cfg, sc, x, seed=seed)
        t0 = time.perf_counter()
        out = est(y, x)
        seconds += time.perf_counter() - t0
        bound = cfisac.crlb(cfg, sc, x, singular="nan")
        ok = ~torch.isnan(bound).flatten(1).any(1)
        singular += int((~ok).sum())
        kept.append(idx[ok])
        rp, rv = root_crlb(bound[ok])
        bounds.append(torch.stack([rp, rv], 1))
        snrs.append(path_snr_db(cfg, sc, x))
        j = accuracy(out.positions[ok], out.velocities[ok], sc.positions[ok], sc.velocities[ok])
        d = accuracy(out.distributed_positions[ok], out.distributed_velocities[ok], sc.positions[ok],
                     sc.velocities[ok])
        errs["jp"].append(j.position_errors)
        errs["jv"].append(j.velocity_errors)
        errs["dp"].append(d.position_errors)
        errs["dv"].append(d.velocity_errors)
    e = {k: torch.cat(v) for k, v in errs.items()}  # [S, Q]
    bd = torch.cat(bounds)  # [S, 2] per-scene root bounds
    cp, cv = float(bd[:, 0].pow(2).mean().sqrt()), float(bd[:, 1].pow(2).mean().sqrt())
    rmse = {k: float(v.pow(2).mean().sqrt()) for k, v in e.items()}
    bad = {k: e[k].max(1).values > 5 * bd[:, 0 if k.endswith("p") else 1] for k in e}  # [S] per metric
    inlier = {}  # RMSE / root-CRLB over the scenes where neither the position nor the velocity is an outlier
    for v in ("j", "d"):
        good = ~(bad[v + "p"] | bad[v + "v"])
        for i, k in enumerate(("p", "v")):
            inlier[v + k] = float(e[v + k][good].pow(2).mean().sqrt() / bd[good, i].pow(2).mean().sqrt()) \
                if bool(good.any()) else float("nan")
    snr = np.concatenate(snrs)
    idx_ok = torch.cat(kept)
    out_idx = {v: idx_ok[bad[v + "p"] | bad[v + "v"]].tolist() for v in ("j", "d")}
    return {
        "preset": preset, "Q": Q, "power_dbm": power, "scenes": n, "seed": seed, "singular_excluded": singular,
        "crlb_position": cp, "crlb_velocity": cv,
        "joint_position": rmse["jp"], "joint_velocity": rmse["jv"],
        "dist_position": rmse["dp"], "dist_velocity": rmse["dv"],
        "min_separation_cells": min_sep,
        "outliers_joint": int((bad["jp"] | bad["jv"]).sum()), "outliers_dist": int((bad["dp"] | bad["dv"]).sum()),
        "outlier_scenes_joint": out_idx["j"], "outlier_scenes_dist": out_idx["d"],
        "inlier_ratio_joint": [inlier["jp"], inlier["jv"]], "inlier_ratio_dist": [inlier["dp"], inlier["dv"]],
        "path_snr_db_median": float(np.median(snr)), "path_snr_db_p10": float(np.percentile(snr, 10)),
        "seconds_per_scene": seconds / n,
        "bits_distributed": est.message_bits_per_ap, "bits_joint": est.centralized_bits_per_ap,
    }


def _rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux /proc; NaN elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def timing(preset: str, Q: int, scenes: int, seed: int, *, separate: bool = True) -> dict:
    """Seconds per scene of the distributed variant alone and of the joint variant (one scene per call).

    ``separate``: the distributed variant is timed in its own call (``joint=False``); otherwise (for the paper
    preset, where one call takes minutes) only the joint call runs and the distributed time is the time until its
    fusion returned (the per-AP stage of a joint call also keeps the first detection's maps for the CPU search:
    slightly more work than ``joint=False``). Peak RSS is the process maximum (``ru_maxrss``), which includes the
    signal generation and any earlier section of the same process; ``rss_before_mib`` is the RSS before the first
    estimator call."""
    cfg = cfisac.SystemConfig.preset(preset, n_targets=Q, power_dbm=30.0)
    t0 = time.perf_counter()
    sc = cfisac.sample_scenes(cfg, scenes, seed)
    x = cfisac.transmit_signals(cfg, sc, seed)
    y = cfisac.sensing_echoes(cfg, sc, x, seed=seed)
    out = {"preset": preset, "Q": Q, "scenes": scenes, "simulate_seconds": time.perf_counter() - t0,
           "rss_before_mib": _rss_mib(),
           "distributed_from": "separate call" if separate else "joint call, until fusion"}
    dist, joint = [], []
    for b in range(scenes):
        if separate:
            est = MLEstimator(cfg, joint=False)
            t0 = time.perf_counter()
            est(y[b:b + 1], x[b:b + 1])
            dist.append(time.perf_counter() - t0)
        est = MLEstimator(cfg, joint=True)
        mark: list[float] = []
        fuse = est.fuse_messages  # the distributed fusion (fuse also runs the centralized refinement)

        def timed_fuse(*a, _fuse=fuse, _mark=mark, **k):
            r = _fuse(*a, **k)
            _mark.append(time.perf_counter())
            return r

        est.fuse_messages = timed_fuse
        t0 = time.perf_counter()
        est(y[b:b + 1], x[b:b + 1])
        joint.append(time.perf_counter() - t0)
        if not separate:
            dist.append(mark[0] - t0)
        print(f"timing {preset} scene {b}: distributed {dist[-1]:.1f} s, joint {joint[-1]:.1f} s", flush=True)
    out["distributed_seconds"], out["distributed_seconds_max"] = float(np.median(dist)), float(np.max(dist))
    out["joint_seconds"], out["joint_seconds_max"] = float(np.median(joint)), float(np.max(joint))
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 and math.isfinite(b) else "-"


def _code(r: dict, current: str) -> str:
    c = r.get("ml_code", "?")
    return f"{c}" if c == current else f"{c} (**stale**)"


def render(data: dict) -> str:
    meta = data.get("meta", {})
    current = data.get("current_ml_code", "?")
    lines = [
        "# ML estimator benchmark (`cfisac.estimators.ml`)", "",
        f"- last command: `{meta.get('command', '')}`",
        f"- date of the last command: {meta.get('date', '')}",
        f"- code column: the last commit of `{ML_SOURCE}` when the row was computed (and the row's date); rows "
        f"computed with an older version than the current one (`{current}`) are marked **stale**",
        f"- machine: {meta.get('machine', '')}; the machine is shared by several agents and may have been loaded "
        "(timings are upper bounds)",
        "- both variants from one call per batch: `ml` (distributed: per-AP ML, float32 messages, Fisher-weighted "
        "mixture fusion) and `ml-joint` (plus the centralized ML refinement on the raw echoes)",
        "- ratio = RMSE / root-CRLB, both averaged like the RMSE (sqrt of the mean over scenes and targets); "
        "outl. = scenes with a position or velocity error above 5x their own root-CRLB; inlier ratio = the ratio "
        "over the other scenes (the local efficiency, separated from the threshold effect); per-path SNR = "
        "matched-filter SNR of each (n, m, q) path, |beta|^2 PL ||a_t^H x||^2 / xi^2; sep. = scenes drawn with "
        "targets separated by at least that many resolution cells (worst AP pair, best of range / Doppler / AoA)",
        "",
    ]
    for key, title in (("accuracy", "## Accuracy at the asymptotic powers"),
                       ("sweep", "## Fig. 6 sweep at the quick preset (Q = 2)")):
        rows = data.get(key, [])
        if not rows:
            continue
        lines += [title, "",
                  "| preset | Q | sep. | P (dBm) | scenes | path SNR median / p10 (dB) | root-CRLB pos (m) | "
                  "vel (m/s) | ml pos | ml vel | **ratio** pos / vel | outl. | inlier ratio | ml-joint pos | "
                  "ml-joint vel | **ratio** pos / vel | outl. | inlier ratio | s/scene | code (ml.py), date |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ij, id_ = r.get("inlier_ratio_joint", [math.nan] * 2), r.get("inlier_ratio_dist", [math.nan] * 2)
            sep = r.get("min_separation_cells", 0)
            lines.append(
                f"| {r['preset']} | {r['Q']} | {f'>= {sep:g}' if sep else '-'} | {r['power_dbm']:g} | "
                f"{r['scenes'] - r['singular_excluded']} | "
                f"{r['path_snr_db_median']:.1f} / {r['path_snr_db_p10']:.1f} | {r['crlb_position']:.3g} | "
                f"{r['crlb_velocity']:.3g} | {r['dist_position']:.3g} | {r['dist_velocity']:.3g} | "
                f"{_ratio(r['dist_position'], r['crlb_position'])} / {_ratio(r['dist_velocity'], r['crlb_velocity'])}"
                f" | {r['outliers_dist']} | {id_[0]:.2f} / {id_[1]:.2f} | {r['joint_position']:.3g} | "
                f"{r['joint_velocity']:.3g} | {_ratio(r['joint_position'], r['crlb_position'])} / "
                f"{_ratio(r['joint_velocity'], r['crlb_velocity'])} | {r['outliers_joint']} | "
                f"{ij[0]:.2f} / {ij[1]:.2f} | {r['seconds_per_scene']:.2f} | {_code(r, current)}, "
                f"{r.get('date', '?')[:16]} |")
        lines.append("")
    rows = data.get("timing", [])
    if rows:
        lines += ["## Seconds per scene (one scene per call, 30 dBm)", "",
                  "| preset | Q | scenes | ml (distributed) median / max | distributed timed as | "
                  "ml-joint median / max | RSS before / peak (MiB) | code (ml.py), date |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            before = r.get("rss_before_mib", math.nan)
            lines.append(f"| {r['preset']} | {r['Q']} | {r['scenes']} | {r['distributed_seconds']:.2f} / "
                         f"{r['distributed_seconds_max']:.2f} | {r.get('distributed_from', 'separate call')} | "
                         f"{r['joint_seconds']:.2f} / {r['joint_seconds_max']:.2f} | "
                         f"{'-' if math.isnan(before) else f'{before:.0f}'} / {r['peak_rss_mib']:.0f} | "
                         f"{_code(r, current)}, {r.get('date', '?')[:16]} |")
        lines.append("")
    if "bits" in data:
        b = data["bits"]
        lines += ["## Fronthaul bits per receive AP and update", "",
                  f"- `ml` (distributed): 32 (2 + 3N) Q = {b['distributed']} bit at N = 2, Q = 2 (float32 local "
                  "position, N Dopplers and N complex gains per target; undetected paths are NaN)",
                  f"- `ml-joint` (centralized): 64 Mr Ns Ts = {b['joint_quick']:,} bit (quick), "
                  f"{b['joint_paper']:,} bit (paper)", ""]
    lines += data.get("notes", [])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=["accuracy", "sweep", "timing"],
                   choices=["accuracy", "sweep", "timing", "render"], help="render: only re-render the markdown")
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--sweep-scenes", type=int, default=50)
    p.add_argument("--sweep-powers", type=float, nargs="+", default=list(SWEEP_POWERS))
    p.add_argument("--configs", nargs="+",
                   default=["tiny:1:40", "tiny:2:40:1", "tiny:2:50:1", "quick:1:50", "quick:2:50:1", "quick:2:45:1"],
                   help="preset:Q:power_dbm[:min_separation_cells]")
    p.add_argument("--timing-scenes", type=int, default=3)
    p.add_argument("--paper-scenes", type=int, default=2, help="0 skips the paper preset")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--out", type=Path, default=RESULTS / "ml.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    mk = args.out.with_suffix(".md")
    version = code_version()
    data["current_ml_code"] = version["ml_code"]
    if args.sections == ["render"]:
        mk.write_text(render(data))
        return 0
    data["meta"] = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ml.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} "
                   "thread(s)",
    }

    def save() -> None:
        args.out.write_text(json.dumps(data, indent=1))
        mk.write_text(render(data))

    def stamp(r: dict) -> dict:
        return {**r, **version, "date": datetime.datetime.now().isoformat(timespec="seconds")}

    order = {"tiny": 0, "quick": 1, "paper": 2}

    q2 = cfisac.SystemConfig.preset("quick", n_targets=2)
    p2 = cfisac.SystemConfig.preset("paper", n_targets=2)
    data["bits"] = {"distributed": MLEstimator(q2).message_bits_per_ap,
                    "joint_quick": MLEstimator(q2, joint=True).fronthaul_bits_per_ap,
                    "joint_paper": MLEstimator(p2, joint=True).fronthaul_bits_per_ap}
    # rows are merged into the stored ones (same preset / Q / power / separation replaced), so a partial run keeps
    # the other rows; each row records the code version and date that produced it
    if "accuracy" in args.sections:
        for spec in args.configs:
            preset, q, power, *sep = spec.split(":")
            r = stamp(evaluate(preset, int(q), float(power), args.scenes, args.seed, args.batch,
                               float(sep[0]) if sep else 0.0))
            print(json.dumps(r), flush=True)
            rows = merge(data.get("accuracy", []), r, ("preset", "Q", "power_dbm", "min_separation_cells"))
            data["accuracy"] = sorted(rows, key=lambda a: (order.get(a["preset"], 9), a["Q"], a["power_dbm"]))
            save()
    if "sweep" in args.sections:
        for power in args.sweep_powers:
            r = stamp(evaluate("quick", 2, power, args.sweep_scenes, args.seed, args.batch))
            print(json.dumps(r), flush=True)
            rows = merge(data.get("sweep", []), r, ("preset", "Q", "power_dbm", "min_separation_cells"))
            data["sweep"] = sorted(rows, key=lambda a: a["power_dbm"])
            save()
    if "timing" in args.sections:
        for preset, n in (("quick", args.timing_scenes), ("paper", args.paper_scenes)):
            if n <= 0:
                continue
            r = stamp(timing(preset, 2, n, args.seed, separate=preset != "paper"))
            print(json.dumps(r), flush=True)
            data["timing"] = sorted(merge(data.get("timing", []), r, ("preset", "Q")),
                                    key=lambda a: order.get(a["preset"], 9))
            save()
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
