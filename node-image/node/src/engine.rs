//! Wires one validator: the chain actor and a simplex consensus engine over five p2p
//! channels. Generic over the commonware runtime and p2p implementation, so the binary
//! (tokio + authenticated p2p) and the simulation tests (deterministic runtime + simulated
//! network) run exactly this code.

use crate::chain::{self, ChainConfig, Membership, NodeState, Scheme};
use crate::metrics::ChainMetrics;
use commonware_consensus::simplex::Engine;
use commonware_consensus::simplex::config::{Config, Floor, ForwardPolicy, SkipBudget, SkipPolicy};
use commonware_consensus::types::{Epoch, ViewDelta};
use commonware_p2p::utils::mux::{MuxHandle, Muxer, SubReceiver, SubSender};
use commonware_p2p::{Blocker, Receiver, Sender};
use commonware_parallel::Sequential;
use commonware_runtime::buffer::paged::CacheRef;
use commonware_runtime::{Clock, Handle, Metrics, Quota, Spawner, Storage};
use commonware_utils::NonZeroDuration;
use commonware_utils::ordered::Set;
use std::num::{NonZeroU16, NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{error, info};
use trellis_node_state::Kv;
use trellis_node_types::{Committee, PrivateKey, PublicKey, Signer};

/// p2p channel numbers (identical on every node).
pub const CHANNEL_VOTES: u64 = 0;
pub const CHANNEL_CERTIFICATES: u64 = 1;
pub const CHANNEL_RESOLVER: u64 = 2;
pub const CHANNEL_BLOCKS: u64 = 3;
pub const CHANNEL_BACKFILL: u64 = 4;
pub const CHANNELS: [u64; 5] = [
    CHANNEL_VOTES,
    CHANNEL_CERTIFICATES,
    CHANNEL_RESOLVER,
    CHANNEL_BLOCKS,
    CHANNEL_BACKFILL,
];

/// Per-peer rate limit of each channel (messages per second). The p2p layer also sizes
/// each channel's inbound queue from it (peers × burst), so it must stay modest.
pub fn channel_quota(channel: u64) -> Quota {
    let per_second = match channel {
        CHANNEL_VOTES | CHANNEL_CERTIFICATES => 1_000,
        _ => 200,
    };
    Quota::per_second(NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN))
}

/// The five channel pairs of one validator, in [`CHANNELS`] order.
pub struct Channels<S, R> {
    pub votes: (S, R),
    pub certificates: (S, R),
    pub resolver: (S, R),
    pub blocks: (S, R),
    pub backfill: (S, R),
}

impl<S, R> Channels<S, R> {
    /// The channels from pairs registered in [`CHANNELS`] order; `None` when fewer
    /// than five were given.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (S, R)>) -> Option<Self> {
        let mut pairs = pairs.into_iter();
        Some(Self {
            votes: pairs.next()?,
            certificates: pairs.next()?,
            resolver: pairs.next()?,
            blocks: pairs.next()?,
            backfill: pairs.next()?,
        })
    }
}

/// Consensus timing. Defaults suit a LAN or one machine.
#[derive(Clone, Debug)]
pub struct Timing {
    pub leader_timeout: Duration,
    pub certification_timeout: Duration,
    pub timeout_retry: Duration,
    pub skip_timeout: Duration,
    pub fetch_timeout: Duration,
    pub tick: Duration,
    pub min_block_interval: Duration,
    pub max_block_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            leader_timeout: Duration::from_millis(1_000),
            certification_timeout: Duration::from_millis(2_000),
            timeout_retry: Duration::from_millis(3_000),
            skip_timeout: Duration::from_millis(5_000),
            fetch_timeout: Duration::from_millis(1_000),
            tick: Duration::from_millis(100),
            min_block_interval: Duration::from_millis(200),
            max_block_interval: Duration::from_millis(500),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ValidatorConfig {
    pub chain_id: String,
    /// Most transactions per block.
    pub block_txs: usize,
    pub timing: Timing,
    /// Storage partition of the consensus journal.
    pub partition: String,
}

/// Why a validator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("this node's key is not in the validator set")]
    NotAValidator,
    #[error("the validator set is empty or has duplicates")]
    BadValidatorSet,
    #[error("reading the member registry: {0}")]
    Storage(String),
}

