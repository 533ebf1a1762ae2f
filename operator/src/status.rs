//! Status: conditions, phase and per-committee figures, computed from what was observed.
//!
//! Pure. Conditions follow the Kubernetes API conventions: keyed by type, CamelCase
//! reasons, `lastTransitionTime` changes only when the status does, `observedGeneration`
//! on each. Object readiness (`Ready`, `Progressing`, `Degraded`, `Scaling`) comes from
//! the StatefulSets; `ChainHealthy` comes only from the chain (see [`crate::chain`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use trellis_crd::topology::{CommitteeRole, Topology};
use trellis_crd::validate::InvalidSpec;
use trellis_crd::{
    ChainNetworkSpec, ChainNetworkStatus, CommitteeStatus, NetworkEndpoints, NetworkPhase,
    ShardStatus,
};

use crate::chain::{BeaconView, ChainError, CommitteeChain};
use crate::rollout::RolloutStep;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const SCALING: &str = "Scaling";
pub const CHAIN_HEALTHY: &str = "ChainHealthy";

/// A condition's desired state, before timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionUpdate {
    pub type_: &'static str,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl ConditionUpdate {
    fn new(type_: &'static str, status: bool, reason: &'static str, message: String) -> Self {
        Self {
            type_,
            status: if status { "True" } else { "False" },
            reason,
            message,
        }
    }

    fn unknown(type_: &'static str, reason: &'static str, message: String) -> Self {
        Self {
            type_,
            status: "Unknown",
            reason,
            message,
        }
    }
}

/// Applies `update` to `conditions`: keeps `lastTransitionTime` when the status is
/// unchanged, sets it to `now` when it changes or the condition is new.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    update: ConditionUpdate,
    generation: Option<i64>,
    now: &Time,
) {
    let transition = conditions
        .iter()
        .find(|c| c.type_ == update.type_)
        .filter(|c| c.status == update.status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    let condition = Condition {
        type_: update.type_.to_owned(),
        status: update.status.to_owned(),
        reason: update.reason.to_owned(),
        message: update.message,
        observed_generation: generation,
        last_transition_time: transition,
    };
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

/// A condition whose status changed between two statuses (the Events to publish).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// Conditions of `next` that are new or whose status or reason differs from `previous`.
pub fn transitions(previous: &[Condition], next: &[Condition]) -> Vec<Transition> {
    next.iter()
        .filter(|n| {
            !previous
                .iter()
                .any(|p| p.type_ == n.type_ && p.status == n.status && p.reason == n.reason)
        })
        .map(|n| Transition {
            type_: n.type_.clone(),
            status: n.status.clone(),
            reason: n.reason.clone(),
            message: n.message.clone(),
        })
        .collect()
}

/// What one committee's StatefulSet reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObservedCommittee {
    /// `spec.replicas` as the StatefulSet controller has seen it.
    pub replicas: i32,
    pub ready_replicas: i32,
    /// All pods run the current revision.
    pub updated: bool,
}

pub use crate::reshard::{ScaleStep, ShardPlan, plan_shards};

/// A shard committee's chain reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardChain {
    pub chain: CommitteeChain,
    /// How long the committee's finalized height has not moved, as far as the operator
    /// has seen (zero when it just moved or is seen for the first time).
    pub unchanged_for: Duration,
}

/// A finalized height that has not moved for this long means the shard stopped
/// finalizing (blocks finalize every few seconds when healthy, even without traffic).
pub const FINALITY_STALL: Duration = Duration::from_secs(30);

