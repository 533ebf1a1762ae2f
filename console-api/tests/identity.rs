//! Sign-up, sign-in, refresh-token rotation, API keys, roles and the error shape,
//! against the real router and database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test scenarios are run by #[test] wrappers

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{PASSWORD, TestApp, assert_problem};
use serde_json::json;

async fn signup_login_and_me(app: TestApp) {
    let org = app.signup("Acme Corp", "Owner@Acme.example").await;
    let me = app.get("/v1/me", &org.token).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.body["tenant"]["slug"], "acme-corp");
    assert_eq!(me.body["role"], "owner");
    assert_eq!(me.body["user_id"], org.user_id.as_str());

    // E-mail addresses are case-insensitive.
    let login = app.login("owner@acme.example").await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    assert_eq!(login.body["token_type"], "Bearer");

    let wrong = app
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": "owner@acme.example", "password": "wrong password!!"})),
        )
        .await;
    assert_problem(&wrong, StatusCode::UNAUTHORIZED, "invalid_login");
    let unknown = app.login("nobody@acme.example").await;
    assert_problem(&unknown, StatusCode::UNAUTHORIZED, "invalid_login");
    // Same answer whether or not the account exists.
    assert_eq!(wrong.body["detail"], unknown.body["detail"]);

    let again = app
        .call(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(json!({"organisation": "Other", "email": "owner@acme.example", "password": PASSWORD})),
        )
        .await;
    assert_problem(&again, StatusCode::CONFLICT, "email_taken");
}

async fn signup_validation_lists_fields(app: TestApp) {
    let response = app
        .call(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(json!({"organisation": "", "email": "not-an-email", "password": "short"})),
        )
        .await;
    assert_problem(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let fields: Vec<&str> = response.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["organisation", "email", "password"]);
}

async fn refresh_rotates_and_reuse_revokes_the_family(app: TestApp) {
    let org = app.signup("Rotators", "a@rot.example").await;
    let refresh = |token: String| {
        let app = &app;
        async move {
            app.call(
                Method::POST,
                "/v1/auth/refresh",
                None,
                Some(json!({ "refresh_token": token })),
            )
            .await
        }
    };
    let first = refresh(org.refresh.clone()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let second_token = first.body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second_token, org.refresh);
    let new_access = first.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(app.get("/v1/me", &new_access).await.status, StatusCode::OK);

    // The original token was rotated: presenting it again is reuse.
    let reused = refresh(org.refresh.clone()).await;
    assert_problem(&reused, StatusCode::UNAUTHORIZED, "refresh_token_reused");
    // ...which revoked the whole family, including the legitimately rotated successor.
    let successor = refresh(second_token).await;
    assert_problem(
        &successor,
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
    );

    // A fresh sign-in starts a new, unaffected family.
    let login = app.login("a@rot.example").await;
    let token = login.body["refresh_token"].as_str().unwrap().to_string();
    let ok = refresh(token.clone()).await;
    assert_eq!(ok.status, StatusCode::OK);
    let next = ok.body["refresh_token"].as_str().unwrap().to_string();

    // Logout revokes the family.
    let logout = app
        .call(
            Method::POST,
            "/v1/auth/logout",
            None,
            Some(json!({ "refresh_token": next })),
        )
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let after_logout = refresh(next).await;
    assert_problem(
        &after_logout,
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
    );
    let garbage = refresh("trr_not-a-token".into()).await;
    assert_problem(&garbage, StatusCode::UNAUTHORIZED, "invalid_refresh_token");
}

