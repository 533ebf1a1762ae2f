//! The `ChainMember` reconciler: admits (and removes) a consortium organisation through
//! the chain's governance, then provisions (or removes) its validators.
//!
//! Admission and removal are governance transactions of the chain (contract:
//! `trellis-node-types::governance`), approved by more than 2/3 of the current members'
//! admin keys. Those keys are the organisations' own — custodied by the console or kept
//! by the organisation — never the operator's. So, per reconcile:
//!
//! 1. the member's node keys exist (generated once into `<committee>-keys`, or the
//!    member's own `spec.nodeKeySecret`);
//! 2. the registry committee's nodes are asked for the member registry
//!    (`trellis_getMembers`) and each validator's standing is read;
//! 3. the next proposal (admit the first absent validator, or remove the first member
//!    one) is **published** in `status.governance` for the key holders to approve;
//! 4. the transaction they assembled arrives in the Secret named by
//!    `spec.governanceTxSecret`; the operator checks that it approves exactly the
//!    published proposal with enough member signatures, submits it
//!    (`trellis_submitGovernance`) and follows it (`trellis_getGovernance`);
//! 5. once every validator is a member (the change applied at the epoch boundary),
//!    `Admitted=True` and the validators are provisioned; after a removal applied, they
//!    are deleted and the phase is `Removed`.
//!
//! Each step is a condition reason, and each change of reason a Kubernetes Event.
//! Organisations listed in the network's own `spec.members` are members from genesis
//! and are `Admitted` at once. Such a founder asked to leave (`spec.remove`) is removed
//! by the same steps over its validators in the network's shard 0, refused while the
//! committee left would not tolerate a fault or its validators are not the
//! StatefulSet's last pods (`trellis_crd::founders`); once it is `Removed` the network
//! controller drops those pods. The pure parts are [`admission`] (governance) and
//! [`nodes`] (the validators' objects).

pub mod admission;
pub mod nodes;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};
use trellis_crd::founders::{self, is_founder, retired_founders};
use trellis_crd::member::{GOVERNANCE_TX_ENTRY, MemberPhase};
use trellis_crd::topology::{Committee, NetworkId, plan};
use trellis_crd::validate::{is_dns_label, is_hex_key};
use trellis_crd::{
    ChainMember, ChainMemberStatus, ChainNetwork, MemberGovernance, MemberNodeStatus, NetworkMode,
};
use trellis_node_api::TxState;
use trellis_node_types::to_hex;

use crate::build;
use crate::chain::{ChainError, CommitteeNodes};
use crate::controller::{Context, Error};
use crate::endpoints::NodeRef;
use crate::keys;
use crate::status::{ConditionUpdate, set_condition, transitions};
use admission::{MemberNode, Step, TxRefusal};

/// Condition type of a member's admission.
pub const ADMITTED: &str = "Admitted";

/// Requeue while a step is under way (the chain moves without telling Kubernetes).
const STEP_REQUEUE: Duration = Duration::from_secs(5);
/// Requeue of a settled member (drift repair, registry check).
const SETTLED_REQUEUE: Duration = Duration::from_secs(60);

/// What the member reconciler found about the network.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkLookup {
    NotFound,
    Found(Box<ChainNetwork>),
}

/// Where one reconcile of a member ended: what its status is made from.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    InvalidSpec(String),
    NetworkNotFound(String),
    NotAConsortium(String),
    GenesisMember,
    /// Something outside the member stops the flow (`reason` says what; the message how
    /// to fix it): the network cannot be planned, keys or genesis are missing, the
    /// registry does not answer.
    Blocked {
        reason: &'static str,
        message: String,
    },
    /// The published proposal waits for the key holders' transaction.
    AwaitingApprovals {
        removal: bool,
        message: String,
    },
    /// The handed-over transaction was not submitted, or the chain refused it.
    TxRefused {
        removal: bool,
        refusal: TxRefusal,
    },
    /// Submitted; waiting for a block.
    Submitted {
        removal: bool,
        message: String,
    },
    /// Executed; waiting for the epoch boundary.
    Pending {
        removal: bool,
        message: String,
    },
    /// Every validator is a member and provisioned.
    Admitted(String),
    Removed(String),
}

impl Outcome {
    fn requeue(&self) -> Duration {
        match self {
            Outcome::Admitted(_) | Outcome::GenesisMember | Outcome::Removed(_) => SETTLED_REQUEUE,
            Outcome::InvalidSpec(_) | Outcome::NotAConsortium(_) | Outcome::NetworkNotFound(_) => {
                SETTLED_REQUEUE
            }
            _ => STEP_REQUEUE,
        }
    }
}

/// The chain side of a member's status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChainView {
    pub governance: Option<MemberGovernance>,
    pub nodes: Vec<MemberNodeStatus>,
}

