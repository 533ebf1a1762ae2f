//! JSON-RPC 2.0 over HTTP, Prometheus metrics and probes (axum).
//!
//! Every failure is a JSON-RPC error with a stable code from
//! [`trellis_node_api::error_codes`]; malformed requests and bodies get the same shape.

use crate::chain::{NodeState, lock};
use crate::mempool::AdmitError;
use crate::metrics::ChainMetrics;
use crate::rpc_route::Route;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trellis_node_api::{
    AccountInfo, AccountQuery, BlockInfo, BlockQuery, CONTRACT_VERSION, HEALTHZ_PATH,
    JsonRpcRequest, JsonRpcResponse, METRICS_PATH, NodeStatus, READYZ_PATH, RPC_PATH, Role,
    SendTransactionParams, SendTransactionResult, TransactionQuery, TransactionStatus, TxState,
    error_codes as codes, methods,
};
use trellis_node_state::{ExecError, Kv, Space, WriteBatch};
use trellis_node_types::{Digest, PublicKey, Tx, TxError, from_hex, public_key_from_hex, to_hex};

/// Peers heard from recently (any consensus message), for status, metrics and readiness.
#[derive(Clone, Debug, Default)]
pub struct PeerTracker {
    seen: Arc<Mutex<HashMap<PublicKey, Instant>>>,
}

impl PeerTracker {
    /// How recently a peer must have spoken to count as connected.
    const WINDOW: Duration = Duration::from_secs(10);

    pub fn saw(&self, peer: &PublicKey) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(peer.clone(), Instant::now());
    }

    pub fn connected(&self) -> usize {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.values()
            .filter(|t| t.elapsed() <= Self::WINDOW)
            .count()
    }
}

/// Everything the HTTP handlers read.
pub struct Rpc<K: Kv> {
    pub chain_id: String,
    pub role: Role,
    pub node_key: PublicKey,
    pub validators: Vec<PublicKey>,
    pub state: Arc<Mutex<NodeState<K>>>,
    pub metrics: ChainMetrics,
    pub peers: PeerTracker,
    /// The HTTP client to other committees' nodes (forwarded requests).
    pub relay: Arc<crate::relay::HttpRelay>,
}

impl<K: Kv> Rpc<K> {
    /// This epoch's validators: the registry's, or the fixed set this node started with.
    pub fn current_validators(&self) -> Vec<PublicKey> {
        let state = lock(&self.state);
        if let Some(record) = &state.shard_epoch {
            // A shard's committee follows the beacon (empty while the slot is idle).
            return record.validator_keys();
        }
        let registry = state.registry.validators();
        if registry.is_empty() {
            self.validators.clone()
        } else {
            registry
        }
    }

    fn quorum(&self) -> usize {
        let n = self.current_validators().len();
        n - (n.saturating_sub(1)) / 3
    }
}

/// The HTTP application.
pub fn router<K: Kv>(rpc: Arc<Rpc<K>>) -> Router {
    Router::new()
        .route(RPC_PATH, post(handle_rpc::<K>))
        .route(METRICS_PATH, get(handle_metrics::<K>))
        .route(HEALTHZ_PATH, get(handle_healthz::<K>))
        .route(READYZ_PATH, get(handle_readyz::<K>))
        .layer(axum::middleware::from_fn(crate::telemetry::trace_rpc))
        .with_state(rpc)
}

async fn handle_metrics<K: Kv>(State(rpc): State<Arc<Rpc<K>>>) -> impl IntoResponse {
    rpc.metrics.peers.set(rpc.peers.connected() as i64);
    rpc.metrics
        .mempool_depth
        .set(lock(&rpc.state).mempool.len() as i64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        rpc.metrics.encode(),
    )
}

/// Alive and able to write to its store.
async fn handle_healthz<K: Kv>(State(rpc): State<Arc<Rpc<K>>>) -> impl IntoResponse {
    let state = lock(&rpc.state);
    let mut batch = WriteBatch::default();
    batch.put(Space::Meta, b"probe/healthz".to_vec(), vec![1]);
    match state.ledger.kv().commit(batch) {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Connected to a quorum of the committee and not behind it.
async fn handle_readyz<K: Kv>(State(rpc): State<Arc<Rpc<K>>>) -> impl IntoResponse {
    let peers = rpc.peers.connected();
    let (syncing, waiting) = {
        let state = lock(&rpc.state);
        (state.syncing, crate::epoch_switch::blocked(&state))
    };
    if let Some(waiting) = waiting {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {waiting}"),
        );
    }
    // This node counts towards the quorum itself.
    if peers + 1 >= rpc.quorum() && !syncing {
        (StatusCode::OK, "ready".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {peers} peers (quorum {}), syncing {syncing}",
                rpc.quorum()
            ),
        )
    }
}

