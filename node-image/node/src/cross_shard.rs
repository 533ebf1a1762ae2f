//! Cross-shard transfers in the chain: where the chain actor meets [`crate::credits`].
//!
//! - **Gathering** ([`run`], a task next to the chain actor): every period it asks the
//!   other shards, through a [`Relay`], for the receipts they owe this shard's tables
//!   (`credits::collect`: certified block, outbox heads, proven pages) and keeps the
//!   verified ones in the node's [`CreditDesk`]. It also fetches and checks the source
//!   blocks that proposed blocks name and this node has not checked yet.
//! - **Proposing** ([`credits_for_block`]): the proposer puts the desk's credits that
//!   continue each (source table, destination table) pair in the block, after the ones
//!   its unfinalized ancestors already carry.
//! - **Verifying** ([`check_credits`]): before voting, every credit's proof is checked
//!   against the root in the named source block's header, whose certificate this node
//!   checked itself (against that shard's validators from the followed beacon state).
//!   The verification waits while a source block has not been fetched yet (like the
//!   roots check) and refuses the block for a forged proof or a table the named block
//!   does not carry.
//! - **Executing**: `Ledger::apply_block_with_credits` credits each receipt exactly once,
//!   in order per pair; the desk forgets what the ledger credited.
//!
//! The actor itself never waits on the network: everything remote happens in [`run`].

use crate::chain::{NodeState, ShardPlace, lock};
use crate::credits::{self, CertifiedHeader, CreditSource, ProvenCredit};
use crate::relay::{CertifiedBlock, Relay, RelayError};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, warn};
use trellis_node_beacon::BeaconState;
use trellis_node_state::{Kv, TableSet};
use trellis_node_types::shard::MAX_BLOCK_CREDITS;
use trellis_node_types::{Block, Committee, Credit, CrossReceipt, Digest, PublicKey};

/// Source headers a node remembers having checked (a few per source shard and second).
const KNOWN_HEADERS: usize = 1024;
/// Source blocks asked for at once at most (a block names at most one per credit).
const MAX_WANTED: usize = 1024;

/// A source shard's block header, as credit verification needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceHeader {
    pub committee: Committee,
    pub digest: Digest,
    pub height: u64,
    pub epoch: u64,
    pub state_height: u64,
    pub roots: BTreeMap<u8, [u8; 32]>,
}

impl SourceHeader {
    /// Decodes a relayed block (untrusted bytes); only sharded blocks have headers.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let block = Block::decode_untrusted(bytes).map_err(|e| e.to_string())?;
        let header = block
            .header()
            .ok_or("the block has no shard header (unsharded network)")?;
        Ok(Self {
            committee: header.shard.committee,
            digest: block.digest(),
            height: block.height,
            epoch: block.epoch,
            state_height: header.shard.state_height,
            roots: header
                .shard
                .roots
                .iter()
                .map(|r| (r.table, r.root))
                .collect(),
        })
    }
}

impl CertifiedHeader for SourceHeader {
    fn digest(&self) -> Digest {
        self.digest
    }
    fn height(&self) -> u64 {
        self.height
    }
    fn state_height(&self) -> u64 {
        self.state_height
    }
    fn table_root(&self, table: u8) -> Option<[u8; 32]> {
        self.roots.get(&table).copied()
    }
}

/// Checks other shards' blocks against the beacon state this node follows.
pub struct BeaconCredits {
    pub chain_id: String,
    pub beacon: BeaconState,
}

impl CreditSource for BeaconCredits {
    type Header = SourceHeader;

    fn decode_header(&self, block: &[u8]) -> Result<SourceHeader, String> {
        SourceHeader::decode(block)
    }

    /// A quorum of `shard`'s validators for the block's epoch (the current committee
    /// when the beacon keeps no record of that epoch), in `shard`'s consensus namespace.
    fn certificate_ok(&self, shard: u16, header: &SourceHeader, certificate: &[u8]) -> bool {
        if header.committee != Committee::Shard(shard) {
            return false;
        }
        let validators = self
            .beacon
            .validators_at(shard, header.epoch)
            .unwrap_or_else(|| self.beacon.validators(shard));
        let namespace = crate::engine::consensus_namespace(&self.chain_id, Some(header.committee));
        crate::chain::verify_finalization(&namespace, &validators, certificate, &header.digest)
            .is_some()
    }
}

