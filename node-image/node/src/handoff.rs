//! Table handoff at a shard's epoch switch (see [`crate::epoch_switch`]): the tables that
//! moved to this shard are taken over source shard by source shard ([`take_over`]). The
//! source's epoch-end block is fetched and its certificate checked against that shard's
//! validators for that epoch **once** for all its tables; each table's snapshot is
//! fetched (a few at once), rebuilt and checked against its root in that certified
//! header; then all of them are imported with the proof in **one** commit
//! (`Ledger::import_tables_with`). Until every incoming table is imported the node
//! executes, proposes and votes nothing of the new epoch.
//!
//! Nothing a serving node says is trusted: a forged header fails its certificate, a
//! forged snapshot fails the root check; either way the next node is asked. So who
//! serves does not matter: the previous owner's nodes are asked first, then the nodes of
//! this node's own shard ([`holders`]). An importing node keeps the certified epoch-end
//! block it imported with (committed with the import) and the imported leaves (by root),
//! so a peer that replays the shard's history later — a late joiner, a validator moved
//! here, one whose volume was lost — can check the import after the previous owner's
//! nodes are gone (a drained slot the operator deleted). A crash mid-handoff loses
//! nothing and splits nothing: a source's tables and their proof are one commit, and the
//! epoch record lists what is still missing.
//!
//! The same loop forwards transactions the switch took out of the pool (their table
//! moved away) to their new shard.

use crate::chain::{NodeState, lock};
use crate::epoch_switch::{ends_epoch, sync_place};
use crate::relay::{CertifiedBlock, SnapshotRequest};
use crate::rpc_shard::{
    CertifiedBlockJson, Failure, GET_TABLE_SNAPSHOT, SnapshotParams, SnapshotResult,
};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};
use trellis_node_api::error_codes as codes;
use trellis_node_beacon::BeaconState;
use trellis_node_state::{
    CheckedTable, Kv, MAX_SNAPSHOT_LEAVES, Space, TableSnapshot, WriteBatch, check_table,
};
use trellis_node_types::{Block, Committee, PublicKey, Tx, table_of, to_hex};

/// `trellis_getEpochEnd {epoch, shard?}` → `{block, certificate}`: the block that ended
/// shard `shard`'s consensus epoch `epoch`, with its finalization certificate — the
/// answering node's own (`shard` absent or its own shard), or, for another shard, the
/// one this node's shard imported tables with at the end of that epoch.
pub const GET_EPOCH_END: &str = "trellis_getEpochEnd";

/// Most chunks a table snapshot may take (4096 leaves each: 64 M leaves).
const MAX_CHUNKS: usize = 16_384;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochEndParams {
    pub epoch: u64,
    /// Whose epoch (default: the answering node's shard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u16>,
}

