#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use base64::Engine as _;
use chrono::DateTime;
use omni_channel::signature::hmac_sha256_hex;
use omni_core::{CloudEvent, MessageReceived};
use proptest::prelude::*;

use super::*;
use crate::crypto;
use crate::testing::*;
use crate::webhook::Endpoint;

const JSON_MAPPING: &str = r#"{
    "format": "json",
    "from": "/data/from",
    "to": "/data/to",
    "text": "/data/text",
    "message_id": "/data/id",
    "timestamp": {"field": "/data/sent_at", "format": {"pattern": "%Y-%m-%d %H:%M:%S"},
                  "utc_offset_minutes": 420},
    "signature": {"header": "X-Signature", "encoding": "hex", "prefix": "sha256="}
}"#;

fn json_gateway() -> Gateway {
    serde_json::from_str::<GatewayMapping>(JSON_MAPPING)
        .unwrap()
        .build()
        .unwrap()
}

fn form_mapping() -> GatewayMapping {
    GatewayMapping {
        format: BodyFormat::Form,
        from: "sender".into(),
        to: "receiver".into(),
        text: "message".into(),
        message_id: "id".into(),
        timestamp: Some(TimestampMapping {
            field: "ts".into(),
            format: TimestampFormat::UnixSeconds,
            utc_offset_minutes: 0,
        }),
        signature: Some(SignatureMapping {
            header: "X-Gateway-Signature".into(),
            encoding: SignatureEncoding::Base64,
            prefix: None,
        }),
    }
}

#[test]
fn json_mapping_extracts_nested_fields_and_numbers() {
    let body = r#"{"data":{"from":84901234567,"to":"8085","text":"Xin chào",
        "id":"abc-1","sent_at":"2024-03-05 14:08:09"}}"#;
    let message = json_gateway().extract(body.as_bytes()).unwrap();
    assert_eq!(message.from, "84901234567");
    assert_eq!(message.to, "8085");
    assert_eq!(message.text, "Xin chào");
    assert_eq!(message.message_id, "abc-1");
    // 14:08:09 at UTC+7 is 07:08:09 UTC.
    assert_eq!(
        message.timestamp,
        DateTime::from_timestamp(1_709_622_489, 0)
    );
}

#[test]
fn form_mapping_extracts_keys_and_unix_time() {
    let gateway = form_mapping().build().unwrap();
    let message = gateway
        .extract(b"sender=0901234567&receiver=8085&message=hi+there&id=42&ts=1709622489")
        .unwrap();
    assert_eq!(message.from, "0901234567");
    assert_eq!(message.text, "hi there");
    assert_eq!(
        message.timestamp,
        DateTime::from_timestamp(1_709_622_489, 0)
    );
}

