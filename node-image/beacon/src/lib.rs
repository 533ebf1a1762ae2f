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
use trellis_node_api::GenesisMember;
use trellis_node_api::shard::{ShardInfo, ShardMapInfo, ShardingGenesis, ShardingMode};
use trellis_node_types::system::{ANY_SHARD, MAX_ADDRESS_LEN, MAX_SHARDS, SystemAction};
use trellis_node_types::{
    MAX_CHAIN_ID_LEN, PublicKey, SystemError, SystemTx, TABLES, public_key_from_hex, to_hex,
};

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

/// The initial beacon state, from the genesis file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BeaconGenesis {
    pub chain_id: String,
    pub mode: Mode,
    pub admin_key: PublicKey,
    pub epoch_length: u64,
    pub max_shards: u16,
    pub shard_count: u16,
    pub beacon_validators: Vec<Seat>,
    pub validators: Vec<Validator>,
    /// Consortium mode: the organisations (ignored in public mode).
    pub members: Vec<Member>,
}

/// A beacon state that cannot be built or restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BeaconError {
    #[error("invalid sharding genesis: {0}")]
    Genesis(String),
    #[error("stored beacon state is corrupt: {0}")]
    Corrupt(String),
}

impl BeaconGenesis {
    /// Reads the genesis file's parts: chain id, epoch length, the consortium's members
    /// (their admin keys register validators) and the `sharding` section.
    pub fn from_contract(
        chain_id: &str,
        epoch_length: u64,
        members: &[GenesisMember],
        sharding: &ShardingGenesis,
    ) -> Result<Self, BeaconError> {
        sharding
            .check()
            .map_err(|e| BeaconError::Genesis(e.to_string()))?;
        let key = |hex: &str, what: &str| {
            public_key_from_hex(hex).ok_or_else(|| {
                BeaconError::Genesis(format!("{what} {hex:?} is not an ed25519 key"))
            })
        };
        let beacon_validators = sharding
            .beacon
            .iter()
            .map(|v| {
                Ok(Seat {
                    node_key: key(&v.node_key, "beacon node key")?,
                    p2p_address: v.p2p_address.clone(),
                    rpc_address: v.rpc_address.clone(),
                })
            })
            .collect::<Result<_, BeaconError>>()?;
        let validators = sharding
            .validators
            .iter()
            .map(|v| {
                Ok(Validator {
                    node_key: key(&v.node_key, "validator node key")?,
                    shard: v.shard,
                    p2p_address: v.p2p_address.clone(),
                    rpc_address: v.rpc_address.clone(),
                    member: v.member.clone(),
                })
            })
            .collect::<Result<_, BeaconError>>()?;
        let members = members
            .iter()
            .map(|m| {
                Ok(Member {
                    name: m.name.clone(),
                    admin_key: key(&m.admin_key, "member admin key")?,
                })
            })
            .collect::<Result<_, BeaconError>>()?;
        Ok(Self {
            chain_id: chain_id.to_string(),
            mode: sharding.mode.into(),
            admin_key: key(&sharding.admin_key, "sharding.admin_key")?,
            epoch_length,
            max_shards: sharding.max_shards,
            shard_count: sharding.shard_count,
            beacon_validators,
            validators,
            members,
        })
    }
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

fn check_address(what: &'static str, address: &str) -> Result<(), SystemRefusal> {
    let valid = address.len() <= MAX_ADDRESS_LEN
        && !address.chars().any(|c| c.is_control() || c.is_whitespace())
        && address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
    if valid {
        Ok(())
    } else {
        Err(SystemRefusal::BadAddress {
            what,
            address: address.to_string(),
        })
    }
}

impl BeaconState {
    /// The state at genesis (epoch 0, the genesis map, committees from the registry).
    pub fn genesis(g: BeaconGenesis) -> Result<Self, BeaconError> {
        let bad = |m: String| Err(BeaconError::Genesis(m));
        if g.chain_id.is_empty() || g.chain_id.len() > MAX_CHAIN_ID_LEN {
            return bad(format!("chain id must be 1..={MAX_CHAIN_ID_LEN} bytes"));
        }
        let seed = Sha256::hash(&[SEED_NAMESPACE, g.chain_id.as_bytes()]).0;
        let mut state = Self {
            chain_id: g.chain_id,
            mode: g.mode,
            admin_key: g.admin_key,
            epoch_length: g.epoch_length,
            max_shards: g.max_shards,
            epoch: 0,
            shard_count: g.shard_count,
            tables: genesis_map(g.shard_count),
            committees: Vec::new(),
            beacon: g.beacon_validators,
            validators: BTreeMap::new(),
            members: BTreeMap::new(),
            sequences: BTreeMap::new(),
            pending: None,
            load: [0; TABLES],
            seed,
            resharding_epoch: None,
            history: Vec::new(),
        };
        if g.mode == Mode::Consortium {
            for m in g.members {
                if state.members.values().any(|k| *k == m.admin_key) {
                    return bad(format!("admin key of member {:?} is used twice", m.name));
                }
                if state.members.insert(m.name.clone(), m.admin_key).is_some() {
                    return bad(format!("member {:?} twice", m.name));
                }
            }
        }
        for v in g.validators {
            if state.validators.contains_key(&v.node_key) {
                return bad(format!("validator {} twice", hex(&v.node_key)));
            }
            state.validators.insert(v.node_key.clone(), v);
        }
        state.validate().map_err(BeaconError::Genesis)?;
        let keys = committee::assign(
            state.mode,
            state.shard_count,
            &state.validators,
            &[],
            &state.seed,
            &state.member_names(),
        );
        if let Some(s) = keys.iter().position(Vec::is_empty) {
            return bad(format!("shard {s} has no validators"));
        }
        state.committees = state.seats(&keys, &[]);
        state.history.push(EpochRecord {
            from_epoch: 0,
            tables: state.tables,
            committees: keys,
        });
        Ok(state)
    }

