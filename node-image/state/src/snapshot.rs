//! Table handoff: a table's live leaves at a height, exported in bounded chunks and
//! imported by the table's new owner, who rebuilds the tree and commits it only if its
//! root equals the certified one.
//!
//! ```text
//! chunk = table (1) ‖ height (u64) ‖ root (32) ‖ after (0x00 | 0x01 ‖ key_hash (32))
//!       ‖ count (varint u32, ≤ MAX_SNAPSHOT_LEAVES) ‖ leaf* ‖ more (0x00 | 0x01)
//! leaf  = key_hash (32) ‖ len (varint u32, ≤ MAX_LEAF_VALUE) ‖ value
//! ```
//!
//! Leaves come in strictly ascending key-hash order; `after` is the last key hash of the
//! previous chunk (absent in the first), `more` says whether another chunk follows. A
//! table's size is unbounded in principle, so it travels as any number of chunks of at
//! most [`MAX_SNAPSHOT_LEAVES`] leaves and about 1 MiB ([`MAX_SNAPSHOT_CHUNK_SIZE`]). The importer holds the whole
//! table in memory while rebuilding it (a table is 1/256 of the state: about 100 bytes
//! per account, so 4 MB for a 10-million-account network). A node's handoff commits all
//! the tables it takes from one source shard in one batch ([`Ledger::import_tables_with`]),
//! so it holds all of them, leaves and rebuilt tree nodes, until then: for 128 tables of
//! a 10-million-account network, 0.5 GB of leaves plus their nodes. Far larger states
//! would need the batch split by size (and a marker saying which part is in).

use crate::outbox::{bytes_size, read_bytes, write_bytes};
use crate::tables::{TableStats, stats_key};
use crate::{
    Kv, Ledger, META_LOCAL_DUE, META_OWNED, Space, StateError, TableReader, WriteBatch, tree_err,
    write_update,
};
use bytes::BufMut;
use commonware_codec::{
    Buf, DecodeExt, EncodeSize, Error as CodecError, Read, ReadExt, Write, varint::UInt,
};
use jmt::storage::{LeafNode, Node, NodeKey, TreeReader, TreeUpdateBatch};
use jmt::{KeyHash, OwnedValue, Sha256Jmt, Version};
use std::collections::BTreeMap;
use trellis_node_types::to_hex;

/// A leaf of a table's tree: (key hash, value).
pub type Leaf = ([u8; 32], Vec<u8>);

/// Most leaves in one snapshot chunk.
pub const MAX_SNAPSHOT_LEAVES: usize = 4096;
/// Longest leaf value (the longest real one is a full counters leaf, 2 295 bytes).
pub const MAX_LEAF_VALUE: usize = 2_304;
/// Most bytes of leaves (key hash, length, value) an exporter puts in one chunk.
pub const MAX_SNAPSHOT_LEAF_BYTES: usize = 1 << 20;
/// Largest encoded chunk: the header, the leaf budget, and one leaf of slack (a chunk
/// always takes at least one leaf, however long).
pub const MAX_SNAPSHOT_CHUNK_SIZE: usize =
    1 + 8 + 32 + 33 + 5 + MAX_SNAPSHOT_LEAF_BYTES + (32 + 3 + MAX_LEAF_VALUE) + 1;

/// Why a table snapshot was refused. A refused import changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("malformed snapshot chunk: {0}")]
    Malformed(String),
    #[error("snapshot has no chunks")]
    NoChunks,
    #[error("snapshot chunk {chunk} is of table {got}, table {expected} was asked")]
    WrongTable { chunk: usize, expected: u8, got: u8 },
    #[error("snapshot chunk {chunk} claims root {claimed}, the certified root is {certified}")]
    WrongRoot {
        chunk: usize,
        certified: String,
        claimed: String,
    },
    #[error("snapshot chunk {chunk} does not continue where the previous one ended")]
    Discontinuous { chunk: usize },
    #[error("snapshot chunk {chunk} has leaves out of order or repeated")]
    Unordered { chunk: usize },
    #[error("snapshot chunk {chunk} has a {len}-byte value, more than {MAX_LEAF_VALUE}")]
    ValueTooLong { chunk: usize, len: usize },
    #[error("snapshot is truncated: its last chunk says more follow")]
    Truncated,
    #[error("snapshot has chunks after the one marked last")]
    TrailingChunks,
    #[error("snapshot leaves hash to {computed}, not to the certified root {certified}")]
    RootMismatch { certified: String, computed: String },
    #[error("table {0} is owned here already; importing would overwrite live state")]
    AlreadyOwned(u8),
    #[error("table {0} was checked for another tree version than it would be imported at")]
    StaleCheck(u8),
    #[error(transparent)]
    State(#[from] StateError),
}

