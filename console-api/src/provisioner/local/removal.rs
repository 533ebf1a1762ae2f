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
use std::time::Instant;

use serde_json::{Value, json};
use trellis_node_api::{ChangeKind, MembersInfo, methods};
use trellis_node_types::{GovernanceAction, GovernanceTx, Proposal, to_hex};
use uuid::Uuid;

use super::Inner;
use super::admission::{RESUBMIT_AFTER, call, mark_node, record};
use super::record::{ChainRecord, NodeRecord};
use crate::provisioner::GovernanceProposal;

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

struct Leaving {
    network: Uuid,
    chain: ChainRecord,
    node: NodeRecord,
}

pub(super) async fn remove_once(inner: &Arc<Inner>) {
    let leaving: Vec<Leaving> = {
        let fleet = inner.fleet.lock().await;
        fleet
            .networks
            .values()
            .filter(|r| !r.deleting && !r.stopped && !r.paused)
            .flat_map(|r| {
                r.chains.iter().filter(|c| !c.retired).flat_map(move |c| {
                    c.nodes
                        .iter()
                        .filter(|n| n.leaving && !n.removed)
                        .map(move |n| Leaving {
                            network: r.network_id,
                            chain: c.clone(),
                            node: n.clone(),
                        })
                })
            })
            .collect()
    };
    for item in leaving {
        let outcome = remove(inner, &item).await;
        let mut notes = inner.admission_notes.lock().await;
        match outcome {
            Ok(None) => {
                notes.remove(&(item.network, item.node.name.clone()));
            }
            Ok(Some(note)) | Err(note) => {
                notes.insert((item.network, item.node.name.clone()), note);
            }
        }
    }
}

/// One removal attempt; `Ok(None)` once the node is out and stopping.
async fn remove(inner: &Arc<Inner>, item: &Leaving) -> Result<Option<String>, String> {
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
    let members: MembersInfo = serde_json::from_value(
        call(&inner.http, validator, methods::GET_MEMBERS, Value::Null)
            .await
            .map_err(|e| {
                format!("{name} leaves the chain; the chain's members cannot be read: {e}")
            })?,
    )
    .map_err(|e| format!("{name}: unexpected trellis_getMembers answer: {e}"))?;
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
    let sent_key = (item.network, format!("{name}/remove"));
    if inner
        .admission_sent
        .lock()
        .await
        .get(&sent_key)
        .is_some_and(|at| at.elapsed() < RESUBMIT_AFTER)
    {
        return Ok(Some(format!(
            "{name}: removal sent; waiting for it to be final"
        )));
    }
    let proposal = removal_proposal(&item.chain, &on_chain, &members);
    let Some(signer) = inner.signer.get() else {
        return Err(format!(
            "{name}: no governance signer is attached to this console, so it cannot approve \
             the removal"
        ));
    };
    let admin_keys: Vec<String> = members
        .members
        .iter()
        .map(|m| m.admin_key.clone())
        .collect();
    let approvals = signer.approve(item.network, &admin_keys, &proposal).await?;
    let published = GovernanceProposal {
        action: "Remove".to_owned(),
        node: on_chain.clone(),
        chain_id: proposal.chain_id.clone(),
        sequence: proposal.sequence,
        proposal: proposal.to_hex(),
        proposal_hash: to_hex(proposal.id().as_ref()),
        threshold: u32::try_from(members.threshold).unwrap_or(u32::MAX),
        approvers: admin_keys,
        submitted_tx: None,
    };
    if approvals.len() < members.threshold {
        record(
            inner,
            item.network,
            &item.node,
            "Admitted",
            "AwaitingApprovals",
            format!(
                "{name}: {} of the {} approvals the chain needs to remove it are held",
                approvals.len(),
                members.threshold
            ),
            Some(published),
        )
        .await;
        return Err(format!(
            "{name}: the chain needs {} approvals of its {} members to remove it; the console \
             holds {} of them (custodied keys of the members that stay, and approvals \
             organisations with their own keys posted for this proposal)",
            members.threshold,
            members.members.len(),
            approvals.len()
        ));
    }
    let tx = GovernanceTx::new(proposal, approvals);
    let result = call(
        &inner.http,
        validator,
        methods::SUBMIT_GOVERNANCE,
        json!({"tx": tx.to_hex()}),
    )
    .await
    .map_err(|e| format!("{name}: the chain refused the removal: {e}"))?;
    inner
        .admission_sent
        .lock()
        .await
        .insert(sent_key, Instant::now());
    tracing::info!(node = %name, hash = %result["hash"], "removal governance transaction sent");
    record(
        inner,
        item.network,
        &item.node,
        "Admitted",
        "GovernanceSubmitted",
        format!("{name}: removal submitted; waiting for it to be final"),
        Some(GovernanceProposal {
            submitted_tx: result["hash"].as_str().map(str::to_owned),
            ..published
        }),
    )
    .await;
    Ok(Some(format!(
        "{name}: removal {} sent; waiting for it to be final",
        result["hash"].as_str().unwrap_or("?")
    )))
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
