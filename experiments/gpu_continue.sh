#!/usr/bin/env bash
# Continue both shipped models on a lent GPU (H100/H200, nothing reachable): each run starts from the bundle that
# ships (v2t_jax/resources/v2t_minilm_l6_v2, tracked, so it travels with the checkout) and trains on another
# slice of the corpus, so device minutes add up from one lent machine to the next instead of starting over.
#
# The shipped bundle (59 MiB) and the kit (embedder + passages + wheels, ~58 MiB) do not fit in one call's 64 MiB,
# so a run is two calls on the same warm machine, sharing WORK (default .v2t_continue, ignored by git, so it stays
# on that machine between calls):
#   1. PHASE=prep: wheels, the kit's embedder, the slice's passages, their target embeddings. Here, before it:
#        python experiments/gpu_kit.py build --sources all --wheels      (once; .gpu_kit is ignored by git)
#        mv v2t_jax/resources/v2t_minilm_l6_v2 /tmp/shipped               (out of this call's checkout)
#      the call (device tool, carry [".gpu_kit"], timeout 420):
#        PHASE=prep bash experiments/gpu_continue.sh .gpu_kit "$OUT" 0 SLICE
#   2. PHASE=train, at once (the machine is handed back after a short idle): here `mv /tmp/shipped
#      v2t_jax/resources/v2t_minilm_l6_v2`; the call (no carry, timeout 600):
#        PHASE=train BUDGET_S=560 bash experiments/gpu_continue.sh .gpu_kit "$OUT" 9 SLICE
#      then `cat FILES_AT/bundle.tar.part-* | tar x -C BUNDLE_DIR` is the continued release.
# With room for both (PHASE=all, the default), one call does both phases.
#
#   [PHASE=all|prep|train] bash experiments/gpu_continue.sh KIT OUT [MINUTES] [SLICE]
# SLICE K/N (default 0/4): the training documents of slice K of N (every held-out one; `gpu_kit.py unpack
# --slice`). MINUTES (default 9; BUDGET_S overrides it in seconds): the budget of this call. In the train phase
# the shipped inverter's hypotheses (the corrector's data) are computed while the inverter trains, then the
# corrector trains alongside it; both are time-boxed to one deadline, and what is left goes to the int8 bundle
# (new inverter + new corrector: `v2t export --inverter`) and the packing (and a table with TABLE_N > 0; by
# default the held-out table is run here, on the bundle that comes back). The log ends with the
# share of the call that went to train steps. VARIANT (default gpu) names the configs' variant; BUNDLE (default
# the shipped one) the bundle to continue from; BATCH overrides both configs' batch size. Tested at tiny scale on
# CPU: tests/test_gpu_recipe.py (TINY=1, a tiny bundle as BUNDLE).
set -euo pipefail
cd "$(dirname "$0")/.."
USAGE="usage: [PHASE=all|prep|train] gpu_continue.sh KIT OUT [MINUTES] [SLICE]"
KIT=$(realpath -m "${1:?$USAGE}")
OUT=$(realpath -m "${2:?$USAGE}")
MINUTES=${3:-9}
SLICE=${4:-0/4}
PHASE=${PHASE:-all}
VARIANT=${VARIANT:-gpu}
START=$(date +%s)
case "$PHASE" in all|prep|train) ;; *) echo "PHASE must be all, prep or train, got $PHASE" >&2; exit 2;; esac
case "$SLICE" in */*) ;; *) echo "SLICE must be K/N (e.g. 0/4), got $SLICE" >&2; exit 2;; esac
mkdir -p "$OUT"
WORK=$(realpath -m "${WORK:-.v2t_continue}")
mkdir -p "$WORK"
LOG="$OUT/continue_$PHASE.log"
exec > >(tee -a "$LOG") 2>&1

since() { echo $(( $(date +%s) - START )); }
stage() { echo "== [$(since) s] $*"; }

# ---------------------------------------------------------------- environment (both phases)
source experiments/gpu_env.sh
CORPUS="$V2T_CACHE_DIR/passages.jsonl"
PREPARED="$WORK/prepared-${SLICE/\//-of-}"

# ---------------------------------------------------------------- prep: the slice's data and targets
if [ "$PHASE" != train ]; then
  [ -f "$KIT/passages.jsonl.xz" ] || { echo "no kit in $KIT: build one with experiments/gpu_kit.py build" >&2; exit 2; }
  stage "unpacking the kit, slice $SLICE"
  rm -f "$WORK"/prepared-*
  "$PY" experiments/gpu_kit.py unpack --kit "$KIT" --cache "$V2T_CACHE_DIR" --slice "$SLICE"
  stage "v2t data prepare (TFDS build, counts, targets)"
  "${V2T[@]}" data prepare --corpus "$CORPUS" --quiet | tee "$WORK/data.txt"
  touch "$PREPARED"
  stage "prepared"
fi
[ "$PHASE" = prep ] && { sleep 1; exit 0; }

# ---------------------------------------------------------------- train: both models from the bundle
[ -f "$PREPARED" ] || { echo "slice $SLICE is not prepared in $WORK: run PHASE=prep first" >&2; exit 2; }
BUNDLE=$(realpath -m "${BUNDLE:-v2t_jax/resources/v2t_minilm_l6_v2}")
[ -f "$BUNDLE/v2t_model.json" ] || { echo "no bundle in $BUNDLE to continue from" >&2; exit 2; }
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
RUNS="$WORK/runs"
rm -rf "$RUNS" && mkdir -p "$RUNS"
# The seconds the stages around training take (overridable): a training's start-up before its clock starts and
# its final eval and save (RUN), the export of both bundles (EXPORT), the table and the packing (TAIL). Both
# trainings end at TRAIN_END; each reports its own train-step time in its metrics.
# The table (TABLE_N test passages; default 0: none, run it here on the returned bundle, as the device's time is
# for training) gets what is left at the end.
TABLE_N=${TABLE_N:-0}
if [ -n "${TINY:-}" ]; then RUN=${RUN:-40}; EXPORT=${EXPORT:-30}; else RUN=${RUN:-40}; EXPORT=${EXPORT:-40}; fi
if [ "$TABLE_N" -gt 0 ]; then TAIL=${TAIL:-30}; else TAIL=${TAIL:-10}; fi
DEADLINE=$(( START + ${BUDGET_S:-$(( MINUTES * 60 ))} ))
TRAIN_END=$(( DEADLINE - EXPORT - TAIL ))
minutes_until() {  # a time box that ends the run by TRAIN_END, refusing too short a one
  local left=$(( TRAIN_END - RUN - $(date +%s) ))
  if [ "$left" -lt 30 ]; then echo "only $left s left for training: give the script more MINUTES" >&2; exit 2; fi
  "$PY" -c "print(round($left / 60, 3))"
}
COMMON=(--config.progress=false --config.num_steps=100000000 --config.t5.dtype="$DTYPE" --config.data.corpus="$CORPUS"
        --config.init_from="$BUNDLE")
[ -n "${BATCH:-}" ] && COMMON+=(--config.batch_size="$BATCH")

stage "the bundle's inverter makes the corrector's hypotheses, alongside the inverter's training"
"${V2T[@]}" data hypotheses --inverter "$BUNDLE" --corpus "$CORPUS" --batch-size 1024 --quiet > "$WORK/hypotheses.log" 2>&1 &
HYP=$!
INV_MIN=$(minutes_until)
stage "inverter: configs/inverter.py:$VARIANT from $BUNDLE for $INV_MIN min"
"${V2T[@]}" train --config "configs/inverter.py:$VARIANT" --workdir "$RUNS/inverter" "${COMMON[@]}" \
  --config.train_minutes="$INV_MIN" > "$WORK/inverter.log" 2>&1 &
INV=$!
if ! wait "$HYP"; then cat "$WORK/hypotheses.log"; kill "$INV" 2>/dev/null || true; exit 1; fi
COR_MIN=$(minutes_until)
stage "hypotheses done; corrector: configs/corrector.py:$VARIANT from $BUNDLE for $COR_MIN min"
"${V2T[@]}" train --config "configs/corrector.py:$VARIANT" --workdir "$RUNS/corrector" "${COMMON[@]}" \
  --config.inverter="$BUNDLE" --config.train_minutes="$COR_MIN" > "$WORK/corrector.log" 2>&1 &
COR=$!
FAILED=0
wait "$INV" || { FAILED=1; echo "inverter training failed:"; tail -n 20 "$WORK/inverter.log"; }
wait "$COR" || { FAILED=1; echo "corrector training failed:"; tail -n 20 "$WORK/corrector.log"; }
[ "$FAILED" = 0 ] || exit 1
tail -n 3 "$WORK/inverter.log" "$WORK/corrector.log"

stage "export: the new inverter + the new corrector, int8"
"${V2T[@]}" export --workdir "$RUNS/inverter" --output "$RUNS/inverter_bundle"
"${V2T[@]}" export --workdir "$RUNS/corrector" --output "$RUNS/bundle" --weights int8 --inverter "$RUNS/inverter_bundle"
tar cf "$WORK/bundle.tar" -C "$RUNS/bundle" .
split -b 15M -d "$WORK/bundle.tar" "$OUT/bundle.tar.part-"

# The share of this call's wall time in which train steps ran: from each run's metrics, the span from its first
# train report (compiled, at speed) to its last; the union of the two spans against the call so far.
"$PY" - "$RUNS" "$START" <<'EOF' | tee "$WORK/share.txt"
import json, sys, time
from pathlib import Path
runs, start = Path(sys.argv[1]), float(sys.argv[2])
spans = []
for name in ("inverter", "corrector"):
    rows = [json.loads(x) for x in (runs / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rows if r.get("kind") == "train"]
    if len(train) >= 2:
        first, last = train[0], train[-1]
        secs, steps = last["time"] - first["time"], last["step"] - first["step"]
        print(f"{name}: {last['step']} steps; {steps} of them in {secs:.0f} s at speed ({steps / max(secs, 1e-9):.1f}/s)")
        spans.append((first["time"], last["time"]))
busy, end = 0.0, 0.0
for a, b in sorted(spans):
    busy += max(0.0, b - max(a, end))
    end = max(end, b)
wall = time.time() - start
print(f"train steps ran {busy:.0f} s of this call's {wall:.0f} s ({100 * busy / wall:.0f}%)")
EOF
pack_reports() {
  cp "$RUNS/inverter/metrics.jsonl" "$WORK/inverter_metrics.jsonl"
  cp "$RUNS/corrector/metrics.jsonl" "$WORK/corrector_metrics.jsonl"
  (cd "$WORK" && tar cf "$OUT/reports.tar" $(ls data.txt 2>/dev/null) share.txt inverter_metrics.jsonl \
    corrector_metrics.jsonl $(ls table1.* 2>/dev/null))
}
pack_reports

# ---------------------------------------------------------------- table: held-out test passages
TABLE_S=$(( DEADLINE + ${GRACE:-20} - $(date +%s) ))
if [ "$TABLE_N" -gt 0 ] && [ "$TABLE_S" -gt 10 ]; then
  stage "table on $TABLE_N test passages (at most $TABLE_S s)"
  timeout "$TABLE_S" "$PY" experiments/results_table.py --checkpoint "$RUNS/bundle" --corpus "$CORPUS" \
    --n "$TABLE_N" --split test --rows "${ROWS:-0:1,1:1,20:1}" --batch-size 256 --out "$WORK/table1" \
    || echo "results table failed or ran out of time (bundle kept)"
fi
pack_reports
ls -la "$OUT"
stage "done"
sleep 1  # let tee write the log
