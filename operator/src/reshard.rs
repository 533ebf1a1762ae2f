//! Shard-count changes, step by step: where a change from the shards in service to
//! `spec.shards.count` stands, and which shard committees must exist meanwhile.
//!
//! Pure. The chain decides when a count takes effect, and the nodes say when they are
//! done with it, so a change goes through three steps:
//!
//! 1. **Beacon** — `SetShardCount` submitted until the beacon's map has the new count
//!    in force (it switches at an epoch boundary). New shards' committees are provisioned
//!    before (the beacon needs their validators registered).
//! 2. **Join** (scale-out) — the new shards' nodes wait for the beacon to create their
//!    shard, import the tables moved to them and start finalizing. The count is in
//!    service once a quorum of each new shard reports it joined (not waiting, finalizing).
//! 3. **Drain** (scale-in) — the slots scaled away hand their tables off; their nodes
//!    report `drained`. A slot loses its StatefulSet only once a quorum of it reports
//!    that and the shards that stay own all 256 tables with no import pending (the
//!    drained nodes serve the tables being imported until then).
//!
//! A slot provisioned above the count but never in service (a scale-out withdrawn before
//! its shard joined) holds no tables and goes at once — unless one of its nodes reports
//! that it joined after all, which makes it a slot to drain like any other.

use std::collections::{BTreeMap, BTreeSet};

use crate::chain::{BeaconView, CommitteeChain};

/// Where a shard-count change stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleStep {
    /// Nothing to change.
    Stable,
    /// `SetShardCount(desired)` is to be submitted, or waits for the epoch switch.
    AwaitingBeacon,
    /// The beacon runs the new count; these new shards have not joined yet (`detail`
    /// says what their nodes report).
    AwaitingJoin { shards: Vec<u16>, detail: String },
    /// The beacon runs the new count; these slots have not reported `drained` yet.
    AwaitingDrain { shards: Vec<u16>, detail: String },
}

impl ScaleStep {
    /// The `Scaling` condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ScaleStep::Stable => "Stable",
            ScaleStep::AwaitingBeacon => "AwaitingBeacon",
            ScaleStep::AwaitingJoin { .. } => "AwaitingShardJoin",
            ScaleStep::AwaitingDrain { .. } => "AwaitingShardDrain",
        }
    }
}

/// The shard-count state machine's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    /// `spec.shards.count`.
    pub desired: u16,
    /// Shards in service: the count last completed (every new shard joined, every
    /// drained slot removed). `status.shardCount`.
    pub in_service: u16,
    /// Shard committees that must exist (slots `0..provisioned`).
    pub provisioned: u16,
    pub step: ScaleStep,
}

impl ShardPlan {
    pub fn is_scaling(&self) -> bool {
        self.step != ScaleStep::Stable
    }

    /// Whether `SetShardCount` is still to be asked of the beacon.
    pub fn needs_beacon(&self) -> bool {
        self.step == ScaleStep::AwaitingBeacon
    }

    /// Shards whose finality counts in `ChainHealthy`: those in service, less the slots
    /// the beacon has already scaled away (they stop finalizing by design).
    pub fn healthy_scope(&self) -> u16 {
        match self.step {
            ScaleStep::AwaitingDrain { .. } => self.in_service.min(self.desired),
            _ => self.in_service,
        }
    }
}

/// A plan without the nodes' word: the beacon cannot be read (no node RPC, nodes down),
/// so the count stays where it was and any change waits for the beacon.
pub fn plan_shards(desired: u16, in_service: u16) -> ShardPlan {
    ShardPlan {
        desired,
        in_service,
        provisioned: desired.max(in_service),
        step: if desired == in_service {
            ScaleStep::Stable
        } else {
            ScaleStep::AwaitingBeacon
        },
    }
}

/// What a slot's nodes report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// A quorum is past any wait (no `waiting`, not `drained`) and finalizing.
    Joined,
    /// A quorum reports `drained`.
    Drained,
    /// Neither; the summary says what the nodes report.
    Pending(String),
}

/// A slot as its nodes report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub state: SlotState,
    /// Some node reports the slot past any wait and not drained (it holds tables).
    pub active: bool,
    /// The tables the slot's nodes that are past any wait own (handoffs complete).
    pub tables: BTreeSet<u8>,
}

/// Tables of the chain (`trellis_crd::TABLES`).
const TABLES: usize = 256;

/// A slot's state from its validators' `trellis_status`. `quorum` is the committee's
/// 2f+1; `stalled` says its finalized height has not moved for
/// [`crate::status::FINALITY_STALL`].
pub fn slot_state(shard: u16, reading: &CommitteeChain, quorum: usize, stalled: bool) -> SlotState {
    let answered: Vec<_> = reading.answered().collect();
    let joined = answered
        .iter()
        .filter(|(_, s)| s.waiting.is_none() && !s.drained)
        .count();
    let drained = answered.iter().filter(|(_, s)| s.drained).count();
    let height = reading.finalized_height().unwrap_or(0);
    if drained >= quorum {
        return SlotState::Drained;
    }
    if joined >= quorum && height > 0 && !stalled {
        return SlotState::Joined;
    }
    // One waiting reason is enough for the message (they are the same on every node of
    // a slot); no heights in it, so the status does not change with every block.
    let why = answered
        .iter()
        .find_map(|(_, s)| s.waiting.clone())
        .map(|w| format!("; {w}"))
        .unwrap_or_default();
    let silent = reading.nodes.len() - answered.len();
    SlotState::Pending(format!(
        "shard {shard}: {joined} joined, {drained} drained, {silent} not answering of {} (quorum {quorum}){why}",
        reading.nodes.len()
    ))
}