/// Checks that need no chain and no cluster beyond the network: `Some` ends the
/// reconcile there.
pub fn precheck(member: &ChainMember, network: &NetworkLookup) -> Option<Outcome> {
    let spec = &member.spec;
    if !is_dns_label(&spec.organization) || !is_hex_key(&spec.admin_public_key) {
        return Some(Outcome::InvalidSpec(
            "organization must be a DNS label and adminPublicKey 64 hex characters".to_owned(),
        ));
    }
    let network = match network {
        NetworkLookup::NotFound => {
            return Some(Outcome::NetworkNotFound(format!(
                "ChainNetwork {} does not exist",
                spec.network.name
            )));
        }
        NetworkLookup::Found(n) => n,
    };
    if network.spec.mode != NetworkMode::Consortium {
        return Some(Outcome::NotAConsortium(format!(
            "ChainNetwork {} is a Public network",
            spec.network.name
        )));
    }
    // A founder asked to leave is removed through governance like any member; its
    // validators are the network's own (see `Seats::Founder`).
    (is_founder(member, network) && !spec.remove).then_some(Outcome::GenesisMember)
}

/// Every `ChainMember` in the cluster (members may live in any namespace).
pub async fn all_members(client: &kube::Client) -> Result<Vec<ChainMember>, Error> {
    let api: Api<ChainMember> = Api::all(client.clone());
    Ok(api.list(&kube::api::ListParams::default()).await?.items)
}

/// Computes a member's next status from the outcome. Pure.
pub fn member_status(
    member: &ChainMember,
    outcome: &Outcome,
    chain: ChainView,
    now: &Time,
) -> ChainMemberStatus {
    let mut status = member.status.clone().unwrap_or_default();
    let generation = member.metadata.generation;
    status.observed_generation = generation;
    let current = status.phase.unwrap_or(MemberPhase::Invited);
    let removal_word = |removal: bool, admission: &'static str, removing: &'static str| {
        if removal { removing } else { admission }
    };
    // An admitted member stays admitted while its removal is under way.
    let admitted_now = if current == MemberPhase::Admitted {
        "True"
    } else {
        "False"
    };
    let (phase, admitted, reason, message): (MemberPhase, &str, &str, String) = match outcome {
        Outcome::InvalidSpec(m) => (current, "False", "InvalidSpec", m.clone()),
        Outcome::NetworkNotFound(m) => (current, "False", "NetworkNotFound", m.clone()),
        Outcome::NotAConsortium(m) => (current, "False", "NotAConsortium", m.clone()),
        Outcome::GenesisMember => (
            MemberPhase::Admitted,
            "True",
            "GenesisMember",
            "listed in the network's spec.members, admitted at genesis".to_owned(),
        ),
        Outcome::Blocked { reason, message } => (
            current,
            if *reason == "RegistryUnreachable" {
                "Unknown"
            } else {
                admitted_now
            },
            reason,
            message.clone(),
        ),
        Outcome::AwaitingApprovals { removal, message } => (
            current,
            admitted_now,
            removal_word(*removal, "AwaitingApprovals", "RemovalAwaitingApprovals"),
            message.clone(),
        ),
        Outcome::TxRefused { refusal, .. } => (
            current,
            admitted_now,
            refusal.reason,
            refusal.message.clone(),
        ),
        Outcome::Submitted { removal, message } => (
            if *removal {
                current
            } else {
                MemberPhase::Proposed
            },
            admitted_now,
            removal_word(*removal, "GovernanceSubmitted", "RemovalSubmitted"),
            message.clone(),
        ),
        Outcome::Pending { removal, message } => (
            if *removal {
                current
            } else {
                MemberPhase::Proposed
            },
            admitted_now,
            removal_word(*removal, "AdmissionPending", "RemovalPending"),
            message.clone(),
        ),
        Outcome::Admitted(m) => (MemberPhase::Admitted, "True", "AdmittedOnChain", m.clone()),
        Outcome::Removed(m) => (MemberPhase::Removed, "False", "Removed", m.clone()),
    };
    // Phases only move the way governance can move them.
    status.phase = Some(if current.can_become(phase) {
        phase
    } else {
        current
    });
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
    status.governance = chain.governance;
    status.nodes = chain.nodes;
    status
}

