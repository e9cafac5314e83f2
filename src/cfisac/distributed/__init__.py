"""The receive APs and the CPU as separate processes (paper Algorithms 1 and 2 over ``torch.distributed``), and
data-parallel training of the whole model with DistributedDataParallel.

- :mod:`.wire`: the message format (header, trailer, payload records); :mod:`.transport`: links over
  ``torch.distributed`` point-to-point send / recv (gloo / NCCL) or in-memory queues, with timeouts everywhere.
- :mod:`.training`: collaborative training, one rank per receive AP plus the CPU (rank 0), fixed schedule.
- :mod:`.protocol`: the JSON control messages, ``ABORT`` and the error shared by training and sensing.
- :mod:`.sensing`: online sensing; the APs send only their fronthaul messages (bit-packed or entropy coded).
- :mod:`.ddp`: data-parallel training at scale; each AP's EMA codebook statistics are summed across replicas only.
- :mod:`.launch`: torchrun environment, local loopback processes, threads.

See ``docs/distributed.md`` for launch commands, the schedule and the message format.
"""

from .common import DistConfig, ap_echoes, cpu_inputs
from .launch import free_port, init_distributed, links_for_rank, run_threads, run_worker, spawn_local
from .protocol import DistributedTrainingError
from .sensing import SenseResult, load_side, run_ap_sensing, run_cpu_sensing
from .transport import Link, PeerAborted, PeerFailure, QueueLink, TorchLink, queue_pair
from .wire import Kind, Message, MessageError

__all__ = [
    "DistConfig", "DistributedTrainingError", "Kind", "Link", "Message", "MessageError", "PeerAborted",
    "PeerFailure", "QueueLink", "SenseResult", "TorchLink", "ap_echoes", "cpu_inputs", "free_port",
    "init_distributed", "links_for_rank", "load_side", "queue_pair", "run_ap_sensing", "run_ap_training",
    "run_cpu_sensing", "run_cpu_training", "run_threads", "run_worker", "spawn_local",
]


def __getattr__(name: str):
    """``run_ap_training`` / ``run_cpu_training`` load :mod:`.training` (and with it the trainer) on first use, so
    that online sensing and the wire format import without :mod:`cfisac.train`."""
    if name in ("run_ap_training", "run_cpu_training"):
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
