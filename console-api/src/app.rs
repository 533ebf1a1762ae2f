//! The application: shared state and the router builder.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRef, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::auth::jwt::TokenKeys;
use crate::auth::password::PasswordPolicy;
use crate::custody::MasterKey;
use crate::error::{self, ApiError};
use crate::metrics::Metrics;
use crate::provisioner::Provisioner;
use crate::rate_limit::RateLimiter;
use crate::{
    api_keys, audit, consortium, health, identity, networks, node_rpc, request_context, users,
};

/// Request bodies above this are refused with 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Tunables of the service (everything but where things live).
#[derive(Clone, Debug)]
pub struct Settings {
    pub password: PasswordPolicy,
    pub refresh_ttl_seconds: i64,
    /// Requests per minute per client address on `/v1/auth/*`; 0 disables.
    pub auth_requests_per_minute: u32,
    /// Requests per minute per tenant on authenticated routes; 0 disables.
    pub tenant_requests_per_minute: u32,
    /// Node JSON-RPC requests per minute per tenant through the proxy; 0 disables.
    pub rpc_requests_per_minute: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            password: PasswordPolicy::default(),
            refresh_ttl_seconds: 30 * 24 * 3600,
            auth_requests_per_minute: 30,
            tenant_requests_per_minute: 60_000,
            rpc_requests_per_minute: 6_000,
        }
    }
}

/// Shared state: cheap to clone (everything behind `Arc` or already a handle).
#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub keys: Arc<TokenKeys>,
    /// Seals custodied organisation keys.
    pub master_key: Arc<MasterKey>,
    pub provisioner: Arc<dyn Provisioner>,
    pub metrics: Metrics,
    pub settings: Arc<Settings>,
    pub auth_limiter: Arc<RateLimiter<IpAddr>>,
    pub tenant_limiter: Arc<RateLimiter<Uuid>>,
    /// Node RPC proxy budget per tenant.
    pub rpc_limiter: Arc<RateLimiter<Uuid>>,
    /// Metering, monitoring and alerting: clock, settings, RPC request counts.
    pub billing: Arc<crate::billing::Billing>,
    /// The network read endpoints' answers, reused while a tenant's networks are
    /// unchanged.
    pub network_reads: Arc<networks::read_cache::ReadCache>,
    /// The tenants' network versions those answers are keyed by; from memory on
    /// SQLite while nothing was committed.
    pub network_versions: Arc<networks::versions::NetworkVersions>,
}

impl AppState {
    pub fn new(
        db: DatabaseConnection,
        keys: TokenKeys,
        master_key: MasterKey,
        provisioner: Arc<dyn Provisioner>,
        settings: Settings,
    ) -> Self {
        let minute = Duration::from_secs(60);
        Self {
            db,
            keys: Arc::new(keys),
            master_key: Arc::new(master_key),
            provisioner,
            metrics: Metrics::new(),
            auth_limiter: Arc::new(RateLimiter::new(settings.auth_requests_per_minute, minute)),
            tenant_limiter: Arc::new(RateLimiter::new(
                settings.tenant_requests_per_minute,
                minute,
            )),
            rpc_limiter: Arc::new(RateLimiter::new(settings.rpc_requests_per_minute, minute)),
            settings: Arc::new(settings),
            billing: Arc::new(crate::billing::Billing::default()),
            network_reads: Arc::default(),
            network_versions: Arc::default(),
        }
    }
}

impl FromRef<AppState> for Metrics {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}

/// Per-client-address limit for the authentication routes. Without a peer address
/// (in-process tests) all callers share the unspecified address's budget.
async fn limit_by_client_address(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let address = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    match state.auth_limiter.check(&address) {
        Ok(()) => next.run(request).await,
        Err(retry_after) => ApiError::too_many_requests(
            "too many authentication attempts from this address; wait and retry",
            retry_after,
        )
        .into_response(),
    }
}

/// Assembles the whole HTTP API.
pub fn router(state: AppState) -> Router {
    let auth = identity::router().layer(middleware::from_fn_with_state(
        state.clone(),
        limit_by_client_address,
    ));
    Router::new()
        .merge(auth)
        .merge(identity::me_router())
        .merge(users::router())
        .merge(api_keys::router())
        .merge(networks::router())
        .merge(node_rpc::router())
        .merge(consortium::router())
        .merge(audit::router())
        .merge(crate::billing::router())
        .merge(health::router())
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            request_context::middleware,
        ))
        .with_state(state)
}
