"""Evaluation of every estimator and scheme on held-out test scenes: the one module that turns estimates into the
result columns (Hungarian-assigned RMSE with bootstrap intervals, medians, fronthaul bits) and attaches the root-CRLB
of the same scenes.

Two entry points share the same pieces (:func:`run_estimator`, :func:`accuracy_columns`, :func:`root_crlb_per_scene`):

- :func:`evaluate_scheme` (the experiments): a :class:`~cfisac.experiments.scheme.Scheme` of a run
  :class:`~cfisac.experiments.common.Context` on that run's test scenes, returning the columns of
  :mod:`cfisac.experiments.store`; :func:`estimates_of` returns the assigned estimates themselves (Fig. 10).
- :func:`evaluate` (``cfisac evaluate``, benchmarks): any estimator on scenes ``0 .. n_test - 1`` of a dataset seed
  (choose one the model was not trained on: ``cfisac evaluate`` defaults to the training seed + 1), returning a
  JSON-ready dict with per-target error CDFs and the prior predictor of the same scenes; :func:`write_results` and
  :func:`plot_cdf` write it.

Test scenes of the experiments
------------------------------
Every point of every experiment evaluates its schemes on the same test scenes: dataset indices
``TEST_START .. TEST_START + n_test - 1`` of the run's seed (training uses indices from 0, so the sets never
overlap). Scene geometry depends only on ``(area, Q, max_speed, seed, index)``, so the monostatic baseline (one
full-duplex BS at (50, 0), :func:`cfisac.experiments.common.monostatic_config`) sees exactly the same targets as
the cooperative system; its echoes are simulated for its own config. Slow estimators may be evaluated on the first
``scheme_n_test[scheme]`` test scenes only (their root-CRLB is then that of the same subset).

Root-CRLB
---------
Eq. (24)-(28) per scene (:func:`cfisac.crlb.crlb`, :func:`cfisac.crlb.root_crlb`), averaged like the RMSE:
``sqrt(mean over scenes and targets of CRLB_xx + CRLB_yy)`` (velocity likewise). Scenes whose Fisher information is
singular are left out of the average and counted.
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

from ..config import SystemConfig
from ..data import simulate_batch
from .common import Context, monostatic_config
from .scheme import Scheme, as_scheme

__all__ = [
    "CDF_QUANTILES", "TEST_START", "accuracy_columns", "cdf_points", "crlb_of_scenes", "crlb_summary", "estimates_of",
    "evaluate", "evaluate_scheme", "evaluation_batch", "evaluation_data", "evaluation_scenes", "plot_cdf",
    "root_crlb_per_scene", "run_estimator", "scheme_estimator", "write_results",
]

TEST_START = 1_000_000  # first dataset index of the test scenes (training uses 0 .. n_train - 1)


# ---------------------------------------------------------------------------------------------------- test scenes
CACHE_BYTES = 2**30  # a test set smaller than this (echoes + transmit signals) is simulated once and kept


def _scene_bytes(cfg: SystemConfig) -> int:
    return 8 * (cfg.n_rx * cfg.n_rx_antennas + cfg.n_tx * cfg.n_tx_antennas) * cfg.n_subcarriers * cfg.n_symbols


def _cacheable(ctx: Context, cfg: SystemConfig) -> bool:
    return ctx.budget.n_test * _scene_bytes(cfg) <= CACHE_BYTES


def evaluation_data(ctx: Context, cfg: SystemConfig) -> dict[str, torch.Tensor]:
    """All test scenes of ``cfg`` (indices ``TEST_START ..``, the run's seed), simulated once per process (only for
    test sets under :data:`CACHE_BYTES`; larger ones are streamed by :func:`evaluation_batch`)."""
    key = ("test", cfg.to_json(), ctx.seed, ctx.budget.n_test)
    if key in ctx._cache:
        ctx._cache[key] = ctx._cache.pop(key)  # most recently used last
    else:
        while len([k for k in ctx._cache if k[0] == "test"]) >= 4:  # bound memory: keep 4 configs (LRU)
            del ctx._cache[next(k for k in ctx._cache if k[0] == "test")]
        idx = list(range(TEST_START, TEST_START + ctx.budget.n_test))
        parts = [simulate_batch(cfg, ctx.seed, idx[lo:lo + ctx.budget.eval_batch])
                 for lo in range(0, ctx.budget.n_test, ctx.budget.eval_batch)]
        ctx._cache[key] = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return ctx._cache[key]


def evaluation_batch(ctx: Context, cfg: SystemConfig, lo: int, hi: int) -> dict[str, torch.Tensor]:
    """Test scenes ``lo .. hi - 1`` of ``cfg``: a slice of the cached set, or simulated now for large test sets (the
    paper preset: 33 MB per scene); bit-identical either way (a sample is a function of (cfg, seed, index))."""
    if _cacheable(ctx, cfg):
        return {k: v[lo:hi] for k, v in evaluation_data(ctx, cfg).items()}
    return simulate_batch(cfg, ctx.seed, list(range(TEST_START + lo, TEST_START + hi)))


def evaluation_scenes(ctx: Context, cfg: SystemConfig, n: int | None = None):
    """The :class:`cfisac.Scene` batch of the first ``n`` test scenes (default all): positions, velocities, ..."""
    from ..scene import sample_scenes

    n = ctx.budget.n_test if n is None else n
    idx = torch.arange(TEST_START, TEST_START + n, dtype=torch.int64)
    return sample_scenes(cfg, len(idx), ctx.seed, indices=idx)



# ---------------------------------------------------------------------------------------------------- root-CRLB
def root_crlb_per_scene(cfg: SystemConfig, scenes: Any, x: torch.Tensor, **crlb_options: Any
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Root-CRLB per scene, Eq. (24)-(28): position (m) and velocity (m/s), each [B] float64, of the
    :class:`cfisac.Scene` batch ``scenes`` with transmit signals ``x`` [B, N, Nt, Ns, Ts] complex. NaN where the
    Fisher information is singular (such scenes are dropped and the bound of the others computed without them).
    ``crlb_options`` (``clutter``, ``clock``) go to :func:`cfisac.crlb.crlb`."""
    from .. import crlb as crlb_mod

    B = scenes.batch_size
    pos = torch.full((B,), math.nan, dtype=torch.float64)
    vel = torch.full((B,), math.nan, dtype=torch.float64)
    rows = list(range(B))
    while rows:
        sel = torch.tensor(rows)
        try:
            bound = crlb_mod.crlb(cfg, scenes.select(sel), x[sel], **crlb_options)
        except crlb_mod.SingularFisherError as err:
            del rows[err.scene]
            continue
        p, v = crlb_mod.root_crlb(bound)
        pos[sel], vel[sel] = p, v
        break
    return pos, vel