    /// Checks every invariant of the state (genesis and restored bytes alike).
    fn validate(&self) -> Result<(), String> {
        if self.chain_id.is_empty() || self.chain_id.len() > MAX_CHAIN_ID_LEN {
            return Err(format!("chain id must be 1..={MAX_CHAIN_ID_LEN} bytes"));
        }
        if self.epoch_length == 0 {
            return Err("epoch_length is 0".into());
        }
        if self.max_shards == 0 || self.max_shards > MAX_SHARDS {
            return Err(format!(
                "max_shards {} is outside 1..={MAX_SHARDS}",
                self.max_shards
            ));
        }
        if self.shard_count == 0 || self.shard_count > self.max_shards {
            return Err(format!(
                "shard_count {} is outside 1..={} (max_shards)",
                self.shard_count, self.max_shards
            ));
        }
        if self.tables.iter().any(|&o| o >= self.shard_count) {
            return Err("a table is owned by a shard beyond shard_count".into());
        }
        if self.beacon.is_empty() {
            return Err("the beacon has no validators".into());
        }
        if self.validators.len() > MAX_VALIDATORS {
            return Err(format!("more than {MAX_VALIDATORS} validators"));
        }
        let mut seen = BTreeSet::new();
        for s in &self.beacon {
            if !seen.insert(&s.node_key) {
                return Err(format!("beacon validator {} twice", hex(&s.node_key)));
            }
            check_address("p2p address", &s.p2p_address).map_err(|e| e.to_string())?;
            check_address("rpc address", &s.rpc_address).map_err(|e| e.to_string())?;
        }
        for (key, v) in &self.validators {
            if *key != v.node_key {
                return Err("registry key mismatch".into());
            }
            if seen.contains(key) {
                return Err(format!(
                    "node key {} is both a beacon and a shard validator",
                    hex(key)
                ));
            }
            if v.shard != ANY_SHARD && v.shard >= self.max_shards {
                return Err(format!(
                    "validator {} is for shard {}, beyond max_shards {}",
                    hex(key),
                    v.shard,
                    self.max_shards
                ));
            }
            check_address("p2p address", &v.p2p_address).map_err(|e| e.to_string())?;
            check_address("rpc address", &v.rpc_address).map_err(|e| e.to_string())?;
            match (self.mode, &v.member) {
                (Mode::Consortium, Some(m)) if !self.members.contains_key(m) => {
                    return Err(format!(
                        "validator {} belongs to unknown member {m:?}",
                        hex(key)
                    ));
                }
                (Mode::Consortium, None) => {
                    return Err(format!("validator {} names no member", hex(key)));
                }
                _ => {}
            }
        }
        if let Some(p) = &self.pending
            && (p.count == 0 || p.count > self.max_shards)
        {
            return Err(format!("pending shard count {} is out of range", p.count));
        }
        Ok(())
    }

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

