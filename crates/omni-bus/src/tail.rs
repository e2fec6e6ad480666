//! A group-less tail of one or more whole topics, polled by its caller: every partition
//! assigned by this instance itself, nothing committed, each topic started at its beginning or
//! at the first record written since a given time.
//!
//! For readers every replica runs on all of a topic and that keep their own loop (live chat's
//! message feed and presence table). [`crate::table::tail`] is the push-style sibling for
//! read models with a "caught up" signal.
//!
//! A topic started by time starts at an offset the broker looked up, which may fall inside a
//! producer's record batch; tansu 0.6 then answers with the *next* batch (see
//! [`crate::resume`]). The tail checks the first records of those partitions with the same
//! [`ResumeGuard`] as the consumer groups and rewinds, so no record from the start offset on is
//! skipped. On Apache Kafka the first record is the start one and nothing else happens; tansu
//! 0.6 answers every lookup by time with offset 0 (a batch start), so there it never fires
//! either, but a broker that looks times up and skips mid-batch would lose records without it.

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

use crate::config::BusConfig;
use crate::error::BusError;
use crate::resume::{ResumeGuard, Resumed};

/// Where a tailed topic starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Its oldest record.
    Beginning,
    /// The first record written at or after this time (milliseconds since the epoch); a
    /// partition with none yet starts at its end. A broker that cannot look offsets up by time
    /// is read from the beginning (the reader skips old records by their own time).
    Since(i64),
}

/// An open tail: poll it in a loop on a thread of its own (polling blocks).
pub struct TopicTail {
    consumer: BaseConsumer,
    resume: ResumeGuard,
}

/// One record handed out by [`TopicTail::poll`], borrowed until the next poll.
pub struct TailMessage<'a> {
    inner: BorrowedMessage<'a>,
}

impl TailMessage<'_> {
    /// The topic it was read from.
    pub fn topic(&self) -> &str {
        self.inner.topic()
    }

    /// Its partition.
    pub fn partition(&self) -> i32 {
        self.inner.partition()
    }

    /// Its offset in its partition.
    pub fn offset(&self) -> i64 {
        self.inner.offset()
    }

    /// Its key, if it has one.
    pub fn key(&self) -> Option<&[u8]> {
        self.inner.key()
    }

    /// Its value; `None` for a tombstone.
    pub fn payload(&self) -> Option<&[u8]> {
        self.inner.payload()
    }

    /// Its headers, in order (a header without a value as an empty one).
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        crate::consumer::headers_of(&self.inner)
    }

    /// Its timestamp (milliseconds since the epoch), if it has one.
    pub fn timestamp(&self) -> Option<i64> {
        self.inner.timestamp().to_millis()
    }
}