/// A node's cross-shard bookkeeping, kept in its [`NodeState`].
#[derive(Debug, Default)]
pub struct CreditDesk {
    /// Verified credits not credited yet, by (source table, destination table), then seq.
    pool: BTreeMap<(u8, u8), BTreeMap<u64, Credit>>,
    /// Source blocks whose certificates this node checked, by (shard, height).
    headers: BTreeMap<(u16, u64), SourceHeader>,
    /// Insertion order of `headers`, to forget the oldest.
    order: VecDeque<(u16, u64)>,
    /// Source blocks proposed blocks name that this node has not checked yet.
    wanted: BTreeSet<(u16, u64)>,
}

impl CreditDesk {
    /// Receipts owed to this shard's tables that it knows of and has not credited yet.
    pub fn pending(&self) -> usize {
        self.pool.values().map(BTreeMap::len).sum()
    }

    fn remember(&mut self, shard: u16, header: SourceHeader) {
        let key = (shard, header.height);
        self.wanted.remove(&key);
        if self.headers.insert(key, header).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > KNOWN_HEADERS {
            if let Some(old) = self.order.pop_front() {
                self.headers.remove(&old);
            }
        }
    }

    fn deposit(&mut self, credits: Vec<ProvenCredit>) {
        for c in credits {
            let pair = (c.receipt.source_table, c.receipt.dest_table);
            self.pool.entry(pair).or_default().insert(
                c.receipt.seq,
                Credit {
                    source_shard: c.source_shard,
                    source_height: c.source_height,
                    receipt: c.receipt,
                    proof: c.proof,
                },
            );
        }
    }

    /// The first seq from `from` of the pair that the desk does not hold yet: where a
    /// gathering round continues, so verified receipts are not fetched again.
    fn next_missing(&self, source: u8, dest: u8, from: u64) -> u64 {
        let mut next = from;
        if let Some(credits) = self.pool.get(&(source, dest)) {
            for seq in credits.range(from..).map(|(seq, _)| *seq) {
                if seq != next {
                    break;
                }
                next += 1;
            }
        }
        next
    }

    /// Forgets credits below the inbox counters (`inbox(dest, source)`).
    fn prune(&mut self, inbox: impl Fn(u8, u8) -> u64) {
        self.pool.retain(|(source, dest), credits| {
            let next = inbox(*dest, *source);
            credits.retain(|seq, _| *seq >= next);
            !credits.is_empty()
        });
    }
}

/// What the verification of a block's credits concluded.
#[derive(Debug, PartialEq, Eq)]
pub enum CreditCheck {
    /// Every credit is proven against a certified source header.
    Valid,
    /// Some named source blocks are not checked yet (asked for; verify again later).
    Wait,
    /// A credit is forged or misplaced: never vote for this block.
    Refused(String),
}

/// Checks a proposed block's credits before voting (see the module documentation).
pub fn check_credits<K: Kv>(
    state: &mut NodeState<K>,
    place: &ShardPlace,
    credits: &[Credit],
) -> CreditCheck {
    if credits.is_empty() {
        return CreditCheck::Valid;
    }
    let Committee::Shard(own) = place.committee else {
        return CreditCheck::Refused("credits belong in shard blocks".into());
    };
    if credits.len() > MAX_BLOCK_CREDITS {
        return CreditCheck::Refused(format!(
            "{} credits, at most {MAX_BLOCK_CREDITS}",
            credits.len()
        ));
    }
    let mut missing = BTreeSet::new();
    for c in credits {
        let r = &c.receipt;
        let what = || {
            format!(
                "credit {}→{} seq {} from shard {} block {}",
                r.source_table, r.dest_table, r.seq, c.source_shard, c.source_height
            )
        };
        if c.source_shard == own {
            return CreditCheck::Refused(format!("{}: names this shard as source", what()));
        }
        if place.tables.binary_search(&r.dest_table).is_err() {
            return CreditCheck::Refused(format!(
                "{}: destination table {} is not owned by shard {own}",
                what(),
                r.dest_table
            ));
        }
        match state
            .credits
            .headers
            .get(&(c.source_shard, c.source_height))
        {
            None => {
                missing.insert((c.source_shard, c.source_height));
            }
            Some(header) => {
                if let Err(e) = credits::verify_credit(header, r, &c.proof) {
                    return CreditCheck::Refused(format!("{}: {e}", what()));
                }
            }
        }
    }
    if missing.is_empty() {
        CreditCheck::Valid
    } else {
        let wanted = &mut state.credits.wanted;
        wanted.extend(
            missing
                .into_iter()
                .take(MAX_WANTED.saturating_sub(wanted.len())),
        );
        CreditCheck::Wait
    }
}

