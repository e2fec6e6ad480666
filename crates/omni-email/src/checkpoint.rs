//! Durable mailbox checkpoints on a compacted Kafka topic, and what a reader asks Kafka to
//! publish each mail once across crashes, takeovers and UIDVALIDITY changes.
//!
//! A checkpoint says: every mail of this folder with a UID up to `last_uid`, under this
//! `uidvalidity`, was published and acknowledged by Kafka. It is written only after that
//! acknowledgement, so nothing is ever skipped. Its `mark` is an offset of the tenant's
//! inbound partition at or before every mail published after `last_uid`: a reader that starts
//! (after a crash, or taking the mailbox over from another replica) reads the inbound
//! partition from the mark and skips the mail its predecessor published and did not
//! checkpoint ([`CheckpointStore::published_since`]). `recent` remembers hashes of the last
//! 2,000 published mails' ids, and the published topic every one of them
//! ([`CheckpointStore::remember_published`]), so a folder read again after a UIDVALIDITY
//! change skips mail already published.

use omni_bus::BusConfig;
use omni_channel::EventSink;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
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
    /// Where on the inbound topic a mail published after `last_uid` can be, at the earliest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<InboundMark>,
    /// While the folder is read again after a UIDVALIDITY change (`first_start = "all"`): the
    /// last UID of that re-read; mail up to it is checked against the published topic too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescan_until: Option<u32>,
    /// When it was written (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Checkpoint {
    /// Whether a mail with this provider id was published recently.
    pub fn seen(&self, provider_id: &str) -> bool {
        let h = provider_hash(provider_id);
        self.recent.contains(&h)
    }

    /// Remembers a published mail.
    pub fn remember(&mut self, provider_id: &str) {
        let h = provider_hash(provider_id);
        if !self.recent.contains(&h) {
            self.recent.push(h);
        }
        if self.recent.len() > RECENT_CAPACITY {
            let excess = self.recent.len() - RECENT_CAPACITY;
            self.recent.drain(..excess);
        }
    }
}

/// An offset of one partition of the inbound topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMark {
    /// The tenant's inbound partition.
    pub partition: i32,
    /// An offset at or before the next record there.
    pub offset: i64,
}

/// How a provider id is remembered (16 hex digits of its SHA-256).
pub fn provider_hash(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    hex::encode(&digest[..8])
}

/// A boxed checkpoint future.
pub type CheckpointFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, EmailError>> + Send + 'a>>;

/// Where checkpoints live, and the questions a reader asks about what was published.
pub trait CheckpointStore: Send + Sync + 'static {
    /// The latest checkpoint under `key`, if one was written (read when called: a reader
    /// taking a mailbox over sees its predecessor's last write).
    fn load<'a>(&'a self, key: &'a str) -> CheckpointFuture<'a, Option<Checkpoint>>;
    /// Writes the checkpoint; resolves once it is durable.
    fn save<'a>(&'a self, key: &'a str, checkpoint: &'a Checkpoint) -> CheckpointFuture<'a, ()>;

    /// Where `tenant`'s next inbound record will land at the earliest; `None` where the store
    /// cannot tell (then a restart may publish the mail in flight at a crash again, with the
    /// same event id).
    fn inbound_mark<'a>(&'a self, _tenant: &'a str) -> CheckpointFuture<'a, Option<InboundMark>> {
        Box::pin(async { Ok(None) })
    }

    /// The ids of the events of e-mail account `account` on the inbound topic from `mark` on.
    fn published_since<'a>(
        &'a self,
        _mark: InboundMark,
        _account: &'a str,
    ) -> CheckpointFuture<'a, HashSet<String>> {
        Box::pin(async { Ok(HashSet::new()) })
    }

    /// Remembers for good that the mailbox `key` published the mail whose provider id hashes
    /// to `hash` ([`provider_hash`]).
    fn remember_published<'a>(&'a self, key: &'a str, hash: &'a str) -> CheckpointFuture<'a, ()>;

    /// Every hash [`CheckpointStore::remember_published`] remembered for the mailbox `key`.
    fn published<'a>(&'a self, key: &'a str) -> CheckpointFuture<'a, HashSet<String>>;
}

/// Checkpoints on a compacted Kafka topic (key = the mailbox's checkpoint key, value = JSON),
/// the published memory on another one, and the inbound topic read back for takeovers.
pub struct KafkaCheckpoints {
    bus: BusConfig,
    sink: Arc<dyn EventSink>,
    probe: Mutex<Option<Arc<omni_bus::table::Probe>>>,
}

impl KafkaCheckpoints {
    /// Checkpoints on `bus.topics.email_checkpoints` (published memory on
    /// `bus.topics.email_published`), written through `sink` (the daemon's acknowledged
    /// producer).
    pub fn new(bus: &BusConfig, sink: Arc<dyn EventSink>) -> Self {
        Self {
            bus: bus.clone(),
            sink,
            probe: Mutex::new(None),
        }
    }

    fn probe(&self) -> Result<Arc<omni_bus::table::Probe>, omni_bus::BusError> {
        let mut slot = self.probe.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let p = Arc::new(omni_bus::table::Probe::new(&self.bus)?);
        *slot = Some(p.clone());
        Ok(p)
    }