async fn api_keys_are_scoped_hashed_and_revocable(app: TestApp) {
    let org = app.signup("Automators", "o@auto.example").await;
    let created = app
        .post(
            "/v1/api-keys",
            &org.token,
            json!({"name": "ci", "role": "member"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let secret = created.body["secret"].as_str().unwrap().to_string();
    let key_id = created.body["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("trk_"));
    assert!(secret.starts_with(created.body["prefix"].as_str().unwrap()));

    // The secret is stored only as a hash.
    let stored = <trellis_console_entity::api_key::Entity as sea_orm::EntityTrait>::find_by_id(
        uuid::Uuid::parse_str(&key_id).unwrap(),
    )
    .one(&app.state.db)
    .await
    .unwrap()
    .unwrap();
    assert_ne!(stored.key_hash, secret);
    assert_eq!(stored.key_hash.len(), 64);

    // It authenticates with its own scope: member can create networks...
    let me = app.get("/v1/me", &secret).await;
    assert_eq!(me.body["role"], "member");
    assert_eq!(me.body["api_key_id"], key_id.as_str());
    let network = app.create_network(&secret, "from-ci").await;
    assert_eq!(network.status, StatusCode::CREATED, "{}", network.text);
    // ...but not manage keys.
    let denied = app
        .post(
            "/v1/api-keys",
            &secret,
            json!({"name": "x", "role": "viewer"}),
        )
        .await;
    assert_problem(&denied, StatusCode::FORBIDDEN, "forbidden");

    // Listing never shows secrets.
    let list = app.get("/v1/api-keys", &org.token).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    assert!(!list.text.contains(&secret));

    let revoked = app
        .delete(&format!("/v1/api-keys/{key_id}"), &org.token)
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    let after = app.get("/v1/me", &secret).await;
    assert_problem(&after, StatusCode::UNAUTHORIZED, "invalid_api_key");
    let made_up = app
        .get("/v1/me", "trk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .await;
    assert_problem(&made_up, StatusCode::UNAUTHORIZED, "invalid_api_key");
}

async fn roles_limit_what_users_can_do(app: TestApp) {
    let org = app.signup("Roles Inc", "owner@roles.example").await;
    let viewer = app.user_with_role(&org, "v@roles.example", "viewer").await;
    let member = app.user_with_role(&org, "m@roles.example", "member").await;
    let admin = app.user_with_role(&org, "a@roles.example", "admin").await;

    assert_problem(
        &app.create_network(&viewer, "nope").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(
        app.get("/v1/networks", &viewer).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.create_network(&member, "yes").await.status,
        StatusCode::CREATED
    );
    assert_problem(
        &app.post(
            "/v1/users",
            &member,
            json!({"email": "x@roles.example", "password": PASSWORD, "role": "viewer"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // An admin cannot mint owners or touch the owner.
    assert_problem(
        &app.post(
            "/v1/users",
            &admin,
            json!({"email": "o2@roles.example", "password": PASSWORD, "role": "owner"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_problem(
        &app.delete(&format!("/v1/users/{}", org.user_id), &admin)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_problem(
        &app.patch(
            &format!("/v1/users/{}", org.user_id),
            &org.token,
            json!({"role": "admin"}),
        )
        .await,
        StatusCode::CONFLICT,
        "last_owner",
    );
    assert_problem(
        &app.get("/v1/audit-events", &member).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let audit = app.get("/v1/audit-events", &admin).await;
    assert_eq!(audit.status, StatusCode::OK);
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "user.create",
            "user.create",
            "user.create",
            "network.create"
        ]
    );
    let users = app.get("/v1/users?limit=2", &viewer).await;
    assert_eq!(users.body["items"].as_array().unwrap().len(), 2);
    assert!(users.body["next_cursor"].is_string());
    assert!(!users.text.contains("argon2"));
}

async fn malformed_requests_are_problems(app: TestApp) {
    let org = app.signup("Parsers", "p@parse.example").await;
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/networks")
        .header("authorization", format!("Bearer {}", org.token))
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    assert_problem(
        &app.send(request).await,
        StatusCode::BAD_REQUEST,
        "malformed_body",
    );

    let wrong_shape = app
        .post(
            "/v1/networks",
            &org.token,
            json!({"name": 7, "mode": "public"}),
        )
        .await;
    assert_problem(
        &wrong_shape,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );

    let unknown_field = app
        .post(
            "/v1/networks",
            &org.token,
            json!({"name": "n", "mode": "public", "shard": 3}),
        )
        .await;
    assert_problem(
        &unknown_field,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    assert!(
        unknown_field.body["detail"]
            .as_str()
            .unwrap()
            .contains("shard")
    );

    let no_type = Request::builder()
        .method(Method::POST)
        .uri("/v1/networks")
        .header("authorization", format!("Bearer {}", org.token))
        .body(Body::from("{}"))
        .unwrap();
    assert_problem(
        &app.send(no_type).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );

    let huge = json!({"name": "x".repeat(100_000), "mode": "public"});
    assert_problem(
        &app.post("/v1/networks", &org.token, huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );
    assert_problem(
        &app.get("/v1/networks/not-a-uuid", &org.token).await,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    );
    assert_problem(
        &app.get("/v1/networks?limit=abc", &org.token).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    );
    assert_problem(
        &app.get("/v1/nothing-here", &org.token).await,
        StatusCode::NOT_FOUND,
        "route_not_found",
    );
    assert_problem(
        &app.call(Method::PUT, "/v1/networks", Some(&org.token), None)
            .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_problem(
        &app.call(Method::GET, "/v1/networks", None, None).await,
        StatusCode::UNAUTHORIZED,
        "missing_credentials",
    );
    let forged = app.get("/v1/networks", "eyJhbGciOiJub25lIn0.e30.").await;
    assert_problem(&forged, StatusCode::UNAUTHORIZED, "invalid_token");
    assert!(forged.headers.contains_key("www-authenticate"));
}

async fn concurrent_signups_with_one_name_all_succeed(app: TestApp) {
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for index in 0..6 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.call(
                Method::POST,
                "/v1/auth/signup",
                None,
                Some(json!({
                    "organisation": "Crowded",
                    "email": format!("user{index}@crowded.example"),
                    "password": PASSWORD,
                })),
            )
            .await
        }));
    }
    let mut slugs = std::collections::BTreeSet::new();
    for task in tasks {
        let response = task.await.unwrap();
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
        slugs.insert(
            response.body["tenant"]["slug"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(slugs.len(), 6, "{slugs:?}");
    assert!(slugs.contains("crowded"));
}

on_both_databases!(
    concurrent_signups_with_one_name_all_succeed,
    signup_login_and_me,
    signup_validation_lists_fields,
    refresh_rotates_and_reuse_revokes_the_family,
    api_keys_are_scoped_hashed_and_revocable,
    roles_limit_what_users_can_do,
    malformed_requests_are_problems,
);

#[tokio::test]
async fn auth_endpoints_are_rate_limited_per_client_address() {
    let app = TestApp::sqlite_with(trellis_console::app::Settings {
        auth_requests_per_minute: 3,
        ..common::test_settings()
    })
    .await;
    for _ in 0..3 {
        assert_problem(
            &app.login("nobody@example.com").await,
            StatusCode::UNAUTHORIZED,
            "invalid_login",
        );
    }
    let limited = app.login("nobody@example.com").await;
    assert_problem(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn health_metrics_and_jwks() {
    let app = TestApp::sqlite().await;
    let health = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(health.headers.contains_key("x-request-id"));
    let jwks = app
        .call(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(jwks.body["keys"][0]["crv"], "Ed25519");
    let metrics = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.text.contains(
            "trellis_console_http_requests_total{method=\"GET\",route=\"/readyz\",status=\"200\"} 1"
        ),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn same_organisation_name_gets_distinct_slugs() {
    let app = TestApp::sqlite().await;
    let first = app.signup("Same Name", "a@same.example").await;
    let second = app.signup("Same Name", "b@same.example").await;
    let slug = |token: String| {
        let app = &app;
        async move { app.get("/v1/me", &token).await.body["tenant"]["slug"].clone() }
    };
    let first_slug = slug(first.token).await;
    let second_slug = slug(second.token).await;
    assert_eq!(first_slug, "same-name");
    assert_ne!(first_slug, second_slug);
    assert!(second_slug.as_str().unwrap().starts_with("same-name-"));
}