/// The namespace every consensus signature is made in: bound to the chain id so that votes
/// of one network are worthless on another, and in a sharded network to the committee
/// (`…/beacon`, `…/shard-N`) so that a vote of one committee is worthless in another.
/// Unsharded networks (`None`) keep the namespace they always had.
pub fn consensus_namespace(chain_id: &str, committee: Option<Committee>) -> Vec<u8> {
    let mut namespace = [b"_TRELLIS_CONSENSUS_".as_slice(), chain_id.as_bytes()].concat();
    if let Some(committee) = committee {
        namespace.push(b'/');
        namespace.extend_from_slice(committee.name().as_bytes());
    }
    namespace
}

/// Registers a peer set with the p2p layer: `(id, peers, followers)`, each a list of
/// `(node key, address)`. Ids only grow; the latest set is the one p2p keeps connections
/// to. Followers are accepted when they connect but never dialled (see
/// [`crate::chain::Membership::followers`]).
pub type PeerSets = Box<dyn FnMut(u64, &[(PublicKey, String)], &[(PublicKey, String)]) + Send>;

/// Starts a fixed committee's validator: [`start_node`] on a store without a genesis
/// registry uses `validators` as a committee that never changes.
#[allow(clippy::too_many_arguments)]
pub fn start_validator<E, K, B, S, R>(
    context: E,
    key: PrivateKey,
    validators: &[PublicKey],
    config: ValidatorConfig,
    state: Arc<Mutex<NodeState<K>>>,
    metrics: ChainMetrics,
    blocker: B,
    channels: Channels<S, R>,
) -> Result<(Handle<()>, Handle<()>), StartError>
where
    E: Clock + rand_core::CryptoRng + Spawner + Storage + Metrics,
    K: Kv,
    B: Blocker<PublicKey = PublicKey>,
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
{
    if Set::try_from(validators.to_vec()).is_err() || validators.is_empty() {
        return Err(StartError::BadValidatorSet);
    }
    if !validators.contains(&key.public_key()) {
        return Err(StartError::NotAValidator);
    }
    chain::lock(&state).ensure_registry(validators);
    start_node(
        context, key, config, state, metrics, blocker, channels, None,
    )
}

