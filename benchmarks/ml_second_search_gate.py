"""The ML estimator's gates: default options vs every gate off (inf levels: the behaviour before the gates).

    .venv/bin/python benchmarks/ml_second_search_gate.py SCHEME SCENES POWERS SEED
    e.g.  .venv/bin/python benchmarks/ml_second_search_gate.py ml 96 48,60,30 11

Same noisy quick scenes for both variants, one torch thread; prints one JSON line per power: CPU s/scene
(time.process_time around one call on all scenes, after a 2-scene warm-up), RMSE of both, per-scene largest
position / velocity differences (results in benchmarks/results/ml.md, "second-search gate").
"""

import json
import sys
import time

import torch

import cfisac
from cfisac.estimators import create
from cfisac.metrics import accuracy

OFF = dict(second_search_level=float("inf"), doppler_retry_level=float("inf"), second_search_floor=0.0,
           doppler_retry_same=0.0)  # every gate off (the floors and the same-Doppler skip: ml.md, "low-power gate")


def main(name: str, n: int, powers: list[float], seed: int) -> None:
    torch.set_num_threads(1)
    for p in powers:
        cfg = cfisac.SystemConfig.preset("quick", power_dbm=p)
        sc = cfisac.sample_scenes(cfg, n, seed)
        x = cfisac.transmit_signals(cfg, sc, seed, dtype=torch.complex128)
        y = cfisac.sensing_echoes(cfg, sc, x, seed=seed)
        res = {}
        for label, kw in (("old", OFF), ("new", {})):
            est = create(name, cfg, **kw)
            est(y[:2], x[:2])
            c0 = time.process_time()
            e = est(y, x)
            cpu = (time.process_time() - c0) / n
            res[label] = (e, cpu, accuracy(e.positions, e.velocities, sc.positions, sc.velocities))
        (eo, co, ao), (en, cn, an) = res["old"], res["new"]
        dp = (eo.positions - en.positions).norm(dim=-1).nan_to_num(0).amax(-1)
        dv = (eo.velocities - en.velocities).norm(dim=-1).nan_to_num(0).amax(-1)
        print(json.dumps(dict(scheme=name, power=p, scenes=n, seed=seed, cpu_old=round(co, 4), cpu_new=round(cn, 4),
                              rmse_old=[ao.position_rmse, ao.velocity_rmse],
                              rmse_new=[an.position_rmse, an.velocity_rmse],
                              scenes_pos_diff_gt_0p1m=int((dp > 0.1).sum()), max_pos_diff_m=float(dp.max()),
                              max_vel_diff=float(dv.max()))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), [float(p) for p in sys.argv[3].split(",")], int(sys.argv[4]))
