//! Who owns a partition's routing state, and how a zombie owner is kept out.
//!
//! Kafka's consumer group decides which instance holds a partition; this module makes that
//! decision durable and checkable, as Kafka Streams does with its changelog and epochs:
//!
//! - **Claim.** An instance that is given partition `p` reads `p` of the state topic, finds the
//!   highest owner epoch written there, and writes a claim (`~owner/<epoch>/<member>`) with that
//!   epoch plus one before it routes anything. It then reads what was written since: if another
//!   instance claimed the same epoch first ([`first_claim_wins`]), it backs off; otherwise it
//!   restores from everything up to its claim. Every state record it writes afterwards carries
//!   its epoch and member in the [`EPOCH_HEADER`] and [`MEMBER_HEADER`] headers.
//! - **Fence on restore.** [`fence`] replays a state partition in log order: a record not
//!   written by the claim in force at its position (an older epoch: a zombie, an instance that
//!   had lost the partition without knowing yet; or a claimant that lost) is ignored.
//! - **Fence on write.** Claims are also published on the owners topic, which every instance
//!   tails ([`Owners`]); before writing, an owner checks that nobody claimed its partition with
//!   a newer epoch, and gives the partition up if someone did.
//! - **Reads anywhere.** The same registry tells any instance where to forward a tenant's API
//!   reads.
//! - **Liveness.** Owners renew their claims on the registry every second. A partition whose
//!   claim nobody renewed for longer than the group's session timeout has no live owner: on
//!   Apache Kafka the group has rebalanced by then; tansu 0.6 may leave a dead member's
//!   partitions assigned to it (see `tests/tansu/`), so the runner then rejoins the group.

use omni_bus::table::LogRecord;
use omni_bus::BusConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Header carrying the owner epoch on every state record the router writes.
pub const EPOCH_HEADER: &str = "omni-owner-epoch";

/// Header carrying the owning member on every state record the router writes.
pub const MEMBER_HEADER: &str = "omni-owner";

/// Key prefix of claim records in a state partition: `~owner/<epoch>/<member>`, one key per
/// claim, so compaction keeps every claim (and with it the order fencing is judged by).
pub const OWNER_PREFIX: &str = "~owner/";

/// A claim: who owns a partition, since when, and where to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    /// The partition number (of every co-partitioned input topic).
    pub partition: i32,
    /// Increases with every claim of this partition.
    pub epoch: u64,
    /// The owning instance (host, process and a random part).
    pub member: String,
    /// Base URL of the owner's HTTP server, for forwarded reads (`None`: not reachable).
    pub url: Option<String>,
    /// When the claim was made or last renewed (ms since the epoch).
    pub at: u64,
}

impl OwnerRecord {
    /// The claim's key in the state partition.
    pub fn state_key(&self) -> String {
        format!("{OWNER_PREFIX}{:020}/{}", self.epoch, self.member)
    }
}

/// The owners registry key of a partition. Only claims are written under it, never deleted:
/// a tombstone or a release written late by an old owner would hide a newer claim.
pub fn registry_key(partition: i32) -> String {
    format!("p{partition}")
}

/// Whether a key of the owners topic is a router claim (`p<n>`), not another group's
/// liveness claim sharing the topic (`omni_bus::liveness`).
pub fn is_registry_key(key: &[u8]) -> bool {
    key.strip_prefix(b"p")
        .is_some_and(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit))
}

/// The epoch a state record was written under (`0` for records written before epochs).
pub fn epoch_of(record: &LogRecord) -> u64 {
    record
        .headers
        .get(EPOCH_HEADER)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The claim a record holds, if it is a claim.
pub fn claim_of(record: &LogRecord) -> Option<OwnerRecord> {
    if !record.key.starts_with(OWNER_PREFIX) {
        return None;
    }
    serde_json::from_slice(record.value.as_deref()?).ok()
}

/// A state partition replayed with zombie writes removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fenced {
    /// Latest accepted value per key (tombstones remove keys); claims are not included.
    pub table: BTreeMap<String, Vec<u8>>,
    /// The claim in force at the end (none when the partition was never claimed).
    pub owner: Option<OwnerRecord>,
    /// Records ignored: written by an owner after a newer claim, or by a claim that lost.
    pub ignored: usize,
}

impl Fenced {
    /// The epoch of the claim in force (0 if none).
    pub fn epoch(&self) -> u64 {
        self.owner.as_ref().map_or(0, |o| o.epoch)
    }

    /// Whether a state record was written by the owner in force at its place in the log.
    fn accepts(&self, record: &LogRecord) -> bool {
        let epoch = epoch_of(record);
        if epoch != self.epoch() {
            // Older: a zombie's write after a newer claim. Newer than any claim seen: the
            // claim went before it in the log, so this cannot happen unless the log was cut;
            // keep such records rather than lose state.
            return epoch > self.epoch();
        }
        match (record.headers.get(MEMBER_HEADER), &self.owner) {
            (Some(member), Some(owner)) => member.as_slice() == owner.member.as_bytes(),
            _ => true,
        }
    }
}

