"""What every experiment module shares: the run :class:`Context` (where it writes, its seed and device, its
progress log and per-process caches), the per-preset :class:`Budget` s (scenes, training budgets, schemes) and the
operating point (the preset's P0, the monostatic baseline's system).

Schemes are in :mod:`cfisac.experiments.scheme`, their evaluation on the test scenes in
:mod:`cfisac.experiments.evaluation`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import SystemConfig
from .scheme import Scheme, as_scheme

__all__ = [
    "BUDGETS", "OPERATING_POWER", "Budget", "Context", "Recipe", "make_context", "monostatic_config",
    "operating_config", "operating_power", "titled",
]

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
class Recipe:
    """How one learned scheme trains where it differs from its :class:`Budget`: ``model_options``
    (:class:`cfisac.models.config.ModelConfig` fields over the model preset, e.g. the quantizer's initialisation),
    ``learning_rate`` and ``batch_size`` (None: the budget's), ``lr_schedule``
    (:attr:`cfisac.train.TrainConfig.lr_schedule`; None: constant, the paper's), ``lowest_power_every``: where Fig. 6
    trains one model at P0 (``Budget.power_training="reference"``), every k-th training sample is simulated at the
    figure's lowest power instead (:attr:`cfisac.train.TrainConfig.power_dbm_pool` = (P0,) * (k - 1) + (lowest,);
    0: all at P0): a model that also sees maps without a detectable target learns to report the prior there."""

    model_options: dict[str, Any] = field(default_factory=dict)
    learning_rate: float | None = None
    batch_size: int | None = None
    lr_schedule: str | None = None
    lowest_power_every: int = 0

    def __post_init__(self) -> None:
        k = self.lowest_power_every
        if not isinstance(k, int) or isinstance(k, bool) or k < 0 or k == 1:
            raise ValueError(f"Recipe.lowest_power_every must be 0 (off) or an integer >= 2, got {k!r}")


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
    at least one batch; the row's ``n_scenes`` says how many and ``metrics.time_capped`` is set);
    ``learning_rate``: of every learned scheme (the paper's 1e-4); ``recipes``: the :class:`Recipe` of a learned
    scheme that trains otherwise, by scheme name; ``feature_cache_gb``: memory for the training and validation
    samples' front-end outputs of a learned scheme with a physics front end (``TrainConfig.feature_cache_gb``:
    computed once, reused in later epochs, same weights; the ``raw`` front end, a scaling, is not cached);
    ``power_training``: how Fig. 6's learned models train where one model serves every power (the CPU presets):
    ``"reference"`` once at the operating power P0, ``"pooled"`` once on samples cycling through all of Fig. 6's
    powers (:attr:`cfisac.train.TrainConfig.power_dbm_pool`); the ``paper`` preset trains one model per power.
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
    recipes: dict[str, Recipe] = field(default_factory=dict)
    feature_cache_gb: float = 0.0
    power_training: str = "reference"

    def n_test_of(self, scheme: str) -> int:
        """Test scenes of ``scheme``: the first ``scheme_n_test[scheme]`` (slow estimators) or all ``n_test``."""
        return min(self.n_test, int(self.scheme_n_test.get(scheme, self.n_test)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def train_budget(self, scheme: str | Scheme) -> float:
        """Training seconds of a learned scheme: ``train_seconds`` of its name, else of its model kind, else
        ``"*"`` (default 60 s)."""
        s = as_scheme(scheme)
        t = self.train_seconds
        return float(t.get(str(s), t.get(s.kind, t.get("*", 60.0))))

    def recipe_of(self, scheme: str | Scheme) -> Recipe:
        """The :class:`Recipe` of a learned scheme (the default one: the budget's settings)."""
        return self.recipes.get(str(as_scheme(scheme)), Recipe())

    def learning_rate_of(self, scheme: str | Scheme) -> float:
        r = self.recipe_of(scheme)
        return float(self.learning_rate if r.learning_rate is None else r.learning_rate)

    def batch_size_of(self, scheme: str | Scheme) -> int:
        r = self.recipe_of(scheme)
        return int(self.batch_size if r.batch_size is None else r.batch_size)

    def model_options_of(self, scheme: str | Scheme) -> dict[str, Any]:
        """The ModelConfig fields a scheme's recipe sets over the model preset (empty: the preset's)."""
        return dict(self.recipe_of(scheme).model_options)


# The training recipe of the geometry-aware scheme, as measured in benchmarks/results/geometry_decoder.md (run E7:
# noise-normalised image front end, k-means codebook initialisation with dead-code restarts, velocity losses x4,
# each AP's bistatic velocities from its latent grid, learning rate 2e-3, batch 8: the most steps per CPU second) and
# in the demo's budget (benchmarks/results/demo.md); one training sample in 8 at Fig. 6's lowest power (10 dBm at
# quick: no detectable target), without which the longer-trained model reports noise peaks below P0 (worse than the
# prior at 10-30 dBm; benchmarks/results/geometry_decoder.md, "Training samples without a detectable target").
GEOMETRY_RECIPES = {"dvqvae-image-geometry": Recipe(
    model_options={"input_norm": "noise", "kmeans_init": True, "dead_code_threshold": 1.0,
                   "decoder_options": {"velocity_weight": 4.0, "velocity_branch": "latent", "prior_fallback": True}},
    learning_rate=2e-3, batch_size=8, lowest_power_every=8)}

BUDGETS: dict[str, Budget] = {
    # unit tests: a handful of scenes, a few training steps
    "tiny": Budget(n_test=6, eval_batch=6, n_train=16, train_seconds={"*": 20.0}, max_epochs=1,
                   batch_size=8, model_preset="tiny", classical=("music", "cs", "monostatic"),
                   learned=("dvqvae", "dvqvae-image-geometry"), n_val=4, scheme_n_test={"ml": 2},
                   recipes=dict(GEOMETRY_RECIPES), feature_cache_gb=0.1, power_training="pooled"),
    # the 2-core CPU demo: about 12 minutes for Fig. 6 (see benchmarks/results/demo.md). Every point of a scheme is
    # evaluated on the same first scheme_n_test test scenes (no wall-clock cap): the batched estimators' measured
    # CPU cost per scene at batch 64, quick, one thread (benchmarks/results/batched.md, ml.md), in two worker
    # processes (cfisac reproduce --workers auto), fits 200 scenes of MUSIC (0.09-0.11 s) and monostatic (0.07 s)
    # and fewer of CS (0.57-0.68 s) and ML (0.32-0.59 s) in the budget.
    # Learned: the paper's D-VQVAE (raw Y_m, generic decoder) and our geometry-aware one (image front end, geometry
    # decoder: the largest training budget, it needs minutes to move off the prior), the D-VAE and the CNN.
    "quick": Budget(n_test=200, eval_batch=64, n_train=4000, n_val=100, batch_size=32, model_preset="quick",
                    train_seconds={"dvqvae-image-geometry": 240.0, "dvqvae-matched": 150.0, "dvqvae": 60.0,
                                   "*": 30.0}, max_epochs=None,
                    classical=("music", "cs", "monostatic", "ml"),
                     learned=("dvqvae", "dvqvae-image-geometry", "dvae", "cnn"),
                    crlb_max_scenes=200, scheme_n_test={"cs": 24, "ml": 100},
                    recipes=dict(GEOMETRY_RECIPES), feature_cache_gb=1.5),
    # the paper's scale (Section V: 16 000 training and 4 000 test scenes), for a GPU machine
    "paper": Budget(n_test=4000, eval_batch=20, n_train=16000, train_seconds={"*": 6 * 3600.0}, max_epochs=100,
                    batch_size=20, model_preset="paper",
                    classical=("music", "cs", "monostatic", "ml"),
                    learned=("dvqvae", "dvqvae-image-geometry", "dvqvae-matched", "dvae", "cnn"),
                    crlb_max_scenes=400, n_val=400,
                    scheme_n_test={"music": 500, "cs": 200, "monostatic": 500, "ml": 100},
                    recipes=dict(GEOMETRY_RECIPES)),
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
    workers: int = 1  # processes for the classical / prior / root-CRLB points (cfisac.experiments.workers)
    worker_threads: int = 1  # torch threads of each worker process
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def settings(self) -> dict[str, Any]:
        """What a worker process needs to rebuild this context (:func:`context_from_settings`): picklable."""
        return {"preset": self.preset, "root": str(self.root), "seed": self.seed, "device": self.device,
                "overrides": dict(self.overrides)}

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
    budget = dataclasses.replace(BUDGETS[preset], **budget_overrides) if budget_overrides else BUDGETS[preset]
    if budget.n_test <= 0 or budget.eval_batch <= 0:
        raise ValueError(f"n_test and eval_batch must be positive, got {budget.n_test}, {budget.eval_batch}")
    root = Path(root) if root is not None else Path("reports") / preset
    return Context(preset=preset, root=root, base_cfg=SystemConfig.preset(preset), budget=budget, seed=seed,
                   device=device, force=force, log=log or _printer, overrides=dict(budget_overrides))


_CONTEXTS: dict[str, Context] = {}


def context_from_settings(settings: dict[str, Any], log: Callable[[str], Any]) -> Context:
    """The context of :meth:`Context.settings` in a worker process, one per settings and process (its simulated
    test sets are reused by the later points the worker runs); ``log`` replaces its printer."""
    key = repr(sorted(settings.items()))
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        ctx = _CONTEXTS[key] = make_context(settings["preset"], root=settings["root"], seed=settings["seed"],
                                            device=settings["device"], **settings["overrides"])
    ctx.log = log
    return ctx


# ---------------------------------------------------------------------------------------------------- systems
def monostatic_config(cfg: SystemConfig) -> SystemConfig:
    """The paper's monostatic baseline [13] for the system ``cfg``: one full-duplex BS at (50, 0) whose transmit
    and receive ULAs are co-located (axes as the paper's transmit / receive arrays), everything else as ``cfg``."""
    (x0, x1), (y0, _) = cfg.area
    return cfg.replace(tx_positions=(((x0 + x1) / 2, y0),), rx_positions=(((x0 + x1) / 2, y0),),
                       tx_axes=((-1.0, 0.0),), rx_axes=((1.0, 0.0),))

