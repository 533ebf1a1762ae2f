//! `trellis-console`: the console API server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use trellis_console::app::{self, AppState, Settings};
use trellis_console::auth::jwt::TokenKeys;
use trellis_console::custody::MasterKey;
use trellis_console::governance::CustodySigner;
use trellis_console::networks::{autoscale, reconcile};
use trellis_console::provisioner::kube::{DEFAULT_NODE_IMAGE_REPOSITORY, KubeProvisioner};
use trellis_console::provisioner::local::addresses::AddressRange;
use trellis_console::provisioner::local::{
    DEFAULT_TREASURY_BALANCE, LocalProvisioner, LocalSettings, process::find_node_binary,
};
use trellis_console::provisioner::{Provisioner, Unattached};
use trellis_console::{db, openapi, up};

/// Loopback addresses of local nodes unless `--local-addresses` says otherwise.
const DEFAULT_LOCAL_ADDRESSES: &str = "127.0.100.0/24";

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
    /// Run the networks as local `trellis-node` processes on loopback addresses, with
    /// their data under `<data-dir>/local`.
    Local,
}

/// Where the local provisioner finds its node binary and addresses.
#[derive(Clone, Debug, clap::Args)]
struct LocalArgs {
    /// The `trellis-node` binary; default: next to this executable, else on PATH.
    #[arg(long, env = "TRELLIS_NODE_BINARY")]
    node_binary: Option<PathBuf>,
    /// Loopback addresses for local nodes (one per node), as a CIDR block or FIRST-LAST.
    #[arg(long, env = "TRELLIS_LOCAL_ADDRESSES", default_value = DEFAULT_LOCAL_ADDRESSES)]
    local_addresses: AddressRange,
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
        #[command(flatten)]
        local: LocalArgs,
        /// Seconds between monitoring collections (node scrapes, alerts, webhooks).
        #[arg(long, env = "TRELLIS_CONSOLE_COLLECT_INTERVAL", default_value_t = 15)]
        collect_interval: u64,
        /// Log as JSON lines.
        #[arg(long, env = "TRELLIS_LOG_JSON")]
        log_json: bool,
        /// OTLP/HTTP collector (e.g. http://otel-collector:4318) for spans and metrics;
        /// default: the standard OTEL_EXPORTER_OTLP_ENDPOINT; neither: nothing exported.
        #[arg(long)]
        otlp_endpoint: Option<String>,
    },
    /// Run the whole product on this machine: the console with SQLite in the data dir
    /// and the local provisioner; creates the first admin (printed once); `--demo` also
    /// creates a consortium and a public network and sends a first transfer. Running it
    /// again on the same data dir resumes.
    Up {
        #[arg(long, env = "TRELLIS_DATA_DIR", default_value = "./trellis-data")]
        data_dir: PathBuf,
        #[arg(long, env = "TRELLIS_CONSOLE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Also provision a 3-organisation consortium and a 2-shard public network and
        /// send a first transfer through the node RPC proxy.
        #[arg(long)]
        demo: bool,
        #[command(flatten)]
        local: LocalArgs,
        #[arg(long, env = "TRELLIS_LOG_JSON")]
        log_json: bool,
        /// OTLP/HTTP collector for spans and metrics (as for `serve`).
        #[arg(long)]
        otlp_endpoint: Option<String>,
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

/// Everything a running console needs, from either `serve` or `up`.
struct ServerConfig {
    listen: SocketAddr,
    data_dir: PathBuf,
    database_url: Option<String>,
    signing_key: Option<PathBuf>,
    master_key: Option<PathBuf>,
    verify_keys: Vec<PathBuf>,
    access_token_ttl: u64,
    settings: Settings,
    reconcile_interval: u64,
    /// Seconds between monitoring collections.
    collect_interval: u64,
    provisioner: ProvisionerKind,
    node_image_repository: String,
    local: LocalArgs,
    log_json: bool,
    otlp_endpoint: Option<String>,
}

/// `up`'s part: bootstrap once listening, stop the nodes on the way out.
struct UpMode {
    demo: bool,
    started: Instant,
}

async fn local_provisioner(
    data_dir: &std::path::Path,
    local: &LocalArgs,
) -> Result<LocalProvisioner, Box<dyn std::error::Error>> {
    let node_binary = find_node_binary(local.node_binary.as_deref())?;
    let provisioner = LocalProvisioner::start(LocalSettings {
        root: data_dir.join("local"),
        node_binary,
        addresses: local.local_addresses,
        treasury_balance: DEFAULT_TREASURY_BALANCE,
    })
    .await?;
    tracing::info!(
        addresses = %local.local_addresses,
        node_binary = %provisioner.settings().node_binary.display(),
        "local provisioner: networks run as trellis-node processes"
    );
    Ok(provisioner)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // kube links rustls with ring, other crates may add aws-lc-rs: with two providers
    // compiled in, rustls cannot pick one by itself, so name it before any TLS client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let started = Instant::now();
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
            local,
            collect_interval,
            log_json,
            otlp_endpoint,
        } => {
            let config = ServerConfig {
                listen,
                data_dir,
                database_url,
                signing_key,
                master_key,
                verify_keys,
                access_token_ttl,
                settings: Settings {
                    auth_requests_per_minute,
                    tenant_requests_per_minute,
                    ..Settings::default()
                },
                reconcile_interval,
                collect_interval,
                provisioner,
                node_image_repository,
                local,
                log_json,
                otlp_endpoint,
            };
            run(config, None).await
        }
        Command::Up {
            data_dir,
            listen,
            demo,
            local,
            log_json,
            otlp_endpoint,
        } => {
            let config = ServerConfig {
                listen,
                data_dir,
                database_url: None,
                signing_key: None,
                master_key: None,
                verify_keys: Vec::new(),
                access_token_ttl: 900,
                settings: Settings::default(),
                // Status shows up quickly on one machine.
                reconcile_interval: 2,
                collect_interval: 15,
                provisioner: ProvisionerKind::Local,
                node_image_repository: DEFAULT_NODE_IMAGE_REPOSITORY.to_string(),
                local,
                log_json,
                otlp_endpoint,
            };
            run(config, Some(UpMode { demo, started })).await
        }
    }
}

