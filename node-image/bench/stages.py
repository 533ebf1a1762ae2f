#!/usr/bin/env python3
"""Summarises the chain actor's stage timings (log target trellis_node::timing, debug level)
from the node logs of a trellis-node-bench run kept with
`--keep --node-log "warn,trellis_node::timing=debug"`:

    python3 node-image/bench/stages.py <network dir> [HH:MM:SS HH:MM:SS]

The optional UTC times keep only the lines between them (e.g. the load window). Prints,
per message kind and per block stage (proposed, verified, executed), p50/p90/max/mean of
each field, and the interval between consecutive proposals (docs/node-performance.md)."""
import re, sys, glob, statistics
from datetime import datetime
ansi = re.compile(r'\x1b\[[0-9;]*m')
kv = re.compile(r'(\w+)=(\S+)')
root = sys.argv[1]
lo = sys.argv[2] if len(sys.argv) > 2 else None
hi = sys.argv[3] if len(sys.argv) > 3 else None
rows = {}
props = []
for path in sorted(glob.glob(root + '/c0v*/node.log')):
    node = path.split('/')[-2]
    for line in open(path, errors='replace'):
        line = ansi.sub('', line)
        if 'trellis_node::timing' not in line:
            continue
        ts = line.split()[0]
        hms = ts[11:19]
        if lo and (hms < lo or hms > hi):
            continue
        f = dict(kv.findall(line))
        what = line.split('trellis_node::timing:')[1].split()[0]
        if what == 'message':
            what = 'msg ' + f.pop('kind')
        if what == 'proposed':
            props.append((int(f['height']), datetime.fromisoformat(ts.rstrip('Z')), int(f['txs'])))
        rows.setdefault(what, []).append({k: int(v) for k, v in f.items() if v.isdigit()})
def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else 0
for what, rs in sorted(rows.items()):
    keys = [k for k in rs[0] if k not in ('height',)]
    parts = []
    for k in keys:
        xs = [r.get(k, 0) for r in rs]
        parts.append(f"{k} p50 {q(xs,.5)} p90 {q(xs,.9)} max {max(xs)} mean {statistics.mean(xs):.0f}")
    print(f"{what} (n={len(rs)}): " + '; '.join(parts))
props.sort()
gaps = [(b[1] - a[1]).total_seconds() * 1000 for a, b in zip(props, props[1:]) if b[0] == a[0] + 1]
if gaps:
    print(f"proposal interval ms: p50 {q(gaps,.5):.0f} p90 {q(gaps,.9):.0f} mean {statistics.mean(gaps):.0f} (n={len(gaps)}); txs/block mean {statistics.mean(p[2] for p in props):.0f}")
