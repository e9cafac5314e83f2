"""Checks of command-line values shared by the sub-commands, run before any work starts.

Each raises ``ValueError`` with a one-line message naming the option and the bad value; :func:`cfisac.cli.main`
prints it and exits with status 2. (A module whose name starts with ``_`` is not a sub-command.)
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = ["check_device", "check_finite", "check_output_dir", "check_output_file", "check_positive_int",
           "check_threads", "check_writable_dir"]


def check_positive_int(option: str, value: Any, *, allow_none: bool = True, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{option} must be an integer >= {minimum}, got {value!r}")


def check_threads(option: str, value: Any) -> None:
    """A torch thread count: a positive integer (or None: the default)."""
    check_positive_int(option, value)


def check_finite(option: str, value: float | None, *, minimum: float | None = None, strict: bool = False) -> None:
    """``value`` (None: not given) is finite and ``> minimum`` (``strict``) or ``>= minimum``."""
    if value is None:
        return
    if not math.isfinite(value):
        raise ValueError(f"{option} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{option} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")


def check_device(option: str, device: str | None) -> None:
    """A torch device this machine has: ``cpu``, ``cuda`` / ``cuda:K`` (when CUDA is available), ``mps``."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{option} {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {device!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return
    if dev.type == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return
    raise ValueError(f"{option} {device!r} is not available on this machine (use cpu or cuda)")


def check_writable_dir(option: str, directory: Path) -> None:
    """``directory`` exists (created if needed) and a file can be created in it."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{option}: {directory} is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".cfisac-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ValueError(f"{option}: cannot write in {directory}: {err.strerror or err}") from None


def check_output_file(option: str, path: Path | None) -> None:
    """``path`` (None: not given) can be written as a file: not an existing directory, its folder writable."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"{option} {path} is an existing directory; give a file name")
    check_writable_dir(option, path.parent if str(path.parent) else Path("."))


def check_output_dir(option: str, path: Path | None) -> None:
    """``path`` (None: not given) can be used as an output directory: not an existing file, writable."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is an existing file; give a directory")
    check_writable_dir(option, path)
