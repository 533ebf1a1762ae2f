//! The shard-count steps, from the beacon's view and the nodes' reports.

use super::*;
use crate::chain::ChainError;
use crate::status::ShardChain;
use std::time::Duration;
use trellis_node_api::{NodeStatus, Role};

fn view(shard_count: u16, pending: Option<u16>) -> BeaconView {
    BeaconView {
        epoch: 3,
        shard_count,
        pending_shard_count: pending,
        healthy: true,
        finalized_height: 60,
        resharding: false,
        placements: Default::default(),
    }
}

fn node(shard: u16, height: u64, waiting: Option<&str>, drained: bool) -> NodeStatus {
    NodeStatus {
        contract_version: 1,
        chain_id: "alpha.ns".into(),
        role: Role::Shard { shard },
        node_key: "00".into(),
        epoch: 3,
        finalized_height: height,
        peers: 3,
        syncing: false,
        mempool_depth: 0,
        validators: Vec::new(),
        waiting: waiting.map(str::to_owned),
        drained,
        tables: None,
    }
}

/// A slot of four validators: `answers` of them answer with `status`, the rest do not.
fn reading(answers: usize, status: &NodeStatus) -> ShardChain {
    ShardChain {
        chain: CommitteeChain {
            nodes: (0..4)
                .map(|i| {
                    let answer = if i < answers {
                        Ok(status.clone())
                    } else {
                        Err(ChainError::Unreachable("down".into()))
                    };
                    (format!("alpha-shard-x-{i}"), answer)
                })
                .collect(),
        },
        unchanged_for: Duration::ZERO,
    }
}

fn slots(readings: Vec<(u16, ShardChain)>) -> BTreeMap<u16, Slot> {
    slot_states(&readings.into_iter().collect(), 3)
}

fn state(slots: &BTreeMap<u16, Slot>, shard: u16) -> (SlotState, bool) {
    (slots[&shard].state.clone(), slots[&shard].active)
}

/// A finalizing shard owning its half of the tables in a 2-shard layout (shard 2: none).
fn joined(shard: u16) -> ShardChain {
    let mut status = node(shard, 40, None, false);
    status.tables = Some(match shard {
        0 => (0..128).collect(),
        1 => (128..=255).collect(),
        _ => Vec::new(),
    });
    reading(4, &status)
}

const WAITING: &str = "waiting for shard 2 to be created by the beacon";

#[test]
fn slot_states_need_a_quorum() {
    let states = slots(vec![
        (0, joined(0)),
        (1, reading(2, &node(1, 40, None, false))),
        (2, reading(4, &node(2, 0, Some(WAITING), false))),
        (3, reading(3, &node(3, 12, Some("drained: ..."), true))),
        (4, reading(2, &node(4, 12, Some("drained: ..."), true))),
    ]);
    assert_eq!(state(&states, 0), (SlotState::Joined, true));
    assert_eq!(states[&0].tables.len(), 128);
    // Two joined of four is not a quorum, but the slot is active (it holds tables).
    assert!(matches!(&state(&states, 1), (SlotState::Pending(m), true) if m.contains("2 joined")));
    assert!(matches!(&state(&states, 2), (SlotState::Pending(m), false) if m.contains(WAITING)));
    assert_eq!(state(&states, 3), (SlotState::Drained, false));
    assert!(
        matches!(&state(&states, 4), (SlotState::Pending(m), false) if m.contains("2 drained"))
    );
    // Joined but not finalizing: height 0, or stalled.
    let mut stalled = joined(5);
    stalled.unchanged_for = crate::status::FINALITY_STALL;
    let states = slots(vec![
        (5, stalled),
        (6, reading(4, &node(6, 0, None, false))),
    ]);
    assert!(matches!(states[&5].state, SlotState::Pending(_)));
    assert!(matches!(states[&6].state, SlotState::Pending(_)));
}

#[test]
fn without_the_beacon_the_count_stays_and_the_change_waits_for_it() {
    let plan = plan(3, 2, None, &BTreeMap::new());
    assert_eq!((plan.in_service, plan.provisioned), (2, 3));
    assert_eq!(plan.step, ScaleStep::AwaitingBeacon);
    assert!(plan.needs_beacon());
    let settled = super::plan(2, 2, None, &BTreeMap::new());
    assert_eq!(settled.step, ScaleStep::Stable);
}

