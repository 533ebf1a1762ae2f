//! Transactions waiting for a block.
//!
//! Admission runs every check that does not need a block: size and encoding, chain id,
//! signature, then nonce and balance against finalized state (counting the sender's
//! transactions already queued). The pool is bounded; when it is full a submission is
//! refused with [`AdmitError::Full`] so that clients back off instead of queueing forever.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;
use trellis_node_state::{ExecError, Kv, Ledger};
use trellis_node_types::{Digest, PublicKey, Tx, TxError};

/// Why a transaction was not admitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmitError {
    #[error(transparent)]
    Invalid(#[from] TxError),
    #[error(transparent)]
    State(#[from] ExecError),
    #[error("mempool is full ({0} transactions); retry later")]
    Full(usize),
    #[error("transaction already known")]
    Known,
    /// Sharded networks: the transaction belongs to another shard, or needs what this
    /// node does not do yet (the message says which).
    #[error("{0}")]
    WrongShard(String),
}

/// Boxed in the queue: a `Tx` is ~500 bytes (two public keys with their decompressed
/// points), and a `BTreeMap` node shifts its entries on every insert and removal (the
/// lowest nonce leaves at each finalization), so entries stay pointer-sized there.
struct Entry {
    tx: Box<Tx>,
    /// The transaction's hash, computed once at admission.
    hash: Digest,
    admitted: Instant,
}

/// The pool: per sender, transactions ordered by nonce.
pub struct Mempool {
    chain_id: String,
    bound: usize,
    by_sender: BTreeMap<PublicKey, BTreeMap<u64, Entry>>,
    /// Hashes of the queued transactions. A hash covers the sender and the nonce, so a
    /// committed transaction with a queued hash names its own entry (no 192-byte key
    /// copied per admission here).
    hashes: HashSet<Digest>,
    /// Hashes of transactions whose signatures this node checked in a block it verified,
    /// until that block is finalized: gossip bringing one of them in between is admitted
    /// without a second verification. A hash covers the signature, so what was checked
    /// stays checked. A memo only: bounded by [`CHECKED_BOUND`], and forgetting costs
    /// one verification, never a wrong answer.
    checked: HashSet<Digest>,
}

/// Most remembered signature-checked hashes (a few blocks' worth at the largest size).
const CHECKED_BOUND: usize = 65_536;

impl Mempool {
    pub fn new(chain_id: &str, bound: usize) -> Self {
        Self {
            chain_id: chain_id.to_string(),
            bound,
            by_sender: BTreeMap::new(),
            hashes: HashSet::new(),
            checked: HashSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Transactions queued for `sender`.
    /// Waiting transactions per table of their sender (the per-table load metric).
    pub fn depth_by_table(&self) -> [usize; 256] {
        let mut depth = [0; 256];
        for (sender, queue) in &self.by_sender {
            depth[usize::from(trellis_node_types::table_of(sender))] += queue.len();
        }
        depth
    }

    pub fn pending_for(&self, sender: &PublicKey) -> usize {
        self.by_sender.get(sender).map_or(0, BTreeMap::len)
    }

    /// When a queued transaction was admitted here (the stage timings' ages).
    pub fn admitted_at(&self, tx: &Tx) -> Option<Instant> {
        let entry = self
            .by_sender
            .get(&tx.unsigned.from)?
            .get(&tx.unsigned.nonce)?;
        (entry.hash == tx.hash()).then_some(entry.admitted)
    }

    pub fn contains(&self, hash: &Digest) -> bool {
        self.hashes.contains(hash)
    }

    /// Remembers transactions whose signatures were checked with a block this node
    /// verified (see the `checked` field).
    pub fn remember_checked(&mut self, hashes: impl ExactSizeIterator<Item = Digest>) {
        if self.checked.len() + hashes.len() > CHECKED_BOUND {
            self.checked.clear();
        }
        self.checked.extend(hashes);
    }

    /// Whether this transaction's signature was checked in a block this node verified
    /// and has not finalized yet.
    pub fn signature_checked(&self, hash: &Digest) -> bool {
        self.checked.contains(hash)
    }

    /// Whether `tx`'s nonce is already used by its sender: committed, or queued here
    /// under some transaction. Admission refuses such a transaction (its nonce must be
    /// the next one), and stays refusing it: finalization moves nonces from the queue
    /// to the account, never lowers their sum.
    pub fn nonce_used<K: Kv>(&self, tx: &Tx, ledger: &Ledger<K>) -> bool {
        let from = &tx.unsigned.from;
        let queued = self.by_sender.get(from).map_or(0, |q| q.len() as u64);
        ledger
            .account(from)
            .is_ok_and(|account| tx.unsigned.nonce < account.nonce.saturating_add(queued))
    }

    /// Admits a transaction after all checks; returns its hash.
    pub fn admit<K: Kv>(&mut self, tx: Tx, ledger: &Ledger<K>) -> Result<Digest, AdmitError> {
        self.admit_checked(tx, ledger, false)
    }

    /// [`Self::admit`] for a transaction whose signature the caller already verified
    /// (a gossip batch checked with one batch verification).
    pub fn admit_verified<K: Kv>(
        &mut self,
        tx: Tx,
        ledger: &Ledger<K>,
    ) -> Result<Digest, AdmitError> {
        self.admit_checked(tx, ledger, true)
    }

    fn admit_checked<K: Kv>(
        &mut self,
        tx: Tx,
        ledger: &Ledger<K>,
        signature_verified: bool,
    ) -> Result<Digest, AdmitError> {
        let hash = tx.hash();
        if self.hashes.contains(&hash) {
            return Err(AdmitError::Known);
        }
        if self.hashes.len() >= self.bound {
            return Err(AdmitError::Full(self.bound));
        }
        if signature_verified {
            if tx.unsigned.chain_id != self.chain_id {
                return Err(AdmitError::Invalid(TxError::WrongChain {
                    expected: self.chain_id.clone(),
                    got: tx.unsigned.chain_id.clone(),
                }));
            }
        } else {
            tx.check_stateless(&self.chain_id)?;
        }
        let queued = self
            .by_sender
            .get(&tx.unsigned.from)
            .map_or(0, |q| q.len() as u64);
        ledger.check_admission(&tx, queued)?;
        let nonce = tx.unsigned.nonce;
        self.by_sender
            .entry(tx.unsigned.from.clone())
            .or_default()
            .insert(
                nonce,
                Entry {
                    tx: Box::new(tx),
                    hash,
                    admitted: Instant::now(),
                },
            );
        self.hashes.insert(hash);
        Ok(hash)
    }

    /// Up to `limit` transactions for a block, senders interleaved, each sender's in nonce
    /// order, skipping those in `exclude` (already in an unfinalized ancestor).
    pub fn select(&self, limit: usize, exclude: &HashSet<Digest>) -> Vec<Tx> {
        let mut queues: Vec<_> = self.by_sender.values().map(|q| q.values()).collect();
        let mut out = Vec::new();
        while out.len() < limit && !queues.is_empty() {
            queues.retain_mut(|q| match q.next() {
                Some(entry) => {
                    if out.len() < limit && !exclude.contains(&entry.hash) {
                        out.push(Tx::clone(&entry.tx));
                    }
                    true
                }
                None => false,
            });
        }
        out
    }

    /// Removes and returns the transactions `moved` selects, each sender's in nonce order:
    /// at an epoch switch, those this shard no longer executes (their table moved away),
    /// to be forwarded to their new shard.
    pub fn take_where(&mut self, mut moved: impl FnMut(&Tx) -> bool) -> Vec<Tx> {
        let mut out = Vec::new();
        for queue in self.by_sender.values_mut() {
            let gone: Vec<u64> = queue
                .iter()
                .filter(|(_, e)| moved(&e.tx))
                .map(|(n, _)| *n)
                .collect();
            for nonce in gone {
                if let Some(entry) = queue.remove(&nonce) {
                    self.hashes.remove(&entry.hash);
                    out.push(*entry.tx);
                }
            }
        }
        self.by_sender.retain(|_, q| !q.is_empty());
        out
    }

    /// Removes what a finalized block made obsolete: its own transactions and every
    /// queued transaction whose nonce is now below its sender's account nonce. Returns the
    /// admission times of the committed transactions that were in the pool.
    pub fn on_finalized<K: Kv>(&mut self, txs: &[Tx], ledger: &Ledger<K>) -> Vec<Instant> {
        let mut admitted = Vec::with_capacity(txs.len());
        let mut senders = HashSet::with_capacity(txs.len());
        for tx in txs {
            let hash = tx.hash();
            // Committed: gossip of it is refused by its nonce from now on.
            self.checked.remove(&hash);
            if self.hashes.remove(&hash)
                && let Some(queue) = self.by_sender.get_mut(&tx.unsigned.from)
                && let Some(entry) = queue.remove(&tx.unsigned.nonce)
            {
                admitted.push(entry.admitted);
            }
            senders.insert(&tx.unsigned.from);
        }
        for sender in senders {
            let Ok(account) = ledger.account(sender) else {
                continue;
            };
            if let Some(queue) = self.by_sender.get_mut(sender) {
                let stale: Vec<u64> = queue.range(..account.nonce).map(|(n, _)| *n).collect();
                for nonce in stale {
                    if let Some(entry) = queue.remove(&nonce) {
                        self.hashes.remove(&entry.hash);
                    }
                }
                if queue.is_empty() {
                    self.by_sender.remove(sender);
                }
            }
        }
        admitted
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use trellis_node_state::MemKv;
    use trellis_node_types::{PrivateKey, Signer, TxKind, UnsignedTx, test_key};

    /// A signed transfer to a fixed receiver (also used by the gossip tests).
    pub(crate) fn transfer(from: &PrivateKey, nonce: u64, amount: u64, chain: &str) -> Tx {
        UnsignedTx {
            chain_id: chain.into(),
            from: from.public_key(),
            nonce,
            fee: 0,
            kind: TxKind::Transfer {
                to: test_key(99).public_key(),
                amount,
            },
        }
        .sign(from)
    }

    fn ledger(keys: &[PrivateKey]) -> Ledger<MemKv> {
        let mut l = Ledger::open(MemKv::default()).unwrap();
        let balances: Vec<_> = keys.iter().map(|k| (k.public_key(), 100)).collect();
        l.init_genesis(&balances).unwrap();
        l
    }

    #[test]
    fn admission_checks_everything_and_bounds_the_pool() {
        let keys: Vec<_> = (0..3).map(test_key).collect();
        let l = ledger(&keys);
        let mut pool = Mempool::new("c", 3);
        pool.admit(transfer(&keys[0], 0, 10, "c"), &l).unwrap();
        assert_eq!(
            pool.admit(transfer(&keys[0], 0, 10, "c"), &l),
            Err(AdmitError::Known)
        );
        // Queued nonces count: the next one must be 1.
        assert!(matches!(
            pool.admit(transfer(&keys[0], 0, 11, "c"), &l),
            Err(AdmitError::State(ExecError::BadNonce { expected: 1, .. }))
        ));
        pool.admit(transfer(&keys[0], 1, 10, "c"), &l).unwrap();
        assert!(matches!(
            pool.admit(transfer(&keys[1], 0, 10, "other"), &l),
            Err(AdmitError::Invalid(TxError::WrongChain { .. }))
        ));
        assert!(matches!(
            pool.admit(transfer(&keys[1], 0, 1_000, "c"), &l),
            Err(AdmitError::State(ExecError::InsufficientFunds { .. }))
        ));
        let mut forged = transfer(&keys[1], 0, 1, "c");
        forged.unsigned.from = keys[2].public_key();
        assert_eq!(
            pool.admit(forged, &l),
            Err(AdmitError::Invalid(TxError::BadSignature))
        );
        pool.admit(transfer(&keys[1], 0, 10, "c"), &l).unwrap();
        assert_eq!(
            pool.admit(transfer(&keys[2], 0, 10, "c"), &l),
            Err(AdmitError::Full(3))
        );
        assert_eq!(pool.len(), 3);
    }

    #[test]
    fn preverified_admission_still_checks_chain_nonce_and_funds() {
        let keys: Vec<_> = (0..1).map(test_key).collect();
        let l = ledger(&keys);
        let mut pool = Mempool::new("c", 10);
        assert!(matches!(
            pool.admit_verified(transfer(&keys[0], 0, 1, "other"), &l),
            Err(AdmitError::Invalid(TxError::WrongChain { .. }))
        ));
        assert!(matches!(
            pool.admit_verified(transfer(&keys[0], 3, 1, "c"), &l),
            Err(AdmitError::State(ExecError::BadNonce { .. }))
        ));
        assert!(matches!(
            pool.admit_verified(transfer(&keys[0], 0, 1_000, "c"), &l),
            Err(AdmitError::State(ExecError::InsufficientFunds { .. }))
        ));
        pool.admit_verified(transfer(&keys[0], 0, 1, "c"), &l)
            .unwrap();
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn a_used_nonce_is_one_admission_refuses() {
        let keys: Vec<_> = (0..2).map(test_key).collect();
        let mut l = ledger(&keys);
        let mut pool = Mempool::new("c", 100);
        let a: Vec<_> = (0..3).map(|n| transfer(&keys[0], n, 1, "c")).collect();
        pool.admit(a[0].clone(), &l).unwrap();
        pool.admit(a[1].clone(), &l).unwrap();
        // Queued nonces 0 and 1: another transaction on either is refused, 2 is next.
        for nonce in [0, 1] {
            let other = transfer(&keys[0], nonce, 2, "c");
            assert!(pool.nonce_used(&other, &l));
            assert!(matches!(
                pool.admit(other, &l),
                Err(AdmitError::State(ExecError::BadNonce { .. }))
            ));
        }
        assert!(!pool.nonce_used(&a[2], &l));
        // Committed nonces stay used once they leave the queue.
        l.apply_block(1, &[a[0].clone()]).unwrap();
        pool.on_finalized(&[a[0].clone()], &l);
        assert!(pool.nonce_used(&a[0], &l));
        assert!(pool.nonce_used(&transfer(&keys[0], 1, 5, "c"), &l));
        assert!(!pool.nonce_used(&a[2], &l));
        pool.admit(a[2].clone(), &l).unwrap();
        // Another sender's nonces are its own.
        assert!(!pool.nonce_used(&transfer(&keys[1], 0, 1, "c"), &l));
    }

    #[test]
    fn selection_interleaves_and_finalization_prunes() {
        let keys: Vec<_> = (0..2).map(test_key).collect();
        let mut l = ledger(&keys);
        let mut pool = Mempool::new("c", 100);
        let a: Vec<_> = (0..3).map(|n| transfer(&keys[0], n, 1, "c")).collect();
        let b: Vec<_> = (0..2).map(|n| transfer(&keys[1], n, 1, "c")).collect();
        for tx in a.iter().chain(b.iter()) {
            pool.admit(tx.clone(), &l).unwrap();
        }
        let picked = pool.select(10, &HashSet::new());
        assert_eq!(picked.len(), 5);
        let exclude: HashSet<_> = [a[0].hash()].into();
        assert_eq!(pool.select(10, &exclude).len(), 4);
        assert_eq!(pool.select(2, &HashSet::new()).len(), 2);

        l.apply_block(1, &[a[0].clone(), a[1].clone()]).unwrap();
        let admitted = pool.on_finalized(&[a[0].clone(), a[1].clone()], &l);
        assert_eq!(admitted.len(), 2);
        assert_eq!(pool.len(), 3);
        assert!(pool.contains(&a[2].hash()));
        assert!(!pool.contains(&a[0].hash()));
    }

    /// Real: a finalized block that commits another transaction on a queued nonce (one
    /// this node never saw) prunes the queued one as stale: its entry and its hash go
    /// (admission and the bound forget it), and the sender's later nonces stay queued.
    #[test]
    fn a_conflicting_commit_prunes_the_queued_transaction() {
        let keys: Vec<_> = (0..1).map(test_key).collect();
        let mut l = ledger(&keys);
        let mut pool = Mempool::new("c", 100);
        let queued: Vec<_> = (0..2).map(|n| transfer(&keys[0], n, 1, "c")).collect();
        for tx in &queued {
            pool.admit(tx.clone(), &l).unwrap();
        }
        let rival = transfer(&keys[0], 0, 2, "c");
        l.apply_block(1, std::slice::from_ref(&rival)).unwrap();
        let admitted = pool.on_finalized(std::slice::from_ref(&rival), &l);
        assert!(admitted.is_empty(), "the rival was never queued here");
        assert!(!pool.contains(&queued[0].hash()));
        assert!(pool.contains(&queued[1].hash()));
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.pending_for(&keys[0].public_key()), 1);
        assert_eq!(pool.select(10, &HashSet::new()), vec![queued[1].clone()]);
    }
}

#[cfg(test)]
mod checked_tests {
    use super::tests::transfer;
    use super::*;
    use trellis_node_state::MemKv;
    use trellis_node_types::{Signer, test_key};

    /// Real: the memo of signature-checked hashes forgets a transaction once a finalized
    /// block commits it, and clears itself rather than grow past its bound.
    #[test]
    fn checked_hashes_are_forgotten_at_finalization_and_bounded() {
        let key = test_key(1);
        let mut l = Ledger::open(MemKv::default()).unwrap();
        l.init_genesis(&[(key.public_key(), 100)]).unwrap();
        let mut pool = Mempool::new("c", 10);
        let tx = transfer(&key, 0, 1, "c");
        pool.remember_checked([tx.hash()].into_iter());
        assert!(pool.signature_checked(&tx.hash()));
        assert!(!pool.contains(&tx.hash()), "remembered, not queued");
        pool.on_finalized(std::slice::from_ref(&tx), &l);
        assert!(!pool.signature_checked(&tx.hash()));

        let many = (0..CHECKED_BOUND).map(|i| {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            Digest::from(h)
        });
        pool.remember_checked([tx.hash()].into_iter());
        pool.remember_checked(many);
        assert!(!pool.signature_checked(&tx.hash()), "cleared at the bound");
        assert_eq!(pool.checked.len(), CHECKED_BOUND);
    }
}
