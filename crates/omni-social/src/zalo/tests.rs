//! The Zalo OA webhook through the shared handler, with an in-memory sink standing in for
//! Kafka; events built from Zalo's documented shapes and signed as CHANNELS.md describes:
//! `mac = hex(SHA-256(app_id + raw body + timestamp + OA secret key))`.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use omni_channel::signature::sha256_hex;
use omni_channel::sink::{EventSink, MemorySink, PublishFuture};
use omni_channel::Ingress;
use omni_core::{ChannelSignal, CloudEvent, MessageReceived, Secret, SignalKind, TenantId};
use prometheus::Registry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;

const APP: &str = "1183926498471234567";
const OA: &str = "4318458798374519001";
const OA2: &str = "579745863508352884";
const USER: &str = "2512523625412515123";
const KEY: &str = "oa-secret-key";
const KEY2: &str = "second-oa-key";

fn tenant() -> ZaloTenant {
    let oa = |key: &str| OaSettings {
        app_id: APP.into(),
        oa_secret_key: Secret::new(key),
        app_secret: Secret::new("app-secret"),
        token_file: "unused.json".into(),
        initial_refresh_token: None,
        initial_access_token: None,
    };
    ZaloTenant {
        oas: HashMap::from([(OA.to_owned(), oa(KEY)), (OA2.to_owned(), oa(KEY2))]),
        // The recorded payloads in testdata/ carry their 2023 timestamps; the window has its
        // own test below.
        replay_window: None,
    }
}

fn ingress(sink: Arc<dyn EventSink>, registry: &Registry) -> Ingress {
    Ingress::standalone(sink, registry, 64 * 1024).unwrap()
}

fn head(headers: &HeaderMap) -> axum::http::request::Parts {
    omni_channel::request_head(
        axum::http::Method::POST,
        "/v1/webhooks/zalo/acme",
        headers.clone(),
    )
}

fn channel() -> ZaloChannel {
    ZaloChannel::new([(TenantId::new("acme").unwrap(), tenant())])
}

fn signed(body: &str, timestamp: &str, key: &str) -> HeaderMap {
    let mac = sha256_hex(&[
        APP.as_bytes(),
        body.as_bytes(),
        timestamp.as_bytes(),
        key.as_bytes(),
    ]);
    let mut h = HeaderMap::new();
    h.insert(
        "x-zevent-signature",
        HeaderValue::from_str(&format!("mac={mac}")).unwrap(),
    );
    h
}

/// One recorded webhook per kind of customer message Zalo sends (`testdata/zalo/`), signed
/// here with the test OA's key.
const USER_SEND: [(&str, &str); 10] = [
    (
        "user_send_text",
        include_str!("../../../../testdata/zalo/user_send_text.json"),
    ),
    (
        "user_send_image",
        include_str!("../../../../testdata/zalo/user_send_image.json"),
    ),
    (
        "user_send_link",
        include_str!("../../../../testdata/zalo/user_send_link.json"),
    ),
    (
        "user_send_file",
        include_str!("../../../../testdata/zalo/user_send_file.json"),
    ),
    (
        "user_send_sticker",
        include_str!("../../../../testdata/zalo/user_send_sticker.json"),
    ),
    (
        "user_send_gif",
        include_str!("../../../../testdata/zalo/user_send_gif.json"),
    ),
    (
        "user_send_audio",
        include_str!("../../../../testdata/zalo/user_send_audio.json"),
    ),
    (
        "user_send_video",
        include_str!("../../../../testdata/zalo/user_send_video.json"),
    ),
    (
        "user_send_location",
        include_str!("../../../../testdata/zalo/user_send_location.json"),
    ),
    (
        "user_send_business_card",
        include_str!("../../../../testdata/zalo/user_send_business_card.json"),
    ),
];

/// The `timestamp` a webhook body carries (signed with it).
fn timestamp_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["timestamp"].as_str().unwrap().to_owned()
}

fn user_event(name: &str, msg_id: &str, message: &str, ts: &str) -> String {
    format!(
        r#"{{"app_id":"{APP}","user_id_by_app":"552177279717587730","event_name":"{name}","timestamp":"{ts}","sender":{{"id":"{USER}"}},"recipient":{{"id":"{OA}"}},"message":{{"msg_id":"{msg_id}",{message}}}}}"#
    )
}

async fn post(
    ingress: &Ingress,
    channel: &ZaloChannel,
    headers: &HeaderMap,
    body: &str,
) -> StatusCode {
    ingress
        .handle(channel, "acme", &head(headers), Body::from(body.to_owned()))
        .await
        .status()
}

