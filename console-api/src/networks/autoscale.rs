//! The console's built-in autoscaler, for provisioners that measure load themselves (the
//! local one; in `kube` mode the operator autoscales the `ChainNetwork`).
//!
//! Every pass looks at each public network with `autoscaling.enabled` (neither paused,
//! stopped, deleting nor waiting for a change to be provisioned), asks the provisioner
//! for its per-shard load ([`Provisioner::network_load`](crate::provisioner::Provisioner::network_load)),
//! turns the committed-transactions counters into tx/s and asks the shared policy
//! ([`trellis_autoscale::decide`]: min/max, targets, stabilization window, cooldown — the
//! operator's). When it decides, the shard count changes exactly as a user's
//! `PATCH /v1/networks/{id}` with `shards.count` does: validated, the plan checked, the
//! spec and a new generation committed with the billing ledger, the network's
//! `autoscaler` status and an audit entry (`network.autoscale` by `system:autoscaler`,
//! with the reason), then handed to the provisioner, which takes it through the beacon.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::TransactionTrait;
use serde::{Deserialize, Serialize};
use trellis_autoscale::{Decision, LoadHistory, Policy, ShardLoad, decide};
use trellis_console_entity::network;
use utoipa::ToSchema;
use uuid::Uuid;

use super::spec::{
    AutoscalingPolicy, NetworkMode, NetworkSpec, ShardRange, ShardRangePatch, UpdateNetworkRequest,
};
use super::{NetworkPhase, reconcile, store};
use crate::app::AppState;
use crate::audit;
use crate::error::{ApiError, ApiResult};
use crate::provisioner::NetworkLoad;
use crate::tenancy::TenantId;

/// Who the audit log names for the autoscaler's changes.
pub const ACTOR: &str = "system:autoscaler";
/// The audit action of an autoscaler's shard-count change.
pub const ACTION: &str = "network.autoscale";

/// How often `trellis-console` (local mode) runs a pass: often enough that the rates
/// (measured over at least `MIN_RATE_INTERVAL_SECONDS`) stay current, seldom enough that
/// reading every shard's metrics costs nothing noticeable.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Networks read per database page.
const BATCH: u64 = 100;

/// The autoscaler's memory: per network, the counter readings and recommendations.
/// Lost on a console restart, which only restarts the stabilization window (the cooldown
/// is read back from the network row).
#[derive(Debug, Default)]
pub struct Autoscaler {
    histories: HashMap<Uuid, LoadHistory>,
    /// Networks whose last change was read from their row (once per history).
    recalled: HashSet<Uuid>,
}

/// The autoscaler's last change of a network's shard count and why (kept on the network
/// row, written with the change and its audit entry; the operator's `status.autoscaler`
/// in local mode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AutoscalerStatus {
    pub last_scale_time: DateTime<Utc>,
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

/// What one pass did to one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub network: Uuid,
    pub decision: Decision,
}

/// Runs a pass every `interval` until the process ends.
pub async fn run(state: AppState, interval: Duration) {
    let mut autoscaler = Autoscaler::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        match autoscaler.pass(&state, now).await {
            Ok(outcomes) => {
                for o in outcomes {
                    if let Decision::Hold { reason } = &o.decision {
                        tracing::debug!(network = %o.network, %reason, "autoscaler holds");
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "autoscaler pass failed"),
        }
    }
}

impl Autoscaler {
    /// One pass over every network at time `now` (Unix seconds). Networks the provisioner
    /// does not measure are skipped (and forgotten).
    pub async fn pass(&mut self, state: &AppState, now: f64) -> ApiResult<Vec<Outcome>> {
        let mut outcomes = Vec::new();
        let mut seen = HashSet::new();
        let mut after = None;
        loop {
            let rows = store::all_after(&state.db, after, BATCH).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id);
            for row in rows {
                let Some(spec) = candidate(&row) else {
                    continue;
                };
                let network = reconcile::network_ref_of(&state.db, &row).await?;
                let load = match state.provisioner.network_load(&network).await {
                    Ok(Some(load)) => load,
                    Ok(None) => continue,
                    Err(err) => {
                        seen.insert(row.id);
                        outcomes.push(Outcome {
                            network: row.id,
                            decision: Decision::Hold {
                                reason: format!("no load reading: {err}"),
                            },
                        });
                        continue;
                    }
                };
                seen.insert(row.id);
                let history = self.histories.entry(row.id).or_default();
                if self.recalled.insert(row.id) {
                    history.state.last_change_seconds = last_change(&row);
                }
                let changed_before = history.state.last_change_seconds;
                let mut decision = assess(history, &spec.autoscaling, spec.shards, &load, now);
                if let Decision::Scale { to, reason } = &decision
                    && let Err(err) = scale(state, &row, &spec, *to, reason).await
                {
                    // Not changed, so no cooldown; one network's refusal (its plan, a
                    // database hiccup) does not stop the pass for the others.
                    tracing::warn!(network = %row.id, to, error = %err, "autoscaler could not scale");
                    history.state.last_change_seconds = changed_before;
                    decision = Decision::Hold {
                        reason: format!("scaling to {to} shards failed: {err}"),
                    };
                }
                outcomes.push(Outcome {
                    network: row.id,
                    decision,
                });
            }
        }
        self.histories.retain(|id, _| seen.contains(id));
        self.recalled.retain(|id| seen.contains(id));
        Ok(outcomes)
    }
}

