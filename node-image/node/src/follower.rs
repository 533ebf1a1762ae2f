//! Shard nodes follow the beacon: finalized beacon blocks are fetched from beacon nodes
//! (through a [`BeaconSource`]), checked — parent links down to the block this node
//! already followed, and the last block's finalization certificate against the beacon
//! validators in the beacon's consensus namespace — and replayed into the node's own
//! `BeaconState`, which is stored with the followed height in one commit.
//!
//! Nothing a beacon node says is trusted: a forged block breaks the parent links or the
//! certificate and is refused with the reason; the follower then asks again later.

use crate::chain::{NodeState, lock};
use std::sync::{Arc, Mutex};
use trellis_node_api::BeaconBlocks;
use trellis_node_state::{Kv, Space, StateError, WriteBatch};
use trellis_node_types::{Block, Committee, Digest, from_hex};

/// Where the followed beacon height and its block digest are stored (with the state).
pub const KEY_FOLLOWED: &[u8] = b"chain/beacon-followed";

/// Fetches finalized beacon blocks (`trellis_getBeaconBlocks` through the node's relay:
/// over HTTP in production, in-process in simulations; see `crate::relay::RelayBeacon`).
pub trait BeaconSource: Send + Sync {
    fn blocks(
        &self,
        from: u64,
    ) -> impl std::future::Future<Output = Result<BeaconBlocks, String>> + Send;
}

/// Why a batch of beacon blocks was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FollowError {
    #[error("beacon block {0} does not decode: {1}")]
    Malformed(u64, String),
    #[error("beacon block at height {got} where {expected} was expected")]
    Height { expected: u64, got: u64 },
    #[error("beacon block {0} does not extend the followed beacon chain")]
    Unlinked(u64),
    #[error("beacon block {0} is not a beacon block of this network")]
    NotBeacon(u64),
    #[error("the certificate of beacon block {0} does not verify against the beacon validators")]
    Certificate(u64),
    #[error("storage: {0}")]
    Storage(String),
}

impl From<StateError> for FollowError {
    fn from(e: StateError) -> Self {
        FollowError::Storage(e.to_string())
    }
}

/// The followed beacon height and the digest of the block at it (genesis: 0 and the
/// beacon genesis block's digest).
pub fn followed<K: Kv>(state: &NodeState<K>, chain_id: &str) -> Result<(u64, Digest), StateError> {
    match state.ledger.kv().get(Space::Meta, KEY_FOLLOWED)? {
        Some(bytes) if bytes.len() == 40 => {
            let mut height = [0u8; 8];
            height.copy_from_slice(&bytes[..8]);
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&bytes[8..]);
            Ok((u64::from_be_bytes(height), Digest(digest)))
        }
        Some(_) => Err(StateError::Corrupt("followed beacon height".into())),
        None => Ok((
            0,
            Block::genesis_sharded(chain_id, Committee::Beacon).digest(),
        )),
    }
}

