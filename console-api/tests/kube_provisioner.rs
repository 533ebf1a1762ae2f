//! The `kube` provisioner against a real Kubernetes apiserver (from `trellis-e2e`): the
//! CRDs are installed, ChainNetworks are written by the provisioner, their status is
//! written like the operator writes it, and the provisioner reads it back.
//!
//! Without a cluster the test prints `SKIPPED` and returns.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use trellis_console::networks::spec::{
    AutoscalingPolicy, MemberSpec, NetworkMode, NetworkSpec, ShardRange,
};
use trellis_console::provisioner::kube::{
    GENERATION_ANNOTATION, KubeProvisioner, NETWORK_ID_LABEL, TENANT_ID_LABEL,
};
use trellis_console::provisioner::{
    DesiredNetwork, NetworkRef, ObservedPhase, ProvisionError, Provisioner, TenantQuota,
};
use trellis_crd::ChainNetwork;
use trellis_e2e::kube::{apply_crds, eventually, test_namespace};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn spec(mode: NetworkMode, shards: u32) -> NetworkSpec {
    NetworkSpec {
        mode,
        shards: ShardRange {
            count: shards,
            min: 1,
            max: 8,
        },
        validators_per_shard: 4,
        beacon_validators: 4,
        validator_pool: 0,
        node_version: "0.1.0".into(),
        autoscaling: AutoscalingPolicy::default(),
        members: match mode {
            NetworkMode::Public => Vec::new(),
            NetworkMode::Consortium => vec![
                MemberSpec {
                    organisation: "Acme Corp".into(),
                    nodes: 2,
                    admin_public_key: Some("ab".repeat(32)),
                },
                MemberSpec {
                    organisation: "Globex".into(),
                    nodes: 2,
                    admin_public_key: Some("cd".repeat(32)),
                },
            ],
        },
        epoch_length: 100,
        paused: false,
        stopped: false,
        retain_ledger_on_delete: true,
    }
}

