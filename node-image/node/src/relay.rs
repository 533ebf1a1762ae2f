//! The relay: how a node reads from other committees — beacon blocks, other shards'
//! certified blocks, outbox pages with proofs, table snapshots — and forwards a
//! transaction to the shard that owns its sender.
//!
//! Nothing a relayed answer says is trusted: blocks come with finalization certificates
//! the caller checks against the committee's validators, outbox entries and table leaves
//! with Merkle proofs or roots the caller checks against a certified header (see
//! [`crate::credits`] and `Ledger::import_table`). A relay only decodes answers with
//! their strict size bounds.
//!
//! Two implementations with the same failover semantics (ask each known node of the
//! committee in turn until one answers): [`HttpRelay`], JSON-RPC over HTTP to other
//! nodes' `rpc_address`es, and [`LocalRelay`], in-process, for the deterministic
//! simulation. The server side of both is [`RelayServer`].

use crate::follower::BeaconSource;
use crate::rpc_shard::{
    self, BeaconBlocksParams, BeaconBlocksResult, CertifiedBlockJson, CertifiedBlockParams,
    OutboxHeadsParams, OutboxHeadsResult, OutboxParams, OutboxResult, SnapshotParams,
    SnapshotResult,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use trellis_node_api::{
    BeaconBlocks, JsonRpcRequest, JsonRpcResponse, SendTransactionParams, methods,
};
use trellis_node_beacon::BeaconState;
use trellis_node_state::{
    MAX_OUTBOX_PAGE_SIZE, MAX_SNAPSHOT_CHUNK_SIZE, OutboxPage, TableSnapshot,
};
use trellis_node_types::{Digest, Encode, Tx, to_hex};

/// A finalized block of another committee and the certificate that finalized it, both
/// as their encodings (the caller decodes the block and verifies the certificate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertifiedBlock {
    pub block: Vec<u8>,
    pub certificate: Vec<u8>,
}

/// Consecutive beacon blocks ending at a block that has its own finalization
/// certificate (earlier ones were finalized through it): the caller checks the parent
/// links and that one certificate. Served by the node wiring's `trellis_getBeaconBlocks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BeaconPage {
    /// Block encodings, ascending heights.
    pub blocks: Vec<Vec<u8>>,
    /// Finalization certificate of the last block.
    pub certificate: Vec<u8>,
    /// The answering node's finalized beacon height.
    pub finalized_height: u64,
}

/// Why a relayed read failed. Callers retry later (or ask another committee member):
/// a relay failure delays, it never changes what is accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("no known node of {0}")]
    NoRoute(String),
    #[error("no node of {target} answered: {last}")]
    Unreachable { target: String, last: String },
    #[error("{target} refused ({code}): {message}")]
    Refused {
        target: String,
        code: i64,
        message: String,
    },
    #[error("malformed answer from {target}: {why}")]
    Malformed { target: String, why: String },
}

/// "Receipts of `source_table` → `dest_table` from `from_seq`, proven at `height`."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRequest {
    pub source_table: u8,
    pub dest_table: u8,
    pub from_seq: u64,
    pub limit: u32,
    pub height: u64,
}

/// "The next chunk of `table` as of `height`, after key hash `after`." With `root`, the
/// chunk of the tree with that root: the table at `height` when that is its root there,
/// or the version the serving node imported with that root (a node of the shard that
/// took the table over, serving a peer that replays the import; `height` is then the
/// source shard's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRequest {
    pub table: u8,
    pub height: u64,
    pub after: Option<[u8; 32]>,
    pub limit: u32,
    pub root: Option<[u8; 32]>,
}

