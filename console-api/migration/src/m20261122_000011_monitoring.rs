//! Monitoring and alerts: per-shard series with their progress, the last scrape of each
//! node, raw samples, rollups, alerts, webhooks and their delivery log.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("monitor_series")
                    .col(pk_auto("id"))
                    .col(uuid("tenant_id"))
                    .col(uuid("network_id"))
                    .col(integer("shard"))
                    .col(big_integer("height"))
                    .col(big_integer("progressed_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_monitor_series_network_shard")
                    .table("monitor_series")
                    .col("network_id")
                    .col("shard")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("monitor_nodes")
                    .col(uuid("network_id"))
                    .col(string("endpoint"))
                    .col(integer_null("shard"))
                    .col(boolean("up"))
                    .col(big_integer_null("finalized_height"))
                    .col(big_integer_null("txs_total"))
                    .col(double_null("latency_sum_seconds"))
                    .col(big_integer_null("latency_count"))
                    .col(big_integer("scraped_at"))
                    .primary_key(Index::create().col("network_id").col("endpoint"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("monitor_samples")
                    .col(big_integer("series_id"))
                    .col(big_integer("at"))
                    .col(big_integer("finalized_height"))
                    .col(big_integer("txs"))
                    .col(big_integer("latency_sum_ms"))
                    .col(big_integer("latency_count"))
                    .col(big_integer("mempool_depth"))
                    .col(big_integer("peers"))
                    .col(integer("validators_up"))
                    .col(integer("validators_expected"))
                    .col(big_integer("epoch"))
                    .primary_key(Index::create().col("series_id").col("at"))
                    .to_owned(),
            )
            .await?;
        // One row per (series, resolution, bucket), keyed by one packed integer
        // `series << 32 | resolution << 31 | bucket index` so that SQLite stores it as
        // the rowid itself (no second index): a month of rollups stays small.
        let key = if manager.get_database_backend() == sea_orm_migration::sea_orm::DbBackend::Sqlite
        {
            integer("key").primary_key().to_owned()
        } else {
            big_integer("key").primary_key().to_owned()
        };
        manager
            .create_table(
                Table::create()
                    .table("monitor_rollups")
                    .col(key)
                    .col(big_integer("samples"))
                    .col(big_integer("finalized_height_max"))
                    .col(big_integer("txs"))
                    .col(big_integer("latency_sum_ms"))
                    .col(big_integer("latency_count"))
                    .col(big_integer("mempool_depth_max"))
                    .col(big_integer("peers_min"))
                    .col(integer("validators_up_min"))
                    .col(integer("validators_expected"))
                    .col(big_integer("epoch_max"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("alerts")
                    .col(pk_uuid("id"))
                    .col(uuid("tenant_id"))
                    .col(uuid_null("network_id"))
                    .col(string("kind"))
                    .col(string("subject"))
                    .col(string("state"))
                    .col(text("detail"))
                    .col(big_integer("fired_at"))
                    .col(big_integer_null("resolved_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_alerts_tenant_state")
                    .table("alerts")
                    .col("tenant_id")
                    .col("state")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("webhooks")
                    .col(pk_uuid("id"))
                    .col(uuid("tenant_id"))
                    .col(text("url"))
                    .col(text("sealed_secret"))
                    .col(big_integer("created_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_webhooks_tenant")
                            .from("webhooks", "tenant_id")
                            .to("tenants", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("webhook_deliveries")
                    .col(pk_uuid("id"))
                    .col(uuid("tenant_id"))
                    .col(uuid("webhook_id"))
                    .col(string("event_type"))
                    .col(text("payload"))
                    .col(string("state"))
                    .col(integer("attempts"))
                    .col(big_integer("next_attempt_at"))
                    .col(integer_null("last_status"))
                    .col(text_null("last_error"))
                    .col(big_integer("created_at"))
                    .col(big_integer_null("delivered_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_webhook_deliveries_webhook")
                            .from("webhook_deliveries", "webhook_id")
                            .to("webhooks", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_deliveries_due")
                    .table("webhook_deliveries")
                    .col("state")
                    .col("next_attempt_at")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "webhook_deliveries",
            "webhooks",
            "alerts",
            "monitor_rollups",
            "monitor_samples",
            "monitor_nodes",
            "monitor_series",
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
