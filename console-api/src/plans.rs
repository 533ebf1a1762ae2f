//! Plans and their quotas, enforced when desired state is written (create, update), so
//! a tenant can never ask the provisioner for more than its plan allows.
//!
//! Node counts are taken at the network's *maximum* scale (`shards.max`), because the
//! autoscaler may take it there without another request passing this check.

use axum::http::StatusCode;

use crate::error::ApiError;
use crate::networks::spec::NetworkSpec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    pub networks: u64,
    pub shards_per_network: u32,
    /// Validator nodes across all of the tenant's networks at maximum scale.
    pub nodes: u64,
}

pub const DEFAULT_PLAN: &str = "free";

/// The limits of a plan; an unknown plan gets the free plan's.
pub fn limits(plan: &str) -> PlanLimits {
    match plan {
        "team" => PlanLimits {
            networks: 25,
            shards_per_network: 32,
            nodes: 400,
        },
        "enterprise" => PlanLimits {
            networks: 500,
            shards_per_network: 256,
            nodes: 20_000,
        },
        _ => PlanLimits {
            networks: 3,
            shards_per_network: 8,
            nodes: 64,
        },
    }
}

/// Validator nodes of a network at its maximum scale: the beacon committee plus
/// `validators_per_shard` on each of `shards.max` shards.
pub fn max_nodes(spec: &NetworkSpec) -> u64 {
    u64::from(spec.beacon_validators)
        + u64::from(spec.shards.max) * u64::from(spec.validators_per_shard)
}

fn exceeded(detail: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", detail)
}

/// Checks `spec` against the plan, given the tenant's other networks (`other_networks`
/// of them, with `other_nodes` nodes at maximum scale).
pub fn check(
    plan: &str,
    spec: &NetworkSpec,
    other_networks: u64,
    other_nodes: u64,
) -> Result<(), ApiError> {
    let limits = limits(plan);
    if other_networks + 1 > limits.networks {
        return Err(exceeded(format!(
            "the {plan} plan allows {} networks and this tenant has {other_networks}; delete \
             one or upgrade the plan",
            limits.networks
        )));
    }
    if spec.shards.max > limits.shards_per_network {
        return Err(exceeded(format!(
            "the {plan} plan allows at most {} shards per network; lower shards.max to {} or \
             upgrade the plan",
            limits.shards_per_network, limits.shards_per_network
        )));
    }
    let nodes = max_nodes(spec);
    if other_nodes + nodes > limits.nodes {
        return Err(exceeded(format!(
            "at maximum scale this network runs {nodes} validator nodes and the tenant's other \
             networks {other_nodes}; the {plan} plan allows {} in all — lower shards.max or \
             validators, or upgrade the plan",
            limits.nodes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::networks::spec::{CreateNetworkRequest, NetworkMode, ShardRange};

    fn spec(max: u32) -> NetworkSpec {
        NetworkSpec::from_create(&CreateNetworkRequest {
            name: "n".into(),
            mode: NetworkMode::Public,
            shards: Some(ShardRange {
                count: 1,
                min: 1,
                max,
            }),
            validators_per_shard: Some(4),
            beacon_validators: Some(4),
            node_version: None,
            autoscaling: None,
            members: vec![],
            epoch_length: None,
            retain_ledger_on_delete: None,
        })
        .unwrap()
    }

    #[test]
    fn nodes_count_at_maximum_scale() {
        assert_eq!(max_nodes(&spec(8)), 4 + 8 * 4);
    }

    #[test]
    fn free_plan_limits_are_enforced_with_advice() {
        assert!(check("free", &spec(8), 0, 0).is_ok());
        let too_many_shards = check("free", &spec(9), 0, 0).unwrap_err();
        assert_eq!(too_many_shards.code, "quota_exceeded");
        assert!(too_many_shards.detail.contains("lower shards.max to 8"));
        assert!(check("free", &spec(1), 3, 0).is_err());
        assert!(check("free", &spec(8), 1, 36).is_err());
        assert!(check("free", &spec(8), 1, 28).is_ok());
        assert!(check("team", &spec(9), 0, 0).is_ok());
        assert_eq!(limits("no-such-plan"), limits("free"));
    }
}
