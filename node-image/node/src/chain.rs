//! The application side of consensus: builds, relays, verifies and finalizes blocks.
//!
//! Simplex orders 32-byte digests; this actor gives them meaning:
//!
//! - **propose**: a block on the parent consensus names, filled from the mempool (minus
//!   transactions already in unfinalized ancestors);
//! - **broadcast**: the full block goes to the committee on the block channel;
//! - **verify**: waits until the block (and its parent) are known, then checks linkage,
//!   height, view, size and every transaction's chain id and signature;
//! - **report**: a finalization names a block; the actor walks back to its last finalized
//!   block, fetching missing ancestors from peers (backfill), then executes and stores each
//!   block, its certificate and the new state in one atomic commit, in height order.
//!
//! Everything goes through the commonware runtime traits, so the same actor runs on tokio
//! in `trellis-node` and in the deterministic simulator in the tests.

use crate::governance::{GovernanceReceipt, REGISTRY_KEY, Registry, receipt_key};
use crate::mempool::Mempool;
use crate::metrics::ChainMetrics;
use bytes::BufMut;
use commonware_actor::Feedback;
use commonware_codec::{
    Encode, EncodeSize, Error as CodecError, Read, ReadExt, Write, varint::UInt,
};
use commonware_consensus::simplex::types::{
    Activity as SimplexActivity, Context as SimplexContext,
};
use commonware_consensus::simplex::{Plan, scheme::ed25519};
use commonware_consensus::{Automaton, CertifiableAutomaton, Relay, Reporter, Viewable};
use commonware_p2p::{Receiver, Recipients, Sender};
use commonware_runtime::{Clock, Handle, IoBuf, Spawner};
use commonware_utils::channel::{fallible::OneshotExt, oneshot};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use trellis_node_beacon::BeaconState;
use trellis_node_state::{Kv, Ledger, Space, StateError, WriteBatch};
use trellis_node_types::shard::MAX_BLOCK_SYSTEM;
use trellis_node_types::{
    Block, Committee, Digest, GovernanceTx, MAX_BLOCK_GOVERNANCE, PublicKey, ShardHeader, Sharding,
    SystemTx, TableRoot, Tx,
};

/// The consensus signing scheme: ed25519, one signature per validator in a certificate.
pub type Scheme = ed25519::Scheme;
pub type ConsensusContext = SimplexContext<Digest, PublicKey>;
pub type Activity = SimplexActivity<Scheme, Digest>;

/// Most blocks in one backfill response.
const BACKFILL_DEPTH: u16 = 64;
/// Stop filling a backfill response once it is this large.
const BACKFILL_BYTES: usize = 4 * 1024 * 1024;
/// Largest p2p message the node sends or accepts.
pub const MAX_MESSAGE_SIZE: u32 = 16 * 1024 * 1024;
/// Unfinalized blocks kept in memory at most (beyond that, peers' blocks are dropped
/// and fetched again when finalized).
const MAX_PENDING_BLOCKS: usize = 4096;

// Keys of the block store, next to the ledger's state in the same store. The ledger's own
// keys never start with "chain/".
fn key_block(height: u64) -> Vec<u8> {
    [b"chain/b/".as_slice(), &height.to_be_bytes()].concat()
}
fn key_digest(digest: &Digest) -> Vec<u8> {
    [b"chain/d/".as_slice(), &digest.0].concat()
}
/// Blocks this node proposed or voted for. They must survive a crash: a notarized block
/// has to stay available until it is finalized, or the chain could not be extended past
/// it. Once finalized, such a block stays here: [`key_block_at`] points to it instead of
/// a second copy under [`key_block`] (one block write per block, not two).
fn key_pending(digest: &Digest) -> Vec<u8> {
    [b"chain/p/".as_slice(), &digest.0].concat()
}
/// The digest of the finalized block at `height` when the block itself is stored under
/// [`key_pending`]. Finalized blocks this node never persisted (fetched through
/// backfill), genesis, and every block of stores written before this key existed are
/// stored whole under [`key_block`].
fn key_block_at(height: u64) -> Vec<u8> {
    [b"chain/bd/".as_slice(), &height.to_be_bytes()].concat()
}
/// The validator set of an epoch (hex node keys, sorted), kept to read old certificates.
fn key_validators(epoch: u64) -> Vec<u8> {
    [b"chain/gov/v/".as_slice(), &epoch.to_be_bytes()].concat()
}

fn validators_bytes(registry: &Registry) -> Result<Vec<u8>, StateError> {
    let keys: Vec<String> = registry
        .validators()
        .iter()
        .map(|k| trellis_node_types::to_hex(k.as_ref()))
        .collect();
    serde_json::to_vec(&keys).map_err(|e| StateError::Corrupt(format!("validator set: {e}")))
}

fn key_finalization(height: u64) -> Vec<u8> {
    [b"chain/f/".as_slice(), &height.to_be_bytes()].concat()
}
/// Sharded chains: SHA-256 of the owned tables' roots left by a finalized height,
/// recorded when the next height executes (the ledger still holds that state then, so
/// the record is committed atomically with a block). The newest height's roots are read
/// from the ledger itself.
fn key_roots(height: u64) -> Vec<u8> {
    [b"chain/r/".as_slice(), &height.to_be_bytes()].concat()
}
/// Sharded chains: the beacon state (executed by beacon nodes), committed with each block.
pub const KEY_BEACON: &[u8] = b"chain/beacon";
/// Beacon chains: the receipt of an executed system transaction.
fn key_system(hash: &Digest) -> Vec<u8> {
    [b"chain/sys/".as_slice(), &hash.0].concat()
}

/// The digest validators compare a header's roots with.
pub fn roots_digest(roots: &[TableRoot]) -> Digest {
    use commonware_cryptography::{Hasher as _, Sha256};
    let mut bytes = Vec::with_capacity(roots.len() * 33);
    for r in roots {
        bytes.push(r.table);
        bytes.extend_from_slice(&r.root);
    }
    Sha256::hash(&[&bytes])
}

/// Where this node sits in a sharded network (absent in unsharded networks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlace {
    pub committee: Committee,
    /// Tables the committee owns at the finalized height, sorted (empty for the beacon).
    /// Changes only when a block executes, so "the roots a height left" is well defined.
    pub tables: Vec<u8>,
    /// Highest beacon height this node has verified and replayed (0 until it follows
    /// the beacon; the beacon itself keeps 0).
    pub beacon_height: u64,
}

/// State shared between the chain actor and the RPC server.
pub struct NodeState<K: Kv> {
    pub ledger: Ledger<K>,
    pub mempool: Mempool,
    /// Digest of the last finalized (and executed) block.
    pub finalized_digest: Digest,
    /// Highest round (consensus epoch, view) this node has seen a certificate for: the
    /// view after it is the one consensus is in (see [`crate::leaders`]).
    pub round: (u64, u64),
    /// True while a finalization names a block above the executed height.
    pub syncing: bool,
    pub epoch: u64,
    /// Transactions admitted through this node's RPC, to be gossiped to the committee so
    /// that whichever validator leads next can include them.
    pub gossip: Vec<Tx>,
    /// The member registry at the finalized height.
    pub registry: Registry,
    /// Governance transactions waiting for a block (checked against the registry).
    pub governance_pool: Vec<GovernanceTx>,
    /// Governance transactions admitted here, to be gossiped to the committee.
    pub governance_gossip: Vec<GovernanceTx>,
    /// Sharded networks only: this node's committee, owned tables and beacon progress.
    pub shard: Option<ShardPlace>,
    /// Sharded networks only: the beacon state at the finalized height (beacon nodes
    /// execute it; shard nodes start from the genesis one).
    pub beacon: Option<BeaconState>,
    /// Beacon nodes: system transactions waiting for a block (checked against `beacon`).
    pub system_pool: Vec<SystemTx>,
    /// System transactions admitted here, to be gossiped to the committee.
    pub system_gossip: Vec<SystemTx>,
    /// Shard nodes: the current consensus epoch, its committee and table handoff (see
    /// [`crate::epoch_switch`]).
    pub shard_epoch: Option<crate::epoch_switch::ShardEpoch>,
    /// Shard nodes: admitted transactions whose table moved to another shard at an epoch
    /// switch, waiting to be forwarded there (by [`crate::handoff`]).
    pub handed_over: Vec<Tx>,
    /// Shard nodes: hashes of handed-over transactions the handoff task is still
    /// forwarding (`trellis_getTransaction` reports them pending).
    pub forwarding: HashSet<Digest>,
    /// Shard nodes: credits owed by other shards and the source blocks checked.
    pub credits: crate::cross_shard::CreditDesk,
    /// A `shard = "any"` validator the beacon places in no shard (yet): why it waits
    /// (see [`crate::placement`]).
    pub unplaced: Option<String>,
}

/// Why a system transaction was not admitted to the pool: the JSON-RPC code and message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct SystemRefusal {
    pub code: i64,
    pub message: String,
}

/// Most governance transactions waiting in the pool.
pub const GOVERNANCE_POOL: usize = 64;

/// Why a governance transaction was not admitted to the pool.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GovernanceRefusal {
    #[error("{0}")]
    Refused(String),
    #[error("this governance transaction is already pending")]
    Known,
    #[error("the governance pool is full ({GOVERNANCE_POOL} transactions); retry later")]
    Full,
}

impl<K: Kv> NodeState<K> {
    /// The shard slot this node serves (None: a beacon node, or not placed yet).
    pub fn own_shard(&self) -> Option<u16> {
        match self.shard.as_ref()?.committee {
            Committee::Shard(shard) => Some(shard),
            Committee::Beacon => None,
        }
    }

    /// Opens the chain: genesis state if the store is empty, and the genesis block.
    pub fn open(
        kv: K,
        chain_id: &str,
        balances: &[(PublicKey, u64)],
        mempool_bound: usize,
    ) -> Result<Self, StateError> {
        Self::open_in(kv, chain_id, balances, mempool_bound, None)
    }

    /// [`Self::open`] for a node of a sharded network's committee (`place`), or of an
    /// unsharded network (`None`). The format of the genesis block depends on it.
    pub fn open_in(
        kv: K,
        chain_id: &str,
        balances: &[(PublicKey, u64)],
        mempool_bound: usize,
        place: Option<ShardPlace>,
    ) -> Result<Self, StateError> {
        let mut ledger = Ledger::open(kv)?;
        match &place {
            None => ledger.init_genesis(balances)?,
            // A shard writes only the tables it owns (the beacon none); the supply stays
            // the network's total.
            Some(place) => ledger.init_genesis_owned(
                balances,
                &place
                    .tables
                    .iter()
                    .copied()
                    .collect::<trellis_node_state::TableSet>(),
            )?,
        }
        let genesis = match &place {
            None => Block::genesis(chain_id),
            Some(place) => Block::genesis_sharded(chain_id, place.committee),
        };
        if ledger.kv().get(Space::Meta, &key_block(0))?.is_none() {
            let mut batch = WriteBatch::default();
            batch.put(Space::Meta, key_block(0), genesis.encode().to_vec());
            batch.put(
                Space::Meta,
                key_digest(&genesis.digest()),
                0u64.to_be_bytes().to_vec(),
            );
            ledger.kv().commit(batch)?;
        }
        let height = ledger.height().unwrap_or(0);
        let finalized_digest = match read_block(ledger.kv(), height)? {
            Some(block) if block.sharding.is_some() != place.is_some() => {
                return Err(StateError::Corrupt(format!(
                    "the stored chain is {}, the genesis file {}",
                    if place.is_some() {
                        "unsharded"
                    } else {
                        "sharded"
                    },
                    if place.is_some() {
                        "shards it"
                    } else {
                        "does not"
                    },
                )));
            }
            Some(block) => block.digest(),
            None => return Err(StateError::Corrupt(format!("block {height} missing"))),
        };
        Self {
            ledger,
            mempool: Mempool::new(chain_id, mempool_bound),
            finalized_digest,
            round: (0, 0),
            syncing: false,
            epoch: 0,
            gossip: Vec::new(),
            registry: Registry::fixed(&[]),
            governance_pool: Vec::new(),
            governance_gossip: Vec::new(),
            shard: place,
            beacon: None,
            system_pool: Vec::new(),
            system_gossip: Vec::new(),
            shard_epoch: None,
            handed_over: Vec::new(),
            forwarding: HashSet::new(),
            credits: Default::default(),
            unplaced: None,
        }
        .with_stored_registry()
    }

    fn with_stored_registry(mut self) -> Result<Self, StateError> {
        if let Some(bytes) = self.ledger.kv().get(Space::Meta, REGISTRY_KEY)? {
            self.registry = serde_json::from_slice(&bytes)
                .map_err(|e| StateError::Corrupt(format!("member registry: {e}")))?;
            self.epoch = self.registry.epoch;
        }
        Ok(self)
    }

    /// Opens a consortium chain: [`Self::open`], with `genesis` as the member registry
    /// when the store has none yet.
    pub fn open_consortium(
        kv: K,
        chain_id: &str,
        balances: &[(PublicKey, u64)],
        mempool_bound: usize,
        genesis: Registry,
    ) -> Result<Self, StateError> {
        Self::open_consortium_in(kv, chain_id, balances, mempool_bound, genesis, None)
    }

    /// [`Self::open_consortium`] in a sharded network's committee (`place`) or an
    /// unsharded network (`None`).
    pub fn open_consortium_in(
        kv: K,
        chain_id: &str,
        balances: &[(PublicKey, u64)],
        mempool_bound: usize,
        genesis: Registry,
        place: Option<ShardPlace>,
    ) -> Result<Self, StateError> {
        let mut state = Self::open_in(kv, chain_id, balances, mempool_bound, place)?;
        if state.ledger.kv().get(Space::Meta, REGISTRY_KEY)?.is_none() {
            let mut batch = WriteBatch::default();
            batch.put(
                Space::Meta,
                REGISTRY_KEY.to_vec(),
                registry_bytes(&genesis)?,
            );
            batch.put(
                Space::Meta,
                key_validators(genesis.epoch),
                validators_bytes(&genesis)?,
            );
            state.ledger.kv().commit(batch)?;
            state.epoch = genesis.epoch;
            state.registry = genesis;
        }
        Ok(state)
    }

