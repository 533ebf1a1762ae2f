//! Sharded ledgers: owned tables, cross-shard receipts, proofs, credits, handoff.

use super::*;
use trellis_node_types::{PrivateKey, Signer, UnsignedTx, test_key};

const CHAIN: &str = "shard-test";

fn transfer(from: &PrivateKey, to: &PublicKey, nonce: u64, amount: u64, fee: u64) -> Tx {
    UnsignedTx {
        chain_id: CHAIN.into(),
        from: from.public_key(),
        nonce,
        fee,
        kind: TxKind::Transfer {
            to: to.clone(),
            amount,
        },
    }
    .sign(from)
}

fn keys(n: u64) -> Vec<PrivateKey> {
    (0..n).map(test_key).collect()
}

fn balances(keys: &[PrivateKey], each: u64) -> Vec<(PublicKey, u64)> {
    keys.iter().map(|k| (k.public_key(), each)).collect()
}

/// Tables `t` with `t % shards == shard`: interleaved, so random accounts spread.
fn slice(shard: u8, shards: u8) -> TableSet {
    (0..=255u8).filter(|t| t % shards == shard).collect()
}

fn shard(keys: &[PrivateKey], each: u64, owned: TableSet) -> Ledger<MemKv> {
    let mut ledger = Ledger::open(MemKv::default()).unwrap();
    ledger
        .init_genesis_owned(&balances(keys, each), &owned)
        .unwrap();
    ledger
}

/// First key (by seed, from `start`) whose table is in `set`.
fn key_in(set: &TableSet, start: u64) -> PrivateKey {
    (start..)
        .map(test_key)
        .find(|k| set.contains(table_of(&k.public_key())))
        .unwrap()
}

/// Σ over ledgers of Σ over their owned tables of `balances + fees + sent − credited`.
fn conserved(ledgers: &[&Ledger<MemKv>]) -> i128 {
    ledgers
        .iter()
        .flat_map(|l| l.supply_parts())
        .map(|(_, s)| s.net())
        .sum()
}

/// Every owned table's stats must agree with the accounts (known keys) it holds.
fn check_balances_match_accounts(ledgers: &[&Ledger<MemKv>], keys: &[PrivateKey]) {
    for ledger in ledgers {
        let owned = ledger.owned_tables();
        let mut sums: BTreeMap<u8, u64> = BTreeMap::new();
        for k in keys {
            let pk = k.public_key();
            if owned.contains(table_of(&pk)) {
                *sums.entry(table_of(&pk)).or_default() += ledger.account(&pk).unwrap().balance;
            }
        }
        for (table, stats) in ledger.supply_parts() {
            assert_eq!(
                stats.balances,
                sums.get(&table).copied().unwrap_or(0),
                "table {table}"
            );
        }
    }
}

/// The receipts `dest_ledger` can credit now from `source_ledger`'s outboxes, proven
/// against `source_ledger`'s roots at its current height and verified.
fn pending_credits(source: &Ledger<MemKv>, dest: &Ledger<MemKv>) -> Vec<CrossReceipt> {
    pending_credits_among(source, dest, &TableSet::all())
}

/// [`pending_credits`] between the tables of `among` only (faster for tests whose
/// accounts live in a few tables).
fn pending_credits_among(
    source: &Ledger<MemKv>,
    dest: &Ledger<MemKv>,
    among: &TableSet,
) -> Vec<CrossReceipt> {
    let height = source.height().unwrap();
    let mut out = Vec::new();
    for s in source.owned_tables().iter().filter(|t| among.contains(*t)) {
        for d in dest.owned_tables().iter().filter(|t| among.contains(*t)) {
            if s == d {
                continue;
            }
            let from = dest.inbox_next(d, s).unwrap();
            if source.outbox_next(s, d).unwrap() <= from {
                continue;
            }
            let page = source.outbox(s, d, from, MAX_OUTBOX_PAGE, height).unwrap();
            let root = source.table_root_at(s, height).unwrap().unwrap();
            // Through the wire encoding, as the relay carries it.
            let page = OutboxPage::decode_untrusted(&page.to_bytes()).unwrap();
            out.extend(page.verify(s, d, from, &root).unwrap());
        }
    }
    out
}

#[test]
fn genesis_table_roots_do_not_depend_on_ownership() {
    let k = keys(40);
    let whole = shard(&k, 100, TableSet::all());
    let a = shard(&k, 100, slice(0, 2));
    let b = shard(&k, 100, slice(1, 2));
    for t in 0..=255u8 {
        let sharded = if t % 2 == 0 { &a } else { &b };
        assert_eq!(whole.table_root(t), sharded.table_root(t), "table {t}");
    }
    assert_eq!(a.supply(), 4000);
    assert_eq!(conserved(&[&a, &b]), 4000);
    assert_eq!(conserved(&[&whole]), 4000);
    assert_eq!(whole.owned_tables(), TableSet::all());
}

#[test]
fn wrong_shard_is_refused_at_admission_and_in_blocks() {
    let a_tables = slice(0, 2);
    let b_tables = slice(1, 2);
    let alice = key_in(&b_tables, 0);
    let bob = key_in(&b_tables, 1000);
    let k = vec![alice.clone(), bob.clone()];
    let mut a = shard(&k, 100, a_tables);
    let tx = transfer(&alice, &bob.public_key(), 0, 5, 1);
    let table = table_of(&alice.public_key());
    assert_eq!(
        a.check_admission(&tx, 0),
        Err(ExecError::WrongShard { table })
    );
    let receipts = a.apply_block(1, std::slice::from_ref(&tx)).unwrap();
    assert!(!receipts[0].success);
    assert!(receipts[0].error.contains("not owned by this shard"));
    assert_eq!(a.account(&alice.public_key()).unwrap(), Account::default());
    assert_eq!(conserved(&[&a]), 0);
}

