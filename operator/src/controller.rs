//! The `ChainNetwork` reconciler: dereference → validate → keys → build → apply → status.
//!
//! Only this module talks to the apiserver; planning ([`trellis_crd::topology`]),
//! building ([`crate::build`]) and status ([`crate::status`]) are pure.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};
use trellis_crd::founders;
use trellis_crd::topology::{NetworkId, plan_with_shards};
use trellis_crd::validate::validate;
use trellis_crd::{ChainNetwork, ChainNetworkStatus, NetworkEndpoints};

use crate::archive;
use crate::build::{self, BuildError, BuildInput, BuildOptions, Children};
use crate::cache::{Caches, PublicKeyMemo};
use crate::chain::{
    BeaconEndpoint, ChainClient, ChainError, CommitteeNodes, NewValidator, PoolRequest,
    PoolValidator, ScaleRequest, Seed,
};
use crate::endpoints::NodeRef;
use crate::genesis;
use crate::keys::{self, KeyError};
use crate::labels;
use crate::metrics::Metrics;
use crate::pool;
use crate::reshard;
use crate::rollout::{self, Gate, ObservedRollout};
use crate::status::{self, ObservedCommittee, ShardChain, StatusInput};

/// Requeue interval of a settled network (status refresh, drift repair).
const SETTLED_REQUEUE: Duration = Duration::from_secs(300);
/// Requeue interval while something is still moving.
const BUSY_REQUEUE: Duration = Duration::from_secs(15);
/// Requeue interval while a roll waits for a validator to come back and finalize, or the
/// validator pool for the beacon to place or release its validators: the StatefulSet's
/// events do not say when the chain moved.
const ROLLING_REQUEUE: Duration = Duration::from_secs(5);
/// Requeue interval of a settled network whose nodes answer: keeps `ChainHealthy` fresh
/// (a stall shows within this plus [`status::FINALITY_STALL`]).
const CHAIN_REQUEUE: Duration = Duration::from_secs(60);

/// Reconcile failures, by category (the `category` label of the error metric).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("build: {0}")]
    Build(#[from] BuildError),
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
}

impl Error {
    /// Stable, low-cardinality name for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_api",
            Error::Build(_) => "build",
            Error::Keys(_) => "keys",
        }
    }
}

/// Shared state of the reconciler.
pub struct Context {
    pub client: Client,
    pub chain: Arc<dyn ChainClient>,
    pub options: BuildOptions,
    /// Networks reconciled at the same time (0: unbounded).
    pub concurrency: u16,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// What was last applied per network (namespace/name): skips re-applying an
    /// unchanged set of children on status-only events (see [`ApplyRecord`]).
    applied: std::sync::Mutex<std::collections::HashMap<String, ApplyRecord>>,
    /// Last finalized height seen per committee (namespace/committee) and since when:
    /// "finality advancing" needs a memory across reconciles.
    finality: std::sync::Mutex<std::collections::HashMap<String, (u64, Instant)>>,
    /// When each network's status last got fresh chain figures (see
    /// [`status::keep_chain_figures`]).
    chain_written: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    /// The built-in autoscaler's memory per network (namespace/name).
    pub(crate) autoscalers:
        std::sync::Mutex<std::collections::HashMap<String, trellis_autoscale::LoadHistory>>,
    /// The watch caches, once [`run`] started them. None (a reconcile called without
    /// the controller, as some tests do): every read goes to the apiserver.
    caches: std::sync::RwLock<Option<Caches>>,
    /// Public keys of the key Secrets by `resourceVersion` (see [`crate::cache`]).
    key_memo: PublicKeyMemo,
}

/// The last full apply of one network's children.
#[derive(Debug, Clone)]
struct ApplyRecord {
    fingerprint: String,
    at: Instant,
}

/// Default bound on concurrent reconciles: enough to keep the apiserver busy, few enough
/// that one reconcile's round trips are not queued behind hundreds of others.
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// Triggers for one network within this long are served by one reconcile: its pods turn
/// Ready one by one, each a StatefulSet status write that wakes the watch, and the
/// reconcile only needs to see where they ended up.
const DEBOUNCE: Duration = Duration::from_secs(1);

/// A full apply (and drift repair) runs at least this often even when nothing changed.
const DRIFT_REPAIR: Duration = Duration::from_secs(300);

