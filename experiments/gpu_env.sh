# Sourced by the device recipes (gpu_release.sh, gpu_continue.sh): the environment on a lent GPU machine with
# nothing reachable. Needs KIT, WORK and a `stage` function; sets PY, V2T and DTYPE, installs the kit's wheels
# into WORK/site when the image lacks them (kept there for a later call on the same machine), and exports the
# caches (WORK/cache, WORK/data), offline mode and bfloat16 matmuls (float32 with TINY=1, the CPU tests).
PY=${PYTHON:-python3}
if [ -d "$WORK/site" ]; then export PYTHONPATH="$WORK/site:${PYTHONPATH:-}"; fi
if [ -d "$KIT/wheels" ] && ! "$PY" -c "import ml_collections, tensorflow_datasets" 2>/dev/null; then
  stage "installing $(ls "$KIT"/wheels | wc -l) wheels"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$KIT"/wheels/*.whl
  export PYTHONPATH="$WORK/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export V2T_CACHE_DIR="$WORK/cache" V2T_DATA_DIR="$WORK/data" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
if [ -z "${TINY:-}" ]; then
  export JAX_DEFAULT_MATMUL_PRECISION=bfloat16 DTYPE=bfloat16
else
  export DTYPE=float32
fi
V2T=("$PY" -m v2t_jax.cli)
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
