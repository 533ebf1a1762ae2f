//! The desired state of a network, as tenants write it, and its validation.
//!
//! Validation is pure (request in, `NetworkSpec` or field errors out) and collects every
//! problem at once, each with the field's JSON path and what to do about it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::FieldError;

/// The chain has 256 fixed state tables mapped onto shards, so more shards than tables
/// would leave shards without state.
pub const MAX_SHARDS: u32 = 256;
pub const MAX_VALIDATORS: u32 = 64;
pub const MAX_MEMBERS: usize = 32;
pub const MAX_NODES_PER_MEMBER: u32 = 16;
pub const MAX_NAME_LENGTH: usize = 40;
pub const DEFAULT_NODE_VERSION: &str = "0.1.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A sharded public chain: open participation, validators run by the platform.
    Public,
    /// A permissioned consortium ("alliance") chain of named organisations.
    Consortium,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Public => "public",
            NetworkMode::Consortium => "consortium",
        }
    }
}

/// Shard count and the bounds the autoscaler keeps it within.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShardRange {
    pub count: u32,
    pub min: u32,
    pub max: u32,
}

/// A partial shard range for updates; omitted fields keep their value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShardRangePatch {
    pub count: Option<u32>,
    pub min: Option<u32>,
    pub max: Option<u32>,
}

/// When and how the shard count follows load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoscalingPolicy {
    pub enabled: bool,
    /// Add a shard when the mean throughput per shard exceeds this.
    #[serde(default = "default_target_tps")]
    pub target_tx_per_second_per_shard: u32,
    /// Add a shard when the mean mempool depth per shard exceeds this.
    #[serde(default = "default_target_mempool")]
    pub target_mempool_depth: u32,
    /// Minimum time between two scaling steps.
    #[serde(default = "default_cooldown")]
    pub cooldown_seconds: u32,
    /// How long a signal must persist before the autoscaler acts on it.
    #[serde(default = "default_stabilization")]
    pub stabilization_window_seconds: u32,
}

fn default_target_tps() -> u32 {
    500
}
fn default_target_mempool() -> u32 {
    5_000
}
fn default_cooldown() -> u32 {
    300
}
fn default_stabilization() -> u32 {
    120
}

impl Default for AutoscalingPolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            target_tx_per_second_per_shard: default_target_tps(),
            target_mempool_depth: default_target_mempool(),
            cooldown_seconds: default_cooldown(),
            stabilization_window_seconds: default_stabilization(),
        }
    }
}

/// An organisation of a consortium and the validator nodes it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// The organisation's display name, unique within the network.
    pub organisation: String,
    #[serde(default = "one")]
    pub nodes: u32,
    /// The organisation's admin public key (hex Ed25519, 64 digits) when it brings
    /// its own; otherwise the console custodies a generated key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_public_key: Option<String>,
}

fn one() -> u32 {
    1
}

/// `POST /v1/networks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetworkRequest {
    /// DNS label (lower-case letters, digits, `-`), at most 40 characters, unique in
    /// the tenant.
    pub name: String,
    pub mode: NetworkMode,
    /// Default: `{count: 1, min: 1, max: 1}`.
    pub shards: Option<ShardRange>,
    /// Public mode only (consortium validators are the members' nodes). Default 4.
    pub validators_per_shard: Option<u32>,
    /// Validators of the beacon committee. Default 4 (public) or the members' node
    /// count (consortium).
    pub beacon_validators: Option<u32>,
    /// Public mode only: validators that belong to no shard; the beacon places them in
    /// shard committees and rotates them every epoch (the operator's
    /// `spec.validatorPool`). Default 0.
    pub validator_pool: Option<u32>,
    /// `MAJOR.MINOR.PATCH` of `trellis-node`. Default: the console's default version.
    pub node_version: Option<String>,
    pub autoscaling: Option<AutoscalingPolicy>,
    /// Consortium mode: the organisations, the caller's own first. Public: must be empty.
    #[serde(default)]
    pub members: Vec<MemberSpec>,
    /// Blocks per epoch. Default 100.
    pub epoch_length: Option<u64>,
    /// Keep the ledger volumes when the network is deleted. Default true.
    pub retain_ledger_on_delete: Option<bool>,
}

