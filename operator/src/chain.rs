//! The seam between the operator and the chain itself.
//!
//! Everything the operator needs from running nodes goes through [`ChainClient`]: each
//! committee's nodes' `trellis_status` (finalized height, epoch, peers — the
//! `ChainHealthy` condition and the rolling upgrade's finality gate), the beacon's view
//! (epoch, shard count in force) and the system transactions the operator signs with the
//! network admin key (`SetShardCount`). Kubernetes objects tell the operator whether pods
//! are Ready; only this seam may say whether the *chain* is healthy, so `ChainHealthy` is
//! never derived from pod state.
//!
//! [`NodeRpc`] is the real client: JSON-RPC over HTTP with timeouts, nodes located by a
//! [`NodeResolver`] (in-cluster DNS, or loopback in tests). The beacon step (shard map,
//! validator registration, `SetShardCount` with the per-table load hint) talks to the
//! beacon committee's nodes; a node without a method answers
//! [`ChainError::NotImplemented`]. Consortium governance (the member registry,
//! submitting a governance transaction, its receipt) runs against the registry
//! committee's nodes.
//! [`NodeRpcPending`] answers `NotImplemented` for everything (benchmarks and tests that
//! run no node).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use trellis_node_api::{
    JsonRpcRequest, JsonRpcResponse, MembersInfo, NodeStatus, RPC_PATH, SubmitGovernanceParams,
    SubmitGovernanceResult, TransactionQuery, TransactionStatus, error_codes, methods,
};

use trellis_node_api::shard::{
    ShardMapInfo, SubmitSystemParams, SubmitSystemResult, SystemSequence, SystemSequenceQuery,
};
use trellis_node_types::{PrivateKey, Signer, SystemAction, SystemPayload, SystemTx, to_hex};

use crate::endpoints::{NodeRef, NodeResolver};

/// The signing key of a hex seed.
fn signing_key(seed: &Seed) -> Result<PrivateKey, ChainError> {
    trellis_node_types::private_key_from_hex(&seed.0)
        .ok_or_else(|| ChainError::Protocol("a key Secret holds a malformed seed".into()))
}

/// Where the operator reaches a network's beacon, and the key it signs system
/// transactions with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeaconEndpoint {
    pub chain_id: String,
    /// The beacon committee's validators.
    pub nodes: Vec<NodeRef>,
    /// The network admin key (`None` while its Secret is unreadable).
    pub admin: Option<Seed>,
}

/// A hex ed25519 seed the operator signs with. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Seed(pub String);

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed(..)")
    }
}

/// A validator of a shard that is about to join: registered with the beacon (signed with
/// its own node key, as public networks allow) before `SetShardCount` names its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewValidator {
    pub shard: u16,
    pub node_key: Seed,
    /// `host:port` of its p2p and JSON-RPC listeners (stable DNS names).
    pub p2p_address: String,
    pub rpc_address: String,
}

/// A shard-count change to ask the beacon for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleRequest {
    pub count: u16,
    /// Validators of shards the new count adds.
    pub new_validators: Vec<NewValidator>,
    /// Per-table load hint (one entry per table, 256, or empty for none): the beacon
    /// moves the busiest tables to new shards and balances by it.
    pub load: Vec<u64>,
}

/// A pool validator to register with the beacon for shard "any" (signed with its own
/// node key) or to deregister (likewise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolValidator {
    pub node_key: Seed,
    /// `host:port` of its p2p and JSON-RPC listeners (stable DNS names).
    pub p2p_address: String,
    pub rpc_address: String,
}

/// The pool's registrations to bring in line with `spec.validatorPool` (see
/// [`crate::pool`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolRequest {
    /// Wanted pool validators no committee includes: registered for shard "any".
    pub join: Vec<PoolValidator>,
    /// Pool validators scaled away that a committee still includes: deregistered.
    pub leave: Vec<PoolValidator>,
}

/// The beacon's view of the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BeaconView {
    pub epoch: u64,
    /// Shard count in force this epoch.
    pub shard_count: u16,
    /// A `SetShardCount` accepted and waiting for the next epoch boundary.
    pub pending_shard_count: Option<u16>,
    /// The beacon finalises blocks and has a quorum connected.
    pub healthy: bool,
    pub finalized_height: u64,
    /// Tables are being handed off after the last change (another change waits).
    pub resharding: bool,
    /// The shard of every validator in a committee this epoch, by hex node key (where
    /// the pool validators are).
    pub placements: BTreeMap<String, u16>,
}

/// The validators of one committee, to be asked for their status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitteeNodes {
    /// The chain id every node must report (a node of another network is not counted).
    pub chain_id: String,
    pub nodes: Vec<NodeRef>,
}

impl CommitteeNodes {
    /// The validators of `committee` in `namespace`, by the names the build step gives them.
    pub fn of(
        chain_id: &str,
        namespace: &str,
        committee: &trellis_crd::topology::Committee,
    ) -> Self {
        Self {
            chain_id: chain_id.to_owned(),
            nodes: committee
                .nodes
                .iter()
                .map(|n| NodeRef {
                    namespace: namespace.to_owned(),
                    committee: committee.name.clone(),
                    node: n.name.clone(),
                })
                .collect(),
        }
    }
}

