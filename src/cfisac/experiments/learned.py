"""Learned schemes in the experiments: train once per training spec (cached, resumable), then load the estimator.

A learned scheme (:class:`cfisac.experiments.scheme.Scheme`) is a model kind ``"dvqvae"``, ``"dvae"`` or ``"cnn"``
with an AP front end and a CPU decoder (``"dvqvae"``: the paper's raw front end and generic decoder;
``"dvqvae-matched"``, ``"dvqvae-image-geometry"``: ours). Its training spec (:func:`training_spec`) holds
everything the trained weights depend on: the model kind and :class:`cfisac.models.config.ModelConfig`, the
training system configs (one, or several whose scenes are pooled: the union of a sweep's configurations), the scene
counts and budgets of the preset, the learning rate and the seed.
The checkpoint lives in ``reports/<preset>/cache/models/<scheme>-<spec hash>/``; a second process asking for the same
spec waits on a lock file instead of training it again (job arrays), and a killed training resumes from its last
checkpoint.

All calls into the training code go through :func:`_train` and :func:`_load_estimator` (the only two places that
know the API of :mod:`cfisac.train`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import SystemConfig
from .common import Context
from .scheme import Scheme, as_scheme
from .store import spec_hash

__all__ = ["ensure_trained", "learned_estimator", "learned_scheme", "model_config", "training_info", "training_spec"]


def learned_scheme(scheme: str | Scheme) -> Scheme:
    """The :class:`Scheme` of a learned scheme (name or scheme); ``ValueError`` for any other."""
    s = as_scheme(scheme)
    if not s.learned:
        raise ValueError(f"scheme {str(s)!r} is not a learned scheme (dvqvae, dvae or cnn [-<front end>][-<decoder>])")
    return s


def model_config(ctx: Context, scheme: str | Scheme, **overrides: Any):
    """The :class:`ModelConfig` of ``scheme`` at the preset's model size (``ModelConfig.preset`` defaults, the
    scheme's front end and decoder, the budget's ``scheme_model_options`` of it), with ``overrides``."""
    from ..models.config import ModelConfig

    s = learned_scheme(scheme)
    return ModelConfig.preset(ctx.budget.model_preset,
                              **{**s.model_options(), **ctx.budget.model_options_of(s), **overrides})


def training_spec(ctx: Context, scheme: str | Scheme, cfgs: Sequence[SystemConfig], *,
                  model_overrides: dict[str, Any] | None = None, learning_rate: float | None = None) -> dict[str, Any]:
    """Everything the trained weights of ``scheme`` depend on (JSON-able; hashed into the checkpoint name)."""
    if not cfgs:
        raise ValueError("a learned scheme needs at least one training config")
    power_pool(cfgs)  # several configs: they must differ in the transmit power only
    s = learned_scheme(scheme)
    b = ctx.budget
    return {
        "kind": s.kind, "model": model_config(ctx, scheme, **(model_overrides or {})).to_dict(),
        "train_cfgs": [c.to_dict() for c in cfgs], "n_train": b.n_train, "n_val": b.n_val,
        "train_seconds": b.train_budget(scheme), "max_epochs": b.max_epochs,
        "batch_size": b.batch_size_of(s),
        "learning_rate": b.learning_rate_of(s) if learning_rate is None else learning_rate,
        "seed": ctx.seed,
        # only where a recipe sets one: the specs (and checkpoint hashes) of the other schemes stay as they were
        **({"lr_schedule": b.recipe_of(s).lr_schedule} if b.recipe_of(s).lr_schedule is not None else {}),
    }


def checkpoint_dir(ctx: Context, scheme: str | Scheme, spec: dict[str, Any]) -> Path:
    return ctx.cache_dir / "models" / f"{scheme}-{spec_hash(spec)}"


class _Lock:
    """Exclusive advisory lock on ``path`` (blocks while another process trains the same model)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a+")
        fcntl.flock(self._f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


def ensure_trained(ctx: Context, scheme: str | Scheme, cfgs: Sequence[SystemConfig], *,
                   model_overrides: dict[str, Any] | None = None, learning_rate: float | None = None) -> Path:
    """The checkpoint directory of ``scheme`` trained on ``cfgs`` under the context's budget (trained if needed).

    A finished training leaves ``done.json`` (spec, wall time, final metrics) next to the checkpoint.
    ``ctx.force_training`` (``--retrain``): the first call of this process for a spec deletes the cached run and
    trains it from scratch (not a resume of the cached checkpoint); later calls (the other points of a sweep that
    share the model) use that new model.
    """
    spec = training_spec(ctx, scheme, cfgs, model_overrides=model_overrides, learning_rate=learning_rate)
    out = checkpoint_dir(ctx, scheme, spec)
    done = out / "done.json"
    retrained = ctx._cache.setdefault("retrained_models", set())
    fresh = ctx.force_training and str(out) not in retrained
    if done.is_file() and not fresh:
        return out
    with _Lock(out.with_name(out.name + ".lock")):
        if done.is_file() and not fresh:  # trained by another process while we waited
            return out
        if fresh and out.exists():
            ctx.log(f"--retrain: deleting the cached {scheme} run {out} to train it from scratch")
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
        ctx.log(f"training {scheme} on {len(cfgs)} config(s), budget {spec['train_seconds']:.0f} s -> {out}")
        t0 = time.perf_counter()
        info = _train(ctx, scheme, list(cfgs), spec, out)
        info = {"wall_s": time.perf_counter() - t0, **(info or {})}
        from ..data import remove_stale_temporaries

        remove_stale_temporaries(out, r"\.done\.(?P<pid>\d+)")
        tmp = done.with_name(f".done.{os.getpid()}")
        tmp.write_text(json.dumps(info, indent=1, sort_keys=True, default=str))
        os.replace(tmp, done)
        retrained.add(str(out))
        ctx.log(f"trained {scheme} in {info['wall_s']:.0f} s")
    return out


def training_info(ckpt: Path) -> dict[str, Any]:
    """The ``done.json`` of a trained checkpoint (wall time, history, final metrics)."""
    p = ckpt / "done.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def learned_estimator(ctx: Context, scheme: str | Scheme, cfgs: Sequence[SystemConfig], *, eval_cfg: SystemConfig,
                      model_overrides: dict[str, Any] | None = None, learning_rate: float | None = None) -> Any:
    """A trained estimator of ``scheme`` (``cfisac.estimators`` interface) for evaluation on ``eval_cfg``."""
    ckpt = ensure_trained(ctx, scheme, cfgs, model_overrides=model_overrides, learning_rate=learning_rate)
    return _load_estimator(ctx, scheme, eval_cfg, ckpt)


