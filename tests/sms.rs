//! SMS end to end: the sender against local servers standing in for Twilio, Vonage and
//! eSMS.vn (asserting the exact requests, segment counts and error classification), and the
//! daemon from a signed Twilio webhook to `omni.inbound.v1`, an agent's reply to the Twilio
//! stand-in, the signed status callback, and the delivery events; Vonage multipart parts
//! reassembled across a daemon restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_channel::{ChannelSender, FailureReason, SendProgress, SendRequest};
use omni_core::{
    ChannelKind, ChannelRef, ConversationId, EventId, OutboundMessage, Secret, TenantId,
};
use omni_e2e::standin::StandIn;
use omni_e2e::webhooks::{form, post_twilio, twilio_sign};
use omni_e2e::{read_topic, Broker, Daemon};
use omni_sms::params::Params;
use omni_sms::send::SmsSender;
use omni_sms::settings::{
    EsmsAccount, NumberRoute, SmsApiSettings, SmsTenant, TwilioAccount, VonageAccount,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TWILIO_NUMBER: &str = "+84281234567";
const VONAGE_NUMBER: &str = "+447700900123";
const BRAND: &str = "OMNI CARE";
const VI: &str = "Dạ, đơn hàng #1024 của anh/chị đã được giao hôm nay ạ. Cảm ơn quý khách!";
const TWILIO_PATH: &str = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json";
const ESMS_PATH: &str = "/MainService.svc/json/SendMultipleMessage_V4_post_json/";

fn tenant() -> SmsTenant {
    SmsTenant {
        public_base_url: "https://sms.shop.example.vn".into(),
        country_code: "84".into(),
        twilio: Some(TwilioAccount {
            account_sid: SID.into(),
            auth_token: Secret::new("TWILIO-TOKEN"),
        }),
        vonage: Some(VonageAccount {
            api_key: "vkey".into(),
            api_secret: Secret::new("VSECRET"),
            signature: None,
        }),
        esms: Some(EsmsAccount {
            credentials: omni_sms::esms::EsmsCredentials {
                api_key: Secret::new("EKEY"),
                secret_key: Secret::new("ESECRET"),
            },
            sandbox: false,
        }),
        gateways: HashMap::new(),
        numbers: HashMap::from([
            (
                TWILIO_NUMBER.to_owned(),
                NumberRoute::Twilio {
                    messaging_service_sid: None,
                },
            ),
            (VONAGE_NUMBER.to_owned(), NumberRoute::Vonage),
            (
                BRAND.to_owned(),
                NumberRoute::Esms {
                    sms_type: omni_sms::esms::SmsType::BrandnameCare,
                },
            ),
        ]),
        callback_token: Some(Secret::new("CB-TOKEN")),
    }
}

fn sender(api: &StandIn) -> SmsSender {
    SmsSender::new(
        [(TenantId::new("acme").unwrap(), tenant())],
        SmsApiSettings {
            twilio_base_url: api.url.clone(),
            vonage_base_url: api.url.clone(),
            esms_base_url: api.url.clone(),
            timeout: Duration::from_secs(5),
            rate_per_number: 0.0,
        },
    )
    .unwrap()
}

fn reply(account: &str, recipient: &str, text: &str) -> SendRequest {
    let tenant = TenantId::new("acme").unwrap();
    let channel = ChannelRef::new(ChannelKind::Sms, account);
    SendRequest {
        event_id: EventId::new_random(),
        message: OutboundMessage {
            tenant: tenant.clone(),
            conversation_id: ConversationId::derive(&tenant, &channel, recipient, None),
            channel,
            recipient: recipient.into(),
            agent_id: Some("agent-7".into()),
            text: text.into(),
            subject: None,
            attachments: vec![],
            reply_to: None,
            csat_survey: false,
            template: None,
        },
    }
}

fn pairs(v: Vec<(String, String)>) -> HashMap<String, String> {
    v.into_iter().collect()
}

#[tokio::test]
async fn twilio_gets_the_documented_request_and_segments_are_counted_per_encoding() {
    let api = StandIn::start().await;
    let sender = sender(&api);
    // Vietnamese (UCS-2, 71 units → 2 parts), GSM-only (1), escapes (155 septets → 1 part is
    // 160 max: 150 letters + 5 escapes costing 2 = 160 → 1), emoji (UCS-2, 2 units each).
    let cases = [
        (VI.to_owned(), 2),
        ("Hello, your order #1024 has shipped.".to_owned(), 1),
        (format!("{}{}", "a".repeat(150), "{}[]~"), 1),
        (format!("{}{}", "a".repeat(151), "{}[]~"), 2),
        ("Cảm ơn 🙏".repeat(20), 3),
    ];
    for (text, segments) in cases {
        api.answer(
            TWILIO_PATH,
            201,
            r#"{"sid":"SMaaaa","status":"queued","num_segments":"2"}"#,
        );
        let request = reply(TWILIO_NUMBER, "0901234567", &text);
        let receipt = sender
            .send(&request, &mut SendProgress::default())
            .await
            .unwrap();
        assert_eq!(receipt.provider_message_id.as_deref(), Some("SMaaaa"));
        assert_eq!(receipt.segments, Some(segments), "{text}");
        let sent = api.requests_to(TWILIO_PATH).pop().unwrap();
        assert_eq!(sent.method, "POST");
        assert_eq!(
            sent.headers["authorization"],
            format!("Basic {}", base64_encode(&format!("{SID}:TWILIO-TOKEN")))
        );
        assert_eq!(
            sent.headers["content-type"],
            "application/x-www-form-urlencoded"
        );
        let form = pairs(sent.form());
        assert_eq!(form["To"], "+84901234567", "normalized to E.164");
        assert_eq!(form["From"], TWILIO_NUMBER);
        assert_eq!(form["Body"], text);
        let callback = &form["StatusCallback"];
        let (path, query) = callback.split_once('?').unwrap();
        assert_eq!(
            path,
            "https://sms.shop.example.vn/v1/webhooks/sms/twilio/acme/status"
        );
        let q = Params::from_query(query);
        assert_eq!(q.get("ref"), Some(request.event_id.to_string().as_str()));
        assert_eq!(
            q.get("conv"),
            Some(request.message.conversation_id.to_string().as_str())
        );
        assert_eq!(q.get("account"), Some(TWILIO_NUMBER));
        assert_eq!(form.len(), 4);
    }
}

fn base64_encode(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (u32::from(x) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn twilio_errors_are_classified() {
    let api = StandIn::start().await;
    let sender = sender(&api);
    for (status, body, reason, retryable) in [
        (
            400,
            r#"{"code":21211,"message":"The 'To' number is not a valid phone number.","status":400}"#,
            FailureReason::InvalidRecipient,
            false,
        ),
        (
            400,
            r#"{"code":21610,"message":"Attempt to send to unsubscribed recipient","status":400}"#,
            FailureReason::UserUnavailable,
            false,
        ),
        (
            401,
            r#"{"code":20003,"message":"Authenticate","status":401}"#,
            FailureReason::BadToken,
            false,
        ),
        (
            429,
            r#"{"code":20429,"message":"Too Many Requests","status":429}"#,
            FailureReason::RateLimited,
            true,
        ),
        (503, "unavailable", FailureReason::ProviderUnavailable, true),
    ] {
        api.answer(TWILIO_PATH, status, body);
        let err = sender
            .send(
                &reply(TWILIO_NUMBER, "+84901234567", "hi"),
                &mut SendProgress::default(),
            )
            .await
            .unwrap_err();
        assert_eq!((err.reason, err.retryable), (reason, retryable), "{body}");
        assert!(!err.detail.contains("TWILIO-TOKEN"));
    }
    // Not ours, not a phone: permanent, no call.
    let before = api.requests().len();
    let err = sender
        .send(
            &reply("+84999999999", "+84901234567", "hi"),
            &mut SendProgress::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason, FailureReason::AccountNotConfigured);
    let err = sender
        .send(
            &reply(TWILIO_NUMBER, "SHOPEE", "hi"),
            &mut SendProgress::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason, FailureReason::InvalidRecipient);
    assert_eq!(api.requests().len(), before);
}

#[tokio::test]
async fn vonage_gets_the_documented_request_with_unicode_and_client_ref() {
    let api = StandIn::start().await;
    let sender = sender(&api);
    api.answer(
        "/sms/json",
        200,
        r#"{"message-count":"2","messages":[{"to":"84901234567","message-id":"0C000000A1","status":"0","remaining-balance":"3.14","message-price":"0.03","network":"45204"},{"to":"84901234567","message-id":"0C000000A2","status":"0"}]}"#,
    );
    let request = reply(VONAGE_NUMBER, "0901234567", VI);
    let receipt = sender
        .send(&request, &mut SendProgress::default())
        .await
        .unwrap();
    assert_eq!(receipt.provider_message_id.as_deref(), Some("0C000000A1"));
    assert_eq!(receipt.segments, Some(2));
    let sent = &api.requests_to("/sms/json")[0];
    let form = sent.form();
    let keys: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "api_key",
            "api_secret",
            "from",
            "to",
            "text",
            "type",
            "client-ref",
            "callback"
        ]
    );
    let form = pairs(form);
    assert_eq!(form["api_key"], "vkey");
    assert_eq!(form["api_secret"], "VSECRET");
    assert_eq!(form["from"], "447700900123");
    assert_eq!(form["to"], "84901234567");
    assert_eq!(form["text"], VI);
    assert_eq!(form["type"], "unicode");
    assert_eq!(
        form["client-ref"],
        format!("{}.{}", request.event_id, request.message.conversation_id)
    );
    assert_eq!(
        form["callback"],
        "https://sms.shop.example.vn/v1/webhooks/sms/vonage/acme/dlr?token=CB-TOKEN"
    );
    // GSM-7 text goes without type=unicode.
    api.answer(
        "/sms/json",
        200,
        r#"{"message-count":"1","messages":[{"message-id":"B1","status":"0"}]}"#,
    );
    sender
        .send(
            &reply(VONAGE_NUMBER, "+84901234567", "Hello"),
            &mut SendProgress::default(),
        )
        .await
        .unwrap();
    let form = pairs(api.requests_to("/sms/json")[1].form());
    assert!(!form.contains_key("type"));
    // Errors in a 200 answer, by status.
    for (status, reason, retryable) in [
        ("1", FailureReason::RateLimited, true),
        ("4", FailureReason::BadToken, false),
        ("9", FailureReason::QuotaExceeded, false),
        ("3", FailureReason::InvalidMessage, false),
        ("5", FailureReason::ProviderUnavailable, true),
    ] {
        api.answer(
            "/sms/json",
            200,
            &format!(
                r#"{{"message-count":"1","messages":[{{"status":"{status}","error-text":"x"}}]}}"#
            ),
        );
        let err = sender
            .send(
                &reply(VONAGE_NUMBER, "+84901234567", "Hi"),
                &mut SendProgress::default(),
            )
            .await
            .unwrap_err();
        assert_eq!((err.reason, err.retryable), (reason, retryable), "{status}");
    }
}

#[tokio::test]
async fn esms_gets_the_documented_json_with_local_phone_and_callback() {
    let api = StandIn::start().await;
    let sender = sender(&api);
    api.answer(
        ESMS_PATH,
        200,
        r#"{"CodeResult":"100","CountRegenerate":0,"SMSID":"d533459ee42b2b9525ba9eabf6a8156"}"#,
    );
    let request = reply(BRAND, "+84901234567", VI);
    let receipt = sender
        .send(&request, &mut SendProgress::default())
        .await
        .unwrap();
    assert_eq!(
        receipt.provider_message_id.as_deref(),
        Some("d533459ee42b2b9525ba9eabf6a8156")
    );
    assert_eq!(receipt.segments, Some(2));
    let sent = &api.requests_to(ESMS_PATH)[0];
    assert_eq!(sent.headers["content-type"], "application/json");
    let body = sent.json();
    let callback = format!(
        "https://sms.shop.example.vn/v1/webhooks/sms/esms/acme/callback?token=CB-TOKEN&ref={}&conv={}&account=OMNI+CARE",
        request.event_id, request.message.conversation_id
    );
    assert_eq!(
        body,
        json!({
            "ApiKey": "EKEY", "SecretKey": "ESECRET", "Phone": "0901234567", "Content": VI,
            "Brandname": "OMNI CARE", "SmsType": "2", "IsUnicode": "1", "Sandbox": "0",
            "RequestId": request.event_id.to_string(), "CallbackUrl": callback,
        })
    );
    for (code, reason, retryable) in [
        ("101", FailureReason::BadToken, false),
        ("103", FailureReason::QuotaExceeded, false),
        ("104", FailureReason::InvalidMessage, false),
        ("99", FailureReason::ProviderUnavailable, true),
    ] {
        api.answer(
            ESMS_PATH,
            200,
            &format!(r#"{{"CodeResult":"{code}","ErrorMessage":"x"}}"#),
        );
        let err = sender
            .send(
                &reply(BRAND, "+84901234567", "Hi"),
                &mut SendProgress::default(),
            )
            .await
            .unwrap_err();
        assert_eq!((err.reason, err.retryable), (reason, retryable), "{code}");
    }
    // A foreign number cannot go through a Vietnamese gateway.
    let err = sender
        .send(
            &reply(BRAND, "+14158675309", "Hi"),
            &mut SendProgress::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason, FailureReason::InvalidRecipient);
}

fn sms_env(api: &StandIn, public: &str) -> Vec<(String, String)> {
    let n = |number: &str, k: &str| format!("OMNI__TENANTS__DEMO__SMS__NUMBERS__{number}__{k}");
    vec![
        ("OMNI__SMS__TWILIO_BASE_URL".into(), api.url.clone()),
        ("OMNI__SMS__VONAGE_BASE_URL".into(), api.url.clone()),
        ("OMNI__OUTBOUND__INITIAL_BACKOFF_MS".into(), "100".into()),
        (
            "OMNI__TENANTS__DEMO__SMS__PUBLIC_BASE_URL".into(),
            public.into(),
        ),
        (
            "OMNI__TENANTS__DEMO__SMS__CALLBACK_TOKEN".into(),
            "CB-TOKEN".into(),
        ),
        (
            "OMNI__TENANTS__DEMO__SMS__TWILIO__ACCOUNT_SID".into(),
            SID.into(),
        ),
        (
            "OMNI__TENANTS__DEMO__SMS__TWILIO__AUTH_TOKEN".into(),
            "TWILIO-TOKEN".into(),
        ),
        (
            "OMNI__TENANTS__DEMO__SMS__VONAGE__API_KEY".into(),
            "vkey".into(),
        ),
        (
            "OMNI__TENANTS__DEMO__SMS__VONAGE__API_SECRET".into(),
            "VSECRET".into(),
        ),
        (
            "OMNI__TENANTS__DEMO__SMS__VONAGE__SIGNATURE_METHOD".into(),
            "sha256".into(),
        ),
        (
            "OMNI__TENANTS__DEMO__SMS__VONAGE__SIGNATURE_SECRET".into(),
            "VSIG".into(),
        ),
        // Environment keys cannot hold '+': international digits normalize to the same number.
        (n(&TWILIO_NUMBER[1..], "PROVIDER"), "twilio".into()),
    ]
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The daemon end to end: a signed Twilio SMS to Kafka, an agent's reply out to the Twilio
/// stand-in with our StatusCallback, the signed callback back in, and both delivery events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_webhook_to_kafka_to_reply_to_status_callback_and_delivery_events() {
    let broker = Broker::memory();
    let api = StandIn::start().await;
    // Behind a TLS-terminating proxy: Twilio calls (and signs) the public URL.
    let public = "https://sms.shop.example.vn";
    let env = sms_env(&api, public);
    let daemon = Daemon::start(&broker, &env_refs(&env)).await;
    let event = a_signed_twilio_sms_is_published(&broker, &daemon, public).await;
    let (callback, answer) =
        an_agent_reply_goes_to_twilio_with_our_callback(&api, &daemon, &event, public).await;
    twilio_signs_the_delivery_callback(&daemon, &callback, public).await;
    the_reply_is_sent_then_delivered_on_the_delivery_topic(&broker, &daemon, &answer);
}

/// A signed Twilio SMS is answered with empty TwiML and published as a received message.
async fn a_signed_twilio_sms_is_published(broker: &Broker, daemon: &Daemon, public: &str) -> Value {
    let path = "/v1/webhooks/sms/twilio/demo";
    let body = form(&[
        ("MessageSid", "SMe2e00000000000000000000000000001"),
        ("AccountSid", SID),
        ("From", "+84901234567"),
        ("To", TWILIO_NUMBER),
        ("Body", "Chào shop, đơn hàng của tôi đâu rồi?"),
        ("NumMedia", "0"),
    ]);
    let r = post_twilio(daemon, public, path, "TWILIO-TOKEN", body).await;
    assert_eq!(r.status(), 200, "{}", daemon.log());
    assert_eq!(r.headers()["content-type"], "text/xml");
    assert_eq!(
        r.text().await.unwrap(),
        r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#
    );
    let inbound = read_topic(
        &broker.bootstrap(),
        "omni.inbound.v1",
        1,
        Duration::from_secs(20),
        Duration::from_millis(300),
    );
    assert_eq!(inbound.len(), 1);
    let event = inbound[0].value.clone();
    assert_eq!(
        event["data"]["message"]["text"],
        "Chào shop, đơn hàng của tôi đâu rồi?"
    );
    assert_eq!(event["data"]["contact"]["phone"], "+84901234567");
    assert_eq!(
        event["data"]["channel"],
        json!({"kind": "sms", "account": TWILIO_NUMBER})
    );
    event
}

/// An agent's reply reaches the Twilio stand-in with the text, the customer's number and a
/// StatusCallback on our public URL. Returns the callback and the API's answer.
async fn an_agent_reply_goes_to_twilio_with_our_callback(
    api: &StandIn,
    daemon: &Daemon,
    event: &Value,
    public: &str,
) -> (String, Value) {
    api.answer(
        TWILIO_PATH,
        201,
        r#"{"sid":"SMout0001","status":"queued","num_segments":"2"}"#,
    );
    let (status, answer) = omni_e2e::post_json(
        &daemon.url("/v1/tenants/demo/replies"),
        "demo-agent-token",
        &json!({
            "conversation_id": event["subject"],
            "channel": event["data"]["channel"],
            "recipient": event["data"]["contact"]["id"],
            "agent_id": "agent-7",
            "text": VI,
        }),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let sent = api.wait_for(TWILIO_PATH, 1, Duration::from_secs(20)).await;
    assert_eq!(sent.len(), 1, "{}", daemon.log());
    let form_sent = pairs(sent[0].form());
    assert_eq!(form_sent["Body"], VI);
    assert_eq!(form_sent["To"], "+84901234567");
    let callback = form_sent["StatusCallback"].clone();
    assert!(callback.starts_with(&format!("{public}/v1/webhooks/sms/twilio/demo/status?")));
    (callback, answer)
}

/// Twilio reports delivery on the URL we gave it, signed; the daemon accepts it.
async fn twilio_signs_the_delivery_callback(daemon: &Daemon, callback: &str, public: &str) {
    let status_body = form(&[
        ("MessageSid", "SMout0001"),
        ("MessageStatus", "delivered"),
        ("AccountSid", SID),
        ("From", TWILIO_NUMBER),
        ("To", "+84901234567"),
    ]);
    let r = reqwest::Client::new()
        .post(daemon.url(callback.strip_prefix(public).unwrap()))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "x-twilio-signature",
            twilio_sign("TWILIO-TOKEN", callback, &status_body),
        )
        .body(status_body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Both fates of the reply are on the delivery topic, for the same outbound event: `sent` with
/// its segments, then `delivered`.
fn the_reply_is_sent_then_delivered_on_the_delivery_topic(
    broker: &Broker,
    daemon: &Daemon,
    answer: &Value,
) {
    let deliveries = read_topic(
        &broker.bootstrap(),
        "omni.delivery.v1",
        2,
        Duration::from_secs(30),
        Duration::from_millis(300),
    );
    let outbound_id = answer["event_id"].as_str().map(str::to_owned);
    let mut seen: Vec<(String, Value, Value)> = deliveries
        .iter()
        .map(|d| {
            let data = &d.value["data"];
            (
                data["status"].as_str().unwrap().to_owned(),
                data["segments"].clone(),
                data["outbound_event_id"].clone(),
            )
        })
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen.len(), 2, "{}", daemon.log());
    assert_eq!(seen[0].0, "delivered");
    assert_eq!(seen[1].0, "sent");
    assert_eq!(seen[1].1, json!(2), "Vietnamese: UCS-2, 2 segments");
    assert_eq!(seen[0].2, seen[1].2, "both report the same outbound event");
    if let Some(id) = outbound_id {
        assert_eq!(seen[0].2, json!(id));
    }
    let schema = omni_e2e::schema("delivery-update.schema.json");
    for d in &deliveries {
        assert!(schema.is_valid(&d.value["data"]), "{}", d.value);
        assert_eq!(d.key, b"demo");
    }
}

fn vonage_part(id: &str, n: &str, text: &str) -> String {
    vonage_part_of("77", id, n, text)
}

fn vonage_part_of(reference: &str, id: &str, n: &str, text: &str) -> String {
    let params: Params = [
        ("msisdn", "84901234567"),
        ("to", "447700900123"),
        ("messageId", id),
        ("text", text),
        ("type", "unicode"),
        ("concat", "true"),
        ("concat-ref", reference),
        ("concat-total", "3"),
        ("concat-part", n),
    ]
    .into_iter()
    .collect();
    signed_vonage_form(params, chrono::Utc::now().timestamp())
}

/// `params` with Vonage's signed `timestamp` (Unix seconds) and HMAC-SHA256 `sig`, as a form.
fn signed_vonage_form(mut params: Params, timestamp: i64) -> String {
    params.push("timestamp", timestamp.to_string());
    let sig = omni_sms::vonage::sign(
        omni_sms::vonage::SignatureMethod::HmacSha256,
        b"VSIG",
        &params,
    );
    params.push("sig", sig);
    let pairs: Vec<(&str, &str)> = params.iter().collect();
    form(&pairs)
}

/// A correctly signed single-part Vonage message whose signed `timestamp` is an hour old: a
/// captured request replayed.
fn replayed_vonage_message(id: &str) -> String {
    let params: Params = [
        ("msisdn", "84901234567"),
        ("to", "447700900123"),
        ("messageId", id),
        ("text", "replayed"),
        ("type", "text"),
    ]
    .into_iter()
    .collect();
    signed_vonage_form(params, chrono::Utc::now().timestamp() - 3_600)
}

/// Posts a Vonage inbound webhook (form-encoded) to `daemon`; the status it answered.
async fn post_vonage(daemon: &Daemon, body: String) -> u16 {
    reqwest::Client::new()
        .post(daemon.url("/v1/webhooks/sms/vonage/demo"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Parts arrive out of order, one twice, and the daemon restarts between them: one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vonage_multipart_across_a_daemon_restart_is_published_once() {
    let broker = Broker::memory();
    let api = StandIn::start().await;
    let env = sms_env(&api, "https://sms.shop.example.vn");
    let mut first = Daemon::start(&broker, &env_refs(&env)).await;
    assert_eq!(
        post_vonage(&first, vonage_part("V3", "3", "Cảm ơn!")).await,
        200,
        "{}",
        first.log()
    );
    // Vonage's replay window is on by default: an hour-old signed request is refused (and is
    // not among what the topic holds at the end).
    assert_eq!(
        post_vonage(&first, replayed_vonage_message("VOLD")).await,
        401
    );
    assert_eq!(
        post_vonage(&first, vonage_part("V1", "1", "Chào shop, ")).await,
        200
    );
    assert_eq!(
        post_vonage(&first, vonage_part("V3", "3", "Cảm ơn!")).await,
        200
    );
    first.terminate(Duration::from_secs(10));
    let second = Daemon::start(&broker, &env_refs(&env)).await;
    // The new owner took the stored parts over before the last part arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !second.log().contains("reassembling this tenant") && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        post_vonage(&second, vonage_part("V2", "2", "đơn hàng đâu? ")).await,
        200,
        "{}",
        second.log()
    );
    let inbound = read_topic(
        &broker.bootstrap(),
        "omni.inbound.v1",
        1,
        Duration::from_secs(20),
        Duration::from_secs(1),
    );
    assert_eq!(inbound.len(), 1, "{}", second.log());
    assert_eq!(
        inbound[0].value["data"]["message"]["text"],
        "Chào shop, đơn hàng đâu? Cảm ơn!"
    );
    assert_eq!(inbound[0].value["data"]["contact"]["id"], "+84901234567");
    let metrics = second.metrics().await;
    assert_eq!(
        omni_e2e::metric_value(&metrics, "omni_sms_concat_pending", &[]),
        0.0
    );
}

/// Three replicas behind one load balancer: the parts of each long SMS reach three different
/// replicas, and replicas are SIGKILLed and replaced between parts. Every message is published
/// once, whole, by whichever replica owns the tenant then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vonage_parts_spread_over_three_replicas_killed_between_parts_are_published_once_whole() {
    let broker = Broker::memory();
    let api = StandIn::start().await;
    let env = sms_env(&api, "https://sms.shop.example.vn");
    let mut replicas = Daemon::start_many(&broker, 3, &env_refs(&env)).await;
    const MESSAGES: usize = 6;
    let words = ["Chào shop, ", "đơn hàng ", "đâu rồi?"];
    for m in 0..MESSAGES {
        let reference = format!("{}", 100 + m);
        for (i, word) in words.iter().enumerate() {
            if i == 1 && (m == 2 || m == 4) {
                // Between two parts of one message: a replica dies, a new one takes its place.
                let mut victim = replicas.remove(m / 2 - 1);
                victim.terminate_hard();
                replicas.push(Daemon::start(&broker, &env_refs(&env)).await);
            }
            let part = (i + 1).to_string();
            let body = vonage_part_of(
                &reference,
                &format!("V{m}-{part}"),
                &part,
                &format!("{word}{m}"),
            );
            let target = &replicas[(m + i) % replicas.len()];
            assert_eq!(post_vonage(target, body).await, 200, "{}", target.log());
        }
    }
    let inbound = read_topic(
        &broker.bootstrap(),
        "omni.inbound.v1",
        MESSAGES,
        Duration::from_secs(90),
        Duration::from_secs(3),
    );
    let mut texts: Vec<String> = inbound
        .iter()
        .map(|r| {
            r.value["data"]["message"]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    texts.sort();
    let mut expected: Vec<String> = (0..MESSAGES)
        .map(|m| format!("Chào shop, {m}đơn hàng {m}đâu rồi?{m}"))
        .collect();
    expected.sort();
    assert_eq!(texts, expected, "each long SMS once, whole");
    let ids: std::collections::HashSet<&str> = inbound
        .iter()
        .map(|r| r.value["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), MESSAGES);
    assert!(inbound
        .iter()
        .all(|r| !r.value["data"]["message"]["payload"]
            .to_string()
            .contains("partial")));
}

/// A command to the router through the agent API.
async fn command(daemon: &Daemon, body: Value) {
    let (status, answer) = omni_e2e::post_json(
        &daemon.url("/v1/tenants/demo/commands"),
        "demo-agent-token",
        &body,
    )
    .await;
    assert_eq!(status, 202, "{answer}");
}

/// A conversation's routing state, from the agent API.
async fn conversation_state(daemon: &Daemon, conversation: &str) -> String {
    let path = format!("conversations/{conversation}");
    let (_, v, _) = daemon.get_served("demo", &path, "demo-agent-token").await;
    v["state"].as_str().unwrap_or_default().to_owned()
}

/// Waits until `/metrics` has `name{labels}` at `want`.
async fn wait_metric(daemon: &Daemon, name: &str, labels: &[&str], want: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = daemon.metrics().await;
        if (omni_e2e::metric_value(&m, name, labels) - want).abs() < 1e-9 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}{labels:?} is not {want}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CSAT by SMS: the agent resolves, the router asks the question by SMS (through the Twilio
/// stand-in), and the customer's signed "5" is the score on /metrics and the routing topic,
/// not a reopening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_survey_after_resolution_is_answered_by_a_signed_sms_and_scored() {
    const QUESTION: &str = "Anh/chị hài lòng với hỗ trợ của shop không? Trả lời từ 1 đến 5.";
    let broker = Broker::memory();
    let api = StandIn::start().await;
    let public = "https://sms.shop.example.vn";
    let mut env = sms_env(&api, public);
    env.push((
        "OMNI__TENANTS__DEMO__ROUTING__QUEUES__GENERAL__CSAT_SURVEY__QUESTION".into(),
        QUESTION.into(),
    ));
    let daemon = Daemon::start(&broker, &env_refs(&env)).await;
    command(
        &daemon,
        json!({"command": "upsert_agent", "agent": "lan", "skills": {"vi": 5}, "capacity": 3}),
    )
    .await;
    command(
        &daemon,
        json!({"command": "set_presence", "agent": "lan", "presence": "online"}),
    )
    .await;
    let event = a_signed_twilio_sms_is_published(&broker, &daemon, public).await;
    let conversation = event["subject"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while conversation_state(&daemon, &conversation).await != "assigned" {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.answer(
        TWILIO_PATH,
        201,
        r#"{"sid":"SMsurvey01","status":"queued","num_segments":"1"}"#,
    );
    command(
        &daemon,
        json!({"command": "resolve", "conversation": conversation}),
    )
    .await;
    // The question goes to the customer by SMS, once.
    let sent = api.wait_for(TWILIO_PATH, 1, Duration::from_secs(20)).await;
    let form_sent = pairs(sent[0].form());
    assert_eq!(form_sent["Body"], QUESTION);
    assert_eq!(form_sent["To"], "+84901234567");

    // The customer answers "5" by SMS, signed by Twilio.
    let body = form(&[
        ("MessageSid", "SMe2e00000000000000000000000000002"),
        ("AccountSid", SID),
        ("From", "+84901234567"),
        ("To", TWILIO_NUMBER),
        ("Body", "5"),
        ("NumMedia", "0"),
    ]);
    let r = post_twilio(
        &daemon,
        public,
        "/v1/webhooks/sms/twilio/demo",
        "TWILIO-TOKEN",
        body,
    )
    .await;
    assert_eq!(r.status(), 200);
    let labels = ["tenant=\"demo\"", "channel=\"sms\""];
    wait_metric(&daemon, "omni_csat_score_count", &labels, 1.0).await;
    wait_metric(&daemon, "omni_csat_score_sum", &labels, 5.0).await;
    let routing = read_topic(
        &broker.bootstrap(),
        "omni.routing.v1",
        usize::MAX,
        Duration::from_secs(3),
        Duration::ZERO,
    );
    let of_type = |t: &str| {
        routing
            .iter()
            .filter(|r| r.value["type"] == t && r.value["subject"] == conversation.as_str())
            .map(|r| r.value["data"].clone())
            .collect::<Vec<_>>()
    };
    let answered = of_type("omni.routing.csat_answered");
    assert_eq!(answered.len(), 1, "{routing:?}");
    assert_eq!(answered[0]["score"], 5);
    assert_eq!(answered[0]["agent"], "lan");
    assert_eq!(of_type("omni.routing.csat_survey").len(), 1);
    assert!(of_type("omni.routing.reopened").is_empty());
    assert_eq!(conversation_state(&daemon, &conversation).await, "resolved");
    // Only the question went out: the answer is not answered again.
    assert_eq!(api.requests_to(TWILIO_PATH).len(), 1);
}