/// Checks `answer` against the followed beacon chain and replays it into the node's beacon
/// state; returns the new followed height. Epoch changes (new table maps and committees)
/// are replayed like any block: the shard switches epoch when one of its own blocks names
/// a followed height past the boundary (see [`crate::epoch_switch`]).
pub fn apply<K: Kv>(
    state: &Arc<Mutex<NodeState<K>>>,
    chain_id: &str,
    answer: &BeaconBlocks,
) -> Result<u64, FollowError> {
    let (from, mut parent, beacon) = {
        let s = lock(state);
        let (height, digest) = followed(&s, chain_id)?;
        let beacon = s
            .beacon
            .clone()
            .ok_or_else(|| FollowError::Storage("no beacon state".into()))?;
        (height + 1, digest, beacon)
    };
    let mut blocks = Vec::with_capacity(answer.blocks.len());
    for (i, hex) in answer.blocks.iter().enumerate() {
        let height = from + i as u64;
        let bytes =
            from_hex(hex).ok_or_else(|| FollowError::Malformed(height, "not hex".into()))?;
        let block = Block::decode_untrusted(&bytes)
            .map_err(|e| FollowError::Malformed(height, e.to_string()))?;
        if block.height != height {
            return Err(FollowError::Height {
                expected: height,
                got: block.height,
            });
        }
        if block.parent != parent {
            return Err(FollowError::Unlinked(height));
        }
        if block
            .sharding
            .as_ref()
            .is_none_or(|s| s.header.committee != Committee::Beacon)
        {
            return Err(FollowError::NotBeacon(height));
        }
        parent = block.digest();
        blocks.push(block);
    }
    let Some(last) = blocks.last() else {
        return Ok(from - 1);
    };
    let certificate = answer
        .certificate
        .as_deref()
        .and_then(from_hex)
        .ok_or(FollowError::Certificate(last.height))?;
    let validators: Vec<_> = {
        let mut keys: Vec<_> = beacon
            .beacon_validators()
            .iter()
            .map(|s| s.node_key.clone())
            .collect();
        keys.sort();
        keys
    };
    let namespace = crate::engine::consensus_namespace(chain_id, Some(Committee::Beacon));
    if crate::chain::verify_finalization(&namespace, &validators, &certificate, &last.digest())
        .is_none()
    {
        return Err(FollowError::Certificate(last.height));
    }
    // Replay: exactly what beacon nodes execute (see the chain actor).
    let mut replayed = beacon;
    let mut height = from - 1;
    let mut digest = Digest([0; 32]);
    for block in &blocks {
        if let Some(sharding) = &block.sharding {
            for tx in &sharding.system {
                let _ = replayed.execute(tx, block.height);
            }
        }
        let _ = replayed.end_of_block(block.height, &block.digest().0);
        height = block.height;
        digest = block.digest();
    }
    if height >= from {
        let mut batch = WriteBatch::default();
        batch.put(
            Space::Meta,
            crate::chain::KEY_BEACON.to_vec(),
            replayed.to_bytes(),
        );
        batch.put(
            Space::Meta,
            KEY_FOLLOWED.to_vec(),
            [height.to_be_bytes().as_slice(), &digest.0].concat(),
        );
        let mut s = lock(state);
        s.ledger.kv().commit(batch).map_err(StateError::from)?;
        s.beacon = Some(replayed);
        if let Some(place) = s.shard.as_mut() {
            place.beacon_height = height;
        }
    }
    Ok(height)
}

/// Follows the beacon until the task is stopped: asks `source` for blocks after the
/// followed height every `period`, applies what verifies, logs what does not.
pub async fn follow<K: Kv, S: BeaconSource, C: commonware_runtime::Clock>(
    clock: C,
    state: Arc<Mutex<NodeState<K>>>,
    chain_id: String,
    source: S,
    period: std::time::Duration,
) {
    let mut last_error = String::new();
    loop {
        follow_once(&state, &chain_id, &source, &mut last_error).await;
        clock.sleep(period).await;
    }
}

/// One round of following: fetches the beacon blocks above the followed height from
/// `source` and applies them. `Some((followed height, the beacon's finalized height))`;
/// `None` after a failure, logged once per distinct error (kept in `last_error`).
pub async fn follow_once<K: Kv, S: BeaconSource>(
    state: &Arc<Mutex<NodeState<K>>>,
    chain_id: &str,
    source: &S,
    last_error: &mut String,
) -> Option<(u64, u64)> {
    let from = {
        let s = lock(state);
        s.shard.as_ref().map_or(0, |p| p.beacon_height) + 1
    };
    let outcome = match source.blocks(from).await {
        Ok(answer) => apply(state, chain_id, &answer)
            .map(|height| (height, answer.finalized_height))
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(heights) => {
            last_error.clear();
            Some(heights)
        }
        Err(e) => {
            if e != *last_error {
                tracing::warn!(error = %e, "following the beacon");
                *last_error = e;
            }
            None
        }
    }
}

