//! `trellis-node-bench`: starts validators as real `trellis-node` processes on loopback,
//! drives pre-signed transfers through JSON-RPC batches, and prints finalized tx/s and
//! finality latency next to this machine's ed25519 verification rates (the physical
//! ceiling: every transaction's signature is checked on admission and again by every
//! verifying validator). Measures; asserts nothing.
//!
//! `cargo build --release -p trellis-node -p trellis-node-bench &&
//!  target/release/trellis-node-bench --seconds 30`
//!
//! `--reshard 2:3` measures the resharding pause instead: the shard count changes while
//! the load runs, and the longest finalization gap per shard is printed next to the
//! steady-state block interval (see `reshard`).

mod client;
mod reshard;

use client::Client;

use anyhow::{Context as _, anyhow, bail};
use clap::Parser;
use commonware_cryptography::{BatchEntry, BatchVerifier, Verifier as _};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trellis_node_api::methods;
use trellis_node_types::{
    Encode, PrivateKey, PublicKey, Signer, Tx, TxKind, UnsignedTx, test_key, to_hex,
};

#[derive(Parser)]
#[command(about = "Throughput and finality benchmark for trellis-node")]
struct Args {
    /// The trellis-node binary (default: next to this one).
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Validators to start.
    #[arg(long, default_value_t = 4)]
    validators: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Funded sender accounts.
    #[arg(long, default_value_t = 2_000)]
    accounts: u64,
    /// Transactions per JSON-RPC batch.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Pre-signed transactions per account (caps the offered load).
    #[arg(long, default_value_t = 150)]
    per_account: u64,
    /// Offered load in tx/s over all validators (0: as fast as admission allows).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Loopback address of the first validator; validator i listens on this address + i.
    /// Keep every validator inside the range reserved for node benchmarks: 127.0.1.0/24
    /// (the default, 127.0.1.2), or 127.0.55.0/24 for `--reshard` (default 127.0.55.2).
    #[arg(long)]
    first_ip: Option<std::net::Ipv4Addr>,
    /// Most transactions the load generator keeps waiting in each validator's mempool.
    #[arg(long, default_value_t = 60_000)]
    max_pending: u64,
    /// Shards of a sharded network (0: an unsharded network, as before). A sharded
    /// network adds a beacon committee; every committee has `--validators` validators.
    #[arg(long, default_value_t = 0)]
    shards: u16,
    /// Percent of transfers whose receiver is in another shard (sharded networks).
    #[arg(long, default_value_t = 0)]
    cross: u8,
    /// Live resharding FROM:TO (e.g. 2:3): start FROM shards with every slot up to TO
    /// registered, load for `--steady` seconds, then `trellis-node system
    /// set-shard-count --count TO` while the load runs; prints the longest finalization
    /// gap per shard and overall. Replaces `--shards` and `--seconds`.
    #[arg(long)]
    reshard: Option<reshard::Change>,
    /// Finalized beacon blocks per epoch (sharded networks; a count change applies at the
    /// next epoch). Default: 20 with `--reshard`, the genesis default otherwise.
    #[arg(long)]
    epoch_length: Option<u64>,
    /// `--reshard`: seconds of load before the change (the steady-state baseline).
    #[arg(long, default_value_t = 20)]
    steady: u64,
    /// `--reshard`: most seconds the change may take until every shard of the new count
    /// has finalized `--settle-blocks` blocks in the new epoch.
    #[arg(long, default_value_t = 300)]
    reshard_timeout: u64,
    /// `--reshard`: blocks every shard finalizes in the new epoch before the run ends.
    #[arg(long, default_value_t = 5)]
    settle_blocks: u64,
    /// `--reshard`: milliseconds between the gap watcher's status polls (the gaps'
    /// resolution).
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// `RUST_LOG` of the node processes (their logs are `c<committee>v<validator>/node.log`
    /// under the network's directory).
    #[arg(long, default_value = "warn")]
    node_log: String,
    /// Keep the network's directory (data, configs and node logs) after the run and print
    /// its path, to read the nodes' logs.
    #[arg(long)]
    keep: bool,
}

struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One JSON-RPC call on a connection of its own.
fn call(addr: SocketAddr, method: &str, params: Value) -> anyhow::Result<Value> {
    Client::new(addr).call(method, params)
}

fn status_field(client: &mut Client, field: &str) -> u64 {
    client
        .call(methods::STATUS, Value::Null)
        .ok()
        .and_then(|s| s[field].as_u64())
        .unwrap_or(0)
}

fn finalized_height(client: &mut Client) -> u64 {
    status_field(client, "finalized_height")
}

fn mempool_depth(client: &mut Client) -> u64 {
    status_field(client, "mempool_depth")
}

/// Single and batch ed25519 verification rates (signatures per second, one core).
fn ed25519_rates() -> (f64, f64) {
    let key = test_key(7);
    let public = key.public_key();
    let messages: Vec<Vec<u8>> = (0..1024u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let signatures: Vec<_> = messages.iter().map(|m| key.sign(b"bench", m)).collect();
    let start = Instant::now();
    let mut single = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        for (m, s) in messages.iter().zip(&signatures) {
            if public.verify(b"bench", m, s) {
                single += 1;
            }
        }
    }
    let single_rate = single as f64 / start.elapsed().as_secs_f64();
    let records: Vec<(&[u8], _)> = messages
        .iter()
        .map(|m| m.as_slice())
        .zip(signatures.iter().cloned())
        .collect();
    let mut rng = commonware_utils::sys_rng();
    let start = Instant::now();
    let mut batch = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        let ok = PublicKey::verify_batch(
            &mut rng,
            &records,
            |_, (message, signature)| BatchEntry {
                namespace: b"bench",
                message,
                public_key: &public,
                signature,
            },
            &commonware_parallel::Sequential,
        );
        if ok {
            batch += records.len() as u64;
        }
    }
    (single_rate, batch as f64 / start.elapsed().as_secs_f64())
}

struct Network {
    root: tempfile::TempDir,
    procs: Vec<Proc>,
    /// RPC addresses by committee: the unsharded committee, or the shards in slot order
    /// (a sharded network's beacon nodes are in `beacon`).
    rpcs: Vec<Vec<SocketAddr>>,
    beacon: Vec<SocketAddr>,
}

/// The shard owning `account` in the genesis map of `shards` shards (0 when unsharded).
fn shard_of(account: &PublicKey, shards: u16) -> usize {
    if shards == 0 {
        return 0;
    }
    usize::from(trellis_node_types::table_of(account)) * usize::from(shards) / 256
}

/// CPU seconds (user + system) a process has used so far, from /proc (Linux); 0 elsewhere.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Clock ticks are 100 per second on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// Bytes a process has caused to be written to storage (`write_bytes` of
/// `/proc/<pid>/io`; 0 where unreadable).
fn written_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

impl Network {
    /// Bytes written to storage so far by all validator processes together.
    fn written_bytes(&self) -> u64 {
        self.procs
            .iter()
            .filter_map(|p| p.0.as_ref())
            .map(|c| written_bytes(c.id()))
            .sum()
    }

    /// CPU seconds used so far by all validator processes together.
    fn cpu_seconds(&self) -> f64 {
        self.procs
            .iter()
            .filter_map(|p| p.0.as_ref())
            .map(|c| cpu_seconds(&c.id().to_string()))
            .sum()
    }
}

/// Validator `i`'s loopback address: `first` + `i`, refused if it leaves `first`'s /24.
fn validator_ip(first: std::net::Ipv4Addr, i: usize) -> anyhow::Result<std::net::Ipv4Addr> {
    let [a, b, c, d] = first.octets();
    let last = usize::from(d) + i;
    if !first.is_loopback() || last > 254 {
        bail!("validator {i} would be outside {a}.{b}.{c}.0/24 on loopback (first IP {first})");
    }
    Ok(std::net::Ipv4Addr::new(a, b, c, last as u8))
}

/// A network to start: `shards` shards (0: unsharded) with validators registered for
/// `slots` slots (at least `shards`; slots beyond the count wait for the beacon).
struct Layout {
    validators: usize,
    shards: u16,
    slots: u16,
    epoch_length: Option<u64>,
    first_ip: std::net::Ipv4Addr,
    node_log: String,
}

