#!/usr/bin/env bash
# Create or refresh .venv from requirements.lock: every package at the locked version, hashes
# checked (uv pip sync --require-hashes), torch as its CPU build (2.13.0+cpu, found in
# $EDGEFILL_WHEELS, default /opt/wheels, where machines of this kind keep it), then edgefill itself
# (editable, no dependencies). Reinstalls only when requirements.lock or pyproject.toml changed.
# Refresh the lock after changing dependencies: bash scripts/lock.sh. Without this script,
# `pip install -e .` still works in an environment you bring (pyproject.toml has ranges, not pins).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
UV_VERSION=0.13.9
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.edgefill-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  log=$(mktemp)
  quiet() { "$@" >"$log" 2>&1 || { grep -v 'is ignored: it is neither' "$log"; exit 1; }; }
  echo "setting up .venv from requirements.lock ..."
  [ -x .venv/bin/uv ] && [ "$(.venv/bin/uv --version | cut -d' ' -f2)" = "$UV_VERSION" ] \
    || quiet .venv/bin/python -m pip install -q "uv==$UV_VERSION"
  wheels=${EDGEFILL_WHEELS:-/opt/wheels}
  links=(); [ -d "$wheels" ] && links=(--find-links "$wheels")
  quiet .venv/bin/uv pip sync --python .venv/bin/python --require-hashes "${links[@]}" requirements.lock
  quiet .venv/bin/uv pip install --python .venv/bin/python --no-deps -e .
  rm -f "$log"
  echo "$want" > "$stamp"
fi
