#!/usr/bin/env bash
# Where a command's time goes in the test cluster's control plane.
#
#   control-plane-split.sh STATE_DIR COMMAND...
#
# STATE_DIR is a running cluster.sh's. Runs COMMAND (e.g. the operator benchmark, with
# TRELLIS_TEST_KUBECONFIG=STATE_DIR/kubeconfig) and prints, for the time it ran:
#   - the apiserver's requests (watches left out): count, summed server time, and the
#     verbs/resources that took most (apiserver_request_duration_seconds);
#   - the CPU seconds of each control-plane process (/proc/PID/stat);
#   - the controller-manager's PV claim worker (busy time, syncs) and its client's
#     request latency and rate-limiter wait (its /metrics, open on loopback).
# Used for the operator rows of docs/benchmarks.md.
set -euo pipefail

dir=${1:?usage: control-plane-split.sh STATE_DIR COMMAND...}
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$("$here/scripts/build-kube.sh" --check)
kubectl=("$bin/kubectl" --kubeconfig "$dir/kubeconfig")
ip=$(sed -n 's|.*server: https://\([0-9.]*\):.*|\1|p' "$dir/kubeconfig" | head -1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cpu() { # the cluster's processes (their command lines name STATE_DIR): comm seconds
  local tick pid
  tick=$(getconf CLK_TCK)
  for pid in $(pgrep -f -- "$dir" || true); do
    [ -r "/proc/$pid/stat" ] || continue
    case $(cat "/proc/$pid/comm") in
      etcd | kube-apiserver | kube-controller | kube-scheduler | kwok)
        awk -v t="$tick" -v c="$(cat "/proc/$pid/comm")" '{ printf "%s %.2f\n", c, ($14 + $15) / t }' "/proc/$pid/stat" ;;
    esac
  done | sort
}
snapshot() { # snapshot NAME
  "${kubectl[@]}" get --raw /metrics >"$tmp/api.$1"
  curl -sk "https://$ip:10257/metrics" >"$tmp/kcm.$1" || : >"$tmp/kcm.$1"
  cpu >"$tmp/cpu.$1"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
snapshot before
"$@"
snapshot after
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

# apiserver_request_duration_seconds_{sum,count}{verb,resource,subresource,...}: the
# difference per verb and resource, watches and CONNECT left out.
awk '
  function key(line,   verb, res, s) {
    verb = line; sub(/.*verb="/, "", verb); sub(/".*/, "", verb)
    res = line; sub(/.*[{,]resource="/, "", res); sub(/".*/, "", res)
    s = ""; if (line ~ /subresource="[^"]+"/) { s = line; sub(/.*subresource="/, "", s); sub(/".*/, "", s); s = "/" s }
    return verb " " res s
  }
  /^apiserver_request_duration_seconds_(sum|count)\{/ {
    if ($0 ~ /verb="(WATCH|CONNECT)"/) next
    kind = ($0 ~ /_sum\{/) ? "sum" : "count"
    k = key($0); v = $NF
    if (FILENAME ~ /before$/) before[kind, k] += v; else { after[kind, k] += v; keys[k] = 1 }
  }
  END {
    for (k in keys) {
      n = after["count", k] - before["count", k]; s = after["sum", k] - before["sum", k]
      if (n <= 0) continue
      N += n; S += s; line[k] = sprintf("  %-40s n=%6d  %7.1f s  mean %6.1f ms", k, n, s, 1000 * s / n); by[k] = s
    }
    printf "apiserver: %d requests, %.1f s summed server time, mean %.1f ms\n", N, S, N ? 1000 * S / N : 0
    for (i = 0; i < 10; i++) {
      best = ""; for (k in by) if (best == "" || by[k] > by[best]) best = k
      if (best == "") break
      print line[best]; delete by[best]
    }
  }' "$tmp/api.before" "$tmp/api.after"

echo "CPU seconds while it ran:"
join "$tmp/cpu.before" "$tmp/cpu.after" | awk '{ printf "  %-16s %6.1f\n", $1, $3 - $2 }'

awk '
  /^workqueue_work_duration_seconds_(sum|count)\{name="claims"\}/ ||
  /^rest_client_request_duration_seconds_(sum|count)\{/ ||
  /^rest_client_rate_limiter_duration_seconds_(sum|count)\{/ {
    name = $1; sub(/\{.*/, "", name)
    if (FILENAME ~ /before$/) b[name] += $NF; else a[name] += $NF
  }
  END {
    w = "workqueue_work_duration_seconds"; r = "rest_client_request_duration_seconds"
    l = "rest_client_rate_limiter_duration_seconds"
    n = a[w "_count"] - b[w "_count"]; s = a[w "_sum"] - b[w "_sum"]
    if (n > 0) printf "controller-manager: PV claim worker busy %.1f s, %d syncs (%.0f ms each)\n", s, n, 1000 * s / n
    n = a[r "_count"] - b[r "_count"]; s = a[r "_sum"] - b[r "_sum"]
    if (n > 0) printf "controller-manager: %d API requests, %.0f ms mean; rate-limiter wait %.2f s in total\n", n, 1000 * s / n, a[l "_sum"] - b[l "_sum"]
  }' "$tmp/kcm.before" "$tmp/kcm.after"
