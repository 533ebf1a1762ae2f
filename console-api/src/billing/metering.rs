//! The metering pass: closes every finished one-hour window of every network into
//! usage records, from the footprint log and the counters.
//!
//! Safe to run at any time, any number of times, and after any gap: a network's meter
//! remembers how far it is metered (`metered_until`) and the footprint in effect there;
//! each batch of networks is written in one transaction (records, counters consumed,
//! cursors moved), and records are keyed by (tenant, network, meter, window) and
//! inserted with `ON CONFLICT DO NOTHING`. A pass killed half-way leaves whole batches
//! done and the rest untouched; the next pass starts where the cursors say.

use std::collections::HashMap;

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use trellis_billing::meter::{Meter, SizeClass};
use trellis_billing::usage::{self, Change, Footprint};
use trellis_billing::window::{WINDOW_SECONDS, window_start};
use trellis_console_entity::{billing_counter, billing_footprint, billing_meter, usage_record};
use uuid::Uuid;

use super::Billing;

/// Networks per transaction.
const BATCH: u64 = 500;

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeteringReport {
    pub networks: u64,
    pub windows: u64,
    pub records: u64,
    pub rpc_requests_flushed: u64,
}

fn footprint_of(meter: &billing_meter::Model) -> Footprint {
    Footprint {
        nodes: u32::try_from(meter.nodes).unwrap_or(0),
        storage_gib: u64::try_from(meter.storage_gib).unwrap_or(0),
        compute_billed: meter.compute_billed,
    }
}

fn change_of(row: &billing_footprint::Model) -> Change {
    Change {
        at: row.at,
        footprint: Footprint {
            nodes: u32::try_from(row.nodes).unwrap_or(0),
            storage_gib: u64::try_from(row.storage_gib).unwrap_or(0),
            compute_billed: row.compute_billed,
        },
    }
}

fn record(
    meter: &billing_meter::Model,
    name: Meter,
    window: i64,
    quantity: u64,
) -> usage_record::ActiveModel {
    usage_record::ActiveModel {
        tenant_id: Set(meter.tenant_id),
        network_id: Set(meter.network_id),
        meter: Set(name.as_str().to_string()),
        window_start: Set(window),
        quantity: Set(i64::try_from(quantity).unwrap_or(i64::MAX)),
    }
}

/// The last instant that is metered now: the end of the last window that finished at
/// least the grace period ago.
pub fn horizon(billing: &Billing) -> i64 {
    window_start(billing.now() - billing.settings.metering_grace_seconds)
}

/// One pass over every network with finished, unmetered windows.
pub async fn meter_once(
    db: &DatabaseConnection,
    billing: &Billing,
) -> Result<MeteringReport, DbErr> {
    let mut report = MeteringReport {
        rpc_requests_flushed: billing.rpc_requests.flush(db, billing.now()).await?,
        ..MeteringReport::default()
    };
    let horizon = horizon(billing);
    let mut after: Option<Uuid> = None;
    loop {
        let mut select = billing_meter::Entity::find()
            .filter(billing_meter::Column::MeteredUntil.lt(horizon))
            .filter(
                Condition::any()
                    .add(billing_meter::Column::DeletedAt.is_null())
                    .add(
                        Expr::col(billing_meter::Column::MeteredUntil)
                            .lte(Expr::col(billing_meter::Column::DeletedAt)),
                    ),
            )
            .order_by_asc(billing_meter::Column::NetworkId)
            .limit(BATCH);
        if let Some(after) = after {
            select = select.filter(billing_meter::Column::NetworkId.gt(after));
        }
        let meters = select.all(db).await?;
        let Some(last) = meters.last() else { break };
        after = Some(last.network_id);
        let batch = meter_batch(db, &meters, horizon).await?;
        report.networks += batch.networks;
        report.windows += batch.windows;
        report.records += batch.records;
    }
    Ok(report)
}

