"""Batched vs reference CPU fusion on stored reference-estimator messages: RMSE, per-scene differences, CPU time.

    .venv/bin/python benchmarks/bench_fusion_cases.py [SOURCE_DIR]      # default /tmp/fusion_cases

Four message sets of 50 quick scenes (files in SOURCE_DIR, see tests/data/make_fusion_cases.py): CS 50 dBm seed
2026, MUSIC 50 dBm seed 0, MUSIC 55 / 45 dBm seed 2026. Both fusions run on the same messages (one thread); the
batched one is also timed at batch 64 (the 50 scenes and the first 14 again, median of 5 runs).
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
import cfisac  # noqa: E402
from cfisac.estimators.fusion import BistaticMessages, fuse_bistatic  # noqa: E402
from cfisac.estimators.reference.signal_processing import ApMessages, fuse_messages  # noqa: E402
from cfisac.metrics import accuracy  # noqa: E402

SETS = (("CS 50 dBm seed 2026", 50.0, 2026, "ref_50_50_2026.pt"),
        ("MUSIC 50 dBm seed 0", 50.0, 0, "msgs_music_50_50_0.pt"),
        ("MUSIC 55 dBm seed 2026", 55.0, 2026, "ref50_55.npz"),
        ("MUSIC 45 dBm seed 2026", 45.0, 2026, "ref50_45.npz"))


def load(path: Path) -> list[np.ndarray]:
    if path.suffix == ".npz":
        z = np.load(path)
        return [np.ascontiguousarray(z[k], dtype=np.float64) for k in ("aoa", "ranges", "dopplers")]
    obj = torch.load(path, weights_only=False)
    arrays = [obj[k] for k in ("aoa", "ranges", "dopplers")] if isinstance(obj, dict) else list(obj)
    return [np.ascontiguousarray(np.asarray(a), dtype=np.float64) for a in arrays]


def rmse(est, scenes) -> tuple[float, float]:
    r = accuracy(est.positions, est.velocities, scenes.positions, scenes.velocities)
    return float(r.position_errors.pow(2).mean().sqrt()), float(r.velocity_errors.pow(2).mean().sqrt())


src = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fusion_cases")
print("| set | reference RMSE m / m/s | batched RMSE m / m/s | scenes > 1e-3 | max diff m / m/s | batched ms/scene "
      "(batch 64) | reference ms/scene |")
print("|---|---|---|---|---|---|---|")
for name, power, seed, file in SETS:
    cfg = cfisac.SystemConfig.preset("quick", power_dbm=power)
    scenes = cfisac.sample_scenes(cfg, 50, seed)
    aoa, ranges, dopplers = load(src / file)
    t = time.process_time()
    ref = fuse_messages(cfg, ApMessages(aoa, ranges, dopplers))
    t_ref = (time.process_time() - t) / 50 * 1e3
    msgs = BistaticMessages(*(torch.from_numpy(a) for a in (aoa, ranges, dopplers)))
    new = fuse_bistatic(cfg, msgs)
    m64 = BistaticMessages(*(torch.cat([t, t[:14]]) for t in (msgs.aoa, msgs.ranges, msgs.dopplers)))
    times = []
    for _ in range(5):
        t = time.process_time()
        fuse_bistatic(cfg, m64)
        times.append((time.process_time() - t) / 64 * 1e3)
    dp = (new.positions - ref.positions).norm(dim=-1).amax(-1)
    dv = (new.velocities - ref.velocities).norm(dim=-1).amax(-1)
    (rp, rv), (bp, bv) = rmse(ref, scenes), rmse(new, scenes)
    print(f"| {name} | {rp:.4f} / {rv:.4f} | {bp:.4f} / {bv:.4f} | {int(((dp > 1e-3) | (dv > 1e-3)).sum())} | "
          f"{float(dp.max()):.1e} / {float(dv.max()):.1e} | {float(np.median(times)):.2f} | {t_ref:.0f} |")
