//! Cross-shard transfers between real `trellis-node` processes on 127.0.52.x (this
//! test's own loopback range): a beacon committee of 4 and two shards of 4. Transfers
//! from accounts of either shard to accounts of the other, each sent to any node of the
//! network (beacon nodes included), are debited on the sender's shard and credited on the
//! receiver's, where the credits came through the HTTP relay with certificates and proofs
//! checked by every validator. A validator of the receiving shard is SIGKILLed: the
//! transfers sent meanwhile are still credited; it restarts and catches up.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use support::{Node, Sharded, call, height, metrics, wait_for};
use trellis_node_api::{AccountInfo, NodeStatus, TransactionStatus, TxState, methods};
use trellis_node_types::{
    Encode, PrivateKey, PublicKey, Signer, TxKind, UnsignedTx, test_key, to_hex,
};

const CHAIN: &str = "cross-proc";

/// Committees: index 0 the beacon, 1 shard 0, 2 shard 1; 4 validators each on
/// 127.0.52.{10c + i + 1}.
fn setup(root: &Path, admin: &PrivateKey, funded: &[PrivateKey]) -> Vec<Vec<Node>> {
    Sharded {
        chain: CHAIN,
        prefix: "127.0.52",
        seed: 17_000,
        committees: &[4, 4, 4],
        shard_count: 2,
        epoch_length: 20,
    }
    .setup(root, admin, funded)
}

/// Test accounts whose table shard `slot` owns at genesis with 2 shards.
fn accounts_of(slot: u16, n: usize) -> Vec<PrivateKey> {
    support::accounts_of(18_000, slot, n)
}

fn balance(addr: SocketAddr, account: &PublicKey) -> Option<u64> {
    let info = call(
        addr,
        methods::GET_ACCOUNT,
        json!({"account": to_hex(account.as_ref())}),
    )
    .ok()?;
    serde_json::from_value::<AccountInfo>(info)
        .ok()
        .map(|a| a.balance)
}

fn committed(addr: SocketAddr, hash: &str) -> bool {
    call(addr, methods::GET_TRANSACTION, json!({"hash": hash}))
        .ok()
        .and_then(|v| serde_json::from_value::<TransactionStatus>(v).ok())
        .is_some_and(|t| t.state == TxState::Committed && t.success == Some(true))
}

/// Sends one round of transfers — every sender of `from` pays `amount` to its receiver
/// in the other shard — each through a different node of `via`; waits until each is
/// finalized on the sender's shard and returns the amounts owed per receiver.
fn round(
    senders: &[(PrivateKey, PublicKey)],
    nonce: u64,
    amount: u64,
    via: &[SocketAddr],
    home: SocketAddr,
    turn: &mut usize,
) {
    let mut hashes = Vec::new();
    for (from, to) in senders {
        let tx = UnsignedTx {
            chain_id: CHAIN.into(),
            from: from.public_key(),
            nonce,
            fee: 1,
            kind: TxKind::Transfer {
                to: to.clone(),
                amount,
            },
        }
        .sign(from);
        let node = via[*turn % via.len()];
        *turn += 1;
        let sent = call(
            node,
            methods::SEND_TRANSACTION,
            json!({"tx": to_hex(&tx.encode())}),
        )
        .unwrap_or_else(|e| panic!("sending through {node}: {e:?}"));
        hashes.push(sent["hash"].as_str().unwrap().to_string());
    }
    for hash in hashes {
        wait_for(
            "a cross-shard transfer to finalize on its sender's shard",
            LIMIT,
            || committed(home, &hash),
        );
    }
}

const LIMIT: Duration = Duration::from_secs(240);

#[test]
fn cross_shard_transfers_are_credited_through_a_validator_crash() {
    let root = support::TestDir::new();
    let admin = test_key(17_999);
    let (a0, a1) = (accounts_of(0, 6), accounts_of(1, 6));
    // Senders a0[0..3] (shard 0) pay a1[3..6] (shard 1), and a1[0..3] pay a0[3..6].
    let funded: Vec<PrivateKey> = a0.iter().chain(&a1).cloned().collect();
    let mut committees = setup(root.path(), &admin, &funded);
    for nodes in &mut committees {
        for node in nodes.iter_mut() {
            node.start();
        }
    }
    for nodes in &committees {
        for node in nodes {
            wait_for("every committee to finalize", LIMIT, || {
                height(node.rpc) >= 2
            });
        }
    }
    let every: Vec<SocketAddr> = committees.iter().flatten().map(|n| n.rpc).collect();
    let (s0, s1) = (committees[1][0].rpc, committees[2][0].rpc);
    let to_1: Vec<(PrivateKey, PublicKey)> = (0..3)
        .map(|i| (a0[i].clone(), a1[3 + i].public_key()))
        .collect();
    let to_0: Vec<(PrivateKey, PublicKey)> = (0..3)
        .map(|i| (a1[i].clone(), a0[3 + i].public_key()))
        .collect();
    let status: NodeStatus =
        serde_json::from_value(call(s1, methods::STATUS, Value::Null).unwrap()).unwrap();
    assert_eq!(
        status.tables.as_ref().map(Vec::len),
        Some(128),
        "{status:?}"
    );
    assert!(status.tables.unwrap().iter().all(|t| *t >= 128));

    // Both directions, sent through every node of the network in turn.
    let mut turn = 0;
    round(&to_1, 0, 100, &every, s0, &mut turn);
    round(&to_0, 0, 100, &every, s1, &mut turn);
    round(&to_1, 1, 50, &every, s0, &mut turn);
    let credited = |node: SocketAddr, receivers: &[(PrivateKey, PublicKey)], expected: u64| {
        receivers
            .iter()
            .all(|(_, to)| balance(node, to) == Some(1_000_000 + expected))
    };
    wait_for("shard 1 to credit 150 to each receiver", LIMIT, || {
        credited(s1, &to_1, 150)
    });
    wait_for("shard 0 to credit 100 to each receiver", LIMIT, || {
        credited(s0, &to_0, 100)
    });
    let text = metrics(s1);
    assert!(text.contains("trellis_receipts_pending{"), "{text}");
    assert!(text.contains("trellis_table_mempool_depth{"), "{text}");

    // SIGKILL a validator of the receiving shard: the other three keep crediting.
    committees[2][3].kill();
    let alive: Vec<SocketAddr> = every
        .iter()
        .copied()
        .filter(|a| *a != committees[2][3].rpc)
        .collect();
    round(&to_1, 2, 25, &alive, s0, &mut turn);
    round(&to_1, 3, 25, &alive, s0, &mut turn);
    wait_for(
        "shard 1 to credit without the killed validator",
        LIMIT,
        || credited(s1, &to_1, 200),
    );
    // Restarted, it catches up from its data directory and holds the credits too.
    committees[2][3].start();
    let restarted = committees[2][3].rpc;
    let target = height(s1);
    wait_for("the restarted validator to catch up", LIMIT, || {
        height(restarted) >= target
    });
    wait_for("the restarted validator to hold the credits", LIMIT, || {
        credited(restarted, &to_1, 200)
    });
    // Senders paid amount + fee per transfer; nothing credited twice anywhere.
    for (from, _) in &to_1 {
        assert_eq!(balance(s0, &from.public_key()), Some(1_000_000 - 200 - 4));
    }
    for node in &committees[2] {
        assert!(credited(node.rpc, &to_1, 200), "{}", node.rpc);
    }
    for node in &committees[1] {
        assert!(credited(node.rpc, &to_0, 100), "{}", node.rpc);
    }
}
