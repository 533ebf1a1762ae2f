//! What a table's tree holds besides accounts and anchors, and which tables a ledger owns.
//!
//! Every leaf that must move with a table lives in the table's own tree, under a key
//! hash `SHA-256(tag ‖ fields)`:
//!
//! | Leaf | Key preimage | Value |
//! |---|---|---|
//! | account | `"acct" ‖ public key (32)` | balance (u64) ‖ nonce (u64) |
//! | anchor | `"anch" ‖ owner (32) ‖ key` | hash (32) |
//! | table stats | `"stats"` | [`TableStats`]: 5 × u64 |
//! | outbox entry | `"outb" ‖ dest table (1) ‖ seq (u64)` | [`CrossReceipt`] (82 bytes) |
//! | outbox counter | `"onxt" ‖ dest table (1)` | next seq to this table (u64) |
//! | inbox counter | `"inxt" ‖ source table (1)` | next seq expected from that table (u64) |
//!
//! All integers are big-endian. The tags differ in their first four bytes, so no two
//! kinds of leaf can share a key preimage.
//!
//! [`CrossReceipt`]: trellis_node_types::CrossReceipt

use crate::StateError;
use jmt::KeyHash;
use trellis_node_types::{PublicKey, TABLES};

fn key(parts: &[&[u8]]) -> KeyHash {
    KeyHash::with::<sha2::Sha256>(parts.concat())
}

/// The key under which the tree stores an account.
pub(crate) fn account_key(account: &PublicKey) -> KeyHash {
    key(&[b"acct", account.as_ref()])
}

/// The key under which the tree stores `owner`'s anchor `key` (in `owner`'s table).
pub(crate) fn anchor_key(owner: &PublicKey, anchor: &[u8]) -> KeyHash {
    key(&[b"anch", owner.as_ref(), anchor])
}

/// The key of a table's [`TableStats`] (the same in every table's tree).
pub(crate) fn stats_key() -> KeyHash {
    key(&[b"stats"])
}

/// The key of the outbox entry `seq` towards `dest` (in the source table's tree).
pub(crate) fn outbox_key(dest: u8, seq: u64) -> KeyHash {
    key(&[b"outb", &[dest], &seq.to_be_bytes()])
}

/// The key of the next outbox seq towards `dest` (in the source table's tree).
pub(crate) fn outbox_next_key(dest: u8) -> KeyHash {
    key(&[b"onxt", &[dest]])
}

/// The key of the next seq the table expects from `source` (in the destination's tree).
pub(crate) fn inbox_next_key(source: u8) -> KeyHash {
    key(&[b"inxt", &[source]])
}

pub(crate) fn encode_u64(value: u64) -> Vec<u8> {
    value.to_be_bytes().to_vec()
}

pub(crate) fn decode_u64(bytes: &[u8], what: &str) -> Result<u64, StateError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StateError::Corrupt(what.to_string()))?;
    Ok(u64::from_be_bytes(arr))
}

/// A set of tables (the ones a shard owns).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TableSet([u8; 32]);

impl TableSet {
    /// Every table: an unsharded ledger.
    pub fn all() -> Self {
        Self([0xff; 32])
    }

    pub fn none() -> Self {
        Self([0; 32])
    }

    pub fn contains(&self, table: u8) -> bool {
        self.0[(table / 8) as usize] & (1 << (table % 8)) != 0
    }

    pub fn insert(&mut self, table: u8) {
        self.0[(table / 8) as usize] |= 1 << (table % 8);
    }

    pub fn remove(&mut self, table: u8) {
        self.0[(table / 8) as usize] &= !(1 << (table % 8));
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|b| b.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0 == [0; 32]
    }

    /// The tables in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..TABLES).map(|t| t as u8).filter(|t| self.contains(*t))
    }

    /// The 32-byte bitmap (bit `t % 8` of byte `t / 8` is table `t`), as persisted.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl FromIterator<u8> for TableSet {
    fn from_iter<I: IntoIterator<Item = u8>>(iter: I) -> Self {
        let mut set = Self::none();
        for t in iter {
            set.insert(t);
        }
        set
    }
}

impl std::fmt::Debug for TableSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// One table's share of the supply, and its load.
///
/// Kept as a leaf of the table's own tree, so it moves with the table. Over all 256
/// tables, `Σ balances + Σ fees + Σ sent − Σ credited` is the genesis supply at every
/// height (see [`crate::Ledger::supply_parts`]); `Σ sent − Σ credited` is the value in
/// flight between shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Sum of the balances of the table's accounts.
    pub balances: u64,
    /// The table's fee pool: fees paid by its accounts.
    pub fees: u64,
    /// Total amount of the receipts the table's outbox ever emitted.
    pub sent: u64,
    /// Total amount of the receipts ever credited to the table's accounts.
    pub credited: u64,
    /// Transactions of the table's accounts that executed successfully (the table's load).
    pub txs: u64,
}

impl TableStats {
    pub(crate) const SIZE: usize = 40;

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        for v in [self.balances, self.fees, self.sent, self.credited, self.txs] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        if bytes.len() != Self::SIZE {
            return Err(StateError::Corrupt("table stats".into()));
        }
        let field = |i: usize| decode_u64(&bytes[i * 8..i * 8 + 8], "table stats");
        Ok(Self {
            balances: field(0)?,
            fees: field(1)?,
            sent: field(2)?,
            credited: field(3)?,
            txs: field(4)?,
        })
    }

    /// This table's term of the conservation sum: `balances + fees + sent − credited`
    /// (negative for a table that received more than it sent).
    pub fn net(&self) -> i128 {
        i128::from(self.balances) + i128::from(self.fees) + i128::from(self.sent)
            - i128::from(self.credited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sets() {
        let mut s: TableSet = [0u8, 7, 8, 255].into_iter().collect();
        assert_eq!(s.len(), 4);
        assert!(s.contains(255) && s.contains(8) && !s.contains(9));
        s.remove(8);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 7, 255]);
        assert_eq!(TableSet::all().len(), 256);
        assert!(TableSet::none().is_empty());
        assert_eq!(TableSet::from_bytes(s.to_bytes()), s);
    }

    #[test]
    fn stats_round_trip() {
        let s = TableStats {
            balances: 1,
            fees: 2,
            sent: u64::MAX,
            credited: 4,
            txs: 5,
        };
        assert_eq!(TableStats::decode(&s.encode()).unwrap(), s);
        assert!(TableStats::decode(&[0; 39]).is_err());
        assert_eq!(s.net(), 1 + 2 + i128::from(u64::MAX) - 4);
    }
}
