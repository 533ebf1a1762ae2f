//! The tenant's network version ([`store::version`]) for the read endpoints, taken
//! from memory on SQLite when nothing was committed since it was last read.
//!
//! Each version read from the database is remembered with the [`CommitMark`] read
//! *before* the query. While the database's mark is still that one, no transaction has
//! committed since, so the tenant's version in the database is still at most the one
//! remembered (which may be newer than the mark: only fresher), and a remembered answer
//! keyed by it is as good as one found by querying (see [`super::read_cache`] and, for
//! why a finished commit always changes the mark, [`crate::commit_watch`]). Any commit,
//! to any table, by any connection or process, changes the mark, and the next request
//! asks the database again. On PostgreSQL (several replicas; no shared memory to
//! watch) every request asks the database ([`super::pg_versions`]).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::pg_versions::PgVersions;
use super::store;
use crate::commit_watch::{CommitMark, CommitWatch};
use crate::tenancy::TenantId;

/// Tenants whose version is remembered, at most (then all are forgotten and read again).
const MAX_TENANTS: usize = 65_536;

#[derive(Default)]
pub struct NetworkVersions {
    /// Started on first use (it needs the database); `None` where nothing can be
    /// watched.
    watch: OnceCell<Option<CommitWatch>>,
    known: Mutex<HashMap<Uuid, (CommitMark, i64)>>,
    /// On PostgreSQL, the version query without the pool's ping.
    postgres: PgVersions,
}

impl NetworkVersions {
    /// The tenant's network version as of now: read after every commit that finished
    /// before this call.
    pub async fn current(&self, db: &DatabaseConnection, tenant: TenantId) -> Result<i64, DbErr> {
        // Answered from memory this does no I/O, so a caller looping on remembered
        // reads would never give its thread back to the runtime: count it against the
        // task's budget, which yields now and then.
        tokio::task::coop::consume_budget().await;
        let mark = self.watch(db).await.and_then(CommitWatch::mark);
        if let Some(mark) = mark
            && let Some(&(known, version)) = self.lock().get(&tenant.get())
            && known == mark
        {
            return Ok(version);
        }
        let version = match self.postgres.read(db, tenant).await {
            Some(version) => version,
            None => store::version(db, tenant).await?,
        };
        if let Some(mark) = mark {
            let mut known = self.lock();
            if known.len() >= MAX_TENANTS {
                known.clear();
            }
            known.insert(tenant.get(), (mark, version));
        }
        Ok(version)
    }

    /// The watch, started on first use. A failure to start is logged and tried again
    /// on the next request; meanwhile the database is asked.
    async fn watch(&self, db: &DatabaseConnection) -> Option<&CommitWatch> {
        match self.watch.get_or_try_init(|| CommitWatch::open(db)).await {
            Ok(watch) => watch.as_ref(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch SQLite commits; reading versions from the database");
                None
            }
        }
    }

    /// Each change is one map operation, so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, (CommitMark, i64)>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
