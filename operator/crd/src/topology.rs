//! The pure topology planner: a validated `ChainNetwork` spec in, the network's shape out.
//!
//! The operator turns a [`Topology`] into Kubernetes objects; the console's local
//! provisioner turns the same value into local `trellis-node` processes. Only the
//! actuation differs, so both run exactly the same committees, node names and key slots.
//!
//! Invariants kept (and tested):
//! * committee `i` of a network always has the same name and the same key slots, whatever
//!   the shard count: adding shard 3 never renames or re-keys shards 0–2;
//! * every committee has `3f+1` validators and a quorum of `2f+1`;
//! * in consortium mode every committee has at least one validator per member when the
//!   committee is large enough (validators are dealt round-robin over the members);
//! * the initial table map gives every shard `⌊256/S⌋` or `⌈256/S⌉` tables.

use crate::network::{ChainNetworkSpec, NetworkMode, TABLES};

/// The node's limit on a chain id (`trellis-node-types::MAX_CHAIN_ID_LEN`).
pub const MAX_CHAIN_ID_LEN: usize = 32;
use crate::validate::{InvalidSpec, fault_tolerance, validate};

/// What a committee does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CommitteeRole {
    /// Orders system transactions (shard count, members, validator sets, epoch seed).
    Beacon,
    /// Orders transactions for the tables it owns.
    Shard(u16),
    /// Not a committee: the validator pool, whose validators register for shard "any"
    /// and serve whichever shard committee the beacon places them in.
    Pool,
}

impl CommitteeRole {
    /// `beacon` or `shard` (the `app.kubernetes.io/component` value).
    pub fn component(self) -> &'static str {
        match self {
            CommitteeRole::Beacon => "beacon",
            CommitteeRole::Shard(_) => "shard",
            CommitteeRole::Pool => "pool",
        }
    }

    /// Name suffix: `beacon` or `shard-<n>`.
    pub fn suffix(self) -> String {
        match self {
            CommitteeRole::Beacon => "beacon".to_owned(),
            CommitteeRole::Shard(n) => format!("shard-{n}"),
            CommitteeRole::Pool => "pool".to_owned(),
        }
    }
}

/// Identity of a network: where it lives and what it is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkId {
    /// Kubernetes namespace, or the tenant's scope for local networks.
    pub namespace: String,
    pub name: String,
}

impl NetworkId {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The chain id every transaction signs over: unique per namespace and name, so a
    /// transaction for one network can never be replayed on another. `name.namespace`
    /// when it fits the node's 32-byte limit, else the name's start and a 64-bit hash of
    /// the whole (names are ASCII DNS labels, so byte slicing is safe).
    pub fn chain_id(&self) -> String {
        let full = format!("{}.{}", self.name, self.namespace);
        if full.len() <= MAX_CHAIN_ID_LEN {
            return full;
        }
        // FNV-1a: stable across releases and platforms, no dependency.
        let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let keep = MAX_CHAIN_ID_LEN - 17;
        let prefix: String = self.name.chars().take(keep).collect();
        format!("{}-{hash:016x}", prefix.trim_end_matches('-'))
    }

    /// Name of the committee with `role`: `<network>-beacon`, `<network>-shard-<n>`.
    pub fn committee_name(&self, role: CommitteeRole) -> String {
        format!("{}-{}", self.name, role.suffix())
    }
}

/// One validator of a committee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedNode {
    /// `<committee>-<ordinal>`: the StatefulSet pod name, or the local process name.
    pub name: String,
    /// Position in the committee (StatefulSet ordinal).
    pub ordinal: u32,
    /// Network-wide slot of this node's key; stable while the network exists.
    pub key_slot: u32,
    /// Consortium organisation running this node (None in public mode).
    pub member: Option<String>,
}

