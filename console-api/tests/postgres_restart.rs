//! PostgreSQL crashed (immediate shutdown) and restarted while creates run: every acknowledged write is still there, and
//! clients retrying with their idempotency key get the original network, never a second
//! one or a name conflict. Runs a private PostgreSQL server (durable settings, unlike the
//! shared test server) that this test restarts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::TestApp;
use serde_json::json;

fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("pg_ctl").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root.
fn pg(bin: &Path, tool: &str, args: &[&str]) {
    let mut command = if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid",
                "postgres",
                "--regid",
                "postgres",
                "--init-groups",
            ])
            .arg(bin.join(tool));
        command
    } else {
        Command::new(bin.join(tool))
    };
    let status = command
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{tool} {args:?} failed");
}

struct Server {
    bin: PathBuf,
    data: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(bin: PathBuf, port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
        }
        let data = dir.path().join("data").display().to_string();
        let sock = dir.path().display().to_string();
        pg(
            &bin,
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        );
        let options =
            format!("-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=50");
        let log = dir.path().join("server.log").display().to_string();
        pg(
            &bin,
            "pg_ctl",
            &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
        );
        Self {
            bin,
            data,
            _dir: dir,
        }
    }

    fn restart(&self) {
        pg(
            &self.bin,
            "pg_ctl",
            &["-D", &self.data, "-m", "immediate", "-w", "restart"],
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            pg(
                &self.bin,
                "pg_ctl",
                &["-D", &self.data, "-m", "immediate", "stop"],
            )
        });
    }
}

#[tokio::test]
async fn writes_survive_a_postgres_restart_and_retries_do_not_duplicate() {
    let Some(bin) = pg_bin() else {
        eprintln!("SKIPPED: no PostgreSQL server binaries (apt-get install postgresql)");
        return;
    };
    if is_root()
        && Command::new("id")
            .arg("postgres")
            .output()
            .map_or(true, |o| !o.status.success())
    {
        eprintln!("SKIPPED: running as root needs the postgres system user");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server::start(bin, port);
    let app = std::sync::Arc::new(
        TestApp::with_url(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).await,
    );
    let org = app.signup("Durable", "o@durable.example").await;
    app.set_plan(&org, "enterprise").await;

    // The writer creates networks until told to stop, which happens only after the
    // restart and a few acknowledged writes past it, so the restart always falls inside
    // the writes however fast the console is (a fixed count was all written before the
    // restart once reads and writes got cheaper). At most MAX_NETWORKS (one list page).
    const MAX_NETWORKS: usize = 150;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let app = app.clone();
        let token = org.token.clone();
        let progress = progress.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut failures = 0;
            for index in 0..MAX_NETWORKS {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let key = format!("create-{index}");
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let response = app
                        .call_with(
                            Method::POST,
                            "/v1/networks",
                            Some(&token),
                            Some(json!({"name": format!("net-{index}"), "mode": "public"})),
                            &[("idempotency-key", key.as_str())],
                        )
                        .await;
                    if response.status == StatusCode::CREATED {
                        acknowledged.push(response.body["id"].as_str().unwrap().to_string());
                        break;
                    }
                    // While the database is down: a problem document, then a retry.
                    assert!(
                        response.status.is_server_error(),
                        "unexpected answer during the restart: {}",
                        response.text
                    );
                    assert_eq!(response.headers["content-type"], "application/problem+json");
                    failures += 1;
                    assert!(Instant::now() < deadline, "database never came back");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                progress.store(index + 1, std::sync::atomic::Ordering::SeqCst);
            }
            (acknowledged, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let done_at_restart = progress.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        done_at_restart < MAX_NETWORKS,
        "the writer finished before the restart; the test proved nothing"
    );
    // Let a few writes be acknowledged by the restarted server, then stop the writer.
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(std::sync::atomic::Ordering::SeqCst) < done_at_restart + 3
        && !writer.is_finished()
    {
        assert!(
            Instant::now() < deadline,
            "no write acknowledged after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (acknowledged, failures) = writer.await.unwrap();
    eprintln!(
        "restart after {done_at_restart} creates; {failures} requests failed and were retried"
    );
    assert_eq!(
        acknowledged.len(),
        progress.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(
        acknowledged.len() > done_at_restart,
        "nothing written after the restart"
    );
    let list = app.get("/v1/networks?limit=200", &org.token).await;
    let stored: Vec<String> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        stored, acknowledged,
        "acknowledged writes lost or duplicated"
    );
    drop(server);
}