    /// Shards of `count` that `registry` would leave without validators next epoch.
    fn empty_shards(&self, registry: &BTreeMap<PublicKey, Validator>, count: u16) -> Vec<u16> {
        committee::assign(
            self.mode,
            count,
            registry,
            &self.current_keys(),
            &self.seed,
            &self.member_names(),
        )
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_empty())
        // < count ≤ 256.
        .map(|(s, _)| s as u16)
        .collect()
    }

    /// Refuses a registry change that would leave a shard (of this epoch's count or the
    /// pending one) without validators that it has now.
    fn keeps_shards_staffed(
        &self,
        registry: &BTreeMap<PublicKey, Validator>,
    ) -> Result<(), SystemRefusal> {
        let counts = [
            Some(self.shard_count),
            self.pending.as_ref().map(|p| p.count),
        ];
        for count in counts.into_iter().flatten() {
            let before = self.empty_shards(&self.validators, count);
            if let Some(&shard) = self
                .empty_shards(registry, count)
                .iter()
                .find(|s| !before.contains(s))
            {
                return Err(SystemRefusal::EmptyShard { shard });
            }
        }
        Ok(())
    }

    /// The name of the member whose admin key is `key`.
    fn member_of(&self, key: &PublicKey) -> Option<&String> {
        self.members
            .iter()
            .find(|(_, admin)| *admin == key)
            .map(|(name, _)| name)
    }

    /// Chain, signature, signer and sequence: what must hold before a transaction may
    /// touch state at all.
    fn authorize(&self, tx: &SystemTx) -> Result<(), SystemRefusal> {
        tx.check_stateless(&self.chain_id).map_err(|e| match e {
            SystemError::WrongChain { expected, got } => {
                SystemRefusal::WrongChain { expected, got }
            }
            SystemError::BadSignature(k) => SystemRefusal::BadSignature(k),
            // check_stateless only reports the two above.
            other => SystemRefusal::BadSignature(other.to_string()),
        })?;
        let signer = &tx.signer;
        let action = tx.payload.action.name();
        match &tx.payload.action {
            SystemAction::SetShardCount { .. } => {
                if *signer != self.admin_key {
                    return Err(SystemRefusal::WrongSigner {
                        action,
                        required: format!("the network admin key {}", hex(&self.admin_key)),
                        signer: hex(signer),
                    });
                }
            }
            SystemAction::RegisterValidator { node_key, .. }
            | SystemAction::DeregisterValidator { node_key } => match self.mode {
                Mode::Public => {
                    if signer != node_key && *signer != self.admin_key {
                        return Err(SystemRefusal::WrongSigner {
                            action,
                            required: format!(
                                "the node key {} itself or the network admin key {}",
                                hex(node_key),
                                hex(&self.admin_key)
                            ),
                            signer: hex(signer),
                        });
                    }
                }
                Mode::Consortium => {
                    let Some(member) = self.member_of(signer) else {
                        return Err(SystemRefusal::NotMember(hex(signer)));
                    };
                    if let Some(owner) = self
                        .validators
                        .get(node_key)
                        .and_then(|v| v.member.as_ref())
                        && owner != member
                    {
                        return Err(SystemRefusal::NotOwner {
                            key: hex(node_key),
                            owner: owner.clone(),
                        });
                    }
                }
            },
        }
        let expected = self.next_sequence(signer);
        let got = tx.payload.sequence;
        if got < expected {
            return Err(SystemRefusal::StaleSequence {
                signer: hex(signer),
                got,
                expected,
            });
        }
        if got > expected {
            return Err(SystemRefusal::FutureSequence {
                signer: hex(signer),
                got,
                expected,
            });
        }
        Ok(())
    }

