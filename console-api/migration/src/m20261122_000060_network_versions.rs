//! A change counter per tenant of its networks (`network_versions`), bumped by the
//! database itself — a trigger on `networks` — in the transaction of every insert,
//! update and delete of a network row, whoever makes it (a request, the reconciler's
//! status writes, the autoscaler, another console replica). The read endpoints keep
//! their last answers per tenant and reuse one only while this counter is unchanged.
//!
//! A tenant without a row has never had a network written since this migration: its
//! version is 0. Rows are never deleted, so a version never goes back to a value an
//! older answer was remembered under.
use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Adds one to `network_versions` of the tenant named by `side` (`NEW` or `OLD`),
/// creating its row at 1 (the same statement on both databases).
fn bump(side: &str) -> String {
    format!(
        "INSERT INTO network_versions (tenant_id, version) VALUES ({side}.tenant_id, 1) \
         ON CONFLICT (tenant_id) DO UPDATE SET version = network_versions.version + 1;"
    )
}

/// SQLite: a trigger per kind of change; an update that moves a network to another
/// tenant bumps both tenants.
fn sqlite_triggers() -> Vec<String> {
    vec![
        format!(
            "CREATE TRIGGER networks_version_insert AFTER INSERT ON networks BEGIN {} END",
            bump("NEW")
        ),
        format!(
            "CREATE TRIGGER networks_version_update AFTER UPDATE ON networks BEGIN {} END",
            bump("NEW")
        ),
        format!(
            "CREATE TRIGGER networks_version_update_old AFTER UPDATE OF tenant_id ON networks \
             WHEN OLD.tenant_id IS NOT NEW.tenant_id BEGIN {} END",
            bump("OLD")
        ),
        format!(
            "CREATE TRIGGER networks_version_delete AFTER DELETE ON networks BEGIN {} END",
            bump("OLD")
        ),
    ]
}

/// PostgreSQL: one row trigger, deferred to the commit so the counter's row is locked
/// only while committing (two transactions writing different networks of a tenant do
/// not wait on each other until then, and cannot deadlock on it).
fn postgres_triggers() -> Vec<String> {
    vec![
        format!(
            "CREATE FUNCTION networks_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    {new}
  ELSIF TG_OP = 'DELETE' THEN
    {old}
  ELSE
    {old}
    IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id THEN
      {new}
    END IF;
  END IF;
  RETURN NULL;
END $$",
            new = bump("NEW"),
            old = bump("OLD")
        ),
        "CREATE CONSTRAINT TRIGGER networks_version AFTER INSERT OR UPDATE OR DELETE \
         ON networks DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
         EXECUTE FUNCTION networks_version_bump()"
            .to_string(),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("network_versions")
                    .col(pk_uuid("tenant_id"))
                    .col(big_integer("version"))
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        let triggers = match db.get_database_backend() {
            DbBackend::Sqlite => sqlite_triggers(),
            DbBackend::Postgres => postgres_triggers(),
            other => {
                return Err(DbErr::Migration(format!(
                    "network versions: unsupported database {other:?}"
                )));
            }
        };
        for statement in triggers {
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let drops: &[&str] = match db.get_database_backend() {
            DbBackend::Postgres => &[
                "DROP TRIGGER IF EXISTS networks_version ON networks",
                "DROP FUNCTION IF EXISTS networks_version_bump()",
            ],
            _ => &[
                "DROP TRIGGER IF EXISTS networks_version_insert",
                "DROP TRIGGER IF EXISTS networks_version_update",
                "DROP TRIGGER IF EXISTS networks_version_update_old",
                "DROP TRIGGER IF EXISTS networks_version_delete",
            ],
        };
        for statement in drops {
            db.execute_unprepared(statement).await?;
        }
        manager
            .drop_table(Table::drop().table("network_versions").to_owned())
            .await
    }
}
