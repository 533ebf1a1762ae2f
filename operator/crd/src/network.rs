//! The `ChainNetwork` custom resource.

// Several `printcolumn(...)` entries repeat `type_ = ...`; that is the derive's syntax, not a
// mistake.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, ValidationRule,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube_core::CustomResourceExt;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest `ChainNetwork` name. Child names are `<network>-shard-<n>` (up to 10 more
/// characters) and StatefulSet names must stay ≤ 52 characters so that the
/// `controller-revision-hash` pod label fits in 63.
pub const MAX_NETWORK_NAME_LEN: usize = 40;
/// Number of fixed state tables; a network can never have more shards than tables.
pub const TABLES: u32 = 256;
/// Largest committee the operator provisions (beacon or shard), and the largest
/// validator pool.
pub const MAX_VALIDATORS: i32 = 100;
/// Most validators the beacon's registry holds (`trellis_node_beacon::MAX_VALIDATORS`;
/// the operator's tests check they agree): fixed shard validators and the pool together.
pub const BEACON_REGISTRY_LIMIT: i64 = 4_096;

/// A Trellis blockchain network: a beacon committee plus a variable number of shard
/// committees, each a BFT group of `3f+1` validators.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "trellis.dev",
    version = "v1alpha1",
    kind = "ChainNetwork",
    plural = "chainnetworks",
    shortname = "cnet",
    category = "trellis",
    namespaced,
    status = "ChainNetworkStatus",
    derive = "PartialEq",
    doc = "A Trellis blockchain network: a beacon committee and a variable number of shard committees.",
    scale(
        spec_replicas_path = ".spec.shards.count",
        status_replicas_path = ".status.shardCount",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Shards",
        type_ = "integer",
        json_path = ".status.shardCount",
        description = "Shards in service"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.shards.count",
        description = "Shards asked for"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Chain",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"ChainHealthy\")].status",
        priority = "1"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Epoch",
        type_ = "integer",
        json_path = ".status.epoch",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.mode != 'Consortium' || size(self.members) > 0",
        "message": "a Consortium network needs at least one member"
    },
    {
        "rule": "self.mode != 'Public' || size(self.members) == 0",
        "message": "members are only allowed in Consortium mode"
    },
    {
        "rule": "self.mode != 'Public' || (self.validatorsPerShard >= 4 && self.validatorsPerShard % 3 == 1)",
        "message": "validatorsPerShard must be 3f+1 (4, 7, 10, ...) in a Public network"
    },
    {
        "rule": "self.mode != 'Public' || (self.beacon.validators >= 4 && self.beacon.validators % 3 == 1)",
        "message": "beacon.validators must be 3f+1 (4, 7, 10, ...) in a Public network"
    },
    {
        "rule": "self.mode == 'Public' || !has(self.validatorPool) || self.validatorPool.replicas == 0",
        "message": "validatorPool is only for Public networks: a Consortium places validators per organisation (add nodes with ChainMember)"
    }
]))]
pub struct ChainNetworkSpec {
    /// `Public` (open validator registration) or `Consortium` (admitted members only).
    /// Cannot change after creation.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "mode is immutable"}
    ]))]
    pub mode: NetworkMode,

    /// Shard count and its bounds. `kubectl scale` and HPAs change `count`.
    #[serde(default)]
    pub shards: ShardsSpec,

    /// Validators in each shard committee. Public: `3f+1` with `f ≥ 1`, so 4, 7, 10, ...
    /// Consortium: the members' nodes, any count (a consortium grows one organisation at
    /// a time; below 4 it tolerates no faulty validator, which the status says).
    #[serde(default = "default_validators")]
    #[schemars(range(min = 1, max = 100))]
    pub validators_per_shard: i32,

    /// The beacon committee, which orders system transactions (shard count, members,
    /// validator sets, epoch seed).
    #[serde(default)]
    pub beacon: BeaconSpec,

    /// Consortium organisations present at genesis. Later admissions use `ChainMember`.
    #[serde(default)]
    #[schemars(length(max = 64), extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["name"]
    ))]
    pub members: Vec<ConsortiumMember>,

    /// What every node runs.
    pub node: NodeSpec,

    /// Validators the beacon places and rotates between shards (Public networks only):
    /// one StatefulSet `<network>-pool` whose nodes register for shard "any". Absent or
    /// `replicas: 0`: every validator belongs to a fixed shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_pool: Option<ValidatorPoolSpec>,

    /// Built-in shard autoscaler (off by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// Funded accounts at genesis (hex ed25519 public keys): the network's initial
    /// allocation. Written into the genesis file once; cannot change after creation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "genesisBalances are immutable"}
    ]))]
    pub genesis_balances: Vec<GenesisAllocation>,

    /// Beacon blocks per epoch; shard-count and membership changes apply at epoch ends.
    #[serde(default = "default_epoch_length")]
    #[schemars(range(min = 10, max = 1_000_000))]
    pub epoch_length: i64,

    /// Reconciliation reads and reports status but writes no child object.
    #[serde(default)]
    pub paused: bool,

    /// Scales every committee to zero pods; ledger data (PVCs) and keys are kept.
    #[serde(default)]
    pub stopped: bool,

    /// Keep ledger PVCs when the network (or a shard) is deleted. Default true: ledger
    /// data is never deleted unless this says so.
    #[serde(default = "default_true")]
    pub retain_ledger_on_delete: bool,

    /// Have the Prometheus Operator scrape every validator's `/metrics`: a
    /// `ServiceMonitor` child, applied only when its CRD (`monitoring.coreos.com/v1`)
    /// exists on the cluster.
    #[serde(default)]
    pub service_monitor: bool,
}

