#!/usr/bin/env bash
# Refresh requirements.lock, the whole environment that scripts/setup_venv.sh installs, with hashes,
# from pyproject.toml (runtime + the dev extra) for Python 3.11 on x86_64 Linux, with torch held to
# its CPU build (requirements/torch-cpu.txt; the wheel is looked for in $EDGEFILL_WHEELS, default
# /opt/wheels, as pip does on machines of this kind). Run it after changing dependencies in
# pyproject.toml: tests/test_lock.py fails until the lock agrees with pyproject.toml again.
#   bash scripts/lock.sh            # keep what is locked where still allowed
#   bash scripts/lock.sh --upgrade  # newest allowed versions of everything
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
if [ -x .venv/bin/uv ]; then UV=.venv/bin/uv; else python3 -m pip install -q "uv==$UV_VERSION"; UV=uv; fi
wheels=${EDGEFILL_WHEELS:-/opt/wheels}
links=(); [ -d "$wheels" ] && links=(--find-links "$wheels")
tmp=$(mktemp)
"$UV" pip compile pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  "${links[@]}" -c requirements/torch-cpu.txt --generate-hashes --no-header --quiet "$@" -o "$tmp"
digest=$(.venv/bin/python -m scripts.lock_digest 2>/dev/null || python3 -m scripts.lock_digest)
{ echo "# requirements.lock: made by scripts/lock.sh from pyproject.toml; do not edit by hand."
  echo "# pyproject-dependencies-sha256: $digest"
  cat "$tmp"; } > requirements.lock
rm -f "$tmp"
echo "requirements.lock: $(grep -c '^[a-z0-9]' requirements.lock) packages"
