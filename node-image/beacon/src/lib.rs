//! The beacon's state machine: system transactions in, table map and committees out.
//!
//! [`BeaconState`] is pure and deterministic (no I/O, no clock, no randomness but the
//! epoch seed): every beacon validator executes the same finalized system transactions
//! in the same order and ends with the same state, and every shard node that replays the
//! beacon chain derives the same table map and committees.
//!
//! Lifecycle per finalized beacon block (the node drives it):
//! 1. [`BeaconState::execute`] each system transaction of the block, in order (the node
//!    stores the result as the transaction's receipt);
//! 2. [`BeaconState::end_of_block`] with the block's height and digest: at the last
//!    block of an epoch (height a multiple of `epoch_length`) it applies the pending
//!    shard count, computes the next epoch's table map and committees, and returns the
//!    [`EpochChange`] that the shards follow.
//!
//! Submissions are checked with [`BeaconState::check`] against the finalized state
//! before they enter the pool; execution re-checks, since state may have moved on.
//!
//! Epoch `e` holds beacon heights `e·L+1 ..= (e+1)·L` (`L` = `epoch_length`), like the
//! governance registry's epochs.

pub mod committee;
pub mod refusal;
pub mod tables;

pub use refusal::SystemRefusal;
pub use tables::{TableMap, TableMove, genesis_map, moves, plan_tables};

use commonware_cryptography::{Hasher, Sha256};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use trellis_node_api::shard::{ShardInfo, ShardMapInfo, ShardingMode};
use trellis_node_types::system::ANY_SHARD;
use trellis_node_types::{PublicKey, TABLES, to_hex};

/// Most validators registered at once (beacon state and committee computation stay small;
/// open registration cannot grow them without bound).
pub const MAX_VALIDATORS: usize = 4_096;
/// Epochs of committee and table-map history kept (changes only) for verifying old
/// shard certificates and receipts.
pub const MAX_HISTORY: usize = 1_024;
/// Version of [`BeaconState::to_bytes`]'s encoding.
pub const STATE_VERSION: u32 = 1;
/// Domain separator of the epoch seed chain.
const SEED_NAMESPACE: &[u8] = b"_TRELLIS_BEACON_SEED_V1";

/// How validators join (see [`committee`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Public,
    Consortium,
}

impl From<ShardingMode> for Mode {
    fn from(m: ShardingMode) -> Self {
        match m {
            ShardingMode::Public => Mode::Public,
            ShardingMode::Consortium => Mode::Consortium,
        }
    }
}

/// An organisation of a consortium: its admin key registers its validators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub admin_key: PublicKey,
}

/// A registered shard validator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    pub node_key: PublicKey,
    /// The shard it registered for, or [`ANY_SHARD`].
    pub shard: u16,
    pub p2p_address: String,
    pub rpc_address: String,
    /// Consortium mode: the member that registered it.
    pub member: Option<String>,
}

/// A validator's place in one epoch's committee, with its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seat {
    pub node_key: PublicKey,
    pub p2p_address: String,
    pub rpc_address: String,
}

/// A shard count change waiting for the end of the epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingCount {
    pub count: u16,
    /// The operator's per-table load hint (256 entries), or empty.
    pub load: Vec<u64>,
    /// Beacon height of the block that carried it.
    pub height: u64,
}

/// What the end of an epoch decided: the next epoch's table map and committees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochChange {
    /// The epoch that starts.
    pub epoch: u64,
    /// Its first beacon height.
    pub first_height: u64,
    pub previous_shard_count: u16,
    pub shard_count: u16,
    pub tables: TableMap,
    /// Tables changing owner (empty when the count did not change).
    pub moves: Vec<TableMove>,
    /// Committee of each shard (index = shard), keys sorted.
    pub committees: Vec<Vec<PublicKey>>,
    pub seed: [u8; 32],
    /// Why a pending shard count change did not apply (it stays pending).
    pub deferred: Option<String>,
}

