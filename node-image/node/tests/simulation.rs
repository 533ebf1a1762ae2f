//! Deterministic simulation of a committee: the real chain actor and simplex engine on
//! commonware's deterministic runtime and simulated network, under crashes, partitions
//! and a silent validator, across several seeds.
//!
//! Every run asserts safety (all nodes hold the same block and state root at every
//! finalized height), liveness (progress after faults heal) and conservation of supply.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use commonware_p2p::simulated::{Config as NetConfig, Link, Network, Oracle};
use commonware_runtime::deterministic::{self, Context};
use commonware_runtime::{Clock, Handle, Runner, Supervisor};
use commonware_utils::{NZUsize, probability};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trellis_node::chain::{MAX_MESSAGE_SIZE, NodeState, ShardPlace, lock};
use trellis_node::engine::{Timing, ValidatorConfig, start_validator};
use trellis_node::metrics::ChainMetrics;
use trellis_node_state::MemKv;
use trellis_node_types::{PrivateKey, PublicKey, Signer, TxKind, UnsignedTx, test_key};

#[path = "support/sim_channels.rs"]
mod sim_channels;

const CHAIN: &str = "sim";
const ACCOUNTS: u64 = 8;
const BALANCE: u64 = 1_000_000;

struct Node {
    key: PrivateKey,
    /// Survives crashes: models the node's disk.
    kv: MemKv,
    state: Option<Arc<Mutex<NodeState<MemKv>>>>,
    handles: Option<(Handle<()>, Handle<()>)>,
}

struct Sim {
    context: Context,
    oracle: Oracle<PublicKey, Context>,
    validators: Vec<PublicKey>,
    nodes: Vec<Node>,
    accounts: Vec<PrivateKey>,
    /// A sharded network's committee (shard blocks with headers), or unsharded.
    place: Option<ShardPlace>,
    /// A sharded network's genesis beacon state.
    beacon: Option<trellis_node_beacon::BeaconState>,
}

fn balances(accounts: &[PrivateKey]) -> Vec<(PublicKey, u64)> {
    accounts.iter().map(|k| (k.public_key(), BALANCE)).collect()
}

fn link() -> Link {
    Link {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(5),
        success_rate: probability!(1.0),
    }
}

impl Sim {
    async fn new(context: Context, n: u64) -> Self {
        let keys: Vec<PrivateKey> = (0..n).map(|i| test_key(1_000 + i)).collect();
        let mut validators: Vec<PublicKey> = keys.iter().map(|k| k.public_key()).collect();
        validators.sort();
        let (network, oracle) = Network::new_with_peers(
            context.child("network"),
            NetConfig {
                max_size: MAX_MESSAGE_SIZE,
                max_peers_per_set: NZUsize!(n as usize),
                disconnect_on_block: true,
                tracked_peer_sets: NZUsize!(1),
            },
            validators.clone(),
        )
        .await;
        network.start();
        let accounts = (0..ACCOUNTS).map(test_key).collect();
        let nodes = keys
            .into_iter()
            .map(|key| Node {
                key,
                kv: MemKv::default(),
                state: None,
                handles: None,
            })
            .collect();
        let sim = Self {
            context,
            oracle,
            validators,
            nodes,
            accounts,
            place: None,
            beacon: None,
        };
        sim.link_all(&[]).await;
        sim
    }

    fn pk(&self, i: usize) -> PublicKey {
        self.nodes[i].key.public_key()
    }

