"""AP / target geometry: ranges, angles and radial velocities (paper Eq. 1-2, 7-11), for any ULA orientation.

Conventions (pinned in :mod:`cfisac.physics`): for an AP at ``p`` with unit array axis ``u`` and a point ``g``, the
unit direction is ``e = (g - p) / ||g - p||``, the angle satisfies ``cos(angle) = u . e`` and the radial velocity
of a point moving with ``v`` is ``v . e`` (positive when moving away). In the paper's layout (transmit axis (-1, 0),
receive axis (+1, 0), targets between the AP rows) this is exactly Eq. (10)-(11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import SPEED_OF_LIGHT, SystemConfig

__all__ = ["ApGeometry", "BistaticGeometry", "ap_geometry", "bistatic_geometry", "steering_vectors"]


@dataclass
class ApGeometry:
    """Geometry of P points w.r.t. A APs; every tensor is [B, A, P] float64 (``direction`` [B, A, P, 2])."""

    distance: torch.Tensor  # ||g - p||, Eq. (7)
    direction: torch.Tensor  # e, unit vector AP -> point
    cos_angle: torch.Tensor  # cos(theta) = axis . e (AoD for transmit APs, AoA for receive APs)
    radial_velocity: torch.Tensor  # v . e, Eq. (10) / (11)


@dataclass
class BistaticGeometry:
    """Per (transmit AP n, receive AP m, point q): tensors [B, N, M, P] float64, plus the per-AP geometries."""

    tx: ApGeometry
    rx: ApGeometry
    bistatic_range: torch.Tensor  # d_{n,m,q} = d_{n,q} + d_{m,q}
    delay: torch.Tensor  # tau = d / c, Eq. (8)
    doppler: torch.Tensor  # f_D = (v_n + v_m) f_c / c, Eq. (9)


def ap_geometry(
    points: torch.Tensor, velocities: torch.Tensor, ap_positions: torch.Tensor, ap_axes: torch.Tensor
) -> ApGeometry:
    """Distances, angle cosines and radial velocities of ``points`` [B, P, 2] seen from APs [A, 2] with axes [A, 2]."""
    diff = points[:, None, :, :] - ap_positions[None, :, None, :]  # [B, A, P, 2]
    distance = torch.linalg.vector_norm(diff, dim=-1)
    direction = diff / distance[..., None]
    cos_angle = (direction * ap_axes[None, :, None, :]).sum(-1)
    radial_velocity = (direction * velocities[:, None, :, :]).sum(-1)
    return ApGeometry(distance, direction, cos_angle, radial_velocity)


def bistatic_geometry(cfg: SystemConfig, points: torch.Tensor, velocities: torch.Tensor) -> BistaticGeometry:
    """Eq. (7)-(11) for points [B, P, 2] and velocities [B, P, 2] (float64) in the layout of ``cfg``."""
    kw = dict(dtype=points.dtype, device=points.device)
    tx = ap_geometry(points, velocities, torch.tensor(cfg.tx_positions, **kw), torch.tensor(cfg.tx_axes, **kw))
    rx = ap_geometry(points, velocities, torch.tensor(cfg.rx_positions, **kw), torch.tensor(cfg.rx_axes, **kw))
    bistatic_range = tx.distance[:, :, None, :] + rx.distance[:, None, :, :]
    delay = bistatic_range / SPEED_OF_LIGHT
    doppler = (tx.radial_velocity[:, :, None, :] + rx.radial_velocity[:, None, :, :]) * (
        cfg.carrier_frequency / SPEED_OF_LIGHT
    )
    return BistaticGeometry(tx, rx, bistatic_range, delay, doppler)


def steering_vectors(cos_angle: torch.Tensor, n_antennas: int, spacing: float, dtype: torch.dtype) -> torch.Tensor:
    """ULA steering vectors, Eq. (1)-(2): element k is ``exp(-j 2 pi k d/lambda cos(angle)) / sqrt(n)``.

    ``cos_angle`` [...] float64, ``spacing`` d/lambda; returns [..., n_antennas] of complex ``dtype``.
    """
    k = torch.arange(n_antennas, dtype=cos_angle.dtype, device=cos_angle.device)
    phase = -2.0 * math.pi * spacing * cos_angle[..., None] * k
    return (torch.polar(torch.ones_like(phase), phase) / math.sqrt(n_antennas)).to(dtype)
