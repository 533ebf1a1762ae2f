//! The network's genesis: one contract genesis file per network, written once.
//!
//! * **Public** networks are sharded: the genesis carries the `sharding` section
//!   (`trellis_node_api::shard::ShardingGenesis`) — the beacon StatefulSet's validators as
//!   `beacon`, each shard StatefulSet's validators as fixed-slot `validators` (a pod is
//!   bound to its shard's storage, Service and peers, so the beacon must never move it),
//!   addresses = the pods' stable DNS names, `max_shards` = `spec.shards.max`, and
//!   `admin_key` = the network admin key the operator keeps in a Secret (it signs
//!   `SetShardCount`). Every pod reads the same file and its role from its `node.toml`.
//! * **Consortium** networks run unsharded: one committee (shard 0) whose genesis
//!   members are its validators, each speaking with its organisation's admin key, and no
//!   beacon. `trellis-node` runs consortium governance (member admission through
//!   `ChainMember`) only in unsharded networks, and the beacon role only in sharded ones;
//!   a beacon StatefulSet would crash-loop and shards beyond 0 could never start, so the
//!   operator provisions neither and refuses a Consortium spec with more than one shard
//!   ([`unsupported`]).
//!
//! Genesis is immutable once the network started: shards added later are not written
//! into it. Their validators are registered through the beacon (`RegisterValidator`, see
//! [`crate::chain::ChainClient::scale`]) and their pods run `kind = "shard", shard = N`
//! for N at or above the genesis shard count, waiting for the beacon to create the shard.
//!
//! A genesis the node would refuse is a build error: it is checked with the node's own
//! [`Genesis::check`] and, when sharded, [`BeaconState::genesis`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use trellis_crd::topology::{Committee, CommitteeRole, Topology};
use trellis_crd::validate::{InvalidSpec, SpecViolation};
use trellis_crd::{ChainNetworkSpec, NetworkMode};
use trellis_node_api::shard::{GenesisValidator, ShardingGenesis, ShardingMode};
use trellis_node_api::{CONTRACT_VERSION, Genesis, GenesisBalance, GenesisMember};
use trellis_node_beacon::{BeaconGenesis, BeaconState};

use crate::build::{self, BuildError, BuildInput};
use crate::labels;

/// The genesis ConfigMap's only entry: the network's contract genesis file.
pub const ENTRY: &str = "genesis.json";

/// Whether the operator runs a beacon committee for networks of `mode` (see the module
/// documentation).
pub fn runs_beacon(mode: NetworkMode) -> bool {
    mode == NetworkMode::Public
}

/// The committees the operator provisions: the planned ones, without the beacon where
/// the network runs none.
pub fn provisioned(mut topology: Topology) -> Topology {
    if !runs_beacon(topology.genesis.mode) {
        topology
            .committees
            .retain(|c| c.role != CommitteeRole::Beacon);
    }
    topology
}

/// What the operator cannot run although the CRD accepts it: a Consortium network with
/// more than one shard (or an autoscaler that would ask for one).
pub fn unsupported(spec: &ChainNetworkSpec) -> Option<InvalidSpec> {
    if runs_beacon(spec.mode) {
        return None;
    }
    let mut violations = Vec::new();
    if spec.shards.count != 1 {
        violations.push(SpecViolation {
            field: "spec.shards.count".to_owned(),
            message: format!(
                "a Consortium network runs one shard (trellis-node runs consortium governance \
                 only in unsharded networks), got {}",
                spec.shards.count
            ),
        });
    }
    if spec.autoscaling.as_ref().is_some_and(|a| a.enabled) {
        violations.push(SpecViolation {
            field: "spec.autoscaling.enabled".to_owned(),
            message: "a Consortium network runs one shard; it cannot be autoscaled".to_owned(),
        });
    }
    (!violations.is_empty()).then_some(InvalidSpec(violations))
}

/// The network's contract genesis for `input.topology` (its shards are the genesis
/// shards), checked as the node checks it.
pub fn network_genesis(input: &BuildInput<'_>) -> Result<Genesis, BuildError> {
    let topology = input.topology;
    let balances = input
        .network
        .spec
        .genesis_balances
        .iter()
        .map(|a| GenesisBalance {
            account: a.account.to_ascii_lowercase(),
            // validate() refuses amounts below 1.
            amount: u64::try_from(a.amount).unwrap_or(0),
        })
        .collect();
    let genesis = if runs_beacon(topology.genesis.mode) {
        let beacon = topology
            .beacon()
            .ok_or_else(|| BuildError::Render("genesis", "the plan has no beacon".into()))?;
        let mut validators = Vec::new();
        for committee in topology.shards() {
            let CommitteeRole::Shard(shard) = committee.role else {
                continue;
            };
            validators.extend(seats(input, committee, shard)?);
        }
        Genesis {
            contract_version: CONTRACT_VERSION,
            chain_id: topology.genesis.chain_id.clone(),
            epoch_length: topology.genesis.epoch_length,
            // Governance members: the beacon validators, speaking with the network admin
            // key (a public network's only governance key is the operator's).
            members: members(input, beacon)?,
            balances,
            sharding: Some(ShardingGenesis {
                mode: ShardingMode::Public,
                admin_key: input.admin_public_key.to_owned(),
                max_shards: u16::try_from(input.network.spec.shards.max).unwrap_or(0),
                shard_count: u16::try_from(topology.shards().count()).unwrap_or(0),
                beacon: seats(input, beacon, trellis_node_api::shard::ANY_SHARD)?,
                validators,
            }),
        }
    } else {
        let shard = topology
            .shards()
            .next()
            .ok_or_else(|| BuildError::Render("genesis", "the plan has no shard".into()))?;
        Genesis {
            contract_version: CONTRACT_VERSION,
            chain_id: topology.genesis.chain_id.clone(),
            epoch_length: topology.genesis.epoch_length,
            members: members(input, shard)?,
            balances,
            sharding: None,
        }
    };
    check(&genesis)?;
    Ok(genesis)
}