/// Runs the member controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (members, sets): (Api<ChainMember>, Api<StatefulSet>) = match namespace.as_deref() {
        Some(ns) => (
            Api::namespaced(ctx.client.clone(), ns),
            Api::namespaced(ctx.client.clone(), ns),
        ),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    // The members' own StatefulSets (component `member`): one deleted or changed by hand
    // is applied again at once, not at the next requeue (up to 60 s later).
    let member_sets = watcher::Config::default().labels(&format!(
        "{}={},{}={}",
        crate::labels::MANAGED_BY,
        crate::labels::MANAGER,
        crate::labels::COMPONENT,
        nodes::MEMBER_COMPONENT
    ));
    Controller::new(members, watcher::Config::default().any_semantic())
        .owns(sets, member_sets)
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
    if member.meta().deletion_timestamp.is_some() {
        // The validators go with the member by garbage collection. Deleting a member
        // does not remove it from the chain: `spec.remove` does (docs/operator.md).
        return Ok(Action::await_change());
    }
    let network_ns = member
        .spec
        .network
        .namespace
        .clone()
        .unwrap_or(own_ns.clone());
    // The network from the network controller's cache when it holds it: a copy that
    // lags a spec change gives the validators the template the next reconcile replaces
    // (as a live read just before the change would). A network the cache lacks is read
    // live: `NetworkNotFound` is only ever said on a live read.
    let cached = ctx
        .caches()
        .and_then(|c| c.network(&network_ns, &member.spec.network.name));
    let network = match cached {
        Some(network) => Some(network),
        None => {
            let networks: Api<ChainNetwork> = Api::namespaced(ctx.client.clone(), &network_ns);
            networks.get_opt(&member.spec.network.name).await?
        }
    };
    let lookup = match network {
        Some(n) => NetworkLookup::Found(Box::new(n)),
        None => NetworkLookup::NotFound,
    };
    let (outcome, chain) = match (precheck(&member, &lookup), &lookup) {
        (Some(outcome), _) => (outcome, ChainView::default()),
        (None, NetworkLookup::Found(network)) => {
            govern(&member, network, &own_ns, &network_ns, &ctx).await?
        }
        (None, NetworkLookup::NotFound) => (
            Outcome::NetworkNotFound("the network disappeared".to_owned()),
            ChainView::default(),
        ),
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    // A founder is a member from genesis, also when its resource is new (one the
    // console writes to remove it).
    let founder = match &lookup {
        NetworkLookup::Found(network)
            if is_founder(&member, network)
                && member.status.as_ref().and_then(|s| s.phase).is_none() =>
        {
            let mut founder = (*member).clone();
            founder.status.get_or_insert_with(Default::default).phase = Some(MemberPhase::Admitted);
            Some(founder)
        }
        _ => None,
    };
    let next = member_status(founder.as_ref().unwrap_or(&member), &outcome, chain, &now);
    write_status(&ctx, &member, &own_ns, next).await?;
    Ok(Action::requeue(outcome.requeue()))
}

fn blocked(reason: &'static str, message: String) -> (Outcome, ChainView) {
    (Outcome::Blocked { reason, message }, ChainView::default())
}

