//! The harness the process tests share: real `trellis-node` processes started from
//! generated key files, configs and genesis files, a minimal HTTP/JSON-RPC client, and
//! `wait_for`. `sharded` lays out a beacon plus shard slots on one loopback /24;
//! unsharded tests build their consortium with `keygen`, `node_config` and `cli`.

// Each test binary uses part of the harness.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trellis_node_api::shard::ShardMapInfo;
use trellis_node_api::{NodeStatus, Role, methods};
use trellis_node_types::{
    Encode, PrivateKey, Signer, TxKind, UnsignedTx, table_of, test_key, to_hex,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_trellis-node");

/// A node's directory (keys, `node.toml`, data, `node.log`) and its process, which is
/// SIGKILLed when dropped so that a failing test leaves nothing behind.
pub struct Node {
    pub dir: PathBuf,
    pub rpc: SocketAddr,
    child: Option<Child>,
}

impl Node {
    pub fn new(dir: PathBuf, rpc: SocketAddr) -> Self {
        Self {
            dir,
            rpc,
            child: None,
        }
    }

    /// `trellis-node run` with warnings logged to `node.log`.
    pub fn start(&mut self) {
        self.start_logging("warn");
    }

    pub fn start_logging(&mut self, level: &str) {
        assert!(self.child.is_none(), "{} already runs", self.dir.display());
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
                .env("RUST_LOG", level)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// SIGKILL (`Child::kill`), then reap.
    pub fn kill(&mut self) {
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

/// Minimal HTTP/1.1 request (Connection: close), enough for loopback; the body of the
/// answer and its status code.
fn http(addr: SocketAddr, request: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, response.split_once("\r\n\r\n")?.1.to_string()))
}

pub fn post(addr: SocketAddr, path: &str, body: &str) -> Option<String> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http(addr, &request).map(|(_, body)| body)
}

/// GET `path`: the status code and body.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

pub fn metrics(addr: SocketAddr) -> String {
    get(addr, "/metrics").unwrap().1
}

/// Calls a method; `Err((code, message))` for an RPC error, code 0 when unreachable.
pub fn call(addr: SocketAddr, method: &str, params: Value) -> Result<Value, (i64, String)> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let text = post(addr, "/rpc", &body.to_string()).ok_or((0, "unreachable".to_string()))?;
    let response: Value = serde_json::from_str(&text).map_err(|e| (0, e.to_string()))?;
    if let Some(error) = response.get("error") {
        return Err((
            error["code"].as_i64().unwrap_or(0),
            error["message"].as_str().unwrap_or("").to_string(),
        ));
    }
    Ok(response["result"].clone())
}

pub fn status(addr: SocketAddr) -> Option<NodeStatus> {
    serde_json::from_value(call(addr, methods::STATUS, Value::Null).ok()?).ok()
}

/// The shard map the node follows, `None` while it does not answer.
pub fn shard_map(addr: SocketAddr) -> Option<ShardMapInfo> {
    serde_json::from_value(call(addr, methods::GET_SHARD_MAP, Value::Null).ok()?).ok()
}

/// The shard the node serves now, `None` for any other role or while it does not answer.
pub fn serving(addr: SocketAddr) -> Option<u16> {
    match status(addr)?.role {
        Role::Shard { shard } => Some(shard),
        _ => None,
    }
}

/// A test's working directory (keys, configs, data, node logs): removed when the test
/// passes, kept when it fails so the nodes' logs can be read (its path is printed).
pub struct TestDir(Option<tempfile::TempDir>);

impl TestDir {
    pub fn new() -> Self {
        Self(Some(tempfile::tempdir().unwrap()))
    }

    pub fn path(&self) -> &Path {
        self.0.as_ref().map(|dir| dir.path()).unwrap()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        // `TRELLIS_KEEP_TEST_DIR=1` keeps it after a pass too (to read the logs).
        let keep = std::env::var_os("TRELLIS_KEEP_TEST_DIR").is_some_and(|v| v == "1");
        if (keep || std::thread::panicking())
            && let Some(dir) = self.0.take()
        {
            eprintln!("test directory kept (node logs): {}", dir.keep().display());
        }
    }
}

/// The finalized height, 0 while the node does not answer.
pub fn height(addr: SocketAddr) -> u64 {
    status(addr).map_or(0, |s| s.finalized_height)
}

