//! Starting an environment script (`e2e/scripts/*.sh`) and keeping it alive for the
//! life of this process.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// Why a test environment is not available.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{what} failed to start: {detail}")]
    Start { what: &'static str, detail: String },
    #[error("{0}")]
    Kube(String),
    #[error("database: {0}")]
    Database(String),
}

/// A running environment script. Dropping it never happens in practice (it lives in a
/// static); the script tears down when this process exits and `stdin` closes.
pub(crate) struct Supervised {
    /// What the script printed after `ready `: a kubeconfig path or a database URL.
    pub(crate) endpoint: String,
    _stdin: ChildStdin,
    _child: Child,
    _state: tempfile::TempDir,
}

pub(crate) fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// Runs `e2e/scripts/<script> <state dir>` and waits until it prints `ready <endpoint>`.
pub(crate) fn start(what: &'static str, script: &str) -> Result<Supervised, EnvError> {
    let state = tempfile::Builder::new()
        .prefix(&format!("trellis-{what}-"))
        .tempdir()
        .map_err(|e| EnvError::Start {
            what,
            detail: format!("cannot create a state directory: {e}"),
        })?;
    let mut child = Command::new("bash")
        .arg(scripts_dir().join(script))
        .arg(state.path())
        .env("TRELLIS_REMOVE_STATE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| EnvError::Start {
            what,
            detail: format!("cannot run bash {script}: {e}"),
        })?;
    let (Some(stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(EnvError::Start {
            what,
            detail: "child pipes missing".into(),
        });
    };
    // Forward the script's progress messages (e.g. a cold build) to our stderr.
    std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = stderr.read_to_string(&mut buf);
        if !buf.is_empty() {
            eprint!("{buf}");
        }
    });
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| EnvError::Start {
            what,
            detail: e.to_string(),
        })?;
        if let Some(endpoint) = line.strip_prefix("ready ") {
            return Ok(Supervised {
                endpoint: endpoint.trim().to_string(),
                _stdin: stdin,
                _child: child,
                _state: state,
            });
        }
    }
    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
    Err(EnvError::Start {
        what,
        detail: format!("{script} exited ({status}) before it was ready; see its messages above"),
    })
}

/// True when the variable is set to `1`.
pub(crate) fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// A short random suffix for namespace and database names.
pub(crate) fn suffix() -> String {
    use rand::Rng;
    let n: u32 = rand::rng().random();
    format!("{n:08x}")
}

/// Turns a test's name hint into a DNS-1123 label prefix (lowercase alphanumerics and
/// `-`, starting with a letter, at most 40 characters).
pub(crate) fn sanitize(hint: &str) -> String {
    let mut out = String::new();
    for c in hint.chars() {
        match c {
            'a'..='z' | '0'..='9' => out.push(c),
            'A'..='Z' => out.push(c.to_ascii_lowercase()),
            _ if !out.is_empty() && !out.ends_with('-') => out.push('-'),
            _ => {}
        }
        if out.len() >= 40 {
            break;
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out
    } else {
        format!("t{out}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_makes_dns_labels() {
        assert_eq!(
            sanitize("Smoke_Test::StatefulSet"),
            "smoke-test-statefulset"
        );
        assert_eq!(sanitize("9lives"), "t9lives");
        assert_eq!(sanitize("__"), "t");
        assert!(sanitize(&"x".repeat(100)).len() <= 40);
    }
}
