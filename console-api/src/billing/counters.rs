//! Counted meters: sources add to a per-window counter; metering closes the window.
//!
//! The RPC proxy's seam is [`RpcRequestMeter::record`]: an in-memory add (no database
//! write per request), flushed by the metering loop into the current window. A crash
//! loses at most the counts since the last flush; nothing is ever counted twice.

use std::collections::HashMap;
use std::sync::Mutex;

use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait};
use trellis_billing::meter::Meter;
use trellis_billing::window::window_start;
use trellis_console_entity::billing_counter;
use uuid::Uuid;

/// Adds `quantity` to `meter`'s counter of the window containing `at`.
pub async fn add(
    conn: &impl ConnectionTrait,
    tenant_id: Uuid,
    network_id: Uuid,
    meter: Meter,
    at: i64,
    quantity: u64,
) -> Result<(), DbErr> {
    if quantity == 0 {
        return Ok(());
    }
    let quantity = i64::try_from(quantity).unwrap_or(i64::MAX);
    billing_counter::Entity::insert(billing_counter::ActiveModel {
        network_id: Set(network_id),
        meter: Set(meter.as_str().to_string()),
        window_start: Set(window_start(at)),
        tenant_id: Set(tenant_id),
        quantity: Set(quantity),
    })
    .on_conflict(
        OnConflict::columns([
            billing_counter::Column::NetworkId,
            billing_counter::Column::Meter,
            billing_counter::Column::WindowStart,
        ])
        .value(
            billing_counter::Column::Quantity,
            Expr::col((billing_counter::Entity, billing_counter::Column::Quantity))
                .add(Expr::cust("excluded.quantity")),
        )
        .to_owned(),
    )
    .exec_without_returning(conn)
    .await
    .map(|_| ())
}

/// RPC requests per (tenant, network) since the last flush.
#[derive(Debug, Default)]
pub struct RpcRequestMeter(Mutex<HashMap<(Uuid, Uuid), u64>>);

impl RpcRequestMeter {
    /// Counts `requests` JSON-RPC requests (a batch counts each of its requests) that
    /// the proxy forwarded for `network_id` of `tenant_id`. Cheap: no I/O.
    pub fn record(&self, tenant_id: Uuid, network_id: Uuid, requests: u64) {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry((tenant_id, network_id)).or_default();
        *count = count.saturating_add(requests);
    }

    fn take(&self) -> HashMap<(Uuid, Uuid), u64> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Writes the counts into the window containing `at`. On a database error the
    /// counts are put back for the next flush.
    pub async fn flush(&self, conn: &impl ConnectionTrait, at: i64) -> Result<u64, DbErr> {
        let counts = self.take();
        let mut flushed = 0;
        let mut pending = counts.into_iter();
        while let Some(((tenant, network), requests)) = pending.next() {
            if let Err(err) = add(conn, tenant, network, Meter::RpcRequests, at, requests).await {
                self.record(tenant, network, requests);
                for ((tenant, network), requests) in pending {
                    self.record(tenant, network, requests);
                }
                return Err(err);
            }
            flushed += requests;
        }
        Ok(flushed)
    }
}
