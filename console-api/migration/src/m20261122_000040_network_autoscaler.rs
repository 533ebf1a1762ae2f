//! A network carries the built-in autoscaler's newest change (`autoscaler`: when, from,
//! to, why), written in the same transaction as the change and its audit entry. Reading
//! a network then takes one query instead of a second one on the audit log per request.
//! Existing databases are filled from their `network.autoscale` audit entries.
use std::collections::HashMap;

use sea_orm::prelude::{DateTimeUtc, Json, Uuid};
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The audit action of an autoscaler's shard-count change (the console's
/// `networks::autoscale::ACTION`; a migration keeps its own copy, as it never changes).
const ACTION: &str = "network.autoscale";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("networks")
                    .add_column(json_null("autoscaler"))
                    .to_owned(),
            )
            .await?;
        backfill(manager).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("networks")
                    .drop_column("autoscaler")
                    .to_owned(),
            )
            .await
    }
}

/// Each network's newest autoscaler change from the audit log, in the shape the console
/// writes (`AutoscalerStatus`). Done in Rust rather than SQL: the audit target is the
/// text `network:<id>` while SQLite stores ids as 16-byte blobs.
async fn backfill(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let select = Query::select()
        .columns(["target", "details", "created_at"])
        .from("audit_events")
        .and_where(Expr::col("action").eq(ACTION))
        .order_by("created_at", Order::Asc)
        .to_owned();
    // Oldest first: the newest entry per network is the one left.
    let mut newest: HashMap<Uuid, Json> = HashMap::new();
    for row in db.query_all(&select).await? {
        let target: Option<String> = row.try_get("", "target")?;
        let Some(network) = target
            .as_deref()
            .and_then(|t| t.strip_prefix("network:"))
            .and_then(|id| Uuid::parse_str(id).ok())
        else {
            continue;
        };
        let details: Json = row.try_get("", "details")?;
        let created_at: DateTimeUtc = row.try_get("", "created_at")?;
        let number = |key: &str| details[key].as_u64().unwrap_or_default();
        let mut status = serde_json::Map::new();
        status.insert("last_scale_time".into(), created_at.to_rfc3339().into());
        status.insert("from".into(), number("from").into());
        status.insert("to".into(), number("to").into());
        status.insert(
            "reason".into(),
            details["reason"].as_str().unwrap_or_default().into(),
        );
        newest.insert(network, Json::Object(status));
    }
    for (network, status) in newest {
        let update = Query::update()
            .table("networks")
            .value("autoscaler", status)
            .and_where(Expr::col("id").eq(network))
            .to_owned();
        db.execute(&update).await?;
    }
    Ok(())
}
