//! Deterministic simulation of consortium governance: the real chain actor, orchestrator
//! and simplex engines on commonware's deterministic runtime and simulated network.
//!
//! Four organisations run the chain (epochs of 10 blocks). A fifth organisation's node
//! starts from the genesis registry and its own key, is admitted by governance, replays
//! the chain, signs certificates from its first epoch, and survives a crash and restart;
//! then an organisation is removed and its signatures vanish from certificates while the
//! chain keeps finalizing. Every run checks safety (one block per height on every node),
//! supply conservation, and who signed each stored finalization certificate.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use commonware_p2p::Manager as _;
use commonware_p2p::simulated::{Config as NetConfig, Link, Network, Oracle};
use commonware_runtime::deterministic::{self, Context};
use commonware_runtime::{Clock, Handle, Runner, Supervisor};
use commonware_utils::ordered::Set;
use commonware_utils::{NZUsize, probability};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trellis_node::chain::{MAX_MESSAGE_SIZE, NodeState, certificate_signers, lock};
use trellis_node::engine::{PeerSets, Timing, ValidatorConfig, start_node};
use trellis_node::governance::Registry;
use trellis_node::metrics::ChainMetrics;
use trellis_node_api::{CONTRACT_VERSION, Genesis, GenesisMember};
use trellis_node_state::MemKv;
use trellis_node_types::{
    GovernanceAction, GovernanceTx, MemberSpec, PrivateKey, Proposal, PublicKey, Signer, TxKind,
    UnsignedTx, test_key, to_hex,
};

#[path = "support/sim_channels.rs"]
mod sim_channels;

const CHAIN: &str = "gov-sim";
const EPOCH: u64 = 10;
const ACCOUNTS: u64 = 6;
const BALANCE: u64 = 1_000_000;
/// Organisations in the genesis file; node `FOUNDERS` is the one admitted later.
const FOUNDERS: usize = 4;

struct Node {
    key: PrivateKey,
    admin: PrivateKey,
    kv: MemKv,
    state: Option<Arc<Mutex<NodeState<MemKv>>>>,
    handles: Option<(Handle<()>, Handle<()>)>,
}

struct Sim {
    context: Context,
    oracle: Oracle<PublicKey, Context>,
    genesis: Genesis,
    nodes: Vec<Node>,
    accounts: Vec<PrivateKey>,
}

fn name(i: usize) -> String {
    format!("org{i}")
}

impl Sim {
    async fn new(context: Context) -> Self {
        let nodes: Vec<Node> = (0..=FOUNDERS as u64)
            .map(|i| Node {
                key: test_key(2_000 + i),
                admin: test_key(3_000 + i),
                kv: MemKv::default(),
                state: None,
                handles: None,
            })
            .collect();
        let genesis = Genesis {
            contract_version: CONTRACT_VERSION,
            chain_id: CHAIN.into(),
            epoch_length: EPOCH,
            members: nodes[..FOUNDERS]
                .iter()
                .enumerate()
                .map(|(i, n)| GenesisMember {
                    name: name(i),
                    admin_key: to_hex(n.admin.public_key().as_ref()),
                    node_key: to_hex(n.key.public_key().as_ref()),
                    p2p_address: format!("127.0.0.{}:9000", 2 + i),
                })
                .collect(),
            balances: vec![],
            sharding: None,
        };
        let (network, oracle) = Network::new(
            context.child("network"),
            NetConfig {
                max_size: MAX_MESSAGE_SIZE,
                max_peers_per_set: NZUsize!(16),
                disconnect_on_block: true,
                tracked_peer_sets: NZUsize!(1),
            },
        );
        network.start();
        let accounts = (0..ACCOUNTS).map(|i| test_key(50 + i)).collect();
        let sim = Self {
            context,
            oracle,
            genesis,
            nodes,
            accounts,
        };
        // Every pair may talk; the tracked peer set (the registry's) decides who can.
        for a in 0..sim.nodes.len() {
            for b in 0..sim.nodes.len() {
                if a != b {
                    sim.oracle
                        .add_link(
                            sim.nodes[a].key.public_key(),
                            sim.nodes[b].key.public_key(),
                            Link {
                                latency: Duration::from_millis(20),
                                jitter: Duration::from_millis(5),
                                success_rate: probability!(1.0),
                            },
                        )
                        .await
                        .unwrap();
                }
            }
        }
        sim
    }

