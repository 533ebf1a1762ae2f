//! The tenant's billing API: its plan and quota use, usage records over a time range
//! (also as CloudEvents), and invoices per billing period (JSON or CSV).

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use serde::{Deserialize, Serialize};
use trellis_billing::cloudevents::{self, CloudEvent};
use trellis_billing::invoice::{self, PriceBook, UsageTotal};
use trellis_billing::meter::Meter;
use trellis_billing::money;
use trellis_billing::window::{self, Period, WINDOW_SECONDS};
use trellis_console_entity::{billing_meter, billing_plan, billing_price, usage_record};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult, FieldError, Json, Path, Query};
use crate::plans::PlanLimits;
use crate::tenancy::{Scope, TenantId};

/// A usage query returns at most this many records; narrow the range or filter by
/// network or meter for more.
pub const MAX_USAGE_RECORDS: u64 = 10_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/billing/plan", get(my_plan))
        .route("/v1/billing/usage", get(usage))
        .route("/v1/billing/usage/events", get(usage_events))
        .route("/v1/billing/invoices/{period}", get(invoice_of))
}

fn timestamp(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or_default()
}

// --- plan ------------------------------------------------------------------------

/// A plan's quotas.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    pub networks: u64,
    /// Validator nodes across all networks at maximum scale.
    pub nodes: u64,
    pub shards_per_network: u32,
    /// Ledger storage across all networks at maximum scale, GiB.
    pub storage_gib: u64,
}

impl From<PlanLimits> for Quotas {
    fn from(limits: PlanLimits) -> Self {
        Self {
            networks: limits.networks,
            nodes: limits.nodes,
            shards_per_network: limits.shards_per_network,
            storage_gib: limits.storage_gib,
        }
    }
}

/// A plan: quotas and unit prices (decimal strings per billed unit).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    pub name: String,
    pub currency: String,
    pub quotas: Quotas,
    /// Meter name → unit price; meters not listed are free.
    #[schema(value_type = BTreeMap<String, String>)]
    pub prices: BTreeMap<String, String>,
}

/// How much of its plan a tenant uses (at maximum scale, as quotas are checked).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct QuotaUse {
    pub networks: u64,
    pub nodes: u64,
    pub storage_gib: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantPlan {
    pub plan: Plan,
    pub used: QuotaUse,
}

pub async fn load_plan(conn: &impl ConnectionTrait, name: &str) -> ApiResult<Option<Plan>> {
    let Some(row) = billing_plan::Entity::find_by_id(name.to_string())
        .one(conn)
        .await?
    else {
        return Ok(None);
    };
    let prices = billing_price::Entity::find()
        .filter(billing_price::Column::Plan.eq(name))
        .all(conn)
        .await?
        .into_iter()
        .map(|price| (price.meter, price.unit_price))
        .collect();
    let whole = |value: i64| u64::try_from(value).unwrap_or(0);
    Ok(Some(Plan {
        name: row.name,
        currency: row.currency,
        quotas: Quotas {
            networks: whole(row.networks),
            nodes: whole(row.nodes),
            shards_per_network: u32::try_from(row.shards_per_network).unwrap_or(0),
            storage_gib: whole(row.storage_gib),
        },
        prices,
    }))
}

/// The tenant's plan name, and the plan (the free plan's when it is not stored).
async fn tenant_plan(conn: &impl ConnectionTrait, tenant: TenantId) -> ApiResult<(String, Plan)> {
    let name = trellis_console_entity::tenant::Entity::find_by_id(tenant.get())
        .one(conn)
        .await?
        .map(|row| row.plan)
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    let plan = match load_plan(conn, &name).await? {
        Some(plan) => plan,
        None => load_plan(conn, crate::plans::DEFAULT_PLAN)
            .await?
            .ok_or_else(|| ApiError::internal("no free plan is stored"))?,
    };
    Ok((name, plan))
}

/// What the tenant's networks occupy at maximum scale.
pub async fn quota_use(conn: &impl ConnectionTrait, tenant: TenantId) -> ApiResult<QuotaUse> {
    let (_, networks, nodes) = crate::networks::store::usage(conn, tenant, None).await?;
    Ok(QuotaUse {
        networks,
        nodes,
        storage_gib: nodes * super::ledger::STORAGE_GIB_PER_NODE,
    })
}