#[tokio::test]
async fn every_user_send_kind_becomes_a_customer_message_with_string_ids() {
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let ingress = ingress(sink.clone(), &registry);
    let channel = channel();
    for (name, body) in USER_SEND {
        let body = body.trim_end();
        let ts = timestamp_of(body);
        assert_eq!(
            post(&ingress, &channel, &signed(body, &ts, KEY), body).await,
            StatusCode::OK,
            "{name}"
        );
    }
    let records = sink.records();
    assert_eq!(records.len(), USER_SEND.len());
    let events: Vec<CloudEvent<MessageReceived>> = records
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    for e in &events {
        assert_eq!(e.event_type.as_str(), "omni.message.received");
        assert_eq!(e.data.contact.id, USER, "ids stay exact strings");
        assert_eq!(e.data.channel.account, OA);
    }
    assert_eq!(
        events[0].data.message.text,
        "Cho mình hỏi giá sản phẩm này ạ"
    );
    assert_eq!(events[0].data.message.reply_to.as_deref(), Some("9d6b1c2a"));
    assert_eq!(
        events[1].data.message.attachments[0].url,
        "https://z.example/i.jpg"
    );
    assert_eq!(
        events[3].data.message.attachments[0].name.as_deref(),
        Some("hoa-don.pdf")
    );
    assert_eq!(events[3].data.message.attachments[0].size, Some(20480));
    assert_eq!(
        events[8].data.message.attachments[0].url,
        "geo:10.7769,106.7009"
    );
    assert_eq!(
        events[9].data.message.attachments[0].url,
        "https://z.example/c.jpg"
    );
    assert_eq!(
        events[0].data.message.sent_at.map(|t| t.timestamp_millis()),
        Some(1_700_000_000_000)
    );
}

