//! omni-bus against the real broker: acknowledged sends, commit-after-processing consumers,
//! retries and skips, lag metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_bus::{BusConfig, BusMetrics, Consumer, HandlerOutcome, Producer};
use omni_e2e::Broker;
use prometheus::Registry;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn config(broker: &Broker, topic: &str) -> BusConfig {
    let mut c = BusConfig {
        bootstrap_servers: broker.bootstrap(),
        partitions: 1,
        statistics_interval_ms: 200,
        ..BusConfig::default()
    };
    c.topics.inbound = topic.to_owned();
    c
}

async fn setup(broker: &Broker, topic: &str) -> (BusConfig, Arc<BusMetrics>, Registry, Producer) {
    let cfg = config(broker, topic);
    let registry = Registry::new();
    let metrics = Arc::new(BusMetrics::register(&registry).unwrap());
    omni_bus::ensure_topics(&cfg, metrics.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    // Creating topics again is not an error.
    omni_bus::ensure_topics(&cfg, metrics.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let producer = Producer::new(&cfg, metrics.clone()).unwrap();
    producer.check_ready(Duration::from_secs(10)).await.unwrap();
    (cfg, metrics, registry, producer)
}

/// Runs a consumer in `group` until it has seen `until` records or 20 s pass.
async fn consume(
    cfg: &BusConfig,
    metrics: Arc<BusMetrics>,
    group: &str,
    until: usize,
    mut decide: impl FnMut(&str, usize) -> HandlerOutcome,
) -> Vec<String> {
    let consumer = Consumer::new(cfg, group, &[cfg.topics.inbound.as_str()], metrics).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(tokio::sync::Notify::new());
    let seen2 = seen.clone();
    let done2 = done.clone();
    let stop = async move {
        let _ = tokio::time::timeout(Duration::from_secs(20), done2.notified()).await;
    };
    consumer
        .run(
            |record| {
                let value = String::from_utf8(record.payload.unwrap_or_default()).unwrap();
                let mut s = seen2.lock().unwrap();
                s.push(value.clone());
                let outcome = decide(&value, s.len());
                if s.len() >= until {
                    done.notify_one();
                }
                async move { outcome }
            },
            stop,
        )
        .await
        .unwrap();
    let out = seen.lock().unwrap().clone();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_commits_only_processed_records_and_resumes_after_them() {
    let broker = Broker::memory();
    let (cfg, metrics, registry, producer) = setup(&broker, "bus.commit").await;
    for i in 0..6 {
        producer
            .send("bus.commit", b"acme", format!("r{i}").as_bytes())
            .await
            .unwrap();
    }
    // First member processes three records, then stops.
    let first = consume(&cfg, metrics.clone(), "g1", 3, |_, _| HandlerOutcome::Done).await;
    assert_eq!(first, ["r0", "r1", "r2"]);
    // A new member of the same group resumes after the last committed record.
    let second = consume(&cfg, metrics.clone(), "g1", 3, |_, _| HandlerOutcome::Done).await;
    assert_eq!(second, ["r3", "r4", "r5"]);

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains("omni_kafka_consumed_total{group=\"g1\",topic=\"bus.commit\"} 6"),
        "{text}"
    );
    assert!(
        text.contains("omni_kafka_produced_total{topic=\"bus.commit\"} 6"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_redelivers_the_same_record_in_order_and_skip_moves_on() {
    let broker = Broker::memory();
    let (cfg, metrics, registry, producer) = setup(&broker, "bus.retry").await;
    for v in ["a", "poison", "b"] {
        producer
            .send("bus.retry", b"acme", v.as_bytes())
            .await
            .unwrap();
    }
    let mut attempts_a = 0;
    let seen = consume(&cfg, metrics.clone(), "g2", 4, |v, _| match v {
        "a" => {
            attempts_a += 1;
            if attempts_a < 2 {
                HandlerOutcome::Retry("provider down".into())
            } else {
                HandlerOutcome::Done
            }
        }
        "poison" => HandlerOutcome::Skip("malformed".into()),
        _ => HandlerOutcome::Done,
    })
    .await;
    assert_eq!(seen, ["a", "a", "poison", "b"], "retry keeps order");
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains("omni_kafka_consume_skipped_total{group=\"g2\",topic=\"bus.retry\"} 1"),
        "{text}"
    );
    // Nothing left for the group: everything was committed.
    let again = consume(&cfg, metrics, "g2", 1, |_, _| HandlerOutcome::Done);
    let again = tokio::time::timeout(Duration::from_secs(8), again).await;
    assert!(
        again.is_err(),
        "records were redelivered after commit: {again:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_lag_is_exported_from_librdkafka_statistics() {
    let broker = Broker::memory();
    let (cfg, metrics, registry, producer) = setup(&broker, "bus.lag").await;
    for i in 0..20 {
        producer
            .send("bus.lag", b"acme", format!("{i}").as_bytes())
            .await
            .unwrap();
    }
    // A slow consumer (each record takes 250 ms, as a handler calling a provider would): it
    // keeps polling between records, and statistics (every 200 ms) report the lag behind it,
    // read here until it shows. (Statistics are served by the consumer's polls: a handler that
    // never returns would freeze the gauge.)
    let consumer = Consumer::new(&cfg, "g3", &[cfg.topics.inbound.as_str()], metrics).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let taken = Arc::new(Mutex::new(0usize));
    let run = tokio::spawn({
        let taken = taken.clone();
        async move {
            let handler = move |_record| {
                *taken.lock().unwrap() += 1;
                async move {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    HandlerOutcome::Done
                }
            };
            consumer
                .run(handler, async move {
                    let _ = stopped.await;
                })
                .await
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (value, text) = loop {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        let lag = text
            .lines()
            .find(|l| l.starts_with("omni_kafka_consumer_lag_messages{group=\"g3\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<i64>().ok());
        if let Some(value) = lag.filter(|v| *v > 0) {
            break (value, text);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no lag reported while the consumer was behind ({} of 20 taken): {text}",
            taken.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(value <= 20, "lag {value}");
    let _ = stop.send(());
    run.await.unwrap().unwrap();
    let up: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("omni_kafka_brokers_up{client=\"producer\"}"))
        .collect();
    assert_eq!(
        up,
        ["omni_kafka_brokers_up{client=\"producer\"} 1"],
        "{text}"
    );
}

/// A tail started before its topic exists follows it from the beginning: `caught_up` returns
/// only once every record written before the call was handed over, on every partition.
#[tokio::test(flavor = "multi_thread")]
async fn a_tail_is_caught_up_only_with_everything_written_before() {
    let broker = Broker::memory();
    let mut cfg = config(&broker, "omni.inbound.v1");
    cfg.partitions = 3;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    let tail = omni_bus::table::tail(&cfg, "omni.email-threads.v1", move |r| {
        s.lock().unwrap().push(r.key);
    });
    assert!(
        !tail.caught_up(Duration::from_millis(300)).await,
        "no topic yet: not caught up"
    );
    let registry = Registry::new();
    let metrics = Arc::new(BusMetrics::register(&registry).unwrap());
    omni_bus::ensure_topics(&cfg, metrics.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let producer = Producer::new(&cfg, metrics).unwrap();
    for i in 0..30 {
        producer
            .send("omni.email-threads.v1", format!("k{i}").as_bytes(), b"v")
            .await
            .unwrap();
    }
    assert!(tail.caught_up(Duration::from_secs(20)).await);
    assert_eq!(seen.lock().unwrap().len(), 30, "every record, once");
    producer
        .send("omni.email-threads.v1", b"late", b"v")
        .await
        .unwrap();
    assert!(tail.caught_up(Duration::from_secs(10)).await);
    assert_eq!(
        seen.lock().unwrap().last().map(String::as_str),
        Some("late")
    );
}

/// A tail started by time (live chat's history window) gets every record from the first one
/// written at that time, even when it sits in the middle of a producer's batch (a fetch from
/// inside a batch gets the next batch on tansu 0.6: `tests/tansu/fetch_mid_batch.py`).
#[tokio::test(flavor = "multi_thread")]
async fn a_tail_started_by_time_skips_nothing_written_since() {
    use omni_bus::tail::{StartAt, TopicTail};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};

    let broker = Broker::memory();
    let topic = "omni.inbound.v1";
    let (cfg, _metrics, _registry, _producer) = setup(&broker, topic).await;
    // Eight records in one batch (one produce request), each a second apart in record time,
    // then four more in a second batch.
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "1000")
        .create()
        .unwrap();
    let base = chrono::Utc::now().timestamp_millis() - 60_000;
    for batch in [0..8, 8..12] {
        for i in batch {
            let value = format!("r{i}");
            producer
                .send(
                    BaseRecord::to(topic)
                        .key("k")
                        .payload(&value)
                        .partition(0)
                        .timestamp(base + i * 1000),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    }
    let seen = tokio::task::spawn_blocking(move || {
        let tail = TopicTail::open(
            &cfg,
            "tail-by-time",
            &[(topic, StartAt::Since(base + 2000))],
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while std::time::Instant::now() < deadline && seen.last() != Some(&11) {
            if let Some(Ok(m)) = tail.poll(Duration::from_millis(100)) {
                seen.push(m.offset());
            }
        }
        seen
    })
    .await
    .unwrap();
    // A broker may start earlier (tansu 0.6 answers every lookup by time with offset 0);
    // from the first record written at the time on, nothing is missing or repeated.
    let since: Vec<i64> = seen.into_iter().filter(|o| *o >= 2).collect();
    assert_eq!(
        since,
        (2..12).collect::<Vec<i64>>(),
        "each record from the time on, once"
    );
}
