//! `trellis-node governance ...`: what an operator needs to admit or remove a member
//! with the binary alone. A proposal is built once (`propose`), each admin signs it with
//! their key file (`sign`), and anyone submits the approvals together (`submit`).

use crate::run::KeyFile;
use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;
use trellis_node_api::{MembersInfo, methods};
use trellis_node_types::{
    Approval, GovernanceAction, GovernanceTx, MemberSpec, Proposal, Signer, private_key_from_hex,
    public_key_from_hex, to_hex,
};

#[derive(Subcommand)]
pub enum GovernanceCommand {
    /// Print a proposal (hex) to admit or remove a member.
    Propose(ProposeArgs),
    /// Print this key file's admin approval (hex) of a proposal.
    Sign {
        #[arg(long)]
        key_file: PathBuf,
        #[arg(long)]
        proposal: String,
    },
    /// Submit a proposal with its approvals (trellis_submitGovernance); prints the result.
    Submit {
        /// Node RPC, e.g. http://127.0.0.2:8545
        #[arg(long)]
        rpc: String,
        #[arg(long)]
        proposal: String,
        /// An approval from `sign` (repeatable).
        #[arg(long = "approval", required = true)]
        approvals: Vec<String>,
    },
    /// Print the member registry (trellis_getMembers).
    Members {
        #[arg(long)]
        rpc: String,
    },
}

#[derive(Args)]
pub struct ProposeArgs {
    /// Read the chain id and the next sequence number from this node's RPC.
    #[arg(long, conflicts_with_all = ["chain_id", "sequence"])]
    rpc: Option<String>,
    #[arg(long, requires = "sequence")]
    chain_id: Option<String>,
    #[arg(long, requires = "chain_id")]
    sequence: Option<u64>,
    #[command(subcommand)]
    action: ActionArgs,
}

#[derive(Subcommand)]
pub enum ActionArgs {
    /// Admit a member and its validator.
    Admit {
        #[arg(long)]
        name: String,
        /// Hex admin public key (from the new member's `keygen`).
        #[arg(long)]
        admin_key: String,
        /// Hex node public key (from the new member's `keygen`).
        #[arg(long)]
        node_key: String,
        /// host:port of the new member's p2p listener.
        #[arg(long)]
        p2p_address: String,
    },
    /// Remove a member and its validator.
    Remove {
        #[arg(long)]
        name: String,
    },
}

/// Runs one governance subcommand; returns what to print on stdout.
pub fn execute(command: GovernanceCommand) -> anyhow::Result<String> {
    match command {
        GovernanceCommand::Propose(args) => {
            let (chain_id, sequence) = match (args.rpc, args.chain_id, args.sequence) {
                (Some(rpc), _, _) => {
                    let info: MembersInfo =
                        serde_json::from_value(call(&rpc, methods::GET_MEMBERS, Value::Null)?)?;
                    (info.chain_id, info.sequence)
                }
                (None, Some(c), Some(s)) => (c, s),
                _ => bail!("give --rpc URL, or both --chain-id and --sequence"),
            };
            let action = match args.action {
                ActionArgs::Admit {
                    name,
                    admin_key,
                    node_key,
                    p2p_address,
                } => GovernanceAction::Admit(MemberSpec {
                    name,
                    admin_key: public_key_from_hex(&admin_key)
                        .ok_or_else(|| anyhow!("--admin-key is not a hex ed25519 public key"))?,
                    node_key: public_key_from_hex(&node_key)
                        .ok_or_else(|| anyhow!("--node-key is not a hex ed25519 public key"))?,
                    p2p_address,
                }),
                ActionArgs::Remove { name } => GovernanceAction::Remove { name },
            };
            let proposal = Proposal {
                chain_id,
                sequence,
                action,
            };
            proposal.check()?;
            Ok(proposal.to_hex())
        }
        GovernanceCommand::Sign { key_file, proposal } => {
            let proposal = Proposal::from_hex(&proposal)?;
            let keys = KeyFile::load(&key_file)?;
            let admin = private_key_from_hex(&keys.admin_key)
                .ok_or_else(|| anyhow!("admin_key in {} is malformed", key_file.display()))?;
            if to_hex(admin.public_key().as_ref()) != keys.admin_public_key.to_ascii_lowercase() {
                bail!(
                    "admin_public_key in {} does not match admin_key",
                    key_file.display()
                );
            }
            eprintln!("approving: {}", describe(&proposal));
            Ok(proposal.approve(&admin).to_hex())
        }
        GovernanceCommand::Submit {
            rpc,
            proposal,
            approvals,
        } => {
            let proposal = Proposal::from_hex(&proposal)?;
            let approvals = approvals
                .iter()
                .map(|a| Approval::from_hex(a))
                .collect::<Result<Vec<_>, _>>()?;
            let tx = GovernanceTx::new(proposal, approvals);
            let result = call(
                &rpc,
                methods::SUBMIT_GOVERNANCE,
                json!({ "tx": tx.to_hex() }),
            )?;
            Ok(result.to_string())
        }
        GovernanceCommand::Members { rpc } => Ok(serde_json::to_string_pretty(&call(
            &rpc,
            methods::GET_MEMBERS,
            Value::Null,
        )?)?),
    }
}

/// One line saying what a proposal does (shown before signing it).
pub fn describe(p: &Proposal) -> String {
    match &p.action {
        GovernanceAction::Admit(m) => format!(
            "chain {} sequence {}: admit {:?} (admin key {}, node key {}, p2p {})",
            p.chain_id,
            p.sequence,
            m.name,
            to_hex(m.admin_key.as_ref()),
            to_hex(m.node_key.as_ref()),
            m.p2p_address
        ),
        GovernanceAction::Remove { name } => {
            format!(
                "chain {} sequence {}: remove {name:?}",
                p.chain_id, p.sequence
            )
        }
    }
}

/// One JSON-RPC call over plain HTTP/1.1; an RPC error becomes an error with its code.
pub fn call(url: &str, method: &str, params: Value) -> anyhow::Result<Value> {
    let authority = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--rpc must be http://HOST:PORT"))?
        .trim_end_matches('/');
    let authority = authority.strip_suffix("/rpc").unwrap_or(authority);
    let address = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .ok_or_else(|| anyhow!("{authority} resolves to nothing"))?;
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(10))
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "POST {} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        trellis_node_api::RPC_PATH,
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (_, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response from {authority}"))?;
    let value: Value = serde_json::from_str(body.trim())
        .with_context(|| format!("response from {authority} is not JSON"))?;
    if let Some(error) = value.get("error") {
        bail!(
            "{method} refused ({}): {}",
            error["code"],
            error["message"].as_str().unwrap_or("")
        );
    }
    Ok(value["result"].clone())
}
