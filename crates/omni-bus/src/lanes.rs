//! Bookkeeping for concurrent consumption, kept pure so it can be tested without a broker.
//!
//! Records that share an ordering key (a conversation) run one after another in arrival
//! order; records with different keys run side by side. A partition's offset may be committed
//! only up to its oldest unfinished record, so a crash replays whatever was not finished and
//! never skips a record that was still in flight.
//!
//! Offsets are tracked per *assignment* (partition and the generation it was assigned under,
//! see [`crate::gate`]): a partition revoked and given back to this member is read again from
//! its committed offset, so the same offset can be held twice, once from each assignment. The
//! old copy finishing must not mark the new one done, and a position computed from the old
//! assignment must not be committed under the new one.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::consumer::Record;

/// A partition under one assignment: topic, partition, generation.
type Assignment = (String, i32, u64);

/// A record and the generation of the assignment it was fetched under.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub(crate) record: Record,
    pub(crate) generation: u64,
}

impl Fetched {
    fn assignment(&self) -> Assignment {
        (
            self.record.topic.clone(),
            self.record.partition,
            self.generation,
        )
    }
}

/// An offset that may be committed, if the partition is still held under `generation`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) generation: u64,
    pub(crate) offset: i64,
}

/// Which records may run now and which offsets may be committed.
#[derive(Default)]
pub(crate) struct Lanes {
    /// Keys with a running record, and the records queued behind it.
    busy: HashMap<u64, VecDeque<Fetched>>,
    /// Unfinished offsets per assignment (running or queued).
    unfinished: HashMap<Assignment, BTreeSet<i64>>,
    /// The highest offset seen per assignment.
    highest: HashMap<Assignment, i64>,
    /// The offset last committed (next to read) per assignment.
    committed: HashMap<Assignment, i64>,
    /// Records held (running or queued).
    held: usize,
}

impl Lanes {
    /// Takes a record in. Returns it back if it may start now (no record with its key is
    /// running), or keeps it queued behind the running one.
    pub(crate) fn admit(&mut self, key: u64, fetched: Fetched) -> Option<Fetched> {
        let assignment = fetched.assignment();
        let offset = fetched.record.offset;
        self.unfinished
            .entry(assignment.clone())
            .or_default()
            .insert(offset);
        let highest = self.highest.entry(assignment).or_insert(offset);
        *highest = (*highest).max(offset);
        self.held += 1;
        match self.busy.get_mut(&key) {
            Some(queue) => {
                queue.push_back(fetched);
                None
            }
            None => {
                self.busy.insert(key, VecDeque::new());
                Some(fetched)
            }
        }
    }

    /// Marks a running record finished. Returns the next record of the same key to start, if
    /// any, and the position to commit for its assignment if the committable position advanced.
    pub(crate) fn finish(
        &mut self,
        key: u64,
        fetched: &Fetched,
    ) -> (Option<Fetched>, Option<Position>) {
        self.held = self.held.saturating_sub(1);
        let next = match self.busy.get_mut(&key) {
            Some(queue) => {
                let next = queue.pop_front();
                if next.is_none() {
                    self.busy.remove(&key);
                }
                next
            }
            None => None,
        };
        let assignment = fetched.assignment();
        let unfinished = self.unfinished.entry(assignment.clone()).or_default();
        unfinished.remove(&fetched.record.offset);
        let offset = match unfinished.first() {
            Some(oldest) => *oldest,
            None => {
                self.highest
                    .get(&assignment)
                    .copied()
                    .unwrap_or(fetched.record.offset)
                    + 1
            }
        };
        let committed = self.committed.entry(assignment.clone()).or_insert(i64::MIN);
        let commit = (offset > *committed).then(|| {
            *committed = offset;
            let (topic, partition, generation) = assignment;
            Position {
                topic,
                partition,
                generation,
                offset,
            }
        });
        (next, commit)
    }

