"""Parameter counts, model sizes and multiply-accumulate counts of the learned schemes, computed on the ``meta``
device (shapes only: nothing of the paper's scale is allocated)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import SystemConfig
from .config import ModelConfig
from .split import SplitModel, build_cpu_side, build_model

__all__ = ["decoder_macs", "macs_per_sample", "meta_model", "parameter_counts", "summary_lines"]


def meta_model(kind: str, cfg: SystemConfig, mcfg: ModelConfig) -> SplitModel:
    """The model with every parameter on the ``meta`` device."""
    with torch.device("meta"):
        return build_model(kind, cfg, mcfg)


def _n(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_counts(kind: str, cfg: SystemConfig, mcfg: ModelConfig) -> dict[str, int]:
    """Trainable parameters per part (per AP for the AP side) and codebook entries; float32 sizes in bytes."""
    model = meta_model(kind, cfg, mcfg)
    ap = model.aps[0]
    out: dict[str, int] = {
        "encoder_per_ap": _n(ap.encoder),
        "projector_per_ap": _n(ap.projector),
        "codebook_per_ap": mcfg.num_codes * mcfg.code_dim if kind == "dvqvae" else 0,
        "decoder": _n(model.cpu_side),
    }
    dec = model.cpu_side.decoder
    for name, child in dec.named_children():
        out[f"decoder.{name}"] = _n(child)
    out["ap_side_per_ap"] = out["encoder_per_ap"] + out["projector_per_ap"]
    out["total"] = cfg.n_rx * out["ap_side_per_ap"] + out["decoder"]
    out["ap_bytes_per_ap"] = 4 * (out["ap_side_per_ap"] + out["codebook_per_ap"])
    out["decoder_bytes"] = 4 * out["decoder"]
    return out


def macs_per_sample(kind: str, cfg: SystemConfig, mcfg: ModelConfig) -> dict[str, int]:
    """Multiply-accumulates per sample of the three online stages (paper Table III): ``encoder`` (one AP: front end
    excluded, convolutions), ``quantization`` (one AP: projector + distances to the Nc codewords), ``decoder``
    (:func:`decoder_macs`)."""
    model = meta_model(kind, cfg, mcfg)
    counts: dict[str, int] = {"encoder": 0, "quantization": 0, "decoder": 0}
    stage = {"name": "encoder"}

    def hook(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv3d):
            k = math.prod(mod.kernel_size) * mod.in_channels // mod.groups
            counts[stage["name"]] += out.numel() * k
        elif isinstance(mod, nn.Linear):
            counts[stage["name"]] += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv3d, nn.Linear))]
    try:
        ap = model.aps[0]
        fe = ap.front_end.output_shape
        v = torch.empty(1, *fe, device="meta")
        if ap.encoder is not None:
            h = ap.encoder(v)
            stage["name"] = "quantization"
            ap.projector(h.movedim(1, -1))
            if ap.quantizer is not None:
                counts["quantization"] += ap.latent_length * mcfg.num_codes * mcfg.code_dim
    finally:
        for h in handles:
            h.remove()
    counts["decoder"] = decoder_macs(kind, cfg, mcfg, model)
    return counts


def decoder_macs(kind: str, cfg: SystemConfig, mcfg: ModelConfig, model: SplitModel | None = None) -> int:
    """Multiply-accumulates per sample of the CPU decoder, counted by :class:`torch.utils.flop_counter.FlopCounterMode`
    (MACs = FLOPs / 2 of matrix products and convolutions) on one forward pass of M payloads [1, D, d1, d2, d3]
    float32 (and X [1, N, Nt, Ns, Ts] complex64). On the ``meta`` device (shapes only) for the paper's decoder and
    the CNN, whose count equals Table III's formula; the geometry decoder holds CPU constants (pixel grid, AP
    positions) and a data-dependent peak readout, so it runs once on CPU with random payloads (its parameters are
    small; the readout's top-Q, gathers and Q 2x2 least squares are not matrix products and add nothing)."""
    from torch.utils.flop_counter import FlopCounterMode

    if mcfg.decoder == "geometry":
        cpu = build_cpu_side(kind, cfg, mcfg)
        g = torch.Generator().manual_seed(0)
        payloads = [torch.randn(1, *cpu.payload_shape, generator=g) for _ in range(cfg.n_rx)]
        x = None
    else:
        cpu = (model if model is not None else meta_model(kind, cfg, mcfg)).cpu_side
        payloads = [torch.empty(1, *cpu.payload_shape, device="meta") for _ in range(cfg.n_rx)]
        x = None if kind == "cnn" else torch.empty(1, cfg.n_tx, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols,
                                                    dtype=torch.complex64, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        cpu(payloads, x)
    return int(counter.get_total_flops()) // 2


def summary_lines(kind: str, cfg: SystemConfig, mcfg: ModelConfig) -> list[str]:
    """Human-readable parameter counts and sizes."""
    c = parameter_counts(kind, cfg, mcfg)
    lines = [f"{kind}: {c['total']:,} trainable parameters ({4 * c['total'] / 1e6:.1f} MB float32)"]
    if c["encoder_per_ap"]:
        lines.append(f"  per receive AP: encoder {c['encoder_per_ap']:,} + projector {c['projector_per_ap']:,}"
                     f" + codebook {c['codebook_per_ap']:,} entries = {c['ap_bytes_per_ap'] / 1e6:.2f} MB")
    lines.append(f"  CPU decoder: {c['decoder']:,} ({c['decoder_bytes'] / 1e6:.1f} MB): " + ", ".join(
        f"{k.split('.', 1)[1]} {v:,}" for k, v in c.items() if k.startswith("decoder.") and v))
    return lines
