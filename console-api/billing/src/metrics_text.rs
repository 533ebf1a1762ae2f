//! The few figures monitoring needs, read from a node's Prometheus text exposition
//! (`GET /metrics`, names from the node contract). Unknown series are ignored; a
//! malformed line is skipped rather than failing the whole scrape.

use trellis_node_api::metrics as names;

/// One node's figures at one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeMetrics {
    /// The `shard` label of the series (absent when the node exposes none).
    pub shard: Option<u32>,
    pub finalized_height: Option<u64>,
    /// A counter since the node process started (it resets on restart).
    pub txs_committed_total: Option<u64>,
    pub mempool_depth: Option<u64>,
    pub epoch: Option<u64>,
    pub peers: Option<u64>,
    pub finality_latency_sum_seconds: Option<f64>,
    pub finality_latency_count: Option<u64>,
}

fn parse_line(line: &str) -> Option<(&str, &str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, rest) = match line.find('{') {
        Some(open) => {
            let close = line[open..].find('}')? + open;
            (&line[..close + 1], &line[close + 1..])
        }
        None => line.split_once(' ')?,
    };
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    let (name, labels) = match series.find('{') {
        Some(open) => (&series[..open], &series[open + 1..series.len() - 1]),
        None => (series, ""),
    };
    Some((name, labels, value))
}

fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

fn whole(value: f64) -> Option<u64> {
    (value.is_finite() && value >= 0.0 && value <= u64::MAX as f64).then_some(value as u64)
}

/// The contract's series from a scrape.
pub fn parse(text: &str) -> NodeMetrics {
    let mut metrics = NodeMetrics::default();
    let latency_sum = format!("{}_sum", names::FINALITY_LATENCY_SECONDS);
    let latency_count = format!("{}_count", names::FINALITY_LATENCY_SECONDS);
    for (name, labels, value) in text.lines().filter_map(parse_line) {
        if metrics.shard.is_none()
            && let Some(shard) = label(labels, names::LABEL_SHARD).and_then(|s| s.parse().ok())
        {
            metrics.shard = Some(shard);
        }
        match name {
            n if n == names::FINALIZED_HEIGHT => metrics.finalized_height = whole(value),
            n if n == names::TXS_COMMITTED_TOTAL => metrics.txs_committed_total = whole(value),
            n if n == names::MEMPOOL_DEPTH => metrics.mempool_depth = whole(value),
            n if n == names::EPOCH => metrics.epoch = whole(value),
            n if n == names::PEERS => metrics.peers = whole(value),
            n if n == latency_sum => {
                metrics.finality_latency_sum_seconds = value.is_finite().then_some(value)
            }
            n if n == latency_count => metrics.finality_latency_count = whole(value),
            _ => {}
        }
    }
    metrics
}

/// How much a counter grew between two scrapes; a smaller value means the process
/// restarted, and the counter counted from zero since.
pub fn counter_increase(previous: Option<u64>, current: u64) -> u64 {
    match previous {
        Some(previous) if current >= previous => current - previous,
        Some(_) => current,
        // The first scrape of a node: what it counted before is unknown, so nothing.
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_series_are_read_and_junk_ignored() {
        let text = "# HELP trellis_finalized_height Height\n\
            # TYPE trellis_finalized_height gauge\n\
            trellis_finalized_height{network=\"dev\",shard=\"2\"} 42\n\
            trellis_txs_committed_total{network=\"dev\",shard=\"2\"} 1000\n\
            trellis_mempool_depth{network=\"dev\",shard=\"2\"} 7\n\
            trellis_peers{network=\"dev\",shard=\"2\"} 3\n\
            trellis_epoch{network=\"dev\",shard=\"2\"} 1\n\
            trellis_finality_latency_seconds_sum{network=\"dev\",shard=\"2\"} 12.5\n\
            trellis_finality_latency_seconds_count{network=\"dev\",shard=\"2\"} 50\n\
            trellis_finality_latency_seconds_bucket{le=\"0.5\",network=\"dev\",shard=\"2\"} 40\n\
            garbage line without value\n\
            other_metric 1\n\
            # EOF\n";
        let metrics = parse(text);
        assert_eq!(metrics.shard, Some(2));
        assert_eq!(metrics.finalized_height, Some(42));
        assert_eq!(metrics.txs_committed_total, Some(1000));
        assert_eq!(metrics.mempool_depth, Some(7));
        assert_eq!(metrics.peers, Some(3));
        assert_eq!(metrics.epoch, Some(1));
        assert_eq!(metrics.finality_latency_sum_seconds, Some(12.5));
        assert_eq!(metrics.finality_latency_count, Some(50));
        assert_eq!(parse(""), NodeMetrics::default());
    }

    #[test]
    fn counters_survive_restarts() {
        assert_eq!(counter_increase(Some(10), 15), 5);
        assert_eq!(counter_increase(Some(10), 3), 3);
        assert_eq!(counter_increase(None, 99), 0);
    }
}