    /// Links every pair of nodes except pairs split by `cut` (a node set on one side).
    async fn link_all(&self, cut: &[usize]) {
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                if a == b {
                    continue;
                }
                let _ = self.oracle.remove_link(self.pk(a), self.pk(b)).await;
                if cut.contains(&a) != cut.contains(&b) {
                    continue;
                }
                self.oracle
                    .add_link(self.pk(a), self.pk(b), link())
                    .await
                    .unwrap();
            }
        }
    }

    async fn start(&mut self, i: usize) {
        let node = &self.nodes[i];
        let state = Arc::new(Mutex::new(
            NodeState::open_in(
                node.kv.clone(),
                CHAIN,
                &balances(&self.accounts),
                10_000,
                self.place.clone(),
            )
            .and_then(|s| match self.beacon.clone() {
                Some(beacon) => s.with_beacon(beacon),
                None => Ok(s),
            })
            .unwrap(),
        ));
        let control = self.oracle.control(node.key.public_key());
        let channels = sim_channels::register(&control).await;
        let handles = start_validator(
            self.context.child("validator").with_attribute("index", i),
            node.key.clone(),
            &self.validators,
            ValidatorConfig {
                chain_id: CHAIN.into(),
                block_txs: 1_000,
                timing: Timing::default(),
                partition: format!("consensus-{i}"),
            },
            state.clone(),
            ChainMetrics::new(CHAIN, 0),
            control,
            channels,
        )
        .unwrap();
        self.nodes[i].state = Some(state);
        self.nodes[i].handles = Some(handles);
    }

    /// Kills a node at an arbitrary point: its tasks stop, its memory (mempool,
    /// unfinalized blocks) is lost, its store survives.
    fn crash(&mut self, i: usize) {
        if let Some((chain, engine)) = self.nodes[i].handles.take() {
            chain.abort();
            engine.abort();
        }
        self.nodes[i].state = None;
    }

    fn height(&self, i: usize) -> u64 {
        self.nodes[i]
            .state
            .as_ref()
            .map_or(0, |s| lock(s).finalized_height())
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].state.is_some())
            .collect()
    }

    /// Submits at most one transfer per account to the live nodes' mempools (as RPC
    /// would), spreading accounts over nodes.
    fn load(&self, round: u64) {
        let live = self.live();
        if live.is_empty() {
            return;
        }
        for (a, key) in self.accounts.iter().enumerate() {
            let node = live[(a + round as usize) % live.len()];
            let Some(state) = &self.nodes[node].state else {
                continue;
            };
            let mut s = lock(state);
            if s.mempool.pending_for(&key.public_key()) > 0 {
                continue;
            }
            let Ok(account) = s.ledger.account(&key.public_key()) else {
                continue;
            };
            let to = self.accounts[(a + 1 + round as usize) % self.accounts.len()].public_key();
            let kind = if round.is_multiple_of(5) {
                TxKind::Anchor {
                    key: format!("k{round}").into_bytes(),
                    hash: [round as u8; 32],
                }
            } else {
                TxKind::Transfer {
                    to,
                    amount: 1 + (round * 7 + a as u64) % 500,
                }
            };
            let tx = UnsignedTx {
                chain_id: CHAIN.into(),
                from: key.public_key(),
                nonce: account.nonce,
                fee: 1,
                kind,
            }
            .sign(key);
            // A full pool or a nonce race with an in-flight block is fine under load.
            let _ = s.submit(tx);
        }
    }

    /// Drives load until every node in `nodes` reaches `height`; panics after `limit`.
    async fn run_until(&mut self, nodes: &[usize], height: u64, limit: Duration) {
        let start = self.context.current();
        let mut round = 0;
        loop {
            if nodes.iter().all(|i| self.height(*i) >= height) {
                return;
            }
            let waited = self
                .context
                .current()
                .duration_since(start)
                .unwrap_or_default();
            assert!(
                waited < limit,
                "nodes {nodes:?} did not reach height {height} within {limit:?}: heights {:?}",
                (0..self.nodes.len())
                    .map(|i| self.height(i))
                    .collect::<Vec<_>>()
            );
            round += 1;
            self.load(round);
            self.context.sleep(Duration::from_millis(200)).await;
        }
    }

    /// Drives load for `duration` of simulated time.
    async fn run_for(&mut self, duration: Duration) {
        let start = self.context.current();
        let mut round = 1_000;
        while self
            .context
            .current()
            .duration_since(start)
            .unwrap_or_default()
            < duration
        {
            round += 1;
            self.load(round);
            self.context.sleep(Duration::from_millis(200)).await;
        }
    }

    /// Safety and conservation across all live nodes.
    fn check_invariants(&self) -> u64 {
        let live = self.live();
        let common = live.iter().map(|i| self.height(*i)).min().unwrap_or(0);
        let states: Vec<_> = live
            .iter()
            .map(|i| self.nodes[*i].state.as_ref().unwrap())
            .collect();
        for h in 0..=common {
            let first = lock(states[0]).block(h).unwrap().unwrap();
            let root = lock(states[0]).ledger.state_root_at(h).unwrap();
            for s in &states[1..] {
                let s = lock(s);
                assert_eq!(s.block(h).unwrap().unwrap(), first, "fork at height {h}");
                assert_eq!(
                    s.ledger.state_root_at(h).unwrap(),
                    root,
                    "state differs at {h}"
                );
            }
        }
        let mut committed = 0;
        // A beacon committee owns no tables: nothing to sum.
        let owns_tables = self.place.as_ref().is_none_or(|p| !p.tables.is_empty());
        for s in states.iter().filter(|_| owns_tables) {
            let s = lock(s);
            let mut total = s.ledger.fee_pool();
            for key in &self.accounts {
                let account = s.ledger.account(&key.public_key()).unwrap();
                total += account.balance;
                committed += account.nonce;
            }
            assert_eq!(total, BALANCE * ACCOUNTS, "supply not conserved");
            assert_eq!(s.ledger.supply(), BALANCE * ACCOUNTS);
        }
        eprintln!(
            "heights {:?}, common prefix {common} checked, nonces summed over live nodes {committed}",
            (0..self.nodes.len())
                .map(|i| self.height(i))
                .collect::<Vec<_>>()
        );
        committed
    }
}

