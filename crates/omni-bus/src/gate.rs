//! Which partitions a group member holds right now, and a hand-over without overlap.
//!
//! An eager rebalance revokes every partition before it assigns any, but that alone does not
//! stop a member's handlers that are already running: without more, a reply being sent by the
//! old owner and the same reply redelivered to the new owner could be at the provider at once.
//! The gate closes that gap, as Kafka Streams does by finishing its tasks before it rejoins:
//!
//! - a handler takes a [`Permit`] for its record's partition before each piece of work that
//!   must not overlap with another member's (a provider call and the write that records it),
//!   and gets none once the partition is revoked;
//! - the revocation callback closes the partitions first, then waits until every permit on
//!   them is returned (at most [`PartitionGate::drain_timeout`]) before the member rejoins the
//!   group, so the next owner is assigned the partition only after the old one stopped;
//! - every assignment gets a new generation, so state cached for a partition (the outbound
//!   progress) is known to be stale after the partition went away and came back.
//!
//! A member that dies does not drain: what it had at the provider when it died is what the
//! caller's own records (the outbound progress topic) must account for. A member cut off from
//! the coordinator longer than `session.timeout.ms` loses its partitions on the coordinator
//! before librdkafka revokes them locally: that window is documented by the callers.

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::MetricsContext;
use crate::resume::ResumeGuard;

/// A topic partition.
type Partition = (String, i32);

#[derive(Debug, Default)]
struct State {
    /// Partitions held now, with the generation of their assignment.
    assigned: HashMap<Partition, u64>,
    /// Permits out, per partition.
    permits: HashMap<Partition, usize>,
    /// The last generation handed out.
    generation: u64,
}

/// The partitions this member holds, shared by the consumer's rebalance callbacks and the
/// handlers. See the module docs.
#[derive(Debug)]
pub struct PartitionGate {
    state: Mutex<State>,
    returned: Condvar,
    drain_timeout: Duration,
}

impl Default for PartitionGate {
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

impl PartitionGate {
    /// A gate whose revocations wait at most `drain_timeout` for permits to come back.
    pub fn new(drain_timeout: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            returned: Condvar::new(),
            drain_timeout,
        }
    }

    /// How long a revocation waits for running work on its partitions.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an assignment: each partition gets a new generation.
    pub fn assign(&self, partitions: impl IntoIterator<Item = (String, i32)>) {
        let mut s = self.lock();
        for p in partitions {
            s.generation += 1;
            let generation = s.generation;
            s.assigned.insert(p, generation);
        }
    }

    /// Closes `partitions` (no new permit) and waits until the permits on them are returned or
    /// the drain timeout passed. Returns how many permits were still out at the end (0: a clean
    /// hand-over).
    pub fn revoke(&self, partitions: &[(String, i32)]) -> usize {
        let deadline = Instant::now() + self.drain_timeout;
        let mut s = self.lock();
        for p in partitions {
            s.assigned.remove(p);
        }
        loop {
            let out: usize = partitions
                .iter()
                .map(|p| s.permits.get(p).copied().unwrap_or(0))
                .sum();
            let now = Instant::now();
            if out == 0 || now >= deadline {
                return out;
            }
            s = self
                .returned
                .wait_timeout(s, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Forgets every partition (the member left the group or lost its assignment).
    pub fn revoke_all(&self) -> usize {
        let all: Vec<Partition> = self.lock().assigned.keys().cloned().collect();
        self.revoke(&all)
    }

    /// The generation of the partition's current assignment; `None` if not held.
    pub fn generation(&self, topic: &str, partition: i32) -> Option<u64> {
        self.lock()
            .assigned
            .get(&(topic.to_owned(), partition))
            .copied()
    }

    /// Whether the partition is held now.
    pub fn holds(&self, topic: &str, partition: i32) -> bool {
        self.generation(topic, partition).is_some()
    }

    /// A permit to work on a record of the partition, if it is still held. Hold it across the
    /// work that must not overlap with the next owner's, and drop it right after.
    pub fn permit(self: &Arc<Self>, topic: &str, partition: i32) -> Option<Permit> {
        let key = (topic.to_owned(), partition);
        let mut s = self.lock();
        let generation = *s.assigned.get(&key)?;
        *s.permits.entry(key.clone()).or_default() += 1;
        Some(Permit {
            gate: self.clone(),
            partition: key,
            generation,
        })
    }
}

/// Work on a partition in progress; the revocation of the partition waits for it.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<PartitionGate>,
    partition: Partition,
    generation: u64,
}

impl Permit {
    /// The generation of the assignment this permit was taken under.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        if let Some(n) = s.permits.get_mut(&self.partition) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.permits.remove(&self.partition);
            }
        }
        drop(s);
        self.gate.returned.notify_all();
    }
}