impl Context {
    pub fn new(
        client: Client,
        chain: Arc<dyn ChainClient>,
        options: BuildOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: labels::MANAGER.to_owned(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Self {
            client,
            chain,
            options,
            metrics,
            recorder,
            concurrency: DEFAULT_CONCURRENCY,
            applied: std::sync::Mutex::default(),
            finality: std::sync::Mutex::default(),
            chain_written: std::sync::Mutex::default(),
            autoscalers: std::sync::Mutex::default(),
            caches: std::sync::RwLock::default(),
            key_memo: PublicKeyMemo::default(),
        }
    }

    /// The watch caches, when the controller runs (see [`crate::cache`]).
    pub fn caches(&self) -> Option<Caches> {
        self.caches.read().ok()?.clone()
    }
}

/// Runs the controller until `shutdown` resolves, watching one namespace or (None) all.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    fn no_trigger<K>(_: K) -> Option<ObjectRef<ChainNetwork>> {
        None
    }
    fn no_managed_fields<K: Resource>(object: &mut K) {
        // Nothing reads them from the caches; they are most of a small object's size.
        object.meta_mut().managed_fields = None;
    }
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let managed_labels = format!("{}={}", labels::MANAGED_BY, labels::MANAGER);
    let managed = watcher::Config::default().labels(&managed_labels);
    // Each watch below fills a reflector store the reconcilers read (crate::cache) and,
    // where it says so, triggers reconciles: one watch per kind serves both.
    let (stateful_sets, sets_writer) = reflector::store();
    let sets = watcher(scoped::<StatefulSet>(&client, ns), managed.clone())
        .default_backoff()
        .modify(no_managed_fields)
        .reflect(sets_writer)
        .touched_objects();
    // Genesis ConfigMaps only (the committees' ConfigMaps carry their committee's
    // component): read on every reconcile, changed never.
    let (genesis, genesis_writer) = reflector::store();
    let genesis_maps = watcher(
        scoped::<ConfigMap>(&client, ns),
        watcher::Config::default().labels(&format!(
            "{managed_labels},{}={}",
            labels::COMPONENT,
            labels::NETWORK_COMPONENT
        )),
    )
    .default_backoff()
    .modify(no_managed_fields)
    .reflect(genesis_writer)
    .touched_objects();
    // Key Secrets as metadata only: which exist, at which resourceVersion; their keys are
    // read live (crate::cache::PublicKeyMemo).
    let (key_secrets, secrets_writer) = reflector::store();
    let secrets = watcher(
        scoped::<PartialObjectMeta<Secret>>(&client, ns),
        managed.clone(),
    )
    .default_backoff()
    .modify(no_managed_fields)
    .reflect(secrets_writer)
    .touched_objects();
    let (members, members_writer) = reflector::store();
    let member_events = watcher(
        scoped::<trellis_crd::ChainMember>(&client, ns),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(no_managed_fields)
    .reflect(members_writer)
    .touched_objects();
    let controller = Controller::new(
        scoped::<ChainNetwork>(&client, ns),
        watcher::Config::default().any_semantic(),
    );
    if let Ok(mut caches) = ctx.caches.write() {
        *caches = Some(Caches {
            networks: controller.store(),
            stateful_sets,
            genesis,
            key_secrets,
            members,
        });
    }
    controller
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(ctx.concurrency)
                .debounce(DEBOUNCE),
        )
        // The network's own StatefulSets and, mapped by their labels, its members'
        // (owned by their `ChainMember`s): a member's pods becoming Ready update shard
        // 0's status at once, not at the next requeue. One watch serves both.
        .watches_stream(sets, |set| stateful_set_network(&set))
        .owns(scoped::<Service>(&client, ns), managed)
        // A member's phase decides whether its validators count in shard 0 (quorum, PDB,
        // status): its network is reconciled when it changes, not at the next requeue.
        .watches_stream(member_events, |member| member_network(&member))
        // Genesis and key Secrets change only by this reconciler's own writes: their
        // watches fill the caches and trigger nothing.
        .watches_stream(genesis_maps, no_trigger)
        .watches_stream(secrets, no_trigger)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
}

/// The network a `ChainMember` belongs to (`spec.network`, in the member's namespace
/// unless it names another).
pub fn member_network(
    member: &trellis_crd::ChainMember,
) -> Option<kube::runtime::reflector::ObjectRef<ChainNetwork>> {
    let namespace = member
        .spec
        .network
        .namespace
        .clone()
        .or_else(|| member.namespace())?;
    Some(kube::runtime::reflector::ObjectRef::new(&member.spec.network.name).within(&namespace))
}

/// The network a StatefulSet's state counts for: the owner of a committee's
/// StatefulSet, or, for a member's validators (owned by their `ChainMember`, maybe in
/// another namespace), the network its labels name. Others (not ours): none.
pub fn stateful_set_network(
    set: &StatefulSet,
) -> Option<kube::runtime::reflector::ObjectRef<ChainNetwork>> {
    use kube::runtime::reflector::ObjectRef;
    let namespace = set.namespace()?;
    let owner = set
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))?;
    let owned_by =
        |kind: &str, api_version: &str| owner.kind == kind && owner.api_version == api_version;
    if owned_by(&ChainNetwork::kind(&()), &ChainNetwork::api_version(&())) {
        return Some(ObjectRef::new(&owner.name).within(&namespace));
    }
    type Member = trellis_crd::ChainMember;
    let labels = set.labels();
    let member = owned_by(&Member::kind(&()), &Member::api_version(&()))
        && labels.get(labels::COMPONENT).map(String::as_str)
            == Some(crate::member::nodes::MEMBER_COMPONENT);
    if !member {
        return None;
    }
    let network = labels.get(labels::INSTANCE)?;
    let network_ns = labels.get(labels::NETWORK_NAMESPACE).unwrap_or(&namespace);
    Some(ObjectRef::new(network).within(network_ns))
}

/// Requeue on failure. The delay grows with nothing but the error kind: API errors are
/// usually transient (conflicts, restarts), build and key errors need a human.
pub fn error_policy(network: Arc<ChainNetwork>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error(error.category());
    warn!(network = %network.name_any(), namespace = ?network.namespace(), category = error.category(), error = %error, "reconcile error");
    match error {
        Error::Kube(_) => Action::requeue(Duration::from_secs(5)),
        Error::Build(_) | Error::Keys(_) => Action::requeue(Duration::from_secs(60)),
    }
}

/// One reconcile of one network, timed and counted.
pub async fn reconcile(network: Arc<ChainNetwork>, ctx: Arc<Context>) -> Result<Action, Error> {
    use tracing::Instrument;
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        network = %network.name_any(),
        namespace = network.namespace().unwrap_or_default(),
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let result = reconcile_inner(&network, &ctx)
        .instrument(span.clone())
        .await;
    ctx.metrics.reconciled(started.elapsed());
    // Exported with the span (docs/observability.md): "ok" or the error's category.
    match &result {
        Ok(_) => span.record("outcome", "ok"),
        Err(e) => span
            .record("otel.status_code", "error")
            .record("outcome", e.category()),
    };
    result
}

