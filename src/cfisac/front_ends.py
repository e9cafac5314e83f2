"""Former home of the AP front ends, now :mod:`cfisac.models.front_ends`; this module only re-exports its names for
the importers not yet updated."""

from .models.front_ends import (
    DEFAULT_CHUNK_CELLS,
    FAST_CHUNK_CELLS,
    FRONT_ENDS,
    NORMS,
    VELOCITY_PHASE_CELLS,
    CovarianceFrontEnd,
    FrontEnd,
    ImageFrontEnd,
    MatchedFrontEnd,
    RawFrontEnd,
    VelocityImageFrontEnd,
    area_extent,
    available_front_ends,
    complex_to_channels,
    create_front_end,
    front_end_output_shape,
    make_front_end,
    register_front_end,
)

__all__ = [
    "DEFAULT_CHUNK_CELLS", "FAST_CHUNK_CELLS", "FRONT_ENDS", "NORMS", "VELOCITY_PHASE_CELLS", "CovarianceFrontEnd",
    "FrontEnd", "ImageFrontEnd", "MatchedFrontEnd", "RawFrontEnd", "VelocityImageFrontEnd", "area_extent",
    "available_front_ends", "complex_to_channels", "create_front_end", "front_end_output_shape", "make_front_end",
    "register_front_end",
]