    /// Sharded networks: the beacon state stored with the last finalized block, or
    /// `genesis` (stored now) on a fresh store.
    pub fn with_beacon(mut self, genesis: BeaconState) -> Result<Self, StateError> {
        match self.ledger.kv().get(Space::Meta, KEY_BEACON)? {
            Some(bytes) => {
                self.beacon = Some(
                    BeaconState::from_bytes(&bytes)
                        .map_err(|e| StateError::Corrupt(format!("beacon state: {e}")))?,
                );
            }
            None => {
                let mut batch = WriteBatch::default();
                batch.put(Space::Meta, KEY_BEACON.to_vec(), genesis.to_bytes());
                self.ledger.kv().commit(batch)?;
                self.beacon = Some(genesis);
            }
        }
        crate::epoch_switch::restore(&mut self)?;
        Ok(self)
    }

    /// The consensus epoch this node is in (a shard's follows the beacon's).
    pub fn consensus_epoch(&self) -> u64 {
        self.shard_epoch
            .as_ref()
            .map_or(self.registry.epoch, |r| r.epoch)
    }

    /// True when `block` is the last block of consensus epoch `epoch`.
    pub fn ends(&self, epoch: u64, block: &Block) -> bool {
        match (&self.shard_epoch, &self.beacon) {
            (Some(_), Some(beacon)) => {
                block.epoch == epoch && crate::epoch_switch::ends_epoch(beacon, block)
            }
            _ => self.registry.epoch_end(epoch) == Some(block.height),
        }
    }

    /// True when `height` lies beyond the known last height of `epoch`.
    fn beyond(&self, epoch: u64, height: u64) -> bool {
        self.shard_epoch.is_none() && self.registry.epoch_end(epoch).is_some_and(|e| height > e)
    }

    /// The height of the block that ended `epoch`, once finalized here.
    fn epoch_end_height(&self, epoch: u64) -> Result<Option<u64>, StateError> {
        if self.shard_epoch.is_some() {
            return crate::epoch_switch::epoch_end_height(self, epoch);
        }
        Ok(self
            .registry
            .epoch_end(epoch)
            .filter(|end| *end <= self.finalized_height()))
    }

    /// Admits a system transaction submitted to a beacon node and queues it for gossip.
    pub fn submit_system(&mut self, tx: SystemTx, chain_id: &str) -> Result<Digest, SystemRefusal> {
        use trellis_node_api::error_codes as codes;
        let refused = |code, message: String| SystemRefusal { code, message };
        let Some(beacon) = self.beacon.as_ref().filter(|_| {
            self.shard
                .as_ref()
                .is_some_and(|p| p.committee == Committee::Beacon)
        }) else {
            return Err(refused(
                codes::SYSTEM_REFUSED,
                "this node is not a beacon node; submit system transactions to the beacon".into(),
            ));
        };
        tx.check_stateless(chain_id)
            .map_err(|e| refused(codes::SYSTEM_REFUSED, e.to_string()))?;
        let hash = tx.hash();
        if self.system_pool.iter().any(|t| t.hash() == hash) {
            return Err(refused(
                codes::ALREADY_KNOWN,
                "this system transaction is already pending".into(),
            ));
        }
        beacon
            .check(&tx)
            .map_err(|e| refused(e.code(), e.to_string()))?;
        if self.system_pool.len() >= GOVERNANCE_POOL {
            return Err(refused(
                codes::MEMPOOL_FULL,
                format!("the system pool is full ({GOVERNANCE_POOL} transactions); retry later"),
            ));
        }
        self.system_pool.push(tx.clone());
        self.system_gossip.push(tx);
        Ok(hash)
    }

    /// The receipt of an executed system transaction (beacon nodes).
    pub fn system_receipt(&self, hash: &Digest) -> Result<Option<GovernanceReceipt>, StateError> {
        match self.ledger.kv().get(Space::Meta, &key_system(hash))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StateError::Corrupt(format!("system receipt: {e}"))),
        }
    }

    /// Uses a fixed committee when the store holds no registry (a node started without
    /// a genesis registry, e.g. the plain simulation).
    pub fn ensure_registry(&mut self, validators: &[PublicKey]) {
        if self.registry.members.is_empty() {
            self.registry = Registry::fixed(validators);
        }
    }

    /// Admits a governance transaction submitted by a client and queues it for gossip.
    pub fn submit_governance(
        &mut self,
        tx: GovernanceTx,
        chain_id: &str,
    ) -> Result<Digest, GovernanceRefusal> {
        let hash = tx.hash();
        if self.governance_pool.iter().any(|g| g.hash() == hash) {
            return Err(GovernanceRefusal::Known);
        }
        self.registry
            .check(&tx, chain_id)
            .map_err(GovernanceRefusal::Refused)?;
        if self.governance_pool.len() >= GOVERNANCE_POOL {
            return Err(GovernanceRefusal::Full);
        }
        self.governance_pool.push(tx.clone());
        self.governance_gossip.push(tx);
        Ok(hash)
    }

    /// The validators of `epoch`, when this store recorded them (consortium chains).
    pub fn validators_of(&self, epoch: u64) -> Result<Option<Vec<PublicKey>>, StateError> {
        let Some(bytes) = self.ledger.kv().get(Space::Meta, &key_validators(epoch))? else {
            return Ok(None);
        };
        let keys: Vec<String> = serde_json::from_slice(&bytes)
            .map_err(|e| StateError::Corrupt(format!("validator set: {e}")))?;
        keys.iter()
            .map(|k| {
                trellis_node_types::public_key_from_hex(k)
                    .ok_or_else(|| StateError::Corrupt("validator key".into()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The receipt of an executed governance transaction.
    pub fn governance_receipt(
        &self,
        hash: &Digest,
    ) -> Result<Option<GovernanceReceipt>, StateError> {
        match self.ledger.kv().get(Space::Meta, &receipt_key(&hash.0))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StateError::Corrupt(format!("governance receipt: {e}"))),
        }
    }

    /// Admits a transaction submitted by a client and queues it for gossip.
    pub fn submit(&mut self, tx: Tx) -> Result<Digest, crate::mempool::AdmitError> {
        self.check_tables(&tx)?;
        let hash = self.mempool.admit(tx.clone(), &self.ledger)?;
        self.gossip.push(tx);
        Ok(hash)
    }

    pub fn finalized_height(&self) -> u64 {
        self.ledger.height().unwrap_or(0)
    }

    /// Sharded networks: a shard takes only transactions whose sender's table it owns
    /// (a receiver in another shard's table gets a cross-shard receipt); the beacon takes
    /// none. Unsharded networks take every table.
    pub fn check_tables(&self, tx: &Tx) -> Result<(), crate::mempool::AdmitError> {
        table_refusal(self.shard.as_ref(), tx).map_or(Ok(()), |reason| {
            Err(crate::mempool::AdmitError::WrongShard(reason))
        })
    }

    /// The roots of the owned tables at the finalized height (sharded chains).
    pub fn owned_roots(&self) -> Vec<TableRoot> {
        self.shard.as_ref().map_or_else(Vec::new, |place| {
            place
                .tables
                .iter()
                .map(|t| TableRoot {
                    table: *t,
                    root: self.ledger.table_root(*t),
                })
                .collect()
        })
    }

    /// Digest of the owned tables' roots that finalized `height` left, when this node
    /// has finalized it (sharded chains).
    pub fn roots_digest_at(&self, height: u64) -> Result<Option<Digest>, StateError> {
        let finalized = self.finalized_height();
        if height > finalized {
            return Ok(None);
        }
        if height == finalized {
            return Ok(Some(roots_digest(&self.owned_roots())));
        }
        match self.ledger.kv().get(Space::Meta, &key_roots(height))? {
            None => Err(StateError::Corrupt(format!(
                "roots of finalized height {height} were not recorded"
            ))),
            Some(bytes) => <Digest as commonware_codec::DecodeExt<()>>::decode(
                commonware_codec::Copying(bytes.as_slice()),
            )
            .map(Some)
            .map_err(|e| StateError::Corrupt(format!("roots of height {height}: {e}"))),
        }
    }

    /// A finalized block by height.
    pub fn block(&self, height: u64) -> Result<Option<Block>, StateError> {
        read_block(self.ledger.kv(), height)
    }

    /// The finalization certificate stored with a block (only for blocks that were
    /// finalized directly, not through a descendant).
    pub fn finalization(&self, height: u64) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .ledger
            .kv()
            .get(Space::Meta, &key_finalization(height))?)
    }

    fn finalized_height_of(&self, digest: &Digest) -> Result<Option<u64>, StateError> {
        match self.ledger.kv().get(Space::Meta, &key_digest(digest))? {
            None => Ok(None),
            Some(v) => {
                Ok(Some(u64::from_be_bytes(v.as_slice().try_into().map_err(
                    |_| StateError::Corrupt("digest index".into()),
                )?)))
            }
        }
    }
}

fn registry_bytes(registry: &Registry) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec(registry).map_err(|e| StateError::Corrupt(format!("member registry: {e}")))
}

fn read_block<K: Kv>(kv: &K, height: u64) -> Result<Option<Block>, StateError> {
    let bytes = match kv.get(Space::Meta, &key_block_at(height))? {
        Some(digest) => {
            let digest: [u8; 32] = digest
                .as_slice()
                .try_into()
                .map_err(|_| StateError::Corrupt(format!("digest of stored block {height}")))?;
            kv.get(Space::Meta, &key_pending(&Digest(digest)))?
                .ok_or_else(|| StateError::Corrupt(format!("stored block {height} is missing")))?
        }
        None => match kv.get(Space::Meta, &key_block(height))? {
            Some(bytes) => bytes,
            None => return Ok(None),
        },
    };
    Block::decode_untrusted(&bytes)
        .map(Some)
        .map_err(|e| StateError::Corrupt(format!("stored block {height}: {e}")))
}

/// A decoded finalization certificate.
pub type Finalization = commonware_consensus::simplex::types::Finalization<Scheme, Digest>;

/// An encoded finalization certificate of a committee of `validators`, decoded (not
/// verified).
pub fn decode_finalization(validators: usize, certificate: &[u8]) -> Option<Finalization> {
    use commonware_codec::Decode;
    Finalization::decode_cfg(commonware_codec::Copying(certificate), &validators).ok()
}

/// Whether a finalization carries a quorum of valid signatures of `validators`, made in
/// the consensus `namespace` (see [`crate::engine::consensus_namespace`]).
pub fn finalization_verifies(
    namespace: &[u8],
    validators: &[PublicKey],
    finalization: &Finalization,
) -> bool {
    let Ok(participants) = commonware_utils::ordered::Set::try_from(validators.to_vec()) else {
        return false;
    };
    let scheme = Scheme::verifier(namespace, participants);
    finalization.verify(
        &mut commonware_utils::sys_rng(),
        &scheme,
        &commonware_parallel::Sequential,
    )
}

/// Checks an encoded finalization certificate: it must finalize `digest` and carry a
/// quorum of valid signatures of `validators`, made in the consensus `namespace`. Returns
/// its (epoch, view).
pub fn verify_finalization(
    namespace: &[u8],
    validators: &[PublicKey],
    certificate: &[u8],
    digest: &Digest,
) -> Option<(u64, u64)> {
    let finalization = decode_finalization(validators.len(), certificate)?;
    if finalization.proposal.payload != *digest
        || !finalization_verifies(namespace, validators, &finalization)
    {
        return None;
    }
    let round = finalization.proposal.round;
    Some((round.epoch().get(), round.view().get()))
}

/// The validators whose signatures an encoded finalization certificate carries (in the
/// order of `validators`, the sorted validator set of the certificate's epoch).
pub fn certificate_signers(validators: &[PublicKey], certificate: &[u8]) -> Option<Vec<PublicKey>> {
    decode_finalization(validators.len(), certificate)?
        .certificate
        .signers
        .iter()
        .map(|p| validators.get(p.get() as usize).cloned())
        .collect()
}

/// Locks shared state; a poisoned lock means another thread panicked while holding it,
/// which the lints forbid, so recovering the guard is safe.
pub fn lock<K: Kv>(state: &Mutex<NodeState<K>>) -> MutexGuard<'_, NodeState<K>> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Most transactions in one gossip message.
const GOSSIP_BATCH: usize = 512;
/// Ticks between checks whether this node is stuck before an epoch change.
const EPOCH_END_EVERY: u64 = 10;

/// Backfill protocol and transaction gossip, on the chain actor's own p2p channel.
#[derive(Debug, PartialEq)]
enum Backfill {
    /// "Send me the block with this digest and up to `depth - 1` of its ancestors."
    Request { digest: Digest, depth: u16 },
    /// Blocks, each followed by its parent.
    Response { blocks: Vec<Block> },
    /// Transactions admitted by the sender, for the receivers' mempools.
    Gossip { txs: Vec<Tx> },
    /// "Send me the last block of this epoch and its finalization certificate."
    EpochEndRequest { epoch: u64 },
    /// The last block of an epoch with the certificate that finalized it (verified by the
    /// receiver against that epoch's validators).
    EpochEnd {
        block: Box<Block>,
        certificate: Vec<u8>,
    },
    /// Governance transactions admitted by the sender, for the receivers' pools.
    Governance { txs: Vec<GovernanceTx> },
    /// System transactions admitted by the sender (beacon committees).
    System { txs: Vec<SystemTx> },
    /// "Send me your latest finalization certificate of this epoch" (see
    /// [`crate::rejoin`]).
    FloorRequest { epoch: u64 },
    /// The sender's latest finalization certificate of `epoch`; empty when it finalized
    /// nothing in that epoch (yet, or its latest finalization is of another epoch).
    Floor { epoch: u64, certificate: Vec<u8> },
}

/// Largest encoded finalization certificate accepted (a proposal and one ed25519
/// signature per validator, up to 128 validators).
const MAX_CERTIFICATE_SIZE: usize = 64 * 1024;

