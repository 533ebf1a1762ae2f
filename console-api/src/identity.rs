//! Sign-up, sign-in and the refresh-token lifecycle.
//!
//! Access tokens are short-lived JWTs (see [`crate::auth::jwt`]). Refresh tokens are
//! opaque, stored hashed, and rotate on every use: a refresh returns a new refresh token
//! and retires the presented one. Presenting a retired token again means it was copied,
//! so the whole family (every token descended from the same sign-in) is revoked and the
//! legitimate holder has to sign in again — the thief's copy dies with it.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use trellis_console_entity::{refresh_token, tenant, user};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Role;
use crate::auth::secret::{self, REFRESH_TOKEN_PREFIX};
use crate::error::{ApiError, ApiResult, FieldError, Json};
use crate::tenancy::{Principal, Scope, TenantId};
use crate::{audit, users};

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    /// The new organisation's display name.
    pub organisation: String,
    pub email: String,
    pub password: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub refresh_token: String,
    pub refresh_expires_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub plan: String,
    pub created_at: DateTime<Utc>,
}

impl From<tenant::Model> for Tenant {
    fn from(row: tenant::Model) -> Self {
        Self {
            id: row.id,
            name: row.name,
            slug: row.slug,
            plan: row.plan,
            created_at: row.created_at,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SignupResponse {
    pub tenant: Tenant,
    pub user: users::User,
    pub tokens: TokenResponse,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub tenant: Tenant,
    /// Set when the caller is a user.
    pub user_id: Option<Uuid>,
    /// Set when the caller is an API key.
    pub api_key_id: Option<Uuid>,
    pub role: Role,
}

/// Routes under `/v1/auth`: rate-limited per client address by the app builder.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/signup", post(signup))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
}

/// Authenticated identity routes (and the public key set).
pub fn me_router() -> Router<AppState> {
    Router::new()
        .route("/v1/me", get(me))
        .route("/.well-known/jwks.json", get(jwks))
}

fn suffixed(base: &str) -> String {
    format!("{base}-{}", &Uuid::new_v4().simple().to_string()[..6])
}

/// DNS-label form of an organisation name, for its namespace: `Acme Corp.` → `acme-corp`.
pub fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for ch in name.chars().flat_map(char::to_lowercase) {
        if ch.is_ascii_alphanumeric() {
            slug.push(ch);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 30 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-').to_string();
    if slug.starts_with(|c: char| c.is_ascii_lowercase()) {
        slug
    } else {
        format!("org-{slug}").trim_end_matches('-').to_string()
    }
}

pub fn normalise_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Deliberately loose: one `@`, something on both sides, a dot in the domain. The
/// only real check of an address is mail to it.
pub fn check_email(email: &str) -> Option<&'static str> {
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && email.len() <= 254 =>
        {
            None
        }
        _ => Some("must be an e-mail address"),
    }
}

/// Issues an access token and the first refresh token of a new family (or the next one
/// of an existing family).
pub(crate) async fn issue_tokens(
    state: &AppState,
    conn: &impl ConnectionTrait,
    user: &user::Model,
    family_id: Uuid,
) -> ApiResult<TokenResponse> {
    let role = Role::parse(&user.role)
        .ok_or_else(|| ApiError::internal(format!("user {} has role {}", user.id, user.role)))?;
    let access_token = state
        .keys
        .issue(user.id, user.tenant_id, role)
        .map_err(ApiError::internal)?;
    let refresh = secret::generate(REFRESH_TOKEN_PREFIX);
    let now = Utc::now();
    let expires_at = now + Duration::seconds(state.settings.refresh_ttl_seconds);
    refresh_token::ActiveModel {
        id: Set(Uuid::now_v7()),
        family_id: Set(family_id),
        user_id: Set(user.id),
        tenant_id: Set(user.tenant_id),
        token_hash: Set(secret::digest(&refresh)),
        expires_at: Set(expires_at),
        rotated_at: Set(None),
        revoked_at: Set(None),
        created_at: Set(now),
    }
    .insert(conn)
    .await?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_in: state.keys.access_ttl_seconds,
        refresh_token: refresh,
        refresh_expires_at: expires_at,
    })
}

