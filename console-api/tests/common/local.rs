//! Harness for the local provisioner's tests: a console whose provisioner runs real
//! `trellis-node` processes on the test's loopback range, and what those tests poll.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_console::app::Settings;
use trellis_console::governance::CustodySigner;
use trellis_console::provisioner::local::{LocalProvisioner, LocalSettings};

use super::{KillUnder, TestApp, node_binary};

/// A console (SQLite in a temp dir unless `url` names a database) with a local
/// provisioner placing nodes on `range`. Bind the guard last (`let (app, local, _guard)`)
/// so it is dropped first: it kills every node the test left running.
pub async fn local_app(
    url: Option<String>,
    range: &str,
    settings: Settings,
) -> (TestApp, LocalProvisioner, KillUnder) {
    let dir = tempfile::tempdir().unwrap();
    let guard = KillUnder(dir.path().to_path_buf());
    let local = LocalProvisioner::start(LocalSettings {
        root: dir.path().join("local"),
        node_binary: node_binary(),
        addresses: range.parse().unwrap(),
        treasury_balance: 1_000_000,
    })
    .await
    .unwrap();
    let url = url.unwrap_or_else(|| trellis_console::db::sqlite_url(dir.path()));
    let app = TestApp::build_with(dir, &url, settings, Some(Arc::new(local.clone()))).await;
    (app, local, guard)
}

/// [`local_app`] whose provisioner signs governance with the custodied organisation
/// keys, as `trellis-console` wires it: what the consortium tests need.
pub async fn custodied_local_app(range: &str) -> (TestApp, LocalProvisioner, KillUnder) {
    let (app, local, guard) = local_app(None, range, super::test_settings()).await;
    local.set_governance_signer(Arc::new(CustodySigner::new(
        app.state.db.clone(),
        app.state.master_key.clone(),
    )));
    (app, local, guard)
}

/// `check`'s first `Some`, asked every 250 ms; fails the test after `limit`.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Live (not zombie) processes whose command line runs the node config in `node_dir`,
/// counted independently of the provisioner's own bookkeeping.
pub fn processes_for(node_dir: &Path) -> Vec<i32> {
    let wanted = node_dir.join("node.toml").to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            !zombie
                && cmdline
                    .split(|b| *b == 0)
                    .any(|arg| arg == wanted.as_bytes())
        })
        .collect()
}

/// `method`'s result from the node at `host:port`, directly (not through the console).
pub async fn node_call(
    node: &str,
    method: &str,
    params: serde_json::Value,
) -> Option<serde_json::Value> {
    let body: serde_json::Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .ok()?
        .post(format!("http://{node}/rpc"))
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body.get("result").cloned()
}
