//! Ledger-only throughput: how fast `apply_block` executes transfers when every
//! destination is local (one shard owning all tables) versus when half of them leave a
//! receipt for another shard (two shards, interleaved tables), and how fast the other
//! shard credits those receipts (proof verification included). Measures; asserts
//! nothing. In-memory store, so this isolates execution and Merkle work from disk.
//! Rates are per second of this thread's CPU time (Linux `schedstat`; wall time
//! elsewhere), so a busy shared machine skews them less than wall-clock rates.
//!
//! `cargo run --release -p trellis-node-state --example ledger_bench -- [accounts] [blocks] [block_txs]`

mod common;

use common::Clock;
use trellis_node_state::{Ledger, MemKv, TableSet, WriteBatch};
use trellis_node_types::{PrivateKey, Signer, Tx, TxKind, UnsignedTx, table_of, test_key};

fn transfer(from: &PrivateKey, to: &PrivateKey, nonce: u64) -> Tx {
    UnsignedTx {
        chain_id: "bench".into(),
        from: from.public_key(),
        nonce,
        fee: 1,
        kind: TxKind::Transfer {
            to: to.public_key(),
            amount: 1,
        },
    }
    .sign(from)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let accounts = args.first().copied().unwrap_or(4_000);
    let blocks = args.get(1).copied().unwrap_or(10);
    let block_txs = args.get(2).copied().unwrap_or(2_000) as usize;
    let keys: Vec<PrivateKey> = (0..accounts).map(test_key).collect();
    let balances: Vec<_> = keys.iter().map(|k| (k.public_key(), 1_000_000)).collect();
    let even: TableSet = (0..=255u8).filter(|t| t % 2 == 0).collect();
    let odd: TableSet = (0..=255u8).filter(|t| t % 2 == 1).collect();
    let (senders, locals, remotes): (Vec<_>, Vec<_>, Vec<_>) = {
        let in_even: Vec<&PrivateKey> = keys
            .iter()
            .filter(|k| even.contains(table_of(&k.public_key())))
            .collect();
        let in_odd: Vec<&PrivateKey> = keys
            .iter()
            .filter(|k| odd.contains(table_of(&k.public_key())))
            .collect();
        // Disjoint halves: a local credit is a leaf of its own, like a receipt.
        let (a, b) = in_even.split_at(in_even.len() / 2);
        (a.to_vec(), b.to_vec(), in_odd)
    };
    // The same senders in both runs; the destination alternates local / remote in the
    // sharded run and is always local in the unsharded one.
    let plan = |cross: bool| -> Vec<Vec<Tx>> {
        let mut nonces = vec![0u64; senders.len()];
        let mut i = 0usize;
        (0..blocks)
            .map(|_| {
                (0..block_txs)
                    .map(|n| {
                        let s = i % senders.len();
                        i += 1;
                        let to = if cross && n % 2 == 1 {
                            remotes[n % remotes.len()]
                        } else {
                            locals[(s + 1) % locals.len()]
                        };
                        let tx = transfer(senders[s], to, nonces[s]);
                        nonces[s] += 1;
                        tx
                    })
                    .collect()
            })
            .collect()
    };
    let run = |owned: &TableSet,
               txs: &[Vec<Tx>]|
     -> Result<(f64, Ledger<MemKv>, Vec<_>), Box<dyn std::error::Error>> {
        let mut ledger = Ledger::open(MemKv::default())?;
        ledger.init_genesis_owned(&balances, owned)?;
        let mut sent = Vec::new();
        let start = Clock::start();
        for (h, block) in txs.iter().enumerate() {
            let outcome =
                ledger.apply_block_with_credits(h as u64 + 1, block, &[], WriteBatch::default())?;
            sent.extend(outcome.sent);
        }
        let rate = (blocks as usize * block_txs) as f64 / start.seconds();
        Ok((rate, ledger, sent))
    };
    let (local_rate, _, _) = run(&TableSet::all(), &plan(false))?;
    let (cross_rate, source, sent) = run(&even, &plan(true))?;
    // The destination shard: fetch pages with proofs, verify, credit.
    let mut dest = Ledger::open(MemKv::default())?;
    dest.init_genesis_owned(&balances, &odd)?;
    let height = source.height().unwrap_or(0);
    let start = Clock::start();
    let mut credits = Vec::new();
    for s in even.iter() {
        for d in odd.iter() {
            if source.outbox_next(s, d)? == 0 {
                continue;
            }
            let root = source.table_root_at(s, height)?.unwrap_or_default();
            let mut from = 0;
            loop {
                let page = source.outbox(s, d, from, 256, height)?;
                let got = page.verify(s, d, from, &root)?;
                from += got.len() as u64;
                credits.extend(got);
                if from >= page.next_seq || page.entries.is_empty() {
                    break;
                }
            }
        }
    }
    let proven = start.seconds();
    let credited = dest.apply_block_with_credits(1, &[], &credits, WriteBatch::default())?;
    let total = start.seconds();
    let ok = credited.credits.iter().filter(|c| c.is_credited()).count();
    println!(
        "accounts {accounts}, {blocks} blocks x {block_txs} transfers (in-memory store, rates per CPU-second)\n\
         all local (one shard owns every table): {local_rate:.0} tx/s\n\
         50% cross-shard, sending shard:          {cross_rate:.0} tx/s ({:.2} of local)\n\
         receiving shard: {} receipts proven + verified in {:.3} s, credited ({ok}) in {:.3} s total: {:.0} credits/s",
        cross_rate / local_rate,
        sent.len(),
        proven,
        total,
        ok as f64 / total,
    );
    Ok(())
}
