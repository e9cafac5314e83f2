"""The D-VAE ablation (Section V-A): the D-VQVAE without its vector quantizer.

Same front end, encoder, projector Phi_vq (kept so that the decoder is literally the D-VQVAE's, with M*D input
channels) and decoder; each receive AP sends its continuous features Z_m [D, d1, d2, d3] as 32-bit floats, i.e.
32 * D * L bits per update (at the paper preset 32 * 512 * 16384 = 268 Mbit, four times the centralized scheme's
raw echoes: the paper does not give the D-VAE's overhead). There is no commitment loss and no codebook.
"""

from __future__ import annotations

from ..config import SystemConfig
from .config import ModelConfig
from .split import SplitModel, build_model

__all__ = ["build_dvae"]


def build_dvae(cfg: SystemConfig, mcfg: ModelConfig, *, seed: int = 0) -> SplitModel:
    """``build_model("dvae", cfg, mcfg, seed=seed)``."""
    return build_model("dvae", cfg, mcfg, seed=seed)
