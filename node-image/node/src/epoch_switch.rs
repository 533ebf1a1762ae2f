//! Shard epochs follow the beacon's (live resharding, see docs/sharding.md "Epochs,
//! handoff and resharding").
//!
//! A shard's consensus epoch `E` is the beacon epoch `E`. Its **epoch-end block** is the
//! first block of consensus epoch `E` whose header names a followed beacon height of a
//! later beacon epoch (`beacon_height / epoch_length > E`). That block carries no
//! transactions and names `state_height = height − 1`, so its header's roots are the
//! final roots of the tables the shard owned in `E`. Executing it switches the shard to
//! epoch `E + 1` on every node at the same height: the tables that moved away stop being
//! owned, the tables that moved in are listed as `incoming` (fetched and imported by
//! [`crate::handoff`] before the node executes, proposes or votes anything of `E + 1`),
//! and consensus restarts with the beacon's committee for `E + 1`.
//!
//! A slot without a committee is **idle**: *waiting* for the beacon to create it, or
//! *drained* after a scale-in moved its tables away. An idle slot activates at the first
//! later beacon epoch whose committee of the slot is not empty.

use crate::chain::{Membership, NodeState};
use serde::{Deserialize, Serialize};
use trellis_node_beacon::BeaconState;
use trellis_node_state::{Kv, Space, StateError, TableSet, WriteBatch};
use trellis_node_types::{Block, Committee, PublicKey, public_key_from_hex, to_hex};

/// Where the shard's current epoch record is stored (committed with the epoch-end block).
pub const KEY_SHARD_EPOCH: &[u8] = b"chain/shard-epoch";

/// Where the height of the block that ended `epoch` is stored.
pub fn key_epoch_end(epoch: u64) -> Vec<u8> {
    [b"chain/epoch-end/".as_slice(), &epoch.to_be_bytes()].concat()
}

/// A table this shard takes over in its current epoch, and who owned it in the epoch
/// before (whose certified epoch-end header proves its root).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    pub table: u8,
    pub from: u16,
}

/// A shard node's current consensus epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEpoch {
    pub epoch: u64,
    /// Height of the last block before this epoch: the consensus engine's genesis.
    pub floor: u64,
    /// This epoch's validators, hex, sorted; empty while the slot is idle.
    pub validators: Vec<String>,
    /// The tables the shard owns this epoch once its handoff is complete, ascending.
    pub tables: Vec<u8>,
    /// Tables to import from their previous owner before this epoch's first block.
    pub incoming: Vec<Incoming>,
    /// True once a scale-in took the slot's last tables away (the operator may delete it).
    pub drained: bool,
}

impl ShardEpoch {
    /// The record at genesis: the genesis committee and tables, or idle (waiting) for a
    /// slot the genesis does not run.
    pub fn genesis(beacon: &BeaconState, shard: u16) -> Self {
        Self {
            epoch: 0,
            floor: 0,
            validators: hex_keys(&beacon.validators_at(shard, 0).unwrap_or_default()),
            tables: tables_of(beacon, shard, 0),
            incoming: Vec::new(),
            drained: false,
        }
    }

    pub fn idle(&self) -> bool {
        self.validators.is_empty()
    }

    pub fn validator_keys(&self) -> Vec<PublicKey> {
        let mut keys: Vec<PublicKey> = self
            .validators
            .iter()
            .filter_map(|k| public_key_from_hex(k))
            .collect();
        keys.sort();
        keys
    }

