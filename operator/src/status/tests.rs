//! Condition arithmetic and status computation.

use super::*;
use trellis_crd::topology::{NetworkId, plan_with_shards};
use trellis_crd::validate::SpecViolation;
use trellis_crd::{ChainNetworkSpec, NetworkMode, ShardsSpec};

fn time(second: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(second).unwrap())
}

fn spec(count: i32) -> ChainNetworkSpec {
    let mut spec = ChainNetworkSpec::new(NetworkMode::Public, "n:1");
    spec.shards = ShardsSpec {
        count,
        min: 1,
        max: 8,
        ..ShardsSpec::default()
    };
    spec
}

fn condition<'a>(status: &'a ChainNetworkStatus, type_: &str) -> &'a Condition {
    status.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

struct Case {
    spec: ChainNetworkSpec,
    topology: Topology,
    observed: BTreeMap<String, ObservedCommittee>,
    chain: Result<BeaconView, ChainError>,
    shard_chain: BTreeMap<u16, ShardChain>,
    rollouts: BTreeMap<String, RolloutStep>,
    shards: ShardPlan,
    members: Vec<crate::build::MemberValidators>,
}

impl Case {
    fn new(spec: ChainNetworkSpec, in_service: u16) -> Self {
        let desired = u16::try_from(spec.shards.count).unwrap();
        let shards = plan_shards(desired, in_service);
        let topology =
            plan_with_shards(&NetworkId::new("ns", "alpha"), &spec, shards.provisioned).unwrap();
        Self {
            spec,
            topology,
            observed: BTreeMap::new(),
            chain: Err(ChainError::NotImplemented("trellis_status")),
            shard_chain: BTreeMap::new(),
            rollouts: BTreeMap::new(),
            shards,
            members: Vec::new(),
        }
    }

    fn ready(mut self, ready: i32) -> Self {
        for c in &self.topology.committees {
            self.observed.insert(
                c.name.clone(),
                ObservedCommittee {
                    replicas: i32::try_from(c.validators).unwrap(),
                    ready_replicas: ready,
                    updated: true,
                },
            );
        }
        self
    }

    fn set(mut self, committee: &str, ready: i32) -> Self {
        if let Some(o) = self.observed.get_mut(committee) {
            o.ready_replicas = ready;
        }
        self
    }

    fn compute(&self, previous: Option<&ChainNetworkStatus>, now: i64) -> ChainNetworkStatus {
        compute(&StatusInput {
            generation: Some(3),
            spec: &self.spec,
            topology: Ok(&self.topology),
            observed: &self.observed,
            shards: Some(self.shards.clone()),
            chain: &self.chain,
            shard_chain: &self.shard_chain,
            rollouts: &self.rollouts,
            scale_submission: None,
            previous,
            selector: "sel".to_owned(),
            endpoints: None,
            members: &self.members,
            now: time(now),
        })
    }
}

#[test]
fn set_condition_keeps_transition_time_when_status_is_unchanged() {
    let mut conditions = Vec::new();
    set_condition(
        &mut conditions,
        ConditionUpdate::new(READY, false, "A", "first".into()),
        Some(1),
        &time(10),
    );
    set_condition(
        &mut conditions,
        ConditionUpdate::new(READY, false, "B", "second".into()),
        Some(2),
        &time(20),
    );
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0].last_transition_time, time(10));
    assert_eq!(conditions[0].reason, "B");
    assert_eq!(conditions[0].message, "second");
    assert_eq!(conditions[0].observed_generation, Some(2));
    set_condition(
        &mut conditions,
        ConditionUpdate::new(READY, true, "C", String::new()),
        Some(2),
        &time(30),
    );
    assert_eq!(conditions[0].last_transition_time, time(30));
    assert_eq!(conditions[0].status, "True");
}

#[test]
fn transitions_report_new_and_changed_conditions_only() {
    let mut before = Vec::new();
    set_condition(
        &mut before,
        ConditionUpdate::new(READY, false, "X", String::new()),
        None,
        &time(1),
    );
    set_condition(
        &mut before,
        ConditionUpdate::new(DEGRADED, false, "Y", String::new()),
        None,
        &time(1),
    );
    let mut after = before.clone();
    set_condition(
        &mut after,
        ConditionUpdate::new(READY, true, "Z", "up".into()),
        None,
        &time(2),
    );
    set_condition(
        &mut after,
        ConditionUpdate::new(DEGRADED, false, "Y", "new text".into()),
        None,
        &time(2),
    );
    set_condition(
        &mut after,
        ConditionUpdate::new(SCALING, false, "Stable", String::new()),
        None,
        &time(2),
    );
    let t = transitions(&before, &after);
    let types: Vec<_> = t.iter().map(|t| t.type_.as_str()).collect();
    assert_eq!(types, [READY, SCALING]);
    assert_eq!(t[0].message, "up");
    assert!(transitions(&after, &after).is_empty());
}