/// What a node asks other committees (client side).
pub trait Relay: Send + Sync + 'static {
    /// Beacon blocks from height `from`, at most `limit` (see [`BeaconPage`]).
    fn beacon_blocks(
        &self,
        from: u64,
        limit: u32,
    ) -> impl Future<Output = Result<BeaconPage, RelayError>> + Send;

    /// A shard's finalized block at `height` (`None`: its latest) with its certificate.
    fn certified_block(
        &self,
        shard: u16,
        height: Option<u64>,
    ) -> impl Future<Output = Result<CertifiedBlock, RelayError>> + Send;

    /// The outbox counters `(source, dest, next_seq)` after `height` of every pair of
    /// `sources` × `dests` that ever had a receipt (advisory: tells the caller which
    /// pages to fetch).
    fn outbox_heads(
        &self,
        shard: u16,
        sources: Vec<u8>,
        dests: Vec<u8>,
        height: u64,
    ) -> impl Future<Output = Result<Vec<(u8, u8, u64)>, RelayError>> + Send;

    fn outbox(
        &self,
        shard: u16,
        request: OutboxRequest,
    ) -> impl Future<Output = Result<OutboxPage, RelayError>> + Send;

    fn table_snapshot(
        &self,
        shard: u16,
        request: SnapshotRequest,
    ) -> impl Future<Output = Result<TableSnapshot, RelayError>> + Send;

    /// Hands a transaction to a node of `shard`; returns its hash as that node reports.
    fn forward_tx(
        &self,
        shard: u16,
        tx: &Tx,
    ) -> impl Future<Output = Result<Digest, RelayError>> + Send;

    /// Learns the committees' nodes from the beacon state this node follows (called
    /// before each round of requests; relays that are told their nodes ignore it).
    fn learn(&self, _beacon: &BeaconState) {}
}

/// The follower's [`BeaconSource`] over any relay: `trellis_getBeaconBlocks` pages.
pub struct RelayBeacon<R>(pub Arc<R>);

impl<R: Relay> BeaconSource for RelayBeacon<R> {
    async fn blocks(&self, from: u64) -> Result<BeaconBlocks, String> {
        let page = self
            .0
            .beacon_blocks(from, rpc_shard::MAX_BEACON_BLOCKS)
            .await
            .map_err(|e| e.to_string())?;
        let wire = BeaconBlocksResult::from(&page);
        Ok(BeaconBlocks {
            blocks: wire.blocks,
            certificate: wire.certificate,
            finalized_height: wire.finalized_height,
        })
    }
}

/// What a node answers to other committees (server side). The node wiring implements it
/// over its state; the ledger-backed answers are in [`crate::rpc_shard`].
pub trait RelayServer: Send + Sync {
    fn beacon_blocks(&self, from: u64, limit: u32) -> Result<BeaconPage, RelayError>;
    fn certified_block(&self, height: Option<u64>) -> Result<CertifiedBlock, RelayError>;
    fn outbox_heads(
        &self,
        sources: &[u8],
        dests: &[u8],
        height: u64,
    ) -> Result<Vec<(u8, u8, u64)>, RelayError>;
    fn outbox(&self, request: &OutboxRequest) -> Result<OutboxPage, RelayError>;
    fn table_snapshot(&self, request: &SnapshotRequest) -> Result<TableSnapshot, RelayError>;
    fn submit_tx(&self, tx: Tx) -> Result<Digest, RelayError>;
}

fn beacon_target() -> String {
    "the beacon".to_string()
}

fn shard_target(shard: u16) -> String {
    format!("shard {shard}")
}

/// Asks `nodes` in turn, starting at `start`, until one answers.
fn first_answer<N, T>(
    target: &str,
    nodes: &[N],
    start: usize,
    mut ask: impl FnMut(&N) -> Result<T, RelayError>,
) -> Result<T, RelayError> {
    if nodes.is_empty() {
        return Err(RelayError::NoRoute(target.to_string()));
    }
    let mut last = None;
    for i in 0..nodes.len() {
        match ask(&nodes[start.wrapping_add(i) % nodes.len()]) {
            Ok(answer) => return Ok(answer),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| RelayError::NoRoute(target.to_string())))
}

type Servers = Vec<Arc<dyn RelayServer>>;

