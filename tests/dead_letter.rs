//! The tolerant reader and the dead-letter topic against the real daemon and broker: a CRM's
//! records with extension attributes (`traceparent`) and fields this version does not know are
//! used; a record that cannot be used is never dropped silently. It lands on
//! `omni.dead-letter.v1` with its original bytes and the reason, and the CRM hears of it: a
//! command as `omni.routing.rejected`, a reply as a `failed` delivery (`invalid_message`).

use omni_e2e::{command_event, metric_value, read_log, uuid_like, Broker, Daemon, LogRead};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const DEAD_LETTER: &str = "omni.dead-letter.v1";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Writes raw `(topic, key, value)` records as a Java-partitioned CRM would, each with a
/// `traceparent` header, and waits for the broker's acknowledgements.
fn produce_raw(bootstrap: &str, records: &[(&str, &str, Vec<u8>)]) {
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("acks", "all")
        .create()
        .unwrap();
    for (topic, key, value) in records {
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "traceparent",
            value: Some(TRACEPARENT),
        });
        producer
            .send(
                BaseRecord::to(topic)
                    .key(*key)
                    .payload(value)
                    .headers(headers),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    assert_eq!(producer.flush(Duration::from_secs(30)), Ok(()));
}

/// Reads `topic` until `done` holds for what was read (bounded).
async fn wait_for_log(
    bootstrap: &str,
    topic: &str,
    what: &str,
    done: impl Fn(&[LogRead]) -> bool,
) -> Vec<LogRead> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (b, t) = (bootstrap.to_owned(), topic.to_owned());
        let log = tokio::task::block_in_place(|| read_log(&b, &t, Duration::from_millis(500)));
        if done(&log) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not on {topic} in 60 s; read {} record(s)",
            log.len()
        );
    }
}

fn json_of(r: &LogRead) -> Value {
    serde_json::from_slice(r.value.as_deref().unwrap_or_default()).unwrap_or(Value::Null)
}

