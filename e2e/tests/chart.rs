//! The Helm chart, through public interfaces only (helm, kubectl, HTTP).
//!
//! * `helm lint` and `helm template` with the default and the fully-featured values;
//!   the rendered objects are checked (security contexts, leader election, PDBs,
//!   least-privilege RBAC) and bad values are refused with the chart's messages.
//! * On the real test cluster: the rendered manifests pass a server-side dry-run, the
//!   chart is installed for real (`helm install --wait`: kwok makes its pods Ready), and
//!   then the operator and the console binaries run as local processes **with the
//!   credentials of the chart's ServiceAccounts** (a kubeconfig that impersonates them):
//!   the Kubernetes flow in one test — a tenant signs up through the console and
//!   creates a public network and a consortium; the console writes the ChainNetworks; the
//!   operator builds their StatefulSets; kwok makes the pods Ready; each network's
//!   `Ready` condition turns True; `kubectl scale` on the public network raises its
//!   desired shard count (the new shard's StatefulSet and Ready pods, `Scaling=True/
//!   AwaitingBeacon`: no node runs on kwok to switch the beacon; consortiums are unsharded
//!   by design); an invited organisation accepts and is approved and its `ChainMember`
//!   appears; deleting both networks through the console removes the ChainNetworks, their
//!   StatefulSets and the member resource. Everything the two processes
//!   do is authorized by the chart's RBAC only, which proves it sufficient; the rule
//!   tables below and the refused requests prove it no broader than needed.
//!
//! What is not real: pods run no processes (kwok), so the chart's Deployments are
//! Available without the images existing; the product runs from the local binaries.

// A test: failing is its job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use trellis_e2e::kube::{TestNamespace, eventually, kubectl, test_namespace};
use trellis_e2e::tools::{helm, repo_root, workspace_binary};

const WAIT: Duration = Duration::from_secs(180);

fn chart_dir() -> PathBuf {
    repo_root().join("charts/trellis")
}

/// Helm, or `None` (test skipped) when it is not built and the README test command did
/// not ask for every environment.
fn helm_or_skip(test: &str) -> Option<PathBuf> {
    match helm() {
        Ok(helm) => Some(helm),
        Err(e) if std::env::var("TRELLIS_REQUIRE_CLUSTER").as_deref() != Ok("1") => {
            eprintln!("SKIPPED {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"))
}

fn succeed(command: &mut Command) -> String {
    let out = run(command);
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `helm template` with `--set` values; the rendered objects as JSON values.
fn render(helm: &Path, sets: &[&str]) -> Vec<Value> {
    let mut command = Command::new(helm);
    command
        .args(["template", "demo", "--namespace", "trellis-system"])
        .arg(chart_dir());
    for set in sets {
        command.args(["--set", set]);
    }
    let text = succeed(&mut command);
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| {
            let value: Value = serde::Deserialize::deserialize(doc).unwrap();
            (!value.is_null()).then_some(value)
        })
        .collect()
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in {:?}", kinds(objects)))
}

/// A ClusterRole's rules flattened to `group resource verb` lines.
fn grants(role: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    out.insert(format!(
                        "{} {} {}",
                        group.as_str().unwrap(),
                        resource.as_str().unwrap(),
                        verb.as_str().unwrap()
                    ));
                }
            }
        }
    }
    out
}

fn expand(table: &[(&str, &[&str], &[&str])]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (group, resources, verbs) in table {
        for resource in *resources {
            for verb in *verbs {
                out.insert(format!("{group} {resource} {verb}"));
            }
        }
    }
    out
}

const CHILD_VERBS: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];

/// What the operator does, and nothing more (see operator/src: the controller's watches,
/// server-side apply of the children, orphan clean-up, status, Events).
fn operator_grants() -> BTreeSet<String> {
    expand(&[
        (
            "trellis.dev",
            &["chainnetworks", "chainmembers"],
            &["get", "list", "watch", "patch"],
        ),
        (
            "trellis.dev",
            &["chainnetworks/status", "chainmembers/status"],
            &["get", "patch"],
        ),
        ("apps", &["statefulsets"], CHILD_VERBS),
        ("", &["services", "configmaps", "secrets"], CHILD_VERBS),
        ("policy", &["poddisruptionbudgets"], CHILD_VERBS),
        ("networking.k8s.io", &["networkpolicies"], CHILD_VERBS),
        (
            "monitoring.coreos.com",
            &["servicemonitors"],
            &["get", "create", "patch", "delete"],
        ),
        ("events.k8s.io", &["events"], &["create", "patch"]),
    ])
}

