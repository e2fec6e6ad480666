//! Reading a compacted topic as a table: the latest value per key, tombstones removing keys.
//!
//! Used at start-up by components that keep their durable state on a compacted topic (the
//! router's state changelog, the e-mail channel's mailbox checkpoints). Reads with a
//! group-less assignment and never commits, so it disturbs no consumer group.
//!
//! Also here: [`tail`], which reads a topic from its beginning and keeps following it, with a
//! "caught up" signal (a read model every replica keeps, e.g. the e-mail thread index), and
//! [`Probe`], a long-lived metadata client for partition counts and end offsets.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::BusConfig;
use crate::error::BusError;

/// Latest value per key.
pub type Table = BTreeMap<String, Vec<u8>>;

/// Longest time a table read may take before it fails.
const READ_DEADLINE: Duration = Duration::from_secs(60);

/// Reads one partition of `topic` from its start to its end. Blocking: call it from
/// `spawn_blocking`.
pub fn read_partition(bus: &BusConfig, topic: &str, partition: i32) -> Result<Table, BusError> {
    read(bus, topic, Some(&[partition]))
}

/// Reads every partition of `topic` from its start to its end. Blocking: call it from
/// `spawn_blocking`.
pub fn read_table(bus: &BusConfig, topic: &str) -> Result<Table, BusError> {
    read(bus, topic, None)
}

/// One record of a compacted topic, in log order, with its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Offset in its partition.
    pub offset: i64,
    /// Key (lossy UTF-8).
    pub key: String,
    /// Value, `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers, by name (the last value of a repeated name).
    pub headers: BTreeMap<String, Vec<u8>>,
}

/// Reads one partition of `topic` from its start to its end and returns every record that is
/// left, in log order: for readers that must know which write came after which (the router's
/// owner fencing), not only the latest value per key. Blocking: call it from `spawn_blocking`.
pub fn read_partition_log(
    bus: &BusConfig,
    topic: &str,
    partition: i32,
) -> Result<Vec<LogRecord>, BusError> {
    read_partition_log_from(bus, topic, partition, 0)
}

/// [`read_partition_log`] from offset `from` on (what was written after an earlier read).
pub fn read_partition_log_from(
    bus: &BusConfig,
    topic: &str,
    partition: i32,
    from: i64,
) -> Result<Vec<LogRecord>, BusError> {
    let mut out = Vec::new();
    scan(bus, topic, Some(&[partition]), from, |m| {
        out.push(log_record(m))
    })?;
    Ok(out)
}

/// Reads every partition of `topic` like [`read_table`], keeping only the keys `keep` accepts
/// (a large topic of which one component needs a slice). Blocking: call it from
/// `spawn_blocking`.
pub fn read_table_where(
    bus: &BusConfig,
    topic: &str,
    mut keep: impl FnMut(&str) -> bool,
) -> Result<Table, BusError> {
    let mut out = Table::new();
    scan(bus, topic, None, 0, |m| {
        let key = String::from_utf8_lossy(m.key().unwrap_or_default());
        if !keep(&key) {
            return;
        }
        match m.payload() {
            Some(v) => {
                out.insert(key.into_owned(), v.to_vec());
            }
            None => {
                out.remove(key.as_ref());
            }
        }
    })?;
    Ok(out)
}

fn read(bus: &BusConfig, topic: &str, only: Option<&[i32]>) -> Result<Table, BusError> {
    let mut out = Table::new();
    scan(bus, topic, only, 0, |m| {
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        match m.payload() {
            Some(v) => {
                out.insert(key, v.to_vec());
            }
            None => {
                out.remove(&key);
            }
        }
    })?;
    Ok(out)
}

