//! Sharding in the contract: the genesis `sharding` section, the shard map and the system
//! transaction RPC (`trellis_getShardMap`, `trellis_submitSystem`, `trellis_getSystem`,
//! `trellis_getSystemSequence`). Described in `docs/sharding.md`.

use crate::{ContractError, TxState, is_hex_of_len};
use serde::{Deserialize, Serialize};

/// `shard` of a validator the beacon may place in any shard (see `docs/sharding.md`).
pub const ANY_SHARD: u16 = u16::MAX;
/// Most shards a network can have (one per table).
pub const MAX_SHARDS: u16 = 256;
/// Number of tables.
pub const TABLES: usize = 256;

/// How validators join a sharded network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardingMode {
    /// Open registration: a node registers itself (or the admin registers it).
    Public,
    /// Only admitted members' admin keys register validators (for their organisation).
    Consortium,
}

/// A validator named in the genesis `sharding` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisValidator {
    /// Hex ed25519 node key.
    pub node_key: String,
    /// Shard it validates, or [`ANY_SHARD`] to let the beacon place it; ignored for
    /// beacon validators.
    #[serde(default = "any_shard")]
    pub shard: u16,
    /// `host:port` of its p2p listener.
    pub p2p_address: String,
    /// `host:port` of its JSON-RPC listener.
    pub rpc_address: String,
    /// Consortium mode: the name of the member (genesis `members`) it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

fn any_shard() -> u16 {
    ANY_SHARD
}

/// The genesis file's `sharding` section: present only in sharded networks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardingGenesis {
    pub mode: ShardingMode,
    /// Hex ed25519 network admin key (signs `SetShardCount`; the operator holds it).
    pub admin_key: String,
    /// Upper bound of the shard count (`1..=256`).
    pub max_shards: u16,
    /// Shards at genesis (`1..=max_shards`).
    pub shard_count: u16,
    /// The beacon committee.
    pub beacon: Vec<GenesisValidator>,
    /// Shard validators; every shard below `shard_count` needs at least one.
    pub validators: Vec<GenesisValidator>,
}

impl ShardingGenesis {
    /// Structural checks (key validity is checked by the beacon).
    pub fn check(&self) -> Result<(), ContractError> {
        let invalid = |m: String| Err(ContractError::Invalid(m));
        if !is_hex_of_len(&self.admin_key, 32) {
            return invalid("sharding.admin_key is not a 32-byte hex key".into());
        }
        if self.max_shards == 0 || self.max_shards > MAX_SHARDS {
            return invalid(format!(
                "sharding.max_shards {} is outside 1..={MAX_SHARDS}",
                self.max_shards
            ));
        }
        if self.shard_count == 0 || self.shard_count > self.max_shards {
            return invalid(format!(
                "sharding.shard_count {} is outside 1..={} (max_shards)",
                self.shard_count, self.max_shards
            ));
        }
        if self.beacon.is_empty() {
            return invalid("sharding.beacon has no validators".into());
        }
        for v in self.beacon.iter().chain(&self.validators) {
            if !is_hex_of_len(&v.node_key, 32) {
                return invalid(format!(
                    "sharding validator {:?} has no 32-byte hex node key",
                    v.node_key
                ));
            }
        }
        Ok(())
    }
}

/// One shard in [`ShardMapInfo`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub shard: u16,
    /// Hex node keys of this epoch's committee, sorted.
    pub validators: Vec<String>,
    /// `host:port` of their JSON-RPC listeners, in the same order.
    pub rpc: Vec<String>,
}

/// `trellis_getShardMap`: the beacon state a node follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMapInfo {
    /// Current beacon epoch.
    pub epoch: u64,
    pub epoch_length: u64,
    /// Beacon height whose finalization ends this epoch (pending changes apply then).
    pub next_epoch_height: u64,
    /// Finalized beacon height the map was read at.
    pub beacon_height: u64,
    pub shard_count: u16,
    /// The shard count the next epoch will have, when a change is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_shard_count: Option<u16>,
    /// Owner shard of each table (256 entries).
    pub tables: Vec<u16>,
    /// This epoch's committees, one per shard.
    pub shards: Vec<ShardInfo>,
    #[serde(default)]
    pub max_shards: u16,
    /// True during the first epoch after a shard count change (tables being handed off);
    /// another `SetShardCount` is refused with [`crate::error_codes::RESHARDING`] then.
    #[serde(default)]
    pub resharding: bool,
    /// The beacon committee.
    #[serde(default)]
    pub beacon: Vec<ShardInfo>,
}

