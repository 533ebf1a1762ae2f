//! Ledger state of a Trellis shard.
//!
//! - Storage is a [`Kv`] (redb in production) written only in atomic batches, one per
//!   finalized block.
//! - State is split into 256 tables (`table(account) = H(account) mod 256`); each table is
//!   its own Jellyfish Merkle tree with its own dense version counter, so any table can be
//!   proven and moved to another shard on its own. Everything that must move with a table
//!   (accounts, anchors, its fee pool and supply counters, its outbox of cross-shard
//!   receipts and its inbox counters) is a leaf of that table's tree; see [`tables`].
//! - A ledger **owns** a set of tables ([`TableSet`]; all 256 for an unsharded chain). It
//!   executes only transactions whose sender lives in an owned table. A transfer to a
//!   table it does not own debits the sender and appends a [`CrossReceipt`] to the source
//!   table's outbox; the ledger owning the destination credits it (exactly once, in `seq`
//!   order per table pair) once the caller has verified its proof ([`verify_receipt`]).
//! - [`Ledger::apply_block`] is deterministic: the same finalized sequence (and owned
//!   set) gives the same table roots on every node. Applying a height that is already
//!   applied is a no-op, so a block redelivered after a crash is harmless.
//! - **Conservation**: over all 256 tables (whichever ledgers own them),
//!   `Σ balances + Σ fees + Σ sent − Σ credited` equals the genesis supply at every
//!   height; `Σ sent − Σ credited` is the value in flight between shards. Each ledger
//!   reports its owned tables' terms with [`Ledger::supply_parts`].
//! - A table's state at any applied height can be exported in chunks
//!   ([`Ledger::export_table`]) and imported by another ledger, which checks the rebuilt
//!   root against a certified one before committing ([`Ledger::import_table`]).

mod kv;
mod outbox;
mod receipts;
mod snapshot;
pub mod tables;

pub use kv::{Entry, Kv, KvError, MemKv, RedbKv, Space, WriteBatch};
pub use outbox::{
    MAX_OUTBOX_PAGE, MAX_OUTBOX_PAGE_SIZE, MAX_PROOF_SIZE, OutboxPage, ProofError, ProvenReceipt,
    verify_receipt,
};
pub use snapshot::{
    CheckedTable, MAX_LEAF_VALUE, MAX_SNAPSHOT_CHUNK_SIZE, MAX_SNAPSHOT_LEAF_BYTES,
    MAX_SNAPSHOT_LEAVES, SnapshotError, TableSnapshot, check_table,
};
pub use tables::{TableSet, TableStats};

use jmt::storage::{LeafNode, NibblePath, Node, NodeKey, TreeReader};
use jmt::{KeyHash, OwnedValue, RootHash, Sha256Jmt, Version};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use tables::{
    Counters, account_key, anchor_key, decode_u64, encode_u64, inbox_counters_key,
    outbox_counters_key, outbox_key, stats_key,
};
use trellis_node_types::{CrossReceipt, PublicKey, TABLES, Tx, TxKind, table_of};

/// A failure of the ledger itself (storage or a corrupt tree), never of a transaction.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("merkle tree: {0}")]
    Tree(String),
    #[error("corrupt state: {0}")]
    Corrupt(String),
    #[error("genesis: {0}")]
    Genesis(String),
    #[error("block at height {got} does not follow height {have}")]
    OutOfOrder { have: u64, got: u64 },
    #[error("ledger has no genesis yet")]
    NoGenesis,
    #[error(
        "this data directory was written by an older ledger format ({0}); remove it and \
         let the node re-sync from genesis"
    )]
    OldFormat(&'static str),
    #[error("{0}")]
    Unavailable(String),
}

fn tree_err(e: anyhow::Error) -> StateError {
    StateError::Tree(e.to_string())
}

/// An account's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub balance: u64,
    /// The nonce the account's next transaction must carry.
    pub nonce: u64,
}

impl Account {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.balance.to_be_bytes());
        out.extend_from_slice(&self.nonce.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        let (balance, nonce) = bytes
            .split_at_checked(8)
            .filter(|(_, n)| n.len() == 8)
            .ok_or_else(|| StateError::Corrupt("account value".into()))?;
        Ok(Self {
            balance: u64::from_be_bytes(balance.try_into().unwrap_or_default()),
            nonce: u64::from_be_bytes(nonce.try_into().unwrap_or_default()),
        })
    }
}

/// Outcome of one transaction in a finalized block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub height: u64,
    pub success: bool,
    /// Why it failed (empty on success).
    pub error: String,
}

impl Receipt {
    /// The earlier layout's per-transaction row (see [`receipts`]); written by tests only.
    #[cfg(test)]
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.error.len());
        out.extend_from_slice(&self.height.to_be_bytes());
        out.push(u8::from(self.success));
        out.extend_from_slice(self.error.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        if bytes.len() < 9 {
            return Err(StateError::Corrupt("receipt".into()));
        }
        let mut height = [0u8; 8];
        height.copy_from_slice(&bytes[..8]);
        Ok(Self {
            height: u64::from_be_bytes(height),
            success: bytes[8] == 1,
            error: String::from_utf8_lossy(&bytes[9..]).into_owned(),
        })
    }
}

/// Why a transaction did not execute. Failed transactions change nothing (no fee, no
/// nonce): a later block may still include a valid one with the same nonce.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("nonce {got} is not the account's next nonce {expected}")]
    BadNonce { expected: u64, got: u64 },
    #[error("balance {balance} cannot cover {needed}")]
    InsufficientFunds { balance: u64, needed: u64 },
    #[error("amount plus fee overflows")]
    Overflow,
    /// The sender's table belongs to another shard: the transaction must go there.
    #[error("sender's table {table} is not owned by this shard")]
    WrongShard { table: u8 },
}