#[test]
fn cross_shard_transfer_debits_then_credits_exactly_once() {
    let (a_tables, b_tables) = (slice(0, 2), slice(1, 2));
    let alice = key_in(&a_tables, 0);
    let bob = key_in(&b_tables, 0);
    let k = vec![alice.clone(), bob.clone()];
    let mut a = shard(&k, 100, a_tables);
    let mut b = shard(&k, 100, b_tables);
    let (src, dst) = (table_of(&alice.public_key()), table_of(&bob.public_key()));

    let txs: Vec<Tx> = (0..3)
        .map(|n| transfer(&alice, &bob.public_key(), n, 10 + n, 1))
        .collect();
    let outcome = a
        .apply_block_with_credits(1, &txs, &[], WriteBatch::default())
        .unwrap();
    assert!(outcome.receipts.iter().all(|r| r.success));
    assert_eq!(
        outcome.sent.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(outcome.sent[1].amount, 11);
    assert_eq!(outcome.sent[1].tx, txs[1].hash());
    assert_eq!(
        a.account(&alice.public_key()).unwrap().balance,
        100 - 33 - 3
    );
    assert_eq!(a.outbox_next(src, dst).unwrap(), 3);
    assert_eq!(a.outbox_heads(src, 1).unwrap(), vec![(dst, 3)]);
    assert_eq!(a.outbox_heads(src, 0).unwrap(), vec![]);
    let stats = a.table_stats(src);
    assert_eq!((stats.sent, stats.fees, stats.txs), (33, 3, 3));
    // In flight: A's part is supply-ish plus what it sent, B still has nothing credited.
    assert_eq!(conserved(&[&a, &b]), 200);

    // B fetches the page, verifies it against A's root at height 1, credits in order.
    let credits = pending_credits(&a, &b);
    assert_eq!(credits, outcome.sent);
    b.apply_block(1, &[]).unwrap();
    let done = b
        .apply_block_with_credits(2, &[], &credits, WriteBatch::default())
        .unwrap();
    assert!(done.credits.iter().all(CreditOutcome::is_credited));
    assert_eq!(b.account(&bob.public_key()).unwrap().balance, 133);
    assert_eq!(b.inbox_next(dst, src).unwrap(), 3);
    assert_eq!(b.table_stats(dst).credited, 33);
    assert_eq!(conserved(&[&a, &b]), 200);
    check_balances_match_accounts(&[&a, &b], &k);

    // Replayed: all duplicates, nothing changes.
    let root = b.table_root(dst);
    let replay = b
        .apply_block_with_credits(3, &[], &credits, WriteBatch::default())
        .unwrap();
    assert!(
        replay
            .credits
            .iter()
            .all(|c| *c == CreditOutcome::Duplicate { expected: 3 })
    );
    assert_eq!(b.table_root(dst), root);
    assert_eq!(b.account(&bob.public_key()).unwrap().balance, 133);
    assert!(pending_credits(&a, &b).is_empty());

    // Out of order: seq 4 before 3 is a gap; then 3 and 4 in order both land.
    let more: Vec<Tx> = (3..5)
        .map(|n| transfer(&alice, &bob.public_key(), n, 1, 0))
        .collect();
    let sent = a
        .apply_block_with_credits(2, &more, &[], WriteBatch::default())
        .unwrap()
        .sent;
    let reordered = vec![sent[1].clone(), sent[0].clone(), sent[1].clone()];
    let outcome = b
        .apply_block_with_credits(4, &[], &reordered, WriteBatch::default())
        .unwrap();
    assert_eq!(
        outcome.credits,
        vec![
            CreditOutcome::Gap { expected: 3 },
            CreditOutcome::Credited,
            CreditOutcome::Credited
        ]
    );
    assert_eq!(b.account(&bob.public_key()).unwrap().balance, 135);
    assert_eq!(conserved(&[&a, &b]), 200);

    // A credit for a table B does not own is refused without effect.
    let mut stray = sent[0].clone();
    stray.dest_table = src;
    let outcome = b
        .apply_block_with_credits(5, &[], &[stray], WriteBatch::default())
        .unwrap();
    assert_eq!(
        outcome.credits,
        vec![CreditOutcome::NotOwned { table: src }]
    );
}

#[test]
fn transfers_between_owned_tables_are_credited_directly() {
    let k = keys(30);
    let mut ledger = shard(&k, 50, TableSet::all());
    let txs: Vec<Tx> = (0..29)
        .map(|i| transfer(&k[i], &k[i + 1].public_key(), 0, 7, 2))
        .collect();
    let outcome = ledger
        .apply_block_with_credits(1, &txs, &[], WriteBatch::default())
        .unwrap();
    assert!(outcome.sent.is_empty());
    assert!(outcome.receipts.iter().all(|r| r.success));
    assert_eq!(ledger.fee_pool(), 58);
    let parts = ledger.supply_parts();
    assert_eq!(parts.len(), 256);
    assert!(parts.iter().all(|(_, s)| s.sent == 0 && s.credited == 0));
    assert_eq!(parts.iter().map(|(_, s)| s.txs).sum::<u64>(), 29);
    assert_eq!(conserved(&[&ledger]), 1500);
    check_balances_match_accounts(&[&ledger], &k);
}

/// A deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Three shards with interleaved tables, random transfers (most cross-shard), credits
/// delivered late, duplicated, reordered and partly dropped: at every height the supply
/// is conserved, and once the network drains every receipt is credited exactly once.
#[test]
fn random_cross_shard_traffic_conserves_supply_and_credits_exactly_once() {
    let k = keys(24);
    let used: TableSet = k.iter().map(|k| table_of(&k.public_key())).collect();
    for seed in 1..=12u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut shards: Vec<Ledger<MemKv>> =
            (0..3).map(|s| shard(&k, 1_000, slice(s, 3))).collect();
        let supply = i128::from(shards[0].supply());
        let mut nonces = vec![0u64; k.len()];
        let mut credited_total = 0usize;
        for height in 1..=14u64 {
            let draining = height > 10;
            // Credits first (from the others' state as of their last height).
            let mut credits: Vec<Vec<CrossReceipt>> = vec![Vec::new(); 3];
            for d in 0..3 {
                for s in 0..3 {
                    if s != d {
                        credits[d].extend(pending_credits_among(&shards[s], &shards[d], &used));
                    }
                }
                if !draining {
                    // The network misbehaves: drop some, duplicate some, swap neighbours.
                    let c = &mut credits[d];
                    if !c.is_empty() && rng.next().is_multiple_of(3) {
                        let i = (rng.next() as usize) % c.len();
                        c.truncate(i);
                    }
                    if !c.is_empty() && rng.next().is_multiple_of(2) {
                        let i = (rng.next() as usize) % c.len();
                        c.push(c[i].clone());
                    }
                    if c.len() > 1 && rng.next().is_multiple_of(2) {
                        let i = (rng.next() as usize) % (c.len() - 1);
                        c.swap(i, i + 1);
                    }
                }
            }
            for (d, ledger) in shards.iter_mut().enumerate() {
                let owned = ledger.owned_tables();
                let mut txs = Vec::new();
                if !draining {
                    for _ in 0..12 {
                        let from = (rng.next() as usize) % k.len();
                        if !owned.contains(table_of(&k[from].public_key())) {
                            continue;
                        }
                        let to = (rng.next() as usize) % k.len();
                        let nonce = if rng.next().is_multiple_of(8) {
                            nonces[from] + 1
                        } else {
                            nonces[from]
                        };
                        let tx = transfer(
                            &k[from],
                            &k[to].public_key(),
                            nonce,
                            rng.next() % 300,
                            rng.next() % 3,
                        );
                        txs.push(tx);
                    }
                }
                let outcome = ledger
                    .apply_block_with_credits(height, &txs, &credits[d], WriteBatch::default())
                    .unwrap();
                credited_total += outcome.credits.iter().filter(|c| c.is_credited()).count();
                for key in k.iter().enumerate() {
                    let (i, key) = key;
                    if owned.contains(table_of(&key.public_key())) {
                        nonces[i] = ledger.account(&key.public_key()).unwrap().nonce;
                    }
                }
            }
            let refs: Vec<&Ledger<MemKv>> = shards.iter().collect();
            assert_eq!(conserved(&refs), supply, "seed {seed} height {height}");
            check_balances_match_accounts(&refs, &k);
        }
        // Drained: every pair's inbox caught up with its outbox, nothing in flight.
        let mut sent_receipts = 0u64;
        for s in used.iter() {
            for d in used.iter() {
                if s == d {
                    continue;
                }
                let (src, dst) = (&shards[(s % 3) as usize], &shards[(d % 3) as usize]);
                let out = src.outbox_next(s, d).unwrap();
                if s % 3 != d % 3 {
                    assert_eq!(dst.inbox_next(d, s).unwrap(), out, "seed {seed} {s}->{d}");
                    sent_receipts += out;
                } else {
                    assert_eq!(out, 0, "same-shard transfers leave no receipt");
                }
            }
        }
        assert_eq!(sent_receipts as usize, credited_total, "seed {seed}");
        assert!(
            sent_receipts > 20,
            "seed {seed}: only {sent_receipts} cross-shard"
        );
        let sent: u64 = shards
            .iter()
            .flat_map(|l| l.supply_parts())
            .map(|(_, s)| s.sent)
            .sum();
        let credited: u64 = shards
            .iter()
            .flat_map(|l| l.supply_parts())
            .map(|(_, s)| s.credited)
            .sum();
        assert_eq!(sent, credited, "seed {seed}: value still in flight");
    }
}

