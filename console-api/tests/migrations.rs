//! Upgrading a database that holds data: migrations that move data are run against a
//! real database at the schema before them, with rows written the way the older console
//! wrote them, then the rest of the migrations, and the data is checked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test scenarios

mod common;

use chrono::{Duration, SubsecRound, Utc};
use sea_orm::{ActiveValue::Set, Database, DatabaseConnection, EntityTrait};
use serde_json::json;
use trellis_console::networks::autoscale::{ACTION, ACTOR, AutoscalerStatus};
use trellis_console_entity::{audit_event, network, tenant};
use trellis_console_migration::{Migrator, MigratorTrait};
use uuid::Uuid;

/// Applies every migration before the one named `name`.
async fn migrate_to_before(db: &DatabaseConnection, name: &str) {
    let position = Migrator::migrations()
        .iter()
        .position(|m| m.name() == name)
        .unwrap_or_else(|| panic!("no migration {name}"));
    Migrator::up(db, Some(position as u32)).await.unwrap();
}

async fn network_without_autoscaler(db: &DatabaseConnection, tenant: Uuid, name: &str) -> Uuid {
    let id = Uuid::now_v7();
    let now = Utc::now();
    // `autoscaler` left unset: the column does not exist yet.
    network::Entity::insert(network::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant),
        name: Set(name.to_string()),
        mode: Set("public".to_string()),
        spec: Set(json!({"mode": "public"})),
        generation: Set(1),
        provisioned_generation: Set(1),
        phase: Set("Running".to_string()),
        status: Set(None),
        provision_error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    })
    .exec_without_returning(db)
    .await
    .unwrap();
    id
}

async fn audit(
    db: &DatabaseConnection,
    tenant: Uuid,
    action: &str,
    target: &str,
    details: serde_json::Value,
    at: chrono::DateTime<Utc>,
) {
    audit_event::Entity::insert(audit_event::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant),
        actor: Set(ACTOR.to_string()),
        action: Set(action.to_string()),
        target: Set(Some(target.to_string())),
        details: Set(details),
        created_at: Set(at),
    })
    .exec_without_returning(db)
    .await
    .unwrap();
}

/// Networks scaled by the autoscaler before the `autoscaler` column existed show their
/// newest change after the upgrade (read from the audit log); others show none.
async fn the_autoscalers_last_change_is_filled_from_the_audit_log(url: &str) {
    let db = Database::connect(url).await.unwrap();
    migrate_to_before(&db, "m20261122_000040_network_autoscaler").await;
    let tenant = Uuid::now_v7();
    tenant::Entity::insert(tenant::ActiveModel {
        id: Set(tenant),
        name: Set("Upgraded".to_string()),
        slug: Set(format!("upgraded-{}", tenant.simple())),
        plan: Set("free".to_string()),
        created_at: Set(Utc::now()),
    })
    .exec_without_returning(&db)
    .await
    .unwrap();
    let scaled = network_without_autoscaler(&db, tenant, "scaled").await;
    let manual = network_without_autoscaler(&db, tenant, "manual").await;
    let older = Utc::now().trunc_subsecs(6) - Duration::minutes(10);
    let newer = older + Duration::minutes(5);
    let target = format!("network:{scaled}");
    let change = |from: u32, to: u32, reason: &str| json!({"shards": {"count": to}, "from": from, "to": to, "reason": reason});
    // Written newest first: the backfill must order by time, not by insertion.
    audit(&db, tenant, ACTION, &target, change(2, 3, "newest"), newer).await;
    audit(&db, tenant, ACTION, &target, change(1, 2, "oldest"), older).await;
    // A user's change of the other network is not the autoscaler's.
    let manual_target = format!("network:{manual}");
    let details = json!({"shards": {"count": 4}});
    audit(
        &db,
        tenant,
        "network.update",
        &manual_target,
        details,
        newer,
    )
    .await;

    Migrator::up(&db, None).await.unwrap();

    let read = |id: Uuid| {
        let db = db.clone();
        async move {
            network::Entity::find_by_id(id)
                .one(&db)
                .await
                .unwrap()
                .unwrap()
                .autoscaler
        }
    };
    let status: AutoscalerStatus = serde_json::from_value(read(scaled).await.unwrap()).unwrap();
    assert_eq!(
        status,
        AutoscalerStatus {
            last_scale_time: newer,
            from: 2,
            to: 3,
            reason: "newest".to_string(),
        }
    );
    assert_eq!(read(manual).await, None);
}

#[tokio::test]
async fn the_autoscalers_last_change_is_filled_from_the_audit_log_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = trellis_console::db::sqlite_url(dir.path());
    the_autoscalers_last_change_is_filled_from_the_audit_log(&url).await;
}

#[tokio::test]
async fn the_autoscalers_last_change_is_filled_from_the_audit_log_postgres() {
    let Some(url) = common::postgres_url().await else {
        eprintln!("SKIPPED: the autoscaler backfill on PostgreSQL");
        return;
    };
    the_autoscalers_last_change_is_filled_from_the_audit_log(&url).await;
}
