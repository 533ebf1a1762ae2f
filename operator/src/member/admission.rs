//! The governance side of a member's admission and removal. Pure: the member registry
//! (`trellis_getMembers`) and the member's validators in, the next step out.
//!
//! Contract v1 names each validator as a chain member of its own (name = pod name,
//! admin key = the organisation's), so an organisation with `n` nodes is admitted by `n`
//! proposals, one after the other: each carries the registry's next sequence, which only
//! exists once the previous one executed.

use trellis_node_api::{ChangeKind, MembersInfo};
use trellis_node_types::{
    GovernanceAction, GovernanceTx, MemberSpec, Proposal, public_key_from_hex, to_hex,
};

/// One validator of the member, as the proposal records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberNode {
    /// Pod name; also the validator's member name on chain.
    pub name: String,
    /// Hex node public key.
    pub node_key: String,
    /// Where the other validators reach it.
    pub p2p_address: String,
}

/// Where a validator stands in the chain's registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Absent,
    /// Admitted in a finalized block; a validator from `epoch`.
    AdmissionPending {
        epoch: u64,
    },
    Member {
        name: String,
    },
    /// Removal executed; leaves the validator set at `epoch`.
    RemovalPending {
        epoch: u64,
    },
}

impl Standing {
    /// The word in `status.nodes[].chain`.
    pub fn label(&self) -> &'static str {
        match self {
            Standing::Absent => "Absent",
            Standing::AdmissionPending { .. } => "AdmissionPending",
            Standing::Member { .. } => "Member",
            Standing::RemovalPending { .. } => "RemovalPending",
        }
    }
}

/// Where the validator with `node_key` stands in `registry`.
pub fn standing(node_key: &str, registry: &MembersInfo) -> Standing {
    if let Some(change) = registry
        .pending
        .iter()
        .find(|p| p.member.node_key.eq_ignore_ascii_case(node_key))
    {
        return match change.kind {
            ChangeKind::Admit => Standing::AdmissionPending {
                epoch: change.effective_epoch,
            },
            ChangeKind::Remove => Standing::RemovalPending {
                epoch: change.effective_epoch,
            },
        };
    }
    match registry
        .members
        .iter()
        .find(|m| m.node_key.eq_ignore_ascii_case(node_key))
    {
        Some(m) => Standing::Member {
            name: m.name.clone(),
        },
        None => Standing::Absent,
    }
}

/// What the member needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Every validator is where the spec wants it: all members (admission) or all gone
    /// (removal).
    Done,
    /// Changes executed and waiting for the epoch boundary; nothing to sign.
    Wait(String),
    /// This proposal must be approved and submitted.
    Propose(Box<Proposal>),
}

/// The next step for `nodes` (admission, or removal when `remove`).
pub fn next_step(
    nodes: &[MemberNode],
    admin_public_key: &str,
    registry: &MembersInfo,
    remove: bool,
) -> Result<Step, String> {
    let standings: Vec<(&MemberNode, Standing)> = nodes
        .iter()
        .map(|n| (n, standing(&n.node_key, registry)))
        .collect();
    let action = if remove {
        standings.iter().find_map(|(_, s)| match s {
            Standing::Member { name } => Some(GovernanceAction::Remove { name: name.clone() }),
            _ => None,
        })
    } else {
        match standings
            .iter()
            .find(|(_, s)| *s == Standing::Absent)
            .map(|(n, _)| *n)
        {
            Some(node) => Some(GovernanceAction::Admit(MemberSpec {
                name: node.name.clone(),
                admin_key: public_key_from_hex(admin_public_key)
                    .ok_or_else(|| "adminPublicKey is not an ed25519 public key".to_owned())?,
                node_key: public_key_from_hex(&node.node_key)
                    .ok_or_else(|| format!("the node key of {} is not usable", node.name))?,
                p2p_address: node.p2p_address.clone(),
            })),
            None => None,
        }
    };
    if let Some(action) = action {
        let proposal = Proposal {
            chain_id: registry.chain_id.clone(),
            sequence: registry.sequence,
            action,
        };
        proposal.check().map_err(|e| e.to_string())?;
        return Ok(Step::Propose(Box::new(proposal)));
    }
    let waiting: Vec<String> = standings
        .iter()
        .filter_map(|(n, s)| match s {
            Standing::AdmissionPending { epoch } => {
                Some(format!("{} becomes a validator at epoch {epoch}", n.name))
            }
            Standing::RemovalPending { epoch } => {
                Some(format!("{} leaves the validators at epoch {epoch}", n.name))
            }
            _ => None,
        })
        .collect();
    if waiting.is_empty() {
        Ok(Step::Done)
    } else {
        Ok(Step::Wait(format!(
            "executed on chain; {} (the chain is at epoch {}, height {}, epoch ends at height {})",
            waiting.join(", "),
            registry.epoch,
            registry.height,
            registry.epoch_end_height
        )))
    }
}

