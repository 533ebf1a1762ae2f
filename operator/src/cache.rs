//! The watch caches the reconcilers read instead of asking the apiserver on every
//! reconcile (issue 5: at 200 networks the operator's per-reconcile reads were about a
//! quarter of the apiserver's requests, time the PV controller waits for).
//!
//! The stores are filled by the network controller's own watches
//! ([`crate::controller::run`]: the same streams trigger its reconciles), so they cost no
//! request beyond the watches it had. A cache may lag the apiserver by a few
//! milliseconds, and a store is only read once its first list is in
//! ([`Caches`]' accessors return `None` before, and the reconciler then reads live). Why
//! each read is safe from a lagging cache is said where it is read; the rules:
//!
//! * writes stay server-side apply (idempotent) or are guarded by `resourceVersion`, so
//!   a decision made on an older object repeats or fails, never undoes a newer one;
//! * whatever must never be recreated — a key Secret, the genesis ConfigMap — is
//!   created only after a **live** read found it missing, never because the cache lacks
//!   it.
//!
//! Key Secrets are cached as **metadata only** (name, labels, `resourceVersion`): their
//! public keys are remembered per `resourceVersion` ([`PublicKeyMemo`]), so private key
//! material is held only during the reconcile that reads it live, and never logged.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{Lookup, ObjectRef, Store};
use trellis_crd::{ChainMember, ChainNetwork};

use crate::keys::PublicKeys;
use crate::labels;

/// Read handles of the network controller's watch caches.
#[derive(Clone)]
pub struct Caches {
    /// `ChainNetwork`s (the controller's own store).
    pub networks: Store<ChainNetwork>,
    /// StatefulSets labelled `app.kubernetes.io/managed-by=trellis-operator`: the
    /// networks' committees and the members' validators.
    pub stateful_sets: Store<StatefulSet>,
    /// The networks' genesis ConfigMaps (managed, component `network`).
    pub genesis: Store<ConfigMap>,
    /// Metadata of the networks' key Secrets (managed): which exist, at which version.
    pub key_secrets: Store<PartialObjectMeta<Secret>>,
    /// `ChainMember`s.
    pub members: Store<ChainMember>,
}

/// The store once its first list is in; `None` before (read live then).
fn listed<K>(store: &Store<K>) -> Option<&Store<K>>
where
    K: Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
        .then_some(store)
}

impl Caches {
    /// The StatefulSets `network` manages in `namespace`, selected as the live list did
    /// (`managed_children_selector`); `None` while the cache is not listed.
    pub fn network_stateful_sets(
        &self,
        namespace: &str,
        network: &str,
    ) -> Option<Vec<StatefulSet>> {
        let store = listed(&self.stateful_sets)?;
        Some(
            store
                .state_filter(|s| {
                    let label = |key: &str| ResourceExt::labels(s).get(key).map(String::as_str);
                    s.metadata.namespace.as_deref() == Some(namespace)
                        && label(labels::INSTANCE) == Some(network)
                        && label(labels::MANAGED_BY) == Some(labels::MANAGER)
                })
                .iter()
                .map(|s| StatefulSet::clone(s))
                .collect(),
        )
    }

    /// A managed StatefulSet: `Some(None)` when the listed cache has none of that name.
    pub fn stateful_set(&self, namespace: &str, name: &str) -> Option<Option<Arc<StatefulSet>>> {
        let store = listed(&self.stateful_sets)?;
        Some(store.get(&ObjectRef::new(name).within(namespace)))
    }

    /// A genesis ConfigMap the cache holds. A miss says nothing (maybe not listed yet,
    /// maybe just created): the caller reads live.
    pub fn genesis(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        let store = listed(&self.genesis)?;
        store
            .get(&ObjectRef::new(name).within(namespace))
            .map(|g| ConfigMap::clone(&g))
    }

    /// Every cached `ChainMember`; `None` while the cache is not listed.
    pub fn members(&self) -> Option<Vec<Arc<ChainMember>>> {
        Some(listed(&self.members)?.state())
    }

    /// A network the cache holds; a miss says nothing (the caller reads live).
    pub fn network(&self, namespace: &str, name: &str) -> Option<ChainNetwork> {
        let store = listed(&self.networks)?;
        store
            .get(&ObjectRef::new(name).within(namespace))
            .map(|n| ChainNetwork::clone(&n))
    }

