"""The CNN centralized baseline of the paper's reference [1] (Section V-A).

Every receive AP forwards its raw echoes (Re/Im of Y_m after the front end, as 32-bit floats: 64 Mr Ns Ts bits);
the CPU concatenates them as 2M channels of an [Mr, Ns, Ts] volume and applies two 3D convolutions of kernel 5
(same padding; widths ``cnn_channels``), each followed by ReLU and max pooling (``cnn_pool``, ceil mode), then three
fully connected layers of 256 units (``cnn_fc``) with ReLU and a linear output layer of 4Q numbers. The paper does
not say whether the CNN sees X; as described ("based on the reflected sensing signals") it does not.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import SystemConfig
from .config import ModelConfig
from .dvqvae import check_ap_features

__all__ = ["CnnCentralized"]


class CnnCentralized(nn.Module):
    """CPU network of the CNN centralized scheme: M front-end tensors [B, C, D1, D2, D3] -> psi_hat [B, 4Q]."""

    def __init__(self, cfg: SystemConfig, mcfg: ModelConfig, in_channels: int, grid: tuple[int, int, int]) -> None:
        super().__init__()
        self.num_aps, self.in_channels, self.grid = cfg.n_rx, in_channels, tuple(grid)
        layers: list[nn.Module] = []
        c, g = cfg.n_rx * in_channels, list(grid)
        for w in mcfg.cnn_channels:
            layers += [nn.Conv3d(c, w, mcfg.cnn_kernel, padding=mcfg.cnn_kernel // 2), nn.ReLU(),
                       nn.MaxPool3d(mcfg.cnn_pool, ceil_mode=True)]
            c, g = w, [math.ceil(s / mcfg.cnn_pool) for s in g]
        self.features = nn.Sequential(*layers)
        fcs: list[nn.Module] = []
        n = c * math.prod(g)
        for w in mcfg.cnn_fc:
            fcs += [nn.Linear(n, w), nn.ReLU()]
            n = w
        self.fc = nn.Sequential(*fcs)
        self.out = nn.Linear(n, 4 * cfg.n_targets)

    def forward(self, features: list[torch.Tensor], x: torch.Tensor | None = None) -> torch.Tensor:
        check_ap_features(features, self.num_aps, self.in_channels, self.grid, what="echoes")
        h = self.features(torch.cat(features, dim=1)).flatten(1)
        return self.out(self.fc(h))
