//! A validator registered for "any" shard that fell behind catches up without a restart —
//! real `trellis-node` processes on 127.0.235.x (this test's own loopback range).
//!
//! A beacon of 1 and 2 shards of 3 fixed validators each run with 2 validators
//! registered for any shard. A committee of 4 has a quorum of 3, so every shard finalizes
//! without its "any" validator, and the beacon's seeded shuffle moves the "any"
//! validators between the shards at epoch boundaries (epochs of 8 blocks).
//!
//! One "any" validator is stopped (SIGKILL) while it serves shard `S`, and started again
//! once `S` has run 3 epochs further and the beacon keeps it out of `S`'s current
//! committee: its copy of `S`'s chain is epochs behind, and p2p keeps only the latest
//! peer set, which is `S`'s current committee on `S`'s nodes. It must replay `S` up to
//! the end of its last epoch there before it may leave (`placement::decide`), then do the
//! same in every shard the shuffle placed it in since. Before the fix every node of `S`
//! refused it (status `peers: 0`, stuck at its old epoch until the shuffle happened to
//! place it back in `S`, then again in the next shard); now a shard's nodes admit the
//! network's registered "any" validators as p2p followers, so it catches up, reaches the
//! shard the beacon places it in now and votes there (its signature in that shard's
//! certificates).
//!
//! Real: processes, loopback TCP, p2p admission, consensus, the beacon's shuffle, backfill,
//! the placement record and the re-exec into each shard. Without the followers it fails
//! only when the shuffle keeps the validator out long enough (in this small network it
//! often puts it back within a few epochs: one run of two failed); the follower rule
//! itself is pinned by `placement::tests`.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};
use support::{Sharded, height, serving, shard_map, status, wait_for};
use trellis_node_types::{Signer, test_key, to_hex};

const CHAIN: &str = "any-catch-up";
const SEED: u64 = 23_500;

#[test]
fn an_any_shard_validator_that_fell_behind_catches_up_and_votes_again() {
    let root = support::TestDir::new();
    let admin = test_key(SEED + 999);
    // The beacon on .1, the shards' fixed validators on .11-13 and .21-23, "any" on .91-92.
    let layout = Sharded {
        chain: CHAIN,
        prefix: "127.0.235",
        seed: SEED,
        committees: &[1, 3, 3],
        shard_count: 2,
        epoch_length: 8,
    };
    let (mut committees, mut floating) = layout.setup_with_any(root.path(), &admin, &[], 2);
    for node in committees.iter_mut().flatten().chain(floating.iter_mut()) {
        node.start_logging("info");
    }
    let limit = Duration::from_secs(120);
    let beacon = committees[0][0].rpc;
    let fixed = |shard: u16| committees[usize::from(shard) + 1][0].rpc;
    let key = to_hex(test_key(SEED + 90).public_key().as_ref());
    let lagging = floating[0].rpc;

    wait_for("both shards to finalize", limit, || {
        height(fixed(0)) >= 2 && height(fixed(1)) >= 2
    });
    let mut here = None;
    wait_for("the any validator to serve a shard", limit, || {
        here = serving(lagging);
        here.is_some()
    });
    let here = here.unwrap();
    let stopped_at = status(lagging).map_or(0, |s| s.epoch);
    floating[0].kill();

    // The shard runs on without it until it is 3 epochs ahead of the stopped copy and
    // the beacon keeps the stopped validator out of its current committee.
    let mut ahead = 0;
    let mut seen = String::new();
    wait_for(
        "the shard to leave the stopped validator behind",
        limit,
        || {
            let (Some(map), Some(s)) = (shard_map(beacon), status(fixed(here))) else {
                return false;
            };
            let now = format!(
                "beacon epoch {}, shard {here} epoch {} height {}, includes it: {}",
                map.epoch,
                s.epoch,
                s.finalized_height,
                s.validators.contains(&key)
            );
            if now != seen {
                eprintln!("{now}");
                seen = now;
            }
            ahead = s.epoch;
            s.epoch >= stopped_at + 3 && !s.validators.contains(&key)
        },
    );
    eprintln!(
        "any validator stopped in shard {here} at epoch {stopped_at}; restarted with shard \
         {here} at epoch {ahead}, which does not include it"
    );
    let from = height(fixed(0)).min(height(fixed(1)));
    let restarted = Instant::now();
    floating[0].start_logging("info");

    // It catches up through every placement it missed and ends in the committee the
    // beacon places it in now, at least as far as the shard it left had run.
    let mut seen = String::new();
    wait_for("the restarted validator to catch up", limit, || {
        let Some(s) = status(lagging) else {
            return false;
        };
        let now = format!(
            "restarted validator: {:?} epoch {} height {} peers {}",
            s.role, s.epoch, s.finalized_height, s.peers
        );
        if now != seen {
            eprintln!("{now}");
            seen = now;
        }
        s.epoch >= ahead && s.validators.contains(&key)
    });
    eprintln!(
        "caught up to epoch {ahead} or later in {:.1} s",
        restarted.elapsed().as_secs_f64()
    );
    // And votes there: a certificate of its current shard carries its signature.
    wait_for(
        "a certificate signed by the restarted validator",
        limit,
        || {
            serving(lagging)
                .is_some_and(|shard| support::signed_since(fixed(shard), &key, from, ahead))
        },
    );
    eprintln!(
        "signs certificates again {:.1} s after its restart",
        restarted.elapsed().as_secs_f64()
    );
}