#[tokio::test]
async fn kube_provisioner_writes_observes_and_deletes_chain_networks() {
    let Some(ns) = test_namespace("kubeprov").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    // The provisioner makes `trellis-<slug>`; a slug from the test namespace keeps
    // concurrent runs apart.
    let slug = ns.name.clone();
    let namespace = format!("trellis-{slug}");
    let provisioner = KubeProvisioner::new(ns.client.clone(), "registry.test/trellis-node");
    let tenant_id = Uuid::now_v7();
    let reference = |name: &str| NetworkRef {
        tenant_id,
        tenant_slug: slug.clone(),
        network_id: Uuid::now_v7(),
        name: name.into(),
    };
    let consortium = reference("alliance");
    let public = reference("open");
    let api: Api<ChainNetwork> = Api::namespaced(ns.client.clone(), &namespace);

    assert_eq!(provisioner.observe(&public).await.unwrap(), None);

    // First applies create the namespace and both resources.
    let desired = |network: &NetworkRef, generation, mode, shards| DesiredNetwork {
        network: network.clone(),
        generation,
        spec: spec(mode, shards),
        quota: Some(TenantQuota {
            plan: if generation < 2 { "free" } else { "team" }.into(),
            networks: if generation < 2 { 3 } else { 25 },
            nodes: 64,
            storage_gib: 640,
        }),
    };
    provisioner
        .apply(&desired(&consortium, 1, NetworkMode::Consortium, 1))
        .await
        .unwrap();
    provisioner
        .apply(&desired(&public, 2, NetworkMode::Public, 2))
        .await
        .unwrap();
    let tenant_ns = Api::<Namespace>::all(ns.client.clone())
        .get(&namespace)
        .await
        .unwrap();
    assert_eq!(
        tenant_ns.labels()[TENANT_ID_LABEL],
        tenant_id.to_string(),
        "namespace labelled with its tenant"
    );
    let alliance = api.get("alliance").await.unwrap();
    assert_eq!(alliance.labels()[TENANT_ID_LABEL], tenant_id.to_string());
    assert_eq!(
        alliance.labels()[NETWORK_ID_LABEL],
        consortium.network_id.to_string()
    );
    assert_eq!(alliance.annotations()[GENERATION_ANNOTATION], "1");
    assert_eq!(alliance.spec.mode, trellis_crd::NetworkMode::Consortium);
    let members: Vec<_> = alliance
        .spec
        .members
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(members, ["acme-corp", "globex"]);
    assert_eq!(alliance.spec.node.image, "registry.test/trellis-node:0.1.0");
    let open = api.get("open").await.unwrap();
    assert_eq!(open.spec.mode, trellis_crd::NetworkMode::Public);
    assert_eq!(open.spec.shards.count, 2);
    assert!(open.spec.members.is_empty());

    // The namespace's ResourceQuota follows the tenant's plan (upgraded between the two
    // applies), and the apiserver holds the namespace to it.
    let quotas: Api<ResourceQuota> = Api::namespaced(ns.client.clone(), &namespace);
    let quota = quotas.get("trellis-plan").await.unwrap();
    assert_eq!(quota.annotations()["console.trellis.dev/plan"], "team");
    let hard = quota.spec.clone().unwrap().hard.unwrap();
    assert!(!hard.contains_key("count/chainnetworks.trellis.dev"));
    assert_eq!(hard["pods"].0, "64");
    assert_eq!(hard["requests.storage"].0, "640Gi");
    // The apiserver holds the namespace to it: a ledger claim beyond the plan's storage
    // is refused (once the quota controller has computed the namespace's usage).
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(ns.client.clone(), &namespace);
    let claim: k8s_openapi::api::core::v1::PersistentVolumeClaim =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "too-big"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "641Gi"}}
            }
        }))
        .unwrap();
    let refusal = eventually("the quota refuses a claim over the plan", WAIT, || {
        let (claims, claim) = (claims.clone(), claim.clone());
        async move {
            match claims
                .create(&kube::api::PostParams::default(), &claim)
                .await
            {
                Err(kube::Error::Api(e)) if e.message.contains("exceeded quota") => Some(e.message),
                _ => None,
            }
        }
    })
    .await;
    assert!(refusal.contains("requests.storage"), "{refusal}");
    assert!(claims.get_opt("too-big").await.unwrap().is_none());

    // The same generation again changes nothing.
    let version = open.resource_version();
    provisioner
        .apply(&desired(&public, 2, NetworkMode::Public, 2))
        .await
        .unwrap();
    assert_eq!(api.get("open").await.unwrap().resource_version(), version);

    // A newer generation scales; an older one arriving late is ignored.
    provisioner
        .apply(&desired(&public, 4, NetworkMode::Public, 3))
        .await
        .unwrap();
    let scaled = api.get("open").await.unwrap();
    assert_eq!(scaled.spec.shards.count, 3);
    assert_eq!(scaled.annotations()[GENERATION_ANNOTATION], "4");
    provisioner
        .apply(&desired(&public, 3, NetworkMode::Public, 1))
        .await
        .unwrap();
    let kept = api.get("open").await.unwrap();
    assert_eq!(kept.spec.shards.count, 3, "an older generation was applied");
    assert_eq!(kept.resource_version(), scaled.resource_version());

    // What the apiserver refuses (CEL: mode is immutable) is Rejected with its message.
    match provisioner
        .apply(&desired(&public, 5, NetworkMode::Consortium, 3))
        .await
    {
        Err(ProvisionError::Rejected(message)) => {
            assert!(message.contains("mode is immutable"), "{message}")
        }
        other => panic!("expected Rejected, got {other:?}"),
    }

    // A status like the operator writes it is mapped onto the console's view.
    let generation = kept.metadata.generation.unwrap();
    let status = json!({"status": {
        "observedGeneration": generation,
        "phase": "Running",
        "shardCount": 3,
        "epoch": 5,
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllReady",
                        "message": "all validators ready",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "shards": [
            {"id": 0, "validators": 4, "readyValidators": 4, "finalizedHeight": 120,
             "txPerSecond": 33.5, "mempoolDepth": 7},
            {"id": 1, "validators": 4, "readyValidators": 3},
            {"id": 2, "validators": 4, "readyValidators": 4}
        ],
        "endpoints": {"rpc": format!("http://open-rpc.{namespace}.svc:8545"),
                      "beaconPeers": []}
    }});
    api.patch_status("open", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let observed = provisioner.observe(&public).await.unwrap().unwrap();
    assert_eq!(observed.observed_generation, 4);
    assert_eq!(observed.phase, ObservedPhase::Running);
    assert_eq!(observed.shard_count, 3);
    assert_eq!(observed.epoch, 5);
    assert_eq!(observed.shards.len(), 3);
    assert_eq!(observed.shards[0].finalized_height, 120);
    assert_eq!(observed.shards[0].tx_per_second, 33.5);
    assert_eq!(observed.shards[0].mempool_depth, 7);
    assert_eq!(observed.shards[1].ready_validators, 3);
    assert_eq!(
        observed.rpc_endpoints,
        [format!("http://open-rpc.{namespace}.svc:8545")]
    );
    assert_eq!(observed.message, None);
    // Without status the network is provisioning, and the status is not for the
    // current generation.
    let fresh = provisioner.observe(&consortium).await.unwrap().unwrap();
    assert_eq!(fresh.phase, ObservedPhase::Provisioning);
    assert_eq!(fresh.observed_generation, 0);

    // Delete sets the ledger retention asked for, removes the resource, and is
    // idempotent. (No finalizer runs here: no operator in this test.)
    provisioner.delete(&public, false).await.unwrap();
    eventually("ChainNetwork open deleted", WAIT, || {
        let api = api.clone();
        async move { api.get_opt("open").await.unwrap().is_none().then_some(()) }
    })
    .await;
    provisioner.delete(&public, false).await.unwrap();
    assert_eq!(provisioner.observe(&public).await.unwrap(), None);
    assert!(api.get_opt("alliance").await.unwrap().is_some());
    provisioner.delete(&consortium, true).await.unwrap();
    provisioner
        .delete(&reference("never-made"), true)
        .await
        .unwrap();

    // A tenant namespace nobody made yet: observe and delete still answer.
    let other = NetworkRef {
        tenant_slug: format!("{slug}-x"),
        ..reference("nothing")
    };
    assert_eq!(provisioner.observe(&other).await.unwrap(), None);
    provisioner.delete(&other, true).await.unwrap();

    let _ = Api::<Namespace>::all(ns.client.clone())
        .delete(&namespace, &DeleteParams::background())
        .await;
}

