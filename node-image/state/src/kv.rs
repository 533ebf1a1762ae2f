//! The key-value store under the ledger: a small trait, redb behind it.
//!
//! Writes only happen through [`Kv::commit`], which applies a whole batch atomically:
//! a block's state changes, its Merkle nodes and its receipts land together or not at all,
//! so a node killed at any moment restarts from a consistent finalized height.

use redb::ReadableDatabase;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Separate key spaces of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Space {
    /// Jellyfish Merkle tree nodes, each leaf with its value.
    Nodes,
    /// Heights, roots, receipts and other bookkeeping.
    Meta,
}

/// A storage failure (I/O, corruption). Fatal for the node: it stops instead of
/// continuing with state it cannot trust.
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct KvError(pub String);

/// Changes applied by one [`Kv::commit`].
#[derive(Default, Debug)]
pub struct WriteBatch {
    /// In order; `None` deletes.
    pub(crate) writes: Vec<(Space, Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteBatch {
    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.writes.push((space, key, Some(value)));
    }

    pub fn delete(&mut self, space: Space, key: Vec<u8>) {
        self.writes.push((space, key, None));
    }

    /// The writes, in order (`None` deletes): for stores layered over another one.
    pub fn into_writes(self) -> impl Iterator<Item = (Space, Vec<u8>, Option<Vec<u8>>)> {
        self.writes.into_iter()
    }
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

type MemMap = BTreeMap<(Space, Vec<u8>), Vec<u8>>;

/// What the ledger needs from storage.
pub trait Kv: Send + Sync + 'static {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// The entry with the greatest key in `from..=to`.
    fn last_in(&self, space: Space, from: &[u8], to: &[u8]) -> Result<Option<Entry>, KvError>;
    /// The entry with the smallest key in `from..=to`.
    fn first_in(&self, space: Space, from: &[u8], to: &[u8]) -> Result<Option<Entry>, KvError>;
    /// Applies every write of `batch` atomically and durably.
    fn commit(&self, batch: WriteBatch) -> Result<(), KvError>;
}

const NODES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("jmt_nodes");
const META: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("meta");

fn definition(space: Space) -> redb::TableDefinition<'static, &'static [u8], &'static [u8]> {
    match space {
        Space::Nodes => NODES,
        Space::Meta => META,
    }
}

fn err(e: impl std::fmt::Display) -> KvError {
    KvError(e.to_string())
}

/// redb: one file, ACID transactions with durable commits.
pub struct RedbKv {
    db: redb::Database,
}

impl RedbKv {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, KvError> {
        let db = redb::Database::create(path).map_err(err)?;
        // Create the tables up front so that readers never see them missing.
        let txn = db.begin_write().map_err(err)?;
        for space in [Space::Nodes, Space::Meta] {
            txn.open_table(definition(space)).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(Self { db })
    }
}

impl Kv for RedbKv {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(definition(space)).map_err(err)?;
        Ok(table.get(key).map_err(err)?.map(|v| v.value().to_vec()))
    }

    fn last_in(&self, space: Space, from: &[u8], to: &[u8]) -> Result<Option<Entry>, KvError> {
        if from > to {
            return Ok(None);
        }
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(definition(space)).map_err(err)?;
        let mut range = table.range(from..=to).map_err(err)?;
        match range.next_back() {
            Some(entry) => {
                let (k, v) = entry.map_err(err)?;
                Ok(Some((k.value().to_vec(), v.value().to_vec())))
            }
            None => Ok(None),
        }
    }

    fn first_in(&self, space: Space, from: &[u8], to: &[u8]) -> Result<Option<Entry>, KvError> {
        if from > to {
            return Ok(None);
        }
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(definition(space)).map_err(err)?;
        let mut range = table.range(from..=to).map_err(err)?;
        match range.next() {
            Some(entry) => {
                let (k, v) = entry.map_err(err)?;
                Ok(Some((k.value().to_vec(), v.value().to_vec())))
            }
            None => Ok(None),
        }
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), KvError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut nodes = txn.open_table(NODES).map_err(err)?;
            let mut meta = txn.open_table(META).map_err(err)?;
            for (space, key, value) in &batch.writes {
                let table = match space {
                    Space::Nodes => &mut nodes,
                    Space::Meta => &mut meta,
                };
                match value {
                    Some(value) => {
                        table
                            .insert(key.as_slice(), value.as_slice())
                            .map_err(err)?;
                    }
                    None => {
                        table.remove(key.as_slice()).map_err(err)?;
                    }
                }
            }
        }
        txn.commit().map_err(err)
    }
}

