//! Validators registered for "any" shard follow the beacon's shuffle — real `trellis-node`
//! processes on 127.0.145.x (this test's own loopback range).
//!
//! A beacon of 1 and 2 shards of 2 fixed validators each run with 2 validators
//! registered for any shard (`[role] kind = "shard", shard = "any"`, on .91 and .92). The
//! beacon places one "any" validator in each shard and, every epoch, rotates each out
//! (⌊3/3⌋ = 1 per committee of 3) and places them again in seeded order, so they swap
//! shards in about every other epoch. A committee of 3 has a quorum of 3: every shard
//! finalizes only with its "any" validator voting, so after a move the shard the mover
//! joined finalizes only because the mover (a new process image of the same PID, in the
//! new shard's p2p network) caught up and votes there — which the test also reads from
//! the finalization certificates' signers. A transfer sent through the mover finalizes.
//!
//! A third node configured for any shard, whose key the beacon does not know, waits and
//! says so in `trellis_status` (`waiting`, role `"any"`) and `/readyz` (503).
//!
//! Real: processes, loopback TCP, p2p, consensus, the beacon's seeded shuffle, the
//! placement record and the re-exec into the new shard. Without the "any" role the
//! validators do not start (`shard = "any"` does not parse) and no shard finalizes.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use support::{Sharded, call, height, serving, shard_map, status, wait_for};
use trellis_node_api::shard::ShardMapInfo;
use trellis_node_api::{BlockInfo, Role, TransactionStatus, TxState, methods};
use trellis_node_types::{Signer, test_key, to_hex};

const CHAIN: &str = "any-proc";
const SEED: u64 = 14_500;

/// The shard whose committee in `map` includes `key`.
fn shard_in(map: &ShardMapInfo, key: &str) -> Option<u16> {
    map.shards
        .iter()
        .find(|s| s.validators.iter().any(|v| v == key))
        .map(|s| s.shard)
}

#[test]
fn an_any_shard_validator_follows_the_beacon_to_its_new_shard_and_votes_there() {
    let root = support::TestDir::new();

    let admin = test_key(SEED + 999);
    // Each shard's fixed validators on 127.0.145.11-12 and .21-22, the beacon on .1.
    let layout = Sharded {
        chain: CHAIN,
        prefix: "127.0.145",
        seed: SEED,
        committees: &[1, 2, 2],
        shard_count: 2,
        epoch_length: 16,
    };
    let funded: Vec<_> = (0..2)
        .flat_map(|slot| support::accounts_of(SEED + 700, slot, 2))
        .collect();
    let (mut committees, mut floating) = layout.setup_with_any(root.path(), &admin, &funded, 2);
    for node in committees.iter_mut().flatten().chain(floating.iter_mut()) {
        node.start_logging("info");
    }
    let limit = Duration::from_secs(120);
    let beacon = committees[0][0].rpc;
    let fixed = |shard: u16| committees[usize::from(shard) + 1][0].rpc;
    let keys: Vec<String> = (0..2)
        .map(|i| to_hex(test_key(SEED + 90 + i).public_key().as_ref()))
        .collect();

    // Both "any" validators are placed and serve their shards; both shards finalize
    // (which needs them: quorum 3 of 3).
    wait_for(
        "both shards to finalize with their any validators",
        limit,
        || height(fixed(0)) >= 2 && height(fixed(1)) >= 2,
    );
    let map = shard_map(beacon).unwrap();
    let start: Vec<u16> = keys.iter().map(|k| shard_in(&map, k).unwrap()).collect();
    assert_ne!(start[0], start[1], "one any validator per shard of 2 fixed");

    // A node configured for any shard whose key the beacon does not know waits, and
    // says so in its status and readiness.
    let dir = root.path().join("stranger");
    std::fs::create_dir_all(&dir).unwrap();
    support::key_file(&dir, &test_key(SEED + 98), &test_key(SEED + 598));
    let rpc: SocketAddr = "127.0.145.99:8545".parse().unwrap();
    let p2p: SocketAddr = "127.0.145.99:9000".parse().unwrap();
    support::node_config(
        &dir,
        root.path(),
        CHAIN,
        p2p,
        rpc,
        "kind = \"shard\"\nshard = \"any\"",
    );
    let mut stranger = support::Node::new(dir, rpc);
    stranger.start();
    wait_for(
        "the unplaced node to say it is in no committee",
        limit,
        || {
            status(rpc).is_some_and(|s| {
                s.role == Role::AnyShard
                    && s.validators.is_empty()
                    && s.tables.is_none()
                    && s.waiting.is_some_and(|w| {
                        w.contains("waiting for the beacon to place this validator")
                            && w.contains("register-validator --shard any")
                    })
            })
        },
    );
    let (code, body) = support::get(rpc, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("waiting for the beacon to place this validator"),
        "{body}"
    );

    // Watch the beacon's map until it moves an any validator.
    let mut moved = None;
    wait_for("the beacon to move an any validator", limit, || {
        let Some(map) = shard_map(beacon) else {
            return false;
        };
        moved = (0..2).find_map(|i| {
            let now = shard_in(&map, &keys[i])?;
            (now != start[i]).then_some((i, now, map.epoch))
        });
        moved.is_some()
    });
    let (i, to, epoch) = moved.unwrap();
    let (mover, key) = (floating[i].rpc, &keys[i]);
    eprintln!(
        "any validator {i} moved from shard {} to shard {to} in beacon epoch {epoch}",
        start[i]
    );

    // The moved process reports the new shard and is in its committee. It stays there at
    // least until the shard has ended that epoch, which needs its votes (the shuffle may
    // move it again afterwards, so the checks below hold whenever they are read).
    wait_for("the mover to serve its new shard", limit, || {
        serving(mover) == Some(to)
            && status(mover).is_some_and(|s| s.validators.contains(key) && s.epoch >= epoch)
    });

    // It caught up and votes there: certificates of the new shard's blocks of that epoch
    // carry its signature (a validator votes only once it has executed the block's state
    // height and its table roots agree: its replayed chain is the shard's).
    let from = height(fixed(to));
    wait_for(
        "a certificate of the new shard signed by the mover",
        limit,
        || {
            let top = height(fixed(to));
            (from.saturating_sub(64).max(1)..=top).rev().any(|h| {
                call(fixed(to), methods::GET_BLOCK, json!({"height": h}))
                    .ok()
                    .and_then(|v| serde_json::from_value::<BlockInfo>(v).ok())
                    .is_some_and(|b| b.epoch >= epoch && b.signers.is_some_and(|s| s.contains(key)))
            })
        },
    );

    // A transfer from an account of the new shard, sent through the mover (served there,
    // or forwarded there if the shuffle moved it on since), finalizes.
    let accounts = support::accounts_of(SEED + 700, to, 2);
    let tx = support::transfer_tx(CHAIN, &accounts[0], &accounts[1], 0, 40);
    let hash = support::send_retrying(mover, &tx, limit);
    wait_for("the transfer to finalize", limit, || {
        call(mover, methods::GET_TRANSACTION, json!({"hash": hash}))
            .ok()
            .and_then(|v| serde_json::from_value::<TransactionStatus>(v).ok())
            .is_some_and(|t| t.state == TxState::Committed && t.success == Some(true))
    });
    // The mover kept each shard's data apart.
    let data = floating[i].dir.join("data");
    assert!(data.join(format!("shard-{to}")).is_dir());
    assert!(data.join(format!("shard-{}", start[i])).is_dir());
}
