//! Storage of monitoring history: series, raw samples, rollups, retention.
//!
//! A rollup row's key packs `series << 32 | resolution << 31 | bucket index` into one
//! integer: on SQLite that is the rowid itself, so a bucket costs one small row and no
//! index entry. A series id is below 2³¹ and a bucket index (minutes or hours since
//! 1970) stays below 2³¹ for thousands of years.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait,
    QueryFilter, QueryOrder,
};
use trellis_billing::rollup::{Bucket, Resolution, ShardSample};
use trellis_console_entity::{monitor_rollup, monitor_sample, monitor_series};
use uuid::Uuid;

const BUCKET_MASK: i64 = 0x7fff_ffff;

pub fn rollup_key(series: i32, resolution: Resolution, bucket_start: i64) -> i64 {
    let bit = match resolution {
        Resolution::Minute => 0,
        Resolution::Hour => 1,
    };
    (i64::from(series) << 32)
        | (bit << 31)
        | (bucket_start.div_euclid(resolution.seconds()) & BUCKET_MASK)
}

fn whole(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The series of `(network, shard)`, created on first sight.
pub async fn series(
    conn: &impl ConnectionTrait,
    tenant_id: Uuid,
    network_id: Uuid,
    shard: u32,
    now: i64,
) -> Result<monitor_series::Model, DbErr> {
    let shard = i32::try_from(shard).unwrap_or(i32::MAX);
    let find = || {
        monitor_series::Entity::find()
            .filter(monitor_series::Column::NetworkId.eq(network_id))
            .filter(monitor_series::Column::Shard.eq(shard))
    };
    if let Some(found) = find().one(conn).await? {
        return Ok(found);
    }
    monitor_series::ActiveModel {
        tenant_id: Set(tenant_id),
        network_id: Set(network_id),
        shard: Set(shard),
        height: Set(0),
        progressed_at: Set(now),
        ..Default::default()
    }
    .insert(conn)
    .await
}

/// Records that the shard's highest height is `height` at `now`; `progressed_at` moves
/// only when the height grew.
pub async fn progress(
    conn: &impl ConnectionTrait,
    series: &monitor_series::Model,
    height: u64,
    now: i64,
) -> Result<(u64, i64), DbErr> {
    let height = whole(height);
    if height > series.height {
        monitor_series::Entity::update_many()
            .col_expr(monitor_series::Column::Height, Expr::value(height))
            .col_expr(monitor_series::Column::ProgressedAt, Expr::value(now))
            .filter(monitor_series::Column::Id.eq(series.id))
            .exec(conn)
            .await?;
        Ok((count(height), now))
    } else {
        Ok((count(series.height), series.progressed_at))
    }
}

fn bucket_of(row: &monitor_rollup::Model, start: i64) -> Bucket {
    Bucket {
        start,
        samples: count(row.samples),
        finalized_height_max: count(row.finalized_height_max),
        txs: count(row.txs),
        latency_sum_ms: count(row.latency_sum_ms),
        latency_count: count(row.latency_count),
        mempool_depth_max: count(row.mempool_depth_max),
        peers_min: count(row.peers_min),
        validators_up_min: u32::try_from(row.validators_up_min).unwrap_or(0),
        validators_expected: u32::try_from(row.validators_expected).unwrap_or(0),
        epoch_max: count(row.epoch_max),
    }
}

fn row_of(key: i64, bucket: &Bucket) -> monitor_rollup::ActiveModel {
    monitor_rollup::ActiveModel {
        key: Set(key),
        samples: Set(whole(bucket.samples)),
        finalized_height_max: Set(whole(bucket.finalized_height_max)),
        txs: Set(whole(bucket.txs)),
        latency_sum_ms: Set(whole(bucket.latency_sum_ms)),
        latency_count: Set(whole(bucket.latency_count)),
        mempool_depth_max: Set(whole(bucket.mempool_depth_max)),
        peers_min: Set(whole(bucket.peers_min)),
        validators_up_min: Set(i32::try_from(bucket.validators_up_min).unwrap_or(i32::MAX)),
        validators_expected: Set(i32::try_from(bucket.validators_expected).unwrap_or(i32::MAX)),
        epoch_max: Set(whole(bucket.epoch_max)),
    }
}

/// Stores a raw sample and folds it into its minute and hour buckets.
pub async fn record_sample(
    conn: &impl ConnectionTrait,
    series: i32,
    sample: &ShardSample,
) -> Result<(), DbErr> {
    monitor_sample::Entity::insert(monitor_sample::ActiveModel {
        series_id: Set(i64::from(series)),
        at: Set(sample.at),
        finalized_height: Set(whole(sample.finalized_height)),
        txs: Set(whole(sample.txs)),
        latency_sum_ms: Set(whole(sample.latency_sum_ms)),
        latency_count: Set(whole(sample.latency_count)),
        mempool_depth: Set(whole(sample.mempool_depth)),
        peers: Set(whole(sample.peers)),
        validators_up: Set(i32::try_from(sample.validators_up).unwrap_or(i32::MAX)),
        validators_expected: Set(i32::try_from(sample.validators_expected).unwrap_or(i32::MAX)),
        epoch: Set(whole(sample.epoch)),
    })
    .on_conflict_do_nothing_on([monitor_sample::Column::SeriesId, monitor_sample::Column::At])
    .exec(conn)
    .await?;
    for resolution in [Resolution::Minute, Resolution::Hour] {
        let mut bucket = Bucket::of(resolution, sample);
        let key = rollup_key(series, resolution, bucket.start);
        match monitor_rollup::Entity::find_by_id(key).one(conn).await? {
            Some(row) => {
                let mut merged = bucket_of(&row, bucket.start);
                merged.merge(&bucket);
                bucket = merged;
                let mut active = row_of(key, &bucket);
                active.key = sea_orm::ActiveValue::Unchanged(key);
                active.update(conn).await?;
            }
            None => {
                monitor_rollup::Entity::insert(row_of(key, &bucket))
                    .exec_without_returning(conn)
                    .await?;
            }
        }
    }
    Ok(())
}

/// Buckets of `series` at `resolution` starting in `[from, to)`.
pub async fn buckets(
    conn: &impl ConnectionTrait,
    series: i32,
    resolution: Resolution,
    from: i64,
    to: i64,
) -> Result<Vec<Bucket>, DbErr> {
    let low = rollup_key(series, resolution, from);
    let high = rollup_key(series, resolution, to);
    let rows = monitor_rollup::Entity::find()
        .filter(monitor_rollup::Column::Key.gte(low))
        .filter(monitor_rollup::Column::Key.lt(high))
        .order_by_asc(monitor_rollup::Column::Key)
        .all(conn)
        .await?;
    Ok(rows
        .iter()
        .map(|row| bucket_of(row, (row.key & BUCKET_MASK) * resolution.seconds()))
        .collect())
}

/// The latest raw sample of `series`.
pub async fn latest(
    conn: &impl ConnectionTrait,
    series: i32,
) -> Result<Option<monitor_sample::Model>, DbErr> {
    monitor_sample::Entity::find()
        .filter(monitor_sample::Column::SeriesId.eq(i64::from(series)))
        .order_by_desc(monitor_sample::Column::At)
        .one(conn)
        .await
}

/// Drops raw samples and rollups past their retention.
pub async fn prune(
    conn: &impl ConnectionTrait,
    now: i64,
    raw_seconds: i64,
    minute_seconds: i64,
    hour_seconds: i64,
) -> Result<(), DbErr> {
    monitor_sample::Entity::delete_many()
        .filter(monitor_sample::Column::At.lt(now - raw_seconds))
        .exec(conn)
        .await?;
    for (bit, resolution, keep) in [
        (0, Resolution::Minute, minute_seconds),
        (1, Resolution::Hour, hour_seconds),
    ] {
        let cutoff = (now - keep).div_euclid(resolution.seconds());
        monitor_rollup::Entity::delete_many()
            .filter(Expr::cust(format!(
                "((\"key\" >> 31) & 1) = {bit} AND (\"key\" & {BUCKET_MASK}) < {cutoff}"
            )))
            .exec(conn)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_by_series_resolution_and_time() {
        let a = rollup_key(1, Resolution::Minute, 120);
        let b = rollup_key(1, Resolution::Minute, 180);
        let c = rollup_key(1, Resolution::Hour, 0);
        let d = rollup_key(2, Resolution::Minute, 0);
        assert!(a < b && b < c && c < d);
        assert_eq!(b & BUCKET_MASK, 3);
        // Year 2026 in minutes still fits.
        let now = rollup_key(i32::MAX, Resolution::Minute, 1_795_000_000);
        assert!(now > 0);
    }
}
