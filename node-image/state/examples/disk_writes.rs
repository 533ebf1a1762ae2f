//! Bytes written to disk per transfer by the ledger's redb store, and where they go.
//! Applies `blocks` blocks of `block_txs` transfers among `accounts` accounts to a
//! [`RedbKv`] in a temporary directory (every commit durable, as in the node) and reads
//! this process's `write_bytes` from `/proc/self/io` around each commit. It also adds
//! what the chain commits next to each block's state: the block itself (`block_bytes`
//! per transfer, ~170 for a transfer) and its certificate. Every key space's logical
//! size (keys + values handed to redb) is printed next to the physical bytes, so the
//! write amplification of each is visible; `DROP=receipts,history,block` leaves those
//! rows out to attribute the physical bytes; `SPLIT=1` keeps each key space in a redb file
//! of its own (two commits per block instead of one) and prints each file's physical
//! bytes. It also prints the CPU time of applying the blocks per transfer (this thread's,
//! so signing the transfers beforehand is not counted). Measures; asserts nothing.
//!
//! `cargo run --release -p trellis-node-state --example disk_writes -- [accounts] [blocks] [block_txs] [block_bytes]`

mod common;

use common::Clock;
use std::collections::BTreeMap;
use std::sync::Mutex;
use trellis_node_state::{Entry, Kv, KvError, Ledger, RedbKv, Space, WriteBatch};
use trellis_node_types::{PrivateKey, Signer, Tx, TxKind, UnsignedTx, test_key};

fn transfer(from: &PrivateKey, to: &PrivateKey, nonce: u64) -> Tx {
    UnsignedTx {
        chain_id: "bench".into(),
        from: from.public_key(),
        nonce,
        fee: 0,
        kind: TxKind::Transfer {
            to: to.public_key(),
            amount: 1,
        },
    }
    .sign(from)
}

fn written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Which category a write belongs to (by key space and key prefix).
fn category(space: Space, key: &[u8]) -> &'static str {
    match space {
        Space::Nodes => "jmt nodes",
        Space::Meta if [b"rc", b"rb", b"ri"].iter().any(|p| key.starts_with(*p)) => "receipts",
        Space::Meta if key.starts_with(b"th") || key.starts_with(b"sr") => "history",
        Space::Meta if key.starts_with(b"chain/") => "block",
        Space::Meta => "meta",
    }
}

/// A [`RedbKv`] (or one per key space) that tallies what each commit hands it, and the
/// bytes the commit wrote.
struct Counting {
    stores: Vec<RedbKv>,
    drop: Vec<String>,
    logical: Mutex<BTreeMap<&'static str, (u64, u64)>>,
    physical: Mutex<u64>,
    by_store: Mutex<Vec<u64>>,
    commits: Mutex<u64>,
}

impl Counting {
    fn store(&self, space: Space) -> &RedbKv {
        let i = match space {
            Space::Nodes => 0,
            Space::Meta => 1,
        };
        &self.stores[i.min(self.stores.len() - 1)]
    }
}

