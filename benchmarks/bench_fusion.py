"""RMSE and time of the batched CPU fusion vs the reference numpy fusion on the same reference messages.

    .venv/bin/python benchmarks/bench_fusion.py SCHEME POWER_DBM N [SEED]     # e.g. music 50 50 0

The messages of the scene-at-a-time ``SCHEME-reference`` estimator (``music`` or ``cs``) on N quick scenes are
computed once and cached in the temporary directory; both fusions then run on them (one thread).
"""
import os
import sys
import tempfile
import time

import torch

torch.set_num_threads(1)
import cfisac  # noqa: E402
from cfisac.estimators import create  # noqa: E402
from cfisac.estimators.fusion import BistaticMessages, fuse_bistatic  # noqa: E402
from cfisac.estimators.reference.signal_processing import ApMessages, fuse_messages, validate_inputs  # noqa: E402
from cfisac.metrics import accuracy  # noqa: E402

scheme, power, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
cfg = cfisac.SystemConfig.preset("quick", power_dbm=power)
scenes = cfisac.sample_scenes(cfg, n, seed)
os.makedirs(os.path.join(tempfile.gettempdir(), "cfisac-bench-fusion"), exist_ok=True)
path = os.path.join(tempfile.gettempdir(), "cfisac-bench-fusion", f"msgs_{scheme}_{power:g}_{n}_{seed}.pt")
if os.path.exists(path):
    aoa, ranges, dopplers = torch.load(path)
else:
    x = cfisac.transmit_signals(cfg, scenes, seed)
    y = cfisac.sensing_echoes(cfg, scenes, x, noise=True, seed=seed)
    est = create(f"{scheme}-reference", cfg)
    t = time.perf_counter()
    m = est.messages(*validate_inputs(cfg, y, x))
    print(f"{scheme} reference messages: {(time.perf_counter() - t) / n:.2f} s/scene")
    aoa, ranges, dopplers = (torch.from_numpy(a) for a in (m.aoa, m.ranges, m.dopplers))
    torch.save((aoa, ranges, dopplers), path)
msgs = BistaticMessages(aoa, ranges, dopplers)
t, c = time.perf_counter(), time.process_time()
new = fuse_bistatic(cfg, msgs)
t_new, c_new = time.perf_counter() - t, time.process_time() - c
t, c = time.perf_counter(), time.process_time()
ref = fuse_messages(cfg, ApMessages(aoa.numpy(), ranges.numpy(), dopplers.numpy()))
t_ref, c_ref = time.perf_counter() - t, time.process_time() - c
print(f"fusion time per scene: batched {t_new / n * 1e3:.2f} ms wall / {c_new / n * 1e3:.2f} ms cpu, "
      f"reference {t_ref / n * 1e3:.1f} ms wall / {c_ref / n * 1e3:.1f} ms cpu (batch {n})")
rows = {}
for name, o in (("batched", new), ("reference", ref)):
    r = accuracy(o.positions, o.velocities, scenes.positions, scenes.velocities)
    rows[name] = (float(r.position_errors.pow(2).mean().sqrt()), float(r.velocity_errors.pow(2).mean().sqrt()))
    print(f"{name:9s} RMSE position {rows[name][0]:.4f} m  velocity {rows[name][1]:.4f} m/s")
print("relative difference: position {:.2e}, velocity {:.2e}".format(
    abs(rows["batched"][0] / rows["reference"][0] - 1), abs(rows["batched"][1] / rows["reference"][1] - 1)))
dp = (new.positions - ref.positions).norm(dim=-1).amax(-1)
dv = (new.velocities - ref.velocities).norm(dim=-1).amax(-1)
print(f"per-scene max |diff|: position max {dp.max():.2e} m (>1e-3 m: {int((dp > 1e-3).sum())}/{n}), "
      f"velocity max {dv.max():.2e} m/s (>1e-3 m/s: {int((dv > 1e-3).sum())}/{n})")