fn executor(seed: u64) -> deterministic::Runner {
    deterministic::Runner::new(
        deterministic::Config::new()
            .with_seed(seed)
            .with_timeout(Some(Duration::from_secs(900))),
    )
}

/// Crash and restart one validator, then split the committee in halves and heal.
fn crash_restart_partition(seed: u64) {
    executor(seed).start(|context| async move {
        let mut sim = Sim::new(context, 4).await;
        for i in 0..4 {
            sim.start(i).await;
        }
        let all = [0, 1, 2, 3];
        sim.run_until(&all, 5, Duration::from_secs(60)).await;
        sim.check_invariants();

        // One validator dies; the other three are a quorum and keep finalizing.
        sim.crash(3);
        let before = sim.height(0);
        sim.run_until(&[0, 1, 2], before + 5, Duration::from_secs(60))
            .await;

        // It restarts from its store and catches up with the others.
        sim.start(3).await;
        let target = sim.height(0) + 3;
        sim.run_until(&all, target, Duration::from_secs(120)).await;
        sim.check_invariants();

        // Halves cannot finalize anything, and nothing conflicting appears.
        sim.link_all(&[0, 1]).await;
        sim.run_for(Duration::from_secs(10)).await;
        let stalled = sim.height(0).max(sim.height(2));
        sim.run_for(Duration::from_secs(10)).await;
        assert!(
            sim.height(0).max(sim.height(2)) <= stalled + 1,
            "progress without a quorum"
        );
        sim.check_invariants();

        // Heal: progress resumes everywhere.
        sim.link_all(&[]).await;
        let target = (0..4).map(|i| sim.height(i)).max().unwrap_or(0) + 5;
        sim.run_until(&all, target, Duration::from_secs(180)).await;
        let committed = sim.check_invariants();
        assert!(committed > 10, "only {committed} transactions committed");
    });
}

/// One validator never speaks; the other three carry the chain, and a crash of all
/// nodes at once loses nothing finalized.
fn silent_validator_and_full_restart(seed: u64) {
    executor(seed).start(|context| async move {
        let mut sim = Sim::new(context, 4).await;
        for i in 0..3 {
            sim.start(i).await;
        }
        let live = [0, 1, 2];
        sim.run_until(&live, 8, Duration::from_secs(120)).await;
        let committed = sim.check_invariants();
        assert!(committed > 0);

        let heights: Vec<u64> = live.iter().map(|i| sim.height(*i)).collect();
        let blocks: Vec<_> = live
            .iter()
            .map(|i| {
                let s = lock(sim.nodes[*i].state.as_ref().unwrap());
                s.block(s.finalized_height()).unwrap().unwrap()
            })
            .collect();
        for i in live {
            sim.crash(i);
        }
        sim.context.sleep(Duration::from_secs(1)).await;
        for i in live {
            sim.start(i).await;
            // Nothing finalized is lost or changed by the crash.
            let s = lock(sim.nodes[i].state.as_ref().unwrap());
            assert_eq!(s.finalized_height(), heights[i]);
            assert_eq!(s.block(heights[i]).unwrap().unwrap(), blocks[i]);
        }
        let target = heights.iter().max().unwrap() + 4;
        sim.run_until(&live, target, Duration::from_secs(180)).await;
        sim.check_invariants();
    });
}