/// The caller's plan (quotas, prices) and how much of it is used.
#[utoipa::path(get, path = "/v1/billing/plan", tag = "billing",
    responses((status = 200, body = TenantPlan), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn my_plan(State(state): State<AppState>, scope: Scope) -> ApiResult<Json<TenantPlan>> {
    let (_, plan) = tenant_plan(&state.db, scope.tenant()).await?;
    let used = quota_use(&state.db, scope.tenant()).await?;
    Ok(Json(TenantPlan { plan, used }))
}

// --- usage -----------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Start, RFC 3339, inclusive (windows starting at or after it).
    pub from: Option<String>,
    /// End, RFC 3339, exclusive; at most 400 days after `from`.
    pub to: Option<String>,
    /// Only this network.
    pub network_id: Option<String>,
    /// Only this meter (`node_hours.standard`, `storage_gib_hours`, `transactions`,
    /// `rpc_requests`, …).
    pub meter: Option<String>,
}

struct UsageFilter {
    from: i64,
    to: i64,
    network: Option<Uuid>,
    meter: Option<Meter>,
}

async fn usage_filter(
    conn: &impl ConnectionTrait,
    tenant: TenantId,
    query: &UsageQuery,
) -> ApiResult<UsageFilter> {
    let mut errors: Vec<FieldError> = Vec::new();
    let range = window::parse_range(query.from.as_deref(), query.to.as_deref())
        .map_err(|range_errors| {
            errors.extend(
                range_errors
                    .into_iter()
                    .map(|e| FieldError::new(e.field, e.message)),
            )
        })
        .ok();
    let meter = match query.meter.as_deref() {
        None => None,
        Some(text) => Meter::parse(text)
            .map_err(|err| errors.push(FieldError::new("meter", err.to_string())))
            .ok(),
    };
    let network = match query.network_id.as_deref() {
        None => None,
        Some(text) => Uuid::parse_str(text)
            .map_err(|_| errors.push(FieldError::new("network_id", "must be a UUID")))
            .ok(),
    };
    let Some((from, to)) = range else {
        return Err(ApiError::validation(errors));
    };
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if let Some(network) = network {
        // Usage outlives the network; its meter row says whose it was.
        billing_meter::Entity::find_by_id(network)
            .filter(billing_meter::Column::TenantId.eq(tenant.get()))
            .one(conn)
            .await?
            .ok_or_else(|| ApiError::not_found("network"))?;
    }
    Ok(UsageFilter {
        from: from.timestamp(),
        to: to.timestamp(),
        network,
        meter,
    })
}

async fn usage_rows(
    conn: &impl ConnectionTrait,
    tenant: TenantId,
    filter: &UsageFilter,
) -> ApiResult<Vec<usage_record::Model>> {
    let mut select = usage_record::Entity::find()
        .filter(usage_record::Column::TenantId.eq(tenant.get()))
        .filter(usage_record::Column::WindowStart.gte(filter.from))
        .filter(usage_record::Column::WindowStart.lt(filter.to));
    if let Some(network) = filter.network {
        select = select.filter(usage_record::Column::NetworkId.eq(network));
    }
    if let Some(meter) = filter.meter {
        select = select.filter(usage_record::Column::Meter.eq(meter.as_str()));
    }
    let count = select.clone().count(conn).await?;
    if count > MAX_USAGE_RECORDS {
        return Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "range_too_large",
            format!(
                "{count} usage records match; at most {MAX_USAGE_RECORDS} are returned at once — \
                 narrow the range or filter by network_id or meter"
            ),
        ));
    }
    Ok(select
        .order_by_asc(usage_record::Column::WindowStart)
        .order_by_asc(usage_record::Column::NetworkId)
        .order_by_asc(usage_record::Column::Meter)
        .all(conn)
        .await?)
}

/// One meter of one network in one window.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageRecord {
    pub network_id: Uuid,
    pub meter: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// In base units (seconds × nodes, seconds × GiB, transactions, requests).
    pub quantity: i64,
    /// In billed units (`unit`), to six places.
    #[schema(value_type = String)]
    pub billed_quantity: trellis_billing::Decimal,
    pub unit: String,
    /// `false`: a recorded (closed, final) window. `true`: usage still accruing — the
    /// window is open or not metered yet; `window_end` is then how far it is counted
    /// (now), and the quantity can only grow until the window is recorded.
    pub accruing: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Recorded windows, then the usage still accruing (`accruing: true`), each ordered
    /// by window start.
    pub records: Vec<UsageRecord>,
}