#[test]
fn forged_receipts_and_proofs_are_rejected() {
    let (a_tables, b_tables) = (slice(0, 2), slice(1, 2));
    let alice = key_in(&a_tables, 0);
    let bob = key_in(&b_tables, 0);
    let carol = key_in(&b_tables, 500);
    let k = vec![alice.clone(), bob.clone()];
    let mut a = shard(&k, 100, a_tables);
    let txs: Vec<Tx> = (0..2)
        .map(|n| transfer(&alice, &bob.public_key(), n, 10, 0))
        .collect();
    a.apply_block(1, &txs).unwrap();
    let (src, dst) = (table_of(&alice.public_key()), table_of(&bob.public_key()));
    let root = a.table_root_at(src, 1).unwrap().unwrap();
    let page = a.outbox(src, dst, 0, 10, 1).unwrap();
    assert_eq!(page.entries.len(), 2);
    assert_eq!(page.next_seq, 2);
    let good = &page.entries[0];
    verify_receipt(&good.receipt, &good.proof, &root).unwrap();

    let forge = |f: &dyn Fn(&mut CrossReceipt)| {
        let mut r = good.receipt.clone();
        f(&mut r);
        verify_receipt(&r, &good.proof, &root)
    };
    assert!(matches!(
        forge(&|r| r.amount += 1),
        Err(ProofError::Mismatch { .. })
    ));
    assert!(matches!(
        forge(&|r| r.seq = 1),
        Err(ProofError::Mismatch { .. })
    ));
    assert!(matches!(
        forge(&|r| {
            r.to = carol.public_key();
            r.dest_table = table_of(&carol.public_key());
        }),
        Err(ProofError::Mismatch { .. })
    ));
    // Another entry's proof, a wrong root, damaged and oversized proofs.
    assert!(verify_receipt(&good.receipt, &page.entries[1].proof, &root).is_err());
    assert!(matches!(
        verify_receipt(
            &good.receipt,
            &good.proof,
            &a.table_root_at(dst, 1).unwrap().unwrap()
        ),
        Err(ProofError::Mismatch { .. })
    ));
    let mut flipped = good.proof.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(verify_receipt(&good.receipt, &flipped, &root).is_err());
    assert!(matches!(
        verify_receipt(&good.receipt, &good.proof[..good.proof.len() - 1], &root),
        Err(ProofError::Malformed(_))
    ));
    assert!(matches!(
        verify_receipt(&good.receipt, &[], &root),
        Err(ProofError::Malformed(_))
    ));
    assert!(matches!(
        verify_receipt(&good.receipt, &vec![0; MAX_PROOF_SIZE + 1], &root),
        Err(ProofError::Oversized(_))
    ));

    // Page-level checks: wrong pair, wrong root, gaps, forged entries.
    assert!(matches!(
        page.verify(dst, src, 0, &root),
        Err(ProofError::WrongPair { .. })
    ));
    assert!(matches!(
        page.verify(src, dst, 0, &[7; 32]),
        Err(ProofError::WrongRoot { .. })
    ));
    assert!(matches!(
        page.verify(src, dst, 1, &root),
        Err(ProofError::NotConsecutive {
            expected: 1,
            got: 0
        })
    ));
    let mut forged = page.clone();
    forged.entries[1].receipt.amount = 99;
    assert!(matches!(
        forged.verify(src, dst, 0, &root),
        Err(ProofError::Mismatch { seq: 1, .. })
    ));
    let mut claimed = page.clone();
    claimed.table_root = [1; 32];
    assert!(claimed.verify(src, dst, 0, &[1; 32]).is_err());

    // The page's wire encoding: round trip; every truncation and garbage is an error.
    let bytes = page.to_bytes();
    assert_eq!(OutboxPage::decode_untrusted(&bytes).unwrap(), page);
    for len in 0..bytes.len() {
        assert!(
            OutboxPage::decode_untrusted(&bytes[..len]).is_err(),
            "len {len}"
        );
    }
    let mut rng = Rng(77);
    for len in 0..300 {
        let garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = OutboxPage::decode_untrusted(&garbage);
        let _ = TableSnapshot::decode_untrusted(&garbage);
    }
    // Pages past the applied height, or of a table to itself, are refused.
    assert!(matches!(
        a.outbox(src, dst, 0, 10, 2),
        Err(StateError::Unavailable(_))
    ));
    assert!(matches!(
        a.outbox(src, src, 0, 10, 1),
        Err(StateError::Unavailable(_))
    ));
}

