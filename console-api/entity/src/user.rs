//! A person who signs in; belongs to exactly one tenant with one role.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// Lower-cased; unique across the whole console (it is the sign-in name).
    #[sea_orm(unique)]
    pub email: String,
    /// Argon2id PHC string; never the password.
    pub password_hash: String,
    /// One of `owner`, `admin`, `member`, `viewer`.
    pub role: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
