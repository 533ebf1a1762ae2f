//! The resharding pause: how long shards go without finalizing while the shard count
//! changes. A watcher polls one node of every slot and records each finalized height
//! it sees first; the gaps between those sightings, before the change and while it
//! settles, are the figures.

use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A finalized height first seen at `at`, and the node's epoch then.
#[derive(Clone, Copy, Debug)]
pub struct Sighting {
    pub at: Instant,
    pub height: u64,
    pub epoch: u64,
}

/// `--reshard FROM:TO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub from: u16,
    pub to: u16,
}

impl std::str::FromStr for Change {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("--reshard takes FROM:TO shard counts, like 2:3 (got {s:?})");
        let (from, to) = s.split_once(':').ok_or_else(bad)?;
        let from: u16 = from.trim().parse().map_err(|_| bad())?;
        let to: u16 = to.trim().parse().map_err(|_| bad())?;
        if from == 0 || to == 0 || from == to {
            return Err(format!(
                "--reshard {s}: both counts must be at least 1 and differ"
            ));
        }
        Ok(Self { from, to })
    }
}

/// Sightings per slot, filled by one polling thread per slot until `stop`.
pub struct Watch {
    pub slots: Vec<Arc<Mutex<Vec<Sighting>>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Watch {
    pub fn start(
        nodes: &[SocketAddr],
        poll: Duration,
        status: fn(SocketAddr) -> Option<Value>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut slots = Vec::new();
        let mut threads = Vec::new();
        for node in nodes.iter().copied() {
            let seen: Arc<Mutex<Vec<Sighting>>> = Arc::default();
            let (seen_t, stop_t) = (seen.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut last = None;
                while !stop_t.load(Ordering::Relaxed) {
                    if let Some(s) = status(node) {
                        let height = s["finalized_height"].as_u64().unwrap_or(0);
                        let epoch = s["epoch"].as_u64().unwrap_or(0);
                        if last != Some(height) {
                            last = Some(height);
                            let at = Instant::now();
                            seen_t
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(Sighting { at, height, epoch });
                        }
                    }
                    std::thread::sleep(poll);
                }
            }));
            slots.push(seen);
        }
        Self {
            slots,
            threads,
            stop,
        }
    }

    pub fn sightings(&self, slot: usize) -> Vec<Sighting> {
        self.slots
            .get(slot)
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The longest interval between consecutive sightings inside `[from, to]`, counting
/// from `from` and up to `to` as well, so a shard that stops finalizing shows its silence.
pub fn longest_gap(seen: &[Sighting], from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = vec![from];
    times.extend(
        seen.iter()
            .map(|s| s.at)
            .filter(|at| *at > from && *at < to),
    );
    times.push(to);
    times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

/// Mean interval between finalized blocks inside `[from, to]` (heights, not sightings:
/// a poll that sees two new blocks counts both).
pub fn mean_interval(seen: &[Sighting], from: Instant, to: Instant) -> Option<Duration> {
    let inside: Vec<&Sighting> = seen.iter().filter(|s| s.at >= from && s.at <= to).collect();
    let (first, last) = (inside.first()?, inside.last()?);
    let blocks = last.height.checked_sub(first.height).filter(|b| *b > 0)?;
    Some(last.at.duration_since(first.at) / u32::try_from(blocks).ok()?)
}

/// The finalization gaps around one epoch switch of a shard: from the block before the
/// epoch-end block to the epoch-end block (`ending`), and from the epoch-end block to the
/// first block of the new epoch (`starting`). The switch's pause is the longer of the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchGap {
    pub ending: Duration,
    pub starting: Duration,
}

impl SwitchGap {
    pub fn pause(&self) -> Duration {
        self.ending.max(self.starting)
    }
}

/// The epoch switches a slot went through inside `[from, to]` (a sighting whose epoch is
/// above the previous one's is the epoch-end block: executing it enters the next epoch),
/// and the longest gap between sightings that touch no switch.
pub fn switch_gaps(seen: &[Sighting], from: Instant, to: Instant) -> (Vec<SwitchGap>, Duration) {
    let inside: Vec<&Sighting> = seen.iter().filter(|s| s.at >= from && s.at <= to).collect();
    let mut switches = Vec::new();
    // Intervals (by their first sighting's index) that belong to a switch.
    let mut taken = std::collections::HashSet::new();
    for i in 1..inside.len().saturating_sub(1) {
        if inside[i].epoch > inside[i - 1].epoch {
            switches.push(SwitchGap {
                ending: inside[i].at.duration_since(inside[i - 1].at),
                starting: inside[i + 1].at.duration_since(inside[i].at),
            });
            taken.insert(i - 1);
            taken.insert(i);
        }
    }
    let ordinary = inside
        .windows(2)
        .enumerate()
        .filter(|(i, _)| !taken.contains(i))
        .map(|(_, w)| w[1].at.duration_since(w[0].at))
        .max()
        .unwrap_or_default();
    (switches, ordinary)
}

/// The first sighting in epoch `epoch` or later.
pub fn entered(seen: &[Sighting], epoch: u64) -> Option<Instant> {
    seen.iter().find(|s| s.epoch >= epoch).map(|s| s.at)
}

/// True once the slot has finalized `blocks` blocks in epoch `epoch` or later.
pub fn settled(seen: &[Sighting], epoch: u64, blocks: u64) -> bool {
    let mut inside = seen.iter().filter(|s| s.epoch >= epoch);
    match inside.next() {
        // The first sighting in the epoch may be the epoch-end block that led into it.
        Some(first) => inside.any(|s| s.height >= first.height + blocks),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64, height: u64) -> Sighting {
        in_epoch(base, ms, height, 0)
    }

    fn in_epoch(base: Instant, ms: u64, height: u64, epoch: u64) -> Sighting {
        Sighting {
            at: base + Duration::from_millis(ms),
            height,
            epoch,
        }
    }

    #[test]
    fn switch_gaps_split_the_epoch_end() {
        let base = Instant::now();
        let ms = Duration::from_millis;
        let seen = [
            in_epoch(base, 0, 1, 0),
            in_epoch(base, 500, 2, 0),
            // Block 3 ends epoch 0: seen with the node in epoch 1.
            in_epoch(base, 1_200, 3, 1),
            in_epoch(base, 4_200, 4, 1),
            in_epoch(base, 4_800, 5, 1),
            in_epoch(base, 5_000, 6, 2),
        ];
        let (switches, ordinary) = switch_gaps(&seen, base, base + ms(10_000));
        // The last switch has no block after it yet: not counted.
        assert_eq!(
            switches,
            vec![SwitchGap {
                ending: ms(700),
                starting: ms(3_000)
            }]
        );
        assert_eq!(switches[0].pause(), ms(3_000));
        assert_eq!(ordinary, ms(600));
    }

    #[test]
    fn gaps_count_the_window_edges() {
        let base = Instant::now();
        let seen = [at(base, 100, 1), at(base, 300, 2), at(base, 1_300, 3)];
        let end = base + Duration::from_millis(1_500);
        assert_eq!(longest_gap(&seen, base, end), Duration::from_millis(1_000));
        // A shard silent for the whole window: the window.
        assert_eq!(longest_gap(&[], base, end), Duration::from_millis(1_500));
        assert_eq!(
            mean_interval(&seen, base, end),
            Some(Duration::from_millis(600))
        );
        assert_eq!(mean_interval(&seen[..1], base, end), None);
    }

    #[test]
    fn change_is_validated() {
        assert_eq!("2:3".parse::<Change>(), Ok(Change { from: 2, to: 3 }));
        assert!("3".parse::<Change>().unwrap_err().contains("FROM:TO"));
        assert!("2:2".parse::<Change>().unwrap_err().contains("differ"));
        assert!("0:2".parse::<Change>().is_err());
    }
}