#[test]
fn proofs_are_given_against_the_roots_of_past_heights() {
    let (a_tables, b_tables) = (slice(0, 2), slice(1, 2));
    let alice = key_in(&a_tables, 0);
    let bob = key_in(&b_tables, 0);
    let k = vec![alice.clone(), bob.clone()];
    let mut a = shard(&k, 100, a_tables);
    let (src, dst) = (table_of(&alice.public_key()), table_of(&bob.public_key()));
    let genesis_root = a.table_root(src);
    for h in 1..=4u64 {
        // Only odd heights touch the table.
        let txs = if h % 2 == 1 {
            vec![transfer(&alice, &bob.public_key(), h / 2, 1, 0)]
        } else {
            vec![]
        };
        a.apply_block(h, &txs).unwrap();
    }
    assert_eq!(a.table_root_at(src, 0).unwrap(), Some(genesis_root));
    assert_eq!(
        a.table_root_at(src, 2).unwrap(),
        a.table_root_at(src, 1).unwrap()
    );
    assert_ne!(
        a.table_root_at(src, 3).unwrap(),
        a.table_root_at(src, 2).unwrap()
    );
    assert_eq!(a.table_root_at(src, 4).unwrap(), Some(a.table_root(src)));
    assert_eq!(a.table_root_at(src, 5).unwrap(), None);
    // At height 2 only seq 0 existed; it is proven against that height's root.
    let page = a.outbox(src, dst, 0, 10, 2).unwrap();
    assert_eq!(page.next_seq, 1);
    let root2 = a.table_root_at(src, 2).unwrap().unwrap();
    assert_eq!(page.verify(src, dst, 0, &root2).unwrap().len(), 1);
    let page = a.outbox(src, dst, 0, 10, 4).unwrap();
    assert_eq!(page.next_seq, 2);
    assert_eq!(
        page.verify(src, dst, 0, &a.table_root(src)).unwrap().len(),
        2
    );
}

/// Moves `table` from `from` to `to` at `from`'s current height, in chunks of `limit`.
fn hand_off(from: &mut Ledger<MemKv>, to: &mut Ledger<MemKv>, table: u8, limit: usize) {
    let height = from.height().unwrap();
    let root = from.table_root_at(table, height).unwrap().unwrap();
    let chunks = export_all(from, table, height, limit);
    to.import_table(table, root, &chunks).unwrap();
    let mut kept = from.owned_tables();
    kept.remove(table);
    from.set_owned_tables(&kept).unwrap();
}

fn export_all(from: &Ledger<MemKv>, table: u8, height: u64, limit: usize) -> Vec<TableSnapshot> {
    export_chunks(|after| from.export_table(table, height, after, limit))
}

/// Every chunk `export` gives, each asked after the previous one's last key.
fn export_chunks(
    export: impl Fn(Option<[u8; 32]>) -> Result<TableSnapshot, StateError>,
) -> Vec<TableSnapshot> {
    let mut chunks = Vec::new();
    let mut after = None;
    loop {
        let chunk = export(after).unwrap();
        // Through the wire encoding.
        let chunk = TableSnapshot::decode_untrusted(&chunk.to_bytes()).unwrap();
        let more = chunk.more;
        after = chunk.leaves.last().map(|(k, _)| *k).or(after);
        chunks.push(chunk);
        if !more {
            return chunks;
        }
    }
}

