//! A sharded network of real `trellis-node` processes on 127.0.50.x (this test's own
//! loopback range): a beacon committee of 4 and two shards of 4. Shard nodes follow the
//! beacon over JSON-RPC (verifying its certificates), a transaction sent to the wrong
//! shard is forwarded to the owning one, a cross-shard transfer is taken by the sender's
//! shard, forged or out-of-range `SetShardCount`s are refused with clear errors, and a SIGKILLed shard
//! validator restarts and catches up while its shard keeps finalizing.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use support::{Node, Sharded, call, height, metrics, status, wait_for};
use trellis_node_api::shard::ShardMapInfo;
use trellis_node_api::{Role, TransactionStatus, TxState, error_codes, methods};
use trellis_node_types::{PrivateKey, Signer, SystemAction, SystemPayload, table_of, test_key};

const CHAIN: &str = "sharded-proc";

fn transfer(from: &PrivateKey, to: &PrivateKey, nonce: u64, amount: u64) -> String {
    support::transfer_tx(CHAIN, from, to, nonce, amount)
}

/// Committees: index 0 the beacon, 1 shard 0, 2 shard 1; 4 validators each on
/// 127.0.50.{10c + i + 1}.
fn setup(root: &Path, admin: &PrivateKey, funded: &[PrivateKey]) -> Vec<Vec<Node>> {
    Sharded {
        chain: CHAIN,
        prefix: "127.0.50",
        seed: 7_000,
        committees: &[4, 4, 4],
        shard_count: 2,
        epoch_length: 20,
    }
    .setup(root, admin, funded)
}

/// Test accounts whose table shard `slot` owns at genesis with 2 shards.
fn accounts_of(slot: u16, n: usize) -> Vec<PrivateKey> {
    support::accounts_of(8_000, slot, n)
}

