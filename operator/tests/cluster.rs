//! The operator against a real Kubernetes control plane (kube-apiserver, etcd,
//! kube-controller-manager, kube-scheduler) with kwok fake nodes, from `trellis-e2e`.
//!
//! What is real here: the apiserver (CRD schema, CEL rules, scale subresource, server-side
//! apply, garbage collection), the StatefulSet and PV controllers, the scheduler, and the
//! operator's own reconciler running in-process. What is not: pods do not run processes
//! (kwok marks them Running and Ready), so the operator's real node RPC client finds no
//! node (`ChainHealthy=Unknown/NodesUnreachable`) and shard-count changes stop at the
//! beacon step (trellis-node does not run the beacon yet). `tests/nodes.rs` runs real
//! nodes next to this cluster.
//!
//! Without a cluster each test prints `SKIPPED` and returns; the README test command
//! always provides one.

// Helpers of this test binary fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use trellis_crd::{ChainNetwork, ChainNetworkSpec, NetworkMode, ShardsSpec};
use trellis_e2e::kube::{TestNamespace, apply_crds, eventually, test_namespace};
use trellis_operator::build::BuildOptions;
use trellis_operator::chain::NodeRpc;
use trellis_operator::controller::{self, Context};
use trellis_operator::endpoints::Loopback;
use trellis_operator::labels;
use trellis_operator::lease::{self, LeaseConfig};
use trellis_operator::metrics::Metrics;

const WAIT: Duration = Duration::from_secs(90);

/// Pre-bound hostPath PVs for the ledger claims of `pods` (the test cluster has no
/// storage provisioner; the real PV controller binds each claim to its volume).
async fn ledger_volumes(ns: &TestNamespace, pods: &[String]) -> Vec<String> {
    let claims: Vec<String> = pods.iter().map(|pod| format!("ledger-{pod}")).collect();
    ns.prebound_volumes(&claims, "10Gi").await.unwrap()
}

async fn delete_volumes(client: &Client, names: &[String]) {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    for name in names {
        let _ = api.delete(name, &DeleteParams::background()).await;
    }
}

fn pods(network: &str, committees: &[&str], validators: u32) -> Vec<String> {
    committees
        .iter()
        .flat_map(|c| (0..validators).map(move |i| format!("{network}-{c}-{i}")))
        .collect()
}

/// The operator's real node RPC client, resolving no node (kwok pods run no process).
fn no_nodes() -> NodeRpc {
    NodeRpc::new(Arc::new(Loopback::default()), Duration::from_secs(1))
}

/// Starts the reconcilers in-process, watching only `ns`; they stop when the sender drops.
fn start_operator(ns: &TestNamespace) -> (Arc<Context>, tokio::sync::watch::Sender<()>) {
    support::start_operator(ns, Arc::new(no_nodes()), Arc::new(Metrics::new()), true)
}

fn network(name: &str, shards: i32) -> ChainNetwork {
    let mut spec = ChainNetworkSpec::new(NetworkMode::Public, "trellis-node:e2e");
    spec.shards = ShardsSpec {
        count: shards,
        min: 1,
        max: 4,
        ..ShardsSpec::default()
    };
    ChainNetwork::new(name, spec)
}

