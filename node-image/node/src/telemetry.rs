//! The node's logs (stderr) and OpenTelemetry: JSON-RPC request spans, a span per
//! finalized block, and a few instruments — RPC request duration, finalized blocks and
//! transactions, finalized height — over OTLP/HTTP when an endpoint is configured
//! (`trellis-node run --otlp-endpoint` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`; see
//! `trellis-telemetry` and docs/observability.md). The Prometheus `/metrics` are
//! unchanged; nothing here runs, allocates or logs when export is off.
//!
//! Finalization is observed from the chain's own `finalized` event (target
//! `trellis_node::chain`, fields `height`, `txs`, `epoch`, `view`, `shard` — absent on
//! the beacon — and `pending_us`, the time from this node's first sight of the block to
//! its execution), so the chain code carries no telemetry calls. The `block.finalized`
//! span covers that time: it starts when the node first had the block (proposed or
//! received it) and ends when the block is finalized and executed. `tests/telemetry.rs`
//! fails if that event changes shape.
//!
//! A JSON-RPC request carrying a W3C `traceparent` header (the console's RPC proxy and the
//! operator send one when they export traces) gets its `rpc` span as a child of the
//! caller's span, so one trace runs from the console's request into the node.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, Tracer as _};
use tracing::Instrument;
use tracing::field::{Field, Visit};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::Context;
use tracing_subscriber::{EnvFilter, Layer};
pub use trellis_telemetry::{Telemetry, TelemetryError};

/// `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE: &str = "trellis-node";
/// The chain module whose `finalized` event marks a finalized, executed block.
const CHAIN_TARGET: &str = "trellis_node::chain";
/// As axum's default body limit, which the RPC handler's `String` extractor applies.
const MAX_RPC_BODY: usize = 2 * 1024 * 1024;

/// Whether spans and metrics are exported (set once by [`init`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber: logs to stderr (`RUST_LOG`, default `info`) and, for
/// `run` (`exporting_allowed`) with an endpoint configured, OTLP export.
pub fn init(
    exporting_allowed: bool,
    otlp_endpoint: Option<String>,
) -> Result<Telemetry, TelemetryError> {
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .boxed();
    if !exporting_allowed {
        // keygen, genesis, governance: short commands that never export.
        return trellis_telemetry::init_logs(output);
    }
    let mut extra = Vec::new();
    if trellis_telemetry::destinations(otlp_endpoint.as_deref(), false)?.any() {
        extra.push(
            Finalizations
                .with_filter(Targets::new().with_target(CHAIN_TARGET, LevelFilter::INFO))
                .boxed(),
        );
    }
    let settings = trellis_telemetry::Settings {
        service: SERVICE,
        version: env!("CARGO_PKG_VERSION"),
        endpoint: otlp_endpoint,
        // No TLS stack in the node (its collector is an in-cluster one).
        https: false,
    };
    let telemetry = trellis_telemetry::init(&settings, output, extra)?;
    EXPORTING.store(telemetry.exporting(), Ordering::Relaxed);
    Ok(telemetry)
}

/// Instruments from the global meter, made on first use (after the provider is set).
struct Instruments {
    rpc_duration: opentelemetry::metrics::Histogram<f64>,
    blocks: opentelemetry::metrics::Counter<u64>,
    txs: opentelemetry::metrics::Counter<u64>,
    height: opentelemetry::metrics::Gauge<u64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter(SERVICE);
        Instruments {
            rpc_duration: meter
                .f64_histogram("rpc.server.duration")
                .with_unit("s")
                .with_description("Duration of JSON-RPC requests; its count is the request count")
                .build(),
            blocks: meter
                .u64_counter("trellis.node.blocks.finalized")
                .with_description("Blocks finalized and executed")
                .build(),
            txs: meter
                .u64_counter("trellis.node.transactions.finalized")
                .with_description("Transactions in finalized blocks")
                .build(),
            height: meter
                .u64_gauge("trellis.node.finalized.height")
                .with_description("Height of the last finalized and executed block")
                .build(),
        }
    })
}

/// The fields of the chain's `finalized` event.
#[derive(Default)]
struct FinalizedFields {
    finalized: bool,
    height: Option<u64>,
    txs: Option<u64>,
    epoch: Option<u64>,
    view: Option<u64>,
    shard: Option<u64>,
    pending_us: Option<u64>,
}

impl Visit for FinalizedFields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "height" => self.height = Some(value),
            "txs" => self.txs = Some(value),
            "epoch" => self.epoch = Some(value),
            "view" => self.view = Some(value),
            "shard" => self.shard = Some(value),
            "pending_us" => self.pending_us = Some(value),
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Ok(value) = u64::try_from(value) {
            self.record_u64(field, value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.finalized = value == "finalized";
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.finalized = format!("{value:?}") == "finalized";
        }
    }
}

