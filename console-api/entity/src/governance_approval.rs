//! An organisation's offline approval of a chain governance proposal (bring your own
//! key): the signature the console cannot make itself, kept until the proposal is
//! submitted.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "governance_approvals")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub network_id: Uuid,
    /// The member whose admission (or removal) the proposal is about.
    pub member_id: Uuid,
    /// The admitted member whose organisation key signed.
    pub approver_member_id: Uuid,
    /// Hex SHA-256 of the proposal (what was signed).
    pub proposal_hash: String,
    /// Hex approval: admin key (32 bytes) ‖ ed25519 signature (64 bytes).
    pub approval: String,
    /// The actor (`user:<id>` / `api_key:<id>`) who posted it.
    pub approved_by: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
