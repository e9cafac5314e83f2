"""Benchmarks of the learned schemes (D-VQVAE, D-VAE, CNN centralized) on this machine.

Parts (``--parts``, comma-separated):

- ``sizes``: parameter counts, model sizes and multiply-accumulates per sample (meta device) at the paper and quick
  presets, against the paper's 1.2 M per encoder and 206 M for the decoder; fronthaul figures.
- ``throughput``: training samples per second at the quick preset (one Algorithm 1 step on a pre-simulated batch;
  the on-the-fly simulation alone; both together).
- ``latency``: online latency per stage (paper Table III: encoder, quantization, decoder) of an untrained D-VQVAE
  at the quick preset (batch 20, the paper's B) and at Table III's three settings with the paper model (batch 1 on
  CPU: the paper's B = 20 does not fit a sensible CPU time budget at 0.5 TMAC per decoded sample).
- ``accuracy``: each scheme trained at the quick preset, P = 30 dBm, for a fixed wall-clock budget (``--minutes``,
  default 10) with the paper's learning rate, then evaluated on ``--n-test`` held-out scenes (seed 1) with the prior
  predictor and the root-CRLB of the same scenes.

Prints Markdown; ``--json`` also writes the raw numbers. Example:
``.venv/bin/python benchmarks/bench_learned.py --parts sizes,throughput,latency --threads 2``
``.venv/bin/python benchmarks/bench_learned.py --parts accuracy --kinds dvqvae,dvae,cnn --minutes 10``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import cfisac
from cfisac.data import simulate_batch
from cfisac.fronthaul import format_bits, fronthaul_table
from cfisac.models import LabelNormaliser, ModelConfig, build_model, macs_per_sample, parameter_counts
from cfisac.quantize import pack_index_batch, unpack_index_batch
from cfisac.train import ApTrainer, CpuTrainer, train_step


def header(args: argparse.Namespace) -> list[str]:
    return [
        f"- command: `.venv/bin/python benchmarks/bench_learned.py {' '.join(args.argv)}`",
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        "shared by several agents, so it may have been loaded while measuring",
    ]


def part_sizes() -> tuple[list[str], dict[str, Any]]:
    lines = ["## Sizes (meta device, nothing allocated)", "",
             "| preset | scheme | encoder + projector per AP | codebook | per-AP size | decoder | decoder size | "
             "MAC encoder | MAC quantization | MAC decoder |", "|---|---|---|---|---|---|---|---|---|---|"]
    raw: dict[str, Any] = {}
    for preset in ("paper", "quick"):
        cfg, mcfg = cfisac.SystemConfig.preset(preset), ModelConfig.preset(preset)
        for kind in ("dvqvae", "dvae", "cnn"):
            c, m = parameter_counts(kind, cfg, mcfg), macs_per_sample(kind, cfg, mcfg)
            raw[f"{preset}/{kind}"] = {"params": c, "macs": m}
            lines.append(
                f"| {preset} | {kind} | {c['ap_side_per_ap']:,} | {c['codebook_per_ap']:,} | "
                f"{c['ap_bytes_per_ap'] / 1e6:.2f} MB | {c['decoder']:,} | {c['decoder_bytes'] / 1e6:.0f} MB | "
                f"{m['encoder'] / 1e9:.3g} G | {m['quantization'] / 1e9:.3g} G | {m['decoder'] / 1e9:.3g} G |")
    lines += ["", "Fronthaul per receive AP and update (paper preset, Table II):", ""]
    for r in fronthaul_table(cfisac.SystemConfig.preset("paper")):
        lines.append(f"- {r.line()}")
    lines += ["", "Quick preset (quick model):", ""]
    for r in fronthaul_table(cfisac.SystemConfig.preset("quick"), ModelConfig.preset("quick")):
        lines.append(f"- {r.line()}")
    return lines, raw


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def part_throughput(batch: int, steps: int) -> tuple[list[str], dict[str, Any]]:
    cfg, mcfg = cfisac.SystemConfig.preset("quick"), ModelConfig.preset("quick")
    t = time.perf_counter()
    b = simulate_batch(cfg, 0, range(batch))
    sim = (time.perf_counter() - t) / batch
    norm = LabelNormaliser.fit(b["labels"])
    target = norm.normalise(b["labels"])
    lines = [f"## Training throughput (quick preset, batch {batch}, {steps} timed steps)", "",
             "| scheme | model step (samples/s) | simulation (samples/s) | end to end (samples/s) |",
             "|---|---|---|---|"]
    raw = {"simulation_s_per_sample": sim}
    for kind in ("dvqvae", "dvae", "cnn"):
        model = build_model(kind, cfg, mcfg, seed=0)
        aps = [ApTrainer(ap, lr=1e-4) for ap in model.aps]
        cpu = CpuTrainer(model.cpu_side, lr=1e-4)
        step = _time(lambda: train_step(aps, cpu, b["y"], b["x"], target), steps) / batch  # noqa: B023
        raw[kind] = {"step_s_per_sample": step}
        lines.append(f"| {kind} | {1 / step:.0f} | {1 / sim:.0f} | {1 / (step + sim):.0f} |")
    return lines, raw


def _stage_times(cfg: cfisac.SystemConfig, mcfg: ModelConfig, batch: int, reps: int,
                 decoder: bool = True) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model("dvqvae", cfg, mcfg, seed=0).eval()
    model.sync_codebooks()
    b = simulate_batch(cfg, 0, range(batch))
    ap = model.aps[0]
    y0 = b["y"][:, 0]
    out: dict[str, float] = {}
    with torch.no_grad():
        h = ap.encoder(ap.front_end(y0))
        out["encoder"] = _time(lambda: ap.encoder(ap.front_end(y0)), reps)

        def quantize() -> list[bytes]:
            z = ap.projector(h.movedim(1, -1))
            return pack_index_batch(ap.quantizer.nearest(z).reshape(batch, -1), num_codes=mcfg.num_codes)

        out["quantization"] = _time(quantize, reps)
        if decoder:
            msgs = [quantize() for _ in range(cfg.n_rx)]

            def decode() -> torch.Tensor:
                feats = [model.cpu_side.dequantize(m, unpack_index_batch(msgs[m], length=ap.latent_length,
                                                                          num_codes=mcfg.num_codes))
                         for m in range(cfg.n_rx)]
                return model.cpu_side(feats, b["x"])

            out["decoder"] = _time(decode, reps)
    return out


def part_latency(reps: int, table3: bool, table3_decoder: str) -> tuple[list[str], dict[str, Any]]:
    lines = ["## Online latency per stage (D-VQVAE, untrained weights, median)", "",
             "Encoder: front end + convolutions of one AP; quantization: projector + nearest codeword + bit packing "
             "of one AP; decoder: unpacking + dequantization of all M APs + decoder. Paper Table III (RTX 3070 "
             "GPU, B = 20): 6.75 / 2.51 / 23.89 ms, 2.25 / 1.34 / 5.03 ms, 1.59 / 1.15 / 2.42 ms.", "",
             "| setting | model | batch | encoder | quantization | decoder | MAC/sample enc / quant / dec |",
             "|---|---|---|---|---|---|---|"]
    raw: dict[str, Any] = {}
    cfg, mcfg = cfisac.SystemConfig.preset("quick"), ModelConfig.preset("quick")
    t = _stage_times(cfg, mcfg, 20, reps)
    m = macs_per_sample("dvqvae", cfg, mcfg)
    raw["quick"] = {"batch": 20, "seconds": t, "macs": m}
    lines.append(_latency_row("quick preset (Mr=16, Ns=64, Ts=16)", "quick", 20, t, m))
    if table3:
        paper = cfisac.SystemConfig.preset("paper")
        settings = [("Nt=Mr=16, Ns=Ts=256", paper),
                    ("Nt=Mr=8, Ns=Ts=256", paper.replace(n_tx_antennas=8, n_rx_antennas=8)),
                    ("Nt=Mr=8, Ns=Ts=128", paper.replace(n_tx_antennas=8, n_rx_antennas=8, n_subcarriers=128,
                                                          n_symbols=128))]
        for k, (name, c) in enumerate(settings):
            pm = ModelConfig.preset("paper")
            dec = table3_decoder == "all" or (table3_decoder == "small" and k == 2)
            t = _stage_times(c, pm, 1, max(1, reps // 5), decoder=dec)
            m = macs_per_sample("dvqvae", c, pm)
            raw[name] = {"batch": 1, "seconds": t, "macs": m}
            lines.append(_latency_row(f"Table III: {name}", "paper", 1, t, m))
    return lines, raw


def _latency_row(name: str, model: str, batch: int, t: dict[str, float], m: dict[str, int]) -> str:
    ms = lambda k: f"{1e3 * t[k]:.2f} ms" if k in t else "not timed"  # noqa: E731
    return (f"| {name} | {model} | {batch} | {ms('encoder')} | {ms('quantization')} | {ms('decoder')} | "
            f"{m['encoder'] / 1e9:.3g} / {m['quantization'] / 1e9:.3g} / {m['decoder'] / 1e9:.3g} G |")


def part_accuracy(kinds: list[str], minutes: float, n_test: int, lr: float, out_root: Path,
                  n_train: int) -> tuple[list[str], dict[str, Any]]:
    from cfisac.estimators import create
    from cfisac.experiments.evaluation import evaluate, write_results
    from cfisac.train import NORMALISER_MAX_SAMPLES, DataSource, TrainConfig, train

    cfg, mcfg = cfisac.SystemConfig.preset("quick"), ModelConfig.preset("quick")
    lines = [f"## Accuracy after {minutes:g} minutes of training (quick preset, P = {cfg.power_dbm:g} dBm, "
             f"lr {lr:g}, batch 32, {n_train} training scenes on the fly; {n_test} test scenes, seed 1)", "",
             "| scheme | epochs | training samples | position RMSE (m) | velocity RMSE (m/s) | prior (m, m/s) | "
             "training mean (m, m/s) | root-CRLB (m, m/s) | perplexity | fronthaul / AP |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    raw: dict[str, Any] = {}
    for kind in kinds:
        out = out_root / kind
        tcfg = TrainConfig(kind=kind, epochs=1000, batch_size=32, lr=lr, n_train=n_train, n_val=200, seed=0,
                           minutes=minutes)
        res = train(cfg, mcfg, tcfg, out, resume=(out / "latest.json").is_file(), progress=False)
        est = create(kind, cfg, checkpoint=str(out))
        mean_label = DataSource(cfg, 0, n_train).labels(NORMALISER_MAX_SAMPLES).mean(0)
        ev = evaluate(est, cfg, n_test=n_test, seed=1, with_crlb=True, mean_label=mean_label)
        write_results(out / "eval-seed1.json", ev)
        last = res.history[-1] if res.history else {}
        raw[kind] = {"history": res.history, "eval": {k: v for k, v in ev.items() if not k.endswith("_errors")}}
        crlb = ev["root_crlb"]
        crlb_s = f"{crlb['position']:.3g}, {crlb['velocity']:.3g}" if isinstance(crlb, dict) else "TODO"
        perp = f"{last.get('perplexity', float('nan')):.1f}" if kind == "dvqvae" else "-"
        lines.append(
            f"| {kind} | {last.get('epoch', 0):.2f} | {last.get('samples', 0):,} | {ev['position_rmse']:.2f} | "
            f"{ev['velocity_rmse']:.2f} | {ev['prior']['position_rmse']:.2f}, {ev['prior']['velocity_rmse']:.2f} | "
            f"{ev['training_mean']['position_rmse']:.2f}, {ev['training_mean']['velocity_rmse']:.2f} | "
            f"{crlb_s} | {perp} | {format_bits(ev['fronthaul_bits_per_ap'])} |")
    return lines, raw


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="sizes,throughput,latency")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--table3", action="store_true", help="also time Table III's settings with the paper model")
    p.add_argument("--table3-decoder", choices=("none", "small", "all"), default="small",
                   help="which Table III settings also time the paper-scale decoder (0.06-0.5 TMAC per sample)")
    p.add_argument("--kinds", default="dvqvae,dvae,cnn")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--n-train", type=int, default=16_000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--out", type=Path, default=Path("runs/bench-learned"))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.argv = argv
    torch.set_num_threads(args.threads)
    lines = ["# Learned schemes benchmark", "", *header(args), ""]
    raw: dict[str, Any] = {}
    for part in args.parts.split(","):
        if part == "sizes":
            ls, r = part_sizes()
        elif part == "throughput":
            ls, r = part_throughput(args.batch, args.steps)
        elif part == "latency":
            ls, r = part_latency(args.reps, args.table3, args.table3_decoder)
        elif part == "accuracy":
            ls, r = part_accuracy(args.kinds.split(","), args.minutes, args.n_test, args.lr, args.out, args.n_train)
        else:
            raise SystemExit(f"unknown part {part!r}")
        raw[part] = r
        lines += [*ls, ""]
        print("\n".join(ls) + "\n", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(raw, indent=1, default=lambda o: None if isinstance(o, float) and
                                        not math.isfinite(o) else str(o)))
    print("\n".join(lines[:5]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
