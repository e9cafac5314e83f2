"""What every experiment module shares: the run context, the per-preset budgets, the test scenes and the evaluation
of a scheme (classical or learned estimator, the prior predictor, or the root-CRLB) on them.

Test scenes
-----------
Every point of every experiment evaluates its schemes on the same test scenes: dataset indices
``TEST_START .. TEST_START + n_test - 1`` of the run's seed (training uses indices from 0, so the sets never
overlap). Scene geometry depends only on ``(area, Q, max_speed, seed, index)``, so the monostatic baseline (one
full-duplex BS at (50, 0), :func:`monostatic_config`) sees exactly the same targets as the cooperative system; its
echoes are simulated for its own config. Slow estimators may be evaluated on the first ``scheme_n_test[scheme]``
test scenes only (their root-CRLB is then that of the same subset). The root-CRLB of a point is that of the same
scenes and transmit signals (:func:`crlb_of_scenes`, averaged like the RMSE: ``sqrt(mean over scenes and targets of
CRLB_xx + CRLB_yy)``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import SystemConfig
from ..data import simulate_batch

__all__ = [
    "Budget", "Context", "SCHEMES", "TEST_START", "crlb_of_scenes", "evaluate_scheme", "make_context",
    "monostatic_config", "scheme_label", "scheme_style", "evaluation_data",
]

TEST_START = 1_000_000  # first dataset index of the test scenes (training uses 0 .. n_train - 1)

# The operating power P0 of Figs. 7-14 (the paper's 30 dBm). The quick preset senses 16 x 64 x 16 cells per receive AP,
# 1/64 of the paper's 16 x 256 x 256 with the same per-cell SNR, so its integrated SNR per AP is 18 dB lower; 48 dBm
# restores the paper's integrated SNR at 30 dBm (tiny keeps 30 dBm: it only exercises the code).
OPERATING_POWER = {"tiny": 30.0, "quick": 48.0, "paper": 30.0}


def operating_power(ctx: Context) -> float:
    """P0 of the context's preset (dBm); see :data:`OPERATING_POWER`."""
    return OPERATING_POWER.get(ctx.preset, 30.0)


def titled(ctx: Context, title: str) -> str:
    """``title`` with "P0" spelled out as the preset's operating power."""
    return title.replace("P0", f"P0 = {operating_power(ctx):g} dBm")


def operating_config(ctx: Context, **changes: Any) -> SystemConfig:
    """The preset's system at the operating power P0, with ``changes``."""
    return ctx.base_cfg.replace(power_dbm=operating_power(ctx), **changes)
PRESETS = ("tiny", "quick", "paper")


@dataclass(frozen=True)
class Budget:
    """Sizes and budgets of one experiment preset.

    ``n_test``: test scenes per point; ``eval_batch``: scenes per estimator call; ``n_train``: training scenes of a
    learned model (indices 0 .. n_train - 1, simulated on the fly); ``train_seconds``: wall clock budget per learned
    model (by scheme or model name, ``"*"`` the default); ``max_epochs``: cap on epochs (None: only the time budget);
    ``batch_size`` of training; ``model_preset``: :class:`cfisac.models.config.ModelConfig` preset;
    ``classical``: classical schemes of the accuracy figures; ``learned``: learned schemes (``name`` or
    ``name-frontend``); ``crlb_max_scenes``: scenes of the root-CRLB (the first ``n`` of the test set);
    ``n_val``: validation scenes during training; ``scheme_n_test``: fewer test scenes for slow schemes;
    ``scheme_seconds``: wall-clock cap of one classical point's evaluation (it then stops after the first k scenes,
    at least one batch; the row's ``n_scenes`` says how many and ``metrics.time_capped`` is set).
    """

    n_test: int
    eval_batch: int
    n_train: int
    train_seconds: dict[str, float]
    max_epochs: int | None
    batch_size: int
    model_preset: str
    classical: tuple[str, ...]
    learned: tuple[str, ...]
    learning_rate: float = 1e-4
    crlb_max_scenes: int | None = None
    n_val: int = 0
    scheme_n_test: dict[str, int] = field(default_factory=dict)
    scheme_seconds: float | None = None

    def n_test_of(self, scheme: str) -> int:
        """Test scenes of ``scheme``: the first ``scheme_n_test[scheme]`` (slow estimators) or all ``n_test``."""
        return min(self.n_test, int(self.scheme_n_test.get(scheme, self.n_test)))

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)

    def train_budget(self, model: str) -> float:
        base = model.split("-")[0]
        return float(self.train_seconds.get(model, self.train_seconds.get(base, self.train_seconds.get("*", 60.0))))