/// Steps 1–5 of the module documentation for a member of `network`.
async fn govern(
    member: &ChainMember,
    network: &ChainNetwork,
    own_ns: &str,
    network_ns: &str,
    ctx: &Context,
) -> Result<(Outcome, ChainView), Error> {
    let spec = &member.spec;
    let removal = spec.remove;
    let network_name = network.name_any();
    let topology = match plan(&NetworkId::new(network_ns, &network_name), &network.spec) {
        Ok(t) => t,
        Err(e) => {
            return Ok(blocked(
                "NetworkInvalid",
                format!("ChainNetwork {network_name} is invalid: {e}"),
            ));
        }
    };
    // Contract v1 keeps the member registry on each committee's chain; until the beacon
    // runs, shard 0's is the one members join.
    let Some(shard) = topology.shards().next() else {
        return Ok(blocked(
            "NetworkInvalid",
            format!("ChainNetwork {network_name} has no shard"),
        ));
    };
    let registry_nodes = CommitteeNodes {
        chain_id: topology.genesis.chain_id.clone(),
        nodes: shard
            .nodes
            .iter()
            .map(|n| NodeRef {
                namespace: network_ns.to_owned(),
                committee: shard.name.clone(),
                node: n.name.clone(),
            })
            .collect(),
    };
    let seats = if is_founder(member, network) {
        match founder_keys(ctx, &spec.organization, shard, network_ns).await? {
            Ok(node_keys) => Seats::Founder {
                committee: shard.clone(),
                node_keys,
            },
            Err(message) => return Ok(blocked("NodeKeysUnavailable", message)),
        }
    } else {
        let count = u32::try_from(spec.nodes).unwrap_or(1).max(1);
        let committee = nodes::member_committee(&network_name, &spec.organization, count);
        match member_keys(ctx, member, own_ns, &committee).await? {
            Ok((key_secret, node_keys)) => Seats::Own {
                committee,
                key_secret,
                node_keys,
            },
            Err(message) => return Ok(blocked("NodeKeysUnavailable", message)),
        }
    };
    let (committee, node_keys, nodes_ns) = match &seats {
        Seats::Own {
            committee,
            node_keys,
            ..
        } => (committee, node_keys, own_ns),
        Seats::Founder {
            committee,
            node_keys,
        } => (committee, node_keys, network_ns),
    };
    let member_nodes: Vec<MemberNode> = committee
        .nodes
        .iter()
        .filter_map(|n| {
            let node = NodeRef {
                namespace: nodes_ns.to_owned(),
                committee: committee.name.clone(),
                node: n.name.clone(),
            };
            Some(MemberNode {
                name: n.name.clone(),
                node_key: node_keys.get(&n.name)?.clone(),
                p2p_address: ctx.chain.p2p_address(&node).unwrap_or_else(|| {
                    build::node_p2p_address(&n.name, &committee.name, nodes_ns, &ctx.options)
                }),
            })
        })
        .collect();

    let registry = match ctx.chain.registry(&registry_nodes).await {
        Ok(r) => r,
        Err(e) => {
            return Ok(blocked(
                "RegistryUnreachable",
                format!("the member registry of {} cannot be read: {e}", shard.name),
            ));
        }
    };
    let mut view = ChainView {
        governance: None,
        nodes: member_nodes
            .iter()
            .map(|n| MemberNodeStatus {
                name: n.name.clone(),
                node_key: n.node_key.clone(),
                chain: admission::standing(&n.node_key, &registry)
                    .label()
                    .to_owned(),
            })
            .collect(),
    };
    let step = match admission::next_step(&member_nodes, &spec.admin_public_key, &registry, removal)
    {
        Ok(step) => step,
        Err(message) => return Ok(blocked("InvalidProposal", message)),
    };
    let proposal = match (step, &seats) {
        (
            Step::Done,
            Seats::Own {
                committee,
                key_secret,
                node_keys,
            },
        ) if !removal => {
            let outcome = match provision(
                ctx, member, network, committee, own_ns, key_secret, node_keys,
            )
            .await?
            {
                Ok(message) => Outcome::Admitted(message),
                Err(message) => Outcome::Blocked {
                    reason: "ProvisioningBlocked",
                    message,
                },
            };
            return Ok((outcome, view));
        }
        // Only a founder asked to leave gets here (precheck).
        (Step::Done, Seats::Founder { .. }) if !removal => {
            return Ok((Outcome::GenesisMember, view));
        }
        (Step::Done, Seats::Own { key_secret, .. }) => {
            remove_validators(ctx, own_ns, committee).await?;
            let message = format!(
                "removed from the chain; validators {} deleted (key Secret {key_secret} and ledger claims kept)",
                names(committee)
            );
            return Ok((Outcome::Removed(message), view));
        }
        (Step::Done, Seats::Founder { .. }) => {
            // The network controller drops them from the StatefulSet once this member
            // is `Removed` (trellis_crd::founders::retire).
            let gone: Vec<&str> = member_nodes.iter().map(|n| n.name.as_str()).collect();
            let message = format!(
                "removed from the chain; the network drops validators {} from StatefulSet {} \
                 (key Secret entries and ledger claims kept)",
                gone.join(", "),
                committee.name
            );
            return Ok((Outcome::Removed(message), view));
        }
        (Step::Wait(message), _) => return Ok((Outcome::Pending { removal, message }, view)),
        (Step::Propose(proposal), Seats::Founder { .. }) => {
            if let Some(message) =
                founder_refusal(ctx, member, network, &topology, &member_nodes, &registry).await?
            {
                return Ok((message, view));
            }
            *proposal
        }
        (Step::Propose(proposal), Seats::Own { .. }) => *proposal,
    };

    let proposal_hash = to_hex(proposal.id().as_ref());
    let verb = if removal { "removal" } else { "admission" };
    let node = admission::proposal_node(&proposal).to_owned();
    let previous_submission = member
        .status
        .as_ref()
        .and_then(|s| s.governance.as_ref())
        .filter(|g| g.proposal_hash == proposal_hash)
        .and_then(|g| g.submitted_tx.clone());
    let mut governance = MemberGovernance {
        action: admission::action_name(&proposal).to_owned(),
        node: node.clone(),
        chain_id: proposal.chain_id.clone(),
        sequence: i64::try_from(proposal.sequence).unwrap_or(i64::MAX),
        proposal: proposal.to_hex(),
        proposal_hash: proposal_hash.clone(),
        threshold: i32::try_from(registry.threshold).unwrap_or(i32::MAX),
        approvers: registry
            .members
            .iter()
            .map(|m| m.admin_key.to_ascii_lowercase())
            .collect(),
        submitted_tx: previous_submission.clone(),
    };
    let awaiting = |view: ChainView, earlier: Option<String>| {
        let message = format!(
            "{verb} of {node} needs {} approvals of the {} members' admin keys for proposal \
             {proposal_hash} (status.governance.proposal, sequence {}); put the governance \
             transaction in a Secret (entry {GOVERNANCE_TX_ENTRY}) and name it in \
             spec.governanceTxSecret{}",
            registry.threshold,
            registry.members.len(),
            proposal.sequence,
            earlier.map(|e| format!(" ({e})")).unwrap_or_default()
        );
        (Outcome::AwaitingApprovals { removal, message }, view)
    };
    let Some(secret_name) = &spec.governance_tx_secret else {
        view.governance = Some(governance);
        return Ok(awaiting(view, None));
    };
    // Live: a Secret the key holders write, named in the spec (no watch selects it).
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), own_ns);
    let tx_hex = secrets.get_opt(secret_name).await?.and_then(|s| {
        s.data
            .and_then(|d| d.get(GOVERNANCE_TX_ENTRY).cloned())
            .and_then(|b| String::from_utf8(b.0).ok())
    });
    let refused = |refusal: TxRefusal, governance: MemberGovernance| {
        (
            Outcome::TxRefused { removal, refusal },
            ChainView {
                governance: Some(governance),
                nodes: view.nodes.clone(),
            },
        )
    };
    let Some(tx_hex) = tx_hex else {
        return Ok(refused(
            TxRefusal {
                reason: "GovernanceTxInvalid",
                message: format!(
                    "Secret {secret_name} in namespace {own_ns} does not exist or has no entry \
                     {GOVERNANCE_TX_ENTRY}"
                ),
            },
            governance,
        ));
    };
    let tx = match admission::check_tx(secret_name, &tx_hex, &proposal, &registry) {
        Ok(tx) => tx,
        // A transaction for a sequence the chain has passed is history (the previous
        // step's, or overtaken by another change): the current proposal needs approving.
        Err(refusal) if refusal.reason == "GovernanceTxStale" => {
            view.governance = Some(governance);
            return Ok(awaiting(view, Some(refusal.message)));
        }
        Err(refusal) => return Ok(refused(refusal, governance)),
    };
    let tx_hash = to_hex(tx.hash().as_ref());
    if previous_submission.as_deref() == Some(tx_hash.as_str()) {
        match ctx.chain.governance_status(&registry_nodes, &tx_hash).await {
            Ok(s) if s.state == TxState::Pending => {
                view.governance = Some(governance);
                let message = format!(
                    "{verb} of {node}: governance transaction {tx_hash} is in the governance \
                     pool, waiting for a block"
                );
                return Ok((Outcome::Submitted { removal, message }, view));
            }
            Ok(s) if s.state == TxState::Committed && s.success == Some(false) => {
                let refusal = TxRefusal {
                    reason: "GovernanceRefused",
                    message: format!(
                        "governance transaction {tx_hash} failed at height {}: {}",
                        s.height.unwrap_or_default(),
                        s.error.unwrap_or_default()
                    ),
                };
                return Ok(refused(refusal, governance));
            }
            Ok(s) if s.state == TxState::Committed => {
                view.governance = Some(governance);
                let message = format!(
                    "{verb} of {node}: governance transaction {tx_hash} executed at height {}; \
                     waiting for the registry",
                    s.height.unwrap_or_default()
                );
                return Ok((Outcome::Submitted { removal, message }, view));
            }
            // Unknown to the node asked (a restarted node's pool): send it again.
            _ => {}
        }
    }
    match ctx
        .chain
        .submit_governance(&registry_nodes, &tx.to_hex())
        .await
    {
        Ok(result) => {
            info!(member = %member.name_any(), tx = %result.hash, proposal = %proposal_hash, "governance transaction submitted");
            governance.submitted_tx = Some(result.hash.clone());
            view.governance = Some(governance);
            let message = format!(
                "{verb} of {node} submitted as governance transaction {} (proposal \
                 {proposal_hash}, sequence {}); waiting for it to be final",
                result.hash, result.sequence
            );
            Ok((Outcome::Submitted { removal, message }, view))
        }
        Err(ChainError::Refused(message)) => Ok(refused(
            TxRefusal {
                reason: "GovernanceRefused",
                message: format!("the chain refused the governance transaction: {message}"),
            },
            governance,
        )),
        Err(e) => {
            view.governance = Some(governance);
            Ok((
                Outcome::Blocked {
                    reason: "RegistryUnreachable",
                    message: format!("the governance transaction could not be submitted: {e}"),
                },
                view,
            ))
        }
    }
}