async fn reconcile_inner(network: &ChainNetwork, ctx: &Context) -> Result<Action, Error> {
    // Children go with the network by garbage collection (owner references); nothing
    // outside the cluster needs clean-up, so there is no finalizer.
    if network.meta().deletion_timestamp.is_some() {
        let key = format!(
            "{}/{}",
            network.namespace().unwrap_or_default(),
            network.name_any()
        );
        if let Ok(mut applied) = ctx.applied.lock() {
            applied.remove(&key);
        }
        if let Ok(mut finality) = ctx.finality.lock() {
            finality.retain(|k, _| !k.starts_with(&format!("{key}-")));
        }
        if let Ok(mut written) = ctx.chain_written.lock() {
            written.remove(&key);
        }
        if let Ok(mut memory) = ctx.autoscalers.lock() {
            memory.remove(&key);
        }
        ctx.key_memo.forget(&key);
        return Ok(Action::await_change());
    }
    let Some(namespace) = network.namespace() else {
        return Ok(Action::await_change());
    };
    let name = network.name_any();
    let id = NetworkId::new(namespace.clone(), name.clone());
    let client = &ctx.client;
    let previous = network.status.as_ref();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let selector = labels::selector_string(&labels::component_selector(&name, "shard"));

    // Validate. An invalid spec gets a condition and an Event and waits for a change;
    // so does a valid one the node cannot run (see crate::genesis::unsupported).
    if let Some(invalid) = validate(&name, &network.spec)
        .err()
        .or_else(|| genesis::unsupported(&network.spec))
    {
        let chain = Err(ChainError::NotImplemented("trellis_status"));
        let no_readings = BTreeMap::new();
        let no_rollouts = BTreeMap::new();
        let next = status::compute(&StatusInput {
            generation: network.metadata.generation,
            spec: &network.spec,
            topology: Err(&invalid),
            observed: &BTreeMap::new(),
            shards: None,
            chain: &chain,
            shard_chain: &no_readings,
            rollouts: &no_rollouts,
            scale_submission: None,
            previous,
            selector,
            endpoints: None,
            members: &[],
            now,
        });
        write_status(ctx, network, next).await?;
        return Ok(Action::await_change());
    }

    // Dereference: the shard count the chain runs, the StatefulSets that exist.
    let caches = ctx.caches();
    let genesis_api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    // The genesis ConfigMap from the cache when it holds it: written once and never
    // changed, so any cached copy is the stored one. A miss (not listed yet, or just
    // created) is read live: a missing genesis is created, or reported lost, only on a
    // live read, never because the cache lags.
    let genesis = match caches
        .as_ref()
        .and_then(|c| c.genesis(&namespace, &build::genesis_name(&name)))
    {
        Some(cached) => Some(cached),
        None => genesis_api.get_opt(&build::genesis_name(&name)).await?,
    };
    // A stored genesis must be one this operator can continue (see genesis::stored).
    let genesis_shards = genesis
        .as_ref()
        .map(genesis::stored)
        .transpose()?
        .map(|g| genesis::shard_count(&g));
    let desired = u16::try_from(network.spec.shards.count).unwrap_or(1);
    // The beacon says which shards run; without it, the last recorded count.
    let mut beacon = beacon_endpoint(&id, &network.spec, &namespace);
    let chain = ctx.chain.beacon_view(&beacon).await;
    let recorded = previous
        .and_then(|s| s.shard_count)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c > 0)
        .or(genesis_shards);
    let recorded = recorded.unwrap_or(desired);
    let owned_selector = labels::managed_children_selector(&name);
    // The StatefulSets from the watch cache: the watch that triggered this reconcile
    // filled it, so it holds at least the change that woke us. A copy older than our
    // last write decides nothing wrong: status is rewritten from the next event; applies
    // are idempotent (a set missing from the cache is applied again, one deleted but
    // still cached is applied on its deletion's event); a roll step needs the set's own
    // report for its current generation, so an older copy only repeats a step already
    // applied; orphans are listed live before anything is deleted.
    let observed_sets = match caches
        .as_ref()
        .and_then(|c| c.network_stateful_sets(&namespace, &name))
    {
        Some(sets) => sets,
        None => {
            let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
            sts_api
                .list(&ListParams::default().labels(&owned_selector))
                .await?
                .items
        }
    };
    let observed = observe(&observed_sets);
    // Every slot that may have nodes is asked: the shards in service, the ones the
    // change adds or removes, and any shard StatefulSet left from an earlier change.
    let shard_prefix = format!("{name}-shard-");
    let existing_slots = observed
        .keys()
        .filter_map(|set| set.strip_prefix(&shard_prefix)?.parse::<u16>().ok())
        .map(|slot| slot.saturating_add(1))
        .max()
        .unwrap_or(0);
    let beacon_count = chain.as_ref().map_or(0, |view| {
        view.shard_count.max(view.pending_shard_count.unwrap_or(0))
    });
    let candidates = desired.max(recorded).max(beacon_count).max(existing_slots);
    // Admitted members' validators vote in shard 0; founders removed from the chain
    // leave its StatefulSet (trellis_crd::founders).
    let (members, retired) = member_validators(client, caches.as_ref(), network).await?;
    let provisioned = |t| founders::retire(genesis::provisioned(t), &retired);
    let candidate_topology = match plan_with_shards(&id, &network.spec, candidates) {
        Ok(t) => provisioned(t),
        // validate() passed, so planning cannot fail; treat it as a build error if it does.
        Err(e) => return Err(BuildError::Render("topology", e.to_string()).into()),
    };
    // The beacon's own validators gate its rolls like a shard's (see crate::rollout).
    let beacon_nodes = CommitteeNodes {
        chain_id: beacon.chain_id.clone(),
        nodes: beacon.nodes.clone(),
    };
    let (shard_chain, beacon_chain) = futures::join!(
        read_shards(ctx, &namespace, &candidate_topology),
        ctx.chain.committee_status(&beacon_nodes)
    );
    let shard_quorum = candidate_topology.shards().next().map_or(usize::MAX, |c| {
        usize::try_from(c.quorum).unwrap_or(usize::MAX)
    });
    let slots = reshard::slot_states(&shard_chain, shard_quorum);
    let shard_plan = reshard::plan(desired, recorded, chain.as_ref().ok(), &slots);
    let in_service = shard_plan.in_service;
    let mut topology = match plan_with_shards(&id, &network.spec, shard_plan.provisioned) {
        Ok(t) => provisioned(t),
        Err(e) => return Err(BuildError::Render("topology", e.to_string()).into()),
    };
    // Drained slots kept as archives (crate::archive): built and keyed with the
    // committees, but not part of the topology that status and rolls look at.
    let keep_seconds = network.spec.shards.drained_history_seconds;
    let unix_now = now.0.as_second();
    let kept_slots: BTreeMap<u16, Option<i64>> = observed_sets
        .iter()
        .filter_map(|set| {
            let name = set.name_any();
            let slot = name.strip_prefix(&shard_prefix)?.parse::<u16>().ok()?;
            Some((slot, archive::drained_at(set)))
        })
        .collect();
    let archives = archive::archives(
        keep_seconds,
        unix_now,
        shard_plan.provisioned,
        &kept_slots,
        &slots,
    );
    let archive_committees: Vec<_> = archives
        .iter()
        .filter_map(|kept| {
            let planned =
                plan_with_shards(&id, &network.spec, kept.shard.saturating_add(1)).ok()?;
            planned
                .committees
                .into_iter()
                .find(|c| c.role == trellis_crd::topology::CommitteeRole::Shard(kept.shard))
        })
        .collect();
    let with_archives = |t: &trellis_crd::topology::Topology| {
        let mut t = t.clone();
        t.committees.extend(archive_committees.iter().cloned());
        t
    };
    // The validator pool (crate::pool): every ordinal that may still run is planned
    // until the beacon's map says which of them stay.
    let pool_desired = u32::try_from(network.spec.pool_replicas()).unwrap_or(0);
    let previous_pool = previous.and_then(|s| s.validator_pool.as_ref());
    let pool_name = id.committee_name(trellis_crd::topology::CommitteeRole::Pool);
    topology.set_pool(pool::candidates(
        pool_desired,
        observed.get(&pool_name).map_or(0, |o| o.replicas),
        previous_pool,
        &pool_name,
    ));
    let mut pool_plan = None;
    let mut pool_request = PoolRequest::default();
    let mut rollouts = BTreeMap::new();

    let mut new_validators = Vec::new();
    let endpoints = NetworkEndpoints {
        rpc: format!(
            "http://{}.{namespace}.svc.{}:{}",
            build::rpc_service_name(&name),
            ctx.options.cluster_domain,
            build::RPC_PORT
        ),
        beacon_peers: topology
            .beacon()
            .map(|b| {
                b.nodes
                    .iter()
                    .map(|n| build::node_p2p_address(&n.name, &b.name, &namespace, &ctx.options))
                    .collect()
            })
            .unwrap_or_default(),
    };

    if !network.spec.paused {
        // Keys first: genesis and bootstrap peers need the public keys. The beacon step
        // signs with private keys, which only a live read gives.
        let NetworkKeys {
            public_by_entry,
            admin_public,
            secrets: existing_secrets,
        } = network_keys(
            ctx,
            caches.as_ref(),
            network,
            &with_archives(&topology),
            &owned_selector,
            shard_plan.needs_beacon() || !pool::settled(previous_pool, pool_desired),
        )
        .await?;
        let admin_name = build::admin_key_secret_name(&name);
        // What the beacon step signs with: the admin key, and the node keys of shards the
        // new count adds (read from Secrets that existed before this reconcile; keys
        // generated just now are read on the next one).
        let key_file = |secret: &str, entry: &str| key_file(&existing_secrets, secret, entry);
        beacon.admin = key_file(&admin_name, keys::ADMIN_KEY_ENTRY).map(|f| Seed(f.admin_key));
        for committee in topology.shards() {
            let trellis_crd::topology::CommitteeRole::Shard(shard) = committee.role else {
                continue;
            };
            if shard < in_service {
                continue;
            }
            let secret = build::key_secret_name(committee);
            for node in &committee.nodes {
                if let Some(file) = key_file(&secret, &keys::node_entry(&node.name)) {
                    let (p2p_address, rpc_address) =
                        registered_addresses(ctx, &namespace, &committee.name, &node.name);
                    new_validators.push(NewValidator {
                        shard,
                        node_key: Seed(file.node_key),
                        p2p_address,
                        rpc_address,
                    });
                }
            }
        }
        let (plan, request) = plan_pool(
            ctx,
            &namespace,
            &topology,
            pool_desired,
            &public_by_entry,
            &existing_secrets,
            chain.as_ref().ok(),
        );
        pool_request = request;
        topology.set_pool(plan.provisioned);
        pool_plan = Some(plan);
        let served = with_archives(&topology);
        let public_keys = build::node_public_keys(&served, &public_by_entry)?;

        let input = BuildInput {
            network,
            topology: &served,
            members: &members,
            public_keys: &public_keys,
            admin_public_key: &admin_public,
            options: &ctx.options,
        };
        let mut children = build::build(&input)?;
        for kept in &archives {
            let name = format!("{shard_prefix}{}", kept.shard);
            if let Some(set) = children
                .stateful_sets
                .iter_mut()
                .find(|set| set.metadata.name.as_deref() == Some(name.as_str()))
            {
                archive::keep_as_archive(set, kept);
            }
        }
        if genesis.is_none() {
            // Genesis is written once, before any pod can read it. A network that ran
            // (its status records shards in service) never gets a new one: its chain
            // started from the lost file, and a rebuilt file would not match it.
            if previous.and_then(|s| s.shard_count).is_some() {
                return Err(BuildError::Render(
                    "genesis",
                    format!(
                        "ConfigMap {} is missing, and the network already ran: restore it \
                         from a backup (rebuilding it would start another chain)",
                        build::genesis_name(&name)
                    ),
                )
                .into());
            }
            create_if_missing(&genesis_api, &genesis::config_map(&input)?).await?;
        }
        // Rolling upgrades: each committee's partition, from its live StatefulSet and
        // the chain (see crate::rollout).
        for set in &mut children.stateful_sets {
            let set_name = set.name_any();
            let Some(committee) = topology.committees.iter().find(|c| c.name == set_name) else {
                continue;
            };
            let nodes: Vec<String> = committee.nodes.iter().map(|n| n.name.clone()).collect();
            let live = observed_sets.iter().find(|s| s.name_any() == set_name);
            let gate = match committee.role {
                trellis_crd::topology::CommitteeRole::Shard(id) => match shard_chain.get(&id) {
                    Some(reading) => Gate::Finality(&reading.chain),
                    None => Gate::ReadinessOnly("the shard's nodes were not asked"),
                },
                trellis_crd::topology::CommitteeRole::Beacon => Gate::Finality(&beacon_chain),
                trellis_crd::topology::CommitteeRole::Pool => Gate::ReadinessOnly(
                    "pool validators serve whichever shard the beacon placed them in",
                ),
            };
            let step = rollout::next_step(
                &build::template_hash(set),
                &nodes,
                live.map(observe_rollout).as_ref(),
                gate,
            );
            build::set_rollout(set, &step);
            rollouts.insert(set_name, step);
        }
        // Pod readiness changes trigger most reconciles and change no child: skip the
        // server-side applies when the same children were applied recently and every
        // StatefulSet still exists. Anything else (spec, keys, a deleted child, or
        // DRIFT_REPAIR elapsed) applies everything.
        let key = format!("{namespace}/{name}");
        let fingerprint = children.fingerprint();
        let all_sets_exist = children.stateful_sets.iter().all(|s| {
            s.metadata
                .name
                .as_ref()
                .is_some_and(|n| observed.contains_key(n))
        });
        let recently_applied = ctx.applied.lock().ok().is_some_and(|applied| {
            applied
                .get(&key)
                .is_some_and(|r| r.fingerprint == fingerprint && r.at.elapsed() < DRIFT_REPAIR)
        });
        let apply_now = !(recently_applied && all_sets_exist);
        if apply_now {
            apply_all(client, &namespace, &children).await?;
            if let Ok(mut applied) = ctx.applied.lock() {
                applied.insert(
                    key,
                    ApplyRecord {
                        fingerprint,
                        at: Instant::now(),
                    },
                );
            }
        }
        // Orphans appear when the spec changed (or the shards in service did, which the
        // StatefulSets show); a settled network skips the five list calls. Orphans are
        // deleted StatefulSets last, so a leftover child always leaves a StatefulSet
        // behind that triggers the next clean-up.
        let desired_sets: BTreeSet<String> = children.names().stateful_sets.into_iter().collect();
        let spec_changed =
            previous.and_then(|p| p.observed_generation) != network.metadata.generation;
        let extra_sets = observed.keys().any(|n| !desired_sets.contains(n));
        // A network never reconciled before (no observed generation) has no orphans of
        // an earlier spec, except committees an interrupted earlier reconcile applied,
        // whose StatefulSets are extra sets: its first reconcile skips the lists.
        let first_reconcile = previous.and_then(|p| p.observed_generation).is_none();
        if (spec_changed && !first_reconcile) || extra_sets {
            delete_orphans(client, network, &namespace, &owned_selector, &children).await?;
        }
        // The optional ServiceMonitor follows the same rhythm as the other children.
        if apply_now || spec_changed {
            crate::monitoring::reconcile(client, network).await?;
        }
    }

    // The beacon step: ask for the new shard count while it differs.
    let submission = if shard_plan.needs_beacon() && !network.spec.paused {
        let request = ScaleRequest {
            count: shard_plan.desired,
            new_validators,
            load: crate::scaling::load_hint(ctx, network),
        };
        Some(ctx.chain.scale(&beacon, &request).await)
    } else {
        None
    };
    // The pool step: registrations and deregistrations the beacon's map still lacks.
    let pool_step = !pool_request.join.is_empty() || !pool_request.leave.is_empty();
    let pool_submission = if pool_step && !network.spec.paused && !network.spec.stopped {
        Some(ctx.chain.update_pool(&beacon, &pool_request).await)
    } else {
        None
    };

    let mut next = status::compute(&StatusInput {
        generation: network.metadata.generation,
        spec: &network.spec,
        topology: Ok(&topology),
        observed: &observed,
        shards: Some(shard_plan.clone()),
        chain: &chain,
        shard_chain: &shard_chain,
        rollouts: &rollouts,
        scale_submission: submission.as_ref(),
        previous,
        selector,
        endpoints: Some(endpoints),
        members: &members,
        now,
    });
    next.autoscaler = previous.and_then(|p| p.autoscaler.clone());
    next.validator_pool = match &pool_plan {
        Some(plan) => pool::status(
            plan,
            observed.get(&pool_name).map_or(0, |o| o.ready_replicas),
            pool_submission.as_ref(),
            previous_pool.is_some(),
        ),
        // Paused: nothing was asked; the last status stays.
        None => previous_pool.cloned(),
    };
    crate::scaling::autoscale(ctx, network, &topology, &shard_plan, &mut next).await?;
    let settled = next.phase == Some(trellis_crd::NetworkPhase::Running);
    let chain_answers = shard_chain
        .values()
        .any(|r| r.chain.answered().next().is_some());
    // Nodes that should answer and do not (down, or not started yet) are looked at again
    // soon; a client without node RPC (benchmarks) has nothing to look at.
    let chain_silent = !chain_answers
        && shard_chain
            .values()
            .flat_map(|r| r.chain.nodes.values())
            .any(|r| !matches!(r, Err(ChainError::NotImplemented(_))));
    // Chain figures move with every block: refresh them at most every CHAIN_REFRESH, so
    // that writing them does not wake this controller again and again.
    let key = format!("{namespace}/{name}");
    let refresh_due = ctx.chain_written.lock().ok().is_none_or(|written| {
        written
            .get(&key)
            .is_none_or(|at| at.elapsed() >= status::CHAIN_REFRESH)
    });
    let held = match previous {
        Some(previous) if !refresh_due => status::keep_chain_figures(&mut next, previous),
        _ => false,
    };
    if !held && let Ok(mut written) = ctx.chain_written.lock() {
        written.insert(key, Instant::now());
    }
    // The beacon's epoch switch that places or releases pool validators sends no event
    // (without the beacon's map there is nothing to look at sooner).
    let pool_moving = pool_plan.as_ref().is_some_and(|plan| {
        plan.beacon_read
            && plan
                .validators
                .iter()
                .any(|v| v.state != trellis_crd::PoolValidatorState::Placed)
    });
    write_status(ctx, network, next).await?;
    // An archive whose retention ends sooner is removed then, not at the next requeue.
    let archive_expiry =
        archive::next_expiry(&archives, keep_seconds, unix_now).map(Duration::from_secs);
    let requeue = if rollouts.values().any(|r| r.rolling) || pool_moving {
        ROLLING_REQUEUE
    } else if !settled || chain_silent {
        BUSY_REQUEUE
    } else if chain_answers {
        CHAIN_REQUEUE
    } else {
        SETTLED_REQUEUE
    };
    Ok(Action::requeue(
        archive_expiry.map_or(requeue, |expiry| requeue.min(expiry)),
    ))
}