    async fn start(&mut self, i: usize) {
        let node = &self.nodes[i];
        let balances: Vec<(PublicKey, u64)> = self
            .accounts
            .iter()
            .map(|k| (k.public_key(), BALANCE))
            .collect();
        let state = Arc::new(Mutex::new(
            NodeState::open_consortium(
                node.kv.clone(),
                CHAIN,
                &balances,
                10_000,
                Registry::from_genesis(&self.genesis),
            )
            .unwrap(),
        ));
        let control = self.oracle.control(node.key.public_key());
        let channels = sim_channels::register(&control).await;
        // Every node registers the registry's peer sets with the (shared) simulated
        // network, as each process does with its own p2p layer.
        let mut manager = self.oracle.manager();
        let peer_sets: PeerSets = Box::new(move |id, peers, _followers| {
            let keys: Vec<PublicKey> = peers.iter().map(|(k, _)| k.clone()).collect();
            let _ = manager.track(id, Set::from_iter_dedup(keys));
        });
        let handles = start_node(
            self.context.child("node").with_attribute("index", i),
            node.key.clone(),
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
            Some(peer_sets),
        )
        .unwrap();
        self.nodes[i].state = Some(state);
        self.nodes[i].handles = Some(handles);
    }

    /// Kills a node: its tasks stop, its memory is lost, its store survives.
    fn crash(&mut self, i: usize) {
        if let Some((chain, orchestrator)) = self.nodes[i].handles.take() {
            chain.abort();
            orchestrator.abort();
        }
        self.nodes[i].state = None;
    }

    fn state(&self, i: usize) -> &Arc<Mutex<NodeState<MemKv>>> {
        self.nodes[i].state.as_ref().unwrap()
    }

    fn height(&self, i: usize) -> u64 {
        self.nodes[i]
            .state
            .as_ref()
            .map_or(0, |s| lock(s).finalized_height())
    }

    fn registry(&self, i: usize) -> Registry {
        lock(self.state(i)).registry.clone()
    }

    /// One transfer per account with nothing pending, submitted to `nodes` in turn.
    fn load(&self, nodes: &[usize], round: u64) {
        for (a, key) in self.accounts.iter().enumerate() {
            let node = nodes[(a + round as usize) % nodes.len()];
            let mut s = lock(self.state(node));
            if s.mempool.pending_for(&key.public_key()) > 0 {
                continue;
            }
            let Ok(account) = s.ledger.account(&key.public_key()) else {
                continue;
            };
            let to = self.accounts[(a + 1) % self.accounts.len()].public_key();
            let tx = UnsignedTx {
                chain_id: CHAIN.into(),
                from: key.public_key(),
                nonce: account.nonce,
                fee: 1,
                kind: TxKind::Transfer {
                    to,
                    amount: 1 + round % 100,
                },
            }
            .sign(key);
            let _ = s.submit(tx);
        }
    }

    /// Drives load through `via` until `done` holds; panics after `limit` of simulated time.
    async fn run_until(
        &self,
        via: &[usize],
        what: &str,
        limit: Duration,
        done: impl Fn(&Sim) -> bool,
    ) {
        let start = self.context.current();
        let mut round = 0;
        while !done(self) {
            let waited = self
                .context
                .current()
                .duration_since(start)
                .unwrap_or_default();
            assert!(
                waited < limit,
                "{what}: not within {limit:?}; heights {:?}",
                (0..self.nodes.len())
                    .map(|i| self.height(i))
                    .collect::<Vec<_>>()
            );
            round += 1;
            self.load(via, round);
            self.context.sleep(Duration::from_millis(200)).await;
        }
    }

    fn proposal(&self, via: usize, action: GovernanceAction) -> Proposal {
        Proposal {
            chain_id: CHAIN.into(),
            sequence: self.registry(via).sequence,
            action,
        }
    }

