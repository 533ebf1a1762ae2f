//! OpenTelemetry for every Trellis process (operator, console, node).
//!
//! [`init`] installs the process's `tracing` subscriber: its own log output, plus — only
//! when an OTLP endpoint is configured — a `tracing-opentelemetry` layer that exports spans
//! and a global meter provider that exports metrics, both over OTLP/HTTP (protobuf).
//!
//! **Configured** means a command-line endpoint, or the standard environment:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (both signals), `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`. `OTEL_SDK_DISABLED=true`,
//! `OTEL_TRACES_EXPORTER=none` and `OTEL_METRICS_EXPORTER=none` switch export off;
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_BSP_*` and `OTEL_METRIC_EXPORT_INTERVAL` are honoured as the specification says.
//!
//! **Not configured**, no exporter, processor, reader or thread is built: instruments
//! from [`opentelemetry::global::meter`] are no-ops, spans stay in the log, nothing is
//! sent and nothing is logged about telemetry.
//!
//! The span processor and the metric reader run on their own threads with a blocking
//! HTTP client, so export works the same under tokio (console, operator) and under
//! commonware's runtime (node), and a flush never needs a runtime.

#[cfg(feature = "collector")]
pub mod collector;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// The base endpoint of both signals (`/v1/traces` and `/v1/metrics` are appended).
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const METRICS_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
const PROTOCOL_VARS: [&str; 3] = [
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
];
/// The only transport built in (no gRPC stack).
const HTTP_PROTOBUF: &str = "http/protobuf";

/// A log or export layer of the process's subscriber.
pub type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// What a process says about itself.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `service.name` unless `OTEL_SERVICE_NAME` (or `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`) says otherwise.
    pub service: &'static str,
    /// `service.version`.
    pub version: &'static str,
    /// An endpoint from the process's own flags or config: the collector's base URL
    /// (e.g. `http://otel-collector:4318`); it takes precedence over the environment.
    pub endpoint: Option<String>,
    /// Whether the process links a TLS stack for its HTTP client (reqwest's `rustls`
    /// feature). Without one an `https` endpoint is refused at start-up rather than
    /// failing every export.
    pub https: bool,
}

/// Configuration that cannot be used; the message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "{source_name} {shown} is not an OTLP/HTTP collector URL ({reason}); give an http or https URL such as http://otel-collector:4318"
    )]
    Endpoint {
        source_name: String,
        /// The value, unless it carries credentials.
        shown: String,
        reason: String,
    },
    #[error(
        "{var}={value:?} is not supported: Trellis exports OTLP over http/protobuf only (unset it or set it to http/protobuf, and use the collector's HTTP port, usually 4318)"
    )]
    Protocol { var: &'static str, value: String },
    #[error("building the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("installing the tracing subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// Where each signal goes, resolved from the settings and the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destinations {
    /// `None`: not exported. `Some(None)`: exported where the environment says.
    /// `Some(Some(url))`: exported to this full URL.
    pub traces: Option<Option<String>>,
    pub metrics: Option<Option<String>>,
}

impl Destinations {
    pub fn any(&self) -> bool {
        self.traces.is_some() || self.metrics.is_some()
    }
}

