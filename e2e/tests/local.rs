//! The local flow as one story, through public interfaces only: the binaries
//! (`trellis-console up`, the `trellis` CLI, `trellis-node keygen` for accounts), the
//! console's HTTP API, the files `up` documents in its data dir (the treasury key files,
//! each node's config), and real signals.
//!
//! One `up` (real nodes on 127.0.116.0/24; a webhook receiver on 127.0.117.1), each step
//! an assertion, in this order:
//!
//! 1. a tenant signs up with the CLI and creates a consortium and a sharded public
//!    network (2 shards, at least 2, at most 3: a beacon committee and two shard
//!    committees); both become Running;
//! 2. a transfer finalizes on the consortium; on the public network a transfer finalizes
//!    within each shard, and one across shards is credited (or refused with the node's
//!    documented `-33010` while cross-shard credits are not wired);
//! 3. an autoscaling policy set with `trellis networks autoscale` (low targets, a 30 s
//!    cooldown, no stabilization window; bad input refused) and sustained load with
//!    `trellis tx load` (its input checked first) make the autoscaler raise the shard count
//!    to 3 (the network's `autoscaler` field and the beacon's map); after the load it
//!    lowers it back to 2, both changes audited as `system:autoscaler`;
//! 4. the networks' node-hours and the public network's transactions show on the current
//!    period's invoice and in `trellis usage`, accrued so far (the hour's window has not
//!    closed), the transactions bounded by what the story sent;
//! 5. a shard validator killed again and again (the supervisor restarts a killed node, so
//!    a single SIGKILL is healed before the 15 s collector looks) fires `validator_down`,
//!    delivered to a webhook with a valid signature; left alone it runs again and the
//!    alert resolves;
//!
//! and `up`, stopped with SIGTERM, leaves no node process behind.

// A test: failing is its job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use support::{User, eventually, month_bounds};
use trellis_e2e::tools::workspace_binary;

/// The nodes' addresses (`up --local-addresses`).
const ADDRESSES: &str = "127.0.116.0/24";
/// The webhook receiver's address.
const RECEIVER: &str = "127.0.117.1";

/// `trellis-console up`; dropped: SIGTERM (it stops its nodes), then SIGKILL, then any
/// node process still running from its data dir.
struct Up {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    data: PathBuf,
}

impl Up {
    /// `up` with its nodes on `addresses` (a CIDR range).
    fn start(data: &Path, addresses: &str) -> Self {
        let mut child = Command::new(workspace_binary("trellis-console").unwrap())
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--local-addresses",
                addresses,
            ])
            .arg("--data-dir")
            .arg(data)
            .arg("--node-binary")
            .arg(workspace_binary("trellis-node").unwrap())
            .env_remove("RUST_LOG")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            data: data.to_path_buf(),
        }
    }

    fn wait_for(&mut self, marker: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(marker) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no {marker:?} in time; output so far:\n{}",
                    self.seen.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "`up` exited before {marker:?}; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in processes_mentioning(&self.data.to_string_lossy()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Live (non-zombie) processes with an argument containing `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !zombie
                && cmdline
                    .split(|b| *b == 0)
                    .any(|arg| String::from_utf8_lossy(arg).contains(needle))
        })
        .collect()
}

