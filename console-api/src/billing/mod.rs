//! Billing: the networks' footprint log, metering into idempotent usage records, plans
//! with prices and quotas, invoices, and the usage API. The rules themselves (meters,
//! money, invoices) are the pure `trellis-billing` crate; this module stores and serves.
//! See `docs/billing-monitoring.md`.

pub mod admin;
pub mod api;
pub mod counters;
pub mod ledger;
pub mod metering;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use trellis_billing::alerts::AlertRules;
use trellis_billing::clock::{Clock, SystemClock};
use trellis_billing::webhook_url::ConsoleAddresses;

use crate::app::AppState;

/// Tunables of billing, monitoring and alerting.
#[derive(Clone, Debug)]
pub struct BillingSettings {
    /// A window is closed (metered) this long after it ends, so that late counts from
    /// the collector and the RPC proxy still land in it.
    pub metering_grace_seconds: i64,
    pub alert_rules: AlertRules,
    /// Where the console itself listens: webhooks may not point there.
    pub console: ConsoleAddresses,
    /// Webhook retries: delays double from `base` up to `max`; after `max_attempts`
    /// the delivery is marked failed.
    pub webhook_backoff_base_seconds: i64,
    pub webhook_backoff_max_seconds: i64,
    pub webhook_max_attempts: i32,
    /// Per-request timeout of scrapes and webhook deliveries.
    pub http_timeout: Duration,
    /// Retention of raw samples, 1-minute and 1-hour rollups, in seconds.
    pub raw_retention_seconds: i64,
    pub minute_retention_seconds: i64,
    pub hour_retention_seconds: i64,
}

impl Default for BillingSettings {
    fn default() -> Self {
        Self {
            metering_grace_seconds: 120,
            alert_rules: AlertRules::default(),
            console: ConsoleAddresses::default(),
            webhook_backoff_base_seconds: 5,
            webhook_backoff_max_seconds: 3600,
            webhook_max_attempts: 10,
            http_timeout: Duration::from_secs(5),
            raw_retention_seconds: 900,
            minute_retention_seconds: 6 * 3600,
            hour_retention_seconds: 35 * 24 * 3600,
        }
    }
}

/// Billing's share of the application state.
pub struct Billing {
    pub clock: Arc<dyn Clock>,
    pub settings: BillingSettings,
    /// RPC requests counted by the proxy, flushed into usage by the metering loop.
    pub rpc_requests: counters::RpcRequestMeter,
    /// Scrapes and webhook deliveries: no redirects (a webhook must not bounce the
    /// console to another address), bounded time.
    pub http: reqwest::Client,
}

/// Makes ring the process's rustls provider (kube already builds rustls with ring
/// only). Idempotent; HTTP clients with TLS need it before they are built.
pub fn install_crypto_provider() {
    // An error means a provider is installed already, which is all that is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Billing {
    pub fn new(clock: Arc<dyn Clock>, settings: BillingSettings) -> Self {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.http_timeout)
            .build()
            .unwrap_or_default();
        Self {
            clock,
            settings,
            rpc_requests: counters::RpcRequestMeter::default(),
            http,
        }
    }

    /// Now, in unix seconds.
    pub fn now(&self) -> i64 {
        self.clock.now().timestamp()
    }
}

impl Default for Billing {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock), BillingSettings::default())
    }
}

impl std::fmt::Debug for Billing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Billing")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Configures billing for a served console listening on `listen` and starts its loops:
/// metering (every minute) and collection plus webhook delivery (every `collect`).
pub fn start(state: &mut AppState, listen: std::net::SocketAddr, collect: Duration) {
    let settings = BillingSettings {
        console: ConsoleAddresses {
            listen: vec![listen],
            public_url: None,
        },
        ..BillingSettings::default()
    };
    state.billing = Arc::new(Billing::new(Arc::new(SystemClock), settings));
    tokio::spawn(metering::run(
        state.db.clone(),
        state.billing.clone(),
        Duration::from_secs(60),
    ));
    tokio::spawn(crate::monitoring::collector::run(state.clone(), collect));
}

/// Billing, monitoring and alert routes.
pub fn router() -> Router<AppState> {
    api::router()
        .merge(admin::router())
        .merge(crate::monitoring::router())
        .merge(crate::alerts::router())
}
