//! The stored form of [`BeaconState`]: versioned JSON (keys as hex), checked in full when
//! read back, so a corrupt or hand-edited store is an error, never a wrong state.

use crate::{
    BeaconError, BeaconState, EpochRecord, Mode, PendingCount, STATE_VERSION, Seat, Validator, hex,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use trellis_node_types::{PublicKey, TABLES, from_hex, public_key_from_hex, to_hex};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSeat {
    node_key: String,
    p2p_address: String,
    rpc_address: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredValidator {
    node_key: String,
    shard: u16,
    p2p_address: String,
    rpc_address: String,
    #[serde(default)]
    member: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredPending {
    count: u16,
    load: Vec<u64>,
    height: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord {
    from_epoch: u64,
    tables: Vec<u16>,
    committees: Vec<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    chain_id: String,
    mode: Mode,
    admin_key: String,
    epoch_length: u64,
    max_shards: u16,
    epoch: u64,
    shard_count: u16,
    tables: Vec<u16>,
    committees: Vec<Vec<StoredSeat>>,
    beacon: Vec<StoredSeat>,
    validators: Vec<StoredValidator>,
    members: BTreeMap<String, String>,
    sequences: BTreeMap<String, u64>,
    pending: Option<StoredPending>,
    load: Vec<u64>,
    seed: String,
    resharding_epoch: Option<u64>,
    history: Vec<StoredRecord>,
}

fn seat(s: &Seat) -> StoredSeat {
    StoredSeat {
        node_key: hex(&s.node_key),
        p2p_address: s.p2p_address.clone(),
        rpc_address: s.rpc_address.clone(),
    }
}

fn corrupt(what: impl Into<String>) -> BeaconError {
    BeaconError::Corrupt(what.into())
}

fn key(s: &str) -> Result<PublicKey, BeaconError> {
    public_key_from_hex(s).ok_or_else(|| corrupt(format!("{s:?} is not an ed25519 key")))
}

fn table_map(v: &[u16]) -> Result<[u16; TABLES], BeaconError> {
    <[u16; TABLES]>::try_from(v)
        .map_err(|_| corrupt(format!("a table map has {} entries, not {TABLES}", v.len())))
}

fn unseat(s: &StoredSeat) -> Result<Seat, BeaconError> {
    Ok(Seat {
        node_key: key(&s.node_key)?,
        p2p_address: s.p2p_address.clone(),
        rpc_address: s.rpc_address.clone(),
    })
}

impl BeaconState {
    /// The state's stored form (versioned JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        let stored = Stored {
            version: STATE_VERSION,
            chain_id: self.chain_id.clone(),
            mode: self.mode,
            admin_key: hex(&self.admin_key),
            epoch_length: self.epoch_length,
            max_shards: self.max_shards,
            epoch: self.epoch,
            shard_count: self.shard_count,
            tables: self.tables.to_vec(),
            committees: self
                .committees
                .iter()
                .map(|c| c.iter().map(seat).collect())
                .collect(),
            beacon: self.beacon.iter().map(seat).collect(),
            validators: self
                .validators
                .values()
                .map(|v| StoredValidator {
                    node_key: hex(&v.node_key),
                    shard: v.shard,
                    p2p_address: v.p2p_address.clone(),
                    rpc_address: v.rpc_address.clone(),
                    member: v.member.clone(),
                })
                .collect(),
            members: self
                .members
                .iter()
                .map(|(n, k)| (n.clone(), hex(k)))
                .collect(),
            sequences: self.sequences.iter().map(|(k, s)| (hex(k), *s)).collect(),
            pending: self.pending.as_ref().map(|p| StoredPending {
                count: p.count,
                load: p.load.clone(),
                height: p.height,
            }),
            load: self.load.to_vec(),
            seed: to_hex(&self.seed),
            resharding_epoch: self.resharding_epoch,
            history: self
                .history
                .iter()
                .map(|r| StoredRecord {
                    from_epoch: r.from_epoch,
                    tables: r.tables.to_vec(),
                    committees: r
                        .committees
                        .iter()
                        .map(|c| c.iter().map(hex).collect())
                        .collect(),
                })
                .collect(),
        };
        // Plain data of strings, numbers and maps with string keys: serializing it
        // cannot fail; an empty vector would be refused by `from_bytes` anyway.
        serde_json::to_vec(&stored).unwrap_or_default()
    }

    /// Reads [`Self::to_bytes`] output back, checking every invariant.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BeaconError> {
        let s: Stored =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not beacon JSON: {e}")))?;
        if s.version != STATE_VERSION {
            return Err(corrupt(format!(
                "version {} is not {STATE_VERSION}",
                s.version
            )));
        }
        let seed = from_hex(&s.seed)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| corrupt("seed is not 32 bytes of hex"))?;
        let mut validators = BTreeMap::new();
        for v in &s.validators {
            let node_key = key(&v.node_key)?;
            let validator = Validator {
                node_key: node_key.clone(),
                shard: v.shard,
                p2p_address: v.p2p_address.clone(),
                rpc_address: v.rpc_address.clone(),
                member: v.member.clone(),
            };
            if validators.insert(node_key, validator).is_some() {
                return Err(corrupt(format!("validator {} twice", v.node_key)));
            }
        }
        let pending = match s.pending {
            Some(p) => {
                if !p.load.is_empty() && p.load.len() != TABLES {
                    return Err(corrupt("pending load hint is not 256 entries"));
                }
                Some(PendingCount {
                    count: p.count,
                    load: p.load,
                    height: p.height,
                })
            }
            None => None,
        };
        let mut history = Vec::with_capacity(s.history.len());
        for r in &s.history {
            history.push(EpochRecord {
                from_epoch: r.from_epoch,
                tables: table_map(&r.tables)?,
                committees: r
                    .committees
                    .iter()
                    .map(|c| c.iter().map(|k| key(k)).collect())
                    .collect::<Result<_, _>>()?,
            });
        }
        let state = BeaconState {
            chain_id: s.chain_id,
            mode: s.mode,
            admin_key: key(&s.admin_key)?,
            epoch_length: s.epoch_length,
            max_shards: s.max_shards,
            epoch: s.epoch,
            shard_count: s.shard_count,
            tables: table_map(&s.tables)?,
            committees: s
                .committees
                .iter()
                .map(|c| c.iter().map(unseat).collect())
                .collect::<Result<_, _>>()?,
            beacon: s.beacon.iter().map(unseat).collect::<Result<_, _>>()?,
            validators,
            members: s
                .members
                .iter()
                .map(|(n, k)| Ok((n.clone(), key(k)?)))
                .collect::<Result<_, BeaconError>>()?,
            sequences: s
                .sequences
                .iter()
                .map(|(k, n)| Ok((key(k)?, *n)))
                .collect::<Result<_, BeaconError>>()?,
            pending,
            load: table_load(&s.load)?,
            seed,
            resharding_epoch: s.resharding_epoch,
            history,
        };
        state.validate().map_err(BeaconError::Corrupt)?;
        if state.committees.len() != usize::from(state.shard_count)
            || state.committees.iter().any(Vec::is_empty)
        {
            return Err(corrupt("committees do not match the shard count"));
        }
        let current_ok = state.history.last().is_some_and(|r| {
            r.from_epoch <= state.epoch
                && r.tables == state.tables
                && r.committees.len() == state.committees.len()
        });
        if !current_ok
            || state
                .history
                .windows(2)
                .any(|w| w[0].from_epoch >= w[1].from_epoch)
        {
            return Err(corrupt("epoch history is inconsistent"));
        }
        Ok(state)
    }
}

fn table_load(v: &[u64]) -> Result<[u64; TABLES], BeaconError> {
    <[u64; TABLES]>::try_from(v)
        .map_err(|_| corrupt(format!("load has {} entries, not {TABLES}", v.len())))
}
