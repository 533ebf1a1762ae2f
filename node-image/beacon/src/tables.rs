//! The table map: which shard owns each of the 256 tables, and how it changes with the
//! shard count.
//!
//! Moving a table costs a state handoff (its whole tree travels to the new owner and is
//! verified there), so a change of shard count moves as few tables as it can:
//!
//! - **scale-in** moves exactly the tables of the removed shards, each (busiest first) to
//!   the surviving shard with the least load so far; tables on surviving shards stay put;
//! - **scale-out** only moves tables *to the new shards*: each new shard, least loaded
//!   first, takes the busiest table that still fits under its fair share (`total / to`)
//!   from the most loaded old shard, and stops as soon as it reaches that share or no move
//!   would make the pair more even. A new shard that balancing leaves empty takes one
//!   table, so every shard always owns at least one table.
//!
//! Load is the per-table figure the operator measured (`SetShardCount`'s hint, e.g. tx/s);
//! without one every table weighs the same, so the plan balances table counts.

use trellis_node_types::TABLES;

/// A table map: owner shard of each table.
pub type TableMap = [u16; TABLES];

/// One table changing owner at an epoch boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableMove {
    pub table: u8,
    pub from: u16,
    pub to: u16,
}

/// The genesis map for `shards` shards: shard `s` owns the contiguous range of tables `t`
/// with `t * shards / 256 == s` (every shard gets 256/shards tables, ±1).
pub fn genesis_map(shards: u16) -> TableMap {
    let shards = usize::from(shards.clamp(1, TABLES as u16));
    let mut map = [0u16; TABLES];
    for (t, owner) in map.iter_mut().enumerate() {
        // < shards ≤ 256: fits u16.
        *owner = (t * shards / TABLES) as u16;
    }
    map
}

/// The tables whose owner differs between two maps, in table order.
pub fn moves(before: &TableMap, after: &TableMap) -> Vec<TableMove> {
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(t, (a, b))| TableMove {
            // t < 256.
            table: t as u8,
            from: *a,
            to: *b,
        })
        .collect()
}

/// Plans the table map for `to` shards from `current` (a map for `from` shards) with the
/// fewest moves; see the module documentation. Never fails: `to` is clamped to
/// `1..=256`, and an entry naming a shard `>= from` (not a valid map for `from` shards) is
/// treated like a table of a removed shard.
pub fn plan_tables(current: &TableMap, from: u16, to: u16, load: &[u64; TABLES]) -> TableMap {
    let to = to.clamp(1, TABLES as u16);
    let surviving = from.clamp(1, to);
    // Weights in u128: a sum of 256 u64 loads cannot overflow. Without any load, count
    // tables.
    let uniform = load.iter().all(|&l| l == 0);
    let weight = |t: usize| -> u128 { if uniform { 1 } else { u128::from(load[t]) } };

    let mut map = *current;
    let mut shard_load = vec![0u128; usize::from(to)];
    let mut orphans = Vec::new();
    for (t, &owner) in map.iter().enumerate() {
        if owner < surviving {
            shard_load[usize::from(owner)] += weight(t);
        } else {
            orphans.push(t);
        }
    }

    // Scale-in (and invalid entries): busiest orphan first to the least-loaded survivor.
    orphans.sort_by(|&a, &b| weight(b).cmp(&weight(a)).then(a.cmp(&b)));
    for t in orphans {
        let target = least_loaded(&shard_load[..usize::from(surviving)]);
        map[t] = target as u16;
        shard_load[target] += weight(t);
    }
    if to <= surviving {
        return map;
    }

    // Scale-out: fill the new shards up to their fair share from the busiest old shards.
    let total: u128 = shard_load.iter().sum();
    let share = total / u128::from(to);
    let old = usize::from(surviving);
    let mut done = vec![false; usize::from(to)];
    // The least-loaded new shard still below its share, until none is.
    while let Some(new) = (old..usize::from(to))
        .filter(|&n| !done[n] && shard_load[n] < share)
        .min_by(|&a, &b| shard_load[a].cmp(&shard_load[b]).then(a.cmp(&b)))
    {
        let gap = share - shard_load[new];
        // Old shards from the most loaded; the first that has a useful table gives it.
        let mut sources: Vec<usize> = (0..old).collect();
        sources.sort_by(|&a, &b| shard_load[b].cmp(&shard_load[a]).then(a.cmp(&b)));
        let pick = sources.into_iter().find_map(|s| {
            let on_s = || (0..TABLES).filter(move |&t| usize::from(map[t]) == s);
            // The busiest table that fits the gap (ties: the highest table, so that 1→2
            // gives the upper half to shard 1, like the genesis map).
            let fitting = on_s()
                .filter(|&t| weight(t) > 0 && weight(t) <= gap)
                .max_by(|&a, &b| weight(a).cmp(&weight(b)).then(a.cmp(&b)));
            // Else the lightest table whose move still makes the pair more even.
            let improving = || {
                on_s()
                    .filter(|&t| weight(t) > 0 && shard_load[new] + weight(t) < shard_load[s])
                    .min_by(|&a, &b| weight(a).cmp(&weight(b)).then(b.cmp(&a)))
            };
            let t = fitting
                .filter(|&t| shard_load[new] + weight(t) < shard_load[s])
                .or_else(improving)?;
            Some((s, t))
        });
        match pick {
            Some((s, t)) => {
                map[t] = new as u16;
                shard_load[s] -= weight(t);
                shard_load[new] += weight(t);
            }
            None => done[new] = true,
        }
    }

    // Every shard owns at least one table: an empty new shard takes the lightest table of
    // the old shard owning the most tables (which keeps at least one).
    for new in old..usize::from(to) {
        if map.iter().any(|&o| usize::from(o) == new) {
            continue;
        }
        let mut counts = vec![0usize; usize::from(to)];
        for &o in map.iter() {
            counts[usize::from(o)] += 1;
        }
        let Some(s) = (0..usize::from(to))
            .filter(|&s| counts[s] > 1)
            .max_by(|&a, &b| counts[a].cmp(&counts[b]).then(b.cmp(&a)))
        else {
            break;
        };
        if let Some(t) = (0..TABLES)
            .filter(|&t| usize::from(map[t]) == s)
            .min_by(|&a, &b| weight(a).cmp(&weight(b)).then(b.cmp(&a)))
        {
            map[t] = new as u16;
        }
    }
    map
}

