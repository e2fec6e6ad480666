//! A bounded cache of event ids published within a time window, so a provider's retry (or a
//! client's double post) is answered without publishing again. Bounded in memory by
//! `capacity`; past the window or capacity a repeat is published again with the same
//! deterministic id, which consumers drop by id.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shards keep lock contention low when many requests check the cache at once.
const SHARDS: usize = 16;

/// The dedupe cache. Time is passed in (`now`), so tests control it.
pub struct DedupeCache {
    window: Duration,
    per_shard: usize,
    shards: Vec<Mutex<Shard>>,
}

/// Event ids are UUIDs (v5: a SHA-1 digest; v7: random low bits), already uniformly
/// distributed, so folding them is as good a hash as SipHash and several times cheaper. The
/// cache is never keyed by attacker-chosen raw values: ids are digests of them.
#[derive(Default)]
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64).rotate_left(32);
    }
}

#[derive(Default)]
struct Shard {
    seen: HashMap<u128, Instant, BuildHasherDefault<FoldHasher>>,
    order: VecDeque<(u128, Instant)>,
}

impl DedupeCache {
    /// A cache remembering ids for `window`, holding at most about `capacity` ids.
    pub fn new(window: Duration, capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        Self {
            window,
            per_shard,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    fn shard(&self, id: u128) -> &Mutex<Shard> {
        // UUIDv5/v7 low bits are well mixed; fold in the high half for v7's timestamp prefix.
        let h = (id as u64) ^ ((id >> 64) as u64);
        &self.shards[(h % SHARDS as u64) as usize]
    }

    /// True when `id` was recorded within the window before `now`.
    pub fn contains(&self, id: u128, now: Instant) -> bool {
        let shard = self.shard(id).lock().unwrap_or_else(|p| p.into_inner());
        shard
            .seen
            .get(&id)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.window)
    }

    /// Records `id` as published at `now`, evicting expired ids and the oldest beyond capacity.
    pub fn insert(&self, id: u128, now: Instant) {
        let mut shard = self.shard(id).lock().unwrap_or_else(|p| p.into_inner());
        let Shard { seen, order } = &mut *shard;
        while let Some(&(old, at)) = order.front() {
            let expired = now.saturating_duration_since(at) >= self.window;
            if !expired && order.len() < self.per_shard {
                break;
            }
            order.pop_front();
            // Only forget the id if this queue entry is its latest insertion.
            if seen.get(&old) == Some(&at) {
                seen.remove(&old);
            }
        }
        seen.insert(id, now);
        order.push_back((id, now));
    }

    /// Ids currently held (for tests and a gauge).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).seen.len())
            .sum()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_within_window_is_seen_and_forgotten_after() {
        let cache = DedupeCache::new(Duration::from_secs(60), 1000);
        let t0 = Instant::now();
        assert!(!cache.contains(7, t0));
        cache.insert(7, t0);
        assert!(cache.contains(7, t0 + Duration::from_secs(59)));
        assert!(!cache.contains(7, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn capacity_bounds_memory() {
        let cache = DedupeCache::new(Duration::from_secs(3600), 160);
        let t0 = Instant::now();
        for id in 0..10_000u128 {
            cache.insert(id * 0x1_0000_0001, t0);
        }
        assert!(cache.len() <= 160, "held {}", cache.len());
        // The newest ids are the ones kept.
        assert!(cache.contains(9_999 * 0x1_0000_0001, t0));
    }

    #[test]
    fn expired_entries_are_evicted_on_insert() {
        let cache = DedupeCache::new(Duration::from_secs(1), 1000);
        let t0 = Instant::now();
        for id in 0..100u128 {
            cache.insert(id << 3, t0);
        }
        let later = t0 + Duration::from_secs(5);
        for id in 0..16u128 {
            cache.insert((1000 + id) << 3, later);
        }
        assert!(cache.len() <= 16 + 16, "held {}", cache.len());
    }

    #[test]
    fn reinserting_refreshes_the_window() {
        let cache = DedupeCache::new(Duration::from_secs(10), 1000);
        let t0 = Instant::now();
        cache.insert(1, t0);
        cache.insert(1, t0 + Duration::from_secs(8));
        cache.insert(2, t0 + Duration::from_secs(12)); // evicts the first (expired) entry of 1
        assert!(cache.contains(1, t0 + Duration::from_secs(15)));
    }
}