const META_HEIGHT: &[u8] = b"height";
const META_SUPPLY: &[u8] = b"supply";
/// Ledger format; absent in data directories of the unsharded format 1.
const META_FORMAT: &[u8] = b"format";
/// 3: tree rows keyed version first, each leaf holding its value (see `TableReader`).
const FORMAT: u64 = 3;
/// The owned [`TableSet`] bitmap.
const META_OWNED: &[u8] = b"owned";
/// Present from a table import until the next block: that block first credits the
/// receipts between tables this ledger now owns both ends of (see
/// [`Ledger::apply_block_with_credits`]).
const META_LOCAL_DUE: &[u8] = b"local-receipts-due";

fn meta_version(table: u8) -> Vec<u8> {
    [b"tv".as_slice(), &[table]].concat()
}
fn meta_root(table: u8) -> Vec<u8> {
    [b"tr".as_slice(), &[table]].concat()
}
fn meta_state_root(height: u64) -> Vec<u8> {
    [b"sr".as_slice(), &height.to_be_bytes()].concat()
}
/// A table's version and root from `height` on (written only at heights where it changed).
fn meta_table_at(table: u8, height: u64) -> Vec<u8> {
    [b"th".as_slice(), &[table], &height.to_be_bytes()].concat()
}

fn read_u64(kv: &dyn Kv, key: &[u8]) -> Result<Option<u64>, StateError> {
    match kv.get(Space::Meta, key)? {
        None => Ok(None),
        Some(bytes) => {
            let arr: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| StateError::Corrupt(format!("meta {key:?}")))?;
            Ok(Some(u64::from_be_bytes(arr)))
        }
    }
}

/// Reads one table's tree out of the store.
///
/// A tree node's row: `version ‖ table ‖ nibble path` (the version first, big-endian) →
/// the node, and for a leaf its value after it. Versions first put the rows a block
/// writes next to each other (tables move through their versions together under load)
/// instead of each on a page of its own; values inside their leaves save a row per
/// changed key and a read. Keyed by table, then key hash and version, every changed
/// account's value dirtied a page of its own: ~10× the bytes handed to the store and a
/// quarter of a validator's execution time (docs/node-performance.md).
struct TableReader<'a> {
    kv: &'a dyn Kv,
    table: u8,
}

impl TableReader<'_> {
    fn node_key(&self, key: &NodeKey) -> anyhow::Result<Vec<u8>> {
        let mut out = key.version().to_be_bytes().to_vec();
        out.push(self.table);
        out.extend(borsh::to_vec(key.nibble_path())?);
        Ok(out)
    }

    /// A node's stored row, if any (see [`split_row`]).
    fn node_row(&self, key: &NodeKey) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.kv.get(Space::Nodes, &self.node_key(key)?)?)
    }

    /// The value of `key` in the tree `version`, if any: a walk from the root along the
    /// key's nibbles to its leaf, which holds the value.
    fn leaf_value(&self, version: Version, key: KeyHash) -> anyhow::Result<Option<Vec<u8>>> {
        let mut at = NodeKey::new(version, NibblePath::from_iter(std::iter::empty()));
        for depth in 0..=64 {
            let Some(row) = self.node_row(&at)? else {
                return Ok(None);
            };
            match split_row(&row)? {
                (Node::Null, _) => return Ok(None),
                (Node::Leaf(leaf), value) => {
                    return Ok((leaf.key_hash() == key).then(|| value.to_vec()));
                }
                (Node::Internal(internal), _) => {
                    let Some(byte) = key.0.get(depth / 2) else {
                        break;
                    };
                    let want = if depth % 2 == 0 {
                        byte >> 4
                    } else {
                        byte & 0x0f
                    };
                    let Some(child) = internal.child(want.into()) else {
                        return Ok(None);
                    };
                    let path = at
                        .nibble_path()
                        .nibbles()
                        .chain(std::iter::once(want.into()))
                        .collect();
                    at = NodeKey::new(child.version, path);
                }
            }
        }
        anyhow::bail!("tree deeper than a key at {at:?}")
    }
}

/// A tree row's node and what follows it: a leaf's value (nothing after other nodes).
fn split_row(row: &[u8]) -> anyhow::Result<(Node, &[u8])> {
    let mut rest = row;
    let node = <Node as borsh::BorshDeserialize>::deserialize(&mut rest)?;
    Ok((node, rest))
}

impl TreeReader for TableReader<'_> {
    fn get_node_option(&self, node_key: &NodeKey) -> anyhow::Result<Option<Node>> {
        match self.node_row(node_key)? {
            None => Ok(None),
            Some(row) => Ok(Some(split_row(&row)?.0)),
        }
    }

    fn get_value_option(
        &self,
        max_version: Version,
        key_hash: KeyHash,
    ) -> anyhow::Result<Option<OwnedValue>> {
        self.leaf_value(max_version, key_hash)
    }

    fn get_rightmost_leaf(&self) -> anyhow::Result<Option<(NodeKey, LeafNode)>> {
        anyhow::bail!("tree restore is not supported")
    }
}

/// An account with a proof against its table root.
#[derive(Clone, Debug)]
pub struct ProvenAccount {
    pub account: Account,
    pub table: u8,
    pub table_root: [u8; 32],
    /// borsh encoding of `jmt::proof::SparseMerkleProof<sha2::Sha256>`.
    pub proof: Vec<u8>,
}

