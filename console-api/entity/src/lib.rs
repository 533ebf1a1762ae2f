//! sea-orm entities of the Trellis console database.
//!
//! Every table that holds tenant data carries `tenant_id`; the console's service layer
//! filters every query by it (see `trellis-console`'s `tenancy` module). Entities are
//! plain data: no business rules live here. The schema itself is owned by
//! `trellis-console-migration`, one file per change.

pub mod api_key;
pub mod audit_event;
pub mod consortium_approval;
pub mod consortium_invitation;
pub mod consortium_member;
pub mod idempotency_key;
pub mod network;
pub mod refresh_token;
pub mod tenant;
pub mod user;
