//! `trellis-node run`: a validator on tokio with authenticated p2p, plus the HTTP API.

use crate::chain::{MAX_MESSAGE_SIZE, NodeState, ShardPlace};
use crate::engine::{
    CHANNELS, Channels, PeerSets, Timing, ValidatorConfig, channel_quota, start_node,
};
use crate::governance::Registry;
use crate::metrics::ChainMetrics;
use crate::placement::{Placement, shard_dir, waiting_dir};
use crate::rpc::{PeerTracker, Rpc, router};
use anyhow::{Context as _, anyhow, bail};
use commonware_cryptography::ChaCha20Poly1305;
use commonware_p2p::authenticated::lookup;
use commonware_p2p::{Address, AddressableManager, AddressableTrackedPeers, Receiver};
use commonware_runtime::{Runner, Spawner, Supervisor};
use commonware_stream::cups::{self, Cups};
use commonware_stream::sake::{self, Sake};
use commonware_utils::ordered::Map;
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};
use trellis_node_api::{Genesis, NodeConfig, Role};
use trellis_node_beacon::{BeaconGenesis, BeaconState};
use trellis_node_state::RedbKv;
use trellis_node_types::{
    Committee, Encode, PrivateKey, PublicKey, Signer, private_key_from_hex,
    private_key_from_seed_bytes, public_key_from_hex, to_hex,
};

/// The key file written by `trellis-node keygen` (JSON, mode 0600).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// Hex ed25519 private key of the node: p2p identity and consensus signer.
    pub node_key: String,
    pub node_public_key: String,
    /// Hex ed25519 private key that signs governance for the member.
    pub admin_key: String,
    pub admin_public_key: String,
}

fn random_key() -> anyhow::Result<PrivateKey> {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    private_key_from_seed_bytes(seed).ok_or_else(|| anyhow!("could not derive a key"))
}

impl KeyFile {
    pub fn generate() -> anyhow::Result<Self> {
        let node = random_key()?;
        let admin = random_key()?;
        Ok(Self {
            node_key: to_hex(&node.encode()),
            node_public_key: to_hex(node.public_key().as_ref()),
            admin_key: to_hex(&admin.encode()),
            admin_public_key: to_hex(admin.public_key().as_ref()),
        })
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading key file {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Writes the key file readable by its owner only.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating key file {}", path.display()))?;
        file.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        Ok(())
    }

    pub fn node_key(&self) -> anyhow::Result<PrivateKey> {
        let key = private_key_from_hex(&self.node_key).ok_or_else(|| anyhow!("bad node_key"))?;
        if to_hex(key.public_key().as_ref()) != self.node_public_key.to_ascii_lowercase() {
            bail!("node_public_key does not match node_key");
        }
        Ok(key)
    }
}

/// A counting wrapper: every consensus message marks its sender as connected.
#[derive(Debug)]
pub struct Observed<R> {
    inner: R,
    peers: PeerTracker,
}

impl<R: Receiver<PublicKey = PublicKey>> Receiver for Observed<R> {
    type Error = R::Error;
    type PublicKey = PublicKey;

    async fn recv(&mut self) -> Result<commonware_p2p::Message<PublicKey>, Self::Error> {
        let message = self.inner.recv().await?;
        self.peers.saw(&message.0);
        Ok(message)
    }

    fn capacity(&self) -> NonZeroUsize {
        self.inner.capacity()
    }
}

/// Everything `run` derives from the config and genesis files before starting.
pub struct Plan {
    pub config: NodeConfig,
    pub genesis: Genesis,
    pub key: PrivateKey,
    pub validators: Vec<PublicKey>,
    pub peers: Vec<(PublicKey, SocketAddr)>,
    pub balances: Vec<(PublicKey, u64)>,
    /// Sharded networks: the committee this node validates in and what it owns.
    pub place: Option<ShardPlace>,
    /// `shard = "any"` validators: where the beacon placed it (`config.data_dir` is then
    /// that shard's directory under `data_root`).
    pub any_shard: Option<AnyShard>,
}

/// A `shard = "any"` validator's placement at start-up (see [`crate::placement`]).
#[derive(Clone, Debug)]
pub struct AnyShard {
    /// The configured `data_dir`: `placement.json`, `shard-N/`, `unplaced/`.
    pub data_root: PathBuf,
    pub placement: Placement,
}

/// How [`run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Stopped on request (SIGTERM, Ctrl-C).
    Stopped,
    /// A `shard = "any"` validator was moved (or placed) by the beacon: the new placement
    /// is recorded; the caller restarts the process ([`restart`]) to serve it.
    Moved,
}

