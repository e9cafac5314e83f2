"""Links between two ranks: framed messages (:mod:`cfisac.distributed.wire`) over ``torch.distributed``
point-to-point ``isend`` / ``irecv`` (gloo on CPU, NCCL on GPU), or over in-process queues (threads, for tests).

A link is one peer seen from one rank. ``send(msg)`` and ``recv(expect=..., timeout=...)`` never hang forever: every
wait has a timeout (``timeout_s``), and a dead or silent peer raises :class:`PeerFailure` naming the peer's role,
rank and what was awaited. A peer that sends ``ABORT`` instead of what was expected raises :class:`PeerAborted` with
the peer's reason. Every link counts the bytes it sends and receives per message kind (:class:`Traffic`).

No ``torch.distributed.rpc`` (maintenance mode), no object collectives (pickle): only uint8 tensors.
Gloo caveat (measured): a receive buffer larger than the message is filled silently, a smaller one aborts the
process; hence the fixed-size header, the exact body size it announces and the body trailer of the wire format.
"""

from __future__ import annotations

import datetime
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from .wire import HEADER_BYTES, Kind, Message, MessageError, open_body, pack_header, unpack_header

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "Link", "PeerAborted", "PeerFailure", "QueueLink", "TorchLink", "Traffic",
           "queue_pair", "role_name"]

DEFAULT_MAX_MESSAGE_BYTES = 1 << 36  # 64 GiB: rejects absurd lengths of corrupted headers before allocating


class PeerFailure(RuntimeError):
    """The peer (rank ``peer``) died, timed out or broke the connection."""

    def __init__(self, message: str, *, peer: int | None = None) -> None:
        super().__init__(message)
        self.peer = peer


class PeerAborted(RuntimeError):
    """The peer (rank ``peer``) aborted the run and said why."""

    def __init__(self, message: str, *, peer: int | None = None) -> None:
        super().__init__(message)
        self.peer = peer


def role_name(rank: int) -> str:
    """``"CPU (rank 0)"`` or ``"receive AP m (rank m+1)"``: rank 0 is the CPU, rank 1 + m receive AP m."""
    return "CPU (rank 0)" if rank == 0 else f"receive AP {rank - 1} (rank {rank})"


@dataclass
class Traffic:
    """Bytes and messages sent / received on a link, per message kind (header + body, trailer included)."""

    sent_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sent_messages: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    recv_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    recv_messages: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rejected_messages: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # bad trailer / CRC-32

    def count(self, direction: str, msg: Message) -> None:
        getattr(self, f"{direction}_bytes")[msg.kind.name] += msg.nbytes
        getattr(self, f"{direction}_messages")[msg.kind.name] += 1

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {k: dict(getattr(self, k)) for k in ("sent_bytes", "sent_messages", "recv_bytes", "recv_messages",
                                                    "rejected_messages")}