/// Checks a [`ProvenAccount`] for `account` (light-client side).
pub fn verify_account_proof(account: &PublicKey, proven: &ProvenAccount) -> bool {
    let Ok(proof) = borsh::from_slice::<jmt::proof::SparseMerkleProof<sha2::Sha256>>(&proven.proof)
    else {
        return false;
    };
    let root = RootHash(proven.table_root);
    let key = account_key(account);
    if proven.account == Account::default() {
        // A never-touched account: a non-existence proof (or an explicit zero entry).
        proof.verify_nonexistence(root, key).is_ok()
            || proof
                .verify_existence(root, key, proven.account.encode())
                .is_ok()
    } else {
        proof
            .verify_existence(root, key, proven.account.encode())
            .is_ok()
    }
}

/// What crediting one cross-shard receipt did. Anything but `Credited` changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreditOutcome {
    Credited,
    /// Already credited: the table expects `expected` from that source next.
    Duplicate {
        expected: u64,
    },
    /// A receipt before this one is missing: the table expects `expected` first.
    Gap {
        expected: u64,
    },
    /// The destination table is not owned by this ledger.
    NotOwned {
        table: u8,
    },
    /// The receipt cannot be credited (inconsistent tables, amount overflow).
    Refused(String),
}

impl CreditOutcome {
    pub fn is_credited(&self) -> bool {
        *self == Self::Credited
    }
}

impl std::fmt::Display for CreditOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Credited => write!(f, "credited"),
            Self::Duplicate { expected } => {
                write!(f, "already credited (next expected seq is {expected})")
            }
            Self::Gap { expected } => write!(f, "out of order (next expected seq is {expected})"),
            Self::NotOwned { table } => write!(f, "destination table {table} is not owned here"),
            Self::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

/// What applying one block did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockOutcome {
    /// One per transaction, in block order.
    pub receipts: Vec<Receipt>,
    /// Cross-shard receipts appended to outboxes by this block, in order.
    pub sent: Vec<CrossReceipt>,
    /// One per credit, in block order.
    pub credits: Vec<CreditOutcome>,
}

/// Most leaf values [`Ledger`] keeps in memory.
const VALUE_CACHE: usize = 262_144;

/// Committed leaf values by (table, key hash), `None` for absent ones.
type ValueCache = HashMap<(u8, [u8; 32]), Option<Vec<u8>>>;

/// Changes of the block being executed, not yet committed.
#[derive(Default)]
struct Scratch {
    overlay: BTreeMap<(u8, KeyHash), Option<Vec<u8>>>,
    /// Table stats changed by the block (written into `overlay` before commit).
    stats: BTreeMap<u8, TableStats>,
    /// Outbox and inbox counters changed by the block, by table (likewise).
    outbox: BTreeMap<u8, Counters>,
    inbox: BTreeMap<u8, Counters>,
}

/// The ledger of one shard (or of an unsharded chain, which owns every table).
pub struct Ledger<K: Kv> {
    kv: K,
    /// Leaf values as committed at the current table versions, so that admission and
    /// execution do not open a store transaction per account. Filled on reads, updated
    /// only after a block's commit succeeded, bounded (cleared when full).
    values: Mutex<ValueCache>,
    /// Finalized height applied, `None` before genesis.
    height: Option<u64>,
    versions: Vec<u64>,
    roots: Vec<[u8; 32]>,
    /// Committed stats leaf of every table (as last held here for tables not owned).
    stats: Vec<TableStats>,
    owned: TableSet,
    supply: u64,
    /// Receipts of the blocks not in the hash index yet (see [`receipts`]).
    receipts: receipts::Receipts,
    /// How long the last block's store commit took (write + fsync): the node's stage
    /// timings report it next to execution (docs/node-performance.md).
    last_commit: std::time::Duration,
}

impl<K: Kv> Ledger<K> {
    /// Opens the ledger stored in `kv` (empty, or as left by a previous run).
    pub fn open(kv: K) -> Result<Self, StateError> {
        let height = read_u64(&kv, META_HEIGHT)?;
        let mut versions = vec![0; TABLES];
        let mut roots = vec![[0u8; 32]; TABLES];
        let mut stats = vec![TableStats::default(); TABLES];
        let mut owned = TableSet::all();
        if height.is_some() {
            match read_u64(&kv, META_FORMAT)? {
                Some(FORMAT) => {}
                None => {
                    return Err(StateError::OldFormat(
                        "format 1: fee pool outside the table trees",
                    ));
                }
                Some(2) => {
                    return Err(StateError::OldFormat(
                        "format 2: leaf values keyed by account first",
                    ));
                }
                Some(other) => {
                    return Err(StateError::Corrupt(format!(
                        "ledger format {other} is newer than this node's {FORMAT}"
                    )));
                }
            }
            let bitmap = kv
                .get(Space::Meta, META_OWNED)?
                .ok_or_else(|| StateError::Corrupt("owned tables".into()))?;
            owned = TableSet::from_bytes(
                bitmap
                    .as_slice()
                    .try_into()
                    .map_err(|_| StateError::Corrupt("owned tables".into()))?,
            );
            for t in 0..TABLES {
                let table = t as u8;
                versions[t] = read_u64(&kv, &meta_version(table))?
                    .ok_or_else(|| StateError::Corrupt(format!("version of table {t}")))?;
                let root = kv
                    .get(Space::Meta, &meta_root(table))?
                    .ok_or_else(|| StateError::Corrupt(format!("root of table {t}")))?;
                roots[t] = root
                    .as_slice()
                    .try_into()
                    .map_err(|_| StateError::Corrupt(format!("root of table {t}")))?;
                let reader = TableReader { kv: &kv, table };
                if let Some(bytes) = reader
                    .get_value_option(versions[t], stats_key())
                    .map_err(tree_err)?
                {
                    stats[t] = TableStats::decode(&bytes)?;
                }
            }
        }
        Ok(Self {
            supply: read_u64(&kv, META_SUPPLY)?.unwrap_or(0),
            receipts: receipts::Receipts::open(&kv, height)?,
            last_commit: std::time::Duration::ZERO,
            kv,
            values: Mutex::new(HashMap::new()),
            height,
            versions,
            roots,
            stats,
            owned,
        })
    }

