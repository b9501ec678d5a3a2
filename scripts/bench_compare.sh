#!/usr/bin/env bash
# Two builds of the service side by side, in ONE run: the same Redis, the
# same traffic, the cases interleaved round by round, so that the machine's
# noise falls on both alike. For each case: req/s and the service's CPU time
# per request (user + system time of its process, from /proc, divided by the
# requests served), and the ratio of the second build to the first; and
# Redis's CPU time per request of each (per decision, for allowed traffic).
#   scripts/bench_compare.sh BEFORE_BINARY AFTER_BINARY
#   ROUNDS=5 DURATION=5s scripts/bench_compare.sh /tmp/rl-before target/release/rate-limiter
# Cases: livez (GET /livez), allowed-10k (POST /api/resource over 10,000 keys,
# always allowed), denied (1,000 keys over their limit), all at 64 connections
# (CONNS=1000 for another count), one worker per instance (WORKERS=2 for two).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -eq 2 ]] || { echo "usage: $0 BEFORE_BINARY AFTER_BINARY" >&2; exit 2; }
before=$1 after=$2
scripts/install_packages.sh redis-server=redis-server wrk=wrk curl=curl

rounds=${ROUNDS:-3}
duration=${DURATION:-5s}
conns=${CONNS:-64}
workers=${WORKERS:-1}
# shellcheck source=scripts/bench_lib.sh
source scripts/bench_lib.sh

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" &
pids+=($!)
redis_pid=$!
sleep 0.5

declare -A port pid
start() { # name binary limit window -> sets port[name], pid[name]
  local name=$1 binary=$2 limit=$3 window=$4 p
  p=$(free_port)
  env HOST=127.0.0.1 GRPC_PORT=0 PORT="$p" REDIS_URL="redis://127.0.0.1:$redis_port/0" LOG_LEVEL=warn WORKERS="$workers" \
    RATE_LIMIT_USER_LIMIT="$limit" RATE_LIMIT_USER_WINDOW="$window" "$binary" >"$work/$name.log" 2>&1 &
  pids+=($!)
  pid[$name]=$!
  port[$name]=$p
  wait_http "http://127.0.0.1:$p/livez"
}
# One worker each: the CPU of one process serving one stream of traffic.
start before-allow "$before" 100000000 60
start after-allow "$after" 100000000 60
start before-deny "$before" 1 1d
start after-deny "$after" 1 1d
for b in before after; do
  KEYS=1000 KEY_PREFIX=abuser-$b ORDER=sequential wrk -t1 -c1 -d2s -s scripts/wrk/random_keys.lua \
    "http://127.0.0.1:${port[$b-deny]}/api/resource" >/dev/null
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # build case -> "rps us_per_request redis_us_per_request"
  local build=$1 case=$2 url env=() script=(-s scripts/wrk/random_keys.lua) name
  case $case in
    livez) name=$build-allow; url="http://127.0.0.1:${port[$name]}/livez"; script=() ;;
    allowed-10k) name=$build-allow; url="http://127.0.0.1:${port[$name]}/api/resource"; env=(KEYS=10000) ;;
    denied) name=$build-deny; url="http://127.0.0.1:${port[$name]}/api/resource"; env=(KEYS=1000 KEY_PREFIX=abuser-$build) ;;
  esac
  local t0 t1 r0 r1 out total rps
  t0=$(cpu_ticks "${pid[$name]}"); r0=$(cpu_ticks "$redis_pid")
  out=$(env "${env[@]}" wrk -t2 -c"$conns" -d"$duration" "${script[@]}" "$url" 2>&1)
  t1=$(cpu_ticks "${pid[$name]}"); r1=$(cpu_ticks "$redis_pid")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  awk -v r="$rps" -v d="$((t1 - t0))" -v e="$((r1 - r0))" -v n="$total" -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%.0f %.1f %.1f\n", r, (n > 0 ? d / hz * 1e6 / n : 0), (n > 0 ? e / hz * 1e6 / n : 0)}'
}

declare -A results
cases=(livez allowed-10k denied)
# Which build goes first alternates round by round: the second run of a
# pair read 5-9 % more CPU for the same code in some runs (BENCHMARKS.md,
# "Fifth round"), and alternating cancels that out of the medians.
for round in $(seq 1 "$rounds"); do
  order=(before after)
  ((round % 2 == 0)) && order=(after before)
  for case in "${cases[@]}"; do
    for build in "${order[@]}"; do
      r=$(run "$build" "$case")
      printf '  round %s/%s  %-12s %-7s %s\n' "$round" "$rounds" "$case" "$build" "$r" >&2
      results[$case,$build]+="$r;"
    done
  done
done

median() { tr ';' '\n' <<<"$1" | sed '/^$/d' | sort -n -k"$2,$2" | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
echo
echo "Machine: $(nproc) cores; $workers worker(s) per instance; wrk -t2 -c$conns, $duration per run, median of $rounds rounds"
printf '%-12s %12s %12s %8s %14s %14s %8s %13s %13s\n' case "before r/s" "after r/s" ratio "before us/req" "after us/req" ratio "Redis before" "Redis after"
for case in "${cases[@]}"; do
  read -r rb _ <<<"$(median "${results[$case,before]}" 1)"
  read -r ra _ <<<"$(median "${results[$case,after]}" 1)"
  read -r _ cb <<<"$(median "${results[$case,before]}" 2)"
  read -r _ ca <<<"$(median "${results[$case,after]}" 2)"
  read -r _ _ db <<<"$(median "${results[$case,before]}" 3)"
  read -r _ _ da <<<"$(median "${results[$case,after]}" 3)"
  awk -v c="$case" -v rb="$rb" -v ra="$ra" -v cb="$cb" -v ca="$ca" -v db="$db" -v da="$da" \
    'BEGIN {printf "%-12s %12.0f %12.0f %8.2f %14.1f %14.1f %8.2f %13.1f %13.1f\n", c, rb, ra, (rb ? ra / rb : 0), cb, ca, (cb ? ca / cb : 0), db, da}'
done
