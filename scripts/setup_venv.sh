#!/usr/bin/env bash
# Create or refresh .venv with edgefill and its dependencies. torch is pinned first
# (EDGEFILL_TORCH_VERSION, default 2.13.0: the CPU wheel on this kind of machine), so no
# multi-GB CUDA build is pulled. Reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.edgefill-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  log=$(mktemp)
  pip_quiet() { .venv/bin/python -m pip install -q "$@" >"$log" 2>&1 || { cat "$log"; exit 1; }; }
  echo "setting up .venv (torch ${EDGEFILL_TORCH_VERSION:-2.13.0} + edgefill) ..."
  pip_quiet --upgrade pip
  pip_quiet "torch==${EDGEFILL_TORCH_VERSION:-2.13.0}"
  pip_quiet -e ".[dev]"
  rm -f "$log"
  echo "$want" > "$stamp"
fi
