//! The contract between `trellis-node` and the Trellis control plane.
//!
//! The operator, the console and the local provisioner build configuration files and
//! genesis files with these types, call the node's JSON-RPC with them and scrape the
//! metric names below. Everything here is plain serde data so that depending on this crate
//! costs nothing; the node does all validation that needs cryptography.
//!
//! The contract is versioned by [`CONTRACT_VERSION`] and documented in
//! `docs/node-contract.md`. Additive changes (a new optional field, a new method) keep
//! the version; anything else bumps it.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

pub mod shard;

/// Version of this contract (config, genesis, RPC, metrics). Reported by `trellis_status`.
pub const CONTRACT_VERSION: u32 = 1;

/// Path of the JSON-RPC endpoint on the RPC listener.
pub const RPC_PATH: &str = "/rpc";
/// Prometheus text exposition.
pub const METRICS_PATH: &str = "/metrics";
/// Liveness probe: process alive and storage writable.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Readiness probe: connected to a quorum of the committee and not behind it.
pub const READYZ_PATH: &str = "/readyz";

/// Errors reading the contract's files.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("invalid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// What a node does in the network. An unsharded network (genesis without `sharding`)
/// has exactly one committee, `shard` 0; a sharded network has a beacon committee and
/// shard slots `0..max_shards`.
///
/// In TOML: `kind = "beacon"`, `kind = "shard"` with `shard = N` (a slot), or `kind =
/// "shard"` with `shard = "any"`: a validator registered for any shard, which serves
/// whichever shard the beacon places it in and follows it when the beacon moves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RoleSpec", into = "RoleSpec")]
pub enum Role {
    /// Member of the beacon committee (system transactions; sharded networks only).
    Beacon,
    /// Validator of one shard slot.
    Shard { shard: u16 },
    /// Validator of whichever shard the beacon places it in (sharded public networks;
    /// registered with shard "any"). See docs/sharding.md, "Validators that follow the
    /// beacon's shuffle".
    AnyShard,
}

/// The written form of [`Role`]: `shard` is a slot number or the word `"any"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum RoleSpec {
    Beacon,
    Shard { shard: ShardSpec },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum ShardSpec {
    Slot(u16),
    Word(String),
}

impl TryFrom<RoleSpec> for Role {
    type Error = String;

    fn try_from(spec: RoleSpec) -> Result<Self, String> {
        match spec {
            RoleSpec::Beacon => Ok(Role::Beacon),
            RoleSpec::Shard {
                shard: ShardSpec::Slot(shard),
            } => Ok(Role::Shard { shard }),
            RoleSpec::Shard {
                shard: ShardSpec::Word(word),
            } if word == "any" => Ok(Role::AnyShard),
            RoleSpec::Shard {
                shard: ShardSpec::Word(word),
            } => Err(format!(
                "role shard = {word:?}: write a shard slot number (shard = 2) or shard = \"any\" \
                 for a validator the beacon places (registered with --shard any)"
            )),
        }
    }
}

impl From<Role> for RoleSpec {
    fn from(role: Role) -> Self {
        match role {
            Role::Beacon => RoleSpec::Beacon,
            Role::Shard { shard } => RoleSpec::Shard {
                shard: ShardSpec::Slot(shard),
            },
            Role::AnyShard => RoleSpec::Shard {
                shard: ShardSpec::Word("any".into()),
            },
        }
    }
}

/// A peer to dial at start-up: its node (p2p) public key and an address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapPeer {
    /// Hex-encoded ed25519 node public key (32 bytes).
    pub public_key: String,
    /// `host:port`; a DNS name in Kubernetes, `127.0.0.x:port` locally.
    pub address: String,
}

/// Mempool limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MempoolConfig {
    /// Most transactions held; further submissions get [`error_codes::MEMPOOL_FULL`].
    #[serde(default = "default_mempool_max_txs")]
    pub max_txs: usize,
}

fn default_mempool_max_txs() -> usize {
    50_000
}

impl Default for MempoolConfig {
    fn default() -> Self {
        Self {
            max_txs: default_mempool_max_txs(),
        }
    }
}

