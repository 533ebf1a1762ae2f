//! The built-in shard autoscaler's policy. Pure: loads and history in, a decision out.
//!
//! Recommendation (like the Horizontal Pod Autoscaler): for each configured target,
//! `ceil(current × average / target)`, the largest wins, clamped to `[min, max]`; within
//! 10 % of the target nothing changes. A recommendation is acted on only once it has held
//! for the whole stabilization window (scale-out uses the window's smallest
//! recommendation, scale-in its largest, so a spike or a dip does not flap the shard
//! count), and never within the cooldown after the previous change.
//!
//! The per-shard loads come from the nodes' Prometheus metrics (read with
//! [`crate::scrape`]); [`LoadHistory`] turns the committed-transactions counter into a
//! rate between readings.

use std::collections::BTreeMap;

/// A network's autoscaling policy, as its owner wrote it (the operator's
/// `spec.autoscaling`, the console's `autoscaling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Whether the shard count follows load at all.
    pub enabled: bool,
    /// Scale out when the average committed tx/s per shard exceeds this (`None` or not
    /// positive: not a target).
    pub target_tx_per_second_per_shard: Option<i64>,
    /// Scale out when the average mempool depth per shard exceeds this (`None` or not
    /// positive: not a target).
    pub target_mempool_depth: Option<i64>,
    /// Seconds to wait after a shard-count change before the next one.
    pub cooldown_seconds: i64,
    /// Seconds a recommendation must hold before it is acted on.
    pub stabilization_window_seconds: i64,
}

/// Two counter readings closer than this give no new rate (the previous one stands): a
/// burst of reconciles must not turn a single block into a huge or zero rate.
pub const MIN_RATE_INTERVAL_SECONDS: f64 = 5.0;

/// One shard's last counter reading and the rate it gave.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    txs_committed: u64,
    at_seconds: f64,
    rate: Option<f64>,
}

/// The autoscaler's memory of one network between readings: counter readings per shard
/// and the policy's recommendations. Lost on a restart (of the operator or the console),
/// which only restarts the stabilization window (as the Horizontal Pod Autoscaler's is).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadHistory {
    readings: BTreeMap<u16, Reading>,
    /// Per-table transaction counters at the last table reading, and when.
    tables: Option<(f64, BTreeMap<u8, u64>)>,
    /// Transactions per table between the last two table readings (256 entries, or
    /// empty before two readings): the load hint of `SetShardCount`.
    table_window: Vec<u64>,
    pub state: AutoscalerState,
}

impl LoadHistory {
    /// Records a reading of `shard`'s committed-transactions counter and returns its rate
    /// (tx/s) since the previous reading: `None` for the first reading and after the
    /// counter went back (the node restarted, or the shard is new).
    pub fn rate(&mut self, shard: u16, txs_committed: u64, now_seconds: f64) -> Option<f64> {
        let fresh = Reading {
            txs_committed,
            at_seconds: now_seconds,
            rate: None,
        };
        let Some(previous) = self.readings.get(&shard).copied() else {
            self.readings.insert(shard, fresh);
            return None;
        };
        if txs_committed < previous.txs_committed {
            self.readings.insert(shard, fresh);
            return None;
        }
        let elapsed = now_seconds - previous.at_seconds;
        if elapsed < MIN_RATE_INTERVAL_SECONDS {
            return previous.rate;
        }
        let rate = (txs_committed - previous.txs_committed) as f64 / elapsed;
        self.readings.insert(
            shard,
            Reading {
                rate: Some(rate),
                ..fresh
            },
        );
        Some(rate)
    }

