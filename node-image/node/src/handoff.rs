//! Table handoff at a shard's epoch switch (see [`crate::epoch_switch`]): each table
//! that moved to this shard is fetched from a node of its previous owner, rebuilt and
//! checked against the root in the previous owner's certified epoch-end header (its
//! certificate checked against that shard's validators for that epoch), then imported
//! atomically (`Ledger::import_table`). Until every incoming table is imported the node
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
//! nothing: an import and its proof are one commit, and the epoch record lists what is
//! still missing.
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
use trellis_node_state::{Kv, MAX_SNAPSHOT_LEAVES, Space, TableSnapshot, WriteBatch};
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

/// Takes over one incoming table: asks its [`holders`] in turn.
pub async fn take_over<K: Kv, S: HandoffSource>(
    state: &Arc<Mutex<NodeState<K>>>,
    chain_id: &str,
    source: &S,
    incoming: &Incoming,
    start: usize,
) -> Result<(), String> {
    let (beacon, epoch, own) = {
        let s = lock(state);
        let Some(record) = s.shard_epoch.as_ref() else {
            return Ok(());
        };
        let Some(beacon) = s.beacon.clone() else {
            return Err("no beacon state".into());
        };
        (beacon, record.epoch, s.own_shard())
    };
    let previous = epoch.saturating_sub(1);
    let nodes = holders(&beacon, incoming.from, previous, own, start);
    if nodes.is_empty() {
        return Err(format!(
            "shard {} had no validators in epoch {previous}",
            incoming.from
        ));
    }
    let (mut first, mut last, mut refused) = (String::new(), String::new(), 0);
    for node in &nodes {
        let attempt = async {
            let answer = source.epoch_end(node, incoming.from, previous).await?;
            let (height, root) = certified_root(
                &beacon,
                chain_id,
                incoming.from,
                previous,
                incoming.table,
                &answer,
            )?;
            let chunks = snapshot(source, node, incoming.table, height, root).await?;
            let mut s = lock(state);
            if s.shard_epoch.as_ref().map(|r| r.epoch) != Some(epoch)
                || s.ledger.owned_tables().contains(incoming.table)
            {
                return Ok(());
            }
            // What a replaying peer needs to check this import without the previous
            // owner, committed with it (once per source shard and epoch: every table
            // imported from there is proven by the same block).
            let key = key_imported_epoch_end(incoming.from, previous);
            let mut proof = WriteBatch::default();
            if s.ledger
                .kv()
                .get(Space::Meta, &key)
                .map_err(|e| e.to_string())?
                .is_none()
            {
                let json = serde_json::to_vec(&CertifiedBlockJson::from(&answer))
                    .map_err(|e| e.to_string())?;
                proof.put(Space::Meta, key, json);
            }
            s.ledger
                .import_table_with(incoming.table, root, &chunks, proof)
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
            // The first refusal says why the previous owner could not serve (the later
            // ones are mostly "imported no tables" from this shard's nodes).
            Err(e) if first.is_empty() => {
                first = format!(
                    "table {} from shard {} (epoch {previous}) asked of node {}: {e}",
                    incoming.table,
                    incoming.from,
                    to_hex(node.key.as_ref())
                );
            }
            Err(e) => {
                refused += 1;
                last = format!("{}: {e}", to_hex(node.key.as_ref()));
            }
        }
    }
    if refused > 0 {
        first.push_str(&format!(
            " ({refused} more nodes refused; the last, {last})"
        ));
    }
    Err(first)
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
    use crate::epoch_switch::ShardEpoch;
    use std::collections::{BTreeMap, BTreeSet};
    use trellis_node_state::{Ledger, MemKv};
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
    }

    /// The nodes by key, and which were asked, in order.
    #[derive(Default)]
    struct Network {
        nodes: Mutex<BTreeMap<PublicKey, Node>>,
        asked: Mutex<Vec<PublicKey>>,
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

    fn served(state: &State, shard: u16, epoch: u64) -> Result<CertifiedBlock, String> {
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
                Node::Owner(_, block) if shard == 1 && epoch == 0 => Ok(block),
                Node::Owner(..) => Err("epoch has not ended here".into()),
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
            let served = match self.node(node) {
                Node::Gone => return Err("connection refused".into()),
                Node::Owner(ledger, _) => {
                    crate::rpc_shard::table_snapshot(&ledger.lock().unwrap(), &request)
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
        let place = ShardPlace {
            committee: Committee::Shard(0),
            tables: tables(&w.beacon, 0),
            beacon_height: 10,
        };
        let mut node = NodeState::open_in(MemKv::default(), CHAIN, &w.balances, 10, Some(place))
            .unwrap()
            .with_beacon(w.beacon.clone())
            .unwrap();
        node.shard_epoch = Some(ShardEpoch {
            epoch: 1,
            floor: 0,
            validators: Vec::new(),
            tables: (0..=255).collect(),
            incoming: vec![Incoming {
                table: w.table,
                from: 1,
            }],
            drained: false,
        });
        Arc::new(Mutex::new(node))
    }

    fn take<S: HandoffSource>(state: &State, source: &S, table: u8) -> Result<(), String> {
        let incoming = Incoming { table, from: 1 };
        futures::executor::block_on(take_over(state, CHAIN, source, &incoming, 0))
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
}