/// Replaces this process by a fresh run of the same binary with the same arguments
/// (same PID, so a supervisor sees nothing): a moved `shard = "any"` validator takes
/// the ordinary start-up path into its new shard. Returns only on failure.
pub fn restart() -> anyhow::Error {
    use std::os::unix::process::CommandExt as _;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "trellis-node".into());
    let error = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .exec();
    anyhow!(error).context("restarting the process to serve its new shard (exec /proc/self/exe)")
}

/// A committee's validators as the genesis names them: (hex node key, p2p address).
type CommitteeSpec = Vec<(String, String)>;

/// The genesis beacon state of a sharded network (its committees and table map).
pub fn genesis_beacon(genesis: &Genesis) -> anyhow::Result<Option<BeaconState>> {
    let Some(sharding) = &genesis.sharding else {
        return Ok(None);
    };
    let beacon = BeaconGenesis::from_contract(
        &genesis.chain_id,
        genesis.epoch_length,
        &genesis.members,
        sharding,
    )
    .and_then(BeaconState::genesis)
    .map_err(|e| anyhow!("sharding section of the genesis: {e}"))?;
    Ok(Some(beacon))
}

/// The committee `role` names in `genesis`, with its validators.
fn committee_of(
    genesis: &Genesis,
    role: Role,
) -> anyhow::Result<(CommitteeSpec, Option<ShardPlace>)> {
    let seats = |seats: &[trellis_node_beacon::Seat]| -> CommitteeSpec {
        seats
            .iter()
            .map(|s| (to_hex(s.node_key.as_ref()), s.p2p_address.clone()))
            .collect()
    };
    match (genesis_beacon(genesis)?, role) {
        (None, Role::Shard { shard: 0 }) => Ok((
            genesis
                .members
                .iter()
                .map(|m| (m.node_key.to_ascii_lowercase(), m.p2p_address.clone()))
                .collect(),
            None,
        )),
        (None, Role::Shard { shard }) => bail!(
            "role shard {shard}: this genesis has no sharding section, so its only committee is shard 0"
        ),
        (None, Role::Beacon) => {
            bail!("role beacon needs a sharded network (a genesis with a sharding section)")
        }
        (_, Role::AnyShard) => bail!(
            "role shard = \"any\" is resolved to the shard the beacon places the node in \
             before its committee is read"
        ),
        (Some(beacon), Role::Beacon) => Ok((
            seats(beacon.beacon_validators()),
            Some(ShardPlace {
                committee: Committee::Beacon,
                tables: Vec::new(),
                beacon_height: 0,
            }),
        )),
        (Some(beacon), Role::Shard { shard }) => {
            if shard >= beacon.max_shards() {
                bail!(
                    "shard {shard} is outside 0..{} (the genesis max_shards)",
                    beacon.max_shards()
                );
            }
            if shard >= beacon.shard_count() {
                // A slot the beacon creates later (live resharding): the node follows the
                // beacon and waits until the beacon's committee of the slot includes it.
                return Ok((
                    Vec::new(),
                    Some(ShardPlace {
                        committee: Committee::Shard(shard),
                        tables: Vec::new(),
                        beacon_height: 0,
                    }),
                ));
            }
            let Some(committee) = beacon.committee(shard).filter(|c| !c.is_empty()) else {
                bail!("shard {shard} has no validators in the genesis beacon state");
            };
            let tables = (0..=255u8).filter(|t| beacon.owner(*t) == shard).collect();
            Ok((
                seats(committee),
                Some(ShardPlace {
                    committee: Committee::Shard(shard),
                    tables,
                    beacon_height: 0,
                }),
            ))
        }
    }
}

fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    address
        .to_socket_addrs()
        .with_context(|| format!("resolving {address}"))?
        .next()
        .ok_or_else(|| anyhow!("{address} resolves to nothing"))
}

impl Plan {
    pub fn load(mut config: NodeConfig) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(&config.genesis_file)
            .with_context(|| format!("reading genesis {}", config.genesis_file.display()))?;
        let genesis = Genesis::from_json(&text)?;
        if genesis.chain_id != config.chain_id {
            bail!(
                "config chain_id {} differs from genesis {}",
                config.chain_id,
                genesis.chain_id
            );
        }
        let key = KeyFile::load(&config.key_file)?.node_key()?;
        let me = to_hex(key.public_key().as_ref());
        let any_shard = match config.role {
            Role::AnyShard => Some(any_shard(&mut config, &genesis, &me)?),
            _ => None,
        };
        let (committee, place) = match &any_shard {
            Some(AnyShard {
                placement: Placement {
                    shard: Some(shard), ..
                },
                ..
            }) => committee_of(&genesis, Role::Shard { shard: *shard })?,
            // Unplaced: no committee until the beacon places the node (`run_unplaced`).
            Some(_) => (Vec::new(), None),
            None => committee_of(&genesis, config.role)?,
        };
        if let Some(place) = &place
            && any_shard.is_none()
            && !committee.is_empty()
            && !committee.iter().any(|(k, _)| *k == me)
        {
            if place.committee == Committee::Beacon {
                bail!(
                    "this node's key {me} is not a validator of the beacon committee in the genesis"
                );
            }
            // A shard validator registered after the genesis (`trellis-node system
            // register-validator`) follows its shard's chain and starts voting at the
            // epoch the beacon puts it in the committee.
            warn!(
                "this node's key {me} is not a validator of the {} committee in the genesis: it \
                 follows the chain and votes once the beacon places it in the committee \
                 (register it with `trellis-node system register-validator`)",
                place.committee.name()
            );
        }
        let mut validators = Vec::new();
        let mut peers = Vec::new();
        for (node_key, p2p_address) in &committee {
            let pk = public_key_from_hex(node_key)
                .ok_or_else(|| anyhow!("validator {node_key} has an invalid node key"))?;
            // A bootstrap entry for the same key overrides the genesis address (e.g. a
            // Kubernetes Service name instead of the address used at genesis time).
            let address = config
                .bootstrap_peers
                .iter()
                .find(|p| p.public_key.eq_ignore_ascii_case(node_key))
                .map_or(p2p_address.as_str(), |p| p.address.as_str());
            let address = if pk == key.public_key() {
                config.p2p_external.unwrap_or(config.p2p_listen)
            } else {
                resolve(address)?
            };
            validators.push(pk.clone());
            peers.push((pk, address));
        }
        validators.sort();
        // Bootstrap entries for members admitted after genesis: where to dial them.
        for peer in &config.bootstrap_peers {
            let pk = public_key_from_hex(&peer.public_key)
                .ok_or_else(|| anyhow!("bootstrap peer {} has an invalid key", peer.address))?;
            if !peers.iter().any(|(k, _)| *k == pk) {
                peers.push((pk, resolve(&peer.address)?));
            }
        }
        let mut balances = Vec::new();
        for b in &genesis.balances {
            let pk = public_key_from_hex(&b.account)
                .ok_or_else(|| anyhow!("invalid genesis account {}", b.account))?;
            balances.push((pk, b.amount));
        }
        Ok(Self {
            config,
            genesis,
            key,
            validators,
            peers,
            balances,
            place,
            any_shard,
        })
    }

    /// The role `trellis_status` reports: a placed `shard = "any"` validator's shard.
    fn serving_role(&self) -> Role {
        match (&self.any_shard, &self.place) {
            (Some(_), Some(place)) => match place.committee {
                Committee::Shard(shard) => Role::Shard { shard },
                Committee::Beacon => Role::Beacon,
            },
            _ => self.config.role,
        }
    }
}

