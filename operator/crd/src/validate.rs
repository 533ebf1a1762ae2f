//! The invariants of a `ChainNetwork`, checked in Rust.
//!
//! The CRD's schema and CEL rules refuse most bad specs at the apiserver. This module
//! checks the same invariants (and a few that need more than one object) again, because
//! a resource can reach the operator without passing them: an older CRD version, a
//! cluster whose apiserver skipped CEL, or the console's local provisioner that never
//! talks to an apiserver. The operator turns a failure into an `InvalidSpec` condition.

use std::collections::BTreeSet;
use std::fmt;

use crate::network::{
    BEACON_REGISTRY_LIMIT, ChainNetworkSpec, MAX_DRAINED_HISTORY_SECONDS, MAX_NETWORK_NAME_LEN,
    MAX_VALIDATORS, NetworkMode, TABLES,
};

/// One broken invariant: the field (JSON path under the object) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecViolation {
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every violation of a spec, in field order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct InvalidSpec(pub Vec<SpecViolation>);

/// `true` when `n = 3f+1` for some `f ≥ 1`.
pub fn is_bft_committee_size(n: i32) -> bool {
    n >= 4 && n % 3 == 1
}

/// Faults a committee of `n` validators tolerates: `f = ⌊(n-1)/3⌋`.
pub fn fault_tolerance(n: i32) -> i32 {
    if n < 1 { 0 } else { (n - 1) / 3 }
}

