//! `trellis-node`: keygen, genesis, governance, system, run.

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use trellis_node::run::{Exit, KeyFile, Plan, restart, run};
use trellis_node_api::{CONTRACT_VERSION, Genesis, GenesisBalance, GenesisMember, NodeConfig};

#[derive(Parser)]
#[command(name = "trellis-node", version, about = "The Trellis chain node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// `run`: OTLP/HTTP collector (e.g. http://otel-collector:4318) for spans and metrics;
    /// default: the standard OTEL_EXPORTER_OTLP_ENDPOINT; neither: nothing exported.
    #[arg(long, global = true)]
    otlp_endpoint: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a node key and an admin key into a new key file (mode 0600); prints the
    /// public keys as JSON.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a genesis file.
    Genesis {
        #[arg(long, env = "TRELLIS_CHAIN_ID")]
        chain_id: String,
        /// Finalized blocks per epoch.
        #[arg(long, default_value_t = 1000)]
        epoch_length: u64,
        /// A member and its validator: NAME,ADMIN_PUBLIC_KEY,NODE_PUBLIC_KEY,HOST:PORT
        /// (repeatable).
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// An initial balance: ACCOUNT_PUBLIC_KEY=AMOUNT (repeatable).
        #[arg(long = "balance")]
        balances: Vec<String>,
        /// Makes the network sharded: a JSON file with the genesis `sharding` section
        /// (admin key, shard count, max shards, beacon and slot validators; see
        /// docs/node-contract.md).
        #[arg(long)]
        sharding: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Admit or remove consortium members: propose, sign, submit, members.
    Governance {
        #[command(subcommand)]
        command: trellis_node::cli_governance::GovernanceCommand,
    },
    /// Beacon system transactions: set-shard-count, register-validator,
    /// deregister-validator, shard-map, status.
    System {
        #[command(subcommand)]
        command: trellis_node::cli_system::SystemCommand,
    },
    /// Run a validator.
    Run {
        #[arg(long, env = "TRELLIS_CONFIG")]
        config: PathBuf,
    },
}

fn parse_member(s: &str) -> anyhow::Result<GenesisMember> {
    let parts: Vec<&str> = s.split(',').collect();
    let [name, admin_key, node_key, p2p_address] = parts.as_slice() else {
        bail!("member {s:?} is not NAME,ADMIN_KEY,NODE_KEY,HOST:PORT");
    };
    Ok(GenesisMember {
        name: name.to_string(),
        admin_key: admin_key.to_ascii_lowercase(),
        node_key: node_key.to_ascii_lowercase(),
        p2p_address: p2p_address.to_string(),
    })
}

fn parse_balance(s: &str) -> anyhow::Result<GenesisBalance> {
    let (account, amount) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("balance {s:?} is not ACCOUNT=AMOUNT"))?;
    Ok(GenesisBalance {
        account: account.to_ascii_lowercase(),
        amount: amount.parse().with_context(|| format!("amount in {s:?}"))?,
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs to stderr; `run` also exports over OTLP when configured (docs/observability.md).
    let running = matches!(cli.command, Command::Run { .. });
    let telemetry = trellis_node::telemetry::init(running, cli.otlp_endpoint)?;
    let result = execute(cli.command);
    // Exported spans and metrics are flushed before the process ends or is replaced.
    telemetry.shutdown();
    match result? {
        Exit::Stopped => Ok(()),
        Exit::Moved => Err(restart()),
    }
}

fn execute(command: Command) -> anyhow::Result<Exit> {
    match command {
        Command::Keygen { out } => {
            let keys = KeyFile::generate()?;
            keys.save(&out)?;
            println!(
                "{}",
                serde_json::json!({
                    "node_public_key": keys.node_public_key,
                    "admin_public_key": keys.admin_public_key,
                })
            );
        }
        Command::Genesis {
            chain_id,
            epoch_length,
            members,
            balances,
            sharding,
            out,
        } => {
            let sharding = match sharding {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    Some(
                        serde_json::from_str(&text)
                            .with_context(|| format!("sharding section {}", path.display()))?,
                    )
                }
            };
            let genesis = Genesis {
                contract_version: CONTRACT_VERSION,
                chain_id,
                epoch_length,
                members: members
                    .iter()
                    .map(|m| parse_member(m))
                    .collect::<anyhow::Result<_>>()?,
                balances: balances
                    .iter()
                    .map(|b| parse_balance(b))
                    .collect::<anyhow::Result<_>>()?,
                sharding,
            };
            genesis.check()?;
            std::fs::write(&out, genesis.to_json()?)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        Command::Governance { command } => {
            println!("{}", trellis_node::cli_governance::execute(command)?);
        }
        Command::System { command } => {
            println!("{}", trellis_node::cli_system::execute(command)?);
        }
        Command::Run { config } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            let config = NodeConfig::from_toml(&text)?;
            return run(Plan::load(config)?);
        }
    }
    Ok(Exit::Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_and_balance_arguments_parse_strictly() {
        let k = "ab".repeat(32);
        let m = parse_member(&format!("org1,{k},{k},127.0.0.2:9000")).unwrap();
        assert_eq!(m.name, "org1");
        assert!(parse_member("org1,only-two").is_err());
        assert_eq!(parse_balance(&format!("{k}=5")).unwrap().amount, 5);
        assert!(parse_balance(&format!("{k}=-5")).is_err());
        assert!(parse_balance(&k).is_err());
    }
}
