//! OpenTelemetry of real `trellis-node` processes (one-validator chains on 127.0.60.x)
//! against a real OTLP/HTTP receiver: JSON-RPC spans, a span per finalized block and the
//! block/RPC metrics arrive with the right service and attributes; with no endpoint (or
//! with the SDK switched off, or for a non-`run` command) nothing is sent, no exporter
//! exists and nothing about telemetry is logged; a bad endpoint is a clear start-up error.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trellis_telemetry::collector::Collector;

const BIN: &str = env!("CARGO_BIN_EXE_trellis-node");
const CHAIN: &str = "telemetry-test";
const WAIT: Duration = Duration::from_secs(90);

struct Node {
    child: Child,
    rpc: SocketAddr,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn thread_names(&self) -> Vec<String> {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_string())
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A command with no OTEL_* variable from the caller's environment.
fn node_command() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command
}

/// Keys, a one-member genesis and a config for a validator on `ip`.
fn setup(dir: &Path, ip: &str) -> (PathBuf, SocketAddr) {
    let out = node_command()
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
    let p2p: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().unwrap();
    let rpc: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().unwrap();
    let out = node_command()
        .args(["genesis", "--chain-id", CHAIN, "--out"])
        .arg(dir.join("genesis.json"))
        .arg("--member")
        .arg(format!(
            "org0,{},{},{p2p}",
            keys["admin_public_key"].as_str().unwrap(),
            keys["node_public_key"].as_str().unwrap()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "chain_id = \"{CHAIN}\"\nkey_file = \"{}\"\ndata_dir = \"{}\"\ngenesis_file = \"{}\"\np2p_listen = \"{p2p}\"\nrpc_listen = \"{rpc}\"\n\n[role]\nkind = \"shard\"\nshard = 0\n",
            dir.join("keys.json").display(),
            dir.join("data").display(),
            dir.join("genesis.json").display(),
        ),
    )
    .unwrap();
    (config, rpc)
}

fn start(dir: &Path, ip: &str, args: &[&str], env: &[(&str, &str)]) -> Node {
    let (config, rpc) = setup(dir, ip);
    let log = dir.join("node.log");
    let child = node_command()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Node { child, rpc, log }
}

async fn status(client: &reqwest_lite::Client, rpc: SocketAddr) -> Option<Value> {
    client
        .post(
            rpc,
            json!({"jsonrpc": "2.0", "id": 1, "method": "trellis_status"}),
        )
        .await
        .and_then(|v| v.get("result").cloned())
}

