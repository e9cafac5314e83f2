#!/bin/sh
# Issue 9, second stop: 10-minute cached runs at the quick preset, 48 dBm, 16384 training scenes, two at a time
# (one per core). Without the feature caches, bench_front_ends.py computes them first (prepare_features); the
# velocity-marginals ones (and the second half of the 32768-scene image ones) were computed by two processes over
# halves of the scenes, the computation of benchmarks/explorations/extend_front_end_features.py (equal to prepare_features to
# float16 rounding: 1 ulp in 0.015 % of the values):
#   P=benchmarks/explorations/extend_front_end_features.py
#   $P velocity-marginals --n 16384 --range 0 8192 & $P velocity-marginals --n 16384 --range 8192 16384 & wait
#   $P velocity-marginals --n 16384 --finish
cd "$(dirname "$0")/../.." || exit 1
OV='{"kmeans_init": true, "dead_code_threshold": 1.0}'
B="env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_front_ends.py --preset quick --threads 1 --minutes 10 --eval-every 60 --out runs/s12 --power-dbm 48 --data data/quick-P48-seed0-n16384.h5 --n-train 16384"
$B --cached image --kind dvqvae --lr-schedule cosine --model-overrides "$OV"
$B --cached image --kind dvae --lr-schedule constant --model-overrides "$OV"
$B --cached image --kind dvqvae --lr-schedule cosine --loss assignment --model-overrides "$OV"
$B --cached image --kind dvqvae --lr-schedule constant --model-overrides "$OV"
$B --cached velocity-marginals --kind dvqvae --lr-schedule cosine --model-overrides "$OV"
$B --cached velocity-marginals --kind dvqvae --lr-schedule constant --model-overrides "$OV"
# the same recipe for 30 minutes (what 3x the training buys)
$B --cached image --kind dvqvae --lr-schedule cosine --minutes 30 --eval-every 120 --model-overrides "$OV"
$B --cached velocity-marginals --kind dvqvae --lr-schedule cosine --minutes 30 --eval-every 120 --model-overrides "$OV"
# twice the distinct scenes: a 32768-scene cache (its first 16384 scenes are those above) and its image features
.venv/bin/cfisac simulate --preset quick --power-dbm 48 --n 32768 --seed 0 --out data/quick-P48-seed0-n32768.h5
#   $P image --n 32768 --range 16384 24576 --copy 16384 & $P image --n 32768 --range 24576 32768 & wait
#   $P image --n 32768 --finish
B32="env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_front_ends.py --preset quick --threads 1 --out runs/s12 --power-dbm 48 --data data/quick-P48-seed0-n32768.h5 --n-train 32768"
$B32 --cached image --kind dvqvae --lr-schedule cosine --minutes 10 --eval-every 60 --model-overrides "$OV"
$B32 --cached image --kind dvqvae --lr-schedule cosine --minutes 30 --eval-every 120 --model-overrides "$OV"
# feasibility and the non-learned readout of the same test scenes
env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_feasibility.py --powers 30 48 --n 500 --threads 1
.venv/bin/python benchmarks/explorations/peak_readout.py --features data/front_end_features/quick-P48 --power-dbm 48
# curves
.venv/bin/python benchmarks/explorations/plot_front_ends.py benchmarks/results/front_ends.jsonl \
    --out benchmarks/results/front_ends_curves.png --power-dbm 48 --prior 40.56 16.32 --train-mean 37.25 16.32 \
    --crlb 0.172 0.751 --ml 2.30 1.62
