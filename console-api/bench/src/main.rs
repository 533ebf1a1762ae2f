//! Load benchmark of the console API (measured, not asserted):
//!
//!   cargo run --release -p trellis-console-bench -- [SECONDS] [CONNECTIONS]
//!
//! Starts, in this process on loopback, a bare axum hello-world (the baseline) and the
//! console (real router, real database: SQLite in a temp dir, then PostgreSQL when
//! `TRELLIS_BENCH_DATABASE_URL` names an empty database), signs up a tenant, creates 20 networks, and
//! drives authenticated `GET /v1/networks?limit=20` and `GET /v1/networks/{id}` with
//! CONNECTIONS keep-alive HTTP/1.1 connections for SECONDS each, then the list again
//! while one of the networks is written every 100 ms (each write makes the console build
//! its remembered answers again). Prints requests/s,
//! p50/p99 latency and the ratio to the hello-world baseline measured in the same run.
//! The load generator shares the machine with the server, like wrk on one host.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark command

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_console::app::{self, AppState, Settings};
use trellis_console::auth::jwt::{TokenKeys, generate_signing_key};
use trellis_console::custody::MasterKey;
use trellis_console::db;
use trellis_console::provisioner::Unattached;

struct Outcome {
    requests: u64,
    errors: u64,
    latencies_us: Vec<u32>,
    seconds: f64,
    /// CPU time of this whole process (load generator, server, database threads) over
    /// the row: the fair comparison between builds on a shared machine, where req/s
    /// mostly measures how much CPU other work left over.
    cpu_seconds: f64,
}

impl Outcome {
    fn cpu_us_per_request(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.requests.max(1) as f64
    }

    fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        f64::from(self.latencies_us[index]) / 1000.0
    }
}

/// User + system CPU seconds of this process so far (`/proc/self/stat`, in clock ticks
/// of 1/100 s, the Linux value on every architecture this runs on).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the command name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Reads one HTTP/1.1 response (headers + Content-Length body); returns the status.
async fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<u16> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_string();
            let status = head.split(' ').nth(1)?.parse().ok()?;
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + length;
            while buffer.len() < total {
                let mut chunk = [0u8; 16 * 1024];
                let read = stream.read(&mut chunk).await.ok()?;
                if read == 0 {
                    return None;
                }
                buffer.extend_from_slice(&chunk[..read]);
            }
            buffer.drain(..total);
            return Some(status);
        }
        let mut chunk = [0u8; 16 * 1024];
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

