//! A whole topic read from its beginning by a consumer of its own (assigned, no group
//! membership), for small registries every instance folds into memory (the router's owners).

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::batch::ClientError;
use crate::config::BusConfig;

/// Reads every partition of `topic` from its beginning, then follows it, until `stop` is set.
/// `polled` is called after every poll that did not fail (the reader is up to date as of
/// then), `record` with the key (empty when none) and value of every record. Returns at once
/// (`Ok`) when the topic has no partitions yet, and on the first failed poll (`Err`): the
/// caller retries.
pub fn read_from_beginning(
    bus: &BusConfig,
    client: &str,
    topic: &str,
    stop: &AtomicBool,
    mut polled: impl FnMut(),
    mut record: impl FnMut(&[u8], Option<&[u8]>),
) -> Result<(), ClientError> {
    let mut config = bus.consumer_config(client);
    config.set("enable.partition.eof", "false");
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    if tpl.count() == 0 {
        // The topic is not created yet.
        std::thread::sleep(Duration::from_secs(1));
        return Ok(());
    }
    consumer.assign(&tpl)?;
    while !stop.load(Ordering::Relaxed) {
        let polled_now = consumer.poll(Duration::from_millis(200));
        if !matches!(polled_now, Some(Err(_))) {
            polled();
        }
        match polled_now {
            Some(Ok(m)) => record(m.key().unwrap_or_default(), m.payload()),
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(())
}