/// The credits a block on top of `in_flight` (the credits of its unfinalized ancestors)
/// carries: per pair, the desk's consecutive receipts from the next seq not credited or
/// in flight, at most [`MAX_BLOCK_CREDITS`] in all.
pub fn credits_for_block<K: Kv>(state: &NodeState<K>, in_flight: &[&Credit]) -> Vec<Credit> {
    let mut after: BTreeMap<(u8, u8), u64> = BTreeMap::new();
    for c in in_flight {
        let next = after
            .entry((c.receipt.source_table, c.receipt.dest_table))
            .or_default();
        *next = (*next).max(c.receipt.seq + 1);
    }
    let mut out = Vec::new();
    for (&(source, dest), credits) in &state.credits.pool {
        let credited = state.ledger.inbox_next(dest, source).unwrap_or(u64::MAX);
        let mut next = credited.max(after.get(&(source, dest)).copied().unwrap_or(0));
        while out.len() < MAX_BLOCK_CREDITS {
            let Some(c) = credits.get(&next) else {
                break;
            };
            out.push(c.clone());
            next += 1;
        }
    }
    out
}

/// The receipts of a block's credits, for `Ledger::apply_block_with_credits`.
pub fn receipts(block: &Block) -> Vec<CrossReceipt> {
    block.sharding.as_ref().map_or_else(Vec::new, |s| {
        s.credits.iter().map(|c| c.receipt.clone()).collect()
    })
}

/// After a block executed: forget the credits the ledger credited.
pub fn executed<K: Kv>(state: &mut NodeState<K>) {
    let NodeState {
        credits, ledger, ..
    } = state;
    credits.prune(|dest, source| ledger.inbox_next(dest, source).unwrap_or(0));
}

/// How often [`run`] gathers credits and fetches wanted source blocks.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub collect: Duration,
    pub fetch: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            collect: Duration::from_millis(300),
            fetch: Duration::from_millis(100),
        }
    }
}

/// Gathers credits and checks wanted source blocks for shard node `me` until the task
/// is stopped. Failures are logged (once per distinct reason) and retried: a relay that
/// does not answer, or answers with something forged, only delays credits.
///
/// Only a node about to propose gathers ([`crate::leaders::leads_soon`]: it leads the
/// current or the next view): a block carries its proposer's credits, and the other
/// validators verify them from the block itself (fetching the source blocks it names),
/// so gathering on every validator would repeat the relay's work for nothing. Every
/// validator still fetches the source blocks it needs to verify.
pub async fn run<K: Kv, R: Relay, C: commonware_runtime::Clock>(
    clock: C,
    state: Arc<Mutex<NodeState<K>>>,
    chain_id: String,
    relay: Arc<R>,
    pace: Pace,
    me: PublicKey,
) {
    let mut last_error = String::new();
    let mut since_collect = pace.collect;
    loop {
        let snapshot = {
            let s = lock(&state);
            match (&s.shard, &s.beacon) {
                (Some(place), Some(beacon)) => match place.committee {
                    Committee::Shard(own) => Some((own, place.tables.clone(), beacon.clone())),
                    Committee::Beacon => None,
                },
                _ => None,
            }
        };
        let Some((own, tables, beacon)) = snapshot else {
            return;
        };
        relay.learn(&beacon);
        let source = BeaconCredits {
            chain_id: chain_id.clone(),
            beacon,
        };
        let mut errors = fetch_wanted(&state, &*relay, &source).await;
        if since_collect >= pace.collect && crate::leaders::leads_soon(&lock(&state), &me) {
            since_collect = Duration::ZERO;
            errors.extend(gather(&state, &*relay, &source, own, &tables).await);
        }
        let error = errors.join("; ");
        if !error.is_empty() && error != last_error {
            warn!(error = %error, "cross-shard credits");
        }
        last_error = error;
        clock.sleep(pace.fetch).await;
        since_collect += pace.fetch;
    }
}

