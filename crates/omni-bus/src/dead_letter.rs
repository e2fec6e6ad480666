//! The dead-letter topic: where a record no consumer can use goes, with why, before its offset
//! is committed. A tolerant reader skips what it does not know; what it cannot use at all (not
//! JSON, a required field missing, a key that is not the event's tenant) is never dropped
//! silently: the original key, value and headers are kept, and headers say where it came from.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::consumer::Record;
use crate::error::BusError;
use crate::metrics::BusMetrics;
use crate::producer::{OutRecord, Producer};

/// Why the record was dead-lettered (free text, bounded).
pub const REASON: &str = "omni-dead-letter-reason";
/// The topic the record was read from.
pub const TOPIC: &str = "omni-dead-letter-topic";
/// Its partition there.
pub const PARTITION: &str = "omni-dead-letter-partition";
/// Its offset there.
pub const OFFSET: &str = "omni-dead-letter-offset";
/// The consumer group (or `router`) that could not use it.
pub const CONSUMER: &str = "omni-dead-letter-consumer";
/// When it was dead-lettered, Unix milliseconds.
pub const TIME: &str = "omni-dead-letter-time";

/// The longest reason kept in the header: a parse error quoting a huge value stays readable.
const MAX_REASON_BYTES: usize = 1024;

/// The headers of a dead letter: the original record's own (except an earlier dead-lettering's,
/// for a record replayed and refused again) and where it came from and why.
pub fn headers(
    original: &[(String, Vec<u8>)],
    topic: &str,
    partition: i32,
    offset: i64,
    consumer: &str,
    reason: &str,
) -> Vec<(String, Vec<u8>)> {
    let mut reason = reason.to_owned();
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    original
        .iter()
        .filter(|(k, _)| !k.starts_with("omni-dead-letter-"))
        .cloned()
        .chain([
            (REASON.to_owned(), reason.into_bytes()),
            (TOPIC.to_owned(), topic.as_bytes().to_vec()),
            (PARTITION.to_owned(), partition.to_string().into_bytes()),
            (OFFSET.to_owned(), offset.to_string().into_bytes()),
            (CONSUMER.to_owned(), consumer.as_bytes().to_vec()),
            (TIME.to_owned(), now_ms.to_string().into_bytes()),
        ])
        .collect()
}

/// Writes the records a consumer group cannot use to the dead-letter topic.
#[derive(Clone)]
pub struct DeadLetters {
    producer: Producer,
    topic: String,
    metrics: Arc<BusMetrics>,
}

impl DeadLetters {
    /// Dead letters go to `topic` through `producer`.
    pub fn new(producer: Producer, topic: impl Into<String>, metrics: Arc<BusMetrics>) -> Self {
        Self {
            producer,
            topic: topic.into(),
            metrics,
        }
    }

    /// Copies `record` to the dead-letter topic with `reason`; `Ok` once Kafka acknowledged it.
    pub async fn send(
        &self,
        record: &Record,
        consumer: &str,
        reason: &str,
    ) -> Result<(), BusError> {
        let headers = headers(
            &record.headers,
            &record.topic,
            record.partition,
            record.offset,
            consumer,
            reason,
        );
        let refs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let out = OutRecord {
            topic: &self.topic,
            partition: None,
            key: record.key.as_deref().unwrap_or_default(),
            payload: record.payload.as_deref(),
            headers: &refs,
        };
        self.producer.send_batch(&[out]).await?;
        self.metrics
            .dead_letters
            .with_label_values(&[consumer, record.topic.as_str()])
            .inc();
        tracing::warn!(consumer, topic = %record.topic, partition = record.partition,
            offset = record.offset, %reason, dead_letter_topic = %self.topic,
            "record dead-lettered");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn a_dead_letter_keeps_its_headers_and_says_where_it_came_from_and_why() {
        let original = vec![
            ("traceparent".to_owned(), b"00-abc-def-01".to_vec()),
            (REASON.to_owned(), b"an earlier refusal".to_vec()),
        ];
        let h = headers(
            &original,
            "omni.outbound.v1",
            3,
            42,
            "omnirouter-outbound",
            "bad data",
        );
        assert_eq!(value(&h, "traceparent"), Some("00-abc-def-01"));
        assert_eq!(value(&h, REASON), Some("bad data"));
        assert_eq!(h.iter().filter(|(k, _)| k == REASON).count(), 1);
        assert_eq!(value(&h, TOPIC), Some("omni.outbound.v1"));
        assert_eq!(value(&h, PARTITION), Some("3"));
        assert_eq!(value(&h, OFFSET), Some("42"));
        assert_eq!(value(&h, CONSUMER), Some("omnirouter-outbound"));
        assert!(value(&h, TIME).unwrap().parse::<u64>().unwrap() > 1_700_000_000_000);
    }

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary() {
        let reason = "đ".repeat(MAX_REASON_BYTES);
        let h = headers(&[], "t", 0, 0, "g", &reason);
        let kept = value(&h, REASON).unwrap();
        assert!(kept.len() <= MAX_REASON_BYTES + '…'.len_utf8());
        assert!(kept.ends_with('…'));
    }
}
