//! The SMS webhooks driven through the shared handler, with an in-memory sink standing in for
//! Kafka: what each provider's request becomes, and what is refused. Signatures are computed
//! with the providers' real algorithms (the core's functions, checked against the published
//! vectors).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use omni_channel::signature::hmac_sha256_hex;
use omni_channel::sink::MemorySink;
use omni_channel::{DedupeCache, Ingress, IngressMetrics};
use omni_core::{
    ChannelKind, ChannelRef, CloudEvent, ConversationId, DeliveryUpdate, EventId, MessageReceived,
    Secret, TenantId,
};
use prometheus::Registry;

use crate::callback::CallbackRef;
use crate::concat_store::{ConcatMetrics, ConcatStore};
use crate::gateway::GatewayMapping;
use crate::params::Params;
use crate::reassembly::ReassemblerConfig;
use crate::settings::{EsmsAccount, GatewayAccount, SmsTenant, TwilioAccount, VonageAccount};
use crate::vonage::{SignatureMethod, SignatureSettings};
use crate::webhook::{tenants, Endpoint, SmsTenants, SmsWebhook, EMPTY_TWIML};
use crate::{twilio, vonage};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token";
const BASE: &str = "https://sms.shop.example.vn";
const VI: &str = "Chào shop, đơn hàng #1024 của tôi đã giao chưa ạ? Cảm ơn!";
const VONAGE_SECRET: &str = "vonage-signature-secret";

fn gateway(json: bool) -> GatewayAccount {
    let toml_mapping = if json {
        GatewayMapping {
            format: crate::gateway::BodyFormat::Json,
            from: "/data/from".into(),
            to: "/data/to".into(),
            text: "/data/text".into(),
            message_id: "/data/id".into(),
            timestamp: None,
            signature: Some(crate::gateway::SignatureMapping {
                header: "X-Signature".into(),
                encoding: crate::gateway::SignatureEncoding::Hex,
                prefix: Some("sha256=".into()),
            }),
        }
    } else {
        GatewayMapping {
            format: crate::gateway::BodyFormat::Form,
            from: "sender".into(),
            to: "receiver".into(),
            text: "content".into(),
            message_id: "msgid".into(),
            timestamp: None,
            signature: Some(crate::gateway::SignatureMapping {
                header: "X-Hub-Sig".into(),
                encoding: crate::gateway::SignatureEncoding::Base64,
                prefix: None,
            }),
        }
    };
    GatewayAccount {
        gateway: toml_mapping.build().unwrap(),
        secret: Some(Secret::new("gw-secret")),
    }
}

fn tenant(vonage_method: Option<SignatureMethod>) -> SmsTenant {
    SmsTenant {
        public_base_url: BASE.into(),
        country_code: "84".into(),
        twilio: Some(TwilioAccount {
            account_sid: SID.into(),
            auth_token: Secret::new(TOKEN),
        }),
        vonage: Some(VonageAccount {
            api_key: "key".into(),
            api_secret: Secret::new("secret"),
            signature: vonage_method.map(|method| {
                (
                    SignatureSettings {
                        method,
                        max_age: Some(Duration::from_secs(300)),
                    },
                    Secret::new(VONAGE_SECRET),
                )
            }),
        }),
        esms: Some(EsmsAccount {
            credentials: crate::esms::EsmsCredentials {
                api_key: Secret::new("k"),
                secret_key: Secret::new("s"),
            },
            sandbox: false,
        }),
        gateways: HashMap::from([
            ("vngw".to_owned(), gateway(true)),
            ("formgw".to_owned(), gateway(false)),
        ]),
        numbers: HashMap::new(),
        callback_token: Some(Secret::new("cb-token")),
    }
}

struct Fixture {
    sink: Arc<MemorySink>,
    ingress: Ingress,
    tenants: SmsTenants,
    registry: Registry,
    /// Records of the parts topic already read back ([`read_back_parts`]).
    parts_read: std::sync::Mutex<usize>,
}

fn fixture(vonage_method: Option<SignatureMethod>) -> Fixture {
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let ingress = Ingress::new(
        sink.clone(),
        "omni.inbound.v1",
        "omni.delivery.v1",
        DedupeCache::new(Duration::from_secs(600), 1000),
        16 * 1024,
        IngressMetrics::register(&registry).unwrap(),
    );
    Fixture {
        sink,
        ingress,
        tenants: tenants([(TenantId::new("acme").unwrap(), tenant(vonage_method))]),
        registry,
        parts_read: std::sync::Mutex::new(0),
    }
}

