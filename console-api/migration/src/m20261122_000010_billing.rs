//! Billing: plans with quotas and prices, platform admins, the networks' footprint log,
//! metering cursors, source counters and idempotent usage records. Times are unix
//! seconds (exact, and the same on SQLite and PostgreSQL); money is decimal text.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The plans of the built-in quota table, now stored and editable, with prices.
const SEED: &str = "
INSERT INTO billing_plans (name, networks, nodes, shards_per_network, storage_gib, currency, updated_at) VALUES
  ('free', 3, 64, 8, 640, 'USD', 0),
  ('team', 25, 400, 32, 4000, 'USD', 0),
  ('enterprise', 500, 20000, 256, 200000, 'USD', 0);
INSERT INTO billing_prices (plan, meter, unit_price) VALUES
  ('team', 'node_hours.small', '0.06'),
  ('team', 'node_hours.standard', '0.12'),
  ('team', 'node_hours.large', '0.36'),
  ('team', 'storage_gib_hours', '0.0002'),
  ('team', 'transactions', '0.00001'),
  ('team', 'rpc_requests', '0.000001'),
  ('enterprise', 'node_hours.small', '0.05'),
  ('enterprise', 'node_hours.standard', '0.10'),
  ('enterprise', 'node_hours.large', '0.30'),
  ('enterprise', 'storage_gib_hours', '0.00015'),
  ('enterprise', 'transactions', '0.000008'),
  ('enterprise', 'rpc_requests', '0.0000008');
";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("billing_plans")
                    .col(string("name").primary_key())
                    .col(big_integer("networks"))
                    .col(big_integer("nodes"))
                    .col(big_integer("shards_per_network"))
                    .col(big_integer("storage_gib"))
                    .col(string("currency"))
                    .col(big_integer("updated_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("billing_prices")
                    .col(string("plan"))
                    .col(string("meter"))
                    .col(string("unit_price"))
                    .primary_key(Index::create().col("plan").col("meter"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_billing_prices_plan")
                            .from("billing_prices", "plan")
                            .to("billing_plans", "name")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("platform_admins")
                    .col(uuid("tenant_id").primary_key())
                    .col(big_integer("granted_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_platform_admins_tenant")
                            .from("platform_admins", "tenant_id")
                            .to("tenants", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // One row per change of a network's desired state; never updated. Outlives the
        // network row, so usage after a deletion is still metered and invoiced.
        manager
            .create_table(
                Table::create()
                    .table("billing_footprints")
                    .col(pk_uuid("id"))
                    .col(uuid("tenant_id"))
                    .col(uuid("network_id"))
                    .col(big_integer("at"))
                    .col(integer("nodes"))
                    .col(big_integer("storage_gib"))
                    .col(boolean("compute_billed"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_billing_footprints_network_at")
                    .table("billing_footprints")
                    .col("network_id")
                    .col("at")
                    .to_owned(),
            )
            .await?;
        // How far each network is metered, and the footprint in effect there.
        manager
            .create_table(
                Table::create()
                    .table("billing_meters")
                    .col(uuid("network_id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(string("network_name"))
                    .col(big_integer("metered_until"))
                    .col(big_integer_null("deleted_at"))
                    .col(integer("nodes"))
                    .col(big_integer("storage_gib"))
                    .col(boolean("compute_billed"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_billing_meters_tenant")
                    .table("billing_meters")
                    .col("tenant_id")
                    .to_owned(),
            )
            .await?;
        // Counted meters (transactions, RPC requests) accumulate here per window until
        // the window is closed into a usage record.
        manager
            .create_table(
                Table::create()
                    .table("billing_counters")
                    .col(uuid("network_id"))
                    .col(string("meter"))
                    .col(big_integer("window_start"))
                    .col(uuid("tenant_id"))
                    .col(big_integer("quantity"))
                    .primary_key(
                        Index::create()
                            .col("network_id")
                            .col("meter")
                            .col("window_start"),
                    )
                    .to_owned(),
            )
            .await?;
        // The key is (tenant, network, meter, window): inserting a record twice is a
        // no-op, so retries and restarts never count twice.
        manager
            .create_table(
                Table::create()
                    .table("usage_records")
                    .col(uuid("tenant_id"))
                    .col(uuid("network_id"))
                    .col(string("meter"))
                    .col(big_integer("window_start"))
                    .col(big_integer("quantity"))
                    .primary_key(
                        Index::create()
                            .col("tenant_id")
                            .col("network_id")
                            .col("meter")
                            .col("window_start"),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_usage_records_tenant_window")
                    .table("usage_records")
                    .col("tenant_id")
                    .col("window_start")
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        for statement in SEED.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "usage_records",
            "billing_counters",
            "billing_meters",
            "billing_footprints",
            "platform_admins",
            "billing_prices",
            "billing_plans",
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
