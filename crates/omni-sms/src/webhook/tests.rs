//! What every SMS endpoint shares: bodies that are not UTF-8 or too large, unknown tenants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::{Endpoint, SmsWebhook};
use crate::testing::*;
use crate::vonage::SignatureMethod;

#[tokio::test]
async fn non_utf8_and_huge_bodies_are_refused_without_panics() {
    let f = fixture(Some(SignatureMethod::Md5Hash));
    let store = concat_store(&f);
    let binary: &[u8] = b"\xff\xfe\x00MessageSid=\xff&From=%FF%FE";
    let (s, _, _) = f
        .send(
            Endpoint::TwilioMessage,
            Method::POST,
            TWILIO_PATH,
            twilio_signed(TWILIO_PATH, &String::from_utf8_lossy(binary)),
            binary.to_vec(),
        )
        .await;
    assert!(s.is_client_error(), "{s}");
    let huge = "x".repeat(20 * 1024);
    let (s, _, _) = f
        .send(
            Endpoint::TwilioMessage,
            Method::POST,
            TWILIO_PATH,
            form_headers(Some("x")),
            huge.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let head = omni_channel::request_head(
        Method::POST,
        "/v1/webhooks/sms/vonage/acme",
        form_headers(None),
    );
    let (s, _, _) = read(
        store
            .handle(&f.ingress, "acme", &head, Body::from(huge))
            .await,
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    let head = omni_channel::request_head(Method::POST, "/v1/webhooks/sms/vonage/acme", h);
    let (s, _, _) = read(
        store
            .handle(&f.ingress, "acme", &head, Body::from(binary.to_vec()))
            .await,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Unknown tenants are 404 on every endpoint.
    let adapter = SmsWebhook::new(f.tenants.clone(), Endpoint::EsmsCallback);
    let head = omni_channel::request_head(Method::GET, "/x", HeaderMap::new());
    let (s, _, _) = read(
        f.ingress
            .handle(&adapter, "nobody", &head, Body::empty())
            .await,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(f.on("omni.inbound.v1").is_empty());
}
