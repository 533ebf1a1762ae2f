//! What a network looks like as local processes: pure, so every rule is unit-tested.
//!
//! - **public** networks are one sharded network (docs/sharding.md): the shared planner's
//!   committees ([`trellis_crd::topology::plan`], the same names and sizes the operator
//!   uses), a beacon committee and one committee per shard, all on one chain id with one
//!   genesis whose `sharding` section names every committee; and the validator pool
//!   (`validator_pool`), validators in no genesis that run `shard = "any"` (slot
//!   [`ANY_SHARD`]) and that the beacon places in a shard every epoch.
//! - **consortium** networks as one unsharded chain whose validators are the members'
//!   nodes (the console's rule: `members[].nodes`), each node signing governance with its
//!   organisation's admin key. A member admitted later adds its nodes to that chain.
//!   Sharded consortia are refused: the node runs consortium governance only in
//!   unsharded networks so far.

use trellis_crd::topology::{CommitteeRole, NetworkId, plan};
use trellis_node_api::Role;
use trellis_node_api::shard::ANY_SHARD;

use super::super::kube::{chain_network, member_name, namespace_of};
use super::super::{DesiredNetwork, ProvisionError};
use crate::networks::spec::NetworkMode;

/// Longest chain id a transaction can carry (`trellis_node_types::MAX_CHAIN_ID_LEN`).
const MAX_CHAIN_ID_LEN: usize = trellis_node_types::MAX_CHAIN_ID_LEN;

/// One validator process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedNode {
    /// Stable for the network's life: `<network>-shard-<n>-<ordinal>` (public, the
    /// planner's name) or `<network>-<member>-<i>` (consortium).
    pub name: String,
    /// The consortium member (DNS-label form) running it; `None` in public networks.
    pub member: Option<String>,
    /// The member's admin public key (hex), which signs its governance transactions.
    pub admin_public_key: Option<String>,
}

/// One committee: the beacon or a shard of a public network, or a consortium's single
/// chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedChain {
    /// The shard slot (0 for a consortium's chain and for the beacon, [`ANY_SHARD`] for
    /// the validator pool).
    pub shard: u16,
    pub chain_id: String,
    /// The committee in a sharded network; `None` for an unsharded chain.
    pub role: Option<Role>,
    pub nodes: Vec<PlannedNode>,
}

/// The genesis `sharding` section's sizes (keys and addresses come with the nodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedSharding {
    pub shard_count: u16,
    pub max_shards: u16,
}

/// The processes a network needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPlan {
    /// The beacon first (sharded networks), then shards in slot order.
    pub chains: Vec<PlannedChain>,
    /// `Some` for a sharded network.
    pub sharding: Option<PlannedSharding>,
    /// Said in the network's status.
    pub note: Option<String>,
}

impl LocalPlan {
    pub fn node_count(&self) -> usize {
        self.chains.iter().map(|c| c.nodes.len()).sum()
    }
}

/// The network's chain id: short (a transaction carries at most 32 bytes of it) and
/// unique per network, because it includes 48 random bits of the network's UUIDv7.
pub fn chain_id(desired: &DesiredNetwork) -> String {
    let id = desired.network.network_id.simple().to_string();
    let random = &id[id.len() - 12..];
    let suffix = format!("-{random}");
    let room = MAX_CHAIN_ID_LEN.saturating_sub(suffix.len());
    let name: String = desired.network.name.chars().take(room).collect();
    format!("{name}{suffix}")
}