/// Polls `check` until it holds; fails the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A signed transfer with a fee of 1, hex-encoded for `trellis_sendTransaction`.
pub fn transfer_tx(
    chain: &str,
    from: &PrivateKey,
    to: &PrivateKey,
    nonce: u64,
    amount: u64,
) -> String {
    let tx = UnsignedTx {
        chain_id: chain.into(),
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

/// Sends the hex transaction `tx` through `addr` the way a client does when the node may
/// be restarting (an "any" validator re-executes itself into its next shard): retried
/// while the node is unreachable or answers "retry" (resharding, wrong shard), until
/// `limit`; any other refusal fails the test. The transaction's hash.
pub fn send_retrying(addr: SocketAddr, tx: &str, limit: Duration) -> String {
    use trellis_node_api::error_codes as codes;
    let hash = trellis_node_types::from_hex(tx)
        .and_then(|bytes| trellis_node_types::Tx::decode_untrusted(&bytes).ok())
        .map(|t| to_hex(t.hash().as_ref()))
        .expect("a valid transaction");
    wait_for("the node to take the transaction", limit, || {
        match call(addr, methods::SEND_TRANSACTION, json!({"tx": tx})) {
            Ok(sent) => sent["hash"] == json!(hash),
            // An earlier attempt got in, its answer lost in a restart.
            Err((codes::ALREADY_KNOWN, _)) => true,
            Err((0 | codes::RESHARDING | codes::WRONG_SHARD, message)) => {
                eprintln!("sending through {addr}: {message}; retrying");
                false
            }
            Err(other) => panic!("{addr} refused the transaction: {other:?}"),
        }
    });
    hash
}

/// `trellis-node system set-shard-count` as an operator runs it: signed by the network
/// `admin` key (its key file written under `root/admin`), submitted through `beacon`.
/// While the beacon is still in the epoch of an earlier change's table handoff it refuses
/// with `-33012` ("submit again once beacon height H is finalized"): like the operator,
/// this submits again until it is taken (up to 3 minutes); any other refusal fails.
pub fn set_shard_count(root: &Path, admin: &PrivateKey, beacon: SocketAddr, count: u16) {
    let dir = root.join("admin");
    std::fs::create_dir_all(&dir).unwrap();
    key_file(&dir, admin, admin);
    let (keys, rpc, count) = (
        dir.join("keys.json"),
        format!("http://{beacon}"),
        count.to_string(),
    );
    let args = [
        "system",
        "set-shard-count",
        "--key-file",
        keys.to_str().unwrap(),
        "--rpc",
        &rpc,
        "--count",
        &count,
    ];
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = Command::new(BIN).args(args).output().unwrap();
        if out.status.success() {
            return;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("(-33012)") && Instant::now() < deadline,
            "trellis-node {args:?}: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// True when a block `addr` finalized, from height `lowest` (at least 1) to its finalized
/// height, of consensus epoch `epoch` or later, has a certificate signed by `key` (hex).
/// A validator votes only once it executed the block's state height with the same table
/// roots, so its signature says its state is the shard's.
pub fn signed_since(addr: SocketAddr, key: &str, lowest: u64, epoch: u64) -> bool {
    (lowest.max(1)..=height(addr)).rev().any(|h| {
        call(addr, methods::GET_BLOCK, json!({"height": h}))
            .ok()
            .and_then(|v| serde_json::from_value::<trellis_node_api::BlockInfo>(v).ok())
            .is_some_and(|b| {
                b.epoch >= epoch && b.signers.is_some_and(|s| s.iter().any(|k| k == key))
            })
    })
}

/// True when `addr` reports transaction `hash` committed and successful.
pub fn committed(addr: SocketAddr, hash: &str) -> bool {
    call(addr, methods::GET_TRANSACTION, json!({"hash": hash}))
        .ok()
        .and_then(|v| serde_json::from_value::<trellis_node_api::TransactionStatus>(v).ok())
        .is_some_and(|t| t.state == trellis_node_api::TxState::Committed && t.success == Some(true))
}

/// Runs the `trellis-node` CLI; fails the test with its stderr; its trimmed stdout.
pub fn cli(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "trellis-node {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `trellis-node keygen --out <path>`: its output (the public keys).
pub fn keygen(path: &Path) -> Value {
    serde_json::from_str(&cli(&["keygen", "--out", path.to_str().unwrap()])).unwrap()
}

/// A key file with the given node and admin keys (what `keygen` writes).
pub fn key_file(dir: &Path, node: &PrivateKey, admin: &PrivateKey) {
    let keys = json!({
        "node_key": to_hex(&node.encode()),
        "node_public_key": to_hex(node.public_key().as_ref()),
        "admin_key": to_hex(&admin.encode()),
        "admin_public_key": to_hex(admin.public_key().as_ref()),
    });
    std::fs::write(dir.join("keys.json"), keys.to_string()).unwrap();
}

/// `dir/node.toml` for a node whose key file is `dir/keys.json` and whose genesis is
/// `root/genesis.json`; `role` is the body of its `[role]` table.
pub fn node_config(
    dir: &Path,
    root: &Path,
    chain: &str,
    p2p: SocketAddr,
    rpc: SocketAddr,
    role: &str,
) {
    std::fs::write(
        dir.join("node.toml"),
        format!(
            "chain_id = \"{chain}\"\nkey_file = \"{}\"\ndata_dir = \"{}\"\ngenesis_file = \"{}\"\np2p_listen = \"{p2p}\"\nrpc_listen = \"{rpc}\"\n\n[role]\n{role}\n",
            dir.join("keys.json").display(),
            dir.join("data").display(),
            root.join("genesis.json").display(),
        ),
    )
    .unwrap();
}

/// A sharded network's layout on one loopback /24.
pub struct Sharded<'a> {
    pub chain: &'a str,
    /// The /24's first three octets ("127.0.50"): node `i` of committee `c` listens on
    /// `{prefix}.{10c + i + 1}` (p2p port 9000, RPC 8545), so a committee has at most 9.
    pub prefix: &'a str,
    /// Node `i` of committee `c` has node key `test_key(seed + 10c + i)` and admin key
    /// `test_key(seed + 500 + 10c + i)`; the genesis consortium member is
    /// `test_key(seed + 900)`.
    pub seed: u64,
    /// Validators per committee: the beacon, then shard slots 0, 1, … Slots at or above
    /// `shard_count` are registered in the genesis and wait for the beacon to create them.
    pub committees: &'a [u64],
    pub shard_count: u16,
    pub epoch_length: u64,
}

impl Sharded<'_> {
    /// Keys, configs, `sharding.json` and the genesis (each of `funded` holding 1,000,000)
    /// under `root`; the nodes by committee, none started.
    pub fn setup(&self, root: &Path, admin: &PrivateKey, funded: &[PrivateKey]) -> Vec<Vec<Node>> {
        self.setup_with_any(root, admin, funded, 0).0
    }

    /// [`Self::setup`] plus `any` validators registered in the genesis for any shard
    /// (`[role] kind = "shard", shard = "any"`): node `i` listens on `{prefix}.{91 + i}`,
    /// has node key `test_key(seed + 90 + i)` and its directory is `root/any{i}`.
    pub fn setup_with_any(
        &self,
        root: &Path,
        admin: &PrivateKey,
        funded: &[PrivateKey],
        any: u64,
    ) -> (Vec<Vec<Node>>, Vec<Node>) {
        let mut committees = Vec::new();
        let mut beacon = Vec::new();
        let mut validators = Vec::new();
        let mut floating = Vec::new();
        for i in 0..any {
            let key = test_key(self.seed + 90 + i);
            let ip = format!("{}.{}", self.prefix, 91 + i);
            let p2p: SocketAddr = format!("{ip}:9000").parse().unwrap();
            let rpc: SocketAddr = format!("{ip}:8545").parse().unwrap();
            let dir = root.join(format!("any{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            key_file(&dir, &key, &test_key(self.seed + 590 + i));
            node_config(
                &dir,
                root,
                self.chain,
                p2p,
                rpc,
                "kind = \"shard\"\nshard = \"any\"",
            );
            validators.push(json!({
                "node_key": to_hex(key.public_key().as_ref()),
                "shard": 65535,
                "p2p_address": p2p.to_string(),
                "rpc_address": rpc.to_string(),
            }));
            floating.push(Node::new(dir, rpc));
        }
        for (c, size) in (0u64..).zip(self.committees) {
            assert!(*size <= 9, "at most 9 validators per committee");
            let mut nodes = Vec::new();
            for i in 0..*size {
                let key = test_key(self.seed + c * 10 + i);
                let ip = format!("{}.{}", self.prefix, c * 10 + i + 1);
                let p2p: SocketAddr = format!("{ip}:9000").parse().unwrap();
                let rpc: SocketAddr = format!("{ip}:8545").parse().unwrap();
                let dir = root.join(format!("c{c}n{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                key_file(&dir, &key, &test_key(self.seed + 500 + c * 10 + i));
                let role = if c == 0 {
                    "kind = \"beacon\"".to_string()
                } else {
                    format!("kind = \"shard\"\nshard = {}", c - 1)
                };
                node_config(&dir, root, self.chain, p2p, rpc, &role);
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
                nodes.push(Node::new(dir, rpc));
            }
            committees.push(nodes);
        }
        let sharding = json!({
            "mode": "public",
            "admin_key": to_hex(admin.public_key().as_ref()),
            "max_shards": 4,
            "shard_count": self.shard_count,
            "beacon": beacon,
            "validators": validators,
        });
        std::fs::write(root.join("sharding.json"), sharding.to_string()).unwrap();
        let member = to_hex(test_key(self.seed + 900).public_key().as_ref());
        let genesis = root.join("genesis.json");
        let sharding = root.join("sharding.json");
        let epoch = self.epoch_length.to_string();
        let member = format!("org0,{member},{member},{}.100:9000", self.prefix);
        let mut args = vec![
            "genesis",
            "--chain-id",
            self.chain,
            "--epoch-length",
            &epoch,
            "--out",
            genesis.to_str().unwrap(),
            "--sharding",
            sharding.to_str().unwrap(),
            "--member",
            &member,
        ];
        let balances: Vec<String> = funded
            .iter()
            .map(|a| format!("{}=1000000", to_hex(a.public_key().as_ref())))
            .collect();
        for b in &balances {
            args.extend(["--balance", b.as_str()]);
        }
        cli(&args);
        (committees, floating)
    }
}

/// `n` test keys (`test_key(seed + i)`, i = 0, 1, …) whose table shard `slot` owns in
/// the genesis map of 2 shards.
pub fn accounts_of(seed: u64, slot: u16, n: usize) -> Vec<PrivateKey> {
    (0..)
        .map(|i| test_key(seed + i))
        .filter(|k| u16::from(table_of(&k.public_key()) >= 128) == slot)
        .take(n)
        .collect()
}

/// An unsharded consortium node: keys from `keygen` in `root/<name>`, its config
/// (`[role]` shard 0); the node and its genesis `--member` argument (`name` as the
/// organisation).
pub fn consortium_node(
    root: &Path,
    chain: &str,
    name: &str,
    p2p: SocketAddr,
    rpc: SocketAddr,
) -> (Node, String) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let keys = keygen(&dir.join("keys.json"));
    let member = format!(
        "{name},{},{},{p2p}",
        keys["admin_public_key"].as_str().unwrap(),
        keys["node_public_key"].as_str().unwrap()
    );
    node_config(&dir, root, chain, p2p, rpc, "kind = \"shard\"\nshard = 0");
    (Node::new(dir, rpc), member)
}

/// `root/genesis.json` of an unsharded consortium of `members`, each of `funded`
/// holding 1,000,000; the default epoch length unless one is given.
pub fn consortium_genesis(
    root: &Path,
    chain: &str,
    epoch_length: Option<u64>,
    members: &[String],
    funded: &[PrivateKey],
) {
    let genesis = root.join("genesis.json");
    let epoch = epoch_length.map(|e| e.to_string());
    let mut args = vec![
        "genesis",
        "--chain-id",
        chain,
        "--out",
        genesis.to_str().unwrap(),
    ];
    if let Some(epoch) = &epoch {
        args.extend(["--epoch-length", epoch.as_str()]);
    }
    let balances: Vec<String> = funded
        .iter()
        .map(|a| format!("{}=1000000", to_hex(a.public_key().as_ref())))
        .collect();
    for b in &balances {
        args.extend(["--balance", b.as_str()]);
    }
    for m in members {
        args.extend(["--member", m.as_str()]);
    }
    cli(&args);
}
