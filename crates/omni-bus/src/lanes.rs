//! Bookkeeping for concurrent consumption, kept pure so it can be tested without a broker.
//!
//! Records that share an ordering key (a conversation) run one after another in arrival
//! order; records with different keys run side by side. A partition's offset may be committed
//! only up to its oldest unfinished record, so a crash replays whatever was not finished and
//! never skips a record that was still in flight.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::consumer::Record;

/// A topic partition.
type Partition = (String, i32);

/// Which records may run now and which offsets may be committed.
#[derive(Default)]
pub(crate) struct Lanes {
    /// Keys with a running record, and the records queued behind it.
    busy: HashMap<u64, VecDeque<Record>>,
    /// Unfinished offsets per partition (running or queued).
    unfinished: HashMap<Partition, BTreeSet<i64>>,
    /// The highest offset seen per partition.
    highest: HashMap<Partition, i64>,
    /// The offset last committed (next to read) per partition.
    committed: HashMap<Partition, i64>,
    /// Records held (running or queued).
    held: usize,
}

impl Lanes {
    /// Takes a record in. Returns it back if it may start now (no record with its key is
    /// running), or keeps it queued behind the running one.
    pub(crate) fn admit(&mut self, key: u64, record: Record) -> Option<Record> {
        let partition = (record.topic.clone(), record.partition);
        self.unfinished
            .entry(partition.clone())
            .or_default()
            .insert(record.offset);
        let highest = self.highest.entry(partition).or_insert(record.offset);
        *highest = (*highest).max(record.offset);
        self.held += 1;
        match self.busy.get_mut(&key) {
            Some(queue) => {
                queue.push_back(record);
                None
            }
            None => {
                self.busy.insert(key, VecDeque::new());
                Some(record)
            }
        }
    }

    /// Marks a running record finished. Returns the next record of the same key to start, if
    /// any, and the offset to commit for its partition if the committable position advanced.
    pub(crate) fn finish(
        &mut self,
        key: u64,
        record: &Record,
    ) -> (Option<Record>, Option<(String, i32, i64)>) {
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
        let partition = (record.topic.clone(), record.partition);
        let unfinished = self.unfinished.entry(partition.clone()).or_default();
        unfinished.remove(&record.offset);
        let position = match unfinished.first() {
            Some(oldest) => *oldest,
            None => {
                self.highest
                    .get(&partition)
                    .copied()
                    .unwrap_or(record.offset)
                    + 1
            }
        };
        let committed = self.committed.entry(partition.clone()).or_insert(i64::MIN);
        let commit = (position > *committed).then(|| {
            *committed = position;
            (partition.0, partition.1, position)
        });
        (next, commit)
    }

    /// Records held, running or queued (bounds memory and concurrency).
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Every partition's committable position, for the final commit on shutdown.
    pub(crate) fn positions(&self) -> Vec<(String, i32, i64)> {
        self.highest
            .iter()
            .map(|((topic, partition), highest)| {
                let position = self
                    .unfinished
                    .get(&(topic.clone(), *partition))
                    .and_then(|u| u.first().copied())
                    .unwrap_or(highest + 1);
                (topic.clone(), *partition, position)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64) -> Record {
        Record {
            topic: "t".into(),
            partition,
            offset,
            key: None,
            payload: None,
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
        assert_eq!(next.map(|r| r.offset), Some(11));
        let (next, _) = lanes.finish(1, &record(0, 11));
        assert_eq!(next.map(|r| r.offset), Some(12));
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
        assert_eq!(lanes.finish(1, &record(0, 1)).1, Some(("t".into(), 0, 0)));
        assert_eq!(lanes.finish(2, &record(0, 2)).1, None);
        assert_eq!(lanes.positions(), vec![("t".into(), 0, 0)]);
        // 0 finishes: everything up to 2 is done, commit 3 (the next offset to read).
        assert_eq!(lanes.finish(0, &record(0, 0)).1, Some(("t".into(), 0, 3)));
        assert_eq!(lanes.positions(), vec![("t".into(), 0, 3)]);
    }

    #[test]
    fn partitions_are_committed_independently() {
        let mut lanes = Lanes::default();
        assert!(lanes.admit(1, record(0, 5)).is_some());
        assert!(lanes.admit(2, record(1, 7)).is_some());
        assert_eq!(lanes.finish(2, &record(1, 7)).1, Some(("t".into(), 1, 8)));
        let mut positions = lanes.positions();
        positions.sort();
        assert_eq!(positions, vec![("t".into(), 0, 5), ("t".into(), 1, 8)]);
    }
}