#[test]
fn shard_plan_provisions_the_larger_count() {
    assert_eq!(plan_shards(3, 1).provisioned, 3);
    assert_eq!(
        plan_shards(1, 3).provisioned,
        3,
        "draining shards stay until the beacon confirms"
    );
    assert!(plan_shards(1, 3).is_scaling());
    assert!(!plan_shards(2, 2).is_scaling());
}

#[test]
fn fresh_network_is_provisioning_not_degraded() {
    let case = Case::new(spec(1), 1).ready(0);
    let s = case.compute(None, 100);
    assert_eq!(condition(&s, READY).status, "False");
    assert_eq!(condition(&s, READY).reason, "ValidatorsNotReady");
    assert!(condition(&s, READY).message.contains("alpha-beacon 0/4"));
    assert_eq!(condition(&s, DEGRADED).status, "False");
    assert_eq!(condition(&s, PROGRESSING).status, "True");
    assert_eq!(s.phase, Some(NetworkPhase::Provisioning));
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(s.shard_count, Some(1));
    assert_eq!(s.selector.as_deref(), Some("sel"));
}

#[test]
fn all_ready_is_ready_and_settled() {
    let case = Case::new(spec(2), 2).ready(4);
    let s = case.compute(None, 100);
    assert_eq!(condition(&s, READY).status, "True");
    assert_eq!(condition(&s, READY).reason, "AllValidatorsReady");
    assert_eq!(condition(&s, PROGRESSING).status, "False");
    assert_eq!(condition(&s, SCALING).status, "False");
    assert_eq!(s.phase, Some(NetworkPhase::Running));
    assert_eq!(s.shards.len(), 2);
    assert_eq!(s.shards[1].ready_validators, 4);
    assert_eq!(s.beacon.as_ref().unwrap().ready_validators, 4);
    // Recomputing from the result changes nothing (no status write, no event).
    let again = case.compute(Some(&s), 200);
    assert_eq!(again, s);
}

#[test]
fn admitted_members_count_in_shard_zero() {
    let mut case = Case::new(spec(1), 1).ready(4);
    case.members = vec![crate::build::MemberValidators {
        namespace: "other".to_owned(),
        committee: "alpha-m-org-d".to_owned(),
        validators: 3,
        ready: 2,
    }];
    let s = case.compute(None, 100);
    assert_eq!(s.shards[0].validators, 7);
    assert_eq!(s.shards[0].ready_validators, 6);
    // One member validator is not Ready: the network is not Ready either.
    assert_eq!(condition(&s, READY).status, "False");
    assert!(
        condition(&s, READY).message.contains("alpha-shard-0 6/7"),
        "{}",
        condition(&s, READY).message
    );
    case.members[0].ready = 3;
    let s = case.compute(None, 100);
    assert_eq!(condition(&s, READY).status, "True");
}

#[test]
fn losing_validators_after_ready_is_degraded_with_quorum_arithmetic() {
    let ready = Case::new(spec(1), 1).ready(4).compute(None, 100);
    // One of four down: within f = 1.
    let one_down = Case::new(spec(1), 1)
        .ready(4)
        .set("alpha-shard-0", 3)
        .compute(Some(&ready), 200);
    assert_eq!(condition(&one_down, DEGRADED).status, "True");
    assert_eq!(
        condition(&one_down, DEGRADED).reason,
        "ValidatorsUnavailable"
    );
    assert_eq!(condition(&one_down, READY).status, "False");
    assert_eq!(condition(&one_down, READY).last_transition_time, time(200));
    assert_eq!(one_down.phase, Some(NetworkPhase::Degraded));
    // Two of four down: below 2f+1 = 3.
    let two_down = Case::new(spec(1), 1)
        .ready(4)
        .set("alpha-shard-0", 2)
        .compute(Some(&one_down), 300);
    assert_eq!(condition(&two_down, DEGRADED).reason, "QuorumLost");
    assert!(
        condition(&two_down, DEGRADED)
            .message
            .contains("alpha-shard-0")
    );
    assert_eq!(
        condition(&two_down, DEGRADED).last_transition_time,
        time(200)
    );
    // Back to full strength.
    let healed = Case::new(spec(1), 1).ready(4).compute(Some(&two_down), 400);
    assert_eq!(condition(&healed, DEGRADED).status, "False");
    assert_eq!(condition(&healed, READY).status, "True");
}

