//! The boundary between the console (desired state, in its database) and whatever makes
//! networks exist (Kubernetes via the operator, or local `trellis-node` processes).
//!
//! # Contract
//!
//! The console is level-based, like a Kubernetes controller: it always hands the
//! provisioner the **complete** desired state of a network ([`DesiredNetwork`]), never a
//! delta, together with a `generation` that grows by one on every change of the spec.
//!
//! - [`Provisioner::apply`] makes the desired state the one being realised, and returns
//!   once it is durably *accepted* (the ChainNetwork resource is written; the local
//!   supervisor has recorded the plan) — not once nodes are running. It must be
//!   idempotent (applying the same generation twice changes nothing) and must ignore a
//!   generation lower than one it has already accepted, because the console retries
//!   failed applies from a background loop and a retry can race a newer change.
//! - [`Provisioner::observe`] reports what exists now, or `None` when nothing has been
//!   provisioned for the network. It never changes anything.
//! - [`Provisioner::delete`] removes the network's running parts; ledger data is kept
//!   when `retain_ledger` is true. Deleting something that does not exist succeeds.
//! - Errors are [`ProvisionError::Unavailable`] (transient: the console keeps the
//!   desired state and retries) or [`ProvisionError::Rejected`] (the desired state cannot
//!   be realised as asked, e.g. over the tenant's quota: retrying will not help until the
//!   spec changes). Their text is shown to the tenant, so it must not contain secrets.
//!
//! Every network carries its tenant's id and slug so that a provisioner can isolate
//! tenants (the `kube` provisioner uses one namespace per tenant, `trellis-<slug>`).
//!
//! # Implementations
//!
//! - [`Unattached`]: provisions nothing and says so: `apply` fails with `Unavailable`,
//!   so networks stay `Pending` with an explicit message and are applied by the retry
//!   loop once a real provisioner is configured.
//! - [`kube::KubeProvisioner`]: writes `ChainNetwork` resources (one namespace per
//!   tenant) that the operator reconciles.
//! - [`local::LocalProvisioner`]: runs the networks as `trellis-node` processes on
//!   loopback addresses (the `up` command's provisioner).

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::networks::spec::NetworkSpec;

pub mod kube;
pub mod kube_governance;
pub mod kube_treasury;
pub mod local;

/// Identifies one network for a provisioner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkRef {
    pub tenant_id: Uuid,
    /// DNS-label form of the tenant's name; stable for the tenant's life.
    pub tenant_slug: String,
    pub network_id: Uuid,
    /// DNS label, unique within the tenant.
    pub name: String,
}

/// The complete desired state of one network at one generation.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredNetwork {
    pub network: NetworkRef,
    pub generation: i64,
    pub spec: NetworkSpec,
    /// What the tenant's plan allows in all, for a provisioner that enforces it in the
    /// infrastructure too (`kube`: a ResourceQuota on the tenant's namespace). `None`:
    /// not known (the console's own checks still apply).
    pub quota: Option<TenantQuota>,
}

/// A tenant's plan limits, as the infrastructure can enforce them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantQuota {
    pub plan: String,
    pub networks: u64,
    /// Validator nodes (pods, ledger claims) across the tenant's networks.
    pub nodes: u64,
    /// Ledger storage across the tenant's networks, GiB.
    pub storage_gib: u64,
}

/// The provisioner's coarse view of a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ObservedPhase {
    Provisioning,
    Running,
    Scaling,
    Upgrading,
    Paused,
    Stopped,
    Degraded,
    Failed,
}

/// One shard as last observed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShardStatus {
    pub id: u32,
    pub ready_validators: u32,
    pub finalized_height: u64,
    pub tx_per_second: f64,
    pub mempool_depth: u64,
}

/// What exists now, as reported by the provisioner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ObservedStatus {
    /// The generation of the desired state this status reflects.
    pub observed_generation: i64,
    pub phase: ObservedPhase,
    pub shard_count: u32,
    pub epoch: u64,
    pub shards: Vec<ShardStatus>,
    /// Client JSON-RPC endpoints.
    pub rpc_endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A chain governance proposal waiting for the consortium members' approvals (published
