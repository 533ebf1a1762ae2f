//! Concurrent version reads share one query (a *flight*): while one query is on its
//! way, the requests arriving meanwhile queue; when it comes back, the first of them
//! sends one query for every queued request's tenant and answers them all.
//!
//! Why that is never stale: a queued request is answered by a query *sent after it
//! arrived*, so it sees every commit that finished before the request began — the same
//! guarantee as a query of its own. Under load this turns one database round trip per
//! request into one per flight.
//!
//! Requests can be dropped at any await (their client went away). A request dropped
//! while it leads a flight lets the queued ones go (they ask the pool themselves) and
//! the next request leads anew; one dropped just as the lead was handed to it passes
//! the lead on. So the queue never stalls.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;
use uuid::Uuid;

/// The requests waiting for the next flight, and whether one is on its way.
#[derive(Default)]
pub struct Flights {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    flying: bool,
    waiting: VecDeque<(Uuid, oneshot::Sender<Turn>)>,
}

/// What a waiting request is told.
enum Turn {
    /// Its tenant's version (`None`: the query failed).
    Answer(Option<i64>),
    /// Lead the next flight.
    Lead,
}

/// Versions by tenant (a tenant absent has version 0), or `None` if the query failed.
pub type Versions = Option<HashMap<Uuid, i64>>;

impl Flights {
    /// `tenant`'s version from a `query` (for the tenants it is given) sent after this
    /// call began — this request's own or one it shares; `None` when that query failed
    /// or was abandoned (the caller then asks on its own).
    pub async fn share<F, Fut>(&self, tenant: Uuid, query: F) -> Option<i64>
    where
        F: FnOnce(Vec<Uuid>) -> Fut,
        Fut: Future<Output = Versions>,
    {
        let waiting = {
            let mut queue = self.queue();
            if queue.flying {
                let (tell, told) = oneshot::channel();
                queue.waiting.push_back((tenant, tell));
                Some(Waiting { owner: self, told })
            } else {
                queue.flying = true;
                None
            }
        };
        if let Some(mut waiting) = waiting {
            match (&mut waiting.told).await {
                Ok(Turn::Answer(version)) => return version,
                Ok(Turn::Lead) => {}
                Err(_) => return None,
            }
        }
        // This request leads: one query for itself and every request waiting now.
        let mut flight = Flight {
            owner: self,
            landed: false,
        };
        let aboard = std::mem::take(&mut self.queue().waiting);
        let mut tenants: Vec<Uuid> = aboard.iter().map(|(t, _)| *t).collect();
        tenants.push(tenant);
        tenants.sort_unstable();
        tenants.dedup();
        let versions = query(tenants).await;
        let version_of = |t: &Uuid| versions.as_ref().map(|v| v.get(t).copied().unwrap_or(0));
        for (waiter, tell) in aboard {
            let _ = tell.send(Turn::Answer(version_of(&waiter)));
        }
        self.hand_over();
        flight.landed = true;
        version_of(&tenant)
    }

    /// Gives the lead to the first waiting request still there, or ends the flights.
    fn hand_over(&self) {
        let mut queue = self.queue();
        while let Some((_, tell)) = queue.waiting.pop_front() {
            if tell.send(Turn::Lead).is_ok() {
                return;
            }
        }
        queue.flying = false;
    }

    /// Each change is a few queue operations and a flag, so a poisoned lock is used as is.
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A request waiting for a flight. Dropped after the lead was handed to it but before
/// it saw that, it passes the lead on.
struct Waiting<'a> {
    owner: &'a Flights,
    told: oneshot::Receiver<Turn>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.told.close();
        if let Ok(Turn::Lead) = self.told.try_recv() {
            self.owner.hand_over();
        }
    }
}

