//! Plans and prices, administered by platform admins: the owners and admins of a tenant
//! listed in `platform_admins` (granted with `trellis-console grant-platform-admin`).
//! Every tenant may read the plan catalogue.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, put};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    TransactionTrait,
};
use serde::{Deserialize, Serialize};
use trellis_billing::meter::Meter;
use trellis_billing::money;
use trellis_console_entity::{billing_plan, billing_price, platform_admin, tenant};
use utoipa::ToSchema;
use uuid::Uuid;

use super::api::{Plan, Quotas, load_plan};
use crate::app::AppState;
use crate::audit;
use crate::auth::Role;
use crate::error::{ApiError, ApiResult, FieldError, Json, Path};
use crate::tenancy::Scope;

/// Quota figures above these are typos, not plans.
const MAX_NETWORKS: u64 = 1_000_000;
const MAX_NODES: u64 = 10_000_000;
const MAX_STORAGE_GIB: u64 = 1_000_000_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/plans", get(list_plans))
        .route("/v1/admin/plans/{name}", put(put_plan))
        .route("/v1/admin/tenants/{id}/plan", put(set_tenant_plan))
}

/// Makes the owners and admins of `tenant_id` platform admins.
pub async fn grant(conn: &impl ConnectionTrait, tenant_id: Uuid, now: i64) -> Result<(), DbErr> {
    platform_admin::Entity::insert(platform_admin::ActiveModel {
        tenant_id: Set(tenant_id),
        granted_at: Set(now),
    })
    .on_conflict_do_nothing_on([platform_admin::Column::TenantId])
    .exec(conn)
    .await
    .map(|_| ())
}

/// [`grant`] by tenant slug, for the command line.
pub async fn grant_by_slug(conn: &impl ConnectionTrait, slug: &str) -> Result<Uuid, DbErr> {
    let row = tenant::Entity::find()
        .filter(tenant::Column::Slug.eq(slug))
        .one(conn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("no tenant with slug {slug:?}")))?;
    grant(conn, row.id, chrono::Utc::now().timestamp()).await?;
    Ok(row.id)
}

/// 403 unless the caller is an admin (or owner) of a platform-admin tenant.
async fn require_platform_admin(conn: &impl ConnectionTrait, scope: &Scope) -> ApiResult<()> {
    let denied = || ApiError::forbidden("only platform admins may change plans and prices");
    scope.require(Role::Admin).map_err(|_| denied())?;
    platform_admin::Entity::find_by_id(scope.tenant().get())
        .one(conn)
        .await?
        .map(|_| ())
        .ok_or_else(denied)
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PlanList {
    pub items: Vec<Plan>,
}

/// The plan catalogue: every plan's quotas and prices.
#[utoipa::path(get, path = "/v1/plans", tag = "billing",
    responses((status = 200, body = PlanList), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list_plans(State(state): State<AppState>, _scope: Scope) -> ApiResult<Json<PlanList>> {
    let mut items = Vec::new();
    for row in billing_plan::Entity::find()
        .order_by_asc(billing_plan::Column::Name)
        .all(&state.db)
        .await?
    {
        if let Some(plan) = load_plan(&state.db, &row.name).await? {
            items.push(plan);
        }
    }
    Ok(Json(PlanList { items }))
}

/// `PUT /v1/admin/plans/{name}`: the whole plan (quotas and every price).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// ISO 4217 code; default `USD`.
    pub currency: Option<String>,
    pub quotas: Quotas,
    /// Meter name → unit price as a decimal string (≥ 0, ≤ 10000, ≤ 8 places).
    /// Meters left out are free.
    #[serde(default)]
    pub prices: BTreeMap<String, String>,
}

fn validate_plan(
    name: &str,
    request: &PlanRequest,
) -> Result<BTreeMap<Meter, String>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut names = Vec::new();
    crate::networks::spec::validate_name(name, &mut names);
    errors.extend(
        names
            .into_iter()
            .map(|e| FieldError::new("name", e.message)),
    );
    if let Some(currency) = &request.currency
        && !(currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()))
    {
        errors.push(FieldError::new(
            "currency",
            "an ISO 4217 code: three capital letters, e.g. USD",
        ));
    }
    let quotas = &request.quotas;
    for (field, value, max) in [
        ("quotas.networks", quotas.networks, MAX_NETWORKS),
        ("quotas.nodes", quotas.nodes, MAX_NODES),
        (
            "quotas.shards_per_network",
            u64::from(quotas.shards_per_network),
            u64::from(crate::networks::spec::MAX_SHARDS),
        ),
        ("quotas.storage_gib", quotas.storage_gib, MAX_STORAGE_GIB),
    ] {
        if value > max {
            errors.push(FieldError::new(field, format!("at most {max}")));
        }
    }
    let mut prices = BTreeMap::new();
    for (meter, price) in &request.prices {
        let field = format!("prices.{meter}");
        match (Meter::parse(meter), money::parse_unit_price(price)) {
            (Err(err), _) => errors.push(FieldError::new(field, err.to_string())),
            (_, Err(err)) => errors.push(FieldError::new(field, err.to_string())),
            (Ok(meter), Ok(price)) => {
                prices.insert(meter, price.to_string());
            }
        }
    }
    if errors.is_empty() {
        Ok(prices)
    } else {
        Err(errors)
    }
}

