"""CPU fusion of the bistatic baselines' fronthaul messages (MUSIC, CS): AoA and per-transmit-AP range / Doppler.

Each receive AP m sends, per target slot q, the AoA direction cosine and, per transmit AP n, one bistatic range and
one bistatic Doppler (:class:`BistaticMessages`). The CPU locates every AP's targets (AoA ray x bistatic
ellipses), associates the slots across APs, fuses positions by robust least squares over all AoAs and ranges and
solves the velocity from all N*M Dopplers ``lambda f_D = (e_n + e_m) . v`` (as
:func:`cfisac.estimators.reference.signal_processing.fuse_messages`, the literal reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import SystemConfig
from . import Estimate

__all__ = ["BistaticMessages", "fuse_bistatic"]


@dataclass
class BistaticMessages:
    """What the receive APs send (Section III-D), per AP m and target slot q (slots of different APs unordered):

    ``aoa`` [B, M, Q] AoA direction cosine, ``ranges`` [B, M, Q, N] bistatic ranges d_{n,m,q} (m), ``dopplers``
    [B, M, Q, N] bistatic Dopplers f_{D,n,m,q} (Hz); float64 tensors on one device.
    """

    aoa: torch.Tensor
    ranges: torch.Tensor
    dopplers: torch.Tensor


def fuse_bistatic(cfg: SystemConfig, msgs: BistaticMessages, *, velocity: bool = True) -> Estimate:
    """Positions / velocities [B, Q, 2] float64 from the messages (module docstring)."""
    from .reference.signal_processing import ApMessages, fuse_messages  # transitional: the scene-at-a-time fusion

    ref = ApMessages(msgs.aoa.detach().cpu().double().numpy(), msgs.ranges.detach().cpu().double().numpy(),
                     msgs.dopplers.detach().cpu().double().numpy())
    return fuse_messages(cfg, ref, velocity=velocity)
