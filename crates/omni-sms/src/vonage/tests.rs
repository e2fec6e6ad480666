//! Vonage's endpoints through the shared handler and the durable multipart store: signed
//! messages (GET and POST), parts reassembled once across replicas, partials after the TTL,
//! delivery receipts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use omni_core::{CloudEvent, DeliveryUpdate, MessageReceived};
use prometheus::Registry;

use crate::params::Params;
use crate::reassembly::ReassemblerConfig;
use crate::testing::*;
use crate::vonage::concat_store::{ConcatMetrics, ConcatStore};
use crate::vonage::{self, SignatureMethod};
use crate::webhook::{Endpoint, SmsWebhook};

fn vonage_params(pairs: &[(&str, &str)], method: SignatureMethod) -> Vec<(String, String)> {
    let mut params: Params = pairs.iter().copied().collect();
    params.push("timestamp", chrono::Utc::now().timestamp().to_string());
    let sig = vonage::sign(method, VONAGE_SECRET.as_bytes(), &params);
    params.push("sig", sig);
    params
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn vonage_sms<'a>(id: &'a str, text: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("msisdn", "84901234567"),
        ("to", "84281234567"),
        ("messageId", id),
        ("text", text),
        ("type", "unicode"),
        ("message-timestamp", "2024-03-05 07:08:09"),
    ]
}

async fn vonage(
    f: &Fixture,
    store: &ConcatStore,
    method: Method,
    pairs: &[(String, String)],
) -> (StatusCode, String) {
    let encoded = encode(pairs);
    let (uri, body, headers) = if method == Method::GET {
        (
            format!("/v1/webhooks/sms/vonage/acme?{encoded}"),
            String::new(),
            HeaderMap::new(),
        )
    } else {
        (
            "/v1/webhooks/sms/vonage/acme".to_owned(),
            encoded,
            form_headers(None),
        )
    };
    let head = omni_channel::request_head(method, &uri, headers);
    let (status, _, answer) = read(
        store
            .handle(&f.ingress, "acme", &head, Body::from(body))
            .await,
    )
    .await;
    read_back_parts(f, store).await;
    (status, answer)
}

/// What the daemon's follower of the parts topic does: hands the records stored since the
/// last call back to the store, then reassembles as the only replica.
async fn read_back_parts(f: &Fixture, store: &ConcatStore) {
    let records = f.sink.records();
    {
        let mut seen = f.parts_read.lock().unwrap();
        for r in records
            .iter()
            .filter(|r| r.topic == "omni.sms-parts.v1")
            .skip(*seen)
        {
            store.apply(&r.key, (!r.tombstone).then_some(r.payload.as_slice()));
            *seen += 1;
        }
    }
    store
        .settle(&f.ingress, &omni_channel::Owned::everything())
        .await;
}

#[test]
fn vonage_published_vector() {
    let params: Params = [("a", "1"), ("b", "2"), ("timestamp", "1461605396")]
        .into_iter()
        .collect();
    assert_eq!(
        vonage::sign(SignatureMethod::Md5Hash, b"secret", &params),
        "6af838ef94998832dbfc29020b564830"
    );
}

