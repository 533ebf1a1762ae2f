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
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trellis_node_api::{MembersInfo, methods};
use trellis_node_types::{
    GovernanceAction, GovernanceTx, MemberSpec, Proposal, public_key_from_hex, to_hex,
};
use uuid::Uuid;

use super::record::{ChainRecord, NodeRecord};
use super::{Inner, p2p_address, rpc_address};
use crate::provisioner::{GovernanceProposal, MemberChainState};

/// How often the admission step runs.
pub(super) const ADMIT_EVERY: Duration = Duration::from_secs(2);
/// A submitted admission is given this long to show up before it is sent again.
pub(super) const RESUBMIT_AFTER: Duration = Duration::from_secs(30);

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

/// One JSON-RPC call to a node: its result, or the error as text.
pub(super) async fn call(
    http: &reqwest::Client,
    node: &NodeRecord,
    method: &str,
    params: Value,
) -> Result<Value, String> {
    let url = format!("http://{}{}", rpc_address(node), trellis_node_api::RPC_PATH);
    let response = http
        .post(url)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await
        .map_err(|e| format!("{} unreachable: {e}", node.name))?;
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("{} answered no JSON: {e}", node.name))?;
    if let Some(error) = body.get("error") {
        return Err(format!(
            "{method} refused ({}): {}",
            error["code"],
            error["message"].as_str().unwrap_or("")
        ));
    }
    Ok(body.get("result").cloned().unwrap_or(Value::Null))
}

/// A node waiting for admission, with what is needed to admit it.
struct Waiting {
    network: Uuid,
    chain: ChainRecord,
    node: NodeRecord,
}

pub(super) async fn admit_forever(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(ADMIT_EVERY).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        admit_once(&inner).await;
        super::removal::remove_once(&inner).await;
    }
}

async fn admit_once(inner: &Arc<Inner>) {
    let waiting: Vec<Waiting> = {
        let fleet = inner.fleet.lock().await;
        fleet
            .networks
            .values()
            .filter(|r| !r.deleting && !r.stopped && !r.paused)
            .flat_map(|r| {
                r.chains.iter().filter(|c| !c.retired).flat_map(move |c| {
                    c.nodes
                        .iter()
                        .filter(|n| n.awaits_admission())
                        .map(move |n| Waiting {
                            network: r.network_id,
                            chain: c.clone(),
                            node: n.clone(),
                        })
                })
            })
            .collect()
    };
    for item in waiting {
        let outcome = admit(inner, &item).await;
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

/// One admission attempt; `Ok(None)` once the node is admitted, else what is happening.
async fn admit(inner: &Arc<Inner>, item: &Waiting) -> Result<Option<String>, String> {
    let name = &item.node.name;
    let Some(validator) = item.chain.nodes.iter().find(|n| n.is_validator()) else {
        return Err(format!("{name}: the chain has no validator to ask"));
    };
    let members: MembersInfo = serde_json::from_value(
        call(&inner.http, validator, methods::GET_MEMBERS, Value::Null)
            .await
            .map_err(|e| {
                format!("{name} waits for its admission; the chain's members cannot be read: {e}")
            })?,
    )
    .map_err(|e| format!("{name}: unexpected trellis_getMembers answer: {e}"))?;
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
    {
        let submitted = inner.admission_sent.lock().await;
        if submitted
            .get(&(item.network, name.clone()))
            .is_some_and(|at| at.elapsed() < RESUBMIT_AFTER)
        {
            return Ok(Some(format!(
                "{name}: admission sent; waiting for it to be final"
            )));
        }
    }
    let proposal = admission_proposal(&item.chain, &item.node, &members)?;
    let Some(signer) = inner.signer.get() else {
        return Err(format!(
            "{name}: no governance signer is attached to this console, so it cannot approve \
             the admission"
        ));
    };
    let admin_keys: Vec<String> = members
        .members
        .iter()
        .map(|m| m.admin_key.clone())
        .collect();
    let approvals = signer.approve(item.network, &admin_keys, &proposal).await?;
    let published = GovernanceProposal {
        action: "Admit".to_owned(),
        node: name.clone(),
        chain_id: proposal.chain_id.clone(),
        sequence: proposal.sequence,
        proposal: proposal.to_hex(),
        proposal_hash: to_hex(proposal.id().as_ref()),
        threshold: u32::try_from(members.threshold).unwrap_or(u32::MAX),
        approvers: admin_keys.clone(),
        submitted_tx: None,
    };
    if approvals.len() < members.threshold {
        record(
            inner,
            item.network,
            &item.node,
            "Invited",
            "AwaitingApprovals",
            format!(
                "{name}: {} of the {} approvals the chain needs are held",
                approvals.len(),
                members.threshold
            ),
            Some(published),
        )
        .await;
        return Err(format!(
            "{name}: the chain needs {} approvals of its {} members to admit it; the console \
             holds {} of them (custodied keys, and approvals organisations with their own \
             keys posted for this proposal)",
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
    .map_err(|e| format!("{name}: the chain refused the admission: {e}"))?;
    inner
        .admission_sent
        .lock()
        .await
        .insert((item.network, name.clone()), Instant::now());
    tracing::info!(node = %name, hash = %result["hash"], "admission governance transaction sent");
    let submitted = result["hash"].as_str().map(str::to_owned);
    record(
        inner,
        item.network,
        &item.node,
        "Proposed",
        "GovernanceSubmitted",
        format!("{name}: admission submitted; waiting for it to be final"),
        Some(GovernanceProposal {
            submitted_tx: submitted,
            ..published
        }),
    )
    .await;
    Ok(Some(format!(
        "{name}: admission {} sent; waiting for it to be final",
        result["hash"].as_str().unwrap_or("?")
    )))
}

/// Records where a member's admission (or removal) stands on chain, for the console's
/// proposal endpoint.
pub(super) async fn record(
    inner: &Arc<Inner>,
    network: Uuid,
    node: &NodeRecord,
    phase: &str,
    reason: &str,
    message: String,
    proposal: Option<GovernanceProposal>,
) {
    let Some(member) = node.member.clone() else {
        return;
    };
    inner.admission_states.lock().await.insert(
        (network, member),
        MemberChainState {
            phase: Some(phase.to_owned()),
            reason: Some(reason.to_owned()),
            message: Some(message),
            proposal,
        },
    );
}

async fn mark_admitted(inner: &Arc<Inner>, network: Uuid, name: &str) -> Result<(), String> {
    mark_node(inner, network, name, "admission", |node| {
        node.admitted = true
    })
    .await?;
    tracing::info!(node = name, "admitted on chain; starting it");
    Ok(())
}

/// Changes the node `name` of `network` with `change`, records it durably (`what` names
/// the change in the error), then lets the supervisor start or stop nodes to match.
pub(super) async fn mark_node(
    inner: &Arc<Inner>,
    network: Uuid,
    name: &str,
    what: &str,
    change: impl Fn(&mut NodeRecord),
) -> Result<(), String> {
    let mut fleet = inner.fleet.lock().await;
    let Some(record) = fleet.networks.get_mut(&network) else {
        return Ok(());
    };
    let mut changed = record.clone();
    for chain in &mut changed.chains {
        for node in &mut chain.nodes {
            if node.name == name {
                change(node);
            }
        }
    }
    inner
        .layout
        .save(&changed)
        .map_err(|e| format!("recording {name}'s {what}: {e}"))?;
    *record = changed;
    super::supervise(inner, &mut fleet);
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