    /// The epoch from which an executed governance transaction applies (node 0's receipt).
    fn applies_from(&self, tx: &GovernanceTx) -> u64 {
        let receipt = lock(self.state(0))
            .governance_receipt(&tx.hash())
            .unwrap()
            .expect("executed");
        assert!(receipt.success, "{:?}", receipt.error);
        (receipt.height - 1) / EPOCH + 1
    }

    /// Safety across `nodes` up to their common height, and supply on each.
    fn check_invariants(&self, nodes: &[usize]) {
        let common = nodes.iter().map(|i| self.height(*i)).min().unwrap();
        for h in 0..=common {
            let first = lock(self.state(nodes[0])).block(h).unwrap().unwrap();
            let root = lock(self.state(nodes[0])).ledger.state_root_at(h).unwrap();
            for i in &nodes[1..] {
                let s = lock(self.state(*i));
                assert_eq!(s.block(h).unwrap().unwrap(), first, "fork at height {h}");
                assert_eq!(s.ledger.state_root_at(h).unwrap(), root, "state at {h}");
            }
        }
        for i in nodes {
            let s = lock(self.state(*i));
            let mut total = s.ledger.fee_pool();
            for key in &self.accounts {
                total += s.ledger.account(&key.public_key()).unwrap().balance;
            }
            assert_eq!(total, BALANCE * ACCOUNTS, "supply not conserved on {i}");
        }
    }

    /// Who signed each stored finalization certificate on node `i`, by block epoch.
    fn signers(
        &self,
        i: usize,
        validators_of: impl Fn(u64) -> Vec<PublicKey>,
    ) -> Vec<(u64, Vec<PublicKey>)> {
        let s = lock(self.state(i));
        (1..=s.finalized_height())
            .filter_map(|h| {
                let certificate = s.finalization(h).unwrap()?;
                let epoch = s.block(h).unwrap().unwrap().epoch;
                let signers = certificate_signers(&validators_of(epoch), &certificate)
                    .expect("stored certificate decodes");
                Some((epoch, signers))
            })
            .collect()
    }
}

fn executor(seed: u64) -> deterministic::Runner {
    deterministic::Runner::new(
        deterministic::Config::new()
            .with_seed(seed)
            .with_timeout(Some(Duration::from_secs(1_800))),
    )
}

