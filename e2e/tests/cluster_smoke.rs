//! The test cluster is a real control plane: the apiserver stores objects, the
//! controller-manager turns a StatefulSet into Pods, the scheduler binds them to kwok's
//! fake nodes, kwok makes them Running and Ready, and RBAC is really enforced.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use trellis_e2e::kube::{client_from, eventually, test_namespace};

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn statefulset_of_three_becomes_ready_on_fake_nodes() {
    let Some(ns) = test_namespace("smoke-statefulset").await else {
        return;
    };
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 3,
            "serviceName": "web",
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": {
                    "containers": [{ "name": "web", "image": "registry.invalid/never-pulled:1" }]
                }
            }
        }
    }))
    .unwrap();
    let sts_api: Api<StatefulSet> = ns.api();
    sts_api.create(&PostParams::default(), &sts).await.unwrap();

    let pods: Api<Pod> = ns.api();
    let ready = eventually(
        "3 Ready pods of the StatefulSet",
        Duration::from_secs(90),
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels("app=web"))
                    .await
                    .ok()?;
                let ready: Vec<Pod> = list.items.into_iter().filter(is_ready).collect();
                (ready.len() == 3).then_some(ready)
            }
        },
    )
    .await;

    let mut names: Vec<String> = ready
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["web-0", "web-1", "web-2"]);
    for pod in &ready {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(node.starts_with("kwok-node-"), "scheduled onto {node:?}");
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        assert!(ip.starts_with("127.64."), "pod IP {ip:?} must be loopback");
    }

    // The controller-manager reports it back on the StatefulSet's status too.
    eventually(
        "StatefulSet status readyReplicas=3",
        Duration::from_secs(30),
        || {
            let api = sts_api.clone();
            async move {
                let s = api.get("web").await.ok()?;
                (s.status?.ready_replicas == Some(3)).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn rbac_is_enforced() {
    let Some(ns) = test_namespace("smoke-rbac").await else {
        return;
    };
    let sa: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "reader" } })).unwrap();
    ns.api::<ServiceAccount>()
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();

    // Act as the ServiceAccount through impersonation.
    let kc = kube::config::Kubeconfig::read_from(ns.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{}:reader", ns.name));
    let as_reader = Client::try_from(config).unwrap();
    let reader_pods: Api<Pod> = Api::namespaced(as_reader, &ns.name);

    let denied = reader_pods.list(&ListParams::default()).await.unwrap_err();
    match denied {
        kube::Error::Api(status) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 Forbidden, got {other}"),
    }

    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "pod-reader" },
        "rules": [PolicyRule { api_groups: Some(vec![String::new()]), resources: Some(vec!["pods".into()]), verbs: vec!["list".into()], ..Default::default() }]
    }))
    .unwrap();
    ns.api::<Role>()
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding = RoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some("reader".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "pod-reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "reader".into(),
            namespace: Some(ns.name.clone()),
            ..Default::default()
        }]),
    };
    ns.api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    eventually(
        "the Role to grant pod list",
        Duration::from_secs(30),
        || {
            let api = reader_pods.clone();
            async move { api.list(&ListParams::default()).await.ok().map(|_| ()) }
        },
    )
    .await;
}

#[tokio::test]
async fn namespaces_are_private_to_each_test() {
    let (Some(a), Some(b)) = (
        test_namespace("smoke-ns").await,
        test_namespace("smoke-ns").await,
    ) else {
        return;
    };
    assert_ne!(a.name, b.name);
    let kubeconfig = a.kubeconfig().to_path_buf();
    // A second client from the same kubeconfig sees the same cluster.
    let other = client_from(&kubeconfig).await.unwrap();
    let ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(other)
        .get(&b.name)
        .await
        .unwrap();
    assert_eq!(
        ns.metadata
            .labels
            .unwrap()
            .get(trellis_e2e::kube::TEST_LABEL)
            .map(String::as_str),
        Some("true")
    );
}