/// Plans the change from `recorded` (the shards in service last reported; the genesis
/// count before any) to `desired`, given the beacon's view and the slots' states (every
/// slot that may have nodes: up to the highest of the counts and the existing shard
/// StatefulSets).
pub fn plan(
    desired: u16,
    recorded: u16,
    beacon: Option<&BeaconView>,
    slots: &BTreeMap<u16, Slot>,
) -> ShardPlan {
    let Some(view) = beacon else {
        return plan_shards(desired, recorded);
    };
    let highest = slots
        .keys()
        .next_back()
        .map_or(0, |s| s.saturating_add(1))
        .max(recorded)
        .max(view.shard_count)
        .max(desired);
    let beacon_settled = view.shard_count == desired && view.pending_shard_count.is_none();
    if !beacon_settled {
        // Everything that may hold tables stays until the beacon has switched.
        return ShardPlan {
            desired,
            in_service: recorded,
            provisioned: recorded.max(view.shard_count).max(desired),
            step: ScaleStep::AwaitingBeacon,
        };
    }
    // The beacon runs `desired`. New shards must join ...
    let mut joining = Vec::new();
    let mut details = Vec::new();
    for shard in recorded..desired {
        match slots.get(&shard).map(|s| &s.state) {
            Some(SlotState::Joined) => {}
            Some(SlotState::Pending(why)) => {
                joining.push(shard);
                details.push(why.clone());
            }
            Some(SlotState::Drained) => {
                joining.push(shard);
                details.push(format!("shard {shard}: its nodes report drained"));
            }
            None => {
                joining.push(shard);
                details.push(format!("shard {shard}: not read"));
            }
        }
    }
    if !joining.is_empty() {
        return ShardPlan {
            desired,
            in_service: recorded,
            provisioned: highest,
            step: ScaleStep::AwaitingJoin {
                shards: joining,
                detail: details.join("; "),
            },
        };
    }
    // ... and slots above it must drain: those that were in service, and any other
    // whose nodes say they joined.
    let mut draining = Vec::new();
    for shard in desired..highest {
        let in_service_once = shard < recorded;
        match slots.get(&shard).map(|s| (&s.state, s.active)) {
            Some((SlotState::Drained, _)) => {}
            Some((state, active)) if in_service_once || active => {
                draining.push(shard);
                details.push(match state {
                    SlotState::Pending(why) => why.clone(),
                    _ => format!("shard {shard}: its nodes report joined"),
                });
            }
            None if in_service_once => {
                draining.push(shard);
                details.push(format!("shard {shard}: not read"));
            }
            // Never in service and nothing says it ever joined: no tables to lose.
            _ => {}
        }
    }
    // A drained slot's nodes still serve its last tables to the shards taking them
    // over: it goes only once the shards that stay own every table, handoffs complete.
    let draining_slots = (desired..highest).any(|shard| {
        shard < recorded
            || slots
                .get(&shard)
                .is_some_and(|s| s.active || s.state == SlotState::Drained)
    });
    if draining.is_empty() && draining_slots {
        let owned: BTreeSet<u8> = (0..desired)
            .filter_map(|shard| slots.get(&shard))
            .flat_map(|s| s.tables.iter().copied())
            .collect();
        if owned.len() < TABLES {
            draining.extend(desired..highest);
            details.push(format!(
                "the remaining shards own {} of {TABLES} tables (handoff under way)",
                owned.len()
            ));
        }
    }
    if !draining.is_empty() {
        return ShardPlan {
            desired,
            in_service: recorded.max(desired),
            provisioned: highest,
            step: ScaleStep::AwaitingDrain {
                shards: draining,
                detail: details.join("; "),
            },
        };
    }
    ShardPlan {
        desired,
        in_service: desired,
        provisioned: desired,
        step: ScaleStep::Stable,
    }
}

/// The slots as their nodes report them.
pub fn slot_states(
    readings: &BTreeMap<u16, crate::status::ShardChain>,
    quorum: usize,
) -> BTreeMap<u16, Slot> {
    readings
        .iter()
        .map(|(shard, reading)| {
            let stalled = reading.unchanged_for >= crate::status::FINALITY_STALL;
            let past_waits = || {
                reading
                    .chain
                    .answered()
                    .filter(|(_, s)| s.waiting.is_none() && !s.drained)
            };
            let slot = Slot {
                state: slot_state(*shard, &reading.chain, quorum, stalled),
                active: past_waits().next().is_some(),
                tables: past_waits()
                    .flat_map(|(_, s)| s.tables.iter().flatten().copied())
                    .collect(),
            };
            (*shard, slot)
        })
        .collect()
}

#[cfg(test)]
mod tests;
