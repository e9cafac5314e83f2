"""EMA vector quantizer of the D-VQVAE (paper Eq. 13-15, 18-21) and the bit-packed index message (Section III-D).

Why our own ~100 lines instead of ``vector-quantize-pytorch``: the paper's quantizer is small, and every default of
that library would have to be pinned and would still not match: its EMA decay defaults to 0.8 (the paper's
gamma is a free hyper-parameter; VQ-VAE used 0.99), its rotation trick (on by default) changes the straight-through
gradient that Algorithm 1 copies to the encoder, ``sync_codebook`` all-reduces the codebook statistics across
processes (which would mix the codebooks of different receive APs when the APs run as separate ranks),
and its EMA initialisation differs from Eq. (18)-(19). Owning the code also lets the EMA statistics pass through one
explicit hook (``stats_hook``: all-reduce across data-parallel replicas of the *same* AP only).

Quantizer (per receive AP m): codebook C_m [Nc, D] (rows are codewords), nearest codeword by Euclidean distance
(Eq. 14-15); straight-through estimator ``q = c + (z - sg[z])``: the forward value is exactly the codeword and the
gradient w.r.t. z is exactly the upstream gradient; commitment loss (Eq. 21) ``omega * mean((z - sg[c])^2)`` (a mean
over elements instead of the paper's sum: a constant factor absorbed in omega, as in the VQ-VAE reference code).

EMA codebook update in training mode (Eq. 18-20) with L^(0) = 0 and c~^(0) = 0 as the paper states, plus Laplace
smoothing of the counts in Eq. (20) (the paper's Eq. 20 divides by a count that is zero for a codeword never used):

    L_j <- gamma L_j + (1 - gamma) N_j ;   c~_j <- gamma c~_j + (1 - gamma) sum_{z assigned to j} z
    L^_j = (L_j + eps) / (sum_k L_k + Nc eps) * sum_k L_k ;   c_j = c~_j / L^_j   for codewords with L_j > 0

A codeword that has never been assigned (L_j = 0) keeps its initial value (uniform in [-1/Nc, 1/Nc] as in the
PyTorch VQ-VAE ports, or k-means of the first batch with ``kmeans_init``). Dead-codeword restarts
(``dead_code_threshold`` > 0) and k-means initialisation are options, off by default (off reproduces the paper). All
quantizer arithmetic is float32, also under autocast.

Index message (Algorithm 2): the L indices of one sample, each written with Nb = log2(Nc) bits, most significant bit
first, in the order l = 0..L-1 (row-major over the encoder's output grid), concatenated and zero-padded to whole
bytes: exactly ceil(L * Nb / 8) bytes. Nc must be a power of two in 2..1024.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "QuantizerOutput", "VectorQuantizer", "bits_per_index", "message_nbytes", "pack_index_batch", "pack_indices",
    "unpack_index_batch", "unpack_indices",
]

StatsHook = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class QuantizerOutput:
    """``quantized`` [..., D] float32 (value = codewords, gradient straight through to z), ``indices`` [...] int64,
    ``commitment`` scalar (omega already applied), ``perplexity`` and ``usage`` (fraction of codewords used) of this
    batch as floats."""

    quantized: torch.Tensor
    indices: torch.Tensor
    commitment: torch.Tensor
    perplexity: float
    usage: float


class VectorQuantizer(nn.Module):
    """Codebook-based vector quantizer with EMA codebook updates (Eq. 14-15, 18-21); see the module docstring.

    ``forward(z)`` takes z [..., D] (any float dtype) and returns a :class:`QuantizerOutput`; in training mode it also
    updates the codebook by EMA. ``stats_hook(counts [Nc], sums [Nc, D]) -> (counts, sums)`` may reduce the batch
    statistics across data-parallel replicas of the same AP before the EMA update.
    """

    def __init__(
        self, num_codes: int, dim: int, *, decay: float = 0.99, commitment: float = 0.25, eps: float = 1e-5,
        dead_code_threshold: float = 0.0, kmeans_init: bool = False, kmeans_iters: int = 10, seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(num_codes, int) or num_codes < 2:
            raise ValueError(f"num_codes must be an integer >= 2, got {num_codes!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay (gamma) must lie in [0, 1), got {decay}")
        if commitment < 0 or eps <= 0 or dead_code_threshold < 0:
            raise ValueError("commitment and dead_code_threshold must be >= 0 and eps > 0")
        self.num_codes, self.dim, self.decay, self.commitment, self.eps = num_codes, dim, decay, commitment, eps
        self.dead_code_threshold, self.kmeans_iters, self.seed = dead_code_threshold, kmeans_iters, seed
        self.stats_hook: StatsHook | None = None
        g = torch.Generator().manual_seed(seed)
        init = (torch.rand(num_codes, dim, generator=g, device="cpu") * 2 - 1) / num_codes
        self.register_buffer("codebook", init)  # C_m^T: [Nc, D]
        self.register_buffer("ema_count", torch.zeros(num_codes))  # L_{m,j}, Eq. (18)
        self.register_buffer("ema_sum", torch.zeros(num_codes, dim))  # c~_{m,j}, Eq. (19)
        self.register_buffer("initialised", torch.tensor(not kmeans_init))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))  # EMA steps done (seeds restarts)

    # ------------------------------------------------------------------ lookup
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Eq. (15): index of the nearest codeword of every vector of z [..., D] -> [...] int64."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"z has last dimension {z.shape[-1]}, expected D = {self.dim}")
        flat = z.detach().reshape(-1, self.dim).float()
        c = self.codebook
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ c.t() + c.pow(2).sum(1)[None]
        return d.argmin(1).reshape(z.shape[:-1])

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """Eq. (14): the codewords of ``indices`` [...] -> [..., D] float32 (rejects indices outside [0, Nc))."""
        if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_codes):
            raise ValueError(f"indices must lie in [0, {self.num_codes}), got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return F.embedding(indices.long(), self.codebook)

    # ------------------------------------------------------------------ forward
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            flat = z.reshape(-1, self.dim)
            if self.training and not bool(self.initialised):
                self._kmeans(flat.detach())
            idx = self.nearest(flat)
            c = F.embedding(idx, self.codebook)  # buffer: no gradient to the codebook
            commitment = self.commitment * F.mse_loss(flat, c.detach())
            quantized = c + (flat - flat.detach())  # straight-through: value c exactly, d/dz = identity
            counts = torch.bincount(idx, minlength=self.num_codes).float()
            p = counts / counts.sum()
            perplexity = float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
            usage = float((counts > 0).float().mean())
            if self.training:
                self._ema_update(flat.detach(), idx, counts)
        return QuantizerOutput(quantized.reshape(z.shape), idx.reshape(z.shape[:-1]), commitment, perplexity, usage)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> None:
        """Eq. (18)-(20) with Laplace smoothing; optional dead-codeword restarts."""
        sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, flat)
        if self.stats_hook is not None:
            counts, sums = self.stats_hook(counts, sums)
        g = self.decay
        self.ema_count.mul_(g).add_(counts, alpha=1 - g)
        self.ema_sum.mul_(g).add_(sums, alpha=1 - g)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.num_codes * self.eps) * n
        used = self.ema_count > 0
        self.codebook.copy_(torch.where(used[:, None], self.ema_sum / smoothed[:, None], self.codebook))
        self.updates += 1
        if self.dead_code_threshold > 0:
            dead = self.ema_count < self.dead_code_threshold
            if bool(dead.any()):
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.updates))
                pick = torch.randint(0, flat.shape[0], (int(dead.sum()),), generator=gen).to(flat.device)
                self.codebook[dead] = flat[pick]
                self.ema_count[dead] = self.dead_code_threshold
                self.ema_sum[dead] = flat[pick] * self.dead_code_threshold

    @torch.no_grad()
    def _kmeans(self, flat: torch.Tensor) -> None:
        """k-means (Lloyd, ``kmeans_iters`` iterations) of the first training batch as initial codebook."""
        gen = torch.Generator().manual_seed(self.seed)
        pick = torch.randint(0, flat.shape[0], (self.num_codes,), generator=gen).to(flat.device)
        c = flat[pick].clone()
        for _ in range(self.kmeans_iters):
            idx = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ c.t() + c.pow(2).sum(1)[None]).argmin(1)
            n = torch.bincount(idx, minlength=self.num_codes).float()
            s = torch.zeros_like(c).index_add_(0, idx, flat)
            c = torch.where(n[:, None] > 0, s / n.clamp_min(1)[:, None], c)
        self.codebook.copy_(c)
        self.initialised.fill_(True)


# ---------------------------------------------------------------------------------------------------- messages
def bits_per_index(num_codes: int) -> int:
    """Nb = log2(Nc); ``ValueError`` unless Nc is a power of two in 2..1024."""
    if not isinstance(num_codes, (int, np.integer)) or num_codes < 2 or num_codes > 1024 or num_codes & (num_codes - 1):
        raise ValueError(f"num_codes (Nc) must be a power of two in 2..1024, got {num_codes!r}")
    return int(num_codes).bit_length() - 1


def message_nbytes(length: int, num_codes: int) -> int:
    """Bytes of one AP's message: ceil(L * log2(Nc) / 8)."""
    if not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"length (L) must be a positive integer, got {length!r}")
    return math.ceil(int(length) * bits_per_index(num_codes) / 8)


