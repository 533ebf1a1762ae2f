//! The validator pool: validators registered with the beacon for shard "any", which its
//! seeded shuffle places in a shard committee every epoch (see docs/sharding.md,
//! "Validators that follow the beacon's shuffle").
//!
//! Pure. One StatefulSet `<network>-pool` runs them (`[role] kind = "shard", shard =
//! "any"`); they are in no genesis. The beacon's shard map of the current epoch is the
//! only record of where they are, and every step is read from it, so each reconcile
//! takes up where the last one stopped (an operator crash leaves nothing half done):
//!
//! * a wanted validator (ordinal below `spec.validatorPool.replicas`) that no committee
//!   includes is registered for shard "any" (again on every reconcile until the beacon
//!   places it; a registration already executed is refused as unchanged, which counts
//!   as done), and placed at the next epoch boundary;
//! * a validator scaled away (ordinal at or above the replicas) that a committee still
//!   includes is deregistered, and keeps its pod — it is voting in that committee —
//!   until the beacon's next epoch leaves it out; then the StatefulSet shrinks.
//!
//! Without the beacon's map (not answering yet), nothing is registered and the pool
//! keeps every pod it has.

use std::collections::BTreeMap;

use trellis_crd::topology::Committee;
use trellis_crd::{PoolValidatorState, PoolValidatorStatus, ValidatorPoolStatus};

use crate::chain::ChainError;

/// Where the pool stands against the beacon's map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPlan {
    /// `spec.validatorPool.replicas`.
    pub desired: u32,
    /// Pods to keep: the wanted ones and every leaving one still placed.
    pub provisioned: u32,
    /// Every pool validator known (ordinals `0..` the candidates), in ordinal order.
    pub validators: Vec<PoolValidatorStatus>,
    /// Pod names to register for shard "any".
    pub join: Vec<String>,
    /// Pod names to deregister.
    pub leave: Vec<String>,
    /// The beacon's map was read.
    pub beacon_read: bool,
}

impl PoolPlan {
    /// Something to submit to the beacon.
    pub fn needs_beacon(&self) -> bool {
        !self.join.is_empty() || !self.leave.is_empty()
    }
}

/// Plans the pool. `candidates`: the pool committee planned with every ordinal that may
/// still run (the wanted ones, and those an earlier, larger pool left); `keys`: their
/// node public keys (hex) by pod name; `placements`: the shard of every validator in a
/// committee of the beacon's current epoch, by hex node key (None: the map is unknown).
pub fn plan(
    desired: u32,
    candidates: Option<&Committee>,
    keys: &BTreeMap<String, String>,
    placements: Option<&BTreeMap<String, u16>>,
) -> PoolPlan {
    let mut plan = PoolPlan {
        desired,
        provisioned: desired,
        validators: Vec::new(),
        join: Vec::new(),
        leave: Vec::new(),
        beacon_read: placements.is_some(),
    };
    let Some(candidates) = candidates else {
        return plan;
    };
    for node in &candidates.nodes {
        let key = keys.get(&node.name).cloned().unwrap_or_default();
        let shard = placements.and_then(|p| p.get(&key.to_ascii_lowercase()).copied());
        let wanted = node.ordinal < desired;
        let state = match (wanted, shard) {
            (true, Some(_)) => PoolValidatorState::Placed,
            (true, None) => PoolValidatorState::Registering,
            (false, _) => PoolValidatorState::Leaving,
        };
        match (wanted, shard, placements) {
            (true, None, Some(_)) if !key.is_empty() => plan.join.push(node.name.clone()),
            (false, Some(_), _) => plan.leave.push(node.name.clone()),
            _ => {}
        }
        // A leaving validator stays while the beacon places it, or while the map is
        // unknown (it may be placed).
        let stays = wanted || shard.is_some() || placements.is_none();
        if stays {
            plan.provisioned = plan.provisioned.max(node.ordinal + 1);
            plan.validators.push(PoolValidatorStatus {
                name: node.name.clone(),
                node_key: key,
                shard: shard.map(i32::from),
                state,
            });
        }
    }
    plan
}

