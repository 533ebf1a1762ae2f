//! Consortium governance on Kubernetes: the console's side of a member's admission.
//!
//! A `ChainNetwork`'s `spec.members` is its **genesis** membership, fixed when the
//! network is created. A member the console admits later becomes a `ChainMember`
//! resource `<network>-<member>` next to the network ([`split_members`]); the operator
//! publishes the governance proposal that admits it on chain in the member's
//! `status.governance`. The console then:
//!
//! 1. collects the approvals — the custodied keys of the consortium's admitted members
//!    (opened under the master key) and the approvals organisations with their own keys
//!    posted (`POST …/members/{id}/proposal/approvals`) — through the
//!    [`GovernanceSigner`];
//! 2. once they reach the chain's threshold, writes the governance transaction (hex,
//!    never a key) into a Secret `<member>-gov-<proposal hash prefix>` owned by the
//!    `ChainMember`, and names it in `spec.governanceTxSecret`;
//! 3. the operator checks, submits and follows it, and provisions the member's nodes.
//!
//! Each hand-over is in the network owner's audit log; [`hand_over_once`] runs every few
//! seconds ([`KubeProvisioner::spawn_governance`]) and is level-based: a proposal whose
//! Secret is already named is left alone, a new proposal (the next validator, a
//! removal, a sequence overtaken) gets a new Secret.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use trellis_crd::member::{
    ChainMemberSpec, GOVERNANCE_TX_ENTRY, MemberPhase, NetworkRef as MemberNetworkRef,
};
use trellis_crd::topology::{NetworkId, plan};
use trellis_crd::{
    ChainMember, ChainNetwork, ConsortiumMember, MemberGovernance, NetworkMode, founders,
};
use trellis_node_types::{GovernanceTx, Proposal, to_hex};
use uuid::Uuid;

use super::kube::{FIELD_MANAGER, MANAGED_BY_LABEL, NETWORK_ID_LABEL, classify, member_name};
use super::{GovernanceProposal, GovernanceSigner, MemberChainState, NetworkRef, ProvisionError};

/// How often [`hand_over_once`] runs.
pub const HAND_OVER_EVERY: Duration = Duration::from_secs(3);

/// Name of the `ChainMember` of consortium member `member` (its DNS name) of `network`.
pub fn chain_member_name(network: &str, member: &str) -> String {
    format!("{network}-{member}")
}

/// Label on the `ChainMember` the console writes to remove a founding member: the
/// resource stays once the member is `Removed`, since the operator keeps the founder's
/// validators out of the network's StatefulSet while it says so
/// (`trellis_crd::founders`).
pub const FOUNDING_LABEL: &str = "console.trellis.dev/founding-member";

/// Keeps the `existing` resource's genesis membership in `cr.spec.members` — all the
/// desired members when the network is new — with its committee sizes, and returns the
/// other members as `ChainMember` resources (same namespace and labels): those admitted
/// later, and the founders the desired state no longer has, with `spec.remove` and
/// [`FOUNDING_LABEL`] (the genesis list stays as it was: the deal of the committees'
/// validators depends on it). Pure.
pub fn split_members(cr: &mut ChainNetwork, existing: Option<&ChainNetwork>) -> Vec<ChainMember> {
    let Some(existing) = existing else {
        return Vec::new();
    };
    if cr.spec.mode != NetworkMode::Consortium {
        return Vec::new();
    }
    let departed: Vec<String> = departed_genesis_members(cr, existing);
    let later: Vec<ConsortiumMember> = cr
        .spec
        .members
        .drain(..)
        .filter(|m| !existing.spec.members.iter().any(|g| g.name == m.name))
        .collect();
    cr.spec.members.clone_from(&existing.spec.members);
    cr.spec.validators_per_shard = existing.spec.validators_per_shard;
    cr.spec.beacon.validators = existing.spec.beacon.validators;
    let network = cr.name_any();
    // Owned by the network (not controlled: the operator's member controller is theirs),
    // so Kubernetes' garbage collector removes them when the network is deleted.
    let owner = existing.owner_ref(&());
    let founders_leaving = existing
        .spec
        .members
        .iter()
        .filter(|m| departed.contains(&m.name))
        .map(|m| (m, true));
    later
        .iter()
        .map(|m| (m, false))
        .chain(founders_leaving)
        .map(|(m, founder)| {
            let mut member = ChainMember::new(
                &chain_member_name(&network, &m.name),
                ChainMemberSpec {
                    network: MemberNetworkRef {
                        name: network.clone(),
                        namespace: None,
                    },
                    organization: m.name.clone(),
                    admin_public_key: m.admin_public_key.clone(),
                    nodes: m.nodes,
                    node_key_secret: None,
                    remove: founder,
                    governance_tx_secret: None,
                },
            );
            member.metadata.namespace.clone_from(&cr.metadata.namespace);
            let mut labels = cr.metadata.labels.clone().unwrap_or_default();
            if founder {
                labels.insert(FOUNDING_LABEL.to_owned(), "true".to_owned());
            }
            member.metadata.labels = Some(labels);
            member.metadata.owner_references = owner.clone().map(|o| vec![o]);
            member
        })
        .collect()
}

