//! Reads figures out of a node's Prometheus text exposition (`GET /metrics`).
//!
//! The autoscaler needs two numbers per shard and the per-table load, so this reads
//! exactly what it needs — the sum of one metric's samples over all its label sets, or
//! per `table` label — and ignores everything else (comments, other metrics, malformed
//! lines) instead of pulling in a full parser.

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

/// Samples of the metric `name` per table (its `table="<0..=255>"` label), summed over
/// the other labels. Samples without a valid table label, or not finite and
/// non-negative, are skipped.
pub fn per_table(text: &str, name: &str) -> std::collections::BTreeMap<u8, u64> {
    let mut tables = std::collections::BTreeMap::<u8, u64>::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix(name) else {
            continue;
        };
        let Some(labels) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = labels.rsplit_once('}') else {
            continue;
        };
        let table = labels.split(',').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key.trim() == "table")
                .then(|| value.trim().trim_matches('"').parse::<u8>().ok())
                .flatten()
        });
        let value = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0);
        if let (Some(table), Some(value)) = (table, value) {
            let entry = tables.entry(table).or_default();
            *entry = entry.saturating_add(value as u64);
        }
    }
    tables
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
    fn per_table_reads_the_table_label() {
        let text = "\
trellis_table_txs_total{network=\"a\",shard=\"0\",table=\"1\"} 7
trellis_table_txs_total{table=\"2\",shard=\"0\"} 5 1700000000000
trellis_table_txs_total{table=\"2\",shard=\"1\"} 1
trellis_table_txs_total{table=\"256\"} 9
trellis_table_txs_total{table=\"3\"} -1
trellis_table_txs_total{shard=\"0\"} 4
trellis_table_txs_total_created{table=\"4\"} 17
";
        let tables = per_table(text, "trellis_table_txs_total");
        assert_eq!(tables, [(1, 7), (2, 6)].into_iter().collect());
        assert!(per_table(TEXT, "trellis_epoch").is_empty());
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