    /// Writes the genesis state (height 0) of a ledger that owns every table. Does nothing
    /// if the ledger already has one with the same supply; refuses a different one.
    pub fn init_genesis(&mut self, balances: &[(PublicKey, u64)]) -> Result<(), StateError> {
        self.init_genesis_owned(balances, &TableSet::all())
    }

    /// Writes the genesis state of a shard owning `owned`. `balances` is the whole
    /// network's genesis (its sum is [`Self::supply`]); only the owned tables' accounts
    /// are written. A table's genesis root does not depend on who owns it. Once a genesis
    /// exists this only checks the supply: the owned set may have changed since, through
    /// [`Self::set_owned_tables`] and [`Self::import_table`].
    pub fn init_genesis_owned(
        &mut self,
        balances: &[(PublicKey, u64)],
        owned: &TableSet,
    ) -> Result<(), StateError> {
        let mut supply: u64 = 0;
        let mut per_account: BTreeMap<PublicKey, u64> = BTreeMap::new();
        for (account, amount) in balances {
            supply = supply
                .checked_add(*amount)
                .ok_or_else(|| StateError::Genesis("total supply overflows".into()))?;
            *per_account.entry(account.clone()).or_default() += amount;
        }
        if self.height.is_some() {
            if self.supply != supply {
                return Err(StateError::Genesis(
                    "stored state has a different genesis".into(),
                ));
            }
            return Ok(());
        }
        let mut changes: BTreeMap<u8, BTreeMap<KeyHash, Option<Vec<u8>>>> = BTreeMap::new();
        for t in 0..TABLES {
            changes.insert(t as u8, BTreeMap::new());
        }
        let mut stats = vec![TableStats::default(); TABLES];
        for (account, balance) in per_account {
            let table = table_of(&account);
            if !owned.contains(table) {
                continue;
            }
            // Bounded by the supply, which did not overflow.
            stats[table as usize].balances += balance;
            changes.entry(table).or_default().insert(
                account_key(&account),
                Some(Account { balance, nonce: 0 }.encode()),
            );
        }
        for table in owned.iter() {
            changes
                .entry(table)
                .or_default()
                .insert(stats_key(), Some(stats[table as usize].encode()));
        }
        let mut batch = WriteBatch::default();
        batch.put(
            Space::Meta,
            META_SUPPLY.to_vec(),
            supply.to_be_bytes().to_vec(),
        );
        batch.put(Space::Meta, META_FORMAT.to_vec(), encode_u64(FORMAT));
        batch.put(Space::Meta, META_OWNED.to_vec(), owned.to_bytes().to_vec());
        receipts::Receipts::genesis(&mut batch);
        // Every table starts at version 0 so that later versions are dense.
        self.cached_values().clear();
        self.write_tables(changes, &mut batch, 0)?;
        self.supply = supply;
        self.stats = stats;
        self.owned = *owned;
        self.finish(batch, 0)
    }

    /// Height of the last applied block (`None` before genesis).
    pub fn height(&self) -> Option<u64> {
        self.height
    }

    /// The underlying store, for callers that keep their own records next to the state
    /// (keys outside the ledger's own prefixes).
    pub fn kv(&self) -> &K {
        &self.kv
    }

    /// The tables this ledger executes transactions and credits for.
    pub fn owned_tables(&self) -> TableSet {
        self.owned
    }

    /// Replaces the owned set (at an epoch switch, from the beacon's table map), durably.
    /// Idempotent. A table gained this way keeps whatever state this ledger last held
    /// for it: a table that moves here must come through [`Self::import_table`].
    pub fn set_owned_tables(&mut self, owned: &TableSet) -> Result<(), StateError> {
        if self.height.is_none() {
            return Err(StateError::NoGenesis);
        }
        let mut batch = WriteBatch::default();
        batch.put(Space::Meta, META_OWNED.to_vec(), owned.to_bytes().to_vec());
        self.kv.commit(batch)?;
        self.owned = *owned;
        Ok(())
    }

    /// Sum of the owned tables' fee pools (the whole fee pool when unsharded).
    pub fn fee_pool(&self) -> u64 {
        self.owned
            .iter()
            .map(|t| self.stats[t as usize].fees)
            .fold(0u64, u64::saturating_add)
    }

    /// Sum of the network's genesis balances. Conserved: see [`Self::supply_parts`].
    pub fn supply(&self) -> u64 {
        self.supply
    }

    /// A table's committed stats: its supply terms and load (as last held here when the
    /// table is not owned).
    pub fn table_stats(&self, table: u8) -> TableStats {
        self.stats[table as usize]
    }

    /// The conservation terms of every owned table, in table order. Summed over the
    /// ledgers of all shards (whose owned sets partition the 256 tables),
    /// `Σ TableStats::net` equals [`Self::supply`] at every height.
    pub fn supply_parts(&self) -> Vec<(u8, TableStats)> {
        self.owned
            .iter()
            .map(|t| (t, self.stats[t as usize]))
            .collect()
    }

    pub fn table_root(&self, table: u8) -> [u8; 32] {
        self.roots[table as usize]
    }