/// The network's spec when the autoscaler should look at it now: a public network with
/// autoscaling enabled, neither paused nor stopped, not being deleted, whose last change
/// the provisioner has accepted (a change still waiting is not decided on again).
fn candidate(row: &network::Model) -> Option<NetworkSpec> {
    let spec: NetworkSpec = serde_json::from_value(row.spec.clone()).ok()?;
    let phase = NetworkPhase::parse(&row.phase);
    let wanted = spec.mode == NetworkMode::Public
        && spec.autoscaling.enabled
        && !spec.paused
        && !spec.stopped
        && !matches!(phase, NetworkPhase::Deleting | NetworkPhase::Failed)
        && row.provisioned_generation >= row.generation;
    wanted.then_some(spec)
}

/// The shared policy's view of the console's `autoscaling` settings.
pub fn policy_of(settings: &AutoscalingPolicy) -> Policy {
    Policy {
        enabled: settings.enabled,
        target_tx_per_second_per_shard: Some(i64::from(settings.target_tx_per_second_per_shard)),
        target_mempool_depth: Some(i64::from(settings.target_mempool_depth)),
        cooldown_seconds: i64::from(settings.cooldown_seconds),
        stabilization_window_seconds: i64::from(settings.stabilization_window_seconds),
    }
}

/// Turns one reading of a network into rates and asks the policy (pure: the reading and
/// the clock come in, the decision goes out, `history` remembers). Holds while any
/// in-service shard has no rate yet (its first reading, a restarted node) and while a
/// shard-count change is under way.
pub fn assess(
    history: &mut LoadHistory,
    settings: &AutoscalingPolicy,
    shards: ShardRange,
    load: &NetworkLoad,
    now: f64,
) -> Decision {
    history.retain_shards(load.in_service);
    let mut loads = Vec::new();
    let mut missing = Vec::new();
    for (shard, reading) in &load.shards {
        let reading = match reading {
            Ok(reading) => reading,
            Err(_) => {
                missing.push(*shard);
                continue;
            }
        };
        match history.rate(*shard, reading.txs_committed, now) {
            Some(tx_per_second) => loads.push(ShardLoad {
                tx_per_second,
                mempool_depth: reading.mempool_depth as f64,
            }),
            None => missing.push(*shard),
        }
    }
    if loads.len() + missing.len() < usize::from(load.in_service) {
        return Decision::Hold {
            reason: format!(
                "{} of {} shards in service reported",
                load.shards.len(),
                load.in_service
            ),
        };
    }
    if !missing.is_empty() {
        return Decision::Hold {
            reason: format!("no load reading yet for shards {missing:?}"),
        };
    }
    if load.scaling {
        return Decision::Hold {
            reason: "a shard-count change is in progress".to_owned(),
        };
    }
    let bound = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    decide(
        &policy_of(settings),
        bound(shards.min),
        bound(shards.max),
        load.in_service,
        &loads,
        &mut history.state,
        now as i64,
    )
}

/// When the autoscaler last changed the network's shard count, from the network row: the
/// cooldown survives a console restart.
fn last_change(row: &network::Model) -> Option<i64> {
    let status: AutoscalerStatus = serde_json::from_value(row.autoscaler.clone()?).ok()?;
    Some(status.last_scale_time.timestamp())
}

