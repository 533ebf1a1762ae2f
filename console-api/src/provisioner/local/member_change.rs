//! What admitting and removing a member's node on chain have in common (local mode):
//! finding the nodes that wait for a change, reading the chain's member registry,
//! approving a governance proposal with the console's signer and submitting it once the
//! chain's threshold is held, and recording each outcome for the network's status and
//! the member's proposal. [`super::admission`] and [`super::removal`] decide *what* to
//! propose; this module carries it out the same way for both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trellis_node_api::{MembersInfo, methods};
use trellis_node_types::{GovernanceTx, Proposal, to_hex};
use uuid::Uuid;

use super::record::{ChainRecord, NodeRecord};
use super::{Inner, rpc_address};
use crate::provisioner::{GovernanceProposal, MemberChainState};

/// A submitted change is given this long to show up before it is sent again.
pub(super) const RESUBMIT_AFTER: Duration = Duration::from_secs(30);

/// The two changes of a member's node on chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    Admission,
    Removal,
}

impl Change {
    fn noun(self) -> &'static str {
        match self {
            Change::Admission => "admission",
            Change::Removal => "removal",
        }
    }

    /// The governance action's name in the published proposal.
    fn action(self) -> &'static str {
        match self {
            Change::Admission => "Admit",
            Change::Removal => "Remove",
        }
    }

    /// The member's phase while approvals are gathered and after the submission: an
    /// admission moves an invited member on to `Proposed`; a member being removed stays
    /// `Admitted` until the chain has removed it.
    fn phases(self) -> (&'static str, &'static str) {
        match self {
            Change::Admission => ("Invited", "Proposed"),
            Change::Removal => ("Admitted", "Admitted"),
        }
    }

    /// Whose approvals the console can hold for this change.
    fn approvers(self) -> &'static str {
        match self {
            Change::Admission => "custodied keys",
            Change::Removal => "custodied keys of the members that stay",
        }
    }

    /// Where `(network, node)` is remembered as sent: one entry per change, so a
    /// removal right after an admission is not mistaken for it.
    fn sent_key(self, network: Uuid, node: &str) -> (Uuid, String) {
        match self {
            Change::Admission => (network, node.to_owned()),
            Change::Removal => (network, format!("{node}/remove")),
        }
    }
}

/// A node that waits for a change on chain, with its network and chain.
pub(super) struct Pending {
    pub network: Uuid,
    pub chain: ChainRecord,
    pub node: NodeRecord,
}

/// Runs `step` for every node of the running networks that `waits` selects, and keeps
/// each outcome as the node's note for the network's status: `Ok(None)` when the node
/// is done (its note goes), else what is happening or what went wrong.
pub(super) async fn for_each_pending(
    inner: &Arc<Inner>,
    waits: impl Fn(&NodeRecord) -> bool,
    step: impl AsyncFn(&Arc<Inner>, &Pending) -> Result<Option<String>, String>,
) {
    let pending: Vec<Pending> = {
        let fleet = inner.fleet.lock().await;
        fleet
            .networks
            .values()
            .filter(|r| !r.deleting && !r.stopped && !r.paused)
            .flat_map(|r| {
                let waits = &waits;
                // Member changes are an unsharded (consortium) chain's governance; a
                // sharded network's validators join and leave through the beacon
                // (super::scaling, super::pool).
                r.chains
                    .iter()
                    .filter(|c| !c.retired && c.role.is_none())
                    .flat_map(move |c| {
                        c.nodes.iter().filter(|n| waits(n)).map(move |n| Pending {
                            network: r.network_id,
                            chain: c.clone(),
                            node: n.clone(),
                        })
                    })
            })
            .collect()
    };
    for item in pending {
        let outcome = step(inner, &item).await;
        let key = (item.network, item.node.name.clone());
        let mut notes = inner.admission_notes.lock().await;
        match outcome {
            Ok(None) => {
                notes.remove(&key);
            }
            Ok(Some(note)) | Err(note) => {
                notes.insert(key, note);
            }
        }
    }
}