fn names(committee: &Committee) -> String {
    committee
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The validators a member's governance is about.
enum Seats {
    /// Its own, admitted after genesis: provisioned in its namespace once admitted,
    /// deleted once removed.
    Own {
        committee: Committee,
        key_secret: String,
        node_keys: BTreeMap<String, String>,
    },
    /// A founder's, in the network's shard 0 (`committee`, the registry committee;
    /// `node_keys` name the validators dealt to the founder): removed from the chain like
    /// any member's, then dropped from the StatefulSet by the network controller.
    Founder {
        committee: Committee,
        node_keys: BTreeMap<String, String>,
    },
}

/// The node public keys, by pod name, of `organisation`'s validators in `shard`, read
/// from the shard's key Secret in the network's namespace. `Ok(Err(message))`: it runs
/// none, or their keys cannot be read.
async fn founder_keys(
    ctx: &Context,
    organisation: &str,
    shard: &Committee,
    network_ns: &str,
) -> Result<Result<BTreeMap<String, String>, String>, Error> {
    let name = build::key_secret_name(shard);
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), network_ns)
        .get_opt(&name)
        .await?;
    let mut node_keys = BTreeMap::new();
    for node in shard
        .nodes
        .iter()
        .filter(|n| n.member.as_deref() == Some(organisation))
    {
        let entry = keys::node_entry(&node.name);
        let set = match keys::complete_keys(&name, secret.as_ref(), std::slice::from_ref(&entry)) {
            Ok(set) => set,
            Err(e) => return Ok(Err(e.to_string())),
        };
        match set.public_keys.get(&entry) {
            Some(key) if set.missing.is_empty() => {
                node_keys.insert(node.name.clone(), key.node.clone());
            }
            _ => {
                return Ok(Err(format!(
                    "Secret {name} in namespace {network_ns} has no entry {entry} (the key of \
                     founder {organisation}'s validator)"
                )));
            }
        }
    }
    if node_keys.is_empty() {
        return Ok(Err(format!(
            "founder {organisation} runs no validator of {}",
            shard.name
        )));
    }
    Ok(Ok(node_keys))
}

