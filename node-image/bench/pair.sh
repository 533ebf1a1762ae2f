#!/bin/bash
# Compares two trellis-node builds under the same load generator, alternated A B B A per
# rate so that a machine getting busier or quieter affects both alike
# (docs/benchmarks.md, issue 3). One line per run: finalized tx/s, p50/p99 finality,
# validators' CPU and bytes written per finalized transfer, load average at the end.
#
#   node-image/bench/pair.sh BENCH NODE_A NODE_B [RATE:BATCH:SECONDS ...]
#   e.g. node-image/bench/pair.sh target/release/trellis-node-bench /tmp/main-node \
#          target/release/trellis-node 1000:100:20 4000:100:20 8000:250:30
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
bench=$1 a=$2 b=$3
shift 3
loads=("$@")
[ ${#loads[@]} -gt 0 ] || loads=(1000:100:20 2000:100:20 4000:100:20 8000:250:30)
run() { # node rate batch seconds
  local out
  out=$("$bench" --seconds "$4" --rate "$2" --batch "$3" --node-bin "$1" 2>&1)
  echo "$(date -u +%H:%M) $1 rate=$2 batch=$3 s=$4 load=$(cut -d' ' -f1 /proc/loadavg) | $(
    echo "$out" | grep -E 'finalized in|latency|CPU|disk writes' |
      sed 's/(all 4.*//; s/finality latency (admission → seen finalized)://;
           s/CPU while loading and draining ([0-9]* s)://; s/finalized in window://;
           s/disk writes while loading and draining://; s/(.*samples)//' | tr '\n' '|')"
}
for load in "${loads[@]}"; do
  IFS=: read -r rate batch seconds <<<"$load"
  for node in "$a" "$b" "$b" "$a"; do
    run "$node" "$rate" "$batch" "$seconds"
  done
done