BUDGETS: dict[str, Budget] = {
    # unit tests: a handful of scenes, a few training steps
    "tiny": Budget(n_test=6, eval_batch=6, n_train=16, train_seconds={"*": 20.0}, max_epochs=1,
                   batch_size=8, model_preset="tiny", classical=("music", "cs", "monostatic"),
                   learned=("dvqvae", "dvqvae-matched"), n_val=4, scheme_n_test={"ml": 2}),
    # the 2-core CPU demo: about 10 minutes for Fig. 6 (see benchmarks/results/demo.md). Every point of a scheme is
    # evaluated on the same first scheme_n_test test scenes (no wall-clock cap): the batched estimators' measured
    # cost (benchmarks/results/batched.md: s/scene at batch 64, quick) fits 200 scenes of monostatic and fewer of
    # MUSIC (0.2 s), CS (1.4 s) and ML (1.2 s) in the budget.
    "quick": Budget(n_test=200, eval_batch=64, n_train=4000, n_val=100, batch_size=32, model_preset="quick",
                    train_seconds={"dvqvae-matched": 150.0, "dvqvae": 60.0, "*": 30.0}, max_epochs=None,
                    classical=("music", "cs", "monostatic", "ml"),
                    learned=("dvqvae", "dvqvae-matched", "dvae", "cnn"),
                    crlb_max_scenes=200, scheme_n_test={"music": 40, "cs": 12, "ml": 12}),
    # the paper's scale (Section V: 16 000 training and 4 000 test scenes), for a GPU machine
    "paper": Budget(n_test=4000, eval_batch=20, n_train=16000, train_seconds={"*": 6 * 3600.0}, max_epochs=100,
                    batch_size=20, model_preset="paper",
                    classical=("music", "cs", "monostatic", "ml"), learned=("dvqvae", "dvqvae-matched", "dvae", "cnn"),
                    crlb_max_scenes=400, n_val=400,
                    scheme_n_test={"music": 500, "cs": 200, "monostatic": 500, "ml": 100}),
}


@dataclass
class Context:
    """Where an experiment run writes, what it runs on, and how it reports progress."""

    preset: str
    root: Path  # reports/<preset>
    base_cfg: SystemConfig
    budget: Budget
    seed: int = 0
    device: str = "cpu"
    force: bool = False
    force_training: bool = False  # retrain learned models even when a finished checkpoint exists
    progress: bool = True  # progress bars (training)
    log: Callable[[str], Any] = field(default=print)
    overrides: dict[str, Any] = field(default_factory=dict)  # Budget overrides requested on the command line
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def cache_dir(self) -> Path:
        """``reports/<preset>/cache`` (git-ignored): trained models, intermediate arrays."""
        return self.root / "cache"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"


def _printer(line: str) -> None:
    print(time.strftime("%H:%M:%S ") + line, flush=True)
    sys.stdout.flush()


def make_context(preset: str, *, root: str | Path | None = None, seed: int = 0, device: str = "cpu",
                 force: bool = False, log: Callable[[str], Any] | None = None, **budget_overrides: Any) -> Context:
    """The context of ``cfisac reproduce --preset <preset>``; ``budget_overrides`` replace :class:`Budget` fields."""
    if preset not in BUDGETS:
        raise ValueError(f"unknown experiment preset {preset!r}; choose one of {list(BUDGETS)}")
    import dataclasses

    budget = dataclasses.replace(BUDGETS[preset], **budget_overrides) if budget_overrides else BUDGETS[preset]
    if budget.n_test <= 0 or budget.eval_batch <= 0:
        raise ValueError(f"n_test and eval_batch must be positive, got {budget.n_test}, {budget.eval_batch}")
    root = Path(root) if root is not None else Path("reports") / preset
    return Context(preset=preset, root=root, base_cfg=SystemConfig.preset(preset), budget=budget, seed=seed,
                   device=device, force=force, log=log or _printer, overrides=dict(budget_overrides))


# ---------------------------------------------------------------------------------------------------- schemes
SCHEMES: dict[str, dict[str, Any]] = {
    "crlb": dict(label="root-CRLB", color="black", linestyle="-", marker=None, linewidth=2.0),
    "prior": dict(label="prior (area centre, v = 0)", color="0.55", linestyle=":", marker=None, linewidth=1.5),
    "monostatic": dict(label="monostatic BS [13]", color="tab:brown", linestyle="--", marker="v"),
    "music": dict(label="MUSIC distributed", color="tab:orange", linestyle="--", marker="s"),
    "cs": dict(label="CS fully distributed [25]", color="tab:green", linestyle="--", marker="^"),
    "ml": dict(label="ML fusion (beyond paper)", color="tab:purple", linestyle="-.", marker="D"),
    "cnn": dict(label="CNN centralized [1]", color="tab:cyan", linestyle="-", marker="x"),
    "dvae": dict(label="D-VAE", color="tab:blue", linestyle="-", marker="o"),
    "dvqvae": dict(label="D-VQVAE (paper)", color="tab:red", linestyle="-", marker="*"),
}
_FRONT_END_COLORS = {"matched": "magenta", "covariance": "olive"}