    /// The record of epoch `epoch` (entered after the block at `floor`), from the beacon's
    /// history: `previous` is the record being left.
    fn enter(beacon: &BeaconState, shard: u16, previous: &Self, epoch: u64, floor: u64) -> Self {
        let validators = hex_keys(&beacon.validators_at(shard, epoch).unwrap_or_default());
        let tables = tables_of(beacon, shard, epoch);
        let incoming = tables
            .iter()
            .filter(|t| !previous.tables.contains(t))
            .filter_map(|t| {
                let from = beacon.owner_at(*t, epoch.saturating_sub(1))?;
                Some(Incoming { table: *t, from })
            })
            .collect();
        let drained = validators.is_empty() && (previous.drained || !previous.tables.is_empty());
        Self {
            epoch,
            floor,
            validators,
            tables,
            incoming,
            drained,
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, StateError> {
        serde_json::to_vec(self).map_err(|e| StateError::Corrupt(format!("shard epoch: {e}")))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt(format!("shard epoch: {e}")))
    }
}

fn hex_keys(keys: &[PublicKey]) -> Vec<String> {
    let mut out: Vec<String> = keys.iter().map(|k| to_hex(k.as_ref())).collect();
    out.sort();
    out
}

/// The tables `shard` owns in `epoch` (ascending; empty when the history lacks it).
pub fn tables_of(beacon: &BeaconState, shard: u16, epoch: u64) -> Vec<u8> {
    (0..=255u8)
        .filter(|t| beacon.owner_at(*t, epoch) == Some(shard))
        .collect()
}

/// The beacon epoch a followed beacon height belongs to (after replaying it).
pub fn beacon_epoch(beacon: &BeaconState, beacon_height: u64) -> u64 {
    beacon_height / beacon.epoch_length().max(1)
}

/// True when `block` is the epoch-end block of a shard's consensus epoch `block.epoch`.
pub fn ends_epoch(beacon: &BeaconState, block: &Block) -> bool {
    block.sharding.as_ref().is_some_and(|s| {
        matches!(s.header.committee, Committee::Shard(_))
            && beacon_epoch(beacon, s.header.beacon_height) > block.epoch
    })
}

/// What consensus may not do on a shard node right now, if anything.
pub fn blocked<K: Kv>(state: &NodeState<K>) -> Option<String> {
    if let Some(why) = &state.unplaced {
        return Some(why.clone());
    }
    let record = state.shard_epoch.as_ref()?;
    if record.idle() {
        return Some(idle_reason(state, record));
    }
    let owned = state.ledger.owned_tables();
    let pending: Vec<u8> = record
        .incoming
        .iter()
        .map(|i| i.table)
        .filter(|t| !owned.contains(*t))
        .collect();
    if pending.is_empty() {
        None
    } else {
        Some(format!(
            "handing off tables {pending:?} for epoch {}",
            record.epoch
        ))
    }
}

fn idle_reason<K: Kv>(state: &NodeState<K>, record: &ShardEpoch) -> String {
    let shard = match state.shard.as_ref().map(|p| p.committee) {
        Some(Committee::Shard(s)) => s,
        _ => 0,
    };
    if record.drained {
        format!(
            "drained: shard {shard} has no tables and no committee since epoch {}; this node may be deleted",
            record.epoch
        )
    } else {
        format!("waiting for shard {shard} to be created by the beacon")
    }
}

/// The tables whose import is still missing (empty when the handoff is complete).
pub fn pending_imports<K: Kv>(state: &NodeState<K>) -> Vec<Incoming> {
    let Some(record) = state.shard_epoch.as_ref() else {
        return Vec::new();
    };
    let owned = state.ledger.owned_tables();
    record
        .incoming
        .iter()
        .filter(|i| !owned.contains(i.table))
        .cloned()
        .collect()
}

/// May the chain actor execute finalized `block` now? A shard node waits until it has
/// followed the beacon height the block names and until its handoff is complete.
pub fn executable<K: Kv>(state: &NodeState<K>, block: &Block) -> bool {
    let (Some(place), Some(sharding)) = (&state.shard, &block.sharding) else {
        return true;
    };
    if place.committee == Committee::Beacon {
        return true;
    }
    sharding.header.beacon_height <= place.beacon_height && blocked(state).is_none()
}

/// Loads (or creates, at genesis) the shard's epoch record and reconciles the ledger's
/// owned tables with it: a crash right after an epoch-end block committed may have left
/// the tables that moved away still marked owned (the change is idempotent).
pub fn restore<K: Kv>(state: &mut NodeState<K>) -> Result<(), StateError> {
    let Some(Committee::Shard(shard)) = state.shard.as_ref().map(|p| p.committee) else {
        return Ok(());
    };
    let Some(beacon) = state.beacon.as_ref() else {
        return Ok(());
    };
    let record = match state.ledger.kv().get(Space::Meta, KEY_SHARD_EPOCH)? {
        Some(bytes) => ShardEpoch::from_bytes(&bytes)?,
        None => {
            let record = ShardEpoch::genesis(beacon, shard);
            let mut batch = WriteBatch::default();
            batch.put(Space::Meta, KEY_SHARD_EPOCH.to_vec(), record.to_bytes()?);
            state.ledger.kv().commit(batch)?;
            record
        }
    };
    let allowed: TableSet = record.tables.iter().copied().collect();
    let owned = state.ledger.owned_tables();
    let kept: TableSet = owned.iter().filter(|t| allowed.contains(*t)).collect();
    if kept != owned {
        state.ledger.set_owned_tables(&kept)?;
    }
    state.epoch = record.epoch;
    state.shard_epoch = Some(record);
    sync_place(state);
    Ok(())
}

/// The place's owned tables are the ledger's (kept tables plus imports so far).
pub fn sync_place<K: Kv>(state: &mut NodeState<K>) {
    let owned = state.ledger.owned_tables();
    if let Some(place) = state.shard.as_mut() {
        place.tables = owned.iter().collect();
    }
}

/// At the execution of `block`, when it ends the shard's epoch: the next record, written
/// into `extra` (committed with the block), with the tables this shard keeps.
pub fn on_execute<K: Kv>(
    state: &NodeState<K>,
    block: &Block,
    extra: &mut WriteBatch,
) -> Result<Option<(ShardEpoch, TableSet)>, StateError> {
    let (Some(record), Some(beacon), Some(place)) =
        (&state.shard_epoch, &state.beacon, &state.shard)
    else {
        return Ok(None);
    };
    let Committee::Shard(shard) = place.committee else {
        return Ok(None);
    };
    if block.epoch != record.epoch || !ends_epoch(beacon, block) {
        return Ok(None);
    }
    let next = ShardEpoch::enter(beacon, shard, record, record.epoch + 1, block.height);
    extra.put(Space::Meta, KEY_SHARD_EPOCH.to_vec(), next.to_bytes()?);
    extra.put(
        Space::Meta,
        key_epoch_end(record.epoch),
        block.height.to_be_bytes().to_vec(),
    );
    let keep: TableSet = next.tables.iter().copied().collect();
    let kept = state
        .ledger
        .owned_tables()
        .iter()
        .filter(|t| keep.contains(*t))
        .collect();
    Ok(Some((next, kept)))
}

/// After the epoch-end block committed: the ledger stops owning what moved away and the
/// node enters the next epoch.
pub fn enter<K: Kv>(
    state: &mut NodeState<K>,
    next: ShardEpoch,
    kept: &TableSet,
) -> Result<(), StateError> {
    state.ledger.set_owned_tables(kept)?;
    tracing::info!(
        epoch = next.epoch,
        floor = next.floor,
        tables = next.tables.len(),
        incoming = next.incoming.len(),
        validators = next.validators.len(),
        "shard epoch switch"
    );
    state.epoch = next.epoch;
    state.shard_epoch = Some(next);
    sync_place(state);
    // Admitted transactions this shard no longer executes leave its pool (a block with
    // them would be refused): those whose sender's table moved go to its new shard.
    let refused: std::collections::HashSet<_> = state
        .mempool
        .select(usize::MAX, &std::collections::HashSet::new())
        .iter()
        .filter(|tx| state.check_tables(tx).is_err())
        .map(trellis_node_types::Tx::hash)
        .collect();
    let moved = state.mempool.take_where(|tx| refused.contains(&tx.hash()));
    let owned = state.ledger.owned_tables();
    for tx in moved {
        if owned.contains(trellis_node_types::table_of(&tx.unsigned.from)) {
            tracing::info!(tx = %tx.hash(), "dropped a transaction its shard no longer executes");
        } else {
            state.handed_over.push(tx);
        }
    }
    Ok(())
}

/// An idle slot activates at the first beacon epoch after its record's whose committee
/// of the slot is not empty (every node of the slot finds the same one in the beacon's
/// history). Returns true when it did (the record is stored).
pub fn activate_if_created<K: Kv>(state: &mut NodeState<K>) -> Result<bool, StateError> {
    let (Some(record), Some(beacon), Some(place)) =
        (&state.shard_epoch, &state.beacon, &state.shard)
    else {
        return Ok(false);
    };
    let Committee::Shard(shard) = place.committee else {
        return Ok(false);
    };
    if !record.idle() {
        return Ok(false);
    }
    let Some(epoch) = (record.epoch + 1..=beacon.epoch()).find(|e| {
        beacon
            .validators_at(shard, *e)
            .is_some_and(|v| !v.is_empty())
    }) else {
        return Ok(false);
    };
    let next = ShardEpoch::enter(beacon, shard, record, epoch, state.finalized_height());
    let mut batch = WriteBatch::default();
    batch.put(Space::Meta, KEY_SHARD_EPOCH.to_vec(), next.to_bytes()?);
    state.ledger.kv().commit(batch)?;
    state.epoch = next.epoch;
    state.shard_epoch = Some(next);
    Ok(true)
}

/// The membership consensus uses on a shard node: this epoch's committee, its p2p
/// addresses from the beacon registry, the epoch's floor as the engine's genesis, and the
/// "any" validators outside the committee as p2p followers
/// ([`crate::placement::catching_up`]).
pub fn membership<K: Kv>(state: &NodeState<K>) -> Result<Option<Membership>, StateError> {
    let Some(record) = state.shard_epoch.as_ref() else {
        return Ok(None);
    };
    let floor = state
        .block(record.floor)?
        .ok_or_else(|| StateError::Corrupt(format!("epoch floor block {}", record.floor)))?
        .digest();
    let validators = record.validator_keys();
    let peers = validators
        .iter()
        .map(|k| {
            let address = state
                .beacon
                .as_ref()
                .and_then(|b| b.registered().find(|v| v.node_key == *k))
                .map(|v| v.p2p_address.clone())
                .unwrap_or_default();
            (k.clone(), address)
        })
        .collect();
    let followers = state
        .beacon
        .as_ref()
        .map(|b| crate::placement::catching_up(b, &validators))
        .unwrap_or_default();
    Ok(Some(Membership {
        epoch: record.epoch,
        validators,
        floor,
        peer_set: record.epoch,
        peers,
        followers,
    }))
}

/// The height of the block that ended `epoch` on this node's chain, if it did.
pub fn epoch_end_height<K: Kv>(
    state: &NodeState<K>,
    epoch: u64,
) -> Result<Option<u64>, StateError> {
    match state.ledger.kv().get(Space::Meta, &key_epoch_end(epoch))? {
        None => Ok(None),
        Some(bytes) => Ok(Some(u64::from_be_bytes(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| StateError::Corrupt("epoch end height".into()))?,
        ))),
    }
}

