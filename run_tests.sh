#!/usr/bin/env bash
# Runs the whole test suite: format check, clippy (warnings are errors), and
# every test. The tests start their own redis-server / redis-sentinel
# processes on free loopback ports, so this script only makes sure the
# programs are installed (as root, through apt-get, when they are missing).
#
#   ./run_tests.sh            everything
#   ./run_tests.sh api        only tests whose name contains "api" (passed to cargo test)
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# Debian package for each program the tests run.
declare -A package_of=(
  [redis-server]=redis-server
  [redis-cli]=redis-tools
  [redis-sentinel]=redis-sentinel
)
missing=()
for program in "${!package_of[@]}"; do
  command -v "$program" >/dev/null 2>&1 || missing+=("${package_of[$program]}")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  if [[ $(id -u) -eq 0 ]]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    echo "run_tests.sh: missing ${missing[*]}; install them (apt-get install -y ${missing[*]}) or run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian package may start a system-wide redis-server on 6379. The tests
# never use it (each starts its own on a free port), so it is left alone.

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    log "installing the $component component"
    rustup component add "$component"
  fi
done

# The concurrency tests open a thousand sockets at once.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

log "cargo test"
cargo test "$@"
