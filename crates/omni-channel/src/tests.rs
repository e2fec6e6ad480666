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
use std::time::Duration;
use tower::ServiceExt;

use crate::signature::hmac_sha256_hex;
use crate::sink::MemorySink;
use crate::{ApiChannel, ApiCredentials, DedupeCache, Ingress, IngressMetrics};

struct Fixture {
    sink: Arc<MemorySink>,
    registry: Registry,
    app: Router,
}

fn fixture() -> Fixture {
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let ingress = Ingress::new(
        sink.clone(),
        "omni.inbound.v1",
        "omni.delivery.v1",
        DedupeCache::new(Duration::from_secs(60), 1000),
        1024,
        IngressMetrics::register(&registry).unwrap(),
    );
    let api = ApiChannel::new([
        (
            TenantId::new("acme").unwrap(),
            ApiCredentials {
                bearer_token: Some(Secret::new("tok")),
                hmac_secret: Some(Secret::new("key")),
            },
        ),
        (
            TenantId::new("tokenonly").unwrap(),
            ApiCredentials {
                bearer_token: Some(Secret::new("tok2")),
                hmac_secret: None,
            },
        ),
    ]);
    let state = Arc::new((ingress, api));
    let app = Router::new()
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
        .with_state(state);
    Fixture {
        sink,
        registry,
        app,
    }
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

/// Sends a bad request and checks it is refused with `want_status` and the error code
/// `want_code`, with a message, counted in `omni_ingress_rejected_total`.
async fn assert_refused(
    f: &Fixture,
    name: &str,
    req: Request<Body>,
    want_status: StatusCode,
    want_code: &str,
) {
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

#[tokio::test]
async fn an_unknown_tenant_gets_404_and_publishes_nothing() {
    let f = fixture();
    let req = bearer("nope", "tok", GOOD);
    assert_refused(
        &f,
        "unknown tenant",
        req,
        StatusCode::NOT_FOUND,
        "unknown_tenant",
    )
    .await;
    assert!(f.sink.records().is_empty(), "something was published");
}

#[tokio::test]
async fn missing_or_wrong_credentials_get_401_and_publish_nothing() {
    let f = fixture();
    let unauthorized = StatusCode::UNAUTHORIZED;
    let req = post_json("acme").body(Body::from(GOOD)).unwrap();
    assert_refused(
        &f,
        "no credentials",
        req,
        unauthorized,
        "missing_credentials",
    )
    .await;
    let req = bearer("acme", "nope", GOOD);
    assert_refused(&f, "wrong token", req, unauthorized, "bad_credentials").await;
    let req = bearer("tokenonly", "tok", GOOD);
    assert_refused(
        &f,
        "another tenant's token",
        req,
        unauthorized,
        "bad_credentials",
    )
    .await;
    let req = post_json("tokenonly")
        .header("x-omni-signature", "sha256=00")
        .body(Body::from(GOOD))
        .unwrap();
    let name = "signature where none configured";
    assert_refused(&f, name, req, unauthorized, "bad_credentials").await;
    assert!(f.sink.records().is_empty(), "something was published");
}

#[tokio::test]
async fn oversized_bodies_get_413_and_publish_nothing() {
    let f = fixture();
    let big = format!(
        r#"{{"contact":{{"id":"c"}},"text":"{}"}}"#,
        "x".repeat(2000)
    );
    let too_large = StatusCode::PAYLOAD_TOO_LARGE;
    let req = bearer("acme", "tok", &big);
    assert_refused(&f, "oversized body", req, too_large, "payload_too_large").await;
    let req = post_json("acme")
        .header("authorization", "Bearer tok")
        .body(chunked(&big))
        .unwrap();
    assert_refused(
        &f,
        "oversized chunked body",
        req,
        too_large,
        "payload_too_large",
    )
    .await;
    assert!(f.sink.records().is_empty(), "something was published");
}

#[tokio::test]
async fn malformed_bodies_get_400_malformed_and_publish_nothing() {
    let f = fixture();
    let cases = [
        ("malformed json", "{\"contact\":"),
        ("not json at all", "hello"),
        (
            "unknown field",
            r#"{"contact":{"id":"c"},"text":"hi","txet":1}"#,
        ),
        ("wrong type", r#"{"contact":{"id":"c"},"text":42}"#),
    ];
    for (name, body) in cases {
        let req = bearer("acme", "tok", body);
        assert_refused(&f, name, req, StatusCode::BAD_REQUEST, "malformed").await;
    }
    let req = post_json("acme")
        .header("authorization", "Bearer tok")
        .body(Body::from(vec![0xff, 0xfe, b'{', 0x80]))
        .unwrap();
    assert_refused(
        &f,
        "non-utf8 body",
        req,
        StatusCode::BAD_REQUEST,
        "malformed",
    )
    .await;
    assert!(f.sink.records().is_empty(), "something was published");
}

#[tokio::test]
async fn missing_or_invalid_fields_get_400_and_publish_nothing() {
    let f = fixture();
    let cases = [
        ("missing contact", r#"{"text":"hi"}"#, "missing_field"),
        (
            "empty contact id",
            r#"{"contact":{"id":" "},"text":"hi"}"#,
            "missing_field",
        ),
        (
            "no text nor attachment",
            r#"{"contact":{"id":"c"}}"#,
            "missing_field",
        ),
        (
            "bad account",
            r#"{"contact":{"id":"c"},"text":"hi","account":"a b"}"#,
            "invalid_field",
        ),
        (
            "control char in id",
            "{\"contact\":{\"id\":\"c\\u0000\"},\"text\":\"hi\"}",
            "invalid_field",
        ),
    ];
    for (name, body, code) in cases {
        let req = bearer("acme", "tok", body);
        assert_refused(&f, name, req, StatusCode::BAD_REQUEST, code).await;
    }
    assert!(f.sink.records().is_empty(), "something was published");
}

#[tokio::test]
async fn a_form_body_gets_415_and_publishes_nothing() {
    let f = fixture();
    let req = Request::post("/v1/inbound/acme")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", "Bearer tok")
        .body(Body::from(GOOD))
        .unwrap();
    let name = "form content type";
    let unsupported = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    assert_refused(&f, name, req, unsupported, "unsupported_media_type").await;
    assert!(f.sink.records().is_empty(), "something was published");
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
