//! Wires one validator: the chain actor and a simplex consensus engine over five p2p
//! channels. Generic over the commonware runtime and p2p implementation, so the binary
//! (tokio + authenticated p2p) and the simulation tests (deterministic runtime + simulated
//! network) run exactly this code.

use crate::chain::{self, ChainConfig, NodeState, Scheme};
use crate::metrics::ChainMetrics;
use commonware_consensus::simplex::Engine;
use commonware_consensus::simplex::config::{Config, Floor, ForwardPolicy, SkipBudget, SkipPolicy};
use commonware_consensus::simplex::elector::RoundRobin;
use commonware_consensus::types::{Epoch, ViewDelta};
use commonware_cryptography::Sha256;
use commonware_p2p::{Blocker, Receiver, Sender};
use commonware_parallel::Sequential;
use commonware_runtime::buffer::paged::CacheRef;
use commonware_runtime::{Clock, Handle, Metrics, Quota, Spawner, Storage};
use commonware_utils::NonZeroDuration;
use commonware_utils::ordered::Set;
use std::num::{NonZeroU16, NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trellis_node_state::Kv;
use trellis_node_types::{Block, PrivateKey, PublicKey, Signer};

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
}

/// The namespace every consensus signature is made in: bound to the chain id so that votes
/// of one network are worthless on another.
pub fn consensus_namespace(chain_id: &str) -> Vec<u8> {
    [b"_TRELLIS_CONSENSUS_".as_slice(), chain_id.as_bytes()].concat()
}

/// Starts the chain actor and the consensus engine of one validator. Returns the handles
/// of both (abort them to stop the validator).
// Each argument is a distinct dependency the caller builds differently in the binary and
// the simulation; bundling them would only move the list into a struct literal.
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
    let participants =
        Set::try_from(validators.to_vec()).map_err(|_| StartError::BadValidatorSet)?;
    if participants.as_ref().is_empty() {
        return Err(StartError::BadValidatorSet);
    }
    if !validators.contains(&key.public_key()) {
        return Err(StartError::NotAValidator);
    }
    let namespace = consensus_namespace(&config.chain_id);
    let scheme = Scheme::signer(&namespace, participants, key).ok_or(StartError::NotAValidator)?;
    let genesis = Block::genesis(&config.chain_id).digest();
    let timing = config.timing.clone();
    let (mailbox, chain_handle) = chain::start(
        context.child("application"),
        ChainConfig {
            chain_id: config.chain_id.clone(),
            epoch: 0,
            block_txs: config.block_txs,
            tick: timing.tick,
            min_block_interval: timing.min_block_interval,
        },
        state,
        metrics,
        channels.blocks,
        channels.backfill,
    );
    let engine_config = Config {
        scheme,
        elector: RoundRobin::<Sha256>::default(),
        blocker,
        automaton: mailbox.clone(),
        relay: mailbox.clone(),
        reporter: mailbox,
        strategy: Sequential,
        partition: config.partition,
        mailbox_size: NonZeroUsize::MIN.saturating_add(1023),
        epoch: Epoch::new(0),
        floor: Floor::Genesis(genesis),
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
    let engine = Engine::new(context.child("consensus"), engine_config);
    let engine_handle = engine.start(channels.votes, channels.certificates, channels.resolver);
    Ok((chain_handle, engine_handle))
}
