//! Benchmark: N networks (beacon + 2 shards, 4 validators each) created at once on the
//! test cluster; prints the time until all are `Ready` (object readiness), the time until
//! the operator had written every network's StatefulSets, reconcile latency p50/p99,
//! this process's peak RSS (the operator runs in-process, so that is an upper bound of
//! the operator's own), and the cluster's part: when the last ledger claim and pod were
//! created, bound (PV controller, scheduler) and made Ready (kwok), from the objects'
//! `managedFields` times, and which component sent how many Events.
//!
//! ```sh
//! TRELLIS_KWOK_NODES=10 cargo run -p trellis-operator --example bench_networks -- 20
//! ```
//! (250 pods fit on one kwok node; each network has 12. docs/benchmarks.md also reads the
//! apiserver's and controller-manager's `/metrics` around a run.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark command

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use trellis_crd::{ChainNetwork, ChainNetworkSpec, NetworkMode, ShardsSpec};
use trellis_operator::build::BuildOptions;
use trellis_operator::chain::NodeRpcPending;
use trellis_operator::controller::{self, Context};
use trellis_operator::metrics::Metrics;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// When the last of `objects` was created and last written by each field manager
/// (`manager` or `manager/subresource`), in seconds after `t0`: where the cluster's time
/// went, from the objects' own records (1 s resolution).
fn last_writes<'a>(
    objects: impl Iterator<Item = &'a ObjectMeta>,
    t0: Timestamp,
) -> BTreeMap<String, f64> {
    let since = |t: &Timestamp| (t.as_millisecond() - t0.as_millisecond()) as f64 / 1e3;
    let mut last = BTreeMap::<String, f64>::new();
    let mut note = |key: String, at: f64| {
        let entry = last.entry(key).or_insert(f64::MIN);
        *entry = entry.max(at);
    };
    for meta in objects {
        if let Some(created) = &meta.creation_timestamp {
            note("created".to_owned(), since(&created.0));
        }
        for field in meta.managed_fields.iter().flatten() {
            let (Some(manager), Some(time)) = (&field.manager, &field.time) else {
                continue;
            };
            let key = match field.subresource.as_deref() {
                Some(sub) if !sub.is_empty() => format!("{manager}/{sub}"),
                _ => manager.clone(),
            };
            note(key, since(&time.0));
        }
    }
    last
}

