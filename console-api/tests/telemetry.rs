//! OpenTelemetry of the real `trellis-console serve` binary against a real OTLP/HTTP
//! receiver (trellis-telemetry's collector) on 127.0.60.x: request and provisioner spans
//! with their attributes, metrics, the resource from the standard environment — and,
//! with no endpoint, no exporter at all and nothing logged about one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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
