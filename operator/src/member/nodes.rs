//! The Kubernetes objects of an admitted member's validators. Pure.
//!
//! A member's validators join the chain of the network's registry committee (shard 0
//! while the beacon does not run) as a committee of their own: StatefulSet + headless
//! Service `<network>-m-<organization>` in the **member's** namespace (which may differ
//! from the network's), owned by the `ChainMember`. Their ConfigMap
//! `<committee>-config` holds `node.toml` and a copy of the shard's genesis entry (a pod
//! cannot mount a ConfigMap of another namespace); their keys are the Secret
//! `<committee>-keys` (or the member's own `spec.nodeKeySecret`). The pod template is the
//! network's own ([`build::stateful_set`]): image, probes, security context and storage
//! are the same as every other validator's.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use trellis_crd::ChainNetwork;
use trellis_crd::topology::{Committee, CommitteeRole, PlannedNode};
use trellis_node_api::{BootstrapPeer, Genesis, MempoolConfig, NodeConfig, Role};

use crate::build::{
    self, BuildError, BuildOptions, DATA_DIR, GENESIS_DIR, KEY_FILE, P2P_PORT, RPC_PORT,
};
use crate::labels;

/// `app.kubernetes.io/component` of a member's validators.
pub const MEMBER_COMPONENT: &str = "member";
/// StatefulSet names must stay short enough for pod names and their revision label.
const MAX_COMMITTEE_NAME: usize = 52;

/// Name of the member's validator committee: `<network>-m-<organization>`, or, when that
/// is too long, the network name's start and a hash of the pair (stable, no collision
/// with `-beacon` / `-shard-N`).
pub fn member_committee_name(network: &str, organization: &str) -> String {
    let full = format!("{network}-m-{organization}");
    if full.len() <= MAX_COMMITTEE_NAME {
        return full;
    }
    let hash = build::stable_hash(&full);
    let keep = MAX_COMMITTEE_NAME - 3 - hash.len();
    let prefix: String = network.chars().take(keep).collect();
    format!("{}-m-{hash}", prefix.trim_end_matches('-'))
}

/// The member's validators as a committee (the shape [`build::stateful_set`] takes).
pub fn member_committee(network: &str, organization: &str, nodes: u32) -> Committee {
    let name = member_committee_name(network, organization);
    Committee {
        // Its validators run the registry shard's chain.
        role: CommitteeRole::Shard(0),
        nodes: (0..nodes)
            .map(|ordinal| PlannedNode {
                name: format!("{name}-{ordinal}"),
                ordinal,
                key_slot: ordinal,
                member: Some(organization.to_owned()),
            })
            .collect(),
        name,
        validators: nodes,
        fault_tolerance: 0,
        quorum: nodes,
    }
}

/// What the member's objects are made from.
pub struct MemberBuild<'a> {
    pub network: &'a ChainNetwork,
    pub committee: &'a Committee,
    /// The member's namespace.
    pub namespace: &'a str,
    pub owner: OwnerReference,
    /// The registry shard's genesis entry name and contents (JSON).
    pub genesis_entry: &'a str,
    pub genesis: &'a str,
    /// The member's validators' public keys, by pod name.
    pub node_keys: &'a BTreeMap<String, String>,
    /// The key Secret the pods mount.
    pub key_secret: &'a str,
    pub options: &'a BuildOptions,
}

/// The member's objects, in apply order.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberChildren {
    pub service: Service,
    pub config_map: ConfigMap,
    /// Only in another namespace than the network's (see
    /// [`build::member_pod_disruption_budget`]); the network's own PDB of shard 0
    /// counts the member's validators in its namespace.
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    pub stateful_set: StatefulSet,
}

fn member_labels(network: &str, committee: &Committee) -> BTreeMap<String, String> {
    let mut labels = labels::committee_labels(network, committee);
    labels.insert(labels::COMPONENT.to_owned(), MEMBER_COMPONENT.to_owned());
    labels.remove(labels::SHARD);
    labels
}

fn port(p: i32) -> u16 {
    u16::try_from(p).unwrap_or_default()
}

