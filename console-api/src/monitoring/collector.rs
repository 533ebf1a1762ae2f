//! The collector: one pass scrapes every node endpoint of every network and stores
//! what it saw; [`run`] repeats it.
//!
//! Endpoints are the `rpc_endpoints` the provisioner reports in a network's status
//! (`http://host:port` or `…/rpc`). A node that answers neither `/metrics` nor
//! `trellis_status` is down. Counters (finalized transactions, the finality-latency
//! histogram) are turned into increases against the node's previous scrape, which is
//! stored, so a console restart neither loses nor double-counts them.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};
use trellis_billing::alerts::{self, AlertKind, NodeView, ShardProgress};
use trellis_billing::meter::Meter;
use trellis_billing::metrics_text::{self, NodeMetrics, counter_increase};
use trellis_billing::rollup::ShardSample;
use trellis_console_entity::{monitor_node, network};
use trellis_node_api::NodeStatus;
use uuid::Uuid;

use super::store;
use crate::app::AppState;
use crate::error::ApiResult;
use crate::networks::NetworkPhase;
use crate::provisioner::ObservedStatus;
use crate::tenancy::TenantId;

/// Scrapes in flight at once.
const CONCURRENCY: usize = 32;

/// What one node answered.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub endpoint: String,
    pub up: bool,
    pub metrics: NodeMetrics,
    pub status: Option<NodeStatus>,
}

/// `http://host:port` of an endpoint given as `http://host:port[/rpc]`.
pub fn base_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    trimmed.strip_suffix("/rpc").unwrap_or(trimmed).to_string()
}

pub async fn scrape(client: &reqwest::Client, endpoint: &str) -> Scrape {
    let base = base_url(endpoint);
    let metrics = async {
        let response = client.get(format!("{base}/metrics")).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    };
    let status = async {
        let response = client
            .post(format!("{base}/rpc"))
            .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "trellis_status"}))
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        serde_json::from_value::<NodeStatus>(body.get("result")?.clone()).ok()
    };
    let (metrics, status) = tokio::join!(metrics, status);
    Scrape {
        endpoint: endpoint.to_string(),
        up: metrics.is_some() || status.is_some(),
        metrics: metrics
            .as_deref()
            .map(metrics_text::parse)
            .unwrap_or_default(),
        status,
    }
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CollectReport {
    pub networks: u64,
    pub nodes_up: u64,
    pub nodes_down: u64,
    pub alerts_fired: u64,
    pub alerts_resolved: u64,
}

/// One pass over every network with endpoints, then the tenants' quota alerts, then
/// retention.
pub async fn collect_once(state: &AppState) -> ApiResult<CollectReport> {
    let mut report = CollectReport::default();
    let networks = network::Entity::find()
        .filter(network::Column::Phase.ne(NetworkPhase::Deleting.as_str()))
        .all(&state.db)
        .await?;
    let mut tenants: Vec<Uuid> = networks.iter().map(|row| row.tenant_id).collect();
    tenants.sort();
    tenants.dedup();
    let targets: Vec<(network::Model, Vec<String>)> = networks
        .into_iter()
        .filter_map(|row| {
            let status: ObservedStatus = serde_json::from_value(row.status.clone()?).ok()?;
            (!status.rpc_endpoints.is_empty()).then_some((row, status.rpc_endpoints))
        })
        .collect();
    let client = &state.billing.http;
    let jobs: Vec<(usize, String)> = targets
        .iter()
        .enumerate()
        .flat_map(|(index, (_, endpoints))| endpoints.iter().map(move |e| (index, e.clone())))
        .collect();
    let scrapes: Vec<(usize, Scrape)> = futures::stream::iter(jobs)
        .map(|(index, endpoint)| async move { (index, scrape(client, &endpoint).await) })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut by_network: HashMap<usize, Vec<Scrape>> = HashMap::new();
    for (index, scrape) in scrapes {
        by_network.entry(index).or_default().push(scrape);
    }
    for (index, (row, _)) in targets.iter().enumerate() {
        let scrapes = by_network.remove(&index).unwrap_or_default();
        report.nodes_up += scrapes.iter().filter(|s| s.up).count() as u64;
        report.nodes_down += scrapes.iter().filter(|s| !s.up).count() as u64;
        let (fired, resolved) = record_network(state, row, scrapes).await?;
        report.alerts_fired += fired;
        report.alerts_resolved += resolved;
        report.networks += 1;
    }
    for tenant in tenants {
        let (fired, resolved) = quota_alerts(state, TenantId::trusted(tenant)).await?;
        report.alerts_fired += fired;
        report.alerts_resolved += resolved;
    }
    let settings = &state.billing.settings;
    store::prune(
        &state.db,
        state.billing.now(),
        settings.raw_retention_seconds,
        settings.minute_retention_seconds,
        settings.hour_retention_seconds,
    )
    .await?;
    Ok(report)
}

