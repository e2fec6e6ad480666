//! What the consumer group tells the loop. Callbacks run inside `recv`, on the loop's own task,
//! so a revocation is recorded before the loop looks at another record.

use super::*;

/// What rebalances told the loop: the partitions assigned now, and those revoked since the
/// loop last looked. Written by the consumer context (on the loop's own thread, inside
/// `recv`), read by the loop between batches.
#[derive(Default)]
pub(super) struct Assignment {
    pub(super) assigned: BTreeSet<i32>,
    pub(super) revoked: Vec<i32>,
}

/// The consumer context: metrics; rebalances recorded for the loop; on revocation, a
/// synchronous commit of what was applied, so the next owner starts right after it.
pub(super) struct RouterContext {
    pub(super) metrics: MetricsContext,
    pub(super) assignment: Arc<Mutex<Assignment>>,
    /// Wakes the loop after an assignment, so new partitions are claimed (and their tenants'
    /// reads answered) before any of their records arrive.
    pub(super) assigned: Arc<tokio::sync::Notify>,
    /// Next offset to commit per (topic, partition): everything before it is applied.
    pub(super) applied: Arc<Mutex<BTreeMap<(String, i32), i64>>>,
    /// The committed offsets of new assignments, checked against their first records (a
    /// broker that skips the rest of a batch; see `omni_bus::resume`).
    pub(super) resume: Arc<omni_bus::ResumeGuard>,
}

impl ClientContext for RouterContext {
    fn stats(&self, statistics: Statistics) {
        self.metrics.stats(statistics);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.error(error, reason);
    }
}

impl ConsumerContext for RouterContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        self.resume.revoked(tpl);
        let revoked: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        // Stop owning first: nothing of these partitions is applied or written after this.
        {
            let mut a = self.assignment.lock().unwrap_or_else(|p| p.into_inner());
            a.assigned.retain(|p| !revoked.contains(p));
            a.revoked.extend(revoked.iter().copied());
        }
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        let mut commit = TopicPartitionList::new();
        for ((topic, partition), offset) in applied.iter() {
            if revoked.contains(partition) {
                let _ = commit.add_partition_offset(topic, *partition, Offset::Offset(*offset));
            }
        }
        applied.retain(|(_, p), _| !revoked.contains(p));
        if commit.count() > 0 {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(error = %e, "router commit on revocation failed (the next owner replays)");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.resume.assigned(consumer, tpl);
                let mut a = self.assignment.lock().unwrap_or_else(|p| p.into_inner());
                a.assigned
                    .extend(tpl.elements().iter().map(|e| e.partition()));
                tracing::info!(partitions = ?a.assigned, "router partitions assigned");
                self.assigned.notify_one();
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "router rebalance failed"),
        }
    }
}
