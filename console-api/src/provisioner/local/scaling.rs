//! Scaling a local sharded network through its beacon, the way the operator does in a
//! cluster (docs/sharding.md): the shard count changes only when the beacon's
//! consensus says so, never by starting or stopping processes alone.
//!
//! Every [`SCALE_EVERY`] each sharded network whose recorded shard count differs from
//! what the beacon's map (`trellis_getShardMap` of a beacon node) shows takes the next
//! step it can:
//!
//! 1. **Scale-out**: the new shards' validators already run (apply started them; a node
//!    of a slot the beacon has not named yet waits for it). Each is registered with
//!    `trellis-node system register-validator --shard N`, signed with its own node key
//!    (public networks allow that), and marked `registered` in the record.
//! 2. `trellis-node system set-shard-count --count S`, signed with the network admin key
//!    (`admin.json`), once every new validator is registered and unless the beacon
//!    already shows `S` in force or pending. Refusals (a change pending, resharding in
//!    progress, registrations not executed yet) are shown and the step is retried.
//! 3. **Scale-in**: a shard planned away keeps running (`draining`) until the beacon's
//!    map assigns it no table any more; only then is it retired and its processes
//!    stopped.
//!
//! The validator pool's steps ([`super::pool`]) run in the same pass.
//!
//! Signing and submitting are the node binary's (`trellis-node system ...`); this module
//! only decides which step is due. Where a network stands is kept per network for the
//! status message.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use trellis_node_api::shard::ShardMapInfo;
use uuid::Uuid;

use super::record::{NetworkRecord, NodeRecord};
use super::{Inner, p2p_address, rpc_address, run_node_tool};

/// How often the scaling steps are looked at.
const SCALE_EVERY: Duration = Duration::from_secs(1);
/// A `SetShardCount` the beacon accepted is not sent again for this long (it executes at
/// the next beacon block; the map shows it as pending then).
const RESUBMIT_AFTER: Duration = Duration::from_secs(15);

pub(super) async fn scale_forever(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(SCALE_EVERY).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        scale_once(&inner).await;
    }
}

/// Where a network's scaling stands.
#[derive(Clone, Debug, Default)]
pub(super) struct ScalingState {
    /// The beacon's map as last read.
    pub map: Option<ShardMapInfo>,
    /// What the network waits for, for its status message; `None` when nothing.
    pub note: Option<String>,
    /// The last `SetShardCount` submitted: (count, when).
    submitted: Option<(u16, Instant)>,
}

async fn scale_once(inner: &Inner) {
    let records: Vec<NetworkRecord> = {
        let fleet = inner.fleet.lock().await;
        if fleet.stopped {
            return;
        }
        fleet
            .networks
            .values()
            .filter(|r| r.sharding.is_some() && !r.paused && !r.stopped && !r.deleting)
            .cloned()
            .collect()
    };
    for record in records {
        let previous = inner
            .scaling
            .lock()
            .await
            .get(&record.network_id)
            .cloned()
            .unwrap_or_default();
        let next = step(inner, &record, previous).await;
        inner.scaling.lock().await.insert(record.network_id, next);
    }
}

/// The beacon's shard map, from the first beacon node that answers.
pub(super) async fn shard_map(inner: &Inner, record: &NetworkRecord) -> Option<ShardMapInfo> {
    for chain in record.chains.iter().filter(|c| c.is_beacon()) {
        for node in &chain.nodes {
            let answer = inner
                .http
                .post(format!(
                    "http://{}{}",
                    rpc_address(node),
                    trellis_node_api::RPC_PATH
                ))
                .json(&serde_json::json!({
                    "jsonrpc": "2.0", "id": 1,
                    "method": trellis_node_api::methods::GET_SHARD_MAP
                }))
                .send()
                .await;
            let Ok(answer) = answer else { continue };
            let Ok(body) = answer.json::<serde_json::Value>().await else {
                continue;
            };
            if let Some(map) = body
                .get("result")
                .and_then(|r| serde_json::from_value::<ShardMapInfo>(r.clone()).ok())
            {
                return Some(map);
            }
        }
    }
    None
}

/// The first beacon node's RPC URL (the CLI's `--rpc`).
fn beacon_url(record: &NetworkRecord) -> Option<String> {
    record
        .chains
        .iter()
        .find(|c| c.is_beacon())
        .and_then(|c| c.nodes.first())
        .map(|n| format!("http://{}", rpc_address(n)))
}

