"""The message format of the distributed runtime (Algorithms 1 and 2 across processes): framing and payload codecs.

Every message on a link is two point-to-point transfers of ``uint8`` tensors: a fixed 32-byte **header**, then (when
the header's ``length`` is not zero) a **body** of exactly ``length`` bytes. All integers are little-endian.

Header (``struct`` format ``<4sBBHHHqQI``, 32 bytes)::

    magic    4s   b"CFI7"
    version  u8   1
    kind     u8   message kind (:class:`Kind`)
    flags    u16  bit 0: the body ends with a CRC-32 trailer that was computed; bit 1: index payload (not features)
    sender   u16  rank of the sender (checked against the link's peer)
    ap       u16  receive-AP index m the message concerns (0xFFFF: none)
    step     i64  global training step (or online batch number) the message belongs to
    length   u64  body bytes, trailer included (0: no body)
    reserved u32  0

Every body ends with an 8-byte **trailer** ``b"CF7E" + u32 CRC-32`` of the bytes before it (0 when flag bit 0 is
clear; the CRC is computed for bodies in host memory, i.e. gloo, not for NCCL's device buffers). The trailer exists
because gloo fills a receive buffer that is larger than what was sent without telling the receiver: a body that
arrives short leaves the pre-zeroed trailer empty and is rejected as truncated.

Bodies by kind (all sections are padded to multiples of 8 bytes so that tensor data stays aligned):

- ``HELLO``, ``CONTROL``, ``ABORT``, ``DONE``: UTF-8 JSON object (see :mod:`cfisac.distributed.protocol`).
- ``INIT`` / ``STATE``: a safetensors blob (``safetensors.torch.save``) of an AP's parameters, buffers and Adam
  state; its metadata carries JSON (optimizer param groups, schedule position). Never pickle.
- ``FORWARD`` / ``EVAL`` (AP -> CPU, training): 3 float64 statistics (commitment, perplexity, usage) then either a
  *tensor record* (features mode: the quantized features [B, D, d1, d2, d3] float32, paper footnote 4) or an
  *index record* (indices mode, flag bit 1): ``u32 B, L, Nc, D``, the B bit-packed index messages of
  :func:`cfisac.quantize.pack_index_batch` (each ``ceil(L log2 Nc / 8)`` bytes), then the *codebook delta*: a bitmap
  of ``ceil(Nc / 8)`` bytes (bit j, LSB first, set when codeword j follows) and the flagged codewords as float32
  rows [k, D] -- the codewords used by this batch whose value the CPU does not have yet.
- ``GRAD`` (CPU -> AP): a tensor record of the gradient w.r.t. the payload, same shape, float32.
- ``CODEBOOK`` (AP -> CPU, once before online sensing, Section IV-B): a tensor record [Nc, D] float32.
- ``UPDATES`` (AP -> CPU, online, Algorithm 2): the B per-update fronthaul messages of the batch concatenated,
  nothing else (bit-packed indices for the D-VQVAE, float32 payloads for the D-VAE / CNN schemes).
- ``ENTROPY`` (AP -> CPU, online, entropy coded): the B self-delimiting update messages of :mod:`cfisac.entropy`
  concatenated (varint length and mode, then a range code or the bit-packed indices).

Tensor record: ``u8 dtype code, u8 ndim, u16 0, ndim x u32 shape``, padded to 8 bytes, then the raw little-endian
data. Decoders check every length against the shape they expect and raise :class:`MessageError` (a ``ValueError``)
naming what is wrong.
"""

from __future__ import annotations

import enum
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..quantize import bits_per_index, message_nbytes

__all__ = [
    "HEADER_BYTES", "Header", "IndexRecord", "Kind", "MAGIC", "Message", "MessageError", "TRAILER_BYTES", "VERSION",
    "decode_index_record", "decode_json", "decode_stats", "decode_tensor",
    "encode_index_record", "encode_json", "encode_stats", "encode_tensor", "finish_body",
    "make_message", "open_body", "pack_header", "unpack_header",
]

MAGIC = b"CFI7"
TRAILER_MAGIC = b"CF7E"
VERSION = 1
HEADER_FORMAT = "<4sBBHHHqQI"
HEADER_BYTES = struct.calcsize(HEADER_FORMAT)
TRAILER_BYTES = 8
NO_AP = 0xFFFF
FLAG_CRC = 1
FLAG_INDICES = 2
STATS_BYTES = 24
assert HEADER_BYTES == 32


