#!/usr/bin/env bash
# Create .venv (if needed) and install fspo-ray with the extras named in $FSPO_EXTRAS.
# torch is installed first, pinned, and kept pinned by constraints.txt, so no CUDA build is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${FSPO_EXTRAS:-dev,embed,report}"
VENV="${FSPO_VENV:-.venv}"
PY="${PYTHON:-python3}"
stamp="$VENV/.fspo-installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)-${EXTRAS//,/-}"
if [ -f "$stamp" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip may read a constraints file from its global config; PIP_CONSTRAINT replaces it, so pass both.
constraints="$PWD/constraints.txt"
for global in /etc/xdg/pip/constraints.txt /etc/pip/constraints.txt; do
  [ -f "$global" ] && constraints="$constraints $global"
done
export PIP_CONSTRAINT="$constraints" PIP_DISABLE_PIP_VERSION_CHECK=1
echo "[setup] installing torch 2.13 (CPU) and fspo-ray[$EXTRAS] into $VENV ..."
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
# DeepSpeed JIT-compiles its shared-memory collective op the first time an engine starts (~60 s on
# 2 cores): build it now, as part of set-up, where demo.sh and test.sh will look for it.
echo "[setup] building DeepSpeed's CPU shared-memory op ..."
TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$(cd "$VENV" && pwd)/torch_extensions}" "$VENV/bin/python" -c \
  "from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null 2>&1 \
  || echo "[setup] (not built: DeepSpeed builds it on first use)"
touch "$stamp"
echo "[setup] done"
