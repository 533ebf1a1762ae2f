//! Logging and tracing: `tracing` to stdout (text or JSON), plus OpenTelemetry — request
//! and provisioner spans and the request/provisioner instruments of [`crate::metrics`] —
//! over OTLP/HTTP when an endpoint is configured (`--otlp-endpoint` or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`; see `trellis-telemetry` and docs/observability.md).
//!
//! Every request is one span (see [`crate::request_context`]); with export on, its
//! OpenTelemetry trace id is also put into error bodies.

use std::future::Future;
use std::time::Instant;

use opentelemetry::trace::TraceContextExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer};
pub use trellis_telemetry::{Telemetry, TelemetryError};

/// `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE: &str = "trellis-console";

/// Installs the global subscriber. Call once, at start-up.
pub fn init(json: bool, otlp_endpoint: Option<String>) -> Result<Telemetry, TelemetryError> {
    init_with(json, "info", false, otlp_endpoint)
}

/// [`init`] for an interactive command (`up`): logs go to stderr at `default_level`
/// (unless `RUST_LOG` says otherwise), so stdout carries only what the user is told.
pub fn init_with(
    json: bool,
    default_level: &str,
    stderr: bool,
    otlp_endpoint: Option<String>,
) -> Result<Telemetry, TelemetryError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Filters are per layer: `RUST_LOG` decides what is logged, while request spans are
    // exported whatever the log level.
    let output = match (json, stderr) {
        (true, false) => tracing_subscriber::fmt::layer()
            .json()
            .with_filter(filter)
            .boxed(),
        (true, true) => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        (false, false) => tracing_subscriber::fmt::layer().with_filter(filter).boxed(),
        (false, true) => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    // The OTLP exporter's HTTP client may speak TLS (an https collector): name the
    // process's rustls provider first, as for every other client.
    crate::billing::install_crypto_provider();
    trellis_telemetry::init(
        &trellis_telemetry::Settings {
            service: SERVICE,
            version: env!("CARGO_PKG_VERSION"),
            endpoint: otlp_endpoint,
            // reqwest with rustls (webhooks to https receivers).
            https: true,
        },
        output,
        Vec::new(),
    )
}

/// The OpenTelemetry trace id of the current span, when one is being exported.
pub fn current_trace_id() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Runs one provisioner call inside a `provisioner.<operation>` span that records the
/// network, the outcome and (as the span's own duration) how long it took; the call's
/// outcome is also counted by [`crate::metrics::Metrics::observe_provision`].
pub async fn provisioner_call<T, E: std::fmt::Display>(
    operation: &'static str,
    network: impl std::fmt::Display,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let span = tracing::info_span!(
        "provisioner",
        otel.name = format!("provisioner.{operation}"),
        provisioner.operation = operation,
        network.id = %network,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    let started = Instant::now();
    let result = call.instrument(span.clone()).await;
    span.record("duration_ms", started.elapsed().as_secs_f64() * 1e3);
    match &result {
        Ok(_) => span.record("outcome", "ok"),
        Err(_) => {
            span.record("otel.status_code", "error");
            span.record("outcome", "error")
        }
    };
    result
}
