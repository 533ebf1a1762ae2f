//! Credits: the cross-shard receipts other shards owe this shard's tables, fetched
//! through the [`Relay`] and verified before a proposer puts them in a block (validators
//! verify a proposed block's credits the same way before voting).
//!
//! A credit is trusted only through a chain of checks, all done here:
//! 1. a block of the source shard, finalized by a quorum of that shard's validators for
//!    the block's epoch (the caller's [`CreditSource::certificate_ok`], from beacon state);
//! 2. the block's header carries the source table's root at the header's state height —
//!    only a shard that owned the table at that height puts its root there;
//! 3. every receipt has a Merkle proof against that root, and the receipts are the
//!    consecutive ones from the destination table's inbox counter.
//!
//! The ledger then credits each exactly once and in order (`apply_block_with_credits`).

use crate::relay::{OutboxRequest, Relay, RelayError};
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use trellis_node_state::{MAX_OUTBOX_PAGE, OutboxPage, ProofError, TableSet, verify_receipt};
use trellis_node_types::{CrossReceipt, Digest, to_hex};

/// What credit verification needs from a certified block header.
pub trait CertifiedHeader {
    /// What the finalization certificate signs (the block digest).
    fn digest(&self) -> Digest;
    /// The block's height in its shard's chain.
    fn height(&self) -> u64;
    /// Height of the finalized state whose table roots the header carries.
    fn state_height(&self) -> u64;
    /// The root of `table` at [`Self::state_height`], if the header carries it.
    fn table_root(&self, table: u8) -> Option<[u8; 32]>;
}

/// How this node reads and checks other shards' blocks (implemented by the node wiring
/// with the block type and the beacon's validator sets).
pub trait CreditSource: Send + Sync {
    type Header: CertifiedHeader + Send;
    /// Decodes a relayed block (untrusted bytes) into its header.
    fn decode_header(&self, block: &[u8]) -> Result<Self::Header, String>;
    /// Whether `certificate` finalizes `header` with a quorum of `shard`'s validators for
    /// the header's epoch, under that shard's consensus namespace.
    fn certificate_ok(&self, shard: u16, header: &Self::Header, certificate: &[u8]) -> bool;
}

/// A page of receipts with the certified header it is proven against.
pub struct CreditBundle<H> {
    pub header: H,
    pub certificate: Vec<u8>,
    pub page: OutboxPage,
}

/// Why relayed credits were not accepted. Nothing is credited from a refused bundle.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    #[error(
        "certificate does not finalize block {0} with a quorum of the source shard's validators"
    )]
    BadCertificate(String),
    #[error("block of the source shard does not decode: {0}")]
    BadBlock(String),
    #[error("outbox page is proven at height {page}, the header carries roots of height {header}")]
    WrongHeight { header: u64, page: u64 },
    #[error("the certified header carries no root for table {0} (not owned by that shard then)")]
    NoRoot(u8),
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error(transparent)]
    Relay(#[from] RelayError),
}

/// Checks a bundle as the answer to "receipts of `source_table` → `dest_table` from
/// `from_seq`": the certificate (through `certificate_ok`), the height, the header's
/// root of the source table, and every proof. Returns the receipts to credit, in order.
pub fn verify_bundle<H: CertifiedHeader>(
    bundle: &CreditBundle<H>,
    source_table: u8,
    dest_table: u8,
    from_seq: u64,
    certificate_ok: impl FnOnce(&H, &[u8]) -> bool,
) -> Result<Vec<CrossReceipt>, CreditError> {
    if !certificate_ok(&bundle.header, &bundle.certificate) {
        return Err(CreditError::BadCertificate(to_hex(
            &bundle.header.digest().0,
        )));
    }
    verify_page(
        &bundle.header,
        &bundle.page,
        source_table,
        dest_table,
        from_seq,
    )
}

