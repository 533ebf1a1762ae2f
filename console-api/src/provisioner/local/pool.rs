//! The validator pool of a local sharded network, kept the way the operator keeps it in
//! a cluster (docs/operator.md, "The validator pool"): validators in no genesis that
//! run `[role] kind = "shard", shard = "any"` and that the beacon's seeded shuffle
//! places in a shard every epoch. The beacon's map is the record of where each one is;
//! every pass of the scaling loop ([`super::scaling`]) takes the step it lacks:
//!
//! * a wanted validator not registered yet is registered for shard "any" with
//!   `trellis-node system register-validator --shard any`, signed with its own node
//!   key (the same step that registers a new shard's validators; a registration the
//!   beacon already holds is refused as unchanged, which counts as done), and marked
//!   `registered`. The beacon places it at its next epoch boundary.
//! * a validator scaled away (`leaving`) that is registered is deregistered
//!   (`deregister-validator`, its own key; "not a registered validator" counts as done)
//!   and keeps running: it votes in its committee until the epoch ends. Once
//!   deregistered and absent from the beacon's map it is `removed`, and the supervisor
//!   stops it. Its directory (keys, ledger) stays; a later scale-up brings it back.

use trellis_node_api::shard::ShardMapInfo;

use super::record::{ChainRecord, NetworkRecord, NodeRecord};
use super::scaling::{Mark, key_file, mark, register};
use super::{Inner, run_node_tool};

/// The beacon's refusal of a deregistration it has nothing to do for
/// (`trellis_node_beacon::SystemRefusal`).
const NOT_REGISTERED: &str = "is not a registered validator";

/// The shard the beacon's map places `node_key` (hex) in this epoch.
pub(super) fn placement(map: &ShardMapInfo, node_key: &str) -> Option<u16> {
    map.shards
        .iter()
        .find(|s| {
            s.validators
                .iter()
                .any(|k| k.eq_ignore_ascii_case(node_key))
        })
        .map(|s| s.shard)
}

/// The pool's running validators the beacon's map places this epoch, with their shard:
/// they serve clients like that shard's nodes (an unplaced one is not ready, and would
/// only forward).
pub(super) fn placed<'a>(
    record: &'a NetworkRecord,
    map: &ShardMapInfo,
) -> Vec<(u16, &'a NodeRecord)> {
    record
        .chains
        .iter()
        .filter(|c| c.is_pool() && !c.retired)
        .flat_map(|c| c.nodes.iter().filter(|n| c.runs(n)))
        .filter_map(|n| Some((placement(map, &n.node_public_key)?, n)))
        .collect()
}

/// Takes the pool's next steps; returns what it waits for (status notes).
pub(super) async fn step(
    inner: &Inner,
    record: &NetworkRecord,
    beacon: &str,
    map: &ShardMapInfo,
    pool: &ChainRecord,
) -> Vec<String> {
    let mut notes = Vec::new();
    let wanted: Vec<&NodeRecord> = pool
        .nodes
        .iter()
        .filter(|n| !n.leaving && !n.removed)
        .collect();
    for node in wanted.iter().filter(|n| !n.registered) {
        match register(inner, record, beacon, "any", node).await {
            Ok(()) => mark(inner, record.network_id, &node.name, Mark::Registered).await,
            Err(e) => notes.push(format!("registering {} for shard \"any\": {e}", node.name)),
        }
    }
    let placed = wanted
        .iter()
        .filter(|n| placement(map, &n.node_public_key).is_some())
        .count();
    if placed < wanted.len() {
        notes.push(format!(
            "validator pool: {placed} of {} placed; the beacon places registered validators \
             at its next epoch boundary (beacon height {}, now {})",
            wanted.len(),
            map.next_epoch_height,
            map.beacon_height
        ));
    }
    for node in pool.nodes.iter().filter(|n| n.leaving && !n.removed) {
        if node.registered {
            match deregister(inner, record, beacon, node).await {
                Ok(()) => mark(inner, record.network_id, &node.name, Mark::Deregistered).await,
                Err(e) => notes.push(format!("deregistering {}: {e}", node.name)),
            }
        } else if placement(map, &node.node_public_key).is_none() {
            mark(inner, record.network_id, &node.name, Mark::Removed).await;
            continue;
        }
        notes.push(format!(
            "{} leaves the validator pool: it runs until the beacon's next epoch leaves it \
             out",
            node.name
        ));
    }
    notes
}

/// `trellis-node system deregister-validator`, signed with the node's own key.
async fn deregister(
    inner: &Inner,
    record: &NetworkRecord,
    beacon: &str,
    node: &NodeRecord,
) -> Result<(), String> {
    let args: Vec<std::ffi::OsString> = vec![
        "system".into(),
        "deregister-validator".into(),
        "--key-file".into(),
        key_file(inner, record, node).into(),
        "--rpc".into(),
        beacon.into(),
    ];
    match run_node_tool(&inner.settings.node_binary, &args).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains(NOT_REGISTERED) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_node_api::shard::ShardInfo;

    #[test]
    fn a_validator_is_placed_where_the_beacons_map_lists_it() {
        let map = ShardMapInfo {
            epoch: 3,
            epoch_length: 10,
            next_epoch_height: 40,
            beacon_height: 35,
            shard_count: 2,
            pending_shard_count: None,
            tables: Vec::new(),
            shards: vec![
                ShardInfo {
                    shard: 0,
                    validators: vec!["aa".repeat(32)],
                    rpc: Vec::new(),
                },
                ShardInfo {
                    shard: 1,
                    validators: vec!["bb".repeat(32)],
                    rpc: Vec::new(),
                },
            ],
            max_shards: 4,
            resharding: false,
            beacon: Vec::new(),
        };
        assert_eq!(placement(&map, &"BB".repeat(32)), Some(1));
        assert_eq!(placement(&map, &"aa".repeat(32)), Some(0));
        assert_eq!(placement(&map, &"cc".repeat(32)), None);
    }
}
