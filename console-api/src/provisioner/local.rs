//! The `local` provisioner: networks as real `trellis-node` processes on loopback
//! addresses, with their data under the console's data dir. It is what `trellis-console
//! up` runs, so a new user sees the whole product work without a cluster.
//!
//! - **apply** plans the processes ([`plan::plan_local`]: a public network is one
//!   sharded network, a beacon committee and one committee per shard; a consortium one
//!   unsharded chain), allocates one loopback address per new node ([`addresses`]),
//!   creates keys with `trellis-node keygen`, the genesis with `trellis-node genesis`
//!   (`--sharding` for a public network, whose admin key file is kept with its data;
//!   treasury accounts funded: one per genesis shard, in its tables) and one config per
//!   node, writes the network's record atomically ([`record`]) and only then lets the
//!   supervisor start processes.
//! - **Scaling a sharded network** goes through its beacon (`local/scaling.rs`): new shards'
//!   validators are registered and `SetShardCount` signed with the admin key; a shard
//!   scaled away runs until the beacon's map no longer assigns it tables.
//! - **The supervisor** (a task, every half second) keeps every node the records want
//!   running: a node that exits or is killed is restarted after a backoff (0.5 s
//!   doubling to 30 s, reset once it has run for a minute); nodes of stopped networks
//!   or retired shards get SIGTERM, then SIGKILL after 10 s; a paused network is left
//!   exactly as it is.
//! - **A console restart** loads the records and adopts the nodes that still run (pid +
//!   start time, else the exact command line in `/proc`), starting only the dead ones,
//!   so there is never a second process on a data dir and never an orphan.
//! - **delete** marks the record `deleting` durably, stops the nodes (SIGTERM, then
//!   SIGKILL), and removes the network's directory, or moves it to `retained/` when the
//!   network's retain policy keeps the ledger.
//! - **observe** asks every node for `trellis_status` and `/readyz`; a sharded
//!   network's shard count and epoch are the beacon's map's.
//! - **Load** (`local/load.rs`): each in-service shard's validators' metrics, for the
//!   console's built-in autoscaler ([`crate::networks::autoscale`]), which changes the
//!   network's shard count like a user's scale request does.
//! - **Consortium admissions** ([`admission`]): a member admitted after genesis gets its
//!   node prepared but started only once the chain's governance has admitted it; the
//!   console's custodied keys approve the governance transaction.
//! - **Consortium removals** (`local/removal.rs`): a removed member's validators keep
//!   running until the chain's governance has removed them (the same approvals), then
//!   they are stopped and never started again; their data stays with the network's.

pub mod addresses;
mod admission;
mod load;
mod member_change;
pub mod plan;
mod pool;
pub mod process;
pub mod record;
mod removal;
mod scaling;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use trellis_node_api::shard::{ANY_SHARD, GenesisValidator, ShardingGenesis, ShardingMode};
use trellis_node_api::{BootstrapPeer, MempoolConfig, NodeConfig, NodeStatus, Role};
use trellis_node_types::{public_key_from_hex, table_of};
use uuid::Uuid;

use self::addresses::{AddressRange, P2P_PORT, RPC_PORT};
use self::plan::{LocalPlan, plan_local};
use self::process::ProcessId;
use self::record::{
    ChainRecord, Layout, NetworkRecord, NodeRecord, ShardingRecord, committee_key, write_atomically,
};
use super::{
    DesiredNetwork, GovernanceSigner, MemberChainState, NetworkLoad, NetworkRef, ObservedPhase,
    ObservedStatus, ProvisionError, Provisioner, RpcEndpoint, ShardStatus,
};

/// How often the supervisor looks at every node.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);
/// SIGTERM, then SIGKILL after this long.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A node that ran this long before exiting starts over at the shortest backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Timeout of one status or readiness request to a node.
const NODE_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How the local provisioner is set up.
#[derive(Clone, Debug)]
pub struct LocalSettings {
    /// `<data-dir>/local`.
    pub root: PathBuf,
    pub node_binary: PathBuf,
    pub addresses: AddressRange,
    /// Balance of each network's treasury account on each of its chains.
    pub treasury_balance: u64,
}

pub const DEFAULT_TREASURY_BALANCE: u64 = 1_000_000_000_000;

/// The restart state of one node.
struct NodeRuntime {
    process: Option<ProcessId>,
    /// Set when this console started the process: it must be reaped.
    child: Option<Child>,
    started: Option<Instant>,
    failures: u32,
    not_before: Instant,
    restarts: u64,
    /// When SIGTERM was sent to a node that should not run.
    terminating_since: Option<Instant>,
}

impl NodeRuntime {
    fn new() -> Self {
        Self {
            process: None,
            child: None,
            started: None,
            failures: 0,
            not_before: Instant::now(),
            restarts: 0,
            terminating_since: None,
        }
    }

    fn reap(&mut self) {
        if let Some(child) = &mut self.child
            && !matches!(child.try_wait(), Ok(None))
        {
            self.child = None;
        }
    }

    fn is_alive(&mut self) -> bool {
        self.reap();
        self.process.is_some_and(|p| p.is_alive())
    }
}

#[derive(Default)]
struct Fleet {
    networks: BTreeMap<Uuid, NetworkRecord>,
    nodes: HashMap<(Uuid, String), NodeRuntime>,
    /// After [`LocalProvisioner::stop_all`]: nothing is started any more.
    stopped: bool,
}

struct Inner {
    settings: LocalSettings,
    layout: Layout,
    fleet: tokio::sync::Mutex<Fleet>,
    http: reqwest::Client,
    /// Approves admissions with the console's custodied keys (set once at start-up).
    signer: OnceLock<Arc<dyn GovernanceSigner>>,
    /// What each node waiting for admission is waiting for, by (network, node).
    admission_notes: tokio::sync::Mutex<HashMap<(Uuid, String), String>>,
    /// When each admission was last submitted.
    admission_sent: tokio::sync::Mutex<HashMap<(Uuid, String), Instant>>,
    /// Where each later member's admission stands on chain, by (network, member name),
    /// with the proposal waiting for approvals (for the console's proposal endpoint).
    admission_states: tokio::sync::Mutex<HashMap<(Uuid, String), MemberChainState>>,
    /// Last (time, committed transactions) per committee, for tx/s.
    tx_samples: tokio::sync::Mutex<HashMap<String, (Instant, f64)>>,
    /// Where each sharded network's scaling stands (the beacon's map, the step due).
    scaling: tokio::sync::Mutex<scaling::ScalingStates>,
    /// Per network, the validator pool's nodes whose `/readyz` answered 200 at its last
    /// observation: the pool's RPC endpoints (as a Service's Endpoints hold only Ready
    /// pods; a placed pool node that lost its shard's peers still answers RPC).
    pool_ready: tokio::sync::Mutex<HashMap<Uuid, BTreeSet<String>>>,
}

