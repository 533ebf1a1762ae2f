//! The `ChainMember` reconciler: records where a consortium organisation stands.
//!
//! Admission and removal are governance transactions of the chain (contract:
//! `trellis-node-types::governance`), approved by more than 2/3 of the current members'
//! admin keys. Those keys are the organisations' own, custodied by the console (or by the
//! tenant), never by the operator: so the operator builds the proposal and the console
//! supplies the approvals; the operator assembles and submits the transaction, then
//! provisions the member's nodes (see `docs/operator.md`, "Member admission").
//!
//! `trellis-node` does not execute governance yet, so [`ChainClient::propose_member`]
//! cannot pass and a new member stays `Invited` with `Admitted=False/GovernancePending`.
//! Organisations listed in the network's own `spec.members` are members from genesis
//! and are `Admitted` at once.
//!
//! [`ChainClient::propose_member`]: crate::chain::ChainClient::propose_member

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::warn;
use trellis_crd::member::MemberPhase;
use trellis_crd::topology::{NetworkId, plan};
use trellis_crd::validate::{is_dns_label, is_hex_key};
use trellis_crd::{ChainMember, ChainMemberStatus, ChainNetwork, NetworkMode};

use crate::chain::{ChainError, CommitteeNodes, MemberProposal};
use crate::controller::{Context, Error};
use crate::endpoints::NodeRef;
use crate::status::{ConditionUpdate, set_condition};

/// Condition type of a member's admission.
pub const ADMITTED: &str = "Admitted";

/// What the member reconciler found about the network.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkLookup {
    NotFound,
    Found(Box<ChainNetwork>),
}

/// Computes a member's next status. Pure.
pub fn member_status(
    member: &ChainMember,
    network: &NetworkLookup,
    proposal: Option<&Result<(), ChainError>>,
    now: &Time,
) -> ChainMemberStatus {
    let mut status = member.status.clone().unwrap_or_default();
    let generation = member.metadata.generation;
    status.observed_generation = generation;
    let current = status.phase.unwrap_or(MemberPhase::Invited);
    let mut set =
        |phase: MemberPhase, admitted: &'static str, reason: &'static str, message: String| {
            // Phases only move the way governance can move them.
            let phase = if current.can_become(phase) {
                phase
            } else {
                current
            };
            status.phase = Some(phase);
            set_condition(
                &mut status.conditions,
                ConditionUpdate {
                    type_: ADMITTED,
                    status: admitted,
                    reason,
                    message,
                },
                generation,
                now,
            );
        };
    let spec = &member.spec;
    if !is_dns_label(&spec.organization) || !is_hex_key(&spec.admin_public_key) {
        set(
            current,
            "False",
            "InvalidSpec",
            "organization must be a DNS label and adminPublicKey 64 hex characters".to_owned(),
        );
        return status;
    }
    let network = match network {
        NetworkLookup::NotFound => {
            set(
                current,
                "False",
                "NetworkNotFound",
                format!("ChainNetwork {} does not exist", spec.network.name),
            );
            return status;
        }
        NetworkLookup::Found(n) => n,
    };
    if network.spec.mode != NetworkMode::Consortium {
        set(
            current,
            "False",
            "NotAConsortium",
            format!("ChainNetwork {} is a Public network", spec.network.name),
        );
        return status;
    }
    let genesis_member = network.spec.members.iter().any(|m| {
        m.name == spec.organization
            && m.admin_public_key
                .eq_ignore_ascii_case(&spec.admin_public_key)
    });
    if genesis_member && !spec.remove {
        set(
            MemberPhase::Admitted,
            "True",
            "GenesisMember",
            "listed in the network's spec.members, admitted at genesis".to_owned(),
        );
        return status;
    }
    let (target, verb) = if spec.remove {
        (MemberPhase::Removed, "removal")
    } else {
        (MemberPhase::Proposed, "admission")
    };
    match proposal {
        Some(Ok(())) => set(
            target,
            if spec.remove { "False" } else { "Unknown" },
            "ProposalSubmitted",
            format!("{verb} proposed on the beacon; waiting for the member threshold"),
        ),
        Some(Err(e)) => set(
            current,
            "False",
            "GovernancePending",
            format!("{verb} not proposed yet: {e}"),
        ),
        None => set(
            current,
            "False",
            "GovernancePending",
            format!("{verb} not proposed yet"),
        ),
    }
    status
}

/// Runs the member controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let members: Api<ChainMember> = match namespace.as_deref() {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    Controller::new(members, watcher::Config::default().any_semantic())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "member reconcile failed");
            }
        })
        .await;
}

fn error_policy(_member: Arc<ChainMember>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error(error.category());
    Action::requeue(Duration::from_secs(10))
}