/// Takes the next scaling step of `record` and says where it stands.
async fn step(inner: &Inner, record: &NetworkRecord, mut state: ScalingState) -> ScalingState {
    let Some(sharding) = &record.sharding else {
        return ScalingState::default();
    };
    let target = sharding.shard_count;
    let Some(map) = shard_map(inner, record).await else {
        state.note = Some("waiting for the beacon committee to answer".into());
        return state;
    };
    let Some(beacon) = beacon_url(record) else {
        state.note = Some("the network has no beacon committee".into());
        return state;
    };
    state.map = Some(map.clone());
    let mut notes = Vec::new();

    // 1. Register the validators of shards added after genesis.
    let unregistered: Vec<(u16, &NodeRecord)> = record
        .chains
        .iter()
        .filter(|c| !c.is_beacon() && !c.retired && !c.draining && c.shard < target)
        .flat_map(|c| {
            c.nodes
                .iter()
                .filter(|n| !n.in_genesis && !n.registered)
                .map(move |n| (c.shard, n))
        })
        .collect();
    let mut all_registered = true;
    for (shard, node) in unregistered {
        match register(inner, record, &beacon, &shard.to_string(), node).await {
            Ok(()) => mark(inner, record.network_id, &node.name, Mark::Registered).await,
            Err(e) => {
                all_registered = false;
                notes.push(format!("registering {} for shard {shard}: {e}", node.name));
            }
        }
    }

    // The validator pool's registrations and departures (super::pool).
    if let Some(pool) = record.chains.iter().find(|c| c.is_pool()) {
        notes.extend(super::pool::step(inner, record, &beacon, &map, pool).await);
    }

    // 2. Ask the beacon for the shard count.
    let in_force = map.shard_count == target;
    let pending = map.pending_shard_count == Some(target);
    if !in_force && all_registered {
        if pending {
            notes.push(format!(
                "SetShardCount({target}) accepted; it applies at beacon height {} (now {})",
                map.next_epoch_height, map.beacon_height
            ));
        } else if state
            .submitted
            .is_some_and(|(count, at)| count == target && at.elapsed() < RESUBMIT_AFTER)
        {
            notes.push(format!(
                "SetShardCount({target}) submitted; waiting for the beacon to take it"
            ));
        } else {
            match set_shard_count(inner, record, &beacon, target).await {
                Ok(()) => {
                    state.submitted = Some((target, Instant::now()));
                    notes.push(format!(
                        "SetShardCount({target}) submitted; waiting for the beacon to take it"
                    ));
                }
                // Someone else's change already made it (or the beacon raced us).
                Err(e) if e.contains(&format!("already has {target} shards")) => {}
                Err(e) => notes.push(format!("SetShardCount({target}) not accepted yet: {e}")),
            }
        }
    }
    if !in_force {
        notes.insert(
            0,
            format!(
                "scaling from {} to {target} shards (beacon epoch {})",
                map.shard_count, map.epoch
            ),
        );
    }

    // 3. Retire drained shards: the beacon's map gives them no table any more.
    for chain in record.chains.iter().filter(|c| c.draining && !c.retired) {
        if drained(&map, chain.shard) {
            for node in &chain.nodes {
                mark(inner, record.network_id, &node.name, Mark::Retired).await;
            }
        } else {
            let tables = map.tables.iter().filter(|s| **s == chain.shard).count();
            notes.push(format!(
                "shard {} drains: the beacon still assigns it {tables} tables or a \
                 pending change still counts it",
                chain.shard
            ));
        }
    }
    state.note = (!notes.is_empty()).then(|| notes.join("; "));
    state
}

/// Whether the beacon's map is done with `shard`: it owns no table, lies beyond the
/// count in force and beyond a pending count (a change that still names it would give it
/// tables again at the next epoch).
fn drained(map: &ShardMapInfo, shard: u16) -> bool {
    !map.tables.contains(&shard)
        && shard >= map.shard_count
        && map
            .pending_shard_count
            .is_none_or(|pending| shard >= pending)
}

pub(super) enum Mark {
    /// The node's `RegisterValidator` was accepted.
    Registered,
    /// A leaving pool validator's `DeregisterValidator` was accepted.
    Deregistered,
    /// A leaving pool validator the beacon's map left out: it stops.
    Removed,
    /// The node's shard is drained: retire the whole committee.
    Retired,
}