impl Fixture {
    async fn send(
        &self,
        endpoint: Endpoint,
        method: Method,
        uri: &str,
        headers: HeaderMap,
        body: impl Into<Vec<u8>>,
    ) -> (StatusCode, String, String) {
        let adapter = SmsWebhook::new(self.tenants.clone(), endpoint);
        let head = omni_channel::request_head(method, uri, headers);
        let response = self
            .ingress
            .handle(&adapter, "acme", &head, Body::from(body.into()))
            .await;
        read(response).await
    }

    fn on(&self, topic: &str) -> Vec<serde_json::Value> {
        self.sink
            .records()
            .into_iter()
            .filter(|r| r.topic == topic && !r.tombstone)
            .map(|r| serde_json::from_slice(&r.payload).unwrap())
            .collect()
    }
}

async fn read(response: axum::response::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let ct = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, ct, String::from_utf8_lossy(&bytes).into_owned())
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn form_headers(signature: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    if let Some(sig) = signature {
        h.insert("x-twilio-signature", HeaderValue::from_str(sig).unwrap());
    }
    h
}

/// Signs a Twilio form request to `path` the way Twilio does (public URL + sorted params).
fn twilio_signed(path: &str, body: &str) -> HeaderMap {
    let url = format!("{BASE}{path}");
    let sig =
        twilio::compute_signature(TOKEN.as_bytes(), &url, &Params::from_form(body.as_bytes()));
    form_headers(Some(&sig))
}

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

const TWILIO_PATH: &str = "/v1/webhooks/sms/twilio/acme";

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

fn reference() -> CallbackRef {
    let tenant = TenantId::new("acme").unwrap();
    let channel = ChannelRef::new(ChannelKind::Sms, "+84281234567");
    CallbackRef {
        outbound: EventId::new_random(),
        conversation: ConversationId::derive(&tenant, &channel, "+84901234567", None),
    }
}

fn delivery(value: &serde_json::Value) -> DeliveryUpdate {
    serde_json::from_value::<CloudEvent<DeliveryUpdate>>(value.clone())
        .unwrap()
        .data
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

fn encode(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
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

fn concat_store(f: &Fixture) -> ConcatStore {
    ConcatStore::new(
        SmsWebhook::new(f.tenants.clone(), Endpoint::VonageMessage),
        "omni.sms-parts.v1",
        ReassemblerConfig::default(),
        ConcatMetrics::register(&f.registry).unwrap(),
    )
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

#[tokio::test]
async fn esms_callbacks_need_the_token_and_map_to_delivery_events() {
    let f = fixture(None);
    let r = reference();
    let base = format!(
        "/v1/webhooks/sms/esms/acme/callback?{}",
        r.query("OMNI CARE")
    );
    let callback = |token: &str, status: &str| {
        format!(
            "{base}&token={token}&SMSID=d533459e&SendStatus={status}&SendSuccess=1&SendFailed=0&RequestId={}",
            r.outbound
        )
    };
    let (s, _, _) = f
        .send(
            Endpoint::EsmsCallback,
            Method::GET,
            &callback("wrong", "5"),
            HeaderMap::new(),
            "",
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let no_token = format!("{base}&SMSID=x&SendStatus=5");
    let (s, _, _) = f
        .send(
            Endpoint::EsmsCallback,
            Method::GET,
            &no_token,
            HeaderMap::new(),
            "",
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for status in ["2", "5"] {
        let (s, _, answer) = f
            .send(
                Endpoint::EsmsCallback,
                Method::GET,
                &callback("cb-token", status),
                HeaderMap::new(),
                "",
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{answer}");
    }
    let events: Vec<DeliveryUpdate> = f.on("omni.delivery.v1").iter().map(delivery).collect();
    assert_eq!(events.len(), 1, "2 (waiting to send) is pending");
    assert_eq!(events[0].status, omni_core::DeliveryStatus::Delivered);
    assert_eq!(events[0].outbound_event_id, r.outbound);
    assert_eq!(events[0].channel.account, "OMNI CARE");
    assert_eq!(events[0].provider_message_id.as_deref(), Some("d533459e"));
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
    use base64::Engine as _;
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
