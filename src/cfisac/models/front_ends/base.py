"""Front-end registry, base class and the helpers the front ends share.

A front end is an ``nn.Module`` built by ``make_front_end(name, cfg, norm=..., **options)``: ``forward(y_m, x)``
maps ``y_m`` [B, Mr, Ns, Ts] complex (Eq. 6) and, when ``needs_x``, ``x`` [B, N, Nt, Ns, Ts] complex (Eq. 3) to a
real float32 tensor [B, C, D1, D2, D3] whose shape (``in_channels``, ``spatial_shape``, ``output_shape``) is fixed by
the config and the options alone. Factories ``(cfg, *, norm, **options)`` register under a name with
``@register_front_end("name")``; :mod:`cfisac.models.front_ends` imports every front-end module, so the registry is
complete once the package is imported.

Shared helpers: :func:`complex_to_channels` (Re/Im channels, normalised), :func:`area_extent` (extreme bistatic
ranges and speeds of the area), the centred cosine grid, the bistatic-velocity grid and its Doppler matrix, |v|^2,
the working chunk size and the input checks.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...config import SPEED_OF_LIGHT, SystemConfig
from ...geometry import bistatic_geometry
from ...physics import SensingGrid, doppler_phase

if TYPE_CHECKING:
    from ..config import ModelConfig

DEFAULT_CHUNK_CELLS = 2**23  # memory bound: complex cells of a chunk's largest intermediate (64 MB in complex64)
FAST_CHUNK_CELLS = 2**18  # cache-sized working chunk (2 MB in complex64); smaller than the bound, faster on a CPU
NORMS = ("rms", "noise", "none")
COMPRESS = ("none", "log")
FrontEndFactory = Callable[..., "FrontEnd"]
FRONT_ENDS: dict[str, FrontEndFactory] = {}


# --------------------------------------------------------------------------------------------------- registry
def register_front_end(name: str) -> Callable[[FrontEndFactory], FrontEndFactory]:
    """Decorator registering ``factory(cfg, *, norm, **options) -> FrontEnd`` under ``name``."""

    def deco(factory: FrontEndFactory) -> FrontEndFactory:
        FRONT_ENDS[name] = factory
        return factory

    return deco


def available_front_ends() -> list[str]:
    return sorted(FRONT_ENDS)


def make_front_end(name: str, cfg: SystemConfig, *, norm: str = "rms", ap_index: int | None = None,
                   **options: Any) -> FrontEnd:
    """Build the registered front end ``name`` for ``cfg``. ``ap_index`` (the receive AP m) is handed to factories
    that take it (front ends specific to their AP, e.g. ``"image"``) and ignored by the others."""
    if name not in FRONT_ENDS:
        raise ValueError(f"unknown front end {name!r}; choose one of {sorted(FRONT_ENDS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown input normalisation {norm!r}; choose one of {list(NORMS)}")
    factory = FRONT_ENDS[name]
    if ap_index is not None and "ap_index" in inspect.signature(factory).parameters:
        options["ap_index"] = ap_index
    return factory(cfg, norm=norm, **options)


def create_front_end(name: str, cfg: SystemConfig, *, norm: str = "noise", ap_index: int | None = None,
                     **options: Any) -> FrontEnd:
    """Build the front end ``name`` ("raw", "matched", "image", "covariance", ...) for ``cfg``: :func:`make_front_end`
    with the ``"noise"`` normalisation by default, plus ``ap_index`` (the receive AP m), handed only to factories
    that take it (``"image"`` needs it; ``"raw"`` does not know it). The object has ``name``, ``in_channels``,
    ``spatial_shape``, ``output_shape`` ((C, D1, D2, D3) of one sample), ``needs_x`` and is called as ``fe(y_m, x)``.
    """
    return make_front_end(name, cfg, norm=norm, ap_index=ap_index, **options)


def front_end_output_shape(name: str, cfg: SystemConfig, **options: Any) -> tuple[int, int, int, int]:
    """(C, D1, D2, D3) of one sample of front end ``name`` for ``cfg`` (no data needed)."""
    return create_front_end(name, cfg, **options).output_shape


def model_front_end(cfg: SystemConfig, mcfg: ModelConfig, ap_index: int = 0) -> FrontEnd:
    """The input front end of receive AP ``ap_index`` of a learned model: ``mcfg.front_end`` with its options and
    normalisation; front ends specific to their AP (e.g. ``"image"``) get ``ap_index`` (it overrides one in the
    options). Shapes and ``needs_x`` do not depend on the AP, so index 0 serves callers that only need those."""
    return make_front_end(mcfg.front_end, cfg, norm=mcfg.input_norm, **{**mcfg.front_end_options, "ap_index": ap_index})


class FrontEnd(nn.Module):
    """Base class: subclasses set ``name``, ``needs_x``, ``in_channels``, ``spatial_shape`` and ``forward``."""

    name: str = "base"
    needs_x: bool = False
    in_channels: int
    spatial_shape: tuple[int, int, int]

    def transform(self, y_m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return self(y_m, x)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """(C, D1, D2, D3) of one sample."""
        return (self.in_channels, *self.spatial_shape)

    @property
    def needs_transmit_signals(self) -> bool:
        return self.needs_x

    def _const(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Buffer ``name`` cast to the working dtype of ``like`` (complex, or the matching real) on its device; the
        cast is cached until the buffer is replaced (``.to()`` replaces it)."""
        buf = getattr(self, name)
        dtype = like.dtype if buf.is_complex() else like.real.dtype
        cache = self.__dict__.setdefault("_cast_cache", {})
        key = (name, dtype, like.device)
        hit = cache.get(key)
        if hit is None or hit[0] is not buf:
            hit = cache[key] = (buf, buf.to(device=like.device, dtype=dtype))
        return hit[1]


