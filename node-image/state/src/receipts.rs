//! Where the receipts of finalized transactions are stored.
//!
//! A receipt row per transaction keyed by its hash put each of a block's receipts on its
//! own page of the store's B-tree (the keys are random), so every transfer rewrote a
//! whole 4 KiB page for a 43-byte row (see docs/node-performance.md, "the disk"). Now:
//!
//! - each block writes **one row** (`rb` ‖ height): its transaction hashes in block order
//!   and the failed ones' errors. Appended at the end of the key space: a block's rows
//!   share pages.
//! - the **hash index** (`ri` ‖ hash → height ‖ position) is written for many blocks at
//!   once, when [`INDEX_BATCH`] transactions have accumulated, so one commit's page
//!   rewrites serve many transactions. Until then the not yet indexed blocks' hashes are
//!   held in memory; they are rebuilt from the block rows when the ledger opens (the
//!   rows are committed atomically with their block), so a crash loses nothing.
//! - stores written before this layout keep their per-transaction rows (`rc` ‖ hash),
//!   which are still read; opening such a store marks every height up to its current
//!   one as indexed by those rows.

use crate::{Kv, Receipt, Space, StateError, WriteBatch, read_u64};
use std::collections::HashMap;

/// Transactions whose index rows are written together.
pub const INDEX_BATCH: usize = 16_384;

/// Every height up to this one has its transactions in the hash index (or in the
/// per-transaction rows of the earlier layout).
const META_INDEXED: &[u8] = b"receipts-indexed";

fn key_block(height: u64) -> Vec<u8> {
    [b"rb".as_slice(), &height.to_be_bytes()].concat()
}
fn key_index(hash: &[u8]) -> Vec<u8> {
    [b"ri".as_slice(), hash].concat()
}
/// The earlier layout's per-transaction row.
fn key_legacy(hash: &[u8]) -> Vec<u8> {
    [b"rc".as_slice(), hash].concat()
}

/// A block's receipts as stored: the count, the hashes, then `(position, error)` of each
/// failed transaction (u32 big-endian position and length, UTF-8 error).
fn encode_block(hashes: &[[u8; 32]], failures: &[(u32, String)]) -> Vec<u8> {
    let size = 4 + 32 * hashes.len() + failures.iter().map(|f| 8 + f.1.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(hashes.len() as u32).to_be_bytes());
    for h in hashes {
        out.extend_from_slice(h);
    }
    for (position, error) in failures {
        out.extend_from_slice(&position.to_be_bytes());
        out.extend_from_slice(&(error.len() as u32).to_be_bytes());
        out.extend_from_slice(error.as_bytes());
    }
    out
}

/// A stored block row, decoded lazily.
struct BlockRow<'a>(&'a [u8]);

impl<'a> BlockRow<'a> {
    fn corrupt() -> StateError {
        StateError::Corrupt("block receipts".into())
    }

    fn split(&self) -> Result<(&'a [u8], &'a [u8]), StateError> {
        let (count, rest) = self.0.split_at_checked(4).ok_or_else(Self::corrupt)?;
        let count = u32::from_be_bytes(count.try_into().map_err(|_| Self::corrupt())?) as usize;
        rest.split_at_checked(count.checked_mul(32).ok_or_else(Self::corrupt)?)
            .ok_or_else(Self::corrupt)
    }

    fn hashes(&self) -> Result<impl Iterator<Item = [u8; 32]> + 'a, StateError> {
        let (hashes, _) = self.split()?;
        Ok(hashes
            .chunks_exact(32)
            .map(|h| h.try_into().unwrap_or([0; 32])))
    }

    /// The receipt of the transaction at `position`, which must have `hash`.
    fn receipt(&self, height: u64, position: u32, hash: &[u8]) -> Result<Receipt, StateError> {
        let (hashes, mut failures) = self.split()?;
        let at = position as usize * 32;
        if hashes.get(at..at + 32) != Some(hash) {
            return Err(Self::corrupt());
        }
        while !failures.is_empty() {
            let (head, rest) = failures.split_at_checked(8).ok_or_else(Self::corrupt)?;
            let p = u32::from_be_bytes(head[..4].try_into().map_err(|_| Self::corrupt())?);
            let len = u32::from_be_bytes(head[4..].try_into().map_err(|_| Self::corrupt())?);
            let (error, rest) = rest
                .split_at_checked(len as usize)
                .ok_or_else(Self::corrupt)?;
            if p == position {
                return Ok(Receipt {
                    height,
                    success: false,
                    error: String::from_utf8_lossy(error).into_owned(),
                });
            }
            failures = rest;
        }
        Ok(Receipt {
            height,
            success: true,
            error: String::new(),
        })
    }
}