impl Write for Backfill {
    fn write(&self, buf: &mut impl BufMut) {
        match self {
            Backfill::Request { digest, depth } => {
                0u8.write(buf);
                digest.write(buf);
                depth.write(buf);
            }
            Backfill::Response { blocks } => {
                1u8.write(buf);
                UInt(blocks.len() as u32).write(buf);
                for b in blocks {
                    b.write(buf);
                }
            }
            Backfill::Gossip { txs } => {
                2u8.write(buf);
                UInt(txs.len() as u32).write(buf);
                for tx in txs {
                    tx.write(buf);
                }
            }
            Backfill::EpochEndRequest { epoch } => {
                3u8.write(buf);
                UInt(*epoch).write(buf);
            }
            Backfill::EpochEnd { block, certificate } => {
                4u8.write(buf);
                block.write(buf);
                trellis_node_types::write_bytes(certificate, buf);
            }
            Backfill::Governance { txs } => {
                5u8.write(buf);
                UInt(txs.len() as u32).write(buf);
                for tx in txs {
                    tx.write(buf);
                }
            }
            Backfill::System { txs } => {
                6u8.write(buf);
                UInt(txs.len() as u32).write(buf);
                for tx in txs {
                    tx.write(buf);
                }
            }
            Backfill::FloorRequest { epoch } => {
                7u8.write(buf);
                UInt(*epoch).write(buf);
            }
            Backfill::Floor { epoch, certificate } => {
                8u8.write(buf);
                UInt(*epoch).write(buf);
                trellis_node_types::write_bytes(certificate, buf);
            }
        }
    }
}

impl EncodeSize for Backfill {
    fn encode_size(&self) -> usize {
        1 + match self {
            Backfill::Request { .. } => 32 + 2,
            Backfill::Response { blocks } => {
                UInt(blocks.len() as u32).encode_size()
                    + blocks.iter().map(EncodeSize::encode_size).sum::<usize>()
            }
            Backfill::Gossip { txs } => {
                UInt(txs.len() as u32).encode_size()
                    + txs.iter().map(EncodeSize::encode_size).sum::<usize>()
            }
            Backfill::EpochEndRequest { epoch } => UInt(*epoch).encode_size(),
            Backfill::EpochEnd { block, certificate } => {
                block.encode_size() + trellis_node_types::bytes_size(certificate.len())
            }
            Backfill::Governance { txs } => {
                UInt(txs.len() as u32).encode_size()
                    + txs.iter().map(EncodeSize::encode_size).sum::<usize>()
            }
            Backfill::System { txs } => {
                UInt(txs.len() as u32).encode_size()
                    + txs.iter().map(EncodeSize::encode_size).sum::<usize>()
            }
            Backfill::FloorRequest { epoch } => UInt(*epoch).encode_size(),
            Backfill::Floor { epoch, certificate } => {
                UInt(*epoch).encode_size() + trellis_node_types::bytes_size(certificate.len())
            }
        }
    }
}

impl Read for Backfill {
    type Cfg = ();
    fn read_cfg(buf: &mut impl commonware_codec::Buf, _: &()) -> Result<Self, CodecError> {
        match u8::read(buf)? {
            0 => Ok(Backfill::Request {
                digest: Digest::read(buf)?,
                depth: u16::read(buf)?,
            }),
            1 => {
                let count = u32::from(UInt::<u32>::read(buf)?) as usize;
                if count > BACKFILL_DEPTH as usize {
                    return Err(CodecError::InvalidLength(count));
                }
                let mut blocks = Vec::with_capacity(count);
                for _ in 0..count {
                    blocks.push(Block::read(buf)?);
                }
                Ok(Backfill::Response { blocks })
            }
            2 => {
                let count = u32::from(UInt::<u32>::read(buf)?) as usize;
                if count > GOSSIP_BATCH {
                    return Err(CodecError::InvalidLength(count));
                }
                let mut txs = Vec::with_capacity(count);
                for _ in 0..count {
                    txs.push(Tx::read(buf)?);
                }
                Ok(Backfill::Gossip { txs })
            }
            3 => Ok(Backfill::EpochEndRequest {
                epoch: UInt::<u64>::read(buf)?.into(),
            }),
            4 => Ok(Backfill::EpochEnd {
                block: Box::new(Block::read(buf)?),
                certificate: trellis_node_types::read_bytes(buf, MAX_CERTIFICATE_SIZE)?,
            }),
            5 => {
                let count = u32::from(UInt::<u32>::read(buf)?) as usize;
                if count > GOVERNANCE_POOL {
                    return Err(CodecError::InvalidLength(count));
                }
                let mut txs = Vec::with_capacity(count.min(8));
                for _ in 0..count {
                    txs.push(GovernanceTx::read(buf)?);
                }
                Ok(Backfill::Governance { txs })
            }
            6 => {
                let count = u32::from(UInt::<u32>::read(buf)?) as usize;
                if count > GOVERNANCE_POOL {
                    return Err(CodecError::InvalidLength(count));
                }
                let mut txs = Vec::with_capacity(count.min(MAX_BLOCK_SYSTEM));
                for _ in 0..count {
                    txs.push(SystemTx::read(buf)?);
                }
                Ok(Backfill::System { txs })
            }
            7 => Ok(Backfill::FloorRequest {
                epoch: UInt::<u64>::read(buf)?.into(),
            }),
            8 => Ok(Backfill::Floor {
                epoch: UInt::<u64>::read(buf)?.into(),
                certificate: trellis_node_types::read_bytes(buf, MAX_CERTIFICATE_SIZE)?,
            }),
            t => Err(CodecError::InvalidEnum(t)),
        }
    }
}

fn decode_backfill(bytes: &[u8]) -> Result<Backfill, CodecError> {
    use commonware_codec::DecodeExt;
    if bytes.len() > MAX_MESSAGE_SIZE as usize {
        return Err(CodecError::InvalidLength(bytes.len()));
    }
    Backfill::decode(commonware_codec::Copying(bytes))
}

enum Message {
    Propose {
        context: ConsensusContext,
        response: oneshot::Sender<Digest>,
    },
    Verify {
        context: ConsensusContext,
        digest: Digest,
        response: oneshot::Sender<bool>,
    },
    Broadcast {
        digest: Digest,
        plan: Plan<PublicKey>,
    },
    Finalized {
        digest: Digest,
        epoch: u64,
        view: u64,
        certificate: Vec<u8>,
    },
    Seen {
        epoch: u64,
        view: u64,
    },
    Block {
        bytes: IoBuf,
    },
    /// Backfill traffic other than transaction gossip (which has its own task).
    Backfill {
        from: PublicKey,
        message: Backfill,
    },
    /// The engine of `epoch` is about to start: where from (see [`crate::rejoin`]).
    Floor {
        epoch: u64,
        reply: oneshot::Sender<Option<Finalization>>,
    },
    Tick,
}

impl Message {
    /// The message's kind in the stage timings (see [`TIMING`]).
    fn kind(&self) -> &'static str {
        match self {
            Message::Propose { .. } => "propose",
            Message::Verify { .. } => "verify",
            Message::Broadcast { .. } => "broadcast",
            Message::Finalized { .. } => "finalized",
            Message::Seen { .. } => "seen",
            Message::Block { .. } => "block",
            Message::Backfill { .. } => "backfill",
            Message::Floor { .. } => "floor",
            Message::Tick => "tick",
        }
    }
}

/// A message in the actor's inbox with the moment it was queued: the stage timings
/// report how long messages wait for the actor.
struct Queued {
    at: Instant,
    message: Message,
}

/// The actor's inbox (sending side).
type Inbox = mpsc::UnboundedSender<Queued>;

fn queue(inbox: &Inbox, message: Message) -> bool {
    inbox
        .send(Queued {
            at: Instant::now(),
            message,
        })
        .is_ok()
}

/// Log target of the chain actor's stage timings (debug level): how long each message
/// waited for the actor and took on it, and per block how long building, verifying,
/// persisting, executing and committing took. Enable with
/// `RUST_LOG=trellis_node::timing=debug`; docs/node-performance.md reads them.
pub const TIMING: &str = "trellis_node::timing";

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Median and largest of `ages`, in milliseconds (0 when empty).
fn age_ms(mut ages: Vec<Duration>) -> (u64, u64) {
    ages.sort();
    let ms = |d: Option<&Duration>| d.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    (ms(ages.get(ages.len() / 2)), ms(ages.last()))
}

/// Handle given to simplex as automaton, relay and reporter.
#[derive(Clone)]
pub struct Mailbox {
    sender: Inbox,
}

impl Mailbox {
    fn send(&self, message: Message) -> Feedback {
        if queue(&self.sender, message) {
            Feedback::Ok
        } else {
            Feedback::Closed
        }
    }

    /// The finalization (verified against the epoch's validators) the engine of `epoch`
    /// starts from, if it should start after the epoch's genesis (see [`crate::rejoin`]):
    /// asked of peers only by a node that started on an empty store and is still
    /// replaying, and waited for at most [`crate::rejoin::FLOOR_WAIT`].
    pub async fn floor(&self, epoch: u64) -> Option<Finalization> {
        let (reply, receiver) = oneshot::channel();
        self.send(Message::Floor { epoch, reply });
        receiver.await.ok().flatten()
    }
}

impl Automaton for Mailbox {
    type Context = ConsensusContext;
    type Digest = Digest;

    async fn propose(&mut self, context: Self::Context) -> oneshot::Receiver<Digest> {
        let (response, receiver) = oneshot::channel();
        self.send(Message::Propose { context, response });
        receiver
    }

    async fn verify(&mut self, context: Self::Context, digest: Digest) -> oneshot::Receiver<bool> {
        let (response, receiver) = oneshot::channel();
        self.send(Message::Verify {
            context,
            digest,
            response,
        });
        receiver
    }
}

/// Certification is immediate: blocks are fully verified before the notarize vote.
impl CertifiableAutomaton for Mailbox {}

impl Relay for Mailbox {
    type Digest = Digest;
    type PublicKey = PublicKey;
    type Plan = Plan<PublicKey>;

    fn broadcast(&mut self, digest: Digest, plan: Plan<PublicKey>) -> Feedback {
        self.send(Message::Broadcast { digest, plan })
    }
}

impl Reporter for Mailbox {
    type Activity = Activity;

    fn report(&mut self, activity: Activity) -> Feedback {
        match activity {
            Activity::Finalization(f) => self.send(Message::Finalized {
                digest: f.proposal.payload,
                epoch: f.proposal.round.epoch().get(),
                view: f.proposal.round.view().get(),
                certificate: f.encode().to_vec(),
            }),
            Activity::Notarization(n) => self.send(Message::Seen {
                epoch: n.proposal.round.epoch().get(),
                view: n.proposal.round.view().get(),
            }),
            Activity::Nullification(n) => self.send(Message::Seen {
                epoch: n.round.epoch().get(),
                view: n.round.view().get(),
            }),
            _ => Feedback::Ok,
        }
    }
}

/// Static settings of the chain actor.
#[derive(Clone, Debug)]
pub struct ChainConfig {
    pub chain_id: String,
    /// The consensus namespace certificates are verified in (see
    /// [`crate::engine::consensus_namespace`]).
    pub namespace: Vec<u8>,
    /// Epoch at start-up (informational: proposals and votes use the epoch consensus
    /// gives them, checked against the member registry).
    pub epoch: u64,
    /// Most transactions per proposed block.
    pub block_txs: usize,
    /// Period of retries (backfill requests, waiting proposals).
    pub tick: Duration,
    /// A proposal waits at least this long after its parent's timestamp, so an idle chain
    /// does not spin out empty blocks as fast as the network allows (longer while blocks
    /// take long to execute: see [`block_interval`]).
    pub min_block_interval: Duration,
    /// The most a proposal waits after its parent's timestamp (see [`block_interval`]);
    /// well below the leader timeout, or the view would time out while its leader waits.
    pub max_block_interval: Duration,
    /// Told about every change of the epoch or the peer set, once it is committed.
    pub memberships: Option<mpsc::UnboundedSender<Membership>>,
}

/// The membership consensus and p2p must use from now on.
#[derive(Clone, Debug)]
pub struct Membership {
    pub epoch: u64,
    /// This epoch's validators, sorted.
    pub validators: Vec<PublicKey>,
    /// The last block before this epoch: the new consensus engine's genesis.
    pub floor: Digest,
    /// Peer-set version and the allowed peers with their governance addresses.
    pub peer_set: u64,
    pub peers: Vec<(PublicKey, String)>,
    /// Registered validators outside this epoch's committee that may serve it (a shard's
    /// "any" validators): admitted as p2p followers so one that fell behind can catch
    /// up (see `crate::placement::catching_up`).
    pub followers: Vec<(PublicKey, String)>,
}

impl<K: Kv> NodeState<K> {
    /// The membership at the finalized height.
    pub fn membership(&self) -> Result<Membership, StateError> {
        if let Some(membership) = crate::epoch_switch::membership(self)? {
            return Ok(membership);
        }
        let registry = &self.registry;
        let floor_height = registry.epoch_floor(registry.epoch).unwrap_or(0);
        let floor = self
            .block(floor_height)?
            .ok_or_else(|| StateError::Corrupt(format!("epoch floor block {floor_height}")))?
            .digest();
        Ok(Membership {
            epoch: registry.epoch,
            validators: registry.validators(),
            floor,
            peer_set: registry.peer_set,
            peers: registry.peers(),
            followers: Vec::new(),
        })
    }
}

struct PendingVerify {
    context: ConsensusContext,
    digest: Digest,
    response: oneshot::Sender<bool>,
    ticks: u32,
}

struct PendingPropose {
    context: ConsensusContext,
    response: oneshot::Sender<Digest>,
}

