#!/bin/sh
# Issue 9: the faithful model (raw Y_m) with the obvious remedies, on-line training on fresh scenes, 10 minutes each,
# quick preset at 48 dBm, two runs at a time (one core each).
cd "$(dirname "$0")/../.."
B=".venv/bin/python benchmarks/bench_front_ends.py --preset quick --power-dbm 48 --threads 1 --minutes 10 --out runs/bench_front_ends_raw"
$B --variants raw-paper > runs/raw_paper.log 2>&1 &
$B --variants raw > runs/raw.log 2>&1
wait
$B --variants raw-noise > runs/raw_noise.log 2>&1 &
$B --variants raw-b128 > runs/raw_b128.log 2>&1
wait
