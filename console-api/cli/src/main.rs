//! `trellis`: the command line for people using a Trellis console.
//!
//! Everything goes through the console's public HTTP API; `--output json` prints the
//! console's answers unchanged for scripts, the default is a table.

mod client;
mod credentials;
mod load;
mod output;

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Map, Value, json};

use client::{Console, is_table_handoff};
use output::{
    Format, INVITATION_COLUMNS, MEMBER_COLUMNS, NETWORK_COLUMNS, RECEIVED_INVITATION_COLUMNS,
};

#[derive(Parser)]
#[command(
    name = "trellis",
    version,
    about = "Manage Trellis chain networks from the command line"
)]
struct Cli {
    /// The console's URL (remembered by `login`).
    #[arg(long, global = true, env = "TRELLIS_CONSOLE_URL")]
    console: Option<String>,
    /// `table` for people, `json` for scripts.
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value = "table",
        env = "TRELLIS_OUTPUT"
    )]
    output: Format,
    /// The credentials file (default: ~/.config/trellis/credentials.json).
    #[arg(long, global = true, env = "TRELLIS_CLI_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an organisation with you as its owner, and log in.
    Signup {
        #[arg(long)]
        organisation: String,
        #[arg(long)]
        email: String,
        /// Read the password from standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Log in to a console; the tokens are kept in the credentials file (mode 0600).
    Login {
        #[arg(long)]
        email: String,
        /// Read the password from standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Revoke this session's tokens and forget them.
    Logout,
    /// Who you are logged in as.
    Whoami,
    /// Chain networks of your organisation.
    #[command(subcommand, visible_alias = "network")]
    Networks(Networks),
    /// Invitations and admissions of consortium members.
    #[command(subcommand)]
    Consortium(Consortium),
    /// Send a transaction to a network, or look one up (through the console's node RPC proxy).
    #[command(subcommand)]
    Tx(Tx),
    /// Your organisation's metered usage.
    Usage {
        /// Start, RFC 3339, e.g. 2026-11-01T00:00:00Z.
        #[arg(long)]
        from: String,
        /// End, RFC 3339, exclusive (at most 400 days after --from).
        #[arg(long)]
        to: String,
        /// Only this network (name or id).
        #[arg(long)]
        network: Option<String>,
        /// Only this meter, e.g. `node_hours.standard`, `transactions`, `rpc_requests`.
        #[arg(long)]
        meter: Option<String>,
    },
    /// The invoice of a billing period (`YYYY-MM`).
    Invoice {
        period: String,
        /// Print it as CSV (the console's export).
        #[arg(long)]
        csv: bool,
    },
    /// Print a shell completion script, e.g. `trellis completions bash > /etc/bash_completion.d/trellis`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Public,
    Consortium,
}

#[derive(Subcommand)]
enum Networks {
    /// List networks.
    List,
    /// Show one network (by name or id).
    Get { network: String },
    /// Create a network.
    Create {
        name: String,
        #[arg(long, value_enum)]
        mode: Mode,
        /// Shards to start with (public networks).
        #[arg(long)]
        shards: Option<u32>,
        /// Lowest shard count the autoscaler may choose.
        #[arg(long)]
        min_shards: Option<u32>,
        /// Highest shard count the autoscaler may choose.
        #[arg(long)]
        max_shards: Option<u32>,
        /// Validators per shard (3f+1: 4, 7, 10 …).
        #[arg(long)]
        validators: Option<u32>,
        /// Public networks: validators that belong to no shard, placed and rotated
        /// between shards by the beacon every epoch.
        #[arg(long)]
        validator_pool: Option<u32>,
        /// A consortium organisation: `NAME[:NODES[:ADMIN_PUBLIC_KEY]]`; repeat per
        /// organisation, yours first.
        #[arg(long = "member")]
        members: Vec<String>,
        #[arg(long)]
        node_version: Option<String>,
        #[arg(long)]
        epoch_length: Option<u64>,
        /// Makes a retried create safe (default: a fresh random key).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Change the shard count (and optionally its bounds).
    Scale {
        network: String,
        #[arg(long)]
        shards: u32,
        #[arg(long)]
        min_shards: Option<u32>,
        #[arg(long)]
        max_shards: Option<u32>,
    },
    /// Resize the validator pool (public networks): validators the beacon places and
    /// rotates between shards; 0 for none.
    Pool {
        network: String,
        #[arg(long)]
        validators: u32,
    },
    /// Set the autoscaling policy (public networks): the fields not given keep their
    /// current values.
    Autoscale {
        network: String,
        /// Turn autoscaling on.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Turn autoscaling off (the shard count stays where it is).
        #[arg(long)]
        disable: bool,
        /// Add shards when the mean finalized tx/s per shard exceeds this.
        #[arg(long)]
        target_tx_per_second_per_shard: Option<u32>,
        /// Add shards when the mean mempool depth per shard exceeds this.
        #[arg(long)]
        target_mempool_depth: Option<u32>,
        /// Least time between two changes (30 to 86400).
        #[arg(long)]
        cooldown_seconds: Option<u32>,
        /// How long a signal must hold before it is acted on (0 to 86400).
        #[arg(long)]
        stabilization_window_seconds: Option<u32>,
    },
    /// Roll the network's nodes to another trellis-node version.
    Upgrade {
        network: String,
        #[arg(long)]
        node_version: String,
    },
    /// Stop reconciling the network (it keeps running as it is).
    Pause { network: String },
    /// Undo `pause`.
    Resume { network: String },
    /// Scale every node to zero, keeping the ledger.
    Stop { network: String },
    /// Undo `stop`.
    Start { network: String },
    /// Delete the network (ledger volumes are kept unless the network says otherwise).
    Delete { network: String },
}

#[derive(Subcommand)]
enum Tx {
    /// Send a signed transaction (hex, as `trellis-node` encodes it); prints its hash.
    Send {
        network: String,
        #[arg(long)]
        tx: String,
        /// Send to this shard's nodes (default: any node of the network).
        #[arg(long)]
        shard: Option<u32>,
    },
    /// Sign a transfer with a key file and send it; prints its hash and shard. The key
    /// file is a `trellis-node keygen` file whose admin key is the sending account (the
    /// local provisioner's treasury files are such).
    Transfer {
        network: String,
        #[arg(long)]
        key_file: std::path::PathBuf,
        /// The receiving account (hex Ed25519 public key).
        #[arg(long)]
        to: String,
        #[arg(long)]
        amount: u64,
        #[arg(long, default_value_t = 1)]
        fee: u64,
        /// Sign at this nonce instead of the account's next committed one (to queue
        /// several transfers before the first is final).
        #[arg(long)]
        nonce: Option<u64>,
    },
    /// Send transfers at a steady rate for a while (a load test): signed here with the
    /// key files' admin keys, taking turns, each account's nonce counted locally, several
    /// requests in flight; prints how many were sent, refused and timed out.
    Load {
        network: String,
        /// A sending account's key file; repeat to spread the load over accounts.
        #[arg(long = "key-file", required = true)]
        key_files: Vec<std::path::PathBuf>,
        /// The receiving account (hex Ed25519 public key).
        #[arg(long)]
        to: String,
        /// Transfers per second (1 to 1000).
        #[arg(long)]
        rate: u32,
        /// The most requests in flight at once (1 to 256): a slow answer holds up no
        /// more than one of them.
        #[arg(long, default_value_t = load::DEFAULT_CONCURRENCY)]
        concurrency: u32,
        /// How long: seconds, or with a unit (90s, 5m, 1h; at most 24h).
        #[arg(long)]
        duration: String,
        #[arg(long, default_value_t = 1)]
        amount: u64,
        #[arg(long, default_value_t = 1)]
        fee: u64,
    },
    /// A transaction's state and receipt.
    Get { network: String, hash: String },
    /// An account's balance, nonce and table (in a sharded network, read from the shard
    /// that owns the table).
    Account { network: String, account: String },
}

#[derive(Subcommand)]
enum Consortium {
    /// Members of a consortium network and their admission state.
    Members { network: String },
    /// Invite an organisation; prints the invitation token once.
    Invite {
        network: String,
        #[arg(long)]
        organisation: String,
        #[arg(long)]
        nodes: Option<u32>,
        #[arg(long)]
        expires_in_hours: Option<u32>,
        /// Only this tenant (its id, as `trellis whoami` shows it) may accept the
        /// invitation; it then also sees it in `trellis consortium invitations --received`.
        #[arg(long, value_parser = id_arg)]
        tenant: Option<uuid::Uuid>,
    },
    /// Invitations a consortium network sent (with their status), or with `--received`
    /// those your organisation was named in or accepted.
    Invitations {
        #[arg(required_unless_present = "received", conflicts_with = "received")]
        network: Option<String>,
        #[arg(long)]
        received: bool,
    },
    /// Revoke a pending invitation: its token stops working and its member is rejected.
    Revoke { network: String, invitation: String },
    /// Approve the removal of an admitted member as every other admitted member you
    /// control (or those given); it is removed once more than two thirds approve.
    Remove {
        network: String,
        member: String,
        /// Approve only as this member (its id); repeat for several.
        #[arg(long = "as-member", value_parser = id_arg)]
        as_member: Vec<uuid::Uuid>,
    },
    /// Accept an invitation for your organisation.
    Accept {
        token: String,
        /// Bring your own admin key (hex Ed25519 public key) instead of a custodied one.
        #[arg(long)]
        admin_public_key: Option<String>,
    },
    /// Approve a proposed member's admission (as every member you control), or, with
    /// `--signature`, post your organisation's own-key approval of the member's chain
    /// governance proposal.
    Approve {
        network: String,
        member: String,
        /// Hex approval of the chain proposal, as `trellis-node governance sign
        /// --key-file KEYS --proposal HEX` prints it (see `trellis consortium proposal`).
        #[arg(long)]
        signature: Option<String>,
        /// The proposal hash you signed; a proposal that is no longer current is then
        /// reported as stale.
        #[arg(long, requires = "signature")]
        proposal_hash: Option<String>,
    },
    /// A member's chain admission: its step and the governance proposal to sign.
    Proposal { network: String, member: String },
    /// Reject a member that is invited or proposed.
    Reject { network: String, member: String },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // reqwest links rustls; name its crypto provider once for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<String> {
    if let Command::Completions { shell } = cli.command {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "trellis", &mut out);
        return Ok(String::from_utf8_lossy(&out).trim_end().to_string());
    }
    let path = match cli.config {
        Some(path) => path,
        None => credentials::default_path()?,
    };
    let mut console = Console::new(cli.console, path)?;
    let format = cli.output;
    match cli.command {
        Command::Completions { .. } => Ok(String::new()),
        Command::Signup {
            organisation,
            email,
            password_stdin,
        } => {
            let password = password(password_stdin)?;
            let body = json!({"organisation": organisation, "email": email, "password": password});
            let answer = console
                .public(Method::POST, "/v1/auth/signup", Some(&body))
                .await?;
            console.remember(&email, &answer["tokens"])?;
            Ok(output::sentence(format, &redacted(&answer), || {
                format!(
                    "organisation {} ({}) created; logged in to {} as {email}",
                    output::at(&answer, "tenant/name"),
                    output::at(&answer, "tenant/slug"),
                    console.base()
                )
            }))
        }
        Command::Login {
            email,
            password_stdin,
        } => {
            let password = password(password_stdin)?;
            let body = json!({"email": email, "password": password});
            let answer = console
                .public(Method::POST, "/v1/auth/login", Some(&body))
                .await?;
            console.remember(&email, &answer)?;
            Ok(output::sentence(format, &redacted(&answer), || {
                format!("logged in to {} as {email}", console.base())
            }))
        }
        Command::Logout => {
            console.logout().await?;
            Ok("logged out".into())
        }
        Command::Whoami => {
            let me = console.call(Method::GET, "/v1/me", None, None).await?;
            Ok(output::object(
                format,
                &me,
                &[
                    ("ORGANISATION", "tenant/name"),
                    ("SLUG", "tenant/slug"),
                    ("PLAN", "tenant/plan"),
                    ("ROLE", "role"),
                    ("USER", "user_id"),
                ],
            ))
        }
        Command::Networks(command) => networks(&mut console, format, command).await,
        Command::Tx(command) => transactions(&mut console, format, command).await,
        Command::Usage {
            from,
            to,
            network,
            meter,
        } => {
            let mut query = vec![
                format!("from={}", encode(&from)),
                format!("to={}", encode(&to)),
            ];
            if let Some(network) = network {
                query.push(format!(
                    "network_id={}",
                    network_id(&mut console, &network).await?
                ));
            }
            if let Some(meter) = meter {
                query.push(format!("meter={}", encode(&meter)));
            }
            let path = format!("/v1/billing/usage?{}", query.join("&"));
            let answer = console.call(Method::GET, &path, None, None).await?;
            Ok(output::list(format, &answer, "records", USAGE_COLUMNS))
        }
        Command::Invoice { period, csv } => {
            let path = format!("/v1/billing/invoices/{}", encode(&period));
            if csv {
                return Ok(console
                    .call_text(&format!("{path}?format=csv"))
                    .await?
                    .trim_end()
                    .to_string());
            }
            let answer = console.call(Method::GET, &path, None, None).await?;
            Ok(output::sentence(format, &answer, || {
                format!(
                    "{}\ninvoice {} ({}, plan {}): total {} {}",
                    output::list(format, &answer, "lines", INVOICE_COLUMNS),
                    output::at(&answer, "period"),
                    output::at(&answer, "status"),
                    output::at(&answer, "plan"),
                    output::at(&answer, "total"),
                    output::at(&answer, "currency"),
                )
            }))
        }
        Command::Consortium(command) => consortium(&mut console, format, command).await,
    }
}

const NETWORK_ROWS: &[output::Column] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("MODE", "mode"),
    ("PHASE", "phase"),
    ("SHARDS", "spec/shards/count"),
    ("SHARD RANGE", "spec/shards"),
    ("VALIDATORS/SHARD", "spec/validators_per_shard"),
    ("VALIDATOR POOL", "spec/validator_pool"),
    ("NODE VERSION", "spec/node_version"),
    ("AUTOSCALING", "spec/autoscaling"),
    ("LAST AUTOSCALE", "autoscaler"),
    ("PAUSED", "spec/paused"),
    ("STOPPED", "spec/stopped"),
    ("GENERATION", "generation"),
    ("PROVISIONED", "provisioned_generation"),
    ("EPOCH", "status/epoch"),
    ("RPC", "status/rpc_endpoints"),
    ("ERROR", "provision_error"),
];