struct Actor<E, K: Kv, BS, FS> {
    context: E,
    config: ChainConfig,
    state: Arc<Mutex<NodeState<K>>>,
    metrics: ChainMetrics,
    /// Known blocks above the finalized height, by digest.
    blocks: HashMap<Digest, Block>,
    /// When this node first had each of `blocks` (proposed it, or received it), on the
    /// runtime's clock: the start of the block's `finalized` span (see telemetry.rs).
    first_seen: HashMap<Digest, std::time::SystemTime>,
    verifies: Vec<PendingVerify>,
    proposals: Vec<PendingPropose>,
    /// Highest finalization seen (digest, epoch, view): the block to finalize up to.
    target: Option<(Digest, (u64, u64))>,
    /// Finalized height at the last epoch-end request, to ask only when stuck.
    stalled_at: Option<u64>,
    certificates: HashMap<Digest, Vec<u8>>,
    /// Digests requested from peers, with the tick they were last requested at.
    wanted: HashMap<Digest, u64>,
    ticks: u64,
    block_sender: BS,
    backfill_sender: FS,
    /// The actor's own inbox, for timers it sets itself.
    inbox: Inbox,
    /// When the pending wake-up timer fires, if one is set.
    wake_at: Option<std::time::SystemTime>,
    /// When this process started, if it started on an empty store (a new or wiped
    /// volume): see [`may_have_proposed`].
    empty_start: Option<std::time::SystemTime>,
    /// The parent this node last held a proposal back on, and since when.
    held_back: Option<(Digest, std::time::SystemTime)>,
    /// The engine waiting to learn where its epoch's finalizations stand.
    floor_wait: Option<crate::rejoin::FloorWait>,
    /// How long executing a finalized block takes here, smoothed over recent blocks, on
    /// the runtime's clock (paces proposals: see [`block_interval`]).
    execution_time: Duration,
}

/// How long a node that started on an empty store waits for a peer's newer block before
/// it proposes on an older one after all.
const HOLD_BACK_LIMIT: Duration = Duration::from_secs(30);

/// Whether a node that started on an empty store (`empty_start`: when) may already have
/// proposed on `parent` before it lost its data. Its consensus journal, which makes a
/// restarted validator repeat its own votes, went with the volume: proposing again on a
/// parent it had a view on could propose a second block in a view whose first one its
/// peers hold (a conflicting notarize), and they block it as an equivocator — with a
/// quorum that needs it, the shard halts for good. A parent stamped before the start may
/// have been proposed on before; one stamped after cannot, so the node proposes again
/// once a peer's newer block is its parent (a view or two later). Genesis, and a
/// committee of one (`validators`, asked only when it matters), where nobody could tell
/// two proposals apart, are exempt.
fn may_have_proposed(
    empty_start: Option<std::time::SystemTime>,
    parent: &Block,
    validators: impl FnOnce() -> usize,
) -> bool {
    empty_start.is_some_and(|start| {
        parent.height > 0
            && UNIX_EPOCH + Duration::from_millis(parent.timestamp_ms) < start
            && validators() > 1
    })
}

/// Starts the chain actor; returns the mailbox to hand to simplex.
pub fn start<E, K, BS, BR, FS, FR>(
    context: E,
    config: ChainConfig,
    state: Arc<Mutex<NodeState<K>>>,
    metrics: ChainMetrics,
    blocks: (BS, BR),
    backfill: (FS, FR),
) -> (Mailbox, Handle<()>)
where
    E: Spawner + Clock,
    K: Kv,
    BS: Sender<PublicKey = PublicKey>,
    BR: Receiver<PublicKey = PublicKey>,
    FS: Sender<PublicKey = PublicKey>,
    FR: Receiver<PublicKey = PublicKey>,
{
    let (sender, receiver) = mpsc::unbounded_channel();
    let mailbox = Mailbox {
        sender: sender.clone(),
    };
    let handle = context.child("chain").spawn(move |context| async move {
        let (block_sender, mut block_receiver) = blocks;
        let (backfill_sender, mut backfill_receiver) = backfill;
        // Forward the p2p channels and a timer into the actor's inbox. These tasks are
        // children of the actor: they stop with it.
        let inbox = sender.clone();
        let s = sender.clone();
        context.child("blocks_in").spawn(move |_| async move {
            while let Ok((_, bytes)) = block_receiver.recv().await {
                if !queue(&s, Message::Block { bytes }) {
                    break;
                }
            }
        });
        // Transaction gossip is admitted on a task of its own (see `gossip`), so its
        // signature checks do not hold up proposals, verification and votes; on a thread
        // of its own, so that they do not occupy one of the runtime's two shared worker
        // threads, which consensus and p2p need.
        let (gossip_sender, mut gossip_receiver) = mpsc::unbounded_channel::<Vec<Tx>>();
        let (gossip_state, chain_id) = (state.clone(), config.chain_id.clone());
        context
            .child("gossip_in")
            .dedicated()
            .spawn(move |_| async move {
                // What queued meanwhile (peers' messages arrive while the last batch is
                // verified) is verified together: bigger batches, less CPU each.
                while let Some(first) = gossip_receiver.recv().await {
                    let mut count = first.len();
                    let mut messages = vec![first];
                    while count < crate::gossip::MERGED_TXS {
                        let Ok(txs) = gossip_receiver.try_recv() else {
                            break;
                        };
                        count += txs.len();
                        messages.push(txs);
                    }
                    crate::gossip::admit_messages(&gossip_state, &chain_id, messages);
                }
            });
        let s = sender.clone();
        context.child("backfill_in").spawn(move |_| async move {
            while let Ok((from, bytes)) = backfill_receiver.recv().await {
                let sent = match decode_backfill(bytes.as_ref()) {
                    Ok(Backfill::Gossip { txs }) => gossip_sender.send(txs).is_ok(),
                    Ok(message) => queue(&s, Message::Backfill { from, message }),
                    Err(_) => {
                        debug!(?from, "dropped undecodable backfill message");
                        true
                    }
                };
                if !sent {
                    break;
                }
            }
        });
        let tick = config.tick;
        context.child("ticker").spawn(move |context| async move {
            loop {
                context.sleep(tick).await;
                if !queue(&sender, Message::Tick) {
                    break;
                }
            }
        });
        let empty_start = (lock(&state).finalized_height() == 0).then(|| context.current());
        let actor = Actor {
            context,
            config,
            state,
            metrics,
            blocks: HashMap::new(),
            first_seen: HashMap::new(),
            verifies: Vec::new(),
            proposals: Vec::new(),
            target: None,
            stalled_at: None,
            certificates: HashMap::new(),
            wanted: HashMap::new(),
            ticks: 0,
            block_sender,
            backfill_sender,
            inbox,
            wake_at: None,
            empty_start,
            held_back: None,
            floor_wait: None,
            execution_time: Duration::ZERO,
        };
        actor.run(receiver).await;
    });
    (mailbox, handle)
}

