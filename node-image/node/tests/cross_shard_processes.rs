//! Cross-shard transfers between real `trellis-node` processes on 127.0.52.x (this
//! test's own loopback range): a beacon committee of 4 and two shards of 4. Transfers
//! from accounts of either shard to accounts of the other, each sent to any node of the
//! network (beacon nodes included), are debited on the sender's shard and credited on the
//! receiver's, where the credits came through the HTTP relay with certificates and proofs
//! checked by every validator. A validator of the receiving shard is SIGKILLed: the
//! transfers sent meanwhile are still credited; it restarts and catches up.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trellis_node_api::{AccountInfo, NodeStatus, TransactionStatus, TxState, methods};
use trellis_node_types::{
    Encode, PrivateKey, PublicKey, Signer, TxKind, UnsignedTx, table_of, test_key, to_hex,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis-node");
const CHAIN: &str = "cross-proc";

struct Node {
    dir: PathBuf,
    rpc: SocketAddr,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .unwrap();
        self.child = Some(
            Command::new(BIN)
                .arg("run")
                .arg("--config")
                .arg(self.dir.join("node.toml"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// SIGKILL (Child::kill).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn post(addr: SocketAddr, body: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .ok()?;
    let request = format!(
        "POST /rpc HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Calls a method; `Err((code, message))` for an RPC error, code 0 when unreachable.
fn call(addr: SocketAddr, method: &str, params: Value) -> Result<Value, (i64, String)> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let text = post(addr, &body.to_string()).ok_or((0, "unreachable".to_string()))?;
    let response: Value = serde_json::from_str(&text).map_err(|e| (0, e.to_string()))?;
    if let Some(error) = response.get("error") {
        return Err((
            error["code"].as_i64().unwrap_or(0),
            error["message"].as_str().unwrap_or("").to_string(),
        ));
    }
    Ok(response["result"].clone())
}

fn metrics(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn status(addr: SocketAddr) -> Option<NodeStatus> {
    serde_json::from_value(call(addr, methods::STATUS, Value::Null).ok()?).ok()
}

fn height(addr: SocketAddr) -> u64 {
    status(addr).map_or(0, |s| s.finalized_height)
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn key_file(dir: &Path, node: &PrivateKey, admin: &PrivateKey) {
    let keys = json!({
        "node_key": to_hex(&node.encode()),
        "node_public_key": to_hex(node.public_key().as_ref()),
        "admin_key": to_hex(&admin.encode()),
        "admin_public_key": to_hex(admin.public_key().as_ref()),
    });
    std::fs::write(dir.join("keys.json"), keys.to_string()).unwrap();
}

/// Committees: index 0 the beacon, 1 shard 0, 2 shard 1; 4 validators each on
/// 127.0.52.{10c + i + 1}.
fn setup(root: &Path, admin: &PrivateKey, funded: &[PrivateKey]) -> Vec<Vec<Node>> {
    let mut committees = Vec::new();
    let mut beacon = Vec::new();
    let mut validators = Vec::new();
    for c in 0..3u64 {
        let mut nodes = Vec::new();
        for i in 0..4u64 {
            let key = test_key(17_000 + c * 10 + i);
            let ip = format!("127.0.52.{}", c * 10 + i + 1);
            let p2p: SocketAddr = format!("{ip}:9000").parse().unwrap();
            let rpc: SocketAddr = format!("{ip}:8545").parse().unwrap();
            let dir = root.join(format!("c{c}n{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            key_file(&dir, &key, &test_key(17_500 + c * 10 + i));
            let role = if c == 0 {
                "kind = \"beacon\"".to_string()
            } else {
                format!("kind = \"shard\"\nshard = {}", c - 1)
            };
            std::fs::write(
                dir.join("node.toml"),
                format!(
                    "chain_id = \"{CHAIN}\"\nkey_file = \"{}\"\ndata_dir = \"{}\"\ngenesis_file = \"{}\"\np2p_listen = \"{p2p}\"\nrpc_listen = \"{rpc}\"\n\n[role]\n{role}\n",
                    dir.join("keys.json").display(),
                    dir.join("data").display(),
                    root.join("genesis.json").display(),
                ),
            )
            .unwrap();
            let seat = json!({
                "node_key": to_hex(key.public_key().as_ref()),
                "shard": c.saturating_sub(1),
                "p2p_address": p2p.to_string(),
                "rpc_address": rpc.to_string(),
            });
            if c == 0 {
                beacon.push(seat);
            } else {
                validators.push(seat);
            }
            nodes.push(Node {
                dir,
                rpc,
                child: None,
            });
        }
        committees.push(nodes);
    }
    let sharding = json!({
        "mode": "public",
        "admin_key": to_hex(admin.public_key().as_ref()),
        "max_shards": 4,
        "shard_count": 2,
        "beacon": beacon,
        "validators": validators,
    });
    std::fs::write(root.join("sharding.json"), sharding.to_string()).unwrap();
    let member = test_key(17_900);
    let mut genesis = Command::new(BIN);
    genesis
        .args([
            "genesis",
            "--chain-id",
            CHAIN,
            "--epoch-length",
            "20",
            "--out",
        ])
        .arg(root.join("genesis.json"))
        .arg("--sharding")
        .arg(root.join("sharding.json"))
        .arg("--member")
        .arg(format!(
            "org0,{},{},127.0.52.100:9000",
            to_hex(member.public_key().as_ref()),
            to_hex(member.public_key().as_ref())
        ));
    for a in funded {
        genesis
            .arg("--balance")
            .arg(format!("{}=1000000", to_hex(a.public_key().as_ref())));
    }
    let out = genesis.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    committees
}

/// Test accounts whose table shard `slot` owns at genesis with 2 shards.
fn accounts_of(slot: u16, n: usize) -> Vec<PrivateKey> {
    (0..)
        .map(|i| test_key(18_000 + i))
        .filter(|k| u16::from(table_of(&k.public_key()) >= 128) == slot)
        .take(n)
        .collect()
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
    let root = tempfile::tempdir().unwrap();
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
