//! The member registry: who the consortium's members are, which validators sign each
//! epoch, and which governance changes wait for the next epoch boundary.
//!
//! The registry is part of the replicated state: it changes only by executing finalized
//! blocks (governance transactions, then the epoch boundary), it is stored in the same
//! atomic commit as the block, and every node derives the same registry from the same
//! chain. A node that starts from the genesis file replays it.
//!
//! Epoch `e` holds heights `e·L + 1 ..= (e+1)·L` (`L` = `epoch_length`). A governance
//! transaction executed in epoch `e` takes effect when block `(e+1)·L` is finalized:
//! members and validators change and epoch `e+1` starts. An admitted member's node key is
//! a p2p peer from the moment its admission is finalized (so that it can sync); a removed
//! member's stays one until the boundary.

use serde::{Deserialize, Serialize};
use trellis_node_api::{ChangeKind, Genesis, MemberInfo, PendingChange};
use trellis_node_types::governance::{reaches_threshold, threshold};
use trellis_node_types::{
    GovernanceAction, GovernanceError, GovernanceTx, PublicKey, public_key_from_hex, to_hex,
};

/// Storage key of the registry (next to the chain's own keys in the metadata space).
pub const REGISTRY_KEY: &[u8] = b"chain/gov/registry";

/// Storage key of a governance transaction's receipt.
pub fn receipt_key(hash: &[u8; 32]) -> Vec<u8> {
    [b"chain/gov/r/".as_slice(), hash].concat()
}

/// What executing a governance transaction did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GovernanceReceipt {
    pub height: u64,
    pub success: bool,
    #[serde(default)]
    pub error: Option<String>,
}

/// The consortium's membership at a finalized height.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub epoch_length: u64,
    /// Current consensus epoch.
    pub epoch: u64,
    /// Sequence number the next governance proposal must carry.
    pub sequence: u64,
    /// Version of the p2p peer set: moves on whenever the allowed peers change, so every
    /// node registers the same set under the same id.
    pub peer_set: u64,
    /// Current members, in admission order.
    pub members: Vec<MemberInfo>,
    /// Changes waiting for the end of the current epoch, in execution order.
    pub pending: Vec<PendingChange>,
}

fn key_hex(key: &PublicKey) -> String {
    to_hex(key.as_ref())
}

impl Registry {
    /// The registry a genesis file describes.
    pub fn from_genesis(genesis: &Genesis) -> Self {
        Self {
            epoch_length: genesis.epoch_length,
            epoch: 0,
            sequence: 0,
            peer_set: 0,
            members: genesis
                .members
                .iter()
                .map(|m| MemberInfo {
                    name: m.name.clone(),
                    admin_key: m.admin_key.to_ascii_lowercase(),
                    node_key: m.node_key.to_ascii_lowercase(),
                    p2p_address: m.p2p_address.clone(),
                })
                .collect(),
            pending: Vec::new(),
        }
    }

    /// A fixed committee without governance (every validator its own admin, no epoch
    /// ever ends): what a node started without a genesis registry runs.
    pub fn fixed(validators: &[PublicKey]) -> Self {
        Self {
            epoch_length: u64::MAX,
            epoch: 0,
            sequence: 0,
            peer_set: 0,
            members: validators
                .iter()
                .enumerate()
                .map(|(i, v)| MemberInfo {
                    name: format!("validator-{i}"),
                    admin_key: key_hex(v),
                    node_key: key_hex(v),
                    p2p_address: String::new(),
                })
                .collect(),
            pending: Vec::new(),
        }
    }

    /// Last height of `epoch`; `None` when the epoch never ends.
    pub fn epoch_end(&self, epoch: u64) -> Option<u64> {
        epoch.checked_add(1)?.checked_mul(self.epoch_length)
    }

    /// First height before `epoch`'s blocks: its floor (0 for epoch 0).
    pub fn epoch_floor(&self, epoch: u64) -> Option<u64> {
        epoch.checked_mul(self.epoch_length)
    }