def complex_to_channels(v: torch.Tensor, *, norm: str, noise_std: float = 1.0) -> torch.Tensor:
    """[B, *S] complex -> [B, 2, *S] float32 (Re, Im), normalised per sample as ``norm`` says
    (:mod:`cfisac.models.front_ends`)."""
    v = v.to(torch.complex64) if v.dtype != torch.complex128 else v
    if norm == "rms":
        dims = tuple(range(1, v.dim()))
        rms = v.abs().pow(2).mean(dim=dims, keepdim=True).sqrt().clamp_min(1e-30)
        v = v / rms * math.sqrt(2.0)
    elif norm == "noise":
        v = v / noise_std
    elif norm != "none":
        raise ValueError(f"unknown input normalisation {norm!r}; choose one of {list(NORMS)}")
    return torch.stack([v.real, v.imag], dim=1).float()


# --------------------------------------------------------------------------------------------------- helpers
def area_extent(cfg: SystemConfig, *, points_per_axis: int = 101) -> dict[str, float]:
    """Extreme bistatic range and bistatic speed a target in the area can produce, over every (n, m) pair.

    Returns ``min_range`` / ``max_range`` (m) of d_n + d_m and ``max_bistatic_speed`` (m/s), the largest
    |v . (e_n + e_m)| over the area and the velocity box |v_x|, |v_y| <= max_speed, which is
    max_speed (|u_x| + |u_y|) for u = e_n + e_m. Evaluated on a ``points_per_axis``^2 grid of the area (edges
    included): the range extremes of a smooth function on a fine grid, accurate to well under a resolution cell.
    Cached per (config, points_per_axis).
    """
    return dict(_area_extent(cfg, points_per_axis))


@functools.lru_cache(maxsize=32)
def _area_extent(cfg: SystemConfig, points_per_axis: int) -> dict[str, float]:
    with torch.device("cpu"):  # also inside a meta-device context (parameter counting without allocation)
        return _area_extent_cpu(cfg, points_per_axis)


def _area_extent_cpu(cfg: SystemConfig, points_per_axis: int) -> dict[str, float]:
    (x0, x1), (y0, y1) = cfg.area
    gx = torch.linspace(x0, x1, points_per_axis, dtype=torch.float64)
    gy = torch.linspace(y0, y1, points_per_axis, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(gx, gy, indexing="ij"), -1).reshape(1, -1, 2)
    aps = torch.tensor(cfg.tx_positions + cfg.rx_positions, dtype=torch.float64)
    # Drop grid points on top of an AP (angle undefined there); they cannot host a target either.
    keep = (torch.linalg.vector_norm(pts[0, :, None] - aps, dim=-1) > 1e-6).all(-1)
    pts = pts[:, keep]
    geo = bistatic_geometry(cfg, pts, torch.zeros_like(pts))
    u = geo.tx.direction[:, :, None] + geo.rx.direction[:, None, :]  # [1, N, M, P, 2]
    return {
        "min_range": float(geo.bistatic_range.min()),
        "max_range": float(geo.bistatic_range.max()),
        "max_bistatic_speed": float(cfg.max_speed * u.abs().sum(-1).max()),
    }