class MessageError(ValueError):
    """A malformed, truncated, corrupted or unexpected message."""


class Kind(enum.IntEnum):
    """Message kinds (header byte 5)."""

    HELLO = 1
    INIT = 2
    CONTROL = 3
    FORWARD = 4
    GRAD = 5
    EVAL = 6
    STATE = 7
    CODEBOOK = 8
    UPDATES = 9
    ENTROPY = 10
    ABORT = 11
    DONE = 12


@dataclass(frozen=True)
class Header:
    kind: Kind
    flags: int
    sender: int
    ap: int
    step: int
    length: int


@dataclass
class Message:
    """A received or to-be-sent message: the header fields and the body (uint8 tensor, trailer included)."""

    header: Header
    body: torch.Tensor

    @property
    def kind(self) -> Kind:
        return self.header.kind

    @property
    def nbytes(self) -> int:
        """Bytes on the wire (header + body)."""
        return HEADER_BYTES + self.header.length

    def payload(self) -> torch.Tensor:
        """The body without its trailer."""
        return self.body[: self.header.length - TRAILER_BYTES]


# ---------------------------------------------------------------------------------------------------- header
def pack_header(h: Header) -> bytes:
    return struct.pack(HEADER_FORMAT, MAGIC, VERSION, int(h.kind), h.flags, h.sender, h.ap, h.step, h.length, 0)


def unpack_header(raw: bytes | bytearray | memoryview | torch.Tensor, *, max_length: int | None = None) -> Header:
    """Parse and check a 32-byte header (magic, version, kind, length bound); ``MessageError`` when invalid."""
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu().numpy().tobytes()
    raw = bytes(raw)
    if len(raw) != HEADER_BYTES:
        raise MessageError(f"message header has {len(raw)} bytes, expected {HEADER_BYTES}")
    magic, version, kind, flags, sender, ap, step, length, reserved = struct.unpack(HEADER_FORMAT, raw)
    if magic != MAGIC:
        raise MessageError(f"bad message magic {magic!r} (expected {MAGIC!r}): not a cfisac message or corrupted")
    if version != VERSION:
        raise MessageError(f"message format version {version} is not supported (this build speaks {VERSION})")
    try:
        kind = Kind(kind)
    except ValueError:
        raise MessageError(f"unknown message kind {kind}") from None
    if reserved != 0 or flags & ~(FLAG_CRC | FLAG_INDICES):
        raise MessageError("message header has non-zero reserved bits: corrupted")
    if length != 0 and length < TRAILER_BYTES:
        raise MessageError(f"message body of {length} bytes is shorter than its {TRAILER_BYTES}-byte trailer")
    if max_length is not None and length > max_length:
        raise MessageError(f"message announces a {length}-byte body, more than the {max_length}-byte limit of this "
                           "link (corrupted header, or raise max_message_bytes)")
    return Header(kind, flags, sender, ap, step, length)


# ---------------------------------------------------------------------------------------------------- body
def _pad8(n: int) -> int:
    return -n % 8


def finish_body(parts: list[torch.Tensor | bytes], *, device: torch.device | str = "cpu",
                checksum: bool = True) -> tuple[torch.Tensor, int]:
    """Concatenate body sections (bytes or uint8 tensors) and append the trailer -> (body uint8 [n], flags bit)."""
    dev = torch.device(device)
    chunks = [torch.frombuffer(bytearray(p), dtype=torch.uint8) if isinstance(p, (bytes, bytearray)) else p
              for p in parts]
    chunks = [c.reshape(-1).to(dev) for c in chunks if c.numel()]
    body = torch.cat(chunks) if len(chunks) > 1 else (chunks[0] if chunks else torch.empty(0, dtype=torch.uint8,
                                                                                          device=dev))
    crc = 0
    checksum = checksum and dev.type == "cpu"  # device (NCCL) bodies: no host copy just for a CRC
    if checksum:
        crc = zlib.crc32(memoryview(body.numpy())) if body.numel() else zlib.crc32(b"")
    trailer = torch.frombuffer(bytearray(TRAILER_MAGIC + struct.pack("<I", crc)), dtype=torch.uint8).to(dev)
    return torch.cat([body, trailer]), (FLAG_CRC if checksum else 0)


