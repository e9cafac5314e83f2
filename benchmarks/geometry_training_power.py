"""Train the demo's geometry scheme on chosen powers and evaluate it at the Fig. 6 powers (quick preset).

    THREADS=2 .venv/bin/python benchmarks/geometry_training_power.py B48 48          # trained at P0 only
    THREADS=2 .venv/bin/python benchmarks/geometry_training_power.py pool 10,20,30,40,48,60

``dvqvae-image-geometry`` with the budget's recipe (``BUDGETS['quick']``, 240 s of training) trained on the configs
of the given powers (several: ``TrainConfig.power_dbm_pool``), evaluated through the experiments' own path
(:func:`cfisac.experiments.evaluation.evaluate_scheme`) on the demo's 200 test scenes at 10, 30, 40, 48 and 60 dBm;
reports under ``/tmp/pv_<name>``. Results: ``results/geometry_decoder.md`` and the closing notes of issue 16.
"""

import os
import sys
import time
from pathlib import Path

import torch

from cfisac.experiments import make_context
from cfisac.experiments.evaluation import evaluate_scheme


def main(name: str, pool: list[float]) -> None:
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    ctx = make_context("quick", root=Path(f"/tmp/pv_{name}"),
                       log=lambda s: print(time.strftime("%H:%M:%S"), s, flush=True))
    ctx.progress = False
    cfgs = [ctx.base_cfg.replace(power_dbm=p) for p in pool]
    for power in (10.0, 30.0, 40.0, 48.0, 60.0):
        r = evaluate_scheme(ctx, "dvqvae-image-geometry", ctx.base_cfg.replace(power_dbm=power), train_cfgs=cfgs,
                            train_options={"model_overrides": {}})
        print(f"RESULT {name} P={power:g} pos {r['position_rmse']:.2f} vel {r['velocity_rmse']:.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [float(p) for p in sys.argv[2].split(",")])
