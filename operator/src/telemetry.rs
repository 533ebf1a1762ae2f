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
            // Its reqwest has no TLS stack (kube brings its own); collectors are in-cluster.
            https: false,
        },
        output,
        Vec::new(),
    )
}

/// The environment that makes the nodes the operator runs export to the same collector:
/// its endpoint (`--otlp-endpoint`, else `OTEL_EXPORTER_OTLP_ENDPOINT`) and resource
/// attributes naming the pod (from the `POD_NAME`/`POD_NAMESPACE` variables the node
/// container defines first). Empty when the operator exports nothing. Headers are not
/// passed on: they are usually credentials, and a Secret in the operator's namespace
/// cannot be referenced from a tenant's.
pub fn node_env(otlp_endpoint: Option<&str>) -> Vec<(String, String)> {
    let endpoint = otlp_endpoint
        .map(str::to_owned)
        .or_else(|| std::env::var(trellis_telemetry::ENDPOINT_VAR).ok())
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let Some(endpoint) = endpoint.filter(|_| !disabled) else {
        return Vec::new();
    };
    vec![
        (trellis_telemetry::ENDPOINT_VAR.to_owned(), endpoint),
        (
            "OTEL_RESOURCE_ATTRIBUTES".to_owned(),
            "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)".to_owned(),
        ),
    ]
}
