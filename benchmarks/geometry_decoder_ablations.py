"""Ablation helpers of the geometry-aware CPU decoder (``benchmarks/results/geometry_decoder.md``).

``--fit RUN.pt``: the trained model of a ``bench_geometry_decoder.py --train --save`` run evaluated (Algorithm 2,
bit-packed messages) on the first ``--n`` training scenes it saw and on the first ``--n`` test scenes: a gap
says the cached scenes were over-fitted (an on-line run on fresh scenes would then do better at equal steps).

``--online-cost``: seconds of one on-line step's data (simulate a batch of ``--batch-size`` fresh scenes and both
receive APs' ``image`` front ends), one torch thread: what each step would cost on top of the cached step.

``--velocity RUN.pt``: the anatomy of the errors on the test scenes. Position: the misses (> 10 m) split into
duplicates (both peaks on one target) and ghosts, by the targets' separation. Velocity, read at the true positions (no
position error): the per-pair bistatic errors |b_hat - u_nm . v| (RMSE and quantiles), the v_x / v_y split, the
error the ridge alone leaves with the true b, and the velocity RMSE the same least squares gives with the true b plus
Gaussian errors of sigma per pair (the bistatic precision a target velocity RMSE needs, at these geometries).

``--readout RUN.pt``: readout variants on the trained model without retraining, on the test scenes: the misses with
a larger non-maximum suppression (5 x 5, 7 x 7), with the ``--candidates`` largest peaks re-ranked by the bistatic
least squares' consistency (heat - lambda chi^2), the share of targets within 10 m of one of the top k peaks, and a
learned selection of Q = 2 of the top ``--candidates`` peaks (an MLP over the candidates' features: heat, position,
offset, bistatic velocities and weights, least-squares residual, the per-AP and fused map channels at the peak),
trained on ``--fresh`` freshly simulated scenes (dataset seed 2) by the cross entropy against the pair with the
smallest assigned error (the oracle pair).

``--mirror-check RUN.pt``: the mirror symmetry behind ``bench_geometry_decoder.py --mirror`` (mean features of the
test scenes against their mirrors; the model on mirrored scenes with mirrored and with unmirrored labels).

``--plot RESULTS.jsonl ... --out FIG.png``: learning curves (test-200 position and velocity RMSE against steps and
against CPU seconds of the training steps, where recorded) of the rows of ``bench_geometry_decoder.py`` results.

    .venv/bin/python benchmarks/geometry_decoder_ablations.py --fit runs/geodec/velw4.pt
    .venv/bin/python benchmarks/geometry_decoder_ablations.py --online-cost
    .venv/bin/python benchmarks/geometry_decoder_ablations.py --velocity runs/geodec/s8_b8.pt
    .venv/bin/python benchmarks/geometry_decoder_ablations.py --readout runs/geodec/s8_b8.pt
    .venv/bin/python benchmarks/geometry_decoder_ablations.py --mirror-check runs/geodec/s8_b8.pt
    .venv/bin/python benchmarks/geometry_decoder_ablations.py --plot runs/geodec/s3.jsonl \\
        --out benchmarks/results/geometry_decoder_curves.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import cfisac

sys.path.insert(0, str(Path(__file__).parent))


def load_run(path: Path, cfg: cfisac.SystemConfig) -> Any:
    """The model of a saved run (``{"model": ModelConfig dict, "state": state dict}``), front ends = identity."""
    from bench_front_ends import CachedFrontEnd
    from cfisac.models import ModelConfig, build_model

    blob = torch.load(path, weights_only=False)
    mcfg = ModelConfig.from_dict(blob["model"])
    # a --kind dvae run has no quantizer state (continuous latents)
    kind = "dvqvae" if any(".quantizer." in k for k in blob["state"]) else "dvae"
    model = build_model(kind, cfg, mcfg, seed=0)
    for ap in model.aps:
        ap.front_end = CachedFrontEnd()
    missing, unexpected = model.load_state_dict(blob["state"], strict=False)
    if unexpected or any("front_end" not in k for k in missing):
        raise ValueError(f"state of {path} does not fit: missing {missing}, unexpected {unexpected}")
    return model


def fit_gap(args: argparse.Namespace) -> dict[str, Any]:
    from bench_geometry_decoder import _load, _scenes, diagnose

    cfg = cfisac.SystemConfig.preset(args.preset, power_dbm=args.power_dbm)
    model = load_run(args.fit, cfg)
    ns = argparse.Namespace(feature_dir=args.feature_dir, preset=args.preset, power_dbm=args.power_dbm)
    row: dict[str, Any] = {"run": str(args.fit), "n": args.n, "load": os.getloadavg()}
    for split, seed, n_file in (("train", 0, args.n_train), ("test", 1, 500)):
        feats, done = _load(ns, split, seed, n_file)
        k = min(args.n, done)
        pos, vel = _scenes(cfg, seed, k)
        d = diagnose(model, feats[:k], pos, vel)
        row[split] = {key: d[key] for key in ("position_rmse", "velocity_rmse", "missed_share",
                                              "position_rmse_detected", "velocity_rmse_at_true_positions")}
    print(json.dumps(row), flush=True)
    return row


def velocity_anatomy(args: argparse.Namespace) -> dict[str, Any]:
    from bench_geometry_decoder import _load, _scenes
    from cfisac.models.geometry_decoder import _gather_maps, _pixel_of, bistatic_directions, velocity_least_squares

    cfg = cfisac.SystemConfig.preset(args.preset, power_dbm=args.power_dbm)
    model = load_run(args.velocity, cfg)
    ns = argparse.Namespace(feature_dir=args.feature_dir, preset=args.preset, power_dbm=args.power_dbm)
    feats, done = _load(ns, "test", 1, 500)
    k = min(args.n, done)
    pos, vel = _scenes(cfg, 1, k)
    dec = model.cpu_side.decoder
    model.sync_codebooks()
    model.eval()
    b_hat, w_hat, p_hat = [], [], []
    with torch.no_grad():
        for lo in range(0, k, 100):
            f = feats[lo:min(k, lo + 100)].float()
            maps = dec.maps(model.cpu_side.payloads_from_messages([ap.encode(f[:, m]) for m, ap in
                                                                   enumerate(model.aps)]))
            p_hat.append(dec.readout(maps)[0].double())
            i, j = _pixel_of(pos[lo:lo + 100].to(dec.pixel_x.dtype), dec.pixel_x, dec.pixel_y)
            flat = i * dec.map_shape[1] + j
            b_hat.append(_gather_maps(maps["bistatic"], flat).double())
            w_hat.append(torch.nn.functional.softplus(_gather_maps(maps["log_weight"], flat).double()) + 1e-3)
    b_hat, w_hat = torch.cat(b_hat), torch.cat(w_hat)  # [k, Q, P]
    u = bistatic_directions(pos.double(), dec.tx_positions, dec.rx_positions)  # [k, Q, P, 2]
    b_true = (u * vel[..., None, :]).sum(-1)
    ridge = 3.0 / dec.max_speed**2
    err_b = (b_hat - b_true).abs()
    v_model = velocity_least_squares(u, b_hat, w_hat, ridge=ridge)

    def rmse(e: torch.Tensor) -> float:
        return float(e.square().mean().sqrt())

    row: dict[str, Any] = {
        "run": str(args.velocity), "n": k,
        "bistatic_rmse_per_pair": [round(rmse(err_b[..., p]), 3) for p in range(err_b.shape[-1])],
        "bistatic_true_rms_per_pair": [round(rmse(b_true[..., p]), 3) for p in range(b_true.shape[-1])],
        "bistatic_abs_quantiles_50_90_99": [round(float(err_b.flatten().quantile(q)), 3) for q in (0.5, 0.9, 0.99)],
        "velocity_rmse": rmse(torch.linalg.vector_norm(v_model - vel, dim=-1)),
        "velocity_rmse_x_y": [rmse(v_model[..., 0] - vel[..., 0]), rmse(v_model[..., 1] - vel[..., 1])],
        "velocity_rmse_true_b_ridge_only": rmse(torch.linalg.vector_norm(
            velocity_least_squares(u, b_true, torch.ones_like(b_true), ridge=ridge) - vel, dim=-1)),
    }
    # the misses (> 10 m after the Hungarian assignment): a duplicate (the estimate given to the missed target lies
    # within 10 m of the other target, i.e. both peaks on one target) or a ghost (far from both); the separation
    # of the scene's targets
    from cfisac.metrics import assign_targets

    p_hat = torch.cat(p_hat)
    perm = assign_targets(p_hat, pos)
    p_hat = p_hat.gather(1, perm[..., None].expand(-1, -1, 2))
    err_p = torch.linalg.vector_norm(p_hat - pos, dim=-1)  # [k, Q]
    missed = err_p > 10.0
    other = pos.flip(1)  # Q = 2: the other target
    near_other = torch.linalg.vector_norm(p_hat - other, dim=-1) <= 10.0
    sep = torch.linalg.vector_norm(pos[:, 0] - pos[:, 1], dim=-1)[:, None].expand_as(err_p)
    row["missed_share"] = float(missed.double().mean())
    row["missed_duplicates"] = int((missed & near_other).sum())
    row["missed_ghosts"] = int((missed & ~near_other).sum())
    bands = {f"{lo:g}-{hi:g} m": (sep >= lo) & (sep < hi) for lo, hi in ((0, 10), (10, 20), (20, 40), (40, 200))}
    row["missed_by_separation"] = {k: f"{int((missed & v).sum())} of {int(v.sum())}" for k, v in bands.items()}
    row["missed_error_rms"] = float(err_p[missed].square().mean().sqrt()) if missed.any() else 0.0
    # robust least squares on the learned maps: Cauchy IRLS (c = 4 m/s, 10 iterations), the best 3 of the 4 pairs by
    # weighted residual, and an oracle dropping the pair with the largest true error
    ww = w_hat.clone()
    for _ in range(10):
        r = (u * velocity_least_squares(u, b_hat, ww, ridge=ridge)[..., None, :]).sum(-1) - b_hat
        ww = w_hat / (1 + (r / 4.0) ** 2)
    row["velocity_rmse_cauchy_irls"] = rmse(torch.linalg.vector_norm(
        velocity_least_squares(u, b_hat, ww, ridge=ridge) - vel, dim=-1))
    drops, resid = [], []
    for p in range(b_hat.shape[-1]):
        keep = torch.ones(b_hat.shape[-1], dtype=torch.float64)
        keep[p] = 0.0
        v = velocity_least_squares(u, b_hat, w_hat * keep, ridge=ridge)
        drops.append(v)
        resid.append((((u * v[..., None, :]).sum(-1) - b_hat) ** 2 * w_hat * keep).sum(-1))
    drops = torch.stack(drops, -2)  # [k, Q, P, 2]

    def pick(which: torch.Tensor) -> torch.Tensor:
        return drops.gather(-2, which[..., None, None].expand(-1, -1, 1, 2))[..., 0, :]

    row["velocity_rmse_best_3_of_4"] = rmse(torch.linalg.vector_norm(pick(torch.stack(resid, -1).argmin(-1)) - vel,
                                                                     dim=-1))
    row["velocity_rmse_oracle_drop_worst"] = rmse(torch.linalg.vector_norm(pick(err_b.argmax(-1)) - vel, dim=-1))
    g = torch.Generator().manual_seed(0)
    for sigma in (0.5, 1.0, 2.0, 3.0, 5.0, 8.0):
        noisy = b_true + sigma * torch.randn(b_true.shape, generator=g, dtype=torch.float64)
        w = torch.full_like(b_true, 1.0 / sigma**2)
        v = velocity_least_squares(u, noisy, w, ridge=ridge)
        row[f"velocity_rmse_sigma_{sigma:g}"] = rmse(torch.linalg.vector_norm(v - vel, dim=-1))
    print(json.dumps(row), flush=True)
    return row


def fresh_image_features(cfg: cfisac.SystemConfig, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both receive APs' ``image`` front-end outputs (``norm="noise"``) of scenes 0..n-1 of dataset ``seed``,
    [n, M, N, Gx, Gy, D3] float32, and the true positions [n, Q, 2]."""
    from cfisac.data import simulate_batch
    from cfisac.models.front_ends import create_front_end

    fes = [create_front_end("image", cfg, norm="noise", ap_index=m) for m in range(cfg.n_rx)]
    feats, pos = [], []
    with torch.no_grad():
        for lo in range(0, n, 64):
            b = simulate_batch(cfg, seed, range(lo, min(n, lo + 64)))
            feats.append(torch.stack([fe(b["y"][:, m], b["x"]) for m, fe in enumerate(fes)], 1))
            pos.append(b["positions"])
    return torch.cat(feats), torch.cat(pos)