/// Turns each `finalized` event into a `block.finalized` span and the block metrics.
struct Finalizations;

impl<S: tracing::Subscriber> Layer<S> for Finalizations {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = FinalizedFields::default();
        event.record(&mut fields);
        let (true, Some(height), Some(txs)) = (fields.finalized, fields.height, fields.txs) else {
            return;
        };
        let instruments = instruments();
        instruments.blocks.add(1, &[]);
        instruments.txs.add(txs, &[]);
        instruments.height.record(height, &[]);
        let tracer = opentelemetry::global::tracer(SERVICE);
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut attributes = vec![
            KeyValue::new("block.height", int(height)),
            KeyValue::new("block.txs", int(txs)),
        ];
        attributes.extend(fields.epoch.map(|e| KeyValue::new("block.epoch", int(e))));
        attributes.extend(fields.view.map(|v| KeyValue::new("block.view", int(v))));
        attributes.push(match fields.shard {
            Some(shard) => KeyValue::new("block.shard", int(shard)),
            None => KeyValue::new("block.committee", "beacon"),
        });
        // The event is emitted right after execution: now is the span's end.
        let end = SystemTime::now();
        let pending = Duration::from_micros(fields.pending_us.unwrap_or(0));
        let start = end.checked_sub(pending).unwrap_or(end);
        let mut span = tracer
            .span_builder("block.finalized")
            .with_start_time(start)
            .with_attributes(attributes)
            .start(&tracer);
        span.end_with_timestamp(end);
    }
}

/// The method of one JSON-RPC request as a bounded attribute: a peer-chosen string is
/// kept only when it looks like a method name.
fn method_name(body: &[u8]) -> (String, Option<usize>) {
    #[derive(serde::Deserialize)]
    struct Call {
        method: String,
    }
    let clean = |m: String| {
        if !m.is_empty()
            && m.len() <= 64
            && m.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            m
        } else {
            "invalid".to_string()
        }
    };
    let trimmed = body.trim_ascii_start();
    if trimmed.starts_with(b"[") {
        match serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(trimmed) {
            Ok(batch) => ("batch".to_string(), Some(batch.len())),
            Err(_) => ("invalid".to_string(), None),
        }
    } else {
        match serde_json::from_slice::<Call>(trimmed) {
            Ok(call) => (clean(call.method), None),
            Err(_) => ("invalid".to_string(), None),
        }
    }
}

/// Middleware of the node's HTTP router: one `rpc` span (and a duration measurement)
/// per JSON-RPC request when export is on; a plain pass-through otherwise, and for
/// `/metrics` and the probes.
pub async fn trace_rpc(request: Request, next: Next) -> Response {
    if !EXPORTING.load(Ordering::Relaxed)
        || request.method() != Method::POST
        || request.uri().path() != trellis_node_api::RPC_PATH
    {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_RPC_BODY).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than 2 MiB",
        )
            .into_response();
    };
    let (method, batch) = method_name(&bytes);
    let span = tracing::info_span!(
        "rpc",
        otel.name = method.as_str(),
        otel.kind = "server",
        rpc.system = "jsonrpc",
        rpc.method = method.as_str(),
        rpc.batch_size = batch,
        http.route = trellis_node_api::RPC_PATH,
        http.response.status_code = tracing::field::Empty,
    );
    // A caller that traces (console, operator) names its span: this one continues it.
    trellis_telemetry::continue_trace(&span, |name| {
        parts.headers.get(name).and_then(|v| v.to_str().ok())
    });
    let started = Instant::now();
    let response = next
        .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .instrument(span.clone())
        .await;
    span.record("http.response.status_code", response.status().as_u16());
    instruments().rpc_duration.record(
        started.elapsed().as_secs_f64(),
        &[
            KeyValue::new("rpc.system", "jsonrpc"),
            KeyValue::new("rpc.method", method),
        ],
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_method_names_are_bounded() {
        let name = |body: &str| method_name(body.as_bytes());
        assert_eq!(
            name(r#"{"jsonrpc":"2.0","id":1,"method":"trellis_status"}"#),
            ("trellis_status".to_string(), None)
        );
        assert_eq!(
            name(r#" [{"method":"a"},{"method":"b"}]"#),
            ("batch".to_string(), Some(2))
        );
        assert_eq!(name(r#"{"method":"<script>"}"#).0, "invalid");
        assert_eq!(
            name(&format!(r#"{{"method":"{}"}}"#, "a".repeat(65))).0,
            "invalid"
        );
        assert_eq!(name("not json").0, "invalid");
    }
}
