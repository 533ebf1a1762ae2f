//! The beacon state at genesis, and the invariants every state keeps (checked at genesis
//! and when a stored state is read back).

use crate::rules::check_address;
use crate::{
    BeaconError, BeaconState, EpochRecord, MAX_VALIDATORS, Member, Mode, SEED_NAMESPACE, Seat,
    Validator, committee, genesis_map, hex,
};
use commonware_cryptography::{Hasher, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use trellis_node_api::GenesisMember;
use trellis_node_api::shard::ShardingGenesis;
use trellis_node_types::system::{ANY_SHARD, MAX_SHARDS};
use trellis_node_types::{MAX_CHAIN_ID_LEN, PublicKey, TABLES, public_key_from_hex};

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
    pub(crate) fn validate(&self) -> Result<(), String> {
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
}
