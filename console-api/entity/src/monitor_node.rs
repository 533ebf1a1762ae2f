//! A node endpoint's last scrape (counters kept to compute increases).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "monitor_nodes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub network_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub endpoint: String,
    pub shard: Option<i32>,
    pub up: bool,
    pub finalized_height: Option<i64>,
    pub txs_total: Option<i64>,
    pub latency_sum_seconds: Option<f64>,
    pub latency_count: Option<i64>,
    pub scraped_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