/// A fresh account: a `trellis-node keygen` file's admin public key.
fn new_account(dir: &Path, name: &str) -> String {
    let out = dir.join(format!("{name}.json"));
    let made = Command::new(workspace_binary("trellis-node").unwrap())
        .args(["keygen", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let keys: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    keys["admin_public_key"].as_str().unwrap().to_string()
}

/// Sends a transfer with the CLI and waits until it is final and successful.
fn transfer_finalizes(user: &User, network: &str, key_file: &Path, to: &str, amount: u64) -> Value {
    let key_file = key_file.to_string_lossy();
    let amount_text = amount.to_string();
    let sent = user.json(&[
        "tx",
        "transfer",
        network,
        "--key-file",
        &key_file,
        "--to",
        to,
        "--amount",
        &amount_text,
    ]);
    let hash = sent["hash"].as_str().unwrap().to_string();
    eventually(
        &format!("transfer {hash} on {network} to finalize"),
        Duration::from_secs(180),
        || {
            let status = user.json(&["tx", "get", network, &hash]);
            (status["state"] == "committed").then_some(status)
        },
    );
    let status = user.json(&["tx", "get", network, &hash]);
    assert_eq!(status["success"], true, "{status}");
    // Reads rotate over the shard's validators; one may be a block behind.
    eventually(
        &format!("the recipient's balance on {network}"),
        Duration::from_secs(60),
        || (user.json(&["tx", "account", network, to])["balance"] == amount).then_some(()),
    );
    sent
}

/// One received webhook call: its headers (lower-case names) and raw body.
type Delivery = (HashMap<String, String>, Vec<u8>);

/// A webhook receiver on loopback answering 200 to every POST.
fn start_receiver() -> (String, Arc<Mutex<Vec<Delivery>>>) {
    let listener = TcpListener::bind((RECEIVER, 0)).unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if let Some(delivery) = read_request(stream) {
                store.lock().unwrap().push(delivery);
            }
        }
    });
    (url, received)
}

fn read_request(mut stream: TcpStream) -> Option<Delivery> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut headers = HashMap::new();
    let mut line = String::new();
    reader.read_line(&mut line).ok()?; // request line
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()?;
    Some((headers, body))
}

/// Whether `header` (`t=…,v1=…`) signs `body` with `secret` (HMAC-SHA256 over
/// `t.body`), as docs/billing-monitoring.md tells receivers to check.
fn signed(secret: &str, header: &str, body: &[u8]) -> bool {
    let parts: HashMap<&str, &str> = header
        .split(',')
        .filter_map(|p| p.trim().split_once('='))
        .collect();
    let (Some(t), Some(v1)) = (parts.get("t"), parts.get("v1")) else {
        return false;
    };
    let Ok(tag) = hex::decode(v1) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

/// The verified alert events for `network` of `kind`, as (type, alert).
fn verified_alerts(
    received: &Mutex<Vec<Delivery>>,
    secret: &str,
    network: &str,
    kind: &str,
) -> Vec<(String, Value)> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(headers, body)| {
            let header = headers.get("trellis-signature")?;
            assert!(
                signed(secret, header, body),
                "a delivery with a bad signature: {header}"
            );
            assert!(!signed("another secret", header, body));
            let event: Value = serde_json::from_slice(body).ok()?;
            (event["alert"]["network_id"] == network && event["alert"]["kind"] == kind)
                .then(|| (event["type"].as_str().unwrap_or("").to_string(), event))
        })
        .collect()
}

/// `up` on [`ADDRESSES`], and a tenant signed up with the CLI.
fn up_with_a_tenant(dir: &Path) -> (Up, User) {
    let mut up = Up::start(&dir.join("console"), ADDRESSES);
    let api = up.wait_for("  API ", Duration::from_secs(120));
    let console = api
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches("/v1")
        .to_string();
    up.wait_for("Ready.", Duration::from_secs(60));
    let user = User {
        config: dir.join("acme.json"),
        console,
    };
    let (ok, out, err) = user.run(
        &[
            "signup",
            "--organisation",
            "Acme Corp",
            "--email",
            "ops@acme.example",
            "--password-stdin",
        ],
        Some("correct horse battery staple\n"),
    );
    assert!(ok, "{out}{err}");
    assert_eq!(user.json(&["whoami"])["tenant"]["slug"], "acme-corp");
    (up, user)
}

/// Waits until the CLI shows network `name` Running.
fn running(user: &User, name: &str) -> Value {
    eventually(
        &format!("{name} to be Running"),
        Duration::from_secs(420),
        || {
            let network = user.json(&["networks", "get", name]);
            (network["phase"] == "Running").then_some(network)
        },
    )
}

