#!/usr/bin/env bash
# llmstream: one entry point for the local stack, the tests and deploys.
#   ./run.sh start [-d] [options] the whole stack on this machine: no keys, no Docker
#                                 (-d: in the background; then stop, restart, status, logs)
#   ./run.sh stop | restart | status
#   ./run.sh logs [component]     follow the logs (aws, openai, api, stream, worker, frontend)
#   ./run.sh scale N              N concurrent local worker invocations per queue
#   ./run.sh test [pytest args]   lint, type-check, and every test tier
#   ./run.sh bench [--quick|--full] the pipeline against direct streaming, side by side
#   ./run.sh deploy [--env prod]  sam build + sam deploy, then publish the chat page
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

# ensure_venv [local|dev]: the virtualenv with the project and an extra of its tools.
# `local` (the local cloud and the benchmarks) is a part of `dev` (tests, deploy), so a venv
# with dev serves both; start and bench on a fresh clone install only what they need.
ensure_venv() {
  local extra=${1:-dev} hash
  hash=$(sha1sum pyproject.toml | cut -c1-12)
  if [ ! -x "$VENV/bin/python" ]; then
    local py
    py=$(find_python)
    say "creating $VENV with $py"
    "$py" -m venv "$VENV"
  fi
  if [ ! -f "$VENV/.installed-dev-$hash" ] && [ ! -f "$VENV/.installed-$extra-$hash" ]; then
    say "installing Python dependencies ($extra) into $VENV (first run only; a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[$extra]"
    find "$VENV" -maxdepth 1 -name '.installed-*' ! -name "*-$hash" -delete
    touch "$VENV/.installed-$extra-$hash"
  fi
  export PATH="$PWD/$VENV/bin:$PATH"
}

# checkov (the IaC scanner) pins an older boto3, so it lives in a venv of its own.
ensure_checkov() {
  if [ ! -x .venv-checkov/bin/checkov ]; then
    say "installing checkov into .venv-checkov (first run only)"
    "$(find_python)" -m venv .venv-checkov
    .venv-checkov/bin/python -m pip install --quiet 'checkov>=3.2,<4'
  fi
  export CHECKOV="$PWD/.venv-checkov/bin/checkov"
}

# `sam build` needs the template's runtime (python3.12) on PATH; pyenv has it.
ensure_lambda_python() {
  command -v python3.12 >/dev/null 2>&1 && python3.12 -c '' 2>/dev/null && return
  if command -v pyenv >/dev/null 2>&1; then
    local v
    v=$(pyenv versions --bare | grep -E '^3\.12(\.|$)' | tail -1)
    if [ -n "$v" ]; then
      export PATH="$PWD/$VENV/bin:$(pyenv prefix "$v")/bin:$PATH"
      return
    fi
  fi
  echo "warning: python3.12 not found; sam build needs it (pyenv install 3.12)" >&2
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

# True if the arguments ask for the Redis Streams chunk log (`--chunk-log redis`).
wants_redis() {
  case " $* " in
    *" --chunk-log redis "* | *" --chunk-log=redis "*) return 0 ;;
  esac
  return 1
}

# `start -d`: the stack in the background, its output in .localcloud/llmstream-local/up.log.
start_detached() {
  local dir=.localcloud/llmstream-local
  mkdir -p "$dir"
  rm -f "$dir/state.json"
  nohup "$VENV/bin/python" -m localcloud up "$@" >"$dir/up.log" 2>&1 &
  local pid=$!
  say "starting in the background (pid $pid; progress: $dir/up.log)"
  for _ in $(seq 1 240); do
    if [ -f "$dir/state.json" ]; then
      sed -n '/llmstream is up/,$p' "$dir/up.log"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      cat "$dir/up.log" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "not up after 2 minutes; see $dir/up.log" >&2
  return 1
}

cmd=${1:-help}
shift || true
case "$cmd" in
  install)
    ensure_venv
    ;;
  start)
    ensure_venv local
    wants_redis "$@" && ensure_apt redis-server
    if [ "${1:-}" = "-d" ] || [ "${1:-}" = "--detach" ]; then
      shift
      start_detached "$@"
    else
      exec "$VENV/bin/python" -m localcloud up "$@"
    fi
    ;;
  stop)
    ensure_venv local
    "$VENV/bin/python" -m localcloud stop
    ;;
  restart)
    ensure_venv local
    wants_redis "$@" && ensure_apt redis-server
    "$VENV/bin/python" -m localcloud stop
    start_detached "$@"
    ;;
  status)
    ensure_venv local
    exec "$VENV/bin/python" -m localcloud status
    ;;
  scale)
    ensure_venv local
    exec "$VENV/bin/python" -m localcloud scale "$@"
    ;;
  logs)
    dir=.localcloud/llmstream-local/logs
    [ -d "$dir" ] || { echo "no logs yet: ./run.sh start first" >&2; exit 1; }
    if [ $# -gt 0 ]; then
      exec tail -n 100 -F "$dir/$1.log"
    fi
    exec tail -n 20 -F "$dir"/*.log
    ;;
  test)
    ensure_venv
    # The browser tests drive Debian's Chromium; the Redis Streams chunk log runs on
    # Debian's redis-server.
    ensure_apt chromium fonts-dejavu-core redis-server
    ensure_checkov
    ensure_lambda_python
    say "ruff"
    ruff check functions infra tests
    ruff format --check functions infra tests >/dev/null || { ruff format --diff functions infra tests; exit 1; }
    say "mypy --strict functions/"
    mypy
    say "pytest (unit, integration, e2e)"
    exec python -m pytest tests "$@"
    ;;
  bench)
    ensure_venv local
    ensure_apt redis-server  # the benchmark measures every chunk-log backend
    exec python -m tests.bench "$@"
    ;;
  deploy)
    ensure_venv
    ensure_lambda_python
    env_name=default
    while [ $# -gt 0 ]; do
      case "$1" in
        --env) env_name=$2; shift 2 ;;
        --env=*) env_name=${1#--env=}; shift ;;
        *) break ;;
      esac
    done
    stack=$(python - "$env_name" <<'PY'
import sys, tomllib
config = tomllib.load(open("samconfig.toml", "rb"))
print(config[sys.argv[1]]["global"]["parameters"]["stack_name"])
PY
)
    say "sam build ($env_name)"
    sam build --config-env "$env_name"
    say "sam deploy ($env_name -> stack $stack)"
    sam deploy --config-env "$env_name" "$@"
    say "publishing the chat page"
    python -m llmstream_deploy publish --stack "$stack"
    ;;
  help | -h | --help)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "unknown command: $cmd" >&2
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
