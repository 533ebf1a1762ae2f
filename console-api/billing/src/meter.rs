//! What is metered. Quantities are stored as integers in *base units* (seconds for the
//! time-based meters) so that nothing is rounded before an invoice is computed; the
//! billed unit (a node-hour, a GiB-hour) is `base_per_unit` base units.

use serde::{Deserialize, Serialize};

/// The size class of a node. Networks do not choose a size yet, so every node is
/// [`SizeClass::Standard`]; the price book already prices each class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SizeClass {
    Small,
    Standard,
    Large,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Meter {
    /// Validator node time while the network is billed for compute (not paused or
    /// stopped). Base unit: node-second.
    NodeHours(SizeClass),
    /// Ledger volume size over time, from creation to deletion (paused and stopped
    /// networks keep their ledgers). Base unit: GiB-second.
    StorageGibHours,
    /// Transactions finalized, from the nodes' `trellis_txs_committed_total`.
    Transactions,
    /// JSON-RPC requests through the console's RPC proxy.
    RpcRequests,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown meter {0:?}; known meters: {known}", known = Meter::names().join(", "))]
pub struct UnknownMeter(pub String);

impl Meter {
    pub const ALL: [Meter; 6] = [
        Meter::NodeHours(SizeClass::Small),
        Meter::NodeHours(SizeClass::Standard),
        Meter::NodeHours(SizeClass::Large),
        Meter::StorageGibHours,
        Meter::Transactions,
        Meter::RpcRequests,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Meter::NodeHours(SizeClass::Small) => "node_hours.small",
            Meter::NodeHours(SizeClass::Standard) => "node_hours.standard",
            Meter::NodeHours(SizeClass::Large) => "node_hours.large",
            Meter::StorageGibHours => "storage_gib_hours",
            Meter::Transactions => "transactions",
            Meter::RpcRequests => "rpc_requests",
        }
    }

    pub fn names() -> Vec<&'static str> {
        Meter::ALL.iter().map(|meter| meter.as_str()).collect()
    }

    pub fn parse(text: &str) -> Result<Meter, UnknownMeter> {
        Meter::ALL
            .into_iter()
            .find(|meter| meter.as_str() == text)
            .ok_or_else(|| UnknownMeter(text.to_string()))
    }

    /// Base units per billed unit.
    pub fn base_per_unit(self) -> u32 {
        match self {
            Meter::NodeHours(_) | Meter::StorageGibHours => 3600,
            Meter::Transactions | Meter::RpcRequests => 1,
        }
    }

    /// The billed unit, for invoices.
    pub fn unit(self) -> &'static str {
        match self {
            Meter::NodeHours(_) => "node-hour",
            Meter::StorageGibHours => "GiB-hour",
            Meter::Transactions => "transaction",
            Meter::RpcRequests => "request",
        }
    }

    /// Counted by sources that add to a per-window counter (node metrics, the RPC
    /// proxy) rather than computed from the network's footprint.
    pub fn is_counter(self) -> bool {
        matches!(self, Meter::Transactions | Meter::RpcRequests)
    }
}

impl Serialize for Meter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Meter {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Meter::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meters_round_trip_and_unknown_ones_are_named() {
        for meter in Meter::ALL {
            assert_eq!(Meter::parse(meter.as_str()), Ok(meter));
        }
        let err = Meter::parse("cpu_seconds").unwrap_err();
        assert!(err.to_string().contains("node_hours.standard"));
        assert_eq!(Meter::StorageGibHours.base_per_unit(), 3600);
        assert!(Meter::RpcRequests.is_counter());
        assert!(!Meter::NodeHours(SizeClass::Large).is_counter());
    }
}
