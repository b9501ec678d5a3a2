#!/usr/bin/env bash
# Installs the Debian packages named as arguments if the programs they bring
# are missing, with one apt-get update and one apt-get install.
# Usage: scripts/install_packages.sh PROGRAM=PACKAGE ...
#   scripts/install_packages.sh redis-server=redis-server redis-cli=redis-tools
# A PROGRAM of the form py:MODULE checks for a Python module instead
# (py:ensurepip=python3-venv: `python3 -m venv` works).
# As root it runs apt-get directly; otherwise through passwordless sudo.
set -euo pipefail

missing=()
for pair in "$@"; do
  program=${pair%%=*}
  package=${pair#*=}
  if [[ $program == py:* ]]; then
    python3 -c "import ${program#py:}" >/dev/null 2>&1 || missing+=("$package")
  else
    command -v "$program" >/dev/null 2>&1 || missing+=("$package")
  fi
done
((${#missing[@]})) || exit 0

printf '\033[1m==> installing %s\033[0m\n' "${missing[*]}"
if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "missing ${missing[*]}: install them (apt-get install -y ${missing[*]}) or run as root" >&2
  exit 1
fi
command -v apt-get >/dev/null 2>&1 || { echo "no apt-get: install ${missing[*]} by hand" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
