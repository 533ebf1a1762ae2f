//! The `kube` provisioner: desired networks become `ChainNetwork` resources that the
//! operator reconciles.
//!
//! - One namespace per tenant, `trellis-<tenant_slug>`, created (server-side applied) on
//!   every apply, labelled with the tenant id.
//! - One `ChainNetwork` named after the network, built by the pure [`chain_network`],
//!   written with server-side apply under the field manager [`FIELD_MANAGER`] (forced:
//!   the console owns the fields it sets — except `spec.shards.count` while the
//!   network autoscales, which is the operator's autoscaler's: [`applied_object`]).
//! - The console generation is in the annotation [`GENERATION_ANNOTATION`]. Before each
//!   apply the existing resource is read; [`decide`] skips a generation lower than the
//!   recorded one, and the apply carries the read `resourceVersion`, so a concurrent
//!   writer makes it fail with a conflict (`Unavailable`, retried) instead of racing.
//! - A new network's treasury account is funded through `spec.genesisBalances`, its key
//!   kept in a Secret next to it ([`super::kube_treasury`]).
//! - `observe` maps the resource's status onto [`ObservedStatus`]; `delete` sets
//!   `spec.retainLedgerOnDelete` as asked and deletes the resource.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, ResourceQuotaSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use trellis_crd::network::MAX_NETWORK_NAME_LEN;
use trellis_crd::{
    AutoscalingSpec, BeaconSpec, ChainNetwork, ChainNetworkSpec, ConsortiumMember, NetworkMode,
    NetworkPhase, ShardsSpec,
};

use super::{
    DesiredNetwork, GovernanceSigner, MemberChainState, NetworkRef, ObservedPhase, ObservedStatus,
    ProvisionError, Provisioner, ShardStatus, TenantQuota, kube_governance, kube_treasury,
};
use crate::networks::spec::{self, NetworkSpec};
use std::sync::{Arc, OnceLock};

/// Field manager of every server-side apply the console makes.
pub const FIELD_MANAGER: &str = "trellis-console";
/// The console generation a `ChainNetwork` was written from.
pub const GENERATION_ANNOTATION: &str = "console.trellis.dev/generation";
pub const TENANT_ID_LABEL: &str = "console.trellis.dev/tenant-id";
pub const NETWORK_ID_LABEL: &str = "console.trellis.dev/network-id";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Default repository of the `trellis-node` image; the tag is the node version.
pub const DEFAULT_NODE_IMAGE_REPOSITORY: &str = "ghcr.io/trellis/trellis-node";

/// Kubernetes namespace of a tenant's networks.
pub fn namespace_of(tenant_slug: &str) -> String {
    format!("trellis-{tenant_slug}")
}

fn is_dns_label(name: &str, max: usize) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// The DNS-label form of an organisation's display name (`Acme Corp.` → `acme-corp`),
/// which names the member in `spec.members`.
pub fn member_name(organisation: &str) -> String {
    let mut out = String::new();
    for c in organisation.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(40);
    out.trim_end_matches('-').to_string()
}

fn int(value: u64, field: &str) -> Result<i64, ProvisionError> {
    i64::try_from(value).map_err(|_| rejected(format!("{field} ({value}) is too large")))
}

fn int32(value: u32, field: &str) -> Result<i32, ProvisionError> {
    i32::try_from(value).map_err(|_| rejected(format!("{field} ({value}) is too large")))
}

fn rejected(message: String) -> ProvisionError {
    ProvisionError::Rejected(message)
}

