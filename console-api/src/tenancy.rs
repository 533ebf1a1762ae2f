//! Tenancy is enforced here, in one extractor.
//!
//! A handler that touches tenant data takes a [`Scope`]; the only way to obtain the
//! [`TenantId`] that every tenant-scoped query in the service layer requires is
//! [`Scope::tenant`]. A `TenantId` cannot be built from a request path or body, so a
//! handler cannot query another tenant's rows by accident: the compiler refuses it.
//! Queries filter by that id and answer "not found" for anything outside it, which is
//! also what another tenant's ids get.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::Utc;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use trellis_console_entity::api_key;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Role;
use crate::auth::jwt::TokenError;
use crate::auth::secret::{self, API_KEY_PREFIX};
use crate::error::ApiError;

/// A tenant id proven to be the caller's own. Only [`Scope`] hands these out (and
/// the sign-up flow, for the tenant it has just created).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantId(Uuid);

impl TenantId {
    pub fn get(self) -> Uuid {
        self.0
    }

    /// For code that has itself established the tenant (sign-up, the reconciler
    /// iterating over all networks). Not reachable from request input.
    pub(crate) fn trusted(id: Uuid) -> Self {
        Self(id)
    }
}

/// Who is calling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Principal {
    User(Uuid),
    ApiKey(Uuid),
}

/// The authenticated caller and the tenant it acts in.
#[derive(Clone, Copy, Debug)]
pub struct Scope {
    tenant: TenantId,
    pub principal: Principal,
    pub role: Role,
}

impl Scope {
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// 403 unless the caller's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        check_role(self.role, role)
    }

    /// The audit-log name of the caller.
    pub fn actor(&self) -> String {
        match self.principal {
            Principal::User(id) => format!("user:{id}"),
            Principal::ApiKey(id) => format!("api_key:{id}"),
        }
    }
}

/// The pure role check behind [`Scope::require`].
pub fn check_role(have: Role, need: Role) -> Result<(), ApiError> {
    if have >= need {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "this needs the {} role; the caller has {}",
            need.as_str(),
            have.as_str()
        )))
    }
}

/// The bearer credential of a request: `Authorization: Bearer <token>`.
pub fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized(
            "missing_credentials",
            "send `Authorization: Bearer <access token or API key>`",
        )
    })?;
    let text = value.to_str().map_err(|_| {
        ApiError::unauthorized("invalid_credentials", "malformed Authorization header")
    })?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "invalid_credentials",
                "the Authorization header must use the Bearer scheme",
            )
        })?;
    Ok(token)
}

impl<S> FromRequestParts<S> for Scope
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let token = bearer(parts)?;
        let scope = if token.starts_with(API_KEY_PREFIX) {
            scope_from_api_key(&state, token).await?
        } else {
            scope_from_access_token(&state, token)?
        };
        state
            .tenant_limiter
            .check(&scope.tenant.get())
            .map_err(|retry_after| {
                ApiError::too_many_requests(
                    "this tenant's request rate limit is exhausted; retry later",
                    retry_after,
                )
            })?;
        // The request's span (crate::request_context) carries the tenant, never the token.
        tracing::Span::current().record("tenant.id", tracing::field::display(scope.tenant.get()));
        Ok(scope)
    }
}

fn scope_from_access_token(state: &AppState, token: &str) -> Result<Scope, ApiError> {
    let claims = state.keys.verify(token).map_err(|err| match err {
        TokenError::Expired => {
            ApiError::unauthorized("token_expired", "the access token has expired; refresh it")
        }
        TokenError::Invalid(reason) => {
            ApiError::unauthorized("invalid_token", "the access token is not valid")
                .with_internal(reason)
        }
    })?;
    Ok(Scope {
        tenant: TenantId(claims.tid),
        principal: Principal::User(claims.sub),
        role: claims.role,
    })
}

async fn scope_from_api_key(state: &AppState, token: &str) -> Result<Scope, ApiError> {
    let invalid = || ApiError::unauthorized("invalid_api_key", "the API key is not valid");
    let key = api_key::Entity::find()
        .filter(api_key::Column::KeyHash.eq(secret::digest(token)))
        .one(&state.db)
        .await?
        .ok_or_else(invalid)?;
    let now = Utc::now();
    if key.revoked_at.is_some() || key.expires_at.is_some_and(|at| at <= now) {
        return Err(invalid());
    }
    let role = Role::parse(&key.role)
        .ok_or_else(|| ApiError::internal(format!("api key {} has role {}", key.id, key.role)))?;
    // Record use at most once a minute: a write per request would cost more than the
    // request itself.
    if key
        .last_used_at
        .is_none_or(|at| now - at > chrono::Duration::minutes(1))
    {
        api_key::Entity::update_many()
            .col_expr(
                api_key::Column::LastUsedAt,
                sea_orm::sea_query::Expr::value(now),
            )
            .filter(api_key::Column::Id.eq(key.id))
            .exec(&state.db)
            .await?;
    }
    Ok(Scope {
        tenant: TenantId(key.tenant_id),
        principal: Principal::ApiKey(key.id),
        role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(header: Option<&str>) -> Parts {
        let mut builder = Request::builder().uri("/v1/networks");
        if let Some(value) = header {
            builder = builder.header(AUTHORIZATION, value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn bearer_is_required_and_parsed() {
        assert_eq!(bearer(&parts(Some("Bearer abc"))).unwrap(), "abc");
        assert_eq!(
            bearer(&parts(None)).unwrap_err().code,
            "missing_credentials"
        );
        assert_eq!(
            bearer(&parts(Some("Basic dXNlcjpwYXNz"))).unwrap_err().code,
            "invalid_credentials"
        );
        assert_eq!(
            bearer(&parts(Some("Bearer "))).unwrap_err().code,
            "invalid_credentials"
        );
    }

    #[test]
    fn role_check_allows_equal_or_higher_only() {
        assert!(check_role(Role::Admin, Role::Member).is_ok());
        assert!(check_role(Role::Member, Role::Member).is_ok());
        let err = check_role(Role::Viewer, Role::Member).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::FORBIDDEN);
    }
}
