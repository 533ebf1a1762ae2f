//! Ledger state of a Trellis shard.
//!
//! - Storage is a [`Kv`] (redb in production) written only in atomic batches, one per
//!   finalized block.
//! - State is split into 256 tables (`table(account) = H(account) mod 256`); each table is
//!   its own Jellyfish Merkle tree with its own dense version counter, so any table can be
//!   proven (and, later, moved to another shard) on its own.
//! - [`Ledger::apply_block`] is deterministic: the same finalized sequence gives the same
//!   table roots on every node. Applying a height that is already applied is a no-op, so a
//!   block redelivered after a crash is harmless.
//! - Total supply (sum of balances plus the fee pool) never changes after genesis.

mod kv;

pub use kv::{Entry, Kv, KvError, MemKv, RedbKv, Space, WriteBatch};

use jmt::storage::{LeafNode, Node, NodeKey, TreeReader};
use jmt::{KeyHash, OwnedValue, RootHash, Sha256Jmt, Version};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use trellis_node_types::{PublicKey, TABLES, Tx, TxKind, table_of};

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
}

/// The key under which the tree stores an account.
fn account_key(account: &PublicKey) -> KeyHash {
    KeyHash::with::<sha2::Sha256>([b"acct".as_slice(), account.as_ref()].concat())
}

/// The key under which the tree stores `owner`'s anchor `key` (in `owner`'s table).
fn anchor_key(owner: &PublicKey, key: &[u8]) -> KeyHash {
    KeyHash::with::<sha2::Sha256>([b"anch".as_slice(), owner.as_ref(), key].concat())
}

const META_HEIGHT: &[u8] = b"height";
const META_FEES: &[u8] = b"fees";
const META_SUPPLY: &[u8] = b"supply";

fn meta_version(table: u8) -> Vec<u8> {
    [b"tv".as_slice(), &[table]].concat()
}
fn meta_root(table: u8) -> Vec<u8> {
    [b"tr".as_slice(), &[table]].concat()
}
fn meta_receipt(hash: &[u8]) -> Vec<u8> {
    [b"rc".as_slice(), hash].concat()
}
fn meta_state_root(height: u64) -> Vec<u8> {
    [b"sr".as_slice(), &height.to_be_bytes()].concat()
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
struct TableReader<'a> {
    kv: &'a dyn Kv,
    table: u8,
}

impl TableReader<'_> {
    fn node_key(&self, key: &NodeKey) -> anyhow::Result<Vec<u8>> {
        let mut out = vec![self.table];
        out.extend(borsh::to_vec(key)?);
        Ok(out)
    }

    fn value_key(&self, key: KeyHash, version: Version) -> Vec<u8> {
        let mut out = Vec::with_capacity(41);
        out.push(self.table);
        out.extend_from_slice(&key.0);
        out.extend_from_slice(&version.to_be_bytes());
        out
    }
}

impl TreeReader for TableReader<'_> {
    fn get_node_option(&self, node_key: &NodeKey) -> anyhow::Result<Option<Node>> {
        match self.kv.get(Space::Nodes, &self.node_key(node_key)?)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(borsh::from_slice(&bytes)?)),
        }
    }

    fn get_value_option(
        &self,
        max_version: Version,
        key_hash: KeyHash,
    ) -> anyhow::Result<Option<OwnedValue>> {
        let from = self.value_key(key_hash, 0);
        let to = self.value_key(key_hash, max_version);
        match self.kv.last_in(Space::Values, &from, &to)? {
            None => Ok(None),
            // A leading 0 marks a deletion; 1 a present value.
            Some((_, v)) => match v.split_first() {
                Some((1, rest)) => Ok(Some(rest.to_vec())),
                Some((0, _)) => Ok(None),
                _ => anyhow::bail!("corrupt value entry"),
            },
        }
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

/// Most leaf values [`Ledger`] keeps in memory.
const VALUE_CACHE: usize = 262_144;

/// Committed leaf values by (table, key hash), `None` for absent ones.
type ValueCache = HashMap<(u8, [u8; 32]), Option<Vec<u8>>>;

/// The ledger of one chain.
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
    fee_pool: u64,
    supply: u64,
}