/// The in-process relay of the deterministic simulation: committees are sets of
/// [`RelayServer`]s (the simulated nodes). Answers travel through their wire encodings
/// and bounded decoders, as over HTTP.
#[derive(Default)]
pub struct LocalRelay {
    beacon: RwLock<Servers>,
    shards: RwLock<BTreeMap<u16, Servers>>,
    next: AtomicUsize,
}

impl LocalRelay {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_beacon(&self, nodes: Servers) {
        *self.beacon.write().unwrap_or_else(|p| p.into_inner()) = nodes;
    }

    /// Replaces a shard's nodes (at each epoch, from the beacon's committees).
    pub fn set_shard(&self, shard: u16, nodes: Servers) {
        self.shards
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard, nodes);
    }

    fn shard_nodes(&self, shard: u16) -> Servers {
        self.shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shard)
            .cloned()
            .unwrap_or_default()
    }

    fn start(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn ask_shard<T>(
        &self,
        shard: u16,
        ask: impl FnMut(&Arc<dyn RelayServer>) -> Result<T, RelayError>,
    ) -> Result<T, RelayError> {
        first_answer(
            &shard_target(shard),
            &self.shard_nodes(shard),
            self.start(),
            ask,
        )
    }
}

impl Relay for LocalRelay {
    async fn beacon_blocks(&self, from: u64, limit: u32) -> Result<BeaconPage, RelayError> {
        let nodes = self
            .beacon
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        first_answer(&beacon_target(), &nodes, self.start(), |n| {
            n.beacon_blocks(from, limit)
        })
    }

    async fn certified_block(
        &self,
        shard: u16,
        height: Option<u64>,
    ) -> Result<CertifiedBlock, RelayError> {
        self.ask_shard(shard, |n| n.certified_block(height))
    }

    async fn outbox_heads(
        &self,
        shard: u16,
        sources: Vec<u8>,
        dests: Vec<u8>,
        height: u64,
    ) -> Result<Vec<(u8, u8, u64)>, RelayError> {
        self.ask_shard(shard, |n| n.outbox_heads(&sources, &dests, height))
    }

    async fn outbox(&self, shard: u16, request: OutboxRequest) -> Result<OutboxPage, RelayError> {
        self.ask_shard(shard, |n| {
            let page = n.outbox(&request)?;
            OutboxPage::decode_untrusted(&page.to_bytes()).map_err(|e| RelayError::Malformed {
                target: shard_target(shard),
                why: e.to_string(),
            })
        })
    }

    async fn table_snapshot(
        &self,
        shard: u16,
        request: SnapshotRequest,
    ) -> Result<TableSnapshot, RelayError> {
        self.ask_shard(shard, |n| {
            let chunk = n.table_snapshot(&request)?;
            TableSnapshot::decode_untrusted(&chunk.to_bytes()).map_err(|e| RelayError::Malformed {
                target: shard_target(shard),
                why: e.to_string(),
            })
        })
    }

    async fn forward_tx(&self, shard: u16, tx: &Tx) -> Result<Digest, RelayError> {
        self.ask_shard(shard, |n| n.submit_tx(tx.clone()))
    }
}

/// Largest JSON-RPC answer read from another node: the largest outbox page or snapshot
/// chunk, hex-encoded, plus room for the envelope.
pub const MAX_RELAY_RESPONSE: usize =
    2 * max(MAX_OUTBOX_PAGE_SIZE, MAX_SNAPSHOT_CHUNK_SIZE) + 65_536;

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// The relay between processes: JSON-RPC over HTTP to the `host:port` RPC addresses of
/// other committees' nodes (from the beacon state, refreshed at every epoch).
pub struct HttpRelay {
    client: reqwest::Client,
    beacon: RwLock<Vec<String>>,
    shards: RwLock<BTreeMap<u16, Vec<String>>>,
    next: AtomicUsize,
}

