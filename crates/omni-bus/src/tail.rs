//! Following a compacted topic from its beginning, on every replica: the read model of state
//! one replica writes and every replica needs (Zalo tokens, stored SMS parts).
//!
//! A [`Tail`] reads with a group-less assignment on a thread of its own and never commits, so
//! it disturbs no consumer group; it reconnects on errors. It says when it has read what the
//! topic held when it started ([`Tail::caught_up`]), so a reader can wait for the state rather
//! than act on a partial view.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::config::BusConfig;

/// One record of a followed topic: the key, and the value (`None` for a tombstone).
pub type Apply = Box<dyn FnMut(&[u8], Option<&[u8]>) + Send>;

/// A running follower of one topic; stops when dropped.
pub struct Tail {
    caught_up: watch::Receiver<bool>,
    stop: Arc<AtomicBool>,
    /// When the topic was last polled without an error.
    read_at: Arc<Mutex<Option<Instant>>>,
}

impl Tail {
    /// Follows `topic` from its beginning, handing every record to `apply` in log order per
    /// partition, until dropped. `name` names the thread and the log lines.
    pub fn start(bus: &BusConfig, topic: &str, name: &str, mut apply: Apply) -> Self {
        let (tx, rx) = watch::channel(false);
        let stop = Arc::new(AtomicBool::new(false));
        let (bus, shown, flag) = (bus.clone(), topic.to_owned(), stop.clone());
        let topic = shown.clone();
        let read_at = Arc::new(Mutex::new(None));
        let polled = read_at.clone();
        let spawned = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    if let Err(e) = follow(&bus, &topic, &flag, (&tx, &polled), &mut apply) {
                        tracing::warn!(error = %e, topic = %topic, "following the topic failed; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, topic = %shown, "cannot start a topic follower");
        }
        Self {
            caught_up: rx,
            stop,
            read_at,
        }
    }

    /// Whether the topic was polled without an error within `within`: a view that stopped
    /// moving says nothing about what others wrote lately (e.g. renewals of a liveness claim).
    pub fn fresh(&self, within: Duration) -> bool {
        self.read_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() <= within)
    }

    /// Waits until everything the topic held at start has been applied, at most `within`;
    /// whether it has.
    pub async fn caught_up(&self, within: Duration) -> bool {
        let mut rx = self.caught_up.clone();
        let reached = tokio::time::timeout(within, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok());
        reached
    }

    /// A signal that turns true once everything the topic held at start has been applied, for
    /// the owner of the read model.
    pub fn caught_up_signal(&self) -> watch::Receiver<bool> {
        self.caught_up.clone()
    }

    /// Whether everything the topic held at start has been applied.
    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn follow(
    bus: &BusConfig,
    topic: &str,
    stop: &AtomicBool,
    (caught_up, read_at): (&watch::Sender<bool>, &Mutex<Option<Instant>>),
    apply: &mut Apply,
) -> Result<(), rdkafka::error::KafkaError> {
    let mut config = bus.consumer_config("omnirouter-topic-follower");
    config.set("enable.partition.eof", "false");
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        // Not created yet.
        std::thread::sleep(Duration::from_millis(500));
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    // The last offset each partition held at start, until it is reached.
    let mut behind: BTreeMap<i32, i64> = BTreeMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        if high > low {
            behind.insert(p, high - 1);
        }
    }
    consumer.assign(&tpl)?;
    // A reconnect reads from the beginning again: appliers take the latest value per key.
    // Caught up once every partition's last record at start has been applied (tansu 0.6 may
    // report a watermark below the true end, never above it, so that record always comes).
    while !stop.load(Ordering::Relaxed) {
        if behind.is_empty() && !*caught_up.borrow() {
            caught_up.send_replace(true);
        }
        let polled = consumer.poll(Duration::from_millis(100));
        if !matches!(polled, Some(Err(_))) {
            *read_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        match polled {
            Some(Ok(m)) => {
                apply(m.key().unwrap_or_default(), m.payload());
                if behind.get(&m.partition()).is_some_and(|l| m.offset() >= *l) {
                    behind.remove(&m.partition());
                }
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(())
}
