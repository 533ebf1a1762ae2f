//! The `trellis` CLI against a real console process, through public interfaces only: the
//! binaries, their command lines and the console's HTTP API.
//!
//! - `a_person_runs_networks_and_a_consortium_with_the_cli` (SQLite, networks recorded by
//!   the `unattached` provisioner): two organisations, each with its own credentials
//!   file: sign up, create networks, scale, pause, see validation errors, run the
//!   consortium invitation flow to admission, delete; a rejected access token is
//!   refreshed on the way.
//! - `a_tenant_runs_a_consortium_and_a_sharded_network_locally` (`trellis-console up`,
//!   real nodes on 127.0.91.0/24; `trellis-node keygen` for accounts and the treasury key
//!   files `up` documents in its data dir): a tenant signs up, creates a consortium and a
//!   2-shard public network (one sharded network: a beacon committee and two shard
//!   committees); a transfer finalizes on the consortium and on each shard; a cross-shard
//!   transfer finalizes, or is refused with the node's documented `-33010` while
//!   cross-shard credits are not wired; a shard validator killed again and again (the
//!   supervisor restarts a killed node, so a single SIGKILL is healed before the 15 s
//!   collector looks) fires `validator_down`, delivered to a webhook with a valid
//!   signature, and resolves once it is left to recover.
//! - `sustained_load_scales_a_network_out_and_back_and_shows_on_the_invoice` (`up`, real
//!   nodes on 127.0.95.0/24): a public network of 1 shard (at most 2) gets an autoscaling
//!   policy with `trellis networks autoscale` (low targets, a 30 s cooldown, no
//!   stabilization window); `trellis tx load` from the treasury key file `up` documents
//!   runs until the autoscaler raises the count to 2 (the network's `autoscaler` field
//!   and the beacon's shard map); after the load the count comes back to 1 (both changes
//!   audited as `system:autoscaler`); the network's node-hours and transactions show on
//!   the current period's invoice and in `trellis usage`, accrued so far (the hour's
//!   window has not closed).

// A test: failing is its job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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
use trellis_e2e::tools::workspace_binary;

struct Console(Child);

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct User {
    config: PathBuf,
    console: String,
}

impl User {
    /// Runs `trellis ARGS` as this user; (success, stdout, stderr).
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut child = Command::new(workspace_binary("trellis").unwrap())
            .args(["--console", &self.console])
            .args(args)
            .env("TRELLIS_CLI_CONFIG", &self.config)
            .env_remove("TRELLIS_OUTPUT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args, None);
        assert!(ok, "trellis {args:?} failed:\n{out}\n{err}");
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    fn refused(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args, None);
        assert!(!ok, "trellis {args:?} succeeded:\n{out}");
        err
    }

    /// The access token the CLI keeps (for the HTTP calls the CLI has no command for).
    fn token(&self) -> String {
        let creds: Value =
            serde_json::from_str(&std::fs::read_to_string(&self.config).unwrap()).unwrap();
        creds["access_token"].as_str().unwrap().to_string()
    }

    /// One HTTP request to the console (plain HTTP/1.1 over loopback, `Connection:
    /// close`): the status and the JSON body.
    fn http(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let authority = self.console.trim_start_matches("http://");
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(authority).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "{method} /v1{path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.token(),
            body.len()
        )
        .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}

fn start_console(data: &Path) -> (Console, String) {
    let port = free_port();
    let child = Command::new(workspace_binary("trellis-console").unwrap())
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "console did not listen on {url}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (Console(child), url)
}

