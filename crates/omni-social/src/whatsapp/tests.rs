//! The WhatsApp webhook through the shared handler, with an in-memory sink standing in for
//! Kafka, payloads in the shapes of Meta's documented examples, signed as Meta signs them.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use omni_channel::delivery::CallbackRef;
use omni_channel::signature::hmac_sha256_hex;
use omni_channel::sink::MemorySink;
use omni_channel::Ingress;
use omni_core::{
    CloudEvent, ConversationId, DeliveryUpdate, EventId, MessageReceived, Secret, TenantId,
};
use prometheus::Registry;
use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::meta::MetaWebhook;

const SECRET: &str = "meta-app-secret";
const NUMBER: &str = "106540352242922";
const OTHER_NUMBER: &str = "106540352249999";
const MEDIA_BASE: &str = "https://graph.example/v23.0";

struct Fixture {
    sink: Arc<MemorySink>,
    registry: Registry,
    ingress: Ingress,
    channel: WhatsappChannel,
}

fn tenant(number: &str) -> WhatsappTenant {
    WhatsappTenant {
        app_secret: Secret::new(SECRET),
        verify_token: Secret::new("verify-me"),
        numbers: HashMap::from([(
            number.to_owned(),
            NumberSettings {
                access_token: Secret::new("wa-token"),
            },
        )]),
    }
}

fn fixture() -> Fixture {
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let ingress = Ingress::standalone(sink.clone(), &registry, 256 * 1024).unwrap();
    let channel = WhatsappChannel::new(
        [
            (TenantId::new("acme").unwrap(), tenant(NUMBER)),
            // Another tenant on the same Meta app: the same secret signs its numbers' changes.
            (TenantId::new("globex").unwrap(), tenant(OTHER_NUMBER)),
        ],
        MEDIA_BASE,
    );
    Fixture {
        sink,
        registry,
        ingress,
        channel,
    }
}

fn signed(body: &[u8], secret: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let sig = format!("sha256={}", hmac_sha256_hex(secret.as_bytes(), body));
    h.insert("x-hub-signature-256", HeaderValue::from_str(&sig).unwrap());
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h
}

async fn post(f: &Fixture, headers: &HeaderMap, body: &str) -> StatusCode {
    f.ingress
        .handle(
            &f.channel,
            "acme",
            &omni_channel::request_head(
                axum::http::Method::POST,
                "/v1/webhooks/whatsapp/acme",
                headers.clone(),
            ),
            Body::from(body.to_owned()),
        )
        .await
        .status()
}

fn counter(registry: &Registry, name: &str, label: (&str, &str)) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|m| m.name() == name)
        .flat_map(|m| m.get_metric().iter())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == label.0 && l.value() == label.1)
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}

fn messages(f: &Fixture) -> Vec<MessageReceived> {
    f.sink
        .records()
        .iter()
        .map(|r| {
            serde_json::from_slice::<CloudEvent<MessageReceived>>(&r.payload)
                .unwrap()
                .data
        })
        .collect()
}

const EVERY_TYPE: &str = include_str!("../../../../testdata/whatsapp/every_message_type.json");
const STATUSES: &str = include_str!("../../../../testdata/whatsapp/statuses.json");