/// An in-memory store with the same semantics, for tests and simulations that model
/// durability by keeping the store across a simulated crash.
#[derive(Clone, Default)]
pub struct MemKv {
    inner: Arc<Mutex<MemMap>>,
}

impl MemKv {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, MemMap>, KvError> {
        self.inner
            .lock()
            .map_err(|_| KvError("poisoned lock".into()))
    }
}

impl Kv for MemKv {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.lock()?.get(&(space, key.to_vec())).cloned())
    }

    fn last_in(&self, space: Space, from: &[u8], to: &[u8]) -> Result<Option<Entry>, KvError> {
        // BTreeMap::range panics on an inverted range; an inverted range is simply empty.
        if from > to {
            return Ok(None);
        }
        Ok(self
            .lock()?
            .range((space, from.to_vec())..=(space, to.to_vec()))
            .next_back()
            .map(|((_, k), v)| (k.clone(), v.clone())))
    }

    fn first_in(&self, space: Space, from: &[u8], to: &[u8]) -> Result<Option<Entry>, KvError> {
        if from > to {
            return Ok(None);
        }
        Ok(self
            .lock()?
            .range((space, from.to_vec())..=(space, to.to_vec()))
            .next()
            .map(|((_, k), v)| (k.clone(), v.clone())))
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), KvError> {
        let mut map = self.lock()?;
        for (space, key, value) in batch.writes {
            match value {
                Some(value) => map.insert((space, key), value),
                None => map.remove(&(space, key)),
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(kv: &dyn Kv) {
        let mut batch = WriteBatch::default();
        batch.put(Space::Nodes, vec![1, 0], b"a".to_vec());
        batch.put(Space::Nodes, vec![1, 5], b"b".to_vec());
        batch.put(Space::Nodes, vec![2, 0], b"c".to_vec());
        batch.put(Space::Meta, vec![1, 0], b"m".to_vec());
        batch.put(Space::Meta, vec![9], b"gone".to_vec());
        batch.delete(Space::Meta, vec![9]);
        kv.commit(batch).unwrap();
        assert_eq!(kv.get(Space::Meta, &[9]).unwrap(), None);
        assert_eq!(kv.get(Space::Nodes, &[1, 0]).unwrap(), Some(b"a".to_vec()));
        assert_eq!(kv.get(Space::Meta, &[1, 5]).unwrap(), None);
        assert_eq!(
            kv.last_in(Space::Nodes, &[1, 0], &[1, 4]).unwrap(),
            Some((vec![1, 0], b"a".to_vec()))
        );
        assert_eq!(
            kv.last_in(Space::Nodes, &[1, 0], &[1, 255]).unwrap(),
            Some((vec![1, 5], b"b".to_vec()))
        );
        assert_eq!(kv.last_in(Space::Nodes, &[3], &[4]).unwrap(), None);
        assert_eq!(
            kv.first_in(Space::Nodes, &[1, 1], &[2, 0]).unwrap(),
            Some((vec![1, 5], b"b".to_vec()))
        );
        assert_eq!(
            kv.first_in(Space::Nodes, &[1], &[1, 255]).unwrap(),
            Some((vec![1, 0], b"a".to_vec()))
        );
        assert_eq!(kv.first_in(Space::Nodes, &[2, 1], &[9]).unwrap(), None);
        // An empty (inverted) range is empty, not an error.
        assert_eq!(kv.first_in(Space::Nodes, &[9], &[1]).unwrap(), None);
    }

    #[test]
    fn redb_and_memory_agree() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&RedbKv::open(&dir.path().join("db")).unwrap());
        exercise(&MemKv::default());
    }

    #[test]
    fn redb_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let kv = RedbKv::open(&path).unwrap();
            let mut batch = WriteBatch::default();
            batch.put(Space::Meta, b"k".to_vec(), b"v".to_vec());
            kv.commit(batch).unwrap();
        }
        let kv = RedbKv::open(&path).unwrap();
        assert_eq!(kv.get(Space::Meta, b"k").unwrap(), Some(b"v".to_vec()));
    }
}
