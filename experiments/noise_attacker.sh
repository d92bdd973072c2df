#!/usr/bin/env bash
# The noise-aware attacker of the noise-defense table (experiments/results/noise_defense.md): the shipped
# inverter fine-tuned with Gaussian noise of the defense's operating point on its training embeddings
# (`--config.init_from`, `--config.noise_level`), exported, and measured beside the shipped model.
#
#   bash experiments/noise_attacker.sh [LAMBDA=0.05] [MINUTES=25] [RUN=runs/noise_attacker]
#
# CPU: a time-boxed run (the learning rate decays to 0 at the deadline); rerunning resumes it.
set -euo pipefail
cd "$(dirname "$0")/.."
LAMBDA=${1:-0.05}
MINUTES=${2:-25}
RUN=${3:-runs/noise_attacker}
V2T=${V2T:-.venv/bin/v2t}
PY=${PY:-.venv/bin/python}

$V2T data prepare --quiet  # the default sources (wiki bbc sotu moby); cached after the first run
$V2T train --config configs/inverter.py:gpu --workdir "$RUN" \
  --config.init_from=v2t_jax/resources/v2t_minilm_l6_v2 --config.noise_level="$LAMBDA" \
  --config.data.sources='["wiki","bbc","sotu","moby"]' --config.t5.dtype=float32 --config.batch_size=64 \
  --config.learning_rate=3e-4 --config.warmup_steps=50 --config.num_steps=1000000 \
  --config.train_minutes="$MINUTES" --config.eval_every=500 --config.eval_samples=128 \
  --config.checkpoint_every=250 --config.log_every=50 --config.progress=false
$V2T export --workdir "$RUN" --output "$RUN-bundle" --weights int8 --overwrite
$PY experiments/noise_defense.py --n 100 --steps 20 --attacker "$RUN-bundle" \
  --attacker-label "noise-aware inverter (λ=$LAMBDA)" --out experiments/results/noise_defense
