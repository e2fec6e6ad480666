//! A group member resumes each partition it is assigned exactly at the committed offset, even
//! on a broker that skips the rest of a record batch when asked for an offset inside it.
//!
//! Apache Kafka answers a fetch from offset `c` with the whole batch that contains `c`, and the
//! client drops the records before `c`. tansu 0.6 answers with the *next* batch, so a consumer
//! group that committed an offset in the middle of a producer's batch (we commit per record,
//! so it often does) never sees the rest of that batch after a hand-over: those records are
//! silently skipped (`tests/tansu/fetch_mid_batch.py` shows it with a plain client).
//!
//! The guard notices it and gets the records back, with the same code path on both brokers:
//! when an assignment is made it reads the partitions' committed offsets; if the first record of
//! a partition is past its committed offset, the member seeks back (1, 2, 4, … records before
//! it) until a fetch returns a batch that starts at or before the committed offset, and drops
//! the records before it. On Apache Kafka the first record is the committed one and nothing
//! else happens. A partition whose records before the first one are really gone (retention, a
//! compacted or transactional topic) is taken as it is once the rewind reached offset 0.

use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// A topic partition.
type Partition = (String, i32);

/// What to do with a record fetched for a partition that is resuming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// Process it.
    Take,
    /// Before the committed offset (read again by a rewind): already processed, drop it.
    Drop,
    /// The broker skipped records between the committed offset and this one: drop it and seek
    /// the partition to this offset.
    Rewind(i64),
}

/// Where one partition resumes, and how far back the rewinds went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Start {
    /// The committed offset: the first record to process.
    committed: i64,
    /// The first record fetched, when it was past `committed`: where the broker jumped to.
    landed: Option<i64>,
    /// The offset of the last rewind, if any.
    rewound_to: Option<i64>,
    /// A record before `committed` came: the fetch now runs from before the committed offset.
    reached: bool,
}

impl Start {
    fn new(committed: i64) -> Self {
        Self {
            committed,
            landed: None,
            rewound_to: None,
            reached: false,
        }
    }

    /// The verdict for a record at `offset`, and whether the partition has resumed (no more
    /// checks needed).
    fn check(&mut self, offset: i64) -> (Resumed, bool) {
        if offset < self.committed {
            // A rewind reached a batch that starts at or before the committed offset; the
            // records from the committed offset on follow.
            self.reached = true;
            return (Resumed::Drop, false);
        }
        if self.reached {
            // At the committed offset, or past it after the records before it (a real gap).
            return (Resumed::Take, true);
        }
        let Some(landed) = self.landed else {
            if offset == self.committed {
                return (Resumed::Take, true);
            }
            self.landed = Some(offset);
            return (self.rewind(), false);
        };
        if offset > landed {
            // Fetched with `landed`, before the rewind took effect.
            return (Resumed::Drop, false);
        }
        if offset == landed && self.rewound_to != Some(0) {
            // The rewind did not go back far enough (or these are still the records fetched
            // before it): further back.
            return (self.rewind(), false);
        }
        // The rewinds reached offset 0 and the records in between are gone, or a record between
        // the committed offset and where the broker first landed.
        (Resumed::Take, true)
    }

    fn rewind(&mut self) -> Resumed {
        let back = match self.rewound_to {
            None => 1,
            Some(at) => (self.committed - at).saturating_mul(2),
        };
        let to = (self.committed - back).max(0);
        self.rewound_to = Some(to);
        Resumed::Rewind(to)
    }
}

/// The committed offsets of a group member's partitions, checked against the first records it
/// fetches. Shared by the consumer's rebalance callbacks and its loop. See the module docs.
#[derive(Debug, Default)]
pub struct ResumeGuard {
    starts: Mutex<HashMap<Partition, Start>>,
}

