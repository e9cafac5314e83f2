"""Regenerate ``fusion_cases.json``: fronthaul messages of the scenes where the batched fusion (``fuse_bistatic``)
once disagreed with the literal reference ``fuse_messages``, and the reference's estimates on them.

    OMP_NUM_THREADS=1 .venv/bin/python tests/data/make_fusion_cases.py [SOURCE_DIR]

The messages come from the reference estimators' caches in SOURCE_DIR (default /tmp/fusion_cases), all on the
"quick" preset with 50 scenes: ``ref_50_50_2026.pt`` (CS, 50 dBm, seed 2026; torch.load dict of numpy arrays
aoa / ranges / dopplers), ``msgs_music_50_50_0.pt`` (MUSIC, 50 dBm, seed 0; tuple of tensors), ``ref50_55.npz``
/ ``ref50_45.npz`` (MUSIC, 55 / 45 dBm, seed 2026). The scenes kept are those where, before the trust-region-
reflective solver (commit 212dc62), the two fusions differed by more than 1e-3 m or m/s: a start on the box edge
sliding along it to a lower-cost minimum (CS 32, MUSIC-55 10, 18, MUSIC-45 18), velocity box-edge minima
(MUSIC-50 37, 49, MUSIC-45 20, 26), a target fitted onto a receive AP (MUSIC-50 17) and a 1e-3 m/s refit
difference (MUSIC-55 1). The reference estimates are recomputed here with ``fuse_messages``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

import cfisac
from cfisac.estimators.reference.signal_processing import ApMessages, fuse_messages

OUT = Path(__file__).with_name("fusion_cases.json")
# (name, scheme, power dBm, seed, file, scenes)
SETS = (("cs50", "cs", 50.0, 2026, "ref_50_50_2026.pt", (32,)),
        ("music50", "music", 50.0, 0, "msgs_music_50_50_0.pt", (17, 37, 49)),
        ("music55", "music", 55.0, 2026, "ref50_55.npz", (1, 10, 18)),
        ("music45", "music", 45.0, 2026, "ref50_45.npz", (18, 20, 26)))


def load(path: Path) -> list[np.ndarray]:
    if path.suffix == ".npz":
        z = np.load(path)
        return [z[k] for k in ("aoa", "ranges", "dopplers")]
    obj = torch.load(path, weights_only=False)
    if isinstance(obj, dict):
        return [np.asarray(obj[k]) for k in ("aoa", "ranges", "dopplers")]
    return [t.numpy() for t in obj]


def main() -> None:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fusion_cases")
    cases = []
    for name, scheme, power, seed, file, idx in SETS:
        cfg = cfisac.SystemConfig.preset("quick", power_dbm=power)
        aoa, ranges, dopplers = (np.ascontiguousarray(a[list(idx)], dtype=np.float64) for a in load(src / file))
        ref = fuse_messages(cfg, ApMessages(aoa, ranges, dopplers))
        for k, s in enumerate(idx):
            cases.append({"set": name, "scheme": scheme, "preset": "quick", "power_dbm": power, "seed": seed,
                          "scene": s, "aoa": aoa[k].tolist(), "ranges": ranges[k].tolist(),
                          "dopplers": dopplers[k].tolist(), "ref_positions": ref.positions[k].tolist(),
                          "ref_velocities": ref.velocities[k].tolist()})
    OUT.write_text(json.dumps({"source": str(src), "cases": cases}, indent=None) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(cases)} scenes)")


if __name__ == "__main__":
    main()
