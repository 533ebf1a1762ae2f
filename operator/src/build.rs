//! Build: a planned [`Topology`] and the nodes' public keys in, Kubernetes objects out.
//!
//! Pure: nothing here reads the cluster or the clock, so every object is unit-tested on
//! plain values. The apply step writes these objects with server-side apply in the
//! order of [`Children::apply_order`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, TopologySpreadConstraint, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde::Serialize;
use trellis_crd::topology::{Committee, CommitteeRole, Topology};
use trellis_crd::{ChainNetwork, NetworkMode};
use trellis_node_api::{BootstrapPeer, HEALTHZ_PATH, MempoolConfig, NodeConfig, READYZ_PATH, Role};

use crate::keys;
use crate::labels;
use crate::rollout::{self, RolloutStep};

/// Authenticated p2p port of every node.
pub const P2P_PORT: i32 = 7000;
/// JSON-RPC, `/metrics`, `/healthz` and `/readyz` of every node.
pub const RPC_PORT: i32 = 8545;
/// Where the pieces are mounted in the node container.
pub const CONFIG_DIR: &str = "/etc/trellis/config";
pub const GENESIS_DIR: &str = "/etc/trellis/genesis";
pub const KEY_FILE: &str = "/etc/trellis/keys/node.key";
pub const DATA_DIR: &str = "/var/lib/trellis";
/// Name of the ledger volume claim template (PVCs are `ledger-<pod>`).
pub const LEDGER_VOLUME: &str = "ledger";
/// Pod annotation carrying a hash of the committee's node config: a config change rolls
/// the committee (one validator at a time).
pub const CONFIG_HASH_ANNOTATION: &str = "trellis.dev/config-hash";
/// UID the node runs as (the image's non-root user).
pub const NODE_UID: i64 = 10001;

/// Why the build step cannot produce objects.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("the ChainNetwork has no {0} yet (not read from the apiserver?)")]
    MissingMetadata(&'static str),
    #[error("no public key for node {0}")]
    MissingKey(String),
    #[error("cannot render {0}: {1}")]
    Render(&'static str, String),
}

/// Settings of the operator process that shape the objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// DNS suffix of the cluster (`cluster.local`).
    pub cluster_domain: String,
    /// Extra environment (name, value) of every node container: the OTLP export
    /// settings the operator passes on (crate::telemetry::node_env); empty when it
    /// exports nothing.
    pub node_env: Vec<(String, String)>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".to_owned(),
            node_env: Vec::new(),
        }
    }
}

/// Validators of an admitted consortium member (its `ChainMember`'s StatefulSet, in the
/// member's namespace): they vote in shard 0's committee, so shard 0's quorum, its
/// PodDisruptionBudget and the network's status count them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberValidators {
    pub namespace: String,
    /// Their committee (StatefulSet) name.
    pub committee: String,
    pub validators: u32,
    /// Ready pods of their StatefulSet.
    pub ready: i32,
}

/// What the build step reads: the resource, its plan and the nodes' public keys.
pub struct BuildInput<'a> {
    pub network: &'a ChainNetwork,
    pub topology: &'a Topology,
    /// Admitted members' validators (consortium networks; empty otherwise).
    pub members: &'a [MemberValidators],
    /// Public key (hex) per node name.
    pub public_keys: &'a BTreeMap<String, String>,
    /// Public key (hex) of the network admin key.
    pub admin_public_key: &'a str,
    pub options: &'a BuildOptions,
}

/// Every object the operator owns for one network, except the key Secrets (written by
/// the keys step, never by apply) and the genesis ConfigMap (created once).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Children {
    pub services: Vec<Service>,
    pub config_maps: Vec<ConfigMap>,
    pub pod_disruption_budgets: Vec<PodDisruptionBudget>,
    pub network_policies: Vec<NetworkPolicy>,
    pub stateful_sets: Vec<StatefulSet>,
}

