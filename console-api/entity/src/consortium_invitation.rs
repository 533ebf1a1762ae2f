//! An invitation to join a consortium. Only the SHA-256 of its token is stored.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "consortium_invitations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub network_id: Uuid,
    pub network_tenant_id: Uuid,
    pub member_id: Uuid,
    #[sea_orm(unique)]
    pub token_hash: String,
    pub expires_at: DateTimeUtc,
    pub accepted_at: Option<DateTimeUtc>,
    pub accepted_by_tenant_id: Option<Uuid>,
    pub created_by: String,
    pub created_at: DateTimeUtc,
    /// Set when the invitation was revoked (or its member rejected) before acceptance.
    pub revoked_at: Option<DateTimeUtc>,
    /// The only tenant that may accept it, when the inviter named one.
    pub invited_tenant_id: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
