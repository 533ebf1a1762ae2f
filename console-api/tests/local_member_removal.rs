//! Removing a consortium member in local mode with real nodes (addresses
//! 127.0.93.0/24): four organisations → the other three approve removing the fourth →
//! the console hands the provisioner the spec without it → the removal governance
//! transaction is approved with the custodied keys and sent → at the epoch boundary the
//! chain has three members, the removed validator's process is stopped (and stays
//! stopped), and the network keeps finalizing with three.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::local::{custodied_local_app, eventually, processes_for};

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_leaves_the_chain_and_three_keep_finalizing() {
    let (app, local, _guard) = custodied_local_app("127.0.93.0/24").await;
    let founder = app.signup("Acme", "owner@acme.example").await;
    let created = app
        .post(
            "/v1/networks",
            &founder.token,
            json!({"name": "alliance", "mode": "consortium", "epoch_length": 10,
                   "members": [{"organisation": "Acme", "nodes": 1},
                               {"organisation": "Globex", "nodes": 1},
                               {"organisation": "Initech", "nodes": 1},
                               {"organisation": "Hooli", "nodes": 1}]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let network = created.body["id"].as_str().unwrap().to_string();
    let rpc = async |method: &str, params: Value| -> Option<Value> {
        let r = app
            .post(
                &format!("/v1/networks/{network}/rpc"),
                &founder.token,
                json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
            )
            .await;
        (r.status == StatusCode::OK && r.body.get("error").is_none())
            .then(|| r.body["result"].clone())
    };
    let height = async || -> Option<u64> {
        rpc("trellis_status", Value::Null).await?["finalized_height"].as_u64()
    };
    eventually(
        "the chain to finalize",
        Duration::from_secs(180),
        async || height().await.filter(|h| *h > 0),
    )
    .await;
    let nodes = local
        .settings()
        .root
        .join("networks")
        .join(&network)
        .join("nodes");
    let hooli_node = nodes.join("alliance-hooli-0");
    assert_eq!(processes_for(&hooli_node).len(), 1);
    let hooli_key: String = {
        let keys: Value =
            serde_json::from_str(&std::fs::read_to_string(hooli_node.join("keys.json")).unwrap())
                .unwrap();
        keys["node_public_key"].as_str().unwrap().to_string()
    };

    // The three others approve (the founder controls them all): removed at once.
    let members = app
        .get(&format!("/v1/networks/{network}/members"), &founder.token)
        .await;
    let hooli = members.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["organisation"] == "Hooli")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let removed = app
        .post(
            &format!("/v1/networks/{network}/members/{hooli}/removal"),
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
    assert_eq!(removed.body["network_generation"], 2);

    // On chain: three members from the next epoch on; then the node is stopped.
    let registry = eventually(
        "the chain's registry without Hooli",
        Duration::from_secs(180),
        async || {
            let r = rpc("trellis_getMembers", Value::Null).await?;
            let members = r["members"].as_array()?;
            (members.len() == 3
                && r["pending"].as_array().is_some_and(Vec::is_empty)
                && !members.iter().any(|m| m["node_key"] == hooli_key.as_str()))
            .then_some(r)
        },
    )
    .await;
    assert_eq!(registry["threshold"], 3, "{registry}");
    eventually(
        "Hooli's node to stop",
        Duration::from_secs(60),
        async || (processes_for(&hooli_node).is_empty()).then_some(()),
    )
    .await;
    let proposal = app
        .get(
            &format!("/v1/networks/{network}/members/{hooli}/proposal"),
            &founder.token,
        )
        .await;
    assert_eq!(proposal.status, StatusCode::OK, "{}", proposal.text);
    assert_eq!(proposal.body["state"], "Removed");
    assert_eq!(
        proposal.body["chain"]["reason"], "RemovedOnChain",
        "{}",
        proposal.text
    );

    // Three keep finalizing: the height moves on and a transfer finalizes.
    let after = height().await.unwrap();
    eventually(
        "finalization to go on without Hooli",
        Duration::from_secs(120),
        async || height().await.filter(|h| *h > after + 3),
    )
    .await;
    let treasury = local.treasury_key_file(network.parse().unwrap());
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
    // The supervisor never brought it back.
    assert!(processes_for(&hooli_node).is_empty());
    let validators = rpc("trellis_status", Value::Null).await.unwrap()["validators"].clone();
    assert!(
        !validators
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == hooli_key.as_str()),
        "{validators}"
    );

    let deleted = app
        .delete(&format!("/v1/networks/{network}"), &founder.token)
        .await;
    assert!(deleted.status.is_success(), "{}", deleted.text);
    for node in ["acme", "globex", "initech", "hooli"] {
        assert!(processes_for(&nodes.join(format!("alliance-{node}-0"))).is_empty());
    }
}