/// Restores the followed height into `place` after a restart.
pub fn restore<K: Kv>(state: &mut NodeState<K>, chain_id: &str) -> Result<(), StateError> {
    let (height, _) = followed(state, chain_id)?;
    if let Some(place) = state.shard.as_mut()
        && place.committee != Committee::Beacon
    {
        place.beacon_height = height;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ShardPlace;
    use trellis_node_api::shard::{GenesisValidator, ShardingGenesis, ShardingMode};
    use trellis_node_beacon::{BeaconGenesis, BeaconState};
    use trellis_node_state::MemKv;
    use trellis_node_types::{Encode, ShardHeader, Sharding, Signer, test_key, to_hex};

    const CHAIN: &str = "c";

    fn shard_node() -> Arc<Mutex<NodeState<MemKv>>> {
        let seat = |seed: u64, shard| GenesisValidator {
            node_key: to_hex(test_key(seed).public_key().as_ref()),
            shard,
            p2p_address: "127.0.50.1:9000".into(),
            rpc_address: "127.0.50.1:8545".into(),
            member: None,
        };
        let sharding = ShardingGenesis {
            mode: ShardingMode::Public,
            admin_key: to_hex(test_key(99).public_key().as_ref()),
            max_shards: 2,
            shard_count: 1,
            beacon: vec![seat(1, 0)],
            validators: vec![seat(2, 0)],
        };
        let beacon =
            BeaconState::genesis(BeaconGenesis::from_contract(CHAIN, 10, &[], &sharding).unwrap())
                .unwrap();
        let place = ShardPlace {
            committee: Committee::Shard(0),
            tables: (0..=255).collect(),
            beacon_height: 0,
        };
        let state = NodeState::open_in(MemKv::default(), CHAIN, &[], 10, Some(place))
            .unwrap()
            .with_beacon(beacon)
            .unwrap();
        Arc::new(Mutex::new(state))
    }

    fn beacon_block(parent: Digest, height: u64) -> Block {
        Block::new(parent, height, 0, height, 0, vec![]).with_sharding(Sharding {
            header: ShardHeader {
                committee: Committee::Beacon,
                beacon_height: 0,
                state_height: height - 1,
                roots: vec![],
            },
            credits: vec![],
            system: vec![],
        })
    }

    fn answer(blocks: &[Block], certificate: Option<&[u8]>) -> BeaconBlocks {
        BeaconBlocks {
            blocks: blocks.iter().map(|b| to_hex(&b.encode())).collect(),
            certificate: certificate.map(to_hex),
            finalized_height: blocks.len() as u64,
        }
    }

    #[test]
    fn forged_beacon_answers_are_refused_with_the_reason() {
        let state = shard_node();
        let genesis = Block::genesis_sharded(CHAIN, Committee::Beacon).digest();
        let good = beacon_block(genesis, 1);

        // A block that does not extend the followed chain.
        let stray = beacon_block(Digest([7; 32]), 1);
        assert_eq!(
            apply(&state, CHAIN, &answer(&[stray], Some(&[1, 2]))),
            Err(FollowError::Unlinked(1))
        );
        // Linked, but the certificate is garbage (or missing).
        assert_eq!(
            apply(
                &state,
                CHAIN,
                &answer(std::slice::from_ref(&good), Some(&[1, 2, 3]))
            ),
            Err(FollowError::Certificate(1))
        );
        assert_eq!(
            apply(&state, CHAIN, &answer(std::slice::from_ref(&good), None)),
            Err(FollowError::Certificate(1))
        );
        // A shard block in the beacon's place.
        let mut shard_block = good.clone();
        if let Some(s) = shard_block.sharding.as_mut() {
            s.header.committee = Committee::Shard(0);
        }
        let shard_block =
            Block::new(genesis, 1, 0, 1, 0, vec![]).with_sharding(shard_block.sharding.unwrap());
        assert_eq!(
            apply(&state, CHAIN, &answer(&[shard_block], None)),
            Err(FollowError::NotBeacon(1))
        );
        // Wrong height, garbage bytes.
        assert_eq!(
            apply(&state, CHAIN, &answer(&[beacon_block(genesis, 2)], None)),
            Err(FollowError::Height {
                expected: 1,
                got: 2
            })
        );
        let garbage = BeaconBlocks {
            blocks: vec!["zz".into()],
            certificate: None,
            finalized_height: 1,
        };
        assert!(matches!(
            apply(&state, CHAIN, &garbage),
            Err(FollowError::Malformed(1, _))
        ));
        // Nothing was followed.
        let s = lock(&state);
        assert_eq!(followed(&s, CHAIN).unwrap().0, 0);
        assert_eq!(s.shard.as_ref().unwrap().beacon_height, 0);
    }
}
