#!/usr/bin/env bash
# The README's main command: set up .venv, then run the whole pipeline on the embedded
# default (simulated world, local Ray, CPU). Extra arguments are config overrides:
#   bash scripts/demo.sh world.seed=1 output_dir=runs/seed1
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export RAY_TRAIN_ENABLE_PRINT_PATCH=0 TOKENIZERS_PARALLELISM=false
# Ray Data logs its progress every 10 s when stdout is not a terminal; once a minute is enough here.
export RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL="${RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL:-60}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}"
exec .venv/bin/python -m jobs.demo --config jobs/configs/world.yaml "$@"