/// What the console's kube provisioner does: a namespace per tenant with its plan's
/// ResourceQuota, ChainNetworks and later members' ChainMembers in it (a removed one
/// deleted), the governance transaction Secrets it hands to the operator, and each
/// network's treasury key Secret (read back by name, deleted with the ledger; Secrets
/// are never listed or watched).
fn console_grants() -> BTreeSet<String> {
    expand(&[
        ("", &["namespaces"], &["get", "create", "patch"]),
        ("", &["resourcequotas"], &["create", "patch"]),
        ("", &["secrets"], &["get", "create", "delete"]),
        (
            "trellis.dev",
            &["chainnetworks"],
            &["get", "create", "patch", "delete"],
        ),
        (
            "trellis.dev",
            &["chainmembers"],
            &["get", "list", "create", "patch", "delete"],
        ),
    ])
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

#[test]
fn chart_lints_renders_and_refuses_bad_values() {
    let Some(helm) = helm_or_skip("chart_lints_renders_and_refuses_bad_values") else {
        return;
    };
    let full = [
        "console.database.type=postgres",
        "console.database.postgres.existingSecret=trellis-db",
        "console.keys.existingSecret=trellis-console-keys",
        "console.replicas=2",
        "console.ingress.enabled=true",
        "console.ingress.tlsSecret=console-tls",
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.prometheusRule.enabled=true",
        "monitoring.grafanaDashboards.enabled=true",
        "otlp.endpoint=http://otel-collector.monitoring:4318",
        "otlp.headersSecret.name=otlp-auth",
        "otlp.resourceAttributes=deployment.environment.name=prod",
    ];
    succeed(
        Command::new(&helm)
            .args(["lint", "--strict"])
            .arg(chart_dir()),
    );
    let mut lint_full = Command::new(&helm);
    lint_full.args(["lint", "--strict"]).arg(chart_dir());
    for set in full {
        lint_full.args(["--set", set]);
    }
    succeed(&mut lint_full);

    // Defaults: SQLite on a volume, two operator replicas, RBAC, network policies.
    let objects = render(&helm, &[]);
    let expected: BTreeSet<String> = [
        "ServiceAccount/demo-trellis-operator",
        "ServiceAccount/demo-trellis-console",
        "ClusterRole/demo-trellis-operator",
        "ClusterRoleBinding/demo-trellis-operator",
        "Role/demo-trellis-operator-leader-election",
        "RoleBinding/demo-trellis-operator-leader-election",
        "ClusterRole/demo-trellis-console",
        "ClusterRoleBinding/demo-trellis-console",
        "Deployment/demo-trellis-operator",
        "Service/demo-trellis-operator-metrics",
        "PodDisruptionBudget/demo-trellis-operator",
        "PersistentVolumeClaim/demo-trellis-console-data",
        "Deployment/demo-trellis-console",
        "Service/demo-trellis-console",
        "NetworkPolicy/demo-trellis-operator",
        "NetworkPolicy/demo-trellis-console",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(kinds(&objects), expected);

    for object in &objects {
        let labels = &object["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/part-of"], "trellis", "{object}");
        assert_eq!(labels["app.kubernetes.io/instance"], "demo", "{object}");
        if object["kind"] == "Deployment" {
            let pod = &object["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{object}");
            for c in pod["containers"].as_array().unwrap() {
                let sc = &c["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{c}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{c}");
                assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{c}");
                assert!(c["resources"]["limits"]["memory"].is_string(), "{c}");
                assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{c}");
                assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{c}");
                assert!(c["image"].as_str().unwrap().ends_with(":0.1.0"), "{c}");
            }
        }
        // No wildcard anywhere in RBAC.
        if let Some(rules) = object["rules"].as_array() {
            for rule in rules {
                assert!(!rule.to_string().contains('*'), "wildcard in {rule}");
            }
        }
    }
    let operator = find(&objects, "Deployment", "demo-trellis-operator");
    assert_eq!(operator["spec"]["replicas"], 2);
    let op = container(operator, "operator");
    assert_eq!(env(op, "TRELLIS_LEADER_ELECTION").unwrap()["value"], "true");
    assert_eq!(
        env(op, "POD_NAMESPACE").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert!(env(op, "OTEL_EXPORTER_OTLP_ENDPOINT").is_none());
    let console = find(&objects, "Deployment", "demo-trellis-console");
    assert_eq!(console["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(
        console["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "demo-trellis-console-data"
    );
    let pvc = find(
        &objects,
        "PersistentVolumeClaim",
        "demo-trellis-console-data",
    );
    assert_eq!(
        pvc["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert_eq!(
        grants(find(&objects, "ClusterRole", "demo-trellis-operator")),
        operator_grants()
    );
    assert_eq!(
        grants(find(&objects, "ClusterRole", "demo-trellis-console")),
        console_grants()
    );
    let lease_role = find(&objects, "Role", "demo-trellis-operator-leader-election");
    assert_eq!(lease_role["metadata"]["namespace"], "trellis-system");
    assert_eq!(
        grants(lease_role),
        expand(&[(
            "coordination.k8s.io",
            &["leases"],
            &["get", "create", "update", "patch"]
        )])
    );

    // Everything switched on: PostgreSQL, keys from a Secret, ingress, monitoring, OTLP.
    let objects = render(&helm, &full);
    let names = kinds(&objects);
    for expected in [
        "ServiceMonitor/demo-trellis-operator",
        "ServiceMonitor/demo-trellis-console",
        "PrometheusRule/demo-trellis",
        "Ingress/demo-trellis-console",
        "PodDisruptionBudget/demo-trellis-console",
        "ConfigMap/demo-trellis-dashboard-trellis-networks",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(!names.contains("PersistentVolumeClaim/demo-trellis-console-data"));
    let rule = find(&objects, "PrometheusRule", "demo-trellis");
    let alerts: Vec<&str> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert!(alerts.contains(&"TrellisChainStalled"), "{alerts:?}");
    let console = find(&objects, "Deployment", "demo-trellis-console");
    let c = container(console, "console");
    assert_eq!(
        env(c, "DATABASE_URL").unwrap()["valueFrom"]["secretKeyRef"]["name"],
        "trellis-db"
    );
    for c in [
        c,
        container(
            find(&objects, "Deployment", "demo-trellis-operator"),
            "operator",
        ),
    ] {
        assert_eq!(
            env(c, "OTEL_EXPORTER_OTLP_ENDPOINT").unwrap()["value"],
            "http://otel-collector.monitoring:4318"
        );
        // Headers are credentials: referenced from the Secret, never inlined.
        assert_eq!(
            env(c, "OTEL_EXPORTER_OTLP_HEADERS").unwrap()["valueFrom"]["secretKeyRef"],
            json!({"name": "otlp-auth", "key": "otlp-headers"})
        );
        assert_eq!(
            env(c, "OTEL_RESOURCE_ATTRIBUTES").unwrap()["value"],
            "deployment.environment.name=prod"
        );
    }
    assert!(console["spec"].get("strategy").is_none());

    // Bad values are refused with a message that says what to do.
    let refused = |sets: &[&str], says: &str| {
        let mut command = Command::new(&helm);
        command.args(["template", "demo"]).arg(chart_dir());
        for set in sets {
            command.args(["--set", set]);
        }
        let out = run(&mut command);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sets:?} was accepted");
        assert!(stderr.contains(says), "{sets:?}: {stderr}");
    };
    refused(
        &["console.replicas=2"],
        "needs console.database.type=postgres",
    );
    refused(
        &["console.database.type=postgres"],
        "needs console.database.postgres.existingSecret",
    );
    refused(
        &[
            "console.database.type=postgres",
            "console.database.postgres.existingSecret=db",
        ],
        "needs console.keys.existingSecret",
    );
    refused(&["console.database.type=mysql"], "/console/database/type");
    refused(&["operator.replicas=-1"], "/operator/replicas");
    refused(&["otlp.endpoint=grpc://collector"], "/otlp/endpoint");
    refused(&["otlp.endpoint=otel-collector:4318"], "/otlp/endpoint");
    refused(
        &["otlp.endpoint=https://collector.example"],
        "/otlp/endpoint",
    );
    refused(
        &["otlp.resourceAttributes=no-equals-sign"],
        "/otlp/resourceAttributes",
    );
    refused(&["console.provisioner=docker"], "/console/provisioner");
    refused(&["console.unknownSetting=1"], "unknownSetting");
}

/// A kubeconfig that acts as `user` (impersonation by the cluster admin).
fn impersonating(admin: &Path, user: &str, dir: &Path) -> PathBuf {
    let mut config: Value = serde_yaml::from_str(&std::fs::read_to_string(admin).unwrap()).unwrap();
    for entry in config["users"].as_array_mut().unwrap() {
        entry["user"]["as"] = json!(user);
    }
    let path = dir.join(format!("{}.kubeconfig", user.replace(':', "_")));
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// A local process killed when the test ends, however it ends.
struct Process(Child, &'static str);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.0.try_wait() {
            panic!("{} exited early: {status}", self.1);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn kubectl_json(ns: &TestNamespace, args: &[&str]) -> Option<Value> {
    let out = run(Command::new(kubectl().unwrap())
        .arg("--kubeconfig")
        .arg(ns.kubeconfig())
        .args(args)
        .args(["-o", "json"]));
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// `kubectl auth can-i` as `user`.
fn can_i(ns: &TestNamespace, user: &str, args: &[&str]) -> bool {
    let out = run(Command::new(kubectl().unwrap())
        .arg("--kubeconfig")
        .arg(ns.kubeconfig())
        .args(["auth", "can-i", "--as", user])
        .args(args));
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// The ledger claims (name, size) of the StatefulSets whose names start with `prefix`
/// in `namespace`; `None` until there are `expected` of them (the operator writes them
/// one by one).
fn claims_of(
    ns: &TestNamespace,
    namespace: &str,
    prefix: &str,
    expected: usize,
) -> Option<Vec<(String, String)>> {
    let list = kubectl_json(ns, &["get", "statefulsets", "-n", namespace])?;
    let mut claims = Vec::new();
    let mut sets = 0;
    for sts in list["items"].as_array()? {
        let name = sts["metadata"]["name"].as_str()?;
        if !name.starts_with(prefix) {
            continue;
        }
        sets += 1;
        let replicas = sts["spec"]["replicas"].as_u64()?;
        for template in sts["spec"]["volumeClaimTemplates"].as_array()? {
            let claim = template["metadata"]["name"].as_str()?;
            let size = template["spec"]["resources"]["requests"]["storage"].as_str()?;
            claims.extend((0..replicas).map(|i| (format!("{claim}-{name}-{i}"), size.to_string())));
        }
    }
    (sets == expected).then_some(claims)
}

/// Whether every replica of the StatefulSets starting with `prefix` has a Ready pod
/// (kwok marks them Ready; no process runs in them). Returns the pods counted.
fn pods_ready(ns: &TestNamespace, namespace: &str, prefix: &str) -> Option<usize> {
    let sets = kubectl_json(ns, &["get", "statefulsets", "-n", namespace])?;
    let wanted: u64 = sets["items"]
        .as_array()?
        .iter()
        .filter(|s| {
            s["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(prefix))
        })
        .filter_map(|s| s["spec"]["replicas"].as_u64())
        .sum();
    let pods = kubectl_json(ns, &["get", "pods", "-n", namespace])?;
    let ready = pods["items"]
        .as_array()?
        .iter()
        .filter(|p| {
            p["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(prefix))
        })
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .count();
    (wanted > 0 && ready as u64 == wanted).then_some(ready)
}

/// The network's condition `kind` when its status is `status`.
fn condition(network: &Value, kind: &str, status: &str) -> Option<Value> {
    network["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == status)
        .cloned()
}

#[tokio::test]
async fn chart_installs_and_its_service_accounts_run_the_product() {
    let test = "chart_installs_and_its_service_accounts_run_the_product";
    let Some(helm) = helm_or_skip(test) else {
        return;
    };
    let Some(ns) = test_namespace("chart").await else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let release = ns.name.clone();
    let fullname = if release.contains("trellis") {
        release.clone()
    } else {
        format!("{release}-trellis")
    };
    let helm_cmd = |args: &[&str]| {
        let mut c = Command::new(&helm);
        c.arg("--kubeconfig")
            .arg(ns.kubeconfig())
            .args(["--namespace", &ns.name])
            .args(args);
        c
    };

    // 1. The rendered manifests (CRDs included) pass the apiserver's server-side dry-run.
    let rendered = succeed(helm_cmd(&["template", &release, "--include-crds"]).arg(chart_dir()));
    let manifest = work.path().join("rendered.yaml");
    std::fs::write(&manifest, rendered).unwrap();
    succeed(
        Command::new(kubectl().unwrap())
            .arg("--kubeconfig")
            .arg(ns.kubeconfig())
            .args(["apply", "--dry-run=server", "--namespace", &ns.name, "-f"])
            .arg(&manifest),
    );

    // 2. Installed for real. No storage provisioner here: the console's claim gets a
    //    pre-bound volume, like a cluster's provisioner would give it.
    ns.prebound_volumes(&[format!("{fullname}-console-data")], "1Gi")
        .await
        .unwrap();
    struct Uninstall<'a>(&'a dyn Fn());
    impl Drop for Uninstall<'_> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let uninstall = || {
        // Cluster-scoped RBAC objects outlive the namespace: remove them.
        let _ = helm_cmd(&["uninstall", &release, "--wait"]).output();
    };
    let _uninstall = Uninstall(&uninstall);
    succeed(helm_cmd(&["install", &release, "--wait", "--timeout", "180s"]).arg(chart_dir()));
    for component in ["operator", "console"] {
        let deployment = kubectl_json(
            &ns,
            &[
                "get",
                "deployment",
                &format!("{fullname}-{component}"),
                "-n",
                &ns.name,
            ],
        )
        .unwrap();
        let want = if component == "operator" { 2 } else { 1 };
        assert_eq!(
            deployment["status"]["availableReplicas"], want,
            "{deployment}"
        );
    }

    // 3. Least privilege: what the ServiceAccounts must not do.
    let operator_sa = format!("system:serviceaccount:{}:{fullname}-operator", ns.name);
    let console_sa = format!("system:serviceaccount:{}:{fullname}-console", ns.name);
    assert!(can_i(
        &ns,
        &operator_sa,
        &["patch", "statefulsets", "-n", "default"]
    ));
    assert!(can_i(
        &ns,
        &console_sa,
        &["create", "chainnetworks.trellis.dev", "-n", "default"]
    ));
    for (who, args) in [
        (&operator_sa, &["create", "pods", "-n", "default"][..]),
        (&operator_sa, &["delete", "namespaces"][..]),
        (&operator_sa, &["create", "clusterrolebindings"][..]),
        (&operator_sa, &["update", "customresourcedefinitions"][..]),
        (&operator_sa, &["get", "leases", "-n", "default"][..]),
        (&console_sa, &["list", "secrets", "-n", "default"][..]),
        (&console_sa, &["watch", "secrets", "-n", "default"][..]),
        (&console_sa, &["delete", "namespaces"][..]),
        (
            &console_sa,
            &["create", "statefulsets", "-n", "default"][..],
        ),
        (
            &console_sa,
            &[
                "patch",
                "chainnetworks.trellis.dev",
                "--subresource=status",
                "-n",
                "default",
            ][..],
        ),
    ] {
        assert!(!can_i(&ns, who, args), "{who} may {args:?}");
    }

    // 4. The product, run with exactly those permissions.
    let console_port = free_port();
    let console_url = format!("http://127.0.0.1:{console_port}");
    let mut console = Process(
        Command::new(workspace_binary("trellis-console").unwrap())
            .args([
                "serve",
                "--provisioner",
                "kube",
                "--reconcile-interval",
                "1",
            ])
            .arg("--listen")
            .arg(format!("127.0.0.1:{console_port}"))
            .arg("--data-dir")
            .arg(work.path().join("console"))
            .env(
                "KUBECONFIG",
                impersonating(ns.kubeconfig(), &console_sa, work.path()),
            )
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        "trellis-console",
    );
    let http = reqwest::Client::new();
    eventually("console ready", WAIT, || {
        let http = http.clone();
        let url = format!("{console_url}/readyz");
        async move {
            http.get(url)
                .send()
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        }
    })
    .await;
    console.assert_running();
    let organisation = format!("Chart {}", ns.name);
    let signup: Value = http
        .post(format!("{console_url}/v1/auth/signup"))
        .json(
            &json!({"organisation": organisation, "email": "owner@chart.example",
                      "password": "a long and careful passphrase 42"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = signup["tokens"]["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{signup}"));
    let tenant_ns = format!("trellis-{}", signup["tenant"]["slug"].as_str().unwrap());
    struct DeleteNamespace(PathBuf, PathBuf, String);
    impl Drop for DeleteNamespace {
        fn drop(&mut self) {
            let _ = Command::new(&self.0)
                .arg("--kubeconfig")
                .arg(&self.1)
                .args(["delete", "namespace", &self.2, "--wait=false"])
                .output();
        }
    }
    let _tenant_ns = DeleteNamespace(
        kubectl().unwrap(),
        ns.kubeconfig().to_path_buf(),
        tenant_ns.clone(),
    );
    let created = http
        .post(format!("{console_url}/v1/networks"))
        .bearer_auth(token)
        .json(&json!({"name": "ledger", "mode": "public",
                      "shards": {"count": 1, "min": 1, "max": 4}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let network_id = created["id"].as_str().unwrap().to_string();

    // The console (as its ServiceAccount) made the tenant's namespace and ChainNetwork.
    eventually("ChainNetwork written by the console", WAIT, || async {
        kubectl_json(&ns, &["get", "chainnetwork", "ledger", "-n", &tenant_ns])
    })
    .await;
    // With the ResourceQuota of the tenant's plan (the sign-up default, free).
    let quota = kubectl_json(
        &ns,
        &["get", "resourcequota", "trellis-plan", "-n", &tenant_ns],
    )
    .unwrap();
    assert_eq!(
        quota["metadata"]["annotations"]["console.trellis.dev/plan"], "free",
        "{quota}"
    );

    let mut operator = Process(
        Command::new(workspace_binary("trellis-operator").unwrap())
            .args(["run", "--leader-election", "--namespace", &tenant_ns])
            .args(["--lease-namespace", &ns.name])
            .args(["--lease-name", &format!("{fullname}-operator")])
            .args(["--identity", "chart-test"])
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", free_port()))
            .env(
                "KUBECONFIG",
                impersonating(ns.kubeconfig(), &operator_sa, work.path()),
            )
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        "trellis-operator",
    );

    // The operator (as its ServiceAccount) builds the StatefulSets (the beacon's and
    // shard 0's); their ledger claims get pre-bound volumes; kwok runs the pods; the
    // network becomes Ready.
    let claims = eventually("StatefulSets built by the operator", WAIT, || async {
        claims_of(&ns, &tenant_ns, "ledger-", 2)
    })
    .await;
    operator.assert_running();
    for (claim, size) in &claims {
        ns.prebound_volumes_in(&tenant_ns, std::slice::from_ref(claim), size)
            .await
            .unwrap();
    }
    eventually("ledger's pods Ready on kwok", WAIT, || async {
        pods_ready(&ns, &tenant_ns, "ledger-")
    })
    .await;
    let ready = eventually("ChainNetwork Ready", WAIT, || async {
        let network = kubectl_json(&ns, &["get", "chainnetwork", "ledger", "-n", &tenant_ns])?;
        condition(&network, "Ready", "True").map(|_| network)
    })
    .await;
    assert!(
        ready["status"]["shards"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "{ready}"
    );
    operator.assert_running();
    console.assert_running();
    // The operator held the chart's Lease (the Role in the release namespace suffices).
    let lease = kubectl_json(
        &ns,
        &[
            "get",
            "lease",
            &format!("{fullname}-operator"),
            "-n",
            &ns.name,
        ],
    )
    .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "chart-test");

    // The console reads the operator's status back: the tenant sees it running.
    let network_url = format!("{console_url}/v1/networks/{network_id}");
    eventually("the console shows the network Running", WAIT, || {
        let (http, url) = (http.clone(), network_url.clone());
        async move {
            let shown: Value = http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (shown["phase"] == "Running").then_some(())
        }
    })
    .await;

    // `kubectl scale` on the network (its scale subresource) changes the shard count:
    // the operator provisions the new shard's StatefulSet.
    succeed(
        Command::new(kubectl().unwrap())
            .arg("--kubeconfig")
            .arg(ns.kubeconfig())
            .args([
                "scale",
                "chainnetwork",
                "ledger",
                "--replicas",
                "2",
                "-n",
                &tenant_ns,
            ]),
    );
    eventually("StatefulSet of the new shard", WAIT, || async {
        kubectl_json(
            &ns,
            &["get", "statefulset", "ledger-shard-1", "-n", &tenant_ns],
        )
    })
    .await;
    // The desired count is 2; the count in service waits for the beacon's switch (no
    // node runs on kwok), which the operator says.
    let scaling = eventually("the network Scaling to 2 shards", WAIT, || async {
        let network = kubectl_json(&ns, &["get", "chainnetwork", "ledger", "-n", &tenant_ns])?;
        (network["spec"]["shards"]["count"] == 2)
            .then(|| condition(&network, "Scaling", "True"))
            .flatten()
    })
    .await;
    assert_eq!(scaling["reason"], "AwaitingBeacon", "{scaling}");
    let claims = claims_of(&ns, &tenant_ns, "ledger-shard-1", 1).unwrap();
    for (claim, size) in &claims {
        ns.prebound_volumes_in(&tenant_ns, std::slice::from_ref(claim), size)
            .await
            .unwrap();
    }
    eventually("the new shard's pods Ready on kwok", WAIT, || async {
        pods_ready(&ns, &tenant_ns, "ledger-shard-1")
    })
    .await;

    // A consortium created through the console appears as a ChainNetwork with its
    // organisations, each with its own admin key.
    let guild = http
        .post(format!("{console_url}/v1/networks"))
        .bearer_auth(token)
        .json(&json!({"name": "guild", "mode": "consortium",
                      "members": [{"organisation": "Guild A"}, {"organisation": "Guild B"},
                                  {"organisation": "Guild C"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(guild.status(), 201);
    let guild: Value = guild.json().await.unwrap();
    let guild_url = format!(
        "{console_url}/v1/networks/{}",
        guild["id"].as_str().unwrap()
    );
    let provisioned = eventually("the console provisions the consortium", WAIT, || {
        let (http, url) = (http.clone(), guild_url.clone());
        async move {
            let shown: Value = http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (shown["provisioned_generation"] == 1 || !shown["provision_error"].is_null())
                .then_some(shown)
        }
    })
    .await;
    assert!(provisioned["provision_error"].is_null(), "{provisioned}");
    let guild = eventually("consortium ChainNetwork", WAIT, || async {
        kubectl_json(&ns, &["get", "chainnetwork", "guild", "-n", &tenant_ns])
    })
    .await;
    assert_eq!(guild["spec"]["mode"], "Consortium", "{guild}");
    let members = guild["spec"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{guild}");
    let keys: BTreeSet<&str> = members
        .iter()
        .map(|m| m["adminPublicKey"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 3, "distinct organisation keys: {guild}");

    // The operator builds the consortium's StatefulSet (one committee: no beacon); kwok
    // runs the pods; Ready.
    let claims = eventually("the consortium's StatefulSets", WAIT, || async {
        claims_of(&ns, &tenant_ns, "guild-", 1)
    })
    .await;
    for (claim, size) in &claims {
        ns.prebound_volumes_in(&tenant_ns, std::slice::from_ref(claim), size)
            .await
            .unwrap();
    }
    eventually("the consortium's pods Ready on kwok", WAIT, || async {
        pods_ready(&ns, &tenant_ns, "guild-")
    })
    .await;
    eventually("the consortium Ready", WAIT, || async {
        let network = kubectl_json(&ns, &["get", "chainnetwork", "guild", "-n", &tenant_ns])?;
        condition(&network, "Ready", "True")
    })
    .await;

    // A fourth organisation is invited, signs up, accepts and is approved: the console
    // writes its member resource (a ChainMember: it joins by chain governance).
    let post = |url: String, token: String, body: Value| {
        let http = http.clone();
        async move {
            let answer = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            (status, answer.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, invitation) = post(
        format!("{guild_url}/invitations"),
        token.to_string(),
        json!({"organisation": "Delta"}),
    )
    .await;
    assert_eq!(status, 201, "{invitation}");
    let delta: Value = http
        .post(format!("{console_url}/v1/auth/signup"))
        .json(&json!({"organisation": format!("Delta {}", ns.name),
                      "email": "owner@delta.example",
                      "password": "another long and careful passphrase"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let delta_token = delta["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let _delta_ns = DeleteNamespace(
        kubectl().unwrap(),
        ns.kubeconfig().to_path_buf(),
        format!("trellis-{}", delta["tenant"]["slug"].as_str().unwrap()),
    );
    let (status, accepted) = post(
        format!("{console_url}/v1/consortium/invitations/accept"),
        delta_token,
        json!({"token": invitation["token"]}),
    )
    .await;
    assert_eq!(status, 200, "{accepted}");
    let member = invitation["member"]["id"].as_str().unwrap();
    let (status, approved) = post(
        format!("{guild_url}/members/{member}/approvals"),
        token.to_string(),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["member"]["state"], "Admitted", "{approved}");
    // The admission is a new generation of the network, which the console applies.
    let generation = approved["network_generation"].clone();
    assert!(generation.is_i64(), "{approved}");
    let applied = eventually("the console applies the admission", WAIT, || {
        let (http, url) = (http.clone(), guild_url.clone());
        let generation = generation.clone();
        async move {
            let shown: Value = http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (shown["provisioned_generation"] == generation || !shown["provision_error"].is_null())
                .then_some(shown)
        }
    })
    .await;
    assert!(applied["provision_error"].is_null(), "{applied}");
    let chain_member = eventually("Delta's ChainMember", WAIT, || async {
        let members = kubectl_json(&ns, &["get", "chainmembers", "-n", &tenant_ns])?;
        members["items"]
            .as_array()?
            .iter()
            .find(|m| m["spec"]["network"]["name"] == "guild")
            .cloned()
    })
    .await;
    // Kubernetes names are DNS labels: the organisation's is lower-cased.
    assert_eq!(
        chain_member["spec"]["organization"], "delta",
        "{chain_member}"
    );
    assert_eq!(
        chain_member["metadata"]["name"], "guild-delta",
        "{chain_member}"
    );
    let member_name = chain_member["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();

    // Deleting through the console removes the ChainNetwork, and Kubernetes' garbage
    // collector removes its children (owner references).
    let deleted = http
        .delete(&network_url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(
        deleted.status() == 204 || deleted.status() == 202,
        "{}",
        deleted.status()
    );
    let deleted = http
        .delete(&guild_url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(
        deleted.status() == 204 || deleted.status() == 202,
        "{}",
        deleted.status()
    );
    eventually(
        "ledger's and guild's StatefulSets collected",
        WAIT,
        || async {
            let network = kubectl_json(&ns, &["get", "chainnetworks", "-n", &tenant_ns])?;
            let gone = !network["items"]
                .as_array()?
                .iter()
                .any(|n| n["metadata"]["name"] == "ledger" || n["metadata"]["name"] == "guild");
            let sets = kubectl_json(&ns, &["get", "statefulsets", "-n", &tenant_ns])?;
            let left = sets["items"].as_array()?.iter().any(|s| {
                s["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("ledger-") || n.starts_with("guild-"))
            });
            (gone && !left).then_some(())
        },
    )
    .await;
    eventually(
        "Delta's ChainMember removed with its network",
        WAIT,
        || async {
            let members = kubectl_json(&ns, &["get", "chainmembers", "-n", &tenant_ns])?;
            (!members["items"]
                .as_array()?
                .iter()
                .any(|m| m["metadata"]["name"] == member_name.as_str()))
            .then_some(())
        },
    )
    .await;
    operator.assert_running();
    console.assert_running();
}
