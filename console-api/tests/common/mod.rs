//! Test harness: the real router over a real database (SQLite in a temp dir, or a fresh
//! PostgreSQL database from the e2e fixture), driven in-process.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test harness

use std::sync::{Arc, Mutex};

pub mod local;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use futures::future::BoxFuture;
use serde_json::Value;
use tower::ServiceExt;
use trellis_console::app::{self, AppState, Settings};
use trellis_console::auth::jwt::{TokenKeys, generate_signing_key};
use trellis_console::auth::password::PasswordPolicy;
use trellis_console::db;
use trellis_console::provisioner::{
    DesiredNetwork, NetworkLoad, NetworkRef, ObservedStatus, ProvisionError, Provisioner,
};

/// Cheap Argon2 parameters: a stored hash records its own parameters, so this changes
/// only the cost, not the code path.
pub fn test_settings() -> Settings {
    Settings {
        password: PasswordPolicy {
            memory_kib: 1024,
            iterations: 1,
            min_length: 12,
        },
        auth_requests_per_minute: 0,
        tenant_requests_per_minute: 0,
        ..Settings::default()
    }
}

pub const PASSWORD: &str = "correct horse battery staple";

/// What a test provisioner was asked to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    Apply(DesiredNetwork),
    Delete(NetworkRef, bool),
}

/// A provisioner for tests of the console's side of the contract: it records calls,
/// fails on demand and reports a configurable observation. (The real `kube` and `local`
/// provisioners live with the operator and node work; see docs/console-api.md.)
#[derive(Default)]
pub struct RecordingProvisioner {
    pub calls: Mutex<Vec<Call>>,
    pub fail_with: Mutex<Option<ProvisionError>>,
    pub observed: Mutex<Option<ObservedStatus>>,
    /// What `network_load` reports (a fake metrics source for the autoscaler); `None`:
    /// the provisioner does not measure load.
    pub load: Mutex<Option<NetworkLoad>>,
}

impl RecordingProvisioner {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn fail(&self, error: Option<ProvisionError>) {
        *self.fail_with.lock().unwrap() = error;
    }

    fn outcome(&self) -> Result<(), ProvisionError> {
        match self.fail_with.lock().unwrap().clone() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl Provisioner for RecordingProvisioner {
    fn kind(&self) -> &'static str {
        "recording"
    }

    fn apply<'a>(
        &'a self,
        desired: &'a DesiredNetwork,
    ) -> BoxFuture<'a, Result<(), ProvisionError>> {
        Box::pin(async move {
            self.outcome()?;
            self.calls
                .lock()
                .unwrap()
                .push(Call::Apply(desired.clone()));
            Ok(())
        })
    }

    fn observe<'a>(
        &'a self,
        _network: &'a NetworkRef,
    ) -> BoxFuture<'a, Result<Option<ObservedStatus>, ProvisionError>> {
        Box::pin(async move { Ok(self.observed.lock().unwrap().clone()) })
    }

    fn network_load<'a>(
        &'a self,
        _network: &'a NetworkRef,
    ) -> BoxFuture<'a, Result<Option<NetworkLoad>, ProvisionError>> {
        Box::pin(async move { Ok(self.load.lock().unwrap().clone()) })
    }

    fn delete<'a>(
        &'a self,
        network: &'a NetworkRef,
        retain_ledger: bool,
    ) -> BoxFuture<'a, Result<(), ProvisionError>> {
        Box::pin(async move {
            self.outcome()?;
            self.calls
                .lock()
                .unwrap()
                .push(Call::Delete(network.clone(), retain_ledger));
            Ok(())
        })
    }
}

pub struct TestApp {
    pub router: Router,
    pub state: AppState,
    pub provisioner: Arc<RecordingProvisioner>,
    pub _dir: tempfile::TempDir,
}

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

