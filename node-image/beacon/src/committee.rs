//! Which validators form each shard's committee in the next epoch.
//!
//! A validator registers either for a fixed shard (the operator runs one StatefulSet per
//! shard and its pods register for that shard: their storage, Service and p2p peers are
//! that shard's) or for [`ANY_SHARD`] (a node that can serve whichever shard the beacon
//! gives it). Fixed validators always form their shard's committee; only the "any"
//! validators are placed by the beacon:
//!
//! - **public mode**: a seeded shuffle. Each epoch, at most ⌊n/3⌋ of a shard's previous
//!   committee (n members) is rotated out — chosen by the epoch seed, only among its
//!   "any" validators — and the rotated validators plus new "any" registrations are
//!   placed in seeded order, each into the currently smallest committee. Members that
//!   deregistered leave regardless (that is not rotation).
//! - **consortium mode**: no shuffle (members are known organisations); each
//!   organisation's "any" validators stay where they were and are spread so that every
//!   shard has at least one validator of every organisation when the organisation has
//!   enough validators; the rest go to the smallest committees; then committees are
//!   evened out (sizes within one where "any" validators allow) by moves that never cost
//!   an organisation a shard.
//!
//! Fixed shards are the honest rule for nodes bound to a shard's StatefulSet: moving such
//! a node to another shard would need the operator to move its pod, so the beacon does
//! not pretend to. See docs/sharding.md.