/// A node key file of a key Secret read live (`None` for Secrets from the cache, whose
/// private halves were not read).
fn key_file(
    secrets: &BTreeMap<String, Secret>,
    secret: &str,
    entry: &str,
) -> Option<keys::NodeKeyFile> {
    secrets
        .get(secret)
        .and_then(|s| s.data.as_ref()?.get(entry))
        .and_then(|bytes| keys::NodeKeyFile::parse(&bytes.0))
}

/// The validator pool against the beacon's map (who to register, who leaves, which pods
/// stay: [`pool::plan`]) and what to submit for it. Keys read from the cache have no
/// private half: their steps wait for the next reconcile, which reads them live (the
/// status is not settled then).
fn plan_pool(
    ctx: &Context,
    namespace: &str,
    topology: &trellis_crd::topology::Topology,
    desired: u32,
    public_by_entry: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, Secret>,
    view: Option<&crate::chain::BeaconView>,
) -> (pool::PoolPlan, PoolRequest) {
    let Some(committee) = topology.pool() else {
        return (
            pool::plan(desired, None, &BTreeMap::new(), view.map(|v| &v.placements)),
            PoolRequest::default(),
        );
    };
    let public_keys: BTreeMap<String, String> = committee
        .nodes
        .iter()
        .filter_map(|n| {
            let key = public_by_entry.get(&keys::node_entry(&n.name))?;
            Some((n.name.clone(), key.clone()))
        })
        .collect();
    let plan = pool::plan(
        desired,
        Some(committee),
        &public_keys,
        view.map(|v| &v.placements),
    );
    let secret = build::key_secret_name(committee);
    let validator = |name: &String| {
        let file = key_file(secrets, &secret, &keys::node_entry(name))?;
        let (p2p_address, rpc_address) =
            registered_addresses(ctx, namespace, &committee.name, name);
        Some(PoolValidator {
            node_key: Seed(file.node_key),
            p2p_address,
            rpc_address,
        })
    };
    let request = PoolRequest {
        join: plan.join.iter().filter_map(validator).collect(),
        leave: plan.leave.iter().filter_map(validator).collect(),
    };
    (plan, request)
}

