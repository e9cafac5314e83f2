"""A geometry-aware CPU decoder for the learned cooperative scheme (``ModelConfig(decoder="geometry")``).

The paper's decoder (Eq. 16, :class:`cfisac.models.dvqvae.FusionDecoder`) flattens the M dequantized latents and
regresses psi with fully connected layers: it has to learn a map from every latent cell to coordinates. When the
AP front end already back-projects the echoes onto a position grid of the area (``"image"``, ``"velocity-image"``
of :mod:`cfisac.models.front_ends`: the latent's first two grid axes are the x and y pixels), the CPU can instead decode
each AP's message into a map over the area, fuse the maps of the M APs where they are aligned, and read the targets
off the fused map. This module does that; the AP side (front end, encoder E_m, projector, quantizer, Eq. 12-15) and
the fronthaul message are unchanged.

Shapes (B batch, M receive APs, N transmit APs, Q targets, D code dimension, (d1, d2, d3) the latent grid, (G1, G2)
= (d1, d2) 2^U the output map grid, U = ``map_upsample``):

1. Per-AP map decoder (:class:`ApMapDecoder`): dequantized features [B, D, d1, d2, d3] float32 -> a layer norm
   (per sample, over channels and grid: the codewords' scale is arbitrary) and a 1x1x1 convolution to
   C = ``map_channels`` channels, a residual block of ``map_res_layers`` 3D convolutions, the third (Doppler /
   velocity) axis folded into channels and mixed by a 1x1 convolution -> [B, C, d1, d2], then U
   transposed convolutions (kernel 4, stride 2, padding 1) -> the per-AP map A_m [B, C, G1, G2].
2. Fusion: ``"conv"`` concatenates the M maps [B, M C, G1, G2] and applies a 3x3 convolution and ``fusion_layers``
   residual 3x3 layers (a learned fusion that can also suppress one AP's side lobes with another's evidence);
   ``"sum"`` applies the heads to each A_m and sums the heat-map logits over the APs (a sum of log-likelihood-like
   maps, no learned cross-AP interaction).
3. Heads (1x1 convolutions): heat-map logits H [B, G1, G2]; sub-pixel offsets O [B, 2, G1, G2] (pixel units); the
   bistatic velocities b [B, M N, G1, G2] (m/s, pair p = m N + n) of every pair at every pixel, and their
   log-weights; a direct velocity V [B, 2, G1, G2] (m/s, used by ``velocity_readout="direct"``).
4. Readout (:meth:`GeometryDecoder.readout`): the Q largest local maxima of H (3x3 non-maximum suppression,
   :func:`top_peaks`), refined by the offset head (``peak_readout="offset"``: g = centre + O pixel) or by a
   soft-argmax of H in a ``peak_window`` window around each peak (:func:`soft_argmax_window`); the velocity solves
   the bistatic Doppler equations (Eq. 9-11: lambda f_D,nm = (e_n(g) + e_m(g)) . v, i.e. b_nm = u_nm(g) . v with
   e the unit vectors from the APs to g) at the estimated position by weighted least squares
   (:func:`velocity_least_squares`, differentiable) with learned weights w_nm (1/(m/s)^2) and a ridge of the prior's
   inverse variance 3 / max_speed^2 (MAP under a Gaussian approximation of the uniform prior: between the AP rows
   u_y nearly cancels and v_y is weakly observed).
   With ``prior_fallback`` each peak's estimate is blended with the prior's best fixed guess (the Q positions
   of :func:`cfisac.estimators.prior.best_fixed_guess`, velocity 0): g = w g_peak + (1 - w) g_prior, v = w v,
   w = sigmoid(a H_peak + c) with two learned scalars (a > 0): the posterior mean when the peak is a target with
   probability w and the prior's guess is the best one otherwise. A weak peak (low SNR: noise) then falls back to
   the prior instead of a random pixel. a, c are trained by the blended estimate's squared error (positions / area
   size, velocities / max_speed, targets assigned optimally) with the maps detached, so they only calibrate.
5. Output: psi [B, 4Q] float32 in the canonical order (ascending x), min-max normalised with the label range held
   in the buffers ``label_minimum`` / ``label_maximum`` [4Q] (default: the prior's box, area and +-max_speed; set
   them with :meth:`GeometryDecoder.set_label_range` to the training normaliser's).

Training (:func:`geometry_loss`, :class:`GeometryCpuTrainer`): a CenterNet-style penalty-reduced focal loss of H
against Gaussian bumps (``heatmap_sigma`` pixels) at the true positions, the L1 error of the offsets and of the
bistatic velocities at the true pixels, and the L1 error of the least-squares velocity at the true positions; all
dense and teacher-forced (no assignment of targets to output slots is needed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SystemConfig

__all__ = [
    "GEOMETRY_FRONT_ENDS", "ApMapDecoder", "GeometryCpuTrainer", "GeometryDecoder", "GeometryOptions",
    "bistatic_directions", "focal_heatmap_loss", "gaussian_heatmap", "geometry_loss", "pixel_centres",
    "soft_argmax_window", "top_peaks", "velocity_least_squares",
]

# Front ends whose output's first two grid axes are the x and y pixels of the area (cfisac.models.front_ends).
GEOMETRY_FRONT_ENDS = ("image", "velocity-image")


@dataclass(frozen=True)
class GeometryOptions:
    """Options of the geometry decoder (``ModelConfig.decoder_options``); see the module docstring."""

    map_channels: int = 16
    map_res_layers: int = 1
    map_upsample: int | None = None  # None: the encoder's downsampling layers (the front end's own pixel grid)
    fusion: str = "conv"
    fusion_layers: int = 0
    peak_readout: str = "offset"
    peak_window: int = 3
    heatmap_sigma: float = 1.0
    velocity_readout: str = "ls"
    velocity_branch: str = "map"  # "latent": each AP's bistatic velocities from its latent grid (see ApMapDecoder)
    velocity_hidden: int = 64  # hidden width of the "latent" velocity branch
    velocity_bins: int = 16  # bins of the per-pair bistatic-velocity softmax of velocity_readout="doppler"
    velocity_weight: float = 1.0
    offset_weight: float = 1.0
    velocity_support: int = 1  # the bistatic / velocity losses also at the pixels within this many of the true one
    prior_fallback: bool = False  # blend each peak's estimate with the prior's best fixed guess (module docstring)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeometryOptions:
        if not isinstance(d, dict):
            raise ValueError(f"decoder_options must be a dict, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown geometry decoder option(s) {sorted(unknown)}; choose from "
                             f"{[f.name for f in dataclasses.fields(cls)]}")
        opts = cls(**d)
        opts.check()
        return opts

    def check(self) -> None:
        """Raise ``ValueError`` naming the offending option."""
        for name in ("map_channels", "peak_window", "velocity_bins", "velocity_hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"decoder option {name} must be a positive integer, got {v!r}")
        for name in ("map_res_layers", "fusion_layers", "velocity_support"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"decoder option {name} must be a non-negative integer, got {v!r}")
        u = self.map_upsample
        if u is not None and (not isinstance(u, int) or isinstance(u, bool) or not 0 <= u <= 6):
            raise ValueError(f"decoder option map_upsample must be None or an integer in 0..6, got {u!r}")
        if not isinstance(self.prior_fallback, bool):
            raise ValueError(f"decoder option prior_fallback must be True or False, got {self.prior_fallback!r}")
        if self.velocity_branch == "latent" and self.velocity_readout == "doppler":
            raise ValueError("decoder option velocity_branch='latent' needs velocity_readout 'ls' or 'direct'")
        if self.velocity_bins < 2:
            raise ValueError(f"decoder option velocity_bins must be at least 2, got {self.velocity_bins}")
        if self.peak_window % 2 == 0:
            raise ValueError(f"decoder option peak_window must be odd, got {self.peak_window}")
        choices = {"fusion": ("conv", "sum"), "peak_readout": ("offset", "softargmax"),
                   "velocity_readout": ("ls", "direct", "doppler"), "velocity_branch": ("map", "latent")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"decoder option {name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        for name in ("heatmap_sigma",):
            if not isinstance(getattr(self, name), (int, float)) or not getattr(self, name) > 0:
                raise ValueError(f"decoder option {name} must be a positive number, got {getattr(self, name)!r}")
        for name in ("velocity_weight", "offset_weight"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise ValueError(f"decoder option {name} must be a non-negative number, got {getattr(self, name)!r}")


# ---------------------------------------------------------------------------------------------------- geometry
def pixel_centres(area: Sequence[Sequence[float]], shape: tuple[int, int], *, dtype: torch.dtype = torch.float64,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres x [G1], y [G2] (m) of a G1 x G2 grid over ``area`` ((x0, x1), (y0, y1)): x0 + (i + 1/2) dx,
    the grid of the ``"image"`` front end when (G1, G2) is its pixel count."""
    (x0, x1), (y0, y1) = area
    g1, g2 = shape
    xs = x0 + (torch.arange(g1, dtype=dtype, device=device) + 0.5) * (x1 - x0) / g1
    ys = y0 + (torch.arange(g2, dtype=dtype, device=device) + 0.5) * (y1 - y0) / g2
    return xs, ys


