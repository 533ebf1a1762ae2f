//! Idempotency keys for creating POSTs (`Idempotency-Key` header, 1..=255 visible ASCII
//! characters).
//!
//! The first request with a key creates the resource and, **in the same transaction**,
//! records the response under (tenant, key). A retry with the same key and the same
//! request gets the recorded response (header `idempotent-replayed: true`) instead of a
//! second resource; the same key with a different request is refused with 422. Two
//! concurrent requests with one key race on a unique index: the loser rolls back and
//! replays the winner's response. Records are kept at least 24 hours.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{Duration, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Set,
};
use serde::Serialize;
use trellis_console_entity::idempotency_key;
use uuid::Uuid;

use crate::auth::secret::hex_sha256;
use crate::error::ApiError;
use crate::tenancy::TenantId;

pub const HEADER: &str = "idempotency-key";
pub const RETENTION_HOURS: i64 = 24;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let text = value.to_str().unwrap_or_default();
        if text.is_empty() || text.len() > 255 || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1..=255 visible ASCII characters (a UUID is ideal)",
            ));
        }
        Ok(Some(Self(text.to_string())))
    }
}

/// Fingerprint of a request: the route and the parsed body (so formatting differences
/// in the JSON do not count as a different request).
pub fn fingerprint(route: &str, body: &impl Serialize) -> String {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let mut bytes = route.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(&body);
    hex_sha256(&bytes)
}

/// The recorded response for this key, if there is one.
pub async fn replay(
    conn: &impl ConnectionTrait,
    tenant: TenantId,
    key: &IdempotencyKey,
    fingerprint: &str,
) -> Result<Option<Response>, ApiError> {
    let Some(record) = idempotency_key::Entity::find()
        .filter(idempotency_key::Column::TenantId.eq(tenant.get()))
        .filter(idempotency_key::Column::Key.eq(&key.0))
        .one(conn)
        .await?
    else {
        return Ok(None);
    };
    if record.request_hash != fingerprint {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request; use a new key",
        ));
    }
    let status = u16::try_from(record.status_code)
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = (status, record.response_body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(Some(response))
}

/// Records the response; call inside the transaction that creates the resource.
pub async fn remember(
    conn: &impl ConnectionTrait,
    tenant: TenantId,
    key: &IdempotencyKey,
    fingerprint: &str,
    status: StatusCode,
    body: &str,
) -> Result<(), DbErr> {
    idempotency_key::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant.get()),
        key: Set(key.0.clone()),
        request_hash: Set(fingerprint.to_string()),
        status_code: Set(i32::from(status.as_u16())),
        response_body: Set(body.to_string()),
        created_at: Set(Utc::now()),
    }
    .insert(conn)
    .await
    .map(|_| ())
}

/// Replaces the recorded body (after the provisioner has been called, so a replay shows
/// the same state the first caller saw).
pub async fn update_body(
    conn: &impl ConnectionTrait,
    tenant: TenantId,
    key: &IdempotencyKey,
    body: &str,
) -> Result<(), DbErr> {
    idempotency_key::Entity::update_many()
        .col_expr(
            idempotency_key::Column::ResponseBody,
            Expr::value(body.to_string()),
        )
        .filter(idempotency_key::Column::TenantId.eq(tenant.get()))
        .filter(idempotency_key::Column::Key.eq(&key.0))
        .exec(conn)
        .await
        .map(|_| ())
}

/// Deletes records past the retention period.
pub async fn purge_expired(conn: &impl ConnectionTrait) -> Result<u64, DbErr> {
    let cutoff = Utc::now() - Duration::hours(RETENTION_HOURS);
    idempotency_key::Entity::delete_many()
        .filter(idempotency_key::Column::CreatedAt.lt(cutoff))
        .exec(conn)
        .await
        .map(|result| result.rows_affected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn keys_are_validated() {
        assert_eq!(
            IdempotencyKey::from_headers(&HeaderMap::new()).unwrap(),
            None
        );
        assert!(
            IdempotencyKey::from_headers(&headers("abc-123"))
                .unwrap()
                .is_some()
        );
        assert!(IdempotencyKey::from_headers(&headers(&"x".repeat(256))).is_err());
        assert!(IdempotencyKey::from_headers(&headers("has space")).is_err());
    }

    #[test]
    fn fingerprints_depend_on_route_and_body() {
        let a = fingerprint("/v1/networks", &serde_json::json!({"name": "a"}));
        let b = fingerprint("/v1/networks", &serde_json::json!({"name": "b"}));
        let c = fingerprint("/v1/users", &serde_json::json!({"name": "a"}));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            fingerprint("/v1/networks", &serde_json::json!({"name": "a"}))
        );
    }
}