/// Where the beacon tells peers to reach a validator it registers: the stable DNS names,
/// or what the chain client's resolver says (loopback in tests). `(p2p, rpc)`.
fn registered_addresses(
    ctx: &Context,
    namespace: &str,
    committee: &str,
    node: &str,
) -> (String, String) {
    let node_ref = NodeRef {
        namespace: namespace.to_owned(),
        committee: committee.to_owned(),
        node: node.to_owned(),
    };
    (
        ctx.chain
            .p2p_address(&node_ref)
            .unwrap_or_else(|| build::node_p2p_address(node, committee, namespace, &ctx.options)),
        ctx.chain
            .rpc_address(&node_ref)
            .unwrap_or_else(|| build::node_rpc_address(node, committee, namespace, &ctx.options)),
    )
}

/// The beacon committee's nodes (their keys are filled in later, when read).
fn beacon_endpoint(
    id: &NetworkId,
    spec: &trellis_crd::ChainNetworkSpec,
    namespace: &str,
) -> BeaconEndpoint {
    // The beacon and the chain id do not depend on the shard count.
    let topology = trellis_crd::topology::plan(id, spec)
        .ok()
        .map(genesis::provisioned);
    let beacon = topology.as_ref().and_then(|t| {
        t.beacon()
            .map(|b| CommitteeNodes::of(&t.genesis.chain_id, namespace, b))
    });
    let CommitteeNodes { chain_id, nodes } = beacon.unwrap_or(CommitteeNodes {
        chain_id: String::new(),
        nodes: Vec::new(),
    });
    BeaconEndpoint {
        chain_id,
        nodes,
        admin: None,
    }
}