/// The node's own checks: the contract's, and for a sharded genesis the beacon state it
/// derives (keys that are ed25519 points, shards with validators, chain id length, ...).
pub fn check(genesis: &Genesis) -> Result<(), BuildError> {
    let refused = |e: String| BuildError::Render("genesis", e);
    genesis.check().map_err(|e| refused(e.to_string()))?;
    if let Some(sharding) = &genesis.sharding {
        BeaconGenesis::from_contract(
            &genesis.chain_id,
            genesis.epoch_length,
            &genesis.members,
            sharding,
        )
        .and_then(BeaconState::genesis)
        .map_err(|e| refused(e.to_string()))?;
    }
    Ok(())
}

/// The committee's validators as genesis members, named by pod. A member's `admin_key`
/// is the governance key that speaks for it: in a consortium its organisation's admin
/// key, in a public network the network admin key the operator holds.
fn members(
    input: &BuildInput<'_>,
    committee: &Committee,
) -> Result<Vec<GenesisMember>, BuildError> {
    let ns = namespace(input)?;
    let topology = input.topology;
    committee
        .nodes
        .iter()
        .map(|node| {
            let admin_key = match (&topology.genesis.mode, &node.member) {
                (NetworkMode::Consortium, Some(org)) => topology
                    .members
                    .iter()
                    .find(|m| &m.name == org)
                    .map(|m| m.admin_public_key.to_ascii_lowercase())
                    .ok_or_else(|| BuildError::Render("genesis", format!("no member {org}")))?,
                _ => input.admin_public_key.to_owned(),
            };
            Ok(GenesisMember {
                name: node.name.clone(),
                admin_key,
                node_key: node_key(input, &node.name)?,
                p2p_address: build::node_p2p_address(
                    &node.name,
                    &committee.name,
                    &ns,
                    input.options,
                ),
            })
        })
        .collect()
}

/// The committee's validators as `sharding` seats of `shard`, at their stable DNS names.
fn seats(
    input: &BuildInput<'_>,
    committee: &Committee,
    shard: u16,
) -> Result<Vec<GenesisValidator>, BuildError> {
    let ns = namespace(input)?;
    committee
        .nodes
        .iter()
        .map(|node| {
            Ok(GenesisValidator {
                node_key: node_key(input, &node.name)?,
                shard,
                p2p_address: build::node_p2p_address(
                    &node.name,
                    &committee.name,
                    &ns,
                    input.options,
                ),
                rpc_address: build::node_rpc_address(
                    &node.name,
                    &committee.name,
                    &ns,
                    input.options,
                ),
                member: None,
            })
        })
        .collect()
}

fn namespace(input: &BuildInput<'_>) -> Result<String, BuildError> {
    input
        .network
        .metadata
        .namespace
        .clone()
        .ok_or(BuildError::MissingMetadata("namespace"))
}

fn node_key(input: &BuildInput<'_>, node: &str) -> Result<String, BuildError> {
    input
        .public_keys
        .get(node)
        .map(|k| k.to_ascii_lowercase())
        .ok_or_else(|| BuildError::MissingKey(node.to_owned()))
}

/// The genesis ConfigMap `<network>-genesis` with [`ENTRY`]. Created once (see
/// [`crate::controller`]); never changed afterwards.
pub fn config_map(input: &BuildInput<'_>) -> Result<ConfigMap, BuildError> {
    let genesis = network_genesis(input)?;
    let name = &input.topology.id.name;
    Ok(ConfigMap {
        metadata: build::child_meta(
            input.network,
            build::genesis_name(name),
            labels::network_labels(name),
        )?,
        data: Some(BTreeMap::from([(
            ENTRY.to_owned(),
            genesis
                .to_json()
                .map_err(|e| BuildError::Render("genesis", e.to_string()))?,
        )])),
        ..ConfigMap::default()
    })
}

/// The genesis a stored genesis ConfigMap holds, or why it cannot be used. A ConfigMap
/// written by an operator before this one (one entry per committee) is refused with
/// what to do: its committees are separate chains that this operator cannot continue.
pub fn stored(config_map: &ConfigMap) -> Result<Genesis, BuildError> {
    let name = config_map.metadata.name.clone().unwrap_or_default();
    let text = config_map
        .data
        .as_ref()
        .and_then(|d| d.get(ENTRY))
        .ok_or_else(|| {
            BuildError::Render(
                "genesis",
                format!(
                    "ConfigMap {name} has no entry {ENTRY}: it was written by an earlier \
                     trellis-operator (one genesis per committee), which this operator cannot \
                     continue; recreate the network"
                ),
            )
        })?;
    Genesis::from_json(text)
        .map_err(|e| BuildError::Render("genesis", format!("ConfigMap {name} entry {ENTRY}: {e}")))
}

/// Shards at genesis: the `sharding` section's count, 1 for an unsharded genesis.
pub fn shard_count(genesis: &Genesis) -> u16 {
    genesis.sharding.as_ref().map_or(1, |s| s.shard_count)
}

#[cfg(test)]
mod tests;