impl TopicTail {
    /// Connects as a client of the (never joined, never committed) group `group` and assigns
    /// every partition of each topic from where it starts. An error while a topic does not
    /// exist yet or the broker cannot be reached: the caller retries.
    pub fn open(
        bus: &BusConfig,
        group: &str,
        topics: &[(&str, StartAt)],
    ) -> Result<Self, BusError> {
        let mut config = bus.consumer_config(group);
        config.set("enable.partition.eof", "false");
        let consumer: BaseConsumer = config.create().map_err(BusError::Client)?;
        let mut beginning = TopicPartitionList::new();
        let mut by_time = TopicPartitionList::new();
        for (topic, start) in topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(BusError::Consume)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                return Err(BusError::NotReady(format!(
                    "topic {topic} has no partitions yet"
                )));
            }
            for p in partitions {
                let (list, offset) = match start {
                    StartAt::Beginning => (&mut beginning, Offset::Beginning),
                    StartAt::Since(ms) => (&mut by_time, Offset::Offset(*ms)),
                };
                list.add_partition_offset(topic, p, offset)
                    .map_err(BusError::Consume)?;
            }
        }
        let mut assignment = beginning;
        let resume = ResumeGuard::default();
        if by_time.count() > 0 {
            let found = lookup_times(&consumer, by_time)?;
            let mut starts = Vec::new();
            for elem in found.elements() {
                let offset = match elem.offset() {
                    Offset::Offset(o) if o >= 0 => {
                        starts.push(((elem.topic().to_owned(), elem.partition()), o));
                        Offset::Offset(o)
                    }
                    Offset::End => Offset::End,
                    _ => Offset::Beginning,
                };
                assignment
                    .add_partition_offset(elem.topic(), elem.partition(), offset)
                    .map_err(BusError::Consume)?;
            }
            resume.record(starts);
        }
        consumer.assign(&assignment).map_err(BusError::Consume)?;
        Ok(Self { consumer, resume })
    }

    /// The next record, waiting at most `timeout`; `None` when none came. A read error is
    /// handed out as it is (librdkafka keeps reconnecting).
    pub fn poll(&self, timeout: Duration) -> Option<Result<TailMessage<'_>, BusError>> {
        match self.consumer.poll(timeout)? {
            Ok(m) => match self.resume.check(m.topic(), m.partition(), m.offset()) {
                Resumed::Take => Some(Ok(TailMessage { inner: m })),
                Resumed::Drop => None,
                Resumed::Rewind(to) => {
                    let (topic, partition) = (m.topic().to_owned(), m.partition());
                    drop(m);
                    if let Err(e) = self.consumer.seek(
                        &topic,
                        partition,
                        Offset::Offset(to),
                        Duration::from_secs(5),
                    ) {
                        // The next record of the partition rewinds further.
                        tracing::warn!(topic, partition, error = %e, "rewinding failed");
                    }
                    None
                }
            },
            Err(e) => Some(Err(BusError::Consume(e))),
        }
    }
}

/// Reads `topics` from where they start up to their end as of now, handing every record to
/// `record`, for one-shot tools (`omnirouter replay`). The end is each partition's high
/// watermark at the start and then no record for `quiet`: tansu 0.6 can report a watermark
/// short of the last batch (see the crate docs), so the watermark alone would stop early.
/// Returns how many records were read.
pub fn read_to_end(
    bus: &BusConfig,
    group: &str,
    topics: &[(&str, StartAt)],
    quiet: Duration,
    mut record: impl FnMut(&TailMessage<'_>),
) -> Result<u64, BusError> {
    let tail = TopicTail::open(bus, group, topics)?;
    let assignment = tail.consumer.assignment().map_err(BusError::Consume)?;
    let mut ends = std::collections::BTreeMap::new();
    for elem in assignment.elements() {
        let (_, high) = tail
            .consumer
            .fetch_watermarks(elem.topic(), elem.partition(), Duration::from_secs(10))
            .map_err(BusError::Consume)?;
        if high > 0 {
            ends.insert((elem.topic().to_owned(), elem.partition()), high);
        }
    }
    let mut read = 0;
    let mut last = std::time::Instant::now();
    loop {
        match tail.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = std::time::Instant::now();
                read += 1;
                let key = (m.topic().to_owned(), m.partition());
                if ends.get(&key).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&key);
                }
                record(&m);
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
        // A partition that starts at its end (nothing since the start time) never reaches
        // its watermark: five quiet periods in a row end the read too.
        let idle = last.elapsed();
        if idle >= quiet && (ends.is_empty() || idle >= quiet * 5) {
            return Ok(read);
        }
    }
}

/// The offsets of the first records written since the times in `wanted`; every partition from
/// its beginning when the broker cannot look offsets up by time.
fn lookup_times(
    consumer: &BaseConsumer,
    wanted: TopicPartitionList,
) -> Result<TopicPartitionList, BusError> {
    match consumer.offsets_for_times(wanted.clone(), Duration::from_secs(10)) {
        Ok(found) => Ok(found),
        Err(e) => {
            tracing::info!(error = %e, "offsets by time unavailable, reading from the beginning");
            let mut all = TopicPartitionList::new();
            for elem in wanted.elements() {
                all.add_partition_offset(elem.topic(), elem.partition(), Offset::Beginning)
                    .map_err(BusError::Consume)?;
            }
            Ok(all)
        }
    }
}
