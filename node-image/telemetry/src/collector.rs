//! A real OTLP/HTTP receiver for tests: `POST /v1/traces` and `POST /v1/metrics` with
//! protobuf bodies, decoded with the OTLP messages and kept for assertions. Any other
//! request is counted too, so a test can also show that *nothing* was sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message;

/// One received span, flattened.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub resource: BTreeMap<String, String>,
    pub name: String,
    pub attributes: BTreeMap<String, String>,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    /// Empty for a root span.
    pub parent_span_id: Vec<u8>,
    pub duration: Duration,
}

impl ReceivedSpan {
    pub fn service(&self) -> Option<&str> {
        self.resource.get("service.name").map(String::as_str)
    }

    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// One received data point: a sum's or gauge's value, or a histogram's count.
#[derive(Clone, Debug)]
pub struct ReceivedPoint {
    pub resource: BTreeMap<String, String>,
    pub metric: String,
    pub attributes: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    points: Vec<ReceivedPoint>,
    /// Every request, decodable or not, to any path.
    requests: Vec<String>,
}

type Shared = Arc<Mutex<Received>>;

/// The running receiver; it stops when dropped.
pub struct Collector {
    addr: SocketAddr,
    received: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn map(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn lock(received: &Shared) -> MutexGuard<'_, Received> {
    received
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/x-protobuf")
}

async fn traces(State(received): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    lock(&received).requests.push("/v1/traces".to_string());
    if !is_protobuf(&headers) {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = map(&resource_spans.resource.unwrap_or_default().attributes);
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(ReceivedSpan {
                resource: resource.clone(),
                attributes: map(&span.attributes),
                name: span.name,
                trace_id: span.trace_id,
                span_id: span.span_id,
                parent_span_id: span.parent_span_id,
                duration: Duration::from_nanos(
                    span.end_time_unix_nano
                        .saturating_sub(span.start_time_unix_nano),
                ),
            });
        }
    }
    lock(&received).spans.extend(spans);
    StatusCode::OK
}

async fn metrics(State(received): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    lock(&received).requests.push("/v1/metrics".to_string());
    if !is_protobuf(&headers) {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    let Ok(request) = ExportMetricsServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut points = Vec::new();
    for resource_metrics in request.resource_metrics {
        let resource = map(&resource_metrics.resource.unwrap_or_default().attributes);
        for m in resource_metrics
            .scope_metrics
            .into_iter()
            .flat_map(|s| s.metrics)
        {
            let number =
                |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| match p.value {
                    Some(number_data_point::Value::AsInt(i)) => i as f64,
                    Some(number_data_point::Value::AsDouble(d)) => d,
                    None => f64::NAN,
                };
            let values: Vec<(BTreeMap<String, String>, f64)> = match &m.data {
                Some(metric::Data::Sum(sum)) => sum
                    .data_points
                    .iter()
                    .map(|p| (map(&p.attributes), number(p)))
                    .collect(),
                Some(metric::Data::Gauge(gauge)) => gauge
                    .data_points
                    .iter()
                    .map(|p| (map(&p.attributes), number(p)))
                    .collect(),
                Some(metric::Data::Histogram(histogram)) => histogram
                    .data_points
                    .iter()
                    .map(|p| (map(&p.attributes), p.count as f64))
                    .collect(),
                _ => Vec::new(),
            };
            for (attributes, value) in values {
                points.push(ReceivedPoint {
                    resource: resource.clone(),
                    metric: m.name.clone(),
                    attributes,
                    value,
                });
            }
        }
    }
    lock(&received).points.extend(points);
    StatusCode::OK
}

async fn other(State(received): State<Shared>, uri: axum::http::Uri) -> StatusCode {
    lock(&received).requests.push(uri.path().to_string());
    StatusCode::NOT_FOUND
}

impl Collector {
    /// Listens on `ip`, a free port.
    pub async fn start(ip: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let received = Shared::default();
        let app = axum::Router::new()
            .route("/v1/traces", post(traces))
            .route("/v1/metrics", post(metrics))
            .fallback(other)
            .with_state(received.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            received,
            server,
        })
    }

    /// The base URL to configure as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.received).spans.clone()
    }

    pub fn points(&self) -> Vec<ReceivedPoint> {
        lock(&self.received).points.clone()
    }

    /// The paths of every request received so far.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.received).requests.clone()
    }

    /// Waits (polling, up to `timeout`) for a span that `found` accepts.
    pub async fn span(
        &self,
        timeout: Duration,
        found: impl Fn(&ReceivedSpan) -> bool,
    ) -> Option<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(span) = self.spans().into_iter().find(&found) {
                return Some(span);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (polling, up to `timeout`) for a data point that `found` accepts.
    pub async fn point(
        &self,
        timeout: Duration,
        found: impl Fn(&ReceivedPoint) -> bool,
    ) -> Option<ReceivedPoint> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(point) = self.points().into_iter().find(&found) {
                return Some(point);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
