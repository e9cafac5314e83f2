"""Parameter counts, model sizes and multiply-accumulate counts of the learned schemes, computed on the ``meta``
device (shapes only: nothing of the paper's scale is allocated)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import SystemConfig
from .config import ModelConfig
from .split import SplitModel, build_model

__all__ = ["macs_per_sample", "meta_model", "parameter_counts", "summary_lines"]


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
    excluded, convolutions), ``quantization`` (one AP: projector + distances to the Nc codewords), ``decoder``."""
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
        stage["name"] = "decoder"
        payloads = [torch.empty(1, *model.cpu_side.payload_shape, device="meta") for _ in range(cfg.n_rx)]
        if kind == "cnn":
            model.cpu_side(payloads, None)
        else:
            dec = model.cpu_side.decoder
            z = dec.res(torch.cat(payloads, 1))
            dec.fc_cpu(z.flatten(1))
            t = dec.tx_encoder(torch.empty(1, 2, *dec.tx_front.spatial_shape, device="meta"))
            dec.fc_tx(t.flatten(1))
            dec.out(dec.fc(torch.empty(1, mcfg.fc_cpu + mcfg.fc_tx, device="meta")))
    finally:
        for h in handles:
            h.remove()
    return counts


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
