"""Section V-C: fronthaul bits per receive AP per update of every scheme (the numbers of Section III-D).

Two blocks: ``preset`` (this run's system and model presets: the bits behind the other figures) and ``paper``
(the paper's Table I / Table II system, where Section V-C reports 96Q = 192 bit for the fully distributed schemes,
64 Mr Ns Ts = 67 Mbit for the centralized one, Nb L = 82 kbit for the D-VQVAE and a 99 % reduction). Learned schemes
are counted from the message their AP side emits (:func:`cfisac.fronthaul.learned_bits`, no model is allocated);
classical estimators report ``fronthaul_bits_per_ap`` themselves. Front ends that need the transmit signals at the
receive AP (the physics-aware front ends) also need a CPU -> receive AP downlink of X, listed in its own column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import SystemConfig
from .common import Context
from .scheme import Scheme, scheme_label
from .store import Point

NAME = "fronthaul"
TITLE = "Section V-C: fronthaul bits per receive AP per update"
PAPER_BITS = {"music": 192, "cs": 192, "cnn": 67_108_864, "dvqvae": 81_920}
PAPER = ("Fully distributed 96Q = 192 bit; centralized 64 Mr Ns Ts = 67 Mbit; D-VQVAE Nb L = 82 kbit (L = 16384, "
         "Nb = 5): a 99 % reduction with respect to the centralized scheme.")
FORMULA = {"music": "96 Q", "cs": "96 Q", "ml": "estimator's message", "monostatic": "local (no fronthaul)",
           "cnn": "64 Mr Ns Ts (raw Y_m)", "dvae": "32 D L", "dvqvae": "Nb L", "prior": "0"}


def _schemes(ctx: Context) -> list[str]:
    out = [*ctx.budget.classical, *ctx.budget.learned]
    for s in ("cnn", "dvae", "dvqvae"):
        if s not in out:
            out.append(s)
    return out


def count(ctx: Context, scheme: str, cfg: SystemConfig, model_preset: str) -> dict[str, Any]:
    from .. import estimators
    from ..fronthaul import centralized_bits, learned_bits, transmit_signal_bits
    from ..models import model_front_end
    from ..models.config import ModelConfig

    s = Scheme.parse(scheme)
    central = centralized_bits(cfg)
    down = 0
    if s.learned:
        mcfg = ModelConfig.preset(model_preset, **s.model_options())
        bits = learned_bits(s.kind, cfg, mcfg)
        if model_front_end(cfg, mcfg).needs_x:
            down = transmit_signal_bits(cfg)
    elif scheme == "monostatic":
        bits = 0
    else:
        bits = estimators.create(scheme, cfg).fronthaul_bits_per_ap
    return {"fronthaul_bits_per_ap": float(bits),
            "metrics": {"reduction_vs_centralized": 1.0 - bits / central, "downlink_bits_per_ap": down,
                        "formula": FORMULA.get(s.kind, ""), "centralized_bits": central}}


def points(ctx: Context) -> list[Point]:
    blocks = [("preset", ctx.base_cfg, ctx.budget.model_preset)]
    if ctx.preset != "paper":
        blocks.append(("paper", SystemConfig.preset("paper"), "paper"))
    pts = []
    for series, cfg, mp in blocks:
        for k, scheme in enumerate(_schemes(ctx)):
            if series == "paper" and scheme in ("ml",):  # keep the paper block to the paper's schemes
                continue
            pts.append(Point(key=f"{series}|scheme={scheme}", scheme=scheme, series=series, x_name="scheme",
                             x_value=float(k), cfg=cfg, seed=ctx.seed, spec={"model_preset": mp},
                             run=lambda s=scheme, c=cfg, m=mp: count(ctx, s, c, m)))
    return pts


def figures(ctx: Context, rows: list[dict[str, Any]]) -> list[Path]:
    return []


def table(ctx: Context, rows: list[dict[str, Any]]) -> list[str]:
    from ..fronthaul import format_bits
    from .report import _md_table

    body = []
    for r in sorted(rows, key=lambda r: (r["series"] != "preset", r["x_value"])):
        m = r["metrics"]
        bits = r["fronthaul_bits_per_ap"]
        paper = PAPER_BITS.get(r["scheme"]) if r["series"] == "paper" else None
        verdict = "" if paper is None else "matches" if int(bits) == paper else "DIFFERS"
        body.append((r["series"] if r["series"] == "paper" else ctx.preset, scheme_label(r["scheme"]),
                     m.get("formula", ""), f"{format_bits(bits)} ({int(bits):,})",
                     _reduction(m.get("reduction_vs_centralized", 0.0), bits),
                     format_bits(m["downlink_bits_per_ap"]) if m.get("downlink_bits_per_ap") else "–",
                     "–" if paper is None else f"{format_bits(paper)} ({verdict})"))
    return _md_table(("system", "scheme", "formula", "bits per AP per update", "less than centralized",
                      "downlink of X per AP", "paper (Section V-C)"), body)


def _reduction(red: float, bits: float) -> str:
    if bits == 0:
        return "n/a (nothing sent)"
    if red < 0:
        return f"none: {1 - red:.3g}x the centralized bits"
    return f"{100 * red:.4f} %" if red > 0.9999 else f"{100 * red:.2f} %"


def discussion(ctx: Context, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"- **Paper:** {PAPER}"]
    paper = {r["scheme"]: r for r in rows if r["series"] == "paper"}
    checks = [(s, int(paper[s]["fronthaul_bits_per_ap"]), b) for s, b in PAPER_BITS.items() if s in paper]
    if checks:
        ok = all(a == b for _, a, b in checks)
        lines.append("- **Ours at the paper's system:** " + ", ".join(f"{s} {a:,} bit" for s, a, _ in checks)
                     + (": every number of Section V-C reproduced exactly." if ok else ": DIFFERS from the paper."))
        if "dvqvae" in paper:
            red = paper["dvqvae"]["metrics"]["reduction_vs_centralized"]
            lines.append(f"- D-VQVAE reduction vs centralized: {100 * red:.2f} % (paper: 99 %).")
    if "music" in paper:
        lines.append("- The fully distributed count is the paper's 96Q (angle, range, radial velocity per target); "
                     "our MUSIC / CS implementations actually need an AoA plus one bistatic range and Doppler per "
                     "transmit AP, 32 (1 + 2N) Q bits (see `cfisac.estimators.music`).")
    return lines