#[test]
fn scaling_waits_for_the_beacon() {
    let case = Case::new(spec(3), 1).ready(4);
    assert_eq!(case.topology.shards().count(), 3);
    let s = compute(&StatusInput {
        generation: Some(4),
        spec: &case.spec,
        topology: Ok(&case.topology),
        observed: &case.observed,
        shards: Some(case.shards.clone()),
        chain: &case.chain,
        shard_chain: &case.shard_chain,
        rollouts: &case.rollouts,
        scale_submission: Some(&Err(ChainError::NotImplemented("trellis_submitGovernance"))),
        previous: None,
        selector: "sel".to_owned(),
        endpoints: None,
        members: &[],
        now: time(1),
    });
    let scaling = condition(&s, SCALING);
    assert_eq!(scaling.status, "True");
    assert_eq!(scaling.reason, "AwaitingBeacon");
    assert!(
        scaling.message.contains("1 -> 3 shards"),
        "{}",
        scaling.message
    );
    assert!(
        scaling.message.contains("trellis_submitGovernance"),
        "{}",
        scaling.message
    );
    assert_eq!(
        s.shard_count,
        Some(1),
        "in service until the beacon switches"
    );
    assert_eq!(s.phase, Some(NetworkPhase::Scaling));
    assert_eq!(condition(&s, PROGRESSING).reason, "ScalingShards");
}

fn node(height: u64, peers: usize) -> Result<trellis_node_api::NodeStatus, ChainError> {
    Ok(trellis_node_api::NodeStatus {
        contract_version: 1,
        chain_id: "alpha.ns".into(),
        role: trellis_node_api::Role::Shard { shard: 0 },
        node_key: String::new(),
        epoch: height / 100,
        finalized_height: height,
        peers,
        syncing: false,
        mempool_depth: 5,
        validators: Vec::new(),
        waiting: None,
        drained: false,
        tables: None,
    })
}

fn reading(
    nodes: [Result<trellis_node_api::NodeStatus, ChainError>; 4],
    unchanged_for: u64,
) -> ShardChain {
    ShardChain {
        chain: CommitteeChain {
            nodes: (0..4)
                .map(|i| format!("alpha-shard-0-{i}"))
                .zip(nodes)
                .collect(),
        },
        unchanged_for: Duration::from_secs(unchanged_for),
    }
}

#[test]
fn chain_health_comes_only_from_the_chain() {
    let mut case = Case::new(spec(1), 1).ready(4);
    let s = case.compute(None, 1);
    let chain = condition(&s, CHAIN_HEALTHY);
    assert_eq!(
        chain.status, "Unknown",
        "ready pods do not make a healthy chain"
    );
    assert_eq!(chain.reason, "NodesUnreachable");
    assert_eq!(s.epoch, None);

    let down = || Err(ChainError::Unreachable("connection refused".into()));
    case.shard_chain
        .insert(0, reading([down(), down(), down(), down()], 0));
    let s = case.compute(Some(&s), 2);
    assert_eq!(condition(&s, CHAIN_HEALTHY).status, "Unknown");
    assert!(
        condition(&s, CHAIN_HEALTHY)
            .message
            .contains("connection refused")
    );

    // Finalizing: height moved, a quorum (3 of 4) connected.
    case.shard_chain.insert(
        0,
        reading([node(420, 3), node(421, 2), down(), node(419, 2)], 0),
    );
    let s = case.compute(Some(&s), 3);
    let healthy = condition(&s, CHAIN_HEALTHY);
    assert_eq!(
        (healthy.status.as_str(), healthy.reason.as_str()),
        ("True", "Finalizing")
    );
    assert!(
        healthy.message.contains("finalized height 421"),
        "{}",
        healthy.message
    );
    assert_eq!(s.shards[0].finalized_height, Some(421));
    assert_eq!(s.shards[0].epoch, Some(4));
    assert_eq!(s.shards[0].mempool_depth, Some(5));
    assert_eq!(s.epoch, Some(4), "no beacon view: the shards' epoch");

    // Stalled for longer than FINALITY_STALL.
    case.shard_chain.insert(
        0,
        reading([node(421, 3), node(421, 3), node(421, 3), node(421, 3)], 31),
    );
    let s = case.compute(Some(&s), 4);
    assert_eq!(condition(&s, CHAIN_HEALTHY).reason, "NotFinalizing");
    assert_eq!(condition(&s, CHAIN_HEALTHY).status, "False");

    // Nodes answer but hear nobody: no quorum can form.
    case.shard_chain
        .insert(0, reading([node(421, 0), node(421, 0), down(), down()], 0));
    let s = case.compute(Some(&s), 5);
    assert_eq!(condition(&s, CHAIN_HEALTHY).reason, "QuorumNotConnected");
    // Figures read earlier stay when nobody answers.
    case.shard_chain
        .insert(0, reading([down(), down(), down(), down()], 0));
    let s = case.compute(Some(&s), 6);
    assert_eq!(s.shards[0].finalized_height, Some(421));

    // The beacon's epoch wins when the beacon answers.
    case.chain = Ok(BeaconView {
        epoch: 7,
        shard_count: 1,
        pending_shard_count: None,
        healthy: true,
        finalized_height: 700,
        resharding: false,
        placements: Default::default(),
    });
    let s = case.compute(Some(&s), 7);
    assert_eq!(s.epoch, Some(7));
}

