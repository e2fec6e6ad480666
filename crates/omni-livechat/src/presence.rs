//! The per-IP socket cap over every replica: each replica publishes how many sockets it holds
//! per client IP (hashed) on a small compacted topic, and every replica tails that topic.
//!
//! # Design note: gossip counts, admit against the sum
//! A socket is admitted when the IP's sockets here plus the last counts the other live
//! replicas published for it stay under `max_connections_per_ip`. Each replica publishes one
//! snapshot record keyed by its replica id (a fresh id per process): at once when a socket of
//! it opens or closes (changes during a publish are coalesced into the next one) and every
//! heartbeat. A replica not heard from within the expiry (a few heartbeats) no longer counts,
//! and any replica then deletes its key (a tombstone), so the compacted topic holds live
//! replicas only; a replica that stops cleanly deletes its own key at once.
//!
//! Why this and not the alternatives: dividing the cap by the replica count refuses a visitor
//! whose sockets the load balancer happens to put on one replica; forwarding each admission
//! to an owner of the IP adds a network hop to every connect. Counts on Kafka cost one small
//! record per change and heartbeat, need no coordination, and are exact once propagated.
//!
//! The window: sockets opened on different replicas within one propagation (a publish and a
//! fetch, tens of milliseconds) are admitted against counts that miss each other, so up to
//! one extra socket per replica can get in. A replica killed without a goodbye keeps its
//! sockets' slots taken until the expiry. A replica that starts reads the topic from the
//! beginning and counts what it finds for one expiry (a dead replica's last snapshot errs on
//! the side of refusing).
//!
//! IPs are never published: the key is `HMAC-SHA256(livechat.ip_hash_secret, ip)` cut to 64
//! bits (without the secret, a fixed key: still no address on the topic, but IPv4 hashes could
//! be reversed by trying every address).

use omni_core::Secret;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::Livechat;

/// The key used without `livechat.ip_hash_secret`.
const DEFAULT_IP_KEY: &[u8] = b"omnirouter-livechat-presence";

/// Hashes client IPs for the presence topic, the same way on every replica.
#[derive(Clone)]
pub struct IpHasher {
    key: Vec<u8>,
}

impl IpHasher {
    /// A hasher keyed with `secret` (or the fixed key).
    pub fn new(secret: Option<&Secret>) -> Self {
        Self {
            key: secret.map_or_else(
                || DEFAULT_IP_KEY.to_vec(),
                |s| s.expose().as_bytes().to_vec(),
            ),
        }
    }

    /// The IP's 64-bit key.
    pub fn hash(&self, ip: IpAddr) -> u64 {
        // Map IPv4-mapped IPv6 addresses to IPv4, so both spellings count as one client.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let hex = omni_channel::signature::hmac_sha256_hex(&self.key, ip.to_string().as_bytes());
        u64::from_str_radix(hex.get(..16).unwrap_or("0"), 16).unwrap_or(0)
    }
}

/// What one replica publishes: its open sockets per hashed IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The publishing replica (also the record key).
    pub replica: String,
    /// When it was taken (Unix ms; for people reading the topic, not for expiry).
    pub at_ms: i64,
    /// Every socket the replica holds.
    pub sockets: u32,
    /// Sockets per IP key (16 hex digits), IPs with none left out.
    pub ips: BTreeMap<String, u32>,
}

impl Snapshot {
    /// A snapshot of `counts` (IP key, sockets).
    pub fn new(replica: &str, at_ms: i64, counts: &[(u64, u32)]) -> Self {
        let ips: BTreeMap<String, u32> = counts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(h, n)| (format!("{h:016x}"), *n))
            .collect();
        Self {
            replica: replica.to_owned(),
            at_ms,
            sockets: ips.values().sum(),
            ips,
        }
    }
}

/// The other replicas' counts as last heard.
struct Remote {
    heard: Instant,
    sockets: u32,
    ips: HashMap<u64, u32>,
    /// A tombstone for it was already asked for.
    forgotten: bool,
}

/// Every other replica's last snapshot, and when it came. Pure: time is passed in.
pub struct PresenceTable {
    me: String,
    expiry: Duration,
    replicas: HashMap<String, Remote>,
}

impl PresenceTable {
    /// An empty table of replica `me` (whose own records are ignored: its own counts are
    /// read from its hub).
    pub fn new(me: &str, expiry: Duration) -> Self {
        Self {
            me: me.to_owned(),
            expiry,
            replicas: HashMap::new(),
        }
    }

