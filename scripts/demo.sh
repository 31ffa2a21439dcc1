#!/usr/bin/env bash
# The embedded end-to-end job: no Earth Engine account, no GPU.
#   bundled real Landsat scenes -> export-landsat -> prepare-dataset -> train-model (tiny, CPU)
#   -> inpaint-scene (Everest with a real SLC-off gap pattern; model vs GDAL FillNodata)
# Every stage runs as a Prefect deployment on a local Prefect server (127.0.0.1, SQLite); the
# artifacts' pictures are served beside it (scripts/prefect_server.sh), so the UI shows them.
# Outputs land in ./demo_out/. Set EDGEFILL_DEMO_TRAIN_STEPS to train longer/shorter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
source .venv/bin/activate
export PREFECT_HOME=${PREFECT_HOME:-$PWD/.prefect} PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
mkdir -p demo_out
server_out=$(bash scripts/prefect_server.sh start)
echo "$server_out" | grep -v '^export ' || true
eval "$(echo "$server_out" | grep '^export ')"   # PREFECT_API_URL and the picture server's EDGEFILL_PICTURES_*
started_server=$(echo "$server_out" | grep -c 'Prefect server started' || true)
serve_pid=""
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null
  [ "$started_server" != 0 ] && bash scripts/prefect_server.sh stop >/dev/null 2>&1
  true
}
trap cleanup EXIT
edgefill serve > demo_out/serve.log 2>&1 &
serve_pid=$!
edgefill wait-for-deployments export-landsat/default prepare-dataset/default train-model/default inpaint-scene/everest-demo

run() { echo; echo "==> prefect deployment run $*"; prefect deployment run "$@" --watch; }
# each flow takes its stage's config as one parameter; the deployments run its defaults (the demo's)
train_params=()
if [ -n "${EDGEFILL_DEMO_TRAIN_STEPS:-}" ]; then
  train_params=(-p "config={\"max_steps\": $EDGEFILL_DEMO_TRAIN_STEPS}")
fi
run export-landsat/default
run prepare-dataset/default
run train-model/default "${train_params[@]}"
run inpaint-scene/everest-demo
echo
cat demo_out/everest/summary.md