    /// Runs a blocking Kafka read off the runtime; errors name `key`.
    async fn blocking<T: Send + 'static>(
        &self,
        key: &str,
        read: impl FnOnce(&BusConfig, Arc<omni_bus::table::Probe>) -> Result<T, omni_bus::BusError>
            + Send
            + 'static,
    ) -> Result<T, EmailError> {
        let err = |reason: String| EmailError::Checkpoint {
            key: key.to_owned(),
            reason,
        };
        let probe = self.probe().map_err(|e| err(e.to_string()))?;
        let bus = self.bus.clone();
        tokio::task::spawn_blocking(move || read(&bus, probe))
            .await
            .map_err(|e| err(format!("read task: {e}")))?
            .map_err(|e| err(e.to_string()))
    }
}

impl CheckpointStore for KafkaCheckpoints {
    fn load<'a>(&'a self, key: &'a str) -> CheckpointFuture<'a, Option<Checkpoint>> {
        Box::pin(async move {
            let owned = key.to_owned();
            let raw = self
                .blocking(key, move |bus, probe| {
                    let topic = &bus.topics.email_checkpoints;
                    let partition = probe.partition_of(topic, owned.as_bytes())?;
                    let mut table = omni_bus::table::read_partition(bus, topic, partition)?;
                    Ok(table.remove(&owned))
                })
                .await?;
            Ok(raw.and_then(|v| match serde_json::from_slice::<Checkpoint>(&v) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "ignoring an unreadable e-mail checkpoint");
                    None
                }
            }))
        })
    }

    fn save<'a>(&'a self, key: &'a str, checkpoint: &'a Checkpoint) -> CheckpointFuture<'a, ()> {
        Box::pin(async move {
            let payload = serde_json::to_vec(checkpoint).map_err(|e| EmailError::Checkpoint {
                key: key.to_owned(),
                reason: e.to_string(),
            })?;
            self.sink
                .publish(&self.bus.topics.email_checkpoints, key.as_bytes(), &payload)
                .await
                .map_err(|e| EmailError::Checkpoint {
                    key: key.to_owned(),
                    reason: e.to_string(),
                })
        })
    }

    fn inbound_mark<'a>(&'a self, tenant: &'a str) -> CheckpointFuture<'a, Option<InboundMark>> {
        Box::pin(async move {
            let owned = tenant.to_owned();
            let mark = self
                .blocking(tenant, move |bus, probe| {
                    let topic = &bus.topics.inbound;
                    let partition = probe.partition_of(topic, owned.as_bytes())?;
                    let offset = probe.end_offset(topic, partition)?;
                    Ok(InboundMark { partition, offset })
                })
                .await?;
            Ok(Some(mark))
        })
    }

    fn published_since<'a>(
        &'a self,
        mark: InboundMark,
        account: &'a str,
    ) -> CheckpointFuture<'a, HashSet<String>> {
        Box::pin(async move {
            let account = account.to_owned();
            let label = format!("inbound partition {}", mark.partition);
            self.blocking(&label, move |bus, _| {
                let records = omni_bus::table::read_partition_log_from(
                    bus,
                    &bus.topics.inbound,
                    mark.partition,
                    mark.offset,
                )?;
                Ok(records
                    .into_iter()
                    .filter_map(|r| r.value)
                    .filter_map(|v| serde_json::from_slice::<serde_json::Value>(&v).ok())
                    .filter(|v| {
                        let channel = &v["data"]["channel"];
                        channel["kind"] == "email"
                            && channel["account"]
                                .as_str()
                                .is_some_and(|a| a.eq_ignore_ascii_case(&account))
                    })
                    .filter_map(|v| v["id"].as_str().map(str::to_owned))
                    .collect())
            })
            .await
        })
    }

    fn remember_published<'a>(&'a self, key: &'a str, hash: &'a str) -> CheckpointFuture<'a, ()> {
        Box::pin(async move {
            let payload = serde_json::json!({ "at": chrono::Utc::now() }).to_string();
            self.sink
                .publish(
                    &self.bus.topics.email_published,
                    format!("{key}/{hash}").as_bytes(),
                    payload.as_bytes(),
                )
                .await
                .map_err(|e| EmailError::Checkpoint {
                    key: key.to_owned(),
                    reason: e.to_string(),
                })
        })
    }

    fn published<'a>(&'a self, key: &'a str) -> CheckpointFuture<'a, HashSet<String>> {
        Box::pin(async move {
            let prefix = format!("{key}/");
            self.blocking(key, move |bus, _| {
                let table =
                    omni_bus::table::read_table_where(bus, &bus.topics.email_published, |k| {
                        k.starts_with(&prefix)
                    })?;
                Ok(table
                    .into_keys()
                    .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
                    .collect())
            })
            .await
        })
    }
}

/// Checkpoints in memory, for tests and tools.
#[derive(Default)]
pub struct MemoryCheckpoints {
    map: Mutex<HashMap<String, Checkpoint>>,
    published: Mutex<HashSet<String>>,
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

    fn remember_published<'a>(&'a self, key: &'a str, hash: &'a str) -> CheckpointFuture<'a, ()> {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(format!("{key}/{hash}"));
        Box::pin(async { Ok(()) })
    }

    fn published<'a>(&'a self, key: &'a str) -> CheckpointFuture<'a, HashSet<String>> {
        let prefix = format!("{key}/");
        let found = self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        Box::pin(async move { Ok(found) })
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
