use super::*;
use trellis_node_types::{PrivateKey, Signer, UnsignedTx, test_key};

const CHAIN: &str = "state-test";

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

fn genesis(kv: MemKv, keys: &[PrivateKey], each: u64) -> Ledger<MemKv> {
    let mut ledger = Ledger::open(kv).unwrap();
    let balances: Vec<_> = keys.iter().map(|k| (k.public_key(), each)).collect();
    ledger.init_genesis(&balances).unwrap();
    ledger
}

fn total(ledger: &Ledger<MemKv>, keys: &[PrivateKey]) -> u64 {
    keys.iter()
        .map(|k| ledger.account(&k.public_key()).unwrap().balance)
        .sum::<u64>()
        + ledger.fee_pool()
}

#[test]
fn transfers_move_funds_and_bump_nonces() {
    let k = keys(2);
    let mut ledger = genesis(MemKv::default(), &k, 100);
    let receipts = ledger
        .apply_block(1, &[transfer(&k[0], &k[1].public_key(), 0, 30, 2)])
        .unwrap();
    assert!(receipts[0].success, "{:?}", receipts[0]);
    assert_eq!(
        ledger.account(&k[0].public_key()).unwrap(),
        Account {
            balance: 68,
            nonce: 1
        }
    );
    assert_eq!(ledger.account(&k[1].public_key()).unwrap().balance, 130);
    assert_eq!(ledger.fee_pool(), 2);
    assert_eq!(ledger.height(), Some(1));
}

#[test]
fn replay_overdraft_and_bad_nonce_fail_without_effect() {
    let k = keys(2);
    let mut ledger = genesis(MemKv::default(), &k, 100);
    let tx = transfer(&k[0], &k[1].public_key(), 0, 10, 0);
    let overdraft = transfer(&k[0], &k[1].public_key(), 1, 1_000, 0);
    let skipped = transfer(&k[0], &k[1].public_key(), 5, 1, 0);
    let receipts = ledger
        .apply_block(1, &[tx.clone(), tx.clone(), overdraft, skipped])
        .unwrap();
    assert!(receipts[0].success);
    assert!(!receipts[1].success && receipts[1].error.contains("nonce"));
    assert!(!receipts[2].success && receipts[2].error.contains("cannot cover"));
    assert!(!receipts[3].success && receipts[3].error.contains("nonce"));
    // Replay in a later block fails too.
    let receipts = ledger.apply_block(2, std::slice::from_ref(&tx)).unwrap();
    assert!(!receipts[0].success);
    assert_eq!(
        ledger.account(&k[0].public_key()).unwrap(),
        Account {
            balance: 90,
            nonce: 1
        }
    );
    // The stored receipt is the latest outcome for that hash.
    assert_eq!(ledger.receipt(&tx.hash().0).unwrap().unwrap().height, 2);
}

#[test]
fn admission_checks_nonce_and_balance() {
    let k = keys(2);
    let ledger = genesis(MemKv::default(), &k, 100);
    let to = k[1].public_key();
    assert!(
        ledger
            .check_admission(&transfer(&k[0], &to, 0, 100, 0), 0)
            .is_ok()
    );
    assert!(matches!(
        ledger.check_admission(&transfer(&k[0], &to, 0, 100, 1), 0),
        Err(ExecError::InsufficientFunds { .. })
    ));
    assert!(matches!(
        ledger.check_admission(&transfer(&k[0], &to, 0, 1, 0), 1),
        Err(ExecError::BadNonce { expected: 1, .. })
    ));
    assert!(matches!(
        ledger.check_admission(&transfer(&k[0], &to, 0, u64::MAX, 1), 0),
        Err(ExecError::Overflow)
    ));
}

#[test]
fn anchors_are_stored_under_owner_and_key() {
    let k = keys(1);
    let mut ledger = genesis(MemKv::default(), &k, 10);
    let tx = UnsignedTx {
        chain_id: CHAIN.into(),
        from: k[0].public_key(),
        nonce: 0,
        fee: 1,
        kind: TxKind::Anchor {
            key: b"lot-42".to_vec(),
            hash: [7; 32],
        },
    }
    .sign(&k[0]);
    assert!(ledger.apply_block(1, &[tx]).unwrap()[0].success);
    assert_eq!(
        ledger.anchor(&k[0].public_key(), b"lot-42").unwrap(),
        Some([7; 32])
    );
    assert_eq!(ledger.anchor(&k[0].public_key(), b"lot-43").unwrap(), None);
    assert_eq!(total(&ledger, &k), 10);
}

