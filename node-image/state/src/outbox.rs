//! Outbox pages: a source table's receipts towards one destination table, each with a
//! Merkle proof against the source table's root at a finalized height.
//!
//! Encodings (integers big-endian unless marked varint; `varint` is the LEB128 `UInt`
//! of commonware-codec):
//!
//! ```text
//! proof          = borsh(jmt::proof::SparseMerkleProof<Sha256>), at most MAX_PROOF_SIZE bytes:
//!                  leaf: 0x00 | 0x01 ‖ key_hash (32) ‖ value_hash (32)
//!                  ‖ sibling count (u32 little-endian, ≤ 256)
//!                  ‖ sibling*: 0x00 (empty) | 0x01 ‖ left (32) ‖ right (32) | 0x02 ‖ key_hash (32) ‖ value_hash (32)
//! proven_receipt = receipt (82, see trellis_node_types::receipt) ‖ len (varint u32) ‖ proof
//! outbox_page    = source_table (1) ‖ dest_table (1) ‖ height (u64) ‖ table_root (32)
//!                  ‖ next_seq (u64) ‖ count (varint u32, ≤ MAX_OUTBOX_PAGE) ‖ proven_receipt*
//! ```
//!
//! The proven leaf is `key = SHA-256("outb" ‖ dest_table ‖ seq)`, `value = receipt`; a
//! proof therefore binds every field of the receipt, its destination and its position.

use crate::tables::{Counters, TableStats, outbox_counters_key, outbox_key};
use crate::{Kv, Ledger, StateError, TableReader, tree_err};
use bytes::{Buf as _, BufMut};
use commonware_codec::{
    Buf, DecodeExt, EncodeSize, Error as CodecError, FixedSize, Read, ReadExt, Write, varint::UInt,
};
use jmt::{KeyHash, RootHash, Sha256Jmt};
use trellis_node_types::{CROSS_RECEIPT_SIZE, CrossReceipt, to_hex};

/// Largest encoded proof: a leaf and 256 siblings of 65 bytes (a tree of depth 256; real
/// proofs are a few hundred bytes).
pub const MAX_PROOF_SIZE: usize = (1 + 64) + 4 + 256 * 65;
/// Most receipts in one outbox page.
pub const MAX_OUTBOX_PAGE: usize = 256;
/// Largest encoded outbox page.
pub const MAX_OUTBOX_PAGE_SIZE: usize =
    1 + 1 + 8 + 32 + 8 + 5 + MAX_OUTBOX_PAGE * (CROSS_RECEIPT_SIZE + 5 + MAX_PROOF_SIZE);

/// Why a receipt or an outbox page is not proven.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("proof is {0} bytes, more than the {MAX_PROOF_SIZE}-byte limit")]
    Oversized(usize),
    #[error("malformed proof: {0}")]
    Malformed(String),
    #[error("receipt {seq} from table {source_table} to table {dest_table} is not proven: {why}")]
    Mismatch {
        source_table: u8,
        dest_table: u8,
        seq: u64,
        why: String,
    },
    #[error(
        "outbox page is for tables {got_source}->{got_dest}, {source_table}->{dest_table} was asked"
    )]
    WrongPair {
        source_table: u8,
        dest_table: u8,
        got_source: u8,
        got_dest: u8,
    },
    #[error("outbox page claims root {claimed}, the certified root is {certified}")]
    WrongRoot { certified: String, claimed: String },
    #[error("outbox page has seq {got} where {expected} was expected")]
    NotConsecutive { expected: u64, got: u64 },
}

/// Checks that `proof` shows `receipt` as an outbox leaf of a source table whose root is
/// `table_root` (taken by the caller from a certified header of the shard that owned
/// `receipt.source_table` at that height).
pub fn verify_receipt(
    receipt: &CrossReceipt,
    proof: &[u8],
    table_root: &[u8; 32],
) -> Result<(), ProofError> {
    if proof.len() > MAX_PROOF_SIZE {
        return Err(ProofError::Oversized(proof.len()));
    }
    let proof = borsh::from_slice::<jmt::proof::SparseMerkleProof<sha2::Sha256>>(proof)
        .map_err(|e| ProofError::Malformed(e.to_string()))?;
    proof
        .verify_existence(
            RootHash(*table_root),
            outbox_key(receipt.dest_table, receipt.seq),
            receipt.to_bytes(),
        )
        .map_err(|e| ProofError::Mismatch {
            source_table: receipt.source_table,
            dest_table: receipt.dest_table,
            seq: receipt.seq,
            why: e.to_string(),
        })
}