#[tokio::test]
async fn vonage_get_and_post_are_accepted_in_md5hash_and_hmac_modes() {
    for method in [SignatureMethod::Md5Hash, SignatureMethod::HmacSha256] {
        let f = fixture(Some(method));
        let store = concat_store(&f);
        let get = vonage_params(&vonage_sms("0A0000000123ABCD1", VI), method);
        assert_eq!(
            vonage(&f, &store, Method::GET, &get).await.0,
            StatusCode::OK
        );
        let post = vonage_params(&vonage_sms("0A0000000123ABCD2", "Hello"), method);
        assert_eq!(
            vonage(&f, &store, Method::POST, &post).await.0,
            StatusCode::OK
        );
        let events = f.on("omni.inbound.v1");
        assert_eq!(events.len(), 2, "{method:?}");
        let first: CloudEvent<MessageReceived> = serde_json::from_value(events[0].clone()).unwrap();
        assert_eq!(first.data.message.text, VI);
        assert_eq!(first.data.contact.id, "+84901234567");
        assert_eq!(first.data.channel.account, "+84281234567");
        // A tampered value, a missing sig.
        let mut tampered = get.clone();
        tampered[3].1 = "changed".into();
        assert_eq!(
            vonage(&f, &store, Method::GET, &tampered).await.0,
            StatusCode::UNAUTHORIZED
        );
        let unsigned: Vec<(String, String)> =
            get.iter().filter(|(k, _)| k != "sig").cloned().collect();
        assert_eq!(
            vonage(&f, &store, Method::GET, &unsigned).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(f.on("omni.inbound.v1").len(), 2);
    }
}

/// A validly signed request captured and replayed after the window: refused, nothing published.
#[tokio::test]
async fn vonage_replayed_request_outside_the_window_is_refused() {
    let method = SignatureMethod::HmacSha256;
    let f = fixture(Some(method));
    let store = concat_store(&f);
    let signed_at = |secs_ago: i64| {
        let mut params: Params = vonage_sms("0A00000000000REPLAY", "hi")
            .into_iter()
            .collect();
        params.push(
            "timestamp",
            (chrono::Utc::now().timestamp() - secs_ago).to_string(),
        );
        let sig = vonage::sign(method, VONAGE_SECRET.as_bytes(), &params);
        params.push("sig", sig);
        params
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<Vec<_>>()
    };
    for secs_ago in [3_600, -3_600] {
        let (status, answer) = vonage(&f, &store, Method::POST, &signed_at(secs_ago)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{secs_ago}: {answer}");
        assert!(answer.contains("stale_timestamp"), "{answer}");
    }
    assert!(f.on("omni.inbound.v1").is_empty());
    let (status, _) = vonage(&f, &store, Method::POST, &signed_at(60)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.on("omni.inbound.v1").len(), 1);
}

fn part<'a>(id: &'a str, n: &'a str, text: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut p = vonage_sms(id, text);
    p.extend([
        ("concat", "true"),
        ("concat-ref", "42"),
        ("concat-total", "3"),
        ("concat-part", n),
    ]);
    p
}

#[tokio::test]
async fn vonage_parts_out_of_order_and_repeated_become_exactly_one_message() {
    let f = fixture(Some(SignatureMethod::HmacSha256));
    let store = concat_store(&f);
    let m = SignatureMethod::HmacSha256;
    let parts = [
        vonage_params(&part("P3", "3", "Cảm ơn!"), m),
        vonage_params(&part("P1", "1", "Chào shop, đơn hàng #1024 "), m),
        vonage_params(&part("P3", "3", "Cảm ơn!"), m),
        vonage_params(&part("P2", "2", "đã giao chưa ạ? "), m),
        vonage_params(&part("P2", "2", "đã giao chưa ạ? "), m),
    ];
    for (i, p) in parts.iter().enumerate() {
        let (status, answer) = vonage(&f, &store, Method::POST, p).await;
        assert_eq!(status, StatusCode::OK, "part {i}: {answer}");
        if i < 3 {
            assert!(
                f.on("omni.inbound.v1").is_empty(),
                "nothing before the last part"
            );
        }
    }
    let events = f.on("omni.inbound.v1");
    assert_eq!(events.len(), 1);
    let event: CloudEvent<MessageReceived> = serde_json::from_value(events[0].clone()).unwrap();
    assert_eq!(
        event.data.message.text,
        "Chào shop, đơn hàng #1024 đã giao chưa ạ? Cảm ơn!"
    );
    assert_eq!(event.data.message.id, "P1");
    assert_eq!(event.data.contact.id, "+84901234567");
    // Every part was stored before it was answered, and deleted once published.
    let records = f.sink.records();
    let stored: Vec<_> = records
        .iter()
        .filter(|r| r.topic == "omni.sms-parts.v1" && !r.tombstone)
        .collect();
    assert!(stored.len() >= 3);
    let mut deleted: Vec<String> = records
        .iter()
        .filter(|r| r.topic == "omni.sms-parts.v1" && r.tombstone)
        .map(|r| String::from_utf8(r.key.clone()).unwrap())
        .collect();
    deleted.sort();
    assert_eq!(
        deleted,
        [
            "acme/+84901234567/+84281234567/42/1",
            "acme/+84901234567/+84281234567/42/2",
            "acme/+84901234567/+84281234567/42/3"
        ]
    );
    // Another instance (or a restart) completing the same parts publishes the same id.
    let f2 = fixture(Some(m));
    let store2 = concat_store(&f2);
    for r in &stored {
        store2.apply(&r.key, Some(&r.payload));
    }
    store2
        .settle(&f2.ingress, &omni_channel::Owned::everything())
        .await;
    let again = f2.on("omni.inbound.v1");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["id"], events[0]["id"]);
}

/// Posts a Vonage webhook to `store` without reading the parts back.
async fn post_part(f: &Fixture, store: &ConcatStore, p: Vec<(String, String)>) -> StatusCode {
    let head = omni_channel::request_head(
        Method::POST,
        "/v1/webhooks/sms/vonage/acme",
        form_headers(None),
    );
    let body = encode(&p);
    read(
        store
            .handle(&f.ingress, "acme", &head, Body::from(body))
            .await,
    )
    .await
    .0
}

