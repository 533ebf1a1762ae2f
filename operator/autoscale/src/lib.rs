//! The built-in shard autoscaler, pure: metrics text in, a shard-count decision out.
//!
//! One implementation for both places that scale a network on load: the operator (a
//! `ChainNetwork` with `spec.autoscaling.enabled`, `operator/src/scaling.rs`) and the
//! console's local provisioner (a public network with `autoscaling.enabled`,
//! `console-api/src/networks/autoscale.rs`). Each reads every in-service shard's nodes'
//! `/metrics` ([`scrape`]), turns the committed-transactions counter into a rate
//! ([`LoadHistory::rate`]) and asks [`decide`]; what it does with a decision (patch the
//! resource, or change the network's spec through the console) is its own.

pub mod policy;
pub mod scrape;

pub use policy::{
    AutoscalerState, Decision, LoadHistory, MIN_RATE_INTERVAL_SECONDS, Policy, Sample, ShardLoad,
    decide, recommend,
};