fn default_validators() -> i32 {
    4
}
fn default_epoch_length() -> i64 {
    100
}
fn default_true() -> bool {
    true
}

/// One funded account at genesis.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GenesisAllocation {
    /// Hex ed25519 public key of the account (64 hex digits).
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub account: String,
    /// Initial balance.
    #[schemars(range(min = 1))]
    pub amount: i64,
}

/// Network flavour.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NetworkMode {
    /// A sharded public chain: open validator registration through the beacon.
    Public,
    /// A permissioned consortium ("alliance") chain: only admitted members' nodes peer.
    Consortium,
}

/// Shard count and bounds. Invariant (CEL): `1 ≤ min ≤ count ≤ max ≤ 256`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.min <= self.count && self.count <= self.max", "message": "shards must satisfy min <= count <= max"}
]))]
pub struct ShardsSpec {
    /// Shards wanted. Changes go through the beacon (`SetShardCount`).
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 256))]
    pub count: i32,
    /// Lowest shard count (autoscaler and `kubectl scale` floor).
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 256))]
    pub min: i32,
    /// Highest shard count (autoscaler and `kubectl scale` ceiling).
    #[serde(default = "default_max_shards")]
    #[schemars(range(min = 1, max = 256))]
    pub max: i32,
    /// Seconds a scale-in keeps one node of each drained slot running as an archive
    /// (StatefulSet `<network>-shard-<n>` at 1 replica), so `trellis_getTransaction`
    /// still finds the transactions that slot executed. 0 (default): the slot is deleted
    /// once drained, and those lookups answer `unknown`. At most one year.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0, max = 31_536_000))]
    pub drained_history_seconds: i64,
}

/// Longest `spec.shards.drainedHistorySeconds`: one year.
pub const MAX_DRAINED_HISTORY_SECONDS: i64 = 31_536_000;

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn default_one() -> i32 {
    1
}
fn default_max_shards() -> i32 {
    16
}

impl Default for ShardsSpec {
    fn default() -> Self {
        Self {
            count: default_one(),
            min: default_one(),
            max: default_max_shards(),
            drained_history_seconds: 0,
        }
    }
}

