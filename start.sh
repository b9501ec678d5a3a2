#!/usr/bin/env bash
# Runs the rate limiter on this machine, from a fresh clone:
#   1. reads .env if there is one (the service reads it too);
#   2. makes sure a Redis answers on REDIS_HOST:REDIS_PORT: reuses one that
#      does, otherwise installs redis-server (apt-get, as root) if needed and
#      starts a local one with its data and log under .run/redis/;
#   3. builds the release binary (cargo reuses an up-to-date build);
#   4. runs the service and prints its URLs.
# Ctrl-C stops the service and the Redis this script started (not one it
# found running).
#
#   ./start.sh            as above
#   ./start.sh --docker   docker compose up instead (needs a Docker engine)
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'start.sh: %s\n' "$*" >&2; exit 1; }

if [[ ${1:-} == "--docker" ]]; then
  docker info >/dev/null 2>&1 || die "--docker needs a running Docker engine; run ./start.sh without it"
  [[ -f docker-compose.yml ]] || die "docker-compose.yml is missing"
  exec docker compose up --build
fi
[[ $# -eq 0 ]] || die "unknown argument: $1 (usage: ./start.sh [--docker])"

if [[ -f .env ]]; then
  say "reading .env"
  set -a
  # shellcheck disable=SC1091
  . ./.env
  set +a
fi

# Does something answer PING at $1:$2? (bash's /dev/tcp: no redis-cli needed)
redis_answers() {
  local reply
  # In a subshell so that bash's own "connection refused" stays quiet.
  reply=$(
    exec 2>/dev/null
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 line <&3 && printf '%s' "$line"
  ) || return 1
  # +PONG, or -NOAUTH when it wants a password: either way a Redis is there.
  [[ $reply == "+PONG"* || $reply == "-NOAUTH"* ]]
}

# Does something accept TCP connections on 127.0.0.1:$1?
port_open() { (exec 2>/dev/null; exec 4<>"/dev/tcp/127.0.0.1/$1"); }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root to run: $*"
  fi
}

started_redis_pid=""
service_pid=""
cleanup() {
  trap - EXIT INT TERM
  if [[ -n $service_pid ]] && kill -0 "$service_pid" 2>/dev/null; then
    kill -TERM "$service_pid" 2>/dev/null || true
    wait "$service_pid" 2>/dev/null || true
  fi
  if [[ -n $started_redis_pid ]] && kill -0 "$started_redis_pid" 2>/dev/null; then
    say "stopping the Redis started by start.sh"
    kill -TERM "$started_redis_pid" 2>/dev/null || true
    wait "$started_redis_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -n ${REDIS_URL:-} ]]; then
  say "REDIS_URL is set: using that Redis as it is"
else
  redis_host=${REDIS_HOST:-127.0.0.1}
  redis_port=${REDIS_PORT:-6379}
  if redis_answers "$redis_host" "$redis_port"; then
    say "Redis answers on $redis_host:$redis_port: using it"
  elif [[ $redis_host != "127.0.0.1" && $redis_host != "localhost" && $redis_host != "::1" ]]; then
    die "no Redis answers on $redis_host:$redis_port (REDIS_HOST is not local, so start.sh will not start one)"
  else
    if ! command -v redis-server >/dev/null 2>&1; then
      say "installing redis-server"
      command -v apt-get >/dev/null 2>&1 || die "redis-server is not installed and there is no apt-get; install Redis and run again"
      as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
    fi
    # The package may have started a system-wide Redis on the default port.
    if redis_answers "$redis_host" "$redis_port"; then
      say "Redis answers on $redis_host:$redis_port: using it"
    else
      mkdir -p .run/redis
      say "starting redis-server on 127.0.0.1:$redis_port (data and log in .run/redis/)"
      auth=()
      [[ -n ${REDIS_PASSWORD:-} ]] && auth=(--requirepass "$REDIS_PASSWORD")
      redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$PWD/.run/redis" \
        --logfile "$PWD/.run/redis/redis.log" --daemonize no "${auth[@]}" &
      started_redis_pid=$!
      for _ in $(seq 1 100); do
        redis_answers 127.0.0.1 "$redis_port" && break
        kill -0 "$started_redis_pid" 2>/dev/null || die "redis-server exited; see .run/redis/redis.log"
        sleep 0.1
      done
      redis_answers 127.0.0.1 "$redis_port" || die "redis-server did not answer; see .run/redis/redis.log"
    fi
  fi
fi

command -v cargo >/dev/null 2>&1 || die "cargo is not installed (https://rustup.rs)"
say "building the release binary (the first build takes a few minutes)"
cargo build --release --quiet

# Each connection is a file descriptor: lift the soft limit to the hard one
# so the service can hold thousands of connections (see README).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

port=${PORT:-8000}
[[ $port == 0 ]] && die "PORT=0 picks a free port, which start.sh cannot print: set a port (or run ./target/release/rate-limiter, which logs it)"
# cargo puts the binary under CARGO_TARGET_DIR when it is set.
binary="${CARGO_TARGET_DIR:-target}/release/rate-limiter"
"$binary" &
service_pid=$!

public_host=${HOST:-0.0.0.0}
[[ $public_host == "0.0.0.0" || $public_host == "::" ]] && public_host=localhost
for _ in $(seq 1 100); do
  if port_open "$port"; then
    grpc_host=${GRPC_HOST:-0.0.0.0}
    [[ $grpc_host == "0.0.0.0" || $grpc_host == "::" ]] && grpc_host=localhost
    grpc="$grpc_host:${GRPC_PORT:-8081}   (Envoy's rate_limit_service: envoy_grpc, HTTP/2)"
    [[ -n ${GRPC_UDS:-} ]] && grpc="unix:$GRPC_UDS"
    admin="not enabled (set ADMIN_TOKEN, 16+ characters)"
    [[ -n ${ADMIN_TOKEN:-} ]] && admin="http://$public_host:$port/admin/...  (Authorization: Bearer \$ADMIN_TOKEN)"
    cat <<INFO

  Rate limiter running (ulimit -n $(ulimit -n)).

    API        POST http://$public_host:$port/api/resource
    Status     GET  http://$public_host:$port/rate-limit/status
    Health     GET  http://$public_host:$port/health
    Dashboard       http://$public_host:$port/dashboard
    Metrics         http://$public_host:$port/metrics   (from this machine, or with the admin token)
    Admin           $admin
    Docs            http://$public_host:$port/docs   (ReDoc: /redoc, OpenAPI: /api-docs/openapi.json)
    Envoy gRPC      $grpc
    Forward-auth    http://$public_host:$port/v1/forward-auth   (for TRUSTED_PROXIES only)

  Try:   curl -i -X POST http://$public_host:$port/api/resource -H 'X-API-Key: demo-key'
  Stop:  Ctrl-C (stops the service and any Redis start.sh started)
  Check the settings in force:  $binary settings

INFO
    break
  fi
  kill -0 "$service_pid" 2>/dev/null || break
  sleep 0.1
done

set +e
wait "$service_pid"
status=$?
service_pid=""
exit "$status"