/// Starts the chain actor and the orchestrator of one node. The orchestrator runs one
/// simplex engine per epoch in which this node is a validator (with that epoch's
/// validators, on per-epoch subchannels of the consensus channels, in its own journal
/// partition) and registers every new peer set with p2p. Returns the handles of the
/// chain actor and the orchestrator (abort both to stop the node).
#[allow(clippy::too_many_arguments)]
pub fn start_node<E, K, B, S, R>(
    context: E,
    key: PrivateKey,
    config: ValidatorConfig,
    state: Arc<Mutex<NodeState<K>>>,
    metrics: ChainMetrics,
    blocker: B,
    channels: Channels<S, R>,
    mut peer_sets: Option<PeerSets>,
) -> Result<(Handle<()>, Handle<()>), StartError>
where
    E: Clock + rand_core::CryptoRng + Spawner + Storage + Metrics,
    K: Kv,
    B: Blocker<PublicKey = PublicKey>,
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
{
    let (first, committee, idle_shard) = {
        let state = chain::lock(&state);
        let membership = state
            .membership()
            .map_err(|e| StartError::Storage(e.to_string()))?;
        (
            membership,
            state.shard.as_ref().map(|p| p.committee),
            state.shard_epoch.is_some(),
        )
    };
    let namespace = consensus_namespace(&config.chain_id, committee);
    // A shard slot waiting for the beacon to create it (or drained) has no committee yet:
    // it runs the chain actor and starts consensus when its epoch comes.
    if first.validators.is_empty() && !idle_shard {
        return Err(StartError::BadValidatorSet);
    }
    let timing = config.timing.clone();
    let (updates, mut memberships) = mpsc::unbounded_channel();
    let (mailbox, chain_handle) = chain::start(
        context.child("application"),
        ChainConfig {
            chain_id: config.chain_id.clone(),
            namespace: namespace.clone(),
            epoch: first.epoch,
            block_txs: config.block_txs,
            tick: timing.tick,
            min_block_interval: timing.min_block_interval,
            max_block_interval: timing.max_block_interval,
            memberships: Some(updates),
        },
        state,
        metrics,
        channels.blocks,
        channels.backfill,
    );
    let me = key.public_key();
    let orchestrator = context
        .child("orchestrator")
        .spawn(move |context| async move {
            let (votes, mut votes_mux) = Muxer::new(
                context.child("votes_mux"),
                channels.votes.0,
                channels.votes.1,
            );
            let (certificates, mut certificates_mux) = Muxer::new(
                context.child("certificates_mux"),
                channels.certificates.0,
                channels.certificates.1,
            );
            let (resolver, mut resolver_mux) = Muxer::new(
                context.child("resolver_mux"),
                channels.resolver.0,
                channels.resolver.1,
            );
            votes.start();
            certificates.start();
            resolver.start();
            let mut membership = first;
            let mut engine: Option<(u64, Handle<()>)> = None;
            let mut tracked: Option<u64> = None;
            // The next epoch's subchannels, opened while this epoch runs: peers that
            // switch epoch before this node send their first votes (the new epoch's
            // first proposal among them) there, and the muxer drops messages of a
            // subchannel nobody opened. Opened in advance they wait for the engine.
            let mut ahead: Option<(u64, EpochChannels<_, _>)> = None;
            loop {
                if tracked != Some(membership.peer_set)
                    && let Some(track) = peer_sets.as_mut()
                {
                    track(
                        membership.peer_set,
                        &membership.peers,
                        &membership.followers,
                    );
                    tracked = Some(membership.peer_set);
                }
                if engine.as_ref().map(|(e, _)| *e) != Some(membership.epoch) {
                    if let Some((epoch, handle)) = engine.take() {
                        info!(epoch, "stopping the consensus engine of a finished epoch");
                        handle.abort();
                    }
                    let epoch = membership.epoch;
                    // Subchannels opened in advance for this epoch are used; those of a
                    // later one stay open; those of an epoch this node skipped close.
                    let opened = match ahead.take() {
                        Some((e, channels)) if e == epoch => Some(channels),
                        Some((e, channels)) if e > epoch => {
                            ahead = Some((e, channels));
                            None
                        }
                        _ => None,
                    };
                    if membership.validators.contains(&me) {
                        let channels = match opened {
                            Some(channels) => Some(channels),
                            None => {
                                open_epoch(
                                    &mut votes_mux,
                                    &mut certificates_mux,
                                    &mut resolver_mux,
                                    epoch,
                                )
                                .await
                            }
                        };
                        let Some((v, c, r)) = channels else {
                            error!(epoch, "could not open the epoch's consensus channels");
                            return;
                        };
                        let floor = match mailbox.floor(epoch).await {
                            Some(finalization) => Floor::Finalized(finalization),
                            None => Floor::Genesis(membership.floor),
                        };
                        match start_engine(
                            context.child("consensus").with_attribute("epoch", epoch),
                            &key,
                            &membership,
                            &namespace,
                            &config,
                            mailbox.clone(),
                            blocker.clone(),
                            floor,
                            (v, c, r),
                        ) {
                            Some(handle) => {
                                info!(
                                    epoch,
                                    validators = membership.validators.len(),
                                    "consensus engine started"
                                );
                                engine = Some((epoch, handle));
                            }
                            None => error!(epoch, "could not start the consensus engine"),
                        }
                    } else {
                        drop(opened);
                        info!(
                            epoch = membership.epoch,
                            "not a validator in this epoch; following the chain"
                        );
                    }
                    if ahead.is_none() {
                        let next = epoch + 1;
                        ahead = open_epoch(
                            &mut votes_mux,
                            &mut certificates_mux,
                            &mut resolver_mux,
                            next,
                        )
                        .await
                        .map(|channels| (next, channels));
                    }
                }
                // Only the latest membership matters.
                let Some(mut next) = memberships.recv().await else {
                    return;
                };
                while let Ok(later) = memberships.try_recv() {
                    next = later;
                }
                membership = next;
            }
        });
    Ok((chain_handle, orchestrator))
}

