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
//!   enough validators; the rest go to the smallest committees.
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
    let mut committees: Vec<Vec<PublicKey>> = vec![Vec::new(); count];
    let eligible = validators.values().filter(|v| match mode {
        Mode::Public => true,
        Mode::Consortium => v.member.as_ref().is_some_and(|m| members.contains(m)),
    });
    let mut floating = Vec::new();
    // Organisations of each shard's fixed validators (consortium spread).
    let mut fixed_orgs: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); count];
    for v in eligible {
        if v.shard == ANY_SHARD {
            floating.push(v);
        } else if usize::from(v.shard) < count {
            committees[usize::from(v.shard)].push(v.node_key.clone());
            if let Some(m) = &v.member {
                fixed_orgs[usize::from(v.shard)].insert(m);
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
        stay.sort_by_key(|k| rank(seed, b"rotate", k));
        pool.extend(stay.drain(..rotate));
        committees[s].extend(stay.iter().map(|k| (*k).clone()));
    }
    pool.sort_by_key(|k| rank(seed, b"place", k));
    for key in pool {
        let s = smallest(committees);
        committees[s].push(key.clone());
    }
}

fn place_consortium(
    committees: &mut [Vec<PublicKey>],
    floating: &[&Validator],
    was_in: &BTreeMap<&PublicKey, usize>,
    fixed_orgs: &[BTreeSet<&str>],
) {
    let mut by_org: BTreeMap<&str, Vec<&Validator>> = BTreeMap::new();
    for v in floating {
        by_org
            .entry(v.member.as_deref().unwrap_or_default())
            .or_default()
            .push(v);
    }
    let shards = committees.len();
    let mut leftovers: Vec<&PublicKey> = Vec::new();
    for (org, validators) in by_org {
        // They stay where they were; new ones (or ones whose shard is gone) wait.
        let mut placed: Vec<Vec<&PublicKey>> = vec![Vec::new(); shards];
        let mut waiting: Vec<&PublicKey> = Vec::new();
        for v in validators {
            match was_in.get(&v.node_key) {
                Some(&s) => placed[s].push(&v.node_key),
                None => waiting.push(&v.node_key),
            }
        }
        let has = |placed: &[Vec<&PublicKey>], s: usize| -> usize {
            placed[s].len() + usize::from(fixed_orgs[s].contains(org))
        };
        // Every shard lacking this organisation gets one of its waiting validators, or
        // one from the shard where it has the most (only where it keeps one there).
        for s in 0..shards {
            if has(&placed, s) > 0 {
                continue;
            }
            if let Some(k) = waiting.pop() {
                placed[s].push(k);
                continue;
            }
            let donor = (0..shards)
                .filter(|&d| !placed[d].is_empty() && has(&placed, d) > 1)
                .max_by(|&a, &b| has(&placed, a).cmp(&has(&placed, b)).then(b.cmp(&a)));
            if let Some(d) = donor
                && let Some(k) = placed[d].pop()
            {
                placed[s].push(k);
            }
        }
        for (s, keys) in placed.into_iter().enumerate() {
            committees[s].extend(keys.into_iter().cloned());
        }
        leftovers.extend(waiting);
    }
    leftovers.sort();
    for key in leftovers {
        let s = smallest(committees);
        committees[s].push(key.clone());
    }
}