/// The `ChainNetwork` that realises `desired`: pure, so every mapping is unit-tested.
pub fn chain_network(
    desired: &DesiredNetwork,
    image_repository: &str,
) -> Result<ChainNetwork, ProvisionError> {
    let network = &desired.network;
    let namespace = namespace_of(&network.tenant_slug);
    if !is_dns_label(&namespace, 63) {
        return Err(rejected(format!(
            "tenant slug {:?} does not give a valid namespace name ({namespace:?}: at most \
             63 lower-case letters, digits and '-')",
            network.tenant_slug
        )));
    }
    if !is_dns_label(&network.name, MAX_NETWORK_NAME_LEN) {
        return Err(rejected(format!(
            "network name {:?} must be a DNS label of at most {MAX_NETWORK_NAME_LEN} characters",
            network.name
        )));
    }
    let s: &NetworkSpec = &desired.spec;
    if !spec::is_node_version(&s.node_version) {
        return Err(rejected(format!(
            "node_version {:?} is not MAJOR.MINOR.PATCH[-prerelease]",
            s.node_version
        )));
    }
    let mode = match s.mode {
        spec::NetworkMode::Public => NetworkMode::Public,
        spec::NetworkMode::Consortium => NetworkMode::Consortium,
    };
    let mut members = Vec::with_capacity(s.members.len());
    for (index, member) in s.members.iter().enumerate() {
        let name = member_name(&member.organisation);
        if name.is_empty() {
            return Err(rejected(format!(
                "members[{index}]: organisation {:?} has no letter or digit to name it by; \
                 rename it",
                member.organisation
            )));
        }
        if members.iter().any(|m: &ConsortiumMember| m.name == name) {
            return Err(rejected(format!(
                "members[{index}]: organisation {:?} has the same Kubernetes name ({name}) as \
                 an earlier member; give the organisations distinct names",
                member.organisation
            )));
        }
        let Some(key) = member.admin_public_key.as_deref() else {
            return Err(rejected(format!(
                "members[{index}] ({}): no admin public key recorded; the console writes \
                 custodied keys into the spec when the member is created or admitted, so \
                 this member needs its key before the network can be provisioned",
                member.organisation
            )));
        };
        members.push(ConsortiumMember {
            name,
            admin_public_key: key.to_lowercase(),
            nodes: int32(member.nodes, &format!("members[{index}].nodes"))?,
        });
    }
    let a = &s.autoscaling;
    let spec = ChainNetworkSpec {
        mode,
        shards: ShardsSpec {
            count: int32(s.shards.count, "shards.count")?,
            min: int32(s.shards.min, "shards.min")?,
            max: int32(s.shards.max, "shards.max")?,
            ..ShardsSpec::default()
        },
        validators_per_shard: int32(s.validators_per_shard, "validators_per_shard")?,
        beacon: BeaconSpec {
            validators: int32(s.beacon_validators, "beacon_validators")?,
        },
        members,
        node: trellis_crd::NodeSpec {
            image: format!("{image_repository}:{}", s.node_version),
            image_pull_policy: None,
            resources: None,
            storage: trellis_crd::StorageSpec::default(),
        },
        // Absent for 0: a network without a pool keeps the CR it had before pools.
        validator_pool: match s.validator_pool {
            0 => None,
            n => Some(trellis_crd::ValidatorPoolSpec {
                replicas: int32(n, "validator_pool")?,
            }),
        },
        autoscaling: Some(AutoscalingSpec {
            enabled: a.enabled,
            target_tx_per_second_per_shard: Some(i64::from(a.target_tx_per_second_per_shard)),
            target_mempool_depth: Some(i64::from(a.target_mempool_depth)),
            cooldown_seconds: i64::from(a.cooldown_seconds),
            stabilization_window_seconds: i64::from(a.stabilization_window_seconds),
        }),
        // The treasury's allocation is added by `apply` (a new network) or repeated
        // from the existing resource (the field is immutable): see `kube_treasury`.
        genesis_balances: Vec::new(),
        epoch_length: int(s.epoch_length, "epoch_length")?,
        paused: s.paused,
        stopped: s.stopped,
        retain_ledger_on_delete: s.retain_ledger_on_delete,
        service_monitor: false,
    };
    let mut cr = ChainNetwork::new(&network.name, spec);
    cr.metadata = ObjectMeta {
        name: Some(network.name.clone()),
        namespace: Some(namespace),
        labels: Some(labels(network)),
        annotations: Some(BTreeMap::from([(
            GENERATION_ANNOTATION.to_string(),
            desired.generation.to_string(),
        )])),
        ..ObjectMeta::default()
    };
    Ok(cr)
}

/// What the console server-side applies for `cr`. With autoscaling on, the shard count
/// of a network that exists is the operator's autoscaler's to choose (it writes
/// `spec.shards.count` under its own field manager), so the console's forced apply must
/// not overwrite it:
///
/// - once another manager owns the count, the console applies without it and so no
///   longer owns it;
/// - until then it applies the live count (dropping a field only the console owns would
///   delete it from the resource).
///
/// With autoscaling off (or a new network) the console's count is applied. Pure.
pub fn applied_object(
    mut cr: ChainNetwork,
    existing: Option<&ChainNetwork>,
    autoscaling: bool,
) -> Result<serde_json::Value, ProvisionError> {
    let existing = existing.filter(|_| autoscaling);
    if let Some(existing) = existing {
        cr.spec.shards.count = existing.spec.shards.count;
    }
    let mut value = serde_json::to_value(&cr)
        .map_err(|e| rejected(format!("the ChainNetwork does not serialize: {e}")))?;
    if existing.is_some_and(shard_count_owned_elsewhere)
        && let Some(shards) = value
            .pointer_mut("/spec/shards")
            .and_then(serde_json::Value::as_object_mut)
    {
        shards.remove("count");
    }
    Ok(value)
}

