//! The OpenAPI document of the daemon's HTTP surface (`crates/omni-router/openapi.json`)
//! checked against the real daemon and a real Kafka-protocol broker (tansu): every documented
//! operation is called with the document's own examples, every answer must have a documented
//! status and validate against the documented schema, the documented failures (no or wrong
//! token, unknown tenant, bad bodies, a tenant not held, Kafka down) are produced for real, every
//! documented status is seen at least once, and every route the daemon serves is documented.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_e2e::{workspace, Broker, Daemon};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const TENANT: &str = "demo";
/// `tenants.demo.agent_api_token` in config/default.toml.
const AGENT_TOKEN: &str = "demo-agent-token";
/// `tenants.demo.api_token` in config/default.toml.
const INBOUND_TOKEN: &str = "demo-token";

/// Every route the daemon serves, listed by hand from `crates/omnirouter/src/server.rs` and
/// `crates/omni-router/src/api.rs`. A route added there must be added here and documented.
const SERVED: &[(&str, &str)] = &[
    ("post", "/v1/inbound/{tenant}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/tenants/{tenant}/queues"),
    ("get", "/v1/tenants/{tenant}/agents"),
    ("get", "/v1/tenants/{tenant}/conversations/{conversation}"),
    ("post", "/v1/tenants/{tenant}/replies"),
    ("post", "/v1/tenants/{tenant}/typing"),
    ("post", "/v1/tenants/{tenant}/read"),
    ("post", "/v1/tenants/{tenant}/commands"),
    (
        "post",
        "/v1/tenants/{tenant}/livechat/visitors/{visitor}/revoke",
    ),
];

/// Documented statuses no black-box test can provoke.
const UNREACHABLE: &[(&str, &str, u16)] = &[
    // The Prometheus encoder failing on the daemon's own registry.
    ("get", "/metrics", 500),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// One documented operation.
#[derive(Clone)]
struct Op {
    method: String,
    path: String,
    op: Value,
}

impl Op {
    fn label(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }

    fn key(&self) -> (String, String) {
        (self.method.clone(), self.path.clone())
    }

    fn token(&self) -> &'static str {
        if self.path.starts_with("/v1/inbound/") {
            INBOUND_TOKEN
        } else {
            AGENT_TOKEN
        }
    }
}

/// An answer from the daemon.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn media_type(&self) -> String {
        self.headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(media_type)
            .unwrap_or_default()
    }
}

fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The OpenAPI document.
struct Doc {
    doc: Value,
}

impl Doc {
    fn load() -> Self {
        let path = workspace().join("crates/omni-router/openapi.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let doc: Value = serde_json::from_str(&text).expect("openapi.json is JSON");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "an OpenAPI 3.1 document"
        );
        Self { doc }
    }