    /// Records held, running or queued (bounds memory and concurrency).
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Every assignment's committable position, for the final commit on shutdown.
    pub(crate) fn positions(&self) -> Vec<Position> {
        self.highest
            .iter()
            .map(|(assignment, highest)| {
                let offset = self
                    .unfinished
                    .get(assignment)
                    .and_then(|u| u.first().copied())
                    .unwrap_or(highest + 1);
                let (topic, partition, generation) = assignment.clone();
                Position {
                    topic,
                    partition,
                    generation,
                    offset,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64) -> Fetched {
        fetched(partition, offset, 1)
    }

    fn fetched(partition: i32, offset: i64, generation: u64) -> Fetched {
        Fetched {
            record: Record {
                topic: "t".into(),
                partition,
                offset,
                key: None,
                payload: None,
                headers: Vec::new(),
            },
            generation,
        }
    }

    fn at(partition: i32, offset: i64) -> Option<Position> {
        Some(position(partition, 1, offset))
    }

    fn position(partition: i32, generation: u64, offset: i64) -> Position {
        Position {
            topic: "t".into(),
            partition,
            generation,
            offset,
        }
    }

    #[test]
    fn same_key_waits_for_the_running_record_and_runs_in_arrival_order() {
        let mut lanes = Lanes::default();
        assert!(lanes.admit(1, record(0, 10)).is_some());
        assert!(lanes.admit(1, record(0, 11)).is_none());
        assert!(lanes.admit(1, record(0, 12)).is_none());
        assert!(
            lanes.admit(2, record(0, 13)).is_some(),
            "other keys run at once"
        );
        assert_eq!(lanes.held(), 4);
        let (next, _) = lanes.finish(1, &record(0, 10));
        assert_eq!(next.map(|r| r.record.offset), Some(11));
        let (next, _) = lanes.finish(1, &record(0, 11));
        assert_eq!(next.map(|r| r.record.offset), Some(12));
        let (next, _) = lanes.finish(1, &record(0, 12));
        assert!(next.is_none());
        assert_eq!(lanes.held(), 1);
    }

    #[test]
    fn commit_never_passes_an_unfinished_record() {
        let mut lanes = Lanes::default();
        for offset in 0..3 {
            assert!(lanes.admit(offset as u64, record(0, offset)).is_some());
        }
        // 1 and 2 finish first: nothing may be committed past 0, which is still running.
        assert_eq!(lanes.finish(1, &record(0, 1)).1, at(0, 0));
        assert_eq!(lanes.finish(2, &record(0, 2)).1, None);
        assert_eq!(lanes.positions(), vec![position(0, 1, 0)]);
        // 0 finishes: everything up to 2 is done, commit 3 (the next offset to read).
        assert_eq!(lanes.finish(0, &record(0, 0)).1, at(0, 3));
        assert_eq!(lanes.positions(), vec![position(0, 1, 3)]);
    }

    #[test]
    fn partitions_are_committed_independently() {
        let mut lanes = Lanes::default();
        assert!(lanes.admit(1, record(0, 5)).is_some());
        assert!(lanes.admit(2, record(1, 7)).is_some());
        assert_eq!(lanes.finish(2, &record(1, 7)).1, at(1, 8));
        let mut positions = lanes.positions();
        positions.sort();
        assert_eq!(positions, vec![position(0, 1, 5), position(1, 1, 8)]);
    }

    #[test]
    fn a_copy_from_an_earlier_assignment_never_finishes_the_redelivered_one() {
        let mut lanes = Lanes::default();
        // Offset 4 runs under generation 1; the partition is revoked and given back
        // (generation 2) and 4 is delivered again, queued behind the old copy (same key).
        assert!(lanes.admit(9, fetched(0, 4, 1)).is_some());
        assert!(lanes.admit(9, fetched(0, 4, 2)).is_none());
        assert!(lanes.admit(8, fetched(0, 5, 2)).is_some());
        // The old copy finishes: its position belongs to generation 1 only.
        let (next, commit) = lanes.finish(9, &fetched(0, 4, 1));
        assert_eq!(commit, Some(position(0, 1, 5)));
        let next = next.expect("the redelivered copy starts next");
        assert_eq!((next.record.offset, next.generation), (4, 2));
        // 5 finishes under generation 2 while 4 (generation 2) still runs: nothing passes 4.
        assert_eq!(
            lanes.finish(8, &fetched(0, 5, 2)).1,
            Some(position(0, 2, 4))
        );
        assert_eq!(lanes.finish(9, &next).1, Some(position(0, 2, 6)));
    }
}
