//! Admission of transactions gossiped by peers, on a task of its own.
//!
//! A gossip batch is checked with one ed25519 batch verification: milliseconds of CPU
//! for a few hundred transactions, and at load a validator receives a batch from every
//! peer every tick. On the chain actor's task that work delayed proposals, block
//! verification and votes queued behind it (a latency cost paid on the consensus path).
//! Here it runs beside the actor, as admission through JSON-RPC does, and takes the
//! shared state lock only to filter and to admit; the checks are the same.

use crate::chain::{NodeState, lock};
use std::collections::HashSet;
use std::sync::Mutex;
use trellis_node_state::Kv;
use trellis_node_types::{Tx, verify_signatures};

/// Most transactions verified together when gossip messages queue up: past about a
/// thousand signatures a bigger batch costs no less per signature.
pub const MERGED_TXS: usize = 4_096;

/// Admits what a peer gossiped, as far as admission takes it (see [`admit_messages`]).
pub fn admit<K: Kv>(state: &Mutex<NodeState<K>>, chain_id: &str, txs: Vec<Tx>) {
    admit_messages(state, chain_id, vec![txs]);
}

/// Admits the transactions of several gossip messages (from any peers, in arrival order)
/// as far as admission takes them.
///
/// Only what admission could still take is verified: a transaction for another chain or
/// shard, already queued, or whose nonce its sender has used (committed, or queued under
/// another transaction) is refused whatever its signature. A transaction whose signature
/// this node already checked in a block it verified is admitted without checking it
/// again (the hash covers the signature). Everything else is verified here, all messages
/// with one batch verification: ed25519 batches of a few dozen cost up to 1.7× more per
/// signature than batches of a thousand, and at moderate rates a peer's message holds a
/// few dozen. If that batch fails, each message is checked as a batch of its own and a
/// failing message one transaction at a time, so a peer cannot get anything into the pool
/// that admission would refuse, nor make another peer's transactions checked one by one.
pub fn admit_messages<K: Kv>(state: &Mutex<NodeState<K>>, chain_id: &str, messages: Vec<Vec<Tx>>) {
    // Each with its message and whether its signature was already checked; kept in
    // gossip order, since admission takes each sender's nonces in order.
    let fresh: Vec<(usize, Tx, bool)> = {
        let state = lock(state);
        messages
            .into_iter()
            .enumerate()
            .flat_map(|(m, txs)| txs.into_iter().map(move |tx| (m, tx)))
            .filter(|(_, tx)| {
                tx.unsigned.chain_id == chain_id
                    && state.check_tables(tx).is_ok()
                    && !state.mempool.nonce_used(tx, &state.ledger)
            })
            .filter_map(|(m, tx)| {
                let hash = tx.hash();
                (!state.mempool.contains(&hash))
                    .then(|| (m, tx, state.mempool.signature_checked(&hash)))
            })
            .collect()
    };
    // Outside the lock: RPC admission and the chain actor go on meanwhile.
    let valid = valid_messages(&fresh);
    let mut guard = lock(state);
    let state = &mut *guard;
    for (m, tx, checked) in fresh {
        // The shard may have moved while the lock was released.
        if state.check_tables(&tx).is_err() {
            continue;
        }
        // Already known, already committed or invalid: nothing to do.
        let _ = if checked || valid(m) {
            state.mempool.admit_verified(tx, &state.ledger)
        } else {
            state.mempool.admit(tx, &state.ledger)
        };
    }
}

