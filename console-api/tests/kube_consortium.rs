//! Consortium admission on Kubernetes, end to end.
//!
//! Real: the console API (SQLite) with the `kube` provisioner and its governance
//! hand-over loop, a kube-apiserver (the test cluster; kwok runs no process in the
//! pods), the operator's two controllers in-process with their real node client over
//! the `Loopback` resolver, and the consortium's chain as real `trellis-node` processes
//! on 127.0.70.21–24 started from the objects the operator wrote into the cluster.
//!
//! Three founding organisations — two with custodied keys, one with its own key (the
//! test holds its private key, as the organisation would) — admit a fourth: the console
//! approves, the operator publishes the chain proposal, the custodied approvals are made
//! by the console and the organisation with its own key posts its signature (refused
//! when from a wrong key, stale, or not a signature of the proposal), the console hands
//! the transaction to the operator, and the operator admits the member on chain and
//! provisions its validator. Then the three remove Delta again: a `Remove` proposal,
//! approved the same way; the operator deletes its validators, the console its
//! `ChainMember`, and the three keep finalizing — a transfer from the treasury funded at
//! genesis (`spec.genesisBalances`, its key in the `alliance-treasury` Secret) finalizes.
//!
//! Without a cluster the test prints `SKIPPED` and returns.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams};
use serde_json::json;
use trellis_console::governance::CustodySigner;
use trellis_console::provisioner::kube::KubeProvisioner;
use trellis_console::provisioner::{NetworkRef, Provisioner, kube_governance};
use trellis_crd::ChainMember;
use trellis_e2e::kube::{TestNamespace, apply_crds, eventually, test_namespace};
use trellis_node_types::{GovernanceTx, Proposal, Signer as _, test_key, to_hex};
use trellis_operator::build::BuildOptions;
use trellis_operator::chain::NodeRpc;
use trellis_operator::controller::{self, Context};
use trellis_operator::endpoints::{Loopback, NodeRef};
use trellis_operator::local::write_node;
use trellis_operator::member;
use trellis_operator::metrics::Metrics;

use common::{TestApp, assert_problem, member_id};

const WAIT: Duration = Duration::from_secs(180);

