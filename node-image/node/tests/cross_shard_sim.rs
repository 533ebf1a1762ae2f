//! Deterministic simulation of a sharded network with cross-shard transfers: a beacon
//! committee and 2 or 3 shard committees (4 validators each), every committee its own
//! simulated p2p network, the committees talking only through the in-process relay
//! (`LocalRelay`, the same code paths as the HTTP relay). The real chain actor, simplex,
//! the beacon follower and the credit gatherer run on commonware's deterministic runtime.
//!
//! Random transfers, most of them to another shard; a validator of a receiving shard
//! crashes and restarts meanwhile. Asserted:
//! - at every finalized height of every shard (on every live node), the shard's
//!   `Σ TableStats::net` over its tables equals its genesis share, and the shares add up
//!   to the genesis supply (`Σ net = supply` over all 256 tables);
//! - never more credited than sent (a receipt credited twice would show);
//! - after the load stops: every accepted transaction is finalized, every receipt is
//!   credited exactly once (each pair's inbox counter equals its outbox counter, and
//!   `Σ sent = Σ credited`);
//! - the validators of a committee agree on every block, and the crashed one caught up.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use commonware_p2p::simulated::{Config as NetConfig, Link, Network, Oracle};
use commonware_runtime::deterministic::{self, Context};
use commonware_runtime::{Clock, Handle, Runner, Spawner, Supervisor};
use commonware_utils::{NZUsize, probability};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trellis_node::chain::{MAX_MESSAGE_SIZE, NodeState, ShardPlace, lock};
use trellis_node::cross_shard::Pace;
use trellis_node::engine::{Timing, ValidatorConfig, start_validator};
use trellis_node::metrics::ChainMetrics;
use trellis_node::relay::{LocalRelay, RelayBeacon, RelayServer};
use trellis_node_api::shard::{GenesisValidator, ShardingGenesis, ShardingMode};
use trellis_node_beacon::{BeaconGenesis, BeaconState};
use trellis_node_state::MemKv;
use trellis_node_types::{
    Committee, Digest, PrivateKey, PublicKey, Signer, TxKind, UnsignedTx, table_of, test_key,
    to_hex,
};

#[path = "support/relay_slot.rs"]
mod relay_slot;
#[path = "support/sim_channels.rs"]
mod sim_channels;
use relay_slot::Slot;

const CHAIN: &str = "xsim";
const BALANCE: u64 = 1_000_000;
/// Sending accounts per shard.
const ACCOUNTS_PER_SHARD: usize = 5;
/// Validators per committee; the last one of shard 1 is crashed and restarted.
const VALIDATORS: usize = 4;

struct Node {
    key: PrivateKey,
    /// Survives crashes: models the node's disk.
    kv: MemKv,
    state: Option<Arc<Mutex<NodeState<MemKv>>>>,
    handles: Vec<Handle<()>>,
    slot: Arc<Slot>,
}

struct Group {
    committee: Committee,
    oracle: Oracle<PublicKey, Context>,
    validators: Vec<PublicKey>,
    nodes: Vec<Node>,
    /// Heights whose conservation was checked, per node.
    checked: Vec<u64>,
}

struct Sim {
    context: Context,
    beacon: BeaconState,
    groups: Vec<Group>,
    relay: Arc<LocalRelay>,
    /// Sending accounts by shard.
    accounts: Vec<Vec<PrivateKey>>,
    balances: Vec<(PublicKey, u64)>,
    /// Each shard's genesis share of the supply: Σ net over its tables.
    shares: Vec<i128>,
    /// Accepted transactions: (owning shard, hash).
    accepted: Vec<(usize, Digest)>,
    /// Next nonce to submit per sending account.
    nonces: BTreeMap<PublicKey, u64>,
    rng: u64,
    cross: u64,
    intra: u64,
}

fn link() -> Link {
    Link {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(5),
        success_rate: probability!(1.0),
    }
}

fn seat(key: &PublicKey, shard: u16) -> GenesisValidator {
    GenesisValidator {
        node_key: to_hex(key.as_ref()),
        shard,
        p2p_address: "127.0.52.250:9000".into(),
        rpc_address: "127.0.52.250:8545".into(),
        member: None,
    }
}

