"""Entropy-coded fronthaul (beyond the paper): lossless range coding of the D-VQVAE's codeword indices.

The paper sends each of the L indices of an update with Nb = log2(Nc) bits (Section III-D: Nb L bits per AP and
update). The indices are far from uniform (a trained codebook has a perplexity well below Nc, and neighbouring
feature vectors are correlated), so a real entropy coder sends fewer bits for the *same* indices: decoding is
lossless, hence the estimates and the accuracy are unchanged.

Model (per receive AP m, learned from the indices of training samples): a categorical distribution over the Nc
codewords, with Krichevsky-Trofimov smoothing ``p = (count + prior) / (total + Nc prior)`` so that every index stays
codable, conditioned on a context:

- ``"none"``: one distribution per AP (order 0);
- ``"position"``: one distribution per position l = 0..L-1 of the encoder's output grid (row-major, the order of
  the index message);
- ``"previous"``: conditioned on the previous index of the same update in that order (first order Markov; the
  first index uses an extra "start" context). Decoding is sequential (one coder call per index).

Coder: ``constriction``'s range coder (``stream.queue.RangeEncoder``) with ``Categorical(perfect=False)`` models
built from float64 probabilities on both sides (deterministic fixed-point quantization, 24-bit precision). Each
update is coded on its own (an update is one fronthaul message) into a self-delimiting message:

    LEB128 varint v = 2 n + mode, then n bytes
    mode 0: the range code, its 32-bit words in little-endian order (n a multiple of 4)
    mode 1: the paper's bit-packed index message (n = ceil(L Nb / 8), :func:`cfisac.quantize.pack_indices`)

The encoder sends whichever is shorter, so a message never exceeds the paper's by more than the varint (1 byte up
to 63 bytes of payload, 2 bytes up to 8191, 3 bytes beyond). The model file is safetensors (counts [M, C, Nc]
int64, metadata JSON): the encoder and the decoder must use the same file. In a deployment AP m's table is learned
from AP m's own indices only.

``constriction`` is an optional dependency (``pip install cfisac[entropy]``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["CONTEXTS", "EntropyModel", "fit_entropy_model", "split_messages"]

CONTEXTS = ("none", "position", "previous")
FORMAT = "cfisac-entropy-model"
VERSION = 1


def _constriction():
    try:
        import constriction
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("entropy coding needs the 'constriction' package: pip install 'cfisac[entropy]'") from err
    return constriction


@dataclass
class EntropyModel:
    """Per-AP categorical models of the codeword indices (see the module docstring).

    ``counts`` [M, C, Nc] int64: training counts per AP, context and index (C = 1, L or Nc + 1 for the contexts
    ``"none"``, ``"position"``, ``"previous"``). ``length`` is L, ``prior`` the additive smoothing.
    """

    num_codes: int
    length: int
    context: str
    counts: torch.Tensor
    prior: float = 0.5

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS:
            raise ValueError(f"context must be one of {list(CONTEXTS)}, got {self.context!r}")
        if self.num_codes < 2 or self.length < 1 or not self.prior > 0:
            raise ValueError("num_codes must be >= 2, length >= 1 and prior > 0")
        c = {"none": 1, "position": self.length, "previous": self.num_codes + 1}[self.context]
        if self.counts.dim() != 3 or tuple(self.counts.shape[1:]) != (c, self.num_codes):
            raise ValueError(f"counts must be [M, {c}, {self.num_codes}] for context {self.context!r}, got "
                             f"{tuple(self.counts.shape)}")
        self.counts = self.counts.to(torch.int64)
        self._probs: dict[int, np.ndarray] = {}

    @property
    def num_aps(self) -> int:
        return self.counts.shape[0]

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, indices: Sequence[torch.Tensor], *, num_codes: int, context: str = "none",
            prior: float = 0.5) -> EntropyModel:
        """Count the indices [n, L] of each AP (a sequence over m) under ``context``."""
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {list(CONTEXTS)}, got {context!r}")
        if not indices:
            raise ValueError("need the training indices of at least one AP")
        L = indices[0].shape[1]
        tables = []
        for m, idx in enumerate(indices):
            idx = _check(idx, num_codes, L, f"training indices of AP {m}")
            ctx = _contexts(idx, context, num_codes)
            C = {"none": 1, "position": L, "previous": num_codes + 1}[context]
            flat = (ctx * num_codes + idx).reshape(-1)
            tables.append(torch.bincount(flat, minlength=C * num_codes).reshape(C, num_codes))
        return cls(num_codes, L, context, torch.stack(tables), prior)

    def probabilities(self, m: int) -> np.ndarray:
        """[C, Nc] float64 probabilities of AP m (smoothed counts, rows sum to 1)."""
        if not 0 <= m < self.num_aps:
            raise ValueError(f"AP index {m} out of range for a model of {self.num_aps} APs")
        if m not in self._probs:
            c = self.counts[m].double().numpy() + self.prior
            self._probs[m] = c / c.sum(axis=1, keepdims=True)
        return self._probs[m]

    def code_length_bits(self, m: int, indices: torch.Tensor) -> torch.Tensor:
        """Ideal code length -sum_l log2 p(j_l | context) of each update [B] float64 (the model's cross-entropy)."""
        idx = _check(indices, self.num_codes, self.length, "indices")
        p = torch.from_numpy(self.probabilities(m))
        ctx = _contexts(idx, self.context, self.num_codes)
        return -torch.log2(p[ctx, idx]).sum(1)

    # ------------------------------------------------------------------ coding
    def encode(self, m: int, indices: torch.Tensor) -> list[bytes]:
        """Indices [B, L] of AP m -> one self-delimiting message per update (module docstring)."""
        from .quantize import pack_index_batch

        cs = _constriction()
        idx = _check(indices, self.num_codes, self.length, "indices")
        probs = self.probabilities(m)
        ctx = _contexts(idx, self.context, self.num_codes).numpy()
        family = cs.stream.model.Categorical(perfect=False)
        packed = pack_index_batch(idx, num_codes=self.num_codes)
        out = []
        for b in range(idx.shape[0]):
            enc = cs.stream.queue.RangeEncoder()
            enc.encode(idx[b].numpy().astype(np.int32), family, probs[ctx[b]])
            code = enc.get_compressed().astype("<u4").tobytes()
            mode, data = (0, code) if len(code) < len(packed[b]) else (1, packed[b])
            out.append(_varint(2 * len(data) + mode) + data)
        return out

    def decode(self, m: int, messages: bytes | Sequence[bytes], *, batch: int | None = None) -> torch.Tensor:
        """Inverse of :func:`encode` (a list of messages or their concatenation) -> indices [B, L] int64;
        ``ValueError`` on a message that is not one (``batch``: the number of updates expected)."""
        from .quantize import unpack_indices

        cs = _constriction()
        raw = bytes(messages) if isinstance(messages, (bytes, bytearray, memoryview)) else b"".join(messages)
        parts = split_messages(raw)
        if batch is not None and len(parts) != batch:
            raise ValueError(f"{len(parts)} entropy-coded updates, expected {batch}")
        probs = self.probabilities(m)
        family = cs.stream.model.Categorical(perfect=False)
        L, Nc = self.length, self.num_codes
        out = np.empty((len(parts), L), dtype=np.int64)
        for b, (mode, code) in enumerate(parts):
            if mode == 1:
                out[b] = unpack_indices(code, length=L, num_codes=Nc).numpy()
                continue
            if len(code) % 4:
                raise ValueError(f"entropy code {b} has {len(code)} bytes, not whole 32-bit words")
            words = np.frombuffer(code, dtype="<u4").astype(np.uint32)
            try:
                dec = cs.stream.queue.RangeDecoder(words)
                if self.context == "previous":
                    prev = Nc
                    for pos in range(L):
                        prev = int(dec.decode(family, probs[prev][None])[0])
                        out[b, pos] = prev
                else:
                    rows = probs if self.context == "position" else np.broadcast_to(probs[0], (L, Nc))
                    out[b] = dec.decode(family, np.ascontiguousarray(rows))
            except Exception as err:  # constriction raises its own error types on invalid data
                raise ValueError(f"entropy code {b} is corrupted: {err}") from err
            if len(code) and not dec.maybe_exhausted():
                raise ValueError(f"entropy code {b} is corrupted or not coded with this model (data left over)")
        return torch.from_numpy(out)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": VERSION, "num_codes": self.num_codes, "length": self.length,
                "context": self.context, "prior": self.prior}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"counts": self.counts.contiguous()}, str(tmp), metadata={"cfisac": json.dumps(meta)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EntropyModel:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"entropy model {path} does not exist")
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {})["cfisac"])
                counts = f.get_tensor("counts")
        except Exception as err:
            raise ValueError(f"{path} is not an entropy model file: {err}") from err
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{path} is not a version-{VERSION} {FORMAT} file")
        return cls(int(meta["num_codes"]), int(meta["length"]), meta["context"], counts, float(meta["prior"]))


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        byte, v = v & 0x7F, v >> 7
        out.append(byte | (0x80 if v else 0))
        if not v:
            return bytes(out)


