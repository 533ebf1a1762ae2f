//! Removing a consortium member's nodes from the chain (local mode): the reverse of
//! [`super::admission`].
//!
//! When the console removes a member, `apply` keeps its validators in the record as
//! `leaving` (see `departing`). Every few seconds this step, for each of them:
//!
//! 1. reads the chain's member registry (`trellis_getMembers`) from a validator that
//!    stays;
//! 2. once the node's key is neither a member nor in a pending change, marks the node
//!    `removed` (durably) and the supervisor stops it (SIGTERM, then SIGKILL): the chain
//!    no longer counts its vote, so stopping it costs no quorum;
//! 3. while its removal is pending (effective at the next epoch), waits;
//! 4. otherwise builds the `Remove` proposal at the registry's sequence, has the
//!    console's [`super::super::GovernanceSigner`] approve it with the custodied keys of
//!    the members that stay (and approvals organisations with their own keys posted), and
//!    submits it once the approvals reach the chain's threshold.
//!
//! Every outcome is in the network's status message and the member's proposal.

use std::sync::Arc;

use trellis_node_api::{ChangeKind, MembersInfo};
use trellis_node_types::{GovernanceAction, Proposal};
use uuid::Uuid;

use super::Inner;
use super::member_change::{
    Change, Pending, for_each_pending, mark_node, propose, read_members, record,
};
use super::record::{ChainRecord, NodeRecord};

/// Where a leaving node stands in the chain's registry.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Departure {
    /// Neither a member nor in a pending change: it is out; stop it.
    Gone,
    /// Its removal executed and takes effect at this epoch.
    RemovalPending { epoch: u64 },
    /// Its admission is still pending: it can be removed once it is a member.
    AdmissionPending { epoch: u64 },
    /// A member under this name: propose its removal.
    Member { name: String },
}

pub(super) fn departure(node: &NodeRecord, members: &MembersInfo) -> Departure {
    let key = &node.node_public_key;
    let pending = members
        .pending
        .iter()
        .find(|p| p.member.node_key.eq_ignore_ascii_case(key));
    let member = members
        .members
        .iter()
        .find(|m| m.node_key.eq_ignore_ascii_case(key));
    match (member, pending) {
        (_, Some(change)) if change.kind == ChangeKind::Remove => Departure::RemovalPending {
            epoch: change.effective_epoch,
        },
        (None, Some(change)) => Departure::AdmissionPending {
            epoch: change.effective_epoch,
        },
        (Some(member), _) => Departure::Member {
            name: member.name.clone(),
        },
        (None, None) => Departure::Gone,
    }
}

/// The proposal that removes the member `name` from `chain`.
pub(super) fn removal_proposal(chain: &ChainRecord, name: &str, members: &MembersInfo) -> Proposal {
    Proposal {
        chain_id: chain.chain_id.clone(),
        sequence: members.sequence,
        action: GovernanceAction::Remove {
            name: name.to_owned(),
        },
    }
}

pub(super) async fn remove_once(inner: &Arc<Inner>) {
    for_each_pending(inner, |n| n.leaving && !n.removed, remove).await;
}

/// One removal attempt; `Ok(None)` once the node is out and stopping.
async fn remove(inner: &Arc<Inner>, item: &Pending) -> Result<Option<String>, String> {
    let name = &item.node.name;
    // A validator that stays answers for the chain; the leaving ones only if none does.
    let Some(validator) = item
        .chain
        .nodes
        .iter()
        .filter(|n| n.is_validator())
        .min_by_key(|n| n.leaving)
    else {
        return Err(format!("{name}: the chain has no validator to ask"));
    };
    let members = read_members(inner, validator, name, "leaves the chain").await?;
    let on_chain = match departure(&item.node, &members) {
        Departure::Gone => {
            mark_removed(inner, item.network, name).await?;
            record(
                inner,
                item.network,
                &item.node,
                "Removed",
                "RemovedOnChain",
                format!("{name} removed from the chain; stopped"),
                None,
            )
            .await;
            return Ok(None);
        }
        Departure::RemovalPending { epoch } => {
            let note = format!("{name}: removal final; it leaves the chain at epoch {epoch}");
            record(
                inner,
                item.network,
                &item.node,
                "Admitted",
                "RemovalPending",
                note.clone(),
                None,
            )
            .await;
            return Ok(Some(note));
        }
        Departure::AdmissionPending { epoch } => {
            return Ok(Some(format!(
                "{name}: its admission takes effect at epoch {epoch}; it is removed after"
            )));
        }
        Departure::Member { name } => name,
    };
    propose(
        inner,
        item,
        validator,
        &members,
        Change::Removal,
        &on_chain,
        || Ok(removal_proposal(&item.chain, &on_chain, &members)),
    )
    .await
}