/// `node.toml` of the member's validators: the registry shard's chain and genesis, and as
/// bootstrap peers the genesis validators (at their stable DNS names, as the genesis
/// records them) and the member's other validators.
pub fn member_node_config(input: &MemberBuild<'_>) -> Result<String, BuildError> {
    let genesis: Genesis = serde_json::from_str(input.genesis)
        .map_err(|e| BuildError::Render("member genesis", e.to_string()))?;
    let mut bootstrap_peers: Vec<BootstrapPeer> = genesis
        .members
        .iter()
        .map(|m| BootstrapPeer {
            public_key: m.node_key.clone(),
            address: m.p2p_address.clone(),
        })
        .collect();
    for node in &input.committee.nodes {
        let key = input
            .node_keys
            .get(&node.name)
            .ok_or_else(|| BuildError::MissingKey(node.name.clone()))?;
        bootstrap_peers.push(BootstrapPeer {
            public_key: key.clone(),
            address: build::node_p2p_address(
                &node.name,
                &input.committee.name,
                input.namespace,
                input.options,
            ),
        });
    }
    let config = NodeConfig {
        chain_id: genesis.chain_id.clone(),
        role: Role::Shard { shard: 0 },
        key_file: KEY_FILE.into(),
        data_dir: DATA_DIR.into(),
        genesis_file: format!("{GENESIS_DIR}/{}", input.genesis_entry).into(),
        p2p_listen: SocketAddr::from(([0, 0, 0, 0], port(P2P_PORT))),
        p2p_external: None,
        rpc_listen: SocketAddr::from(([0, 0, 0, 0], port(RPC_PORT))),
        bootstrap_peers,
        mempool: MempoolConfig::default(),
    };
    config
        .to_toml()
        .map_err(|e| BuildError::Render("node.toml", e.to_string()))
}

