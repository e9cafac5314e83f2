"""Collaborative training (paper Algorithm 1) with the CPU and every receive AP in its own process.

Rank 0 runs :func:`run_cpu_training`, rank 1 + m runs :func:`run_ap_training` for receive AP m; they exchange framed
messages (:mod:`cfisac.distributed.wire`) over links (:mod:`cfisac.distributed.transport`). The AP side and the CPU
side are the trainer objects (:class:`cfisac.train.ApTrainer`, :class:`cfisac.train.CpuTrainer`), so k steps give
the parameters of k steps of :func:`cfisac.train.train` with the same seeds.

Fixed schedule (AP m <-> CPU; every arrow is one message; the CPU drives, the APs follow):

Start
    1. AP -> CPU ``HELLO`` {role, ap, task, host, pid}.
    2. CPU -> AP ``INIT``: AP m's initial (or resumed) parameters, buffers (codebook and EMA statistics) and Adam
       state, plus the system / model / training configs and the schedule position (paper Step 1: the CPU
       initialises every side and sends the AP its part). The CPU's configs are authoritative.
Training step r of epoch e (global step s)
    3. CPU -> AP ``CONTROL`` {op: "step", epoch: e, step: r}. Both sides derive the batch's sample indices from
       ``cfisac.train.epoch_batches(seed, e, ...)[r]`` (predefined sampling, Section IV); the AP checks e and r.
    4. AP -> CPU ``FORWARD``: local statistics (commitment, perplexity, usage) and, in ``indices`` mode, the
       bit-packed indices [B, L] plus the codewords used whose value the CPU does not have yet (the EMA moves every
       used codeword every step, so in practice the used rows, [k <= Nc, D] float32); in ``features`` mode the
       quantized features [B, D, d1, d2, d3] float32 (paper footnote 4). The AP has updated its codebook by EMA.
    5. CPU -> AP ``GRAD``: the gradient of the estimation loss w.r.t. AP m's features [B, D, d1, d2, d3] float32
       (skipped for the CNN scheme, whose AP has nothing to train). The AP copies it to its encoder output
       (straight through), adds its commitment loss and steps its own Adam.
End of epoch (and when the time budget stops the run)
    6. CPU -> AP ``CONTROL`` {op: "validate"}; AP -> CPU one ``EVAL`` per validation batch (eval mode: no EMA).
    7. CPU -> AP ``CONTROL`` {op: "checkpoint"}; AP -> CPU ``STATE`` (parameters, buffers, Adam state); the CPU
       writes a checkpoint in the format of ``cfisac train`` (:mod:`cfisac.distributed.checkpoint`). Also every
       ``checkpoint_every`` steps, and once at the start of a fresh run.
Finish
    8. CPU -> AP ``CONTROL`` {op: "stop"}; AP -> CPU ``DONE``.
Failure
    Any rank that fails sends ``ABORT`` {reason} to the peers it can reach and raises
    :class:`DistributedTrainingError`. A rank that dies or stops answering is detected by the timeout of every
    wait (``DistConfig.timeout_s``) or by the broken connection; the CPU then aborts the other APs, so every rank
    stops with an error naming the failed rank, and the last complete checkpoint resumes the run (``--resume``).

The AP never receives X, the labels or another AP's echoes; the CPU never receives echoes, only what steps 4 and 6
carry. Checkpoint traffic (steps 2 and 7) is counted apart from the per-step fronthaul. The CPU writes
``out/distributed.json`` (bytes and messages per kind and AP link, its time per step phase) with every checkpoint.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import SystemConfig
from ..metrics import accuracy
from ..models import LabelNormaliser, ModelConfig, build_ap_side, build_model
from ..train import (
    NORMALISER_MAX_SAMPLES,
    RESUMABLE_CHANGES,
    ApTrainer,
    CpuTrainer,
    DataSource,
    TrainConfig,
    TrainResult,
    epoch_batches,
    estimation_loss,
)
from .checkpoint import CheckpointWriter, read_checkpoint
from .common import (
    DistConfig,
    ap_echoes,
    cpu_inputs,
    load_optimizer_tensors,
    optimizer_tensors,
    pack_state,
    unpack_state,
)
from .transport import Link, PeerAborted, PeerFailure, role_name
from .wire import (
    FLAG_INDICES,
    Kind,
    Message,
    MessageError,
    decode_index_record,
    decode_json,
    decode_stats,
    decode_tensor,
    encode_index_record,
    encode_json,
    encode_stats,
    encode_tensor,
    make_message,
    open_body,
)

__all__ = ["DistributedTrainingError", "run_ap_training", "run_cpu_training", "validation_batches"]


class DistributedTrainingError(RuntimeError):
    """Raised on every rank when a distributed run fails; the message names the failing rank and the checkpoint."""


def validation_batches(tcfg: TrainConfig) -> list[range]:
    """Dataset positions of each validation batch (as ``cfisac.train.validate``: batches of max(B, 64))."""
    bs = max(tcfg.batch_size, 64)
    return [range(lo, min(tcfg.n_val, lo + bs)) for lo in range(0, tcfg.n_val, bs)]


def _payload_grid(ap_or_cpu) -> tuple[int, ...]:
    return tuple(ap_or_cpu.payload_shape[1:])


def _send_json(link: Link, kind: Kind, obj: dict[str, Any], *, step: int = 0, ap: int | None = None,
               checksum: bool = True, timeout: float | None = None) -> None:
    link.send(make_message(kind, [encode_json(obj)], sender=link.rank, ap=ap, step=step, device=link.device,
                           checksum=checksum), timeout=timeout)


def _recv_json(link: Link, kind: Kind, what: str) -> tuple[dict[str, Any], Message]:
    msg = link.recv(kind, what=what)
    return decode_json(open_body(msg), what), msg


def _abort_all(links: Sequence[Link], reason: str, *, skip: set[int] = frozenset()) -> None:
    """Best effort: tell every reachable peer why the run stops (short timeout, errors ignored)."""
    for link in links:
        if link.peer in skip:
            continue
        try:
            _send_json(link, Kind.ABORT, {"reason": reason}, timeout=min(5.0, link.timeout_s))
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


# ---------------------------------------------------------------------------------------------------- codebooks
class CodebookSender:
    """AP side of the codebook delta: which codeword values the CPU already has (indices mode)."""

    def __init__(self, num_codes: int, dim: int) -> None:
        self.known = torch.zeros(num_codes, dtype=torch.bool)
        self.values = torch.zeros(num_codes, dim, dtype=torch.float32)

    def delta(self, payload: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codewords used by this batch whose value the CPU lacks: (rows [Nc] bool, values [k, D] float32).

        The values are read off the payload: every feature vector of the payload *is* its codeword (Eq. 14, the
        codebook before this step's EMA update), so the CPU's dequantization reproduces the payload bit for bit.
        """
        D = self.values.shape[1]
        flat = payload.detach().float().movedim(1, -1).reshape(-1, D).cpu()
        idx = indices.reshape(-1).cpu()
        cur = self.values.clone()
        cur.index_copy_(0, idx, flat)
        used = torch.zeros_like(self.known)
        used[idx] = True
        changed = used & (~self.known | (cur != self.values).any(1))
        self.values[changed] = cur[changed]
        self.known |= changed
        return changed, cur[changed]