async fn networks(console: &mut Console, format: Format, command: Networks) -> Result<String> {
    match command {
        Networks::List => listing(console, format, "/v1/networks", NETWORK_COLUMNS).await,
        Networks::Get { network } => {
            let answer = network_call(console, &network, Method::GET, "", None).await?;
            Ok(output::object(format, &answer, NETWORK_ROWS))
        }
        Networks::Create {
            name,
            mode,
            shards,
            min_shards,
            max_shards,
            validators,
            validator_pool,
            members,
            node_version,
            epoch_length,
            idempotency_key,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert(
                "mode".into(),
                json!(match mode {
                    Mode::Public => "public",
                    Mode::Consortium => "consortium",
                }),
            );
            if shards.is_some() || min_shards.is_some() || max_shards.is_some() {
                let count = shards.unwrap_or(1);
                body.insert(
                    "shards".into(),
                    json!({"count": count, "min": min_shards.unwrap_or(1).min(count),
                           "max": max_shards.unwrap_or(count).max(count)}),
                );
            }
            if let Some(v) = validators {
                body.insert("validators_per_shard".into(), json!(v));
            }
            if let Some(v) = validator_pool {
                body.insert("validator_pool".into(), json!(v));
            }
            if !members.is_empty() {
                let members = members
                    .iter()
                    .map(|m| member_spec(m))
                    .collect::<Result<Vec<_>>>()?;
                body.insert("members".into(), Value::Array(members));
            }
            if let Some(v) = node_version {
                body.insert("node_version".into(), json!(v));
            }
            if let Some(v) = epoch_length {
                body.insert("epoch_length".into(), json!(v));
            }
            let key = idempotency_key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let answer = console
                .call(
                    Method::POST,
                    "/v1/networks",
                    Some(&Value::Object(body)),
                    Some(&key),
                )
                .await?;
            Ok(output::object(format, &answer, NETWORK_ROWS))
        }
        Networks::Scale {
            network,
            shards,
            min_shards,
            max_shards,
        } => {
            let mut range = Map::new();
            range.insert("count".into(), json!(shards));
            if let Some(min) = min_shards {
                range.insert("min".into(), json!(min));
            }
            if let Some(max) = max_shards {
                range.insert("max".into(), json!(max));
            }
            patch(console, format, &network, json!({ "shards": range })).await
        }
        Networks::Pool {
            network,
            validators,
        } => {
            patch(
                console,
                format,
                &network,
                json!({ "validator_pool": validators }),
            )
            .await
        }
        Networks::Autoscale {
            network,
            enable,
            disable,
            target_tx_per_second_per_shard,
            target_mempool_depth,
            cooldown_seconds,
            stabilization_window_seconds,
        } => {
            let id = network_id(console, &network).await?;
            let current = console
                .call(Method::GET, &format!("/v1/networks/{id}"), None, None)
                .await?;
            // The API replaces the whole policy: start from the current one.
            let mut policy = current["spec"]["autoscaling"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let mut set = |field: &str, value: Option<Value>| {
                if let Some(value) = value {
                    policy.insert(field.into(), value);
                }
            };
            set(
                "enabled",
                (enable || disable).then_some(Value::Bool(enable)),
            );
            set(
                "target_tx_per_second_per_shard",
                target_tx_per_second_per_shard.map(Value::from),
            );
            set(
                "target_mempool_depth",
                target_mempool_depth.map(Value::from),
            );
            set("cooldown_seconds", cooldown_seconds.map(Value::from));
            set(
                "stabilization_window_seconds",
                stabilization_window_seconds.map(Value::from),
            );
            patch(console, format, &id, json!({ "autoscaling": policy })).await
        }
        Networks::Upgrade {
            network,
            node_version,
        } => {
            patch(
                console,
                format,
                &network,
                json!({ "node_version": node_version }),
            )
            .await
        }
        Networks::Pause { network } => {
            patch(console, format, &network, json!({"paused": true})).await
        }
        Networks::Resume { network } => {
            patch(console, format, &network, json!({"paused": false})).await
        }
        Networks::Stop { network } => {
            patch(console, format, &network, json!({"stopped": true})).await
        }
        Networks::Start { network } => {
            patch(console, format, &network, json!({"stopped": false})).await
        }
        Networks::Delete { network } => {
            let id = network_id(console, &network).await?;
            let answer = console
                .call(Method::DELETE, &format!("/v1/networks/{id}"), None, None)
                .await?;
            Ok(match (format, answer.is_null()) {
                (Format::Json, true) => output::pretty(&json!({"id": id, "deleted": true})),
                (Format::Json, false) => output::pretty(&answer),
                (Format::Table, true) => format!("network {network} deleted"),
                (Format::Table, false) => format!(
                    "network {network} is being deleted (phase {}); `trellis networks get {id}` shows progress",
                    output::at(&answer, "phase")
                ),
            })
        }
    }
}

const USAGE_COLUMNS: &[output::Column] = &[
    ("NETWORK", "network_id"),
    ("METER", "meter"),
    ("FROM", "window_start"),
    ("TO", "window_end"),
    ("QUANTITY", "billed_quantity"),
    ("UNIT", "unit"),
    ("ACCRUING", "accruing"),
];

const INVOICE_COLUMNS: &[output::Column] = &[
    ("NETWORK", "network_name"),
    ("METER", "meter"),
    ("QUANTITY", "quantity"),
    ("UNIT", "unit"),
    ("PRICE", "unit_price"),
    ("AMOUNT", "amount"),
];

/// Percent-encodes a query or path value (RFC 3986 unreserved characters pass).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A signed transfer from `key_file`'s admin key (hex, as the node decodes it).
fn signed_transfer(
    key_file: &std::path::Path,
    chain_id: &str,
    nonce: u64,
    to: &str,
    amount: u64,
    fee: u64,
) -> Result<String> {
    use trellis_node_types::{Encode as _, Signer as _};
    let text = std::fs::read_to_string(key_file)
        .with_context(|| format!("reading {}", key_file.display()))?;
    let keys: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a key file (JSON)", key_file.display()))?;
    let key = keys["admin_key"]
        .as_str()
        .and_then(trellis_node_types::private_key_from_hex)
        .ok_or_else(|| {
            anyhow!(
                "{} holds no admin_key (a `trellis-node keygen` file)",
                key_file.display()
            )
        })?;
    let to = trellis_node_types::public_key_from_hex(to)
        .ok_or_else(|| anyhow!("--to must be a hex Ed25519 public key (64 hex digits)"))?;
    let tx = trellis_node_types::UnsignedTx {
        chain_id: chain_id.to_string(),
        from: key.public_key(),
        nonce,
        fee,
        kind: trellis_node_types::TxKind::Transfer { to, amount },
    }
    .sign(&key);
    Ok(trellis_node_types::to_hex(&tx.encode()))
}

/// The account of a key file's admin key (hex).
fn account_of(key_file: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(key_file)
        .with_context(|| format!("reading {}", key_file.display()))?;
    let keys: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a key file (JSON)", key_file.display()))?;
    keys["admin_public_key"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{} holds no admin_public_key", key_file.display()))
}

/// How long a read waits out a table handoff (a shard-count change moving the
/// account's table: the console answers `503 table_handoff` until the new owner has
/// imported it, normally within seconds).
const HANDOFF_PATIENCE: Duration = Duration::from_secs(60);

/// An account's next nonce, as the shard owning it has committed. A read is safe to
/// repeat, so one refused because the account's table is being handed off is asked
/// again each second (the console's `Retry-After`) for up to [`HANDOFF_PATIENCE`].
async fn next_nonce(console: &mut Console, id: &str, account: &str) -> Result<u64> {
    let started = std::time::Instant::now();
    let answer = loop {
        match node_call(
            console,
            id,
            "trellis_getAccount",
            json!({"account": account}),
        )
        .await
        {
            Err(e) if is_table_handoff(&e) && started.elapsed() < HANDOFF_PATIENCE => {
                eprintln!("{e:#}; asking again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            answer => break answer?,
        }
    };
    answer["nonce"]
        .as_u64()
        .ok_or_else(|| anyhow!("the node's account answer carries no nonce"))
}

/// One JSON-RPC call through the console's proxy (any node of the network); the node's
/// refusal is an error with its code and message.
async fn node_call(console: &mut Console, id: &str, method: &str, params: Value) -> Result<Value> {
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let answer = console
        .call(
            Method::POST,
            &format!("/v1/networks/{id}/rpc"),
            Some(&request),
            None,
        )
        .await?;
    if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
        bail!(
            "the node refused ({}): {}",
            output::at(error, "code"),
            output::at(error, "message")
        );
    }
    Ok(answer["result"].clone())
}

async fn transactions(console: &mut Console, format: Format, command: Tx) -> Result<String> {
    let (network, shard, method, params) = match command {
        Tx::Transfer {
            network,
            key_file,
            to,
            amount,
            fee,
            nonce,
        } => {
            // Everything that can be checked here is, before the console is asked.
            let from = account_of(&key_file)?;
            if trellis_node_types::public_key_from_hex(&to).is_none() {
                bail!("--to must be a hex Ed25519 public key (64 hex digits)");
            }
            let id = network_id(console, &network).await?;
            let status = node_call(console, &id, "trellis_status", Value::Null).await?;
            let chain_id = status["chain_id"]
                .as_str()
                .ok_or_else(|| anyhow!("the node's status carries no chain_id"))?
                .to_string();
            let nonce = match nonce {
                Some(nonce) => nonce,
                None => next_nonce(console, &id, &from).await?,
            };
            let tx = signed_transfer(&key_file, &chain_id, nonce, &to, amount, fee)?;
            let sent =
                node_call(console, &id, "trellis_sendTransaction", json!({"tx": tx})).await?;
            return Ok(output::sentence(format, &sent, || {
                format!(
                    "sent; transaction hash {}{} (`trellis tx get {network} <hash>` follows it)",
                    output::at(&sent, "hash"),
                    sent.get("shard")
                        .map(|s| format!(" on shard {s}"))
                        .unwrap_or_default()
                )
            }));
        }
        Tx::Load {
            network,
            key_files,
            to,
            rate,
            concurrency,
            duration,
            amount,
            fee,
        } => {
            if !(1..=load::MAX_RATE).contains(&rate) {
                bail!(
                    "--rate must be between 1 and {} transfers per second",
                    load::MAX_RATE
                );
            }
            if !(1..=load::MAX_CONCURRENCY).contains(&concurrency) {
                bail!(
                    "--concurrency must be between 1 and {} requests in flight",
                    load::MAX_CONCURRENCY
                );
            }
            let duration = load::parse_duration(&duration)?;
            if trellis_node_types::public_key_from_hex(&to).is_none() {
                bail!("--to must be a hex Ed25519 public key (64 hex digits)");
            }
            let accounts = key_files
                .iter()
                .map(|f| account_of(f))
                .collect::<Result<Vec<_>>>()?;
            let id = network_id(console, &network).await?;
            let status = node_call(console, &id, "trellis_status", Value::Null).await?;
            let chain_id = status["chain_id"]
                .as_str()
                .ok_or_else(|| anyhow!("the node's status carries no chain_id"))?
                .to_string();
            let mut senders = Vec::new();
            for (key_file, account) in key_files.into_iter().zip(&accounts) {
                let nonce = next_nonce(console, &id, account).await?;
                senders.push((key_file, nonce));
            }
            let plan = load::Plan {
                network_id: id,
                chain_id,
                senders,
                to,
                amount,
                fee,
                rate,
                concurrency,
                duration,
            };
            let report = load::run(console, &plan).await?;
            return Ok(output::sentence(format, &report, || {
                format!(
                    "sent {} transfers in {} s ({} per second, at most {} in flight); refused \
                     by code: {}; timed out: {}; failed requests: {}",
                    output::at(&report, "sent"),
                    output::at(&report, "seconds"),
                    output::at(&report, "rate"),
                    output::at(&report, "concurrency"),
                    output::at(&report, "refused"),
                    output::at(&report, "timed_out"),
                    output::at(&report, "failed"),
                )
            }));
        }
        Tx::Account { network, account } => (
            network,
            None,
            "trellis_getAccount",
            json!({"account": account}),
        ),
        Tx::Send { network, tx, shard } => {
            let tx = tx.trim().trim_start_matches("0x").to_string();
            if tx.is_empty() || tx.len() % 2 != 0 || !tx.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!(
                    "--tx must be the transaction's bytes in hex (an even number of 0-9a-f digits)"
                );
            }
            (network, shard, "trellis_sendTransaction", json!({"tx": tx}))
        }
        Tx::Get { network, hash } => (
            network,
            None,
            "trellis_getTransaction",
            json!({"hash": hash}),
        ),
    };
    let id = network_id(console, &network).await?;
    let path = match shard {
        Some(shard) => format!("/v1/networks/{id}/shards/{shard}/rpc"),
        None => format!("/v1/networks/{id}/rpc"),
    };
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let answer = console
        .call(Method::POST, &path, Some(&request), None)
        .await?;
    if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
        bail!(
            "the node refused ({}): {}",
            output::at(error, "code"),
            output::at(error, "message")
        );
    }
    let result = &answer["result"];
    Ok(match (format, method) {
        (Format::Json, _) => output::pretty(result),
        (Format::Table, "trellis_sendTransaction") => format!(
            "sent; transaction hash {} (`trellis tx get {network} <hash>` follows it)",
            output::at(result, "hash")
        ),
        (Format::Table, "trellis_getAccount") => output::object(
            format,
            result,
            &[
                ("ACCOUNT", "account"),
                ("BALANCE", "balance"),
                ("NONCE", "nonce"),
                ("TABLE", "table"),
                ("HEIGHT", "height"),
            ],
        ),
        (Format::Table, _) => output::object(
            format,
            result,
            &[
                ("HASH", "hash"),
                ("STATE", "state"),
                ("HEIGHT", "height"),
                ("SUCCESS", "success"),
                ("ERROR", "error"),
            ],
        ),
    })
}

async fn patch(
    console: &mut Console,
    format: Format,
    network: &str,
    body: Value,
) -> Result<String> {
    let id = network_id(console, network).await?;
    let answer = console
        .call(
            Method::PATCH,
            &format!("/v1/networks/{id}"),
            Some(&body),
            None,
        )
        .await?;
    Ok(output::object(format, &answer, NETWORK_ROWS))
}

async fn consortium(console: &mut Console, format: Format, command: Consortium) -> Result<String> {
    match command {
        Consortium::Members { network } => {
            let answer = network_call(console, &network, Method::GET, "/members", None).await?;
            Ok(output::list(format, &answer, "items", MEMBER_COLUMNS))
        }
        Consortium::Invite {
            network,
            organisation,
            nodes,
            expires_in_hours,
            tenant,
        } => {
            let id = network_id(console, &network).await?;
            let body = json!({"organisation": organisation, "nodes": nodes,
                              "expires_in_hours": expires_in_hours, "tenant_id": tenant});
            let key = uuid::Uuid::new_v4().to_string();
            let answer = console
                .call(
                    Method::POST,
                    &format!("/v1/networks/{id}/invitations"),
                    Some(&body),
                    Some(&key),
                )
                .await?;
            Ok(output::sentence(format, &answer, || {
                format!(
                    "{organisation} invited (member {}), expires {}.\nGive this token to them — it is shown only once:\n{}",
                    output::at(&answer, "member/id"),
                    output::at(&answer, "expires_at"),
                    output::at(&answer, "token")
                )
            }))
        }
        Consortium::Invitations { network, received } => {
            let (path, columns) = match network {
                Some(network) if !received => {
                    let id = network_id(console, &network).await?;
                    (format!("/v1/networks/{id}/invitations"), INVITATION_COLUMNS)
                }
                _ => (
                    "/v1/consortium/invitations/received".to_string(),
                    RECEIVED_INVITATION_COLUMNS,
                ),
            };
            listing(console, format, &path, columns).await
        }
        Consortium::Revoke {
            network,
            invitation,
        } => {
            let answer = network_call(
                console,
                &network,
                Method::DELETE,
                &format!("/invitations/{}", encode(&invitation)),
                None,
            )
            .await?;
            Ok(output::object(format, &answer, INVITATION_COLUMNS))
        }
        Consortium::Remove {
            network,
            member,
            as_member,
        } => {
            let body = if as_member.is_empty() {
                json!({})
            } else {
                json!({ "as_members": as_member })
            };
            let answer = network_call(
                console,
                &network,
                Method::POST,
                &format!("/members/{}/removal", encode(&member)),
                Some(&body),
            )
            .await?;
            Ok(output::sentence(format, &answer, || {
                approvals(&answer, "removal ")
            }))
        }
        Consortium::Accept {
            token,
            admin_public_key,
        } => {
            let body = json!({"token": token, "admin_public_key": admin_public_key});
            let answer = console
                .call(
                    Method::POST,
                    "/v1/consortium/invitations/accept",
                    Some(&body),
                    None,
                )
                .await?;
            Ok(output::object(format, &answer, MEMBER_COLUMNS))
        }
        Consortium::Approve {
            network,
            member,
            signature: Some(signature),
            proposal_hash,
        } => {
            let answer = network_call(
                console,
                &network,
                Method::POST,
                &format!("/members/{}/proposal/approvals", encode(&member)),
                Some(&json!({"approval": signature, "proposal_hash": proposal_hash})),
            )
            .await?;
            Ok(output::sentence(format, &answer, || {
                format!(
                    "{} approved proposal {} (sequence {})",
                    output::at(&answer, "organisation"),
                    output::at(&answer, "proposal_hash"),
                    output::at(&answer, "sequence"),
                )
            }))
        }
        Consortium::Proposal { network, member } => {
            let answer = network_call(
                console,
                &network,
                Method::GET,
                &format!("/members/{}/proposal", encode(&member)),
                None,
            )
            .await?;
            Ok(output::sentence(format, &answer, || {
                let approved: Vec<String> = answer["approvers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        format!(
                            "{} ({}{})",
                            output::at(a, "organisation"),
                            output::at(a, "key_custody"),
                            if a["approved"] == true {
                                ", approved"
                            } else {
                                ""
                            }
                        )
                    })
                    .collect();
                let step = format!(
                    "{}: {} ({})",
                    output::at(&answer, "organisation"),
                    output::at(&answer, "chain/reason"),
                    output::at(&answer, "chain/message"),
                );
                if answer["chain"]["proposal"].is_object() {
                    format!(
                        "{step}\n{} {} at sequence {}, {} approvals needed\n\
                             approvers: {}\nproposal hash: {}\nsign: trellis-node governance \
                             sign --key-file KEYS --proposal {}",
                        output::at(&answer, "chain/proposal/action"),
                        output::at(&answer, "chain/proposal/node"),
                        output::at(&answer, "chain/proposal/sequence"),
                        output::at(&answer, "chain/proposal/threshold"),
                        approved.join(", "),
                        output::at(&answer, "chain/proposal/proposal_hash"),
                        output::at(&answer, "chain/proposal/proposal"),
                    )
                } else {
                    format!("{step}\nno proposal is waiting for approvals")
                }
            }))
        }
        Consortium::Approve {
            network, member, ..
        } => {
            let answer = network_call(
                console,
                &network,
                Method::POST,
                &format!("/members/{}/approvals", encode(&member)),
                Some(&json!({})),
            )
            .await?;
            Ok(output::sentence(format, &answer, || approvals(&answer, "")))
        }
        Consortium::Reject { network, member } => {
            let answer = network_call(
                console,
                &network,
                Method::POST,
                &format!("/members/{}/rejection", encode(&member)),
                Some(&json!({})),
            )
            .await?;
            Ok(output::object(format, &answer, MEMBER_COLUMNS))
        }
    }
}