/// Records a step durably in the live record (which may have moved on since it was read:
/// the change applies only where it still fits).
pub(super) async fn mark(inner: &Inner, network: Uuid, node: &str, what: Mark) {
    let mut fleet = inner.fleet.lock().await;
    let Some(record) = fleet.networks.get_mut(&network) else {
        return;
    };
    let Some(chain) = record
        .chains
        .iter_mut()
        .find(|c| c.nodes.iter().any(|n| n.name == node))
    else {
        return;
    };
    match what {
        Mark::Registered | Mark::Deregistered | Mark::Removed => {
            let Some(n) = chain.nodes.iter_mut().find(|n| n.name == node) else {
                return;
            };
            match what {
                Mark::Registered => n.registered = true,
                Mark::Deregistered => n.registered = false,
                // Only while it still leaves (a scale-up may have taken it back).
                _ if n.leaving => {
                    n.removed = true;
                    tracing::info!(%network, node, "pool validator left out by the beacon; stopping it");
                }
                _ => return,
            }
        }
        Mark::Retired => {
            if !chain.draining {
                return;
            }
            chain.draining = false;
            chain.retired = true;
            tracing::info!(%network, shard = chain.shard, "drained shard retired");
        }
    }
    let record = record.clone();
    if let Err(e) = inner.layout.save(&record) {
        tracing::warn!(%network, error = %e, "could not record a scaling step");
    }
}

/// `trellis-node system register-validator --shard <shard>` (a number, or `any` for the
/// validator pool), signed with the node's own key.
pub(super) async fn register(
    inner: &Inner,
    record: &NetworkRecord,
    beacon: &str,
    shard: &str,
    node: &NodeRecord,
) -> Result<(), String> {
    let args: Vec<std::ffi::OsString> = vec![
        "system".into(),
        "register-validator".into(),
        "--key-file".into(),
        key_file(inner, record, node).into(),
        "--rpc".into(),
        beacon.into(),
        "--shard".into(),
        shard.into(),
        "--p2p-address".into(),
        p2p_address(node).to_string().into(),
        "--rpc-address".into(),
        rpc_address(node).to_string().into(),
    ];
    match run_node_tool(&inner.settings.node_binary, &args).await {
        Ok(_) => Ok(()),
        // Registered before (the console stopped before recording it).
        Err(e) if e.to_string().contains("already registered for this shard") => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// A node's key file (`keys.json`): its node key signs its own registration.
pub(super) fn key_file(
    inner: &Inner,
    record: &NetworkRecord,
    node: &NodeRecord,
) -> std::path::PathBuf {
    inner
        .layout
        .node(record.network_id, &node.name)
        .join("keys.json")
}

/// `trellis-node system set-shard-count`, signed with the network admin key.
async fn set_shard_count(
    inner: &Inner,
    record: &NetworkRecord,
    beacon: &str,
    count: u16,
) -> Result<(), String> {
    let args: Vec<std::ffi::OsString> = vec![
        "system".into(),
        "set-shard-count".into(),
        "--key-file".into(),
        inner.layout.admin(record.network_id).into(),
        "--rpc".into(),
        beacon.into(),
        "--count".into(),
        count.to_string().into(),
    ];
    run_node_tool(&inner.settings.node_binary, &args)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// What the status says about scaling, by network.
pub(super) type ScalingStates = HashMap<Uuid, ScalingState>;

#[cfg(test)]
mod tests {
    use super::*;

    fn map(shard_count: u16, pending: Option<u16>) -> ShardMapInfo {
        ShardMapInfo {
            epoch: 3,
            epoch_length: 10,
            next_epoch_height: 40,
            beacon_height: 35,
            shard_count,
            pending_shard_count: pending,
            tables: (0..256u16).map(|t| t * shard_count / 256).collect(),
            shards: Vec::new(),
            max_shards: 4,
            resharding: false,
            beacon: Vec::new(),
        }
    }

    #[test]
    fn a_shard_is_drained_only_when_the_beacon_is_done_with_it() {
        // Still assigned tables (the change to 1 shard has not applied yet).
        assert!(!drained(&map(2, Some(1)), 1));
        // Applied: no table, beyond the count.
        assert!(drained(&map(1, None), 1));
        // A pending change that names it again.
        assert!(!drained(&map(1, Some(2)), 1));
        assert!(drained(&map(1, Some(2)), 2));
        // A shard in force is never drained.
        assert!(!drained(&map(3, None), 2));
    }
}