impl ResumeGuard {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Partition, Start>> {
        self.starts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Call from the assignment callback: reads the committed offsets of the assigned
    /// partitions (one request to the group coordinator). A partition without a committed
    /// offset, or whose offsets cannot be read, is not checked.
    pub fn assigned<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        assignment: &TopicPartitionList,
    ) {
        let committed =
            match consumer.committed_offsets(assignment.clone(), Duration::from_secs(10)) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e,
                    "cannot read committed offsets: the partitions' first records are not checked");
                    return;
                }
            };
        self.record(
            committed
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                    _ => None,
                }),
        );
    }

    /// Records where partitions resume (replacing what an earlier assignment left).
    pub fn record(&self, starts: impl IntoIterator<Item = (Partition, i64)>) {
        let mut s = self.lock();
        for (partition, committed) in starts {
            s.insert(partition, Start::new(committed));
        }
    }

    /// Call from the revocation callback: the partitions are no longer checked.
    pub fn revoked(&self, partitions: &TopicPartitionList) {
        let mut s = self.lock();
        for e in partitions.elements() {
            s.remove(&(e.topic().to_owned(), e.partition()));
        }
    }

    /// What to do with a fetched record (see [`Resumed`]).
    pub fn check(&self, topic: &str, partition: i32, offset: i64) -> Resumed {
        let mut s = self.lock();
        let key = (topic.to_owned(), partition);
        let Some(start) = s.get_mut(&key) else {
            return Resumed::Take;
        };
        let (verdict, resumed) = start.check(offset);
        if resumed {
            s.remove(&key);
        }
        if let Resumed::Rewind(to) = verdict {
            tracing::info!(topic, partition, offset, rewind_to = to,
                "partition resumed past its committed offset (the broker skipped part of a batch): rewinding");
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(committed: i64) -> ResumeGuard {
        let g = ResumeGuard::default();
        g.record([(("t".to_owned(), 0), committed)]);
        g
    }

    #[test]
    fn a_partition_that_resumes_at_its_committed_offset_is_taken_as_is() {
        let g = guard(10);
        assert_eq!(g.check("t", 0, 10), Resumed::Take);
        assert_eq!(g.check("t", 0, 11), Resumed::Take);
        assert_eq!(
            g.check("t", 1, 3),
            Resumed::Take,
            "partitions not recorded pass"
        );
    }

    #[test]
    fn skipped_records_are_fetched_again_by_rewinding_further_each_time() {
        // Committed 10 inside a batch 6..=13: the broker answers with the batch at 14.
        let g = guard(10);
        assert_eq!(g.check("t", 0, 14), Resumed::Rewind(9));
        // The rest of that fetch, taken before the seek took effect, is dropped.
        assert_eq!(g.check("t", 0, 15), Resumed::Drop);
        // From 9 it still answers with 14 (no batch starts in 9..=10).
        assert_eq!(g.check("t", 0, 14), Resumed::Rewind(8));
        assert_eq!(g.check("t", 0, 14), Resumed::Rewind(6));
        // From 6 the batch 6..=13 comes: 6..=9 were processed before, 10 on are taken.
        for o in 6..10 {
            assert_eq!(g.check("t", 0, o), Resumed::Drop);
        }
        for o in 10..16 {
            assert_eq!(g.check("t", 0, o), Resumed::Take);
        }
    }

    #[test]
    fn records_really_gone_are_accepted_once_the_rewind_reached_the_start() {
        // Retention removed everything before 50; the committed offset was 3.
        let g = guard(3);
        assert_eq!(g.check("t", 0, 50), Resumed::Rewind(2));
        assert_eq!(g.check("t", 0, 50), Resumed::Rewind(1));
        assert_eq!(g.check("t", 0, 50), Resumed::Rewind(0));
        assert_eq!(g.check("t", 0, 50), Resumed::Take);
        assert_eq!(g.check("t", 0, 51), Resumed::Take);
    }

    #[test]
    fn a_gap_right_after_the_committed_offset_is_taken_once_earlier_records_came() {
        // The committed offset is a transaction marker: 9 comes back, then 12.
        let g = guard(10);
        assert_eq!(g.check("t", 0, 12), Resumed::Rewind(9));
        assert_eq!(g.check("t", 0, 9), Resumed::Drop);
        assert_eq!(g.check("t", 0, 12), Resumed::Take);
        assert_eq!(g.check("t", 0, 13), Resumed::Take);
    }
}
