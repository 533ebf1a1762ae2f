//! `trellis-node system ...`: build, sign and submit system transactions (the beacon's
//! shard count and validator registry) with the binary alone.
//!
//! With `--rpc` the command reads the chain id (`trellis_status`) and the signer's next
//! system sequence (`trellis_getSystemSequence`) from the node, signs, and submits
//! (`trellis_submitSystem`; any node forwards to the beacon). Without `--rpc` it needs
//! `--chain-id` and `--sequence` and prints the signed transaction as hex instead, for an
//! operator who signs on one machine and submits from another.

use crate::cli_governance::call;
use crate::run::KeyFile;
use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use trellis_node_api::shard::SystemSequence;
use trellis_node_api::{NodeStatus, methods};
use trellis_node_types::system::{ANY_SHARD, MAX_SHARDS};
use trellis_node_types::{
    PrivateKey, PublicKey, Signer, SystemAction, SystemPayload, SystemTx, TABLES,
    private_key_from_hex, public_key_from_hex, to_hex,
};

#[derive(Subcommand)]
pub enum SystemCommand {
    /// Change the number of shards at the next beacon epoch (signed by the key file's
    /// admin key, which must be the network admin key).
    SetShardCount {
        #[command(flatten)]
        target: Target,
        /// The new shard count (1..=max_shards).
        #[arg(long)]
        count: u16,
        /// Per-table load (e.g. tx/s): a JSON array of 256 numbers, one per table, from a
        /// file. Without it the beacon balances table counts.
        #[arg(long)]
        load_file: Option<PathBuf>,
    },
    /// Register a validator (or change its shard or addresses) from the next epoch on.
    RegisterValidator {
        #[command(flatten)]
        target: Target,
        /// Shard to validate, or `any` to let the beacon place it.
        #[arg(long, value_parser = parse_shard)]
        shard: u16,
        /// Hex node public key to register (default: the key file's node key).
        #[arg(long)]
        node_key: Option<String>,
        /// host:port of the validator's p2p listener.
        #[arg(long)]
        p2p_address: String,
        /// host:port of the validator's JSON-RPC listener.
        #[arg(long)]
        rpc_address: String,
        /// Which key of the key file signs: `node` (the node registers itself; public
        /// mode) or `admin` (the network admin, or in consortium mode the member's admin).
        #[arg(long, default_value = "node", value_parser = ["node", "admin"])]
        signer: String,
    },
    /// Remove a validator from the next epoch on.
    DeregisterValidator {
        #[command(flatten)]
        target: Target,
        /// Hex node public key to remove (default: the key file's node key).
        #[arg(long)]
        node_key: Option<String>,
        #[arg(long, default_value = "node", value_parser = ["node", "admin"])]
        signer: String,
    },
    /// Print the shard map (trellis_getShardMap).
    ShardMap {
        #[arg(long)]
        rpc: String,
    },
    /// Print where a system transaction is (trellis_getSystem).
    Status {
        #[arg(long)]
        rpc: String,
        /// Hex hash printed by a submit.
        #[arg(long)]
        hash: String,
    },
}

/// Where a transaction goes and who signs it.
#[derive(Args, Clone)]
pub struct Target {
    /// Key file from `trellis-node keygen`.
    #[arg(long)]
    key_file: PathBuf,
    /// Node RPC, e.g. http://127.0.0.2:8545; without it the signed transaction is printed.
    #[arg(long, conflicts_with_all = ["chain_id", "sequence"])]
    rpc: Option<String>,
    /// Chain id (offline signing, with --sequence).
    #[arg(long, requires = "sequence")]
    chain_id: Option<String>,
    /// The signer's next system sequence (offline signing, with --chain-id).
    #[arg(long, requires = "chain_id")]
    sequence: Option<u64>,
}

fn parse_shard(s: &str) -> Result<u16, String> {
    if s == "any" {
        return Ok(ANY_SHARD);
    }
    match s.parse::<u16>() {
        Ok(n) if n < MAX_SHARDS => Ok(n),
        _ => Err(format!("{s:?} is not a shard number (0..=255) or `any`")),
    }
}