def open_body(msg: Message) -> torch.Tensor:
    """Check the trailer (present, CRC when flagged) -> the body without trailer; ``MessageError`` otherwise."""
    h = msg.header
    if h.length == 0:
        return msg.body[:0]
    if msg.body.numel() != h.length:
        raise MessageError(f"{h.kind.name} message body has {msg.body.numel()} bytes, header says {h.length}")
    tail = msg.body[-TRAILER_BYTES:].cpu().numpy().tobytes()
    if tail[:4] != TRAILER_MAGIC:
        raise MessageError(f"{h.kind.name} message from rank {h.sender} is truncated or corrupted (no trailer at "
                           f"the end of its {h.length}-byte body)")
    body = msg.body[:-TRAILER_BYTES]
    if h.flags & FLAG_CRC:
        crc = struct.unpack("<I", tail[4:])[0]
        got = zlib.crc32(memoryview(body.cpu().numpy())) if body.numel() else zlib.crc32(b"")
        if got != crc:
            raise MessageError(f"{h.kind.name} message from rank {h.sender} is corrupted (CRC-32 {got:#010x}, "
                               f"expected {crc:#010x})")
    return body


def make_message(kind: Kind, parts: list[torch.Tensor | bytes], *, sender: int, ap: int | None = None,
                 step: int = 0, flags: int = 0, device: torch.device | str = "cpu", checksum: bool = True) -> Message:
    """Frame a message from body sections."""
    body, crc_flag = finish_body(parts, device=device, checksum=checksum)
    h = Header(Kind(kind), flags | crc_flag, sender, NO_AP if ap is None else ap, step, body.numel())
    return Message(h, body)


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().numpy().tobytes()


# ---------------------------------------------------------------------------------------------------- JSON
def encode_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, allow_nan=True).encode()


