#!/bin/sh
# Issue 9 final 10-minute cached runs (quick preset), one at a time on one core.
cd "$(dirname "$0")/../.."
while [ ! -f data/front_end_features/quick-P48/image-train16384.f16.done ]; do sleep 10; done
OV='{"kmeans_init": true, "dead_code_threshold": 1.0}'
B=".venv/bin/python benchmarks/bench_front_ends.py --preset quick --threads 1 --minutes 10 --eval-every 60 --out runs/bench_front_ends_final"
$B --cached image --power-dbm 48 --data data/quick-P48-seed0-n16384.h5 --n-train 16384 --model-overrides "$OV"
$B --cached velocity-image --power-dbm 48 --data data/quick-P48-seed0-n4096.h5 --n-train 4096 --model-overrides "$OV"
$B --cached raw --power-dbm 48 --data data/quick-P48-seed0-n4096.h5 --n-train 4096 --model-overrides "$OV"
$B --cached matched-max --power-dbm 48 --data data/quick-P48-seed0-n4096.h5 --n-train 4096 --model-overrides "$OV"
$B --cached image --power-dbm 30 --data data/quick-P30-seed0-n10240.h5 --n-train 4096 --model-overrides "$OV"
$B --cached image --power-dbm 48 --data data/quick-P48-seed0-n4096.h5 --n-train 4096 --model-overrides "$OV"
echo ALLDONE