/// A flight being led. Dropped before it landed (the leading request went away), the
/// waiting requests are let go and the next request leads anew.
struct Flight<'a> {
    owner: &'a Flights,
    landed: bool,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if !self.landed {
            let mut queue = self.owner.queue();
            queue.waiting.clear();
            queue.flying = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures::FutureExt;

    use super::*;

    /// A query held until `gate` fires, counting the queries sent and answering version
    /// 7 for every tenant asked.
    fn gated(
        sent: &Arc<AtomicUsize>,
        gate: oneshot::Receiver<()>,
    ) -> impl FnOnce(Vec<Uuid>) -> std::pin::Pin<Box<dyn Future<Output = Versions> + Send>> {
        let sent = sent.clone();
        move |tenants| {
            sent.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let _ = gate.await;
                Some(tenants.into_iter().map(|t| (t, 7)).collect())
            })
        }
    }

    /// A query answered at once (its gate already open).
    fn instant(
        sent: &Arc<AtomicUsize>,
    ) -> impl FnOnce(Vec<Uuid>) -> std::pin::Pin<Box<dyn Future<Output = Versions> + Send>> {
        let (open, gate) = oneshot::channel();
        let _ = open.send(());
        gated(sent, gate)
    }

    #[tokio::test]
    async fn requests_arriving_during_a_query_share_the_next_one() {
        let flights = Flights::default();
        let sent = Arc::new(AtomicUsize::new(0));
        let (open, gate) = oneshot::channel();
        let mut leader = Box::pin(flights.share(Uuid::from_u128(1), gated(&sent, gate)));
        assert!((&mut leader).now_or_never().is_none(), "held by its gate");
        // Five requests of two tenants arrive while that query is on its way.
        let mut waiting: Vec<_> = (0..5u128)
            .map(|i| Box::pin(flights.share(Uuid::from_u128(2 + i % 2), instant(&sent))))
            .collect();
        for w in &mut waiting {
            assert!(w.as_mut().now_or_never().is_none(), "queued");
        }
        open.send(()).unwrap();
        assert_eq!(leader.await, Some(7));
        // They are answered by one query sent after they arrived, not by the first.
        for w in waiting {
            assert_eq!(w.await, Some(7));
        }
        assert_eq!(sent.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_dropped_as_it_is_handed_the_lead_passes_it_on() {
        let flights = Flights::default();
        let sent = Arc::new(AtomicUsize::new(0));
        let (open, gate) = oneshot::channel();
        let mut leader = Box::pin(flights.share(Uuid::from_u128(1), gated(&sent, gate)));
        assert!((&mut leader).now_or_never().is_none());
        let mut first = Box::pin(flights.share(Uuid::from_u128(2), instant(&sent)));
        let mut second = Box::pin(flights.share(Uuid::from_u128(3), instant(&sent)));
        assert!((&mut first).now_or_never().is_none());
        assert!((&mut second).now_or_never().is_none());
        // The leader lands and hands the lead to `first`, which goes away before it
        // sees that.
        open.send(()).unwrap();
        assert_eq!(leader.await, Some(7));
        drop(first);
        let answered = tokio::time::timeout(Duration::from_secs(5), second).await;
        assert_eq!(answered.expect("the queue stalled"), Some(7));
        // And the flights are free again.
        assert_eq!(
            flights.share(Uuid::from_u128(4), instant(&sent)).await,
            Some(7)
        );
    }

    #[tokio::test]
    async fn a_leader_dropped_mid_query_lets_the_waiting_go() {
        let flights = Flights::default();
        let sent = Arc::new(AtomicUsize::new(0));
        let (_never, gate) = oneshot::channel();
        let mut leader = Box::pin(flights.share(Uuid::from_u128(1), gated(&sent, gate)));
        assert!((&mut leader).now_or_never().is_none());
        let mut waiting = Box::pin(flights.share(Uuid::from_u128(2), instant(&sent)));
        assert!((&mut waiting).now_or_never().is_none());
        drop(leader);
        // The waiting request is let go (it asks on its own) …
        let answered = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(answered.expect("the waiting request stalled"), None);
        // … and the next request leads a flight of its own.
        assert_eq!(
            flights.share(Uuid::from_u128(3), instant(&sent)).await,
            Some(7)
        );
    }
}