#[test]
fn a_person_runs_networks_and_a_consortium_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (_console, url) = start_console(&dir.path().join("console"));
    let acme = User {
        config: dir.path().join("acme.json"),
        console: url.clone(),
    };
    let globex = User {
        config: dir.path().join("globex.json"),
        console: url,
    };

    // Sign-up logs in; the tokens go to a private file, never to the terminal.
    let (ok, out, err) = acme.run(
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
    assert!(out.contains("acme-corp"), "{out}");
    let creds: Value =
        serde_json::from_str(&std::fs::read_to_string(&acme.config).unwrap()).unwrap();
    let refresh = creds["refresh_token"].as_str().unwrap();
    assert!(!out.contains(refresh) && !err.contains(refresh));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&acme.config)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (ok, _, err) = globex.run(
        &[
            "signup",
            "--organisation",
            "Globex",
            "--email",
            "it@globex.example",
            "--password-stdin",
        ],
        Some("another careful passphrase\n"),
    );
    assert!(ok, "{err}");
    // A wrong password is refused with the console's words.
    let (ok, _, err) = globex.run(
        &["login", "--email", "it@globex.example", "--password-stdin"],
        Some("wrong\n"),
    );
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
    assert_eq!(globex.json(&["whoami"])["tenant"]["slug"], "globex");

    // Networks: create (table), list (JSON), get by name, scale, pause.
    let table = acme.ok(&[
        "networks",
        "create",
        "payments",
        "--mode",
        "public",
        "--shards",
        "2",
        "--max-shards",
        "8",
    ]);
    assert!(
        table.contains("payments") && table.contains("SHARD RANGE"),
        "{table}"
    );
    let list = acme.json(&["networks", "list"]);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["spec"]["shards"]["count"], 2);
    let id = items[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        acme.json(&["networks", "get", "payments"])["id"],
        id.as_str()
    );
    let scaled = acme.json(&["networks", "scale", "payments", "--shards", "3"]);
    assert_eq!(scaled["spec"]["shards"]["count"], 3);
    assert_eq!(scaled["generation"], 2);
    assert_eq!(
        acme.json(&["networks", "pause", "payments"])["spec"]["paused"],
        true
    );
    let listed = acme.ok(&["networks", "list"]);
    assert!(
        listed.contains("payments") && listed.contains("PHASE"),
        "{listed}"
    );

    // Bad input: the console's field messages reach the person.
    let err = acme.refused(&["networks", "scale", "payments", "--shards", "0"]);
    assert!(err.contains("shards"), "{err}");
    let err = acme.refused(&["networks", "create", "Bad_Name", "--mode", "public"]);
    assert!(err.contains("name"), "{err}");
    let err = acme.refused(&["networks", "get", "nope"]);
    assert!(err.contains("no network named \"nope\""), "{err}");
    // Another organisation cannot see it, by name or by id.
    assert!(
        globex
            .refused(&["networks", "get", "payments"])
            .contains("no network named")
    );
    assert!(globex.refused(&["networks", "get", &id]).contains("404"));

    // An access token the console no longer accepts (expired, or the signing key
    // rotated) is refreshed transparently with the rotating refresh token.
    let mut stale = creds.clone();
    stale["access_token"] = Value::from("eyJhbGciOiJFZERTQSJ9.e30.AAAA");
    std::fs::write(&acme.config, stale.to_string()).unwrap();
    assert_eq!(acme.json(&["whoami"])["tenant"]["slug"], "acme-corp");
    let rotated: Value =
        serde_json::from_str(&std::fs::read_to_string(&acme.config).unwrap()).unwrap();
    assert_ne!(
        rotated["refresh_token"], creds["refresh_token"],
        "refresh token rotated"
    );

    // Consortium: one-click creation with two organisations, an invitation to Globex,
    // acceptance, approval to admission.
    acme.ok(&[
        "networks",
        "create",
        "trade",
        "--mode",
        "consortium",
        "--member",
        "Acme Corp",
        "--member",
        "Acme Labs:1",
    ]);
    let invited = acme.json(&[
        "consortium",
        "invite",
        "trade",
        "--organisation",
        "Globex",
        "--nodes",
        "1",
    ]);
    let token = invited["token"].as_str().unwrap().to_string();
    let member = invited["member"]["id"].as_str().unwrap().to_string();
    let accepted = globex.json(&["consortium", "accept", &token]);
    assert_eq!(accepted["state"], "Proposed", "{accepted}");
    let err = globex.refused(&["consortium", "accept", &token]);
    assert!(err.contains("409"), "{err}");
    let outcome = acme.json(&["consortium", "approve", "trade", &member]);
    assert_eq!(outcome["member"]["state"], "Admitted", "{outcome}");
    let members = acme.ok(&["consortium", "members", "trade"]);
    assert_eq!(members.matches("Admitted").count(), 3, "{members}");
    // The chain side: this console provisions nothing, so no proposal is published, and
    // an own-key approval is refused with that reason (the accepted path runs in
    // console-api/tests/kube_consortium.rs).
    let proposal = acme.ok(&["consortium", "proposal", "trade", &member]);
    assert!(proposal.contains("no proposal is waiting"), "{proposal}");
    let signature = "ab".repeat(96);
    let err = acme.refused(&[
        "consortium",
        "approve",
        "trade",
        &member,
        "--signature",
        &signature,
    ]);
    assert!(
        err.contains("no_proposal") || err.contains("no governance proposal"),
        "{err}"
    );

    // Usage and invoices (the networks above are metered once their first hour closes:
    // here the answers are well-formed and scoped, not yet filled).
    let period = &items[0]["created_at"].as_str().unwrap()[..7];
    let (year, month): (u32, u32) = (period[..4].parse().unwrap(), period[5..].parse().unwrap());
    let from = format!("{period}-01T00:00:00Z");
    let to = if month == 12 {
        format!("{}-01-01T00:00:00Z", year + 1)
    } else {
        format!("{year}-{:02}-01T00:00:00Z", month + 1)
    };
    let usage = acme.json(&["usage", "--from", &from, "--to", &to]);
    assert!(usage["records"].is_array(), "{usage}");
    let table = acme.ok(&[
        "usage",
        "--from",
        &from,
        "--to",
        &to,
        "--meter",
        "rpc_requests",
    ]);
    assert!(table.contains("METER"), "{table}");
    let err = acme.refused(&["usage", "--from", "yesterday", "--to", &to]);
    assert!(err.contains("from"), "{err}");
    let invoice = acme.json(&["invoice", period]);
    assert_eq!(invoice["period"], period, "{invoice}");
    assert!(
        invoice["lines"].is_array() && invoice["total"].is_string(),
        "{invoice}"
    );
    let table = acme.ok(&["invoice", period]);
    assert!(table.contains(&format!("invoice {period}")), "{table}");
    let csv = acme.ok(&["invoice", period, "--csv"]);
    assert!(csv.lines().next().is_some_and(|h| h.contains(',')), "{csv}");
    let err = acme.refused(&["invoice", "2026-13"]);
    assert!(err.to_lowercase().contains("period"), "{err}");

    // Transactions go through the console's node RPC proxy; this console provisions
    // nothing, so the network has no node to take them, and the CLI says so.
    let err = acme.refused(&["tx", "send", "trade", "--tx", "zz"]);
    assert!(err.contains("--tx must be"), "{err}");
    let err = acme.refused(&["tx", "send", "trade", "--tx", "00ff"]);
    assert!(
        err.contains("503") && err.contains("no running nodes"),
        "{err}"
    );
    assert!(globex.refused(&["tx", "get", &id, "00"]).contains("404"));

    // Delete; logout revokes the session.
    let gone = acme.ok(&["networks", "delete", "payments"]);
    assert!(
        gone.contains("deleted") || gone.contains("being deleted"),
        "{gone}"
    );
    acme.ok(&["logout"]);
    assert!(!acme.config.exists());
    assert!(
        acme.refused(&["networks", "list"])
            .contains("not logged in")
    );
}

