//! The console's built-in autoscaler wired end to end over a real database: a fake
//! metrics source (the recording provisioner's `network_load`) → the shared policy's
//! decision → the network's spec, generation, audit log and the provisioner's `apply`,
//! exactly as a user's scale request changes them. Real: the router, SQLite, the store,
//! the audit log and the policy; fake: the load figures and the clock (passes are run
//! with explicit times, so the stabilization window and cooldown are deterministic).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test scenarios

mod common;

use axum::http::StatusCode;
use common::{Call, TestApp};
use serde_json::{Value, json};
use trellis_autoscale::Decision;
use trellis_console::networks::autoscale::{ACTION, ACTOR, Autoscaler};
use trellis_console::provisioner::{NetworkLoad, ShardReading};
use uuid::Uuid;

/// `in_service` shards whose committed-transactions counters all read `txs`.
fn load(in_service: u16, txs: u64) -> NetworkLoad {
    NetworkLoad {
        in_service,
        scaling: false,
        shards: (0..in_service)
            .map(|s| {
                (
                    s,
                    Ok(ShardReading {
                        txs_committed: txs,
                        mempool_depth: 0,
                    }),
                )
            })
            .collect(),
    }
}

/// One pass at `now` with the fake source reporting `reading`; the decision for `id`.
async fn pass(
    app: &TestApp,
    autoscaler: &mut Autoscaler,
    id: Uuid,
    reading: NetworkLoad,
    now: f64,
) -> Decision {
    *app.provisioner.load.lock().unwrap() = Some(reading);
    let outcomes = autoscaler.pass(&app.state, now).await.unwrap();
    outcomes
        .into_iter()
        .find(|o| o.network == id)
        .map(|o| o.decision)
        .unwrap_or_else(|| panic!("no decision for {id}"))
}

