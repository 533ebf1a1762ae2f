//! The footprint log: every change of a network's desired state is recorded with the
//! time it happened, in the same transaction as the change itself, so metering can
//! always recompute usage from it (a console that was down misses nothing).

use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use trellis_billing::usage::Footprint;
use trellis_billing::window::window_start;
use trellis_console_entity::{billing_footprint, billing_meter, network};
use uuid::Uuid;

use super::Billing;
use crate::networks::spec::NetworkSpec;

/// Every node's ledger volume, GiB (the chart's default `node.storage.size`, 10Gi).
pub const STORAGE_GIB_PER_NODE: u64 = 10;

/// Validator nodes of the planned topology: the beacon committee plus
/// `validators_per_shard` on each of the current shards.
pub fn nodes(spec: &NetworkSpec) -> u32 {
    spec.beacon_validators
        .saturating_add(spec.shards.count.saturating_mul(spec.validators_per_shard))
}

/// What a network with `spec` occupies. Paused and stopped networks keep their ledgers
/// (storage is billed) but are not billed for compute.
pub fn footprint(spec: &NetworkSpec) -> Footprint {
    let nodes = nodes(spec);
    Footprint {
        nodes,
        storage_gib: u64::from(nodes) * STORAGE_GIB_PER_NODE,
        compute_billed: !spec.paused && !spec.stopped,
    }
}

async fn append(
    conn: &impl ConnectionTrait,
    tenant_id: Uuid,
    network_id: Uuid,
    at: i64,
    footprint: Footprint,
) -> Result<(), DbErr> {
    billing_footprint::Entity::insert(billing_footprint::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant_id),
        network_id: Set(network_id),
        at: Set(at),
        nodes: Set(i32::try_from(footprint.nodes).unwrap_or(i32::MAX)),
        storage_gib: Set(i64::try_from(footprint.storage_gib).unwrap_or(i64::MAX)),
        compute_billed: Set(footprint.compute_billed),
    })
    .exec_without_returning(conn)
    .await
    .map(|_| ())
}

/// Records `spec` as the network's footprint from now on (create and every update).
pub async fn record(
    conn: &impl ConnectionTrait,
    billing: &Billing,
    row: &network::Model,
    spec: &NetworkSpec,
) -> Result<(), DbErr> {
    let now = billing.now();
    append(conn, row.tenant_id, row.id, now, footprint(spec)).await?;
    // The first record opens the network's meter at the start of its first window,
    // with nothing in effect before the creation.
    billing_meter::Entity::insert(billing_meter::ActiveModel {
        network_id: Set(row.id),
        tenant_id: Set(row.tenant_id),
        network_name: Set(row.name.clone()),
        metered_until: Set(window_start(now)),
        deleted_at: Set(None),
        nodes: Set(0),
        storage_gib: Set(0),
        compute_billed: Set(false),
    })
    .on_conflict_do_nothing_on([billing_meter::Column::NetworkId])
    .exec(conn)
    .await
    .map(|_| ())
}

/// Records the deletion of a network: nothing is billed from now on.
pub async fn record_deleted(
    conn: &impl ConnectionTrait,
    billing: &Billing,
    row: &network::Model,
) -> Result<(), DbErr> {
    let now = billing.now();
    append(conn, row.tenant_id, row.id, now, Footprint::NONE).await?;
    billing_meter::Entity::update_many()
        .col_expr(billing_meter::Column::DeletedAt, Expr::value(now))
        .filter(billing_meter::Column::NetworkId.eq(row.id))
        .filter(billing_meter::Column::DeletedAt.is_null())
        .exec(conn)
        .await
        .map(|_| ())
}
