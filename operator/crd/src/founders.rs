//! Founding members leaving a consortium. Pure, shared by the operator (which removes
//! the founder from the chain and then its pods) and the console (which refuses a
//! removal that cannot complete before its members approve it).
//!
//! A founding organisation is listed in the network's `spec.members`, the genesis
//! membership: its validators are pods of the network's own shard StatefulSets, dealt
//! round-robin by ordinal ([`crate::topology`]). Genesis membership stays as it was (the
//! deal, and so every node's name and key slot, depends on it); a founder that left is
//! named in [`retire`]'s list instead, and its validators are dropped from the
//! committees. Two rules decide whether a founder can leave:
//!
//! * **Quorum.** The committee left behind must still tolerate a fault: at least
//!   [`MIN_COMMITTEE`] (`3f+1` with `f = 1`) validators ([`quorum_refusal`]).
//! * **Last ordinals.** A StatefulSet removes pods from its highest ordinal down; it
//!   cannot drop one in the middle. So a founder can leave when its validators are the
//!   last pods of shard 0 (after those of founders that already left); otherwise the
//!   refusal names the organisation whose validators come last ([`founder_exit`]).

use crate::member::{ChainMember, MemberPhase};
use crate::network::ChainNetwork;
use crate::topology::{Committee, CommitteeRole, PlannedNode, Topology};
use crate::validate::fault_tolerance;

/// The smallest committee that tolerates one faulty validator (`3f+1`, `f = 1`).
pub const MIN_COMMITTEE: usize = 4;

/// Whether `member` is one of `network`'s founding members: listed in its
/// `spec.members` (the genesis membership) with the same admin key.
pub fn is_founder(member: &ChainMember, network: &ChainNetwork) -> bool {
    network.spec.members.iter().any(|m| {
        m.name == member.spec.organization
            && m.admin_public_key
                .eq_ignore_ascii_case(&member.spec.admin_public_key)
    })
}

/// Whether `member` belongs to the network `name` in `namespace` (its own namespace
/// unless `spec.network.namespace` names another).
pub fn of_network(member: &ChainMember, name: &str, namespace: &str) -> bool {
    let network_ns = member
        .spec
        .network
        .namespace
        .as_ref()
        .or(member.metadata.namespace.as_ref());
    member.spec.network.name == name && network_ns.is_some_and(|n| n == namespace)
}

/// The founding members of `network` whose removal from the chain is complete: a
/// `ChainMember` of the network with `spec.remove`, phase `Removed`, for an organisation
/// of its `spec.members`. The network drops their validators
/// ([`retire`]). Pure.
pub fn retired_founders<'a>(
    network: &ChainNetwork,
    members: impl IntoIterator<Item = &'a ChainMember>,
) -> Vec<String> {
    let name = network.metadata.name.as_deref().unwrap_or_default();
    let namespace = network.metadata.namespace.as_deref().unwrap_or_default();
    members
        .into_iter()
        .filter(|m| {
            m.spec.remove
                && of_network(m, name, namespace)
                && m.status.as_ref().and_then(|s| s.phase) == Some(MemberPhase::Removed)
                && is_founder(m, network)
        })
        .map(|m| m.spec.organization.clone())
        .collect()
}

/// Drops, from every shard committee of `topology`, the trailing validators of the
/// founding members in `retired` (organisations whose removal from the chain is
/// complete), with the committee's size, fault tolerance and quorum following. Only
/// trailing validators go, the ones a StatefulSet can remove ([`founder_exit`] refuses
/// the others before they leave the chain).
pub fn retire(mut topology: Topology, retired: &[String]) -> Topology {
    if retired.is_empty() {
        return topology;
    }
    for committee in &mut topology.committees {
        if committee.role == CommitteeRole::Beacon {
            continue;
        }
        let before = committee.nodes.len();
        while committee
            .nodes
            .last()
            .and_then(|n| n.member.as_ref())
            .is_some_and(|m| retired.contains(m))
        {
            committee.nodes.pop();
        }
        if committee.nodes.len() != before {
            resize(committee);
        }
    }
    topology
}

fn resize(committee: &mut Committee) {
    let size = u32::try_from(committee.nodes.len()).unwrap_or(u32::MAX);
    let f = fault_tolerance(i32::try_from(size).unwrap_or(i32::MAX));
    let f = u32::try_from(f).unwrap_or(0);
    committee.validators = size;
    committee.fault_tolerance = f;
    committee.quorum = 2 * f + 1;
}