pub(crate) use trellis_node_types::{bytes_size, read_bytes, write_bytes};

/// A receipt and its proof (see [`verify_receipt`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvenReceipt {
    pub receipt: CrossReceipt,
    pub proof: Vec<u8>,
}

impl Write for ProvenReceipt {
    fn write(&self, buf: &mut impl BufMut) {
        self.receipt.write(buf);
        write_bytes(&self.proof, buf);
    }
}

impl EncodeSize for ProvenReceipt {
    fn encode_size(&self) -> usize {
        CrossReceipt::SIZE + bytes_size(self.proof.len())
    }
}

impl Read for ProvenReceipt {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let receipt = CrossReceipt::read(buf)?;
        let proof = read_bytes(buf, MAX_PROOF_SIZE)?;
        Ok(Self { receipt, proof })
    }
}

/// Receipts `from_seq..` of one (source table, destination table) pair, proven against
/// the source table's root at `height`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxPage {
    pub source_table: u8,
    pub dest_table: u8,
    pub height: u64,
    pub table_root: [u8; 32],
    /// The pair's outbox counter at `height` (advisory: unproven, tells the reader
    /// whether more pages exist).
    pub next_seq: u64,
    pub entries: Vec<ProvenReceipt>,
}

impl Write for OutboxPage {
    fn write(&self, buf: &mut impl BufMut) {
        self.source_table.write(buf);
        self.dest_table.write(buf);
        self.height.write(buf);
        self.table_root.write(buf);
        self.next_seq.write(buf);
        UInt(self.entries.len() as u32).write(buf);
        for entry in &self.entries {
            entry.write(buf);
        }
    }
}

impl EncodeSize for OutboxPage {
    fn encode_size(&self) -> usize {
        1 + 1
            + 8
            + 32
            + 8
            + UInt(self.entries.len() as u32).encode_size()
            + self
                .entries
                .iter()
                .map(EncodeSize::encode_size)
                .sum::<usize>()
    }
}

impl Read for OutboxPage {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let source_table = u8::read(buf)?;
        let dest_table = u8::read(buf)?;
        let height = u64::read(buf)?;
        let table_root = <[u8; 32]>::read(buf)?;
        let next_seq = u64::read(buf)?;
        let count = u32::from(UInt::<u32>::read(buf)?) as usize;
        if count > MAX_OUTBOX_PAGE {
            return Err(CodecError::InvalidLength(count));
        }
        // Each entry is at least a receipt and a length byte.
        if buf.remaining() < count.saturating_mul(CROSS_RECEIPT_SIZE + 1) {
            return Err(CodecError::EndOfBuffer);
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(ProvenReceipt::read(buf)?);
        }
        Ok(Self {
            source_table,
            dest_table,
            height,
            table_root,
            next_seq,
            entries,
        })
    }
}

impl OutboxPage {
    /// Decodes untrusted bytes (another node's answer): size first, then structure.
    pub fn decode_untrusted(bytes: &[u8]) -> Result<Self, ProofError> {
        if bytes.len() > MAX_OUTBOX_PAGE_SIZE {
            return Err(ProofError::Malformed(format!(
                "outbox page is {} bytes, more than the {MAX_OUTBOX_PAGE_SIZE}-byte limit",
                bytes.len()
            )));
        }
        Self::decode(commonware_codec::Copying(bytes))
            .map_err(|e| ProofError::Malformed(e.to_string()))
    }

    /// The encoding (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encode_size());
        self.write(&mut out);
        out
    }

    /// Checks the page as an answer to "receipts of `source_table` → `dest_table` from
    /// `from_seq`" against `certified_root` (the source table's root in a certified
    /// header at `self.height`): the pair, the root, consecutive seqs from `from_seq`,
    /// and every proof. Returns the receipts, in order, ready to be credited.
    pub fn verify(
        &self,
        source_table: u8,
        dest_table: u8,
        from_seq: u64,
        certified_root: &[u8; 32],
    ) -> Result<Vec<CrossReceipt>, ProofError> {
        if (self.source_table, self.dest_table) != (source_table, dest_table) {
            return Err(ProofError::WrongPair {
                source_table,
                dest_table,
                got_source: self.source_table,
                got_dest: self.dest_table,
            });
        }
        if &self.table_root != certified_root {
            return Err(ProofError::WrongRoot {
                certified: to_hex(certified_root),
                claimed: to_hex(&self.table_root),
            });
        }
        let mut expected = from_seq;
        let mut out = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            let r = &entry.receipt;
            if (r.source_table, r.dest_table) != (source_table, dest_table) {
                return Err(ProofError::WrongPair {
                    source_table,
                    dest_table,
                    got_source: r.source_table,
                    got_dest: r.dest_table,
                });
            }
            if r.seq != expected {
                return Err(ProofError::NotConsecutive {
                    expected,
                    got: r.seq,
                });
            }
            verify_receipt(r, &entry.proof, certified_root)?;
            out.push(r.clone());
            expected = expected.saturating_add(1);
        }
        Ok(out)
    }
}

