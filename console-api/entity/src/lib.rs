//! sea-orm entities of the Trellis console database.
//!
//! Every table that holds tenant data carries `tenant_id`; the console's service layer
//! filters every query by it (see `trellis-console`'s `tenancy` module). Entities are
//! plain data: no business rules live here. The schema itself is owned by
//! `trellis-console-migration`, one file per change.

pub mod alert;
pub mod api_key;
pub mod audit_event;
pub mod billing_counter;
pub mod billing_footprint;
pub mod billing_meter;
pub mod billing_plan;
pub mod billing_price;
pub mod consortium_approval;
pub mod consortium_invitation;
pub mod consortium_member;
pub mod consortium_removal_approval;
pub mod governance_approval;
pub mod idempotency_key;
pub mod monitor_node;
pub mod monitor_rollup;
pub mod monitor_sample;
pub mod monitor_series;
pub mod network;
pub mod network_version;
pub mod platform_admin;
pub mod refresh_token;
pub mod tenant;
pub mod usage_record;
pub mod user;
pub mod webhook;
pub mod webhook_delivery;