def scheme_style(scheme: str) -> dict[str, Any]:
    """Matplotlib style of a scheme (a learned ``name-frontend`` gets its own colour)."""
    if scheme in SCHEMES:
        return {k: v for k, v in SCHEMES[scheme].items() if k != "label"}
    base, _, fe = scheme.partition("-")
    style = {k: v for k, v in SCHEMES.get(base, dict(color="tab:gray", linestyle="-", marker="o")).items()
             if k != "label"}
    if fe:
        style.update(color=_FRONT_END_COLORS.get(fe, "tab:pink"), linestyle="-")
    return style


def scheme_label(scheme: str) -> str:
    if scheme in SCHEMES:
        return SCHEMES[scheme]["label"]
    base, _, fe = scheme.partition("-")
    if base in SCHEMES and fe:
        return f"{SCHEMES[base]['label'].replace(' (paper)', '')} ({fe} front end)"
    return scheme


def is_learned(scheme: str) -> bool:
    return scheme.split("-")[0] in ("dvqvae", "dvae", "cnn")


# ---------------------------------------------------------------------------------------------------- test data
def monostatic_config(cfg: SystemConfig) -> SystemConfig:
    """The paper's monostatic baseline [13] for the system ``cfg``: one full-duplex BS at (50, 0) whose transmit
    and receive ULAs are co-located (axes as the paper's transmit / receive arrays), everything else as ``cfg``."""
    (x0, x1), (y0, _) = cfg.area
    return cfg.replace(tx_positions=(((x0 + x1) / 2, y0),), rx_positions=(((x0 + x1) / 2, y0),),
                       tx_axes=((-1.0, 0.0),), rx_axes=((1.0, 0.0),))


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


