//! Archives of drained slots: what keeps a scaled-away shard's transaction statuses
//! queryable.
//!
//! A receipt stays in the ledger of the shard that executed the transaction (it does not
//! move with the sender's table), so once a scale-in deletes a drained slot's nodes,
//! `trellis_getTransaction` for its transactions answers `unknown`. With
//! `spec.shards.drainedHistorySeconds > 0` the operator keeps the slot's StatefulSet at
//! one replica (pod 0, on its own claim) for that long after the slot drained, and every
//! node's transaction lookup asks it (docs/sharding.md, "Transaction statuses of a
//! drained slot"). When the time is up, the StatefulSet goes like any drained slot's.
//!
//! The moment a slot was first kept is recorded on its StatefulSet
//! ([`DRAINED_AT_ANNOTATION`], Unix seconds), so the retention survives operator restarts.
//! A slot that a later scale-out takes back is provisioned as a shard again (the archive
//! node rejoins with its data; the others come back on their retained claims), and its
//! annotation goes with the next apply.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;

use crate::reshard::{Slot, SlotState};

/// Annotation on an archived slot's StatefulSet: when the operator first kept it (Unix
/// seconds).
pub const DRAINED_AT_ANNOTATION: &str = "trellis.dev/drained-at";

/// A drained slot kept as an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Archive {
    pub shard: u16,
    /// When it was first kept (Unix seconds).
    pub since: i64,
}

/// The drained slots to keep as archives. `keep_seconds`: `spec.shards.drainedHistorySeconds`;
/// `now`: Unix seconds; `provisioned`: slots `0..provisioned` run as shards (never
/// archives); `existing`: the slots whose StatefulSet exists, each with its
/// [`DRAINED_AT_ANNOTATION`] when it has one; `slots`: what the slots' nodes report.
///
/// A slot not yet kept becomes an archive only once a quorum of it reported `drained`
/// (it served tables; a slot never in service executed nothing). One already kept stays
/// until `since + keep_seconds`, whatever its single node reports.
pub fn archives(
    keep_seconds: i64,
    now: i64,
    provisioned: u16,
    existing: &BTreeMap<u16, Option<i64>>,
    slots: &BTreeMap<u16, Slot>,
) -> Vec<Archive> {
    if keep_seconds <= 0 {
        return Vec::new();
    }
    existing
        .range(provisioned..)
        .filter_map(|(shard, kept)| {
            let since = match kept {
                Some(since) => *since,
                None if slots
                    .get(shard)
                    .is_some_and(|s| s.state == SlotState::Drained) =>
                {
                    now
                }
                None => return None,
            };
            (now.saturating_sub(since) < keep_seconds).then_some(Archive {
                shard: *shard,
                since,
            })
        })
        .collect()
}

/// The [`DRAINED_AT_ANNOTATION`] of a StatefulSet, when it has a valid one.
pub fn drained_at(set: &StatefulSet) -> Option<i64> {
    set.metadata
        .annotations
        .as_ref()?
        .get(DRAINED_AT_ANNOTATION)?
        .parse()
        .ok()
}

/// Turns a slot's built StatefulSet into its archive's: one replica (none while the
/// network is stopped) and the moment it was first kept.
pub fn keep_as_archive(set: &mut StatefulSet, archive: &Archive) {
    if let Some(spec) = set.spec.as_mut() {
        spec.replicas = Some(spec.replicas.unwrap_or(0).min(1));
    }
    set.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(DRAINED_AT_ANNOTATION.to_owned(), archive.since.to_string());
}

/// Seconds until the first archive's retention ends (when to look again).
pub fn next_expiry(archives: &[Archive], keep_seconds: i64, now: i64) -> Option<u64> {
    archives
        .iter()
        .map(|a| a.since.saturating_add(keep_seconds).saturating_sub(now))
        .min()
        .map(|s| u64::try_from(s.max(1)).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn slot(state: SlotState) -> Slot {
        Slot {
            state,
            active: false,
            tables: BTreeSet::new(),
        }
    }

    #[test]
    fn a_drained_slot_is_kept_for_the_retention_then_goes() {
        let slots = BTreeMap::from([
            (0, slot(SlotState::Joined)),
            (2, slot(SlotState::Drained)),
            (3, slot(SlotState::Pending("shard 3: 0 joined".into()))),
        ]);
        // Slot 2 drained now; slot 3 was never in service (nothing executed there).
        let existing = BTreeMap::from([(0, None), (2, None), (3, None)]);
        let kept = archives(600, 1_000, 2, &existing, &slots);
        assert_eq!(
            kept,
            vec![Archive {
                shard: 2,
                since: 1_000
            }]
        );
        // Retention 0: nothing kept, the slot goes at once (as before archives).
        assert!(archives(0, 1_000, 2, &existing, &slots).is_empty());
        // A slot still provisioned as a shard is never an archive.
        assert!(archives(600, 1_000, 3, &existing, &slots).is_empty());
        // Once kept, its single node (no quorum reports drained) keeps it until the end.
        let pending = BTreeMap::from([(2, slot(SlotState::Pending("1 drained".into())))]);
        let existing = BTreeMap::from([(2, Some(1_000))]);
        assert_eq!(
            archives(600, 1_599, 2, &existing, &pending),
            vec![Archive {
                shard: 2,
                since: 1_000
            }]
        );
        assert!(archives(600, 1_600, 2, &existing, &pending).is_empty());
        assert_eq!(
            next_expiry(
                &[Archive {
                    shard: 2,
                    since: 1_000
                }],
                600,
                1_200
            ),
            Some(400)
        );
        assert_eq!(next_expiry(&[], 600, 1_200), None);
    }

    #[test]
    fn an_archive_runs_one_node_and_records_when_it_was_kept() {
        let mut set = StatefulSet {
            spec: Some(k8s_openapi::api::apps::v1::StatefulSetSpec {
                replicas: Some(4),
                ..Default::default()
            }),
            ..Default::default()
        };
        keep_as_archive(
            &mut set,
            &Archive {
                shard: 2,
                since: 77,
            },
        );
        assert_eq!(set.spec.as_ref().unwrap().replicas, Some(1));
        assert_eq!(drained_at(&set), Some(77));
        // Stopped network: zero stays zero.
        set.spec.as_mut().unwrap().replicas = Some(0);
        keep_as_archive(
            &mut set,
            &Archive {
                shard: 2,
                since: 77,
            },
        );
        assert_eq!(set.spec.as_ref().unwrap().replicas, Some(0));
        set.metadata.annotations = Some(BTreeMap::from([(
            DRAINED_AT_ANNOTATION.to_owned(),
            "soon".to_owned(),
        )]));
        assert_eq!(drained_at(&set), None);
    }
}
