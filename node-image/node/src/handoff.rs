//! Table handoff at a shard's epoch switch (see [`crate::epoch_switch`]): each table
//! that moved to this shard is fetched from a node of its previous owner, rebuilt and
//! checked against the root in the previous owner's certified epoch-end header (its
//! certificate checked against that shard's validators for that epoch), then imported
//! atomically (`Ledger::import_table`). Until every incoming table is imported the node
//! executes, proposes and votes nothing of the new epoch.
//!
//! Nothing a serving node says is trusted: a forged header fails its certificate, a
//! forged snapshot fails the root check; either way the next node of the old owner is
//! asked. A crash mid-handoff loses nothing: an import is one commit, and the epoch
//! record lists what is still missing.
//!
//! The same loop forwards transactions the switch took out of the pool (their table
//! moved away) to their new shard.

use crate::chain::{NodeState, lock};
use crate::epoch_switch::{Incoming, ends_epoch, sync_place};
use crate::relay::{CertifiedBlock, SnapshotRequest};
use crate::rpc_shard::{
    CertifiedBlockJson, Failure, GET_TABLE_SNAPSHOT, SnapshotParams, SnapshotResult,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};
use trellis_node_api::error_codes as codes;
use trellis_node_beacon::BeaconState;
use trellis_node_state::{Kv, MAX_SNAPSHOT_LEAVES, TableSnapshot};
use trellis_node_types::{Block, Committee, PublicKey, Tx, table_of, to_hex};

/// `trellis_getEpochEnd {epoch}` → `{block, certificate}`: the block that ended the
/// answering shard node's consensus epoch `epoch`, with its finalization certificate.
pub const GET_EPOCH_END: &str = "trellis_getEpochEnd";

/// Most chunks a table snapshot may take (4096 leaves each: 64 M leaves).
const MAX_CHUNKS: usize = 16_384;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochEndParams {
    pub epoch: u64,
}

/// A node of another shard, as the beacon registry knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub key: PublicKey,
    pub rpc_address: String,
}

/// How a node reaches other shards' nodes (JSON-RPC in production, in-process in the
/// deterministic simulation).
pub trait HandoffSource: Send + Sync + 'static {
    fn epoch_end(
        &self,
        node: &Peer,
        epoch: u64,
    ) -> impl Future<Output = Result<CertifiedBlock, String>> + Send;

    fn chunk(
        &self,
        node: &Peer,
        request: SnapshotRequest,
    ) -> impl Future<Output = Result<TableSnapshot, String>> + Send;

    fn forward(&self, node: &Peer, tx: &Tx) -> impl Future<Output = Result<(), String>> + Send;
}

/// Nodes of `shard`'s committee in `epoch` with their registered RPC addresses.
pub(crate) fn nodes_of(beacon: &BeaconState, shard: u16, epoch: u64) -> Vec<Peer> {
    beacon
        .validators_at(shard, epoch)
        .unwrap_or_default()
        .into_iter()
        .map(|key| {
            let rpc_address = beacon
                .registered()
                .find(|v| v.node_key == key)
                .map(|v| v.rpc_address.clone())
                .or_else(|| {
                    beacon
                        .committee(shard)
                        .and_then(|c| c.iter().find(|s| s.node_key == key))
                        .map(|s| s.rpc_address.clone())
                })
                .unwrap_or_default();
            Peer { key, rpc_address }
        })
        .collect()
}

/// The certified root of `table` at the end of `from`'s epoch `epoch`, and the height to
/// fetch its snapshot at, from `answer` (checked, never trusted).
pub fn certified_root(
    beacon: &BeaconState,
    chain_id: &str,
    from: u16,
    epoch: u64,
    table: u8,
    answer: &CertifiedBlock,
) -> Result<(u64, [u8; 32]), String> {
    let block = Block::decode_untrusted(&answer.block).map_err(|e| format!("block: {e}"))?;
    let Some(sharding) = &block.sharding else {
        return Err("not a shard block".into());
    };
    if sharding.header.committee != Committee::Shard(from) {
        return Err(format!(
            "a block of {} where shard {from}'s was asked for",
            sharding.header.committee.name()
        ));
    }
    if block.epoch != epoch || !ends_epoch(beacon, &block) {
        return Err(format!(
            "block {} does not end shard {from}'s epoch {epoch}",
            block.height
        ));
    }
    let mut validators = beacon.validators_at(from, epoch).unwrap_or_default();
    validators.sort();
    let namespace = crate::engine::consensus_namespace(chain_id, Some(Committee::Shard(from)));
    let round = crate::chain::verify_finalization(
        &namespace,
        &validators,
        &answer.certificate,
        &block.digest(),
    )
    .ok_or_else(|| {
        format!("the certificate of shard {from}'s epoch-end block does not verify against its validators of epoch {epoch}")
    })?;
    if round.0 != epoch {
        return Err(format!(
            "certificate of epoch {} instead of {epoch}",
            round.0
        ));
    }
    let root = sharding
        .header
        .roots
        .iter()
        .find(|r| r.table == table)
        .ok_or_else(|| format!("shard {from}'s epoch-end header has no root for table {table}"))?;
    Ok((block.height, root.root))
}