impl Sim {
    async fn new(context: Context, shards: u16, seed: u64) -> Self {
        let keys = |group: u64| -> Vec<PrivateKey> {
            (0..VALIDATORS as u64)
                .map(|i| test_key(10_000 + group * 100 + i))
                .collect()
        };
        let beacon_keys = keys(0);
        let shard_keys: Vec<Vec<PrivateKey>> =
            (0..shards).map(|s| keys(1 + u64::from(s))).collect();
        let sharding = ShardingGenesis {
            mode: ShardingMode::Public,
            admin_key: to_hex(test_key(9_999).public_key().as_ref()),
            max_shards: 4,
            shard_count: shards,
            beacon: beacon_keys
                .iter()
                .map(|k| seat(&k.public_key(), 0))
                .collect(),
            validators: shard_keys
                .iter()
                .enumerate()
                .flat_map(|(s, ks)| ks.iter().map(move |k| seat(&k.public_key(), s as u16)))
                .collect(),
        };
        let beacon =
            BeaconState::genesis(BeaconGenesis::from_contract(CHAIN, 100, &[], &sharding).unwrap())
                .unwrap();
        // Sending accounts: ACCOUNTS_PER_SHARD in tables of each shard.
        let mut accounts: Vec<Vec<PrivateKey>> = vec![Vec::new(); usize::from(shards)];
        let mut seed_key = 1_000_000;
        while accounts.iter().any(|a| a.len() < ACCOUNTS_PER_SHARD) {
            let key = test_key(seed_key);
            seed_key += 1;
            let owner = usize::from(beacon.owner(table_of(&key.public_key())));
            if accounts[owner].len() < ACCOUNTS_PER_SHARD {
                accounts[owner].push(key);
            }
        }
        let balances: Vec<(PublicKey, u64)> = accounts
            .iter()
            .flatten()
            .map(|k| (k.public_key(), BALANCE))
            .collect();
        let relay = Arc::new(LocalRelay::new());
        let mut groups = Vec::new();
        let committees = std::iter::once((Committee::Beacon, beacon_keys)).chain(
            shard_keys
                .into_iter()
                .enumerate()
                .map(|(s, k)| (Committee::Shard(s as u16), k)),
        );
        for (committee, keys) in committees {
            let mut validators: Vec<PublicKey> = keys.iter().map(|k| k.public_key()).collect();
            validators.sort();
            let (network, oracle) = Network::new_with_peers(
                context
                    .child("network")
                    .with_attribute("committee", committee.name()),
                NetConfig {
                    max_size: MAX_MESSAGE_SIZE,
                    max_peers_per_set: NZUsize!(VALIDATORS),
                    disconnect_on_block: true,
                    tracked_peer_sets: NZUsize!(1),
                },
                validators.clone(),
            )
            .await;
            network.start();
            for a in &validators {
                for b in &validators {
                    if a != b {
                        oracle.add_link(a.clone(), b.clone(), link()).await.unwrap();
                    }
                }
            }
            let nodes: Vec<Node> = keys
                .into_iter()
                .map(|key| Node {
                    key,
                    kv: MemKv::default(),
                    state: None,
                    handles: Vec::new(),
                    slot: Arc::new(Slot::default()),
                })
                .collect();
            let servers: Vec<Arc<dyn RelayServer>> = nodes
                .iter()
                .map(|n| n.slot.clone() as Arc<dyn RelayServer>)
                .collect();
            match committee {
                Committee::Beacon => relay.set_beacon(servers),
                Committee::Shard(s) => relay.set_shard(s, servers),
            }
            groups.push(Group {
                committee,
                oracle,
                validators,
                checked: vec![0; nodes.len()],
                nodes,
            });
        }
        let mut sim = Self {
            context,
            beacon,
            groups,
            relay,
            accounts,
            balances,
            shares: Vec::new(),
            accepted: Vec::new(),
            nonces: BTreeMap::new(),
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            cross: 0,
            intra: 0,
        };
        for g in 0..sim.groups.len() {
            for i in 0..VALIDATORS {
                sim.start(g, i).await;
            }
        }
        // Genesis shares: Σ net of each shard's tables at height 0.
        sim.shares = (1..sim.groups.len())
            .map(|g| {
                let s = lock(sim.groups[g].nodes[0].state.as_ref().unwrap());
                s.ledger
                    .supply_parts_at(0)
                    .unwrap()
                    .iter()
                    .map(|(_, t)| t.net())
                    .sum()
            })
            .collect();
        let total: i128 = sim.shares.iter().sum();
        assert_eq!(
            total,
            i128::from(BALANCE) * sim.balances.len() as i128,
            "the shards' genesis shares do not add up to the supply"
        );
        sim
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic per seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    async fn start(&mut self, g: usize, i: usize) {
        let group = &self.groups[g];
        let node = &group.nodes[i];
        let place = ShardPlace {
            committee: group.committee,
            tables: match group.committee {
                Committee::Beacon => Vec::new(),
                Committee::Shard(s) => (0..=255u8).filter(|t| self.beacon.owner(*t) == s).collect(),
            },
            beacon_height: 0,
        };
        let mut state =
            NodeState::open_in(node.kv.clone(), CHAIN, &self.balances, 10_000, Some(place))
                .and_then(|s| s.with_beacon(self.beacon.clone()))
                .unwrap();
        trellis_node::follower::restore(&mut state, CHAIN).unwrap();
        let state = Arc::new(Mutex::new(state));
        let control = group.oracle.control(node.key.public_key());
        let channels = sim_channels::register(&control).await;
        let context = self
            .context
            .child("validator")
            .with_attribute("committee", group.committee.name())
            .with_attribute("index", i);
        let (chain, engine) = start_validator(
            context.child("node"),
            node.key.clone(),
            &group.validators,
            ValidatorConfig {
                chain_id: CHAIN.into(),
                block_txs: 1_000,
                timing: Timing::default(),
                partition: format!("consensus-{}-{i}", group.committee.name()),
            },
            state.clone(),
            ChainMetrics::new(CHAIN, 0),
            control,
            channels,
        )
        .unwrap();
        let mut handles = vec![chain, engine];
        if group.committee != Committee::Beacon {
            let (s, relay) = (state.clone(), self.relay.clone());
            handles.push(context.child("follower").spawn(move |context| {
                trellis_node::follower::follow(
                    context,
                    s,
                    CHAIN.into(),
                    RelayBeacon(relay),
                    Duration::from_millis(500),
                )
            }));
            let (s, relay, me) = (state.clone(), self.relay.clone(), node.key.public_key());
            handles.push(context.child("credits").spawn(move |context| {
                trellis_node::cross_shard::run(context, s, CHAIN.into(), relay, Pace::default(), me)
            }));
        }
        node.slot.up(state.clone());
        let node = &mut self.groups[g].nodes[i];
        node.state = Some(state);
        node.handles = handles;
    }

    /// Kills a node at an arbitrary point: its tasks stop, its memory is lost, its store
    /// survives.
    fn crash(&mut self, g: usize, i: usize) {
        let node = &mut self.groups[g].nodes[i];
        for h in node.handles.drain(..) {
            h.abort();
        }
        node.slot.down();
        node.state = None;
    }

    fn state(&self, g: usize, i: usize) -> Option<Arc<Mutex<NodeState<MemKv>>>> {
        self.groups[g].nodes[i].state.clone()
    }

    fn height(&self, g: usize, i: usize) -> u64 {
        self.state(g, i).map_or(0, |s| lock(&s).finalized_height())
    }

    fn heights(&self) -> Vec<Vec<u64>> {
        (0..self.groups.len())
            .map(|g| (0..VALIDATORS).map(|i| self.height(g, i)).collect())
            .collect()
    }

    /// One transfer per idle sending account, to the owning shard's nodes 0..3 (the
    /// crashed validator is never the one asked, so accepted transactions stay known to
    /// a running node), at least half of them to an account in another shard.
    fn load(&mut self, round: u64) {
        let shards = self.accounts.len();
        for s in 0..shards {
            for a in 0..ACCOUNTS_PER_SHARD {
                let key = self.accounts[s][a].clone();
                let node = (a + round as usize) % (VALIDATORS - 1);
                let Some(state) = self.state(1 + s, node) else {
                    continue;
                };
                let nonce = lock(&state)
                    .ledger
                    .account(&key.public_key())
                    .unwrap()
                    .nonce;
                if self
                    .nonces
                    .get(&key.public_key())
                    .is_some_and(|next| *next > nonce)
                {
                    continue; // the previous one is not finalized yet (as this node knows)
                }
                let r = self.next();
                let to_shard = if r % 10 < 6 {
                    (s + 1 + (r / 10) as usize % (shards - 1)) % shards
                } else {
                    s
                };
                let candidates = &self.accounts[to_shard];
                let to = candidates[(r / 100) as usize % candidates.len()].public_key();
                if to == key.public_key() {
                    continue;
                }
                let tx = UnsignedTx {
                    chain_id: CHAIN.into(),
                    from: key.public_key(),
                    nonce,
                    fee: 1,
                    kind: TxKind::Transfer {
                        to,
                        amount: 1 + (r >> 20) % 500,
                    },
                }
                .sign(&key);
                let hash = tx.hash();
                if lock(&state).submit(tx).is_ok() {
                    self.accepted.push((s, hash));
                    self.nonces.insert(key.public_key(), nonce + 1);
                    if to_shard == s {
                        self.intra += 1;
                    } else {
                        self.cross += 1;
                    }
                }
            }
        }
    }

    /// Conservation at every finalized height not checked yet, on every live shard
    /// node; never more credited than sent, network-wide.
    fn check(&mut self) {
        for g in 1..self.groups.len() {
            for i in 0..VALIDATORS {
                let Some(state) = self.state(g, i) else {
                    continue;
                };
                let s = lock(&state);
                let top = s.finalized_height();
                for h in self.groups[g].checked[i] + 1..=top {
                    let net: i128 = s
                        .ledger
                        .supply_parts_at(h)
                        .unwrap()
                        .iter()
                        .map(|(_, t)| t.net())
                        .sum();
                    assert_eq!(
                        net,
                        self.shares[g - 1],
                        "shard {} node {i}: Σ net at height {h} is not its genesis share",
                        g - 1
                    );
                }
                self.groups[g].checked[i] = top;
            }
        }
        // Credited is read before sent: both only grow, so credited ≤ sent must hold.
        let credited = self.total(|t| t.credited);
        let sent = self.total(|t| t.sent);
        assert!(credited <= sent, "credited {credited} > sent {sent}");
    }

    /// Σ of a table stat over every shard's tables (node 0 of each shard).
    fn total(&self, field: impl Fn(&trellis_node_state::TableStats) -> u64) -> u64 {
        (1..self.groups.len())
            .map(|g| {
                let state = self.state(g, 0).unwrap();
                let s = lock(&state);
                s.ledger
                    .supply_parts()
                    .iter()
                    .map(|(_, t)| field(t))
                    .sum::<u64>()
            })
            .sum()
    }

    /// Drives load (when `load`) and checks for `duration` of simulated time.
    async fn run_for(&mut self, duration: Duration, load: bool, round: &mut u64) {
        let start = self.context.current();
        while self
            .context
            .current()
            .duration_since(start)
            .unwrap_or_default()
            < duration
        {
            *round += 1;
            if load {
                self.load(*round);
            }
            self.check();
            self.context.sleep(Duration::from_millis(200)).await;
        }
    }

    /// True when every accepted transaction has a receipt on its shard and every
    /// receipt sent was credited (each pair's inbox counter caught up).
    fn settled(&self) -> bool {
        for (s, hash) in &self.accepted {
            let state = self.state(1 + s, 0).unwrap();
            if lock(&state).ledger.receipt(&hash.0).unwrap().is_none() {
                return false;
            }
        }
        self.unsettled_pairs().is_empty()
    }

    /// Pairs (source, dest) whose receipts are not all credited: (source, dest, sent,
    /// credited).
    fn unsettled_pairs(&self) -> Vec<(u8, u8, u64, u64)> {
        let owner = |t: u8| 1 + usize::from(self.beacon.owner(t));
        let mut out = Vec::new();
        for source in 0..=255u8 {
            let src_state = self.state(owner(source), 0).unwrap();
            let src = lock(&src_state);
            for dest in 0..=255u8 {
                if owner(dest) == owner(source) {
                    continue;
                }
                let sent = src.ledger.outbox_next(source, dest).unwrap();
                if sent == 0 {
                    continue;
                }
                let credited = lock(&self.state(owner(dest), 0).unwrap())
                    .ledger
                    .inbox_next(dest, source)
                    .unwrap();
                if credited != sent {
                    out.push((source, dest, sent, credited));
                }
            }
        }
        out
    }

    /// The validators of each committee agree on every block both hold.
    fn check_agreement(&self) {
        for (g, group) in self.groups.iter().enumerate() {
            let states: Vec<_> = (0..VALIDATORS).filter_map(|i| self.state(g, i)).collect();
            let common = states
                .iter()
                .map(|s| lock(s).finalized_height())
                .min()
                .unwrap_or(0);
            for h in 0..=common {
                let first = lock(&states[0]).block(h).unwrap().unwrap();
                for s in &states[1..] {
                    assert_eq!(
                        lock(s).block(h).unwrap().unwrap(),
                        first,
                        "{} forked at height {h}",
                        group.committee.name()
                    );
                }
            }
        }
    }
}

fn executor(seed: u64) -> deterministic::Runner {
    deterministic::Runner::new(
        deterministic::Config::new()
            .with_seed(seed)
            .with_timeout(Some(Duration::from_secs(1_800))),
    )
}

/// The scenario: load with a crash and restart of a receiving shard's validator, then
/// drain and check that everything settled exactly once.
fn cross_shard_transfers(shards: u16, seed: u64) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    executor(seed).start(|context| async move {
        let mut sim = Sim::new(context, shards, seed).await;
        let mut round = 0;
        sim.run_for(Duration::from_secs(4), true, &mut round).await;
        // Shard 1 receives from every other shard: crash one of its validators under load.
        let (g, victim) = (2, VALIDATORS - 1);
        sim.crash(g, victim);
        sim.run_for(Duration::from_secs(4), true, &mut round).await;
        sim.start(g, victim).await;
        sim.run_for(Duration::from_secs(4), true, &mut round).await;
        // Drain: no new load; everything accepted finalizes and every receipt is credited.
        let start = sim.context.current();
        while !sim.settled() {
            let waited = sim
                .context
                .current()
                .duration_since(start)
                .unwrap_or_default();
            assert!(
                waited < Duration::from_secs(120),
                "not settled within {waited:?}: heights {:?}, uncredited pairs {:?}",
                sim.heights(),
                sim.unsettled_pairs()
            );
            sim.run_for(Duration::from_secs(1), false, &mut round).await;
        }
        // The restarted validator catches up with its committee.
        let target = sim.height(g, 0);
        let start = sim.context.current();
        while sim.height(g, victim) < target {
            let waited = sim
                .context
                .current()
                .duration_since(start)
                .unwrap_or_default();
            assert!(
                waited < Duration::from_secs(120),
                "the restarted validator did not catch up: {:?}",
                sim.heights()
            );
            sim.run_for(Duration::from_secs(1), false, &mut round).await;
        }
        sim.check();
        sim.check_agreement();
        let (sent, credited) = (sim.total(|t| t.sent), sim.total(|t| t.credited));
        assert_eq!(sent, credited, "Σ sent ≠ Σ credited after settling");
        assert!(sent > 0, "no cross-shard value moved");
        assert!(
            sim.cross * 2 >= sim.cross + sim.intra,
            "fewer than half the transfers were cross-shard: {} of {}",
            sim.cross,
            sim.cross + sim.intra
        );
        let credits_in_blocks: usize = (1..sim.groups.len())
            .map(|g| {
                let state = sim.state(g, 0).unwrap();
                let s = lock(&state);
                (1..=s.finalized_height())
                    .map(|h| {
                        s.block(h)
                            .unwrap()
                            .unwrap()
                            .sharding
                            .map_or(0, |x| x.credits.len())
                    })
                    .sum::<usize>()
            })
            .sum();
        eprintln!(
            "seed {seed}, {shards} shards: {} accepted ({} cross-shard), {sent} sent = credited, \
             {credits_in_blocks} credits in blocks, heights {:?}",
            sim.accepted.len(),
            sim.cross,
            sim.heights()
        );
    });
}

#[test]
fn two_shards_across_seeds() {
    for seed in [1, 2] {
        cross_shard_transfers(2, seed);
    }
}

#[test]
fn three_shards() {
    cross_shard_transfers(3, 7);
}
