#!/usr/bin/env bash
# Load test of a running service with wrk: POST /api/resource with an
# X-API-Key drawn from KEYS distinct keys, then prints throughput and latency
# percentiles. Start the service first (./start.sh; raise
# RATE_LIMIT_USER_LIMIT to measure allowed traffic rather than 429s).
#   scripts/load_test.sh                          # 30 s, 64 connections
#   DURATION=10s CONNECTIONS=1000 KEYS=1 scripts/load_test.sh
#   URL=http://10.0.0.5:8000 scripts/load_test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_packages.sh wrk=wrk

url=${URL:-http://127.0.0.1:${PORT:-8000}}
duration=${DURATION:-30s}
connections=${CONNECTIONS:-64}
threads=${THREADS:-2}
export KEYS=${KEYS:-10000}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if ! curl -fsS "$url/livez" >/dev/null 2>&1; then
  echo "no service answers at $url/livez: start it with ./start.sh" >&2
  exit 1
fi
echo "wrk: $connections connections, $threads threads, $duration, $KEYS keys -> POST $url/api/resource"
wrk -t"$threads" -c"$connections" -d"$duration" --latency \
  -s scripts/wrk/random_keys.lua "$url/api/resource" \
  | grep -E 'Requests/sec|Latency  |50%|75%|90%|99%|Non-2xx|Socket errors|requests in'