/// Fetches every chunk of `table` at `height` from `node`.
async fn snapshot<S: HandoffSource>(
    source: &S,
    node: &Peer,
    table: u8,
    height: u64,
) -> Result<Vec<TableSnapshot>, String> {
    let mut chunks: Vec<TableSnapshot> = Vec::new();
    let mut after = None;
    loop {
        if chunks.len() >= MAX_CHUNKS {
            return Err(format!("table {table}: more than {MAX_CHUNKS} chunks"));
        }
        let chunk = source
            .chunk(
                node,
                SnapshotRequest {
                    table,
                    height,
                    after,
                    limit: MAX_SNAPSHOT_LEAVES as u32,
                },
            )
            .await?;
        let more = chunk.more;
        after = chunk.leaves.last().map(|(k, _)| *k).or(after);
        let empty = chunk.leaves.is_empty();
        chunks.push(chunk);
        // The importer refuses a "more" chunk without progress; stop asking anyway.
        if !more || empty {
            return Ok(chunks);
        }
    }
}

/// Takes over one incoming table: asks the old owner's nodes in turn (from `start`).
pub async fn take_over<K: Kv, S: HandoffSource>(
    state: &Arc<Mutex<NodeState<K>>>,
    chain_id: &str,
    source: &S,
    incoming: &Incoming,
    start: usize,
) -> Result<(), String> {
    let (beacon, epoch) = {
        let s = lock(state);
        let Some(record) = s.shard_epoch.as_ref() else {
            return Ok(());
        };
        let Some(beacon) = s.beacon.clone() else {
            return Err("no beacon state".into());
        };
        (beacon, record.epoch)
    };
    let previous = epoch.saturating_sub(1);
    let nodes = nodes_of(&beacon, incoming.from, previous);
    if nodes.is_empty() {
        return Err(format!(
            "shard {} had no validators in epoch {previous}",
            incoming.from
        ));
    }
    let mut last = String::new();
    for i in 0..nodes.len() {
        let node = &nodes[(start + i) % nodes.len()];
        let attempt = async {
            let answer = source.epoch_end(node, previous).await?;
            let (height, root) = certified_root(
                &beacon,
                chain_id,
                incoming.from,
                previous,
                incoming.table,
                &answer,
            )?;
            let chunks = snapshot(source, node, incoming.table, height).await?;
            let mut s = lock(state);
            if s.shard_epoch.as_ref().map(|r| r.epoch) != Some(epoch)
                || s.ledger.owned_tables().contains(incoming.table)
            {
                return Ok(());
            }
            s.ledger
                .import_table(incoming.table, root, &chunks)
                .map_err(|e| e.to_string())?;
            sync_place(&mut s);
            info!(
                table = incoming.table,
                from = incoming.from,
                epoch,
                height,
                "table handed off"
            );
            Ok::<(), String>(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) => {
                last = format!(
                    "table {} from shard {} node {}: {e}",
                    incoming.table,
                    incoming.from,
                    to_hex(node.key.as_ref())
                );
            }
        }
    }
    Err(last)
}

/// Attempts at forwarding a handed-over transaction before giving up (the new shard
/// refuses it until its own handoff of the table is complete).
const FORWARD_ATTEMPTS: u32 = 150;

/// Forwards the transactions an epoch switch took out of the pool to their new shard;
/// what no node of it takes yet stays in `retry`.
async fn forward_handed_over<K: Kv, S: HandoffSource>(
    state: &Arc<Mutex<NodeState<K>>>,
    source: &S,
    retry: &mut Vec<(Tx, u32)>,
) {
    let beacon = {
        let mut s = lock(state);
        retry.extend(
            std::mem::take(&mut s.handed_over)
                .into_iter()
                .map(|t| (t, 0)),
        );
        s.forwarding = retry.iter().map(|(t, _)| t.hash()).collect();
        s.beacon.clone()
    };
    let Some(beacon) = beacon else {
        return;
    };
    let mut left = Vec::new();
    for (tx, attempts) in std::mem::take(retry) {
        let shard = beacon.owner(table_of(&tx.unsigned.from));
        let nodes = nodes_of(&beacon, shard, beacon.epoch());
        let mut last = String::new();
        let mut done = false;
        for node in &nodes {
            match source.forward(node, &tx).await {
                Ok(()) => {
                    done = true;
                    break;
                }
                Err(e) => last = e,
            }
        }
        if done {
            continue;
        }
        if attempts + 1 >= FORWARD_ATTEMPTS {
            warn!(tx = ?tx.hash(), shard, error = %last, "could not forward a handed-over transaction; its sender must resubmit it");
        } else {
            left.push((tx, attempts + 1));
        }
    }
    lock(state).forwarding = left.iter().map(|(t, _)| t.hash()).collect();
    *retry = left;
}

