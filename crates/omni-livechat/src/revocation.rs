//! Revoking a visitor's tokens on every replica: an operator call (the agent API's
//! `POST /v1/tenants/{tenant}/livechat/visitors/{visitor}/revoke`) publishes "tokens of this
//! visitor issued before T are void" on a small compacted topic
//! (`kafka.topics.livechat_revocations`), which every replica reads from the beginning.
//!
//! # Design note
//! Tokens carry their issue time (`iat_ms`), so a revocation is one record per visitor
//! (key `<tenant>/<visitor>`, value [`Revocation`]), not a list of tokens: a token is void
//! when `iat_ms < revoked_at_ms` of its visitor. A visitor who gets a new token afterwards
//! (a logged-in customer re-identified by the site, or a fresh anonymous session) is not
//! affected. Each replica applies a record as it reads it: session renewals and new sockets
//! with older tokens are refused (401 `token_revoked`) and its open sockets of the visitor
//! are closed (an `error` frame `token_revoked`, then 1008). The replica that took the call
//! applies it at once, before answering; the others within one fetch (tens of ms). A replica
//! started later reads the whole topic first, as presence does.
//!
//! A revocation matters only while a token issued before it can still be used or renewed:
//! `token_ttl_secs + renew_window_secs`. After that each replica forgets it and deletes its
//! key from the topic (a tombstone; replicas write the same one), so memory and the topic
//! hold the revocations of that window only. A tombstone never removes a revocation that is
//! still in force here (a newer revocation of the same visitor raced it).
//!
//! Clocks: `revoked_at_ms` is the revoking replica's clock and `iat_ms` the minting one's;
//! keep replicas in NTP sync (a skew of `d` lets a token minted up to `d` before the call
//! through, or refuses one minted up to `d` after it, which then renews).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::Livechat;

/// One record of the revocations topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The tenant.
    pub tenant: String,
    /// The visitor (contact id: `v_…` or `user:<id>`).
    pub visitor: String,
    /// Tokens of the visitor issued before this (Unix ms) are void.
    pub revoked_at_ms: i64,
}

impl Revocation {
    /// The record's key on the topic: tenant ids have no `/`, so it is unambiguous.
    pub fn key(&self) -> String {
        format!("{}/{}", self.tenant, self.visitor)
    }
}

/// What applying a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A revocation newer than what was known: sockets must look.
    New,
    /// Nothing new (an older or equal revocation, or one no longer in force).
    Nothing,
}

/// Revocations in force, by (tenant, visitor). Pure: time is passed in.
#[derive(Debug)]
pub struct RevocationTable {
    /// How long a revocation matters: the longest a token can be used or renewed.
    lifetime_ms: i64,
    by_visitor: HashMap<(String, String), i64>,
    /// Keys seen on the topic whose revocation is over, to be tombstoned.
    expired: Vec<String>,
}

impl RevocationTable {
    /// An empty table whose revocations are kept `lifetime`.
    pub fn new(lifetime: Duration) -> Self {
        Self {
            lifetime_ms: i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX),
            by_visitor: HashMap::new(),
            expired: Vec::new(),
        }
    }

    fn over(&self, revoked_at_ms: i64, now_ms: i64) -> bool {
        revoked_at_ms.saturating_add(self.lifetime_ms) <= now_ms
    }

    /// Applies a revocation read (or made) at `now_ms`.
    pub fn apply(&mut self, r: &Revocation, now_ms: i64) -> Applied {
        if self.over(r.revoked_at_ms, now_ms) {
            self.expired.push(r.key());
            return Applied::Nothing;
        }
        let at = self
            .by_visitor
            .entry((r.tenant.clone(), r.visitor.clone()))
            .or_insert(i64::MIN);
        if r.revoked_at_ms > *at {
            *at = r.revoked_at_ms;
            Applied::New
        } else {
            Applied::Nothing
        }
    }

    /// Applies a tombstone of `key`: forgets the revocation only if it is over here too.
    pub fn forget(&mut self, key: &str, now_ms: i64) {
        let Some((tenant, visitor)) = key.split_once('/') else {
            return;
        };
        let id = (tenant.to_owned(), visitor.to_owned());
        if let Some(at) = self.by_visitor.get(&id) {
            if self.over(*at, now_ms) {
                self.by_visitor.remove(&id);
            }
        }
    }

    /// True when a token of `visitor` issued at `iat_ms` is void.
    pub fn is_revoked(&self, tenant: &str, visitor: &str, iat_ms: i64) -> bool {
        self.by_visitor
            .get(&(tenant.to_owned(), visitor.to_owned()))
            .is_some_and(|at| iat_ms < *at)
    }

    /// Drops the revocations that are over and returns every key to tombstone (each once).
    pub fn sweep(&mut self, now_ms: i64) -> Vec<String> {
        let lifetime = self.lifetime_ms;
        let mut keys = std::mem::take(&mut self.expired);
        self.by_visitor.retain(|(t, v), at| {
            let keep = at.saturating_add(lifetime) > now_ms;
            if !keep {
                keys.push(format!("{t}/{v}"));
            }
            keep
        });
        keys
    }

    /// Revocations in force.
    pub fn len(&self) -> usize {
        self.by_visitor.len()
    }

    /// True when none is in force.
    pub fn is_empty(&self) -> bool {
        self.by_visitor.is_empty()
    }
}