const ADDRESSES: &str = "127.0.91.0/24";
const RECEIVER: &str = "127.0.91.250";

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

fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
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

/// `up` on `addresses`, and a tenant signed up with the CLI.
fn up_with_a_tenant(dir: &Path, addresses: &str) -> (Up, User) {
    let mut up = Up::start(&dir.join("console"), addresses);
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

#[test]
fn a_tenant_runs_a_consortium_and_a_sharded_network_locally() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("console");
    let (up, user) = up_with_a_tenant(dir.path(), ADDRESSES);

    // A consortium and a sharded public network.
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
        "--max-shards",
        "2",
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
    let networks = data.join("local/networks");

    // A transfer finalizes on the consortium.
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
    for shard in 0..2u64 {
        let treasury = if shard == 0 {
            networks.join(&pay_id).join("treasury.json")
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
    let treasury0 = networks.join(&pay_id).join("treasury.json");
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

    // Alerts: a webhook receives a signed `validator_down` for a shard validator that
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
    assert_eq!(processes_mentioning(&victim).len(), 1, "{victim} runs once");
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

const LOAD_ADDRESSES: &str = "127.0.95.0/24";

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

/// The local flow's load, autoscaling and billing steps: `up` → a public network with an
/// autoscaling policy set with the CLI (low targets, the shortest cooldown) → sustained
/// load with `trellis tx load` raises the shard count (the autoscaler's decision, its
/// reason, and the beacon's map) → the load ends and the count comes back down → the
/// network's node-hours and transactions show, accrued so far, in `trellis usage` and on
/// the current period's `trellis invoice`.
#[test]
fn sustained_load_scales_a_network_out_and_back_and_shows_on_the_invoice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("console");
    let (up, user) = up_with_a_tenant(dir.path(), LOAD_ADDRESSES);
    user.ok(&[
        "networks",
        "create",
        "surge",
        "--mode",
        "public",
        "--shards",
        "1",
        "--max-shards",
        "2",
        "--epoch-length",
        "10",
    ]);
    // Bad policy input is refused with the field; nothing changes.
    let err = user.refused(&[
        "networks",
        "autoscale",
        "surge",
        "--enable",
        "--cooldown-seconds",
        "5",
    ]);
    assert!(err.contains("cooldown_seconds"), "{err}");
    let policy = user.json(&[
        "networks",
        "autoscale",
        "surge",
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
    let surge = running(&user, "surge");
    let id = surge["id"].as_str().unwrap().to_string();
    assert_eq!(surge["spec"]["shards"]["count"], 1, "{surge}");
    assert_eq!(
        eventually("the beacon's map", Duration::from_secs(120), || shard_map(
            &user, &id
        )),
        (1, None)
    );
    assert!(
        surge["autoscaler"].is_null(),
        "idle: no change yet: {surge}"
    );

    // `tx load` checks its input before sending anything.
    let treasury = data.join("local/networks").join(&id).join("treasury.json");
    let treasury = treasury.to_string_lossy().into_owned();
    let recipient = new_account(dir.path(), "sink");
    for (args, says) in [
        (vec!["--rate", "0", "--duration", "5s"], "--rate"),
        (vec!["--rate", "5", "--duration", "1d"], "--duration"),
    ] {
        let mut all = vec![
            "tx",
            "load",
            "surge",
            "--key-file",
            &treasury,
            "--to",
            &recipient,
        ];
        all.extend(args);
        let err = user.refused(&all);
        assert!(err.contains(says), "{err}");
    }

    // Sustained load, in 15-second runs, until the autoscaler raises the count.
    let mut sent = 0;
    // Nonces the load used up: a transfer whose request failed (a timeout) may still have
    // been admitted and finalized, and `sent` does not count it; the nonce it used does.
    let mut signed = 0;
    let raised = eventually(
        "the autoscaler to raise the shard count under load",
        Duration::from_secs(420),
        || {
            let report = user.json(&[
                "tx",
                "load",
                "surge",
                "--key-file",
                &treasury,
                "--to",
                &recipient,
                "--rate",
                "20",
                "--duration",
                "15s",
            ]);
            sent += report["sent"].as_u64().unwrap();
            for account in report["accounts"].as_array().unwrap() {
                signed += account["next_nonce"].as_u64().unwrap()
                    - account["first_nonce"].as_u64().unwrap();
            }
            let surge = user.json(&["networks", "get", "surge"]);
            (surge["spec"]["shards"]["count"] == 2).then_some(surge)
        },
    );
    assert!(sent > 0, "the load sent nothing");
    assert_eq!(raised["autoscaler"]["from"], 1, "{raised}");
    assert_eq!(raised["autoscaler"]["to"], 2, "{raised}");
    assert!(
        raised["autoscaler"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("1 -> 2")),
        "{raised}"
    );
    eventually(
        "the beacon's map to show 2 shards",
        Duration::from_secs(300),
        || {
            let (count, pending) = shard_map(&user, &id)?;
            (count == 2 || pending == Some(2)).then_some(())
        },
    );
    // Transfers are committed (the treasury's nonce moved) and the recipient was paid.
    // Read until it shows: while the recipient's table is handed off to the new shard,
    // the read is refused (`503 table_handoff`, retry) until the new owner has imported
    // it; a node never answers it with a stale or zero balance (docs/sharding.md).
    eventually(
        "the recipient's balance to show on its owning shard",
        Duration::from_secs(300),
        || {
            let (ok, out, _) = user.run(
                &["--output", "json", "tx", "account", "surge", &recipient],
                None,
            );
            let paid: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
            (paid["balance"].as_u64()? > 0).then_some(())
        },
    );

    // The load has ended: after the cooldown the autoscaler lowers the count, and the
    // beacon follows.
    let lowered = eventually(
        "the autoscaler to lower the shard count after the load",
        Duration::from_secs(600),
        || {
            let surge = user.json(&["networks", "get", "surge"]);
            (surge["spec"]["shards"]["count"] == 1).then_some(surge)
        },
    );
    assert_eq!(lowered["autoscaler"]["from"], 2, "{lowered}");
    assert_eq!(lowered["autoscaler"]["to"], 1, "{lowered}");
    eventually(
        "the beacon's map to show 1 shard",
        Duration::from_secs(600),
        || (shard_map(&user, &id)? == (1, None)).then_some(()),
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
    assert!(steps.contains(&(json!(1), json!(2))), "{audit}");
    assert!(steps.contains(&(json!(2), json!(1))), "{audit}");

    // Usage on the invoice: the current period shows the node-hours and the transactions
    // accrued so far (the hour's window has not closed).
    let period = surge["created_at"].as_str().unwrap()[..7].to_string();
    let (year, month): (u32, u32) = (period[..4].parse().unwrap(), period[5..].parse().unwrap());
    let from = format!("{period}-01T00:00:00Z");
    let to = if month == 12 {
        format!("{}-01-01T00:00:00Z", year + 1)
    } else {
        format!("{year}-{:02}-01T00:00:00Z", month + 1)
    };
    let line = |invoice: &Value, meter: &str| -> f64 {
        invoice["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["network_name"] == "surge" && l["meter"] == meter)
            .map(|l| l["quantity"].as_str().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let invoice = eventually(
        "node-hours and transactions on the invoice",
        Duration::from_secs(180),
        || {
            let invoice = user.json(&["invoice", &period]);
            (line(&invoice, "node_hours.standard") > 0.0 && line(&invoice, "transactions") > 0.0)
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
    // At most what the load signed (the collector counts finalized transactions), plus
    // the beacon's system transactions of the two scalings (validator registrations and
    // SetShardCount: at most 10): a transfer counted twice (say on both shards of a
    // cross-shard transfer) would overshoot it.
    assert!(
        line(&invoice, "transactions") <= (signed + 10) as f64,
        "sent {sent}, signed {signed}: {invoice}"
    );
    let usage = user.json(&[
        "usage",
        "--from",
        &from,
        "--to",
        &to,
        "--network",
        "surge",
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
        table.contains("surge") && table.contains("transactions"),
        "{table}"
    );

    drop(up);
    assert!(
        processes_mentioning(&data.to_string_lossy()).is_empty(),
        "`up` stopped its nodes"
    );
}