class Link:
    """One peer of this rank. Subclasses implement ``_send`` and ``_recv_header`` / ``_recv_body``."""

    def __init__(self, rank: int, peer: int, *, timeout_s: float = 300.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.rank, self.peer, self.timeout_s, self.max_message_bytes = rank, peer, timeout_s, max_message_bytes
        self.traffic = Traffic()
        self.device = torch.device("cpu")

    @property
    def peer_name(self) -> str:
        return role_name(self.peer)

    def send(self, msg: Message, *, timeout: float | None = None) -> None:
        if msg.header.sender != self.rank:
            raise ValueError(f"message sender {msg.header.sender} is not this rank ({self.rank})")
        try:
            self._send(msg, self.timeout_s if timeout is None else timeout)
        except (RuntimeError, queue.Full, TimeoutError) as err:
            if isinstance(err, (PeerFailure, PeerAborted)):
                raise
            raise PeerFailure(f"sending {msg.kind.name} to {self.peer_name} failed: {_short(err)}",
                              peer=self.peer) from err
        self.traffic.count("sent", msg)

    def recv(self, expect: Kind | Iterable[Kind], *, timeout: float | None = None, what: str = "") -> Message:
        """Receive the next message; it must be of a kind in ``expect`` (``ABORT`` raises :class:`PeerAborted`)."""
        kinds = {expect} if isinstance(expect, Kind) else set(expect)
        wait = self.timeout_s if timeout is None else timeout
        awaited = (what or "/".join(sorted(k.name for k in kinds))).replace(f" from {self.peer_name}", "")
        try:
            raw = self._recv_header(wait)
        except (RuntimeError, TimeoutError) as err:
            if isinstance(err, TimeoutError) or "timed out" in str(err).lower():
                text = f"did not deliver {awaited} within {wait:g} s (hung or too slow: see --timeout)"
            else:
                text = f"broke the connection (the process died?) while {role_name(self.rank)} waited for {awaited}"
            raise PeerFailure(f"{self.peer_name} {text}: {_short(err)}", peer=self.peer) from err
        header = unpack_header(raw, max_length=self.max_message_bytes)
        if header.sender != self.peer:
            raise MessageError(f"message claims sender rank {header.sender} but arrived from {self.peer_name}")
        try:
            body = self._recv_body(header.length, wait)
        except (RuntimeError, TimeoutError) as err:
            raise PeerFailure(f"{self.peer_name} sent the header of a {header.kind.name} message but not its "
                              f"{header.length}-byte body within {wait:g} s: {_short(err)}", peer=self.peer) from err
        msg = Message(header, body)
        self.traffic.count("recv", msg)
        try:  # the trailer (and CRC-32 when flagged) of every message, before anyone reads its body
            open_body(msg)
        except MessageError as err:
            self.traffic.rejected_messages[header.kind.name] += 1
            n = sum(self.traffic.rejected_messages.values())
            raise MessageError(f"{err}; rejected ({n} corrupted message(s) from {self.peer_name} so far)") from None
        if header.kind == Kind.ABORT and Kind.ABORT not in kinds:
            from .wire import decode_json

            try:
                reason = decode_json(open_body(msg), "ABORT").get("reason", "no reason given")
            except MessageError as err:
                reason = f"(unreadable reason: {err})"
            raise PeerAborted(f"{self.peer_name} aborted the run: {reason}", peer=self.peer)
        if header.kind not in kinds:
            raise MessageError(f"expected {awaited} from {self.peer_name}, got a {header.kind.name} message "
                               f"(step {header.step}): the two ranks are out of step")
        return msg

    def _send(self, msg: Message, timeout: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _recv_header(self, timeout: float) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _recv_body(self, length: int, timeout: float) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _short(err: BaseException, n: int = 300) -> str:
    s = " ".join(str(err).split())
    return s if len(s) <= n else s[: n - 3] + "..."


# ---------------------------------------------------------------------------------------------------- torch
class TorchLink(Link):
    """A link over the default ``torch.distributed`` process group (``init_process_group`` done by the caller).

    ``device``: where message tensors live (``cpu`` for gloo, the rank's CUDA device for NCCL). Timeouts use
    ``Work.wait(timeout)``; on NCCL set ``TORCH_NCCL_BLOCKING_WAIT=1`` (``init_distributed`` does) so that a wait
    really returns at the timeout.
    """

    def __init__(self, rank: int, peer: int, *, device: torch.device | str = "cpu", timeout_s: float = 300.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        super().__init__(rank, peer, timeout_s=timeout_s, max_message_bytes=max_message_bytes)
        self.device = torch.device(device)

    def _wait(self, work, timeout: float) -> None:
        work.wait(datetime.timedelta(seconds=timeout))

    def _send(self, msg: Message, timeout: float) -> None:
        import torch.distributed as dist

        header = torch.frombuffer(bytearray(pack_header(msg.header)), dtype=torch.uint8).to(self.device)
        works = [dist.isend(header, self.peer)]
        body = msg.body.to(self.device) if msg.header.length else None
        if body is not None:
            works.append(dist.isend(body, self.peer))
        for w in works:
            self._wait(w, timeout)

    def _recv_header(self, timeout: float) -> bytes:
        import torch.distributed as dist

        buf = torch.zeros(HEADER_BYTES, dtype=torch.uint8, device=self.device)
        self._wait(dist.irecv(buf, self.peer), timeout)
        return buf.cpu().numpy().tobytes()

    def _recv_body(self, length: int, timeout: float) -> torch.Tensor:
        import torch.distributed as dist

        buf = torch.zeros(length, dtype=torch.uint8, device=self.device)
        if length:
            self._wait(dist.irecv(buf, self.peer), timeout)
        return buf


# ---------------------------------------------------------------------------------------------------- queues
class QueueLink(Link):
    """In-process link over two ``queue.Queue`` (one per direction); for running ranks as threads in tests.

    Each transfer copies the bytes, so the peers share no memory. ``close()`` acts like closing a socket: the peer's
    pending and later receives fail once the queue is drained. ``truncate`` (tests) cuts the last n bytes of the
    next body sent, as a broken sender would.
    """

    def __init__(self, rank: int, peer: int, inbox: queue.Queue, outbox: queue.Queue, *, closed: threading.Event,
                 peer_closed: threading.Event, timeout_s: float = 300.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        super().__init__(rank, peer, timeout_s=timeout_s, max_message_bytes=max_message_bytes)
        self.inbox, self.outbox = inbox, outbox
        self._closed, self._peer_closed = closed, peer_closed
        self.truncate = 0

    def close(self) -> None:
        self._closed.set()

    def peer_gone(self) -> bool:
        return self._peer_closed.is_set()

    def _send(self, msg: Message, timeout: float) -> None:
        if self._peer_closed.is_set():
            raise RuntimeError("connection closed by peer")
        body = msg.body.detach().cpu().clone()
        if self.truncate:
            body, self.truncate = body[: max(0, body.numel() - self.truncate)], 0
        self.outbox.put(("h", pack_header(msg.header)), timeout=timeout)
        if msg.header.length:
            self.outbox.put(("b", body), timeout=timeout)

    def _get(self, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.inbox.get(timeout=min(0.02, max(1e-3, deadline - time.monotonic())))
            except queue.Empty:
                if self._peer_closed.is_set() and self.inbox.empty():
                    raise RuntimeError("connection closed by peer") from None
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"timed out after {timeout:g} s") from None

    def _recv_header(self, timeout: float) -> bytes:
        tag, raw = self._get(timeout)
        if tag != "h":
            raise RuntimeError("stream out of sync: body where a header was expected")
        return raw

    def _recv_body(self, length: int, timeout: float) -> torch.Tensor:
        buf = torch.zeros(length, dtype=torch.uint8)
        if length:
            tag, got = self._get(timeout)
            if tag != "b":
                raise RuntimeError("stream out of sync: header where a body was expected")
            n = min(length, got.numel())  # like gloo: a short message fills the buffer partially
            buf[:n] = got[:n]
        return buf


def queue_pair(rank_a: int, rank_b: int, *, timeout_s: float = 30.0) -> tuple[QueueLink, QueueLink]:
    """Two connected :class:`QueueLink` (a's view of b, b's view of a)."""
    ab, ba = queue.Queue(), queue.Queue()
    ca, cb = threading.Event(), threading.Event()
    return (QueueLink(rank_a, rank_b, ba, ab, closed=ca, peer_closed=cb, timeout_s=timeout_s),
            QueueLink(rank_b, rank_a, ab, ba, closed=cb, peer_closed=ca, timeout_s=timeout_s))
