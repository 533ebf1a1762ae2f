//! Deterministic simulation of live resharding: a beacon committee (4 validators) and
//! four shard slots of 4 validators each (all started up front and registered in the
//! genesis; slots above the shard count wait), real chain actors, simplex engines,
//! followers and table handoffs on commonware's deterministic runtime, one simulated
//! network per committee, the credit gatherer reading other shards through the
//! in-process relay (`LocalRelay`). Under transfer load — two of every three of a
//! sender's transfers to an account in another table, in another shard whenever there are
//! several — the admin reshards 1 → 2 → 4 → 3 → 1; a validator that is importing tables
//! crashes mid-handoff and restarts from its store.
//!
//! Asserted: after every change each table is owned by exactly one shard (the beacon's
//! map), the sum of every table's net supply over all shards' ledgers is the genesis
//! supply, and no pair of tables has more credited than sent; at least half the transfers
//! sent while there were several shards crossed shards; after the load: every
//! transaction a shard accepted is finalized exactly once and every receipt is credited
//! exactly once (each pair's inbox counter equals its outbox counter, wherever the tables
//! went); drained slots say so; a forged snapshot is refused (and another node serves the
//! table).

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use commonware_p2p::simulated::{Config as NetConfig, Link, Network, Oracle};
use commonware_runtime::deterministic::{self, Context};
use commonware_runtime::{Clock, Handle, Runner, Spawner, Supervisor};
use commonware_utils::{NZUsize, probability};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trellis_node::chain::{MAX_MESSAGE_SIZE, NodeState, ShardPlace, lock};
use trellis_node::cross_shard::Pace;
use trellis_node::engine::{Timing, ValidatorConfig, start_node};
use trellis_node::handoff::{GET_EPOCH_END, HandoffSource, Peer};
use trellis_node::metrics::ChainMetrics;
use trellis_node::relay::{CertifiedBlock, LocalRelay, RelayServer, SnapshotRequest};
use trellis_node::rpc_shard::{CertifiedBlockJson, SnapshotResult};
use trellis_node_api::shard::{GenesisValidator, ShardingGenesis, ShardingMode};
use trellis_node_api::{BeaconBlocks, BeaconBlocksQuery};
use trellis_node_beacon::{BeaconGenesis, BeaconState};
use trellis_node_state::{MemKv, TableSnapshot};
use trellis_node_types::{
    Committee, Digest, PrivateKey, PublicKey, Signer, SystemAction, SystemPayload, Tx, TxKind,
    UnsignedTx, table_of, test_key, to_hex,
};

#[path = "support/relay_slot.rs"]
mod relay_slot;
#[path = "support/sim_channels.rs"]
mod sim_channels;
use relay_slot::Slot;

const CHAIN: &str = "resharding-sim";
const SLOTS: u16 = 4;
const PER_COMMITTEE: u64 = 4;
const BALANCE: u64 = 1_000_000;
/// Beacon blocks per epoch.
const EPOCH_LENGTH: u64 = 8;

type State = Arc<Mutex<NodeState<MemKv>>>;

/// Every live node's state by node key: what the in-process relays read from.
#[derive(Clone, Default)]
struct Directory {
    nodes: Arc<Mutex<BTreeMap<PublicKey, State>>>,
    beacon: Arc<Mutex<Vec<PublicKey>>>,
    /// A node that serves tampered snapshot chunks, and how many it served.
    forger: Arc<Mutex<Option<PublicKey>>>,
    forged: Arc<AtomicUsize>,
}

impl Directory {
    fn get(&self, key: &PublicKey) -> Result<State, String> {
        self.nodes
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| "node down".to_string())
    }
}

impl trellis_node::follower::BeaconSource for Directory {
    async fn blocks(&self, from: u64) -> Result<BeaconBlocks, String> {
        let beacon = self.beacon.lock().unwrap().clone();
        for key in beacon {
            if let Ok(state) = self.get(&key) {
                return trellis_node::rpc_beacon::blocks_of(
                    &lock(&state),
                    BeaconBlocksQuery { from, limit: 64 },
                )
                .map_err(|(c, m)| format!("{c}: {m}"));
            }
        }
        Err("no beacon node up".into())
    }
}

