//! Users of the caller's tenant.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, SqlErr, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use trellis_console_entity::user;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::AppState;
use crate::audit;
use crate::auth::Role;
use crate::error::{ApiError, ApiResult, FieldError, Json, Path, Query};
use crate::identity::{check_email, normalise_email};
use crate::pagination::{self, PageQuery};
use crate::tenancy::{Principal, Scope, TenantId};

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

impl From<user::Model> for User {
    fn from(row: user::Model) -> Self {
        Self {
            id: row.id,
            email: row.email,
            // Roles are only ever written from `Role`; an unknown one reads as the least.
            role: Role::parse(&row.role).unwrap_or(Role::Viewer),
            created_at: row.created_at,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct UserPage {
    pub items: Vec<User>,
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub email: String,
    /// The initial password; the user should change it.
    pub password: String,
    pub role: Role,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    pub role: Role,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/users", get(list).post(create))
        .route("/v1/users/{id}", get(get_one).patch(update).delete(remove))
}

pub(crate) async fn email_taken(conn: &impl ConnectionTrait, email: &str) -> Result<bool, DbErr> {
    Ok(user::Entity::find()
        .filter(user::Column::Email.eq(email))
        .count(conn)
        .await?
        > 0)
}

pub(crate) fn map_unique_email(err: DbErr) -> ApiError {
    match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => {
            ApiError::conflict("email_taken", "an account with this e-mail address exists")
        }
        _ => err.into(),
    }
}

pub(crate) async fn insert(
    conn: &impl ConnectionTrait,
    tenant: TenantId,
    email: &str,
    password_hash: String,
    role: Role,
) -> Result<user::Model, DbErr> {
    user::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant.get()),
        email: Set(email.to_string()),
        password_hash: Set(password_hash),
        role: Set(role.as_str().to_string()),
        created_at: Set(Utc::now()),
    }
    .insert(conn)
    .await
}

/// The user `id` of the caller's tenant, or 404.
async fn find(conn: &impl ConnectionTrait, tenant: TenantId, id: Uuid) -> ApiResult<user::Model> {
    user::Entity::find_by_id(id)
        .filter(user::Column::TenantId.eq(tenant.get()))
        .one(conn)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))
}

/// Only an owner may grant, change or remove the owner role; nobody grants more than
/// they have.
fn check_grant(
    caller: Role,
    target_current: Option<Role>,
    target_new: Option<Role>,
) -> ApiResult<()> {
    if let Some(new) = target_new
        && new > caller
    {
        return Err(ApiError::forbidden(format!(
            "a {} cannot grant the {} role",
            caller.as_str(),
            new.as_str()
        )));
    }
    if target_current == Some(Role::Owner) && caller != Role::Owner {
        return Err(ApiError::forbidden(
            "only an owner can change or remove an owner",
        ));
    }
    Ok(())
}

async fn owner_count(conn: &impl ConnectionTrait, tenant: TenantId) -> Result<u64, DbErr> {
    user::Entity::find()
        .filter(user::Column::TenantId.eq(tenant.get()))
        .filter(user::Column::Role.eq(Role::Owner.as_str()))
        .count(conn)
        .await
}