#[test]
fn handshake_echoes_the_challenge_only_for_the_right_token() {
    let f = fixture();
    let q = |token: &str| {
        HashMap::from([
            ("hub.mode".to_owned(), "subscribe".to_owned()),
            ("hub.verify_token".to_owned(), token.to_owned()),
            ("hub.challenge".to_owned(), "1158201444".to_owned()),
        ])
    };
    assert_eq!(
        f.channel.handshake("acme", &q("verify-me")),
        Ok("1158201444".to_owned())
    );
    let wrong = f.channel.handshake("acme", &q("guess")).unwrap_err();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let unknown = f.channel.handshake("nobody", &q("verify-me")).unwrap_err();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_wrong_or_missing_signature_publishes_nothing() {
    let f = fixture();
    let wrong = post(
        &f,
        &signed(EVERY_TYPE.as_bytes(), "not-the-secret"),
        EVERY_TYPE,
    )
    .await;
    assert_eq!(wrong, StatusCode::UNAUTHORIZED);
    let mut unsigned = signed(EVERY_TYPE.as_bytes(), SECRET);
    unsigned.remove("x-hub-signature-256");
    assert_eq!(
        post(&f, &unsigned, EVERY_TYPE).await,
        StatusCode::UNAUTHORIZED
    );
    // Signed for other bytes than those sent.
    let other = signed(b"{}", SECRET);
    assert_eq!(post(&f, &other, EVERY_TYPE).await, StatusCode::UNAUTHORIZED);
    assert!(f.sink.records().is_empty());
}

#[tokio::test]
async fn every_message_type_becomes_a_received_message_or_is_counted_as_ignored() {
    let f = fixture();
    let status = post(&f, &signed(EVERY_TYPE.as_bytes(), SECRET), EVERY_TYPE).await;
    assert_eq!(status, StatusCode::OK);
    let got = messages(&f);
    let ids: Vec<&str> = got.iter().map(|m| m.message.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "wamid.TEXT",
            "wamid.IMAGE",
            "wamid.DOC",
            "wamid.STICKER",
            "wamid.LOCATION",
            "wamid.CONTACTS",
            "wamid.BUTTON_REPLY",
            "wamid.LIST_REPLY",
            "wamid.TEMPLATE_BUTTON",
        ]
    );
    let text = &got[0];
    assert_eq!(text.message.text, "Xin chào, đơn hàng của tôi đâu?");
    assert_eq!(text.message.reply_to.as_deref(), Some("wamid.QUOTED"));
    assert_eq!(text.contact.id, "84901234567");
    assert_eq!(text.contact.name.as_deref(), Some("Nguyễn Văn An"));
    assert_eq!(text.contact.phone.as_deref(), Some("+84901234567"));
    assert_eq!(text.channel.kind.as_str(), "whatsapp");
    assert_eq!(text.channel.account, NUMBER);
    assert_eq!(
        text.message.sent_at.map(|t| t.timestamp()),
        Some(1_700_000_000)
    );
    let image = &got[1].message;
    assert_eq!(image.text, "hóa đơn");
    assert_eq!(
        image.attachments[0].url,
        format!("{MEDIA_BASE}/1479537139650973")
    );
    assert_eq!(
        image.attachments[0].content_type.as_deref(),
        Some("image/jpeg")
    );
    let doc = &got[2].message.attachments[0];
    assert_eq!(doc.name.as_deref(), Some("invoice.pdf"));
    assert_eq!(doc.content_type.as_deref(), Some("application/pdf"));
    assert_eq!(
        got[3].message.attachments[0].content_type.as_deref(),
        Some("image/webp")
    );
    let place = &got[4].message;
    assert_eq!(place.attachments[0].url, "geo:10.7769,106.7009");
    assert_eq!(place.text, "Nhà hàng, 1 Lê Lợi, Q1");
    assert_eq!(got[5].message.text, "Trần Bình: +84 90 111 2222");
    let button = &got[6].message;
    assert_eq!(
        (button.text.as_str(), button.payload.as_deref()),
        ("Tra đơn", Some("ORDER_STATUS"))
    );
    // A CSAT answer from the survey list comes back as the score, which the router reads.
    assert_eq!(got[7].message.text, "5");
    assert_eq!(got[8].message.payload.as_deref(), Some("STOP_PROMO"));
    // Every message of one customer is in one conversation.
    assert!(got
        .iter()
        .all(|m| m.conversation_id == got[0].conversation_id));
    let ignored = |kind| counter(&f.registry, "omni_ingress_ignored_total", ("kind", kind));
    assert_eq!(ignored("reaction"), 1.0);
    assert_eq!(ignored("unsupported"), 1.0);
    assert_eq!(ignored("unknown"), 1.0);
}