impl Children {
    /// A stable fingerprint of every object (to skip re-applying an unchanged set).
    pub fn fingerprint(&self) -> String {
        stable_hash(&serde_json::to_string(self).unwrap_or_default())
    }

    /// Names per kind, for orphan clean-up.
    pub fn names(&self) -> ChildNames {
        fn names<K: Resource>(objects: &[K]) -> Vec<String> {
            objects
                .iter()
                .filter_map(|o| o.meta().name.clone())
                .collect()
        }
        ChildNames {
            services: names(&self.services),
            config_maps: names(&self.config_maps),
            pod_disruption_budgets: names(&self.pod_disruption_budgets),
            network_policies: names(&self.network_policies),
            stateful_sets: names(&self.stateful_sets),
        }
    }
}

/// Names of the desired children per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildNames {
    pub services: Vec<String>,
    pub config_maps: Vec<String>,
    pub pod_disruption_budgets: Vec<String>,
    pub network_policies: Vec<String>,
    pub stateful_sets: Vec<String>,
}

/// Metadata every child gets: name, namespace, labels and the controller owner reference.
pub(crate) fn child_meta(
    network: &ChainNetwork,
    name: String,
    labels: BTreeMap<String, String>,
) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(namespace(network)?),
        labels: Some(labels),
        owner_references: Some(vec![owner_reference(network)?]),
        ..ObjectMeta::default()
    })
}

fn namespace(network: &ChainNetwork) -> Result<String, BuildError> {
    network
        .metadata
        .namespace
        .clone()
        .ok_or(BuildError::MissingMetadata("namespace"))
}

/// The controller owner reference: garbage collection deletes children with the network.
pub fn owner_reference(network: &ChainNetwork) -> Result<OwnerReference, BuildError> {
    network
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))
}

/// `host:port` of a node's p2p listener (its stable StatefulSet DNS name).
pub fn node_p2p_address(
    node: &str,
    committee: &str,
    namespace: &str,
    options: &BuildOptions,
) -> String {
    format!(
        "{node}.{committee}.{namespace}.svc.{}:{P2P_PORT}",
        options.cluster_domain
    )
}

/// `host:port` of a node's JSON-RPC listener (its stable StatefulSet DNS name).
pub fn node_rpc_address(
    node: &str,
    committee: &str,
    namespace: &str,
    options: &BuildOptions,
) -> String {
    format!(
        "{node}.{committee}.{namespace}.svc.{}:{RPC_PORT}",
        options.cluster_domain
    )
}

/// Builds every child of the network (see [`Children`]).
pub fn build(input: &BuildInput<'_>) -> Result<Children, BuildError> {
    let mut children = Children::default();
    for committee in &input.topology.committees {
        let config = node_config(input, committee)?;
        children
            .config_maps
            .push(config_map(input, committee, &config)?);
        children
            .services
            .push(headless_service(input.network, committee)?);
        let members: &[MemberValidators] = if committee.role == CommitteeRole::Shard(0) {
            input.members
        } else {
            &[]
        };
        children.pod_disruption_budgets.push(pod_disruption_budget(
            input.network,
            committee,
            members,
        )?);
        children.stateful_sets.push(stateful_set(
            input.network,
            committee,
            &config,
            &input.options.node_env,
        )?);
    }
    children.services.push(rpc_service(input.network)?);
    children
        .network_policies
        .push(network_policy(input.network)?);
    Ok(children)
}