/// A beacon state that cannot be built or restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BeaconError {
    #[error("invalid sharding genesis: {0}")]
    Genesis(String),
    #[error("stored beacon state is corrupt: {0}")]
    Corrupt(String),
}

/// One stretch of epochs with the same table map and committees.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EpochRecord {
    from_epoch: u64,
    tables: TableMap,
    committees: Vec<Vec<PublicKey>>,
}

/// The beacon's replicated state. See the crate documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BeaconState {
    chain_id: String,
    mode: Mode,
    admin_key: PublicKey,
    epoch_length: u64,
    max_shards: u16,
    epoch: u64,
    shard_count: u16,
    tables: TableMap,
    /// This epoch's committees (index = shard), sorted by key.
    committees: Vec<Vec<Seat>>,
    beacon: Vec<Seat>,
    /// The registry: input of the next epoch's committees.
    validators: BTreeMap<PublicKey, Validator>,
    /// Consortium members: name → admin key.
    members: BTreeMap<String, PublicKey>,
    /// Next system sequence of every key that signed one.
    sequences: BTreeMap<PublicKey, u64>,
    pending: Option<PendingCount>,
    /// The last load hint the operator gave (zeros: none yet); informational.
    load: [u64; TABLES],
    seed: [u8; 32],
    /// The epoch in which the last shard count change hands its tables off.
    resharding_epoch: Option<u64>,
    /// Table maps and committees from `from_epoch` on, oldest first; the last is current.
    history: Vec<EpochRecord>,
}

fn hex(key: &PublicKey) -> String {
    to_hex(key.as_ref())
}

impl BeaconState {
    fn member_names(&self) -> BTreeSet<String> {
        self.members.keys().cloned().collect()
    }

    /// Seats (with addresses) for committee keys: the registry's addresses, else the
    /// ones they had in `previous` (a validator kept although it deregistered).
    fn seats(&self, keys: &[Vec<PublicKey>], previous: &[Vec<Seat>]) -> Vec<Vec<Seat>> {
        let old: BTreeMap<&PublicKey, &Seat> = previous
            .iter()
            .flatten()
            .map(|s| (&s.node_key, s))
            .collect();
        keys.iter()
            .map(|committee| {
                committee
                    .iter()
                    .filter_map(|k| match self.validators.get(k) {
                        Some(v) => Some(Seat {
                            node_key: k.clone(),
                            p2p_address: v.p2p_address.clone(),
                            rpc_address: v.rpc_address.clone(),
                        }),
                        None => old.get(k).map(|s| (*s).clone()),
                    })
                    .collect()
            })
            .collect()
    }

    fn current_keys(&self) -> Vec<Vec<PublicKey>> {
        self.committees
            .iter()
            .map(|c| c.iter().map(|s| s.node_key.clone()).collect())
            .collect()
    }

    /// Replaces the consortium's members (the node calls it when a governance change
    /// applies). A removed member's validators are deregistered with it: they leave the
    /// committees at the next epoch boundary (a shard they leave empty keeps its
    /// committee until validators register for it).
    pub fn set_members(&mut self, members: Vec<Member>) {
        self.members = members.into_iter().map(|m| (m.name, m.admin_key)).collect();
        let members = &self.members;
        self.validators
            .retain(|_, v| v.member.as_ref().is_some_and(|m| members.contains_key(m)));
    }