/// The context of a [`crate::Consumer`]: metrics, and rebalances recorded in its gate.
pub struct GroupContext {
    pub(crate) metrics: MetricsContext,
    pub(crate) gate: Arc<PartitionGate>,
    pub(crate) resume: Arc<ResumeGuard>,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        self.metrics.stats(statistics);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.error(error, reason);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Runs inside `recv` on the loop's task: blocking here is what keeps this member from
        // rejoining (and the next owner from starting) while its handlers are mid-send. Other
        // tasks run on the runtime's other workers meanwhile.
        match rebalance {
            Rebalance::Revoke(tpl) => {
                self.resume.revoked(tpl);
                let partitions: Vec<Partition> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                let started = Instant::now();
                let left = self.gate.revoke(&partitions);
                if left > 0 {
                    tracing::warn!(group = ?self.metrics.group, left, ?partitions,
                        "partitions revoked while work on them was still running");
                } else {
                    tracing::info!(group = ?self.metrics.group, ?partitions,
                        drained_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(0),
                        "partitions revoked");
                }
            }
            Rebalance::Error(e) => {
                tracing::warn!(group = ?self.metrics.group, error = %e, "rebalance failed");
                self.gate.revoke_all();
            }
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // Before any record of the assignment is handed out: the loop checks each
            // partition's first records against these offsets.
            self.resume.assigned(consumer, tpl);
            let partitions: Vec<Partition> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            tracing::info!(group = ?self.metrics.group, ?partitions, "partitions assigned");
            self.gate.assign(partitions);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> (String, i32) {
        ("t".to_owned(), n)
    }

    #[test]
    fn permits_only_for_held_partitions_and_generations_change_on_reassignment() {
        let gate = Arc::new(PartitionGate::new(Duration::from_millis(50)));
        assert!(gate.permit("t", 0).is_none());
        gate.assign([p(0), p(1)]);
        let first = gate.permit("t", 0).unwrap().generation();
        assert_eq!(gate.revoke(&[p(0)]), 0);
        assert!(gate.permit("t", 0).is_none(), "revoked: no new work");
        assert!(gate.permit("t", 1).is_some(), "others untouched");
        gate.assign([p(0)]);
        assert_ne!(gate.generation("t", 0), Some(first));
    }

    #[test]
    fn a_revocation_waits_for_running_work_and_gives_up_after_the_timeout() {
        let gate = Arc::new(PartitionGate::new(Duration::from_secs(5)));
        gate.assign([p(0)]);
        let permit = gate.permit("t", 0).unwrap();
        let g = gate.clone();
        let started = Instant::now();
        let revoker = std::thread::spawn(move || g.revoke(&[p(0)]));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!revoker.is_finished(), "waits while the permit is out");
        drop(permit);
        assert_eq!(revoker.join().unwrap(), 0);
        assert!(started.elapsed() < Duration::from_secs(5));

        let gate = Arc::new(PartitionGate::new(Duration::from_millis(100)));
        gate.assign([p(0)]);
        let _stuck = gate.permit("t", 0).unwrap();
        assert_eq!(gate.revoke(&[p(0)]), 1, "bounded: reports what is left");
    }
}