fn show(last: &BTreeMap<String, f64>) -> String {
    last.iter()
        .map(|(k, v)| format!("{k} {v:.0} s"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `trellis_operator_kube_requests_total` by (verb, resource), from the metrics text.
fn kube_requests(metrics: &str) -> BTreeMap<(String, String), f64> {
    let label = |labels: &str, name: &str| {
        let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
        let end = labels[start..].find('"')? + start;
        Some(labels[start..end].to_owned())
    };
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("trellis_operator_kube_requests_total{")?;
            let (labels, value) = rest.split_once("} ")?;
            Some((
                (label(labels, "verb")?, label(labels, "resource")?),
                value.trim().parse().ok()?,
            ))
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let Some(ns) = trellis_e2e::kube::test_namespace("op-bench").await else {
        panic!("the benchmark needs the test cluster");
    };
    let client = ns.client.clone();
    trellis_e2e::kube::apply_crds(&client, trellis_crd::crds())
        .await
        .unwrap();

    // Ledger volumes, pre-bound (no provisioner on the test cluster); not timed.
    let claims: Vec<String> = (0..n)
        .flat_map(|i| {
            ["beacon", "shard-0", "shard-1"]
                .into_iter()
                .flat_map(move |committee| {
                    (0..4).map(move |ordinal| format!("ledger-net-{i}-{committee}-{ordinal}"))
                })
        })
        .collect();
    let volumes = ns.prebound_volumes(&claims, "10Gi").await.unwrap();

    let metrics = Arc::new(Metrics::new());
    // The operator's own client counts its apiserver requests (crate::requests); the
    // benchmark's polling below uses the test client and is not counted.
    let kubeconfig = kube::config::Kubeconfig::read_from(ns.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let operator_client =
        trellis_operator::requests::counted_client(config, metrics.clone()).unwrap();
    let ctx = Arc::new(Context::new(
        operator_client,
        Arc::new(NodeRpcPending),
        BuildOptions::default(),
        metrics.clone(),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(controller::run(ctx, Some(ns.name.clone()), async move {
        let _ = stopped.await;
    }));

    let networks: Api<ChainNetwork> = ns.api();
    let t0 = Timestamp::now();
    let started = Instant::now();
    let creates = (0..n).map(|i| {
        let networks = networks.clone();
        async move {
            let mut spec = ChainNetworkSpec::new(NetworkMode::Public, "trellis-node:bench");
            spec.shards = ShardsSpec {
                count: 2,
                min: 1,
                max: 4,
                ..ShardsSpec::default()
            };
            networks
                .create(
                    &PostParams::default(),
                    &ChainNetwork::new(&format!("net-{i}"), spec),
                )
                .await
                .unwrap();
        }
    });
    futures::future::join_all(creates).await;
    let created = started.elapsed();

    let sts: Api<StatefulSet> = ns.api();
    let mut children_at = None;
    let ready_at = loop {
        if children_at.is_none() {
            let count = sts
                .list_metadata(&ListParams::default())
                .await
                .unwrap()
                .items
                .len();
            if count == 3 * n {
                children_at = Some(started.elapsed());
            }
        }
        let list = networks.list(&ListParams::default()).await.unwrap();
        let ready = list
            .items
            .iter()
            .filter(|net| {
                net.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == n {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {ready}/{n} Ready after 900 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut durations = metrics.recent_durations();
    durations.sort_by(f64::total_cmp);
    let busy: f64 = durations.iter().sum();
    println!("networks: {n} ({} pods)", 12 * n);
    println!("all created (API): {:.2} s", created.as_secs_f64());
    println!(
        "all StatefulSets written: {:.2} s",
        children_at.unwrap_or(ready_at).as_secs_f64()
    );
    println!("all Ready: {:.2} s", ready_at.as_secs_f64());
    println!(
        "reconciles: {} , p50 {:.1} ms, p99 {:.1} ms, total {:.1} s (almost all of it apiserver round trips)",
        durations.len(),
        percentile(&durations, 0.5) * 1e3,
        percentile(&durations, 0.99) * 1e3,
        busy
    );
    println!(
        "peak RSS of this process (operator in-process): {:.1} MiB",
        peak_rss_mib()
    );
    let requests = kube_requests(&metrics.encode());
    let total: f64 = requests.values().sum();
    println!(
        "operator apiserver requests: {total:.0} ({:.1} per reconcile): {}",
        total / durations.len().max(1) as f64,
        requests
            .iter()
            .map(|((verb, resource), n)| format!("{verb} {resource} {n:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // The cluster's part: the last claim bound (the PV controller's status write), pod
    // created (StatefulSet controller), bound to a node (scheduler), Ready (kwok).
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let claims = claims.list(&ListParams::default()).await.unwrap();
    println!(
        "last claim: {}",
        show(&last_writes(claims.items.iter().map(|c| &c.metadata), t0))
    );
    let pods: Api<Pod> = ns.api();
    let pods = pods.list(&ListParams::default()).await.unwrap();
    println!(
        "last pod: {}",
        show(&last_writes(pods.items.iter().map(|p| &p.metadata), t0))
    );
    // Events are a large part of the apiserver's writes: who sends how many.
    let events: Api<k8s_openapi::api::core::v1::Event> = ns.api();
    let mut senders = BTreeMap::<String, (usize, i32)>::new();
    for event in events.list(&ListParams::default()).await.unwrap().items {
        let sender = event
            .reporting_component
            .filter(|c| !c.is_empty())
            .or(event.source.and_then(|s| s.component))
            .unwrap_or_default();
        let entry = senders.entry(sender).or_default();
        entry.0 += 1;
        entry.1 += event.count.unwrap_or(1);
    }
    println!(
        "events (objects, occurrences) by sender: {}",
        senders
            .iter()
            .map(|(k, (n, c))| format!("{k} {n}/{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    drop(stop);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for name in volumes {
        let _ = pvs.delete(&name, &DeleteParams::background()).await;
    }
    // Now, not at drop: the process exits before a drop's clean-up thread would run,
    // and the volumes go only once the namespace's claims do.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let _ = namespaces
        .delete(&ns.name, &DeleteParams::background())
        .await;
}