#[test]
fn table_handoff_round_trip_moves_accounts_fees_and_outbox() {
    let (a_tables, b_tables) = (slice(0, 2), slice(1, 2));
    // Several accounts in one of A's tables, and a receiver on B.
    let first = key_in(&a_tables, 0);
    let table = table_of(&first.public_key());
    let in_table: Vec<PrivateKey> = (0..4000)
        .map(test_key)
        .filter(|k| table_of(&k.public_key()) == table)
        .take(5)
        .collect();
    let bob = key_in(&b_tables, 0);
    let mut k = in_table.clone();
    k.push(bob.clone());
    let mut a = shard(&k, 100, a_tables);
    let mut b = shard(&k, 100, b_tables);
    let dst = table_of(&bob.public_key());
    // Activity in the table: a direct transfer within it, a cross-shard one, an anchor.
    let anchor = UnsignedTx {
        chain_id: CHAIN.into(),
        from: in_table[2].public_key(),
        nonce: 0,
        fee: 3,
        kind: TxKind::Anchor {
            key: b"lot".to_vec(),
            hash: [5; 32],
        },
    }
    .sign(&in_table[2]);
    let txs = vec![
        transfer(&in_table[0], &in_table[1].public_key(), 0, 20, 1),
        transfer(&in_table[1], &bob.public_key(), 0, 30, 2),
        anchor,
    ];
    assert!(a.apply_block(1, &txs).unwrap().iter().all(|r| r.success));
    b.apply_block(1, &[]).unwrap();
    let before = a.table_stats(table);
    let root = a.table_root(table);

    // Chunks of 2 leaves: accounts, stats, anchor, outbox entry and counter.
    hand_off(&mut a, &mut b, table, 2);
    assert!(b.owned_tables().contains(table));
    assert!(!a.owned_tables().contains(table));
    assert_eq!(b.table_root(table), root);
    assert_eq!(b.table_stats(table), before);
    for key in &in_table {
        assert_eq!(
            b.account(&key.public_key()).unwrap(),
            a.account(&key.public_key()).unwrap()
        );
    }
    assert_eq!(
        b.anchor(&in_table[2].public_key(), b"lot").unwrap(),
        Some([5; 32])
    );
    assert_eq!(conserved(&[&a, &b]), i128::from(a.supply()));

    // B now serves the moved table's outbox (from the next height on, when the table
    // is B's). The receipt is now between two of B's tables, which no other shard
    // credits: B's first block after the import credits it itself, and offering the
    // proven receipt again is a duplicate (exactly once).
    assert!(b.outbox(table, dst, 0, 10, 1).unwrap().entries.is_empty());
    assert_eq!(b.account(&bob.public_key()).unwrap().balance, 100);
    b.apply_block(2, &[]).unwrap();
    assert_eq!(b.account(&bob.public_key()).unwrap().balance, 130);
    let proven = b.outbox(table, dst, 0, 10, 2).unwrap();
    let credits = proven
        .verify(table, dst, 0, &b.table_root_at(table, 2).unwrap().unwrap())
        .unwrap();
    let outcome = b
        .apply_block_with_credits(3, &[], &credits, WriteBatch::default())
        .unwrap();
    assert_eq!(
        outcome.credits,
        vec![CreditOutcome::Duplicate { expected: 1 }]
    );
    assert_eq!(b.account(&bob.public_key()).unwrap().balance, 130);

    // B executes the moved table's transactions; A refuses them now.
    let next = transfer(&in_table[0], &in_table[3].public_key(), 1, 5, 0);
    assert_eq!(
        a.check_admission(&next, 0),
        Err(ExecError::WrongShard { table })
    );
    assert!(b.check_admission(&next, 0).is_ok());
    assert!(b.apply_block(4, std::slice::from_ref(&next)).unwrap()[0].success);
    assert_eq!(b.account(&in_table[3].public_key()).unwrap().balance, 105);
    // A proof against B's new root verifies (the rebuilt tree is a real tree).
    let proven = b.account_with_proof(&in_table[3].public_key()).unwrap();
    assert!(verify_account_proof(&in_table[3].public_key(), &proven));
    assert_eq!(conserved(&[&a, &b]), i128::from(a.supply()));

    // And back to A, whose stale copy of the table must not show through.
    a.apply_block(2, &[]).unwrap();
    hand_off(&mut b, &mut a, table, 4096);
    assert_eq!(a.account(&in_table[3].public_key()).unwrap().balance, 105);
    assert_eq!(a.account(&in_table[0].public_key()).unwrap().nonce, 2);
    assert_eq!(a.table_root(table), b.table_root(table));
    assert_eq!(conserved(&[&a, &b]), i128::from(a.supply()));
}

/// Two unrelated states of one table: `(ghost, other, table, stale, source)` where the
/// `stale` ledger (which no longer owns `table`) holds `ghost`'s account with 100 and the
/// `source` ledger holds only `other`'s with 70.
fn stale_copy_and_source() -> (PrivateKey, PrivateKey, u8, Ledger<MemKv>, Ledger<MemKv>) {
    let ghost = test_key(1);
    let table = table_of(&ghost.public_key());
    let other = (2..5000)
        .map(test_key)
        .find(|k| table_of(&k.public_key()) == table)
        .unwrap();
    let mut rest = TableSet::all();
    rest.remove(table);
    let mut stale = shard(std::slice::from_ref(&ghost), 100, TableSet::all());
    stale.set_owned_tables(&rest).unwrap();
    let source = shard(std::slice::from_ref(&other), 70, TableSet::all());
    (ghost, other, table, stale, source)
}

#[test]
fn imported_tables_hide_keys_the_snapshot_lacks() {
    // `old` has an account the source lacks.
    let (ghost, other, table, mut old, source) = stale_copy_and_source();
    let chunks = export_all(&source, table, 0, 100);
    old.import_table(table, source.table_root(table), &chunks)
        .unwrap();
    assert_eq!(
        old.account(&ghost.public_key()).unwrap(),
        Account::default()
    );
    assert_eq!(old.account(&other.public_key()).unwrap().balance, 70);
    // Also after a reopen (no cached values).
    let reopened = Ledger::open(old.kv().clone()).unwrap();
    assert_eq!(
        reopened.account(&ghost.public_key()).unwrap(),
        Account::default()
    );
    assert_eq!(reopened.table_stats(table).balances, 70);
    assert!(reopened.owned_tables().contains(table));
}