def peak_positions(dec: Any, flat: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
    """Positions [B, k, 2] (m) of map pixels ``flat`` [B, k] refined by their offsets ``off`` [B, k, 2] (pixel units),
    as the decoder's readout with ``peak_readout="offset"``."""
    g2 = dec.map_shape[1]
    dx, dy = dec.pixel_size
    return torch.stack([dec.pixel_x[flat // g2] + off[..., 0] * dx, dec.pixel_y[flat % g2] + off[..., 1] * dy], -1)


def _candidates(model: Any, feats: torch.Tensor, k: int, nms: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest heat peaks of the test features: their features [B, k, F] float32 and positions [B, k, 2]."""
    import torch.nn.functional as F

    from cfisac.models.geometry_decoder import _gather_maps, bistatic_directions, top_peaks, velocity_least_squares

    dec = model.cpu_side.decoder
    X, P = [], []
    with torch.no_grad():
        for lo in range(0, len(feats), 200):
            f = feats[lo:lo + 200].float()
            payloads = model.cpu_side.payloads_from_messages([ap.encode(f[:, m]) for m, ap in enumerate(model.aps)])
            a = [d(v)[0] for d, v in zip(dec.ap_maps, payloads, strict=True)]
            maps = dec.maps(payloads)
            flat = top_peaks(maps["heat"], k, nms=nms)
            off = _gather_maps(maps["offset"], flat).double()
            p = peak_positions(dec, flat, off)
            u = bistatic_directions(p, dec.tx_positions, dec.rx_positions)
            b = _gather_maps(maps["bistatic"], flat).double()
            lw = _gather_maps(maps["log_weight"], flat).double()
            w = F.softplus(lw) + 1e-3
            v = velocity_least_squares(u, b, w, ridge=3.0 / dec.max_speed**2)
            chi2 = (w * ((u * v[..., None, :]).sum(-1) - b) ** 2).sum(-1, keepdim=True)
            heat = maps["heat"].flatten(1).gather(1, flat)[..., None].double()
            parts = [heat, p / 100.0, off, b / 20.0, lw, chi2, v / 20.0, *[_gather_maps(m, flat).double() for m in a]]
            if dec.options.fusion == "conv":
                parts.append(_gather_maps(dec.fuse_res(F.relu(dec.fuse(torch.cat(a, 1)))), flat).double())
            X.append(torch.cat(parts, -1).float())
            P.append(p)
    return torch.cat(X), torch.cat(P)


def _pair_misses(est: torch.Tensor, pos: torch.Tensor) -> tuple[float, float]:
    """Share of targets missed (> 10 m) and the position RMSE of Q = 2 estimates [B, 2, 2], Hungarian-assigned."""
    from cfisac.metrics import assign_targets

    perm = assign_targets(est, pos)
    e = torch.linalg.vector_norm(est.gather(1, perm[..., None].expand(-1, -1, 2)) - pos, dim=-1)
    return round(float((e > 10).double().mean()), 4), round(float(e.square().mean().sqrt()), 3)


def readout_variants(args: argparse.Namespace) -> dict[str, Any]:
    import itertools

    from bench_geometry_decoder import _load, _scenes

    cfg = cfisac.SystemConfig.preset(args.preset, power_dbm=args.power_dbm)
    if cfg.n_targets != 2:
        raise ValueError("the readout variants are written for Q = 2 targets")
    model = load_run(args.readout, cfg)
    model.sync_codebooks()
    model.eval()
    ns = argparse.Namespace(feature_dir=args.feature_dir, preset=args.preset, power_dbm=args.power_dbm)
    feats, done = _load(ns, "test", 1, 500)
    k = min(args.n, done)
    feats, (pos, _) = feats[:k], _scenes(cfg, 1, k)
    K = args.candidates
    row: dict[str, Any] = {"run": str(args.readout), "n": k, "candidates": K}
    for nms in (3, 5, 7):
        row[f"nms_{nms}"] = _pair_misses(_candidates(model, feats, 2, nms)[1], pos)
    X, P = _candidates(model, feats, K)
    heat = X[..., 0].double()
    chi2 = X[..., 5 + 2 * cfg.n_rx * cfg.n_tx].double()  # after heat, position, offset, bistatic [P], log-weight [P]

    def top2(score: torch.Tensor) -> torch.Tensor:
        return P.gather(1, score.topk(2, dim=1).indices[..., None].expand(-1, -1, 2))

    row["heat_top2"] = _pair_misses(top2(heat), pos)
    for lam in (0.03, 0.1, 0.3, 1.0):
        row[f"heat_minus_{lam:g}_chi2"] = _pair_misses(top2(heat - lam * chi2), pos)
    d = torch.linalg.vector_norm(P[:, None] - pos[:, :, None], dim=-1)  # [B, Q, K]
    row["targets_within_10m_of_top_k"] = {kk: round(float((d[..., :kk].amin(-1) <= 10).double().mean()), 4)
                                          for kk in range(2, K + 1)}
    pairs = list(itertools.combinations(range(K), 2))

    def pair_errors(p: torch.Tensor, tp: torch.Tensor) -> torch.Tensor:
        out = []
        for a, b in pairs:
            est = p[:, [a, b]]
            e = [(torch.linalg.vector_norm(c - tp, dim=-1).clamp(max=60) ** 2).sum(-1) for c in (est, est.flip(1))]
            out.append(torch.minimum(*e))
        return torch.stack(out, -1)  # [B, pairs]

    def chosen(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        idx = torch.tensor(pairs)[c]  # [B, 2]
        return p.gather(1, idx[..., None].expand(-1, -1, 2))

    row["oracle_pair_of_top_k"] = _pair_misses(chosen(P, pair_errors(P, pos).argmin(-1)), pos)
    # learned selection, trained on fresh scenes
    fresh, pos_tr = fresh_image_features(cfg, 2, args.fresh)
    Xtr, Ptr = _candidates(model, fresh, K)
    ytr = pair_errors(Ptr, pos_tr).argmin(-1)
    mu, sd = Xtr.flatten(0, 1).mean(0), Xtr.flatten(0, 1).std(0) + 1e-6
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(Xtr.shape[1] * Xtr.shape[2], 128), torch.nn.ReLU(),
                              torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, len(pairs)))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    curve = []
    for epoch in range(60):
        for idx in torch.randperm(len(Xtr)).split(64):
            loss = torch.nn.functional.cross_entropy(net(((Xtr[idx] - mu) / sd).flatten(1)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % 10 == 9:
            with torch.no_grad():
                curve.append({"epoch": epoch + 1,
                              "train": _pair_misses(chosen(Ptr, net(((Xtr - mu) / sd).flatten(1)).argmax(-1)),
                                                    pos_tr),
                              "test": _pair_misses(chosen(P, net(((X - mu) / sd).flatten(1)).argmax(-1)), pos)})
    row["learned_selection"] = {"fresh_scenes": args.fresh, "curve": curve}
    print(json.dumps(row), flush=True)
    return row


def mirror_check(args: argparse.Namespace) -> dict[str, Any]:
    """The mirror symmetry behind ``bench_geometry_decoder.py --mirror`` on the test scenes: the relative mean
    absolute difference of the mean features and of their mirrors (APs and x pixels reversed), against two halves of
    the scenes (sampling noise) and x reversed alone; and the trained model on the mirrored scenes, with mirrored and
    with unmirrored labels."""
    from bench_geometry_decoder import _load, _scenes, diagnose

    cfg = cfisac.SystemConfig.preset(args.preset, power_dbm=args.power_dbm)
    ns = argparse.Namespace(feature_dir=args.feature_dir, preset=args.preset, power_dbm=args.power_dbm)
    feats, done = _load(ns, "test", 1, 500)
    f = feats[:min(args.n, done)].float()  # [n, M, N, Gx, Gy, D3]
    pos, vel = _scenes(cfg, 1, len(f))
    mean = f.mean(0)

    def rel(other: torch.Tensor) -> float:
        return round(float((mean - other).abs().mean() / mean.abs().mean()), 4)

    half = len(f) // 2
    mirrored = f.flip(1, 2, 3)
    (x0, x1), _ = cfg.area
    mpos, mvel = pos.clone(), vel.clone()
    mpos[..., 0] = x0 + x1 - mpos[..., 0]
    mvel[..., 0] = -mvel[..., 0]
    row: dict[str, Any] = {"n": len(f), "mirror": rel(mirrored.mean(0)),
                           "halves": round(float((f[:half].mean(0) - f[half:].mean(0)).abs().mean()
                                                 / mean.abs().mean()), 4),
                           "x_reversed_alone": rel(f.flip(3).mean(0))}
    if args.mirror_check:
        model = load_run(args.mirror_check, cfg)
        keys = ("position_rmse", "velocity_rmse")
        for name, (fs, p, v) in {"original": (f, pos, vel), "mirrored": (mirrored, mpos, mvel),
                                 "mirrored_unmirrored_labels": (mirrored, pos, vel)}.items():
            d = diagnose(model, fs, p, v)
            row[name] = [round(d[k], 2) for k in keys]
    print(json.dumps(row), flush=True)
    return row


def online_cost(args: argparse.Namespace) -> dict[str, Any]:
    from cfisac.data import simulate_batch
    from cfisac.models.front_ends import create_front_end

    cfg = cfisac.SystemConfig.preset(args.preset, power_dbm=args.power_dbm)
    fes = [create_front_end("image", cfg, norm="noise", ap_index=m) for m in range(cfg.n_rx)]
    times = []
    for rep in range(args.repeats):
        w0, c0 = time.time(), time.process_time()
        b = simulate_batch(cfg, 100 + rep, range(args.batch_size))
        with torch.no_grad():
            for m, fe in enumerate(fes):
                fe(b["y"][:, m], b["x"])
        times.append((time.time() - w0, time.process_time() - c0))
    row = {"batch_size": args.batch_size, "wall_s": [round(t[0], 2) for t in times],
           "cpu_s": [round(t[1], 2) for t in times], "load": os.getloadavg()}
    print(json.dumps(row), flush=True)
    return row


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for path in args.plot for line in open(path) if line.strip()]
    if args.labels:
        labels = args.labels.split(",")
        if len(labels) != len(rows):
            raise ValueError(f"--labels has {len(labels)} names for {len(rows)} rows")
    else:
        labels = [r["command"].split("--save")[-1].strip() for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharey="row")
    for r, label in zip(rows, labels, strict=True):
        c = r["curve"]
        steps = [p["steps"] for p in c]
        for row_i, key in enumerate(("position_rmse", "velocity_rmse")):
            (line,) = axes[row_i, 0].plot(steps, [p[key] for p in c], marker="o", ms=3, label=label)
            if all("train_cpu_s" in p for p in c):
                axes[row_i, 1].plot([p["train_cpu_s"] for p in c], [p[key] for p in c], marker="o", ms=3,
                                    color=line.get_color(), label=label)
    for ax, (target, ml) in zip(axes, ((4.60, 2.30), (3.24, 1.62)), strict=True):
        for a in ax:
            a.axhline(target, color="k", ls="--", lw=0.8)
            a.axhline(ml, color="k", ls=":", lw=0.8)
            a.grid(alpha=0.3)
    axes[0, 0].set_ylabel("position RMSE (m), test-200")
    axes[1, 0].set_ylabel("velocity RMSE (m/s), test-200")
    axes[1, 0].set_xlabel("training steps (of each run's batch size)")
    axes[1, 1].set_xlabel("CPU seconds of the training steps (one thread, shared machine)")
    axes[0, 0].set_title("against steps (dashed: 2x ML, dotted: ML)")
    axes[0, 1].set_title("against CPU seconds (runs that recorded them)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("geometry decoder, quick 48 dBm, image front end, D-VQVAE (learning curves on 200 test scenes)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fit", type=Path, default=None)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--n-train", type=int, default=16384, help="the n of the training cache's file name")
    p.add_argument("--online-cost", action="store_true")
    p.add_argument("--velocity", type=Path, default=None)
    p.add_argument("--readout", type=Path, default=None)
    p.add_argument("--mirror-check", type=Path, default=None)
    p.add_argument("--candidates", type=int, default=4, help="--readout: the largest peaks considered")
    p.add_argument("--fresh", type=int, default=4096, help="--readout: fresh scenes for the learned selection")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--plot", type=Path, nargs="*", default=None)
    p.add_argument("--labels", default="", help="comma-separated legend labels, one per results row")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/geometry_decoder_curves.png"))
    p.add_argument("--preset", default="quick")
    p.add_argument("--power-dbm", type=float, default=48.0)
    p.add_argument("--feature-dir", type=Path, default=Path("data/geometry_decoder"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.fit:
        fit_gap(args)
    if args.online_cost:
        online_cost(args)
    if args.velocity:
        velocity_anatomy(args)
    if args.readout:
        readout_variants(args)
    if args.mirror_check:
        mirror_check(args)
    if args.plot:
        plot(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
