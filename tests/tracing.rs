//! Traces end to end: a customer message posted with a W3C `traceparent` keeps its trace id
//! through Kafka (the inbound record, the router's decision), a CRM continuing that trace on its
//! reply carries it through the delivery, and the daemon's spans for each step reach an
//! OTLP/HTTP collector (a local stand-in that keeps what it is sent) as one trace, parent by
//! parent.

use axum::routing::post;
use omni_e2e::{free_port, read_log, Broker, Daemon, LogRead};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The spans an OTLP/HTTP JSON collector received, flattened.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    /// Listens on 127.0.0.1 and returns its base URL.
    fn start(&self) -> String {
        let port = free_port();
        let spans = self.spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: axum::body::Bytes| {
                let spans = spans.clone();
                async move {
                    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let mut kept = spans.lock().unwrap();
                    for rs in request["resourceSpans"].as_array().into_iter().flatten() {
                        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                            for span in ss["spans"].as_array().into_iter().flatten() {
                                let mut span = span.clone();
                                span["service"] = rs["resource"]["attributes"].clone();
                                kept.push(span);
                            }
                        }
                    }
                    "{}"
                }
            }),
        );
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        tokio::spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
        format!("http://127.0.0.1:{port}")
    }

    fn named(&self, name: &str) -> Vec<Value> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == name && s["traceId"] == TRACE)
            .cloned()
            .collect()
    }
}

fn traceparent(r: &LogRead) -> String {
    String::from_utf8(r.headers.get("traceparent").cloned().unwrap_or_default()).unwrap()
}

fn trace_of(tp: &str) -> &str {
    tp.split('-').nth(1).unwrap_or_default()
}

fn span_of(tp: &str) -> &str {
    tp.split('-').nth(2).unwrap_or_default()
}

/// Reads `topic` until a record whose event passes `want` is there (bounded).
async fn record_where(bootstrap: &str, topic: &str, want: impl Fn(&Value) -> bool) -> LogRead {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (b, t) = (bootstrap.to_owned(), topic.to_owned());
        let log = tokio::task::block_in_place(|| read_log(&b, &t, Duration::from_millis(300)));
        if let Some(r) = log.into_iter().find(|r| {
            serde_json::from_slice::<Value>(r.value.as_deref().unwrap_or_default())
                .is_ok_and(|e| want(&e))
        }) {
            return r;
        }
        assert!(Instant::now() < deadline, "no matching record on {topic}");
    }
}

async fn agent_command(daemon: &Daemon, body: Value) {
    let r = reqwest::Client::new()
        .post(daemon.url_for("/v1/tenants/demo/commands"))
        .bearer_auth("demo-agent-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_id_survives_webhook_kafka_routing_and_delivery() {
    let collector = Collector::default();
    let endpoint = collector.start();
    let broker = Broker::memory();
    let daemon = Daemon::start(
        &broker,
        &[
            ("OMNI__TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
            ("OMNI__TELEMETRY__EXPORT_INTERVAL_MS", "100"),
        ],
    )
    .await;
    let bootstrap = broker.bootstrap();
    agent_command(
        &daemon,
        json!({"command": "upsert_agent", "agent": "lan", "skills": {"vi": 4}, "capacity": 3}),
    )
    .await;
    agent_command(
        &daemon,
        json!({"command": "set_presence", "agent": "lan", "presence": "online"}),
    )
    .await;

    // The customer's message arrives inside the caller's trace.
    let caller = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let r = reqwest::Client::new()
        .post(daemon.url("/v1/inbound/demo"))
        .bearer_auth("demo-token")
        .header("traceparent", &caller)
        .json(
            &json!({"contact": {"id": "cust-1", "language": "vi"}, "text": "Chào shop",
                      "client_message_id": "m-1"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let conversation = r.json::<Value>().await.unwrap()["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // On Kafka: the message and the router's decision carry the trace.
    let inbound = record_where(&bootstrap, "omni.inbound.v1", |e| {
        e["subject"] == conversation.as_str()
    })
    .await;
    let inbound_tp = traceparent(&inbound);
    assert_eq!(trace_of(&inbound_tp), TRACE, "{inbound_tp}");
    let assigned = record_where(&bootstrap, "omni.routing.v1", |e| {
        e["type"] == "omni.routing.assigned" && e["subject"] == conversation.as_str()
    })
    .await;
    let decision_tp = traceparent(&assigned);
    assert_eq!(trace_of(&decision_tp), TRACE, "{decision_tp}");
    assert_ne!(
        span_of(&decision_tp),
        span_of(&inbound_tp),
        "the router's own span"
    );

    // The CRM continues the trace of the decision on its reply (to an account the tenant lacks,
    // so the delivery fails at once and says so).
    let r = reqwest::Client::new()
        .post(daemon.url_for("/v1/tenants/demo/replies"))
        .bearer_auth("demo-agent-token")
        .header("traceparent", &decision_tp)
        .json(&json!({"conversation_id": conversation, "channel": {"kind": "whatsapp", "account": "none"},
                      "recipient": "84901234567", "text": "Dạ", "agent_id": "lan"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let reply_id = r.json::<Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let outbound = record_where(&bootstrap, "omni.outbound.v1", |e| {
        e["id"] == reply_id.as_str()
    })
    .await;
    assert_eq!(trace_of(&traceparent(&outbound)), TRACE);
    let delivery = record_where(&bootstrap, "omni.delivery.v1", |e| {
        e["data"]["outbound_event_id"] == reply_id.as_str()
    })
    .await;
    assert_eq!(trace_of(&traceparent(&delivery)), TRACE);

    // At the collector: one trace, each step a child of the one before.
    let deadline = Instant::now() + Duration::from_secs(30);
    let names = [
        "POST /v1/inbound/{tenant}",
        "route a customer message",
        "POST /v1/tenants/{tenant}/replies",
        "deliver a reply",
    ];
    while names.iter().any(|n| collector.named(n).is_empty()) {
        assert!(
            Instant::now() < deadline,
            "spans of trace {TRACE} at the collector: {:?}",
            collector
                .spans
                .lock()
                .unwrap()
                .iter()
                .map(|s| s["name"].clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let one = |n: &str| collector.named(n).remove(0);
    let (webhook, route, reply, deliver) =
        (one(names[0]), one(names[1]), one(names[2]), one(names[3]));
    assert_eq!(webhook["parentSpanId"], CALLER_SPAN);
    assert_eq!(webhook["kind"], 2, "a server span");
    assert_eq!(webhook["spanId"], span_of(&inbound_tp));
    assert_eq!(route["parentSpanId"], webhook["spanId"]);
    assert_eq!(route["spanId"], span_of(&decision_tp));
    assert_eq!(reply["parentSpanId"], route["spanId"]);
    assert_eq!(deliver["parentSpanId"], reply["spanId"]);
    assert!(
        webhook["service"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["key"] == "service.name" && a["value"]["stringValue"] == "omnirouter"),
        "{webhook}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_collector_nothing_is_exported_but_records_still_carry_a_trace() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;
    let r = reqwest::Client::new()
        .post(daemon.url("/v1/inbound/demo"))
        .bearer_auth("demo-token")
        .json(&json!({"contact": {"id": "cust-2"}, "text": "Chào", "client_message_id": "m-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let inbound = record_where(&broker.bootstrap(), "omni.inbound.v1", |_| true).await;
    let tp = traceparent(&inbound);
    assert!(
        omni_bus::trace::parse(&tp).is_some(),
        "a new trace for a caller without one: {tp:?}"
    );
    assert!(!daemon.log().contains("exporting traces"));
}