/// Creates an organisation and its first user, the owner.
#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = SignupRequest,
    responses((status = 201, body = SignupResponse), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn signup(
    State(state): State<AppState>,
    Json(request): Json<SignupRequest>,
) -> ApiResult<(StatusCode, Json<SignupResponse>)> {
    let email = normalise_email(&request.email);
    let organisation = request.organisation.trim().to_string();
    let mut errors = Vec::new();
    if organisation.is_empty() || organisation.len() > 100 {
        errors.push(FieldError::new(
            "organisation",
            "must be 1..=100 characters",
        ));
    }
    if let Some(message) = check_email(&email) {
        errors.push(FieldError::new("email", message));
    }
    if let Some(message) = state.settings.password.check(&request.password) {
        errors.push(FieldError::new("password", message));
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if users::email_taken(&state.db, &email).await? {
        return Err(ApiError::conflict(
            "email_taken",
            "an account with this e-mail address exists; sign in instead",
        ));
    }
    let password_hash = state.settings.password.hash(request.password).await?;
    let base_slug = slugify(&organisation);
    let mut slug = base_slug.clone();
    if tenant::Entity::find()
        .filter(tenant::Column::Slug.eq(&slug))
        .one(&state.db)
        .await?
        .is_some()
    {
        slug = suffixed(&base_slug);
    }
    let now = Utc::now();
    // Two sign-ups with the same organisation name can race for one slug: the loser
    // retries with a random suffix.
    let mut attempts = 0;
    let (txn, tenant_row) = loop {
        let txn = state.db.begin().await?;
        let inserted = tenant::ActiveModel {
            id: Set(Uuid::now_v7()),
            name: Set(organisation.clone()),
            slug: Set(slug.clone()),
            plan: Set(crate::plans::DEFAULT_PLAN.into()),
            created_at: Set(now),
        }
        .insert(&txn)
        .await;
        match inserted {
            Ok(row) => break (txn, row),
            Err(err) if crate::networks::is_unique(&err) && attempts < 3 => {
                txn.rollback().await?;
                attempts += 1;
                slug = suffixed(&base_slug);
            }
            Err(err) => return Err(err.into()),
        }
    };
    let tenant_id = TenantId::trusted(tenant_row.id);
    let user_row = users::insert(&txn, tenant_id, &email, password_hash, Role::Owner)
        .await
        .map_err(users::map_unique_email)?;
    audit::record(
        &txn,
        tenant_id,
        &format!("user:{}", user_row.id),
        "tenant.create",
        Some(format!("tenant:{}", tenant_row.id)),
        serde_json::json!({ "email": email }),
    )
    .await?;
    let tokens = issue_tokens(&state, &txn, &user_row, Uuid::now_v7()).await?;
    txn.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(SignupResponse {
            tenant: tenant_row.into(),
            user: user_row.into(),
            tokens,
        }),
    ))
}

#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn login(
    State(state): State<AppState>,
    Json(request): Json<LoginRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let email = normalise_email(&request.email);
    if request.password.len() > crate::auth::password::MAX_PASSWORD_LENGTH {
        return Err(bad_login());
    }
    let found = user::Entity::find()
        .filter(user::Column::Email.eq(&email))
        .one(&state.db)
        .await?;
    let stored = found.as_ref().map(|user| user.password_hash.clone());
    if !state
        .settings
        .password
        .verify(request.password, stored)
        .await?
    {
        return Err(bad_login());
    }
    let user_row = found.ok_or_else(bad_login)?;
    let tokens = issue_tokens(&state, &state.db, &user_row, Uuid::now_v7()).await?;
    Ok(Json(tokens))
}

fn bad_login() -> ApiError {
    ApiError::unauthorized("invalid_login", "wrong e-mail address or password")
}

fn bad_refresh() -> ApiError {
    ApiError::unauthorized(
        "invalid_refresh_token",
        "the refresh token is not valid; sign in again",
    )
}