async fn wait_for_height(node: &Node, height: u64) {
    let client = reqwest_lite::Client;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = status(&client, node.rpc).await
            && s["finalized_height"].as_u64().is_some_and(|h| h >= height)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not reach height {height}:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Just enough HTTP/1.1 for JSON-RPC on loopback (the node crate has no HTTP client).
mod reqwest_lite {
    use serde_json::Value;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub struct Client;

    impl Client {
        pub async fn post(&self, addr: SocketAddr, body: Value) -> Option<Value> {
            self.post_with(addr, body, "").await
        }

        /// `extra`: more header lines, each ending in `\r\n`.
        pub async fn post_with(&self, addr: SocketAddr, body: Value, extra: &str) -> Option<Value> {
            let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
            let body = body.to_string();
            let head = format!(
                "POST /rpc HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await.ok()?;
            stream.write_all(body.as_bytes()).await.ok()?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.ok()?;
            let text = String::from_utf8_lossy(&response);
            serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_requests_and_finalized_blocks_are_exported_over_otlp() {
    let collector = Collector::start("127.0.60.9").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = collector.endpoint();
    let node = start(
        dir.path(),
        "127.0.60.10",
        &["--otlp-endpoint", &endpoint],
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "trellis.network=telemetry-test,trellis.shard=0",
            ),
        ],
    );
    wait_for_height(&node, 3).await;

    let rpc = collector
        .span(WAIT, |s| s.name == "trellis_status")
        .await
        .expect("no span for the trellis_status RPC");
    assert_eq!(rpc.service(), Some("trellis-node"));
    assert_eq!(
        rpc.resource.get("trellis.network").map(String::as_str),
        Some("telemetry-test")
    );
    assert_eq!(rpc.attribute("rpc.system"), Some("jsonrpc"));
    assert_eq!(rpc.attribute("rpc.method"), Some("trellis_status"));
    assert_eq!(rpc.attribute("http.route"), Some("/rpc"));
    assert_eq!(rpc.attribute("http.response.status_code"), Some("200"));

    let block = collector
        .span(WAIT, |s| {
            s.name == "block.finalized"
                && s.attribute("block.height")
                    .and_then(|h| h.parse::<u64>().ok())
                    .is_some_and(|h| h >= 2)
        })
        .await
        .expect("no block.finalized span");
    assert_eq!(block.service(), Some("trellis-node"));
    assert_eq!(block.attribute("block.txs"), Some("0"));
    assert_eq!(block.attribute("block.epoch"), Some("0"));
    assert_eq!(block.attribute("block.shard"), Some("0"));
    let height: u64 = block.attribute("block.height").unwrap().parse().unwrap();
    let view: u64 = block.attribute("block.view").unwrap().parse().unwrap();
    // Simplex gives every height its own view at least (genesis is view 0).
    assert!(view >= height, "view {view} below height {height}");
    // The span runs from the proposal to finalization: a consensus round, never an
    // instant, and well under the test's patience.
    assert!(
        block.duration > Duration::ZERO && block.duration < WAIT,
        "block.finalized lasted {:?}",
        block.duration
    );

    // A caller's W3C trace context: the node's RPC span joins the caller's trace as a
    // child of the caller's span.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let answer = reqwest_lite::Client
        .post_with(
            node.rpc,
            json!({"jsonrpc": "2.0", "id": 7, "method": "trellis_getBlock", "params": {"height": 1}}),
            &format!("traceparent: 00-{trace_id}-{parent_id}-01\r\n"),
        )
        .await
        .expect("no answer to the traced request");
    assert!(answer.get("result").is_some(), "{answer}");
    let traced = collector
        .span(WAIT, |s| s.name == "trellis_getBlock")
        .await
        .expect("no span for the traced trellis_getBlock");
    assert_eq!(hex(&traced.trace_id), trace_id);
    assert_eq!(hex(&traced.parent_span_id), parent_id);
    // Without one (or with garbage) the request is a trace of its own.
    assert!(rpc.parent_span_id.is_empty());
    reqwest_lite::Client
        .post_with(
            node.rpc,
            json!({"jsonrpc": "2.0", "id": 8, "method": "trellis_getBlock", "params": {"height": 2}}),
            "traceparent: 00-zz-not-a-trace-01\r\n",
        )
        .await
        .expect("no answer to the request with a bad traceparent");
    let untraced = collector
        .span(WAIT, |s| {
            s.name == "trellis_getBlock" && hex(&s.trace_id) != trace_id
        })
        .await
        .expect("no span for the request with a bad traceparent");
    assert!(untraced.parent_span_id.is_empty());

    let height = collector
        .point(WAIT, |p| {
            p.metric == "trellis.node.finalized.height" && p.value >= 2.0
        })
        .await
        .expect("no finalized height metric");
    assert_eq!(
        height.resource.get("service.name").map(String::as_str),
        Some("trellis-node")
    );
    collector
        .point(WAIT, |p| {
            p.metric == "trellis.node.blocks.finalized" && p.value >= 2.0
        })
        .await
        .expect("no finalized blocks metric");
    collector
        .point(WAIT, |p| {
            p.metric == "rpc.server.duration"
                && p.attributes.get("rpc.method").map(String::as_str) == Some("trellis_status")
        })
        .await
        .expect("no RPC duration metric");
    // The exporter threads exist here: the positive control of the test below.
    assert!(
        node.thread_names()
            .iter()
            .any(|n| n.starts_with("OpenTelemetry.T"))
    );
}

/// Kubernetes stops a pod with SIGTERM: the node exits cleanly and flushes what its
/// exporters still hold. The export intervals here are far longer than the test, so the
/// spans and metric points can only arrive through the flush at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_the_exporters_before_exit() {
    let collector = Collector::start("127.0.60.11").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = collector.endpoint();
    let mut node = start(
        dir.path(),
        "127.0.60.12",
        &["--otlp-endpoint", &endpoint],
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
        ],
    );
    wait_for_height(&node, 3).await;
    assert!(
        collector.spans().is_empty(),
        "spans arrived before the flush; the test would prove nothing"
    );
    let term = Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not exit within {WAIT:?} of SIGTERM:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "exit after SIGTERM: {exit}\n{}", node.log());
    assert!(node.log().contains("SIGTERM received; stopping"));
    collector
        .span(WAIT, |s| s.name == "block.finalized")
        .await
        .expect("no block.finalized span flushed at SIGTERM");
    collector
        .point(WAIT, |p| {
            p.metric == "trellis.node.finalized.height" && p.value >= 3.0
        })
        .await
        .expect("no finalized height point flushed at SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_or_logged_without_an_endpoint() {
    let collector = Collector::start("127.0.60.11").await.unwrap();
    let endpoint = collector.endpoint();
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = start(plain_dir.path(), "127.0.60.12", &[], &[]);
    let disabled_dir = tempfile::tempdir().unwrap();
    let disabled = start(
        disabled_dir.path(),
        "127.0.60.13",
        &[],
        &[
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
        ],
    );
    // A command other than `run` never exports, whatever the environment says.
    let keygen_dir = tempfile::tempdir().unwrap();
    let out = node_command()
        .args(["keygen", "--out"])
        .arg(keygen_dir.path().join("keys.json"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .output()
        .unwrap();
    assert!(out.status.success());

    wait_for_height(&plain, 3).await;
    wait_for_height(&disabled, 3).await;
    // Well past the (shortened) export intervals; a sleep here shows absence.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in [&plain, &disabled] {
        let names = node.thread_names();
        assert!(
            !names.iter().any(|n| n.starts_with("OpenTelemetry")),
            "an exporter thread runs: {names:?}"
        );
        let log = node.log();
        assert!(log.contains("finalized"), "no log at all:\n{log}");
        for line in log.lines() {
            let lower = line.to_lowercase();
            assert!(
                !(lower.contains("otlp") || lower.contains("telemetry")),
                "telemetry logged: {line}"
            );
        }
    }
    assert_eq!(collector.requests(), Vec::<String>::new());
}

#[test]
fn a_bad_endpoint_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = setup(dir.path(), "127.0.60.14");
    let out = node_command()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--otlp-endpoint", "otel-collector:4318"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not an OTLP/HTTP collector URL") && stderr.contains("http://"),
        "{stderr}"
    );
    let out = node_command()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.60.14:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("http/protobuf only"), "{stderr}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
