//! The API channel end to end: the real daemon binary publishing to a real Kafka-protocol
//! broker (tansu), read back by an independent consumer and by Python's confluent-kafka.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_e2e::{metric_value, read_topic, schema, Broker, Daemon};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

const INBOUND: &str = "omni.inbound.v1";

async fn post(daemon: &Daemon, tenant: &str, token: &str, body: &Value) -> (u16, Value) {
    omni_e2e::post_json(&daemon.url(&format!("/v1/inbound/{tenant}")), token, body).await
}

fn message(client_id: &str) -> Value {
    json!({
        "contact": {"id": "cust-42", "name": "Trần Thị Bích", "language": "vi", "tags": ["vip"]},
        "text": "Chào shop, đơn hàng #1234 của tôi giao chưa ạ?",
        "client_message_id": client_id,
        "attachments": [{"url": "https://cdn.example.test/a.jpg", "content_type": "image/jpeg"}]
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_posted_message_is_read_back_with_tenant_key_and_valid_schema() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;

    let (status, answer) = post(&daemon, "demo", "demo-token", &message("m-1")).await;
    assert_eq!(status, 202, "{answer}");

    let records = read_topic(
        &broker.bootstrap(),
        INBOUND,
        1,
        Duration::from_secs(20),
        Duration::ZERO,
    );
    assert_eq!(records.len(), 1, "daemon log:\n{}", daemon.log());
    let r = &records[0];
    assert_eq!(r.key, b"demo");
    assert_eq!(r.value["id"], answer["event_id"]);
    assert_eq!(r.value["subject"], answer["conversation_id"]);
    assert_eq!(r.value["type"], "omni.message.received");
    assert_eq!(
        r.value["data"]["message"]["text"],
        "Chào shop, đơn hàng #1234 của tôi giao chưa ạ?"
    );
    let envelope = schema("cloudevent.schema.json");
    let data = schema("message-received.schema.json");
    assert!(envelope.is_valid(&r.value), "envelope invalid: {}", r.value);
    assert!(
        data.is_valid(&r.value["data"]),
        "data invalid: {}",
        r.value["data"]
    );
    // The CloudEvents Kafka binding: a structured-mode record says so in `content-type`, which
    // is how SDKs tell it from a binary-mode one.
    let b = broker.bootstrap();
    let log =
        tokio::task::block_in_place(|| omni_e2e::read_log(&b, INBOUND, Duration::from_secs(1)));
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0].headers.get("content-type").map(Vec::as_slice),
        Some(&b"application/cloudevents+json"[..])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_post_is_published_once_with_the_same_event_id() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;

    let (s1, a) = post(&daemon, "demo", "demo-token", &message("dup-1")).await;
    let (s2, b) = post(&daemon, "demo", "demo-token", &message("dup-1")).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(a["event_id"], b["event_id"]);
    assert_eq!(b["duplicate"], true);

    let records = read_topic(
        &broker.bootstrap(),
        INBOUND,
        1,
        Duration::from_secs(20),
        Duration::from_secs(2),
    );
    assert_eq!(records.len(), 1, "{records:?}");
    let m = daemon.metrics().await;
    assert_eq!(
        metric_value(&m, "omni_ingress_duplicates_total", &["channel=\"api\""]),
        1.0
    );
    assert_eq!(
        metric_value(&m, "omni_messages_received_total", &["tenant=\"demo\""]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_get_4xx_json_errors_are_counted_and_publish_nothing() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[("OMNI__SERVER__MAX_BODY_BYTES", "2048")]).await;
    let cases = bad_requests(&daemon);
    for (name, req, want, code) in cases {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "{name}: {body}");
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
    }
    // A good message afterwards is the only thing on the topic.
    let (status, ok) = post(&daemon, "demo", "demo-token", &message("sentinel")).await;
    assert_eq!(status, 202);
    let records = read_topic(
        &broker.bootstrap(),
        INBOUND,
        1,
        Duration::from_secs(20),
        Duration::from_secs(2),
    );
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].value["id"], ok["event_id"]);

    let m = daemon.metrics().await;
    for code in [
        "unknown_tenant",
        "missing_credentials",
        "payload_too_large",
        "malformed",
        "missing_field",
    ] {
        assert_eq!(
            metric_value(
                &m,
                "omni_ingress_rejected_total",
                &[&format!("reason=\"{code}\"")]
            ),
            1.0,
            "{code}"
        );
    }
    assert_eq!(
        metric_value(
            &m,
            "omni_ingress_rejected_total",
            &["reason=\"bad_credentials\""]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_down_answers_503_and_after_restart_nothing_acknowledged_is_lost() {
    let mut broker = Broker::durable();
    let daemon = Daemon::start(&broker, &[("OMNI__KAFKA__PUBLISH_TIMEOUT_MS", "2000")]).await;
    let mut acked = BTreeSet::new();
    for i in 0..10 {
        let (s, a) = post(
            &daemon,
            "demo",
            "demo-token",
            &message(&format!("before-{i}")),
        )
        .await;
        assert_eq!(s, 202, "{a}");
        acked.insert(a["event_id"].as_str().unwrap().to_owned());
    }

    broker.stop();
    let (s, a) = post(&daemon, "demo", "demo-token", &message("while-down")).await;
    assert_eq!(s, 503, "{a}");
    assert_eq!(a["error"]["code"], "kafka_unavailable");
    let ready = reqwest::get(daemon.url("/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let health = reqwest::get(daemon.url("/healthz")).await.unwrap();
    assert_eq!(
        health.status().as_u16(),
        200,
        "liveness must not depend on Kafka"
    );

    broker.restart();
    // The provider retries the refused message; it is accepted once the broker is back.
    let mut accepted = None;
    for _ in 0..40 {
        let (s, a) = post(&daemon, "demo", "demo-token", &message("while-down")).await;
        if s == 202 {
            accepted = Some(a);
            break;
        }
        assert_eq!(s, 503, "{a}");
    }
    let a =
        accepted.unwrap_or_else(|| panic!("never accepted after restart; log:\n{}", daemon.log()));
    assert_eq!(
        a["duplicate"], false,
        "a refused message must not be remembered as published"
    );
    acked.insert(a["event_id"].as_str().unwrap().to_owned());
    for i in 0..10 {
        let (s, a) = post(
            &daemon,
            "demo",
            "demo-token",
            &message(&format!("after-{i}")),
        )
        .await;
        assert_eq!(s, 202, "{a}");
        acked.insert(a["event_id"].as_str().unwrap().to_owned());
    }

    let records = read_topic(
        &broker.bootstrap(),
        INBOUND,
        acked.len(),
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    let seen: BTreeSet<String> = records
        .iter()
        .map(|r| r.value["id"].as_str().unwrap_or("").to_owned())
        .collect();
    let lost: Vec<_> = acked.difference(&seen).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost: {lost:?}\nbroker log:\n{}",
        broker.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_load_loses_no_acknowledged_message() {
    let broker = Broker::memory();
    let mut daemon = Daemon::start(&broker, &[]).await;
    let url = daemon.url("/v1/inbound/demo");

    let mut workers = Vec::new();
    // Acknowledged so far, over all workers: SIGTERM once the load means something.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for w in 0..16 {
        let url = url.clone();
        let progress = progress.clone();
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acked = Vec::new();
            for i in 0.. {
                let body = message(&format!("load-{w}-{i}"));
                match client
                    .post(&url)
                    .bearer_auth("demo-token")
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().as_u16() == 202 => {
                        let a: Value = r.json().await.unwrap();
                        acked.push(a["event_id"].as_str().unwrap().to_owned());
                        progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(r) => panic!("unexpected status {} during load", r.status()),
                    Err(_) => break, // the daemon stopped accepting connections
                }
            }
            acked
        }));
    }
    // Under way: well over the 50 the check below wants, and requests still in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while progress.load(std::sync::atomic::Ordering::Relaxed) < 100 {
        assert!(std::time::Instant::now() < deadline, "load did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = tokio::task::spawn_blocking(move || {
        let s = daemon.terminate(Duration::from_secs(30));
        (s, daemon)
    })
    .await
    .unwrap();
    let (status, daemon) = status;
    let status = status.unwrap_or_else(|| panic!("daemon did not exit; log:\n{}", daemon.log()));
    assert!(status.success(), "exit {status:?}; log:\n{}", daemon.log());
    assert!(
        daemon.log().contains("shutdown complete"),
        "{}",
        daemon.log()
    );

    let mut acked = Vec::new();
    for w in workers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() > 50,
        "load too light to mean anything: {}",
        acked.len()
    );
    let records = read_topic(
        &broker.bootstrap(),
        INBOUND,
        acked.len(),
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    let mut count: HashMap<String, usize> = HashMap::new();
    for r in &records {
        *count
            .entry(r.value["id"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
    }
    let lost: Vec<_> = acked.iter().filter(|id| !count.contains_key(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost",
        lost.len(),
        acked.len()
    );
    println!(
        "{} messages acknowledged during load, all on the topic",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_external_python_kafka_client_reads_a_valid_cloudevent() {
    let python = omni_e2e::workspace().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: `make test` creates it with confluent-kafka",
        python.display()
    );
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;
    let (status, answer) = post(&daemon, "demo", "demo-token", &message("py-1")).await;
    assert_eq!(status, 202);

    let script = omni_e2e::workspace().join("tests/crm_consume.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .args([
            "--bootstrap",
            &broker.bootstrap(),
            "--topic",
            INBOUND,
            "--count",
            "1",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_str(stdout.lines().next().unwrap_or("")).unwrap();
    assert_eq!(line["key"], "demo");
    assert_eq!(line["event"]["id"], answer["event_id"]);
    assert_eq!(line["event"]["specversion"], "1.0");
    assert_eq!(line["event"]["data"]["contact"]["name"], "Trần Thị Bích");
}

/// One bad request of each kind the API channel refuses: (name, request, status, error code).
fn bad_requests(
    daemon: &Daemon,
) -> Vec<(&'static str, reqwest::RequestBuilder, u16, &'static str)> {
    let client = reqwest::Client::new();
    let url = daemon.url("/v1/inbound/demo");
    let huge = json!({"contact": {"id": "c"}, "text": "x".repeat(5000)});
    vec![
        (
            "unknown tenant",
            client
                .post(daemon.url("/v1/inbound/nobody"))
                .bearer_auth("demo-token")
                .json(&message("x")),
            404,
            "unknown_tenant",
        ),
        (
            "no auth",
            client.post(&url).json(&message("x")),
            401,
            "missing_credentials",
        ),
        (
            "bad token",
            client.post(&url).bearer_auth("wrong").json(&message("x")),
            401,
            "bad_credentials",
        ),
        (
            "bad signature",
            client
                .post(&url)
                .header("x-omni-signature", "sha256=deadbeef")
                .json(&message("x")),
            401,
            "bad_credentials",
        ),
        (
            "oversized",
            client.post(&url).bearer_auth("demo-token").json(&huge),
            413,
            "payload_too_large",
        ),
        (
            "malformed",
            client
                .post(&url)
                .bearer_auth("demo-token")
                .header("content-type", "application/json")
                .body("{\"contact\": {"),
            400,
            "malformed",
        ),
        (
            "missing field",
            client
                .post(&url)
                .bearer_auth("demo-token")
                .json(&json!({"text": "hi"})),
            400,
            "missing_field",
        ),
        (
            "wrong media type",
            client
                .post(&url)
                .bearer_auth("demo-token")
                .header("content-type", "text/plain")
                .body("hi"),
            415,
            "unsupported_media_type",
        ),
    ]
}

/// Replay protection on signed API requests, configured per tenant through the environment:
/// a signed time outside the window is refused as `stale_timestamp`, strict mode refuses a
/// signed request that has neither a time nor a `client_message_id`, and only the fresh, timed
/// request reaches Kafka.
#[tokio::test(flavor = "multi_thread")]
async fn signed_api_requests_outside_the_replay_window_or_untimed_in_strict_mode_are_refused() {
    use omni_channel::api::signed_bytes;
    use omni_channel::signature::hmac_sha256_hex;
    let broker = Broker::memory();
    let daemon = Daemon::start(
        &broker,
        &[
            ("OMNI__TENANTS__DEMO__API_STRICT_REPLAY", "true"),
            ("OMNI__TENANTS__DEMO__API_SIGNATURE_MAX_AGE_SECS", "60"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let signed = |body: &str, timestamp: Option<&str>| {
        let sig = hmac_sha256_hex(b"demo-secret", &signed_bytes(timestamp, body.as_bytes()));
        let mut req = client
            .post(daemon.url("/v1/inbound/demo"))
            .header("content-type", "application/json")
            .header("x-omni-signature", format!("sha256={sig}"));
        if let Some(t) = timestamp {
            req = req.header("x-omni-timestamp", t);
        }
        req.body(body.to_owned()).send()
    };
    let no_id = r#"{"contact":{"id":"replayed"},"text":"hi"}"#;
    let untimed = signed(no_id, None).await.unwrap();
    assert_eq!(untimed.status().as_u16(), 401);
    let now = chrono::Utc::now().timestamp();
    let stale = signed(no_id, Some(&(now - 120).to_string())).await.unwrap();
    assert_eq!(stale.status().as_u16(), 401);
    let answer: Value = stale.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "stale_timestamp", "{answer}");
    let fresh = signed(no_id, Some(&now.to_string())).await.unwrap();
    assert_eq!(fresh.status().as_u16(), 202);
    let fresh: Value = fresh.json().await.unwrap();
    let records = read_topic(
        &broker.bootstrap(),
        INBOUND,
        1,
        Duration::from_secs(20),
        Duration::from_secs(2),
    );
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].value["id"], fresh["event_id"]);
    let m = daemon.metrics().await;
    let stale = metric_value(
        &m,
        "omni_ingress_rejected_total",
        &["reason=\"stale_timestamp\""],
    );
    assert_eq!(stale, 1.0);
}

/// Load shedding against a real stall: with the broker stopped, requests wait for Kafka's
/// acknowledgement; once `ingress.max_in_flight` of them wait, the next is answered at once with
/// 503 `overloaded` and `Retry-After` instead of joining the queue, and `omni_ingress_in_flight`
/// shows the bound. When the waiting ones time out (503 `kafka_unavailable`) their places are
/// free again: the next request waits on Kafka instead of being shed.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_kafka_fills_max_in_flight_and_the_next_request_is_shed_at_once() {
    let mut broker = Broker::durable();
    let daemon = Daemon::start(
        &broker,
        &[
            ("OMNI__INGRESS__MAX_IN_FLIGHT", "2"),
            ("OMNI__KAFKA__PUBLISH_TIMEOUT_MS", "8000"),
        ],
    )
    .await;
    let (s, a) = post(&daemon, "demo", "demo-token", &message("warm")).await;
    assert_eq!(s, 202, "{a}");
    broker.stop();
    let url = daemon.url("/v1/inbound/demo");
    let waiting: Vec<_> = ["stalled-1", "stalled-2"]
        .into_iter()
        .map(|id| {
            let url = url.clone();
            tokio::spawn(async move { omni_e2e::post_json(&url, "demo-token", &message(id)).await })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    loop {
        let m = daemon.metrics().await;
        if metric_value(&m, "omni_ingress_in_flight", &[]) >= 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never 2 in flight:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    let (s, body) = post(&daemon, "demo", "demo-token", &message("shed")).await;
    let answered_in = started.elapsed();
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "the shed answer came while the others still waited"
    );
    println!("shed answered in {answered_in:?} while two requests waited on Kafka");
    let retry_after = reqwest::Client::new()
        .post(&url)
        .bearer_auth("demo-token")
        .json(&message("shed-again"))
        .send()
        .await
        .unwrap();
    assert_eq!(retry_after.status().as_u16(), 503);
    assert_eq!(retry_after.headers()["retry-after"], "1");
    let m = daemon.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "omni_ingress_rejected_total",
            &["reason=\"overloaded\""]
        ),
        2.0
    );
    for w in waiting {
        let (s, a) = w.await.unwrap();
        assert_eq!(
            (s, &a["error"]["code"]),
            (503, &json!("kafka_unavailable")),
            "{a}"
        );
    }
    let m = daemon.metrics().await;
    assert_eq!(metric_value(&m, "omni_ingress_in_flight", &[]), 0.0);
    assert_eq!(
        metric_value(
            &m,
            "omni_ingress_rejected_total",
            &["reason=\"overloaded\""]
        ),
        2.0,
        "nothing else was shed"
    );
}
