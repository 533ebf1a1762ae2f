//! The `trellis` binary without a console: help, completions, and the errors a person
//! sees before anything is set up.

// A test: failing is its job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::{run, trellis};

#[test]
fn help_completions_and_first_run_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("credentials.json");

    let (ok, help, _) = run(trellis(&config).arg("--help"));
    assert!(ok);
    for command in ["login", "networks", "consortium", "completions"] {
        assert!(help.contains(command), "{help}");
    }
    let (ok, script, _) = run(trellis(&config).args(["completions", "bash"]));
    assert!(ok && script.contains("_trellis"), "{script}");

    let (ok, _, err) = run(trellis(&config).args(["networks", "list"]));
    assert!(!ok);
    assert!(err.contains("--console"), "{err}");

    let (ok, _, err) =
        run(trellis(&config).args(["--console", "http://127.0.0.1:9", "networks", "list"]));
    assert!(!ok);
    assert!(err.contains("not logged in"), "{err}");

    let (ok, _, err) = run(trellis(&config)
        .args([
            "--console",
            "http://127.0.0.1:9",
            "login",
            "--email",
            "a@b.io",
            "--password-stdin",
        ])
        .stdin(std::process::Stdio::null()));
    assert!(!ok);
    assert!(err.contains("password is empty"), "{err}");

    // `tx transfer` checks its key file and recipient before asking the console.
    let transfer = |key_file: &std::path::Path, to: &str| {
        run(trellis(&config).args([
            "--console",
            "http://127.0.0.1:9",
            "tx",
            "transfer",
            "net",
            "--key-file",
            &key_file.to_string_lossy(),
            "--to",
            to,
            "--amount",
            "1",
        ]))
    };
    let (ok, _, err) = transfer(&dir.path().join("missing.json"), &"ab".repeat(32));
    assert!(!ok);
    assert!(err.contains("missing.json"), "{err}");
    let keys = dir.path().join("keys.json");
    std::fs::write(&keys, r#"{"node_key": "00"}"#).unwrap();
    let (ok, _, err) = transfer(&keys, &"ab".repeat(32));
    assert!(!ok);
    assert!(err.contains("admin_public_key"), "{err}");
    std::fs::write(
        &keys,
        format!(r#"{{"admin_public_key": "{}"}}"#, "cd".repeat(32)),
    )
    .unwrap();
    let (ok, _, err) = transfer(&keys, "not-a-key");
    assert!(!ok);
    assert!(err.contains("--to must be a hex"), "{err}");

    // So does `tx load`, and its rate and duration.
    let load = |key_file: &std::path::Path, to: &str, rate: &str, duration: &str| {
        run(trellis(&config).args([
            "--console",
            "http://127.0.0.1:9",
            "tx",
            "load",
            "net",
            "--key-file",
            &key_file.to_string_lossy(),
            "--to",
            to,
            "--rate",
            rate,
            "--duration",
            duration,
        ]))
    };
    // The Ed25519 base point: a valid public key.
    let good_to = format!("58{}", "66".repeat(31));
    for (key_file, to, rate, duration, says) in [
        (
            &keys,
            good_to.as_str(),
            "0",
            "10s",
            "--rate must be between 1 and 1000",
        ),
        (
            &keys,
            good_to.as_str(),
            "1001",
            "10s",
            "--rate must be between 1 and 1000",
        ),
        (&keys, good_to.as_str(), "5", "ten", "--duration \"ten\""),
        (&keys, good_to.as_str(), "5", "48h", "at most 24h"),
        (&keys, "not-a-key", "5", "10s", "--to must be a hex"),
        (
            &dir.path().join("missing.json"),
            good_to.as_str(),
            "5",
            "10s",
            "missing.json",
        ),
    ] {
        let (ok, _, err) = load(key_file, to, rate, duration);
        assert!(!ok);
        assert!(err.contains(says), "{says}: {err}");
    }
    for concurrency in ["0", "257"] {
        let (ok, _, err) = run(trellis(&config).args([
            "--console",
            "http://127.0.0.1:9",
            "tx",
            "load",
            "net",
            "--key-file",
            &keys.to_string_lossy(),
            "--to",
            &good_to,
            "--rate",
            "5",
            "--duration",
            "10s",
            "--concurrency",
            concurrency,
        ]));
        assert!(!ok);
        assert!(
            err.contains("--concurrency must be between 1 and 256"),
            "{concurrency}: {err}"
        );
    }
    // Past the checks, it needs a login like every command that asks the console.
    let (ok, _, err) = load(&keys, &good_to, "5", "10s");
    assert!(!ok);
    assert!(err.contains("not logged in"), "{err}");

    let (ok, _, err) = run(trellis(&config).args(["--console", "ftp://x", "whoami"]));
    assert!(!ok);
    assert!(err.contains("http://"), "{err}");
}

/// The consortium commands for invitations and removals refuse malformed arguments
/// before they ask a console (nothing listens on port 9, and nobody is logged in).
#[test]
fn consortium_invitation_and_removal_arguments_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("credentials.json");
    let consortium = |args: &[&str]| {
        run(trellis(&config)
            .args(["--console", "http://127.0.0.1:9", "consortium"])
            .args(args))
    };
    let id = "0192f0c4-9b1e-7c3a-8d2e-5f6a7b8c9d0e";
    for (args, says) in [
        (
            &[
                "invite",
                "trade",
                "--organisation",
                "Globex",
                "--tenant",
                "globex",
            ][..],
            "\"globex\" is not an id",
        ),
        (
            &["remove", "trade", id, "--as-member", "Acme"][..],
            "\"Acme\" is not an id",
        ),
        (&["invitations"][..], "<NETWORK>"),
        (
            &["invitations", "trade", "--received"][..],
            "cannot be used with",
        ),
        (&["revoke", "trade"][..], "<INVITATION>"),
        (&["remove", "trade"][..], "<MEMBER>"),
    ] {
        let (ok, _, err) = consortium(args);
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // Well-formed, they need a login like every command that asks the console.
    for args in [
        &[
            "invite",
            "trade",
            "--organisation",
            "Globex",
            "--tenant",
            id,
        ][..],
        &["remove", "trade", id, "--as-member", id, "--as-member", id][..],
        &["invitations", "trade"][..],
        &["invitations", "--received"][..],
        &["revoke", "trade", id][..],
    ] {
        let (ok, _, err) = consortium(args);
        assert!(!ok);
        assert!(err.contains("not logged in"), "{args:?}: {err}");
    }
    let (ok, help, _) = run(trellis(&config).args(["consortium", "--help"]));
    assert!(ok);
    for command in ["invitations", "revoke", "remove"] {
        assert!(help.contains(command), "{help}");
    }
}
