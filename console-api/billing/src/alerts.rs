//! Alert rules as pure conditions, and the retry schedule of webhook deliveries.
//!
//! The console evaluates these after every collection; a condition that appears opens
//! (fires) an alert keyed by `(network, kind, subject)`, one that disappears resolves
//! it. Conditions carry no time of their own: the state machine lives in the database.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A shard has not finalized a block for `stall_after_seconds`.
    ChainStalled,
    /// A validator is more than `lag_blocks` behind its shard's highest node.
    ShardLagging,
    /// A validator does not answer its metrics or status.
    ValidatorDown,
    /// A plan limit is at least `quota_warning_percent` used.
    QuotaNearlyUsed,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::ChainStalled => "chain_stalled",
            AlertKind::ShardLagging => "shard_lagging",
            AlertKind::ValidatorDown => "validator_down",
            AlertKind::QuotaNearlyUsed => "quota_nearly_used",
        }
    }

    pub fn parse(text: &str) -> Option<AlertKind> {
        [
            AlertKind::ChainStalled,
            AlertKind::ShardLagging,
            AlertKind::ValidatorDown,
            AlertKind::QuotaNearlyUsed,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

/// Thresholds of the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlertRules {
    pub stall_after_seconds: i64,
    pub lag_blocks: u64,
    pub quota_warning_percent: u64,
}

impl Default for AlertRules {
    fn default() -> Self {
        Self {
            stall_after_seconds: 120,
            lag_blocks: 20,
            quota_warning_percent: 80,
        }
    }
}

/// A condition that holds now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub kind: AlertKind,
    /// What it is about, e.g. `shard/0` or a node endpoint; unique per kind.
    pub subject: String,
    pub detail: String,
}

/// One validator as seen by the last collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub endpoint: String,
    pub shard: Option<u32>,
    pub up: bool,
    pub finalized_height: Option<u64>,
}

/// A shard's highest finalized height and when it last grew (unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardProgress {
    pub shard: u32,
    pub height: u64,
    pub progressed_at: i64,
}

/// The conditions of one network now.
pub fn network_conditions(
    rules: &AlertRules,
    now: i64,
    nodes: &[NodeView],
    progress: &[ShardProgress],
) -> Vec<Condition> {
    let mut conditions = Vec::new();
    for shard in progress {
        let quiet = now - shard.progressed_at;
        if quiet >= rules.stall_after_seconds {
            conditions.push(Condition {
                kind: AlertKind::ChainStalled,
                subject: format!("shard/{}", shard.shard),
                detail: format!(
                    "shard {} has not finalized a block for {quiet} s (height {})",
                    shard.shard, shard.height
                ),
            });
        }
    }
    for node in nodes {
        if !node.up {
            conditions.push(Condition {
                kind: AlertKind::ValidatorDown,
                subject: node.endpoint.clone(),
                detail: format!("validator {} does not answer", node.endpoint),
            });
            continue;
        }
        let (Some(shard), Some(height)) = (node.shard, node.finalized_height) else {
            continue;
        };
        if let Some(top) = progress.iter().find(|p| p.shard == shard)
            && top.height > height.saturating_add(rules.lag_blocks)
        {
            conditions.push(Condition {
                kind: AlertKind::ShardLagging,
                subject: node.endpoint.clone(),
                detail: format!(
                    "validator {} of shard {shard} is at height {height}, {} behind the shard",
                    node.endpoint,
                    top.height - height
                ),
            });
        }
    }
    conditions
}

/// A tenant's quota conditions: `(resource, used, limit)` per plan limit.
pub fn quota_conditions(rules: &AlertRules, usage: &[(&str, u64, u64)]) -> Vec<Condition> {
    usage
        .iter()
        .filter(|(_, used, limit)| {
            *limit > 0
                && used.saturating_mul(100) >= limit.saturating_mul(rules.quota_warning_percent)
        })
        .map(|(resource, used, limit)| Condition {
            kind: AlertKind::QuotaNearlyUsed,
            subject: (*resource).to_string(),
            detail: format!("{used} of {limit} {resource} allowed by the plan are used"),
        })
        .collect()
}

/// Seconds to wait before retry number `attempt` (1 = the first retry): doubling from
/// `base`, at most `max`.
pub fn backoff_seconds(attempt: u32, base: i64, max: i64) -> i64 {
    let factor = 1i64 << attempt.saturating_sub(1).min(30);
    base.saturating_mul(factor).min(max).max(base.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(endpoint: &str, up: bool, height: u64) -> NodeView {
        NodeView {
            endpoint: endpoint.into(),
            shard: Some(0),
            up,
            finalized_height: up.then_some(height),
        }
    }

    #[test]
    fn conditions_follow_the_rules() {
        let rules = AlertRules {
            stall_after_seconds: 30,
            lag_blocks: 5,
            quota_warning_percent: 80,
        };
        let progress = [ShardProgress {
            shard: 0,
            height: 100,
            progressed_at: 1000,
        }];
        let nodes = [
            node("a", true, 100),
            node("b", false, 0),
            node("c", true, 90),
        ];
        let now_fresh = network_conditions(&rules, 1010, &nodes, &progress);
        let kinds: Vec<(AlertKind, &str)> = now_fresh
            .iter()
            .map(|c| (c.kind, c.subject.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (AlertKind::ValidatorDown, "b"),
                (AlertKind::ShardLagging, "c")
            ]
        );
        let stalled = network_conditions(&rules, 1030, &nodes[..1], &progress);
        assert_eq!(stalled[0].kind, AlertKind::ChainStalled);
        assert_eq!(stalled[0].subject, "shard/0");
        let quota = quota_conditions(
            &rules,
            &[("networks", 8, 10), ("nodes", 7, 10), ("x", 1, 0)],
        );
        assert_eq!(quota.len(), 1);
        assert_eq!(quota[0].subject, "networks");
        assert_eq!(
            AlertKind::parse("validator_down"),
            Some(AlertKind::ValidatorDown)
        );
    }

    #[test]
    fn backoff_doubles_up_to_a_ceiling() {
        let delays: Vec<i64> = (1..=6).map(|n| backoff_seconds(n, 2, 20)).collect();
        assert_eq!(delays, vec![2, 4, 8, 16, 20, 20]);
        assert_eq!(backoff_seconds(200, 2, 20), 20);
    }
}