/// The genesis members (in the `existing` resource's `spec.members`) that the desired
/// resource `cr` no longer has: founders the console removed. Pure.
pub fn departed_genesis_members(cr: &ChainNetwork, existing: &ChainNetwork) -> Vec<String> {
    existing
        .spec
        .members
        .iter()
        .filter(|m| !cr.spec.members.iter().any(|d| d.name == m.name))
        .map(|m| m.name.clone())
        .collect()
}

/// The `ChainMember`s the console wrote that the desired state no longer has (`kept`
/// are those it still has): members the console removed. Pure.
pub fn departed_members<'a>(
    written: &'a [ChainMember],
    kept: &[ChainMember],
) -> Vec<&'a ChainMember> {
    written
        .iter()
        .filter(|w| !kept.iter().any(|k| k.name_any() == w.name_any()))
        .collect()
}

/// Asks the operator to remove each departed member from the chain (`spec.remove`): it
/// publishes the `Remove` proposal, which the hand-over approves like an admission, and
/// deletes the member's validators once the chain removed it. A merge patch: the rest of
/// the spec keeps its owner.
pub async fn mark_departed(
    client: &Client,
    network: &NetworkRef,
    kept: &[ChainMember],
) -> Result<(), ProvisionError> {
    let written = network_members(client, network).await?;
    for member in departed_members(&written, kept) {
        if member.spec.remove {
            delete_if_removed(client, member).await?;
            continue;
        }
        let name = member.name_any();
        Api::<ChainMember>::namespaced(client.clone(), &member.namespace().unwrap_or_default())
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({"spec": {"remove": true}})),
            )
            .await
            .map_err(|e| classify(&format!("ChainMember {name}"), &e))?;
        tracing::info!(member = %name, "member removed by the console; removal asked of the operator");
    }
    Ok(())
}

/// Deletes a `ChainMember` marked for removal once the operator reports it `Removed`
/// (off the chain, validators deleted): what it still owns goes with it. A founder's
/// stays ([`FOUNDING_LABEL`]).
async fn delete_if_removed(client: &Client, member: &ChainMember) -> Result<(), ProvisionError> {
    let founder = member.labels().contains_key(FOUNDING_LABEL);
    let removed = !founder
        && member.spec.remove
        && member
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p == MemberPhase::Removed);
    if !removed {
        return Ok(());
    }
    let name = member.name_any();
    match Api::<ChainMember>::namespaced(client.clone(), &member.namespace().unwrap_or_default())
        .delete(&name, &DeleteParams::default())
        .await
    {
        Ok(_) => {
            tracing::info!(member = %name, "removed from the chain; ChainMember deleted");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(classify(&format!("ChainMember {name}"), &e)),
    }
}