# ---------------------------------------------------------------------------------------------------- adapters
def _train(ctx: Context, scheme: str | Scheme, cfgs: list[SystemConfig], spec: dict[str, Any],
           out: Path) -> dict[str, Any]:
    """Run :func:`cfisac.train.train` for ``spec`` into ``out`` (resuming a killed run found there)."""
    from ..models.config import ModelConfig
    from ..train import TrainConfig, train

    pool = power_pool(cfgs)
    epochs = spec["max_epochs"] if spec["max_epochs"] is not None else 100_000  # the time budget stops it
    tcfg = TrainConfig(kind=spec["kind"], epochs=int(epochs), batch_size=int(spec["batch_size"]),
                       lr=float(spec["learning_rate"]), n_train=int(spec["n_train"]), n_val=int(spec["n_val"]),
                       seed=int(spec["seed"]), minutes=float(spec["train_seconds"]) / 60.0, device=ctx.device,
                       power_dbm_pool=pool, lr_schedule=spec.get("lr_schedule", "constant"))
    mcfg = ModelConfig.from_dict(spec["model"])
    if mcfg.front_end != "raw":  # a physics front end: keep its outputs (same steps, less time; not in the spec)
        tcfg = dataclasses.replace(tcfg, feature_cache_gb=float(ctx.budget.feature_cache_gb))
    resume = (out / "latest.json").is_file()
    res = train(cfgs[0], mcfg, tcfg, out, resume=resume, progress=ctx.progress, log=ctx.log)  # cfgs[0]: shapes
    last = res.history[-1] if res.history else {}
    return {"finished": res.finished, "epochs": len(res.history), "final": last,
            "fronthaul_bits_per_ap": res.model.fronthaul_bits_per_ap, "history": res.history}


def power_pool(cfgs: Sequence[SystemConfig]) -> tuple[float, ...]:
    """The :attr:`cfisac.train.TrainConfig.power_dbm_pool` that trains on every config of ``cfgs`` (empty for
    one config): they must differ in ``power_dbm`` only (``ValueError`` naming the first other field that differs);
    training runs on ``cfgs[0]`` with its samples cycling through their powers."""
    if len(cfgs) == 1:
        return ()
    base = cfgs[0].to_dict()
    for c in cfgs[1:]:
        other = [k for k, v in c.to_dict().items() if k != "power_dbm" and v != base[k]]
        if other:
            raise ValueError(f"pooled training needs configs that differ in power_dbm only; {other[0]} differs "
                             f"({base[other[0]]!r} vs {c.to_dict()[other[0]]!r})")
    return tuple(float(c.power_dbm) for c in cfgs)


def _load_estimator(ctx: Context, scheme: str | Scheme, cfg: SystemConfig, ckpt: Path) -> Any:
    """The registry's learned estimator (online execution, Algorithm 2: every AP emits its fronthaul message, the
    CPU parses, dequantizes and decodes), from the latest checkpoint of the run directory ``ckpt``."""
    from .. import estimators

    return estimators.create(learned_scheme(scheme).kind, cfg, checkpoint=str(ckpt), device=ctx.device,
                             batch_size=max(1, ctx.budget.eval_batch))