/// Why a founder's removal is not proposed, checked before each proposal: the committee
/// it leaves must still tolerate a fault, and its validators must be the last pods of
/// shard 0's StatefulSet after the founders that left before
/// (`trellis_crd::founders`).
async fn founder_refusal(
    ctx: &Context,
    member: &ChainMember,
    network: &ChainNetwork,
    topology: &trellis_crd::topology::Topology,
    nodes: &[MemberNode],
    registry: &trellis_node_api::MembersInfo,
) -> Result<Option<Outcome>, Error> {
    let organisation = &member.spec.organization;
    let leaving = nodes
        .iter()
        .filter(|n| {
            matches!(
                admission::standing(&n.node_key, registry),
                admission::Standing::Member { .. }
            )
        })
        .count();
    if let Some(message) = founders::quorum_refusal(organisation, registry.members.len(), leaving) {
        return Ok(Some(Outcome::Blocked {
            reason: "RemovalBelowQuorum",
            message,
        }));
    }
    let mut retired = retired_founders(network, &all_members(&ctx.client).await?);
    retired.retain(|o| o != organisation);
    let remaining = founders::retire(topology.clone(), &retired);
    Ok(founders::founder_exit(&remaining, organisation)
        .err()
        .map(|message| Outcome::Blocked {
            reason: "FounderNotRemovable",
            message,
        }))
}

/// The member's key Secret and its validators' node public keys by pod name. The
/// member's own Secret (`spec.nodeKeySecret`) must hold every entry; otherwise the
/// operator's Secret gets the missing ones (generated once, never replaced).
/// `Ok(Err(message))`: the keys cannot be used, and why.
async fn member_keys(
    ctx: &Context,
    member: &ChainMember,
    namespace: &str,
    committee: &Committee,
) -> Result<Result<(String, BTreeMap<String, String>), String>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let entries: Vec<String> = committee
        .nodes
        .iter()
        .map(|n| keys::node_entry(&n.name))
        .collect();
    let own = member.spec.node_key_secret.clone();
    let name = own
        .clone()
        .unwrap_or_else(|| build::key_secret_name(committee));
    // Live, not from a cache: this read decides which keys are generated (once, never
    // again), and a member's key Secrets are unlabelled or named by their users, so no
    // watch selects them. A member reconciles every 5-60 s, not on every pod event.
    let existing = api.get_opt(&name).await?;
    let set = match keys::complete_keys(&name, existing.as_ref(), &entries) {
        Ok(set) => set,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if !set.missing.is_empty() {
        if own.is_some() {
            let missing: Vec<&str> = set.missing.keys().map(String::as_str).collect();
            return Ok(Err(format!(
                "Secret {name} (spec.nodeKeySecret) in namespace {namespace} lacks the key \
                 entries {} (trellis-node keygen files)",
                missing.join(", ")
            )));
        }
        let Some(owner) = member.controller_owner_ref(&()) else {
            return Ok(Err("the ChainMember has no uid yet".to_owned()));
        };
        let data = keys::secret_data(&set.missing);
        match existing {
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.to_owned()),
                        owner_references: Some(vec![owner]),
                        ..ObjectMeta::default()
                    },
                    type_: Some("Opaque".to_owned()),
                    data: Some(data),
                    ..Secret::default()
                };
                api.create(&PostParams::default(), &secret).await?;
            }
            Some(secret) => {
                // Entries are only added, guarded by resourceVersion.
                let patch = serde_json::json!({
                    "metadata": {"resourceVersion": secret.metadata.resource_version},
                    "data": data,
                });
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
        }
        info!(secret = %name, namespace, added = set.missing.len(), "generated member node keys");
    }
    let by_pod = committee
        .nodes
        .iter()
        .filter_map(|n| {
            set.public_keys
                .get(&keys::node_entry(&n.name))
                .map(|k| (n.name.clone(), k.node.clone()))
        })
        .collect();
    Ok(Ok((name, by_pod)))
}