    /// Records the per-table counters (`trellis_table_txs_total`, every in-service shard's
    /// tables together). At least [`MIN_RATE_INTERVAL_SECONDS`] after the previous
    /// reading, each table's growth since then becomes the load hint; a counter that went
    /// back (a node restarted, or the table just moved in) counts from zero.
    pub fn record_tables(&mut self, totals: BTreeMap<u8, u64>, now_seconds: f64) {
        let Some((at, previous)) = &self.tables else {
            self.tables = Some((now_seconds, totals));
            return;
        };
        if now_seconds - at < MIN_RATE_INTERVAL_SECONDS {
            return;
        }
        let mut window = vec![0u64; 256];
        for (table, now) in &totals {
            let before = previous.get(table).copied().unwrap_or(0);
            window[usize::from(*table)] = if *now >= before { now - before } else { *now };
        }
        self.table_window = window;
        self.tables = Some((now_seconds, totals));
    }

    /// The per-table load hint for `SetShardCount`: transactions per table over the last
    /// measuring window, or empty (no hint: the beacon balances table counts) before two
    /// readings or when no table took a transaction.
    pub fn load_hint(&self) -> Vec<u64> {
        if self.table_window.iter().all(|t| *t == 0) {
            Vec::new()
        } else {
            self.table_window.clone()
        }
    }

    /// Forgets shards that are no longer in service.
    pub fn retain_shards(&mut self, in_service: u16) {
        self.readings.retain(|shard, _| *shard < in_service);
    }
}

/// What one shard reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShardLoad {
    pub tx_per_second: f64,
    pub mempool_depth: f64,
}

/// One past recommendation: when, and how many shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at_seconds: i64,
    pub shards: u16,
}

/// The autoscaler's memory between reconciles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoscalerState {
    pub samples: Vec<Sample>,
    /// When the shard count last changed.
    pub last_change_seconds: Option<i64>,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Hold { reason: String },
    Scale { to: u16, reason: String },
}

/// Relative distance from the target inside which the shard count is left alone.
const TOLERANCE: f64 = 0.1;

/// The raw recommendation for `loads` (one entry per shard in service).
pub fn recommend(policy: &Policy, min: u16, max: u16, loads: &[ShardLoad]) -> u16 {
    let current = u16::try_from(loads.len()).unwrap_or(u16::MAX).max(1);
    let count = f64::from(current);
    let mut wanted = None::<u16>;
    let mut consider = |target: Option<i64>, value: fn(&ShardLoad) -> f64| {
        let Some(target) = target.filter(|t| *t > 0) else {
            return;
        };
        let average = loads.iter().map(value).sum::<f64>() / count;
        let ratio = average / target as f64;
        let shards = if (ratio - 1.0).abs() <= TOLERANCE {
            current
        } else {
            let raw = (count * ratio).ceil();
            if raw.is_finite() && raw >= 1.0 {
                // Saturates at u16::MAX; the clamp below brings it into bounds.
                raw.min(f64::from(u16::MAX)) as u16
            } else {
                1
            }
        };
        wanted = Some(wanted.map_or(shards, |w| w.max(shards)));
    };
    consider(policy.target_tx_per_second_per_shard, |l| l.tx_per_second);
    consider(policy.target_mempool_depth, |l| l.mempool_depth);
    wanted
        .unwrap_or(current)
        .clamp(min.max(1), max.max(min).max(1))
}

