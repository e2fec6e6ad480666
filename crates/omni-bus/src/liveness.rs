//! Every partition of a consumed topic has a live owner, even on a broker that forgets to
//! rebalance after a member died.
//!
//! Apache Kafka rebalances a group once a dead member's session expired, so its partitions go
//! to the survivors. tansu 0.6 does not always: it re-forms the group with the same generation
//! and tells only the survivor whose heartbeat noticed the expiry to rejoin, so the dead
//! member's partitions can stay assigned to nobody (`tests/tansu/session_expiry.py`). The
//! router's own group has claims for that (`omni-router`'s ownership); [`Liveness`] is the same
//! for any other [`crate::Consumer`] (the outbound dispatcher's group):
//!
//! - every member renews, once a second, a small claim per partition its [`PartitionGate`]
//!   holds, on a compacted registry topic (the router owners topic, under a key prefix of its
//!   own: `<prefix>p<n>`, value `<ms since the epoch> <member>`, never JSON, so the router's
//!   reader, which also skips such keys, can never take it for a router claim);
//! - every member follows the registry ([`crate::table::tail`]); once it has read everything
//!   written to it before the check (caught up within 2 s) and has run for longer than the
//!   patience, a partition it does not hold whose claim nobody renewed for
//!   `patience` (`session.timeout.ms` + 5 s) has no live owner, and the member leaves and
//!   rejoins its group ([`crate::Consumer::rejoin_handle`], counted in
//!   `omni_kafka_group_rejoins_total{group}`), which makes the coordinator rebalance with the
//!   live members. It then waits another `patience` before it may rejoin again.
//!
//! On Apache Kafka the rebalance has happened long before the patience runs out, so it never
//! fires; when it does, it costs one rebalance. The claims carry no authority: who may send is
//! still only what the group assigned (the gate), so a stale or lost claim can at worst cause
//! one extra rebalance, never two owners.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

use crate::config::BusConfig;
use crate::gate::PartitionGate;
use crate::producer::{OutRecord, Producer};
use crate::table::{tail, LogRecord};

/// How often a member renews its claims.
const RENEWAL: Duration = Duration::from_secs(1);

/// How long a check waits for the registry to be read up to its end: a view that lags says
/// nothing about who renewed lately.
const CATCH_UP: Duration = Duration::from_secs(2);

/// Keeps one consumer group's partitions of one topic owned by live members. See the module
/// docs.
pub struct Liveness {
    /// Where to connect the registry's reader.
    pub bus: BusConfig,
    /// Writes the renewals.
    pub producer: Producer,
    /// The compacted registry topic (the router owners topic).
    pub registry: String,
    /// Key prefix of this group's claims in the registry, e.g. `outbound/`.
    pub prefix: String,
    /// This member, for the claims (logs and debugging only).
    pub member: String,
    /// The consumed topic whose partitions must all have an owner.
    pub topic: String,
    /// Its partition count.
    pub partitions: usize,
    /// What this member holds now.
    pub gate: Arc<PartitionGate>,
    /// Asks the consumer to leave and rejoin its group.
    pub rejoin: Arc<Notify>,
    /// How long a partition may go without a renewed claim: `session.timeout.ms` + 5 s.
    pub patience: Duration,
}

/// Newest renewal per partition (ms since the epoch), as read from the registry.
type Renewals = Arc<Mutex<BTreeMap<i32, u64>>>;