/// Applies the admitted member's validators. `Ok(Err(message))`: something they need is
/// missing (the network's genesis).
#[allow(clippy::too_many_arguments)]
async fn provision(
    ctx: &Context,
    member: &ChainMember,
    network: &ChainNetwork,
    committee: &Committee,
    namespace: &str,
    key_secret: &str,
    node_keys: &BTreeMap<String, String>,
) -> Result<Result<String, String>, Error> {
    let network_ns = network.namespace().unwrap_or_default();
    let genesis_name = build::genesis_name(&network.name_any());
    let entry = crate::genesis::ENTRY;
    // From the network controller's cache when it holds it (a genesis never changes);
    // else live.
    let cached = ctx
        .caches()
        .and_then(|c| c.genesis(&network_ns, &genesis_name));
    let genesis = match cached {
        Some(genesis) => Some(genesis),
        None => {
            Api::<ConfigMap>::namespaced(ctx.client.clone(), &network_ns)
                .get_opt(&genesis_name)
                .await?
        }
    };
    let genesis = genesis.and_then(|g| g.data.and_then(|mut d| d.remove(entry)));
    let Some(genesis) = genesis else {
        return Ok(Err(format!(
            "admitted on chain, but ConfigMap {genesis_name} in namespace {network_ns} has no \
             entry {entry} to start the validators from"
        )));
    };
    let Some(owner) = member.controller_owner_ref(&()) else {
        return Ok(Err("the ChainMember has no uid yet".to_owned()));
    };
    let children = nodes::member_children(&nodes::MemberBuild {
        network,
        committee,
        namespace,
        owner,
        genesis_entry: entry,
        genesis: &genesis,
        node_keys,
        key_secret,
        options: &ctx.options,
    })?;
    crate::controller::apply(&ctx.client, namespace, &[children.service]).await?;
    crate::controller::apply(&ctx.client, namespace, &[children.config_map]).await?;
    if let Some(pdb) = children.pod_disruption_budget {
        crate::controller::apply(&ctx.client, namespace, &[pdb]).await?;
    }
    crate::controller::apply(&ctx.client, namespace, &[children.stateful_set]).await?;
    Ok(Ok(format!(
        "admitted on chain; validators {} provisioned (StatefulSet {} in namespace {namespace})",
        names(committee),
        committee.name
    )))
}

/// Deletes a removed member's validators (StatefulSet, Service, ConfigMap, PDB). Keys and
/// ledger claims stay, as for every validator.
async fn remove_validators(
    ctx: &Context,
    namespace: &str,
    committee: &Committee,
) -> Result<(), Error> {
    async fn delete<K>(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    delete::<StatefulSet>(ctx, namespace, &committee.name).await?;
    delete::<Service>(ctx, namespace, &committee.name).await?;
    delete::<ConfigMap>(ctx, namespace, &build::config_map_name(committee)).await?;
    delete::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(ctx, namespace, &committee.name)
        .await?;
    Ok(())
}

/// Writes the status when it changed (absent fields cleared), and publishes an Event per
/// change of the `Admitted` condition's status or reason.
async fn write_status(
    ctx: &Context,
    member: &ChainMember,
    namespace: &str,
    next: ChainMemberStatus,
) -> Result<(), Error> {
    let previous = member.status.clone().unwrap_or_default();
    if previous == next {
        return Ok(());
    }
    let mut body = serde_json::to_value(&next).unwrap_or_default();
    if let Some(object) = body.as_object_mut() {
        // A merge patch keeps what it does not mention: clear what is gone explicitly.
        object
            .entry("governance")
            .or_insert(serde_json::Value::Null);
        object
            .entry("nodes")
            .or_insert(serde_json::Value::Array(Vec::new()));
    }
    let api: Api<ChainMember> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch_status(
        &member.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({ "status": body })),
    )
    .await?;
    let reference = member.object_ref(&());
    for transition in transitions(&previous.conditions, &next.conditions) {
        let warning = transition.reason.starts_with("GovernanceTx")
            || matches!(
                transition.reason.as_str(),
                "GovernanceRefused"
                    | "InvalidSpec"
                    | "RegistryUnreachable"
                    | "NodeKeysUnavailable"
                    | "RemovalBelowQuorum"
                    | "FounderNotRemovable"
            );
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: transition.reason.clone(),
            note: Some(truncate_note(&format!(
                "{}={}: {}",
                transition.type_, transition.status, transition.message
            ))),
            action: "Govern".to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, "could not publish event");
        }
    }
    Ok(())
}