/// Sends one request to the console's router; returns status and JSON body.
async fn call(
    router: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    use tower::ServiceExt;
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(axum::body::Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// The whole path: the console API with the kube provisioner creates a consortium
/// network (custodied and brought-your-own keys) and a ChainNetwork appears in the
/// tenant's namespace with the keys the console recorded; a PATCH scales it; a DELETE
/// removes it.
/// As in local mode, a new network's treasury is funded at genesis: its account in
/// `spec.genesisBalances` (immutable: repeated by later applies), its key in a Secret
/// next to the network (deleted with the network unless the ledger is kept).
#[tokio::test]
async fn a_new_network_funds_its_treasury_through_genesis_balances() {
    let Some(ns) = test_namespace("kubefund").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let namespace = format!("trellis-{}", ns.name);
    let provisioner = KubeProvisioner::new(ns.client.clone(), "registry.test/trellis-node")
        .with_treasury_balance(5_000);
    let reference = |name: &str| NetworkRef {
        tenant_id: Uuid::now_v7(),
        tenant_slug: ns.name.clone(),
        network_id: Uuid::now_v7(),
        name: name.into(),
    };
    let (gone, kept) = (reference("gone"), reference("kept"));
    let desired = |network: &NetworkRef, generation: i64| DesiredNetwork {
        network: network.clone(),
        generation,
        spec: spec(NetworkMode::Public, 1 + u32::try_from(generation).unwrap()),
        quota: None,
    };
    let api: Api<ChainNetwork> = Api::namespaced(ns.client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &namespace);
    for network in [&gone, &kept] {
        provisioner.apply(&desired(network, 1)).await.unwrap();
        let cr = api.get(&network.name).await.unwrap();
        assert_eq!(cr.spec.genesis_balances.len(), 1);
        let funded = &cr.spec.genesis_balances[0];
        assert_eq!(funded.amount, 5_000);
        let secret = secrets
            .get(&format!("{}-treasury", network.name))
            .await
            .unwrap();
        let keys: serde_json::Value =
            serde_json::from_slice(&secret.data.unwrap()["keys.json"].0).unwrap();
        assert_eq!(keys["admin_public_key"], funded.account.as_str());
        let private =
            trellis_node_types::private_key_from_hex(keys["admin_key"].as_str().unwrap()).unwrap();
        assert_eq!(
            trellis_node_types::to_hex(trellis_node_types::Signer::public_key(&private).as_ref()),
            funded.account
        );
        // A later generation keeps the genesis allocation (the field is immutable).
        provisioner.apply(&desired(network, 2)).await.unwrap();
        let scaled = api.get(&network.name).await.unwrap();
        assert_eq!(scaled.spec.shards.count, 3);
        assert_eq!(&scaled.spec.genesis_balances[0], funded);
    }
    provisioner.delete(&gone, false).await.unwrap();
    provisioner.delete(&kept, true).await.unwrap();
    assert!(secrets.get_opt("gone-treasury").await.unwrap().is_none());
    assert!(secrets.get_opt("kept-treasury").await.unwrap().is_some());
    let _ = Api::<Namespace>::all(ns.client.clone())
        .delete(&namespace, &DeleteParams::background())
        .await;
}

/// With autoscaling on, the operator's autoscaler owns the shard count: a count it set
/// (a merge patch under its own field manager, as `operator/src/scaling.rs` does)
/// survives the console's next apply, and the console stops owning the field. With
/// autoscaling off, the console's count is applied again.
#[tokio::test]
async fn an_autoscaled_shard_count_survives_the_consoles_next_apply() {
    let Some(ns) = test_namespace("kubecount").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let namespace = format!("trellis-{}", ns.name);
    let provisioner = KubeProvisioner::new(ns.client.clone(), "registry.test/trellis-node");
    let network = NetworkRef {
        tenant_id: Uuid::now_v7(),
        tenant_slug: ns.name.clone(),
        network_id: Uuid::now_v7(),
        name: "open".into(),
    };
    let desired = |generation: i64, autoscaling: bool| {
        let mut spec = spec(NetworkMode::Public, 2);
        spec.autoscaling.enabled = autoscaling;
        spec.epoch_length = 100 + u64::try_from(generation).unwrap();
        DesiredNetwork {
            network: network.clone(),
            generation,
            spec,
            quota: None,
        }
    };
    let api: Api<ChainNetwork> = Api::namespaced(ns.client.clone(), &namespace);
    let console_owns_count = |cr: &ChainNetwork| {
        cr.metadata.managed_fields.iter().flatten().any(|entry| {
            entry.manager.as_deref() == Some("trellis-console")
                && entry
                    .fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.pointer("/f:spec/f:shards/f:count").is_some())
        })
    };
    provisioner.apply(&desired(1, true)).await.unwrap();
    // Nobody else owns the count yet: the console's next apply keeps it (dropping it
    // would delete the field).
    provisioner.apply(&desired(2, true)).await.unwrap();
    let kept = api.get("open").await.unwrap();
    assert_eq!(kept.spec.shards.count, 2);
    assert!(console_owns_count(&kept));

    // The operator's autoscaler scales to 3.
    api.patch(
        "open",
        &PatchParams {
            field_manager: Some("trellis-operator".into()),
            ..PatchParams::default()
        },
        &Patch::Merge(json!({"spec": {"shards": {"count": 3}}})),
    )
    .await
    .unwrap();
    provisioner.apply(&desired(3, true)).await.unwrap();
    let scaled = api.get("open").await.unwrap();
    assert_eq!(
        scaled.spec.shards.count, 3,
        "the autoscaler's count survives"
    );
    assert_eq!(
        scaled.spec.epoch_length, 103,
        "the rest of the apply landed"
    );
    assert!(
        !console_owns_count(&scaled),
        "the console let go of the count"
    );
    provisioner.apply(&desired(4, true)).await.unwrap();
    assert_eq!(api.get("open").await.unwrap().spec.shards.count, 3);

    // Autoscaling off: the console's count is the count again.
    provisioner.apply(&desired(5, false)).await.unwrap();
    let manual = api.get("open").await.unwrap();
    assert_eq!(manual.spec.shards.count, 2);
    assert!(console_owns_count(&manual));
    let _ = Api::<Namespace>::all(ns.client.clone())
        .delete(&namespace, &DeleteParams::background())
        .await;
}

#[tokio::test]
async fn console_api_with_the_kube_provisioner() {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    use trellis_console::app::{self, AppState, Settings};
    use trellis_console::auth::jwt::{TokenKeys, generate_signing_key};
    use trellis_console_entity::tenant;

    let Some(ns) = test_namespace("kubeconsole").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database =
        trellis_console::db::connect_and_migrate(&trellis_console::db::sqlite_url(dir.path()))
            .await
            .unwrap();
    let keys = TokenKeys::new(&generate_signing_key(), &[], 900).unwrap();
    let mut settings = Settings {
        auth_requests_per_minute: 0,
        tenant_requests_per_minute: 0,
        ..Settings::default()
    };
    settings.password.memory_kib = 1024;
    settings.password.iterations = 1;
    let provisioner = KubeProvisioner::new(ns.client.clone(), "registry.test/trellis-node");
    let state = AppState::new(
        database,
        keys,
        trellis_console::custody::MasterKey::generate(),
        std::sync::Arc::new(provisioner),
        settings,
    );
    let router = app::router(state.clone());

    let (status, signup) = call(
        &router,
        "POST",
        "/v1/auth/signup",
        None,
        json!({"organisation": ns.name, "email": "owner@example.test",
               "password": "correct horse battery staple"}),
    )
    .await;
    assert_eq!(status, 201, "{signup}");
    let tenant_id = signup["tenant"]["id"].as_str().unwrap().to_string();
    let token = signup["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    tenant::Entity::update_many()
        .col_expr(
            tenant::Column::Plan,
            sea_orm::sea_query::Expr::value("team"),
        )
        .filter(tenant::Column::Id.eq(Uuid::parse_str(&tenant_id).unwrap()))
        .exec(&state.db)
        .await
        .unwrap();

    let byo = "ef".repeat(32);
    let (status, created) = call(
        &router,
        "POST",
        "/v1/networks",
        Some(&token),
        json!({"name": "alliance", "mode": "consortium", "members": [
            {"organisation": "Acme", "nodes": 2},
            {"organisation": "Globex", "nodes": 2, "admin_public_key": byo},
        ]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let network_id = created["id"].as_str().unwrap().to_string();
    let custodied = created["spec"]["members"][0]["admin_public_key"]
        .as_str()
        .unwrap()
        .to_string();

    // The tenant's namespace, found by its tenant label.
    let namespaces = Api::<Namespace>::all(ns.client.clone())
        .list(&kube::api::ListParams::default().labels(&format!("{TENANT_ID_LABEL}={tenant_id}")))
        .await
        .unwrap();
    assert_eq!(namespaces.items.len(), 1, "one namespace per tenant");
    let namespace = namespaces.items[0].name_any();
    assert!(namespace.starts_with("trellis-"), "{namespace}");
    let api: Api<ChainNetwork> = Api::namespaced(ns.client.clone(), &namespace);
    let cr = api.get("alliance").await.unwrap();
    assert_eq!(cr.labels()[NETWORK_ID_LABEL], network_id);
    let keys: Vec<_> = cr
        .spec
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.admin_public_key.as_str()))
        .collect();
    assert_eq!(
        keys,
        [("acme", custodied.as_str()), ("globex", byo.as_str())]
    );

    // The status the operator would write shows through the console's API.
    let generation = cr.metadata.generation.unwrap();
    api.patch_status(
        "alliance",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"observedGeneration": generation,
            "phase": "Running", "shardCount": 1,
            "shards": [{"id": 0, "validators": 4, "readyValidators": 4}]}})),
    )
    .await
    .unwrap();
    trellis_console::networks::reconcile::reconcile_once(&state)
        .await
        .unwrap();
    let (status, shown) = call(
        &router,
        "GET",
        &format!("/v1/networks/{network_id}"),
        Some(&token),
        json!(null),
    )
    .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["status"]["phase"], "Running", "{shown}");
    assert_eq!(shown["phase"], "Running", "{shown}");

    // A consortium runs one shard: scaling it is refused before anything is applied.
    let (status, body) = call(
        &router,
        "PATCH",
        &format!("/v1/networks/{network_id}"),
        Some(&token),
        json!({"shards": {"count": 2, "max": 4}}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "shards", "{body}");
    assert_eq!(
        api.get("alliance").await.unwrap().annotations()[GENERATION_ANNOTATION],
        "1"
    );

    // A PATCH is a new generation, applied over the old one.
    let (status, body) = call(
        &router,
        "PATCH",
        &format!("/v1/networks/{network_id}"),
        Some(&token),
        json!({"node_version": "0.2.0"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let upgraded = api.get("alliance").await.unwrap();
    assert!(
        upgraded.spec.node.image.ends_with(":0.2.0"),
        "{:?}",
        upgraded.spec.node.image
    );
    assert_eq!(upgraded.annotations()[GENERATION_ANNOTATION], "2");

    // DELETE removes the resource.
    let (status, body) = call(
        &router,
        "DELETE",
        &format!("/v1/networks/{network_id}"),
        Some(&token),
        json!(null),
    )
    .await;
    assert!(status == 204 || status == 202, "{status} {body}");
    eventually("ChainNetwork alliance deleted", WAIT, || {
        let api = api.clone();
        async move {
            api.get_opt("alliance")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        }
    })
    .await;
    let _ = Api::<Namespace>::all(ns.client.clone())
        .delete(&namespace, &DeleteParams::background())
        .await;
}

/// The operator's reconciler (in-process) picks up a network the provisioner wrote: its
/// StatefulSets appear, and the status the operator writes maps onto the console's view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reconciles_a_console_network() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use std::sync::Arc;
    use trellis_operator::build::BuildOptions;
    use trellis_operator::chain::NodeRpcPending;
    use trellis_operator::controller::{self, Context};
    use trellis_operator::metrics::Metrics;

    let Some(ns) = test_namespace("kubeop").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let slug = ns.name.clone();
    let namespace = format!("trellis-{slug}");
    let provisioner = KubeProvisioner::new(ns.client.clone(), "registry.test/trellis-node");
    let network = NetworkRef {
        tenant_id: Uuid::now_v7(),
        tenant_slug: slug,
        network_id: Uuid::now_v7(),
        name: "chain".into(),
    };
    provisioner
        .apply(&DesiredNetwork {
            network: network.clone(),
            generation: 3,
            spec: spec(NetworkMode::Public, 1),
            quota: None,
        })
        .await
        .unwrap();

    let ctx = Arc::new(Context::new(
        ns.client.clone(),
        Arc::new(NodeRpcPending),
        BuildOptions::default(),
        Arc::new(Metrics::new()),
    ));
    let (stop, mut stopped) = tokio::sync::watch::channel(());
    tokio::spawn(controller::run(ctx, Some(namespace.clone()), async move {
        while stopped.changed().await.is_ok() {}
    }));

    let sts: Api<StatefulSet> = Api::namespaced(ns.client.clone(), &namespace);
    let names = eventually("StatefulSets of the console's network", WAIT, || {
        let sts = sts.clone();
        async move {
            let mut names: Vec<String> = sts
                .list(&Default::default())
                .await
                .ok()?
                .items
                .iter()
                .map(|s| s.name_any())
                .collect();
            names.sort();
            (names.len() == 2).then_some(names)
        }
    })
    .await;
    assert_eq!(names, ["chain-beacon", "chain-shard-0"]);
    let image = sts
        .get("chain-shard-0")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("registry.test/trellis-node:0.1.0"));

    // The operator's own status, read through the provisioner, is for generation 3.
    let observed = eventually("status for console generation 3", WAIT, || {
        let provisioner = provisioner.clone();
        let network = network.clone();
        async move {
            let observed = provisioner.observe(&network).await.ok()??;
            (observed.observed_generation == 3).then_some(observed)
        }
    })
    .await;
    assert_ne!(observed.phase, ObservedPhase::Failed, "{observed:?}");

    // Deleted while the operator runs (it may hold a finalizer), then gone.
    provisioner.delete(&network, true).await.unwrap();
    eventually("ChainNetwork chain deleted", WAIT, || {
        let provisioner = provisioner.clone();
        let network = network.clone();
        async move {
            provisioner
                .observe(&network)
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    drop(stop);
    let _ = Api::<Namespace>::all(ns.client.clone())
        .delete(&namespace, &DeleteParams::background())
        .await;
}