def crlb_summary(pos: torch.Tensor, vel: torch.Tensor) -> dict[str, Any]:
    """The root-CRLB of scenes averaged like the RMSE from the per-scene bounds ``pos``, ``vel`` [n] float64 of
    :func:`root_crlb_per_scene` (singular scenes, NaN, left out and counted); medians in ``metrics``.
    ``ValueError`` when every scene is singular."""
    ok = torch.isfinite(pos) & torch.isfinite(vel)
    if not bool(ok.any()):
        raise ValueError(f"the Fisher information is singular for all {pos.numel()} test scenes")
    p, v = pos[ok], vel[ok]
    return {
        "root_crlb_position": float(p.pow(2).mean().sqrt()), "root_crlb_velocity": float(v.pow(2).mean().sqrt()),
        "n_scenes": int(ok.sum()),
        "metrics": {"crlb_position_median": float(p.median()), "crlb_velocity_median": float(v.median()),
                    "crlb_singular": int((~ok).sum())},
    }


def _crlb_per_scene(ctx: Context, cfg: SystemConfig, n: int, crlb_options: dict[str, Any]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Root-CRLB per test scene (position m, velocity m/s) [n] float64 of the first ``n`` test scenes of the run;
    NaN where the Fisher information is singular. Cached per process."""
    key = ("crlb", cfg.to_json(), ctx.seed, ctx.budget.n_test, tuple(sorted(crlb_options.items())))
    have = ctx._cache.get(key)
    if have is not None and have[0].numel() >= n:
        return have[0][:n], have[1][:n]
    scenes = evaluation_scenes(ctx, cfg, n)
    pos = torch.full((n,), math.nan, dtype=torch.float64)
    vel = torch.full((n,), math.nan, dtype=torch.float64)
    chunk = max(1, min(ctx.budget.eval_batch, 64))
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        part = scenes.select(slice(lo, hi))
        if _cacheable(ctx, cfg):
            x_chunk = evaluation_batch(ctx, cfg, lo, hi)["x"]
        else:  # only the transmit signals are needed: the same x as simulate_batch draws
            from ..waveform import transmit_signals

            x_chunk = transmit_signals(cfg, part, ctx.seed)
        pos[lo:hi], vel[lo:hi] = root_crlb_per_scene(cfg, part, x_chunk, **crlb_options)
    ctx._cache[key] = (pos, vel)
    return pos, vel


def crlb_of_scenes(ctx: Context, cfg: SystemConfig, *, n: int | None = None, **crlb_options: Any) -> dict[str, Any]:
    """Root-CRLB (position m, velocity m/s) of the first ``n`` test scenes of ``cfg`` (default: ``n_test`` capped
    by ``crlb_max_scenes``), averaged like the RMSE (:func:`crlb_summary`: singular scenes left out and counted in
    ``metrics["crlb_singular"]``, medians too: the mean of the bound is dominated by the few scenes with
    near-singular geometry). ``crlb_options`` (``clutter``, ``clock``) go to :func:`cfisac.crlb.crlb`.
    """
    n = ctx.budget.n_test if n is None else min(n, ctx.budget.n_test)
    if ctx.budget.crlb_max_scenes is not None:
        n = min(n, ctx.budget.crlb_max_scenes)
    return crlb_summary(*_crlb_per_scene(ctx, cfg, n, crlb_options))


# ---------------------------------------------------------------------------------------------------- estimators
def accuracy_columns(est_pos: torch.Tensor, est_vel: torch.Tensor, true_pos: torch.Tensor, true_vel: torch.Tensor,
                     *, bits: float | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Result columns of estimates ``est_pos``, ``est_vel`` [n, Q, 2] against the truth ``true_pos``, ``true_vel``
    [n, Q, 2] (:func:`cfisac.metrics.accuracy`: Hungarian assignment on positions): RMSEs, ``n_scenes``,
    ``fronthaul_bits_per_ap`` = ``bits`` and in ``metrics`` medians, 90 % quantiles and 95 % bootstrap intervals
    of the RMSEs (:func:`cfisac.metrics.rmse_confidence_interval`), with ``extra``. An estimator without a velocity
    (NaN, the monostatic BS) gets a NaN velocity RMSE."""
    from ..metrics import accuracy, rmse_confidence_interval

    rep = accuracy(est_pos, est_vel, true_pos, true_vel)
    pe, ve = rep.position_errors.flatten(), rep.velocity_errors.flatten()
    vel_ok = bool(torch.isfinite(ve).all())
    metrics = {
        "position_median": float(pe.median()), "position_p90": float(pe.quantile(0.9)),
        "position_rmse_ci95": list(rmse_confidence_interval(rep.position_errors)),
        **({"velocity_median": float(ve.median()), "velocity_p90": float(ve.quantile(0.9)),
            "velocity_rmse_ci95": list(rmse_confidence_interval(rep.velocity_errors))} if vel_ok else {}),
        **(extra or {}),
    }
    return {
        "position_rmse": rep.position_rmse, "velocity_rmse": rep.velocity_rmse if vel_ok else math.nan,
        "fronthaul_bits_per_ap": bits, "n_scenes": int(true_pos.shape[0]), "metrics": metrics,
    }


def run_estimator(est: Any, batches: Callable[[int, int], dict[str, torch.Tensor]], n: int, batch: int, *,
                  max_seconds: float | None = None, log: Callable[[str], Any] | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Call ``est(y, x)`` on test scenes 0, 1, ... (``batches(lo, hi)`` gives them): positions, velocities
    [k, Q, 2] float64 and seconds per scene. Calls take ``batch`` scenes (the batched estimators' unit of work);
    with ``max_seconds`` they start at 1 scene and grow to ``batch`` (about 5 s per call) and the evaluation stops
    after the call that exceeds it, so ``k`` may be less than ``n`` (always the first k scenes). A progress line goes
    to ``log`` every 20 s."""
    pos, vel = [], []
    t0 = last = time.perf_counter()
    step, lo = (1 if max_seconds is not None else batch), 0
    with torch.no_grad():
        while lo < n:
            t_b = time.perf_counter()
            hi = min(n, lo + step)
            b = batches(lo, hi)
            out = est(b["y"], b["x"])
            pos.append(out.positions.detach().double().cpu())
            vel.append(out.velocities.detach().double().cpu())
            k = hi - lo
            lo = hi
            now = time.perf_counter()
            if max_seconds is not None:
                step = int(max(1, min(batch, 5.0 / max((now - t_b) / k, 1e-6))))
            if max_seconds is not None and now - t0 > max_seconds and lo < n:
                if log is not None:
                    log(f"  {getattr(est, 'name', 'estimator')}: time budget of {max_seconds:.0f} s spent after "
                        f"{lo}/{n} scenes ({(now - t0) / lo:.2f} s/scene); evaluated on those")
                break
            if log is not None and now - last > 20 and lo < n:
                log(f"  {getattr(est, 'name', 'estimator')}: {lo}/{n} scenes, {(now - t0) / lo:.2f} s/scene")
                last = now
    return torch.cat(pos), torch.cat(vel), (time.perf_counter() - t0) / lo


def scheme_estimator(ctx: Context, scheme: str | Scheme, cfg: SystemConfig, *,
                     train_cfgs: list[SystemConfig] | None = None, train_options: dict[str, Any] | None = None,
                     ) -> tuple[Any, SystemConfig]:
    """The estimator of ``scheme`` (``cfisac.estimators`` interface) and the config whose test scenes it sees: a
    learned scheme trained on ``train_cfgs`` (default ``[cfg]``) with ``train_options``
    (:func:`cfisac.experiments.learned.learned_estimator`), the monostatic BS on :func:`monostatic_config` of
    ``cfg`` (same targets), every other one ``cfisac.estimators.create(kind, cfg)``."""
    from .. import estimators

    s = as_scheme(scheme)
    if s.kind == "crlb":
        raise ValueError("the scheme 'crlb' has no estimator (use crlb_of_scenes)")
    if s.learned:
        from .learned import learned_estimator

        return learned_estimator(ctx, s, train_cfgs or [cfg], eval_cfg=cfg, **(train_options or {})), cfg
    if s.kind == "monostatic":
        mono = monostatic_config(cfg)
        a, b = evaluation_scenes(ctx, cfg, 4), evaluation_scenes(ctx, mono, 4)
        if not torch.equal(a.positions, b.positions):
            raise RuntimeError("monostatic test scenes differ from the cooperative ones (scene sampling changed?)")
        return estimators.create("monostatic", mono), mono
    return estimators.create(s.kind, cfg), cfg


def evaluate_scheme(ctx: Context, scheme: str | Scheme, cfg: SystemConfig, *,
                    train_cfgs: list[SystemConfig] | None = None, train_options: dict[str, Any] | None = None,
                    crlb_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Result columns of ``scheme`` on the test scenes of ``cfg`` (see :mod:`cfisac.experiments.store`).

    ``crlb``: the root-CRLB only (:func:`crlb_of_scenes`). Every other scheme: its estimator
    (:func:`scheme_estimator`; a learned one trained once per ``(train_cfgs, train_options)`` and cached under
    ``reports/<preset>/cache/models``) on the first ``ctx.budget.n_test_of(scheme)`` test scenes, the
    :func:`accuracy_columns` of its estimates, and the root-CRLB of the same scenes. A classical scheme stops
    after ``ctx.budget.scheme_seconds`` (``metrics.time_capped``).
    """
    s = as_scheme(scheme)
    if s.kind == "crlb":
        return crlb_of_scenes(ctx, cfg, **(crlb_options or {}))
    est, data_cfg = scheme_estimator(ctx, s, cfg, train_cfgs=train_cfgs, train_options=train_options)
    n = ctx.budget.n_test_of(str(s))
    pos, vel, sec = run_estimator(est, lambda lo, hi: evaluation_batch(ctx, data_cfg, lo, hi), n,
                                  ctx.budget.eval_batch, log=ctx.log,
                                  max_seconds=None if s.learned else ctx.budget.scheme_seconds)
    capped = pos.shape[0] < n
    n = pos.shape[0]
    scenes = evaluation_scenes(ctx, cfg, n)
    bits = getattr(est, "fronthaul_bits_per_ap", None)
    res = accuracy_columns(pos, vel, scenes.positions, scenes.velocities, bits=None if bits is None else float(bits),
                           extra={"seconds_per_scene": sec, **({"time_capped": True} if capped else {})})
    try:
        bound = crlb_of_scenes(ctx, cfg, n=n, **(crlb_options or {}))
        res["root_crlb_position"] = bound["root_crlb_position"]
        res["root_crlb_velocity"] = bound["root_crlb_velocity"]
    except ValueError as err:
        res["metrics"]["crlb_error"] = str(err)
    return res


def estimates_of(ctx: Context, scheme: str | Scheme, cfg: SystemConfig, n: int, *,
                 train_cfgs: list[SystemConfig] | None = None, train_options: dict[str, Any] | None = None,
                 ) -> dict[str, torch.Tensor]:
    """Estimates of ``scheme`` on the first ``n`` test scenes of ``cfg`` (Fig. 10): true and estimated positions /
    velocities [n, Q, 2] float64 (estimates permuted to the Hungarian assignment of the true targets)."""
    from ..metrics import assign_targets

    est, data_cfg = scheme_estimator(ctx, scheme, cfg, train_cfgs=train_cfgs, train_options=train_options)
    pos, vel, _ = run_estimator(est, lambda lo, hi: evaluation_batch(ctx, data_cfg, lo, hi), n,
                                ctx.budget.eval_batch)
    scenes = evaluation_scenes(ctx, cfg, n)
    perm = assign_targets(pos, scenes.positions)
    idx = perm[..., None].expand(-1, -1, 2)
    return {"true_positions": scenes.positions, "true_velocities": scenes.velocities,
            "est_positions": torch.gather(pos, 1, idx), "est_velocities": torch.gather(vel, 1, idx)}


# ---------------------------------------------------------------------------------------------------- cfisac evaluate
CDF_QUANTILES = tuple(round(q, 3) for q in np.linspace(0.0, 1.0, 41))


def cdf_points(errors: torch.Tensor) -> dict[str, list[float]]:
    """Empirical CDF of per-target errors at fixed probabilities: {"probability": [...], "error": [...]}."""
    e = errors[torch.isfinite(errors)].double().numpy()
    if e.size == 0:
        return {"probability": list(CDF_QUANTILES), "error": [float("nan")] * len(CDF_QUANTILES)}
    return {"probability": list(CDF_QUANTILES), "error": [float(v) for v in np.quantile(e, CDF_QUANTILES)]}



def evaluate(
    estimator: Any, cfg: SystemConfig, *, n_test: int = 500, seed: int = 1, batch_size: int = 64,
    with_crlb: bool = False, with_prior: bool = True, mean_label: torch.Tensor | None = None, progress: bool = False,
) -> dict[str, Any]:
    """Run ``estimator`` on ``n_test`` simulated test scenes; return a JSON-ready results dict.

    Keys: ``position_rmse`` (m), ``velocity_rmse`` (m/s), ``position_errors`` / ``velocity_errors`` (per target,
    [n_test * Q]), ``cdf`` (position / velocity), ``prior`` (RMSEs of the prior predictor on the same scenes),
    ``root_crlb`` (or None), ``fronthaul_bits_per_ap``, ``seconds`` (estimator time per scene), and with
    ``mean_label`` (psi [4Q], e.g. the mean training label in the canonical target order) ``training_mean``: the
    RMSEs of always predicting it: the best constant for the squared loss the models are trained with (targets in
    the canonical order), which the prior's best fixed guess (optimal under the assigned error) matches or beats.
    """
    from ..estimators import create
    from ..metrics import accuracy
    from ..scene import sample_scenes

    if not isinstance(n_test, int) or n_test < 1:
        raise ValueError(f"n_test must be a positive integer, got {n_test!r}")
    prior = create("prior", cfg) if with_prior else None
    pe, ve, ppe, pve, mpe, mve, bound_pos, bound_vel = [], [], [], [], [], [], [], []
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
        if with_crlb:
            scenes = sample_scenes(cfg, len(idx), seed, indices=torch.tensor(idx))
            p, v = root_crlb_per_scene(cfg, scenes, b["x"])
            bound_pos.append(p)
            bound_vel.append(v)
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
    if with_crlb:
        try:
            bound = crlb_summary(torch.cat(bound_pos), torch.cat(bound_vel))
            res["root_crlb"] = {"position": bound["root_crlb_position"], "velocity": bound["root_crlb_velocity"],
                                "singular_scenes": bound["metrics"]["crlb_singular"]}
        except ValueError as err:  # every scene singular
            res["root_crlb"] = {"position": math.nan, "velocity": math.nan, "singular_scenes": n_test,
                                "error": str(err)}
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
    from ..data import remove_stale_temporaries

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

    from ..data import remove_stale_temporaries

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
