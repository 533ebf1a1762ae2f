//! `trellis-operator`: flags, telemetry, leader election, the controller and its HTTP
//! endpoints. Everything else lives in the library.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, Subcommand};
use trellis_operator::build::BuildOptions;
use trellis_operator::chain::NodeRpc;
use trellis_operator::controller::{self, Context};
use trellis_operator::endpoints::ClusterDns;
use trellis_operator::lease::{self, LeaseConfig};
use trellis_operator::member;
use trellis_operator::metrics::Metrics;
use trellis_operator::requests;
use trellis_operator::server::{self, Health};
use trellis_operator::telemetry;

#[derive(Parser, Debug)]
#[command(
    name = "trellis-operator",
    version,
    about = "Kubernetes operator for Trellis chain networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
    /// Run the controller (the default).
    Run,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        global = true,
        env = "TRELLIS_OPERATOR_HTTP_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    http_addr: SocketAddr,
    /// DNS suffix of the cluster (used in node addresses).
    #[arg(
        long,
        global = true,
        env = "TRELLIS_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    cluster_domain: String,
    /// Elect a leader on a Lease so that several replicas can run.
    #[arg(
        long,
        global = true,
        env = "TRELLIS_LEADER_ELECTION",
        default_value_t = false
    )]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        global = true,
        env = "TRELLIS_LEASE_NAME",
        default_value = "trellis-operator"
    )]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(
        long,
        global = true,
        env = "POD_NAMESPACE",
        default_value = "trellis-system"
    )]
    lease_namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, global = true, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(
        long,
        global = true,
        env = "TRELLIS_LEASE_SECONDS",
        default_value_t = 15
    )]
    lease_seconds: u64,
    /// Watch only this namespace (all namespaces when absent).
    #[arg(long, global = true, env = "TRELLIS_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Networks reconciled at the same time (0: unbounded).
    #[arg(long, global = true, env = "TRELLIS_RECONCILE_CONCURRENCY", default_value_t = controller::DEFAULT_CONCURRENCY)]
    concurrency: u16,
    /// Limit of one JSON-RPC call to a node, in seconds (a slower node counts as down).
    #[arg(
        long,
        global = true,
        env = "TRELLIS_NODE_RPC_TIMEOUT_SECONDS",
        default_value_t = 3
    )]
    node_rpc_timeout_seconds: u64,
    /// `text` or `json` logs.
    #[arg(
        long,
        global = true,
        env = "TRELLIS_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: String,
    /// OTLP/HTTP collector (e.g. http://otel-collector:4318) for spans and metrics;
    /// default: the standard OTEL_EXPORTER_OTLP_ENDPOINT; neither: nothing exported.
    #[arg(long, global = true)]
    otlp_endpoint: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube links rustls with ring, other crates may add aws-lc-rs: with two providers
    // compiled in, rustls cannot pick one by itself, so name it before any TLS client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", trellis_operator::crds_yaml()?);
            Ok(())
        }
        Some(Command::Run) | None => run(cli.run).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let telemetry = telemetry::init(args.log_format == "json", args.otlp_endpoint.clone())?;
    let result = run_operator(args).await;
    telemetry.shutdown();
    result
}

async fn run_operator(args: RunArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    // Every apiserver request is counted by verb and resource (crate::requests).
    let client = requests::counted_client(kube::Config::infer().await?, metrics.clone())?;
    let health = Arc::new(Health::default());

    let listener = tokio::net::TcpListener::bind(args.http_addr).await?;
    let app = server::router(metrics.clone(), health.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });

    // Readiness: the apiserver answers.
    client.apiserver_version().await?;
    health.ready.store(true, Ordering::Relaxed);

    // Nodes are reached by their stable DNS names through the committees' headless
    // Services.
    let chain = NodeRpc::new(
        Arc::new(ClusterDns {
            cluster_domain: args.cluster_domain.clone(),
        }),
        std::time::Duration::from_secs(args.node_rpc_timeout_seconds.max(1)),
    );
    let mut ctx = Context::new(
        client.clone(),
        Arc::new(chain),
        BuildOptions {
            cluster_domain: args.cluster_domain.clone(),
            node_env: telemetry::node_env(args.otlp_endpoint.as_deref()),
        },
        metrics.clone(),
    );
    ctx.concurrency = args.concurrency;
    let ctx = Arc::new(ctx);

    if !args.leader_election {
        metrics.set_leader(true);
        run_controllers(ctx, args.namespace.clone()).await;
        return Ok(());
    }

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("trellis-operator-{}", std::process::id()));
    let config = LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity,
        lease_duration: Duration::from_secs(args.lease_seconds.max(3)),
        renew_every: Duration::from_secs((args.lease_seconds / 3).max(1)),
    };
    tracing::info!(identity = %config.identity, lease = %config.name, "waiting for leadership");
    tokio::select! {
        () = lease::acquire(&client, &config) => {}
        () = shutdown_signal() => return Ok(()),
    }
    metrics.set_leader(true);
    tracing::info!(identity = %config.identity, "leading");
    tokio::select! {
        () = run_controllers(ctx, args.namespace.clone()) => Ok(()),
        () = lease::hold(&client, &config) => {
            metrics.set_leader(false);
            // Lost the Lease: stop at once so that two leaders never overlap; the
            // restarted process queues up as a follower.
            anyhow::bail!("leadership lost")
        }
    }
}

/// Both reconcilers, until SIGTERM / Ctrl-C.
async fn run_controllers(ctx: Arc<Context>, namespace: Option<String>) {
    futures::join!(
        controller::run(ctx.clone(), namespace.clone(), shutdown_signal()),
        member::run(ctx, namespace, shutdown_signal()),
    );
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
