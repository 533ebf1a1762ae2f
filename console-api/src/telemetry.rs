//! Logging and tracing: `tracing` to stdout (text or JSON), plus OTLP/HTTP trace export
//! when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set.
//!
//! Spans go through a batch processor on the tokio runtime (the exporter's HTTP client
//! is async). Every request is one span (see [`crate::request_context`]); with export on,
//! its OpenTelemetry trace id is also put into error bodies.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub const OTLP_ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Whether OTLP export is configured in the environment.
pub fn otlp_configured() -> bool {
    OTLP_ENDPOINT_VARS
        .iter()
        .any(|var| std::env::var(var).is_ok_and(|value| !value.is_empty()))
}

/// Keeps the exporter alive; flush it with [`Telemetry::shutdown`] before exit.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "flushing traces failed");
        }
    }
}

/// The OTLP span exporter and provider for `service`, from the standard environment.
pub fn otlp_provider(service: &str) -> Result<SdkTracerProvider, Box<dyn std::error::Error>> {
    crate::billing::install_crypto_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build())
}

/// Installs the global subscriber. Call once, inside the tokio runtime.
pub fn init(json: bool) -> Result<Telemetry, Box<dyn std::error::Error>> {
    init_with(json, "info", false)
}

/// [`init`] for an interactive command (`up`): logs go to stderr at `default_level`
/// (unless `RUST_LOG` says otherwise), so stdout carries only what the user is told.
pub fn init_with(
    json: bool,
    default_level: &str,
    stderr: bool,
) -> Result<Telemetry, Box<dyn std::error::Error>> {
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
    let registry = tracing_subscriber::registry().with(output);
    if otlp_configured() {
        let provider = otlp_provider("trellis-console")?;
        let tracer = provider.tracer("trellis-console");
        registry
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
            )
            .try_init()?;
        Ok(Telemetry {
            provider: Some(provider),
        })
    } else {
        registry.try_init()?;
        Ok(Telemetry { provider: None })
    }
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