def decode_json(body: torch.Tensor, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(_bytes(body).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MessageError(f"{what} message body is not valid JSON: {err}") from err
    if not isinstance(obj, dict):
        raise MessageError(f"{what} message body must be a JSON object")
    return obj


# ---------------------------------------------------------------------------------------------------- tensors
_DTYPES = {1: torch.float32, 2: torch.bfloat16, 3: torch.float16, 4: torch.int64, 5: torch.uint8, 6: torch.float64}
_CODES = {v: k for k, v in _DTYPES.items()}


def encode_tensor(t: torch.Tensor) -> list[torch.Tensor | bytes]:
    """Tensor record sections of ``t`` (little-endian raw data, on t's device)."""
    if t.dtype not in _CODES:
        raise ValueError(f"tensor dtype {t.dtype} cannot be sent (supported: {sorted(map(str, _CODES))})")
    if t.dim() > 8 or any(s >= 2**32 for s in t.shape):
        raise ValueError(f"tensor shape {tuple(t.shape)} cannot be sent")
    meta = struct.pack(f"<BBH{t.dim()}I", _CODES[t.dtype], t.dim(), 0, *t.shape)
    meta += b"\0" * _pad8(len(meta))
    data = t.detach().contiguous().reshape(-1).view(torch.uint8)
    return [meta, data]


def decode_tensor(body: torch.Tensor, *, what: str, shape: tuple[int, ...] | None = None,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Inverse of :func:`encode_tensor` (the record must fill ``body`` exactly); checks shape and dtype."""
    n = body.numel()
    if n < 4:
        raise MessageError(f"{what}: tensor record of {n} bytes is truncated")
    code, ndim, _ = struct.unpack("<BBH", _bytes(body[:4]))
    if code not in _DTYPES:
        raise MessageError(f"{what}: unknown tensor dtype code {code}")
    meta_len = 4 + 4 * ndim
    meta_len += _pad8(meta_len)
    if ndim > 8 or n < meta_len:
        raise MessageError(f"{what}: tensor record header is truncated or corrupted")
    got_shape = struct.unpack(f"<{ndim}I", _bytes(body[4: 4 + 4 * ndim]))
    dt = _DTYPES[code]
    if dtype is not None and dt != dtype:
        raise MessageError(f"{what}: tensor has dtype {dt}, expected {dtype}")
    if shape is not None and tuple(got_shape) != tuple(shape):
        raise MessageError(f"{what}: tensor has shape {tuple(got_shape)}, expected {tuple(shape)}")
    itemsize = torch.empty((), dtype=dt).element_size()
    need = meta_len + math.prod(got_shape) * itemsize
    if n != need:
        raise MessageError(f"{what}: tensor record has {n} bytes, shape {tuple(got_shape)} of {dt} needs {need} "
                           "(truncated or padded)")
    data = body[meta_len:].clone()  # own, aligned storage
    return data.view(dt).reshape(got_shape)


# ---------------------------------------------------------------------------------------------------- stats
def encode_stats(commitment: float, perplexity: float, usage: float) -> bytes:
    return struct.pack("<3d", commitment, perplexity, usage)


def decode_stats(body: torch.Tensor, what: str) -> tuple[dict[str, float], torch.Tensor]:
    if body.numel() < STATS_BYTES:
        raise MessageError(f"{what}: body of {body.numel()} bytes is too short for its statistics")
    c, p, u = struct.unpack("<3d", _bytes(body[:STATS_BYTES]))
    return {"commitment": c, "perplexity": p, "usage": u}, body[STATS_BYTES:]


# ---------------------------------------------------------------------------------------------------- indices
@dataclass
class IndexRecord:
    """Decoded index record: ``indices`` [B, L] int64 and the codebook delta (``rows`` [Nc] bool, ``values``
    [k, D] float32, the k flagged codewords in ascending j)."""

    indices: torch.Tensor
    rows: torch.Tensor
    values: torch.Tensor


def encode_index_record(indices: torch.Tensor, *, num_codes: int, rows: torch.Tensor,
                        values: torch.Tensor) -> list[torch.Tensor | bytes]:
    """Sections of an index record: indices [B, L] int, ``rows`` [Nc] bool, ``values`` [k, D] float32."""
    from ..quantize import pack_index_batch

    B, L = indices.shape
    D = values.shape[1] if values.dim() == 2 else 0
    if rows.shape != (num_codes,) or int(rows.sum()) != values.shape[0]:
        raise ValueError("codebook delta: rows must be [Nc] bool with one value row per set entry")
    meta = struct.pack("<4I", B, L, num_codes, D)
    packed = b"".join(pack_index_batch(indices, num_codes=num_codes))
    bitmap = np.packbits(rows.cpu().numpy().astype(np.uint8), bitorder="little").tobytes()
    head = meta + packed + bitmap
    head += b"\0" * _pad8(len(head))
    return [head, values.detach().float().contiguous().reshape(-1).view(torch.uint8)]


def decode_index_record(body: torch.Tensor, *, what: str, batch: int | None, length: int, num_codes: int,
                        dim: int) -> IndexRecord:
    """Inverse of :func:`encode_index_record`, checking B (when given), L, Nc, D and every length."""
    from ..quantize import unpack_index_batch

    raw = _bytes(body)
    if len(raw) < 16:
        raise MessageError(f"{what}: index record of {len(raw)} bytes is truncated")
    B, L, nc, D = struct.unpack("<4I", raw[:16])
    if (L, nc, D) != (length, num_codes, dim) or (batch is not None and B != batch):
        raise MessageError(f"{what}: index record is for B={B}, L={L}, Nc={nc}, D={D}; expected B={batch}, "
                           f"L={length}, Nc={num_codes}, D={dim}")
    nb = message_nbytes(L, nc)
    nbit = (nc + 7) // 8
    head = 16 + B * nb + nbit
    head += _pad8(head)
    if len(raw) < head:
        raise MessageError(f"{what}: index record of {len(raw)} bytes is truncated (needs at least {head})")
    msgs = [raw[16 + k * nb: 16 + (k + 1) * nb] for k in range(B)]
    try:
        idx = unpack_index_batch(msgs, length=L, num_codes=nc) if B else torch.zeros(0, L, dtype=torch.int64)
    except ValueError as err:
        raise MessageError(f"{what}: {err}") from err
    bits = np.unpackbits(np.frombuffer(raw[16 + B * nb: 16 + B * nb + nbit], dtype=np.uint8), bitorder="little")
    if bits[nc:].any():
        raise MessageError(f"{what}: codebook bitmap has bits set beyond Nc = {nc}")
    rows = torch.from_numpy(bits[:nc].astype(bool))
    k = int(rows.sum())
    if len(raw) != head + 4 * k * D:
        raise MessageError(f"{what}: index record has {len(raw)} bytes, {k} codeword rows of D={D} need "
                           f"{head + 4 * k * D} (truncated or padded)")
    values = torch.frombuffer(bytearray(raw[head:]), dtype=torch.float32).reshape(k, D) if k else \
        torch.zeros(0, D, dtype=torch.float32)
    return IndexRecord(idx, rows, values)


def index_message_bits(length: int, num_codes: int) -> int:
    """The Section III-D figure Nb * L (bits), for comparison with measured bytes."""
    return bits_per_index(num_codes) * length
