//! `up --demo` to the first finalized transfer (measured, not asserted):
//!
//!   cargo build --release -p trellis-node -p trellis-console -p trellis-console-bench
//!   target/release/trellis-console-up-bench [RUNS] [ADDRESS-RANGE]
//!
//! Each run starts the real `trellis-console up --demo` (next to this executable) on a
//! fresh data dir and measures the wall-clock time from spawning it to the line that
//! reports the first transfer final (the demo's consortium: 3 validators), and on to the
//! line that reports a transfer final on the 2-shard public network (one sharded network
//! of 12 nodes, created after the first transfer), then stops it with SIGTERM. The
//! baseline, measured in the same run, is plain `up` (no demo) to its "Ready." line: the
//! console's own start-up, admin creation included. Prints each run, the medians and the
//! ratio of the medians.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark command

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn beside(name: &str) -> PathBuf {
    let path = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .join(name);
    assert!(
        path.is_file(),
        "{} missing: cargo build --release -p trellis-node -p trellis-console",
        path.display()
    );
    path
}

/// Seconds from spawning `up` to the first stdout line containing each of `markers`, in
/// order.
fn time_up(demo: bool, markers: &[&str], range: &str) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let mut command = Command::new(beside("trellis-console"));
    command
        .args(["up", "--listen", "127.0.0.1:0", "--local-addresses", range])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--node-binary")
        .arg(beside("trellis-node"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if demo {
        command.arg("--demo");
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut elapsed = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if markers
            .get(elapsed.len())
            .is_some_and(|marker| line.contains(marker))
        {
            elapsed.push(start.elapsed().as_secs_f64());
            if elapsed.len() == markers.len() {
                break;
            }
        }
    }
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        elapsed.len(),
        markers.len(),
        "`up` exited before {:?}",
        markers.get(elapsed.len())
    );
    elapsed
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map_or(3, |a| a.parse().expect("RUNS"));
    let range = args.next().unwrap_or_else(|| "127.0.7.0/24".to_string());
    let mut baseline = Vec::new();
    let mut demo = Vec::new();
    let mut sharded = Vec::new();
    for run in 1..=runs {
        let b = time_up(false, &["Ready."], &range)[0];
        let times = time_up(
            true,
            &["First transfer final", "Transfer final on demo-public"],
            &range,
        );
        let (d, s) = (times[0], times[1]);
        println!(
            "run {run}: up (baseline) {b:.2} s, up --demo to first final transfer {d:.2} s, \
             to the sharded public network's first final transfer {s:.2} s"
        );
        baseline.push(b);
        demo.push(d);
        sharded.push(s);
    }
    let (b, d, s) = (
        median(&mut baseline),
        median(&mut demo),
        median(&mut sharded),
    );
    println!(
        "median: up {b:.2} s; up --demo to first final transfer {d:.2} s (target <= 10 s); \
         ratio {:.1}; to the sharded public network's first final transfer {s:.2} s",
        d / b
    );
}
