//! Account reads and batches routed to the owning shard, with real `trellis-node`
//! processes on 127.0.110.x (this test's own loopback range): a beacon of 1, shards 0
//! and 1 of 1, and slot 2 of 1 registered to be created by a reshard.
//!
//! - `trellis_getAccount` through a node of the other shard and through a beacon node
//!   answers the owner's balance, says which shard answered, and its Merkle proof
//!   verifies against that shard's root as its certified block header carries it.
//! - A JSON-RPC batch mixing sends of both shards and account reads, sent to one shard
//!   node or to the beacon, is split by owning shard: every answer at its place, each
//!   transaction admitted by its sender's shard and finalized there.
//! - `trellis_getTransaction` through any node (another shard's, the beacon's, the
//!   waiting slot's; alone or in a batch) finds the shard that executed the transaction
//!   and says which; a hash no shard knows is "unknown" everywhere.
//! - While `SetShardCount 3` hands tables to the new shard, reads of funded accounts
//!   through every node return the right balance or the clear "being handed off" error
//!   (-33012), never 0 or a stale value; afterwards the new owner answers them all.
//!   Transaction statuses read meanwhile are the executing shard's or -33012, never
//!   "unknown"; after the handoff a transaction executed by a shard that handed the
//!   sender's table away is still found there, and a new one from a moved account is
//!   found on the new shard through every node.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::{BIN, Node, Sharded, call, height, key_file, post, shard_map, status, wait_for};
use trellis_node_api::{AccountInfo, TransactionStatus, TxState, error_codes, methods};
use trellis_node_state::{Account, ProvenAccount, verify_account_proof};
use trellis_node_types::{Block, PrivateKey, Signer, from_hex, table_of, test_key, to_hex};

const CHAIN: &str = "acct-route";
const FUNDS: u64 = 1_000_000;

/// Committees: index 0 the beacon, 1..=3 slots 0..=2 (slot 2 beyond the genesis shard
/// count of 2); one validator each on 127.0.110.{10c + 1}.
fn setup(root: &Path, admin: &PrivateKey, funded: &[PrivateKey]) -> Vec<Vec<Node>> {
    Sharded {
        chain: CHAIN,
        prefix: "127.0.110",
        seed: 11_000,
        committees: &[1, 1, 1, 1],
        shard_count: 2,
        epoch_length: 10,
    }
    .setup(root, admin, funded)
}

fn account(addr: SocketAddr, key: &PrivateKey) -> Result<AccountInfo, (i64, String)> {
    let v = call(
        addr,
        methods::GET_ACCOUNT,
        json!({"account": to_hex(key.public_key().as_ref())}),
    )?;
    Ok(serde_json::from_value(v).unwrap())
}

/// The answer's proof holds for the account, balance and nonce it reports.
fn proof_holds(key: &PrivateKey, info: &AccountInfo) -> bool {
    let proven = ProvenAccount {
        account: Account {
            balance: info.balance,
            nonce: info.nonce,
        },
        table: u8::try_from(info.table).unwrap(),
        table_root: from_hex(&info.table_root).unwrap().try_into().unwrap(),
        proof: from_hex(&info.proof).unwrap(),
    };
    verify_account_proof(&key.public_key(), &proven)
}

/// The root of `table` in the header of `shard`'s latest directly certified block, with
/// the state height it is of.
fn certified_root(addr: SocketAddr, table: u8) -> Option<(u64, [u8; 32])> {
    let v = call(addr, "trellis_getCertifiedBlock", json!({})).ok()?;
    let bytes = from_hex(v["block"].as_str()?)?;
    let block = Block::decode_untrusted(&bytes).ok()?;
    let header = &block.sharding.as_ref()?.header;
    Some((header.state_height, header.root_of(table)?))
}

fn committed(addr: SocketAddr, hash: &str) -> bool {
    call(addr, methods::GET_TRANSACTION, json!({"hash": hash}))
        .ok()
        .and_then(|v| serde_json::from_value::<TransactionStatus>(v).ok())
        .is_some_and(|t| t.state == TxState::Committed && t.success == Some(true))
}