/// The shard count the network's nodes follow: (in force, pending), from the beacon's map
/// through a shard-0 node.
fn shard_map(user: &User, id: &str) -> Option<(u64, Option<u64>)> {
    let (status, map) = user.http(
        "POST",
        &format!("/networks/{id}/shards/0/rpc"),
        Some(json!({"jsonrpc": "2.0", "id": 1, "method": "trellis_getShardMap"})),
    );
    let map = &map["result"];
    (status == 200).then_some(())?;
    Some((
        map["shard_count"].as_u64()?,
        map["pending_shard_count"].as_u64(),
    ))
}

/// The sum of the invoice's `meter` lines for network `name`.
fn invoiced(invoice: &Value, name: &str, meter: &str) -> f64 {
    invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["network_name"] == name && l["meter"] == meter)
        .map(|l| l["quantity"].as_str().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn a_tenant_runs_the_local_flow_from_up_to_a_recovered_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("console");
    let (up, user) = up_with_a_tenant(dir.path());
    let networks = data.join("local/networks");

    // 1. A consortium and a sharded public network: 2 shards, which the autoscaler may
    // take to 3 and back, never below 2.
    user.ok(&[
        "networks",
        "create",
        "trade",
        "--mode",
        "consortium",
        "--member",
        "Acme Corp",
    ]);
    user.ok(&[
        "networks",
        "create",
        "pay",
        "--mode",
        "public",
        "--shards",
        "2",
        "--min-shards",
        "2",
        "--max-shards",
        "3",
        "--epoch-length",
        "10",
    ]);
    let trade = running(&user, "trade");
    let pay = running(&user, "pay");
    assert_eq!(pay["status"]["shard_count"], 2, "{pay}");
    assert_eq!(
        pay["status"]["shards"].as_array().unwrap().len(),
        2,
        "{pay}"
    );
    let trade_id = trade["id"].as_str().unwrap().to_string();
    let pay_id = pay["id"].as_str().unwrap().to_string();

    // 2. Transfers. One finalizes on the consortium.
    let recipient = new_account(dir.path(), "trade-recipient");
    transfer_finalizes(
        &user,
        "trade",
        &networks.join(&trade_id).join("treasury.json"),
        &recipient,
        11,
    );
    // The public network is one sharded network: the beacon's map (through any shard
    // node) has 2 shards; each shard's treasury pays an account of its own shard, sent to
    // the network as a whole and forwarded by the nodes.
    let (status, map) = user.http(
        "POST",
        &format!("/networks/{pay_id}/shards/0/rpc"),
        Some(json!({"jsonrpc": "2.0", "id": 1, "method": "trellis_getShardMap"})),
    );
    assert_eq!(status, 200, "{map}");
    let map = &map["result"];
    assert_eq!(map["shard_count"], 2, "{map}");
    let owner = |account: &str| -> u64 {
        let info = user.json(&["tx", "account", "pay", account]);
        let table = usize::try_from(info["table"].as_u64().unwrap()).unwrap();
        map["tables"][table].as_u64().unwrap()
    };
    let mut in_shard: HashMap<u64, String> = HashMap::new();
    for i in 0.. {
        if in_shard.len() == 2 {
            break;
        }
        assert!(i < 64, "no account of each shard among 64 fresh ones");
        let account = new_account(dir.path(), &format!("pay-{i}"));
        in_shard.entry(owner(&account)).or_insert(account);
    }
    let treasury0 = networks.join(&pay_id).join("treasury.json");
    for shard in 0..2u64 {
        let treasury = if shard == 0 {
            treasury0.clone()
        } else {
            networks
                .join(&pay_id)
                .join(format!("treasury-shard-{shard}.json"))
        };
        let sent = transfer_finalizes(&user, "pay", &treasury, &in_shard[&shard], 5 + shard);
        assert_eq!(sent["shard"], shard, "{sent}");
    }
    // Across shards: shard 0's treasury pays a fresh account of shard 1. It finalizes
    // where the node credits receipts; otherwise the node refuses it with -33010.
    let across = (0..64)
        .map(|i| new_account(dir.path(), &format!("across-{i}")))
        .find(|a| owner(a) == 1)
        .unwrap();
    let (ok, out, err) = user.run(
        &[
            "--output",
            "json",
            "tx",
            "transfer",
            "pay",
            "--key-file",
            &treasury0.to_string_lossy(),
            "--to",
            &across,
            "--amount",
            "3",
        ],
        None,
    );
    if ok {
        let sent: Value = serde_json::from_str(&out).unwrap();
        let hash = sent["hash"].as_str().unwrap().to_string();
        eventually(
            "the cross-shard transfer to be credited",
            Duration::from_secs(240),
            || {
                let status = user.json(&["tx", "get", "pay", &hash]);
                let account = user.json(&["tx", "account", "pay", &across]);
                (status["state"] == "committed" && account["balance"] == 3).then_some(())
            },
        );
    } else {
        assert!(
            err.contains("-33010") && err.contains("cross-shard"),
            "neither credited nor refused with -33010: {out}{err}"
        );
    }
    // The transfers this story sent on `pay` before the load.
    let transfers = 3;

    // 3. Autoscaling. Bad policy input is refused with the field; nothing changes.
    let err = user.refused(&[
        "networks",
        "autoscale",
        "pay",
        "--enable",
        "--cooldown-seconds",
        "5",
    ]);
    assert!(err.contains("cooldown_seconds"), "{err}");
    let policy = user.json(&[
        "networks",
        "autoscale",
        "pay",
        "--enable",
        "--target-tx-per-second-per-shard",
        "1",
        "--target-mempool-depth",
        "1",
        "--cooldown-seconds",
        "30",
        "--stabilization-window-seconds",
        "0",
    ]);
    assert_eq!(
        policy["spec"]["autoscaling"],
        json!({"enabled": true, "target_tx_per_second_per_shard": 1, "target_mempool_depth": 1,
               "cooldown_seconds": 30, "stabilization_window_seconds": 0}),
        "{policy}"
    );
    assert_eq!(
        eventually("the beacon's map", Duration::from_secs(120), || shard_map(
            &user, &pay_id
        )),
        (2, None)
    );
    let pay = user.json(&["networks", "get", "pay"]);
    assert!(pay["autoscaler"].is_null(), "idle: no change yet: {pay}");

    // `tx load` checks its input before sending anything.
    let treasury = treasury0.to_string_lossy().into_owned();
    let sink = new_account(dir.path(), "sink");
    for (args, says) in [
        (vec!["--rate", "0", "--duration", "5s"], "--rate"),
        (vec!["--rate", "5", "--duration", "1d"], "--duration"),
        (
            vec!["--rate", "5", "--duration", "5s", "--concurrency", "0"],
            "--concurrency",
        ),
    ] {
        let mut all = vec!["tx", "load", "pay", "--key-file", &treasury, "--to", &sink];
        all.extend(args);
        let err = user.refused(&all);
        assert!(err.contains(says), "{err}");
    }

    // Sustained load, in 15-second runs with several requests in flight, until the
    // autoscaler raises the count.
    let mut sent = 0;
    // Nonces the load used up: a transfer whose request timed out may still have been
    // admitted and finalized, and `sent` does not count it; the nonce it used does.
    let mut signed = 0;
    let mut load = |rate: &str, duration: &str| {
        let report = user.json(&[
            "tx",
            "load",
            "pay",
            "--key-file",
            &treasury,
            "--to",
            &sink,
            "--rate",
            rate,
            "--concurrency",
            "8",
            "--duration",
            duration,
        ]);
        // For the log: how the load went (the assertions are below and on the chain).
        eprintln!("tx load: {report}");
        assert_eq!(report["concurrency"], 8, "{report}");
        assert!(report["timed_out"].is_u64(), "{report}");
        sent += report["sent"].as_u64().unwrap();
        for account in report["accounts"].as_array().unwrap() {
            signed +=
                account["next_nonce"].as_u64().unwrap() - account["first_nonce"].as_u64().unwrap();
        }
    };
    let raised = eventually(
        "the autoscaler to raise the shard count under load",
        Duration::from_secs(420),
        || {
            load("20", "15s");
            let pay = user.json(&["networks", "get", "pay"]);
            (pay["spec"]["shards"]["count"] == 3).then_some(pay)
        },
    );
    assert_eq!(raised["autoscaler"]["from"], 2, "{raised}");
    assert_eq!(raised["autoscaler"]["to"], 3, "{raised}");
    assert!(
        raised["autoscaler"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("2 -> 3")),
        "{raised}"
    );
    eventually(
        "the beacon's map to show 3 shards",
        Duration::from_secs(300),
        || {
            let (count, pending) = shard_map(&user, &pay_id)?;
            (count == 3 || pending == Some(3)).then_some(())
        },
    );
    // Transfers are committed on the 3 shards and the sink was paid. Read until it
    // shows: when the sink's table moves to the new shard, its new owner refuses reads
    // (503 `table_handoff`, retry) until it has imported the table, and the load's last
    // transfers must be final first (docs/sharding.md, "Account reads and batches"). Transfers still
    // in a pool when their sender's table moves are forwarded to the new owner for 30 s
    // only (docs/sharding.md, "Epochs, handoff and resharding"), which a loaded machine
    // can outlast: while nothing shows, a short load every minute sends new ones.
    let mut loaded = Instant::now();
    eventually(
        "the sink's balance to show on its owning shard",
        Duration::from_secs(420),
        || {
            let (ok, out, _) = user.run(&["--output", "json", "tx", "account", "pay", &sink], None);
            let balance = serde_json::from_str::<Value>(&out)
                .ok()
                .filter(|_| ok)
                .and_then(|paid| paid["balance"].as_u64());
            if balance.is_some_and(|b| b > 0) {
                return Some(());
            }
            if loaded.elapsed() > Duration::from_secs(60) {
                load("5", "5s");
                loaded = Instant::now();
            }
            None
        },
    );
    assert!(sent > 0, "the load sent nothing");
    // The load has ended: after the cooldown the autoscaler lowers the count to the
    // policy's minimum, and the beacon follows.
    let lowered = eventually(
        "the autoscaler to lower the shard count after the load",
        Duration::from_secs(600),
        || {
            let pay = user.json(&["networks", "get", "pay"]);
            (pay["spec"]["shards"]["count"] == 2).then_some(pay)
        },
    );
    assert_eq!(lowered["autoscaler"]["from"], 3, "{lowered}");
    assert_eq!(lowered["autoscaler"]["to"], 2, "{lowered}");
    eventually(
        "the beacon's map to show 2 shards",
        Duration::from_secs(600),
        || (shard_map(&user, &pay_id)? == (2, None)).then_some(()),
    );
    // Both decisions are audited as the autoscaler's.
    let (status, audit) = user.http("GET", "/audit-events", None);
    assert_eq!(status, 200, "{audit}");
    let steps: Vec<(Value, Value)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "network.autoscale" && e["actor"] == "system:autoscaler")
        .map(|e| (e["details"]["from"].clone(), e["details"]["to"].clone()))
        .collect();
    assert!(steps.contains(&(json!(2), json!(3))), "{audit}");
    assert!(steps.contains(&(json!(3), json!(2))), "{audit}");

    // 4. Usage on the invoice: the current period shows both networks' node-hours, and
    // the public network's transactions, accrued so far (the hour's window has not
    // closed). Not the consortium's one transfer: the collector counts a node's
    // transactions from its first scrape on, and on a quick run that transfer can be
    // final before the first scrape of its network.
    let period = pay["created_at"].as_str().unwrap()[..7].to_string();
    let (from, to) = month_bounds(&period);
    let invoice = eventually(
        "node-hours and transactions on the invoice",
        Duration::from_secs(180),
        || {
            let invoice = user.json(&["invoice", &period]);
            (invoiced(&invoice, "trade", "node_hours.standard") > 0.0
                && invoiced(&invoice, "pay", "node_hours.standard") > 0.0
                && invoiced(&invoice, "pay", "transactions") > 0.0)
                .then_some(invoice)
        },
    );
    assert_eq!(invoice["status"], "open", "{invoice}");
    // Sign-up's plan is `free`: usage is shown and priced at nothing.
    assert_eq!(
        (&invoice["plan"], &invoice["total"]),
        (&json!("free"), &json!("0.00")),
        "{invoice}"
    );
    // At most what the story signed on `pay` (the collector counts finalized
    // transactions), plus the beacon's system transactions of the two scalings
    // (validator registrations and SetShardCount: at most 10): a transfer counted twice
    // (say on both shards of a cross-shard transfer) would overshoot it.
    assert!(
        invoiced(&invoice, "pay", "transactions") <= (transfers + signed + 10) as f64,
        "sent {sent}, signed {signed}: {invoice}"
    );
    let usage = user.json(&[
        "usage",
        "--from",
        &from,
        "--to",
        &to,
        "--network",
        "pay",
        "--meter",
        "transactions",
    ]);
    let records = usage["records"].as_array().unwrap();
    assert!(
        !records.is_empty() && records.iter().all(|r| r["meter"] == "transactions"),
        "{usage}"
    );
    assert!(records.iter().any(|r| r["accruing"] == true), "{usage}");
    let table = user.ok(&["invoice", &period]);
    assert!(
        table.contains("pay") && table.contains("transactions"),
        "{table}"
    );

    // 5. Alerts: a webhook receives a signed `validator_down` for a shard validator that
    // is killed whenever it comes back, then `alert.resolved` once it is left alone.
    let (url, received) = start_receiver();
    let (status, hook) = user.http("POST", "/webhooks", Some(json!({"url": url})));
    assert_eq!(status, 201, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_string();
    let victim = networks
        .join(&pay_id)
        .join("nodes/pay-shard-1-3/node.toml")
        .to_string_lossy()
        .into_owned();
    eventually(
        "the shard validator to run once",
        Duration::from_secs(120),
        || (processes_mentioning(&victim).len() == 1).then_some(()),
    );
    eventually(
        "validator_down to be delivered",
        Duration::from_secs(300),
        || {
            for pid in processes_mentioning(&victim) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            verified_alerts(&received, &secret, &pay_id, "validator_down")
                .into_iter()
                .find(|(kind, _)| kind == "alert.firing")
        },
    );
    let (status, alerts) = user.http(
        "GET",
        &format!("/alerts?state=firing&network_id={pay_id}"),
        None,
    );
    assert_eq!(status, 200, "{alerts}");
    assert!(
        alerts["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "validator_down"),
        "{alerts}"
    );
    // Left alone, the supervisor restarts it and the alert resolves.
    eventually(
        "the killed validator to run again",
        Duration::from_secs(120),
        || (processes_mentioning(&victim).len() == 1).then_some(()),
    );
    eventually(
        "alert.resolved to be delivered",
        Duration::from_secs(300),
        || {
            verified_alerts(&received, &secret, &pay_id, "validator_down")
                .into_iter()
                .find(|(kind, _)| kind == "alert.resolved")
        },
    );
    let pay = user.json(&["networks", "get", "pay"]);
    assert_eq!(pay["status"]["shard_count"], 2, "{pay}");

    drop(up);
    assert!(
        processes_mentioning(&data.to_string_lossy()).is_empty(),
        "`up` stopped its nodes"
    );
}
