//! Tenant isolation matrix: every endpoint that takes an id, called by another tenant
//! (with a user token and with an API key), answers exactly like an unknown id — 404 —
//! and changes nothing; every list shows only the caller's own rows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test scenarios are run by #[test] wrappers

mod common;

use axum::http::{Method, StatusCode};
use common::{TestApp, assert_problem};
use serde_json::{Value, json};

struct Victim {
    token: String,
    network_id: String,
    network_name: String,
    user_id: String,
    user_email: String,
    api_key_id: String,
    api_key: String,
}

async fn victim(app: &TestApp) -> Victim {
    let org = app.signup("Victim Org", "owner@victim.example").await;
    let network = app.create_network(&org.token, "victim-secret-net").await;
    assert_eq!(network.status, StatusCode::CREATED);
    let user = app
        .post(
            "/v1/users",
            &org.token,
            json!({"email": "member@victim.example", "password": common::PASSWORD, "role": "member"}),
        )
        .await;
    let key = app
        .post(
            "/v1/api-keys",
            &org.token,
            json!({"name": "victim-automation", "role": "admin"}),
        )
        .await;
    Victim {
        token: org.token,
        network_id: network.body["id"].as_str().unwrap().into(),
        network_name: "victim-secret-net".into(),
        user_id: user.body["id"].as_str().unwrap().into(),
        user_email: "member@victim.example".into(),
        api_key_id: key.body["id"].as_str().unwrap().into(),
        api_key: key.body["secret"].as_str().unwrap().into(),
    }
}

/// Everything an attacker can do with another tenant's ids.
fn id_matrix(victim: &Victim) -> Vec<(Method, String, Option<Value>)> {
    let network = format!("/v1/networks/{}", victim.network_id);
    let user = format!("/v1/users/{}", victim.user_id);
    let key = format!("/v1/api-keys/{}", victim.api_key_id);
    vec![
        (Method::GET, network.clone(), None),
        (
            Method::PATCH,
            network.clone(),
            Some(json!({"shards": {"count": 1}, "paused": true})),
        ),
        (
            Method::GET,
            format!("{network}/members/{}/proposal", victim.user_id),
            None,
        ),
        (
            Method::POST,
            format!("{network}/members/{}/proposal/approvals", victim.user_id),
            Some(json!({"approval": "ab".repeat(96)})),
        ),
        (
            Method::POST,
            format!("{network}/members/{}/removal", victim.user_id),
            Some(json!({})),
        ),
        (Method::GET, format!("{network}/invitations"), None),
        (
            Method::DELETE,
            format!("{network}/invitations/{}", victim.user_id),
            None,
        ),
        (Method::DELETE, network, None),
        (Method::GET, user.clone(), None),
        (Method::PATCH, user.clone(), Some(json!({"role": "viewer"}))),
        (Method::DELETE, user, None),
        (Method::DELETE, key, None),
    ]
}

async fn assert_untouched(app: &TestApp, victim: &Victim, calls_before: usize) {
    let network = app
        .get(
            &format!("/v1/networks/{}", victim.network_id),
            &victim.token,
        )
        .await;
    assert_eq!(network.status, StatusCode::OK);
    assert_eq!(network.body["generation"], 1);
    assert_eq!(network.body["spec"]["paused"], false);
    let user = app
        .get(&format!("/v1/users/{}", victim.user_id), &victim.token)
        .await;
    assert_eq!(user.body["role"], "member");
    assert_eq!(
        app.get("/v1/me", &victim.api_key).await.status,
        StatusCode::OK
    );
    assert_eq!(app.provisioner.calls().len(), calls_before);
}

async fn other_tenants_ids_answer_404_and_change_nothing(app: TestApp) {
    let victim = victim(&app).await;
    let attacker = app.signup("Attacker Org", "owner@attacker.example").await;
    let attacker_key = app
        .post(
            "/v1/api-keys",
            &attacker.token,
            json!({"name": "attack", "role": "owner"}),
        )
        .await
        .body["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let calls_before = app.provisioner.calls().len();

    for credential in [&attacker.token, &attacker_key] {
        for (method, path, body) in id_matrix(&victim) {
            let response = app
                .call(method.clone(), &path, Some(credential), body.clone())
                .await;
            assert_problem(&response, StatusCode::NOT_FOUND, "not_found");
            // Indistinguishable from an id that does not exist at all.
            let unknown_path = path
                .replace(&victim.network_id, &uuid::Uuid::now_v7().to_string())
                .replace(&victim.user_id, &uuid::Uuid::now_v7().to_string())
                .replace(&victim.api_key_id, &uuid::Uuid::now_v7().to_string());
            let unknown = app
                .call(method.clone(), &unknown_path, Some(credential), body)
                .await;
            assert_eq!(unknown.status, response.status, "{method} {path}");
            assert_eq!(
                unknown.body["detail"], response.body["detail"],
                "{method} {path}"
            );
            for secret in [&victim.network_name, &victim.user_email] {
                assert!(
                    !response.text.contains(secret.as_str()),
                    "{method} {path} leaked"
                );
            }
        }
    }
    assert_untouched(&app, &victim, calls_before).await;
}

async fn lists_show_only_the_callers_rows(app: TestApp) {
    let victim = victim(&app).await;
    let attacker = app.signup("Attacker Org", "owner@attacker.example").await;
    app.create_network(&attacker.token, "mine").await;
    // Even with the victim's network id as a cursor.
    for path in [
        "/v1/networks".to_string(),
        format!("/v1/networks?cursor={}", uuid::Uuid::nil()),
        "/v1/users".to_string(),
        "/v1/api-keys".to_string(),
        "/v1/audit-events".to_string(),
        "/v1/me".to_string(),
    ] {
        let response = app.get(&path, &attacker.token).await;
        assert_eq!(response.status, StatusCode::OK, "{path}: {}", response.text);
        for secret in [
            &victim.network_id,
            &victim.network_name,
            &victim.user_id,
            &victim.user_email,
            &victim.api_key_id,
            &"owner@victim.example".to_string(),
        ] {
            assert!(
                !response.text.contains(secret.as_str()),
                "{path} leaked {secret}"
            );
        }
    }
    let networks = app.get("/v1/networks", &attacker.token).await;
    let names: Vec<&str> = networks.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mine"]);
    // Same name in another tenant is fine: names are per tenant.
    let same_name = app
        .create_network(&attacker.token, &victim.network_name)
        .await;
    assert_eq!(same_name.status, StatusCode::CREATED);
}

async fn a_token_cannot_be_pointed_at_another_tenant(app: TestApp) {
    let victim = victim(&app).await;
    let victim_me = app.get("/v1/me", &victim.token).await;
    let victim_tenant: uuid::Uuid = victim_me.body["tenant"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // A token claiming the victim's tenant, signed with any key but the console's.
    let foreign = trellis_console::auth::jwt::TokenKeys::new(
        &trellis_console::auth::jwt::generate_signing_key(),
        &[],
        900,
    )
    .unwrap()
    .issue(
        uuid::Uuid::now_v7(),
        victim_tenant,
        trellis_console::auth::Role::Owner,
    )
    .unwrap();
    let response = app
        .get(&format!("/v1/networks/{}", victim.network_id), &foreign)
        .await;
    assert_problem(&response, StatusCode::UNAUTHORIZED, "invalid_token");
}

on_both_databases!(
    other_tenants_ids_answer_404_and_change_nothing,
    lists_show_only_the_callers_rows,
    a_token_cannot_be_pointed_at_another_tenant,
);
