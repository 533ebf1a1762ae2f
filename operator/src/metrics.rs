//! Metrics of the operator: Prometheus at `/metrics`, and the same figures as
//! OpenTelemetry instruments exported over OTLP when an endpoint is configured
//! (crate::telemetry; no-ops otherwise).

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    resource: String,
}

/// Counters and histograms of the reconciler.
pub struct Metrics {
    registry: Mutex<Registry>,
    reconciles: Counter,
    errors: Family<CategoryLabel, Counter>,
    duration: Histogram,
    leader: Gauge,
    /// Apiserver requests by verb and resource (crate::requests).
    kube_requests: Family<RequestLabels, Counter>,
    /// The most recent reconcile durations (seconds), for percentiles in benchmarks.
    recent: Mutex<std::collections::VecDeque<f64>>,
    otel: OtelInstruments,
}

/// From the global meter: created after telemetry is initialised (in `run_operator`).
struct OtelInstruments {
    duration: opentelemetry::metrics::Histogram<f64>,
    errors: opentelemetry::metrics::Counter<u64>,
    leader: opentelemetry::metrics::Gauge<i64>,
}

impl OtelInstruments {
    fn new() -> Self {
        let meter = opentelemetry::global::meter(crate::telemetry::SERVICE);
        Self {
            duration: meter
                .f64_histogram("trellis.operator.reconcile.duration")
                .with_unit("s")
                .with_description("Duration of one reconcile; its count is the reconcile count")
                .build(),
            errors: meter
                .u64_counter("trellis.operator.reconcile.errors")
                .with_description("Reconcile errors by category")
                .build(),
            leader: meter
                .i64_gauge("trellis.operator.leader")
                .with_description("1 while this replica holds the leader Lease")
                .build(),
        }
    }
}

/// Reconcile durations kept for [`Metrics::recent_durations`].
const RECENT: usize = 100_000;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("trellis_operator");
        let reconciles = Counter::default();
        let errors = Family::<CategoryLabel, Counter>::default();
        // 1 ms .. ~16 s.
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let leader = Gauge::default();
        let kube_requests = Family::<RequestLabels, Counter>::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconcile errors by category",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "kube_requests",
            "Requests to the Kubernetes apiserver by verb and resource",
            kube_requests.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            reconciles,
            errors,
            duration,
            leader,
            kube_requests,
            recent: Mutex::new(std::collections::VecDeque::new()),
            otel: OtelInstruments::new(),
        }
    }

    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        self.otel.duration.record(took.as_secs_f64(), &[]);
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(took.as_secs_f64());
        }
    }

    /// The most recent reconcile durations in seconds (up to 100,000).
    pub fn recent_durations(&self) -> Vec<f64> {
        self.recent
            .lock()
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn reconcile_error(&self, category: &str) {
        self.errors
            .get_or_create(&CategoryLabel {
                category: category.to_owned(),
            })
            .inc();
        self.otel.errors.add(
            1,
            &[opentelemetry::KeyValue::new(
                "category",
                category.to_owned(),
            )],
        );
    }

    /// One apiserver request (counted by crate::requests' client layer).
    pub fn kube_request(&self, verb: &str, resource: &str) {
        self.kube_requests
            .get_or_create(&RequestLabels {
                verb: verb.to_owned(),
                resource: resource.to_owned(),
            })
            .inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
        self.otel.leader.record(i64::from(leader), &[]);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        match self.registry.lock() {
            Ok(registry) => {
                if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
                    out.clear();
                }
            }
            Err(_) => out.clear(),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reconciles_and_errors_by_category() {
        let m = Metrics::new();
        m.reconciled(Duration::from_millis(3));
        m.reconciled(Duration::from_millis(5));
        m.reconcile_error("kube_api");
        m.set_leader(true);
        m.kube_request("list", "statefulsets");
        m.kube_request("list", "statefulsets");
        let text = m.encode();
        assert!(
            text.contains(
                "trellis_operator_kube_requests_total{verb=\"list\",resource=\"statefulsets\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("trellis_operator_reconciles_total 2"),
            "{text}"
        );
        assert!(
            text.contains("trellis_operator_reconcile_errors_total{category=\"kube_api\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("trellis_operator_reconcile_duration_seconds_count 2"),
            "{text}"
        );
        assert!(text.contains("trellis_operator_leader 1"), "{text}");
        assert_eq!(m.recent_durations(), [0.003, 0.005]);
    }
}