/// True when a shard block proposed now, naming `beacon_height`, would end the current
/// consensus epoch.
pub fn would_end<K: Kv>(state: &NodeState<K>, beacon_height: u64) -> bool {
    match (&state.shard_epoch, &state.beacon) {
        (Some(record), Some(beacon)) => beacon_epoch(beacon, beacon_height) > record.epoch,
        _ => false,
    }
}

/// True when a block on `parent` is the first of the current consensus epoch (`parent`
/// is the epoch's floor, the engine's genesis).
pub fn first_of_epoch<K: Kv>(state: &NodeState<K>, parent: &Block) -> bool {
    state
        .shard_epoch
        .as_ref()
        .is_some_and(|record| record.floor == parent.height)
}

/// The beacon height an epoch-end block proposed now names: the followed `beacon_height`,
/// but at most the last height of the next epoch. A shard several epochs behind the
/// beacon then enters the next epoch on a floor of that epoch, where it can build
/// ordinary blocks, instead of on one naming a later epoch (which ends every epoch up to
/// the beacon's with an empty block).
pub fn epoch_end_beacon_height<K: Kv>(state: &NodeState<K>, beacon_height: u64) -> u64 {
    match (&state.shard_epoch, &state.beacon) {
        (Some(record), Some(beacon)) => {
            let last_of_next = record
                .epoch
                .saturating_add(2)
                .saturating_mul(beacon.epoch_length().max(1))
                .saturating_sub(1);
            beacon_height.min(last_of_next)
        }
        _ => beacon_height,
    }
}

