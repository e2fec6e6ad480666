//! The generic handler driven through the API channel, with an in-memory sink standing in for
//! Kafka so each test sees exactly what would have been published. (The same paths run against
//! the real broker in the end-to-end tests.)

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use omni_core::{CloudEvent, EventType, MessageReceived, Secret, TenantId};
use prometheus::Registry;
use std::sync::Arc;
use tower::ServiceExt;

use crate::signature::hmac_sha256_hex;
use crate::sink::MemorySink;
use crate::{ApiChannel, ApiCredentials, Ingress};

struct Fixture {
    sink: Arc<MemorySink>,
    registry: Registry,
    app: Router,
}

fn fixture() -> Fixture {
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let ingress = Ingress::standalone(sink.clone(), &registry, 1024).unwrap();
    let api = ApiChannel::new([
        (
            TenantId::new("acme").unwrap(),
            ApiCredentials::new(Some(Secret::new("tok")), Some(Secret::new("key"))),
        ),
        (
            TenantId::new("tokenonly").unwrap(),
            ApiCredentials::new(Some(Secret::new("tok2")), None),
        ),
        (
            TenantId::new("strict").unwrap(),
            ApiCredentials {
                strict_replay: true,
                ..ApiCredentials::new(None, Some(Secret::new("key")))
            },
        ),
    ]);
    let app = app(ingress, api);
    Fixture {
        sink,
        registry,
        app,
    }
}

/// `POST /v1/inbound/{tenant}` served by `ingress` for `api`, as the daemon routes it.
fn app(ingress: Ingress, api: ApiChannel) -> Router {
    Router::new()
        .route(
            "/v1/inbound/{tenant}",
            post(
                |State(s): State<Arc<(Ingress, ApiChannel)>>,
                 Path(t): Path<String>,
                 req: Request<Body>| async move {
                    let (head, body) = req.into_parts();
                    s.0.handle(&s.1, &t, &head, body).await
                },
            ),
        )
        .with_state(Arc::new((ingress, api)))
}

const GOOD: &str = r#"{"contact":{"id":"cust-1","name":"Nguyễn Thị Hoa","language":"vi"},"text":"Xin chào, tôi cần hỗ trợ","client_message_id":"m-1"}"#;

