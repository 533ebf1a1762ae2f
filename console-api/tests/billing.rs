//! Metering, plans, quotas, usage and invoices with a hand-driven clock, on SQLite and
//! PostgreSQL: figures are compared with values computed by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test scenarios are run by #[test] wrappers

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use chrono::{DateTime, Utc};
use common::{TestApp, assert_problem};
use serde_json::{Value, json};
use trellis_billing::clock::{Clock, ManualClock};
use trellis_billing::meter::Meter;
use trellis_console::billing::{Billing, BillingSettings, counters, metering};

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// The app with a manual clock (windows close as soon as they end: no grace period).
fn with_clock(mut app: TestApp, start: &str) -> (TestApp, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(at(start)));
    let settings = BillingSettings {
        metering_grace_seconds: 0,
        ..BillingSettings::default()
    };
    app.state.billing = Arc::new(Billing::new(clock.clone(), settings));
    app.router = trellis_console::app::router(app.state.clone());
    (app, clock)
}

fn sum_of(report: &Value, meter: &str) -> i64 {
    report["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|record| record["meter"] == meter)
        .map(|record| record["quantity"].as_i64().unwrap())
        .sum()
}

/// Create 10:15 (12 nodes), scale 11:30 (16 nodes), pause 12:00, resume 13:45, delete
/// 14:10. By hand: node-minutes 75×12 + 30×16 + 25×16 = 1,780 = 106,800 node-seconds;
/// GiB-minutes 75×120 + 160×160 = 34,600 = 2,076,000 GiB-seconds (pause keeps storage).
/// Metering runs late, is cancelled at arbitrary points, restarts, and repeats.
async fn lifecycle_is_metered_exactly(app: TestApp) {
    let (app, clock) = with_clock(app, "2026-11-02T10:15:00Z");
    let org = app.signup("Meters", "o@meters.example").await;
    let created = app.create_network(&org.token, "ledger").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_string();
    let network = uuid::Uuid::parse_str(&id).unwrap();
    let tenant = uuid::Uuid::parse_str(&org.tenant_id).unwrap();

    clock.set(at("2026-11-02T10:30:00Z"));
    // The collector's share: 50,000 finalized transactions in the 10:00 window.
    counters::add(
        &app.state.db,
        tenant,
        network,
        Meter::Transactions,
        clock.now().timestamp(),
        50_000,
    )
    .await
    .unwrap();

    clock.set(at("2026-11-02T11:30:00Z"));
    let scaled = app
        .patch(
            &format!("/v1/networks/{id}"),
            &org.token,
            json!({"shards": {"count": 3}}),
        )
        .await;
    assert_eq!(scaled.status, StatusCode::OK, "{}", scaled.text);

    clock.set(at("2026-11-02T12:00:00Z"));
    let paused = app
        .patch(
            &format!("/v1/networks/{id}"),
            &org.token,
            json!({"paused": true}),
        )
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text);

    // A pass at 12:40 closes the 10:00 and 11:00 windows.
    clock.set(at("2026-11-02T12:40:00Z"));
    let first = metering::meter_once(&app.state.db, &app.state.billing)
        .await
        .unwrap();
    assert_eq!(first.windows, 2);

    clock.set(at("2026-11-02T13:20:00Z"));
    // The RPC proxy's share, flushed by the next pass into the 13:00 window.
    app.state
        .billing
        .rpc_requests
        .record(tenant, network, 1_234_567);
    // The metering loop's tick at 13:20 flushes them and closes the 12:00 window.
    let second = metering::meter_once(&app.state.db, &app.state.billing)
        .await
        .unwrap();
    assert_eq!(
        (second.windows, second.rpc_requests_flushed),
        (1, 1_234_567)
    );

    clock.set(at("2026-11-02T13:45:00Z"));
    let resumed = app
        .patch(
            &format!("/v1/networks/{id}"),
            &org.token,
            json!({"paused": false}),
        )
        .await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text);
    clock.set(at("2026-11-02T14:10:00Z"));
    let deleted = app.delete(&format!("/v1/networks/{id}"), &org.token).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);

    // The console was down until 16:05. Passes are cancelled at arbitrary points
    // (a transaction dropped mid-way rolls back), then a pass completes, then repeats.
    clock.set(at("2026-11-02T16:05:00Z"));
    for micros in [1, 10, 100, 300, 1_000, 3_000, 10_000] {
        let _ = tokio::time::timeout(
            Duration::from_micros(micros),
            metering::meter_once(&app.state.db, &app.state.billing),
        )
        .await;
    }
    // A restarted console: new state, same database.
    let restarted = Billing::new(
        clock.clone(),
        BillingSettings {
            metering_grace_seconds: 0,
            ..BillingSettings::default()
        },
    );
    metering::meter_once(&app.state.db, &restarted)
        .await
        .unwrap();
    let again = metering::meter_once(&app.state.db, &restarted)
        .await
        .unwrap();
    assert_eq!(again.windows, 0, "nothing is left to meter");

    let usage = app
        .get(
            "/v1/billing/usage?from=2026-11-02T00:00:00Z&to=2026-11-03T00:00:00Z",
            &org.token,
        )
        .await;
    assert_eq!(usage.status, StatusCode::OK, "{}", usage.text);
    assert_eq!(sum_of(&usage.body, "node_hours.standard"), 106_800);
    assert_eq!(sum_of(&usage.body, "storage_gib_hours"), 2_076_000);
    assert_eq!(sum_of(&usage.body, "transactions"), 50_000);
    assert_eq!(
        sum_of(&usage.body, "rpc_requests"),
        1_234_567,
        "{}",
        usage.text
    );
    // Per window: 10:00 45×12 min, 11:00 30×12 + 30×16, 12:00 paused, 13:00 15×16,
    // 14:00 10×16 (node-minutes), in node-seconds.
    let node_windows: Vec<(String, i64)> = usage.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["meter"] == "node_hours.standard")
        .map(|r| {
            (
                r["window_start"].as_str().unwrap().to_string(),
                r["quantity"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        node_windows,
        vec![
            ("2026-11-02T10:00:00Z".to_string(), 32_400),
            ("2026-11-02T11:00:00Z".to_string(), 50_400),
            ("2026-11-02T13:00:00Z".to_string(), 14_400),
            ("2026-11-02T14:00:00Z".to_string(), 9_600),
        ]
    );
    let rpc_window = usage.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["meter"] == "rpc_requests")
        .unwrap()["window_start"]
        .clone();
    assert_eq!(rpc_window, "2026-11-02T13:00:00Z");

    // The team plan: 0.12/node-hour, 0.0002/GiB-hour, 0.00001/tx, 0.000001/request.
    // 29.6667 node-h → 3.56; 576.6667 GiB-h → 0.115333 → 0.12; 0.50; 1.234567 → 1.23.
    let invoice = app.get("/v1/billing/invoices/2026-11", &org.token).await;
    assert_eq!(invoice.status, StatusCode::OK, "{}", invoice.text);
    let amounts: Vec<(String, String)> = invoice.body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["meter"].as_str().unwrap().to_string(),
                l["amount"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        amounts,
        vec![
            ("node_hours.standard".to_string(), "3.56".to_string()),
            ("storage_gib_hours".to_string(), "0.12".to_string()),
            ("transactions".to_string(), "0.50".to_string()),
            ("rpc_requests".to_string(), "1.23".to_string()),
        ]
    );
    assert_eq!(invoice.body["total"], "5.41");
    assert_eq!(invoice.body["status"], "open");
    assert_eq!(invoice.body["lines"][0]["network_name"], "ledger");
    let csv = app
        .get("/v1/billing/invoices/2026-11?format=csv", &org.token)
        .await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(
        csv.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        csv.text.contains(&format!(
            "2026-11,{id},ledger,node_hours.standard,29.666667,node-hour,0.12,3.56,USD"
        )),
        "{}",
        csv.text
    );
    assert!(
        csv.text.ends_with("2026-11,,,total,,,,5.41,USD\r\n"),
        "{}",
        csv.text
    );

    let events = app
        .get(
            &format!("/v1/billing/usage/events?from=2026-11-02T00:00:00Z&to=2026-11-03T00:00:00Z&meter=transactions&network_id={id}"),
            &org.token,
        )
        .await;
    assert_eq!(events.status, StatusCode::OK, "{}", events.text);
    assert_eq!(
        events.headers["content-type"],
        "application/cloudevents-batch+json"
    );
    let events = events.body.as_array().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["specversion"], "1.0");
    assert_eq!(events[0]["type"], "io.trellis.usage.v1");
    assert_eq!(events[0]["data"]["quantity"], 50_000);

    // Another tenant sees none of it, and not the network either.
    let other = app.signup("Others", "o@others.example").await;
    let theirs = app.get("/v1/billing/invoices/2026-11", &other.token).await;
    assert_eq!(theirs.body["lines"], json!([]));
    assert_eq!(theirs.body["total"], "0.00");
    let probe = app
        .get(&format!("/v1/billing/usage?from=2026-11-02T00:00:00Z&to=2026-11-03T00:00:00Z&network_id={id}"), &other.token)
        .await;
    assert_problem(&probe, StatusCode::NOT_FOUND, "not_found");
}

