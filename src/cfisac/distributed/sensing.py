"""Online sensing (paper Algorithm 2) with the CPU and every receive AP in its own process.

Schedule (AP m <-> CPU):

1. AP -> CPU ``HELLO`` {role, ap, task: "sense", L, Nc, message_nbytes, coder}.
2. AP -> CPU ``CODEBOOK`` [Nc, D] float32 (D-VQVAE only): Section IV-B, every AP sends its trained codebook once.
3. Per batch k of B updates: AP -> CPU ``UPDATES``: the B fronthaul messages of Algorithm 2 line 6 concatenated,
   each exactly ``ceil(L log2 Nc / 8)`` bytes (bit-packed indices, :func:`cfisac.quantize.pack_index_batch`; the
   float32 payload for the D-VAE / CNN schemes); or ``ENTROPY``: the B self-delimiting entropy-coded messages
   (:mod:`cfisac.entropy`: a varint length, then a range code or, when shorter, the bit-packed indices).
4. AP -> CPU ``DONE``.

The CPU dequantizes with the received codebooks, decodes with X and rescales to metres and m/s (line 8). Each AP
loads only its own part of the checkpoint (``aps.{m}.*`` of ``model.safetensors``) and sees only Y_m; the CPU loads
only the decoder. Ground-truth positions are used by the CPU for the accuracy report only.

Bytes are those handed to the transport (header 32 + body with its 8-byte trailer); gloo's own TCP framing is not
counted. :class:`SenseResult` compares the payload bytes per update with the Section III-D figure Nb L.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..metrics import accuracy
from ..models import build_ap_side, build_cpu_side
from .common import ap_echoes, cpu_inputs
from .protocol import DistributedTrainingError, abort_all, ap_rank_error, recv_json, send_json
from .transport import Link, role_name
from .wire import (
    Kind,
    MessageError,
    decode_tensor,
    encode_tensor,
    make_message,
    open_body,
)

__all__ = ["CODERS", "SenseResult", "load_side", "run_ap_sensing", "run_cpu_sensing"]

CODERS = ("packed", "entropy")


class DistributedSensingError(DistributedTrainingError):
    """Raised on every rank when distributed online sensing fails."""


def load_side(checkpoint: str | Path, role: str, m: int = 0, *, which: str = "latest",
              device: str | torch.device = "cpu"):
    """Load only one side of a checkpoint: ``role`` "ap" (receive AP m) or "cpu".

    Returns (side module in eval mode, kind, cfg, mcfg, tcfg, normaliser, checkpoint directory).
    """
    from safetensors import safe_open

    from ..checkpoint import find_checkpoint, model_from_state

    ckpt = find_checkpoint(checkpoint, which)
    kind, cfg, mcfg, tcfg, normaliser = model_from_state(json.loads((ckpt / "state.json").read_text()))
    if role == "ap":
        side, prefix = build_ap_side(kind, cfg, mcfg, m, seed=tcfg.seed), f"aps.{m}."
    elif role == "cpu":
        side, prefix = build_cpu_side(kind, cfg, mcfg, seed=tcfg.seed), "cpu_side."
    else:
        raise ValueError(f"role must be 'ap' or 'cpu', got {role!r}")
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        sd = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    missing, unexpected = side.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {ckpt} does not match the {role} side: missing {missing}, "
                         f"unexpected {unexpected}")
    return side.to(device).eval(), kind, cfg, mcfg, tcfg, normaliser, ckpt


def _batches(start: int, n: int, batch_size: int) -> list[range]:
    if n < 1 or batch_size < 1 or start < 0:
        raise ValueError(f"n and batch_size must be positive and start >= 0, got n={n}, batch_size={batch_size}, "
                         f"start={start}")
    return [range(lo, min(start + n, lo + batch_size)) for lo in range(start, start + n, batch_size)]


def run_ap_sensing(link: Link, m: int, checkpoint: str | Path, *, seed: int, n: int, start: int = 0,
                   batch_size: int = 64, coder: str = "packed", entropy_model: str | Path | None = None,
                   which: str = "latest", device: str | torch.device = "cpu", checksum: bool = True,
                   threads: int | None = None) -> dict[str, Any]:
    """Receive AP m's side of distributed Algorithm 2 on test samples ``start .. start+n-1`` of dataset ``seed``."""
    me = role_name(link.rank)
    if threads:
        torch.set_num_threads(threads)
    if coder not in CODERS:
        raise ValueError(f"coder must be one of {list(CODERS)}, got {coder!r}")
    try:
        ap, kind, cfg, mcfg, tcfg, _, _ = load_side(checkpoint, "ap", m, which=which, device=device)
        if ap.needs_x:
            raise ValueError(f"front end {mcfg.front_end!r} needs X at the receive AP: not available here")
        em = None
        if coder == "entropy":
            if kind != "dvqvae":
                raise ValueError(f"entropy coding needs codeword indices; the checkpoint holds a {kind} model")
            from ..entropy import EntropyModel

            if entropy_model is None:
                raise ValueError("coder 'entropy' needs an entropy model file (cfisac entropy-fit)")
            em = EntropyModel.load(entropy_model)
            if (em.num_codes, em.length) != (mcfg.num_codes, ap.latent_length) or m >= em.num_aps:
                raise ValueError(f"entropy model {entropy_model} does not fit this model (Nc, L, M)")
        send_json(link, Kind.HELLO, {"role": "ap", "ap": m, "task": "sense", "kind": kind, "coder": coder,
                                     "L": ap.latent_length, "Nc": mcfg.num_codes,
                                     "message_nbytes": ap.message_nbytes, "host": socket.gethostname(),
                                     "pid": os.getpid()}, ap=m, checksum=checksum)
        if kind == "dvqvae":
            link.send(make_message(Kind.CODEBOOK, encode_tensor(ap.quantizer.codebook.float().cpu()),
                                   sender=link.rank, ap=m, device=link.device, checksum=checksum))
        count = 0
        for k, rows in enumerate(_batches(start, n, batch_size)):
            y_m = ap_echoes(cfg, seed, rows, m).to(device)
            if em is not None:
                body, kind_w = b"".join(em.encode(m, ap.indices(y_m))), Kind.ENTROPY
            else:
                body, kind_w = b"".join(ap.encode(y_m)), Kind.UPDATES
            link.send(make_message(kind_w, [body], sender=link.rank, ap=m, step=k, device=link.device,
                                   checksum=checksum))
            count += len(rows)
        send_json(link, Kind.DONE, {"updates": count}, ap=m, checksum=checksum)
        return {"updates": count, "traffic": link.traffic.to_dict()}
    except Exception as err:
        raise ap_rank_error(err, link, me, DistributedSensingError) from err