    /// `v` with local `$ref`s (to components) followed.
    fn resolve(&self, v: &Value) -> Value {
        let mut v = v.clone();
        for _ in 0..16 {
            let Some(r) = v.get("$ref").and_then(Value::as_str) else {
                return v;
            };
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("only local refs: {r}"));
            v = self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r}"))
                .clone();
        }
        panic!("$ref chain too long");
    }

    fn ops(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                if METHODS.contains(&method.as_str()) {
                    ops.push(Op {
                        method: method.clone(),
                        path: path.clone(),
                        op: op.clone(),
                    });
                }
            }
        }
        ops
    }

    fn op(&self, method: &str, path: &str) -> Op {
        self.ops()
            .into_iter()
            .find(|o| o.method == method && o.path == path)
            .unwrap_or_else(|| panic!("{method} {path} is not documented"))
    }

    /// A JSON Schema validator for a schema inside the document: the schema is wrapped in a
    /// root that also carries `components`, so `#/components/schemas/X` resolves in it.
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": self.doc["components"],
        });
        jsonschema::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("schema {schema}: {e}"))
    }

    fn assert_valid(&self, schema: &Value, instance: &Value, what: &str) {
        let validator = self.validator(schema);
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("at {}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: does not match the documented schema:\n  {}\ninstance: {instance:#}",
            errors.join("\n  ")
        );
    }

    fn statuses(&self, op: &Op) -> BTreeSet<u16> {
        op.op["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .map(|k| k.parse::<u16>().unwrap_or_else(|_| panic!("status {k}")))
            .collect()
    }

    fn response(&self, op: &Op, status: u16) -> Option<Value> {
        op.op["responses"]
            .get(status.to_string())
            .map(|r| self.resolve(r))
    }

    fn security(&self, op: &Op) -> Vec<Value> {
        op.op
            .get("security")
            .or_else(|| self.doc.get("security"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// Whether the operation documents that it needs credentials (no empty alternative).
    fn requires_auth(&self, op: &Op) -> bool {
        let security = self.security(op);
        !security.is_empty()
            && security
                .iter()
                .all(|req| req.as_object().is_some_and(|o| !o.is_empty()))
    }

    fn request_schema(&self, op: &Op) -> Option<Value> {
        op.op.get("requestBody").map(|rb| {
            let rb = self.resolve(rb);
            self.resolve(&rb["content"]["application/json"]["schema"])
        })
    }

    /// The documented request examples, by name.
    fn request_examples(&self, op: &Op) -> Vec<(String, Value)> {
        let Some(rb) = op.op.get("requestBody") else {
            return Vec::new();
        };
        let content = self.resolve(rb)["content"]["application/json"].clone();
        let mut out = Vec::new();
        if let Some(examples) = content.get("examples").and_then(Value::as_object) {
            for (name, ex) in examples {
                out.push((name.clone(), self.resolve(ex)["value"].clone()));
            }
        }
        if let Some(ex) = content.get("example") {
            out.push(("example".into(), ex.clone()));
        }
        out
    }

    /// The documented example of a path parameter (components or inline).
    fn parameter_example(&self, name: &str) -> Value {
        for op in self.ops() {
            let item = &self.doc["paths"][&op.path];
            let params = item["parameters"]
                .as_array()
                .into_iter()
                .chain(op.op["parameters"].as_array())
                .flatten();
            for p in params {
                let p = self.resolve(p);
                if p["name"] == name && p["in"] == "path" {
                    return p["example"].clone();
                }
            }
        }
        panic!("no documented example for path parameter {name}");
    }

    /// Checks an answer against the operation's documentation and returns its body (JSON, or
    /// a JSON string for text bodies).
    fn check(&self, op: &Op, answer: &Answer, what: &str) -> Value {
        let label = format!("{} ({what})", op.label());
        let documented = self.statuses(op);
        let body_text = String::from_utf8_lossy(&answer.body).into_owned();
        let Some(response) = self.response(op, answer.status) else {
            panic!(
                "{label}: status {} is not documented (documented: {documented:?}); body: {body_text}",
                answer.status
            );
        };
        if let Some(headers) = response.get("headers").and_then(Value::as_object) {
            for (name, header) in headers {
                let header = self.resolve(header);
                let value = answer
                    .headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_else(|| {
                        panic!(
                            "{label}: documented header {name} missing on {}",
                            answer.status
                        )
                    });
                if let Some(schema) = header.get("schema") {
                    let parsed = serde_json::from_str::<Value>(value)
                        .ok()
                        .filter(|v| !v.is_string())
                        .unwrap_or_else(|| Value::String(value.to_owned()));
                    self.assert_valid(schema, &parsed, &format!("{label}: header {name}"));
                }
            }
        }
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            assert!(
                answer.body.is_empty(),
                "{label}: {} documents no body, got {body_text}",
                answer.status
            );
            return Value::Null;
        };
        let got = answer.media_type();
        let (key, media) = content
            .iter()
            .find(|(k, _)| media_type(k) == got)
            .unwrap_or_else(|| {
                panic!(
                    "{label}: {} answered {got:?}, documented {:?}; body: {body_text}",
                    answer.status,
                    content.keys().collect::<Vec<_>>()
                )
            });
        let body = if media_type(key) == "application/json" {
            serde_json::from_slice::<Value>(&answer.body).unwrap_or_else(|e| {
                panic!(
                    "{label}: {} body is not JSON ({e}): {body_text}",
                    answer.status
                )
            })
        } else {
            Value::String(
                String::from_utf8(answer.body.clone())
                    .unwrap_or_else(|_| panic!("{label}: text body is not UTF-8")),
            )
        };
        let schema = self.resolve(&media["schema"]);
        self.assert_valid(
            &schema,
            &body,
            &format!("{label}: {} {key} body", answer.status),
        );
        body
    }
}

/// Replaces every string equal to `from` with `to`, anywhere in `v`.
fn substitute(v: &Value, from: &str, to: &str) -> Value {
    match v {
        Value::String(s) if s == from => Value::String(to.to_owned()),
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, from, to)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), substitute(x, from, to)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The path with its parameters filled in.
fn fill(path: &str, tenant: &str, conversation: &str) -> String {
    path.replace("{tenant}", tenant)
        .replace("{conversation}", conversation)
        .replace("{visitor}", VISITOR)
}

/// The live chat visitor revocations name (the document's example).
const VISITOR: &str = "v_01957c2b3a4e7c1d";

enum Auth<'a> {
    None,
    Bearer(&'a str),
}

enum Body {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

async fn call(daemon: &Daemon, method: &str, path: &str, auth: Auth<'_>, body: Body) -> Answer {
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut req = reqwest::Client::new()
        .request(method, daemon.url(path))
        .timeout(Duration::from_secs(30));
    if let Auth::Bearer(token) = auth {
        req = req.bearer_auth(token);
    }
    req = match body {
        Body::None => req,
        Body::Json(v) => req.json(&v),
        Body::Raw(content_type, bytes) => req.header("content-type", content_type).body(bytes),
    };
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}; log:\n{}", daemon.log()));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap().to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// Polls `GET /v1/tenants/demo/conversations/{id}` until `done` holds for its body.
async fn wait_conversation(
    daemon: &Daemon,
    conversation: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/v1/tenants/{TENANT}/conversations/{conversation}");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = String::new();
    while Instant::now() < deadline {
        let a = call(daemon, "get", &path, Auth::Bearer(AGENT_TOKEN), Body::None).await;
        if a.status == 200 {
            let body: Value = serde_json::from_slice(&a.body).unwrap();
            if done(&body) {
                return body;
            }
        }
        last = format!("{} {}", a.status, String::from_utf8_lossy(&a.body));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "conversation {conversation} never {what}; last answer: {last}\nlog:\n{}",
        daemon.log()
    );
}

fn has_event(conversation: &Value, event_type: &str) -> bool {
    conversation["history"]
        .as_array()
        .is_some_and(|h| h.iter().any(|e| e["type"] == event_type))
}

/// Records what was seen and checks it against the document.
struct Run<'a> {
    doc: &'a Doc,
    seen: BTreeSet<(String, String, u16)>,
}

impl Run<'_> {
    fn check(&mut self, op: &Op, answer: &Answer, what: &str) -> Value {
        let body = self.doc.check(op, answer, what);
        self.seen
            .insert((op.method.clone(), op.path.clone(), answer.status));
        body
    }

    /// A documented refusal with its error code.
    fn expect_error(&mut self, op: &Op, answer: &Answer, status: u16, code: &str, what: &str) {
        let body = self.check(op, answer, what);
        assert_eq!(answer.status, status, "{} ({what}): {body}", op.label());
        assert_eq!(
            body["error"]["code"],
            code,
            "{} ({what}): {body}",
            op.label()
        );
    }
}

#[test]
fn the_document_is_consistent_and_lists_every_served_route() {
    let doc = Doc::load();
    let documented: BTreeSet<(String, String)> = doc.ops().iter().map(Op::key).collect();
    let served: BTreeSet<(String, String)> = SERVED
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    assert!(missing.is_empty(), "served but not documented: {missing:?}");
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(extra.is_empty(), "documented but not served: {extra:?}");

    for op in doc.ops() {
        let label = op.label();
        assert!(op.op["operationId"].is_string(), "{label}: no operationId");
        for status in doc.statuses(&op) {
            let response = doc.response(&op, status).unwrap();
            assert!(
                response["description"].is_string(),
                "{label} {status}: no description"
            );
            let Some(content) = response.get("content").and_then(Value::as_object) else {
                continue;
            };
            for (media, m) in content {
                let schema = doc.resolve(&m["schema"]);
                // Every documented example of an answer matches its schema…
                let examples = m
                    .get("examples")
                    .and_then(Value::as_object)
                    .map(|e| {
                        e.values()
                            .map(|x| doc.resolve(x)["value"].clone())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
                    .into_iter()
                    .chain(m.get("example").cloned());
                for ex in examples {
                    doc.assert_valid(&schema, &ex, &format!("{label} {status} {media} example"));
                }
                // …and the schema is not vacuous: a stray object does not match it.
                if media == "application/json" {
                    assert!(
                        !doc.validator(&schema)
                            .is_valid(&json!({"unexpected": true})),
                        "{label} {status}: schema accepts anything"
                    );
                }
            }
        }
        let examples = doc.request_examples(&op);
        if let Some(schema) = doc.request_schema(&op) {
            assert!(
                !examples.is_empty(),
                "{label}: request body without example"
            );
            for (name, ex) in &examples {
                doc.assert_valid(&schema, ex, &format!("{label} request example {name}"));
            }
            assert!(
                !doc.validator(&schema)
                    .is_valid(&json!({"unexpected": true})),
                "{label}: request schema accepts anything"
            );
        }
    }

    every_command_variant_has_an_example(&doc);
}

/// Every command variant of omni-routing has an example, and the examples cover every variant.
fn every_command_variant_has_an_example(doc: &Doc) {
    let commands = doc.op("post", "/v1/tenants/{tenant}/commands");
    let variants: BTreeSet<String> = doc.doc["components"]["schemas"]["Command"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            doc.resolve(r)["properties"]["command"]["const"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let exemplified: BTreeSet<String> = doc
        .request_examples(&commands)
        .iter()
        .map(|(_, ex)| ex["command"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(variants, exemplified, "one example per command at least");
    assert_eq!(
        variants,
        [
            "upsert_agent",
            "remove_agent",
            "set_presence",
            "accept",
            "decline",
            "agent_replied",
            "resolve",
            "transfer",
            "reopen",
            "ready",
            "customer_left",
            "csat"
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        "the Command variants of omni-routing"
    );
}

/// The conversation the scenarios share, and the id the document's examples use for it.
struct Conversation {
    id: String,
    example: String,
}

impl Conversation {
    /// `v` with the document's example conversation id replaced by this one.
    fn substitute(&self, v: &Value) -> Value {
        substitute(v, &self.example, &self.id)
    }
}

/// One daemon on one broker, walked through every documented operation, answer and refusal.
/// The scenarios share one daemon and one record of what was seen: the last one checks that
/// every documented status was produced by some scenario.
#[tokio::test(flavor = "multi_thread")]
async fn the_running_daemon_answers_as_documented() {
    let doc = Doc::load();
    let mut run = Run {
        doc: &doc,
        seen: BTreeSet::new(),
    };
    let mut broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[("OMNI__KAFKA__PUBLISH_TIMEOUT_MS", "2000")]).await;

    let conversation = a_customer_message_is_assigned_to_an_online_agent(&mut run, &daemon).await;
    every_operation_answers_its_documented_examples(&mut run, &daemon, &conversation).await;
    every_operation_refuses_credentials_tenants_and_bodies_it_must(
        &mut run,
        &daemon,
        &conversation,
    )
    .await;
    conversation_reads_refuse_bad_and_unknown_ids(&mut run, &daemon).await;
    revocations_refuse_what_cannot_be_a_visitor(&mut run, &daemon).await;
    replies_commands_and_typing_refuse_what_cannot_be_sent(&mut run, &daemon, &conversation).await;
    oversized_and_non_json_bodies_are_refused(&mut run, &daemon).await;
    the_api_channel_refuses_a_bad_account(&mut run, &daemon).await;
    an_instance_without_a_router_answers_reads_with_503(&mut run, &broker, &conversation).await;
    broker.stop();
    with_kafka_down_writes_and_readiness_answer_503(&mut run, &daemon, &conversation).await;
    every_documented_status_was_produced(&run);
}

/// A real conversation: agent lan (vi 4, capacity 3) online, then a customer message, assigned.
/// Its id is the one the document's examples use.
async fn a_customer_message_is_assigned_to_an_online_agent(
    run: &mut Run<'_>,
    daemon: &Daemon,
) -> Conversation {
    let doc = run.doc;
    let commands = doc.op("post", "/v1/tenants/{tenant}/commands");
    let inbound = doc.op("post", "/v1/inbound/{tenant}");
    for cmd in [
        json!({"command": "upsert_agent", "agent": "lan", "skills": {"vi": 4}, "capacity": 3}),
        json!({"command": "set_presence", "agent": "lan", "presence": "online"}),
    ] {
        let a = call(
            daemon,
            "post",
            "/v1/tenants/demo/commands",
            Auth::Bearer(AGENT_TOKEN),
            Body::Json(cmd.clone()),
        )
        .await;
        run.check(&commands, &a, "set-up command");
        assert_eq!(a.status, 202, "{cmd}");
    }
    let a = call(
        daemon,
        "post",
        "/v1/inbound/demo",
        Auth::Bearer(INBOUND_TOKEN),
        Body::Json(json!({
            "contact": {"id": "cust-42", "name": "Trần Thị Bích", "language": "vi"},
            "text": "Chào shop, đơn hàng #1234 của tôi giao chưa ạ?",
            "client_message_id": "setup-1"
        })),
    )
    .await;
    let accepted = run.check(&inbound, &a, "set-up message");
    assert_eq!(a.status, 202, "{accepted}");
    let id = accepted["conversation_id"].as_str().unwrap().to_owned();
    let example = doc.parameter_example("conversation");
    assert_eq!(
        example.as_str(),
        Some(id.as_str()),
        "the documented example conversation id is the one derived for the documented example \
         contact (demo, api/default, cust-42)"
    );
    assert_eq!(
        doc.parameter_example("tenant"),
        TENANT,
        "the documented example tenant"
    );
    let first = wait_conversation(daemon, &id, "assigned to lan", |c| {
        c["state"] == "assigned" && c["agent"] == "lan" && has_event(c, "omni.routing.assigned")
    })
    .await;
    println!("conversation before the examples: {first}");
    Conversation {
        id,
        example: example.as_str().unwrap().to_owned(),
    }
}

/// Every documented operation called with the document's examples: writes first, then reads.
async fn every_operation_answers_its_documented_examples(
    run: &mut Run<'_>,
    daemon: &Daemon,
    conversation: &Conversation,
) {
    let doc = run.doc;
    let mut ops = doc.ops();
    ops.sort_by_key(|o| (o.method == "get", o.path.clone()));
    for op in &ops {
        let url = fill(&op.path, TENANT, &conversation.id);
        let auth = || {
            if doc.requires_auth(op) {
                Auth::Bearer(op.token())
            } else {
                Auth::None
            }
        };
        if op.op.get("requestBody").is_some() {
            for (name, example) in &doc.request_examples(op) {
                let body = conversation.substitute(example);
                let a = call(daemon, &op.method, &url, auth(), Body::Json(body)).await;
                let got = run.check(op, &a, &format!("example {name}"));
                assert!(
                    (200..300).contains(&a.status),
                    "{} example {name}: {} {got}",
                    op.label(),
                    a.status
                );
            }
            continue;
        }
        if op.path.contains("/conversations/") {
            // The example commands resolved it (after replies and rejections): wait until the
            // router applied them, so the history has a variety of events to check.
            wait_conversation(daemon, &conversation.id, "resolved", |c| {
                has_event(c, "omni.routing.resolved")
            })
            .await;
        }
        let a = call(daemon, &op.method, &url, auth(), Body::None).await;
        let got = run.check(op, &a, "documented request");
        assert!(
            (200..300).contains(&a.status),
            "{}: {} {got}",
            op.label(),
            a.status
        );
        if op.path.contains("/conversations/") {
            let types: Vec<&str> = got["history"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["type"].as_str())
                .collect();
            println!("conversation history checked: {types:?}");
            assert_eq!(got["id"], conversation.id.as_str());
        }
        if op.path == "/metrics" {
            assert!(got.as_str().unwrap().contains("omni_build_info"));
        }
    }
}

/// The refusals every operation documents: no or wrong credentials, the other API's token, an
/// unknown tenant, and malformed, empty or stray bodies.
async fn every_operation_refuses_credentials_tenants_and_bodies_it_must(
    run: &mut Run<'_>,
    daemon: &Daemon,
    conversation: &Conversation,
) {
    let doc = run.doc;
    for op in &doc.ops() {
        let url = fill(&op.path, TENANT, &conversation.id);
        let body = || match doc.request_examples(op).first() {
            Some((_, ex)) => Body::Json(conversation.substitute(ex)),
            None => Body::None,
        };
        if doc.requires_auth(op) {
            let a = call(daemon, &op.method, &url, Auth::None, body()).await;
            run.expect_error(op, &a, 401, "missing_credentials", "no credentials");
            let wrong = Auth::Bearer("wrong-token");
            let a = call(daemon, &op.method, &url, wrong, body()).await;
            run.expect_error(op, &a, 401, "bad_credentials", "wrong token");
            // The other surface's token is not this one's.
            let other = if op.token() == AGENT_TOKEN {
                INBOUND_TOKEN
            } else {
                AGENT_TOKEN
            };
            let a = call(daemon, &op.method, &url, Auth::Bearer(other), body()).await;
            run.expect_error(op, &a, 401, "bad_credentials", "the other API's token");
        }
        if op.path.contains("{tenant}") {
            let url = fill(&op.path, "nobody", &conversation.id);
            let a = call(daemon, &op.method, &url, Auth::Bearer(op.token()), body()).await;
            run.expect_error(op, &a, 404, "unknown_tenant", "unknown tenant");
        }
        if op.op.get("requestBody").is_some() {
            let token = || Auth::Bearer(op.token());
            let malformed = Body::Raw("application/json", b"{\"contact\": {".to_vec());
            let a = call(daemon, &op.method, &url, token(), malformed).await;
            run.expect_error(op, &a, 400, "malformed", "malformed JSON");
            let a = call(daemon, &op.method, &url, token(), Body::Json(json!({}))).await;
            run.expect_error(op, &a, 400, "missing_field", "empty object");
            let stray = Body::Json(json!({"unexpected": true}));
            let a = call(daemon, &op.method, &url, token(), stray).await;
            let body = run.check(op, &a, "stray object");
            assert_eq!(a.status, 400, "{} stray object: {body}", op.label());
        }
    }
}

/// A conversation id that is not a UUID is refused; an unknown one is not found.
async fn conversation_reads_refuse_bad_and_unknown_ids(run: &mut Run<'_>, daemon: &Daemon) {
    let conv_op = run
        .doc
        .op("get", "/v1/tenants/{tenant}/conversations/{conversation}");
    let agent = || Auth::Bearer(AGENT_TOKEN);
    let path = "/v1/tenants/demo/conversations/not-a-uuid";
    let a = call(daemon, "get", path, agent(), Body::None).await;
    run.expect_error(&conv_op, &a, 400, "invalid_field", "not a UUID");
    let path = "/v1/tenants/demo/conversations/00000000-0000-4000-8000-000000000000";
    let a = call(daemon, "get", path, agent(), Body::None).await;
    let what = "unknown conversation";
    run.expect_error(&conv_op, &a, 404, "unknown_conversation", what);
}

/// A live chat revocation of something that cannot be a visitor id is refused.
async fn revocations_refuse_what_cannot_be_a_visitor(run: &mut Run<'_>, daemon: &Daemon) {
    let op = run.doc.op(
        "post",
        "/v1/tenants/{tenant}/livechat/visitors/{visitor}/revoke",
    );
    let path = "/v1/tenants/demo/livechat/visitors/a%0Ab/revoke";
    let a = call(daemon, "post", path, Auth::Bearer(AGENT_TOKEN), Body::None).await;
    run.expect_error(&op, &a, 400, "invalid_visitor", "a control character");
}

/// A reply with nothing to send or nobody to send it to, an unknown command, and typing or a
/// read mark on a channel that has none are refused.
async fn replies_commands_and_typing_refuse_what_cannot_be_sent(
    run: &mut Run<'_>,
    daemon: &Daemon,
    conversation: &Conversation,
) {
    let doc = run.doc;
    let agent = || Auth::Bearer(AGENT_TOKEN);
    let replies = doc.op("post", "/v1/tenants/{tenant}/replies");
    let (_, text_reply) = doc
        .request_examples(&replies)
        .into_iter()
        .find(|(_, ex)| ex.get("attachments").is_none())
        .expect("a documented text-only reply");
    let reply = conversation.substitute(&text_reply);
    let mut blank = reply.clone();
    blank["text"] = json!("  ");
    let path = "/v1/tenants/demo/replies";
    let a = call(daemon, "post", path, agent(), Body::Json(blank)).await;
    let what = "blank text, no attachment";
    run.expect_error(&replies, &a, 400, "missing_field", what);
    let mut nobody = reply.clone();
    nobody["recipient"] = json!("");
    let a = call(daemon, "post", path, agent(), Body::Json(nobody)).await;
    run.expect_error(&replies, &a, 400, "missing_field", "blank recipient");

    let commands = doc.op("post", "/v1/tenants/{tenant}/commands");
    let promote = Body::Json(json!({"command": "promote", "agent": "lan"}));
    let a = call(
        daemon,
        "post",
        "/v1/tenants/demo/commands",
        agent(),
        promote,
    )
    .await;
    run.expect_error(&commands, &a, 400, "malformed", "unknown command");

    let typing = doc.op("post", "/v1/tenants/{tenant}/typing");
    let on_zalo = Body::Json(json!({
        "conversation_id": conversation.id, "channel": {"kind": "zalo", "account": "1"},
        "recipient": "u", "on": true
    }));
    let a = call(daemon, "post", "/v1/tenants/demo/typing", agent(), on_zalo).await;
    let what = "typing on a channel without typing";
    run.expect_error(&typing, &a, 400, "invalid_field", what);

    let read = doc.op("post", "/v1/tenants/{tenant}/read");
    let on_sms = Body::Json(json!({
        "conversation_id": conversation.id, "channel": {"kind": "sms", "account": "+1"},
        "recipient": "u"
    }));
    let a = call(daemon, "post", "/v1/tenants/demo/read", agent(), on_sms).await;
    run.expect_error(&read, &a, 400, "invalid_field", "a read mark on SMS");
}

/// Bodies over `server.max_body_bytes` and bodies that are not JSON, on the agent API and on
/// the API channel.
async fn oversized_and_non_json_bodies_are_refused(run: &mut Run<'_>, daemon: &Daemon) {
    let huge = || format!("{{\"text\": \"{}\"}}", "x".repeat(70_000)).into_bytes();
    for path in [
        "/v1/tenants/demo/replies",
        "/v1/tenants/demo/typing",
        "/v1/tenants/demo/read",
        "/v1/tenants/demo/commands",
    ] {
        let op = run.doc.op("post", &path.replace("demo", "{tenant}"));
        let agent = || Auth::Bearer(AGENT_TOKEN);
        let a = call(
            daemon,
            "post",
            path,
            agent(),
            Body::Raw("application/json", huge()),
        )
        .await;
        run.expect_error(&op, &a, 413, "payload_too_large", "over max_body_bytes");
        let plain = Body::Raw("text/plain", b"hi".to_vec());
        let a = call(daemon, "post", path, agent(), plain).await;
        run.expect_error(&op, &a, 415, "unsupported_media_type", "text/plain");
    }
    let inbound = run.doc.op("post", "/v1/inbound/{tenant}");
    let token = || Auth::Bearer(INBOUND_TOKEN);
    let huge = json!({"contact": {"id": "c"}, "text": "x".repeat(70_000)});
    let a = call(
        daemon,
        "post",
        "/v1/inbound/demo",
        token(),
        Body::Json(huge),
    )
    .await;
    let what = "over max_body_bytes";
    run.expect_error(&inbound, &a, 413, "payload_too_large", what);
    let plain = Body::Raw("text/plain", b"hi".to_vec());
    let a = call(daemon, "post", "/v1/inbound/demo", token(), plain).await;
    run.expect_error(&inbound, &a, 415, "unsupported_media_type", "text/plain");
}

/// The API channel refuses an account name it could not route on.
async fn the_api_channel_refuses_a_bad_account(run: &mut Run<'_>, daemon: &Daemon) {
    let inbound = run.doc.op("post", "/v1/inbound/{tenant}");
    let body = Body::Json(json!({"contact": {"id": "c"}, "text": "hi", "account": "bad account!"}));
    let token = Auth::Bearer(INBOUND_TOKEN);
    let a = call(daemon, "post", "/v1/inbound/demo", token, body).await;
    run.expect_error(&inbound, &a, 400, "invalid_field", "bad account");
}

/// An instance without a router holds no tenant: its reads answer 503 `tenant_not_owned`.
async fn an_instance_without_a_router_answers_reads_with_503(
    run: &mut Run<'_>,
    broker: &Broker,
    conversation: &Conversation,
) {
    let no_router = Daemon::start(broker, &[("OMNI__ROUTER__ENABLED", "false")]).await;
    let reads = run.doc.ops().into_iter();
    for op in reads.filter(|o| o.path.starts_with("/v1/tenants/") && o.method == "get") {
        let url = fill(&op.path, TENANT, &conversation.id);
        let agent = Auth::Bearer(AGENT_TOKEN);
        let a = call(&no_router, "get", &url, agent, Body::None).await;
        let what = "instance without a router";
        run.expect_error(&op, &a, 503, "tenant_not_owned", what);
    }
}

/// With the broker stopped, every write answers 503 `kafka_unavailable` and readiness 503,
/// while liveness stays 200.
async fn with_kafka_down_writes_and_readiness_answer_503(
    run: &mut Run<'_>,
    daemon: &Daemon,
    conversation: &Conversation,
) {
    let doc = run.doc;
    // Every write through Kafka; `/read` goes straight to the provider and documents no 503.
    let writes = doc.ops().into_iter().filter(|o| o.method == "post");
    for op in writes.filter(|o| doc.statuses(o).contains(&503)) {
        let op = &op;
        let url = fill(&op.path, TENANT, &conversation.id);
        // Revocations have no body.
        let body = match doc.request_examples(op).into_iter().next() {
            Some((_, example)) => {
                let mut body = conversation.substitute(&example);
                if body.get("client_message_id").is_some() {
                    // Not one already published (a repeat is answered from the dedupe cache).
                    body["client_message_id"] = json!("while-kafka-is-down");
                }
                Body::Json(body)
            }
            None => Body::None,
        };
        let token = Auth::Bearer(op.token());
        let a = call(daemon, "post", &url, token, body).await;
        run.expect_error(op, &a, 503, "kafka_unavailable", "Kafka down");
    }
    // A read mark never touches Kafka: still taken.
    let read = doc.op("post", "/v1/tenants/{tenant}/read");
    let (_, example) = doc.request_examples(&read).into_iter().next().unwrap();
    let body = Body::Json(conversation.substitute(&example));
    let url = fill(&read.path, TENANT, &conversation.id);
    let a = call(daemon, "post", &url, Auth::Bearer(read.token()), body).await;
    run.check(&read, &a, "Kafka down");
    assert_eq!(a.status, 202);
    let readyz = doc.op("get", "/readyz");
    let a = call(daemon, "get", "/readyz", Auth::None, Body::None).await;
    let body = run.check(&readyz, &a, "Kafka down");
    assert_eq!(a.status, 503, "{body}");
    let healthz = doc.op("get", "/healthz");
    let a = call(daemon, "get", "/healthz", Auth::None, Body::None).await;
    run.check(&healthz, &a, "Kafka down");
    assert_eq!(a.status, 200, "liveness does not depend on Kafka");
}

/// Every documented (operation, status) pair was produced by the daemon in some scenario.
fn every_documented_status_was_produced(run: &Run<'_>) {
    let mut unseen = Vec::new();
    for op in &run.doc.ops() {
        for status in run.doc.statuses(op) {
            let key = (op.method.clone(), op.path.clone(), status);
            let exempt = UNREACHABLE
                .iter()
                .any(|(m, p, s)| *m == op.method && *p == op.path && *s == status);
            if !exempt && !run.seen.contains(&key) {
                unseen.push(format!("{} {status}", op.label()));
            }
        }
    }
    assert!(
        unseen.is_empty(),
        "documented but never produced: {unseen:?}"
    );
    println!(
        "{} (operation, status) pairs produced and validated against openapi.json",
        run.seen.len()
    );
}
