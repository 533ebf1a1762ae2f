//! API keys for automation: scoped to a role no higher than their creator's, stored as
//! SHA-256 only (the secret is shown once, at creation), revocable.
//!
//! Creating a key is not idempotent on purpose: replaying the creation would mean
//! storing the secret to return it again.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    TransactionTrait,
};
use serde::{Deserialize, Serialize};
use trellis_console_entity::api_key;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::AppState;
use crate::audit;
use crate::auth::Role;
use crate::auth::secret::{self, API_KEY_PREFIX};
use crate::error::{ApiError, ApiResult, FieldError, Json, Path, Query};
use crate::pagination::{self, PageQuery};
use crate::tenancy::{Principal, Scope};

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// What the key is for (shown in listings).
    pub name: String,
    /// The key's scope; at most the creator's role.
    pub role: Role,
    /// Days until the key stops working (1..=730); none: until revoked.
    pub expires_in_days: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    /// The first characters of the key, to tell keys apart.
    pub prefix: String,
    pub created_by: Uuid,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<api_key::Model> for ApiKey {
    fn from(row: api_key::Model) -> Self {
        Self {
            id: row.id,
            name: row.name,
            role: Role::parse(&row.role).unwrap_or(Role::Viewer),
            prefix: row.prefix,
            created_by: row.created_by,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            last_used_at: row.last_used_at,
            created_at: row.created_at,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// The secret. Shown only in this response; store it now.
    pub secret: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyPage {
    pub items: Vec<ApiKey>,
    pub next_cursor: Option<String>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/api-keys", get(list).post(create))
        .route("/v1/api-keys/{id}", delete(revoke))
}

#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", request_body = CreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKey), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    scope: Scope,
    Json(request): Json<CreateApiKeyRequest>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    scope.require(Role::Admin)?;
    if request.role > scope.role {
        return Err(ApiError::forbidden(format!(
            "a {} cannot create a key with the {} role",
            scope.role.as_str(),
            request.role.as_str()
        )));
    }
    let name = request.name.trim().to_string();
    let mut errors = Vec::new();
    if name.is_empty() || name.len() > 100 {
        errors.push(FieldError::new("name", "must be 1..=100 characters"));
    }
    if let Some(days) = request.expires_in_days
        && !(1..=730).contains(&days)
    {
        errors.push(FieldError::new("expires_in_days", "must be within 1..=730"));
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let created_by = match scope.principal {
        Principal::User(id) | Principal::ApiKey(id) => id,
    };
    let secret = secret::generate(API_KEY_PREFIX);
    let now = Utc::now();
    let txn = state.db.begin().await?;
    let row = api_key::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(scope.tenant().get()),
        created_by: Set(created_by),
        name: Set(name),
        prefix: Set(secret.chars().take(API_KEY_PREFIX.len() + 6).collect()),
        key_hash: Set(secret::digest(&secret)),
        role: Set(request.role.as_str().to_string()),
        expires_at: Set(request
            .expires_in_days
            .map(|days| now + Duration::days(i64::from(days)))),
        revoked_at: Set(None),
        last_used_at: Set(None),
        created_at: Set(now),
    }
    .insert(&txn)
    .await?;
    audit::record(
        &txn,
        scope.tenant(),
        &scope.actor(),
        "api_key.create",
        Some(format!("api_key:{}", row.id)),
        serde_json::json!({ "name": row.name, "role": row.role }),
    )
    .await?;
    txn.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            key: row.into(),
            secret,
        }),
    ))
}

#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", params(PageQuery),
    responses((status = 200, body = ApiKeyPage), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    scope: Scope,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<ApiKeyPage>> {
    scope.require(Role::Admin)?;
    let page = query.parse()?;
    let mut select = api_key::Entity::find()
        .filter(api_key::Column::TenantId.eq(scope.tenant().get()))
        .order_by_asc(api_key::Column::Id)
        .limit(page.limit + 1);
    if let Some(after) = page.after {
        select = select.filter(api_key::Column::Id.gt(after));
    }
    let rows = select.all(&state.db).await?;
    let (rows, next_cursor) = pagination::finish(rows, page.limit, |row| row.id);
    Ok(Json(ApiKeyPage {
        items: rows.into_iter().map(ApiKey::from).collect(),
        next_cursor,
    }))
}

/// Revokes a key at once: the next request with it is refused.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys", params(("id" = Uuid, Path)),
    responses((status = 204), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    scope.require(Role::Admin)?;
    let txn = state.db.begin().await?;
    let row = api_key::Entity::find_by_id(id)
        .filter(api_key::Column::TenantId.eq(scope.tenant().get()))
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    if row.revoked_at.is_none() {
        let mut active: api_key::ActiveModel = row.into();
        active.revoked_at = Set(Some(Utc::now()));
        active.update(&txn).await?;
        audit::record(
            &txn,
            scope.tenant(),
            &scope.actor(),
            "api_key.revoke",
            Some(format!("api_key:{id}")),
            serde_json::json!({}),
        )
        .await?;
    }
    txn.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