#[test]
fn an_importer_serves_exactly_the_imported_leaves_by_root() {
    // `importer` holds a stale copy of the table (an account the source lacks) and
    // imports the source's table; the proof the node keeps commits with the import.
    let (ghost, other, table, mut importer, source) = stale_copy_and_source();
    let root = source.table_root(table);
    let mut extra = WriteBatch::default();
    extra.put(Space::Meta, b"proof-of-the-import".to_vec(), vec![7]);
    importer
        .import_table_with(table, root, &export_all(&source, table, 0, 100), extra)
        .unwrap();
    assert_eq!(
        importer
            .kv()
            .get(Space::Meta, b"proof-of-the-import")
            .unwrap(),
        Some(vec![7])
    );
    // The importer's first block after the import changes the table at the very height
    // the import took effect: by height the imported version is gone.
    let pay = transfer(&other, &ghost.public_key(), 0, 5, 1);
    assert!(importer.apply_block(1, &[pay]).unwrap()[0].success);
    let now = importer.table_root_at(table, 1).unwrap().unwrap();
    assert_ne!(now, root);
    // By root it serves exactly the imported leaves (not the stale account, not the
    // block's changes), in chunks another ledger imports against the certified root.
    let chunks = export_chunks(|after| importer.export_table_with_root(table, 0, root, after, 1));
    assert!(chunks.len() > 1);
    let mut rest = TableSet::all();
    rest.remove(table);
    let mut replayer = shard(std::slice::from_ref(&ghost), 100, rest);
    replayer.import_table(table, root, &chunks).unwrap();
    assert_eq!(replayer.table_root(table), root);
    assert_eq!(
        replayer.account(&ghost.public_key()).unwrap(),
        Account::default()
    );
    assert_eq!(replayer.account(&other.public_key()).unwrap().balance, 70);
    // Also after a reopen; the current version is served by root at its own height.
    let reopened = Ledger::open(importer.kv().clone()).unwrap();
    let again = export_chunks(|after| reopened.export_table_with_root(table, 0, root, after, 100));
    assert_eq!(
        again.iter().map(|c| c.leaves.len()).sum::<usize>(),
        chunks.iter().map(|c| c.leaves.len()).sum::<usize>()
    );
    let current = reopened
        .export_table_with_root(table, 1, now, None, 100)
        .unwrap();
    assert_eq!(current.root, now);
    // The source serves its own history by root too; an unknown root is unavailable.
    assert_eq!(
        source
            .export_table_with_root(table, 0, root, None, 100)
            .unwrap()
            .leaves,
        chunks
            .iter()
            .flat_map(|c| c.leaves.clone())
            .collect::<Vec<_>>()
    );
    let e = reopened
        .export_table_with_root(table, 0, [9; 32], None, 100)
        .unwrap_err();
    assert!(matches!(e, StateError::Unavailable(_)), "{e}");
}

/// Real ledgers: half the tables of one (with accounts in them) checked off the store
/// and imported by another in one commit; a check made for a version the importer has
/// moved past is refused and changes nothing.
#[test]
fn checked_tables_are_imported_together_in_one_commit() {
    let keys = keys(40);
    let source = shard(&keys, 10, TableSet::all());
    let moved = slice(1, 2);
    let mut importer = shard(&keys, 10, slice(0, 2));
    let checked = |importer: &Ledger<MemKv>| -> Vec<CheckedTable> {
        moved
            .iter()
            .map(|t| {
                let chunks = export_all(&source, t, 0, 100);
                check_table(t, source.table_root(t), &chunks, importer.import_version(t)).unwrap()
            })
            .collect()
    };
    let tables = checked(&importer);
    // A forged root is refused by the check itself, before any ledger sees it.
    let some = moved.iter().next().unwrap();
    assert!(matches!(
        check_table(some, [9; 32], &export_all(&source, some, 0, 100), 1),
        Err(SnapshotError::WrongRoot { .. })
    ));
    let mut extra = WriteBatch::default();
    extra.put(Space::Meta, b"proof".to_vec(), vec![1]);
    importer.import_tables_with(tables, extra).unwrap();
    let reopened = Ledger::open(importer.kv().clone()).unwrap();
    for ledger in [&importer, &reopened] {
        assert_eq!(ledger.owned_tables(), TableSet::all());
        for t in moved.iter() {
            assert_eq!(ledger.table_root(t), source.table_root(t));
        }
        assert_eq!(
            ledger.kv().get(Space::Meta, b"proof").unwrap(),
            Some(vec![1])
        );
    }
    for key in &keys {
        assert_eq!(importer.account(&key.public_key()).unwrap().balance, 10);
    }
    // Checked for the version before: another ledger that imported since refuses it.
    let mut late = shard(&keys, 10, slice(0, 2));
    let stale = checked(&late);
    let first = moved.iter().next().unwrap();
    late.import_table(
        first,
        source.table_root(first),
        &export_all(&source, first, 0, 100),
    )
    .unwrap();
    late.set_owned_tables(&slice(0, 2)).unwrap();
    let before = late.owned_tables();
    assert!(matches!(
        late.import_tables_with(stale, WriteBatch::default()),
        Err(SnapshotError::StaleCheck(t)) if t == first
    ));
    assert_eq!(late.owned_tables(), before);
    assert_eq!(late.kv().get(Space::Meta, b"proof").unwrap(), None);
}