# ---------------------------------------------------------------------------------------------------- CRLB
def _crlb_per_scene(ctx: Context, cfg: SystemConfig, n: int, crlb_options: dict[str, Any]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Root-CRLB per test scene (position m, velocity m/s) [n] float64 of the first ``n`` test scenes; NaN where
    the Fisher information is singular. Cached per process."""
    from .. import crlb as crlb_mod

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
        if _cacheable(ctx, cfg):
            x_chunk = evaluation_batch(ctx, cfg, lo, hi)["x"]
        else:  # only the transmit signals are needed: the same x as simulate_batch draws
            from ..waveform import transmit_signals

            x_chunk = transmit_signals(cfg, scenes.select(slice(lo, hi)), ctx.seed)
        rows = list(range(lo, hi))
        while rows:
            sel = torch.tensor(rows)
            try:
                bound = crlb_mod.crlb(cfg, scenes.select(sel), x_chunk[sel - lo], **crlb_options)
            except crlb_mod.SingularFisherError as err:
                del rows[err.scene]
                continue
            p, v = crlb_mod.root_crlb(bound)
            pos[sel], vel[sel] = p, v
            break
    ctx._cache[key] = (pos, vel)
    return pos, vel


def crlb_of_scenes(ctx: Context, cfg: SystemConfig, *, n: int | None = None, **crlb_options: Any) -> dict[str, Any]:
    """Root-CRLB (position m, velocity m/s) of the first ``n`` test scenes of ``cfg`` (default: ``n_test`` capped
    by ``crlb_max_scenes``), Eq. (24)-(28), averaged like the RMSE: ``sqrt(mean of CRLB_xx + CRLB_yy)``.

    Scenes whose Fisher information is singular (e.g. a target on every array axis) are left out and counted in
    ``metrics["crlb_singular"]``; medians are reported too (the mean of the bound is dominated by the few scenes
    with near-singular geometry). ``crlb_options`` (``clutter``, ``clock``) go to :func:`cfisac.crlb.crlb`.
    """
    n = ctx.budget.n_test if n is None else min(n, ctx.budget.n_test)
    if ctx.budget.crlb_max_scenes is not None:
        n = min(n, ctx.budget.crlb_max_scenes)
    pos, vel = _crlb_per_scene(ctx, cfg, n, crlb_options)
    ok = torch.isfinite(pos) & torch.isfinite(vel)
    if not bool(ok.any()):
        raise ValueError(f"the Fisher information is singular for all {n} test scenes")
    p, v = pos[ok], vel[ok]
    return {
        "root_crlb_position": float(p.pow(2).mean().sqrt()), "root_crlb_velocity": float(v.pow(2).mean().sqrt()),
        "n_scenes": int(ok.sum()),
        "metrics": {"crlb_position_median": float(p.median()), "crlb_velocity_median": float(v.median()),
                    "crlb_singular": int((~ok).sum())},
    }


# ---------------------------------------------------------------------------------------------------- schemes
def _accuracy_result(est_pos: torch.Tensor, est_vel: torch.Tensor, data: dict[str, torch.Tensor],
                     bits: float | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from ..metrics import accuracy, rmse_confidence_interval

    rep = accuracy(est_pos, est_vel, data["positions"], data["velocities"])
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
        "fronthaul_bits_per_ap": bits, "n_scenes": int(data["positions"].shape[0]), "metrics": metrics,
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


def _estimator_and_data(ctx: Context, scheme: str, cfg: SystemConfig, train_cfgs: list[SystemConfig] | None,
                        train_options: dict[str, Any] | None) -> tuple[Any, SystemConfig]:
    """The estimator of ``scheme`` and the config whose test scenes it sees (the monostatic BS has its own)."""
    from .. import estimators

    if is_learned(scheme):
        from .learned import learned_estimator

        return learned_estimator(ctx, scheme, train_cfgs or [cfg], eval_cfg=cfg, **(train_options or {})), cfg
    if scheme == "monostatic":
        mono = monostatic_config(cfg)
        a, b = evaluation_scenes(ctx, cfg, 4), evaluation_scenes(ctx, mono, 4)
        if not torch.equal(a.positions, b.positions):
            raise RuntimeError("monostatic test scenes differ from the cooperative ones (scene sampling changed?)")
        return estimators.create("monostatic", mono), mono
    return estimators.create(scheme, cfg), cfg


def evaluate_scheme(ctx: Context, scheme: str, cfg: SystemConfig, *, train_cfgs: list[SystemConfig] | None = None,
                    train_options: dict[str, Any] | None = None,
                    crlb_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Result columns of ``scheme`` on the test scenes of ``cfg`` (see :mod:`cfisac.experiments.store`).

    ``crlb``: the root-CRLB only. ``prior`` and classical estimators: ``cfisac.estimators.create(scheme, cfg)``
    (``monostatic`` on :func:`monostatic_config` of ``cfg``, same targets). Learned schemes (``dvqvae``, ``dvae``,
    ``cnn``, optionally ``-<front end>``): trained once per ``(train_cfgs, train_options)`` (default: ``[cfg]``) by
    :func:`cfisac.experiments.learned.ensure_trained` (cached under ``reports/<preset>/cache/models``), then
    evaluated on ``cfg``'s test scenes. The root-CRLB of the same scenes is attached to every accuracy result.
    """
    if scheme == "crlb":
        return crlb_of_scenes(ctx, cfg, **(crlb_options or {}))
    est, data_cfg = _estimator_and_data(ctx, scheme, cfg, train_cfgs, train_options)
    n = ctx.budget.n_test_of(scheme)
    pos, vel, sec = run_estimator(est, lambda lo, hi: evaluation_batch(ctx, data_cfg, lo, hi), n,
                                  ctx.budget.eval_batch, log=ctx.log,
                                  max_seconds=None if is_learned(scheme) else ctx.budget.scheme_seconds)
    capped = pos.shape[0] < n
    n = pos.shape[0]
    scenes = evaluation_scenes(ctx, cfg, n)
    bits = getattr(est, "fronthaul_bits_per_ap", None)
    res = _accuracy_result(pos, vel, {"positions": scenes.positions, "velocities": scenes.velocities},
                           None if bits is None else float(bits),
                           {"seconds_per_scene": sec, **({"time_capped": True} if capped else {})})
    try:
        bound = crlb_of_scenes(ctx, cfg, n=n, **(crlb_options or {}))
        res["root_crlb_position"] = bound["root_crlb_position"]
        res["root_crlb_velocity"] = bound["root_crlb_velocity"]
    except ValueError as err:
        res["metrics"]["crlb_error"] = str(err)
    return res


def estimates_of(ctx: Context, scheme: str, cfg: SystemConfig, n: int, **kw: Any) -> dict[str, torch.Tensor]:
    """Estimates of ``scheme`` on the first ``n`` test scenes of ``cfg`` (Fig. 10): true and estimated positions /
    velocities [n, Q, 2] float64 (estimates permuted to the Hungarian assignment of the true targets)."""
    from ..metrics import assign_targets

    est, data_cfg = _estimator_and_data(ctx, scheme, cfg, kw.get("train_cfgs"), kw.get("train_options"))
    pos, vel, _ = run_estimator(est, lambda lo, hi: evaluation_batch(ctx, data_cfg, lo, hi), n,
                                ctx.budget.eval_batch)
    scenes = evaluation_scenes(ctx, cfg, n)
    perm = assign_targets(pos, scenes.positions)
    idx = perm[..., None].expand(-1, -1, 2)
    return {"true_positions": scenes.positions, "true_velocities": scenes.velocities,
            "est_positions": torch.gather(pos, 1, idx), "est_velocities": torch.gather(vel, 1, idx)}
