//! Tenant-scoped queries on networks. Every function that a request reaches takes a
//! [`TenantId`] and filters by it; rows of other tenants are invisible ("not found").

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, FromQueryResult,
    QueryFilter, QueryOrder, QuerySelect, Select, Set,
};
use trellis_console_entity::{network, network_version};
use uuid::Uuid;

use super::NetworkPhase;
use super::autoscale::AutoscalerStatus;
use super::spec::NetworkSpec;
use crate::error::ApiError;
use crate::provisioner::ObservedStatus;
use crate::tenancy::TenantId;

fn spec_json(spec: &NetworkSpec) -> Result<serde_json::Value, DbErr> {
    serde_json::to_value(spec).map_err(|err| DbErr::Custom(format!("encoding spec: {err}")))
}

pub async fn insert(
    conn: &impl ConnectionTrait,
    tenant: TenantId,
    name: &str,
    spec: &NetworkSpec,
) -> Result<network::Model, DbErr> {
    let now = Utc::now();
    network::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant.get()),
        name: Set(name.to_string()),
        mode: Set(spec.mode.as_str().to_string()),
        spec: Set(spec_json(spec)?),
        generation: Set(1),
        provisioned_generation: Set(0),
        phase: Set(NetworkPhase::Pending.as_str().to_string()),
        status: Set(None),
        provision_error: Set(None),
        autoscaler: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(conn)
    .await
}

