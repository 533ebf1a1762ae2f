//! Labels and names shared by every child object.
//!
//! Every child carries the recommended `app.kubernetes.io/*` labels plus Trellis' own
//! `trellis.dev/*` ones. Selectors use a small, never-changing subset, because a
//! StatefulSet's selector is immutable.

use std::collections::BTreeMap;

use trellis_crd::topology::{Committee, CommitteeRole};

pub const NAME: &str = "app.kubernetes.io/name";
pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const PART_OF: &str = "app.kubernetes.io/part-of";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const VERSION: &str = "app.kubernetes.io/version";
pub const COMMITTEE: &str = "trellis.dev/committee";
pub const SHARD: &str = "trellis.dev/shard";
/// On a `ChainMember`'s children (not its pods): the namespace of the network its
/// validators vote in, which may differ from theirs. With `app.kubernetes.io/instance`
/// it names the network a member's StatefulSet counts for (the network controller's
/// watch maps by it; an owner reference cannot point across namespaces).
pub const NETWORK_NAMESPACE: &str = "trellis.dev/network-namespace";

/// The `app.kubernetes.io/name` of every node pod.
pub const NODE_APP: &str = "trellis-node";
/// The server-side-apply field manager and `app.kubernetes.io/managed-by` value.
pub const MANAGER: &str = "trellis-operator";
/// `app.kubernetes.io/component` of network-wide children (RPC Service, genesis, policy).
pub const NETWORK_COMPONENT: &str = "network";

/// Labels of a network-wide child of `network`.
pub fn network_labels(network: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.to_owned(), NODE_APP.to_owned()),
        (INSTANCE.to_owned(), network.to_owned()),
        (COMPONENT.to_owned(), NETWORK_COMPONENT.to_owned()),
        (PART_OF.to_owned(), "trellis".to_owned()),
        (MANAGED_BY.to_owned(), MANAGER.to_owned()),
    ])
}

/// Labels of a committee's children (StatefulSet, pods, Services, PDB, key Secret).
pub fn committee_labels(network: &str, committee: &Committee) -> BTreeMap<String, String> {
    let mut labels = network_labels(network);
    labels.insert(COMPONENT.to_owned(), committee.role.component().to_owned());
    labels.insert(COMMITTEE.to_owned(), committee.name.clone());
    if let CommitteeRole::Shard(n) = committee.role {
        labels.insert(SHARD.to_owned(), n.to_string());
    }
    labels
}

/// Labels of a committee's pods: its children's labels, except that the validator pool's
/// pods say `component: shard`. A pool validator serves a shard (whichever the beacon
/// placed it in) and routes a client's request like any shard node, and the client RPC
/// Service selects `component: shard` ([`component_selector`]). Giving the pool pods
/// that value, rather than widening the Service's selector with a label of their own,
/// leaves every shard pod's template as it was: no shard StatefulSet rolls on an
/// operator upgrade (only the pool's does, one validator at a time). Nothing else tells
/// pool pods from shard pods by `component`: committee selectors (StatefulSets, PDBs,
/// topology spread) use `trellis.dev/committee`, which stays `<network>-pool`, and the
/// pool pods carry no `trellis.dev/shard`.
pub fn pod_labels(network: &str, committee: &Committee) -> BTreeMap<String, String> {
    let mut labels = committee_labels(network, committee);
    if committee.role == CommitteeRole::Pool {
        labels.insert(
            COMPONENT.to_owned(),
            CommitteeRole::Shard(0).component().to_owned(),
        );
    }
    labels
}

/// The immutable selector of a committee's pods.
pub fn committee_selector(network: &str, committee: &Committee) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.to_owned(), NODE_APP.to_owned()),
        (INSTANCE.to_owned(), network.to_owned()),
        (COMMITTEE.to_owned(), committee.name.clone()),
    ])
}

/// Selects every node pod of `network` of `component` (`beacon` / `shard`).
pub fn component_selector(network: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.to_owned(), NODE_APP.to_owned()),
        (INSTANCE.to_owned(), network.to_owned()),
        (COMPONENT.to_owned(), component.to_owned()),
    ])
}

/// Label-selector string (`k=v,k=v`), e.g. for the scale subresource's `status.selector`.
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Selects every child the operator manages for `network` (orphan clean-up).
pub fn managed_children_selector(network: &str) -> String {
    format!("{INSTANCE}={network},{MANAGED_BY}={MANAGER}")
}
