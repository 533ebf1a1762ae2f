//! Validators registered for "any" shard (`[role] kind = "shard", shard = "any"`): which
//! shard the beacon places this node in, and when to leave one shard for another.
//!
//! The beacon shuffles "any" validators between shards at epoch boundaries
//! (`trellis_node_beacon::committee`). Such a node serves one shard at a time, with that
//! shard's data under `data_dir/shard-N/`, and records where it serves in
//! `data_dir/placement.json` (`{"shard": N, "epoch": E}`: serve shard `N` from epoch `E`).
//! A switch writes the record and re-executes the process (see `crate::run`), so every
//! switch takes the ordinary start-up path.
//!
//! **When to switch** ([`decide`]). The node's *duty epoch* is the later of the served
//! shard's current consensus epoch and the recorded epoch. Going forward from it through
//! the epochs the followed beacon knows, the first epoch that places the node decides:
//! the served shard → stay; another shard → move there, from that epoch. So the node
//! leaves a shard only once that shard's chain has left every epoch whose committee
//! includes it (the epoch-end block of its last epoch there is executed: its last duty),
//! and the recorded epoch only grows, so a node whose copy of a shard's chain is behind
//! never moves back to an epoch it has served already (no ping-pong while catching up).

use crate::chain::{NodeState, lock};
use crate::follower::BeaconSource;
use crate::handoff::{HandoffSource, nodes_of};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};
use trellis_node_beacon::BeaconState;
use trellis_node_state::Kv;
use trellis_node_types::system::ANY_SHARD;
use trellis_node_types::{PublicKey, table_of};

/// The record of where an "any" validator serves, in its `data_dir`.
pub const PLACEMENT_FILE: &str = "placement.json";

/// Where an "any" validator serves: shard `shard` from consensus epoch `epoch` (`None`:
/// placed nowhere, waiting for the beacon).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub shard: Option<u16>,
    pub epoch: u64,
}

impl Placement {
    /// The stored record (`None` on a fresh data directory).
    pub fn load(data_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = data_dir.join(PLACEMENT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is corrupt; remove it and the node finds its shard from the beacon again",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the record atomically (a crash leaves the old or the new one).
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        use std::io::Write as _;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let path = data_dir.join(PLACEMENT_FILE);
        let tmp = data_dir.join(format!("{PLACEMENT_FILE}.tmp"));
        let mut file =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec(self)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// Where a node records its placement (`data_dir`) and the epoch it serves from.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub data_dir: PathBuf,
    pub floor: u64,
}

/// The data directory of shard `shard` under an "any" validator's `data_dir`: each
/// shard's chain stays apart, so a return to a shard resumes from where it left.
pub fn shard_dir(data_dir: &Path, shard: u16) -> PathBuf {
    data_dir.join(format!("shard-{shard}"))
}

/// Where an unplaced "any" validator keeps the beacon state it follows.
pub fn waiting_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("unplaced")
}

/// The shard whose committee of `epoch` includes `me` (`None`: none, or an epoch the
/// beacon state does not know — a future one, or older than its kept history).
pub fn placed_at(beacon: &BeaconState, me: &PublicKey, epoch: u64) -> Option<u16> {
    (0..beacon.max_shards()).find(|s| {
        beacon
            .validators_at(*s, epoch)
            .is_some_and(|keys| keys.contains(me))
    })
}

/// The p2p followers of a shard's network in an epoch: the registered "any" validators
/// outside that epoch's `committee`, with their p2p addresses.
///
/// Why: p2p keeps only the latest peer set. An "any" validator that the beacon moved into
/// this shard (or back) replays its chain from where its copy stopped, from an older
/// epoch; if the shuffle has rotated it out again before it caught up, the committee's
/// nodes would refuse it and it would never reach the epoch end that lets it leave
/// ([`decide`]). Admitted as followers (never dialled, never voting: votes count only
/// from the epoch's committee), it catches up and moves on. Only registered validators
/// of the network that may serve this shard are admitted — in consortium mode the
/// beacon's registry holds only admitted members' validators — so the admission rules
/// are those of the committee.
pub fn catching_up(beacon: &BeaconState, committee: &[PublicKey]) -> Vec<(PublicKey, String)> {
    beacon
        .registered()
        .filter(|v| v.shard == ANY_SHARD && !committee.contains(&v.node_key))
        .map(|v| (v.node_key.clone(), v.p2p_address.clone()))
        .collect()
}

/// What an "any" validator does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Keep serving (or keep waiting): the beacon places it where it is, or the beacon
    /// state followed so far does not reach the duty epoch yet.
    Stay,
    /// Serve `shard` from `epoch` (`shard: None`: placed nowhere any more; wait).
    Move(Placement),
}

