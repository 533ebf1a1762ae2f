//! How far a network is metered (unix seconds), and the footprint in effect there.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "billing_meters")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub network_id: Uuid,
    pub tenant_id: Uuid,
    pub network_name: String,
    pub metered_until: i64,
    pub deleted_at: Option<i64>,
    pub nodes: i32,
    pub storage_gib: i64,
    pub compute_billed: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