/// A `trellis-node` process, SIGKILLed when dropped.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a pod's view of `node` (its committee's objects) under `dir` and starts it.
fn start_node(
    dir: &Path,
    binary: &Path,
    node: &NodeRef,
    objects: &(ConfigMap, ConfigMap, Secret),
    resolver: &Loopback,
) -> NodeProcess {
    let node_dir: PathBuf = dir.join(&node.node);
    let files = write_node(
        &node_dir, node, &objects.0, &objects.1, &objects.2, resolver,
    )
    .unwrap();
    let log = std::fs::File::create(node_dir.join("node.log")).unwrap();
    NodeProcess(
        Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(&files.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

async fn objects(
    client: &kube::Client,
    namespace: &str,
    config: &str,
    genesis: &str,
    keys: &str,
) -> (ConfigMap, ConfigMap, Secret) {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    eventually(&format!("{config} and {keys}"), WAIT, || {
        let (config_maps, secrets) = (config_maps.clone(), secrets.clone());
        async move {
            Some((
                config_maps.get_opt(config).await.ok()??,
                config_maps.get_opt(genesis).await.ok()??,
                secrets.get_opt(keys).await.ok()??,
            ))
        }
    })
    .await
}

/// The console on SQLite with the `kube` provisioner and its governance hand-over on
/// the test cluster (with the CRDs applied).
struct Console {
    app: TestApp,
    provisioner: KubeProvisioner,
    _db: tempfile::TempDir,
}

async fn console(ns: &TestNamespace) -> Console {
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let provisioner = KubeProvisioner::new(ns.client.clone(), "registry.test/trellis-node");
    let db = tempfile::tempdir().unwrap();
    let url = trellis_console::db::sqlite_url(db.path());
    let app = TestApp::build_with(
        tempfile::tempdir().unwrap(),
        &url,
        common::test_settings(),
        Some(Arc::new(provisioner.clone())),
    )
    .await;
    provisioner.set_governance_signer(Arc::new(CustodySigner::new(
        app.state.db.clone(),
        app.state.master_key.clone(),
    )));
    provisioner.spawn_governance();
    Console {
        app,
        provisioner,
        _db: db,
    }
}

/// The operator's network and member controllers in-process, reading the chain through
/// their real node client over `resolver`; they stop when the sender is dropped.
fn operator(
    client: &kube::Client,
    namespace: &str,
    resolver: &Loopback,
) -> tokio::sync::watch::Sender<()> {
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(NodeRpc::new(
            Arc::new(resolver.clone()),
            Duration::from_secs(2),
        )),
        BuildOptions::default(),
        Arc::new(Metrics::new()),
    ));
    let (stop, stopped) = tokio::sync::watch::channel(());
    let shutdown = |mut stopped: tokio::sync::watch::Receiver<()>| async move {
        while stopped.changed().await.is_ok() {}
    };
    tokio::spawn(controller::run(
        ctx.clone(),
        Some(namespace.to_owned()),
        shutdown(stopped.clone()),
    ));
    tokio::spawn(member::run(
        ctx,
        Some(namespace.to_owned()),
        shutdown(stopped),
    ));
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_organisation_joins_a_kube_consortium_with_custodied_and_own_key_approvals() {
    let Some(ns) = test_namespace("kubegov").await else {
        return;
    };
    let binary = common::node_binary();
    let Console {
        app,
        provisioner,
        _db,
    } = console(&ns).await;

    // The owner's organisation name gives the tenant namespace trellis-<test namespace>.
    let founder = app.signup(&ns.name, "owner@founder.example").await;
    let own_key = test_key(77);
    let own_public = to_hex(own_key.public_key().as_ref());
    let created = app
        .post(
            "/v1/networks",
            &founder.token,
            json!({"name": "alliance", "mode": "consortium", "epoch_length": 10,
            "members": [
                {"organisation": "Acme", "nodes": 1},
                {"organisation": "Globex", "nodes": 1},
                {"organisation": "Initech", "nodes": 1, "admin_public_key": own_public},
            ]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let network_id = created.body["id"].as_str().unwrap().to_string();
    let namespace = format!("trellis-{}", ns.name);

    // The operator, reading the chain over loopback.
    let shard = "alliance-shard-0";
    let mut resolver = Loopback::default();
    for (i, last) in (0..3).zip(21u8..) {
        resolver
            .nodes
            .insert(format!("{shard}-{i}"), IpAddr::from([127, 0, 70, last]));
    }
    resolver.nodes.insert(
        "alliance-m-delta-0".to_owned(),
        IpAddr::from([127, 0, 70, 24]),
    );
    let stop = operator(&ns.client, &namespace, &resolver);

    // The founders' chain runs from the operator's objects.
    let shard_objects = objects(
        &ns.client,
        &namespace,
        &format!("{shard}-config"),
        "alliance-genesis",
        &format!("{shard}-keys"),
    )
    .await;
    let nodes_dir = tempfile::tempdir().unwrap();
    let _founders: Vec<NodeProcess> = (0..3)
        .map(|i| {
            let node = NodeRef {
                namespace: namespace.clone(),
                committee: shard.to_owned(),
                node: format!("{shard}-{i}"),
            };
            start_node(nodes_dir.path(), &binary, &node, &shard_objects, &resolver)
        })
        .collect();

    // Delta is invited, accepts (custodied key) and is approved by the founders.
    let (delta_id, delta) = app
        .invite_and_accept(
            &founder.token,
            &network_id,
            json!({"organisation": "Delta"}),
            "Delta Org",
            "owner@delta.example",
        )
        .await;
    let proposal_path = format!("/v1/networks/{network_id}/members/{delta_id}/proposal");
    let approvals_path = format!("{proposal_path}/approvals");
    let early = app
        .post(
            &approvals_path,
            &founder.token,
            json!({"approval": "00".repeat(96)}),
        )
        .await;
    assert_problem(&early, StatusCode::CONFLICT, "no_proposal");
    let approved = app
        .post(
            &format!("/v1/networks/{network_id}/members/{delta_id}/approvals"),
            &founder.token,
            json!({}),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);
    assert_eq!(approved.body["member"]["state"], "Admitted");

    // The console wrote a ChainMember; the operator publishes the chain proposal. The
    // custodied founders' approvals are the console's own; Initech's is missing.
    let view = eventually("the chain proposal through the console", WAIT, || {
        let app = &app;
        let (path, token) = (proposal_path.clone(), founder.token.clone());
        async move {
            let view = app.get(&path, &token).await;
            (view.status == StatusCode::OK && view.body["chain"]["proposal"].is_object())
                .then_some(view.body)
        }
    })
    .await;
    assert_eq!(view["chain"]["reason"], "AwaitingApprovals", "{view}");
    let published = &view["chain"]["proposal"];
    assert_eq!(published["action"], "Admit");
    assert_eq!(published["node"], "alliance-m-delta-0");
    assert_eq!(published["threshold"], 3);
    let approvers = view["approvers"].as_array().unwrap();
    let initech = approvers
        .iter()
        .find(|a| a["organisation"] == "Initech")
        .unwrap();
    assert_eq!(initech["key_custody"], "external");
    assert_eq!(initech["approved"], false);
    assert!(
        approvers
            .iter()
            .filter(|a| a["key_custody"] == "custodied")
            .all(|a| a["approved"] == true)
    );
    let proposal = Proposal::from_hex(published["proposal"].as_str().unwrap()).unwrap();
    let hash = published["proposal_hash"].as_str().unwrap().to_owned();
    // The network's own observation names the member's step too.
    let network_ref = NetworkRef {
        tenant_id: founder.tenant_id.parse().unwrap(),
        tenant_slug: ns.name.clone(),
        network_id: network_id.parse().unwrap(),
        name: "alliance".to_owned(),
    };
    let observed = provisioner.observe(&network_ref).await.unwrap().unwrap();
    let message = observed.message.unwrap_or_default();
    assert!(
        message.contains("member delta: AwaitingApprovals"),
        "{message}"
    );

    // Refused: not hex; a key Initech's tenant does not hold; an approval of another
    // proposal; a stale proposal hash; the right key from the wrong tenant.
    let garbage = app
        .post(&approvals_path, &founder.token, json!({"approval": "xyz"}))
        .await;
    assert_problem(
        &garbage,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let stranger = proposal.approve(&test_key(78)).to_hex();
    let wrong_key = app
        .post(
            &approvals_path,
            &founder.token,
            json!({"approval": stranger}),
        )
        .await;
    assert_problem(&wrong_key, StatusCode::FORBIDDEN, "wrong_key");
    assert!(
        wrong_key.body["detail"]
            .as_str()
            .unwrap()
            .contains(&own_public),
        "{}",
        wrong_key.text
    );
    // (The chain is at sequence 0: "another proposal" is one at the next sequence.)
    let mut earlier = proposal.clone();
    earlier.sequence += 1;
    let old_signature = earlier.approve(&own_key).to_hex();
    let invalid = app
        .post(
            &approvals_path,
            &founder.token,
            json!({"approval": old_signature}),
        )
        .await;
    assert_problem(
        &invalid,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_signature",
    );
    let stale = app
        .post(
            &approvals_path,
            &founder.token,
            json!({"approval": proposal.approve(&own_key).to_hex(),
                   "proposal_hash": to_hex(earlier.id().as_ref())}),
        )
        .await;
    assert_problem(&stale, StatusCode::CONFLICT, "stale_proposal");
    let not_theirs = app
        .post(
            &approvals_path,
            &delta.token,
            json!({"approval": proposal.approve(&own_key).to_hex()}),
        )
        .await;
    assert_problem(&not_theirs, StatusCode::FORBIDDEN, "wrong_key");

    // Nothing was handed over short of the threshold.
    let members: Api<ChainMember> = Api::namespaced(ns.client.clone(), &namespace);
    let chain_member = members.get("alliance-delta").await.unwrap();
    assert_eq!(chain_member.spec.governance_tx_secret, None);

    // Initech's own signature (as `trellis-node governance sign` makes it) is accepted.
    let signature = proposal.approve(&own_key).to_hex();
    let accepted = app
        .post(
            &approvals_path,
            &founder.token,
            json!({"approval": signature, "proposal_hash": hash}),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::CREATED, "{}", accepted.text);
    assert_eq!(accepted.body["organisation"], "Initech");
    let again = app
        .post(
            &approvals_path,
            &founder.token,
            json!({"approval": signature}),
        )
        .await;
    assert_problem(&again, StatusCode::CONFLICT, "already_approved");

    // The console hands the transaction over; the operator admits Delta on chain and
    // provisions its validator, which then runs and follows the chain.
    let admitted = eventually("Delta admitted on chain", WAIT, || {
        let app = &app;
        let (path, token) = (proposal_path.clone(), founder.token.clone());
        async move {
            let view = app.get(&path, &token).await;
            (view.body["chain"]["reason"] == "AdmittedOnChain").then_some(view.body)
        }
    })
    .await;
    assert_eq!(admitted["chain"]["phase"], "Admitted", "{admitted}");
    let handed = members.get("alliance-delta").await.unwrap();
    let secret = handed.spec.governance_tx_secret.clone().unwrap();
    let tx_secret = Api::<Secret>::namespaced(ns.client.clone(), &namespace)
        .get(&secret)
        .await
        .unwrap();
    let tx = GovernanceTx::from_hex(std::str::from_utf8(&tx_secret.data.unwrap()["tx"].0).unwrap())
        .unwrap();
    assert_eq!(tx.proposal, proposal);
    assert_eq!(tx.approvals.len(), 3, "two custodied and Initech's own");
    let sets: Api<StatefulSet> = Api::namespaced(ns.client.clone(), &namespace);
    assert!(sets.get_opt("alliance-m-delta").await.unwrap().is_some());
    let delta_objects = objects(
        &ns.client,
        &namespace,
        "alliance-m-delta-config",
        "alliance-m-delta-config",
        "alliance-m-delta-keys",
    )
    .await;
    let delta_node = NodeRef {
        namespace: namespace.clone(),
        committee: "alliance-m-delta".to_owned(),
        node: "alliance-m-delta-0".to_owned(),
    };
    let _delta_process = start_node(
        nodes_dir.path(),
        &binary,
        &delta_node,
        &delta_objects,
        &resolver,
    );
    let rpc = NodeRpc::new(Arc::new(resolver.clone()), Duration::from_secs(2));
    eventually(
        "Delta's validator follows the 4-validator chain",
        WAIT,
        || {
            let (rpc, node) = (rpc.clone(), delta_node.clone());
            async move {
                let status: trellis_node_api::NodeStatus =
                    rpc.call(&node, "trellis_status", ()).await.ok()?;
                (status.finalized_height > 0 && status.validators.len() == 4).then_some(())
            }
        },
    )
    .await;

    // A founding member cannot leave here: Acme's validator comes last in the shard's
    // StatefulSet, but the committee left would have 3 validators, which tolerate no
    // fault; Globex's is not the StatefulSet's last pod. Delta can: the three others
    // approve, the console marks its ChainMember for removal, the operator publishes
    // the `Remove` proposal, Initech signs it with its own key, and once the chain
    // removed Delta the operator deletes its validators and the console deletes the
    // ChainMember.
    let listed = app
        .get(
            &format!("/v1/networks/{network_id}/members"),
            &founder.token,
        )
        .await;
    let id_of = |organisation: &str| member_id(&listed.body, organisation);
    let below = app
        .post(
            &format!(
                "/v1/networks/{network_id}/members/{}/removal",
                id_of("Acme")
            ),
            &founder.token,
            json!({}),
        )
        .await;
    assert_problem(&below, StatusCode::CONFLICT, "committee_below_quorum");
    assert!(
        below.body["detail"]
            .as_str()
            .unwrap()
            .contains("would leave 3"),
        "{}",
        below.text
    );
    assert_problem(
        &app.post(
            &format!(
                "/v1/networks/{network_id}/members/{}/removal",
                id_of("Globex")
            ),
            &founder.token,
            json!({}),
        )
        .await,
        StatusCode::CONFLICT,
        "founder_not_removable",
    );
    let removed = app
        .post(
            &format!("/v1/networks/{network_id}/members/{delta_id}/removal"),
            &founder.token,
            json!({}),
        )
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.text);
    assert_eq!(
        removed.body["member"]["state"], "Removed",
        "{}",
        removed.text
    );
    assert!(members.get("alliance-delta").await.unwrap().spec.remove);
    let removal = eventually("the removal proposal through the console", WAIT, || {
        let app = &app;
        let (path, token) = (proposal_path.clone(), founder.token.clone());
        async move {
            let view = app.get(&path, &token).await;
            (view.body["chain"]["proposal"]["action"] == "Remove").then_some(view.body)
        }
    })
    .await;
    let removal_proposal =
        Proposal::from_hex(removal["chain"]["proposal"]["proposal"].as_str().unwrap()).unwrap();
    let posted = app
        .post(
            &approvals_path,
            &founder.token,
            json!({"approval": removal_proposal.approve(&own_key).to_hex()}),
        )
        .await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.text);
    eventually("Delta's ChainMember deleted", WAIT, || {
        let members = members.clone();
        async move {
            members
                .get_opt("alliance-delta")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    assert!(sets.get_opt("alliance-m-delta").await.unwrap().is_none());
    drop(_delta_process);
    let founder_node = NodeRef {
        namespace: namespace.clone(),
        committee: shard.to_owned(),
        node: format!("{shard}-0"),
    };
    let three: trellis_node_api::NodeStatus =
        eventually("the chain's validators without Delta", WAIT, || {
            let (rpc, node) = (rpc.clone(), founder_node.clone());
            async move {
                let status: trellis_node_api::NodeStatus =
                    rpc.call(&node, "trellis_status", ()).await.ok()?;
                (status.validators.len() == 3).then_some(status)
            }
        })
        .await;
    eventually("three validators keep finalizing", WAIT, || {
        let (rpc, node) = (rpc.clone(), founder_node.clone());
        let before = three.finalized_height;
        async move {
            let status: trellis_node_api::NodeStatus =
                rpc.call(&node, "trellis_status", ()).await.ok()?;
            (status.finalized_height > before + 3).then_some(())
        }
    })
    .await;

    // The treasury was funded at genesis (`spec.genesisBalances`, key in the
    // `alliance-treasury` Secret): a transfer signed with that key finalizes.
    let treasury = Api::<Secret>::namespaced(ns.client.clone(), &namespace)
        .get("alliance-treasury")
        .await
        .unwrap();
    let key_file = nodes_dir.path().join("treasury.json");
    std::fs::write(&key_file, &treasury.data.unwrap()["keys.json"].0).unwrap();
    let tx =
        trellis_console::up::signed_transfer(&key_file, &three.chain_id, 0, &"33".repeat(32), 9)
            .unwrap();
    let sent: serde_json::Value = rpc
        .call(&founder_node, "trellis_sendTransaction", json!({"tx": tx}))
        .await
        .unwrap();
    let hash = sent["hash"].as_str().unwrap().to_owned();
    eventually("the treasury's transfer to finalize", WAIT, || {
        let (rpc, node, hash) = (rpc.clone(), founder_node.clone(), hash.clone());
        async move {
            let t: serde_json::Value = rpc
                .call(&node, "trellis_getTransaction", json!({"hash": hash}))
                .await
                .ok()?;
            (t["state"] == "committed" && t["success"] == true).then_some(())
        }
    })
    .await;

    // Every step is in the founder's audit log.
    let audit = app.get("/v1/audit-events?limit=200", &founder.token).await;
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "consortium.approve",
        "consortium.admit",
        "consortium.governance_approve",
        "consortium.governance_handed_over",
        "consortium.removal_approve",
        "consortium.remove",
    ] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    drop(stop);
    let _ = Api::<Namespace>::all(ns.client.clone())
        .delete(&namespace, &DeleteParams::background())
        .await;
}

/// A founding organisation leaves a consortium on Kubernetes.
///
/// Real: the console API (SQLite) with the `kube` provisioner and its governance
/// hand-over, a kube-apiserver with its StatefulSet controller (kwok runs no process in
/// the pods), the operator's two controllers in-process with their real node client
/// over the `Loopback` resolver, and five founders' validators as real `trellis-node`
/// processes on 127.0.124.1–5 started from the objects the operator wrote. Five
/// founders with custodied keys, one validator each; shard 0's deal puts Acme's last
/// (ordinal 4). Globex's (ordinal 0) cannot leave the StatefulSet: refused up front.
/// Acme's removal is approved by the four others; the console keeps Acme in the
/// network's genesis membership and writes a `ChainMember` asking its removal; the
/// operator publishes the `Remove` proposal, the console signs it with the four
/// custodied keys, the operator submits it and, once the chain removed Acme's validator
/// at the epoch boundary, the network's StatefulSet drops pod 4 (ledger claim kept).
/// The four keep finalizing; a further founder's removal would leave 3 validators and
/// is refused (`committee_below_quorum`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_founding_organisation_leaves_a_kube_consortium() {
    let Some(ns) = test_namespace("kubefound").await else {
        return;
    };
    let binary = common::node_binary();
    let Console { app, _db, .. } = console(&ns).await;
    let founder = app.signup(&ns.name, "owner@acme.example").await;
    let organisations = ["Acme", "Globex", "Initech", "Umbrella", "Hooli"];
    let members: Vec<serde_json::Value> = organisations
        .iter()
        .map(|o| json!({"organisation": o, "nodes": 1}))
        .collect();
    let created = app
        .post(
            "/v1/networks",
            &founder.token,
            json!({"name": "alliance", "mode": "consortium", "epoch_length": 10,
                   "members": members}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let network_id = created.body["id"].as_str().unwrap().to_string();
    let namespace = format!("trellis-{}", ns.name);
    let shard = "alliance-shard-0";
    let mut resolver = Loopback::default();
    for (i, last) in (0..5).zip(1u8..) {
        resolver
            .nodes
            .insert(format!("{shard}-{i}"), IpAddr::from([127, 0, 124, last]));
    }
    let stop = operator(&ns.client, &namespace, &resolver);

    let shard_objects = objects(
        &ns.client,
        &namespace,
        &format!("{shard}-config"),
        "alliance-genesis",
        &format!("{shard}-keys"),
    )
    .await;
    let nodes_dir = tempfile::tempdir().unwrap();
    let node = |i: usize| NodeRef {
        namespace: namespace.clone(),
        committee: shard.to_owned(),
        node: format!("{shard}-{i}"),
    };
    let mut processes: Vec<Option<NodeProcess>> = (0..5)
        .map(|i| {
            Some(start_node(
                nodes_dir.path(),
                &binary,
                &node(i),
                &shard_objects,
                &resolver,
            ))
        })
        .collect();
    let rpc = NodeRpc::new(Arc::new(resolver.clone()), Duration::from_secs(2));
    let status_of = |i: usize, validators: usize| {
        let (rpc, node) = (rpc.clone(), node(i));
        async move {
            let status: trellis_node_api::NodeStatus =
                rpc.call(&node, "trellis_status", ()).await.ok()?;
            (status.finalized_height > 0 && status.validators.len() == validators).then_some(status)
        }
    };
    eventually("five founders finalize", WAIT, || status_of(0, 5)).await;

    let listed = app
        .get(
            &format!("/v1/networks/{network_id}/members"),
            &founder.token,
        )
        .await;
    let removal = |organisation: &str| {
        format!(
            "/v1/networks/{network_id}/members/{}/removal",
            member_id(&listed.body, organisation)
        )
    };
    // Globex's validator is pod 0: a StatefulSet cannot drop it.
    let refused = app
        .post(&removal("Globex"), &founder.token, json!({}))
        .await;
    assert_problem(&refused, StatusCode::CONFLICT, "founder_not_removable");
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("acme (running alliance-shard-0-4) can leave first"),
        "{}",
        refused.text
    );
    let removed = app.post(&removal("Acme"), &founder.token, json!({})).await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.text);
    assert_eq!(
        removed.body["member"]["state"], "Removed",
        "{}",
        removed.text
    );

    // The genesis membership stays; a ChainMember asks the operator to remove Acme.
    let networks: Api<trellis_crd::ChainNetwork> = Api::namespaced(ns.client.clone(), &namespace);
    let members: Api<ChainMember> = Api::namespaced(ns.client.clone(), &namespace);
    let acme = eventually("Acme's ChainMember", WAIT, || {
        let members = members.clone();
        async move { members.get_opt("alliance-acme").await.ok()? }
    })
    .await;
    assert!(acme.spec.remove);
    let genesis = networks.get("alliance").await.unwrap().spec.members;
    assert_eq!(genesis.len(), 5, "genesis membership kept");
    // The chain removes it, then the StatefulSet drops its pod.
    let gone = eventually("Acme removed on chain", WAIT, || {
        let members = members.clone();
        async move {
            let m = members.get("alliance-acme").await.ok()?;
            (m.status.as_ref()?.phase == Some(trellis_crd::MemberPhase::Removed)).then_some(m)
        }
    })
    .await;
    let status = gone.status.unwrap();
    let message = &status
        .conditions
        .iter()
        .find(|c| c.type_ == "Admitted")
        .unwrap()
        .message;
    assert!(
        message.contains("drops validators alliance-shard-0-4"),
        "{message}"
    );
    let sets: Api<StatefulSet> = Api::namespaced(ns.client.clone(), &namespace);
    eventually("the StatefulSet without pod 4", WAIT, || {
        let sets = sets.clone();
        async move {
            let set = sets.get(shard).await.ok()?;
            (set.spec?.replicas == Some(4)).then_some(())
        }
    })
    .await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(ns.client.clone(), &namespace);
    eventually("pod 4 gone", WAIT, || {
        let pods = pods.clone();
        async move {
            pods.get_opt(&format!("{shard}-4"))
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(ns.client.clone(), &namespace);
    assert!(
        claims
            .get_opt(&format!("ledger-{shard}-4"))
            .await
            .unwrap()
            .is_some(),
        "ledger claim kept"
    );
    processes[4] = None;
    let four = eventually("four validators", WAIT, || status_of(0, 4)).await;
    eventually("the four keep finalizing", WAIT, || {
        let (rpc, node, before) = (rpc.clone(), node(0), four.finalized_height);
        async move {
            let status: trellis_node_api::NodeStatus =
                rpc.call(&node, "trellis_status", ()).await.ok()?;
            (status.finalized_height > before + 3).then_some(())
        }
    })
    .await;
    // The console keeps the founder's record (the operator keeps pod 4 out by it), and
    // a further founder would leave three validators.
    tokio::time::sleep(kube_governance::HAND_OVER_EVERY * 2).await;
    assert!(members.get_opt("alliance-acme").await.unwrap().is_some());
    let below = app.post(&removal("Hooli"), &founder.token, json!({})).await;
    assert_problem(&below, StatusCode::CONFLICT, "committee_below_quorum");
    drop(processes);
    drop(stop);
    let _ = Api::<Namespace>::all(ns.client.clone())
        .delete(&namespace, &DeleteParams::background())
        .await;
}