    /// The `resourceVersion` of a key Secret the cache holds.
    pub fn key_secret_version(&self, namespace: &str, name: &str) -> Option<String> {
        let store = listed(&self.key_secrets)?;
        store
            .get(&ObjectRef::new(name).within(namespace))
            .and_then(|s| s.metadata.resource_version.clone())
    }
}

/// Public keys of one key Secret as read (or written) at one `resourceVersion`.
#[derive(Debug, Clone)]
struct ReadKeys {
    resource_version: String,
    public_keys: BTreeMap<String, PublicKeys>,
}

/// Public keys of the networks' key Secrets, per network (namespace/name), then Secret
/// name, with the `resourceVersion` they were read at. A `resourceVersion` names one
/// exact version of an object, so keys remembered for the version the cache shows are
/// that Secret's keys; and since entries are never replaced (only added), keys read at
/// an older version stay true.
#[derive(Debug, Default)]
pub struct PublicKeyMemo(Mutex<HashMap<String, HashMap<String, ReadKeys>>>);

impl PublicKeyMemo {
    /// Remembers `public_keys` of Secret `secret` of `network` at `resource_version`.
    pub fn remember(
        &self,
        network: &str,
        secret: &str,
        resource_version: Option<&str>,
        public_keys: &BTreeMap<String, PublicKeys>,
    ) {
        let Some(resource_version) = resource_version else {
            return;
        };
        if let Ok(mut memo) = self.0.lock() {
            memo.entry(network.to_owned()).or_default().insert(
                secret.to_owned(),
                ReadKeys {
                    resource_version: resource_version.to_owned(),
                    public_keys: public_keys.clone(),
                },
            );
        }
    }

    /// The public keys of `entries` of Secret `secret` at `resource_version`, when
    /// remembered for exactly that version and complete.
    pub fn recall(
        &self,
        network: &str,
        secret: &str,
        resource_version: &str,
        entries: &[String],
    ) -> Option<BTreeMap<String, PublicKeys>> {
        let memo = self.0.lock().ok()?;
        let read = memo.get(network)?.get(secret)?;
        if read.resource_version != resource_version {
            return None;
        }
        entries
            .iter()
            .map(|e| Some((e.clone(), read.public_keys.get(e)?.clone())))
            .collect()
    }

    /// Drops what is remembered for a deleted network.
    pub fn forget(&self, network: &str) {
        if let Ok(mut memo) = self.0.lock() {
            memo.remove(network);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(entries: &[&str]) -> BTreeMap<String, PublicKeys> {
        entries
            .iter()
            .map(|e| {
                (
                    (*e).to_owned(),
                    PublicKeys {
                        node: format!("node-{e}"),
                        admin: format!("admin-{e}"),
                    },
                )
            })
            .collect()
    }

    fn entries(e: &[&str]) -> Vec<String> {
        e.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn recalls_only_the_version_read_and_only_complete_sets() {
        let memo = PublicKeyMemo::default();
        memo.remember(
            "ns/alpha",
            "alpha-beacon-keys",
            Some("7"),
            &keys(&["a", "b"]),
        );
        assert_eq!(
            memo.recall("ns/alpha", "alpha-beacon-keys", "7", &entries(&["a", "b"])),
            Some(keys(&["a", "b"]))
        );
        // Another version (the Secret changed, or was deleted and made again): read live.
        assert_eq!(
            memo.recall("ns/alpha", "alpha-beacon-keys", "8", &entries(&["a"])),
            None
        );
        // An entry not read yet (a validator added): read live.
        assert_eq!(
            memo.recall("ns/alpha", "alpha-beacon-keys", "7", &entries(&["a", "c"])),
            None
        );
        // Without a version nothing is remembered.
        memo.remember("ns/alpha", "alpha-admin-key", None, &keys(&["x"]));
        assert_eq!(
            memo.recall("ns/alpha", "alpha-admin-key", "", &entries(&["x"])),
            None
        );
        memo.forget("ns/alpha");
        assert_eq!(
            memo.recall("ns/alpha", "alpha-beacon-keys", "7", &entries(&["a"])),
            None
        );
    }
}