#[test]
fn missing_fields_are_named_in_the_error() {
    let gateway = json_gateway();
    let err = gateway
        .extract(br#"{"data":{"from":"1","text":"x","id":"1"}}"#)
        .unwrap_err();
    assert_eq!(err.to_string(), "missing to at `/data/to`");
    assert!(matches!(
        gateway.extract(br#"{"data":{"from":"1","to":"2","text":"x","id":null}}"#),
        Err(GatewayError::MissingField {
            role: "message_id",
            ..
        })
    ));
    assert!(matches!(
        gateway.extract(br#"{"data":{"from":{"n":1},"to":"2","text":"x","id":"1"}}"#),
        Err(GatewayError::WrongType { role: "from", .. })
    ));
    assert!(matches!(
        gateway.extract(b"from=1"),
        Err(GatewayError::InvalidJson(_))
    ));
    assert!(matches!(
        gateway.extract(br#"{"data":{"from":"1","to":"2","text":"x","id":"1","sent_at":"soon"}}"#),
        Err(GatewayError::InvalidTimestamp { .. })
    ));
    // A mapped timestamp that is absent is simply unknown.
    let message = gateway
        .extract(br#"{"data":{"from":"1","to":"2","text":"","id":"1"}}"#)
        .unwrap();
    assert_eq!((message.text.as_str(), message.timestamp), ("", None));
}

#[test]
fn hex_signature_with_prefix_verifies_the_raw_body() {
    let gateway = json_gateway();
    let body = br#"{"data":{}}"#;
    let mac = hex::encode(crypto::hmac_sha256(b"s3cret", &[body]));
    assert_eq!(gateway.signature_header(), Some("X-Signature"));
    assert_eq!(
        gateway
            .verify(b"s3cret", Some(&format!("sha256={mac}")), body)
            .unwrap(),
        Verification::Signed
    );
    assert!(gateway
        .verify(
            b"s3cret",
            Some(&format!("SHA256={}", mac.to_uppercase())),
            body
        )
        .is_ok());
    assert!(matches!(
        gateway.verify(b"s3cret", Some(&format!("sha256={mac}")), b"{\"data\":1}"),
        Err(GatewayError::SignatureMismatch)
    ));
    assert!(matches!(
        gateway.verify(b"other", Some(&format!("sha256={mac}")), body),
        Err(GatewayError::SignatureMismatch)
    ));
    assert!(matches!(
        gateway.verify(b"s3cret", Some(&mac), body),
        Err(GatewayError::MalformedSignature { .. })
    ));
    assert!(matches!(
        gateway.verify(b"s3cret", None, body),
        Err(GatewayError::MissingSignature { .. })
    ));
    assert!(matches!(
        gateway.verify(b"", Some(&format!("sha256={mac}")), body),
        Err(GatewayError::EmptySecret)
    ));
}

#[test]
fn base64_signature_verifies() {
    let gateway = form_mapping().build().unwrap();
    let body = b"sender=1&receiver=2&message=x&id=1";
    let mac = base64::engine::general_purpose::STANDARD.encode(crypto::hmac_sha256(b"k", &[body]));
    assert!(gateway.verify(b"k", Some(&mac), body).is_ok());
    assert!(matches!(
        gateway.verify(b"k", Some("!!!"), body),
        Err(GatewayError::MalformedSignature { .. })
    ));
}

#[test]
fn a_mapping_without_signature_says_it_is_unsigned() {
    let mut mapping = form_mapping();
    mapping.signature = None;
    let gateway = mapping.build().unwrap();
    assert_eq!(
        gateway.verify(b"", None, b"x").unwrap(),
        Verification::Unsigned
    );
}

#[test]
fn invalid_mappings_are_refused_at_build_time() {
    let with = |edit: fn(&mut GatewayMapping)| {
        let mut mapping: GatewayMapping = serde_json::from_str(JSON_MAPPING).unwrap();
        edit(&mut mapping);
        mapping.build().map(|_| ()).map_err(|e| e.to_string())
    };
    assert_eq!(
        with(|m| m.from = "data.from".into()),
        Err("invalid gateway mapping: `from` must be a json pointer starting with '/'".into())
    );
    assert!(with(|m| m.text = String::new()).is_err());
    assert!(with(|m| {
        if let Some(sig) = m.signature.as_mut() {
            sig.header = "X Signature".into();
        }
    })
    .is_err());
    assert!(with(|m| {
        if let Some(sig) = m.signature.as_mut() {
            sig.prefix = Some(String::new());
        }
    })
    .is_err());
    assert!(with(|m| {
        if let Some(ts) = m.timestamp.as_mut() {
            ts.format = TimestampFormat::Pattern("%Q".into());
        }
    })
    .is_err());
    assert!(with(|m| {
        if let Some(ts) = m.timestamp.as_mut() {
            ts.utc_offset_minutes = 24 * 60;
        }
    })
    .is_err());
    let mut form = form_mapping();
    form.to = "/to".into();
    assert!(form.validate().is_err());
}

#[test]
fn unknown_config_keys_are_refused() {
    let with_typo = JSON_MAPPING.replace("\"message_id\"", "\"messageid\"");
    assert!(serde_json::from_str::<GatewayMapping>(&with_typo).is_err());
    let extra_in_signature = JSON_MAPPING.replace("\"prefix\"", "\"prefx\"");
    assert!(serde_json::from_str::<GatewayMapping>(&extra_in_signature).is_err());
}

proptest! {
    #[test]
    fn arbitrary_bodies_and_headers_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..256),
        header in proptest::option::of(".{0,80}"),
    ) {
        let json = json_gateway();
        let form = form_mapping().build().unwrap();
        let _ = json.extract(&body);
        let _ = form.extract(&body);
        let _ = json.verify(b"k", header.as_deref(), &body);
        let _ = form.verify(b"k", header.as_deref(), &body);
    }
}

#[tokio::test]
async fn gateways_map_json_and_form_bodies_with_an_hmac_header() {
    let f = fixture(None);
    let json =
        format!(r#"{{"data":{{"from":"0901234567","to":8085,"text":"{VI}","id":123456789}}}}"#);
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert(
        "x-signature",
        HeaderValue::from_str(&format!(
            "sha256={}",
            hmac_sha256_hex(b"gw-secret", json.as_bytes())
        ))
        .unwrap(),
    );
    let (s, _, answer) = f
        .send(
            Endpoint::Gateway,
            Method::POST,
            "/v1/webhooks/sms/gateway/acme/vngw",
            h.clone(),
            json.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{answer}");
    let (s, _, _) = f
        .send(
            Endpoint::Gateway,
            Method::POST,
            "/v1/webhooks/sms/gateway/acme/vngw",
            h,
            json.replace("123456789", "1"),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let body = form(&[
        ("sender", "+84912345678"),
        ("receiver", "8085"),
        ("content", "Alo"),
        ("msgid", "g-2"),
    ]);
    let mac = crate::crypto::hmac_sha256(b"gw-secret", &[body.as_bytes()]);
    let mut h = form_headers(None);
    h.insert(
        "x-hub-sig",
        HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(mac)).unwrap(),
    );
    let (s, _, answer) = f
        .send(
            Endpoint::Gateway,
            Method::POST,
            "/v1/webhooks/sms/gateway/acme/formgw",
            h.clone(),
            body.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{answer}");
    let (s, _, _) = f
        .send(
            Endpoint::Gateway,
            Method::POST,
            "/v1/webhooks/sms/gateway/acme/nogw",
            h,
            body,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let events: Vec<CloudEvent<MessageReceived>> = f
        .on("omni.inbound.v1")
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].data.contact.id, "+84901234567");
    assert_eq!(
        events[0].data.channel.account, "8085",
        "short codes stay as they are"
    );
    assert_eq!(events[0].data.message.text, VI);
    assert_eq!(events[0].data.message.id, "123456789");
    assert_eq!(events[1].data.contact.id, "+84912345678");
}