    /// A table's tree version and root as they were after applying `height` (`None` for
    /// heights not applied yet).
    pub fn table_at(&self, table: u8, height: u64) -> Result<Option<(u64, [u8; 32])>, StateError> {
        if self.height.is_none_or(|h| height > h) {
            return Ok(None);
        }
        let found = self.kv.last_in(
            Space::Meta,
            &meta_table_at(table, 0),
            &meta_table_at(table, height),
        )?;
        let Some((_, value)) = found else {
            return Ok(None);
        };
        let (version, root) = value
            .split_at_checked(8)
            .filter(|(_, r)| r.len() == 32)
            .ok_or_else(|| StateError::Corrupt("table root history".into()))?;
        let root: [u8; 32] = root
            .try_into()
            .map_err(|_| StateError::Corrupt("table root history".into()))?;
        Ok(Some((decode_u64(version, "table root history")?, root)))
    }

    /// A table's root after applying `height`: what a header at that height carries.
    pub fn table_root_at(&self, table: u8, height: u64) -> Result<Option<[u8; 32]>, StateError> {
        Ok(self.table_at(table, height)?.map(|(_, root)| root))
    }

    /// Commitment to the whole state: SHA-256 over the 256 table roots in order.
    pub fn state_root(&self) -> [u8; 32] {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        for root in &self.roots {
            hasher.update(root);
        }
        hasher.finalize().into()
    }

    /// State root recorded after applying `height`.
    pub fn state_root_at(&self, height: u64) -> Result<Option<[u8; 32]>, StateError> {
        match self.kv.get(Space::Meta, &meta_state_root(height))? {
            None => Ok(None),
            Some(v) => Ok(Some(
                v.as_slice()
                    .try_into()
                    .map_err(|_| StateError::Corrupt("state root".into()))?,
            )),
        }
    }

