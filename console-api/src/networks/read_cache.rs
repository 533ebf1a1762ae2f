//! The network read endpoints' last answers per tenant, reused while the tenant's
//! networks are unchanged.
//!
//! Why it is never stale: every answer is remembered under the tenant's network
//! version (`network_versions`, bumped by a database trigger in the transaction of
//! every write to one of its networks, whoever writes it) read *before* the rows it was
//! built from, and is handed out only to a request that read the same version. A
//! request that starts after a write committed reads a version at least as new as that
//! write's, so it can only be answered from rows read after the write. The version is
//! read from the database on every request (on SQLite, from memory while the database's
//! commit mark says nothing was committed since it was read: [`super::versions`]), so
//! this holds with several console replicas and with writers outside the console. An
//! answer built from rows newer than its version is only fresher.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::body::Bytes;
use uuid::Uuid;

use crate::tenancy::TenantId;

/// Remembered answers above this many bytes in all are forgotten at once (then
/// remembered again as they are asked for).
pub const DEFAULT_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// Which read an answer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Read {
    /// `GET /v1/networks?limit=…&cursor=…`.
    List { after: Option<Uuid>, limit: u64 },
    /// `GET /v1/networks/{id}` (a network that exists; "not found" is not remembered).
    Get(Uuid),
}

struct TenantAnswers {
    version: i64,
    answers: HashMap<Read, Bytes>,
}

#[derive(Default)]
struct Answers {
    tenants: HashMap<Uuid, TenantAnswers>,
    bytes: usize,
}

pub struct ReadCache {
    answers: Mutex<Answers>,
    budget_bytes: usize,
}

impl Default for ReadCache {
    fn default() -> Self {
        Self::new(DEFAULT_BUDGET_BYTES)
    }
}

impl ReadCache {
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            answers: Mutex::default(),
            budget_bytes,
        }
    }

    /// A panic while holding the lock leaves the maps consistent (each change is one
    /// map operation), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, Answers> {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer to `read` remembered under exactly `version`, the tenant's network
    /// version this request read.
    pub fn get(&self, tenant: TenantId, version: i64, read: &Read) -> Option<Bytes> {
        let answers = self.lock();
        let remembered = answers.tenants.get(&tenant.get())?;
        if remembered.version != version {
            return None;
        }
        remembered.answers.get(read).cloned()
    }

    /// Remembers `body` as the answer to `read` under `version`, read before the rows
    /// it was built from. Answers under an older version are dropped; an answer under
    /// an older version than the remembered ones is not kept.
    pub fn put(&self, tenant: TenantId, version: i64, read: Read, body: Bytes) {
        if body.len() > self.budget_bytes {
            return;
        }
        let mut answers = self.lock();
        if answers.bytes + body.len() > self.budget_bytes {
            answers.tenants.clear();
            answers.bytes = 0;
        }
        let Answers { tenants, bytes } = &mut *answers;
        let remembered = tenants
            .entry(tenant.get())
            .or_insert_with(|| TenantAnswers {
                version,
                answers: HashMap::new(),
            });
        if version < remembered.version {
            return;
        }
        if version > remembered.version {
            *bytes -= remembered.answers.values().map(Bytes::len).sum::<usize>();
            remembered.answers.clear();
            remembered.version = version;
        }
        *bytes += body.len();
        if let Some(replaced) = remembered.answers.insert(read, body) {
            *bytes -= replaced.len();
        }
    }

    /// Bytes of the answers remembered now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(n: u128) -> TenantId {
        TenantId::trusted(Uuid::from_u128(n))
    }

    const LIST: Read = Read::List {
        after: None,
        limit: 20,
    };

    #[test]
    fn an_answer_is_reused_only_under_the_version_it_was_remembered_under() {
        let cache = ReadCache::default();
        cache.put(tenant(1), 3, LIST, Bytes::from_static(b"v3"));
        assert_eq!(cache.get(tenant(1), 3, &LIST).unwrap(), "v3");
        // A newer version (a write committed since): not answered from memory.
        assert!(cache.get(tenant(1), 4, &LIST).is_none());
        // Another read, another tenant: nothing.
        assert!(cache.get(tenant(1), 3, &Read::Get(Uuid::nil())).is_none());
        assert!(cache.get(tenant(2), 3, &LIST).is_none());
        // A newer answer replaces the older ones of the tenant.
        cache.put(tenant(1), 4, LIST, Bytes::from_static(b"v4"));
        assert!(cache.get(tenant(1), 3, &LIST).is_none());
        assert_eq!(cache.get(tenant(1), 4, &LIST).unwrap(), "v4");
        assert_eq!(cache.bytes(), 2);
    }

    #[test]
    fn a_slow_request_does_not_put_back_an_older_answer() {
        let cache = ReadCache::default();
        cache.put(tenant(1), 5, LIST, Bytes::from_static(b"new"));
        // Read version 4 before the write of version 5, finished after it.
        cache.put(tenant(1), 4, LIST, Bytes::from_static(b"old"));
        cache.put(
            tenant(1),
            4,
            Read::Get(Uuid::nil()),
            Bytes::from_static(b"old"),
        );
        assert_eq!(cache.get(tenant(1), 5, &LIST).unwrap(), "new");
        assert!(cache.get(tenant(1), 4, &LIST).is_none());
        assert!(cache.get(tenant(1), 5, &Read::Get(Uuid::nil())).is_none());
        assert_eq!(cache.bytes(), 3);
    }

    #[test]
    fn memory_stays_within_the_budget() {
        let cache = ReadCache::new(10);
        cache.put(tenant(1), 1, LIST, Bytes::from_static(b"123456"));
        cache.put(tenant(2), 1, LIST, Bytes::from_static(b"123456"));
        assert!(cache.bytes() <= 10);
        assert_eq!(cache.get(tenant(2), 1, &LIST).unwrap(), "123456");
        // Replacing an answer counts the new one only.
        cache.put(tenant(2), 1, LIST, Bytes::from_static(b"1234"));
        assert_eq!(cache.bytes(), 4);
        // Too big to remember at all.
        cache.put(tenant(3), 1, LIST, Bytes::from_static(b"12345678901"));
        assert!(cache.get(tenant(3), 1, &LIST).is_none());
        assert_eq!(cache.bytes(), 4);
    }
}
