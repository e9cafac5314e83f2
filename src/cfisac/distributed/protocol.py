"""The control protocol every distributed task (training and sensing) shares: JSON control messages on a link,
the best-effort ``ABORT`` to every peer, reading the reason of a peer's abort, and the error every rank raises.

Kept apart from :mod:`.training` so that online sensing (:mod:`.sensing`) loads without the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .transport import Link, PeerAborted, PeerFailure
from .wire import Kind, Message, decode_json, encode_json, make_message, open_body

__all__ = ["DistributedTrainingError", "abort_all", "ap_rank_error", "pending_abort", "recv_json", "send_json"]


class DistributedTrainingError(RuntimeError):
    """Raised on every rank when a distributed run fails; the message names the failing rank and the checkpoint."""


def send_json(link: Link, kind: Kind, obj: dict[str, Any], *, step: int = 0, ap: int | None = None,
              checksum: bool = True, timeout: float | None = None) -> None:
    link.send(make_message(kind, [encode_json(obj)], sender=link.rank, ap=ap, step=step, device=link.device,
                           checksum=checksum), timeout=timeout)


def recv_json(link: Link, kind: Kind, what: str) -> tuple[dict[str, Any], Message]:
    msg = link.recv(kind, what=what)
    return decode_json(open_body(msg), what), msg


def abort_all(links: Sequence[Link], reason: str, *, skip: set[int] = frozenset()) -> None:
    """Best effort: tell every reachable peer why the run stops (short timeout, errors ignored)."""
    for link in links:
        if link.peer in skip:
            continue
        try:
            send_json(link, Kind.ABORT, {"reason": reason}, timeout=min(5.0, link.timeout_s))
        except Exception:  # the peer may be dead: nothing more to do
            pass


def pending_abort(link: Link, timeout: float = 0.5) -> str | None:
    """After a failed send / receive: the reason of an ``ABORT`` the peer sent before it went away, if one is
    waiting ("stops: <peer> aborted the run: <reason>"), else None."""
    try:
        msg = link.recv(Kind.ABORT, timeout=timeout)
        return f"stops: {link.peer_name} aborted the run: {decode_json(open_body(msg), 'ABORT').get('reason')}"
    except Exception:
        return None


def ap_rank_error(err: Exception, link: Link, me: str,
                  error: type[DistributedTrainingError] = DistributedTrainingError) -> DistributedTrainingError:
    """The error an AP rank ``me`` raises when its task fails with ``err``: the CPU aborted (``PeerAborted``), the
    CPU is gone (``PeerFailure``: the reason of its ``ABORT`` if one is waiting), or the AP itself failed (the CPU is
    told first, best effort)."""
    if isinstance(err, PeerAborted):
        return error(f"{me} stops: {err}")
    if isinstance(err, PeerFailure):
        return error(f"{me} {pending_abort(link) or f'lost the CPU: {err}'}")
    abort_all([link], f"{me} failed: {type(err).__name__}: {err}")
    return error(f"{me} failed: {type(err).__name__}: {err}")