@dataclass
class SenseResult:
    """Estimates and fronthaul measurements of a distributed online-sensing run.

    ``positions`` / ``velocities`` [n, Q, 2] float64 (m, m/s); ``true_positions`` / ``true_velocities`` likewise;
    ``position_rmse`` / ``velocity_rmse`` after optimal assignment. Per AP: ``payload_bits_per_update`` (the
    fronthaul messages themselves, 8 x bytes), ``wire_bits_per_update`` (with the 40 bytes of framing of each
    transport message, shared by the B updates of a batch); ``formula_bits`` = Nb L (Section III-D, D-VQVAE) or the
    32-bit count of the payload (D-VAE, CNN).
    """

    positions: torch.Tensor
    velocities: torch.Tensor
    true_positions: torch.Tensor
    true_velocities: torch.Tensor
    position_rmse: float
    velocity_rmse: float
    coder: str
    formula_bits: int
    message_bits: int
    payload_bits_per_update: list[float]
    wire_bits_per_update: list[float]
    traffic: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"coder": self.coder, "updates": int(self.positions.shape[0]), "position_rmse": self.position_rmse,
                "velocity_rmse": self.velocity_rmse, "formula_bits": self.formula_bits,
                "message_bits": self.message_bits, "payload_bits_per_update": self.payload_bits_per_update,
                "wire_bits_per_update": self.wire_bits_per_update}