/// Runs the handoff until the task is stopped: every `period`, forwards handed-over
/// transactions and tries to take over each missing table.
pub async fn run<K: Kv, S: HandoffSource, C: commonware_runtime::Clock>(
    clock: C,
    state: Arc<Mutex<NodeState<K>>>,
    chain_id: String,
    source: S,
    period: Duration,
) {
    let mut start = 0usize;
    let mut last_error = String::new();
    let mut retry = Vec::new();
    loop {
        clock.sleep(period).await;
        forward_handed_over(&state, &source, &mut retry).await;
        let pending = crate::epoch_switch::pending_imports(&lock(&state));
        let mut failed = 0;
        let mut first = None;
        for incoming in &pending {
            if let Err(e) = take_over(&state, &chain_id, &source, incoming, start).await {
                failed += 1;
                first.get_or_insert(e);
            }
            start = start.wrapping_add(1);
        }
        // One line per change of outcome, not one per table and try.
        if let Some(e) = first {
            let kind = e.rsplit(": ").next().unwrap_or_default().to_string();
            if kind != last_error {
                warn!(failed, of = pending.len(), first = %e, "table handoff; retrying");
                last_error = kind;
            }
        } else {
            last_error.clear();
        }
    }
}

/// Answers `trellis_getEpochEnd` over a node's state (`None` for other methods; table
/// snapshots are the relay's `trellis_getTableSnapshot`).
pub fn dispatch<K: Kv>(
    state: &Mutex<NodeState<K>>,
    method: &str,
    params: &Value,
) -> Option<Result<Value, Failure>> {
    if method != GET_EPOCH_END {
        return None;
    }
    let params = params.clone();
    let parse = |e: serde_json::Error| (codes::INVALID_PARAMS, e.to_string());
    let internal = |e: String| (codes::INTERNAL, e);
    let answer = match method {
        GET_EPOCH_END => (|| {
            let p: EpochEndParams = serde_json::from_value(params).map_err(parse)?;
            let s = lock(state);
            let not_found = |why: String| (codes::NOT_FOUND, why);
            let height = crate::epoch_switch::epoch_end_height(&s, p.epoch)
                .map_err(|e| internal(e.to_string()))?
                .ok_or_else(|| not_found(format!("epoch {} has not ended here", p.epoch)))?;
            let block = s
                .block(height)
                .map_err(|e| internal(e.to_string()))?
                .ok_or_else(|| not_found(format!("block {height} missing")))?;
            let certificate = s
                .finalization(height)
                .map_err(|e| internal(e.to_string()))?
                .ok_or_else(|| {
                    not_found(format!(
                        "no certificate of block {height} here; ask another node"
                    ))
                })?;
            let answer = CertifiedBlock {
                block: trellis_node_types::Encode::encode(&block).to_vec(),
                certificate,
            };
            serde_json::to_value(CertifiedBlockJson::from(&answer))
                .map_err(|e| internal(e.to_string()))
        })(),
        _ => return None,
    };
    Some(answer)
}

/// [`HandoffSource`] over JSON-RPC (`rpc_address`es from the beacon registry), through
/// the node's HTTP relay client.
pub struct HttpHandoff(pub Arc<crate::relay::HttpRelay>);

impl HttpHandoff {
    async fn call(&self, address: &str, method: &str, params: Value) -> Result<Value, String> {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let answer = self.0.post(address, &body).await?;
        if let Some(error) = answer.get("error") {
            return Err(format!(
                "{method} at {address} refused ({}): {}",
                error["code"].as_i64().unwrap_or(0),
                error["message"].as_str().unwrap_or("")
            ));
        }
        Ok(answer["result"].clone())
    }
}

impl HandoffSource for HttpHandoff {
    async fn epoch_end(&self, node: &Peer, epoch: u64) -> Result<CertifiedBlock, String> {
        let params = serde_json::to_value(EpochEndParams { epoch }).map_err(|e| e.to_string())?;
        let value = self.call(&node.rpc_address, GET_EPOCH_END, params).await?;
        let json: CertifiedBlockJson =
            serde_json::from_value(value).map_err(|e| format!("{}: {e}", node.rpc_address))?;
        json.decode()
    }

    async fn chunk(&self, node: &Peer, request: SnapshotRequest) -> Result<TableSnapshot, String> {
        let params =
            serde_json::to_value(SnapshotParams::from(&request)).map_err(|e| e.to_string())?;
        let value = self
            .call(&node.rpc_address, GET_TABLE_SNAPSHOT, params)
            .await?;
        let json: SnapshotResult =
            serde_json::from_value(value).map_err(|e| format!("{}: {e}", node.rpc_address))?;
        json.decode()
    }

    async fn forward(&self, node: &Peer, tx: &Tx) -> Result<(), String> {
        let params = trellis_node_api::SendTransactionParams {
            tx: to_hex(&trellis_node_types::Encode::encode(tx)),
        };
        let params = serde_json::to_value(params).map_err(|e| e.to_string())?;
        match self
            .call(
                &node.rpc_address,
                trellis_node_api::methods::SEND_TRANSACTION,
                params,
            )
            .await
        {
            Ok(_) => Ok(()),
            // Already there (another node of the old shard forwarded it first).
            Err(e) if e.contains(&format!("({})", codes::ALREADY_KNOWN)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
