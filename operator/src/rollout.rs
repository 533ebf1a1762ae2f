//! Rolling upgrades that wait for finality.
//!
//! A change of a committee's pod template (node image, resources, config) is rolled one
//! validator at a time with the StatefulSet's `RollingUpdate` `partition`: pods with an
//! ordinal `>= partition` run the new template. The operator lowers the partition by one
//! only when the previous step is complete:
//!
//! * every pod from the partition up runs the new revision and every pod of the
//!   committee is Ready (object readiness), and
//! * finality resumed: the committee's finalized height is past the height seen when the
//!   step began, and the validator just replaced itself reports a finalized height past
//!   it (it rejoined and caught up, not merely a Ready pod).
//!
//! A roll therefore never takes more than one validator of a committee down (≤ f), and
//! never starts the next before the chain has shown it kept finalizing. A roll starts at
//! `partition = replicas` (nothing replaced) and its first step waits for the same gate,
//! so a committee that is not finalizing is not upgraded further.
//!
//! The step's state lives on the StatefulSet itself (its partition and two annotations),
//! so an operator restarted mid-roll continues where it was. Pure: observed state in,
//! next partition out.

use crate::chain::CommitteeChain;

/// StatefulSet annotation: hash of the pod template the operator last applied.
pub const TEMPLATE_HASH_ANNOTATION: &str = "trellis.dev/template-hash";
/// StatefulSet annotation: the committee's finalized height when the current step began.
pub const STEP_HEIGHT_ANNOTATION: &str = "trellis.dev/rollout-finalized-height";

