//! What the CLI's tests share: the `trellis` binary with its own credentials file, a
//! real `trellis-console serve`, and a person using both.

// Each test binary uses its part of this module.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `trellis` with `config` as its credentials file, no console named by the environment.
pub fn trellis(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trellis"));
    c.env_remove("TRELLIS_CONSOLE_URL")
        .env_remove("TRELLIS_OUTPUT")
        .env("TRELLIS_CLI_CONFIG", config);
    c
}

/// Runs `c` to its end: (success, stdout, stderr).
pub fn run(c: &mut Command) -> (bool, String, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Where the console listens (the CLI tests' loopback address).
pub const HOST: &str = "127.0.97.1";

/// A `trellis-console serve` process, killed when dropped.
pub struct Console(Child);

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The console binary beside `trellis` (the workspace builds both).
fn console_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_trellis")).with_file_name("trellis-console");
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build -p trellis-console` first",
        path.display()
    );
    path
}

/// `trellis-console serve` on [`HOST`] with its SQLite database in `data`; its URL.
pub fn start_console(data: &Path) -> (Console, String) {
    let port = std::net::TcpListener::bind((HOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(console_binary())
        .args(["serve", "--listen", &format!("{HOST}:{port}"), "--data-dir"])
        .arg(data)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let console = Console(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect((HOST, port)).is_err() {
        assert!(Instant::now() < deadline, "the console did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    (console, format!("http://{HOST}:{port}"))
}

/// A person at the CLI: their credentials file and the console they use.
pub struct User {
    pub config: PathBuf,
    pub console: String,
}

impl User {
    /// Runs `trellis ARGS` against this user's console, `stdin` as its input.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut child = trellis(&self.config)
            .args(["--console", &self.console])
            .args(args)
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

    pub fn signup(&self, organisation: &str, email: &str) {
        let (ok, out, err) = self.run(
            &[
                "signup",
                "--organisation",
                organisation,
                "--email",
                email,
                "--password-stdin",
            ],
            Some("a long enough passphrase\n"),
        );
        assert!(ok, "{out}{err}");
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
}