/// by the provisioner: the operator's `ChainMember` status in `kube` mode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GovernanceProposal {
    /// `Admit` or `Remove`.
    pub action: String,
    /// The on-chain member (validator) the proposal is about.
    pub node: String,
    pub chain_id: String,
    /// The chain registry's governance sequence the proposal carries.
    pub sequence: u64,
    /// Hex encoding of the proposal: sign it with `trellis-node governance sign
    /// --key-file KEYS --proposal HEX` (or `trellis consortium approve`).
    pub proposal: String,
    /// Hex SHA-256 of the proposal.
    pub proposal_hash: String,
    /// Approvals the chain needs (more than 2/3 of its members).
    pub threshold: u32,
    /// Hex admin keys of the chain's current members, one per member validator.
    pub approvers: Vec<String>,
    /// The governance transaction submitted for it, once submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_tx: Option<String>,
}

/// Where a consortium member stands on chain, as the provisioner sees it (`kube`: the
/// `ChainMember`'s phase, `Admitted` condition and published proposal).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MemberChainState {
    /// `Invited`, `Proposed`, `Admitted`, `Rejected` or `Removed`.
    pub phase: Option<String>,
    /// The step it is at (the `Admitted` condition's reason, e.g. `AwaitingApprovals`,
    /// `GovernanceSubmitted`, `AdmissionPending`, `AdmittedOnChain`).
    pub reason: Option<String>,
    pub message: Option<String>,
    /// The proposal waiting for approvals, if any.
    pub proposal: Option<GovernanceProposal>,
}

/// A node JSON-RPC endpoint the console may forward a tenant's requests to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcEndpoint {
    /// The shard it serves, when the provisioner knows (`None`: any).
    pub shard: Option<u32>,
    /// `http://host:port/rpc`.
    pub url: String,
}

/// One shard's load as its validators' metrics report it (the highest figure any of
/// them reports): the built-in autoscaler's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardReading {
    /// `trellis_txs_committed_total`: transactions in finalized blocks (a counter).
    pub txs_committed: u64,
    /// `trellis_mempool_depth`: the deepest mempool of the shard's validators.
    pub mempool_depth: u64,
}

/// What the built-in autoscaler reads of a network ([`Provisioner::network_load`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkLoad {
    /// Shards in service: the count the beacon's map has in force.
    pub in_service: u16,
    /// A shard-count change is under way (pending at the beacon, resharding, or shards
    /// still draining): the autoscaler holds until it is done.
    pub scaling: bool,
    /// Each in-service shard's reading, or why there is none (no validator answered).
    pub shards: Vec<(u16, Result<ShardReading, String>)>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    /// Transient; the console retries.
    #[error("{0}")]
    Unavailable(String),
    /// The desired state cannot be realised as asked.
    #[error("{0}")]
    Rejected(String),
}