/// Server-side applies the later members (the console owns their spec but not
/// `governanceTxSecret`, which the hand-over sets with a merge patch).
pub async fn apply_members(client: &Client, members: &[ChainMember]) -> Result<(), ProvisionError> {
    for member in members {
        let namespace = member.namespace().unwrap_or_default();
        let name = member.name_any();
        Api::<ChainMember>::namespaced(client.clone(), &namespace)
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(member),
            )
            .await
            .map_err(|e| classify(&format!("ChainMember {name}"), &e))?;
    }
    Ok(())
}

/// Why the founding member `organisation` cannot leave `network` (`code`, message), if
/// it cannot: the committee left must tolerate a fault (`committee_below_quorum`) and
/// the founder's validators must be the last pods of the network's shard StatefulSet
/// (`founder_not_removable`), the rules the operator applies before it proposes the
/// removal (`trellis_crd::founders`). Asked before the removal is approved, so that the
/// console never records a removal the chain will not make. `None` for a network not
/// on the cluster yet, or an organisation not in its genesis membership.
pub async fn founder_removal_refusal(
    client: &Client,
    network: &NetworkRef,
    organisation: &str,
) -> Result<Option<(&'static str, String)>, ProvisionError> {
    let namespace = super::kube::namespace_of(&network.tenant_slug);
    let what = format!("ChainNetwork {}", network.name);
    let Some(cr) = Api::<ChainNetwork>::namespaced(client.clone(), &namespace)
        .get_opt(&network.name)
        .await
        .map_err(|e| classify(&what, &e))?
    else {
        return Ok(None);
    };
    let name = member_name(organisation);
    if !cr.spec.members.iter().any(|m| m.name == name) {
        return Ok(None);
    }
    let members = network_members(client, network).await?;
    let mut retired = founders::retired_founders(&cr, &members);
    retired.retain(|o| *o != name);
    let topology = plan(&NetworkId::new(namespace, &network.name), &cr.spec)
        .map_err(|e| ProvisionError::Rejected(format!("{what} is invalid: {e}")))?;
    let remaining = founders::retire(topology, &retired);
    let leaving = match founders::founder_exit(&remaining, &name) {
        Ok(nodes) => nodes.len(),
        Err(message) => return Ok(Some(("founder_not_removable", message))),
    };
    // The chain's validators: the founders' that remain, and the later members'.
    let later: usize = members
        .iter()
        .filter(|m| {
            !founders::is_founder(m, &cr)
                && m.status.as_ref().and_then(|s| s.phase) == Some(MemberPhase::Admitted)
        })
        .map(|m| usize::try_from(m.spec.nodes).unwrap_or(0))
        .sum();
    let validators = remaining.shards().next().map_or(0, |s| s.nodes.len()) + later;
    Ok(founders::quorum_refusal(organisation, validators, leaving)
        .map(|message| ("committee_below_quorum", message)))
}

/// The proposal a member's `ChainMember` publishes, in the console's terms.
pub fn to_proposal(governance: &MemberGovernance) -> GovernanceProposal {
    GovernanceProposal {
        action: governance.action.clone(),
        node: governance.node.clone(),
        chain_id: governance.chain_id.clone(),
        sequence: u64::try_from(governance.sequence).unwrap_or(0),
        proposal: governance.proposal.clone(),
        proposal_hash: governance.proposal_hash.clone(),
        threshold: u32::try_from(governance.threshold).unwrap_or(0),
        approvers: governance.approvers.clone(),
        submitted_tx: governance.submitted_tx.clone(),
    }
}

/// The `ChainMember` of `organisation` in `network`: phase, admission step and the
/// proposal it publishes. `None` when there is none (a genesis member, or not admitted
/// by the console yet).
pub async fn member_state(
    client: &Client,
    network: &NetworkRef,
    organisation: &str,
) -> Result<Option<MemberChainState>, ProvisionError> {
    let namespace = super::kube::namespace_of(&network.tenant_slug);
    let name = chain_member_name(&network.name, &member_name(organisation));
    let member = Api::<ChainMember>::namespaced(client.clone(), &namespace)
        .get_opt(&name)
        .await
        .map_err(|e| classify(&format!("ChainMember {name}"), &e))?;
    Ok(member.map(|m| {
        let status = m.status.unwrap_or_default();
        let condition = status.conditions.iter().find(|c| c.type_ == "Admitted");
        MemberChainState {
            phase: status.phase.map(|p| format!("{p:?}")),
            reason: condition.map(|c| c.reason.clone()),
            message: condition.map(|c| c.message.clone()),
            proposal: status.governance.as_ref().map(to_proposal),
        }
    }))
}