/// Admitted members' validators of a consortium network: the StatefulSets their
/// `ChainMember`s provisioned (in any namespace), for shard 0's quorum, PDB and status.
/// Genesis members have none (their validators are the network's own).
///
/// Both from the watch caches when listed (the operator then sees the members of the
/// namespaces it watches, as its member controller does): a member's phase change and
/// its StatefulSet's changes each trigger this network's reconcile, so a lagging copy
/// is replaced at once, and what it feeds (status, shard 0's PDB) is applied again.
async fn member_validators(
    client: &Client,
    caches: Option<&Caches>,
    network: &ChainNetwork,
) -> Result<(Vec<build::MemberValidators>, Vec<String>), Error> {
    if network.spec.mode != trellis_crd::NetworkMode::Consortium {
        return Ok((Vec::new(), Vec::new()));
    }
    let namespace = network.namespace().unwrap_or_default();
    let name = network.name_any();
    let members: Vec<Arc<trellis_crd::ChainMember>> = match caches.and_then(Caches::members) {
        Some(cached) => cached,
        None => {
            let api: Api<trellis_crd::ChainMember> = Api::all(client.clone());
            api.list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .map(Arc::new)
                .collect()
        }
    };
    let retired = founders::retired_founders(network, members.iter().map(Arc::as_ref));
    let mut found = Vec::new();
    for member in members {
        let member_ns = member.namespace().unwrap_or_default();
        let admitted = member.status.as_ref().and_then(|s| s.phase)
            == Some(trellis_crd::MemberPhase::Admitted);
        if !founders::of_network(&member, &name, &namespace) || !admitted {
            continue;
        }
        let committee =
            crate::member::nodes::member_committee_name(&name, &member.spec.organization);
        let set = match caches.and_then(|c| c.stateful_set(&member_ns, &committee)) {
            Some(cached) => cached.map(|s| StatefulSet::clone(&s)),
            None => {
                let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &member_ns);
                sets.get_opt(&committee).await?
            }
        };
        let Some(set) = set else {
            continue;
        };
        let figures = observe(std::slice::from_ref(&set));
        let observed = figures.get(&committee).copied().unwrap_or_default();
        found.push(build::MemberValidators {
            namespace: member_ns,
            committee,
            validators: u32::try_from(observed.replicas).unwrap_or(0),
            ready: observed.ready_replicas,
        });
    }
    Ok((found, retired))
}