/// `ChainHealthy` of one shard: `Ok((healthy, reason, message))`, or `Err((reason,
/// message))` when no node answered (Unknown: the chain could not be asked).
fn shard_health(
    committee: &trellis_crd::topology::Committee,
    reading: &ShardChain,
) -> Result<(bool, &'static str, String), (&'static str, String)> {
    let answered: Vec<_> = reading.chain.answered().collect();
    if answered.is_empty() {
        let mut errors = reading
            .chain
            .nodes
            .values()
            .filter_map(|r| r.as_ref().err());
        return match errors.next() {
            Some(ChainError::NotImplemented(call)) => Err((
                "NodeRpcNotImplemented",
                format!(
                    "{}: {call} is not implemented by trellis-node",
                    committee.name
                ),
            )),
            Some(e) => Err((
                "NodesUnreachable",
                format!("{}: no validator answers ({e})", committee.name),
            )),
            None => Err((
                "NodesUnreachable",
                format!("{}: no validator asked", committee.name),
            )),
        };
    }
    let height = answered
        .iter()
        .map(|(_, s)| s.finalized_height)
        .max()
        .unwrap_or(0);
    let epoch = answered.iter().map(|(_, s)| s.epoch).max().unwrap_or(0);
    // A node counts itself and the peers it hears from; the best-connected one shows
    // whether a quorum of the committee can talk at all.
    let connected = answered
        .iter()
        .map(|(_, s)| s.peers.saturating_add(1))
        .max()
        .unwrap_or(0);
    let quorum = usize::try_from(committee.quorum).unwrap_or(usize::MAX);
    let summary = format!(
        "{}: finalized height {height}, epoch {epoch}, {}/{} validators answering, {connected} connected",
        committee.name,
        answered.len(),
        committee.validators
    );
    if connected < quorum {
        return Ok((
            false,
            "QuorumNotConnected",
            format!("{summary}; quorum is {quorum}"),
        ));
    }
    if height == 0 || reading.unchanged_for >= FINALITY_STALL {
        return Ok((
            false,
            "NotFinalizing",
            format!(
                "{summary}; unchanged for {}s",
                reading.unchanged_for.as_secs()
            ),
        ));
    }
    Ok((true, "Finalizing", summary))
}

/// How often chain figures (heights, epochs, the `ChainHealthy` message) may rewrite the
/// status. They move with every block; writing each change would wake the controller's
/// own watch and reconcile a healthy network in a loop.
pub const CHAIN_REFRESH: Duration = Duration::from_secs(30);

/// Keeps `previous`'s chain figures in `next` where only they moved: per-shard finalized
/// height, epoch and mempool depth, the network epoch, and the `ChainHealthy` message.
/// Nothing is kept when `ChainHealthy` changed status or reason (a transition is written
/// with fresh figures at once), nor where `previous` had no figure yet. Returns whether
/// anything was kept back.
pub fn keep_chain_figures(next: &mut ChainNetworkStatus, previous: &ChainNetworkStatus) -> bool {
    let old = previous
        .conditions
        .iter()
        .find(|c| c.type_ == CHAIN_HEALTHY);
    let Some(new) = next
        .conditions
        .iter_mut()
        .find(|c| c.type_ == CHAIN_HEALTHY)
    else {
        return false;
    };
    let Some(old) = old.filter(|o| o.status == new.status && o.reason == new.reason) else {
        return false;
    };
    new.message = old.message.clone();
    fn keep<T: Clone>(new: &mut Option<T>, old: &Option<T>) {
        if old.is_some() {
            new.clone_from(old);
        }
    }
    for shard in &mut next.shards {
        if let Some(old) = previous.shards.iter().find(|s| s.id == shard.id) {
            keep(&mut shard.finalized_height, &old.finalized_height);
            keep(&mut shard.epoch, &old.epoch);
            keep(&mut shard.mempool_depth, &old.mempool_depth);
            keep(&mut shard.tx_per_second, &old.tx_per_second);
        }
    }
    keep(&mut next.epoch, &previous.epoch);
    true
}

