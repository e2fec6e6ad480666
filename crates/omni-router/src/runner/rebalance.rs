//! What the consumer group tells the loop. Callbacks run inside `recv`, on the loop's own task,
//! so a revocation is recorded before the loop looks at another record.

use super::*;
use omni_bus::batch::{ClientError, Rebalanced};

/// What rebalances told the loop: the partitions assigned now, and those revoked since the
/// loop last looked. Written by the consumer's callbacks (on the loop's own thread, inside
/// `recv`), read by the loop between batches.
#[derive(Default)]
pub(super) struct Assignment {
    pub(super) assigned: BTreeSet<i32>,
    pub(super) revoked: Vec<i32>,
}

/// The loop's side of the rebalance callbacks: rebalances recorded for the loop (the consumer
/// commits what was applied on revocation, so the next owner starts right after it).
pub(super) struct RouterContext {
    pub(super) assignment: Arc<Mutex<Assignment>>,
    /// Wakes the loop after an assignment, so new partitions are claimed (and their tenants'
    /// reads answered) before any of their records arrive.
    pub(super) assigned: Arc<tokio::sync::Notify>,
}

impl Rebalanced for RouterContext {
    fn revoking(&self, revoked: &BTreeSet<i32>) {
        let mut a = self.assignment.lock().unwrap_or_else(|p| p.into_inner());
        a.assigned.retain(|p| !revoked.contains(p));
        a.revoked.extend(revoked.iter().copied());
    }

    fn revocation_commit_failed(&self, e: &ClientError) {
        tracing::warn!(error = %e, "router commit on revocation failed (the next owner replays)");
    }

    fn assigned(&self, partitions: &[i32]) {
        let mut a = self.assignment.lock().unwrap_or_else(|p| p.into_inner());
        a.assigned.extend(partitions.iter().copied());
        tracing::info!(partitions = ?a.assigned, "router partitions assigned");
        self.assigned.notify_one();
    }

    fn rebalance_failed(&self, e: &ClientError) {
        tracing::warn!(error = %e, "router rebalance failed");
    }
}