impl HttpRelay {
    /// A relay that gives each request `timeout` (connect + answer).
    pub fn new(beacon: Vec<String>, timeout: Duration) -> Result<Self, RelayError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| RelayError::Unreachable {
                target: "any committee".into(),
                last: format!("HTTP client: {e}"),
            })?;
        Ok(Self {
            client,
            beacon: RwLock::new(beacon),
            shards: RwLock::new(BTreeMap::new()),
            next: AtomicUsize::new(0),
        })
    }

    pub fn set_beacon(&self, addresses: Vec<String>) {
        *self.beacon.write().unwrap_or_else(|p| p.into_inner()) = addresses;
    }

    /// Replaces a shard's RPC addresses (`host:port`).
    pub fn set_shard(&self, shard: u16, addresses: Vec<String>) {
        self.shards
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard, addresses);
    }

    fn addresses(&self, shard: Option<u16>) -> Vec<String> {
        match shard {
            None => self
                .beacon
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            Some(s) => self
                .shards
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&s)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// Calls `method` on the committee's nodes in turn until one answers.
    async fn call<P: Serialize, T: DeserializeOwned>(
        &self,
        shard: Option<u16>,
        method: &str,
        params: &P,
    ) -> Result<T, RelayError> {
        let target = shard.map_or_else(beacon_target, shard_target);
        let addresses = self.addresses(shard);
        if addresses.is_empty() {
            return Err(RelayError::NoRoute(target));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = RelayError::NoRoute(target.clone());
        for i in 0..addresses.len() {
            let address = &addresses[start.wrapping_add(i) % addresses.len()];
            match self.call_one(&target, address, method, params).await {
                Ok(answer) => return Ok(answer),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn call_one<P: Serialize, T: DeserializeOwned>(
        &self,
        target: &str,
        address: &str,
        method: &str,
        params: &P,
    ) -> Result<T, RelayError> {
        let unreachable = |e: String| RelayError::Unreachable {
            target: target.to_string(),
            last: format!("{address}: {e}"),
        };
        let malformed = |why: String| RelayError::Malformed {
            target: target.to_string(),
            why: format!("{address}: {why}"),
        };
        let request =
            JsonRpcRequest::new(1, method, params).map_err(|e| malformed(e.to_string()))?;
        let url = format!("http://{address}{}", trellis_node_api::RPC_PATH);
        let mut response = self
            .client
            .post(url)
            .json(&request)
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(unreachable(format!("HTTP {}", response.status())));
        }
        // Read at most MAX_RELAY_RESPONSE bytes, whatever the peer announces.
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| unreachable(e.to_string()))?
        {
            if body.len() + chunk.len() > MAX_RELAY_RESPONSE {
                return Err(malformed(format!(
                    "answer longer than {MAX_RELAY_RESPONSE} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let response: JsonRpcResponse =
            serde_json::from_slice(&body).map_err(|e| malformed(e.to_string()))?;
        if let Some(error) = response.error {
            return Err(RelayError::Refused {
                target: target.to_string(),
                code: error.code,
                message: error.message,
            });
        }
        let result = response
            .result
            .ok_or_else(|| malformed("answer has neither result nor error".into()))?;
        serde_json::from_value(result).map_err(|e| malformed(e.to_string()))
    }
}

fn malformed_from(shard: Option<u16>) -> impl Fn(String) -> RelayError {
    move |why| RelayError::Malformed {
        target: shard.map_or_else(beacon_target, shard_target),
        why,
    }
}

impl HttpRelay {
    /// Posts one JSON-RPC body (a request or a batch, as a client sent it) to the node at
    /// `address` and returns its answer, whatever it holds: how a node forwards a
    /// client's request to another committee.
    pub async fn post(
        &self,
        address: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        self.post_marked(address, body, false).await
    }

    /// [`Self::post`] of a client's request forwarded on its behalf: marked with
    /// [`crate::rpc_route::FORWARDED_HEADER`], so the node that gets it answers it itself
    /// and never forwards it again.
    pub async fn forward(
        &self,
        address: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        self.post_marked(address, body, true).await
    }

    async fn post_marked(
        &self,
        address: &str,
        body: &serde_json::Value,
        forwarded: bool,
    ) -> Result<serde_json::Value, String> {
        let url = format!("http://{address}{}", trellis_node_api::RPC_PATH);
        let mut request = self.client.post(url).json(body);
        if forwarded {
            request = request.header(crate::rpc_route::FORWARDED_HEADER, "1");
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("{address}: {e}"))?
        {
            if bytes.len() + chunk.len() > MAX_RELAY_RESPONSE {
                return Err(format!(
                    "{address}: answer longer than {MAX_RELAY_RESPONSE} bytes"
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("answer of {address} is not JSON: {e}"))
    }
}

impl Relay for HttpRelay {
    fn learn(&self, beacon: &BeaconState) {
        self.set_beacon(
            beacon
                .beacon_validators()
                .iter()
                .map(|s| s.rpc_address.clone())
                .collect(),
        );
        for shard in 0..beacon.shard_count() {
            self.set_shard(shard, beacon.rpc_addresses(shard));
        }
    }

    async fn beacon_blocks(&self, from: u64, limit: u32) -> Result<BeaconPage, RelayError> {
        let result: BeaconBlocksResult = self
            .call(
                None,
                rpc_shard::GET_BEACON_BLOCKS,
                &BeaconBlocksParams { from, limit },
            )
            .await?;
        result.decode(limit).map_err(malformed_from(None))
    }

    async fn certified_block(
        &self,
        shard: u16,
        height: Option<u64>,
    ) -> Result<CertifiedBlock, RelayError> {
        let result: CertifiedBlockJson = self
            .call(
                Some(shard),
                rpc_shard::GET_CERTIFIED_BLOCK,
                &CertifiedBlockParams { height },
            )
            .await?;
        result.decode().map_err(malformed_from(Some(shard)))
    }

    async fn outbox_heads(
        &self,
        shard: u16,
        sources: Vec<u8>,
        dests: Vec<u8>,
        height: u64,
    ) -> Result<Vec<(u8, u8, u64)>, RelayError> {
        let result: OutboxHeadsResult = self
            .call(
                Some(shard),
                rpc_shard::GET_OUTBOX_HEADS,
                &OutboxHeadsParams {
                    source_tables: sources,
                    dest_tables: dests,
                    height,
                },
            )
            .await?;
        Ok(result.heads)
    }

    async fn outbox(&self, shard: u16, request: OutboxRequest) -> Result<OutboxPage, RelayError> {
        let result: OutboxResult = self
            .call(
                Some(shard),
                rpc_shard::GET_OUTBOX,
                &OutboxParams::from(&request),
            )
            .await?;
        result.decode().map_err(malformed_from(Some(shard)))
    }

    async fn table_snapshot(
        &self,
        shard: u16,
        request: SnapshotRequest,
    ) -> Result<TableSnapshot, RelayError> {
        let result: SnapshotResult = self
            .call(
                Some(shard),
                rpc_shard::GET_TABLE_SNAPSHOT,
                &SnapshotParams::from(&request),
            )
            .await?;
        result.decode().map_err(malformed_from(Some(shard)))
    }

    async fn forward_tx(&self, shard: u16, tx: &Tx) -> Result<Digest, RelayError> {
        let result: trellis_node_api::SendTransactionResult = self
            .call(
                Some(shard),
                methods::SEND_TRANSACTION,
                &SendTransactionParams {
                    tx: to_hex(&tx.encode()),
                },
            )
            .await?;
        let hash = rpc_shard::hex32(&result.hash).map_err(malformed_from(Some(shard)))?;
        // The node must report the hash of what we sent.
        if hash != tx.hash().0 {
            return Err(malformed_from(Some(shard))(
                "reported a different transaction hash".into(),
            ));
        }
        Ok(tx.hash())
    }
}
