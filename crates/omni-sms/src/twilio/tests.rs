//! Twilio's endpoints through the shared handler: messages, MMS, signatures (form, JSON body,
//! behind a proxy) and status callbacks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use omni_core::{ChannelKind, ChannelRef, CloudEvent, MessageReceived};

use crate::params::Params;
use crate::testing::*;
use crate::twilio::{self, EMPTY_TWIML};
use crate::webhook::Endpoint;

fn twilio_sms(sid: &str, account: &str, text: &str) -> String {
    form(&[
        ("ToCountry", "VN"),
        ("SmsMessageSid", sid),
        ("NumMedia", "0"),
        ("MessageSid", sid),
        ("AccountSid", account),
        ("From", "+84901234567"),
        ("To", "+84281234567"),
        ("Body", text),
        ("NumSegments", "1"),
        ("ApiVersion", "2010-04-01"),
    ])
}

#[tokio::test]
async fn a_signed_twilio_sms_is_published_with_an_e164_contact_and_answered_with_empty_twiml() {
    let f = fixture(None);
    let body = twilio_sms("SM11111111111111111111111111111111", SID, VI);
    let (status, ct, answer) = f
        .send(
            Endpoint::TwilioMessage,
            Method::POST,
            TWILIO_PATH,
            twilio_signed(TWILIO_PATH, &body),
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(ct, "text/xml");
    assert_eq!(answer, EMPTY_TWIML);
    let events = f.on("omni.inbound.v1");
    assert_eq!(events.len(), 1);
    let event: CloudEvent<MessageReceived> = serde_json::from_value(events[0].clone()).unwrap();
    assert_eq!(event.data.message.text, VI, "Vietnamese text intact");
    assert_eq!(event.data.message.id, "SM11111111111111111111111111111111");
    assert_eq!(event.data.contact.id, "+84901234567");
    assert_eq!(event.data.contact.phone.as_deref(), Some("+84901234567"));
    assert_eq!(
        event.data.channel,
        ChannelRef::new(ChannelKind::Sms, "+84281234567")
    );
    // Twilio retries the same MessageSid: answered, published once.
    let (status, _, _) = f
        .send(
            Endpoint::TwilioMessage,
            Method::POST,
            TWILIO_PATH,
            twilio_signed(TWILIO_PATH, &body),
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.on("omni.inbound.v1").len(), 1);
}

#[tokio::test]
async fn twilio_mms_media_become_attachments() {
    let f = fixture(None);
    let body = form(&[
        ("MessageSid", "MM22222222222222222222222222222222"),
        ("AccountSid", SID),
        ("From", "+84901234567"),
        ("To", "+84281234567"),
        ("Body", ""),
        ("NumMedia", "2"),
        (
            "MediaUrl0",
            "https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM/Media/ME1",
        ),
        ("MediaContentType0", "image/jpeg"),
        (
            "MediaUrl1",
            "https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM/Media/ME2",
        ),
        ("MediaContentType1", "application/pdf"),
    ]);
    let (status, _, answer) = f
        .send(
            Endpoint::TwilioMessage,
            Method::POST,
            TWILIO_PATH,
            twilio_signed(TWILIO_PATH, &body),
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let event: CloudEvent<MessageReceived> =
        serde_json::from_value(f.on("omni.inbound.v1")[0].clone()).unwrap();
    let media: Vec<(String, Option<String>)> = event
        .data
        .message
        .attachments
        .iter()
        .map(|a| (a.url.clone(), a.content_type.clone()))
        .collect();
    assert_eq!(media.len(), 2);
    assert!(media[0].0.ends_with("/ME1"));
    assert_eq!(media[0].1.as_deref(), Some("image/jpeg"));
    assert_eq!(media[1].1.as_deref(), Some("application/pdf"));
}

#[tokio::test]
async fn twilio_refuses_wrong_signatures_other_accounts_and_missing_fields() {
    let f = fixture(None);
    let body = twilio_sms("SM3", SID, "xin chào");
    // Signed with another token, over another URL, the body changed after signing, unsigned.
    let other_token = twilio::compute_signature(
        b"not-the-token",
        &format!("{BASE}{TWILIO_PATH}"),
        &Params::from_form(body.as_bytes()),
    );
    let other_url = twilio::compute_signature(
        TOKEN.as_bytes(),
        "https://evil.example/v1/webhooks/sms/twilio/acme",
        &Params::from_form(body.as_bytes()),
    );
    for (headers, sent) in [
        (form_headers(Some(&other_token)), body.clone()),
        (form_headers(Some(&other_url)), body.clone()),
        (
            twilio_signed(TWILIO_PATH, &body),
            body.replace("SM3", "SM9"),
        ),
        (form_headers(None), body.clone()),
    ] {
        let (status, _, answer) = f
            .send(
                Endpoint::TwilioMessage,
                Method::POST,
                TWILIO_PATH,
                headers,
                sent,
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    }
    // Correctly signed, but for another Twilio account.
    let foreign = twilio_sms("SM4", "ACffffffffffffffffffffffffffffffff", "hi");
    let (status, _, answer) = f
        .send(
            Endpoint::TwilioMessage,
            Method::POST,
            TWILIO_PATH,
            twilio_signed(TWILIO_PATH, &foreign),
            foreign,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(answer.contains("AccountSid"), "{answer}");
    // Signed, but without From.
    let no_from = form(&[
        ("MessageSid", "SM5"),
        ("AccountSid", SID),
        ("To", "+84281234567"),
    ]);
    let (status, _, answer) = f
        .send(
            Endpoint::TwilioMessage,
            Method::POST,
            TWILIO_PATH,
            twilio_signed(TWILIO_PATH, &no_from),
            no_from,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer.contains("From"), "{answer}");
    assert!(f.sink.records().is_empty());
}

#[test]
fn twilio_published_vector_and_url_port_variants() {
    let params: Params = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
        ("Caller", "+14158675309"),
    ]
    .into_iter()
    .collect();
    let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    let expected = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
    assert_eq!(twilio::compute_signature(b"12345", url, &params), expected);
    let body = form(&[
        ("CallSid", "CA1234567890ABCDE"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
        ("Caller", "+14158675309"),
    ]);
    // Twilio signed without a port; we see it with :443 (and the other way round).
    for seen in [
        "https://mycompany.com:443/myapp.php?foo=1&bar=2",
        "https://mycompany.com/myapp.php?foo=1&bar=2",
    ] {
        twilio::verify_request(b"12345", seen, body.as_bytes(), Some(expected)).unwrap();
    }
    assert!(twilio::verify_request(
        b"12345",
        "https://mycompany.com:8443/myapp.php?foo=1&bar=2",
        body.as_bytes(),
        Some(expected)
    )
    .is_err());
}

#[tokio::test]
async fn twilio_behind_a_proxy_is_verified_against_the_public_url_with_or_without_port() {
    let f = fixture(None);
    let body = twilio_sms("SM6", SID, "hello");
    // Twilio signed the URL with an explicit :443; our public_base_url has none.
    let sig = twilio::compute_signature(
        TOKEN.as_bytes(),
        &format!("https://sms.shop.example.vn:443{TWILIO_PATH}"),
        &Params::from_form(body.as_bytes()),
    );
    let (status, _, answer) = f
        .send(
            Endpoint::TwilioMessage,
            Method::POST,
            TWILIO_PATH,
            form_headers(Some(&sig)),
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn twilio_json_bodies_are_verified_by_their_body_sha256() {
    let f = fixture(None);
    let body = format!(
        r#"{{"MessageSid":"SM7","AccountSid":"{SID}","From":"0901234567","To":"+84281234567","Body":"{VI}"}}"#
    );
    let hash = crate::crypto::sha256(body.as_bytes());
    let path = format!("{TWILIO_PATH}?bodySHA256={}", hex::encode(hash));
    let sig = twilio::compute_signature(TOKEN.as_bytes(), &format!("{BASE}{path}"), &Params::new());
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("x-twilio-signature", HeaderValue::from_str(&sig).unwrap());
    let (status, _, answer) = f
        .send(
            Endpoint::TwilioMessage,
            Method::POST,
            &path,
            h.clone(),
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let event: CloudEvent<MessageReceived> =
        serde_json::from_value(f.on("omni.inbound.v1")[0].clone()).unwrap();
    assert_eq!(
        event.data.contact.id, "+84901234567",
        "national form normalized"
    );
    assert_eq!(event.data.message.text, VI);
    let (status, _, _) = f
        .send(
            Endpoint::TwilioMessage,
            Method::POST,
            &path,
            h,
            body.replace("SM7", "SM8"),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn twilio_status_callbacks_become_delivery_events_for_the_outbound_event() {
    let f = fixture(None);
    let r = reference();
    let path = format!("{TWILIO_PATH}/status?{}", r.query("+84281234567"));
    let post = |status: &'static str, code: Option<&'static str>| {
        let mut pairs = vec![
            ("MessageSid", "SM99"),
            ("MessageStatus", status),
            ("AccountSid", SID),
            ("From", "+84281234567"),
            ("To", "+84901234567"),
        ];
        if let Some(code) = code {
            pairs.push(("ErrorCode", code));
        }
        form(&pairs)
    };
    for (status, code) in [
        ("queued", None),
        ("delivered", None),
        ("undelivered", Some("30003")),
    ] {
        let body = post(status, code);
        let (s, ct, _) = f
            .send(
                Endpoint::TwilioStatus,
                Method::POST,
                &path,
                twilio_signed(&path, &body),
                body,
            )
            .await;
        assert_eq!((s, ct.as_str()), (StatusCode::OK, "text/xml"));
    }
    assert!(f.on("omni.inbound.v1").is_empty());
    let events = f.on("omni.delivery.v1");
    assert_eq!(events.len(), 2, "queued is pending: nothing published");
    let delivered = delivery(&events[0]);
    assert_eq!(delivered.status, omni_core::DeliveryStatus::Delivered);
    assert_eq!(delivered.outbound_event_id, r.outbound);
    assert_eq!(delivered.conversation_id, r.conversation);
    assert_eq!(delivered.provider_message_id.as_deref(), Some("SM99"));
    assert_eq!(delivered.channel.account, "+84281234567");
    let failed = delivery(&events[1]);
    assert_eq!(failed.status, omni_core::DeliveryStatus::Failed);
    assert_eq!(failed.reason.as_deref(), Some("user_unavailable"));
    assert!(failed.detail.unwrap().contains("30003"));
    // The reference is signed: changing it breaks the signature.
    let other = reference();
    let forged = format!("{TWILIO_PATH}/status?{}", other.query("+84281234567"));
    let body = post("delivered", None);
    let (s, _, _) = f
        .send(
            Endpoint::TwilioStatus,
            Method::POST,
            &forged,
            twilio_signed(&path, &body),
            body,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}