#[tokio::test]
async fn echoes_follows_buttons_and_receipts_are_recorded_and_unknown_events_counted() {
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let ingress = ingress(sink.clone(), &registry);
    let channel = channel();
    let ts = "1700000001000";
    let echo = format!(
        r#"{{"app_id":"{APP}","event_name":"oa_send_text","timestamp":"{ts}","sender":{{"id":"{OA}"}},"recipient":{{"id":"{USER}"}},"message":{{"msg_id":"oa1","text":"Dạ shop chào bạn"}}}}"#
    );
    let follow = format!(
        r#"{{"app_id":"{APP}","oa_id":"{OA2}","event_name":"follow","timestamp":"{ts}","user_id_by_app":"1","follower":{{"id":"{USER}"}}}}"#
    );
    let unfollow = follow.replace("\"follow\"", "\"unfollow\"");
    let click = user_event("user_click_button", "c1", r##""text":"#xem_don_hang""##, ts);
    let seen = format!(
        r#"{{"app_id":"{APP}","event_name":"user_seen_message","timestamp":"{ts}","sender":{{"id":"{USER}"}},"recipient":{{"id":"{OA}"}},"message":{{"msg_ids":["oa1","oa0"]}}}}"#
    );
    let received = seen.replace("user_seen_message", "user_received_message");
    let unknown = format!(
        r#"{{"app_id":"{APP}","event_name":"user_did_something_new","timestamp":"{ts}","sender":{{"id":"{USER}"}},"recipient":{{"id":"{OA}"}}}}"#
    );
    for (body, key) in [
        (&echo, KEY),
        (&follow, KEY2),
        (&unfollow, KEY2),
        (&click, KEY),
        (&seen, KEY),
        (&received, KEY),
        (&unknown, KEY),
    ] {
        assert_eq!(
            post(&ingress, &channel, &signed(body, ts, key), body).await,
            StatusCode::OK,
            "{body}"
        );
    }
    let records = sink.records();
    assert_eq!(records.len(), 6, "the unknown event is not published");
    let echo: CloudEvent<MessageReceived> = serde_json::from_slice(&records[0].payload).unwrap();
    assert_eq!(echo.event_type.as_str(), "omni.message.echoed");
    assert_eq!(echo.data.contact.id, USER);
    assert_eq!(echo.data.channel.account, OA);
    let signals: Vec<CloudEvent<ChannelSignal>> = records[1..]
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    let kinds: Vec<SignalKind> = signals.iter().map(|s| s.data.signal).collect();
    assert_eq!(
        kinds,
        [
            SignalKind::Follow,
            SignalKind::Unfollow,
            SignalKind::Action,
            SignalKind::Read,
            SignalKind::Delivered
        ]
    );
    assert_eq!(signals[0].data.channel.account, OA2);
    assert_eq!(signals[0].data.contact.id, USER);
    assert_ne!(signals[0].id, signals[1].id, "follow and unfollow differ");
    assert_eq!(signals[2].data.payload.as_deref(), Some("#xem_don_hang"));
    assert_eq!(signals[3].data.message_ids, ["oa1", "oa0"]);
    let ignored = registry
        .gather()
        .iter()
        .filter(|m| m.name() == "omni_ingress_ignored_total")
        .flat_map(|m| m.get_metric().iter())
        .map(|m| m.get_counter().get_value())
        .sum::<f64>();
    assert_eq!(ignored, 1.0);
}

#[tokio::test]
async fn wrong_or_missing_signatures_and_bad_bodies_publish_nothing() {
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let ingress = ingress(sink.clone(), &registry);
    let channel = channel();
    let ts = "1700000002000";
    let body = user_event("user_send_text", "m1", r#""text":"chào""#, ts);
    // Another OA's key, a changed timestamp, a body changed after signing, no header.
    for headers in [
        signed(&body, ts, "wrong-key"),
        signed(&body, "1700000002001", KEY),
        signed(&body.replace("chào", "chao"), ts, KEY),
        HeaderMap::new(),
    ] {
        assert_eq!(
            post(&ingress, &channel, &headers, &body).await,
            StatusCode::UNAUTHORIZED
        );
    }
    // An app this tenant does not have.
    let foreign = body.replace(APP, "999");
    assert_eq!(
        post(&ingress, &channel, &signed(&foreign, ts, KEY), &foreign).await,
        StatusCode::UNAUTHORIZED
    );
    // Truncated and missing fields.
    let truncated = &body[..body.len() - 10];
    assert_eq!(
        post(&ingress, &channel, &signed(truncated, ts, KEY), truncated).await,
        StatusCode::BAD_REQUEST
    );
    let no_msg_id = user_event("user_send_text", "", r#""text":"x""#, ts);
    assert_eq!(
        post(&ingress, &channel, &signed(&no_msg_id, ts, KEY), &no_msg_id).await,
        StatusCode::BAD_REQUEST
    );
    // Not UTF-8 (signed correctly), and larger than the body limit.
    let binary = b"\xff\xfe\x00garbage";
    let mac = sha256_hex(&[APP.as_bytes(), binary, ts.as_bytes(), KEY.as_bytes()]);
    let mut h = HeaderMap::new();
    h.insert(
        "x-zevent-signature",
        HeaderValue::from_str(&format!("mac={mac}")).unwrap(),
    );
    let status = ingress
        .handle(&channel, "acme", &head(&h), Body::from(binary.to_vec()))
        .await
        .status();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    assert_eq!(
        post(&ingress, &channel, &signed(&huge, ts, KEY), &huge).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        ingress
            .handle(
                &channel,
                "nobody",
                &head(&signed(&body, ts, KEY)),
                Body::from(body.clone())
            )
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert!(sink.records().is_empty());
}

/// With the default window, a correctly signed event from an hour ago (a captured request
/// replayed) or an hour ahead is refused as stale; one from a minute ago is published.
#[tokio::test]
async fn a_signed_event_outside_the_replay_window_is_refused() {
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let ingress = ingress(sink.clone(), &registry);
    let mut windowed = tenant();
    windowed.replay_window = omni_channel::ReplayWindow::from_config_secs(None);
    let channel = ZaloChannel::new([(TenantId::new("acme").unwrap(), windowed)]);
    let now_ms = chrono::Utc::now().timestamp_millis();
    for (i, offset_ms) in [-3_600_000_i64, 3_600_000].into_iter().enumerate() {
        let ts = (now_ms + offset_ms).to_string();
        let body = user_event("user_send_text", &format!("old{i}"), r#""text":"x""#, &ts);
        assert_eq!(
            post(&ingress, &channel, &signed(&body, &ts, KEY), &body).await,
            StatusCode::UNAUTHORIZED,
            "{offset_ms}"
        );
    }
    let garbage = "yesterday";
    let body = user_event("user_send_text", "g", r#""text":"x""#, garbage);
    assert_eq!(
        post(&ingress, &channel, &signed(&body, garbage, KEY), &body).await,
        StatusCode::BAD_REQUEST
    );
    assert!(sink.records().is_empty());
    let rejected = registry
        .gather()
        .iter()
        .find(|f| f.name() == "omni_ingress_rejected_total")
        .map(|f| {
            f.get_metric()
                .iter()
                .filter(|m| m.get_label().iter().any(|l| l.value() == "stale_timestamp"))
                .map(|m| m.get_counter().get_value())
                .sum::<f64>()
        })
        .unwrap_or(0.0);
    assert_eq!(rejected, 2.0);
    let fresh = (now_ms - 60_000).to_string();
    let body = user_event("user_send_text", "fresh", r#""text":"x""#, &fresh);
    assert_eq!(
        post(&ingress, &channel, &signed(&body, &fresh, KEY), &body).await,
        StatusCode::OK
    );
    assert_eq!(sink.records().len(), 1);
}

#[tokio::test]
async fn a_redelivered_event_is_published_once() {
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let ingress = ingress(sink.clone(), &registry);
    let channel = channel();
    let ts = "1700000004000";
    let body = user_event("user_send_text", "m-retry", r#""text":"alo shop""#, ts);
    for _ in 0..3 {
        assert_eq!(
            post(&ingress, &channel, &signed(&body, ts, KEY), &body).await,
            StatusCode::OK
        );
    }
    assert_eq!(sink.records().len(), 1);
}

/// A sink that never acknowledges, like a broker that hangs.
struct HangingSink;

impl EventSink for HangingSink {
    fn publish<'a>(&'a self, _: &'a str, _: &'a [u8], _: &'a [u8]) -> PublishFuture<'a> {
        Box::pin(std::future::pending())
    }

    fn delete<'a>(&'a self, _: &'a str, _: &'a [u8]) -> PublishFuture<'a> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_broker_is_answered_503_inside_zalos_two_second_deadline() {
    let registry = Registry::new();
    let ingress = ingress(Arc::new(HangingSink), &registry);
    let channel = channel();
    let ts = "1700000003000";
    let body = user_event("user_send_text", "m9", r#""text":"alo""#, ts);
    let started = tokio::time::Instant::now();
    let status = post(&ingress, &channel, &signed(&body, ts, KEY), &body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(started.elapsed() >= Duration::from_millis(1800));
}

#[tokio::test]
async fn a_signed_event_for_an_oa_of_another_tenant_on_the_same_app_is_refused_and_counted() {
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let ingress = ingress(sink.clone(), &registry);
    // globex's OA is on the same Zalo app with the same OA secret key as acme's first OA.
    const GLOBEX_OA: &str = "9100000000000000001";
    let mut globex = tenant();
    globex.oas = HashMap::from([(GLOBEX_OA.to_owned(), globex.oas[OA].clone())]);
    let channel = ZaloChannel::new([
        (TenantId::new("acme").unwrap(), tenant()),
        (TenantId::new("globex").unwrap(), globex),
    ]);
    let ts = "1700000002000";
    let theirs = user_event("user_send_text", "z_foreign", r#""text":"hi""#, ts).replace(
        &format!(r#""recipient":{{"id":"{OA}"}}"#),
        &format!(r#""recipient":{{"id":"{GLOBEX_OA}"}}"#),
    );
    assert!(theirs.contains(GLOBEX_OA));
    let echo = format!(
        r#"{{"app_id":"{APP}","event_name":"oa_send_text","timestamp":"{ts}","sender":{{"id":"{GLOBEX_OA}"}},"recipient":{{"id":"{USER}"}},"message":{{"msg_id":"oa9","text":"x"}}}}"#
    );
    for body in [&theirs, &echo] {
        assert_eq!(
            post(&ingress, &channel, &signed(body, ts, KEY), body).await,
            StatusCode::OK,
            "answered 200 so Zalo does not retry it: {body}"
        );
    }
    assert!(sink.records().is_empty());
    let refused = registry
        .gather()
        .iter()
        .filter(|m| m.name() == "omni_ingress_refused_items_total")
        .flat_map(|m| m.get_metric().iter())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "reason" && l.value() == "unknown_account")
        })
        .map(|m| m.get_counter().get_value())
        .sum::<f64>();
    assert_eq!(refused, 2.0);
    // acme's own OA on the same request path still publishes.
    let ours = user_event("user_send_text", "z_ours", r#""text":"hi""#, ts);
    assert_eq!(
        post(&ingress, &channel, &signed(&ours, ts, KEY), &ours).await,
        StatusCode::OK
    );
    assert_eq!(sink.records().len(), 1);
}
