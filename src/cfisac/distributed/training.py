"""Collaborative training (paper Algorithm 1) with the CPU and every receive AP in its own process.

Rank 0 runs :func:`run_cpu_training`, rank 1 + m runs :func:`run_ap_training` for receive AP m; they exchange framed
messages (:mod:`cfisac.distributed.wire`) over links (:mod:`cfisac.distributed.transport`). The AP side and the CPU
side are the trainer objects (:class:`cfisac.train.ApTrainer`, :class:`cfisac.train.CpuTrainer`), so k steps give
the parameters of k steps of :func:`cfisac.train.train` with the same seeds.
The CPU rank's epochs, budget, validation cadence, checkpoints and resume are :func:`cfisac.fit.fit`'s, with the
strategy :class:`SplitProcesses`; the checkpoints are written by :class:`cfisac.checkpoint.CheckpointWriter`.

Fixed schedule (AP m <-> CPU; every arrow is one message; the CPU drives, the APs follow):

Start
    1. AP -> CPU ``HELLO`` {role, ap, task, host, pid}.
    2. CPU -> AP ``INIT``: AP m's initial (or resumed) parameters, buffers (codebook and EMA statistics) and Adam
       state, plus the system / model / training configs and the schedule position (paper Step 1: the CPU
       initialises every side and sends the AP its part). The CPU's configs are authoritative.
Training step r of epoch e (global step s)
    3. CPU -> AP ``CONTROL`` {op: "step", epoch: e, step: r}. Both sides derive the batch's sample indices from
       ``cfisac.fit.epoch_batches(seed, e, ...)[r]`` (predefined sampling, Section IV); the AP checks e and r.
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
       writes a checkpoint in the format of ``cfisac train`` (:class:`cfisac.checkpoint.CheckpointWriter`). Also every
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

import torch

from ..checkpoint import TrainConfig, write_json_atomic
from ..config import SystemConfig
from ..fit import (
    NORMALISER_MAX_SAMPLES,
    DataSource,
    TrainResult,
    codebook_stat,
    epoch_batches,
    fit,
    model_summary_lines,
    open_run,
    split_psi,
    start_model,
)
from ..metrics import accuracy
from ..models import LabelNormaliser, ModelConfig, build_ap_side, build_model
from ..train import ApTrainer, estimation_loss, make_cpu_trainer
from .common import (
    DistConfig,
    ap_echoes,
    cpu_inputs,
    load_optimizer_tensors,
    optimizer_tensors,
    pack_state,
    unpack_state,
)
from .protocol import DistributedTrainingError, abort_all, ap_rank_error, recv_json, send_json
from .transport import Link, PeerAborted, PeerFailure, role_name
from .wire import (
    FLAG_INDICES,
    Kind,
    Message,
    MessageError,
    decode_index_record,
    decode_stats,
    decode_tensor,
    encode_index_record,
    encode_stats,
    encode_tensor,
    make_message,
    open_body,
)

__all__ = ["DistributedTrainingError", "run_ap_training", "run_cpu_training", "validation_batches"]


def validation_batches(tcfg: TrainConfig) -> list[range]:
    """Dataset positions of each validation batch (as ``cfisac.train.validate``: batches of max(B, 64))."""
    bs = max(tcfg.batch_size, 64)
    return [range(lo, min(tcfg.n_val, lo + bs)) for lo in range(0, tcfg.n_val, bs)]


def _payload_grid(ap_or_cpu) -> tuple[int, ...]:
    return tuple(ap_or_cpu.payload_shape[1:])


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
        send_json(link, Kind.HELLO, {"role": "ap", "ap": m, "task": "train", "host": socket.gethostname(),
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
            ctl, msg = recv_json(link, Kind.CONTROL, "CONTROL (the next instruction)")
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
                send_json(link, Kind.DONE, {"steps": steps_done}, ap=m, checksum=checksum)
                log(f"{me}: done after {steps_done} steps")
                return {"steps": steps_done, "traffic": link.traffic.to_dict(), "timings_s": timings}
            else:
                raise MessageError(f"unknown CONTROL op {op!r}")
    except Exception as err:
        raise ap_rank_error(err, link, me, DistributedTrainingError) from err


# ---------------------------------------------------------------------------------------------------- CPU rank
def _check_links(links: Sequence[Link], n_rx: int) -> None:
    if len(links) != n_rx:
        raise ValueError(f"the CPU needs one link per receive AP: {n_rx} receive APs, {len(links)} links "
                         f"(launch M + 1 = {n_rx + 1} ranks)")
    for m, link in enumerate(links):
        if link.rank != 0 or link.peer != m + 1:
            raise ValueError(f"link {m} must connect rank 0 to rank {m + 1}, got {link.rank} -> {link.peer}")


class SplitProcesses:
    """:func:`cfisac.fit.fit`'s strategy on the CPU rank (steps 2-8 of the module docstring): controls to every
    receive AP, their payloads (``FORWARD``) in, the decoder step, the gradients (``GRAD``) out; validation over
    ``EVAL`` messages; at a checkpoint every AP's state (``STATE``) gathered into ``model``."""

    is_writer, checkpoint_at_start = True, True

    def __init__(self, links: Sequence[Link], model, cpu_trainer, normaliser: LabelNormaliser, cfg: SystemConfig,
                 mcfg: ModelConfig, tcfg: TrainConfig, dcfg: DistConfig, out: Path, device: torch.device,
                 ap_optim: dict[int, dict[str, torch.Tensor]], groups: dict[str, Any]) -> None:
        self.links, self.model, self.cpu_trainer, self.normaliser = list(links), model, cpu_trainer, normaliser
        self.cfg, self.mcfg, self.tcfg, self.dcfg, self.out, self.device = cfg, mcfg, tcfg, dcfg, out, device
        self.ap_optim, self.groups = ap_optim, groups
        self.uplink = dcfg.uplink(tcfg.kind)
        self.checkpoint_every, self.plot_each_checkpoint = dcfg.checkpoint_every, dcfg.plot
        self.extra = {"runtime": dcfg.to_dict(), "uplink": self.uplink, "world_size": cfg.n_rx + 1}
        grid = tuple(model.cpu_side.payload_shape[1:])
        self.mirrors = [CodebookMirror(mcfg.num_codes, mcfg.code_dim, grid) if self.uplink == "indices" else None
                        for _ in range(cfg.n_rx)]
        self.need_grads = any(p.requires_grad for p in model.aps[0].parameters())
        self.global_step = 0
        self.timings: dict[str, float] = dict.fromkeys(
            ("control", "data", "wait_forward", "decoder_step", "send_grad"), 0.0)
        self.timings["steps"] = 0
        self.recent: deque[float] = deque(maxlen=1000)  # wall time of the last steps (CPU view)
        self.where = {"epoch": 0, "step": 0, "global_step": 0}

    # -- messages
    def control(self, op: str, **fields: Any) -> None:
        for link in self.links:
            send_json(link, Kind.CONTROL, {"op": op, **fields}, step=self.global_step, checksum=self.dcfg.checksum)

    def receive_payloads(self, kind: Kind, step: int, batch: int) -> tuple[list[torch.Tensor], list[dict[str, float]]]:
        payloads, stats = [], []
        for m, link in enumerate(self.links):
            what = f"{kind.name} of step {step} from {link.peer_name}"
            msg = link.recv(kind, what=what)
            if msg.header.step != step or msg.header.ap != m:
                raise MessageError(f"{what}: message is for AP {msg.header.ap} step {msg.header.step}")
            if bool(msg.header.flags & FLAG_INDICES) != (self.uplink == "indices"):
                raise MessageError(f"{what}: payload type does not match the {self.uplink!r} uplink")
            st, rest = decode_stats(open_body(msg), what)
            if self.uplink == "indices":
                p = self.mirrors[m].payload(rest, what=what, batch=batch)
            else:
                p = decode_tensor(rest, what=what, shape=(batch, *self.model.cpu_side.payload_shape),
                                  dtype=torch.float32)
            payloads.append(p.to(self.device))
            stats.append(st)
        return payloads, stats

    def start(self, run) -> None:
        """Steps 1-2: HELLO from every AP, INIT (its state and the schedule position of ``run``) to every AP."""
        for m, link in enumerate(self.links):
            hello, _ = recv_json(link, Kind.HELLO, f"HELLO from {link.peer_name}")
            if hello.get("role") != "ap" or hello.get("ap") != m or hello.get("task") != "train":
                raise MessageError(f"{link.peer_name} introduced itself as {hello}: expected receive AP {m} for "
                                   "training (launch the same sub-command on every rank)")
        self.global_step = run.global_step
        self.where.update(epoch=run.epoch, step=run.step, global_step=run.global_step)
        for m, link in enumerate(self.links):
            meta = {"ap": m, "system": self.cfg.to_dict(), "model": self.mcfg.to_dict(), "train": self.tcfg.to_dict(),
                    "distributed": self.dcfg.to_dict(), "groups": self.groups.get(f"ap{m}") or [],
                    "epoch": run.epoch, "step": run.step, "global_step": run.global_step}
            blob = pack_state(self.model.aps[m].state_dict(), self.ap_optim[m], meta)
            link.send(make_message(Kind.INIT, [blob], sender=0, ap=m, step=run.global_step, device=link.device,
                                   checksum=self.dcfg.checksum))

    def finish(self) -> None:
        """Step 8: stop every AP and wait for its DONE."""
        self.control("stop")
        for link in self.links:
            recv_json(link, Kind.DONE, f"DONE from {link.peer_name}")
        self.write_report()

    # -- the strategy
    def start_epoch(self, epoch: int, todo: list[list[int]]) -> None:
        pass

    def end_epoch(self) -> None:
        pass

    def step(self, epoch: int, step: int, rows: list[int], global_step: int) -> dict[str, Any]:
        cfg, device, checksum = self.cfg, self.device, self.dcfg.checksum
        self.global_step = global_step
        self.where.update(epoch=epoch, step=step, global_step=global_step)
        t0 = time.perf_counter()
        self.control("step", epoch=epoch, step=step)
        t1 = time.perf_counter()
        b = cpu_inputs(cfg, self.tcfg.seed, rows)
        x = b["x"].to(device)
        target = self.normaliser.normalise(b["labels"].to(device))
        t2 = time.perf_counter()
        payloads, ap_stats = self.receive_payloads(Kind.FORWARD, global_step, len(rows))
        t3 = time.perf_counter()
        loss, grads, pred = self.cpu_trainer.step(payloads, x, target, need_grads=self.need_grads)
        t4 = time.perf_counter()
        if self.need_grads:
            for m, link in enumerate(self.links):
                link.send(make_message(Kind.GRAD, encode_tensor(grads[m].float()), sender=0, ap=m,
                                       step=global_step, device=link.device, checksum=checksum))
        t5 = time.perf_counter()
        for key, dt in (("control", t1 - t0), ("data", t2 - t1), ("wait_forward", t3 - t2),
                        ("decoder_step", t4 - t3), ("send_grad", t5 - t4)):
            self.timings[key] += dt
        self.timings["steps"] += 1
        self.recent.append(time.perf_counter() - t0)
        self.global_step = global_step + 1
        commitment = sum(s["commitment"] for s in ap_stats)
        kind = self.tcfg.kind
        return {"loss": loss + commitment, "mse": loss, "commitment": commitment, "n": len(rows),
                "perplexity": codebook_stat([s["perplexity"] for s in ap_stats], kind),
                "usage": codebook_stat([s["usage"] for s in ap_stats], kind), "prediction": pred,
                "positions": b["positions"], "velocities": b["velocities"]}

    def validate(self) -> dict[str, float]:
        cfg, tcfg, device, model = self.cfg, self.tcfg, self.device, self.model
        self.control("validate")
        sq, count, pe, ve = 0.0, 0, [], []
        model.cpu_side.eval()
        with torch.no_grad():
            for k, rows in enumerate(validation_batches(tcfg)):
                b = cpu_inputs(cfg, tcfg.seed, rows, offset=tcfg.n_train)
                payloads, _ = self.receive_payloads(Kind.EVAL, k, len(rows))
                pred = model.cpu_side(payloads, b["x"].to(device)).float()
                target = self.normaliser.normalise(b["labels"].to(device))
                sq += float(estimation_loss(pred, target, cfg.n_targets, tcfg.loss, reduction="sum"))
                count += target.numel()
                pos, vel = split_psi(self.normaliser.denormalise(pred), cfg.n_targets)
                acc = accuracy(pos, vel, b["positions"], b["velocities"])
                pe.append(acc.position_errors)
                ve.append(acc.velocity_errors)
        model.cpu_side.train()
        pe_all, ve_all = torch.cat(pe), torch.cat(ve)
        return {"val_loss": sq / count, "val_position_rmse": float(pe_all.pow(2).mean().sqrt()),
                "val_velocity_rmse": float(ve_all.pow(2).mean().sqrt())}

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Step 7: every AP's state (``STATE``) into ``model``; the optimizer tensors of every side."""
        self.control("checkpoint")
        tensors: dict[str, torch.Tensor] = {}
        for m, link in enumerate(self.links):
            msg = link.recv(Kind.STATE, what=f"STATE from {link.peer_name}")
            sd, ot, meta = unpack_state(open_body(msg).cpu().numpy().tobytes(), f"STATE of AP {m}")
            if meta.get("ap") != m:
                raise MessageError(f"STATE from {link.peer_name} is for AP {meta.get('ap')}")
            missing, unexpected = self.model.aps[m].load_state_dict(sd, strict=False)
            if missing or unexpected:
                raise MessageError(f"STATE of AP {m} does not match its model: missing {missing}, "
                                   f"unexpected {unexpected}")
            self.ap_optim[m] = ot
            if meta.get("groups"):
                self.groups[f"ap{m}"] = meta["groups"]
        for m in range(self.cfg.n_rx):
            tensors.update({f"ap{m}.{k}": v for k, v in self.ap_optim[m].items()})
        ct, cg = optimizer_tensors(self.cpu_trainer.optimizer)
        tensors.update({f"cpu.{k}": v for k, v in ct.items()})
        if cg:
            self.groups["cpu"] = cg
        return tensors, self.groups

    def after_checkpoint(self, path: Path) -> None:
        self.write_report()

    def any_rank(self, flag: bool) -> bool:
        return flag

    def write_report(self) -> None:
        """out/distributed.json: this session's traffic per AP link and the CPU's time per step phase."""
        rep = {"uplink": self.uplink, "world_size": self.cfg.n_rx + 1, "cpu_timings_s": self.timings,
               "recent_step_s": list(self.recent),
               "traffic": {f"ap{m}": link.traffic.to_dict() for m, link in enumerate(self.links)}}
        write_json_atomic(self.out / "distributed.json", rep)


