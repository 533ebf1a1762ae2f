//! An organisation with its own key approves a member's admission in local mode, with
//! real nodes (addresses 127.0.70.100–127.0.70.120): Acme and Globex are custodied,
//! Initech brought its own key, so the chain's threshold (3 of 3) needs Initech's
//! signature. The local provisioner publishes the proposal, Initech's approval is posted
//! through the API (a wrong one refused), and the admission completes on chain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::local::{custodied_local_app, eventually};

use std::time::Duration;

use axum::http::StatusCode;
use common::assert_problem;
use serde_json::{Value, json};
use trellis_node_types::{Proposal, Signer as _, test_key, to_hex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_key_approval_completes_a_local_admission() {
    let (app, _local, _guard) = custodied_local_app("127.0.70.100-127.0.70.120").await;
    let founder = app.signup("Acme", "owner@acme.example").await;
    let own_key = test_key(91);
    let created = app
        .post(
            "/v1/networks",
            &founder.token,
            json!({"name": "alliance", "mode": "consortium", "epoch_length": 10,
                   "members": [{"organisation": "Acme", "nodes": 1},
                               {"organisation": "Globex", "nodes": 1},
                               {"organisation": "Initech", "nodes": 1,
                                "admin_public_key": to_hex(own_key.public_key().as_ref())}]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let network = created.body["id"].as_str().unwrap().to_string();
    let (member, _delta) = app
        .invite_and_accept(
            &founder.token,
            &network,
            json!({"organisation": "Delta"}),
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

    // The chain needs Initech's approval: the proposal is published and waits.
    let path = format!("/v1/networks/{network}/members/{member}/proposal");
    let view: Value = eventually(
        "the admission proposal",
        Duration::from_secs(120),
        async || {
            let view = app.get(&path, &founder.token).await;
            (view.body["chain"]["reason"] == "AwaitingApprovals").then_some(view.body)
        },
    )
    .await;
    let published = &view["chain"]["proposal"];
    assert_eq!(published["threshold"], 3, "{view}");
    let message = view["chain"]["message"].as_str().unwrap();
    assert!(message.contains("2 of the 3 approvals"), "{message}");
    let proposal = Proposal::from_hex(published["proposal"].as_str().unwrap()).unwrap();

    let approvals = format!("{path}/approvals");
    let wrong = app
        .post(
            &approvals,
            &founder.token,
            json!({"approval": proposal.approve(&test_key(92)).to_hex()}),
        )
        .await;
    assert_problem(&wrong, StatusCode::FORBIDDEN, "wrong_key");
    let posted = app
        .post(
            &approvals,
            &founder.token,
            json!({"approval": proposal.approve(&own_key).to_hex(),
                   "proposal_hash": published["proposal_hash"]}),
        )
        .await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.text);

    // With it the console submits the admission; Delta's node is admitted and started.
    eventually(
        "Delta admitted on chain",
        Duration::from_secs(180),
        async || {
            let view = app.get(&path, &founder.token).await;
            (view.body["chain"]["reason"] == "AdmittedOnChain").then_some(())
        },
    )
    .await;
}