/// One reconcile of one member.
pub async fn reconcile(member: Arc<ChainMember>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some(own_ns) = member.namespace() else {
        return Ok(Action::await_change());
    };
    let network_ns = member
        .spec
        .network
        .namespace
        .clone()
        .unwrap_or(own_ns.clone());
    let client: &Client = &ctx.client;
    let networks: Api<ChainNetwork> = Api::namespaced(client.clone(), &network_ns);
    let lookup = match networks.get_opt(&member.spec.network.name).await? {
        Some(n) => NetworkLookup::Found(Box::new(n)),
        None => NetworkLookup::NotFound,
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    // Ask the beacon only for a consortium network the member is not a genesis member of.
    let first = member_status(&member, &lookup, None, &now);
    let needs_proposal = first
        .conditions
        .iter()
        .any(|c| c.type_ == ADMITTED && c.reason == "GovernancePending");
    let next = if needs_proposal {
        let id = NetworkId::new(network_ns.clone(), member.spec.network.name.clone());
        // Contract v1 keeps the member registry on each committee's own chain; until the
        // beacon runs, shard 0's is the one that admits members.
        let registry = match &lookup {
            NetworkLookup::Found(network) => plan(&id, &network.spec).ok().and_then(|t| {
                t.shards().next().map(|shard| CommitteeNodes {
                    chain_id: t.genesis.chain_id.clone(),
                    nodes: shard
                        .nodes
                        .iter()
                        .map(|n| NodeRef {
                            namespace: network_ns.clone(),
                            committee: shard.name.clone(),
                            node: n.name.clone(),
                        })
                        .collect(),
                })
            }),
            NetworkLookup::NotFound => None,
        }
        .unwrap_or(CommitteeNodes {
            chain_id: id.chain_id(),
            nodes: Vec::new(),
        });
        let proposal = MemberProposal {
            organization: member.spec.organization.clone(),
            admin_public_key: member.spec.admin_public_key.clone(),
            remove: member.spec.remove,
        };
        let result = ctx.chain.propose_member(&registry, &proposal).await;
        member_status(&member, &lookup, Some(&result), &now)
    } else {
        first
    };
    if member.status.as_ref() != Some(&next) {
        let api: Api<ChainMember> = Api::namespaced(client.clone(), &own_ns);
        let patch = serde_json::json!({ "status": next });
        api.patch_status(
            &member.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_crd::member::{ChainMemberSpec, NetworkRef};
    use trellis_crd::{ChainNetworkSpec, ConsortiumMember};

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1000).unwrap())
    }

    fn member(org: &str, remove: bool) -> ChainMember {
        ChainMember::new(
            "m",
            ChainMemberSpec {
                network: NetworkRef {
                    name: "alpha".into(),
                    namespace: None,
                },
                organization: org.into(),
                admin_public_key: "ab".repeat(32),
                nodes: 1,
                node_key_secret: None,
                remove,
            },
        )
    }

    fn consortium() -> NetworkLookup {
        let mut spec = ChainNetworkSpec::new(NetworkMode::Consortium, "n:1");
        spec.members = vec![ConsortiumMember {
            name: "org-a".into(),
            admin_public_key: "AB".repeat(32),
            nodes: 1,
        }];
        NetworkLookup::Found(Box::new(ChainNetwork::new("alpha", spec)))
    }

    fn admitted(s: &ChainMemberStatus) -> (String, String) {
        let c = s.conditions.iter().find(|c| c.type_ == ADMITTED).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn genesis_members_are_admitted() {
        let s = member_status(&member("org-a", false), &consortium(), None, &now());
        assert_eq!(s.phase, Some(MemberPhase::Admitted));
        assert_eq!(admitted(&s), ("True".into(), "GenesisMember".into()));
    }

    #[test]
    fn new_members_wait_for_beacon_governance() {
        let err = Err(ChainError::NotImplemented("trellis_submitGovernance"));
        let s = member_status(&member("org-b", false), &consortium(), Some(&err), &now());
        assert_eq!(s.phase, Some(MemberPhase::Invited));
        assert_eq!(admitted(&s), ("False".into(), "GovernancePending".into()));
        let c = &s.conditions[0];
        assert!(
            c.message.contains("trellis_submitGovernance"),
            "{}",
            c.message
        );
        let s = member_status(
            &member("org-b", false),
            &consortium(),
            Some(&Ok(())),
            &now(),
        );
        assert_eq!(s.phase, Some(MemberPhase::Proposed));
    }

    #[test]
    fn missing_or_public_networks_are_reported() {
        let s = member_status(
            &member("org-b", false),
            &NetworkLookup::NotFound,
            None,
            &now(),
        );
        assert_eq!(admitted(&s).1, "NetworkNotFound");
        let public = NetworkLookup::Found(Box::new(ChainNetwork::new(
            "alpha",
            ChainNetworkSpec::new(NetworkMode::Public, "n:1"),
        )));
        let s = member_status(&member("org-b", false), &public, None, &now());
        assert_eq!(admitted(&s).1, "NotAConsortium");
    }

    #[test]
    fn phases_never_move_backwards() {
        let mut m = member("org-b", false);
        m.status = Some(ChainMemberStatus {
            phase: Some(MemberPhase::Removed),
            ..ChainMemberStatus::default()
        });
        let s = member_status(&m, &consortium(), Some(&Ok(())), &now());
        assert_eq!(
            s.phase,
            Some(MemberPhase::Removed),
            "Removed cannot become Proposed"
        );
    }

    #[test]
    fn invalid_member_spec() {
        let mut m = member("Org_B", false);
        m.spec.admin_public_key = "xyz".into();
        let s = member_status(&m, &consortium(), None, &now());
        assert_eq!(admitted(&s).1, "InvalidSpec");
    }
}
