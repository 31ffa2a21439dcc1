#!/usr/bin/env bash
# Local Prefect server on 127.0.0.1 (SQLite under $PREFECT_HOME, analytics off), and beside it the
# picture server that lets the Prefect UI show the artifacts' pictures (python -m pipeline.pictures:
# the PNG files of one folder over http, 127.0.0.1 only).
# Usage: scripts/prefect_server.sh [start|stop|status]   (idempotent)
# Env: PREFECT_PORT (4200), PREFECT_HOME (./.prefect), PYTHON (./.venv/bin/python),
#      EDGEFILL_PICTURES_PORT (PREFECT_PORT + 1), EDGEFILL_PICTURES_DIR ($PREFECT_HOME/pictures).
# `start` prints the environment flows and workers need, one `export` line each, PREFECT_API_URL last.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PREFECT_PORT:-4200}"
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DO_NOT_TRACK=1
PY="${PYTHON:-$PWD/.venv/bin/python}"
URL="http://127.0.0.1:$PORT/api"
export PREFECT_UI_API_URL="$URL"  # the UI's API (Prefect's default assumes port 4200)
PICTURES_PORT="${EDGEFILL_PICTURES_PORT:-$((PORT + 1))}"
PICTURES_DIR="$(realpath -m "${EDGEFILL_PICTURES_DIR:-$PREFECT_HOME/pictures}")"
PICTURES_URL="http://127.0.0.1:$PICTURES_PORT"

healthy() { "$PY" - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2).read()
PY
}
running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# start_service NAME PIDFILE LOG HEALTH_URL COMMAND...
start_service() {
  local name=$1 pidfile=$2 log=$3 health=$4; shift 4
  if running "$pidfile" && healthy "$health"; then echo "$name already running (pid $(cat "$pidfile"))"; return; fi
  if healthy "$health"; then echo "error: something else answers on $health (choose another port)" >&2; exit 1; fi
  nohup "$@" >"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    healthy "$health" && break
    if ! running "$pidfile"; then echo "error: $name exited; see $log" >&2; tail -20 "$log" >&2; exit 1; fi
    sleep 0.5
  done
  healthy "$health" || { echo "error: $name not healthy after 60 s; see $log" >&2; exit 1; }
  echo "$name started (pid $(cat "$pidfile"), log $log)"
}

# stop_service NAME PIDFILE
stop_service() {
  local name=$1 pidfile=$2 pid
  if running "$pidfile"; then
    pid="$(cat "$pidfile")"; kill "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "$name stopped"
  else echo "$name not running"; fi
  rm -f "$pidfile"
}

SERVER_PID="$PREFECT_HOME/server-$PORT.pid"
PICTURES_PID="$PREFECT_HOME/pictures-$PICTURES_PORT.pid"

case "${1:-start}" in
  start)
    mkdir -p "$PREFECT_HOME"
    start_service "Prefect server" "$SERVER_PID" "$PREFECT_HOME/server-$PORT.log" "$URL/health" \
      "$PY" -m prefect server start --host 127.0.0.1 --port "$PORT"
    # "picture server" (not "... server started"): scripts/demo.sh looks for "Prefect server started"
    start_service "picture server" "$PICTURES_PID" "$PREFECT_HOME/pictures-$PICTURES_PORT.log" "$PICTURES_URL/health" \
      "$PY" -m pipeline.pictures --dir "$PICTURES_DIR" --port "$PICTURES_PORT"
    echo "export EDGEFILL_PICTURES_URL=$PICTURES_URL"
    echo "export EDGEFILL_PICTURES_DIR=$PICTURES_DIR"
    echo "export PREFECT_API_URL=$URL"
    ;;
  stop)
    stop_service "picture server" "$PICTURES_PID"
    stop_service "Prefect server" "$SERVER_PID"
    ;;
  status)
    if running "$SERVER_PID" && healthy "$URL/health" && running "$PICTURES_PID" && healthy "$PICTURES_URL/health"; then
      echo "running (pids $(cat "$SERVER_PID") $(cat "$PICTURES_PID")): export PREFECT_API_URL=$URL" \
           "EDGEFILL_PICTURES_URL=$PICTURES_URL EDGEFILL_PICTURES_DIR=$PICTURES_DIR"
    else echo "not running"; exit 1; fi
    ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