async fn drive(
    port: u16,
    path: &str,
    token: Option<&str>,
    seconds: u64,
    connections: usize,
) -> Outcome {
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n");
    if let Some(token) = token {
        request.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    let request = Arc::new(request.into_bytes());
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let mut buffer = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                if stream.write_all(&request).await.is_err() {
                    errors += 1;
                    break;
                }
                match read_response(&mut stream, &mut buffer).await {
                    Some(200) => {
                        latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32)
                    }
                    Some(_) => errors += 1,
                    None => {
                        errors += 1;
                        break;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, task_errors) = task.await.unwrap();
        latencies_us.extend(latencies);
        errors += task_errors;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds() - cpu_before;
    latencies_us.sort_unstable();
    Outcome {
        requests: latencies_us.len() as u64,
        errors,
        latencies_us,
        seconds,
        cpu_seconds,
    }
}

async fn serve(router: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    port
}

async fn post_json(
    port: u16,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> serde_json::Value {
    let body = body.to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap()
}

async fn console(url: &str) -> (u16, String, String, sea_orm::DatabaseConnection) {
    let database = db::connect_and_migrate(url).await.unwrap();
    let keys = TokenKeys::new(&generate_signing_key(), &[], 3600).unwrap();
    let settings = Settings {
        auth_requests_per_minute: 0,
        tenant_requests_per_minute: 0,
        ..Settings::default()
    };
    let state = AppState::new(
        database,
        keys,
        MasterKey::generate(),
        Arc::new(Unattached),
        settings,
    );
    let db = state.db.clone();
    let port = serve(app::router(state)).await;
    let signup = post_json(
        port,
        "/v1/auth/signup",
        None,
        serde_json::json!({"organisation": "Bench", "email": "bench@example.com", "password": "benchmark password"}),
    )
    .await;
    let token = signup["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let tenant: uuid::Uuid = signup["tenant"]["id"].as_str().unwrap().parse().unwrap();
    {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        use trellis_console_entity::tenant;
        tenant::Entity::update_many()
            .col_expr(
                tenant::Column::Plan,
                sea_orm::sea_query::Expr::value("enterprise"),
            )
            .filter(tenant::Column::Id.eq(tenant))
            .exec(&db)
            .await
            .unwrap();
    }
    let mut id = String::new();
    for index in 0..20 {
        let created = post_json(
            port,
            "/v1/networks",
            Some(&token),
            serde_json::json!({"name": format!("bench-{index}"), "mode": "public", "shards": {"count": 2, "min": 1, "max": 4}}),
        )
        .await;
        id = created["id"].as_str().unwrap().to_string();
    }
    (port, token, id, db)
}

/// Touches network `id` (its `updated_at`) every `every` until `stop`: a write that
/// changes the tenant's network version, so the console's remembered read answers are
/// built again after each (the other rows measure the reads of a quiet tenant).
fn keep_writing(
    db: sea_orm::DatabaseConnection,
    id: &str,
    every: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    use trellis_console_entity::network;
    let id: uuid::Uuid = id.parse().unwrap();
    tokio::spawn(async move {
        let mut writes = 0;
        let mut ticker = tokio::time::interval(every);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            ticker.tick().await;
            network::Entity::update_many()
                .col_expr(
                    network::Column::UpdatedAt,
                    sea_orm::sea_query::Expr::value(chrono::Utc::now()),
                )
                .filter(network::Column::Id.eq(id))
                .exec(&db)
                .await
                .unwrap();
            writes += 1;
        }
        writes
    })
}

fn row(name: &str, outcome: &Outcome, baseline: f64) {
    println!(
        "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {} |",
        outcome.rate(),
        outcome.percentile_ms(0.5),
        outcome.percentile_ms(0.99),
        outcome.rate() / baseline,
        outcome.cpu_us_per_request(),
        outcome.errors
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let connections: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let hello =
        serve(axum::Router::new().route("/", axum::routing::get(|| async { "hello" }))).await;
    let baseline = drive(hello, "/", None, seconds, connections).await;
    println!(
        "{connections} connections, {seconds} s per row, cores: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| target | req/s | p50 ms | p99 ms | ratio to hello | CPU µs/req | errors |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    row("axum hello-world (baseline)", &baseline, baseline.rate());

    let dir = tempfile::tempdir().unwrap();
    let mut backends = vec![("SQLite".to_string(), db::sqlite_url(dir.path()))];
    if let Ok(url) = std::env::var("TRELLIS_BENCH_DATABASE_URL") {
        backends.push(("PostgreSQL".to_string(), url));
    }
    for (backend, url) in backends {
        let (port, token, id, db) = console(&url).await;
        let load = |path: String| {
            let token = token.clone();
            async move { drive(port, &path, Some(&token), seconds, connections).await }
        };
        let list_path = "/v1/networks?limit=20".to_string();
        let list = load(list_path.clone()).await;
        row(
            &format!("{backend}: GET {list_path}"),
            &list,
            baseline.rate(),
        );
        let get = load(format!("/v1/networks/{id}")).await;
        row(
            &format!("{backend}: GET /v1/networks/{{id}}"),
            &get,
            baseline.rate(),
        );
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = keep_writing(db, &id, Duration::from_millis(100), stop.clone());
        let list = load(list_path.clone()).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let writes = writer.await.unwrap();
        row(
            &format!("{backend}: GET {list_path}, {writes} writes (one per 100 ms)"),
            &list,
            baseline.rate(),
        );
    }
}
