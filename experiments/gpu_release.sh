#!/usr/bin/env bash
# The whole release in one call on a lent GPU (H100/H200, nothing reachable): data -> inverter -> hypotheses ->
# corrector -> int8 bundle -> Table 1, inside a wall-clock budget, then the bundle split into pieces that the
# device tool can bring back (<= 8 files of <= 16 MiB).
#
# Here, before the call (a kit of ~58 MiB: the embedder, the passages, the wheels the GPU image lacks):
#   python experiments/gpu_kit.py build --sources all --wheels
#   mv v2t_jax/resources/v2t_minilm_l6_v2 /tmp/shipped   # tracked weights travel too: keep them out of the call
# The call (device tool, carry [".gpu_kit"], timeout 600):
#   bash experiments/gpu_release.sh .gpu_kit "$OUT" 9
# Here, after it: mv /tmp/shipped v2t_jax/resources/v2t_minilm_l6_v2, then
#   cat FILES_AT/bundle.tar.part-* | tar x -C BUNDLE_DIR     (the release: see docs/shipped-model.md)
#
#   bash experiments/gpu_release.sh KIT OUT [MINUTES] [VARIANT]
# MINUTES (default 9) is the budget of the whole script; the two trainings get what the other stages leave
# (~62% the inverter, the rest the corrector), each time-boxed (config.train_minutes: the learning rate decays
# to 0 at its deadline). VARIANT (default gpu) names configs/{inverter,corrector}.py variants. Tested at tiny
# scale on CPU: `TINY=1 bash experiments/gpu_release.sh KIT OUT 3 tiny` (tests/test_gpu_recipe.py).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=$(realpath "${1:?usage: gpu_release.sh KIT OUT [MINUTES] [VARIANT]}")
OUT=$(realpath -m "${2:?usage: gpu_release.sh KIT OUT [MINUTES] [VARIANT]}")
MINUTES=${3:-9}
VARIANT=${4:-gpu}
START=$(date +%s)
mkdir -p "$OUT"
WORK=${WORK:-/tmp/v2t_release}
rm -rf "$WORK" && mkdir -p "$WORK"
LOG="$OUT/release.log"
exec > >(tee -a "$LOG") 2>&1

since() { echo $(( $(date +%s) - START )); }
stage() { echo "== [$(since) s] $*"; }

# ---------------------------------------------------------------- environment
source experiments/gpu_env.sh
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"

stage "unpacking the kit"
"$PY" experiments/gpu_kit.py unpack --kit "$KIT" --cache "$V2T_CACHE_DIR"
CORPUS="$V2T_CACHE_DIR/passages.jsonl"

# ---------------------------------------------------------------- data
stage "v2t data prepare (TFDS build, counts, targets)"
t0=$(date +%s)
"${V2T[@]}" data prepare --corpus "$CORPUS" --quiet | tee "$WORK/data.txt"
echo "data prepare: $(( $(date +%s) - t0 )) s" | tee -a "$WORK/data.txt"

# ---------------------------------------------------------------- budget
# Each training is time-boxed; what the other stages take is estimated (seconds, overridable): a training's
# start-up, step-0 eval, final save and export (OVERHEAD), the hypotheses (HYP), the table and the packing
# (TAIL). The inverter gets INV_SHARE of what is left now; the corrector all that is left after the hypotheses.
if [ -n "${TINY:-}" ]; then OVERHEAD=${OVERHEAD:-25}; HYP=${HYP:-40}; TAIL=${TAIL:-20}
else OVERHEAD=${OVERHEAD:-75}; HYP=${HYP:-75}; TAIL=${TAIL:-30}; fi
INV_SHARE=${INV_SHARE:-0.62}
DEADLINE=$(( START + ${BUDGET_S:-$(( MINUTES * 60 ))} ))  # BUDGET_S (seconds) overrides MINUTES
minutes_for() {  # seconds -> minutes for config.train_minutes, refusing too little
  if [ "$1" -lt 30 ]; then echo "only $1 s left for training: give the script more MINUTES" >&2; exit 2; fi
  "$PY" -c "print(round($1 / 60, 3))"
}
INV_MIN=$(minutes_for "$("$PY" -c "print(int($INV_SHARE * ($DEADLINE - $(date +%s) - 2 * $OVERHEAD - $HYP - $TAIL)))")")
RUNS="$WORK/runs"
COMMON=(--config.progress=false --config.num_steps=100000000 --config.t5.dtype="$DTYPE" --config.data.corpus="$CORPUS")

# ---------------------------------------------------------------- inverter
stage "inverter: configs/inverter.py:$VARIANT for $INV_MIN min"
"${V2T[@]}" train --config "configs/inverter.py:$VARIANT" --workdir "$RUNS/inverter" "${COMMON[@]}" \
  --config.train_minutes="$INV_MIN"
"${V2T[@]}" export --workdir "$RUNS/inverter" --output "$RUNS/inverter_bundle"

stage "hypotheses"
"${V2T[@]}" data hypotheses --inverter "$RUNS/inverter_bundle" --corpus "$CORPUS" --batch-size 1024 --quiet
COR_MIN=$(minutes_for $(( DEADLINE - $(date +%s) - OVERHEAD - TAIL )))

# ---------------------------------------------------------------- corrector
stage "corrector: configs/corrector.py:$VARIANT for $COR_MIN min"
"${V2T[@]}" train --config "configs/corrector.py:$VARIANT" --workdir "$RUNS/corrector" "${COMMON[@]}" \
  --config.inverter="$RUNS/inverter_bundle" --config.train_minutes="$COR_MIN"
"${V2T[@]}" export --workdir "$RUNS/corrector" --output "$RUNS/bundle" --weights int8

# The bundle goes to OUT first (15 MiB pieces, 4 for ~60 MB), so that a table cut short by the call's limit
# still leaves the release to bring back.
tar cf "$WORK/bundle.tar" -C "$RUNS/bundle" .
split -b 15M -d "$WORK/bundle.tar" "$OUT/bundle.tar.part-"
pack_reports() {  # <= 8 files come back: release.log, reports.tar (data counts, both metrics, the table), pieces
  cp "$RUNS/inverter/metrics.jsonl" "$WORK/inverter_metrics.jsonl"
  cp "$RUNS/corrector/metrics.jsonl" "$WORK/corrector_metrics.jsonl"
  (cd "$WORK" && tar cf "$OUT/reports.tar" data.txt inverter_metrics.jsonl corrector_metrics.jsonl $(ls table1.* 2>/dev/null))
}
pack_reports

# ---------------------------------------------------------------- table
# Bounded by the budget (plus GRACE seconds of the call's slack): a slow table never costs the bundle.
TABLE_S=$(( DEADLINE + ${GRACE:-30} - $(date +%s) ))
stage "Table 1 on ${TABLE_N:-500} test passages (at most $TABLE_S s)"
ROWS=${ROWS:-0:1,1:1,5:1,20:1,20:4}
if [ "$TABLE_S" -gt 10 ]; then
  timeout "$TABLE_S" "$PY" experiments/results_table.py --checkpoint "$RUNS/bundle" --corpus "$CORPUS" \
    --n "${TABLE_N:-500}" --split test --rows "$ROWS" --batch-size 256 --out "$WORK/table1" \
    || echo "results table failed or ran out of time (bundle kept)"
fi

# ---------------------------------------------------------------- what comes back
stage "packing"
pack_reports
ls -la "$OUT"
stage "done"
sleep 1  # let tee write the log
