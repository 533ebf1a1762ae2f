//! The consortium flow at the API level: one-click creation with founding members,
//! invitation, acceptance (custodied or own key), threshold approval, admission written
//! through the provisioner, the audit trail, and isolation from strangers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::{Call, TestApp, assert_problem};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;
use trellis_console::custody;
use trellis_console_entity::{consortium_invitation, consortium_member};

fn own_public_key() -> String {
    let key = trellis_console::auth::jwt::generate_signing_key();
    custody::encode_hex(key.verifying_key().as_bytes())
}

async fn consortium_invite_accept_approve_admit(app: TestApp) {
    let founder = app.signup("Acme", "owner@acme.example").await;
    let byo = own_public_key();
    let created = app
        .post(
            "/v1/networks",
            &founder.token,
            json!({
                "name": "alliance",
                "mode": "consortium",
                "members": [
                    {"organisation": "Acme", "nodes": 1},
                    {"organisation": "Globex", "nodes": 1},
                    {"organisation": "Initech", "nodes": 1, "admin_public_key": byo.to_uppercase()},
                ],
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let network_id = created.body["id"].as_str().unwrap().to_string();
    let spec_members = created.body["spec"]["members"].as_array().unwrap();
    assert_eq!(spec_members[2]["admin_public_key"], byo.as_str());

    // Custodied keys are stored sealed and open to the public key in the spec.
    let rows = consortium_member::Entity::find()
        .filter(consortium_member::Column::NetworkId.eq(network_id.parse::<uuid::Uuid>().unwrap()))
        .all(&app.state.db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let public = row.admin_public_key.clone().unwrap();
        match row.key_custody.as_deref() {
            Some("custodied") => {
                let sealed = row.sealed_private_key.clone().unwrap();
                assert!(!sealed.contains(&public));
                let key = custody::open_custodied(&app.state.master_key, row.id, &sealed).unwrap();
                assert_eq!(custody::encode_hex(key.verifying_key().as_bytes()), public);
            }
            Some("external") => {
                assert_eq!(public, byo);
                assert!(row.sealed_private_key.is_none());
            }
            other => panic!("custody {other:?}"),
        }
    }

    let members_path = format!("/v1/networks/{network_id}/members");
    let members = app.get(&members_path, &founder.token).await;
    assert_eq!(members.status, StatusCode::OK, "{}", members.text);
    assert_eq!(members.body["admitted"], 3);
    assert_eq!(members.body["threshold"], 3);
    assert!(
        members.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["state"] == "Admitted" && m["controlled_by_caller"] == true)
    );

    // Invite a fourth organisation.
    let invitation = app
        .post(
            &format!("/v1/networks/{network_id}/invitations"),
            &founder.token,
            json!({"organisation": "Delta", "nodes": 2, "expires_in_hours": 24}),
        )
        .await;
    assert_eq!(
        invitation.status,
        StatusCode::CREATED,
        "{}",
        invitation.text
    );
    let token = invitation.body["token"].as_str().unwrap().to_string();
    let delta_id = invitation.body["member"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(invitation.body["member"]["state"], "Invited");
    let duplicate = app
        .post(
            &format!("/v1/networks/{network_id}/invitations"),
            &founder.token,
            json!({"organisation": "Delta"}),
        )
        .await;
    assert_problem(&duplicate, StatusCode::CONFLICT, "organisation_taken");

    // The founder cannot accept its own invitation.
    let own = app
        .post(
            "/v1/consortium/invitations/accept",
            &founder.token,
            json!({"token": token}),
        )
        .await;
    assert_problem(&own, StatusCode::CONFLICT, "own_consortium");

    // Delta's tenant accepts; the console custodies its key.
    let delta = app.signup("Delta Org", "owner@delta.example").await;
    let stranger = app.signup("Stranger", "owner@stranger.example").await;
    let accepted = app
        .post(
            "/v1/consortium/invitations/accept",
            &delta.token,
            json!({"token": token}),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text);
    assert_eq!(accepted.body["state"], "Proposed");
    assert_eq!(accepted.body["key_custody"], "custodied");
    assert_eq!(accepted.body["controlled_by_caller"], true);
    let again = app
        .post(
            "/v1/consortium/invitations/accept",
            &stranger.token,
            json!({"token": token}),
        )
        .await;
    assert_problem(&again, StatusCode::CONFLICT, "invitation_used");

    // Delta sees the membership (not the network itself); strangers see nothing.
    let seen = app.get(&members_path, &delta.token).await;
    assert_eq!(seen.status, StatusCode::OK);
    let controlled: Vec<bool> = seen.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["controlled_by_caller"].as_bool().unwrap())
        .collect();
    assert_eq!(controlled, [false, false, false, true]);
    assert_problem(
        &app.get(&format!("/v1/networks/{network_id}"), &delta.token)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let approve_path = format!("/v1/networks/{network_id}/members/{delta_id}/approvals");
    for (path, body) in [
        (members_path.clone(), None),
        (approve_path.clone(), Some(json!({}))),
        (
            format!("/v1/networks/{network_id}/invitations"),
            Some(json!({"organisation": "Evil"})),
        ),
    ] {
        let response = match body {
            Some(body) => app.post(&path, &stranger.token, body).await,
            None => app.get(&path, &stranger.token).await,
        };
        assert_problem(&response, StatusCode::NOT_FOUND, "not_found");
        assert!(!response.text.contains("Acme"));
    }
    // A proposed member cannot approve itself, and cannot invite.
    assert_problem(
        &app.post(&approve_path, &delta.token, json!({})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_problem(
        &app.post(
            &format!("/v1/networks/{network_id}/invitations"),
            &delta.token,
            json!({"organisation": "Friend"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    // Approvals: one of three is not enough.
    let acme_id = rows
        .iter()
        .find(|r| r.organisation == "Acme")
        .unwrap()
        .id
        .to_string();
    let first = app
        .post(
            &approve_path,
            &founder.token,
            json!({"as_members": [acme_id]}),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.body["approvals"], 1);
    assert_eq!(first.body["threshold"], 3);
    assert_eq!(first.body["member"]["state"], "Proposed");
    assert!(first.body["network_generation"].is_null());
    let repeat = app
        .post(
            &approve_path,
            &founder.token,
            json!({"as_members": [acme_id]}),
        )
        .await;
    assert_problem(&repeat, StatusCode::CONFLICT, "already_approved");

    // The remaining two reach the threshold: admitted, and the network's desired state
    // now carries the member, applied through the provisioner.
    let calls_before = app.provisioner.calls().len();
    let rest = app.post(&approve_path, &founder.token, json!({})).await;
    assert_eq!(rest.status, StatusCode::OK, "{}", rest.text);
    assert_eq!(rest.body["approvals"], 3);
    assert_eq!(rest.body["member"]["state"], "Admitted");
    assert_eq!(rest.body["network_generation"], 2);
    let calls = app.provisioner.calls();
    assert_eq!(calls.len(), calls_before + 1);
    let Call::Apply(desired) = calls.last().unwrap() else {
        panic!("{calls:?}")
    };
    assert_eq!(desired.generation, 2);
    assert_eq!(desired.spec.members.len(), 4);
    assert_eq!(desired.spec.members[3].organisation, "Delta");
    assert_eq!(desired.spec.members[3].nodes, 2);
    assert_eq!(
        desired.spec.members[3].admin_public_key.as_deref(),
        accepted.body["admin_public_key"].as_str()
    );
    assert_eq!(desired.spec.validators_per_shard, 5);
    let network = app
        .get(&format!("/v1/networks/{network_id}"), &founder.token)
        .await;
    assert_eq!(network.body["generation"], 2);
    assert_problem(
        &app.post(&approve_path, &founder.token, json!({})).await,
        StatusCode::CONFLICT,
        "member_not_proposed",
    );
    let members = app.get(&members_path, &founder.token).await;
    assert_eq!(members.body["admitted"], 4);
    assert_eq!(members.body["threshold"], 3);

    // Every step is in the audit logs of the tenants involved.
    let actions = |body: &serde_json::Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_string())
            .collect()
    };
    let founder_log = actions(&app.get("/v1/audit-events", &founder.token).await.body);
    for action in [
        "network.create",
        "consortium.invite",
        "consortium.invitation_accepted",
        "consortium.approve",
        "consortium.admit",
    ] {
        assert!(
            founder_log.iter().any(|a| a == action),
            "{action}: {founder_log:?}"
        );
    }
    let delta_log = actions(&app.get("/v1/audit-events", &delta.token).await.body);
    assert!(
        delta_log.iter().any(|a| a == "consortium.accept"),
        "{delta_log:?}"
    );
    let stranger_log = actions(&app.get("/v1/audit-events", &stranger.token).await.body);
    assert_eq!(stranger_log, ["tenant.create"]);
}

async fn invitations_expire_and_keys_are_checked(app: TestApp) {
    let founder = app.signup("Acme", "owner@acme.example").await;
    let guest = app.signup("Guest", "owner@guest.example").await;
    let created = app
        .post(
            "/v1/networks",
            &founder.token,
            json!({"name": "club", "mode": "consortium", "members": [{"organisation": "Acme"}]}),
        )
        .await;
    let network_id = created.body["id"].as_str().unwrap().to_string();
    let invite = |organisation: &'static str| {
        let app = &app;
        let token = founder.token.clone();
        let path = format!("/v1/networks/{network_id}/invitations");
        async move {
            app.post(&path, &token, json!({"organisation": organisation}))
                .await
                .body["token"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let expiring = invite("Late").await;
    consortium_invitation::Entity::update_many()
        .col_expr(
            consortium_invitation::Column::ExpiresAt,
            sea_orm::sea_query::Expr::value(chrono::Utc::now() - chrono::Duration::minutes(1)),
        )
        .exec(&app.state.db)
        .await
        .unwrap();
    assert_problem(
        &app.post(
            "/v1/consortium/invitations/accept",
            &guest.token,
            json!({"token": expiring}),
        )
        .await,
        StatusCode::GONE,
        "invitation_expired",
    );
    assert_problem(
        &app.post(
            "/v1/consortium/invitations/accept",
            &guest.token,
            json!({"token": "tri_made_up"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "invitation_not_found",
    );

    let fresh = invite("Guest").await;
    let bad_key = app
        .post(
            "/v1/consortium/invitations/accept",
            &guest.token,
            json!({"token": fresh, "admin_public_key": "ab".repeat(31)}),
        )
        .await;
    assert_problem(
        &bad_key,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let own = own_public_key();
    let accepted = app
        .post(
            "/v1/consortium/invitations/accept",
            &guest.token,
            json!({"token": fresh, "admin_public_key": own}),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text);
    assert_eq!(accepted.body["key_custody"], "external");
    assert_eq!(accepted.body["admin_public_key"], own.as_str());

    // With one admitted member the threshold is one approval.
    let member_id = accepted.body["id"].as_str().unwrap();
    let approved = app
        .post(
            &format!("/v1/networks/{network_id}/members/{member_id}/approvals"),
            &founder.token,
            json!({}),
        )
        .await;
    assert_eq!(approved.body["threshold"], 1);
    assert_eq!(approved.body["member"]["state"], "Admitted");

    // Rejection: a pending invitation is withdrawn and can no longer be accepted.
    let withdrawn = invite("Withdrawn").await;
    let members = app
        .get(
            &format!("/v1/networks/{network_id}/members"),
            &founder.token,
        )
        .await;
    let withdrawn_id = members.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["organisation"] == "Withdrawn")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reject_path = format!("/v1/networks/{network_id}/members/{withdrawn_id}/rejection");
    let stranger = app.signup("Stranger", "owner@stranger.example").await;
    assert_problem(
        &app.post(&reject_path, &stranger.token, json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let rejected = app.post(&reject_path, &founder.token, json!({})).await;
    assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.text);
    assert_eq!(rejected.body["state"], "Rejected");
    assert_problem(
        &app.post(&reject_path, &founder.token, json!({})).await,
        StatusCode::CONFLICT,
        "member_not_pending",
    );
    let late = app
        .post(
            "/v1/consortium/invitations/accept",
            &stranger.token,
            json!({"token": withdrawn}),
        )
        .await;
    assert_problem(&late, StatusCode::GONE, "invitation_revoked");
    // An admitted member cannot be "rejected".
    let admitted_reject = format!("/v1/networks/{network_id}/members/{member_id}/rejection");
    assert_problem(
        &app.post(&admitted_reject, &founder.token, json!({})).await,
        StatusCode::CONFLICT,
        "member_not_pending",
    );

    // Public networks have no membership.
    let public = app.create_network(&founder.token, "open").await;
    let public_id = public.body["id"].as_str().unwrap();
    assert_problem(
        &app.get(&format!("/v1/networks/{public_id}/members"), &founder.token)
            .await,
        StatusCode::CONFLICT,
        "not_a_consortium",
    );
}

/// Removal: the other admitted members approve up to the threshold, then the member is
/// `Removed` and the provisioner is handed the spec without it; every refusal is clear.
async fn an_admitted_member_is_removed_by_the_threshold_of_the_others(app: TestApp) {
    let founder = app.signup("Acme", "owner@acme.example").await;
    let created = app
        .post(
            "/v1/networks",
            &founder.token,
            json!({
                "name": "alliance",
                "mode": "consortium",
                "members": [
                    {"organisation": "Acme", "nodes": 1},
                    {"organisation": "Globex", "nodes": 1},
                    {"organisation": "Initech", "nodes": 1},
                    {"organisation": "Hooli", "nodes": 2},
                ],
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let network = created.body["id"].as_str().unwrap().to_string();
    let members = app
        .get(&format!("/v1/networks/{network}/members"), &founder.token)
        .await;
    let id_of = |organisation: &str| common::member_id(&members.body, organisation);
    let (acme, globex, hooli) = (id_of("Acme"), id_of("Globex"), id_of("Hooli"));
    let removal = |member: &str| format!("/v1/networks/{network}/members/{member}/removal");

    // Strangers see nothing; a viewer may not; an unknown member is not found.
    let stranger = app.signup("Stranger", "owner@stranger.example").await;
    assert_problem(
        &app.post(&removal(&hooli), &stranger.token, json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let viewer = app
        .user_with_role(&founder, "viewer@acme.example", "viewer")
        .await;
    assert_problem(
        &app.post(&removal(&hooli), &viewer, json!({})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_problem(
        &app.post(
            &removal(&uuid::Uuid::now_v7().to_string()),
            &founder.token,
            json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // A member does not approve its own removal.
    assert_problem(
        &app.post(
            &removal(&hooli),
            &founder.token,
            json!({"as_members": [hooli]}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    // One approval of the three needed: still admitted, nothing applied.
    let calls_before = app.provisioner.calls().len();
    let first = app
        .post(
            &removal(&hooli),
            &founder.token,
            json!({"as_members": [acme]}),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.body["approvals"], 1);
    assert_eq!(first.body["threshold"], 3);
    assert_eq!(first.body["member"]["state"], "Admitted");
    assert_eq!(first.body["member"]["removal_approvals"], 1);
    assert!(first.body["network_generation"].is_null());
    assert_eq!(app.provisioner.calls().len(), calls_before);
    assert_problem(
        &app.post(
            &removal(&hooli),
            &founder.token,
            json!({"as_members": [acme]}),
        )
        .await,
        StatusCode::CONFLICT,
        "already_approved",
    );

    // The others' approvals reach the threshold: removed, the spec loses its nodes.
    let rest = app.post(&removal(&hooli), &founder.token, json!({})).await;
    assert_eq!(rest.status, StatusCode::OK, "{}", rest.text);
    assert_eq!(rest.body["approvals"], 3);
    assert_eq!(rest.body["member"]["state"], "Removed");
    assert_eq!(rest.body["network_generation"], 2);
    let calls = app.provisioner.calls();
    let Call::Apply(desired) = calls.last().unwrap() else {
        panic!("{calls:?}")
    };
    assert_eq!(desired.generation, 2);
    let organisations: Vec<&str> = desired
        .spec
        .members
        .iter()
        .map(|m| m.organisation.as_str())
        .collect();
    assert_eq!(organisations, ["Acme", "Globex", "Initech"]);
    assert_eq!(desired.spec.validators_per_shard, 3);
    let got = app
        .get(&format!("/v1/networks/{network}"), &founder.token)
        .await;
    assert_eq!(got.body["spec"]["members"].as_array().unwrap().len(), 3);

    // Removed is final; three members cannot remove one (two others < threshold 3).
    assert_problem(
        &app.post(&removal(&hooli), &founder.token, json!({})).await,
        StatusCode::CONFLICT,
        "member_not_admitted",
    );
    let below = app.post(&removal(&globex), &founder.token, json!({})).await;
    assert_problem(&below, StatusCode::CONFLICT, "below_quorum");
    assert!(
        below.body["detail"]
            .as_str()
            .unwrap()
            .contains("needs 3 approvals"),
        "{}",
        below.text
    );
    let log = app.get("/v1/audit-events", &founder.token).await;
    let actions: Vec<&str> = log.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["consortium.removal_approve", "consortium.remove"] {
        assert!(actions.contains(&action), "{action}: {actions:?}");
    }

    // A one-member consortium's last member stays.
    let solo = app
        .post(
            "/v1/networks",
            &founder.token,
            json!({"name": "solo", "mode": "consortium",
                   "members": [{"organisation": "Acme", "nodes": 1}]}),
        )
        .await;
    assert_eq!(solo.status, StatusCode::CREATED, "{}", solo.text);
    let solo_id = solo.body["id"].as_str().unwrap();
    let solo_members = app
        .get(&format!("/v1/networks/{solo_id}/members"), &founder.token)
        .await;
    let only = solo_members.body["items"][0]["id"].as_str().unwrap();
    assert_problem(
        &app.post(
            &format!("/v1/networks/{solo_id}/members/{only}/removal"),
            &founder.token,
            json!({}),
        )
        .await,
        StatusCode::CONFLICT,
        "last_member",
    );
}

/// Invitations sent (per network, by its owner) and received (by the tenant they are
/// bound to), with their status and keyset pages; a pending one can be revoked.
async fn invitations_are_listed_with_their_status_and_revoked(app: TestApp) {
    let founder = app.signup("Acme", "owner@acme.example").await;
    let created = app
        .post(
            "/v1/networks",
            &founder.token,
            json!({"name": "alliance", "mode": "consortium",
                   "members": [{"organisation": "Acme", "nodes": 1}]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let network = created.body["id"].as_str().unwrap().to_string();
    let invitations = format!("/v1/networks/{network}/invitations");
    let delta = app.signup("Delta Org", "owner@delta.example").await;
    let stranger = app.signup("Stranger", "owner@stranger.example").await;

    let unknown_tenant = app
        .post(
            &invitations,
            &founder.token,
            json!({"organisation": "Nobody", "tenant_id": uuid::Uuid::now_v7()}),
        )
        .await;
    assert_problem(
        &unknown_tenant,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for (organisation, named) in [
        ("Delta", Some(&delta.tenant_id)),
        ("Echo", None),
        ("Foxtrot", None),
        ("Hotel", None),
    ] {
        let mut body = json!({"organisation": organisation});
        if let Some(tenant) = named {
            body["tenant_id"] = json!(tenant);
        }
        let sent = app.post(&invitations, &founder.token, body).await;
        assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
        tokens.push(sent.body["token"].as_str().unwrap().to_string());
        ids.push(sent.body["invitation_id"].as_str().unwrap().to_string());
    }

    // Delta sees the invitation naming it; a stranger cannot accept it.
    let received = app
        .get("/v1/consortium/invitations/received", &delta.token)
        .await;
    assert_eq!(received.status, StatusCode::OK, "{}", received.text);
    assert_eq!(received.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(received.body["items"][0]["organisation"], "Delta");
    assert_eq!(received.body["items"][0]["status"], "pending");
    assert_problem(
        &app.post(
            "/v1/consortium/invitations/accept",
            &stranger.token,
            json!({"token": tokens[0]}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let accepted = app
        .post(
            "/v1/consortium/invitations/accept",
            &delta.token,
            json!({"token": tokens[0]}),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text);

    // Echo's is revoked (its token stops working, its member is rejected); Foxtrot's
    // expires; Hotel's stays pending.
    let revoke = |id: &str| format!("{invitations}/{id}");
    assert_problem(
        &app.delete(&revoke(&ids[1]), &delta.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let viewer = app
        .user_with_role(&founder, "viewer@acme.example", "viewer")
        .await;
    assert_problem(
        &app.delete(&revoke(&ids[1]), &viewer).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let revoked = app.delete(&revoke(&ids[1]), &founder.token).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text);
    assert_eq!(revoked.body["status"], "revoked");
    assert!(revoked.body["revoked_at"].is_string());
    assert_problem(
        &app.delete(&revoke(&ids[1]), &founder.token).await,
        StatusCode::CONFLICT,
        "invitation_not_pending",
    );
    assert_problem(
        &app.delete(&revoke(&ids[0]), &founder.token).await,
        StatusCode::CONFLICT,
        "invitation_not_pending",
    );
    assert_problem(
        &app.post(
            "/v1/consortium/invitations/accept",
            &stranger.token,
            json!({"token": tokens[1]}),
        )
        .await,
        StatusCode::GONE,
        "invitation_revoked",
    );
    consortium_invitation::Entity::update_many()
        .col_expr(
            consortium_invitation::Column::ExpiresAt,
            sea_orm::sea_query::Expr::value(chrono::Utc::now() - chrono::Duration::hours(1)),
        )
        .filter(consortium_invitation::Column::Id.eq(ids[2].parse::<uuid::Uuid>().unwrap()))
        .exec(&app.state.db)
        .await
        .unwrap();

    // The owner's list, two per page, oldest first.
    let first = app
        .get(&format!("{invitations}?limit=2"), &founder.token)
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = app
        .get(
            &format!("{invitations}?limit=2&cursor={cursor}"),
            &founder.token,
        )
        .await;
    assert!(second.body["next_cursor"].is_null(), "{}", second.text);
    let listed: Vec<(String, String)> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second.body["items"].as_array().unwrap())
        .map(|i| {
            (
                i["organisation"].as_str().unwrap().to_string(),
                i["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("Delta", "accepted"),
        ("Echo", "revoked"),
        ("Foxtrot", "expired"),
        ("Hotel", "pending"),
    ];
    assert_eq!(
        listed,
        expected.map(|(o, s)| (o.to_string(), s.to_string())),
        "{}",
        first.text
    );
    assert!(!first.text.contains("token"), "{}", first.text);
    let echo = consortium_member::Entity::find()
        .filter(consortium_member::Column::Organisation.eq("Echo"))
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo.state, "Rejected");

    // Isolation: a member tenant may not list the owner's invitations; a stranger
    // sees nothing at all; received lists are each tenant's own.
    assert_problem(
        &app.get(&invitations, &delta.token).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    for (method_get, path) in [(true, invitations.clone()), (false, revoke(&ids[3]))] {
        let response = if method_get {
            app.get(&path, &stranger.token).await
        } else {
            app.delete(&path, &stranger.token).await
        };
        assert_problem(&response, StatusCode::NOT_FOUND, "not_found");
    }
    let theirs = app
        .get("/v1/consortium/invitations/received", &stranger.token)
        .await;
    assert_eq!(theirs.body["items"], json!([]), "{}", theirs.text);
    let delta_received = app
        .get("/v1/consortium/invitations/received", &delta.token)
        .await;
    assert_eq!(delta_received.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(delta_received.body["items"][0]["status"], "accepted");
    let founder_received = app
        .get("/v1/consortium/invitations/received", &founder.token)
        .await;
    assert_eq!(founder_received.body["items"], json!([]));
}

on_both_databases!(
    consortium_invite_accept_approve_admit,
    invitations_expire_and_keys_are_checked,
    an_admitted_member_is_removed_by_the_threshold_of_the_others,
    invitations_are_listed_with_their_status_and_revoked,
);
