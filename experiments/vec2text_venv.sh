#!/usr/bin/env bash
# Builds a virtual environment holding the reference vec2text 0.0.13 (PyTorch), for
# experiments/compare_vec2text.py and tests/golden/make_vec2text_golden.py.
#
#   bash experiments/vec2text_venv.sh [DIR]     (default: ~/.cache/v2t_jax/vec2text-venv)
#
# vec2text 0.0.13 needs transformers < 4.50 (its issue #86) and this package uses 5.x, so the reference lives in
# a venv of its own. The pins are the ones seen working offline (../shared/VEC2TEXT_OFFLINE.md); torch comes
# first so that pip takes the CPU wheel and never a CUDA build. Re-running on a finished venv does nothing.
set -euo pipefail
DIR="${1:-$HOME/.cache/v2t_jax/vec2text-venv}"
PY="${PYTHON:-python3}"
if [ -x "$DIR/bin/python" ] && "$DIR/bin/python" -c "import vec2text, torch, transformers" 2>/dev/null; then
  echo "$DIR: vec2text venv already built"
  exit 0
fi
"$PY" -m venv "$DIR"
"$DIR/bin/pip" install -q --upgrade pip
"$DIR/bin/pip" install -q "torch==2.13.0"
"$DIR/bin/pip" install -q "transformers==4.49.0" "tokenizers==0.21.4" "huggingface_hub==0.36.2" \
  "sentence-transformers==3.4.1" "accelerate==1.4.0" "datasets==3.3.2" "evaluate==0.4.3" \
  "openai==1.109.1" "tenacity==9.2.1" "nltk==3.10.4" safetensors numpy scipy pandas tqdm
"$DIR/bin/pip" install -q --no-deps "vec2text==0.0.13"
"$DIR/bin/python" -c "import vec2text, torch, transformers; print('vec2text venv ready:', torch.__version__, transformers.__version__)"