/// Asks every shard committee's validators for their status, and records how long each
/// committee's finalized height has stood still.
async fn read_shards(
    ctx: &Context,
    namespace: &str,
    topology: &trellis_crd::topology::Topology,
) -> BTreeMap<u16, ShardChain> {
    let asks = topology.shards().filter_map(|committee| {
        let trellis_crd::topology::CommitteeRole::Shard(id) = committee.role else {
            return None;
        };
        let nodes = CommitteeNodes::of(&topology.genesis.chain_id, namespace, committee);
        let key = format!("{namespace}/{}", committee.name);
        Some(async move { (id, key, ctx.chain.committee_status(&nodes).await) })
    });
    let answers = futures::future::join_all(asks).await;
    let now = Instant::now();
    let mut readings = BTreeMap::new();
    for (id, key, chain) in answers {
        let unchanged_for = match (chain.finalized_height(), ctx.finality.lock()) {
            (Some(height), Ok(mut seen)) => {
                let entry = seen.entry(key).or_insert((height, now));
                if entry.0 != height {
                    *entry = (height, now);
                }
                now.saturating_duration_since(entry.1)
            }
            _ => Duration::ZERO,
        };
        readings.insert(
            id,
            ShardChain {
                chain,
                unchanged_for,
            },
        );
    }
    readings
}

/// A StatefulSet's roll position (see [`crate::rollout`]).
pub fn observe_rollout(set: &StatefulSet) -> ObservedRollout {
    let annotations = set.metadata.annotations.clone().unwrap_or_default();
    let spec = set.spec.as_ref();
    let status = set.status.clone().unwrap_or_default();
    let current = status.observed_generation == set.metadata.generation;
    ObservedRollout {
        template_hash: annotations.get(rollout::TEMPLATE_HASH_ANNOTATION).cloned(),
        partition: spec
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0),
        step_height: annotations
            .get(rollout::STEP_HEIGHT_ANNOTATION)
            .and_then(|h| h.parse().ok()),
        replicas: spec.and_then(|s| s.replicas).unwrap_or(0),
        updated_replicas: if current {
            status.updated_replicas.unwrap_or(0)
        } else {
            0
        },
        ready_replicas: if current {
            status.ready_replicas.unwrap_or(0)
        } else {
            0
        },
    }
}

/// StatefulSet figures by name.
pub fn observe(sets: &[StatefulSet]) -> BTreeMap<String, ObservedCommittee> {
    sets.iter()
        .map(|s| {
            let status = s.status.clone().unwrap_or_default();
            let replicas = s.spec.as_ref().and_then(|sp| sp.replicas).unwrap_or(0);
            let current = status.observed_generation == s.metadata.generation;
            // A roll is under way when the controller has seen this generation and not
            // every pod runs the update revision yet.
            let rolling = current
                && replicas > 0
                && status.update_revision.is_some()
                && (status.current_revision != status.update_revision
                    || status.updated_replicas.unwrap_or(0) < replicas);
            let updated = !rolling;
            (
                s.name_any(),
                ObservedCommittee {
                    replicas,
                    ready_replicas: if current {
                        status.ready_replicas.unwrap_or(0)
                    } else {
                        0
                    },
                    updated,
                },
            )
        })
        .collect()
}

/// The network's public keys, and the key Secrets when read live.
struct NetworkKeys {
    /// Node public key by Secret entry (`<pod>.key`), every committee's.
    public_by_entry: BTreeMap<String, String>,
    /// The network admin's public key.
    admin_public: String,
    /// The key Secrets by name as read live; empty when the keys came from the cache.
    secrets: BTreeMap<String, Secret>,
}

/// Makes sure every committee's key Secret and the admin key Secret hold a key for each
/// validator; returns the public keys. `private_keys`: the caller signs with them (the
/// beacon step), so the Secrets are read live.
///
/// From the cache when every Secret's metadata is cached at a `resourceVersion` whose
/// public keys were read (or written) here with every entry needed: the memo
/// ([`PublicKeyMemo`]) keeps public keys per exact version, and entries are never
/// replaced, so they are right even when the cache lags. Anything else — a Secret the
/// cache lacks, another version, an entry not read yet — is one live list, and only what
/// that live read finds missing is generated: a lagging cache never makes keys anew.
async fn network_keys(
    ctx: &Context,
    caches: Option<&Caches>,
    network: &ChainNetwork,
    topology: &trellis_crd::topology::Topology,
    owned_selector: &str,
    private_keys: bool,
) -> Result<NetworkKeys, Error> {
    let name = network.name_any();
    let namespace = network.namespace().unwrap_or_default();
    let memo_key = format!("{namespace}/{name}");
    let admin_name = build::admin_key_secret_name(&name);
    // Every key Secret: name, labels, the entries it must hold.
    let mut wanted: Vec<(String, BTreeMap<String, String>, Vec<String>)> = topology
        .committees
        .iter()
        .map(|committee| {
            (
                build::key_secret_name(committee),
                labels::committee_labels(&name, committee),
                committee
                    .nodes
                    .iter()
                    .map(|n| keys::node_entry(&n.name))
                    .collect(),
            )
        })
        .collect();
    wanted.push((
        admin_name.clone(),
        labels::network_labels(&name),
        vec![keys::ADMIN_KEY_ENTRY.to_owned()],
    ));
    let assemble = |sets: Vec<(&String, BTreeMap<String, keys::PublicKeys>)>,
                    secrets: BTreeMap<String, Secret>| {
        let mut public_by_entry = BTreeMap::new();
        let mut admin_public = String::new();
        for (secret, set) in sets {
            if *secret == admin_name {
                admin_public = set
                    .get(keys::ADMIN_KEY_ENTRY)
                    .map(|k| k.admin.clone())
                    .unwrap_or_default();
            } else {
                public_by_entry.extend(set.into_iter().map(|(entry, keys)| (entry, keys.node)));
            }
        }
        NetworkKeys {
            public_by_entry,
            admin_public,
            secrets,
        }
    };
    if !private_keys && let Some(caches) = caches {
        let recalled: Option<Vec<_>> = wanted
            .iter()
            .map(|(secret, _, entries)| {
                let version = caches.key_secret_version(&namespace, secret)?;
                let set = ctx.key_memo.recall(&memo_key, secret, &version, entries)?;
                Some((secret, set))
            })
            .collect();
        if let Some(sets) = recalled {
            return Ok(assemble(sets, BTreeMap::new()));
        }
    }
    // One live list serves every committee's Secret.
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secrets: BTreeMap<String, Secret> = api
        .list(&ListParams::default().labels(owned_selector))
        .await?
        .items
        .into_iter()
        .map(|s| (s.name_any(), s))
        .collect();
    let mut sets = Vec::with_capacity(wanted.len());
    for (secret, secret_labels, entries) in &wanted {
        let (set, version) = ensure_keys(
            &ctx.client,
            network,
            &namespace,
            secrets.get(secret),
            secret,
            secret_labels.clone(),
            entries,
        )
        .await?;
        ctx.key_memo
            .remember(&memo_key, secret, version.as_deref(), &set);
        sets.push((secret, set));
    }
    Ok(assemble(sets, secrets))
}

