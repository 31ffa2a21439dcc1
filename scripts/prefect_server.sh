#!/usr/bin/env bash
# Local Prefect server on 127.0.0.1 (SQLite under $PREFECT_HOME, analytics off).
# Usage: scripts/prefect_server.sh [start|stop|status]   (idempotent)
# Env: PREFECT_PORT (4200), PREFECT_HOME (./.prefect), PYTHON (./.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PREFECT_PORT:-4200}"
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DO_NOT_TRACK=1
PY="${PYTHON:-$PWD/.venv/bin/python}"
PIDFILE="$PREFECT_HOME/server-$PORT.pid"
LOG="$PREFECT_HOME/server-$PORT.log"
URL="http://127.0.0.1:$PORT/api"

healthy() { "$PY" - "$URL" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/health", timeout=2).read()
PY
}
running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "${1:-start}" in
  start)
    mkdir -p "$PREFECT_HOME"
    if running && healthy; then echo "Prefect server already running (pid $(cat "$PIDFILE"))";
    else
      if healthy; then echo "error: something else answers on $URL (set PREFECT_PORT)" >&2; exit 1; fi
      nohup "$PY" -m prefect server start --host 127.0.0.1 --port "$PORT" >"$LOG" 2>&1 &
      echo $! >"$PIDFILE"
      for _ in $(seq 1 120); do
        healthy && break
        if ! running; then echo "error: Prefect server exited; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; fi
        sleep 0.5
      done
      healthy || { echo "error: Prefect server not healthy after 60 s; see $LOG" >&2; exit 1; }
      echo "Prefect server started (pid $(cat "$PIDFILE"), log $LOG)"
    fi
    echo "export PREFECT_API_URL=$URL"
    ;;
  stop)
    if running; then
      pid="$(cat "$PIDFILE")"; kill "$pid"
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
      echo "Prefect server stopped"
    else echo "Prefect server not running"; fi
    rm -f "$PIDFILE"
    ;;
  status)
    if running && healthy; then echo "running (pid $(cat "$PIDFILE")): export PREFECT_API_URL=$URL";
    else echo "not running"; exit 1; fi
    ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