impl<E, K, BS, FS> Actor<E, K, BS, FS>
where
    E: Spawner + Clock,
    K: Kv,
    BS: Sender<PublicKey = PublicKey>,
    FS: Sender<PublicKey = PublicKey>,
{
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Queued>) {
        while let Some(Queued { at, message }) = inbox.recv().await {
            let (kind, started) = (message.kind(), Instant::now());
            let result = match message {
                Message::Propose { context, response } => {
                    self.proposals.push(PendingPropose { context, response });
                    self.serve_proposals();
                    Ok(())
                }
                Message::Verify {
                    context,
                    digest,
                    response,
                } => {
                    self.verifies.push(PendingVerify {
                        context,
                        digest,
                        response,
                        ticks: 0,
                    });
                    self.serve_verifies();
                    Ok(())
                }
                Message::Broadcast { digest, plan } => {
                    self.relay(digest, plan);
                    Ok(())
                }
                Message::Finalized {
                    digest,
                    epoch,
                    view,
                    certificate,
                } => self.finalized(digest, (epoch, view), certificate),
                Message::Seen { epoch, view } => {
                    self.note_round((epoch, view));
                    Ok(())
                }
                Message::Block { bytes } => {
                    self.receive_block(bytes.as_ref());
                    self.serve_verifies();
                    self.serve_proposals();
                    self.advance()
                }
                Message::Backfill { from, message } => self.backfill(from, message),
                Message::Floor { epoch, reply } => self.ask_floor(epoch, reply),
                Message::Tick => self.tick(),
            };
            debug!(
                target: TIMING,
                kind,
                waited_us = micros(started.duration_since(at)),
                took_us = micros(started.elapsed()),
                "message"
            );
            if let Err(e) = result {
                // Storage failures are fatal: continuing could serve or sign on state
                // that is not durable. The process exits and restarts from its data dir.
                error!(error = %e, "chain storage failed; stopping the chain actor");
                return;
            }
        }
    }

    /// A finalization certificate from consensus.
    fn finalized(
        &mut self,
        digest: Digest,
        round: (u64, u64),
        certificate: Vec<u8>,
    ) -> Result<(), StateError> {
        self.note_round(round);
        // A block finalized again (an epoch's last block is re-proposed until it is
        // finalized directly): keep the certificate if the block has none yet, so that
        // peers catching up across the epoch can be served one.
        let known = lock(&self.state).finalized_height_of(&digest)?;
        if let Some(height) = known {
            let state = lock(&self.state);
            if state.finalization(height)?.is_none() {
                let mut batch = WriteBatch::default();
                batch.put(Space::Meta, key_finalization(height), certificate);
                state.ledger.kv().commit(batch)?;
            }
            return Ok(());
        }
        self.certificates.insert(digest, certificate);
        if self.target.is_none_or(|(_, r)| round > r) {
            self.target = Some((digest, round));
        }
        self.advance()
    }

    fn note_round(&mut self, round: (u64, u64)) {
        let mut state = lock(&self.state);
        if round > state.round {
            state.round = round;
        }
    }

    /// Finds a block by digest among unfinalized blocks (memory, then the durable
    /// pending store) or in the finalized store.
    fn lookup(&self, digest: &Digest) -> Result<Option<Block>, StateError> {
        if let Some(block) = self.unfinalized(digest)? {
            return Ok(Some(block));
        }
        let state = lock(&self.state);
        match state.finalized_height_of(digest)? {
            Some(height) => state.block(height),
            None => Ok(None),
        }
    }

    fn unfinalized(&self, digest: &Digest) -> Result<Option<Block>, StateError> {
        if let Some(block) = self.blocks.get(digest) {
            return Ok(Some(block.clone()));
        }
        let state = lock(&self.state);
        match state.ledger.kv().get(Space::Meta, &key_pending(digest))? {
            None => Ok(None),
            Some(bytes) => Block::decode_untrusted(&bytes)
                .map(Some)
                .map_err(|e| StateError::Corrupt(format!("pending block: {e}"))),
        }
    }

    /// Makes a block durable before this node commits to it (proposal or vote).
    fn persist(&self, block: &Block) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        batch.put(
            Space::Meta,
            key_pending(&block.digest()),
            block.encode().to_vec(),
        );
        lock(&self.state).ledger.kv().commit(batch)?;
        Ok(())
    }

    fn want(&mut self, digest: Digest) {
        // Ask again at most every other tick.
        let now = self.ticks;
        let due = self
            .wanted
            .get(&digest)
            .is_none_or(|asked| now >= asked + 2);
        if due {
            self.wanted.insert(digest, now);
            let request = Backfill::Request {
                digest,
                depth: BACKFILL_DEPTH,
            };
            self.backfill_sender
                .send(Recipients::All, IoBuf::from(request.encode()), false);
        }
    }

    fn receive_block(&mut self, bytes: &[u8]) {
        let Ok(block) = Block::decode_untrusted(bytes) else {
            debug!("dropped undecodable block");
            return;
        };
        self.keep(block);
    }

    fn keep(&mut self, block: Block) {
        let finalized = lock(&self.state).finalized_height();
        if block.height <= finalized || self.blocks.len() >= MAX_PENDING_BLOCKS {
            return;
        }
        let digest = block.digest();
        self.wanted.remove(&digest);
        self.first_seen
            .entry(digest)
            .or_insert_with(|| self.context.current());
        self.blocks.insert(digest, block);
    }

    fn relay(&mut self, digest: Digest, plan: Plan<PublicKey>) {
        let Some(block) = self.blocks.get(&digest) else {
            warn!(?digest, "asked to relay an unknown block");
            return;
        };
        let recipients = match plan {
            Plan::Prepare { .. } | Plan::Propose { .. } => Recipients::All,
            Plan::Forward { recipients, .. } => recipients,
        };
        self.block_sender
            .send(recipients, IoBuf::from(block.encode()), false);
    }

    fn serve_proposals(&mut self) {
        let pending = std::mem::take(&mut self.proposals);
        for p in pending {
            if p.response.is_closed() {
                continue;
            }
            let parent_digest = p.context.parent.1;
            match self.lookup(&parent_digest) {
                Ok(Some(parent)) => {
                    let epoch = p.context.round.epoch().get();
                    let (current, beyond, last) = {
                        let state = lock(&self.state);
                        (
                            state.consensus_epoch(),
                            state.beyond(epoch, parent.height),
                            state.ends(epoch, &parent),
                        )
                    };
                    if current != epoch || beyond {
                        // An engine of an epoch this node has left: it is being stopped.
                        continue;
                    }
                    if last {
                        // The epoch is complete: re-propose its last block until it is
                        // finalized directly, so its certificate exists for every node
                        // that changes epoch.
                        p.response.send_lossy(parent_digest);
                        continue;
                    }
                    if self.holds_back(&parent) {
                        // Dropped: the view passes by its leader timeout or the peers'
                        // certificate, and a later view proposes on a newer block.
                        continue;
                    }
                    let ready_at = UNIX_EPOCH
                        + Duration::from_millis(parent.timestamp_ms)
                        + block_interval(
                            self.config.min_block_interval,
                            self.config.max_block_interval,
                            self.execution_time,
                        );
                    if let Ok(wait) = ready_at.duration_since(self.context.current())
                        && !wait.is_zero()
                        && parent.height > 0
                    {
                        if self.wake_at != Some(ready_at) {
                            self.wake_at = Some(ready_at);
                            let inbox = self.inbox.clone();
                            self.context.child("wake").spawn(move |context| async move {
                                context.sleep(wait).await;
                                queue(&inbox, Message::Tick);
                            });
                        }
                        self.proposals.push(p);
                        continue;
                    }
                    let started = Instant::now();
                    let Some(block) = self.build(&p.context, &parent) else {
                        // Not ready to commit to a shard header on this parent yet: it
                        // names state or a beacon height this node has not reached.
                        self.proposals.push(p);
                        continue;
                    };
                    let built = Instant::now();
                    let digest = block.digest();
                    if let Err(e) = self.persist(&block) {
                        error!(error = %e, "persisting a proposal; not proposing");
                        continue;
                    }
                    if tracing::enabled!(target: TIMING, tracing::Level::DEBUG) {
                        // How long the block's transactions waited here since admission.
                        let (age_p50_ms, age_max_ms) = {
                            let state = lock(&self.state);
                            age_ms(
                                block
                                    .txs
                                    .iter()
                                    .filter_map(|tx| state.mempool.admitted_at(tx))
                                    .map(|at| built.duration_since(at))
                                    .collect(),
                            )
                        };
                        debug!(
                            target: TIMING,
                            height = block.height,
                            txs = block.txs.len(),
                            build_us = micros(built.duration_since(started)),
                            persist_us = micros(built.elapsed()),
                            age_p50_ms,
                            age_max_ms,
                            "proposed"
                        );
                    }
                    self.first_seen
                        .entry(digest)
                        .or_insert_with(|| self.context.current());
                    self.blocks.insert(digest, block);
                    p.response.send_lossy(digest);
                }
                Ok(None) => {
                    self.want(parent_digest);
                    self.proposals.push(p);
                }
                Err(e) => error!(error = %e, "reading parent block"),
            }
        }
    }

    /// Whether to hold back a proposal on `parent` (see [`may_have_proposed`]): for
    /// [`HOLD_BACK_LIMIT`] at most, so a committee whose every validator lost its store
    /// at once (no peer makes a newer block) still goes on.
    fn holds_back(&mut self, parent: &Block) -> bool {
        let validators = || {
            lock(&self.state)
                .membership()
                .map_or(0, |m| m.validators.len())
        };
        if !may_have_proposed(self.empty_start, parent, validators) {
            return false;
        }
        let now = self.context.current();
        let digest = parent.digest();
        let since = match self.held_back {
            Some((held, since)) if held == digest => since,
            _ => {
                self.held_back = Some((digest, now));
                now
            }
        };
        let holds = now.duration_since(since).unwrap_or_default() < HOLD_BACK_LIMIT;
        if holds {
            debug!(
                height = parent.height,
                "not proposing on a block older than this node's empty store"
            );
        }
        holds
    }

    /// Builds a proposal on `parent`; `None` while a sharded node cannot commit to a
    /// header on it yet.
    fn build(&self, context: &ConsensusContext, parent: &Block) -> Option<Block> {
        // A view passed without a block since the parent's: its finalize votes may be lost
        // for good (see `next_shard_header`).
        let patient = context.view().get() == context.parent.0.get() + 1;
        let next = next_shard_header(&lock(&self.state), parent, patient);
        let sharding = match next {
            Ok(header) => header,
            Err(wait) => {
                debug!(reason = %wait, "proposal waits");
                return None;
            }
        };
        // Transactions (and credits) already in unfinalized ancestors are not included
        // again. The walk stops at the first ancestor above the finalized height: a block
        // this node persisted stays in the pending store after finalization (it is the
        // block's only copy), so walking on while ancestors are found would read, decode
        // and hash the whole chain on every proposal (a cost growing with the height).
        let finalized = lock(&self.state).finalized_height();
        let mut exclude = HashSet::new();
        let mut in_flight = Vec::new();
        let mut cursor = parent.clone();
        loop {
            for tx in &cursor.txs {
                exclude.insert(tx.hash());
            }
            in_flight.extend(cursor.sharding.iter().flat_map(|s| s.credits.clone()));
            if cursor.height <= finalized.saturating_add(1) {
                break;
            }
            match self.unfinalized(&cursor.parent) {
                Ok(Some(ancestor)) => cursor = ancestor,
                _ => break,
            }
        }
        let governance_above = self.governance_above(parent);
        // An epoch-end block carries nothing (no transactions, credits or governance): its
        // header's roots are the epoch's final ones.
        let ending = sharding.as_ref().is_some_and(|h| {
            h.committee != Committee::Beacon
                && crate::epoch_switch::would_end(&lock(&self.state), h.beacon_height)
        });
        let (txs, governance) = {
            let state = lock(&self.state);
            let txs = if ending {
                Vec::new()
            } else {
                state.mempool.select(self.config.block_txs, &exclude)
            };
            // Governance waits while an unfinalized ancestor carries some: its outcome
            // (and so the next sequence) is not known yet.
            let mut governance = Vec::new();
            if !governance_above {
                let mut registry = state.registry.clone();
                for g in &state.governance_pool {
                    if governance.len() >= MAX_BLOCK_GOVERNANCE {
                        break;
                    }
                    if registry
                        .execute(g, &self.config.chain_id, parent.height + 1)
                        .is_ok()
                    {
                        governance.push(g.clone());
                    }
                }
            }
            (txs, governance)
        };
        let now_ms = self
            .context
            .current()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let block = Block::with_governance(
            parent.digest(),
            parent.height + 1,
            context.round.epoch().get(),
            context.view().get(),
            now_ms,
            txs,
            governance,
        );
        let system = match &sharding {
            Some(h) if h.committee == Committee::Beacon && !self.system_above(parent) => {
                // Sequences are per signer and follow execution order: include only what
                // executes on top of the finalized beacon state in this order.
                let state = lock(&self.state);
                let mut included = Vec::new();
                if let Some(mut beacon) = state.beacon.clone() {
                    for tx in &state.system_pool {
                        if included.len() >= MAX_BLOCK_SYSTEM {
                            break;
                        }
                        if beacon.execute(tx, parent.height + 1).is_ok() {
                            included.push(tx.clone());
                        }
                    }
                }
                included
            }
            _ => Vec::new(),
        };
        let credits = match &sharding {
            Some(h) if h.committee != Committee::Beacon && !ending => {
                let in_flight: Vec<&trellis_node_types::Credit> = in_flight.iter().collect();
                crate::cross_shard::credits_for_block(&lock(&self.state), &in_flight)
            }
            _ => Vec::new(),
        };
        Some(match sharding {
            None => block,
            Some(header) => block.with_sharding(Sharding {
                header,
                credits,
                system,
            }),
        })
    }

    /// True when a block between the finalized one and `parent` (inclusive) carries
    /// system transactions: their outcome (and so the next sequences) is not known yet.
    fn system_above(&self, parent: &Block) -> bool {
        let finalized = lock(&self.state).finalized_height();
        let mut cursor = parent.clone();
        while cursor.height > finalized {
            if cursor
                .sharding
                .as_ref()
                .is_some_and(|s| !s.system.is_empty())
            {
                return true;
            }
            match self.unfinalized(&cursor.parent) {
                Ok(Some(b)) => cursor = b,
                _ => break,
            }
        }
        false
    }

    /// True when a block between the finalized one and `parent` (inclusive) carries
    /// governance transactions.
    fn governance_above(&self, parent: &Block) -> bool {
        let finalized = lock(&self.state).finalized_height();
        let mut cursor = parent.clone();
        while cursor.height > finalized {
            if !cursor.governance.is_empty() {
                return true;
            }
            match self.unfinalized(&cursor.parent) {
                Ok(Some(b)) => cursor = b,
                _ => break,
            }
        }
        false
    }

    fn serve_verifies(&mut self) {
        let pending = std::mem::take(&mut self.verifies);
        for mut v in pending {
            if v.response.is_closed() {
                continue;
            }
            let block = match self.lookup(&v.digest) {
                Ok(b) => b,
                Err(e) => {
                    error!(error = %e, "reading block");
                    continue;
                }
            };
            let Some(block) = block else {
                // The proposer's broadcast has not arrived (yet): ask peers after a tick.
                if v.ticks > 0 {
                    self.want(v.digest);
                }
                self.verifies.push(v);
                continue;
            };
            let parent = match self.lookup(&v.context.parent.1) {
                Ok(p) => p,
                Err(e) => {
                    error!(error = %e, "reading parent block");
                    continue;
                }
            };
            let Some(parent) = parent else {
                self.want(v.context.parent.1);
                v.ticks += 1;
                self.verifies.push(v);
                continue;
            };
            let started = Instant::now();
            let valid = if v.digest == v.context.parent.1 {
                // A re-proposal: valid only for the last block of the current epoch.
                let state = lock(&self.state);
                let epoch = v.context.round.epoch().get();
                state.consensus_epoch() == epoch && state.ends(epoch, &block)
            } else {
                let sharding = check_sharding(
                    &mut lock(&self.state),
                    &self.config.chain_id,
                    &block,
                    &parent,
                );
                match sharding {
                    Ok(true) => self.valid(&v.context, &block, &parent),
                    Ok(false) => {
                        // It names state or a beacon height this node has not reached
                        // yet: vote once it has (consensus times the view out otherwise).
                        v.ticks += 1;
                        self.verifies.push(v);
                        continue;
                    }
                    Err(reason) => {
                        warn!(digest = ?v.digest, %reason, "refusing a block");
                        false
                    }
                }
            };
            let checked = Instant::now();
            if !valid {
                warn!(digest = ?v.digest, "refusing invalid block");
            } else if let Err(e) = self.persist(&block) {
                // Without a durable copy this node must not vote; it stays silent.
                error!(error = %e, "persisting a verified block; not voting");
                continue;
            }
            debug!(
                target: TIMING,
                height = block.height,
                txs = block.txs.len(),
                check_us = micros(checked.duration_since(started)),
                persist_us = micros(checked.elapsed()),
                since_proposed_ms = self.since_ms(block.timestamp_ms),
                "verified"
            );
            v.response.send_lossy(valid);
        }
    }

    fn valid(&self, context: &ConsensusContext, block: &Block, parent: &Block) -> bool {
        let epoch = context.round.epoch().get();
        let (current, beyond, parent_ends) = {
            let state = lock(&self.state);
            (
                state.consensus_epoch(),
                state.beyond(epoch, block.height),
                state.ends(epoch, parent),
            )
        };
        block.parent == parent.digest()
            && block.height == parent.height + 1
            && block.view == context.view().get()
            && block.epoch == epoch
            && current == epoch
            && !beyond
            // Only a re-proposal may follow the last block of an epoch.
            && !parent_ends
            && block.txs.len() <= self.config.block_txs
            && block.governance.len() <= MAX_BLOCK_GOVERNANCE
            && block
                .governance
                .iter()
                .all(|g| g.check_stateless(&self.config.chain_id).is_ok())
            && self.signatures_valid(block)
    }

    /// Every transaction's chain id and signature. Signatures of transactions in this
    /// node's mempool were checked at admission, and those of a block verified before
    /// (a re-proposal, or one from another view) then; the rest are checked with one
    /// batch verification, outside the state lock, and remembered for the gossip that
    /// may bring them later.
    fn signatures_valid(&self, block: &Block) -> bool {
        // Each transaction is hashed once here.
        let hashes: Vec<Digest> = block.txs.iter().map(Tx::hash).collect();
        let known: Vec<bool> = {
            let state = lock(&self.state);
            hashes
                .iter()
                .map(|h| state.mempool.contains(h) || state.mempool.signature_checked(h))
                .collect()
        };
        let valid = block
            .check_stateless_except(&self.config.chain_id, |i| {
                known.get(i).copied().unwrap_or(false)
            })
            .is_ok();
        if valid {
            let checked = hashes.into_iter().zip(known).filter(|(_, k)| !k);
            let checked: Vec<Digest> = checked.map(|(h, _)| h).collect();
            lock(&self.state)
                .mempool
                .remember_checked(checked.into_iter());
        }
        valid
    }

    fn tick(&mut self) -> Result<(), StateError> {
        self.ticks += 1;
        self.floor_tick();
        if crate::epoch_switch::activate_if_created(&mut lock(&self.state))? {
            self.announce_membership()?;
        }
        self.flush_gossip();
        // A shard node more than an epoch behind its shard asks on every tick: its peers
        // move on meanwhile, so waiting to notice a stall would never catch up.
        let behind = crate::epoch_switch::behind(&lock(&self.state));
        if behind || self.ticks.is_multiple_of(EPOCH_END_EVERY) {
            self.ask_epoch_end(behind);
        }
        for v in &mut self.verifies {
            v.ticks += 1;
        }
        self.serve_verifies();
        self.serve_proposals();
        let (depth, epoch) = {
            let state = lock(&self.state);
            (state.mempool.len() as i64, state.epoch as i64)
        };
        self.metrics.mempool_depth.set(depth);
        self.metrics.epoch.set(epoch);
        self.advance()
    }

    /// The engine of `epoch` asks where to start (see [`crate::rejoin`]): from the epoch's
    /// genesis at once, unless this node started on an empty store and has not finalized a
    /// block made since; then from the newest finalization its peers hold.
    fn ask_floor(
        &mut self,
        epoch: u64,
        reply: oneshot::Sender<Option<Finalization>>,
    ) -> Result<(), StateError> {
        if let Some(earlier) = self.floor_wait.take() {
            earlier.finish();
        }
        // Read only by a node that started on an empty store (not at every epoch switch).
        let asks = match self.empty_start {
            None => false,
            Some(start) => {
                let state = lock(&self.state);
                let replaying = state.block(state.finalized_height())?.is_some_and(|tip| {
                    UNIX_EPOCH + Duration::from_millis(tip.timestamp_ms) < start
                });
                let membership = state.membership()?;
                replaying && membership.epoch == epoch && membership.validators.len() > 1
            }
        };
        if !asks {
            let _ = reply.send(None);
            return Ok(());
        }
        info!(
            epoch,
            "started on an empty store: asking the epoch's validators for their latest finalization"
        );
        self.floor_wait = Some(crate::rejoin::FloorWait::new(
            epoch,
            reply,
            self.context.current(),
        ));
        self.send_floor_request(epoch);
        Ok(())
    }

    fn send_floor_request(&mut self, epoch: u64) {
        let request = Backfill::FloorRequest { epoch };
        self.backfill_sender
            .send(Recipients::All, IoBuf::from(request.encode()), false);
    }

    /// Asks again while peers may still be connecting; stops waiting when
    /// [`crate::rejoin::FloorWait::due`].
    fn floor_tick(&mut self) {
        let Some(wait) = &self.floor_wait else {
            return;
        };
        if wait.due(self.context.current()) {
            if let Some(wait) = self.floor_wait.take() {
                if wait.best_view().is_none() {
                    warn!(
                        epoch = wait.epoch,
                        "no validator told its latest finalization; starting from the epoch's genesis"
                    );
                }
                Self::start_from(wait);
            }
        } else if self.ticks.is_multiple_of(3) {
            let epoch = wait.epoch;
            self.send_floor_request(epoch);
        }
    }

    /// This node's latest finalization certificate if it is of `epoch`.
    fn latest_finalization(&self, epoch: u64) -> Result<Option<Vec<u8>>, StateError> {
        let state = lock(&self.state);
        let validators = state.membership()?.validators.len();
        Ok(state
            .finalization(state.finalized_height())?
            .filter(|c| crate::rejoin::round(validators, c).is_some_and(|(e, _)| e == epoch)))
    }

    /// A peer's answer to this node's floor request.
    fn floor_answer(&mut self, from: PublicKey, epoch: u64, certificate: Vec<u8>) {
        if self.floor_wait.as_ref().is_none_or(|w| w.epoch != epoch) {
            return;
        }
        let validators = match lock(&self.state).membership() {
            Ok(m) if m.epoch == epoch => m.validators,
            _ => return,
        };
        let found = if certificate.is_empty() {
            None
        } else {
            let namespace = &self.config.namespace;
            match crate::rejoin::verify_floor(namespace, &validators, &certificate, epoch) {
                Some(finalization) => {
                    Some((finalization.proposal.round.view().get(), finalization))
                }
                None => {
                    warn!(%from, epoch, "a peer's latest finalization does not verify; ignored");
                    return;
                }
            }
        };
        let now = self.context.current();
        let all = self
            .floor_wait
            .as_mut()
            .is_some_and(|w| w.answer_from(from, found, &validators, now));
        if all && let Some(wait) = self.floor_wait.take() {
            Self::start_from(wait);
        }
    }

    /// Answers the engine waiting for its floor.
    fn start_from(wait: crate::rejoin::FloorWait) {
        if let Some(view) = wait.best_view() {
            info!(
                epoch = wait.epoch,
                view, "starting the epoch's engine from the newest finalization a peer holds"
            );
        }
        wait.finish();
    }

    /// When finalization has not moved since the last look, asks peers for the current
    /// epoch's last block: a node that missed an epoch change (or a new member's node
    /// replaying the chain) learns it this way, since the engines of past epochs are gone.
    fn ask_epoch_end(&mut self, now: bool) {
        let (height, epoch, ends) = {
            let state = lock(&self.state);
            let r = &state.registry;
            (
                state.finalized_height(),
                state.consensus_epoch(),
                // A shard's epochs end when the beacon's do; an idle slot has none.
                state.shard_epoch.as_ref().is_some_and(|e| !e.idle())
                    || (state.shard_epoch.is_none() && r.epoch_end(r.epoch).is_some()),
            )
        };
        if ends && (now || self.stalled_at == Some(height)) {
            debug!(target: "trellis_node::epoch_switch", epoch, height, "asking peers for the epoch's end");
            let request = Backfill::EpochEndRequest { epoch };
            self.backfill_sender
                .send(Recipients::All, IoBuf::from(request.encode()), false);
        }
        self.stalled_at = Some(height);
    }

    /// Sharded networks: the shard count and each owned table's executed transactions.
    fn sharded_metrics(&self) {
        let state = lock(&self.state);
        let (Some(place), Some(beacon)) = (&state.shard, &state.beacon) else {
            return;
        };
        self.metrics
            .shard_count
            .set(i64::from(beacon.shard_count()));
        for table in &place.tables {
            let counter = self.metrics.table_txs.get_or_create(&vec![(
                trellis_node_api::metrics::LABEL_TABLE.to_string(),
                table.to_string(),
            )]);
            let txs = state.ledger.table_stats(*table).txs;
            // Counters only go up: add what executed since the last look.
            counter.inc_by(txs.saturating_sub(counter.get()));
        }
        if place.committee != Committee::Beacon {
            let depth = state.mempool.depth_by_table();
            for table in &place.tables {
                self.metrics
                    .table_mempool_depth
                    .get_or_create(&vec![(
                        trellis_node_api::metrics::LABEL_TABLE.to_string(),
                        table.to_string(),
                    )])
                    .set(depth[usize::from(*table)] as i64);
            }
            self.metrics
                .receipts_pending
                .set(state.credits.pending() as i64);
        }
    }

    fn flush_gossip(&mut self) {
        let system = std::mem::take(&mut lock(&self.state).system_gossip);
        if !system.is_empty() {
            let message = Backfill::System { txs: system };
            self.backfill_sender
                .send(Recipients::All, IoBuf::from(message.encode()), false);
        }
        let governance = std::mem::take(&mut lock(&self.state).governance_gossip);
        if !governance.is_empty() {
            let message = Backfill::Governance { txs: governance };
            self.backfill_sender
                .send(Recipients::All, IoBuf::from(message.encode()), false);
        }
        // Moved into the batches, not cloned.
        let mut txs = std::mem::take(&mut lock(&self.state).gossip)
            .into_iter()
            .peekable();
        while txs.peek().is_some() {
            let message = Backfill::Gossip {
                txs: txs.by_ref().take(GOSSIP_BATCH).collect(),
            };
            self.backfill_sender
                .send(Recipients::All, IoBuf::from(message.encode()), false);
        }
    }

    /// Answers and consumes backfill and gossip traffic.
    fn backfill(&mut self, from: PublicKey, message: Backfill) -> Result<(), StateError> {
        match message {
            Backfill::Request { digest, depth } => {
                let mut blocks = Vec::new();
                let mut size = 0;
                let mut cursor = digest;
                for _ in 0..depth.min(BACKFILL_DEPTH) {
                    let Some(block) = self.lookup(&cursor)? else {
                        break;
                    };
                    size += block.encode_size();
                    if size > BACKFILL_BYTES && !blocks.is_empty() {
                        break;
                    }
                    cursor = block.parent;
                    let at_genesis = block.height == 0;
                    blocks.push(block);
                    if at_genesis {
                        break;
                    }
                }
                if !blocks.is_empty() {
                    let response = Backfill::Response { blocks };
                    self.backfill_sender.send(
                        Recipients::One(from),
                        IoBuf::from(response.encode()),
                        false,
                    );
                }
                Ok(())
            }
            // Routed to the gossip task by the receiving task; handled the same here.
            Backfill::Gossip { txs } => {
                crate::gossip::admit(&self.state, &self.config.chain_id, txs);
                Ok(())
            }
            Backfill::EpochEndRequest { epoch } => {
                let proof = {
                    let state = lock(&self.state);
                    match state.epoch_end_height(epoch)? {
                        Some(end) => match (state.block(end)?, state.finalization(end)?) {
                            (Some(block), Some(certificate)) => Some((block, certificate)),
                            _ => None,
                        },
                        _ => None,
                    }
                };
                debug!(target: "trellis_node::epoch_switch", epoch, answered = proof.is_some(), "epoch-end request");
                if let Some((block, certificate)) = proof {
                    let response = Backfill::EpochEnd {
                        block: Box::new(block),
                        certificate,
                    };
                    self.backfill_sender.send(
                        Recipients::One(from),
                        IoBuf::from(response.encode()),
                        false,
                    );
                }
                Ok(())
            }
            Backfill::EpochEnd { block, certificate } => self.epoch_end(*block, certificate),
            Backfill::FloorRequest { epoch } => {
                let certificate = self.latest_finalization(epoch)?.unwrap_or_default();
                let response = Backfill::Floor { epoch, certificate };
                self.backfill_sender.send(
                    Recipients::One(from),
                    IoBuf::from(response.encode()),
                    false,
                );
                Ok(())
            }
            Backfill::Floor { epoch, certificate } => {
                self.floor_answer(from, epoch, certificate);
                Ok(())
            }
            Backfill::Governance { txs } => {
                let mut state = lock(&self.state);
                // Only what this node's own clients submitted is gossiped by it.
                let own = state.governance_gossip.len();
                for tx in txs {
                    // Known, stale or not (yet) acceptable: dropped, as in the mempool.
                    let _ = state.submit_governance(tx, &self.config.chain_id);
                }
                state.governance_gossip.truncate(own);
                Ok(())
            }
            Backfill::System { txs } => {
                let mut state = lock(&self.state);
                let own = state.system_gossip.len();
                for tx in txs {
                    let _ = state.submit_system(tx, &self.config.chain_id);
                }
                state.system_gossip.truncate(own);
                Ok(())
            }
            Backfill::Response { blocks } => {
                // Accept only what was asked for, and then each block's parent: digests
                // are hashes, so a peer cannot slip in anything else.
                let mut expected: Option<Digest> = None;
                for block in blocks {
                    let digest = block.digest();
                    let asked = self.wanted.contains_key(&digest) || expected == Some(digest);
                    if !asked {
                        break;
                    }
                    expected = Some(block.parent);
                    self.keep(block);
                }
                self.serve_verifies();
                self.serve_proposals();
                self.advance()
            }
        }
    }

    /// A peer's proof that `block` ended this node's current epoch: accepted when the
    /// certificate finalizes exactly that block in that epoch with a quorum of the epoch's
    /// validators (as this node's registry knows them).
    fn epoch_end(&mut self, block: Block, certificate: Vec<u8>) -> Result<(), StateError> {
        let (epoch, last, validators, finalized) = {
            let state = lock(&self.state);
            let epoch = state.consensus_epoch();
            (
                epoch,
                state.ends(epoch, &block),
                state.membership()?.validators,
                state.finalized_height(),
            )
        };
        if !last || block.height <= finalized {
            debug!(target: "trellis_node::epoch_switch", epoch, height = block.height, last, "epoch-end proof not for this node's epoch");
            return Ok(());
        }
        let Some(round) = verify_finalization(
            &self.config.namespace,
            &validators,
            &certificate,
            &block.digest(),
        ) else {
            warn!(epoch, "refused an epoch-end proof that does not verify");
            return Ok(());
        };
        if round.0 != epoch {
            return Ok(());
        }
        let digest = block.digest();
        debug!(target: "trellis_node::epoch_switch", epoch, height = block.height, "accepted an epoch-end proof");
        self.certificates.insert(digest, certificate);
        self.wanted.insert(digest, self.ticks);
        self.keep(block);
        if self.target.is_none_or(|(_, r)| round > r) {
            self.target = Some((digest, round));
        }
        self.advance()
    }

    /// Finalizes up to the target: walks back to the last finalized block, then executes
    /// and stores blocks in height order.
    fn advance(&mut self) -> Result<(), StateError> {
        let Some((target, _)) = self.target else {
            return Ok(());
        };
        let (finalized_height, finalized_digest) = {
            let state = lock(&self.state);
            (state.finalized_height(), state.finalized_digest)
        };
        if lock(&self.state).finalized_height_of(&target)?.is_some() {
            lock(&self.state).syncing = false;
            self.target = None;
            return Ok(());
        }
        let mut chain = Vec::new();
        let mut cursor = target;
        loop {
            if cursor == finalized_digest {
                break;
            }
            let Some(block) = self.unfinalized(&cursor)? else {
                lock(&self.state).syncing = true;
                self.want(cursor);
                return Ok(());
            };
            if block.height <= finalized_height {
                // The finalized chain does not lead here: two conflicting finalizations,
                // which simplex's safety rules out with at most f faulty validators.
                error!(
                    ?target,
                    "finalized block does not extend the finalized chain"
                );
                self.target = None;
                return Ok(());
            }
            cursor = block.parent;
            chain.push(block);
        }
        for block in chain.into_iter().rev() {
            if !crate::epoch_switch::executable(&lock(&self.state), &block) {
                // A shard waits for the beacon height the block names, or for its table
                // handoff; the target stays and is retried on the next tick.
                lock(&self.state).syncing = true;
                return Ok(());
            }
            self.execute(block)?;
        }
        lock(&self.state).syncing = false;
        self.target = None;
        Ok(())
    }

    /// Tells the orchestrator (consensus engines, p2p peer sets) the membership changed.
    fn announce_membership(&self) -> Result<(), StateError> {
        let membership = lock(&self.state).membership()?;
        info!(
            epoch = membership.epoch,
            validators = membership.validators.len(),
            peers = membership.peers.len(),
            "membership changed"
        );
        self.metrics.epoch.set(membership.epoch as i64);
        if let Some(updates) = &self.config.memberships {
            let _ = updates.send(membership);
        }
        Ok(())
    }

    /// Milliseconds from a block's timestamp (its proposer's clock: one machine in the
    /// bench) to now.
    fn since_ms(&self, timestamp_ms: u64) -> u64 {
        self.context
            .current()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| (d.as_millis() as u64).saturating_sub(timestamp_ms))
    }

    fn execute(&mut self, block: Block) -> Result<(), StateError> {
        let clock = self.context.current();
        let result = self.execute_block(block);
        let took = self
            .context
            .current()
            .duration_since(clock)
            .unwrap_or_default();
        self.execution_time = smoothed(self.execution_time, took);
        result
    }

    fn execute_block(&mut self, block: Block) -> Result<(), StateError> {
        let started = Instant::now();
        let digest = block.digest();
        let mut extra = WriteBatch::default();
        // A block this node persisted before voting is already durable: point to it.
        let persisted = lock(&self.state)
            .ledger
            .kv()
            .get(Space::Meta, &key_pending(&digest))?
            .is_some();
        if persisted {
            extra.put(Space::Meta, key_block_at(block.height), digest.0.to_vec());
        } else {
            extra.put(
                Space::Meta,
                key_block(block.height),
                block.encode().to_vec(),
            );
        }
        extra.put(
            Space::Meta,
            key_digest(&digest),
            block.height.to_be_bytes().to_vec(),
        );
        if let Some(certificate) = self.certificates.remove(&digest) {
            extra.put(Space::Meta, key_finalization(block.height), certificate);
        }
        // Sharded chains record the roots the previous height left while the ledger still
        // holds them (see `key_roots`).
        let switch;
        let mut beacon = {
            let state = lock(&self.state);
            switch = crate::epoch_switch::on_execute(&state, &block, &mut extra)?;
            if state.shard.is_some() {
                extra.put(
                    Space::Meta,
                    key_roots(block.height - 1),
                    roots_digest(&state.owned_roots()).encode().to_vec(),
                );
            }
            let executes = state
                .shard
                .as_ref()
                .is_some_and(|p| p.committee == Committee::Beacon);
            state.beacon.clone().filter(|_| executes)
        };
        // Beacon chains: system transactions execute in order, then the block ends (an
        // epoch boundary fixes the next epoch's map and committees); the beacon state is
        // committed with the block.
        if let Some(beacon) = beacon.as_mut() {
            let system = block.sharding.as_ref().map_or(&[][..], |s| &s.system[..]);
            for tx in system {
                let outcome = beacon.execute(tx, block.height);
                if let Err(e) = &outcome {
                    info!(height = block.height, error = %e, "system transaction failed");
                }
                let receipt = GovernanceReceipt {
                    height: block.height,
                    success: outcome.is_ok(),
                    error: outcome.err().map(|e| e.to_string()),
                };
                extra.put(
                    Space::Meta,
                    key_system(&tx.hash()),
                    serde_json::to_vec(&receipt)
                        .map_err(|e| StateError::Corrupt(format!("system receipt: {e}")))?,
                );
            }
            if let Some(change) = beacon.end_of_block(block.height, &digest.0) {
                info!(
                    epoch = change.epoch,
                    shards = change.shard_count,
                    moves = change.moves.len(),
                    "beacon epoch change"
                );
            }
            extra.put(Space::Meta, KEY_BEACON.to_vec(), beacon.to_bytes());
        }
        // Governance executes after the block's transactions; the registry it leaves is
        // committed with the block.
        let mut registry = lock(&self.state).registry.clone();
        let before = (registry.epoch, registry.peer_set);
        for g in &block.governance {
            let outcome = registry.execute(g, &self.config.chain_id, block.height);
            if let Err(e) = &outcome {
                info!(height = block.height, error = %e, "governance transaction failed");
            }
            let receipt = GovernanceReceipt {
                height: block.height,
                success: outcome.is_ok(),
                error: outcome.err(),
            };
            extra.put(
                Space::Meta,
                receipt_key(&g.hash().0),
                serde_json::to_vec(&receipt)
                    .map_err(|e| StateError::Corrupt(format!("governance receipt: {e}")))?,
            );
        }
        if registry.end_of_block(block.height) {
            extra.put(
                Space::Meta,
                key_validators(registry.epoch),
                validators_bytes(&registry)?,
            );
        }
        let changed = (registry.epoch, registry.peer_set) != before;
        extra.put(
            Space::Meta,
            REGISTRY_KEY.to_vec(),
            registry_bytes(&registry)?,
        );
        let locking = Instant::now();
        let (admitted, depth, committee, stages) = {
            let mut guard = lock(&self.state);
            let state = &mut *guard;
            let applying = Instant::now();
            let credits = crate::cross_shard::receipts(&block);
            let outcome =
                state
                    .ledger
                    .apply_block_with_credits(block.height, &block.txs, &credits, extra)?;
            let applied = Instant::now();
            for (credit, result) in credits.iter().zip(&outcome.credits) {
                if !result.is_credited() {
                    debug!(
                        height = block.height,
                        source = credit.source_table,
                        dest = credit.dest_table,
                        seq = credit.seq,
                        %result,
                        "credit not applied"
                    );
                }
            }
            crate::cross_shard::executed(state);
            state.finalized_digest = digest;
            if state.shard_epoch.is_none() {
                state.epoch = registry.epoch;
            }
            let chain_id = &self.config.chain_id;
            state
                .governance_pool
                .retain(|g| !block.governance.contains(g) && registry.check(g, chain_id).is_ok());
            state.registry = registry;
            if let Some(beacon) = beacon {
                let included: Vec<Digest> = block
                    .sharding
                    .as_ref()
                    .map_or_else(Vec::new, |s| s.system.iter().map(SystemTx::hash).collect());
                state
                    .system_pool
                    .retain(|t| !included.contains(&t.hash()) && beacon.check(t).is_ok());
                state.beacon = Some(beacon);
            }
            if let Some((next, kept)) = &switch {
                crate::epoch_switch::enter(state, next.clone(), kept)?;
            }
            let pruning = Instant::now();
            let admitted = state.mempool.on_finalized(&block.txs, &state.ledger);
            let committee = state.shard.as_ref().map(|place| place.committee);
            // (waiting for the lock, apply incl. commit, the commit, mempool pruning)
            let stages = (
                applying.duration_since(locking),
                applied.duration_since(applying),
                state.ledger.last_commit_time(),
                pruning.elapsed(),
            );
            (admitted, state.mempool.len(), committee, stages)
        };
        if tracing::enabled!(target: TIMING, tracing::Level::DEBUG) {
            let now = Instant::now();
            let (age_p50_ms, age_max_ms) =
                age_ms(admitted.iter().map(|at| now.duration_since(*at)).collect());
            debug!(
                target: TIMING,
                height = block.height,
                txs = block.txs.len(),
                lock_us = micros(stages.0),
                apply_us = micros(stages.1),
                commit_us = micros(stages.2),
                prune_us = micros(stages.3),
                total_us = micros(started.elapsed()),
                since_proposed_ms = self.since_ms(block.timestamp_ms),
                age_p50_ms,
                age_max_ms,
                "executed"
            );
        }
        let changed = changed || switch.is_some();
        for at in admitted {
            self.metrics
                .finality_latency
                .observe(at.elapsed().as_secs_f64());
        }
        if changed {
            self.announce_membership()?;
        }
        self.metrics.finalized_height.set(block.height as i64);
        self.sharded_metrics();
        self.metrics.txs_committed.inc_by(block.txs.len() as u64);
        self.metrics.mempool_depth.set(depth as i64);
        // From first sight (0 for a block read back from the pending store after a
        // restart) to executed; telemetry.rs turns this event into the block's span.
        let pending = self
            .first_seen
            .remove(&digest)
            .and_then(|seen| self.context.current().duration_since(seen).ok())
            .unwrap_or_default();
        // An unsharded network is shard 0; the beacon has no shard number.
        let shard = match committee {
            None => Some(0),
            Some(Committee::Shard(shard)) => Some(u64::from(shard)),
            Some(Committee::Beacon) => None,
        };
        info!(
            height = block.height,
            txs = block.txs.len(),
            epoch = block.epoch,
            view = block.view,
            shard,
            pending_us = u64::try_from(pending.as_micros()).unwrap_or(u64::MAX),
            "finalized"
        );
        // Forget what finalization made obsolete.
        let height = block.height;
        self.blocks.retain(|_, b| b.height > height);
        let blocks = &self.blocks;
        self.first_seen.retain(|d, _| blocks.contains_key(d));
        self.certificates.retain(|d, _| *d != digest);
        Ok(())
    }
}