/// See the module documentation.
#[derive(Clone)]
pub struct LocalProvisioner {
    inner: Arc<Inner>,
}

fn unavailable(context: &str, e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::Unavailable(format!("{context}: {e}"))
}

impl LocalProvisioner {
    /// Loads the records under `settings.root`, adopts the nodes that still run and
    /// starts the supervisor. Must run inside a tokio runtime.
    pub async fn start(settings: LocalSettings) -> Result<Self, String> {
        let layout = Layout::new(settings.root.clone());
        let (records, problems) = layout
            .load_all()
            .map_err(|e| format!("reading {}: {e}", layout.root().display()))?;
        if !problems.is_empty() {
            return Err(format!(
                "unreadable local network records (fix or move them; their nodes may still \
                 run): {}",
                problems.join("; ")
            ));
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(NODE_REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let mut fleet = Fleet::default();
        for record in records {
            for (_, node) in record.nodes() {
                let mut runtime = NodeRuntime::new();
                runtime.process = adopt(&layout, record.network_id, &node.name);
                if let Some(p) = runtime.process {
                    tracing::info!(node = %node.name, pid = p.pid, "adopted running node");
                    runtime.started = Some(Instant::now());
                }
                fleet
                    .nodes
                    .insert((record.network_id, node.name.clone()), runtime);
            }
            fleet.networks.insert(record.network_id, record);
        }
        let inner = Arc::new(Inner {
            settings,
            layout,
            fleet: tokio::sync::Mutex::new(fleet),
            http,
            signer: OnceLock::new(),
            admission_notes: tokio::sync::Mutex::new(HashMap::new()),
            admission_sent: tokio::sync::Mutex::new(HashMap::new()),
            admission_states: tokio::sync::Mutex::new(HashMap::new()),
            tx_samples: tokio::sync::Mutex::new(HashMap::new()),
            scaling: tokio::sync::Mutex::new(HashMap::new()),
            pool_ready: tokio::sync::Mutex::new(HashMap::new()),
        });
        tokio::spawn(supervise_forever(Arc::downgrade(&inner)));
        tokio::spawn(admission::admit_forever(Arc::downgrade(&inner)));
        tokio::spawn(scaling::scale_forever(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// Who approves consortium admissions on chain; without one, admitted members'
    /// nodes wait with an explanation in the status. Set once; later calls are ignored.
    pub fn set_governance_signer(&self, signer: Arc<dyn GovernanceSigner>) {
        let _ = self.inner.signer.set(signer);
    }

    pub fn settings(&self) -> &LocalSettings {
        &self.inner.settings
    }

    /// The key file of the account funded at genesis: on a consortium's chain, or in
    /// shard 0's tables of a sharded network.
    pub fn treasury_key_file(&self, network: Uuid) -> PathBuf {
        self.inner.layout.treasury(network)
    }

    /// The key file of the account funded in shard `shard`'s genesis tables of a sharded
    /// network (shards `0..` the genesis shard count have one).
    pub fn shard_treasury_key_file(&self, network: Uuid, shard: u16) -> PathBuf {
        self.inner.layout.shard_treasury(network, shard)
    }

    /// Stops every node (SIGTERM, then SIGKILL) and starts none any more; the records
    /// stay, so the next console start brings the networks back. For `up`'s Ctrl-C.
    pub async fn stop_all(&self) {
        let processes: Vec<(ProcessId, Option<Child>)> = {
            let mut fleet = self.inner.fleet.lock().await;
            fleet.stopped = true;
            fleet
                .nodes
                .values_mut()
                .filter_map(|rt| {
                    let child = rt.child.take();
                    rt.process.take().map(|p| (p, child))
                })
                .collect()
        };
        stop_processes(processes).await;
    }

    /// Prepares and records `desired`; the supervisor starts what it needs.
    async fn apply_desired(&self, desired: &DesiredNetwork) -> Result<(), ProvisionError> {
        let inner = &self.inner;
        let mut fleet = inner.fleet.lock().await;
        let id = desired.network.network_id;
        let existing = fleet.networks.get(&id).cloned();
        if let Some(existing) = &existing {
            if existing.deleting {
                return Err(ProvisionError::Unavailable(
                    "the network is being deleted".into(),
                ));
            }
            if existing.generation >= desired.generation {
                return Ok(());
            }
        }
        let plan = plan_local(desired)?;
        let used: BTreeSet<Ipv4Addr> = fleet
            .networks
            .values()
            .flat_map(|r| r.nodes().map(|(_, n)| n.address))
            .collect();
        let record = self
            .prepare(desired, existing.as_ref(), &plan, &used)
            .await?;
        inner
            .layout
            .save(&record)
            .map_err(|e| unavailable("recording the network", e))?;
        tracing::info!(
            network = %id,
            generation = desired.generation,
            nodes = plan.node_count(),
            "local network recorded"
        );
        for (_, node) in record.nodes() {
            fleet
                .nodes
                .entry((id, node.name.clone()))
                .or_insert_with(NodeRuntime::new);
        }
        fleet.networks.insert(id, record);
        // Start what is new now rather than at the next tick.
        supervise(inner, &mut fleet);
        Ok(())
    }

    /// Keys, genesis files and configs for `plan`; returns the record to save.
    async fn prepare(
        &self,
        desired: &DesiredNetwork,
        existing: Option<&NetworkRecord>,
        plan: &LocalPlan,
        used: &BTreeSet<Ipv4Addr>,
    ) -> Result<NetworkRecord, ProvisionError> {
        let layout = &self.inner.layout;
        let binary = &self.inner.settings.node_binary;
        let id = desired.network.network_id;
        if let (Some(existing), Some(_)) = (existing, &plan.sharding)
            && existing.sharding.is_none()
        {
            return Err(ProvisionError::Rejected(
                "this public network was provisioned by an older console as independent \
                 single-committee chains; it cannot become a sharded network in place — \
                 delete it and create it again"
                    .into(),
            ));
        }
        let old_chains: BTreeMap<(u8, u16), &ChainRecord> = existing
            .map(|r| r.chains.iter().map(|c| (c.key(), c)).collect())
            .unwrap_or_default();
        let new_nodes =
            plan.chains
                .iter()
                .flat_map(|chain| {
                    let old = old_chains.get(&committee_key(chain.role, chain.shard));
                    chain.nodes.iter().filter(move |n| {
                        !old.is_some_and(|c| c.nodes.iter().any(|o| o.name == n.name))
                    })
                })
                .count();
        let mut fresh = self
            .inner
            .settings
            .addresses
            .allocate(used, new_nodes, ports_are_free)
            .map_err(ProvisionError::Unavailable)?
            .into_iter();

        let mut chains = Vec::new();
        for planned in &plan.chains {
            let old = old_chains.get(&committee_key(planned.role, planned.shard));
            let mut nodes = Vec::new();
            for node in &planned.nodes {
                if let Some(kept) = old.and_then(|c| c.nodes.iter().find(|o| o.name == node.name)) {
                    nodes.push(match planned.role {
                        // A pool validator wanted again after a scale-down comes back
                        // with its keys and ledger and is registered anew (a registration
                        // the beacon still holds is refused as unchanged: done).
                        Some(Role::AnyShard) if kept.leaving || kept.removed => NodeRecord {
                            leaving: false,
                            removed: false,
                            registered: false,
                            ..kept.clone()
                        },
                        _ => kept.clone(),
                    });
                    continue;
                }
                let address = fresh.next().ok_or_else(|| {
                    ProvisionError::Unavailable("address allocation came up short".into())
                })?;
                let dir = layout.node(id, &node.name);
                // Nothing ever ran from an unrecorded node directory (nodes start only
                // after the record is written), so leftovers of a crashed apply go.
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .map_err(|e| unavailable("clearing an unrecorded node directory", e))?;
                }
                std::fs::create_dir_all(&dir)
                    .map_err(|e| unavailable("creating the node directory", e))?;
                let (node_key, own_admin_key) = keygen(binary, &dir.join("keys.json")).await?;
                nodes.push(NodeRecord {
                    name: node.name.clone(),
                    member: node.member.clone(),
                    address,
                    node_public_key: node_key,
                    admin_public_key: node.admin_public_key.clone().unwrap_or(own_admin_key),
                    // A node joins the genesis only when its chain is new (in a sharded
                    // network: when the network is); a shard added later, and the
                    // validator pool always, register their validators with the beacon.
                    in_genesis: match plan.sharding {
                        _ if planned.role == Some(Role::AnyShard) => false,
                        Some(_) => existing.is_none(),
                        None => old.is_none(),
                    },
                    admitted: false,
                    registered: false,
                    leaving: false,
                    removed: false,
                });
            }
            // Validators planned away that may still vote: a consortium member's until
            // governance removed them, a pool validator's until the beacon's map leaves
            // it out ([`scaling`] deregisters it).
            if matches!(planned.role, None | Some(Role::AnyShard))
                && let Some(old) = old
            {
                nodes.extend(departing(old, &nodes));
            }
            chains.push(ChainRecord {
                shard: planned.shard,
                chain_id: old.map_or_else(|| planned.chain_id.clone(), |c| c.chain_id.clone()),
                role: planned.role,
                nodes,
                draining: false,
                retired: false,
            });
        }
        // Shards planned away keep their keys and ledger; a later scale-out brings the
        // same committee back. An unsharded chain's are stopped at once; a sharded
        // network's drain first: they run until the beacon's map no longer gives them
        // tables (the scaling loop retires them then).
        for (key, old) in &old_chains {
            if !plan
                .chains
                .iter()
                .any(|c| committee_key(c.role, c.shard) == *key)
            {
                let mut away = (*old).clone();
                if away.is_pool() {
                    // The pool scaled to 0: every validator leaves through the beacon.
                    away.nodes = departing(old, &[]);
                } else if plan.sharding.is_some() && !away.retired {
                    away.draining = true;
                } else {
                    away.retired = true;
                }
                chains.push(away);
            }
        }
        chains.sort_by_key(ChainRecord::key);

        let epoch_length = desired.spec.epoch_length.max(1);
        let balance = self.inner.settings.treasury_balance;
        let (treasury, sharding) = match plan.sharding {
            None => {
                let treasury = match read_public_keys(&layout.treasury(id)) {
                    Some(keys) => keys.1,
                    None => keygen(binary, &layout.treasury(id)).await?.1,
                };
                if let Some(chain) = chains.iter().find(|c| !old_chains.contains_key(&c.key())) {
                    let members = genesis_members(&chain.nodes);
                    let balances = [(treasury.clone(), balance)];
                    genesis(
                        binary,
                        &chain.chain_id,
                        epoch_length,
                        &members,
                        &balances,
                        None,
                        &layout.genesis(id, &chain.chain_id),
                    )
                    .await?;
                }
                (treasury, None)
            }
            Some(planned) => {
                let admin = match read_public_keys(&layout.admin(id)) {
                    Some(keys) => keys.1,
                    None => keygen(binary, &layout.admin(id)).await?.1,
                };
                let sharding = ShardingRecord {
                    shard_count: planned.shard_count,
                    max_shards: planned.max_shards,
                    admin_public_key: admin,
                };
                let treasury = match existing {
                    Some(existing) => existing.treasury_account.clone(),
                    None => {
                        self.sharded_genesis(id, &chains, &sharding, epoch_length)
                            .await?
                    }
                };
                (treasury, Some(sharding))
            }
        };
        for chain in &chains {
            for node in &chain.nodes {
                write_config(layout, id, chain, node)?;
            }
        }
        let network = &desired.network;
        Ok(NetworkRecord {
            network_id: id,
            tenant_id: network.tenant_id,
            tenant_slug: network.tenant_slug.clone(),
            name: network.name.clone(),
            generation: desired.generation,
            paused: desired.spec.paused,
            stopped: desired.spec.stopped,
            deleting: false,
            epoch_length,
            treasury_account: treasury,
            note: plan.note.clone(),
            chains,
            sharding,
        })
    }

    /// A new sharded network's funded accounts (one per genesis shard, in that shard's
    /// tables, so every shard has a sender without cross-shard transfers) and its one
    /// genesis with the `sharding` section. Returns shard 0's treasury account.
    async fn sharded_genesis(
        &self,
        id: Uuid,
        chains: &[ChainRecord],
        sharding: &ShardingRecord,
        epoch_length: u64,
    ) -> Result<String, ProvisionError> {
        let layout = &self.inner.layout;
        let binary = &self.inner.settings.node_binary;
        let balance = self.inner.settings.treasury_balance;
        let paths: Vec<PathBuf> = (0..sharding.shard_count)
            .map(|shard| layout.shard_treasury(id, shard))
            .collect();
        let balances: Vec<(String, u64)> = shard_treasuries(
            binary,
            &paths,
            &layout.network(id).join("treasury-new.json"),
        )
        .await?
        .into_iter()
        .map(|account| (account, balance))
        .collect();
        let seat = |node: &NodeRecord, shard: u16| GenesisValidator {
            node_key: node.node_public_key.clone(),
            shard,
            p2p_address: p2p_address(node).to_string(),
            rpc_address: rpc_address(node).to_string(),
            member: None,
        };
        let section = ShardingGenesis {
            mode: ShardingMode::Public,
            admin_key: sharding.admin_public_key.clone(),
            max_shards: sharding.max_shards,
            shard_count: sharding.shard_count,
            beacon: chains
                .iter()
                .filter(|c| c.is_beacon())
                .flat_map(|c| c.nodes.iter().map(|n| seat(n, ANY_SHARD)))
                .collect(),
            validators: chains
                .iter()
                .filter(|c| !c.is_beacon() && !c.is_pool())
                .flat_map(|c| c.nodes.iter().map(|n| seat(n, c.shard)))
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&section)
            .map_err(|e| unavailable("rendering the sharding section", e))?;
        write_atomically(&layout.sharding(id), &text)
            .map_err(|e| unavailable("writing the sharding section", e))?;
        let chain = chains
            .first()
            .ok_or_else(|| ProvisionError::Unavailable("a network without committees".into()))?;
        // The genesis needs a member (consortium governance's registry, unused in a
        // public network): the network admin, named after its key file.
        let admin_node = read_public_keys(&layout.admin(id))
            .ok_or_else(|| ProvisionError::Unavailable("the admin key file is unreadable".into()))?
            .0;
        let beacon = chain.nodes.first().map(p2p_address).ok_or_else(|| {
            ProvisionError::Unavailable("the beacon committee has no validator".into())
        })?;
        let members = vec![format!(
            "network-admin,{},{admin_node},{beacon}",
            sharding.admin_public_key
        )];
        genesis(
            binary,
            &chain.chain_id,
            epoch_length,
            &members,
            &balances,
            Some(&layout.sharding(id)),
            &layout.genesis(id, &chain.chain_id),
        )
        .await?;
        balances
            .into_iter()
            .next()
            .map(|(account, _)| account)
            .ok_or_else(|| ProvisionError::Unavailable("no treasury was funded".into()))
    }

    async fn delete_network(&self, id: Uuid, retain: bool) -> Result<(), ProvisionError> {
        let inner = &self.inner;
        let processes = {
            let mut fleet = inner.fleet.lock().await;
            let Some(record) = fleet.networks.get_mut(&id) else {
                // Never recorded (or already deleted): remove what a crashed apply left.
                return remove_or_retain(&inner.layout, id, retain);
            };
            record.deleting = true;
            let record = record.clone();
            inner
                .layout
                .save(&record)
                .map_err(|e| unavailable("recording the deletion", e))?;
            let mut processes = Vec::new();
            for (_, node) in record.nodes() {
                if let Some(rt) = fleet.nodes.get_mut(&(id, node.name.clone())) {
                    let child = rt.child.take();
                    if let Some(p) = rt.process.take() {
                        processes.push((p, child));
                    }
                }
                // Also anything running the node's config that the console lost track of.
                for p in process::find_running(&inner.layout.config(id, &node.name)) {
                    if !processes.iter().any(|(q, _)| *q == p) {
                        processes.push((p, None));
                    }
                }
            }
            processes
        };
        stop_processes(processes).await;
        let mut fleet = inner.fleet.lock().await;
        remove_or_retain(&inner.layout, id, retain)?;
        fleet.networks.remove(&id);
        fleet.nodes.retain(|(network, _), _| *network != id);
        inner.pool_ready.lock().await.remove(&id);
        tracing::info!(network = %id, retain, "local network deleted");
        Ok(())
    }

    /// Transactions per second of a chain since its previous observation, from the
    /// highest `trellis_txs_committed_total` of its nodes.
    async fn tx_rate(&self, chain_id: &str, committed: f64) -> f64 {
        let now = Instant::now();
        let mut samples = self.inner.tx_samples.lock().await;
        let rate = samples.get(chain_id).map_or(0.0, |(at, before)| {
            let seconds = now.duration_since(*at).as_secs_f64();
            if seconds > 0.0 && committed >= *before {
                (committed - before) / seconds
            } else {
                0.0
            }
        });
        samples.insert(chain_id.to_string(), (now, committed));
        rate
    }

    async fn observe_network(&self, id: Uuid) -> Option<(NetworkRecord, BTreeMap<String, u64>)> {
        let fleet = self.inner.fleet.lock().await;
        let record = fleet.networks.get(&id)?.clone();
        let restarts = record
            .nodes()
            .filter_map(|(_, n)| {
                let rt = fleet.nodes.get(&(id, n.name.clone()))?;
                Some((n.name.clone(), rt.restarts))
            })
            .collect();
        Some((record, restarts))
    }
}

/// Adopts the node's process after a console restart, if it still runs.
fn adopt(layout: &Layout, network: Uuid, node: &str) -> Option<ProcessId> {
    if let Some(recorded) = layout.load_process(network, node)
        && recorded.is_alive()
    {
        return Some(recorded);
    }
    // The console may have died between spawning and recording.
    let mut found = process::find_running(&layout.config(network, node));
    let first = found.pop();
    for extra in found {
        // Cannot happen through this console (the node's database lock refuses a second
        // process); if someone started one by hand, one node is enough.
        tracing::warn!(node, pid = extra.pid, "stopping a duplicate node process");
        extra.kill();
    }
    first
}

fn ports_are_free(address: Ipv4Addr) -> bool {
    [P2P_PORT, RPC_PORT]
        .iter()
        .all(|port| TcpListener::bind(SocketAddr::from((address, *port))).is_ok())
}

fn rpc_address(node: &NodeRecord) -> SocketAddr {
    SocketAddr::from((node.address, RPC_PORT))
}

fn p2p_address(node: &NodeRecord) -> SocketAddr {
    SocketAddr::from((node.address, P2P_PORT))
}

/// `(node public key, admin public key)` of an existing key file.
fn read_public_keys(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((
        value["node_public_key"].as_str()?.to_string(),
        value["admin_public_key"].as_str()?.to_string(),
    ))
}

async fn run_node_tool(
    binary: &Path,
    args: &[std::ffi::OsString],
) -> Result<Vec<u8>, ProvisionError> {
    let output = tokio::process::Command::new(binary)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| unavailable(&format!("running {}", binary.display()), e))?;
    if !output.status.success() {
        return Err(ProvisionError::Unavailable(format!(
            "trellis-node {} failed: {}",
            args.first()
                .map(|a| a.to_string_lossy())
                .unwrap_or_default(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output.stdout)
}

/// `trellis-node keygen --out <path>`: `(node public key, admin public key)`.
async fn keygen(binary: &Path, out: &Path) -> Result<(String, String), ProvisionError> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| unavailable("creating a key directory", e))?;
    }
    if out.exists() {
        // keygen refuses to overwrite; an unrecorded leftover is replaced.
        std::fs::remove_file(out).map_err(|e| unavailable("replacing a key file", e))?;
    }
    run_node_tool(binary, &["keygen".into(), "--out".into(), out.into()]).await?;
    read_public_keys(out)
        .ok_or_else(|| ProvisionError::Unavailable("keygen wrote no public keys".into()))
}

/// The nodes of an unsharded chain's `old` record that the plan (`planned`) no longer
/// has — their consortium member was removed. Each is `leaving` until the chain no
/// longer has it ([`removal`]): a validator runs until the chain's governance removed
/// it; a node still waiting for its admission does not start, and is `removed` as soon
/// as the registry shows it absent — or, if its admission was already sent and
/// executes, once its removal does. Likewise the validator pool's nodes scaled away:
/// `leaving` until the beacon's map leaves them out ([`scaling`]). They stay in the
/// record, so no process is ever orphaned.
fn departing(old: &ChainRecord, planned: &[NodeRecord]) -> Vec<NodeRecord> {
    old.nodes
        .iter()
        .filter(|o| !planned.iter().any(|n| n.name == o.name))
        .map(|o| NodeRecord {
            leaving: !o.removed,
            ..o.clone()
        })
        .collect()
}

/// `NAME,ADMIN_KEY,NODE_KEY,P2P` of every node of an unsharded chain: each is a member
/// (named after the node, signing governance with its organisation's key).
fn genesis_members(nodes: &[NodeRecord]) -> Vec<String> {
    nodes
        .iter()
        .map(|node| {
            format!(
                "{},{},{},{}",
                node.name,
                node.admin_public_key,
                node.node_public_key,
                p2p_address(node)
            )
        })
        .collect()
}

/// `trellis-node genesis`: the members, the funded accounts and, for a sharded network,
/// the `sharding` section file.
async fn genesis(
    binary: &Path,
    chain_id: &str,
    epoch_length: u64,
    members: &[String],
    balances: &[(String, u64)],
    sharding: Option<&Path>,
    out: &Path,
) -> Result<(), ProvisionError> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "genesis".into(),
        "--chain-id".into(),
        chain_id.into(),
        "--epoch-length".into(),
        epoch_length.to_string().into(),
    ];
    for member in members {
        args.push("--member".into());
        args.push(member.into());
    }
    for (account, amount) in balances {
        args.push("--balance".into());
        args.push(format!("{account}={amount}").into());
    }
    if let Some(sharding) = sharding {
        args.push("--sharding".into());
        args.push(sharding.into());
    }
    args.push("--out".into());
    args.push(out.into());
    run_node_tool(binary, &args).await?;
    Ok(())
}

/// The shard owning `table` in the genesis map of `shard_count` shards
/// (docs/sharding.md: table `t` goes to `t · S / 256`).
fn genesis_owner(table: u8, shard_count: u16) -> u16 {
    u16::try_from(u32::from(table) * u32::from(shard_count.max(1)) / 256).unwrap_or(0)
}

/// One key file per genesis shard (`paths[s]` for shard `s`) whose account lies in that
/// shard's genesis tables; returns the accounts in shard order. `trellis-node keygen`
/// writes to `scratch` until every shard has one: each key lands in a random shard and
/// is kept if that shard still lacks one (about `S · ln S` keys in all). Files that
/// already qualify are reused.
async fn shard_treasuries(
    binary: &Path,
    paths: &[PathBuf],
    scratch: &Path,
) -> Result<Vec<String>, ProvisionError> {
    let count = u16::try_from(paths.len()).unwrap_or(u16::MAX);
    let owner = |account: &str| {
        public_key_from_hex(account).map(|key| genesis_owner(table_of(&key), count))
    };
    let mut accounts: Vec<Option<String>> = paths
        .iter()
        .enumerate()
        .map(|(shard, path)| {
            read_public_keys(path)
                .map(|keys| keys.1)
                .filter(|account| owner(account).map(usize::from) == Some(shard))
        })
        .collect();
    // The bound only stops a broken keygen from looping forever.
    let mut tries = 0usize;
    while let Some(missing) = accounts.iter().position(Option::is_none) {
        tries += 1;
        if tries > 64 + 16 * paths.len() * paths.len().max(2).ilog2() as usize {
            return Err(ProvisionError::Unavailable(format!(
                "trellis-node keygen found no account in shard {missing}'s tables"
            )));
        }
        let (_, account) = keygen(binary, scratch).await?;
        let Some(shard) = owner(&account).map(usize::from) else {
            continue;
        };
        if let (Some(slot @ None), Some(path)) = (accounts.get_mut(shard), paths.get(shard)) {
            std::fs::rename(scratch, path)
                .map_err(|e| unavailable("keeping a treasury key file", e))?;
            *slot = Some(account);
        }
    }
    if scratch.exists() {
        std::fs::remove_file(scratch).map_err(|e| unavailable("removing a scratch key file", e))?;
    }
    Ok(accounts.into_iter().flatten().collect())
}

fn write_config(
    layout: &Layout,
    network: Uuid,
    chain: &ChainRecord,
    node: &NodeRecord,
) -> Result<(), ProvisionError> {
    let dir = layout.node(network, &node.name);
    let config = NodeConfig {
        chain_id: chain.chain_id.clone(),
        role: chain.node_role(),
        key_file: dir.join("keys.json"),
        data_dir: dir.join("data"),
        genesis_file: layout.genesis(network, &chain.chain_id),
        p2p_listen: p2p_address(node),
        p2p_external: None,
        rpc_listen: rpc_address(node),
        // A pool validator's peers are those of the shard the beacon places it in (the
        // genesis and the beacon's registry give their addresses), not its fellow pool
        // validators, which serve other shards.
        bootstrap_peers: chain
            .nodes
            .iter()
            .filter(|peer| !chain.is_pool() && peer.name != node.name)
            .map(|peer| BootstrapPeer {
                public_key: peer.node_public_key.clone(),
                address: p2p_address(peer).to_string(),
            })
            .collect(),
        mempool: MempoolConfig::default(),
    };
    let text = config
        .to_toml()
        .map_err(|e| unavailable("rendering a node config", e))?;
    write_atomically(&layout.config(network, &node.name), text.as_bytes())
        .map_err(|e| unavailable("writing a node config", e))
}

fn remove_or_retain(layout: &Layout, id: Uuid, retain: bool) -> Result<(), ProvisionError> {
    let dir = layout.network(id);
    if !dir.exists() {
        return Ok(());
    }
    if retain {
        let target = layout.retained(id);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| unavailable("retaining the ledger", e))?;
        }
        if target.exists() {
            std::fs::remove_dir_all(&target)
                .map_err(|e| unavailable("replacing a retained ledger", e))?;
        }
        std::fs::rename(&dir, &target).map_err(|e| unavailable("retaining the ledger", e))
    } else {
        std::fs::remove_dir_all(&dir).map_err(|e| unavailable("removing the network's data", e))
    }
}

/// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL; children are reaped.
async fn stop_processes(processes: Vec<(ProcessId, Option<Child>)>) {
    for (p, _) in &processes {
        p.terminate();
    }
    let deadline = Instant::now() + STOP_GRACE;
    let mut processes = processes;
    loop {
        for (_, child) in &mut processes {
            if let Some(c) = child {
                let _ = c.try_wait();
            }
        }
        if processes.iter().all(|(p, _)| !p.is_alive()) {
            break;
        }
        if Instant::now() >= deadline {
            for (p, _) in &processes {
                if p.is_alive() {
                    tracing::warn!(pid = p.pid, "node ignored SIGTERM; sending SIGKILL");
                    p.kill();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if Instant::now() >= deadline + Duration::from_secs(5) {
            break;
        }
    }
    for (_, child) in &mut processes {
        if let Some(c) = child {
            let _ = c.try_wait();
        }
    }
}

async fn supervise_forever(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(SUPERVISE_EVERY).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut fleet = inner.fleet.lock().await;
        supervise(&inner, &mut fleet);
    }
}

fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(10);
    (Duration::from_millis(500) * 2u32.pow(exponent)).min(MAX_BACKOFF)
}

/// One pass: start the nodes that should run and do not, stop those that should not.
fn supervise(inner: &Inner, fleet: &mut Fleet) {
    if fleet.stopped {
        return;
    }
    let now = Instant::now();
    let Fleet {
        networks, nodes, ..
    } = fleet;
    for record in networks.values() {
        if record.paused && !record.deleting {
            // Paused: the console reads but changes nothing.
            continue;
        }
        for (chain, node) in record.nodes() {
            let runtime = nodes
                .entry((record.network_id, node.name.clone()))
                .or_insert_with(NodeRuntime::new);
            let alive = runtime.is_alive();
            let wanted = !record.deleting && !record.stopped && !chain.retired && chain.runs(node);
            if !wanted {
                if alive {
                    match runtime.terminating_since {
                        None => {
                            runtime.terminating_since = Some(now);
                            runtime.process.iter().for_each(ProcessId::terminate);
                        }
                        Some(since) if now.duration_since(since) > STOP_GRACE => {
                            runtime.process.iter().for_each(ProcessId::kill);
                        }
                        Some(_) => {}
                    }
                } else {
                    runtime.process = None;
                    runtime.terminating_since = None;
                }
                continue;
            }
            runtime.terminating_since = None;
            if alive {
                continue;
            }
            if let Some(dead) = runtime.process.take() {
                let ran = runtime.started.map(|s| now.duration_since(s));
                runtime.failures = if ran.is_some_and(|r| r > HEALTHY_RUN) {
                    1
                } else {
                    runtime.failures.saturating_add(1)
                };
                runtime.not_before = now + backoff(runtime.failures);
                runtime.restarts += 1;
                tracing::warn!(
                    node = %node.name,
                    pid = dead.pid,
                    restart_in_ms = backoff(runtime.failures).as_millis() as u64,
                    "node exited; restarting it"
                );
            }
            if now < runtime.not_before {
                continue;
            }
            start_node(inner, record.network_id, &node.name, runtime);
        }
    }
}

fn start_node(inner: &Inner, network: Uuid, node: &str, runtime: &mut NodeRuntime) {
    let layout = &inner.layout;
    let config = layout.config(network, node);
    // Never a second process on one data dir: one may run that this console lost track
    // of (it died between spawning and recording).
    if let Some(running) = process::find_running(&config).into_iter().next() {
        runtime.process = Some(running);
        runtime.started = Some(Instant::now());
        return;
    }
    let log = layout.node(network, node).join("node.log");
    match process::spawn(&inner.settings.node_binary, &config, &log) {
        Ok((child, id)) => {
            if let Err(e) = layout.save_process(network, node, &id) {
                tracing::warn!(node, error = %e, "could not record the node's process");
            }
            tracing::debug!(node, pid = id.pid, "node started");
            runtime.process = Some(id);
            runtime.child = Some(child);
            runtime.started = Some(Instant::now());
        }
        Err(e) => {
            runtime.failures = runtime.failures.saturating_add(1);
            runtime.not_before = Instant::now() + backoff(runtime.failures);
            tracing::error!(node, error = %e, "could not start node");
        }
    }
}

/// What one node says about itself.
struct NodeReport {
    status: Option<NodeStatus>,
    ready: bool,
    /// `trellis_txs_committed_total` from its metrics.
    committed: Option<f64>,
}

/// The value of the first sample of `metric` in OpenMetrics text.
fn metric_value(text: &str, metric: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
}

/// Whether the node's `/readyz` answers 200 (connected to a quorum of its committee, not
/// behind it, not waiting for a placement or a handoff).
async fn is_ready(http: &reqwest::Client, node: &NodeRecord) -> bool {
    http.get(format!(
        "http://{}{}",
        rpc_address(node),
        trellis_node_api::READYZ_PATH
    ))
    .send()
    .await
    .is_ok_and(|r| r.status().is_success())
}

async fn ask_node(http: &reqwest::Client, node: &NodeRecord) -> NodeReport {
    let base = format!("http://{}", rpc_address(node));
    let status = async {
        let response = http
            .post(format!("{base}{}", trellis_node_api::RPC_PATH))
            .json(&serde_json::json!({
                "jsonrpc": "2.0", "id": 1, "method": trellis_node_api::methods::STATUS
            }))
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        serde_json::from_value::<NodeStatus>(body.get("result")?.clone()).ok()
    };
    let ready = is_ready(http, node);
    let committed = async {
        let text = http
            .get(format!("{base}{}", trellis_node_api::METRICS_PATH))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metric_value(&text, trellis_node_api::metrics::TXS_COMMITTED_TOTAL)
    };
    let (status, ready, committed) = tokio::join!(status, ready, committed);
    NodeReport {
        status,
        ready,
        committed,
    }
}

/// Quorum of a committee of `n`: `n - f` with `f = ⌊(n-1)/3⌋`.
fn quorum(n: usize) -> usize {
    n - n.saturating_sub(1) / 3
}

impl Provisioner for LocalProvisioner {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn apply<'a>(
        &'a self,
        desired: &'a DesiredNetwork,
    ) -> BoxFuture<'a, Result<(), ProvisionError>> {
        Box::pin(self.apply_desired(desired))
    }

    fn observe<'a>(
        &'a self,
        network: &'a NetworkRef,
    ) -> BoxFuture<'a, Result<Option<ObservedStatus>, ProvisionError>> {
        Box::pin(async move {
            let Some((record, restarts)) = self.observe_network(network.network_id).await else {
                return Ok(None);
            };
            let scaling = match record.sharding {
                Some(_) => self
                    .inner
                    .scaling
                    .lock()
                    .await
                    .get(&record.network_id)
                    .cloned(),
                None => None,
            };
            let active: Vec<&ChainRecord> = record.chains.iter().filter(|c| !c.retired).collect();
            let mut shards = Vec::new();
            let mut endpoints = Vec::new();
            let mut epoch = 0;
            let mut quorate = true;
            let mut all_ready = true;
            let mut ever_final = false;
            let mut waiting = Vec::new();
            for chain in &active {
                if chain.is_pool() {
                    // Not a committee: its validators vote in the shards the beacon
                    // placed them in, and the ready ones serve clients there.
                    let placed = scaling
                        .as_ref()
                        .and_then(|s| s.map.as_ref())
                        .map(|map| pool::placed(&record, map))
                        .unwrap_or_default();
                    let ready = futures::future::join_all(
                        placed.iter().map(|(_, n)| is_ready(&self.inner.http, n)),
                    )
                    .await;
                    let ready: Vec<&NodeRecord> = placed
                        .iter()
                        .zip(ready)
                        .filter_map(|((_, n), ready)| ready.then_some(*n))
                        .collect();
                    endpoints.extend(ready.iter().map(|n| node_url(n)));
                    self.inner.pool_ready.lock().await.insert(
                        record.network_id,
                        ready.iter().map(|n| n.name.clone()).collect(),
                    );
                    continue;
                }
                let validators: Vec<&NodeRecord> =
                    chain.nodes.iter().filter(|n| chain.runs(n)).collect();
                waiting.extend(
                    chain
                        .nodes
                        .iter()
                        .filter(|n| n.awaits_admission() && n.member.is_some())
                        .map(|n| (n.name.clone(), "waits for its admission on chain")),
                );
                waiting.extend(
                    chain
                        .nodes
                        .iter()
                        .filter(|n| n.leaving && !n.removed)
                        .map(|n| (n.name.clone(), "leaves the chain by governance")),
                );
                let reports = futures::future::join_all(
                    validators.iter().map(|n| ask_node(&self.inner.http, n)),
                )
                .await;
                let ready = reports.iter().filter(|r| r.ready).count();
                let statuses: Vec<&NodeStatus> =
                    reports.iter().filter_map(|r| r.status.as_ref()).collect();
                let height = statuses
                    .iter()
                    .map(|s| s.finalized_height)
                    .max()
                    .unwrap_or(0);
                epoch = epoch.max(statuses.iter().map(|s| s.epoch).max().unwrap_or(0));
                quorate &= ready >= quorum(validators.len());
                all_ready &= ready == validators.len();
                ever_final |= height > 0;
                if chain.is_beacon() {
                    // Not a shard: its epoch and map speak through the beacon's map.
                    continue;
                }
                shards.push(ShardStatus {
                    id: u32::from(chain.shard),
                    ready_validators: u32::try_from(ready).unwrap_or(u32::MAX),
                    finalized_height: height,
                    tx_per_second: self
                        .tx_rate(
                            &format!("{}/{:?}", chain.chain_id, chain.key()),
                            reports
                                .iter()
                                .filter_map(|r| r.committed)
                                .fold(0.0, f64::max),
                        )
                        .await,
                    mempool_depth: statuses
                        .iter()
                        .map(|s| s.mempool_depth as u64)
                        .max()
                        .unwrap_or(0),
                });
                endpoints.extend(validators.iter().map(|n| node_url(n)));
            }
            let map = scaling.as_ref().and_then(|s| s.map.as_ref());
            // The beacon's word on the shard count and epoch, once it answered.
            let shard_count = match map {
                Some(map) => u32::from(map.shard_count),
                None => u32::try_from(
                    active
                        .iter()
                        .filter(|c| !c.is_beacon() && !c.is_pool() && !c.draining)
                        .count(),
                )
                .unwrap_or(u32::MAX),
            };
            if let Some(map) = map {
                epoch = map.epoch;
            }
            let scaling_now = record.sharding.as_ref().is_some_and(|sharding| {
                active.iter().any(|c| c.draining)
                    || map.is_some_and(|m| m.shard_count != sharding.shard_count)
            });
            let phase = if record.stopped {
                ObservedPhase::Stopped
            } else if record.paused {
                ObservedPhase::Paused
            } else if scaling_now && (quorate || ever_final) {
                ObservedPhase::Scaling
            } else if quorate && all_ready {
                ObservedPhase::Running
            } else if quorate || ever_final {
                ObservedPhase::Degraded
            } else {
                ObservedPhase::Provisioning
            };
            let mut message: Vec<String> = record.note.iter().cloned().collect();
            message.extend(scaling.and_then(|s| s.note));
            if !waiting.is_empty() {
                let notes = self.inner.admission_notes.lock().await;
                for (name, what) in &waiting {
                    message.push(
                        notes
                            .get(&(record.network_id, name.clone()))
                            .cloned()
                            .unwrap_or_else(|| format!("{name} {what}")),
                    );
                }
            }
            let restarted: Vec<String> = restarts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(name, n)| format!("{name} ×{n}"))
                .collect();
            if !restarted.is_empty() {
                message.push(format!("restarted nodes: {}", restarted.join(", ")));
            }
            Ok(Some(ObservedStatus {
                observed_generation: record.generation,
                phase,
                shard_count,
                epoch,
                shards,
                rpc_endpoints: endpoints,
                message: (!message.is_empty()).then(|| message.join("; ")),
            }))
        })
    }

    fn delete<'a>(
        &'a self,
        network: &'a NetworkRef,
        retain_ledger: bool,
    ) -> BoxFuture<'a, Result<(), ProvisionError>> {
        Box::pin(self.delete_network(network.network_id, retain_ledger))
    }

    fn network_load<'a>(
        &'a self,
        network: &'a NetworkRef,
    ) -> BoxFuture<'a, Result<Option<NetworkLoad>, ProvisionError>> {
        Box::pin(async move {
            let record = {
                let fleet = self.inner.fleet.lock().await;
                fleet.networks.get(&network.network_id).cloned()
            };
            match record {
                Some(record) if !record.paused && !record.stopped && !record.deleting => {
                    load::network_load(&self.inner, &record).await
                }
                _ => Ok(None),
            }
        })
    }

    fn member_governance<'a>(
        &'a self,
        network: &'a NetworkRef,
        organisation: &'a str,
    ) -> BoxFuture<'a, Result<Option<MemberChainState>, ProvisionError>> {
        Box::pin(async move {
            let key = (network.network_id, super::kube::member_name(organisation));
            Ok(self.inner.admission_states.lock().await.get(&key).cloned())
        })
    }

    fn rpc_endpoints<'a>(
        &'a self,
        network: &'a NetworkRef,
    ) -> BoxFuture<'a, Result<Vec<RpcEndpoint>, ProvisionError>> {
        Box::pin(async move {
            let Some(record) = self
                .inner
                .fleet
                .lock()
                .await
                .networks
                .get(&network.network_id)
                .cloned()
            else {
                return Ok(Vec::new());
            };
            if record.stopped || record.deleting {
                return Ok(Vec::new());
            }
            // Shard nodes only: any of them forwards a transaction to the shard that owns
            // its sender (and a system transaction to the beacon); the beacon's nodes
            // would answer queries about accounts and transactions from no ledger. Pool
            // validators count with the shard the beacon's map places them in, once the
            // last observation found them ready.
            let mut endpoints: Vec<RpcEndpoint> = record
                .nodes()
                .filter(|(c, n)| !c.retired && !c.is_beacon() && !c.is_pool() && c.runs(n))
                .map(|(chain, node)| RpcEndpoint {
                    shard: Some(u32::from(chain.shard)),
                    url: node_url(node),
                })
                .collect();
            let ready = self
                .inner
                .pool_ready
                .lock()
                .await
                .get(&record.network_id)
                .cloned()
                .unwrap_or_default();
            let scaling = self.inner.scaling.lock().await;
            if let Some(map) = scaling.get(&record.network_id).and_then(|s| s.map.as_ref()) {
                endpoints.extend(
                    pool::placed(&record, map)
                        .into_iter()
                        .filter(|(_, node)| ready.contains(&node.name))
                        .map(|(shard, node)| RpcEndpoint {
                            shard: Some(u32::from(shard)),
                            url: node_url(node),
                        }),
                );
            }
            Ok(endpoints)
        })
    }
}