#[test]
fn supply_is_conserved_under_random_load() {
    let k = keys(12);
    let mut ledger = genesis(MemKv::default(), &k, 1_000);
    let supply = ledger.supply();
    assert_eq!(supply, 12_000);
    let mut nonces = vec![0u64; k.len()];
    let mut x: u64 = 42;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for height in 1..=30 {
        let mut txs = Vec::new();
        for _ in 0..20 {
            let from = (next() % 12) as usize;
            let to = (next() % 12) as usize;
            // Sometimes stale or future nonces, sometimes overdrafts: all must conserve.
            let nonce = match next() % 10 {
                0 => nonces[from].saturating_sub(1),
                1 => nonces[from] + 3,
                _ => nonces[from],
            };
            let amount = next() % 400;
            let tx = transfer(&k[from], &k[to].public_key(), nonce, amount, next() % 3);
            txs.push(tx);
        }
        for r in ledger.apply_block(height, &txs).unwrap() {
            let _ = r;
        }
        for (i, key) in k.iter().enumerate() {
            nonces[i] = ledger.account(&key.public_key()).unwrap().nonce;
        }
        assert_eq!(total(&ledger, &k), supply, "supply changed at {height}");
    }
    assert!(
        nonces.iter().sum::<u64>() > 100,
        "too few transfers succeeded"
    );
}

#[test]
fn execution_is_deterministic_and_idempotent() {
    let k = keys(4);
    let blocks: Vec<Vec<Tx>> = (0..5)
        .map(|h| {
            (0..4)
                .map(|i| transfer(&k[i], &k[(i + 1) % 4].public_key(), h, 7 + i as u64, 1))
                .collect()
        })
        .collect();
    let mut a = genesis(MemKv::default(), &k, 500);
    let mut b = genesis(MemKv::default(), &k, 500);
    for (h, txs) in blocks.iter().enumerate() {
        a.apply_block(h as u64 + 1, txs).unwrap();
        b.apply_block(h as u64 + 1, txs).unwrap();
        // Redelivery of the same height is a no-op.
        assert!(b.apply_block(h as u64 + 1, txs).unwrap().is_empty());
        assert_eq!(a.state_root(), b.state_root());
    }
    assert!(matches!(
        a.apply_block(9, &[]),
        Err(StateError::OutOfOrder { have: 5, got: 9 })
    ));
    assert_eq!(a.state_root_at(3).unwrap(), b.state_root_at(3).unwrap());
    assert_ne!(a.state_root_at(3).unwrap(), a.state_root_at(4).unwrap());
}

#[test]
fn account_proofs_verify_against_table_roots() {
    let k = keys(6);
    let mut ledger = genesis(MemKv::default(), &k, 50);
    ledger
        .apply_block(1, &[transfer(&k[0], &k[1].public_key(), 0, 5, 0)])
        .unwrap();
    for key in &k {
        let pk = key.public_key();
        let proven = ledger.account_with_proof(&pk).unwrap();
        assert_eq!(proven.table_root, ledger.table_root(table_of(&pk)));
        assert!(verify_account_proof(&pk, &proven));
        // A forged balance does not verify.
        let mut forged = proven.clone();
        forged.account.balance += 1;
        assert!(!verify_account_proof(&pk, &forged));
    }
    // Unknown accounts come with a non-existence proof.
    let stranger = test_key(999).public_key();
    let proven = ledger.account_with_proof(&stranger).unwrap();
    assert_eq!(proven.account, Account::default());
    assert!(verify_account_proof(&stranger, &proven));
}