/// Checks `name` and `spec`. `Ok` means the topology planner accepts them.
pub fn validate(name: &str, spec: &ChainNetworkSpec) -> Result<(), InvalidSpec> {
    let mut violations = Vec::new();
    let mut fail = |field: &str, message: String| {
        violations.push(SpecViolation {
            field: field.to_owned(),
            message,
        })
    };

    if name.is_empty() || name.len() > MAX_NETWORK_NAME_LEN || !is_dns_label(name) {
        fail(
            "metadata.name",
            format!("must be a DNS label of at most {MAX_NETWORK_NAME_LEN} characters"),
        );
    }

    let shards = &spec.shards;
    let max_shards = i32::try_from(TABLES).unwrap_or(i32::MAX);
    if !(1 <= shards.min && shards.min <= shards.count && shards.count <= shards.max) {
        fail(
            "spec.shards",
            format!(
                "shards must satisfy 1 <= min <= count <= max (min {}, count {}, max {})",
                shards.min, shards.count, shards.max
            ),
        );
    }
    if shards.max > max_shards {
        fail(
            "spec.shards.max",
            format!("at most {TABLES} shards (one per table)"),
        );
    }
    if !(0..=MAX_DRAINED_HISTORY_SECONDS).contains(&shards.drained_history_seconds) {
        fail(
            "spec.shards.drainedHistorySeconds",
            format!(
                "seconds a drained slot's archive node is kept: 0 (delete at once) to \
                 {MAX_DRAINED_HISTORY_SECONDS} (one year), got {}",
                shards.drained_history_seconds
            ),
        );
    }

    for (field, n) in [
        ("spec.validatorsPerShard", spec.validators_per_shard),
        ("spec.beacon.validators", spec.beacon.validators),
    ] {
        // A public network sizes its committees; a consortium's are its members' nodes,
        // which grow one organisation at a time (3 → 4 → 5), so any size is accepted.
        if spec.mode == NetworkMode::Public && !is_bft_committee_size(n) {
            fail(
                field,
                format!("must be 3f+1 with f >= 1 (4, 7, 10, ...) in a Public network, got {n}"),
            );
        } else if n < 1 {
            fail(field, format!("at least 1 validator, got {n}"));
        } else if n > MAX_VALIDATORS {
            fail(field, format!("at most {MAX_VALIDATORS}, got {n}"));
        }
    }

    match spec.mode {
        NetworkMode::Consortium if spec.members.is_empty() => {
            fail(
                "spec.members",
                "a Consortium network needs at least one member".to_owned(),
            );
        }
        NetworkMode::Public if !spec.members.is_empty() => {
            fail(
                "spec.members",
                "members are only allowed in Consortium mode".to_owned(),
            );
        }
        _ => {}
    }
    let mut seen = BTreeSet::new();
    for (i, member) in spec.members.iter().enumerate() {
        if !is_dns_label(&member.name) || member.name.len() > 40 {
            fail(
                &format!("spec.members[{i}].name"),
                "must be a DNS label of at most 40 characters".to_owned(),
            );
        }
        if !seen.insert(member.name.as_str()) {
            fail(
                &format!("spec.members[{i}].name"),
                format!("duplicate member {:?}", member.name),
            );
        }
        if !is_hex_key(&member.admin_public_key) {
            fail(
                &format!("spec.members[{i}].adminPublicKey"),
                "must be 64 hex characters (an ed25519 public key)".to_owned(),
            );
        }
        if member.nodes < 1 {
            fail(
                &format!("spec.members[{i}].nodes"),
                "must be at least 1".to_owned(),
            );
        }
    }

    validate_pool(spec, &mut fail);

    if spec.node.image.trim().is_empty() {
        fail("spec.node.image", "must not be empty".to_owned());
    }
    if spec.epoch_length < 10 {
        fail("spec.epochLength", "must be at least 10".to_owned());
    }
    if let Some(autoscaling) = &spec.autoscaling {
        if autoscaling.enabled
            && autoscaling.target_tx_per_second_per_shard.is_none()
            && autoscaling.target_mempool_depth.is_none()
        {
            fail(
                "spec.autoscaling",
                "an enabled autoscaler needs targetTxPerSecondPerShard or targetMempoolDepth"
                    .to_owned(),
            );
        }
        if autoscaling.cooldown_seconds < 0 || autoscaling.stabilization_window_seconds < 0 {
            fail(
                "spec.autoscaling",
                "cooldownSeconds and stabilizationWindowSeconds must not be negative".to_owned(),
            );
        }
    }

    let mut accounts = std::collections::BTreeSet::new();
    let mut supply: i64 = 0;
    for (i, allocation) in spec.genesis_balances.iter().enumerate() {
        let field = format!("spec.genesisBalances[{i}]");
        if !is_hex_key(&allocation.account) {
            fail(
                &format!("{field}.account"),
                "must be a hex ed25519 public key (64 hex digits)".to_owned(),
            );
        } else if !accounts.insert(allocation.account.to_ascii_lowercase()) {
            fail(
                &format!("{field}.account"),
                "is listed twice; give each account one allocation".to_owned(),
            );
        }
        if allocation.amount < 1 {
            fail(&format!("{field}.amount"), "must be at least 1".to_owned());
        }
        match supply.checked_add(allocation.amount.max(0)) {
            Some(total) => supply = total,
            None => fail(
                "spec.genesisBalances",
                "the total supply overflows a signed 64-bit integer".to_owned(),
            ),
        }
    }

    if violations.is_empty() {
        Ok(())
    } else {
        Err(InvalidSpec(violations))
    }
}

/// The validator pool: Public only (the beacon places "any" validators of a consortium
/// per organisation, which `ChainMember` drives), `0..=MAX_VALIDATORS`, and room in the
/// beacon's registry next to the fixed validators of every shard the network may have.
fn validate_pool(spec: &ChainNetworkSpec, fail: &mut impl FnMut(&str, String)) {
    let Some(pool) = &spec.validator_pool else {
        return;
    };
    let field = "spec.validatorPool.replicas";
    if pool.replicas < 0 || pool.replicas > MAX_VALIDATORS {
        fail(
            field,
            format!("must be 0..={MAX_VALIDATORS}, got {}", pool.replicas),
        );
        return;
    }
    if pool.replicas > 0 && spec.mode != NetworkMode::Public {
        fail(
            field,
            "a validator pool is only for Public networks: a Consortium places validators \
             per organisation (add nodes with a ChainMember)"
                .to_owned(),
        );
        return;
    }
    let fixed = i64::from(spec.validators_per_shard.max(0)) * i64::from(spec.shards.max.max(0));
    if pool.replicas > 0 && fixed + i64::from(pool.replicas) > BEACON_REGISTRY_LIMIT {
        fail(
            field,
            format!(
                "the beacon registers at most {BEACON_REGISTRY_LIMIT} validators; \
                 {} shards (shards.max) of {} plus {} pool validators is {}: lower one of them",
                spec.shards.max,
                spec.validators_per_shard,
                pool.replicas,
                fixed + i64::from(pool.replicas)
            ),
        );
    }
}