/// Why a handed-over governance transaction is not submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxRefusal {
    /// Condition reason: `GovernanceTxInvalid`, `GovernanceTxStale` (a sequence the
    /// chain has passed), `GovernanceTxMismatch` or `GovernanceRefused`.
    pub reason: &'static str,
    pub message: String,
}

fn refusal(reason: &'static str, message: String) -> TxRefusal {
    TxRefusal { reason, message }
}

/// Checks the hex transaction from Secret `secret` against the proposal the operator
/// published and the registry: it must approve exactly that proposal, with valid
/// signatures of current members reaching the threshold. The chain checks the same (and
/// is the authority); checking first gives the member a precise condition and keeps a
/// forged or stale transaction off the network.
pub fn check_tx(
    secret: &str,
    tx_hex: &str,
    proposal: &Proposal,
    registry: &MembersInfo,
) -> Result<GovernanceTx, TxRefusal> {
    let tx = GovernanceTx::from_hex(tx_hex).map_err(|e| {
        refusal(
            "GovernanceTxInvalid",
            format!("Secret {secret}: entry tx is not a governance transaction: {e}"),
        )
    })?;
    if tx.proposal != *proposal {
        let same_chain = tx.proposal.chain_id == proposal.chain_id;
        return Err(if same_chain && tx.proposal.sequence < proposal.sequence {
            refusal(
                "GovernanceTxStale",
                format!(
                    "Secret {secret} approves sequence {}, which the chain has passed (it is \
                     at sequence {}): approve the current proposal {}",
                    tx.proposal.sequence,
                    proposal.sequence,
                    to_hex(proposal.id().as_ref())
                ),
            )
        } else {
            refusal(
                "GovernanceTxMismatch",
                format!(
                    "Secret {secret} approves proposal {}, not the published proposal {}",
                    to_hex(tx.proposal.id().as_ref()),
                    to_hex(proposal.id().as_ref())
                ),
            )
        });
    }
    tx.check_stateless(&proposal.chain_id)
        .map_err(|e| refusal("GovernanceTxInvalid", format!("Secret {secret}: {e}")))?;
    let strangers: Vec<String> = tx
        .approvals
        .iter()
        .map(|a| to_hex(a.admin_key.as_ref()))
        .filter(|k| {
            !registry
                .members
                .iter()
                .any(|m| m.admin_key.eq_ignore_ascii_case(k))
        })
        .collect();
    if !strangers.is_empty() {
        return Err(refusal(
            "GovernanceTxInvalid",
            format!(
                "Secret {secret}: approved by {}, which {} not the admin key of a current member",
                strangers.join(", "),
                if strangers.len() == 1 { "is" } else { "are" }
            ),
        ));
    }
    // Approvals count per distinct member admin key (several validators of one
    // organisation share its key and count once per validator, as the chain counts).
    let counted = registry
        .members
        .iter()
        .filter(|m| {
            tx.approvals.iter().any(|a| {
                m.admin_key
                    .eq_ignore_ascii_case(&to_hex(a.admin_key.as_ref()))
            })
        })
        .count();
    if counted < registry.threshold {
        return Err(refusal(
            "GovernanceTxInvalid",
            format!(
                "Secret {secret}: {counted} of the {} approvals the chain needs ({} members)",
                registry.threshold,
                registry.members.len()
            ),
        ));
    }
    Ok(tx)
}

/// `Admit` or `Remove`.
pub fn action_name(proposal: &Proposal) -> &'static str {
    match proposal.action {
        GovernanceAction::Admit(_) => "Admit",
        GovernanceAction::Remove { .. } => "Remove",
    }
}

