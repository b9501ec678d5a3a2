#!/usr/bin/env bash
# Redis CPU per check of the check script alone, without the service:
# check.lua assembled with the algorithm modules as src/redis/scripts.rs
# assembles it, loaded into a Redis of its own, and called by
# redis-benchmark with BATCH checks per EVALSHA (one policy each, over
# 10,000 keys, 8 clients). Compare two versions of the Lua side by side:
#   scripts/bench_script.sh                  # lua/ as it is
#   scripts/bench_script.sh /tmp/old-lua     # another copy of lua/
#   ALG=gcra BATCH=1 N=100000 scripts/bench_script.sh
#   KEYSPACE=1 scripts/bench_script.sh       # one hot key: every check of a call on it
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_packages.sh redis-server=redis-server redis-cli=redis-tools redis-benchmark=redis-tools
dir=${1:-lua}
batch=${BATCH:-32}
n=${N:-20000}
work=$(mktemp -d)
trap 'kill "$rpid" 2>/dev/null || true; rm -rf "$work"' EXIT
python3 - "$dir" >"$work/script.lua" <<'PY'
import sys
d = sys.argv[1]
out = ["local LOADERS = {}\nlocal ALGORITHMS = setmetatable({}, { __index = function(built, name)\n"
       "  local load = LOADERS[name]\n  if not load then return nil end\n  local module = load()\n"
       "  rawset(built, name, module)\n  return module\nend })\n"]
for name in ["fixed_window", "sliding_window", "token_bucket", "gcra", "concurrency",
             "ratelimit_fixed_window"]:
    out.append("LOADERS['%s'] = function()\n%s\nend\n" % (name, open(f"{d}/{name}.lua").read()))
out.append(open(f"{d}/check.lua").read())
sys.stdout.write("".join(out))
PY
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --logfile "$work/redis.log" &
rpid=$!
for _ in $(seq 50); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.1; done
sha=$(redis-cli -p "$port" SCRIPT LOAD "$(cat "$work/script.lua")")
args=(EVALSHA "$sha" "$batch")
for _ in $(seq 1 "$batch"); do args+=("rate:{user:k__rand_int__}:60"); done
if grep -qF "ARGV[a] == '*'" "$dir/check.lua"; then
  # Each distinct policy once, then each check as its policy's number.
  args+=(1 "${ALG:-fixed_window}" 100000000 60000 1 0 "")
  for _ in $(seq 1 "$batch"); do args+=(1); done
elif grep -qF 'specs[ARGV' "$dir/check.lua"; then
  # A copy of lua/ from the fourth round: each check as now, n, number.
  args+=(1 "${ALG:-fixed_window}" 100000000 60000 1 0 "")
  for _ in $(seq 1 "$batch"); do args+=("" 1 1); done
else
  # A copy of lua/ from before 2026-12-05's fourth round: six per policy.
  for _ in $(seq 1 "$batch"); do args+=("" 1 "${ALG:-fixed_window}" 100000000 60000 1 0 ""); done
fi
# The keys exist first, as under steady traffic.
redis-benchmark -p "$port" -n 2000 -c 4 -r "${KEYSPACE:-10000}" -q "${args[@]}" >/dev/null
t0=$(awk '{print $14 + $15}' "/proc/$rpid/stat")
redis-benchmark -p "$port" -n "$n" -c 8 -r "${KEYSPACE:-10000}" -q "${args[@]}" >"$work/out" 2>&1
t1=$(awk '{print $14 + $15}' "/proc/$rpid/stat")
if grep -q ERR "$work/out"; then cat "$work/out" >&2; exit 1; fi
awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$n" -v b="$batch" -v a="${ALG:-fixed_window}" -v l="$dir" \
  'BEGIN {printf "%s: %s, %d checks per call: Redis CPU per check %.2f us\n", l, a, b, d / hz * 1e6 / (n * b)}'
