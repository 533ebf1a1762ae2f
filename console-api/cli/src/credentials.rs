//! Where `trellis login` keeps the console URL and the caller's tokens.
//!
//! One JSON file, mode 0600, written to a temporary file and renamed into place so a
//! crash never leaves half a file. The refresh token is a secret: it is never printed.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    /// Base URL of the console, e.g. `http://127.0.0.1:8080`.
    pub console: String,
    pub email: String,
    pub access_token: String,
    pub refresh_token: String,
}

/// The credentials file: `--config`, `TRELLIS_CLI_CONFIG`, else
/// `$XDG_CONFIG_HOME/trellis/credentials.json` or `~/.config/trellis/credentials.json`.
pub fn default_path() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("trellis/credentials.json"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config/trellis/credentials.json")),
        None => bail!("cannot tell where to keep credentials: set HOME or pass --config"),
    }
}

/// Reads the file; `None` when there is none (not logged in).
pub fn load(path: &Path) -> Result<Option<Credentials>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let creds = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a Trellis credentials file; remove it and log in again",
            path.display()
        )
    })?;
    Ok(Some(creds))
}

/// Writes the file atomically with mode 0600.
pub fn save(path: &Path, creds: &Credentials) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".credentials.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = open_private(&tmp)?;
        file.write_all(serde_json::to_string_pretty(creds)?.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("writing {}: {e}", path.display())
    })
}

/// Removes the file (logging out); absent is fine.
pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_private_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/credentials.json");
        assert_eq!(load(&path).unwrap(), None);
        let creds = Credentials {
            console: "http://127.0.0.1:8080".into(),
            email: "a@b.io".into(),
            access_token: "at".into(),
            refresh_token: "rt".into(),
        };
        save(&path, &creds).unwrap();
        assert_eq!(load(&path).unwrap(), Some(creds));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(load(&path).unwrap(), None);
    }

    #[test]
    fn a_foreign_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        std::fs::write(&path, "not json").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("not a Trellis credentials file"), "{err}");
    }
}
