//! Prometheus metrics of the console, served at `/metrics` in the OpenMetrics text format.

use std::sync::Arc;

use opentelemetry::KeyValue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    /// The route template (`/v1/networks/{id}`), never the raw path, to bound cardinality.
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProvisionLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram>,
    provision_calls: Family<ProvisionLabels, Counter>,
    pending_networks: Gauge,
    otel: OtelInstruments,
}

/// The same figures as OpenTelemetry instruments, exported over OTLP when configured
/// (no-ops otherwise: the global meter provider is only set when exporting, which
/// happens at start-up, before the application state is built).
struct OtelInstruments {
    /// Semantic-convention HTTP server duration; its count is the request count.
    durations: opentelemetry::metrics::Histogram<f64>,
    provision_calls: opentelemetry::metrics::Counter<u64>,
    pending_networks: opentelemetry::metrics::Gauge<i64>,
}

impl OtelInstruments {
    fn new() -> Self {
        let meter = opentelemetry::global::meter(crate::telemetry::SERVICE);
        Self {
            durations: meter
                .f64_histogram("http.server.request.duration")
                .with_unit("s")
                .with_description("Duration of HTTP requests served by the console")
                .build(),
            provision_calls: meter
                .u64_counter("trellis.console.provisioner.calls")
                .with_description("Calls to the provisioner by operation and outcome")
                .build(),
            pending_networks: meter
                .i64_gauge("trellis.console.networks.pending")
                .with_description(
                    "Networks whose desired generation the provisioner has not accepted yet",
                )
                .build(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("trellis_console");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let provision_calls = Family::<ProvisionLabels, Counter>::default();
        let pending_networks = Gauge::default();
        registry.register("http_requests", "HTTP requests served", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            durations.clone(),
        );
        registry.register(
            "provisioner_calls",
            "Calls to the provisioner by operation and outcome",
            provision_calls.clone(),
        );
        registry.register(
            "networks_pending",
            "Networks whose desired generation the provisioner has not accepted yet",
            pending_networks.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                durations,
                provision_calls,
                pending_networks,
                otel: OtelInstruments::new(),
            }),
        }
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let labels = RequestLabels {
            method: method.to_string(),
            route: route.to_string(),
            status,
        };
        self.inner.requests.get_or_create(&labels).inc();
        self.inner.durations.get_or_create(&labels).observe(seconds);
        self.inner.otel.durations.record(
            seconds,
            &[
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("http.route", route.to_string()),
                KeyValue::new("http.response.status_code", i64::from(status)),
            ],
        );
    }

    pub fn observe_provision(&self, operation: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.inner
            .provision_calls
            .get_or_create(&ProvisionLabels { operation, outcome })
            .inc();
        self.inner.otel.provision_calls.add(
            1,
            &[
                KeyValue::new("provisioner.operation", operation),
                KeyValue::new("outcome", outcome),
            ],
        );
    }

    pub fn set_pending_networks(&self, count: i64) {
        self.inner.pending_networks.set(count);
        self.inner.otel.pending_networks.record(count, &[]);
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_template() {
        let metrics = Metrics::new();
        metrics.observe_request("GET", "/v1/networks/{id}", 200, 0.002);
        metrics.observe_request("GET", "/v1/networks/{id}", 200, 0.004);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(
                "trellis_console_http_requests_total{method=\"GET\",route=\"/v1/networks/{id}\",status=\"200\"} 2"
            ),
            "{text}"
        );
    }
}