fn encode_location(height: u64, position: u32) -> Vec<u8> {
    [height.to_be_bytes().as_slice(), &position.to_be_bytes()].concat()
}

fn decode_location(bytes: &[u8]) -> Result<(u64, u32), StateError> {
    let corrupt = || StateError::Corrupt("receipt index".into());
    let (height, position) = bytes.split_at_checked(8).ok_or_else(corrupt)?;
    Ok((
        u64::from_be_bytes(height.try_into().map_err(|_| corrupt())?),
        u32::from_be_bytes(position.try_into().map_err(|_| corrupt())?),
    ))
}

/// The hashes of the blocks above the indexed height, by hash (the latest wins).
pub(crate) struct Receipts {
    recent: HashMap<[u8; 32], (u64, u32)>,
    /// [`INDEX_BATCH`] (smaller in tests).
    batch: usize,
}

impl Default for Receipts {
    fn default() -> Self {
        Self {
            recent: HashMap::new(),
            batch: INDEX_BATCH,
        }
    }
}

/// A block's receipts staged in its commit batch; applied to [`Receipts`] once the
/// commit succeeded.
pub(crate) struct Staged {
    height: u64,
    hashes: Vec<[u8; 32]>,
    /// The index was written up to this block: forget the in-memory part.
    flushed: bool,
}

impl Receipts {
    /// Loads the hashes of the blocks above the indexed height. A store of the earlier
    /// layout (no indexed height yet) is marked indexed up to `height` first.
    pub(crate) fn open(kv: &dyn Kv, height: Option<u64>) -> Result<Self, StateError> {
        let mut receipts = Self::default();
        let Some(height) = height else {
            return Ok(receipts);
        };
        let indexed = match read_u64(kv, META_INDEXED)? {
            Some(indexed) => indexed,
            None => {
                let mut batch = WriteBatch::default();
                batch.put(
                    Space::Meta,
                    META_INDEXED.to_vec(),
                    height.to_be_bytes().to_vec(),
                );
                kv.commit(batch)?;
                height
            }
        };
        for h in indexed.saturating_add(1)..=height {
            let Some(row) = kv.get(Space::Meta, &key_block(h))? else {
                continue;
            };
            for (position, hash) in BlockRow(&row).hashes()?.enumerate() {
                receipts.recent.insert(hash, (h, position as u32));
            }
        }
        Ok(receipts)
    }

    /// Marks a new store (genesis) as indexed up to height 0.
    pub(crate) fn genesis(batch: &mut WriteBatch) {
        batch.put(
            Space::Meta,
            META_INDEXED.to_vec(),
            0u64.to_be_bytes().to_vec(),
        );
    }

    /// Adds block `height`'s receipts to `batch`, and the hash index of every block not
    /// indexed yet once [`INDEX_BATCH`] transactions have accumulated.
    pub(crate) fn stage(
        &self,
        height: u64,
        hashes: Vec<[u8; 32]>,
        failures: &[(u32, String)],
        batch: &mut WriteBatch,
    ) -> Staged {
        batch.put(
            Space::Meta,
            key_block(height),
            encode_block(&hashes, failures),
        );
        let flushed = self.recent.len() + hashes.len() >= self.batch;
        if flushed {
            // Older blocks first, so that a hash included again later maps to its latest.
            for (hash, (h, position)) in &self.recent {
                batch.put(Space::Meta, key_index(hash), encode_location(*h, *position));
            }
            let mut latest: HashMap<&[u8; 32], u32> = HashMap::new();
            for (position, hash) in hashes.iter().enumerate() {
                latest.insert(hash, position as u32);
            }
            for (hash, position) in latest {
                batch.put(
                    Space::Meta,
                    key_index(hash),
                    encode_location(height, position),
                );
            }
            batch.put(
                Space::Meta,
                META_INDEXED.to_vec(),
                height.to_be_bytes().to_vec(),
            );
        }
        Staged {
            height,
            hashes,
            flushed,
        }
    }

    /// The block of `staged` is committed.
    pub(crate) fn committed(&mut self, staged: Staged) {
        if staged.flushed {
            self.recent.clear();
            return;
        }
        for (position, hash) in staged.hashes.into_iter().enumerate() {
            self.recent.insert(hash, (staged.height, position as u32));
        }
    }