/// The `ChainMember`s the console wrote for `network`.
pub async fn network_members(
    client: &Client,
    network: &NetworkRef,
) -> Result<Vec<ChainMember>, ProvisionError> {
    let namespace = super::kube::namespace_of(&network.tenant_slug);
    Api::<ChainMember>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default().labels(&format!("{NETWORK_ID_LABEL}={}", network.network_id)))
        .await
        .map(|list| list.items)
        .map_err(|e| classify("ChainMembers", &e))
}

/// One line per member whose admission (or removal) is under way: its organisation, the
/// step (the `Admitted` condition's reason) and the operator's message. Pure.
pub fn admission_notes(members: &[ChainMember]) -> Option<String> {
    let notes: Vec<String> = members
        .iter()
        .filter_map(|m| {
            let status = m.status.as_ref()?;
            let c = status.conditions.iter().find(|c| c.type_ == "Admitted")?;
            let settled = matches!(c.reason.as_str(), "AdmittedOnChain" | "Removed");
            (!settled).then(|| {
                format!(
                    "member {}: {} ({})",
                    m.spec.organization, c.reason, c.message
                )
            })
        })
        .collect();
    (!notes.is_empty()).then(|| notes.join("; "))
}

/// Name of the Secret carrying the transaction for a proposal.
pub fn tx_secret_name(member: &str, proposal_hash: &str) -> String {
    let prefix: String = proposal_hash.chars().take(16).collect();
    format!("{member}-gov-{prefix}")
}

/// Approvals of `admin_keys` (the chain's members' keys, one per member validator) that
/// the transaction carries: what the chain counts against its threshold.
pub fn counted_approvals(admin_keys: &[String], tx: &GovernanceTx) -> usize {
    admin_keys
        .iter()
        .filter(|k| {
            tx.approvals
                .iter()
                .any(|a| k.eq_ignore_ascii_case(&to_hex(a.admin_key.as_ref())))
        })
        .count()
}

/// One pass over every console-managed `ChainMember`: hands over the transaction of each
/// published proposal whose approvals reach the threshold. Returns one line per member
/// that is waiting (for logs).
pub async fn hand_over_once(
    client: &Client,
    signer: &Arc<dyn GovernanceSigner>,
) -> Result<Vec<String>, ProvisionError> {
    let members = Api::<ChainMember>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}")))
        .await
        .map_err(|e| classify("ChainMembers", &e))?;
    let mut waiting = Vec::new();
    for member in members {
        if let Err(e) = delete_if_removed(client, &member).await {
            waiting.push(format!("{}: {e}", member.name_any()));
        }
        match hand_over(client, signer, &member).await {
            Ok(None) => {}
            Ok(Some(note)) => waiting.push(note),
            Err(e) => waiting.push(format!("{}: {e}", member.name_any())),
        }
    }
    Ok(waiting)
}

