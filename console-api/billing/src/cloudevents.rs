//! Usage records as CloudEvents 1.0 (JSON format), for an external billing system.
//! The event id is derived from the record's key, so exporting the same range twice
//! yields the same ids and a receiver can deduplicate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::meter::Meter;

pub const USAGE_EVENT_TYPE: &str = "io.trellis.usage.v1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub subject: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub data: serde_json::Value,
}

/// One usage record as an event.
pub fn usage_event(
    tenant_id: Uuid,
    network_id: Uuid,
    meter: Meter,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    base_quantity: i64,
) -> CloudEvent {
    CloudEvent {
        specversion: "1.0".into(),
        id: format!(
            "{network_id}/{}/{}",
            meter.as_str(),
            window_start.timestamp()
        ),
        source: format!("/trellis/tenants/{tenant_id}"),
        type_: USAGE_EVENT_TYPE.into(),
        subject: format!("networks/{network_id}"),
        time: window_end,
        datacontenttype: "application/json".into(),
        data: serde_json::json!({
            "tenant_id": tenant_id,
            "network_id": network_id,
            "meter": meter.as_str(),
            "window_start": window_start,
            "window_end": window_end,
            "quantity": base_quantity,
            "base_unit": if meter.base_per_unit() == 1 { meter.unit() } else { "second" },
            "base_per_unit": meter.base_per_unit(),
            "unit": meter.unit(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_stable_ids_and_required_attributes() {
        let start = DateTime::from_timestamp(3600, 0).unwrap();
        let end = DateTime::from_timestamp(7200, 0).unwrap();
        let event = usage_event(
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Meter::Transactions,
            start,
            end,
            42,
        );
        let json = serde_json::to_value(&event).unwrap();
        for attribute in ["specversion", "id", "source", "type"] {
            assert!(json[attribute].is_string(), "{attribute}");
        }
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["data"]["quantity"], 42);
        assert_eq!(
            event.id,
            format!("{}/transactions/3600", Uuid::from_u128(2))
        );
    }
}
