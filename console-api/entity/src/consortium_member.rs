//! An organisation's membership of a consortium network.
//!
//! `state`: `Invited` → `Proposed` (invitation accepted, key registered) → `Admitted`
//! (approved by the threshold of admitted members). Founding members start `Admitted`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "consortium_members")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub network_id: Uuid,
    /// The tenant that owns the network.
    pub network_tenant_id: Uuid,
    /// The tenant that controls this member; `None` while only invited.
    pub member_tenant_id: Option<Uuid>,
    pub organisation: String,
    pub nodes: i32,
    pub state: String,
    /// `custodied` (the console holds the private key, sealed under the master key) or
    /// `external` (the organisation brought its own public key).
    pub key_custody: Option<String>,
    /// Hex Ed25519 public key.
    pub admin_public_key: Option<String>,
    /// `v1:` + base64(nonce ‖ XChaCha20-Poly1305 ciphertext); custodied keys only.
    pub sealed_private_key: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
