//! Reads figures out of a node's Prometheus text exposition (`GET /metrics`).
//!
//! The autoscaler needs two numbers per shard, so this reads exactly what it needs — the
//! sum of one metric's samples over all its label sets — and ignores everything else
//! (comments, other metrics, malformed lines) instead of pulling in a full parser.

/// Sum of every sample of the metric `name` (any labels), `None` when the text has none.
/// Samples that are not finite numbers are skipped: a node's `NaN` must not poison a sum.
pub fn metric_total(text: &str, name: &str) -> Option<f64> {
    let mut total = None::<f64>;
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // The name must end here: `trellis_txs` is not `trellis_txs_committed_total`.
        let rest = match rest.chars().next() {
            Some('{') => match rest.rfind('}') {
                Some(end) => &rest[end + 1..],
                None => continue,
            },
            Some(c) if c.is_whitespace() => rest,
            _ => continue,
        };
        // `value [timestamp]`
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        if let Ok(v) = value.parse::<f64>()
            && v.is_finite()
        {
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP trellis_txs_committed_total Transactions in finalized blocks.
# TYPE trellis_txs_committed_total counter
trellis_txs_committed_total{network=\"a\",shard=\"0\"} 1200
trellis_txs_committed_total_created 17000000
trellis_mempool_depth{network=\"a\",shard=\"0\"} 35
trellis_table_txs_total{table=\"1\"} 7
trellis_table_txs_total{table=\"2\"} 5 1700000000000
trellis_finalized_height 99
broken_line{
trellis_peers NaN
";

    #[test]
    fn sums_one_metric_over_its_label_sets() {
        assert_eq!(
            metric_total(TEXT, "trellis_txs_committed_total"),
            Some(1200.0)
        );
        assert_eq!(metric_total(TEXT, "trellis_table_txs_total"), Some(12.0));
        assert_eq!(metric_total(TEXT, "trellis_finalized_height"), Some(99.0));
    }

    #[test]
    fn a_prefix_of_another_metric_is_not_that_metric() {
        assert_eq!(metric_total(TEXT, "trellis_txs"), None);
        assert_eq!(metric_total(TEXT, "trellis_table_txs"), None);
    }

    #[test]
    fn absent_malformed_and_non_finite_samples_give_none() {
        assert_eq!(metric_total(TEXT, "trellis_epoch"), None);
        assert_eq!(metric_total(TEXT, "broken_line"), None);
        assert_eq!(metric_total(TEXT, "trellis_peers"), None);
        assert_eq!(metric_total("", "trellis_mempool_depth"), None);
    }
}