/// The chain's member registry, read from `validator`; `context` says in an error
/// what `name` is waiting for.
pub(super) async fn read_members(
    inner: &Inner,
    validator: &NodeRecord,
    name: &str,
    context: &str,
) -> Result<MembersInfo, String> {
    let answer = call(&inner.http, validator, methods::GET_MEMBERS, Value::Null)
        .await
        .map_err(|e| format!("{name} {context}; the chain's members cannot be read: {e}"))?;
    serde_json::from_value(answer)
        .map_err(|e| format!("{name}: unexpected trellis_getMembers answer: {e}"))
}

/// Proposes `change` for `item`'s node (`on_chain` is the member's name in the
/// registry): unless it was sent less than [`RESUBMIT_AFTER`] ago, builds the proposal,
/// has the console's signer approve it with the current members' keys, publishes where
/// the approvals stand, and submits the governance transaction through `validator` once
/// they reach the chain's threshold. `Ok(Some(note))` while waiting for it to be final.
pub(super) async fn propose(
    inner: &Arc<Inner>,
    item: &Pending,
    validator: &NodeRecord,
    members: &MembersInfo,
    change: Change,
    on_chain: &str,
    proposal: impl FnOnce() -> Result<Proposal, String>,
) -> Result<Option<String>, String> {
    let name = &item.node.name;
    let noun = change.noun();
    let sent_key = change.sent_key(item.network, name);
    if inner
        .admission_sent
        .lock()
        .await
        .get(&sent_key)
        .is_some_and(|at| at.elapsed() < RESUBMIT_AFTER)
    {
        return Ok(Some(format!(
            "{name}: {noun} sent; waiting for it to be final"
        )));
    }
    let proposal = proposal()?;
    let Some(signer) = inner.signer.get() else {
        return Err(format!(
            "{name}: no governance signer is attached to this console, so it cannot approve \
             the {noun}"
        ));
    };
    let admin_keys: Vec<String> = members
        .members
        .iter()
        .map(|m| m.admin_key.clone())
        .collect();
    let approvals = signer.approve(item.network, &admin_keys, &proposal).await?;
    let published = GovernanceProposal {
        action: change.action().to_owned(),
        node: on_chain.to_owned(),
        chain_id: proposal.chain_id.clone(),
        sequence: proposal.sequence,
        proposal: proposal.to_hex(),
        proposal_hash: to_hex(proposal.id().as_ref()),
        threshold: u32::try_from(members.threshold).unwrap_or(u32::MAX),
        approvers: admin_keys,
        submitted_tx: None,
    };
    let (gathering, submitted) = change.phases();
    if approvals.len() < members.threshold {
        record(
            inner,
            item.network,
            &item.node,
            gathering,
            "AwaitingApprovals",
            format!(
                "{name}: {} of the {} approvals the chain needs for its {noun} are held",
                approvals.len(),
                members.threshold
            ),
            Some(published),
        )
        .await;
        return Err(format!(
            "{name}: the chain needs {} approvals of its {} members for its {noun}; the \
             console holds {} of them ({}, and approvals organisations with their own keys \
             posted for this proposal)",
            members.threshold,
            members.members.len(),
            approvals.len(),
            change.approvers()
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
    .map_err(|e| format!("{name}: the chain refused the {noun}: {e}"))?;
    inner
        .admission_sent
        .lock()
        .await
        .insert(sent_key, Instant::now());
    let hash = result["hash"].as_str().unwrap_or("?");
    tracing::info!(node = %name, %hash, "{noun} governance transaction sent");
    record(
        inner,
        item.network,
        &item.node,
        submitted,
        "GovernanceSubmitted",
        format!("{name}: {noun} submitted; waiting for it to be final"),
        Some(GovernanceProposal {
            submitted_tx: result["hash"].as_str().map(str::to_owned),
            ..published
        }),
    )
    .await;
    Ok(Some(format!(
        "{name}: {noun} {hash} sent; waiting for it to be final"
    )))
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