/// How long after its parent's timestamp a proposal waits: three times as long as
/// executing a block takes here (smoothed), within `min..=max`.
///
/// Executing a block costs a part that grows with its transactions and a fixed part
/// (every changed table's Merkle root and history rows, the durable commit), paid by
/// every validator for every block. While blocks are small the fixed part is cheap and
/// the minimum keeps latency low; once execution takes a good share of the interval,
/// proposing as often as the minimum allows spends the cores on the fixed part and
/// leaves transactions queueing behind it (measured on two cores at 4 000 tx/s: a fixed
/// 200 ms interval gave p50 finality 950 ms, a fixed 400 ms 455 ms, but 400 ms costs
/// 150 ms at 1 000 tx/s; docs/node-performance.md). Keeping execution at about a third
/// of the chain's time lets blocks grow with the load instead of their number, and
/// adapts to the machine. The time is read on the runtime's clock, so the
/// deterministic simulation stays deterministic (its clock does not move while a block
/// executes, so the minimum applies there).
fn block_interval(min: Duration, max: Duration, execution_time: Duration) -> Duration {
    execution_time.saturating_mul(3).min(max).max(min)
}

/// Execution time smoothed over recent blocks (three quarters the previous figure, a
/// quarter the new one): one block's fsync stall should not stretch the next interval to
/// the maximum, nor a tiny block shrink it at once (unsmoothed, intervals swung between
/// the minimum and the maximum with the block sizes they caused).
fn smoothed(previous: Duration, took: Duration) -> Duration {
    previous.saturating_mul(3).saturating_add(took) / 4
}