    /// Applies one record of the topic: a snapshot, or a tombstone (`None`). A record that
    /// does not parse is ignored.
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>, now: Instant) {
        if key == self.me {
            return;
        }
        let Some(value) = value else {
            self.replicas.remove(key);
            return;
        };
        let Ok(snapshot) = serde_json::from_slice::<Snapshot>(value) else {
            tracing::debug!(replica = %key, "unreadable live chat presence record ignored");
            return;
        };
        let ips = snapshot
            .ips
            .iter()
            .filter_map(|(h, n)| Some((u64::from_str_radix(h, 16).ok()?, *n)))
            .collect();
        self.replicas.insert(
            key.to_owned(),
            Remote {
                heard: now,
                sockets: snapshot.sockets,
                ips,
                forgotten: false,
            },
        );
    }

    fn live(&self, now: Instant) -> impl Iterator<Item = &Remote> {
        self.replicas
            .values()
            .filter(move |r| now.saturating_duration_since(r.heard) < self.expiry)
    }

    /// Sockets the other live replicas hold for the IP key `hash`.
    pub fn remote_count(&self, hash: u64, now: Instant) -> u32 {
        self.live(now)
            .map(|r| r.ips.get(&hash).copied().unwrap_or(0))
            .sum()
    }

    /// The other live replicas, and the sockets they hold.
    pub fn remote_totals(&self, now: Instant) -> (usize, u32) {
        self.live(now)
            .fold((0, 0), |(n, s), r| (n + 1, s.saturating_add(r.sockets)))
    }

    /// The replicas that expired and were not yet asked to be forgotten (their keys are to
    /// be deleted from the topic); each is returned once.
    pub fn take_expired(&mut self, now: Instant) -> Vec<String> {
        let expiry = self.expiry;
        self.replicas
            .iter_mut()
            .filter(|(_, r)| !r.forgotten && now.saturating_duration_since(r.heard) >= expiry)
            .map(|(k, r)| {
                r.forgotten = true;
                k.clone()
            })
            .collect()
    }
}

/// The replica's presence: its id, the IP hasher, and the table of the others.
pub struct Presence {
    /// This replica's id (the key of its records): fresh per process.
    pub me: String,
    /// Hashes client IPs.
    pub hasher: IpHasher,
    table: Mutex<PresenceTable>,
}

impl Presence {
    /// A presence with a fresh replica id.
    pub fn new(secret: Option<&Secret>, expiry: Duration) -> Self {
        let me = format!("lc-{}", uuid::Uuid::now_v7().simple());
        Self {
            table: Mutex::new(PresenceTable::new(&me, expiry)),
            me,
            hasher: IpHasher::new(secret),
        }
    }

    /// Sockets other live replicas hold for `hash`.
    pub fn remote_count(&self, hash: u64) -> u32 {
        lock(&self.table).remote_count(hash, Instant::now())
    }

    fn table(&self) -> MutexGuard<'_, PresenceTable> {
        lock(&self.table)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tails the presence topic from the beginning until `stop` (blocking: its own thread).
/// Retries until the topic exists; until then the cap counts this replica only.
pub fn run_reader(chat: Arc<Livechat>, stop: Arc<AtomicBool>) {
    crate::tail_until_stopped(
        &stop,
        "live chat presence cannot read kafka yet, retrying (the per-IP cap counts this replica only)",
        || tail(&chat, &stop),
    );
}

fn tail(chat: &Livechat, stop: &AtomicBool) -> Result<(), omni_bus::BusError> {
    use omni_bus::tail::{StartAt, TopicTail};

    let bus = &chat.bus;
    let topic = bus.topics.livechat_presence.as_str();
    let group = format!("omnirouter-livechat-presence-{}", chat.presence.me);
    let consumer = TopicTail::open(bus, &group, &[(topic, StartAt::Beginning)])?;
    tracing::info!(replica = %chat.presence.me, "live chat presence reading {topic}");
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                chat.presence
                    .table()
                    .apply(key, m.payload(), Instant::now());
            }
            Some(Err(e)) => tracing::warn!(
                error = &e as &dyn std::error::Error,
                "live chat presence read error"
            ),
            None => {}
        }
        update_gauges(chat);
    }
    Ok(())
}

/// Sets the presence gauges from the table and the hub.
fn update_gauges(chat: &Livechat) {
    let (replicas, remote) = chat.presence.table().remote_totals(Instant::now());
    let own: u32 = chat.hub.ip_counts().iter().map(|(_, n)| n).sum();
    chat.metrics
        .presence_replicas
        .set(i64::try_from(replicas + 1).unwrap_or(i64::MAX));
    chat.metrics
        .presence_sockets
        .set(i64::from(own.saturating_add(remote)));
}

