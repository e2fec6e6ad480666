//! The event contract against real records: the daemon is driven through a whole conversation
//! (agents, a customer message, rejected commands with and without a conversation, SLA timers
//! and the router's ticks, replies and a failed delivery, a resolution with its CSAT survey and
//! the customer's answer), then every record on the inbound, commands, routing, outbound and
//! delivery topics is validated against the AsyncAPI message payload of its type (the schemas
//! in `crates/omni-core/schemas/`, `$ref`s resolved by their `$id`s), must be a message the
//! AsyncAPI document lists on that topic, and must name its data schema's `$id` as
//! `dataschema`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use jsonschema::{Retrieve, Uri, Validator};
use omni_e2e::{read_log, workspace, Broker, Daemon, LogRead};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BASE: &str = "https://omnirouter.dev/schemas/v1/";
const TOPICS: [&str; 5] = [
    "omni.inbound.v1",
    "omni.commands.v1",
    "omni.routing.v1",
    "omni.outbound.v1",
    "omni.delivery.v1",
];

fn schemas_dir() -> PathBuf {
    workspace().join("crates/omni-core/schemas")
}

fn load(file: &str) -> Value {
    let text = std::fs::read_to_string(schemas_dir().join(file)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The schema files by their `$id`s, offline; any other URI is refused.
struct SchemaDir;

impl Retrieve for SchemaDir {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri
            .as_str()
            .strip_prefix(BASE)
            .filter(|n| n.ends_with(".schema.json") && !n.contains('/'))
            .ok_or_else(|| format!("refusing to retrieve {}", uri.as_str()))?;
        let text = std::fs::read_to_string(schemas_dir().join(name))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// What the AsyncAPI document says about one event type.
struct Message {
    /// The payload schema, compiled.
    payload: Validator,
    /// The `$id` of its data schema.
    data_id: String,
    /// The topics whose channel lists the message.
    topics: BTreeSet<String>,
}

/// Every message of `asyncapi.json`, by event type.
fn messages() -> BTreeMap<String, Message> {
    let doc = load("asyncapi.json");
    let mut out = BTreeMap::new();
    for (name, message) in doc["components"]["messages"].as_object().unwrap() {
        let payload_schema = &message["payload"];
        let event_type = payload_schema["properties"]["type"]["const"]
            .as_str()
            .unwrap()
            .to_owned();
        let payload = jsonschema::options()
            .should_validate_formats(true)
            .should_ignore_unknown_formats(false)
            .with_base_uri(format!("{BASE}asyncapi.json"))
            .with_retriever(SchemaDir)
            .build(payload_schema)
            .unwrap_or_else(|e| panic!("payload of {name}: {e}"));
        let file = payload_schema["properties"]["data"]["$ref"]
            .as_str()
            .unwrap()
            .strip_prefix("./")
            .unwrap();
        let data_id = load(file)["$id"].as_str().unwrap().to_owned();
        let pointer = format!("#/components/messages/{name}");
        let topics = doc["channels"]
            .as_object()
            .unwrap()
            .values()
            .filter(|c| {
                c["messages"]
                    .as_object()
                    .unwrap()
                    .values()
                    .any(|m| m["$ref"] == pointer)
            })
            .map(|c| c["address"].as_str().unwrap().to_owned())
            .collect();
        let previous = out.insert(
            event_type.clone(),
            Message {
                payload,
                data_id,
                topics,
            },
        );
        assert!(previous.is_none(), "{event_type} has two messages");
    }
    out
}

struct Api<'a> {
    daemon: &'a Daemon,
}

impl Api<'_> {
    async fn post(&self, path: &str, token: &str, body: Value) -> Value {
        let r = reqwest::Client::new()
            .post(self.daemon.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, 202, "{path}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn command(&self, body: Value) {
        self.post("/v1/tenants/demo/commands", "demo-agent-token", body)
            .await;
    }

    async fn customer(&self, text: &str) -> String {
        let v = self
            .post(
                "/v1/inbound/demo",
                "demo-token",
                json!({"contact": {"id": "cust-contract", "language": "vi"}, "text": text,
                       "client_message_id": format!("contract-{text}")}),
            )
            .await;
        v["conversation_id"].as_str().unwrap().to_owned()
    }

    async fn reply(&self, conversation: &str, channel: Value, text: &str) {
        self.post(
            "/v1/tenants/demo/replies",
            "demo-agent-token",
            json!({"conversation_id": conversation, "channel": channel,
                   "recipient": "cust-contract", "text": text, "agent_id": "lan"}),
        )
        .await;
    }
}

fn json_of(r: &LogRead) -> Value {
    serde_json::from_slice(r.value.as_deref().unwrap_or_default()).unwrap_or(Value::Null)
}

/// Reads `topic` until `done` holds for its records (at most 60 s).
async fn wait_for(bootstrap: &str, topic: &str, what: &str, done: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (b, t) = (bootstrap.to_owned(), topic.to_owned());
        let log = tokio::task::block_in_place(|| read_log(&b, &t, Duration::from_millis(300)));
        let values: Vec<Value> = log.iter().map(json_of).collect();
        if done(&values) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not on {topic} in 60 s; types read: {:?}",
            values.iter().map(|v| &v["type"]).collect::<Vec<_>>()
        );
    }
}

