# Shared by cluster.sh and postgres.sh (sourced, not run): start child processes that
# cannot outlive this script, wait for them to become ready, stay up until our stdin
# closes, and tear everything down on any exit.
#
# Callers set $logs (a directory) before calling start.

pids=()

# Sends SIGTERM to all children (or $stop_signal), waits up to 5 s, then SIGKILLs.
cleanup() {
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    kill "-${stop_signal:-TERM}" "${pids[@]}" 2>/dev/null || true
    local alive
    for _ in $(seq 50); do
      alive=0
      for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
      [ $alive = 0 ] && break
      sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
  fi
  # Environments started by the Rust test helpers leave nothing on disk either.
  if [ "${TRELLIS_REMOVE_STATE:-}" = 1 ] && [ -n "${dir:-}" ]; then rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, output to $logs/NAME.log. The kernel
# sends it SIGKILL if this script dies, so even `kill -9` of the script leaves nothing.
start() {
  local name=$1; shift
  setpriv --pdeathsig KILL "$@" >"$logs/$name.log" 2>&1 </dev/null &
  pids+=($!)
}

fail() {
  echo "$(basename "$0"): $*" >&2
  local f
  for f in "$logs"/*.log; do
    [ -f "$f" ] || continue
    echo "--- last lines of $f" >&2
    tail -n 15 "$f" >&2
  done
  exit 1
}

# wait_for WHAT SECONDS CMD...: polls CMD until it succeeds; fails early if a child died.
wait_for() {
  local what=$1 secs=$2 p; shift 2
  for _ in $(seq $((secs * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || fail "a component exited while waiting for $what"; done
    sleep 0.2
  done
  fail "timed out after ${secs}s waiting for $what"
}

# Stays up until whoever started us goes away (stdin EOF) or we are signalled. `cat`
# runs in the background so that bash can run the signal trap while waiting. If a
# component dies first, everything is torn down and we exit non-zero: a broken
# environment fails the tests loudly instead of hanging them.
stay_up() {
  exec 3<&0
  cat <&3 >/dev/null &
  local watcher=$!
  pids+=("$watcher")
  wait -n || true
  if kill -0 "$watcher" 2>/dev/null; then
    fail "a component exited unexpectedly"
  fi
}

# A loopback address of our own (127.X.Y.Z), so fixed ports never clash between
# concurrent environments and nothing can leave the machine.
random_loopback() {
  echo "127.$((RANDOM % 100 + 100)).$((RANDOM % 250 + 1)).$1"
}
