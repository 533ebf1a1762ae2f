//! `trellis-console up --demo` as a user runs it (the real binary, addresses
//! 127.0.4.0/24): it prints the admin's credentials and a first final transfer; killed
//! with SIGKILL, its nodes keep running and the next `up` adopts them (one process per
//! data dir, same pids, no second admin, no second demo); SIGTERM stops the nodes too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::node_binary;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Up {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Up {
    fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trellis-console"))
            .args(["up", "--demo", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--local-addresses", "127.0.4.0/24"])
            .arg("--node-binary")
            .arg(node_binary())
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads stdout until a line contains `marker`; returns that line.
    fn wait_for(&mut self, marker: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(marker) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {marker:?} in time; output so far:\n{}",
                        self.seen.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("up exited before {marker:?}:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    fn value_after(&self, label: &str) -> String {
        self.seen
            .iter()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {label:?} line in:\n{}", self.seen.join("\n")))
    }
}

/// Node directory → the pids running its config, counted from /proc.
fn node_processes(data_dir: &Path) -> Vec<(PathBuf, Vec<i32>)> {
    let mut dirs = Vec::new();
    for network in std::fs::read_dir(data_dir.join("local/networks")).unwrap() {
        let nodes = network.unwrap().path().join("nodes");
        for node in std::fs::read_dir(nodes).unwrap() {
            dirs.push(node.unwrap().path());
        }
    }
    dirs.sort();
    let procs: Vec<(i32, Vec<u8>)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            if rest.trim_start().starts_with('Z') {
                return None;
            }
            Some((pid, std::fs::read(format!("/proc/{pid}/cmdline")).ok()?))
        })
        .collect();
    dirs.into_iter()
        .map(|dir| {
            let config = dir.join("node.toml").to_string_lossy().to_string();
            let pids = procs
                .iter()
                .filter(|(_, cmd)| cmd.split(|b| *b == 0).any(|a| a == config.as_bytes()))
                .map(|(pid, _)| *pid)
                .collect();
            (dir, pids)
        })
        .collect()
}

fn http(method: reqwest::Method, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut request = client.request(method, url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    })
}

#[test]
fn up_demo_runs_end_to_end_and_resumes_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let _guard = common::KillUnder(data.to_path_buf());

    let mut first = Up::start(data);
    let line = first.wait_for("First transfer final", Duration::from_secs(240));
    assert!(line.contains("at height"), "{line}");
    // The public network is one sharded network: a transfer finalizes on its shard 0.
    let line = first.wait_for("Transfer final on demo-public", Duration::from_secs(240));
    assert!(line.contains("shard 0 at height"), "{line}");
    first.wait_for("Ready.", Duration::from_secs(30));
    let api = first.value_after("API ");
    let key = first.value_after("API key");
    assert!(key.starts_with("trk_"), "{key}");
    assert!(
        first
            .seen
            .iter()
            .any(|l| l.trim_start().starts_with("password"))
    );

    let (status, networks) = http(reqwest::Method::GET, &format!("{api}/networks"), &key, None);
    assert_eq!(status, 200, "{networks}");
    assert_eq!(networks["items"].as_array().unwrap().len(), 2);
    let before = node_processes(data);
    assert_eq!(
        before.len(),
        3 + 4 + 8,
        "3 consortium nodes, a beacon of 4, 2 shards × 4"
    );
    for (dir, pids) in &before {
        assert_eq!(pids.len(), 1, "{}: {pids:?}", dir.display());
    }

    // The console dies; its nodes run on.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert_eq!(node_processes(data), before);

    // A second `up` adopts them: same pids, nothing started twice, no second admin.
    let mut second = Up::start(data);
    second.wait_for("Ready.", Duration::from_secs(120));
    assert!(
        second.seen.iter().any(|l| l.contains("resumed")),
        "{:?}",
        second.seen
    );
    assert!(
        !second
            .seen
            .iter()
            .any(|l| l.trim_start().starts_with("password")),
        "the admin's password is printed once"
    );
    let api = second.value_after("API ");
    std::thread::sleep(Duration::from_secs(2)); // two supervisor passes
    assert_eq!(node_processes(data), before, "adopted, not restarted");
    let (status, networks) = http(reqwest::Method::GET, &format!("{api}/networks"), &key, None);
    assert_eq!(status, 200, "{networks}");
    let items = networks["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "no second demo");
    let consortium = items
        .iter()
        .find(|n| n["name"] == "demo-consortium")
        .unwrap();
    let (status, answer) = http(
        reqwest::Method::POST,
        &format!("{api}/networks/{}/rpc", consortium["id"].as_str().unwrap()),
        &key,
        Some(json!({"jsonrpc": "2.0", "id": 1, "method": "trellis_status"})),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer["result"]["finalized_height"].as_u64().unwrap() > 0);

    // SIGTERM: `up` stops its nodes on the way out.
    let pid = second.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while second.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "up did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (dir, pids) in node_processes(data) {
        assert!(pids.is_empty(), "{} still runs: {pids:?}", dir.display());
    }
}
