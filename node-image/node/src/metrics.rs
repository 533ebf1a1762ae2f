//! Prometheus metrics named by the node contract (`trellis_node_api::metrics`), labelled
//! by network and shard.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::sync::Arc;
use trellis_node_api::metrics as names;

/// Finality latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
];

/// The node's metrics; cheap to clone (shared handles).
#[derive(Clone)]
pub struct ChainMetrics {
    registry: Arc<Registry>,
    pub finalized_height: Gauge,
    pub txs_committed: Counter,
    pub mempool_depth: Gauge,
    pub receipts_pending: Gauge,
    pub epoch: Gauge,
    pub peers: Gauge,
    pub finality_latency: Histogram,
    /// Sharded networks: the shard count this node knows.
    pub shard_count: Gauge,
    /// Sharded networks: executed transactions per owned table (label `table`).
    pub table_txs: Family<Vec<(String, String)>, Counter>,
    /// Sharded networks: mempool depth per owned table (label `table`).
    pub table_mempool_depth: Family<Vec<(String, String)>, Gauge>,
}

impl ChainMetrics {
    pub fn new(network: &str, shard: u16) -> Self {
        Self::for_committee(network, &shard.to_string())
    }

    /// Metrics labelled with a committee name: a shard number, or `beacon`.
    pub fn for_committee(network: &str, shard: &str) -> Self {
        let labels = [
            (
                Cow::Borrowed(names::LABEL_NETWORK),
                Cow::Owned(network.to_string()),
            ),
            (
                Cow::Borrowed(names::LABEL_SHARD),
                Cow::Owned(shard.to_string()),
            ),
        ];
        let mut registry = Registry::with_labels(labels.into_iter());
        let finalized_height = Gauge::default();
        let txs_committed = Counter::default();
        let mempool_depth = Gauge::default();
        let receipts_pending = Gauge::default();
        let epoch = Gauge::default();
        let peers = Gauge::default();
        let finality_latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            names::FINALIZED_HEIGHT,
            "Height of the last finalized and executed block",
            finalized_height.clone(),
        );
        // prometheus-client appends `_total` to counters.
        registry.register(
            names::TXS_COMMITTED_TOTAL.trim_end_matches("_total"),
            "Transactions in finalized blocks",
            txs_committed.clone(),
        );
        registry.register(
            names::MEMPOOL_DEPTH,
            "Transactions waiting in the mempool",
            mempool_depth.clone(),
        );
        registry.register(
            names::RECEIPTS_PENDING,
            "Cross-shard receipts owed to this shard's tables, verified and not yet credited, as far as this node knows",
            receipts_pending.clone(),
        );
        registry.register(names::EPOCH, "Current epoch", epoch.clone());
        registry.register(names::PEERS, "Connected committee peers", peers.clone());
        registry.register(
            names::FINALITY_LATENCY_SECONDS,
            "Seconds from mempool admission to finalization",
            finality_latency.clone(),
        );
        let shard_count = Gauge::default();
        registry.register(
            names::SHARD_COUNT,
            "Shard count of the beacon state this node holds (sharded networks)",
            shard_count.clone(),
        );
        let table_txs = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            names::TABLE_TXS_TOTAL.trim_end_matches("_total"),
            "Successfully executed transactions per owned table (sharded networks)",
            table_txs.clone(),
        );
        let table_mempool_depth = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register(
            names::TABLE_MEMPOOL_DEPTH,
            "Transactions waiting in the mempool per owned table of their sender (sharded networks)",
            table_mempool_depth.clone(),
        );
        Self {
            shard_count,
            table_txs,
            table_mempool_depth,
            registry: Arc::new(registry),
            finalized_height,
            txs_committed,
            mempool_depth,
            receipts_pending,
            epoch,
            peers,
            finality_latency,
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_contract_names_with_labels() {
        let m = ChainMetrics::new("dev", 0);
        m.finalized_height.set(7);
        m.txs_committed.inc_by(3);
        m.finality_latency.observe(0.2);
        let text = m.encode();
        for name in [
            names::FINALIZED_HEIGHT,
            names::TXS_COMMITTED_TOTAL,
            names::MEMPOOL_DEPTH,
            names::RECEIPTS_PENDING,
            names::EPOCH,
            names::PEERS,
            names::FINALITY_LATENCY_SECONDS,
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains("trellis_finalized_height{network=\"dev\",shard=\"0\"} 7"));
        assert!(text.contains("trellis_txs_committed_total{network=\"dev\",shard=\"0\"} 3"));
        let beacon = ChainMetrics::for_committee("dev", "beacon");
        beacon.shard_count.set(2);
        beacon
            .table_txs
            .get_or_create(&vec![("table".to_string(), "7".to_string())])
            .inc_by(4);
        let text = beacon.encode();
        assert!(text.contains("trellis_shard_count{network=\"dev\",shard=\"beacon\"} 2"));
        assert!(
            text.contains(
                "trellis_table_txs_total{network=\"dev\",shard=\"beacon\",table=\"7\"} 4"
            ),
            "{text}"
        );
    }
}