/// One chunk of a table's state at a height (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSnapshot {
    pub table: u8,
    pub height: u64,
    /// The exporter's claim; the importer compares it with the certified root first.
    pub root: [u8; 32],
    /// Last key hash of the previous chunk (`None` for the first).
    pub after: Option<[u8; 32]>,
    /// (key hash, value), strictly ascending by key hash.
    pub leaves: Vec<Leaf>,
    /// Whether another chunk follows.
    pub more: bool,
}

impl Write for TableSnapshot {
    fn write(&self, buf: &mut impl BufMut) {
        self.table.write(buf);
        self.height.write(buf);
        self.root.write(buf);
        match &self.after {
            None => 0u8.write(buf),
            Some(key) => {
                1u8.write(buf);
                key.write(buf);
            }
        }
        UInt(self.leaves.len() as u32).write(buf);
        for (key, value) in &self.leaves {
            key.write(buf);
            write_bytes(value, buf);
        }
        u8::from(self.more).write(buf);
    }
}

impl EncodeSize for TableSnapshot {
    fn encode_size(&self) -> usize {
        1 + 8
            + 32
            + if self.after.is_some() { 33 } else { 1 }
            + UInt(self.leaves.len() as u32).encode_size()
            + self
                .leaves
                .iter()
                .map(|(_, v)| 32 + bytes_size(v.len()))
                .sum::<usize>()
            + 1
    }
}

impl Read for TableSnapshot {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let table = u8::read(buf)?;
        let height = u64::read(buf)?;
        let root = <[u8; 32]>::read(buf)?;
        let after = match u8::read(buf)? {
            0 => None,
            1 => Some(<[u8; 32]>::read(buf)?),
            other => return Err(CodecError::InvalidEnum(other)),
        };
        let count = u32::from(UInt::<u32>::read(buf)?) as usize;
        if count > MAX_SNAPSHOT_LEAVES {
            return Err(CodecError::InvalidLength(count));
        }
        if buf.remaining() < count.saturating_mul(33) {
            return Err(CodecError::EndOfBuffer);
        }
        let mut leaves = Vec::with_capacity(count);
        for _ in 0..count {
            let key = <[u8; 32]>::read(buf)?;
            let value = read_bytes(buf, MAX_LEAF_VALUE)?;
            leaves.push((key, value));
        }
        let more = match u8::read(buf)? {
            0 => false,
            1 => true,
            _ => return Err(CodecError::Invalid("TableSnapshot", "more is not 0 or 1")),
        };
        Ok(Self {
            table,
            height,
            root,
            after,
            leaves,
            more,
        })
    }
}

impl TableSnapshot {
    /// Decodes untrusted bytes (another node's answer): size first, then structure.
    pub fn decode_untrusted(bytes: &[u8]) -> Result<Self, SnapshotError> {
        if bytes.len() > MAX_SNAPSHOT_CHUNK_SIZE {
            return Err(SnapshotError::Malformed(format!(
                "chunk is {} bytes, more than the {MAX_SNAPSHOT_CHUNK_SIZE}-byte limit",
                bytes.len()
            )));
        }
        Self::decode(commonware_codec::Copying(bytes))
            .map_err(|e| SnapshotError::Malformed(e.to_string()))
    }

    /// The encoding (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encode_size());
        self.write(&mut out);
        out
    }
}