#[test]
fn beacon_and_two_shards_route_follow_and_refuse() {
    let root = support::TestDir::new();
    let admin = test_key(7_999);
    let shard0 = accounts_of(0, 2);
    let shard1 = accounts_of(1, 2);
    let funded = [shard0[0].clone(), shard1[0].clone()];
    let mut committees = setup(root.path(), &admin, &funded);
    for nodes in &mut committees {
        for node in nodes.iter_mut() {
            node.start();
        }
    }
    let (b, s0, s1) = (
        committees[0][0].rpc,
        committees[1][0].rpc,
        committees[2][0].rpc,
    );
    let limit = Duration::from_secs(240);
    for nodes in &committees {
        for node in nodes {
            wait_for("every committee to finalize", limit, || {
                height(node.rpc) >= 2
            });
        }
    }
    assert_eq!(status(b).unwrap().role, Role::Beacon);
    assert_eq!(status(s1).unwrap().role, Role::Shard { shard: 1 });

    // Shard nodes follow the beacon: their shard map moves past genesis, verified.
    wait_for("shard 0 to follow the beacon", limit, || {
        call(s0, methods::GET_SHARD_MAP, Value::Null)
            .ok()
            .and_then(|v| serde_json::from_value::<ShardMapInfo>(v).ok())
            .is_some_and(|m| m.beacon_height >= 2)
    });
    let map: ShardMapInfo =
        serde_json::from_value(call(b, methods::GET_SHARD_MAP, Value::Null).unwrap()).unwrap();
    assert_eq!(map.shard_count, 2);
    assert_eq!(map.tables.len(), 256);
    assert_eq!(map.tables[200], 1);

    // A shard-1 transfer sent to a shard-0 node is forwarded and finalized on shard 1.
    let sent = call(
        s0,
        methods::SEND_TRANSACTION,
        json!({"tx": transfer(&shard1[0], &shard1[1], 0, 25)}),
    )
    .unwrap();
    assert_eq!(sent["shard"], 1, "{sent}");
    let hash = sent["hash"].as_str().unwrap().to_string();
    wait_for(
        "the forwarded transfer to finalize on shard 1",
        limit,
        || {
            call(s1, methods::GET_TRANSACTION, json!({"hash": hash}))
                .ok()
                .and_then(|v| serde_json::from_value::<TransactionStatus>(v).ok())
                .is_some_and(|t| t.state == TxState::Committed && t.success == Some(true))
        },
    );
    // Per-shard and per-table metrics (the autoscaler's inputs).
    let table = table_of(&shard1[0].public_key());
    let line =
        format!("trellis_table_txs_total{{network=\"{CHAIN}\",shard=\"1\",table=\"{table}\"}} 1");
    wait_for("the table's transaction counter", limit, || {
        metrics(s1).contains(&line)
    });
    assert!(metrics(s1).contains(&format!(
        "trellis_shard_count{{network=\"{CHAIN}\",shard=\"1\"}} 2"
    )));
    assert!(metrics(b).contains("shard=\"beacon\""));
    // Sent to its own shard, it stays there.
    let own = call(
        s0,
        methods::SEND_TRANSACTION,
        json!({"tx": transfer(&shard0[0], &shard0[1], 0, 5)}),
    )
    .unwrap();
    assert_eq!(own["shard"], 0);

    // A cross-shard transfer is taken by the sender's shard (its crediting is tested in
    // cross_shard_processes.rs).
    let cross = call(
        s0,
        methods::SEND_TRANSACTION,
        json!({"tx": transfer(&shard0[0], &shard1[1], 1, 5)}),
    )
    .unwrap();
    assert_eq!(cross["shard"], 0, "{cross}");

    // SetShardCount: forged, out of range, or to a shard node — clear refusals.
    let reshard = |signer: &PrivateKey, count| {
        SystemPayload {
            chain_id: CHAIN.into(),
            sequence: 0,
            action: SystemAction::SetShardCount {
                count,
                load: vec![],
            },
        }
        .sign(signer)
        .to_hex()
    };
    let (code, message) = call(
        b,
        methods::SUBMIT_SYSTEM,
        json!({"tx": reshard(&test_key(1), 3)}),
    )
    .unwrap_err();
    assert_eq!(code, error_codes::SYSTEM_REFUSED, "{message}");
    assert!(message.contains("admin key"), "{message}");
    let (code, message) =
        call(b, methods::SUBMIT_SYSTEM, json!({"tx": reshard(&admin, 5)})).unwrap_err();
    assert_eq!(code, error_codes::SYSTEM_REFUSED, "{message}");
    let (code, message) = call(
        committees[0][1].rpc,
        methods::SUBMIT_SYSTEM,
        json!({"tx": "00"}),
    )
    .unwrap_err();
    assert_eq!(code, error_codes::SYSTEM_REFUSED, "{message}");
    // A shard node forwards system transactions to the beacon: same refusal, from there.
    let (code, message) = call(
        s1,
        methods::SUBMIT_SYSTEM,
        json!({"tx": reshard(&test_key(1), 3)}),
    )
    .unwrap_err();
    assert_eq!(code, error_codes::SYSTEM_REFUSED, "{message}");
    assert!(message.contains("admin key"), "{message}");
    // (A shard node itself would answer "this node is not a beacon node": the message
    // above comes from the beacon's state check.)
    let (code, message) = call(
        s0,
        methods::SUBMIT_SYSTEM,
        json!({"tx": reshard(&admin, 2)}),
    )
    .unwrap_err();
    assert_eq!(code, error_codes::SYSTEM_REFUSED, "{message}");
    assert!(message.contains("already has 2 shards"), "{message}");
    let (code, _) = call(s1, methods::GET_BEACON_BLOCKS, json!({"from": 1})).unwrap_err();
    assert_eq!(code, error_codes::METHOD_NOT_FOUND);

    // SIGKILL a shard-1 validator: the other three keep finalizing; it restarts and
    // catches up from its data directory.
    committees[2][3].kill();
    let before = height(s1);
    wait_for("shard 1 to finalize without it", limit, || {
        height(s1) >= before + 3
    });
    committees[2][3].start();
    let target = height(s1);
    let restarted = committees[2][3].rpc;
    wait_for("the restarted validator to catch up", limit, || {
        height(restarted) >= target
    });
}