/// Whether a field manager other than the console's owns `spec.shards.count` (the
/// operator's autoscaler, `kubectl scale`, ...).
pub fn shard_count_owned_elsewhere(cr: &ChainNetwork) -> bool {
    cr.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.manager.as_deref() != Some(FIELD_MANAGER))
        .filter_map(|entry| entry.fields_v1.as_ref())
        .any(|fields| fields.0.pointer("/f:spec/f:shards/f:count").is_some())
}

/// Name of the ResourceQuota the console keeps in each tenant namespace.
pub const QUOTA_NAME: &str = "trellis-plan";
/// The plan a tenant namespace's quota was derived from.
pub const PLAN_ANNOTATION: &str = "console.trellis.dev/plan";

/// The ResourceQuota of a tenant's namespace, from its plan: validator nodes (pods and
/// their ledger claims — every node has one) and ledger storage. The console refuses
/// desired state over the plan before it reaches the cluster; the quota makes the
/// namespace hold to the same limits whatever writes to it. Pure.
///
/// The plan's network count is not in the quota: an object-count quota on a custom
/// resource (`count/chainnetworks.trellis.dev`) makes the apiserver refuse every
/// `ChainNetwork` ("status unknown for quota") until the quota controller has discovered
/// the CRD, which on a cluster where the CRD was just installed takes minutes. The
/// console enforces the network count itself (plan quotas, `trellis-billing`).
pub fn resource_quota(network: &NetworkRef, quota: &TenantQuota) -> ResourceQuota {
    let hard = BTreeMap::from([
        ("pods".to_owned(), Quantity(quota.nodes.to_string())),
        (
            "persistentvolumeclaims".to_owned(),
            Quantity(quota.nodes.to_string()),
        ),
        (
            "requests.storage".to_owned(),
            Quantity(format!("{}Gi", quota.storage_gib)),
        ),
    ]);
    ResourceQuota {
        metadata: ObjectMeta {
            name: Some(QUOTA_NAME.to_owned()),
            namespace: Some(namespace_of(&network.tenant_slug)),
            labels: Some(BTreeMap::from([
                (TENANT_ID_LABEL.to_string(), network.tenant_id.to_string()),
                (MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(
                PLAN_ANNOTATION.to_owned(),
                quota.plan.clone(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    }
}

pub(super) fn labels(network: &NetworkRef) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TENANT_ID_LABEL.to_string(), network.tenant_id.to_string()),
        (NETWORK_ID_LABEL.to_string(), network.network_id.to_string()),
        (MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string()),
    ])
}

/// What to do with a desired generation given the existing resource's annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write it (create, newer generation, or the same one again: a no-op for the
    /// apiserver when nothing changed).
    Apply,
    /// A newer generation is already written: leave it.
    Skip { existing: i64 },
}

/// The generation guard. A missing or unreadable annotation (a resource someone else
/// made) is overwritten.
pub fn decide(existing_annotation: Option<&str>, desired_generation: i64) -> Decision {
    match existing_annotation.and_then(|a| a.trim().parse::<i64>().ok()) {
        Some(existing) if existing > desired_generation => Decision::Skip { existing },
        _ => Decision::Apply,
    }
}

/// The console generation recorded on a resource.
fn console_generation(cr: &ChainNetwork) -> Option<i64> {
    cr.metadata
        .annotations
        .as_ref()?
        .get(GENERATION_ANNOTATION)?
        .parse()
        .ok()
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn unsigned32(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// Maps a resource's status onto the console's view. `observed_generation` is the console
/// generation when the operator has observed the resource's latest write, else 0 (the
/// status describes an older spec).
pub fn observed_status(cr: &ChainNetwork) -> ObservedStatus {
    let status = cr.status.clone().unwrap_or_default();
    let caught_up = match (status.observed_generation, cr.metadata.generation) {
        (Some(observed), Some(current)) => observed >= current,
        _ => false,
    };
    let observed_generation = if caught_up {
        console_generation(cr).unwrap_or(0)
    } else {
        0
    };
    let phase = match status.phase {
        None | Some(NetworkPhase::Provisioning) => ObservedPhase::Provisioning,
        Some(NetworkPhase::Running) => ObservedPhase::Running,
        Some(NetworkPhase::Scaling) => ObservedPhase::Scaling,
        Some(NetworkPhase::Degraded) => ObservedPhase::Degraded,
        Some(NetworkPhase::Stopped) => ObservedPhase::Stopped,
        Some(NetworkPhase::Paused) => ObservedPhase::Paused,
        Some(NetworkPhase::Invalid) => ObservedPhase::Failed,
    };
    let message = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status != "True" && !c.message.is_empty())
        .map(|c| c.message.clone());
    ObservedStatus {
        observed_generation,
        phase,
        shard_count: status.shard_count.map(unsigned32).unwrap_or(0),
        epoch: status.epoch.map(unsigned).unwrap_or(0),
        shards: status
            .shards
            .iter()
            .map(|s| ShardStatus {
                id: unsigned32(s.id),
                ready_validators: unsigned32(s.ready_validators),
                finalized_height: s.finalized_height.map(unsigned).unwrap_or(0),
                tx_per_second: s.tx_per_second.unwrap_or(0.0),
                mempool_depth: s.mempool_depth.map(unsigned).unwrap_or(0),
            })
            .collect(),
        rpc_endpoints: status
            .endpoints
            .iter()
            .filter(|e| !e.rpc.is_empty())
            .map(|e| e.rpc.clone())
            .collect(),
        message,
    }
}

/// Classifies a client error: refusals of the request itself are `Rejected` with the
/// apiserver's message; everything else (unreachable, 5xx, conflicts, throttling,
/// missing CRD, missing permissions) is `Unavailable`.
pub fn classify(what: &str, error: &kube::Error) -> ProvisionError {
    match error {
        kube::Error::Api(status) => match status.code {
            400 | 422 => rejected(format!(
                "{what}: the cluster refused it: {}",
                status.message
            )),
            // The namespace's ResourceQuota (the tenant's plan) refuses it: retrying
            // will not help until the plan or the other networks change.
            // The quota controller has not computed the namespace's usage yet (a new
            // quota or resource): the apiserver refuses until it has; retry.
            403 if status.message.contains("status unknown for quota") => {
                ProvisionError::Unavailable(format!(
                    "{what}: the namespace's quota usage is not computed yet, will retry: {}",
                    status.message
                ))
            }
            403 if status.message.contains("exceeded quota") => rejected(format!(
                "{what}: over the tenant's plan: {}",
                status.message
            )),
            404 => ProvisionError::Unavailable(format!(
                "{what}: not found on the cluster (is the ChainNetwork CRD installed?): {}",
                status.message
            )),
            409 => ProvisionError::Unavailable(format!(
                "{what}: changed concurrently, will retry: {}",
                status.message
            )),
            code => ProvisionError::Unavailable(format!(
                "{what}: Kubernetes API answered {code}: {}",
                status.message
            )),
        },
        other => {
            ProvisionError::Unavailable(format!("{what}: Kubernetes API unreachable: {other}"))
        }
    }
}

/// Provisions networks as `ChainNetwork` resources through the Kubernetes API.
#[derive(Clone)]
pub struct KubeProvisioner {
    client: Client,
    image_repository: String,
    signer: Arc<OnceLock<Arc<dyn GovernanceSigner>>>,
    /// Genesis balance of each new network's treasury account.
    treasury_balance: u64,
}

impl KubeProvisioner {
    pub fn new(client: Client, image_repository: impl Into<String>) -> Self {
        Self {
            client,
            image_repository: image_repository.into(),
            signer: Arc::default(),
            treasury_balance: super::local::DEFAULT_TREASURY_BALANCE,
        }
    }

    /// The genesis balance of new networks' treasuries (default
    /// [`super::local::DEFAULT_TREASURY_BALANCE`], as in local mode).
    pub fn with_treasury_balance(mut self, balance: u64) -> Self {
        self.treasury_balance = balance;
        self
    }

    /// Attaches the signer of consortium admissions (see [`super::kube_governance`]).
    pub fn set_governance_signer(&self, signer: Arc<dyn GovernanceSigner>) {
        let _ = self.signer.set(signer);
    }

    /// Runs the governance hand-over ([`kube_governance::hand_over_once`]) every few
    /// seconds, as long as the process runs.
    pub fn spawn_governance(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(kube_governance::HAND_OVER_EVERY).await;
                let Some(signer) = this.signer.get() else {
                    continue;
                };
                match kube_governance::hand_over_once(&this.client, signer).await {
                    Ok(waiting) => {
                        for note in waiting {
                            tracing::debug!(%note, "consortium governance waiting");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "consortium governance hand-over"),
                }
            }
        });
    }

    fn api(&self, network: &NetworkRef) -> Api<ChainNetwork> {
        Api::namespaced(self.client.clone(), &namespace_of(&network.tenant_slug))
    }

    async fn ensure_namespace(&self, network: &NetworkRef) -> Result<(), ProvisionError> {
        let name = namespace_of(&network.tenant_slug);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([
                    (TENANT_ID_LABEL.to_string(), network.tenant_id.to_string()),
                    (MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string()),
                ])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&ns),
            )
            .await
            .map_err(|e| classify(&format!("namespace {name}"), &e))?;
        Ok(())
    }

    /// Server-side applies the tenant namespace's ResourceQuota from its plan.
    async fn apply_quota(
        &self,
        network: &NetworkRef,
        quota: &TenantQuota,
    ) -> Result<(), ProvisionError> {
        let object = resource_quota(network, quota);
        let namespace = namespace_of(&network.tenant_slug);
        Api::<ResourceQuota>::namespaced(self.client.clone(), &namespace)
            .patch(
                QUOTA_NAME,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
            .map_err(|e| classify(&format!("ResourceQuota {namespace}/{QUOTA_NAME}"), &e))?;
        Ok(())
    }

    async fn apply_network(&self, desired: &DesiredNetwork) -> Result<(), ProvisionError> {
        let mut cr = chain_network(desired, &self.image_repository)?;
        self.ensure_namespace(&desired.network).await?;
        if let Some(quota) = &desired.quota {
            self.apply_quota(&desired.network, quota).await?;
        }
        let api = self.api(&desired.network);
        let what = format!("ChainNetwork {}", desired.network.name);
        let existing = api
            .get_opt(&desired.network.name)
            .await
            .map_err(|e| classify(&what, &e))?;
        if let Some(existing) = &existing {
            let annotation = existing
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(GENERATION_ANNOTATION))
                .map(String::as_str);
            if let Decision::Skip { existing } = decide(annotation, desired.generation) {
                tracing::info!(
                    network = %desired.network.network_id,
                    desired = desired.generation,
                    existing,
                    "ignoring an older generation"
                );
                return Ok(());
            }
            // Optimistic concurrency: a write since our read fails with 409 (retried).
            cr.metadata
                .resource_version
                .clone_from(&existing.metadata.resource_version);
        }
        // Members admitted after genesis join through governance, as ChainMembers; those
        // the console removed leave the same way, and so do founders it removed (their
        // validators are the network's own: the operator drops them once off the chain).
        let later_members = kube_governance::split_members(&mut cr, existing.as_ref());
        cr.spec.genesis_balances = match &existing {
            Some(existing) => existing.spec.genesis_balances.clone(),
            None => {
                let account =
                    kube_treasury::ensure_treasury(&self.client, &desired.network).await?;
                vec![kube_treasury::allocation(account, self.treasury_balance)]
            }
        };
        let applied = applied_object(cr, existing.as_ref(), desired.spec.autoscaling.enabled)?;
        api.patch(
            &desired.network.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&applied),
        )
        .await
        .map_err(|e| classify(&what, &e))?;
        kube_governance::apply_members(&self.client, &later_members).await?;
        if existing.is_some() {
            kube_governance::mark_departed(&self.client, &desired.network, &later_members).await?;
        }
        Ok(())
    }

    async fn observe_network(
        &self,
        network: &NetworkRef,
    ) -> Result<Option<ObservedStatus>, ProvisionError> {
        let what = format!("ChainNetwork {}", network.name);
        let cr = self
            .api(network)
            .get_opt(&network.name)
            .await
            .map_err(|e| classify(&what, &e))?;
        let Some(cr) = cr else {
            return Ok(None);
        };
        let mut observed = observed_status(&cr);
        if cr.spec.mode == NetworkMode::Consortium {
            // Later members' admissions on chain are part of what the network shows.
            let members = kube_governance::network_members(&self.client, network).await?;
            if let Some(notes) = kube_governance::admission_notes(&members) {
                observed.message = Some(match observed.message.take() {
                    Some(m) => format!("{m}; {notes}"),
                    None => notes,
                });
            }
        }
        Ok(Some(observed))
    }

    async fn delete_network(
        &self,
        network: &NetworkRef,
        retain_ledger: bool,
    ) -> Result<(), ProvisionError> {
        let api = self.api(network);
        let what = format!("ChainNetwork {}", network.name);
        if !retain_ledger {
            // The ledger goes, and the treasury's key with it.
            kube_treasury::delete_treasury(&self.client, network).await?;
        }
        let Some(cr) = api
            .get_opt(&network.name)
            .await
            .map_err(|e| classify(&what, &e))?
        else {
            return Ok(());
        };
        if cr.spec.retain_ledger_on_delete != retain_ledger {
            let patch = serde_json::json!({"spec": {"retainLedgerOnDelete": retain_ledger}});
            match api
                .patch(
                    &network.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(e) => return Err(classify(&what, &e)),
            }
        }
        match api.delete(&network.name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(classify(&what, &e)),
        }
    }
}