/// Usage records of the caller's tenant in a time range.
#[utoipa::path(get, path = "/v1/billing/usage", tag = "billing", params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn usage(
    State(state): State<AppState>,
    scope: Scope,
    Query(query): Query<UsageQuery>,
) -> ApiResult<Json<UsageReport>> {
    let filter = usage_filter(&state.db, scope.tenant(), &query).await?;
    let mut records: Vec<UsageRecord> = usage_rows(&state.db, scope.tenant(), &filter)
        .await?
        .into_iter()
        .filter_map(|row| {
            let meter = Meter::parse(&row.meter).ok()?;
            Some(UsageRecord {
                network_id: row.network_id,
                meter: row.meter,
                window_start: timestamp(row.window_start),
                window_end: timestamp(row.window_start + WINDOW_SECONDS),
                quantity: row.quantity,
                billed_quantity: money::billed_quantity(row.quantity, meter.base_per_unit()),
                unit: meter.unit().to_string(),
                accruing: false,
            })
        })
        .collect();
    let now = state.billing.now();
    let accruing =
        super::metering::accruing(&state.db, scope.tenant().get(), now, filter.from, filter.to)
            .await?;
    records.extend(
        accruing
            .into_iter()
            .filter(|a| filter.network.is_none_or(|n| n == a.network_id))
            .filter(|a| filter.meter.is_none_or(|m| m == a.meter))
            .map(|a| {
                let quantity = i64::try_from(a.quantity).unwrap_or(i64::MAX);
                UsageRecord {
                    network_id: a.network_id,
                    meter: a.meter.as_str().to_string(),
                    window_start: timestamp(a.window_start),
                    window_end: timestamp((a.window_start + WINDOW_SECONDS).min(now)),
                    quantity,
                    billed_quantity: money::billed_quantity(quantity, a.meter.base_per_unit()),
                    unit: a.meter.unit().to_string(),
                    accruing: true,
                }
            }),
    );
    Ok(Json(UsageReport {
        from: timestamp(filter.from),
        to: timestamp(filter.to),
        records,
    }))
}

/// The same records as CloudEvents 1.0 (a JSON batch), for an external billing
/// system. Event ids are stable across exports.
#[utoipa::path(get, path = "/v1/billing/usage/events", tag = "billing", params(UsageQuery),
    responses((status = 200, description = "A CloudEvents JSON batch (application/cloudevents-batch+json)", body = [serde_json::Value]),
        (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn usage_events(
    State(state): State<AppState>,
    scope: Scope,
    Query(query): Query<UsageQuery>,
) -> ApiResult<Response> {
    let filter = usage_filter(&state.db, scope.tenant(), &query).await?;
    let events: Vec<CloudEvent> = usage_rows(&state.db, scope.tenant(), &filter)
        .await?
        .into_iter()
        .filter_map(|row| {
            let meter = Meter::parse(&row.meter).ok()?;
            Some(cloudevents::usage_event(
                row.tenant_id,
                row.network_id,
                meter,
                timestamp(row.window_start),
                timestamp(row.window_start + WINDOW_SECONDS),
                row.quantity,
            ))
        })
        .collect();
    let body = serde_json::to_string(&events).map_err(ApiError::internal)?;
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/cloudevents-batch+json"),
    );
    Ok(response)
}

// --- invoices --------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvoiceQuery {
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct InvoiceLine {
    pub network_id: Uuid,
    pub network_name: String,
    pub meter: String,
    #[schema(value_type = String)]
    pub quantity: trellis_billing::Decimal,
    pub unit: String,
    #[schema(value_type = String)]
    pub unit_price: trellis_billing::Decimal,
    #[schema(value_type = String)]
    pub amount: trellis_billing::Decimal,
}

/// An invoice: the period's usage rated by the tenant's current plan.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Invoice {
    pub period: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// `open` while the period (or its last window) is not fully metered: the lines then
    /// include the usage accrued so far, not recorded yet (see `GET /v1/billing/usage`,
    /// `accruing`), and can still grow; `closed` after, from recorded usage only.
    pub status: String,
    pub plan: String,
    pub currency: String,
    pub lines: Vec<InvoiceLine>,
    #[schema(value_type = String)]
    pub total: trellis_billing::Decimal,
}