def bistatic_directions(points: torch.Tensor, tx: torch.Tensor, rx: torch.Tensor) -> torch.Tensor:
    """u_nm(g) = e_n(g) + e_m(g) (Eq. 9-11; e the unit vector from the AP to g) for points [..., 2] and AP positions
    tx [N, 2], rx [M, 2]: [..., M N, 2] with pair p = m N + n; differentiable in ``points``. The bistatic velocity
    of a point moving with v is u_nm . v = lambda f_D,nm (m/s)."""
    def unit(p: torch.Tensor, aps: torch.Tensor) -> torch.Tensor:
        d = p[..., None, :] - aps.to(p)  # [..., A, 2]
        return d / torch.linalg.vector_norm(d, dim=-1, keepdim=True).clamp_min(1e-6)

    e_tx, e_rx = unit(points, tx), unit(points, rx)  # [..., N, 2], [..., M, 2]
    u = e_rx[..., :, None, :] + e_tx[..., None, :, :]  # [..., M, N, 2]
    return u.reshape(*points.shape[:-1], rx.shape[0] * tx.shape[0], 2)


def velocity_least_squares(u: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | None = None, *,
                           ridge: float = 1e-6) -> torch.Tensor:
    """The 2-D velocity v minimising sum_p w_p (u_p . v - b_p)^2 (+ ridge |v|^2): u [..., P, 2], b [..., P],
    weights [..., P] (>= 0; None: all 1) -> v [..., 2], by the 2x2 normal equations (closed form, differentiable).
    With P >= 2 non-parallel u_p and ridge -> 0 it is the weighted least-squares solution of numpy's lstsq on
    sqrt(w) u, sqrt(w) b."""
    w = torch.ones_like(b) if weights is None else weights
    a = torch.einsum("...p,...pi,...pj->...ij", w, u, u)
    a = a + ridge * torch.eye(2, dtype=a.dtype, device=a.device)
    r = torch.einsum("...p,...pi,...p->...i", w, u, b)
    det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
    vx = (a[..., 1, 1] * r[..., 0] - a[..., 0, 1] * r[..., 1]) / det
    vy = (a[..., 0, 0] * r[..., 1] - a[..., 1, 0] * r[..., 0]) / det
    return torch.stack([vx, vy], -1)