/// Marks `name` removed, durably, and lets the supervisor stop it.
async fn mark_removed(inner: &Arc<Inner>, network: Uuid, name: &str) -> Result<(), String> {
    mark_node(inner, network, name, "removal", |node| node.removed = true).await?;
    tracing::info!(node = name, "removed from the chain; stopping it");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use trellis_node_api::{MemberInfo, PendingChange};
    use trellis_node_types::{Signer as _, to_hex};

    fn key(seed: u64) -> String {
        to_hex(trellis_node_types::test_key(seed).public_key().as_ref())
    }

    fn leaving() -> NodeRecord {
        NodeRecord {
            name: "net-d-0".into(),
            member: Some("d".into()),
            address: Ipv4Addr::new(127, 0, 2, 9),
            node_public_key: key(4),
            admin_public_key: key(104),
            in_genesis: true,
            admitted: false,
            registered: false,
            leaving: true,
            removed: false,
        }
    }

    fn info(node: &NodeRecord) -> MemberInfo {
        MemberInfo {
            name: node.name.clone(),
            admin_key: node.admin_public_key.clone(),
            node_key: node.node_public_key.to_uppercase(),
            p2p_address: "127.0.2.9:30300".into(),
        }
    }

    fn registry(members: Vec<MemberInfo>, pending: Vec<PendingChange>) -> MembersInfo {
        MembersInfo {
            chain_id: "c".into(),
            height: 5,
            epoch: 2,
            epoch_length: 100,
            epoch_end_height: 299,
            sequence: 9,
            threshold: 3,
            members,
            validators: Vec::new(),
            peers: Vec::new(),
            pending,
        }
    }

    fn change(kind: ChangeKind, member: MemberInfo) -> PendingChange {
        PendingChange {
            kind,
            member,
            height: 250,
            proposal: "00".into(),
            effective_epoch: 3,
        }
    }

    #[test]
    fn a_leaving_node_is_proposed_then_waits_then_is_gone() {
        let n = leaving();
        assert_eq!(
            departure(&n, &registry(vec![info(&n)], Vec::new())),
            Departure::Member {
                name: "net-d-0".into()
            }
        );
        assert_eq!(
            departure(
                &n,
                &registry(vec![info(&n)], vec![change(ChangeKind::Remove, info(&n))])
            ),
            Departure::RemovalPending { epoch: 3 }
        );
        assert_eq!(
            departure(
                &n,
                &registry(Vec::new(), vec![change(ChangeKind::Admit, info(&n))])
            ),
            Departure::AdmissionPending { epoch: 3 }
        );
        assert_eq!(
            departure(&n, &registry(Vec::new(), Vec::new())),
            Departure::Gone
        );
    }

    #[test]
    fn the_removal_proposal_names_the_member_at_the_sequence() {
        let chain = ChainRecord {
            shard: 0,
            chain_id: "c".into(),
            role: None,
            nodes: Vec::new(),
            draining: false,
            retired: false,
        };
        let p = removal_proposal(&chain, "net-d-0", &registry(Vec::new(), Vec::new()));
        assert_eq!(p.sequence, 9);
        assert_eq!(p.chain_id, "c");
        assert_eq!(
            p.action,
            GovernanceAction::Remove {
                name: "net-d-0".into()
            }
        );
        assert!(p.check().is_ok());
    }
}