fn post_json(tenant: &str) -> axum::http::request::Builder {
    Request::post(format!("/v1/inbound/{tenant}")).header("content-type", "application/json")
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let resp: Response = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn bearer(tenant: &str, token: &str, body: &str) -> Request<Body> {
    post_json(tenant)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn rejected(registry: &Registry, reason: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "omni_ingress_rejected_total")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| m.get_label().iter().any(|l| l.value() == reason))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[tokio::test]
async fn accepted_message_is_published_as_a_cloudevent_keyed_by_tenant() {
    let f = fixture();
    let (status, json) = send(&f.app, bearer("acme", "tok", GOOD)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    let records = f.sink.records();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.topic, "omni.inbound.v1");
    assert_eq!(record.key, b"acme");
    let event: CloudEvent<MessageReceived> = serde_json::from_slice(&record.payload).unwrap();
    assert_eq!(event.event_type, EventType::MessageReceived);
    assert_eq!(event.id.to_string(), json["event_id"].as_str().unwrap());
    assert_eq!(
        event.subject.to_string(),
        json["conversation_id"].as_str().unwrap()
    );
    assert_eq!(event.data.message.text, "Xin chào, tôi cần hỗ trợ");
    assert_eq!(event.data.contact.name.as_deref(), Some("Nguyễn Thị Hoa"));
    assert_eq!(event.data.message.id, "m-1");
    assert_eq!(event.source, "/omnirouter/acme/api/default");
}

#[tokio::test]
async fn same_client_message_id_gives_same_event_id_and_publishes_once() {
    let f = fixture();
    let (s1, a) = send(&f.app, bearer("acme", "tok", GOOD)).await;
    let (s2, b) = send(&f.app, bearer("acme", "tok", GOOD)).await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(a["event_id"], b["event_id"]);
    assert_eq!(a["duplicate"], false);
    assert_eq!(b["duplicate"], true);
    assert_eq!(f.sink.records().len(), 1);
}

#[tokio::test]
async fn without_client_message_id_each_post_is_a_new_event() {
    let f = fixture();
    let body = r#"{"contact":{"id":"c"},"text":"hi"}"#;
    let (_, a) = send(&f.app, bearer("acme", "tok", body)).await;
    let (_, b) = send(&f.app, bearer("acme", "tok", body)).await;
    assert_ne!(a["event_id"], b["event_id"]);
    assert_eq!(a["conversation_id"], b["conversation_id"]);
    assert_eq!(f.sink.records().len(), 2);
}

#[tokio::test]
async fn hmac_signed_request_is_accepted_and_a_wrong_signature_refused() {
    let f = fixture();
    let sig = hmac_sha256_hex(b"key", GOOD.as_bytes());
    let req = post_json("acme")
        .header("x-omni-signature", format!("sha256={sig}"))
        .body(Body::from(GOOD))
        .unwrap();
    assert_eq!(send(&f.app, req).await.0, StatusCode::ACCEPTED);

    let tampered = GOOD.replace("cust-1", "cust-2");
    let req = post_json("acme")
        .header("x-omni-signature", format!("sha256={sig}"))
        .body(Body::from(tampered.clone()))
        .unwrap();
    let (status, json) = send(&f.app, req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json["error"]["code"], "bad_credentials");
    assert_eq!(f.sink.records().len(), 1);
}

/// A request signed over `<timestamp>.<body>` with `X-Omni-Timestamp`.
fn timed(tenant: &str, body: &str, timestamp: &str, signed_timestamp: &str) -> Request<Body> {
    let sig = hmac_sha256_hex(
        b"key",
        &crate::api::signed_bytes(Some(signed_timestamp), body.as_bytes()),
    );
    post_json(tenant)
        .header("x-omni-signature", format!("sha256={sig}"))
        .header("x-omni-timestamp", timestamp)
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn signed_timestamps_inside_the_window_pass_and_replays_or_forgeries_do_not() {
    let f = fixture();
    let now = chrono::Utc::now().timestamp();
    let fresh = (now - 30).to_string();
    let (status, json) = send(&f.app, timed("acme", GOOD, &fresh, &fresh)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    // Captured an hour ago (or stamped an hour ahead): stale, even though the MAC is right.
    for t in [now - 3_600, now + 3_600] {
        let t = t.to_string();
        let body = GOOD.replace("m-1", &format!("m-{t}"));
        let (status, json) = send(&f.app, timed("acme", &body, &t, &t)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
        assert_eq!(json["error"]["code"], "stale_timestamp");
    }
    // An old capture given a fresh X-Omni-Timestamp: the MAC covers the time, so it fails.
    let old = (now - 3_600).to_string();
    let (status, json) = send(&f.app, timed("acme", GOOD, &fresh, &old)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json["error"]["code"], "bad_credentials");
    // A body-only MAC presented with a timestamp header does not verify either.
    let body_only = hmac_sha256_hex(b"key", GOOD.as_bytes());
    let req = post_json("acme")
        .header("x-omni-signature", format!("sha256={body_only}"))
        .header("x-omni-timestamp", fresh.as_str())
        .body(Body::from(GOOD))
        .unwrap();
    assert_eq!(send(&f.app, req).await.0, StatusCode::UNAUTHORIZED);
    // Not a number, though signed.
    let (status, _) = send(&f.app, timed("acme", GOOD, "yesterday", "yesterday")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(f.sink.records().len(), 1);
    assert_eq!(rejected(&f.registry, "stale_timestamp"), 2);
}

#[tokio::test]
async fn strict_mode_refuses_signed_requests_that_could_replay_as_new_messages() {
    let f = fixture();
    let no_id = r#"{"contact":{"id":"c"},"text":"hi"}"#;
    let body_only = |body: &str| {
        post_json("strict")
            .header(
                "x-omni-signature",
                format!("sha256={}", hmac_sha256_hex(b"key", body.as_bytes())),
            )
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let (status, json) = send(&f.app, body_only(no_id)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("X-Omni-Timestamp or client_message_id"),
        "{json}"
    );
    assert!(f.sink.records().is_empty());
    // With a client_message_id (deduped), or with a signed time, it is taken.
    assert_eq!(send(&f.app, body_only(GOOD)).await.0, StatusCode::ACCEPTED);
    let now = chrono::Utc::now().timestamp().to_string();
    assert_eq!(
        send(&f.app, timed("strict", no_id, &now, &now)).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(f.sink.records().len(), 2);
    // The same request to a tenant not in strict mode is taken.
    let lax = post_json("acme")
        .header(
            "x-omni-signature",
            format!("sha256={}", hmac_sha256_hex(b"key", no_id.as_bytes())),
        )
        .body(Body::from(no_id))
        .unwrap();
    assert_eq!(send(&f.app, lax).await.0, StatusCode::ACCEPTED);
}

/// A bad request, the status and error code it must get, and its name for failure messages.
type Refusal = (&'static str, Request<Body>, StatusCode, &'static str);

/// Sends each request to a fresh ingress and checks each is refused with its status and error
/// code, with a message, counted in `omni_ingress_rejected_total`, and that nothing was
/// published.
async fn assert_refused(cases: Vec<Refusal>) {
    let f = fixture();
    for (name, req, want_status, want_code) in cases {
        let before = rejected(&f.registry, want_code);
        let (status, json) = send(&f.app, req).await;
        assert_eq!(status, want_status, "{name}: {json}");
        assert_eq!(json["error"]["code"], want_code, "{name}: {json}");
        assert!(
            !json["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{name}: no message"
        );
        assert_eq!(
            rejected(&f.registry, want_code),
            before + 1,
            "{name}: not counted"
        );
    }
    assert!(f.sink.records().is_empty(), "something was published");
}

/// A JSON request to `acme` with a good bearer token and `body`.
fn acme(body: &str) -> Request<Body> {
    bearer("acme", "tok", body)
}

#[tokio::test]
async fn an_unknown_tenant_gets_404_and_publishes_nothing() {
    let req = bearer("nope", "tok", GOOD);
    let not_found = StatusCode::NOT_FOUND;
    assert_refused(vec![("unknown tenant", req, not_found, "unknown_tenant")]).await;
}

#[tokio::test]
async fn missing_or_wrong_credentials_get_401_and_publish_nothing() {
    let unauthorized = StatusCode::UNAUTHORIZED;
    let no_credentials = post_json("acme").body(Body::from(GOOD)).unwrap();
    let signed_without_secret = post_json("tokenonly")
        .header("x-omni-signature", "sha256=00")
        .body(Body::from(GOOD))
        .unwrap();
    assert_refused(vec![
        (
            "no credentials",
            no_credentials,
            unauthorized,
            "missing_credentials",
        ),
        (
            "wrong token",
            bearer("acme", "nope", GOOD),
            unauthorized,
            "bad_credentials",
        ),
        (
            "another tenant's token",
            bearer("tokenonly", "tok", GOOD),
            unauthorized,
            "bad_credentials",
        ),
        (
            "signature where none configured",
            signed_without_secret,
            unauthorized,
            "bad_credentials",
        ),
    ])
    .await;
}

#[tokio::test]
async fn oversized_bodies_get_413_and_publish_nothing() {
    let big = format!(
        r#"{{"contact":{{"id":"c"}},"text":"{}"}}"#,
        "x".repeat(2000)
    );
    let too_large = StatusCode::PAYLOAD_TOO_LARGE;
    let chunked_upload = post_json("acme")
        .header("authorization", "Bearer tok")
        .body(chunked(&big))
        .unwrap();
    assert_refused(vec![
        ("oversized body", acme(&big), too_large, "payload_too_large"),
        (
            "oversized chunked body",
            chunked_upload,
            too_large,
            "payload_too_large",
        ),
    ])
    .await;
}

#[tokio::test]
async fn malformed_bodies_get_400_malformed_and_publish_nothing() {
    let bad = StatusCode::BAD_REQUEST;
    let non_utf8 = post_json("acme")
        .header("authorization", "Bearer tok")
        .body(Body::from(vec![0xff, 0xfe, b'{', 0x80]))
        .unwrap();
    assert_refused(vec![
        ("malformed json", acme("{\"contact\":"), bad, "malformed"),
        ("not json at all", acme("hello"), bad, "malformed"),
        (
            "unknown field",
            acme(r#"{"contact":{"id":"c"},"text":"hi","txet":1}"#),
            bad,
            "malformed",
        ),
        (
            "wrong type",
            acme(r#"{"contact":{"id":"c"},"text":42}"#),
            bad,
            "malformed",
        ),
        ("non-utf8 body", non_utf8, bad, "malformed"),
    ])
    .await;
}

#[tokio::test]
async fn missing_or_invalid_fields_get_400_and_publish_nothing() {
    let bad = StatusCode::BAD_REQUEST;
    assert_refused(vec![
        (
            "missing contact",
            acme(r#"{"text":"hi"}"#),
            bad,
            "missing_field",
        ),
        (
            "empty contact id",
            acme(r#"{"contact":{"id":" "},"text":"hi"}"#),
            bad,
            "missing_field",
        ),
        (
            "no text nor attachment",
            acme(r#"{"contact":{"id":"c"}}"#),
            bad,
            "missing_field",
        ),
        (
            "bad account",
            acme(r#"{"contact":{"id":"c"},"text":"hi","account":"a b"}"#),
            bad,
            "invalid_field",
        ),
        (
            "control char in id",
            acme("{\"contact\":{\"id\":\"c\\u0000\"},\"text\":\"hi\"}"),
            bad,
            "invalid_field",
        ),
    ])
    .await;
}

#[tokio::test]
async fn a_form_body_gets_415_and_publishes_nothing() {
    let form = Request::post("/v1/inbound/acme")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", "Bearer tok")
        .body(Body::from(GOOD))
        .unwrap();
    let unsupported = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    assert_refused(vec![(
        "form content type",
        form,
        unsupported,
        "unsupported_media_type",
    )])
    .await;
}

/// A body that arrives in 100-byte chunks with no Content-Length, like a chunked upload.
struct Chunked(Vec<bytes::Bytes>);

fn chunked(s: &str) -> Body {
    let mut chunks: Vec<bytes::Bytes> = s
        .as_bytes()
        .chunks(100)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    chunks.reverse();
    Body::new(Chunked(chunks))
}

impl axum::body::HttpBody for Chunked {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop().map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn kafka_down_answers_503_and_nothing_is_remembered() {
    let f = fixture();
    f.sink.set_failing(true);
    let (status, json) = send(&f.app, bearer("acme", "tok", GOOD)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json["error"]["code"], "kafka_unavailable");
    assert!(f.sink.records().is_empty());
    // Once Kafka is back, the provider's retry is published (not mistaken for a duplicate).
    f.sink.set_failing(false);
    let (status, json) = send(&f.app, bearer("acme", "tok", GOOD)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(json["duplicate"], false);
    assert_eq!(f.sink.records().len(), 1);
}

/// Kafka that acknowledges only when the test opens the gate: requests wait in flight.
struct GatedSink {
    inner: MemorySink,
    gate: tokio::sync::Semaphore,
}

impl crate::EventSink for GatedSink {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        key: &'a [u8],
        payload: &'a [u8],
    ) -> crate::sink::PublishFuture<'a> {
        Box::pin(async move {
            self.gate.acquire().await.unwrap().forget();
            self.inner.publish(topic, key, payload).await
        })
    }

    fn delete<'a>(&'a self, topic: &'a str, key: &'a [u8]) -> crate::sink::PublishFuture<'a> {
        self.inner.delete(topic, key)
    }
}

/// With two requests waiting on a slow Kafka and `max_in_flight = 2`, the next one is shed at
/// once (503 `overloaded`, `Retry-After`), publishes nothing, and is counted; the waiting ones
/// are answered when Kafka acknowledges, and the place they held is free again.
#[tokio::test]
async fn beyond_max_in_flight_requests_are_shed_with_503_and_retry_after() {
    let sink = Arc::new(GatedSink {
        inner: MemorySink::default(),
        gate: tokio::sync::Semaphore::new(0),
    });
    let registry = Registry::new();
    let ingress = Ingress::standalone(sink.clone(), &registry, 1024)
        .unwrap()
        .with_max_in_flight(2);
    let api = ApiChannel::new([(
        TenantId::new("acme").unwrap(),
        ApiCredentials::new(Some(Secret::new("tok")), None),
    )]);
    let app = app(ingress, api);
    let body = |id: &str| GOOD.replace("m-1", id);
    let waiting: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|id| tokio::spawn(send_owned(app.clone(), bearer("acme", "tok", &body(id)))))
        .collect();
    let in_flight = || gauge(&registry, "omni_ingress_in_flight");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while in_flight() < 2 {
        assert!(std::time::Instant::now() < deadline, "never two in flight");
        tokio::task::yield_now().await;
    }
    let shed: Response = app
        .clone()
        .oneshot(bearer("acme", "tok", &body("c")))
        .await
        .unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers()["retry-after"], "1");
    let bytes = axum::body::to_bytes(shed.into_body(), 1 << 16)
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["error"]["code"], "overloaded");
    assert_eq!(rejected(&registry, "overloaded"), 1);
    assert!(sink.inner.records().is_empty());

    sink.gate.add_permits(100);
    for w in waiting {
        assert_eq!(w.await.unwrap(), StatusCode::ACCEPTED);
    }
    assert_eq!(in_flight(), 0);
    let (status, _) = send(&app, bearer("acme", "tok", &body("c"))).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "the shed request, retried, is taken"
    );
    assert_eq!(sink.inner.records().len(), 3);
}

async fn send_owned(app: Router, req: Request<Body>) -> StatusCode {
    app.oneshot(req).await.unwrap().status()
}

fn gauge(registry: &Registry, name: &str) -> i64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| m.get_gauge().get_value() as i64)
        .sum()
}