fn condition(network: &ChainNetwork, type_: &str) -> Option<(String, String)> {
    network
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn names<K>(api: &Api<K>) -> Vec<String>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut names: Vec<String> = api
        .list(&ListParams::default().labels("app.kubernetes.io/instance=alpha"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    names.sort();
    names
}

/// resourceVersion of every object the operator writes for `alpha`, and of alpha itself.
async fn versions(ns: &TestNamespace) -> BTreeMap<String, String> {
    async fn of<K>(ns: &TestNamespace, kind: &str, out: &mut BTreeMap<String, String>)
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = ns.api();
        for o in api
            .list(&ListParams::default().labels("app.kubernetes.io/instance=alpha"))
            .await
            .unwrap()
            .items
        {
            out.insert(
                format!("{kind}/{}", o.name_any()),
                o.resource_version().unwrap_or_default(),
            );
        }
    }
    let mut out = BTreeMap::new();
    of::<StatefulSet>(ns, "sts", &mut out).await;
    of::<Service>(ns, "svc", &mut out).await;
    of::<ConfigMap>(ns, "cm", &mut out).await;
    of::<Secret>(ns, "secret", &mut out).await;
    of::<PodDisruptionBudget>(ns, "pdb", &mut out).await;
    of::<NetworkPolicy>(ns, "netpol", &mut out).await;
    let cr: ChainNetwork = ns.api::<ChainNetwork>().get("alpha").await.unwrap();
    out.insert(
        "cnet/alpha".to_owned(),
        cr.resource_version().unwrap_or_default(),
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_lifecycle_on_a_real_cluster() {
    let Some(ns) = test_namespace("op-net").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let volumes = ledger_volumes(
        &ns,
        &pods("alpha", &["beacon", "shard-0", "shard-1", "shard-2"], 4),
    )
    .await;
    let (ctx, stop) = start_operator(&ns);
    let networks: Api<ChainNetwork> = ns.api();
    networks
        .create(&PostParams::default(), &network("alpha", 2))
        .await
        .unwrap();

    // Every child exists, labelled and owned.
    let sts: Api<StatefulSet> = ns.api();
    let all = eventually("StatefulSets created", WAIT, || {
        let sts = sts.clone();
        async move {
            let n = names(&sts).await;
            (n.len() == 3).then_some(n)
        }
    })
    .await;
    assert_eq!(all, ["alpha-beacon", "alpha-shard-0", "alpha-shard-1"]);
    assert_eq!(
        names(&ns.api::<Service>()).await,
        [
            "alpha-beacon",
            "alpha-rpc",
            "alpha-shard-0",
            "alpha-shard-1"
        ]
    );
    assert_eq!(
        names(&ns.api::<PodDisruptionBudget>()).await,
        ["alpha-beacon", "alpha-shard-0", "alpha-shard-1"]
    );
    assert_eq!(names(&ns.api::<NetworkPolicy>()).await, ["alpha-nodes"]);
    assert_eq!(
        names(&ns.api::<ConfigMap>()).await,
        [
            "alpha-beacon-config",
            "alpha-genesis",
            "alpha-shard-0-config",
            "alpha-shard-1-config"
        ]
    );
    let secrets = names(&ns.api::<Secret>()).await;
    assert_eq!(
        secrets,
        [
            "alpha-admin-key",
            "alpha-beacon-keys",
            "alpha-shard-0-keys",
            "alpha-shard-1-keys"
        ]
    );
    let cr = networks.get("alpha").await.unwrap();
    let uid = cr.uid().unwrap();
    for set in sts.list(&ListParams::default()).await.unwrap().items {
        let owner = &set.owner_references()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            (uid.as_str(), Some(true))
        );
    }
    let keys_before = ns
        .api::<Secret>()
        .get("alpha-shard-0-keys")
        .await
        .unwrap()
        .data;
    assert_eq!(keys_before.as_ref().map(|d| d.len()), Some(4));

    // kwok makes the pods Ready; the Ready condition follows.
    let ready = eventually("network Ready", Duration::from_secs(150), || {
        let networks = networks.clone();
        async move {
            let n = networks.get("alpha").await.ok()?;
            (condition(&n, "Ready")? == ("True".to_owned(), "AllValidatorsReady".to_owned()))
                .then_some(n)
        }
    })
    .await;
    let status = ready.status.clone().unwrap();
    assert_eq!(status.shard_count, Some(2));
    assert_eq!(status.observed_generation, cr.metadata.generation);
    assert_eq!(
        condition(&ready, "ChainHealthy").unwrap(),
        ("Unknown".to_owned(), "NodesUnreachable".to_owned()),
        "pod readiness must not pass for chain health"
    );
    let pvcs: Api<PersistentVolumeClaim> = ns.api();
    assert_eq!(
        pvcs.list(&ListParams::default()).await.unwrap().items.len(),
        12
    );

    // Reconciling again changes nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = versions(&ns).await;
    // A fresh context has no record of earlier applies, so this is a full apply.
    let fresh = Arc::new(Context::new(
        ns.client.clone(),
        Arc::new(no_nodes()),
        BuildOptions::default(),
        Arc::new(Metrics::new()),
    ));
    for _ in 0..2 {
        let current = Arc::new(networks.get("alpha").await.unwrap());
        controller::reconcile(current, fresh.clone()).await.unwrap();
    }
    assert_eq!(fresh.metrics.recent_durations().len(), 2);
    let _ = &ctx;
    assert_eq!(
        versions(&ns).await,
        before,
        "a second reconcile wrote something"
    );

    // `kubectl scale` through the scale subresource changes spec.shards.count.
    let scaled = match trellis_e2e::kube::kubectl() {
        Some(kubectl) => {
            let out = std::process::Command::new(kubectl)
                .arg("--kubeconfig")
                .arg(ns.kubeconfig())
                .args([
                    "-n",
                    &ns.name,
                    "scale",
                    "chainnetwork/alpha",
                    "--replicas=3",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            true
        }
        None => false,
    };
    if !scaled {
        networks
            .patch_scale(
                "alpha",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"replicas": 3}})),
            )
            .await
            .unwrap();
    }
    assert_eq!(networks.get("alpha").await.unwrap().spec.shards.count, 3);
    eventually("shard-2 provisioned", WAIT, || {
        let sts = sts.clone();
        async move { sts.get_opt("alpha-shard-2").await.ok()?.map(|_| ()) }
    })
    .await;
    let scaling = eventually("Scaling condition", WAIT, || {
        let networks = networks.clone();
        async move {
            let n = networks.get("alpha").await.ok()?;
            (condition(&n, "Scaling")?.0 == "True").then_some(n)
        }
    })
    .await;
    assert_eq!(condition(&scaling, "Scaling").unwrap().1, "AwaitingBeacon");
    assert_eq!(
        scaling.status.as_ref().unwrap().shard_count,
        Some(2),
        "the beacon has not switched: shards in service stay 2"
    );
    let scale = networks.get_scale("alpha").await.unwrap();
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));

    // Back to 2: the never-activated shard goes away; the in-service ones stay.
    networks
        .patch_scale(
            "alpha",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    eventually("shard-2 removed", WAIT, || {
        let sts = sts.clone();
        async move {
            sts.get_opt("alpha-shard-2")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    assert!(sts.get_opt("alpha-shard-1").await.unwrap().is_some());
    let keys_after = ns
        .api::<Secret>()
        .get("alpha-shard-0-keys")
        .await
        .unwrap()
        .data;
    assert_eq!(keys_after, keys_before, "keys are never regenerated");

    // The apiserver refuses an out-of-bounds scale with the CEL message.
    let err = networks
        .patch_scale(
            "alpha",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 9}})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("min <= count <= max"), "{err}");

    // Delete: children are garbage collected, ledger PVCs are kept (retainLedgerOnDelete).
    networks
        .delete("alpha", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually("children collected", WAIT, || {
        let sts = sts.clone();
        async move { names(&sts).await.is_empty().then_some(()) }
    })
    .await;
    assert!(
        pvcs.list(&ListParams::default()).await.unwrap().items.len() >= 12,
        "ledger PVCs must survive the network's deletion"
    );
    drop(stop);
    delete_volumes(&ns.client, &volumes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused_or_reported() {
    let Some(ns) = test_namespace("op-invalid").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let networks: Api<ChainNetwork> = ns.api();

    // CEL at the apiserver.
    let mut bad = network("bad", 1);
    bad.spec.validators_per_shard = 5;
    let err = networks
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("3f+1"), "{err}");
    let mut immutable = networks
        .create(&PostParams::default(), &network("fixed", 1))
        .await
        .unwrap();
    immutable.spec.mode = NetworkMode::Consortium;
    let err = networks
        .replace("fixed", &PostParams::default(), &immutable)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("mode is immutable"), "{err}");
    networks
        .delete("fixed", &DeleteParams::default())
        .await
        .unwrap();

    // A spec the schema accepts but the operator cannot run gets a condition, no children.
    let (_ctx, stop) = start_operator(&ns);
    let mut unrunnable = network("alpha", 1);
    unrunnable.spec.autoscaling = Some(trellis_crd::AutoscalingSpec {
        enabled: true,
        target_tx_per_second_per_shard: None,
        target_mempool_depth: None,
        cooldown_seconds: 60,
        stabilization_window_seconds: 60,
    });
    networks
        .create(&PostParams::default(), &unrunnable)
        .await
        .unwrap();
    let reported = eventually("InvalidSpec condition", WAIT, || {
        let networks = networks.clone();
        async move {
            let n = networks.get("alpha").await.ok()?;
            (condition(&n, "Ready")?.1 == "InvalidSpec").then_some(n)
        }
    })
    .await;
    assert_eq!(
        reported.status.as_ref().unwrap().phase,
        Some(trellis_crd::NetworkPhase::Invalid)
    );
    assert!(names(&ns.api::<StatefulSet>()).await.is_empty());
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let found = eventually("InvalidSpec event", WAIT, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("InvalidSpec"))
        }
    })
    .await;
    assert_eq!(found.type_.as_deref(), Some("Warning"));
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_takes_the_lease_when_the_leader_stops_renewing() {
    let Some(ns) = test_namespace("op-lease").await else {
        return;
    };
    let config = |identity: &str| LeaseConfig {
        name: "trellis-operator".to_owned(),
        namespace: ns.name.clone(),
        identity: identity.to_owned(),
        lease_duration: Duration::from_secs(2),
        renew_every: Duration::from_millis(500),
    };
    let (a, b) = (config("replica-a"), config("replica-b"));
    assert!(lease::try_acquire_or_renew(&ns.client, &a).await.unwrap());
    assert!(!lease::try_acquire_or_renew(&ns.client, &b).await.unwrap());
    assert!(
        lease::try_acquire_or_renew(&ns.client, &a).await.unwrap(),
        "renewal"
    );
    // A stops renewing (killed); B takes over once the lease has expired.
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), lease::acquire(&ns.client, &b))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !lease::try_acquire_or_renew(&ns.client, &a).await.unwrap(),
        "A is a follower now"
    );
    let held: k8s_openapi::api::coordination::v1::Lease =
        ns.api().get("trellis-operator").await.unwrap();
    let spec = held.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_transitions, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consortium_members_report_their_admission_state() {
    let Some(ns) = test_namespace("op-member").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let (_ctx, stop) = start_operator(&ns);
    let mut spec = ChainNetworkSpec::new(NetworkMode::Consortium, "trellis-node:e2e");
    spec.members = vec![trellis_crd::ConsortiumMember {
        name: "org-a".to_owned(),
        admin_public_key: "aa".repeat(32),
        nodes: 1,
    }];
    let networks: Api<ChainNetwork> = ns.api();
    networks
        .create(&PostParams::default(), &ChainNetwork::new("alpha", spec))
        .await
        .unwrap();
    let members: Api<trellis_crd::ChainMember> = ns.api();
    let member = |name: &str, org: &str, key: &str| {
        trellis_crd::ChainMember::new(
            name,
            trellis_crd::ChainMemberSpec {
                network: trellis_crd::member::NetworkRef {
                    name: "alpha".to_owned(),
                    namespace: None,
                },
                organization: org.to_owned(),
                admin_public_key: key.to_owned(),
                nodes: 1,
                node_key_secret: None,
                remove: false,
                governance_tx_secret: None,
            },
        )
    };
    members
        .create(
            &PostParams::default(),
            &member("org-a", "org-a", &"aa".repeat(32)),
        )
        .await
        .unwrap();
    members
        .create(
            &PostParams::default(),
            &member("org-b", "org-b", &"bb".repeat(32)),
        )
        .await
        .unwrap();
    let phase = |name: &'static str| {
        let members = members.clone();
        async move {
            let m = members.get(name).await.ok()?;
            let status = m.status?;
            let c = status.conditions.iter().find(|c| c.type_ == "Admitted")?;
            Some((status.phase?, c.reason.clone()))
        }
    };
    let a = eventually("org-a status", WAIT, || phase("org-a")).await;
    assert_eq!(
        a,
        (
            trellis_crd::MemberPhase::Admitted,
            "GenesisMember".to_owned()
        )
    );
    // No node runs behind kwok's pods: the registry cannot be read, and nothing moves.
    let b = eventually("org-b status", WAIT, || phase("org-b")).await;
    assert_eq!(
        b,
        (
            trellis_crd::MemberPhase::Invited,
            "RegistryUnreachable".to_owned()
        )
    );
    // Its node keys were generated into the member's key Secret, owned by the member.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = ns.api();
    let keys = secrets.get("alpha-m-org-b-keys").await.unwrap();
    assert!(keys.data.unwrap().contains_key("alpha-m-org-b-0.key"));
    assert_eq!(
        keys.metadata.owner_references.unwrap()[0].kind,
        "ChainMember"
    );
    // Immutable organisation, enforced by the apiserver.
    let mut renamed = members.get("org-b").await.unwrap();
    renamed.spec.organization = "org-c".to_owned();
    let err = members
        .replace("org-b", &PostParams::default(), &renamed)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("organization is immutable"),
        "{err}"
    );
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_paused_and_ledger_deletion_policy() {
    let Some(ns) = test_namespace("op-ops").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let volumes = ledger_volumes(&ns, &pods("alpha", &["beacon", "shard-0"], 4)).await;
    let (_ctx, stop) = start_operator(&ns);
    let networks: Api<ChainNetwork> = ns.api();
    let mut spec = network("alpha", 1);
    spec.spec.retain_ledger_on_delete = false;
    networks
        .create(&PostParams::default(), &spec)
        .await
        .unwrap();
    let sts: Api<StatefulSet> = ns.api();
    let reason = |want: &'static str| {
        let networks = networks.clone();
        async move {
            let n = networks.get("alpha").await.ok()?;
            (condition(&n, "Ready")?.1 == want).then_some(n)
        }
    };
    eventually("Ready", Duration::from_secs(150), || {
        reason("AllValidatorsReady")
    })
    .await;

    // stopped: every committee at zero replicas, claims kept.
    let patch = |body: serde_json::Value| {
        let networks = networks.clone();
        async move {
            networks
                .patch("alpha", &PatchParams::default(), &Patch::Merge(body))
                .await
                .unwrap();
        }
    };
    patch(serde_json::json!({"spec": {"stopped": true}})).await;
    let stopped = eventually("Stopped", WAIT, || reason("Stopped")).await;
    assert_eq!(
        stopped.status.unwrap().phase,
        Some(trellis_crd::NetworkPhase::Stopped)
    );
    for set in sts.list(&ListParams::default()).await.unwrap().items {
        assert_eq!(set.spec.unwrap().replicas, Some(0));
    }
    let pvcs: Api<PersistentVolumeClaim> = ns.api();
    assert_eq!(
        pvcs.list(&ListParams::default()).await.unwrap().items.len(),
        8
    );

    // paused: a spec change is not acted on, and the status says why.
    patch(serde_json::json!({"spec": {"stopped": false, "paused": true}})).await;
    eventually("Paused phase", WAIT, || {
        let networks = networks.clone();
        async move {
            let n = networks.get("alpha").await.ok()?;
            (n.status?.phase? == trellis_crd::NetworkPhase::Paused).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for set in sts.list(&ListParams::default()).await.unwrap().items {
        assert_eq!(
            set.spec.unwrap().replicas,
            Some(0),
            "paused: nothing written"
        );
    }
    patch(serde_json::json!({"spec": {"paused": false}})).await;
    eventually("Ready again", Duration::from_secs(150), || {
        reason("AllValidatorsReady")
    })
    .await;

    // retainLedgerOnDelete: false lets the StatefulSets take their claims with them.
    networks
        .delete("alpha", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(
        "claims deleted with the network",
        Duration::from_secs(120),
        || {
            let pvcs = pvcs.clone();
            async move {
                let live = pvcs
                    .list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .count();
                (live == 0).then_some(())
            }
        },
    )
    .await;
    drop(stop);
    delete_volumes(&ns.client, &volumes).await;
}

/// A `trellis-operator` process watching the test namespace; killed on drop.
struct OperatorProcess(std::process::Child);

impl OperatorProcess {
    fn start(ns: &TestNamespace, identity: &str) -> Self {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_trellis-operator"))
            .args(["run", "--http-addr", "127.0.0.1:0", "--leader-election"])
            .args(["--namespace", &ns.name, "--lease-namespace", &ns.name])
            .args(["--identity", identity, "--lease-seconds", "3"])
            .env("KUBECONFIG", ns.kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn lease_holder(ns: &TestNamespace) -> Option<String> {
    let lease: k8s_openapi::api::coordination::v1::Lease =
        ns.api().get_opt("trellis-operator").await.ok()??;
    lease.spec?.holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operator_processes_one_leads_the_other_takes_over() {
    let Some(ns) = test_namespace("op-ha").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let mut a = OperatorProcess::start(&ns, "op-a");
    let mut b = OperatorProcess::start(&ns, "op-b");
    let leader = eventually("a leader", WAIT, || lease_holder(&ns)).await;
    let networks: Api<ChainNetwork> = ns.api();
    networks
        .create(&PostParams::default(), &network("alpha", 1))
        .await
        .unwrap();
    let sts: Api<StatefulSet> = ns.api();
    eventually("children from the first leader", WAIT, || {
        let sts = sts.clone();
        async move { (names(&sts).await.len() == 2).then_some(()) }
    })
    .await;

    // Kill the leader (SIGKILL: no release); the follower takes over within seconds.
    let killed = std::time::Instant::now();
    if leader == "op-a" {
        a.kill()
    } else {
        b.kill()
    }
    let successor = eventually("a new leader", Duration::from_secs(30), || {
        let ns = &ns;
        let leader = leader.clone();
        async move { lease_holder(ns).await.filter(|h| *h != leader) }
    })
    .await;
    assert_ne!(successor, leader);
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "takeover took {:?}",
        killed.elapsed()
    );

    // The new leader reconciles: a change made after the kill is acted on.
    networks
        .patch_scale(
            "alpha",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    eventually("shard-1 from the new leader", WAIT, || {
        let sts = sts.clone();
        async move { sts.get_opt("alpha-shard-1").await.ok()?.map(|_| ()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_mid_reconcile_converges_on_restart() {
    let Some(ns) = test_namespace("op-crash").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let networks: Api<ChainNetwork> = ns.api();
    networks
        .create(&PostParams::default(), &network("alpha", 3))
        .await
        .unwrap();
    let mut first = OperatorProcess::start(&ns, "op-1");
    // Kill it as soon as it has written something, before it can have finished.
    let secrets: Api<Secret> = ns.api();
    eventually("first write", WAIT, || {
        let secrets = secrets.clone();
        async move { (!names(&secrets).await.is_empty()).then_some(()) }
    })
    .await;
    first.kill();
    let early: BTreeMap<String, Option<BTreeMap<String, k8s_openapi::ByteString>>> = secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| (s.name_any(), s.data))
        .collect();

    let _second = OperatorProcess::start(&ns, "op-2");
    let sts: Api<StatefulSet> = ns.api();
    eventually("all StatefulSets after restart", WAIT, || {
        let sts = sts.clone();
        async move { (names(&sts).await.len() == 4).then_some(()) }
    })
    .await;
    eventually("status written after restart", WAIT, || {
        let networks = networks.clone();
        async move {
            let n = networks.get("alpha").await.ok()?;
            (n.status?.observed_generation == n.metadata.generation).then_some(())
        }
    })
    .await;
    assert_eq!(names(&secrets).await.len(), 5, "4 committees + admin key");
    // Keys written before the crash are the keys after it.
    for (name, data) in early {
        let now = secrets.get(&name).await.unwrap().data;
        let before = data.unwrap_or_default();
        let after = now.unwrap_or_default();
        for (entry, value) in before {
            assert_eq!(
                after.get(&entry),
                Some(&value),
                "{name}/{entry} was regenerated"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consortium_networks_run_one_shard_without_a_beacon() {
    let Some(ns) = test_namespace("op-consort").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let (_ctx, stop) = start_operator(&ns);
    let networks: Api<ChainNetwork> = ns.api();
    let consortium = |name: &str, shards: i32| {
        let mut n = network(name, shards);
        n.spec.mode = NetworkMode::Consortium;
        n.spec.members = vec![trellis_crd::ConsortiumMember {
            name: "org-a".to_owned(),
            admin_public_key: "aa".repeat(32),
            nodes: 4,
        }];
        n
    };
    networks
        .create(&PostParams::default(), &consortium("alpha", 1))
        .await
        .unwrap();
    // Shard 0 only: the node runs consortium governance in unsharded networks, and a
    // beacon pod would have nothing to run.
    let sets = eventually("shard 0's StatefulSet", WAIT, || {
        let api = ns.api::<StatefulSet>();
        async move {
            let names = names(&api).await;
            (!names.is_empty()).then_some(names)
        }
    })
    .await;
    assert_eq!(sets, ["alpha-shard-0"]);
    let genesis = ns.api::<ConfigMap>().get("alpha-genesis").await.unwrap();
    let text = &genesis.data.unwrap()["genesis.json"];
    let parsed = trellis_node_api::Genesis::from_json(text).unwrap();
    assert_eq!(parsed.sharding, None);
    assert_eq!(parsed.members.len(), 4);

    // More than one shard is a spec the node cannot run: a condition says why.
    networks
        .create(&PostParams::default(), &consortium("wide", 2))
        .await
        .unwrap();
    let message = eventually("InvalidSpec for a sharded consortium", WAIT, || {
        let networks = networks.clone();
        async move {
            let n = networks.get("wide").await.ok()?;
            let ready = n
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.reason == "InvalidSpec").then_some(ready.message)
        }
    })
    .await;
    assert!(message.contains("runs one shard"), "{message}");
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_monitor_follows_its_toggle_when_the_crd_exists() {
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let Some(ns) = test_namespace("op-monitor").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    // The Prometheus Operator's CRD, reduced to what the apiserver needs to store one.
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
            "spec": {
                "group": "monitoring.coreos.com",
                "names": {"kind": "ServiceMonitor", "plural": "servicemonitors",
                          "singular": "servicemonitor", "listKind": "ServiceMonitorList"},
                "scope": "Namespaced",
                "versions": [{"name": "v1", "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": {"type": "object",
                                  "x-kubernetes-preserve-unknown-fields": true}}}]
            }
        }))
        .unwrap();
    // Without the CRD first: a network asking for a ServiceMonitor still applies and
    // becomes Ready, no reconcile fails, and no ServiceMonitor exists anywhere. (The CRD
    // is cluster-wide and this test installs it below: a cluster reused from an earlier
    // run has it, so it is removed first.)
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(ns.client.clone());
    let crd_name = "servicemonitors.monitoring.coreos.com";
    if crds.get_opt(crd_name).await.unwrap().is_some() {
        crds.delete(crd_name, &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually("no ServiceMonitor API served", WAIT, || {
        let client = ns.client.clone();
        async move {
            match client
                .list_api_group_resources("monitoring.coreos.com/v1")
                .await
            {
                Err(kube::Error::Api(s)) if s.code == 404 => Some(()),
                Ok(list) if !list.resources.iter().any(|r| r.name == "servicemonitors") => Some(()),
                _ => None,
            }
        }
    })
    .await;
    let volumes = ledger_volumes(&ns, &pods("bare", &["beacon", "shard-0"], 4)).await;
    let (bare_ctx, bare_stop) = start_operator(&ns);
    let bare_networks: Api<ChainNetwork> = ns.api();
    let mut bare = network("bare", 1);
    bare.spec.service_monitor = true;
    bare_networks
        .create(&PostParams::default(), &bare)
        .await
        .unwrap();
    let ready = eventually("bare Ready without the CRD", WAIT, || {
        let networks = bare_networks.clone();
        async move {
            let n = networks.get("bare").await.ok()?;
            (condition(&n, "Ready")? == ("True".to_owned(), "AllValidatorsReady".to_owned()))
                .then_some(n)
        }
    })
    .await;
    assert_eq!(
        condition(&ready, "Degraded").unwrap().0,
        "False",
        "not degraded for a missing optional CRD"
    );
    let metrics = bare_ctx.metrics.encode();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("trellis_operator_reconcile_errors_total")
                && !l.ends_with(" 0")),
        "no reconcile failed:\n{metrics}"
    );
    assert!(
        crds.get_opt(crd_name).await.unwrap().is_none(),
        "nothing installed the CRD"
    );
    drop(bare_stop);
    bare_networks
        .delete("bare", &DeleteParams::default())
        .await
        .unwrap();
    delete_volumes(&ns.client, &volumes).await;

    apply_crds(&ns.client, vec![crd]).await.unwrap();
    let monitors: Api<DynamicObject> = Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
            "servicemonitors",
        ),
    );

    let (_ctx, stop) = start_operator(&ns);
    let networks: Api<ChainNetwork> = ns.api();
    let mut alpha = network("alpha", 1);
    alpha.spec.service_monitor = true;
    networks
        .create(&PostParams::default(), &alpha)
        .await
        .unwrap();
    let monitor = eventually("the ServiceMonitor", WAIT, || {
        let monitors = monitors.clone();
        async move { monitors.get_opt("alpha-nodes").await.ok()? }
    })
    .await;
    let owner = &monitor.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "ChainNetwork");
    assert_eq!(owner.controller, Some(true));
    assert_eq!(monitor.data["spec"]["endpoints"][0]["port"], "rpc");
    assert_eq!(
        monitor.data["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "alpha"
    );

    // Toggled off: the operator deletes it.
    networks
        .patch(
            "alpha",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"serviceMonitor": false}})),
        )
        .await
        .unwrap();
    eventually("the ServiceMonitor deleted", WAIT, || {
        let monitors = monitors.clone();
        async move {
            match monitors.get_opt("alpha-nodes").await {
                Ok(None) => Some(()),
                _ => None,
            }
        }
    })
    .await;
    drop(stop);
}

/// Item: a member's change, and its pods' readiness, reach its network through the
/// network controller's watches (on `ChainMember`s, and on members' StatefulSets mapped
/// by their labels to the network), not at the next requeue.
///
/// Real: the apiserver, the StatefulSet controller, kwok making the member's pod Ready,
/// the network controller in-process. Not real: no node runs, and the test plays the
/// member controller (it provisions the member's StatefulSet, with the labels and owner
/// reference that controller gives it, and writes the member's phase) and the kubelet
/// (it marks the member's pod not Ready), so that nothing but the member's own objects
/// can wake the network. The chain client is `NodeRpcPending`, so a settled network
/// requeues only every 300 s: a change showing in `status.shards[0]` within
/// `MEMBER_WATCH` (a fifth of that) is a watch's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_change_reconciles_its_network_at_once() {
    const MEMBER_WATCH: Duration = Duration::from_secs(60);
    let Some(ns) = test_namespace("op-mwatch").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let (_, stop) = support::start_operator(
        &ns,
        Arc::new(trellis_operator::chain::NodeRpcPending),
        metrics.clone(),
        false,
    );
    let mut spec = ChainNetworkSpec::new(NetworkMode::Consortium, "trellis-node:e2e");
    spec.members = vec![trellis_crd::ConsortiumMember {
        name: "org-a".to_owned(),
        admin_public_key: "aa".repeat(32),
        nodes: 4,
    }];
    let volumes = ledger_volumes(&ns, &pods("alpha", &["shard-0"], 4)).await;
    let networks: Api<ChainNetwork> = ns.api();
    networks
        .create(&PostParams::default(), &ChainNetwork::new("alpha", spec))
        .await
        .unwrap();
    // Shard 0's validators and how many are Ready, once the network is Ready or not.
    let shard0 = |want: i32, ready: i32| {
        let networks = networks.clone();
        async move {
            let n = networks.get("alpha").await.ok()?;
            let status = n.status.as_ref()?;
            let is_ready = condition(&n, "Ready")?.0 == "True";
            let shard = status.shards.first()?;
            (is_ready == (ready == want)
                && shard.validators == want
                && shard.ready_validators == ready)
                .then_some(())
        }
    };
    eventually("alpha Ready with 4 validators", WAIT, || shard0(4, 4)).await;

    let members: Api<trellis_crd::ChainMember> = ns.api();
    let member = trellis_crd::ChainMember::new(
        "org-b",
        trellis_crd::ChainMemberSpec {
            network: trellis_crd::member::NetworkRef {
                name: "alpha".to_owned(),
                namespace: None,
            },
            organization: "org-b".to_owned(),
            admin_public_key: "bb".repeat(32),
            nodes: 1,
            node_key_secret: None,
            remove: false,
            governance_tx_secret: None,
        },
    );
    let member = members
        .create(&PostParams::default(), &member)
        .await
        .unwrap();
    // The member's validator, as the member controller provisions it once admitted:
    // owned by the `ChainMember`, labelled with the network it counts for.
    let committee = trellis_operator::member::nodes::member_committee_name("alpha", "org-b");
    let owner = member.controller_owner_ref(&()).unwrap();
    let set: StatefulSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": committee,
            "ownerReferences": [owner],
            "labels": {
                labels::NAME: labels::NODE_APP,
                labels::INSTANCE: "alpha",
                labels::COMPONENT: trellis_operator::member::nodes::MEMBER_COMPONENT,
                labels::MANAGED_BY: labels::MANAGER,
                labels::COMMITTEE: committee,
                labels::NETWORK_NAMESPACE: ns.name,
            }
        },
        "spec": {
            "replicas": 1,
            "serviceName": committee,
            "selector": {"matchLabels": {labels::COMMITTEE: committee}},
            "template": {
                "metadata": {"labels": {labels::COMMITTEE: committee}},
                "spec": {"containers": [{"name": "node", "image": "trellis-node:e2e"}]}
            }
        }
    }))
    .unwrap();
    let sets: Api<StatefulSet> = ns.api();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let member_ready = |want: i32| {
        let sets = sets.clone();
        let committee = committee.clone();
        async move {
            let s = sets.get(&committee).await.ok()?;
            (s.status?.ready_replicas.unwrap_or(0) == want).then_some(())
        }
    };
    eventually("the member's pod Ready", WAIT, || member_ready(1)).await;
    let set_phase = |phase: &'static str| {
        let members = members.clone();
        async move {
            members
                .patch_status(
                    "org-b",
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"status": {"phase": phase}})),
                )
                .await
                .unwrap();
        }
    };
    // Admitted: shard 0 counts the member's validator at once.
    set_phase("Admitted").await;
    eventually("shard 0 counts the admitted member", MEMBER_WATCH, || {
        shard0(5, 5)
    })
    .await;

    // Settled: no reconcile for 3 s, so the one that a status write of the network's
    // own wakes has been served too, and the next is the 300 s requeue.
    eventually("the network settled", WAIT, || {
        let metrics = metrics.clone();
        async move {
            let before = metrics.recent_durations().len();
            tokio::time::sleep(Duration::from_secs(3)).await;
            (metrics.recent_durations().len() == before).then_some(())
        }
    })
    .await;
    // The member's pod stops being Ready (the test plays its kubelet). Only the pod and
    // its StatefulSet's status change: what the network sees next is the watch's doing.
    let member_pods: Api<Pod> = ns.api();
    let readiness = |status: &'static str| {
        let member_pods = member_pods.clone();
        let pod = format!("{committee}-0");
        async move {
            member_pods
                .patch_status(
                    &pod,
                    &PatchParams::default(),
                    &Patch::Strategic(serde_json::json!({"status": {"conditions": [
                        {"type": "Ready", "status": status},
                        {"type": "ContainersReady", "status": status},
                    ]}})),
                )
                .await
                .unwrap();
        }
    };
    readiness("False").await;
    eventually("the member's pod not Ready", WAIT, || member_ready(0)).await;
    eventually(
        "shard 0 sees the member's validator not Ready",
        MEMBER_WATCH,
        || shard0(5, 4),
    )
    .await;
    readiness("True").await;
    eventually("shard 0 sees it Ready again", MEMBER_WATCH, || shard0(5, 5)).await;

    // Removed: it no longer counts.
    set_phase("Removed").await;
    eventually("shard 0 drops the removed member", MEMBER_WATCH, || {
        shard0(4, 4)
    })
    .await;
    drop(stop);
    delete_volumes(&ns.client, &volumes).await;
}
