#!/usr/bin/env bash
# One prepared GPU session (device tool): CUDA tests, CPU-vs-CUDA equivalence at quick, the paper-preset batched
# estimators / front ends on CUDA, a paper-preset D-VQVAE training smoke run and one minute of on-line geometry-
# decoder training at quick. Every stage has its own time limit; results go to $OUT (or ./gpu_out).
#   bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
PY=${PY:-python3}
log() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/log.txt"; }
log info
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc;
  $PY -c "import torch, numpy, scipy; print(torch.__version__, torch.cuda.is_available(), numpy.__version__, scipy.__version__)"; } 2>&1 | tee -a "$OUT/log.txt"
log tests
timeout 90 $PY -m pytest -q -p no:cacheprovider -k "cuda or device" tests/test_cs.py tests/test_front_ends.py \
  tests/test_fusion.py tests/test_contract.py 2>&1 | tail -15 | tee -a "$OUT/log.txt"
log equivalence-quick
timeout 150 $PY benchmarks/cuda_equivalence.py --preset quick --scenes 32 --out "$OUT/cuda_quick.md" 2>&1 | tail -30 >> "$OUT/log.txt"
log paper-batched
timeout 170 $PY benchmarks/bench_batched.py --presets paper --no-old --paper-batches 4 --device cuda --threads 4 \
  --power-dbm 55 --timeout 60 --out "$OUT/cuda_paper.md" 2>&1 | tail -30 >> "$OUT/log.txt"
log train-paper
timeout 80 $PY -m cfisac.cli train --model dvqvae --preset paper --out /tmp/tp --n-train 32 --n-val 8 --batch-size 8 \
  --epochs 1 --device cuda --amp --workers 8 --no-progress 2>&1 | tail -12 >> "$OUT/log.txt"
cp /tmp/tp/steps.csv "$OUT/train_paper_steps.csv" 2>/dev/null
log train-geometry-quick
timeout 80 $PY -m cfisac.cli train --model dvqvae --preset quick --front-end image --set decoder=geometry --out /tmp/tg \
  --n-train 40000 --n-val 256 --batch-size 64 --epochs 1 --minutes 0.75 --device cuda --workers 8 --no-progress \
  2>&1 | tail -8 >> "$OUT/log.txt"
cp /tmp/tg/history.csv "$OUT/train_geometry_history.csv" 2>/dev/null
log done