/// Where a shard node keeps the certified epoch-end block of shard `from`'s epoch
/// `epoch` that it imported tables with (committed with each of those imports).
pub fn key_imported_epoch_end(from: u16, epoch: u64) -> Vec<u8> {
    [
        b"chain/imported-epoch-end/".as_slice(),
        &from.to_be_bytes(),
        &epoch.to_be_bytes(),
    ]
    .concat()
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
    /// `node`'s answer to `trellis_getEpochEnd {epoch, shard}`.
    fn epoch_end(
        &self,
        node: &Peer,
        shard: u16,
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

/// Shard `from`'s epoch-end block of `epoch` with its certificate checked: the height to
/// fetch its tables' snapshots at and the certified roots of every table it owned.
/// Checked once per (source shard, epoch) and used for all the tables imported from it.
pub struct CertifiedEnd {
    pub from: u16,
    pub height: u64,
    roots: BTreeMap<u8, [u8; 32]>,
    /// As served: kept with the import so that a replaying peer can check it too.
    pub answer: CertifiedBlock,
}

impl CertifiedEnd {
    /// Checks `answer` (never trusted): a block of shard `from` that ends its epoch
    /// `epoch`, finalized by a certificate of that epoch from `from`'s validators of
    /// `epoch` in its consensus namespace.
    pub fn check(
        beacon: &BeaconState,
        chain_id: &str,
        from: u16,
        epoch: u64,
        answer: CertifiedBlock,
    ) -> Result<Self, String> {
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
        let roots = sharding
            .header
            .roots
            .iter()
            .map(|r| (r.table, r.root))
            .collect();
        Ok(Self {
            from,
            height: block.height,
            roots,
            answer,
        })
    }

    /// The certified root of `table` at the end of the epoch.
    pub fn root(&self, table: u8) -> Result<[u8; 32], String> {
        self.roots.get(&table).copied().ok_or_else(|| {
            format!(
                "shard {}'s epoch-end header has no root for table {table}",
                self.from
            )
        })
    }
}

/// The certified root of `table` at the end of `from`'s epoch `epoch`, and the height to
/// fetch its snapshot at, from `answer` (checked, never trusted; see [`CertifiedEnd`]).
pub fn certified_root(
    beacon: &BeaconState,
    chain_id: &str,
    from: u16,
    epoch: u64,
    table: u8,
    answer: &CertifiedBlock,
) -> Result<(u64, [u8; 32]), String> {
    let end = CertifiedEnd::check(beacon, chain_id, from, epoch, answer.clone())?;
    Ok((end.height, end.root(table)?))
}

/// Who may serve the import of a table from shard `from`'s epoch `previous` into this
/// node's shard `own` (epoch `previous + 1`), in the order asked, each once: the previous
/// owner's nodes of that epoch (from `start`, spreading the load), then the nodes of
/// `own` — its committee of the import's epoch (they imported it) and its current one
/// (they replayed it) — which keep what checking the import needs. Other shards' nodes
/// hold nothing of it: a later owner of the table imported another version from
/// another shard.
pub(crate) fn holders(
    beacon: &BeaconState,
    from: u16,
    previous: u64,
    own: Option<u16>,
    start: usize,
) -> Vec<Peer> {
    let old = nodes_of(beacon, from, previous);
    let mut nodes: Vec<Peer> = (0..old.len())
        .map(|i| old[(start + i) % old.len()].clone())
        .collect();
    if let Some(own) = own {
        let importers = nodes_of(beacon, own, previous + 1);
        for peer in importers
            .into_iter()
            .chain(nodes_of(beacon, own, beacon.epoch()))
        {
            if !nodes.iter().any(|n| n.key == peer.key) {
                nodes.push(peer);
            }
        }
    }
    nodes
}

/// Fetches every chunk of the tree of `table` with `root` at `height` from `node`.
async fn snapshot<S: HandoffSource>(
    source: &S,
    node: &Peer,
    table: u8,
    height: u64,
    root: [u8; 32],
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
                    root: Some(root),
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

/// Most table snapshots fetched (and checked) at once during a handoff: enough to hide
/// the round trips to the serving nodes, few enough not to flood them.
const CONCURRENT_FETCHES: usize = 8;

/// Why asking `nodes` in turn failed: the first refusal (it says why the previous owner
/// could not serve; the later ones are mostly "imported no tables" from this shard's
/// nodes) and the last.
fn refusals(what: &str, errors: &[(PublicKey, String)]) -> String {
    let Some((node, first)) = errors.first() else {
        return format!("{what}: nobody to ask");
    };
    let mut out = format!("{what} asked of node {}: {first}", to_hex(node.as_ref()));
    if let Some((node, last)) = errors.get(1..).and_then(|rest| rest.last()) {
        out.push_str(&format!(
            " ({} more nodes refused; the last, {}: {last})",
            errors.len() - 1,
            to_hex(node.as_ref())
        ));
    }
    out
}

/// The first checked epoch-end proof of shard `from`'s epoch `previous` that one of
/// `nodes` serves, and the index of that node.
async fn certified_end<S: HandoffSource>(
    source: &S,
    beacon: &BeaconState,
    chain_id: &str,
    from: u16,
    previous: u64,
    nodes: &[Peer],
) -> Result<(CertifiedEnd, usize), String> {
    let mut errors = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let checked = match source.epoch_end(node, from, previous).await {
            Ok(answer) => CertifiedEnd::check(beacon, chain_id, from, previous, answer),
            Err(e) => Err(e),
        };
        match checked {
            Ok(end) => return Ok((end, i)),
            Err(e) => errors.push((node.key.clone(), e)),
        }
    }
    Err(refusals(
        &format!("the epoch-end proof of shard {from}'s epoch {previous}"),
        &errors,
    ))
}

/// Which node the `i`-th table of a handoff asks first: the previous owner's nodes (the
/// first `owners` of the holders) from the one that served the proof on (those before
/// it did not answer), in turn, spreading the load; or, when none of the previous
/// owner's nodes served the proof, the node that did.
fn first_asked(owners: usize, prover: usize, i: usize) -> usize {
    if prover < owners {
        prover + i % (owners - prover)
    } else {
        prover
    }
}

/// `table`'s snapshot at the end of `end`'s epoch, checked against its certified root
/// (built for tree `version`): asks `nodes[first]`, then the others in order, each once.
async fn checked_table<S: HandoffSource>(
    source: &S,
    end: &CertifiedEnd,
    nodes: &[Peer],
    first: usize,
    table: u8,
    version: u64,
) -> Result<CheckedTable, String> {
    let root = end.root(table)?;
    let mut errors = Vec::new();
    let order = std::iter::once(first).chain((0..nodes.len()).filter(|&i| i != first));
    for node in order.filter_map(|i| nodes.get(i)) {
        let checked = match snapshot(source, node, table, end.height, root).await {
            Ok(chunks) => check_table(table, root, &chunks, version).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match checked {
            Ok(checked) => return Ok(checked),
            Err(e) => errors.push((node.key.clone(), e)),
        }
    }
    Err(refusals(
        &format!(
            "table {table} from shard {} (epoch end {})",
            end.from, end.height
        ),
        &errors,
    ))
}

/// Takes over the incoming `tables` of source shard `from` in one go: fetches and checks
/// `from`'s epoch-end proof **once** (from its [`holders`], in turn), fetches every
/// table's snapshot (at most [`CONCURRENT_FETCHES`] at once, each from the holders in
/// turn, starting with a different one per table) and checks each against its
/// certified root, then imports them all and the proof in **one** commit: a crash
/// leaves either every table of `from` imported, with the proof, or none. Returns how
/// many tables it imported.
pub async fn take_over<K: Kv, S: HandoffSource>(
    state: &Arc<Mutex<NodeState<K>>>,
    chain_id: &str,
    source: &S,
    from: u16,
    tables: &[u8],
    start: usize,
) -> Result<usize, String> {
    let (beacon, epoch, own, versions) = {
        let s = lock(state);
        let Some(record) = s.shard_epoch.as_ref() else {
            return Ok(0);
        };
        let Some(beacon) = s.beacon.clone() else {
            return Err("no beacon state".into());
        };
        let versions: Vec<u64> = tables.iter().map(|t| s.ledger.import_version(*t)).collect();
        (beacon, record.epoch, s.own_shard(), versions)
    };
    let previous = epoch.saturating_sub(1);
    let nodes = holders(&beacon, from, previous, own, start);
    if nodes.is_empty() {
        return Err(format!(
            "shard {from} had no validators in epoch {previous}"
        ));
    }
    let owners = nodes_of(&beacon, from, previous).len();
    let (end, prover) = certified_end(source, &beacon, chain_id, from, previous, &nodes).await?;
    // Built up front (not a lazy map): the stream then holds no closure, which keeps the
    // task's future `Send` for every lifetime.
    let mut fetches = Vec::with_capacity(tables.len());
    for (i, (table, version)) in tables.iter().zip(versions).enumerate() {
        let first = first_asked(owners, prover, i);
        fetches.push(checked_table(source, &end, &nodes, first, *table, version));
    }
    let checked: Vec<CheckedTable> = futures::stream::iter(fetches)
        .buffer_unordered(CONCURRENT_FETCHES)
        .try_collect()
        .await?;
    let mut s = lock(state);
    if s.shard_epoch.as_ref().map(|r| r.epoch) != Some(epoch) {
        return Ok(0);
    }
    let owned = s.ledger.owned_tables();
    let checked: Vec<CheckedTable> = checked
        .into_iter()
        .filter(|c| !owned.contains(c.table()))
        .collect();
    if checked.is_empty() {
        return Ok(0);
    }
    // What a replaying peer needs to check these imports without the previous owner,
    // committed with them (once per source shard and epoch: every table imported from
    // there is proven by the same block).
    let key = key_imported_epoch_end(from, previous);
    let mut proof = WriteBatch::default();
    if s.ledger
        .kv()
        .get(Space::Meta, &key)
        .map_err(|e| e.to_string())?
        .is_none()
    {
        let json = serde_json::to_vec(&CertifiedBlockJson::from(&end.answer))
            .map_err(|e| e.to_string())?;
        proof.put(Space::Meta, key, json);
    }
    let count = checked.len();
    s.ledger
        .import_tables_with(checked, proof)
        .map_err(|e| format!("importing {count} tables from shard {from}: {e}"))?;
    sync_place(&mut s);
    Ok(count)
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
        let (pending, epoch) = {
            let s = lock(&state);
            let epoch = s.shard_epoch.as_ref().map_or(0, |r| r.epoch);
            (crate::epoch_switch::pending_imports(&s), epoch)
        };
        let mut by_source: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
        for incoming in &pending {
            by_source
                .entry(incoming.from)
                .or_default()
                .push(incoming.table);
        }
        let mut failed = 0;
        let mut first = None;
        for (from, tables) in by_source {
            let began = Instant::now();
            match take_over(&state, &chain_id, &source, from, &tables, start).await {
                Ok(0) => {}
                Ok(imported) => info!(
                    from,
                    epoch,
                    tables = imported,
                    millis = began.elapsed().as_millis() as u64,
                    "tables handed off"
                ),
                Err(e) => {
                    failed += tables.len();
                    first.get_or_insert(e);
                }
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
            if let Some(shard) = p.shard.filter(|shard| Some(*shard) != s.own_shard()) {
                let bytes = s
                    .ledger
                    .kv()
                    .get(Space::Meta, &key_imported_epoch_end(shard, p.epoch))
                    .map_err(|e| internal(e.to_string()))?
                    .ok_or_else(|| {
                        not_found(format!(
                            "this node's shard imported no tables from shard {shard}'s epoch {}",
                            p.epoch
                        ))
                    })?;
                return serde_json::from_slice::<Value>(&bytes)
                    .map_err(|e| internal(format!("stored epoch-end proof: {e}")));
            }
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
    async fn epoch_end(
        &self,
        node: &Peer,
        shard: u16,
        epoch: u64,
    ) -> Result<CertifiedBlock, String> {
        let params = serde_json::to_value(EpochEndParams {
            epoch,
            shard: Some(shard),
        })
        .map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ShardPlace;
    use crate::cross_shard::tests::{CHAIN, beacon, certify, keys};
    use crate::epoch_switch::{Incoming, ShardEpoch};
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use trellis_node_state::{Entry, KvError, Ledger, MemKv};
    use trellis_node_types::{
        Digest, Encode, PrivateKey, ShardHeader, Sharding, Signer, TableRoot, TxKind, UnsignedTx,
        test_key,
    };

    type State = Arc<Mutex<NodeState<MemKv>>>;

    /// How a node answers the handoff's questions.
    #[derive(Clone)]
    enum Node {
        /// Down or deleted: every question fails.
        Gone,
        /// Shard 1's node: its epoch-end block of epoch 0 and its ledger's history.
        Owner(Arc<Mutex<Ledger<MemKv>>>, CertifiedBlock),
        /// A node of shard 0, answering from its state as its RPC does.
        Peer(State),
        /// Serves its peer's epoch-end answer with a tampered certificate.
        Forger(State),
        /// Like `Owner`, but changes a byte of the first leaf of every chunk it serves.
        Tamperer(Arc<Mutex<Ledger<MemKv>>>, CertifiedBlock),
    }

    /// The nodes by key, and which were asked, in order.
    #[derive(Default)]
    struct Network {
        nodes: Mutex<BTreeMap<PublicKey, Node>>,
        /// Who was asked for an epoch-end proof.
        asked: Mutex<Vec<PublicKey>>,
        /// How many snapshot chunks were asked for.
        chunks: AtomicUsize,
    }

    impl Network {
        fn set(&self, key: &PrivateKey, node: Node) {
            self.nodes.lock().unwrap().insert(key.public_key(), node);
        }

        fn node(&self, peer: &Peer) -> Node {
            self.nodes
                .lock()
                .unwrap()
                .get(&peer.key)
                .cloned()
                .unwrap_or(Node::Gone)
        }
    }

    fn served<K: Kv>(
        state: &Mutex<NodeState<K>>,
        shard: u16,
        epoch: u64,
    ) -> Result<CertifiedBlock, String> {
        let answer = dispatch(
            state,
            GET_EPOCH_END,
            &serde_json::json!({"epoch": epoch, "shard": shard}),
        )
        .ok_or("not dispatched")?
        .map_err(|(code, message)| format!("{code}: {message}"))?;
        serde_json::from_value::<CertifiedBlockJson>(answer)
            .map_err(|e| e.to_string())?
            .decode()
    }

    impl HandoffSource for Network {
        async fn epoch_end(
            &self,
            node: &Peer,
            shard: u16,
            epoch: u64,
        ) -> Result<CertifiedBlock, String> {
            self.asked.lock().unwrap().push(node.key.clone());
            match self.node(node) {
                Node::Gone => Err("connection refused".into()),
                Node::Owner(_, block) | Node::Tamperer(_, block) if shard == 1 && epoch == 0 => {
                    Ok(block)
                }
                Node::Owner(..) | Node::Tamperer(..) => Err("epoch has not ended here".into()),
                Node::Peer(state) => served(&state, shard, epoch),
                Node::Forger(state) => {
                    let mut answer = served(&state, shard, epoch)?;
                    if let Some(last) = answer.certificate.last_mut() {
                        *last ^= 1;
                    }
                    Ok(answer)
                }
            }
        }

        async fn chunk(
            &self,
            node: &Peer,
            request: SnapshotRequest,
        ) -> Result<TableSnapshot, String> {
            self.chunks.fetch_add(1, Ordering::Relaxed);
            let served = match self.node(node) {
                Node::Gone => return Err("connection refused".into()),
                Node::Owner(ledger, _) => {
                    crate::rpc_shard::table_snapshot(&ledger.lock().unwrap(), &request)
                }
                Node::Tamperer(ledger, _) => {
                    let mut chunk =
                        crate::rpc_shard::table_snapshot(&ledger.lock().unwrap(), &request)
                            .map_err(|e| e.to_string())?;
                    if let Some((_, value)) = chunk.leaves.first_mut() {
                        value[0] ^= 1;
                    }
                    Ok(chunk)
                }
                Node::Peer(state) | Node::Forger(state) => {
                    crate::rpc_shard::table_snapshot(&lock(&state).ledger, &request)
                }
            };
            served.map_err(|e| e.to_string())
        }

        async fn forward(&self, _: &Peer, _: &Tx) -> Result<(), String> {
            Ok(())
        }
    }

    fn tables(beacon: &BeaconState, shard: u16) -> Vec<u8> {
        (0..=255u8).filter(|t| beacon.owner(*t) == shard).collect()
    }

    fn account_of(beacon: &BeaconState, shard: u16, from: u64) -> PrivateKey {
        (from..)
            .map(test_key)
            .find(|k| beacon.owner(table_of(&k.public_key())) == shard)
            .unwrap()
    }

    fn pay(from: &PrivateKey, to: &PrivateKey, nonce: u64) -> Tx {
        UnsignedTx {
            chain_id: CHAIN.into(),
            from: from.public_key(),
            nonce,
            fee: 1,
            kind: TxKind::Transfer {
                to: to.public_key(),
                amount: 10,
            },
        }
        .sign(from)
    }

    /// Shard 1 ended epoch 0 with alice's table changed (her transfer to bob, shard 0);
    /// shard 0 takes the table over in epoch 1.
    struct World {
        beacon: BeaconState,
        balances: Vec<(PublicKey, u64)>,
        alice: PrivateKey,
        bob: PrivateKey,
        table: u8,
        root: [u8; 32],
        owner: Node,
    }

    fn world() -> World {
        let beacon = beacon();
        let alice = account_of(&beacon, 1, 1_000);
        let bob = account_of(&beacon, 0, 2_000);
        let balances = vec![(alice.public_key(), 1_000), (bob.public_key(), 1_000)];
        let mut ledger = Ledger::open(MemKv::default()).unwrap();
        ledger
            .init_genesis_owned(&balances, &tables(&beacon, 1).into_iter().collect())
            .unwrap();
        assert!(ledger.apply_block(1, &[pay(&alice, &bob, 0)]).unwrap()[0].success);
        let roots: Vec<TableRoot> = tables(&beacon, 1)
            .into_iter()
            .map(|table| TableRoot {
                table,
                root: ledger.table_root_at(table, 1).unwrap().unwrap(),
            })
            .collect();
        // The epoch-end block (height 2) executes empty: its roots are those of height 1.
        ledger.apply_block(2, &[]).unwrap();
        let table = table_of(&alice.public_key());
        let root = roots.iter().find(|r| r.table == table).unwrap().root;
        // The epoch-end block of shard 1's epoch 0: it names a beacon height of epoch 1.
        let block = Block::new(Digest([1; 32]), 2, 0, 2, 0, vec![]).with_sharding(Sharding {
            header: ShardHeader {
                committee: Committee::Shard(1),
                beacon_height: 10,
                state_height: 1,
                roots,
            },
            credits: vec![],
            system: vec![],
        });
        let certificate = certify(&keys(200), Committee::Shard(1), block.digest());
        let owner = Node::Owner(
            Arc::new(Mutex::new(ledger)),
            CertifiedBlock {
                block: block.encode().to_vec(),
                certificate,
            },
        );
        World {
            beacon,
            balances,
            alice,
            bob,
            table,
            root,
            owner,
        }
    }

    /// A node of shard 0 in epoch 1, whose record lists alice's table as incoming.
    fn importer(w: &World) -> State {
        let incoming = vec![Incoming {
            table: w.table,
            from: 1,
        }];
        importer_in(w, MemKv::default(), incoming)
    }

    /// A node of shard 0 in epoch 1 over `kv`, whose record lists `incoming`.
    fn importer_in<K: Kv>(w: &World, kv: K, incoming: Vec<Incoming>) -> Arc<Mutex<NodeState<K>>> {
        let place = ShardPlace {
            committee: Committee::Shard(0),
            tables: tables(&w.beacon, 0),
            beacon_height: 10,
        };
        let mut node = NodeState::open_in(kv, CHAIN, &w.balances, 10, Some(place))
            .unwrap()
            .with_beacon(w.beacon.clone())
            .unwrap();
        node.shard_epoch = Some(ShardEpoch {
            epoch: 1,
            floor: 0,
            validators: Vec::new(),
            tables: (0..=255).collect(),
            incoming,
            drained: false,
        });
        Arc::new(Mutex::new(node))
    }

    fn take<S: HandoffSource>(state: &State, source: &S, table: u8) -> Result<(), String> {
        futures::executor::block_on(take_over(state, CHAIN, source, 1, &[table], 0)).map(|_| ())
    }

    #[test]
    fn holders_are_the_previous_owner_then_this_shard_each_once() {
        let beacon = beacon();
        let old: Vec<PublicKey> = nodes_of(&beacon, 1, 0).into_iter().map(|p| p.key).collect();
        let own: Vec<PublicKey> = nodes_of(&beacon, 0, 0).into_iter().map(|p| p.key).collect();
        let asked: Vec<PublicKey> = holders(&beacon, 1, 0, Some(0), 1)
            .into_iter()
            .map(|p| p.key)
            .collect();
        // The old owner's nodes from `start`, then this shard's current committee (the
        // beacon knows no committee of epoch 1 yet).
        let rotated: Vec<PublicKey> = old[1..].iter().chain(&old[..1]).cloned().collect();
        assert_eq!(asked[..4], rotated[..]);
        assert_eq!(asked[4..], own[..]);
        // Not a shard node: only the old owner's. Each node once.
        assert_eq!(holders(&beacon, 1, 0, None, 0).len(), 4);
        assert_eq!(holders(&beacon, 1, 0, Some(1), 0).len(), 4);
    }

    #[test]
    fn an_import_replays_from_this_shards_nodes_once_the_old_owner_is_gone() {
        let w = world();
        let network = Network::default();
        for key in keys(200) {
            network.set(&key, w.owner.clone());
        }
        // A node of shard 0 imports from the previous owner and keeps the proof.
        let a = importer(&w);
        take(&a, &network, w.table).unwrap();
        assert!(lock(&a).ledger.owned_tables().contains(w.table));
        assert_eq!(lock(&a).ledger.table_root(w.table), w.root);
        let kept = served(&a, 1, 0).unwrap();
        assert!(matches!(&w.owner, Node::Owner(_, b) if *b == kept));
        // Its first block after the import changes the table again.
        assert!(
            lock(&a)
                .ledger
                .apply_block(1, &[pay(&w.alice, &w.bob, 1)])
                .unwrap()[0]
                .success
        );
        assert_ne!(lock(&a).ledger.table_root(w.table), w.root);

        // Shard 1's nodes are deleted. A node that replays shard 0's history asks them
        // first, then shard 0's nodes: a forger's answer fails its certificate, the
        // importer's holds, and the imported leaves are served by their root.
        let shard0 = keys(100);
        for key in keys(200) {
            network.set(&key, Node::Gone);
        }
        network.set(&shard0[0], Node::Forger(a.clone()));
        network.set(&shard0[1], Node::Forger(a.clone()));
        network.set(&shard0[2], Node::Peer(a.clone()));
        network.asked.lock().unwrap().clear();
        let b = importer(&w);
        take(&b, &network, w.table).unwrap();
        assert!(lock(&b).ledger.owned_tables().contains(w.table));
        assert_eq!(lock(&b).ledger.table_root(w.table), w.root);
        assert_eq!(
            lock(&b)
                .ledger
                .account(&w.alice.public_key())
                .unwrap()
                .nonce,
            1
        );
        let asked = network.asked.lock().unwrap().clone();
        let old: BTreeSet<PublicKey> = keys(200).iter().map(|k| k.public_key()).collect();
        assert!(asked[..4].iter().all(|k| old.contains(k)), "{asked:?}");
        assert_eq!(asked.last(), Some(&shard0[2].public_key()));
        // The replayed node serves the proof in its turn.
        assert_eq!(served(&b, 1, 0).unwrap(), kept);
    }

    #[test]
    fn nothing_is_imported_while_nobody_serves_a_checked_answer() {
        let w = world();
        let network = Network::default();
        // The old owner is gone; shard 0's nodes never imported the table.
        let a = importer(&w);
        for key in keys(100) {
            network.set(&key, Node::Peer(a.clone()));
        }
        let b = importer(&w);
        let e = take(&b, &network, w.table).unwrap_err();
        assert!(
            e.contains("imported no tables from shard 1's epoch 0"),
            "{e}"
        );
        assert!(!lock(&b).ledger.owned_tables().contains(w.table));
        assert!(
            lock(&b)
                .ledger
                .kv()
                .get(Space::Meta, &key_imported_epoch_end(1, 0))
                .unwrap()
                .is_none()
        );
        // Its own epoch 0 has not ended either; a bad parameter is a clear error.
        let own = dispatch(&a, GET_EPOCH_END, &serde_json::json!({"epoch": 0}));
        let (code, message) = own.unwrap().unwrap_err();
        assert_eq!(code, codes::NOT_FOUND);
        assert!(message.contains("epoch 0 has not ended here"), "{message}");
        let bad = dispatch(
            &a,
            GET_EPOCH_END,
            &serde_json::json!({"epoch": 0, "shard": -1}),
        );
        assert_eq!(bad.unwrap().unwrap_err().0, codes::INVALID_PARAMS);
    }

    /// A real in-memory store that counts commits and, while `crash` is set, fails them
    /// as a crash at the commit would: the store's commit is atomic (redb's durable
    /// transaction in production), so a failed one has written nothing.
    #[derive(Clone, Default)]
    struct CountingKv {
        inner: MemKv,
        commits: Arc<AtomicUsize>,
        crash: Arc<AtomicBool>,
    }

    impl Kv for CountingKv {
        fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
            self.inner.get(space, key)
        }

        fn last_in(&self, space: Space, from: &[u8], to: &[u8]) -> Result<Option<Entry>, KvError> {
            self.inner.last_in(space, from, to)
        }

        fn first_in(&self, space: Space, from: &[u8], to: &[u8]) -> Result<Option<Entry>, KvError> {
            self.inner.first_in(space, from, to)
        }

        fn commit(&self, batch: WriteBatch) -> Result<(), KvError> {
            if self.crash.load(Ordering::Relaxed) {
                return Err(KvError("crashed during the commit".into()));
            }
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.inner.commit(batch)
        }
    }

    /// Shard 0 takes over every table of shard 1 (alice's changed one among them).
    fn all_of_shard_1(w: &World) -> (Vec<u8>, Vec<Incoming>) {
        let moved = tables(&w.beacon, 1);
        let incoming = moved
            .iter()
            .map(|&table| Incoming { table, from: 1 })
            .collect();
        (moved, incoming)
    }

    /// Real: the ledgers, the owner's epoch-end block and certificate, the snapshots
    /// served from its history and the checks. Counted: the questions asked and the
    /// importer's commits.
    #[test]
    fn a_source_is_proven_once_and_its_tables_imported_in_one_commit() {
        let w = world();
        let network = Network::default();
        for key in keys(200) {
            network.set(&key, w.owner.clone());
        }
        let (moved, incoming) = all_of_shard_1(&w);
        assert!(moved.len() > 100, "{}", moved.len());
        let kv = CountingKv::default();
        let a = importer_in(&w, kv.clone(), incoming);
        let before = kv.commits.load(Ordering::Relaxed);
        let imported =
            futures::executor::block_on(take_over(&a, CHAIN, &network, 1, &moved, 0)).unwrap();
        assert_eq!(imported, moved.len());
        // One proof fetch for the source's epoch, one chunk per (small) table, one commit.
        assert_eq!(network.asked.lock().unwrap().len(), 1);
        assert_eq!(network.chunks.load(Ordering::Relaxed), moved.len());
        assert_eq!(kv.commits.load(Ordering::Relaxed) - before, 1);
        let Node::Owner(owner, proof) = &w.owner else {
            unreachable!()
        };
        let s = lock(&a);
        for &table in &moved {
            assert!(s.ledger.owned_tables().contains(table), "table {table}");
            assert_eq!(
                Some(s.ledger.table_root(table)),
                owner.lock().unwrap().table_root_at(table, 1).unwrap()
            );
        }
        assert!(crate::epoch_switch::pending_imports(&s).is_empty());
        drop(s);
        assert_eq!(&served(&a, 1, 0).unwrap(), proof);
        // Done: nothing more is asked or committed.
        assert_eq!(
            futures::executor::block_on(take_over(&a, CHAIN, &network, 1, &moved, 0)),
            Ok(0)
        );
    }

    /// Real: as above; the crash is a commit that writes nothing (see [`CountingKv`]).
    #[test]
    fn a_crash_at_the_commit_leaves_none_of_the_sources_tables() {
        let w = world();
        let network = Network::default();
        for key in keys(200) {
            network.set(&key, w.owner.clone());
        }
        let (moved, incoming) = all_of_shard_1(&w);
        let kv = CountingKv::default();
        let a = importer_in(&w, kv.clone(), incoming);
        kv.crash.store(true, Ordering::Relaxed);
        let e =
            futures::executor::block_on(take_over(&a, CHAIN, &network, 1, &moved, 0)).unwrap_err();
        assert!(e.contains("crashed during the commit"), "{e}");
        // Neither the node nor the store after a restart holds any of them, nor the proof.
        let reopened = Ledger::open(kv.inner.clone()).unwrap();
        let none = |owned: trellis_node_state::TableSet| moved.iter().all(|t| !owned.contains(*t));
        assert!(none(lock(&a).ledger.owned_tables()));
        assert!(none(reopened.owned_tables()));
        assert_eq!(
            kv.get(Space::Meta, &key_imported_epoch_end(1, 0)).unwrap(),
            None
        );
        assert_eq!(
            crate::epoch_switch::pending_imports(&lock(&a)).len(),
            moved.len()
        );
        // The next round imports all of them.
        kv.crash.store(false, Ordering::Relaxed);
        futures::executor::block_on(take_over(&a, CHAIN, &network, 1, &moved, 0)).unwrap();
        let reopened = Ledger::open(kv.inner.clone()).unwrap();
        assert!(moved.iter().all(|t| reopened.owned_tables().contains(*t)));
        assert_eq!(
            reopened.table_root(w.table),
            w.root,
            "alice's table as certified"
        );
        assert!(
            kv.get(Space::Meta, &key_imported_epoch_end(1, 0))
                .unwrap()
                .is_some()
        );
    }

    /// Real: as above. A node that serves a forged snapshot of one table costs that table
    /// one more fetch from the next node, not the batch.
    #[test]
    fn a_forged_table_is_fetched_again_from_the_next_node() {
        let w = world();
        let network = Network::default();
        let owners = keys(200);
        for key in &owners {
            network.set(key, w.owner.clone());
        }
        // The first node asked serves the true proof but alice's table with a changed leaf.
        let Node::Owner(ledger, proof) = &w.owner else {
            unreachable!()
        };
        let nodes = holders(&w.beacon, 1, 0, Some(0), 0);
        let liar = owners
            .iter()
            .find(|k| k.public_key() == nodes[0].key)
            .unwrap();
        network.set(liar, Node::Tamperer(ledger.clone(), proof.clone()));
        let a = importer(&w);
        // The liar proves the epoch end; alice's table is refused from it, taken from the next.
        futures::executor::block_on(take_over(&a, CHAIN, &network, 1, &[w.table], 0)).unwrap();
        assert_eq!(lock(&a).ledger.table_root(w.table), w.root);
        assert_eq!(
            lock(&a)
                .ledger
                .account(&w.alice.public_key())
                .unwrap()
                .balance,
            ledger
                .lock()
                .unwrap()
                .account(&w.alice.public_key())
                .unwrap()
                .balance
        );
        assert_eq!(network.chunks.load(Ordering::Relaxed), 2);
    }
}
