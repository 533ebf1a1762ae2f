//! Driving the provisioner: the write-through on each request, and a background loop
//! that retries what failed and refreshes observed status.
//!
//! The database is the source of truth for desired state. A request commits the change
//! first and then calls the provisioner; if that call fails, the change is not lost —
//! [`reconcile_once`] applies every network whose `provisioned_generation` lags its
//! `generation`, finishes interrupted deletions, and stores what the provisioner
//! observes.

use std::collections::HashMap;

use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use trellis_console_entity::{network, tenant};
use uuid::Uuid;

use super::spec::NetworkSpec;
use super::{NetworkPhase, phase_of, store};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::idempotency;
use crate::provisioner::{DesiredNetwork, NetworkRef, ProvisionError, TenantQuota};

async fn tenant_slug(conn: &impl ConnectionTrait, tenant_id: Uuid) -> Result<String, DbErr> {
    tenant::Entity::find_by_id(tenant_id)
        .one(conn)
        .await?
        .map(|row| row.slug)
        .ok_or_else(|| DbErr::RecordNotFound(format!("tenant {tenant_id}")))
}

/// The tenant's plan limits, for the provisioner to enforce as well.
async fn tenant_quota(
    conn: &impl ConnectionTrait,
    tenant_id: Uuid,
) -> ApiResult<Option<TenantQuota>> {
    let Some(tenant) = tenant::Entity::find_by_id(tenant_id).one(conn).await? else {
        return Ok(None);
    };
    let limits = crate::plans::stored_limits(conn, &tenant.plan).await?;
    Ok(Some(TenantQuota {
        plan: tenant.plan,
        networks: limits.networks,
        nodes: limits.nodes,
        storage_gib: limits.storage_gib,
    }))
}

/// How the provisioner knows `row` (with its tenant's slug).
pub(crate) async fn network_ref_of(
    conn: &impl ConnectionTrait,
    row: &network::Model,
) -> Result<NetworkRef, DbErr> {
    Ok(network_ref(row, tenant_slug(conn, row.tenant_id).await?))
}

fn network_ref(row: &network::Model, tenant_slug: String) -> NetworkRef {
    NetworkRef {
        tenant_id: row.tenant_id,
        tenant_slug,
        network_id: row.id,
        name: row.name.clone(),
    }
}

fn spec_of(row: &network::Model) -> ApiResult<NetworkSpec> {
    serde_json::from_value(row.spec.clone())
        .map_err(|err| ApiError::internal(format!("network {} spec: {err}", row.id)))
}

async fn record_apply_error(
    conn: &impl ConnectionTrait,
    row: &network::Model,
    err: &ProvisionError,
) -> Result<(), DbErr> {
    let phase = match err {
        ProvisionError::Unavailable(_) => NetworkPhase::Pending,
        ProvisionError::Rejected(_) => NetworkPhase::Failed,
    };
    network::Entity::update_many()
        .col_expr(
            network::Column::Phase,
            sea_orm::sea_query::Expr::value(phase.as_str()),
        )
        .col_expr(
            network::Column::ProvisionError,
            sea_orm::sea_query::Expr::value(Some(err.to_string())),
        )
        .filter(network::Column::Id.eq(row.id))
        .filter(network::Column::Generation.eq(row.generation))
        .filter(network::Column::Phase.ne(NetworkPhase::Deleting.as_str()))
        .exec(conn)
        .await
        .map(|_| ())
}

async fn apply_with_slug(
    state: &AppState,
    row: &network::Model,
    slug: String,
) -> ApiResult<Result<(), ProvisionError>> {
    let desired = DesiredNetwork {
        network: network_ref(row, slug),
        generation: row.generation,
        spec: spec_of(row)?,
        quota: tenant_quota(&state.db, row.tenant_id).await?,
    };
    let result =
        crate::telemetry::provisioner_call("apply", row.id, state.provisioner.apply(&desired))
            .await;
    state.metrics.observe_provision("apply", result.is_ok());
    match &result {
        Ok(()) => {
            store::mark_provisioned(
                &state.db,
                row.id,
                row.generation,
                NetworkPhase::Provisioning,
            )
            .await?
        }
        Err(err) => {
            tracing::warn!(network = %row.id, generation = row.generation, error = %err, "provisioner apply failed");
            record_apply_error(&state.db, row, err).await?;
        }
    }
    Ok(result)
}

