"""Network blocks of the D-VQVAE (paper Fig. 3, Section III): the receive-AP encoder and the CPU decoder.

Shapes (B batch, M receive APs, H = hidden_channels, D = code_dim, (d1, d2, d3) the encoder's output grid):

- :class:`Encoder` (Eq. 12): [B, C, D1, D2, D3] float32 -> [B, H, D1/2^Lcnn, D2/2^Lcnn, D3/2^Lcnn]: L_cnn 3D
  convolutions (kernel 4, stride 2, padding 1) + ReLU, then a :class:`ResidualBlock` of L_res 3D convolutions
  (kernel 3, padding 1). The transmit-signal branch of the decoder reuses it (L_cnn^t, L_res^t).
- :class:`FusionDecoder` (Eq. 16): M dequantized feature tensors [B, D, d1, d2, d3] and X [B, N, Nt, Ns, Ts]
  complex -> psi_hat [B, 4Q] (normalised labels): residual block of L_res^c convolutions over the concatenated
  [B, M D, d1, d2, d3], flattened and projected by Phi_fc^c; Re/Im of X as two channels of [N Nt, Ns, Ts], L_cnn^t
  downsampling + L_res^t residual convolutions, flattened and projected by Phi_fc^t; the two concatenated, ReLU, the
  fully connected Phi_fc + ReLU and the output layer Phi_out (linear: the labels are min-max normalised).

The AP side (front end + encoder + projector Phi_vq + quantizer) and the CPU side are assembled in
:mod:`cfisac.models.split`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SystemConfig
from .config import ModelConfig
from .front_ends import TxFrontEnd

__all__ = ["Encoder", "FusionDecoder", "ResidualBlock", "check_ap_features", "downsampled_grid"]


def downsampled_grid(shape: tuple[int, ...], layers: int, what: str = "input") -> tuple[int, ...]:
    """Grid after ``layers`` stride-2 convolutions (kernel 4, padding 1): each dimension divided by 2^layers."""
    f = 2**layers
    if any(s % f for s in shape):
        raise ValueError(f"{what} grid {tuple(shape)} is not divisible by 2^{layers} = {f} in every dimension "
                         f"({layers} downsampling layers of stride 2)")
    return tuple(s // f for s in shape)


def check_ap_features(features: Sequence[torch.Tensor], num_aps: int, in_channels: int, grid: tuple[int, ...], *,
                      what: str = "features") -> None:
    """Raise ``ValueError`` unless ``features`` holds one tensor [B, in_channels, *grid] per receive AP (``num_aps``
    of them): the M inputs of a CPU network (the latents of Eq. 16, or the front-end tensors of the CNN baseline);
    ``what`` names them in the message."""
    if len(features) != num_aps:
        raise ValueError(f"expected {what} of {num_aps} receive APs, got {len(features)}")
    for m, f in enumerate(features):
        if f.dim() != 5 or tuple(f.shape[1:]) != (in_channels, *grid):
            raise ValueError(f"{what} of AP {m} have shape {tuple(f.shape)}, expected "
                             f"[B, {in_channels}, {', '.join(map(str, grid))}]")


class ResidualBlock(nn.Module):
    """``layers`` 3D convolutions (kernel 3, padding 1, ``channels`` wide) with an identity mapping:
    ``relu(v + conv_L(relu(... relu(conv_1(v)))))``; the identity when ``layers`` is 0."""

    def __init__(self, channels: int, layers: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv3d(channels, channels, 3, padding=1) for _ in range(layers))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if not len(self.convs):
            return v
        h = v
        for k, conv in enumerate(self.convs):
            h = conv(h)
            if k < len(self.convs) - 1:
                h = F.relu(h)
        return F.relu(v + h)


class Encoder(nn.Module):
    """Eq. (12): downsampling convolutions (kernel 4, stride 2, padding 1, ReLU) then a residual block."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], res_layers: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [nn.Conv3d(c, w, 4, stride=2, padding=1), nn.ReLU()]
            c = w
        self.down = nn.Sequential(*layers)
        self.res = ResidualBlock(c, res_layers)
        self.out_channels = c
        self.layers = len(widths)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.res(self.down(v))


class FusionDecoder(nn.Module):
    """The CPU decoder D of Eq. (16) for the D-VQVAE and the D-VAE (see the module docstring)."""

    def __init__(self, cfg: SystemConfig, mcfg: ModelConfig, in_channels: int, grid: tuple[int, int, int]) -> None:
        super().__init__()
        self.num_aps, self.in_channels, self.grid = cfg.n_rx, in_channels, tuple(grid)
        fused = cfg.n_rx * in_channels
        self.res = ResidualBlock(fused, mcfg.cpu_res_layers)  # Phi_res^c
        self.fc_cpu = nn.Linear(fused * math.prod(grid), mcfg.fc_cpu)  # Phi_fc^c
        self.tx_front = TxFrontEnd(cfg)
        self.tx_grid = downsampled_grid(self.tx_front.spatial_shape, mcfg.tx_layers, "transmit-signal")
        self.tx_encoder = Encoder(2, mcfg.tx_channel_list, mcfg.tx_res_layers)  # Phi_cnn^t, Phi_res^t
        self.fc_tx = nn.Linear(self.tx_encoder.out_channels * math.prod(self.tx_grid), mcfg.fc_tx)  # Phi_fc^t
        self.fc = nn.Linear(mcfg.fc_cpu + mcfg.fc_tx, mcfg.fc_hidden)  # Phi_fc
        self.out = nn.Linear(mcfg.fc_hidden, 4 * cfg.n_targets)  # Phi_out

    def forward(self, features: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        check_ap_features(features, self.num_aps, self.in_channels, self.grid)
        z = torch.cat(features, dim=1)
        a = self.fc_cpu(self.res(z).flatten(1))
        t = self.fc_tx(self.tx_encoder(self.tx_front(x)).flatten(1))
        h = F.relu(self.fc(F.relu(torch.cat([a, t], dim=1))))
        return self.out(h)