    fn cached_values(&self) -> std::sync::MutexGuard<'_, ValueCache> {
        self.values.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_value(&self, table: u8, key: KeyHash) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(value) = self.cached_values().get(&(table, key.0)) {
            return Ok(value.clone());
        }
        let reader = TableReader {
            kv: &self.kv,
            table,
        };
        let value = reader
            .get_value_option(self.versions[table as usize], key)
            .map_err(tree_err)?;
        let mut cache = self.cached_values();
        if cache.len() >= VALUE_CACHE {
            cache.clear();
        }
        cache.insert((table, key.0), value.clone());
        Ok(value)
    }

    fn read_counters(&self, table: u8, key: KeyHash) -> Result<Counters, StateError> {
        match self.read_value(table, key)? {
            None => Ok(Counters::default()),
            Some(bytes) => Counters::decode(&bytes),
        }
    }

    /// The seq the next receipt from `source` to `dest` will get (committed state).
    pub fn outbox_next(&self, source: u8, dest: u8) -> Result<u64, StateError> {
        Ok(self.read_counters(source, outbox_counters_key())?.get(dest))
    }

    /// The seq `dest` expects to credit next from `source` (committed state).
    pub fn inbox_next(&self, dest: u8, source: u8) -> Result<u64, StateError> {
        Ok(self.read_counters(dest, inbox_counters_key())?.get(source))
    }

    /// An account's committed state (as last held here if its table is not owned).
    pub fn account(&self, account: &PublicKey) -> Result<Account, StateError> {
        match self.read_value(table_of(account), account_key(account))? {
            None => Ok(Account::default()),
            Some(bytes) => Account::decode(&bytes),
        }
    }

    /// An account with a Merkle proof against its table's current root.
    pub fn account_with_proof(&self, account: &PublicKey) -> Result<ProvenAccount, StateError> {
        let table = table_of(account);
        let reader = TableReader {
            kv: &self.kv,
            table,
        };
        let tree = Sha256Jmt::new(&reader);
        let (value, proof) = tree
            .get_with_proof(account_key(account), self.versions[table as usize])
            .map_err(tree_err)?;
        let state = match value {
            None => Account::default(),
            Some(bytes) => Account::decode(&bytes)?,
        };
        Ok(ProvenAccount {
            account: state,
            table,
            table_root: self.roots[table as usize],
            proof: borsh::to_vec(&proof).map_err(|e| StateError::Tree(e.to_string()))?,
        })
    }

    /// The hash `owner` anchored under `key`, if any.
    pub fn anchor(&self, owner: &PublicKey, key: &[u8]) -> Result<Option<[u8; 32]>, StateError> {
        match self.read_value(table_of(owner), anchor_key(owner, key))? {
            None => Ok(None),
            Some(v) => Ok(Some(
                v.as_slice()
                    .try_into()
                    .map_err(|_| StateError::Corrupt("anchor".into()))?,
            )),
        }
    }

    /// The receipt of a committed transaction.
    pub fn receipt(&self, tx_hash: &[u8]) -> Result<Option<Receipt>, StateError> {
        self.receipts.get(&self.kv, tx_hash)
    }

    /// Checks a transaction against committed state (mempool admission). `pending` is the
    /// number of the sender's transactions already queued ahead of this one. A sender in
    /// a table this ledger does not own is [`ExecError::WrongShard`].
    pub fn check_admission(&self, tx: &Tx, pending: u64) -> Result<(), ExecError> {
        let from = &tx.unsigned.from;
        let table = table_of(from);
        if !self.owned.contains(table) {
            return Err(ExecError::WrongShard { table });
        }
        let state = self.account(from).map_err(|_| ExecError::Overflow)?;
        let expected = state.nonce.saturating_add(pending);
        if tx.unsigned.nonce != expected {
            return Err(ExecError::BadNonce {
                expected,
                got: tx.unsigned.nonce,
            });
        }
        let needed = cost(tx)?;
        if state.balance < needed {
            return Err(ExecError::InsufficientFunds {
                balance: state.balance,
                needed,
            });
        }
        Ok(())
    }

    /// Executes a finalized block's transactions at `height` (the next height) and
    /// commits the result atomically. Returns one receipt per transaction. Re-applying an
    /// already applied height returns an empty list and changes nothing.
    pub fn apply_block(&mut self, height: u64, txs: &[Tx]) -> Result<Vec<Receipt>, StateError> {
        self.apply_block_with(height, txs, WriteBatch::default())
    }

    /// [`Self::apply_block`], committing `extra` writes (the block itself, its
    /// certificate) in the same atomic batch.
    pub fn apply_block_with(
        &mut self,
        height: u64,
        txs: &[Tx],
        extra: WriteBatch,
    ) -> Result<Vec<Receipt>, StateError> {
        Ok(self
            .apply_block_with_credits(height, txs, &[], extra)?
            .receipts)
    }

    /// Applies a block of a shard: first `credits` (cross-shard receipts owed to owned
    /// tables, whose proofs the caller has verified against certified source roots), then
    /// `txs`, committed atomically with `extra`. A credit is applied only when its `seq`
    /// is the destination table's next expected one from its source table, so each
    /// receipt is credited exactly once and in order. Re-applying an already applied
    /// height returns an empty outcome and changes nothing.
    ///
    /// The first block after a table import also credits, after `credits`, every receipt
    /// still uncredited between two tables this ledger now owns: a scale-in that merges a
    /// table with receipts in flight to (or from) a table of its new shard leaves them in
    /// the ledger's own outbox, which no other shard credits any more. Their outcomes
    /// follow `credits`' in [`BlockOutcome::credits`].
    pub fn apply_block_with_credits(
        &mut self,
        height: u64,
        txs: &[Tx],
        credits: &[CrossReceipt],
        extra: WriteBatch,
    ) -> Result<BlockOutcome, StateError> {
        let have = self.height.ok_or(StateError::NoGenesis)?;
        if height <= have {
            return Ok(BlockOutcome::default());
        }
        if height != have + 1 {
            return Err(StateError::OutOfOrder { have, got: height });
        }
        let mut scratch = Scratch::default();
        let mut outcome = BlockOutcome {
            receipts: Vec::with_capacity(txs.len()),
            sent: Vec::new(),
            credits: Vec::with_capacity(credits.len()),
        };
        let mut batch = extra;
        for credit in credits {
            outcome.credits.push(self.credit(credit, &mut scratch)?);
        }
        if self.kv.get(Space::Meta, META_LOCAL_DUE)?.is_some() {
            for receipt in self.local_receipts(&scratch)? {
                outcome.credits.push(self.credit(&receipt, &mut scratch)?);
            }
            batch.delete(Space::Meta, META_LOCAL_DUE.to_vec());
        }
        let mut hashes = Vec::with_capacity(txs.len());
        let mut failures = Vec::new();
        for tx in txs {
            let result = self.execute(tx, &mut scratch)?;
            let receipt = Receipt {
                height,
                success: result.is_ok(),
                error: result
                    .as_ref()
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
            };
            if let Ok(Some(sent)) = result {
                outcome.sent.push(sent);
            }
            if !receipt.success {
                failures.push((hashes.len() as u32, receipt.error.clone()));
            }
            hashes.push(tx.hash().0);
            outcome.receipts.push(receipt);
        }
        for (table, stats) in &scratch.stats {
            scratch
                .overlay
                .insert((*table, stats_key()), Some(stats.encode()));
        }
        for (table, counters) in &scratch.outbox {
            scratch
                .overlay
                .insert((*table, outbox_counters_key()), Some(counters.encode()));
        }
        for (table, counters) in &scratch.inbox {
            scratch
                .overlay
                .insert((*table, inbox_counters_key()), Some(counters.encode()));
        }
        let mut changes: BTreeMap<u8, BTreeMap<KeyHash, Option<Vec<u8>>>> = BTreeMap::new();
        for ((table, key), value) in &scratch.overlay {
            changes
                .entry(*table)
                .or_default()
                .insert(*key, value.clone());
        }
        self.write_tables(changes, &mut batch, height)?;
        let staged = self.receipts.stage(height, hashes, &failures, &mut batch);
        self.finish(batch, height)?;
        self.receipts.committed(staged);
        // The block is durable: its values are now the committed ones.
        for (table, stats) in scratch.stats {
            self.stats[table as usize] = stats;
        }
        let mut cache = self.cached_values();
        if cache.len() + scratch.overlay.len() > VALUE_CACHE {
            cache.clear();
        }
        for ((table, key), value) in scratch.overlay {
            cache.insert((table, key.0), value);
        }
        Ok(outcome)
    }

    fn scratch_value(
        &self,
        scratch: &Scratch,
        table: u8,
        key: KeyHash,
    ) -> Result<Option<Vec<u8>>, StateError> {
        match scratch.overlay.get(&(table, key)) {
            Some(v) => Ok(v.clone()),
            None => self.read_value(table, key),
        }
    }

    fn scratch_account(
        &self,
        scratch: &Scratch,
        account: &PublicKey,
    ) -> Result<Account, StateError> {
        match self.scratch_value(scratch, table_of(account), account_key(account))? {
            None => Ok(Account::default()),
            Some(b) => Account::decode(&b),
        }
    }

    /// A table's outbox (or inbox) counters as the block left them so far.
    fn scratch_counters(
        &self,
        changed: &BTreeMap<u8, Counters>,
        table: u8,
        key: KeyHash,
    ) -> Result<Counters, StateError> {
        match changed.get(&table) {
            Some(c) => Ok(c.clone()),
            None => self.read_counters(table, key),
        }
    }

    fn scratch_stats(&self, scratch: &Scratch, table: u8) -> TableStats {
        scratch
            .stats
            .get(&table)
            .copied()
            .unwrap_or(self.stats[table as usize])
    }

    /// The receipts in owned tables' outboxes to owned tables, not credited yet, in
    /// (source, dest, seq) order.
    fn local_receipts(&self, scratch: &Scratch) -> Result<Vec<CrossReceipt>, StateError> {
        let mut out = Vec::new();
        for source in self.owned.iter() {
            let sent = self.read_counters(source, outbox_counters_key())?;
            for (dest, next) in sent.iter() {
                if !self.owned.contains(dest) || dest == source {
                    continue;
                }
                let credited = self
                    .scratch_counters(&scratch.inbox, dest, inbox_counters_key())?
                    .get(source);
                for seq in credited..next {
                    let value =
                        self.read_value(source, outbox_key(dest, seq))?
                            .ok_or_else(|| {
                                StateError::Corrupt(format!(
                                    "outbox {source}->{dest} lacks seq {seq}"
                                ))
                            })?;
                    out.push(
                        CrossReceipt::decode_untrusted(&value)
                            .map_err(|e| StateError::Corrupt(format!("outbox receipt: {e}")))?,
                    );
                }
            }
        }
        Ok(out)
    }

    /// Credits one receipt (see [`Self::apply_block_with_credits`]).
    fn credit(
        &self,
        receipt: &CrossReceipt,
        scratch: &mut Scratch,
    ) -> Result<CreditOutcome, StateError> {
        let dest = receipt.dest_table;
        if !self.owned.contains(dest) {
            return Ok(CreditOutcome::NotOwned { table: dest });
        }
        if receipt.source_table == dest || table_of(&receipt.to) != dest {
            return Ok(CreditOutcome::Refused(
                "receipt's tables are inconsistent".into(),
            ));
        }
        let mut inbox = self.scratch_counters(&scratch.inbox, dest, inbox_counters_key())?;
        let expected = inbox.get(receipt.source_table);
        if receipt.seq < expected {
            return Ok(CreditOutcome::Duplicate { expected });
        }
        if receipt.seq > expected {
            return Ok(CreditOutcome::Gap { expected });
        }
        let mut account = self.scratch_account(scratch, &receipt.to)?;
        let mut stats = self.scratch_stats(scratch, dest);
        let (Some(balance), Some(balances), Some(credited), Some(next)) = (
            account.balance.checked_add(receipt.amount),
            stats.balances.checked_add(receipt.amount),
            stats.credited.checked_add(receipt.amount),
            expected.checked_add(1),
        ) else {
            return Ok(CreditOutcome::Refused("amount overflows".into()));
        };
        account.balance = balance;
        stats.balances = balances;
        stats.credited = credited;
        scratch.stats.insert(dest, stats);
        scratch
            .overlay
            .insert((dest, account_key(&receipt.to)), Some(account.encode()));
        inbox.set(receipt.source_table, next);
        scratch.inbox.insert(dest, inbox);
        Ok(CreditOutcome::Credited)
    }

    /// Adds `amount` to an account of an owned table (a direct transfer).
    fn deposit(
        &self,
        scratch: &mut Scratch,
        to: &PublicKey,
        amount: u64,
    ) -> Result<(), StateError> {
        let table = table_of(to);
        let mut receiver = self.scratch_account(scratch, to)?;
        let mut stats = self.scratch_stats(scratch, table);
        // Supply bounds every balance and every table's total, so these cannot overflow
        // in a consistent state.
        receiver.balance = receiver
            .balance
            .checked_add(amount)
            .ok_or_else(|| StateError::Corrupt("balance above supply".into()))?;
        stats.balances = stats
            .balances
            .checked_add(amount)
            .ok_or_else(|| StateError::Corrupt("table balances above supply".into()))?;
        scratch.stats.insert(table, stats);
        scratch
            .overlay
            .insert((table, account_key(to)), Some(receiver.encode()));
        Ok(())
    }

    /// Executes one transaction into `scratch`. `Ok(Err(_))`: it failed and changed
    /// nothing; `Ok(Ok(Some(receipt)))`: a cross-shard transfer left a receipt.
    fn execute(
        &self,
        tx: &Tx,
        scratch: &mut Scratch,
    ) -> Result<Result<Option<CrossReceipt>, ExecError>, StateError> {
        let from = &tx.unsigned.from;
        let from_table = table_of(from);
        if !self.owned.contains(from_table) {
            return Ok(Err(ExecError::WrongShard { table: from_table }));
        }
        let mut sender = self.scratch_account(scratch, from)?;
        if tx.unsigned.nonce != sender.nonce {
            return Ok(Err(ExecError::BadNonce {
                expected: sender.nonce,
                got: tx.unsigned.nonce,
            }));
        }
        let needed = match cost(tx) {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        if sender.balance < needed {
            return Ok(Err(ExecError::InsufficientFunds {
                balance: sender.balance,
                needed,
            }));
        }
        let mut source = self.scratch_stats(scratch, from_table);
        // A transfer to a table this ledger does not own leaves a receipt instead.
        let cross = match &tx.unsigned.kind {
            TxKind::Transfer { to, amount } if !self.owned.contains(table_of(to)) => {
                Some((to, *amount))
            }
            _ => None,
        };
        let sent = match cross {
            Some((_, amount)) => source.sent.checked_add(amount),
            None => Some(source.sent),
        };
        let (Some(fees), Some(sent), Some(nonce)) = (
            source.fees.checked_add(tx.unsigned.fee),
            sent,
            sender.nonce.checked_add(1),
        ) else {
            return Ok(Err(ExecError::Overflow));
        };
        // Every check passed: apply.
        source.balances = source
            .balances
            .checked_sub(needed)
            .ok_or_else(|| StateError::Corrupt("table balances below an account's".into()))?;
        source.fees = fees;
        source.sent = sent;
        source.txs = source.txs.saturating_add(1);
        scratch.stats.insert(from_table, source);
        sender.balance -= needed;
        sender.nonce = nonce;
        scratch
            .overlay
            .insert((from_table, account_key(from)), Some(sender.encode()));
        match (&tx.unsigned.kind, cross) {
            (_, Some((to, amount))) => {
                let dest = table_of(to);
                let mut outbox =
                    self.scratch_counters(&scratch.outbox, from_table, outbox_counters_key())?;
                let seq = outbox.get(dest);
                let next = seq
                    .checked_add(1)
                    .ok_or_else(|| StateError::Corrupt("outbox seq overflows".into()))?;
                let receipt = CrossReceipt {
                    source_table: from_table,
                    dest_table: dest,
                    seq,
                    to: to.clone(),
                    amount,
                    tx: tx.hash(),
                };
                scratch.overlay.insert(
                    (from_table, outbox_key(dest, seq)),
                    Some(receipt.to_bytes()),
                );
                outbox.set(dest, next);
                scratch.outbox.insert(from_table, outbox);
                return Ok(Ok(Some(receipt)));
            }
            (TxKind::Transfer { to, amount }, None) => self.deposit(scratch, to, *amount)?,
            (TxKind::Anchor { key, hash }, None) => {
                scratch
                    .overlay
                    .insert((from_table, anchor_key(from, key)), Some(hash.to_vec()));
            }
        }
        Ok(Ok(None))
    }

    /// Computes new roots for the changed tables at the next version of each (version 0
    /// at genesis), adds their nodes to `batch` and records the roots at `height`.
    fn write_tables(
        &mut self,
        changes: BTreeMap<u8, BTreeMap<KeyHash, Option<Vec<u8>>>>,
        batch: &mut WriteBatch,
        height: u64,
    ) -> Result<(), StateError> {
        for (table, values) in changes {
            let version = if self.height.is_none() {
                0
            } else {
                self.versions[table as usize] + 1
            };
            let reader = TableReader {
                kv: &self.kv,
                table,
            };
            let tree = Sha256Jmt::new(&reader);
            let (root, update) = tree.put_value_set(values, version).map_err(tree_err)?;
            write_update(&reader, &update, batch)?;
            self.set_table(table, version, root.0, height, batch);
        }
        Ok(())
    }

    /// Records a table's new version and root, in memory and in `batch`.
    fn set_table(
        &mut self,
        table: u8,
        version: u64,
        root: [u8; 32],
        height: u64,
        batch: &mut WriteBatch,
    ) {
        self.versions[table as usize] = version;
        self.roots[table as usize] = root;
        batch.put(Space::Meta, meta_version(table), encode_u64(version));
        batch.put(Space::Meta, meta_root(table), root.to_vec());
        batch.put(
            Space::Meta,
            meta_table_at(table, height),
            [version.to_be_bytes().as_slice(), &root].concat(),
        );
    }

    fn finish(&mut self, mut batch: WriteBatch, height: u64) -> Result<(), StateError> {
        batch.put(
            Space::Meta,
            META_HEIGHT.to_vec(),
            height.to_be_bytes().to_vec(),
        );
        batch.put(
            Space::Meta,
            meta_state_root(height),
            self.state_root().to_vec(),
        );
        let started = std::time::Instant::now();
        self.kv.commit(batch)?;
        self.last_commit = started.elapsed();
        self.height = Some(height);
        Ok(())
    }

    /// How long the last applied block's store commit took (write and fsync).
    pub fn last_commit_time(&self) -> std::time::Duration {
        self.last_commit
    }
}