impl<K: Kv> Ledger<K> {
    /// Up to `limit` (1..=[`MAX_SNAPSHOT_LEAVES`]) live leaves of `table` as of `height`,
    /// after key hash `after`. Start with `after = None` and continue from the last key
    /// hash of each chunk while `more` is set.
    pub fn export_table(
        &self,
        table: u8,
        height: u64,
        after: Option<[u8; 32]>,
        limit: usize,
    ) -> Result<TableSnapshot, StateError> {
        let (version, root) = self.table_at(table, height)?.ok_or_else(|| {
            StateError::Unavailable(format!("no state of table {table} at height {height}"))
        })?;
        self.export_version(table, version, root, height, after, limit)
    }

    /// Like [`Self::export_table`], but the leaves of the tree whose root is `root`: the
    /// table as of `height` when that is its root there (the previous owner serving its
    /// own history), else the version this ledger rebuilt by importing the table with that
    /// root (a later block of the importer may change the table at the very height the
    /// import took effect, so the imported leaves are found by root, not by height).
    /// `height` is only echoed in the chunks: it is the height of the source's chain.
    pub fn export_table_with_root(
        &self,
        table: u8,
        height: u64,
        root: [u8; 32],
        after: Option<[u8; 32]>,
        limit: usize,
    ) -> Result<TableSnapshot, StateError> {
        if let Some((version, at)) = self.table_at(table, height)?
            && at == root
        {
            return self.export_version(table, version, root, height, after, limit);
        }
        let version =
            crate::read_u64(&self.kv, &meta_imported(table, &root))?.ok_or_else(|| {
                StateError::Unavailable(format!(
                    "no state of table {table} with root {} here",
                    to_hex(&root)
                ))
            })?;
        self.export_version(table, version, root, height, after, limit)
    }

    /// The live leaves of `table`'s tree `version` (whose root is `root`), after `after`.
    fn export_version(
        &self,
        table: u8,
        version: u64,
        root: [u8; 32],
        height: u64,
        after: Option<[u8; 32]>,
        limit: usize,
    ) -> Result<TableSnapshot, StateError> {
        let limit = limit.clamp(1, MAX_SNAPSHOT_LEAVES);
        let reader = TableReader {
            kv: &self.kv,
            table,
        };
        let mut leaves = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        // The tree's leaves in key order, from `after` on (itself excluded).
        let leaves_from = jmt::JellyfishMerkleIterator::new(
            std::sync::Arc::new(reader),
            version,
            KeyHash(after.unwrap_or([0; 32])),
        )
        .map_err(tree_err)?;
        for leaf in leaves_from {
            let (KeyHash(key), value) = leaf.map_err(tree_err)?;
            if Some(key) == after {
                continue;
            }
            let size = 32 + bytes_size(value.len());
            if leaves.len() == limit
                || (!leaves.is_empty() && bytes + size > MAX_SNAPSHOT_LEAF_BYTES)
            {
                more = true;
                break;
            }
            bytes += size;
            if value.len() > MAX_LEAF_VALUE {
                return Err(StateError::Corrupt(format!(
                    "table {table} has a {}-byte leaf",
                    value.len()
                )));
            }
            leaves.push((key, value));
        }
        Ok(TableSnapshot {
            table,
            height,
            root,
            after,
            leaves,
            more,
        })
    }

    /// Takes over `table` from its previous owner: checks `chunks` (the whole snapshot,
    /// in order), rebuilds the tree, and commits it, marking the table owned, only if the
    /// rebuilt root equals `certified_root` (the table's root in the previous owner's
    /// certified epoch-end header). Anything wrong is refused with a clear error and
    /// changes nothing.
    pub fn import_table(
        &mut self,
        table: u8,
        certified_root: [u8; 32],
        chunks: &[TableSnapshot],
    ) -> Result<(), SnapshotError> {
        self.import_table_with(table, certified_root, chunks, WriteBatch::default())
    }

