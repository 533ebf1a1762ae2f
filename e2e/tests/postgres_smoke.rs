//! The PostgreSQL fixture is a real server: a migration runs, queries see its tables,
//! and every call gets a database of its own.

use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use sea_orm_migration::prelude::*;
use trellis_e2e::postgres::fresh_database;

struct CreateLedger;

impl MigrationName for CreateLedger {
    fn name(&self) -> &str {
        "m0001_create_ledger"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateLedger {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("ledger_entry")
                    .col(
                        ColumnDef::new("id")
                            .integer()
                            .not_null()
                            .primary_key()
                            .auto_increment(),
                    )
                    .col(ColumnDef::new("account").string().not_null())
                    .col(ColumnDef::new("amount").big_integer().not_null())
                    .to_owned(),
            )
            .await
    }
}

struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateLedger)]
    }
}

#[tokio::test]
async fn migration_and_query_on_a_fresh_database() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let db = Database::connect(&url).await.unwrap();
    assert_eq!(db.get_database_backend(), DbBackend::Postgres);
    Migrator::up(&db, None).await.unwrap();
    // Running migrations again is a no-op.
    Migrator::up(&db, None).await.unwrap();

    for (account, amount) in [("alice", 70_i64), ("bob", 30), ("alice", -20)] {
        db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO ledger_entry (account, amount) VALUES ($1, $2)",
            [account.into(), amount.into()],
        ))
        .await
        .unwrap();
    }
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT SUM(amount)::BIGINT AS total, COUNT(DISTINCT account)::BIGINT AS accounts FROM ledger_entry",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<i64>("", "total").unwrap(), 80);
    assert_eq!(row.try_get::<i64>("", "accounts").unwrap(), 2);
}

#[tokio::test]
async fn each_call_gets_its_own_database() {
    let (Some(a), Some(b)) = (fresh_database().await, fresh_database().await) else {
        return;
    };
    assert_ne!(a, b);
    let db_a = Database::connect(&a).await.unwrap();
    Migrator::up(&db_a, None).await.unwrap();
    let db_b = Database::connect(&b).await.unwrap();
    let found = db_b
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT to_regclass('public.ledger_entry') IS NOT NULL AS present",
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !found.try_get::<bool>("", "present").unwrap(),
        "database b sees a's table"
    );
}
