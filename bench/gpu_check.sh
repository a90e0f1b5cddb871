#!/usr/bin/env bash
# GPU check for a GPU machine without internet (under 5 minutes on one GPU): RN50 and ViT-B/16
# training steps (random weights, 224 px, bf16, channels_last for ResNets) on batches already on
# the GPU against the same steps fed by the real input pipeline from generated JPEGs, and LGR's
# inference cost against a linear head; one table. Flags go to bench/gpu_check.py, e.g. a tiny
# CPU run: bash bench/gpu_check.sh --device cpu --size 64 --batch 2 --steps 1 --warmup 1 --images 8
#
# Data-parallel section, on a machine with two GPUs or more: steps per second of one DDP training
# step (Ray Train, NCCL) on 1, 2, ... N GPUs with their scaling efficiency (bench/data_parallel.py
# --gpus N). LTRBENCH_DP_GPUS=N caps N (default: every GPU), LTRBENCH_DP_ARGS adds its flags (e.g.
# "--arch ViT-B-16 --batch 64"), LTRBENCH_DP_GPUS=0 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's ltrbench
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python bench/gpu_check.py "$@"
gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c "^GPU " || true)
n=${LTRBENCH_DP_GPUS:-$gpus}
if [ "$n" -gt "$gpus" ]; then n=$gpus; fi
if [ "$n" -ge 2 ]; then
  echo
  echo "== data-parallel: 1..$n GPUs =="
  # shellcheck disable=SC2086
  python bench/data_parallel.py --gpus "$n" ${LTRBENCH_DP_ARGS:-}
else
  echo
  echo "== data-parallel: skipped ($gpus GPU(s); needs 2 or more) =="
fi