/// What each validator of a committee answered, by pod name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitteeChain {
    pub nodes: BTreeMap<String, Result<NodeStatus, ChainError>>,
}

impl CommitteeChain {
    /// Statuses of the nodes that answered.
    pub fn answered(&self) -> impl Iterator<Item = (&String, &NodeStatus)> {
        self.nodes
            .iter()
            .filter_map(|(name, r)| r.as_ref().ok().map(|s| (name, s)))
    }

    /// Highest finalized height any node reports.
    pub fn finalized_height(&self) -> Option<u64> {
        self.answered().map(|(_, s)| s.finalized_height).max()
    }
}

/// A committee's load, read from its nodes' Prometheus metrics (`GET /metrics`): the
/// built-in autoscaler's input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitteeLoad {
    /// `trellis_txs_committed_total`: transactions in finalized blocks (a counter; the
    /// autoscaler turns two readings into a rate). The highest any node reports.
    pub txs_committed: u64,
    /// `trellis_mempool_depth`: the deepest mempool of the committee's nodes.
    pub mempool_depth: u64,
    /// `trellis_table_txs_total{table}`: transactions per owned table (counters), the
    /// highest any node reports per table. The load hint of `SetShardCount`.
    pub table_txs: BTreeMap<u8, u64>,
}

impl CommitteeLoad {
    /// Folds another node's reading in: the highest figures win (a node that lags
    /// behind reports less of the same chain).
    fn merge(&mut self, other: CommitteeLoad) {
        self.txs_committed = self.txs_committed.max(other.txs_committed);
        self.mempool_depth = self.mempool_depth.max(other.mempool_depth);
        for (table, txs) in other.table_txs {
            let seen = self.table_txs.entry(table).or_default();
            *seen = (*seen).max(txs);
        }
    }
}

/// Why the chain could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// What this call needs does not exist in `trellis-node` yet.
    #[error("{0} is not implemented by trellis-node yet")]
    NotImplemented(&'static str),
    /// The node did not answer (no pod, no process, network partition, timeout).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The node answered something that is not the contract (or another network).
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The chain refused the transaction.
    #[error("refused: {0}")]
    Refused(String),
    /// The nodes answered, but the step cannot be taken yet (and says why).
    #[error("{0}")]
    Pending(String),
}

/// Reads from and writes to a network's chain.
pub trait ChainClient: Send + Sync + 'static {
    /// `trellis_status` of every validator of a committee, asked concurrently.
    fn committee_status<'a>(
        &'a self,
        committee: &'a CommitteeNodes,
    ) -> BoxFuture<'a, CommitteeChain>;

    /// The beacon's current view.
    fn beacon_view<'a>(
        &'a self,
        beacon: &'a BeaconEndpoint,
    ) -> BoxFuture<'a, Result<BeaconView, ChainError>>;

    /// Asks the beacon for a shard count: registers the new shards' validators, then
    /// submits `SetShardCount(count)` signed with the network admin key (it takes effect
    /// at the next epoch boundary). Idempotent: call it on every reconcile until the
    /// beacon's view shows the count.
    fn scale<'a>(
        &'a self,
        beacon: &'a BeaconEndpoint,
        request: &'a ScaleRequest,
    ) -> BoxFuture<'a, Result<(), ChainError>>;

    /// Brings the beacon's registry in line with the validator pool: registers each of
    /// `request.join` for shard "any" and deregisters each of `request.leave`, each
    /// signed with its own node key. Idempotent: a registration or deregistration the
    /// beacon already executed counts as done, so call it on every reconcile until the
    /// beacon's map shows the pool as wanted.
    fn update_pool<'a>(
        &'a self,
        beacon: &'a BeaconEndpoint,
        request: &'a PoolRequest,
    ) -> BoxFuture<'a, Result<(), ChainError>>;

    /// The committee's load from its nodes' metrics; an error when no node answered.
    fn committee_load<'a>(
        &'a self,
        committee: &'a CommitteeNodes,
    ) -> BoxFuture<'a, Result<CommitteeLoad, ChainError>>;

    /// The member registry of the committee whose chain keeps it (shard 0 until the
    /// beacon runs): `trellis_getMembers` of the first node that answers.
    fn registry<'a>(
        &'a self,
        registry: &'a CommitteeNodes,
    ) -> BoxFuture<'a, Result<MembersInfo, ChainError>>;

    /// Submits a governance transaction (hex) to the first node of `registry` that
    /// answers; the chain's refusal comes back as [`ChainError::Refused`] with its reason.
    fn submit_governance<'a>(
        &'a self,
        registry: &'a CommitteeNodes,
        tx_hex: &'a str,
    ) -> BoxFuture<'a, Result<SubmitGovernanceResult, ChainError>>;

    /// Where a governance transaction is (`trellis_getGovernance`): pending in the pool,
    /// committed (with its outcome) or unknown to the node asked.
    fn governance_status<'a>(
        &'a self,
        registry: &'a CommitteeNodes,
        hash: &'a str,
    ) -> BoxFuture<'a, Result<TransactionStatus, ChainError>>;

    /// The p2p address other nodes reach `node` at, as this client's resolver knows it
    /// (what an admission proposal records on chain). `None`: the stable DNS name.
    fn p2p_address(&self, _node: &NodeRef) -> Option<String> {
        None
    }

    /// The `host:port` of `node`'s JSON-RPC listener, as this client's resolver knows it
    /// (what a validator registration records on the beacon). `None`: the stable DNS name.
    fn rpc_address(&self, _node: &NodeRef) -> Option<String> {
        None
    }
}

