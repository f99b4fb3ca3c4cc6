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
touch "$stamp"
echo "[setup] done"