fn node_url(node: &NodeRecord) -> String {
    format!("http://{}{}", rpc_address(node), trellis_node_api::RPC_PATH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_members_nodes_leave_and_never_run_unless_the_chain_counts_them() {
        let node = |name: &str, in_genesis: bool, removed: bool| NodeRecord {
            name: name.into(),
            member: Some("m".into()),
            address: Ipv4Addr::new(127, 0, 2, 1),
            node_public_key: "cd".repeat(32),
            admin_public_key: "ef".repeat(32),
            in_genesis,
            admitted: false,
            registered: false,
            leaving: false,
            removed,
        };
        let old = ChainRecord {
            shard: 0,
            chain_id: "c".into(),
            role: None,
            nodes: vec![
                node("stays", true, false),
                node("validator", true, false),
                node("waiting", false, false),
                node("gone", true, true),
            ],
            draining: false,
            retired: false,
        };
        let planned = vec![node("stays", true, false)];
        let away = departing(&old, &planned);
        let names: Vec<&str> = away.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["validator", "waiting", "gone"]);
        let chain = ChainRecord {
            nodes: away.clone(),
            ..old.clone()
        };
        // A validator keeps running until the chain removed it; a node never admitted
        // does not start; a removed one never runs again.
        assert!(away[0].leaving && chain.runs(&away[0]));
        assert!(away[1].leaving && !chain.runs(&away[1]) && !away[1].awaits_admission());
        assert!(!away[2].leaving && away[2].removed && !chain.runs(&away[2]));
    }

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn metric_values_are_read_from_openmetrics_text() {
        let text = "# HELP trellis_txs_committed_total x\n\
                    # TYPE trellis_txs_committed_total counter\n\
                    trellis_txs_committed_total_created{network=\"n\"} 1.7e9\n\
                    trellis_txs_committed_total{network=\"n\",shard=\"0\"} 42\n";
        assert_eq!(
            metric_value(text, "trellis_txs_committed_total"),
            Some(42.0)
        );
        assert_eq!(metric_value(text, "trellis_peers"), None);
    }

    #[test]
    fn the_genesis_map_gives_shards_contiguous_table_ranges() {
        // docs/sharding.md: table t belongs to shard t·S/256 at genesis.
        assert_eq!(genesis_owner(0, 2), 0);
        assert_eq!(genesis_owner(127, 2), 0);
        assert_eq!(genesis_owner(128, 2), 1);
        assert_eq!(genesis_owner(255, 3), 2);
        assert_eq!(genesis_owner(200, 1), 0);
        for shards in [1u16, 2, 3, 7, 256] {
            let owners: BTreeSet<u16> = (0..=255u8).map(|t| genesis_owner(t, shards)).collect();
            assert_eq!(owners, (0..shards).collect::<BTreeSet<_>>());
        }
    }

    #[test]
    fn quorum_is_n_minus_f() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(3), 3);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(7), 5);
    }
}
