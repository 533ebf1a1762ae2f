//! A raw shard sample (kept briefly; history lives in rollups).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "monitor_samples")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub series_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub at: i64,
    pub finalized_height: i64,
    pub txs: i64,
    pub latency_sum_ms: i64,
    pub latency_count: i64,
    pub mempool_depth: i64,
    pub peers: i64,
    pub validators_up: i32,
    pub validators_expected: i32,
    pub epoch: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
