//! Metering and rollup cost (measured, not asserted):
//!
//!   cargo run --release -p trellis-console-bench --bin billing -- [NETWORKS] [HOURS]
//!
//! On a fresh SQLite database: NETWORKS (default 1,000) networks of 12 nodes (4 beacon
//! validators + 2 shards × 4), every tenth paused for two days, metered hour by hour
//! through a simulated month (HOURS = 720 passes of the real metering code, with the
//! collector's transaction counts added every hour). Then a month of monitoring
//! history for their 2 × NETWORKS shard series is written the way retention leaves it
//! (1-hour buckets for 30 days, 1-minute buckets for 6 hours, raw samples for 15
//! minutes), and one collection's worth of samples (one per series) is folded into
//! rollups by the real code. Prints wall times and database sizes; the baseline is a
//! bare insert of one pass's usage records in one transaction, in the same run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark command

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DatabaseConnection, EntityTrait, TransactionTrait,
};
use trellis_billing::clock::ManualClock;
use trellis_billing::meter::Meter;
use trellis_billing::rollup::{Bucket, Resolution, ShardSample};
use trellis_console::billing::{Billing, BillingSettings, counters, metering};
use trellis_console::db;
use trellis_console::monitoring::store;
use trellis_console_entity::{
    billing_footprint, billing_meter, monitor_rollup, monitor_sample, monitor_series, usage_record,
};
use uuid::Uuid;

const HOUR: i64 = 3600;
const NODES: i32 = 12;
const SHARDS: i32 = 2;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn size(db: &DatabaseConnection, file: &Path) -> u64 {
    db.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
        .await
        .unwrap();
    std::fs::metadata(file).unwrap().len()
}

fn rollup_row(key: i64, bucket: &Bucket) -> monitor_rollup::ActiveModel {
    monitor_rollup::ActiveModel {
        key: Set(key),
        samples: Set(bucket.samples as i64),
        finalized_height_max: Set(bucket.finalized_height_max as i64),
        txs: Set(bucket.txs as i64),
        latency_sum_ms: Set(bucket.latency_sum_ms as i64),
        latency_count: Set(bucket.latency_count as i64),
        mempool_depth_max: Set(bucket.mempool_depth_max as i64),
        peers_min: Set(bucket.peers_min as i64),
        validators_up_min: Set(bucket.validators_up_min as i32),
        validators_expected: Set(bucket.validators_expected as i32),
        epoch_max: Set(bucket.epoch_max as i64),
    }
}

fn sample_at(at: i64, series: i32, step: i64) -> ShardSample {
    ShardSample {
        at,
        finalized_height: (at - 1_790_000_000) as u64 + series as u64,
        txs: 50 * step as u64,
        latency_sum_ms: 400 * step as u64,
        latency_count: step as u64,
        mempool_depth: 120,
        peers: 3,
        validators_up: 4,
        validators_expected: 4,
        epoch: (at / 1000) as u64,
    }
}