/// Resolves a `shard = "any"` role: checks the network can place the node, reads its
/// recorded placement and points `config.data_dir` at that shard's directory.
fn any_shard(config: &mut NodeConfig, genesis: &Genesis, me: &str) -> anyhow::Result<AnyShard> {
    let Some(beacon) = genesis_beacon(genesis)? else {
        bail!(
            "role shard = \"any\" needs a sharded network (a genesis with a sharding \
             section); an unsharded network has one committee: use shard = 0"
        );
    };
    if beacon
        .beacon_validators()
        .iter()
        .any(|s| to_hex(s.node_key.as_ref()) == me)
    {
        bail!(
            "this node's key {me} is a beacon validator: use [role] kind = \"beacon\" (a node \
             validates one committee only)"
        );
    }
    let data_root = config.data_dir.clone();
    let placement = Placement::load(&data_root)?.unwrap_or(Placement {
        shard: None,
        epoch: 0,
    });
    if let Some(shard) = placement.shard {
        if shard >= beacon.max_shards() {
            bail!(
                "{} names shard {shard}, outside 0..{} (max_shards); remove it and the node \
                 finds its shard from the beacon again",
                data_root.join(crate::placement::PLACEMENT_FILE).display(),
                beacon.max_shards()
            );
        }
        config.data_dir = shard_dir(&data_root, shard);
        info!(
            shard,
            epoch = placement.epoch,
            "serving shard {shard}, where the beacon placed this validator"
        );
    } else {
        config.data_dir = waiting_dir(&data_root);
    }
    Ok(AnyShard {
        data_root,
        placement,
    })
}

/// Where to dial each peer: the config's bootstrap overrides and the genesis addresses
/// (resolved at start-up), otherwise the address governance admitted it with.
struct PeerAddresses {
    me: PublicKey,
    own: SocketAddr,
    overrides: Vec<(PublicKey, SocketAddr)>,
}

impl PeerAddresses {
    fn directory(&self, peers: &[(PublicKey, String)]) -> Vec<(PublicKey, Address)> {
        let mut out = Vec::new();
        for (key, address) in peers {
            let resolved = if *key == self.me {
                Some(self.own)
            } else if let Some((_, a)) = self.overrides.iter().find(|(k, _)| k == key) {
                Some(*a)
            } else {
                match resolve(address) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        warn!(error = %e, "peer address does not resolve; peer left out");
                        None
                    }
                }
            };
            if let Some(a) = resolved {
                out.push((key.clone(), Address::from(a)));
            }
        }
        out
    }
}

/// The largest p2p peer set (this node included): governance can grow the consortium up
/// to the approval limit.
const MAX_PEERS_PER_SET: usize = trellis_node_types::governance::MAX_APPROVALS + 1;

