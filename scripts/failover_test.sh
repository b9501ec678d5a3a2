#!/usr/bin/env bash
# The Sentinel failover scenario, for a person: starts a master, a replica
# and three sentinels on free loopback ports, two instances of the service
# (release build), sends continuous traffic, kills the master, and prints how
# long requests were degraded, how long the promotion took, how soon the
# service reached the new master, and that limits are exact afterwards.
# Everything it starts is stopped at the end.
#   scripts/failover_test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_packages.sh \
  redis-server=redis-server redis-cli=redis-tools redis-sentinel=redis-sentinel
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "building (release) and running the failover scenario; this takes a minute or two"
cargo test --release --quiet --test sentinel failover_under_traffic -- --nocapture --test-threads 1 2>&1 \
  | grep -vE '^(running|$)'
