//! Logs and traces: `tracing` to stdout (text or JSON), plus OpenTelemetry — reconcile
//! spans and the reconcile instruments of [`crate::metrics`] — over OTLP/HTTP when an
//! endpoint is configured (`--otlp-endpoint` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`;
//! see `trellis-telemetry` and docs/observability.md). Not configured: nothing exported.

use tracing_subscriber::{EnvFilter, Layer};
pub use trellis_telemetry::{Telemetry, TelemetryError};

/// `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE: &str = "trellis-operator";

/// Installs the global subscriber. Call once, at start-up.
pub fn init(json: bool, otlp_endpoint: Option<String>) -> Result<Telemetry, TelemetryError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let output = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_filter(filter).boxed()
    };
    trellis_telemetry::init(
        &trellis_telemetry::Settings {
            service: SERVICE,
            version: env!("CARGO_PKG_VERSION"),
            endpoint: otlp_endpoint,
        },
        output,
        Vec::new(),
    )
}