/// Makes sure Secret `secret_name` holds a key for each of `entries`; returns the public
/// keys by entry and the Secret's `resourceVersion` after this call. Creates the Secret
/// when missing; adds only missing entries otherwise. `existing` must come from a live
/// read: it decides what is generated.
async fn ensure_keys(
    client: &Client,
    network: &ChainNetwork,
    namespace: &str,
    existing: Option<&Secret>,
    secret_name: &str,
    secret_labels: BTreeMap<String, String>,
    entries: &[String],
) -> Result<(BTreeMap<String, keys::PublicKeys>, Option<String>), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let set = keys::complete_keys(secret_name, existing, entries)?;
    if set.missing.is_empty() {
        let version = existing.and_then(|s| s.metadata.resource_version.clone());
        return Ok((set.public_keys, version));
    }
    let data = keys::secret_data(&set.missing);
    let written = match existing {
        None => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(secret_name.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    labels: Some(secret_labels),
                    owner_references: Some(vec![build::owner_reference(network)?]),
                    ..ObjectMeta::default()
                },
                type_: Some("Opaque".to_owned()),
                data: Some(data),
                ..Secret::default()
            };
            // A concurrent creator wins; our keys are dropped and the next reconcile
            // reads theirs (the public keys returned here are then never used).
            api.create(&PostParams::default(), &secret).await?
        }
        Some(secret) => {
            // Add entries only, guarded by resourceVersion: if the Secret changed since
            // we read it, the patch fails and the next reconcile starts over.
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": secret.metadata.resource_version},
                "data": data,
            });
            api.patch(secret_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?
        }
    };
    info!(
        secret = secret_name,
        namespace,
        added = set.missing.len(),
        "generated node keys"
    );
    Ok((set.public_keys, written.metadata.resource_version))
}

async fn create_if_missing<K>(api: &Api<K>, object: &K) -> Result<(), Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn apply<K>(client: &Client, namespace: &str, objects: &[K]) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(labels::MANAGER).force();
    for object in objects {
        let name = object.meta().name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(object)).await?;
    }
    Ok(())
}

/// Server-side apply in a fixed order: what pods reference exists before the pods.
async fn apply_all(client: &Client, namespace: &str, children: &Children) -> Result<(), Error> {
    apply(client, namespace, &children.services).await?;
    apply(client, namespace, &children.config_maps).await?;
    apply(client, namespace, &children.pod_disruption_budgets).await?;
    apply(client, namespace, &children.network_policies).await?;
    apply(client, namespace, &children.stateful_sets).await?;
    Ok(())
}

/// Deletes children of `network` (by label and owner UID) that the build no longer
/// produces. Secrets and the genesis ConfigMap are never orphans: keys of a removed shard
/// stay for when it comes back, and genesis is forever. PVCs are the StatefulSets'
/// (retention policy), never deleted here.
async fn delete_orphans(
    client: &Client,
    network: &ChainNetwork,
    namespace: &str,
    selector: &str,
    children: &Children,
) -> Result<(), Error> {
    let names = children.names();
    let uid = network.metadata.uid.clone().unwrap_or_default();
    let mut keep_config_maps = names.config_maps.clone();
    keep_config_maps.push(build::genesis_name(&network.name_any()));
    delete_unlisted::<PodDisruptionBudget>(
        client,
        namespace,
        selector,
        &uid,
        &names.pod_disruption_budgets,
    )
    .await?;
    delete_unlisted::<NetworkPolicy>(client, namespace, selector, &uid, &names.network_policies)
        .await?;
    delete_unlisted::<ConfigMap>(client, namespace, selector, &uid, &keep_config_maps).await?;
    delete_unlisted::<Service>(client, namespace, selector, &uid, &names.services).await?;
    delete_unlisted::<StatefulSet>(client, namespace, selector, &uid, &names.stateful_sets).await?;
    Ok(())
}

async fn delete_unlisted<K>(
    client: &Client,
    namespace: &str,
    selector: &str,
    owner_uid: &str,
    keep: &[String],
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let keep: BTreeSet<&str> = keep.iter().map(String::as_str).collect();
    for object in api
        .list_metadata(&ListParams::default().labels(selector))
        .await?
    {
        let owned = object
            .owner_references()
            .iter()
            .any(|o| o.uid == owner_uid && o.controller == Some(true));
        let name = object.name_any();
        if owned && !keep.contains(name.as_str()) {
            info!(
                kind = K::kind(&()).as_ref(),
                name, namespace, "deleting orphaned child"
            );
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Writes the status when it changed, and publishes an Event per condition transition.
async fn write_status(
    ctx: &Context,
    network: &ChainNetwork,
    next: ChainNetworkStatus,
) -> Result<(), Error> {
    let previous = network.status.clone().unwrap_or_default();
    if previous == next {
        return Ok(());
    }
    let api: Api<ChainNetwork> =
        Api::namespaced(ctx.client.clone(), &network.namespace().unwrap_or_default());
    let patch = serde_json::json!({"status": next});
    api.patch_status(
        &network.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    let reference = network.object_ref(&());
    for transition in status::transitions(&previous.conditions, &next.conditions) {
        let warning = (transition.type_ == status::DEGRADED && transition.status == "True")
            || (transition.type_ == status::CHAIN_HEALTHY && transition.status == "False")
            || transition.reason == "InvalidSpec"
            || transition.reason == "QuorumLost";
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: transition.reason.clone(),
            note: Some(format!(
                "{}={}: {}",
                transition.type_, transition.status, transition.message
            )),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        // Events are best effort: a failure to record one must not fail the reconcile.
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, "could not publish event");
        }
    }
    Ok(())
}
