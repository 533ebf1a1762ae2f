//! The node RPC proxy: a tenant's JSON-RPC requests to its own networks' nodes.
//!
//! `POST /v1/networks/{id}/rpc` (any shard) and `POST /v1/networks/{id}/shards/{shard}/rpc`
//! forward one JSON-RPC request or batch (see docs/node-contract.md) to a node of the
//! network and return the node's answer unchanged. The network is looked up in the
//! caller's tenant (another tenant's network is `404 not_found`, like an unknown one);
//! endpoints come from the provisioner ([`crate::provisioner::Provisioner::rpc_endpoints`]:
//! the local provisioner's records, the kube provisioner's client Service). Reading needs
//! the `viewer` role, sending transactions (`trellis_sendTransaction`,
//! `trellis_submitGovernance`) the `member` role. Each tenant has its own budget of RPC
//! requests per minute, on top of the budget every authenticated request counts
//! against, and bodies are capped like every request body (64 KiB, `413 body_too_large`).
//!
//! In a sharded network any shard node takes a transaction and forwards it to the shard
//! that owns its sender, but a node answers reads from its own shard's ledger only. So
//! on the any-shard route a `trellis_getAccount` goes to the shard that owns the
//! account's table (per the shard map a node follows) and a `trellis_getTransaction`
//! to the shard that knows the hash (each shard is asked in turn); everything else goes
//! to any node. (A node asked about another shard's account forwards the read there
//! itself; routing here saves that hop.) A single `trellis_getAccount` the node refuses
//! because the table is being handed off to a new shard becomes `503 table_handoff`
//! with the node's message and `Retry-After`.
//!
//! When the console exports traces, every request to a node carries the W3C
//! `traceparent` of the console's request span, so the node's RPC span joins the
//! request's trace (docs/observability.md).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Role;
use crate::error::{ApiError, ApiResult, Json, Path};
use crate::networks::{reconcile, store};
use crate::provisioner::RpcEndpoint;
use crate::tenancy::Scope;

/// How long one forwarded request may take at the node.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// JSON-RPC methods that change a chain; the rest only read.
const WRITE_METHODS: [&str; 2] = [
    trellis_node_api::methods::SEND_TRANSACTION,
    trellis_node_api::methods::SUBMIT_GOVERNANCE,
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/networks/{id}/rpc", post(forward_any))
        .route(
            "/v1/networks/{id}/shards/{shard}/rpc",
            post(forward_to_shard),
        )
}

fn client() -> Result<&'static reqwest::Client, ApiError> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .no_proxy()
                .timeout(NODE_TIMEOUT)
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(ApiError::internal)
}

/// The JSON-RPC methods a request or batch calls, or a 400 saying what is wrong.
fn methods_of(body: &Value) -> Result<Vec<&str>, ApiError> {
    let invalid = |detail: &str| ApiError::bad_request("invalid_rpc_request", detail.to_string());
    let requests: Vec<&Value> = match body {
        Value::Array(batch) if batch.is_empty() => {
            return Err(invalid("an empty batch; send 1 to 1000 requests"));
        }
        Value::Array(batch) => batch.iter().collect(),
        Value::Object(_) => vec![body],
        _ => {
            return Err(invalid(
                "the body must be a JSON-RPC request object or a batch (array)",
            ));
        }
    };
    requests
        .into_iter()
        .map(|request| {
            request
                .get("method")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("every request needs a string \"method\""))
        })
        .collect()
}

