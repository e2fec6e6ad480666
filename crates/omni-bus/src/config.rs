//! The `[kafka]` settings and the librdkafka properties derived from them.

use omni_core::Topics;
use rdkafka::ClientConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::BusError;

/// Kafka settings as written in the config file (`[kafka]`).
///
/// librdkafka properties pass through unchanged from `librdkafka` (both clients), `producer` and
/// `consumer` tables. Keys are written with `_` for `.` (`security_protocol = "SASL_SSL"`) so they
/// work as TOML keys and as environment variables (`OMNI__KAFKA__LIBRDKAFKA__SASL_PASSWORD`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `host:port[,host:port…]` of the cluster.
    pub bootstrap_servers: String,
    /// `client.id` sent to the brokers (shows in broker logs and quotas).
    pub client_id: String,
    /// Topic names.
    pub topics: Topics,
    /// Partitions for topics created at start-up. Tenants spread over partitions, so this caps how
    /// many router instances can share the work.
    pub partitions: i32,
    /// Replication factor for topics created at start-up (3 in production clusters).
    pub replication_factor: i32,
    /// Create missing topics at start-up (turn off where an operator provisions them).
    pub create_topics: bool,
    /// How long a publish may wait for the broker's acknowledgement before the caller gets an
    /// error (and a provider a 503). The producer enforces it itself and then purges what the
    /// timed-out producer still holds, so a message that failed is never sent later behind the
    /// caller's back (see `omni_bus::producer`).
    pub publish_timeout_ms: u64,
    /// `linger.ms`: how long the producer waits to batch. Under `acks=all` throughput is
    /// concurrency divided by latency, so keep it small.
    pub linger_ms: u64,
    /// `fetch.wait.max.ms` for consumers (small: the local broker waits about half of it).
    pub fetch_wait_max_ms: u64,
    /// Interval of librdkafka statistics, which feed the lag and health metrics.
    pub statistics_interval_ms: u64,
    /// librdkafka properties for every client (SASL, TLS…), `_` standing for `.`.
    pub librdkafka: BTreeMap<String, String>,
    /// librdkafka properties for producers only.
    pub producer: BTreeMap<String, String>,
    /// librdkafka properties for consumers only.
    pub consumer: BTreeMap<String, String>,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            client_id: "omnirouter".into(),
            topics: Topics::default(),
            partitions: 12,
            replication_factor: 1,
            create_topics: true,
            publish_timeout_ms: 5_000,
            linger_ms: 1,
            fetch_wait_max_ms: 20,
            statistics_interval_ms: 5_000,
            librdkafka: BTreeMap::new(),
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
        }
    }
}

/// Properties the daemon's delivery guarantee rests on; overriding them is refused.
const PINNED_PRODUCER: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("partitioner", "murmur2_random"),
    // librdkafka never times a record out itself: after a timeout an idempotent producer bumps
    // its epoch on its own, which tansu 0.6 (SQLite) does not survive. The producer enforces
    // `publish_timeout_ms` and replaces itself instead (see `omni_bus::producer`).
    ("message.timeout.ms", "0"),
];

/// Properties that would commit offsets before processing, or split a tenant's co-partitioned
/// topics across instances; refused for consumers.
const PINNED_CONSUMER: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("partition.assignment.strategy", "range"),
];

