//! Alerts: conditions found by the collector open (fire) an alert; when a condition is
//! gone the alert resolves. Each change is an event delivered to the tenant's webhooks
//! (see [`webhooks`]). Alert state is served by `GET /v1/alerts`.

pub mod webhooks;

use std::collections::HashSet;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde::{Deserialize, Serialize};
use trellis_billing::alerts::{AlertKind, Condition};
use trellis_console_entity::alert;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult, FieldError, Json, Query};
use crate::tenancy::Scope;

pub const FIRING: &str = "firing";
pub const RESOLVED: &str = "resolved";

/// Opens alerts for new conditions and resolves firing alerts of `kinds` whose
/// condition is gone, for one network (or, with `None`, the tenant itself). Returns
/// (fired, resolved).
pub async fn sync(
    conn: &impl ConnectionTrait,
    tenant_id: Uuid,
    network_id: Option<Uuid>,
    kinds: &[AlertKind],
    conditions: Vec<Condition>,
    now: i64,
) -> Result<(u64, u64), DbErr> {
    let mut select = alert::Entity::find()
        .filter(alert::Column::TenantId.eq(tenant_id))
        .filter(alert::Column::State.eq(FIRING))
        .filter(alert::Column::Kind.is_in(kinds.iter().map(|k| k.as_str())));
    select = match network_id {
        Some(network) => select.filter(alert::Column::NetworkId.eq(network)),
        None => select.filter(alert::Column::NetworkId.is_null()),
    };
    let firing = select.all(conn).await?;
    let holding: HashSet<(&str, &str)> = conditions
        .iter()
        .map(|c| (c.kind.as_str(), c.subject.as_str()))
        .collect();
    let mut resolved = 0;
    for open in &firing {
        if holding.contains(&(open.kind.as_str(), open.subject.as_str())) {
            continue;
        }
        alert::Entity::update_many()
            .col_expr(alert::Column::State, Expr::value(RESOLVED))
            .col_expr(alert::Column::ResolvedAt, Expr::value(now))
            .filter(alert::Column::Id.eq(open.id))
            .exec(conn)
            .await?;
        let mut closed = open.clone();
        closed.state = RESOLVED.into();
        closed.resolved_at = Some(now);
        webhooks::enqueue(conn, &closed, "alert.resolved", now).await?;
        resolved += 1;
    }
    let open: HashSet<(&str, &str)> = firing
        .iter()
        .map(|a| (a.kind.as_str(), a.subject.as_str()))
        .collect();
    let mut fired = 0;
    for condition in conditions {
        if open.contains(&(condition.kind.as_str(), condition.subject.as_str())) {
            continue;
        }
        let row = alert::Model {
            id: Uuid::now_v7(),
            tenant_id,
            network_id,
            kind: condition.kind.as_str().to_string(),
            subject: condition.subject,
            state: FIRING.into(),
            detail: condition.detail,
            fired_at: now,
            resolved_at: None,
        };
        alert::Entity::insert(alert::ActiveModel {
            id: Set(row.id),
            tenant_id: Set(row.tenant_id),
            network_id: Set(row.network_id),
            kind: Set(row.kind.clone()),
            subject: Set(row.subject.clone()),
            state: Set(row.state.clone()),
            detail: Set(row.detail.clone()),
            fired_at: Set(row.fired_at),
            resolved_at: Set(None),
        })
        .exec_without_returning(conn)
        .await?;
        webhooks::enqueue(conn, &row, "alert.firing", now).await?;
        fired += 1;
    }
    Ok((fired, resolved))
}

/// An alert as the API and webhooks show it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Alert {
    pub id: Uuid,
    pub network_id: Option<Uuid>,
    /// `chain_stalled`, `shard_lagging`, `validator_down` or `quota_nearly_used`.
    pub kind: String,
    /// What it is about: `shard/0`, a node endpoint, a quota (`networks`).
    pub subject: String,
    /// `firing` or `resolved`.
    pub state: String,
    pub detail: String,
    pub fired_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

impl From<&alert::Model> for Alert {
    fn from(row: &alert::Model) -> Self {
        let time = |s: i64| DateTime::from_timestamp(s, 0).unwrap_or_default();
        Self {
            id: row.id,
            network_id: row.network_id,
            kind: row.kind.clone(),
            subject: row.subject.clone(),
            state: row.state.clone(),
            detail: row.detail.clone(),
            fired_at: time(row.fired_at),
            resolved_at: row.resolved_at.map(time),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// `firing`, `resolved`, or absent for both.
    pub state: Option<String>,
    /// Only this network's alerts.
    pub network_id: Option<Uuid>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AlertList {
    /// Newest first, at most 200.
    pub items: Vec<Alert>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/alerts", get(list))
        .merge(webhooks::router())
}

/// The tenant's alerts, newest first.
#[utoipa::path(get, path = "/v1/alerts", tag = "alerts", params(AlertQuery),
    responses((status = 200, body = AlertList), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    scope: Scope,
    Query(query): Query<AlertQuery>,
) -> ApiResult<Json<AlertList>> {
    let mut select = alert::Entity::find()
        .filter(alert::Column::TenantId.eq(scope.tenant().get()))
        .order_by_desc(alert::Column::FiredAt)
        .order_by_desc(alert::Column::Id)
        .limit(200);
    match query.state.as_deref() {
        None => {}
        Some(value @ (FIRING | RESOLVED)) => select = select.filter(alert::Column::State.eq(value)),
        Some(other) => {
            return Err(ApiError::validation(vec![FieldError::new(
                "state",
                format!("{other:?} is not an alert state; use \"firing\" or \"resolved\""),
            )]));
        }
    }
    if let Some(network) = query.network_id {
        select = select.filter(alert::Column::NetworkId.eq(network));
    }
    let items = select
        .all(&state.db)
        .await?
        .iter()
        .map(Alert::from)
        .collect();
    Ok(Json(AlertList { items }))
}