    /// The receipt of a committed transaction.
    pub(crate) fn get(&self, kv: &dyn Kv, hash: &[u8]) -> Result<Option<Receipt>, StateError> {
        let location = match <&[u8; 32]>::try_from(hash)
            .ok()
            .and_then(|h| self.recent.get(h))
        {
            Some(location) => Some(*location),
            None => match kv.get(Space::Meta, &key_index(hash))? {
                Some(bytes) => Some(decode_location(&bytes)?),
                None => None,
            },
        };
        let Some((height, position)) = location else {
            return match kv.get(Space::Meta, &key_legacy(hash))? {
                Some(bytes) => Ok(Some(Receipt::decode(&bytes)?)),
                None => Ok(None),
            };
        };
        let row = kv
            .get(Space::Meta, &key_block(height))?
            .ok_or_else(|| StateError::Corrupt(format!("receipts of height {height}")))?;
        BlockRow(&row).receipt(height, position, hash).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemKv;

    fn hash(i: u8) -> [u8; 32] {
        [i; 32]
    }

    /// Commits block `height` with `hashes` (failures: positions with error "e<pos>").
    fn apply(kv: &MemKv, receipts: &mut Receipts, height: u64, hashes: &[u8], failed: &[u32]) {
        let failures: Vec<(u32, String)> = failed.iter().map(|p| (*p, format!("e{p}"))).collect();
        let mut batch = WriteBatch::default();
        let staged = receipts.stage(
            height,
            hashes.iter().map(|i| hash(*i)).collect(),
            &failures,
            &mut batch,
        );
        kv.commit(batch).unwrap();
        receipts.committed(staged);
    }

    /// Real: a `MemKv` store, reopened like a restarted node; receipts are read back before
    /// and after the index is written, and from an earlier layout's row.
    #[test]
    fn receipts_are_found_before_and_after_indexing_and_after_reopening() {
        let kv = MemKv::default();
        let mut genesis = WriteBatch::default();
        Receipts::genesis(&mut genesis);
        kv.commit(genesis).unwrap();
        let mut receipts = Receipts::open(&kv, Some(0)).unwrap();
        apply(&kv, &mut receipts, 1, &[1, 2, 3], &[1]);
        // Hash 1 again in a later block (it failed before, say): the latest receipt counts.
        apply(&kv, &mut receipts, 2, &[4, 1], &[]);
        let check = |r: &Receipts| {
            let get = |i: u8| r.get(&kv, &hash(i)).unwrap();
            assert_eq!(
                get(2).unwrap(),
                Receipt {
                    height: 1,
                    success: false,
                    error: "e1".into()
                }
            );
            assert_eq!(
                get(3).unwrap(),
                Receipt {
                    height: 1,
                    success: true,
                    error: String::new()
                }
            );
            assert_eq!(
                get(1).unwrap(),
                Receipt {
                    height: 2,
                    success: true,
                    error: String::new()
                }
            );
            assert_eq!(get(9), None);
        };
        check(&receipts);
        // Nothing indexed yet: a restart rebuilds the recent hashes from the block rows.
        assert!(kv.get(Space::Meta, &key_index(&hash(2))).unwrap().is_none());
        check(&Receipts::open(&kv, Some(2)).unwrap());
        // A block that fills the batch writes the index for every block so far.
        receipts.batch = 8;
        apply(&kv, &mut receipts, 3, &[10, 11], &[]);
        assert!(kv.get(Space::Meta, &key_index(&hash(2))).unwrap().is_none());
        apply(&kv, &mut receipts, 4, &[12, 13, 14], &[]);
        assert!(kv.get(Space::Meta, &key_index(&hash(2))).unwrap().is_some());
        assert!(receipts.recent.is_empty());
        let height = 5;
        check(&receipts);
        check(&Receipts::open(&kv, Some(height - 1)).unwrap());
        // An earlier layout's per-transaction row is still read.
        let mut batch = WriteBatch::default();
        let legacy = Receipt {
            height: 7,
            success: true,
            error: String::new(),
        };
        batch.put(Space::Meta, key_legacy(&hash(8)), legacy.encode());
        kv.commit(batch).unwrap();
        assert_eq!(receipts.get(&kv, &hash(8)).unwrap(), Some(legacy));
    }

    #[test]
    fn corrupt_rows_are_errors_not_panics() {
        for row in [
            vec![],
            vec![0, 0, 0, 2, 1],
            vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9],
        ] {
            assert!(BlockRow(&row).receipt(1, 0, &[0; 32]).is_err());
            let _ = BlockRow(&row).hashes().map(|h| h.count());
        }
        assert!(decode_location(&[1, 2]).is_err());
    }
}