use crate::{Mode, Validator};
use commonware_cryptography::{Hasher, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use trellis_node_types::PublicKey;
use trellis_node_types::system::ANY_SHARD;

/// Committees of shards `0..count` for the next epoch (each sorted by key).
///
/// `previous` holds the current epoch's committees (index = shard; shorter when the count
/// grows). `validators` is the registry, `members` the admitted organisations (consortium
/// mode: validators of other organisations are left out).
pub fn assign(
    mode: Mode,
    count: u16,
    validators: &BTreeMap<PublicKey, Validator>,
    previous: &[Vec<PublicKey>],
    seed: &[u8; 32],
    members: &BTreeSet<String>,
) -> Vec<Vec<PublicKey>> {
    let count = usize::from(count);
    if count == 0 {
        return Vec::new();
    }
    let mut committees: Vec<Vec<PublicKey>> = vec![Vec::new(); count];
    let eligible = validators.values().filter(|v| match mode {
        Mode::Public => true,
        Mode::Consortium => v.member.as_ref().is_some_and(|m| members.contains(m)),
    });
    let mut floating = Vec::new();
    // Organisations of each shard's fixed validators (consortium spread).
    let mut fixed_orgs: Vec<BTreeMap<&str, usize>> = vec![BTreeMap::new(); count];
    for v in eligible {
        if v.shard == ANY_SHARD {
            floating.push(v);
        } else if usize::from(v.shard) < count {
            committees[usize::from(v.shard)].push(v.node_key.clone());
            if let Some(m) = &v.member {
                *fixed_orgs[usize::from(v.shard)].entry(m).or_default() += 1;
            }
        }
        // A validator registered for a shard that does not exist yet waits for it.
    }
    // Where each floating validator served this epoch, if that shard still exists.
    let mut was_in: BTreeMap<&PublicKey, usize> = BTreeMap::new();
    for (s, committee) in previous.iter().enumerate().take(count) {
        for key in committee {
            was_in.insert(key, s);
        }
    }
    match mode {
        Mode::Public => place_public(&mut committees, &floating, &was_in, previous, seed),
        Mode::Consortium => place_consortium(&mut committees, &floating, &was_in, &fixed_orgs),
    }
    for c in &mut committees {
        c.sort();
    }
    committees
}

/// Seeded rank of a key (SHA-256 of seed, purpose and key).
fn rank(seed: &[u8; 32], purpose: &[u8], key: &PublicKey) -> [u8; 32] {
    Sha256::hash(&[seed.as_slice(), purpose, key.as_ref()]).0
}

fn smallest(committees: &[Vec<PublicKey>]) -> usize {
    committees
        .iter()
        .enumerate()
        .min_by(|(a, ca), (b, cb)| ca.len().cmp(&cb.len()).then(a.cmp(b)))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

fn place_public(
    committees: &mut [Vec<PublicKey>],
    floating: &[&Validator],
    was_in: &BTreeMap<&PublicKey, usize>,
    previous: &[Vec<PublicKey>],
    seed: &[u8; 32],
) {
    // Floating validators that served in a shard that still exists stay, except the
    // rotated ones.
    let mut staying: Vec<Vec<&PublicKey>> = vec![Vec::new(); committees.len()];
    let mut pool: Vec<&PublicKey> = Vec::new();
    for v in floating {
        match was_in.get(&v.node_key) {
            Some(&s) => staying[s].push(&v.node_key),
            None => pool.push(&v.node_key),
        }
    }
    for (s, stay) in staying.iter_mut().enumerate() {
        let n = previous.get(s).map_or(0, Vec::len);
        let rotate = (n / 3).min(stay.len());
        stay.sort_by_cached_key(|k| rank(seed, b"rotate", k));
        pool.extend(stay.drain(..rotate));
        committees[s].extend(stay.iter().map(|k| (*k).clone()));
    }
    pool.sort_by_cached_key(|k| rank(seed, b"place", k));
    for key in pool {
        let s = smallest(committees);
        committees[s].push(key.clone());
    }
}

fn place_consortium(
    committees: &mut [Vec<PublicKey>],
    floating: &[&Validator],
    was_in: &BTreeMap<&PublicKey, usize>,
    fixed_orgs: &[BTreeMap<&str, usize>],
) {
    let shards = committees.len();
    // Floating validators placed so far, per shard, with their organisation; and how
    // many validators (fixed and floating) each organisation has in each shard.
    let mut placed: Vec<Vec<(&PublicKey, &str)>> = vec![Vec::new(); shards];
    let mut org_count: Vec<BTreeMap<&str, usize>> = fixed_orgs.to_vec();
    let mut by_org: BTreeMap<&str, Vec<&Validator>> = BTreeMap::new();
    for v in floating {
        by_org
            .entry(v.member.as_deref().unwrap_or_default())
            .or_default()
            .push(v);
    }
    let count_of = |org_count: &[BTreeMap<&str, usize>], s: usize, org: &str| {
        org_count[s].get(org).copied().unwrap_or(0)
    };
    let mut leftovers: Vec<(&PublicKey, &str)> = Vec::new();
    for (org, validators) in by_org {
        // They stay where they were; new ones (or ones whose shard is gone) wait.
        let mut waiting: Vec<&PublicKey> = Vec::new();
        for v in validators {
            match was_in.get(&v.node_key) {
                Some(&s) => {
                    placed[s].push((&v.node_key, org));
                    *org_count[s].entry(org).or_default() += 1;
                }
                None => waiting.push(&v.node_key),
            }
        }
        // Every shard lacking this organisation gets one of its waiting validators, or
        // a floating one from the shard where it has the most (only where it keeps one).
        for s in 0..shards {
            if count_of(&org_count, s, org) > 0 {
                continue;
            }
            let moved = match waiting.pop() {
                Some(k) => Some(k),
                None => (0..shards)
                    .filter(|&d| {
                        count_of(&org_count, d, org) > 1 && placed[d].iter().any(|(_, o)| *o == org)
                    })
                    .max_by(|&a, &b| {
                        count_of(&org_count, a, org)
                            .cmp(&count_of(&org_count, b, org))
                            .then(b.cmp(&a))
                    })
                    .and_then(|d| {
                        let at = placed[d].iter().rposition(|(_, o)| *o == org)?;
                        *org_count[d].entry(org).or_default() -= 1;
                        Some(placed[d].remove(at).0)
                    }),
            };
            if let Some(k) = moved {
                placed[s].push((k, org));
                *org_count[s].entry(org).or_default() += 1;
            }
        }
        leftovers.extend(waiting.into_iter().map(|k| (k, org)));
    }
    let size = |placed: &[Vec<(&PublicKey, &str)>], s: usize| committees[s].len() + placed[s].len();
    leftovers.sort();
    for (key, org) in leftovers {
        let s = (0..shards)
            .min_by(|&a, &b| size(&placed, a).cmp(&size(&placed, b)).then(a.cmp(&b)))
            .unwrap_or(0);
        placed[s].push((key, org));
        *org_count[s].entry(org).or_default() += 1;
    }
    // Even out committee sizes (a new shard must not stay empty) with moves that never
    // cost an organisation a shard: a floating validator moves from a committee larger by
    // two or more when its organisation keeps a validator there or has none in the
    // smaller one. Each move lowers the sum of squared sizes, so this ends.
    while let Some(s) =
        (0..shards).min_by(|&a, &b| size(&placed, a).cmp(&size(&placed, b)).then(a.cmp(&b)))
    {
        let mut donors: Vec<usize> = (0..shards)
            .filter(|&d| size(&placed, d) > size(&placed, s) + 1)
            .collect();
        donors.sort_by(|&a, &b| size(&placed, b).cmp(&size(&placed, a)).then(a.cmp(&b)));
        let pick = donors.into_iter().find_map(|d| {
            let movable = |(_, org): &(&PublicKey, &str)| {
                count_of(&org_count, d, org) > 1 || count_of(&org_count, s, org) == 0
            };
            // Prefer an organisation the smaller committee lacks.
            let at = placed[d]
                .iter()
                .rposition(|e| movable(e) && count_of(&org_count, s, e.1) == 0)
                .or_else(|| placed[d].iter().rposition(movable))?;
            Some((d, at))
        });
        let Some((d, at)) = pick else {
            break;
        };
        let (key, org) = placed[d].remove(at);
        *org_count[d].entry(org).or_default() -= 1;
        placed[s].push((key, org));
        *org_count[s].entry(org).or_default() += 1;
    }
    for (s, entries) in placed.into_iter().enumerate() {
        committees[s].extend(entries.into_iter().map(|(k, _)| k.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_node_types::{Signer, test_key};

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    fn validator(i: u64, shard: u16, member: Option<&str>) -> Validator {
        Validator {
            node_key: test_key(10_000 + i).public_key(),
            shard,
            p2p_address: "a:1".into(),
            rpc_address: "a:2".into(),
            member: member.map(str::to_string),
        }
    }

    fn shard_of(committees: &[Vec<PublicKey>], key: &PublicKey) -> Option<usize> {
        committees.iter().position(|c| c.contains(key))
    }

    /// Every eligible validator sits in exactly one committee; fixed ones in theirs.
    fn check_placement(
        committees: &[Vec<PublicKey>],
        registry: &BTreeMap<PublicKey, Validator>,
        members: Option<&BTreeSet<String>>,
    ) {
        let count = committees.len();
        let mut all: Vec<&PublicKey> = committees.iter().flatten().collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a validator sits twice");
        for v in registry.values() {
            let eligible = members.is_none_or(|m| v.member.as_ref().is_some_and(|o| m.contains(o)));
            let expected = match v.shard {
                _ if !eligible => None,
                ANY_SHARD => Some(None),
                s if usize::from(s) < count => Some(Some(usize::from(s))),
                _ => None,
            };
            let at = shard_of(committees, &v.node_key);
            match expected {
                None => assert_eq!(at, None),
                Some(None) => assert!(at.is_some(), "floating validator not placed"),
                Some(Some(s)) => assert_eq!(at, Some(s)),
            }
        }
    }

    #[test]
    fn public_shuffle_rotates_at_most_a_third_of_each_shard() {
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let mut registry = BTreeMap::new();
        let mut next_id = 0;
        let mut add = |registry: &mut BTreeMap<PublicKey, Validator>, shard| {
            let v = validator(next_id, shard, None);
            next_id += 1;
            registry.insert(v.node_key.clone(), v);
        };
        for _ in 0..24 {
            add(&mut registry, ANY_SHARD);
        }
        for s in 0..4 {
            add(&mut registry, s);
        }
        let none = BTreeSet::new();
        let mut count = 4u16;
        let mut previous = assign(Mode::Public, count, &registry, &[], &[0; 32], &none);
        check_placement(&previous, &registry, None);
        let mut rotated_total = 0;
        for epoch in 1..200u64 {
            // Churn: a few registrations and deregistrations, sometimes a new count.
            let before = registry.clone();
            for _ in 0..rng.below(3) {
                let shard = if rng.below(3) == 0 {
                    rng.below(6) as u16
                } else {
                    ANY_SHARD
                };
                add(&mut registry, shard);
            }
            for _ in 0..rng.below(3) {
                let keys: Vec<PublicKey> = registry.keys().cloned().collect();
                let k = &keys[rng.below(keys.len() as u64) as usize];
                registry.remove(k);
            }
            let old_count = count;
            if rng.below(10) == 0 {
                count = 1 + rng.below(6) as u16;
            }
            let seed = Sha256::hash(&[&epoch.to_be_bytes()]).0;
            let next = assign(Mode::Public, count, &registry, &previous, &seed, &none);
            check_placement(&next, &registry, None);
            // Same inputs, same committees.
            assert_eq!(
                next,
                assign(Mode::Public, count, &registry, &previous, &seed, &none)
            );
            for (s, prev) in previous.iter().enumerate() {
                if s >= usize::from(count) {
                    continue; // the shard is gone: its validators move, that is resharding
                }
                // Rotated: still registered the same way, but no longer in this shard.
                let rotated = prev
                    .iter()
                    .filter(|k| before.contains_key(*k) && before.get(*k) == registry.get(*k))
                    .filter(|k| shard_of(&next, k) != Some(s))
                    .count();
                assert!(
                    rotated <= prev.len() / 3,
                    "epoch {epoch}: {rotated} of {} left shard {s} ({old_count}->{count})",
                    prev.len()
                );
                rotated_total += rotated;
            }
            previous = next;
        }
        // The shuffle does move validators.
        assert!(rotated_total > 100, "only {rotated_total} rotations");
    }

    #[test]
    fn no_shards_means_no_committees() {
        let registry: BTreeMap<PublicKey, Validator> = (0..3)
            .map(|i| validator(i, ANY_SHARD, Some("a")))
            .map(|v| (v.node_key.clone(), v))
            .collect();
        let members: BTreeSet<String> = ["a".to_string()].into();
        for mode in [Mode::Public, Mode::Consortium] {
            assert!(assign(mode, 0, &registry, &[], &[0; 32], &members).is_empty());
        }
    }

    #[test]
    fn public_shuffle_depends_on_the_seed() {
        let registry: BTreeMap<PublicKey, Validator> = (0..30)
            .map(|i| validator(i, ANY_SHARD, None))
            .map(|v| (v.node_key.clone(), v))
            .collect();
        let none = BTreeSet::new();
        let a = assign(Mode::Public, 3, &registry, &[], &[1; 32], &none);
        let b = assign(Mode::Public, 3, &registry, &[], &[2; 32], &none);
        assert_ne!(a, b);
        // Placement is balanced: 10 each.
        assert!(a.iter().all(|c| c.len() == 10));
    }

    #[test]
    fn consortium_spreads_every_organisation_over_the_shards() {
        let mut rng = Rng(0x0bad_cafe_1234_5678);
        for round in 0..300 {
            let orgs: Vec<String> = (0..1 + rng.below(5)).map(|o| format!("org{o}")).collect();
            let members: BTreeSet<String> = orgs.iter().cloned().collect();
            let mut registry = BTreeMap::new();
            let mut id = 0;
            for org in &orgs {
                for _ in 0..rng.below(7) {
                    let shard = if rng.below(4) == 0 {
                        rng.below(7) as u16
                    } else {
                        ANY_SHARD
                    };
                    let v = validator(id, shard, Some(org));
                    id += 1;
                    registry.insert(v.node_key.clone(), v);
                }
            }
            let mut previous = Vec::new();
            for epoch in 0..3 {
                let count = 1 + rng.below(6) as u16;
                let next = assign(
                    Mode::Consortium,
                    count,
                    &registry,
                    &previous,
                    &[0; 32],
                    &members,
                );
                check_placement(&next, &registry, Some(&members));
                for org in &orgs {
                    let of_org = registry.values().filter(|v| v.member.as_ref() == Some(org));
                    let fixed: BTreeSet<u16> = of_org
                        .clone()
                        .filter(|v| v.shard != ANY_SHARD && v.shard < count)
                        .map(|v| v.shard)
                        .collect();
                    let floating = of_org.clone().filter(|v| v.shard == ANY_SHARD).count();
                    let covered = next
                        .iter()
                        .filter(|c| {
                            c.iter().any(|k| {
                                registry.get(k).and_then(|v| v.member.as_ref()) == Some(org)
                            })
                        })
                        .count();
                    let best = usize::from(count).min(fixed.len() + floating);
                    assert_eq!(covered, best, "round {round} epoch {epoch}: {org}");
                }
                // No empty shard when "any" validators could staff every shard without
                // a fixed one.
                let unstaffed = (0..count)
                    .filter(|s| !registry.values().any(|v| v.shard == *s))
                    .count();
                let floating = registry.values().filter(|v| v.shard == ANY_SHARD).count();
                if floating >= unstaffed {
                    assert!(
                        next.iter().all(|c| !c.is_empty()),
                        "round {round}: {next:?}"
                    );
                }
                previous = next;
            }
        }
    }

    #[test]
    fn consortium_keeps_validators_where_they_were() {
        let members: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let registry: BTreeMap<PublicKey, Validator> = (0..8)
            .map(|i| validator(i, ANY_SHARD, Some(if i % 2 == 0 { "a" } else { "b" })))
            .map(|v| (v.node_key.clone(), v))
            .collect();
        let first = assign(Mode::Consortium, 2, &registry, &[], &[0; 32], &members);
        // Two of each organisation per shard.
        assert!(first.iter().all(|c| c.len() == 4));
        let again = assign(Mode::Consortium, 2, &registry, &first, &[9; 32], &members);
        assert_eq!(
            first, again,
            "a new seed must not move consortium validators"
        );
        // Growing to 4 shards moves only what the new shards need.
        let four = assign(Mode::Consortium, 4, &registry, &first, &[0; 32], &members);
        let stayed = (0..2)
            .map(|s| first[s].iter().filter(|k| four[s].contains(k)).count())
            .sum::<usize>();
        assert_eq!(stayed, 4);
        assert!(four.iter().all(|c| c.len() == 2));
    }
}