#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = CreateUserRequest,
    responses((status = 201, body = User), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    scope: Scope,
    Json(request): Json<CreateUserRequest>,
) -> ApiResult<(StatusCode, Json<User>)> {
    scope.require(Role::Admin)?;
    check_grant(scope.role, None, Some(request.role))?;
    let email = normalise_email(&request.email);
    let mut errors = Vec::new();
    if let Some(message) = check_email(&email) {
        errors.push(FieldError::new("email", message));
    }
    if let Some(message) = state.settings.password.check(&request.password) {
        errors.push(FieldError::new("password", message));
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if email_taken(&state.db, &email).await? {
        return Err(ApiError::conflict(
            "email_taken",
            "an account with this e-mail address exists",
        ));
    }
    let hash = state.settings.password.hash(request.password).await?;
    let txn = state.db.begin().await?;
    let row = insert(&txn, scope.tenant(), &email, hash, request.role)
        .await
        .map_err(map_unique_email)?;
    audit::record(
        &txn,
        scope.tenant(),
        &scope.actor(),
        "user.create",
        Some(format!("user:{}", row.id)),
        serde_json::json!({ "email": email, "role": request.role }),
    )
    .await?;
    txn.commit().await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

#[utoipa::path(get, path = "/v1/users", tag = "users", params(PageQuery),
    responses((status = 200, body = UserPage), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    scope: Scope,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<UserPage>> {
    let page = query.parse()?;
    let mut select = user::Entity::find()
        .filter(user::Column::TenantId.eq(scope.tenant().get()))
        .order_by_asc(user::Column::Id)
        .limit(page.limit + 1);
    if let Some(after) = page.after {
        select = select.filter(user::Column::Id.gt(after));
    }
    let rows = select.all(&state.db).await?;
    let (rows, next_cursor) = pagination::finish(rows, page.limit, |row| row.id);
    Ok(Json(UserPage {
        items: rows.into_iter().map(User::from).collect(),
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_one(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<User>> {
    Ok(Json(find(&state.db, scope.tenant(), id).await?.into()))
}

#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", params(("id" = Uuid, Path)),
    request_body = UpdateUserRequest,
    responses((status = 200, body = User), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
    Json(request): Json<UpdateUserRequest>,
) -> ApiResult<Json<User>> {
    scope.require(Role::Admin)?;
    let txn = state.db.begin().await?;
    let row = find(&txn, scope.tenant(), id).await?;
    let current = Role::parse(&row.role);
    check_grant(scope.role, current, Some(request.role))?;
    if current == Some(Role::Owner)
        && request.role != Role::Owner
        && owner_count(&txn, scope.tenant()).await? <= 1
    {
        return Err(ApiError::conflict(
            "last_owner",
            "a tenant keeps at least one owner; make another user owner first",
        ));
    }
    let mut active: user::ActiveModel = row.into();
    active.role = Set(request.role.as_str().to_string());
    let row = active.update(&txn).await?;
    audit::record(
        &txn,
        scope.tenant(),
        &scope.actor(),
        "user.update",
        Some(format!("user:{id}")),
        serde_json::json!({ "role": request.role }),
    )
    .await?;
    txn.commit().await?;
    Ok(Json(row.into()))
}

/// Deletes a user and its refresh tokens. Access tokens already issued stay valid until
/// they expire (at most the access-token lifetime).
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users", params(("id" = Uuid, Path)),
    responses((status = 204), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    scope.require(Role::Admin)?;
    if scope.principal == Principal::User(id) {
        return Err(ApiError::conflict(
            "cannot_delete_self",
            "ask another admin to delete your account",
        ));
    }
    let txn = state.db.begin().await?;
    let row = find(&txn, scope.tenant(), id).await?;
    let current = Role::parse(&row.role);
    check_grant(scope.role, current, None)?;
    if current == Some(Role::Owner) && owner_count(&txn, scope.tenant()).await? <= 1 {
        return Err(ApiError::conflict(
            "last_owner",
            "a tenant keeps at least one owner",
        ));
    }
    user::Entity::delete_by_id(id).exec(&txn).await?;
    audit::record(
        &txn,
        scope.tenant(),
        &scope.actor(),
        "user.delete",
        Some(format!("user:{id}")),
        serde_json::json!({ "email": row.email }),
    )
    .await?;
    txn.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobody_grants_more_than_they_have() {
        assert!(check_grant(Role::Admin, None, Some(Role::Admin)).is_ok());
        assert!(check_grant(Role::Admin, None, Some(Role::Owner)).is_err());
        assert!(check_grant(Role::Owner, None, Some(Role::Owner)).is_ok());
        assert!(check_grant(Role::Admin, Some(Role::Owner), Some(Role::Viewer)).is_err());
        assert!(check_grant(Role::Admin, Some(Role::Owner), None).is_err());
        assert!(check_grant(Role::Owner, Some(Role::Owner), None).is_ok());
    }
}