def _as_index_array(indices: torch.Tensor | np.ndarray | Sequence[int], num_codes: int) -> np.ndarray:
    a = indices.detach().cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
    if a.dtype.kind not in "iu":
        raise ValueError(f"indices must be integers, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= num_codes):
        raise ValueError(f"indices must lie in [0, {num_codes}), got range [{a.min()}, {a.max()}]")
    return a.astype(np.int64)


def pack_index_batch(indices: torch.Tensor | np.ndarray, *, num_codes: int) -> list[bytes]:
    """One message per row of ``indices`` [B, L]: each exactly ``message_nbytes(L, Nc)`` bytes."""
    nb = bits_per_index(num_codes)
    a = _as_index_array(indices, num_codes)
    if a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"indices must be [B, L] with L >= 1, got shape {a.shape}")
    shifts = np.arange(nb - 1, -1, -1, dtype=np.int64)
    bits = ((a[:, :, None] >> shifts) & 1).astype(np.uint8).reshape(a.shape[0], -1)  # MSB first
    packed = np.packbits(bits, axis=1)  # zero-pads the last byte
    return [row.tobytes() for row in packed]


def pack_indices(indices: torch.Tensor | np.ndarray | Sequence[int], *, num_codes: int) -> bytes:
    """The message of one sample: indices [L] -> exactly ceil(L * log2(Nc) / 8) bytes."""
    a = _as_index_array(indices, num_codes)
    if a.ndim != 1:
        raise ValueError(f"indices must be 1-D [L], got shape {a.shape}")
    return pack_index_batch(a[None], num_codes=num_codes)[0]