/// A signed-up organisation: its owner's tokens and ids.
#[derive(Clone, Debug)]
pub struct Org {
    pub tenant_id: String,
    pub user_id: String,
    pub token: String,
    pub refresh: String,
}

impl TestApp {
    pub async fn sqlite() -> Self {
        Self::sqlite_with(test_settings()).await
    }

    pub async fn sqlite_with(settings: Settings) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = db::sqlite_url(dir.path());
        Self::build(dir, &url, settings).await
    }

    pub async fn with_url(url: &str) -> Self {
        Self::build(tempfile::tempdir().unwrap(), url, test_settings()).await
    }

    async fn build(dir: tempfile::TempDir, url: &str, settings: Settings) -> Self {
        Self::build_with(dir, url, settings, None).await
    }

    /// The app with `provisioner` (e.g. the real local one) instead of the recording one;
    /// `self.provisioner` then records nothing.
    pub async fn build_with(
        dir: tempfile::TempDir,
        url: &str,
        settings: Settings,
        provisioner: Option<Arc<dyn Provisioner>>,
    ) -> Self {
        let database = db::connect_and_migrate(url).await.unwrap();
        let keys = TokenKeys::new(&generate_signing_key(), &[], 900).unwrap();
        let recording = Arc::new(RecordingProvisioner::default());
        let state = AppState::new(
            database,
            keys,
            trellis_console::custody::MasterKey::generate(),
            provisioner.unwrap_or_else(|| recording.clone()),
            settings,
        );
        let provisioner = recording;
        Self {
            router: app::router(state.clone()),
            state,
            provisioner,
            _dir: dir,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> Response {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 22)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Response {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        self.call_with(method, path, token, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = match body {
            Some(body) => builder
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap())),
            None => builder.body(Body::empty()),
        }
        .unwrap();
        self.send(request).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Response {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Signs up an organisation on the `team` plan (room for the tests' networks).
    pub async fn signup(&self, organisation: &str, email: &str) -> Org {
        let org = self.signup_on_free_plan(organisation, email).await;
        self.set_plan(&org, "team").await;
        org
    }

    /// The founder (`founder_token`) invites `invitation` (its `organisation`, `nodes`,
    /// ...) to consortium `network`; the organisation signs up as a tenant (`tenant`,
    /// `email`) and accepts with a console-custodied key. Returns the new member's id and
    /// its tenant.
    pub async fn invite_and_accept(
        &self,
        founder_token: &str,
        network: &str,
        invitation: Value,
        tenant: &str,
        email: &str,
    ) -> (String, Org) {
        let invited = self
            .post(
                &format!("/v1/networks/{network}/invitations"),
                founder_token,
                invitation,
            )
            .await;
        assert_eq!(invited.status, StatusCode::CREATED, "{}", invited.text);
        let member = invited.body["member"]["id"].as_str().unwrap().to_string();
        let org = self.signup(tenant, email).await;
        let accepted = self
            .post(
                "/v1/consortium/invitations/accept",
                &org.token,
                serde_json::json!({"token": invited.body["token"]}),
            )
            .await;
        assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text);
        (member, org)
    }

    /// Sets a tenant's plan directly in the database (there is no billing API yet).
    pub async fn set_plan(&self, org: &Org, plan: &str) {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        use trellis_console_entity::tenant;
        tenant::Entity::update_many()
            .col_expr(tenant::Column::Plan, sea_orm::sea_query::Expr::value(plan))
            .filter(tenant::Column::Id.eq(uuid::Uuid::parse_str(&org.tenant_id).unwrap()))
            .exec(&self.state.db)
            .await
            .unwrap();
    }

    pub async fn signup_on_free_plan(&self, organisation: &str, email: &str) -> Org {
        let response = self
            .call(
                Method::POST,
                "/v1/auth/signup",
                None,
                Some(serde_json::json!({
                    "organisation": organisation,
                    "email": email,
                    "password": PASSWORD,
                })),
            )
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
        Org {
            tenant_id: response.body["tenant"]["id"].as_str().unwrap().to_string(),
            user_id: response.body["user"]["id"].as_str().unwrap().to_string(),
            token: response.body["tokens"]["access_token"]
                .as_str()
                .unwrap()
                .to_string(),
            refresh: response.body["tokens"]["refresh_token"]
                .as_str()
                .unwrap()
                .to_string(),
        }
    }

    /// Creates a user with `role` in `org`'s tenant and signs it in; returns its token.
    pub async fn user_with_role(&self, org: &Org, email: &str, role: &str) -> String {
        let created = self
            .post(
                "/v1/users",
                &org.token,
                serde_json::json!({"email": email, "password": PASSWORD, "role": role}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
        self.login(email).await.body["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn login(&self, email: &str) -> Response {
        self.call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(serde_json::json!({"email": email, "password": PASSWORD})),
        )
        .await
    }

    pub async fn create_network(&self, token: &str, name: &str) -> Response {
        self.post(
            "/v1/networks",
            token,
            serde_json::json!({
                "name": name,
                "mode": "public",
                "shards": {"count": 2, "min": 1, "max": 8},
            }),
        )
        .await
    }
}

/// Asserts a problem+json response with `status` and `code`.
#[track_caller]
pub fn assert_problem(response: &Response, status: StatusCode, code: &str) {
    assert_eq!(response.status, status, "{}", response.text);
    assert_eq!(
        response.headers["content-type"], "application/problem+json",
        "{}",
        response.text
    );
    assert_eq!(response.body["code"], code, "{}", response.text);
    assert_eq!(response.body["status"], status.as_u16());
    assert!(
        response.body["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "problem without request id: {}",
        response.text
    );
}

/// The id of `organisation` in a `GET …/members` answer.
pub fn member_id(list: &Value, organisation: &str) -> String {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["organisation"] == organisation)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A fresh PostgreSQL database from the e2e fixture (a real server on loopback), or
/// `None` after it printed SKIPPED (no PostgreSQL on this machine and
/// `TRELLIS_REQUIRE_POSTGRES` unset; under the README test command it is always there).
pub async fn postgres_url() -> Option<String> {
    trellis_e2e::postgres::fresh_database().await
}

/// Defines `<name>_sqlite` and `<name>_postgres` tests running `scenario(TestApp)`.
#[macro_export]
macro_rules! on_both_databases {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario($crate::common::TestApp::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let Some(url) = $crate::common::postgres_url().await else {
                        eprintln!("SKIPPED: {} on PostgreSQL", stringify!($scenario));
                        return;
                    };
                    super::$scenario($crate::common::TestApp::with_url(&url).await).await;
                }
            )*
        }
    };
}

/// Kills (SIGKILL) every process whose command line mentions `root` when dropped, so a
/// failing test that started local nodes leaves none behind.
pub struct KillUnder(pub std::path::PathBuf);

impl Drop for KillUnder {
    fn drop(&mut self) {
        let root = self.0.to_string_lossy().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            if cmdline
                .split(|b| *b == 0)
                .any(|arg| String::from_utf8_lossy(arg).starts_with(&root))
            {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// The `trellis-node` binary the tests run: `TRELLIS_NODE_BIN` (e.g. another build),
/// else the one in this test's target directory (`target/<profile>/`, wherever
/// `CARGO_TARGET_DIR` puts it), built on demand when this crate's tests run alone.
pub fn node_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("TRELLIS_NODE_BIN") {
        return std::path::PathBuf::from(path);
    }
    // target/<profile>/deps/<this test> -> target/<profile>/trellis-node
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(std::path::Path::parent)
        .unwrap()
        .join("trellis-node");
    if !binary.is_file() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "trellis-node", "--bin", "trellis-node"])
            .status()
            .unwrap();
        assert!(status.success(), "building trellis-node failed");
    }
    binary
}
