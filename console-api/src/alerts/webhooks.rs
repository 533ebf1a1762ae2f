//! Webhooks: tenants register URLs; every alert change becomes one delivery per
//! webhook, signed with HMAC-SHA256 (`Trellis-Signature: t=…,v1=…`, see the pure
//! `signature` module and docs/billing-monitoring.md) and retried with exponential
//! backoff. Each delivery's attempts and outcome are the delivery log.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};
use trellis_billing::{alerts, signature, webhook_url};
use trellis_console_entity::{alert, webhook, webhook_delivery};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Alert;
use crate::app::AppState;
use crate::audit;
use crate::auth::Role;
use crate::error::{ApiError, ApiResult, FieldError, Json, Path};
use crate::tenancy::Scope;

pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const FAILED: &str = "failed";

/// Webhooks per tenant.
const MAX_WEBHOOKS: u64 = 10;
/// Deliveries attempted per pass.
const BATCH: u64 = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks", get(list).post(create))
        .route("/v1/webhooks/{id}", delete(remove))
        .route("/v1/webhooks/{id}/deliveries", get(deliveries))
}

fn time(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or_default()
}

fn secret_context(id: Uuid) -> Vec<u8> {
    [b"trellis-webhook-secret:".as_slice(), id.as_bytes()].concat()
}

/// The body of every delivery.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookEvent {
    /// Unique per event; the same for every webhook of the tenant.
    pub id: Uuid,
    /// `alert.firing` or `alert.resolved`.
    #[serde(rename = "type")]
    pub type_: String,
    pub created_at: DateTime<Utc>,
    pub alert: Alert,
}

/// Queues `event_type` about `row` for every webhook of its tenant.
pub async fn enqueue(
    conn: &impl ConnectionTrait,
    row: &alert::Model,
    event_type: &str,
    now: i64,
) -> Result<(), DbErr> {
    let hooks = webhook::Entity::find()
        .filter(webhook::Column::TenantId.eq(row.tenant_id))
        .all(conn)
        .await?;
    if hooks.is_empty() {
        return Ok(());
    }
    let event = WebhookEvent {
        id: Uuid::now_v7(),
        type_: event_type.to_string(),
        created_at: time(now),
        alert: Alert::from(row),
    };
    let payload = serde_json::to_string(&event).map_err(|err| DbErr::Custom(err.to_string()))?;
    webhook_delivery::Entity::insert_many(hooks.iter().map(|hook| webhook_delivery::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(row.tenant_id),
        webhook_id: Set(hook.id),
        event_type: Set(event_type.to_string()),
        payload: Set(payload.clone()),
        state: Set(PENDING.into()),
        attempts: Set(0),
        next_attempt_at: Set(now),
        last_status: Set(None),
        last_error: Set(None),
        created_at: Set(now),
        delivered_at: Set(None),
    }))
    .exec_without_returning(conn)
    .await
    .map(|_| ())
}

/// Attempts every due delivery once. Returns how many were delivered now.
pub async fn deliver_due(state: &AppState) -> ApiResult<u64> {
    let now = state.billing.now();
    let due = webhook_delivery::Entity::find()
        .filter(webhook_delivery::Column::State.eq(PENDING))
        .filter(webhook_delivery::Column::NextAttemptAt.lte(now))
        .order_by_asc(webhook_delivery::Column::NextAttemptAt)
        .limit(BATCH)
        .all(&state.db)
        .await?;
    let outcomes: Vec<ApiResult<bool>> = futures::stream::iter(due)
        .map(|delivery| attempt(state, delivery, now))
        .buffer_unordered(16)
        .collect()
        .await;
    let mut delivered = 0;
    for outcome in outcomes {
        if outcome? {
            delivered += 1;
        }
    }
    Ok(delivered)
}

async fn attempt(state: &AppState, delivery: webhook_delivery::Model, now: i64) -> ApiResult<bool> {
    let Some(hook) = webhook::Entity::find_by_id(delivery.webhook_id)
        .one(&state.db)
        .await?
    else {
        return Ok(false);
    };
    let secret = state
        .master_key
        .open(&hook.sealed_secret, &secret_context(hook.id))
        .map_err(ApiError::internal)?;
    let signed = signature::sign(&secret, now, delivery.payload.as_bytes());
    let result = state
        .billing
        .http
        .post(&hook.url)
        .header("content-type", "application/json")
        .header(signature::HEADER, signed)
        .header("Trellis-Delivery", delivery.id.to_string())
        .header("Trellis-Event", delivery.event_type.clone())
        .body(delivery.payload.clone())
        .send()
        .await;
    let (status, error) = match result {
        Ok(response) if response.status().is_success() => (Some(response.status().as_u16()), None),
        Ok(response) => (
            Some(response.status().as_u16()),
            Some(format!("the receiver answered {}", response.status())),
        ),
        // Without the URL: reqwest's text may include it, and the log is shown as is.
        Err(err) => (None, Some(describe(&err))),
    };
    let attempts = delivery.attempts.saturating_add(1);
    let settings = &state.billing.settings;
    let (next_state, next_at) = match &error {
        None => (DELIVERED, now),
        Some(_) if attempts >= settings.webhook_max_attempts => (FAILED, now),
        Some(_) => (
            PENDING,
            now + alerts::backoff_seconds(
                u32::try_from(attempts).unwrap_or(u32::MAX),
                settings.webhook_backoff_base_seconds,
                settings.webhook_backoff_max_seconds,
            ),
        ),
    };
    webhook_delivery::Entity::update_many()
        .col_expr(webhook_delivery::Column::State, Expr::value(next_state))
        .col_expr(webhook_delivery::Column::Attempts, Expr::value(attempts))
        .col_expr(
            webhook_delivery::Column::NextAttemptAt,
            Expr::value(next_at),
        )
        .col_expr(
            webhook_delivery::Column::LastStatus,
            Expr::value(status.map(i32::from)),
        )
        .col_expr(
            webhook_delivery::Column::LastError,
            Expr::value(error.clone()),
        )
        .col_expr(
            webhook_delivery::Column::DeliveredAt,
            Expr::value(error.is_none().then_some(now)),
        )
        .filter(webhook_delivery::Column::Id.eq(delivery.id))
        .exec(&state.db)
        .await?;
    Ok(error.is_none())
}

fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "the receiver did not answer in time".into()
    } else if err.is_connect() {
        "could not connect to the receiver".into()
    } else {
        "the request failed".into()
    }
}

// --- API -------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// `http` or `https`, not the console itself.
    pub url: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub created_at: DateTime<Utc>,
}

/// The answer to a create: the signing secret is shown this once.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedWebhook {
    pub id: Uuid,
    pub url: String,
    pub created_at: DateTime<Utc>,
    /// HMAC-SHA256 key of the `Trellis-Signature` header; store it now.
    pub secret: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<Webhook>,
}

/// Registers a webhook for the tenant's alerts (admins).
#[utoipa::path(post, path = "/v1/webhooks", tag = "alerts", request_body = CreateWebhookRequest,
    responses((status = 201, body = CreatedWebhook), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    scope: Scope,
    Json(request): Json<CreateWebhookRequest>,
) -> ApiResult<Response> {
    scope.require(Role::Admin)?;
    let url = webhook_url::validate(request.url.trim(), &state.billing.settings.console)
        .map_err(|message| ApiError::validation(vec![FieldError::new("url", message)]))?;
    let tenant = scope.tenant();
    let existing = webhook::Entity::find()
        .filter(webhook::Column::TenantId.eq(tenant.get()))
        .count(&state.db)
        .await?;
    if existing >= MAX_WEBHOOKS {
        return Err(ApiError::conflict(
            "too_many_webhooks",
            format!("a tenant may have {MAX_WEBHOOKS} webhooks; delete one first"),
        ));
    }
    let id = Uuid::now_v7();
    let secret = format!("whsec_{}", hex_encode(&rand::random::<[u8; 32]>()));
    let sealed = state
        .master_key
        .seal(secret.as_bytes(), &secret_context(id))
        .map_err(ApiError::internal)?;
    let now = state.billing.now();
    webhook::Entity::insert(webhook::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant.get()),
        url: Set(url.to_string()),
        sealed_secret: Set(sealed),
        created_at: Set(now),
    })
    .exec_without_returning(&state.db)
    .await?;
    audit::record(
        &state.db,
        tenant,
        &scope.actor(),
        "webhook.create",
        Some(format!("webhook:{id}")),
        serde_json::json!({ "url": url.to_string() }),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            id,
            url: url.to_string(),
            created_at: time(now),
            secret,
        }),
    )
        .into_response())
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tenant's webhooks.
#[utoipa::path(get, path = "/v1/webhooks", tag = "alerts",
    responses((status = 200, body = WebhookList), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, scope: Scope) -> ApiResult<Json<WebhookList>> {
    let items = webhook::Entity::find()
        .filter(webhook::Column::TenantId.eq(scope.tenant().get()))
        .order_by_asc(webhook::Column::Id)
        .all(&state.db)
        .await?
        .into_iter()
        .map(|hook| Webhook {
            id: hook.id,
            url: hook.url,
            created_at: time(hook.created_at),
        })
        .collect();
    Ok(Json(WebhookList { items }))
}

async fn find(state: &AppState, scope: &Scope, id: Uuid) -> ApiResult<webhook::Model> {
    webhook::Entity::find_by_id(id)
        .filter(webhook::Column::TenantId.eq(scope.tenant().get()))
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))
}

/// Deletes a webhook and its delivery log (admins).
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "alerts", params(("id" = Uuid, Path)),
    responses((status = 204), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    scope.require(Role::Admin)?;
    find(&state, &scope, id).await?;
    webhook_delivery::Entity::delete_many()
        .filter(webhook_delivery::Column::WebhookId.eq(id))
        .exec(&state.db)
        .await?;
    webhook::Entity::delete_by_id(id).exec(&state.db).await?;
    audit::record(
        &state.db,
        scope.tenant(),
        &scope.actor(),
        "webhook.delete",
        Some(format!("webhook:{id}")),
        serde_json::json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One delivery: the event, how many attempts, and the last outcome.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    pub id: Uuid,
    pub event_type: String,
    /// `pending`, `delivered` or `failed` (attempts exhausted).
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub event: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    /// Newest first, at most 100.
    pub items: Vec<Delivery>,
}

/// A webhook's delivery log.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "alerts", params(("id" = Uuid, Path)),
    responses((status = 200, body = DeliveryList), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn deliveries(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<DeliveryList>> {
    find(&state, &scope, id).await?;
    let items = webhook_delivery::Entity::find()
        .filter(webhook_delivery::Column::WebhookId.eq(id))
        .filter(webhook_delivery::Column::TenantId.eq(scope.tenant().get()))
        .order_by_desc(webhook_delivery::Column::Id)
        .limit(100)
        .all(&state.db)
        .await?
        .into_iter()
        .map(|row| Delivery {
            id: row.id,
            event_type: row.event_type,
            next_attempt_at: (row.state == PENDING).then(|| time(row.next_attempt_at)),
            state: row.state,
            attempts: row.attempts,
            last_status: row.last_status,
            last_error: row.last_error,
            created_at: time(row.created_at),
            delivered_at: row.delivered_at.map(time),
            event: serde_json::from_str(&row.payload).unwrap_or_default(),
        })
        .collect();
    Ok(Json(DeliveryList { items }))
}