fn env(var: &str) -> Option<String> {
    std::env::var(var)
        .ok()
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

/// Checks that `value` is an http(s) URL with a host (`https` only when supported).
fn check_url(source_name: &str, value: &str, https: bool) -> Result<(), TelemetryError> {
    let fail = |reason: String| TelemetryError::Endpoint {
        source_name: source_name.to_string(),
        shown: if value.contains('@') {
            "(a URL with credentials, not shown)".to_string()
        } else {
            format!("{value:?}")
        },
        reason,
    };
    let url = url::Url::parse(value).map_err(|e| fail(e.to_string()))?;
    match url.scheme() {
        "http" => {}
        "https" if https => {}
        "https" => {
            return Err(fail(
                "this process exports over plain HTTP only; use a collector or agent inside the cluster"
                    .to_string(),
            ));
        }
        other => return Err(fail(format!("scheme {other:?}"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(fail("no host".to_string()));
    }
    Ok(())
}

/// Which signals are exported and where, or why the configuration is unusable.
pub fn destinations(endpoint: Option<&str>, https: bool) -> Result<Destinations, TelemetryError> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(Destinations::default());
    }
    let endpoint = endpoint.map(str::trim).filter(|e| !e.is_empty());
    if let Some(endpoint) = endpoint {
        check_url("the OTLP endpoint", endpoint, https)?;
    }
    for var in [ENDPOINT_VAR, TRACES_ENDPOINT_VAR, METRICS_ENDPOINT_VAR] {
        if let Some(value) = env(var) {
            check_url(var, &value, https)?;
        }
    }
    let base = env(ENDPOINT_VAR);
    let signal = |specific: &str, path: &str, exporter_var: &str| -> Option<Option<String>> {
        if env(exporter_var).is_some_and(|v| v.eq_ignore_ascii_case("none")) {
            return None;
        }
        match endpoint {
            Some(endpoint) => Some(Some(format!("{}{path}", endpoint.trim_end_matches('/')))),
            None if env(specific).is_some() || base.is_some() => Some(None),
            None => None,
        }
    };
    let destinations = Destinations {
        traces: signal(TRACES_ENDPOINT_VAR, "/v1/traces", "OTEL_TRACES_EXPORTER"),
        metrics: signal(METRICS_ENDPOINT_VAR, "/v1/metrics", "OTEL_METRICS_EXPORTER"),
    };
    if destinations.any() {
        for var in PROTOCOL_VARS {
            if let Some(value) = env(var)
                && value != HTTP_PROTOBUF
            {
                return Err(TelemetryError::Protocol { var, value });
            }
        }
    }
    Ok(destinations)
}

/// The process's resource: the standard environment first, then our defaults.
fn resource(settings: &Settings) -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::new("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let mut builder = Resource::builder();
    if !named {
        builder = builder.with_service_name(settings.service);
    }
    builder
        .with_attribute(KeyValue::new("service.version", settings.version))
        .build()
}

/// The running exporters; [`Export::shutdown`] flushes them.
pub struct Export {
    traces: Option<SdkTracerProvider>,
    metrics: Option<SdkMeterProvider>,
}

impl Export {
    /// Builds the exporters `destinations` asks for (none: `Ok(None)`) and makes the
    /// meter provider global, so [`opentelemetry::global::meter`] records into it.
    pub fn start(
        settings: &Settings,
        destinations: &Destinations,
    ) -> Result<Option<Self>, TelemetryError> {
        if !destinations.any() {
            return Ok(None);
        }
        let resource = resource(settings);
        let traces = match &destinations.traces {
            None => None,
            Some(url) => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
                if let Some(url) = url {
                    builder = builder.with_endpoint(url.clone());
                }
                let exporter = builder.build()?;
                let provider = SdkTracerProvider::builder()
                    .with_span_processor(BatchSpanProcessor::builder(exporter).build())
                    .with_resource(resource.clone())
                    .build();
                opentelemetry::global::set_tracer_provider(provider.clone());
                Some(provider)
            }
        };
        let metrics = match &destinations.metrics {
            None => None,
            Some(url) => {
                let mut builder = opentelemetry_otlp::MetricExporter::builder().with_http();
                if let Some(url) = url {
                    builder = builder.with_endpoint(url.clone());
                }
                let exporter = builder.build()?;
                let provider = SdkMeterProvider::builder()
                    .with_reader(PeriodicReader::builder(exporter).build())
                    .with_resource(resource)
                    .build();
                opentelemetry::global::set_meter_provider(provider.clone());
                Some(provider)
            }
        };
        Ok(Some(Self { traces, metrics }))
    }

    /// The layer that turns `tracing` spans into exported spans (`None` when only
    /// metrics are exported). Spans at INFO and above; the exporter's own HTTP stack is
    /// left out so that exporting never traces itself.
    pub fn layer(&self, service: &'static str) -> Option<BoxedLayer> {
        let provider = self.traces.as_ref()?;
        let filter = Targets::new()
            .with_default(LevelFilter::INFO)
            .with_target("opentelemetry", LevelFilter::OFF)
            .with_target("opentelemetry_sdk", LevelFilter::OFF)
            .with_target("opentelemetry_otlp", LevelFilter::OFF)
            .with_target("opentelemetry_http", LevelFilter::OFF)
            .with_target("reqwest", LevelFilter::OFF)
            .with_target("hyper", LevelFilter::OFF)
            .with_target("hyper_util", LevelFilter::OFF);
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(service))
                .with_filter(filter)
                .boxed(),
        )
    }

    /// Sends what is buffered (spans, a last metrics collection) and stops the exporters.
    pub fn shutdown(self) {
        if let Some(traces) = self.traces
            && let Err(error) = traces.shutdown()
        {
            tracing::warn!(%error, "flushing spans to the OTLP collector failed");
        }
        if let Some(metrics) = self.metrics
            && let Err(error) = metrics.shutdown()
        {
            tracing::warn!(%error, "flushing metrics to the OTLP collector failed");
        }
    }
}

/// The installed subscriber's exporters; call [`Telemetry::shutdown`] before exit.
pub struct Telemetry {
    export: Option<Export>,
}

impl Telemetry {
    /// Whether spans or metrics are exported.
    pub fn exporting(&self) -> bool {
        self.export.is_some()
    }

    pub fn shutdown(self) {
        if let Some(export) = self.export {
            export.shutdown();
        }
    }
}

/// Installs the global subscriber: `output` (the process's logs) plus OTLP export when
/// configured (see the crate documentation). `extra` layers (e.g. the node's
/// finalization observer) are added in either case.
pub fn init(
    settings: &Settings,
    output: BoxedLayer,
    extra: Vec<BoxedLayer>,
) -> Result<Telemetry, TelemetryError> {
    let destinations = destinations(settings.endpoint.as_deref(), settings.https)?;
    let export = Export::start(settings, &destinations)?;
    let mut layers = vec![output];
    layers.extend(extra);
    if let Some(layer) = export.as_ref().and_then(|e| e.layer(settings.service)) {
        layers.push(layer);
    }
    tracing_subscriber::registry().with(layers).try_init()?;
    if let Some(export) = &export {
        tracing::info!(
            traces = export.traces.is_some(),
            metrics = export.metrics.is_some(),
            "exporting telemetry over OTLP/HTTP"
        );
    }
    Ok(Telemetry { export })
}