def check_in_process_only_options(tcfg: TrainConfig) -> None:
    """``ValueError`` for the :class:`TrainConfig` options that only in-process training (:func:`cfisac.train.train`)
    implements: ``lr_schedule`` other than constant and ``power_dbm_pool``."""
    if tcfg.lr_schedule != "constant":
        raise ValueError(f"lr_schedule={tcfg.lr_schedule!r} is an option of in-process training (cfisac.train.train); "
                         "the distributed runtimes train with the constant learning rate")
    if tcfg.power_dbm_pool:
        raise ValueError("power_dbm_pool (training on several transmit powers) is an option of in-process training "
                         "(cfisac.train.train); the distributed runtimes simulate at the config's power")


def run_cpu_training(
    links: Sequence[Link], cfg: SystemConfig, mcfg: ModelConfig, tcfg: TrainConfig, out: str | Path, *,
    dcfg: DistConfig | None = None, resume: bool = False, progress: bool = True,
    log: Callable[[str], Any] | None = print, threads: int | None = None,
) -> TrainResult:
    """The CPU's side of distributed Algorithm 1 (rank 0): drives the schedule, trains the decoder, checkpoints.

    Same options, outputs and checkpoint format as :func:`cfisac.train.train` (``resume`` continues from
    ``out/latest.json``, also a checkpoint of an in-process run). ``links[m]`` connects to receive AP m.
    """
    out = Path(out)
    log = log or (lambda s: None)
    dcfg = dcfg or DistConfig()
    if threads:
        torch.set_num_threads(threads)
    _check_links(links, cfg.n_rx)
    if tcfg.data is not None:
        raise ValueError("distributed training simulates its data on the fly (each rank keeps only its share); an "
                         "HDF5 cache (--data) holds every AP's echoes and X in one file and is not supported")
    if tcfg.feature_cache_gb:
        raise ValueError("feature_cache_gb is an option of in-process training (cfisac.train.train); the split AP / "
                         "CPU processes recompute their front ends (set feature_cache_gb=0)")
    device = torch.device(tcfg.device)
    check_in_process_only_options(tcfg)
    run = open_run(out, cfg, mcfg, tcfg, resume=resume, log=log,
                   labels=lambda: DataSource(cfg, tcfg.seed, tcfg.n_train).labels(NORMALISER_MAX_SAMPLES))
    model = build_model(tcfg.kind, cfg, mcfg, seed=tcfg.seed)
    if any(ap.needs_x for ap in model.aps):
        raise ValueError(f"front end {mcfg.front_end!r} needs X at the receive AP; the distributed runtime keeps X "
                         "at the CPU (paper Section III-C)")
    cpu_trainer = make_cpu_trainer(model.cpu_side.to(device), mcfg, tcfg)
    start_model(model, run)
    ap_optim: dict[int, dict[str, torch.Tensor]] = {m: {} for m in range(cfg.n_rx)}
    groups: dict[str, Any] = {}
    if run.optim is not None:
        for key, val in run.optim.items():
            owner, rest = key.split(".", 1)
            if owner.startswith("ap"):
                ap_optim[int(owner[2:])][rest] = val
        cpu_t = {k.split(".", 1)[1]: v for k, v in run.optim.items() if k.startswith("cpu.")}
        groups = dict(run.state["optim"])
        load_optimizer_tensors(cpu_trainer.optimizer, cpu_t, groups.get("cpu") or [], device)
    for line in model_summary_lines(tcfg.kind, cfg, mcfg):
        log(line)
    strategy = SplitProcesses(links, model, cpu_trainer, run.normaliser, cfg, mcfg, tcfg, dcfg, out, device,
                              ap_optim, groups)
    try:
        strategy.start(run)
        result = fit(strategy, run, cfg, mcfg, tcfg, progress=progress, log=log,
                     plot_title=f"{tcfg.kind}, lr {tcfg.lr:g} (distributed)")
        strategy.finish()
    except KeyboardInterrupt:
        abort_all(links, "the CPU was interrupted")
        raise
    except Exception as err:
        failed = _failed_peer(err, links)
        reason = f"{type(err).__name__}: {err}"
        abort_all(links, f"the CPU stops the run: {reason}", skip={failed} if failed is not None else set())
        try:  # distributed.json with the traffic so far (rejected corrupted messages included)
            strategy.write_report()
        except Exception:  # noqa: BLE001 - the failure below is what matters
            pass
        pointer = (f"the last complete checkpoint is {run.checkpoint} (resume with the same command plus --resume)"
                   if run.checkpoint is not None else "no checkpoint was written")
        where = strategy.where
        raise DistributedTrainingError(
            f"distributed training failed at epoch {where['epoch']} step {where['step']} (global step "
            f"{where['global_step']}): {reason}; every rank stops; {pointer}") from err
    log(f"traffic per AP link and time per step phase: {out / 'distributed.json'}")
    return result


def _failed_peer(err: BaseException, links: Sequence[Link]) -> int | None:
    return getattr(err, "peer", None) if isinstance(err, (PeerFailure, PeerAborted)) else None