    /// Called after the system transactions of every finalized beacon block. At the last
    /// block of the epoch (`height` = the epoch's end) it starts the next epoch and
    /// returns what changed; otherwise `None`. `digest` is the block's digest: it feeds
    /// the epoch seed, which no single proposer can choose without the block being
    /// certified by the committee.
    pub fn end_of_block(&mut self, height: u64, digest: &[u8; 32]) -> Option<EpochChange> {
        if height == 0 || height != self.next_epoch_height() {
            return None;
        }
        let seed = Sha256::hash(&[SEED_NAMESPACE, &self.seed, digest]).0;
        let previous = self.current_keys();
        let members = self.member_names();
        let assign = |count| {
            committee::assign(
                self.mode,
                count,
                &self.validators,
                &previous,
                &seed,
                &members,
            )
        };
        let from = self.shard_count;
        let mut deferred = None;
        let mut applied = None;
        if let Some(p) = &self.pending {
            let keys = assign(p.count);
            match keys.iter().position(Vec::is_empty) {
                Some(s) => {
                    deferred = Some(format!(
                        "the change to {} shards waits: shard {s} has no validators \
                         (register validators for shard {s})",
                        p.count
                    ));
                }
                None => applied = Some((p.count, keys)),
            }
        }
        let (to, mut keys) = match applied {
            Some(done) => done,
            None => (from, assign(from)),
        };
        // A shard left without validators (a member removed, say) keeps its committee
        // rather than stopping: the last resort, reported by `deferred` above or
        // refused at submission.
        for (s, committee) in keys.iter_mut().enumerate() {
            if committee.is_empty()
                && let Some(old) = previous.get(s)
            {
                committee.clone_from(old);
            }
        }
        let before = self.tables;
        if to != from {
            // The change's own load hint; without one, table counts (an older hint would
            // describe traffic that has moved on).
            let mut load = [0u64; TABLES];
            if let Some(p) = self.pending.take()
                && p.load.len() == TABLES
            {
                load.copy_from_slice(&p.load);
                self.load = load;
            }
            self.tables = plan_tables(&before, from, to, &load);
            self.resharding_epoch = Some(self.epoch.saturating_add(1));
        }
        let seats = self.seats(&keys, &self.committees);
        self.committees = seats;
        self.shard_count = to;
        self.seed = seed;
        self.epoch = self.epoch.saturating_add(1);
        let changed = self
            .history
            .last()
            .is_none_or(|r| r.tables != self.tables || r.committees != keys);
        if changed {
            self.history.push(EpochRecord {
                from_epoch: self.epoch,
                tables: self.tables,
                committees: keys.clone(),
            });
            if self.history.len() > MAX_HISTORY {
                let excess = self.history.len() - MAX_HISTORY;
                self.history.drain(..excess);
            }
        }
        Some(EpochChange {
            epoch: self.epoch,
            first_height: height.saturating_add(1),
            previous_shard_count: from,
            shard_count: to,
            tables: self.tables,
            moves: moves(&before, &self.tables),
            committees: keys,
            seed,
            deferred,
        })
    }