    /// The epoch a height belongs to (height 0 belongs to none; reported as 0).
    pub fn epoch_of(&self, height: u64) -> u64 {
        height.saturating_sub(1) / self.epoch_length.max(1)
    }

    /// This epoch's validators (the members' node keys), sorted.
    pub fn validators(&self) -> Vec<PublicKey> {
        let mut keys: Vec<PublicKey> = self
            .members
            .iter()
            .filter_map(|m| public_key_from_hex(&m.node_key))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Node keys allowed as p2p peers, with the addresses governance gave them: members
    /// and admitted members waiting for the boundary.
    pub fn peers(&self) -> Vec<(PublicKey, String)> {
        let mut peers: Vec<(PublicKey, String)> = Vec::new();
        let admitted = self
            .pending
            .iter()
            .filter(|p| p.kind == ChangeKind::Admit)
            .map(|p| &p.member);
        for m in self.members.iter().chain(admitted) {
            if let Some(key) = public_key_from_hex(&m.node_key)
                && !peers.iter().any(|(k, _)| *k == key)
            {
                peers.push((key, m.p2p_address.clone()));
            }
        }
        peers
    }

    /// Approvals a proposal needs now.
    pub fn threshold(&self) -> usize {
        threshold(self.members.len())
    }

    fn pending_admit(&self, pred: impl Fn(&MemberInfo) -> bool) -> bool {
        self.pending
            .iter()
            .any(|p| p.kind == ChangeKind::Admit && pred(&p.member))
    }

    /// Whether `tx` would execute successfully now, with a message a user can act on
    /// when not.
    pub fn check(&self, tx: &GovernanceTx, chain_id: &str) -> Result<(), String> {
        tx.check_stateless(chain_id).map_err(|e| match e {
            GovernanceError::DuplicateSigner(k) => {
                format!("admin key {k} approved twice: each member approves once")
            }
            GovernanceError::BadSignature(k) => {
                format!("the approval of admin key {k} is not a valid signature of this proposal")
            }
            other => other.to_string(),
        })?;
        let p = &tx.proposal;
        if p.sequence < self.sequence {
            return Err(format!(
                "stale sequence {}: the registry is at sequence {} (this proposal was \
                 executed or superseded); propose again with sequence {}",
                p.sequence, self.sequence, self.sequence
            ));
        }
        if p.sequence > self.sequence {
            return Err(format!(
                "sequence {} is ahead of the registry's next sequence {}",
                p.sequence, self.sequence
            ));
        }
        for a in &tx.approvals {
            let k = key_hex(&a.admin_key);
            if !self.members.iter().any(|m| m.admin_key == k) {
                return Err(format!(
                    "admin key {k} is not the admin key of a current member"
                ));
            }
        }
        let n = self.members.len();
        if !reaches_threshold(tx.approvals.len(), n) {
            return Err(format!(
                "{} of {n} member approvals is below the threshold: more than 2/3 of the \
                 members ({} of {n}) must approve",
                tx.approvals.len(),
                threshold(n)
            ));
        }
        match &p.action {
            GovernanceAction::Admit(spec) => {
                let node = key_hex(&spec.node_key);
                let admin = key_hex(&spec.admin_key);
                if self.members.iter().any(|m| m.name == spec.name) {
                    return Err(format!(
                        "a member named {:?} is already admitted",
                        spec.name
                    ));
                }
                if self.pending_admit(|m| m.name == spec.name) {
                    return Err(format!(
                        "a member named {:?} is already admitted and waits for the next epoch",
                        spec.name
                    ));
                }
                if self.members.iter().any(|m| m.node_key == node)
                    || self.pending_admit(|m| m.node_key == node)
                {
                    return Err(format!("node key {node} is already admitted"));
                }
                if self.members.iter().any(|m| m.admin_key == admin)
                    || self.pending_admit(|m| m.admin_key == admin)
                {
                    return Err(format!("admin key {admin} already belongs to a member"));
                }
            }
            GovernanceAction::Remove { name } => {
                if !self.members.iter().any(|m| &m.name == name) {
                    return Err(format!("no current member is named {name:?}"));
                }
                if self
                    .pending
                    .iter()
                    .any(|c| c.kind == ChangeKind::Remove && &c.member.name == name)
                {
                    return Err(format!("member {name:?} is already being removed"));
                }
                let removals = self
                    .pending
                    .iter()
                    .filter(|c| c.kind == ChangeKind::Remove)
                    .count();
                if self.members.len() <= removals + 1 {
                    return Err(format!(
                        "removing {name:?} would leave no members to validate and govern the \
                         chain"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Executes a governance transaction of the block at `height`: on success the change
    /// becomes pending and the sequence moves on; on failure nothing changes.
    pub fn execute(
        &mut self,
        tx: &GovernanceTx,
        chain_id: &str,
        height: u64,
    ) -> Result<(), String> {
        self.check(tx, chain_id)?;
        let (kind, member) = match &tx.proposal.action {
            GovernanceAction::Admit(spec) => (
                ChangeKind::Admit,
                MemberInfo {
                    name: spec.name.clone(),
                    admin_key: key_hex(&spec.admin_key),
                    node_key: key_hex(&spec.node_key),
                    p2p_address: spec.p2p_address.clone(),
                },
            ),
            GovernanceAction::Remove { name } => {
                let Some(member) = self.members.iter().find(|m| &m.name == name) else {
                    return Err(format!("no current member is named {name:?}"));
                };
                (ChangeKind::Remove, member.clone())
            }
        };
        if kind == ChangeKind::Admit {
            self.peer_set += 1;
        }
        self.pending.push(PendingChange {
            kind,
            member,
            height,
            proposal: to_hex(&tx.proposal.id().0),
            effective_epoch: self.epoch + 1,
        });
        self.sequence += 1;
        Ok(())
    }

    /// Called after executing the block at `height`: at the epoch's last block, applies
    /// the pending changes and starts the next epoch. True when an epoch started.
    pub fn end_of_block(&mut self, height: u64) -> bool {
        if self.epoch_end(self.epoch) != Some(height) {
            return false;
        }
        let pending = std::mem::take(&mut self.pending);
        if !pending.is_empty() {
            self.peer_set += 1;
        }
        for change in pending {
            match change.kind {
                ChangeKind::Admit => self.members.push(change.member),
                ChangeKind::Remove => self.members.retain(|m| m.name != change.member.name),
            }
        }
        self.epoch += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_node_api::{CONTRACT_VERSION, GenesisMember};
    use trellis_node_types::{MemberSpec, PrivateKey, Proposal, Signer, test_key};

    const CHAIN: &str = "gov";

    fn genesis(n: u64) -> (Registry, Vec<PrivateKey>) {
        let admins: Vec<PrivateKey> = (0..n).map(|i| test_key(100 + i)).collect();
        let genesis = Genesis {
            contract_version: CONTRACT_VERSION,
            chain_id: CHAIN.into(),
            epoch_length: 10,
            members: (0..n)
                .map(|i| GenesisMember {
                    name: format!("org{i}"),
                    admin_key: key_hex(&admins[i as usize].public_key()),
                    node_key: key_hex(&test_key(200 + i).public_key()),
                    p2p_address: format!("127.0.0.{}:9000", 2 + i),
                })
                .collect(),
            balances: vec![],
            sharding: None,
        };
        (Registry::from_genesis(&genesis), admins)
    }

    fn admit(sequence: u64, i: u64) -> Proposal {
        Proposal {
            chain_id: CHAIN.into(),
            sequence,
            action: GovernanceAction::Admit(MemberSpec {
                name: format!("org{i}"),
                admin_key: test_key(100 + i).public_key(),
                node_key: test_key(200 + i).public_key(),
                p2p_address: format!("127.0.0.{}:9000", 2 + i),
            }),
        }
    }

    fn remove(sequence: u64, name: &str) -> Proposal {
        Proposal {
            chain_id: CHAIN.into(),
            sequence,
            action: GovernanceAction::Remove { name: name.into() },
        }
    }

    fn signed(p: Proposal, admins: &[PrivateKey]) -> GovernanceTx {
        let refs: Vec<&PrivateKey> = admins.iter().collect();
        GovernanceTx::signed(p, &refs)
    }

    #[test]
    fn admission_waits_for_the_epoch_boundary() {
        let (mut r, admins) = genesis(3);
        let tx = signed(admit(0, 3), &admins);
        r.execute(&tx, CHAIN, 4).unwrap();
        assert_eq!(r.sequence, 1);
        assert_eq!(r.members.len(), 3);
        assert_eq!(r.validators().len(), 3);
        assert_eq!(r.peers().len(), 4, "the admitted node may connect to sync");
        assert_eq!(r.peer_set, 1);
        // Replay: the same transaction is now stale.
        assert!(
            r.check(&tx, CHAIN)
                .unwrap_err()
                .contains("stale sequence 0")
        );
        assert!(!r.end_of_block(9));
        assert!(r.end_of_block(10));
        assert_eq!(r.epoch, 1);
        assert_eq!(r.validators().len(), 4);
        assert!(r.pending.is_empty());
        assert_eq!(r.threshold(), 3);
    }

    #[test]
    fn every_refusal_says_why() {
        let (r, admins) = genesis(4);
        let err = |tx: &GovernanceTx| r.check(tx, CHAIN).unwrap_err();
        assert!(err(&signed(admit(0, 9), &admins[..2])).contains("2 of 4 member approvals"));
        assert!(err(&signed(admit(0, 9), &admins[..2])).contains("3 of 4"));
        let outsider = [test_key(77), admins[0].clone(), admins[1].clone()];
        assert!(
            err(&signed(admit(0, 9), &outsider)).contains("not the admin key of a current member")
        );
        let mut twice = signed(admit(0, 9), &admins[..3]);
        twice.approvals[2] = twice.approvals[0].clone();
        assert!(err(&twice).contains("approved twice"));
        let mut forged = signed(admit(0, 9), &admins[..3]);
        forged.approvals[1].signature = forged.approvals[0].signature.clone();
        assert!(err(&forged).contains("not a valid signature"));
        assert!(
            r.check(&signed(admit(0, 9), &admins[..3]), "other")
                .unwrap_err()
                .contains("chain")
        );
        assert!(err(&signed(admit(5, 9), &admins)).contains("ahead"));
        assert!(err(&signed(admit(0, 1), &admins)).contains("already admitted"));
        assert!(err(&signed(remove(0, "nobody"), &admins)).contains("no current member"));
        assert!(err(&GovernanceTx::new(admit(0, 9), vec![])).contains("no approvals"));
        r.check(&signed(admit(0, 9), &admins[..3]), CHAIN).unwrap();
    }

    #[test]
    fn removal_applies_at_the_boundary_and_keeps_a_member() {
        let (mut r, admins) = genesis(2);
        r.execute(&signed(remove(0, "org1"), &admins), CHAIN, 3)
            .unwrap();
        assert!(
            r.check(&signed(remove(1, "org0"), &admins), CHAIN)
                .unwrap_err()
                .contains("would leave no members")
        );
        assert!(
            r.check(&signed(remove(1, "org1"), &admins), CHAIN)
                .unwrap_err()
                .contains("already being removed")
        );
        assert_eq!(r.peers().len(), 2, "removed peers stay until the boundary");
        assert!(r.end_of_block(10));
        assert_eq!(r.members.len(), 1);
        assert_eq!(r.peers().len(), 1);
        assert_eq!(r.threshold(), 1);
        assert_eq!(r.epoch_end(1), Some(20));
        assert_eq!(r.epoch_of(10), 0);
        assert_eq!(r.epoch_of(11), 1);
        assert_eq!(
            Registry::fixed(&[test_key(1).public_key()]).epoch_end(5),
            None
        );
    }
}