impl BusConfig {
    /// Checks every value without touching the network; the error names the bad key.
    pub fn validate(&self) -> Result<(), BusError> {
        let bad = |key: &str, reason: &str| BusError::Config {
            key: format!("kafka.{key}"),
            reason: reason.into(),
        };
        if self.bootstrap_servers.trim().is_empty() {
            return Err(bad("bootstrap_servers", "must not be empty"));
        }
        if self.partitions < 1 {
            return Err(bad("partitions", "must be at least 1"));
        }
        if self.replication_factor < 1 {
            return Err(bad("replication_factor", "must be at least 1"));
        }
        if self.publish_timeout_ms == 0 {
            return Err(bad("publish_timeout_ms", "must be greater than 0"));
        }
        for (name, value) in [
            ("topics.inbound", &self.topics.inbound),
            ("topics.outbound", &self.topics.outbound),
            ("topics.delivery", &self.topics.delivery),
            ("topics.commands", &self.topics.commands),
            ("topics.routing", &self.topics.routing),
            ("topics.router_state", &self.topics.router_state),
            ("topics.email_checkpoints", &self.topics.email_checkpoints),
            ("topics.email_threads", &self.topics.email_threads),
            ("topics.email_published", &self.topics.email_published),
            ("topics.sms_parts", &self.topics.sms_parts),
            ("topics.router_owners", &self.topics.router_owners),
            ("topics.outbound_progress", &self.topics.outbound_progress),
            ("topics.zalo_tokens", &self.topics.zalo_tokens),
            ("topics.livechat_presence", &self.topics.livechat_presence),
            (
                "topics.livechat_revocations",
                &self.topics.livechat_revocations,
            ),
            ("topics.dead_letter", &self.topics.dead_letter),
        ] {
            let valid = !value.is_empty()
                && value.len() <= 249
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
            if !valid {
                return Err(bad(
                    name,
                    "a topic name is 1-249 chars of a-z A-Z 0-9 . _ -",
                ));
            }
        }
        let both: Vec<(&str, &str)> = PINNED_PRODUCER
            .iter()
            .chain(PINNED_CONSUMER)
            .copied()
            .collect();
        for (table, map, pinned) in [
            ("librdkafka", &self.librdkafka, both.as_slice()),
            ("producer", &self.producer, PINNED_PRODUCER),
            ("consumer", &self.consumer, PINNED_CONSUMER),
        ] {
            for (key, value) in map {
                let prop = property_name(key);
                let path = format!("{table}.{key}");
                if let Some((_, required)) = pinned.iter().find(|(p, _)| *p == prop) {
                    if value != required {
                        return Err(bad(
                            &path,
                            &format!(
                                "omnirouter requires {prop}={required} for its delivery guarantee"
                            ),
                        ));
                    }
                }
                if matches!(prop.as_str(), "bootstrap.servers" | "group.id") {
                    return Err(bad(
                        &path,
                        "set this with kafka.bootstrap_servers / the component's group instead",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The publish deadline.
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    /// librdkafka config for the producer: idempotent, `acks=all`, no message timeout of its
    /// own (the producer enforces the publish deadline), then the operator's pass-through
    /// properties.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.base_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", "0")
            .set("compression.type", "lz4")
            // The partitioning contract (see `partitioner`): keyed records go where the Java
            // client and kafkajs put them.
            .set("partitioner", "murmur2_random");
        apply(&mut c, &self.librdkafka);
        apply(&mut c, &self.producer);
        c
    }

    /// librdkafka config for a consumer in `group`: no auto commit (we commit after
    /// processing), earliest offset for new groups, short fetch waits, and the eager `range`
    /// assignor: it gives one member the same partition numbers of every co-partitioned topic
    /// it subscribes to (a sticky or round-robin assignor would split a tenant's inbound,
    /// outbound and commands partitions across instances), and an eager rebalance revokes
    /// everything before anything is assigned again, so two members never hold one partition.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut c = self.base_config();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string())
            .set("partition.assignment.strategy", "range");
        apply(&mut c, &self.librdkafka);
        apply(&mut c, &self.consumer);
        c
    }

    /// librdkafka config for admin and metadata calls.
    pub fn admin_config(&self) -> ClientConfig {
        let mut c = self.base_config();
        apply(&mut c, &self.librdkafka);
        c
    }

    fn base_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            .set(
                "statistics.interval.ms",
                self.statistics_interval_ms.to_string(),
            );
        c
    }
}

/// Maps a config key (`security_protocol`) to a librdkafka property (`security.protocol`).
/// Keys already written with dots pass unchanged.
fn property_name(key: &str) -> String {
    key.replace('_', ".")
}

fn apply(c: &mut ClientConfig, props: &BTreeMap<String, String>) {
    for (k, v) in props {
        c.set(property_name(k), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_through_keys_become_librdkafka_properties() {
        let mut cfg = BusConfig::default();
        cfg.librdkafka
            .insert("security_protocol".into(), "SASL_SSL".into());
        cfg.producer.insert("linger_ms".into(), "7".into());
        let p = cfg.producer_config();
        assert_eq!(p.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(p.get("linger.ms"), Some("7"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("acks"), Some("all"));
        let c = cfg.consumer_config("g");
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("linger.ms"), None);
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
    }

    #[test]
    fn weakening_the_delivery_guarantee_is_refused() {
        let mut cfg = BusConfig::default();
        cfg.producer.insert("acks".into(), "1".into());
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.producer.acks"), "{err}");

        let mut cfg = BusConfig::default();
        cfg.librdkafka
            .insert("enable_auto_commit".into(), "true".into());
        assert!(cfg.validate().is_err());

        // librdkafka's own timeout would bump the producer epoch (see `producer`).
        assert_eq!(
            BusConfig::default()
                .producer_config()
                .get("message.timeout.ms"),
            Some("0")
        );
        let mut cfg = BusConfig::default();
        cfg.producer
            .insert("message_timeout_ms".into(), "5000".into());
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.producer.message_timeout_ms"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cfg = BusConfig {
            partitions: 0,
            ..BusConfig::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("kafka.partitions"));
        let mut cfg = BusConfig::default();
        cfg.topics.inbound = "bad topic".into();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("kafka.topics.inbound"));
        assert!(BusConfig::default().validate().is_ok());
    }
}