#[test]
fn redb_ledger_resumes_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let k = keys(3);
    let root;
    let sent = transfer(&k[0], &k[2].public_key(), 0, 4, 0);
    let overdraft = transfer(&k[1], &k[2].public_key(), 0, 99, 0);
    {
        let mut ledger = Ledger::open(RedbKv::open(&path).unwrap()).unwrap();
        let balances: Vec<_> = k.iter().map(|k| (k.public_key(), 10)).collect();
        ledger.init_genesis(&balances).unwrap();
        ledger
            .apply_block(1, &[sent.clone(), overdraft.clone()])
            .unwrap();
        root = ledger.state_root();
    }
    let mut ledger = Ledger::open(RedbKv::open(&path).unwrap()).unwrap();
    assert_eq!(ledger.height(), Some(1));
    assert_eq!(ledger.state_root(), root);
    // Receipts not in the hash index yet are found again after the restart.
    let receipt = ledger.receipt(&sent.hash().0).unwrap().unwrap();
    assert!(receipt.success && receipt.height == 1);
    let receipt = ledger.receipt(&overdraft.hash().0).unwrap().unwrap();
    assert!(!receipt.success && receipt.error.contains("cannot cover"));
    assert_eq!(ledger.account(&k[2].public_key()).unwrap().balance, 14);
    // Genesis again with the same balances is accepted as already done.
    let balances: Vec<_> = k.iter().map(|k| (k.public_key(), 10)).collect();
    ledger.init_genesis(&balances).unwrap();
    assert_eq!(ledger.height(), Some(1));
    ledger
        .apply_block(2, &[transfer(&k[0], &k[2].public_key(), 1, 1, 0)])
        .unwrap();
    assert_eq!(ledger.account(&k[0].public_key()).unwrap().nonce, 2);
}

#[test]
fn cached_reads_follow_commits_and_match_a_fresh_open() {
    let k = keys(3);
    let kv = MemKv::default();
    let mut ledger = genesis(kv.clone(), &k, 100);
    // Reads fill the in-memory values; blocks must replace them.
    for key in &k {
        assert_eq!(ledger.account(&key.public_key()).unwrap().balance, 100);
    }
    for height in 1..=5 {
        let n = height - 1;
        ledger
            .apply_block(height, &[transfer(&k[0], &k[1].public_key(), n, 10, 1)])
            .unwrap();
        assert_eq!(
            ledger.account(&k[0].public_key()).unwrap(),
            Account {
                balance: 100 - 11 * height,
                nonce: height
            }
        );
    }
    let reopened = Ledger::open(kv).unwrap();
    for key in &k {
        assert_eq!(
            reopened.account(&key.public_key()).unwrap(),
            ledger.account(&key.public_key()).unwrap()
        );
    }
    assert_eq!(total(&ledger, &k), 300);
}

/// A leaf's value is found by walking the tree to the leaf and reading the value stored
/// under the leaf's version. The tree moves leaves (written again at a new version, value
/// unchanged) when a key lands next to one or a neighbour is deleted; every version must
/// still read back exactly what it held, the keys crowded under shared prefixes so that
/// leaves move often.
#[test]
fn every_version_reads_back_what_it_held_while_leaves_move() {
    let kv = MemKv::default();
    let reader = TableReader { kv: &kv, table: 7 };
    // Keys sharing their first nibble, most their second and third: deep, changing paths.
    let keys: Vec<KeyHash> = (0u8..48)
        .map(|i| {
            let mut key = [i; 32];
            key[0] = i % 3;
            key[1] = (i % 2) << 4;
            KeyHash(key)
        })
        .collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut held: Vec<BTreeMap<KeyHash, Vec<u8>>> = Vec::new();
    let mut current = BTreeMap::new();
    let mut moved = 0;
    for version in 0..40u64 {
        let mut changes = BTreeMap::new();
        for _ in 0..1 + next() % 6 {
            let key = keys[(next() % keys.len() as u64) as usize];
            let value = if next() % 3 == 0 && current.contains_key(&key) {
                None
            } else {
                Some(format!("{version}/{}", next() % 100).into_bytes())
            };
            changes.insert(key, value);
        }
        let (_, update) = Sha256Jmt::new(&reader)
            .put_value_set(changes.clone(), version)
            .unwrap();
        moved += update
            .node_batch
            .nodes()
            .iter()
            .filter(|(k, n)| match n {
                Node::Leaf(leaf) => {
                    !changes.contains_key(&leaf.key_hash()) && k.version() == version
                }
                _ => false,
            })
            .count();
        let mut batch = WriteBatch::default();
        write_update(&reader, &update, &mut batch).unwrap();
        kv.commit(batch).unwrap();
        for (key, value) in changes {
            match value {
                Some(v) => current.insert(key, v),
                None => current.remove(&key),
            };
        }
        held.push(current.clone());
        for (v, state) in held.iter().enumerate() {
            for key in &keys {
                assert_eq!(
                    reader.get_value_option(v as u64, *key).unwrap().as_ref(),
                    state.get(key),
                    "key {:?} at version {v} (written up to {version})",
                    &key.0[..2]
                );
            }
        }
    }
    assert!(
        moved > 10,
        "the walk must be tested on moved leaves ({moved})"
    );
}
