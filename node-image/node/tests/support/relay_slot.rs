//! The simulations' credit relay endpoint: a node as the relay sees it, answering from its
//! state (the same `NodeRelay` the RPC methods use) while it runs and unreachable while it
//! is down. Included by the deterministic simulations with `#[path]`; the process tests
//! do not need it.

use std::sync::{Arc, Mutex};
use trellis_node::chain::NodeState;
use trellis_node::relay::{
    BeaconPage, CertifiedBlock, OutboxRequest, RelayError, RelayServer, SnapshotRequest,
};
use trellis_node::rpc_shard::NodeRelay;
use trellis_node_state::{MemKv, OutboxPage, TableSnapshot};
use trellis_node_types::{Digest, Tx};

/// A simulated node's relay endpoint.
#[derive(Default)]
pub struct Slot(Mutex<Option<Arc<Mutex<NodeState<MemKv>>>>>);

impl Slot {
    /// The node runs on `state`: the relay answers from it.
    pub fn up(&self, state: Arc<Mutex<NodeState<MemKv>>>) {
        *self.0.lock().unwrap() = Some(state);
    }

    /// The node is down: the relay finds it unreachable.
    pub fn down(&self) {
        *self.0.lock().unwrap() = None;
    }

    fn server(&self) -> Result<NodeRelay<MemKv>, RelayError> {
        self.0
            .lock()
            .unwrap()
            .clone()
            .map(NodeRelay)
            .ok_or_else(|| RelayError::Unreachable {
                target: "a simulated node".into(),
                last: "down".into(),
            })
    }
}

impl RelayServer for Slot {
    fn beacon_blocks(&self, from: u64, limit: u32) -> Result<BeaconPage, RelayError> {
        self.server()?.beacon_blocks(from, limit)
    }
    fn certified_block(&self, height: Option<u64>) -> Result<CertifiedBlock, RelayError> {
        self.server()?.certified_block(height)
    }
    fn outbox_heads(
        &self,
        sources: &[u8],
        dests: &[u8],
        height: u64,
    ) -> Result<Vec<(u8, u8, u64)>, RelayError> {
        self.server()?.outbox_heads(sources, dests, height)
    }
    fn outbox(&self, request: &OutboxRequest) -> Result<OutboxPage, RelayError> {
        self.server()?.outbox(request)
    }
    fn table_snapshot(&self, request: &SnapshotRequest) -> Result<TableSnapshot, RelayError> {
        self.server()?.table_snapshot(request)
    }
    fn submit_tx(&self, tx: Tx) -> Result<Digest, RelayError> {
        self.server()?.submit_tx(tx)
    }
}
