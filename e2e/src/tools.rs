//! Command-line tools the end-to-end tests drive: Helm (built from Go modules by
//! `e2e/scripts/build-helm.sh`) and the workspace's own binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::supervised::{self, EnvError};

/// The repository root (the tests' working directory is their crate's).
pub fn repo_root() -> PathBuf {
    supervised::scripts_dir()
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cached `helm`, if `e2e/scripts/build-helm.sh` has built it (the README test
/// command does; run the script yourself otherwise).
pub fn helm() -> Result<PathBuf, EnvError> {
    let out = Command::new("bash")
        .arg(supervised::scripts_dir().join("build-helm.sh"))
        .arg("--check")
        .output()
        .map_err(|e| EnvError::Unavailable(format!("running build-helm.sh: {e}")))?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let helm = PathBuf::from(dir).join("helm");
    if out.status.success() && helm.is_file() {
        Ok(helm)
    } else {
        Err(EnvError::Unavailable(
            "helm is not built: run `bash e2e/scripts/build-helm.sh` (the README test \
             command does)"
                .into(),
        ))
    }
}

/// A binary of this workspace (`trellis-operator`, `trellis-console`, …) from the
/// target directory the running test was built into. `cargo test --workspace` builds
/// every package's binaries before it runs any test; a narrower run gets a clear error.
pub fn workspace_binary(name: &str) -> Result<PathBuf, EnvError> {
    let exe = std::env::current_exe().map_err(|e| EnvError::Unavailable(e.to_string()))?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join(name))
        .ok_or_else(|| EnvError::Unavailable(format!("no target directory above {exe:?}")))?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(EnvError::Unavailable(format!(
            "{} is not built: run `cargo build -p {name}` (or the README test command)",
            path.display()
        )))
    }
}
