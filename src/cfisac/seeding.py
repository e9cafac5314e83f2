"""Per-sample random streams: a sample is a pure function of (config, seed, index).

Every random draw of sample ``index`` comes from its own ``torch.Generator`` seeded from
``numpy.random.SeedSequence([seed, index, stream])``, so a sample is bit-identical whatever the batch it is drawn
in, the worker that draws it or the machine (draws happen on the CPU and are moved to the device afterwards).
``stream`` separates the independent draws of one sample (scene, transmit symbols, noise, ...).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["STREAMS", "sample_generator"]

# One stream id per kind of draw; never reuse or renumber (it would change every dataset).
STREAMS = {"scene": 0, "users": 1, "symbols": 2, "noise": 3, "clutter": 4, "clock": 5}


def sample_generator(seed: int, index: int, stream: str) -> torch.Generator:
    """The CPU generator of draw ``stream`` for sample ``index`` of the dataset with ``seed``."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"sample index must be a non-negative integer, got {index!r}")
    state = np.random.SeedSequence([int(seed), int(index), STREAMS[stream]]).generate_state(1, np.uint64)[0]
    g = torch.Generator(device="cpu")
    g.manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def complex_normal(shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """CN(0, 1) draws of ``shape`` (real and imaginary parts N(0, 1/2)) in complex ``dtype``."""
    return torch.randn(shape, generator=generator, dtype=dtype)  # complex randn: Re, Im ~ N(0, 1/2)