impl Provisioner for KubeProvisioner {
    fn kind(&self) -> &'static str {
        "kube"
    }

    fn apply<'a>(
        &'a self,
        desired: &'a DesiredNetwork,
    ) -> BoxFuture<'a, Result<(), ProvisionError>> {
        Box::pin(self.apply_network(desired))
    }

    fn member_governance<'a>(
        &'a self,
        network: &'a NetworkRef,
        organisation: &'a str,
    ) -> BoxFuture<'a, Result<Option<MemberChainState>, ProvisionError>> {
        Box::pin(kube_governance::member_state(
            &self.client,
            network,
            organisation,
        ))
    }

    fn founder_removal_refusal<'a>(
        &'a self,
        network: &'a NetworkRef,
        organisation: &'a str,
    ) -> BoxFuture<'a, Result<Option<(&'static str, String)>, ProvisionError>> {
        Box::pin(kube_governance::founder_removal_refusal(
            &self.client,
            network,
            organisation,
        ))
    }

    fn observe<'a>(
        &'a self,
        network: &'a NetworkRef,
    ) -> BoxFuture<'a, Result<Option<ObservedStatus>, ProvisionError>> {
        Box::pin(self.observe_network(network))
    }

    fn delete<'a>(
        &'a self,
        network: &'a NetworkRef,
        retain_ledger: bool,
    ) -> BoxFuture<'a, Result<(), ProvisionError>> {
        Box::pin(self.delete_network(network, retain_ledger))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::networks::spec::{AutoscalingPolicy, MemberSpec, ShardRange};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use trellis_crd::{ChainNetworkStatus, NetworkEndpoints};
    use uuid::Uuid;

    const KEY: &str = "AB12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";

    fn desired(mode: spec::NetworkMode) -> DesiredNetwork {
        DesiredNetwork {
            network: NetworkRef {
                tenant_id: Uuid::from_u128(1),
                tenant_slug: "acme".into(),
                network_id: Uuid::from_u128(2),
                name: "ledger".into(),
            },
            generation: 7,
            spec: NetworkSpec {
                mode,
                shards: ShardRange {
                    count: 2,
                    min: 1,
                    max: 8,
                },
                validators_per_shard: 7,
                beacon_validators: 10,
                validator_pool: 0,
                node_version: "1.2.3".into(),
                autoscaling: AutoscalingPolicy {
                    enabled: true,
                    target_tx_per_second_per_shard: 900,
                    target_mempool_depth: 4_000,
                    cooldown_seconds: 60,
                    stabilization_window_seconds: 30,
                },
                members: match mode {
                    spec::NetworkMode::Public => Vec::new(),
                    spec::NetworkMode::Consortium => vec![
                        MemberSpec {
                            organisation: "Acme Corp.".into(),
                            nodes: 2,
                            admin_public_key: Some(KEY.into()),
                        },
                        MemberSpec {
                            organisation: "Globex".into(),
                            nodes: 1,
                            admin_public_key: Some("cd".repeat(32)),
                        },
                    ],
                },
                epoch_length: 250,
                paused: true,
                stopped: false,
                retain_ledger_on_delete: false,
            },
            quota: None,
        }
    }

    #[test]
    fn the_namespace_quota_follows_the_plan() {
        let quota = TenantQuota {
            plan: "team".into(),
            networks: 25,
            nodes: 400,
            storage_gib: 4000,
        };
        let rq = resource_quota(&desired(spec::NetworkMode::Public).network, &quota);
        assert_eq!(rq.metadata.name.as_deref(), Some(QUOTA_NAME));
        assert_eq!(rq.metadata.namespace.as_deref(), Some("trellis-acme"));
        assert_eq!(rq.metadata.annotations.unwrap()[PLAN_ANNOTATION], "team");
        let hard = rq.spec.unwrap().hard.unwrap();
        let get = |k: &str| hard[k].0.clone();
        assert!(!hard.contains_key("count/chainnetworks.trellis.dev"));
        assert_eq!(get("pods"), "400");
        assert_eq!(get("persistentvolumeclaims"), "400");
        assert_eq!(get("requests.storage"), "4000Gi");
    }

    #[test]
    fn maps_every_field() {
        let cr = chain_network(&desired(spec::NetworkMode::Public), "reg/node").unwrap();
        assert_eq!(cr.metadata.name.as_deref(), Some("ledger"));
        assert_eq!(cr.metadata.namespace.as_deref(), Some("trellis-acme"));
        let labels = cr.metadata.labels.unwrap();
        assert_eq!(labels[TENANT_ID_LABEL], Uuid::from_u128(1).to_string());
        assert_eq!(labels[NETWORK_ID_LABEL], Uuid::from_u128(2).to_string());
        assert_eq!(labels[MANAGED_BY_LABEL], "trellis-console");
        assert_eq!(cr.metadata.annotations.unwrap()[GENERATION_ANNOTATION], "7");
        let s = cr.spec;
        assert_eq!(s.mode, NetworkMode::Public);
        assert_eq!(
            s.shards,
            ShardsSpec {
                count: 2,
                min: 1,
                max: 8,
                ..ShardsSpec::default()
            }
        );
        assert_eq!(s.validators_per_shard, 7);
        assert_eq!(s.beacon.validators, 10);
        assert!(s.members.is_empty());
        assert_eq!(s.node.image, "reg/node:1.2.3");
        assert_eq!(
            s.autoscaling,
            Some(AutoscalingSpec {
                enabled: true,
                target_tx_per_second_per_shard: Some(900),
                target_mempool_depth: Some(4_000),
                cooldown_seconds: 60,
                stabilization_window_seconds: 30,
            })
        );
        assert_eq!(s.epoch_length, 250);
        assert!(s.paused);
        assert!(!s.stopped);
        assert!(!s.retain_ledger_on_delete);
    }

    #[test]
    fn maps_the_validator_pool() {
        let cr = chain_network(&desired(spec::NetworkMode::Public), "r").unwrap();
        assert_eq!(
            cr.spec.validator_pool, None,
            "no pool: the field stays absent"
        );
        let mut pooled = desired(spec::NetworkMode::Public);
        pooled.spec.validator_pool = 3;
        let cr = chain_network(&pooled, "r").unwrap();
        assert_eq!(cr.spec.pool_replicas(), 3);
    }

    #[test]
    fn maps_members() {
        let cr = chain_network(&desired(spec::NetworkMode::Consortium), "r").unwrap();
        assert_eq!(cr.spec.mode, NetworkMode::Consortium);
        assert_eq!(
            cr.spec.members,
            vec![
                ConsortiumMember {
                    name: "acme-corp".into(),
                    admin_public_key: KEY.to_lowercase(),
                    nodes: 2
                },
                ConsortiumMember {
                    name: "globex".into(),
                    admin_public_key: "cd".repeat(32),
                    nodes: 1
                },
            ]
        );
    }

    #[test]
    fn member_names_are_dns_labels() {
        assert_eq!(member_name("Acme Corp."), "acme-corp");
        assert_eq!(member_name("  Über--Bank 2 "), "ber-bank-2");
        assert_eq!(member_name("!!!"), "");
        let long = member_name(&"a b ".repeat(30));
        assert!(long.len() <= 40 && is_dns_label(&long, 40), "{long}");
    }

    fn rejection(desired: &DesiredNetwork) -> String {
        match chain_network(desired, "r") {
            Err(ProvisionError::Rejected(m)) => m,
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    #[test]
    fn refuses_what_it_cannot_map() {
        let mut d = desired(spec::NetworkMode::Consortium);
        d.spec.members[1].admin_public_key = None;
        let m = rejection(&d);
        assert!(
            m.contains("members[1] (Globex)") && m.contains("admin public key"),
            "{m}"
        );

        let mut d = desired(spec::NetworkMode::Consortium);
        d.spec.members[1].organisation = "acme  corp".into();
        let m = rejection(&d);
        assert!(m.contains("same Kubernetes name (acme-corp)"), "{m}");

        let mut d = desired(spec::NetworkMode::Consortium);
        d.spec.members[0].organisation = "???".into();
        assert!(rejection(&d).contains("no letter or digit"));

        let mut d = desired(spec::NetworkMode::Public);
        d.network.name = "Not_A_Label".into();
        assert!(rejection(&d).contains("DNS label"));

        let mut d = desired(spec::NetworkMode::Public);
        d.network.name = "a".repeat(41);
        assert!(rejection(&d).contains("at most 40"));

        let mut d = desired(spec::NetworkMode::Public);
        d.network.tenant_slug = "x".repeat(60);
        assert!(rejection(&d).contains("namespace"));

        let mut d = desired(spec::NetworkMode::Public);
        d.spec.node_version = "latest".into();
        assert!(rejection(&d).contains("node_version"));

        let mut d = desired(spec::NetworkMode::Public);
        d.spec.shards.max = u32::MAX;
        assert!(rejection(&d).contains("shards.max"));

        let mut d = desired(spec::NetworkMode::Public);
        d.spec.epoch_length = u64::MAX;
        assert!(rejection(&d).contains("epoch_length"));
    }

    #[test]
    fn an_autoscaled_count_is_left_to_its_owner() {
        let desired = desired(spec::NetworkMode::Public);
        let cr = chain_network(&desired, "r").unwrap();
        let mut live = cr.clone();
        live.spec.shards.count = cr.spec.shards.count + 1;
        let count = |v: &serde_json::Value| v.pointer("/spec/shards/count").cloned();
        // New, or autoscaling off: the console's count.
        let fresh = applied_object(cr.clone(), None, true).unwrap();
        assert_eq!(count(&fresh), Some(cr.spec.shards.count.into()));
        let manual = applied_object(cr.clone(), Some(&live), false).unwrap();
        assert_eq!(count(&manual), Some(cr.spec.shards.count.into()));
        // Autoscaling on, only the console owns the count: the live count.
        let kept = applied_object(cr.clone(), Some(&live), true).unwrap();
        assert_eq!(count(&kept), Some(live.spec.shards.count.into()));
        // Another manager owns it: no count at all.
        live.metadata.managed_fields = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: Some("trellis-operator".into()),
                fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
                    serde_json::json!({"f:spec": {"f:shards": {"f:count": {}}}}),
                )),
                ..Default::default()
            },
        ]);
        assert!(shard_count_owned_elsewhere(&live));
        let released = applied_object(cr.clone(), Some(&live), true).unwrap();
        assert_eq!(count(&released), None);
        assert!(released.pointer("/spec/shards/max").is_some());
    }

    #[test]
    fn generation_guard() {
        assert_eq!(decide(None, 1), Decision::Apply);
        assert_eq!(decide(Some("3"), 4), Decision::Apply);
        assert_eq!(decide(Some("4"), 4), Decision::Apply);
        assert_eq!(decide(Some("5"), 4), Decision::Skip { existing: 5 });
        assert_eq!(decide(Some("garbage"), 4), Decision::Apply);
    }

    fn with_status(status: ChainNetworkStatus, generation: i64) -> ChainNetwork {
        let mut cr = chain_network(&desired(spec::NetworkMode::Public), "r").unwrap();
        cr.metadata.generation = Some(generation);
        cr.status = Some(status);
        cr
    }

    #[test]
    fn maps_status() {
        let status = ChainNetworkStatus {
            observed_generation: Some(3),
            phase: Some(NetworkPhase::Degraded),
            shard_count: Some(2),
            epoch: Some(12),
            shards: vec![trellis_crd::ShardStatus {
                id: 1,
                validators: 4,
                ready_validators: 3,
                finalized_height: Some(99),
                epoch: None,
                tx_per_second: Some(12.5),
                mempool_depth: Some(40),
                tables: None,
            }],
            endpoints: Some(NetworkEndpoints {
                rpc: "http://ledger-rpc.trellis-acme.svc:8545".into(),
                beacon_peers: vec![],
            }),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                message: "shard 1 has 3/4 validators".into(),
                reason: "ValidatorsMissing".into(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Default::default(),
                ),
                observed_generation: None,
            }],
            ..ChainNetworkStatus::default()
        };
        let observed = observed_status(&with_status(status.clone(), 3));
        assert_eq!(
            observed,
            ObservedStatus {
                observed_generation: 7,
                phase: ObservedPhase::Degraded,
                shard_count: 2,
                epoch: 12,
                shards: vec![ShardStatus {
                    id: 1,
                    ready_validators: 3,
                    finalized_height: 99,
                    tx_per_second: 12.5,
                    mempool_depth: 40
                }],
                rpc_endpoints: vec!["http://ledger-rpc.trellis-acme.svc:8545".into()],
                message: Some("shard 1 has 3/4 validators".into()),
            }
        );
        // The operator has not seen the latest write: the status is for an older spec.
        assert_eq!(
            observed_status(&with_status(status, 4)).observed_generation,
            0
        );
        // Invalid is terminal for the console; no status yet is Provisioning.
        let invalid = ChainNetworkStatus {
            phase: Some(NetworkPhase::Invalid),
            ..ChainNetworkStatus::default()
        };
        assert_eq!(
            observed_status(&with_status(invalid, 1)).phase,
            ObservedPhase::Failed
        );
        let empty = observed_status(&with_status(ChainNetworkStatus::default(), 1));
        assert_eq!(empty.phase, ObservedPhase::Provisioning);
        assert!(empty.rpc_endpoints.is_empty() && empty.message.is_none());
    }

    #[test]
    fn classifies_errors() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: "spec.validatorsPerShard: must be 3f+1".into(),
                ..kube::core::Status::default()
            }))
        };
        assert!(
            matches!(classify("x", &api(422)), ProvisionError::Rejected(m) if m.contains("3f+1"))
        );
        assert!(matches!(
            classify("x", &api(409)),
            ProvisionError::Unavailable(_)
        ));
        assert!(matches!(
            classify("x", &api(503)),
            ProvisionError::Unavailable(_)
        ));
        assert!(
            matches!(classify("x", &api(404)), ProvisionError::Unavailable(m) if m.contains("CRD"))
        );
    }
}
