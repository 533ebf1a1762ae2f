//! A network's billable footprint over time, and what it accrues in a time span.
//!
//! The console records a [`Footprint`] every time a network's desired state changes
//! (create, scale, pause, resume, stop, delete) at the time of the change. Usage in any
//! window is then a pure function of that log, so a metering pass that ran late (the
//! console was down) computes exactly what an on-time pass would have.

use serde::{Deserialize, Serialize};

/// What a network occupies from a moment on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footprint {
    /// Validator nodes of the planned topology.
    pub nodes: u32,
    /// Ledger storage across all nodes, GiB.
    pub storage_gib: u64,
    /// False while paused or stopped: nodes are not billed for compute.
    pub compute_billed: bool,
}

impl Footprint {
    /// A deleted network: nothing.
    pub const NONE: Footprint = Footprint {
        nodes: 0,
        storage_gib: 0,
        compute_billed: false,
    };

    fn billed_nodes(self) -> u64 {
        if self.compute_billed {
            u64::from(self.nodes)
        } else {
            0
        }
    }
}

/// A footprint that took effect at `at` (unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub at: i64,
    pub footprint: Footprint,
}

/// What a span accrued, in base units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accrued {
    pub node_seconds: u64,
    pub storage_gib_seconds: u64,
}

/// The footprint in effect at `t`: the last change at or before `t`, else `before`.
pub fn footprint_at(before: Footprint, changes: &[Change], t: i64) -> Footprint {
    changes
        .iter()
        .take_while(|change| change.at <= t)
        .last()
        .map_or(before, |change| change.footprint)
}

/// What `[from, to)` accrued, given the footprint in effect before any of `changes`
/// (`before`) and the changes sorted by time. Changes outside the span only matter for
/// the footprint they leave in effect.
pub fn accrue(before: Footprint, changes: &[Change], from: i64, to: i64) -> Accrued {
    let mut accrued = Accrued::default();
    if to <= from {
        return accrued;
    }
    let mut current = footprint_at(before, changes, from);
    let mut cursor = from;
    for change in changes
        .iter()
        .filter(|change| change.at > from && change.at < to)
    {
        add(&mut accrued, current, change.at - cursor);
        cursor = change.at;
        current = change.footprint;
    }
    add(&mut accrued, current, to - cursor);
    accrued
}

fn add(accrued: &mut Accrued, footprint: Footprint, seconds: i64) {
    let seconds = u64::try_from(seconds).unwrap_or(0);
    accrued.node_seconds = accrued
        .node_seconds
        .saturating_add(footprint.billed_nodes().saturating_mul(seconds));
    accrued.storage_gib_seconds = accrued
        .storage_gib_seconds
        .saturating_add(footprint.storage_gib.saturating_mul(seconds));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(nodes: u32) -> Footprint {
        Footprint {
            nodes,
            storage_gib: u64::from(nodes) * 10,
            compute_billed: true,
        }
    }

    #[test]
    fn spans_are_split_at_changes() {
        let paused = Footprint {
            compute_billed: false,
            ..running(12)
        };
        let changes = [
            Change {
                at: 100,
                footprint: running(8),
            },
            Change {
                at: 1000,
                footprint: running(12),
            },
            Change {
                at: 2000,
                footprint: paused,
            },
            Change {
                at: 3000,
                footprint: Footprint::NONE,
            },
        ];
        // Before creation nothing; the whole life in one span.
        let all = accrue(Footprint::NONE, &changes, 0, 4000);
        assert_eq!(all.node_seconds, 900 * 8 + 1000 * 12);
        assert_eq!(all.storage_gib_seconds, 900 * 80 + 2000 * 120);
        // Split into windows, the parts add up to the whole.
        let parts: Vec<Accrued> = [(0, 500), (500, 1500), (1500, 2500), (2500, 4000)]
            .iter()
            .map(|&(from, to)| accrue(Footprint::NONE, &changes, from, to))
            .collect();
        assert_eq!(
            parts.iter().map(|part| part.node_seconds).sum::<u64>(),
            all.node_seconds
        );
        assert_eq!(
            parts
                .iter()
                .map(|part| part.storage_gib_seconds)
                .sum::<u64>(),
            all.storage_gib_seconds
        );
        assert_eq!(footprint_at(Footprint::NONE, &changes, 1000), running(12));
        assert_eq!(accrue(running(1), &[], 10, 10), Accrued::default());
    }
}
