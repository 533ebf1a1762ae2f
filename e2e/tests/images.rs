//! The three images' Dockerfiles match what they package.
//!
//! No container runtime runs here, so the images are not built; this checks what each
//! Dockerfile names: the package and binary (they exist and build), the release path it
//! copies, the entrypoint, a non-root user, a builder at least as new as the workspace's
//! `rust-version`, a default command the binary accepts, and — for the operator and the
//! console — that the chart runs the same subcommand on the port the image exposes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use trellis_e2e::tools::{repo_root, workspace_binary};

/// One image: its Dockerfile, the package and binary it builds, and the chart template
/// that runs it (the node's pods are the operator's, not the chart's).
struct Image {
    dockerfile: &'static str,
    package_dir: &'static str,
    binary: &'static str,
    chart_template: Option<&'static str>,
}

const IMAGES: [Image; 3] = [
    Image {
        dockerfile: "node-image/Dockerfile",
        package_dir: "node-image/node",
        binary: "trellis-node",
        chart_template: None,
    },
    Image {
        dockerfile: "operator/Dockerfile",
        package_dir: "operator",
        binary: "trellis-operator",
        chart_template: Some("charts/trellis/templates/operator-deployment.yaml"),
    },
    Image {
        dockerfile: "console-api/Dockerfile",
        package_dir: "console-api",
        binary: "trellis-console",
        chart_template: Some("charts/trellis/templates/console-deployment.yaml"),
    },
];

/// Instructions (first word) with their arguments, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(i, a)| (i.to_string(), a.trim().to_string()))
        .collect()
}

fn first<'a>(ins: &'a [(String, String)], name: &str) -> &'a str {
    ins.iter()
        .find(|(i, _)| i == name)
        .map(|(_, a)| a.as_str())
        .unwrap_or_else(|| panic!("no {name} instruction"))
}

fn json_array(arg: &str) -> Vec<String> {
    serde_json::from_str(arg).unwrap()
}

fn version(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap()).collect()
}

/// The `name` of the package whose manifest is in `dir`.
fn package_name(dir: &Path) -> String {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("name = "))
        .unwrap()
        .trim_matches('"')
        .to_owned()
}

#[test]
fn every_dockerfile_matches_its_crate_and_the_chart() {
    let root = repo_root();
    let workspace = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let rust_version = workspace
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    assert!(
        root.join("Cargo.lock").exists(),
        "--locked needs Cargo.lock"
    );

    for image in IMAGES {
        let text = std::fs::read_to_string(root.join(image.dockerfile)).unwrap();
        let ins = instructions(&text);
        let what = image.dockerfile;
        let froms: Vec<&String> = ins
            .iter()
            .filter(|(i, _)| i == "FROM")
            .map(|(_, a)| a)
            .collect();
        assert_eq!(froms.len(), 2, "{what}: multi-stage, builder and runtime");

        // Builder: a Rust image at least as new as the workspace's rust-version.
        let builder = froms[0].split_whitespace().next().unwrap();
        let tag = builder
            .strip_prefix("rust:")
            .expect("builder is the rust image");
        let tag_version = tag.split('-').next().unwrap();
        assert!(
            version(tag_version) >= version(&rust_version),
            "{what}: rust {tag_version} < {rust_version}"
        );

        // It builds this package's binary, released and locked.
        let package = package_name(&root.join(image.package_dir));
        let run = ins
            .iter()
            .find(|(i, a)| i == "RUN" && a.contains("cargo build"))
            .map(|(_, a)| a)
            .unwrap();
        assert!(run.contains(&format!("-p {package} ")), "{what}: {run}");
        assert!(
            run.contains(&format!("--bin {}", image.binary)),
            "{what}: {run}"
        );
        assert!(
            run.contains("--release") && run.contains("--locked"),
            "{what}"
        );

        // The runtime copies that release binary and runs it as the entrypoint.
        let workdir = first(&ins, "WORKDIR");
        let copy = ins
            .iter()
            .find(|(i, a)| i == "COPY" && a.starts_with("--from="))
            .map(|(_, a)| a)
            .unwrap();
        let parts: Vec<&str> = copy.split_whitespace().collect();
        assert_eq!(
            parts[1],
            format!("{workdir}/target/release/{}", image.binary),
            "{what}"
        );
        assert_eq!(
            json_array(first(&ins, "ENTRYPOINT")),
            vec![parts[2].to_string()],
            "{what}"
        );

        // Not root.
        let user = first(&ins, "USER");
        assert!(
            !user.starts_with("root") && !user.starts_with('0'),
            "{what}"
        );

        // The default command is a real subcommand (with real flags) of the binary.
        let cmd = json_array(first(&ins, "CMD"));
        let binary = workspace_binary(image.binary).unwrap();
        let help = Command::new(&binary)
            .args([cmd[0].as_str(), "--help"])
            .output()
            .unwrap();
        assert!(
            help.status.success(),
            "{what}: `{} {} --help`",
            image.binary,
            cmd[0]
        );
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in cmd.iter().skip(1).filter(|a| a.starts_with("--")) {
            assert!(
                help.contains(flag.as_str()),
                "{what}: no {flag} in `{}`",
                cmd[0]
            );
        }

        // The chart runs the same subcommand, on a port the image exposes.
        if let Some(template) = image.chart_template {
            let chart = std::fs::read_to_string(root.join(template)).unwrap();
            let args = chart
                .lines()
                .find_map(|l| l.trim().strip_prefix("args: "))
                .unwrap_or_else(|| panic!("{template}: no args"));
            let args: Vec<String> = serde_yaml::from_str(args).unwrap();
            assert_eq!(args, cmd, "{template} runs what {what} runs by default");
            let exposed = first(&ins, "EXPOSE");
            let port = chart
                .lines()
                .find_map(|l| l.split("containerPort: ").nth(1))
                .and_then(|rest| rest.split([',', '}', ' ']).next())
                .unwrap_or_else(|| panic!("{template}: no containerPort"));
            assert!(
                exposed.split_whitespace().any(|p| p == port),
                "{template} uses port {port}; {what} exposes {exposed}"
            );
        }
    }
}
