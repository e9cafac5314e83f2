"""The helpers of ``benchmarks/bench_front_ends.py`` that these explorations share (the cached front-end features,
their model wrapper and the test RMSE of the quantized messages), loaded from that file by its path relative to this
one: ``from front_end_bench import CachedFrontEnd`` works from this folder without touching ``sys.path``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parent.parent / "bench_front_ends.py"


def _load():
    if "bench_front_ends" in sys.modules:  # already imported (e.g. benchmarks/ is on the path)
        return sys.modules["bench_front_ends"]
    spec = importlib.util.spec_from_file_location("bench_front_ends", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_front_ends"] = module
    spec.loader.exec_module(module)
    return module


_bench = _load()
CachedFrontEnd = _bench.CachedFrontEnd
message_rmse = _bench.message_rmse
front_end_modules = _bench.front_end_modules

__all__ = ["CachedFrontEnd", "front_end_modules", "message_rmse"]