impl<K: Kv> Ledger<K> {
    /// [`Ledger::supply_parts`] as they were after applying `height`: the conservation
    /// terms of every owned table at that height (tables without state then are left
    /// out). Lets a test or an auditor check conservation at every past height.
    pub fn supply_parts_at(&self, height: u64) -> Result<Vec<(u8, TableStats)>, StateError> {
        let mut parts = Vec::new();
        for table in self.owned_tables().iter() {
            let Some((version, _)) = self.table_at(table, height)? else {
                continue;
            };
            let reader = TableReader {
                kv: &self.kv,
                table,
            };
            let stats = match jmt::storage::TreeReader::get_value_option(
                &reader,
                version,
                crate::tables::stats_key(),
            )
            .map_err(tree_err)?
            {
                None => TableStats::default(),
                Some(bytes) => TableStats::decode(&bytes)?,
            };
            parts.push((table, stats));
        }
        Ok(parts)
    }
}

/// A table's outbox counters at a version of its tree.
fn counters_at(reader: &TableReader<'_>, version: u64) -> Result<Counters, StateError> {
    match jmt::storage::TreeReader::get_value_option(reader, version, outbox_counters_key())
        .map_err(tree_err)?
    {
        None => Ok(Counters::default()),
        Some(bytes) => Counters::decode(&bytes),
    }
}

impl<K: Kv> Ledger<K> {
    /// The outbox counters of `source` after applying `height`: `(dest, next_seq)` for
    /// every destination table it ever sent to, ascending. Advisory (unproven): it tells
    /// a destination shard which pairs have receipts it has not credited yet.
    pub fn outbox_heads(&self, source: u8, height: u64) -> Result<Vec<(u8, u64)>, StateError> {
        let (version, _) = self.table_at(source, height)?.ok_or_else(|| {
            StateError::Unavailable(format!("no state of table {source} at height {height}"))
        })?;
        let reader = TableReader {
            kv: &self.kv,
            table: source,
        };
        Ok(counters_at(&reader, version)?.iter().collect())
    }

    /// Up to `limit` (at most [`MAX_OUTBOX_PAGE`]) receipts of `source` → `dest` from
    /// `from_seq`, with proofs against `source`'s root after applying `height`. Served
    /// from whatever this ledger holds for `source` (also a table it handed off: the old
    /// owner keeps its frozen copy); the reader checks everything against a certified
    /// root, so nothing here needs trusting.
    pub fn outbox(
        &self,
        source: u8,
        dest: u8,
        from_seq: u64,
        limit: usize,
        height: u64,
    ) -> Result<OutboxPage, StateError> {
        if source == dest {
            return Err(StateError::Unavailable(format!(
                "table {source} has no outbox to itself"
            )));
        }
        let (version, table_root) = self.table_at(source, height)?.ok_or_else(|| {
            StateError::Unavailable(format!("no state of table {source} at height {height}"))
        })?;
        let reader = TableReader {
            kv: &self.kv,
            table: source,
        };
        let next_seq = counters_at(&reader, version)?.get(dest);
        let end = next_seq.min(from_seq.saturating_add(limit.min(MAX_OUTBOX_PAGE) as u64));
        let tree = Sha256Jmt::new(&reader);
        let mut entries = Vec::new();
        for seq in from_seq..end {
            let key: KeyHash = outbox_key(dest, seq);
            let (value, proof) = tree.get_with_proof(key, version).map_err(tree_err)?;
            let value = value.ok_or_else(|| {
                StateError::Corrupt(format!("outbox {source}->{dest} lacks seq {seq}"))
            })?;
            let receipt = CrossReceipt::decode_untrusted(&value)
                .map_err(|e| StateError::Corrupt(format!("outbox entry: {e}")))?;
            let proof = borsh::to_vec(&proof).map_err(|e| StateError::Tree(e.to_string()))?;
            entries.push(ProvenReceipt { receipt, proof });
        }
        Ok(OutboxPage {
            source_table: source,
            dest_table: dest,
            height,
            table_root,
            next_seq,
            entries,
        })
    }
}
