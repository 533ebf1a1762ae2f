//! A plan's unit price of one meter, as decimal text.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "billing_prices")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub plan: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub meter: String,
    pub unit_price: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
