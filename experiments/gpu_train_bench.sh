#!/usr/bin/env bash
# One prepared run on a lent GPU machine: inverter train step, JAX vs PyTorch, on the GPU.
#   usage (on the GPU machine, repo root): bash experiments/gpu_train_bench.sh OUT_DIR
set -uo pipefail
OUT=$1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name --format=csv,noheader
python3 experiments/bench_train.py --size tiny --batch-size 64 --steps 30 --torch-device cuda --out "$OUT/bench_train_gpu_tiny_b64"
python3 experiments/bench_train.py --size base --batch-size 128 --steps 20 --torch-device cuda --out "$OUT/bench_train_gpu_base_b128"