fn key_from_file(path: &Path, which: &str) -> anyhow::Result<PrivateKey> {
    let keys = KeyFile::load(path)?;
    let (secret, public) = match which {
        "node" => (&keys.node_key, &keys.node_public_key),
        _ => (&keys.admin_key, &keys.admin_public_key),
    };
    let key = private_key_from_hex(secret)
        .ok_or_else(|| anyhow!("{which}_key in {} is malformed", path.display()))?;
    if to_hex(key.public_key().as_ref()) != public.to_ascii_lowercase() {
        bail!(
            "{which}_public_key in {} does not match {which}_key",
            path.display()
        );
    }
    Ok(key)
}

fn node_key_arg(arg: Option<String>, key_file: &Path) -> anyhow::Result<PublicKey> {
    match arg {
        Some(hex) => public_key_from_hex(&hex)
            .ok_or_else(|| anyhow!("--node-key is not a hex ed25519 public key")),
        None => Ok(key_from_file(key_file, "node")?.public_key()),
    }
}

/// Reads a per-table load file: a JSON array of exactly 256 non-negative integers.
pub fn read_load(path: &Path) -> anyhow::Result<Vec<u64>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let load: Vec<u64> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a JSON array of non-negative integers",
            path.display()
        )
    })?;
    if load.len() != TABLES {
        bail!(
            "{} has {} entries; give one per table ({TABLES})",
            path.display(),
            load.len()
        );
    }
    Ok(load)
}

/// Signs `action` for `target` and submits it, or prints it when offline.
fn sign_and_send(
    target: &Target,
    key: &PrivateKey,
    action: SystemAction,
) -> anyhow::Result<String> {
    let (chain_id, sequence) = match (&target.rpc, &target.chain_id, target.sequence) {
        (Some(rpc), _, _) => {
            let status: NodeStatus =
                serde_json::from_value(call(rpc, methods::STATUS, Value::Null)?)
                    .context("trellis_status answer")?;
            let seq: SystemSequence = serde_json::from_value(call(
                rpc,
                methods::GET_SYSTEM_SEQUENCE,
                json!({ "key": to_hex(key.public_key().as_ref()) }),
            )?)
            .context("trellis_getSystemSequence answer")?;
            (status.chain_id, seq.sequence)
        }
        (None, Some(chain_id), Some(sequence)) => (chain_id.clone(), sequence),
        _ => bail!("give --rpc URL, or both --chain-id and --sequence"),
    };
    let tx = build(chain_id, sequence, action, key)?;
    eprintln!("signing: {}", describe(&tx));
    match &target.rpc {
        Some(rpc) => {
            Ok(call(rpc, methods::SUBMIT_SYSTEM, json!({ "tx": tx.to_hex() }))?.to_string())
        }
        None => Ok(tx.to_hex()),
    }
}

/// A signed system transaction, checked for what the decoder would refuse.
pub fn build(
    chain_id: String,
    sequence: u64,
    action: SystemAction,
    key: &PrivateKey,
) -> anyhow::Result<SystemTx> {
    let payload = SystemPayload {
        chain_id,
        sequence,
        action,
    };
    payload.check()?;
    Ok(payload.sign(key))
}

/// One line saying what a system transaction does (shown before it is sent).
pub fn describe(tx: &SystemTx) -> String {
    let p = &tx.payload;
    let what = match &p.action {
        SystemAction::SetShardCount { count, load } => format!(
            "set the shard count to {count} ({})",
            if load.is_empty() {
                "no load hint".to_string()
            } else {
                format!("load hint of {} tables", load.len())
            }
        ),
        SystemAction::RegisterValidator {
            shard,
            node_key,
            p2p_address,
            rpc_address,
        } => format!(
            "register validator {} for {} (p2p {p2p_address}, rpc {rpc_address})",
            to_hex(node_key.as_ref()),
            if *shard == ANY_SHARD {
                "any shard".to_string()
            } else {
                format!("shard {shard}")
            }
        ),
        SystemAction::DeregisterValidator { node_key } => {
            format!("deregister validator {}", to_hex(node_key.as_ref()))
        }
    };
    format!(
        "chain {} key {} sequence {}: {what}",
        p.chain_id,
        to_hex(tx.signer.as_ref()),
        p.sequence
    )
}