#[test]
fn rolls_show_in_progressing() {
    let mut case = Case::new(spec(1), 1).ready(4);
    case.rollouts.insert(
        "alpha-shard-0".into(),
        RolloutStep {
            partition: 3,
            step_height: Some(10),
            rolling: true,
            waiting: Some("alpha-shard-0-3 not answering".into()),
        },
    );
    let s = case.compute(None, 1);
    let progressing = condition(&s, PROGRESSING);
    assert_eq!(progressing.reason, "RollingUpdate");
    assert_eq!(
        progressing.message,
        "alpha-shard-0 partition 3: alpha-shard-0-3 not answering"
    );
}

#[test]
fn stopped_and_paused_phases() {
    let mut stopped = spec(1);
    stopped.stopped = true;
    let s = Case::new(stopped, 1).ready(0).compute(None, 1);
    assert_eq!(s.phase, Some(NetworkPhase::Stopped));
    assert_eq!(condition(&s, READY).reason, "Stopped");
    assert_eq!(condition(&s, PROGRESSING).status, "False");
    let mut paused = spec(1);
    paused.paused = true;
    let s = Case::new(paused, 1).ready(4).compute(None, 1);
    assert_eq!(s.phase, Some(NetworkPhase::Paused));
    assert_eq!(condition(&s, PROGRESSING).reason, "Paused");
}

#[test]
fn invalid_spec_gets_conditions_not_a_crash() {
    let invalid = InvalidSpec(vec![SpecViolation {
        field: "spec.validatorsPerShard".into(),
        message: "must be 3f+1".into(),
    }]);
    let spec = spec(1);
    let s = compute(&StatusInput {
        generation: Some(9),
        spec: &spec,
        topology: Err(&invalid),
        observed: &BTreeMap::new(),
        shards: None,
        chain: &Err(ChainError::NotImplemented("trellis_status")),
        shard_chain: &BTreeMap::new(),
        rollouts: &BTreeMap::new(),
        scale_submission: None,
        previous: None,
        selector: "sel".to_owned(),
        endpoints: None,
        members: &[],
        now: time(1),
    });
    assert_eq!(s.phase, Some(NetworkPhase::Invalid));
    let ready = condition(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        ready
            .message
            .contains("spec.validatorsPerShard: must be 3f+1")
    );
    assert_eq!(condition(&s, DEGRADED).status, "True");
    assert_eq!(s.observed_generation, Some(9));
}

#[test]
fn chain_figures_of_a_shard_survive_recomputation() {
    let case = Case::new(spec(1), 1).ready(4);
    let mut s = case.compute(None, 1);
    s.shards[0].finalized_height = Some(42);
    let again = case.compute(Some(&s), 2);
    assert_eq!(again.shards[0].finalized_height, Some(42));
}

#[test]
fn chain_figures_alone_can_be_held_back_but_transitions_cannot() {
    let mut case = Case::new(spec(1), 1).ready(4);
    case.shard_chain.insert(
        0,
        reading([node(100, 3), node(100, 3), node(99, 3), node(100, 3)], 0),
    );
    let first = case.compute(None, 1);
    // Ten blocks later: only figures moved; held back, nothing to write.
    case.shard_chain.insert(
        0,
        reading([node(110, 3), node(110, 3), node(110, 3), node(109, 3)], 0),
    );
    let mut later = case.compute(Some(&first), 2);
    assert_ne!(later, first);
    assert!(keep_chain_figures(&mut later, &first));
    assert_eq!(later, first, "no status write for moving figures alone");
    // A stall changes the reason: it gets through, with its message.
    case.shard_chain.insert(
        0,
        reading([node(110, 3), node(110, 3), node(110, 3), node(110, 3)], 40),
    );
    let mut stalled = case.compute(Some(&first), 3);
    assert!(!keep_chain_figures(&mut stalled, &first));
    let chain = condition(&stalled, CHAIN_HEALTHY);
    assert_eq!(chain.reason, "NotFinalizing");
    assert!(chain.message.contains("110"), "{}", chain.message);
}