class CodebookMirror:
    """CPU side of the codebook delta: the CPU's copy of AP m's codewords; dequantizes index records."""

    def __init__(self, num_codes: int, dim: int, grid: tuple[int, ...]) -> None:
        self.known = torch.zeros(num_codes, dtype=torch.bool)
        self.values = torch.zeros(num_codes, dim, dtype=torch.float32)
        self.grid = grid

    def payload(self, body: torch.Tensor, *, what: str, batch: int | None) -> torch.Tensor:
        """Index record -> the AP's payload [B, D, d1, d2, d3] float32 (Eq. 14)."""
        rec = decode_index_record(body, what=what, batch=batch, length=math.prod(self.grid),
                                  num_codes=self.values.shape[0], dim=self.values.shape[1])
        self.values[rec.rows] = rec.values
        self.known |= rec.rows
        used = torch.unique(rec.indices)
        if used.numel() and not bool(self.known[used].all()):
            missing = used[~self.known[used]].tolist()
            raise MessageError(f"{what}: indices refer to codewords {missing[:8]} whose value was never sent")
        feats = self.values[rec.indices]  # [B, L, D]
        return feats.reshape(rec.indices.shape[0], *self.grid, -1).movedim(-1, 1).contiguous()


# ---------------------------------------------------------------------------------------------------- AP rank
def _fault(fault: str | None, event: str, global_step: int, link: Link) -> str | None:
    """Test hook: ``"<action>@<global step>"`` with action exit (the process dies), hang (stops answering),
    raise (a Python error) or truncate (the next FORWARD body is cut short). Returns "truncate" when due."""
    if not fault or event != "forward":
        return None
    action, _, at = fault.partition("@")
    if int(at) != global_step:
        return None
    if action == "exit":
        os._exit(17)
    if action == "hang":  # silent until the peer gives up (or 10 timeouts)
        end = time.monotonic() + 10 * link.timeout_s
        while time.monotonic() < end and not getattr(link, "peer_gone", lambda: False)():
            time.sleep(0.05)
        raise RuntimeError(f"injected hang at global step {global_step} ended")
    if action == "raise":
        raise RuntimeError(f"injected fault at global step {global_step}")
    return action