fn has(values: &[Value], event_type: &str) -> bool {
    values.iter().any(|v| v["type"] == event_type)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_record_of_a_real_conversation_follows_the_asyncapi_contract() {
    let messages = messages();
    let broker = Broker::memory();
    let daemon = Daemon::start(
        &broker,
        &[
            ("OMNI__ROUTER__TICK_INTERVAL_MS", "200"),
            (
                "OMNI__TENANTS__DEMO__ROUTING__QUEUES__GENERAL__SLA__FIRST_RESPONSE_SECS",
                "2",
            ),
            (
                "OMNI__TENANTS__DEMO__ROUTING__QUEUES__GENERAL__SLA__AT_RISK_PERCENT",
                "50",
            ),
            (
                "OMNI__TENANTS__DEMO__ROUTING__QUEUES__GENERAL__CSAT_SURVEY__QUESTION",
                "Anh/chị hài lòng không? Trả lời từ 1 đến 5.",
            ),
        ],
    )
    .await;
    let bootstrap = broker.bootstrap();
    let api = Api { daemon: &daemon };

    // Agents: one online; a command about an agent nobody knows, and an accept of a
    // conversation nobody knows, are rejected (without, and with, a subject).
    api.command(
        json!({"command": "upsert_agent", "agent": "lan", "skills": {"vi": 4}, "capacity": 3}),
    )
    .await;
    api.command(json!({"command": "set_presence", "agent": "lan", "presence": "online"}))
        .await;
    api.command(json!({"command": "set_presence", "agent": "ghost", "presence": "online"}))
        .await;
    let unknown = "5b0d6c1e-2f3a-5b4c-9d8e-7f6a5b4c3d2e";
    api.command(json!({"command": "accept", "agent": "lan", "conversation": unknown}))
        .await;

    // A customer writes; the conversation is assigned and, unanswered, its first-response
    // target (2 s) comes close and passes: the router's ticks fire those timers.
    let conversation = api.customer("Chào shop").await;
    wait_for(&bootstrap, "omni.routing.v1", "the SLA breach", |v| {
        has(v, "omni.routing.assigned") && has(v, "omni.routing.sla_breached")
    })
    .await;

    // The agent answers (on the customer's channel, and once on a Messenger page this tenant
    // does not have, which fails), resolves, and the customer answers the survey.
    api.reply(
        &conversation,
        json!({"kind": "api", "account": "default"}),
        "Dạ, shop chào bạn ạ",
    )
    .await;
    api.reply(
        &conversation,
        json!({"kind": "messenger", "account": "104857600123456"}),
        "Dạ, shop chào bạn ạ",
    )
    .await;
    api.command(json!({"command": "resolve", "conversation": conversation}))
        .await;
    wait_for(&bootstrap, "omni.routing.v1", "the survey", |v| {
        has(v, "omni.routing.csat_survey")
    })
    .await;
    assert_eq!(api.customer("5").await, conversation);

    // Everything that flow writes is on its topic.
    let expected: [(&str, &[&str]); 5] = [
        ("omni.inbound.v1", &["omni.message.received"]),
        ("omni.commands.v1", &["omni.command", "omni.router.tick"]),
        (
            "omni.routing.v1",
            &[
                "omni.routing.queued",
                "omni.routing.assigned",
                "omni.routing.sla_at_risk",
                "omni.routing.sla_breached",
                "omni.routing.rejected",
                "omni.routing.resolved",
                "omni.routing.csat_survey",
                "omni.routing.csat_answered",
            ],
        ),
        ("omni.outbound.v1", &["omni.message.send"]),
        ("omni.delivery.v1", &["omni.delivery.updated"]),
    ];
    for (topic, types) in expected {
        wait_for(&bootstrap, topic, "the flow's events", |v| {
            types.iter().all(|t| has(v, t))
        })
        .await;
    }
    wait_for(&bootstrap, "omni.routing.v1", "both rejections", |v| {
        let rejected: Vec<&Value> = v
            .iter()
            .filter(|e| e["type"] == "omni.routing.rejected")
            .collect();
        rejected.iter().any(|e| e.get("subject").is_none())
            && rejected.iter().any(|e| e["subject"] == unknown)
    })
    .await;
    wait_for(
        &bootstrap,
        "omni.outbound.v1",
        "two replies and the survey",
        |v| {
            v.iter()
                .filter(|e| e["type"] == "omni.message.send")
                .count()
                >= 3
        },
    )
    .await;

    // Every record, whatever its type, against the contract.
    let mut checked: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut records = 0;
    for topic in TOPICS {
        let log =
            tokio::task::block_in_place(|| read_log(&bootstrap, topic, Duration::from_millis(500)));
        assert!(!log.is_empty(), "nothing on {topic}");
        for record in &log {
            let value = json_of(record);
            let what = format!("{topic} offset {} ({})", record.offset, value["type"]);
            assert_eq!(record.key, b"demo", "{what}: key");
            assert_eq!(value["tenant"], "demo", "{what}: tenant");
            let event_type = value["type"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: no type in {value}"));
            let message = messages
                .get(event_type)
                .unwrap_or_else(|| panic!("{what}: no AsyncAPI message for {event_type}"));
            assert!(
                message.topics.contains(topic),
                "{what}: the AsyncAPI document does not list {event_type} on {topic} but on {:?}",
                message.topics
            );
            let errors: Vec<String> = message
                .payload
                .iter_errors(&value)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{what} does not follow its message's payload:\n  {}\n{value:#}",
                errors.join("\n  ")
            );
            assert_eq!(
                value["dataschema"].as_str(),
                Some(message.data_id.as_str()),
                "{what}: dataschema"
            );
            checked
                .entry(topic)
                .or_default()
                .insert(event_type.to_owned());
            records += 1;
        }
    }
    println!("{records} records checked: {checked:?}");

    // The rejection of a command about no agent the router knows has no subject.
    let routing = tokio::task::block_in_place(|| {
        read_log(&bootstrap, "omni.routing.v1", Duration::from_millis(300))
    });
    let ghost = routing
        .iter()
        .map(json_of)
        .find(|e| {
            e["type"] == "omni.routing.rejected"
                && e["data"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("ghost"))
        })
        .expect("the rejection of the command about ghost");
    assert!(ghost.get("subject").is_none(), "{ghost}");
    assert_eq!(ghost["data"]["conversation"], Value::Null);
    // Two customer messages, five commands and a tick, nine routing decisions, two replies and
    // the survey question, a delivery.
    let at_least = 2 + 6 + 9 + 3 + 1;
    assert!(records >= at_least, "{records}");
}
