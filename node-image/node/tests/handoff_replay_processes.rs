//! A shard's history replays without the previous owner of the tables it imported — real
//! `trellis-node` processes on 127.0.186.x (this test's own loopback range).
//!
//! A beacon of 1 (127.0.186.1), shard 0 of 2 validators (.11, .12) and shard 1 of 2
//! (.21, .22), quorum 2 of 2 in each shard. `trellis-node system set-shard-count --count
//! 1`: shard 0 imports all of shard 1's tables and shard 1 reports `drained`. Then every
//! node of the drained slot is SIGKILLed (as the operator deletes it), and shard 0's
//! second validator loses its volume (SIGKILL, data directory removed, started again).
//! It replays shard 0's chain from genesis through the epoch-end block that imported
//! shard 1's tables: shard 1's nodes are gone, so the certified epoch-end block and the
//! tables' leaves come from shard 0's other validator, which kept them with its import
//! (checked against shard 1's validators and the certified roots as from anyone).
//! Asserted: the replayed node reports the same tables as its peer and no `waiting`;
//! shard 0 (quorum 2 of 2) finalizes again, so it votes, and its signature is on shard
//! 0's certificates; a transfer inside an imported table sent through it finalizes and
//! reads back through it. Before the importer kept the proof, the node stayed `waiting`
//! "handing off tables … for epoch E" for good (the test times out).
//!
//! Real: processes, loopback TCP, p2p, consensus, the beacon, the reshard and its
//! handoff, SIGKILL, the replay (backfill) and the import served by a peer of the shard.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use std::time::Duration;
use support::{Sharded, call, height, status, wait_for};
use trellis_node_api::methods;
use trellis_node_api::shard::ShardMapInfo;
use trellis_node_types::{Signer, test_key, to_hex};

const CHAIN: &str = "handoff-replay";
const SEED: u64 = 18_600;

#[test]
fn a_wiped_validator_replays_an_import_from_a_deleted_slot() {
    let root = support::TestDir::new();
    let admin = test_key(SEED + 999);
    let layout = Sharded {
        chain: CHAIN,
        prefix: "127.0.186",
        seed: SEED,
        committees: &[1, 2, 2],
        shard_count: 2,
        epoch_length: 10,
    };
    // Accounts of shard 1's tables in the 2-shard genesis: they move to shard 0.
    let accounts = support::accounts_of(SEED + 700, 1, 2);
    let mut committees = layout.setup(root.path(), &admin, &accounts[..1]);
    for node in committees.iter_mut().flatten() {
        node.start_logging("info");
    }
    let limit = Duration::from_secs(120);
    let beacon = committees[0][0].rpc;
    let (kept, wiped) = (committees[1][0].rpc, committees[1][1].rpc);
    for node in committees[1..].iter().flatten() {
        wait_for("both shards to finalize", limit, || height(node.rpc) >= 2);
    }

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
    // The importer serves the certified epoch-end block of shard 1 it imported with.
    let map: ShardMapInfo =
        serde_json::from_value(call(beacon, methods::GET_SHARD_MAP, json!({})).unwrap()).unwrap();
    let served = (0..map.epoch).rev().find(|epoch| {
        call(
            kept,
            "trellis_getEpochEnd",
            json!({"epoch": epoch, "shard": 1}),
        )
        .is_ok()
    });
    let epoch = served.expect("shard 0 serves shard 1's epoch-end block it imported with");
    eprintln!("shard 0 imported shard 1's tables at the end of shard 1's epoch {epoch}");

    // The operator deletes the drained slot; a validator of shard 0 loses its volume.
    for node in &mut committees[2] {
        node.kill();
    }
    let node = &mut committees[1][1];
    node.kill();
    std::fs::remove_dir_all(node.dir.join("data")).unwrap();
    let before = height(kept);
    node.start_logging("info");

    // It replays past the import (served by its peer) and holds the same tables.
    wait_for(
        "the wiped validator to replay past the import",
        limit,
        || {
            let reference = status(kept).and_then(|s| s.tables);
            status(wiped).is_some_and(|s| {
                s.waiting.is_none()
                    && s.epoch > epoch
                    && s.tables.is_some()
                    && s.tables == reference
            })
        },
    );
    // Shard 0 needs both votes: it finalizes again only with the replayed node's, whose
    // signature is then on its certificates (a validator votes only once it executed the
    // block's state height with the same table roots).
    let key = to_hex(test_key(SEED + 11).public_key().as_ref());
    wait_for(
        "a certificate of shard 0 signed by the replayed validator",
        limit,
        || height(kept) > before + 2 && support::signed_since(kept, &key, before + 1, 0),
    );

    // A transfer inside an imported table, sent through it, finalizes and reads back.
    let tx = support::transfer_tx(CHAIN, &accounts[0], &accounts[1], 0, 40);
    let hash = support::send_retrying(wiped, &tx, limit);
    wait_for("the transfer to finalize", limit, || {
        support::committed(wiped, &hash)
    });
    let receiver = to_hex(accounts[1].public_key().as_ref());
    wait_for(
        "the replayed validator to answer the balance",
        limit,
        || {
            call(wiped, methods::GET_ACCOUNT, json!({"account": receiver}))
                .ok()
                .is_some_and(|v| v["balance"].as_u64() == Some(40) && v["shard"] == json!(0))
        },
    );
}