    /// [`Self::import_table`], committing `extra` in the same batch (the node keeps the
    /// proof of the import's root with it, so a crash never separates them).
    pub fn import_table_with(
        &mut self,
        table: u8,
        certified_root: [u8; 32],
        chunks: &[TableSnapshot],
        extra: WriteBatch,
    ) -> Result<(), SnapshotError> {
        if self.owned.contains(table) {
            return Err(SnapshotError::AlreadyOwned(table));
        }
        let checked = check_table(table, certified_root, chunks, self.import_version(table))?;
        self.import_tables_with(vec![checked], extra)
    }

    /// The tree version an import of `table` builds (what [`check_table`] needs).
    pub fn import_version(&self, table: u8) -> u64 {
        self.versions[table as usize] + 1
    }

    /// Imports every table of `tables` (each already rebuilt and checked against its
    /// certified root by [`check_table`]) in **one** commit with `extra`: a crash leaves
    /// either all of them, `extra` and their version records, or none. An import also
    /// records which tree version holds exactly the imported leaves
    /// ([`Self::export_table_with_root`] serves them to a peer that replays the import).
    /// Refused, changing nothing, if a table is owned here already, appears twice, or
    /// was checked for another version than [`Self::import_version`] gives now.
    pub fn import_tables_with(
        &mut self,
        tables: Vec<CheckedTable>,
        extra: WriteBatch,
    ) -> Result<(), SnapshotError> {
        let height = self.height.ok_or(StateError::NoGenesis)?;
        let mut owned = self.owned;
        for checked in &tables {
            if owned.contains(checked.table) {
                return Err(SnapshotError::AlreadyOwned(checked.table));
            }
            if checked.version != self.import_version(checked.table) {
                return Err(SnapshotError::StaleCheck(checked.table));
            }
            owned.insert(checked.table);
        }
        let mut batch = extra;
        for checked in &tables {
            self.write_import(checked, &mut batch)?;
        }
        batch.put(Space::Meta, META_OWNED.to_vec(), owned.to_bytes().to_vec());
        // Receipts between the imported tables and the others owned here are credited by
        // the next block (no other shard will).
        batch.put(Space::Meta, META_LOCAL_DUE.to_vec(), vec![1]);
        // The tables are this ledger's from the next block on.
        let mut versions = self.versions.clone();
        let mut roots = self.roots.clone();
        for checked in &tables {
            self.set_table(
                checked.table,
                checked.version,
                checked.root,
                height + 1,
                &mut batch,
            );
        }
        if let Err(e) = self.kv.commit(batch) {
            // Nothing was written: keep the previous view too.
            std::mem::swap(&mut self.versions, &mut versions);
            std::mem::swap(&mut self.roots, &mut roots);
            return Err(StateError::from(e).into());
        }
        self.owned = owned;
        for checked in tables {
            self.stats[checked.table as usize] = checked.stats;
        }
        self.cached_values().clear();
        Ok(())
    }

    /// The writes of one checked import: its tree, its version record, and absence marks
    /// for values this store still holds for the table from an earlier ownership (they
    /// must not show through the fresh tree).
    fn write_import(
        &self,
        checked: &CheckedTable,
        batch: &mut WriteBatch,
    ) -> Result<(), SnapshotError> {
        let reader = TableReader {
            kv: &self.kv,
            table: checked.table,
        };
        write_update(&reader, &checked.update, batch)?;
        batch.put(
            Space::Meta,
            meta_imported(checked.table, &checked.root),
            checked.version.to_be_bytes().to_vec(),
        );
        // Keys this ledger held in an older copy of the table and the snapshot lacks need
        // no marker: a read walks the imported tree, which has no leaf for them.
        Ok(())
    }
}

/// A table snapshot rebuilt and checked against its certified root, ready for
/// [`Ledger::import_tables_with`] at the tree version it was built for. Only
/// [`check_table`] makes one.
pub struct CheckedTable {
    table: u8,
    root: [u8; 32],
    version: u64,
    update: TreeUpdateBatch,
    stats: TableStats,
}

impl CheckedTable {
    pub fn table(&self) -> u8 {
        self.table
    }
}

/// Reads a table's tree as empty before `version`: an imported table is built from
/// scratch at a version after everything the store already holds for that table, so
/// building it reads nothing but that empty root.
struct EmptyBefore {
    version: u64,
}