/// A BFT committee: the beacon or one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committee {
    pub role: CommitteeRole,
    /// `<network>-beacon` / `<network>-shard-<n>`.
    pub name: String,
    /// `n = 3f+1`.
    pub validators: u32,
    /// `f`: validators that may fail (or be disrupted) without losing liveness.
    pub fault_tolerance: u32,
    /// `2f+1`: signatures needed to finalise a block.
    pub quorum: u32,
    pub nodes: Vec<PlannedNode>,
}

/// A consortium organisation and the node slots dealt to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMember {
    pub name: String,
    pub admin_public_key: String,
    /// Key slots of the nodes this member runs.
    pub key_slots: Vec<u32>,
}

/// What the genesis file is made of, before keys are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenesisPlan {
    pub chain_id: String,
    pub mode: NetworkMode,
    pub epoch_length: u64,
    pub shard_count: u16,
    /// `table_map[t]` is the shard owning table `t` at genesis.
    pub table_map: Vec<u16>,
    /// Key slots of the beacon validators, then of each shard's validators.
    pub beacon_key_slots: Vec<u32>,
    pub shard_key_slots: Vec<Vec<u32>>,
}

/// The planned shape of a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub id: NetworkId,
    /// The beacon first, then shards `0..shard_count` in order, then the validator pool
    /// when the spec asks for one (see [`Topology::pool`]).
    pub committees: Vec<Committee>,
    pub members: Vec<PlannedMember>,
    pub genesis: GenesisPlan,
}

impl Topology {
    pub fn beacon(&self) -> Option<&Committee> {
        self.committees
            .iter()
            .find(|c| c.role == CommitteeRole::Beacon)
    }

    pub fn shards(&self) -> impl Iterator<Item = &Committee> {
        self.committees
            .iter()
            .filter(|c| matches!(c.role, CommitteeRole::Shard(_)))
    }

    /// The validator pool's StatefulSet-to-be, when it has validators. Its nodes are in
    /// no genesis: they register with the beacon for shard "any" once it runs.
    pub fn pool(&self) -> Option<&Committee> {
        self.committees
            .iter()
            .find(|c| c.role == CommitteeRole::Pool)
    }

    /// Provisions `size` pool validators (ordinals `0..size`; none for 0), replacing the
    /// planned pool: the operator keeps leaving validators while the beacon still places
    /// them.
    pub fn set_pool(&mut self, size: u32) {
        self.committees.retain(|c| c.role != CommitteeRole::Pool);
        if size > 0 {
            self.committees.push(pool_committee(&self.id, size));
        }
    }

    /// Number of key slots in use (the highest slot + 1) by the beacon and the shards
    /// (the pool's slots are a range of their own, see [`POOL_FIRST_KEY_SLOT`]).
    pub fn key_slots(&self) -> u32 {
        self.committees
            .iter()
            .filter(|c| c.role != CommitteeRole::Pool)
            .flat_map(|c| c.nodes.iter().map(|n| n.key_slot + 1))
            .max()
            .unwrap_or(0)
    }
}

/// First key slot of the validator pool: far above any shard's slots (at most 256 shards
/// of 100 after a beacon of 100), so that adding shards never collides with the pool and
/// resizing the pool never re-keys a shard.
pub const POOL_FIRST_KEY_SLOT: u32 = 1 << 20;

/// The validator pool `<network>-pool` with `size` validators. Its "fault tolerance"
/// is what its PodDisruptionBudget allows: one pool validator at a time (each serves in
/// some shard committee, next to that shard's fixed validators and their own budget).
pub fn pool_committee(id: &NetworkId, size: u32) -> Committee {
    let name = id.committee_name(CommitteeRole::Pool);
    Committee {
        role: CommitteeRole::Pool,
        validators: size,
        fault_tolerance: 1,
        quorum: 0,
        nodes: (0..size)
            .map(|ordinal| PlannedNode {
                name: format!("{name}-{ordinal}"),
                ordinal,
                key_slot: POOL_FIRST_KEY_SLOT + ordinal,
                member: None,
            })
            .collect(),
        name,
    }
}

