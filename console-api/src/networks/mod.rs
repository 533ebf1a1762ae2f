//! Networks: the tenant's chain networks. Desired state lives in the database and is
//! written through the [`Provisioner`](crate::provisioner::Provisioner); the provisioner's
//! observations are stored back as status.

pub mod autoscale;
mod pg_versions;
pub mod read_cache;
pub mod reconcile;
pub mod spec;
pub mod store;
mod version_flights;
pub mod versions;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use sea_orm::{SqlErr, TransactionTrait};
use serde::{Deserialize, Serialize};
use trellis_console_entity::network;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::AppState;
use crate::audit;
use crate::auth::Role;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::idempotency::{self, IdempotencyKey};
use crate::pagination::{self, PageQuery};
use crate::provisioner::{ObservedPhase, ObservedStatus};
use crate::tenancy::{Scope, TenantId};
use read_cache::Read;
use spec::{CreateNetworkRequest, NetworkMode, NetworkSpec, UpdateNetworkRequest};

/// The lifecycle of a network as the tenant sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum NetworkPhase {
    /// The desired state is recorded; the provisioner has not accepted it yet.
    Pending,
    /// Accepted; nodes are being created or changed.
    Provisioning,
    Running,
    Scaling,
    Upgrading,
    Paused,
    Stopped,
    Degraded,
    /// The provisioner refused the desired state; see `provision_error`.
    Failed,
    Deleting,
}

impl NetworkPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkPhase::Pending => "Pending",
            NetworkPhase::Provisioning => "Provisioning",
            NetworkPhase::Running => "Running",
            NetworkPhase::Scaling => "Scaling",
            NetworkPhase::Upgrading => "Upgrading",
            NetworkPhase::Paused => "Paused",
            NetworkPhase::Stopped => "Stopped",
            NetworkPhase::Degraded => "Degraded",
            NetworkPhase::Failed => "Failed",
            NetworkPhase::Deleting => "Deleting",
        }
    }

    pub fn parse(text: &str) -> NetworkPhase {
        match text {
            "Provisioning" => NetworkPhase::Provisioning,
            "Running" => NetworkPhase::Running,
            "Scaling" => NetworkPhase::Scaling,
            "Upgrading" => NetworkPhase::Upgrading,
            "Paused" => NetworkPhase::Paused,
            "Stopped" => NetworkPhase::Stopped,
            "Degraded" => NetworkPhase::Degraded,
            "Failed" => NetworkPhase::Failed,
            "Deleting" => NetworkPhase::Deleting,
            _ => NetworkPhase::Pending,
        }
    }
}