/// Time allowed for one request to another committee's node.
const RELAY_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the node until the process is stopped, or until the beacon moves a `shard =
/// "any"` validator ([`Exit::Moved`]).
pub fn run(plan: Plan) -> anyhow::Result<Exit> {
    if plan
        .any_shard
        .as_ref()
        .is_some_and(|a| a.placement.shard.is_none())
    {
        return run_unplaced(plan);
    }
    let config = plan.config.clone();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let kv = RedbKv::open(&config.data_dir.join("state.redb"))?;
    // A sharded network's committee is fixed by its genesis (and later by the beacon);
    // consortium governance runs in unsharded networks.
    let registry = match &plan.place {
        None => Registry::from_genesis(&plan.genesis),
        Some(_) => Registry::fixed(&plan.validators),
    };
    let mut state = NodeState::open_consortium_in(
        kv,
        &config.chain_id,
        &plan.balances,
        config.mempool.max_txs,
        registry,
        plan.place.clone(),
    )?;
    let mut beacon_rpc = Vec::new();
    if let Some(beacon) = genesis_beacon(&plan.genesis)? {
        beacon_rpc = beacon
            .beacon_validators()
            .iter()
            .map(|s| s.rpc_address.clone())
            .collect();
        state = state.with_beacon(beacon)?;
        crate::follower::restore(&mut state, &config.chain_id)?;
    }
    let follows = plan
        .place
        .as_ref()
        .is_some_and(|p| p.committee != Committee::Beacon);
    let state = Arc::new(Mutex::new(state));
    let role = plan.serving_role();
    let committee = match role {
        Role::Shard { shard } => shard.to_string(),
        Role::Beacon => "beacon".to_string(),
        Role::AnyShard => "any".to_string(),
    };
    let metrics = ChainMetrics::for_committee(&config.chain_id, &committee);
    let peers = PeerTracker::default();
    // One HTTP client to the other committees: the beacon follower, credit gathering and
    // forwarded requests all go through it.
    let relay = Arc::new(crate::relay::HttpRelay::new(beacon_rpc, RELAY_TIMEOUT)?);
    let rpc = Arc::new(Rpc {
        chain_id: config.chain_id.clone(),
        role,
        node_key: plan.key.public_key(),
        validators: plan.validators.clone(),
        state: state.clone(),
        metrics: metrics.clone(),
        peers: peers.clone(),
        relay: relay.clone(),
    });
    runner(&config.data_dir).start(|context| async move {
        let handshake = Cups::<_, ChaCha20Poly1305>::new(
            Sake {
                signer: plan.key.clone(),
                synchrony_bound: Duration::from_secs(5),
                max_handshake_age: Duration::from_secs(10),
                version: sake::Version::V1,
            },
            cups::Version::V1,
        );
        // Committees of a sharded network are separate p2p networks.
        let mut namespace = [b"_TRELLIS_P2P_".as_slice(), config.chain_id.as_bytes()].concat();
        if let Some(place) = &plan.place {
            namespace.push(b'/');
            namespace.extend_from_slice(place.committee.name().as_bytes());
        }
        let mut p2p = lookup::Config::local(
            handshake,
            &namespace,
            config.p2p_listen,
            // Governance can grow the consortium up to the approval limit.
            NonZeroUsize::new(MAX_PEERS_PER_SET).unwrap_or(NonZeroUsize::MIN),
            MAX_MESSAGE_SIZE,
            NonZeroUsize::MIN.saturating_add(1023),
        );
        // Identity, not IP, is what admits a peer: the handshake authenticates the peer's
        // ed25519 key against the member set. Source IPs do not match the dialled
        // addresses on loopback aliases or behind Kubernetes Services, so the IP filter
        // stays off.
        p2p.bypass_ip_check = true;
        // Only the latest peer set counts: a member removed by governance is
        // disconnected and refused as soon as the epoch that drops it starts. A shard's
        // "any" validators outside this epoch's committee stay admitted as followers
        // (accepted, never dialled): one the shuffle moved on while it still replays an
        // older epoch of this shard can catch up instead of being refused by every peer.
        p2p.tracked_peer_sets = NonZeroUsize::MIN;
        let (mut network, oracle) = lookup::Network::new(context.child("p2p"), p2p);
        // Consortium mode: the peer set is exactly the admitted members' node keys (the
        // member registry's, updated by governance); the handshake refuses anyone else.
        let mut tracker = oracle.clone();
        let addresses = PeerAddresses {
            me: plan.key.public_key(),
            own: config.p2p_external.unwrap_or(config.p2p_listen),
            overrides: plan.peers.clone(),
        };
        let peer_sets: PeerSets = Box::new(move |id, peers, followers| {
            let directory = Map::from_iter_dedup(addresses.directory(peers));
            // p2p refuses a set larger than its limit (this node included): the
            // committee first, then as many followers as fit.
            let room = MAX_PEERS_PER_SET.saturating_sub(directory.len() + 1);
            if followers.len() > room {
                warn!(
                    id,
                    followers = followers.len(),
                    room,
                    "too many catching-up validators for one p2p peer set; some left out"
                );
            }
            let followers = Map::from_iter_dedup(
                addresses
                    .directory(followers)
                    .into_iter()
                    .filter(|(k, _)| directory.position(k).is_none())
                    .take(room),
            );
            info!(
                id,
                peers = peers.len(),
                followers = followers.len(),
                "registering the p2p peer set"
            );
            let _ = tracker.track(id, AddressableTrackedPeers::new(directory, followers));
        });
        let mut pairs = Vec::new();
        for channel in CHANNELS {
            let (sender, receiver) = network.register(channel, channel_quota(channel));
            pairs.push((
                sender,
                Observed {
                    inner: receiver,
                    peers: peers.clone(),
                },
            ));
        }
        let channels =
            Channels::from_pairs(pairs).ok_or_else(|| anyhow!("channel registration"))?;
        network.start();
        let (chain, engine) = start_node(
            context.child("validator"),
            plan.key.clone(),
            ValidatorConfig {
                chain_id: config.chain_id.clone(),
                block_txs: 5_000,
                timing: Timing::default(),
                partition: "consensus".into(),
            },
            state,
            metrics,
            oracle,
            channels,
            Some(peer_sets),
        )?;
        if follows {
            let (state, chain_id) = (rpc.state.clone(), config.chain_id.clone());
            let source = crate::relay::RelayBeacon(relay.clone());
            context.child("follower").spawn(move |context| {
                crate::follower::follow(
                    context,
                    state,
                    chain_id,
                    source,
                    Duration::from_millis(500),
                )
            });
            let (state, chain_id) = (rpc.state.clone(), config.chain_id.clone());
            let handoff = crate::handoff::HttpHandoff(relay.clone());
            context.child("handoff").spawn(move |context| {
                crate::handoff::run(
                    context,
                    state,
                    chain_id,
                    handoff,
                    Duration::from_millis(200),
                )
            });
            let (state, chain_id) = (rpc.state.clone(), config.chain_id.clone());
            let me = plan.key.public_key();
            context.child("credits").spawn(move |context| {
                crate::cross_shard::run(context, state, chain_id, relay, Default::default(), me)
            });
        }
        // A `shard = "any"` validator leaves when the beacon moves it (after its last
        // duty here); other nodes never do.
        let watched = match (&plan.any_shard, role) {
            (Some(any), Role::Shard { shard }) => Some((any.clone(), shard)),
            _ => None,
        };
        let (state, me) = (rpc.state.clone(), plan.key.public_key());
        let pool_to = crate::handoff::HttpHandoff(rpc.relay.clone());
        let mover = context.child("placement").spawn(move |context| async move {
            match watched {
                Some((any, serving)) => {
                    crate::placement::watch(
                        context,
                        state,
                        pool_to,
                        me,
                        serving,
                        crate::placement::Recorded {
                            data_dir: any.data_root,
                            floor: any.placement.epoch,
                        },
                        Duration::from_millis(250),
                    )
                    .await
                }
                None => futures::future::pending().await,
            }
        });
        let server = serve_rpc(&context, config.rpc_listen, rpc).await?;
        info!(rpc = %config.rpc_listen, p2p = %config.p2p_listen, "trellis-node running");
        tokio::select! {
            r = chain => Err(anyhow!("chain actor stopped: {r:?}")),
            r = engine => Err(anyhow!("consensus engine stopped: {r:?}")),
            r = server => Err(anyhow!("RPC server stopped: {r:?}")),
            r = mover => moved(r),
            r = stop_requested() => r.map(|()| Exit::Stopped),
        }
    })
}