/// One call about `network` (a name or an id): `METHOD /v1/networks/{id}{tail}`.
async fn network_call(
    console: &mut Console,
    network: &str,
    method: Method,
    tail: &str,
    body: Option<&Value>,
) -> Result<Value> {
    let id = network_id(console, network).await?;
    console
        .call(method, &format!("/v1/networks/{id}{tail}"), body, None)
        .await
}

/// Every item of a keyset-paged list as one answer (`{"items": [...]}`) in `columns`.
async fn listing(
    console: &mut Console,
    format: Format,
    list: &str,
    columns: &[output::Column],
) -> Result<String> {
    let answer = json!({ "items": all_pages(console, list).await? });
    Ok(output::list(format, &answer, "items", columns))
}

/// `N [removal ]approvals of T needed; member O is S`: where an admission or a
/// removal stands after an approval.
fn approvals(answer: &Value, kind: &str) -> String {
    format!(
        "{} {kind}approvals of {} needed; member {} is {}",
        output::at(answer, "approvals"),
        output::at(answer, "threshold"),
        output::at(answer, "member/organisation"),
        output::at(answer, "member/state"),
    )
}

/// Every item of a keyset-paged list, following `next_cursor`.
async fn all_pages(console: &mut Console, list: &str) -> Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("{list}?limit=200&cursor={}", encode(c)),
            None => format!("{list}?limit=200"),
        };
        let page = console.call(Method::GET, &path, None, None).await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) if !next.is_empty() => cursor = Some(next.to_string()),
            _ => return Ok(items),
        }
    }
}