/// The beacon's refusal of a registration it already holds, and of a deregistration of a
/// key it does not hold (`SystemRefusal::Unchanged`, `SystemRefusal::UnknownValidator`;
/// a unit test keeps them in step).
const REFUSED_UNCHANGED: &str = "is already registered for this shard";
const REFUSED_UNKNOWN: &str = "is not a registered validator";

/// What the beacon step needs from the beacon's nodes.
const BEACON_ROLE: &str = "the beacon role (trellis_getShardMap of a beacon node)";
/// What a client without nodes cannot do.
const GOVERNANCE: &str = "governance (trellis_getMembers, trellis_submitGovernance)";

/// The chain client over the nodes' JSON-RPC.
#[derive(Clone)]
pub struct NodeRpc {
    resolver: Arc<dyn NodeResolver>,
    timeout: Duration,
}

/// Per-request limit: a node that does not answer within it counts as unreachable, so a
/// dead pod never stalls a reconcile.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a node serves its Prometheus metrics.
const METRICS_PATH: &str = "/metrics";

/// Largest response body read from a node (a status is a few hundred bytes; the bound
/// keeps a misbehaving peer from filling the operator's memory).
const MAX_RESPONSE: usize = 1 << 20;

impl NodeRpc {
    pub fn new(resolver: Arc<dyn NodeResolver>, timeout: Duration) -> Self {
        Self { resolver, timeout }
    }

