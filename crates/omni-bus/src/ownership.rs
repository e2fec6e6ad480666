//! Which per-tenant channel state this instance keeps, as the router's consumer group decides.
//!
//! Kafka Streams is the model (DESIGN "One owner per tenant"): the instance the router group
//! assigns a partition to owns everything keyed onto that partition, not only routing. Channels
//! ask [`Ownership`] before they do stateful work that must happen once per deployment (read a
//! mailbox, refresh a Zalo token, reassemble a long SMS) and follow its changes; the keys are
//! hashed with the partitioning contract ([`crate::partition_for`]) onto the router's
//! partitions. An instance without a router owns everything ([`Owned::everything`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A snapshot of what this instance owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    scope: Scope,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// A single instance without a router: nobody else could own anything.
    Everything,
    /// The partitions (of `count`) the router group assigned to this instance and that it won
    /// the claim for; `count` is 0 until the router has seen the topics.
    Partitions { count: usize, owned: BTreeSet<i32> },
}

impl Owned {
    /// Everything: for a daemon that runs no router (one instance).
    pub fn everything() -> Self {
        Self {
            scope: Scope::Everything,
        }
    }

    /// Nothing yet: a router that has not joined its group.
    pub fn nothing() -> Self {
        Self::partitions(0, BTreeSet::new())
    }

    /// The `owned` partitions among `count`.
    pub fn partitions(count: usize, owned: BTreeSet<i32>) -> Self {
        Self {
            scope: Scope::Partitions { count, owned },
        }
    }

    /// Whether the state keyed by `key` (a tenant id, a mailbox's checkpoint key) is this
    /// instance's to keep.
    pub fn owns(&self, key: &str) -> bool {
        match &self.scope {
            Scope::Everything => true,
            Scope::Partitions { count: 0, .. } => false,
            Scope::Partitions { count, owned } => {
                owned.contains(&crate::partition_for(key.as_bytes(), *count))
            }
        }
    }

    /// How many partitions are owned (`None` for everything), for logs.
    pub fn owned_count(&self) -> Option<usize> {
        match &self.scope {
            Scope::Everything => None,
            Scope::Partitions { owned, .. } => Some(owned.len()),
        }
    }
}

/// Follows what this instance owns; cheap to clone, one per consumer.
#[derive(Clone, Debug)]
pub struct Ownership {
    rx: watch::Receiver<Owned>,
}

/// The writing side, held by the router.
pub type OwnershipSender = watch::Sender<Owned>;

impl Ownership {
    /// A pair for an owner that changes (the router updates the sender on every claim and
    /// revocation).
    pub fn channel(initial: Owned) -> (OwnershipSender, Self) {
        let (tx, rx) = watch::channel(initial);
        (tx, Self { rx })
    }

    /// A follower of `sender` (the router hands these out).
    pub fn from_sender(sender: &OwnershipSender) -> Self {
        Self {
            rx: sender.subscribe(),
        }
    }

    /// Ownership that never changes (a daemon without a router, tests).
    pub fn fixed(owned: Owned) -> Self {
        let (tx, rx) = watch::channel(owned);
        // Keep the sender alive so `changed` waits rather than fails.
        std::mem::forget(tx);
        Self { rx }
    }

    /// What is owned now.
    pub fn now(&self) -> Owned {
        self.rx.borrow().clone()
    }

    /// Whether `key`'s state is owned now.
    pub fn owns(&self, key: &str) -> bool {
        self.rx.borrow().owns(key)
    }

    /// Waits for the next change and returns it; never returns if the owner is gone (the
    /// router stopped: the daemon is shutting down and its stop signal ends the caller).
    pub async fn changed(&mut self) -> Owned {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.rx.borrow_and_update().clone()
    }
}

/// Keeps one task running per owned key and none per key owned elsewhere, until `stop`.
///
/// `keys` are the candidates (with the ownership key of each); `start(key, stop)` spawns the
/// work for one, which must end soon after its `stop` turns true. When ownership of a key goes,
/// its task is told to stop and awaited before a later start of the same key, so one process
/// never runs two. Returns once `stop` is true and every task has ended.
pub async fn run_per_owned_key<F, Fut>(
    mut ownership: Ownership,
    keys: Vec<String>,
    mut start: F,
    mut stop: watch::Receiver<bool>,
) where
    F: FnMut(String, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    struct Running {
        stop: watch::Sender<bool>,
        task: JoinHandle<()>,
    }
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut owned = ownership.now();
    loop {
        // Stop what is no longer ours first: the next owner may start it at any moment.
        let gone: Vec<String> = running.keys().filter(|k| !owned.owns(k)).cloned().collect();
        for key in gone {
            if let Some(r) = running.remove(&key) {
                tracing::info!(key = %key, "no longer owned here: stopping");
                let _ = r.stop.send(true);
                let _ = r.task.await;
            }
        }
        for key in &keys {
            if owned.owns(key) && !running.contains_key(key) {
                tracing::info!(key = %key, "owned here: starting");
                let (tx, rx) = watch::channel(false);
                let task = tokio::spawn(start(key.clone(), rx));
                running.insert(key.clone(), Running { stop: tx, task });
            }
        }
        tokio::select! {
            next = ownership.changed() => owned = next,
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for r in running.values() {
        let _ = r.stop.send(true);
    }
    for (_, r) in running {
        let _ = r.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn keys_follow_the_partitioning_contract() {
        let count = 4;
        let key = "acme";
        let home = crate::partition_for(key.as_bytes(), count);
        assert!(Owned::partitions(count, [home].into()).owns(key));
        let others: BTreeSet<i32> = (0..4).filter(|p| *p != home).collect();
        assert!(!Owned::partitions(count, others).owns(key));
        assert!(!Owned::nothing().owns(key));
        assert!(Owned::everything().owns(key));
    }

    #[tokio::test]
    async fn a_task_runs_while_its_key_is_owned_and_stops_when_it_goes() {
        let count = 2;
        let a = "tenant-a".to_owned();
        let pa = crate::partition_for(a.as_bytes(), count);
        let (tx, ownership) = Ownership::channel(Owned::nothing());
        let (stop_tx, stop_rx) = watch::channel(false);
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let l = log.clone();
        let supervisor = tokio::spawn(run_per_owned_key(
            ownership,
            vec![a.clone()],
            move |key, mut stop| {
                let l = l.clone();
                async move {
                    l.lock().unwrap().push(format!("start {key}"));
                    let _ = stop.wait_for(|s| *s).await;
                    l.lock().unwrap().push(format!("stop {key}"));
                }
            },
            stop_rx,
        ));
        let wait_for = |n: usize| {
            let log = log.clone();
            async move {
                while log.lock().unwrap().len() < n {
                    tokio::task::yield_now().await;
                }
            }
        };
        tx.send(Owned::partitions(count, [pa].into())).unwrap();
        wait_for(1).await;
        tx.send(Owned::partitions(count, BTreeSet::new())).unwrap();
        wait_for(2).await;
        tx.send(Owned::partitions(count, [pa].into())).unwrap();
        wait_for(3).await;
        stop_tx.send(true).unwrap();
        supervisor.await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            [
                "start tenant-a",
                "stop tenant-a",
                "start tenant-a",
                "stop tenant-a"
            ]
        );
    }
}