/// Two replicas behind a load balancer: parts reach A, B, A; the owner of the tenant changes
/// from A to B between them. One message, published by the owner only.
#[tokio::test]
async fn parts_split_over_replicas_are_reassembled_once_by_the_tenants_owner() {
    let f = fixture(Some(SignatureMethod::HmacSha256));
    let a = concat_store(&f);
    let b = ConcatStore::new(
        SmsWebhook::new(f.tenants.clone(), Endpoint::VonageMessage),
        "omni.sms-parts.v1",
        ReassemblerConfig::default(),
        ConcatMetrics::register(&Registry::new()).unwrap(),
    );
    let m = SignatureMethod::HmacSha256;
    let nobody = omni_channel::Owned::nothing();
    let everything = omni_channel::Owned::everything();
    // Both follow the one topic; the sink is it.
    let follow = |stores: &[&ConcatStore], from: usize| {
        let records: Vec<_> = f
            .sink
            .records()
            .into_iter()
            .filter(|r| r.topic == "omni.sms-parts.v1")
            .collect();
        for r in &records[from..] {
            for s in stores {
                s.apply(&r.key, (!r.tombstone).then_some(r.payload.as_slice()));
            }
        }
        records.len()
    };
    assert_eq!(
        post_part(&f, &a, vonage_params(&part("S1", "1", "Một "), m)).await,
        StatusCode::OK
    );
    let mut read_to = follow(&[&a, &b], 0);
    a.settle(&f.ingress, &everything).await;
    b.settle(&f.ingress, &nobody).await;
    assert_eq!(
        post_part(&f, &b, vonage_params(&part("S2", "2", "hai "), m)).await,
        StatusCode::OK
    );
    read_to = follow(&[&a, &b], read_to);
    // The tenant moves from A to B.
    a.settle(&f.ingress, &nobody).await;
    b.settle(&f.ingress, &everything).await;
    assert!(
        f.on("omni.inbound.v1").is_empty(),
        "nothing before the last part"
    );
    assert_eq!(
        post_part(&f, &a, vonage_params(&part("S3", "3", "ba"), m)).await,
        StatusCode::OK
    );
    follow(&[&a, &b], read_to);
    a.settle(&f.ingress, &nobody).await;
    b.settle(&f.ingress, &everything).await;
    let events = f.on("omni.inbound.v1");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["message"]["text"], "Một hai ba");
    // A part whose number is outside its total is refused before it is stored.
    let records = f.sink.records().len();
    assert_eq!(
        post_part(&f, &a, vonage_params(&part("S9", "9", "x"), m)).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(f.sink.records().len(), records, "nothing stored");
}

#[tokio::test]
async fn an_incomplete_vonage_message_is_published_with_what_arrived_after_the_ttl() {
    let f = fixture(Some(SignatureMethod::Md5Hash));
    let store = concat_store(&f);
    let p1 = vonage_params(&part("Q1", "1", "Phần một "), SignatureMethod::Md5Hash);
    assert_eq!(
        vonage(&f, &store, Method::POST, &p1).await.0,
        StatusCode::OK
    );
    store.tick(&f.ingress, chrono::Utc::now()).await;
    assert!(f.on("omni.inbound.v1").is_empty());
    store
        .tick(
            &f.ingress,
            chrono::Utc::now() + chrono::Duration::minutes(16),
        )
        .await;
    let events = f.on("omni.inbound.v1");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["message"]["text"], "Phần một ");
    assert!(events[0]["data"]["message"]["payload"]
        .as_str()
        .unwrap()
        .contains("partial"));
}

#[tokio::test]
async fn vonage_delivery_receipts_become_delivery_events() {
    let f = fixture(Some(SignatureMethod::Md5Hash));
    let r = reference();
    let client_ref = r.client_ref();
    for (status, code) in [
        ("buffered", "0"),
        ("delivered", "0"),
        ("expired", "3"),
        ("unknown", "1"),
    ] {
        let pairs = vonage_params(
            &[
                ("msisdn", "84901234567"),
                ("to", "84281234567"),
                ("messageId", "0B00000012345678"),
                ("status", status),
                ("err-code", code),
                ("client-ref", &client_ref),
            ],
            SignatureMethod::Md5Hash,
        );
        let uri = format!("/v1/webhooks/sms/vonage/acme/dlr?{}", encode(&pairs));
        let (s, _, answer) = f
            .send(Endpoint::VonageDlr, Method::GET, &uri, HeaderMap::new(), "")
            .await;
        assert_eq!(s, StatusCode::OK, "{answer}");
    }
    let events: Vec<DeliveryUpdate> = f.on("omni.delivery.v1").iter().map(delivery).collect();
    let statuses: Vec<_> = events.iter().map(|e| e.status).collect();
    use omni_core::DeliveryStatus::*;
    assert_eq!(statuses, [Sent, Delivered, Failed], "unknown is pending");
    assert!(events.iter().all(|e| e.outbound_event_id == r.outbound
        && e.conversation_id == r.conversation
        && e.channel.account == "+84281234567"));
    assert_eq!(events[2].reason.as_deref(), Some("invalid_recipient"));
}
