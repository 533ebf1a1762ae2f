//! Logs and traces: `tracing` to stdout (text or JSON), plus OTLP/HTTP span export when an
//! endpoint is configured through the standard OpenTelemetry environment
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Service name in exported spans.
pub const SERVICE: &str = "trellis-operator";

/// The OTLP endpoint from the environment, if any.
pub fn otlp_endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .filter_map(|var| std::env::var(var).ok())
    .find(|v| !v.is_empty())
}

/// A tracer provider exporting spans over OTLP/HTTP. `endpoint` overrides the
/// environment's (a full `/v1/traces` URL).
pub fn otlp_provider(
    endpoint: Option<&str>,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig;
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    let exporter = builder.build()?;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(Resource::builder().with_service_name(SERVICE).build())
        .build())
}

/// Keeps the exporter alive; call [`Telemetry::shutdown`] before exit to flush.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces failed");
        }
    }
}

/// Installs the global subscriber (inside the tokio runtime).
pub fn init(json: bool) -> Result<Telemetry, Box<dyn std::error::Error + Send + Sync>> {
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
    let registry = tracing_subscriber::registry().with(output);
    match otlp_endpoint() {
        Some(_) => {
            let provider = otlp_provider(None)?;
            registry
                .with(
                    tracing_opentelemetry::layer()
                        .with_tracer(provider.tracer(SERVICE))
                        .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
                )
                .try_init()?;
            Ok(Telemetry {
                provider: Some(provider),
            })
        }
        None => {
            registry.try_init()?;
            Ok(Telemetry { provider: None })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A span goes over real HTTP to a real (minimal) OTLP receiver on loopback.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_are_exported_over_otlp_http() {
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let counter = counter.clone();
                async move {
                    if !body.is_empty() {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    ""
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let provider = otlp_provider(Some(&format!("http://{addr}/v1/traces"))).unwrap();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer(SERVICE)));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("reconcile", network = "alpha");
            let _entered = span.enter();
            tracing::info!("inside");
        });
        provider.force_flush().unwrap();
        for _ in 0..50 {
            if received.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            received.load(Ordering::SeqCst) > 0,
            "no OTLP export arrived"
        );
        let _ = provider.shutdown();
    }
}