/// The phase shown to the tenant, from what the console knows. Pure.
pub fn phase_of(
    generation: i64,
    provisioned_generation: i64,
    rejected: bool,
    observed: Option<&ObservedStatus>,
) -> NetworkPhase {
    if rejected {
        return NetworkPhase::Failed;
    }
    if provisioned_generation < generation {
        return NetworkPhase::Pending;
    }
    match observed {
        None => NetworkPhase::Provisioning,
        // The observation predates the accepted spec: the change is in progress.
        Some(status) if status.observed_generation < provisioned_generation => {
            NetworkPhase::Provisioning
        }
        Some(status) => match status.phase {
            ObservedPhase::Provisioning => NetworkPhase::Provisioning,
            ObservedPhase::Running => NetworkPhase::Running,
            ObservedPhase::Scaling => NetworkPhase::Scaling,
            ObservedPhase::Upgrading => NetworkPhase::Upgrading,
            ObservedPhase::Paused => NetworkPhase::Paused,
            ObservedPhase::Stopped => NetworkPhase::Stopped,
            ObservedPhase::Degraded => NetworkPhase::Degraded,
            ObservedPhase::Failed => NetworkPhase::Failed,
        },
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Network {
    pub id: Uuid,
    pub name: String,
    pub mode: NetworkMode,
    pub spec: NetworkSpec,
    /// Bumped on every change of `spec`.
    pub generation: i64,
    /// The last generation the provisioner accepted.
    pub provisioned_generation: i64,
    pub phase: NetworkPhase,
    /// The provisioner's last observation.
    pub status: Option<ObservedStatus>,
    /// Why the last provisioning attempt failed, if it did.
    pub provision_error: Option<String>,
    /// The built-in autoscaler's last change of the shard count and why (local mode;
    /// on Kubernetes the `ChainNetwork`'s `status.autoscaler`). Absent when it never
    /// changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<autoscale::AutoscalerStatus>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Network {
    /// The network of an entity row (the write endpoints).
    pub fn from_row(row: network::Model) -> ApiResult<Self> {
        Self::from_text(row.into())
    }

    /// The network of a row read with its JSON columns as text (the read endpoints:
    /// each column parsed once, straight into its type). The one constructor.
    fn from_text(row: store::NetworkText) -> ApiResult<Self> {
        let spec: NetworkSpec = serde_json::from_str(&row.spec)
            .map_err(|err| ApiError::internal(format!("network {} spec: {err}", row.id)))?;
        let status = row
            .status
            .and_then(|text| serde_json::from_str::<ObservedStatus>(&text).ok());
        let autoscaler = row
            .autoscaler
            .and_then(|text| serde_json::from_str::<autoscale::AutoscalerStatus>(&text).ok());
        Ok(Self {
            id: row.id,
            name: row.name,
            mode: spec.mode,
            spec,
            generation: row.generation,
            provisioned_generation: row.provisioned_generation,
            phase: NetworkPhase::parse(&row.phase),
            status,
            provision_error: row.provision_error,
            autoscaler,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct NetworkPage {
    pub items: Vec<Network>,
    pub next_cursor: Option<String>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/networks", get(list).post(create))
        .route(
            "/v1/networks/{id}",
            get(get_one).patch(update).delete(remove),
        )
}

fn json_response(status: StatusCode, body: impl Into<Bytes>, location: Option<&str>) -> Response {
    let mut response = (status, body.into()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    response
}

/// Creates a network. With an `Idempotency-Key` header, a retry returns the first
/// response instead of creating a second network.
#[utoipa::path(post, path = "/v1/networks", tag = "networks", request_body = CreateNetworkRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses((status = 201, body = Network), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    Json(request): Json<CreateNetworkRequest>,
) -> ApiResult<Response> {
    scope.require(Role::Member)?;
    let tenant = scope.tenant();
    let key = IdempotencyKey::from_headers(&headers)?;
    let fingerprint = idempotency::fingerprint("POST /v1/networks", &request);
    if let Some(key) = &key
        && let Some(replayed) = idempotency::replay(&state.db, tenant, key, &fingerprint).await?
    {
        return Ok(replayed);
    }
    let mut spec = NetworkSpec::from_create(&request).map_err(ApiError::validation)?;
    let (plan, networks, nodes) = store::usage(&state.db, tenant, None).await?;
    crate::plans::check_stored(&state.db, &plan, &spec, networks, nodes).await?;
    let founders = crate::consortium::prepare_founders(&mut spec, &state.master_key)?;

    let attempt = async {
        let txn = state.db.begin().await?;
        let row = store::insert(&txn, tenant, &request.name, &spec)
            .await
            .map_err(unique_as_conflict)?;
        crate::consortium::insert_founders(&txn, &row, &spec, founders).await?;
        crate::billing::ledger::record(&txn, &state.billing, &row, &spec).await?;
        audit::record(
            &txn,
            tenant,
            &scope.actor(),
            "network.create",
            Some(format!("network:{}", row.id)),
            serde_json::json!({ "name": row.name, "mode": spec.mode }),
        )
        .await?;
        if let Some(key) = &key {
            let body = serde_json::to_string(&Network::from_row(row.clone())?)
                .map_err(ApiError::internal)?;
            idempotency::remember(&txn, tenant, key, &fingerprint, StatusCode::CREATED, &body)
                .await
                .map_err(unique_as_conflict)?;
        }
        txn.commit().await?;
        Ok::<_, ApiError>(row)
    };
    let row = match attempt.await {
        Ok(row) => row,
        Err(err) if err.code == UNIQUE_VIOLATION => {
            // Either a concurrent request with the same key won (replay its answer) or
            // the name is taken.
            if let Some(key) = &key
                && let Some(replayed) =
                    idempotency::replay(&state.db, tenant, key, &fingerprint).await?
            {
                return Ok(replayed);
            }
            return Err(ApiError::conflict(
                "network_name_taken",
                format!(
                    "a network named {:?} exists in this tenant; choose another name",
                    request.name
                ),
            ));
        }
        Err(err) => return Err(err),
    };
    let row = reconcile::apply(&state, row).await?;
    let network = Network::from_row(row)?;
    let body = serde_json::to_string(&network).map_err(ApiError::internal)?;
    if let Some(key) = &key {
        idempotency::update_body(&state.db, tenant, key, &body).await?;
    }
    Ok(json_response(
        StatusCode::CREATED,
        body,
        Some(&format!("/v1/networks/{}", network.id)),
    ))
}

const UNIQUE_VIOLATION: &str = "unique_violation";

/// Marks a unique-index violation so `create` can tell it from other failures.
fn unique_as_conflict(err: sea_orm::DbErr) -> ApiError {
    if is_unique(&err) {
        ApiError::conflict(UNIQUE_VIOLATION, "unique violation").with_internal(err.to_string())
    } else {
        err.into()
    }
}

#[utoipa::path(get, path = "/v1/networks", tag = "networks", params(PageQuery),
    responses((status = 200, body = NetworkPage), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    scope: Scope,
    Query(query): Query<PageQuery>,
) -> ApiResult<Response> {
    let page = query.parse()?;
    let tenant = scope.tenant();
    let read = Read::List {
        after: page.after,
        limit: page.limit,
    };
    remembered(&state, tenant, read, async {
        let rows = store::list_text(&state.db, tenant, page.after, page.limit + 1).await?;
        let (rows, next_cursor) = pagination::finish(rows, page.limit, |row| row.id);
        let items = rows
            .into_iter()
            .map(Network::from_text)
            .collect::<ApiResult<Vec<_>>>()?;
        Ok(NetworkPage { items, next_cursor })
    })
    .await
}

#[utoipa::path(get, path = "/v1/networks/{id}", tag = "networks", params(("id" = Uuid, Path)),
    responses((status = 200, body = Network), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_one(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let tenant = scope.tenant();
    remembered(&state, tenant, Read::Get(id), async {
        Network::from_text(store::find_text(&state.db, tenant, id).await?)
    })
    .await
}

/// Answers a read with the tenant's remembered answer when its networks are unchanged
/// since it was built, else with `build`'s (remembering it). `build` is a future: it
/// reads its rows only when awaited, after the version was read, which is what makes a
/// remembered answer never older than the version it is kept under
/// ([`read_cache`] has the argument).
async fn remembered<T: Serialize>(
    state: &AppState,
    tenant: TenantId,
    read: Read,
    build: impl Future<Output = ApiResult<T>>,
) -> ApiResult<Response> {
    let version = state.network_versions.current(&state.db, tenant).await?;
    if let Some(body) = state.network_reads.get(tenant, version, &read) {
        return Ok(json_response(StatusCode::OK, body, None));
    }
    let answer = build.await?;
    let body = Bytes::from(serde_json::to_vec(&answer).map_err(ApiError::internal)?);
    state.network_reads.put(tenant, version, read, body.clone());
    Ok(json_response(StatusCode::OK, body, None))
}

/// Changes the desired state: scale, autoscaling policy, node version, pause/stop.
#[utoipa::path(patch, path = "/v1/networks/{id}", tag = "networks", params(("id" = Uuid, Path)),
    request_body = UpdateNetworkRequest,
    responses((status = 200, body = Network), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
    Json(patch): Json<UpdateNetworkRequest>,
) -> ApiResult<Json<Network>> {
    scope.require(Role::Member)?;
    let tenant = scope.tenant();
    let row = store::find(&state.db, tenant, id).await?;
    if NetworkPhase::parse(&row.phase) == NetworkPhase::Deleting {
        return Err(ApiError::conflict(
            "network_deleting",
            "the network is being deleted",
        ));
    }
    let current = Network::from_row(row.clone())?.spec;
    let next = current.patched(&patch).map_err(ApiError::validation)?;
    if next == current {
        return Ok(Json(Network::from_row(row)?));
    }
    let (plan, networks, nodes) = store::usage(&state.db, tenant, Some(id)).await?;
    crate::plans::check_stored(&state.db, &plan, &next, networks, nodes).await?;
    let txn = state.db.begin().await?;
    let updated = store::update_spec(&txn, tenant, &row, &next)
        .await?
        .ok_or_else(|| {
            ApiError::conflict(
                "concurrent_update",
                "the network changed while this request was processed; read it and retry",
            )
        })?;
    crate::billing::ledger::record(&txn, &state.billing, &updated, &next).await?;
    audit::record(
        &txn,
        tenant,
        &scope.actor(),
        "network.update",
        Some(format!("network:{id}")),
        serde_json::to_value(&patch).unwrap_or_default(),
    )
    .await?;
    txn.commit().await?;
    let updated = reconcile::apply(&state, updated).await?;
    Ok(Json(Network::from_row(updated)?))
}

/// Deletes a network: its nodes are removed by the provisioner (ledger data kept when
/// `retain_ledger_on_delete`), then the record (204). If the provisioner cannot delete
/// now, the network stays `Deleting`, the deletion is retried in the background, and
/// the answer is 202 with the network.
#[utoipa::path(delete, path = "/v1/networks/{id}", tag = "networks", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 202, body = Network), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    scope.require(Role::Member)?;
    let tenant = scope.tenant();
    let row = store::find(&state.db, tenant, id).await?;
    let txn = state.db.begin().await?;
    store::set_phase(&txn, row.id, NetworkPhase::Deleting, None).await?;
    crate::billing::ledger::record_deleted(&txn, &state.billing, &row).await?;
    audit::record(
        &txn,
        tenant,
        &scope.actor(),
        "network.delete",
        Some(format!("network:{id}")),
        serde_json::json!({ "name": row.name }),
    )
    .await?;
    txn.commit().await?;
    match reconcile::delete(&state, &row).await? {
        reconcile::Deletion::Done => Ok(StatusCode::NO_CONTENT.into_response()),
        reconcile::Deletion::Deferred(_) => {
            let row = store::find(&state.db, tenant, id).await?;
            Ok((StatusCode::ACCEPTED, Json(Network::from_row(row)?)).into_response())
        }
    }
}

/// `SqlErr` is how sea-orm classifies driver errors; kept here so the store can use it.
pub(crate) fn is_unique(err: &sea_orm::DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(generation: i64, phase: ObservedPhase) -> ObservedStatus {
        ObservedStatus {
            observed_generation: generation,
            phase,
            shard_count: 1,
            epoch: 0,
            shards: vec![],
            rpc_endpoints: vec![],
            message: None,
        }
    }

    #[test]
    fn phases_follow_generations_and_observations() {
        assert_eq!(phase_of(1, 0, false, None), NetworkPhase::Pending);
        assert_eq!(phase_of(1, 1, false, None), NetworkPhase::Provisioning);
        assert_eq!(
            phase_of(2, 2, false, Some(&observed(1, ObservedPhase::Running))),
            NetworkPhase::Provisioning
        );
        assert_eq!(
            phase_of(2, 2, false, Some(&observed(2, ObservedPhase::Running))),
            NetworkPhase::Running
        );
        assert_eq!(
            phase_of(3, 2, false, Some(&observed(2, ObservedPhase::Running))),
            NetworkPhase::Pending
        );
        assert_eq!(phase_of(1, 0, true, None), NetworkPhase::Failed);
    }

    #[test]
    fn phase_names_round_trip() {
        for phase in [
            NetworkPhase::Pending,
            NetworkPhase::Provisioning,
            NetworkPhase::Running,
            NetworkPhase::Scaling,
            NetworkPhase::Upgrading,
            NetworkPhase::Paused,
            NetworkPhase::Stopped,
            NetworkPhase::Degraded,
            NetworkPhase::Failed,
            NetworkPhase::Deleting,
        ] {
            assert_eq!(NetworkPhase::parse(phase.as_str()), phase);
        }
    }
}
