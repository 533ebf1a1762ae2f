//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Two or more replicas run; the one holding the Lease reconciles, the others wait. The
//! holder renews every `renew_every`; a holder that stops renewing loses the Lease after
//! `lease_duration`, and a waiting replica takes it over. Every write is a replace guarded
//! by `resourceVersion`, so two replicas can never both believe they won the same round.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};

/// Settings of the election.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

/// Whether `spec` lets `identity` take or keep the Lease at `now` (seconds).
pub fn may_hold(spec: &LeaseSpec, identity: &str, now_seconds: i64) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == identity {
        return true;
    }
    let renewed = spec
        .renew_time
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    renewed + duration < now_seconds
}

/// One round: take or renew the Lease. `Ok(true)` while this replica holds it.
pub async fn try_acquire_or_renew(
    client: &Client,
    config: &LeaseConfig,
) -> Result<bool, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let now = k8s_openapi::jiff::Timestamp::now();
    let duration = i32::try_from(config.lease_duration.as_secs()).unwrap_or(15);
    match api.get_opt(&config.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(config.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            if !may_hold(&spec, &config.identity, now.as_second()) {
                return Ok(false);
            }
            let taking_over = spec.holder_identity.as_deref() != Some(config.identity.as_str());
            lease.spec = Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration),
                acquire_time: if taking_over {
                    Some(MicroTime(now))
                } else {
                    spec.acquire_time.clone()
                },
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(
                    spec.lease_transitions.unwrap_or(0) + i32::from(taking_over),
                ),
                ..spec
            });
            // Replace carries the resourceVersion we read: a concurrent writer makes it 409.
            match api
                .replace(&config.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this replica holds the Lease.
pub async fn acquire(client: &Client, config: &LeaseConfig) {
    loop {
        match try_acquire_or_renew(client, config).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election: lease not reachable"),
        }
        tokio::time::sleep(config.renew_every).await;
    }
}

/// Renews the Lease until a renewal fails for longer than the lease duration (or another
/// replica took it); returns then, and the caller must stop reconciling.
pub async fn hold(client: &Client, config: &LeaseConfig) {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(config.renew_every).await;
        match try_acquire_or_renew(client, config).await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "leader election: renewal failed");
                // Give up before the Lease can expire under us: a successor may start
                // once it has, and two leaders must never overlap.
                if last_renewed.elapsed() + config.renew_every >= config.lease_duration {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            renew_time: Some(MicroTime(
                k8s_openapi::jiff::Timestamp::from_second(renewed).unwrap(),
            )),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn holder_keeps_others_wait_until_expiry() {
        assert!(
            may_hold(&spec(Some("a"), 100, 15), "a", 200),
            "own lease, even stale"
        );
        assert!(
            !may_hold(&spec(Some("a"), 100, 15), "b", 110),
            "fresh lease of another"
        );
        assert!(
            !may_hold(&spec(Some("a"), 100, 15), "b", 115),
            "exactly at expiry"
        );
        assert!(may_hold(&spec(Some("a"), 100, 15), "b", 116), "expired");
        assert!(may_hold(&spec(None, 100, 15), "b", 101), "released");
        assert!(may_hold(&spec(Some(""), 100, 15), "b", 101), "released");
    }
}