/// Publishes this replica's counts on every change and every heartbeat, deletes the keys of
/// expired replicas, and on `stop` deletes its own key (then signals `done`).
pub async fn run_publisher(
    chat: Arc<Livechat>,
    stop: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    done: std::sync::mpsc::Sender<()>,
) {
    let topic = chat.bus.topics.livechat_presence.clone();
    let me = chat.presence.me.clone();
    let mut tick = tokio::time::interval(chat.settings.presence_heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {}
            () = chat.hub.ips_changed() => {}
            () = wake.notified() => continue,
        }
        let snapshot = Snapshot::new(
            &me,
            chrono::Utc::now().timestamp_millis(),
            &chat.hub.ip_counts(),
        );
        let Ok(payload) = serde_json::to_vec(&snapshot) else {
            continue;
        };
        match chat.sink.publish(&topic, me.as_bytes(), &payload).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("live chat presence published again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "live chat presence not published (other replicas count this one's sockets until it expires)");
            }
            Err(_) => {}
        }
        let expired = chat.presence.table().take_expired(Instant::now());
        for key in expired {
            tracing::info!(replica = %key, "live chat replica expired from presence");
            let _ = chat.sink.delete(&topic, key.as_bytes()).await;
        }
    }
    match chat.sink.delete(&topic, me.as_bytes()).await {
        Ok(()) => tracing::info!(replica = %me, "live chat presence withdrawn"),
        Err(e) => tracing::warn!(error = %e, "live chat presence not withdrawn (it expires)"),
    }
    let _ = done.send(());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(replica: &str, counts: &[(u64, u32)]) -> Vec<u8> {
        serde_json::to_vec(&Snapshot::new(replica, 0, counts)).unwrap()
    }

    #[test]
    fn remote_counts_sum_live_replicas_and_skip_this_one() {
        let t0 = Instant::now();
        let mut table = PresenceTable::new("me", Duration::from_secs(3));
        table.apply("a", Some(&snapshot("a", &[(7, 2), (9, 1)])), t0);
        table.apply("b", Some(&snapshot("b", &[(7, 1)])), t0);
        table.apply("me", Some(&snapshot("me", &[(7, 5)])), t0);
        table.apply("junk", Some(b"not json"), t0);
        assert_eq!(table.remote_count(7, t0), 3);
        assert_eq!(table.remote_count(9, t0), 1);
        assert_eq!(table.remote_count(8, t0), 0);
        assert_eq!(table.remote_totals(t0), (2, 4));
        // A newer snapshot replaces the replica's counts; a tombstone removes it.
        table.apply("a", Some(&snapshot("a", &[(9, 1)])), t0);
        assert_eq!(table.remote_count(7, t0), 1);
        table.apply("b", None, t0);
        assert_eq!(table.remote_count(7, t0), 0);
    }

    #[test]
    fn a_replica_not_heard_from_expires_and_is_forgotten_once() {
        let t0 = Instant::now();
        let mut table = PresenceTable::new("me", Duration::from_secs(3));
        table.apply("a", Some(&snapshot("a", &[(7, 2)])), t0);
        table.apply("b", Some(&snapshot("b", &[(7, 1)])), t0);
        let t1 = t0 + Duration::from_secs(2);
        table.apply("b", Some(&snapshot("b", &[(7, 1)])), t1);
        assert!(table.take_expired(t1).is_empty());
        let t2 = t0 + Duration::from_secs(3);
        assert_eq!(table.remote_count(7, t2), 1, "only b is still live");
        assert_eq!(table.take_expired(t2), ["a"]);
        assert!(table.take_expired(t2).is_empty(), "asked once");
        // Heard again (it was only slow): it counts again.
        table.apply("a", Some(&snapshot("a", &[(7, 2)])), t2);
        assert_eq!(table.remote_count(7, t2), 3);
    }

    #[test]
    fn ip_keys_are_keyed_stable_and_never_the_address() {
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let a = IpHasher::new(Some(&Secret::new("k1")));
        let b = IpHasher::new(Some(&Secret::new("k2")));
        assert_eq!(a.hash(ip), a.hash(ip));
        assert_ne!(a.hash(ip), b.hash(ip));
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(a.hash(mapped), a.hash(ip), "one client, two spellings");
        let record = String::from_utf8(snapshot("x", &[(a.hash(ip), 1)])).unwrap();
        assert!(!record.contains("203.0.113.9"), "{record}");
        assert!(!record.contains("cb00:7109"), "{record}");
    }
}
