#!/usr/bin/env bash
# The README's test command: everything CI runs.
#
#   bash e2e/test-all.sh [extra cargo test arguments]
#
# 1. installs what is missing (Debian packages; the Kubernetes binaries, built from Go
#    modules and cached under ~/.cache/trellis; Helm likewise),
# 2. checks formatting and lints (cargo fmt, cargo clippy -D warnings),
# 3. starts a real Kubernetes control plane and a PostgreSQL server on loopback,
# 4. runs every test of the workspace against them (the tests that need them cannot
#    skip under this command),
# 5. stops everything it started, pass, fail or Ctrl-C.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
step() { printf '\n== [%4ss] %s\n' "$SECONDS" "$*"; }

# --- 1. prerequisites -------------------------------------------------------------
step "checking prerequisites"
missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v openssl >/dev/null || missing+=(openssl)
command -v setpriv >/dev/null || missing+=(util-linux)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for tool in go cargo; do
  command -v $tool >/dev/null || { echo "$tool is required but not installed" >&2; exit 1; }
done
cargo fmt --version >/dev/null && cargo clippy --version >/dev/null || {
  echo "the rustfmt and clippy components are required (rustup component add rustfmt clippy)" >&2
  exit 1
}

step "Kubernetes test binaries (built once from Go modules, then cached)"
bin=$(bash e2e/scripts/build-kube.sh)
echo "$bin"
step "Helm (built once from Go modules, then cached)"
bash e2e/scripts/build-helm.sh

# --- 2. static checks -------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# --- 3. test environments ---------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/trellis-test.XXXXXX")
chmod 755 "$work" # PostgreSQL runs as its own user when we are root and must reach its dir
envs=()            # "pid fd" of each environment script
declare -A pid_of=() # environment name -> pid of its script
teardown() {
  local status=$? e pid fd
  for e in "${envs[@]}"; do
    read -r pid fd <<<"$e"
    eval "exec $fd>&-" # EOF on the script's stdin: it stops its processes and exits
  done
  for e in "${envs[@]}"; do
    read -r pid fd <<<"$e"
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" = 0 ]; then
    rm -rf "$work"
  else
    echo "logs of the test environments are kept in $work" >&2
  fi
}
trap teardown EXIT

# launch NAME SCRIPT: starts e2e/scripts/SCRIPT with its stdin on a FIFO that only this
# shell holds open: when this shell exits, however it exits, the script sees EOF.
launch() {
  local name=$1 script=$2 fd
  mkfifo "$work/$name.in"
  bash "e2e/scripts/$script" "$work/$name" <"$work/$name.in" >"$work/$name.out" 2>"$work/$name.err" &
  pid_of[$name]=$!
  exec {fd}>"$work/$name.in"
  envs+=("${pid_of[$name]} $fd")
}

# ready NAME: waits until NAME's script prints "ready ENDPOINT"; prints ENDPOINT.
ready() {
  local name=$1
  until grep -q '^ready ' "$work/$name.out"; do
    if ! kill -0 "${pid_of[$name]}" 2>/dev/null; then
      echo "$name failed to start:" >&2
      cat "$work/$name.err" >&2
      return 1
    fi
    sleep 0.2
  done
  sed -n 's/^ready //p' "$work/$name.out"
}

step "starting PostgreSQL and the Kubernetes control plane on loopback"
started=$SECONDS
launch postgres postgres.sh
launch cluster cluster.sh
TRELLIS_TEST_DATABASE_URL=$(ready postgres)
TRELLIS_TEST_KUBECONFIG=$(ready cluster)
export TRELLIS_TEST_DATABASE_URL TRELLIS_TEST_KUBECONFIG
echo "ready in $((SECONDS - started))s: $TRELLIS_TEST_DATABASE_URL, $TRELLIS_TEST_KUBECONFIG"
"$bin/kubectl" --kubeconfig "$TRELLIS_TEST_KUBECONFIG" --request-timeout 10s get nodes

# --- 4. every test ----------------------------------------------------------------
export TRELLIS_REQUIRE_CLUSTER=1 TRELLIS_REQUIRE_POSTGRES=1
step "cargo test --workspace"
cargo test --workspace --locked "$@"
step "all tests passed"
