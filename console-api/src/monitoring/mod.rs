//! Monitoring: a collector scrapes every node endpoint the provisioner reports
//! (`/metrics` and `trellis_status`), folds what it sees into per-shard samples and
//! 1-minute / 1-hour rollups in the database, adds finalized transactions to the
//! transactions meter, and evaluates the alert rules. The API serves the latest state
//! and the history. See `docs/billing-monitoring.md`.

pub mod api;
pub mod collector;
pub mod store;

pub use api::router;