/// Why a revocation was not made.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The visitor id cannot be one (empty, too long, control characters).
    #[error("visitor id must be 1-200 characters without control characters")]
    InvalidVisitor,
    /// Kafka did not take the record: nothing was revoked anywhere.
    #[error("the revocation was not stored: {0}")]
    Unavailable(#[source] omni_channel::SinkError),
}

/// The replica's revocations, and the signal that wakes its sockets to look at them.
pub struct Revocations {
    table: Mutex<RevocationTable>,
    /// Bumped on every new revocation; every socket watches it.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Revocations {
    /// An empty set whose revocations are kept `lifetime`.
    pub fn new(lifetime: Duration) -> Self {
        Self {
            table: Mutex::new(RevocationTable::new(lifetime)),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    fn table(&self) -> MutexGuard<'_, RevocationTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a revocation and, if it is new, wakes every socket.
    pub fn apply(&self, r: &Revocation, now_ms: i64) -> Applied {
        let applied = self.table().apply(r, now_ms);
        if applied == Applied::New {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
        applied
    }

    /// True when a token of `visitor` issued at `iat_ms` is void.
    pub fn is_revoked(&self, tenant: &str, visitor: &str, iat_ms: i64) -> bool {
        self.table().is_revoked(tenant, visitor, iat_ms)
    }

    /// Wakes on each new revocation.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Revocations in force.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// True when none is in force.
    pub fn is_empty(&self) -> bool {
        self.table().is_empty()
    }
}

/// A visitor id as tokens carry it: what a revocation may name.
fn valid_visitor(visitor: &str) -> bool {
    !visitor.is_empty() && visitor.len() <= 200 && !visitor.chars().any(char::is_control)
}

impl Livechat {
    /// Revokes every token issued to `visitor` of `tenant` until now: publishes the
    /// revocation (acks=all), applies it here (closing the visitor's sockets on this replica),
    /// and returns its time (Unix ms). Every other replica applies it when it reads it.
    pub async fn revoke(&self, tenant: &str, visitor: &str) -> Result<i64, RevokeError> {
        if !valid_visitor(visitor) {
            return Err(RevokeError::InvalidVisitor);
        }
        let record = Revocation {
            tenant: tenant.to_owned(),
            visitor: visitor.to_owned(),
            revoked_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        let payload = serde_json::to_vec(&record).unwrap_or_default();
        self.sink
            .publish(
                &self.bus.topics.livechat_revocations,
                record.key().as_bytes(),
                &payload,
            )
            .await
            .map_err(RevokeError::Unavailable)?;
        self.apply_revocation(&record);
        tracing::info!(tenant = %tenant, "live chat visitor tokens revoked");
        Ok(record.revoked_at_ms)
    }

    fn apply_revocation(&self, record: &Revocation) {
        let now = chrono::Utc::now().timestamp_millis();
        if self.revocations.apply(record, now) == Applied::New {
            self.metrics
                .revocations
                .set(i64::try_from(self.revocations.len()).unwrap_or(i64::MAX));
        }
    }

    /// Forgets revocations that are over and deletes their keys from the topic.
    pub(crate) async fn sweep_revocations(&self) {
        let keys = self
            .revocations
            .table()
            .sweep(chrono::Utc::now().timestamp_millis());
        self.metrics
            .revocations
            .set(i64::try_from(self.revocations.len()).unwrap_or(i64::MAX));
        let topic = &self.bus.topics.livechat_revocations;
        for key in keys {
            if let Err(e) = self.sink.delete(topic, key.as_bytes()).await {
                tracing::debug!(error = %e, "expired live chat revocation not deleted (the next replica will)");
            }
        }
    }
}

/// Tails the revocations topic from the beginning until `stop` (blocking: its own thread).
/// Retries until the topic exists.
pub fn run_reader(chat: Arc<Livechat>, stop: Arc<AtomicBool>) {
    crate::tail_until_stopped(
        &stop,
        "live chat revocations cannot read kafka yet, retrying (revocations made elsewhere are not applied here meanwhile)",
        || tail(&chat, &stop),
    );
}

fn tail(chat: &Livechat, stop: &AtomicBool) -> Result<(), omni_bus::BusError> {
    use omni_bus::tail::{StartAt, TopicTail};

    let topic = chat.bus.topics.livechat_revocations.as_str();
    let group = format!("omnirouter-livechat-revocations-{}", chat.presence.me);
    let consumer = TopicTail::open(&chat.bus, &group, &[(topic, StartAt::Beginning)])?;
    tracing::info!("live chat revocations reading {topic}");
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let now = chrono::Utc::now().timestamp_millis();
                match m.payload() {
                    None => {
                        if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                            chat.revocations.table().forget(key, now);
                        }
                    }
                    Some(value) => match serde_json::from_slice::<Revocation>(value) {
                        Ok(r) => chat.apply_revocation(&r),
                        Err(_) => tracing::debug!("unreadable live chat revocation ignored"),
                    },
                }
            }
            Some(Err(e)) => tracing::warn!(
                error = &e as &dyn std::error::Error,
                "live chat revocations read error"
            ),
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(visitor: &str, at: i64) -> Revocation {
        Revocation {
            tenant: "demo".into(),
            visitor: visitor.into(),
            revoked_at_ms: at,
        }
    }

    #[test]
    fn tokens_issued_before_the_revocation_are_void_and_later_ones_are_not() {
        let mut t = RevocationTable::new(Duration::from_secs(100));
        assert_eq!(t.apply(&rev("v_1", 5_000), 5_000), Applied::New);
        assert!(t.is_revoked("demo", "v_1", 4_999));
        assert!(
            !t.is_revoked("demo", "v_1", 5_000),
            "issued at the revocation"
        );
        assert!(!t.is_revoked("demo", "v_1", 6_000));
        assert!(!t.is_revoked("demo", "v_2", 0), "another visitor");
        assert!(!t.is_revoked("other", "v_1", 0), "another tenant");
        // A token from before `iat` existed (0) is void too.
        assert!(t.is_revoked("demo", "v_1", 0));
    }

    #[test]
    fn the_latest_revocation_wins_whatever_order_they_are_read_in() {
        let mut t = RevocationTable::new(Duration::from_secs(100));
        assert_eq!(t.apply(&rev("v_1", 9_000), 9_000), Applied::New);
        assert_eq!(t.apply(&rev("v_1", 5_000), 9_000), Applied::Nothing);
        assert!(t.is_revoked("demo", "v_1", 8_000));
        assert_eq!(
            t.apply(&rev("v_1", 9_000), 9_000),
            Applied::Nothing,
            "again"
        );
    }

    #[test]
    fn revocations_are_forgotten_once_no_older_token_can_be_used_and_tombstoned_once() {
        let mut t = RevocationTable::new(Duration::from_secs(10));
        t.apply(&rev("v_1", 1_000), 1_000);
        t.apply(&rev("user:a/b", 5_000), 5_000);
        assert!(t.sweep(10_999).is_empty());
        assert_eq!(t.sweep(11_000), ["demo/v_1"]);
        assert!(t.sweep(11_000).is_empty());
        assert_eq!(t.len(), 1);
        // Read at start, already over: not held, but its key is deleted.
        assert_eq!(t.apply(&rev("v_old", 0), 20_000), Applied::Nothing);
        assert!(!t.is_revoked("demo", "v_old", -1));
        let keys = t.sweep(20_000);
        assert!(keys.contains(&"demo/v_old".to_owned()), "{keys:?}");
        assert!(keys.contains(&"demo/user:a/b".to_owned()), "{keys:?}");
    }

    #[test]
    fn a_tombstone_never_removes_a_revocation_still_in_force() {
        let mut t = RevocationTable::new(Duration::from_secs(10));
        t.apply(&rev("v_1", 50_000), 50_000);
        t.forget("demo/v_1", 50_001);
        assert!(t.is_revoked("demo", "v_1", 1));
        t.forget("demo/v_1", 60_000);
        assert!(!t.is_revoked("demo", "v_1", 1));
    }

    #[test]
    fn visitor_ids_are_checked_before_anything_is_published() {
        assert!(valid_visitor("v_0192abc"));
        assert!(valid_visitor("user:kh-42"));
        assert!(!valid_visitor(""));
        assert!(!valid_visitor("a\nb"));
        assert!(!valid_visitor(&"x".repeat(201)));
    }
}
