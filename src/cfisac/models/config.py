"""Hyper-parameters of the learned schemes (paper Table II) and their named presets.

``ModelConfig.preset("paper")`` is Table II; the widths the paper does not give are our guesses, documented field by
field below (see ``benchmarks/results/learned.md`` for the parameter counts they give against the paper's 1.2 M per
encoder and 206 M for the decoder). ``quick`` is sized for the 2-core CPU demo at the ``quick`` system preset and
``tiny`` for unit tests at the ``tiny`` system preset.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DECODERS", "MODEL_KINDS", "ModelConfig"]

MODEL_KINDS = ("dvqvae", "dvae", "cnn")
DECODERS = ("generic", "geometry")


def _widths(v: Any) -> tuple[int, ...] | None:
    return None if v is None else tuple(int(c) for c in v)


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the D-VQVAE (Fig. 3, Table II), the D-VAE ablation and the CNN centralized baseline [1].

    Encoder (per receive AP, Section III-A): ``encoder_layers`` (L_cnn) 3D convolutions (kernel 4, stride 2,
    padding 1) of widths ``encoder_widths`` (the last is H = ``hidden_channels``; None: doubling up to H), then a
    residual block of ``encoder_res_layers`` (L_res) 3D convolutions (kernel 3, padding 1, H channels) with an
    identity mapping; ReLU everywhere. Quantizer (Section III-B): projector H -> D = ``code_dim`` (no bias, Eq. 13),
    ``num_codes`` (Nc) codewords, EMA decay ``ema_decay`` (gamma), commitment weight ``commitment_weight`` (omega),
    Laplace smoothing ``laplace_eps``; options ``dead_code_threshold`` (0: off) and ``kmeans_init``.
    Decoder (CPU, Section III-C): residual block of ``cpu_res_layers`` (L_res^c) convolutions over the M*D
    concatenated channels; transmit branch of ``tx_layers`` (L_cnn^t) downsampling convolutions of widths
    ``tx_widths`` (None: same rule as the encoder, ending at H) and ``tx_res_layers`` (L_res^t) residual layers;
    flattened outputs projected by Phi_fc^c to ``fc_cpu`` and by Phi_fc^t to ``fc_tx`` features, concatenated, a
    fully connected layer Phi_fc of ``fc_hidden`` units and the output layer Phi_out (4Q numbers).
    CNN centralized [1] (Section V-A): convolutions of widths ``cnn_channels`` with kernel ``cnn_kernel`` each followed
    by ReLU and max pooling by ``cnn_pool``, then fully connected layers ``cnn_fc`` and the output layer.
    Input: ``front_end`` (registry of :mod:`cfisac.models.front_ends`, "raw" = the paper) with ``front_end_options``,
    normalisation ``input_norm`` ("rms", "noise", "none").
    CPU decoder ``decoder``: ``"generic"`` (the paper's Eq. 16 decoder above, the faithful model) or ``"geometry"``
    (:mod:`cfisac.models.geometry_decoder`: per-AP maps over the area, fused, heat-map peaks and the bistatic
    velocity least squares; D-VQVAE and D-VAE only, with a front end on the position grid, ``"image"`` or
    ``"velocity-image"``), with ``decoder_options`` (the fields of
    :class:`cfisac.models.geometry_decoder.GeometryOptions`; empty for ``"generic"``).
    """

    encoder_layers: int = 2
    encoder_res_layers: int = 2
    hidden_channels: int = 128
    encoder_widths: tuple[int, ...] | None = None
    code_dim: int = 512
    num_codes: int = 32
    ema_decay: float = 0.99
    commitment_weight: float = 0.25
    laplace_eps: float = 1e-5
    dead_code_threshold: float = 0.0
    kmeans_init: bool = False
    tx_layers: int = 2
    tx_res_layers: int = 2
    cpu_res_layers: int = 1
    tx_widths: tuple[int, ...] | None = None
    fc_cpu: int = 8
    fc_tx: int = 8
    fc_hidden: int = 256
    cnn_channels: tuple[int, ...] = (16, 32)
    cnn_kernel: int = 5
    cnn_pool: int = 2
    cnn_fc: tuple[int, ...] = (256, 256, 256)
    front_end: str = "raw"
    front_end_options: dict[str, Any] = field(default_factory=dict)
    input_norm: str = "rms"
    decoder: str = "generic"
    decoder_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("encoder_widths", "tx_widths"):
            object.__setattr__(self, name, _widths(getattr(self, name)))
        object.__setattr__(self, "cnn_channels", _widths(self.cnn_channels))
        object.__setattr__(self, "cnn_fc", _widths(self.cnn_fc))
        object.__setattr__(self, "front_end_options", dict(self.front_end_options))
        if not isinstance(self.decoder_options, dict):
            raise ValueError(f"decoder_options must be a dict, got {type(self.decoder_options).__name__}")
        object.__setattr__(self, "decoder_options", dict(self.decoder_options))
        self.check()

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """``paper`` (Table II), ``quick`` (CPU demo at the quick system preset), ``tiny`` (unit tests)."""
        presets: dict[str, dict[str, Any]] = {
            # Table II. Unspecified widths, our guesses: first encoder / transmit-branch width H/4 = 32 (it makes
            # the encoder 1.15 M parameters + 66 k projector = the paper's "about 1.2 M", 4.9 MB with the codebook;
            # H/2 would give 1.48 M); Phi_fc^c and Phi_fc^t of 8 outputs each and Phi_fc of 256 units (the decoder
            # is dominated by Phi_fc^c: 1024 * 16384 inputs per output unit; 8 + 8 gives 198 M against the paper's
            # 206 M, no equal width gives 206 M exactly).
            "paper": dict(encoder_widths=(32, 128), tx_widths=(32, 128)),
            "quick": dict(
                encoder_res_layers=1, hidden_channels=32, encoder_widths=(16, 32), code_dim=32, num_codes=32,
                tx_res_layers=1, tx_widths=(16, 32), fc_cpu=64, fc_tx=64, fc_hidden=128, cnn_channels=(8, 16),
            ),
            "tiny": dict(
                encoder_res_layers=1, hidden_channels=8, encoder_widths=(4, 8), code_dim=8, num_codes=16,
                tx_res_layers=1, tx_widths=(4, 8), fc_cpu=16, fc_tx=16, fc_hidden=32, cnn_channels=(4, 8),
                cnn_fc=(32, 32, 32),
            ),
        }
        if name not in presets:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def replace(self, **changes: Any) -> ModelConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ derived
    @property
    def encoder_channel_list(self) -> tuple[int, ...]:
        """Output widths of the L_cnn downsampling convolutions (the last is H)."""
        if self.encoder_widths is not None:
            return self.encoder_widths
        return tuple(max(1, self.hidden_channels // 2 ** (self.encoder_layers - 1 - k))
                     for k in range(self.encoder_layers))

    @property
    def tx_channel_list(self) -> tuple[int, ...]:
        if self.tx_widths is not None:
            return self.tx_widths
        return tuple(max(1, self.hidden_channels // 2 ** (self.tx_layers - 1 - k)) for k in range(self.tx_layers))

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise ValueError(f"ModelConfig JSON must be an object, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) in JSON: {sorted(unknown)}")
        return cls(**d)

    # ------------------------------------------------------------------ validation
    def check(self) -> None:
        """Raise ``ValueError`` naming the offending field."""
        for name in ("encoder_layers", "tx_layers", "hidden_channels", "code_dim", "fc_cpu", "fc_tx", "fc_hidden",
                     "cnn_kernel", "cnn_pool"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("encoder_res_layers", "tx_res_layers", "cpu_res_layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        nc = self.num_codes
        if not isinstance(nc, int) or nc < 2 or nc > 1024 or nc & (nc - 1):
            raise ValueError(f"num_codes (Nc) must be a power of two in 2..1024, got {nc!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay (gamma) must lie in [0, 1), got {self.ema_decay}")
        if self.commitment_weight < 0 or self.laplace_eps <= 0 or self.dead_code_threshold < 0:
            raise ValueError("commitment_weight and dead_code_threshold must be >= 0, laplace_eps > 0")
        for name, n in (("encoder_widths", self.encoder_layers), ("tx_widths", self.tx_layers)):
            w = getattr(self, name)
            if w is not None and (len(w) != n or any(c < 1 for c in w)):
                raise ValueError(f"{name} must list {n} positive widths, got {w}")
        if self.encoder_widths is not None and self.encoder_widths[-1] != self.hidden_channels:
            raise ValueError(f"encoder_widths must end with hidden_channels H = {self.hidden_channels}, "
                             f"got {self.encoder_widths}")
        if not self.cnn_channels or any(c < 1 for c in self.cnn_channels) or any(c < 1 for c in self.cnn_fc):
            raise ValueError("cnn_channels must be non-empty and all widths positive")
        if self.cnn_kernel % 2 == 0:
            raise ValueError(f"cnn_kernel must be odd (same padding), got {self.cnn_kernel}")
        if self.input_norm not in ("rms", "noise", "none"):
            raise ValueError(f"input_norm must be 'rms', 'noise' or 'none', got {self.input_norm!r}")
        if not isinstance(self.front_end, str) or not self.front_end:
            raise ValueError(f"front_end must be a registered front-end name, got {self.front_end!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {list(DECODERS)}, got {self.decoder!r}")
        if self.decoder == "generic" and self.decoder_options:
            raise ValueError(f"decoder_options {sorted(self.decoder_options)} need decoder='geometry'")
        if self.decoder == "geometry":
            from .geometry_decoder import GEOMETRY_FRONT_ENDS, GeometryOptions

            if self.front_end not in GEOMETRY_FRONT_ENDS:
                raise ValueError(f"decoder='geometry' needs a front end on the position grid of the area "
                                 f"{list(GEOMETRY_FRONT_ENDS)}, got front_end={self.front_end!r}")
            GeometryOptions.from_dict(self.decoder_options)