/// RFC 1123 label: lower-case alphanumerics and `-`, starting and ending alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(|b| *b != b'-')
        && bytes.last().is_some_and(|b| *b != b'-')
}

/// 32 bytes of hex.
pub fn is_hex_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{AutoscalingSpec, ConsortiumMember, ShardsSpec};

    fn spec() -> ChainNetworkSpec {
        ChainNetworkSpec::new(NetworkMode::Public, "trellis-node:dev")
    }

    fn fields(result: Result<(), InvalidSpec>) -> Vec<String> {
        match result {
            Ok(()) => Vec::new(),
            Err(InvalidSpec(v)) => v.into_iter().map(|v| v.field).collect(),
        }
    }

    fn member(name: &str) -> ConsortiumMember {
        ConsortiumMember {
            name: name.to_owned(),
            admin_public_key: "ab".repeat(32),
            nodes: 1,
        }
    }

    #[test]
    fn default_spec_is_valid() {
        assert_eq!(validate("alpha", &spec()), Ok(()));
    }

    #[test]
    fn committee_sizes() {
        assert_eq!(
            (1..=14)
                .filter(|n| is_bft_committee_size(*n))
                .collect::<Vec<_>>(),
            [4, 7, 10, 13]
        );
        assert_eq!(fault_tolerance(4), 1);
        assert_eq!(fault_tolerance(7), 2);
        assert_eq!(fault_tolerance(10), 3);
        let mut s = spec();
        s.validators_per_shard = 3;
        s.beacon.validators = 6;
        assert_eq!(
            fields(validate("alpha", &s)),
            ["spec.validatorsPerShard", "spec.beacon.validators"]
        );
        s.validators_per_shard = 103;
        s.beacon.validators = 4;
        assert_eq!(fields(validate("alpha", &s)), ["spec.validatorsPerShard"]);
        // A consortium's committees are its members' nodes: 3 organisations is valid
        // (no fault tolerated until a 4th joins), 0 is not.
        let mut c = spec();
        c.mode = NetworkMode::Consortium;
        c.members = vec![member("org-a"), member("org-b"), member("org-c")];
        c.validators_per_shard = 3;
        c.beacon.validators = 3;
        assert_eq!(validate("alpha", &c), Ok(()));
        assert_eq!(fault_tolerance(3), 0);
        c.validators_per_shard = 0;
        assert_eq!(fields(validate("alpha", &c)), ["spec.validatorsPerShard"]);
    }

    #[test]
    fn shard_bounds() {
        for (count, min, max, ok) in [
            (1, 1, 1, true),
            (3, 2, 4, true),
            (5, 1, 4, false),
            (1, 2, 4, false),
            (0, 0, 4, false),
            (256, 1, 256, true),
        ] {
            let mut s = spec();
            s.shards = ShardsSpec {
                count,
                min,
                max,
                ..ShardsSpec::default()
            };
            assert_eq!(validate("alpha", &s).is_ok(), ok, "{count} {min} {max}");
        }
        // An archive is kept 0 seconds to a year.
        for (seconds, ok) in [(0, true), (86_400, true), (31_536_000, true), (-1, false)] {
            let mut s = spec();
            s.shards.drained_history_seconds = seconds;
            assert_eq!(validate("alpha", &s).is_ok(), ok, "{seconds}");
        }
        let mut s = spec();
        s.shards.drained_history_seconds = 31_536_001;
        assert_eq!(
            validate("alpha", &s).unwrap_err().to_string(),
            "spec.shards.drainedHistorySeconds: seconds a drained slot's archive node is kept: \
             0 (delete at once) to 31536000 (one year), got 31536001"
        );
        let mut s = spec();
        s.shards = ShardsSpec {
            count: 1,
            min: 1,
            max: 300,
            ..ShardsSpec::default()
        };
        assert_eq!(fields(validate("alpha", &s)), ["spec.shards.max"]);
    }

    #[test]
    fn names() {
        assert!(validate(&"a".repeat(MAX_NETWORK_NAME_LEN), &spec()).is_ok());
        for bad in [
            "",
            "Alpha",
            "-a",
            "a-",
            "a_b",
            &"a".repeat(MAX_NETWORK_NAME_LEN + 1),
        ] {
            assert_eq!(fields(validate(bad, &spec())), ["metadata.name"], "{bad:?}");
        }
    }

    #[test]
    fn consortium_members() {
        let mut s = spec();
        s.mode = NetworkMode::Consortium;
        assert_eq!(fields(validate("c", &s)), ["spec.members"]);
        s.members = vec![member("org-a"), member("org-b")];
        assert_eq!(validate("c", &s), Ok(()));
        s.members.push(member("org-a"));
        s.members[1].admin_public_key = "zz".repeat(32);
        assert_eq!(
            fields(validate("c", &s)),
            ["spec.members[1].adminPublicKey", "spec.members[2].name"]
        );
        let mut public = spec();
        public.members = vec![member("org-a")];
        assert_eq!(fields(validate("p", &public)), ["spec.members"]);
    }

    #[test]
    fn genesis_balances_are_checked() {
        let mut s = spec();
        s.genesis_balances = vec![
            crate::network::GenesisAllocation {
                account: "ab".repeat(32),
                amount: 10,
            },
            crate::network::GenesisAllocation {
                account: "AB".repeat(32),
                amount: 0,
            },
            crate::network::GenesisAllocation {
                account: "xyz".to_owned(),
                amount: i64::MAX,
            },
        ];
        assert_eq!(
            fields(validate("a", &s)),
            [
                "spec.genesisBalances[1].account",
                "spec.genesisBalances[1].amount",
                "spec.genesisBalances[2].account",
                "spec.genesisBalances",
            ]
        );
    }

    #[test]
    fn autoscaler_needs_a_target() {
        let mut s = spec();
        s.autoscaling = Some(AutoscalingSpec {
            enabled: true,
            target_tx_per_second_per_shard: None,
            target_mempool_depth: None,
            cooldown_seconds: 60,
            stabilization_window_seconds: 60,
        });
        assert_eq!(fields(validate("a", &s)), ["spec.autoscaling"]);
        if let Some(a) = s.autoscaling.as_mut() {
            a.target_mempool_depth = Some(1000);
        }
        assert_eq!(validate("a", &s), Ok(()));
    }

    #[test]
    fn validator_pool_rules() {
        use crate::network::ValidatorPoolSpec;
        let pool = |replicas| Some(ValidatorPoolSpec { replicas });
        let mut s = spec();
        s.validator_pool = pool(3);
        assert_eq!(validate("a", &s), Ok(()));
        s.validator_pool = pool(0);
        assert_eq!(validate("a", &s), Ok(()));
        for bad in [-1, MAX_VALIDATORS + 1] {
            s.validator_pool = pool(bad);
            assert_eq!(
                fields(validate("a", &s)),
                ["spec.validatorPool.replicas"],
                "{bad}"
            );
        }
        // The beacon's registry: 256 shards of 16 fill it.
        s.shards = ShardsSpec {
            count: 1,
            min: 1,
            max: 256,
            ..ShardsSpec::default()
        };
        s.validators_per_shard = 16;
        s.validator_pool = pool(1);
        let err = validate("a", &s).unwrap_err().to_string();
        assert!(err.contains("at most 4096 validators"), "{err}");
        // A consortium refuses a pool with a message that says what to do instead.
        let mut c = spec();
        c.mode = NetworkMode::Consortium;
        c.members = vec![member("org-a")];
        c.validator_pool = pool(2);
        let err = validate("c", &c).unwrap_err().to_string();
        assert!(
            err.contains("spec.validatorPool.replicas: a validator pool is only for Public")
                && err.contains("ChainMember"),
            "{err}"
        );
        c.validator_pool = pool(0);
        assert_eq!(validate("c", &c), Ok(()));
    }

    #[test]
    fn error_message_lists_every_violation() {
        let mut s = spec();
        s.node.image = " ".to_owned();
        s.epoch_length = 1;
        let err = validate("alpha", &s).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("spec.node.image: must not be empty"),
            "{text}"
        );
        assert!(text.contains("spec.epochLength"), "{text}");
    }
}