    // ---------------------------------------------------------------------------------
    // Queries
    // ---------------------------------------------------------------------------------

    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn admin_key(&self) -> &PublicKey {
        &self.admin_key
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn epoch_length(&self) -> u64 {
        self.epoch_length
    }

    pub fn max_shards(&self) -> u16 {
        self.max_shards
    }

    /// The beacon height whose finalization ends the current epoch (saturates at
    /// `u64::MAX`: such an epoch never ends).
    pub fn next_epoch_height(&self) -> u64 {
        self.epoch
            .saturating_add(1)
            .saturating_mul(self.epoch_length)
    }

    pub fn shard_count(&self) -> u16 {
        self.shard_count
    }

    /// The shard count the next epoch will have, when a change is pending.
    pub fn pending_shard_count(&self) -> Option<u16> {
        self.pending.as_ref().map(|p| p.count)
    }

    pub fn pending(&self) -> Option<&PendingCount> {
        self.pending.as_ref()
    }

    /// True during the epoch that hands tables off after a shard count change.
    pub fn resharding(&self) -> bool {
        self.resharding_epoch == Some(self.epoch)
    }

    pub fn tables(&self) -> &TableMap {
        &self.tables
    }

    /// The shard owning `table` this epoch.
    pub fn owner(&self, table: u8) -> u16 {
        self.tables[usize::from(table)]
    }

    fn record_at(&self, epoch: u64) -> Option<&EpochRecord> {
        if epoch > self.epoch {
            return None;
        }
        self.history.iter().rev().find(|r| r.from_epoch <= epoch)
    }

    /// The shard that owned `table` in `epoch`; `None` for a future epoch or one older
    /// than the kept history.
    pub fn owner_at(&self, table: u8, epoch: u64) -> Option<u16> {
        self.record_at(epoch).map(|r| r.tables[usize::from(table)])
    }

    /// This epoch's committee of `shard`, with addresses.
    pub fn committee(&self, shard: u16) -> Option<&[Seat]> {
        self.committees.get(usize::from(shard)).map(Vec::as_slice)
    }

    /// Node keys of this epoch's committee of `shard` (sorted; empty for no such shard).
    pub fn validators(&self, shard: u16) -> Vec<PublicKey> {
        self.committee(shard)
            .map(|c| c.iter().map(|s| s.node_key.clone()).collect())
            .unwrap_or_default()
    }

    /// Node keys of `shard`'s committee in `epoch` (to verify that epoch's certificates);
    /// `None` for a future epoch, one older than the kept history, or no such shard then.
    pub fn validators_at(&self, shard: u16, epoch: u64) -> Option<Vec<PublicKey>> {
        self.record_at(epoch)?
            .committees
            .get(usize::from(shard))
            .cloned()
    }

    /// RPC addresses of this epoch's committee of `shard` (where to forward to).
    pub fn rpc_addresses(&self, shard: u16) -> Vec<String> {
        self.committee(shard)
            .map(|c| c.iter().map(|s| s.rpc_address.clone()).collect())
            .unwrap_or_default()
    }

    /// Drained slots: every slot at or above the current shard count that had a committee
    /// in the kept history, with the registry's RPC addresses of its last committee (its
    /// nodes keep the receipts of the transactions it executed; the operator may keep
    /// one of them running as an archive). Validators no longer registered are left out.
    pub fn drained_slots(&self) -> Vec<(u16, Vec<String>)> {
        (self.shard_count..self.max_shards)
            .filter_map(|slot| {
                let last = self.history.iter().rev().find_map(|r| {
                    r.committees
                        .get(usize::from(slot))
                        .filter(|c| !c.is_empty())
                })?;
                let addresses: Vec<String> = last
                    .iter()
                    .filter_map(|k| self.validators.get(k))
                    .map(|v| v.rpc_address.clone())
                    .collect();
                (!addresses.is_empty()).then_some((slot, addresses))
            })
            .collect()
    }

    pub fn beacon_validators(&self) -> &[Seat] {
        &self.beacon
    }

    /// The registry (input of the next epoch's committees).
    pub fn registered(&self) -> impl Iterator<Item = &Validator> {
        self.validators.values()
    }

    /// The sequence `key`'s next system transaction must carry.
    pub fn next_sequence(&self, key: &PublicKey) -> u64 {
        self.sequences.get(key).copied().unwrap_or(0)
    }

    /// The epoch seed (chained from every epoch-end block digest).
    pub fn seed(&self) -> [u8; 32] {
        self.seed
    }

    /// The last per-table load hint (zeros until an operator gave one).
    pub fn load(&self) -> &[u64; TABLES] {
        &self.load
    }

    /// `trellis_getShardMap`'s answer at finalized beacon height `beacon_height`.
    pub fn shard_map(&self, beacon_height: u64) -> ShardMapInfo {
        let info = |shard: u16, seats: &[Seat]| ShardInfo {
            shard,
            validators: seats.iter().map(|s| hex(&s.node_key)).collect(),
            rpc: seats.iter().map(|s| s.rpc_address.clone()).collect(),
        };
        ShardMapInfo {
            epoch: self.epoch,
            epoch_length: self.epoch_length,
            next_epoch_height: self.next_epoch_height(),
            beacon_height,
            shard_count: self.shard_count,
            pending_shard_count: self.pending_shard_count(),
            tables: self.tables.to_vec(),
            shards: self
                .committees
                .iter()
                .enumerate()
                // < shard_count ≤ 256.
                .map(|(s, c)| info(s as u16, c))
                .collect(),
            max_shards: self.max_shards,
            resharding: self.resharding(),
            beacon: vec![info(ANY_SHARD, &self.beacon)],
        }
    }
}

mod genesis;
mod persist;
mod rules;

pub use genesis::BeaconGenesis;

#[cfg(test)]
mod tests;
