//! Tells, without a database call, whether anything was committed to the console's
//! SQLite database since an earlier moment — by any connection of any process.
//!
//! How: a SQLite database in WAL mode keeps a shared "wal-index" in the `-shm` file
//! next to it, which every connection of every process maps. Its first 96 bytes are
//! two copies of the 48-byte wal-index header (file format documented at
//! <https://www.sqlite.org/walformat.html>); the header holds a counter SQLite bumps on
//! every commit, the last valid WAL frame and checksums over both. A [`CommitMark`] is
//! a consistent copy of that header: two marks are equal only if no transaction
//! committed in between (a checkpoint or a recovery may change it without a commit;
//! that only makes a caller read again).
//!
//! Why a mark never misses a finished commit (commit versus visibility): in WAL mode a
//! commit *becomes visible* to other connections exactly when the writer stores the new
//! header into the wal-index — a reader starts its snapshot from that header — and the
//! writer's `COMMIT` returns only after that store. So a mark read after a commit
//! returned differs from every mark read before the commit was visible, and a query
//! started after reading a mark sees at least everything committed before the mark was
//! read. A writer stores copy 2 first, then copy 1; this reads copy 1 and then copy 2
//! (two separate reads, in that order), and a copy torn by a concurrent store shows as
//! unequal copies, answered with "no mark" (SQLite's own readers do the same check).
//!
//! What keeps it true: the database must be in WAL mode (checked when watching starts)
//! and the `-shm` file read must be the one SQLite uses. SQLite deletes the file when
//! its last connection closes and creates a new one on the next open; the watch holds a
//! connection of its own open for its whole life, so the file it reads stays the live
//! one.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use sea_orm::sqlx::{self, Row, SqliteConnection};
use sea_orm::{DatabaseConnection, DatabaseConnectionType, DbErr};

/// The size of one copy of the wal-index header.
const HEADER_BYTES: usize = 48;
/// The header's `isInit` byte: 1 once a connection has built the wal-index.
const IS_INIT: usize = 12;

/// A consistent copy of the wal-index header: the database's committed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitMark([u8; HEADER_BYTES]);

pub struct CommitWatch {
    shm: File,
    /// Open for the watch's whole life so SQLite never deletes and recreates the
    /// `-shm` file being read (it does when its last connection closes). Never used.
    _keeper: Mutex<SqliteConnection>,
}

impl CommitWatch {
    /// Starts watching `db` if it is a SQLite file database in WAL mode; `None` for
    /// anything else (PostgreSQL, an in-memory or rollback-journal SQLite database),
    /// whose callers must ask the database instead.
    pub async fn open(db: &DatabaseConnection) -> Result<Option<Self>, DbErr> {
        let DatabaseConnectionType::SqlxSqlitePoolConnection(_) = &db.inner else {
            return Ok(None);
        };
        let pool = db.get_sqlite_connection_pool();
        let mut keeper = pool.acquire().await.map_err(sqlx_err)?.detach();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut keeper)
            .await
            .map_err(sqlx_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Ok(None);
        }
        // A read transaction on the keeper opens (or builds) the wal-index.
        let files = sqlx::query("PRAGMA database_list")
            .fetch_all(&mut keeper)
            .await
            .map_err(sqlx_err)?;
        let main_file = files
            .iter()
            .find(|row| row.try_get::<String, _>("name").ok().as_deref() == Some("main"))
            .and_then(|row| row.try_get::<String, _>("file").ok())
            .unwrap_or_default();
        if main_file.is_empty() {
            return Ok(None);
        }
        let shm = File::open(format!("{main_file}-shm"))
            .map_err(|err| DbErr::Custom(format!("opening the SQLite wal-index: {err}")))?;
        let watch = Self {
            shm,
            _keeper: Mutex::new(keeper),
        };
        if watch.mark().is_none() {
            return Ok(None);
        }
        Ok(Some(watch))
    }

    /// The database's committed state now, or `None` while the header is being
    /// written (or cannot be read): then the caller asks the database.
    pub fn mark(&self) -> Option<CommitMark> {
        let mut first = [0u8; HEADER_BYTES];
        let mut second = [0u8; HEADER_BYTES];
        self.shm.read_exact_at(&mut first, 0).ok()?;
        self.shm
            .read_exact_at(&mut second, HEADER_BYTES as u64)
            .ok()?;
        (first == second && first[IS_INIT] == 1).then_some(CommitMark(first))
    }
}

fn sqlx_err(err: sqlx::Error) -> DbErr {
    DbErr::Custom(format!("watching SQLite commits: {err}"))
}
