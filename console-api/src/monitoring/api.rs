//! The monitoring API: a network's current state per shard and node, and its history.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde::{Deserialize, Serialize};
use trellis_billing::rollup::Resolution;
use trellis_billing::window;
use trellis_console_entity::{monitor_node, monitor_series};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::store;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, FieldError, Json, Path, Query};
use crate::tenancy::Scope;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/networks/{id}/monitoring", get(current))
        .route("/v1/networks/{id}/monitoring/history", get(history))
}

fn timestamp(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or_default()
}

/// A shard at the last collection.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ShardNow {
    pub shard: u32,
    pub collected_at: DateTime<Utc>,
    pub finalized_height: i64,
    /// When the finalized height last grew.
    pub progressed_at: DateTime<Utc>,
    /// Finalized transactions per second over the current minute so far.
    pub tx_per_second: f64,
    /// Mean admission-to-finality latency of the current minute, when any finalized.
    pub finality_latency_ms: Option<f64>,
    pub mempool_depth: i64,
    /// Fewest peers of any answering validator.
    pub peers: i64,
    pub validators_up: i32,
    pub validators_expected: i32,
    pub epoch: i64,
}

/// A node endpoint at the last collection.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeNow {
    pub endpoint: String,
    pub shard: Option<i32>,
    pub up: bool,
    pub finalized_height: Option<i64>,
    pub scraped_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Monitoring {
    pub network_id: Uuid,
    pub shards: Vec<ShardNow>,
    pub nodes: Vec<NodeNow>,
}

/// The network's shards and nodes as last collected.
#[utoipa::path(get, path = "/v1/networks/{id}/monitoring", tag = "monitoring", params(("id" = Uuid, Path)),
    responses((status = 200, body = Monitoring), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn current(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Monitoring>> {
    crate::networks::store::find(&state.db, scope.tenant(), id).await?;
    let mut shards = Vec::new();
    for series in monitor_series::Entity::find()
        .filter(monitor_series::Column::NetworkId.eq(id))
        .filter(monitor_series::Column::TenantId.eq(scope.tenant().get()))
        .order_by_asc(monitor_series::Column::Shard)
        .all(&state.db)
        .await?
    {
        let Some(sample) = store::latest(&state.db, series.id).await? else {
            continue;
        };
        let minute = Resolution::Minute.bucket_start(sample.at);
        let bucket = store::buckets(
            &state.db,
            series.id,
            Resolution::Minute,
            minute,
            minute + 60,
        )
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
        let elapsed = (sample.at - minute + 1).max(1) as f64;
        shards.push(ShardNow {
            shard: u32::try_from(series.shard).unwrap_or(0),
            collected_at: timestamp(sample.at),
            finalized_height: series.height,
            progressed_at: timestamp(series.progressed_at),
            tx_per_second: bucket.txs as f64 / elapsed,
            finality_latency_ms: bucket.finality_latency_ms(),
            mempool_depth: sample.mempool_depth,
            peers: sample.peers,
            validators_up: sample.validators_up,
            validators_expected: sample.validators_expected,
            epoch: sample.epoch,
        });
    }
    let nodes = monitor_node::Entity::find()
        .filter(monitor_node::Column::NetworkId.eq(id))
        .order_by_asc(monitor_node::Column::Endpoint)
        .all(&state.db)
        .await?
        .into_iter()
        .map(|node| NodeNow {
            endpoint: node.endpoint,
            shard: node.shard,
            up: node.up,
            finalized_height: node.finalized_height,
            scraped_at: timestamp(node.scraped_at),
        })
        .collect();
    Ok(Json(Monitoring {
        network_id: id,
        shards,
        nodes,
    }))
}

#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// `1m` or `1h`.
    pub resolution: Option<String>,
    /// RFC 3339, inclusive.
    pub from: Option<String>,
    /// RFC 3339, exclusive.
    pub to: Option<String>,
    /// Only this shard.
    pub shard: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryBucket {
    pub start: DateTime<Utc>,
    pub samples: u64,
    pub finalized_height: u64,
    pub tx_per_second: f64,
    pub finality_latency_ms: Option<f64>,
    pub mempool_depth_max: u64,
    pub peers_min: u64,
    pub validators_up_min: u32,
    pub validators_expected: u32,
    pub epoch: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ShardHistory {
    pub shard: u32,
    pub buckets: Vec<HistoryBucket>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct History {
    pub network_id: Uuid,
    pub resolution: String,
    pub shards: Vec<ShardHistory>,
}

/// Rollups of a network's shards over a time range (1-minute buckets are kept for
/// hours, 1-hour buckets for weeks; see the docs).
#[utoipa::path(get, path = "/v1/networks/{id}/monitoring/history", tag = "monitoring",
    params(("id" = Uuid, Path), HistoryQuery),
    responses((status = 200, body = History), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn history(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
    Query(query): Query<HistoryQuery>,
) -> ApiResult<Json<History>> {
    crate::networks::store::find(&state.db, scope.tenant(), id).await?;
    let mut errors = Vec::new();
    let resolution = Resolution::parse(query.resolution.as_deref().unwrap_or("1m"))
        .map_err(|message| errors.push(FieldError::new("resolution", message)))
        .ok();
    let range = window::parse_range(query.from.as_deref(), query.to.as_deref())
        .map_err(|e| errors.extend(e.into_iter().map(|e| FieldError::new(e.field, e.message))))
        .ok();
    let (Some(resolution), Some((from, to))) = (resolution, range) else {
        return Err(ApiError::validation(errors));
    };
    let mut select = monitor_series::Entity::find()
        .filter(monitor_series::Column::NetworkId.eq(id))
        .filter(monitor_series::Column::TenantId.eq(scope.tenant().get()))
        .order_by_asc(monitor_series::Column::Shard);
    if let Some(shard) = query.shard {
        select =
            select.filter(monitor_series::Column::Shard.eq(i32::try_from(shard).unwrap_or(-1)));
    }
    let mut shards = Vec::new();
    for series in select.all(&state.db).await? {
        let buckets = store::buckets(
            &state.db,
            series.id,
            resolution,
            resolution.bucket_start(from.timestamp()),
            to.timestamp(),
        )
        .await?
        .into_iter()
        .map(|bucket| HistoryBucket {
            start: timestamp(bucket.start),
            samples: bucket.samples,
            finalized_height: bucket.finalized_height_max,
            tx_per_second: bucket.tx_per_second(resolution),
            finality_latency_ms: bucket.finality_latency_ms(),
            mempool_depth_max: bucket.mempool_depth_max,
            peers_min: bucket.peers_min,
            validators_up_min: bucket.validators_up_min,
            validators_expected: bucket.validators_expected,
            epoch: bucket.epoch_max,
        })
        .collect();
        shards.push(ShardHistory {
            shard: u32::try_from(series.shard).unwrap_or(0),
            buckets,
        });
    }
    Ok(Json(History {
        network_id: id,
        resolution: resolution.as_str().to_string(),
        shards,
    }))
}
