//! Per-request context: a request id (in the `x-request-id` response header, in every
//! log line of the request through a tracing span, and in every error body) and the
//! HTTP metrics. The id is generated here; a client-supplied id is not trusted.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::metrics::Metrics;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served by this task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

pub async fn middleware(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    // Field names are OpenTelemetry's semantic conventions: they are the exported span's
    // attributes. `tenant.id` is filled in by the tenant scope extractor; no header,
    // token or body is ever recorded.
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        request_id = %request_id,
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        tenant.id = tracing::field::Empty,
    );
    let started = Instant::now();
    let mut response = REQUEST_ID
        .scope(
            request_id.clone(),
            next.run(request).instrument(span.clone()),
        )
        .await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if response.status().is_server_error() {
        span.record("otel.status_code", "error");
    }
    span.in_scope(|| {
        tracing::info!(status, elapsed_ms = elapsed.as_secs_f64() * 1e3, "served");
    });
    metrics.observe_request(method.as_str(), &route, status, elapsed.as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