/// The checks of [`verify_bundle`] after the certificate's.
fn verify_page<H: CertifiedHeader>(
    header: &H,
    page: &OutboxPage,
    source_table: u8,
    dest_table: u8,
    from_seq: u64,
) -> Result<Vec<CrossReceipt>, CreditError> {
    let height = header.state_height();
    if page.height != height {
        return Err(CreditError::WrongHeight {
            header: height,
            page: page.height,
        });
    }
    let root = header
        .table_root(source_table)
        .ok_or(CreditError::NoRoot(source_table))?;
    Ok(page.verify(source_table, dest_table, from_seq, &root)?)
}

/// A receipt with what lets any validator re-check it: the source shard's certified
/// block (by height) whose header root the proof is against. What a block carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvenCredit {
    pub source_shard: u16,
    /// Height of the source shard's block whose header carries the root.
    pub source_height: u64,
    pub receipt: CrossReceipt,
    pub proof: Vec<u8>,
}

/// Credits gathered in one round, and what went wrong per source shard.
#[derive(Debug, Default)]
pub struct Collected {
    /// Verified credits, grouped by pair and in seq order within each pair.
    pub credits: Vec<ProvenCredit>,
    pub errors: Vec<(u16, CreditError)>,
}

impl Collected {
    /// The receipts, for `Ledger::apply_block_with_credits`.
    pub fn receipts(&self) -> Vec<CrossReceipt> {
        self.credits.iter().map(|c| c.receipt.clone()).collect()
    }
}

/// Checks one credit against a header whose certificate the caller has checked.
pub fn verify_credit<H: CertifiedHeader>(
    header: &H,
    receipt: &CrossReceipt,
    proof: &[u8],
) -> Result<(), CreditError> {
    let root = header
        .table_root(receipt.source_table)
        .ok_or(CreditError::NoRoot(receipt.source_table))?;
    Ok(verify_receipt(receipt, proof, &root)?)
}

/// Checks the credits of a proposed block before voting: for each source block they
/// name, fetches it through the relay, checks its certificate, then every proof against
/// its header's roots. Order and duplicates need no check here: the ledger credits each
/// receipt once, in order, and makes the rest no-ops.
pub async fn verify_credits<R: Relay, S: CreditSource>(
    relay: &R,
    source: &S,
    credits: &[ProvenCredit],
) -> Result<(), CreditError> {
    let mut headers: BTreeMap<(u16, u64), S::Header> = BTreeMap::new();
    for credit in credits {
        let key = (credit.source_shard, credit.source_height);
        let header = match headers.entry(key) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(slot) => {
                let block = relay.certified_block(key.0, Some(key.1)).await?;
                let header = source
                    .decode_header(&block.block)
                    .map_err(CreditError::BadBlock)?;
                if header.height() != key.1 {
                    return Err(CreditError::BadBlock(format!(
                        "asked for height {}, got {}",
                        key.1,
                        header.height()
                    )));
                }
                if !source.certificate_ok(key.0, &header, &block.certificate) {
                    return Err(CreditError::BadCertificate(to_hex(&header.digest().0)));
                }
                slot.insert(header)
            }
        };
        verify_credit(header, &credit.receipt, &credit.proof)?;
    }
    Ok(())
}

/// Gathers up to `max` verified credits for the tables in `owned` from the other shards
/// (`shards`: each shard's tables this epoch, from the beacon's table map). `inbox(dest,
/// source)` is the destination table's next expected seq (`Ledger::inbox_next`). For each
/// source shard: its latest certified block, the pairs with receipts past the inbox
/// counters, then the pages, each verified against that block's header.
pub async fn collect<R: Relay, S: CreditSource>(
    relay: &R,
    source: &S,
    shards: &BTreeMap<u16, TableSet>,
    owned: &TableSet,
    inbox: impl Fn(u8, u8) -> u64 + Sync,
    max: usize,
) -> Collected {
    let mut out = Collected::default();
    let dests: Vec<u8> = owned.iter().collect();
    for (&shard, tables) in shards {
        if out.credits.len() >= max {
            break;
        }
        let sources: Vec<u8> = tables.iter().collect();
        if sources.is_empty() {
            continue;
        }
        let mut errors = Vec::new();
        let round = collect_from(
            relay,
            source,
            (shard, sources, dests.clone()),
            &inbox,
            max,
            &mut out.credits,
            &mut errors,
        )
        .await;
        if let Err(e) = round {
            errors.push(e);
        }
        out.errors.extend(errors.into_iter().map(|e| (shard, e)));
    }
    out
}

