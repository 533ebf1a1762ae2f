//! The built-in autoscaler's reconcile step: read each in-service shard's load from its
//! nodes' metrics, keep the rates in the status, and set `spec.shards.count` when the
//! policy ([`trellis_autoscale::decide`], shared with the console's local mode) says so. The per-table load it measured is the
//! hint the next `SetShardCount` carries ([`load_hint`]), so the beacon moves the busiest
//! tables. The change then takes the same path as
//! `kubectl scale` or an HPA: new shards are provisioned, the beacon is asked, drained
//! shards are removed.

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};
use trellis_crd::topology::{CommitteeRole, Topology};
use trellis_crd::{AutoscalerStatus, AutoscalingSpec, ChainNetwork, ChainNetworkStatus};

use crate::chain::{ChainError, CommitteeLoad, CommitteeNodes};
use crate::controller::{Context, Error};
use crate::status::ShardPlan;
use trellis_autoscale::{Decision, Policy, ShardLoad, decide};

/// Field manager of the autoscaler's writes to `spec.shards.count`.
pub const FIELD_MANAGER: &str = "trellis-autoscaler";

/// Runs the autoscaler for one network; writes the per-shard rates (and a decision) into
/// `next`.
pub(crate) async fn autoscale(
    ctx: &Context,
    network: &ChainNetwork,
    topology: &Topology,
    shards: &ShardPlan,
    next: &mut ChainNetworkStatus,
) -> Result<(), Error> {
    let namespace = network.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", network.name_any());
    match network.spec.autoscaling.as_ref() {
        Some(p) if p.enabled && !network.spec.paused && !network.spec.stopped => {}
        _ => {
            if let Ok(mut memory) = ctx.autoscalers.lock() {
                memory.remove(&key);
            }
            return Ok(());
        }
    }
    let asks = topology.shards().filter_map(|committee| {
        let CommitteeRole::Shard(id) = committee.role else {
            return None;
        };
        if id >= shards.in_service {
            return None;
        }
        let nodes = CommitteeNodes::of(&topology.genesis.chain_id, &namespace, committee);
        Some(async move { (id, ctx.chain.committee_load(&nodes).await) })
    });
    let answers = futures::future::join_all(asks).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();

    let decision = record(ctx, key, network, shards, answers, now, next);
    let (to, reason) = match decision {
        Decision::Hold { reason } => {
            debug!(network = %network.name_any(), %reason, "autoscaler holds");
            return Ok(());
        }
        Decision::Scale { to, reason } => (to, reason),
    };

    // Act like `kubectl scale`: only `spec.shards.count` changes.
    let api: Api<ChainNetwork> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({"spec": {"shards": {"count": to}}});
    api.patch(
        &network.name_any(),
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        },
        &Patch::Merge(&patch),
    )
    .await?;
    info!(network = %network.name_any(), from = shards.in_service, to, %reason, "autoscaler set the shard count");
    next.autoscaler = Some(AutoscalerStatus {
        last_scale_time: Time(k8s_openapi::jiff::Timestamp::now()),
        from: i32::from(shards.in_service),
        to: i32::from(to),
        reason: reason.clone(),
    });
    let event = Event {
        type_: EventType::Normal,
        reason: "Autoscaled".to_owned(),
        note: Some(reason),
        action: "Scale".to_owned(),
        secondary: None,
    };
    // Best effort, as every Event.
    if let Err(e) = ctx.recorder.publish(&event, &network.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
    Ok(())
}

/// Turns this round's readings into rates (kept in `next`) and asks the policy.
fn record(
    ctx: &Context,
    key: String,
    network: &ChainNetwork,
    shards: &ShardPlan,
    answers: Vec<(u16, Result<CommitteeLoad, ChainError>)>,
    now: f64,
    next: &mut ChainNetworkStatus,
) -> Decision {
    let Some(policy) = network.spec.autoscaling.as_ref() else {
        return Decision::Hold {
            reason: "no autoscaling policy".to_owned(),
        };
    };
    let Ok(mut memory) = ctx.autoscalers.lock() else {
        return Decision::Hold {
            reason: "autoscaler memory unavailable".to_owned(),
        };
    };
    let history = memory.entry(key).or_default();
    history.retain_shards(shards.in_service);
    let mut loads = Vec::new();
    let mut missing = Vec::new();
    let mut table_txs = std::collections::BTreeMap::<u8, u64>::new();
    for (id, answer) in answers {
        let load = match answer {
            Ok(load) => load,
            Err(e) => {
                debug!(shard = id, error = %e, "no load reading");
                missing.push(id);
                continue;
            }
        };
        // A table is owned by one shard; right after a move both may report it.
        for (table, txs) in &load.table_txs {
            let seen = table_txs.entry(*table).or_default();
            *seen = (*seen).max(*txs);
        }
        let rate = history.rate(id, load.txs_committed, now);
        if let Some(shard) = next.shards.iter_mut().find(|s| s.id == i32::from(id)) {
            // Two decimals: the status is for people and dashboards.
            shard.tx_per_second = rate.map(|r| (r * 100.0).round() / 100.0);
            shard.mempool_depth = i64::try_from(load.mempool_depth).ok();
        }
        match rate {
            Some(tx_per_second) => loads.push(ShardLoad {
                tx_per_second,
                mempool_depth: load.mempool_depth as f64,
            }),
            None => missing.push(id),
        }
    }
    if missing.is_empty() {
        history.record_tables(table_txs, now);
    }
    if history.state.last_change_seconds.is_none() {
        // The cooldown survives an operator restart or a new leader: the status keeps
        // when the shard count last changed.
        history.state.last_change_seconds = network
            .status
            .as_ref()
            .and_then(|s| s.autoscaler.as_ref())
            .map(|a| a.last_scale_time.0.as_second());
    }
    if !missing.is_empty() {
        Decision::Hold {
            reason: format!("no load reading yet for shards {missing:?}"),
        }
    } else if shards.is_scaling() {
        Decision::Hold {
            reason: "a shard-count change is in progress".to_owned(),
        }
    } else {
        let bound = |v: i32| u16::try_from(v).unwrap_or(1);
        decide(
            &policy_of(policy),
            bound(network.spec.shards.min),
            bound(network.spec.shards.max),
            shards.in_service,
            &loads,
            &mut history.state,
            now as i64,
        )
    }
}

/// The shared policy's view of the resource's `spec.autoscaling`.
fn policy_of(spec: &AutoscalingSpec) -> Policy {
    Policy {
        enabled: spec.enabled,
        target_tx_per_second_per_shard: spec.target_tx_per_second_per_shard,
        target_mempool_depth: spec.target_mempool_depth,
        cooldown_seconds: spec.cooldown_seconds,
        stabilization_window_seconds: spec.stabilization_window_seconds,
    }
}

/// The per-table load hint for `network`'s next `SetShardCount` (see
/// [`trellis_autoscale::LoadHistory::load_hint`]); empty when the autoscaler measured
/// none (it is off, or has not read two windows yet).
pub(crate) fn load_hint(ctx: &Context, network: &ChainNetwork) -> Vec<u64> {
    let key = format!(
        "{}/{}",
        network.namespace().unwrap_or_default(),
        network.name_any()
    );
    ctx.autoscalers
        .lock()
        .ok()
        .and_then(|memory| {
            memory
                .get(&key)
                .map(trellis_autoscale::LoadHistory::load_hint)
        })
        .unwrap_or_default()
}
