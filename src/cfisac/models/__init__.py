"""The learned schemes: D-VQVAE (paper Fig. 3, Table II), the D-VAE ablation and the CNN centralized baseline [1].

``build_model(kind, cfg, mcfg, seed=0)`` assembles M :class:`ApSide` (front end, encoder, projector, quantizer) and
one :class:`CpuSide` (decoder) in a :class:`SplitModel`; ``ModelConfig.preset("paper" | "quick" | "tiny")`` gives
the hyper-parameters; ``ModelConfig(decoder="geometry")`` selects the geometry-aware CPU decoder of
:mod:`cfisac.models.geometry_decoder` instead of the paper's. AP input front ends are the package
:mod:`cfisac.models.front_ends`, a dict registry (:func:`register_front_end`, :func:`make_front_end`): ``"raw"`` is
the paper's. Trained models are used through ``cfisac.estimators.create("dvqvae", cfg, checkpoint=...)``
(:mod:`cfisac.models.estimator`).
"""

from .config import DECODERS, MODEL_KINDS, ModelConfig
from .front_ends import (
    FRONT_ENDS,
    FrontEnd,
    RawFrontEnd,
    TxFrontEnd,
    available_front_ends,
    complex_to_channels,
    make_front_end,
    model_front_end,
    register_front_end,
)
from .geometry_decoder import GeometryCpuTrainer, GeometryDecoder, GeometryOptions
from .split import (
    ApOutput,
    ApSide,
    CpuSide,
    LabelNormaliser,
    ModelOutput,
    SplitModel,
    build_ap_side,
    build_cpu_side,
    build_model,
    payload_shape,
    side_seed,
)
from .summary import macs_per_sample, meta_model, parameter_counts, summary_lines

__all__ = [
    "DECODERS", "FRONT_ENDS", "MODEL_KINDS", "ApOutput", "ApSide", "CpuSide", "FrontEnd", "GeometryCpuTrainer",
    "GeometryDecoder", "GeometryOptions", "LabelNormaliser", "ModelConfig", "ModelOutput", "RawFrontEnd",
    "SplitModel", "TxFrontEnd", "available_front_ends", "build_ap_side", "build_cpu_side", "build_model",
    "complex_to_channels", "macs_per_sample", "make_front_end", "meta_model", "model_front_end", "parameter_counts",
    "payload_shape", "register_front_end", "side_seed", "summary_lines",
]