def unpack_index_batch(messages: Sequence[bytes], *, length: int, num_codes: int) -> torch.Tensor:
    """Inverse of :func:`pack_index_batch`: B messages -> indices [B, L] int64.

    Rejects (``ValueError``) a message that is not ``bytes``, has the wrong length, or has non-zero padding bits.
    """
    nb = bits_per_index(num_codes)
    nbytes = message_nbytes(length, num_codes)
    if len(messages) == 0:
        raise ValueError("no messages to unpack")
    for k, m in enumerate(messages):
        if not isinstance(m, (bytes, bytearray, memoryview)):
            raise ValueError(f"message {k} must be bytes, got {type(m).__name__}")
        if len(m) != nbytes:
            raise ValueError(f"message {k} has {len(m)} bytes, expected exactly {nbytes} "
                             f"(L = {length} indices of {nb} bits)")
    raw = np.frombuffer(b"".join(bytes(m) for m in messages), dtype=np.uint8).reshape(len(messages), nbytes)
    bits = np.unpackbits(raw, axis=1)
    if bits[:, length * nb:].any():
        raise ValueError("message has non-zero padding bits: corrupted or not an index message of this length")
    weights = (1 << np.arange(nb - 1, -1, -1, dtype=np.int64))
    idx = bits[:, : length * nb].reshape(len(messages), length, nb).astype(np.int64) @ weights
    return torch.from_numpy(idx)


def unpack_indices(message: bytes, *, length: int, num_codes: int) -> torch.Tensor:
    """Inverse of :func:`pack_indices`: one message -> indices [L] int64 (see :func:`unpack_index_batch`)."""
    return unpack_index_batch([message], length=length, num_codes=num_codes)[0]