async fn run(config: ServerConfig, up: Option<UpMode>) -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = if up.is_some() {
        trellis_console::telemetry::init_with(
            config.log_json,
            "warn",
            true,
            config.otlp_endpoint.clone(),
        )?
    } else {
        trellis_console::telemetry::init(config.log_json, config.otlp_endpoint.clone())?
    };
    let data_dir = config.data_dir;
    std::fs::create_dir_all(&data_dir)?;
    let url = config
        .database_url
        .unwrap_or_else(|| db::sqlite_url(&data_dir));
    let database = db::connect_and_migrate(&url).await?;
    let key_path = config
        .signing_key
        .unwrap_or_else(|| data_dir.join("access-token-signing-key.pem"));
    let keys = TokenKeys::load_or_create(&key_path, &config.verify_keys, config.access_token_ttl)?;
    let master_key = MasterKey::load_or_create(
        &config
            .master_key
            .unwrap_or_else(|| data_dir.join("custody-master-key")),
    )?;
    let mut local = None;
    let mut kube_provisioner = None;
    let provisioner: Arc<dyn Provisioner> = match config.provisioner {
        ProvisionerKind::Unattached => {
            tracing::warn!("no provisioner attached: networks are recorded but not provisioned");
            Arc::new(Unattached)
        }
        ProvisionerKind::Kube => {
            let client = kube::Client::try_default().await?;
            tracing::info!(
                node_image_repository = %config.node_image_repository,
                "kube provisioner: networks become ChainNetwork resources"
            );
            let provisioner = KubeProvisioner::new(client, config.node_image_repository);
            kube_provisioner = Some(provisioner.clone());
            Arc::new(provisioner)
        }
        ProvisionerKind::Local => {
            let provisioner = local_provisioner(&data_dir, &config.local).await?;
            local = Some(provisioner.clone());
            Arc::new(provisioner)
        }
    };
    let mut state = AppState::new(database, keys, master_key, provisioner, config.settings);
    // Metering, monitoring and alerts (also installs the process's TLS provider).
    trellis_console::billing::start(
        &mut state,
        config.listen,
        Duration::from_secs(config.collect_interval.max(1)),
    );
    if let Some(local) = &local {
        // Admissions into local consortia are approved on chain with custodied keys.
        local.set_governance_signer(Arc::new(CustodySigner::new(
            state.db.clone(),
            state.master_key.clone(),
        )));
    }
    if local.is_some() {
        // Local mode has no operator: the console autoscales public networks itself.
        tokio::spawn(autoscale::run(state.clone(), autoscale::INTERVAL));
    }
    if let Some(kube) = &kube_provisioner {
        // Admissions into consortia on Kubernetes: the approvals go to the operator.
        kube.set_governance_signer(Arc::new(CustodySigner::new(
            state.db.clone(),
            state.master_key.clone(),
        )));
        kube.spawn_governance();
    }
    tokio::spawn(reconcile::run(
        state.clone(),
        Duration::from_secs(config.reconcile_interval.max(1)),
    ));
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let address = listener.local_addr()?;
    tracing::info!(%address, database = %redact(&url), "serving");
    let server = axum::serve(
        listener,
        app::router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal());
    let outcome = match (&up, &local) {
        (Some(up_mode), Some(local)) => {
            let base = format!("http://{address}");
            let mut server = std::pin::pin!(server.into_future());
            let mut stdout = std::io::stdout();
            let bootstrap = up::bootstrap(
                &base,
                &data_dir,
                up_mode.demo,
                local,
                up_mode.started,
                &mut stdout,
            );
            // Serve while bootstrapping (it is a client of this very server).
            let bootstrapped = tokio::select! {
                served = &mut server => Some(served.map_err(|e| e.to_string())),
                done = bootstrap => {
                    done.map_err(|e| format!("up: {e}")).err().map(Err)
                }
            };
            match bootstrapped {
                Some(Err(e)) => Err(e),
                Some(Ok(())) => Ok(()),
                None => server.await.map_err(|e| e.to_string()),
            }
        }
        _ => server.await.map_err(|e| e.to_string()),
    };
    if let (Some(_), Some(local)) = (&up, &local) {
        // `up` owns its nodes: they stop with it and come back with the next `up`.
        local.stop_all().await;
    }
    telemetry.shutdown();
    outcome.map_err(Into::into)
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