/// Index of the smallest load (ties: the lowest index). `loads` is never empty here.
fn least_loaded(loads: &[u128]) -> usize {
    loads
        .iter()
        .enumerate()
        .min_by(|(a, la), (b, lb)| la.cmp(lb).then(a.cmp(b)))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAT: [u64; TABLES] = [0; TABLES];

    /// Deterministic pseudo-random numbers for the property tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn counts(map: &TableMap, shards: u16) -> Vec<usize> {
        let mut c = vec![0; usize::from(shards)];
        for &o in map {
            c[usize::from(o)] += 1;
        }
        c
    }

    fn loads(map: &TableMap, shards: u16, load: &[u64; TABLES]) -> Vec<u128> {
        let mut l = vec![0u128; usize::from(shards)];
        for (t, &o) in map.iter().enumerate() {
            l[usize::from(o)] += u128::from(load[t]);
        }
        l
    }

    /// The invariants every plan keeps, whatever the load.
    fn check_plan(before: &TableMap, from: u16, to: u16, load: &[u64; TABLES]) -> TableMap {
        let after = plan_tables(before, from, to, load);
        // Every table owned by exactly one shard below `to`, every shard owns one.
        assert!(after.iter().all(|&o| o < to), "{from}->{to}: owner >= to");
        assert!(
            counts(&after, to).iter().all(|&c| c > 0),
            "{from}->{to}: empty shard"
        );
        for m in moves(before, &after) {
            if to < from {
                // Scale-in: only the removed shards' tables move, to survivors.
                assert!(
                    m.from >= to,
                    "{from}->{to}: table {} of a survivor moved",
                    m.table
                );
            } else {
                // Scale-out: tables only move to the new shards.
                assert!(
                    m.to >= from,
                    "{from}->{to}: table {} moved between old shards",
                    m.table
                );
            }
        }
        if to < from {
            let removed = before.iter().filter(|&&o| o >= to).count();
            assert_eq!(moves(before, &after).len(), removed);
        }
        after
    }

    #[test]
    fn genesis_maps_are_contiguous_and_even() {
        for shards in 1..=256u16 {
            let map = genesis_map(shards);
            let c = counts(&map, shards);
            let min = 256 / usize::from(shards);
            assert!(
                c.iter().all(|&n| n == min || n == min + 1),
                "{shards}: {c:?}"
            );
            assert!(map.windows(2).all(|w| w[0] <= w[1]));
        }
        assert_eq!(genesis_map(0), genesis_map(1));
        assert_eq!(genesis_map(300), genesis_map(256));
    }

    #[test]
    fn one_to_two_without_load_is_the_genesis_map() {
        let two = plan_tables(&genesis_map(1), 1, 2, &FLAT);
        assert_eq!(two, genesis_map(2));
        assert_eq!(moves(&genesis_map(1), &two).len(), 128);
        // Back to one: exactly shard 1's tables move.
        assert_eq!(plan_tables(&two, 2, 1, &FLAT), genesis_map(1));
    }

    #[test]
    fn resharding_sequence_1_2_4_3_1_moves_minimally_and_balances_counts() {
        let mut map = genesis_map(1);
        let mut from = 1;
        for to in [2u16, 4, 3, 1, 4, 2, 3] {
            let before = map;
            map = check_plan(&before, from, to, &FLAT);
            let c = counts(&map, to);
            let moved = moves(&before, &map).len();
            if to > from {
                // Without load, the new shards get exactly their fair count, and that
                // is all that moves.
                let share = 256 / usize::from(to);
                for n in from..to {
                    assert_eq!(c[usize::from(n)], share, "{from}->{to}: {c:?}");
                }
                assert_eq!(moved, share * usize::from(to - from));
            }
            // Counts stay within a small spread of even.
            let (min, max) = (c.iter().min().unwrap(), c.iter().max().unwrap());
            assert!(max - min <= usize::from(to), "{from}->{to}: {c:?}");
            from = to;
        }
    }

    #[test]
    fn scale_out_moves_the_busiest_tables_and_balances_load() {
        // One hot table per 32, everything on one shard.
        let mut load = [1u64; TABLES];
        for t in (0..TABLES).step_by(32) {
            load[t] = 1_000;
        }
        let two = check_plan(&genesis_map(1), 1, 2, &load);
        let l = loads(&two, 2, &load);
        let total: u128 = l.iter().sum();
        // Shard 1 gets exactly half: 4 hot tables and 124 cold ones fill its share, and
        // nothing else moves.
        assert_eq!(l[1], total / 2, "{l:?}");
        let hot_on_1 = (0..TABLES).step_by(32).filter(|&t| two[t] == 1).count();
        assert_eq!(hot_on_1, 4);
        assert_eq!(moves(&genesis_map(1), &two).len(), 4 + 124);
    }

    #[test]
    fn scale_in_sends_removed_tables_to_the_least_loaded() {
        // Shard 0 busy, shard 1 idle, shard 2 removed.
        let map = genesis_map(3);
        let mut load = [0u64; TABLES];
        for (t, &o) in map.iter().enumerate() {
            load[t] = match o {
                0 => 100,
                1 => 1,
                _ => 10,
            };
        }
        let two = check_plan(&map, 3, 2, &load);
        // Shard 1 (idle) takes shard 2's tables until it is as loaded as shard 0.
        let l = loads(&two, 2, &load);
        assert!(l[1] > 0);
        let to_0 = moves(&map, &two).iter().filter(|m| m.to == 0).count();
        let to_1 = moves(&map, &two).iter().filter(|m| m.to == 1).count();
        assert!(to_1 > to_0, "{to_0} to shard 0, {to_1} to shard 1");
    }

    #[test]
    fn concentrated_load_still_gives_every_new_shard_a_table() {
        let mut load = [0u64; TABLES];
        load[5] = 1_000_000;
        let two = check_plan(&genesis_map(1), 1, 2, &load);
        // The single hot table cannot be split: one cold table makes shard 1 non-empty.
        assert_eq!(moves(&genesis_map(1), &two).len(), 1);
        assert_eq!(two[5], 0);
    }

    #[test]
    fn invalid_input_never_panics() {
        let mut map = genesis_map(4);
        map[0] = 200; // an owner beyond `from`
        let out = plan_tables(&map, 4, 4, &FLAT);
        assert!(out.iter().all(|&o| o < 4));
        assert!(
            plan_tables(&map, 0, 0, &[u64::MAX; TABLES])
                .iter()
                .all(|&o| o == 0)
        );
        let all = plan_tables(&genesis_map(1), 1, 1000, &[u64::MAX; TABLES]);
        assert_eq!(counts(&all, 256), vec![1; 256]);
    }

    #[test]
    fn random_resharding_keeps_the_invariants() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        for _ in 0..300 {
            let mut load = [0u64; TABLES];
            let kind = rng.below(3);
            for l in load.iter_mut() {
                *l = match kind {
                    0 => 0,
                    1 => rng.below(1_000),
                    _ => rng.below(4).pow(8),
                };
            }
            let mut from = 1 + rng.below(16) as u16;
            let mut map = genesis_map(from);
            for _ in 0..5 {
                let to = 1 + rng.below(16) as u16;
                let before = map;
                map = check_plan(&before, from, to, &load);
                if to > from {
                    // Balancing: no new shard ends above its share by more than its
                    // heaviest table, and none moved more than it needed to get there.
                    let total: u128 = load.iter().map(|&l| u128::from(l)).sum();
                    if total > 0 {
                        let share = total / u128::from(to);
                        let l = loads(&map, to, &load);
                        let heaviest = u128::from(*load.iter().max().unwrap());
                        for n in from..to {
                            assert!(l[usize::from(n)] <= share + heaviest, "{l:?}");
                        }
                    }
                }
                from = to;
            }
        }
    }
}