fn whole(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Stores one network's scrapes: node rows, shard samples and rollups, the
/// transactions meter, and its alerts — in one transaction.
async fn record_network(
    state: &AppState,
    row: &network::Model,
    scrapes: Vec<Scrape>,
) -> ApiResult<(u64, u64)> {
    let now = state.billing.now();
    let txn = state.db.begin().await?;
    let previous: HashMap<String, monitor_node::Model> = monitor_node::Entity::find()
        .filter(monitor_node::Column::NetworkId.eq(row.id))
        .all(&txn)
        .await?
        .into_iter()
        .map(|node| (node.endpoint.clone(), node))
        .collect();
    // Endpoints no longer reported are forgotten.
    monitor_node::Entity::delete_many()
        .filter(monitor_node::Column::NetworkId.eq(row.id))
        .filter(
            monitor_node::Column::Endpoint.is_not_in(scrapes.iter().map(|s| s.endpoint.clone())),
        )
        .exec(&txn)
        .await?;
    let mut shards: BTreeMap<u32, ShardSample> = BTreeMap::new();
    let mut views = Vec::new();
    for scrape in &scrapes {
        let before = previous.get(&scrape.endpoint);
        let shard = scrape.metrics.shard.or_else(|| {
            before
                .and_then(|b| b.shard)
                .and_then(|s| u32::try_from(s).ok())
        });
        let height = scrape
            .status
            .as_ref()
            .map(|s| s.finalized_height)
            .or(scrape.metrics.finalized_height);
        views.push(NodeView {
            endpoint: scrape.endpoint.clone(),
            shard,
            up: scrape.up,
            finalized_height: if scrape.up { height } else { None },
        });
        let Some(shard) = shard else { continue };
        let sample = shards.entry(shard).or_insert(ShardSample {
            at: now,
            peers: u64::MAX,
            ..ShardSample::default()
        });
        sample.validators_expected += 1;
        if !scrape.up {
            // Keep the node's last counters so that its increase is right when it is back.
            monitor_node::Entity::update_many()
                .col_expr(monitor_node::Column::Up, Expr::value(false))
                .col_expr(monitor_node::Column::ScrapedAt, Expr::value(now))
                .filter(monitor_node::Column::NetworkId.eq(row.id))
                .filter(monitor_node::Column::Endpoint.eq(&scrape.endpoint))
                .exec(&txn)
                .await?;
            continue;
        }
        sample.validators_up += 1;
        sample.finalized_height = sample.finalized_height.max(height.unwrap_or(0));
        let txs_total = scrape.metrics.txs_committed_total.unwrap_or(0);
        let txs = counter_increase(
            before
                .and_then(|b| b.txs_total)
                .and_then(|t| u64::try_from(t).ok()),
            txs_total,
        );
        // Every validator of a shard finalizes the same blocks: the shard's count is
        // the largest any of them saw, not the sum.
        sample.txs = sample.txs.max(txs);
        let latency_count = scrape.metrics.finality_latency_count.unwrap_or(0);
        let latency_sum = scrape.metrics.finality_latency_sum_seconds.unwrap_or(0.0);
        let previous_count = before
            .and_then(|b| b.latency_count)
            .and_then(|c| u64::try_from(c).ok());
        let added = counter_increase(previous_count, latency_count);
        if added > sample.latency_count {
            let previous_sum = before.and_then(|b| b.latency_sum_seconds).unwrap_or(0.0);
            let sum = if previous_count.is_some_and(|c| latency_count >= c) {
                latency_sum - previous_sum
            } else {
                latency_sum
            };
            sample.latency_count = added;
            sample.latency_sum_ms = (sum.max(0.0) * 1000.0).round() as u64;
        }
        let mempool = scrape
            .status
            .as_ref()
            .map(|s| s.mempool_depth as u64)
            .or(scrape.metrics.mempool_depth)
            .unwrap_or(0);
        sample.mempool_depth = sample.mempool_depth.max(mempool);
        let peers = scrape
            .status
            .as_ref()
            .map(|s| s.peers as u64)
            .or(scrape.metrics.peers)
            .unwrap_or(0);
        sample.peers = sample.peers.min(peers);
        let epoch = scrape
            .status
            .as_ref()
            .map(|s| s.epoch)
            .or(scrape.metrics.epoch)
            .unwrap_or(0);
        sample.epoch = sample.epoch.max(epoch);
        let node = monitor_node::ActiveModel {
            network_id: Set(row.id),
            endpoint: Set(scrape.endpoint.clone()),
            shard: Set(i32::try_from(shard).ok()),
            up: Set(true),
            finalized_height: Set(height.map(whole)),
            txs_total: Set(Some(whole(txs_total))),
            latency_sum_seconds: Set(Some(latency_sum)),
            latency_count: Set(Some(whole(latency_count))),
            scraped_at: Set(now),
        };
        monitor_node::Entity::insert(node)
            .on_conflict(
                sea_orm::sea_query::OnConflict::columns([
                    monitor_node::Column::NetworkId,
                    monitor_node::Column::Endpoint,
                ])
                .update_columns([
                    monitor_node::Column::Shard,
                    monitor_node::Column::Up,
                    monitor_node::Column::FinalizedHeight,
                    monitor_node::Column::TxsTotal,
                    monitor_node::Column::LatencySumSeconds,
                    monitor_node::Column::LatencyCount,
                    monitor_node::Column::ScrapedAt,
                ])
                .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
    }
    let mut progress = Vec::new();
    let mut finalized = 0u64;
    for (shard, sample) in shards.iter_mut() {
        if sample.peers == u64::MAX {
            sample.peers = 0;
        }
        let series = store::series(&txn, row.tenant_id, row.id, *shard, now).await?;
        let (height, progressed_at) =
            store::progress(&txn, &series, sample.finalized_height, now).await?;
        progress.push(ShardProgress {
            shard: *shard,
            height,
            progressed_at,
        });
        store::record_sample(&txn, series.id, sample).await?;
        finalized = finalized.saturating_add(sample.txs);
    }
    crate::billing::counters::add(
        &txn,
        row.tenant_id,
        row.id,
        Meter::Transactions,
        now,
        finalized,
    )
    .await?;
    let conditions =
        alerts::network_conditions(&state.billing.settings.alert_rules, now, &views, &progress);
    let changed = crate::alerts::sync(
        &txn,
        row.tenant_id,
        Some(row.id),
        &[
            AlertKind::ChainStalled,
            AlertKind::ShardLagging,
            AlertKind::ValidatorDown,
        ],
        conditions,
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(changed)
}

async fn quota_alerts(state: &AppState, tenant: TenantId) -> ApiResult<(u64, u64)> {
    let used = crate::billing::api::quota_use(&state.db, tenant).await?;
    let plan = trellis_console_entity::tenant::Entity::find_by_id(tenant.get())
        .one(&state.db)
        .await?
        .map(|row| row.plan)
        .unwrap_or_default();
    let limits = crate::plans::stored_limits(&state.db, &plan).await?;
    let conditions = alerts::quota_conditions(
        &state.billing.settings.alert_rules,
        &[
            ("networks", used.networks, limits.networks),
            ("nodes", used.nodes, limits.nodes),
            ("storage_gib", used.storage_gib, limits.storage_gib),
        ],
    );
    let txn = state.db.begin().await?;
    let changed = crate::alerts::sync(
        &txn,
        tenant.get(),
        None,
        &[AlertKind::QuotaNearlyUsed],
        conditions,
        state.billing.now(),
    )
    .await?;
    txn.commit().await?;
    Ok(changed)
}

/// Runs [`collect_once`] and webhook deliveries every `interval`.
pub async fn run(state: AppState, interval: std::time::Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match collect_once(&state).await {
            Ok(report) => tracing::debug!(?report, "collected"),
            Err(err) => tracing::warn!(error = %err, "collection pass failed"),
        }
        if let Err(err) = crate::alerts::webhooks::deliver_due(&state).await {
            tracing::warn!(error = %err, "webhook delivery pass failed");
        }
    }
}