/// Why `place` must not execute `tx` (see [`NodeState::check_tables`]).
fn table_refusal(place: Option<&ShardPlace>, tx: &Tx) -> Option<String> {
    let place = place?;
    let Committee::Shard(shard) = place.committee else {
        return Some("the beacon takes no transactions; send them to a shard".into());
    };
    let from = trellis_node_types::table_of(&tx.unsigned.from);
    if place.tables.binary_search(&from).is_err() {
        return Some(format!(
            "the sender's table {from} is not owned by shard {shard}"
        ));
    }
    None
}

/// The shard header of a block on `parent` (`Ok(None)` in unsharded networks), or why
/// this node cannot commit to one yet: it names its own finalized height and the roots
/// that height left, which must not be below the parent's, and the beacon height it has
/// followed, which must not be below the parent's either.
///
/// The epoch-end block names `state_height = parent`, so it is built only on a finalized
/// parent. In the view right after the parent's (`patient`) the proposer waits for the
/// parent's finalization, which normally follows its notarization within moments. Once
/// a view has passed without a block, it builds an ordinary block of the epoch instead
/// (naming the parent's beacon height, so it does not end the epoch): the parent may
/// have been notarized without being finalized directly (its finalize votes lost to
/// view timeouts), and then only a finalized child finalizes it — every leader waiting
/// on it would stall the shard for good.
///
/// A shard that lags the beacon (its followed beacon height is past the current epoch
/// when the epoch starts) still makes progress with transactions: the epoch's first block
/// names its parent's beacon height (an ordinary block), and the epoch-end block names
/// at most the last beacon height of the next epoch, so the next epoch's first block can
/// again be ordinary. Naming the followed tip instead made every block of every epoch
/// up to the beacon's an empty epoch-end block. Validators accept any beacon height
/// between the parent's and their own followed one, so both rules are the proposer's.
fn next_shard_header<K: Kv>(
    state: &NodeState<K>,
    parent: &Block,
    patient: bool,
) -> Result<Option<ShardHeader>, String> {
    let (Some(place), Some(above)) = (&state.shard, &parent.sharding) else {
        return Ok(None);
    };
    let above = &above.header;
    if let Some(reason) = crate::epoch_switch::blocked(state) {
        return Err(reason);
    }
    let state_height = state.finalized_height();
    let parent_unfinalized = state_height != parent.height;
    if patient && parent_unfinalized && crate::epoch_switch::would_end(state, place.beacon_height) {
        return Err(format!(
            "the epoch-end block waits until its parent {} is finalized",
            parent.height
        ));
    }
    if state_height < above.state_height {
        return Err(format!(
            "finalized height {state_height} is below the parent's state height {}",
            above.state_height
        ));
    }
    let beacon_height = match place.committee {
        Committee::Beacon => 0,
        Committee::Shard(_) if !crate::epoch_switch::would_end(state, place.beacon_height) => {
            place.beacon_height
        }
        // The beacon has left this epoch, but the block must not end it: its parent is not
        // finalized, or it is the epoch's first block (a lagging shard includes
        // transactions in every epoch it passes through, not only empty epoch-end blocks).
        Committee::Shard(_)
            if parent_unfinalized || crate::epoch_switch::first_of_epoch(state, parent) =>
        {
            above.beacon_height
        }
        Committee::Shard(_) => {
            crate::epoch_switch::epoch_end_beacon_height(state, place.beacon_height)
        }
    };
    if beacon_height < above.beacon_height {
        return Err(format!(
            "followed beacon height {beacon_height} is below the parent's {}",
            above.beacon_height
        ));
    }
    Ok(Some(ShardHeader {
        committee: place.committee,
        beacon_height,
        state_height,
        roots: state.owned_roots(),
    }))
}

