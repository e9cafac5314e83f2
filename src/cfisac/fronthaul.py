"""Fronthaul accounting (paper Section III-D) and the online message formats.

Bits each receive AP sends to the CPU per update (one sensing frame):

- fully distributed: angle, range and radial velocity of each target as 32-bit floats: ``96 Q``;
- centralized: Re and Im of Y_m as 32-bit floats: ``64 Mr Ns Ts``;
- D-VAE: the continuous latent Z_m as 32-bit floats: ``32 D L``;
- D-VQVAE: L indices of ``Nb = log2(Nc)`` bits: ``Nb L`` (the message is ``ceil(Nb L / 8)`` bytes, see
  :mod:`cfisac.quantize`).

:func:`learned_bits` computes the learned schemes' numbers from the message the AP side actually emits (its shape is
taken from the model, so L follows from the front end and the encoder). At the paper presets this reproduces
Section V-C exactly: 192 bit, 67 Mbit (67,108,864), 82 kbit (81,920) and a 99 % (99.88 %) reduction.

Front ends that need X at the receive AP add a downlink of X (``64 N Nt Ns Ts`` bits per update) that
:func:`fronthaul_table` reports in its own column: the paper's receive AP has no such downlink.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .config import SystemConfig

__all__ = [
    "FronthaulRow", "centralized_bits", "dvae_bits", "dvqvae_bits", "format_bits", "fronthaul_table",
    "fully_distributed_bits", "learned_bits", "measured_bits", "transmit_signal_bits",
]


def fully_distributed_bits(cfg: SystemConfig) -> int:
    """96 Q: three 32-bit parameters (angle, range, radial velocity) per target."""
    return 96 * cfg.n_targets


def centralized_bits(cfg: SystemConfig) -> int:
    """64 Mr Ns Ts: the raw echoes Y_m, Re and Im as 32-bit floats."""
    return 64 * cfg.n_rx_antennas * cfg.n_subcarriers * cfg.n_symbols


def transmit_signal_bits(cfg: SystemConfig) -> int:
    """64 N Nt Ns Ts: X as 32-bit floats (the downlink a front end that needs X at the receive AP implies)."""
    return 64 * cfg.n_tx * cfg.n_tx_antennas * cfg.n_subcarriers * cfg.n_symbols


def dvqvae_bits(latent_length: int, num_codes: int) -> int:
    """Nb L with Nb = log2(Nc)."""
    from .quantize import bits_per_index

    if latent_length < 1:
        raise ValueError(f"latent_length (L) must be positive, got {latent_length}")
    return bits_per_index(num_codes) * latent_length


def dvae_bits(latent_numel: int) -> int:
    """32 bits per continuous latent value."""
    if latent_numel < 1:
        raise ValueError(f"latent_numel must be positive, got {latent_numel}")
    return 32 * latent_numel


def measured_bits(messages: Sequence[bytes]) -> float:
    """Mean bits per message of the byte strings actually sent (8 * bytes)."""
    if not messages:
        raise ValueError("no messages")
    return 8 * sum(len(m) for m in messages) / len(messages)


def learned_bits(kind: str, cfg: SystemConfig, mcfg) -> int:
    """Bits per AP and update of learned scheme ``kind`` ("dvqvae", "dvae", "cnn"), from its message size."""
    from .models import payload_shape
    from .quantize import message_nbytes

    shape = payload_shape(kind, cfg, mcfg)
    if kind == "dvqvae":
        return 8 * message_nbytes(math.prod(shape[1:]), mcfg.num_codes)
    return 32 * math.prod(shape)


def format_bits(bits: float) -> str:
    """SI-prefixed bit count as the paper writes it: 81920 -> '82 kbit', 67108864 -> '67 Mbit'."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if bits >= scale:
            v = bits / scale
            return f"{v:.0f} {prefix}bit" if v >= 10 else f"{v:.1f} {prefix}bit"
    return f"{bits:.0f} bit"


@dataclass
class FronthaulRow:
    """One scheme: bits per AP and update, its reduction w.r.t. the centralized scheme, and the downlink of X to
    each receive AP the scheme needs (0 for the paper's schemes)."""

    scheme: str
    bits_per_ap: int
    reduction_vs_centralized: float
    downlink_bits_per_ap: int = 0

    def line(self) -> str:
        extra = f", plus {format_bits(self.downlink_bits_per_ap)} downlink of X" if self.downlink_bits_per_ap else ""
        return (f"{self.scheme:<20} {format_bits(self.bits_per_ap):>10} ({self.bits_per_ap:,} bit), "
                f"reduction vs centralized {100 * self.reduction_vs_centralized:.2f} %{extra}")


def fronthaul_table(cfg: SystemConfig, mcfg=None) -> list[FronthaulRow]:
    """Rows for the fully distributed, centralized, D-VAE and D-VQVAE schemes (``mcfg`` default: the paper's
    Table II, :class:`cfisac.models.ModelConfig`)."""
    from .models import ModelConfig, model_front_end

    mcfg = mcfg or ModelConfig.preset("paper")
    central = centralized_bits(cfg)
    down = transmit_signal_bits(cfg) if model_front_end(cfg, mcfg).needs_x else 0
    rows = [
        ("fully distributed", fully_distributed_bits(cfg), 0),
        ("centralized", central, 0),
        ("D-VAE", learned_bits("dvae", cfg, mcfg), down),
        ("D-VQVAE", learned_bits("dvqvae", cfg, mcfg), down),
    ]
    return [FronthaulRow(name, bits, 1.0 - bits / central, d) for name, bits, d in rows]
