#!/usr/bin/env bash
# One prepared run on a lent GPU machine (no network there): JAX vs sentence-transformers on the GPU,
# MiniLM architecture with random weights, plus the T5 parity tests with JAX on the GPU.
#   usage (on the GPU machine, repo root): bash experiments/gpu_embed_bench.sh MINILM_CONFIG_DIR OUT_DIR
# MINILM_CONFIG_DIR holds all-MiniLM-L6-v2's config.json, modules.json, 1_Pooling/ and tokenizer files.
set -uo pipefail
CFG=$1; OUT=$2
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import jax, flax, torch, transformers, sentence_transformers as s; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'sentence-transformers', s.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
for bs in 128 1024; do
  python3 experiments/bench_embed.py --embedder "$CFG" --random-weights --torch-device cuda \
    --batch-size $bs --repeats 7 --out "$OUT/bench_embed_gpu_b$bs" 2>&1 | grep -v "Loading weights"
done
python3 -m pytest -q -p no:cacheprovider tests/models/test_t5.py 2>&1 | tail -3 | tee "$OUT/t5_tests_gpu_default_precision.txt"
JAX_DEFAULT_MATMUL_PRECISION=highest python3 -m pytest -q -p no:cacheprovider tests/models/test_t5.py 2>&1 | tail -3 | tee "$OUT/t5_tests_gpu_highest_precision.txt"