fn start_network(bin: &Path, layout: &Layout, accounts: &[PrivateKey]) -> anyhow::Result<Network> {
    let (n, shards, first_ip) = (layout.validators, layout.shards, layout.first_ip);
    let root = tempfile::tempdir()?;
    let base = 40_000 + (std::process::id() % 1_000) as u16 * 20;
    // Committees: one unsharded, or the beacon (index 0) and the slots.
    let committees = if shards == 0 {
        1
    } else {
        1 + usize::from(layout.slots.max(shards))
    };
    let mut members = Vec::new();
    let mut seats: Vec<(Option<u16>, Value)> = Vec::new();
    let mut rpcs = vec![Vec::new(); committees];
    let mut configs = Vec::new();
    for (c, committee) in rpcs.iter_mut().enumerate() {
        for v in 0..n {
            let i = c * n + v;
            let dir = root.path().join(format!("c{c}v{v}"));
            std::fs::create_dir_all(&dir)?;
            let out = Command::new(bin)
                .args(["keygen", "--out"])
                .arg(dir.join("keys.json"))
                .output()
                .context("running trellis-node keygen")?;
            if !out.status.success() {
                bail!("keygen: {}", String::from_utf8_lossy(&out.stderr));
            }
            let keys: Value = serde_json::from_slice(&out.stdout)?;
            let ip = validator_ip(first_ip, i)?;
            // Every node on its own address: the same two ports everywhere.
            let p2p: SocketAddr = format!("{ip}:{base}").parse()?;
            let rpc: SocketAddr = format!("{ip}:{}", base + 10).parse()?;
            let node_key = keys["node_public_key"].as_str().unwrap_or_default();
            if shards == 0 {
                members.push(format!(
                    "v{i},{},{node_key},{p2p}",
                    keys["admin_public_key"].as_str().unwrap_or_default(),
                ));
            } else {
                let slot = (c > 0).then(|| (c - 1) as u16);
                seats.push((
                    slot,
                    json!({"node_key": node_key, "shard": slot.unwrap_or(0),
                           "p2p_address": p2p.to_string(), "rpc_address": rpc.to_string()}),
                ));
            }
            let role = match c {
                _ if shards == 0 => "kind = \"shard\"\nshard = 0".to_string(),
                0 => "kind = \"beacon\"".to_string(),
                _ => format!("kind = \"shard\"\nshard = {}", c - 1),
            };
            let config = dir.join("node.toml");
            std::fs::write(
                &config,
                format!(
                    "chain_id = \"bench\"\nkey_file = \"{}\"\ndata_dir = \"{}\"\ngenesis_file = \"{}\"\np2p_listen = \"{p2p}\"\nrpc_listen = \"{rpc}\"\n\n[role]\n{role}\n\n[mempool]\nmax_txs = 100000\n",
                    dir.join("keys.json").display(),
                    dir.join("data").display(),
                    root.path().join("genesis.json").display(),
                ),
            )?;
            committee.push(rpc);
            configs.push((dir, config));
        }
    }
    let mut genesis = Command::new(bin);
    genesis
        .args(["genesis", "--chain-id", "bench", "--out"])
        .arg(root.path().join("genesis.json"));
    if let Some(epoch) = layout.epoch_length {
        genesis.arg("--epoch-length").arg(epoch.to_string());
    }
    if shards == 0 {
        for m in &members {
            genesis.arg("--member").arg(m);
        }
    } else {
        let admin = admin_key();
        let sharding = json!({
            "mode": "public",
            "admin_key": to_hex(admin.public_key().as_ref()),
            "max_shards": layout.slots.max(shards).max(2),
            "shard_count": shards,
            "beacon": seats.iter().filter(|(s, _)| s.is_none()).map(|(_, v)| v).collect::<Vec<_>>(),
            "validators": seats.iter().filter(|(s, _)| s.is_some()).map(|(_, v)| v).collect::<Vec<_>>(),
        });
        // The admin's key file, for `trellis-node system set-shard-count`.
        std::fs::write(
            root.path().join("admin.json"),
            json!({
                "node_key": to_hex(&admin.encode()),
                "node_public_key": to_hex(admin.public_key().as_ref()),
                "admin_key": to_hex(&admin.encode()),
                "admin_public_key": to_hex(admin.public_key().as_ref()),
            })
            .to_string(),
        )?;
        let file = root.path().join("sharding.json");
        std::fs::write(&file, sharding.to_string())?;
        genesis
            .arg("--sharding")
            .arg(file)
            .arg("--member")
            .arg(format!(
                "org0,{},{},{}:{base}",
                to_hex(admin.public_key().as_ref()),
                to_hex(admin.public_key().as_ref()),
                validator_ip(first_ip, 0)?
            ));
    }
    for a in accounts {
        genesis
            .arg("--balance")
            .arg(format!("{}=1000000000", to_hex(a.public_key().as_ref())));
    }
    let out = genesis.output()?;
    if !out.status.success() {
        bail!("genesis: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut procs = Vec::new();
    for (dir, config) in &configs {
        let log = std::fs::File::create(dir.join("node.log"))?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", &layout.node_log)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        procs.push(Proc(Some(child)));
    }
    let beacon = if shards == 0 {
        Vec::new()
    } else {
        rpcs.remove(0)
    };
    Ok(Network {
        root,
        procs,
        rpcs,
        beacon,
    })
}

/// `--reshard`: after `--steady` seconds of load, changes the shard count with the
/// operator's CLI, waits until every shard of the new count has finalized
/// `--settle-blocks` blocks in the new epoch, and prints the finalization gaps.
fn measure_reshard(
    bin: &Path,
    network: &Network,
    change: reshard::Change,
    args: &Args,
    watch: &reshard::Watch,
    load_start: Instant,
) -> anyhow::Result<()> {
    let beacon = *network
        .beacon
        .first()
        .ok_or_else(|| anyhow!("--reshard needs a sharded network"))?;
    std::thread::sleep(Duration::from_secs(args.steady));
    let submit = Instant::now();
    let out = Command::new(bin)
        .args(["system", "set-shard-count", "--key-file"])
        .arg(network.root.path().join("admin.json"))
        .args(["--rpc", &format!("http://{beacon}")])
        .args(["--count", &change.to.to_string()])
        .output()
        .context("running trellis-node system set-shard-count")?;
    if !out.status.success() {
        bail!(
            "set-shard-count --count {}: {}",
            change.to,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    println!(
        "set-shard-count {} -> {} submitted after {:.1} s of load",
        change.from,
        change.to,
        submit.duration_since(load_start).as_secs_f64()
    );
    let timeout = submit + Duration::from_secs(args.reshard_timeout);
    // The epoch from which the beacon's map has the new count.
    let epoch = loop {
        let map = call(beacon, methods::GET_SHARD_MAP, Value::Null).ok();
        if let Some(map) = map
            && map["shard_count"].as_u64() == Some(u64::from(change.to))
        {
            break map["epoch"].as_u64().unwrap_or(0);
        }
        if Instant::now() > timeout {
            bail!("the beacon did not switch to {} shards in time", change.to);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let active = usize::from(change.to);
    while !(0..active).all(|s| reshard::settled(&watch.sightings(s), epoch, args.settle_blocks)) {
        if Instant::now() > timeout {
            let late: Vec<usize> = (0..active)
                .filter(|s| !reshard::settled(&watch.sightings(*s), epoch, args.settle_blocks))
                .collect();
            bail!(
                "shards {late:?} did not finalize {} blocks of epoch {epoch} within {} s",
                args.settle_blocks,
                args.reshard_timeout
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let done = Instant::now();
    let old = usize::from(change.from);
    // Baseline: the steady load before the change (its first seconds warm up).
    let warm = load_start + Duration::from_secs(args.steady / 4);
    let mut intervals = Vec::new();
    let mut all_switches = Vec::new();
    println!(
        "steady state ({:.0} s before the change):",
        submit.duration_since(warm).as_secs_f64()
    );
    for s in 0..old {
        let seen = watch.sightings(s);
        let mean = reshard::mean_interval(&seen, warm, submit);
        let gap = reshard::longest_gap(&seen, warm, submit);
        println!(
            "  shard {s}: mean block interval {}, longest gap {:.0} ms (ordinary epoch switches included)",
            mean.map_or("n/a".to_string(), |m| format!(
                "{:.0} ms",
                m.as_secs_f64() * 1e3
            )),
            gap.as_secs_f64() * 1e3
        );
        intervals.extend(mean);
        let (switches, ordinary) = reshard::switch_gaps(&seen, warm, submit);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let pauses: Vec<f64> = switches.iter().map(|g| ms(g.pause())).collect();
        println!(
            "    {} epoch switches: pause (longest gap around the epoch-end block) {:?} ms; \
             to the epoch-end block {:?} ms, from it to the new epoch's first block {:?} ms; \
             longest other gap {:.0} ms",
            switches.len(),
            pauses.iter().map(|p| p.round() as u64).collect::<Vec<_>>(),
            switches
                .iter()
                .map(|g| ms(g.ending).round() as u64)
                .collect::<Vec<_>>(),
            switches
                .iter()
                .map(|g| ms(g.starting).round() as u64)
                .collect::<Vec<_>>(),
            ms(ordinary)
        );
        all_switches.extend(pauses);
    }
    if !all_switches.is_empty() {
        all_switches.sort_by(f64::total_cmp);
        println!(
            "  epoch-switch pause over all shards: median {:.0} ms, max {:.0} ms ({} switches)",
            percentile(&all_switches, 0.5),
            all_switches.last().copied().unwrap_or_default(),
            all_switches.len()
        );
    }
    // A new shard's pause runs from the first epoch-end of an old shard (its tables stop
    // being finalized there) to its own first block.
    let switch = (0..old)
        .filter_map(|s| reshard::entered(&watch.sightings(s), epoch))
        .min()
        .unwrap_or(submit);
    println!(
        "reshard (epoch {epoch}; {:.1} s from submission until every shard finalized {} blocks of it):",
        done.duration_since(submit).as_secs_f64(),
        args.settle_blocks
    );
    let mut worst = Duration::ZERO;
    let mut all = Vec::new();
    for s in 0..old.max(active) {
        let seen = watch.sightings(s);
        let from = if s < old { submit } else { switch };
        let gap = reshard::longest_gap(&seen, from, done);
        let role = match (s < old, s < active) {
            (true, true) => "kept",
            (false, true) => "new",
            _ => "drained",
        };
        if s < active {
            worst = worst.max(gap);
            all.extend(seen.iter().filter(|x| x.epoch >= epoch || s < old).copied());
            println!(
                "  shard {s} ({role}): longest finalization gap {:.0} ms",
                gap.as_secs_f64() * 1e3
            );
        } else {
            println!("  shard {s} ({role}): no longer finalizes");
        }
    }
    all.sort_by_key(|x| x.at);
    let network_wide = reshard::longest_gap(&all, submit, done);
    let baseline = if intervals.is_empty() {
        f64::NAN
    } else {
        intervals.iter().map(Duration::as_secs_f64).sum::<f64>() / intervals.len() as f64
    };
    println!(
        "resharding pause: {:.0} ms (longest gap of any shard; no shard finalized for {:.0} ms at most); \
         steady-state block interval {:.0} ms; ratio {:.1}; poll resolution {} ms",
        worst.as_secs_f64() * 1e3,
        network_wide.as_secs_f64() * 1e3,
        baseline * 1e3,
        worst.as_secs_f64() / baseline,
        args.poll_ms
    );
    Ok(())
}

/// The sharded network's admin (signs `SetShardCount`).
fn admin_key() -> PrivateKey {
    test_key(1)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match args.node_bin.clone() {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no exe dir"))?
            .join("trellis-node"),
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_string))
        .unwrap_or_default();
    println!("machine: {cores} cores, {memory}");

    let (single, batch) = ed25519_rates();
    println!("ed25519 verify (1 core): single {single:.0}/s, batch {batch:.0}/s");

    let accounts: Vec<PrivateKey> = (0..args.accounts).map(|i| test_key(10_000 + i)).collect();
    let shards = args.reshard.map_or(args.shards, |c| c.from);
    let committees = usize::from(shards.max(1));
    let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); committees];
    for (i, key) in accounts.iter().enumerate() {
        by_shard[shard_of(&key.public_key(), shards)].push(i);
    }
    if by_shard.iter().any(Vec::is_empty) {
        bail!(
            "some shard owns none of the {} accounts; use more",
            args.accounts
        );
    }
    println!(
        "signing {} transfers ({}% to another shard) ...",
        args.accounts * args.per_account,
        if shards > 1 { args.cross } else { 0 }
    );
    // Nonce-major order, so each node's mempool sees every sender's nonces in sequence.
    // Validator v of shard s gets the transfers of shard s's senders with index ≡ v.
    let mut per_node: Vec<Vec<Tx>> = vec![Vec::new(); committees * args.validators];
    let mut cross_txs = 0u64;
    for nonce in 0..args.per_account {
        for (s, members) in by_shard.iter().enumerate() {
            for (j, &i) in members.iter().enumerate() {
                let key = &accounts[i];
                // Deterministic spread: every 100 consecutive transfers hold `cross` to
                // another shard.
                let crosses =
                    shards > 1 && ((i as u64 + nonce * 37) % 100) < u64::from(args.cross.min(100));
                let to = if crosses {
                    let other =
                        &by_shard[(s + 1 + (i + nonce as usize) % (committees - 1)) % committees];
                    cross_txs += 1;
                    accounts[other[(j + nonce as usize) % other.len()]].public_key()
                } else {
                    accounts[members[(j + 1) % members.len()]].public_key()
                };
                let tx = UnsignedTx {
                    chain_id: "bench".into(),
                    from: key.public_key(),
                    nonce,
                    fee: 0,
                    kind: TxKind::Transfer { to, amount: 1 },
                }
                .sign(key);
                per_node[s * args.validators + j % args.validators].push(tx);
            }
        }
    }
    println!("{cross_txs} of them cross-shard");

    // The JSON-RPC request bodies are built before the measured window too, so the load
    // generator's cost inside the window is sending bytes and reading answers.
    let per_node: Vec<Vec<(Vec<[u8; 32]>, String)>> = per_node
        .iter()
        .map(|txs| {
            txs.chunks(args.batch)
                .map(|chunk| {
                    let hashes = chunk.iter().map(|tx| tx.hash().0).collect();
                    let body: Vec<Value> = chunk
                        .iter()
                        .enumerate()
                        .map(|(i, tx)| {
                            json!({"jsonrpc": "2.0", "id": i,
                                   "method": methods::SEND_TRANSACTION,
                                   "params": {"tx": to_hex(&tx.encode())}})
                        })
                        .collect();
                    (hashes, Value::Array(body).to_string())
                })
                .collect()
        })
        .collect();

    let layout = Layout {
        validators: args.validators,
        shards,
        slots: args.reshard.map_or(shards, |c| c.from.max(c.to)),
        epoch_length: args
            .epoch_length
            .or(args.reshard.map(|_| 20))
            .filter(|_| shards > 0),
        first_ip: args.first_ip.unwrap_or(if args.reshard.is_some() {
            std::net::Ipv4Addr::new(127, 0, 55, 2)
        } else {
            std::net::Ipv4Addr::new(127, 0, 1, 2)
        }),
        node_log: args.node_log.clone(),
    };
    let mut network = start_network(&bin, &layout, &accounts)?;
    if args.keep {
        network.root.disable_cleanup(true);
        println!(
            "network directory (kept): {}",
            network.root.path().display()
        );
    }
    let rpcs: Vec<SocketAddr> = network.rpcs.iter().flatten().copied().collect();
    // Slots beyond the starting count wait for the beacon: only running shards finalize.
    let running: Vec<SocketAddr> = network.rpcs[..committees]
        .iter()
        .flatten()
        .chain(&network.beacon)
        .copied()
        .collect();
    let ready = Instant::now();
    let mut starting: Vec<Client> = running.iter().map(|r| Client::new(*r)).collect();
    while starting.iter_mut().any(|c| finalized_height(c) < 2) {
        // Generous: many debug-built processes on a loaded machine start slowly.
        if ready.elapsed() > Duration::from_secs(300) {
            bail!("validators did not start finalizing within 300 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "{} validators in each of {} committee(s) finalizing; load for {} s, offered {}",
        args.validators,
        committees + usize::from(!network.beacon.is_empty()),
        if args.reshard.is_some() {
            format!("{} s and through the reshard", args.steady)
        } else {
            args.seconds.to_string()
        },
        if args.rate == 0 {
            "as fast as admission allows".to_string()
        } else {
            format!("{} tx/s", args.rate)
        }
    );

    let submitted: Arc<Mutex<HashMap<[u8; 32], Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let rejected = Arc::new(AtomicU64::new(0));
    // One node of every slot watched from the start of the load (`--reshard`).
    let watch = args.reshard.map(|_| {
        let first: Vec<SocketAddr> = network.rpcs.iter().map(|c| c[0]).collect();
        reshard::Watch::start(&first, Duration::from_millis(args.poll_ms.max(1)), |a| {
            call(a, methods::STATUS, Value::Null).ok()
        })
    });
    let start = Instant::now();
    let deadline = start
        + Duration::from_secs(match args.reshard {
            // The load runs until the change settles; `stop` ends it.
            Some(_) => args.steady + args.reshard_timeout + 60,
            None => args.seconds,
        });
    let (nodes_cpu_start, bench_cpu_start) = (network.cpu_seconds(), cpu_seconds("self"));
    let written_start = network.written_bytes();
    let mut loaders = Vec::new();
    let per_node_count = per_node.len();
    for (node, batches) in per_node.into_iter().enumerate() {
        let addr = rpcs[node];
        let submitted = submitted.clone();
        let stop = stop.clone();
        let rejected = rejected.clone();
        let max_pending = args.max_pending;
        // Each loader offers its share of the rate: one batch per `pace`.
        let pace = (args.rate > 0).then(|| {
            Duration::from_secs_f64(args.batch as f64 * per_node_count as f64 / args.rate as f64)
        });
        loaders.push(std::thread::spawn(move || {
            // One kept connection per loader, as a real client would hold.
            let mut client = Client::new(addr);
            let mut next_send = Instant::now();
            for (hashes, body) in batches {
                if let Some(pace) = pace {
                    let now = Instant::now();
                    if next_send > now {
                        std::thread::sleep(next_send - now);
                    }
                    next_send += pace;
                }
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                // Backpressure: keep the pool below its bound.
                while mempool_depth(&mut client) > max_pending && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let now = Instant::now();
                {
                    let mut map = submitted.lock().unwrap_or_else(|p| p.into_inner());
                    for hash in &hashes {
                        map.insert(*hash, now);
                    }
                }
                match client.post(&body) {
                    Ok(Value::Array(responses)) => {
                        let errors: Vec<&Value> =
                            responses.iter().filter_map(|r| r.get("error")).collect();
                        if let Some(first) = errors.first()
                            && rejected.load(Ordering::Relaxed) == 0
                        {
                            eprintln!("first admission error: {first}");
                        }
                        let bad = errors.len();
                        rejected.fetch_add(bad as u64, Ordering::Relaxed);
                    }
                    other => {
                        if rejected.load(Ordering::Relaxed) == 0 {
                            eprintln!("batch failed: {other:?}");
                        }
                        rejected.fetch_add(hashes.len() as u64, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    if let (Some(change), Some(watch)) = (args.reshard, watch) {
        let result = measure_reshard(&bin, &network, change, &args, &watch, start);
        stop.store(true, Ordering::Relaxed);
        for l in loaders {
            let _ = l.join();
        }
        watch.stop();
        let admitted = submitted.lock().map_or(0, |m| m.len()) as u64;
        let rejected = rejected.load(Ordering::Relaxed);
        println!(
            "load: {} transfers offered, {rejected} rejected at admission",
            admitted
        );
        return result;
    }

    // Watch node 0 of every shard: latency = first sight in a finalized block minus
    // submission (includes up to one 50 ms poll). A cross-shard transfer counts when its
    // sender's shard finalizes it (its debit); crediting follows within a few blocks.
    let mut latencies = Vec::new();
    let mut committed_in_window = 0u64;
    let watched: Vec<SocketAddr> = network.rpcs.iter().map(|c| c[0]).collect();
    let mut watchers: Vec<Client> = watched.iter().map(|r| Client::new(*r)).collect();
    let mut next: Vec<u64> = watchers
        .iter_mut()
        .map(|c| finalized_height(c) + 1)
        .collect();
    let watch_until = deadline + Duration::from_secs(10);
    while Instant::now() < watch_until {
        for (w, client) in watchers.iter_mut().enumerate() {
            let tip = finalized_height(client);
            while next[w] <= tip {
                let block = client.call(methods::GET_BLOCK, json!({"height": next[w]}))?;
                let seen = Instant::now();
                let map = submitted.lock().unwrap_or_else(|p| p.into_inner());
                for hash in block["transactions"].as_array().into_iter().flatten() {
                    let bytes = trellis_node_types::from_hex(hash.as_str().unwrap_or_default())
                        .unwrap_or_default();
                    let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) else {
                        continue;
                    };
                    if let Some(at) = map.get(&key) {
                        latencies.push(seen.duration_since(*at).as_secs_f64());
                        if seen <= deadline {
                            committed_in_window += 1;
                        }
                    }
                }
                next[w] += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (nodes_cpu, bench_cpu) = (
        network.cpu_seconds() - nodes_cpu_start,
        cpu_seconds("self") - bench_cpu_start,
    );
    let written = network.written_bytes().saturating_sub(written_start);
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        let _ = l.join();
    }
    let window = args.seconds as f64;
    latencies.sort_by(f64::total_cmp);
    let tps = committed_in_window as f64 / window;
    println!("finalized in window: {committed_in_window} txs over {window:.0} s = {tps:.0} tx/s");
    println!(
        "finality latency (admission → seen finalized): p50 {:.0} ms, p99 {:.0} ms ({} samples)",
        percentile(&latencies, 0.5) * 1000.0,
        percentile(&latencies, 0.99) * 1000.0,
        latencies.len()
    );
    println!(
        "rejected at admission: {}",
        rejected.load(Ordering::Relaxed)
    );
    // CPU per finalized transaction hardly depends on what else runs on the machine, so
    // it compares builds fairly on a shared machine; cores / cost is the rate this
    // machine could sustain if the validators had it to themselves.
    let finalized = latencies.len().max(1) as f64;
    let per_tx = nodes_cpu / finalized;
    println!(
        "CPU while loading and draining ({:.0} s): validators {nodes_cpu:.1} s = {:.0} µs per \
         finalized tx (all {} validators together; {cores} cores / that = {:.0} tx/s), \
         load generator {bench_cpu:.1} s",
        watch_until.duration_since(start).as_secs_f64(),
        per_tx * 1e6,
        network.procs.len(),
        cores as f64 / per_tx
    );
    // Every validator stores every finalized block: bytes written per finalized transfer
    // and validator is what a block's commit costs the disk (docs/node-performance.md).
    let procs = network.procs.len().max(1) as f64;
    println!(
        "disk writes while loading and draining: validators {:.0} MB = {:.0} bytes per \
         finalized tx per validator",
        written as f64 / 1e6,
        written as f64 / finalized / procs
    );
    // Every validator checks every signature once (at admission or in a proposed block),
    // so with all validators on this machine the verification ceiling is the machine's
    // batch rate divided by the number of validators.
    let machine = batch * cores.max(1) as f64;
    let ceiling = machine / args.validators.max(1) as f64;
    println!(
        "throughput / machine batch-verify rate ({cores} cores × {batch:.0}/s): {:.3}; \
         / verification ceiling for {} validators here ({ceiling:.0} tx/s): {:.3}",
        tps / machine,
        args.validators,
        tps / ceiling
    );
    Ok(())
}
