"""The demo's geometry scheme (Fig. 6 at quick, trained at P0 = 48 dBm for the demo's budget) with other front ends /
velocity readouts, through the experiments' own code path (a fresh output directory per variant).

    .venv/bin/python benchmarks/geometry_front_end_variants.py OUT VARIANT [--threads 1] [--seconds 240]

VARIANT: ``image`` (the demo's recipe, ``dvqvae-image-geometry``), ``vmarg-direct`` (the ``velocity-image`` front end
with ``velocity_output="marginals"``: per pixel the v_x and v_y profiles, velocity read by the decoder's direct
head), ``vmarg-ls`` (the same front end, velocity by the bistatic least squares). Prints the stored rows (RMSE at
every power of Fig. 6, 200 test scenes) and the training history's last lines.
"""

from __future__ import annotations

import argparse
import copy

import torch

from cfisac.experiments import load_rows, make_context, run_experiment
from cfisac.experiments.common import GEOMETRY_RECIPES, Recipe

BASE = GEOMETRY_RECIPES["dvqvae-image-geometry"]


def recipe(front_end_options: dict, decoder_changes: dict) -> Recipe:
    mo = copy.deepcopy(BASE.model_options)
    mo["decoder_options"].update(decoder_changes)
    if front_end_options:
        mo["front_end_options"] = front_end_options
    return Recipe(model_options=mo, learning_rate=BASE.learning_rate, batch_size=BASE.batch_size)


VARIANTS = {
    "image": ("dvqvae-image-geometry", BASE),
    "vmarg-direct": ("dvqvae-velocity-image-geometry",
                     recipe({"velocity_output": "marginals"}, {"velocity_readout": "direct"})),
    "vmarg-ls": ("dvqvae-velocity-image-geometry", recipe({"velocity_output": "marginals"}, {})),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("variant", choices=sorted(VARIANTS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=240.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scheme, rec = VARIANTS[args.variant]
    ctx = make_context("quick", root=args.out, classical=(), learned=(scheme,), recipes={scheme: rec},
                       train_seconds={scheme: args.seconds})
    ctx.progress = False
    run_experiment("fig6", ctx)
    for r in sorted(load_rows(ctx, "fig6"), key=lambda r: (r["scheme"], r["x_value"])):
        if r["scheme"] == scheme:
            print(f"{args.variant} P={r['x_value']:g}: {r['position_rmse']:.2f} m / {r['velocity_rmse']:.2f} m/s "
                  f"({int(r['n_scenes'])} scenes)", flush=True)


if __name__ == "__main__":
    main()
