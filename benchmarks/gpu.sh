#!/usr/bin/env bash
# The GPU benchmarks in one go (about 6-8 minutes on an H100 / H200), figures under $OUT.
#
#   OUT=bench-out bash benchmarks/gpu.sh
#
# Needs a CUDA machine with torch installed; installs this package (editable) on top. Steps:
#
# 1. `pip install -e .` (falls back to --no-deps when no package index can be reached).
# 2. An HMDB51-like synthetic dataset: 8 classes x 32 videos of about 4 s at 320x240, 30 fps
#    (`hmdbattn synthesize`), cached at the default resize 128x171 (`preprocess`).
# 3. benchmarks/train_step.py at 8 blocks, 16x112x112, batch 32: the pool and hmdb51.toml heads
#    in fp32, bf16, bf16 + channels-last, bf16 + torch.compile; the loader's CPU cost per clip
#    and its clips/s with 8 workers; a real training loop (pinned memory, non-blocking copies):
#    the share of its time spent waiting in next(loader) (target < 5%) and its model FLOP
#    utilisation (MACs x 2 x 3 per step over the GPU's dense bf16 peak); the hmdb51 head
#    trained alone on cached CNN features against its whole-model step (--features).
# 4. benchmarks/eval_step.py at the same size, 16 windows a batch, 1 and 3 crops.
# 5. benchmarks/pretrain_step.py at the same size and batch: the classification step of the
#    hmdb51 head against each pretraining objective (video/pixels, video/ema, tokens on the
#    frozen CNN), in bf16 with and without channels-last.
# 6. $OUT/gpu.json (every figure) and $OUT/summary.txt (the main ones); the scripts' own output
#    is in $OUT/train_step.txt, $OUT/eval_step.txt and $OUT/pretrain_step.txt.
#
# Environment: OUT (default ./bench-out), PYTHON (default python), WORKERS (loader workers,
# default 8, the configs' data.num_workers), BATCH (default 32).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-./bench-out}"
PYTHON="${PYTHON:-python}"
WORKERS="${WORKERS:-8}"
BATCH="${BATCH:-32}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/hmdbattn-gpu-bench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
DATA="$WORK/data"
START=$SECONDS

log() { printf '[%4ds] %s\n' "$((SECONDS - START))" "$*" | tee -a "$OUT/log.txt"; }

log "1/6 install"
if ! "$PYTHON" -m pip install -q -e . >"$OUT/pip.txt" 2>&1; then
    # No index reachable: torch and the rest are expected to be there already.
    "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/pip.txt" 2>&1
fi
"$PYTHON" - <<'EOF' | tee -a "$OUT/log.txt"
import torch
assert torch.cuda.is_available(), "no CUDA device: run this on the GPU machine"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}")
EOF

log "2/6 synthetic dataset and cache"
"$PYTHON" -m hmdbattn synthesize --root "$DATA" --classes 8 --videos-per-class 32 \
    --seconds 4 --size 320x240 >"$OUT/dataset.txt" 2>&1
"$PYTHON" -m hmdbattn preprocess --set "data.root=\"$DATA\"" --workers "$(nproc)" \
    >>"$OUT/dataset.txt" 2>&1

# The benchmarks: a failure of one is logged and the others still run, then the summary
# gathers what there is and the script exits non-zero.
STATUS=0

log "3/6 train_step.py"
"$PYTHON" benchmarks/train_step.py --device cuda --blocks 8 --frames 16 --crop 112 \
    --batch "$BATCH" --heads pool,hmdb51 --variants fp32,bf16,bf16-cl,bf16-compile \
    --root "$DATA" --workers "$WORKERS" --loop-steps 80 --loop-variant bf16-cl --features \
    --json "$OUT/train_step.json" 2>&1 | tee "$OUT/train_step.txt" \
    || { STATUS=1; log "train_step.py failed (see train_step.txt)"; }

log "4/6 eval_step.py"
"$PYTHON" benchmarks/eval_step.py --device cuda --blocks 8 --frames 16 --crop 112 --batch 16 \
    --heads pool,hmdb51 --root "$DATA" --json "$OUT/eval_step.json" 2>&1 \
    | tee "$OUT/eval_step.txt" || { STATUS=1; log "eval_step.py failed (see eval_step.txt)"; }

log "5/6 pretrain_step.py"
"$PYTHON" benchmarks/pretrain_step.py --device cuda --blocks 8 --frames 16 --crop 112 \
    --batch "$BATCH" --variants bf16-cl,bf16 --json "$OUT/pretrain_step.json" 2>&1 \
    | tee "$OUT/pretrain_step.txt" \
    || { STATUS=1; log "pretrain_step.py failed (see pretrain_step.txt)"; }

log "6/6 summary"
"$PYTHON" benchmarks/gpu_summary.py "$OUT"
cat "$OUT/summary.txt"
log "done: figures in $OUT"
exit "$STATUS"
