//! Admitting a consortium member's node on chain (local mode).
//!
//! A member admitted by the console after genesis gets its node prepared by `apply`
//! (keys, config) but not started: the chain refuses peers it has not admitted. Every
//! few seconds this step, for each such node:
//!
//! 1. reads the chain's member registry (`trellis_getMembers`) from a validator;
//! 2. if the node's key is a member or a pending admission, marks the node `admitted`
//!    (durably) and the supervisor starts it — it syncs and votes from the epoch that
//!    includes it;
//! 3. otherwise builds the admission proposal (the node's name, its organisation's admin
//!    key, its node key and p2p address, at the registry's sequence), has the console's
//!    [`GovernanceSigner`] approve it with the custodied keys of current members, and
//!    submits it (`trellis_submitGovernance`) once the approvals reach the chain's
//!    threshold. Short of the threshold (members who brought their own keys must sign
//!    themselves), the network's status says what is missing.
//!
//! Every outcome is reported in the network's status message; nothing here panics or
//! blocks the supervisor.

use std::sync::Arc;
use std::time::Duration;

use trellis_node_api::MembersInfo;
use trellis_node_types::{GovernanceAction, MemberSpec, Proposal, public_key_from_hex};
use uuid::Uuid;

use super::member_change::{
    Change, Pending, for_each_pending, mark_node, propose, read_members, record,
};
use super::record::{ChainRecord, NodeRecord};
use super::{Inner, p2p_address};

/// How often the admission step runs.
pub(super) const ADMIT_EVERY: Duration = Duration::from_secs(2);

/// Where a node stands in the chain's registry.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Standing {
    /// A member, or admitted and waiting for the next epoch: it may connect now.
    Admitted,
    Absent,
}

pub(super) fn standing(node: &NodeRecord, members: &MembersInfo) -> Standing {
    let key = node.node_public_key.to_ascii_lowercase();
    let is_member = members
        .members
        .iter()
        .any(|m| m.node_key.eq_ignore_ascii_case(&key));
    let is_pending = members
        .pending
        .iter()
        .any(|p| p.member.node_key.eq_ignore_ascii_case(&key));
    if is_member || is_pending {
        Standing::Admitted
    } else {
        Standing::Absent
    }
}

/// The proposal that admits `node` into `chain`.
pub(super) fn admission_proposal(
    chain: &ChainRecord,
    node: &NodeRecord,
    members: &MembersInfo,
) -> Result<Proposal, String> {
    let admin_key = public_key_from_hex(&node.admin_public_key)
        .ok_or_else(|| format!("{}: admin key is not an ed25519 key", node.name))?;
    let node_key = public_key_from_hex(&node.node_public_key)
        .ok_or_else(|| format!("{}: node key is not an ed25519 key", node.name))?;
    let proposal = Proposal {
        chain_id: chain.chain_id.clone(),
        sequence: members.sequence,
        action: GovernanceAction::Admit(MemberSpec {
            name: node.name.clone(),
            admin_key,
            node_key,
            p2p_address: p2p_address(node).to_string(),
        }),
    };
    proposal
        .check()
        .map_err(|e| format!("{}: {e}", node.name))?;
    Ok(proposal)
}

pub(super) async fn admit_forever(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(ADMIT_EVERY).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        for_each_pending(&inner, NodeRecord::awaits_admission, admit).await;
        super::removal::remove_once(&inner).await;
    }
}

/// One admission attempt; `Ok(None)` once the node is admitted, else what is happening.
async fn admit(inner: &Arc<Inner>, item: &Pending) -> Result<Option<String>, String> {
    let name = &item.node.name;
    let Some(validator) = item.chain.nodes.iter().find(|n| n.is_validator()) else {
        return Err(format!("{name}: the chain has no validator to ask"));
    };
    let members = read_members(inner, validator, name, "waits for its admission").await?;
    if standing(&item.node, &members) == Standing::Admitted {
        mark_admitted(inner, item.network, name).await?;
        record(
            inner,
            item.network,
            &item.node,
            "Admitted",
            "AdmittedOnChain",
            format!("{name} admitted on chain; started"),
            None,
        )
        .await;
        return Ok(None);
    }
    propose(
        inner,
        item,
        validator,
        &members,
        Change::Admission,
        name,
        || admission_proposal(&item.chain, &item.node, &members),
    )
    .await
}

async fn mark_admitted(inner: &Arc<Inner>, network: Uuid, name: &str) -> Result<(), String> {
    mark_node(inner, network, name, "admission", |node| {
        node.admitted = true
    })
    .await?;
    tracing::info!(node = name, "admitted on chain; starting it");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use trellis_node_api::{ChangeKind, MemberInfo, PendingChange};
    use trellis_node_types::{Signer as _, to_hex};

    fn key(seed: u64) -> String {
        to_hex(trellis_node_types::test_key(seed).public_key().as_ref())
    }

    fn node(name: &str, seed: u64) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            member: Some("d".into()),
            address: Ipv4Addr::new(127, 0, 2, 9),
            node_public_key: key(seed),
            admin_public_key: key(seed + 100),
            in_genesis: false,
            admitted: false,
            registered: false,
            leaving: false,
            removed: false,
        }
    }

    fn registry(members: Vec<MemberInfo>, pending: Vec<PendingChange>) -> MembersInfo {
        MembersInfo {
            chain_id: "c-s0".into(),
            height: 5,
            epoch: 0,
            epoch_length: 100,
            epoch_end_height: 99,
            sequence: 7,
            threshold: 3,
            members,
            validators: Vec::new(),
            peers: Vec::new(),
            pending,
        }
    }

    #[test]
    fn admission_proposal_names_the_node_its_keys_and_address_at_the_sequence() {
        let chain = ChainRecord {
            shard: 0,
            chain_id: "c-s0".into(),
            role: None,
            nodes: Vec::new(),
            draining: false,
            retired: false,
        };
        let n = node("net-d-0", 4);
        let p = admission_proposal(&chain, &n, &registry(Vec::new(), Vec::new())).unwrap();
        assert_eq!(p.sequence, 7);
        assert_eq!(p.chain_id, "c-s0");
        let GovernanceAction::Admit(spec) = &p.action else {
            panic!("not an admission")
        };
        assert_eq!(spec.name, "net-d-0");
        assert_eq!(spec.p2p_address, "127.0.2.9:30300");
        assert_eq!(to_hex(spec.node_key.as_ref()), n.node_public_key);
        let mut bad = n.clone();
        bad.admin_public_key = "zz".into();
        assert!(admission_proposal(&chain, &bad, &registry(Vec::new(), Vec::new())).is_err());
    }

    #[test]
    fn a_member_or_a_pending_admission_counts_as_admitted() {
        let n = node("net-d-0", 4);
        let info = MemberInfo {
            name: n.name.clone(),
            admin_key: n.admin_public_key.clone(),
            node_key: n.node_public_key.to_uppercase(),
            p2p_address: "127.0.2.9:30300".into(),
        };
        assert_eq!(
            standing(&n, &registry(Vec::new(), Vec::new())),
            Standing::Absent
        );
        assert_eq!(
            standing(&n, &registry(vec![info.clone()], Vec::new())),
            Standing::Admitted
        );
        let pending = PendingChange {
            kind: ChangeKind::Admit,
            member: info,
            height: 3,
            proposal: "00".into(),
            effective_epoch: 1,
        };
        assert_eq!(
            standing(&n, &registry(Vec::new(), vec![pending])),
            Standing::Admitted
        );
    }
}