impl HandoffSource for Directory {
    async fn epoch_end(
        &self,
        node: &Peer,
        shard: u16,
        epoch: u64,
    ) -> Result<CertifiedBlock, String> {
        let state = self.get(&node.key)?;
        let answer = trellis_node::handoff::dispatch(
            &state,
            GET_EPOCH_END,
            &serde_json::json!({ "epoch": epoch, "shard": shard }),
        )
        .unwrap()
        .map_err(|(c, m)| format!("{c}: {m}"))?;
        serde_json::from_value::<CertifiedBlockJson>(answer)
            .map_err(|e| e.to_string())?
            .decode()
    }

    async fn chunk(&self, node: &Peer, request: SnapshotRequest) -> Result<TableSnapshot, String> {
        let state = self.get(&node.key)?;
        let served = trellis_node::rpc_shard::table_snapshot(&lock(&state).ledger, &request)
            .map_err(|e| e.to_string())?;
        // Through the wire encoding and its bounded decoder, as over HTTP.
        let mut chunk = SnapshotResult {
            chunk: to_hex(&served.to_bytes()),
        }
        .decode()?;
        if self.forger.lock().unwrap().as_ref() == Some(&node.key)
            && let Some((_, value)) = chunk.leaves.first_mut()
        {
            // A Byzantine serving node: one changed byte in the first leaf.
            value[0] ^= 1;
            self.forged.fetch_add(1, Ordering::Relaxed);
        }
        Ok(chunk)
    }

