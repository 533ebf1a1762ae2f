//! The real `trellis-console serve` binary on loopback: starts, migrates, serves, keeps
//! its signing key and data across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(data_dir: &std::path::Path) -> Server {
    start_with(data_dir, &[]).await
}

async fn start_with(data_dir: &std::path::Path, env: &[(&str, String)]) -> Server {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_trellis-console"));
    for (name, value) in env {
        command.env(name, value);
    }
    let child = command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = request(port, "GET", "/healthz", None, None).await {
            return server;
        }
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
async fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> std::io::Result<(u16, serde_json::Value)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("content-type: application/json\r\n");
    }
    if let Some(token) = token {
        head.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

#[tokio::test]
async fn serve_persists_data_and_keys_across_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let port = server.port;
    assert_eq!(
        request(port, "GET", "/readyz", None, None).await.unwrap().0,
        200
    );
    let (status, signup) = request(
        port,
        "POST",
        "/v1/auth/signup",
        None,
        Some(serde_json::json!({
            "organisation": "Restart Ltd",
            "email": "ops@restart.example",
            "password": "correct horse battery staple",
        })),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{signup}");
    let token = signup["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, created) = request(
        port,
        "POST",
        "/v1/networks",
        Some(&token),
        Some(serde_json::json!({"name": "survivor", "mode": "public"})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{created}");
    // No provisioner is attached to the plain binary yet, and it says so.
    assert_eq!(created["phase"], "Pending");
    let (status, metrics) = request(port, "GET", "/metrics", None, None).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(metrics, serde_json::Value::Null); // text, not JSON
    drop(server);

    let key = dir.path().join("access-token-signing-key.pem");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(dir.path().join("console.db").exists());

    // Restart on the same data dir: migrations are idempotent, the old token still
    // verifies (same key), the data is there.
    let server = start(dir.path()).await;
    let (status, list) = request(server.port, "GET", "/v1/networks", Some(&token), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"][0]["name"], "survivor");
}
