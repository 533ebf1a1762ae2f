//! `trellis-console`: the console API server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use trellis_console::app::{self, AppState, Settings};
use trellis_console::auth::jwt::TokenKeys;
use trellis_console::custody::MasterKey;
use trellis_console::networks::reconcile;
use trellis_console::provisioner::kube::{DEFAULT_NODE_IMAGE_REPOSITORY, KubeProvisioner};
use trellis_console::provisioner::{Provisioner, Unattached};
use trellis_console::{db, openapi};

#[derive(Parser)]
#[command(name = "trellis-console", version, about = "The Trellis console API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ProvisionerKind {
    /// Record desired state only; networks stay Pending until a provisioner is attached.
    Unattached,
    /// Write ChainNetwork resources (one namespace `trellis-<tenant>` per tenant) for the
    /// operator; the client comes from the in-cluster config or KUBECONFIG.
    Kube,
}

// Parsed once at start-up; the size of the `Serve` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the API.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "TRELLIS_CONSOLE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Directory for the SQLite database and the generated signing key.
        #[arg(long, env = "TRELLIS_DATA_DIR", default_value = "./trellis-data")]
        data_dir: PathBuf,
        /// Database URL (`postgres://…` or `sqlite://…`); default: SQLite in the data dir.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// PKCS#8 PEM Ed25519 key that signs access tokens; created if missing.
        /// Default: `<data-dir>/access-token-signing-key.pem`.
        #[arg(long, env = "TRELLIS_CONSOLE_SIGNING_KEY")]
        signing_key: Option<PathBuf>,
        /// Hex file with the 256-bit master key that seals custodied organisation keys;
        /// created if missing. Default: `<data-dir>/custody-master-key`. Keep it out of
        /// database backups.
        #[arg(long, env = "TRELLIS_CONSOLE_MASTER_KEY_FILE")]
        master_key: Option<PathBuf>,
        /// Extra public (or private) PEM keys whose tokens are still accepted; for key
        /// rotation. Repeatable.
        #[arg(
            long = "verify-key",
            env = "TRELLIS_CONSOLE_VERIFY_KEYS",
            value_delimiter = ','
        )]
        verify_keys: Vec<PathBuf>,
        /// Access-token lifetime in seconds.
        #[arg(long, env = "TRELLIS_CONSOLE_ACCESS_TTL", default_value_t = 900)]
        access_token_ttl: u64,
        /// Requests per minute per client address on /v1/auth/* (0: unlimited).
        #[arg(long, env = "TRELLIS_CONSOLE_AUTH_RATE", default_value_t = 30)]
        auth_requests_per_minute: u32,
        /// Requests per minute per tenant (0: unlimited).
        #[arg(long, env = "TRELLIS_CONSOLE_TENANT_RATE", default_value_t = 60_000)]
        tenant_requests_per_minute: u32,
        /// Seconds between reconciler passes (retries, status refresh).
        #[arg(long, env = "TRELLIS_CONSOLE_RECONCILE_INTERVAL", default_value_t = 10)]
        reconcile_interval: u64,
        #[arg(
            long,
            env = "TRELLIS_CONSOLE_PROVISIONER",
            value_enum,
            default_value = "unattached"
        )]
        provisioner: ProvisionerKind,
        /// `kube` provisioner: repository of the trellis-node image; the tag is the
        /// network's node version.
        #[arg(
            long,
            env = "TRELLIS_CONSOLE_NODE_IMAGE_REPOSITORY",
            default_value = DEFAULT_NODE_IMAGE_REPOSITORY
        )]
        node_image_repository: String,
        /// Seconds between monitoring collections (node scrapes, alerts, webhooks).
        #[arg(long, env = "TRELLIS_CONSOLE_COLLECT_INTERVAL", default_value_t = 15)]
        collect_interval: u64,
        /// Log as JSON lines. Traces are exported over OTLP/HTTP when
        /// OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set.
        #[arg(long, env = "TRELLIS_LOG_JSON")]
        log_json: bool,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Make the owners and admins of a tenant platform admins (they edit plans and
    /// prices through the API).
    GrantPlatformAdmin {
        /// The tenant's slug.
        #[arg(long)]
        tenant: String,
        #[arg(long, env = "TRELLIS_DATA_DIR", default_value = "./trellis-data")]
        data_dir: PathBuf,
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
    },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => {
            print!("{}", openapi::json());
            Ok(())
        }
        Command::GrantPlatformAdmin {
            tenant,
            data_dir,
            database_url,
        } => {
            let url = database_url.unwrap_or_else(|| db::sqlite_url(&data_dir));
            let database = db::connect_and_migrate(&url).await?;
            let id = trellis_console::billing::admin::grant_by_slug(&database, &tenant).await?;
            println!("tenant {tenant} ({id}) is a platform admin");
            Ok(())
        }
        Command::Serve {
            listen,
            data_dir,
            database_url,
            signing_key,
            master_key,
            verify_keys,
            access_token_ttl,
            auth_requests_per_minute,
            tenant_requests_per_minute,
            reconcile_interval,
            provisioner,
            node_image_repository,
            collect_interval,
            log_json,
        } => {
            let telemetry = trellis_console::telemetry::init(log_json)?;
            if telemetry.exporting() {
                tracing::info!("exporting traces over OTLP");
            }
            std::fs::create_dir_all(&data_dir)?;
            let url = database_url.unwrap_or_else(|| db::sqlite_url(&data_dir));
            let database = db::connect_and_migrate(&url).await?;
            let key_path =
                signing_key.unwrap_or_else(|| data_dir.join("access-token-signing-key.pem"));
            let keys = TokenKeys::load_or_create(&key_path, &verify_keys, access_token_ttl)?;
            let master_key = MasterKey::load_or_create(
                &master_key.unwrap_or_else(|| data_dir.join("custody-master-key")),
            )?;
            let provisioner: Arc<dyn Provisioner> = match provisioner {
                ProvisionerKind::Unattached => {
                    tracing::warn!(
                        "no provisioner attached: networks are recorded but not provisioned"
                    );
                    Arc::new(Unattached)
                }
                ProvisionerKind::Kube => {
                    let client = kube::Client::try_default().await?;
                    tracing::info!(
                        %node_image_repository,
                        "kube provisioner: networks become ChainNetwork resources"
                    );
                    Arc::new(KubeProvisioner::new(client, node_image_repository))
                }
            };
            let settings = Settings {
                auth_requests_per_minute,
                tenant_requests_per_minute,
                ..Settings::default()
            };
            let mut state = AppState::new(database, keys, master_key, provisioner, settings);
            trellis_console::billing::start(
                &mut state,
                listen,
                Duration::from_secs(collect_interval.max(1)),
            );
            tokio::spawn(reconcile::run(
                state.clone(),
                Duration::from_secs(reconcile_interval.max(1)),
            ));
            let listener = tokio::net::TcpListener::bind(listen).await?;
            tracing::info!(address = %listener.local_addr()?, database = %redact(&url), "serving");
            axum::serve(
                listener,
                app::router(state).into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown_signal())
            .await?;
            telemetry.shutdown();
            Ok(())
        }
    }
}

/// The database URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_passwords_are_redacted() {
        assert_eq!(
            redact("postgres://trellis:s3cret@127.0.0.1:5432/console"),
            "postgres://trellis:***@127.0.0.1:5432/console"
        );
        assert_eq!(
            redact("sqlite://./data/console.db?mode=rwc"),
            "sqlite://./data/console.db?mode=rwc"
        );
    }
}
