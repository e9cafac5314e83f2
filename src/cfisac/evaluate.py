"""``cfisac.evaluate``: the public name of the estimator evaluation used by ``cfisac evaluate`` and the benchmarks.

The code lives in :mod:`cfisac.experiments.evaluation`, the one evaluation module (any estimator on scenes
``0 .. n_test - 1`` of a seed: :func:`evaluate`; the experiments' schemes on their test scenes:
:func:`cfisac.experiments.evaluation.evaluate_scheme`); this module only re-exports the former's names.
"""

from __future__ import annotations

import os  # noqa: F401  (the atomic writers' os.replace, patched by tests through this name)

from .experiments.evaluation import CDF_QUANTILES, cdf_points, evaluate, plot_cdf, write_results

__all__ = ["CDF_QUANTILES", "cdf_points", "evaluate", "plot_cdf", "write_results"]