/// Installs the global subscriber with `output` only: for commands that never export.
pub fn init_logs(output: BoxedLayer) -> Result<Telemetry, TelemetryError> {
    tracing_subscriber::registry().with(output).try_init()?;
    Ok(Telemetry { export: None })
}

/// The W3C trace-context headers (`traceparent`, and `tracestate` when set) that make a
/// request sent from inside `span` a child of it in another process. Empty when the span
/// is not exported (no endpoint configured), so nothing extra goes on the wire then.
pub fn trace_headers(span: &tracing::Span) -> Vec<(String, String)> {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut headers = std::collections::HashMap::new();
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .inject_context(&context, &mut headers);
    let mut headers: Vec<(String, String)> = headers.into_iter().collect();
    headers.sort();
    headers
}

/// Makes `span` a child of the remote span named by W3C trace-context headers
/// (`header(name)` reads one). A missing or malformed `traceparent` leaves `span` a
/// root, as the specification asks; so does a span that is not exported.
pub fn continue_trace<'a>(span: &tracing::Span, header: impl Fn(&str) -> Option<&'a str>) {
    use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    struct Headers<'a, F: Fn(&str) -> Option<&'a str>>(F);
    impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Headers<'a, F> {
        fn get(&self, key: &str) -> Option<&str> {
            (self.0)(key)
        }
        fn keys(&self) -> Vec<&str> {
            vec![TRACEPARENT, TRACESTATE]
        }
    }
    if header(TRACEPARENT).is_none() {
        return;
    }
    let parent =
        opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Headers(header));
    if parent.span().span_context().is_valid() {
        // Fails only when the span is not exported, which needs no parent.
        let _ = span.set_parent(parent);
    }
}

/// The W3C trace-context header names.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_round_trips_through_headers() {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let client = tracing::info_span!("client");
            let headers = trace_headers(&client);
            let traceparent = headers
                .iter()
                .find(|(k, _)| k == TRACEPARENT)
                .map(|(_, v)| v.clone())
                .unwrap();
            let sent = client.context().span().span_context().clone();
            assert!(
                traceparent.contains(&sent.trace_id().to_string()),
                "{traceparent}"
            );
            assert!(
                traceparent.contains(&sent.span_id().to_string()),
                "{traceparent}"
            );

            let server = tracing::info_span!("server");
            continue_trace(&server, |name| {
                (name == TRACEPARENT).then_some(traceparent.as_str())
            });
            let received = server.in_scope(|| server.context().span().span_context().clone());
            assert_eq!(received.trace_id(), sent.trace_id());
            assert_ne!(received.span_id(), sent.span_id());

            // Garbage or nothing: the span starts its own trace.
            for bad in [Some("00-not-a-trace"), Some(""), None] {
                let root = tracing::info_span!("root");
                continue_trace(&root, |name| if name == TRACEPARENT { bad } else { None });
                let id = root.in_scope(|| root.context().span().span_context().trace_id());
                assert_ne!(id, sent.trace_id());
            }
        });
        // Not exported: no headers at all.
        let span = tracing::info_span!("unexported");
        assert!(trace_headers(&span).is_empty());
    }

    #[test]
    fn endpoints_must_be_http_urls_and_credentials_are_not_echoed() {
        assert!(check_url("x", "http://collector:4318", false).is_ok());
        assert!(check_url("x", "https://collector.example/otlp", true).is_ok());
        let err = check_url("x", "https://collector.example/otlp", false).unwrap_err();
        assert!(err.to_string().contains("plain HTTP only"), "{err}");
        let err = check_url("--otlp-endpoint", "collector:4318", true).unwrap_err();
        assert!(err.to_string().contains("--otlp-endpoint"), "{err}");
        assert!(check_url("x", "grpc://collector:4317", true).is_err());
        assert!(check_url("x", "not a url", true).is_err());
        let err = check_url("x", "ftp://user:hunter2@collector", true).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn a_flag_endpoint_gets_the_signal_paths() {
        // The process environment of this test binary has no OTEL_* variables set by
        // these tests; the flag alone decides.
        if std::env::vars().any(|(k, _)| k.starts_with("OTEL_")) {
            return;
        }
        let d = destinations(Some("http://127.0.60.1:4318/"), false).unwrap();
        assert_eq!(
            d.traces,
            Some(Some("http://127.0.60.1:4318/v1/traces".to_string()))
        );
        assert_eq!(
            d.metrics,
            Some(Some("http://127.0.60.1:4318/v1/metrics".to_string()))
        );
        assert_eq!(destinations(None, false).unwrap(), Destinations::default());
        assert_eq!(
            destinations(Some("  "), false).unwrap(),
            Destinations::default()
        );
        assert!(destinations(Some("127.0.60.1:4318"), false).is_err());
    }
}
