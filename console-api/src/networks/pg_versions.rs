//! On PostgreSQL, the tenants' network versions are read over a few connections kept
//! apart from the pool.
//!
//! Why: sqlx pings every connection as it goes back to its pool (one more round trip
//! to the server, which sea-orm gives no way to skip). On a remembered read the version
//! query is the request's only database work, so that ping doubled the server's work
//! per request. These connections run nothing but that one single-row `SELECT` (an
//! autocommit statement on the primary, like the pooled query it replaces: it sees
//! every commit finished before it was sent), so there is nothing a ping would have to
//! clean up. A connection whose query fails, or whose request is dropped mid-query, is
//! closed, never reused; the caller then asks through the pool, which copes with a
//! restarted server as before. When all of them are busy the caller uses the pool too.
//! Concurrent requests share one query ([`super::version_flights`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use sea_orm::sqlx::{self, PgConnection};
use sea_orm::{DatabaseConnection, DatabaseConnectionType};
use uuid::Uuid;

use super::version_flights::Flights;
use crate::tenancy::TenantId;

/// Connections of its own at most, on top of the pool's.
const MAX_OPEN: usize = 8;

#[derive(Default)]
pub struct PgVersions {
    idle: Mutex<Vec<PgConnection>>,
    /// Idle and in use.
    open: AtomicUsize,
    flights: Flights,
}

impl PgVersions {
    /// The tenant's network version (0 before its first network), or `None` when this
    /// cannot answer (not PostgreSQL, every connection busy, or a failure): then the
    /// caller asks through the pool.
    pub async fn read(&self, db: &DatabaseConnection, tenant: TenantId) -> Option<i64> {
        let DatabaseConnectionType::SqlxPostgresPoolConnection(_) = &db.inner else {
            return None;
        };
        self.flights
            .share(tenant.get(), |tenants| self.query(db, tenants))
            .await
    }

    /// The versions of `tenants` (absent: 0) over a connection of its own.
    async fn query(
        &self,
        db: &DatabaseConnection,
        tenants: Vec<Uuid>,
    ) -> Option<HashMap<Uuid, i64>> {
        let mut lent = self.lend(db).await?;
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT tenant_id, version FROM network_versions WHERE tenant_id = ANY($1)",
        )
        .bind(tenants)
        .fetch_all(lent.connection.as_mut()?)
        .await
        .map_err(|err| tracing::debug!(error = %err, "version connection dropped"))
        .ok()?;
        lent.give_back();
        Some(rows.into_iter().collect())
    }

    /// An idle connection, or a new one taken out of the pool while fewer than
    /// [`MAX_OPEN`] are open.
    async fn lend(&self, db: &DatabaseConnection) -> Option<Lent<'_>> {
        if let Some(connection) = self.lock().pop() {
            return Some(Lent {
                owner: self,
                connection: Some(connection),
                given_back: false,
            });
        }
        if self.open.fetch_add(1, Ordering::AcqRel) >= MAX_OPEN {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        // From here on, dropping `lent` counts the connection as closed.
        let mut lent = Lent {
            owner: self,
            connection: None,
            given_back: false,
        };
        let pooled = db.get_postgres_connection_pool().acquire().await.ok()?;
        lent.connection = Some(pooled.detach());
        Some(lent)
    }

    /// Each change is one `Vec` operation, so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, Vec<PgConnection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection slot in use: closed (and no longer counted) unless given back.
struct Lent<'a> {
    owner: &'a PgVersions,
    connection: Option<PgConnection>,
    given_back: bool,
}

impl Lent<'_> {
    fn give_back(mut self) {
        if let Some(connection) = self.connection.take() {
            self.owner.lock().push(connection);
            self.given_back = true;
        }
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if !self.given_back {
            self.owner.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
