//! What the e2e tests share: the `trellis` CLI as a person runs it (its own credentials
//! file, the console's URL), and waiting for something to become true.

// Each test binary uses its part of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_e2e::tools::workspace_binary;

/// A person at the `trellis` CLI: their credentials file and the console they use.
pub struct User {
    pub config: PathBuf,
    pub console: String,
}

impl User {
    /// Runs `trellis ARGS` as this user; (success, stdout, stderr).
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut child = Command::new(workspace_binary("trellis").unwrap())
            .args(["--console", &self.console])
            .args(args)
            .env("TRELLIS_CLI_CONFIG", &self.config)
            .env_remove("TRELLIS_OUTPUT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args, None);
        assert!(ok, "trellis {args:?} failed:\n{out}\n{err}");
        out
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    pub fn refused(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args, None);
        assert!(!ok, "trellis {args:?} succeeded:\n{out}");
        err
    }

    /// The access token the CLI keeps (for the HTTP calls the CLI has no command for).
    pub fn token(&self) -> String {
        let creds: Value =
            serde_json::from_str(&std::fs::read_to_string(&self.config).unwrap()).unwrap();
        creds["access_token"].as_str().unwrap().to_string()
    }

    /// One HTTP request to the console (plain HTTP/1.1 over loopback, `Connection:
    /// close`): the status and the JSON body.
    pub fn http(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let authority = self.console.trim_start_matches("http://");
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(authority).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "{method} /v1{path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.token(),
            body.len()
        )
        .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}

/// Calls `check` every half second until it returns something; fails after `limit`.
pub fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The bounds of invoice period `YYYY-MM` as RFC 3339 times: (its first instant, the next
/// month's first instant).
pub fn month_bounds(period: &str) -> (String, String) {
    let (year, month): (u32, u32) = (period[..4].parse().unwrap(), period[5..7].parse().unwrap());
    let from = format!("{period}-01T00:00:00Z");
    let to = if month == 12 {
        format!("{}-01-01T00:00:00Z", year + 1)
    } else {
        format!("{year}-{:02}-01T00:00:00Z", month + 1)
    };
    (from, to)
}