struct RpcFailure {
    code: i64,
    message: String,
}

impl RpcFailure {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<(i64, String)> for RpcFailure {
    fn from((code, message): (i64, String)) -> Self {
        Self { code, message }
    }
}

fn params<T: DeserializeOwned>(value: Value) -> Result<T, RpcFailure> {
    serde_json::from_value(value).map_err(|e| RpcFailure::new(codes::INVALID_PARAMS, e.to_string()))
}

fn result<T: Serialize>(value: T) -> Result<Value, RpcFailure> {
    serde_json::to_value(value).map_err(|e| RpcFailure::new(codes::INTERNAL, e.to_string()))
}

fn internal(e: impl std::fmt::Display) -> RpcFailure {
    RpcFailure::new(codes::INTERNAL, e.to_string())
}

/// Most requests in one JSON-RPC batch.
pub const MAX_BATCH: usize = 1_000;

fn answer<K: Kv>(rpc: &Rpc<K>, request: JsonRpcRequest) -> JsonRpcResponse {
    let id = request.id.clone();
    if request.jsonrpc != "2.0" {
        return JsonRpcResponse::err(id, codes::INVALID_REQUEST, "jsonrpc must be \"2.0\"");
    }
    match dispatch(rpc, &request.method, request.params) {
        Ok(value) => JsonRpcResponse::ok(id, value),
        Err(f) => JsonRpcResponse::err(id, f.code, f.message),
    }
}

/// One request object, or a batch (array) of up to [`MAX_BATCH`], per JSON-RPC 2.0.
/// In sharded networks, sends and account reads about another shard's table are
/// forwarded there ([`crate::rpc_route`]), batches split by owning shard.
async fn handle_rpc<K: Kv>(
    State(rpc): State<Arc<Rpc<K>>>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Json<Value> {
    let forwarded = crate::rpc_route::is_forwarded(&headers);
    let parse_error = |e: serde_json::Error| {
        serde_json::to_value(JsonRpcResponse::err(
            Value::Null,
            codes::PARSE_ERROR,
            format!("request is not JSON-RPC: {e}"),
        ))
        .unwrap_or(Value::Null)
    };
    if body.trim_start().starts_with('[') {
        let requests: Vec<JsonRpcRequest> = match serde_json::from_str(&body) {
            Ok(r) => r,
            Err(e) => return Json(parse_error(e)),
        };
        if requests.is_empty() || requests.len() > MAX_BATCH {
            let e = JsonRpcResponse::err(
                Value::Null,
                codes::INVALID_REQUEST,
                format!("a batch holds 1 to {MAX_BATCH} requests"),
            );
            return Json(serde_json::to_value(e).unwrap_or(Value::Null));
        }
        return Json(Value::Array(answer_batch(&rpc, requests, forwarded).await));
    }
    match serde_json::from_str::<JsonRpcRequest>(&body) {
        Ok(request) => {
            match crate::rpc_route::route(&rpc.state, &request, forwarded) {
                Route::Local => {}
                Route::Forward(owner) => return Json(forward(&rpc, owner, request).await),
                Route::Refuse(code, message) => {
                    return Json(
                        serde_json::to_value(JsonRpcResponse::err(request.id, code, message))
                            .unwrap_or(Value::Null),
                    );
                }
            }
            if request.method == methods::SUBMIT_SYSTEM
                && let Some(beacon) = beacon_rpc_of_shard_node(&rpc)
            {
                return Json(forward_to(&rpc.relay, &beacon, "the beacon", request).await);
            }
            let own = lock(&rpc.state).own_shard();
            let mut response =
                serde_json::to_value(answer(&rpc, request.clone())).unwrap_or(Value::Null);
            mark_admitting_shard(own, &mut response);
            if !forwarded && crate::rpc_lookup::undecided(&request, &response) {
                let shards = crate::rpc_lookup::other_shards(&rpc);
                if !shards.is_empty() {
                    let mut merged = crate::rpc_lookup::resolve(
                        &rpc,
                        shards,
                        std::slice::from_ref(&request),
                        vec![(own, response)],
                    )
                    .await;
                    response = merged.pop().unwrap_or(Value::Null);
                }
            }
            Json(response)
        }
        Err(e) => Json(parse_error(e)),
    }
}

/// Sharded networks (`own`: this node's shard): a transaction's result says which shard
/// admitted it.
fn mark_admitting_shard(own: Option<u16>, response: &mut Value) {
    if let (Some(shard), Some(result)) = (own, response.get_mut("result"))
        && result.get("hash").is_some()
        && result.get("proposal").is_none()
        && result.get("signer").is_none()
    {
        result["shard"] = shard.into();
    }
}

/// This node's shard in a sharded network.
/// On a shard node: the beacon validators' RPC addresses (system transactions go there).
fn beacon_rpc_of_shard_node<K: Kv>(rpc: &Rpc<K>) -> Option<Vec<String>> {
    let state = lock(&rpc.state);
    if state.shard.as_ref()?.committee == trellis_node_types::Committee::Beacon {
        return None;
    }
    Some(
        state
            .beacon
            .as_ref()?
            .beacon_validators()
            .iter()
            .map(|s| s.rpc_address.clone())
            .collect(),
    )
}

/// Forwards a request as the client sent it to the first of `addresses` that answers;
/// that answer is the client's answer.
async fn forward_to(
    relay: &crate::relay::HttpRelay,
    addresses: &[String],
    whom: &str,
    request: JsonRpcRequest,
) -> Value {
    let id = request.id.clone();
    let body = serde_json::to_value(&request).unwrap_or(Value::Null);
    let mut last = format!("{whom} has no RPC addresses");
    for address in addresses {
        match relay.forward(address, &body).await {
            Ok(response) => return response,
            Err(e) => last = e,
        }
    }
    serde_json::to_value(JsonRpcResponse::err(
        id,
        codes::INTERNAL,
        format!("{whom} could not be reached: {last}"),
    ))
    .unwrap_or(Value::Null)
}

/// The RPC addresses of `shard`'s validators in the followed map.
fn shard_addresses<K: Kv>(rpc: &Rpc<K>, shard: u16) -> Vec<String> {
    lock(&rpc.state)
        .beacon
        .as_ref()
        .map(|b| b.rpc_addresses(shard))
        .unwrap_or_default()
}

/// The answer to a request whose owning shard could not be reached.
fn unreachable(request: &JsonRpcRequest, shard: u16, last: &str) -> Value {
    let what = if request.method == methods::GET_ACCOUNT {
        "the account's table"
    } else {
        "the transaction"
    };
    serde_json::to_value(JsonRpcResponse::err(
        request.id.clone(),
        codes::WRONG_SHARD,
        format!("{what} belongs to shard {shard}, which could not be reached: {last}"),
    ))
    .unwrap_or(Value::Null)
}

/// Forwards a request (a send or an account read) to the RPC of a validator of the shard
/// that owns it, as the client sent it; its answer, marked with the shard, is the
/// client's answer.
async fn forward<K: Kv>(rpc: &Rpc<K>, shard: u16, request: JsonRpcRequest) -> Value {
    let body = serde_json::to_value(&request).unwrap_or(Value::Null);
    let mut last = format!("shard {shard} has no RPC addresses in the shard map");
    for address in &shard_addresses(rpc, shard) {
        match rpc.relay.forward(address, &body).await {
            Ok(mut response) => {
                crate::rpc_route::mark_shard(&mut response, shard);
                return response;
            }
            Err(e) => last = e,
        }
    }
    unreachable(&request, shard, &last)
}

/// Forwards requests owned by `shard` as one batch; their answers in their order. An
/// answer that is not a batch of as many answers counts as the node not answering.
async fn forward_batch<K: Kv>(
    rpc: &Rpc<K>,
    shard: u16,
    requests: Vec<JsonRpcRequest>,
) -> Vec<Value> {
    let body = serde_json::to_value(&requests).unwrap_or(Value::Null);
    let mut last = format!("shard {shard} has no RPC addresses in the shard map");
    for address in &shard_addresses(rpc, shard) {
        match rpc.relay.forward(address, &body).await {
            Ok(Value::Array(mut answers)) if answers.len() == requests.len() => {
                for answer in &mut answers {
                    crate::rpc_route::mark_shard(answer, shard);
                }
                return answers;
            }
            Ok(_) => {
                last = format!(
                    "{address} did not answer a batch of {} with as many answers",
                    requests.len()
                );
            }
            Err(e) => last = e,
        }
    }
    requests
        .iter()
        .map(|r| unreachable(r, shard, &last))
        .collect()
}

fn dispatch<K: Kv>(rpc: &Rpc<K>, method: &str, p: Value) -> Result<Value, RpcFailure> {
    if let Some(answer) = crate::handoff::dispatch(&rpc.state, method, &p) {
        return answer.map_err(RpcFailure::from);
    }
    match method {
        methods::SEND_TRANSACTION => result(send_transaction(rpc, params(p)?)?),
        methods::GET_TRANSACTION => result(get_transaction(rpc, params(p)?)?),
        methods::GET_ACCOUNT => result(get_account(rpc, params(p)?)?),
        methods::GET_BLOCK => result(get_block(rpc, params(p)?)?),
        methods::STATUS => result(status(rpc)),
        methods::SUBMIT_GOVERNANCE => {
            result(crate::rpc_governance::submit(rpc, params(p)?).map_err(RpcFailure::from)?)
        }
        methods::GET_MEMBERS => {
            result(crate::rpc_governance::members(rpc).map_err(RpcFailure::from)?)
        }
        methods::GET_GOVERNANCE => {
            result(crate::rpc_governance::status(rpc, params(p)?).map_err(RpcFailure::from)?)
        }
        methods::SUBMIT_SYSTEM => {
            result(crate::rpc_beacon::submit(rpc, params(p)?).map_err(RpcFailure::from)?)
        }
        methods::GET_SYSTEM => {
            result(crate::rpc_beacon::status(rpc, params(p)?).map_err(RpcFailure::from)?)
        }
        methods::GET_SYSTEM_SEQUENCE => {
            result(crate::rpc_beacon::sequence(rpc, params(p)?).map_err(RpcFailure::from)?)
        }
        methods::GET_SHARD_MAP => {
            result(crate::rpc_beacon::shard_map(rpc).map_err(RpcFailure::from)?)
        }
        methods::GET_BEACON_BLOCKS => {
            result(crate::rpc_beacon::blocks(rpc, params(p)?).map_err(RpcFailure::from)?)
        }
        other => {
            // The relay's node-to-node methods (certified blocks, outboxes, snapshots).
            let server = crate::rpc_shard::NodeRelay(rpc.state.clone());
            match crate::rpc_shard::dispatch(&server, other, p) {
                Some(answer) => answer.map_err(RpcFailure::from),
                None => Err(RpcFailure::new(
                    codes::METHOD_NOT_FOUND,
                    format!("unknown method {other}"),
                )),
            }
        }
    }
}

/// Maps an admission failure to its stable code.
pub fn admit_error_code(e: &AdmitError) -> i64 {
    match e {
        AdmitError::Invalid(TxError::Malformed(_) | TxError::Oversized(_)) => codes::MALFORMED_TX,
        AdmitError::Invalid(TxError::WrongChain { .. }) => codes::WRONG_CHAIN,
        AdmitError::Invalid(TxError::BadSignature) => codes::BAD_SIGNATURE,
        AdmitError::State(ExecError::BadNonce { .. }) => codes::BAD_NONCE,
        AdmitError::State(ExecError::InsufficientFunds { .. } | ExecError::Overflow) => {
            codes::INSUFFICIENT_FUNDS
        }
        AdmitError::State(ExecError::WrongShard { .. }) => codes::WRONG_SHARD,
        AdmitError::Full(_) => codes::MEMPOOL_FULL,
        AdmitError::Known => codes::ALREADY_KNOWN,
        AdmitError::WrongShard(_) => codes::WRONG_SHARD,
    }
}

fn decode_tx(p: SendTransactionParams) -> Result<Tx, RpcFailure> {
    let bytes =
        from_hex(&p.tx).ok_or_else(|| RpcFailure::new(codes::MALFORMED_TX, "tx is not hex"))?;
    Tx::decode_untrusted(&bytes).map_err(|e| {
        let e = AdmitError::Invalid(e);
        RpcFailure::new(admit_error_code(&e), e.to_string())
    })
}

fn admitted(result: Result<Digest, AdmitError>) -> Result<SendTransactionResult, RpcFailure> {
    match result {
        Ok(hash) => Ok(SendTransactionResult {
            hash: to_hex(&hash.0),
            shard: None,
        }),
        Err(e) => Err(RpcFailure::new(admit_error_code(&e), e.to_string())),
    }
}

fn send_transaction<K: Kv>(
    rpc: &Rpc<K>,
    p: SendTransactionParams,
) -> Result<SendTransactionResult, RpcFailure> {
    let tx = decode_tx(p)?;
    let mut state = lock(&rpc.state);
    let result = admitted(state.submit(tx));
    rpc.metrics.mempool_depth.set(state.mempool.len() as i64);
    result
}

/// [`NodeState::submit`] for a transaction whose signature was checked by the caller.
fn submit_verified<K: Kv>(state: &mut NodeState<K>, tx: Tx) -> Result<Digest, AdmitError> {
    state.check_tables(&tx)?;
    let hash = state.mempool.admit_verified(tx.clone(), &state.ledger)?;
    state.gossip.push(tx);
    Ok(hash)
}

/// Answers a batch. Its transaction submissions are decoded once. In sharded networks
/// the sends and account reads of other shards' tables go there, as one batch per shard
/// ([`forward_batch`]); the local sends' signatures are checked with one batch
/// verification before the state lock is taken, once, to admit them all in order; every
/// other request is answered on its own. Every answer comes back at its request's place.
async fn answer_batch<K: Kv>(
    rpc: &Rpc<K>,
    requests: Vec<JsonRpcRequest>,
    forwarded: bool,
) -> Vec<Value> {
    let to_value = |r: JsonRpcResponse| serde_json::to_value(r).unwrap_or(Value::Null);
    let mut answers: Vec<Value> = vec![Value::Null; requests.len()];
    let mut decoded: Vec<(usize, JsonRpcRequest, Option<Tx>)> = Vec::new();
    for (i, request) in requests.into_iter().enumerate() {
        if request.jsonrpc != "2.0" || request.method != methods::SEND_TRANSACTION {
            decoded.push((i, request, None));
            continue;
        }
        match params(request.params.clone()).and_then(decode_tx) {
            Ok(tx) => decoded.push((i, request, Some(tx))),
            Err(f) => answers[i] = to_value(JsonRpcResponse::err(request.id, f.code, f.message)),
        }
    }
    let (own, routes) = {
        let state = lock(&rpc.state);
        let routes: Vec<Route> = decoded
            .iter()
            .map(|(_, request, tx)| {
                crate::rpc_route::route_decoded(&state, request, tx.as_ref(), forwarded)
            })
            .collect();
        (state.own_shard(), routes)
    };
    let mut sends: Vec<(usize, Value, Tx)> = Vec::new();
    let mut others: Vec<(usize, JsonRpcRequest)> = Vec::new();
    let mut remote: std::collections::BTreeMap<u16, Vec<(usize, JsonRpcRequest)>> =
        Default::default();
    for ((i, request, tx), route) in decoded.into_iter().zip(routes) {
        match (route, tx) {
            (Route::Local, Some(tx)) => sends.push((i, request.id, tx)),
            (Route::Local, None) => others.push((i, request)),
            (Route::Forward(owner), _) => remote.entry(owner).or_default().push((i, request)),
            (Route::Refuse(code, message), _) => {
                answers[i] = to_value(JsonRpcResponse::err(request.id, code, message));
            }
        }
    }
    if !sends.is_empty() {
        // Wrong-chain transactions are refused by admission; only the rest need checking.
        let to_check: Vec<&Tx> = sends
            .iter()
            .map(|(_, _, tx)| tx)
            .filter(|tx| tx.unsigned.chain_id == rpc.chain_id)
            .collect();
        let all_valid = trellis_node_types::verify_signatures(&to_check);
        let mut state = lock(&rpc.state);
        for (i, id, tx) in sends {
            // A batch with a bad signature is admitted one by one, each fully checked, so
            // that exactly the forged transactions are refused.
            let result = admitted(if all_valid {
                submit_verified(&mut state, tx)
            } else {
                state.submit(tx)
            });
            let mut answer = to_value(match result {
                Ok(r) => match serde_json::to_value(r) {
                    Ok(v) => JsonRpcResponse::ok(id, v),
                    Err(e) => JsonRpcResponse::err(id, codes::INTERNAL, e.to_string()),
                },
                Err(f) => JsonRpcResponse::err(id, f.code, f.message),
            });
            mark_admitting_shard(own, &mut answer);
            answers[i] = answer;
        }
        rpc.metrics.mempool_depth.set(state.mempool.len() as i64);
    }
    // Transactions this node does not know are looked for in the other shards, one batch
    // per shard (see `rpc_lookup`).
    let mut open: Vec<(usize, JsonRpcRequest)> = Vec::new();
    for (i, request) in others {
        let response = to_value(answer(rpc, request.clone()));
        if !forwarded && crate::rpc_lookup::undecided(&request, &response) {
            open.push((i, request));
        }
        answers[i] = response;
    }
    let shards = if open.is_empty() {
        Vec::new()
    } else {
        crate::rpc_lookup::other_shards(rpc)
    };
    if !shards.is_empty() {
        let (places, requests): (Vec<usize>, Vec<JsonRpcRequest>) = open.into_iter().unzip();
        let own_answers = places
            .iter()
            .map(|i| (own, std::mem::take(&mut answers[*i])))
            .collect();
        let merged = crate::rpc_lookup::resolve(rpc, shards, &requests, own_answers).await;
        for (i, response) in places.into_iter().zip(merged) {
            answers[i] = response;
        }
    }
    for (owner, group) in remote {
        let (places, requests): (Vec<usize>, Vec<JsonRpcRequest>) = group.into_iter().unzip();
        for (i, response) in places
            .into_iter()
            .zip(forward_batch(rpc, owner, requests).await)
        {
            answers[i] = response;
        }
    }
    answers
}

fn parse_hash(s: &str) -> Result<Digest, RpcFailure> {
    let bytes = from_hex(s)
        .filter(|b| b.len() == 32)
        .ok_or_else(|| RpcFailure::new(codes::INVALID_PARAMS, "hash must be 32 bytes of hex"))?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes);
    Ok(commonware_cryptography::sha256::Digest(out))
}

fn get_transaction<K: Kv>(
    rpc: &Rpc<K>,
    q: TransactionQuery,
) -> Result<TransactionStatus, RpcFailure> {
    let hash = parse_hash(&q.hash)?;
    let state = lock(&rpc.state);
    if let Some(receipt) = state.ledger.receipt(&hash.0).map_err(internal)? {
        return Ok(TransactionStatus {
            hash: q.hash,
            state: TxState::Committed,
            height: Some(receipt.height),
            success: Some(receipt.success),
            error: (!receipt.success).then_some(receipt.error),
        });
    }
    // Handed over at an epoch switch and on its way to its sender's new shard: pending.
    let pending = state.mempool.contains(&hash)
        || state.forwarding.contains(&hash)
        || state.handed_over.iter().any(|tx| tx.hash() == hash);
    let importing = crate::epoch_switch::pending_imports(&state);
    if !pending && !importing.is_empty() {
        // A transaction from an account of a table being imported may be on its way here
        // (handed over by the table's previous shard): not "unknown" yet.
        let tables: Vec<u8> = importing.iter().map(|i| i.table).collect();
        return Err(RpcFailure::new(
            codes::RESHARDING,
            format!(
                "this shard is taking over tables {tables:?}; a transaction from their \
                 accounts may still be on its way here; retry shortly"
            ),
        ));
    }
    Ok(TransactionStatus {
        hash: q.hash,
        state: if pending {
            TxState::Pending
        } else {
            TxState::Unknown
        },
        height: None,
        success: None,
        error: None,
    })
}

fn get_account<K: Kv>(rpc: &Rpc<K>, q: AccountQuery) -> Result<AccountInfo, RpcFailure> {
    let account = public_key_from_hex(&q.account).ok_or_else(|| {
        RpcFailure::new(
            codes::INVALID_PARAMS,
            "account must be a hex ed25519 public key",
        )
    })?;
    let table = trellis_node_types::table_of(&account);
    let state = lock(&rpc.state);
    // Only the shard holding the table answers (the router forwards the others; this
    // catches a table that moved between routing and now).
    let shard = match crate::rpc_route::account(
        crate::rpc_route::Standing::of(&state, table, false),
        table,
    ) {
        Route::Local => match state.shard.as_ref().map(|p| p.committee) {
            Some(trellis_node_types::Committee::Shard(s)) => Some(s),
            _ => None,
        },
        Route::Refuse(code, message) => return Err(RpcFailure::new(code, message)),
        Route::Forward(owner) => {
            return Err(RpcFailure::new(
                codes::WRONG_SHARD,
                format!(
                    "table {table} belongs to shard {owner}, not held by this node; ask a node of shard {owner}"
                ),
            ));
        }
    };
    let proven = state
        .ledger
        .account_with_proof(&account)
        .map_err(internal)?;
    Ok(AccountInfo {
        shard,
        account: to_hex(account.as_ref()),
        balance: proven.account.balance,
        nonce: proven.account.nonce,
        table: u16::from(proven.table),
        table_root: to_hex(&proven.table_root),
        height: state.finalized_height(),
        proof: to_hex(&proven.proof),
    })
}

fn get_block<K: Kv>(rpc: &Rpc<K>, q: BlockQuery) -> Result<BlockInfo, RpcFailure> {
    let state = lock(&rpc.state);
    let block = state
        .block(q.height)
        .map_err(internal)?
        .ok_or_else(|| RpcFailure::new(codes::NOT_FOUND, format!("no block at {}", q.height)))?;
    let root = state
        .ledger
        .state_root_at(q.height)
        .map_err(internal)?
        .unwrap_or_default();
    // The signers are read under the state lock again.
    drop(state);
    Ok(BlockInfo {
        height: block.height,
        digest: to_hex(&block.digest().0),
        parent: to_hex(&block.parent.0),
        epoch: block.epoch,
        view: block.view,
        state_root: to_hex(&root),
        transactions: block.txs.iter().map(|t| to_hex(&t.hash().0)).collect(),
        governance: block
            .governance
            .iter()
            .map(|g| to_hex(&g.hash().0))
            .collect(),
        signers: crate::rpc_governance::signers(rpc, &block)?,
    })
}

fn status<K: Kv>(rpc: &Rpc<K>) -> NodeStatus {
    // An unplaced "any" validator serves no committee: no validators, no tables.
    let unplaced = rpc.role == Role::AnyShard;
    let validators = if unplaced {
        Vec::new()
    } else {
        rpc.current_validators()
    };
    let state = lock(&rpc.state);
    NodeStatus {
        contract_version: CONTRACT_VERSION,
        chain_id: rpc.chain_id.clone(),
        role: rpc.role,
        node_key: to_hex(rpc.node_key.as_ref()),
        epoch: state.epoch,
        finalized_height: state.finalized_height(),
        peers: rpc.peers.connected(),
        syncing: state.syncing,
        mempool_depth: state.mempool.len(),
        validators: validators.iter().map(|v| to_hex(v.as_ref())).collect(),
        waiting: crate::epoch_switch::blocked(&state),
        drained: state.shard_epoch.as_ref().is_some_and(|r| r.drained),
        tables: state
            .shard
            .as_ref()
            .filter(|p| !unplaced && p.committee != trellis_node_types::Committee::Beacon)
            .map(|p| p.tables.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_node_state::MemKv;
    use trellis_node_types::{Encode, PrivateKey, Signer, TxKind, UnsignedTx, test_key};

    fn rpc(bound: usize) -> (Rpc<MemKv>, PrivateKey) {
        let key = test_key(1);
        let state =
            NodeState::open(MemKv::default(), "c", &[(key.public_key(), 100)], bound).unwrap();
        (
            Rpc {
                chain_id: "c".into(),
                role: Role::Shard { shard: 0 },
                node_key: key.public_key(),
                validators: vec![key.public_key()],
                state: Arc::new(Mutex::new(state)),
                metrics: ChainMetrics::new("c", 0),
                peers: PeerTracker::default(),
                relay: Arc::new(
                    crate::relay::HttpRelay::new(Vec::new(), std::time::Duration::from_secs(5))
                        .unwrap(),
                ),
            },
            key,
        )
    }

    fn tx(key: &PrivateKey, nonce: u64, amount: u64, chain: &str) -> String {
        let tx = UnsignedTx {
            chain_id: chain.into(),
            from: key.public_key(),
            nonce,
            fee: 0,
            kind: TxKind::Transfer {
                to: test_key(2).public_key(),
                amount,
            },
        }
        .sign(key);
        to_hex(&tx.encode())
    }

    fn call(rpc: &Rpc<MemKv>, method: &str, p: Value) -> Result<Value, i64> {
        dispatch(rpc, method, p).map_err(|f| f.code)
    }

    #[test]
    fn send_transaction_maps_every_rejection_to_its_code() {
        let (rpc, key) = rpc(2);
        let send = |t: String| {
            call(
                &rpc,
                methods::SEND_TRANSACTION,
                serde_json::json!({ "tx": t }),
            )
        };
        assert_eq!(send("zz".into()), Err(codes::MALFORMED_TX));
        let good = tx(&key, 0, 10, "c");
        assert_eq!(
            send(good[..good.len() - 2].into()),
            Err(codes::MALFORMED_TX)
        );
        assert_eq!(send("00".repeat(10_000)), Err(codes::MALFORMED_TX));
        assert_eq!(send(tx(&key, 0, 10, "other")), Err(codes::WRONG_CHAIN));
        let mut forged = good.clone().into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            send(String::from_utf8(forged).unwrap()),
            Err(codes::BAD_SIGNATURE)
        );
        assert_eq!(
            send(tx(&key, 0, 1_000, "c")),
            Err(codes::INSUFFICIENT_FUNDS)
        );
        assert_eq!(send(tx(&key, 5, 1, "c")), Err(codes::BAD_NONCE));
        assert!(send(good.clone()).is_ok());
        assert_eq!(send(good), Err(codes::ALREADY_KNOWN));
        assert!(send(tx(&key, 1, 1, "c")).is_ok());
        assert_eq!(send(tx(&key, 2, 1, "c")), Err(codes::MEMPOOL_FULL));
        assert_eq!(
            call(
                &rpc,
                methods::SEND_TRANSACTION,
                serde_json::json!({"nope": 1})
            ),
            Err(codes::INVALID_PARAMS)
        );
    }

    #[tokio::test]
    async fn batches_and_malformed_bodies() {
        let (rpc, _) = rpc(10);
        let rpc = Arc::new(rpc);
        let body = serde_json::json!([
            {"jsonrpc": "2.0", "id": 1, "method": methods::STATUS},
            {"jsonrpc": "2.0", "id": 2, "method": "nope"},
            {"jsonrpc": "1.0", "id": 3, "method": methods::STATUS}
        ])
        .to_string();
        let Json(v) = handle_rpc(State(rpc.clone()), axum::http::HeaderMap::new(), body).await;
        assert_eq!(v.as_array().unwrap().len(), 3);
        assert_eq!(v[0]["result"]["chain_id"], "c");
        assert_eq!(v[1]["error"]["code"], codes::METHOD_NOT_FOUND);
        assert_eq!(v[2]["error"]["code"], codes::INVALID_REQUEST);
        let Json(v) = handle_rpc(
            State(rpc.clone()),
            axum::http::HeaderMap::new(),
            "[]".into(),
        )
        .await;
        assert_eq!(v["error"]["code"], codes::INVALID_REQUEST);
        let Json(v) = handle_rpc(State(rpc), axum::http::HeaderMap::new(), "{".into()).await;
        assert_eq!(v["error"]["code"], codes::PARSE_ERROR);
    }

    #[tokio::test]
    async fn a_batch_of_sends_refuses_exactly_the_bad_ones() {
        let (rpc, key) = rpc(10);
        let rpc = Arc::new(rpc);
        let send = |id: u64, tx: String| {
            serde_json::json!({"jsonrpc": "2.0", "id": id,
                               "method": methods::SEND_TRANSACTION, "params": {"tx": tx}})
        };
        let good = |nonce| tx(&key, nonce, 1, "c");
        let mut forged = good(1).into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).unwrap();
        let body = serde_json::json!([
            send(1, good(0)),
            send(2, forged),
            {"jsonrpc": "2.0", "id": 3, "method": methods::STATUS},
            send(4, good(1)),
            send(5, tx(&key, 2, 1, "other")),
            send(6, "zz".into()),
            send(7, good(1)),
        ])
        .to_string();
        let Json(v) = handle_rpc(State(rpc.clone()), axum::http::HeaderMap::new(), body).await;
        let v = v.as_array().unwrap();
        assert_eq!(v.len(), 7);
        let ids: Vec<u64> = v.iter().map(|r| r["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6, 7]);
        assert!(v[0]["result"]["hash"].is_string(), "{}", v[0]);
        assert_eq!(v[1]["error"]["code"], codes::BAD_SIGNATURE);
        assert_eq!(v[2]["result"]["chain_id"], "c");
        assert!(v[3]["result"]["hash"].is_string(), "{}", v[3]);
        assert_eq!(v[4]["error"]["code"], codes::WRONG_CHAIN);
        assert_eq!(v[5]["error"]["code"], codes::MALFORMED_TX);
        assert_eq!(v[6]["error"]["code"], codes::ALREADY_KNOWN);
        assert_eq!(lock(&rpc.state).mempool.len(), 2);

        // A batch of valid transactions takes the one-verification path.
        let body = serde_json::json!([send(8, good(2)), send(9, good(3))]).to_string();
        let Json(v) = handle_rpc(State(rpc.clone()), axum::http::HeaderMap::new(), body).await;
        assert!(v[0]["result"]["hash"].is_string() && v[1]["result"]["hash"].is_string());
        assert_eq!(lock(&rpc.state).mempool.len(), 4);
        assert_eq!(lock(&rpc.state).gossip.len(), 4);
    }

    #[test]
    fn queries_answer_from_state() {
        let (rpc, key) = rpc(10);
        let status: NodeStatus =
            serde_json::from_value(call(&rpc, methods::STATUS, Value::Null).unwrap()).unwrap();
        assert_eq!(status.finalized_height, 0);
        assert_eq!(status.contract_version, CONTRACT_VERSION);
        let account: AccountInfo = serde_json::from_value(
            call(
                &rpc,
                methods::GET_ACCOUNT,
                serde_json::json!({ "account": to_hex(key.public_key().as_ref()) }),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(account.balance, 100);
        assert!(!account.proof.is_empty());
        let block: BlockInfo = serde_json::from_value(
            call(&rpc, methods::GET_BLOCK, serde_json::json!({ "height": 0 })).unwrap(),
        )
        .unwrap();
        assert_eq!(block.height, 0);
        assert_eq!(
            call(&rpc, methods::GET_BLOCK, serde_json::json!({ "height": 9 })),
            Err(codes::NOT_FOUND)
        );
        let sent = call(
            &rpc,
            methods::SEND_TRANSACTION,
            serde_json::json!({ "tx": tx(&key, 0, 1, "c") }),
        )
        .unwrap();
        let status: TransactionStatus = serde_json::from_value(
            call(
                &rpc,
                methods::GET_TRANSACTION,
                serde_json::json!({ "hash": sent["hash"] }),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(status.state, TxState::Pending);
        assert_eq!(
            call(&rpc, "trellis_nope", Value::Null),
            Err(codes::METHOD_NOT_FOUND)
        );
        assert_eq!(
            call(&rpc, methods::SUBMIT_GOVERNANCE, Value::Null),
            Err(codes::INVALID_PARAMS)
        );
        assert_eq!(
            call(
                &rpc,
                methods::SUBMIT_GOVERNANCE,
                serde_json::json!({ "tx": "00" })
            ),
            Err(codes::BAD_GOVERNANCE)
        );
    }
}
