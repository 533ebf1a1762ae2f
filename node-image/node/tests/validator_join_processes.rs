//! A validator joins a running shard — real `trellis-node` processes on 127.0.144.x (this
//! test's own loopback range). A beacon of 4 and shard 0 of 4 run; a fifth node registers
//! itself for shard 0 with `trellis-node system register-validator` (public mode: signed
//! by its own node key) and starts. From the next beacon epoch it is in shard 0's
//! validator set, replays the shard's chain from its peers and finalizes with them. Then
//! one of the four founding validators is SIGKILLed: with five validators the quorum is
//! four, so shard 0 keeps finalizing only because the newcomer votes. A transfer sent
//! through the newcomer finalizes.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use support::{Node, Sharded, call, cli, height, key_file, node_config, status, wait_for};
use trellis_node_api::{TransactionStatus, TxState, methods};
use trellis_node_types::{Signer, test_key, to_hex};

const CHAIN: &str = "join-proc";
const SEED: u64 = 9_000;

#[test]
fn a_registered_validator_joins_a_running_shard_and_its_votes_count() {
    let root = support::TestDir::new();
    let admin = test_key(SEED + 999);
    let accounts = support::accounts_of(SEED + 700, 0, 2);
    // Committees: the beacon on 127.0.144.1-4, shard 0 on .11-14 (support::Sharded).
    let mut committees = Sharded {
        chain: CHAIN,
        prefix: "127.0.144",
        seed: SEED,
        committees: &[4, 4],
        shard_count: 1,
        epoch_length: 10,
    }
    .setup(root.path(), &admin, &[accounts[0].clone()]);
    for nodes in &mut committees {
        for node in nodes.iter_mut() {
            node.start();
        }
    }
    let limit = Duration::from_secs(240);
    for nodes in &committees {
        for node in nodes {
            wait_for("every committee to finalize", limit, || {
                height(node.rpc) >= 2
            });
        }
    }
    let (beacon, shard) = (committees[0][0].rpc, committees[1][0].rpc);

    // The newcomer: its own keys, a shard-0 config, the next free address of shard 0.
    let dir = root.path().join("newcomer");
    std::fs::create_dir_all(&dir).unwrap();
    let key = test_key(SEED + 19);
    key_file(&dir, &key, &test_key(SEED + 519));
    let p2p: SocketAddr = "127.0.144.15:9000".parse().unwrap();
    let rpc: SocketAddr = "127.0.144.15:8545".parse().unwrap();
    node_config(
        &dir,
        root.path(),
        CHAIN,
        p2p,
        rpc,
        "kind = \"shard\"\nshard = 0",
    );
    let mut newcomer = Node::new(dir.clone(), rpc);
    newcomer.start();
    let me = to_hex(key.public_key().as_ref());
    assert!(
        !status(shard).unwrap().validators.contains(&me),
        "not a validator before it registers"
    );
    cli(&[
        "system",
        "register-validator",
        "--key-file",
        dir.join("keys.json").to_str().unwrap(),
        "--rpc",
        &format!("http://{beacon}"),
        "--shard",
        "0",
        "--p2p-address",
        &p2p.to_string(),
        "--rpc-address",
        &rpc.to_string(),
    ]);

    // From the next epoch shard 0's committee has five validators, the newcomer among
    // them, and the newcomer has replayed the shard's chain.
    wait_for("the newcomer in shard 0's validator set", limit, || {
        status(shard).is_some_and(|s| s.validators.len() == 5 && s.validators.contains(&me))
    });
    wait_for("the newcomer to catch up with shard 0", limit, || {
        status(newcomer.rpc).is_some_and(|s| {
            !s.syncing && s.validators.contains(&me) && s.finalized_height + 2 >= height(shard)
        })
    });

    // Five validators, quorum four: without one founder the shard needs the newcomer.
    committees[1][3].kill();
    let from = height(shard);
    wait_for(
        "shard 0 to finalize 3 more blocks with the newcomer voting",
        limit,
        || height(shard) >= from + 3 && height(newcomer.rpc) >= from + 3,
    );

    // A transfer sent through the newcomer finalizes.
    let sent = call(
        newcomer.rpc,
        methods::SEND_TRANSACTION,
        json!({"tx": support::transfer_tx(CHAIN, &accounts[0], &accounts[1], 0, 40)}),
    )
    .unwrap();
    let hash = sent["hash"].as_str().unwrap().to_string();
    wait_for("the transfer to finalize", limit, || {
        call(
            newcomer.rpc,
            methods::GET_TRANSACTION,
            json!({"hash": hash}),
        )
        .ok()
        .and_then(|v| serde_json::from_value::<TransactionStatus>(v).ok())
        .is_some_and(|t| t.state == TxState::Committed && t.success == Some(true))
    });
}
