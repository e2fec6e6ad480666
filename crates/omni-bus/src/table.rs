//! Reading a compacted topic as a table: the latest value per key, tombstones removing keys.
//!
//! Used at start-up by components that keep their durable state on a compacted topic (the
//! router's state changelog, the e-mail channel's mailbox checkpoints). Reads with a
//! group-less assignment and never commits, so it disturbs no consumer group.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashSet};
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
        let mut headers = BTreeMap::new();
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                headers.insert(h.key.to_owned(), h.value.unwrap_or_default().to_vec());
            }
        }
        out.push(LogRecord {
            offset: m.offset(),
            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        });
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