pub trait Provisioner: Send + Sync + 'static {
    /// A short name for logs, metrics and `/readyz` (`kube`, `local`, `unattached`).
    fn kind(&self) -> &'static str;

    fn apply<'a>(
        &'a self,
        desired: &'a DesiredNetwork,
    ) -> BoxFuture<'a, Result<(), ProvisionError>>;

    fn observe<'a>(
        &'a self,
        network: &'a NetworkRef,
    ) -> BoxFuture<'a, Result<Option<ObservedStatus>, ProvisionError>>;

    fn delete<'a>(
        &'a self,
        network: &'a NetworkRef,
        retain_ledger: bool,
    ) -> BoxFuture<'a, Result<(), ProvisionError>>;

    /// Where the network's node JSON-RPC answers, for the console's RPC proxy. Read-only.
    /// By default the endpoints the last observation reports (the `kube` provisioner's
    /// client Service); the local provisioner answers from its records.
    fn rpc_endpoints<'a>(
        &'a self,
        network: &'a NetworkRef,
    ) -> BoxFuture<'a, Result<Vec<RpcEndpoint>, ProvisionError>> {
        Box::pin(async move {
            Ok(self
                .observe(network)
                .await?
                .map(|status| {
                    status
                        .rpc_endpoints
                        .into_iter()
                        .map(|url| RpcEndpoint { shard: None, url })
                        .collect()
                })
                .unwrap_or_default())
        })
    }

    /// The per-shard load of `network` for the console's built-in autoscaler. `None`
    /// (the default): this provisioner leaves autoscaling to its platform (`kube`: the
    /// operator autoscales the `ChainNetwork` itself) or the network is not sharded.
    fn network_load<'a>(
        &'a self,
        _network: &'a NetworkRef,
    ) -> BoxFuture<'a, Result<Option<NetworkLoad>, ProvisionError>> {
        Box::pin(async { Ok(None) })
    }

    /// Where the consortium member `organisation` of `network` stands on chain, with the
    /// governance proposal waiting for approvals (`None`: the provisioner does not track
    /// it). Read-only.
    fn member_governance<'a>(
        &'a self,
        _network: &'a NetworkRef,
        _organisation: &'a str,
    ) -> BoxFuture<'a, Result<Option<MemberChainState>, ProvisionError>> {
        Box::pin(async { Ok(None) })
    }

    /// Why the founding member `organisation` cannot leave `network` on this provisioner
    /// (a problem code and its message), asked before its removal is approved. `None`
    /// (the default): nothing here stops it. Read-only.
    fn founder_removal_refusal<'a>(
        &'a self,
        _network: &'a NetworkRef,
        _organisation: &'a str,
    ) -> BoxFuture<'a, Result<Option<(&'static str, String)>, ProvisionError>> {
        Box::pin(async { Ok(None) })
    }
}

/// No provisioner configured: desired state is recorded, nothing is provisioned, and
/// every network says so in its status.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unattached;

pub const UNATTACHED_MESSAGE: &str = "no provisioner is attached to this console; the desired state is recorded \
     and will be applied when the console runs with a provisioner";

impl Provisioner for Unattached {
    fn kind(&self) -> &'static str {
        "unattached"
    }

    fn apply<'a>(
        &'a self,
        _desired: &'a DesiredNetwork,
    ) -> BoxFuture<'a, Result<(), ProvisionError>> {
        Box::pin(async { Err(ProvisionError::Unavailable(UNATTACHED_MESSAGE.to_string())) })
    }

    fn observe<'a>(
        &'a self,
        _network: &'a NetworkRef,
    ) -> BoxFuture<'a, Result<Option<ObservedStatus>, ProvisionError>> {
        Box::pin(async { Ok(None) })
    }

    fn delete<'a>(
        &'a self,
        _network: &'a NetworkRef,
        _retain_ledger: bool,
    ) -> BoxFuture<'a, Result<(), ProvisionError>> {
        // Nothing was ever provisioned through it, so there is nothing to remove.
        Box::pin(async { Ok(()) })
    }
}

/// Signs a consortium chain's governance proposals with the organisation keys the
/// console custodies; implemented by [`crate::governance::CustodySigner`]. A provisioner
/// that sends governance transactions itself (the local one) is handed one.
pub trait GovernanceSigner: Send + Sync + 'static {
    /// Approvals of `proposal` by those of `admin_keys` (hex public keys of the chain's
    /// current members): signed with the private keys the console holds for admitted
    /// members of `network`, plus the approvals organisations that keep their own keys
    /// posted for this very proposal.
    fn approve<'a>(
        &'a self,
        network: Uuid,
        admin_keys: &'a [String],
        proposal: &'a trellis_node_types::Proposal,
    ) -> BoxFuture<'a, Result<Vec<trellis_node_types::Approval>, String>>;

    /// Writes a governance step of `network` to the audit log of the tenant owning it.
    fn record<'a>(
        &'a self,
        _network: Uuid,
        _action: &'a str,
        _details: serde_json::Value,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}