/// Event notes are limited to 1 kB by the apiserver.
fn truncate_note(note: &str) -> String {
    if note.len() <= 1000 {
        return note.to_owned();
    }
    let mut end = 1000;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &note[..end])
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
                governance_tx_secret: None,
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

    fn status(m: &ChainMember, outcome: &Outcome) -> ChainMemberStatus {
        member_status(m, outcome, ChainView::default(), &now())
    }

    #[test]
    fn genesis_members_are_admitted() {
        let m = member("org-a", false);
        let outcome = precheck(&m, &consortium()).unwrap();
        let s = status(&m, &outcome);
        assert_eq!(s.phase, Some(MemberPhase::Admitted));
        assert_eq!(admitted(&s), ("True".into(), "GenesisMember".into()));
        // Asked to leave, a founder goes through governance like any member.
        assert_eq!(precheck(&member("org-a", true), &consortium()), None);
    }

    #[test]
    fn retired_founders_are_those_removed_on_chain() {
        let NetworkLookup::Found(mut network) = consortium() else {
            unreachable!()
        };
        network.metadata.namespace = Some("ns".into());
        let removed = |org: &str, phase: MemberPhase| {
            let mut m = member(org, true);
            m.metadata.namespace = Some("ns".into());
            m.status = Some(ChainMemberStatus {
                phase: Some(phase),
                ..ChainMemberStatus::default()
            });
            m
        };
        let founder_gone = removed("org-a", MemberPhase::Removed);
        assert_eq!(
            retired_founders(&network, std::slice::from_ref(&founder_gone)),
            ["org-a"]
        );
        // Still on chain, a later member, another network's: not retired.
        assert!(retired_founders(&network, &[removed("org-a", MemberPhase::Admitted)]).is_empty());
        assert!(retired_founders(&network, &[removed("org-b", MemberPhase::Removed)]).is_empty());
        let mut elsewhere = founder_gone;
        elsewhere.spec.network.namespace = Some("other".into());
        assert!(retired_founders(&network, &[elsewhere]).is_empty());
    }

    #[test]
    fn admission_moves_through_its_steps() {
        let m = member("org-b", false);
        assert_eq!(precheck(&m, &consortium()), None);
        let awaiting = Outcome::AwaitingApprovals {
            removal: false,
            message: "needs 3 approvals".into(),
        };
        let s = status(&m, &awaiting);
        assert_eq!(s.phase, Some(MemberPhase::Invited));
        assert_eq!(admitted(&s), ("False".into(), "AwaitingApprovals".into()));
        let refused = Outcome::TxRefused {
            removal: false,
            refusal: TxRefusal {
                reason: "GovernanceRefused",
                message: "bad signature".into(),
            },
        };
        assert_eq!(admitted(&status(&m, &refused)).1, "GovernanceRefused");
        let submitted = Outcome::Submitted {
            removal: false,
            message: "sent".into(),
        };
        let s = status(&m, &submitted);
        assert_eq!(s.phase, Some(MemberPhase::Proposed));
        assert_eq!(admitted(&s).1, "GovernanceSubmitted");
        let mut m = m;
        m.status = Some(s);
        let s = status(&m, &Outcome::Admitted("provisioned".into()));
        assert_eq!(s.phase, Some(MemberPhase::Admitted));
        assert_eq!(admitted(&s), ("True".into(), "AdmittedOnChain".into()));
        // Removal under way keeps it admitted; done, it is Removed.
        m.status = Some(s);
        let removing = Outcome::AwaitingApprovals {
            removal: true,
            message: "needs approvals".into(),
        };
        let s = status(&m, &removing);
        assert_eq!(s.phase, Some(MemberPhase::Admitted));
        assert_eq!(
            admitted(&s),
            ("True".into(), "RemovalAwaitingApprovals".into())
        );
        let s = status(&m, &Outcome::Removed("gone".into()));
        assert_eq!(s.phase, Some(MemberPhase::Removed));
        assert_eq!(admitted(&s), ("False".into(), "Removed".into()));
    }

    #[test]
    fn missing_or_public_networks_are_reported() {
        let m = member("org-b", false);
        let s = status(&m, &precheck(&m, &NetworkLookup::NotFound).unwrap());
        assert_eq!(admitted(&s).1, "NetworkNotFound");
        let public = NetworkLookup::Found(Box::new(ChainNetwork::new(
            "alpha",
            ChainNetworkSpec::new(NetworkMode::Public, "n:1"),
        )));
        let s = status(&m, &precheck(&m, &public).unwrap());
        assert_eq!(admitted(&s).1, "NotAConsortium");
    }

    #[test]
    fn phases_never_move_backwards() {
        let mut m = member("org-b", false);
        m.status = Some(ChainMemberStatus {
            phase: Some(MemberPhase::Removed),
            ..ChainMemberStatus::default()
        });
        let s = status(
            &m,
            &Outcome::Submitted {
                removal: false,
                message: String::new(),
            },
        );
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
        let s = status(&m, &precheck(&m, &consortium()).unwrap());
        assert_eq!(admitted(&s).1, "InvalidSpec");
    }

    #[test]
    fn event_notes_fit_the_apiserver_limit() {
        assert_eq!(truncate_note("short"), "short");
        assert!(truncate_note(&"é".repeat(900)).len() <= 1004);
    }
}
