#!/usr/bin/env bash
# Create/refresh .venv, then run the whole test suite. Extra arguments go to pytest
# (e.g. `bash scripts/test.sh -m "not slow"`: the fast subset; `tests/test_store.py -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_UI_ENABLED=false DO_NOT_TRACK=1 \
       PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