def run_ap_training(link: Link, m: int, *, device: str | torch.device = "cpu", threads: int | None = None,
                    fault: str | None = None, log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Receive AP m's side of distributed Algorithm 1 (rank 1 + m); returns a small report (steps, traffic).

    ``link`` is the link to the CPU (rank 0). Everything else (configs, initial state) comes from the CPU's
    ``INIT`` message. ``fault`` is a test hook (see :func:`_fault`).
    """
    log = log or (lambda s: None)
    device = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    me = role_name(link.rank)
    steps_done = 0
    timings = dict.fromkeys(("simulate", "forward", "send_forward", "wait_grad", "backward"), 0.0)
    try:
        _send_json(link, Kind.HELLO, {"role": "ap", "ap": m, "task": "train", "host": socket.gethostname(),
                                      "pid": os.getpid()}, ap=m)
        init = link.recv(Kind.INIT, what="INIT (initial state from the CPU)")
        model_sd, optim_t, meta = unpack_state(open_body(init).cpu().numpy().tobytes(), "INIT")
        if meta.get("ap") != m:
            raise MessageError(f"INIT is for receive AP {meta.get('ap')}, this rank is AP {m}")
        cfg = SystemConfig.from_dict(meta["system"])
        mcfg = ModelConfig.from_dict(meta["model"])
        tcfg = TrainConfig.from_dict(meta["train"])
        dcfg = DistConfig(**meta["distributed"])
        checksum = dcfg.checksum
        ap = build_ap_side(tcfg.kind, cfg, mcfg, m, seed=tcfg.seed)
        missing, unexpected = ap.load_state_dict(model_sd, strict=False)
        if missing or unexpected:
            raise MessageError(f"INIT state does not match AP {m}'s model: missing {missing}, unexpected {unexpected}")
        ap.to(device)
        trainer = ApTrainer(ap, lr=tcfg.lr, amp=tcfg.amp)
        load_optimizer_tensors(trainer.optimizer, optim_t, meta.get("groups") or [], device)
        uplink = dcfg.uplink(tcfg.kind)
        sender = CodebookSender(mcfg.num_codes, mcfg.code_dim) if uplink == "indices" else None
        batches: dict[int, list[list[int]]] = {}
        log(f"{me}: ready ({tcfg.kind}, uplink {uplink})")

        def payload_parts(payload: torch.Tensor, out, stats: tuple[float, float, float]):
            parts: list = [encode_stats(*stats)]
            if sender is not None:
                rows, values = sender.delta(payload, out.indices)
                parts += encode_index_record(out.indices, num_codes=mcfg.num_codes, rows=rows, values=values)
                return parts, FLAG_INDICES
            return parts + encode_tensor(payload.float()), 0

        while True:
            ctl, msg = _recv_json(link, Kind.CONTROL, "CONTROL (the next instruction)")
            op = ctl.get("op")
            if op == "step":
                epoch, r, s = int(ctl["epoch"]), int(ctl["step"]), msg.header.step
                if epoch not in batches:
                    batches.clear()
                    batches[epoch] = epoch_batches(tcfg.seed, epoch, tcfg.n_train, tcfg.batch_size)
                if not 0 <= r < len(batches[epoch]):
                    raise MessageError(f"CONTROL asks for step {r} of epoch {epoch}, which has "
                                       f"{len(batches[epoch])} steps")
                t0 = time.perf_counter()
                y_m = ap_echoes(cfg, tcfg.seed, batches[epoch][r], m).to(device)
                t1 = time.perf_counter()
                payload = trainer.forward(y_m)
                out = trainer.last_output
                stats = (float(out.commitment.detach()), out.perplexity, out.usage)
                parts, flags = payload_parts(payload, out, stats)
                action = _fault(fault, "forward", s, link)
                fwd = make_message(Kind.FORWARD, parts, sender=link.rank, ap=m, step=s, flags=flags,
                                   device=link.device, checksum=checksum)
                if action == "truncate":
                    fwd = Message(fwd.header, fwd.body[: fwd.body.numel() // 2])
                t2 = time.perf_counter()
                link.send(fwd)
                t3 = time.perf_counter()
                grad = None
                if trainer.optimizer is not None:
                    gmsg = link.recv(Kind.GRAD, what=f"GRAD of step {s}")
                    if gmsg.header.step != s:
                        raise MessageError(f"GRAD is for step {gmsg.header.step}, expected {s}")
                    grad = decode_tensor(open_body(gmsg), what=f"GRAD of step {s}", shape=tuple(payload.shape),
                                         dtype=torch.float32).to(device)
                t4 = time.perf_counter()
                trainer.backward(grad)
                t5 = time.perf_counter()
                for key, dt in (("simulate", t1 - t0), ("forward", t2 - t1), ("send_forward", t3 - t2),
                                ("wait_grad", t4 - t3), ("backward", t5 - t4)):
                    timings[key] += dt
                steps_done += 1
            elif op == "validate":
                ap.eval()
                with torch.no_grad():
                    for k, rows in enumerate(validation_batches(tcfg)):
                        y_m = ap_echoes(cfg, tcfg.seed, rows, m, offset=tcfg.n_train).to(device)
                        out = ap(y_m)
                        parts, flags = payload_parts(out.payload, out, (float(out.commitment), out.perplexity,
                                                                        out.usage))
                        link.send(make_message(Kind.EVAL, parts, sender=link.rank, ap=m, step=k, flags=flags,
                                               device=link.device, checksum=checksum))
                ap.train()
            elif op == "checkpoint":
                ot, groups = optimizer_tensors(trainer.optimizer)
                blob = pack_state(ap.state_dict(), ot, {"ap": m, "groups": groups})
                link.send(make_message(Kind.STATE, [blob], sender=link.rank, ap=m, step=msg.header.step,
                                       device=link.device, checksum=checksum))
            elif op == "stop":
                _send_json(link, Kind.DONE, {"steps": steps_done}, ap=m, checksum=checksum)
                log(f"{me}: done after {steps_done} steps")
                return {"steps": steps_done, "traffic": link.traffic.to_dict(), "timings_s": timings}
            else:
                raise MessageError(f"unknown CONTROL op {op!r}")
    except PeerAborted as err:
        raise DistributedTrainingError(f"{me} stops: {err}") from err
    except PeerFailure as err:
        raise DistributedTrainingError(f"{me} {pending_abort(link) or f'lost the CPU: {err}'}") from err
    except Exception as err:
        _abort_all([link], f"{me} failed: {type(err).__name__}: {err}")
        raise DistributedTrainingError(f"{me} failed: {type(err).__name__}: {err}") from err


# ---------------------------------------------------------------------------------------------------- CPU rank
def _check_links(links: Sequence[Link], n_rx: int) -> None:
    if len(links) != n_rx:
        raise ValueError(f"the CPU needs one link per receive AP: {n_rx} receive APs, {len(links)} links "
                         f"(launch M + 1 = {n_rx + 1} ranks)")
    for m, link in enumerate(links):
        if link.rank != 0 or link.peer != m + 1:
            raise ValueError(f"link {m} must connect rank 0 to rank {m + 1}, got {link.rank} -> {link.peer}")


def run_cpu_training(
    links: Sequence[Link], cfg: SystemConfig, mcfg: ModelConfig, tcfg: TrainConfig, out: str | Path, *,
    dcfg: DistConfig | None = None, resume: bool = False, progress: bool = True,
    log: Callable[[str], Any] | None = print, threads: int | None = None,
) -> TrainResult:
    """The CPU's side of distributed Algorithm 1 (rank 0): drives the schedule, trains the decoder, checkpoints.

    Same options, outputs and checkpoint format as :func:`cfisac.train.train` (``resume`` continues from
    ``out/latest.json``, also a checkpoint of an in-process run). ``links[m]`` connects to receive AP m.
    """
    from ..train import model_summary_lines, progress_bar, read_steps, split_psi

    out = Path(out)
    log = log or (lambda s: None)
    dcfg = dcfg or DistConfig()
    if threads:
        torch.set_num_threads(threads)
    _check_links(links, cfg.n_rx)
    if tcfg.data is not None:
        raise ValueError("distributed training simulates its data on the fly (each rank keeps only its share); an "
                         "HDF5 cache (--data) holds every AP's echoes and X in one file and is not supported")
    uplink = dcfg.uplink(tcfg.kind)
    device = torch.device(tcfg.device)
    if resume:
        if not (out / "latest.json").is_file():
            raise ValueError(f"--resume: {out} holds no checkpoint to resume (no latest.json)")
        ckpt, state, weights, opt_tensors = read_checkpoint(out)
        from ..train import model_from_state

        kind0, cfg0, mcfg0, tcfg0, normaliser = model_from_state(state)
        if cfg0 != cfg or mcfg0 != mcfg:
            raise ValueError("--resume: the system or model configuration differs from the checkpoint's")
        diff = [k for k in tcfg.to_dict() if k not in RESUMABLE_CHANGES and getattr(tcfg, k) != getattr(tcfg0, k)]
        if diff:
            raise ValueError(f"--resume: training options {diff} differ from the checkpoint's "
                             f"(only {list(RESUMABLE_CHANGES)} may change)")
    elif (out / "latest.json").exists():
        raise ValueError(f"{out} already holds a run; pass resume=True (--resume) or choose another output")

    model = build_model(tcfg.kind, cfg, mcfg, seed=tcfg.seed)
    if any(ap.needs_x for ap in model.aps):
        raise ValueError(f"front end {mcfg.front_end!r} needs X at the receive AP; the distributed runtime keeps X "
                         "at the CPU (paper Section III-C)")
    cpu_trainer = CpuTrainer(model.cpu_side.to(device), lr=tcfg.lr, amp=tcfg.amp, loss=tcfg.loss)
    ap_optim: dict[int, dict[str, torch.Tensor]] = {m: {} for m in range(cfg.n_rx)}
    groups: dict[str, Any] = {}
    if resume:
        model.load_state_dict(weights)
        torch.set_rng_state(opt_tensors.pop("rng.torch"))
        for key, val in opt_tensors.items():
            owner, rest = key.split(".", 1)
            if owner.startswith("ap"):
                ap_optim[int(owner[2:])][rest] = val
        cpu_t = {k.split(".", 1)[1]: v for k, v in opt_tensors.items() if k.startswith("cpu.")}
        groups = dict(state["optim"])
        load_optimizer_tensors(cpu_trainer.optimizer, cpu_t, groups.get("cpu") or [], device)
        epoch, step_in_epoch, global_step = state["epoch"], state["step"], state["global_step"]
        history, elapsed0 = state["history"], state["elapsed_s"]
        best = state.get("best_val_loss")
        steps = read_steps(out / "steps.csv", global_step)
        last_ckpt: Path | None = ckpt
        log(f"resuming {out} at epoch {epoch} step {step_in_epoch} (global step {global_step})")
    else:
        out.mkdir(parents=True, exist_ok=True)
        normaliser = LabelNormaliser.fit(DataSource(cfg, tcfg.seed, tcfg.n_train).labels(NORMALISER_MAX_SAMPLES))
        epoch, step_in_epoch, global_step, history, elapsed0, best, steps = 0, 0, 0, [], 0.0, None, []
        last_ckpt = None
    for line in model_summary_lines(tcfg.kind, cfg, mcfg):
        log(line)
    extra = {"runtime": dcfg.to_dict(), "uplink": uplink, "world_size": cfg.n_rx + 1}
    writer = CheckpointWriter(out, kind=tcfg.kind, cfg=cfg, mcfg=mcfg, tcfg=tcfg, normaliser=normaliser,
                              extra=extra, plot=dcfg.plot, best=best, log=log)
    grid = tuple(model.cpu_side.payload_shape[1:])
    mirrors = [CodebookMirror(mcfg.num_codes, mcfg.code_dim, grid) if uplink == "indices" else None
               for _ in range(cfg.n_rx)]
    need_grads = any(p.requires_grad for p in model.aps[0].parameters())
    checksum = dcfg.checksum
    elapsed = elapsed0
    timings = dict.fromkeys(("control", "data", "wait_forward", "decoder_step", "send_grad"), 0.0)
    timings["steps"] = 0
    recent: deque[float] = deque(maxlen=1000)  # wall time of the last steps (CPU view)
    where = {"epoch": epoch, "step": step_in_epoch, "global_step": global_step}

    def control(op: str, **fields: Any) -> None:
        for link in links:
            _send_json(link, Kind.CONTROL, {"op": op, **fields}, step=global_step, checksum=checksum)

    def receive_payloads(kind: Kind, step: int, batch: int) -> tuple[list[torch.Tensor], list[dict[str, float]]]:
        payloads, stats = [], []
        for m, link in enumerate(links):
            what = f"{kind.name} of step {step} from {link.peer_name}"
            msg = link.recv(kind, what=what)
            if msg.header.step != step or msg.header.ap != m:
                raise MessageError(f"{what}: message is for AP {msg.header.ap} step {msg.header.step}")
            if bool(msg.header.flags & FLAG_INDICES) != (uplink == "indices"):
                raise MessageError(f"{what}: payload type does not match the {uplink!r} uplink")
            st, rest = decode_stats(open_body(msg), what)
            if uplink == "indices":
                p = mirrors[m].payload(rest, what=what, batch=batch)
            else:
                p = decode_tensor(rest, what=what, shape=(batch, *model.cpu_side.payload_shape), dtype=torch.float32)
            payloads.append(p.to(device))
            stats.append(st)
        return payloads, stats

    def gather_states() -> dict[str, torch.Tensor]:
        control("checkpoint")
        tensors: dict[str, torch.Tensor] = {}
        for m, link in enumerate(links):
            msg = link.recv(Kind.STATE, what=f"STATE from {link.peer_name}")
            sd, ot, meta = unpack_state(open_body(msg).cpu().numpy().tobytes(), f"STATE of AP {m}")
            if meta.get("ap") != m:
                raise MessageError(f"STATE from {link.peer_name} is for AP {meta.get('ap')}")
            missing, unexpected = model.aps[m].load_state_dict(sd, strict=False)
            if missing or unexpected:
                raise MessageError(f"STATE of AP {m} does not match its model: missing {missing}, "
                                   f"unexpected {unexpected}")
            ap_optim[m] = ot
            if meta.get("groups"):
                groups[f"ap{m}"] = meta["groups"]
        for m in range(cfg.n_rx):
            tensors.update({f"ap{m}.{k}": v for k, v in ap_optim[m].items()})
        ct, cg = optimizer_tensors(cpu_trainer.optimizer)
        tensors.update({f"cpu.{k}": v for k, v in ct.items()})
        if cg:
            groups["cpu"] = cg
        return tensors

    def save(finished: bool) -> Path:
        tensors = gather_states()
        path = writer.write(model, tensors, groups, epoch=epoch, step=step_in_epoch, global_step=global_step,
                            elapsed=elapsed, history=history, steps=steps, finished=finished)
        write_report()
        return path

    def write_report() -> None:
        """out/distributed.json: this session's traffic per AP link and the CPU's time per step phase."""
        from ..train import write_json_atomic

        rep = {"uplink": uplink, "world_size": cfg.n_rx + 1, "cpu_timings_s": timings,
               "recent_step_s": list(recent),
               "traffic": {f"ap{m}": link.traffic.to_dict() for m, link in enumerate(links)}}
        write_json_atomic(out / "distributed.json", rep)

    def validate() -> dict[str, float]:
        if tcfg.n_val == 0:
            return {"val_loss": float("nan"), "val_position_rmse": float("nan"), "val_velocity_rmse": float("nan")}
        control("validate")
        sq, count, pe, ve = 0.0, 0, [], []
        model.cpu_side.eval()
        with torch.no_grad():
            for k, rows in enumerate(validation_batches(tcfg)):
                b = cpu_inputs(cfg, tcfg.seed, rows, offset=tcfg.n_train)
                payloads, _ = receive_payloads(Kind.EVAL, k, len(rows))
                x = b["x"].to(device)
                pred = model.cpu_side(payloads, x).float()
                target = normaliser.normalise(b["labels"].to(device))
                sq += float(estimation_loss(pred, target, cfg.n_targets, tcfg.loss, reduction="sum"))
                count += target.numel()
                pos, vel = split_psi(normaliser.denormalise(pred), cfg.n_targets)
                acc = accuracy(pos, vel, b["positions"], b["velocities"])
                pe.append(acc.position_errors)
                ve.append(acc.velocity_errors)
        model.cpu_side.train()
        pe_all, ve_all = torch.cat(pe), torch.cat(ve)
        return {"val_loss": sq / count, "val_position_rmse": float(pe_all.pow(2).mean().sqrt()),
                "val_velocity_rmse": float(ve_all.pow(2).mean().sqrt())}

    stopped = False
    try:
        # -- start: HELLO from every AP, INIT to every AP (paper Step 1)
        for m, link in enumerate(links):
            hello, _ = _recv_json(link, Kind.HELLO, f"HELLO from {link.peer_name}")
            if hello.get("role") != "ap" or hello.get("ap") != m or hello.get("task") != "train":
                raise MessageError(f"{link.peer_name} introduced itself as {hello}: expected receive AP {m} for "
                                   "training (launch the same sub-command on every rank)")
        for m, link in enumerate(links):
            meta = {"ap": m, "system": cfg.to_dict(), "model": mcfg.to_dict(), "train": tcfg.to_dict(),
                    "distributed": dcfg.to_dict(), "groups": groups.get(f"ap{m}") or [],
                    "epoch": epoch, "step": step_in_epoch, "global_step": global_step}
            blob = pack_state(model.aps[m].state_dict(), ap_optim[m], meta)
            link.send(make_message(Kind.INIT, [blob], sender=0, ap=m, step=global_step, device=link.device,
                                   checksum=checksum))
        if not resume:
            last_ckpt = save(finished=False)
        t_start = time.monotonic()
        budget = None if tcfg.minutes is None else tcfg.minutes * 60.0
        while epoch < tcfg.epochs and not stopped:
            if budget is not None and elapsed >= budget:  # e.g. resuming a run whose budget is spent
                stopped = True
                break
            batches = epoch_batches(tcfg.seed, epoch, tcfg.n_train, tcfg.batch_size)
            sums = {"loss": 0.0, "mse": 0.0, "commitment": 0.0, "n": 0, "perplexity": 0.0, "usage": 0.0}
            bar = progress_bar(progress, len(batches), step_in_epoch, f"epoch {epoch + 1}/{tcfg.epochs}")
            while step_in_epoch < len(batches):
                rows = batches[step_in_epoch]
                where.update(epoch=epoch, step=step_in_epoch, global_step=global_step)
                t0 = time.perf_counter()
                control("step", epoch=epoch, step=step_in_epoch)
                t1 = time.perf_counter()
                b = cpu_inputs(cfg, tcfg.seed, rows)
                x = b["x"].to(device)
                target = normaliser.normalise(b["labels"].to(device))
                t2 = time.perf_counter()
                payloads, ap_stats = receive_payloads(Kind.FORWARD, global_step, len(rows))
                t3 = time.perf_counter()
                loss, grads, pred = cpu_trainer.step(payloads, x, target, need_grads=need_grads)
                t4 = time.perf_counter()
                if need_grads:
                    for m, link in enumerate(links):
                        link.send(make_message(Kind.GRAD, encode_tensor(grads[m].float()), sender=0, ap=m,
                                               step=global_step, device=link.device, checksum=checksum))
                t5 = time.perf_counter()
                for key, dt in (("control", t1 - t0), ("data", t2 - t1), ("wait_forward", t3 - t2),
                                ("decoder_step", t4 - t3), ("send_grad", t5 - t4)):
                    timings[key] += dt
                timings["steps"] += 1
                recent.append(time.perf_counter() - t0)
                commitment = sum(s["commitment"] for s in ap_stats)
                r = {"mse": loss, "commitment": commitment, "loss": loss + commitment,
                     "perplexity": [s["perplexity"] for s in ap_stats], "usage": [s["usage"] for s in ap_stats]}
                step_in_epoch += 1
                global_step += 1
                k = len(rows)
                perp = float(np.nanmean(r["perplexity"])) if tcfg.kind == "dvqvae" else float("nan")
                usage = float(np.nanmean(r["usage"])) if tcfg.kind == "dvqvae" else float("nan")
                for key in ("loss", "mse", "commitment"):
                    sums[key] += r[key] * k
                sums["perplexity"] += perp * k
                sums["usage"] += usage * k
                sums["n"] += k
                steps.append({"step": global_step, "epoch": epoch + step_in_epoch / len(batches), "loss": r["loss"],
                              "mse": r["mse"], "commitment": r["commitment"], "perplexity": perp})
                elapsed = elapsed0 + time.monotonic() - t_start
                if bar is not None:
                    pos, vel = split_psi(normaliser.denormalise(pred), cfg.n_targets)
                    acc = accuracy(pos, vel, b["positions"], b["velocities"])
                    post = {"loss": f"{r['loss']:.4f}", "rmse_pos": f"{acc.position_rmse:.1f}m",
                            "rmse_vel": f"{acc.velocity_rmse:.1f}m/s"}
                    if tcfg.kind == "dvqvae":
                        post["perplexity"] = f"{perp:.1f}"
                    bar.set_postfix(post, refresh=False)
                    bar.update(1)
                if budget is not None and elapsed >= budget:
                    stopped = step_in_epoch < len(batches) or epoch + 1 < tcfg.epochs
                    break
                if (dcfg.checkpoint_every and global_step % dcfg.checkpoint_every == 0
                        and step_in_epoch < len(batches)):
                    last_ckpt = save(finished=False)
            if bar is not None:
                bar.close()
            n = max(1, sums["n"])
            row = {"epoch": epoch + step_in_epoch / len(batches), "steps": global_step,
                   "samples": epoch * tcfg.n_train + sum(len(bb) for bb in batches[:step_in_epoch]),
                   "train_loss": sums["loss"] / n, "train_mse": sums["mse"] / n,
                   "train_commitment": sums["commitment"] / n, "perplexity": sums["perplexity"] / n,
                   "usage": sums["usage"] / n}
            row.update(validate())
            row["elapsed_s"] = elapsed
            if step_in_epoch >= len(batches):
                epoch, step_in_epoch = epoch + 1, 0
            if sums["n"]:
                history.append(row)
                log(f"epoch {row['epoch']:.2f}: train loss {row['train_loss']:.5f}, val loss {row['val_loss']:.5f}, "
                    f"val RMSE {row['val_position_rmse']:.2f} m / {row['val_velocity_rmse']:.2f} m/s"
                    + (f", perplexity {row['perplexity']:.1f}" if tcfg.kind == "dvqvae" else "")
                    + f" ({elapsed:.0f} s)")
            last_ckpt = save(finished=epoch >= tcfg.epochs)
        control("stop")
        for link in links:
            _recv_json(link, Kind.DONE, f"DONE from {link.peer_name}")
        write_report()
    except KeyboardInterrupt:
        _abort_all(links, "the CPU was interrupted")
        raise
    except Exception as err:
        failed = _failed_peer(err, links)
        reason = f"{type(err).__name__}: {err}"
        _abort_all(links, f"the CPU stops the run: {reason}", skip={failed} if failed is not None else set())
        try:  # distributed.json with the traffic so far (rejected corrupted messages included)
            write_report()
        except Exception:  # noqa: BLE001 - the failure below is what matters
            pass
        pointer = (f"the last complete checkpoint is {last_ckpt} (resume with the same command plus --resume)"
                   if last_ckpt is not None else "no checkpoint was written")
        raise DistributedTrainingError(
            f"distributed training failed at epoch {where['epoch']} step {where['step']} (global step "
            f"{where['global_step']}): {reason}; every rank stops; {pointer}") from err
    model.sync_codebooks()
    model.eval()
    log(f"traffic per AP link and time per step phase: {out / 'distributed.json'}")
    return TrainResult(out, last_ckpt, history, not stopped, model, normaliser)


def _failed_peer(err: BaseException, links: Sequence[Link]) -> int | None:
    return getattr(err, "peer", None) if isinstance(err, (PeerFailure, PeerAborted)) else None