impl TreeReader for EmptyBefore {
    fn get_node_option(&self, node_key: &NodeKey) -> anyhow::Result<Option<Node>> {
        Ok((node_key.version().checked_add(1) == Some(self.version)
            && node_key.nibble_path().is_empty())
        .then_some(Node::Null))
    }

    fn get_value_option(&self, _: Version, _: KeyHash) -> anyhow::Result<Option<OwnedValue>> {
        Ok(None)
    }

    fn get_rightmost_leaf(&self) -> anyhow::Result<Option<(NodeKey, LeafNode)>> {
        anyhow::bail!("tree restore is not supported")
    }
}

/// Checks `chunks` (the whole snapshot of `table`, in order) and rebuilds the table's
/// tree at `version` ([`Ledger::import_version`]) from its leaves alone: refused unless
/// the rebuilt root equals `certified_root`. Needs no store, so an importer checks each
/// table as it arrives, without holding its ledger.
pub fn check_table(
    table: u8,
    certified_root: [u8; 32],
    chunks: &[TableSnapshot],
    version: u64,
) -> Result<CheckedTable, SnapshotError> {
    let leaves = check_chunks(table, &certified_root, chunks)?;
    let mut stats = TableStats::default();
    let mut values: BTreeMap<KeyHash, Option<Vec<u8>>> = BTreeMap::new();
    let stats_key = stats_key();
    for (key, value) in leaves {
        if KeyHash(key) == stats_key {
            stats = TableStats::decode(&value)?;
        }
        values.insert(KeyHash(key), Some(value));
    }
    let reader = EmptyBefore { version };
    let (root, update) = Sha256Jmt::new(&reader)
        .put_value_set(values, version)
        .map_err(tree_err)?;
    if root.0 != certified_root {
        return Err(SnapshotError::RootMismatch {
            certified: to_hex(&certified_root),
            computed: to_hex(&root.0),
        });
    }
    Ok(CheckedTable {
        table,
        root: root.0,
        version,
        update,
        stats,
    })
}

/// The tree version an import of `table` with `root` rebuilt.
fn meta_imported(table: u8, root: &[u8; 32]) -> Vec<u8> {
    [b"ti".as_slice(), &[table], root].concat()
}

/// Checks the chunks' order and claims; returns all leaves, ascending.
fn check_chunks(
    table: u8,
    certified_root: &[u8; 32],
    chunks: &[TableSnapshot],
) -> Result<Vec<Leaf>, SnapshotError> {
    if chunks.is_empty() {
        return Err(SnapshotError::NoChunks);
    }
    let mut leaves = Vec::new();
    let mut last: Option<[u8; 32]> = None;
    let mut finished = false;
    for (i, chunk) in chunks.iter().enumerate() {
        if finished {
            return Err(SnapshotError::TrailingChunks);
        }
        if chunk.table != table {
            return Err(SnapshotError::WrongTable {
                chunk: i,
                expected: table,
                got: chunk.table,
            });
        }
        if &chunk.root != certified_root {
            return Err(SnapshotError::WrongRoot {
                chunk: i,
                certified: to_hex(certified_root),
                claimed: to_hex(&chunk.root),
            });
        }
        // A chunk continues exactly where the previous one ended, and makes progress
        // unless it is the last.
        if chunk.after != last || (chunk.more && chunk.leaves.is_empty()) {
            return Err(SnapshotError::Discontinuous { chunk: i });
        }
        for (key, value) in &chunk.leaves {
            if last.is_some_and(|l| *key <= l) {
                return Err(SnapshotError::Unordered { chunk: i });
            }
            if value.len() > MAX_LEAF_VALUE {
                return Err(SnapshotError::ValueTooLong {
                    chunk: i,
                    len: value.len(),
                });
            }
            last = Some(*key);
            leaves.push((*key, value.clone()));
        }
        finished = !chunk.more;
    }
    if !finished {
        return Err(SnapshotError::Truncated);
    }
    Ok(leaves)
}
