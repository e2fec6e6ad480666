//! The Messenger webhook through the shared handler, with an in-memory sink standing in for
//! Kafka, and payloads built from Meta's documented shapes and signed as Meta signs them.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use omni_channel::signature::{hmac_sha1_hex, hmac_sha256_hex};
use omni_channel::sink::MemorySink;
use omni_channel::Ingress;
use omni_core::{ChannelSignal, CloudEvent, MessageReceived, Secret, TenantId};
use prometheus::Registry;
use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::meta::MetaWebhook;

const SECRET: &str = "meta-app-secret";
const PAGE: &str = "104912345678901";
const PSID: &str = "5384937120339286147";

struct Fixture {
    sink: Arc<MemorySink>,
    registry: Registry,
    ingress: Ingress,
    channel: MessengerChannel,
}

/// Another tenant's page on the same Meta app (same app secret).
const OTHER_PAGE: &str = "777888999000111";

/// acme's Instagram professional account, on the same app.
const IG: &str = "17841400000000001";
/// An Instagram-scoped user id.
const IGSID: &str = "6543210987654321";

fn tenant_with_page(page: &str, accept_sha1: bool) -> MessengerTenant {
    let settings = || PageSettings {
        access_token: Secret::new("page-token"),
        human_agent_tag: true,
    };
    MessengerTenant {
        app_secret: Secret::new(SECRET),
        verify_token: Secret::new("verify-me"),
        accept_sha1,
        pages: HashMap::from([(page.to_owned(), settings())]),
        instagram: HashMap::from([(IG.to_owned(), settings())])
            .into_iter()
            .filter(|_| page == PAGE)
            .collect(),
    }
}

fn fixture(accept_sha1: bool) -> Fixture {
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let ingress = Ingress::standalone(sink.clone(), &registry, 64 * 1024).unwrap();
    let channel = MessengerChannel::new([
        (
            TenantId::new("acme").unwrap(),
            tenant_with_page(PAGE, accept_sha1),
        ),
        (
            TenantId::new("globex").unwrap(),
            tenant_with_page(OTHER_PAGE, false),
        ),
    ]);
    Fixture {
        sink,
        registry,
        ingress,
        channel,
    }
}

fn signed(body: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "x-hub-signature-256",
        HeaderValue::from_str(&format!(
            "sha256={}",
            hmac_sha256_hex(SECRET.as_bytes(), body)
        ))
        .unwrap(),
    );
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h
}

