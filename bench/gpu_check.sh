#!/usr/bin/env bash
# GPU check for a single-GPU machine without internet (under 5 minutes): RN50 and ViT-B/16
# training steps (random weights, 224 px, bf16, channels_last for ResNets) on batches already on
# the GPU against the same steps fed by the real input pipeline from generated JPEGs, and LGR's
# inference cost against a linear head; one table. Flags go to bench/gpu_check.py, e.g. a tiny
# CPU run: bash bench/gpu_check.sh --device cpu --size 64 --batch 2 --steps 1 --warmup 1 --images 8
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's ltrbench
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
exec python bench/gpu_check.py "$@"