#[test]
fn crash_restart_and_partition_across_seeds() {
    for seed in [1, 2, 3] {
        crash_restart_partition(seed);
    }
}

#[test]
fn silent_validator_and_full_restart_across_seeds() {
    for seed in [11, 12] {
        silent_validator_and_full_restart(seed);
    }
}

#[test]
fn runs_are_deterministic() {
    fn trace(seed: u64) -> Vec<(u64, String)> {
        executor(seed).start(|context| async move {
            let mut sim = Sim::new(context, 4).await;
            for i in 0..4 {
                sim.start(i).await;
            }
            sim.run_until(&[0, 1, 2, 3], 4, Duration::from_secs(60))
                .await;
            let s = lock(sim.nodes[0].state.as_ref().unwrap());
            (1..=4)
                .map(|h| (h, format!("{:?}", s.block(h).unwrap().unwrap().digest())))
                .collect()
        })
    }
    assert_eq!(trace(5), trace(5));
}

/// A shard committee of a sharded network: blocks carry shard headers whose table roots
/// every validator checked against its own finalized state before voting, and each
/// stored certificate proves its header alone (no transactions), in the shard's own
/// consensus namespace only.
#[test]
fn shard_blocks_carry_headers_proven_by_certificates() {
    use trellis_node::chain::{roots_digest, verify_finalization};
    use trellis_node::engine::consensus_namespace;
    use trellis_node_types::Committee;
    executor(21).start(|context| async move {
        let mut sim = Sim::new(context, 4).await;
        sim.place = Some(ShardPlace {
            committee: Committee::Shard(0),
            tables: (0..=255).collect(),
            beacon_height: 0,
        });
        for i in 0..4 {
            sim.start(i).await;
        }
        sim.run_until(&[0, 1, 2, 3], 6, Duration::from_secs(120))
            .await;
        // A crash and restart in the middle: the recorded roots survive it.
        sim.crash(2);
        let before = sim.height(0);
        sim.run_until(&[0, 1, 3], before + 3, Duration::from_secs(120))
            .await;
        sim.start(2).await;
        let target = sim.height(0) + 3;
        sim.run_until(&[0, 1, 2, 3], target, Duration::from_secs(180))
            .await;
        let committed = sim.check_invariants();
        assert!(committed > 0);

        let namespace = consensus_namespace(CHAIN, Some(Committee::Shard(0)));
        let s = lock(sim.nodes[0].state.as_ref().unwrap());
        let mut state_height = 0;
        let mut certified = 0;
        for h in 1..=s.finalized_height() {
            let block = s.block(h).unwrap().unwrap();
            let header = block.header().expect("sharded block without a header");
            assert_eq!(header.digest(), block.digest());
            assert_eq!(header.shard.committee, Committee::Shard(0));
            assert!(header.shard.state_height < h);
            assert!(
                header.shard.state_height >= state_height,
                "state height went back"
            );
            state_height = header.shard.state_height;
            assert_eq!(header.shard.roots.len(), 256);
            assert_eq!(
                s.roots_digest_at(state_height).unwrap(),
                Some(roots_digest(&header.shard.roots)),
                "roots of height {state_height} in block {h}"
            );
            if let Some(certificate) = s.finalization(h).unwrap() {
                certified += 1;
                assert!(
                    verify_finalization(
                        &namespace,
                        &sim.validators,
                        &certificate,
                        &header.digest()
                    )
                    .is_some()
                );
                for other in [
                    consensus_namespace(CHAIN, None),
                    consensus_namespace(CHAIN, Some(Committee::Beacon)),
                    consensus_namespace(CHAIN, Some(Committee::Shard(1))),
                ] {
                    assert!(
                        verify_finalization(
                            &other,
                            &sim.validators,
                            &certificate,
                            &header.digest()
                        )
                        .is_none(),
                        "a certificate verified in another committee's namespace"
                    );
                }
            }
        }
        assert!(state_height > 0, "headers never moved past genesis state");
        assert!(certified > 0, "no block was certified directly");
    });
}