/// Plans the local processes of `desired`.
pub fn plan_local(desired: &DesiredNetwork) -> Result<LocalPlan, ProvisionError> {
    let spec = &desired.spec;
    match spec.mode {
        NetworkMode::Public => {
            // The kube mapping and the shared planner: the same committees as in a cluster.
            let resource = chain_network(desired, "trellis-node")?;
            let id = NetworkId::new(
                namespace_of(&desired.network.tenant_slug),
                &desired.network.name,
            );
            let topology = plan(&id, &resource.spec)
                .map_err(|e| ProvisionError::Rejected(format!("invalid network: {e}")))?;
            let chain_id = chain_id(desired);
            let chains = topology
                .committees
                .iter()
                .map(|committee| {
                    let (shard, role) = match committee.role {
                        CommitteeRole::Shard(s) => (s, Role::Shard { shard: s }),
                        CommitteeRole::Beacon => (0, Role::Beacon),
                        // In no genesis: registered with the beacon for shard "any"
                        // (super::scaling), which places each in a shard every epoch.
                        CommitteeRole::Pool => (ANY_SHARD, Role::AnyShard),
                    };
                    PlannedChain {
                        shard,
                        chain_id: chain_id.clone(),
                        role: Some(role),
                        nodes: committee
                            .nodes
                            .iter()
                            .map(|node| PlannedNode {
                                name: node.name.clone(),
                                member: None,
                                admin_public_key: None,
                            })
                            .collect(),
                    }
                })
                .collect::<Vec<_>>();
            // Validated by the spec: 1 ≤ count ≤ max ≤ 256.
            let sharding = PlannedSharding {
                shard_count: u16::try_from(spec.shards.count).unwrap_or(1),
                max_shards: u16::try_from(spec.shards.max).unwrap_or(1),
            };
            Ok(LocalPlan {
                chains,
                sharding: Some(sharding),
                note: None,
            })
        }
        NetworkMode::Consortium => {
            if spec.shards.count != 1 {
                return Err(ProvisionError::Rejected(format!(
                    "local mode runs a consortium as one chain; shards.count is {} — set it \
                     to 1 (the node runs consortium governance only in unsharded networks)",
                    spec.shards.count
                )));
            }
            let mut nodes = Vec::new();
            for (index, member) in spec.members.iter().enumerate() {
                let name = member_name(&member.organisation);
                if name.is_empty() {
                    return Err(ProvisionError::Rejected(format!(
                        "members[{index}]: organisation {:?} has no letter or digit to name \
                         its nodes by; rename it",
                        member.organisation
                    )));
                }
                if nodes
                    .iter()
                    .any(|n: &PlannedNode| n.member.as_deref() == Some(name.as_str()))
                {
                    return Err(ProvisionError::Rejected(format!(
                        "members[{index}]: organisation {:?} has the same node name ({name}) \
                         as an earlier member; give the organisations distinct names",
                        member.organisation
                    )));
                }
                let Some(key) = member.admin_public_key.as_deref() else {
                    return Err(ProvisionError::Rejected(format!(
                        "members[{index}] ({}): no admin public key recorded",
                        member.organisation
                    )));
                };
                for i in 0..member.nodes {
                    nodes.push(PlannedNode {
                        name: format!("{}-{name}-{i}", desired.network.name),
                        member: Some(name.clone()),
                        admin_public_key: Some(key.to_ascii_lowercase()),
                    });
                }
            }
            Ok(LocalPlan {
                chains: vec![PlannedChain {
                    shard: 0,
                    chain_id: chain_id(desired),
                    role: None,
                    nodes,
                }],
                sharding: None,
                note: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::networks::spec::{CreateNetworkRequest, MemberSpec, NetworkSpec, ShardRange};
    use crate::provisioner::NetworkRef;

    fn desired(request: CreateNetworkRequest) -> DesiredNetwork {
        DesiredNetwork {
            network: NetworkRef {
                tenant_id: uuid::Uuid::now_v7(),
                tenant_slug: "acme".into(),
                network_id: uuid::Uuid::now_v7(),
                name: request.name.clone(),
            },
            generation: 1,
            spec: NetworkSpec::from_create(&request).unwrap(),
            quota: None,
        }
    }

    fn request(mode: NetworkMode) -> CreateNetworkRequest {
        serde_json::from_value(serde_json::json!({
            "name": "payments-with-a-rather-long-name-here",
            "mode": mode,
        }))
        .unwrap()
    }

    #[test]
    fn a_validator_pool_is_a_group_of_any_shard_validators_after_the_shards() {
        let mut r = request(NetworkMode::Public);
        r.validator_pool = Some(2);
        let d = desired(r);
        let p = plan_local(&d).unwrap();
        let pool = p.chains.last().unwrap();
        assert_eq!(pool.role, Some(Role::AnyShard));
        assert_eq!(pool.shard, ANY_SHARD);
        let names: Vec<_> = pool.nodes.iter().map(|n| n.name.as_str()).collect();
        let name = &d.network.name;
        assert_eq!(names, [format!("{name}-pool-0"), format!("{name}-pool-1")]);
        assert_eq!(
            pool.chain_id, p.chains[0].chain_id,
            "one network, one chain id"
        );
        // The shard count is the shards', not the pool's.
        assert_eq!(p.sharding.unwrap().shard_count, 1);
    }

    #[test]
    fn a_public_network_is_a_beacon_and_its_shards_on_one_chain() {
        let mut r = request(NetworkMode::Public);
        r.shards = Some(ShardRange {
            count: 2,
            min: 1,
            max: 4,
        });
        r.beacon_validators = Some(7);
        let d = desired(r);
        let p = plan_local(&d).unwrap();
        assert_eq!(p.chains.len(), 3);
        assert_eq!(p.node_count(), 7 + 2 * 4);
        let name = &d.network.name;
        assert_eq!(p.chains[0].role, Some(Role::Beacon));
        assert_eq!(p.chains[0].nodes[6].name, format!("{name}-beacon-6"));
        assert_eq!(p.chains[2].role, Some(Role::Shard { shard: 1 }));
        assert_eq!(p.chains[2].shard, 1);
        assert_eq!(p.chains[2].nodes[3].name, format!("{name}-shard-1-3"));
        assert_eq!(
            p.sharding,
            Some(PlannedSharding {
                shard_count: 2,
                max_shards: 4
            })
        );
        let id = &p.chains[0].chain_id;
        assert!(id.len() <= MAX_CHAIN_ID_LEN, "{id}");
        assert!(p.chains.iter().all(|c| &c.chain_id == id));
    }

    #[test]
    fn consortium_runs_one_validator_per_member_node() {
        let mut r = request(NetworkMode::Consortium);
        r.members = vec![
            MemberSpec {
                organisation: "Acme Corp.".into(),
                nodes: 2,
                admin_public_key: Some("AB".repeat(32)),
            },
            MemberSpec {
                organisation: "Globex".into(),
                nodes: 1,
                admin_public_key: Some("cd".repeat(32)),
            },
        ];
        let p = plan_local(&desired(r)).unwrap();
        let chain = &p.chains[0];
        let members: Vec<_> = chain
            .nodes
            .iter()
            .map(|n| n.member.clone().unwrap())
            .collect();
        assert_eq!(members, ["acme-corp", "acme-corp", "globex"]);
        assert_eq!(
            chain.nodes[0].admin_public_key.as_deref(),
            Some("ab".repeat(32).as_str())
        );
    }

    #[test]
    fn sharded_consortium_and_missing_keys_are_refused() {
        let mut r = request(NetworkMode::Consortium);
        r.members = vec![MemberSpec {
            organisation: "Acme".into(),
            nodes: 1,
            admin_public_key: Some("ab".repeat(32)),
        }];
        let mut d = desired(r);
        d.spec.shards.count = 2;
        d.spec.shards.max = 2;
        let err = plan_local(&d).unwrap_err();
        assert!(err.to_string().contains("shards.count is 2"), "{err}");
        d.spec.shards.count = 1;
        d.spec.members[0].admin_public_key = None;
        assert!(matches!(
            plan_local(&d).unwrap_err(),
            ProvisionError::Rejected(_)
        ));
    }
}
