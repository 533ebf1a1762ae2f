//! The node-to-node JSON-RPC methods of the relay (the server side of
//! [`crate::relay::HttpRelay`]), with their parameter and result shapes.
//!
//! | Method | Params | Result |
//! |---|---|---|
//! | `trellis_getBeaconBlocks` (served by `rpc_beacon`; parsed here) | `{from, limit}` (limit ≤ 64) | `{blocks: [hex block], certificate: hex (of the last block), finalized_height}` |
//! | `trellis_getCertifiedBlock` | `{height?}` (absent: latest finalized) | `{block: hex, certificate: hex}` |
//! | `trellis_getOutboxHeads` | `{source_tables, dest_tables, height}` (≤ 256 each) | `{heads: [[source_table, dest_table, next_seq]]}` (pairs with receipts) |
//! | `trellis_getOutbox` | `{source_table, dest_table, from_seq, limit?, height}` | `{page: hex(outbox_page)}` |
//! | `trellis_getTableSnapshot` | `{table, height, after?: hex, limit?, root?: hex}` | `{chunk: hex(chunk)}` (with `root`: the tree with that root, also an imported one) |
//!
//! Encodings of `outbox_page` and `chunk`: `docs/sharding.md`. A height this node has not
//! applied (or a table it holds no state of) is `-33009` (not found); the caller asks
//! another node. Every answer is verified by the caller, so a node may serve whatever it
//! holds, including tables it handed off.