    /// One HTTP/1.1 exchange with `node` (`POST` with a JSON body, or `GET`), within the
    /// timeout. Returns the status code and the body.
    pub async fn http(
        &self,
        node: &NodeRef,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), ChainError> {
        let base = self
            .resolver
            .rpc_url(node)
            .ok_or_else(|| ChainError::Unreachable(format!("no address for {}", node.node)))?;
        let authority = base
            .strip_prefix("http://")
            .map(|a| a.trim_end_matches('/').to_owned())
            .ok_or_else(|| ChainError::Protocol(format!("{base} is not an http:// URL")))?;
        let unreachable = |e: &dyn std::fmt::Display| {
            ChainError::Unreachable(format!("{} ({authority}): {e}", node.node))
        };
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(&authority)
                .await
                .map_err(|e| unreachable(&e))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| unreachable(&e))?;
            // The connection task ends with the exchange (Connection: close), and at the
            // latest with the timeout, so a node that stops mid-answer holds no socket.
            tokio::spawn(tokio::time::timeout(self.timeout, connection));
            let mut builder = hyper::Request::builder()
                .uri(path)
                .header(hyper::header::HOST, &authority)
                .header(hyper::header::CONNECTION, "close");
            // When the operator exports traces, the node's RPC span joins the
            // reconcile's trace (W3C trace context; nothing is added otherwise).
            for (name, value) in trellis_telemetry::trace_headers(&tracing::Span::current()) {
                builder = builder.header(name, value);
            }
            let request = match body {
                Some(bytes) => builder
                    .method(hyper::Method::POST)
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(bytes))),
                None => builder
                    .method(hyper::Method::GET)
                    .body(http_body_util::Full::new(bytes::Bytes::new())),
            }
            .map_err(|e| ChainError::Protocol(e.to_string()))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unreachable(&e))?;
            let status = response.status().as_u16();
            let limited = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE);
            let bytes = http_body_util::BodyExt::collect(limited)
                .await
                .map_err(|e| unreachable(&e))?
                .to_bytes();
            Ok((status, bytes.to_vec()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unreachable(&format!("no answer within {:?}", self.timeout)))?
    }

    /// One JSON-RPC call to one node.
    pub async fn call<T: DeserializeOwned>(
        &self,
        node: &NodeRef,
        method: &str,
        params: impl serde::Serialize,
    ) -> Result<T, ChainError> {
        let request = JsonRpcRequest::new(1, method, params)
            .map_err(|e| ChainError::Protocol(e.to_string()))?;
        let body = serde_json::to_vec(&request).map_err(|e| ChainError::Protocol(e.to_string()))?;
        let (_, bytes) = self.http(node, RPC_PATH, Some(body)).await?;
        let body: JsonRpcResponse = serde_json::from_slice(&bytes)
            .map_err(|e| ChainError::Protocol(format!("{}: {e}", node.node)))?;
        if let Some(error) = body.error {
            return Err(ChainError::Refused(format!(
                "{} answered {}: {}",
                node.node, error.code, error.message
            )));
        }
        let result = body
            .result
            .ok_or_else(|| ChainError::Protocol(format!("{}: no result", node.node)))?;
        serde_json::from_value(result)
            .map_err(|e| ChainError::Protocol(format!("{}: {method}: {e}", node.node)))
    }

    /// The beacon's shard map, asked of every beacon node at once: the most advanced
    /// answer (highest finalized beacon height), with the node that gave it.
    async fn shard_map(
        &self,
        beacon: &BeaconEndpoint,
    ) -> Result<(NodeRef, ShardMapInfo), ChainError> {
        let answers = futures::future::join_all(beacon.nodes.iter().map(|node| async move {
            let map = self
                .call::<ShardMapInfo>(node, methods::GET_SHARD_MAP, ())
                .await;
            (node, map)
        }))
        .await;
        let mut best: Option<(NodeRef, ShardMapInfo)> = None;
        let mut last = ChainError::Unreachable("the beacon has no nodes".into());
        for (node, answer) in answers {
            match answer {
                Ok(map) => {
                    if best
                        .as_ref()
                        .is_none_or(|(_, b)| map.beacon_height > b.beacon_height)
                    {
                        best = Some((node.clone(), map));
                    }
                }
                Err(ChainError::Refused(m))
                    if m.contains(&format!("answered {}", error_codes::METHOD_NOT_FOUND)) =>
                {
                    last = ChainError::NotImplemented(BEACON_ROLE);
                }
                Err(e) => last = e,
            }
        }
        best.ok_or(last)
    }

    async fn system_sequence(&self, node: &NodeRef, key: &PrivateKey) -> Result<u64, ChainError> {
        let query = SystemSequenceQuery {
            key: to_hex(key.public_key().as_ref()),
        };
        let answer: SystemSequence = self.call(node, methods::GET_SYSTEM_SEQUENCE, query).await?;
        Ok(answer.sequence)
    }

    /// Submits a system transaction; one already in the beacon's pool counts as submitted.
    async fn submit_system(&self, node: &NodeRef, tx: &SystemTx) -> Result<(), ChainError> {
        let params = SubmitSystemParams { tx: tx.to_hex() };
        match self
            .call::<SubmitSystemResult>(node, methods::SUBMIT_SYSTEM, params)
            .await
        {
            Ok(_) => Ok(()),
            Err(ChainError::Refused(m))
                if m.contains(&format!("answered {}", error_codes::ALREADY_KNOWN)) =>
            {
                Ok(())
            }
            Err(ChainError::Refused(m))
                if m.contains(&format!("answered {}", error_codes::RESHARDING)) =>
            {
                Err(ChainError::Pending(m))
            }
            Err(e) => Err(e),
        }
    }

    /// One node's load figures from its `/metrics`.
    async fn node_load(&self, node: &NodeRef) -> Result<CommitteeLoad, ChainError> {
        let (status, body) = self.http(node, METRICS_PATH, None).await?;
        if status != 200 {
            return Err(ChainError::Protocol(format!(
                "{}: GET {METRICS_PATH} answered {status}",
                node.node
            )));
        }
        let text = String::from_utf8_lossy(&body);
        let read = |name: &str| {
            trellis_autoscale::scrape::metric_total(&text, name)
                .map(|v| v.max(0.0) as u64)
                .ok_or_else(|| ChainError::Protocol(format!("{}: no {name} metric", node.node)))
        };
        Ok(CommitteeLoad {
            txs_committed: read("trellis_txs_committed_total")?,
            mempool_depth: read("trellis_mempool_depth")?,
            // Absent on nodes that own no table (or predate the metric): no hint.
            table_txs: trellis_autoscale::scrape::per_table(&text, "trellis_table_txs_total"),
        })
    }

    /// Asks the committee's nodes in turn until one answers: a refusal (the chain said
    /// no) is an answer and ends the search; an unreachable or garbled node is skipped.
    async fn first_answer<'a, T, F, Fut>(
        &'a self,
        committee: &'a CommitteeNodes,
        ask: F,
    ) -> Result<T, ChainError>
    where
        F: Fn(&'a NodeRef) -> Fut,
        Fut: std::future::Future<Output = Result<T, ChainError>>,
    {
        let mut last =
            ChainError::Unreachable(format!("no node of chain {} to ask", committee.chain_id));
        for node in &committee.nodes {
            match ask(node).await {
                Ok(answer) => return Ok(answer),
                Err(e @ ChainError::Refused(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn node_status(&self, chain_id: &str, node: &NodeRef) -> Result<NodeStatus, ChainError> {
        let status: NodeStatus = self.call(node, methods::STATUS, ()).await?;
        if status.chain_id != chain_id {
            return Err(ChainError::Protocol(format!(
                "{} runs chain {:?}, not {chain_id:?}",
                node.node, status.chain_id
            )));
        }
        Ok(status)
    }
}

impl ChainClient for NodeRpc {
    fn committee_status<'a>(
        &'a self,
        committee: &'a CommitteeNodes,
    ) -> BoxFuture<'a, CommitteeChain> {
        Box::pin(async move {
            let answers = futures::future::join_all(
                committee
                    .nodes
                    .iter()
                    .map(|node| self.node_status(&committee.chain_id, node)),
            )
            .await;
            CommitteeChain {
                nodes: committee
                    .nodes
                    .iter()
                    .map(|n| n.node.clone())
                    .zip(answers)
                    .collect(),
            }
        })
    }

    fn beacon_view<'a>(
        &'a self,
        beacon: &'a BeaconEndpoint,
    ) -> BoxFuture<'a, Result<BeaconView, ChainError>> {
        Box::pin(async move {
            let (_, map) = self.shard_map(beacon).await?;
            Ok(BeaconView {
                epoch: map.epoch,
                shard_count: map.shard_count,
                pending_shard_count: map.pending_shard_count,
                healthy: true,
                finalized_height: map.beacon_height,
                resharding: map.resharding,
                placements: map
                    .shards
                    .iter()
                    .flat_map(|s| {
                        s.validators
                            .iter()
                            .map(|key| (key.to_ascii_lowercase(), s.shard))
                    })
                    .collect(),
            })
        })
    }

    fn scale<'a>(
        &'a self,
        beacon: &'a BeaconEndpoint,
        request: &'a ScaleRequest,
    ) -> BoxFuture<'a, Result<(), ChainError>> {
        Box::pin(async move {
            let (node, map) = self.shard_map(beacon).await?;
            let settled = map.pending_shard_count == Some(request.count)
                || (map.pending_shard_count.is_none() && map.shard_count == request.count);
            if settled {
                return Ok(());
            }
            // New shards' validators first: the beacon refuses a count whose shards have
            // none. A node key signs nothing but its registration, so a key whose system
            // sequence moved on is registered (or was refused, which the next step says).
            let mut registering = 0;
            for validator in &request.new_validators {
                let key = signing_key(&validator.node_key)?;
                let sequence = self.system_sequence(&node, &key).await?;
                if sequence > 0 {
                    continue;
                }
                let node_key = key.public_key();
                let tx = SystemPayload {
                    chain_id: beacon.chain_id.clone(),
                    sequence,
                    action: SystemAction::RegisterValidator {
                        shard: validator.shard,
                        node_key,
                        p2p_address: validator.p2p_address.clone(),
                        rpc_address: validator.rpc_address.clone(),
                    },
                }
                .sign(&key);
                self.submit_system(&node, &tx).await?;
                registering += 1;
            }
            if registering > 0 {
                return Err(ChainError::Pending(format!(
                    "registering {registering} validators of the new shards with the beacon"
                )));
            }
            let admin = beacon.admin.as_ref().ok_or_else(|| {
                ChainError::Pending("the network admin key Secret is not readable yet".into())
            })?;
            let key = signing_key(admin)?;
            let sequence = self.system_sequence(&node, &key).await?;
            let tx = SystemPayload {
                chain_id: beacon.chain_id.clone(),
                sequence,
                action: SystemAction::SetShardCount {
                    count: request.count,
                    load: request.load.clone(),
                },
            }
            .sign(&key);
            self.submit_system(&node, &tx).await
        })
    }

    fn update_pool<'a>(
        &'a self,
        beacon: &'a BeaconEndpoint,
        request: &'a PoolRequest,
    ) -> BoxFuture<'a, Result<(), ChainError>> {
        Box::pin(async move {
            let (node, _) = self.shard_map(beacon).await?;
            let steps = request
                .join
                .iter()
                .map(|v| (v, true))
                .chain(request.leave.iter().map(|v| (v, false)));
            for (validator, join) in steps {
                let key = signing_key(&validator.node_key)?;
                let node_key = key.public_key();
                let action = if join {
                    SystemAction::RegisterValidator {
                        shard: trellis_node_api::shard::ANY_SHARD,
                        node_key,
                        p2p_address: validator.p2p_address.clone(),
                        rpc_address: validator.rpc_address.clone(),
                    }
                } else {
                    SystemAction::DeregisterValidator { node_key }
                };
                let sequence = self.system_sequence(&node, &key).await?;
                let tx = SystemPayload {
                    chain_id: beacon.chain_id.clone(),
                    sequence,
                    action,
                }
                .sign(&key);
                match self.submit_system(&node, &tx).await {
                    // Executed already (the beacon's refusal texts, see
                    // trellis_node_beacon::SystemRefusal): the map changes at the
                    // next epoch boundary.
                    Err(ChainError::Refused(m))
                        if (join && m.contains(REFUSED_UNCHANGED))
                            || (!join && m.contains(REFUSED_UNKNOWN)) => {}
                    other => other?,
                }
            }
            Ok(())
        })
    }

    fn committee_load<'a>(
        &'a self,
        committee: &'a CommitteeNodes,
    ) -> BoxFuture<'a, Result<CommitteeLoad, ChainError>> {
        Box::pin(async move {
            let answers =
                futures::future::join_all(committee.nodes.iter().map(|node| self.node_load(node)))
                    .await;
            let mut load = None::<CommitteeLoad>;
            let mut last = ChainError::Unreachable("the committee has no nodes".into());
            for answer in answers {
                match answer {
                    Ok(l) => load.get_or_insert_with(CommitteeLoad::default).merge(l),
                    Err(e) => last = e,
                }
            }
            load.ok_or(last)
        })
    }

    fn registry<'a>(
        &'a self,
        registry: &'a CommitteeNodes,
    ) -> BoxFuture<'a, Result<MembersInfo, ChainError>> {
        Box::pin(async move {
            self.first_answer(registry, |node| async move {
                let members: MembersInfo = self.call(node, methods::GET_MEMBERS, ()).await?;
                if members.chain_id != registry.chain_id {
                    return Err(ChainError::Protocol(format!(
                        "{} runs chain {:?}, not {:?}",
                        node.node, members.chain_id, registry.chain_id
                    )));
                }
                Ok(members)
            })
            .await
        })
    }

    fn submit_governance<'a>(
        &'a self,
        registry: &'a CommitteeNodes,
        tx_hex: &'a str,
    ) -> BoxFuture<'a, Result<SubmitGovernanceResult, ChainError>> {
        Box::pin(async move {
            self.first_answer(registry, |node| async move {
                self.call(
                    node,
                    methods::SUBMIT_GOVERNANCE,
                    SubmitGovernanceParams {
                        tx: tx_hex.to_owned(),
                    },
                )
                .await
            })
            .await
        })
    }

    fn governance_status<'a>(
        &'a self,
        registry: &'a CommitteeNodes,
        hash: &'a str,
    ) -> BoxFuture<'a, Result<TransactionStatus, ChainError>> {
        Box::pin(async move {
            self.first_answer(registry, |node| async move {
                self.call(
                    node,
                    methods::GET_GOVERNANCE,
                    TransactionQuery {
                        hash: hash.to_owned(),
                    },
                )
                .await
            })
            .await
        })
    }

    fn p2p_address(&self, node: &NodeRef) -> Option<String> {
        self.resolver.p2p_address(node)
    }

    fn rpc_address(&self, node: &NodeRef) -> Option<String> {
        let url = self.resolver.rpc_url(node)?;
        Some(
            url.strip_prefix("http://")
                .unwrap_or(&url)
                .trim_end_matches('/')
                .to_owned(),
        )
    }
}