/// One source shard's round: shard-level failures end it (`Err`), a pair's failure is
/// recorded in `errors` and the other pairs go on.
async fn collect_from<R: Relay, S: CreditSource>(
    relay: &R,
    source: &S,
    (shard, sources, dests): (u16, Vec<u8>, Vec<u8>),
    inbox: &(impl Fn(u8, u8) -> u64 + Sync),
    max: usize,
    credits: &mut Vec<ProvenCredit>,
    errors: &mut Vec<CreditError>,
) -> Result<(), CreditError> {
    let block = relay.certified_block(shard, None).await?;
    let header = source
        .decode_header(&block.block)
        .map_err(CreditError::BadBlock)?;
    // Checked once for the whole round; every page below is proven against this header.
    if !source.certificate_ok(shard, &header, &block.certificate) {
        return Err(CreditError::BadCertificate(to_hex(&header.digest().0)));
    }
    let height = header.state_height();
    let heads = relay.outbox_heads(shard, sources, dests, height).await?;
    for (source_table, dest_table, next_seq) in heads {
        let from_seq = inbox(dest_table, source_table);
        if next_seq <= from_seq {
            continue;
        }
        let room = max.saturating_sub(credits.len());
        if room == 0 {
            break;
        }
        let limit = room.min(MAX_OUTBOX_PAGE) as u32;
        let request = OutboxRequest {
            source_table,
            dest_table,
            from_seq,
            limit,
            height,
        };
        let page = match relay.outbox(shard, request).await {
            Ok(page) => page,
            Err(e) => {
                errors.push(e.into());
                continue;
            }
        };
        // The certificate was checked above for this very header.
        match verify_page(&header, &page, source_table, dest_table, from_seq) {
            Ok(_) => credits.extend(page.entries.into_iter().take(room).map(|e| ProvenCredit {
                source_shard: shard,
                source_height: header.height(),
                receipt: e.receipt,
                proof: e.proof,
            })),
            Err(e) => errors.push(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Scheme;
    use crate::relay::{
        BeaconPage, CertifiedBlock, HttpRelay, LocalRelay, RelayServer, SnapshotRequest,
    };
    use crate::rpc_shard;
    use commonware_consensus::simplex::types::{Finalization, Finalize, Proposal};
    use commonware_consensus::types::{Epoch, Round, View};
    use commonware_cryptography::{Hasher, Sha256};
    use commonware_utils::ordered::Set;
    use std::sync::{Arc, Mutex};
    use trellis_node_state::{Ledger, MemKv, TableSnapshot, WriteBatch};
    use trellis_node_types::{
        Encode, PrivateKey, PublicKey, Signer, Tx, TxKind, UnsignedTx, table_of, test_key,
    };

    const CHAIN: &str = "credits-test";
    /// The source shard's consensus namespace (as the node derives it for `shard-0`).
    const NAMESPACE: &[u8] = b"_TRELLIS_CONSENSUS_credits-test/shard-0";

    /// Verifies a finalization certificate the way the node does: decode for the
    /// committee's size, the proposal's payload is the digest, a quorum of valid
    /// signatures of `validators` under the namespace.
    fn finalizes(validators: &[PublicKey], certificate: &[u8], digest: &Digest) -> bool {
        use commonware_codec::Decode;
        let Ok(participants) = Set::try_from(validators.to_vec()) else {
            return false;
        };
        let scheme = Scheme::verifier(NAMESPACE, participants);
        let Ok(finalization) = Finalization::<Scheme, Digest>::decode_cfg(
            commonware_codec::Copying(certificate),
            &validators.len(),
        ) else {
            return false;
        };
        finalization.proposal.payload == *digest
            && finalization.verify(
                &mut commonware_utils::sys_rng(),
                &scheme,
                &commonware_parallel::Sequential,
            )
    }

    /// A header for tests: the roots of the owned tables at a state height; its digest
    /// commits to both.
    #[derive(Clone, Debug)]
    struct TestHeader {
        height: u64,
        state_height: u64,
        roots: BTreeMap<u8, [u8; 32]>,
    }

    impl TestHeader {
        fn encode(&self) -> Vec<u8> {
            let mut out = self.height.to_be_bytes().to_vec();
            out.extend_from_slice(&self.state_height.to_be_bytes());
            for (t, r) in &self.roots {
                out.push(*t);
                out.extend_from_slice(r);
            }
            out
        }

        fn decode(bytes: &[u8]) -> Result<Self, String> {
            let (block_height, bytes) = bytes.split_at_checked(8).ok_or("short header")?;
            let (height, rest) = bytes.split_at_checked(8).ok_or("short header")?;
            if rest.len() % 33 != 0 {
                return Err("bad header length".into());
            }
            let mut roots = BTreeMap::new();
            for entry in rest.chunks(33) {
                roots.insert(entry[0], entry[1..].try_into().map_err(|_| "root")?);
            }
            Ok(Self {
                height: u64::from_be_bytes(block_height.try_into().map_err(|_| "height")?),
                state_height: u64::from_be_bytes(height.try_into().map_err(|_| "height")?),
                roots,
            })
        }
    }

    impl CertifiedHeader for TestHeader {
        fn digest(&self) -> Digest {
            Sha256::hash(&[&self.encode()])
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

    /// A real simplex finalization of `digest` signed by `signers` of `validators`.
    fn certify(validators: &[PrivateKey], signers: &[usize], digest: Digest) -> Vec<u8> {
        let participants = Set::try_from(
            validators
                .iter()
                .map(|k| k.public_key())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let namespace = NAMESPACE;
        let proposal = Proposal::new(
            Round::new(Epoch::new(0), View::new(7)),
            View::new(6),
            digest,
        );
        let votes: Vec<Finalize<Scheme, Digest>> = signers
            .iter()
            .map(|&i| {
                let scheme =
                    Scheme::signer(namespace, participants.clone(), validators[i].clone()).unwrap();
                Finalize::sign(&scheme, proposal.clone()).unwrap()
            })
            .collect();
        let scheme =
            Scheme::signer(namespace, participants.clone(), validators[0].clone()).unwrap();
        let finalization = Finalization::from_finalizes(
            &scheme,
            commonware_utils::iter::NonEmpty::try_new(votes.iter()).unwrap(),
            &commonware_parallel::Sequential,
        )
        .unwrap();
        finalization.encode().to_vec()
    }

    /// Checks certificates against a fixed validator set, as the wiring does per epoch.
    struct Source {
        validators: Vec<PublicKey>,
    }

    impl CreditSource for Source {
        type Header = TestHeader;
        fn decode_header(&self, block: &[u8]) -> Result<TestHeader, String> {
            TestHeader::decode(block)
        }
        fn certificate_ok(&self, _shard: u16, header: &TestHeader, certificate: &[u8]) -> bool {
            finalizes(&self.validators, certificate, &header.digest())
        }
    }

    /// A source shard's node: its ledger and its latest certified block. `tamper`
    /// makes it a lying relay.
    struct Node {
        ledger: Arc<Mutex<Ledger<MemKv>>>,
        latest: Mutex<Option<CertifiedBlock>>,
        tamper: bool,
        down: bool,
    }

    fn down() -> RelayError {
        RelayError::Unreachable {
            target: "test node".into(),
            last: "down".into(),
        }
    }

    impl RelayServer for Node {
        fn beacon_blocks(&self, _: u64, _: u32) -> Result<BeaconPage, RelayError> {
            Err(down())
        }
        fn certified_block(&self, _: Option<u64>) -> Result<CertifiedBlock, RelayError> {
            if self.down {
                return Err(down());
            }
            self.latest.lock().unwrap().clone().ok_or_else(down)
        }
        fn outbox_heads(
            &self,
            sources: &[u8],
            dests: &[u8],
            height: u64,
        ) -> Result<Vec<(u8, u8, u64)>, RelayError> {
            rpc_shard::outbox_heads(&self.ledger.lock().unwrap(), sources, dests, height)
        }
        fn outbox(&self, r: &OutboxRequest) -> Result<OutboxPage, RelayError> {
            let mut page = rpc_shard::outbox(&self.ledger.lock().unwrap(), r)?;
            if self.tamper {
                for e in &mut page.entries {
                    e.receipt.amount += 1_000;
                }
            }
            Ok(page)
        }
        fn table_snapshot(&self, r: &SnapshotRequest) -> Result<TableSnapshot, RelayError> {
            rpc_shard::table_snapshot(&self.ledger.lock().unwrap(), r)
        }
        fn submit_tx(&self, tx: Tx) -> Result<Digest, RelayError> {
            Ok(tx.hash())
        }
    }

    fn slice(shard: u8) -> TableSet {
        (0..=255u8).filter(|t| t % 2 == shard).collect()
    }

    fn key_in(set: &TableSet, start: u64) -> PrivateKey {
        (start..)
            .map(test_key)
            .find(|k| set.contains(table_of(&k.public_key())))
            .unwrap()
    }

    fn transfer(from: &PrivateKey, to: &PublicKey, nonce: u64, amount: u64) -> Tx {
        UnsignedTx {
            chain_id: CHAIN.into(),
            from: from.public_key(),
            nonce,
            fee: 1,
            kind: TxKind::Transfer {
                to: to.clone(),
                amount,
            },
        }
        .sign(from)
    }

    struct World {
        validators: Vec<PrivateKey>,
        a: Arc<Mutex<Ledger<MemKv>>>,
        b: Ledger<MemKv>,
        bob: PublicKey,
        src: u8,
        dst: u8,
    }

    /// Shard 0 (even tables) sent 3 receipts to bob on shard 1 (odd tables).
    fn world() -> World {
        let alice = key_in(&slice(0), 0);
        let bob = key_in(&slice(1), 0).public_key();
        let balances = vec![(alice.public_key(), 100), (bob.clone(), 100)];
        let mut a = Ledger::open(MemKv::default()).unwrap();
        a.init_genesis_owned(&balances, &slice(0)).unwrap();
        let mut b = Ledger::open(MemKv::default()).unwrap();
        b.init_genesis_owned(&balances, &slice(1)).unwrap();
        let txs: Vec<Tx> = (0..3).map(|n| transfer(&alice, &bob, n, 10)).collect();
        assert!(a.apply_block(1, &txs).unwrap().iter().all(|r| r.success));
        World {
            validators: (100..104).map(test_key).collect(),
            src: table_of(&alice.public_key()),
            dst: table_of(&bob),
            a: Arc::new(Mutex::new(a)),
            b,
            bob,
        }
    }

    /// Shard 0's header at its current height, with real roots.
    fn header(w: &World) -> TestHeader {
        let a = w.a.lock().unwrap();
        let h = a.height().unwrap();
        TestHeader {
            height: h + 1,
            state_height: h,
            roots: a
                .owned_tables()
                .iter()
                .map(|t| (t, a.table_root_at(t, h).unwrap().unwrap()))
                .collect(),
        }
    }

    fn node(w: &World, header: &TestHeader, certificate: Vec<u8>, tamper: bool) -> Arc<Node> {
        Arc::new(Node {
            ledger: w.a.clone(),
            latest: Mutex::new(Some(CertifiedBlock {
                block: header.encode(),
                certificate,
            })),
            tamper,
            down: false,
        })
    }

    fn source(w: &World) -> Source {
        Source {
            validators: w.validators.iter().map(|k| k.public_key()).collect(),
        }
    }

    fn shards() -> BTreeMap<u16, TableSet> {
        [(0u16, slice(0))].into_iter().collect()
    }

    fn run_collect(relay: &LocalRelay, w: &World, max: usize) -> Collected {
        futures::executor::block_on(collect(
            relay,
            &source(w),
            &shards(),
            &w.b.owned_tables(),
            |d, s| w.b.inbox_next(d, s).unwrap(),
            max,
        ))
    }

    #[test]
    fn credits_are_collected_verified_and_credited_once() {
        let mut w = world();
        let h = header(&w);
        let cert = certify(&w.validators, &[0, 1, 2], h.digest());
        let relay = LocalRelay::new();
        // The first node is down: the relay fails over to the second.
        let mut dead = Arc::try_unwrap(node(&w, &h, cert.clone(), false))
            .ok()
            .unwrap();
        dead.down = true;
        relay.set_shard(0, vec![Arc::new(dead), node(&w, &h, cert, false)]);
        let got = run_collect(&relay, &w, 100);
        assert!(got.errors.is_empty(), "{:?}", got.errors);
        assert_eq!(got.credits.len(), 3);
        assert!(got.receipts().iter().all(|r| r.dest_table == w.dst));
        assert!(
            got.credits
                .iter()
                .all(|c| (c.source_shard, c.source_height) == (0, 2))
        );
        // What a validator does with a proposed block's credits.
        let verified =
            futures::executor::block_on(verify_credits(&relay, &source(&w), &got.credits));
        assert_eq!(verified, Ok(()));
        let mut forged = got.credits.clone();
        forged[2].receipt.amount = 1;
        assert!(matches!(
            futures::executor::block_on(verify_credits(&relay, &source(&w), &forged)),
            Err(CreditError::Proof(ProofError::Mismatch { seq: 2, .. }))
        ));
        let outcome =
            w.b.apply_block_with_credits(1, &[], &got.receipts(), WriteBatch::default())
                .unwrap();
        assert!(outcome.credits.iter().all(|c| c.is_credited()));
        assert_eq!(w.b.account(&w.bob).unwrap().balance, 130);
        // Nothing left to collect; a cap limits a round.
        assert!(run_collect(&relay, &w, 100).credits.is_empty());
        let _ = w.src;
    }

    #[test]
    fn collection_and_verification_can_run_on_any_thread() {
        fn send<T: Send>(_: T) {}
        let w = world();
        let relay = LocalRelay::new();
        let src = source(&w);
        send(verify_credits(&relay, &src, &[]));
        send(collect(
            &relay,
            &src,
            &shards(),
            &TableSet::none(),
            |_, _| 0,
            1,
        ));
    }

    #[test]
    fn the_cap_limits_a_round() {
        let w = world();
        let h = header(&w);
        let cert = certify(&w.validators, &[1, 2, 3], h.digest());
        let relay = LocalRelay::new();
        relay.set_shard(0, vec![node(&w, &h, cert, false)]);
        let got = run_collect(&relay, &w, 2);
        assert_eq!(
            got.receipts().iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![0, 1]
        );
    }

    #[test]
    fn forged_certificates_are_refused() {
        let w = world();
        let h = header(&w);
        let outsiders: Vec<PrivateKey> = (200..204).map(test_key).collect();
        let cases = [
            // Half the committee posing as the whole (a quorum of a 2-member set).
            certify(&w.validators[..2], &[0, 1], h.digest()),
            // A quorum of keys that are not the shard's validators.
            certify(&outsiders, &[0, 1, 2], h.digest()),
            // A real certificate of another header.
            certify(&w.validators, &[0, 1, 2], Sha256::hash(&[b"other"])),
            // Garbage.
            vec![7; 100],
            Vec::new(),
        ];
        for cert in cases {
            let relay = LocalRelay::new();
            relay.set_shard(0, vec![node(&w, &h, cert, false)]);
            let got = run_collect(&relay, &w, 100);
            assert!(got.credits.is_empty());
            assert!(
                matches!(got.errors.as_slice(), [(0, CreditError::BadCertificate(_))]),
                "{:?}",
                got.errors
            );
        }
    }

    #[test]
    fn forged_roots_proofs_and_pages_are_refused() {
        let w = world();
        let good = header(&w);
        // A certified header whose root for the source table is wrong (a Byzantine
        // quorum cannot be ruled out by the proof alone, but its proofs then fail).
        let mut wrong_root = good.clone();
        wrong_root.roots.insert(w.src, [9; 32]);
        let relay = LocalRelay::new();
        let cert = certify(&w.validators, &[0, 1, 2], wrong_root.digest());
        relay.set_shard(0, vec![node(&w, &wrong_root, cert, false)]);
        let got = run_collect(&relay, &w, 100);
        assert!(got.credits.is_empty());
        assert!(matches!(
            got.errors.as_slice(),
            [(0, CreditError::Proof(ProofError::WrongRoot { .. }))]
        ));

        // A header without the source table's root (the table was not that shard's).
        let mut no_root = good.clone();
        no_root.roots.remove(&w.src);
        let cert = certify(&w.validators, &[0, 1, 2], no_root.digest());
        relay.set_shard(0, vec![node(&w, &no_root, cert, false)]);
        let got = run_collect(&relay, &w, 100);
        assert!(got.credits.is_empty());
        assert!(
            got.errors
                .iter()
                .any(|(_, e)| *e == CreditError::NoRoot(w.src)),
            "{:?}",
            got.errors
        );

        // A lying relay inflates the amounts: the proofs no longer match.
        let cert = certify(&w.validators, &[0, 1, 2], good.digest());
        relay.set_shard(0, vec![node(&w, &good, cert.clone(), true)]);
        let got = run_collect(&relay, &w, 100);
        assert!(got.credits.is_empty());
        assert!(matches!(
            got.errors.as_slice(),
            [(0, CreditError::Proof(ProofError::Mismatch { seq: 0, .. }))]
        ));

        // verify_bundle directly: a page of another height, a page from a later seq.
        let page = w.a.lock().unwrap().outbox(w.src, w.dst, 0, 10, 0).unwrap();
        let bundle = CreditBundle {
            header: good.clone(),
            certificate: cert.clone(),
            page,
        };
        let ok = |h: &TestHeader, c: &[u8]| source(&w).certificate_ok(0, h, c);
        assert_eq!(
            verify_bundle(&bundle, w.src, w.dst, 0, ok),
            Err(CreditError::WrongHeight { header: 1, page: 0 })
        );
        let page = w.a.lock().unwrap().outbox(w.src, w.dst, 0, 10, 1).unwrap();
        let bundle = CreditBundle {
            header: good,
            certificate: cert,
            page,
        };
        assert!(matches!(
            verify_bundle(&bundle, w.src, w.dst, 1, ok),
            Err(CreditError::Proof(ProofError::NotConsecutive {
                expected: 1,
                got: 0
            }))
        ));
        assert_eq!(
            verify_bundle(&bundle, w.src, w.dst, 0, ok).unwrap().len(),
            3
        );
    }

    #[test]
    fn relay_methods_answer_through_json_and_refuse_bad_params() {
        let w = world();
        let h = header(&w);
        let server = node(
            &w,
            &h,
            certify(&w.validators, &[0, 1, 2], h.digest()),
            false,
        );
        let call = |method: &str, params: serde_json::Value| {
            rpc_shard::dispatch(server.as_ref(), method, params).unwrap()
        };
        // Outbox page over JSON, decoded with its bounds, verified against the root.
        let answer = call(
            rpc_shard::GET_OUTBOX,
            serde_json::json!({"source_table": w.src, "dest_table": w.dst, "from_seq": 1, "height": 1}),
        )
        .unwrap();
        let page = serde_json::from_value::<rpc_shard::OutboxResult>(answer)
            .unwrap()
            .decode()
            .unwrap();
        let root = h.table_root(w.src).unwrap();
        assert_eq!(page.verify(w.src, w.dst, 1, &root).unwrap().len(), 2);
        // Heads.
        let answer = call(
            rpc_shard::GET_OUTBOX_HEADS,
            serde_json::json!({"source_tables": [w.src, w.src ^ 2], "dest_tables": [w.dst], "height": 1}),
        )
        .unwrap();
        assert_eq!(answer, serde_json::json!({"heads": [[w.src, w.dst, 3]]}));
        // Snapshot chunks over JSON, then imported elsewhere with the root checked.
        let mut chunks = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut params = serde_json::json!({"table": w.src, "height": 1, "limit": 2});
            if let Some(a) = &after {
                params["after"] = serde_json::json!(a);
            }
            let answer = call(rpc_shard::GET_TABLE_SNAPSHOT, params).unwrap();
            let chunk = serde_json::from_value::<rpc_shard::SnapshotResult>(answer)
                .unwrap()
                .decode()
                .unwrap();
            after = chunk.leaves.last().map(|(k, _)| to_hex(k));
            let more = chunk.more;
            chunks.push(chunk);
            if !more {
                break;
            }
        }
        let mut b = w.b;
        b.import_table(w.src, root, &chunks).unwrap();
        assert_eq!(b.table_root(w.src), root);

        // Bad params and unknown heights: clear errors with stable codes.
        use trellis_node_api::error_codes as codes;
        let err = |method: &str, params: serde_json::Value| call(method, params).unwrap_err();
        assert_eq!(
            err(
                rpc_shard::GET_OUTBOX,
                serde_json::json!({"source_table": 300})
            )
            .0,
            codes::INVALID_PARAMS
        );
        assert_eq!(
            err(
                rpc_shard::GET_OUTBOX,
                serde_json::json!({"source_table": 1, "dest_table": 1, "from_seq": 0, "height": 1})
            )
            .0,
            codes::INVALID_PARAMS
        );
        let far = err(
            rpc_shard::GET_OUTBOX,
            serde_json::json!({"source_table": w.src, "dest_table": w.dst, "from_seq": 0, "height": 99}),
        );
        assert_eq!(far.0, codes::NOT_FOUND);
        assert!(far.1.contains("height 99"), "{}", far.1);
        let bad_after = err(
            rpc_shard::GET_TABLE_SNAPSHOT,
            serde_json::json!({"table": 0, "height": 0, "after": "abcd"}),
        );
        assert_eq!(bad_after.0, codes::INVALID_PARAMS);
        assert!(bad_after.1.contains("32 hex-encoded bytes"));
        // Beacon pages (served by the wiring's rpc_beacon) decode within their bounds.
        let page = BeaconPage {
            blocks: vec![vec![1, 2], vec![3]],
            certificate: vec![9; 10],
            finalized_height: 7,
        };
        let wire = rpc_shard::BeaconBlocksResult::from(&page);
        assert_eq!(wire.decode(2), Ok(page));
        assert!(wire.decode(1).unwrap_err().contains("2 blocks"));
        let mut bad = wire.clone();
        bad.certificate = Some("0".repeat(2 * rpc_shard::MAX_RELAYED_CERTIFICATE + 2));
        assert!(bad.decode(2).is_err());
        let mut bad = wire;
        bad.blocks[0] = "xyz".into();
        assert!(bad.decode(2).is_err());
        assert!(
            rpc_shard::dispatch(server.as_ref(), "trellis_status", serde_json::json!({})).is_none()
        );
        // Hostile encodings in results are refused by the decoders.
        let bogus = rpc_shard::OutboxResult { page: "zz".into() };
        assert!(bogus.decode().is_err());
        let bogus = rpc_shard::SnapshotResult {
            chunk: to_hex(&[1, 2, 3]),
        };
        assert!(bogus.decode().is_err());
        let huge = rpc_shard::CertifiedBlockJson {
            block: "00".repeat(trellis_node_types::MAX_BLOCK_SIZE + 1),
            certificate: String::new(),
        };
        assert!(huge.decode().is_err());
    }

    #[tokio::test]
    async fn http_relay_without_nodes_fails_clearly() {
        let relay = HttpRelay::new(Vec::new(), std::time::Duration::from_secs(2)).unwrap();
        assert_eq!(
            relay.certified_block(3, None).await,
            Err(RelayError::NoRoute("shard 3".into()))
        );
        assert_eq!(
            relay.beacon_blocks(0, 1).await,
            Err(RelayError::NoRoute("the beacon".into()))
        );
        // Port 0 accepts no connection: unreachable, with the address in the message.
        relay.set_shard(3, vec!["127.0.0.1:0".into()]);
        match relay.certified_block(3, None).await {
            Err(RelayError::Unreachable { target, last }) => {
                assert_eq!(target, "shard 3");
                assert!(last.contains("127.0.0.1:0"), "{last}");
            }
            other => panic!("{other:?}"),
        }
    }
}