/// The end of the placement task: moved, or why it failed.
fn moved(r: Result<anyhow::Result<Placement>, commonware_runtime::Error>) -> anyhow::Result<Exit> {
    match r {
        Ok(Ok(_)) => Ok(Exit::Moved),
        Ok(Err(e)) => Err(e.context("recording the new placement")),
        Err(e) => Err(anyhow!("placement task stopped: {e:?}")),
    }
}

/// A `shard = "any"` validator the beacon has not placed (yet): follows the beacon
/// (state under `data_dir/unplaced/`), answers RPC — `trellis_status.waiting` and
/// `/readyz` say why it waits; requests for shards are forwarded — and ends with
/// [`Exit::Moved`] once the beacon places it.
fn run_unplaced(plan: Plan) -> anyhow::Result<Exit> {
    let config = plan.config.clone();
    let any = plan
        .any_shard
        .clone()
        .ok_or_else(|| anyhow!("run_unplaced needs a shard = \"any\" role"))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let beacon = genesis_beacon(&plan.genesis)?
        .ok_or_else(|| anyhow!("shard = \"any\" needs a sharded network"))?;
    let beacon_rpc = beacon
        .beacon_validators()
        .iter()
        .map(|s| s.rpc_address.clone())
        .collect();
    // The followed beacon state is kept like a shard node's, in the place of slot "any"
    // (65535, never a real slot): it owns no table and routes every request to its shard.
    let place = ShardPlace {
        committee: Committee::Shard(trellis_node_types::system::ANY_SHARD),
        tables: Vec::new(),
        beacon_height: 0,
    };
    let kv = RedbKv::open(&config.data_dir.join("state.redb"))?;
    let mut state =
        NodeState::open_in(kv, &config.chain_id, &[], 1, Some(place))?.with_beacon(beacon)?;
    crate::follower::restore(&mut state, &config.chain_id)?;
    state.unplaced = Some(
        "waiting for the beacon to place this validator in a shard (following the beacon)".into(),
    );
    let state = Arc::new(Mutex::new(state));
    let relay = Arc::new(crate::relay::HttpRelay::new(beacon_rpc, RELAY_TIMEOUT)?);
    let rpc = Arc::new(Rpc {
        chain_id: config.chain_id.clone(),
        role: Role::AnyShard,
        node_key: plan.key.public_key(),
        validators: Vec::new(),
        state: state.clone(),
        metrics: ChainMetrics::for_committee(&config.chain_id, "any"),
        peers: PeerTracker::default(),
        relay: relay.clone(),
    });
    runner(&config.data_dir).start(|context| async move {
        let server = serve_rpc(&context, config.rpc_listen, rpc).await?;
        info!(rpc = %config.rpc_listen, "trellis-node waiting to be placed in a shard");
        let (chain_id, me) = (config.chain_id.clone(), plan.key.public_key());
        let waiter = context.child("placement").spawn(move |context| {
            crate::placement::wait_until_placed(
                context,
                state,
                chain_id,
                crate::relay::RelayBeacon(relay),
                me,
                crate::placement::Recorded {
                    data_dir: any.data_root,
                    floor: any.placement.epoch,
                },
                Duration::from_millis(500),
            )
        });
        tokio::select! {
            r = waiter => moved(r),
            r = server => Err(anyhow!("RPC server stopped: {r:?}")),
            r = stop_requested() => r.map(|()| Exit::Stopped),
        }
    })
}

/// The runtime a node runs on; consensus keeps its journals under `data_dir/consensus`.
fn runner(data_dir: &Path) -> commonware_runtime::tokio::Runner {
    commonware_runtime::tokio::Runner::new(
        commonware_runtime::tokio::Config::new()
            .with_storage_directory(data_dir.join("consensus"))
            .with_catch_panics(false),
    )
}

/// Binds the JSON-RPC listener on `listen` and serves `rpc` on a task of its own.
async fn serve_rpc(
    context: &commonware_runtime::tokio::Context,
    listen: SocketAddr,
    rpc: Arc<Rpc<RedbKv>>,
) -> anyhow::Result<commonware_runtime::Handle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding RPC on {listen}"))?;
    let app = router(rpc);
    Ok(context
        .child("rpc")
        .spawn(move |_| async move { axum::serve(listener, app).await }))
}

/// Ctrl-C or SIGTERM (what Kubernetes and the local provisioner send) ends `run`
/// cleanly, so `main` flushes the OTLP exporters before the process exits.
async fn stop_requested() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C"),
        _ = terminate.recv() => {
            info!("SIGTERM received; stopping");
            Ok(())
        }
    }
}