def split_messages(raw: bytes) -> list[tuple[int, bytes]]:
    """Split a concatenation of self-delimiting messages into (mode, payload); ``ValueError`` when truncated."""
    out, pos, n = [], 0, len(raw)
    while pos < n:
        v, shift = 0, 0
        while True:
            if pos >= n or shift > 56:
                raise ValueError(f"entropy-coded update {len(out)}: truncated or corrupted length prefix")
            byte = raw[pos]
            pos += 1
            v |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        size, mode = v >> 1, v & 1
        if pos + size > n:
            raise ValueError(f"entropy-coded update {len(out)} announces {size} bytes, only {n - pos} left "
                             "(truncated)")
        out.append((mode, raw[pos: pos + size]))
        pos += size
    return out


def _check(indices: torch.Tensor, num_codes: int, length: int, what: str) -> torch.Tensor:
    idx = torch.as_tensor(indices)
    if idx.dim() != 2 or idx.shape[1] != length or idx.dtype.is_floating_point or idx.is_complex():
        raise ValueError(f"{what} must be an integer tensor [B, L={length}], got {idx.dtype} {tuple(idx.shape)}")
    idx = idx.to(torch.int64).cpu()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_codes):
        raise ValueError(f"{what} must lie in [0, {num_codes}), got [{int(idx.min())}, {int(idx.max())}]")
    return idx


