#!/usr/bin/env bash
# The README's test command: set up .venv, then run the default test layers
# (unit: no Ray; ray: a small local cluster). Slow and GPU tests are opt-in:
#   bash scripts/test.sh -m slow        bash scripts/test.sh -m gpu
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export RAY_TRAIN_ENABLE_PRINT_PATCH=0 TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}"
if [ $# -eq 0 ]; then
  set -- -m "not slow and not gpu"
fi
exec .venv/bin/python -m pytest -q --timeout=900 "$@"