/// Creates or replaces a plan (platform admins only). Tenants on the plan are rated
/// with the new prices from their next invoice on, and quotas apply to their next
/// create or scale.
#[utoipa::path(put, path = "/v1/admin/plans/{name}", tag = "billing",
    params(("name" = String, Path)), request_body = PlanRequest,
    responses((status = 200, body = Plan), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn put_plan(
    State(state): State<AppState>,
    scope: Scope,
    Path(name): Path<String>,
    Json(request): Json<PlanRequest>,
) -> ApiResult<Json<Plan>> {
    require_platform_admin(&state.db, &scope).await?;
    let prices = validate_plan(&name, &request).map_err(ApiError::validation)?;
    let whole = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    let txn = state.db.begin().await?;
    let row = billing_plan::ActiveModel {
        name: Set(name.clone()),
        networks: Set(whole(request.quotas.networks)),
        nodes: Set(whole(request.quotas.nodes)),
        shards_per_network: Set(i64::from(request.quotas.shards_per_network)),
        storage_gib: Set(whole(request.quotas.storage_gib)),
        currency: Set(request.currency.clone().unwrap_or_else(|| "USD".into())),
        updated_at: Set(state.billing.now()),
    };
    billing_plan::Entity::insert(row)
        .on_conflict(
            sea_orm::sea_query::OnConflict::column(billing_plan::Column::Name)
                .update_columns([
                    billing_plan::Column::Networks,
                    billing_plan::Column::Nodes,
                    billing_plan::Column::ShardsPerNetwork,
                    billing_plan::Column::StorageGib,
                    billing_plan::Column::Currency,
                    billing_plan::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
    billing_price::Entity::delete_many()
        .filter(billing_price::Column::Plan.eq(&name))
        .exec(&txn)
        .await?;
    if !prices.is_empty() {
        billing_price::Entity::insert_many(prices.iter().map(|(meter, price)| {
            billing_price::ActiveModel {
                plan: Set(name.clone()),
                meter: Set(meter.as_str().to_string()),
                unit_price: Set(price.clone()),
            }
        }))
        .exec_without_returning(&txn)
        .await?;
    }
    audit::record(
        &txn,
        scope.tenant(),
        &scope.actor(),
        "plan.update",
        Some(format!("plan:{name}")),
        serde_json::to_value(&request).unwrap_or_default(),
    )
    .await?;
    txn.commit().await?;
    load_plan(&state.db, &name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::internal("the plan vanished after it was written"))
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPlanRequest {
    pub plan: String,
}

/// Moves a tenant to a plan (platform admins only).
#[utoipa::path(put, path = "/v1/admin/tenants/{id}/plan", tag = "billing",
    params(("id" = Uuid, Path)), request_body = TenantPlanRequest,
    responses((status = 200, body = Plan), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn set_tenant_plan(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
    Json(request): Json<TenantPlanRequest>,
) -> ApiResult<Json<Plan>> {
    require_platform_admin(&state.db, &scope).await?;
    let plan = load_plan(&state.db, &request.plan).await?.ok_or_else(|| {
        ApiError::validation(vec![FieldError::new(
            "plan",
            format!("no plan named {:?}; see GET /v1/plans", request.plan),
        )])
    })?;
    let txn = state.db.begin().await?;
    let updated = tenant::Entity::update_many()
        .col_expr(
            tenant::Column::Plan,
            sea_orm::sea_query::Expr::value(&request.plan),
        )
        .filter(tenant::Column::Id.eq(id))
        .exec(&txn)
        .await?;
    if updated.rows_affected != 1 {
        return Err(ApiError::not_found("tenant"));
    }
    audit::record(
        &txn,
        scope.tenant(),
        &scope.actor(),
        "tenant.plan",
        Some(format!("tenant:{id}")),
        serde_json::json!({ "plan": request.plan }),
    )
    .await?;
    txn.commit().await?;
    Ok(Json(plan))
}
