"""Table III: online execution runtime per stage of the D-VQVAE (encoder, quantization, decoder), batch of 20.

Three settings as the paper's (Nt = Mr = 16, Ns = Ts = 256; Nt = Mr = 8, Ns = Ts = 256; Nt = Mr = 8,
Ns = Ts = 128) at the ``paper`` preset; at the CPU presets the same three steps from the preset's grid (full
antennas; half the antennas; half the antennas and half the subcarriers and symbols). Runtime does not depend on
the weights, so untrained models of the preset's size are timed (Algorithm 2 path): encoder = front end + 3D-CNN
encoder + projector Phi_vq of one receive AP; quantization = nearest codeword (Eq. 15) + bit packing of one AP's
message; decoder = unpacking, dequantization and the decoder at the CPU for all M APs. Median of repeated runs after
warm-up, in milliseconds per batch, on this run's device.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..config import SystemConfig
from .common import Context
from .store import Point

NAME = "table3"
TITLE = "Table III: online execution runtime of the D-VQVAE per stage"
PAPER_MS = {0: (6.75, 2.51, 23.89), 1: (2.25, 1.34, 5.03), 2: (1.59, 1.15, 2.42)}
PAPER_SETTINGS = ("Nt = Mr = 16, Ns = Ts = 256", "Nt = Mr = 8, Ns = Ts = 256", "Nt = Mr = 8, Ns = Ts = 128")
BATCH = {"tiny": 4, "quick": 20, "paper": 20}
REPEATS = {"tiny": 2, "quick": 7, "paper": 20}
PAPER = ("RTX 3070 GPU: encoder 6.75 / 2.25 / 1.59 ms, quantization 2.51 / 1.34 / 1.15 ms, decoder 23.89 / 5.03 / "
         "2.42 ms for the three settings: a few ms at each receive AP.")


def settings(ctx: Context) -> list[SystemConfig]:
    c = ctx.base_cfg
    full = c.replace(n_tx_antennas=c.n_rx_antennas) if c.n_tx_antennas != c.n_rx_antennas else c
    half_ant = max(2, c.n_rx_antennas // 2)
    if ctx.preset == "tiny":  # tiny's 4 antennas cannot be halved under 2 stride-2 layers: double instead
        full = c.replace(n_tx_antennas=8, n_rx_antennas=8)
        half_ant = 4
    second = full.replace(n_tx_antennas=half_ant, n_rx_antennas=half_ant)
    third = second.replace(n_subcarriers=c.n_subcarriers // 2, n_symbols=max(4, c.n_symbols // 2))
    return [full, second, third]


def _label(cfg: SystemConfig) -> str:
    return f"Nt = Mr = {cfg.n_rx_antennas}, Ns = {cfg.n_subcarriers}, Ts = {cfg.n_symbols}"


def _time(fn, repeats: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(out)


def measure(ctx: Context, cfg: SystemConfig) -> dict[str, Any]:
    """Milliseconds per batch of each stage (see the module docstring) and the model's sizes."""
    from ..data import simulate_batch
    from ..models import build_model, parameter_counts
    from ..quantize import pack_index_batch
    from .learned import model_config

    device = torch.device(ctx.device)
    mcfg = model_config(ctx, "dvqvae")
    model = build_model("dvqvae", cfg, mcfg, seed=ctx.seed).to(device).eval()
    model.sync_codebooks()
    b = simulate_batch(cfg, ctx.seed, range(BATCH[ctx.preset]))
    y, x = b["y"].to(device), b["x"].to(device)
    ap = model.aps[0]
    reps = REPEATS[ctx.preset]
    with torch.no_grad():
        z = ap.continuous(y[:, 0], x)
        enc = _time(lambda: ap.continuous(y[:, 0], x), reps, device)
        quant = _time(lambda: pack_index_batch(ap.quantizer.nearest(z).reshape(z.shape[0], -1),
                                               num_codes=ap.num_codes), reps, device)
        messages = model.encode(y, x)
        dec = _time(lambda: model.decode(messages, x), reps, device)
    try:
        counts = parameter_counts("dvqvae", cfg, mcfg)
    except Exception:  # noqa: BLE001 - sizes are informative only
        counts = {}
    return {"n_scenes": BATCH[ctx.preset], "fronthaul_bits_per_ap": float(model.fronthaul_bits_per_ap),
            "metrics": {"encoder_ms": enc, "quantization_ms": quant, "decoder_ms": dec, "batch": BATCH[ctx.preset],
                        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                        "threads": torch.get_num_threads(), "setting": _label(cfg),
                        "parameters": {k: int(v) for k, v in counts.items() if isinstance(v, (int, float))}}}


def points(ctx: Context) -> list[Point]:
    pts = []
    for k, cfg in enumerate(settings(ctx)):
        pts.append(Point(key=f"setting={k}", scheme="dvqvae", x_name="setting", x_value=float(k), cfg=cfg,
                         seed=ctx.seed, spec={"batch": BATCH[ctx.preset], "device": ctx.device,
                                              "model": ctx.budget.model_preset},
                         run=lambda cfg=cfg: measure(ctx, cfg)))
    return pts


def figures(ctx: Context, rows: list[dict[str, Any]]) -> list[Path]:
    return []


def table(ctx: Context, rows: list[dict[str, Any]]) -> list[str]:
    from .report import _md_table, _num

    body = []
    for r in sorted(rows, key=lambda r: r["x_value"]):
        m, k = r["metrics"], int(r["x_value"])
        p = PAPER_MS.get(k, (float("nan"),) * 3)
        body.append((m.get("setting", ""), _num(m.get("encoder_ms")), _num(m.get("quantization_ms")),
                     _num(m.get("decoder_ms")), f"{PAPER_SETTINGS[k] if k < 3 else ''}: {p[0]} / {p[1]} / {p[2]}",
                     f"{m.get('device', '')}, {m.get('threads', '')} threads, B = {m.get('batch', '')}"))
    return _md_table(("setting (ours)", "encoder (ms)", "quantization (ms)", "decoder (ms)",
                      "paper setting: enc / quant / dec (ms)", "hardware"), body)


def discussion(ctx: Context, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"- **Paper:** {PAPER}"]
    if rows:
        order = sorted(rows, key=lambda r: r["x_value"])
        enc = [r["metrics"].get("encoder_ms", float("nan")) for r in order]
        lines.append(f"- **Ours:** encoder {' / '.join(f'{v:.3g}' for v in enc)} ms for our three settings on "
                     f"{order[0]['metrics'].get('device')}. The ordering of the settings "
                     f"{'matches' if enc == sorted(enc, reverse=True) else 'does not match'} the paper's "
                     f"(smaller arrays and grids run faster). Absolute numbers are not comparable unless the "
                     f"preset is `paper` on a GPU like the paper's RTX 3070.")
    return lines
