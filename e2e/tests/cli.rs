//! The `trellis` CLI against a real console process, through public interfaces only: the
//! binaries, their command lines and the console's HTTP API.
//!
//! `a_person_runs_networks_and_a_consortium_with_the_cli` (SQLite, networks recorded by
//! the `unattached` provisioner): two organisations, each with its own credentials file:
//! sign up, create networks, scale, pause, see validation errors, run the consortium
//! invitation flow to admission, delete; a rejected access token is refreshed on the way.
//! The same CLI with `trellis-console up` and real nodes: `tests/local.rs`.

// A test: failing is its job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{User, month_bounds};
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
    let (from, to) = month_bounds(period);
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