# ---------------------------------------------------------------------------------------------------- peaks
def top_peaks(heat: torch.Tensor, q: int, *, nms: int = 3) -> torch.Tensor:
    """Flat pixel indices [B, q] int64 (row-major over (G1, G2)) of the q largest local maxima of ``heat``
    [B, G1, G2] (a pixel is kept when it equals the maximum of its ``nms`` x ``nms`` neighbourhood), largest first."""
    pooled = F.max_pool2d(heat[:, None], nms, stride=1, padding=nms // 2)[:, 0]
    keep = torch.where(heat >= pooled, heat, torch.full_like(heat, -math.inf))
    return keep.flatten(1).topk(q, dim=1).indices


def soft_argmax_window(logits: torch.Tensor, peaks: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, *,
                       window: int = 3) -> torch.Tensor:
    """Soft-argmax of ``logits`` [B, G1, G2] in the ``window`` x ``window`` window centred on each peak (flat indices
    [B, Q]): sum_k softmax(logits)_k (x_k, y_k) over the window's pixels inside the grid, with pixel centres xs [G1],
    ys [G2]. Returns positions [B, Q, 2] in the dtype of xs; differentiable in ``logits``."""
    B, g1, g2 = logits.shape
    h = window // 2
    r = torch.arange(-h, h + 1, device=logits.device)
    i0, j0 = peaks // g2, peaks % g2  # [B, Q]
    ii = i0[..., None, None] + r[:, None]  # [B, Q, w, 1]
    jj = j0[..., None, None] + r[None, :]  # [B, Q, 1, w]
    ii, jj = torch.broadcast_tensors(ii, jj)
    inside = (ii >= 0) & (ii < g1) & (jj >= 0) & (jj < g2)
    ic, jc = ii.clamp(0, g1 - 1), jj.clamp(0, g2 - 1)
    vals = logits.flatten(1).gather(1, (ic * g2 + jc).flatten(1)).reshape(ic.shape)
    vals = vals.masked_fill(~inside, -math.inf).flatten(2).to(xs.dtype)
    w = torch.softmax(vals, -1)  # [B, Q, w*w]
    px, py = xs[ic].flatten(2), ys[jc].flatten(2)
    return torch.stack([(w * px).sum(-1), (w * py).sum(-1)], -1)


def _gather_maps(maps: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """maps [B, C, G1, G2] at flat pixel indices [B, Q] -> [B, Q, C]."""
    B, C = maps.shape[:2]
    return maps.flatten(2).gather(2, flat[:, None, :].expand(B, C, -1)).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------- losses
def gaussian_heatmap(positions: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """CenterNet targets: max over the Q targets of exp(-|c - c_q|^2 / (2 sigma^2)) on the pixel grid, c_q the
    centre of the pixel that holds target q (so that pixel reads exactly 1), distances in pixels. positions
    [B, Q, 2] (m) -> [B, G1, G2] in the dtype of xs."""
    pi, pj = _pixel_of(positions, xs, ys)  # [B, Q]
    ii = torch.arange(len(xs), device=xs.device, dtype=xs.dtype)
    jj = torch.arange(len(ys), device=xs.device, dtype=xs.dtype)
    d2 = (ii[None, None, :, None] - pi[..., None, None].to(xs.dtype)) ** 2 + \
         (jj[None, None, None, :] - pj[..., None, None].to(xs.dtype)) ** 2
    return torch.exp(-d2 / (2 * sigma_px**2)).amax(1)


def _pixel_of(positions: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (i, j) [B, Q] int64 of the pixels holding positions [B, Q, 2] (clamped to the grid)."""
    dx = float(xs[1] - xs[0]) if len(xs) > 1 else 1.0
    dy = float(ys[1] - ys[0]) if len(ys) > 1 else 1.0
    i = torch.floor((positions[..., 0] - (float(xs[0]) - dx / 2)) / dx).long().clamp(0, len(xs) - 1)
    j = torch.floor((positions[..., 1] - (float(ys[0]) - dy / 2)) / dy).long().clamp(0, len(ys) - 1)
    return i, j


def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor, n_pos: int, *, alpha: float = 2.0,
                       beta: float = 4.0) -> torch.Tensor:
    """Penalty-reduced pixel-wise focal loss of CenterNet: logits, target [B, G1, G2]; pixels with target 1 are the
    positives; summed and divided by the number of positives ``n_pos`` (B Q)."""
    logp, log1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = logp.exp()
    pos = target >= 1.0 - 1e-6
    pos_term = (1 - p) ** alpha * logp
    neg_term = (1 - target) ** beta * p**alpha * log1mp
    return -(torch.where(pos, pos_term, neg_term)).sum() / max(1, n_pos)


def geometry_loss(decoder: GeometryDecoder, maps: dict[str, torch.Tensor], positions: torch.Tensor,
                  velocities: torch.Tensor) -> dict[str, torch.Tensor]:
    """The training loss of the geometry decoder for maps of :meth:`GeometryDecoder.maps` and the true positions /
    velocities [B, Q, 2] (m, m/s; any target order): ``heat`` (focal), ``offset`` (L1, pixels), ``bistatic`` (L1 of
    b / max_speed at the true pixels and their neighbours within ``velocity_support``), ``velocity`` (L1 / max_speed
    of the readout velocity at the true positions, read at the same pixels)
    , ``doppler`` (``velocity_readout="doppler"``: the cross entropy of the bins' softmax at the same pixels against
    the two-hot encoding of the true b, whose mean is b; 0 otherwise)
    and ``loss`` = heat + offset_weight offset + velocity_weight (bistatic + velocity + doppler)."""
    o = decoder.options
    xs, ys = decoder.pixel_x, decoder.pixel_y
    pos = positions.to(xs.dtype)
    vel = velocities.to(xs.dtype)
    heat = maps["heat"]
    B, Q = pos.shape[:2]
    target = gaussian_heatmap(pos, xs, ys, o.heatmap_sigma)
    l_heat = focal_heatmap_loss(heat.to(xs.dtype), target, B * Q)
    i, j = _pixel_of(pos, xs, ys)
    flat = i * len(ys) + j
    dx, dy = decoder.pixel_size
    true_off = torch.stack([(pos[..., 0] - xs[i]) / dx, (pos[..., 1] - ys[j]) / dy], -1)
    l_off = (_gather_maps(maps["offset"], flat).to(xs.dtype) - true_off).abs().mean()
    vmax = decoder.max_speed
    u = bistatic_directions(pos, decoder.tx_positions, decoder.rx_positions)  # [B, Q, P, 2]
    b_true = (u * vel[..., None, :]).sum(-1)
    # the velocity losses at the true pixel and its neighbours within velocity_support (clamped to the grid): the
    # bistatic velocities vary slowly over a few pixels, and a peak read one pixel off still gets a good velocity
    r = o.velocity_support
    doppler = maps.get("doppler")
    if doppler is not None:  # two-hot targets over the bins: their mean is b_true (inside the bins' range)
        bins = decoder.velocity_bins
        K = len(bins)
        t = ((b_true - bins[0]) / (bins[1] - bins[0])).clamp(0, K - 1)
        lo = t.floor().long().clamp(max=K - 2)
        two_hot = F.one_hot(lo, K) * (1 - (t - lo))[..., None] + F.one_hot(lo + 1, K) * (t - lo)[..., None]
        logits_flat = doppler.flatten(1, 2)  # [B, P K, G1, G2]
    l_bi, l_vel, l_cls, n = 0.0, 0.0, 0.0, 0
    for di in range(-r, r + 1):
        for dj in range(-r, r + 1):
            f = (i + di).clamp(0, len(xs) - 1) * len(ys) + (j + dj).clamp(0, len(ys) - 1)
            b = _gather_maps(maps["bistatic"], f).to(xs.dtype)
            l_bi = l_bi + (b - b_true).abs().mean() / vmax
            if doppler is not None:
                logp = F.log_softmax(_gather_maps(logits_flat, f).reshape(*b_true.shape, K).to(xs.dtype), -1)
                l_cls = l_cls + -(two_hot * logp).sum(-1).mean()
            l_vel = l_vel + (decoder.velocity_at(maps, f, pos) - vel).abs().mean() / vmax
            n += 1
    l_bi, l_vel, l_cls = l_bi / n, l_vel / n, l_cls / n
    loss = l_heat + o.offset_weight * l_off + o.velocity_weight * (l_bi + l_vel + l_cls)
    l_fb = torch.zeros((), dtype=xs.dtype, device=xs.device)
    if o.prior_fallback:  # calibrate the blend (a, c) on the blended estimate; the maps get no gradient from it
        from ..metrics import assign_targets

        p_hat, v_hat = decoder.readout({k: v.detach() for k, v in maps.items()})
        perm = assign_targets(p_hat.detach(), pos)  # estimate perm[b, q] is matched to target q
        idx = perm[..., None].expand(-1, -1, 2).to(p_hat.device)
        (x0, x1), (y0, y1) = decoder.area
        scale = torch.tensor([x1 - x0, y1 - y0], dtype=xs.dtype, device=xs.device)
        l_fb = (((p_hat.gather(1, idx) - pos) / scale).pow(2).sum(-1).mean()
                + ((v_hat.gather(1, idx) - vel) / vmax).pow(2).sum(-1).mean())
        loss = loss + l_fb
    return {"loss": loss, "heat": l_heat, "offset": l_off, "bistatic": l_bi, "velocity": l_vel,
            "doppler": torch.as_tensor(l_cls, dtype=xs.dtype), "fallback": l_fb}


# ---------------------------------------------------------------------------------------------------- networks
class _Res2d(nn.Module):
    """``layers`` residual 3x3 convolutions: v <- relu(v + conv(relu(conv(v))))."""

    def __init__(self, channels: int, layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                                  nn.Conv2d(channels, channels, 3, padding=1))
                                    for _ in range(layers))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            v = F.relu(v + blk(v))
        return v


class ApMapDecoder(nn.Module):
    """Step 1 of the module docstring: one AP's features [B, D, d1, d2, d3] -> its map [B, C, G1, G2]."""

    def __init__(self, in_channels: int, grid: tuple[int, int, int], opts: GeometryOptions, upsample: int,
                 n_tx: int = 1) -> None:
        super().__init__()
        c = opts.map_channels
        # per-sample normalisation of the dequantized features (their scale is whatever the codebook learned:
        # ~1e-2 after k-means initialisation at quick); a layer norm over channels and grid, valid at batch 1
        self.norm = nn.GroupNorm(1, in_channels)
        self.inp = nn.Conv3d(in_channels, c, 1)
        self.res = nn.ModuleList(nn.Conv3d(c, c, 3, padding=1) for _ in range(opts.map_res_layers))
        self.fold = nn.Conv2d(c * grid[2], c, 1)  # mixes the Doppler / velocity axis into the channels
        self.up = nn.ModuleList(nn.ConvTranspose2d(c, c, 4, stride=2, padding=1) for _ in range(upsample))
        # velocity_branch="latent": this AP's N bistatic velocities (units of max_speed) and log-weights from the
        # unfolded Doppler axis at the latent grid (a short, wide path), bilinearly upsampled to the map grid
        self.scale = 2**upsample
        self.vel = None
        if opts.velocity_branch == "latent":
            self.vel = nn.Sequential(nn.Conv2d(c * grid[2], opts.velocity_hidden, 1), nn.ReLU(),
                                     nn.Conv2d(opts.velocity_hidden, 2 * n_tx, 3, padding=1))

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The map [B, C, G1, G2] and, with the latent velocity branch, [B, 2 N, G1, G2] (bistatic velocities of
        the pairs (m, 0..N-1) / max_speed, then their log-weights; None otherwise)."""
        h = F.relu(self.inp(self.norm(f)))
        for conv in self.res:
            h = F.relu(h + conv(h))
        B, C, d1, d2, d3 = h.shape
        folded = h.permute(0, 1, 4, 2, 3).reshape(B, C * d3, d1, d2)
        v = None
        if self.vel is not None:
            v = self.vel(folded)
            if self.scale > 1:
                v = F.interpolate(v, scale_factor=self.scale, mode="bilinear", align_corners=False)
        h = F.relu(self.fold(folded))
        for up in self.up:
            h = F.relu(up(h))
        return h, v


class GeometryDecoder(nn.Module):
    """The geometry-aware CPU decoder (module docstring): M payloads [B, D, d1, d2, d3] (and X, unused: the front end
    has already removed the data) -> psi_hat [B, 4Q] float32, normalised."""

    uses_x = False  # X is not read (CpuSide.uses_x): training on kept front-end outputs needs no simulation

    def __init__(self, cfg: SystemConfig, in_channels: int, grid: tuple[int, int, int], encoder_layers: int,
                 options: dict[str, Any] | GeometryOptions) -> None:
        super().__init__()
        opts = options if isinstance(options, GeometryOptions) else GeometryOptions.from_dict(options)
        if len(grid) != 3:
            raise ValueError(f"the geometry decoder needs a 3-D latent grid (x, y, Doppler), got {tuple(grid)}")
        self.options, self.num_aps, self.n_targets = opts, cfg.n_rx, cfg.n_targets
        self.in_channels, self.grid = in_channels, tuple(grid)
        up = encoder_layers if opts.map_upsample is None else opts.map_upsample
        self.map_shape = (grid[0] * 2**up, grid[1] * 2**up)
        if self.map_shape[0] * self.map_shape[1] < cfg.n_targets:
            raise ValueError(f"output map {self.map_shape} has fewer pixels than targets")
        self.max_speed = float(cfg.max_speed)
        self.area = tuple(tuple(float(v) for v in a) for a in cfg.area)
        (x0, x1), (y0, y1) = cfg.area
        self.pixel_size = ((x1 - x0) / self.map_shape[0], (y1 - y0) / self.map_shape[1])
        with torch.device("cpu"):  # constants also inside a meta-device context (parameter counting)
            xs, ys = pixel_centres(cfg.area, self.map_shape)
            tx = torch.tensor(cfg.tx_positions, dtype=torch.float64)
            rx = torch.tensor(cfg.rx_positions, dtype=torch.float64)
            Q, v = cfg.n_targets, cfg.max_speed
            lo = torch.tensor([x0, y0] * Q + [-v, -v] * Q, dtype=torch.float64)
            hi = torch.tensor([x1, y1] * Q + [v, v] * Q, dtype=torch.float64)
            # bins of the bistatic velocity b = u . v (velocity_readout="doppler"): centres over +-b_max, the largest
            # |u_x| v_max + |u_y| v_max over the pixel centres and pairs (|v_x|, |v_y| <= max_speed)
            g = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1)
            b_max = float(bistatic_directions(g, tx, rx).abs().sum(-1).amax()) * v
            bins = torch.linspace(-b_max, b_max, opts.velocity_bins, dtype=torch.float64)
        for name, t in (("pixel_x", xs), ("pixel_y", ys), ("tx_positions", tx), ("rx_positions", rx),
                        ("velocity_bins", bins)):
            self.register_buffer(name, t, persistent=False)
        if opts.prior_fallback:  # the prior's best fixed guess [Q, 2] (a function of the area and Q) and the blend
            from ..estimators.prior import best_fixed_guess

            with torch.device("cpu"):
                self.register_buffer("prior_guess", best_fixed_guess(cfg).to(torch.float64), persistent=False)
            self.fallback_log_scale = nn.Parameter(torch.zeros((), dtype=torch.float32))
            self.fallback_bias = nn.Parameter(torch.zeros((), dtype=torch.float32))
        self.register_buffer("label_minimum", lo)  # persistent: the label range travels with the state dict
        self.register_buffer("label_maximum", hi)
        c, M, P = opts.map_channels, cfg.n_rx, cfg.n_rx * cfg.n_tx
        self.ap_maps = nn.ModuleList(ApMapDecoder(in_channels, self.grid, opts, up, cfg.n_tx) for _ in range(M))
        if opts.fusion == "conv":
            self.fuse = nn.Conv2d(M * c, c, 3, padding=1)
            self.fuse_res = _Res2d(c, opts.fusion_layers)
        # heads: heat 1, offset 2, bistatic P, log-weights P, direct velocity 2 (+ bistatic-velocity logits P K)
        self.n_head = 1 + 2 + 2 * P + 2 + (P * opts.velocity_bins if opts.velocity_readout == "doppler" else 0)
        self.head = nn.Conv2d(c, self.n_head, 1)
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[0] = -2.19  # CenterNet's prior: sigmoid = 0.1 at the start

    # ------------------------------------------------------------------ label range
    def set_label_range(self, minimum: torch.Tensor, maximum: torch.Tensor) -> None:
        """Use the training normaliser's min-max range (:class:`cfisac.models.LabelNormaliser`) for the output."""
        if tuple(minimum.shape) != tuple(self.label_minimum.shape) or tuple(maximum.shape) != tuple(
                self.label_maximum.shape):
            raise ValueError(f"label range must be two [{self.label_minimum.shape[0]}] tensors")
        self.label_minimum.copy_(minimum.detach().to(self.label_minimum))
        self.label_maximum.copy_(maximum.detach().to(self.label_maximum))

    def normalise(self, psi: torch.Tensor) -> torch.Tensor:
        span = (self.label_maximum - self.label_minimum).clamp_min(1e-12)
        return ((psi.double() - self.label_minimum) / span).float()

    def denormalise(self, psi_n: torch.Tensor) -> torch.Tensor:
        span = (self.label_maximum - self.label_minimum).clamp_min(1e-12)
        return psi_n.double() * span + self.label_minimum

    # ------------------------------------------------------------------ forward
    def _check(self, features: Sequence[torch.Tensor]) -> None:
        if len(features) != self.num_aps:
            raise ValueError(f"expected features of {self.num_aps} receive APs, got {len(features)}")
        for m, f in enumerate(features):
            if f.dim() != 5 or tuple(f.shape[1:]) != (self.in_channels, *self.grid):
                raise ValueError(f"features of AP {m} have shape {tuple(f.shape)}, expected "
                                 f"[B, {self.in_channels}, {', '.join(map(str, self.grid))}]")

    def maps(self, features: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Steps 1-3: ``heat`` [B, G1, G2], ``offset`` [B, 2, G1, G2], ``bistatic`` / ``log_weight`` [B, M N, G1, G2],
        ``velocity`` [B, 2, G1, G2] (float32); with ``velocity_readout="doppler"`` also ``doppler``, the logits
        [B, M N, K, G1, G2] over the K bistatic-velocity bins (buffer ``velocity_bins`` [K], m/s), and ``bistatic``
        is their soft-argmax sum_k softmax_k b_k."""
        self._check(features)
        outs = [dec(f) for dec, f in zip(self.ap_maps, features, strict=True)]
        a = [o[0] for o in outs]
        M, N = self.num_aps, len(self.tx_positions)
        P = M * N
        if self.options.fusion == "conv":
            h = self.head(self.fuse_res(F.relu(self.fuse(torch.cat(a, 1)))))
        else:  # "sum": per-AP heads; heat logits summed, offsets / direct velocities averaged, pair m N + n from AP m
            hs = [self.head(am) for am in a]
            own = [hs[m][:, k + m * N:k + (m + 1) * N] for k in (3, 3 + P) for m in range(M)]
            K, c0 = self.options.velocity_bins, 5 + 2 * P  # the bins of pair p: channels c0 + p K ... c0 + p K + K - 1
            own_bins = [hs[m][:, c0 + m * N * K:c0 + (m + 1) * N * K] for m in range(M)] if self.n_head > c0 else []
            h = torch.cat([torch.stack([hm[:, :1] for hm in hs]).sum(0), torch.stack([hm[:, 1:3] for hm in hs]).mean(0),
                           *own, torch.stack([hm[:, 3 + 2 * P:c0] for hm in hs]).mean(0), *own_bins], 1)
        vmax = self.max_speed
        out = {"heat": h[:, 0], "offset": h[:, 1:3], "bistatic": h[:, 3:3 + P] * vmax,
               "log_weight": h[:, 3 + P:3 + 2 * P], "velocity": h[:, 3 + 2 * P:5 + 2 * P] * vmax}
        if self.options.velocity_branch == "latent":  # pair m N + n from AP m's own branch
            out["bistatic"] = torch.cat([o[1][:, :N] for o in outs], 1) * vmax
            out["log_weight"] = torch.cat([o[1][:, N:] for o in outs], 1)
        if self.options.velocity_readout == "doppler":
            # per pixel and pair a softmax over the bistatic-velocity bins; b = its mean (a soft-argmax)
            B, _, g1, g2 = h.shape
            logits = h[:, 5 + 2 * P:].reshape(B, P, self.options.velocity_bins, g1, g2)
            out["doppler"] = logits
            bins = self.velocity_bins.to(logits.dtype)
            out["bistatic"] = (torch.softmax(logits, 2) * bins[:, None, None]).sum(2)
        return out

    def velocity_at(self, maps: dict[str, torch.Tensor], flat: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The velocity [B, Q, 2] (m/s, float64) of targets at ``positions`` [B, Q, 2] read at pixels ``flat``
        [B, Q]: the weighted least squares of the bistatic equations (``velocity_readout="ls"``) or the direct
        velocity head (``"direct"``)."""
        if self.options.velocity_readout == "direct":
            return _gather_maps(maps["velocity"], flat).double()
        u = bistatic_directions(positions.double(), self.tx_positions, self.rx_positions)
        b = _gather_maps(maps["bistatic"], flat).double()
        w = F.softplus(_gather_maps(maps["log_weight"], flat).double()) + 1e-3  # 1 / (m/s)^2
        # ridge = the inverse prior variance of a velocity component (uniform in +-max_speed: max_speed^2 / 3): the
        # MAP solution under a Gaussian approximation of the prior. Between the AP rows u_y = e_n,y + e_m,y nearly
        # cancels, so v_y is weakly observed and the plain least squares would blow the errors of b up in v_y.
        return velocity_least_squares(u, b, w, ridge=3.0 / self.max_speed**2)

    def readout(self, maps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 4: positions and velocities [B, Q, 2] float64 (m, m/s), in the canonical order (ascending x)."""
        heat = maps["heat"]
        flat = top_peaks(heat.detach(), self.n_targets)
        g2 = self.map_shape[1]
        i, j = flat // g2, flat % g2
        if self.options.peak_readout == "softargmax":
            pos = soft_argmax_window(heat.double(), flat, self.pixel_x, self.pixel_y, window=self.options.peak_window)
        else:
            off = _gather_maps(maps["offset"], flat).double()
            dx, dy = self.pixel_size
            pos = torch.stack([self.pixel_x[i] + off[..., 0] * dx, self.pixel_y[j] + off[..., 1] * dy], -1)
        vel = self.velocity_at(maps, flat, pos)
        order = pos[..., 0].detach().argsort(1)
        pos = pos.gather(1, order[..., None].expand(-1, -1, 2))
        vel = vel.gather(1, order[..., None].expand(-1, -1, 2))
        if self.options.prior_fallback:  # w g_peak + (1 - w) g_prior, w v (module docstring, step 4)
            logit = heat.flatten(1).gather(1, flat).double().gather(1, order)
            w = torch.sigmoid(self.fallback_log_scale.double().exp() * logit + self.fallback_bias.double())[..., None]
            pos = w * pos + (1 - w) * self.prior_guess[None]
            vel = w * vel
        return pos, vel

    def forward(self, features: Sequence[torch.Tensor], x: torch.Tensor | None = None) -> torch.Tensor:
        pos, vel = self.readout(self.maps(features))
        B = pos.shape[0]
        return self.normalise(torch.cat([pos.reshape(B, -1), vel.reshape(B, -1)], 1))


# ---------------------------------------------------------------------------------------------------- training
class GeometryCpuTrainer:
    """The CPU's part of Algorithm 1 (lines 12-14) with :func:`geometry_loss` instead of Eq. (17): a drop-in for
    :class:`cfisac.train.CpuTrainer` in :func:`cfisac.train.train_step` (same ``step`` signature; ``target`` is the
    normalised psi [B, 4Q] in the decoder's label range). Holds its own Adam optimizer."""

    def __init__(self, cpu: nn.Module, *, lr: float) -> None:
        decoder = getattr(cpu, "decoder", None)
        if not isinstance(decoder, GeometryDecoder):
            raise ValueError("GeometryCpuTrainer needs a CPU side built with ModelConfig(decoder='geometry')")
        self.cpu, self.decoder = cpu, decoder
        self.optimizer = torch.optim.Adam([p for p in cpu.parameters() if p.requires_grad], lr=lr)
        self.last: dict[str, float] = {}

    def step(self, payloads: Sequence[torch.Tensor], x: torch.Tensor | None, target: torch.Tensor,
             *, need_grads: bool = True) -> tuple[float, list[torch.Tensor | None], torch.Tensor]:
        """Returns (loss, gradient per payload, prediction psi_hat [B, 4Q] normalised, detached)."""
        self.cpu.train()
        inputs = [p.detach().requires_grad_(need_grads) for p in payloads]
        Q = self.decoder.n_targets
        psi = self.decoder.denormalise(target)
        B = psi.shape[0]
        pos, vel = psi[:, :2 * Q].reshape(B, Q, 2), psi[:, 2 * Q:].reshape(B, Q, 2)
        maps = self.decoder.maps(inputs)
        parts = geometry_loss(self.decoder, maps, pos, vel)
        self.optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        self.optimizer.step()
        self.last = {k: float(v.detach()) for k, v in parts.items()}
        with torch.no_grad():
            p_hat, v_hat = self.decoder.readout({k: v.detach() for k, v in maps.items()})
            pred = self.decoder.normalise(torch.cat([p_hat.reshape(B, -1), v_hat.reshape(B, -1)], 1))
        return self.last["loss"], [i.grad if need_grads else None for i in inputs], pred
