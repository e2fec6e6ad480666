//! A fast hasher for the conversation map, which every input looks up several times.
//!
//! Conversation ids are UUIDs, derived by SHA-1 from tenant, channel and contact (or random),
//! so their bits are already well mixed: they need no cryptographic hash. Each 64-bit word is
//! folded into the state by a 128-bit multiply with a per-engine random seed (the construction
//! of `foldhash` and `ahash`'s fallback), so nobody can choose ids that collide without
//! knowing the seed. Hash order never shows in outputs (see the engine's design note), so the
//! random seed costs no determinism.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// Builds [`IdHasher`]s with one random seed per map.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdHashBuilder {
    seed: u64,
}

impl Default for IdHashBuilder {
    fn default() -> Self {
        // The standard library's per-process random keys, as one number.
        let seed = RandomState::new().hash_one(0x5eed_u64) | 1;
        IdHashBuilder { seed }
    }
}

impl BuildHasher for IdHashBuilder {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            state: self.seed,
            seed: self.seed,
        }
    }
}

/// Folds each word written into its state with a seeded 128-bit multiply.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdHasher {
    state: u64,
    seed: u64,
}

impl IdHasher {
    fn mix(&mut self, word: u64) {
        let product = u128::from(self.state ^ word) * u128::from(self.seed ^ 0x9E37_79B9_7F4A_7C15);
        self.state = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omni_core::{ChannelKind, ChannelRef, ConversationId, TenantId};
    use std::collections::HashSet;

    #[test]
    fn conversation_ids_spread_over_buckets() {
        let tenant = TenantId::new("t").unwrap_or_else(|_| unreachable!());
        let channel = ChannelRef::new(ChannelKind::Livechat, "web");
        let build = IdHashBuilder::default();
        let buckets: HashSet<u64> = (0..4096)
            .map(|n| {
                let id = ConversationId::derive(&tenant, &channel, &format!("c{n}"), None);
                build.hash_one(id) & 4095
            })
            .collect();
        // A uniform hash fills about 63% of 4096 buckets with 4096 keys.
        assert!(buckets.len() > 2400, "{} buckets used", buckets.len());
    }
}