/// One gathering round: verified credits go into the desk.
async fn gather<K: Kv, R: Relay>(
    state: &Arc<Mutex<NodeState<K>>>,
    relay: &R,
    source: &BeaconCredits,
    own: u16,
    tables: &[u8],
) -> Vec<String> {
    let owned: TableSet = tables.iter().copied().collect();
    let mut shards: BTreeMap<u16, TableSet> = BTreeMap::new();
    for table in 0..=255u8 {
        let owner = source.beacon.owner(table);
        if owner != own {
            shards
                .entry(owner)
                .or_insert_with(TableSet::none)
                .insert(table);
        }
    }
    // Each pair continues after what is credited or already waiting in the desk.
    let inbox = |dest, src| {
        let s = lock(state);
        match s.ledger.inbox_next(dest, src) {
            Ok(credited) => s.credits.next_missing(src, dest, credited),
            Err(_) => u64::MAX,
        }
    };
    let got = credits::collect(relay, source, &shards, &owned, inbox, MAX_BLOCK_CREDITS).await;
    if !got.credits.is_empty() {
        debug!(credits = got.credits.len(), "gathered cross-shard credits");
    }
    let mut s = lock(state);
    let NodeState {
        credits, ledger, ..
    } = &mut *s;
    credits.deposit(got.credits);
    credits.prune(|dest, source| ledger.inbox_next(dest, source).unwrap_or(0));
    got.errors
        .into_iter()
        .map(|(shard, e)| format!("from shard {shard}: {e}"))
        .collect()
}

/// Fetches and checks the source blocks proposed blocks named. Each request is tried
/// once: a verification still waiting for it asks again on its next try, so a block
/// naming a source block nobody has costs nothing once its view is over.
async fn fetch_wanted<K: Kv, R: Relay>(
    state: &Arc<Mutex<NodeState<K>>>,
    relay: &R,
    source: &BeaconCredits,
) -> Vec<String> {
    let wanted: Vec<(u16, u64)> = std::mem::take(&mut lock(state).credits.wanted)
        .into_iter()
        .collect();
    let mut errors = Vec::new();
    for (shard, height) in wanted {
        match fetch_header(relay, source, shard, height).await {
            Ok(header) => lock(state).credits.remember(shard, header),
            Err(e) => errors.push(format!("block {height} of shard {shard}: {e}")),
        }
    }
    errors
}

/// A source block by height, decoded and with its certificate checked.
pub async fn fetch_header<R: Relay>(
    relay: &R,
    source: &BeaconCredits,
    shard: u16,
    height: u64,
) -> Result<SourceHeader, String> {
    let CertifiedBlock { block, certificate } = relay
        .certified_block(shard, Some(height))
        .await
        .map_err(|e: RelayError| e.to_string())?;
    let header = source.decode_header(&block)?;
    if header.height != height {
        return Err(format!("asked for height {height}, got {}", header.height));
    }
    if !source.certificate_ok(shard, &header, &certificate) {
        return Err(format!(
            "the certificate does not finalize it with a quorum of shard {shard}'s validators"
        ));
    }
    Ok(header)
}