/// Revokes every token of a family.
async fn revoke_family(conn: &impl ConnectionTrait, family_id: Uuid) -> ApiResult<()> {
    refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::RevokedAt, Expr::value(Utc::now()))
        .filter(refresh_token::Column::FamilyId.eq(family_id))
        .filter(refresh_token::Column::RevokedAt.is_null())
        .exec(conn)
        .await?;
    Ok(())
}

#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn refresh(
    State(state): State<AppState>,
    Json(request): Json<RefreshRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let hash = secret::digest(&request.refresh_token);
    let token = refresh_token::Entity::find()
        .filter(refresh_token::Column::TokenHash.eq(hash))
        .one(&state.db)
        .await?
        .ok_or_else(bad_refresh)?;
    let now = Utc::now();
    if token.revoked_at.is_some() || token.expires_at <= now {
        return Err(bad_refresh());
    }
    if token.rotated_at.is_some() {
        revoke_family(&state.db, token.family_id).await?;
        tracing::warn!(family = %token.family_id, user = %token.user_id, "refresh token reused; family revoked");
        return Err(ApiError::unauthorized(
            "refresh_token_reused",
            "this refresh token was already used; every session descended from it is \
             revoked — sign in again",
        ));
    }
    let txn = state.db.begin().await?;
    // Conditional: of two concurrent refreshes with the same token exactly one wins;
    // the other is treated as reuse.
    let claimed = refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::RotatedAt, Expr::value(now))
        .filter(refresh_token::Column::Id.eq(token.id))
        .filter(refresh_token::Column::RotatedAt.is_null())
        .filter(refresh_token::Column::RevokedAt.is_null())
        .exec(&txn)
        .await?;
    if claimed.rows_affected != 1 {
        txn.rollback().await?;
        revoke_family(&state.db, token.family_id).await?;
        return Err(ApiError::unauthorized(
            "refresh_token_reused",
            "this refresh token was already used; sign in again",
        ));
    }
    let user_row = user::Entity::find_by_id(token.user_id)
        .one(&txn)
        .await?
        .ok_or_else(bad_refresh)?;
    let tokens = issue_tokens(&state, &txn, &user_row, token.family_id).await?;
    txn.commit().await?;
    Ok(Json(tokens))
}

/// Revokes the presented refresh token's whole family (this sign-in on every device it
/// was refreshed on). Succeeds for unknown tokens too, so it reveals nothing.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn logout(
    State(state): State<AppState>,
    Json(request): Json<RefreshRequest>,
) -> ApiResult<StatusCode> {
    let token = refresh_token::Entity::find()
        .filter(refresh_token::Column::TokenHash.eq(secret::digest(&request.refresh_token)))
        .one(&state.db)
        .await?;
    if let Some(token) = token {
        revoke_family(&state.db, token.family_id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/me", tag = "auth",
    responses((status = 200, body = Me), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn me(State(state): State<AppState>, scope: Scope) -> ApiResult<Json<Me>> {
    let tenant_row = tenant::Entity::find_by_id(scope.tenant().get())
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "the tenant no longer exists"))?;
    let (user_id, api_key_id) = match scope.principal {
        Principal::User(id) => (Some(id), None),
        Principal::ApiKey(id) => (None, Some(id)),
    };
    Ok(Json(Me {
        tenant: tenant_row.into(),
        user_id,
        api_key_id,
        role: scope.role,
    }))
}

/// The public keys that verify access tokens (RFC 7517 JWK set).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, body = Object)))]
pub async fn jwks(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(state.keys.jwks())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_dns_labels() {
        assert_eq!(slugify("Acme Corp."), "acme-corp");
        assert_eq!(slugify("  Ünïcode -- Org "), "n-code-org");
        assert_eq!(slugify("42 Labs"), "org-42-labs");
        assert_eq!(slugify("!!!"), "org");
        assert!(slugify(&"long name ".repeat(10)).len() <= 34);
    }

    #[test]
    fn emails_are_checked_loosely() {
        assert!(check_email("a@b.io").is_none());
        for bad in ["", "a", "a@b", "@b.io", "a@.io", "a@b.", "a@b@c.io"] {
            assert!(check_email(bad).is_some(), "{bad}");
        }
    }
}