async fn meter_batch(
    db: &DatabaseConnection,
    meters: &[billing_meter::Model],
    horizon: i64,
) -> Result<MeteringReport, DbErr> {
    let ids: Vec<Uuid> = meters.iter().map(|meter| meter.network_id).collect();
    let earliest = meters
        .iter()
        .map(|m| m.metered_until)
        .min()
        .unwrap_or(horizon);
    let txn = db.begin().await?;
    let mut changes: HashMap<Uuid, Vec<Change>> = HashMap::new();
    for row in billing_footprint::Entity::find()
        .filter(billing_footprint::Column::NetworkId.is_in(ids.clone()))
        .filter(billing_footprint::Column::At.gte(earliest))
        .filter(billing_footprint::Column::At.lt(horizon))
        .order_by_asc(billing_footprint::Column::At)
        .order_by_asc(billing_footprint::Column::Id)
        .all(&txn)
        .await?
    {
        changes
            .entry(row.network_id)
            .or_default()
            .push(change_of(&row));
    }
    let mut counted: HashMap<(Uuid, i64), Vec<(Meter, u64)>> = HashMap::new();
    for row in billing_counter::Entity::find()
        .filter(billing_counter::Column::NetworkId.is_in(ids.clone()))
        .filter(billing_counter::Column::WindowStart.lt(horizon))
        .all(&txn)
        .await?
    {
        if let Ok(meter) = Meter::parse(&row.meter) {
            counted
                .entry((row.network_id, row.window_start))
                .or_default()
                .push((meter, u64::try_from(row.quantity).unwrap_or(0)));
        }
    }
    let mut report = MeteringReport::default();
    let mut records = Vec::new();
    for meter in meters {
        let changes: Vec<Change> = changes
            .remove(&meter.network_id)
            .unwrap_or_default()
            .into_iter()
            .filter(|change| change.at >= meter.metered_until)
            .collect();
        let before = footprint_of(meter);
        let mut window = meter.metered_until;
        while window < horizon {
            let end = window + WINDOW_SECONDS;
            let counts = counted
                .remove(&(meter.network_id, window))
                .unwrap_or_default();
            for (name, quantity) in window_usage(before, &changes, counts, window, end) {
                records.push(record(meter, name, window, quantity));
            }
            report.windows += 1;
            window = end;
        }
        let at_horizon = usage::footprint_at(before, &changes, horizon);
        billing_meter::Entity::update_many()
            .col_expr(billing_meter::Column::MeteredUntil, Expr::value(horizon))
            .col_expr(
                billing_meter::Column::Nodes,
                Expr::value(i32::try_from(at_horizon.nodes).unwrap_or(i32::MAX)),
            )
            .col_expr(
                billing_meter::Column::StorageGib,
                Expr::value(i64::try_from(at_horizon.storage_gib).unwrap_or(i64::MAX)),
            )
            .col_expr(
                billing_meter::Column::ComputeBilled,
                Expr::value(at_horizon.compute_billed),
            )
            .filter(billing_meter::Column::NetworkId.eq(meter.network_id))
            // Only if no other pass moved it meanwhile.
            .filter(billing_meter::Column::MeteredUntil.eq(meter.metered_until))
            .exec(&txn)
            .await?;
        report.networks += 1;
    }
    // What is left are counts of windows before a cursor: they arrived after their
    // window was metered (longer than the grace period late) and cannot be billed.
    for ((network, window), late) in &counted {
        tracing::warn!(%network, window, ?late, "counts arrived after their window was metered; dropped");
    }
    report.records = records.len() as u64;
    for chunk in records.chunks(100) {
        usage_record::Entity::insert_many(chunk.to_vec())
            .on_conflict_do_nothing_on([
                usage_record::Column::TenantId,
                usage_record::Column::NetworkId,
                usage_record::Column::Meter,
                usage_record::Column::WindowStart,
            ])
            .exec(&txn)
            .await?;
    }
    billing_counter::Entity::delete_many()
        .filter(billing_counter::Column::NetworkId.is_in(ids))
        .filter(billing_counter::Column::WindowStart.lt(horizon))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(report)
}

/// What one network used in `[window, end)` (one window, or the part of it that has
/// passed): compute from the footprint in effect, counted meters from `counts`; meters
/// that used nothing are left out.
fn window_usage(
    before: Footprint,
    changes: &[Change],
    counts: Vec<(Meter, u64)>,
    window: i64,
    end: i64,
) -> Vec<(Meter, u64)> {
    let accrued = usage::accrue(before, changes, window, end);
    // Networks have no size class yet: every node is standard.
    let mut used = vec![
        (Meter::NodeHours(SizeClass::Standard), accrued.node_seconds),
        (Meter::StorageGibHours, accrued.storage_gib_seconds),
    ];
    used.extend(counts);
    used.retain(|(_, quantity)| *quantity > 0);
    used
}