/// The decision for a node serving `serving` (`None`: waiting) whose shard is in
/// consensus epoch `shard_epoch`, recorded to serve from epoch `floor` (module docs).
pub fn decide(
    beacon: &BeaconState,
    me: &PublicKey,
    serving: Option<u16>,
    shard_epoch: u64,
    floor: u64,
) -> Decision {
    let duty = shard_epoch.max(floor);
    let current = beacon.epoch();
    if current < duty {
        return Decision::Stay;
    }
    for epoch in duty..=current {
        match placed_at(beacon, me, epoch) {
            Some(shard) if Some(shard) == serving => return Decision::Stay,
            Some(shard) => {
                return Decision::Move(Placement {
                    shard: Some(shard),
                    epoch,
                });
            }
            None => {}
        }
    }
    match serving {
        None => Decision::Stay,
        Some(_) => Decision::Move(Placement {
            shard: None,
            epoch: current,
        }),
    }
}

/// Serving: watches the followed beacon state and the shard's epoch every `period`
/// until the node must move; hands its transaction pool over ([`hand_over_pool`]),
/// records the new placement and returns it (the caller restarts the process into it).
pub async fn watch<K: Kv, S: HandoffSource, C: commonware_runtime::Clock>(
    clock: C,
    state: Arc<Mutex<NodeState<K>>>,
    source: S,
    me: PublicKey,
    serving: u16,
    record: Recorded,
    period: Duration,
) -> anyhow::Result<Placement> {
    let Recorded { data_dir, floor } = record;
    loop {
        let decision = {
            let s = lock(&state);
            match (&s.beacon, &s.shard_epoch) {
                (Some(beacon), Some(record)) => {
                    decide(beacon, &me, Some(serving), record.epoch, floor)
                }
                _ => Decision::Stay,
            }
        };
        if let Decision::Move(next) = decision {
            match next.shard {
                Some(to) => info!(
                    from = serving,
                    to,
                    epoch = next.epoch,
                    "the beacon moved this validator: its duties in shard {serving} are done; \
                     restarting to serve shard {to} from epoch {}",
                    next.epoch
                ),
                None => warn!(
                    from = serving,
                    epoch = next.epoch,
                    "the beacon places this validator in no shard any more (deregistered?); \
                     restarting to wait until it does"
                ),
            }
            hand_over_pool(&state, &source, &me).await;
            next.save(&data_dir)?;
            return Ok(next);
        }
        clock.sleep(period).await;
    }
}

/// Before a move: forwards every transaction still in this node's pool (admitted here,
/// possibly not yet in a block) to another validator of its sender's shard, so the
/// restart loses none that a node of the shard will take. Returns how many no node took
/// (logged; their senders see them `unknown` and resend).
pub async fn hand_over_pool<K: Kv, S: HandoffSource>(
    state: &Arc<Mutex<NodeState<K>>>,
    source: &S,
    me: &PublicKey,
) -> usize {
    let (txs, beacon) = {
        let mut s = lock(state);
        (s.mempool.take_where(|_| true), s.beacon.clone())
    };
    let Some(beacon) = beacon else {
        return txs.len();
    };
    let mut lost = 0;
    for tx in &txs {
        let shard = beacon.owner(table_of(&tx.unsigned.from));
        let mut taken = false;
        for node in nodes_of(&beacon, shard, beacon.epoch()) {
            if node.key != *me && source.forward(&node, tx).await.is_ok() {
                taken = true;
                break;
            }
        }
        if !taken {
            lost += 1;
        }
    }
    if !txs.is_empty() {
        info!(
            handed_over = txs.len() - lost,
            lost, "handed this node's transaction pool over before the move"
        );
    }
    lost
}