/// Checks the epoch rules of a proposed shard block: `Ok(false)` while this node cannot
/// vote yet (idle, or its handoff is incomplete), `Err` when an epoch-end block carries
/// anything or names other roots than its parent's state.
pub fn check_end<K: Kv>(state: &NodeState<K>, block: &Block) -> Result<bool, String> {
    let (Some(_), Some(beacon)) = (&state.shard_epoch, &state.beacon) else {
        return Ok(true);
    };
    if blocked(state).is_some() {
        return Ok(false);
    }
    if !ends_epoch(beacon, block) {
        return Ok(true);
    }
    let Some(sharding) = &block.sharding else {
        return Ok(true);
    };
    if !block.txs.is_empty() || !block.governance.is_empty() || !sharding.credits.is_empty() {
        return Err(format!(
            "the epoch-end block {} of epoch {} carries transactions or credits",
            block.height, block.epoch
        ));
    }
    if sharding.header.state_height + 1 != block.height {
        return Err(format!(
            "the epoch-end block {} must name state height {}, not {}",
            block.height,
            block.height.saturating_sub(1),
            sharding.header.state_height
        ));
    }
    Ok(true)
}

/// True when a running shard node has followed the beacon more than one epoch past its
/// own consensus epoch: its shard has moved on without it (it was down), and it catches
/// up epoch by epoch from its peers' epoch-end proofs.
pub fn behind<K: Kv>(state: &NodeState<K>) -> bool {
    match (&state.shard_epoch, &state.beacon, &state.shard) {
        (Some(record), Some(beacon), Some(place)) if !record.idle() => {
            beacon_epoch(beacon, place.beacon_height) > record.epoch + 1
        }
        _ => false,
    }
}
