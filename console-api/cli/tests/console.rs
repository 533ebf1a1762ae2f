//! `trellis consortium` invitations and removals against a real console
//! (`trellis-console serve` on 127.0.97.1, SQLite, provisioning nothing): sent and
//! received lists, revocation, and the removal's approvals and refusals.

// A test: failing is its job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use support::{User, start_console};

fn member_id(members: &Value, organisation: &str) -> String {
    members["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["organisation"] == organisation)
        .unwrap_or_else(|| panic!("no member {organisation} in {members}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn invitations_are_listed_and_revoked_and_removals_need_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (_console, url) = start_console(&dir.path().join("console"));
    let user = |name: &str| User {
        config: dir.path().join(format!("{name}.json")),
        console: url.clone(),
    };
    let (acme, globex, initech) = (user("acme"), user("globex"), user("initech"));
    acme.signup("Acme Corp", "ops@acme.example");
    globex.signup("Globex", "it@globex.example");
    initech.signup("Initech", "it@initech.example");
    let globex_tenant = globex.json(&["whoami"])["tenant"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Three founding members, all Acme's.
    acme.ok(&[
        "networks",
        "create",
        "trade",
        "--mode",
        "consortium",
        "--member",
        "Acme Corp",
        "--member",
        "Acme Labs:1",
        "--member",
        "Acme Ventures:1",
    ]);
    let network = acme.json(&["networks", "get", "trade"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let members = acme.json(&["consortium", "members", "trade"]);
    let (corp, labs) = (
        member_id(&members, "Acme Corp"),
        member_id(&members, "Acme Labs"),
    );

    // Removing one of three: the other two are fewer than the threshold (3).
    let err = acme.refused(&["consortium", "remove", "trade", &labs]);
    assert!(err.contains("409 below_quorum"), "{err}");

    // An invitation for Globex only, and one for anybody; both pending.
    let for_globex = acme.json(&[
        "consortium",
        "invite",
        "trade",
        "--organisation",
        "Globex",
        "--nodes",
        "1",
        "--tenant",
        &globex_tenant,
    ]);
    let open = acme.json(&["consortium", "invite", "trade", "--organisation", "Hooli"]);
    let sent = acme.json(&["consortium", "invitations", "trade"]);
    let items = sent["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{sent}");
    assert!(items.iter().all(|i| i["status"] == "pending"), "{sent}");
    assert_eq!(
        items[0]["invited_tenant_id"],
        globex_tenant.as_str(),
        "{sent}"
    );
    let table = acme.ok(&["consortium", "invitations", "trade"]);
    assert!(
        table.contains("STATUS") && table.contains("Hooli") && table.contains("pending"),
        "{table}"
    );
    // Only the owner sees what it sent; Globex sees what names it.
    let err = globex.refused(&["consortium", "invitations", &network]);
    assert!(err.contains("404") || err.contains("403"), "{err}");
    let received = globex.json(&["consortium", "invitations", "--received"]);
    let got = received["items"].as_array().unwrap();
    assert_eq!(got.len(), 1, "{received}");
    assert_eq!(got[0]["organisation"], "Globex");
    assert!(
        initech.json(&["consortium", "invitations", "--received"])["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Revoking the open invitation: it shows as revoked, its token stops working, and
    // revoking it again is refused.
    let open_id = items.iter().find(|i| i["organisation"] == "Hooli").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let revoked = acme.json(&["consortium", "revoke", "trade", &open_id]);
    assert_eq!(revoked["status"], "revoked", "{revoked}");
    let err = initech.refused(&["consortium", "accept", open["token"].as_str().unwrap()]);
    assert!(err.contains("410 invitation_revoked"), "{err}");
    let err = acme.refused(&["consortium", "revoke", "trade", &open_id]);
    assert!(err.contains("409 invitation_not_pending"), "{err}");
    let err = globex.refused(&["consortium", "revoke", &network, &open_id]);
    assert!(err.contains("404") || err.contains("403"), "{err}");

    // The named invitation: Initech cannot accept it, Globex can; Acme admits Globex.
    let token = for_globex["token"].as_str().unwrap();
    let err = initech.refused(&["consortium", "accept", token]);
    assert!(err.contains("403"), "{err}");
    let globex_member = globex.json(&["consortium", "accept", token])["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A proposed member is rejected, not removed.
    let err = acme.refused(&["consortium", "remove", "trade", &globex_member]);
    assert!(err.contains("409 member_not_admitted"), "{err}");
    let admitted = acme.json(&["consortium", "approve", "trade", &globex_member]);
    assert_eq!(admitted["member"]["state"], "Admitted", "{admitted}");
    let received = globex.json(&["consortium", "invitations", "--received"]);
    assert_eq!(received["items"][0]["status"], "accepted", "{received}");

    // Four members: removing Globex needs 3 approvals, from the others. Globex cannot
    // approve its own removal; Acme approves as one member first, then as the rest.
    let err = globex.refused(&["consortium", "remove", &network, &globex_member]);
    assert!(err.contains("403"), "{err}");
    let err = acme.refused(&[
        "consortium",
        "remove",
        "trade",
        &globex_member,
        "--as-member",
        &globex_member,
    ]);
    assert!(err.contains("403"), "{err}");
    let first = acme.json(&[
        "consortium",
        "remove",
        "trade",
        &globex_member,
        "--as-member",
        &corp,
    ]);
    assert_eq!(first["approvals"], 1, "{first}");
    assert_eq!(first["threshold"], 3, "{first}");
    assert_eq!(first["member"]["state"], "Admitted", "{first}");
    let err = acme.refused(&[
        "consortium",
        "remove",
        "trade",
        &globex_member,
        "--as-member",
        &corp,
    ]);
    assert!(err.contains("409 already_approved"), "{err}");
    let members = acme.ok(&["consortium", "members", "trade"]);
    assert!(members.contains("REMOVAL"), "{members}");
    let done = acme.ok(&["consortium", "remove", "trade", &globex_member]);
    assert!(
        done.contains("3 removal approvals of 3") && done.contains("Removed"),
        "{done}"
    );
}

/// `--validator-pool` on create and `networks pool` reach the console's spec (a real
/// console process, SQLite); a consortium's pool is refused with the field named.
#[test]
fn the_validator_pool_is_set_on_create_and_resized() {
    let dir = tempfile::tempdir().unwrap();
    let (_console, url) = start_console(&dir.path().join("console"));
    let acme = User {
        config: dir.path().join("acme.json"),
        console: url,
    };
    acme.signup("Acme Corp", "ops@acme.example");
    acme.ok(&[
        "networks",
        "create",
        "payments",
        "--mode",
        "public",
        "--validator-pool",
        "2",
    ]);
    let network = acme.json(&["networks", "get", "payments"]);
    assert_eq!(network["spec"]["validator_pool"], 2, "{network}");
    acme.ok(&["networks", "pool", "payments", "--validators", "3"]);
    let network = acme.json(&["networks", "get", "payments"]);
    assert_eq!(network["spec"]["validator_pool"], 3, "{network}");
    let err = acme.refused(&[
        "networks",
        "create",
        "trade",
        "--mode",
        "consortium",
        "--member",
        "Acme Corp",
        "--validator-pool",
        "1",
    ]);
    assert!(err.contains("validator_pool"), "{err}");
}