/// A pool of validators registered for shard "any": the beacon's seeded shuffle places
/// each in a shard committee every epoch, rotating at most a third of a committee per
/// epoch, so no shard keeps a fixed committee. See docs/sharding.md.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidatorPoolSpec {
    /// Pool validators. Scaling up registers the new ones with the beacon; scaling down
    /// deregisters the highest ordinals and removes their pods once the beacon no longer
    /// places them (at the next epoch boundary).
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
}

/// The beacon committee.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BeaconSpec {
    /// Beacon validators: `3f+1` with `f ≥ 1` in a public network; the members' nodes in
    /// a consortium.
    #[serde(default = "default_validators")]
    #[schemars(range(min = 1, max = 100))]
    pub validators: i32,
}

impl Default for BeaconSpec {
    fn default() -> Self {
        Self {
            validators: default_validators(),
        }
    }
}

/// A consortium organisation present at genesis.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsortiumMember {
    /// Organisation name (unique in the network; a DNS label).
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Hex-encoded ed25519 public key that signs this member's governance transactions.
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub admin_public_key: String,
    /// Validator nodes this member runs across the network's committees.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 100))]
    pub nodes: i32,
}

/// What every node runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// `trellis-node` container image. Changing it rolls one validator at a time.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Pull policy of the node image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// CPU / memory of each node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Ledger volume of each node.
    #[serde(default)]
    pub storage: StorageSpec,
}

/// Ledger volume of each node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size of each node's ledger PVC.
    #[serde(default = "default_storage_size")]
    pub size: Quantity,
    /// Storage class of the ledger PVCs (cluster default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> Quantity {
    Quantity("10Gi".to_owned())
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// Built-in shard autoscaler policy. Bounds come from `shards.min` / `shards.max`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Whether the operator changes `shards.count` on its own.
    #[serde(default)]
    pub enabled: bool,
    /// Scale out when the average committed tx/s per shard exceeds this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_tx_per_second_per_shard: Option<i64>,
    /// Scale out when the average mempool depth per shard exceeds this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_mempool_depth: Option<i64>,
    /// Seconds to wait after a shard-count change before the next one.
    #[serde(default = "default_cooldown")]
    #[schemars(range(min = 0))]
    pub cooldown_seconds: i64,
    /// Seconds a recommendation must hold before it is acted on.
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0))]
    pub stabilization_window_seconds: i64,
}

fn default_cooldown() -> i64 {
    600
}
fn default_stabilization() -> i64 {
    300
}

/// Coarse summary of the network's state (the conditions carry the detail).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NetworkPhase {
    /// Children are being created or are not all ready yet.
    Provisioning,
    /// Every committee has all validators ready.
    Running,
    /// The shard count is changing.
    Scaling,
    /// A committee has lost validators (still within its fault budget or not).
    Degraded,
    /// `spec.stopped`: every committee scaled to zero.
    Stopped,
    /// `spec.paused`: nothing is written.
    Paused,
    /// The spec violates an invariant; see the `Ready` condition.
    Invalid,
}

/// Observed state of a `ChainNetwork`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainNetworkStatus {
    /// `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `Scaling` (object state) and `ChainHealthy`
    /// (read from the nodes themselves).
    #[serde(default)]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<NetworkPhase>,
    /// Shards in service (the scale subresource's status replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_count: Option<i32>,
    /// Label selector of the network's shard pods (the scale subresource's selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Current epoch as reported by the beacon (absent until the node RPC reports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beacon: Option<CommitteeStatus>,
    #[serde(default)]
    pub shards: Vec<ShardStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<NetworkEndpoints>,
    /// The validator pool (absent when the spec asks for none and none is left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_pool: Option<ValidatorPoolStatus>,
    /// The built-in autoscaler's last shard-count change (absent until it makes one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerStatus>,
}