/// Changes the shard count to `to` the way a user's scale request does (see
/// `networks::update`), recording `reason`.
async fn scale(
    state: &AppState,
    row: &network::Model,
    current: &NetworkSpec,
    to: u16,
    reason: &str,
) -> ApiResult<()> {
    let tenant = TenantId::trusted(row.tenant_id);
    let patch = UpdateNetworkRequest {
        shards: Some(ShardRangePatch {
            count: Some(u32::from(to)),
            ..ShardRangePatch::default()
        }),
        ..UpdateNetworkRequest::default()
    };
    let next = current.patched(&patch).map_err(ApiError::validation)?;
    let (plan, networks, nodes) = store::usage(&state.db, tenant, Some(row.id)).await?;
    crate::plans::check_stored(&state.db, &plan, &next, networks, nodes).await?;
    let txn = state.db.begin().await?;
    let Some(updated) = store::update_spec(&txn, tenant, row, &next).await? else {
        // The network changed meanwhile (a user's request, a deletion): the next pass
        // decides again on what it is now.
        return Ok(());
    };
    crate::billing::ledger::record(&txn, &state.billing, &updated, &next).await?;
    // One time for the row and the audit entry, in whole microseconds (PostgreSQL's
    // precision), so both read back the same.
    let at = Utc::now().trunc_subsecs(6);
    let status = AutoscalerStatus {
        last_scale_time: at,
        from: current.shards.count,
        to: u32::from(to),
        reason: reason.to_owned(),
    };
    store::set_autoscaler(&txn, row.id, &status).await?;
    audit::record_at(
        &txn,
        tenant,
        ACTOR,
        ACTION,
        Some(format!("network:{}", row.id)),
        serde_json::json!({
            "shards": { "count": to },
            "from": status.from,
            "to": status.to,
            "reason": reason,
        }),
        at,
    )
    .await?;
    txn.commit().await?;
    tracing::info!(network = %row.id, from = current.shards.count, to, %reason, "autoscaler set the shard count");
    reconcile::apply(state, updated).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provisioner::ShardReading;

    fn settings() -> AutoscalingPolicy {
        AutoscalingPolicy {
            enabled: true,
            target_tx_per_second_per_shard: 100,
            target_mempool_depth: 1_000,
            cooldown_seconds: 60,
            stabilization_window_seconds: 20,
        }
    }

    const RANGE: ShardRange = ShardRange {
        count: 1,
        min: 1,
        max: 4,
    };

    /// A network of `in_service` shards whose counters read `txs` each.
    fn load(in_service: u16, txs: u64) -> NetworkLoad {
        NetworkLoad {
            in_service,
            scaling: false,
            shards: (0..in_service)
                .map(|s| {
                    (
                        s,
                        Ok(ShardReading {
                            txs_committed: txs,
                            mempool_depth: 0,
                        }),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn sustained_load_scales_out_after_the_window() {
        let mut history = LoadHistory::default();
        let p = settings();
        // First reading: no rate yet.
        assert!(matches!(
            assess(&mut history, &p, RANGE, &load(1, 0), 0.0),
            Decision::Hold { .. }
        ));
        // 300 tx/s against a target of 100: three shards, once it held for 20 s.
        let mut decided = None;
        for step in 1..=5u32 {
            let t = f64::from(step) * 10.0;
            if let Decision::Scale { to, reason } = assess(
                &mut history,
                &p,
                RANGE,
                &load(1, u64::from(step) * 3_000),
                t,
            ) {
                decided = Some((t, to, reason));
                break;
            }
        }
        let (at, to, reason) = decided.expect("it scaled");
        assert_eq!(to, 3);
        assert!(at >= 30.0, "the 20 s window must have held: {at}");
        assert!(reason.contains("1 -> 3"), "{reason}");
    }

    #[test]
    fn holds_while_a_shard_is_unread_or_a_change_is_under_way() {
        let mut history = LoadHistory::default();
        let p = settings();
        assess(&mut history, &p, RANGE, &load(2, 0), 0.0);
        let mut partial = load(2, 10_000);
        partial.shards[1].1 = Err("no validator answered".into());
        match assess(&mut history, &p, RANGE, &partial, 10.0) {
            Decision::Hold { reason } => assert!(reason.contains("[1]"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let mut busy = load(2, 20_000);
        busy.scaling = true;
        match assess(&mut history, &p, RANGE, &busy, 20.0) {
            Decision::Hold { reason } => assert!(reason.contains("in progress"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let mut short = load(2, 30_000);
        short.shards.pop();
        assert!(matches!(
            assess(&mut history, &p, RANGE, &short, 30.0),
            Decision::Hold { .. }
        ));
    }

    #[test]
    fn the_range_bounds_the_decision_and_idle_load_scales_in() {
        let mut history = LoadHistory::default();
        let p = settings();
        let range = ShardRange {
            count: 3,
            min: 2,
            max: 3,
        };
        let mut decided = None;
        for step in 0..=10u32 {
            // No transactions at all: one shard would do, the minimum is two.
            if let Decision::Scale { to, .. } =
                assess(&mut history, &p, range, &load(3, 5), f64::from(step) * 10.0)
            {
                decided = Some(to);
                break;
            }
        }
        assert_eq!(decided, Some(2));
    }

    #[test]
    fn the_console_settings_map_onto_the_shared_policy() {
        let p = policy_of(&settings());
        assert_eq!(p.target_tx_per_second_per_shard, Some(100));
        assert_eq!(p.target_mempool_depth, Some(1_000));
        assert_eq!(
            (p.cooldown_seconds, p.stabilization_window_seconds),
            (60, 20)
        );
        assert!(p.enabled);
    }
}