/// Checks a proposed block's shard header against its parent and this node's own
/// finalized state: `Ok(true)` when it holds, `Ok(false)` while the block names state or
/// a beacon height this node has not reached yet, `Err` with the reason otherwise.
fn check_sharding<K: Kv>(
    state: &mut NodeState<K>,
    chain_id: &str,
    block: &Block,
    parent: &Block,
) -> Result<bool, String> {
    let (place, sharding, above) = match (&state.shard, &block.sharding, &parent.sharding) {
        (None, None, None) => return Ok(true),
        (Some(place), Some(sharding), Some(above)) => (place.clone(), sharding, &above.header),
        _ => return Err("block format does not match this network (sharded or not)".into()),
    };
    let header = &sharding.header;
    if header.committee != place.committee {
        return Err(format!(
            "block of committee {} proposed to {}",
            header.committee.name(),
            place.committee.name()
        ));
    }
    if header.state_height < above.state_height || header.state_height >= block.height {
        return Err(format!(
            "state height {} is not in {}..{}",
            header.state_height, above.state_height, block.height
        ));
    }
    match place.committee {
        Committee::Beacon if header.beacon_height != 0 => {
            return Err("a beacon block names a beacon height".into());
        }
        Committee::Shard(_) if header.beacon_height < above.beacon_height => {
            return Err(format!(
                "beacon height {} is below the parent's {}",
                header.beacon_height, above.beacon_height
            ));
        }
        _ => {}
    }
    if !crate::epoch_switch::check_end(&*state, block)? {
        return Ok(false);
    }
    if let Some(reason) = block
        .txs
        .iter()
        .find_map(|tx| table_refusal(Some(&place), tx))
    {
        return Err(reason);
    }
    if !sharding.system.is_empty() {
        if let Committee::Shard(_) = place.committee {
            return Err("system transactions belong in beacon blocks".into());
        }
        // What needs state (signer, sequence, limits) decides the receipt at execution.
        for tx in &sharding.system {
            if let Err(e) = tx.check_stateless(chain_id) {
                return Err(format!("system transaction {}: {e}", tx.hash()));
            }
        }
    }
    // Credits: every proof against a source block this node checked itself.
    let credits_ready = match crate::cross_shard::check_credits(state, &place, &sharding.credits) {
        crate::cross_shard::CreditCheck::Valid => true,
        crate::cross_shard::CreditCheck::Wait => false,
        crate::cross_shard::CreditCheck::Refused(reason) => return Err(reason),
    };
    if header.beacon_height > place.beacon_height || !credits_ready {
        return Ok(false);
    }
    match state.roots_digest_at(header.state_height) {
        Ok(None) => Ok(false),
        Ok(Some(digest)) if digest == roots_digest(&header.roots) => Ok(true),
        Ok(Some(_)) => Err(format!(
            "table roots differ from this node's at height {}",
            header.state_height
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commonware_codec::DecodeExt;
    use trellis_node_types::{Signer, test_key, to_hex};

    #[test]
    fn a_node_on_an_empty_store_proposes_only_on_blocks_newer_than_its_start() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let block = |height: u64, secs: u64| {
            let mut block = Block::genesis("c");
            block.height = height;
            block.timestamp_ms = secs * 1_000;
            block
        };
        let two = || 2;
        // Stamped before the start: it may have proposed on it before losing its journal.
        assert!(may_have_proposed(Some(start), &block(7, 999), two));
        // A peer's block after the start: no earlier proposal on it is possible.
        assert!(!may_have_proposed(Some(start), &block(8, 1_001), two));
        // Genesis, a committee of one, and a node that kept its store are exempt.
        assert!(!may_have_proposed(Some(start), &block(0, 1), two));
        assert!(!may_have_proposed(Some(start), &block(7, 999), || 1));
        assert!(!may_have_proposed(None, &block(7, 999), two));
    }

    #[test]
    fn backfill_messages_round_trip_and_reject_garbage() {
        let genesis = Block::genesis("c");
        let request = Backfill::Request {
            digest: genesis.digest(),
            depth: 3,
        };
        assert_eq!(decode_backfill(&request.encode()).unwrap(), request);
        let response = Backfill::Response {
            blocks: vec![genesis.clone()],
        };
        assert_eq!(decode_backfill(&response.encode()).unwrap(), response);
        let key = test_key(3);
        let tx = trellis_node_types::UnsignedTx {
            chain_id: "c".into(),
            from: key.public_key(),
            nonce: 0,
            fee: 0,
            kind: trellis_node_types::TxKind::Transfer {
                to: key.public_key(),
                amount: 1,
            },
        }
        .sign(&key);
        let gossip = Backfill::Gossip { txs: vec![tx; 3] };
        assert_eq!(decode_backfill(&gossip.encode()).unwrap(), gossip);
        let mut too_many = vec![2u8];
        UInt(GOSSIP_BATCH as u32 + 1).write(&mut too_many);
        assert!(decode_backfill(&too_many).is_err());
        let floor_request = Backfill::FloorRequest { epoch: 4 };
        assert_eq!(
            decode_backfill(&floor_request.encode()).unwrap(),
            floor_request
        );
        for certificate in [vec![], vec![9u8; 100]] {
            let floor = Backfill::Floor {
                epoch: 4,
                certificate,
            };
            assert_eq!(decode_backfill(&floor.encode()).unwrap(), floor);
        }
        let mut too_long = vec![8u8, 4];
        UInt(MAX_CERTIFICATE_SIZE as u32 + 1).write(&mut too_long);
        assert!(decode_backfill(&too_long).is_err());
        let mut truncated = vec![8u8, 4];
        UInt(10u32).write(&mut truncated);
        truncated.extend_from_slice(&[1, 2, 3]);
        assert!(decode_backfill(&truncated).is_err());
        assert!(decode_backfill(&[7]).is_err());
        assert!(decode_backfill(&[9]).is_err());
        assert!(decode_backfill(&[]).is_err());
        let mut too_many = vec![1u8];
        UInt(BACKFILL_DEPTH as u32 + 1).write(&mut too_many);
        assert!(Backfill::decode(commonware_codec::Copying(&too_many)).is_err());
    }

    /// A shard node that has followed the beacon to `beacon_height`, on the genesis of
    /// shard 0 of a 1-shard network with epochs of 10 beacon heights (the shard is in its
    /// epoch 0: a height of 10 or more is past it).
    fn shard_node_following(beacon_height: u64) -> (NodeState<trellis_node_state::MemKv>, Block) {
        use trellis_node_api::shard::{GenesisValidator, ShardingGenesis, ShardingMode};
        let seat = |seed: u64| GenesisValidator {
            node_key: to_hex(test_key(seed).public_key().as_ref()),
            shard: 0,
            p2p_address: "127.0.98.1:9000".into(),
            rpc_address: "127.0.98.1:8545".into(),
            member: None,
        };
        let sharding = ShardingGenesis {
            mode: ShardingMode::Public,
            admin_key: to_hex(test_key(99).public_key().as_ref()),
            max_shards: 2,
            shard_count: 1,
            beacon: (300..304).map(seat).collect(),
            validators: (100..104).map(seat).collect(),
        };
        let mut beacon = BeaconState::genesis(
            trellis_node_beacon::BeaconGenesis::from_contract("c", 10, &[], &sharding).unwrap(),
        )
        .unwrap();
        // Followed as the follower does: every beacon block ends, epochs start at 10, 20…
        for height in 1..=beacon_height {
            beacon.end_of_block(height, &[height as u8; 32]);
        }
        let place = ShardPlace {
            committee: Committee::Shard(0),
            tables: (0..=255u8).collect(),
            beacon_height: 0,
        };
        let mut state = NodeState::open_in(
            trellis_node_state::MemKv::default(),
            "c",
            &[(test_key(1).public_key(), 10)],
            10,
            Some(place),
        )
        .unwrap()
        .with_beacon(beacon)
        .unwrap();
        state.shard.as_mut().unwrap().beacon_height = beacon_height;
        let genesis = state.block(0).unwrap().unwrap();
        (state, genesis)
    }

    /// A shard block at `height` on `parent` with `header`, carrying nothing.
    fn shard_block(parent: &Block, height: u64, header: ShardHeader) -> Block {
        Block::new(parent.digest(), height, 0, height, 0, vec![]).with_sharding(Sharding {
            header,
            credits: vec![],
            system: vec![],
        })
    }

    /// Real: the proposer's header rule on a `NodeState` (MemKv ledger, beacon state from
    /// a real genesis) with block 1 executed by the ledger. A shard whose followed beacon is
    /// 3 epochs ahead (height 35, epochs of 10) used to name 35 in every block: each was
    /// an empty epoch-end block, so no transaction got in until it caught up. Now the
    /// epoch's first block is ordinary (it may carry transactions) and the epoch-end block
    /// names at most the next epoch's last height (19), so the next epoch starts on a floor
    /// of its own where an ordinary block can follow.
    #[test]
    fn a_shard_lagging_the_beacon_builds_an_ordinary_block_in_every_epoch() {
        let (mut state, genesis) = shard_node_following(35);
        assert!(crate::epoch_switch::behind(&state));
        // The epoch's first block names its parent's (the floor's) beacon height: it does
        // not end the epoch, so `build` fills it from the pool.
        let header = next_shard_header(&state, &genesis, true).unwrap().unwrap();
        assert_eq!((header.beacon_height, header.state_height), (0, 0));
        assert!(!crate::epoch_switch::would_end(
            &state,
            header.beacon_height
        ));
        let first = shard_block(&genesis, 1, header);
        assert!(!state.ends(0, &first));

        // Once it is finalized, the epoch-end block names the last height of epoch 1, not
        // the followed 35 (which would end epoch 1 too, and 2).
        state.ledger.apply_block(1, &[]).unwrap();
        let header = next_shard_header(&state, &first, true).unwrap().unwrap();
        assert_eq!((header.beacon_height, header.state_height), (19, 1));
        let ending = shard_block(&first, 2, header);
        assert!(state.ends(0, &ending));
        // Executing it switches the shard to epoch 1 on that floor (as `execute` does), and
        // epoch 1's first block is ordinary too: it names 19, of epoch 1 (a floor naming
        // the followed 35 would have made every block of epoch 1 end it at once).
        let mut extra = WriteBatch::default();
        let (next, kept) = crate::epoch_switch::on_execute(&state, &ending, &mut extra)
            .unwrap()
            .expect("the block ends epoch 0");
        state.ledger.apply_block_with(2, &[], extra).unwrap();
        crate::epoch_switch::enter(&mut state, next, &kept).unwrap();
        assert_eq!(state.consensus_epoch(), 1);
        let header = next_shard_header(&state, &ending, true).unwrap().unwrap();
        assert_eq!((header.beacon_height, header.state_height), (19, 2));
        assert!(!crate::epoch_switch::would_end(
            &state,
            header.beacon_height
        ));

        // A shard only one epoch behind names the followed height itself.
        let (mut state, genesis) = shard_node_following(12);
        let header = next_shard_header(&state, &genesis, true).unwrap().unwrap();
        let first = shard_block(&genesis, 1, header);
        state.ledger.apply_block(1, &[]).unwrap();
        let header = next_shard_header(&state, &first, true).unwrap().unwrap();
        assert_eq!(header.beacon_height, 12);
    }

    #[test]
    fn the_epoch_end_block_is_built_on_a_finalized_parent_only() {
        // The beacon moved on to epoch 1; the shard is still in its epoch 0, whose first
        // block (on the floor) is ordinary and finalized.
        let (mut state, genesis) = shard_node_following(12);
        assert_eq!(state.consensus_epoch(), 0);
        let header = next_shard_header(&state, &genesis, true).unwrap().unwrap();
        let first = shard_block(&genesis, 1, header);
        state.ledger.apply_block(1, &[]).unwrap();
        // On the finalized parent: the epoch-end block (it names the followed beacon
        // height and state height = parent).
        let header = next_shard_header(&state, &first, true).unwrap().unwrap();
        assert_eq!((header.beacon_height, header.state_height), (12, 1));
        let ending = shard_block(&first, 2, header);
        assert!(state.ends(0, &ending));

        // On a parent that is notarized but not finalized yet, the proposer of the next
        // view waits: its finalization normally follows within moments.
        let parent = shard_block(
            &first,
            2,
            ShardHeader {
                committee: Committee::Shard(0),
                beacon_height: 7,
                state_height: 1,
                roots: state.owned_roots(),
            },
        );
        assert!(!state.ends(0, &parent));
        let wait = next_shard_header(&state, &parent, true).unwrap_err();
        assert!(
            wait.contains("waits until its parent 2 is finalized"),
            "{wait}"
        );
        // Once a view passed without a block, its finalize votes may be lost for good
        // (only a finalized child finalizes it): waiting would stall the shard forever.
        // The proposer builds an ordinary block of the epoch, naming the parent's beacon
        // height; its finalization finalizes the parent.
        let header = next_shard_header(&state, &parent, false)
            .expect("a proposer after a nullified view must not wait")
            .unwrap();
        assert_eq!((header.beacon_height, header.state_height), (7, 1));
        let child = shard_block(&parent, 3, header);
        assert!(!state.ends(0, &child));
    }

    #[test]
    fn proposals_wait_three_times_the_execution_time_within_bounds() {
        let ms = Duration::from_millis;
        let (min, max) = (ms(200), ms(600));
        assert_eq!(block_interval(min, max, Duration::ZERO), min);
        assert_eq!(block_interval(min, max, ms(50)), min);
        assert_eq!(block_interval(min, max, ms(100)), ms(300));
        assert_eq!(block_interval(min, max, ms(190)), ms(570));
        assert_eq!(block_interval(min, max, ms(5_000)), max);
        // A maximum below the minimum (a misconfiguration) never shortens the minimum.
        assert_eq!(block_interval(ms(200), ms(100), ms(500)), ms(200));
        assert_eq!(block_interval(min, max, Duration::MAX), max);
    }

    #[test]
    fn execution_time_follows_blocks_smoothly() {
        let ms = Duration::from_millis;
        assert_eq!(smoothed(Duration::ZERO, ms(400)), ms(100));
        assert_eq!(smoothed(ms(100), ms(100)), ms(100));
        // One slow block moves the figure a quarter of the way.
        assert_eq!(smoothed(ms(100), ms(500)), ms(200));
        let mut t = Duration::ZERO;
        for _ in 0..40 {
            t = smoothed(t, ms(80));
        }
        assert!(t > ms(79) && t <= ms(80), "{t:?}");
        // Saturates instead of overflowing.
        assert_eq!(smoothed(Duration::MAX, Duration::MAX), Duration::MAX / 4);
    }

    #[test]
    fn node_state_opens_with_genesis_block() {
        let key = test_key(1);
        let state = NodeState::open(
            trellis_node_state::MemKv::default(),
            "c",
            &[(key.public_key(), 10)],
            10,
        )
        .unwrap();
        assert_eq!(state.finalized_height(), 0);
        assert_eq!(state.finalized_digest, Block::genesis("c").digest());
        assert_eq!(state.block(0).unwrap().unwrap(), Block::genesis("c"));
    }

    /// Real: blocks written to a `MemKv` store the way `persist` and `execute` write them:
    /// a block persisted before the vote and then finalized is read through its digest;
    /// a block stored whole (backfilled, or by an earlier version) is read as before; a
    /// pointer to a missing block is a clear error.
    #[test]
    fn finalized_blocks_are_read_whole_or_through_their_persisted_copy() {
        let kv = trellis_node_state::MemKv::default();
        let genesis = Block::genesis("c");
        let persisted = Block::new(genesis.digest(), 1, 0, 1, 0, vec![]);
        let whole = Block::new(persisted.digest(), 2, 0, 2, 0, vec![]);
        let mut batch = WriteBatch::default();
        batch.put(
            Space::Meta,
            key_pending(&persisted.digest()),
            persisted.encode().to_vec(),
        );
        batch.put(Space::Meta, key_block_at(1), persisted.digest().0.to_vec());
        batch.put(Space::Meta, key_block(2), whole.encode().to_vec());
        batch.put(Space::Meta, key_block_at(3), [7u8; 32].to_vec());
        batch.put(Space::Meta, key_block_at(4), vec![1, 2, 3]);
        kv.commit(batch).unwrap();
        assert_eq!(read_block(&kv, 1).unwrap(), Some(persisted));
        assert_eq!(read_block(&kv, 2).unwrap(), Some(whole));
        assert!(
            read_block(&kv, 3)
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
        assert!(read_block(&kv, 4).is_err());
        assert_eq!(read_block(&kv, 5).unwrap(), None);
    }
}