/// Waiting (placed nowhere yet): follows the beacon into `state` every `period`, says
/// why it waits in `state.unplaced` (shown by `trellis_status` and `/readyz`), and
/// returns the placement once the beacon state, followed to within a few blocks of the
/// beacon's finalized height, places this node (recorded in `data_dir`).
pub async fn wait_until_placed<K: Kv, S: BeaconSource, C: commonware_runtime::Clock>(
    clock: C,
    state: Arc<Mutex<NodeState<K>>>,
    chain_id: String,
    source: S,
    me: PublicKey,
    record: Recorded,
    period: Duration,
) -> anyhow::Result<Placement> {
    let Recorded { data_dir, floor } = record;
    // Blocks the beacon may be ahead when this node counts as caught up: a placement read a
    // few blocks early is corrected by `decide` once the shard's epoch moves on.
    const CAUGHT_UP: u64 = 3;
    let mut last_error = String::new();
    loop {
        let caught_up = crate::follower::follow_once(&state, &chain_id, &source, &mut last_error)
            .await
            .is_some_and(|(height, finalized)| height + CAUGHT_UP >= finalized);
        {
            let mut s = lock(&state);
            let height = s.shard.as_ref().map_or(0, |p| p.beacon_height);
            let decision = match (&s.beacon, caught_up) {
                (Some(beacon), true) => decide(beacon, &me, None, beacon.epoch(), floor),
                _ => Decision::Stay,
            };
            if let Decision::Move(
                next @ Placement {
                    shard: Some(to), ..
                },
            ) = decision
            {
                info!(
                    shard = to,
                    epoch = next.epoch,
                    "the beacon places this validator in shard {to}; restarting to serve it"
                );
                next.save(&data_dir)?;
                return Ok(next);
            }
            let why = if caught_up {
                format!(
                    "waiting for the beacon to place this validator in a shard (beacon height \
                     {height}: it is in no committee; register it with `trellis-node system \
                     register-validator --shard any`)"
                )
            } else {
                format!(
                    "waiting for the beacon to place this validator in a shard (following the \
                     beacon: height {height})"
                )
            };
            if s.unplaced.as_deref() != Some(why.as_str()) {
                info!("{why}");
                s.unplaced = Some(why);
            }
        }
        clock.sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_node_api::shard::{GenesisValidator, ShardingGenesis, ShardingMode};
    use trellis_node_beacon::BeaconGenesis;
    use trellis_node_types::{Signer, test_key, to_hex};

    const EPOCH: u64 = 5;

    /// A public network of 2 shards, 2 fixed validators each, and 2 "any" validators
    /// (keys 10 and 11), as the process test runs it.
    fn beacon() -> BeaconState {
        let seat = |seed: u64, shard| GenesisValidator {
            node_key: to_hex(test_key(seed).public_key().as_ref()),
            shard,
            p2p_address: format!("127.0.145.{seed}:9000"),
            rpc_address: format!("127.0.145.{seed}:8545"),
            member: None,
        };
        let sharding = ShardingGenesis {
            mode: ShardingMode::Public,
            admin_key: to_hex(test_key(99).public_key().as_ref()),
            max_shards: 4,
            shard_count: 2,
            beacon: vec![seat(1, 0)],
            validators: vec![
                seat(2, 0),
                seat(3, 0),
                seat(4, 1),
                seat(5, 1),
                seat(10, ANY_SHARD),
                seat(11, ANY_SHARD),
            ],
        };
        BeaconState::genesis(BeaconGenesis::from_contract("c", EPOCH, &[], &sharding).unwrap())
            .unwrap()
    }

    /// Runs the beacon through `epochs` epochs (empty blocks; the digest seeds the shuffle).
    fn advance(beacon: &mut BeaconState, epochs: u64) {
        let from = beacon.epoch() * EPOCH + 1;
        for height in from..from + epochs * EPOCH {
            let digest = [height as u8; 32];
            let _ = beacon.end_of_block(height, &digest);
        }
    }

    /// The placement of `me` in every epoch `0..=beacon.epoch()`.
    fn history(beacon: &BeaconState, me: &PublicKey) -> Vec<Option<u16>> {
        (0..=beacon.epoch())
            .map(|e| placed_at(beacon, me, e))
            .collect()
    }

    #[test]
    fn any_validators_are_placed_in_exactly_one_shard_per_epoch() {
        let mut b = beacon();
        advance(&mut b, 12);
        let mover = test_key(10).public_key();
        let places = history(&b, &mover);
        assert!(places.iter().all(Option::is_some), "{places:?}");
        // The shuffle moves it at some epoch boundary (2 × 1 rotations per epoch).
        assert!(places.windows(2).any(|w| w[0] != w[1]), "{places:?}");
        // A fixed validator is always in its shard; a stranger nowhere.
        let fixed = test_key(4).public_key();
        assert!(history(&b, &fixed).iter().all(|p| *p == Some(1)));
        assert!(
            history(&b, &test_key(77).public_key())
                .iter()
                .all(Option::is_none)
        );
        // A future epoch is unknown.
        assert_eq!(placed_at(&b, &mover, b.epoch() + 1), None);
    }

    #[test]
    fn a_validator_leaves_a_shard_only_after_its_last_epoch_there() {
        let mut b = beacon();
        advance(&mut b, 12);
        let me = test_key(10).public_key();
        let places = history(&b, &me);
        let (last, moved) = (0..places.len() - 1)
            .find(|&e| places[e] != places[e + 1])
            .map(|e| (e as u64, places[e + 1].unwrap()))
            .unwrap();
        let here = places[last as usize].unwrap();
        // The shard is still in the last epoch that includes this node: stay, also when
        // the beacon is already epochs ahead.
        assert_eq!(decide(&b, &me, Some(here), last, 0), Decision::Stay);
        assert_eq!(decide(&b, &me, Some(here), last, last), Decision::Stay);
        // Its epoch-end block executed (the shard is in the next epoch): move.
        assert_eq!(
            decide(&b, &me, Some(here), last + 1, 0),
            Decision::Move(Placement {
                shard: Some(moved),
                epoch: last + 1
            })
        );
        // In the new shard, whose copy of the chain still replays an older epoch: the
        // recorded epoch keeps it there (no move back to an epoch served already).
        assert_eq!(decide(&b, &me, Some(moved), 0, last + 1), Decision::Stay);
    }

    #[test]
    fn the_decision_waits_for_the_beacon_to_reach_the_duty_epoch() {
        let b = beacon();
        let me = test_key(10).public_key();
        let other = 1 - placed_at(&b, &me, 0).unwrap();
        // The recorded epoch is ahead of the followed beacon (a fresh shard directory
        // replays the beacon from genesis): nothing is decided on old committees.
        assert_eq!(decide(&b, &me, Some(other), 0, 3), Decision::Stay);
    }

    #[test]
    fn waiting_nodes_go_to_the_current_placement_and_strangers_keep_waiting() {
        let mut b = beacon();
        advance(&mut b, 4);
        let me = test_key(11).public_key();
        let now = placed_at(&b, &me, b.epoch()).unwrap();
        assert_eq!(
            decide(&b, &me, None, b.epoch(), 0),
            Decision::Move(Placement {
                shard: Some(now),
                epoch: b.epoch()
            })
        );
        let stranger = test_key(77).public_key();
        assert_eq!(decide(&b, &stranger, None, b.epoch(), 0), Decision::Stay);
        // Serving a shard and placed nowhere any more (deregistered): wait.
        assert_eq!(
            decide(&b, &stranger, Some(0), b.epoch(), 0),
            Decision::Move(Placement {
                shard: None,
                epoch: b.epoch()
            })
        );
    }

    /// A shard's p2p followers are the "any" validators outside its committee: the one
    /// the shuffle moved away stays admitted (it may still replay this shard's older
    /// epochs), fixed validators of other shards and unregistered keys never are.
    #[test]
    fn an_any_validator_moved_away_stays_admitted_to_catch_up() {
        let mut b = beacon();
        advance(&mut b, 12);
        let me = test_key(10).public_key();
        let places = history(&b, &me);
        let (last, here) = (0..places.len() - 1)
            .find(|&e| places[e] != places[e + 1])
            .map(|e| (e as u64, places[e].unwrap()))
            .unwrap();
        // After its last epoch in `here`, the committee there no longer includes it...
        let later = b.validators_at(here, last + 1).unwrap();
        assert!(!later.contains(&me));
        // ...but the shard's nodes still admit it as a follower, with its p2p address.
        let followers = catching_up(&b, &later);
        assert!(
            followers
                .iter()
                .any(|(k, a)| *k == me && a == "127.0.145.10:9000"),
            "{followers:?}"
        );
        // Only "any" validators outside the committee: never a member of it (it is a
        // peer already), never another shard's fixed validator, never a stranger.
        let other_fixed = test_key(if here == 0 { 4 } else { 2 }).public_key();
        for (k, _) in &followers {
            assert!(!later.contains(k));
            assert_ne!(*k, other_fixed);
            assert_ne!(*k, test_key(77).public_key());
        }
        // While the committee includes it, it is a peer there, not a follower.
        let now = b.validators_at(here, last).unwrap();
        assert!(catching_up(&b, &now).iter().all(|(k, _)| *k != me));
    }

    #[test]
    fn the_placement_record_round_trips_and_a_corrupt_one_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Placement::load(dir.path()).unwrap(), None);
        let p = Placement {
            shard: Some(1),
            epoch: 7,
        };
        p.save(dir.path()).unwrap();
        assert_eq!(Placement::load(dir.path()).unwrap(), Some(p));
        std::fs::write(dir.path().join(PLACEMENT_FILE), b"{").unwrap();
        let e = format!("{:#}", Placement::load(dir.path()).unwrap_err());
        assert!(e.contains("remove it"), "{e}");
    }
}
