#!/usr/bin/env bash
# One prepared run on a lent GPU machine: `v2t bench` of the compiled inversion at the T5-base shapes (random
# weights of configs/corrector.py:base), bfloat16 compute, steps {0, 5, 20} x sequence beam {1, 4, 8} x batch
# {32, 256}; one bench call per point, each written when it is done (a time-out keeps what finished).
#   usage (on the GPU machine, repo root): bash experiments/gpu_invert_bench.sh OUT_DIR [SECONDS_PER_POINT=120] [KIT]
# KIT (experiments/gpu_kit.py build, carried along): its wheels are installed when the image lacks them and its
# MiniLM unpacked into a fresh v2t cache; without it the embedder must already be in the v2t cache.
# CPU smoke test: CONFIG=configs/corrector.py:tiny BATCHES=2 STEPS="0 1" BEAMS="1 2" DTYPE=float32 bash ...
set -uo pipefail
OUT=$1
LIMIT=${2:-120}
KIT=${3:-}
if [ -n "$KIT" ]; then
  WORK=${WORK:-/tmp/v2t_bench}
  mkdir -p "$WORK"
  if [ -d "$KIT/wheels" ] && ! python3 -c "import ml_collections, tensorflow_datasets" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$KIT"/wheels/*.whl
    export PYTHONPATH="$WORK/site:${PYTHONPATH:-}"
  fi
  export V2T_CACHE_DIR="$WORK/cache" HF_HUB_OFFLINE=1
  PYTHONPATH="$PWD:${PYTHONPATH:-}" python3 experiments/gpu_kit.py unpack --kit "$KIT" --cache "$V2T_CACHE_DIR"
fi
CONFIG=${CONFIG:-configs/corrector.py:base}
DTYPE=${DTYPE:-bfloat16}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for B in ${BATCHES:-32 256}; do
  for S in ${STEPS:-0 5 20}; do
    for K in ${BEAMS:-1 4 8}; do
      if [ "$S" = 0 ] && [ "$K" != 1 ]; then continue; fi  # step 0 is the inverter's greedy decode
      timeout "$LIMIT" python3 -m v2t_jax.cli bench --config "$CONFIG" --config.t5.dtype="$DTYPE" \
        --batch "$B" --steps "$S" --beam "$K" --repeats 3 --quiet --output "$OUT/point_b${B}_s${S}_k${K}" \
        >/dev/null || echo "batch $B steps $S beam $K: stopped (exit $?)"
    done
  done
done
# one table from the points that finished
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [r for p in sorted(out.glob("point_*.json")) for r in json.loads(p.read_text())["rows"]]
rows.sort(key=lambda r: (r["batch"], r["steps"], r["beam"]))
lines = ["| batch | steps | beam | median s | inversions/s | compile s | peak memory MiB |", "|---|---|---|---|---|---|---|"]
lines += [f"| {r['batch']} | {r['steps']} | {r['beam']} | {r['median_s']:.3f} | {r['inversions_per_s']:.1f} | "
          f"{r['compile_s']:.1f} | {r['peak_memory_mib']:.0f} ({r['memory_kind']}) |" for r in rows]
(out / "bench_invert_gpu.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
