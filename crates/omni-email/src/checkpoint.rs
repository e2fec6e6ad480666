//! Durable mailbox checkpoints on a compacted Kafka topic.
//!
//! A checkpoint says: every mail of this folder with a UID up to `last_uid`, under this
//! `uidvalidity`, was published and acknowledged by Kafka. It is written only after that
//! acknowledgement, so a crash between the two publishes the same mail again on restart — with
//! the same deterministic event id — and never skips one. `recent` remembers hashes of the
//! last published mails' ids, so the rescan after a UIDVALIDITY change can skip mail it has
//! already published instead of publishing it again.

use omni_bus::BusConfig;
use omni_channel::EventSink;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::error::EmailError;

/// How many recently published mails a checkpoint remembers for rescans.
pub const RECENT_CAPACITY: usize = 2000;

/// Progress through one mailbox folder.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The folder's UIDVALIDITY the UIDs belong to.
    pub uidvalidity: u32,
    /// Every mail with a UID up to this one was handled.
    pub last_uid: u32,
    /// Short hashes (16 hex digits) of the provider ids of recently published mails, oldest
    /// first, at most [`RECENT_CAPACITY`].
    #[serde(default)]
    pub recent: Vec<String>,
    /// When it was written (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Checkpoint {
    /// Whether a mail with this provider id was published recently.
    pub fn seen(&self, provider_id: &str) -> bool {
        let h = short_hash(provider_id);
        self.recent.contains(&h)
    }

    /// Remembers a published mail.
    pub fn remember(&mut self, provider_id: &str) {
        let h = short_hash(provider_id);
        if !self.recent.contains(&h) {
            self.recent.push(h);
        }
        if self.recent.len() > RECENT_CAPACITY {
            let excess = self.recent.len() - RECENT_CAPACITY;
            self.recent.drain(..excess);
        }
    }
}

fn short_hash(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    hex::encode(&digest[..8])
}

/// A boxed checkpoint future.
pub type CheckpointFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, EmailError>> + Send + 'a>>;

/// Where checkpoints live.
pub trait CheckpointStore: Send + Sync + 'static {
    /// The checkpoint under `key`, if one was written.
    fn load<'a>(&'a self, key: &'a str) -> CheckpointFuture<'a, Option<Checkpoint>>;
    /// Writes the checkpoint; resolves once it is durable.
    fn save<'a>(&'a self, key: &'a str, checkpoint: &'a Checkpoint) -> CheckpointFuture<'a, ()>;
}

/// Checkpoints on a compacted Kafka topic (key = the mailbox's checkpoint key, value = JSON).
/// The topic is read once, on the first load, and kept in memory; every save updates both.
pub struct KafkaCheckpoints {
    bus: BusConfig,
    topic: String,
    sink: Arc<dyn EventSink>,
    table: tokio::sync::Mutex<Option<HashMap<String, Checkpoint>>>,
}

impl KafkaCheckpoints {
    /// Checkpoints on `bus.topics.email_checkpoints`, written through `sink` (the daemon's
    /// acknowledged producer).
    pub fn new(bus: &BusConfig, sink: Arc<dyn EventSink>) -> Self {
        Self {
            topic: bus.topics.email_checkpoints.clone(),
            bus: bus.clone(),
            sink,
            table: tokio::sync::Mutex::new(None),
        }
    }
}

impl CheckpointStore for KafkaCheckpoints {
    fn load<'a>(&'a self, key: &'a str) -> CheckpointFuture<'a, Option<Checkpoint>> {
        Box::pin(async move {
            let mut table = self.table.lock().await;
            if table.is_none() {
                let bus = self.bus.clone();
                let topic = self.topic.clone();
                let raw =
                    tokio::task::spawn_blocking(move || omni_bus::table::read_table(&bus, &topic))
                        .await
                        .map_err(|e| EmailError::Checkpoint {
                            key: key.to_owned(),
                            reason: format!("read task: {e}"),
                        })?
                        .map_err(|e| EmailError::Checkpoint {
                            key: key.to_owned(),
                            reason: format!("read {}: {e}", self.topic),
                        })?;
                let mut parsed = HashMap::new();
                for (k, v) in raw {
                    match serde_json::from_slice::<Checkpoint>(&v) {
                        Ok(c) => {
                            parsed.insert(k, c);
                        }
                        Err(e) => {
                            tracing::warn!(key = %k, error = %e, "ignoring unreadable e-mail checkpoint")
                        }
                    }
                }
                *table = Some(parsed);
            }
            Ok(table.as_ref().and_then(|t| t.get(key).cloned()))
        })
    }

    fn save<'a>(&'a self, key: &'a str, checkpoint: &'a Checkpoint) -> CheckpointFuture<'a, ()> {
        Box::pin(async move {
            let payload = serde_json::to_vec(checkpoint).map_err(|e| EmailError::Checkpoint {
                key: key.to_owned(),
                reason: e.to_string(),
            })?;
            self.sink
                .publish(&self.topic, key.as_bytes(), &payload)
                .await
                .map_err(|e| EmailError::Checkpoint {
                    key: key.to_owned(),
                    reason: e.to_string(),
                })?;
            if let Some(table) = self.table.lock().await.as_mut() {
                table.insert(key.to_owned(), checkpoint.clone());
            }
            Ok(())
        })
    }
}

/// Checkpoints in memory, for tests and tools.
#[derive(Default)]
pub struct MemoryCheckpoints {
    map: Mutex<HashMap<String, Checkpoint>>,
}

impl CheckpointStore for MemoryCheckpoints {
    fn load<'a>(&'a self, key: &'a str) -> CheckpointFuture<'a, Option<Checkpoint>> {
        let found = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        Box::pin(async move { Ok(found) })
    }

    fn save<'a>(&'a self, key: &'a str, checkpoint: &'a Checkpoint) -> CheckpointFuture<'a, ()> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), checkpoint.clone());
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_is_bounded_and_remembers_the_newest() {
        let mut c = Checkpoint::default();
        for i in 0..(RECENT_CAPACITY + 10) {
            c.remember(&format!("m{i}@x"));
        }
        assert_eq!(c.recent.len(), RECENT_CAPACITY);
        assert!(c.seen(&format!("m{}@x", RECENT_CAPACITY + 9)));
        assert!(!c.seen("m0@x"));
        c.remember("m0@x");
        c.remember("m0@x");
        assert_eq!(c.recent.len(), RECENT_CAPACITY);
        let json = serde_json::to_string(&c).unwrap();
        let back: Checkpoint = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        let old: Checkpoint = serde_json::from_str(r#"{"uidvalidity":1,"last_uid":7}"#).unwrap();
        assert_eq!(old.last_uid, 7);
    }
}