/// The pool's status: `ready` pool pods, and the outcome of this reconcile's
/// registration step (None when there was nothing to submit). None when the network
/// has no pool and `had_one` is false (a pool scaled to 0 keeps a status saying so: a
/// merge patch cannot remove the field).
pub fn status(
    plan: &PoolPlan,
    ready: i32,
    submission: Option<&Result<(), ChainError>>,
    had_one: bool,
) -> Option<ValidatorPoolStatus> {
    if plan.desired == 0 && plan.validators.is_empty() && !had_one {
        return None;
    }
    let count = |state| plan.validators.iter().filter(|v| v.state == state).count();
    let placed = count(PoolValidatorState::Placed);
    let registering = count(PoolValidatorState::Registering);
    let leaving = count(PoolValidatorState::Leaving);
    let mut parts = Vec::new();
    if !plan.beacon_read && (plan.desired > 0 || !plan.validators.is_empty()) {
        parts.push("the beacon's shard map is not readable yet".to_owned());
    }
    if registering > 0 {
        parts.push(format!(
            "{registering} registered for shard \"any\" or being registered; the beacon \
             places them at its next epoch boundary"
        ));
    }
    if leaving > 0 {
        parts.push(format!(
            "{leaving} deregistered; their pods stay until the beacon's next epoch leaves \
             them out"
        ));
    }
    if let Some(Err(e)) = submission {
        parts.push(format!("the beacon step failed: {e}"));
    }
    Some(ValidatorPoolStatus {
        replicas: i32::try_from(plan.desired).unwrap_or(i32::MAX),
        ready_replicas: ready,
        placed: i32::try_from(placed).unwrap_or(i32::MAX),
        validators: plan.validators.clone(),
        message: (!parts.is_empty()).then(|| parts.join("; ")),
    })
}

/// Pool ordinals that may still run: the wanted ones, the StatefulSet's replicas
/// (`observed_replicas`) and every one the last status listed (a pool scaled down keeps
/// its leaving validators until the beacon leaves them out, also across an operator
/// restart or a stop).
pub fn candidates(
    desired: u32,
    observed_replicas: i32,
    previous: Option<&ValidatorPoolStatus>,
    pool_name: &str,
) -> u32 {
    let prefix = format!("{pool_name}-");
    let listed = previous
        .into_iter()
        .flat_map(|p| p.validators.iter())
        .filter_map(|v| v.name.strip_prefix(&prefix)?.parse::<u32>().ok())
        .map(|ordinal| ordinal.saturating_add(1))
        .max()
        .unwrap_or(0);
    desired
        .max(u32::try_from(observed_replicas).unwrap_or(0))
        .max(listed)
        // The CRD's bound, against a status someone else wrote.
        .min(
            u32::try_from(trellis_crd::network::MAX_VALIDATORS)
                .unwrap_or(0)
                .max(desired),
        )
}