async fn post(f: &Fixture, headers: &HeaderMap, body: &[u8]) -> (StatusCode, String) {
    let resp = f
        .ingress
        .handle(
            &f.channel,
            "acme",
            &omni_channel::request_head(
                axum::http::Method::POST,
                "/v1/webhooks/messenger/acme",
                headers.clone(),
            ),
            Body::from(body.to_vec()),
        )
        .await;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn counter(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|m| m.name() == name)
        .flat_map(|m| m.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}

/// Meta escapes non-ASCII as \uXXXX: "Xin chào, đơn hàng" as Meta sends it.
const VI_ESCAPED: &str = r"Xin ch\u00e0o, \u0111\u01a1n h\u00e0ng c\u1ee7a t\u00f4i \u0111\u00e2u?";
const VI: &str = "Xin chào, đơn hàng của tôi đâu?";

fn text_message(mid: &str) -> String {
    format!(
        r#"{{"object":"page","entry":[{{"id":"{PAGE}","time":1700000000000,"messaging":[{{"sender":{{"id":"{PSID}"}},"recipient":{{"id":"{PAGE}"}},"timestamp":1700000000000,"message":{{"mid":"{mid}","text":"{VI_ESCAPED}","reply_to":{{"mid":"m_prev"}},"quick_reply":{{"payload":"ORDER_STATUS"}}}}}}]}}]}}"#
    )
}

#[test]
fn handshake_echoes_the_challenge_only_for_the_right_token() {
    let f = fixture(false);
    let q = |mode: &str, token: &str| {
        HashMap::from([
            ("hub.mode".to_owned(), mode.to_owned()),
            ("hub.verify_token".to_owned(), token.to_owned()),
            ("hub.challenge".to_owned(), "1158201444".to_owned()),
        ])
    };
    assert_eq!(
        f.channel.handshake("acme", &q("subscribe", "verify-me")),
        Ok("1158201444".to_owned())
    );
    let wrong = f
        .channel
        .handshake("acme", &q("subscribe", "guess"))
        .unwrap_err();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    assert!(f
        .channel
        .handshake("acme", &q("unsubscribe", "verify-me"))
        .is_err());
    assert_eq!(
        f.channel
            .handshake("nobody", &q("subscribe", "verify-me"))
            .unwrap_err()
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_signed_text_message_becomes_a_received_message_with_vietnamese_intact() {
    let f = fixture(false);
    let body = text_message("m_1");
    let (status, answer) = post(&f, &signed(body.as_bytes()), body.as_bytes()).await;
    assert_eq!(
        (status, answer.as_str()),
        (StatusCode::OK, "EVENT_RECEIVED")
    );
    let records = f.sink.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key, b"acme");
    let event: CloudEvent<MessageReceived> = serde_json::from_slice(&records[0].payload).unwrap();
    assert_eq!(event.event_type.as_str(), "omni.message.received");
    let m = &event.data;
    assert_eq!(m.message.text, VI);
    assert_eq!(m.message.id, "m_1");
    assert_eq!(m.message.reply_to.as_deref(), Some("m_prev"));
    assert_eq!(m.message.payload.as_deref(), Some("ORDER_STATUS"));
    assert_eq!(m.contact.id, PSID);
    assert_eq!(m.channel.account, PAGE);
    assert_eq!(
        m.message.sent_at.map(|t| t.timestamp_millis()),
        Some(1_700_000_000_000)
    );
}

#[tokio::test]
async fn every_item_kind_in_every_entry_is_handled() {
    let f = fixture(false);
    // Two entries with every kind of messaging item: attachments (image, location, fallback),
    // a postback, a foreign app's echo, our own echo, a delivery, a read, a reaction and a kind
    // Meta may add tomorrow.
    let body = include_str!("../../../../testdata/messenger/every_item_kind.json");
    let (status, _) = post(&f, &signed(body.as_bytes()), body.as_bytes()).await;
    assert_eq!(status, StatusCode::OK);
    let records = f.sink.records();
    let types: Vec<String> = records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            v["type"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        types,
        [
            "omni.message.received",
            "omni.message.received",
            "omni.message.echoed",
            "omni.channel.signal",
            "omni.channel.signal"
        ]
    );
    let att: CloudEvent<MessageReceived> = serde_json::from_slice(&records[0].payload).unwrap();
    let urls: Vec<&str> = att
        .data
        .message
        .attachments
        .iter()
        .map(|a| a.url.as_str())
        .collect();
    assert_eq!(
        urls,
        ["https://scontent.example/img.jpg", "geo:10.7769,106.7009"]
    );
    assert_eq!(
        att.data.message.attachments[0].content_type.as_deref(),
        Some("image/*")
    );
    let postback: CloudEvent<MessageReceived> =
        serde_json::from_slice(&records[1].payload).unwrap();
    assert_eq!(postback.data.message.text, "Gặp nhân viên");
    assert_eq!(
        postback.data.message.payload.as_deref(),
        Some("TALK_TO_AGENT")
    );
    let echo: CloudEvent<MessageReceived> = serde_json::from_slice(&records[2].payload).unwrap();
    assert_eq!(
        echo.data.contact.id, PSID,
        "an echo's contact is the customer"
    );
    assert_eq!(echo.data.message.direction, omni_core::Direction::Outbound);
    assert_eq!(
        echo.subject, att.subject,
        "same conversation as the customer's"
    );
    let delivered: CloudEvent<ChannelSignal> = serde_json::from_slice(&records[3].payload).unwrap();
    assert_eq!(delivered.data.signal, omni_core::SignalKind::Delivered);
    assert_eq!(delivered.data.message_ids, ["m_echo"]);
    assert_eq!(
        delivered.data.watermark.map(|w| w.timestamp_millis()),
        Some(1_700_000_000_003)
    );
    let read: CloudEvent<ChannelSignal> = serde_json::from_slice(&records[4].payload).unwrap();
    assert_eq!(read.data.signal, omni_core::SignalKind::Read);
    for kind in ["own_echo", "reaction", "unknown"] {
        assert_eq!(
            counter(
                &f.registry,
                "omni_ingress_ignored_total",
                &[("channel", "messenger"), ("kind", kind)]
            ),
            1.0,
            "{kind}"
        );
    }
}

#[tokio::test]
async fn bad_signatures_and_bad_bodies_publish_nothing() {
    let f = fixture(false);
    let body = text_message("m_2");
    let mut wrong = HeaderMap::new();
    wrong.insert(
        "x-hub-signature-256",
        HeaderValue::from_str(&format!(
            "sha256={}",
            hmac_sha256_hex(b"other", body.as_bytes())
        ))
        .unwrap(),
    );
    assert_eq!(
        post(&f, &wrong, body.as_bytes()).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&f, &HeaderMap::new(), body.as_bytes()).await.0,
        StatusCode::UNAUTHORIZED
    );
    // The signature of a body re-serialized (without Meta's escapes) does not match the raw one.
    let reserialized =
        serde_json::to_vec(&serde_json::from_str::<serde_json::Value>(&body).unwrap()).unwrap();
    assert_ne!(reserialized, body.as_bytes());
    assert_eq!(
        post(&f, &signed(&reserialized), body.as_bytes()).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Legacy SHA-1 is refused unless the tenant accepts it.
    let mut sha1 = HeaderMap::new();
    sha1.insert(
        "x-hub-signature",
        HeaderValue::from_str(&format!(
            "sha1={}",
            hmac_sha1_hex(SECRET.as_bytes(), body.as_bytes())
        ))
        .unwrap(),
    );
    assert_eq!(
        post(&f, &sha1, body.as_bytes()).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Properly signed but truncated, not UTF-8, or not a page webhook.
    let truncated = &body.as_bytes()[..body.len() / 2];
    assert_eq!(
        post(&f, &signed(truncated), truncated).await.0,
        StatusCode::BAD_REQUEST
    );
    let binary = b"\xff\xfe{\"object\":\"page\"}";
    assert_eq!(
        post(&f, &signed(binary), binary).await.0,
        StatusCode::BAD_REQUEST
    );
    let no_object = br#"{"entry":[]}"#;
    assert_eq!(
        post(&f, &signed(no_object), no_object).await.0,
        StatusCode::BAD_REQUEST
    );
    // Larger than the limit: refused before the signature is even computed.
    let huge = vec![b' '; 65 * 1024];
    assert_eq!(
        post(&f, &signed(&huge), &huge).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert!(f.sink.records().is_empty());
    assert_eq!(
        counter(
            &f.registry,
            "omni_ingress_rejected_total",
            &[("channel", "messenger"), ("reason", "bad_credentials")]
        ),
        3.0
    );
}

#[tokio::test]
async fn legacy_sha1_signature_is_accepted_when_configured() {
    let f = fixture(true);
    let body = text_message("m_3");
    let mut sha1 = HeaderMap::new();
    sha1.insert(
        "x-hub-signature",
        HeaderValue::from_str(&format!(
            "sha1={}",
            hmac_sha1_hex(SECRET.as_bytes(), body.as_bytes())
        ))
        .unwrap(),
    );
    assert_eq!(post(&f, &sha1, body.as_bytes()).await.0, StatusCode::OK);
    assert_eq!(f.sink.records().len(), 1);
}

#[tokio::test]
async fn a_redelivered_webhook_is_published_once_and_kafka_down_means_503() {
    let f = fixture(false);
    let body = text_message("m_4");
    assert_eq!(
        post(&f, &signed(body.as_bytes()), body.as_bytes()).await.0,
        StatusCode::OK
    );
    assert_eq!(
        post(&f, &signed(body.as_bytes()), body.as_bytes()).await.0,
        StatusCode::OK
    );
    assert_eq!(f.sink.records().len(), 1);
    f.sink.set_failing(true);
    let other = text_message("m_5");
    assert_eq!(
        post(&f, &signed(other.as_bytes()), other.as_bytes())
            .await
            .0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(f.sink.records().len(), 1);
}

/// A text from `PSID` to `page`, in an entry for `entry_id`.
fn item_for(page: &str, mid: &str) -> String {
    format!(
        r#"{{"sender":{{"id":"{PSID}"}},"recipient":{{"id":"{page}"}},"timestamp":1700000000000,"message":{{"mid":"{mid}","text":"hi"}}}}"#
    )
}

fn entry(entry_id: &str, items: &[String]) -> String {
    format!(
        r#"{{"id":"{entry_id}","time":1700000000000,"messaging":[{}]}}"#,
        items.join(",")
    )
}

fn refused(f: &Fixture) -> f64 {
    counter(
        &f.registry,
        "omni_ingress_refused_items_total",
        &[
            ("channel", "messenger"),
            ("tenant", "acme"),
            ("reason", "unknown_account"),
        ],
    )
}

#[tokio::test]
async fn a_signed_event_for_another_tenants_page_is_refused_counted_and_answered_200() {
    let f = fixture(false);
    // Signed with the app secret both tenants share, posted to acme's URL, for globex's page.
    let body = format!(
        r#"{{"object":"page","entry":[{}]}}"#,
        entry(OTHER_PAGE, &[item_for(OTHER_PAGE, "m_foreign")])
    );
    let (status, answer) = post(&f, &signed(body.as_bytes()), body.as_bytes()).await;
    assert_eq!(
        (status, answer.as_str()),
        (StatusCode::OK, "EVENT_RECEIVED")
    );
    assert!(f.sink.records().is_empty());
    assert_eq!(refused(&f), 1.0);
    // An echo is the page's own: its sender is the page, so the sender decides.
    let echo = format!(
        r#"{{"object":"page","entry":[{{"id":"{PAGE}","messaging":[{{"sender":{{"id":"{OTHER_PAGE}"}},"recipient":{{"id":"{PSID}"}},"message":{{"mid":"m_e","is_echo":true,"text":"x"}}}}]}}]}}"#
    );
    assert_eq!(
        post(&f, &signed(echo.as_bytes()), echo.as_bytes()).await.0,
        StatusCode::OK
    );
    assert!(f.sink.records().is_empty());
    assert_eq!(refused(&f), 2.0);
}

#[tokio::test]
async fn a_mixed_batch_publishes_only_the_items_for_the_tenants_own_pages() {
    let f = fixture(false);
    let body = format!(
        r#"{{"object":"page","entry":[{},{},{}]}}"#,
        entry(
            PAGE,
            &[item_for(PAGE, "m_ok_1"), item_for(OTHER_PAGE, "m_bad_1")]
        ),
        // An entry for another page: none of its items, whatever their recipient.
        entry(OTHER_PAGE, &[item_for(PAGE, "m_bad_2")]),
        entry(PAGE, &[item_for(PAGE, "m_ok_2")]),
    );
    let (status, _) = post(&f, &signed(body.as_bytes()), body.as_bytes()).await;
    assert_eq!(status, StatusCode::OK);
    let mids: Vec<String> = f
        .sink
        .records()
        .iter()
        .map(|r| {
            let e: CloudEvent<MessageReceived> = serde_json::from_slice(&r.payload).unwrap();
            e.data.message.id
        })
        .collect();
    assert_eq!(mids, ["m_ok_1", "m_ok_2"]);
    assert_eq!(refused(&f), 2.0);
}

#[tokio::test]
async fn an_object_we_do_not_handle_is_answered_200_counted_and_not_published() {
    let f = fixture(false);
    // A WhatsApp change subscribed on the same app: not a 400, or Meta retries and at length
    // disables the subscription.
    let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[]}]}"#;
    let (status, answer) = post(&f, &signed(body), body).await;
    assert_eq!(
        (status, answer.as_str()),
        (StatusCode::OK, "EVENT_RECEIVED")
    );
    assert!(f.sink.records().is_empty());
    let ignored = counter(
        &f.registry,
        "omni_ingress_ignored_total",
        &[("channel", "messenger"), ("kind", "unhandled_object")],
    );
    assert_eq!(ignored, 1.0);
}

fn decode(record: &omni_channel::sink::PublishedRecord) -> serde_json::Value {
    serde_json::from_slice(&record.payload).unwrap()
}

#[tokio::test]
async fn every_instagram_item_kind_becomes_an_instagram_event_on_the_same_endpoint() {
    let f = fixture(false);
    let body = include_str!("../../../../testdata/instagram/every_item_kind.json");
    let (status, _) = post(&f, &signed(body.as_bytes()), body.as_bytes()).await;
    assert_eq!(status, StatusCode::OK);
    let events: Vec<serde_json::Value> = f.sink.records().iter().map(decode).collect();
    let summary: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            let data = &e["data"];
            let id = data["message"]["id"].as_str().or(data["signal"].as_str());
            (e["type"].as_str().unwrap(), id.unwrap())
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("omni.message.received", "ig_text"),
            ("omni.message.received", "ig_media"),
            ("omni.message.received", "ig_mention"),
            ("omni.message.received", "ig_story_reply"),
            ("omni.message.echoed", "ig_echo"),
            ("omni.channel.signal", "read"),
            ("omni.message.received", "ig_postback"),
        ]
    );
    for e in &events {
        assert_eq!(
            e["data"]["channel"],
            serde_json::json!({"kind": "instagram", "account": IG})
        );
        assert_eq!(e["data"]["contact"]["id"], IGSID);
        assert_eq!(e["subject"], events[0]["subject"], "one conversation");
    }
    assert_eq!(
        events[0]["data"]["message"]["text"],
        "Shop ơi, còn size M không?"
    );
    let names = |i: usize| -> Vec<(String, String)> {
        let atts = events[i]["data"]["message"]["attachments"]
            .as_array()
            .unwrap();
        atts.iter()
            .map(|a| {
                let name = a["name"].as_str().unwrap_or("").to_owned();
                (name, a["url"].as_str().unwrap().to_owned())
            })
            .collect()
    };
    let cdn = |f: &str| format!("https://lookaside.fbsbx.example/ig/{f}");
    assert_eq!(
        names(1),
        [
            (String::new(), cdn("img.jpg")),
            ("Reel mới".to_owned(), cdn("reel.mp4")),
            ("share".to_owned(), cdn("post.jpg")),
        ]
    );
    assert_eq!(
        names(2),
        [("story_mention".to_owned(), cdn("story-mention.jpg"))]
    );
    assert_eq!(names(3), [("story_reply".to_owned(), cdn("story.jpg"))]);
    assert_eq!(events[3]["data"]["message"]["text"], "Đẹp quá!");
    assert!(events[3]["data"]["message"]["reply_to"].is_null());
    assert_eq!(
        events[5]["data"]["message_ids"],
        serde_json::json!(["ig_echo"])
    );
    for kind in ["reaction", "message_deleted"] {
        let labels = [("channel", "instagram"), ("kind", kind)];
        assert_eq!(
            counter(&f.registry, "omni_ingress_ignored_total", &labels),
            1.0,
            "{kind}"
        );
    }
    let received = [("channel", "instagram"), ("tenant", "acme")];
    assert_eq!(
        counter(&f.registry, "omni_messages_received_total", &received),
        7.0
    );
}

#[tokio::test]
async fn an_instagram_event_for_an_account_the_tenant_does_not_have_is_refused() {
    let f = fixture(false);
    let item = |account: &str| {
        format!(
            r#"{{"sender":{{"id":"{IGSID}"}},"recipient":{{"id":"{account}"}},"message":{{"mid":"m_{account}","text":"x"}}}}"#
        )
    };
    // acme's page id is not an Instagram account of acme; neither is another app user's.
    let body = format!(
        r#"{{"object":"instagram","entry":[{},{}]}}"#,
        entry(PAGE, &[item(PAGE)]),
        entry("17841499999999999", &[item("17841499999999999")]),
    );
    let (status, _) = post(&f, &signed(body.as_bytes()), body.as_bytes()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(f.sink.records().is_empty());
    let labels = [
        ("channel", "instagram"),
        ("tenant", "acme"),
        ("reason", "unknown_account"),
    ];
    assert_eq!(
        counter(&f.registry, "omni_ingress_refused_items_total", &labels),
        2.0
    );
}
