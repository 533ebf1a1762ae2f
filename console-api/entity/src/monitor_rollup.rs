//! A rollup bucket; `key` packs (series, resolution, bucket index).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "monitor_rollups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: i64,
    pub samples: i64,
    pub finalized_height_max: i64,
    pub txs: i64,
    pub latency_sum_ms: i64,
    pub latency_count: i64,
    pub mempool_depth_max: i64,
    pub peers_min: i64,
    pub validators_up_min: i32,
    pub validators_expected: i32,
    pub epoch_max: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
