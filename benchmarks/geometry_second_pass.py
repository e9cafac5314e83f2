"""A second readout pass conditioned on the first peak, on a frozen geometry-decoder model (Q = 2).

The geometry decoder's misses are a selection problem: the right peaks are among the largest 3-4 in 98 % of the
cases, but the second-largest is often a ghost (``benchmarks/results/geometry_decoder.md``), and the peaks' local
features do not tell a ghost from a target (``geometry_decoder_ablations.py --readout``). Ghosts are cross terms of
the two targets' range-angle cells, so where the second target is depends on where the first one is. This script
tests that: a small CNN with a receptive field over the whole map (dilated 3 x 3 convolutions) reads the frozen
model's per-AP maps A_m, its heat logits and a Gaussian bump at the first peak, and gives heat logits of *the other*
target (CenterNet focal loss against a bump at the true target not matched to the first peak). Readout: the first
peak as before, the second at the argmax of the second pass's heat away from the first peak (3 x 3), both refined by
the frozen offset head. Training data: freshly simulated scenes (dataset seed 2) through the frozen AP side.

    .venv/bin/python benchmarks/geometry_second_pass.py runs/geodec/s8_b8.pt --fresh 8192 --minutes 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

import cfisac

sys.path.insert(0, str(Path(__file__).parent))


def frozen_maps(model, feats: torch.Tensor, chunk: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-AP maps concatenated [B, M C, G1, G2], heat logits [B, G1, G2] and offsets [B, 2, G1, G2] (float32)."""
    dec = model.cpu_side.decoder
    A, H, offs = [], [], []
    with torch.no_grad():
        for lo in range(0, len(feats), chunk):
            f = feats[lo:lo + chunk].float()
            payloads = model.cpu_side.payloads_from_messages([ap.encode(f[:, m]) for m, ap in enumerate(model.aps)])
            A.append(torch.cat([d(p)[0] for d, p in zip(dec.ap_maps, payloads, strict=True)], 1))
            maps = dec.maps(payloads)
            H.append(maps["heat"])
            offs.append(maps["offset"])
    return torch.cat(A), torch.cat(H), torch.cat(offs)


def bump(dec, centres: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """exp(-|g - c|^2 / (2 sigma^2)) in pixel units on the decoder's map grid, c the centre of the pixel holding each
    point (CenterNet: exactly 1 there): [B, G1, G2] for points [B, 2] (m)."""
    from cfisac.models.geometry_decoder import _pixel_of

    i, j = _pixel_of(centres.to(dec.pixel_x.dtype), dec.pixel_x, dec.pixel_y)
    centres = torch.stack([dec.pixel_x[i], dec.pixel_y[j]], -1)
    dx, dy = dec.pixel_size
    gx = (dec.pixel_x.float()[None, :, None] - centres[:, 0, None, None].float()) / dx
    gy = (dec.pixel_y.float()[None, None, :] - centres[:, 1, None, None].float()) / dy
    return torch.exp(-(gx**2 + gy**2) / (2 * sigma**2))


class SecondPass(nn.Module):
    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, in_channels)
        layers, c = [], in_channels + 2
        for d in (1, 2, 4, 8):
            layers += [nn.Conv2d(c, width, 3, padding=d, dilation=d), nn.ReLU()]
            c = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, 1, 1)
        nn.init.constant_(self.out.bias, -2.19)

    def forward(self, a: torch.Tensor, heat: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(torch.cat([self.norm(a), heat[:, None], first[:, None]], 1)))[:, 0]


def focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), normalised by the number of peaks."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target >= 0.999
    loss = torch.where(pos, -((1 - p) ** 2) * torch.log(p), -((1 - target) ** 4) * p**2 * torch.log(1 - p))
    return loss.sum() / pos.sum().clamp_min(1)


