#!/usr/bin/env bash
# The GPU check of the trainer (see benchmarks/gpu_train.py): base preset, bf16, torchrun, on
# shards generated on the spot; `--smoke` runs the tiny preset on CPU.
#   benchmarks/gpu_train.sh [--smoke] [--steps N] [--nproc N] [--out DIR]
# PYTHON picks the interpreter (default: the repo's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_train.py "$@"