/// `PATCH /v1/networks/{id}`: every field optional; omitted fields keep their value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNetworkRequest {
    pub shards: Option<ShardRangePatch>,
    /// Public mode only: the validator pool's size (see [`CreateNetworkRequest`]).
    pub validator_pool: Option<u32>,
    pub autoscaling: Option<AutoscalingPolicy>,
    pub node_version: Option<String>,
    /// Paused: the operator reconciles nothing; nodes keep running.
    pub paused: Option<bool>,
    /// Stopped: all nodes scaled to zero, ledger data kept.
    pub stopped: Option<bool>,
    pub retain_ledger_on_delete: Option<bool>,
}

/// The complete, validated desired state of a network: what the provisioner realises.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NetworkSpec {
    pub mode: NetworkMode,
    pub shards: ShardRange,
    pub validators_per_shard: u32,
    pub beacon_validators: u32,
    /// Validators the beacon places and rotates between shards (public mode; 0: none).
    #[serde(default)]
    pub validator_pool: u32,
    pub node_version: String,
    pub autoscaling: AutoscalingPolicy,
    pub members: Vec<MemberSpec>,
    pub epoch_length: u64,
    pub paused: bool,
    pub stopped: bool,
    pub retain_ledger_on_delete: bool,
}

fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes[0].is_ascii_lowercase()
        && bytes
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

pub fn validate_name(name: &str, errors: &mut Vec<FieldError>) {
    if name.len() > MAX_NAME_LENGTH {
        errors.push(FieldError::new(
            "name",
            format!("must be at most {MAX_NAME_LENGTH} characters"),
        ));
    } else if !is_dns_label(name) {
        errors.push(FieldError::new(
            "name",
            "must start with a lower-case letter, contain only lower-case letters, digits \
             and '-', and not end with '-' (it names Kubernetes resources)",
        ));
    }
}

/// `MAJOR.MINOR.PATCH` with an optional `-prerelease` of `[0-9A-Za-z.-]`.
pub fn is_node_version(version: &str) -> bool {
    let (core, pre) = match version.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (version, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    numbers.len() == 3
        && numbers
            .iter()
            .all(|n| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()))
        && pre.is_none_or(|pre| {
            !pre.is_empty()
                && pre.len() <= 64
                && pre
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        })
}

/// A committee tolerating `f` faults has `3f + 1` members; `f ≥ 1` (the operator's
/// ChainNetwork validation applies the same rule to public networks).
pub fn is_bft_committee(size: u32) -> bool {
    size >= 4 && size % 3 == 1
}

fn bft_advice(size: u32) -> String {
    let below = if size >= 4 { (size - 1) / 3 * 3 + 1 } else { 4 };
    let above = below.max(4) + if below < size { 3 } else { 0 };
    format!(
        "a committee has 3f+1 validators (4, 7, 10, …) to tolerate f faults; use {}",
        if below == above || below < 4 {
            above.to_string()
        } else {
            format!("{below} or {above}")
        }
    )
}

fn is_hex_public_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