/// Adds a tree update's nodes, each leaf with its value, to `batch`.
///
/// Every key set in the update has a new leaf; a deleted key has none, so deletions need
/// no row. The tree also moves leaves without changing their values when a key lands
/// next to one or a neighbour leaves (the leaf is written again at the update's version,
/// one level down or up): such a leaf's value is read from the tree the update started
/// from (`version - 1`: a table's versions are consecutive).
fn write_update(
    reader: &TableReader<'_>,
    update: &jmt::storage::TreeUpdateBatch,
    batch: &mut WriteBatch,
) -> Result<(), StateError> {
    let values = update.node_batch.values();
    for (key, node) in update.node_batch.nodes() {
        let k = reader.node_key(key).map_err(tree_err)?;
        let mut row = borsh::to_vec(node).map_err(|e| StateError::Tree(e.to_string()))?;
        if let Node::Leaf(leaf) = node {
            let version = key.version();
            match values.get(&(version, leaf.key_hash())) {
                Some(Some(value)) => row.extend_from_slice(value),
                Some(None) => {
                    return Err(StateError::Tree(format!(
                        "table {}: a leaf for a key deleted at version {version}",
                        reader.table
                    )));
                }
                None => {
                    let moved = version
                        .checked_sub(1)
                        .map(|before| reader.leaf_value(before, leaf.key_hash()))
                        .transpose()
                        .map_err(tree_err)?
                        .flatten()
                        .ok_or_else(|| {
                            StateError::Corrupt(format!(
                                "table {}: leaf moved at version {version} has no value \
                                 before it",
                                reader.table
                            ))
                        })?;
                    row.extend_from_slice(&moved);
                }
            }
        }
        batch.put(Space::Nodes, k, row);
    }
    Ok(())
}

/// What a transaction takes from its sender: amount (for transfers) plus fee.
fn cost(tx: &Tx) -> Result<u64, ExecError> {
    let amount = match &tx.unsigned.kind {
        TxKind::Transfer { amount, .. } => *amount,
        TxKind::Anchor { .. } => 0,
    };
    amount
        .checked_add(tx.unsigned.fee)
        .ok_or(ExecError::Overflow)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod sharding_tests;