def centred_grid(n: int) -> torch.Tensor:
    """n cosines -1 + (2k + 1) / n, k = 0..n-1 (a shifted DFT grid, symmetric about broadside), float64."""
    return -1.0 + (2.0 * torch.arange(n, dtype=torch.float64) + 1.0) / n


def check_bins(name: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def check_y(y_m: torch.Tensor, shape: tuple[int, int, int]) -> None:
    if not isinstance(y_m, torch.Tensor) or not y_m.is_complex():
        raise ValueError("y_m must be a complex torch.Tensor [B, Mr, Ns, Ts]")
    if y_m.dim() != 4 or tuple(y_m.shape[1:]) != shape or y_m.shape[0] == 0:
        raise ValueError(f"y_m must be complex [B, Mr, Ns, Ts] = [B, {', '.join(map(str, shape))}] with B >= 1, "
                         f"got {tuple(y_m.shape)}")


def check_options(norm: str, compress: str, chunk_cells: int) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown input normalisation {norm!r}; choose one of {list(NORMS)}")
    if compress not in COMPRESS:
        raise ValueError(f"compress must be one of {list(COMPRESS)}, got {compress!r}")
    check_bins("chunk_cells", chunk_cells)


def velocity_grid(cfg: SystemConfig, d3: int) -> torch.Tensor:
    """D3 bistatic velocities (m/s) evenly spanning +-(largest bistatic speed + one resolution cell), within the
    unambiguous Doppler interval; float64."""
    res, ext = cfg.resolution(), area_extent(cfg)
    v_amb = res["unambiguous_doppler_hz"] * SPEED_OF_LIGHT / cfg.carrier_frequency
    v_hi = min(v_amb, ext["max_bistatic_speed"] + res["velocity_resolution_mps"])
    if d3 == 1:
        return torch.zeros(1, dtype=torch.float64)
    return torch.linspace(-v_hi, v_hi, d3, dtype=torch.float64)


def doppler_matrix(cfg: SystemConfig, vels: torch.Tensor) -> torch.Tensor:
    """e^{-j 2 pi t f_l dT} / sqrt(Ts), f_l = v_l fc / c, t the absolute symbol indices: [D3, Ts] complex128 (the
    conjugate of the Doppler phase of Eq. 6, :func:`cfisac.physics.doppler_phase`: the sum over t undoes it)."""
    fd = vels * cfg.carrier_frequency / SPEED_OF_LIGHT
    return doppler_phase(SensingGrid.from_config(cfg), fd).conj() / math.sqrt(cfg.n_symbols)


def abs2(v: torch.Tensor) -> torch.Tensor:
    """|v|^2 of a complex tensor as re^2 + im^2 (one fused multiply-add; 5x cheaper than complex abs or a sum over
    the real view on the CPU)."""
    re = v.real
    return torch.addcmul(re * re, v.imag, v.imag)


def working_cells(chunk_cells: int, device: torch.device) -> int:
    """Complex cells of a chunk's largest intermediate: ``chunk_cells`` (the memory bound), on a CPU at most the
    cache-sized ``FAST_CHUNK_CELLS`` (larger chunks only add cache misses there)."""
    return min(chunk_cells, FAST_CHUNK_CELLS) if device.type == "cpu" else chunk_cells


def check_x(x: Any, shape: tuple[int, int, int, int], batch: int, name: str) -> None:
    if x is None:
        raise ValueError(f"the {name!r} front end needs the transmit signals x [B, N, Nt, Ns, Ts]: the receive AP "
                         "must receive them from the CPU (see cfisac.models.front_ends)")
    if not isinstance(x, torch.Tensor) or not x.is_complex() or x.dim() != 5 or tuple(x.shape[1:]) != shape \
            or x.shape[0] != batch:
        raise ValueError(f"x must be complex [B, N, Nt, Ns, Ts] = [{batch}, {', '.join(map(str, shape))}] like "
                         f"y_m's batch, got {getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