impl NetworkSpec {
    /// Fills defaults into a create request and validates the result.
    pub fn from_create(request: &CreateNetworkRequest) -> Result<NetworkSpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        validate_name(&request.name, &mut errors);
        let member_nodes: u32 = request
            .members
            .iter()
            .map(|member| member.nodes)
            .fold(0u32, u32::saturating_add);
        let (validators_per_shard, beacon_validators) = match request.mode {
            NetworkMode::Public => {
                if !request.members.is_empty() {
                    errors.push(FieldError::new(
                        "members",
                        "a public network has no members; use mode \"consortium\" for one \
                         run by named organisations",
                    ));
                }
                (
                    request.validators_per_shard.unwrap_or(4),
                    request.beacon_validators.unwrap_or(4),
                )
            }
            NetworkMode::Consortium => {
                if request.validators_per_shard.is_some() {
                    errors.push(FieldError::new(
                        "validators_per_shard",
                        "a consortium's validators are its members' nodes; set members[].nodes \
                         instead",
                    ));
                }
                (
                    member_nodes,
                    request.beacon_validators.unwrap_or(member_nodes),
                )
            }
        };
        let spec = NetworkSpec {
            mode: request.mode,
            shards: request.shards.unwrap_or(ShardRange {
                count: 1,
                min: 1,
                max: 1,
            }),
            validators_per_shard,
            beacon_validators,
            validator_pool: request.validator_pool.unwrap_or(0),
            node_version: request
                .node_version
                .clone()
                .unwrap_or_else(|| DEFAULT_NODE_VERSION.to_string()),
            autoscaling: request.autoscaling.clone().unwrap_or_default(),
            members: request.members.clone(),
            epoch_length: request.epoch_length.unwrap_or(100),
            paused: false,
            stopped: false,
            retain_ledger_on_delete: request.retain_ledger_on_delete.unwrap_or(true),
        };
        spec.check(&mut errors);
        if errors.is_empty() {
            Ok(spec)
        } else {
            Err(errors)
        }
    }

    /// Applies a patch and validates the result; the original is unchanged on error.
    pub fn patched(&self, patch: &UpdateNetworkRequest) -> Result<NetworkSpec, Vec<FieldError>> {
        let mut next = self.clone();
        if let Some(shards) = patch.shards {
            next.shards.count = shards.count.unwrap_or(next.shards.count);
            next.shards.min = shards.min.unwrap_or(next.shards.min);
            next.shards.max = shards.max.unwrap_or(next.shards.max);
        }
        if let Some(autoscaling) = &patch.autoscaling {
            next.autoscaling = autoscaling.clone();
        }
        next.validator_pool = patch.validator_pool.unwrap_or(next.validator_pool);
        if let Some(version) = &patch.node_version {
            next.node_version = version.clone();
        }
        next.paused = patch.paused.unwrap_or(next.paused);
        next.stopped = patch.stopped.unwrap_or(next.stopped);
        next.retain_ledger_on_delete = patch
            .retain_ledger_on_delete
            .unwrap_or(next.retain_ledger_on_delete);
        let mut errors = Vec::new();
        next.check(&mut errors);
        if errors.is_empty() {
            Ok(next)
        } else {
            Err(errors)
        }
    }

    /// The spec with one more consortium member; validator counts follow the members'
    /// nodes (the beacon committee too, unless it was set apart from them).
    pub fn with_member(&self, member: MemberSpec) -> Result<NetworkSpec, Vec<FieldError>> {
        self.with_members(|members| members.push(member))
    }

    /// The spec without the member `organisation` (removed from the consortium), the
    /// validator counts following as in [`Self::with_member`].
    pub fn without_member(&self, organisation: &str) -> Result<NetworkSpec, Vec<FieldError>> {
        let organisation = organisation.trim();
        self.with_members(|members| members.retain(|m| m.organisation.trim() != organisation))
    }

    /// Changes the members; every consortium validator is a member's node, so the
    /// committee sizes follow the total (the beacon's only where it followed before).
    fn with_members(
        &self,
        change: impl FnOnce(&mut Vec<MemberSpec>),
    ) -> Result<NetworkSpec, Vec<FieldError>> {
        let total = |members: &[MemberSpec]| {
            members
                .iter()
                .map(|member| member.nodes)
                .fold(0u32, u32::saturating_add)
        };
        let mut next = self.clone();
        let old_total = total(&next.members);
        change(&mut next.members);
        let new_total = total(&next.members);
        next.validators_per_shard = new_total;
        if next.beacon_validators == old_total {
            next.beacon_validators = new_total;
        }
        let mut errors = Vec::new();
        next.check(&mut errors);
        if errors.is_empty() {
            Ok(next)
        } else {
            Err(errors)
        }
    }

    /// The invariants of a complete spec.
    fn check(&self, errors: &mut Vec<FieldError>) {
        let shards = self.shards;
        if shards.min < 1 {
            errors.push(FieldError::new("shards.min", "must be at least 1"));
        }
        if shards.max > MAX_SHARDS {
            errors.push(FieldError::new(
                "shards.max",
                format!("must be at most {MAX_SHARDS} (the number of state tables)"),
            ));
        }
        if shards.min > shards.max {
            errors.push(FieldError::new(
                "shards.min",
                format!(
                    "must not exceed shards.max ({}); raise max or lower min",
                    shards.max
                ),
            ));
        }
        if shards.count < shards.min || shards.count > shards.max {
            errors.push(FieldError::new(
                "shards.count",
                format!(
                    "must lie within shards.min..=shards.max ({}..={})",
                    shards.min, shards.max
                ),
            ));
        }
        let validator_field = match self.mode {
            NetworkMode::Public => "validators_per_shard",
            NetworkMode::Consortium => "members",
        };
        // A consortium without members gets one error about members, not echoes of it
        // about the validator counts derived from them.
        let counts_derived_from_nothing =
            self.mode == NetworkMode::Consortium && self.members.is_empty();
        if !counts_derived_from_nothing
            && (self.validators_per_shard < 1 || self.validators_per_shard > MAX_VALIDATORS)
        {
            errors.push(FieldError::new(
                validator_field,
                format!("validators per shard must be within 1..={MAX_VALIDATORS}"),
            ));
        } else if self.mode == NetworkMode::Public && !is_bft_committee(self.validators_per_shard) {
            errors.push(FieldError::new(
                "validators_per_shard",
                bft_advice(self.validators_per_shard),
            ));
        }
        if !counts_derived_from_nothing
            && (self.beacon_validators < 1 || self.beacon_validators > MAX_VALIDATORS)
        {
            errors.push(FieldError::new(
                "beacon_validators",
                format!("must be within 1..={MAX_VALIDATORS}"),
            ));
        } else if self.mode == NetworkMode::Public && !is_bft_committee(self.beacon_validators) {
            errors.push(FieldError::new(
                "beacon_validators",
                bft_advice(self.beacon_validators),
            ));
        }
        if self.validator_pool > 0 && self.mode == NetworkMode::Consortium {
            errors.push(FieldError::new(
                "validator_pool",
                "a consortium places validators per organisation; add nodes through \
                 members[].nodes instead of a validator pool",
            ));
        } else if self.validator_pool > MAX_VALIDATORS {
            errors.push(FieldError::new(
                "validator_pool",
                format!("must be within 0..={MAX_VALIDATORS}"),
            ));
        }
        if !is_node_version(&self.node_version) {
            errors.push(FieldError::new(
                "node_version",
                "must be a version like 1.4.2 or 1.5.0-rc.1",
            ));
        }
        if !(1..=1_000_000).contains(&self.epoch_length) {
            errors.push(FieldError::new(
                "epoch_length",
                "must be within 1..=1000000 blocks",
            ));
        }
        let autoscaling = &self.autoscaling;
        if autoscaling.enabled && shards.min == shards.max {
            errors.push(FieldError::new(
                "autoscaling.enabled",
                format!(
                    "autoscaling needs room to scale: shards.min and shards.max are both {}",
                    shards.min
                ),
            ));
        }
        if autoscaling.target_tx_per_second_per_shard == 0 {
            errors.push(FieldError::new(
                "autoscaling.target_tx_per_second_per_shard",
                "must be at least 1",
            ));
        }
        if autoscaling.target_mempool_depth == 0 {
            errors.push(FieldError::new(
                "autoscaling.target_mempool_depth",
                "must be at least 1",
            ));
        }
        if !(30..=86_400).contains(&autoscaling.cooldown_seconds) {
            errors.push(FieldError::new(
                "autoscaling.cooldown_seconds",
                "must be within 30..=86400 seconds",
            ));
        }
        if autoscaling.stabilization_window_seconds > 86_400 {
            errors.push(FieldError::new(
                "autoscaling.stabilization_window_seconds",
                "must be at most 86400 seconds",
            ));
        }
        match self.mode {
            NetworkMode::Public => {}
            NetworkMode::Consortium => {
                // The node runs consortium governance (admitting and removing members)
                // only in unsharded networks, and the operator builds a consortium as
                // one shard without a beacon (docs/operator.md), so more is refused here
                // rather than failing after creation. (Autoscaling is then refused by the
                // rule above: a range of 1..=1 leaves no room.)
                if self.shards.count != 1 || self.shards.min != 1 || self.shards.max != 1 {
                    errors.push(FieldError::new(
                        "shards",
                        format!(
                            "a consortium network runs one shard (member governance needs an \
                             unsharded chain); got count {}, min {}, max {}: leave shards out \
                             or set them all to 1, or use mode \"public\" for a sharded network",
                            self.shards.count, self.shards.min, self.shards.max
                        ),
                    ));
                }
                if self.members.is_empty() || self.members.len() > MAX_MEMBERS {
                    errors.push(FieldError::new(
                        "members",
                        format!(
                            "a consortium needs 1..={MAX_MEMBERS} member organisations, \
                             the caller's own first"
                        ),
                    ));
                }
                for (index, member) in self.members.iter().enumerate() {
                    let organisation = member.organisation.trim();
                    if organisation.is_empty() || organisation.len() > 100 {
                        errors.push(FieldError::new(
                            format!("members[{index}].organisation"),
                            "must be 1..=100 characters",
                        ));
                    }
                    if self.members[..index]
                        .iter()
                        .any(|other| other.organisation.trim() == organisation)
                    {
                        errors.push(FieldError::new(
                            format!("members[{index}].organisation"),
                            "names an organisation already listed",
                        ));
                    }
                    if member.nodes < 1 || member.nodes > MAX_NODES_PER_MEMBER {
                        errors.push(FieldError::new(
                            format!("members[{index}].nodes"),
                            format!("must be within 1..={MAX_NODES_PER_MEMBER}"),
                        ));
                    }
                    if let Some(key) = &member.admin_public_key
                        && !is_hex_public_key(key)
                    {
                        errors.push(FieldError::new(
                            format!("members[{index}].admin_public_key"),
                            "must be a hex-encoded Ed25519 public key (64 hex digits)",
                        ));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(name: &str) -> CreateNetworkRequest {
        CreateNetworkRequest {
            name: name.into(),
            mode: NetworkMode::Public,
            shards: None,
            validators_per_shard: None,
            beacon_validators: None,
            validator_pool: None,
            node_version: None,
            autoscaling: None,
            members: vec![],
            epoch_length: None,
            retain_ledger_on_delete: None,
        }
    }

    #[test]
    fn a_validator_pool_is_public_only_bounded_and_patchable() {
        let spec = NetworkSpec::from_create(&CreateNetworkRequest {
            validator_pool: Some(3),
            ..public("n")
        })
        .unwrap();
        assert_eq!(spec.validator_pool, 3);
        let grown = spec
            .patched(&UpdateNetworkRequest {
                validator_pool: Some(5),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(grown.validator_pool, 5);
        let kept = grown.patched(&UpdateNetworkRequest::default()).unwrap();
        assert_eq!(kept.validator_pool, 5, "omitted keeps its value");
        let errors = spec
            .patched(&UpdateNetworkRequest {
                validator_pool: Some(MAX_VALIDATORS + 1),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(fields(&errors), ["validator_pool"]);
        let errors = NetworkSpec::from_create(&CreateNetworkRequest {
            mode: NetworkMode::Consortium,
            members: vec![MemberSpec {
                organisation: "Acme".into(),
                nodes: 4,
                admin_public_key: None,
            }],
            validator_pool: Some(1),
            ..public("c")
        })
        .unwrap_err();
        assert_eq!(fields(&errors), ["validator_pool"]);
        assert!(errors[0].message.contains("members[].nodes"), "{errors:?}");
        // A spec stored before pools existed reads as no pool.
        let mut stored = serde_json::to_value(&spec).unwrap();
        stored.as_object_mut().unwrap().remove("validator_pool");
        let read: NetworkSpec = serde_json::from_value(stored).unwrap();
        assert_eq!(read.validator_pool, 0);
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn defaults_are_filled() {
        let spec = NetworkSpec::from_create(&public("main-net")).unwrap();
        assert_eq!(
            spec.shards,
            ShardRange {
                count: 1,
                min: 1,
                max: 1
            }
        );
        assert_eq!(spec.validators_per_shard, 4);
        assert_eq!(spec.node_version, DEFAULT_NODE_VERSION);
        assert!(spec.retain_ledger_on_delete);
        assert!(!spec.autoscaling.enabled);
    }

    #[test]
    fn names_must_be_dns_labels() {
        for bad in ["", "Main", "9net", "net-", "net_work", &"a".repeat(41)] {
            let errors = NetworkSpec::from_create(&public(bad)).unwrap_err();
            assert_eq!(fields(&errors), ["name"], "{bad:?}");
        }
        for good in ["a", "net-1", "x9"] {
            assert!(NetworkSpec::from_create(&public(good)).is_ok(), "{good}");
        }
    }

    #[test]
    fn shard_count_must_fit_its_bounds() {
        let mut request = public("n");
        request.shards = Some(ShardRange {
            count: 9,
            min: 2,
            max: 8,
        });
        let errors = NetworkSpec::from_create(&request).unwrap_err();
        assert_eq!(fields(&errors), ["shards.count"]);
        assert!(errors[0].message.contains("2..=8"));
        request.shards = Some(ShardRange {
            count: 300,
            min: 1,
            max: 300,
        });
        let errors = NetworkSpec::from_create(&request).unwrap_err();
        assert_eq!(fields(&errors), ["shards.max"]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut request = public("Bad Name");
        request.node_version = Some("latest".into());
        request.epoch_length = Some(0);
        request.members = vec![MemberSpec {
            organisation: "x".into(),
            nodes: 1,
            admin_public_key: None,
        }];
        let errors = NetworkSpec::from_create(&request).unwrap_err();
        assert_eq!(
            fields(&errors),
            ["name", "members", "node_version", "epoch_length"]
        );
    }

    #[test]
    fn autoscaling_needs_room() {
        let mut request = public("n");
        request.autoscaling = Some(AutoscalingPolicy {
            enabled: true,
            ..AutoscalingPolicy::default()
        });
        let errors = NetworkSpec::from_create(&request).unwrap_err();
        assert_eq!(fields(&errors), ["autoscaling.enabled"]);
        request.shards = Some(ShardRange {
            count: 2,
            min: 1,
            max: 8,
        });
        assert!(NetworkSpec::from_create(&request).is_ok());
    }

    #[test]
    fn consortium_validators_come_from_members() {
        let request = CreateNetworkRequest {
            mode: NetworkMode::Consortium,
            members: vec![
                MemberSpec {
                    organisation: "Acme".into(),
                    nodes: 2,
                    admin_public_key: None,
                },
                MemberSpec {
                    organisation: "Globex".into(),
                    nodes: 1,
                    admin_public_key: Some("ab".repeat(32)),
                },
            ],
            ..public("alliance")
        };
        let spec = NetworkSpec::from_create(&request).unwrap();
        assert_eq!(spec.validators_per_shard, 3);
        assert_eq!(spec.beacon_validators, 3);

        let mut bad = request.clone();
        bad.members[1].organisation = "Acme".into();
        bad.members[1].admin_public_key = Some("not-hex".into());
        bad.members[0].nodes = 0;
        let errors = NetworkSpec::from_create(&bad).unwrap_err();
        assert_eq!(
            fields(&errors),
            [
                "members[0].nodes",
                "members[1].organisation",
                "members[1].admin_public_key"
            ]
        );
        let empty = CreateNetworkRequest {
            members: vec![],
            ..request
        };
        let errors = NetworkSpec::from_create(&empty).unwrap_err();
        assert!(fields(&errors).contains(&"members"));
    }

    #[test]
    fn patches_merge_and_revalidate() {
        let spec = NetworkSpec::from_create(&CreateNetworkRequest {
            shards: Some(ShardRange {
                count: 2,
                min: 1,
                max: 4,
            }),
            ..public("n")
        })
        .unwrap();
        let scaled = spec
            .patched(&UpdateNetworkRequest {
                shards: Some(ShardRangePatch {
                    count: Some(4),
                    ..Default::default()
                }),
                paused: Some(true),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(scaled.shards.count, 4);
        assert_eq!(scaled.shards.max, 4);
        assert!(scaled.paused);
        let errors = spec
            .patched(&UpdateNetworkRequest {
                shards: Some(ShardRangePatch {
                    count: Some(5),
                    ..Default::default()
                }),
                node_version: Some("1.2".into()),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(fields(&errors), ["shards.count", "node_version"]);
    }

    #[test]
    fn public_committees_are_3f_plus_1() {
        let mut request = public("n");
        request.validators_per_shard = Some(5);
        request.beacon_validators = Some(3);
        let errors = NetworkSpec::from_create(&request).unwrap_err();
        assert_eq!(
            fields(&errors),
            ["validators_per_shard", "beacon_validators"]
        );
        assert!(
            errors[0].message.contains("use 4 or 7"),
            "{}",
            errors[0].message
        );
        assert!(errors[1].message.contains("use 4"), "{}", errors[1].message);
        request.validators_per_shard = Some(7);
        request.beacon_validators = Some(10);
        assert!(NetworkSpec::from_create(&request).is_ok());
        assert!((1..=64).filter(|n| is_bft_committee(*n)).eq([
            4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34, 37, 40, 43, 46, 49, 52, 55, 58, 61, 64
        ]));
    }

    #[test]
    fn node_versions() {
        for good in ["0.1.0", "10.20.30", "1.5.0-rc.1"] {
            assert!(is_node_version(good), "{good}");
        }
        for bad in ["", "1.2", "1.2.x", "v1.2.3", "1.2.3-", "1.2.3-rc/1"] {
            assert!(!is_node_version(bad), "{bad}");
        }
    }
}
