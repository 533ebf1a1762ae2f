//! An "any" validator joins a shard whose history contains a live reshard's table
//! imports — real `trellis-node` processes on 127.0.146.x (this test's own loopback range).
//!
//! A beacon of 1, shard 0 of 2 fixed validators plus 2 validators registered for any
//! shard (`[role] kind = "shard", shard = "any"`, .91 and .92), and slot 1's 2 fixed
//! validators waiting for the beacon to create it. `trellis-node system set-shard-count
//! --count 2`: at the next epoch slot 1 imports half the tables from shard 0 and the
//! beacon moves one "any" validator there (the smallest committee); from then on the two
//! "any" validators swap shards in about every other epoch. The test waits until the
//! validator that was *not* moved at the reshard is moved into shard 1: its fresh copy of
//! shard 1's chain replays from genesis through the epoch-end block that imported the
//! tables (fetched again from shard 0's nodes at that old height, root-checked). Shard 1's
//! committee is then 2 fixed + the mover, quorum 3 of 3, so shard 1 finalizes only with
//! its votes (also read from certificates' signers); a transfer sent through it
//! finalizes and the mover answers the receiver's balance from its own replayed state.
//!
//! Real: processes, loopback TCP, p2p, consensus, the reshard and its table handoff, the
//! beacon's shuffle, the re-exec into the new shard and the replay.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use std::time::Duration;
use support::{Sharded, call, height, shard_map, status, wait_for};
use trellis_node_api::shard::ShardMapInfo;
use trellis_node_api::{Role, methods};
use trellis_node_types::{Signer, test_key, to_hex};

const CHAIN: &str = "any-reshard";
const SEED: u64 = 14_600;

fn committee(map: &ShardMapInfo, shard: u16) -> Vec<String> {
    map.shards
        .iter()
        .find(|s| s.shard == shard)
        .map(|s| s.validators.clone())
        .unwrap_or_default()
}

#[test]
fn an_any_validator_replays_a_shard_whose_history_imported_tables() {
    let root = support::TestDir::new();
    let admin = test_key(SEED + 999);
    // The beacon on 127.0.146.1, shard 0 on .11-12, slot 1 on .21-22.
    let layout = Sharded {
        chain: CHAIN,
        prefix: "127.0.146",
        seed: SEED,
        committees: &[1, 2, 2],
        shard_count: 1,
        epoch_length: 16,
    };
    // Accounts of the tables 1→2 moves to slot 1 (the 2-shard genesis map).
    let accounts = support::accounts_of(SEED + 700, 1, 2);
    let (mut committees, mut floating) =
        layout.setup_with_any(root.path(), &admin, &accounts[..1], 2);
    for node in committees.iter_mut().flatten().chain(floating.iter_mut()) {
        node.start_logging("info");
    }
    let limit = Duration::from_secs(180);
    let beacon = committees[0][0].rpc;
    let fixed = |shard: usize| committees[shard + 1][0].rpc;
    let keys: Vec<String> = (0..2)
        .map(|i| to_hex(test_key(SEED + 90 + i).public_key().as_ref()))
        .collect();
    wait_for("shard 0 to finalize with its any validators", limit, || {
        height(fixed(0)) >= 2
    });

    // Scale out to 2 shards, signed by the network admin key.
    support::set_shard_count(root.path(), &admin, beacon, 2);
    // The first epoch with 2 shards: which "any" validator went to shard 1 with the reshard.
    let mut first = None;
    wait_for("the reshard to 2 shards", limit, || {
        first = shard_map(beacon).filter(|m| m.shard_count == 2);
        first.is_some()
    });
    let first = first.unwrap();
    let at_reshard = committee(&first, 1);
    let late = (0..2)
        .find(|i| !at_reshard.contains(&keys[*i]))
        .expect("one any validator stays in shard 0 at the reshard");
    eprintln!(
        "reshard in beacon epoch {}: any validator {} stayed in shard 0",
        first.epoch, late
    );

    // Wait until the beacon moves that validator into shard 1 (later epochs' shuffle).
    let mut joined = None;
    wait_for(
        "the beacon to move the other any validator into shard 1",
        limit,
        || {
            joined = shard_map(beacon)
                .filter(|m| m.epoch > first.epoch && committee(m, 1).contains(&keys[late]))
                .map(|m| m.epoch);
            joined.is_some()
        },
    );
    let epoch = joined.unwrap();
    eprintln!("any validator {late} moved into shard 1 in beacon epoch {epoch}");
    let (mover, key) = (floating[late].rpc, &keys[late]);

    // It replayed shard 1's chain, the table imports included, and serves it (it stays
    // at least until shard 1 has ended that epoch, which needs its votes).
    wait_for("the mover to replay shard 1 and serve it", limit, || {
        let Some(reference) = status(fixed(1)) else {
            return false;
        };
        status(mover).is_some_and(|s| {
            s.role == Role::Shard { shard: 1 }
                && s.validators.contains(key)
                && s.waiting.is_none()
                && s.epoch >= epoch
                && s.tables.is_some()
                && s.tables == reference.tables
        })
    });
    // It votes there: a validator votes only once it has executed the block's state
    // height and its table roots agree, so its signature on shard 1's certificates says
    // its replayed state, imported tables included, is the shard's.
    let from = height(fixed(1));
    wait_for(
        "a certificate of shard 1 signed by the mover",
        limit,
        || support::signed_since(fixed(1), key, from.saturating_sub(64), epoch),
    );

    // A transfer inside an imported table, sent through the mover, finalizes, and the
    // receiver's balance reads right through it.
    let tx = support::transfer_tx(CHAIN, &accounts[0], &accounts[1], 0, 40);
    let hash = support::send_retrying(mover, &tx, limit);
    wait_for("the transfer to finalize", limit, || {
        support::committed(mover, &hash)
    });
    let receiver = to_hex(accounts[1].public_key().as_ref());
    wait_for("the mover to answer the receiver's balance", limit, || {
        call(mover, methods::GET_ACCOUNT, json!({"account": receiver}))
            .ok()
            .is_some_and(|v| v["balance"].as_u64() == Some(40) && v["shard"] == json!(1))
    });
}
