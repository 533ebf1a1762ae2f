//! A transaction a drained, deleted slot executed stays queryable through a kept shard's
//! node while the slot's archive runs — real `trellis-node` processes on 127.0.220.x
//! (this test's own loopback range).
//!
//! A beacon of 1 (127.0.220.1), shard 0 of 2 validators (.11, .12) and shard 1 of 2
//! (.21, .22). A transfer inside shard 1's tables finalizes in shard 1 at height `h`.
//! `trellis-node system set-shard-count --count 1`: shard 0 imports every table and
//! shard 1 reports `drained`. Then the operator's clean-up with
//! `spec.shards.drainedHistorySeconds > 0` is played: every node of the slot but its
//! first (the archive, pod 0) is SIGKILLed. Asserted:
//! * `trellis_getTransaction` through shard 0's node answers `committed`, height `h`,
//!   success, `shard: 1`, `archived: true` (the receipt is only in the drained slot's
//!   ledger: before drained slots were asked, this answered `unknown`);
//! * the archive gone too (retention ended, or `drainedHistorySeconds: 0`): the same
//!   query answers `unknown` (the documented answer: not a retryable error) within the
//!   relay's timeout, and a node of shard 0 still finalizes;
//! * the slot re-used by a later scale-out (1 → 2): its nodes start again on their kept
//!   data (the operator re-creates the StatefulSet on the retained claims; an archive
//!   still running simply stays), shard 1 is created again and its nodes take tables
//!   over, finalize, and answer the old transaction themselves (no `archived` mark).
//!
//! Real: processes, loopback TCP, p2p, consensus, the beacon, the reshard and its
//! handoff, SIGKILL, the forwarded lookups between processes.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{Sharded, call, height, status, wait_for};
use trellis_node_api::methods;

const CHAIN: &str = "drained-history";
const SEED: u64 = 22_000;

fn lookup(node: SocketAddr, hash: &str) -> Value {
    call(node, methods::GET_TRANSACTION, json!({"hash": hash})).unwrap_or_else(|e| json!(e))
}

#[test]
fn a_drained_slots_transactions_stay_queryable_through_its_archive() {
    let root = support::TestDir::new();
    let admin = trellis_node_types::test_key(SEED + 999);
    let layout = Sharded {
        chain: CHAIN,
        prefix: "127.0.220",
        seed: SEED,
        committees: &[1, 2, 2],
        shard_count: 2,
        epoch_length: 10,
    };
    // Accounts of shard 1's tables in the 2-shard genesis.
    let accounts = support::accounts_of(SEED + 700, 1, 2);
    let mut committees = layout.setup(root.path(), &admin, &accounts[..1]);
    for node in committees.iter_mut().flatten() {
        node.start_logging("info");
    }
    let limit = Duration::from_secs(120);
    let started = Instant::now();
    let phase = |what: &str| eprintln!("{:>6.1?} {what}", started.elapsed());
    let beacon = committees[0][0].rpc;
    let kept = committees[1][0].rpc;
    let archive = committees[2][0].rpc;
    for node in committees[1..].iter().flatten() {
        wait_for("both shards to finalize", limit, || height(node.rpc) >= 2);
    }

    // Shard 1 executes a transfer inside its tables.
    let tx = support::transfer_tx(CHAIN, &accounts[0], &accounts[1], 0, 40);
    let hash = support::send_retrying(archive, &tx, limit);
    wait_for("the transfer to finalize in shard 1", limit, || {
        support::committed(archive, &hash)
    });
    let executed = lookup(archive, &hash);
    let at = executed["height"].as_u64().expect("a committed height");
    assert_eq!(executed["shard"], 1, "{executed}");

    phase("shard 1 executed the transfer");
    // Scale in to 1 shard: shard 0 imports shard 1's tables, shard 1 drains.
    support::set_shard_count(root.path(), &admin, beacon, 1);
    let all: Vec<u8> = (0..=255).collect();
    for node in &committees[1] {
        wait_for("shard 0 to import shard 1's tables", limit, || {
            status(node.rpc).is_some_and(|s| s.waiting.is_none() && s.tables.as_ref() == Some(&all))
        });
    }
    for node in &committees[2] {
        wait_for("shard 1 to report drained", limit, || {
            status(node.rpc).is_some_and(|s| s.drained)
        });
    }

    phase("shard 1 drained");
    // The operator deletes the drained slot but keeps its first node as the archive.
    committees[2][1].kill();
    let found = lookup(kept, &hash);
    assert_eq!(found["state"], "committed", "{found}");
    assert_eq!(found["height"], at, "{found}");
    assert_eq!(found["success"], true, "{found}");
    assert_eq!(found["shard"], 1, "{found}");
    assert_eq!(found["archived"], true, "{found}");

    // Retention over: the archive goes too. The answer is `unknown`, promptly.
    committees[2][0].kill();
    let asked = Instant::now();
    let gone = lookup(kept, &hash);
    let took = asked.elapsed();
    assert_eq!(gone["state"], "unknown", "{gone}");
    assert!(gone.get("shard").is_none(), "{gone}");
    assert!(took < Duration::from_secs(5), "the lookup took {took:?}");
    let before = height(kept);
    wait_for("shard 0 to keep finalizing", limit, || {
        height(kept) > before
    });

    phase("archive gone: unknown");
    // The slot comes back on a later scale-out, its nodes on their kept data.
    for node in &mut committees[2] {
        node.start_logging("info");
    }
    support::set_shard_count(root.path(), &admin, beacon, 2);
    // Restarted nodes catch up, then import half the tables: slower on a loaded machine.
    let rejoin = limit * 2;
    for node in &committees[2] {
        wait_for("shard 1 to join again and own tables", rejoin, || {
            status(node.rpc).is_some_and(|s| {
                !s.drained
                    && s.waiting.is_none()
                    && s.tables.as_ref().is_some_and(|t| !t.is_empty())
            })
        });
    }
    phase("shard 1 joined again");
    let before = height(archive);
    wait_for("shard 1 to finalize again", limit, || {
        height(archive) > before + 1
    });
    let again = lookup(kept, &hash);
    assert_eq!(again["state"], "committed", "{again}");
    assert_eq!(again["height"], at, "{again}");
    assert_eq!(again["shard"], 1, "{again}");
    assert!(again.get("archived").is_none(), "{again}");
}