/// A network as the read endpoints answer it: its JSON columns read as text, so each is
/// parsed once, straight into its type (an entity's `Json` column builds a
/// `serde_json::Value` first; docs/benchmarks.md has what that cost a list).
#[derive(Debug, FromQueryResult)]
pub struct NetworkText {
    pub id: Uuid,
    pub name: String,
    pub spec: String,
    pub generation: i64,
    pub provisioned_generation: i64,
    pub phase: String,
    pub status: Option<String>,
    pub provision_error: Option<String>,
    pub autoscaler: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The entity's row in the read endpoints' shape, for the one constructor of
/// [`super::Network`] (its JSON columns encoded again: only write paths take this way).
impl From<network::Model> for NetworkText {
    fn from(row: network::Model) -> Self {
        Self {
            id: row.id,
            name: row.name,
            spec: row.spec.to_string(),
            generation: row.generation,
            provisioned_generation: row.provisioned_generation,
            phase: row.phase,
            status: row.status.map(|status| status.to_string()),
            provision_error: row.provision_error,
            autoscaler: row.autoscaler.map(|autoscaler| autoscaler.to_string()),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// `SELECT` of [`NetworkText`]'s columns. The JSON ones are cast to text: PostgreSQL's
/// `json` type does not decode as a string (SQLite stores text anyway).
fn select_text() -> Select<network::Entity> {
    use network::Column;
    let text = |column: Column| Expr::col((network::Entity, column)).cast_as("text");
    network::Entity::find()
        .select_only()
        .columns([
            Column::Id,
            Column::Name,
            Column::Generation,
            Column::ProvisionedGeneration,
            Column::Phase,
            Column::ProvisionError,
            Column::CreatedAt,
            Column::UpdatedAt,
        ])
        .expr_as(text(Column::Spec), "spec")
        .expr_as(text(Column::Status), "status")
        .expr_as(text(Column::Autoscaler), "autoscaler")
}

/// [`find`] for reading only.
pub async fn find_text(
    conn: &impl ConnectionTrait,
    tenant: TenantId,
    id: Uuid,
) -> Result<NetworkText, ApiError> {
    select_text()
        .filter(network::Column::Id.eq(id))
        .filter(network::Column::TenantId.eq(tenant.get()))
        .into_model::<NetworkText>()
        .one(conn)
        .await?
        .ok_or_else(|| ApiError::not_found("network"))
}

/// Up to `limit` networks of `tenant` with ids after `after`, in id (= creation) order.
pub async fn list_text(
    conn: &impl ConnectionTrait,
    tenant: TenantId,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<NetworkText>, DbErr> {
    let mut select = select_text()
        .filter(network::Column::TenantId.eq(tenant.get()))
        .order_by_asc(network::Column::Id)
        .limit(limit);
    if let Some(after) = after {
        select = select.filter(network::Column::Id.gt(after));
    }
    select.into_model::<NetworkText>().all(conn).await
}

/// The tenant's network version: changes with every committed write to one of its
/// networks (a database trigger bumps it in the writing transaction; 0 before the first
/// write). What [`super::read_cache`] keys its answers by.
pub async fn version(conn: &impl ConnectionTrait, tenant: TenantId) -> Result<i64, DbErr> {
    Ok(network_version::Entity::find_by_id(tenant.get())
        .one(conn)
        .await?
        .map_or(0, |row| row.version))
}

/// The network `id` of `tenant`, or 404.
pub async fn find(
    conn: &impl ConnectionTrait,
    tenant: TenantId,
    id: Uuid,
) -> Result<network::Model, ApiError> {
    network::Entity::find_by_id(id)
        .filter(network::Column::TenantId.eq(tenant.get()))
        .one(conn)
        .await?
        .ok_or_else(|| ApiError::not_found("network"))
}

/// Writes a new spec and bumps the generation, only if nobody else changed the row since
/// `current` was read (optimistic concurrency). `None` when somebody did.
pub async fn update_spec(
    conn: &impl ConnectionTrait,
    tenant: TenantId,
    current: &network::Model,
    spec: &NetworkSpec,
) -> Result<Option<network::Model>, DbErr> {
    let result = network::Entity::update_many()
        .col_expr(network::Column::Spec, Expr::value(spec_json(spec)?))
        .col_expr(
            network::Column::Generation,
            Expr::value(current.generation + 1),
        )
        .col_expr(
            network::Column::Phase,
            Expr::value(NetworkPhase::Pending.as_str()),
        )
        .col_expr(network::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(network::Column::Id.eq(current.id))
        .filter(network::Column::TenantId.eq(tenant.get()))
        .filter(network::Column::Generation.eq(current.generation))
        // A deletion in progress wins over a concurrent change.
        .filter(network::Column::Phase.ne(NetworkPhase::Deleting.as_str()))
        .exec(conn)
        .await?;
    if result.rows_affected != 1 {
        return Ok(None);
    }
    network::Entity::find_by_id(current.id).one(conn).await
}

/// Records the autoscaler's newest change of network `id` (in the transaction that
/// makes the change), so that reading the network needs no second query.
pub async fn set_autoscaler(
    conn: &impl ConnectionTrait,
    id: Uuid,
    status: &AutoscalerStatus,
) -> Result<(), DbErr> {
    let status = serde_json::to_value(status)
        .map_err(|err| DbErr::Custom(format!("encoding autoscaler status: {err}")))?;
    network::Entity::update_many()
        .col_expr(network::Column::Autoscaler, Expr::value(status))
        .filter(network::Column::Id.eq(id))
        .exec(conn)
        .await
        .map(|_| ())
}

pub async fn set_phase(
    conn: &impl ConnectionTrait,
    id: Uuid,
    phase: NetworkPhase,
    provision_error: Option<String>,
) -> Result<(), DbErr> {
    network::Entity::update_many()
        .col_expr(network::Column::Phase, Expr::value(phase.as_str()))
        .col_expr(
            network::Column::ProvisionError,
            Expr::value(provision_error),
        )
        .col_expr(network::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(network::Column::Id.eq(id))
        .exec(conn)
        .await
        .map(|_| ())
}

/// Records that the provisioner accepted `generation`. Never moves backwards: a slow
/// apply of an older generation finishing after a newer one changes nothing.
pub async fn mark_provisioned(
    conn: &impl ConnectionTrait,
    id: Uuid,
    generation: i64,
    phase: NetworkPhase,
) -> Result<(), DbErr> {
    network::Entity::update_many()
        .col_expr(
            network::Column::ProvisionedGeneration,
            Expr::value(generation),
        )
        .col_expr(
            network::Column::ProvisionError,
            Expr::value(Option::<String>::None),
        )
        .col_expr(network::Column::Phase, Expr::value(phase.as_str()))
        .filter(network::Column::Id.eq(id))
        .filter(network::Column::ProvisionedGeneration.lt(generation))
        .filter(network::Column::Generation.eq(generation))
        .filter(network::Column::Phase.ne(NetworkPhase::Deleting.as_str()))
        .exec(conn)
        .await
        .map(|_| ())
}

pub async fn record_observed(
    conn: &impl ConnectionTrait,
    row: &network::Model,
    status: Option<&ObservedStatus>,
    phase: NetworkPhase,
) -> Result<(), DbErr> {
    let status = status
        .map(serde_json::to_value)
        .transpose()
        .map_err(|err| DbErr::Custom(format!("encoding status: {err}")))?;
    if status == row.status && phase.as_str() == row.phase {
        // Unchanged: writing it again would only bump the tenant's network version and
        // so make the read endpoints build their answers again.
        return Ok(());
    }
    network::Entity::update_many()
        .col_expr(network::Column::Status, Expr::value(status))
        .col_expr(network::Column::Phase, Expr::value(phase.as_str()))
        .filter(network::Column::Id.eq(row.id))
        // Only if nothing changed since `row` was read.
        .filter(network::Column::Generation.eq(row.generation))
        .filter(network::Column::Phase.ne(NetworkPhase::Deleting.as_str()))
        .exec(conn)
        .await
        .map(|_| ())
}

pub async fn remove(conn: &impl ConnectionTrait, id: Uuid) -> Result<(), DbErr> {
    network::Entity::delete_by_id(id)
        .exec(conn)
        .await
        .map(|_| ())
}

/// All networks of all tenants, a batch at a time, for the reconciler (not reachable
/// from a request).
pub async fn all_after(
    conn: &impl ConnectionTrait,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<network::Model>, DbErr> {
    let mut select = network::Entity::find()
        .order_by_asc(network::Column::Id)
        .limit(limit);
    if let Some(after) = after {
        select = select.filter(network::Column::Id.gt(after));
    }
    select.all(conn).await
}

/// The tenant's plan, its network count and node total at maximum scale, excluding
/// `except` (the network being changed).
pub async fn usage(
    conn: &impl ConnectionTrait,
    tenant: TenantId,
    except: Option<Uuid>,
) -> Result<(String, u64, u64), ApiError> {
    let plan = trellis_console_entity::tenant::Entity::find_by_id(tenant.get())
        .one(conn)
        .await?
        .map(|row| row.plan)
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    let mut select = network::Entity::find().filter(network::Column::TenantId.eq(tenant.get()));
    if let Some(except) = except {
        select = select.filter(network::Column::Id.ne(except));
    }
    let mut networks = 0;
    let mut nodes = 0;
    for row in select.all(conn).await? {
        networks += 1;
        if let Ok(spec) = serde_json::from_value::<NetworkSpec>(row.spec) {
            nodes += crate::plans::max_nodes(&spec);
        }
    }
    Ok((plan, networks, nodes))
}