def _contexts(idx: torch.Tensor, context: str, num_codes: int) -> torch.Tensor:
    """Context id of every index [B, L]."""
    B, L = idx.shape
    if context == "none":
        return torch.zeros_like(idx)
    if context == "position":
        return torch.arange(L).expand(B, L)
    start = torch.full((B, 1), num_codes, dtype=torch.int64)
    return torch.cat([start, idx[:, :-1]], dim=1)


def fit_entropy_model(checkpoint: str | Path, *, n: int = 1000, seed: int | None = None, start: int = 0,
                      batch_size: int = 64, context: str = "none", prior: float = 0.5,
                      which: str = "latest") -> EntropyModel:
    """Fit an :class:`EntropyModel` on the indices the trained APs of ``checkpoint`` emit for training samples
    ``start .. start+n-1`` of dataset ``seed`` (default: the checkpoint's training seed)."""
    from .checkpoint import load_checkpoint
    from .data import simulate_batch

    ck = load_checkpoint(checkpoint, which=which)
    if ck.kind != "dvqvae":
        raise ValueError(f"entropy coding needs codeword indices: {ck.path} holds a {ck.kind} model")
    seed = ck.tcfg.seed if seed is None else seed
    per_ap: list[list[torch.Tensor]] = [[] for _ in ck.model.aps]
    for lo in range(start, start + n, batch_size):
        y = simulate_batch(ck.cfg, seed, range(lo, min(start + n, lo + batch_size)))["y"]
        for m, ap in enumerate(ck.model.aps):
            per_ap[m].append(ap.indices(y[:, m]))
    L = ck.model.aps[0].latent_length
    if L != math.prod(ck.model.cpu_side.payload_shape[1:]):
        raise ValueError("inconsistent latent length")
    return EntropyModel.fit([torch.cat(p) for p in per_ap], num_codes=ck.mcfg.num_codes, context=context,
                            prior=prior)
