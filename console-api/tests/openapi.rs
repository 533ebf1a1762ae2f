//! The committed `console-api/openapi.json` is what the code generates, and every
//! documented operation is routed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test scenarios are run by #[test] wrappers

mod common;

use axum::http::Method;
use common::TestApp;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

#[test]
fn committed_openapi_matches_the_code() {
    let generated = trellis_console::openapi::json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(COMMITTED, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap();
    assert!(
        committed == generated,
        "console-api/openapi.json is stale; regenerate it with \
         `UPDATE_OPENAPI=1 cargo test -p trellis-console --test openapi` and commit it"
    );
    let document: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_served() {
    let app = TestApp::sqlite().await;
    let served = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(served.text, trellis_console::openapi::json());
    let paths = served.body["paths"].as_object().unwrap().clone();
    assert!(paths.len() >= 10);
    for (path, operations) in paths {
        let concrete = path.replace("{id}", &uuid::Uuid::now_v7().to_string());
        for method in operations.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = app.call(method.clone(), &concrete, None, None).await;
            assert_ne!(
                response.body["code"], "route_not_found",
                "{method} {path} is documented but not routed"
            );
            assert_ne!(
                response.body["code"], "method_not_allowed",
                "{method} {path} is documented but not routed"
            );
        }
    }
}