use crate::chain::{NodeState, lock};
use crate::relay::{
    BeaconPage, CertifiedBlock, OutboxRequest, RelayError, RelayServer, SnapshotRequest,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use trellis_node_api::error_codes as codes;
use trellis_node_state::{
    Kv, Ledger, MAX_OUTBOX_PAGE, MAX_SNAPSHOT_LEAVES, OutboxPage, StateError, TableSnapshot,
};
use trellis_node_types::{Digest, Encode, MAX_BLOCK_SIZE, Tx, from_hex, to_hex};

pub const GET_BEACON_BLOCKS: &str = "trellis_getBeaconBlocks";
pub const GET_CERTIFIED_BLOCK: &str = "trellis_getCertifiedBlock";
pub const GET_OUTBOX_HEADS: &str = "trellis_getOutboxHeads";
pub const GET_OUTBOX: &str = "trellis_getOutbox";
pub const GET_TABLE_SNAPSHOT: &str = "trellis_getTableSnapshot";

/// Most beacon blocks in one answer.
pub const MAX_BEACON_BLOCKS: u32 = 64;
/// Largest relayed finalization certificate (a proposal and one ed25519 signature per
/// validator, up to 128 validators, as the chain accepts).
pub const MAX_RELAYED_CERTIFICATE: usize = 64 * 1024;

/// A JSON-RPC failure: code and message.
pub type Failure = (i64, String);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeaconBlocksParams {
    pub from: u64,
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedBlockJson {
    pub block: String,
    pub certificate: String,
}

impl From<&CertifiedBlock> for CertifiedBlockJson {
    fn from(b: &CertifiedBlock) -> Self {
        Self {
            block: to_hex(&b.block),
            certificate: to_hex(&b.certificate),
        }
    }
}

impl CertifiedBlockJson {
    /// The bytes, within the block and certificate size bounds.
    pub fn decode(&self) -> Result<CertifiedBlock, String> {
        if self.block.len() > 2 * MAX_BLOCK_SIZE + 2 {
            return Err(format!("block longer than {MAX_BLOCK_SIZE} bytes"));
        }
        if self.certificate.len() > 2 * MAX_RELAYED_CERTIFICATE + 2 {
            return Err(format!(
                "certificate longer than {MAX_RELAYED_CERTIFICATE} bytes"
            ));
        }
        let block = from_hex(&self.block).ok_or("block is not hex")?;
        let certificate = from_hex(&self.certificate).ok_or("certificate is not hex")?;
        if block.len() > MAX_BLOCK_SIZE {
            return Err(format!("block longer than {MAX_BLOCK_SIZE} bytes"));
        }
        if certificate.len() > MAX_RELAYED_CERTIFICATE {
            return Err(format!(
                "certificate longer than {MAX_RELAYED_CERTIFICATE} bytes"
            ));
        }
        Ok(CertifiedBlock { block, certificate })
    }
}

/// The wire shape of `trellis_getBeaconBlocks` (`trellis_node_api::BeaconBlocks`, which
/// the beacon serves): the certificate is absent when no block is served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeaconBlocksResult {
    pub blocks: Vec<String>,
    #[serde(default)]
    pub certificate: Option<String>,
    pub finalized_height: u64,
}

impl From<&BeaconPage> for BeaconBlocksResult {
    fn from(page: &BeaconPage) -> Self {
        Self {
            blocks: page.blocks.iter().map(|b| to_hex(b)).collect(),
            certificate: (!page.certificate.is_empty()).then(|| to_hex(&page.certificate)),
            finalized_height: page.finalized_height,
        }
    }
}

impl BeaconBlocksResult {
    /// The bytes, within the count, block and certificate bounds (`limit` asked).
    pub fn decode(&self, limit: u32) -> Result<BeaconPage, String> {
        if self.blocks.len() > limit.min(MAX_BEACON_BLOCKS) as usize {
            return Err(format!(
                "{} blocks, at most {limit} asked",
                self.blocks.len()
            ));
        }
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                CertifiedBlockJson {
                    block: b.clone(),
                    certificate: String::new(),
                }
                .decode()
                .map(|c| c.block)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let certificate = CertifiedBlockJson {
            block: String::new(),
            certificate: self.certificate.clone().unwrap_or_default(),
        }
        .decode()?
        .certificate;
        Ok(BeaconPage {
            blocks,
            certificate,
            finalized_height: self.finalized_height,
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedBlockParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxHeadsParams {
    pub source_tables: Vec<u8>,
    pub dest_tables: Vec<u8>,
    pub height: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxHeadsResult {
    pub heads: Vec<(u8, u8, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxParams {
    pub source_table: u8,
    pub dest_table: u8,
    pub from_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    pub height: u64,
}

impl From<&OutboxRequest> for OutboxParams {
    fn from(r: &OutboxRequest) -> Self {
        Self {
            source_table: r.source_table,
            dest_table: r.dest_table,
            from_seq: r.from_seq,
            limit: Some(r.limit),
            height: r.height,
        }
    }
}

impl From<OutboxParams> for OutboxRequest {
    fn from(p: OutboxParams) -> Self {
        Self {
            source_table: p.source_table,
            dest_table: p.dest_table,
            from_seq: p.from_seq,
            limit: p.limit.unwrap_or(MAX_OUTBOX_PAGE as u32),
            height: p.height,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxResult {
    pub page: String,
}

impl OutboxResult {
    pub fn decode(&self) -> Result<OutboxPage, String> {
        let bytes = from_hex(&self.page).ok_or("outbox page is not hex")?;
        OutboxPage::decode_untrusted(&bytes).map_err(|e| e.to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotParams {
    pub table: u8,
    pub height: u64,
    /// Hex key hash (32 bytes) the chunk starts after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Hex root (32 bytes): the leaves of the table's tree with this root (its state at
    /// `height`, or the version this node imported with that root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
}

impl From<&SnapshotRequest> for SnapshotParams {
    fn from(r: &SnapshotRequest) -> Self {
        Self {
            table: r.table,
            height: r.height,
            after: r.after.map(|a| to_hex(&a)),
            limit: Some(r.limit),
            root: r.root.map(|a| to_hex(&a)),
        }
    }
}

impl TryFrom<SnapshotParams> for SnapshotRequest {
    type Error = String;
    fn try_from(p: SnapshotParams) -> Result<Self, String> {
        let after = match &p.after {
            None => None,
            Some(hex) => Some(hex32(hex).map_err(|e| format!("after: {e}"))?),
        };
        let root = match &p.root {
            None => None,
            Some(hex) => Some(hex32(hex).map_err(|e| format!("root: {e}"))?),
        };
        Ok(Self {
            table: p.table,
            height: p.height,
            after,
            limit: p.limit.unwrap_or(MAX_SNAPSHOT_LEAVES as u32),
            root,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResult {
    pub chunk: String,
}

impl SnapshotResult {
    pub fn decode(&self) -> Result<TableSnapshot, String> {
        let bytes = from_hex(&self.chunk).ok_or("snapshot chunk is not hex")?;
        TableSnapshot::decode_untrusted(&bytes).map_err(|e| e.to_string())
    }
}

/// Parses 32 hex-encoded bytes.
pub fn hex32(s: &str) -> Result<[u8; 32], String> {
    from_hex(s)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| format!("{s:?} is not 32 hex-encoded bytes"))
}

fn refused(e: StateError) -> RelayError {
    let code = match e {
        StateError::Unavailable(_) => codes::NOT_FOUND,
        _ => codes::INTERNAL,
    };
    RelayError::Refused {
        target: "this node".into(),
        code,
        message: e.to_string(),
    }
}

/// `trellis_getOutbox` over a ledger.
pub fn outbox<K: Kv>(ledger: &Ledger<K>, r: &OutboxRequest) -> Result<OutboxPage, RelayError> {
    ledger
        .outbox(
            r.source_table,
            r.dest_table,
            r.from_seq,
            r.limit as usize,
            r.height,
        )
        .map_err(refused)
}

/// `trellis_getOutboxHeads` over a ledger: the non-zero counters of `sources` × `dests`.
pub fn outbox_heads<K: Kv>(
    ledger: &Ledger<K>,
    sources: &[u8],
    dests: &[u8],
    height: u64,
) -> Result<Vec<(u8, u8, u64)>, RelayError> {
    let wanted: std::collections::BTreeSet<u8> = dests.iter().copied().collect();
    let mut heads = Vec::new();
    for &source in sources {
        // One counters leaf per source table: the pairs that ever had a receipt.
        for (dest, next) in ledger.outbox_heads(source, height).map_err(refused)? {
            if dest != source && next > 0 && wanted.contains(&dest) {
                heads.push((source, dest, next));
            }
        }
    }
    Ok(heads)
}

/// `trellis_getTableSnapshot` over a ledger.
pub fn table_snapshot<K: Kv>(
    ledger: &Ledger<K>,
    r: &SnapshotRequest,
) -> Result<TableSnapshot, RelayError> {
    match r.root {
        None => ledger.export_table(r.table, r.height, r.after, r.limit as usize),
        Some(root) => {
            ledger.export_table_with_root(r.table, r.height, root, r.after, r.limit as usize)
        }
    }
    .map_err(refused)
}

fn failure(e: RelayError) -> Failure {
    match e {
        RelayError::Refused { code, message, .. } => (code, message),
        other => (codes::INTERNAL, other.to_string()),
    }
}

fn parse<T: serde::de::DeserializeOwned>(params: Value) -> Result<T, Failure> {
    serde_json::from_value(params).map_err(|e| (codes::INVALID_PARAMS, e.to_string()))
}

fn json<T: Serialize>(value: T) -> Result<Value, Failure> {
    serde_json::to_value(value).map_err(|e| (codes::INTERNAL, e.to_string()))
}

/// Answers a relay method (`None`: not one of them), for the node's RPC router:
/// `if let Some(answer) = rpc_shard::dispatch(&server, method, params) { ... }`.
pub fn dispatch(
    server: &dyn RelayServer,
    method: &str,
    params: Value,
) -> Option<Result<Value, Failure>> {
    let answer = match method {
        GET_CERTIFIED_BLOCK => (|| {
            let p: CertifiedBlockParams = parse(params)?;
            let block = server.certified_block(p.height).map_err(failure)?;
            json(CertifiedBlockJson::from(&block))
        })(),
        GET_OUTBOX_HEADS => (|| {
            let p: OutboxHeadsParams = parse(params)?;
            if p.source_tables.len() > 256 || p.dest_tables.len() > 256 {
                return Err((
                    codes::INVALID_PARAMS,
                    "at most 256 source and 256 destination tables".into(),
                ));
            }
            let heads = server
                .outbox_heads(&p.source_tables, &p.dest_tables, p.height)
                .map_err(failure)?;
            json(OutboxHeadsResult { heads })
        })(),
        GET_OUTBOX => (|| {
            let p: OutboxParams = parse(params)?;
            if p.source_table == p.dest_table {
                return Err((
                    codes::INVALID_PARAMS,
                    "source_table and dest_table must differ".into(),
                ));
            }
            let page = server.outbox(&OutboxRequest::from(p)).map_err(failure)?;
            json(OutboxResult {
                page: to_hex(&page.to_bytes()),
            })
        })(),
        GET_TABLE_SNAPSHOT => (|| {
            let p: SnapshotParams = parse(params)?;
            let request = SnapshotRequest::try_from(p).map_err(|e| (codes::INVALID_PARAMS, e))?;
            let chunk = server.table_snapshot(&request).map_err(failure)?;
            json(SnapshotResult {
                chunk: to_hex(&chunk.to_bytes()),
            })
        })(),
        _ => return None,
    };
    Some(answer)
}

/// Most finalized blocks looked back through for the latest directly certified one.
const CERTIFIED_LOOKBACK: u64 = 256;

fn not_found(message: String) -> RelayError {
    RelayError::Refused {
        target: "this node".into(),
        code: codes::NOT_FOUND,
        message,
    }
}

fn storage(e: StateError) -> RelayError {
    RelayError::Refused {
        target: "this node".into(),
        code: codes::INTERNAL,
        message: e.to_string(),
    }
}

/// What a node serves other committees, over its own state: the RPC methods above and
/// the in-process relay of the simulations both answer from it.
pub struct NodeRelay<K: Kv>(pub Arc<Mutex<NodeState<K>>>);

impl<K: Kv> RelayServer for NodeRelay<K> {
    fn beacon_blocks(&self, from: u64, limit: u32) -> Result<BeaconPage, RelayError> {
        let query = trellis_node_api::BeaconBlocksQuery { from, limit };
        let answer =
            crate::rpc_beacon::blocks_of(&lock(&self.0), query).map_err(|(code, message)| {
                RelayError::Refused {
                    target: "this node".into(),
                    code,
                    message,
                }
            })?;
        BeaconBlocksResult {
            blocks: answer.blocks,
            certificate: answer.certificate,
            finalized_height: answer.finalized_height,
        }
        .decode(limit.min(MAX_BEACON_BLOCKS))
        .map_err(|why| RelayError::Malformed {
            target: "this node".into(),
            why,
        })
    }

    /// A block that was finalized directly (its own certificate is stored): the one at
    /// `height`, or the latest one.
    fn certified_block(&self, height: Option<u64>) -> Result<CertifiedBlock, RelayError> {
        let state = lock(&self.0);
        let finalized = state.finalized_height();
        let heights: Vec<u64> = match height {
            Some(h) => vec![h],
            None => (finalized.saturating_sub(CERTIFIED_LOOKBACK)..=finalized)
                .rev()
                .filter(|h| *h > 0)
                .collect(),
        };
        for h in heights {
            if h > finalized {
                break;
            }
            if let Some(certificate) = state.finalization(h).map_err(storage)?
                && let Some(block) = state.block(h).map_err(storage)?
            {
                return Ok(CertifiedBlock {
                    block: block.encode().to_vec(),
                    certificate,
                });
            }
        }
        Err(not_found(match height {
            Some(h) => format!("no directly certified block at height {h} here"),
            None => "no directly certified block here yet".into(),
        }))
    }

    fn outbox_heads(
        &self,
        sources: &[u8],
        dests: &[u8],
        height: u64,
    ) -> Result<Vec<(u8, u8, u64)>, RelayError> {
        outbox_heads(&lock(&self.0).ledger, sources, dests, height)
    }

    fn outbox(&self, request: &OutboxRequest) -> Result<OutboxPage, RelayError> {
        outbox(&lock(&self.0).ledger, request)
    }

    fn table_snapshot(&self, request: &SnapshotRequest) -> Result<TableSnapshot, RelayError> {
        table_snapshot(&lock(&self.0).ledger, request)
    }

    fn submit_tx(&self, tx: Tx) -> Result<Digest, RelayError> {
        lock(&self.0).submit(tx).map_err(|e| RelayError::Refused {
            target: "this node".into(),
            code: crate::rpc::admit_error_code(&e),
            message: e.to_string(),
        })
    }
}