impl Liveness {
    /// Renews this member's claims and watches for partitions without a live owner until
    /// `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let renewals: Renewals = Arc::default();
        let tail = {
            let (renewals, prefix) = (renewals.clone(), format!("{}p", self.prefix));
            tail(&self.bus, &self.registry, move |record: LogRecord| {
                if let Some((partition, at)) =
                    parse(&prefix, record.key.as_bytes(), record.value.as_deref())
                {
                    let mut r = renewals.lock().unwrap_or_else(|p| p.into_inner());
                    let known = r.entry(partition).or_insert(at);
                    *known = (*known).max(at);
                }
            })
        };
        let started = Instant::now();
        let mut rejoined: Option<Instant> = None;
        let mut interval = tokio::time::interval(RENEWAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = interval.tick() => {}
            }
            let held: Vec<i32> = self
                .partition_numbers()
                .filter(|p| self.gate.holds(&self.topic, *p))
                .collect();
            self.renew(&held, &renewals).await;
            let calm = rejoined.is_none_or(|t| t.elapsed() > self.patience);
            if !calm || started.elapsed() <= self.patience || !tail.caught_up(CATCH_UP).await {
                continue;
            }
            let stale_before = wall_clock_ms()
                .saturating_sub(u64::try_from(self.patience.as_millis()).unwrap_or(u64::MAX));
            let orphans: Vec<i32> = {
                let r = renewals.lock().unwrap_or_else(|p| p.into_inner());
                self.partition_numbers()
                    .filter(|p| !held.contains(p))
                    .filter(|p| r.get(p).is_none_or(|at| *at < stale_before))
                    .collect()
            };
            if orphans.is_empty() {
                continue;
            }
            tracing::warn!(topic = %self.topic, partitions = ?orphans,
                patience_secs = self.patience.as_secs(),
                "partitions without a live owner: rejoining the group so they are assigned again");
            rejoined = Some(Instant::now());
            self.rejoin.notify_one();
        }
    }

    fn partition_numbers(&self) -> impl Iterator<Item = i32> {
        0..i32::try_from(self.partitions).unwrap_or(i32::MAX)
    }

    /// Writes a claim with the time now for every partition held.
    async fn renew(&self, held: &[i32], renewals: &Renewals) {
        if held.is_empty() {
            return;
        }
        let now = wall_clock_ms();
        let values: Vec<(String, String)> = held
            .iter()
            .map(|p| {
                (
                    format!("{}p{p}", self.prefix),
                    format!("{now} {}", self.member),
                )
            })
            .collect();
        let records: Vec<OutRecord<'_>> = values
            .iter()
            .map(|(key, value)| OutRecord {
                topic: &self.registry,
                partition: None,
                key: key.as_bytes(),
                payload: Some(value.as_bytes()),
                headers: &[],
            })
            .collect();
        match self.producer.send_batch(&records).await {
            Ok(()) => {
                let mut r = renewals.lock().unwrap_or_else(|p| p.into_inner());
                for p in held {
                    r.insert(*p, now);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, topic = %self.topic, "renewing partition claims failed")
            }
        }
    }
}

/// A claim of this group's registry: `(partition, renewed at)`.
fn parse(prefix: &str, key: &[u8], value: Option<&[u8]>) -> Option<(i32, u64)> {
    let partition = std::str::from_utf8(key)
        .ok()?
        .strip_prefix(prefix)?
        .parse()
        .ok()?;
    let value = std::str::from_utf8(value?).ok()?;
    let at = value.split(' ').next()?.parse().ok()?;
    Some((partition, at))
}

/// `session.timeout.ms` of the consumers `bus` configures (`consumer.*`, else `librdkafka.*`,
/// else librdkafka's default of 45 s).
pub fn session_timeout(bus: &BusConfig) -> Duration {
    let ms = [&bus.consumer, &bus.librdkafka]
        .iter()
        .flat_map(|m| m.iter())
        .find(|(k, _)| k.replace('_', ".") == "session.timeout.ms")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(45_000);
    Duration::from_millis(ms)
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_groups_claims_are_read() {
        assert_eq!(
            parse("outbound/p", b"outbound/p3", Some(b"1700 host-1-ab")),
            Some((3, 1700))
        );
        // A router claim, another group's, a tombstone, garbage.
        assert_eq!(parse("outbound/p", b"p3", Some(b"{\"partition\":3}")), None);
        assert_eq!(parse("outbound/p", b"other/p3", Some(b"1700 x")), None);
        assert_eq!(parse("outbound/p", b"outbound/p3", None), None);
        assert_eq!(parse("outbound/p", b"outbound/p3", Some(b"soon x")), None);
    }
}