#[test]
fn bad_snapshots_are_refused_and_change_nothing() {
    let (a_tables, b_tables) = (slice(0, 2), slice(1, 2));
    let first = key_in(&a_tables, 0);
    let table = table_of(&first.public_key());
    let in_table: Vec<PrivateKey> = (0..4000)
        .map(test_key)
        .filter(|k| table_of(&k.public_key()) == table)
        .take(6)
        .collect();
    let a = shard(&in_table, 100, a_tables);
    let mut b = shard(&in_table, 100, b_tables);
    let root = a.table_root(table);
    let chunks = export_all(&a, table, 0, 2);
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let state = b.state_root();

    let attempt = |b: &mut Ledger<MemKv>, root: [u8; 32], chunks: &[TableSnapshot]| {
        let err = b.import_table(table, root, chunks).unwrap_err();
        assert_eq!(b.state_root(), state);
        assert!(!b.owned_tables().contains(table));
        assert_eq!(b.account(&first.public_key()).unwrap(), Account::default());
        err
    };
    // A different certified root.
    assert!(matches!(
        attempt(&mut b, [9; 32], &chunks),
        SnapshotError::WrongRoot { .. }
    ));
    // Truncated: the last chunk is missing.
    assert!(matches!(
        attempt(&mut b, root, &chunks[..chunks.len() - 1]),
        SnapshotError::Truncated
    ));
    // A forged leaf value.
    let mut forged = chunks.clone();
    forged[1].leaves[0].1[7] ^= 1;
    assert!(matches!(
        attempt(&mut b, root, &forged),
        SnapshotError::RootMismatch { .. }
    ));
    // A leaf left out (continuity repaired, so only the root catches it).
    let mut missing = chunks.clone();
    missing[0].leaves.remove(0);
    assert!(matches!(
        attempt(&mut b, root, &missing),
        SnapshotError::RootMismatch { .. }
    ));
    // An extra leaf appended at the end.
    let mut extra = chunks.clone();
    let last = extra.len() - 1;
    extra[last].leaves.push(([0xff; 32], vec![1, 2, 3]));
    assert!(matches!(
        attempt(&mut b, root, &extra),
        SnapshotError::RootMismatch { .. }
    ));
    // Chunks swapped, a chunk repeated, a leaf repeated.
    let mut swapped = chunks.clone();
    swapped.swap(0, 1);
    assert!(matches!(
        attempt(&mut b, root, &swapped),
        SnapshotError::Discontinuous { chunk: 0 }
    ));
    let mut repeated = chunks.clone();
    repeated.insert(1, chunks[0].clone());
    assert!(matches!(
        attempt(&mut b, root, &repeated),
        SnapshotError::Discontinuous { chunk: 1 }
    ));
    let mut dup = chunks.clone();
    let leaf = dup[0].leaves[1].clone();
    dup[0].leaves.insert(1, leaf);
    assert!(matches!(
        attempt(&mut b, root, &dup),
        SnapshotError::Unordered { chunk: 0 }
    ));
    // Wrong table, no chunks, chunks after the last.
    let mut wrong = chunks.clone();
    wrong[0].table ^= 1;
    assert!(matches!(
        attempt(&mut b, root, &wrong),
        SnapshotError::WrongTable { .. }
    ));
    assert!(matches!(
        attempt(&mut b, root, &[]),
        SnapshotError::NoChunks
    ));
    let mut trailing = chunks.clone();
    trailing.push(chunks[chunks.len() - 1].clone());
    assert!(matches!(
        attempt(&mut b, root, &trailing),
        SnapshotError::TrailingChunks
    ));
    // A table already owned is never overwritten.
    let own = b.owned_tables().iter().next().unwrap();
    assert!(matches!(
        b.import_table(own, b.table_root(own), &chunks),
        Err(SnapshotError::AlreadyOwned(_))
    ));

    // Chunk encodings: truncations and oversize values are errors.
    let bytes = chunks[0].to_bytes();
    for len in 0..bytes.len() {
        assert!(TableSnapshot::decode_untrusted(&bytes[..len]).is_err());
    }
    let mut long = chunks[0].clone();
    long.leaves[0].1 = vec![0; MAX_LEAF_VALUE + 1];
    assert!(matches!(
        TableSnapshot::decode_untrusted(&long.to_bytes()),
        Err(SnapshotError::Malformed(_))
    ));

    // And the genuine snapshot still imports afterwards.
    b.import_table(table, root, &chunks).unwrap();
    assert_eq!(b.account(&first.public_key()).unwrap().balance, 100);
}

#[test]
fn owned_tables_and_stats_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (a_tables, b_tables) = (slice(0, 2), slice(1, 2));
    let alice = key_in(&a_tables, 0);
    let bob = key_in(&b_tables, 0);
    let k = vec![alice.clone(), bob.clone()];
    let (stats, owned);
    {
        let mut a = Ledger::open(RedbKv::open(&path).unwrap()).unwrap();
        a.init_genesis_owned(&balances(&k, 100), &a_tables).unwrap();
        a.apply_block(1, &[transfer(&alice, &bob.public_key(), 0, 10, 1)])
            .unwrap();
        let mut fewer = a_tables;
        fewer.remove(0);
        a.set_owned_tables(&fewer).unwrap();
        stats = a.supply_parts();
        owned = fewer;
    }
    let mut a = Ledger::open(RedbKv::open(&path).unwrap()).unwrap();
    assert_eq!(a.owned_tables(), owned);
    assert_eq!(a.supply_parts(), stats);
    assert_eq!(
        a.outbox_next(table_of(&alice.public_key()), table_of(&bob.public_key()))
            .unwrap(),
        1
    );
    // A restart runs genesis again: accepted as done, the owned set is kept.
    a.init_genesis_owned(&balances(&k, 100), &a_tables).unwrap();
    assert_eq!(a.owned_tables(), owned);
}