fn log_record(m: &rdkafka::message::BorrowedMessage<'_>) -> LogRecord {
    let mut headers = BTreeMap::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            headers.insert(h.key.to_owned(), h.value.unwrap_or_default().to_vec());
        }
    }
    LogRecord {
        offset: m.offset(),
        key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// Hands every record of the partitions (all of `topic`'s when `only` is `None`) to `each`,
/// from their start (or offset `from`, if later) to their end.
fn scan(
    bus: &BusConfig,
    topic: &str,
    only: Option<&[i32]>,
    from: i64,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), BusError> {
    let mut config = bus.consumer_config("omnirouter-table-reader");
    config.set("enable.partition.eof", "false");
    let consumer: BaseConsumer = config.create().map_err(BusError::Client)?;
    let partitions: Vec<i32> = match only {
        Some(p) => p.to_vec(),
        None => {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(BusError::Consume)?;
            metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect()
        }
    };
    let mut tpl = TopicPartitionList::new();
    // The last offset to reach, per partition still being read.
    let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map_err(BusError::Consume)?;
        let start = low.max(from);
        if high > start {
            tpl.add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(BusError::Consume)?;
            pending.insert(partition, high - 1);
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl).map_err(BusError::Consume)?;
    let deadline = Instant::now() + READ_DEADLINE;
    // Past the high watermark, keep reading until the partitions are quiet: some brokers
    // (tansu 0.6) report the watermark of the last batch's first record, not of its last one.
    let mut reached: HashSet<i32> = HashSet::new();
    loop {
        if Instant::now() > deadline {
            return Err(BusError::NotReady(format!(
                "reading {topic} did not reach its end within {READ_DEADLINE:?}"
            )));
        }
        let all_reached = reached.len() == pending.len();
        let wait = if all_reached { 300 } else { 200 };
        match consumer.poll(Duration::from_millis(wait)) {
            Some(Ok(m)) => {
                each(&m);
                if pending
                    .get(&m.partition())
                    .is_some_and(|last| m.offset() >= *last)
                {
                    reached.insert(m.partition());
                }
            }
            Some(Err(e)) => return Err(BusError::Consume(e)),
            None if all_reached => break,
            None => {}
        }
    }
    Ok(())
}

/// A long-lived metadata client: partition counts (cached: they do not shrink) and end
/// offsets, without joining any group. Blocking: call it from `spawn_blocking`.
pub struct Probe {
    consumer: BaseConsumer,
    counts: Mutex<HashMap<String, usize>>,
}

impl Probe {
    /// Connects lazily, as every librdkafka client.
    pub fn new(bus: &BusConfig) -> Result<Self, BusError> {
        let consumer: BaseConsumer = bus
            .consumer_config("omnirouter-probe")
            .create()
            .map_err(BusError::Client)?;
        Ok(Self {
            consumer,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// How many partitions `topic` has (an error while it does not exist).
    pub fn partitions(&self, topic: &str) -> Result<usize, BusError> {
        if let Some(n) = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
        {
            return Ok(*n);
        }
        let n = partition_count(&self.consumer, topic)?;
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_owned(), n);
        Ok(n)
    }

    /// The partition a record keyed `key` goes to (the partitioning contract).
    pub fn partition_of(&self, topic: &str, key: &[u8]) -> Result<i32, BusError> {
        Ok(crate::partition_for(key, self.partitions(topic)?))
    }

    /// The offset the next record of `topic`/`partition` will get, or a lower one: a record
    /// acknowledged after this call is at or after it.
    pub fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, BusError> {
        let (_, high) = self
            .consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map_err(BusError::Consume)?;
        Ok(high)
    }
}

fn partition_count(consumer: &BaseConsumer, topic: &str) -> Result<usize, BusError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(BusError::Consume)?;
    let n = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .sum();
    if n == 0 {
        return Err(BusError::NotReady(format!(
            "topic {topic} has no partitions yet"
        )));
    }
    Ok(n)
}

/// A topic followed from its beginning by a thread of its own: every record is handed to the
/// callback given to [`tail`], in log order per partition, for as long as the handle lives.
/// [`Tail::caught_up`] waits until everything written before the call has been handed over,
/// so a reader that misses a key can tell "not written" from "not read yet".
pub struct Tail {
    shared: Arc<TailShared>,
}

struct TailShared {
    stop: AtomicBool,
    /// Callers of `caught_up` not yet given a target.
    waiting: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
}

impl Tail {
    /// Waits (at most `timeout`) until every record written to the topic before this call has
    /// been handed to the callback; false if that did not happen in time (the broker is down,
    /// the topic does not exist yet).
    pub async fn caught_up(&self, timeout: Duration) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        // The thread notices within one poll and drops its consumer itself.
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// How long the tail waits for records in one poll; also how soon it notices a stop.
const TAIL_POLL: Duration = Duration::from_millis(100);

/// Follows `topic` from its beginning until the returned handle is dropped, handing every
/// record to `each` on a thread of its own. Waits for the topic to exist, and reconnects as
/// librdkafka does; never commits (no group).
pub fn tail<F>(bus: &BusConfig, topic: &str, each: F) -> Tail
where
    F: FnMut(LogRecord) + Send + 'static,
{
    let shared = Arc::new(TailShared {
        stop: AtomicBool::new(false),
        waiting: Mutex::new(Vec::new()),
    });
    let (bus, topic, s) = (bus.clone(), topic.to_owned(), shared.clone());
    let spawned = std::thread::Builder::new()
        .name("omni-tail".into())
        .spawn(move || run_tail(&bus, &topic, &s, each));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a topic tail thread");
    }
    Tail { shared }
}

fn run_tail<F: FnMut(LogRecord)>(bus: &BusConfig, topic: &str, shared: &TailShared, mut each: F) {
    let stopped = || shared.stop.load(Ordering::SeqCst);
    // Connect and assign every partition from its beginning, once the topic exists.
    let mut warned = false;
    let (consumer, partitions) = loop {
        if stopped() {
            return;
        }
        let attempt = (|| {
            let mut config = bus.consumer_config("omnirouter-tail");
            config.set("enable.partition.eof", "false");
            let consumer: BaseConsumer = config.create().map_err(BusError::Client)?;
            let n = partition_count(&consumer, topic)?;
            let partitions: Vec<i32> = (0..i32::try_from(n).unwrap_or(i32::MAX)).collect();
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition_offset(topic, *p, Offset::Beginning)
                    .map_err(BusError::Consume)?;
            }
            consumer.assign(&tpl).map_err(BusError::Consume)?;
            Ok::<_, BusError>((consumer, partitions))
        })();
        match attempt {
            Ok(ready) => break ready,
            Err(e) => {
                if !warned {
                    tracing::warn!(topic, error = %e, "cannot follow the topic yet, retrying");
                    warned = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    tracing::debug!(topic, partitions = partitions.len(), "following the topic");
    // Next offset to hand over, per partition.
    let mut position: BTreeMap<i32, i64> = partitions.iter().map(|p| (*p, 0)).collect();
    // Callers with the end offsets they wait for.
    let mut targets: Vec<(tokio::sync::oneshot::Sender<()>, BTreeMap<i32, i64>)> = Vec::new();
    let mut poll_error_logged = false;
    while !stopped() {
        let new: Vec<_> =
            std::mem::take(&mut *shared.waiting.lock().unwrap_or_else(|p| p.into_inner()));
        if !new.is_empty() {
            let mut ends = BTreeMap::new();
            let mut complete = true;
            for p in &partitions {
                match consumer.fetch_watermarks(topic, *p, Duration::from_secs(5)) {
                    Ok((low, high)) => {
                        // A partition compacted down to nothing has nothing to hand over.
                        let at = position.entry(*p).or_insert(0);
                        *at = (*at).max(low);
                        ends.insert(*p, high);
                    }
                    Err(_) => complete = false,
                }
            }
            if complete {
                targets.extend(new.into_iter().map(|tx| (tx, ends.clone())));
            } else {
                // Try again on the next round; the caller's own timeout bounds the wait.
                shared
                    .waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(new);
            }
        }
        match consumer.poll(TAIL_POLL) {
            Some(Ok(m)) => {
                poll_error_logged = false;
                position.insert(m.partition(), m.offset() + 1);
                each(log_record(&m));
            }
            Some(Err(e)) => {
                if !poll_error_logged {
                    tracing::warn!(topic, error = %e, "following the topic failed, retrying");
                    poll_error_logged = true;
                }
            }
            // Quiet: everything fetched has been handed over. (Past the end offsets, as in
            // `scan`: tansu may report the first offset of the last batch as the end.)
            None => {
                let (done, left): (Vec<_>, Vec<_>) = std::mem::take(&mut targets)
                    .into_iter()
                    .partition(|(_, ends)| {
                        ends.iter()
                            .all(|(p, end)| position.get(p).is_some_and(|at| at >= end))
                    });
                targets = left.into_iter().filter(|(tx, _)| !tx.is_closed()).collect();
                for (tx, _) in done {
                    let _ = tx.send(());
                }
            }
        }
    }
}