#[tokio::main]
async fn main() {
    let networks: usize = std::env::args()
        .nth(1)
        .map_or(1_000, |n| n.parse().unwrap());
    let hours: i64 = std::env::args().nth(2).map_or(720, |n| n.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("console.db");
    let db = db::connect_and_migrate(&db::sqlite_url(dir.path()))
        .await
        .unwrap();
    let empty = size(&db, &file).await;
    let start: DateTime<Utc> = "2026-11-01T00:00:00Z".parse().unwrap();
    let t0 = start.timestamp();
    let clock = Arc::new(ManualClock::new(start));
    let billing = Billing::new(
        clock.clone(),
        BillingSettings {
            metering_grace_seconds: 0,
            ..BillingSettings::default()
        },
    );

    // The footprint log and meters, as `ledger::record` writes them.
    let ids: Vec<(Uuid, Uuid)> = (0..networks)
        .map(|_| (Uuid::now_v7(), Uuid::now_v7()))
        .collect();
    let txn = db.begin().await.unwrap();
    for (i, chunk) in ids.chunks(200).enumerate() {
        let mut footprints = Vec::new();
        let mut meters = Vec::new();
        for (j, (tenant, network)) in chunk.iter().enumerate() {
            let index = i * 200 + j;
            let footprint = |at: i64, billed: bool| billing_footprint::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(*tenant),
                network_id: Set(*network),
                at: Set(at),
                nodes: Set(NODES),
                storage_gib: Set(i64::from(NODES) * 10),
                compute_billed: Set(billed),
            };
            footprints.push(footprint(t0, true));
            if index % 10 == 0 {
                footprints.push(footprint(t0 + 10 * 24 * HOUR, false));
                footprints.push(footprint(t0 + 12 * 24 * HOUR, true));
            }
            meters.push(billing_meter::ActiveModel {
                network_id: Set(*network),
                tenant_id: Set(*tenant),
                network_name: Set(format!("network-{index}")),
                metered_until: Set(t0),
                deleted_at: Set(None),
                nodes: Set(0),
                storage_gib: Set(0),
                compute_billed: Set(false),
            });
        }
        billing_footprint::Entity::insert_many(footprints)
            .exec_without_returning(&txn)
            .await
            .unwrap();
        billing_meter::Entity::insert_many(meters)
            .exec_without_returning(&txn)
            .await
            .unwrap();
    }
    txn.commit().await.unwrap();

    // Baseline: one pass's records (2 per network) inserted bare, in one transaction.
    let baseline_start = Instant::now();
    let txn = db.begin().await.unwrap();
    for chunk in ids.chunks(100) {
        let rows = chunk.iter().flat_map(|(tenant, network)| {
            ["baseline.a", "baseline.b"].map(|meter| usage_record::ActiveModel {
                tenant_id: Set(*tenant),
                network_id: Set(*network),
                meter: Set(meter.to_string()),
                window_start: Set(0),
                quantity: Set(1),
            })
        });
        usage_record::Entity::insert_many(rows)
            .exec_without_returning(&txn)
            .await
            .unwrap();
    }
    txn.commit().await.unwrap();
    let baseline = baseline_start.elapsed().as_secs_f64();
    usage_record::Entity::delete_many().exec(&db).await.unwrap();

    // A month, hour by hour: the collector's counts, then the metering pass.
    let mut passes = Vec::new();
    let mut counting = 0.0;
    let month_start = Instant::now();
    for hour in 0..hours {
        if hour > 0 && hour % 24 == 0 {
            let mut so_far = passes.clone();
            so_far.sort_by(f64::total_cmp);
            println!(
                "day {}: pass p50 {:.1} ms, max {:.1} ms, {:.1} s so far",
                hour / 24,
                so_far[so_far.len() / 2] * 1e3,
                so_far[so_far.len() - 1] * 1e3,
                month_start.elapsed().as_secs_f64()
            );
        }
        let now = t0 + hour * HOUR + 30 * 60;
        let counted = Instant::now();
        let txn = db.begin().await.unwrap();
        for (tenant, network) in &ids {
            counters::add(&txn, *tenant, *network, Meter::Transactions, now, 1_000)
                .await
                .unwrap();
        }
        txn.commit().await.unwrap();
        counting += counted.elapsed().as_secs_f64();
        clock.set(DateTime::from_timestamp(t0 + (hour + 1) * HOUR, 0).unwrap());
        let pass = Instant::now();
        let report = metering::meter_once(&db, &billing).await.unwrap();
        passes.push(pass.elapsed().as_secs_f64());
        assert_eq!(report.networks as usize, networks);
    }
    let month = month_start.elapsed().as_secs_f64();
    let records: u64 = {
        use sea_orm::PaginatorTrait;
        usage_record::Entity::find().count(&db).await.unwrap()
    };
    let metered = size(&db, &file).await;
    let mut sorted = passes.clone();
    sorted.sort_by(f64::total_cmp);
    let p50 = sorted[sorted.len() / 2];
    let max = sorted[sorted.len() - 1];

    // A month of monitoring history as retention leaves it.
    let end = t0 + 30 * 24 * HOUR;
    let txn = db.begin().await.unwrap();
    let mut series_ids = Vec::new();
    for (tenant, network) in &ids {
        for shard in 0..SHARDS {
            let series = store::series(&txn, *tenant, *network, shard as u32, end)
                .await
                .unwrap();
            series_ids.push(series.id);
        }
    }
    txn.commit().await.unwrap();
    let history_start = Instant::now();
    let mut rows = 0u64;
    for series in &series_ids {
        let txn = db.begin().await.unwrap();
        let mut batch = Vec::new();
        for hour in 0..720 {
            let at = t0 + hour * HOUR;
            let mut bucket = Bucket::of(Resolution::Hour, &sample_at(at, *series, 240));
            bucket.samples = 240;
            batch.push(rollup_row(
                store::rollup_key(*series, Resolution::Hour, at),
                &bucket,
            ));
        }
        for minute in 0..360 {
            let at = end - 6 * HOUR + minute * 60;
            let mut bucket = Bucket::of(Resolution::Minute, &sample_at(at, *series, 4));
            bucket.samples = 4;
            batch.push(rollup_row(
                store::rollup_key(*series, Resolution::Minute, at),
                &bucket,
            ));
        }
        rows += batch.len() as u64;
        for chunk in batch.chunks(500) {
            monitor_rollup::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&txn)
                .await
                .unwrap();
        }
        let raw: Vec<monitor_sample::ActiveModel> = (0..60)
            .map(|i| {
                let s = sample_at(end - 900 + i * 15, *series, 1);
                monitor_sample::ActiveModel {
                    series_id: Set(i64::from(*series)),
                    at: Set(s.at),
                    finalized_height: Set(s.finalized_height as i64),
                    txs: Set(s.txs as i64),
                    latency_sum_ms: Set(s.latency_sum_ms as i64),
                    latency_count: Set(s.latency_count as i64),
                    mempool_depth: Set(s.mempool_depth as i64),
                    peers: Set(s.peers as i64),
                    validators_up: Set(4),
                    validators_expected: Set(4),
                    epoch: Set(s.epoch as i64),
                }
            })
            .collect();
        rows += raw.len() as u64;
        monitor_sample::Entity::insert_many(raw)
            .exec_without_returning(&txn)
            .await
            .unwrap();
        txn.commit().await.unwrap();
    }
    let history_write = history_start.elapsed().as_secs_f64();
    let with_history = size(&db, &file).await;

    // One collection's worth of samples folded into rollups by the real code.
    let fold_start = Instant::now();
    let txn = db.begin().await.unwrap();
    for series in &series_ids {
        store::record_sample(&txn, *series, &sample_at(end + 1, *series, 1))
            .await
            .unwrap();
    }
    txn.commit().await.unwrap();
    let fold = fold_start.elapsed().as_secs_f64();
    let _ = monitor_series::Entity::find().one(&db).await.unwrap();

    println!("networks: {networks} × {NODES} nodes ({SHARDS} shard series each)");
    println!(
        "metering pass ({networks} networks, 1 window each): p50 {:.1} ms, max {:.1} ms; baseline bare insert of the same records {:.1} ms; p50/baseline {:.1}",
        p50 * 1e3,
        max * 1e3,
        baseline * 1e3,
        p50 / baseline
    );
    println!(
        "{hours} hourly passes + {hours} × {networks} counter adds in {month:.1} s (counting {counting:.1} s); {records} usage records"
    );
    println!(
        "database: empty {:.2} MiB; after {hours} h of metering {:.2} MiB (+{:.2})",
        mib(empty),
        mib(metered),
        mib(metered - empty)
    );
    println!(
        "monitoring history: {rows} rows written in {history_write:.1} s; database {:.2} MiB (+{:.2} MiB for the history)",
        mib(with_history),
        mib(with_history - metered)
    );
    println!(
        "one collection folded into rollups ({} series): {:.1} ms",
        series_ids.len(),
        fold * 1e3
    );
}
