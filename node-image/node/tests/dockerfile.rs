//! The Dockerfile cannot be built on CI machines (no container runtime); this checks that
//! what it names exists: the package, the binary, the build output path, the entrypoint,
//! the subcommand and flag of its default command, a non-root user and a builder at least
//! as new as the workspace's rust-version.

// Test code: a missing file or field should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_trellis-node");

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
}

fn dockerfile() -> String {
    std::fs::read_to_string(repo_root().join("node-image/Dockerfile")).unwrap()
}

/// Instructions (first word upper-case) with their arguments, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(i, a)| (i.to_string(), a.trim().to_string()))
        .collect()
}

fn json_array(arg: &str) -> Vec<String> {
    serde_json::from_str(arg).unwrap()
}

fn version(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap()).collect()
}

#[test]
fn dockerfile_matches_the_crate() {
    let text = dockerfile();
    let ins = instructions(&text);
    let froms: Vec<&String> = ins
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(froms.len(), 2, "multi-stage: builder and runtime");

    // Builder: a Rust image at least as new as the workspace's rust-version.
    let builder = froms[0].split_whitespace().next().unwrap();
    let tag = builder
        .strip_prefix("rust:")
        .expect("builder is the rust image");
    let tag_version = tag.split('-').next().unwrap();
    let workspace = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let rust_version = workspace
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(version(tag_version) >= version(rust_version));

    // It builds this package's binary.
    let run = ins
        .iter()
        .find(|(i, a)| i == "RUN" && a.contains("cargo build"))
        .map(|(_, a)| a)
        .unwrap();
    assert!(run.contains(&format!("-p {}", env!("CARGO_PKG_NAME"))));
    let bin_name = Path::new(BIN).file_name().unwrap().to_str().unwrap();
    assert!(run.contains(&format!("--bin {bin_name}")));
    assert!(run.contains("--release") && run.contains("--locked"));
    assert!(
        repo_root().join("Cargo.lock").exists(),
        "--locked needs Cargo.lock"
    );

    // The runtime copies the release binary and runs it as the entrypoint.
    let workdir = ins
        .iter()
        .find(|(i, _)| i == "WORKDIR")
        .map(|(_, a)| a)
        .unwrap();
    let copy = ins
        .iter()
        .find(|(i, a)| i == "COPY" && a.starts_with("--from="))
        .map(|(_, a)| a)
        .unwrap();
    let parts: Vec<&str> = copy.split_whitespace().collect();
    assert_eq!(parts[1], format!("{workdir}/target/release/{bin_name}"));
    let entrypoint = ins
        .iter()
        .find(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, a)| a)
        .unwrap();
    assert_eq!(json_array(entrypoint), vec![parts[2].to_string()]);

    // Not root.
    let user = ins
        .iter()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a)
        .unwrap();
    assert!(!user.starts_with("root") && !user.starts_with('0'));

    // The default command is a real subcommand with a real flag.
    let cmd = json_array(
        ins.iter()
            .find(|(i, _)| i == "CMD")
            .map(|(_, a)| a)
            .unwrap(),
    );
    assert_eq!(cmd[0], "run");
    let help = Command::new(BIN)
        .args([cmd[0].as_str(), "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains(&cmd[1]));
}