/// Replays a state partition in log order, keeping only what the owner in force wrote. A
/// claim takes force only with a higher epoch than the claim in force: of two claims with one
/// epoch (two instances that both read the same last epoch), the first in the log wins, and
/// the later one's claimant backs off (see [`first_claim_wins`]).
pub fn fence(log: impl IntoIterator<Item = LogRecord>) -> Fenced {
    let mut out = Fenced::default();
    for record in log {
        if record.key.starts_with(OWNER_PREFIX) {
            match claim_of(&record) {
                Some(claim) if claim.epoch > out.epoch() => out.owner = Some(claim),
                _ => out.ignored += 1,
            }
            continue;
        }
        if !out.accepts(&record) {
            out.ignored += 1;
            continue;
        }
        match record.value {
            Some(v) => {
                out.table.insert(record.key, v);
            }
            None => {
                out.table.remove(&record.key);
            }
        }
    }
    out
}

/// Whether `mine`, written after the records `fence` read, is the claim in force: no other
/// claim of the same or a higher epoch came before it in `after` (the partition's records
/// past that read). `None`: `mine` is not among them (not readable yet).
pub fn first_claim_wins(mine: &OwnerRecord, after: &[LogRecord]) -> Option<bool> {
    for claim in after.iter().filter_map(claim_of) {
        if claim.member == mine.member && claim.epoch == mine.epoch {
            return Some(true);
        }
        if claim.epoch >= mine.epoch {
            return Some(false);
        }
    }
    None
}

/// The owners registry as this instance last read it: partition → newest claim.
#[derive(Clone, Default)]
pub struct Owners {
    claims: Arc<RwLock<BTreeMap<i32, OwnerRecord>>>,
    /// When the tail last polled the topic successfully (staleness means nothing otherwise).
    read_at: Arc<RwLock<Option<std::time::Instant>>>,
}