/// Renders `node.toml` of `committee` with the contract's [`NodeConfig`]: the committee's
/// role (`beacon`, or `shard N` — also for shards added after genesis, which wait for the
/// beacon to create them — or `shard = "any"` for the validator pool), the network's
/// genesis file, and as bootstrap peers the
/// committee's validators by public key and stable DNS name (they override the genesis
/// addresses, which is what lets a test resolver point them at loopback instead).
pub fn node_config(input: &BuildInput<'_>, committee: &Committee) -> Result<String, BuildError> {
    let ns = namespace(input.network)?;
    // A pool validator's peers are those of whichever shard the beacon places it in: the
    // genesis and the beacon's registry give their addresses (stable DNS names), so it
    // gets no bootstrap peers of its own (its fellow pool validators serve other shards).
    let peers: &[trellis_crd::topology::PlannedNode] = match committee.role {
        CommitteeRole::Pool => &[],
        CommitteeRole::Beacon | CommitteeRole::Shard(_) => &committee.nodes,
    };
    let bootstrap_peers = peers
        .iter()
        .map(|node| {
            Ok(BootstrapPeer {
                public_key: node_key(input, &node.name)?.clone(),
                address: node_p2p_address(&node.name, &committee.name, &ns, input.options),
            })
        })
        .collect::<Result<_, BuildError>>()?;
    let config = NodeConfig {
        chain_id: input.topology.genesis.chain_id.clone(),
        role: match committee.role {
            CommitteeRole::Beacon => Role::Beacon,
            CommitteeRole::Shard(shard) => Role::Shard { shard },
            CommitteeRole::Pool => Role::AnyShard,
        },
        key_file: KEY_FILE.into(),
        data_dir: DATA_DIR.into(),
        genesis_file: format!("{GENESIS_DIR}/{}", crate::genesis::ENTRY).into(),
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

fn port(p: i32) -> u16 {
    u16::try_from(p).unwrap_or_default()
}

fn node_key<'a>(input: &'a BuildInput<'_>, node: &str) -> Result<&'a String, BuildError> {
    input
        .public_keys
        .get(node)
        .ok_or_else(|| BuildError::MissingKey(node.to_owned()))
}

/// Name of a committee's config ConfigMap.
pub fn config_map_name(committee: &Committee) -> String {
    format!("{}-config", committee.name)
}

fn config_map(
    input: &BuildInput<'_>,
    committee: &Committee,
    config: &str,
) -> Result<ConfigMap, BuildError> {
    Ok(ConfigMap {
        metadata: child_meta(
            input.network,
            config_map_name(committee),
            labels::committee_labels(&input.topology.id.name, committee),
        )?,
        data: Some(BTreeMap::from([(
            "node.toml".to_owned(),
            config.to_owned(),
        )])),
        ..ConfigMap::default()
    })
}

/// Name of the network's genesis ConfigMap.
pub fn genesis_name(network: &str) -> String {
    format!("{network}-genesis")
}

fn ports() -> Vec<ServicePort> {
    vec![
        ServicePort {
            name: Some("p2p".to_owned()),
            port: P2P_PORT,
            target_port: Some(IntOrString::String("p2p".to_owned())),
            protocol: Some("TCP".to_owned()),
            ..ServicePort::default()
        },
        ServicePort {
            name: Some("rpc".to_owned()),
            port: RPC_PORT,
            target_port: Some(IntOrString::String("rpc".to_owned())),
            protocol: Some("TCP".to_owned()),
            ..ServicePort::default()
        },
    ]
}

/// Headless Service of a committee: gives every validator a stable DNS name
/// (`<pod>.<committee>.<ns>.svc`), published before readiness so peers can find each
/// other while the committee forms its first quorum.
pub fn headless_service(
    network: &ChainNetwork,
    committee: &Committee,
) -> Result<Service, BuildError> {
    let name = &network_name(network)?;
    Ok(Service {
        metadata: child_meta(
            network,
            committee.name.clone(),
            labels::committee_labels(name, committee),
        )?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(labels::committee_selector(name, committee)),
            ports: Some(ports()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

fn network_name(network: &ChainNetwork) -> Result<String, BuildError> {
    network
        .metadata
        .name
        .clone()
        .ok_or(BuildError::MissingMetadata("name"))
}

/// Name of the client RPC Service.
pub fn rpc_service_name(network: &str) -> String {
    format!("{network}-rpc")
}

/// Client JSON-RPC Service: load-balances over the Ready shard validators, the validator
/// pool's included (their pods say `component: shard`, see [`labels::pod_labels`]; a
/// pool validator is Ready only while the beacon places it in a shard).
fn rpc_service(network: &ChainNetwork) -> Result<Service, BuildError> {
    let name = network_name(network)?;
    Ok(Service {
        metadata: child_meta(
            network,
            rpc_service_name(&name),
            labels::network_labels(&name),
        )?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(labels::component_selector(&name, "shard")),
            ports: Some(vec![ServicePort {
                name: Some("rpc".to_owned()),
                port: RPC_PORT,
                target_port: Some(IntOrString::String("rpc".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// PDB of a committee: at most `f` validators voluntarily disrupted, so a drain can never
/// take the committee below its `2f+1` quorum.
///
/// Admitted members' validators vote in shard 0's committee: `f` is then that of the
/// whole committee, and the PDB also selects the members' pods in this namespace. A PDB
/// cannot select pods of another namespace, so members elsewhere get a PDB of their own
/// that allows no voluntary disruption ([`member_pod_disruption_budget`]); the sum of
/// the budgets never exceeds `f`.
fn pod_disruption_budget(
    network: &ChainNetwork,
    committee: &Committee,
    members: &[MemberValidators],
) -> Result<PodDisruptionBudget, BuildError> {
    let name = network_name(network)?;
    let ns = namespace(network)?;
    if !members.is_empty() {
        let validators = committee.validators + members.iter().map(|m| m.validators).sum::<u32>();
        let f = trellis_crd::validate::fault_tolerance(i32::try_from(validators).unwrap_or(0));
        let mut committees = vec![committee.name.clone()];
        committees.extend(
            members
                .iter()
                .filter(|m| m.namespace == ns)
                .map(|m| m.committee.clone()),
        );
        return Ok(PodDisruptionBudget {
            metadata: child_meta(
                network,
                committee.name.clone(),
                labels::committee_labels(&name, committee),
            )?,
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(f)),
                selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([
                        (labels::NAME.to_owned(), labels::NODE_APP.to_owned()),
                        (labels::INSTANCE.to_owned(), name.clone()),
                    ])),
                    match_expressions: Some(vec![
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                            key: labels::COMMITTEE.to_owned(),
                            operator: "In".to_owned(),
                            values: Some(committees),
                        },
                    ]),
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        });
    }
    Ok(PodDisruptionBudget {
        metadata: child_meta(
            network,
            committee.name.clone(),
            labels::committee_labels(&name, committee),
        )?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(
                i32::try_from(committee.fault_tolerance).unwrap_or(0),
            )),
            selector: Some(LabelSelector {
                match_labels: Some(labels::committee_selector(&name, committee)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// Name of the network's NetworkPolicy.
pub fn network_policy_name(network: &str) -> String {
    format!("{network}-nodes")
}

/// Ingress to the network's nodes: RPC (clients, the operator, Prometheus) from anywhere
/// in the cluster; p2p from anywhere in public mode (open validator registration), and in
/// consortium mode only from this network's pods in any namespace (members' nodes may
/// run elsewhere; the node's handshake still refuses keys outside the member set).
fn network_policy(network: &ChainNetwork) -> Result<NetworkPolicy, BuildError> {
    let name = network_name(network)?;
    let port = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    };
    let p2p_from = match network.spec.mode {
        NetworkMode::Public => None,
        NetworkMode::Consortium => Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector::default()),
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([
                    (labels::NAME.to_owned(), labels::NODE_APP.to_owned()),
                    (labels::INSTANCE.to_owned(), name.clone()),
                ])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        }]),
    };
    Ok(NetworkPolicy {
        metadata: child_meta(
            network,
            network_policy_name(&name),
            labels::network_labels(&name),
        )?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([
                    (labels::NAME.to_owned(), labels::NODE_APP.to_owned()),
                    (labels::INSTANCE.to_owned(), name.clone()),
                ])),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: p2p_from,
                    ports: Some(vec![port(P2P_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![port(RPC_PORT)]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    })
}

/// Name of a committee's key Secret.
pub fn key_secret_name(committee: &Committee) -> String {
    format!("{}-keys", committee.name)
}

/// Name of the network admin key Secret.
pub fn admin_key_secret_name(network: &str) -> String {
    format!("{network}-admin-key")
}

/// FNV-1a, 64 bit: a stable hash (std's hasher may change between Rust releases).
pub fn stable_hash(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("rpc".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The StatefulSet of a committee.
///
/// * `Parallel` pod management: a BFT committee only becomes Ready once `2f+1` of its
///   validators run, so `OrderedReady` would wait forever for pod 0.
/// * Rolling updates replace one validator at a time, driven by the operator through
///   the `partition` ([`set_rollout`]): each step waits for readiness and finality.
/// * Ledger PVCs are kept on scale-down always, and on deletion unless
///   `retainLedgerOnDelete` is false.
/// * `spec.stopped` scales to zero; PVCs and keys stay.
pub fn stateful_set(
    network: &ChainNetwork,
    committee: &Committee,
    config: &str,
    node_env: &[(String, String)],
) -> Result<StatefulSet, BuildError> {
    let name = network_name(network)?;
    let spec = &network.spec;
    let replicas = if spec.stopped {
        0
    } else {
        i32::try_from(committee.validators).unwrap_or(0)
    };
    let mut pod_labels = labels::pod_labels(&name, committee);
    if let Some(tag) = image_tag(&spec.node.image) {
        pod_labels.insert(labels::VERSION.to_owned(), tag);
    }
    let env = |var: &str, path: &str| EnvVar {
        name: var.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let container = Container {
        name: "node".to_owned(),
        image: Some(spec.node.image.clone()),
        image_pull_policy: spec.node.image_pull_policy.clone(),
        args: Some(vec![
            "run".to_owned(),
            "--config".to_owned(),
            format!("{CONFIG_DIR}/node.toml"),
        ]),
        env: Some(
            [
                env("POD_NAME", "metadata.name"),
                env("POD_NAMESPACE", "metadata.namespace"),
            ]
            .into_iter()
            .chain(node_env.iter().map(|(name, value)| EnvVar {
                name: name.clone(),
                value: Some(value.clone()),
                ..EnvVar::default()
            }))
            .collect(),
        ),
        ports: Some(vec![
            ContainerPort {
                name: Some("p2p".to_owned()),
                container_port: P2P_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("rpc".to_owned()),
                container_port: RPC_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(http_probe(READYZ_PATH, 5, 3)),
        liveness_probe: Some(http_probe(HEALTHZ_PATH, 10, 6)),
        // Catching up from a long ledger may take a while; liveness waits for it.
        startup_probe: Some(http_probe(HEALTHZ_PATH, 5, 60)),
        resources: spec.node.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".to_owned(),
                mount_path: CONFIG_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "genesis".to_owned(),
                mount_path: GENESIS_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            // Each pod sees only its own key, selected by its pod name.
            VolumeMount {
                name: "keys".to_owned(),
                mount_path: KEY_FILE.to_owned(),
                sub_path_expr: Some("$(POD_NAME).key".to_owned()),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: LEDGER_VOLUME.to_owned(),
                mount_path: DATA_DIR.to_owned(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let selector = labels::committee_selector(&name, committee);
    let mut set = StatefulSet {
        metadata: child_meta(
            network,
            committee.name.clone(),
            labels::committee_labels(&name, committee),
        )?,
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(committee.name.clone()),
            pod_management_policy: Some("Parallel".to_owned()),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(0),
                    ..RollingUpdateStatefulSetStrategy::default()
                }),
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(
                        if spec.retain_ledger_on_delete {
                            "Retain"
                        } else {
                            "Delete"
                        }
                        .to_owned(),
                    ),
                    when_scaled: Some("Retain".to_owned()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_owned(),
                        stable_hash(config),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(NODE_UID),
                        run_as_group: Some(NODE_UID),
                        fs_group: Some(NODE_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    // Spread a committee over nodes: one machine lost must not cost more
                    // than f validators where the cluster allows it.
                    topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: "kubernetes.io/hostname".to_owned(),
                        when_unsatisfiable: "ScheduleAnyway".to_owned(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector),
                            ..LabelSelector::default()
                        }),
                        ..TopologySpreadConstraint::default()
                    }]),
                    volumes: Some(vec![
                        Volume {
                            name: "config".to_owned(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: config_map_name(committee),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "genesis".to_owned(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: genesis_name(&name),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "keys".to_owned(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(key_secret_name(committee)),
                                default_mode: Some(0o400),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(LEDGER_VOLUME.to_owned()),
                    labels: Some(labels::committee_labels(&name, committee)),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                    storage_class_name: spec.node.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            spec.node.storage.size.clone(),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    let hash = template_hash(&set);
    set.metadata.annotations = Some(BTreeMap::from([(
        rollout::TEMPLATE_HASH_ANNOTATION.to_owned(),
        hash,
    )]));
    Ok(set)
}

/// Hash of a StatefulSet's pod template: what a roll replaces validators for.
pub fn template_hash(set: &StatefulSet) -> String {
    let template = set.spec.as_ref().map(|s| &s.template);
    stable_hash(&serde_json::to_string(&template).unwrap_or_default())
}

/// Sets the roll's position on a built StatefulSet: the `RollingUpdate` partition (pods
/// with an ordinal at or above it run the new template) and the finalized height the
/// current step began at (see [`crate::rollout`]).
pub fn set_rollout(set: &mut StatefulSet, step: &RolloutStep) {
    if let Some(strategy) = set
        .spec
        .as_mut()
        .and_then(|s| s.update_strategy.as_mut())
        .and_then(|u| u.rolling_update.as_mut())
    {
        strategy.partition = Some(step.partition);
    }
    let annotations = set.metadata.annotations.get_or_insert_with(BTreeMap::new);
    match step.step_height {
        Some(height) => {
            annotations.insert(
                rollout::STEP_HEIGHT_ANNOTATION.to_owned(),
                height.to_string(),
            );
        }
        None => {
            annotations.remove(rollout::STEP_HEIGHT_ANNOTATION);
        }
    }
}

/// The tag of `image` when it is a valid label value (`repo:tag`, no digest).
fn image_tag(image: &str) -> Option<String> {
    let last = image.rsplit('/').next()?;
    if last.contains('@') {
        return None;
    }
    let (_, tag) = last.split_once(':')?;
    let ok = !tag.is_empty()
        && tag.len() <= 63
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric())
        && tag.ends_with(|c: char| c.is_ascii_alphanumeric());
    ok.then(|| tag.to_owned())
}

/// Public keys of every node of `topology`, keyed by node name, from the key sets read
/// or generated per committee (entries `<node>.key`).
pub fn node_public_keys(
    topology: &Topology,
    per_entry: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, BuildError> {
    topology
        .committees
        .iter()
        .flat_map(|c| c.nodes.iter())
        .map(|node| {
            per_entry
                .get(&keys::node_entry(&node.name))
                .map(|k| (node.name.clone(), k.clone()))
                .ok_or_else(|| BuildError::MissingKey(node.name.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests;

/// PDB of a member's validators that run in another namespace than the network's: the
/// network's PDB cannot select them, and it already spends shard 0's whole budget `f`,
/// so these allow no voluntary disruption (drain such a node after moving the pod by
/// hand, or run the member in the network's namespace).
pub fn member_pod_disruption_budget(
    network: &ChainNetwork,
    committee: &Committee,
) -> Result<PodDisruptionBudget, BuildError> {
    let name = network_name(network)?;
    Ok(PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(committee.name.clone()),
            labels: Some(labels::committee_labels(&name, committee)),
            ..ObjectMeta::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(0)),
            selector: Some(LabelSelector {
                match_labels: Some(labels::committee_selector(&name, committee)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}