def run_cpu_sensing(links: Sequence[Link], checkpoint: str | Path, *, seed: int, n: int, start: int = 0,
                    batch_size: int = 64, coder: str = "packed", entropy_model: str | Path | None = None,
                    which: str = "latest", device: str | torch.device = "cpu", checksum: bool = True,
                    threads: int | None = None, log: Callable[[str], Any] | None = None) -> SenseResult:
    """The CPU's side of distributed Algorithm 2: receive every AP's messages, decode, rescale."""
    from ..quantize import bits_per_index, unpack_index_batch

    log = log or (lambda s: None)
    if threads:
        torch.set_num_threads(threads)
    if coder not in CODERS:
        raise ValueError(f"coder must be one of {list(CODERS)}, got {coder!r}")
    cpu, kind, cfg, mcfg, tcfg, normaliser, ckpt = load_side(checkpoint, "cpu", which=which, device=device)
    if len(links) != cfg.n_rx or any(link.peer != m + 1 for m, link in enumerate(links)):
        raise ValueError(f"the CPU needs links to ranks 1..{cfg.n_rx} (one per receive AP)")
    em = None
    if coder == "entropy":
        from ..entropy import EntropyModel

        if entropy_model is None:
            raise ValueError("coder 'entropy' needs an entropy model file (cfisac entropy-fit)")
        em = EntropyModel.load(entropy_model)
    L = cpu.latent_length
    nbytes = None
    payload_bytes = [0] * cfg.n_rx
    wire_bytes = [0] * cfg.n_rx
    pos_out, vel_out, tp, tv = [], [], [], []
    try:
        for m, link in enumerate(links):
            hello, _ = recv_json(link, Kind.HELLO, f"HELLO from {link.peer_name}")
            if hello.get("role") != "ap" or hello.get("ap") != m or hello.get("task") != "sense":
                raise MessageError(f"{link.peer_name} introduced itself as {hello}: expected receive AP {m} for "
                                   "sensing")
            if hello.get("coder") != coder or hello.get("L") != L:
                raise MessageError(f"{link.peer_name} uses coder {hello.get('coder')!r} and L={hello.get('L')}; "
                                   f"the CPU expects {coder!r} and L={L}")
            nbytes = int(hello["message_nbytes"])
        if kind == "dvqvae":
            books = []
            for m, link in enumerate(links):
                msg = link.recv(Kind.CODEBOOK, what=f"CODEBOOK from {link.peer_name}")
                books.append(decode_tensor(open_body(msg), what=f"CODEBOOK of AP {m}",
                                           shape=tuple(cpu.codebooks.shape[1:]), dtype=torch.float32))
            cpu.receive_codebooks(books)
        for k, rows in enumerate(_batches(start, n, batch_size)):
            B = len(rows)
            b = cpu_inputs(cfg, seed, rows)
            messages = []
            for m, link in enumerate(links):
                want = Kind.ENTROPY if em is not None else Kind.UPDATES
                what = f"{want.name} batch {k} from {link.peer_name}"
                msg = link.recv(want, what=what)
                if msg.header.step != k:
                    raise MessageError(f"{what}: message is for batch {msg.header.step}")
                body = open_body(msg)
                wire_bytes[m] += msg.nbytes
                if em is not None:
                    raw = body.cpu().numpy().tobytes()
                    payload_bytes[m] += len(raw)
                    try:
                        idx = em.decode(m, raw, batch=B)
                    except ValueError as err:
                        raise MessageError(f"{what}: {err}") from err
                    from ..quantize import pack_index_batch

                    messages.append(pack_index_batch(idx, num_codes=mcfg.num_codes))
                else:
                    raw = body.cpu().numpy().tobytes()
                    if len(raw) != B * nbytes:
                        raise MessageError(f"{what}: {len(raw)} bytes, expected {B} messages of {nbytes} bytes "
                                           "(truncated or padded)")
                    payload_bytes[m] += len(raw)
                    msgs = [raw[j * nbytes: (j + 1) * nbytes] for j in range(B)]
                    if kind == "dvqvae":
                        try:
                            unpack_index_batch(msgs, length=L, num_codes=mcfg.num_codes)  # range / padding check
                        except ValueError as err:
                            raise MessageError(f"{what}: {err}") from err
                    messages.append(msgs)
            psi = normaliser.denormalise(cpu.decode(messages, b["x"].to(device)))
            Q = cfg.n_targets
            pos_out.append(psi[:, : 2 * Q].reshape(B, Q, 2).cpu())
            vel_out.append(psi[:, 2 * Q:].reshape(B, Q, 2).cpu())
            tp.append(b["positions"])
            tv.append(b["velocities"])
        for link in links:
            recv_json(link, Kind.DONE, f"DONE from {link.peer_name}")
    except Exception as err:
        abort_all(links, f"the CPU stops online sensing: {type(err).__name__}: {err}")
        raise DistributedSensingError(f"distributed online sensing failed: {type(err).__name__}: {err}") from err
    P, V, TP, TV = torch.cat(pos_out), torch.cat(vel_out), torch.cat(tp), torch.cat(tv)
    acc = accuracy(P, V, TP, TV)
    formula = bits_per_index(mcfg.num_codes) * L if kind == "dvqvae" else 8 * nbytes
    total = P.shape[0]
    res = SenseResult(P, V, TP, TV, float(acc.position_rmse), float(acc.velocity_rmse), coder, formula, 8 * nbytes,
                      [8 * p / total for p in payload_bytes], [8 * w / total for w in wire_bytes],
                      [link.traffic.to_dict() for link in links])
    log(f"online sensing of {total} updates from {ckpt}: RMSE {res.position_rmse:.3f} m / "
        f"{res.velocity_rmse:.3f} m/s; bits per update per AP {res.payload_bits_per_update} "
        f"(Nb L = {formula}, message {8 * nbytes})")
    return res
