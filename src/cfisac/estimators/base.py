"""The estimator base: validate the inputs -> per-AP stage (the fronthaul messages) -> CPU fusion, batched.

A classical scheme is a subclass that implements two methods, on batches of scenes as tensors on any device:

- :meth:`BatchedEstimator.ap_messages` ``(y [B, M, Mr, Ns, Ts], x [B, N, Nt, Ns, Ts]) -> messages``: what every
  receive AP computes from its own echoes Y_m (and, for the classical baselines, the known X) and sends to the CPU;
- :meth:`BatchedEstimator.fuse` ``(messages, x) -> Estimate``: the CPU's fusion of all APs' messages.

``__call__`` owns the rest: input checks (:func:`check_inputs`), moving the tensors to the estimator's device and
dtype, and chunking the batch (``chunk_size`` scenes per call of the two stages) so that memory stays bounded at the
``paper`` preset. Results are concatenated on the CPU in float64.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import SystemConfig
from . import Estimate

__all__ = ["BatchedEstimator", "check_inputs", "check_int_options", "resolve_device"]

COMPLEX_DTYPES = (torch.complex64, torch.complex128)


def resolve_device(device: torch.device | str | None) -> torch.device | None:
    """``None`` (compute on the inputs' device) or a valid torch device; ``ValueError`` naming a bad one."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device ('cpu', 'cuda', 'cuda:1', ...)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def check_int_options(**options: tuple[object, int]) -> None:
    """``ValueError`` naming the first option ``name=(value, low)`` whose value is not an integer >= low (a bool is
    not an integer here)."""
    for name, (value, low) in options.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_tensor(name: str, t: Any, expect: tuple[int, ...], axes: str, batch: int | None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a complex torch.Tensor [{axes}], got {type(t).__name__}")
    if t.dtype not in COMPLEX_DTYPES:
        raise ValueError(f"{name} must be complex64 or complex128 [{axes}], got dtype {t.dtype}")
    want = ("B" if batch is None else batch, *expect)
    if t.dim() != 5 or tuple(t.shape[1:]) != expect or (batch is not None and t.shape[0] != batch):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected [{axes}] = {want}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch")


def check_inputs(cfg: SystemConfig, y: Any, x: Any) -> None:
    """Raise ``ValueError`` naming the tensor unless ``y`` [B, M, Mr, Ns, Ts] and ``x`` [B, N, Nt, Ns, Ts] are finite
    complex tensors of ``cfg``'s shapes with the same batch size, on the same device. Nothing is broadcast."""
    _check_tensor("y", y, (cfg.n_rx, cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols), "B, M, Mr, Ns, Ts", None)
    _check_tensor("x", x, (cfg.n_tx, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols), "B, N, Nt, Ns, Ts",
                  y.shape[0])
    if y.device != x.device:
        raise ValueError(f"y is on {y.device} but x is on {x.device}: put both on one device")
    for name, t in (("y", y), ("x", x)):
        if not bool(torch.isfinite(torch.view_as_real(t)).all()):
            raise ValueError(f"{name} contains NaN or inf")


class BatchedEstimator:
    """Base of the batched estimators (module docstring).

    ``device``: where the stages run (``None``: the device of ``y``); ``dtype``: the complex dtype the stages
    compute in (complex128 by default: the refinements work to a small fraction of a resolution cell);
    ``chunk_size``: scenes per stage call (``None``: :meth:`default_chunk_size`).
    """

    name: str = ""
    fronthaul_bits_per_ap: int = 0

    def __init__(self, cfg: SystemConfig, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.complex128, chunk_size: int | None = None) -> None:
        if dtype not in COMPLEX_DTYPES:
            raise ValueError(f"dtype must be torch.complex64 or torch.complex128, got {dtype}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool)
                                       or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
        self.cfg = cfg
        self.device = resolve_device(device)
        self.dtype = dtype
        self.chunk_size = chunk_size

    # ------------------------------------------------------------------ subclasses
    def ap_messages(self, y: torch.Tensor, x: torch.Tensor) -> Any:
        """Per-AP stage for a chunk: ``y`` [b, M, Mr, Ns, Ts], ``x`` [b, N, Nt, Ns, Ts] (device, dtype checked)."""
        raise NotImplementedError

    def fuse(self, messages: Any, x: torch.Tensor) -> Estimate:
        """CPU fusion of one chunk's messages into an :class:`Estimate` ([b, Q, 2] each)."""
        raise NotImplementedError

    def default_chunk_size(self) -> int:
        """Scenes per stage call when ``chunk_size`` is None: about 2^24 complex cells of y per chunk."""
        cfg = self.cfg
        cells = cfg.n_rx * cfg.n_rx_antennas * cfg.n_subcarriers * cfg.n_symbols
        return max(1, 2**24 // cells)

    # ------------------------------------------------------------------ pipeline
    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> Estimate:
        """Positions / velocities [B, Q, 2] float64 (CPU) from y [B, M, Mr, Ns, Ts] and x [B, N, Nt, Ns, Ts]."""
        check_inputs(self.cfg, y, x)
        dev = self.device if self.device is not None else y.device
        step = self.chunk_size or self.default_chunk_size()
        pos, vel = [], []
        for lo in range(0, y.shape[0], step):
            yc = y[lo:lo + step].to(dev, self.dtype)
            xc = x[lo:lo + step].to(dev, self.dtype)
            out = self.fuse(self.ap_messages(yc, xc), xc)
            pos.append(out.positions.detach().to("cpu", torch.float64))
            vel.append(out.velocities.detach().to("cpu", torch.float64))
        return Estimate(torch.cat(pos), torch.cat(vel))
