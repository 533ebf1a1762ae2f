//! The per-tenant audit log: who did what to which resource. Written in the same
//! transaction as the change it records, so the log never misses a committed change.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use serde::{Deserialize, Serialize};
use trellis_console_entity::audit_event;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Role;
use crate::error::{ApiResult, Json, Query};
use crate::pagination::{self, PageQuery};
use crate::tenancy::{Scope, TenantId};

pub async fn record(
    conn: &impl ConnectionTrait,
    tenant: TenantId,
    actor: &str,
    action: &str,
    target: Option<String>,
    details: serde_json::Value,
) -> Result<(), DbErr> {
    record_at(conn, tenant, actor, action, target, details, Utc::now()).await
}

/// [`record`] with the time given, for a change that stores the same time elsewhere
/// too (whole microseconds, so PostgreSQL reads back what was written).
pub async fn record_at(
    conn: &impl ConnectionTrait,
    tenant: TenantId,
    actor: &str,
    action: &str,
    target: Option<String>,
    details: serde_json::Value,
    created_at: DateTime<Utc>,
) -> Result<(), DbErr> {
    audit_event::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant.get()),
        actor: Set(actor.to_string()),
        action: Set(action.to_string()),
        target: Set(target),
        details: Set(details),
        created_at: Set(created_at),
    }
    .insert(conn)
    .await
    .map(|_| ())
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub id: Uuid,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub details: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEventPage {
    pub items: Vec<AuditEvent>,
    pub next_cursor: Option<String>,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/audit-events", get(list))
}

/// The caller's tenant's audit log, oldest first.
#[utoipa::path(get, path = "/v1/audit-events", tag = "audit", params(PageQuery),
    responses((status = 200, body = AuditEventPage), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    scope: Scope,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<AuditEventPage>> {
    scope.require(Role::Admin)?;
    let page = query.parse()?;
    let mut select = audit_event::Entity::find()
        .filter(audit_event::Column::TenantId.eq(scope.tenant().get()))
        .order_by_asc(audit_event::Column::Id)
        .limit(page.limit + 1);
    if let Some(after) = page.after {
        select = select.filter(audit_event::Column::Id.gt(after));
    }
    let rows = select.all(&state.db).await?;
    let (rows, next_cursor) = pagination::finish(rows, page.limit, |row| row.id);
    Ok(Json(AuditEventPage {
        items: rows
            .into_iter()
            .map(|row| AuditEvent {
                id: row.id,
                actor: row.actor,
                action: row.action,
                target: row.target,
                details: row.details,
                created_at: row.created_at,
            })
            .collect(),
        next_cursor,
    }))
}