/// Also the fixtures of other modules' tests (`handoff`): a beacon of 2 shards and real
/// certificates.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::chain::Scheme;
    use crate::relay::{BeaconPage, LocalRelay, OutboxRequest, RelayServer, SnapshotRequest};
    use commonware_consensus::simplex::types::{Finalization, Finalize, Proposal};
    use commonware_consensus::types::{Epoch, Round, View};
    use commonware_utils::ordered::Set;
    use trellis_node_api::shard::{GenesisValidator, ShardingGenesis, ShardingMode};
    use trellis_node_beacon::BeaconGenesis;
    use trellis_node_state::{Ledger, MemKv, OutboxPage, TableSnapshot};
    use trellis_node_types::{
        Encode, PrivateKey, PublicKey, ShardHeader, Sharding, Signer, TableRoot, Tx, TxKind,
        UnsignedTx, table_of, test_key, to_hex,
    };

    pub(crate) const CHAIN: &str = "xs";

    /// Shard 0's validators are `keys(100)`, shard 1's `keys(200)`, the beacon's `keys(300)`.
    pub(crate) fn keys(base: u64) -> Vec<PrivateKey> {
        (base..base + 4).map(test_key).collect()
    }

    /// 2 shards, 10 beacon heights per epoch.
    pub(crate) fn beacon() -> BeaconState {
        let seat = |k: &PrivateKey, shard| GenesisValidator {
            node_key: to_hex(k.public_key().as_ref()),
            shard,
            p2p_address: "127.0.52.1:9000".into(),
            rpc_address: "127.0.52.1:8545".into(),
            member: None,
        };
        let sharding = ShardingGenesis {
            mode: ShardingMode::Public,
            admin_key: to_hex(test_key(99).public_key().as_ref()),
            max_shards: 2,
            shard_count: 2,
            beacon: keys(300).iter().map(|k| seat(k, 0)).collect(),
            validators: keys(100)
                .iter()
                .map(|k| seat(k, 0))
                .chain(keys(200).iter().map(|k| seat(k, 1)))
                .collect(),
        };
        BeaconState::genesis(BeaconGenesis::from_contract(CHAIN, 10, &[], &sharding).unwrap())
            .unwrap()
    }

    /// A real simplex finalization of `digest` by `signers` in `committee`'s namespace.
    pub(crate) fn certify(signers: &[PrivateKey], committee: Committee, digest: Digest) -> Vec<u8> {
        let namespace = crate::engine::consensus_namespace(CHAIN, Some(committee));
        let participants =
            Set::try_from(signers.iter().map(|k| k.public_key()).collect::<Vec<_>>()).unwrap();
        let proposal = Proposal::new(
            Round::new(Epoch::new(0), View::new(3)),
            View::new(2),
            digest,
        );
        let votes: Vec<Finalize<Scheme, Digest>> = signers[..3]
            .iter()
            .map(|k| {
                let scheme = Scheme::signer(&namespace, participants.clone(), k.clone()).unwrap();
                Finalize::sign(&scheme, proposal.clone()).unwrap()
            })
            .collect();
        let scheme = Scheme::signer(&namespace, participants, signers[0].clone()).unwrap();
        Finalization::from_finalizes(
            &scheme,
            commonware_utils::iter::NonEmpty::try_new(votes.iter()).unwrap(),
            &commonware_parallel::Sequential,
        )
        .unwrap()
        .encode()
        .to_vec()
    }

    /// Shard 0's node as the relay sees it: one certified block and its ledger.
    struct Source {
        ledger: Mutex<Ledger<MemKv>>,
        block: CertifiedBlock,
    }

    impl RelayServer for Source {
        fn beacon_blocks(&self, _: u64, _: u32) -> Result<BeaconPage, RelayError> {
            Err(RelayError::NoRoute("beacon".into()))
        }
        fn certified_block(&self, _: Option<u64>) -> Result<CertifiedBlock, RelayError> {
            Ok(self.block.clone())
        }
        fn outbox_heads(
            &self,
            sources: &[u8],
            dests: &[u8],
            height: u64,
        ) -> Result<Vec<(u8, u8, u64)>, RelayError> {
            crate::rpc_shard::outbox_heads(&self.ledger.lock().unwrap(), sources, dests, height)
        }
        fn outbox(&self, request: &OutboxRequest) -> Result<OutboxPage, RelayError> {
            crate::rpc_shard::outbox(&self.ledger.lock().unwrap(), request)
        }
        fn table_snapshot(&self, _: &SnapshotRequest) -> Result<TableSnapshot, RelayError> {
            Err(RelayError::NoRoute("snapshot".into()))
        }
        fn submit_tx(&self, tx: Tx) -> Result<Digest, RelayError> {
            Ok(tx.hash())
        }
    }

    struct World {
        beacon: BeaconState,
        /// Shard 1's node (the receiver's).
        node: NodeState<MemKv>,
        place: ShardPlace,
        ledger: Ledger<MemKv>,
        /// Shard 0's block 2, carrying the roots height 1 left.
        block: Block,
    }

    fn key_in(beacon: &BeaconState, shard: u16, from: u64) -> PrivateKey {
        (from..)
            .map(test_key)
            .find(|k| beacon.owner(table_of(&k.public_key())) == shard)
            .unwrap()
    }

    /// Alice (shard 0) sent bob (shard 1) three transfers at height 1.
    fn world() -> World {
        let beacon = beacon();
        let alice = key_in(&beacon, 0, 1_000);
        let bob: PublicKey = key_in(&beacon, 1, 2_000).public_key();
        let balances = vec![(alice.public_key(), 1_000), (bob.clone(), 1_000)];
        let tables =
            |s: u16| -> Vec<u8> { (0..=255u8).filter(|t| beacon.owner(*t) == s).collect() };
        let mut ledger = Ledger::open(MemKv::default()).unwrap();
        ledger
            .init_genesis_owned(&balances, &tables(0).into_iter().collect())
            .unwrap();
        let txs: Vec<Tx> = (0..3)
            .map(|nonce| {
                UnsignedTx {
                    chain_id: CHAIN.into(),
                    from: alice.public_key(),
                    nonce,
                    fee: 1,
                    kind: TxKind::Transfer {
                        to: bob.clone(),
                        amount: 10,
                    },
                }
                .sign(&alice)
            })
            .collect();
        assert!(
            ledger
                .apply_block(1, &txs)
                .unwrap()
                .iter()
                .all(|r| r.success)
        );
        let roots = tables(0)
            .into_iter()
            .map(|table| TableRoot {
                table,
                root: ledger.table_root_at(table, 1).unwrap().unwrap(),
            })
            .collect();
        let block = Block::new(Digest([1; 32]), 2, 0, 2, 0, vec![]).with_sharding(Sharding {
            header: ShardHeader {
                committee: Committee::Shard(0),
                beacon_height: 0,
                state_height: 1,
                roots,
            },
            credits: vec![],
            system: vec![],
        });
        let place = ShardPlace {
            committee: Committee::Shard(1),
            tables: tables(1),
            beacon_height: 0,
        };
        let node = NodeState::open_in(MemKv::default(), CHAIN, &balances, 10, Some(place.clone()))
            .unwrap()
            .with_beacon(beacon.clone())
            .unwrap();
        World {
            beacon,
            node,
            place,
            ledger,
            block,
        }
    }

    fn relay_serving(
        w: World,
        certificate: Vec<u8>,
    ) -> (LocalRelay, NodeState<MemKv>, ShardPlace, BeaconCredits) {
        let relay = LocalRelay::new();
        relay.set_shard(
            0,
            vec![Arc::new(Source {
                ledger: Mutex::new(w.ledger),
                block: CertifiedBlock {
                    block: w.block.encode().to_vec(),
                    certificate,
                },
            })],
        );
        let source = BeaconCredits {
            chain_id: CHAIN.into(),
            beacon: w.beacon,
        };
        (relay, w.node, w.place, source)
    }

    #[test]
    fn credits_are_verified_before_voting_and_forged_ones_refused() {
        let w = world();
        let certificate = certify(&keys(100), Committee::Shard(0), w.block.digest());
        let (relay, mut node, place, source) = relay_serving(w, certificate);
        let state = Arc::new(Mutex::new(node));
        // The proposer's side: gather verified credits from shard 0.
        let errors = futures::executor::block_on(gather(&state, &relay, &source, 1, &place.tables));
        assert!(errors.is_empty(), "{errors:?}");
        // A second round continues after what the desk holds and changes nothing.
        let errors = futures::executor::block_on(gather(&state, &relay, &source, 1, &place.tables));
        assert!(errors.is_empty(), "{errors:?}");
        node = Arc::try_unwrap(state).ok().unwrap().into_inner().unwrap();
        assert_eq!(node.credits.pending(), 3);
        let (src, dst) = *node.credits.pool.keys().next().unwrap();
        assert_eq!(node.credits.next_missing(src, dst, 0), 3);
        assert_eq!(node.credits.next_missing(src, dst, 1), 3);
        assert_eq!(node.credits.next_missing(src, dst, 5), 5);
        let credits = credits_for_block(&node, &[]);
        assert_eq!(credits.len(), 3);
        // Two of them already in an unfinalized ancestor: only the third follows.
        let in_flight: Vec<&Credit> = credits[..2].iter().collect();
        assert_eq!(credits_for_block(&node, &in_flight), credits[2..].to_vec());

        // A validator that has not checked block 2 of shard 0 waits and asks for it.
        assert_eq!(
            check_credits(&mut node, &place, &credits),
            CreditCheck::Wait
        );
        assert!(node.credits.wanted.contains(&(0, 2)));
        let header = futures::executor::block_on(fetch_header(&relay, &source, 0, 2)).unwrap();
        node.credits.remember(0, header);
        assert!(node.credits.wanted.is_empty());
        assert_eq!(
            check_credits(&mut node, &place, &credits),
            CreditCheck::Valid
        );

        // Forged: an inflated amount, a receipt the proof is not for, a table the named
        // block carries no root of, a destination this shard does not own, this shard
        // as its own source.
        let refused = |node: &mut NodeState<MemKv>, credits: &[Credit]| match check_credits(
            node, &place, credits,
        ) {
            CreditCheck::Refused(reason) => reason,
            other => panic!("a forged credit was not refused: {other:?}"),
        };
        let mut inflated = credits.clone();
        inflated[1].receipt.amount = 1_000_000;
        let reason = refused(&mut node, &inflated);
        assert!(
            reason.contains("seq 1") && reason.contains("not proven"),
            "{reason}"
        );
        let mut swapped = credits.clone();
        swapped[0].proof = credits[1].proof.clone();
        assert!(refused(&mut node, &swapped).contains("not proven"));
        let mut rootless = credits.clone();
        rootless[0].receipt.source_table = place.tables[0];
        assert!(refused(&mut node, &rootless).contains("root"));
        let mut elsewhere = credits.clone();
        elsewhere[0].receipt.dest_table = rootless[0].receipt.source_table ^ 0x80;
        if place
            .tables
            .binary_search(&elsewhere[0].receipt.dest_table)
            .is_err()
        {
            assert!(refused(&mut node, &elsewhere).contains("not owned"));
        }
        let mut own = credits.clone();
        own[0].source_shard = 1;
        assert!(refused(&mut node, &own).contains("this shard as source"));

        // Executing credits each receipt once; the desk forgets them.
        let receipts: Vec<CrossReceipt> = credits.iter().map(|c| c.receipt.clone()).collect();
        let mut twice = receipts.clone();
        twice.extend(receipts);
        let outcome = node
            .ledger
            .apply_block_with_credits(1, &[], &twice, Default::default())
            .unwrap();
        assert_eq!(
            outcome.credits.iter().filter(|c| c.is_credited()).count(),
            3
        );
        executed(&mut node);
        assert_eq!(node.credits.pending(), 0);
        assert!(credits_for_block(&node, &[]).is_empty());
    }

    #[test]
    fn source_blocks_with_forged_certificates_are_refused() {
        let w = world();
        let digest = w.block.digest();
        let cases = [
            // A quorum of another shard's validators.
            (certify(&keys(200), Committee::Shard(0), digest), "quorum"),
            // The right validators, signing in another committee's namespace.
            (certify(&keys(100), Committee::Shard(1), digest), "quorum"),
            // A real certificate of another block.
            (
                certify(&keys(100), Committee::Shard(0), Digest([9; 32])),
                "quorum",
            ),
            (vec![7; 64], "quorum"),
        ];
        for (certificate, why) in cases {
            let w = world();
            let (relay, node, place, source) = relay_serving(w, certificate);
            let err = futures::executor::block_on(fetch_header(&relay, &source, 0, 2)).unwrap_err();
            assert!(err.contains(why), "{err}");
            // Nothing is gathered from such a block either.
            let state = Arc::new(Mutex::new(node));
            let errors =
                futures::executor::block_on(gather(&state, &relay, &source, 1, &place.tables));
            assert!(
                errors.iter().any(|e| e.contains("certificate")),
                "{errors:?}"
            );
            assert_eq!(lock(&state).credits.pending(), 0);
        }
        // Asked for one height, answered with another.
        let w = world();
        let certificate = certify(&keys(100), Committee::Shard(0), w.block.digest());
        let (relay, _, _, source) = relay_serving(w, certificate);
        let err = futures::executor::block_on(fetch_header(&relay, &source, 0, 5)).unwrap_err();
        assert!(err.contains("asked for height 5"), "{err}");
    }
}
