//! Trellis custom resources and the pure topology planner.
//!
//! This crate is shared by the operator and the console (whose local provisioner runs the
//! same planned topology as local processes). It depends on the Kubernetes *types* only
//! (`kube-core`, `kube-derive`, `k8s-openapi`): no client, no runtime, no I/O.
//!
//! * [`ChainNetwork`]: a sharded public chain or a permissioned consortium chain.
//! * [`ChainMember`]: one consortium organisation and its admission state.
//! * [`validate`]: the same invariants the CRD's CEL rules enforce, for objects that
//!   reached us without passing them (older CRD versions, other writers, local mode).
//! * [`topology`]: spec in, committees / node names / quorum sizes / key slots /
//!   genesis inputs out.
//! * [`founders`]: which founding consortium member can leave, and the committees
//!   without those that left.

pub mod founders;
pub mod member;
pub mod network;
pub mod topology;
pub mod validate;

pub use member::{
    ChainMember, ChainMemberSpec, ChainMemberStatus, MemberGovernance, MemberNodeStatus,
    MemberPhase,
};
pub use network::{
    AutoscalerStatus, AutoscalingSpec, BeaconSpec, ChainNetwork, ChainNetworkSpec,
    ChainNetworkStatus, CommitteeStatus, ConsortiumMember, GenesisAllocation, NetworkEndpoints,
    NetworkMode, NetworkPhase, NodeSpec, PoolValidatorState, PoolValidatorStatus, ShardStatus,
    ShardsSpec, StorageSpec, ValidatorPoolSpec, ValidatorPoolStatus,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// API group of every Trellis resource.
pub const GROUP: &str = "trellis.dev";
/// Served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `kubectl get trellis` lists every Trellis resource.
pub const CATEGORY: &str = "trellis";

/// Every CRD this crate defines, in a stable order (the chart's `crds/` folder holds one
/// file per entry, named `<plural>.<group>.yaml`).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![network::crd(), member::crd()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_are_distinct_and_in_the_trellis_group() {
        let crds = crds();
        let names: Vec<_> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            ["chainnetworks.trellis.dev", "chainmembers.trellis.dev"]
        );
        for crd in &crds {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(
                crd.spec.names.categories.as_deref(),
                Some(&[CATEGORY.to_owned()][..])
            );
        }
    }
}
