#!/usr/bin/env bash
# llmstream: one entry point for the local stack, the tests and (later) deploys.
#   ./run.sh start [up options]   the whole stack on this machine: no keys, no Docker
#   ./run.sh test [pytest args]   lint, type-check, and every test tier
#   ./run.sh install              create .venv and install everything (the others do it too)
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
export SAM_CLI_TELEMETRY=0  # sam must not phone home (and there is no network here)

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }

find_python() {
  # Python >= 3.11: the one on PATH, else pyenv's.
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for v in 3.11 3.12 3.13; do
      local p
      p=$(pyenv prefix "$(pyenv versions --bare | grep -E "^${v}(\.|$)" | tail -1)" 2>/dev/null)/bin/python3
      [ -x "$p" ] && { echo "$p"; return; }
    done
  fi
  echo "error: Python >= 3.11 not found" >&2
  exit 1
}

ensure_venv() {
  local stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
  if [ ! -x "$VENV/bin/python" ]; then
    local py
    py=$(find_python)
    say "creating $VENV with $py"
    "$py" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ]; then
    say "installing Python dependencies into $VENV (first run only; a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
  export PATH="$PWD/$VENV/bin:$PATH"
}

# Debian packages a later tier needs (redis-server, chromium), installed when missing.
ensure_apt() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return
  say "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

cmd=${1:-help}
shift || true
case "$cmd" in
  install)
    ensure_venv
    ;;
  start)
    ensure_venv
    exec "$VENV/bin/python" -m localcloud up "$@"
    ;;
  test)
    ensure_venv
    say "ruff"
    ruff check functions infra tests
    ruff format --check functions infra tests >/dev/null || { ruff format --diff functions infra tests; exit 1; }
    say "mypy --strict functions/"
    mypy
    say "pytest (unit, integration, e2e)"
    exec python -m pytest tests "$@"
    ;;
  help | -h | --help)
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "unknown command: $cmd" >&2
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