fn header<'a>(r: &'a LogRead, name: &str) -> &'a str {
    std::str::from_utf8(r.headers.get(name).map_or(&[][..], Vec::as_slice)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn records_it_cannot_use_are_dead_lettered_with_why_and_answered() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;
    let bootstrap = broker.bootstrap();

    let not_json = b"{\"specversion\": \"1.0\", not json".to_vec();
    let mut unknown_command = command_event("demo", json!({"command": "teleport", "agent": "lan"}));
    unknown_command["id"] = json!(uuid_like());
    let reply_id = uuid_like();
    let conversation = uuid_like();
    let reply_without_recipient = json!({
        "specversion": "1.0", "id": reply_id, "source": "/crm/java", "type": "omni.message.send",
        "time": chrono::Utc::now().to_rfc3339(), "subject": conversation,
        "datacontenttype": "application/json", "tenant": "demo",
        "data": {"tenant": "demo", "conversation_id": conversation,
                 "channel": {"kind": "messenger", "account": "page-1"}, "text": "Dạ"},
    });
    let unknown_command_bytes = serde_json::to_vec(&unknown_command).unwrap();
    let reply_bytes = serde_json::to_vec(&reply_without_recipient).unwrap();
    produce_raw(
        &bootstrap,
        &[
            ("omni.commands.v1", "demo", not_json.clone()),
            ("omni.commands.v1", "demo", unknown_command_bytes.clone()),
            ("omni.outbound.v1", "demo", reply_bytes.clone()),
        ],
    );

    // Each is on the dead-letter topic once, byte for byte, with its headers and why.
    let letters = wait_for_log(&bootstrap, DEAD_LETTER, "three dead letters", |log| {
        log.len() >= 3
    })
    .await;
    assert_eq!(letters.len(), 3, "one dead letter per record");
    for (original, topic, consumer, why) in [
        (&not_json, "omni.commands.v1", "router", "malformed"),
        (
            &unknown_command_bytes,
            "omni.commands.v1",
            "router",
            "teleport",
        ),
        (
            &reply_bytes,
            "omni.outbound.v1",
            "omnirouter-outbound",
            "recipient",
        ),
    ] {
        let letter = letters
            .iter()
            .find(|l| l.value.as_ref() == Some(original))
            .unwrap_or_else(|| panic!("no dead letter of the {topic} record ({why})"));
        assert_eq!(letter.key, b"demo");
        assert_eq!(header(letter, "traceparent"), TRACEPARENT);
        assert_eq!(header(letter, "omni-dead-letter-topic"), topic);
        assert_eq!(header(letter, "omni-dead-letter-consumer"), consumer);
        assert!(
            header(letter, "omni-dead-letter-reason").contains(why),
            "{topic}: reason {:?} does not say {why}",
            header(letter, "omni-dead-letter-reason")
        );
        assert!(header(letter, "omni-dead-letter-offset")
            .parse::<i64>()
            .is_ok());
    }

    // The CRM hears of both commands as rejections, and of the reply as a failed delivery.
    let routing = wait_for_log(&bootstrap, "omni.routing.v1", "two rejections", |log| {
        log.iter()
            .filter(|r| json_of(r)["type"] == "omni.routing.rejected")
            .count()
            >= 2
    })
    .await;
    let rejections: Vec<Value> = routing
        .iter()
        .map(json_of)
        .filter(|e| e["type"] == "omni.routing.rejected")
        .collect();
    assert_eq!(rejections.len(), 2, "{rejections:?}");
    for r in &rejections {
        assert_eq!(r["tenant"], "demo");
        assert!(r.get("subject").is_none(), "no conversation: {r}");
        assert!(r["data"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("undecodable omni.commands.v1 record"));
    }
    let deliveries = wait_for_log(&bootstrap, "omni.delivery.v1", "the failed reply", |log| {
        log.iter()
            .any(|r| json_of(r)["data"]["outbound_event_id"] == reply_id.as_str())
    })
    .await;
    let failed = deliveries
        .iter()
        .map(json_of)
        .find(|e| e["data"]["outbound_event_id"] == reply_id.as_str())
        .unwrap();
    assert_eq!(failed["data"]["status"], "failed");
    assert_eq!(failed["data"]["reason"], "invalid_message");
    assert_eq!(failed["data"]["conversation_id"], conversation.as_str());
    assert!(failed["data"]["detail"]
        .as_str()
        .unwrap()
        .contains("recipient"));

    let m = daemon.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "omni_kafka_dead_letters_total",
            &[
                "group=\"omnirouter-outbound\"",
                "topic=\"omni.outbound.v1\""
            ]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "omni_kafka_dead_letters_total",
            &["group=\"router\"", "topic=\"omni.commands.v1\""]
        ),
        2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crm_record_with_extension_attributes_and_new_fields_is_used() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;
    let mut upsert = command_event(
        "demo",
        json!({"command": "upsert_agent", "agent": "lan", "skills": {"vi": 4}, "capacity": 3,
               "x_team": "north"}),
    );
    upsert["traceparent"] = json!(TRACEPARENT);
    upsert["crmrecordid"] = json!("0035g00000XyZ");
    // A reply from a newer CRM: read, and sent (here to an account the tenant lacks, so its
    // fate is a failed delivery that says so, proof it was read).
    let reply_id = uuid_like();
    let conversation = uuid_like();
    let reply = json!({
        "specversion": "1.0", "id": reply_id, "source": "/crm/java", "type": "omni.message.send",
        "time": chrono::Utc::now().to_rfc3339(), "subject": conversation,
        "datacontenttype": "application/json", "tenant": "demo", "traceparent": TRACEPARENT,
        "data": {"tenant": "demo", "conversation_id": conversation,
                 "channel": {"kind": "whatsapp", "account": "no-such-number"},
                 "recipient": "84901234567", "text": "Dạ", "x_priority": "high"},
    });
    produce_raw(
        &broker.bootstrap(),
        &[
            (
                "omni.commands.v1",
                "demo",
                serde_json::to_vec(&upsert).unwrap(),
            ),
            (
                "omni.outbound.v1",
                "demo",
                serde_json::to_vec(&reply).unwrap(),
            ),
        ],
    );
    let deliveries = wait_for_log(
        &broker.bootstrap(),
        "omni.delivery.v1",
        "the reply's fate",
        |log| {
            log.iter()
                .any(|r| json_of(r)["data"]["outbound_event_id"] == reply_id.as_str())
        },
    )
    .await;
    let fate = deliveries
        .iter()
        .map(json_of)
        .find(|e| e["data"]["outbound_event_id"] == reply_id.as_str())
        .unwrap();
    assert!(
        ["channel_not_configured", "account_not_configured"]
            .contains(&fate["data"]["reason"].as_str().unwrap_or_default()),
        "{fate}"
    );
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let agents: Value = client
            .get(daemon.url("/v1/tenants/demo/agents"))
            .bearer_auth("demo-agent-token")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        let listed = agents["agents"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["id"] == "lan" && x["capacity"] == 3));
        if listed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never appeared: {agents}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing was dead-lettered.
    let b = broker.bootstrap();
    let letters = tokio::task::block_in_place(|| read_log(&b, DEAD_LETTER, Duration::from_secs(1)));
    assert!(letters.is_empty(), "{} dead letter(s)", letters.len());
}