/// The node's configuration file (`trellis-node run --config node.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Network id; must equal the genesis file's `chain_id`.
    pub chain_id: String,
    pub role: Role,
    /// File written by `trellis-node keygen` (node key and admin key).
    pub key_file: PathBuf,
    /// Directory for all durable state; a restarted node resumes from it.
    pub data_dir: PathBuf,
    /// Genesis file written by `trellis-node genesis`.
    pub genesis_file: PathBuf,
    /// Authenticated p2p listener.
    pub p2p_listen: SocketAddr,
    /// Address announced to peers (defaults to `p2p_listen`).
    #[serde(default)]
    pub p2p_external: Option<SocketAddr>,
    /// JSON-RPC, metrics and probes.
    pub rpc_listen: SocketAddr,
    #[serde(default)]
    pub bootstrap_peers: Vec<BootstrapPeer>,
    #[serde(default)]
    pub mempool: MempoolConfig,
}

impl NodeConfig {
    /// Parses and checks a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Self, ContractError> {
        let config: Self = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    /// Renders the configuration as TOML.
    pub fn to_toml(&self) -> Result<String, ContractError> {
        toml::to_string(self).map_err(|e| ContractError::Invalid(e.to_string()))
    }

    fn check(&self) -> Result<(), ContractError> {
        if self.chain_id.is_empty() {
            return Err(ContractError::Invalid("chain_id is empty".into()));
        }
        if self.mempool.max_txs == 0 {
            return Err(ContractError::Invalid("mempool.max_txs is 0".into()));
        }
        for peer in &self.bootstrap_peers {
            if !is_hex_of_len(&peer.public_key, 32) {
                return Err(ContractError::Invalid(format!(
                    "bootstrap peer {} has no 32-byte hex public key",
                    peer.address
                )));
            }
        }
        Ok(())
    }
}

/// True when `s` is lower- or upper-case hex of exactly `bytes` bytes.
pub fn is_hex_of_len(s: &str, bytes: usize) -> bool {
    s.len() == bytes * 2 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

// ---------------------------------------------------------------------------------------
// Genesis
// ---------------------------------------------------------------------------------------

/// An organisation of the consortium.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisMember {
    /// Human name of the organisation (unique).
    pub name: String,
    /// Hex ed25519 key that signs governance transactions for this member.
    pub admin_key: String,
    /// Hex ed25519 key of the member's validator node (p2p identity and consensus signer).
    pub node_key: String,
    /// `host:port` where the member's node listens for p2p.
    pub p2p_address: String,
}

/// An initial balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisBalance {
    /// Hex ed25519 account public key.
    pub account: String,
    pub amount: u64,
}

/// The genesis file (JSON), identical on every node of a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    pub contract_version: u32,
    pub chain_id: String,
    /// Finalized blocks per epoch; governance changes apply at epoch boundaries. In a
    /// sharded network: beacon blocks per epoch.
    pub epoch_length: u64,
    pub members: Vec<GenesisMember>,
    pub balances: Vec<GenesisBalance>,
    /// Present only in sharded networks (see `docs/sharding.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharding: Option<shard::ShardingGenesis>,
}

impl Genesis {
    pub fn from_json(text: &str) -> Result<Self, ContractError> {
        let genesis: Self = serde_json::from_str(text)?;
        genesis.check()?;
        Ok(genesis)
    }

