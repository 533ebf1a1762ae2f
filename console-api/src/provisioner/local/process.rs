//! Node processes: start, recognise after a console restart, signal.
//!
//! A process is identified by its pid **and** its start time (field 22 of
//! `/proc/<pid>/stat`), because pids are reused: a recorded pid whose start time differs
//! is somebody else. When the record is missing or stale (the console died between
//! spawning and recording), `/proc/*/cmdline` is searched for the node's exact command
//! line, so a node is adopted rather than started twice. (Two processes on one data dir
//! are also refused by the node's own database lock.)

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rustix::process::{Pid, Signal, kill_process};
use serde::{Deserialize, Serialize};

/// A running node as recorded in `process.json` next to its config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    /// Clock ticks since boot at which the process started.
    pub start_time: u64,
}

/// `(state, start_time)` of `pid` from `/proc/<pid>/stat`, or `None` when it is gone.
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Fields after the name start at field 3 (state); start time is field 22.
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start_time))
}

impl ProcessId {
    /// The process with `pid` as it is now.
    pub fn of(pid: i32) -> Option<Self> {
        stat(pid).map(|(_, start_time)| Self { pid, start_time })
    }

    /// True while this very process (not a later one with the same pid) runs.
    /// A zombie counts as gone: it no longer serves anything.
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }

    pub fn signal(&self, signal: Signal) {
        if !self.is_alive() {
            return;
        }
        if let Some(pid) = Pid::from_raw(self.pid) {
            // ESRCH (exited meanwhile) is fine: the goal is that it stops.
            let _ = kill_process(pid, signal);
        }
    }

    pub fn terminate(&self) {
        self.signal(Signal::TERM);
    }

    pub fn kill(&self) {
        self.signal(Signal::KILL);
    }
}

/// The arguments a node is started with; also what [`find_running`] looks for.
fn node_args(config: &Path) -> [std::ffi::OsString; 3] {
    [
        "run".into(),
        "--config".into(),
        config.as_os_str().to_owned(),
    ]
}

/// Every live process running `trellis-node run --config <config>` (any binary path).
pub fn find_running(config: &Path) -> Vec<ProcessId> {
    let wanted = node_args(config);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .collect();
            // The binary (args[0], or an interpreter and a script) may be anything.
            args.len() >= 4
                && args[args.len() - 3..]
                    .iter()
                    .zip(wanted.iter())
                    .all(|(have, want)| *have == want.as_encoded_bytes())
        })
        .filter_map(ProcessId::of)
        .filter(ProcessId::is_alive)
        .collect()
}

/// Starts `binary run --config <config>` in its own process group (a Ctrl-C meant for
/// the console does not reach it; it outlives a console restart), stderr appended to
/// `log`, with `RUST_LOG=warn` unless the console's environment says otherwise.
pub fn spawn(binary: &Path, config: &Path, log: &Path) -> std::io::Result<(Child, ProcessId)> {
    use std::os::unix::process::CommandExt as _;
    let log = OpenOptions::new().create(true).append(true).open(log)?;
    let mut command = Command::new(binary);
    command
        .args(node_args(config))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
    if std::env::var_os("TRELLIS_NODE_LOG").is_some() {
        command.env(
            "RUST_LOG",
            std::env::var_os("TRELLIS_NODE_LOG").unwrap_or_default(),
        );
    } else {
        command.env("RUST_LOG", "warn");
    }
    let child = command.spawn()?;
    let pid = i32::try_from(child.id()).unwrap_or(0);
    let id = ProcessId::of(pid).unwrap_or(ProcessId { pid, start_time: 0 });
    Ok((child, id))
}

/// Where the node binary is: `explicit` (flag or environment), else next to the
/// console's own executable, else on `PATH`.
pub fn find_node_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(format!(
                "--node-binary {} does not exist; build it with `cargo build --release -p \
                 trellis-node` or point the flag at it",
                path.display()
            ))
        };
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        let beside = dir.join("trellis-node");
        if beside.is_file() {
            return Ok(beside);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("trellis-node");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(
        "the trellis-node binary was not found (not given with --node-binary or \
         TRELLIS_NODE_BINARY, not next to trellis-console, not on PATH); build it with \
         `cargo build --release -p trellis-node`"
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessId::of(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert!(me.is_alive());
        let impostor = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!impostor.is_alive());
        assert!(ProcessId::of(i32::MAX).is_none());
    }

    #[test]
    fn a_spawned_process_is_found_by_its_command_line_and_stopped() {
        let dir = tempfile::tempdir().unwrap();
        // A stand-in "node": a shell script that ignores its arguments and sleeps (its
        // command line is `/bin/sh <script> run --config <config>`).
        let binary = dir.path().join("fake-node");
        std::fs::write(&binary, "#!/bin/sh\nsleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.path().join("node.toml");
        let (mut child, id) = spawn(&binary, &config, &dir.path().join("log")).unwrap();
        assert!(id.is_alive());
        // Until the child has exec'd, /proc shows the parent's command line, and while
        // the script's shell forks `sleep`, that fork shows the script's: wait until
        // exactly the spawned process matches.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut found = find_running(&config);
        while found != [id] && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            found = find_running(&config);
        }
        assert_eq!(found, [id]);
        assert!(find_running(&dir.path().join("other.toml")).is_empty());
        id.kill();
        child.wait().unwrap();
        assert!(!id.is_alive());
        assert!(find_running(&config).is_empty());
    }

    #[test]
    fn missing_node_binary_is_a_clear_error() {
        let err = find_node_binary(Some(Path::new("/nonexistent/trellis-node"))).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }
}
