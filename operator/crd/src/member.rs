//! The `ChainMember` custom resource: one consortium organisation joining a network.
//!
//! Admission and removal happen by governance transactions on the network's beacon,
//! signed by a threshold of the current members' admin keys. The resource records the
//! organisation's identity, the nodes it runs and where it is in that process.

// Several `printcolumn(...)` entries repeat `type_ = ...`; that is the derive's syntax, not a
// mistake.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube_core::CustomResourceExt;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An organisation's membership of a consortium `ChainNetwork`. The member resource may
/// live in another namespace than the network (its nodes run where the member runs them).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "trellis.dev",
    version = "v1alpha1",
    kind = "ChainMember",
    plural = "chainmembers",
    shortname = "cmem",
    category = "trellis",
    namespaced,
    status = "ChainMemberStatus",
    derive = "PartialEq",
    doc = "A consortium organisation joining a ChainNetwork through beacon governance.",
    printcolumn(name = "Network", type_ = "string", json_path = ".spec.network.name"),
    printcolumn(
        name = "Organization",
        type_ = "string",
        json_path = ".spec.organization"
    ),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".spec.nodes"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Step",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Admitted\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ChainMemberSpec {
    /// The consortium network this organisation joins. Cannot change.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "network is immutable"}
    ]))]
    pub network: NetworkRef,
    /// Organisation name, unique in the network. Cannot change.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        extend("x-kubernetes-validations" = [
            {"rule": "self == oldSelf", "message": "organization is immutable"}
        ])
    )]
    pub organization: String,
    /// Hex-encoded ed25519 public key that signs this member's governance transactions.
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub admin_public_key: String,
    /// Validator nodes this member runs.
    #[serde(default = "default_nodes")]
    #[schemars(range(min = 1, max = 100))]
    pub nodes: i32,
    /// A Secret in the member's namespace holding its own node keys (bring your own key).
    /// When absent the operator generates them once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_key_secret: Option<String>,
    /// Ask for removal: the operator proposes the member's removal on the beacon.
    #[serde(default)]
    pub remove: bool,
    /// A Secret in the member's namespace whose entry `tx` holds the hex governance
    /// transaction approving `status.governance.proposal` (the proposal plus the
    /// approvals of a threshold of current members' admin keys). Whoever holds those keys
    /// (the console) assembles it; the operator checks it against its own proposal and
    /// submits it. Never private keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub governance_tx_secret: Option<String>,
}

/// Entry of the governance transaction Secret that holds the hex transaction.
pub const GOVERNANCE_TX_ENTRY: &str = "tx";

fn default_nodes() -> i32 {
    1
}

/// Reference to a `ChainNetwork`, possibly in another namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRef {
    #[schemars(length(min = 1))]
    pub name: String,
    /// Namespace of the network; the member's own namespace when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Where a member is in the admission process.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MemberPhase {
    /// Recorded; no governance transaction sent yet.
    Invited,
    /// The admission transaction is on the beacon, waiting for the member threshold.
    Proposed,
    /// Admitted at an epoch boundary; its nodes are provisioned.
    Admitted,
    /// The members voted against it.
    Rejected,
    /// Removed by governance; its nodes are gone.
    Removed,
}

impl MemberPhase {
    /// Whether the beacon lets `self` move to `next` (the only transitions governance can
    /// produce). Used to refuse a status that would rewrite history.
    pub fn can_become(self, next: MemberPhase) -> bool {
        use MemberPhase::*;
        matches!(
            (self, next),
            (Invited, Proposed)
                // Genesis members, and proposals passed within one beacon block.
                | (Invited, Admitted)
                | (Proposed, Admitted)
                | (Proposed, Rejected)
                | (Admitted, Removed)
                | (Invited, Removed)
        ) || self == next
    }
}

/// Observed state of a `ChainMember`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainMemberStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MemberPhase>,
    #[serde(default)]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
    /// The governance proposal the member's admission (or removal) needs next, published
    /// for the holders of the members' admin keys to approve. Absent when nothing is to
    /// be approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<MemberGovernance>,
    /// The member's validators and where each stands on chain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<MemberNodeStatus>,
}

/// A governance proposal waiting for approvals.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberGovernance {
    /// `Admit` or `Remove`.
    pub action: String,
    /// The on-chain member (validator) the proposal is about.
    pub node: String,
    pub chain_id: String,
    /// The registry's governance sequence the proposal carries.
    pub sequence: i64,
    /// Hex encoding of the proposal: what `trellis-node governance sign --proposal` signs.
    pub proposal: String,
    /// Hex SHA-256 of the proposal (its identity).
    pub proposal_hash: String,
    /// Approvals the chain needs now (more than 2/3 of its members).
    pub threshold: i32,
    /// Hex admin keys of the current members: who may approve.
    pub approvers: Vec<String>,
    /// Hex hash of the governance transaction the operator submitted for this proposal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_tx: Option<String>,
}

/// One validator of a member.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberNodeStatus {
    /// Pod name, which is also the validator's member name on chain.
    pub name: String,
    /// Hex node public key.
    pub node_key: String,
    /// `Absent`, `AdmissionPending`, `Member` or `RemovalPending`.
    pub chain: String,
}

/// The `ChainMember` CRD.
pub fn crd() -> CustomResourceDefinition {
    ChainMember::crd()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_core::cel::Validator;
    use serde_json::{Value, json};

    fn cel_errors(spec: Value, old: Option<Value>) -> Vec<String> {
        let crd = crd();
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let wrap = |spec: Value| {
            json!({"apiVersion": "trellis.dev/v1alpha1", "kind": "ChainMember",
                   "metadata": {"name": "m", "namespace": "t"}, "spec": spec})
        };
        let old = old.map(wrap);
        match Validator::new().validate(&schema, &wrap(spec), old.as_ref()) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.into_vec().iter().map(|e| e.to_string()).collect(),
        }
    }

    fn spec() -> Value {
        json!({"network": {"name": "alpha"}, "organization": "org-b",
               "adminPublicKey": "cd".repeat(32), "nodes": 1})
    }

    #[test]
    fn network_and_organization_are_immutable() {
        assert_eq!(cel_errors(spec(), Some(spec())), Vec::<String>::new());
        let mut moved = spec();
        moved["network"] = json!({"name": "beta"});
        assert!(
            cel_errors(moved, Some(spec()))
                .iter()
                .any(|e| e.contains("network is immutable"))
        );
        let mut renamed = spec();
        renamed["organization"] = json!("org-c");
        assert!(
            cel_errors(renamed, Some(spec()))
                .iter()
                .any(|e| e.contains("organization is immutable"))
        );
    }

    #[test]
    fn phases_only_move_forward() {
        use MemberPhase::*;
        assert!(Invited.can_become(Proposed));
        assert!(Proposed.can_become(Admitted));
        assert!(Admitted.can_become(Removed));
        assert!(!Admitted.can_become(Invited));
        assert!(!Rejected.can_become(Admitted));
        assert!(!Removed.can_become(Admitted));
    }

    #[test]
    fn crd_names() {
        let crd = crd();
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["cmem".to_owned()][..])
        );
        assert!(
            crd.spec.versions[0]
                .subresources
                .as_ref()
                .unwrap()
                .status
                .is_some()
        );
    }
}
