"""Scenes: the random realisation of one channel use (targets, reflection coefficients, users, clutter, offsets).

A :class:`Scene` is a plain dataclass of tensors with a leading batch dimension; users may build one by hand.
:func:`sample_scenes` draws scenes as in Section V: targets and users uniform in the area, velocities uniform in
``[-max_speed, max_speed]`` per axis, ``beta ~ CN(0, chi^2)``, clutter scatterers uniform in the area with
``beta~ ~ CN(0, chi~^2)`` (Eq. 29), residual timing / frequency offsets per AP pair and symbol (Eq. 30).

Canonical target order: targets are stored sorted by ascending x (ties by ascending y). Labels
``psi = [g_1x, g_1y, ..., g_Qx, g_Qy, v_1x, v_1y, ..., v_Qx, v_Qy]`` (paper Section III-C) follow that order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .config import SystemConfig
from .seeding import complex_normal, sample_generator

__all__ = ["Scene", "labels_from_scene", "sample_scenes"]


@dataclass
class Scene:
    """A batch of scenes. Shapes (B batch, Q targets, N / M transmit / receive APs, K users, S clutter):

    - ``positions`` [B, Q, 2] float64, m; ``velocities`` [B, Q, 2] float64, m/s
    - ``reflection`` [B, N, M, Q] complex128: beta_{n,m,q}
    - ``user_positions`` [B, K, 2] float64 or None (then no communication channel can be drawn)
    - ``clutter_positions`` / ``clutter_velocities`` [B, S, 2], ``clutter_reflection`` [B, N, M, S] or None
    - ``timing_offsets`` [B, N, M, Ts] (s) and ``frequency_offsets`` [B, N, M, Ts] (Hz) float64 or None
    - ``indices`` [B] int64: dataset indices selecting each sample's random streams (default 0..B-1)
    """

    positions: torch.Tensor
    velocities: torch.Tensor
    reflection: torch.Tensor
    user_positions: torch.Tensor | None = None
    clutter_positions: torch.Tensor | None = None
    clutter_velocities: torch.Tensor | None = None
    clutter_reflection: torch.Tensor | None = None
    timing_offsets: torch.Tensor | None = None
    frequency_offsets: torch.Tensor | None = None
    indices: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.indices is None:
            self.indices = torch.arange(self.positions.shape[0], dtype=torch.int64)

    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]

    def to(self, device: torch.device | str) -> Scene:
        return Scene(**{k: (v.to(device) if isinstance(v, torch.Tensor) and k != "indices" else v)
                        for k, v in self.fields().items()})

    def fields(self) -> dict[str, torch.Tensor | None]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def select(self, rows: slice | torch.Tensor) -> Scene:
        """The sub-batch ``rows`` of every tensor."""
        return Scene(**{k: (None if v is None else v[rows]) for k, v in self.fields().items()})

    def check(self, cfg: SystemConfig, *, allow_outside_area: bool = False) -> None:
        """Raise ``ValueError`` when shapes do not match ``cfg`` or values are not finite / not in the area."""
        B, Q, N, M = self.batch_size, cfg.n_targets, cfg.n_tx, cfg.n_rx
        expect = {
            "positions": (B, Q, 2), "velocities": (B, Q, 2), "reflection": (B, N, M, Q),
            "user_positions": (B, cfg.n_users, 2),
            "clutter_positions": (B, None, 2), "clutter_velocities": (B, None, 2),
            "clutter_reflection": (B, N, M, None),
            "timing_offsets": (B, N, M, cfg.n_symbols), "frequency_offsets": (B, N, M, cfg.n_symbols),
            "indices": (B,),
        }
        for name, shape in expect.items():
            v = getattr(self, name)
            if v is None:
                continue
            if not isinstance(v, torch.Tensor):
                raise ValueError(f"Scene.{name} must be a torch.Tensor, got {type(v).__name__}")
            if v.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, v.shape, strict=True)):
                raise ValueError(f"Scene.{name} has shape {tuple(v.shape)}, expected {shape} (None: any)")
            if v.is_floating_point() or v.is_complex():
                if not bool(torch.isfinite(v).all()):
                    raise ValueError(f"Scene.{name} contains NaN or inf")
        if self.clutter_positions is not None:
            S = self.clutter_positions.shape[1]
            for name in ("clutter_velocities", "clutter_reflection"):
                v = getattr(self, name)
                if v is None or v.shape[-1 if name == "clutter_reflection" else 1] != S:
                    raise ValueError(f"Scene.{name} must be given with {S} scatterers like clutter_positions")
        if not self.reflection.is_complex():
            raise ValueError("Scene.reflection must be a complex tensor (beta)")
        if not allow_outside_area:
            (x0, x1), (y0, y1) = cfg.area
            p = self.positions
            outside = (p[..., 0] < x0) | (p[..., 0] > x1) | (p[..., 1] < y0) | (p[..., 1] > y1)
            if bool(outside.any()):
                b, q = (int(i) for i in outside.nonzero()[0])
                raise ValueError(
                    f"target {q} of scene {b} at {p[b, q].tolist()} lies outside the area {cfg.area} "
                    "(pass allow_outside_area=True to allow it)"
                )
        aps = torch.tensor(cfg.tx_positions + cfg.rx_positions, dtype=self.positions.dtype)
        gap = torch.linalg.vector_norm(self.positions[:, :, None, :] - aps.to(self.positions.device), dim=-1)
        if bool((gap < 1e-6).any()):
            b, q, _ = (int(i) for i in (gap < 1e-6).nonzero()[0])
            raise ValueError(f"target {q} of scene {b} coincides with an AP: angles and ranges are undefined")


def _canonical_order(positions: torch.Tensor) -> torch.Tensor:
    """Permutation [B, Q] sorting targets by ascending x, ties by ascending y."""
    by_y = torch.argsort(positions[..., 1], dim=-1, stable=True)
    x_sorted_by_y = torch.gather(positions[..., 0], -1, by_y)
    return torch.gather(by_y, -1, torch.argsort(x_sorted_by_y, dim=-1, stable=True))


def _uniform(shape: tuple[int, ...], lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)


def sample_scenes(
    cfg: SystemConfig, batch_size: int, seed: int, *, start_index: int = 0, indices: torch.Tensor | None = None
) -> Scene:
    """Draw the scenes of dataset indices ``start_index .. start_index + batch_size - 1`` (or ``indices``).

    Sample ``d`` depends only on ``(cfg, seed, d)``. Targets are returned in the canonical order (ascending x).
    """
    if indices is None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        indices = torch.arange(start_index, start_index + batch_size, dtype=torch.int64)
    indices = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    Q, N, M, K, S, T = cfg.n_targets, cfg.n_tx, cfg.n_rx, cfg.n_users, cfg.n_clutter, cfg.n_symbols
    (x0, x1), (y0, y1) = cfg.area
    vmax = cfg.max_speed
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "positions", "velocities", "reflection", "user_positions", "clutter_positions", "clutter_velocities",
        "clutter_reflection", "timing_offsets", "frequency_offsets")}
    for d in indices.tolist():
        g = sample_generator(seed, d, "scene")
        pos = torch.stack([_uniform((Q,), x0, x1, g), _uniform((Q,), y0, y1, g)], -1)
        vel = _uniform((Q, 2), -vmax, vmax, g)
        beta = complex_normal((N, M, Q), g, torch.complex128) * cfg.reflection_variance**0.5
        order = _canonical_order(pos[None])[0]
        rows["positions"].append(pos[order])
        rows["velocities"].append(vel[order])
        rows["reflection"].append(beta)  # i.i.d. over q: no need to permute
        gu = sample_generator(seed, d, "users")
        rows["user_positions"].append(torch.stack([_uniform((K,), x0, x1, gu), _uniform((K,), y0, y1, gu)], -1))
        if S > 0:
            gc = sample_generator(seed, d, "clutter")
            rows["clutter_positions"].append(torch.stack([_uniform((S,), x0, x1, gc), _uniform((S,), y0, y1, gc)], -1))
            cv = _uniform((S, 2), -vmax, vmax, gc)
            rows["clutter_velocities"].append(cv if cfg.clutter_moving else torch.zeros_like(cv))
            rows["clutter_reflection"].append(
                complex_normal((N, M, S), gc, torch.complex128) * cfg.clutter_variance**0.5)
        if cfg.timing_offset_std > 0 or cfg.frequency_offset_std > 0:
            gk = sample_generator(seed, d, "clock")
            rows["timing_offsets"].append(torch.randn((N, M, T), generator=gk, dtype=torch.float64)
                                          * cfg.timing_offset_std)
            rows["frequency_offsets"].append(torch.randn((N, M, T), generator=gk, dtype=torch.float64)
                                             * cfg.frequency_offset_std)
    stacked = {k: (torch.stack(v) if v else None) for k, v in rows.items()}
    return Scene(**stacked, indices=indices)


def labels_from_scene(scenes: Scene) -> torch.Tensor:
    """psi = [g; v] per scene, [B, 4Q] float64, in the order the scene stores its targets (Section III-C)."""
    B = scenes.batch_size
    return torch.cat([scenes.positions.reshape(B, -1), scenes.velocities.reshape(B, -1)], dim=1)
