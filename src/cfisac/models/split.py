"""The learned schemes as two kinds of objects that exchange only what Algorithms 1 and 2 say (Section IV).

- :class:`ApSide` (one per receive AP m): front end, encoder E_m (Eq. 12), projector Phi_vq,m (Eq. 13) and
  quantizer with codebook C_m (Eq. 14-15, 18-21). Its *payload* is [B, D, d1, d2, d3] float32: the quantized
  features (D-VQVAE), the continuous features (D-VAE) or the front end's output (CNN centralized: no encoder).
  Online (Algorithm 2) it emits one message per sample: the bit-packed indices (D-VQVAE) or the payload as
  little-endian float32 bytes (D-VAE, CNN).
- :class:`CpuSide`: the decoder (Eq. 16), and for the D-VQVAE a copy of every AP's codebook, received once after
  training (Section IV-B), to dequantize the index messages.
- :class:`SplitModel`: M AP sides and one CPU side with an in-graph ``forward`` (straight-through estimator inside
  the graph), used for evaluation and by data-parallel training; ``encode`` / ``decode`` are Algorithm 2.

Every side is built under its own seed (:func:`side_seed`), so a process that builds only AP m (a distributed rank)
gets the same initial parameters as the in-process model.

Labels (Section III-C, canonical target order of :mod:`cfisac.scene`: ascending x, ties by y):
``psi = [g_1x, g_1y, ..., g_Qx, g_Qy, v_1x, v_1y, ..., v_Qx, v_Qy]``, min-max normalised per entry to [0, 1] with
the minima and maxima of the training labels (:class:`LabelNormaliser`, stored with the checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..config import SystemConfig
from ..quantize import VectorQuantizer, message_nbytes, pack_index_batch, unpack_index_batch
from .cnn import CnnCentralized
from .config import MODEL_KINDS, ModelConfig
from .dvqvae import Encoder, FusionDecoder, downsampled_grid
from .front_ends import FrontEnd, model_front_end
from .geometry_decoder import GeometryDecoder

__all__ = [
    "ApOutput", "ApSide", "CpuSide", "LabelNormaliser", "ModelOutput", "SplitModel", "build_ap_side",
    "build_cpu_side", "build_model", "payload_shape", "side_seed",
]

_ROLE = {"cpu": 0, "ap": 1}


def side_seed(seed: int, role: str, index: int = 0) -> int:
    """Initialisation seed of one side (``role`` "ap" with its index m, or "cpu") of a model built with ``seed``."""
    state = np.random.SeedSequence([int(seed), 7919, _ROLE[role], int(index)]).generate_state(1, np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


def _check_kind(kind: str) -> None:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {list(MODEL_KINDS)}")


def payload_shape(kind: str, cfg: SystemConfig, mcfg: ModelConfig) -> tuple[int, int, int, int]:
    """Per-sample shape (C, d1, d2, d3) of what one AP sends during training (see the module docstring)."""
    _check_kind(kind)
    fe = model_front_end(cfg, mcfg)
    if kind == "cnn":
        return fe.output_shape
    grid = downsampled_grid(fe.spatial_shape, mcfg.encoder_layers, f"front end {mcfg.front_end!r} output")
    return (mcfg.code_dim, *grid)


# ---------------------------------------------------------------------------------------------------- labels
@dataclass
class LabelNormaliser:
    """Min-max normalisation of psi [.., 4Q] to [0, 1] (Section IV); ``minimum`` / ``maximum`` [4Q] float64."""

    minimum: torch.Tensor
    maximum: torch.Tensor

    @classmethod
    def fit(cls, labels: torch.Tensor) -> LabelNormaliser:
        labels = labels.double().reshape(-1, labels.shape[-1])
        return cls(labels.min(0).values, labels.max(0).values)

    @property
    def span(self) -> torch.Tensor:
        return (self.maximum - self.minimum).clamp_min(1e-12)

    def normalise(self, psi: torch.Tensor) -> torch.Tensor:
        return ((psi.double() - self.minimum.to(psi.device)) / self.span.to(psi.device)).to(torch.float32)

    def denormalise(self, psi_n: torch.Tensor) -> torch.Tensor:
        return psi_n.double() * self.span.to(psi_n.device) + self.minimum.to(psi_n.device)

    def to_dict(self) -> dict[str, list[float]]:
        return {"minimum": self.minimum.tolist(), "maximum": self.maximum.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> LabelNormaliser:
        try:
            lo, hi = torch.tensor(d["minimum"], dtype=torch.float64), torch.tensor(d["maximum"], dtype=torch.float64)
        except (KeyError, TypeError) as err:
            raise ValueError(f"label normaliser must have 'minimum' and 'maximum' lists: {err}") from err
        if lo.shape != hi.shape or lo.dim() != 1:
            raise ValueError("label normaliser minimum and maximum must be lists of equal length")
        return cls(lo, hi)


# ---------------------------------------------------------------------------------------------------- AP side
@dataclass
class ApOutput:
    """What one AP's training forward produces: ``payload`` [B, C, d1, d2, d3] float32 (what it sends; quantized
    features with the straight-through gradient to the encoder output), ``commitment`` (scalar, omega applied, 0
    without a quantizer), ``indices`` [B, L] or None, batch ``perplexity`` / ``usage`` (NaN without a quantizer)."""

    payload: torch.Tensor
    commitment: torch.Tensor
    indices: torch.Tensor | None = None
    perplexity: float = float("nan")
    usage: float = float("nan")


class ApSide(nn.Module):
    """Receive AP m of a learned scheme (``kind`` "dvqvae", "dvae" or "cnn"); see the module docstring."""

    def __init__(self, kind: str, cfg: SystemConfig, mcfg: ModelConfig, index: int, *, seed: int = 0) -> None:
        super().__init__()
        _check_kind(kind)
        if not 0 <= index < cfg.n_rx:
            raise ValueError(f"AP index {index} out of range for {cfg.n_rx} receive APs")
        self.kind, self.index, self.num_codes = kind, index, mcfg.num_codes
        self.front_end: FrontEnd = model_front_end(cfg, mcfg, index)
        self.encoder: Encoder | None = None
        self.projector: nn.Linear | None = None
        self.quantizer: VectorQuantizer | None = None
        if kind != "cnn":
            self.grid = downsampled_grid(self.front_end.spatial_shape, mcfg.encoder_layers,
                                         f"front end {mcfg.front_end!r} output")
            self.encoder = Encoder(self.front_end.in_channels, mcfg.encoder_channel_list, mcfg.encoder_res_layers)
            self.projector = nn.Linear(mcfg.hidden_channels, mcfg.code_dim, bias=False)  # Phi_vq,m (Eq. 13)
        else:
            self.grid = self.front_end.spatial_shape
        if kind == "dvqvae":
            self.quantizer = VectorQuantizer(
                mcfg.num_codes, mcfg.code_dim, decay=mcfg.ema_decay, commitment=mcfg.commitment_weight,
                eps=mcfg.laplace_eps, dead_code_threshold=mcfg.dead_code_threshold, kmeans_init=mcfg.kmeans_init,
                seed=side_seed(seed, "ap", index) % 2**31,
            )
        self.payload_shape = payload_shape(kind, cfg, mcfg)
        self.latent_length = math.prod(self.grid)  # L

    @property
    def needs_x(self) -> bool:
        return self.front_end.needs_x

    @property
    def message_nbytes(self) -> int:
        """Bytes of one sample's online message."""
        if self.kind == "dvqvae":
            return message_nbytes(self.latent_length, self.num_codes)
        return 4 * math.prod(self.payload_shape)

    @property
    def fronthaul_bits(self) -> int:
        """Bits this AP sends to the CPU per update (one sample), from the message it actually emits."""
        return 8 * self.message_nbytes

    def continuous(self, y_m: torch.Tensor, x: torch.Tensor | None = None,
                   features: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output after the projector, channel-last: Z_m [B, d1, d2, d3, D] (Eq. 12-13); or the front end's
        output [B, C, D1, D2, D3] for the CNN scheme. ``features``: this AP's front-end output for these samples
        when already computed (:meth:`front_end_features`, e.g. kept by the trainer's cache); y_m is then unused."""
        v = self.front_end_features(y_m, x) if features is None else self._check_features(features, y_m)
        if self.encoder is None:
            return v
        h = self.encoder(v)  # [B, H, d1, d2, d3]
        return self.projector(h.movedim(1, -1))

    def front_end_features(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The fixed AP front end's output [B, C, D1, D2, D3] float32 (no trainable parameters)."""
        return self.front_end(y_m, x if self.needs_x else None)

    def _check_features(self, features: torch.Tensor, y_m: torch.Tensor | None) -> torch.Tensor:
        want = (features.shape[0] if y_m is None else y_m.shape[0], *self.front_end.output_shape)
        if tuple(features.shape) != want or features.dtype != torch.float32:
            raise ValueError(f"features of AP {self.index} must be float32 {want} (its front end's output), got "
                             f"{features.dtype} {tuple(features.shape)}")
        return features

    def forward(self, y_m: torch.Tensor, x: torch.Tensor | None = None,
                features: torch.Tensor | None = None) -> ApOutput:
        """Training / in-graph forward (EMA codebook update in training mode); ``features`` as in
        :meth:`continuous`."""
        z = self.continuous(y_m, x, features)
        zero = z.new_zeros((), dtype=torch.float32)
        if self.encoder is None:
            return ApOutput(z.float().contiguous(), zero)
        if self.quantizer is None:
            return ApOutput(z.float().movedim(-1, 1).contiguous(), zero)
        q = self.quantizer(z)
        return ApOutput(q.quantized.movedim(-1, 1).contiguous(), q.commitment, q.indices.reshape(z.shape[0], -1),
                        q.perplexity, q.usage)

    @torch.no_grad()
    def indices(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. (15) for every feature vector: [B, L] int64 (no codebook update)."""
        if self.quantizer is None:
            raise ValueError(f"the {self.kind} scheme has no quantizer")
        z = self.continuous(y_m, x)
        return self.quantizer.nearest(z).reshape(z.shape[0], -1)

    @torch.no_grad()
    def encode(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> list[bytes]:
        """Algorithm 2, lines 3-6: one fronthaul message per sample."""
        if self.quantizer is not None:
            return pack_index_batch(self.indices(y_m, x), num_codes=self.num_codes)
        was = self.training
        self.eval()
        payload = self(y_m, x).payload.cpu().numpy().astype("<f4")
        self.train(was)
        return [row.tobytes() for row in payload]


# ---------------------------------------------------------------------------------------------------- CPU side
def _decoder(kind: str, cfg: SystemConfig, mcfg: ModelConfig, c: int, grid: tuple[int, ...]) -> nn.Module:
    """The CPU decoder: the CNN centralized network, the paper's :class:`FusionDecoder` (``decoder="generic"``) or
    the :class:`GeometryDecoder` (``decoder="geometry"``, D-VQVAE and D-VAE only)."""
    if mcfg.decoder == "geometry":
        if kind == "cnn":
            raise ValueError("decoder='geometry' decodes encoder latents: use kind 'dvqvae' or 'dvae', not 'cnn'")
        return GeometryDecoder(cfg, c, grid, mcfg.encoder_layers, mcfg.decoder_options)
    return CnnCentralized(cfg, mcfg, c, grid) if kind == "cnn" else FusionDecoder(cfg, mcfg, c, grid)


class CpuSide(nn.Module):
    """The CPU of a learned scheme: decoder and (D-VQVAE) the received codebooks [M, Nc, D]."""

    def __init__(self, kind: str, cfg: SystemConfig, mcfg: ModelConfig) -> None:
        super().__init__()
        _check_kind(kind)
        self.kind, self.num_aps, self.num_codes = kind, cfg.n_rx, mcfg.num_codes
        self.n_targets = cfg.n_targets
        self.payload_shape = payload_shape(kind, cfg, mcfg)
        c, grid = self.payload_shape[0], self.payload_shape[1:]
        self.decoder: nn.Module = _decoder(kind, cfg, mcfg, c, grid)
        if kind == "dvqvae":
            self.register_buffer("codebooks", torch.zeros(cfg.n_rx, mcfg.num_codes, mcfg.code_dim))
        self.latent_length = math.prod(grid)

    @property
    def uses_x(self) -> bool:
        """Whether the decoder reads X (the paper's decoder: its transmit branch; the geometry decoder does not)."""
        return bool(getattr(self.decoder, "uses_x", True))

    def forward(self, payloads: Sequence[torch.Tensor], x: torch.Tensor | None) -> torch.Tensor:
        """Eq. (16): the M APs' payloads and X -> psi_hat [B, 4Q] (normalised)."""
        return self.decoder(list(payloads), x)

    def receive_codebooks(self, codebooks: Sequence[torch.Tensor]) -> None:
        """Store the APs' trained codebooks (sent once after training, Section IV-B)."""
        if self.kind != "dvqvae":
            raise ValueError(f"the {self.kind} scheme has no codebooks")
        if len(codebooks) != self.num_aps:
            raise ValueError(f"expected {self.num_aps} codebooks, got {len(codebooks)}")
        for m, c in enumerate(codebooks):
            if tuple(c.shape) != tuple(self.codebooks.shape[1:]):
                raise ValueError(f"codebook {m} has shape {tuple(c.shape)}, expected {tuple(self.codebooks.shape[1:])}")
            self.codebooks[m].copy_(c.detach())

    def dequantize(self, m: int, indices: torch.Tensor) -> torch.Tensor:
        """Indices [B, L] of AP m -> dequantized features [B, D, d1, d2, d3] (Eq. 14)."""
        if indices.dim() != 2 or indices.shape[1] != self.latent_length:
            raise ValueError(f"indices of AP {m} must be [B, {self.latent_length}], got {tuple(indices.shape)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_codes):
            raise ValueError(f"indices of AP {m} must lie in [0, {self.num_codes})")
        feats = self.codebooks[m][indices.to(self.codebooks.device)]  # [B, L, D]
        return feats.reshape(indices.shape[0], *self.payload_shape[1:], -1).movedim(-1, 1).contiguous()

    def payloads_from_messages(self, messages: Sequence[Sequence[bytes]]) -> list[torch.Tensor]:
        """Parse the M APs' messages (each a list of B byte strings) into decoder inputs; rejects bad messages."""
        if len(messages) != self.num_aps:
            raise ValueError(f"expected messages from {self.num_aps} receive APs, got {len(messages)}")
        sizes = {len(m) for m in messages}
        if len(sizes) != 1:
            raise ValueError(f"every AP must send the same number of messages, got {[len(m) for m in messages]}")
        out = []
        for m, msgs in enumerate(messages):
            if self.kind == "dvqvae":
                idx = unpack_index_batch(msgs, length=self.latent_length, num_codes=self.num_codes)
                out.append(self.dequantize(m, idx))
            else:
                n = math.prod(self.payload_shape)
                for k, b in enumerate(msgs):
                    if not isinstance(b, (bytes, bytearray, memoryview)) or len(b) != 4 * n:
                        raise ValueError(f"message {k} of AP {m} must be {4 * n} bytes of float32")
                a = np.frombuffer(b"".join(bytes(b) for b in msgs), dtype="<f4").reshape(len(msgs), *self.payload_shape)
                out.append(torch.from_numpy(a.astype(np.float32)).to(self._device()))
        return out

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def decode(self, messages: Sequence[Sequence[bytes]], x: torch.Tensor | None) -> torch.Tensor:
        """Algorithm 2, line 8: messages -> psi_hat [B, 4Q] (normalised)."""
        return self(self.payloads_from_messages(messages), x)


# ---------------------------------------------------------------------------------------------------- model
@dataclass
class ModelOutput:
    """In-graph forward: ``prediction`` [B, 4Q] (normalised), ``commitment`` (sum over APs), ``aps`` per-AP
    outputs."""

    prediction: torch.Tensor
    commitment: torch.Tensor
    aps: list[ApOutput] = field(default_factory=list)


class SplitModel(nn.Module):
    """M :class:`ApSide` and one :class:`CpuSide`; parameters named ``aps.{m}.*`` and ``cpu_side.*``."""

    def __init__(self, kind: str, cfg: SystemConfig, mcfg: ModelConfig, aps: Sequence[ApSide], cpu: CpuSide) -> None:
        super().__init__()
        self.kind, self.cfg, self.mcfg = kind, cfg, mcfg
        self.aps = nn.ModuleList(aps)
        self.cpu_side = cpu

    @staticmethod
    def split_echoes(y: torch.Tensor, n_rx: int) -> list[torch.Tensor]:
        if not y.is_complex() or y.dim() != 5 or y.shape[1] != n_rx:
            raise ValueError(f"y must be complex [B, M={n_rx}, Mr, Ns, Ts], got {y.dtype} {tuple(y.shape)}")
        return [y[:, m] for m in range(n_rx)]

    def forward(self, y: torch.Tensor, x: torch.Tensor,
                features: Sequence[torch.Tensor] | None = None) -> ModelOutput:
        """In-graph forward of every AP and the CPU; ``features`` (one per AP) as in :meth:`ApSide.continuous`."""
        ys = self.split_echoes(y, len(self.aps))
        fs = [None] * len(ys) if features is None else list(features)
        outs = [ap(y_m, x, f) for ap, y_m, f in zip(self.aps, ys, fs, strict=True)]
        pred = self.cpu_side([o.payload for o in outs], x)
        return ModelOutput(pred, torch.stack([o.commitment for o in outs]).sum(), outs)

    def sync_codebooks(self) -> None:
        """Each AP sends its codebook to the CPU (after training, Section IV-B)."""
        if self.kind == "dvqvae":
            self.cpu_side.receive_codebooks([ap.quantizer.codebook for ap in self.aps])

    @torch.no_grad()
    def encode(self, y: torch.Tensor, x: torch.Tensor | None = None) -> list[list[bytes]]:
        """Algorithm 2 at the APs: messages[m][b]."""
        return [ap.encode(y_m, x) for ap, y_m in zip(self.aps, self.split_echoes(y, len(self.aps)), strict=True)]

    @torch.no_grad()
    def decode(self, messages: Sequence[Sequence[bytes]], x: torch.Tensor | None) -> torch.Tensor:
        """Algorithm 2 at the CPU: normalised psi_hat [B, 4Q]."""
        return self.cpu_side.decode(messages, x)

    @property
    def fronthaul_bits_per_ap(self) -> int:
        return self.aps[0].fronthaul_bits


def build_ap_side(kind: str, cfg: SystemConfig, mcfg: ModelConfig, index: int, *, seed: int = 0) -> ApSide:
    """AP ``index`` of a model built with ``seed`` (same initial parameters as in :func:`build_model`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(side_seed(seed, "ap", index))
        return ApSide(kind, cfg, mcfg, index, seed=seed)


def build_cpu_side(kind: str, cfg: SystemConfig, mcfg: ModelConfig, *, seed: int = 0) -> CpuSide:
    """The CPU side of a model built with ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(side_seed(seed, "cpu"))
        return CpuSide(kind, cfg, mcfg)


def build_model(kind: str, cfg: SystemConfig, mcfg: ModelConfig, *, seed: int = 0) -> SplitModel:
    """The scheme ``kind`` ("dvqvae", "dvae", "cnn") for ``cfg`` with hyper-parameters ``mcfg``.

    Build it inside ``with torch.device("meta"):`` to count parameters without allocating them.
    """
    _check_kind(kind)
    if cfg.n_targets < 1:
        raise ValueError("the learned schemes need at least one target")
    aps = [build_ap_side(kind, cfg, mcfg, m, seed=seed) for m in range(cfg.n_rx)]
    return SplitModel(kind, cfg, mcfg, aps, build_cpu_side(kind, cfg, mcfg, seed=seed))
