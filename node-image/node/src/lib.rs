//! `trellis-node`: one committee's chain (simplex BFT over authenticated p2p, redb + JMT
//! state), its JSON-RPC API and its metrics.

pub mod chain;
pub mod cli_governance;
pub mod cli_system;
pub mod credits;
pub mod cross_shard;
pub mod engine;
pub mod epoch_switch;
pub mod follower;
pub mod gossip;
pub mod governance;
pub mod handoff;
pub mod leaders;
pub mod mempool;
pub mod metrics;
pub mod placement;
pub mod rejoin;
pub mod relay;
pub mod rpc;
pub mod rpc_beacon;
pub mod rpc_governance;
pub mod rpc_lookup;
pub mod rpc_route;
pub mod rpc_shard;
pub mod run;
pub mod telemetry;