/// The pod names of `organisation`'s validators in shard 0 of `topology` (already
/// [`retire`]d for the founders that left before), when the StatefulSet can remove them:
/// they are its last ordinals. Empty when it runs none there (gone already). Otherwise
/// why not, naming the organisation that can leave first.
pub fn founder_exit(topology: &Topology, organisation: &str) -> Result<Vec<String>, String> {
    let Some(shard) = topology.shards().next() else {
        return Err("the network has no shard committee".to_owned());
    };
    let theirs = |n: &PlannedNode| n.member.as_deref() == Some(organisation);
    let Some(first) = shard.nodes.iter().position(theirs) else {
        return Ok(Vec::new());
    };
    let tail = &shard.nodes[first..];
    if tail.iter().all(theirs) {
        return Ok(tail.iter().map(|n| n.name.clone()).collect());
    }
    let own: Vec<&str> = shard
        .nodes
        .iter()
        .filter(|n| theirs(n))
        .map(|n| n.name.as_str())
        .collect();
    let last = shard.nodes.last().map_or_else(String::new, |n| {
        format!(
            "; {} (running {}) can leave first",
            n.member.as_deref().unwrap_or("no organisation"),
            n.name
        )
    });
    Err(format!(
        "{organisation}'s validators {} are not the last pods of StatefulSet {}: a \
         StatefulSet removes pods from its highest ordinal down, so a founding member can \
         leave only when its validators come last{last}",
        own.join(", "),
        shard.name
    ))
}

/// Why removing `leaving` of the `validators` the chain has now would leave a committee
/// that tolerates no fault, if it would.
pub fn quorum_refusal(organisation: &str, validators: usize, leaving: usize) -> Option<String> {
    let remaining = validators.saturating_sub(leaving);
    (remaining < MIN_COMMITTEE).then(|| {
        format!(
            "removing {organisation} ({leaving} of {validators} validators) would leave \
             {remaining}; a committee needs at least {MIN_COMMITTEE} (3f+1 with f = 1) to \
             keep finalizing with a validator down: admit another member first"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{ChainNetworkSpec, ConsortiumMember, NetworkMode};
    use crate::topology::{NetworkId, plan};

    /// Five founders with one validator each: shard 0's deal starts at the second
    /// member, so ordinal 4 is the first member's.
    fn five() -> Topology {
        let mut spec = ChainNetworkSpec::new(NetworkMode::Consortium, "n:1");
        spec.members = ["acme", "globex", "initech", "umbrella", "hooli"]
            .iter()
            .map(|m| ConsortiumMember {
                name: (*m).to_owned(),
                admin_public_key: "ab".repeat(32),
                nodes: 1,
            })
            .collect();
        spec.validators_per_shard = 5;
        spec.beacon.validators = 5;
        plan(&NetworkId::new("ns", "alliance"), &spec).unwrap()
    }

    #[test]
    fn only_the_founder_with_the_last_ordinals_can_leave() {
        let t = five();
        assert_eq!(
            founder_exit(&t, "acme").unwrap(),
            ["alliance-shard-0-4"],
            "the first member's validator is dealt last"
        );
        let refused = founder_exit(&t, "globex").unwrap_err();
        assert!(
            refused.contains("globex's validators alliance-shard-0-0 are not the last pods")
                && refused.contains("acme (running alliance-shard-0-4) can leave first"),
            "{refused}"
        );
        assert_eq!(founder_exit(&t, "nobody").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn retired_founders_leave_the_committee_and_the_next_one_comes_last() {
        let t = retire(five(), &["acme".to_owned()]);
        let shard = t.shards().next().unwrap();
        assert_eq!(shard.nodes.len(), 4);
        assert_eq!(
            (shard.validators, shard.fault_tolerance, shard.quorum),
            (4, 1, 3)
        );
        // The beacon (not run in a consortium) and the key slots are untouched.
        assert_eq!(t.beacon().unwrap().nodes.len(), 5);
        assert_eq!(
            shard.nodes[3].key_slot,
            five().shards().next().unwrap().nodes[3].key_slot
        );
        assert_eq!(founder_exit(&t, "acme").unwrap(), Vec::<String>::new());
        assert_eq!(founder_exit(&t, "hooli").unwrap(), ["alliance-shard-0-3"]);
        // A founder in the middle is not retired from under the others.
        let t = retire(five(), &["initech".to_owned()]);
        assert_eq!(t.shards().next().unwrap().nodes.len(), 5);
        assert_eq!(retire(five(), &[]), five());
    }

    #[test]
    fn a_removal_must_leave_a_fault_tolerant_committee() {
        assert_eq!(quorum_refusal("acme", 5, 1), None);
        let refused = quorum_refusal("acme", 4, 1).unwrap();
        assert!(refused.contains("would leave 3"), "{refused}");
        assert!(quorum_refusal("acme", 6, 3).is_some());
        assert!(quorum_refusal("acme", 0, 1).is_some());
    }
}