/// Where the pool validators are: what `kubectl get chainnetwork -o yaml` answers to
/// "which shard serves each of my pool validators".
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidatorPoolStatus {
    /// Pool validators wanted (`spec.validatorPool.replicas`).
    pub replicas: i32,
    /// Pool pods Ready (a pool node is Ready once placed in a shard and serving it).
    pub ready_replicas: i32,
    /// Wanted pool validators in a shard committee of the current epoch (the beacon's
    /// shard map).
    pub placed: i32,
    /// Each pool validator the operator runs, by pod name (ordinals above `replicas`
    /// while they leave).
    #[serde(default)]
    pub validators: Vec<PoolValidatorStatus>,
    /// What the registration step waits for or was refused (null when settled: written
    /// as null, not left out, so that the status merge patch clears an old message).
    #[serde(default)]
    pub message: Option<String>,
}

/// One pool validator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolValidatorStatus {
    /// Pod name (`<network>-pool-<ordinal>`).
    pub name: String,
    /// Hex node public key.
    pub node_key: String,
    /// The shard whose committee includes it this epoch (absent: placed nowhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<i32>,
    pub state: PoolValidatorState,
}

/// Where a pool validator stands with the beacon.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PoolValidatorState {
    /// In a shard committee this epoch.
    Placed,
    /// Wanted, not in a committee yet: registered for shard "any" (or being registered),
    /// placed by the beacon at the next epoch boundary.
    Registering,
    /// Scaled away: deregistered; its pod stays until the beacon no longer places it.
    Leaving,
}

/// A shard-count change the built-in autoscaler made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// When it set `spec.shards.count`.
    pub last_scale_time: Time,
    /// Shard count before and after.
    pub from: i32,
    pub to: i32,
    /// Why: the loads and the policy that led to it.
    pub reason: String,
}

/// Object-level state of one committee's StatefulSet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommitteeStatus {
    /// Validators wanted.
    pub validators: i32,
    /// Validators whose pod is Ready.
    pub ready_validators: i32,
}

/// One shard's state. Chain figures stay absent until read from the nodes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    pub id: i32,
    pub validators: i32,
    pub ready_validators: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalized_height: Option<i64>,
    /// Epoch the shard's nodes report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mempool_depth: Option<i64>,
    /// Tables this shard owns (from the beacon's shard map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<i32>>,
}

/// Where clients and peers reach the network.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkEndpoints {
    /// In-cluster JSON-RPC URL of the client Service.
    pub rpc: String,
    /// p2p addresses of the beacon validators (bootstrap peers for new nodes).
    #[serde(default)]
    pub beacon_peers: Vec<String>,
}

/// The `ChainNetwork` CRD with the rules that cannot be expressed on a field (they need
/// `metadata`).
pub fn crd() -> CustomResourceDefinition {
    let mut crd = ChainNetwork::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema
                .x_kubernetes_validations
                .get_or_insert_with(Vec::new)
                .push(ValidationRule {
                    rule: format!("size(self.metadata.name) <= {MAX_NETWORK_NAME_LEN}"),
                    message: Some(format!(
                        "metadata.name must be at most {MAX_NETWORK_NAME_LEN} characters (child names add up to 12)"
                    )),
                    ..ValidationRule::default()
                });
        }
    }
    crd
}

impl ChainNetworkSpec {
    /// Pool validators asked for (0 without a `validatorPool`).
    pub fn pool_replicas(&self) -> i32 {
        self.validator_pool.as_ref().map_or(0, |p| p.replicas)
    }