    /// What the action needs of the state; returns the registry after it, if it
    /// changes the registry.
    fn check_action(
        &self,
        tx: &SystemTx,
    ) -> Result<Option<BTreeMap<PublicKey, Validator>>, SystemRefusal> {
        match &tx.payload.action {
            SystemAction::SetShardCount { count, .. } => {
                let count = *count;
                if count == 0 || count > self.max_shards {
                    return Err(SystemRefusal::CountOutOfRange {
                        count,
                        max_shards: self.max_shards,
                    });
                }
                if let Some(p) = &self.pending {
                    return Err(SystemRefusal::ChangePending {
                        count: p.count,
                        height: self.next_epoch_height(),
                    });
                }
                if self.resharding_epoch == Some(self.epoch) {
                    return Err(SystemRefusal::Resharding {
                        epoch: self.epoch,
                        until: self.next_epoch_height(),
                    });
                }
                if count == self.shard_count {
                    return Err(SystemRefusal::SameCount(count));
                }
                if let Some(&shard) = self.empty_shards(&self.validators, count).first() {
                    return Err(SystemRefusal::EmptyShard { shard });
                }
                Ok(None)
            }
            SystemAction::RegisterValidator {
                shard,
                node_key,
                p2p_address,
                rpc_address,
            } => {
                if *shard != ANY_SHARD && *shard >= self.max_shards {
                    return Err(SystemRefusal::ShardOutOfRange {
                        shard: *shard,
                        max_shards: self.max_shards,
                    });
                }
                check_address("p2p address", p2p_address)?;
                check_address("rpc address", rpc_address)?;
                if self.beacon.iter().any(|s| s.node_key == *node_key) {
                    return Err(SystemRefusal::BeaconValidator(hex(node_key)));
                }
                let member = match self.mode {
                    Mode::Public => None,
                    Mode::Consortium => self.member_of(&tx.signer).cloned(),
                };
                let validator = Validator {
                    node_key: node_key.clone(),
                    shard: *shard,
                    p2p_address: p2p_address.clone(),
                    rpc_address: rpc_address.clone(),
                    member,
                };
                match self.validators.get(node_key) {
                    Some(v) if *v == validator => {
                        return Err(SystemRefusal::Unchanged(hex(node_key)));
                    }
                    None if self.validators.len() >= MAX_VALIDATORS => {
                        return Err(SystemRefusal::TooManyValidators {
                            max: MAX_VALIDATORS,
                        });
                    }
                    _ => {}
                }
                let mut registry = self.validators.clone();
                registry.insert(node_key.clone(), validator);
                self.keeps_shards_staffed(&registry)?;
                Ok(Some(registry))
            }
            SystemAction::DeregisterValidator { node_key } => {
                if !self.validators.contains_key(node_key) {
                    return Err(SystemRefusal::UnknownValidator(hex(node_key)));
                }
                let mut registry = self.validators.clone();
                registry.remove(node_key);
                self.keeps_shards_staffed(&registry)?;
                Ok(Some(registry))
            }
        }
    }

    /// Whether `tx` would execute successfully now (submission check).
    pub fn check(&self, tx: &SystemTx) -> Result<(), SystemRefusal> {
        self.authorize(tx)?;
        self.check_action(tx).map(|_| ())
    }

    /// Executes `tx` of the finalized beacon block at `height`. On a refusal with
    /// [`SystemRefusal::consumes_sequence`] the signer's sequence still moves on (the
    /// receipt records the failure); any other refusal changes nothing.
    pub fn execute(&mut self, tx: &SystemTx, height: u64) -> Result<(), SystemRefusal> {
        self.authorize(tx)?;
        let outcome = self.check_action(tx);
        let next = tx.payload.sequence.saturating_add(1);
        self.sequences.insert(tx.signer.clone(), next);
        match (outcome?, &tx.payload.action) {
            (Some(registry), _) => self.validators = registry,
            (None, SystemAction::SetShardCount { count, load }) => {
                self.pending = Some(PendingCount {
                    count: *count,
                    load: load.clone(),
                    height,
                });
            }
            (None, _) => {}
        }
        Ok(())
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

mod persist;

#[cfg(test)]
mod tests;
