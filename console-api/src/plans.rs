//! Plans and their quotas, enforced when desired state is written (create, update), so
//! a tenant can never ask the provisioner for more than its plan allows.
//!
//! Node counts are taken at the network's *maximum* scale (`shards.max`), because the
//! autoscaler may take it there without another request passing this check.
//!
//! Plans are stored (`billing_plans`, editable by a platform admin through the billing
//! API); [`limits`] holds the built-in defaults the first migration seeds them with.

use axum::http::StatusCode;

use crate::error::ApiError;
use crate::networks::spec::NetworkSpec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    pub networks: u64,
    pub shards_per_network: u32,
    /// Validator nodes across all of the tenant's networks at maximum scale.
    pub nodes: u64,
    /// Ledger storage across all of the tenant's networks at maximum scale, GiB.
    pub storage_gib: u64,
}

pub const DEFAULT_PLAN: &str = "free";

/// The built-in limits of a plan; an unknown plan gets the free plan's.
pub fn limits(plan: &str) -> PlanLimits {
    match plan {
        "team" => PlanLimits {
            networks: 25,
            shards_per_network: 32,
            nodes: 400,
            storage_gib: 4_000,
        },
        "enterprise" => PlanLimits {
            networks: 500,
            shards_per_network: 256,
            nodes: 20_000,
            storage_gib: 200_000,
        },
        _ => PlanLimits {
            networks: 3,
            shards_per_network: 8,
            nodes: 64,
            storage_gib: 640,
        },
    }
}

/// Validator nodes of a network at its maximum scale: the beacon committee plus
/// `validators_per_shard` on each of `shards.max` shards, plus the validator pool.
pub fn max_nodes(spec: &NetworkSpec) -> u64 {
    u64::from(spec.beacon_validators)
        + u64::from(spec.shards.max) * u64::from(spec.validators_per_shard)
        + u64::from(spec.validator_pool)
}

fn exceeded(detail: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", detail)
}

/// The stored limits of `plan`; a plan that is not stored gets the stored free plan's
/// (or, before any plan is stored, the built-in ones).
pub async fn stored_limits(
    conn: &impl sea_orm::ConnectionTrait,
    plan: &str,
) -> Result<PlanLimits, ApiError> {
    use sea_orm::EntityTrait;
    use trellis_console_entity::billing_plan;
    let row = match billing_plan::Entity::find_by_id(plan.to_string())
        .one(conn)
        .await?
    {
        Some(row) => Some(row),
        None => {
            billing_plan::Entity::find_by_id(DEFAULT_PLAN.to_string())
                .one(conn)
                .await?
        }
    };
    let whole = |value: i64| u64::try_from(value).unwrap_or(0);
    Ok(match row {
        Some(row) => PlanLimits {
            networks: whole(row.networks),
            shards_per_network: u32::try_from(row.shards_per_network).unwrap_or(0),
            nodes: whole(row.nodes),
            storage_gib: whole(row.storage_gib),
        },
        None => limits(plan),
    })
}

/// Checks `spec` against the plan's stored limits, given the tenant's other networks
/// (`other_networks` of them, with `other_nodes` nodes at maximum scale).
pub async fn check_stored(
    conn: &impl sea_orm::ConnectionTrait,
    plan: &str,
    spec: &NetworkSpec,
    other_networks: u64,
    other_nodes: u64,
) -> Result<(), ApiError> {
    let limits = stored_limits(conn, plan).await?;
    check(plan, &limits, spec, other_networks, other_nodes)
}

/// Checks `spec` against `limits`, given the tenant's other networks (`other_networks`
/// of them, with `other_nodes` nodes at maximum scale).
pub fn check(
    plan: &str,
    limits: &PlanLimits,
    spec: &NetworkSpec,
    other_networks: u64,
    other_nodes: u64,
) -> Result<(), ApiError> {
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
    let storage = (other_nodes + nodes) * crate::billing::ledger::STORAGE_GIB_PER_NODE;
    if storage > limits.storage_gib {
        return Err(exceeded(format!(
            "at maximum scale the tenant's networks would hold {storage} GiB of ledger \
             storage ({} GiB per node); the {plan} plan allows {} GiB — lower shards.max \
             or validators, or upgrade the plan",
            crate::billing::ledger::STORAGE_GIB_PER_NODE,
            limits.storage_gib
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
            validator_pool: None,
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
        let mut pooled = spec(8);
        pooled.validator_pool = 3;
        assert_eq!(
            max_nodes(&pooled),
            4 + 8 * 4 + 3,
            "pool validators are nodes too"
        );
    }

    #[test]
    fn free_plan_limits_are_enforced_with_advice() {
        let free = limits("free");
        assert!(check("free", &free, &spec(8), 0, 0).is_ok());
        let too_many_shards = check("free", &free, &spec(9), 0, 0).unwrap_err();
        assert_eq!(too_many_shards.code, "quota_exceeded");
        assert!(too_many_shards.detail.contains("lower shards.max to 8"));
        assert!(check("free", &free, &spec(1), 3, 0).is_err());
        assert!(check("free", &free, &spec(8), 1, 36).is_err());
        assert!(check("free", &free, &spec(8), 1, 28).is_ok());
        assert!(check("team", &limits("team"), &spec(9), 0, 0).is_ok());
        assert_eq!(limits("no-such-plan"), free);
        let small_disks = PlanLimits {
            storage_gib: 300,
            ..free
        };
        let err = check("free", &small_disks, &spec(8), 0, 0).unwrap_err();
        assert!(err.detail.contains("360 GiB"), "{}", err.detail);
    }
}