/// `trellis_submitSystem` params: the hex binary encoding of a system transaction
/// (`trellis_node_types::SystemTx::to_hex`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitSystemParams {
    pub tx: String,
}

/// `trellis_submitSystem` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitSystemResult {
    /// Hex SHA-256 of the encoded system transaction (query it with `trellis_getSystem`).
    pub hash: String,
    /// Hex key that signed it.
    pub signer: String,
    /// The signer's system sequence it used.
    pub sequence: u64,
}

/// `trellis_getSystem`: where a system transaction is (like `trellis_getTransaction`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemStatus {
    pub hash: String,
    pub state: TxState,
    /// Finalized beacon height, when committed.
    #[serde(default)]
    pub height: Option<u64>,
    /// Whether execution succeeded, when committed.
    #[serde(default)]
    pub success: Option<bool>,
    /// Why execution failed, when it did.
    #[serde(default)]
    pub error: Option<String>,
    /// First epoch with the change applied, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_epoch: Option<u64>,
}

/// `trellis_getSystemSequence` params.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemSequenceQuery {
    /// Hex ed25519 key that will sign.
    pub key: String,
}

/// `trellis_getSystemSequence` result: the sequence the key's next system transaction
/// must carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemSequence {
    pub key: String,
    pub sequence: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn genesis() -> ShardingGenesis {
        let v = |shard| GenesisValidator {
            node_key: KEY.into(),
            shard,
            p2p_address: "127.0.0.2:9000".into(),
            rpc_address: "127.0.0.2:8545".into(),
            member: None,
        };
        ShardingGenesis {
            mode: ShardingMode::Public,
            admin_key: KEY.into(),
            max_shards: 4,
            shard_count: 2,
            beacon: vec![v(ANY_SHARD)],
            validators: vec![v(0), v(1)],
        }
    }

    #[test]
    fn sharding_genesis_round_trips_and_checks() {
        let g = genesis();
        g.check().unwrap();
        let text = serde_json::to_string(&g).unwrap();
        assert!(text.contains("\"mode\":\"public\""));
        assert_eq!(serde_json::from_str::<ShardingGenesis>(&text).unwrap(), g);
        // `shard` defaults to "any".
        let v: GenesisValidator = serde_json::from_str(&format!(
            r#"{{"node_key":"{KEY}","p2p_address":"a:1","rpc_address":"b:2"}}"#
        ))
        .unwrap();
        assert_eq!(v.shard, ANY_SHARD);

        for (mutate, needle) in [
            (
                (|g: &mut ShardingGenesis| g.max_shards = 0) as fn(&mut ShardingGenesis),
                "max_shards 0",
            ),
            (|g| g.max_shards = 257, "max_shards 257"),
            (|g| g.shard_count = 5, "shard_count 5 is outside 1..=4"),
            (|g| g.shard_count = 0, "shard_count 0"),
            (|g| g.beacon.clear(), "beacon has no validators"),
            (|g| g.admin_key = "zz".into(), "admin_key"),
            (|g| g.validators[1].node_key = "ab".into(), "\"ab\""),
        ] {
            let mut bad = genesis();
            mutate(&mut bad);
            let err = bad.check().unwrap_err().to_string();
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn shard_map_serializes_per_the_contract() {
        let map = ShardMapInfo {
            epoch: 3,
            epoch_length: 100,
            next_epoch_height: 400,
            beacon_height: 350,
            shard_count: 2,
            pending_shard_count: None,
            tables: vec![0; TABLES],
            shards: vec![ShardInfo {
                shard: 0,
                validators: vec![KEY.into()],
                rpc: vec!["127.0.0.2:8545".into()],
            }],
            max_shards: 4,
            resharding: false,
            beacon: vec![],
        };
        let v = serde_json::to_value(&map).unwrap();
        assert!(v.get("pending_shard_count").is_none());
        assert_eq!(v["tables"].as_array().unwrap().len(), TABLES);
        assert_eq!(v["shards"][0]["rpc"][0], "127.0.0.2:8545");
        let back: ShardMapInfo = serde_json::from_value(v).unwrap();
        assert_eq!(back, map);
        let status = SystemStatus {
            hash: "ab".into(),
            state: TxState::Committed,
            height: Some(9),
            success: Some(false),
            error: Some("shard 2 would have no validators".into()),
            effective_epoch: None,
        };
        let v = serde_json::to_value(&status).unwrap();
        assert_eq!(v["state"], "committed");
        assert_eq!(serde_json::from_value::<SystemStatus>(v).unwrap(), status);
    }
}