/// Everything the status is computed from.
pub struct StatusInput<'a> {
    pub generation: Option<i64>,
    pub spec: &'a ChainNetworkSpec,
    /// `Err` when the spec is invalid.
    pub topology: Result<&'a Topology, &'a InvalidSpec>,
    /// StatefulSet figures by committee name.
    pub observed: &'a BTreeMap<String, ObservedCommittee>,
    pub shards: Option<ShardPlan>,
    /// Outcome of the beacon step: its view, or why there is none.
    pub chain: &'a Result<BeaconView, ChainError>,
    /// What each in-service shard's validators answered, by shard id.
    pub shard_chain: &'a BTreeMap<u16, ShardChain>,
    /// Rolls under way, by committee name.
    pub rollouts: &'a BTreeMap<String, RolloutStep>,
    /// Outcome of submitting `SetShardCount` when scaling (None when not scaling).
    pub scale_submission: Option<&'a Result<(), ChainError>>,
    pub previous: Option<&'a ChainNetworkStatus>,
    pub selector: String,
    pub endpoints: Option<NetworkEndpoints>,
    /// Admitted members' validators: they vote in shard 0's committee, so its figures
    /// and readiness count them.
    pub members: &'a [crate::build::MemberValidators],
    pub now: Time,
}

/// Computes the next status.
pub fn compute(input: &StatusInput<'_>) -> ChainNetworkStatus {
    let mut status = input.previous.cloned().unwrap_or_default();
    let generation = input.generation;
    let now = &input.now;
    let set = |status: &mut ChainNetworkStatus, update| {
        set_condition(&mut status.conditions, update, generation, now)
    };
    status.observed_generation = generation;
    status.selector = Some(input.selector.clone());
    status.endpoints = input.endpoints.clone().or(status.endpoints);

    let topology = match input.topology {
        Ok(topology) => topology,
        Err(invalid) => {
            let message = invalid.to_string();
            set(
                &mut status,
                ConditionUpdate::new(READY, false, "InvalidSpec", message.clone()),
            );
            set(
                &mut status,
                ConditionUpdate::new(DEGRADED, true, "InvalidSpec", message.clone()),
            );
            set(
                &mut status,
                ConditionUpdate::new(
                    PROGRESSING,
                    false,
                    "InvalidSpec",
                    "waiting for a valid spec".to_owned(),
                ),
            );
            status.phase = Some(NetworkPhase::Invalid);
            return status;
        }
    };

    // Committee figures.
    let figures = |name: &str| input.observed.get(name).copied().unwrap_or_default();
    let mut all_ready = true;
    let mut quorum_lost = Vec::new();
    let mut missing = Vec::new();
    let mut rolling = input.rollouts.values().any(|r| r.rolling);
    let mut shard_statuses = Vec::new();
    for committee in &topology.committees {
        let mut observed = figures(&committee.name);
        let mut validators = i32::try_from(committee.validators).unwrap_or(0);
        let mut quorum = i32::try_from(committee.quorum).unwrap_or(0);
        if committee.role == CommitteeRole::Shard(0) && !input.members.is_empty() {
            for member in input.members {
                validators += i32::try_from(member.validators).unwrap_or(0);
                observed.ready_replicas += member.ready;
            }
            quorum = validators - trellis_crd::validate::fault_tolerance(validators);
        }
        if observed.ready_replicas < validators {
            all_ready = false;
            missing.push(format!(
                "{} {}/{}",
                committee.name, observed.ready_replicas, validators
            ));
            if observed.ready_replicas < quorum {
                quorum_lost.push(committee.name.clone());
            }
        }
        rolling |= !observed.updated;
        match committee.role {
            CommitteeRole::Beacon => {
                status.beacon = Some(CommitteeStatus {
                    validators,
                    ready_validators: observed.ready_replicas,
                })
            }
            CommitteeRole::Shard(id) => {
                // Chain figures come from the nodes; without an answer this time, the
                // last ones read stay.
                let previous = input
                    .previous
                    .and_then(|p| p.shards.iter().find(|s| s.id == i32::from(id)));
                let answered: Vec<_> = input
                    .shard_chain
                    .get(&id)
                    .map(|r| r.chain.answered().map(|(_, s)| s.clone()).collect())
                    .unwrap_or_default();
                let read = |f: fn(&trellis_node_api::NodeStatus) -> u64| {
                    answered
                        .iter()
                        .map(f)
                        .max()
                        .and_then(|v| i64::try_from(v).ok())
                };
                shard_statuses.push(ShardStatus {
                    id: i32::from(id),
                    validators,
                    ready_validators: observed.ready_replicas,
                    finalized_height: read(|s| s.finalized_height)
                        .or(previous.and_then(|p| p.finalized_height)),
                    epoch: read(|s| s.epoch).or(previous.and_then(|p| p.epoch)),
                    tx_per_second: previous.and_then(|p| p.tx_per_second),
                    mempool_depth: read(|s| u64::try_from(s.mempool_depth).unwrap_or(u64::MAX))
                        .or(previous.and_then(|p| p.mempool_depth)),
                    tables: previous.and_then(|p| p.tables.clone()),
                })
            }
            // Its figures are `status.validatorPool` (crate::pool); its pods count for
            // readiness above.
            CommitteeRole::Pool => {}
        }
    }
    status.shards = shard_statuses;
    if let Some(plan) = &input.shards {
        status.shard_count = Some(i32::from(plan.in_service));
    }

    let was_ready = input
        .previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == READY))
        .is_some_and(|c| c.status == "True");
    let was_degraded = input
        .previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == DEGRADED))
        .is_some_and(|c| c.status == "True" && c.reason != "InvalidSpec");

    // Ready / Degraded / Progressing.
    if input.spec.stopped {
        set(
            &mut status,
            ConditionUpdate::new(
                READY,
                false,
                "Stopped",
                "spec.stopped: every committee is scaled to zero; ledger data is kept".to_owned(),
            ),
        );
        set(
            &mut status,
            ConditionUpdate::new(DEGRADED, false, "Stopped", String::new()),
        );
    } else if all_ready {
        set(
            &mut status,
            ConditionUpdate::new(
                READY,
                true,
                "AllValidatorsReady",
                format!(
                    "{} committees have every validator ready",
                    topology.committees.len()
                ),
            ),
        );
        set(
            &mut status,
            ConditionUpdate::new(DEGRADED, false, "AllValidatorsReady", String::new()),
        );
    } else {
        let detail = format!("validators ready: {}", missing.join(", "));
        set(
            &mut status,
            ConditionUpdate::new(READY, false, "ValidatorsNotReady", detail.clone()),
        );
        // A network that was Ready and lost validators is degraded; one still coming up
        // is only progressing.
        if was_ready || was_degraded {
            let (reason, message) = if quorum_lost.is_empty() {
                (
                    "ValidatorsUnavailable",
                    format!("within the fault budget; {detail}"),
                )
            } else {
                (
                    "QuorumLost",
                    format!("below 2f+1 in {}; {detail}", quorum_lost.join(", ")),
                )
            };
            set(
                &mut status,
                ConditionUpdate::new(DEGRADED, true, reason, message),
            );
        } else {
            set(
                &mut status,
                ConditionUpdate::new(DEGRADED, false, "Provisioning", String::new()),
            );
        }
    }

    // Scaling, through the beacon and then the nodes (see crate::reshard).
    let scaling = input.shards.as_ref().is_some_and(|p| p.is_scaling());
    if let Some(plan) = &input.shards {
        let change = format!("{} -> {} shards", plan.in_service, plan.desired);
        let message = match &plan.step {
            ScaleStep::Stable => format!("{} shards in service", plan.in_service),
            ScaleStep::AwaitingBeacon => {
                let waiting_on = match input.scale_submission {
                    Some(Err(e)) => {
                        format!("SetShardCount({}) not accepted yet: {e}", plan.desired)
                    }
                    Some(Ok(())) => format!(
                        "SetShardCount({}) submitted; waiting for the epoch switch",
                        plan.desired
                    ),
                    None => format!("SetShardCount({}) not submitted yet", plan.desired),
                };
                format!(
                    "{change}; {} shard committees provisioned; {waiting_on}",
                    plan.provisioned
                )
            }
            ScaleStep::AwaitingJoin { shards, detail } => format!(
                "{change}; the beacon runs {}; waiting for shards {shards:?} to join: {detail}",
                plan.desired
            ),
            ScaleStep::AwaitingDrain { shards, detail } => format!(
                "{change}; the beacon runs {}; waiting for shards {shards:?} to report drained \
                 before their StatefulSets are deleted: {detail}",
                plan.desired
            ),
        };
        set(
            &mut status,
            ConditionUpdate::new(SCALING, scaling, plan.step.reason(), message),
        );
    }

    let progressing = !input.spec.stopped && (!all_ready || rolling || scaling);
    set(
        &mut status,
        if input.spec.paused {
            ConditionUpdate::new(
                PROGRESSING,
                false,
                "Paused",
                "spec.paused: nothing is written".to_owned(),
            )
        } else if progressing {
            let reason = if scaling {
                "ScalingShards"
            } else if rolling {
                "RollingUpdate"
            } else {
                "WaitingForValidators"
            };
            let message = input
                .rollouts
                .iter()
                .filter_map(|(committee, step)| {
                    step.waiting
                        .as_ref()
                        .filter(|_| step.rolling)
                        .map(|w| format!("{committee} partition {}: {w}", step.partition))
                })
                .collect::<Vec<_>>()
                .join("; ");
            ConditionUpdate::new(PROGRESSING, true, reason, message)
        } else {
            ConditionUpdate::new(PROGRESSING, false, "Reconciled", String::new())
        },
    );

    // Chain health: only from the chain, over the shards in service (the committees
    // that finalize transactions). The beacon's view feeds the epoch and the beacon step.
    let in_service = input
        .shards
        .as_ref()
        .map_or(u16::MAX, ShardPlan::healthy_scope);
    let mut unhealthy = Vec::new();
    let mut unknown = Vec::new();
    let mut healthy = Vec::new();
    for committee in topology.shards() {
        let CommitteeRole::Shard(id) = committee.role else {
            continue;
        };
        if id >= in_service {
            continue;
        }
        let reading = input.shard_chain.get(&id).cloned().unwrap_or_default();
        match shard_health(committee, &reading) {
            Ok((true, _, message)) => healthy.push(message),
            Ok((false, reason, message)) => unhealthy.push((reason, message)),
            Err((reason, message)) => unknown.push((reason, message)),
        }
    }
    let chain = if let Some((reason, _)) = unhealthy.first() {
        let message = unhealthy
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        ConditionUpdate::new(CHAIN_HEALTHY, false, reason, message)
    } else if let Some((reason, _)) = unknown.first() {
        let message = unknown
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        ConditionUpdate::unknown(CHAIN_HEALTHY, reason, message)
    } else if healthy.is_empty() {
        ConditionUpdate::unknown(
            CHAIN_HEALTHY,
            "NodesUnreachable",
            "no shard in service".to_owned(),
        )
    } else {
        ConditionUpdate::new(CHAIN_HEALTHY, true, "Finalizing", healthy.join("; "))
    };
    set(&mut status, chain);
    status.epoch = match input.chain {
        Ok(view) => i64::try_from(view.epoch).ok(),
        Err(_) => status.shards.iter().filter_map(|s| s.epoch).max(),
    }
    .or(status.epoch);

    status.phase = Some(if input.spec.paused {
        NetworkPhase::Paused
    } else if input.spec.stopped {
        NetworkPhase::Stopped
    } else if scaling {
        NetworkPhase::Scaling
    } else if status
        .conditions
        .iter()
        .any(|c| c.type_ == DEGRADED && c.status == "True")
    {
        NetworkPhase::Degraded
    } else if all_ready {
        NetworkPhase::Running
    } else {
        NetworkPhase::Provisioning
    });
    status
}

#[cfg(test)]
mod tests;
