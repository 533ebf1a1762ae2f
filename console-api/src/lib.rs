//! The Trellis console API: the multi-tenant HTTP service tenants talk to.
//!
//! Layout: one module per resource (`identity`, `users`, `api_keys`, `networks`,
//! `audit`, `health`), each returning its router; [`app::router`] assembles them with
//! the shared [`app::AppState`]. Tenancy is enforced by [`tenancy::Scope`]; every error
//! is an [`error::ApiError`], rendered once as problem+json. See `docs/console-api.md`.

pub mod alerts;
pub mod api_keys;
pub mod app;
pub mod audit;
pub mod auth;
pub mod billing;
pub mod commit_watch;
pub mod consortium;
pub mod custody;
pub mod db;
pub mod error;
pub mod governance;
pub mod health;
pub mod idempotency;
pub mod identity;
pub mod metrics;
pub mod monitoring;
pub mod networks;
pub mod node_rpc;
pub mod openapi;
pub mod pagination;
pub mod plans;
pub mod provisioner;
pub mod rate_limit;
pub mod request_context;
pub mod telemetry;
pub mod tenancy;
pub mod up;
pub mod users;
