"""Shared pieces of the distributed runtime: its options, what each role may see of a sample, AP state blobs.

Ranks: rank 0 is the CPU, rank 1 + m is receive AP m (world size M + 1).

What a rank sees of dataset sample d (a pure function of ``(cfg, seed, d)``, :mod:`cfisac.data`):

- receive AP m: only Y_m [Mr, Ns, Ts] (:func:`ap_echoes`). Y_m depends on the whole scene and on X (physics:
  Eq. 6), so the AP rank runs the deterministic simulator of the *world* for sample d and keeps only Y_m; X, the
  labels and the other APs' echoes are dropped before anything of the AP's model sees them.
- the CPU: only X and the labels psi (and positions / velocities to report accuracy) (:func:`cpu_inputs`); it
  never simulates echoes (scenes and transmit signals only, no Eq. 6).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..config import SystemConfig
from ..data import simulate_batch
from ..scene import labels_from_scene, sample_scenes
from ..waveform import transmit_signals
from .transport import DEFAULT_MAX_MESSAGE_BYTES
from .wire import MessageError

__all__ = ["DistConfig", "ap_echoes", "cpu_inputs", "optimizer_tensors", "pack_state", "unpack_state"]

MODES = ("auto", "indices", "features")


@dataclass(frozen=True)
class DistConfig:
    """Options of the distributed runtime.

    ``mode``: what an AP sends per training step: ``"indices"`` (bit-packed codeword indices plus the codewords the
    CPU does not have yet; D-VQVAE only), ``"features"`` (the quantized / continuous features as float32, paper
    footnote 4), ``"auto"`` (indices for the D-VQVAE, features otherwise). Both give the same parameters.
    ``timeout_s``: the longest any rank waits for a peer before failing (dead / hung rank). ``checksum``: CRC-32 of
    every body. ``checkpoint_every``: also checkpoint every k training steps (0: at epoch ends only, like
    ``cfisac train``; a fresh run also writes its initial state). ``plot``: write loss.png at checkpoints.
    """

    mode: str = "auto"
    timeout_s: float = 300.0
    checksum: bool = True
    checkpoint_every: int = 0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    plot: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be a non-negative integer, got {self.checkpoint_every!r}")

    def uplink(self, kind: str) -> str:
        """The effective training uplink mode for model ``kind``."""
        if self.mode == "auto":
            return "indices" if kind == "dvqvae" else "features"
        if self.mode == "indices" and kind != "dvqvae":
            raise ValueError(f"mode 'indices' needs a quantizer: the {kind} scheme sends features")
        return self.mode

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- data
def _indices(positions, offset: int) -> list[int]:
    idx = [offset + int(p) for p in positions]
    if not idx:
        raise ValueError("empty batch")
    return idx


def ap_echoes(cfg: SystemConfig, seed: int, positions, m: int, *, offset: int = 0) -> torch.Tensor:
    """Y_m of dataset samples ``offset + positions``: [B, Mr, Ns, Ts] complex64 (see the module docstring)."""
    if not 0 <= m < cfg.n_rx:
        raise ValueError(f"AP index {m} out of range for {cfg.n_rx} receive APs")
    world = simulate_batch(cfg, seed, _indices(positions, offset))
    y_m = world["y"][:, m].clone()
    world.clear()
    return y_m


def cpu_inputs(cfg: SystemConfig, seed: int, positions, *, offset: int = 0) -> dict[str, torch.Tensor]:
    """What the CPU knows of samples ``offset + positions``: ``x`` [B, N, Nt, Ns, Ts] complex64, ``labels`` [B, 4Q]
    float32, ``positions`` / ``velocities`` [B, Q, 2] float64 (identical to :func:`cfisac.data.simulate_batch`'s,
    without simulating the echoes)."""
    idx = torch.tensor(_indices(positions, offset), dtype=torch.int64)
    scenes = sample_scenes(cfg, len(idx), seed, indices=idx)
    x = transmit_signals(cfg, scenes, seed)
    return {"x": x, "labels": labels_from_scene(scenes).float(), "positions": scenes.positions,
            "velocities": scenes.velocities}


# ---------------------------------------------------------------------------------------------------- state blobs
def optimizer_tensors(opt: torch.optim.Optimizer | None) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Adam state as flat tensors ``{pid}.{key}`` and the param groups (the layout of ``cfisac.train``'s
    ``optim.safetensors`` without the ``ap{m}.`` prefix)."""
    if opt is None:
        return {}, []
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            t = val if isinstance(val, torch.Tensor) else torch.tensor(val)
            tensors[f"{pid}.{key}"] = t.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def load_optimizer_tensors(opt: torch.optim.Optimizer | None, tensors: dict[str, torch.Tensor],
                           groups: list[dict[str, Any]], device: torch.device) -> None:
    """Inverse of :func:`optimizer_tensors` (no-op without groups, i.e. a fresh optimizer)."""
    if opt is None or not groups:
        return
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        pid, field_ = key.split(".", 1)
        state.setdefault(int(pid), {})[field_] = val if field_ == "step" else val.to(device)
    opt.load_state_dict({"state": state, "param_groups": groups})


def pack_state(model: dict[str, torch.Tensor], optim: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    """A safetensors blob: ``model.<name>`` and ``optim.<pid>.<key>`` tensors, JSON ``meta`` in its metadata."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.items()}
    tensors.update({f"optim.{k}": v.detach().cpu().contiguous() for k, v in optim.items()})
    return st_save(tensors, metadata={"cfisac": json.dumps(meta)})


def unpack_state(blob: bytes, what: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Inverse of :func:`pack_state`; ``MessageError`` on a corrupted blob."""
    import struct

    try:
        tensors = st_load(blob)
        (n,) = struct.unpack("<Q", blob[:8])
        meta = json.loads(json.loads(blob[8: 8 + n])["__metadata__"]["cfisac"])
    except Exception as err:  # safetensors raises several error types
        raise MessageError(f"{what}: not a valid state blob: {err}") from err
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    optim = {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")}
    return model, optim, meta
