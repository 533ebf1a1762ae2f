//! Live resharding with real `trellis-node` processes on 127.0.54.x (this test's own
//! loopback range): a beacon of 4, shards 0 and 1 of 4, and 4 validators of slot 2
//! started up front and registered. `trellis-node system set-shard-count --count 3` while
//! transfers run: the map switches, slot 2 takes over its tables and finalizes, a SIGKILLed
//! validator of a shard handing a table off does not stop the handoff, moved accounts keep
//! their balances; a change during the handoff is refused (-33012); scaling back to 2
//! drains slot 2, which says so.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trellis_node_api::shard::ShardMapInfo;
use trellis_node_api::{NodeStatus, methods};
use trellis_node_types::{
    Encode, PrivateKey, Signer, TxKind, UnsignedTx, table_of, test_key, to_hex,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis-node");
const CHAIN: &str = "reshard-proc";

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

/// Committees: index 0 the beacon, 1..=3 slots 0..=2 (slot 2 registered in the genesis,
/// beyond its shard count of 2); 4 validators each on 127.0.54.{10c + i + 1}.
fn setup(root: &Path, admin: &PrivateKey, funded: &[PrivateKey]) -> Vec<Vec<Node>> {
    let mut committees = Vec::new();
    let mut beacon = Vec::new();
    let mut validators = Vec::new();
    for c in 0..4u64 {
        let mut nodes = Vec::new();
        for i in 0..4u64 {
            let key = test_key(9_000 + c * 10 + i);
            let ip = format!("127.0.54.{}", c * 10 + i + 1);
            let p2p: SocketAddr = format!("{ip}:9000").parse().unwrap();
            let rpc: SocketAddr = format!("{ip}:8545").parse().unwrap();
            let dir = root.join(format!("c{c}n{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            key_file(&dir, &key, &test_key(9_500 + c * 10 + i));
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
    let member = test_key(9_900);
    let mut genesis = Command::new(BIN);
    genesis
        .args([
            "genesis",
            "--chain-id",
            CHAIN,
            "--epoch-length",
            "10",
            "--out",
        ])
        .arg(root.join("genesis.json"))
        .arg("--sharding")
        .arg(root.join("sharding.json"))
        .arg("--member")
        .arg(format!(
            "org0,{},{},127.0.54.100:9000",
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

fn shard_map(addr: SocketAddr) -> Option<ShardMapInfo> {
    serde_json::from_value(call(addr, methods::GET_SHARD_MAP, Value::Null).ok()?).ok()
}

fn balance(addr: SocketAddr, key: &PrivateKey) -> Option<(u64, u64)> {
    let v = call(
        addr,
        methods::GET_ACCOUNT,
        json!({"account": to_hex(key.public_key().as_ref())}),
    )
    .ok()?;
    Some((v["balance"].as_u64()?, v["nonce"].as_u64()?))
}

/// `trellis-node system set-shard-count` as an operator runs it; `Err` with its stderr.
fn set_shard_count(key_dir: &Path, rpc: SocketAddr, count: u16) -> Result<(), String> {
    let out = Command::new(BIN)
        .args(["system", "set-shard-count", "--key-file"])
        .arg(key_dir.join("keys.json"))
        .args([
            "--rpc",
            &format!("http://{rpc}"),
            "--count",
            &count.to_string(),
        ])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[test]
fn reshard_2_to_3_and_back_under_load_with_a_sigkill() {
    let root = tempfile::tempdir().unwrap();
    let admin = test_key(9_999);
    // Accounts spread over the tables, each with a partner in its own table.
    let mut accounts: Vec<(PrivateKey, PrivateKey)> = Vec::new();
    let mut seen: std::collections::BTreeMap<u8, PrivateKey> = Default::default();
    for i in 0.. {
        let key = test_key(20_000 + i);
        let table = table_of(&key.public_key());
        if accounts
            .iter()
            .any(|(a, _)| table_of(&a.public_key()) / 16 == table / 16)
        {
            continue;
        }
        match seen.remove(&table) {
            Some(other) => accounts.push((other, key)),
            None => {
                seen.insert(table, key);
            }
        }
        if accounts.len() == 16 {
            break;
        }
    }
    let funded: Vec<PrivateKey> = accounts.iter().map(|(a, _)| a.clone()).collect();
    let admin_dir = root.path().join("admin");
    std::fs::create_dir_all(&admin_dir).unwrap();
    key_file(&admin_dir, &test_key(9_998), &admin);
    let mut committees = setup(root.path(), &admin, &funded);
    for nodes in &mut committees {
        for node in nodes.iter_mut() {
            node.start();
        }
    }
    let b = committees[0][0].rpc;
    let limit = Duration::from_secs(300);
    for nodes in &committees[..3] {
        for node in nodes {
            wait_for("the beacon and shards 0 and 1 to finalize", limit, || {
                height(node.rpc) >= 2
            });
        }
    }
    // Slot 2 runs, follows the beacon and says what it waits for.
    for node in &committees[3] {
        wait_for("slot 2 to report waiting", limit, || {
            status(node.rpc)
                .and_then(|s| s.waiting)
                .is_some_and(|w| w == "waiting for shard 2 to be created by the beacon")
        });
    }
    // Load: each funded account pays its partner, one transaction at a time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let loader = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let accounts = accounts.clone();
        let shard_rpcs: Vec<SocketAddr> = committees[1..]
            .iter()
            .flat_map(|c| c.iter().map(|n| n.rpc))
            .collect();
        std::thread::spawn(move || {
            let mut nonces = vec![0u64; accounts.len()];
            let mut round = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, (from, to)) in accounts.iter().enumerate() {
                    let node = shard_rpcs[(i + round) % shard_rpcs.len()];
                    let tx = transfer(from, to, nonces[i], 1);
                    if call(node, methods::SEND_TRANSACTION, json!({"tx": tx})).is_ok() {
                        nonces[i] += 1;
                        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                round += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    wait_for("some load to be accepted", limit, || {
        sent.load(std::sync::atomic::Ordering::Relaxed) >= 16
    });

    set_shard_count(&admin_dir, b, 3).unwrap();
    wait_for("the beacon map to switch to 3 shards", limit, || {
        shard_map(b).is_some_and(|m| m.shard_count == 3)
    });
    let map = shard_map(b).unwrap();
    let moved: Vec<u8> = (0..=255u8)
        .filter(|t| map.tables[usize::from(*t)] == 2)
        .collect();
    assert!(!moved.is_empty());
    // Another change during the handoff epoch: -33012, retry later.
    if map.resharding {
        let e = set_shard_count(&admin_dir, b, 2).unwrap_err();
        assert!(
            e.contains("-33012") || e.contains("resharding in progress"),
            "{e}"
        );
    }
    // SIGKILL a validator of a shard handing a table off (the old owner of a moved table).
    let from = if moved.iter().any(|t| *t < 128) { 1 } else { 2 };
    committees[from][1].kill();
    for node in &committees[3] {
        wait_for("slot 2 to take over its tables and finalize", limit, || {
            status(node.rpc).is_some_and(|s| {
                s.waiting.is_none() && s.tables.as_ref().is_some_and(|t| *t == moved)
            })
        });
    }
    let start = height(committees[3][0].rpc);
    wait_for("the new shard to finalize blocks", limit, || {
        height(committees[3][0].rpc) >= start + 3
    });
    committees[from][1].start();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    loader.join().unwrap();
    // Moved accounts keep their balances: total of each pair = 2 × genesis minus fees.
    std::thread::sleep(Duration::from_secs(5));
    let mut checked = 0;
    for (a, partner) in &accounts {
        let table = table_of(&a.public_key());
        let owner = shard_map(b).unwrap().tables[usize::from(table)];
        let node = committees[usize::from(owner) + 1][0].rpc;
        let (ba, na) = balance(node, a).unwrap();
        let (bp, np) = balance(node, partner).unwrap();
        assert_eq!(
            ba + bp + na + np,
            1_000_000,
            "pair in table {table} lost value"
        );
        if owner == 2 {
            checked += 1;
        }
    }
    assert!(checked > 0, "no funded account moved to the new shard");

    // Scale back to 2: slot 2 drains and says so.
    wait_for("the scale-in to be accepted", limit, || {
        set_shard_count(&admin_dir, b, 2).is_ok()
    });
    for node in &committees[3] {
        wait_for("slot 2 to report drained", limit, || {
            status(node.rpc).is_some_and(|s| s.drained)
        });
    }
}