/// A chain client for runs without nodes: every call says the RPC is not there.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeRpcPending;

impl ChainClient for NodeRpcPending {
    fn committee_status<'a>(
        &'a self,
        committee: &'a CommitteeNodes,
    ) -> BoxFuture<'a, CommitteeChain> {
        Box::pin(async move {
            CommitteeChain {
                nodes: committee
                    .nodes
                    .iter()
                    .map(|n| {
                        (
                            n.node.clone(),
                            Err(ChainError::NotImplemented("trellis_status")),
                        )
                    })
                    .collect(),
            }
        })
    }

    fn beacon_view<'a>(
        &'a self,
        _beacon: &'a BeaconEndpoint,
    ) -> BoxFuture<'a, Result<BeaconView, ChainError>> {
        Box::pin(async { Err(ChainError::NotImplemented(BEACON_ROLE)) })
    }

    fn scale<'a>(
        &'a self,
        _beacon: &'a BeaconEndpoint,
        _request: &'a ScaleRequest,
    ) -> BoxFuture<'a, Result<(), ChainError>> {
        Box::pin(async { Err(ChainError::NotImplemented(BEACON_ROLE)) })
    }

    fn update_pool<'a>(
        &'a self,
        _beacon: &'a BeaconEndpoint,
        _request: &'a PoolRequest,
    ) -> BoxFuture<'a, Result<(), ChainError>> {
        Box::pin(async { Err(ChainError::NotImplemented(BEACON_ROLE)) })
    }

    fn committee_load<'a>(
        &'a self,
        _committee: &'a CommitteeNodes,
    ) -> BoxFuture<'a, Result<CommitteeLoad, ChainError>> {
        Box::pin(async { Err(ChainError::NotImplemented("node metrics")) })
    }

    fn registry<'a>(
        &'a self,
        _registry: &'a CommitteeNodes,
    ) -> BoxFuture<'a, Result<MembersInfo, ChainError>> {
        Box::pin(async { Err(ChainError::NotImplemented(GOVERNANCE)) })
    }

    fn submit_governance<'a>(
        &'a self,
        _registry: &'a CommitteeNodes,
        _tx_hex: &'a str,
    ) -> BoxFuture<'a, Result<SubmitGovernanceResult, ChainError>> {
        Box::pin(async { Err(ChainError::NotImplemented(GOVERNANCE)) })
    }

    fn governance_status<'a>(
        &'a self,
        _registry: &'a CommitteeNodes,
        _hash: &'a str,
    ) -> BoxFuture<'a, Result<TransactionStatus, ChainError>> {
        Box::pin(async { Err(ChainError::NotImplemented(GOVERNANCE)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::Loopback;
    use std::net::{IpAddr, SocketAddr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TCP server on `ip`:8545 answering every request with `response` (raw HTTP), or
    /// never answering when `None`.
    async fn server(ip: [u8; 4], response: Option<String>) -> tokio::task::JoinHandle<()> {
        let addr = SocketAddr::new(IpAddr::from(ip), 8545);
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let response = response.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    match response {
                        Some(r) => {
                            let _ = stream.write_all(r.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                });
            }
        })
    }

    fn http_ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn client(ip: [u8; 4]) -> (NodeRpc, NodeRef) {
        let node = NodeRef {
            namespace: "ns".into(),
            committee: "c".into(),
            node: "n-0".into(),
        };
        let resolver = Loopback {
            nodes: [("n-0".to_owned(), IpAddr::from(ip))].into(),
        };
        (
            NodeRpc::new(Arc::new(resolver), Duration::from_millis(500)),
            node,
        )
    }

    fn status_json(chain_id: &str) -> String {
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {
            "contract_version": 1, "chain_id": chain_id, "role": {"kind": "shard", "shard": 0},
            "node_key": "00", "epoch": 2, "finalized_height": 40, "peers": 3,
            "syncing": false, "mempool_depth": 0, "validators": []
        }})
        .to_string()
    }

    async fn ask(rpc: &NodeRpc, node: &NodeRef) -> Result<NodeStatus, ChainError> {
        let chain = rpc
            .committee_status(&CommitteeNodes {
                chain_id: "alpha.ns".into(),
                nodes: vec![node.clone()],
            })
            .await;
        chain.nodes[&node.node].clone()
    }

    /// With export on, a call made inside a span carries that span as its W3C
    /// `traceparent`: the node's RPC span joins the operator's trace (the node side is
    /// tested in trellis-node's tests/telemetry.rs). The span's ids are read back from a
    /// real OTLP receiver, so the header is checked against what was exported.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_inside_a_span_sends_its_trace_context() {
        use tracing::Instrument as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        let collector = trellis_telemetry::collector::Collector::start("127.0.57.20")
            .await
            .unwrap();
        let settings = trellis_telemetry::Settings {
            service: "trellis-operator",
            version: "test",
            endpoint: Some(collector.endpoint()),
            https: false,
        };
        let destinations =
            trellis_telemetry::destinations(settings.endpoint.as_deref(), false).unwrap();
        let export = trellis_telemetry::Export::start(&settings, &destinations)
            .unwrap()
            .unwrap();
        let subscriber = tracing_subscriber::registry().with(export.layer("trellis-operator"));
        let _default = tracing::subscriber::set_default(subscriber);

        // A node that records each request's head and answers a status.
        let listener = tokio::net::TcpListener::bind("127.0.57.21:8545")
            .await
            .unwrap();
        let (heads, mut received) = tokio::sync::mpsc::unbounded_channel::<String>();
        let node_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let heads = heads.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    let _ = heads.send(String::from_utf8_lossy(&buf[..n]).to_lowercase());
                    let _ = stream
                        .write_all(http_ok(&status_json("alpha.ns")).as_bytes())
                        .await;
                });
            }
        });
        let (rpc, node) = client([127, 0, 57, 21]);
        let span = tracing::info_span!("reconcile");
        // Every request the node got so far (each is recorded before it is answered).
        let mut drain = || std::iter::from_fn(|| received.try_recv().ok()).collect::<Vec<String>>();
        ask(&rpc, &node).instrument(span.clone()).await.unwrap();
        let traced = drain();
        // Outside any span: nothing to continue, no header.
        ask(&rpc, &node).await.unwrap();
        let untraced = drain();
        drop(span);
        tokio::task::spawn_blocking(move || export.shutdown())
            .await
            .unwrap();

        let exported = collector
            .span(Duration::from_secs(30), |s| s.name == "reconcile")
            .await
            .expect("the reconcile span was not exported");
        let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
        let expected = format!(
            "traceparent: 00-{}-{}-01",
            hex(&exported.trace_id),
            hex(&exported.span_id)
        );
        assert!(!traced.is_empty() && !untraced.is_empty());
        for head in &traced {
            assert!(head.contains(&expected), "{expected} not in:\n{head}");
        }
        for head in &untraced {
            assert!(!head.contains("traceparent"), "{head}");
        }
        node_task.abort();
    }

    #[tokio::test]
    async fn status_is_read_and_checked_against_the_chain_id() {
        let _s = server([127, 0, 30, 201], Some(http_ok(&status_json("alpha.ns")))).await;
        let (rpc, node) = client([127, 0, 30, 201]);
        assert_eq!(ask(&rpc, &node).await.unwrap().finalized_height, 40);

        let _t = server([127, 0, 30, 202], Some(http_ok(&status_json("other")))).await;
        let (rpc, node) = client([127, 0, 30, 202]);
        let err = ask(&rpc, &node).await.unwrap_err();
        assert!(
            matches!(&err, ChainError::Protocol(m) if m.contains("\"other\"")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn silent_refusing_and_garbled_nodes_are_errors_not_hangs() {
        // Accepts the connection and never answers: the timeout ends it.
        let _s = server([127, 0, 30, 203], None).await;
        let (rpc, node) = client([127, 0, 30, 203]);
        let started = std::time::Instant::now();
        let err = ask(&rpc, &node).await.unwrap_err();
        assert!(
            matches!(&err, ChainError::Unreachable(m) if m.contains("no answer")),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // Nobody listens.
        let (rpc, node) = client([127, 0, 30, 204]);
        assert!(matches!(
            ask(&rpc, &node).await,
            Err(ChainError::Unreachable(_))
        ));
        // Not JSON-RPC.
        let _g = server([127, 0, 30, 205], Some(http_ok("<html>"))).await;
        let (rpc, node) = client([127, 0, 30, 205]);
        assert!(matches!(
            ask(&rpc, &node).await,
            Err(ChainError::Protocol(_))
        ));
        // A JSON-RPC error.
        let error =
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"unknown method"}}"#;
        let _e = server([127, 0, 30, 206], Some(http_ok(error))).await;
        let (rpc, node) = client([127, 0, 30, 206]);
        let err = ask(&rpc, &node).await.unwrap_err();
        assert!(
            matches!(&err, ChainError::Refused(m) if m.contains("-32601")),
            "{err}"
        );
        // A node without an address.
        let (rpc, _) = client([127, 0, 30, 207]);
        let nowhere = NodeRef {
            namespace: "ns".into(),
            committee: "c".into(),
            node: "n-9".into(),
        };
        assert!(matches!(
            ask(&rpc, &nowhere).await,
            Err(ChainError::Unreachable(_))
        ));
    }

    /// A beacon node on `ip`:8545 answering the beacon step's three methods, recording
    /// every system transaction submitted to it.
    async fn beacon(ip: [u8; 4], submitted: Arc<std::sync::Mutex<Vec<String>>>) {
        let addr = SocketAddr::new(IpAddr::from(ip), 8545);
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let submitted = submitted.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = vec![0u8; 8192];
                    // Read until the JSON body is complete (it ends the request).
                    loop {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request);
                        if n == 0
                            || text.split_once("\r\n\r\n").is_some_and(|(_, body)| {
                                serde_json::from_str::<serde_json::Value>(body).is_ok()
                            })
                        {
                            break;
                        }
                    }
                    let text = String::from_utf8_lossy(&request).to_string();
                    let body: serde_json::Value =
                        serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
                    let result = match body["method"].as_str().unwrap() {
                        methods::GET_SHARD_MAP => serde_json::json!({
                            "epoch": 1, "epoch_length": 10, "next_epoch_height": 20,
                            "beacon_height": 12, "shard_count": 2, "tables": vec![0; 256],
                            "shards": [], "max_shards": 4, "resharding": false, "beacon": []
                        }),
                        methods::GET_SYSTEM_SEQUENCE => {
                            serde_json::json!({"key": body["params"]["key"], "sequence": 0})
                        }
                        methods::SUBMIT_SYSTEM => {
                            let tx = body["params"]["tx"].as_str().unwrap().to_owned();
                            submitted.lock().unwrap().push(tx);
                            serde_json::json!({"hash": "00", "signer": "00", "sequence": 0})
                        }
                        other => panic!("unexpected {other}"),
                    };
                    let answer = serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": result});
                    let _ = stream
                        .write_all(http_ok(&answer.to_string()).as_bytes())
                        .await;
                });
            }
        });
    }

    #[tokio::test]
    async fn set_shard_count_is_signed_by_the_admin_key_and_carries_the_load_hint() {
        let submitted = Arc::new(std::sync::Mutex::new(Vec::new()));
        beacon([127, 0, 81, 200], submitted.clone()).await;
        let (rpc, node) = client([127, 0, 81, 200]);
        let admin = trellis_node_types::test_key(7);
        let endpoint = BeaconEndpoint {
            chain_id: "alpha.ns".into(),
            nodes: vec![node],
            admin: Some(Seed(to_hex(&trellis_node_types::Encode::encode(&admin)))),
        };
        let mut load = vec![0u64; 256];
        load[9] = 500;
        load[200] = 40;
        let request = ScaleRequest {
            count: 3,
            new_validators: Vec::new(),
            load: load.clone(),
        };
        rpc.scale(&endpoint, &request).await.unwrap();
        let sent = submitted.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        let tx = SystemTx::from_hex(&sent[0]).unwrap();
        assert_eq!(tx.signer, admin.public_key());
        assert_eq!(tx.payload.chain_id, "alpha.ns");
        assert_eq!(
            tx.payload.action,
            SystemAction::SetShardCount { count: 3, load }
        );
        // Without an admin key nothing is signed, and the reason says so.
        let keyless = BeaconEndpoint {
            admin: None,
            ..endpoint
        };
        let err = rpc.scale(&keyless, &request).await.unwrap_err();
        assert!(
            matches!(&err, ChainError::Pending(m) if m.contains("admin key")),
            "{err}"
        );
        assert_eq!(submitted.lock().unwrap().len(), 1);
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;
    use trellis_node_beacon::SystemRefusal;

    /// The pool step recognises the beacon's refusals of a step already taken by their
    /// text (the only thing the RPC error carries): the texts must stay in step.
    #[test]
    fn the_pool_steps_know_the_beacons_refusal_texts() {
        let key = "ab".repeat(32);
        assert!(
            SystemRefusal::Unchanged(key.clone())
                .to_string()
                .contains(REFUSED_UNCHANGED)
        );
        assert!(
            SystemRefusal::UnknownValidator(key)
                .to_string()
                .contains(REFUSED_UNKNOWN)
        );
        // The CRD's registry bound is the beacon's.
        assert_eq!(
            usize::try_from(trellis_crd::network::BEACON_REGISTRY_LIMIT).unwrap(),
            trellis_node_beacon::MAX_VALIDATORS
        );
    }
}