    async fn forward(&self, node: &Peer, tx: &Tx) -> Result<(), String> {
        let state = self.get(&node.key)?;
        let mut s = lock(&state);
        match s.submit(tx.clone()) {
            Ok(_) | Err(trellis_node::mempool::AdmitError::Known) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

struct Node {
    key: PrivateKey,
    committee: Committee,
    kv: MemKv,
    state: Option<State>,
    handles: Vec<Handle<()>>,
    slot: Arc<Slot>,
}

struct Sim {
    context: Context,
    oracles: BTreeMap<String, Oracle<PublicKey, Context>>,
    nodes: Vec<Node>,
    directory: Directory,
    relay: Arc<LocalRelay>,
    genesis: BeaconState,
    admin: PrivateKey,
    /// Pairs of accounts in the same table (transfers stay inside a table's shard).
    pairs: Vec<(PrivateKey, PrivateKey)>,
    /// Hashes of transactions a shard accepted.
    accepted: BTreeSet<Digest>,
    /// Per sender: its transaction in flight and when it was last sent.
    in_flight: BTreeMap<usize, (Tx, std::time::SystemTime)>,
    /// Per sender: the nonce after its last finalized transaction (a lagging node's
    /// ledger may still show an older one).
    next_nonce: BTreeMap<usize, u64>,
    round: u64,
    /// Transfers accepted while the beacon had several shards: to another shard, and
    /// inside one.
    cross: u64,
    intra: u64,
}

fn link() -> Link {
    Link {
        latency: Duration::from_millis(10),
        jitter: Duration::from_millis(3),
        success_rate: probability!(1.0),
    }
}

fn seat(key: &PublicKey, shard: u16, i: usize) -> GenesisValidator {
    GenesisValidator {
        node_key: to_hex(key.as_ref()),
        shard,
        p2p_address: format!("127.0.53.{}:9000", i + 1),
        rpc_address: format!("127.0.53.{}:8545", i + 1),
        member: None,
    }
}

/// Accounts in pairs sharing a table, spread over the table range.
fn account_pairs(count: usize) -> Vec<(PrivateKey, PrivateKey)> {
    let mut by_table: BTreeMap<u8, Vec<PrivateKey>> = BTreeMap::new();
    let mut pairs = Vec::new();
    let mut seed = 10_000;
    let mut used = BTreeSet::new();
    while pairs.len() < count {
        let key = test_key(seed);
        seed += 1;
        let table = table_of(&key.public_key());
        // One pair per table bucket of 256 / count tables, so pairs spread over shards.
        let bucket = usize::from(table) * count / 256;
        if used.contains(&bucket) {
            continue;
        }
        let list = by_table.entry(table).or_default();
        list.push(key);
        if list.len() == 2 {
            let b = list.pop().unwrap();
            let a = list.pop().unwrap();
            pairs.push((a, b));
            used.insert(bucket);
        }
    }
    pairs
}

impl Sim {
    async fn new(context: Context) -> Self {
        let admin = test_key(900);
        let mut nodes = Vec::new();
        let beacon_keys: Vec<PrivateKey> =
            (0..PER_COMMITTEE).map(|i| test_key(1_000 + i)).collect();
        for key in &beacon_keys {
            nodes.push(Node {
                key: key.clone(),
                committee: Committee::Beacon,
                kv: MemKv::default(),
                state: None,
                handles: Vec::new(),
                slot: Arc::default(),
            });
        }
        let mut validators = Vec::new();
        for slot in 0..SLOTS {
            for i in 0..PER_COMMITTEE {
                let key = test_key(2_000 + u64::from(slot) * 100 + i);
                validators.push(seat(&key.public_key(), slot, validators.len() + 8));
                nodes.push(Node {
                    key,
                    committee: Committee::Shard(slot),
                    kv: MemKv::default(),
                    state: None,
                    handles: Vec::new(),
                    slot: Arc::default(),
                });
            }
        }
        let sharding = ShardingGenesis {
            mode: ShardingMode::Public,
            admin_key: to_hex(admin.public_key().as_ref()),
            max_shards: SLOTS,
            shard_count: 1,
            beacon: beacon_keys
                .iter()
                .enumerate()
                .map(|(i, k)| seat(&k.public_key(), 0, i))
                .collect(),
            validators,
        };
        let genesis = BeaconState::genesis(
            BeaconGenesis::from_contract(CHAIN, EPOCH_LENGTH, &[], &sharding).unwrap(),
        )
        .unwrap();
        // One simulated network per committee: committees are separate p2p networks.
        let mut oracles = BTreeMap::new();
        let committees: BTreeSet<String> = nodes.iter().map(|n| n.committee.name()).collect();
        for name in committees {
            let keys: Vec<PublicKey> = nodes
                .iter()
                .filter(|n| n.committee.name() == name)
                .map(|n| n.key.public_key())
                .collect();
            let (network, oracle) = Network::new_with_peers(
                context.child("network").with_attribute("committee", &name),
                NetConfig {
                    max_size: MAX_MESSAGE_SIZE,
                    max_peers_per_set: NZUsize!(keys.len()),
                    disconnect_on_block: true,
                    tracked_peer_sets: NZUsize!(1),
                },
                keys.clone(),
            )
            .await;
            network.start();
            for a in &keys {
                for b in &keys {
                    if a != b {
                        oracle.add_link(a.clone(), b.clone(), link()).await.unwrap();
                    }
                }
            }
            oracles.insert(name, oracle);
        }
        // The credit relay asks a slot's nodes (their committee never changes here).
        let relay = Arc::new(LocalRelay::new());
        let servers = |committee: Committee| -> Vec<Arc<dyn RelayServer>> {
            nodes
                .iter()
                .filter(|n| n.committee == committee)
                .map(|n| n.slot.clone() as Arc<dyn RelayServer>)
                .collect()
        };
        relay.set_beacon(servers(Committee::Beacon));
        for slot in 0..SLOTS {
            relay.set_shard(slot, servers(Committee::Shard(slot)));
        }
        let directory = Directory::default();
        *directory.beacon.lock().unwrap() = beacon_keys.iter().map(|k| k.public_key()).collect();
        Self {
            context,
            oracles,
            nodes,
            directory,
            relay,
            genesis,
            admin,
            pairs: account_pairs(24),
            accepted: BTreeSet::new(),
            in_flight: BTreeMap::new(),
            next_nonce: BTreeMap::new(),
            round: 0,
            cross: 0,
            intra: 0,
        }
    }

    fn balances(&self) -> Vec<(PublicKey, u64)> {
        self.pairs
            .iter()
            .flat_map(|(a, b)| [(a.public_key(), BALANCE), (b.public_key(), BALANCE)])
            .collect()
    }

    async fn start(&mut self, i: usize) {
        let (key, committee, kv) = {
            let n = &self.nodes[i];
            (n.key.clone(), n.committee, n.kv.clone())
        };
        let tables = match committee {
            Committee::Beacon => Vec::new(),
            Committee::Shard(s) => (0..=255u8)
                .filter(|t| self.genesis.owner(*t) == s && s < self.genesis.shard_count())
                .collect(),
        };
        let place = ShardPlace {
            committee,
            tables,
            beacon_height: 0,
        };
        let mut state = NodeState::open_in(kv, CHAIN, &self.balances(), 10_000, Some(place))
            .and_then(|s| s.with_beacon(self.genesis.clone()))
            .unwrap();
        trellis_node::follower::restore(&mut state, CHAIN).unwrap();
        if committee == Committee::Beacon {
            let mut keys: Vec<PublicKey> = self
                .genesis
                .beacon_validators()
                .iter()
                .map(|s| s.node_key.clone())
                .collect();
            keys.sort();
            state.ensure_registry(&keys);
        }
        let state = Arc::new(Mutex::new(state));
        let oracle = &self.oracles[&committee.name()];
        let control = oracle.control(key.public_key());
        let channels = sim_channels::register(&control).await;
        let context = self.context.child("node").with_attribute("index", i);
        let (chain, engine) = start_node(
            context.child("validator"),
            key.clone(),
            ValidatorConfig {
                chain_id: CHAIN.into(),
                block_txs: 1_000,
                timing: Timing::default(),
                partition: format!("consensus-{i}"),
            },
            state.clone(),
            ChainMetrics::for_committee(CHAIN, &committee.name()),
            control,
            channels,
            None,
        )
        .unwrap();
        let mut handles = vec![chain, engine];
        if let Committee::Shard(_) = committee {
            let (s, d) = (state.clone(), self.directory.clone());
            handles.push(context.child("follower").spawn(move |ctx| {
                trellis_node::follower::follow(ctx, s, CHAIN.into(), d, Duration::from_millis(100))
            }));
            let (s, d) = (state.clone(), self.directory.clone());
            handles.push(context.child("handoff").spawn(move |ctx| {
                trellis_node::handoff::run(ctx, s, CHAIN.into(), d, Duration::from_millis(100))
            }));
            let (s, relay, me) = (state.clone(), self.relay.clone(), key.public_key());
            handles.push(context.child("credits").spawn(move |ctx| {
                trellis_node::cross_shard::run(ctx, s, CHAIN.into(), relay, Pace::default(), me)
            }));
        }
        self.nodes[i].slot.up(state.clone());
        self.directory
            .nodes
            .lock()
            .unwrap()
            .insert(key.public_key(), state.clone());
        self.nodes[i].state = Some(state);
        self.nodes[i].handles = handles;
    }

    /// Kills a node: its tasks stop, its memory is lost, its store survives.
    fn crash(&mut self, i: usize) {
        for h in self.nodes[i].handles.drain(..) {
            h.abort();
        }
        self.nodes[i].state = None;
        self.nodes[i].slot.down();
        self.directory
            .nodes
            .lock()
            .unwrap()
            .remove(&self.nodes[i].key.public_key());
    }

    fn beacon(&self) -> BeaconState {
        let s = self.nodes[0].state.as_ref().unwrap();
        lock(s).beacon.clone().unwrap()
    }

    fn slot_nodes(&self, slot: u16) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i].committee == Committee::Shard(slot) && self.nodes[*i].state.is_some()
            })
            .collect()
    }

    /// One transfer per idle account pair side, sent to a node of the shard owning it.
    /// True when some shard slot's ledger holds a receipt for `hash`.
    fn finalized(&self, hash: &Digest) -> bool {
        (0..SLOTS).any(|slot| {
            self.slot_nodes(slot).first().is_some_and(|i| {
                let s = lock(self.nodes[*i].state.as_ref().unwrap());
                s.ledger.receipt(&hash.0).unwrap().is_some()
            })
        })
    }

    /// Transfers like a wallet: one transaction in flight per sender, sent to a node of
    /// the shard owning the sender's table; a transaction not finalized after 20 s (its
    /// node crashed, say) is sent again, the same bytes, to another node.
    fn load(&mut self) {
        self.round += 1;
        let round = self.round;
        let now = self.context.current();
        let shard_nodes: Vec<State> = self
            .nodes
            .iter()
            .filter(|n| n.committee != Committee::Beacon)
            .filter_map(|n| n.state.clone())
            .collect();
        if shard_nodes.is_empty() {
            return;
        }
        // Two of every three transfers of a sender (by its nonce, so the share holds
        // whatever the timing) go to another table: an account of a pair in another shard
        // when there are several, else of the next pair; the third goes to its partner.
        let beacon = self.beacon();
        let accounts: Vec<&PrivateKey> = self.pairs.iter().flat_map(|(a, b)| [a, b]).collect();
        let senders: Vec<(usize, PrivateKey, PublicKey, PublicKey)> = (0..accounts.len())
            .map(|id| {
                let from = accounts[id];
                let partner = accounts[id ^ 1].public_key();
                let home = beacon.owner(table_of(&from.public_key()));
                let others: Vec<&&PrivateKey> = accounts
                    .iter()
                    .filter(|k| beacon.owner(table_of(&k.public_key())) != home)
                    .collect();
                let to = if others.is_empty() {
                    accounts[(id + 2) % accounts.len()].public_key()
                } else {
                    others[(id + round as usize) % others.len()].public_key()
                };
                (id, from.clone(), partner, to)
            })
            .collect();
        let several = beacon.shard_count() > 1;
        for (id, from, partner, other) in senders {
            if let Some((tx, _)) = self.in_flight.get(&id)
                && self.finalized(&tx.hash())
            {
                self.next_nonce.insert(id, tx.unsigned.nonce + 1);
                self.in_flight.remove(&id);
            }
            let table = table_of(&from.public_key());
            let owners: Vec<&State> = shard_nodes
                .iter()
                .filter(|s| {
                    let s = lock(s);
                    s.ledger.owned_tables().contains(table)
                        && trellis_node::epoch_switch::blocked(&s).is_none()
                })
                .collect();
            if owners.is_empty() {
                continue;
            }
            let state = owners[(id + round as usize) % owners.len()];
            let mut s = lock(state);
            let tx = match self.in_flight.get(&id) {
                Some((tx, sent))
                    if now.duration_since(*sent).unwrap_or_default() > Duration::from_secs(20) =>
                {
                    tx.clone()
                }
                Some(_) => continue,
                None => {
                    let Ok(account) = s.ledger.account(&from.public_key()) else {
                        continue;
                    };
                    // Like a wallet: never below the nonce its last finalized
                    // transaction left (a node that lags would admit a used nonce,
                    // which can never finalize).
                    let nonce = account
                        .nonce
                        .max(self.next_nonce.get(&id).copied().unwrap_or(0));
                    let to = if nonce.is_multiple_of(3) {
                        partner
                    } else {
                        other
                    };
                    UnsignedTx {
                        chain_id: CHAIN.into(),
                        from: from.public_key(),
                        nonce,
                        fee: 1,
                        kind: TxKind::Transfer {
                            to,
                            amount: 1 + (round * 13 + id as u64) % 700,
                        },
                    }
                    .sign(&from)
                }
            };
            let crosses = match &tx.unsigned.kind {
                TxKind::Transfer { to, .. } => {
                    beacon.owner(table_of(to)) != beacon.owner(table_of(&from.public_key()))
                }
                _ => false,
            };
            match s.submit(tx.clone()) {
                Ok(hash) => {
                    self.accepted.insert(hash);
                    self.in_flight.insert(id, (tx, now));
                    if several && crosses {
                        self.cross += 1;
                    } else if several {
                        self.intra += 1;
                    }
                }
                Err(trellis_node::mempool::AdmitError::Known) => {
                    self.in_flight.insert(id, (tx, now));
                }
                Err(_) => {}
            }
        }
    }

    async fn step(&mut self, load: bool) {
        if load {
            self.load();
        }
        self.context.sleep(Duration::from_millis(200)).await;
    }

    /// True when every slot below the beacon's count runs its current epoch's tables
    /// (no handoff pending) and every slot above it is idle.
    fn settled(&self) -> bool {
        let beacon = self.beacon();
        if beacon.pending_shard_count().is_some() {
            return false;
        }
        (0..SLOTS).all(|slot| {
            let nodes = self.slot_nodes(slot);
            !nodes.is_empty()
                && nodes.iter().all(|i| {
                    let s = lock(self.nodes[*i].state.as_ref().unwrap());
                    let record = s.shard_epoch.clone().unwrap();
                    let owned: Vec<u8> = s.ledger.owned_tables().iter().collect();
                    let expected: Vec<u8> = if slot < beacon.shard_count() {
                        (0..=255u8).filter(|t| beacon.owner(*t) == slot).collect()
                    } else {
                        Vec::new()
                    };
                    owned == expected
                        && (slot >= beacon.shard_count()
                            || trellis_node::epoch_switch::blocked(&s).is_none())
                        && (slot < beacon.shard_count() || record.idle())
                        && (record.idle() || record.epoch + 1 >= beacon.epoch())
                })
        })
    }

    /// One line per node: what the beacon and each shard node are at.
    fn describe(&self) -> String {
        let beacon = self.beacon();
        let mut out = format!(
            "beacon epoch {} count {} pending {:?} resharding {}\n",
            beacon.epoch(),
            beacon.shard_count(),
            beacon.pending_shard_count(),
            beacon.resharding()
        );
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(state) = &n.state else {
                out += &format!("  node {i} {}: down\n", n.committee.name());
                continue;
            };
            let s = lock(state);
            let record = s.shard_epoch.clone();
            out += &format!(
                "  node {i} {}: height {} followed {} epoch {:?} owned {} blocked {:?}\n",
                n.committee.name(),
                s.finalized_height(),
                s.shard.as_ref().map_or(0, |p| p.beacon_height),
                record.map(|r| r.epoch),
                s.ledger.owned_tables().len(),
                trellis_node::epoch_switch::blocked(&s)
            );
        }
        out
    }

    /// Every table owned by exactly one slot; Σ net over all tables = genesis supply.
    fn check_supply(&self) {
        let mut owner: BTreeMap<u8, u16> = BTreeMap::new();
        let mut net: i128 = 0;
        for slot in 0..SLOTS {
            let nodes = self.slot_nodes(slot);
            let s = lock(self.nodes[nodes[0]].state.as_ref().unwrap());
            for (table, stats) in s.ledger.supply_parts() {
                assert!(
                    owner.insert(table, slot).is_none(),
                    "table {table} owned twice"
                );
                net += stats.net();
            }
            // Every node of a slot owns the same tables with the same roots.
            for i in &nodes[1..] {
                let t = lock(self.nodes[*i].state.as_ref().unwrap());
                if t.finalized_height() == s.finalized_height() {
                    assert_eq!(t.owned_roots(), s.owned_roots(), "slot {slot} nodes differ");
                }
            }
        }
        assert_eq!(
            owner.len(),
            256,
            "tables owned by nobody: {:?}",
            (0..=255u8)
                .filter(|t| !owner.contains_key(t))
                .collect::<Vec<_>>()
        );
        let supply = (self.pairs.len() as i128) * 2 * i128::from(BALANCE);
        assert_eq!(net, supply, "supply not conserved");
    }

    /// Pairs of tables whose receipts are not all credited, read where the beacon's map
    /// puts each table now: (source, dest, sent, credited).
    fn uncredited(&self) -> Vec<(u8, u8, u64, u64)> {
        let beacon = self.beacon();
        let owner = |t: u8| {
            let nodes = self.slot_nodes(beacon.owner(t));
            self.nodes[nodes[0]].state.clone().unwrap()
        };
        let mut out = Vec::new();
        for source in 0..=255u8 {
            let src = owner(source);
            for dest in 0..=255u8 {
                let sent = lock(&src).ledger.outbox_next(source, dest).unwrap();
                if sent == 0 {
                    continue;
                }
                let credited = lock(&owner(dest)).ledger.inbox_next(dest, source).unwrap();
                assert!(
                    credited <= sent,
                    "table {dest} credited {credited} receipts of table {source}, which sent {sent}"
                );
                if credited != sent {
                    out.push((source, dest, sent, credited));
                }
            }
        }
        out
    }

    fn reshard(&self, count: u16) {
        let s = self.nodes[0].state.as_ref().unwrap();
        let mut s = lock(s);
        let sequence = s
            .beacon
            .as_ref()
            .unwrap()
            .next_sequence(&self.admin.public_key());
        let tx = SystemPayload {
            chain_id: CHAIN.into(),
            sequence,
            action: SystemAction::SetShardCount {
                count,
                load: vec![],
            },
        }
        .sign(&self.admin);
        s.submit_system(tx, CHAIN).unwrap();
    }
}