    /// A spec with every default, for `image`. Used by tests and the console.
    pub fn new(mode: NetworkMode, image: impl Into<String>) -> Self {
        Self {
            mode,
            shards: ShardsSpec::default(),
            validators_per_shard: default_validators(),
            beacon: BeaconSpec::default(),
            members: Vec::new(),
            node: NodeSpec {
                image: image.into(),
                image_pull_policy: None,
                resources: None,
                storage: StorageSpec::default(),
            },
            validator_pool: None,
            autoscaling: None,
            genesis_balances: Vec::new(),
            epoch_length: default_epoch_length(),
            paused: false,
            stopped: false,
            retain_ledger_on_delete: true,
            service_monitor: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_core::cel::Validator;
    use serde_json::{Value, json};

    fn schema() -> Value {
        let crd = crd();
        serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap()
    }

    fn object(spec: Value) -> Value {
        json!({
            "apiVersion": "trellis.dev/v1alpha1",
            "kind": "ChainNetwork",
            "metadata": {"name": "alpha", "namespace": "t1"},
            "spec": spec,
        })
    }

    fn full_spec() -> Value {
        serde_json::to_value(ChainNetworkSpec::new(
            NetworkMode::Public,
            "trellis-node:dev",
        ))
        .unwrap()
    }

    /// Runs the CRD's CEL rules (the exact ones the apiserver gets) on `spec`.
    fn cel_errors(spec: Value, old: Option<Value>) -> Vec<String> {
        let old = old.map(object);
        match Validator::new().validate(&schema(), &object(spec), old.as_ref()) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.into_vec().iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn default_spec_passes_every_cel_rule() {
        assert_eq!(cel_errors(full_spec(), None), Vec::<String>::new());
    }

    #[test]
    fn shard_count_outside_bounds_is_refused_by_cel() {
        let mut spec = full_spec();
        spec["shards"] = json!({"count": 5, "min": 1, "max": 4});
        let errors = cel_errors(spec, None);
        assert!(
            errors.iter().any(|e| e.contains("min <= count <= max")),
            "{errors:?}"
        );
        let mut spec = full_spec();
        spec["shards"] = json!({"count": 1, "min": 2, "max": 4});
        assert!(!cel_errors(spec, None).is_empty());
    }

    #[test]
    fn committee_sizes_must_be_3f_plus_1() {
        for (field, value) in [("validatorsPerShard", 5), ("validatorsPerShard", 6)] {
            let mut spec = full_spec();
            spec[field] = json!(value);
            let errors = cel_errors(spec, None);
            assert!(
                errors.iter().any(|e| e.contains("3f+1")),
                "{value}: {errors:?}"
            );
        }
        let mut spec = full_spec();
        spec["beacon"] = json!({"validators": 8});
        assert!(
            cel_errors(spec, None)
                .iter()
                .any(|e| e.contains("beacon.validators"))
        );
        for ok in [4, 7, 10, 13] {
            let mut spec = full_spec();
            spec["validatorsPerShard"] = json!(ok);
            spec["beacon"] = json!({"validators": ok});
            assert_eq!(cel_errors(spec, None), Vec::<String>::new(), "{ok}");
        }
    }

    #[test]
    fn a_consortium_committee_is_its_members_nodes_whatever_their_count() {
        // Three organisations with one node each: valid for a consortium (it admits a
        // fourth later), refused for a public network, which sizes committees itself.
        let mut spec = full_spec();
        spec["mode"] = json!("Consortium");
        spec["members"] = json!([
            {"name": "org-a", "adminPublicKey": "aa".repeat(32), "nodes": 1},
            {"name": "org-b", "adminPublicKey": "bb".repeat(32), "nodes": 1},
            {"name": "org-c", "adminPublicKey": "cc".repeat(32), "nodes": 1}
        ]);
        spec["validatorsPerShard"] = json!(3);
        spec["beacon"] = json!({"validators": 3});
        assert_eq!(cel_errors(spec, None), Vec::<String>::new());
        let mut spec = full_spec();
        spec["validatorsPerShard"] = json!(3);
        let errors = cel_errors(spec, None);
        assert!(
            errors.iter().any(|e| e.contains("in a Public network")),
            "{errors:?}"
        );
    }

    #[test]
    fn a_validator_pool_is_public_only_and_bounded() {
        let mut public = full_spec();
        public["validatorPool"] = json!({"replicas": 3});
        assert_eq!(cel_errors(public.clone(), None), Vec::<String>::new());
        // The bounds are the schema's (the apiserver checks them before CEL).
        let pool = &schema()["properties"]["spec"]["properties"]["validatorPool"];
        let replicas = &pool["properties"]["replicas"];
        assert_eq!(
            (replicas["minimum"].as_f64(), replicas["maximum"].as_f64()),
            (Some(0.0), Some(100.0)),
            "{pool}"
        );
        let mut consortium = full_spec();
        consortium["mode"] = json!("Consortium");
        consortium["members"] =
            json!([{"name": "org-a", "adminPublicKey": "ab".repeat(32), "nodes": 1}]);
        consortium["validatorPool"] = json!({"replicas": 2});
        let errors = cel_errors(consortium.clone(), None);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("validatorPool is only for Public")),
            "{errors:?}"
        );
        consortium["validatorPool"] = json!({"replicas": 0});
        assert_eq!(cel_errors(consortium, None), Vec::<String>::new());
    }

    #[test]
    fn mode_is_immutable() {
        let old = full_spec();
        let mut new = full_spec();
        new["mode"] = json!("Consortium");
        new["members"] = json!([{"name": "org-a", "adminPublicKey": "ab".repeat(32), "nodes": 1}]);
        let errors = cel_errors(new.clone(), Some(old.clone()));
        assert!(
            errors.iter().any(|e| e.contains("mode is immutable")),
            "{errors:?}"
        );
        // Unchanged mode with other edits passes the transition rule.
        let mut same = old.clone();
        same["shards"] = json!({"count": 2, "min": 1, "max": 16});
        assert_eq!(cel_errors(same, Some(old)), Vec::<String>::new());
    }

    #[test]
    fn members_follow_the_mode() {
        let mut consortium = full_spec();
        consortium["mode"] = json!("Consortium");
        assert!(
            cel_errors(consortium.clone(), None)
                .iter()
                .any(|e| e.contains("at least one member"))
        );
        consortium["members"] =
            json!([{"name": "org-a", "adminPublicKey": "ab".repeat(32), "nodes": 2}]);
        assert_eq!(cel_errors(consortium.clone(), None), Vec::<String>::new());
        let mut public = consortium;
        public["mode"] = json!("Public");
        assert!(
            cel_errors(public, None)
                .iter()
                .any(|e| e.contains("only allowed in Consortium"))
        );
    }

    #[test]
    fn crd_has_scale_status_names_and_columns() {
        let crd = crd();
        let names = &crd.spec.names;
        assert_eq!(names.kind, "ChainNetwork");
        assert_eq!(names.short_names.as_deref(), Some(&["cnet".to_owned()][..]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        let sub = version.subresources.as_ref().unwrap();
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.shards.count");
        assert_eq!(scale.status_replicas_path, ".status.shardCount");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Mode", "Shards", "Desired", "Ready", "Chain", "Phase", "Epoch", "Age"
            ]
        );
    }

    #[test]
    fn name_length_rule_is_on_the_root() {
        let rules = crd().spec.versions[0]
            .schema
            .clone()
            .unwrap()
            .open_api_v3_schema
            .unwrap()
            .x_kubernetes_validations
            .unwrap();
        assert!(
            rules
                .iter()
                .any(|r| r.rule.contains("size(self.metadata.name)"))
        );
    }

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let spec: ChainNetworkSpec =
            serde_json::from_value(json!({"mode": "Public", "node": {"image": "n:1"}})).unwrap();
        assert_eq!(spec, ChainNetworkSpec::new(NetworkMode::Public, "n:1"));
        assert!(
            spec.retain_ledger_on_delete,
            "ledger is kept unless asked otherwise"
        );
        // The schema carries the same defaults, so the apiserver stores them.
        let schema = schema();
        let spec_schema = &schema["properties"]["spec"]["properties"];
        assert_eq!(spec_schema["validatorsPerShard"]["default"], json!(4));
        assert_eq!(spec_schema["retainLedgerOnDelete"]["default"], json!(true));
        assert_eq!(spec_schema["epochLength"]["default"], json!(100));
    }
}
