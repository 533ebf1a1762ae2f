//! Pure domain logic of Trellis billing and monitoring, kept apart from the console's
//! HTTP and database code so every rule can be tested exactly and cheaply.
//!
//! - [`clock`]: where "now" comes from (the system, or a hand-driven clock in tests).
//! - [`meter`]: what is metered and in which base units.
//! - [`usage`]: a network's footprint over time → node-seconds and GiB-seconds per window.
//! - [`window`]: metering windows, billing periods and validated time ranges.
//! - [`money`]: exact decimal prices and amounts (no floating point anywhere).
//! - [`invoice`]: price book × usage → invoice lines, totals, CSV.
//! - [`cloudevents`]: usage records as CloudEvents for an external billing system.
//! - [`metrics_text`]: the node's Prometheus text → the figures monitoring needs.
//! - [`rollup`]: samples → 1-minute and 1-hour buckets.
//! - [`alerts`]: alert rules (pure conditions) and webhook retry backoff.
//! - [`signature`]: HMAC-SHA256 webhook signatures (sign and verify).
//! - [`webhook_url`]: which webhook URLs are acceptable.

pub mod alerts;
pub mod clock;
pub mod cloudevents;
pub mod invoice;
pub mod meter;
pub mod metrics_text;
pub mod money;
pub mod rollup;
pub mod signature;
pub mod usage;
pub mod webhook_url;
pub mod window;

pub use rust_decimal::Decimal;
