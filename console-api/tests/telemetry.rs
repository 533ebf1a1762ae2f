//! OpenTelemetry of the real `trellis-console serve` binary against a real OTLP/HTTP
//! receiver (trellis-telemetry's collector) on 127.0.60.x: request and provisioner spans
//! with their attributes, metrics, the resource from the standard environment — and,
//! with no endpoint, no exporter at all and nothing logged about one. And one trace from
//! a console request into the node that answers it (local provisioner, real nodes on
//! 127.0.58.0/24, the console and receiver on 127.0.57.x).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use trellis_telemetry::collector::Collector;

const WAIT: Duration = Duration::from_secs(60);

struct Console {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Console {
    /// The threads of the process (their 15-character names).
    fn thread_names(&self) -> Vec<String> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(tasks)
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_string())
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn start(
    ip: &str,
    data_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Console {
    let port = std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = data_dir.join("console.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_trellis-console"));
    // Only what the test sets: no OTEL_* variable leaks in from the caller.
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    let child = command
        .args(["serve", "--listen", &format!("{ip}:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let console = Console {
        child,
        base: format!("http://{ip}:{port}"),
        log,
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(response) = client.get(format!("{}/healthz", console.base)).send().await
            && response.status() == 200
        {
            return console;
        }
        assert!(Instant::now() < deadline, "the console did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_provisioner_calls_are_traced_and_measured_over_otlp() {
    let collector = Collector::start("127.0.60.1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = collector.endpoint();
    let console = start(
        "127.0.60.2",
        dir.path(),
        &["--otlp-endpoint", &endpoint],
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=test",
            ),
        ],
    )
    .await;
    let names = console.thread_names();
    assert!(
        names.iter().any(|n| n.starts_with("OpenTelemetry.T")),
        "{names:?}"
    );
    let client = reqwest::Client::new();
    let signup: serde_json::Value = client
        .post(format!("{}/v1/auth/signup", console.base))
        .json(&serde_json::json!({
            "organisation": "Traced Ltd",
            "email": "ops@traced.example",
            "password": "correct horse battery staple",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = signup["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let tenant = signup["tenant"]["id"].as_str().unwrap().to_string();
    let created = client
        .post(format!("{}/v1/networks", console.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "traced", "mode": "public"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let network: serde_json::Value = created.json().await.unwrap();
    let listed = client
        .get(format!("{}/v1/networks", console.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let refused = client
        .get(format!("{}/v1/networks", console.base))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let problem: serde_json::Value = refused.json().await.unwrap();
    let trace_id = problem["trace_id"]
        .as_str()
        .expect("trace_id in the problem")
        .to_string();

    // The authenticated list: route template, method, status, tenant; service and
    // resource from the flag's defaults and the standard environment.
    let span = collector
        .span(WAIT, |s| {
            s.name == "GET /v1/networks" && s.attribute("http.response.status_code") == Some("200")
        })
        .await
        .expect("no span for GET /v1/networks");
    assert_eq!(span.service(), Some("trellis-console"));
    assert_eq!(
        span.resource
            .get("deployment.environment.name")
            .map(String::as_str),
        Some("test")
    );
    assert_eq!(span.attribute("http.request.method"), Some("GET"));
    assert_eq!(span.attribute("http.route"), Some("/v1/networks"));
    assert_eq!(span.attribute("tenant.id"), Some(tenant.as_str()));
    // A route template, never the raw path with ids in it.
    let by_id = collector
        .span(WAIT, |s| s.attribute("http.route") == Some("/v1/networks"))
        .await;
    assert!(by_id.is_some());

    // The refused request: its trace id is the one the client was given; no tenant.
    let refused = collector
        .span(WAIT, |s| hex(&s.trace_id) == trace_id)
        .await
        .expect("the refused request's trace never arrived");
    assert_eq!(refused.attribute("http.response.status_code"), Some("401"));
    assert_eq!(refused.attribute("tenant.id"), None);

    // The provisioner call made for the new network.
    let apply = collector
        .span(WAIT, |s| s.name == "provisioner.apply")
        .await
        .expect("no provisioner.apply span");
    assert_eq!(apply.attribute("network.id"), network["id"].as_str());
    assert!(matches!(apply.attribute("outcome"), Some("ok" | "error")));

    // Secrets never leave the process: no attribute anywhere holds the token.
    for span in collector.spans() {
        for value in span.attributes.values().chain(span.resource.values()) {
            assert!(!value.contains(&token), "{} carries the token", span.name);
            assert!(
                !value.contains("correct horse"),
                "{} carries the password",
                span.name
            );
        }
    }

    // Metrics: the request duration histogram (its count is the request count) and the
    // provisioner counter.
    let requests = collector
        .point(WAIT, |p| {
            p.metric == "http.server.request.duration"
                && p.attributes.get("http.route").map(String::as_str) == Some("/v1/networks")
                && p.attributes
                    .get("http.response.status_code")
                    .map(String::as_str)
                    == Some("200")
        })
        .await
        .expect("no request duration metric");
    assert!(requests.value >= 1.0);
    assert_eq!(
        requests.resource.get("service.name").map(String::as_str),
        Some("trellis-console")
    );
    collector
        .point(WAIT, |p| {
            p.metric == "trellis.console.provisioner.calls"
                && p.attributes
                    .get("provisioner.operation")
                    .map(String::as_str)
                    == Some("apply")
        })
        .await
        .expect("no provisioner call metric");
}

/// No endpoint: no exporter thread exists, nothing reaches a collector that the process
/// could otherwise have been told about, and nothing about telemetry is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_or_logged_without_an_endpoint() {
    let collector = Collector::start("127.0.60.3").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = collector.endpoint();
    // Export settings without an endpoint do not switch export on; and the standard
    // kill switch overrides an endpoint.
    let console = start(
        "127.0.60.4",
        dir.path(),
        &[],
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
            ("OTEL_SERVICE_NAME", "should-not-appear"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        ],
    )
    .await;
    let disabled_dir = tempfile::tempdir().unwrap();
    let disabled = start(
        "127.0.60.5",
        disabled_dir.path(),
        &[],
        &[
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    for base in [&console.base, &disabled.base] {
        for path in ["/healthz", "/v1/networks", "/readyz"] {
            client.get(format!("{base}{path}")).send().await.unwrap();
        }
    }
    // Well past the (shortened) export intervals; a sleep here shows absence.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for process in [&console, &disabled] {
        let names = process.thread_names();
        assert!(
            !names.iter().any(|n| n.starts_with("OpenTelemetry")),
            "an exporter thread runs: {names:?}"
        );
        let log = process.log();
        assert!(
            log.contains("listening") || log.contains("INFO"),
            "no log at all:\n{log}"
        );
        for line in log.lines() {
            let lower = line.to_lowercase();
            assert!(
                !(lower.contains("otlp")
                    || lower.contains("opentelemetry")
                    || lower.contains("telemetry")),
                "telemetry logged: {line}"
            );
            assert!(
                !line.contains(" WARN ") && !line.contains("ERROR"),
                "{line}"
            );
        }
    }
    assert_eq!(collector.requests(), Vec::<String>::new());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The pids of live processes whose command line names a file under `dir`.
fn processes_under(dir: &std::path::Path) -> Vec<i32> {
    let dir = dir.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
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
                    .any(|arg| String::from_utf8_lossy(arg).starts_with(&dir))
        })
        .collect()
}

/// Kills (SIGKILL, by pid) the node processes the console started for this test, should
/// the test stop before deleting its network.
struct NodesGuard(std::path::PathBuf);

impl Drop for NodesGuard {
    fn drop(&mut self) {
        for pid in processes_under(&self.0) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// A request through the node RPC proxy and the node's answer to it are one trace: the
/// console sends its request span's W3C `traceparent`, and the node's `rpc` span is that
/// span's child. Console and nodes export to the same receiver, as in a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_node_rpc_request_is_one_trace_across_console_and_node() {
    let collector = Collector::start("127.0.57.1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _nodes = NodesGuard(dir.path().to_path_buf());
    let endpoint = collector.endpoint();
    let node_binary = common::node_binary();
    // The nodes inherit the console's environment, so the endpoint is given there.
    let console = start(
        "127.0.57.2",
        dir.path(),
        &[
            "--provisioner",
            "local",
            "--local-addresses",
            "127.0.58.0/24",
            "--node-binary",
            node_binary.to_str().unwrap(),
            "--reconcile-interval",
            "1",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "60000"),
        ],
    )
    .await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let signup: serde_json::Value = client
        .post(format!("{}/v1/auth/signup", console.base))
        .json(&serde_json::json!({
            "organisation": "Traced Chains Ltd",
            "email": "ops@chains.example",
            "password": "correct horse battery staple",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = signup["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let created = client
        .post(format!("{}/v1/networks", console.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "traced-rpc", "mode": "public"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let network: serde_json::Value = created.json().await.unwrap();
    let id = network["id"].as_str().unwrap().to_string();
    let rpc = format!("{}/v1/networks/{id}/rpc", console.base);

    // Until the network's nodes answer through the proxy.
    let limit = Duration::from_secs(180);
    let deadline = Instant::now() + limit;
    loop {
        let answer = client
            .post(&rpc)
            .bearer_auth(&token)
            .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "trellis_status"}))
            .send()
            .await
            .unwrap();
        if answer.status() == 200 {
            let body: serde_json::Value = answer.json().await.unwrap();
            if body.get("result").is_some() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the network's nodes did not answer through the proxy:\n{}",
            console.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The node's span for a proxied request, and the console's request span it names
    // as its parent: same trace, parent = the console span.
    let node_span = collector
        .span(WAIT, |s| {
            s.service() == Some("trellis-node")
                && s.name == "trellis_status"
                && !s.parent_span_id.is_empty()
        })
        .await
        .expect("no node span with a parent");
    let console_span = collector
        .span(WAIT, |s| s.span_id == node_span.parent_span_id)
        .await
        .expect("the node span's parent never arrived from the console");
    assert_eq!(console_span.service(), Some("trellis-console"));
    assert_eq!(
        console_span.attribute("http.route"),
        Some("/v1/networks/{id}/rpc")
    );
    assert_eq!(console_span.trace_id, node_span.trace_id);
    assert_eq!(node_span.attribute("rpc.method"), Some("trellis_status"));

    // Delete the network: the console stops its nodes.
    let deleted = client
        .delete(format!("{}/v1/networks/{id}", console.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let deadline = Instant::now() + limit;
    while !processes_under(&dir.path().join("local")).is_empty() {
        assert!(Instant::now() < deadline, "the nodes were not stopped");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