/// A beacon committee orders system transactions: the admin's `SetShardCount` is
/// gossiped, included, executed by every beacon validator (same beacon state everywhere,
/// also after a crash and restart), and applies at the next beacon epoch boundary; a
/// forged one is refused at submission with a clear reason.
#[test]
fn beacon_orders_system_transactions() {
    use trellis_node_api::shard::{GenesisValidator, ShardingGenesis, ShardingMode};
    use trellis_node_beacon::{BeaconGenesis, BeaconState};
    use trellis_node_types::{Committee, SystemAction, SystemPayload, to_hex};
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,trellis_node=info")
        .with_test_writer()
        .try_init();
    executor(31).start(|context| async move {
        let mut sim = Sim::new(context, 4).await;
        let admin = test_key(900);
        let seat = |key: &PublicKey, shard| GenesisValidator {
            node_key: to_hex(key.as_ref()),
            shard,
            p2p_address: "127.0.50.1:9000".into(),
            rpc_address: "127.0.50.1:8545".into(),
            member: None,
        };
        let sharding = ShardingGenesis {
            mode: ShardingMode::Public,
            admin_key: to_hex(admin.public_key().as_ref()),
            max_shards: 4,
            shard_count: 1,
            beacon: sim.validators.iter().map(|k| seat(k, 0)).collect(),
            validators: (0..4u16)
                .map(|i| seat(&test_key(800 + u64::from(i)).public_key(), i % 2))
                .collect(),
        };
        let genesis = BeaconGenesis::from_contract(CHAIN, 5, &[], &sharding).unwrap();
        sim.beacon = Some(BeaconState::genesis(genesis).unwrap());
        sim.place = Some(ShardPlace {
            committee: Committee::Beacon,
            tables: Vec::new(),
            beacon_height: 0,
        });
        for i in 0..4 {
            sim.start(i).await;
        }
        let all = [0, 1, 2, 3];
        sim.run_for(Duration::from_secs(3)).await;

        let reshard = |signer: &PrivateKey, count| {
            SystemPayload {
                chain_id: CHAIN.into(),
                sequence: 0,
                action: SystemAction::SetShardCount {
                    count,
                    load: vec![],
                },
            }
            .sign(signer)
        };
        {
            let mut s = lock(sim.nodes[1].state.as_ref().unwrap());
            let codes = [
                trellis_node_api::error_codes::SYSTEM_REFUSED,
                trellis_node_api::error_codes::RESHARDING,
            ];
            let forged = s
                .submit_system(reshard(&test_key(901), 2), CHAIN)
                .unwrap_err();
            assert_eq!(forged.code, codes[0], "{forged}");
            eprintln!("forged SetShardCount refused: {forged}");
            let out_of_range = s.submit_system(reshard(&admin, 9), CHAIN).unwrap_err();
            assert_eq!(out_of_range.code, codes[0], "{out_of_range}");
            eprintln!("out-of-range SetShardCount refused: {out_of_range}");
            s.submit_system(reshard(&admin, 2), CHAIN).unwrap();
        }
        let hash = reshard(&admin, 2).hash();
        // A crash of another validator meanwhile: it replays the beacon from its store.
        // Included within a few blocks, applied at the next boundary (epochs of 5).
        let submitted = sim.height(1);
        sim.crash(3);
        sim.run_until(&[0, 1, 2], submitted + 4, Duration::from_secs(120))
            .await;
        sim.start(3).await;
        sim.run_until(&all, submitted + 14, Duration::from_secs(180))
            .await;
        sim.check_invariants();
        let states: Vec<_> = all
            .iter()
            .map(|i| {
                lock(sim.nodes[*i].state.as_ref().unwrap())
                    .beacon
                    .clone()
                    .unwrap()
            })
            .collect();
        for (i, b) in states.iter().enumerate() {
            let s = lock(sim.nodes[i].state.as_ref().unwrap());
            assert_eq!(
                b.shard_count(),
                2,
                "SetShardCount did not apply on {i}: receipt {:?}, pending {:?}, epoch {}, pool {}",
                s.system_receipt(&hash).unwrap(),
                b.pending_shard_count(),
                b.epoch(),
                s.system_pool.len()
            );
        }
        // Validators at the same finalized height hold the same beacon state.
        for i in all {
            for j in (i + 1)..4 {
                let (a, b) = (
                    lock(sim.nodes[i].state.as_ref().unwrap()),
                    lock(sim.nodes[j].state.as_ref().unwrap()),
                );
                if a.finalized_height() == b.finalized_height() {
                    assert_eq!(
                        a.beacon.as_ref().unwrap().to_bytes(),
                        b.beacon.as_ref().unwrap().to_bytes()
                    );
                }
            }
        }
    });
}
