//! Database connection and migrations.
//!
//! SQLite (a file in the data dir) is the embedded default; PostgreSQL is selected by a
//! `postgres://` URL. Migrations run at start-up.

use std::path::Path;
use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};
use trellis_console_migration::{Migrator, MigratorTrait};

/// A pooled connection idle at least this long is pinged before it is handed out.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(5);

/// The SQLite URL of the console database inside `data_dir` (created if missing).
pub fn sqlite_url(data_dir: &Path) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("console.db").display()
    )
}

/// Connects and brings the schema up to date.
pub async fn connect_and_migrate(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_string());
    options
        .max_connections(16)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings every connection as it goes back to the pool (and drops a broken
        // one); pinging it again on every checkout (sea-orm's default) cost a second
        // database round trip per query. Only a connection idle this long — long enough
        // for a server restart or an idle timeout to have cut it — is pinged first.
        .test_before_acquire_if_idle_for(IDLE_BEFORE_PING)
        .sqlx_logging(false);
    let db = Database::connect(options).await?;
    if db.get_database_backend() == DbBackend::Sqlite {
        // WAL lets readers proceed during a write; the setting persists in the file.
        db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
    }
    Migrator::up(&db, None).await?;
    Ok(db)
}