/// Which messages' unchecked signatures are all valid: one batch verification of all of
/// them, and only if that fails one per message.
fn valid_messages(fresh: &[(usize, Tx, bool)]) -> impl Fn(usize) -> bool + use<> {
    let unchecked = |only: Option<usize>| -> Vec<&Tx> {
        fresh
            .iter()
            .filter(|(m, _, checked)| !checked && only.is_none_or(|o| o == *m))
            .map(|(_, tx, _)| tx)
            .collect()
    };
    let valid: Option<HashSet<usize>> = if verify_signatures(&unchecked(None)) {
        None
    } else {
        let messages: HashSet<usize> = fresh.iter().map(|(m, _, _)| *m).collect();
        Some(
            messages
                .into_iter()
                .filter(|m| verify_signatures(&unchecked(Some(*m))))
                .collect(),
        )
    };
    move |m| valid.as_ref().is_none_or(|v| v.contains(&m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mempool::tests::transfer;
    use trellis_node_state::MemKv;
    use trellis_node_types::{Signer, test_key};

    fn node(funded: &[u64]) -> Mutex<NodeState<MemKv>> {
        let balances: Vec<_> = funded
            .iter()
            .map(|seed| (test_key(*seed).public_key(), 100))
            .collect();
        Mutex::new(NodeState::open(MemKv::default(), "c", &balances, 100).unwrap())
    }

    /// Real: a node state over an in-memory store and real ed25519 signatures. A gossip
    /// batch holding a forged signature and a transaction for another chain admits
    /// exactly the valid ones, each sender's nonces in order.
    #[test]
    fn gossip_admits_exactly_what_admission_takes() {
        let (a, b) = (test_key(1), test_key(2));
        let state = node(&[1, 2]);
        let good = [transfer(&a, 0, 1, "c"), transfer(&a, 1, 1, "c")];
        let mut forged = transfer(&b, 0, 1, "c");
        forged.signature = transfer(&b, 0, 2, "c").signature;
        let other_chain = transfer(&b, 0, 1, "d");
        let batch = vec![
            good[0].clone(),
            forged.clone(),
            good[1].clone(),
            other_chain,
        ];
        admit(&state, "c", batch);
        let state = lock(&state);
        assert_eq!(state.mempool.len(), 2);
        assert!(good.iter().all(|tx| state.mempool.contains(&tx.hash())));
        assert!(!state.mempool.contains(&forged.hash()));
    }

    /// Real, as above. Messages from several peers verified together: when one holds a
    /// forged signature, the other messages are still admitted as a whole (their batch
    /// checks pass), the bad message's valid transactions too (checked one by one), and
    /// the forged one is refused; each sender's nonces are admitted in order across the
    /// messages.
    #[test]
    fn merged_messages_admit_exactly_what_admission_takes() {
        let (a, b, c) = (test_key(1), test_key(2), test_key(3));
        let state = node(&[1, 2, 3]);
        let clean = vec![transfer(&a, 0, 1, "c"), transfer(&c, 0, 1, "c")];
        let mut forged = transfer(&b, 0, 1, "c");
        forged.signature = transfer(&b, 0, 2, "c").signature;
        let dirty = vec![
            transfer(&a, 1, 1, "c"),
            forged.clone(),
            transfer(&c, 1, 1, "c"),
        ];
        let later = vec![transfer(&a, 2, 1, "c")];
        let expected: Vec<_> = clean
            .iter()
            .chain(&later)
            .chain([&dirty[0], &dirty[2]])
            .map(Tx::hash)
            .collect();
        let valid = valid_messages(
            &[clean.clone(), dirty.clone(), later.clone()]
                .into_iter()
                .enumerate()
                .flat_map(|(m, txs)| txs.into_iter().map(move |tx| (m, tx, false)))
                .collect::<Vec<_>>(),
        );
        assert!(valid(0) && !valid(1) && valid(2));
        admit_messages(&state, "c", vec![clean, dirty, later]);
        let state = lock(&state);
        assert_eq!(state.mempool.len(), expected.len());
        assert!(expected.iter().all(|h| state.mempool.contains(h)));
        assert!(!state.mempool.contains(&forged.hash()));
    }

    /// Real, as above. A transaction whose signature was checked in a verified block is
    /// admitted in its place in the batch (after its sender's earlier nonce, which is
    /// verified), and the rest of the batch is still verified: the forged one is refused.
    #[test]
    fn signatures_checked_in_a_block_are_admitted_in_gossip_order() {
        let (a, b) = (test_key(1), test_key(2));
        let state = node(&[1, 2]);
        let first = transfer(&a, 0, 1, "c");
        let second = transfer(&a, 1, 1, "c");
        lock(&state)
            .mempool
            .remember_checked([second.hash()].into_iter());
        let mut forged = transfer(&b, 0, 1, "c");
        forged.signature = first.signature.clone();
        admit(
            &state,
            "c",
            vec![first.clone(), second.clone(), forged.clone()],
        );
        let state = lock(&state);
        assert!(state.mempool.contains(&first.hash()));
        assert!(state.mempool.contains(&second.hash()));
        assert!(!state.mempool.contains(&forged.hash()));
    }
}