/// A network's id from its name or id.
async fn network_id(console: &mut Console, network: &str) -> Result<String> {
    if uuid::Uuid::parse_str(network).is_ok() {
        return Ok(network.to_string());
    }
    all_pages(console, "/v1/networks")
        .await?
        .iter()
        .find(|n| n["name"] == network)
        .and_then(|n| n["id"].as_str().map(str::to_string))
        .with_context(|| {
            format!("your organisation has no network named {network:?} (`trellis networks list` shows them)")
        })
}

/// `NAME[:NODES[:ADMIN_PUBLIC_KEY]]`.
/// A tenant or member id argument, refused before anything reaches the console.
fn id_arg(text: &str) -> std::result::Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(text).map_err(|_| {
        format!("{text:?} is not an id (a UUID such as 0192f0c4-9b1e-7c3a-8d2e-5f6a7b8c9d0e)")
    })
}

fn member_spec(text: &str) -> Result<Value> {
    let mut parts = text.splitn(3, ':');
    let name = parts.next().unwrap_or_default().trim();
    if name.is_empty() {
        bail!("--member {text:?}: expected NAME[:NODES[:ADMIN_PUBLIC_KEY]]");
    }
    let mut spec = json!({"organisation": name});
    if let Some(nodes) = parts.next() {
        let nodes: u32 = nodes
            .parse()
            .with_context(|| format!("--member {text:?}: NODES must be a whole number"))?;
        spec["nodes"] = json!(nodes);
    }
    if let Some(key) = parts.next() {
        spec["admin_public_key"] = json!(key);
    }
    Ok(spec)
}