fn meta(input: &MemberBuild<'_>, name: String, network: &str) -> ObjectMeta {
    let mut labels = member_labels(network, input.committee);
    // Not on the pods (a new pod label would roll them): the objects only.
    if let Some(network_namespace) = &input.network.metadata.namespace {
        labels.insert(
            labels::NETWORK_NAMESPACE.to_owned(),
            network_namespace.clone(),
        );
    }
    ObjectMeta {
        name: Some(name),
        namespace: Some(input.namespace.to_owned()),
        labels: Some(labels),
        owner_references: Some(vec![input.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// Builds the member's Service, ConfigMap and StatefulSet.
pub fn member_children(input: &MemberBuild<'_>) -> Result<MemberChildren, BuildError> {
    let network = input
        .network
        .metadata
        .name
        .clone()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let config = member_node_config(input)?;
    let config_map_name = build::config_map_name(input.committee);
    let config_map = ConfigMap {
        metadata: meta(input, config_map_name.clone(), &network),
        data: Some(BTreeMap::from([
            ("node.toml".to_owned(), config.clone()),
            (input.genesis_entry.to_owned(), input.genesis.to_owned()),
        ])),
        ..ConfigMap::default()
    };
    let mut service = build::headless_service(input.network, input.committee)?;
    service.metadata = meta(input, input.committee.name.clone(), &network);

    let mut set = build::stateful_set(
        input.network,
        input.committee,
        &config,
        &input.options.node_env,
    )?;
    let annotations = set.metadata.annotations.take();
    set.metadata = ObjectMeta {
        annotations,
        ..meta(input, input.committee.name.clone(), &network)
    };
    if let Some(spec) = set.spec.as_mut() {
        if let Some(template_meta) = spec.template.metadata.as_mut() {
            let mut pod_labels = member_labels(&network, input.committee);
            if let Some(version) = template_meta
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::VERSION))
            {
                pod_labels.insert(labels::VERSION.to_owned(), version.clone());
            }
            template_meta.labels = Some(pod_labels);
        }
        for volume in spec
            .template
            .spec
            .iter_mut()
            .flat_map(|s| s.volumes.iter_mut().flatten())
        {
            match volume.name.as_str() {
                // The genesis copy lives in the member's own ConfigMap.
                "genesis" => {
                    if let Some(cm) = volume.config_map.as_mut() {
                        cm.name.clone_from(&config_map_name);
                    }
                }
                "keys" => {
                    if let Some(secret) = volume.secret.as_mut() {
                        secret.secret_name = Some(input.key_secret.to_owned());
                    }
                }
                _ => {}
            }
        }
        for claim in spec.volume_claim_templates.iter_mut().flatten() {
            claim.metadata.labels = Some(member_labels(&network, input.committee));
        }
    }
    let hash = build::template_hash(&set);
    set.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(crate::rollout::TEMPLATE_HASH_ANNOTATION.to_owned(), hash);
    let pod_disruption_budget =
        if input.network.metadata.namespace.as_deref() == Some(input.namespace) {
            None
        } else {
            let mut pdb = build::member_pod_disruption_budget(input.network, input.committee)?;
            pdb.metadata = meta(input, input.committee.name.clone(), &network);
            Some(pdb)
        };
    Ok(MemberChildren {
        service,
        config_map,
        pod_disruption_budget,
        stateful_set: set,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_crd::{ChainNetworkSpec, NetworkMode};

    #[test]
    fn committee_names_are_short_stable_and_never_a_shard_or_beacon() {
        assert_eq!(member_committee_name("alpha", "org-d"), "alpha-m-org-d");
        let long = member_committee_name(&"n".repeat(40), &"o".repeat(40));
        assert!(long.len() <= 52, "{long}");
        assert_eq!(
            long,
            member_committee_name(&"n".repeat(40), &"o".repeat(40))
        );
        assert_ne!(
            long,
            member_committee_name(&"n".repeat(40), &"p".repeat(40))
        );
        let c = member_committee("alpha", "org-d", 2);
        let names: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["alpha-m-org-d-0", "alpha-m-org-d-1"]);
    }

    #[test]
    fn member_objects_live_in_the_member_namespace_with_the_genesis_copy() {
        let mut network = ChainNetwork::new(
            "alpha",
            ChainNetworkSpec::new(NetworkMode::Consortium, "trellis-node:1.0.0"),
        );
        network.metadata.namespace = Some("net-ns".into());
        network.metadata.uid = Some("uid-n".into());
        let committee = member_committee("alpha", "org-d", 1);
        let genesis = serde_json::json!({
            "contract_version": 1, "chain_id": "alpha.net-ns", "epoch_length": 10,
            "members": [{"name": "alpha-shard-0-0", "admin_key": "aa".repeat(32),
                         "node_key": "bb".repeat(32),
                         "p2p_address": "alpha-shard-0-0.alpha-shard-0.net-ns.svc.cluster.local:7000"}],
            "balances": []
        })
        .to_string();
        let keys = BTreeMap::from([("alpha-m-org-d-0".to_owned(), "cc".repeat(32))]);
        let owner = OwnerReference {
            api_version: "trellis.dev/v1alpha1".into(),
            kind: "ChainMember".into(),
            name: "org-d".into(),
            uid: "uid-m".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let input = MemberBuild {
            network: &network,
            committee: &committee,
            namespace: "member-ns",
            owner,
            genesis_entry: "genesis.json",
            genesis: &genesis,
            node_keys: &keys,
            key_secret: "alpha-m-org-d-keys",
            options: &BuildOptions::default(),
        };
        let children = member_children(&input).unwrap();
        // Another namespace than the network's: a PDB of its own, no voluntary disruption
        // (the network's PDB spends shard 0's budget and cannot select these pods).
        let pdb = children.pod_disruption_budget.as_ref().unwrap();
        assert_eq!(pdb.metadata.namespace.as_deref(), Some("member-ns"));
        assert_eq!(
            pdb.spec.as_ref().unwrap().max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
        );
        let same = member_children(&MemberBuild {
            namespace: "net-ns",
            ..input
        })
        .unwrap();
        assert!(same.pod_disruption_budget.is_none());
        let set = &children.stateful_set;
        assert_eq!(set.metadata.namespace.as_deref(), Some("member-ns"));
        // The network controller's watch maps it to the network, in its own namespace.
        assert_eq!(
            crate::controller::stateful_set_network(set),
            Some(kube::runtime::reflector::ObjectRef::new("alpha").within("net-ns"))
        );
        assert_eq!(
            set.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-m"
        );
        let spec = set.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        let volumes = spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap();
        let genesis_volume = volumes.iter().find(|v| v.name == "genesis").unwrap();
        assert_eq!(
            genesis_volume.config_map.as_ref().unwrap().name,
            "alpha-m-org-d-config"
        );
        let labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(labels[labels::COMPONENT], MEMBER_COMPONENT);
        // The network's namespace is on the objects, not on the pods (no roll).
        assert!(!labels.contains_key(labels::NETWORK_NAMESPACE));
        // The selector's labels are on the pods.
        for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
            assert_eq!(labels.get(k), Some(v), "{k}");
        }
        let data = children.config_map.data.as_ref().unwrap();
        assert_eq!(data["genesis.json"], genesis);
        let config = NodeConfig::from_toml(&data["node.toml"]).unwrap();
        assert_eq!(config.chain_id, "alpha.net-ns");
        assert_eq!(
            config.genesis_file.to_str(),
            Some("/etc/trellis/genesis/genesis.json")
        );
        let peers: Vec<&str> = config
            .bootstrap_peers
            .iter()
            .map(|p| p.address.as_str())
            .collect();
        assert_eq!(
            peers,
            [
                "alpha-shard-0-0.alpha-shard-0.net-ns.svc.cluster.local:7000",
                "alpha-m-org-d-0.alpha-m-org-d.member-ns.svc.cluster.local:7000"
            ]
        );
    }
}