fn admit_then_remove(seed: u64) {
    executor(seed).start(|context| async move {
        let mut sim = Sim::new(context).await;
        let joiner = FOUNDERS;
        for i in 0..=joiner {
            sim.start(i).await;
        }
        let founders: Vec<usize> = (0..FOUNDERS).collect();
        sim.run_until(&founders, "first blocks", Duration::from_secs(60), |s| {
            s.height(0) >= 3
        })
        .await;
        assert_eq!(sim.height(joiner), 0, "a node outside the consortium syncs nothing");

        // Admit org4, approved by 3 of the 4 founders' admin keys (the threshold).
        let spec = MemberSpec {
            name: name(joiner),
            admin_key: sim.nodes[joiner].admin.public_key(),
            node_key: sim.nodes[joiner].key.public_key(),
            p2p_address: "127.0.0.6:9000".into(),
        };
        let proposal = sim.proposal(0, GovernanceAction::Admit(spec));
        let admins: Vec<&PrivateKey> = sim.nodes[1..4].iter().map(|n| &n.admin).collect();
        let tx = GovernanceTx::signed(proposal.clone(), &admins);
        // Below the threshold and replays are refused before reaching a block.
        let short = GovernanceTx::signed(proposal, &admins[..2]);
        assert!(
            lock(sim.state(0)).submit_governance(short, CHAIN).is_err(),
            "2 of 4 approvals must be refused"
        );
        lock(sim.state(0)).submit_governance(tx.clone(), CHAIN).unwrap();
        sim.run_until(&founders, "admission finalized", Duration::from_secs(60), |s| {
            s.registry(0).sequence == 1
        })
        .await;
        let admitted = sim.applies_from(&tx);
        assert!(
            lock(sim.state(0)).submit_governance(tx, CHAIN).is_err(),
            "a replayed admission must be refused"
        );

        // The boundary passes; org4's node replays the chain and validates.
        sim.run_until(&founders, "joiner catches up", Duration::from_secs(300), |s| {
            s.registry(0).epoch >= admitted
                && s.height(joiner) + 3 >= s.height(0)
                && s.height(joiner) > admitted * EPOCH
        })
        .await;
        assert_eq!(sim.registry(joiner).validators().len(), 5);
        let everyone: Vec<usize> = (0..=joiner).collect();
        sim.check_invariants(&everyone);

        // The new validator crashes (memory lost, store kept) and restarts from its store:
        // it resumes in its epoch with its registry and catches up.
        sim.crash(joiner);
        let before = sim.height(0);
        sim.run_until(&founders, "progress without org4", Duration::from_secs(120), |s| {
            s.height(0) >= before + 3
        })
        .await;
        sim.start(joiner).await;
        assert_eq!(sim.registry(joiner).validators().len(), 5);
        let target = sim.height(0) + 2;
        sim.run_until(&founders, "org4 catches up after a crash", Duration::from_secs(300), |s| {
            s.height(joiner) >= target
        })
        .await;
        sim.check_invariants(&everyone);

        // Remove org1, approved by 4 of the 5 members (org4 among them).
        let proposal = sim.proposal(
            0,
            GovernanceAction::Remove {
                name: name(1),
            },
        );
        let admins: Vec<&PrivateKey> = [0, 2, 3, 4].iter().map(|i| &sim.nodes[*i].admin).collect();
        let removal = GovernanceTx::signed(proposal, &admins);
        lock(sim.state(joiner))
            .submit_governance(removal.clone(), CHAIN)
            .unwrap();
        let remaining = [0, 2, 3, 4];
        sim.run_until(&remaining, "removal finalized", Duration::from_secs(120), |s| {
            s.registry(0).sequence == 2
        })
        .await;
        let removed = sim.applies_from(&removal);
        sim.run_until(&remaining, "two epochs after removal", Duration::from_secs(300), |s| {
            remaining
                .iter()
                .all(|i| s.height(*i) >= (removed + 2) * EPOCH)
        })
        .await;
        sim.check_invariants(&remaining);
        sim.check_invariants(&[0, 1]);
        // The removed node is cut off: it got no block of the epoch it is not part of.
        assert!(
            sim.height(1) <= removed * EPOCH,
            "removed node reached height {} past its last epoch",
            sim.height(1)
        );

        // Certificates: org4 signs from its first epoch on, org1 never after its removal.
        let keys: Vec<PublicKey> = sim.nodes.iter().map(|n| n.key.public_key()).collect();
        let validators_of = |epoch: u64| {
            let mut v: Vec<PublicKey> = (0..=joiner)
                .filter(|i| *i < FOUNDERS || epoch >= admitted)
                .filter(|i| *i != 1 || epoch < removed)
                .map(|i| keys[i].clone())
                .collect();
            v.sort();
            v
        };
        let certificates = sim.signers(0, validators_of);
        let (mut joiner_signed, mut removed_signed_before) = (0, 0);
        for (epoch, signers) in &certificates {
            if signers.contains(&keys[joiner]) {
                assert!(*epoch >= admitted, "org4 signed in epoch {epoch}");
                joiner_signed += 1;
            }
            if signers.contains(&keys[1]) {
                assert!(*epoch < removed, "removed org1 signed in epoch {epoch}");
                removed_signed_before += 1;
            }
        }
        assert!(joiner_signed > 0, "org4's signature is in no certificate");
        assert!(removed_signed_before > 0, "org1 never signed before removal");
        eprintln!(
            "seed {seed}: admitted in epoch {admitted}, removed from epoch {removed}, heights {:?}, \
             {} certificates, org4 in {joiner_signed}, org1 in {removed_signed_before}",
            (0..=joiner).map(|i| sim.height(i)).collect::<Vec<_>>(),
            certificates.len()
        );
    });
}

#[test]
fn member_admitted_and_removed_across_epochs() {
    for seed in [1, 2, 3] {
        admit_then_remove(seed);
    }
}
