//! The consortium flow in local mode with real nodes (addresses 127.0.5.0/24 and
//! 127.0.6.0/24): three organisations → invite a fourth → it accepts → the members
//! approve → the console admits it → its node is prepared and the admission governance
//! transaction is approved with the custodied keys and sent → the node is started → its
//! validator signs blocks → a transfer finalizes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::local::{custodied_local_app, eventually, processes_for};

use std::path::PathBuf;
use std::time::Duration;

use axum::http::StatusCode;
use common::{Org, TestApp};
use serde_json::{Value, json};
use trellis_console::provisioner::local::LocalProvisioner;
use trellis_console::provisioner::{NetworkRef, Provisioner};

struct Consortium {
    // Dropped first: kills whatever a failed test left running.
    _guard: common::KillUnder,
    app: TestApp,
    local: LocalProvisioner,
    founder: Org,
    network: String,
    delta_node: PathBuf,
}

/// Three custodied organisations, a fourth invited, accepted and approved by all three.
async fn admit_a_fourth_organisation(range: &str) -> Consortium {
    let (app, local, guard) = custodied_local_app(range).await;
    let founder = app.signup("Acme", "owner@acme.example").await;
    let created = app
        .post(
            "/v1/networks",
            &founder.token,
            json!({"name": "alliance", "mode": "consortium", "epoch_length": 10,
                   "members": [{"organisation": "Acme", "nodes": 1},
                               {"organisation": "Globex", "nodes": 1},
                               {"organisation": "Initech", "nodes": 1}]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let network = created.body["id"].as_str().unwrap().to_string();

    let (member, _delta) = app
        .invite_and_accept(
            &founder.token,
            &network,
            json!({"organisation": "Delta", "nodes": 1}),
            "Delta Org",
            "owner@delta.example",
        )
        .await;
    let approved = app
        .post(
            &format!("/v1/networks/{network}/members/{member}/approvals"),
            &founder.token,
            json!({}),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);
    assert_eq!(
        approved.body["member"]["state"], "Admitted",
        "{}",
        approved.text
    );

    let delta_node = local
        .settings()
        .root
        .join("networks")
        .join(&network)
        .join("nodes/alliance-delta-0");
    eventually(
        "Delta's node to be prepared",
        Duration::from_secs(60),
        async || delta_node.join("node.toml").is_file().then_some(()),
    )
    .await;
    Consortium {
        _guard: guard,
        app,
        local,
        founder,
        network,
        delta_node,
    }
}

fn reference(c: &Consortium) -> NetworkRef {
    NetworkRef {
        tenant_id: c.founder.tenant_id.parse().unwrap(),
        tenant_slug: String::new(),
        network_id: c.network.parse().unwrap(),
        name: "alliance".into(),
    }
}

/// Until the chain has admitted the member (the admission is final), its node must not
/// run (the chain would refuse its handshake) and the network's status says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_member_waits_for_its_admission_on_chain_with_a_clear_condition() {
    let c = admit_a_fourth_organisation("127.0.5.0/24").await;
    let status = eventually(
        "the admission condition",
        Duration::from_secs(120),
        async || {
            let status = c.local.observe(&reference(&c)).await.unwrap()?;
            // The admission step's own report, not the placeholder before its first pass.
            let message = status.message.clone().unwrap_or_default();
            (message.contains("alliance-delta-0")
                && !message.contains("waits for its admission on chain"))
            .then_some(status)
        },
    )
    .await;
    let message = status.message.unwrap();
    if processes_for(&c.delta_node).is_empty() {
        // Not admitted on chain (yet): it waits, and the status says what for.
        eprintln!("admission condition: {message}");
        assert!(
            message.contains("cannot be read")
                || message.contains("refused the admission")
                || message.contains("admission")
                    && message.contains("sent; waiting for it to be final"),
            "{message}"
        );
        assert_eq!(
            status.rpc_endpoints.len(),
            3,
            "only the three validators serve"
        );
    }
    let deleted = c
        .app
        .delete(&format!("/v1/networks/{}", c.network), &c.founder.token)
        .await;
    assert!(deleted.status.is_success(), "{}", deleted.text);
    assert!(processes_for(&c.delta_node).is_empty());
}

/// The whole flow on chain, with the node's governance execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_organisation_is_admitted_on_chain_and_its_validator_signs_blocks() {
    let c = admit_a_fourth_organisation("127.0.6.0/24").await;
    let network = c.network.clone();
    let rpc = async |method: &str, params: Value| -> Option<Value> {
        let r = c
            .app
            .post(
                &format!("/v1/networks/{network}/rpc"),
                &c.founder.token,
                json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
            )
            .await;
        (r.status == StatusCode::OK).then(|| r.body["result"].clone())
    };
    // Admitted on chain: the node runs and the validator set of a later epoch has it.
    let delta_key: String = {
        let keys: Value =
            serde_json::from_str(&std::fs::read_to_string(c.delta_node.join("keys.json")).unwrap())
                .unwrap();
        keys["node_public_key"].as_str().unwrap().to_string()
    };
    eventually(
        "Delta's node to run",
        Duration::from_secs(120),
        async || (processes_for(&c.delta_node).len() == 1).then_some(()),
    )
    .await;
    eventually(
        "Delta's validator in the validator set",
        Duration::from_secs(180),
        async || {
            let status = rpc("trellis_status", Value::Null).await?;
            status["validators"]
                .as_array()?
                .iter()
                .any(|v| v.as_str() == Some(delta_key.as_str()))
                .then_some(())
        },
    )
    .await;
    // Stop one founding validator (SIGSTOP): with 4 validators a quorum of 3 now needs
    // Delta's votes, so a transfer that finalizes proves its validator signs blocks.
    let founder_node = c.delta_node.with_file_name("alliance-acme-0");
    let pid = std::fs::read_to_string(founder_node.join("process.json")).unwrap();
    let pid = serde_json::from_str::<Value>(&pid).unwrap()["pid"]
        .as_i64()
        .unwrap()
        .to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let treasury = c.local.treasury_key_file(c.network.parse().unwrap());
    let chain_id = rpc("trellis_status", Value::Null).await.unwrap()["chain_id"]
        .as_str()
        .unwrap()
        .to_string();
    let tx =
        trellis_console::up::signed_transfer(&treasury, &chain_id, 0, &"22".repeat(32), 7).unwrap();
    let sent = eventually(
        "the transfer to be accepted",
        Duration::from_secs(60),
        async || rpc("trellis_sendTransaction", json!({"tx": tx})).await,
    )
    .await;
    let hash = sent["hash"].as_str().unwrap().to_string();
    let finalized = eventually(
        "the transfer to finalize",
        Duration::from_secs(120),
        async || {
            let t = rpc("trellis_getTransaction", json!({"hash": hash})).await?;
            (t["state"] == "committed").then_some(t)
        },
    )
    .await;
    assert_eq!(finalized["success"], true);
    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deleted = c
        .app
        .delete(&format!("/v1/networks/{}", c.network), &c.founder.token)
        .await;
    assert!(deleted.status.is_success(), "{}", deleted.text);
}
