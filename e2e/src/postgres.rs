//! A real PostgreSQL server for tests, and a fresh database per test.

use std::path::Path;
use std::sync::OnceLock;

use sea_orm::{ConnectionTrait, Database};

use crate::supervised::{self, EnvError, Supervised};

/// Use this server (a superuser URL) instead of starting one.
pub const URL_VAR: &str = "TRELLIS_TEST_DATABASE_URL";
/// When `1`, a missing PostgreSQL fails the test instead of skipping it.
pub const REQUIRE_VAR: &str = "TRELLIS_REQUIRE_POSTGRES";

struct Server {
    admin_url: String,
    _owned: Option<Supervised>,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

fn installed() -> bool {
    std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|versions| {
        versions
            .flatten()
            .any(|v| Path::new(&v.path()).join("bin/postgres").is_file())
    })
}

fn server() -> Result<&'static Server, EnvError> {
    SERVER
        .get_or_init(|| {
            if let Ok(url) = std::env::var(URL_VAR) {
                return Ok(Server {
                    admin_url: url,
                    _owned: None,
                });
            }
            if !installed() && !supervised::required(REQUIRE_VAR) {
                return Err(format!(
                    "no PostgreSQL: set {URL_VAR}, or apt-get install postgresql, or run the \
                     README test command"
                ));
            }
            let owned = supervised::start("postgres", "postgres.sh").map_err(|e| e.to_string())?;
            Ok(Server {
                admin_url: owned.endpoint.clone(),
                _owned: Some(owned),
            })
        })
        .as_ref()
        .map_err(|e| EnvError::Unavailable(e.clone()))
}

/// Creates an empty database on the shared test server (starting it once per test
/// binary) and returns its URL. Returns `None` after printing `SKIPPED` when no server
/// can be had and [`REQUIRE_VAR`] is not `1`; panics when it is.
pub async fn fresh_database() -> Option<String> {
    match try_fresh_database().await {
        Ok(url) => Some(url),
        Err(EnvError::Unavailable(why)) if !supervised::required(REQUIRE_VAR) => {
            eprintln!("SKIPPED (PostgreSQL test): {why}");
            None
        }
        Err(e) => fail(&e),
    }
}

#[allow(clippy::panic)] // A test helper: failing the test is its job.
fn fail(e: &EnvError) -> ! {
    panic!("test PostgreSQL: {e}")
}

/// Like [`fresh_database`], but returns the error instead of skipping or panicking.
pub async fn try_fresh_database() -> Result<String, EnvError> {
    let admin_url = tokio::task::spawn_blocking(server)
        .await
        .map_err(|e| EnvError::Unavailable(e.to_string()))??
        .admin_url
        .clone();
    let name = format!("t_{}", supervised::suffix());
    let admin = Database::connect(&admin_url)
        .await
        .map_err(|e| EnvError::Database(e.to_string()))?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .map_err(|e| EnvError::Database(format!("creating database {name}: {e}")))?;
    let _ = admin.close().await;
    let (server, _) = admin_url
        .rsplit_once('/')
        .ok_or_else(|| EnvError::Database(format!("not a database URL: {admin_url}")))?;
    Ok(format!("{server}/{name}"))
}