/// Runs one system subcommand; returns what to print on stdout.
pub fn execute(command: SystemCommand) -> anyhow::Result<String> {
    match command {
        SystemCommand::SetShardCount {
            target,
            count,
            load_file,
        } => {
            let load = match load_file {
                Some(path) => read_load(&path)?,
                None => Vec::new(),
            };
            let key = key_from_file(&target.key_file, "admin")?;
            sign_and_send(&target, &key, SystemAction::SetShardCount { count, load })
        }
        SystemCommand::RegisterValidator {
            target,
            shard,
            node_key,
            p2p_address,
            rpc_address,
            signer,
        } => {
            let node_key = node_key_arg(node_key, &target.key_file)?;
            let key = key_from_file(&target.key_file, &signer)?;
            sign_and_send(
                &target,
                &key,
                SystemAction::RegisterValidator {
                    shard,
                    node_key,
                    p2p_address,
                    rpc_address,
                },
            )
        }
        SystemCommand::DeregisterValidator {
            target,
            node_key,
            signer,
        } => {
            let node_key = node_key_arg(node_key, &target.key_file)?;
            let key = key_from_file(&target.key_file, &signer)?;
            sign_and_send(
                &target,
                &key,
                SystemAction::DeregisterValidator { node_key },
            )
        }
        SystemCommand::ShardMap { rpc } => Ok(serde_json::to_string_pretty(&call(
            &rpc,
            methods::GET_SHARD_MAP,
            Value::Null,
        )?)?),
        SystemCommand::Status { rpc, hash } => Ok(serde_json::to_string_pretty(&call(
            &rpc,
            methods::GET_SYSTEM,
            json!({ "hash": hash }),
        )?)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: SystemCommand,
    }

    fn key_file(dir: &Path) -> (PathBuf, KeyFile) {
        let keys = KeyFile::generate().unwrap();
        let path = dir.join("keys.json");
        keys.save(&path).unwrap();
        (path, keys)
    }

    fn offline(args: &[&str]) -> anyhow::Result<String> {
        let cli = Cli::try_parse_from(std::iter::once("system").chain(args.iter().copied()))?;
        execute(cli.command)
    }

    #[test]
    fn offline_signing_prints_a_verifiable_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let (path, keys) = key_file(dir.path());
        let file = path.to_str().unwrap();
        let common = ["--key-file", file, "--chain-id", "dev", "--sequence", "4"];

        let hex =
            offline(&[&["set-shard-count"], &common[..], &["--count", "3"]].concat()).unwrap();
        let tx = SystemTx::from_hex(&hex).unwrap();
        tx.check_stateless("dev").unwrap();
        assert_eq!(to_hex(tx.signer.as_ref()), keys.admin_public_key);
        assert_eq!(tx.payload.sequence, 4);
        assert_eq!(
            tx.payload.action,
            SystemAction::SetShardCount {
                count: 3,
                load: vec![]
            }
        );

        let hex = offline(
            &[
                &["register-validator"],
                &common[..],
                &[
                    "--shard",
                    "any",
                    "--p2p-address",
                    "n0:9000",
                    "--rpc-address",
                    "n0:8545",
                ],
            ]
            .concat(),
        )
        .unwrap();
        let tx = SystemTx::from_hex(&hex).unwrap();
        tx.check_stateless("dev").unwrap();
        // Self-registration: signed by the node key it registers.
        assert_eq!(to_hex(tx.signer.as_ref()), keys.node_public_key);
        assert!(matches!(
            tx.payload.action,
            SystemAction::RegisterValidator { shard: ANY_SHARD, ref node_key, .. }
                if to_hex(node_key.as_ref()) == keys.node_public_key
        ));

        let other = trellis_node_types::test_key(5).public_key();
        let hex = offline(
            &[
                &["deregister-validator"],
                &common[..],
                &["--node-key", &to_hex(other.as_ref()), "--signer", "admin"],
            ]
            .concat(),
        )
        .unwrap();
        let tx = SystemTx::from_hex(&hex).unwrap();
        assert_eq!(to_hex(tx.signer.as_ref()), keys.admin_public_key);
        assert_eq!(
            tx.payload.action,
            SystemAction::DeregisterValidator { node_key: other }
        );
    }

    #[test]
    fn bad_arguments_get_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = key_file(dir.path());
        let file = path.to_str().unwrap();
        let common = ["--key-file", file, "--chain-id", "dev", "--sequence", "0"];
        let err = |args: &[&str]| offline(args).unwrap_err().to_string();

        // Neither --rpc nor the offline pair.
        assert!(
            err(&["set-shard-count", "--key-file", file, "--count", "2"])
                .contains("give --rpc URL, or both --chain-id and --sequence")
        );
        assert!(
            err(&[
                &["register-validator"],
                &common[..],
                &[
                    "--shard",
                    "x",
                    "--p2p-address",
                    "a:1",
                    "--rpc-address",
                    "a:2"
                ]
            ]
            .concat())
            .contains("is not a shard number")
        );
        assert!(
            err(&[
                &["register-validator"],
                &common[..],
                &[
                    "--shard",
                    "256",
                    "--p2p-address",
                    "a:1",
                    "--rpc-address",
                    "a:2"
                ]
            ]
            .concat())
            .contains("is not a shard number")
        );
        assert!(
            err(&[
                &["register-validator"],
                &common[..],
                &[
                    "--shard",
                    "1",
                    "--p2p-address",
                    "a b",
                    "--rpc-address",
                    "a:2"
                ]
            ]
            .concat())
            .contains("p2p address")
        );
        assert!(
            err(&[
                &["deregister-validator"],
                &common[..],
                &["--node-key", "zz"]
            ]
            .concat())
            .contains("--node-key is not a hex ed25519 public key")
        );

        let load = dir.path().join("load.json");
        std::fs::write(&load, "[1, 2, 3]").unwrap();
        let load_arg = load.to_str().unwrap();
        assert!(
            err(&[
                &["set-shard-count"],
                &common[..],
                &["--count", "2", "--load-file", load_arg]
            ]
            .concat())
            .contains("has 3 entries; give one per table (256)")
        );
        std::fs::write(&load, "[-1]").unwrap();
        assert!(
            err(&[
                &["set-shard-count"],
                &common[..],
                &["--count", "2", "--load-file", load_arg]
            ]
            .concat())
            .contains("not a JSON array of non-negative integers")
        );
        std::fs::write(&load, serde_json::to_string(&vec![7u64; 256]).unwrap()).unwrap();
        let hex = offline(
            &[
                &["set-shard-count"],
                &common[..],
                &["--count", "2", "--load-file", load_arg],
            ]
            .concat(),
        )
        .unwrap();
        let tx = SystemTx::from_hex(&hex).unwrap();
        assert_eq!(
            tx.payload.action,
            SystemAction::SetShardCount {
                count: 2,
                load: vec![7; 256]
            }
        );

        // A key file whose public key does not match its private key.
        let mut keys = KeyFile::generate().unwrap();
        keys.admin_public_key = keys.node_public_key.clone();
        let bad = dir.path().join("bad.json");
        keys.save(&bad).unwrap();
        assert!(
            err(&[
                "set-shard-count",
                "--key-file",
                bad.to_str().unwrap(),
                "--chain-id",
                "dev",
                "--sequence",
                "0",
                "--count",
                "2"
            ])
            .contains("admin_public_key in")
        );

        // An --rpc that is not http://HOST:PORT.
        assert!(
            err(&[
                "set-shard-count",
                "--key-file",
                file,
                "--rpc",
                "https://x",
                "--count",
                "2"
            ])
            .contains("--rpc must be http://HOST:PORT")
        );
    }

    #[test]
    fn describe_says_what_is_signed() {
        let key = trellis_node_types::test_key(1);
        let tx = build(
            "dev".into(),
            2,
            SystemAction::RegisterValidator {
                shard: 3,
                node_key: key.public_key(),
                p2p_address: "a:1".into(),
                rpc_address: "a:2".into(),
            },
            &key,
        )
        .unwrap();
        let line = describe(&tx);
        assert!(line.starts_with("chain dev key "), "{line}");
        assert!(line.contains("sequence 2: register validator"), "{line}");
        assert!(line.contains("for shard 3 (p2p a:1, rpc a:2)"), "{line}");
    }
}