    pub fn to_json(&self) -> Result<String, ContractError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Structural checks; key validity is checked by the node.
    pub fn check(&self) -> Result<(), ContractError> {
        if self.contract_version != CONTRACT_VERSION {
            return Err(ContractError::Invalid(format!(
                "genesis contract_version {} is not {CONTRACT_VERSION}",
                self.contract_version
            )));
        }
        if self.chain_id.is_empty() {
            return Err(ContractError::Invalid("chain_id is empty".into()));
        }
        if self.epoch_length == 0 {
            return Err(ContractError::Invalid("epoch_length is 0".into()));
        }
        if self.members.is_empty() {
            return Err(ContractError::Invalid("no members".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut nodes = std::collections::BTreeSet::new();
        for m in &self.members {
            if !names.insert(m.name.as_str()) {
                return Err(ContractError::Invalid(format!("member {} twice", m.name)));
            }
            if !is_hex_of_len(&m.admin_key, 32) || !is_hex_of_len(&m.node_key, 32) {
                return Err(ContractError::Invalid(format!(
                    "member {} has a malformed key",
                    m.name
                )));
            }
            if !nodes.insert(m.node_key.to_ascii_lowercase()) {
                return Err(ContractError::Invalid(format!(
                    "node key of {} is used twice",
                    m.name
                )));
            }
        }
        let mut total: u64 = 0;
        for b in &self.balances {
            if !is_hex_of_len(&b.account, 32) {
                return Err(ContractError::Invalid(format!(
                    "malformed account {}",
                    b.account
                )));
            }
            total = total
                .checked_add(b.amount)
                .ok_or_else(|| ContractError::Invalid("total supply overflows u64".into()))?;
        }
        if let Some(sharding) = &self.sharding {
            sharding.check()?;
            for v in sharding.beacon.iter().chain(&sharding.validators) {
                if let Some(member) = &v.member
                    && !self.members.iter().any(|m| &m.name == member)
                {
                    return Err(ContractError::Invalid(format!(
                        "sharding: validator {} belongs to unknown member {member}",
                        v.node_key
                    )));
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// JSON-RPC
// ---------------------------------------------------------------------------------------

/// Method names (JSON-RPC 2.0, POST to [`RPC_PATH`]).
pub mod methods {
    /// params: [`super::SendTransactionParams`] → [`super::SendTransactionResult`]
    pub const SEND_TRANSACTION: &str = "trellis_sendTransaction";
    /// params: [`super::TransactionQuery`] → [`super::TransactionStatus`]
    pub const GET_TRANSACTION: &str = "trellis_getTransaction";
    /// params: [`super::AccountQuery`] → [`super::AccountInfo`]
    pub const GET_ACCOUNT: &str = "trellis_getAccount";
    /// params: [`super::BlockQuery`] → [`super::BlockInfo`]
    pub const GET_BLOCK: &str = "trellis_getBlock";
    /// params: none → [`super::NodeStatus`]
    pub const STATUS: &str = "trellis_status";
    /// params: [`super::SubmitGovernanceParams`] (a signed governance transaction) →
    /// [`super::SubmitGovernanceResult`]; every refusal is
    /// [`super::error_codes::BAD_GOVERNANCE`] with a message saying why.
    pub const SUBMIT_GOVERNANCE: &str = "trellis_submitGovernance";
    /// params: none → [`super::MembersInfo`] (members, validators, pending changes).
    pub const GET_MEMBERS: &str = "trellis_getMembers";
    /// params: [`super::TransactionQuery`] (hash of a governance transaction) →
    /// [`super::TransactionStatus`].
    pub const GET_GOVERNANCE: &str = "trellis_getGovernance";
    /// params: none → [`super::shard::ShardMapInfo`].
    pub const GET_SHARD_MAP: &str = "trellis_getShardMap";
    /// params: [`super::shard::SubmitSystemParams`] → [`super::shard::SubmitSystemResult`];
    /// refusals are [`super::error_codes::SYSTEM_REFUSED`] or
    /// [`super::error_codes::RESHARDING`] with a message saying why.
    pub const SUBMIT_SYSTEM: &str = "trellis_submitSystem";
    /// params: [`super::TransactionQuery`] (hash of a system transaction) →
    /// [`super::shard::SystemStatus`].
    pub const GET_SYSTEM: &str = "trellis_getSystem";
    /// params: [`super::shard::SystemSequenceQuery`] → [`super::shard::SystemSequence`].
    pub const GET_SYSTEM_SEQUENCE: &str = "trellis_getSystemSequence";
    /// Node-to-node (the relay): params [`super::BeaconBlocksQuery`] →
    /// [`super::BeaconBlocks`]; answered by beacon nodes.
    pub const GET_BEACON_BLOCKS: &str = "trellis_getBeaconBlocks";
}

/// Stable JSON-RPC error codes. -32xxx are JSON-RPC's own; -330xx are Trellis's.
pub mod error_codes {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL: i64 = -32603;
    /// The transaction bytes do not decode (malformed, truncated, oversized).
    pub const MALFORMED_TX: i64 = -33001;
    /// Signed for another network.
    pub const WRONG_CHAIN: i64 = -33002;
    pub const BAD_SIGNATURE: i64 = -33003;
    /// Nonce already used (replay) or too far ahead.
    pub const BAD_NONCE: i64 = -33004;
    /// Balance cannot cover amount + fee.
    pub const INSUFFICIENT_FUNDS: i64 = -33005;
    /// Mempool at its bound: retry later (backpressure).
    pub const MEMPOOL_FULL: i64 = -33006;
    pub const ALREADY_KNOWN: i64 = -33007;
    /// Governance transaction not acceptable (wrong kind, unknown member, threshold).
    pub const BAD_GOVERNANCE: i64 = -33008;
    pub const NOT_FOUND: i64 = -33009;
    /// Sharded networks: the transaction (or account read) belongs to another shard and
    /// could not be routed there (the message says which shard and why).
    pub const WRONG_SHARD: i64 = -33010;
    /// System transaction not acceptable (signer, sequence, shard count, validators).
    pub const SYSTEM_REFUSED: i64 = -33011;
    /// A shard count change is pending or its table handoff unfinished: retry later.
    /// Also an account read of a table its new owning shard has not imported yet ("table
    /// T is being handed off to shard S; retry shortly"): never a stale or zero balance.
    pub const RESHARDING: i64 = -33012;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonRpcRequest {
    pub jsonrpc: String,
    pub id: serde_json::Value,
    pub method: String,
    #[serde(default)]
    pub params: serde_json::Value,
}

impl JsonRpcRequest {
    pub fn new(id: u64, method: &str, params: impl Serialize) -> Result<Self, ContractError> {
        Ok(Self {
            jsonrpc: "2.0".into(),
            id: id.into(),
            method: method.into(),
            params: serde_json::to_value(params)?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonRpcResponse {
    pub jsonrpc: String,
    pub id: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

impl JsonRpcResponse {
    pub fn ok(id: serde_json::Value, result: serde_json::Value) -> Self {
        Self {
            jsonrpc: "2.0".into(),
            id,
            result: Some(result),
            error: None,
        }
    }

    pub fn err(id: serde_json::Value, code: i64, message: impl Into<String>) -> Self {
        Self {
            jsonrpc: "2.0".into(),
            id,
            result: None,
            error: Some(RpcError {
                code,
                message: message.into(),
            }),
        }
    }
}

/// A transaction in its binary encoding, hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendTransactionParams {
    pub tx: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendTransactionResult {
    /// Hex SHA-256 of the encoded transaction.
    pub hash: String,
    /// Sharded networks: the shard that admitted it (after forwarding, if needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionQuery {
    pub hash: String,
}

/// Where a transaction is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TxState {
    /// In this node's mempool.
    Pending,
    /// In a finalized block.
    Committed,
    /// Unknown to this node.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionStatus {
    pub hash: String,
    pub state: TxState,
    /// Finalized height, when committed.
    #[serde(default)]
    pub height: Option<u64>,
    /// Whether execution succeeded, when committed.
    #[serde(default)]
    pub success: Option<bool>,
    /// Why execution failed, when it did.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountQuery {
    /// Hex ed25519 public key.
    pub account: String,
}

/// An account with a Merkle proof against its table's root at `height`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountInfo {
    pub account: String,
    pub balance: u64,
    /// Next nonce the account must use.
    pub nonce: u64,
    /// Table (0..256) holding the account.
    pub table: u16,
    /// Hex JMT root of that table at `height`.
    pub table_root: String,
    /// Finalized height of the state read.
    pub height: u64,
    /// Hex of the JMT sparse Merkle proof (borsh encoding of `jmt::proof::SparseMerkleProof`).
    pub proof: String,
    /// Sharded networks: the shard that answered (the one owning `table` at `height`;
    /// `table_root` is that shard's root, as its block headers carry it). A node of
    /// another shard or of the beacon forwards the read there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockQuery {
    pub height: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    pub height: u64,
    /// Hex digest of the block.
    pub digest: String,
    pub parent: String,
    pub epoch: u64,
    pub view: u64,
    /// Hex root over the 256 table roots after executing this block.
    pub state_root: String,
    /// Hex hashes of the block's transactions, in order.
    pub transactions: Vec<String>,
    /// Hex hashes of the block's governance transactions, in order.
    #[serde(default)]
    pub governance: Vec<String>,
    /// Hex node keys of the validators whose signatures the block's stored finalization
    /// certificate carries; absent when the block was finalized through a descendant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signers: Option<Vec<String>>,
}

/// `trellis_getBeaconBlocks` params.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeaconBlocksQuery {
    /// First beacon height wanted (≥ 1).
    pub from: u64,
    /// Most blocks wanted (1..=64); the answer may hold more to reach a certified block.
    #[serde(default = "default_beacon_blocks")]
    pub limit: u32,
}

fn default_beacon_blocks() -> u32 {
    64
}

/// `trellis_getBeaconBlocks`: consecutive finalized beacon blocks from `from`, ending at a
/// block finalized directly, with that block's finalization certificate. The caller
/// checks the certificate against the beacon validators and the parent links down to
/// the block it already has; nothing here is taken on trust.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeaconBlocks {
    /// Hex encodings of the blocks, in height order (empty when none is certified yet).
    pub blocks: Vec<String>,
    /// Hex finalization certificate of the last block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The answering node's finalized beacon height.
    pub finalized_height: u64,
}

/// `trellis_status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub contract_version: u32,
    pub chain_id: String,
    /// The committee this node serves. A `shard = "any"` validator reports the shard the
    /// beacon placed it in (`{"kind": "shard", "shard": N}`), or `"any"` while it waits
    /// to be placed (`waiting` says so).
    pub role: Role,
    /// Hex node public key.
    pub node_key: String,
    pub epoch: u64,
    pub finalized_height: u64,
    /// Connected peers.
    pub peers: usize,
    /// True while the node knows of finalized blocks it has not executed yet.
    pub syncing: bool,
    pub mempool_depth: usize,
    /// Hex node keys of the current validator set.
    pub validators: Vec<String>,
    /// Shard nodes: why this node's consensus waits, when it does — `"waiting for shard
    /// N to be created by the beacon"` (a slot above the shard count), a table handoff in
    /// progress, or `"drained: ..."`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Shard nodes: true once a scale-in moved this slot's tables away and the beacon
    /// gives it no committee; the operator may delete the slot's nodes.
    #[serde(default)]
    pub drained: bool,
    /// Sharded networks: the tables the node's shard owns at its finalized height
    /// (absent on beacon and unsharded nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<u8>>,
}

/// `trellis_submitGovernance` params: the hex binary encoding of a governance
/// transaction (`trellis_node_types::GovernanceTx::to_hex`).
pub type SubmitGovernanceParams = SendTransactionParams;

/// `trellis_submitGovernance` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitGovernanceResult {
    /// Hex SHA-256 of the encoded governance transaction (query it with
    /// `trellis_getGovernance`).
    pub hash: String,
    /// Hex SHA-256 of the proposal (what the approvals signed).
    pub proposal: String,
    /// The proposal's governance sequence number.
    pub sequence: u64,
}

/// A member of the consortium.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub name: String,
    /// Hex ed25519 admin (governance) key.
    pub admin_key: String,
    /// Hex ed25519 node key (p2p identity and validator).
    pub node_key: String,
    pub p2p_address: String,
}

/// What a pending change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Admit,
    Remove,
}

/// A finalized governance change waiting for its epoch boundary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChange {
    pub kind: ChangeKind,
    pub member: MemberInfo,
    /// Height of the block that carried the governance transaction.
    pub height: u64,
    /// Hex id of the proposal.
    pub proposal: String,
    /// First epoch with the change applied.
    pub effective_epoch: u64,
}

/// `trellis_getMembers`: the member registry at the node's finalized height.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersInfo {
    pub chain_id: String,
    /// Finalized height the registry was read at.
    pub height: u64,
    /// Current consensus epoch.
    pub epoch: u64,
    pub epoch_length: u64,
    /// Last height of the current epoch: pending changes apply once it is finalized.
    pub epoch_end_height: u64,
    /// Sequence number the next governance proposal must carry.
    pub sequence: u64,
    /// Approvals a proposal needs now (more than 2/3 of `members`).
    pub threshold: usize,
    /// Current members; their admin keys sign governance, their node keys validate this
    /// epoch.
    pub members: Vec<MemberInfo>,
    /// Hex node keys of this epoch's validators.
    pub validators: Vec<String>,
    /// Hex node keys allowed as p2p peers: the members plus admitted members waiting for
    /// the next epoch.
    pub peers: Vec<String>,
    pub pending: Vec<PendingChange>,
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// Prometheus metric names (all labelled `network` and `shard`).
pub mod metrics {
    pub const FINALIZED_HEIGHT: &str = "trellis_finalized_height";
    pub const TXS_COMMITTED_TOTAL: &str = "trellis_txs_committed_total";
    pub const MEMPOOL_DEPTH: &str = "trellis_mempool_depth";
    pub const RECEIPTS_PENDING: &str = "trellis_receipts_pending";
    pub const EPOCH: &str = "trellis_epoch";
    pub const PEERS: &str = "trellis_peers";
    /// Histogram (seconds) from a transaction's admission to its finalization.
    pub const FINALITY_LATENCY_SECONDS: &str = "trellis_finality_latency_seconds";
    /// Sharded networks: the shard count of the beacon state the node holds.
    pub const SHARD_COUNT: &str = "trellis_shard_count";
    /// Sharded networks, per owned table (label `table`): its successfully executed
    /// transactions (the autoscaler's load input).
    pub const TABLE_TXS_TOTAL: &str = "trellis_table_txs_total";
    /// Gauge, labels network, shard, table: transactions waiting in the mempool per
    /// table of their sender (sharded networks, owned tables).
    pub const TABLE_MEMPOOL_DEPTH: &str = "trellis_table_mempool_depth";
    pub const LABEL_NETWORK: &str = "network";
    /// The shard number, or `beacon` on beacon nodes.
    pub const LABEL_SHARD: &str = "shard";
    pub const LABEL_TABLE: &str = "table";
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn config_text() -> String {
        format!(
            r#"
chain_id = "dev"
key_file = "/keys/node.json"
data_dir = "/data"
genesis_file = "/genesis.json"
p2p_listen = "127.0.0.2:9000"
rpc_listen = "127.0.0.2:8545"

[role]
kind = "shard"
shard = 0

[[bootstrap_peers]]
public_key = "{KEY}"
address = "127.0.0.3:9000"
"#
        )
    }

    #[test]
    fn config_round_trips_through_toml() {
        let config = NodeConfig::from_toml(&config_text()).unwrap();
        assert_eq!(config.role, Role::Shard { shard: 0 });
        assert_eq!(config.mempool.max_txs, 50_000);
        let any = config_text().replace("shard = 0", "shard = \"any\"");
        let any = NodeConfig::from_toml(&any).unwrap();
        assert_eq!(any.role, Role::AnyShard);
        assert_eq!(NodeConfig::from_toml(&any.to_toml().unwrap()).unwrap(), any);
        assert_eq!(config.bootstrap_peers.len(), 1);
        let again = NodeConfig::from_toml(&config.to_toml().unwrap()).unwrap();
        assert_eq!(config, again);
    }

    #[test]
    fn a_shard_role_is_a_slot_or_any() {
        let role = |body: &str| {
            NodeConfig::from_toml(&config_text().replace("shard = 0", body)).map(|c| c.role)
        };
        assert_eq!(role("shard = 3").unwrap(), Role::Shard { shard: 3 });
        assert_eq!(role("shard = \"any\"").unwrap(), Role::AnyShard);
        let message = role("shard = \"every\"").unwrap_err().to_string();
        assert!(message.contains("shard = \"any\""), "{message}");
        assert!(role("shard = -1").is_err());
        assert!(role("shard = 1\nextra = 2").is_err());
        let json = serde_json::to_value(Role::AnyShard).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "shard", "shard": "any"}));
        let json = serde_json::to_value(Role::Shard { shard: 2 }).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "shard", "shard": 2}));
        assert_eq!(
            serde_json::to_value(Role::Beacon).unwrap(),
            serde_json::json!({"kind": "beacon"})
        );
    }

    #[test]
    fn config_rejects_unknown_fields_and_bad_keys() {
        let unknown =
            format!("{}\nsurprise = 1\n", config_text()).replace("[role]", "x = 1\n[role]");
        assert!(NodeConfig::from_toml(&unknown).is_err());
        let bad_key = config_text().replace(KEY, "zz");
        assert!(matches!(
            NodeConfig::from_toml(&bad_key),
            Err(ContractError::Invalid(_))
        ));
    }

    fn genesis() -> Genesis {
        Genesis {
            contract_version: CONTRACT_VERSION,
            chain_id: "dev".into(),
            epoch_length: 100,
            members: vec![GenesisMember {
                name: "a".into(),
                admin_key: KEY.into(),
                node_key: KEY.into(),
                p2p_address: "127.0.0.2:9000".into(),
            }],
            balances: vec![GenesisBalance {
                account: KEY.into(),
                amount: u64::MAX,
            }],
            sharding: None,
        }
    }

    #[test]
    fn unsharded_genesis_json_is_unchanged() {
        // An unsharded genesis writes no sharding key: files stay as they were.
        assert!(!genesis().to_json().unwrap().contains("sharding"));
    }

    #[test]
    fn rpc_envelopes_serialize_per_spec() {
        let req = JsonRpcRequest::new(7, methods::STATUS, ()).unwrap();
        let text = serde_json::to_string(&req).unwrap();
        assert!(text.contains("\"jsonrpc\":\"2.0\""));
        let err = JsonRpcResponse::err(7.into(), error_codes::MEMPOOL_FULL, "full");
        let v = serde_json::to_value(&err).unwrap();
        assert_eq!(v["error"]["code"], -33006);
        assert!(v.get("result").is_none());
        assert_eq!(
            serde_json::to_value(TxState::Committed).unwrap(),
            serde_json::json!("committed")
        );
    }
}