fn password(from_stdin: bool) -> Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else if std::io::stdin().is_terminal() {
        rpassword::prompt_password("password: ")?
    } else {
        bail!("no terminal to ask for the password: pipe it in with --password-stdin");
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

/// The answer without tokens: they go to the credentials file, never to the terminal.
fn redacted(answer: &Value) -> Value {
    let mut answer = answer.clone();
    strip_tokens(&mut answer);
    if let Some(tokens) = answer.get_mut("tokens") {
        strip_tokens(tokens);
    }
    answer
}

fn strip_tokens(value: &mut Value) {
    if let Some(map) = value.as_object_mut() {
        map.remove("access_token");
        map.remove("refresh_token");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_specs_parse_or_say_why() {
        assert_eq!(
            member_spec("Acme").unwrap(),
            json!({"organisation": "Acme"})
        );
        assert_eq!(
            member_spec("Acme:2:ab12").unwrap(),
            json!({"organisation": "Acme", "nodes": 2, "admin_public_key": "ab12"})
        );
        assert!(member_spec(":2").unwrap_err().to_string().contains("NAME"));
        assert!(
            member_spec("Acme:two")
                .unwrap_err()
                .to_string()
                .contains("whole number")
        );
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            encode("2026-11-01T00:00:00+00:00"),
            "2026-11-01T00%3A00%3A00%2B00%3A00"
        );
        assert_eq!(encode("node_hours.standard"), "node_hours.standard");
    }

    #[test]
    fn tokens_never_reach_the_output() {
        let answer = json!({"tenant": {"name": "A"}, "tokens": {"access_token": "x", "refresh_token": "y", "expires_in": 900}});
        let shown = redacted(&answer).to_string();
        assert!(
            !shown.contains("\"x\"") && !shown.contains("\"y\""),
            "{shown}"
        );
        assert!(shown.contains("expires_in"));
        let login = json!({"access_token": "x", "refresh_token": "y", "token_type": "Bearer"});
        assert_eq!(redacted(&login), json!({"token_type": "Bearer"}));
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