/// Bad ranges, unknown meters, bad periods and formats get field-level errors.
async fn bad_usage_queries_are_refused_clearly(app: TestApp) {
    let org = app.signup("Askers", "o@askers.example").await;
    for (query, field) in [
        ("", "from"),
        ("from=yesterday&to=2026-11-02T00:00:00Z", "from"),
        ("from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z", "to"),
        ("from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "to"),
        (
            "from=2026-11-01T00:00:00Z&to=2026-11-02T00:00:00Z&meter=cpu_seconds",
            "meter",
        ),
        (
            "from=2026-11-01T00:00:00Z&to=2026-11-02T00:00:00Z&network_id=nope",
            "network_id",
        ),
    ] {
        let response = app
            .get(&format!("/v1/billing/usage?{query}"), &org.token)
            .await;
        assert_problem(
            &response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert!(
            response.body["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"] == field),
            "{query}: {}",
            response.text
        );
    }
    let unknown = app
        .get(
            "/v1/billing/usage?from=2026-11-01T00:00:00Z&to=2026-11-02T00:00:00Z&meter=gpu_hours",
            &org.token,
        )
        .await;
    assert!(
        unknown.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("node_hours.standard")
    );
    for period in ["2026-13", "last-month", "2026-1"] {
        let response = app
            .get(&format!("/v1/billing/invoices/{period}"), &org.token)
            .await;
        assert_problem(
            &response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
    let format = app
        .get("/v1/billing/invoices/2026-11?format=xml", &org.token)
        .await;
    assert_problem(
        &format,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}

/// Plans are edited by platform admins only, prices are validated, and the stored
/// quotas refuse the request that would exceed them.
async fn plans_are_admin_edited_and_quotas_enforced(app: TestApp) {
    let platform = app.signup("Platform", "root@platform.example").await;
    let tenant = app.signup_on_free_plan("Small", "o@small.example").await;
    let plan = json!({
        "quotas": {"networks": 2, "nodes": 24, "shards_per_network": 2, "storage_gib": 240},
        "prices": {"node_hours.standard": "0.05", "transactions": "0.00000125"},
    });
    // Not yet a platform admin; and a tenant owner is never one by default.
    let refused = app
        .call(
            Method::PUT,
            "/v1/admin/plans/free",
            Some(&platform.token),
            Some(plan.clone()),
        )
        .await;
    assert_problem(&refused, StatusCode::FORBIDDEN, "forbidden");
    trellis_console::billing::admin::grant(
        &app.state.db,
        uuid::Uuid::parse_str(&platform.tenant_id).unwrap(),
        0,
    )
    .await
    .unwrap();
    let member = app
        .user_with_role(&platform, "m@platform.example", "member")
        .await;
    let refused = app
        .call(
            Method::PUT,
            "/v1/admin/plans/free",
            Some(&member),
            Some(plan.clone()),
        )
        .await;
    assert_problem(&refused, StatusCode::FORBIDDEN, "forbidden");

    for (prices, field) in [
        (
            json!({"node_hours.standard": "-0.01"}),
            "prices.node_hours.standard",
        ),
        (
            json!({"node_hours.standard": "99999999"}),
            "prices.node_hours.standard",
        ),
        (
            json!({"transactions": "0.000000001"}),
            "prices.transactions",
        ),
        (json!({"transactions": "cheap"}), "prices.transactions"),
        (json!({"gpu_hours": "1"}), "prices.gpu_hours"),
    ] {
        let bad = app
            .call(
                Method::PUT,
                "/v1/admin/plans/free",
                Some(&platform.token),
                Some(json!({"quotas": plan["quotas"], "prices": prices})),
            )
            .await;
        assert_problem(&bad, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(bad.body["errors"][0]["field"], field, "{}", bad.text);
    }
    let absurd_quota = app
        .call(
            Method::PUT,
            "/v1/admin/plans/free",
            Some(&platform.token),
            Some(json!({"quotas": {"networks": 1_000_000_000u64, "nodes": 1, "shards_per_network": 1, "storage_gib": 1}})),
        )
        .await;
    assert_problem(
        &absurd_quota,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );

    let stored = app
        .call(
            Method::PUT,
            "/v1/admin/plans/free",
            Some(&platform.token),
            Some(plan),
        )
        .await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.text);
    assert_eq!(stored.body["prices"]["transactions"], "0.00000125");
    let catalogue = app.get("/v1/plans", &tenant.token).await;
    assert!(
        catalogue.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "free" && p["quotas"]["networks"] == 2)
    );

    // 4 beacon + 1 shard × 4 = 8 nodes (max scale), 80 GiB: two fit, not three.
    let small = |name: &str| json!({"name": name, "mode": "public", "shards": {"count": 1, "min": 1, "max": 1}});
    assert_eq!(
        app.post("/v1/networks", &tenant.token, small("a"))
            .await
            .status,
        StatusCode::CREATED
    );
    let second = app.post("/v1/networks", &tenant.token, small("b")).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text);
    let third = app.post("/v1/networks", &tenant.token, small("c")).await;
    assert_problem(&third, StatusCode::FORBIDDEN, "quota_exceeded");
    assert!(
        third.body["detail"]
            .as_str()
            .unwrap()
            .contains("allows 2 networks")
    );
    // Scaling past the shard quota is refused and changes nothing.
    let id = second.body["id"].as_str().unwrap();
    let wide = app
        .patch(
            &format!("/v1/networks/{id}"),
            &tenant.token,
            json!({"shards": {"max": 3}}),
        )
        .await;
    assert_problem(&wide, StatusCode::FORBIDDEN, "quota_exceeded");
    // Nodes: 16 used; max 2 shards here → 4 + 8 = 12 → 20 ≤ 24 fits... storage 200 ≤ 240.
    let grown = app
        .patch(
            &format!("/v1/networks/{id}"),
            &tenant.token,
            json!({"shards": {"max": 2}}),
        )
        .await;
    assert_eq!(grown.status, StatusCode::OK, "{}", grown.text);
    let mine = app.get("/v1/billing/plan", &tenant.token).await;
    assert_eq!(
        mine.body["used"],
        json!({"networks": 2, "nodes": 20, "storage_gib": 200})
    );

    // Moving the tenant to another plan.
    let moved = app
        .call(
            Method::PUT,
            &format!("/v1/admin/tenants/{}/plan", tenant.tenant_id),
            Some(&platform.token),
            Some(json!({"plan": "team"})),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    assert_eq!(
        app.post("/v1/networks", &tenant.token, small("c"))
            .await
            .status,
        StatusCode::CREATED
    );
    let unknown = app
        .call(
            Method::PUT,
            &format!("/v1/admin/tenants/{}/plan", tenant.tenant_id),
            Some(&platform.token),
            Some(json!({"plan": "platinum"})),
        )
        .await;
    assert_problem(
        &unknown,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let nobody = app
        .call(
            Method::PUT,
            &format!("/v1/admin/tenants/{}/plan", uuid::Uuid::now_v7()),
            Some(&platform.token),
            Some(json!({"plan": "team"})),
        )
        .await;
    assert_problem(&nobody, StatusCode::NOT_FOUND, "not_found");
}

/// The records and the usage still accruing, per meter, as (recorded, accruing) sums.
fn split_sums(report: &Value, meter: &str) -> (i64, i64) {
    let mut sums = (0, 0);
    for record in report["records"].as_array().unwrap() {
        if record["meter"] != meter {
            continue;
        }
        let quantity = record["quantity"].as_i64().unwrap();
        if record["accruing"] == true {
            sums.1 += quantity;
        } else {
            sums.0 += quantity;
        }
    }
    sums
}

/// The current period shows usage before its windows are recorded: the open window so
/// far, and windows a stopped metering loop has not closed (the console was down).
/// Recorded and accruing usage never overlap: the sum is the same before and after
/// each metering pass. Create 10:15 (12 nodes); by hand, node-seconds up to T are
/// (T − 10:15) × 12.
async fn usage_so_far_shows_and_never_counts_twice(app: TestApp) {
    let (app, clock) = with_clock(app, "2026-11-02T10:15:00Z");
    let org = app.signup("Accrual", "o@accrual.example").await;
    let created = app.create_network(&org.token, "ledger").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_string();
    let network = uuid::Uuid::parse_str(&id).unwrap();
    let tenant = uuid::Uuid::parse_str(&org.tenant_id).unwrap();
    let day = "/v1/billing/usage?from=2026-11-02T00:00:00Z&to=2026-11-03T00:00:00Z";

    // 10:45, nothing metered yet: 30 minutes of 12 nodes and the counted transactions.
    clock.set(at("2026-11-02T10:45:00Z"));
    counters::add(
        &app.state.db,
        tenant,
        network,
        Meter::Transactions,
        clock.now().timestamp(),
        7_000,
    )
    .await
    .unwrap();
    let usage = app.get(day, &org.token).await;
    assert_eq!(usage.status, StatusCode::OK, "{}", usage.text);
    assert_eq!(split_sums(&usage.body, "node_hours.standard"), (0, 21_600));
    assert_eq!(split_sums(&usage.body, "transactions"), (0, 7_000));
    let open = usage.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["meter"] == "node_hours.standard")
        .unwrap()
        .clone();
    assert_eq!(open["window_start"], "2026-11-02T10:00:00Z", "{open}");
    assert_eq!(open["window_end"], "2026-11-02T10:45:00Z", "{open}");
    // Filters apply to it like to records.
    let only = app
        .get(
            &format!("{day}&meter=transactions&network_id={id}"),
            &org.token,
        )
        .await;
    assert_eq!(
        only.body["records"].as_array().unwrap().len(),
        1,
        "{}",
        only.text
    );
    // The invoice of the open period carries it.
    let invoice = app.get("/v1/billing/invoices/2026-11", &org.token).await;
    assert_eq!(invoice.status, StatusCode::OK, "{}", invoice.text);
    assert_eq!(invoice.body["status"], "open");
    let quantity = |invoice: &Value, meter: &str| -> String {
        invoice["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["meter"] == meter)
            .map(|l| l["quantity"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert_eq!(quantity(&invoice.body, "node_hours.standard"), "6");
    assert_eq!(quantity(&invoice.body, "transactions"), "7000");
    // Usage events (for external billing) carry recorded usage only.
    let events = app
        .get(&day.replace("/usage?", "/usage/events?"), &org.token)
        .await;
    assert_eq!(events.body, json!([]), "{}", events.text);

    // 11:20: a pass records the 10:00 window; 11:00 is accruing. Same total.
    clock.set(at("2026-11-02T11:20:00Z"));
    let before = split_sums(&app.get(day, &org.token).await.body, "node_hours.standard");
    assert_eq!(before.0 + before.1, 65 * 60 * 12);
    metering::meter_once(&app.state.db, &app.state.billing)
        .await
        .unwrap();
    let usage = app.get(day, &org.token).await;
    assert_eq!(
        split_sums(&usage.body, "node_hours.standard"),
        (45 * 60 * 12, 20 * 60 * 12)
    );
    assert_eq!(split_sums(&usage.body, "transactions"), (7_000, 0));
    let invoice = app.get("/v1/billing/invoices/2026-11", &org.token).await;
    assert_eq!(quantity(&invoice.body, "node_hours.standard"), "13");
    assert_eq!(quantity(&invoice.body, "transactions"), "7000");

    // The console is down from 11:20 to 13:05: the gap accrues from the footprint log
    // (11:00 and 12:00 are closed but not recorded), then one pass records it.
    clock.set(at("2026-11-02T13:05:00Z"));
    let gap = split_sums(&app.get(day, &org.token).await.body, "node_hours.standard");
    assert_eq!(gap, (45 * 60 * 12, 125 * 60 * 12));
    metering::meter_once(&app.state.db, &app.state.billing)
        .await
        .unwrap();
    let filled = split_sums(&app.get(day, &org.token).await.body, "node_hours.standard");
    assert_eq!(filled, (165 * 60 * 12, 5 * 60 * 12));

    // Deleted at 13:30: accrual stops there.
    clock.set(at("2026-11-02T13:30:00Z"));
    let deleted = app.delete(&format!("/v1/networks/{id}"), &org.token).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    clock.set(at("2026-11-02T13:50:00Z"));
    let ended = split_sums(&app.get(day, &org.token).await.body, "node_hours.standard");
    assert_eq!(ended, (165 * 60 * 12, 30 * 60 * 12));

    // Another tenant sees none of it.
    let other = app.signup("Others", "o@others.example").await;
    let theirs = app.get(day, &other.token).await;
    assert_eq!(theirs.body["records"], json!([]), "{}", theirs.text);
}

on_both_databases!(
    lifecycle_is_metered_exactly,
    usage_so_far_shows_and_never_counts_twice,
    bad_usage_queries_are_refused_clearly,
    plans_are_admin_edited_and_quotas_enforced,
);
