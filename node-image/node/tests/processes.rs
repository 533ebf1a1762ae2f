//! Four real `trellis-node` processes on 127.0.0.x: transfers through JSON-RPC, SIGKILL
//! of one validator (the others keep finalizing), its restart (it catches up), and SIGKILL
//! of all followed by a restart (identical balances and blocks, nothing finalized lost).

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use support::{Node, call, get, height, status, wait_for};
use trellis_node_api::{AccountInfo, BlockInfo, TransactionStatus, TxState, methods};
use trellis_node_types::{Encode, PrivateKey, Signer, TxKind, UnsignedTx, test_key, to_hex};

const CHAIN: &str = "proc-test";
const N: usize = 4;

fn account(addr: SocketAddr, key: &PrivateKey) -> AccountInfo {
    let v = call(
        addr,
        methods::GET_ACCOUNT,
        json!({"account": to_hex(key.public_key().as_ref())}),
    )
    .unwrap();
    serde_json::from_value(v).unwrap()
}

fn transfer(addr: SocketAddr, from: &PrivateKey, to: &PrivateKey, amount: u64) -> String {
    let nonce = account(addr, from).nonce;
    let tx = UnsignedTx {
        chain_id: CHAIN.into(),
        from: from.public_key(),
        nonce,
        fee: 1,
        kind: TxKind::Transfer {
            to: to.public_key(),
            amount,
        },
    }
    .sign(from);
    let result = call(
        addr,
        methods::SEND_TRANSACTION,
        json!({"tx": to_hex(&tx.encode())}),
    )
    .unwrap();
    result["hash"].as_str().unwrap().to_string()
}

fn committed(addr: SocketAddr, hash: &str) -> bool {
    call(addr, methods::GET_TRANSACTION, json!({"hash": hash}))
        .ok()
        .and_then(|v| serde_json::from_value::<TransactionStatus>(v).ok())
        .is_some_and(|s| s.state == TxState::Committed && s.success == Some(true))
}

fn block(addr: SocketAddr, height: u64) -> BlockInfo {
    serde_json::from_value(call(addr, methods::GET_BLOCK, json!({"height": height})).unwrap())
        .unwrap()
}

/// Ports derived from the process id so parallel runs on one machine rarely collide.
fn base_port() -> u16 {
    20_000 + (std::process::id() % 2_000) as u16 * 10
}

fn setup(root: &Path, accounts: &[PrivateKey]) -> Vec<Node> {
    let base = base_port();
    let mut members = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..N {
        let ip = format!("127.0.0.{}", i + 2);
        let p2p: SocketAddr = format!("{ip}:{}", base + i as u16).parse().unwrap();
        let rpc: SocketAddr = format!("{ip}:{}", base + 5 + i as u16).parse().unwrap();
        let (node, member) = support::consortium_node(root, CHAIN, &format!("org{i}"), p2p, rpc);
        members.push(member);
        nodes.push(node);
    }
    support::consortium_genesis(root, CHAIN, None, &members, accounts);
    nodes
}

#[test]
fn four_processes_survive_kills_and_restarts() {
    let root = support::TestDir::new();
    let accounts: Vec<PrivateKey> = (0..4).map(|i| test_key(500 + i)).collect();
    let mut nodes = setup(root.path(), &accounts);
    for node in &mut nodes {
        node.start();
    }
    let rpcs: Vec<SocketAddr> = nodes.iter().map(|n| n.rpc).collect();
    let limit = Duration::from_secs(60);
    wait_for("all nodes to finalize", limit, || {
        rpcs.iter().all(|r| height(*r) >= 2)
    });

    // Probes and metrics.
    let (code, text) = get(rpcs[0], "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(text.contains("trellis_finalized_height{network=\"proc-test\",shard=\"0\"}"));
    assert_eq!(get(rpcs[0], "/healthz").unwrap().0, 200);
    wait_for("readiness", limit, || {
        get(rpcs[0], "/readyz").is_some_and(|r| r.0 == 200)
    });

    // Transfers through every node.
    let mut hashes = Vec::new();
    for (i, rpc) in rpcs.iter().enumerate() {
        hashes.push((
            *rpc,
            transfer(*rpc, &accounts[i], &accounts[(i + 1) % 4], 100),
        ));
    }
    wait_for("transfers to commit", limit, || {
        hashes.iter().all(|(r, h)| committed(*r, h))
    });

    // SIGKILL one validator: three of four are a quorum and keep finalizing.
    nodes[3].kill();
    let before = height(rpcs[0]);
    wait_for("progress without node 3", limit, || {
        height(rpcs[0]) >= before + 3
    });
    let hash = transfer(rpcs[1], &accounts[1], &accounts[2], 7);
    wait_for("transfer without node 3", limit, || {
        committed(rpcs[1], &hash)
    });

    // Restart it: it catches up from its data dir and its peers.
    nodes[3].start();
    let target = height(rpcs[0]);
    wait_for("node 3 to catch up", limit, || height(rpcs[3]) >= target);

    // SIGKILL everyone, restart everyone.
    let heights: Vec<u64> = rpcs.iter().map(|r| height(*r)).collect();
    for node in &mut nodes {
        node.kill();
    }
    for node in &mut nodes {
        node.start();
    }
    wait_for("all nodes to answer after restart", limit, || {
        rpcs.iter().all(|r| status(*r).is_some())
    });
    for (i, rpc) in rpcs.iter().enumerate() {
        assert!(height(*rpc) >= heights[i], "node {i} lost finalized blocks");
    }
    let resume = heights.iter().max().unwrap() + 3;
    wait_for("progress after full restart", limit, || {
        rpcs.iter().all(|r| height(*r) >= resume)
    });

    // Identical blocks and balances everywhere.
    let common = rpcs.iter().map(|r| height(*r)).min().unwrap();
    for h in 1..=common {
        let first = block(rpcs[0], h);
        for rpc in &rpcs[1..] {
            assert_eq!(block(*rpc, h).digest, first.digest, "fork at {h}");
        }
    }
    let mut total = 0;
    for key in &accounts {
        let first = account(rpcs[0], key);
        total += first.balance;
        for rpc in &rpcs[1..] {
            // No transfers are in flight any more: balances and table roots are final.
            let other = account(*rpc, key);
            assert_eq!(other.balance, first.balance);
            assert_eq!(other.table_root, first.table_root);
        }
    }
    // 5 successful transfers, each paying a fee of 1 into the fee pool.
    assert_eq!(total, 4 * 1_000_000 - 5);
    // Account 2 received 100 and 7 and sent 100 plus a fee of 1.
    assert_eq!(account(rpcs[2], &accounts[2]).balance, 1_000_006);
}