/// Records this round's recommendation and decides. `current` is the shard count in
/// service.
pub fn decide(
    policy: &Policy,
    min: u16,
    max: u16,
    current: u16,
    loads: &[ShardLoad],
    state: &mut AutoscalerState,
    now_seconds: i64,
) -> Decision {
    if !policy.enabled {
        return Decision::Hold {
            reason: "autoscaling disabled".to_owned(),
        };
    }
    let recommendation = recommend(policy, min, max, loads);
    let window = policy.stabilization_window_seconds.max(0);
    state.samples.push(Sample {
        at_seconds: now_seconds,
        shards: recommendation,
    });
    // Keep the samples inside the window, plus the newest one older than it (it tells
    // whether the window is fully covered).
    let cutoff = now_seconds - window;
    if let Some(last_old) = state.samples.iter().rposition(|s| s.at_seconds <= cutoff) {
        state.samples.drain(..last_old);
    }
    let covered = state
        .samples
        .first()
        .is_some_and(|s| s.at_seconds <= cutoff);
    let in_window: Vec<u16> = state
        .samples
        .iter()
        .filter(|s| s.at_seconds >= cutoff)
        .map(|s| s.shards)
        .collect();
    let (low, high) = (
        in_window.iter().copied().min().unwrap_or(current),
        in_window.iter().copied().max().unwrap_or(current),
    );
    let stabilized = if low > current {
        low
    } else if high < current {
        high
    } else {
        current
    };
    if stabilized == current {
        return Decision::Hold {
            reason: format!("{current} shards match the load (recommendation {recommendation})"),
        };
    }
    if !covered {
        return Decision::Hold {
            reason: format!(
                "recommendation {recommendation} must hold for the {window}s stabilization window"
            ),
        };
    }
    if let Some(last) = state.last_change_seconds {
        let cooldown = policy.cooldown_seconds.max(0);
        if now_seconds < last + cooldown {
            return Decision::Hold {
                reason: format!("cooldown: {}s left", last + cooldown - now_seconds),
            };
        }
    }
    state.last_change_seconds = Some(now_seconds);
    Decision::Scale {
        to: stabilized,
        reason: format!(
            "load held for {window}s: {current} -> {stabilized} shards (recommendation {recommendation})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_hint_is_each_tables_growth_over_the_last_window() {
        let mut history = LoadHistory::default();
        assert!(history.load_hint().is_empty(), "no reading: no hint");
        history.record_tables([(3, 100), (7, 10)].into_iter().collect(), 0.0);
        assert!(history.load_hint().is_empty(), "one reading: no hint");
        // Too soon after the previous reading: nothing changes.
        history.record_tables([(3, 150), (7, 10)].into_iter().collect(), 1.0);
        assert!(history.load_hint().is_empty());
        history.record_tables(
            [(3, 400), (7, 15), (9, 4)].into_iter().collect(),
            MIN_RATE_INTERVAL_SECONDS,
        );
        let hint = history.load_hint();
        assert_eq!(hint.len(), 256);
        assert_eq!((hint[3], hint[7], hint[9], hint[0]), (300, 5, 4, 0));
        // A counter that went back (restart, a table that moved in) counts from zero.
        history.record_tables(
            [(3, 20), (7, 15)].into_iter().collect(),
            2.0 * MIN_RATE_INTERVAL_SECONDS,
        );
        let hint = history.load_hint();
        assert_eq!((hint[3], hint[7], hint[9]), (20, 0, 0));
        // A quiet window gives no hint: the beacon balances table counts.
        history.record_tables(
            [(3, 20), (7, 15)].into_iter().collect(),
            3.0 * MIN_RATE_INTERVAL_SECONDS,
        );
        assert!(history.load_hint().is_empty());
    }

    #[test]
    fn a_counter_becomes_a_rate_between_readings() {
        let mut history = LoadHistory::default();
        assert_eq!(history.rate(0, 1_000, 100.0), None);
        // Too soon: no rate yet, and the baseline stays.
        assert_eq!(history.rate(0, 1_010, 101.0), None);
        assert_eq!(history.rate(0, 1_600, 110.0), Some(60.0));
        // Too soon again: the last rate stands.
        assert_eq!(history.rate(0, 1_700, 111.0), Some(60.0));
        assert_eq!(history.rate(0, 1_500, 120.0), None, "counter went back");
        assert_eq!(history.rate(0, 1_600, 130.0), Some(10.0));
        // Shards are independent, and shards out of service are forgotten.
        assert_eq!(history.rate(1, 5, 130.0), None);
        history.retain_shards(1);
        assert_eq!(history.rate(1, 50, 140.0), None);
    }

    fn policy(tps: Option<i64>, mempool: Option<i64>) -> Policy {
        Policy {
            enabled: true,
            target_tx_per_second_per_shard: tps,
            target_mempool_depth: mempool,
            cooldown_seconds: 600,
            stabilization_window_seconds: 300,
        }
    }

    fn loads(tps: &[f64]) -> Vec<ShardLoad> {
        tps.iter()
            .map(|t| ShardLoad {
                tx_per_second: *t,
                mempool_depth: 0.0,
            })
            .collect()
    }

    #[test]
    fn recommendation_follows_the_hpa_formula() {
        let p = policy(Some(1000), None);
        assert_eq!(recommend(&p, 1, 16, &loads(&[2000.0, 2000.0])), 4);
        assert_eq!(
            recommend(&p, 1, 16, &loads(&[1050.0, 1000.0])),
            2,
            "within tolerance"
        );
        assert_eq!(recommend(&p, 1, 16, &loads(&[100.0, 100.0, 100.0])), 1);
        assert_eq!(
            recommend(&p, 2, 16, &loads(&[100.0, 100.0, 100.0])),
            2,
            "min"
        );
        assert_eq!(recommend(&p, 1, 3, &loads(&[9000.0])), 3, "max");
    }

    #[test]
    fn the_most_demanding_target_wins() {
        let p = policy(Some(1000), Some(100));
        let l = vec![ShardLoad {
            tx_per_second: 1000.0,
            mempool_depth: 500.0,
        }];
        assert_eq!(recommend(&p, 1, 16, &l), 5);
    }

    #[test]
    fn scale_out_waits_for_the_window_then_the_cooldown() {
        let p = policy(Some(1000), None);
        let mut state = AutoscalerState::default();
        let hot = loads(&[3000.0]);
        assert!(matches!(
            decide(&p, 1, 8, 1, &hot, &mut state, 0),
            Decision::Hold { .. }
        ));
        assert!(matches!(
            decide(&p, 1, 8, 1, &hot, &mut state, 200),
            Decision::Hold { .. }
        ));
        assert_eq!(
            decide(&p, 1, 8, 1, &hot, &mut state, 300),
            Decision::Scale {
                to: 3,
                reason: "load held for 300s: 1 -> 3 shards (recommendation 3)".to_owned()
            }
        );
        // Still hot at 3 shards: cooldown holds until 600 s after the change.
        let hotter = loads(&[3000.0, 3000.0, 3000.0]);
        let mut t = 300;
        while t < 900 {
            t += 60;
            match decide(&p, 1, 8, 3, &hotter, &mut state, t) {
                Decision::Hold { .. } => {}
                Decision::Scale { to, .. } => {
                    assert!(t >= 900, "scaled at {t}");
                    assert_eq!(to, 8);
                }
            }
        }
    }

    #[test]
    fn a_spike_inside_the_window_does_not_scale() {
        let p = policy(Some(1000), None);
        let mut state = AutoscalerState::default();
        let calm = loads(&[1000.0, 1000.0]);
        for t in (0..=300).step_by(60) {
            decide(&p, 1, 8, 2, &calm, &mut state, t);
        }
        let spike = loads(&[5000.0, 5000.0]);
        assert!(matches!(
            decide(&p, 1, 8, 2, &spike, &mut state, 360),
            Decision::Hold { .. }
        ));
        assert!(matches!(
            decide(&p, 1, 8, 2, &calm, &mut state, 420),
            Decision::Hold { .. }
        ));
    }

    #[test]
    fn scale_in_uses_the_highest_recent_recommendation() {
        let p = policy(Some(1000), None);
        let mut state = AutoscalerState::default();
        decide(&p, 1, 8, 4, &loads(&[100.0; 4]), &mut state, 0);
        decide(&p, 1, 8, 4, &loads(&[600.0; 4]), &mut state, 200);
        // At 300 the window [0, 300] holds recommendations 1 and 3: scale in to 3 only.
        match decide(&p, 1, 8, 4, &loads(&[100.0; 4]), &mut state, 300) {
            Decision::Scale { to, .. } => assert_eq!(to, 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn disabled_policy_holds() {
        let mut p = policy(Some(1), None);
        p.enabled = false;
        let mut state = AutoscalerState::default();
        assert!(matches!(
            decide(&p, 1, 8, 1, &loads(&[1e9]), &mut state, 10_000),
            Decision::Hold { .. }
        ));
        assert!(state.samples.is_empty());
    }
}
