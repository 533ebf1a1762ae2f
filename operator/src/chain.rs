//! The seam between the operator and the chain itself.
//!
//! Everything the operator needs from running nodes goes through [`ChainClient`]: the
//! beacon's view (epoch, shard count in force, health) and the system transactions the
//! operator signs with the network admin key (`SetShardCount`). Kubernetes objects tell
//! the operator whether pods are Ready; only this seam may say whether the *chain* is
//! healthy, so the `ChainHealthy` condition is never derived from pod state.
//!
//! `trellis-node`'s JSON-RPC (`trellis_status`, `trellis_submitGovernance`) is not
//! available yet, so the only implementation is [`NodeRpcPending`], which reports
//! [`ChainError::NotImplemented`]: the operator then keeps `ChainHealthy` Unknown and
//! holds every shard-count change at the beacon step (see `docs/operator.md`). An HTTP
//! implementation plugs in here without touching the reconciler.

use futures::future::BoxFuture;

/// Where the operator reaches a network's beacon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeaconEndpoint {
    pub chain_id: String,
    /// JSON-RPC URL of the beacon committee (its headless Service).
    pub rpc_url: String,
}

/// The beacon's view of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeaconView {
    pub epoch: u64,
    /// Shard count in force this epoch.
    pub shard_count: u16,
    /// A `SetShardCount` accepted and waiting for the next epoch boundary.
    pub pending_shard_count: Option<u16>,
    /// The beacon finalises blocks and has a quorum connected.
    pub healthy: bool,
    pub finalized_height: u64,
}

/// Why the chain could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The node RPC this call needs does not exist yet.
    #[error("the trellis-node RPC for {0} is not implemented yet")]
    NotImplemented(&'static str),
    /// The beacon did not answer (pods not running, network partition).
    #[error("beacon unreachable: {0}")]
    Unreachable(String),
    /// The beacon refused the transaction.
    #[error("beacon refused the transaction: {0}")]
    Refused(String),
}

/// Reads from and writes to a network's chain.
pub trait ChainClient: Send + Sync + 'static {
    /// The beacon's current view.
    fn beacon_view<'a>(
        &'a self,
        beacon: &'a BeaconEndpoint,
    ) -> BoxFuture<'a, Result<BeaconView, ChainError>>;

    /// Submits `SetShardCount(count)`, signed with the network admin key; it takes effect
    /// at the next epoch boundary.
    fn set_shard_count<'a>(
        &'a self,
        beacon: &'a BeaconEndpoint,
        count: u16,
    ) -> BoxFuture<'a, Result<(), ChainError>>;

    /// Proposes admitting (or, with `remove`, removing) a consortium member; the
    /// transaction passes once a threshold of current members' admin keys signed it.
    fn propose_member<'a>(
        &'a self,
        beacon: &'a BeaconEndpoint,
        proposal: &'a MemberProposal,
    ) -> BoxFuture<'a, Result<(), ChainError>>;
}

/// A governance proposal about one consortium member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberProposal {
    pub organization: String,
    pub admin_public_key: String,
    pub remove: bool,
}

/// The chain client until `trellis-node` serves its RPC: every call says so.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeRpcPending;

impl ChainClient for NodeRpcPending {
    fn beacon_view<'a>(
        &'a self,
        _beacon: &'a BeaconEndpoint,
    ) -> BoxFuture<'a, Result<BeaconView, ChainError>> {
        Box::pin(async { Err(ChainError::NotImplemented("trellis_status")) })
    }

    fn set_shard_count<'a>(
        &'a self,
        _beacon: &'a BeaconEndpoint,
        _count: u16,
    ) -> BoxFuture<'a, Result<(), ChainError>> {
        Box::pin(async { Err(ChainError::NotImplemented("trellis_submitGovernance")) })
    }

    fn propose_member<'a>(
        &'a self,
        _beacon: &'a BeaconEndpoint,
        _proposal: &'a MemberProposal,
    ) -> BoxFuture<'a, Result<(), ChainError>> {
        Box::pin(async { Err(ChainError::NotImplemented("trellis_submitGovernance")) })
    }
}
