#!/usr/bin/env bash
# The all-MiniLM-L6-v2 release pipeline (issue 5), every stage resumable: rerun the script after an
# interruption and each stage continues where it stopped (training resumes from its last checkpoint,
# hypotheses from their last chunk). Stages whose output exists are skipped; the inverter bundle, once
# exported, freezes the inverter the corrector trains against (delete it to export a later inverter, and
# use a new corrector run folder: a corrector run refuses another inverter's weights).
#
#   bash experiments/release_pipeline.sh [INVERTER_STEPS] [CORRECTOR_STEPS]
#
# Runs in ~/.cache/v2t_jax/runs (override with RUNS=...). On these 2-core CPUs the T5-tiny-shaped models take
# ~1.5 s per step; on an accelerator use the `base` variants (VARIANT=base) and larger step counts.
set -euo pipefail
cd "$(dirname "$0")/.."
V2T=${V2T:-.venv/bin/v2t}
RUNS=${RUNS:-$HOME/.cache/v2t_jax/runs}
VARIANT=${VARIANT:-cpu_small}
INV_STEPS=${1:-12000}
COR_STEPS=${2:-12000}
INV_RUN=$RUNS/inverter_$VARIANT
COR_RUN=$RUNS/corrector_$VARIANT
INV_BUNDLE=$RUNS/bundles/inverter_$VARIANT
BUNDLE=$RUNS/bundles/v2t_minilm_$VARIANT

$V2T data prepare
$V2T train --config configs/inverter.py:$VARIANT --workdir "$INV_RUN" --config.num_steps="$INV_STEPS" \
  --config.warmup_steps=300 --config.eval_every=1000 --config.checkpoint_every=250 --config.progress=false
[ -f "$INV_BUNDLE/v2t_model.json" ] || $V2T export --workdir "$INV_RUN" --output "$INV_BUNDLE"
$V2T data hypotheses --inverter "$INV_BUNDLE"
# the corrector starts from the inverter's weights (config.init_from_inverter), hence the lower peak rate
$V2T train --config configs/corrector.py:$VARIANT --workdir "$COR_RUN" --config.inverter="$INV_BUNDLE" \
  --config.num_steps="$COR_STEPS" --config.learning_rate=5e-4 --config.warmup_steps=150 \
  --config.eval_every=500 --config.checkpoint_every=100 --config.progress=false
$V2T export --workdir "$COR_RUN" --output "$BUNDLE" --weights int8 --overwrite
echo "bundle: $BUNDLE; next: python experiments/results_table.py --checkpoint $BUNDLE"
echo "release: copy $BUNDLE/* into v2t_jax/resources/v2t_minilm_l6_v2/ (see docs/shipped-model.md)"