/// Forwards a JSON-RPC request or batch to a node of the network (any shard).
#[utoipa::path(post, path = "/v1/networks/{id}/rpc", tag = "node-rpc",
    params(("id" = Uuid, Path)),
    request_body(content = Object, description = "A JSON-RPC 2.0 request or batch (docs/node-contract.md)"),
    responses((status = 200, description = "The node's JSON-RPC response, unchanged", body = Object),
        (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn forward_any(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
    Json(body): Json<Value>,
) -> ApiResult<Response> {
    forward(state, scope, id, None, body).await
}

/// Forwards a JSON-RPC request or batch to a node of one shard of the network.
#[utoipa::path(post, path = "/v1/networks/{id}/shards/{shard}/rpc", tag = "node-rpc",
    params(("id" = Uuid, Path), ("shard" = u32, Path)),
    request_body(content = Object, description = "A JSON-RPC 2.0 request or batch (docs/node-contract.md)"),
    responses((status = 200, description = "The node's JSON-RPC response, unchanged", body = Object),
        (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn forward_to_shard(
    State(state): State<AppState>,
    scope: Scope,
    Path((id, shard)): Path<(Uuid, u32)>,
    Json(body): Json<Value>,
) -> ApiResult<Response> {
    forward(state, scope, id, Some(shard), body).await
}

async fn forward(
    state: AppState,
    scope: Scope,
    id: Uuid,
    shard: Option<u32>,
    body: Value,
) -> ApiResult<Response> {
    state
        .rpc_limiter
        .check(&scope.tenant().get())
        .map_err(|retry_after| {
            ApiError::too_many_requests(
                "this tenant's node RPC rate limit is exhausted; retry later",
                retry_after,
            )
        })?;
    // Tenancy first: another tenant's network is not found, whatever the body says.
    let row = store::find(&state.db, scope.tenant(), id).await?;
    let methods = methods_of(&body)?;
    if methods.iter().any(|m| WRITE_METHODS.contains(m)) {
        scope.require(Role::Member)?;
    }
    let network = reconcile::network_ref_of(&state.db, &row).await?;
    let endpoints: Vec<RpcEndpoint> = state
        .provisioner
        .rpc_endpoints(&network)
        .await
        .map_err(|e| ApiError::unavailable("node_unavailable", e.to_string()))?
        .into_iter()
        .filter(|e| shard.is_none() || e.shard.is_none() || e.shard == shard)
        .collect();
    let client = client()?;
    let endpoints = if shard.is_none() {
        route_read(client, &body, endpoints).await
    } else {
        endpoints
    };
    if endpoints.is_empty() {
        return Err(match shard {
            Some(shard) => ApiError::new(
                StatusCode::NOT_FOUND,
                "shard_not_found",
                format!("the network has no running node serving shard {shard}"),
            ),
            None => ApiError::unavailable(
                "node_unavailable",
                format!(
                    "the network has no running nodes (phase {}); wait until it is Running",
                    row.phase
                ),
            ),
        });
    }
    let payload = serde_json::to_vec(&body).map_err(ApiError::internal)?;
    let trace = trace_headers();
    // Rotate the first choice so load spreads over the nodes; fail over to the next
    // node when one cannot be reached.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let start = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut last_error = String::new();
    for i in 0..endpoints.len() {
        let endpoint = &endpoints[(start + i) % endpoints.len()];
        let sent = with_headers(
            client
                .post(&endpoint.url)
                .header(header::CONTENT_TYPE, "application/json"),
            &trace,
        )
        .body(payload.clone())
        .send()
        .await;
        match sent {
            Ok(answer) => {
                let status = answer.status();
                match answer.bytes().await {
                    Ok(bytes) => {
                        // Metered per forwarded request (a batch counts each of its).
                        state.billing.rpc_requests.record(
                            scope.tenant().get(),
                            id,
                            u64::try_from(methods.len()).unwrap_or(u64::MAX),
                        );
                        if let Some(refusal) = handoff_refusal(&body, &bytes) {
                            return Err(refusal);
                        }
                        let mut response = (status, bytes).into_response();
                        response.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        return Ok(response);
                    }
                    Err(e) => last_error = e.to_string(),
                }
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "node_unavailable",
        "no node of the network answered; retry shortly",
    )
    .with_internal(last_error))
}

/// A single `trellis_getAccount` the node refused because the account's table is being
/// handed off to a new shard (`-33012`): `503 table_handoff` with the node's message and
/// `Retry-After`, so a client sees a retryable problem instead of a JSON-RPC error to
/// interpret (the node never answers such a read with a stale or zero balance).
fn handoff_refusal(request: &Value, answer: &[u8]) -> Option<ApiError> {
    if request.get("method").and_then(Value::as_str) != Some(trellis_node_api::methods::GET_ACCOUNT)
    {
        return None;
    }
    let answer: Value = serde_json::from_slice(answer).ok()?;
    let error = answer.get("error")?;
    if error.get("code").and_then(Value::as_i64) != Some(trellis_node_api::error_codes::RESHARDING)
    {
        return None;
    }
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    Some(ApiError {
        retry_after: Some(1),
        ..ApiError::unavailable("table_handoff", message.to_string())
    })
}

/// The trace-context headers of the current (request) span; none when not exported.
fn trace_headers() -> Vec<(String, String)> {
    trellis_telemetry::trace_headers(&tracing::Span::current())
}

fn with_headers(
    request: reqwest::RequestBuilder,
    headers: &[(String, String)],
) -> reqwest::RequestBuilder {
    headers.iter().fold(request, |request, (name, value)| {
        request.header(name, value)
    })
}

/// One JSON-RPC call to one node: its `result`, if it answered one.
async fn ask(client: &reqwest::Client, url: &str, request: &Value) -> Option<Value> {
    let answer: Value = with_headers(client.post(url), &trace_headers())
        .json(request)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    answer.get("result").cloned()
}

/// The endpoints that can answer a single read about one account or transaction of a
/// sharded network (see the module documentation); all of them for anything else, or
/// when the shard cannot be found out.
async fn route_read(
    client: &reqwest::Client,
    body: &Value,
    endpoints: Vec<RpcEndpoint>,
) -> Vec<RpcEndpoint> {
    let mut shards: Vec<u32> = endpoints.iter().filter_map(|e| e.shard).collect();
    shards.sort_unstable();
    shards.dedup();
    if shards.len() < 2 {
        return endpoints;
    }
    let method = body.get("method").and_then(Value::as_str).unwrap_or("");
    let params = body.get("params").cloned().unwrap_or(Value::Null);
    let first_of = |shard: u32| endpoints.iter().find(|e| e.shard == Some(shard));
    let owner = match method {
        trellis_node_api::methods::GET_ACCOUNT => {
            let Some(table) = params
                .get("account")
                .and_then(Value::as_str)
                .and_then(trellis_node_types::public_key_from_hex)
                .map(|key| trellis_node_types::table_of(&key))
            else {
                return endpoints;
            };
            let request = serde_json::json!({"jsonrpc": "2.0", "id": 1,
                "method": trellis_node_api::methods::GET_SHARD_MAP});
            let mut owner = None;
            for endpoint in shards.iter().filter_map(|s| first_of(*s)) {
                if let Some(map) = ask(client, &endpoint.url, &request).await {
                    owner = map
                        .get("tables")
                        .and_then(|t| t.get(usize::from(table)))
                        .and_then(Value::as_u64)
                        .and_then(|s| u32::try_from(s).ok());
                    break;
                }
            }
            owner
        }
        trellis_node_api::methods::GET_TRANSACTION => {
            let mut owner = None;
            for shard in &shards {
                let Some(endpoint) = first_of(*shard) else {
                    continue;
                };
                let known = ask(client, &endpoint.url, body).await.is_some_and(|r| {
                    r.get("state")
                        .and_then(Value::as_str)
                        .is_some_and(|s| s != "unknown")
                });
                if known {
                    owner = Some(*shard);
                    break;
                }
            }
            owner
        }
        _ => None,
    };
    match owner {
        Some(owner) if endpoints.iter().any(|e| e.shard == Some(owner)) => endpoints
            .into_iter()
            .filter(|e| e.shard == Some(owner))
            .collect(),
        _ => endpoints,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_during_a_handoff_is_a_retryable_problem() {
        let read = serde_json::json!({"jsonrpc": "2.0", "id": 1,
            "method": "trellis_getAccount", "params": {"account": "00"}});
        let refused = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-33012,
            "message":"table 9 is being handed off to shard 2; retry shortly"}}"#;
        let problem = handoff_refusal(&read, refused).unwrap();
        assert_eq!(problem.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(problem.code, "table_handoff");
        assert_eq!(
            problem.detail,
            "table 9 is being handed off to shard 2; retry shortly"
        );
        assert_eq!(problem.retry_after, Some(1));
        // Anything else is the node's answer, unchanged.
        let answered = br#"{"jsonrpc":"2.0","id":1,"result":{"balance":5}}"#;
        assert!(handoff_refusal(&read, answered).is_none());
        let other = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-33009,"message":"x"}}"#;
        assert!(handoff_refusal(&read, other).is_none());
        let batch = serde_json::json!([read]);
        assert!(handoff_refusal(&batch, refused).is_none());
        let send = serde_json::json!({"jsonrpc": "2.0", "id": 1,
            "method": "trellis_sendTransaction"});
        assert!(handoff_refusal(&send, refused).is_none());
    }

    #[test]
    fn methods_of_requests_and_batches() {
        let one = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "trellis_status"});
        assert_eq!(methods_of(&one).unwrap(), ["trellis_status"]);
        let batch = serde_json::json!([one, {"method": "trellis_sendTransaction"}]);
        assert_eq!(
            methods_of(&batch).unwrap(),
            ["trellis_status", "trellis_sendTransaction"]
        );
        for bad in [
            serde_json::json!([]),
            serde_json::json!(5),
            serde_json::json!({"id": 1}),
            serde_json::json!([{"method": 5}]),
        ] {
            assert_eq!(methods_of(&bad).unwrap_err().code, "invalid_rpc_request");
        }
    }
}
