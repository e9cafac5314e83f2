"""ML estimator speed: the working tree's package against a committed one, same scenes, one process (issue 15).

    .venv/bin/python benchmarks/ml_speed.py SCHEME SCENES POWERS SEED [REV]
    e.g.  .venv/bin/python benchmarks/ml_speed.py ml 48 10,30,48,60 11 5189b9e

The package ``cfisac.estimators.ml`` at git revision REV (default HEAD) is loaded next to the current one as
``cfisac.estimators.ml_old`` (its files from ``git show``, its registry calls skipped); both estimators are built
directly with default options (``SCHEME`` ml or ml-joint). Noisy quick scenes, one torch thread; prints one JSON
line per power: CPU s/scene (time.process_time around one call on all scenes, after a 2-scene warm-up) of both,
their RMSE, the per-scene largest position / velocity differences and those of the messages (slots matched by the
best permutation: slots are unordered) (results in benchmarks/results/ml.md, "low-power gate").
"""

import importlib.util
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import cfisac
import cfisac.estimators as registry
from cfisac.estimators.ml import MLEstimator
from cfisac.metrics import accuracy

PKG = "src/cfisac/estimators/ml"


def load_old(rev: str) -> type:
    """MLEstimator of the package at ``rev`` (imported as ``cfisac.estimators.ml_old``)."""
    root = Path(__file__).resolve().parents[1]
    tmp = Path(tempfile.mkdtemp(prefix="ml_old_"))
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:{PKG}"], cwd=root, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in names:
        if name.endswith(".py"):
            (tmp / name).write_text(subprocess.run(["git", "show", f"{rev}:{PKG}/{name}"], cwd=root, check=True,
                                                   capture_output=True, text=True).stdout)
    spec = importlib.util.spec_from_file_location("cfisac.estimators.ml_old", tmp / "__init__.py",
                                                  submodule_search_locations=[str(tmp)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    keep = registry.register_without_checkpoint
    registry.register_without_checkpoint = lambda *a, **k: None  # the names stay the current package's
    try:
        spec.loader.exec_module(mod)
    finally:
        registry.register_without_checkpoint = keep
    return mod.MLEstimator


def run(cls, cfg, y, x, joint):
    est = cls(cfg, joint=joint)
    est(y[:2], x[:2])
    c0 = time.process_time()
    e = est(y, x)
    return e, (time.process_time() - c0) / y.shape[0]


def main(name: str, n: int, powers: list[float], seed: int, rev: str) -> None:
    torch.set_num_threads(1)
    old_cls, joint = load_old(rev), name == "ml-joint"
    for p in powers:
        cfg = cfisac.SystemConfig.preset("quick", power_dbm=p)
        sc = cfisac.sample_scenes(cfg, n, seed)
        x = cfisac.transmit_signals(cfg, sc, seed, dtype=torch.complex128)
        y = cfisac.sensing_echoes(cfg, sc, x, seed=seed)
        eo, co = run(old_cls, cfg, y, x, joint)
        en, cn = run(MLEstimator, cfg, y, x, joint)
        ao = accuracy(eo.positions, eo.velocities, sc.positions, sc.velocities)
        an = accuracy(en.positions, en.velocities, sc.positions, sc.velocities)
        dp = (eo.positions - en.positions).norm(dim=-1).nan_to_num(0).amax(-1)
        dv = (eo.velocities - en.velocities).norm(dim=-1).nan_to_num(0).amax(-1)
        to, tn = eo.messages.theta, en.messages.theta  # [B, M, Q, 2 + N]
        perms = [tn[:, :, list(pm)] for pm in itertools.permutations(range(tn.shape[2]))]
        cost = torch.stack([((to - t).abs().nan_to_num(1e9) + (to.isnan() != t.isnan()) * 1e9).sum((-2, -1))
                            for t in perms])  # [perms, B, M]
        tn = torch.stack(perms)[cost.argmin(0), torch.arange(n)[:, None], torch.arange(to.shape[1])]
        dm = (to - tn).abs().nan_to_num(0)
        moved = (dp > 1e-3) | (dv > 1e-3)
        print(json.dumps(dict(scheme=name, power=p, scenes=n, seed=seed, rev=rev, cpu_old=round(co, 4),
                              cpu_new=round(cn, 4), speedup=round(co / cn, 2),
                              rmse_old=[ao.position_rmse, ao.velocity_rmse],
                              rmse_new=[an.position_rmse, an.velocity_rmse],
                              max_pos_diff_m=float(dp.max()), max_vel_diff=float(dv.max()),
                              scenes_moved_gt_1e_3=moved.nonzero().flatten().tolist(),
                              moved_pos_m=[round(float(v), 5) for v in dp[moved]],
                              messages_same_nan=bool((to.isnan() == tn.isnan()).all()),
                              max_msg_pos_diff_m=float(dm[..., :2].max()),
                              max_msg_doppler_diff_hz=float(dm[..., 2:].max()))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), [float(p) for p in sys.argv[3].split(",")], int(sys.argv[4]),
         sys.argv[5] if len(sys.argv) > 5 else "HEAD")
