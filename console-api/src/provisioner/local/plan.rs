//! What a network looks like as local processes: pure, so every rule is unit-tested.
//!
//! `trellis-node` runs one committee per chain today (no beacon, no cross-shard
//! receipts: issue 4). The local provisioner therefore runs:
//!
//! - **public** networks as the shared planner's shard committees
//!   ([`trellis_crd::topology::plan`], the same names and sizes the operator uses), each
//!   shard its **own chain** with its own chain id and genesis. The beacon committee is
//!   planned but not run (the node has no beacon role yet); the status says so.
//! - **consortium** networks as one chain whose validators are the members' nodes (the
//!   console's rule: `members[].nodes`), each node signing governance with its
//!   organisation's admin key. A member admitted later adds its nodes to that chain.
//!   Consortia with more than one shard are refused: without a beacon there is nothing
//!   to keep the shards' memberships in step.

use trellis_crd::topology::{NetworkId, plan};

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

/// One chain: a shard of a public network, or a consortium's single chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedChain {
    pub shard: u16,
    pub chain_id: String,
    pub nodes: Vec<PlannedNode>,
}

/// The processes a network needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPlan {
    pub chains: Vec<PlannedChain>,
    /// Said in the network's status so nobody mistakes local mode for the full topology.
    pub note: Option<String>,
}

impl LocalPlan {
    pub fn node_count(&self) -> usize {
        self.chains.iter().map(|c| c.nodes.len()).sum()
    }
}

/// The chain id of shard `shard`: short (a transaction carries at most 32 bytes of it)
/// and unique per network, because it includes 48 random bits of the network's UUIDv7.
pub fn chain_id(desired: &DesiredNetwork, shard: u16) -> String {
    let id = desired.network.network_id.simple().to_string();
    let random = &id[id.len() - 12..];
    let suffix = format!("-{random}-s{shard}");
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
            let chains = topology
                .shards()
                .map(|committee| {
                    let shard = match committee.role {
                        trellis_crd::topology::CommitteeRole::Shard(s) => s,
                        trellis_crd::topology::CommitteeRole::Beacon => 0,
                    };
                    PlannedChain {
                        shard,
                        chain_id: chain_id(desired, shard),
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
            let note = if chains.len() > 1 {
                Some(format!(
                    "local mode: {} shards run as {} independent chains (one committee each, \
                     chain ids {}); the beacon committee and cross-shard transfers need the \
                     sharded node (issue 4)",
                    chains.len(),
                    chains.len(),
                    chains
                        .iter()
                        .map(|c| c.chain_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            } else {
                Some(
                    "local mode: the shard's committee runs as one chain; the beacon \
                     committee is not run (the node has no beacon yet, issue 4)"
                        .to_string(),
                )
            };
            Ok(LocalPlan { chains, note })
        }
        NetworkMode::Consortium => {
            if spec.shards.count != 1 {
                return Err(ProvisionError::Rejected(format!(
                    "local mode runs a consortium as one chain; shards.count is {} — set it \
                     to 1 (sharded consortia need the beacon committee, issue 4)",
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
                    chain_id: chain_id(desired, 0),
                    nodes,
                }],
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
    fn public_shards_are_the_planners_committees_each_its_own_chain() {
        let mut r = request(NetworkMode::Public);
        r.shards = Some(ShardRange {
            count: 2,
            min: 1,
            max: 4,
        });
        let d = desired(r);
        let p = plan_local(&d).unwrap();
        assert_eq!(p.chains.len(), 2);
        assert_eq!(p.node_count(), 8);
        let name = &d.network.name;
        assert_eq!(p.chains[1].nodes[3].name, format!("{name}-shard-1-3"));
        assert_ne!(p.chains[0].chain_id, p.chains[1].chain_id);
        for c in &p.chains {
            assert!(c.chain_id.len() <= MAX_CHAIN_ID_LEN, "{}", c.chain_id);
            assert!(c.chain_id.ends_with(&format!("-s{}", c.shard)));
        }
        assert!(p.note.unwrap().contains("independent chains"));
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
