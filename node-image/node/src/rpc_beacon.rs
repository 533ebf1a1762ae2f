//! The sharding methods of the JSON-RPC API that the beacon answers: system transactions
//! (`trellis_submitSystem`, `trellis_getSystem`, `trellis_getSystemSequence`), the shard
//! map (`trellis_getShardMap`) and finalized beacon blocks for followers
//! (`trellis_getBeaconBlocks`).

use crate::chain::{NodeState, lock};
use crate::rpc::Rpc;
use crate::rpc_governance::Failure;
use trellis_node_api::shard::{
    ShardMapInfo, SubmitSystemParams, SubmitSystemResult, SystemSequence, SystemSequenceQuery,
    SystemStatus,
};
use trellis_node_api::{
    BeaconBlocks, BeaconBlocksQuery, TransactionQuery, TxState, error_codes as codes,
};
use trellis_node_state::Kv;
use trellis_node_types::{Digest, Encode, SystemTx, from_hex, public_key_from_hex, to_hex};

/// Most blocks one `trellis_getBeaconBlocks` answer holds.
const MAX_BEACON_BLOCKS: u64 = 256;

fn internal(e: impl std::fmt::Display) -> Failure {
    (codes::INTERNAL, e.to_string())
}

fn unsharded() -> Failure {
    (
        codes::METHOD_NOT_FOUND,
        "this network is not sharded (its genesis has no sharding section)".into(),
    )
}

/// `trellis_submitSystem` (beacon nodes).
pub fn submit<K: Kv>(rpc: &Rpc<K>, p: SubmitSystemParams) -> Result<SubmitSystemResult, Failure> {
    let tx = SystemTx::from_hex(&p.tx).map_err(|e| (codes::SYSTEM_REFUSED, e.to_string()))?;
    let signer = to_hex(tx.signer.as_ref());
    let sequence = tx.payload.sequence;
    let hash = lock(&rpc.state)
        .submit_system(tx, &rpc.chain_id)
        .map_err(|e| (e.code, e.message))?;
    Ok(SubmitSystemResult {
        hash: to_hex(&hash.0),
        signer,
        sequence,
    })
}

/// `trellis_getSystem`.
pub fn status<K: Kv>(rpc: &Rpc<K>, q: TransactionQuery) -> Result<SystemStatus, Failure> {
    let bytes = from_hex(&q.hash).filter(|b| b.len() == 32).ok_or_else(|| {
        (
            codes::INVALID_PARAMS,
            "hash is not 32 bytes of hex".to_string(),
        )
    })?;
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes);
    let hash = Digest(hash);
    let state = lock(&rpc.state);
    if let Some(receipt) = state.system_receipt(&hash).map_err(internal)? {
        return Ok(SystemStatus {
            hash: q.hash,
            state: TxState::Committed,
            height: Some(receipt.height),
            success: Some(receipt.success),
            error: receipt.error,
            effective_epoch: None,
        });
    }
    let pending = state.system_pool.iter().any(|t| t.hash() == hash);
    Ok(SystemStatus {
        hash: q.hash,
        state: if pending {
            TxState::Pending
        } else {
            TxState::Unknown
        },
        height: None,
        success: None,
        error: None,
        effective_epoch: None,
    })
}

/// `trellis_getSystemSequence`.
pub fn sequence<K: Kv>(rpc: &Rpc<K>, q: SystemSequenceQuery) -> Result<SystemSequence, Failure> {
    let key = public_key_from_hex(&q.key).ok_or_else(|| {
        (
            codes::INVALID_PARAMS,
            "key is not a hex public key".to_string(),
        )
    })?;
    let state = lock(&rpc.state);
    let beacon = state.beacon.as_ref().ok_or_else(unsharded)?;
    Ok(SystemSequence {
        key: q.key,
        sequence: beacon.next_sequence(&key),
    })
}

/// `trellis_getShardMap`: the beacon state this node holds — a beacon node's finalized
/// one; a shard node's as far as it has followed the beacon (`beacon_height`).
pub fn shard_map<K: Kv>(rpc: &Rpc<K>) -> Result<ShardMapInfo, Failure> {
    let state = lock(&rpc.state);
    let beacon = state.beacon.as_ref().ok_or_else(unsharded)?;
    let height = match state.shard.as_ref().map(|p| p.committee) {
        Some(trellis_node_types::Committee::Beacon) => state.finalized_height(),
        _ => state.shard.as_ref().map_or(0, |p| p.beacon_height),
    };
    Ok(beacon.shard_map(height))
}

/// `trellis_getBeaconBlocks` (beacon nodes): blocks `from..` up to a certified one.
pub fn blocks<K: Kv>(rpc: &Rpc<K>, q: BeaconBlocksQuery) -> Result<BeaconBlocks, Failure> {
    blocks_of(&lock(&rpc.state), q)
}

/// `trellis_getBeaconBlocks` over a node's state (also the in-process relay's answer).
pub fn blocks_of<K: Kv>(
    state: &NodeState<K>,
    q: BeaconBlocksQuery,
) -> Result<BeaconBlocks, Failure> {
    let beacon = trellis_node_types::Committee::Beacon;
    if state.shard.as_ref().map(|p| p.committee) != Some(beacon) {
        return Err((
            codes::METHOD_NOT_FOUND,
            "only beacon nodes serve beacon blocks".into(),
        ));
    }
    if q.from == 0 || q.limit == 0 || q.limit > 64 {
        return Err((
            codes::INVALID_PARAMS,
            "from must be ≥ 1 and limit in 1..=64".into(),
        ));
    }
    let finalized = state.finalized_height();
    let mut blocks = Vec::new();
    let mut certificate = None;
    // Only what a certificate covers is served: blocks above the last certified one wait
    // for a later call.
    let mut certified = 0;
    let last = finalized.min(q.from.saturating_add(MAX_BEACON_BLOCKS - 1));
    for height in q.from..=last {
        let Some(block) = state.block(height).map_err(internal)? else {
            break;
        };
        blocks.push(to_hex(&block.encode()));
        if let Some(c) = state.finalization(height).map_err(internal)? {
            certificate = Some(to_hex(&c));
            certified = blocks.len();
            if certified >= q.limit as usize {
                break;
            }
        }
    }
    blocks.truncate(certified);
    Ok(BeaconBlocks {
        blocks,
        certificate,
        finalized_height: finalized,
    })
}
