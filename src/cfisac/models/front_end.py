"""Former module of the model's front ends, now :mod:`cfisac.models.front_ends`; this module only re-exports its
names for the importers not yet updated."""

from .front_ends import (
    FRONT_ENDS,
    NORMS,
    FrontEnd,
    RawFrontEnd,
    TxFrontEnd,
    available_front_ends,
    complex_to_channels,
    make_front_end,
    model_front_end,
    register_front_end,
)

__all__ = [
    "FRONT_ENDS", "NORMS", "FrontEnd", "RawFrontEnd", "TxFrontEnd", "available_front_ends", "complex_to_channels",
    "make_front_end", "model_front_end", "register_front_end",
]
