"""Evaluation of any estimator on held-out test scenes: Hungarian-assigned RMSE, per-target error CDFs, prior and
root-CRLB on the same scenes, fronthaul bits; results as JSON and a CDF figure.

Test scenes are samples ``0 .. n_test-1`` of dataset seed ``seed`` (choose a seed the model was not trained on:
``cfisac evaluate`` defaults to the training seed + 1). RMSE after the optimal assignment of estimates to targets
(:func:`cfisac.metrics.accuracy`). The root-CRLB averages like the RMSE: position ``sqrt(mean_{b,q}(CRLB_xx +
CRLB_yy))``, velocity likewise (paper Eq. 25-28), from ``cfisac.crlb(cfg, scenes, x)`` when that module exists.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import SystemConfig
from .estimators import Estimator, create
from .metrics import accuracy
from .scene import sample_scenes

__all__ = ["cdf_points", "evaluate", "plot_cdf", "root_crlb_of", "write_results"]

CDF_QUANTILES = tuple(round(q, 3) for q in np.linspace(0.0, 1.0, 41))


def cdf_points(errors: torch.Tensor) -> dict[str, list[float]]:
    """Empirical CDF of per-target errors at fixed probabilities: {"probability": [...], "error": [...]}."""
    e = errors[torch.isfinite(errors)].double().numpy()
    if e.size == 0:
        return {"probability": list(CDF_QUANTILES), "error": [float("nan")] * len(CDF_QUANTILES)}
    return {"probability": list(CDF_QUANTILES), "error": [float(v) for v in np.quantile(e, CDF_QUANTILES)]}


def root_crlb_of(bound: torch.Tensor, n_targets: int) -> tuple[float, float]:
    """(position, velocity) root-CRLB averaged over scenes and targets from CRLB matrices [B, 4Q, 4Q]; scenes with
    a singular Fisher information (NaN bound) are left out of the average."""
    d = torch.diagonal(bound.double(), dim1=-2, dim2=-1)  # [B, 4Q]
    Q = n_targets
    pos = d[:, : 2 * Q].reshape(-1, Q, 2).sum(-1)
    vel = d[:, 2 * Q:].reshape(-1, Q, 2).sum(-1)
    return float(pos.nanmean().sqrt()), float(vel.nanmean().sqrt())


def _crlb_fn() -> Callable[..., torch.Tensor] | None:
    try:
        from .crlb import crlb
    except ImportError:
        return None
    return crlb


def evaluate(
    estimator: Estimator, cfg: SystemConfig, *, n_test: int = 500, seed: int = 1, batch_size: int = 64,
    with_crlb: bool = False, with_prior: bool = True, mean_label: torch.Tensor | None = None, progress: bool = False,
) -> dict[str, Any]:
    """Run ``estimator`` on ``n_test`` simulated test scenes; return a JSON-ready results dict.

    Keys: ``position_rmse`` (m), ``velocity_rmse`` (m/s), ``position_errors`` / ``velocity_errors`` (per target,
    [n_test * Q]), ``cdf`` (position / velocity), ``prior`` (RMSEs of the prior predictor on the same scenes),
    ``root_crlb`` (or None), ``fronthaul_bits_per_ap``, ``seconds`` (estimator time per scene), and with
    ``mean_label`` (psi [4Q], e.g. the mean training label in the canonical target order) ``training_mean``: the
    RMSEs of always predicting it. The latter is the best constant predictor for the squared loss the models are
    trained with; it beats the prior's centre in position because the canonical order sorts targets by x.
    """
    from .data import simulate_batch

    if not isinstance(n_test, int) or n_test < 1:
        raise ValueError(f"n_test must be a positive integer, got {n_test!r}")
    prior = create("prior", cfg) if with_prior else None
    crlb = _crlb_fn() if with_crlb else None
    pe, ve, ppe, pve, mpe, mve, bounds = [], [], [], [], [], [], []
    Q = cfg.n_targets
    if mean_label is not None and tuple(mean_label.shape) != (4 * Q,):
        raise ValueError(f"mean_label must have shape [4Q] = [{4 * Q}], got {tuple(mean_label.shape)}")
    t_est = 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_test, desc="evaluate", leave=False, dynamic_ncols=True)
    for lo in range(0, n_test, batch_size):
        idx = list(range(lo, min(n_test, lo + batch_size)))
        b = simulate_batch(cfg, seed, idx)
        t0 = time.perf_counter()
        est = estimator(b["y"], b["x"])
        t_est += time.perf_counter() - t0
        acc = accuracy(est.positions, est.velocities, b["positions"], b["velocities"])
        pe.append(acc.position_errors.reshape(-1))
        ve.append(acc.velocity_errors.reshape(-1))
        if prior is not None:
            pr = prior(b["y"], b["x"])
            pacc = accuracy(pr.positions, pr.velocities, b["positions"], b["velocities"])
            ppe.append(pacc.position_errors.reshape(-1))
            pve.append(pacc.velocity_errors.reshape(-1))
        if mean_label is not None:
            k = len(idx)
            mp = mean_label.double()[: 2 * Q].reshape(1, Q, 2).expand(k, Q, 2)
            mv = mean_label.double()[2 * Q:].reshape(1, Q, 2).expand(k, Q, 2)
            macc = accuracy(mp, mv, b["positions"], b["velocities"])
            mpe.append(macc.position_errors.reshape(-1))
            mve.append(macc.velocity_errors.reshape(-1))
        if crlb is not None:
            scenes = sample_scenes(cfg, len(idx), seed, indices=torch.tensor(idx))
            bounds.append(crlb(cfg, scenes, b["x"].to(torch.complex128), singular="nan"))
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    pe_all, ve_all = torch.cat(pe), torch.cat(ve)
    rms = lambda e: float(e.double().pow(2).mean().sqrt())  # noqa: E731
    res: dict[str, Any] = {
        "estimator": getattr(estimator, "name", type(estimator).__name__),
        "n_test": n_test, "seed": seed, "power_dbm": cfg.power_dbm, "n_targets": cfg.n_targets,
        "position_rmse": rms(pe_all), "velocity_rmse": rms(ve_all),
        "fronthaul_bits_per_ap": int(getattr(estimator, "fronthaul_bits_per_ap", -1)),
        "seconds_per_scene": t_est / n_test,
        "cdf": {"position": cdf_points(pe_all), "velocity": cdf_points(ve_all)},
        "position_errors": [float(v) for v in pe_all], "velocity_errors": [float(v) for v in ve_all],
        "prior": None, "training_mean": None, "root_crlb": None,
    }
    if mean_label is not None:
        res["training_mean"] = {"position_rmse": rms(torch.cat(mpe)), "velocity_rmse": rms(torch.cat(mve))}
    if prior is not None:
        res["prior"] = {"position_rmse": rms(torch.cat(ppe)), "velocity_rmse": rms(torch.cat(pve))}
    if with_crlb and crlb is None:
        res["root_crlb"] = "unavailable: cfisac.crlb is not implemented yet"
    elif bounds:
        allb = torch.cat(bounds)
        p, v = root_crlb_of(allb, cfg.n_targets)
        singular = int(torch.isnan(allb).flatten(1).any(1).sum())
        res["root_crlb"] = {"position": p, "velocity": v, "singular_scenes": singular}
    return res


def plot_cdf(path: str | Path, results: list[dict[str, Any]], *, title: str = "") -> Path:
    """Per-target error CDFs (position, velocity) of one or more results dicts of :func:`evaluate`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for k, (key, unit) in enumerate((("position", "m"), ("velocity", "m/s"))):
        ax = axes[k]
        for r in results:
            e = np.sort(np.asarray(r[f"{key}_errors"], dtype=float))
            e = e[np.isfinite(e)]
            if e.size:
                ax.plot(e, np.arange(1, e.size + 1) / e.size, label=f"{r['estimator']} (RMSE {r[f'{key}_rmse']:.2f})")
        if results and isinstance(results[0].get("prior"), dict):
            ax.axvline(results[0]["prior"][f"{key}_rmse"], color="gray", ls="--", lw=1, label="prior RMSE")
        if results and isinstance(results[0].get("root_crlb"), dict):
            ax.axvline(results[0]["root_crlb"][key], color="k", ls=":", lw=1, label="root-CRLB")
        ax.set_xlabel(f"{key} error ({unit})")
        ax.set_ylabel("CDF")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from .data import remove_stale_temporaries

    remove_stale_temporaries(path.parent, re.escape(f".{path.stem}.tmp-") + r"(?P<pid>\d+)" + re.escape(path.suffix))
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path


def write_results(path: str | Path, results: dict[str, Any]) -> Path:
    """Write a results dict as JSON (atomically: a temporary renamed into place; temporaries of dead writers are
    removed first, an ``OSError`` leaves the previous file intact); NaN becomes null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(w) for k, w in v.items()}
        if isinstance(v, list):
            return [clean(w) for w in v]
        return v

    from .data import remove_stale_temporaries

    remove_stale_temporaries(path.parent, re.escape(f".{path.name}.tmp-") + r"(?P<pid>\d+)")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(clean(results), indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:  # disk full / denied: no temporary left, the previous file intact
        tmp.unlink(missing_ok=True)
        raise
    return path