type Pair<S, R> = (S, R);

/// One epoch's votes, certificates and resolver subchannels.
type EpochChannels<S, R> = (Pair<S, R>, Pair<S, R>, Pair<S, R>);

/// Opens `epoch`'s consensus subchannels; `None` when a muxer is closed or one of them is
/// open already.
async fn open_epoch<S: Sender>(
    votes: &mut MuxHandle<S>,
    certificates: &mut MuxHandle<S>,
    resolver: &mut MuxHandle<S>,
    epoch: u64,
) -> Option<EpochChannels<SubSender<S>, SubReceiver<S::PublicKey>>> {
    Some((
        votes.register(epoch).await.ok()?,
        certificates.register(epoch).await.ok()?,
        resolver.register(epoch).await.ok()?,
    ))
}

#[allow(clippy::too_many_arguments)]
fn start_engine<E, B, S, R>(
    context: E,
    key: &PrivateKey,
    membership: &Membership,
    namespace: &[u8],
    config: &ValidatorConfig,
    mailbox: chain::Mailbox,
    blocker: B,
    floor: Floor<Scheme, trellis_node_types::Digest>,
    (votes, certificates, resolver): (Pair<S, R>, Pair<S, R>, Pair<S, R>),
) -> Option<Handle<()>>
where
    E: Clock + rand_core::CryptoRng + Spawner + Storage + Metrics,
    B: Blocker<PublicKey = PublicKey>,
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
{
    let participants = Set::try_from(membership.validators.clone()).ok()?;
    let scheme = Scheme::signer(namespace, participants, key.clone())?;
    let timing = &config.timing;
    let engine_config = Config {
        scheme,
        elector: crate::leaders::elector(),
        blocker,
        automaton: mailbox.clone(),
        relay: mailbox.clone(),
        reporter: mailbox,
        strategy: Sequential,
        partition: format!("{}-{}", config.partition, membership.epoch),
        mailbox_size: NonZeroUsize::MIN.saturating_add(1023),
        epoch: Epoch::new(membership.epoch),
        floor,
        leader_timeout: timing.leader_timeout,
        certification_timeout: timing.certification_timeout,
        timeout_retry: timing.timeout_retry,
        fetch_timeout: NonZeroDuration::new(timing.fetch_timeout)
            .unwrap_or(commonware_utils::NZDuration!(Duration::from_secs(1))),
        fetch_retry_delay: Duration::from_millis(100),
        view_retention: ViewDelta::new(64),
        skip: SkipPolicy::Enabled {
            timeout: timing.skip_timeout,
            budget: SkipBudget::Participants,
        },
        replay_buffer: NonZeroUsize::MIN.saturating_add(1024 * 1024 - 1),
        write_buffer: NonZeroUsize::MIN.saturating_add(1024 * 1024 - 1),
        page_cache: CacheRef::new(
            NonZeroU16::MIN.saturating_add(4095),
            NonZeroUsize::MIN.saturating_add(63),
        ),
        forward: ForwardPolicy::Disabled,
        track_historical_votes: false,
    };
    let engine = Engine::new(context, engine_config);
    Some(engine.start(votes, certificates, resolver))
}