#[test]
fn a_first_chain_reading_is_never_held_back() {
    // Written while the nodes were still down: no figures, ChainHealthy Unknown.
    let mut case = Case::new(spec(1), 1).ready(4);
    let down = || Err(ChainError::Unreachable("connection refused".into()));
    case.shard_chain
        .insert(0, reading([down(), down(), down(), down()], 0));
    let before = case.compute(None, 1);
    assert_eq!(before.shards[0].finalized_height, None);
    // Seconds later they finalize: a transition, written with its figures.
    case.shard_chain.insert(
        0,
        reading([node(12, 3), node(12, 3), node(12, 3), node(11, 3)], 0),
    );
    let mut after = case.compute(Some(&before), 2);
    assert!(!keep_chain_figures(&mut after, &before));
    assert_eq!(after.shards[0].finalized_height, Some(12));
    assert_eq!(condition(&after, CHAIN_HEALTHY).reason, "Finalizing");
    // Same reason, previous figures missing: the new ones are kept, not erased.
    let mut blank = after.clone();
    blank.shards[0].finalized_height = None;
    blank.epoch = None;
    let mut again = case.compute(Some(&blank), 3);
    assert!(keep_chain_figures(&mut again, &blank));
    assert_eq!(again.shards[0].finalized_height, Some(12));
    assert_eq!(again.epoch, Some(0));
}

#[test]
fn the_scaling_steps_after_the_beacon_say_what_the_nodes_report() {
    // Scale-in 3 -> 2: the beacon switched, shard 2 still drains.
    let mut case = Case::new(spec(2), 3).ready(4);
    case.shards = ShardPlan {
        desired: 2,
        in_service: 3,
        provisioned: 3,
        step: ScaleStep::AwaitingDrain {
            shards: vec![2],
            detail: "shard 2: 0 joined, 1 drained, 0 not answering of 4 (quorum 3)".into(),
        },
    };
    let healthy = || reading([node(50, 3), node(50, 3), node(50, 3), node(50, 3)], 0);
    case.shard_chain.insert(0, healthy());
    case.shard_chain.insert(1, healthy());
    // The draining slot stopped finalizing by design: it does not count.
    case.shard_chain.insert(
        2,
        reading([node(9, 3), node(9, 3), node(9, 3), node(9, 3)], 120),
    );
    let s = case.compute(None, 1);
    let scaling = condition(&s, SCALING);
    assert_eq!(
        (scaling.status.as_str(), scaling.reason.as_str()),
        ("True", "AwaitingShardDrain")
    );
    assert!(
        scaling
            .message
            .contains("waiting for shards [2] to report drained")
            && scaling.message.contains("1 drained"),
        "{}",
        scaling.message
    );
    assert_eq!(s.shard_count, Some(3), "in service until removed");
    assert_eq!(condition(&s, CHAIN_HEALTHY).status, "True");
    assert_eq!(s.phase, Some(NetworkPhase::Scaling));

    // Scale-out 2 -> 3: the beacon switched, shard 2 has not joined; it is not in
    // service, so its wait does not make the chain unhealthy.
    let mut case = Case::new(spec(3), 2).ready(4);
    case.shards = ShardPlan {
        desired: 3,
        in_service: 2,
        provisioned: 3,
        step: ScaleStep::AwaitingJoin {
            shards: vec![2],
            detail: "shard 2: 0 joined; waiting for shard 2 to be created by the beacon".into(),
        },
    };
    case.shard_chain.insert(0, healthy());
    case.shard_chain.insert(1, healthy());
    let s = case.compute(None, 1);
    let scaling = condition(&s, SCALING);
    assert_eq!(scaling.reason, "AwaitingShardJoin");
    assert!(
        scaling
            .message
            .contains("2 -> 3 shards; the beacon runs 3; waiting for shards [2] to join"),
        "{}",
        scaling.message
    );
    assert_eq!(s.shard_count, Some(2));
    assert_eq!(condition(&s, CHAIN_HEALTHY).status, "True");
    assert_eq!(condition(&s, PROGRESSING).reason, "ScalingShards");
}