/// Whether `previous` said the pool of `desired` validators is settled: all placed and
/// none leaving. The reconciler then reads keys from its cache (nothing to sign).
pub fn settled(previous: Option<&ValidatorPoolStatus>, desired: u32) -> bool {
    let desired = i32::try_from(desired).unwrap_or(i32::MAX);
    match previous {
        None => desired == 0,
        Some(p) => {
            p.replicas == desired
                && p.placed == desired
                && p.validators.len() == usize::try_from(desired).unwrap_or(usize::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_crd::topology::{NetworkId, pool_committee};

    fn pool(size: u32) -> Committee {
        pool_committee(&NetworkId::new("ns", "net"), size)
    }

    fn keys(size: u32) -> BTreeMap<String, String> {
        (0..size)
            .map(|i| (format!("net-pool-{i}"), format!("{i:064x}")))
            .collect()
    }

    fn key(i: u32) -> String {
        format!("{i:064x}")
    }

    #[test]
    fn unplaced_wanted_validators_are_registered_placed_ones_reported() {
        let placements = BTreeMap::from([(key(0), 1u16)]);
        let plan = plan(2, Some(&pool(2)), &keys(2), Some(&placements));
        assert_eq!(plan.provisioned, 2);
        assert_eq!(plan.join, ["net-pool-1"]);
        assert!(plan.leave.is_empty());
        assert_eq!(plan.validators[0].shard, Some(1));
        assert_eq!(plan.validators[0].state, PoolValidatorState::Placed);
        assert_eq!(plan.validators[1].state, PoolValidatorState::Registering);
        let status = status(&plan, 1, Some(&Ok(())), false).unwrap();
        assert_eq!(
            (status.replicas, status.ready_replicas, status.placed),
            (2, 1, 1)
        );
        assert!(
            status
                .message
                .unwrap()
                .contains("1 registered for shard \"any\""),
            "the status says what it waits for"
        );
    }

    #[test]
    fn a_settled_pool_submits_nothing() {
        let placements = BTreeMap::from([(key(0), 0u16), (key(1), 1u16)]);
        let plan = plan(2, Some(&pool(2)), &keys(2), Some(&placements));
        assert!(!plan.needs_beacon());
        let status = status(&plan, 2, None, true).unwrap();
        assert_eq!(status.placed, 2);
        assert_eq!(status.message, None);
        assert!(settled(Some(&status), 2));
        assert!(!settled(Some(&status), 3), "a larger pool is not settled");
        assert!(!settled(None, 1));
        assert!(settled(None, 0));
    }

    #[test]
    fn scaled_away_validators_leave_through_the_beacon_before_their_pods_go() {
        // Pool 3 -> 1: ordinal 2 is still placed (deregistered, its pod kept), ordinal
        // 1 is no longer placed (its pod goes).
        let placements = BTreeMap::from([(key(0), 0u16), (key(2), 1u16)]);
        let plan = plan(1, Some(&pool(3)), &keys(3), Some(&placements));
        assert_eq!(plan.leave, ["net-pool-2"]);
        assert!(plan.join.is_empty());
        assert_eq!(plan.provisioned, 3, "ordinal 2 still votes in shard 1");
        let names: Vec<_> = plan.validators.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["net-pool-0", "net-pool-2"]);
        assert_eq!(plan.validators[1].state, PoolValidatorState::Leaving);
        // Once the beacon leaves it out, the pool shrinks to what is wanted.
        let after = BTreeMap::from([(key(0), 0u16)]);
        let plan = plan_after(&after);
        assert_eq!(plan.provisioned, 1);
        assert!(!plan.needs_beacon());
        let status = status(&plan, 1, None, true).unwrap();
        assert_eq!(status.validators.len(), 1);
        assert!(settled(Some(&status), 1));
    }

    fn plan_after(placements: &BTreeMap<String, u16>) -> PoolPlan {
        plan(1, Some(&pool(3)), &keys(3), Some(placements))
    }

    #[test]
    fn without_the_beacons_map_nothing_is_submitted_and_nothing_removed() {
        let plan = plan(1, Some(&pool(3)), &keys(3), None);
        assert!(!plan.needs_beacon());
        assert_eq!(plan.provisioned, 3);
        let status = status(&plan, 0, None, false).unwrap();
        assert!(status.message.unwrap().contains("not readable yet"));
    }

    #[test]
    fn candidates_cover_every_pod_that_may_still_run() {
        let leaving = PoolValidatorStatus {
            name: "net-pool-4".into(),
            node_key: key(4),
            shard: Some(0),
            state: PoolValidatorState::Leaving,
        };
        let previous = ValidatorPoolStatus {
            validators: vec![leaving],
            ..ValidatorPoolStatus::default()
        };
        assert_eq!(candidates(2, 0, None, "net-pool"), 2);
        assert_eq!(candidates(2, 3, None, "net-pool"), 3);
        assert_eq!(candidates(1, 0, Some(&previous), "net-pool"), 5);
        assert_eq!(candidates(0, 0, Some(&previous), "other-pool"), 0);
    }

    #[test]
    fn no_pool_has_no_status_unless_it_had_one() {
        let plan = plan(0, None, &BTreeMap::new(), None);
        assert_eq!(status(&plan, 0, None, false), None);
        let emptied = status(&plan, 0, None, true).unwrap();
        assert_eq!((emptied.replicas, emptied.placed), (0, 0));
        assert!(emptied.validators.is_empty());
    }

    #[test]
    fn a_refused_step_is_said() {
        let plan = plan(1, Some(&pool(1)), &keys(1), Some(&BTreeMap::new()));
        let refused = Err(ChainError::Refused("no".into()));
        let status = status(&plan, 0, Some(&refused), false).unwrap();
        assert!(
            status
                .message
                .unwrap()
                .contains("the beacon step failed: refused: no")
        );
    }
}