/// Plans the network `id` with `spec`, provisioning `shard_count` shards (normally
/// `spec.shards.count`; the operator passes more while a scale-in waits for the beacon).
pub fn plan_with_shards(
    id: &NetworkId,
    spec: &ChainNetworkSpec,
    shard_count: u16,
) -> Result<Topology, InvalidSpec> {
    validate(&id.name, spec)?;
    // Validated: both sizes are 3f+1 in 4..=100 and the shard count is at most 256.
    let beacon_size = u32::try_from(spec.beacon.validators).unwrap_or(0);
    let shard_size = u32::try_from(spec.validators_per_shard).unwrap_or(0);
    let member_names: Vec<&str> = spec.members.iter().map(|m| m.name.as_str()).collect();

    let mut committees = Vec::with_capacity(usize::from(shard_count) + 1);
    committees.push(committee(
        id,
        CommitteeRole::Beacon,
        beacon_size,
        0,
        &member_names,
    ));
    for shard in 0..shard_count {
        // Shard s always owns slots [beacon + s*v, beacon + (s+1)*v): stable under scaling.
        let first_slot = beacon_size + u32::from(shard) * shard_size;
        committees.push(committee(
            id,
            CommitteeRole::Shard(shard),
            shard_size,
            first_slot,
            &member_names,
        ));
    }

    let members = spec
        .members
        .iter()
        .map(|m| PlannedMember {
            name: m.name.clone(),
            admin_public_key: m.admin_public_key.to_ascii_lowercase(),
            key_slots: committees
                .iter()
                .flat_map(|c| c.nodes.iter())
                .filter(|n| n.member.as_deref() == Some(m.name.as_str()))
                .map(|n| n.key_slot)
                .collect(),
        })
        .collect();

    let genesis = GenesisPlan {
        chain_id: id.chain_id(),
        mode: spec.mode,
        epoch_length: u64::try_from(spec.epoch_length).unwrap_or(0),
        shard_count,
        table_map: initial_table_map(shard_count),
        beacon_key_slots: committees
            .first()
            .map(|c| c.nodes.iter().map(|n| n.key_slot).collect())
            .unwrap_or_default(),
        shard_key_slots: committees
            .iter()
            .skip(1)
            .map(|c| c.nodes.iter().map(|n| n.key_slot).collect())
            .collect(),
    };

    let mut topology = Topology {
        id: id.clone(),
        committees,
        members,
        genesis,
    };
    topology.set_pool(u32::try_from(spec.pool_replicas()).unwrap_or(0));
    Ok(topology)
}

/// Plans the network with the spec's own shard count.
pub fn plan(id: &NetworkId, spec: &ChainNetworkSpec) -> Result<Topology, InvalidSpec> {
    validate(&id.name, spec)?;
    plan_with_shards(id, spec, u16::try_from(spec.shards.count).unwrap_or(1))
}

fn committee(
    id: &NetworkId,
    role: CommitteeRole,
    size: u32,
    first_slot: u32,
    members: &[&str],
) -> Committee {
    let name = id.committee_name(role);
    let f = fault_tolerance(i32::try_from(size).unwrap_or(0));
    let f = u32::try_from(f).unwrap_or(0);
    // Offset the deal per committee so that, with more members than validators, different
    // members lead different committees.
    let offset = match role {
        CommitteeRole::Beacon | CommitteeRole::Pool => 0,
        CommitteeRole::Shard(s) => usize::from(s) + 1,
    };
    let nodes = (0..size)
        .map(|ordinal| PlannedNode {
            name: format!("{name}-{ordinal}"),
            ordinal,
            key_slot: first_slot + ordinal,
            member: if members.is_empty() {
                None
            } else {
                let i = (usize::try_from(ordinal).unwrap_or(0) + offset) % members.len();
                members.get(i).map(|m| (*m).to_owned())
            },
        })
        .collect();
    Committee {
        role,
        name,
        validators: size,
        fault_tolerance: f,
        quorum: 2 * f + 1,
        nodes,
    }
}

