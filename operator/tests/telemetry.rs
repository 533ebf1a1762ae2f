//! OpenTelemetry of the real `trellis-operator` binary on a real Kubernetes control plane
//! (`trellis-e2e`), against a real OTLP/HTTP receiver on 127.0.60.x: every reconcile is a
//! span naming the network, its namespace and the outcome, and its duration is measured;
//! with no endpoint there is no exporter and nothing is logged about telemetry.
//!
//! Without a cluster each test prints `SKIPPED` and returns; the README test command
//! always provides one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, PostParams};
use trellis_crd::{ChainNetwork, ChainNetworkSpec, NetworkMode, ShardsSpec};
use trellis_e2e::kube::{TestNamespace, apply_crds, test_namespace};
use trellis_telemetry::collector::Collector;

const WAIT: Duration = Duration::from_secs(90);

struct Operator {
    child: Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Operator {
    fn start(ns: &TestNamespace, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("operator.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_trellis-operator"));
        for (name, _) in std::env::vars() {
            if name.starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        let child = command
            .args([
                "run",
                "--http-addr",
                "127.0.60.21:0",
                "--namespace",
                &ns.name,
            ])
            .args(args)
            .envs(env.iter().copied())
            .env("KUBECONFIG", ns.kubeconfig())
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child,
            log,
            _dir: dir,
        }
    }

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

fn network(name: &str) -> ChainNetwork {
    let mut spec = ChainNetworkSpec::new(NetworkMode::Public, "trellis-node:e2e");
    spec.shards = ShardsSpec {
        count: 1,
        min: 1,
        max: 4,
        ..ShardsSpec::default()
    };
    ChainNetwork::new(name, spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciles_are_traced_and_measured_over_otlp() {
    let Some(ns) = test_namespace("otel-op").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let collector = Collector::start("127.0.60.20").await.unwrap();
    let endpoint = collector.endpoint();
    let _operator = Operator::start(
        &ns,
        &["--otlp-endpoint", &endpoint],
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_SERVICE_NAME", "operator-under-test"),
        ],
    );
    let networks: Api<ChainNetwork> = ns.api();
    networks
        .create(&PostParams::default(), &network("traced"))
        .await
        .unwrap();
    let span = collector
        .span(WAIT, |s| {
            s.name == "reconcile" && s.attribute("network") == Some("traced")
        })
        .await
        .expect("no reconcile span for the network");
    // OTEL_SERVICE_NAME overrides the default service name.
    assert_eq!(span.service(), Some("operator-under-test"));
    assert_eq!(span.attribute("namespace"), Some(ns.name.as_str()));
    assert!(span.attribute("outcome").is_some(), "{span:?}");
    assert!(span.duration > Duration::ZERO);
    collector
        .point(WAIT, |p| {
            p.metric == "trellis.operator.reconcile.duration" && p.value >= 1.0
        })
        .await
        .expect("no reconcile duration metric");
    // The nodes it runs export to the same collector, named by their pod.
    let env = node_env(&ns, "traced").await;
    assert_eq!(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        Some(&Some(endpoint.clone()))
    );
    assert_eq!(
        env.get("OTEL_RESOURCE_ATTRIBUTES"),
        Some(&Some(
            "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)".to_string()
        ))
    );
}

/// The environment of the node container of the network's first StatefulSet, once the
/// operator has written it.
async fn node_env(ns: &TestNamespace, network: &str) -> BTreeMap<String, Option<String>> {
    let statefulsets: Api<StatefulSet> = ns.api();
    let set = trellis_e2e::kube::eventually("the network's StatefulSets", WAIT, || {
        let statefulsets = statefulsets.clone();
        let prefix = format!("{network}-");
        async move {
            statefulsets
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|s| {
                    s.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with(&prefix))
                })
        }
    })
    .await;
    let pod = set.spec.unwrap().template.spec.unwrap();
    let node = pod
        .containers
        .into_iter()
        .find(|c| c.name == "node")
        .unwrap();
    node.env
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_or_logged_without_an_endpoint() {
    let Some(ns) = test_namespace("otel-off").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let operator = Operator::start(&ns, &[], &[("OTEL_METRIC_EXPORT_INTERVAL", "100")]);
    let networks: Api<ChainNetwork> = ns.api();
    networks
        .create(&PostParams::default(), &network("quiet"))
        .await
        .unwrap();
    // The operator has reconciled once it wrote the network's children; the nodes get
    // no OTLP settings either.
    let env = node_env(&ns, "quiet").await;
    assert!(env.keys().all(|k| !k.starts_with("OTEL_")), "{env:?}");
    let names = operator.thread_names();
    assert!(
        !names.iter().any(|n| n.starts_with("OpenTelemetry")),
        "an exporter thread runs: {names:?}"
    );
    let log = operator.log();
    assert!(!log.is_empty(), "the operator logged nothing");
    for line in log.lines() {
        let lower = line.to_lowercase();
        assert!(
            !(lower.contains("otlp") || lower.contains("telemetry")),
            "telemetry logged: {line}"
        );
    }
}