async fn create(app: &TestApp, token: &str, body: Value) -> Uuid {
    let created = app.post("/v1/networks", token, body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    created.body["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn sustained_load_scales_out_then_idle_scales_in_after_the_cooldown() {
    let app = TestApp::sqlite().await;
    let org = app.signup("Loaded", "o@load.example").await;
    let busy = create(
        &app,
        &org.token,
        json!({
            "name": "busy", "mode": "public",
            "shards": {"count": 1, "min": 1, "max": 3},
            "autoscaling": {"enabled": true, "target_tx_per_second_per_shard": 100,
                "target_mempool_depth": 1000, "cooldown_seconds": 60,
                "stabilization_window_seconds": 20},
        }),
    )
    .await;
    // Same load, autoscaling off: never touched.
    let manual = create(
        &app,
        &org.token,
        json!({"name": "manual", "mode": "public", "shards": {"count": 1, "min": 1, "max": 3}}),
    )
    .await;
    let mut autoscaler = Autoscaler::default();

    // 300 tx/s on one shard against a target of 100: three shards once it held 20 s.
    let first = pass(&app, &mut autoscaler, busy, load(1, 0), 0.0).await;
    assert!(matches!(first, Decision::Hold { .. }), "{first:?}");
    for t in [10u32, 20] {
        let held = pass(
            &app,
            &mut autoscaler,
            busy,
            load(1, u64::from(t) * 300),
            t.into(),
        )
        .await;
        assert!(matches!(held, Decision::Hold { .. }), "at {t}: {held:?}");
    }
    let scaled = pass(&app, &mut autoscaler, busy, load(1, 9_000), 30.0).await;
    let Decision::Scale { to: 3, reason } = scaled else {
        panic!("{scaled:?}")
    };

    // The change went the way of a user's scale request: a new generation with the new
    // count, handed to the provisioner, and an audit entry saying why.
    let got = app.get(&format!("/v1/networks/{busy}"), &org.token).await;
    assert_eq!(got.body["spec"]["shards"]["count"], 3, "{}", got.text);
    assert_eq!(got.body["generation"], 2);
    assert_eq!(got.body["provisioned_generation"], 2);
    let applied: Vec<_> = app
        .provisioner
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Apply(d) if d.network.network_id == busy => Some(d),
            _ => None,
        })
        .collect();
    let last = applied.last().unwrap();
    assert_eq!((last.generation, last.spec.shards.count), (2, 3));
    let audit = app.get("/v1/audit-events", &org.token).await;
    let entries: Vec<&Value> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == ACTION)
        .collect();
    assert_eq!(entries.len(), 1, "{}", audit.text);
    assert_eq!(entries[0]["actor"], ACTOR);
    assert_eq!(entries[0]["target"], format!("network:{busy}"));
    assert_eq!(entries[0]["details"]["from"], 1);
    assert_eq!(entries[0]["details"]["to"], 3);
    assert_eq!(entries[0]["details"]["reason"], reason.as_str());
    // The network says so too (the operator's `status.autoscaler`), alone and listed.
    assert_eq!(got.body["autoscaler"]["from"], 1, "{}", got.text);
    assert_eq!(got.body["autoscaler"]["to"], 3);
    assert_eq!(got.body["autoscaler"]["reason"], reason.as_str());
    assert_eq!(
        got.body["autoscaler"]["last_scale_time"],
        entries[0]["created_at"]
    );
    let listed = app.get("/v1/networks", &org.token).await;
    let items = listed.body["items"].as_array().unwrap();
    let of = |id: Uuid| {
        items
            .iter()
            .find(|n| n["id"] == id.to_string())
            .unwrap()
            .clone()
    };
    assert_eq!(of(busy)["autoscaler"]["to"], 3, "{}", listed.text);
    assert!(of(manual).get("autoscaler").is_none(), "{}", listed.text);
    let untouched = app.get(&format!("/v1/networks/{manual}"), &org.token).await;
    assert!(untouched.body.get("autoscaler").is_none());
    assert_eq!(untouched.body["generation"], 1);
    assert_eq!(untouched.body["spec"]["shards"]["count"], 1);

    // The load ends: the new shards need a first reading, the window must see only
    // low recommendations, and the 60 s cooldown after the change at 30 s holds.
    let idle = |t: u32| (load(3, 9_000), f64::from(t));
    let (l, t) = idle(40);
    let new_shards = pass(&app, &mut autoscaler, busy, l, t).await;
    let Decision::Hold { reason } = new_shards else {
        panic!("{new_shards:?}")
    };
    assert!(reason.contains("[1, 2]"), "{reason}");
    let mut cooled = false;
    for t in [50u32, 60, 70, 80] {
        let (l, t) = idle(t);
        let decision = pass(&app, &mut autoscaler, busy, l, t).await;
        let Decision::Hold { reason } = decision else {
            panic!("scaled inside the cooldown at {t}: {decision:?}")
        };
        cooled |= reason.starts_with("cooldown");
    }
    assert!(cooled, "the cooldown was the reason to hold at least once");
    let (l, t) = idle(100);
    let back = pass(&app, &mut autoscaler, busy, l, t).await;
    assert!(matches!(back, Decision::Scale { to: 1, .. }), "{back:?}");
    let got = app.get(&format!("/v1/networks/{busy}"), &org.token).await;
    assert_eq!(got.body["spec"]["shards"]["count"], 1);
    assert_eq!(got.body["generation"], 3);
    // The newest change is the one shown.
    assert_eq!(
        (
            &got.body["autoscaler"]["from"],
            &got.body["autoscaler"]["to"]
        ),
        (&json!(3), &json!(1)),
        "{}",
        got.text
    );
}