async fn hand_over(
    client: &Client,
    signer: &Arc<dyn GovernanceSigner>,
    member: &ChainMember,
) -> Result<Option<String>, ProvisionError> {
    let Some(governance) = member.status.as_ref().and_then(|s| s.governance.as_ref()) else {
        return Ok(None);
    };
    let name = member.name_any();
    let secret_name = tx_secret_name(&name, &governance.proposal_hash);
    if member.spec.governance_tx_secret.as_deref() == Some(secret_name.as_str()) {
        return Ok(None);
    }
    let Some(network) = member
        .labels()
        .get(NETWORK_ID_LABEL)
        .and_then(|id| Uuid::parse_str(id).ok())
    else {
        return Ok(Some(format!("{name}: no {NETWORK_ID_LABEL} label")));
    };
    let proposal = Proposal::from_hex(&governance.proposal)
        .map_err(|e| ProvisionError::Rejected(format!("{name}: published proposal: {e}")))?;
    if to_hex(proposal.id().as_ref()) != governance.proposal_hash {
        return Ok(Some(format!(
            "{name}: the published proposal does not match its hash"
        )));
    }
    let approvals = signer
        .approve(network, &governance.approvers, &proposal)
        .await
        .map_err(ProvisionError::Unavailable)?;
    let tx = GovernanceTx::new(proposal, approvals);
    let counted = counted_approvals(&governance.approvers, &tx);
    let threshold = usize::try_from(governance.threshold).unwrap_or(usize::MAX);
    if counted < threshold || tx.approvals.is_empty() {
        return Ok(Some(format!(
            "{name}: {} of {} needs {threshold} approvals, has {counted} (organisations with \
             their own keys approve with `trellis consortium approve`)",
            governance.action, governance.node
        )));
    }
    let namespace = member.namespace().unwrap_or_default();
    let owner = member.controller_owner_ref(&()).map(|mut o| {
        // The Secret belongs to the member but does not control anything.
        o.controller = None;
        o
    });
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(member.labels().clone()),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            GOVERNANCE_TX_ENTRY.to_owned(),
            ByteString(tx.to_hex().into_bytes()),
        )])),
        ..Secret::default()
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {}
        // Content-addressed: an existing one holds a transaction for the same proposal.
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(classify(&format!("Secret {secret_name}"), &e)),
    }
    Api::<ChainMember>::namespaced(client.clone(), &namespace)
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"governanceTxSecret": secret_name}})),
        )
        .await
        .map_err(|e| classify(&format!("ChainMember {name}"), &e))?;
    tracing::info!(member = %name, proposal = %governance.proposal_hash, approvals = counted, "governance transaction handed to the operator");
    signer
        .record(
            network,
            "consortium.governance_handed_over",
            serde_json::json!({
                "chain_member": name,
                "action": governance.action,
                "node": governance.node,
                "proposal_hash": governance.proposal_hash,
                "sequence": governance.sequence,
                "approvals": counted,
                "threshold": threshold,
                "secret": secret_name,
            }),
        )
        .await;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_crd::{ChainNetworkSpec, ConsortiumMember};
    use trellis_node_types::{Signer as _, test_key};

    fn member(name: &str, nodes: i32) -> ConsortiumMember {
        ConsortiumMember {
            name: name.into(),
            admin_public_key: "ab".repeat(32),
            nodes,
        }
    }

    fn network(members: &[&str]) -> ChainNetwork {
        let mut spec = ChainNetworkSpec::new(NetworkMode::Consortium, "n:1.0.0");
        spec.members = members.iter().map(|m| member(m, 1)).collect();
        spec.validators_per_shard = i32::try_from(members.len()).unwrap();
        spec.beacon.validators = spec.validators_per_shard;
        let mut cr = ChainNetwork::new("alliance", spec);
        cr.metadata.namespace = Some("trellis-acme".into());
        cr.metadata.labels = Some(BTreeMap::from([(
            NETWORK_ID_LABEL.to_owned(),
            "n-1".to_owned(),
        )]));
        cr
    }

    #[test]
    fn later_members_become_chain_members_and_genesis_stays() {
        // A new network: every member is a genesis member.
        let mut new = network(&["a", "b", "c"]);
        assert!(split_members(&mut new, None).is_empty());
        assert_eq!(new.spec.members.len(), 3);

        let mut existing = network(&["a", "b", "c"]);
        existing.metadata.uid = Some("uid-of-alliance".into());
        let mut desired = network(&["a", "b", "c", "d"]);
        desired.spec.validators_per_shard = 4;
        desired.spec.beacon.validators = 4;
        let later = split_members(&mut desired, Some(&existing));
        assert_eq!(desired.spec.members.len(), 3);
        assert_eq!(
            desired.spec.validators_per_shard, 3,
            "genesis committees stay"
        );
        assert_eq!(desired.spec.beacon.validators, 3);
        assert_eq!(later.len(), 1);
        let d = &later[0];
        assert_eq!(d.metadata.name.as_deref(), Some("alliance-d"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("trellis-acme"));
        assert_eq!(d.spec.network.name, "alliance");
        assert_eq!(d.spec.organization, "d");
        assert_eq!(d.labels()[NETWORK_ID_LABEL], "n-1");
        assert_eq!(d.spec.governance_tx_secret, None);
        // Deleted with the network (garbage collection), never controlled by it.
        let owners = d.metadata.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (
                owners[0].kind.as_str(),
                owners[0].name.as_str(),
                owners[0].uid.as_str()
            ),
            ("ChainNetwork", "alliance", "uid-of-alliance")
        );
        assert_ne!(owners[0].controller, Some(true));
    }

    #[test]
    fn departed_members_are_found_and_founders_asked_to_leave() {
        let existing = network(&["a", "b", "c"]);
        let mut desired = network(&["a", "b", "c", "d", "e"]);
        let written = split_members(&mut desired, Some(&existing));
        assert_eq!(written.len(), 2);
        // The console removed "d": its ChainMember departs, "e" stays.
        let mut without_d = network(&["a", "b", "c", "e"]);
        let kept = split_members(&mut without_d, Some(&existing));
        let departed = departed_members(&written, &kept);
        assert_eq!(departed.len(), 1);
        assert_eq!(departed[0].name_any(), "alliance-d");
        assert!(departed_genesis_members(&without_d, &existing).is_empty());
        // A founder the console removed stays in the genesis list and gets a ChainMember
        // asking its removal, labelled so that the console keeps it once Removed.
        let mut without_b = network(&["a", "c", "e"]);
        assert_eq!(departed_genesis_members(&without_b, &existing), ["b"]);
        let members = split_members(&mut without_b, Some(&existing));
        let names: Vec<&str> = without_b
            .spec
            .members
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c"], "genesis membership unchanged");
        let b = members.iter().find(|m| m.spec.organization == "b").unwrap();
        assert_eq!(b.name_any(), "alliance-b");
        assert!(b.spec.remove);
        assert_eq!(b.labels()[FOUNDING_LABEL], "true");
        assert_eq!(b.labels()[NETWORK_ID_LABEL], "n-1");
        let e = members.iter().find(|m| m.spec.organization == "e").unwrap();
        assert!(!e.spec.remove && !e.labels().contains_key(FOUNDING_LABEL));
        assert!(departed_members(&members, &members).is_empty());
    }

    #[test]
    fn members_under_way_are_noted() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
        let existing = network(&["a"]);
        let mut desired = network(&["a", "d", "e"]);
        let mut later = split_members(&mut desired, Some(&existing));
        let condition = |reason: &str, message: &str| Condition {
            type_: "Admitted".into(),
            status: "False".into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        };
        assert_eq!(admission_notes(&later), None, "no status yet");
        later[0].status = Some(trellis_crd::ChainMemberStatus {
            conditions: vec![condition("AwaitingApprovals", "needs 2 approvals")],
            ..Default::default()
        });
        later[1].status = Some(trellis_crd::ChainMemberStatus {
            conditions: vec![condition("AdmittedOnChain", "provisioned")],
            ..Default::default()
        });
        assert_eq!(
            admission_notes(&later).as_deref(),
            Some("member d: AwaitingApprovals (needs 2 approvals)")
        );
    }

    #[test]
    fn approvals_count_per_member_validator() {
        let proposal = Proposal {
            chain_id: "c".into(),
            sequence: 1,
            action: trellis_node_types::GovernanceAction::Remove { name: "x".into() },
        };
        let key = |s: u64| to_hex(test_key(s).public_key().as_ref());
        let tx = GovernanceTx::signed(proposal, &[&test_key(1), &test_key(2)]);
        // Organisation 1 runs two validators: its one approval counts twice.
        let keys = vec![key(1), key(1), key(2), key(3)];
        assert_eq!(counted_approvals(&keys, &tx), 3);
        assert_eq!(
            tx_secret_name("alliance-d", &"f".repeat(64)),
            "alliance-d-gov-ffffffffffffffff"
        );
    }
}
