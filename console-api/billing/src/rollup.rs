//! Monitoring history: shard samples folded into 1-minute and 1-hour buckets.
//!
//! A bucket is a commutative summary (sums, maxima, minima, a count), so a sample can
//! be folded into both of its buckets the moment it is taken, and buckets of the same
//! time merge in any order.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Resolution {
    #[serde(rename = "1m")]
    Minute,
    #[serde(rename = "1h")]
    Hour,
}

impl Resolution {
    pub fn seconds(self) -> i64 {
        match self {
            Resolution::Minute => 60,
            Resolution::Hour => 3600,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Minute => "1m",
            Resolution::Hour => "1h",
        }
    }

    pub fn parse(text: &str) -> Result<Resolution, String> {
        match text {
            "1m" => Ok(Resolution::Minute),
            "1h" => Ok(Resolution::Hour),
            other => Err(format!(
                "{other:?} is not a resolution; use \"1m\" or \"1h\""
            )),
        }
    }

    pub fn bucket_start(self, at: i64) -> i64 {
        at.div_euclid(self.seconds()) * self.seconds()
    }
}

/// One shard at one collection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardSample {
    pub at: i64,
    /// Highest finalized height among the shard's answering validators.
    pub finalized_height: u64,
    /// Transactions finalized since the previous collection.
    pub txs: u64,
    /// Finality latency observed since the previous collection: sum (ms) and count.
    pub latency_sum_ms: u64,
    pub latency_count: u64,
    pub mempool_depth: u64,
    /// Fewest peers any answering validator has.
    pub peers: u64,
    pub validators_up: u32,
    pub validators_expected: u32,
    pub epoch: u64,
}

/// A summary of the samples in `[start, start + resolution)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub start: i64,
    pub samples: u64,
    pub finalized_height_max: u64,
    pub txs: u64,
    pub latency_sum_ms: u64,
    pub latency_count: u64,
    pub mempool_depth_max: u64,
    pub peers_min: u64,
    pub validators_up_min: u32,
    pub validators_expected: u32,
    pub epoch_max: u64,
}

impl Bucket {
    pub fn of(resolution: Resolution, sample: &ShardSample) -> Bucket {
        Bucket {
            start: resolution.bucket_start(sample.at),
            samples: 1,
            finalized_height_max: sample.finalized_height,
            txs: sample.txs,
            latency_sum_ms: sample.latency_sum_ms,
            latency_count: sample.latency_count,
            mempool_depth_max: sample.mempool_depth,
            peers_min: sample.peers,
            validators_up_min: sample.validators_up,
            validators_expected: sample.validators_expected,
            epoch_max: sample.epoch,
        }
    }

    /// Folds another summary of the same bucket in.
    pub fn merge(&mut self, other: &Bucket) {
        if self.samples == 0 {
            *self = *other;
            return;
        }
        self.samples += other.samples;
        self.finalized_height_max = self.finalized_height_max.max(other.finalized_height_max);
        self.txs = self.txs.saturating_add(other.txs);
        self.latency_sum_ms = self.latency_sum_ms.saturating_add(other.latency_sum_ms);
        self.latency_count = self.latency_count.saturating_add(other.latency_count);
        self.mempool_depth_max = self.mempool_depth_max.max(other.mempool_depth_max);
        self.peers_min = self.peers_min.min(other.peers_min);
        self.validators_up_min = self.validators_up_min.min(other.validators_up_min);
        self.validators_expected = self.validators_expected.max(other.validators_expected);
        self.epoch_max = self.epoch_max.max(other.epoch_max);
    }

    /// Mean finalized transactions per second over the bucket.
    pub fn tx_per_second(&self, resolution: Resolution) -> f64 {
        self.txs as f64 / resolution.seconds() as f64
    }

    /// Mean finality latency, when any transaction finalized.
    pub fn finality_latency_ms(&self) -> Option<f64> {
        (self.latency_count > 0).then(|| self.latency_sum_ms as f64 / self.latency_count as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_fold_into_buckets_in_any_order() {
        let a = ShardSample {
            at: 125,
            finalized_height: 10,
            txs: 60,
            latency_sum_ms: 900,
            latency_count: 3,
            mempool_depth: 5,
            peers: 3,
            validators_up: 4,
            validators_expected: 4,
            epoch: 1,
        };
        let b = ShardSample {
            at: 170,
            finalized_height: 14,
            txs: 30,
            peers: 2,
            validators_up: 3,
            ..a
        };
        let mut forward = Bucket::of(Resolution::Minute, &a);
        forward.merge(&Bucket::of(Resolution::Minute, &b));
        let mut backward = Bucket::of(Resolution::Minute, &b);
        backward.merge(&Bucket::of(Resolution::Minute, &a));
        assert_eq!(forward, backward);
        assert_eq!(forward.start, 120);
        assert_eq!(forward.samples, 2);
        assert_eq!(forward.finalized_height_max, 14);
        assert_eq!(forward.validators_up_min, 3);
        assert_eq!(forward.tx_per_second(Resolution::Minute), 1.5);
        assert_eq!(forward.finality_latency_ms(), Some(300.0));
        assert_eq!(Resolution::Hour.bucket_start(7300), 7200);
        assert!(Resolution::parse("5m").is_err());
        let mut empty = Bucket::default();
        empty.merge(&forward);
        assert_eq!(empty, forward);
    }
}