/// What the StatefulSet of a committee reports about a roll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedRollout {
    /// [`TEMPLATE_HASH_ANNOTATION`] of the live StatefulSet.
    pub template_hash: Option<String>,
    /// `spec.updateStrategy.rollingUpdate.partition`.
    pub partition: i32,
    /// [`STEP_HEIGHT_ANNOTATION`].
    pub step_height: Option<u64>,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.updatedReplicas` (pods at the update revision), when the controller has
    /// seen the current generation; 0 otherwise.
    pub updated_replicas: i32,
    /// `status.readyReplicas`, likewise.
    pub ready_replicas: i32,
}

/// How a step's completion is checked beyond pod readiness.
#[derive(Debug, Clone, Copy)]
pub enum Gate<'a> {
    /// The nodes' finalized heights, as read through the chain seam.
    Finality(&'a CommitteeChain),
    /// Readiness only: the chain cannot be read for this committee. Said in the
    /// condition message.
    ReadinessOnly(&'a str),
}

/// The roll's next position for one committee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutStep {
    /// Partition to apply.
    pub partition: i32,
    /// Finalized height when the current step began (the gate for the next one).
    pub step_height: Option<u64>,
    /// A roll is under way (`partition > 0`).
    pub rolling: bool,
    /// What the roll waits for, for the `Progressing` message.
    pub waiting: Option<String>,
}

impl RolloutStep {
    fn settled() -> Self {
        Self {
            partition: 0,
            step_height: None,
            rolling: false,
            waiting: None,
        }
    }
}

/// Computes the partition for a committee whose desired pod template hashes to
/// `desired_hash`. `nodes` are the pod names by ordinal.
pub fn next_step(
    desired_hash: &str,
    nodes: &[String],
    observed: Option<&ObservedRollout>,
    gate: Gate<'_>,
) -> RolloutStep {
    let replicas = i32::try_from(nodes.len()).unwrap_or(i32::MAX);
    let Some(observed) = observed else {
        // A new StatefulSet starts every pod at the desired template.
        return RolloutStep::settled();
    };
    if replicas == 0 || observed.replicas == 0 {
        return RolloutStep::settled();
    }
    let height = match gate {
        Gate::Finality(chain) => chain.finalized_height(),
        Gate::ReadinessOnly(_) => None,
    };
    match observed.template_hash.as_deref() {
        // Created before templates were tracked: adopt it as is.
        None => return RolloutStep::settled(),
        Some(live) if live != desired_hash => {
            // A new template: apply it with nothing replaced yet, remembering the height
            // the first step must see finality pass.
            return RolloutStep {
                partition: replicas,
                step_height: height,
                rolling: true,
                waiting: Some(format!(
                    "new pod template; replacing {} validators one at a time",
                    replicas
                )),
            };
        }
        Some(_) => {}
    }
    let partition = observed.partition.clamp(0, replicas);
    if partition == 0 {
        return RolloutStep::settled();
    }
    let hold = |waiting: String| RolloutStep {
        partition,
        step_height: observed.step_height,
        rolling: true,
        waiting: Some(waiting),
    };
    // The step that set `partition` replaced the validators from `partition` up.
    let expected_updated = replicas - partition;
    if observed.updated_replicas < expected_updated {
        return hold(format!(
            "{}/{} validators run the new template",
            observed.updated_replicas, expected_updated
        ));
    }
    if observed.ready_replicas < replicas {
        return hold(format!(
            "{}/{} validators Ready",
            observed.ready_replicas, replicas
        ));
    }
    let mut gate_note = None;
    match gate {
        Gate::Finality(chain) => {
            let Some(since) = observed.step_height else {
                // No height when the roll began (no validator answered then), or lost
                // (edited by hand): start this step's gate now.
                let waiting = if height.is_some() {
                    "waiting for a finalized height reading"
                } else {
                    "no validator answers trellis_status"
                };
                return RolloutStep {
                    step_height: height,
                    ..hold(waiting.to_owned())
                };
            };
            match height {
                Some(h) if h > since => {}
                // No moving figures in these messages: they end up in the status, and
                // a status that changes with every block would be rewritten each time.
                Some(_) => {
                    return hold(format!(
                        "finalized height not past {since} yet (the step began there)"
                    ));
                }
                None => return hold("no validator answers trellis_status".to_owned()),
            }
            // The validator this step replaced must itself be back and finalizing.
            let replaced = usize::try_from(partition).ok().and_then(|p| nodes.get(p));
            if let Some(node) = replaced {
                match chain.nodes.get(node) {
                    Some(Ok(status)) if status.finalized_height > since => {}
                    Some(Ok(_)) => {
                        return hold(format!("{node} has not finalized past {since} yet"));
                    }
                    Some(Err(e)) => return hold(format!("{node} not answering: {e}")),
                    None => return hold(format!("{node} not asked")),
                }
            }
        }
        Gate::ReadinessOnly(why) => gate_note = Some(why.to_owned()),
    }
    // Step complete: replace the next validator (the next lower ordinal).
    let next = partition - 1;
    RolloutStep {
        partition: next,
        step_height: if next == 0 { None } else { height },
        rolling: next > 0,
        waiting: Some(match gate_note {
            Some(why) => format!("replacing validator {next} (readiness only: {why})"),
            None => format!("replacing validator {next}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ChainError;
    use std::collections::BTreeMap;
    use trellis_node_api::{NodeStatus, Role};

    fn nodes() -> Vec<String> {
        (0..4).map(|i| format!("n-{i}")).collect()
    }

    fn status(height: u64) -> NodeStatus {
        NodeStatus {
            contract_version: 1,
            chain_id: "c".into(),
            role: Role::Shard { shard: 0 },
            node_key: String::new(),
            epoch: 0,
            finalized_height: height,
            peers: 3,
            syncing: false,
            mempool_depth: 0,
            validators: Vec::new(),
            waiting: None,
            drained: false,
            tables: None,
        }
    }

    fn chain(heights: [Option<u64>; 4]) -> CommitteeChain {
        CommitteeChain {
            nodes: nodes()
                .into_iter()
                .zip(heights)
                .map(|(n, h)| {
                    (
                        n,
                        h.map(status)
                            .ok_or_else(|| ChainError::Unreachable("down".into())),
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn observed(
        hash: &str,
        partition: i32,
        updated: i32,
        ready: i32,
        since: u64,
    ) -> ObservedRollout {
        ObservedRollout {
            template_hash: Some(hash.into()),
            partition,
            step_height: Some(since),
            replicas: 4,
            updated_replicas: updated,
            ready_replicas: ready,
        }
    }

    #[test]
    fn a_new_template_starts_with_nothing_replaced() {
        let c = chain([Some(10); 4]);
        let step = next_step(
            "new",
            &nodes(),
            Some(&observed("old", 0, 4, 4, 0)),
            Gate::Finality(&c),
        );
        assert_eq!(step.partition, 4);
        assert_eq!(step.step_height, Some(10));
        assert!(step.rolling);
        // A StatefulSet that does not exist yet starts at the template: no roll.
        let fresh = next_step("new", &nodes(), None, Gate::Finality(&c));
        assert_eq!(fresh.partition, 0);
        assert!(!fresh.rolling);
    }

    #[test]
    fn each_step_waits_for_finality_past_its_start() {
        // Partition 4 (nothing replaced) began at height 10; still 10: hold.
        let stuck = chain([Some(10); 4]);
        let step = next_step(
            "h",
            &nodes(),
            Some(&observed("h", 4, 0, 4, 10)),
            Gate::Finality(&stuck),
        );
        assert_eq!(step.partition, 4);
        assert!(step.waiting.unwrap().contains("not past 10"));
        // Height 11: replace validator 3 and remember 11.
        let moving = chain([Some(11); 4]);
        let step = next_step(
            "h",
            &nodes(),
            Some(&observed("h", 4, 0, 4, 10)),
            Gate::Finality(&moving),
        );
        assert_eq!((step.partition, step.step_height), (3, Some(11)));
    }

    #[test]
    fn the_replaced_validator_must_itself_finalize_again() {
        // Partition 3 began at 11; n-3 was replaced and is Ready (kwok says so) but its
        // node does not answer: the others finalizing is not enough.
        let down = chain([Some(20), Some(20), Some(20), None]);
        let step = next_step(
            "h",
            &nodes(),
            Some(&observed("h", 3, 1, 4, 11)),
            Gate::Finality(&down),
        );
        assert_eq!(step.partition, 3);
        assert!(step.waiting.unwrap().contains("n-3 not answering"));
        // Back but behind the step's start: still hold.
        let behind = chain([Some(20), Some(20), Some(20), Some(5)]);
        let step = next_step(
            "h",
            &nodes(),
            Some(&observed("h", 3, 1, 4, 11)),
            Gate::Finality(&behind),
        );
        assert_eq!(step.partition, 3);
        // Caught up: next validator.
        let back = chain([Some(20), Some(20), Some(20), Some(19)]);
        let step = next_step(
            "h",
            &nodes(),
            Some(&observed("h", 3, 1, 4, 11)),
            Gate::Finality(&back),
        );
        assert_eq!((step.partition, step.step_height), (2, Some(20)));
    }

    #[test]
    fn readiness_and_the_update_revision_gate_every_step() {
        let c = chain([Some(50); 4]);
        // The StatefulSet controller has not replaced pod 2 yet.
        let step = next_step(
            "h",
            &nodes(),
            Some(&observed("h", 2, 1, 4, 11)),
            Gate::Finality(&c),
        );
        assert_eq!(step.partition, 2);
        // Replaced but not Ready.
        let step = next_step(
            "h",
            &nodes(),
            Some(&observed("h", 2, 2, 3, 11)),
            Gate::Finality(&c),
        );
        assert_eq!(step.partition, 2);
        // The last step ends the roll.
        let step = next_step(
            "h",
            &nodes(),
            Some(&observed("h", 1, 3, 4, 11)),
            Gate::Finality(&c),
        );
        assert_eq!(
            (step.partition, step.rolling, step.step_height),
            (0, false, None)
        );
        let done = next_step(
            "h",
            &nodes(),
            Some(&observed("h", 0, 4, 4, 0)),
            Gate::Finality(&c),
        );
        assert_eq!(done, RolloutStep::settled());
    }

    #[test]
    fn readiness_only_committees_roll_on_readiness_and_say_so() {
        let step = next_step(
            "h",
            &nodes(),
            Some(&observed("h", 4, 0, 4, 0)),
            Gate::ReadinessOnly("no beacon RPC"),
        );
        assert_eq!(step.partition, 3);
        assert!(
            step.waiting
                .unwrap()
                .contains("readiness only: no beacon RPC")
        );
        let step = next_step(
            "h",
            &nodes(),
            Some(&observed("h", 3, 1, 3, 0)),
            Gate::ReadinessOnly("no beacon RPC"),
        );
        assert_eq!(step.partition, 3);
    }

    #[test]
    fn stopped_and_untracked_sets_do_not_roll() {
        let c = chain([None; 4]);
        let mut stopped = observed("old", 0, 0, 0, 0);
        stopped.replicas = 0;
        assert_eq!(
            next_step("new", &nodes(), Some(&stopped), Gate::Finality(&c)).partition,
            0
        );
        let mut untracked = observed("x", 0, 4, 4, 0);
        untracked.template_hash = None;
        assert_eq!(
            next_step("new", &nodes(), Some(&untracked), Gate::Finality(&c)).partition,
            0
        );
    }
}