/// The member named by a proposal.
pub fn proposal_node(proposal: &Proposal) -> &str {
    match &proposal.action {
        GovernanceAction::Admit(spec) => &spec.name,
        GovernanceAction::Remove { name } => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_node_api::{MemberInfo, PendingChange};
    use trellis_node_types::{PrivateKey, Signer as _, test_key};

    fn key(seed: u64) -> PrivateKey {
        test_key(seed)
    }

    fn hex(seed: u64) -> String {
        to_hex(key(seed).public_key().as_ref())
    }

    fn info(name: &str, admin: u64, node: u64) -> MemberInfo {
        MemberInfo {
            name: name.into(),
            admin_key: hex(admin),
            node_key: hex(node),
            p2p_address: format!("{name}:7000"),
        }
    }

    fn registry(pending: Vec<PendingChange>) -> MembersInfo {
        MembersInfo {
            chain_id: "alpha.ns".into(),
            height: 12,
            epoch: 1,
            epoch_length: 10,
            epoch_end_height: 19,
            sequence: 4,
            threshold: 3,
            members: vec![info("a-0", 1, 11), info("b-0", 2, 12), info("c-0", 3, 13)],
            validators: Vec::new(),
            peers: Vec::new(),
            pending,
        }
    }

    fn nodes() -> Vec<MemberNode> {
        vec![
            MemberNode {
                name: "alpha-m-d-0".into(),
                node_key: hex(14),
                p2p_address: "127.0.70.4:7000".into(),
            },
            MemberNode {
                name: "alpha-m-d-1".into(),
                node_key: hex(15),
                p2p_address: "127.0.70.5:7000".into(),
            },
        ]
    }

    fn proposal() -> Proposal {
        match next_step(&nodes(), &hex(4), &registry(Vec::new()), false).unwrap() {
            Step::Propose(p) => *p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn admission_proposes_the_first_absent_validator_at_the_registry_sequence() {
        let p = proposal();
        assert_eq!((p.chain_id.as_str(), p.sequence), ("alpha.ns", 4));
        let GovernanceAction::Admit(spec) = &p.action else {
            panic!("not an admission")
        };
        assert_eq!(spec.name, "alpha-m-d-0");
        assert_eq!(spec.p2p_address, "127.0.70.4:7000");
        assert_eq!(to_hex(spec.admin_key.as_ref()), hex(4));

        // The first one admitted and pending: the second is proposed next.
        let mut pending = registry(vec![PendingChange {
            kind: ChangeKind::Admit,
            member: info("alpha-m-d-0", 4, 14),
            height: 11,
            proposal: "00".into(),
            effective_epoch: 2,
        }]);
        pending.sequence = 5;
        let Step::Propose(second) = next_step(&nodes(), &hex(4), &pending, false).unwrap() else {
            panic!("second validator not proposed")
        };
        assert_eq!(proposal_node(&second), "alpha-m-d-1");
        assert_eq!(second.sequence, 5);

        // Both pending: wait for the epoch; both members: done.
        pending.pending.push(PendingChange {
            kind: ChangeKind::Admit,
            member: info("alpha-m-d-1", 4, 15),
            height: 12,
            proposal: "01".into(),
            effective_epoch: 2,
        });
        let Step::Wait(message) = next_step(&nodes(), &hex(4), &pending, false).unwrap() else {
            panic!("not waiting")
        };
        assert!(
            message.contains("alpha-m-d-0 becomes a validator at epoch 2"),
            "{message}"
        );
        let mut admitted = registry(Vec::new());
        admitted.members.push(info("alpha-m-d-0", 4, 14));
        admitted.members.push(info("alpha-m-d-1", 4, 15));
        assert_eq!(
            next_step(&nodes(), &hex(4), &admitted, false).unwrap(),
            Step::Done
        );

        // Removal: members are removed one by one by their chain names, then done.
        let Step::Propose(removal) = next_step(&nodes(), &hex(4), &admitted, true).unwrap() else {
            panic!("no removal")
        };
        assert_eq!(action_name(&removal), "Remove");
        assert_eq!(proposal_node(&removal), "alpha-m-d-0");
        assert_eq!(
            next_step(&nodes(), &hex(4), &registry(Vec::new()), true).unwrap(),
            Step::Done
        );
        assert!(next_step(&nodes(), "zz", &registry(Vec::new()), false).is_err());
    }

    #[test]
    fn a_transaction_must_approve_the_published_proposal_with_enough_member_keys() {
        let p = proposal();
        let reg = registry(Vec::new());
        let good = GovernanceTx::signed(p.clone(), &[&key(1), &key(2), &key(3)]);
        assert_eq!(check_tx("s", &good.to_hex(), &p, &reg).unwrap(), good);

        let refused = |tx: &str| check_tx("s", tx, &p, &reg).unwrap_err();
        assert_eq!(refused("zz").reason, "GovernanceTxInvalid");
        let strangers = GovernanceTx::signed(p.clone(), &[&key(1), &key(2), &key(9)]);
        let r = refused(&strangers.to_hex());
        assert!(r.message.contains(&hex(9)), "{}", r.message);
        let short = GovernanceTx::signed(p.clone(), &[&key(1), &key(2)]);
        assert!(
            refused(&short.to_hex())
                .message
                .contains("2 of the 3 approvals")
        );
        // A forged signature: one member's approval with another's signature bytes.
        let mut forged = good.clone();
        forged.approvals[0].signature = good.approvals[1].signature.clone();
        let r = refused(&forged.to_hex());
        assert!(r.message.contains("bad signature"), "{}", r.message);
        // An older sequence is stale; another proposal is a mismatch.
        let mut old = p.clone();
        old.sequence = 3;
        let stale = GovernanceTx::signed(old, &[&key(1), &key(2), &key(3)]);
        assert_eq!(refused(&stale.to_hex()).reason, "GovernanceTxStale");
        let mut other = p.clone();
        other.action = GovernanceAction::Remove { name: "a-0".into() };
        let mismatch = GovernanceTx::signed(other, &[&key(1), &key(2), &key(3)]);
        assert_eq!(refused(&mismatch.to_hex()).reason, "GovernanceTxMismatch");
    }
}