/// The invoice of a billing period (`YYYY-MM`, UTC). `?format=csv` returns CSV.
#[utoipa::path(get, path = "/v1/billing/invoices/{period}", tag = "billing",
    params(("period" = String, Path, description = "YYYY-MM"), InvoiceQuery),
    responses((status = 200, body = Invoice), (status = 200, description = "CSV", content_type = "text/csv"),
        (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn invoice_of(
    State(state): State<AppState>,
    scope: Scope,
    Path(period): Path<String>,
    Query(query): Query<InvoiceQuery>,
) -> ApiResult<Response> {
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::validation(vec![FieldError::new(
                "format",
                format!("{other:?} is not a format; use \"json\" or \"csv\""),
            )]));
        }
    };
    let period = Period::parse(&period)
        .map_err(|message| ApiError::validation(vec![FieldError::new("period", message)]))?;
    let invoice = build_invoice(&state, scope.tenant(), period).await?;
    if csv {
        let text = invoice::to_csv(&invoice.0);
        let mut response = text.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        return Ok(response);
    }
    let pure = invoice.0;
    Ok(Json(Invoice {
        period: pure.period,
        period_start: pure.period_start,
        period_end: pure.period_end,
        status: invoice.1.to_string(),
        plan: pure.plan,
        currency: pure.currency,
        lines: pure
            .lines
            .into_iter()
            .map(|line| InvoiceLine {
                network_id: line.network_id,
                network_name: line.network_name,
                meter: line.meter.as_str().to_string(),
                quantity: line.quantity,
                unit: line.unit,
                unit_price: line.unit_price,
                amount: line.amount,
            })
            .collect(),
        total: pure.total,
    })
    .into_response())
}

/// The invoice of `period` and whether it is `open` or `closed`.
pub async fn build_invoice(
    state: &AppState,
    tenant: TenantId,
    period: Period,
) -> ApiResult<(invoice::Invoice, &'static str)> {
    let (plan_name, plan) = tenant_plan(&state.db, tenant).await?;
    let mut book = PriceBook {
        currency: plan.currency.clone(),
        prices: BTreeMap::new(),
    };
    for (meter, price) in &plan.prices {
        if let (Ok(meter), Ok(price)) = (Meter::parse(meter), money::parse_unit_price(price)) {
            book.prices.insert(meter, price);
        }
    }
    let (start, end) = (period.start(), period.end());
    let mut totals: BTreeMap<(Uuid, String), i64> =
        super::metering::totals(&state.db, tenant.get(), start.timestamp(), end.timestamp())
            .await?
            .into_iter()
            .collect();
    let open = super::metering::horizon(&state.billing) < end.timestamp();
    if open {
        // The usage after each network's metering cursor: never also a record.
        for accruing in super::metering::accruing(
            &state.db,
            tenant.get(),
            state.billing.now(),
            start.timestamp(),
            end.timestamp(),
        )
        .await?
        {
            let total = totals
                .entry((accruing.network_id, accruing.meter.as_str().to_string()))
                .or_default();
            *total = total.saturating_add(i64::try_from(accruing.quantity).unwrap_or(i64::MAX));
        }
    }
    let names: HashMap<Uuid, String> = billing_meter::Entity::find()
        .filter(billing_meter::Column::TenantId.eq(tenant.get()))
        .all(&state.db)
        .await?
        .into_iter()
        .map(|meter| (meter.network_id, meter.network_name))
        .collect();
    let usage: Vec<UsageTotal> = totals
        .into_iter()
        .filter_map(|((network_id, meter), quantity)| {
            Some(UsageTotal {
                network_id,
                network_name: names.get(&network_id).cloned().unwrap_or_default(),
                meter: Meter::parse(&meter).ok()?,
                base_quantity: quantity,
            })
        })
        .collect();
    let invoice = invoice::build(period.to_string(), start, end, plan_name, &book, &usage)
        .map_err(ApiError::internal)?;
    let status = if open { "open" } else { "closed" };
    Ok((invoice, status))
}