#[test]
fn scale_out_waits_for_the_beacon_then_for_the_new_shard_to_join() {
    let running = vec![(0, joined(0)), (1, joined(1))];
    // Not switched yet (or pending): SetShardCount is the step, shard 2 provisioned.
    for beacon in [view(2, None), view(2, Some(3))] {
        let p = plan(3, 2, Some(&beacon), &slots(running.clone()));
        assert_eq!(p.step, ScaleStep::AwaitingBeacon);
        assert_eq!((p.in_service, p.provisioned), (2, 3));
    }
    // Switched; shard 2's nodes wait or do not answer: still 2 in service.
    let mut waiting = running.clone();
    waiting.push((2, reading(4, &node(2, 0, Some(WAITING), false))));
    let p = plan(3, 2, Some(&view(3, None)), &slots(waiting));
    assert!(!p.needs_beacon());
    assert_eq!((p.in_service, p.provisioned, p.healthy_scope()), (2, 3, 2));
    let ScaleStep::AwaitingJoin { shards, detail } = &p.step else {
        panic!("{p:?}");
    };
    assert_eq!(shards, &[2]);
    assert!(detail.contains(WAITING), "{detail}");
    assert_eq!(p.step.reason(), "AwaitingShardJoin");
    let p = plan(3, 2, Some(&view(3, None)), &slots(running.clone()));
    assert!(
        matches!(&p.step, ScaleStep::AwaitingJoin { detail, .. } if detail.contains("not read"))
    );
    // Joined by a quorum and finalizing: 3 in service.
    let mut done = running;
    done.push((2, reading(3, &node(2, 5, None, false))));
    let p = plan(3, 2, Some(&view(3, None)), &slots(done));
    assert_eq!(p.step, ScaleStep::Stable);
    assert_eq!((p.in_service, p.provisioned), (3, 3));
}

#[test]
fn scale_in_keeps_the_slot_until_its_nodes_report_drained() {
    let running = vec![(0, joined(0)), (1, joined(1)), (2, joined(2))];
    let p = plan(2, 3, Some(&view(3, Some(2))), &slots(running.clone()));
    assert_eq!(p.step, ScaleStep::AwaitingBeacon);
    assert_eq!((p.in_service, p.provisioned), (3, 3));
    // Switched: shard 2 still finalizes its last epoch, or does not answer.
    for shard2 in [joined(2), reading(0, &node(2, 0, None, false))] {
        let mut now = running[..2].to_vec();
        now.push((2, shard2));
        let p = plan(2, 3, Some(&view(2, None)), &slots(now));
        let ScaleStep::AwaitingDrain { shards, .. } = &p.step else {
            panic!("{p:?}");
        };
        assert_eq!(shards, &[2]);
        assert_eq!((p.in_service, p.provisioned, p.healthy_scope()), (3, 3, 2));
        assert_eq!(p.step.reason(), "AwaitingShardDrain");
    }
    // Not read at all (no reading for the slot): held too.
    let p = plan(2, 3, Some(&view(2, None)), &slots(running[..2].to_vec()));
    assert!(matches!(p.step, ScaleStep::AwaitingDrain { .. }));
    // A quorum drained, but shard 1 still imports shard 2's last tables (it reports
    // waiting, so its tables do not count): the drained nodes still serve them.
    let shard2_drained = || (2, reading(3, &node(2, 30, Some("drained: ..."), true)));
    let mut importing = vec![(0, joined(0))];
    let mut shard1 = node(1, 40, Some("handing off tables [200] for epoch 4"), false);
    shard1.tables = Some((128..=255).collect());
    importing.push((1, reading(4, &shard1)));
    importing.push(shard2_drained());
    let p = plan(2, 3, Some(&view(2, None)), &slots(importing));
    let ScaleStep::AwaitingDrain { shards, detail } = &p.step else {
        panic!("{p:?}");
    };
    assert_eq!(shards, &[2]);
    assert!(detail.contains("own 128 of 256 tables"), "{detail}");
    assert_eq!(p.provisioned, 3);
    // Drained, and the shards that stay own every table: the slot goes.
    let mut drained = running[..2].to_vec();
    drained.push(shard2_drained());
    let p = plan(2, 3, Some(&view(2, None)), &slots(drained));
    assert_eq!(p.step, ScaleStep::Stable);
    assert_eq!((p.in_service, p.provisioned), (2, 2));
}

#[test]
fn a_withdrawn_scale_out_goes_at_once_unless_the_slot_joined() {
    // Shard 2 was provisioned for a change the beacon never made; its StatefulSet is
    // still there (so the slot is read) and its nodes wait: nothing to drain.
    let mut never = vec![(0, joined(0)), (1, joined(1))];
    never.push((2, reading(4, &node(2, 0, Some(WAITING), false))));
    let p = plan(2, 2, Some(&view(2, None)), &slots(never));
    assert_eq!(p.step, ScaleStep::Stable);
    assert_eq!(p.provisioned, 2);
    // One of its nodes says it joined after all (the beacon ran 3 for an epoch): drain.
    let mut joined_once = vec![(0, joined(0)), (1, joined(1))];
    joined_once.push((2, reading(1, &node(2, 8, None, false))));
    let p = plan(2, 2, Some(&view(2, None)), &slots(joined_once));
    assert!(matches!(&p.step, ScaleStep::AwaitingDrain { shards, .. } if shards == &[2]));
    assert_eq!((p.in_service, p.provisioned), (2, 3));
}