fn reference() -> CallbackRef {
    CallbackRef {
        outbound: EventId::new_random(),
        conversation: ConversationId::derive(
            &TenantId::new("acme").unwrap(),
            &omni_core::ChannelRef::new(omni_core::ChannelKind::Whatsapp, NUMBER),
            "84901234567",
            None,
        ),
    }
}

#[tokio::test]
async fn statuses_of_our_replies_become_delivery_events_with_meta_error_codes_as_reasons() {
    let f = fixture();
    let (ok, failed) = (reference(), reference());
    let body = STATUSES
        .replace("\"REF\"", &format!("\"{}\"", ok.client_ref()))
        .replace("\"FAILED_REF\"", &format!("\"{}\"", failed.client_ref()));
    assert_eq!(
        post(&f, &signed(body.as_bytes(), SECRET), &body).await,
        StatusCode::OK
    );
    let records = f.sink.records();
    let updates: Vec<DeliveryUpdate> = records
        .iter()
        .map(|r| {
            serde_json::from_slice::<CloudEvent<DeliveryUpdate>>(&r.payload)
                .unwrap()
                .data
        })
        .collect();
    let seen: Vec<(String, &str)> = updates
        .iter()
        .map(|u| {
            (
                format!("{:?}", u.status).to_lowercase(),
                u.provider_message_id.as_deref().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("sent".to_owned(), "wamid.OUT1"),
            ("delivered".to_owned(), "wamid.OUT1"),
            ("read".to_owned(), "wamid.OUT1"),
            ("failed".to_owned(), "wamid.OUT2"),
        ]
    );
    assert!(records.iter().all(|r| r.topic == "omni.delivery.v1"));
    assert!(updates[..3]
        .iter()
        .all(|u| u.outbound_event_id == ok.outbound
            && u.conversation_id == ok.conversation
            && u.reason.is_none()));
    let fail = &updates[3];
    assert_eq!(fail.outbound_event_id, failed.outbound);
    assert_eq!(fail.reason.as_deref(), Some("outside_window"));
    let detail = fail.detail.as_deref().unwrap();
    assert!(
        detail.contains("131047") && detail.contains("24 hours"),
        "{detail}"
    );
    assert_eq!(fail.occurred_at.timestamp(), 1_700_000_103);
    // The status of a message another app sent on this number names no reply of ours.
    assert_eq!(
        counter(
            &f.registry,
            "omni_ingress_ignored_total",
            ("kind", "uncorrelated")
        ),
        1.0
    );
}

#[tokio::test]
async fn a_change_for_another_tenants_number_is_refused_and_counted_but_answered_200() {
    let f = fixture();
    let body = EVERY_TYPE.replace(NUMBER, OTHER_NUMBER);
    let status = post(&f, &signed(body.as_bytes(), SECRET), &body).await;
    assert_eq!(status, StatusCode::OK);
    assert!(f.sink.records().is_empty());
    assert_eq!(
        counter(
            &f.registry,
            "omni_ingress_refused_items_total",
            ("reason", "unknown_account")
        ),
        12.0
    );
}

#[tokio::test]
async fn other_objects_and_fields_are_answered_200_and_ignored() {
    let f = fixture();
    for body in [
        r#"{"object":"page","entry":[]}"#,
        r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"message_template_status_update","value":{"event":"APPROVED"}}]}]}"#,
    ] {
        assert_eq!(
            post(&f, &signed(body.as_bytes(), SECRET), body).await,
            StatusCode::OK
        );
    }
    assert!(f.sink.records().is_empty());
    let malformed = "{\"object\": 7}";
    assert_eq!(
        post(&f, &signed(malformed.as_bytes(), SECRET), malformed).await,
        StatusCode::BAD_REQUEST
    );
}
