"""What accuracy the physics allows on the issue-9 test scenes: root-CRLB and a prior-informed (Bayesian) figure.

For the ``n`` test scenes of (preset, power, dataset seed) -- the scenes of ``bench_front_ends.py`` -- prints, per
transmit power, the root-CRLB averaged like the RMSE (:func:`cfisac.crlb.average_root_crlb`, unbiased estimators)
and the same average of the Bayesian information bound with a Gaussian prior of the scene prior's variance,

    B = (J + Lambda)^-1,  J = CRLB^-1 (the psi block of Eq. 24),  Lambda = diag(1 / sigma^2) with
    sigma^2 = (area width)^2 / 12 per position axis and (2 v_max)^2 / 12 per velocity axis,

i.e. what an estimator that also uses the prior could gain over the CRLB. The scenes' prior is uniform, not Gaussian:
for a uniform prior the Van Trees inequality does not apply (its Fisher information is unbounded), so this column is
an indication of how much a biased (prior-shrinking) estimator can gain, not a strict bound. Scenes with a singular
Fisher information (NaN bound) are left out of both columns and counted.

    .venv/bin/python benchmarks/bench_feasibility.py --powers 30 48 --n 500 --threads 1
"""

from __future__ import annotations

import argparse
import platform
from datetime import UTC, datetime

import torch

import cfisac
from cfisac.crlb import average_root_crlb, crlb
from cfisac.scene import sample_scenes
from cfisac.waveform import transmit_signals


def bounds(cfg: cfisac.SystemConfig, seed: int, n: int, chunk: int = 50) -> dict[str, float]:
    """Root-CRLB and prior-informed figure (m, m/s) over test scenes 0..n-1 of ``(cfg, seed)``."""
    Q = cfg.n_targets
    (x0, x1), (y0, y1) = cfg.area
    var = torch.tensor([(x1 - x0) ** 2 / 12, (y1 - y0) ** 2 / 12] * Q + [(2 * cfg.max_speed) ** 2 / 12] * (2 * Q),
                       dtype=torch.float64)
    bounds_crlb, bounds_prior, singular = [], [], 0
    for lo in range(0, n, chunk):
        idx = range(lo, min(n, lo + chunk))
        scenes = sample_scenes(cfg, len(idx), seed, indices=torch.as_tensor(list(idx)))
        x = transmit_signals(cfg, scenes, seed)  # the X of simulate_batch(cfg, seed, idx)
        c = crlb(cfg, scenes, x, singular="nan")
        ok = ~torch.isnan(c).any(-1).any(-1)
        singular += int((~ok).sum())
        c = c[ok]
        bounds_crlb.append(c)
        bounds_prior.append(torch.linalg.inv(torch.linalg.inv(c) + torch.diag(1.0 / var)))
    crlb_pos, crlb_vel = average_root_crlb(torch.cat(bounds_crlb))
    prior_pos, prior_vel = average_root_crlb(torch.cat(bounds_prior))
    return {"root_crlb_position": crlb_pos, "root_crlb_velocity": crlb_vel, "prior_informed_position": prior_pos,
            "prior_informed_velocity": prior_vel, "singular": singular}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick")
    p.add_argument("--powers", type=float, nargs="+", default=[30.0, 48.0])
    p.add_argument("--n", type=int, default=500, help="test scenes (bench_front_ends.py: 500)")
    p.add_argument("--seed", type=int, default=1, help="dataset seed of the test scenes (bench_front_ends.py: 1)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s); preset {args.preset}, {args.n} scenes of dataset seed {args.seed}")
    print("| P (dBm) | root-CRLB position (m) | root-CRLB velocity (m/s) | prior-informed position (m) | "
          "prior-informed velocity (m/s) | singular scenes left out |")
    print("|---|---|---|---|---|---|")
    for power in args.powers:
        r = bounds(cfisac.SystemConfig.preset(args.preset, power_dbm=power), args.seed, args.n)
        print(f"| {power:g} | {r['root_crlb_position']:.3f} | {r['root_crlb_velocity']:.3f} | "
              f"{r['prior_informed_position']:.3f} | {r['prior_informed_velocity']:.3f} | {r['singular']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
