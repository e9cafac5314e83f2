"""cfisac: cooperative ISAC in cell-free MIMO systems (Wang, Wong, Schober), end to end.

Public API (docs/architecture.md): ``SystemConfig``, ``Scene``, ``sample_scenes``, ``transmit_signals``,
``sensing_echoes``, ``communication_links``, ``noiseless_echoes``, ``labels_from_scene``.
"""

from .config import SPEED_OF_LIGHT, SystemConfig
from .scene import Scene, labels_from_scene, sample_scenes
from .sensing import noiseless_echoes, sensing_echoes
from .waveform import CommunicationLinks, communication_links, transmit_signals

__version__ = "0.1.0"


_LAZY_SUBMODULES = {
    "checkpoint", "data", "distributed", "entropy", "estimators", "experiments", "fit", "fronthaul", "metrics",
    "models", "physics", "quantize", "train",
}


def __getattr__(name: str):  # lazy: keeps ``import cfisac`` light
    import importlib

    if name == "crlb":
        return importlib.import_module(".crlb", __name__).crlb
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cfisac' has no attribute {name!r}")

__all__ = [
    "SPEED_OF_LIGHT", "CommunicationLinks", "crlb", "Scene", "SystemConfig", "communication_links", "labels_from_scene",
    "noiseless_echoes", "sample_scenes", "sensing_echoes", "transmit_signals",
]