#[tokio::test]
async fn a_provisioner_that_does_not_measure_leaves_networks_alone() {
    let app = TestApp::sqlite().await;
    let org = app.signup("Quiet", "o@quiet.example").await;
    let id = create(
        &app,
        &org.token,
        json!({
            "name": "elsewhere", "mode": "public",
            "shards": {"count": 1, "min": 1, "max": 3},
            "autoscaling": {"enabled": true, "target_tx_per_second_per_shard": 1,
                "cooldown_seconds": 30, "stabilization_window_seconds": 0},
        }),
    )
    .await;
    let mut autoscaler = Autoscaler::default();
    // `kube` mode: the operator autoscales; the console's loop finds nothing to do.
    for t in 0..5u32 {
        let outcomes = autoscaler
            .pass(&app.state, f64::from(t) * 10.0)
            .await
            .unwrap();
        assert!(outcomes.is_empty(), "{outcomes:?}");
    }
    let got = app.get(&format!("/v1/networks/{id}"), &org.token).await;
    assert_eq!(got.body["generation"], 1);
}

#[tokio::test]
async fn a_refused_change_holds_with_the_reason_and_starts_no_cooldown() {
    let app = TestApp::sqlite().await;
    let org = app.signup("Downgraded", "o@down.example").await;
    let id = create(
        &app,
        &org.token,
        json!({
            "name": "wide", "mode": "public",
            "shards": {"count": 1, "min": 1, "max": 9},
            "autoscaling": {"enabled": true, "target_tx_per_second_per_shard": 100,
                "cooldown_seconds": 600, "stabilization_window_seconds": 0},
        }),
    )
    .await;
    // The tenant's plan no longer allows 9 shards: the change the policy wants is refused.
    app.set_plan(&org, "free").await;
    let mut autoscaler = Autoscaler::default();
    pass(&app, &mut autoscaler, id, load(1, 0), 0.0).await;
    let refused = pass(&app, &mut autoscaler, id, load(1, 2_000), 10.0).await;
    let Decision::Hold { reason } = refused else {
        panic!("{refused:?}")
    };
    assert!(reason.contains("at most 8 shards"), "{reason}");
    let got = app.get(&format!("/v1/networks/{id}"), &org.token).await;
    assert_eq!(got.body["generation"], 1);
    assert!(autoscale_audit(&app, &org.token).await.is_empty());
    // Nothing changed, so no cooldown: once the plan allows it, the next pass scales.
    app.set_plan(&org, "team").await;
    let scaled = pass(&app, &mut autoscaler, id, load(1, 4_000), 20.0).await;
    assert!(
        matches!(scaled, Decision::Scale { to: 2, .. }),
        "{scaled:?}"
    );
    assert_eq!(autoscale_audit(&app, &org.token).await.len(), 1);
}

async fn autoscale_audit(app: &TestApp, token: &str) -> Vec<Value> {
    let audit = app.get("/v1/audit-events", token).await;
    audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == ACTION)
        .cloned()
        .collect()
}

#[tokio::test]
async fn the_cooldown_survives_a_console_restart() {
    let app = TestApp::sqlite().await;
    let org = app.signup("Restarted", "o@restart.example").await;
    let id = create(
        &app,
        &org.token,
        json!({
            "name": "steady", "mode": "public",
            "shards": {"count": 1, "min": 1, "max": 4},
            "autoscaling": {"enabled": true, "target_tx_per_second_per_shard": 100,
                "cooldown_seconds": 600, "stabilization_window_seconds": 0},
        }),
    )
    .await;
    // The audit log's clock is the real one: so is this test's.
    let t0 = chrono::Utc::now().timestamp() as f64;
    let mut before = Autoscaler::default();
    pass(&app, &mut before, id, load(1, 0), t0).await;
    let scaled = pass(&app, &mut before, id, load(1, 2_000), t0 + 10.0).await;
    assert!(
        matches!(scaled, Decision::Scale { to: 2, .. }),
        "{scaled:?}"
    );
    // A new console process: its memory is empty, the audit log is not.
    let mut after = Autoscaler::default();
    pass(&app, &mut after, id, load(2, 2_000), t0 + 20.0).await;
    let held = pass(&app, &mut after, id, load(2, 20_000), t0 + 30.0).await;
    let Decision::Hold { reason } = held else {
        panic!("scaled inside the cooldown after a restart: {held:?}")
    };
    assert!(reason.starts_with("cooldown"), "{reason}");
}
