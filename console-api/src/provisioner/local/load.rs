//! What the console's built-in autoscaler reads of a local sharded network
//! ([`crate::networks::autoscale`]): the beacon's shard count in force, whether a change
//! is under way, and each in-service shard's committed-transactions counter and mempool
//! depth from its validators' `/metrics` (read with the operator's parser,
//! `trellis_autoscale::scrape`, so both modes measure the same figures).

use trellis_autoscale::scrape::metric_total;
use trellis_node_api::metrics::{MEMPOOL_DEPTH, TXS_COMMITTED_TOTAL};

use super::record::{NetworkRecord, NodeRecord};
use super::{Inner, rpc_address, scaling};
use crate::provisioner::{NetworkLoad, ProvisionError, ShardReading};

/// The load of `record`'s network; `None` when it is not sharded (nothing to scale).
pub(super) async fn network_load(
    inner: &Inner,
    record: &NetworkRecord,
) -> Result<Option<NetworkLoad>, ProvisionError> {
    let Some(sharding) = &record.sharding else {
        return Ok(None);
    };
    let map = scaling::shard_map(inner, record)
        .await
        .ok_or_else(|| ProvisionError::Unavailable("the beacon committee did not answer".into()))?;
    let in_service = map.shard_count;
    let scaling = map.pending_shard_count.is_some()
        || map.resharding
        || sharding.shard_count != in_service
        || record.chains.iter().any(|c| c.draining && !c.retired);
    let shards = record
        .chains
        .iter()
        .filter(|c| !c.is_beacon() && !c.retired && c.shard < in_service);
    let readings = futures::future::join_all(shards.map(|chain| async move {
        let answers =
            futures::future::join_all(chain.nodes.iter().map(|n| node_reading(inner, n))).await;
        // The highest figures win: a validator that lags reports less of the same chain.
        let reading = answers
            .into_iter()
            .flatten()
            .reduce(|a, b| ShardReading {
                txs_committed: a.txs_committed.max(b.txs_committed),
                mempool_depth: a.mempool_depth.max(b.mempool_depth),
            })
            .ok_or_else(|| format!("no validator of shard {} reported metrics", chain.shard));
        (chain.shard, reading)
    }))
    .await;
    Ok(Some(NetworkLoad {
        in_service,
        scaling,
        shards: readings,
    }))
}

/// One validator's figures; `None` when it does not answer or lacks either metric.
async fn node_reading(inner: &Inner, node: &NodeRecord) -> Option<ShardReading> {
    let text = inner
        .http
        .get(format!(
            "http://{}{}",
            rpc_address(node),
            trellis_node_api::METRICS_PATH
        ))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let read = |name| metric_total(&text, name).map(|v| v.max(0.0) as u64);
    Some(ShardReading {
        txs_committed: read(TXS_COMMITTED_TOTAL)?,
        mempool_depth: read(MEMPOOL_DEPTH)?,
    })
}
