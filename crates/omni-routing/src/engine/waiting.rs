//! Waiting conversations split by what it takes to serve them, so that an agent who frees
//! capacity finds the best conversation they can take however long the backlog ahead of it.
//!
//! Whether an agent can take a waiting conversation depends on the conversation only through
//! its [`WaitClass`] (queue, channel kind, proficiency relaxed by overflow, skills a rule added)
//! and its decline list. So each class keeps its own ordered set: a drain asks once per class
//! whether the agent qualifies, and then takes that class's first conversation the agent has
//! not declined. A backlog nobody can take (a channel kind whose places are full, a skill no
//! one has) costs one check per class, not one per conversation, and never hides eligible work
//! behind it (a fixed scan window did: see the engine's design note).

use omni_core::{ChannelKind, ConversationId};
use std::collections::BTreeSet;

use super::{QueueIdx, SkillIdx};

/// A waiting conversation's place: its wait key (`arrival − priority × aging`), then its id.
pub(super) type WaitKey = (i64, ConversationId);

/// Everything about a waiting conversation an agent's eligibility depends on, apart from the
/// agents who declined it. Conversations of one class are interchangeable to a drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WaitClass {
    pub(super) queue: QueueIdx,
    pub(super) kind: ChannelKind,
    /// Proficiency levels waived by overflow (0: none, and only the queue's agents qualify).
    pub(super) relax: u8,
    /// Skills a rule added, as numbers sorted by skill.
    pub(super) extra: Vec<(SkillIdx, u8)>,
}

/// A class as borrowed from its conversation, to find its set without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ClassRef<'a> {
    pub(super) queue: QueueIdx,
    pub(super) kind: ChannelKind,
    pub(super) relax: u8,
    pub(super) extra: &'a [(SkillIdx, u8)],
}

impl WaitClass {
    fn is(&self, c: ClassRef<'_>) -> bool {
        self.queue == c.queue
            && self.kind == c.kind
            && self.relax == c.relax
            && self.extra == c.extra
    }

    /// The class as the borrowed form the eligibility check takes.
    pub(super) fn as_ref(&self) -> ClassRef<'_> {
        ClassRef {
            queue: self.queue,
            kind: self.kind,
            relax: self.relax,
            extra: &self.extra,
        }
    }
}

/// Waiting conversations by class, each class ordered by wait key. Classes are few (channel
/// kinds × rule skill sets × overflow levels) and kept once seen, so the hot path neither
/// allocates nor searches far.
#[derive(Debug, Clone, Default)]
pub(super) struct Waiting {
    classes: Vec<(WaitClass, BTreeSet<WaitKey>)>,
    len: usize,
}

impl Waiting {
    pub(super) fn insert(&mut self, class: ClassRef<'_>, key: WaitKey) {
        let set = match self.classes.iter().position(|(c, _)| c.is(class)) {
            Some(i) => &mut self.classes[i].1,
            None => {
                let owned = WaitClass {
                    queue: class.queue,
                    kind: class.kind,
                    relax: class.relax,
                    extra: class.extra.to_vec(),
                };
                self.classes.push((owned, BTreeSet::new()));
                let last = self.classes.len() - 1;
                &mut self.classes[last].1
            }
        };
        if set.insert(key) {
            self.len += 1;
        }
    }

    pub(super) fn remove(&mut self, class: ClassRef<'_>, key: &WaitKey) {
        if let Some((_, set)) = self.classes.iter_mut().find(|(c, _)| c.is(class)) {
            if set.remove(key) {
                self.len -= 1;
            }
        }
    }

    pub(super) fn contains(&self, class: ClassRef<'_>, key: &WaitKey) -> bool {
        self.classes
            .iter()
            .any(|(c, set)| c.is(class) && set.contains(key))
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Each class with its conversations in wait-key order (classes in the order first seen).
    pub(super) fn classes(&self) -> impl Iterator<Item = (&WaitClass, &BTreeSet<WaitKey>)> {
        self.classes.iter().map(|(c, s)| (c, s))
    }

    /// How many conversations wait ahead of `key`: asked for every arrival (its wait
    /// estimate), so it must not cost a walk of the backlog (see [`count_before_in`]).
    pub(super) fn count_before(&self, key: &WaitKey) -> usize {
        self.classes
            .iter()
            .map(|(_, s)| count_before_in(s, key))
            .sum()
    }

    /// Every waiting conversation, in wait-key order.
    pub(super) fn in_order(&self) -> Vec<WaitKey> {
        let mut all: Vec<WaitKey> = self
            .classes
            .iter()
            .flat_map(|(_, s)| s.iter().copied())
            .collect();
        all.sort_unstable();
        all
    }
}

/// How many keys of `set` are below `key`, walking out from `key` on both sides at once and
/// stopping at the shorter side: O(min(before, after)) steps. An ordinary arrival lands behind
/// everyone and a priority one near the front, so either costs a few steps however long the
/// backlog; counting one side only made every arrival O(backlog), which under a growing
/// backlog slowed the router exactly when it had to catch up.
fn count_before_in(set: &BTreeSet<WaitKey>, key: &WaitKey) -> usize {
    let mut before = set.range(..*key).rev();
    let mut after = set.range(*key..);
    let mut both = 0;
    loop {
        match (before.next(), after.next()) {
            (None, _) => return both,
            (Some(_), None) => return set.len() - both,
            (Some(_), Some(_)) => both += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(at: i64, n: u128) -> WaitKey {
        let id = format!("00000000-0000-0000-0000-{n:012x}");
        (at, id.parse().expect("a uuid"))
    }

    proptest! {
        #[test]
        fn counting_from_both_sides_agrees_with_counting_one(
            keys in proptest::collection::btree_set((-50i64..50, 0u128..4), 0..60),
            probe in (-60i64..60, 0u128..5),
        ) {
            let set: BTreeSet<WaitKey> = keys.iter().map(|&(a, n)| key(a, n)).collect();
            let probe = key(probe.0, probe.1);
            prop_assert_eq!(count_before_in(&set, &probe), set.range(..probe).count());
        }
    }

    #[test]
    fn the_ends_and_the_middle_of_a_long_backlog_are_counted_exactly() {
        let set: BTreeSet<WaitKey> = (0..100_000).map(|i| key(i, 0)).collect();
        assert_eq!(count_before_in(&set, &key(100_000, 0)), 100_000);
        assert_eq!(count_before_in(&set, &key(-1, 0)), 0);
        assert_eq!(count_before_in(&set, &key(99_990, 1)), 99_991);
    }
}