#[test]
fn data_of_the_older_format_is_refused_with_a_clear_error() {
    let kv = MemKv::default();
    let mut batch = WriteBatch::default();
    batch.put(Space::Meta, b"height".to_vec(), 5u64.to_be_bytes().to_vec());
    kv.commit(batch).unwrap();
    let err = Ledger::open(kv).err().unwrap();
    assert!(matches!(err, StateError::OldFormat(_)));
    assert!(err.to_string().contains("re-sync from genesis"));
    // Format 2 stored leaf values under another key layout: refused the same way.
    let kv = MemKv::default();
    let mut batch = WriteBatch::default();
    batch.put(Space::Meta, b"height".to_vec(), 5u64.to_be_bytes().to_vec());
    batch.put(Space::Meta, b"format".to_vec(), 2u64.to_be_bytes().to_vec());
    kv.commit(batch).unwrap();
    let err = Ledger::open(kv).err().unwrap();
    assert!(err.to_string().contains("format 2"), "{err}");
    assert!(err.to_string().contains("re-sync from genesis"));
}

/// Receipts in flight to a table follow it when it moves: the new owner credits the
/// rest, from the inbox counter that moved with the table, exactly once.
#[test]
fn in_flight_receipts_follow_a_moving_table() {
    let (a_tables, b_tables) = (slice(0, 2), slice(1, 2));
    let alice = key_in(&a_tables, 0);
    let bob = key_in(&b_tables, 0);
    let k = vec![alice.clone(), bob.clone()];
    let mut a = shard(&k, 100, a_tables);
    let mut b = shard(&k, 100, b_tables);
    let mut c = shard(&k, 100, TableSet::none());
    let (src, dst) = (table_of(&alice.public_key()), table_of(&bob.public_key()));
    let txs: Vec<Tx> = (0..3)
        .map(|n| transfer(&alice, &bob.public_key(), n, 10, 0))
        .collect();
    let sent = a
        .apply_block_with_credits(1, &txs, &[], WriteBatch::default())
        .unwrap()
        .sent;
    // B credits only the first receipt, then the table moves to C.
    let outcome = b
        .apply_block_with_credits(1, &[], &sent[..1], WriteBatch::default())
        .unwrap();
    assert_eq!(outcome.credits, vec![CreditOutcome::Credited]);
    c.apply_block(1, &[]).unwrap();
    hand_off(&mut b, &mut c, dst, 3);
    assert_eq!(c.inbox_next(dst, src).unwrap(), 1);
    assert_eq!(conserved(&[&a, &b, &c]), 200);

    // B no longer credits the table; C credits the rest and refuses the replay.
    let outcome = b
        .apply_block_with_credits(2, &[], &sent[1..], WriteBatch::default())
        .unwrap();
    assert!(
        outcome
            .credits
            .iter()
            .all(|o| *o == CreditOutcome::NotOwned { table: dst })
    );
    let pending = pending_credits(&a, &c);
    assert_eq!(pending, sent[1..].to_vec());
    let outcome = c
        .apply_block_with_credits(2, &[], &sent, WriteBatch::default())
        .unwrap();
    assert_eq!(
        outcome.credits,
        vec![
            CreditOutcome::Duplicate { expected: 1 },
            CreditOutcome::Credited,
            CreditOutcome::Credited
        ]
    );
    assert_eq!(c.account(&bob.public_key()).unwrap().balance, 130);
    assert!(pending_credits(&a, &c).is_empty());
    assert_eq!(conserved(&[&a, &b, &c]), 200);
    let sent_total: u64 = [&a, &b, &c]
        .iter()
        .flat_map(|l| l.supply_parts())
        .map(|(_, s)| s.sent)
        .sum();
    let credited_total: u64 = [&a, &b, &c]
        .iter()
        .flat_map(|l| l.supply_parts())
        .map(|(_, s)| s.credited)
        .sum();
    assert_eq!((sent_total, credited_total), (30, 30));
}

#[test]
fn a_merge_credits_the_receipts_in_flight_between_the_merged_tables() {
    let (a_tables, b_tables) = (slice(0, 2), slice(1, 2));
    let alice = key_in(&a_tables, 0);
    let bob = key_in(&b_tables, 0);
    let k = vec![alice.clone(), bob.clone()];
    let mut a = shard(&k, 1_000, a_tables);
    let mut b = shard(&k, 1_000, b_tables);
    let (src, dst) = (table_of(&alice.public_key()), table_of(&bob.public_key()));
    // Two receipts from A's table to B's, never credited by B: then B's shard merges
    // into A's (scale-in), table dst moving to A.
    a.apply_block(1, &[transfer(&alice, &bob.public_key(), 0, 30, 1)])
        .unwrap();
    a.apply_block(2, &[transfer(&alice, &bob.public_key(), 1, 12, 1)])
        .unwrap();
    b.apply_block(1, &[]).unwrap();
    b.apply_block(2, &[]).unwrap();
    assert_eq!(a.outbox_next(src, dst).unwrap(), 2);
    let before = conserved(&[&a, &b]);
    let mut all = a.owned_tables();
    for t in b.owned_tables().iter() {
        all.insert(t);
    }
    for t in b.owned_tables().iter() {
        hand_off(&mut b, &mut a, t, 64);
    }
    assert_eq!(a.owned_tables(), all);
    assert_eq!(a.inbox_next(dst, src).unwrap(), 0);
    // The next block credits both, exactly once; the one after changes nothing more.
    let outcome = a
        .apply_block_with_credits(3, &[], &[], WriteBatch::default())
        .unwrap();
    assert_eq!(outcome.credits.len(), 2);
    assert!(outcome.credits.iter().all(CreditOutcome::is_credited));
    assert_eq!(a.inbox_next(dst, src).unwrap(), 2);
    assert_eq!(a.account(&bob.public_key()).unwrap().balance, 1_042);
    let outcome = a
        .apply_block_with_credits(4, &[], &[], WriteBatch::default())
        .unwrap();
    assert!(outcome.credits.is_empty());
    assert_eq!(a.account(&bob.public_key()).unwrap().balance, 1_042);
    assert_eq!(conserved(&[&a]), before);
}
