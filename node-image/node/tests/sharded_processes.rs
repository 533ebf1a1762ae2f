//! A sharded network of real `trellis-node` processes on 127.0.50.x (this test's own
//! loopback range): a beacon committee of 4 and two shards of 4. Shard nodes follow the
//! beacon over JSON-RPC (verifying its certificates), a transaction sent to the wrong
//! shard is forwarded to the owning one, a cross-shard transfer is taken by the sender's
//! shard, forged or out-of-range `SetShardCount`s are refused with clear errors, and a SIGKILLed shard
//! validator restarts and catches up while its shard keeps finalizing.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trellis_node_api::shard::ShardMapInfo;
use trellis_node_api::{NodeStatus, Role, TransactionStatus, TxState, error_codes, methods};
use trellis_node_types::{
    Encode, PrivateKey, Signer, SystemAction, SystemPayload, TxKind, UnsignedTx, table_of,
    test_key, to_hex,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis-node");
const CHAIN: &str = "sharded-proc";

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

fn transfer(from: &PrivateKey, to: &PrivateKey, nonce: u64, amount: u64) -> String {
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
    to_hex(&tx.encode())
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
/// 127.0.50.{10c + i + 1}.
fn setup(root: &Path, admin: &PrivateKey, funded: &[PrivateKey]) -> Vec<Vec<Node>> {
    let mut committees = Vec::new();
    let mut beacon = Vec::new();
    let mut validators = Vec::new();
    for c in 0..3u64 {
        let mut nodes = Vec::new();
        for i in 0..4u64 {
            let key = test_key(7_000 + c * 10 + i);
            let ip = format!("127.0.50.{}", c * 10 + i + 1);
            let p2p: SocketAddr = format!("{ip}:9000").parse().unwrap();
            let rpc: SocketAddr = format!("{ip}:8545").parse().unwrap();
            let dir = root.join(format!("c{c}n{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            key_file(&dir, &key, &test_key(7_500 + c * 10 + i));
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
    let member = test_key(7_900);
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
            "org0,{},{},127.0.50.100:9000",
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
        .map(|i| test_key(8_000 + i))
        .filter(|k| u16::from(table_of(&k.public_key()) >= 128) == slot)
        .take(n)
        .collect()
}

#[test]
fn beacon_and_two_shards_route_follow_and_refuse() {
    let root = tempfile::tempdir().unwrap();
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