def first_peak(dec, heat: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from cfisac.models.geometry_decoder import _gather_maps, top_peaks
    from geometry_decoder_ablations import peak_positions

    flat = top_peaks(heat, 1)
    return flat[:, 0], peak_positions(dec, flat, _gather_maps(offset, flat).double())[:, 0]


def main() -> None:
    from bench_geometry_decoder import _load, _scenes
    from cfisac.metrics import assign_targets, rmse_confidence_interval
    from cfisac.models.geometry_decoder import _gather_maps
    from geometry_decoder_ablations import _pair_misses, fresh_image_features, load_run, peak_positions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--fresh", type=int, default=8192)
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--feature-dir", type=Path, default=Path("data/geometry_decoder"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = cfisac.SystemConfig.preset("quick", power_dbm=48.0)
    model = load_run(args.run, cfg)
    model.sync_codebooks()
    model.eval()
    dec = model.cpu_side.decoder
    t0 = time.time()
    fresh, pos_tr = fresh_image_features(cfg, 2, args.fresh)
    a_tr, h_tr, o_tr = frozen_maps(model, fresh)
    del fresh
    _, p1_tr = first_peak(dec, h_tr, o_tr)
    prep_s = time.time() - t0
    ns = argparse.Namespace(feature_dir=args.feature_dir, preset="quick", power_dbm=48.0)
    te, _ = _load(ns, "test", 1, 500)
    pos_te, _ = _scenes(cfg, 1, 500)
    a_te, h_te, o_te = frozen_maps(model, te)
    f1_te, p1_te = first_peak(dec, h_te, o_te)

    def other_target(p1: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        near = torch.linalg.vector_norm(pos - p1[:, None], dim=-1).argmin(1)  # the target the first peak found
        return pos.gather(1, (1 - near)[:, None, None].expand(-1, 1, 2))[:, 0]

    target_tr = bump(dec, other_target(p1_tr, pos_tr))
    net = SecondPass(a_tr.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    first_tr = bump(dec, p1_tr)
    first_te = bump(dec, p1_te)

    def evaluate() -> dict:
        with torch.no_grad():
            h2 = torch.cat([net(a_te[i:i + 100], h_te[i:i + 100], first_te[i:i + 100]) for i in range(0, 500, 100)])
        g2 = dec.map_shape[1]
        i1, j1 = f1_te // g2, f1_te % g2
        ii = torch.arange(dec.map_shape[0])[None, :, None]
        jj = torch.arange(g2)[None, None, :]
        away = ((ii - i1[:, None, None]).abs() > 1) | ((jj - j1[:, None, None]).abs() > 1)
        flat2 = torch.where(away, h2, torch.full_like(h2, -torch.inf)).flatten(1).argmax(1)
        p2 = peak_positions(dec, flat2[:, None], _gather_maps(o_te, flat2[:, None]).double())[:, 0]
        est = torch.stack([p1_te, p2], 1)
        perm = assign_targets(est, pos_te)
        e = torch.linalg.vector_norm(est.gather(1, perm[..., None].expand(-1, -1, 2)) - pos_te, dim=-1)  # [B, Q]
        return {"missed": round(float((e > 10).double().mean()), 4),
                "position_rmse": round(float(e.square().mean().sqrt()), 3),
                "ci95": [round(v, 2) for v in rmse_confidence_interval(e)]}

    # the frozen readout (first two peaks of the heat map) for comparison
    from cfisac.models.geometry_decoder import top_peaks

    flat = top_peaks(h_te, 2)
    missed, rmse = _pair_misses(peak_positions(dec, flat, _gather_maps(o_te, flat).double()), pos_te)
    row = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "run": str(args.run), "fresh": args.fresh,
           "prep_s": round(prep_s, 1), "threads": args.threads,
           "frozen_readout": {"missed": missed, "position_rmse": rmse}, "curve": []}
    print(json.dumps(row), flush=True)
    t1, step, n = time.time(), 0, len(a_tr)
    while time.time() - t1 < 60 * args.minutes:
        for idx in torch.randperm(n).split(32):
            loss = focal(net(a_tr[idx], h_tr[idx], first_tr[idx]), target_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 500 == 0 or time.time() - t1 >= 60 * args.minutes:
                row["curve"].append({"s": round(time.time() - t1), "step": step, "loss": round(float(loss.detach()), 4),
                                     **evaluate()})
                print(json.dumps(row["curve"][-1]), flush=True)
            if time.time() - t1 >= 60 * args.minutes:
                break
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
