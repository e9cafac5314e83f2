"""One machine-information header for the benchmark results files (command, date, machine, load)."""

from __future__ import annotations

import datetime
import os
import platform
import sys

import torch


def machine_info() -> dict[str, str]:
    """Date (UTC), command line, CPU, cores, load average, Python / torch versions, torch threads and GPU."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load": f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
        "software": f"Python {platform.python_version()}, torch {torch.__version__}",
        "threads": str(torch.get_num_threads()),
        "gpu": gpu,
    }


def header(title: str, *, threads: int | None = None) -> str:
    """A markdown header block with :func:`machine_info` (the same in every results file); ``threads``: the torch
    threads of the measuring processes when they are not this one's."""
    m = machine_info()
    if threads is not None:
        m["threads"] = str(threads)
    return (f"# {title}\n\nCommand: `{m['command']}`  \nDate: {m['date']}. Machine: {m['machine']}, {m['software']}, "
            f"{m['threads']} torch threads, GPU: {m['gpu']}; load average (1 / 5 / 15 min) at the start {m['load']} "
            "(other jobs may share the cores: timings are upper bounds).\n")