fn executor(seed: u64) -> deterministic::Runner {
    deterministic::Runner::new(
        deterministic::Config::new()
            .with_seed(seed)
            .with_timeout(Some(Duration::from_secs(3_000))),
    )
}

#[test]
fn reshards_1_2_4_3_1_under_load_with_a_crash_during_handoff() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,trellis_node::handoff=info,trellis_node::epoch_switch=info")
        .with_test_writer()
        .try_init();
    executor(7).start(|context| async move {
        let mut sim = Sim::new(context).await;
        for i in 0..sim.nodes.len() {
            sim.start(i).await;
        }
        // Slots 1..4 wait for the beacon; they say so.
        for slot in 1..SLOTS {
            let i = sim.slot_nodes(slot)[0];
            let s = lock(sim.nodes[i].state.as_ref().unwrap());
            assert_eq!(
                trellis_node::epoch_switch::blocked(&s).unwrap(),
                format!("waiting for shard {slot} to be created by the beacon")
            );
        }
        for _ in 0..20 {
            sim.step(true).await;
        }
        // A Byzantine node of slot 0 serves forged snapshot chunks.
        *sim.directory.forger.lock().unwrap() =
            Some(sim.nodes[sim.slot_nodes(0)[1]].key.public_key());
        let mut crashed = false;
        let mut refused_during_handoff = 0;
        for count in [2u16, 4, 3, 1] {
            sim.reshard(count);
            let start = sim.context.current();
            let mut restart_at = None;
            loop {
                sim.step(true).await;
                let waited = sim.context.current().duration_since(start).unwrap();
                assert!(
                    waited < Duration::from_secs(240),
                    "resharding to {count} did not settle:\n{}",
                    sim.describe()
                );
                if sim.round.is_multiple_of(50) {
                    eprintln!("{}", sim.describe());
                }
                // Crash an importing validator mid-handoff, once, and restart it later.
                if !crashed {
                    for i in 0..sim.nodes.len() {
                        let importing = sim.nodes[i].state.as_ref().is_some_and(|s| {
                            trellis_node::epoch_switch::blocked(&lock(s))
                                .is_some_and(|r| r.starts_with("handing off"))
                        });
                        if importing {
                            eprintln!("crashing node {i} during its table handoff");
                            sim.crash(i);
                            crashed = true;
                            restart_at = Some((i, sim.context.current() + Duration::from_secs(3)));
                            break;
                        }
                    }
                }
                // Another change during the handoff epoch is refused, "retry later".
                if sim.beacon().shard_count() == count && sim.beacon().resharding() {
                    let s = sim.nodes[0].state.as_ref().unwrap();
                    let mut s = lock(s);
                    let sequence = s
                        .beacon
                        .as_ref()
                        .unwrap()
                        .next_sequence(&sim.admin.public_key());
                    let tx = SystemPayload {
                        chain_id: CHAIN.into(),
                        sequence,
                        action: SystemAction::SetShardCount {
                            count: 2,
                            load: vec![],
                        },
                    }
                    .sign(&sim.admin);
                    let refusal = s.submit_system(tx, CHAIN).unwrap_err();
                    assert_eq!(
                        refusal.code,
                        trellis_node_api::error_codes::RESHARDING,
                        "{refusal}"
                    );
                    assert!(
                        refusal.message.contains("resharding in progress"),
                        "{refusal}"
                    );
                    refused_during_handoff += 1;
                }
                if let Some((i, at)) = restart_at
                    && sim.context.current() >= at
                {
                    sim.start(i).await;
                    restart_at = None;
                }
                if restart_at.is_none() && sim.beacon().shard_count() == count && sim.settled() {
                    break;
                }
            }
            let beacon = sim.beacon();
            eprintln!(
                "settled at {count} shards (beacon epoch {}) after {:?}",
                beacon.epoch(),
                sim.context.current().duration_since(start).unwrap()
            );
            sim.check_supply();
            sim.uncredited();
            for slot in count..SLOTS {
                let i = sim.slot_nodes(slot)[0];
                let s = lock(sim.nodes[i].state.as_ref().unwrap());
                assert!(s.shard_epoch.as_ref().unwrap().drained || s.finalized_height() == 0);
            }
            // Another change waits until this one's handoff epoch is over.
            while sim.beacon().resharding() {
                sim.step(true).await;
            }
        }
        assert!(crashed, "no validator was caught mid-handoff");
        assert!(
            refused_during_handoff > 0,
            "no SetShardCount was tried during a handoff"
        );
        // A forged epoch-end answer is refused: a changed certificate, or a changed header
        // (its digest no longer matches the certificate).
        {
            let beacon = sim.beacon();
            let node = sim.nodes[sim.slot_nodes(0)[0]].key.public_key();
            let peer = Peer {
                key: node,
                rpc_address: String::new(),
            };
            let answer = HandoffSource::epoch_end(&sim.directory, &peer, 0, 1)
                .await
                .unwrap();
            let table = trellis_node::epoch_switch::tables_of(&beacon, 0, 1)[0];
            trellis_node::handoff::certified_root(&beacon, CHAIN, 0, 1, table, &answer).unwrap();
            let mut forged = answer.clone();
            let last = forged.certificate.len() - 1;
            forged.certificate[last] ^= 1;
            let e = trellis_node::handoff::certified_root(&beacon, CHAIN, 0, 1, table, &forged)
                .unwrap_err();
            assert!(e.contains("does not verify"), "{e}");
            let mut block = trellis_node_types::Block::decode_untrusted(&answer.block).unwrap();
            block.sharding.as_mut().unwrap().header.roots[0].root[0] ^= 1;
            let forged = CertifiedBlock {
                block: trellis_node_types::Encode::encode(&block).to_vec(),
                certificate: answer.certificate.clone(),
            };
            let e = trellis_node::handoff::certified_root(&beacon, CHAIN, 0, 1, table, &forged)
                .unwrap_err();
            assert!(e.contains("does not verify"), "{e}");
            // Asked of another shard, or for the wrong epoch: refused with the reason.
            let e = trellis_node::handoff::certified_root(&beacon, CHAIN, 1, 1, table, &answer)
                .unwrap_err();
            assert!(e.contains("shard 1"), "{e}");
        }
        assert!(
            sim.directory.forged.load(Ordering::Relaxed) > 0,
            "the forger was never asked"
        );
        // Let the pools drain and the receipts be credited, then: every accepted
        // transaction finalized exactly once, every receipt credited exactly once.
        for _ in 0..100 {
            sim.step(false).await;
        }
        let mut waited = 0;
        loop {
            let uncredited = sim.uncredited();
            if uncredited.is_empty() {
                break;
            }
            waited += 1;
            assert!(
                waited < 60,
                "{} pairs of tables with receipts never credited, e.g. (source, dest, sent, \
                 credited) {:?}\n{}",
                uncredited.len(),
                &uncredited[..uncredited.len().min(5)],
                sim.describe()
            );
            for _ in 0..10 {
                sim.step(false).await;
            }
        }
        sim.check_supply();
        eprintln!(
            "{} transfers across shards, {} inside one, while there were several",
            sim.cross, sim.intra
        );
        assert!(
            sim.cross >= sim.intra,
            "only {} of {} transfers crossed shards",
            sim.cross,
            sim.cross + sim.intra
        );
        let mut missing = Vec::new();
        for hash in &sim.accepted {
            let mut found = 0;
            for slot in 0..SLOTS {
                let i = sim.slot_nodes(slot)[0];
                let s = lock(sim.nodes[i].state.as_ref().unwrap());
                if s.ledger.receipt(&hash.0).unwrap().is_some() {
                    found += 1;
                }
            }
            if found != 1 {
                missing.push((hash, found));
            }
        }
        assert!(
            missing.is_empty(),
            "{} of {} accepted transactions not finalized exactly once: {:?}",
            missing.len(),
            sim.accepted.len(),
            &missing[..missing.len().min(5)]
        );
        eprintln!(
            "{} accepted transactions, all finalized once",
            sim.accepted.len()
        );
        // Slots 1..3 were drained by the scale-in to 1 and say so.
        for slot in 1..SLOTS {
            let i = sim.slot_nodes(slot)[0];
            let s = lock(sim.nodes[i].state.as_ref().unwrap());
            assert!(
                s.shard_epoch.as_ref().unwrap().drained,
                "slot {slot} not drained"
            );
            assert!(
                trellis_node::epoch_switch::blocked(&s)
                    .unwrap()
                    .starts_with("drained")
            );
        }
    });
}