/// Hands the row's desired state to the provisioner and records the outcome. A
/// provisioner failure is recorded on the network (and retried later), not returned:
/// the desired state itself was accepted.
pub async fn apply(state: &AppState, row: network::Model) -> ApiResult<network::Model> {
    let slug = tenant_slug(&state.db, row.tenant_id).await?;
    // A provisioner failure is already recorded on the row.
    let _provisioner_outcome = apply_with_slug(state, &row, slug).await?;
    network::Entity::find_by_id(row.id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("network"))
}

/// What became of a deletion.
#[derive(Debug, PartialEq, Eq)]
pub enum Deletion {
    Done,
    /// The provisioner could not delete now; the network stays `Deleting` and the
    /// reconciler retries.
    Deferred(String),
}

pub async fn delete(state: &AppState, row: &network::Model) -> ApiResult<Deletion> {
    let slug = tenant_slug(&state.db, row.tenant_id).await?;
    delete_with_slug(state, row, slug).await
}

async fn delete_with_slug(
    state: &AppState,
    row: &network::Model,
    slug: String,
) -> ApiResult<Deletion> {
    let retain = spec_of(row)?.retain_ledger_on_delete;
    let result = crate::telemetry::provisioner_call(
        "delete",
        row.id,
        state.provisioner.delete(&network_ref(row, slug), retain),
    )
    .await;
    state.metrics.observe_provision("delete", result.is_ok());
    match result {
        Ok(()) => {
            store::remove(&state.db, row.id).await?;
            Ok(Deletion::Done)
        }
        Err(err) => {
            tracing::warn!(network = %row.id, error = %err, "provisioner delete failed");
            store::set_phase(
                &state.db,
                row.id,
                NetworkPhase::Deleting,
                Some(err.to_string()),
            )
            .await?;
            Ok(Deletion::Deferred(err.to_string()))
        }
    }
}

/// What one pass of the reconciler did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub applied: u64,
    pub apply_failed: u64,
    pub deleted: u64,
    pub observed: u64,
    pub pending: u64,
}

const BATCH: u64 = 200;

/// One pass over every network of every tenant.
pub async fn reconcile_once(state: &AppState) -> ApiResult<ReconcileReport> {
    let mut report = ReconcileReport::default();
    let mut slugs: HashMap<Uuid, String> = HashMap::new();
    let mut after = None;
    loop {
        let rows = store::all_after(&state.db, after, BATCH).await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.id);
        for row in rows {
            let slug = match slugs.get(&row.tenant_id) {
                Some(slug) => slug.clone(),
                None => {
                    let slug = tenant_slug(&state.db, row.tenant_id).await?;
                    slugs.insert(row.tenant_id, slug.clone());
                    slug
                }
            };
            let phase = NetworkPhase::parse(&row.phase);
            if phase == NetworkPhase::Deleting {
                if delete_with_slug(state, &row, slug).await? == Deletion::Done {
                    report.deleted += 1;
                }
            } else if row.provisioned_generation < row.generation {
                if phase == NetworkPhase::Failed {
                    // Rejected: waits for a change of the spec.
                    continue;
                }
                match apply_with_slug(state, &row, slug).await? {
                    Ok(()) => report.applied += 1,
                    Err(_) => {
                        report.apply_failed += 1;
                        report.pending += 1;
                    }
                }
            } else {
                let observed = crate::telemetry::provisioner_call(
                    "observe",
                    row.id,
                    state.provisioner.observe(&network_ref(&row, slug)),
                )
                .await;
                state.metrics.observe_provision("observe", observed.is_ok());
                match observed {
                    Ok(status) => {
                        let phase = phase_of(
                            row.generation,
                            row.provisioned_generation,
                            false,
                            status.as_ref(),
                        );
                        store::record_observed(&state.db, &row, status.as_ref(), phase).await?;
                        report.observed += 1;
                    }
                    Err(err) => {
                        tracing::warn!(network = %row.id, error = %err, "provisioner observe failed");
                    }
                }
            }
        }
    }
    state
        .metrics
        .set_pending_networks(i64::try_from(report.pending).unwrap_or(i64::MAX));
    idempotency::purge_expired(&state.db).await?;
    Ok(report)
}

/// Runs [`reconcile_once`] every `interval` until the process ends.
pub async fn run(state: AppState, interval: std::time::Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match reconcile_once(&state).await {
            Ok(report) => tracing::debug!(?report, "reconciled"),
            Err(err) => tracing::warn!(error = %err, "reconcile pass failed"),
        }
    }
}