/// A transaction's status through `addr`: (state, shard that answered).
fn transaction(addr: SocketAddr, hash: &str) -> Result<(TxState, Option<u64>), (i64, String)> {
    let v = call(addr, methods::GET_TRANSACTION, json!({"hash": hash}))?;
    let status: TransactionStatus = serde_json::from_value(v.clone()).unwrap();
    Ok((status.state, v["shard"].as_u64()))
}

fn send(id: u64, from: &PrivateKey, to: &PrivateKey, nonce: u64, amount: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": methods::SEND_TRANSACTION,
           "params": {"tx": support::transfer_tx(CHAIN, from, to, nonce, amount)}})
}

fn read(id: u64, key: &PrivateKey) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": methods::GET_ACCOUNT,
           "params": {"account": to_hex(key.public_key().as_ref())}})
}

fn batch(addr: SocketAddr, requests: &[Value]) -> Vec<Value> {
    let body = post(addr, "/rpc", &Value::Array(requests.to_vec()).to_string()).unwrap();
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn account_reads_and_batches_reach_the_owning_shard_through_a_reshard() {
    let root = support::TestDir::new();
    let admin = test_key(11_999);
    // Two accounts of each genesis shard for the transfers, and one funded account in
    // each group of 16 tables, whatever shard they end up in, for the reshard.
    let shard0 = support::accounts_of(12_000, 0, 2);
    let shard1 = support::accounts_of(12_000, 1, 2);
    let mut spread: Vec<PrivateKey> = Vec::new();
    for i in 0.. {
        let key = test_key(13_000 + i);
        let group = table_of(&key.public_key()) / 16;
        if !spread
            .iter()
            .any(|k| table_of(&k.public_key()) / 16 == group)
        {
            spread.push(key);
        }
        if spread.len() == 16 {
            break;
        }
    }
    let mut funded = vec![shard0[0].clone(), shard1[0].clone()];
    funded.extend(spread.iter().cloned());
    let admin_dir = root.path().join("admin");
    std::fs::create_dir_all(&admin_dir).unwrap();
    key_file(&admin_dir, &test_key(11_998), &admin);
    let mut committees = setup(root.path(), &admin, &funded);
    for nodes in &mut committees {
        for node in nodes.iter_mut() {
            node.start();
        }
    }
    let (b, s0, s1, s2) = (
        committees[0][0].rpc,
        committees[1][0].rpc,
        committees[2][0].rpc,
        committees[3][0].rpc,
    );
    let nodes = [b, s0, s1, s2];
    let limit = Duration::from_secs(300);
    for addr in [b, s0, s1] {
        wait_for("the beacon and shards 0 and 1 to finalize", limit, || {
            height(addr) >= 2
        });
    }
    for addr in [s0, s1] {
        wait_for("the shards to follow the beacon", limit, || {
            shard_map(addr).is_some_and(|m| m.beacon_height >= 1)
        });
    }

    // 1. Reads through a node of the other shard and through the beacon: the owner's
    //    balance, the owner named, a proof that holds against the owner's header root.
    for (key, owner, other) in [(&shard0[0], 0u16, s1), (&shard1[0], 1, s0)] {
        for via in [other, b] {
            let info = account(via, key).unwrap();
            assert_eq!(info.balance, FUNDS, "read through {via}");
            assert_eq!(info.shard, Some(owner), "read through {via}");
            assert!(proof_holds(key, &info), "proof of a read through {via}");
        }
        let owner_rpc = nodes[usize::from(owner) + 1];
        let info = account(owner_rpc, key).unwrap();
        assert_eq!(info.shard, Some(owner));
        // Nothing has touched the table yet: every later header carries the same root.
        let table = table_of(&key.public_key());
        wait_for("a certified header of the read's height", limit, || {
            certified_root(owner_rpc, table).is_some_and(|(h, _)| h >= info.height)
        });
        let (_, root) = certified_root(owner_rpc, table).unwrap();
        assert_eq!(
            to_hex(&root),
            info.table_root,
            "the header's root of table {table}"
        );
    }
    // A never-funded account reads 0 with a non-existence proof, from its owner.
    let info = account(s0, &shard1[1]).unwrap();
    assert_eq!((info.balance, info.shard), (0, Some(1)));
    assert!(proof_holds(&shard1[1], &info));

    // 2. Batches split by owning shard, answers in order.
    let answers = batch(
        s0,
        &[
            send(1, &shard1[0], &shard1[1], 0, 10),
            send(2, &shard0[0], &shard0[1], 0, 20),
            read(3, &shard1[0]),
            send(4, &shard1[0], &shard1[1], 1, 30),
            json!({"jsonrpc": "2.0", "id": 5, "method": methods::STATUS}),
            send(6, &shard1[0], &shard1[1], 1, 30),
        ],
    );
    let ids: Vec<u64> = answers.iter().map(|a| a["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6], "{answers:?}");
    let shard_of = |a: &Value| a["result"]["shard"].as_u64();
    assert_eq!(shard_of(&answers[0]), Some(1), "{}", answers[0]);
    assert_eq!(shard_of(&answers[1]), Some(0), "{}", answers[1]);
    assert_eq!(shard_of(&answers[2]), Some(1), "{}", answers[2]);
    assert_eq!(answers[2]["result"]["balance"], FUNDS);
    assert_eq!(shard_of(&answers[3]), Some(1), "{}", answers[3]);
    assert_eq!(
        answers[4]["result"]["role"]["kind"], "shard",
        "{}",
        answers[4]
    );
    // The same transaction twice: the owner's own refusal, at its place.
    assert_eq!(
        answers[5]["error"]["code"],
        error_codes::ALREADY_KNOWN,
        "{}",
        answers[5]
    );
    // Through the beacon, which forwards every send and read.
    let through_beacon = batch(
        b,
        &[
            send(7, &shard0[0], &shard0[1], 1, 40),
            send(8, &shard1[0], &shard1[1], 2, 50),
        ],
    );
    assert_eq!(shard_of(&through_beacon[0]), Some(0), "{through_beacon:?}");
    assert_eq!(shard_of(&through_beacon[1]), Some(1), "{through_beacon:?}");
    let hashes: Vec<(SocketAddr, String)> = [
        (s1, &answers[0]),
        (s0, &answers[1]),
        (s1, &answers[3]),
        (s0, &through_beacon[0]),
        (s1, &through_beacon[1]),
    ]
    .into_iter()
    .map(|(addr, a)| (addr, a["result"]["hash"].as_str().unwrap().to_string()))
    .collect();
    for (addr, hash) in &hashes {
        wait_for(
            "the batched transfers to finalize on their shards",
            limit,
            || committed(*addr, hash),
        );
    }
    // Their statuses through every node: the executing shard's answer, named.
    let executed: Vec<(String, u64)> = hashes
        .iter()
        .map(|(addr, hash)| (hash.clone(), u64::from(*addr != s0)))
        .collect();
    for (hash, shard) in &executed {
        for via in nodes {
            assert_eq!(
                transaction(via, hash),
                Ok((TxState::Committed, Some(*shard))),
                "status of {hash} through {via}"
            );
        }
    }
    let unknown = to_hex(&[7u8; 32]);
    for via in nodes {
        assert_eq!(
            transaction(via, &unknown),
            Ok((TxState::Unknown, None)),
            "a hash nobody knows, through {via}"
        );
    }
    // A batch of statuses through the beacon: one batch per shard, answers in order.
    let statuses: Vec<Value> = executed
        .iter()
        .chain([(unknown.clone(), 0)].iter())
        .enumerate()
        .map(|(i, (hash, _))| {
            json!({"jsonrpc": "2.0", "id": i, "method": methods::GET_TRANSACTION,
                   "params": {"hash": hash}})
        })
        .collect();
    let answers = batch(b, &statuses);
    for (i, (_, shard)) in executed.iter().enumerate() {
        assert_eq!(answers[i]["id"], i, "{answers:?}");
        assert_eq!(answers[i]["result"]["state"], "committed", "{answers:?}");
        assert_eq!(answers[i]["result"]["shard"], *shard, "{answers:?}");
    }
    assert_eq!(answers[executed.len()]["result"]["state"], "unknown");

    // Fees of 1 each: 3 transfers from shard 1's account, 2 from shard 0's.
    wait_for("the payer's balance through the other shard", limit, || {
        account(s0, &shard1[0]).is_ok_and(|i| i.balance == FUNDS - 90 - 3 && i.nonce == 3)
    });
    wait_for("the payer's balance through the beacon", limit, || {
        account(b, &shard0[0]).is_ok_and(|i| i.balance == FUNDS - 60 - 2 && i.nonce == 2)
    });

    // 3. Reshard 2 → 3 while reading the spread accounts through every node.
    wait_for("slot 2 to report waiting", limit, || {
        status(s2)
            .and_then(|s| s.waiting)
            .is_some_and(|w| w.contains("waiting for shard 2"))
    });
    let out = Command::new(BIN)
        .args(["system", "set-shard-count", "--key-file"])
        .arg(admin_dir.join("keys.json"))
        .args(["--rpc", &format!("http://{b}"), "--count", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut answered, mut handing_off) = (0u64, 0u64);
    let mut reads = |rounds_after_handoff: &mut u32| {
        for key in &spread {
            for via in nodes {
                match account(via, key) {
                    Ok(info) => {
                        assert_eq!(
                            (info.balance, info.nonce),
                            (FUNDS, 0),
                            "a funded account read wrong through {via}: {info:?}"
                        );
                        assert!(info.shard.is_some(), "{info:?}");
                        assert!(proof_holds(key, &info), "{info:?}");
                        answered += 1;
                    }
                    Err((code, message)) => {
                        assert_eq!(
                            code,
                            error_codes::RESHARDING,
                            "read through {via}: {message}"
                        );
                        assert!(
                            message.contains("being handed off")
                                || message.contains("retry shortly"),
                            "{message}"
                        );
                        handing_off += 1;
                    }
                }
            }
        }
        for (hash, shard) in &executed {
            for via in nodes {
                match transaction(via, hash) {
                    Ok(found) => assert_eq!(
                        found,
                        (TxState::Committed, Some(*shard)),
                        "status of {hash} through {via}"
                    ),
                    Err((code, message)) => {
                        assert_eq!(code, error_codes::RESHARDING, "{message}");
                        assert!(message.contains("retry shortly"), "{message}");
                    }
                }
            }
        }
        let done = status(s2).is_some_and(|s| {
            s.waiting.is_none() && s.tables.as_ref().is_some_and(|t| !t.is_empty())
        });
        if done {
            *rounds_after_handoff += 1;
        }
        *rounds_after_handoff >= 3
    };
    let mut after = 0;
    wait_for(
        "slot 2 to take over its tables, reads checked throughout",
        limit,
        || reads(&mut after),
    );
    eprintln!(
        "during the reshard: {answered} reads answered, {handing_off} refused as handing off"
    );
    // The new shard owns some funded accounts, and every node's read of them names it.
    let map = shard_map(b).unwrap();
    let moved: Vec<&PrivateKey> = spread
        .iter()
        .filter(|k| map.tables[usize::from(table_of(&k.public_key()))] == 2)
        .collect();
    assert!(!moved.is_empty(), "no funded account moved to shard 2");
    for key in &moved {
        for via in nodes {
            wait_for("the new owner to answer through every node", limit, || {
                account(via, key)
                    .is_ok_and(|i| i.shard == Some(2) && i.balance == FUNDS && proof_holds(key, &i))
            });
        }
    }
    // Receipts stay with the shard that executed them, whoever owns the table now.
    for (hash, shard) in &executed {
        for via in nodes {
            assert_eq!(
                transaction(via, hash),
                Ok((TxState::Committed, Some(*shard))),
                "status of {hash} through {via} after the reshard"
            );
        }
    }
    // A transfer from a moved account, sent to an old shard, runs on the new one, and
    // every node finds it there.
    let sent = batch(s0, &[send(9, moved[0], &shard0[1], 0, 5)]);
    assert_eq!(sent[0]["result"]["shard"], 2, "{sent:?}");
    let hash = sent[0]["result"]["hash"].as_str().unwrap().to_string();
    for via in nodes {
        wait_for(
            "the new shard's transfer to be found through every node",
            limit,
            || transaction(via, &hash) == Ok((TxState::Committed, Some(2))),
        );
    }
}