/// Usage not recorded yet: one network's meter, in one window from `metered_until`
/// on (the window still open, and any a late or stopped metering loop has not closed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accruing {
    pub network_id: Uuid,
    pub meter: Meter,
    pub window_start: i64,
    pub quantity: u64,
}

/// The tenant's usage after each network's `metered_until` up to `now`, in windows
/// starting in `[from, to)`, computed from the same sources the metering pass reads
/// (footprint log, counters). Read only: nothing is recorded, so it can never count
/// twice — a window's usage is either a record (before the cursor) or here (after it).
/// RPC requests appear once the metering loop flushed them (every pass).
pub async fn accruing(
    conn: &impl ConnectionTrait,
    tenant_id: Uuid,
    now: i64,
    from: i64,
    to: i64,
) -> Result<Vec<Accruing>, DbErr> {
    let meters = billing_meter::Entity::find()
        .filter(billing_meter::Column::TenantId.eq(tenant_id))
        .filter(billing_meter::Column::MeteredUntil.lt(Ord::min(now, to)))
        .all(conn)
        .await?;
    let mut out = Vec::new();
    for meter in meters {
        // A deleted network accrues until its deletion (the footprint log says 0 after).
        let until = meter
            .deleted_at
            .map_or(now, |deleted| Ord::min(deleted, now));
        if meter.metered_until >= until {
            continue;
        }
        let changes: Vec<Change> = billing_footprint::Entity::find()
            .filter(billing_footprint::Column::NetworkId.eq(meter.network_id))
            .filter(billing_footprint::Column::At.gte(meter.metered_until))
            .filter(billing_footprint::Column::At.lt(until))
            .order_by_asc(billing_footprint::Column::At)
            .order_by_asc(billing_footprint::Column::Id)
            .all(conn)
            .await?
            .iter()
            .map(change_of)
            .collect();
        let mut counted: HashMap<i64, Vec<(Meter, u64)>> = HashMap::new();
        for row in billing_counter::Entity::find()
            .filter(billing_counter::Column::NetworkId.eq(meter.network_id))
            .filter(billing_counter::Column::WindowStart.gte(meter.metered_until))
            .all(conn)
            .await?
        {
            if let Ok(name) = Meter::parse(&row.meter) {
                counted
                    .entry(row.window_start)
                    .or_default()
                    .push((name, u64::try_from(row.quantity).unwrap_or(0)));
            }
        }
        let before = footprint_of(&meter);
        let mut window = meter.metered_until;
        while window < until {
            let end = Ord::min(window + WINDOW_SECONDS, until);
            let counts = counted.remove(&window).unwrap_or_default();
            if (from..to).contains(&window) {
                for (name, quantity) in window_usage(before, &changes, counts, window, end) {
                    out.push(Accruing {
                        network_id: meter.network_id,
                        meter: name,
                        window_start: window,
                        quantity,
                    });
                }
            }
            window += WINDOW_SECONDS;
        }
    }
    Ok(out)
}

/// Runs [`meter_once`] every `interval` until the process ends.
pub async fn run(
    db: DatabaseConnection,
    billing: std::sync::Arc<Billing>,
    interval: std::time::Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match meter_once(&db, &billing).await {
            Ok(report) => tracing::debug!(?report, "metered"),
            Err(err) => tracing::warn!(error = %err, "metering pass failed"),
        }
    }
}

/// Sum of usage per (network, meter) of a tenant in `[from, to)`, for invoices.
/// Summed here rather than in SQL: `SUM(bigint)` is `numeric` on PostgreSQL.
pub async fn totals(
    conn: &impl ConnectionTrait,
    tenant_id: Uuid,
    from: i64,
    to: i64,
) -> Result<Vec<((Uuid, String), i64)>, DbErr> {
    let mut totals: std::collections::BTreeMap<(Uuid, String), i64> = Default::default();
    let rows = usage_record::Entity::find()
        .select_only()
        .column(usage_record::Column::NetworkId)
        .column(usage_record::Column::Meter)
        .column(usage_record::Column::Quantity)
        .filter(usage_record::Column::TenantId.eq(tenant_id))
        .filter(usage_record::Column::WindowStart.gte(from))
        .filter(usage_record::Column::WindowStart.lt(to))
        .into_tuple::<(Uuid, String, i64)>()
        .all(conn)
        .await?;
    for (network, meter, quantity) in rows {
        let total = totals.entry((network, meter)).or_default();
        *total = total.saturating_add(quantity);
    }
    Ok(totals.into_iter().collect())
}