impl<K: Kv> Ledger<K> {
    /// Opens the ledger stored in `kv` (empty, or as left by a previous run).
    pub fn open(kv: K) -> Result<Self, StateError> {
        let height = read_u64(&kv, META_HEIGHT)?;
        let mut versions = vec![0; TABLES];
        let mut roots = vec![[0u8; 32]; TABLES];
        if height.is_some() {
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
            }
        }
        Ok(Self {
            fee_pool: read_u64(&kv, META_FEES)?.unwrap_or(0),
            supply: read_u64(&kv, META_SUPPLY)?.unwrap_or(0),
            kv,
            values: Mutex::new(HashMap::new()),
            height,
            versions,
            roots,
        })
    }

    /// Writes the genesis state (height 0). Does nothing if the ledger already has one
    /// with the same supply; refuses a different one.
    pub fn init_genesis(&mut self, balances: &[(PublicKey, u64)]) -> Result<(), StateError> {
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
        for (account, balance) in per_account {
            let entry = changes.entry(table_of(&account)).or_default();
            entry.insert(
                account_key(&account),
                Some(Account { balance, nonce: 0 }.encode()),
            );
        }
        let mut batch = WriteBatch::default();
        batch.put(
            Space::Meta,
            META_SUPPLY.to_vec(),
            supply.to_be_bytes().to_vec(),
        );
        batch.put(Space::Meta, META_FEES.to_vec(), 0u64.to_be_bytes().to_vec());
        // Every table starts at version 0 so that later versions are dense.
        self.cached_values().clear();
        self.write_tables(changes, &mut batch, true)?;
        self.supply = supply;
        self.fee_pool = 0;
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

    pub fn fee_pool(&self) -> u64 {
        self.fee_pool
    }

    /// Sum of genesis balances; equals the sum of all balances plus the fee pool.
    pub fn supply(&self) -> u64 {
        self.supply
    }

    pub fn table_root(&self, table: u8) -> [u8; 32] {
        self.roots[table as usize]
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

    /// An account's committed state.
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
        match self.kv.get(Space::Meta, &meta_receipt(tx_hash))? {
            None => Ok(None),
            Some(v) => Ok(Some(Receipt::decode(&v)?)),
        }
    }

    /// Checks a transaction against committed state (mempool admission). `pending` is the
    /// number of the sender's transactions already queued ahead of this one.
    pub fn check_admission(&self, tx: &Tx, pending: u64) -> Result<(), ExecError> {
        let from = &tx.unsigned.from;
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
        let have = self.height.ok_or(StateError::NoGenesis)?;
        if height <= have {
            return Ok(Vec::new());
        }
        if height != have + 1 {
            return Err(StateError::OutOfOrder { have, got: height });
        }
        let mut overlay: BTreeMap<(u8, KeyHash), Option<Vec<u8>>> = BTreeMap::new();
        let mut receipts = Vec::with_capacity(txs.len());
        let mut fees = self.fee_pool;
        let mut batch = extra;
        for tx in txs {
            let outcome = self.execute(tx, &mut overlay, &mut fees)?;
            let receipt = Receipt {
                height,
                success: outcome.is_ok(),
                error: outcome.err().map(|e| e.to_string()).unwrap_or_default(),
            };
            batch.put(Space::Meta, meta_receipt(&tx.hash().0), receipt.encode());
            receipts.push(receipt);
        }
        let mut changes: BTreeMap<u8, BTreeMap<KeyHash, Option<Vec<u8>>>> = BTreeMap::new();
        for ((table, key), value) in &overlay {
            changes
                .entry(*table)
                .or_default()
                .insert(*key, value.clone());
        }
        self.write_tables(changes, &mut batch, false)?;
        batch.put(Space::Meta, META_FEES.to_vec(), fees.to_be_bytes().to_vec());
        self.fee_pool = fees;
        self.finish(batch, height)?;
        // The block is durable: its values are now the committed ones.
        let mut cache = self.cached_values();
        if cache.len() + overlay.len() > VALUE_CACHE {
            cache.clear();
        }
        for ((table, key), value) in overlay {
            cache.insert((table, key.0), value);
        }
        Ok(receipts)
    }

    fn overlay_account(
        &self,
        overlay: &BTreeMap<(u8, KeyHash), Option<Vec<u8>>>,
        account: &PublicKey,
    ) -> Result<Account, StateError> {
        let table = table_of(account);
        let key = account_key(account);
        let bytes = match overlay.get(&(table, key)) {
            Some(v) => v.clone(),
            None => self.read_value(table, key)?,
        };
        match bytes {
            None => Ok(Account::default()),
            Some(b) => Account::decode(&b),
        }
    }

    fn execute(
        &self,
        tx: &Tx,
        overlay: &mut BTreeMap<(u8, KeyHash), Option<Vec<u8>>>,
        fees: &mut u64,
    ) -> Result<Result<(), ExecError>, StateError> {
        let from = &tx.unsigned.from;
        let mut sender = self.overlay_account(overlay, from)?;
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
        let Some(new_fees) = fees.checked_add(tx.unsigned.fee) else {
            return Ok(Err(ExecError::Overflow));
        };
        // Every check passed: apply. Supply bounds every balance, so credits cannot
        // overflow; the checked additions below are belts and braces.
        sender.balance -= needed;
        sender.nonce += 1;
        overlay.insert((table_of(from), account_key(from)), Some(sender.encode()));
        match &tx.unsigned.kind {
            TxKind::Transfer { to, amount } => {
                let mut receiver = self.overlay_account(overlay, to)?;
                receiver.balance = receiver
                    .balance
                    .checked_add(*amount)
                    .ok_or_else(|| StateError::Corrupt("balance above supply".into()))?;
                overlay.insert((table_of(to), account_key(to)), Some(receiver.encode()));
            }
            TxKind::Anchor { key, hash } => {
                overlay.insert((table_of(from), anchor_key(from, key)), Some(hash.to_vec()));
            }
        }
        *fees = new_fees;
        Ok(Ok(()))
    }

    /// Computes new roots for the changed tables and adds their nodes to `batch`.
    fn write_tables(
        &mut self,
        changes: BTreeMap<u8, BTreeMap<KeyHash, Option<Vec<u8>>>>,
        batch: &mut WriteBatch,
        genesis: bool,
    ) -> Result<(), StateError> {
        for (table, values) in changes {
            let version = if genesis {
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
            for (key, node) in update.node_batch.nodes() {
                let k = reader.node_key(key).map_err(tree_err)?;
                let v = borsh::to_vec(node).map_err(|e| StateError::Tree(e.to_string()))?;
                batch.put(Space::Nodes, k, v);
            }
            for ((v, key), value) in update.node_batch.values() {
                let stored = match value {
                    Some(bytes) => [&[1u8][..], bytes].concat(),
                    None => vec![0u8],
                };
                batch.put(Space::Values, reader.value_key(*key, *v), stored);
            }
            self.versions[table as usize] = version;
            self.roots[table as usize] = root.0;
            batch.put(
                Space::Meta,
                meta_version(table),
                version.to_be_bytes().to_vec(),
            );
            batch.put(Space::Meta, meta_root(table), root.0.to_vec());
        }
        Ok(())
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
        self.kv.commit(batch)?;
        self.height = Some(height);
        Ok(())
    }
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
