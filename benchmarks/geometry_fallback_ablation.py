"""The geometry decoder's prior fallback on and off on one trained model (the demo's checkpoint), same test scenes.

    .venv/bin/python benchmarks/geometry_fallback_ablation.py reports/quick/cache/models/dvqvae-image-geometry-<hash> \
        10,30,48,60

Loads the checkpoint as the registry's learned estimator and evaluates the first 200 test scenes of the demo
(``reports/quick``, run from the repository root) at each power with ``prior_fallback`` as trained and with it
switched off in the readout (the maps are the same: the fallback only blends the peaks' estimates). Results:
``results/geometry_decoder.md``, section "Prior fallback".
"""

import dataclasses
import sys
from pathlib import Path

import torch

import cfisac
from cfisac.experiments import make_context
from cfisac.experiments.evaluation import evaluation_batch, evaluation_scenes
from cfisac.metrics import accuracy
from cfisac.models.geometry_decoder import GeometryDecoder


def main(ckpt: str, powers: list[float], n: int = 200) -> None:
    torch.set_num_threads(2)
    ctx = make_context("quick", root=Path("reports/quick"), log=lambda s: None)
    for power in powers:
        cfg = ctx.base_cfg.replace(power_dbm=power)
        batch, scenes = evaluation_batch(ctx, cfg, 0, n), evaluation_scenes(ctx, cfg, n)
        est = cfisac.estimators.create("dvqvae", cfg, checkpoint=ckpt, batch_size=64)
        dec = next(m for m in est.model.modules() if isinstance(m, GeometryDecoder))
        scale, bias = float(dec.fallback_log_scale.detach().exp()), float(dec.fallback_bias.detach())
        row = [f"P = {power:g} dBm (e^a = {scale:.3f}, c = {bias:.3f})"]
        for fallback in (True, False):
            dec.options = dataclasses.replace(dec.options, prior_fallback=fallback)
            out = est(batch["y"], batch["x"])
            a = accuracy(out.positions, out.velocities, scenes.positions, scenes.velocities)
            row.append(f"fallback {'on' if fallback else 'off'}: {a.position_rmse:.2f} m / {a.velocity_rmse:.2f} m/s")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [float(p) for p in sys.argv[2].split(",")])
