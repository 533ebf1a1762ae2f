//! Monitoring and alerts against real `trellis-node` processes on 127.0.40.x: the
//! collector scrapes them, a SIGKILLed validator fires `validator_down`, the signed
//! webhook reaches a loopback receiver (after a failed first attempt is retried), and
//! restarting the validator resolves the alert.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test harness

mod common;

use common::node_binary;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use common::{TestApp, assert_problem};
use serde_json::{Value, json};
use trellis_billing::alerts::AlertRules;
use trellis_billing::clock::SystemClock;
use trellis_billing::signature;
use trellis_billing::webhook_url::ConsoleAddresses;
use trellis_console::billing::{Billing, BillingSettings};
use trellis_console::monitoring::collector;
use trellis_console::provisioner::{ObservedPhase, ObservedStatus};

const CHAIN: &str = "billing-alerts";
const NODES: usize = 4;

struct Node {
    dir: PathBuf,
    rpc: SocketAddr,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self, bin: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .unwrap();
        self.child = Some(
            Command::new(bin)
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

    /// SIGKILL (what `Child::kill` sends on Unix).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.rpc)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn setup(bin: &Path, root: &Path) -> Vec<Node> {
    // Ports from the process id: parallel runs rarely collide; addresses are ours.
    let base = 30_000 + (std::process::id() % 1_000) as u16 * 10;
    let mut members = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..NODES {
        let dir = root.join(format!("node{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new(bin)
            .args(["keygen", "--out"])
            .arg(dir.join("keys.json"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let keys: Value = serde_json::from_slice(&out.stdout).unwrap();
        let ip = format!("127.0.40.{}", 20 + i);
        let p2p: SocketAddr = format!("{ip}:{}", base + i as u16).parse().unwrap();
        let rpc: SocketAddr = format!("{ip}:{}", base + 5 + i as u16).parse().unwrap();
        members.push(format!(
            "org{i},{},{},{p2p}",
            keys["admin_public_key"].as_str().unwrap(),
            keys["node_public_key"].as_str().unwrap()
        ));
        std::fs::write(
            dir.join("node.toml"),
            format!(
                "chain_id = \"{CHAIN}\"\nkey_file = \"{}\"\ndata_dir = \"{}\"\ngenesis_file = \"{}\"\np2p_listen = \"{p2p}\"\nrpc_listen = \"{rpc}\"\n\n[role]\nkind = \"shard\"\nshard = 0\n",
                dir.join("keys.json").display(),
                dir.join("data").display(),
                root.join("genesis.json").display(),
            ),
        )
        .unwrap();
        nodes.push(Node {
            dir,
            rpc,
            child: None,
        });
    }
    let mut genesis = Command::new(bin);
    genesis
        .args(["genesis", "--chain-id", CHAIN, "--out"])
        .arg(root.join("genesis.json"));
    for member in &members {
        genesis.arg("--member").arg(member);
    }
    let out = genesis.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    nodes
}

/// A webhook receiver on loopback: records every request, fails the first `fail`.
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    fail: Arc<AtomicU32>,
}

async fn receive(
    axum::extract::State(receiver): axum::extract::State<Receiver>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    receiver.received.lock().unwrap().push((headers, body));
    if receiver.fail.load(Ordering::SeqCst) > 0 {
        receiver.fail.fetch_sub(1, Ordering::SeqCst);
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

async fn start_receiver(receiver: Receiver) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.40.10:0")
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver);
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn finalized_height(client: &reqwest::Client, node: &Node) -> u64 {
    let Ok(response) = client
        .post(format!("{}/rpc", node.endpoint()))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "trellis_status"}))
        .send()
        .await
    else {
        return 0;
    };
    let body: Value = response.json().await.unwrap_or_default();
    body["result"]["finalized_height"].as_u64().unwrap_or(0)
}

/// The signed events the receiver accepted, verified with `secret`.
fn verified_events(receiver: &Receiver, secret: &str) -> Vec<Value> {
    let now = chrono::Utc::now().timestamp();
    receiver
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|(headers, body)| {
            let header = headers[signature::HEADER].to_str().unwrap();
            signature::verify(secret.as_bytes(), header, body.as_bytes(), now, 600)
                .unwrap_or_else(|err| panic!("{err}: {header} over {body}"));
            assert!(signature::verify(b"wrong secret", header, body.as_bytes(), now, 600).is_err());
            serde_json::from_str(body).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_validator_fires_a_signed_alert_and_its_restart_resolves_it() {
    let bin = node_binary();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = setup(&bin, root.path());
    for node in &mut nodes {
        node.start(&bin);
    }
    // The process's rustls provider (the console installs it when it builds its own).
    trellis_console::billing::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let limit = Duration::from_secs(120);
    for node in &nodes {
        eventually("every node to finalize", limit, || async {
            finalized_height(&client, node).await >= 2
        })
        .await;
    }

    let mut app = TestApp::sqlite().await;
    let settings = BillingSettings {
        alert_rules: AlertRules {
            // Long enough that a loaded machine's pauses do not look like a stall.
            stall_after_seconds: 600,
            ..AlertRules::default()
        },
        console: ConsoleAddresses {
            listen: vec!["127.0.40.1:8080".parse().unwrap()],
            public_url: None,
        },
        webhook_backoff_base_seconds: 1,
        webhook_backoff_max_seconds: 2,
        ..BillingSettings::default()
    };
    app.state.billing = Arc::new(Billing::new(Arc::new(SystemClock), settings));
    app.router = trellis_console::app::router(app.state.clone());
    let org = app.signup("Watchers", "o@watchers.example").await;

    // Webhook URLs are validated.
    for (url, why) in [
        ("ftp://127.0.40.10/hook", "scheme"),
        ("http://127.0.40.1:8080/v1/alerts", "console itself"),
        ("not a url", "not a URL"),
    ] {
        let refused = app
            .post("/v1/webhooks", &org.token, json!({"url": url}))
            .await;
        assert_problem(
            &refused,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert!(
            refused.body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains(why),
            "{url}: {}",
            refused.text
        );
    }
    let receiver = Receiver::default();
    // The first delivery attempt fails: it must be retried.
    receiver.fail.store(1, Ordering::SeqCst);
    let address = start_receiver(receiver.clone()).await;
    let hook = app
        .post(
            "/v1/webhooks",
            &org.token,
            json!({"url": format!("http://{address}/hook")}),
        )
        .await;
    assert_eq!(hook.status, StatusCode::CREATED, "{}", hook.text);
    let secret = hook.body["secret"].as_str().unwrap().to_string();
    let hook_id = hook.body["id"].as_str().unwrap().to_string();
    let listed = app.get("/v1/webhooks", &org.token).await;
    assert!(
        listed.body["items"][0].get("secret").is_none(),
        "the secret is shown once"
    );

    let created = app
        .post(
            "/v1/networks",
            &org.token,
            json!({"name": "watched", "mode": "public"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_string();
    *app.provisioner.observed.lock().unwrap() = Some(ObservedStatus {
        observed_generation: 1,
        phase: ObservedPhase::Running,
        shard_count: 1,
        epoch: 0,
        shards: vec![],
        rpc_endpoints: nodes.iter().map(Node::endpoint).collect(),
        message: None,
    });
    trellis_console::networks::reconcile::reconcile_once(&app.state)
        .await
        .unwrap();

    // All up: no alert, and the monitoring API shows the shard.
    let report = collector::collect_once(&app.state).await.unwrap();
    assert_eq!((report.nodes_up, report.nodes_down), (4, 0));
    // A node can finalize with a quorum of peers before its last connection is up, so
    // collect until every node reports all three peers (the chain's normal state).
    let mut monitoring = None;
    let mut collections = 1;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        collector::collect_once(&app.state).await.unwrap();
        collections += 1;
        let answer = app
            .get(&format!("/v1/networks/{id}/monitoring"), &org.token)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let settled = answer.body["shards"][0]["peers"] == 3
            && answer.body["shards"][0]["finalized_height"]
                .as_i64()
                .is_some_and(|h| h >= 2);
        monitoring = Some(answer);
        if settled {
            break;
        }
    }
    let monitoring = monitoring.unwrap();
    let shard = &monitoring.body["shards"][0];
    assert_eq!(shard["shard"], 0);
    assert_eq!(shard["validators_up"], 4);
    assert_eq!(shard["validators_expected"], 4);
    assert!(
        shard["finalized_height"].as_i64().unwrap() >= 2,
        "{}",
        monitoring.text
    );
    assert_eq!(shard["peers"], 3, "{}", monitoring.text);
    let from = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for resolution in ["1m", "1h"] {
        let history = app
            .get(&format!("/v1/networks/{id}/monitoring/history?resolution={resolution}&from={from}&to={to}"), &org.token)
            .await;
        assert_eq!(history.status, StatusCode::OK, "{}", history.text);
        let buckets = history.body["shards"][0]["buckets"].as_array().unwrap();
        let samples: u64 = buckets.iter().map(|b| b["samples"].as_u64().unwrap()).sum();
        // One sample per collection so far, in either rollup.
        assert_eq!(samples, collections, "{resolution}: {}", history.text);
    }
    let bad = app
        .get(
            &format!("/v1/networks/{id}/monitoring/history?resolution=5m&from={from}&to={to}"),
            &org.token,
        )
        .await;
    assert_problem(&bad, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let firing = app.get("/v1/alerts?state=firing", &org.token).await;
    assert_eq!(firing.body["items"], json!([]), "{}", firing.text);

    // SIGKILL one validator: validator_down fires and is delivered, signed.
    let victim = nodes[3].endpoint();
    nodes[3].kill();
    eventually("validator_down to fire", limit, || async {
        collector::collect_once(&app.state).await.unwrap();
        let firing = app.get("/v1/alerts?state=firing", &org.token).await;
        firing.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "validator_down" && a["subject"] == victim.as_str())
    })
    .await;
    eventually("the firing event to be delivered", limit, || async {
        trellis_console::alerts::webhooks::deliver_due(&app.state)
            .await
            .unwrap();
        verified_events(&receiver, &secret).len() >= 2
    })
    .await;
    let events = verified_events(&receiver, &secret);
    // The first attempt got a 500 and the same event was retried.
    assert_eq!(events[0], events[1]);
    assert_eq!(events[1]["type"], "alert.firing");
    assert_eq!(events[1]["alert"]["kind"], "validator_down");
    assert_eq!(events[1]["alert"]["subject"], victim.as_str());
    assert_eq!(events[1]["alert"]["network_id"], id.as_str());
    let log = app
        .get(&format!("/v1/webhooks/{hook_id}/deliveries"), &org.token)
        .await;
    let delivery = &log.body["items"][0];
    assert_eq!(delivery["state"], "delivered", "{}", log.text);
    assert_eq!(delivery["attempts"], 2);
    assert_eq!(delivery["last_status"], 204);

    // Restart it: the alert resolves and the resolution is delivered.
    nodes[3].start(&bin);
    eventually("validator_down to resolve", limit, || async {
        collector::collect_once(&app.state).await.unwrap();
        let firing = app.get("/v1/alerts?state=firing", &org.token).await;
        firing.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["kind"] != "validator_down")
    })
    .await;
    eventually("the resolved event to be delivered", limit, || async {
        trellis_console::alerts::webhooks::deliver_due(&app.state)
            .await
            .unwrap();
        verified_events(&receiver, &secret)
            .iter()
            .any(|e| e["type"] == "alert.resolved")
    })
    .await;
    let resolved = app.get("/v1/alerts?state=resolved", &org.token).await;
    let alert = &resolved.body["items"][0];
    assert_eq!(alert["kind"], "validator_down");
    assert!(alert["resolved_at"].is_string());

    // Another tenant sees none of it.
    let other = app.signup("Strangers", "o@strangers.example").await;
    let theirs = app
        .get(&format!("/v1/networks/{id}/monitoring"), &other.token)
        .await;
    assert_problem(&theirs, StatusCode::NOT_FOUND, "not_found");
    let theirs = app
        .get(&format!("/v1/webhooks/{hook_id}/deliveries"), &other.token)
        .await;
    assert_problem(&theirs, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        app.get("/v1/alerts", &other.token).await.body["items"],
        json!([])
    );
}