/// Genesis table map: table `t` belongs to shard `t mod S`, which balances the 256 tables
/// to within one table per shard. Later maps come from the beacon (minimal moves).
pub fn initial_table_map(shard_count: u16) -> Vec<u16> {
    let shards = u32::from(shard_count.max(1));
    (0..TABLES)
        .map(|t| u16::try_from(t % shards).unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{ConsortiumMember, ShardsSpec};
    use std::collections::BTreeSet;

    fn id() -> NetworkId {
        NetworkId::new("tenant-a", "alpha")
    }

    fn public(count: i32) -> ChainNetworkSpec {
        let mut spec = ChainNetworkSpec::new(NetworkMode::Public, "trellis-node:dev");
        spec.shards = ShardsSpec {
            count,
            min: 1,
            max: 256,
            ..ShardsSpec::default()
        };
        spec
    }

    #[test]
    fn default_network_is_a_beacon_and_one_shard_of_four() {
        let t = plan(&id(), &public(1)).unwrap();
        let names: Vec<_> = t.committees.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["alpha-beacon", "alpha-shard-0"]);
        for c in &t.committees {
            assert_eq!((c.validators, c.fault_tolerance, c.quorum), (4, 1, 3));
        }
        let beacon = t.beacon().unwrap();
        assert_eq!(beacon.nodes[3].name, "alpha-beacon-3");
        assert_eq!(t.genesis.chain_id, "alpha.tenant-a");

        assert_eq!(t.genesis.beacon_key_slots, [0, 1, 2, 3]);
        assert_eq!(t.genesis.shard_key_slots, [vec![4, 5, 6, 7]]);
        assert_eq!(t.key_slots(), 8);
    }

    #[test]
    fn quorum_is_two_f_plus_one() {
        for n in [4, 7, 10, 13, 100] {
            let mut spec = public(1);
            spec.validators_per_shard = n;
            let t = plan(&id(), &spec).unwrap();
            let shard = t.shards().next().unwrap();
            let f = (n as u32 - 1) / 3;
            assert_eq!(shard.fault_tolerance, f);
            assert_eq!(shard.quorum, 2 * f + 1);
            // Quorum intersection: two quorums share at least f+1 validators, so at least
            // one honest one.
            assert!(2 * shard.quorum > shard.validators + f);
        }
    }

    #[test]
    fn scaling_never_renames_or_rekeys_existing_shards() {
        let small = plan(&id(), &public(2)).unwrap();
        let large = plan(&id(), &public(5)).unwrap();
        assert_eq!(&large.committees[..3], &small.committees[..]);
        let slots: Vec<u32> = large
            .committees
            .iter()
            .flat_map(|c| c.nodes.iter().map(|n| n.key_slot))
            .collect();
        let unique: BTreeSet<_> = slots.iter().collect();
        assert_eq!(unique.len(), slots.len(), "key slots are unique");
        assert_eq!(large.key_slots(), 4 + 5 * 4);
    }

    #[test]
    fn plan_with_more_shards_than_spec_keeps_draining_ones() {
        let t = plan_with_shards(&id(), &public(2), 4).unwrap();
        assert_eq!(t.shards().count(), 4);
        assert_eq!(t.genesis.shard_count, 4);
    }

    #[test]
    fn table_map_is_balanced_and_covers_every_table() {
        for shards in [1u16, 2, 3, 7, 100, 256] {
            let map = initial_table_map(shards);
            assert_eq!(map.len(), 256);
            let mut per_shard = vec![0u32; usize::from(shards)];
            for owner in &map {
                per_shard[usize::from(*owner)] += 1;
            }
            let min = per_shard.iter().min().unwrap();
            let max = per_shard.iter().max().unwrap();
            assert!(max - min <= 1, "{shards}: {per_shard:?}");
            assert!(*min >= 1);
        }
    }

    #[test]
    fn consortium_members_get_a_validator_in_every_committee() {
        let mut spec = public(3);
        spec.mode = NetworkMode::Consortium;
        spec.members = ["org-a", "org-b", "org-c"]
            .iter()
            .map(|n| ConsortiumMember {
                name: (*n).to_owned(),
                admin_public_key: "AB".repeat(32),
                nodes: 1,
            })
            .collect();
        let t = plan(&id(), &spec).unwrap();
        for c in &t.committees {
            let orgs: BTreeSet<_> = c.nodes.iter().filter_map(|n| n.member.clone()).collect();
            assert_eq!(orgs.len(), 3, "{}", c.name);
        }
        let total: usize = t.members.iter().map(|m| m.key_slots.len()).sum();
        assert_eq!(total as u32, t.key_slots());
        assert_eq!(t.members[0].admin_public_key, "ab".repeat(32));
    }

    #[test]
    fn public_nodes_have_no_member() {
        let t = plan(&id(), &public(1)).unwrap();
        assert!(
            t.committees
                .iter()
                .flat_map(|c| &c.nodes)
                .all(|n| n.member.is_none())
        );
        assert!(t.members.is_empty());
    }

    #[test]
    fn the_pool_is_its_own_stable_group_outside_genesis() {
        let mut spec = public(2);
        spec.validator_pool = Some(crate::network::ValidatorPoolSpec { replicas: 3 });
        let t = plan(&id(), &spec).unwrap();
        let names: Vec<_> = t.committees.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "alpha-beacon",
                "alpha-shard-0",
                "alpha-shard-1",
                "alpha-pool"
            ]
        );
        let pool = t.pool().unwrap();
        assert_eq!(pool.role.component(), "pool");
        assert_eq!(pool.nodes[2].name, "alpha-pool-2");
        assert_eq!(pool.nodes[0].key_slot, POOL_FIRST_KEY_SLOT);
        // Not a shard, not in genesis, not counted in the shards' key slots.
        assert_eq!(t.shards().count(), 2);
        assert_eq!(t.genesis.shard_key_slots.len(), 2);
        assert_eq!(t.key_slots(), 4 + 2 * 4);
        // More shards change nothing of the pool; a smaller pool is a prefix of it.
        let wider = plan_with_shards(&id(), &spec, 5).unwrap();
        assert_eq!(wider.pool(), Some(pool));
        let mut smaller = t.clone();
        smaller.set_pool(1);
        assert_eq!(smaller.pool().unwrap().nodes[..], pool.nodes[..1]);
        smaller.set_pool(0);
        assert_eq!(smaller.pool(), None);
        assert_eq!(plan(&id(), &public(1)).unwrap().pool(), None);
    }

    #[test]
    fn invalid_spec_is_not_planned() {
        let mut spec = public(1);
        spec.validators_per_shard = 5;
        assert!(plan(&id(), &spec).is_err());
    }

    #[test]
    fn chain_ids_fit_the_node_and_stay_distinct() {
        let long = "a-network-name-of-forty-characters-xxxxx";
        let a = NetworkId::new("trellis-acme-corporation-worldwide", long).chain_id();
        let b = NetworkId::new("trellis-acme-corporation-worldwidf", long).chain_id();
        assert!(
            a.len() <= MAX_CHAIN_ID_LEN && b.len() <= MAX_CHAIN_ID_LEN,
            "{a} {b}"
        );
        assert_ne!(a, b);
        assert!(a.starts_with("a-network-name-"), "{a}");
        assert_eq!(
            a,
            NetworkId::new("trellis-acme-corporation-worldwide", long).chain_id()
        );
        assert_eq!(NetworkId::new("ns", "x").chain_id(), "x.ns");
    }
}