impl Owners {
    /// Whether the registry was read within `within` (a stale registry says nothing about
    /// which partitions have a live owner).
    pub fn fresh(&self, within: Duration) -> bool {
        self.read_at
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() <= within)
    }

    /// Partitions among `0..partitions` whose newest claim was last renewed before
    /// `stale_before` (ms since the epoch), or that nobody ever claimed.
    pub fn unrenewed(&self, partitions: usize, stale_before: u64) -> Vec<i32> {
        let claims = self.claims.read().unwrap_or_else(|p| p.into_inner());
        (0..i32::try_from(partitions).unwrap_or(i32::MAX))
            .filter(|p| claims.get(p).is_none_or(|c| c.at < stale_before))
            .collect()
    }

    /// The newest claim known for `partition`.
    pub fn get(&self, partition: i32) -> Option<OwnerRecord> {
        self.claims
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&partition)
            .cloned()
    }

    /// Records a claim read from the registry or made by this instance; an older epoch never
    /// replaces a newer one.
    pub fn record(&self, claim: OwnerRecord) {
        let mut claims = self.claims.write().unwrap_or_else(|p| p.into_inner());
        let newer = claims
            .get(&claim.partition)
            .is_none_or(|known| claim.epoch >= known.epoch);
        if newer {
            claims.insert(claim.partition, claim);
        }
    }

    /// Tails the owners topic on a thread of its own until `stop` is set, folding every claim
    /// into this registry. Errors are logged and retried: the registry only
    /// serves forwarding and an extra fence, never correctness of the state itself.
    pub fn tail(&self, bus: BusConfig, topic: String, stop: Arc<AtomicBool>) {
        let owners = self.clone();
        let spawned = std::thread::Builder::new()
            .name("router-owners".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = owners.tail_once(&bus, &topic, &stop) {
                        tracing::warn!(error = %e, topic = %topic, "reading the router owners topic failed; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the router owners reader");
        }
    }

    fn tail_once(
        &self,
        bus: &BusConfig,
        topic: &str,
        stop: &AtomicBool,
    ) -> Result<(), omni_bus::batch::ClientError> {
        omni_bus::reader::read_from_beginning(
            bus,
            "omnirouter-owners-reader",
            topic,
            stop,
            || {
                *self.read_at.write().unwrap_or_else(|p| p.into_inner()) =
                    Some(std::time::Instant::now());
            },
            |key, payload| {
                // The topic also holds other groups' liveness claims (`omni_bus::liveness`,
                // keys `<prefix>p<n>`): only `p<n>` keys are router claims.
                if !is_registry_key(key) {
                    return;
                }
                // Claims are never deleted (no tombstones): a newer claim replaces an older.
                if let Some(v) = payload {
                    match serde_json::from_slice::<OwnerRecord>(v) {
                        Ok(claim) => self.record(claim),
                        Err(e) => {
                            let key = String::from_utf8_lossy(key);
                            tracing::debug!(key = %key, error = %e, "ignoring unreadable owner record");
                        }
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: i64, key: &str, value: Option<&str>, epoch: Option<u64>) -> LogRecord {
        let mut headers = BTreeMap::new();
        if let Some(e) = epoch {
            headers.insert(EPOCH_HEADER.to_owned(), e.to_string().into_bytes());
        }
        LogRecord {
            offset,
            key: key.to_owned(),
            value: value.map(|v| v.as_bytes().to_vec()),
            headers,
        }
    }

    fn owner(epoch: u64, member: &str) -> OwnerRecord {
        OwnerRecord {
            partition: 0,
            epoch,
            member: member.into(),
            url: None,
            at: 0,
        }
    }

    fn claim(offset: i64, epoch: u64, member: &str) -> LogRecord {
        let c = owner(epoch, member);
        rec(
            offset,
            &c.state_key(),
            Some(&serde_json::to_string(&c).unwrap()),
            Some(epoch),
        )
    }

    fn by(mut r: LogRecord, member: &str) -> LogRecord {
        r.headers
            .insert(MEMBER_HEADER.to_owned(), member.as_bytes().to_vec());
        r
    }

    #[test]
    fn writes_from_before_epochs_existed_are_kept() {
        let f = fence([rec(0, "t/agent/a", Some("1"), None)]);
        assert_eq!(f.table["t/agent/a"], b"1");
        assert_eq!(f.epoch(), 0);
    }

    #[test]
    fn a_zombie_write_after_a_newer_claim_is_ignored() {
        let f = fence([
            claim(0, 1, "a"),
            by(rec(1, "t/agent/x", Some("a1"), Some(1)), "a"),
            claim(2, 2, "b"),
            by(rec(3, "t/agent/x", Some("b1"), Some(2)), "b"),
            // a did not know it lost the partition yet.
            by(rec(4, "t/agent/x", Some("a2"), Some(1)), "a"),
            by(rec(5, "t/agent/y", None, Some(1)), "a"),
        ]);
        assert_eq!(f.table["t/agent/x"], b"b1");
        assert_eq!(f.epoch(), 2);
        assert_eq!(f.owner.as_ref().unwrap().member, "b");
        assert_eq!(f.ignored, 2);
    }

    #[test]
    fn of_two_claims_with_one_epoch_the_first_wins() {
        let f = fence([
            claim(0, 1, "a"),
            claim(1, 2, "b"),
            claim(2, 2, "c"),
            by(rec(3, "t/agent/x", Some("b"), Some(2)), "b"),
            by(rec(4, "t/agent/x", Some("c"), Some(2)), "c"),
        ]);
        assert_eq!(f.owner.as_ref().unwrap().member, "b");
        assert_eq!(f.table["t/agent/x"], b"b");
        assert_eq!(f.ignored, 2);
        // Each claimant, reading what came after its own read, agrees.
        let after = [claim(1, 2, "b"), claim(2, 2, "c")];
        assert_eq!(first_claim_wins(&owner(2, "b"), &after), Some(true));
        assert_eq!(first_claim_wins(&owner(2, "c"), &after), Some(false));
        assert_eq!(first_claim_wins(&owner(3, "d"), &after), None);
    }

    #[test]
    fn tombstones_of_the_owner_in_force_remove_keys() {
        let f = fence([
            claim(0, 1, "a"),
            by(rec(1, "t/conversation/c", Some("x"), Some(1)), "a"),
            by(rec(2, "t/conversation/c", None, Some(1)), "a"),
        ]);
        assert!(f.table.is_empty());
    }

    #[test]
    fn an_older_claim_never_replaces_a_newer_one() {
        let owners = Owners::default();
        let c = |epoch: u64, member: &str| OwnerRecord {
            partition: 3,
            epoch,
            member: member.into(),
            url: None,
            at: 0,
        };
        owners.record(c(2, "b"));
        owners.record(c(1, "a"));
        assert_eq!(owners.get(3).unwrap().member, "b");
        owners.record(c(3, "a"));
        assert_eq!(owners.get(3).unwrap().member, "a");
    }

    #[test]
    fn only_p_keys_are_router_claims() {
        assert!(is_registry_key(registry_key(12).as_bytes()));
        assert!(!is_registry_key(b"outbound/p12"));
        assert!(!is_registry_key(b"p"));
        assert!(!is_registry_key(b"px"));
    }

    #[test]
    fn partitions_nobody_renewed_lately_are_listed() {
        let owners = Owners::default();
        for (partition, at) in [(0, 1_000), (1, 5_000)] {
            owners.record(OwnerRecord {
                partition,
                epoch: 1,
                member: "a".into(),
                url: None,
                at,
            });
        }
        // Partition 2 was never claimed; partition 0's claim was last renewed long ago.
        assert_eq!(owners.unrenewed(3, 4_000), vec![0, 2]);
        assert!(!owners.fresh(Duration::from_secs(1)));
    }
}