impl Kv for Counting {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.store(space).get(space, key)
    }
    fn last_in(&self, space: Space, from: &[u8], to: &[u8]) -> Result<Option<Entry>, KvError> {
        self.store(space).last_in(space, from, to)
    }
    fn first_in(&self, space: Space, from: &[u8], to: &[u8]) -> Result<Option<Entry>, KvError> {
        self.store(space).first_in(space, from, to)
    }
    fn commit(&self, batch: WriteBatch) -> Result<(), KvError> {
        let mut kept: Vec<WriteBatch> = self.stores.iter().map(|_| WriteBatch::default()).collect();
        {
            let mut logical = self.logical.lock().map_err(|_| KvError("lock".into()))?;
            for (space, key, value) in batch.into_writes() {
                let c = category(space, &key);
                if self.drop.iter().any(|d| d == c) {
                    continue;
                }
                let e = logical.entry(c).or_default();
                e.0 += 1;
                e.1 += (key.len() + value.as_ref().map_or(0, Vec::len)) as u64;
                let i = if self.stores.len() == 1 {
                    0
                } else {
                    space as usize
                };
                match value {
                    Some(v) => kept[i].put(space, key, v),
                    None => kept[i].delete(space, key),
                }
            }
        }
        for (i, (store, batch)) in self.stores.iter().zip(kept).enumerate() {
            let before = written();
            store.commit(batch)?;
            let bytes = written() - before;
            *self.physical.lock().map_err(|_| KvError("lock".into()))? += bytes;
            self.by_store.lock().map_err(|_| KvError("lock".into()))?[i] += bytes;
        }
        *self.commits.lock().map_err(|_| KvError("lock".into()))? += 1;
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let accounts = args.first().copied().unwrap_or(2_000);
    let blocks = args.get(1).copied().unwrap_or(40);
    let block_txs = args.get(2).copied().unwrap_or(1_600) as usize;
    let block_bytes = args.get(3).copied().unwrap_or(170) as usize;
    let drop: Vec<String> = std::env::var("DROP")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let keys: Vec<PrivateKey> = (0..accounts).map(test_key).collect();
    let balances: Vec<_> = keys.iter().map(|k| (k.public_key(), 1_000_000)).collect();
    let dir = tempfile::tempdir()?;
    let split = std::env::var("SPLIT").is_ok_and(|v| v == "1");
    let names: &[&str] = if split {
        &["nodes.redb", "meta.redb"]
    } else {
        &["state.redb"]
    };
    let kv = Counting {
        stores: names
            .iter()
            .map(|n| RedbKv::open(&dir.path().join(n)))
            .collect::<Result<_, _>>()?,
        drop,
        logical: Mutex::default(),
        physical: Mutex::default(),
        by_store: Mutex::new(vec![0; names.len()]),
        commits: Mutex::default(),
    };
    let mut ledger = Ledger::open(kv)?;
    ledger.init_genesis(&balances)?;
    // Like the load generator: each sender pays the next account, nonce-major.
    let mut nonces = vec![0u64; keys.len()];
    let mut next = 0usize;
    let mut plan = Vec::new();
    for _ in 0..blocks {
        let txs: Vec<Tx> = (0..block_txs)
            .map(|_| {
                let s = next % keys.len();
                next += 1;
                let tx = transfer(&keys[s], &keys[(s + 1) % keys.len()], nonces[s]);
                nonces[s] += 1;
                tx
            })
            .collect();
        plan.push(txs);
    }
    let start_bytes = *ledger.kv().physical.lock().map_err(|_| "lock")?;
    let start_by_store = ledger.kv().by_store.lock().map_err(|_| "lock")?.clone();
    ledger.kv().logical.lock().map_err(|_| "lock")?.clear();
    let start_commits = *ledger.kv().commits.lock().map_err(|_| "lock")?;
    let clock = Clock::start();
    for (h, txs) in plan.iter().enumerate() {
        let height = h as u64 + 1;
        // What the chain commits with the block: the block and its certificate.
        let mut extra = WriteBatch::default();
        let key = |p: &[u8]| [p, &height.to_be_bytes()].concat();
        extra.put(
            Space::Meta,
            key(b"chain/b/"),
            vec![7; block_bytes * txs.len()],
        );
        extra.put(Space::Meta, key(b"chain/f/"), vec![9; 300]);
        ledger.apply_block_with(height, txs, extra)?;
    }
    let cpu = clock.seconds();
    let kv = ledger.kv();
    let physical = *kv.physical.lock().map_err(|_| "lock")? - start_bytes;
    let commits = *kv.commits.lock().map_err(|_| "lock")? - start_commits;
    let total = (blocks as usize * block_txs) as f64;
    println!(
        "{accounts} accounts, {blocks} blocks x {block_txs} transfers, {commits} commits: \
         {:.0} bytes written per transfer ({:.1} MB in all), file {:.1} MB",
        physical as f64 / total,
        physical as f64 / 1e6,
        names
            .iter()
            .map(|n| std::fs::metadata(dir.path().join(n)).map_or(0, |m| m.len()))
            .sum::<u64>() as f64
            / 1e6,
    );
    println!(
        "  applying the blocks (execution, Merkle updates, commits): {:.1} µs of CPU per transfer",
        cpu * 1e6 / total
    );
    if split {
        let by_store = kv.by_store.lock().map_err(|_| "lock")?;
        for (i, name) in names.iter().enumerate() {
            println!(
                "  {name:<11} {:>6.0} bytes written per transfer",
                (by_store[i] - start_by_store[i]) as f64 / total
            );
        }
    }
    let logical = kv.logical.lock().map_err(|_| "lock")?;
    let sum: u64 = logical.values().map(|v| v.1).sum();
    for (c, (rows, bytes)) in logical.iter() {
        println!(
            "  {c:<11} {:>7.2} rows, {:>6.0} bytes per transfer handed to redb",
            *rows as f64 / total,
            *bytes as f64 / total
        );
    }
    println!(
        "  all         {:.0} bytes per transfer handed to redb; written / handed = {:.1}",
        sum as f64 / total,
        physical as f64 / sum.max(1) as f64
    );
    Ok(())
}
