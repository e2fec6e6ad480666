//! Where accepted events go. In the daemon this is Kafka ([`omni_bus::Producer`]); unit tests
//! use [`MemorySink`] to see exactly what would have been published.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

/// The sink did not take the event; the caller must not acknowledge its provider.
#[derive(Debug, Clone, thiserror::Error)]
#[error("publish to {topic} failed: {reason}")]
pub struct SinkError {
    /// The topic written to.
    pub topic: String,
    /// Why.
    pub reason: String,
}

/// A boxed publish future.
pub type PublishFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// Something that durably takes a keyed record and says when it has it.
pub trait EventSink: Send + Sync + 'static {
    /// Publishes and resolves only once the record is durable.
    fn publish<'a>(&'a self, topic: &'a str, key: &'a [u8], payload: &'a [u8])
        -> PublishFuture<'a>;

    /// Publishes a tombstone for `key` (a compacted topic then forgets it) and resolves once
    /// it is durable.
    fn delete<'a>(&'a self, topic: &'a str, key: &'a [u8]) -> PublishFuture<'a>;
}

impl EventSink for omni_bus::Producer {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        key: &'a [u8],
        payload: &'a [u8],
    ) -> PublishFuture<'a> {
        Box::pin(async move {
            self.send(topic, key, payload).await.map_err(|e| SinkError {
                topic: topic.to_owned(),
                reason: std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| e.to_string()),
            })
        })
    }

    fn delete<'a>(&'a self, topic: &'a str, key: &'a [u8]) -> PublishFuture<'a> {
        Box::pin(async move {
            let record = omni_bus::OutRecord {
                topic,
                partition: None,
                key,
                payload: None,
                headers: &[],
            };
            self.send_batch(&[record]).await.map_err(|e| SinkError {
                topic: topic.to_owned(),
                reason: std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| e.to_string()),
            })
        })
    }
}

/// A record as [`MemorySink`] received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedRecord {
    /// The topic.
    pub topic: String,
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for a tombstone).
    pub payload: Vec<u8>,
    /// True for a tombstone.
    pub tombstone: bool,
}

/// An in-memory sink for unit tests: records what was published, and can be switched to fail
/// like a broker that is down.
#[derive(Default)]
pub struct MemorySink {
    records: Mutex<Vec<PublishedRecord>>,
    failing: std::sync::atomic::AtomicBool,
}

impl MemorySink {
    /// Everything published so far.
    pub fn records(&self) -> Vec<PublishedRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes every publish fail (true) or succeed (false).
    pub fn set_failing(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }
}

impl MemorySink {
    fn record(&self, topic: &str, key: &[u8], payload: Option<&[u8]>) -> Result<(), SinkError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SinkError {
                topic: topic.to_owned(),
                reason: "sink is failing".into(),
            });
        }
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(PublishedRecord {
                topic: topic.to_owned(),
                key: key.to_vec(),
                payload: payload.unwrap_or_default().to_vec(),
                tombstone: payload.is_none(),
            });
        Ok(())
    }
}

impl EventSink for MemorySink {
    fn delete<'a>(&'a self, topic: &'a str, key: &'a [u8]) -> PublishFuture<'a> {
        Box::pin(async move { self.record(topic, key, None) })
    }

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        key: &'a [u8],
        payload: &'a [u8],
    ) -> PublishFuture<'a> {
        Box::pin(async move { self.record(topic, key, Some(payload)) })
    }
}
