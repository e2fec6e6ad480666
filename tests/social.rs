//! Messenger, Instagram Direct and Zalo OA end to end: the senders against local servers standing in for the
//! Graph API and Zalo's OA and OAuth APIs (asserting the exact requests and answering
//! success, retryable and permanent errors), and the daemon from a signed webhook to
//! `omni.inbound.v1`, an agent's reply to the stand-in provider, and the delivery event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_channel::{ChannelSender, FailureReason, SendProgress, SendRequest};
use omni_core::{
    Attachment, ChannelKind, ChannelRef, ConversationId, EventId, OutboundMessage, Secret,
    Template, TenantId,
};
use omni_e2e::standin::StandIn;
use omni_e2e::webhooks::{messenger_text, now_millis, post_messenger, post_zalo, zalo_text};
use omni_e2e::{metric_value, read_topic, Broker, Daemon};
use omni_social::messenger::{
    MessengerSendSettings, MessengerSender, MessengerTenant, PageSettings,
};
use omni_social::zalo::token::{OaToken, RefreshSettings, StoredTokens, TokenFile, TokenMetrics};
use omni_social::zalo::{OaSettings, ZaloSendSettings, ZaloSender};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const PAGE: &str = "104912345678901";
const PSID: &str = "5384937120339286147";
const OA: &str = "4318458798374519001";
const ZUSER: &str = "2512523625412515123";
const VI: &str = "Dạ, đơn hàng #1024 của anh/chị đã được giao hôm nay ạ. Cảm ơn quý khách!";

fn reply(kind: ChannelKind, account: &str, recipient: &str, agent: Option<&str>) -> SendRequest {
    let tenant = TenantId::new("acme").unwrap();
    let channel = ChannelRef::new(kind, account);
    SendRequest {
        event_id: EventId::new_random(),
        message: OutboundMessage {
            tenant: tenant.clone(),
            conversation_id: ConversationId::derive(&tenant, &channel, recipient, None),
            channel,
            recipient: recipient.into(),
            agent_id: agent.map(str::to_owned),
            text: VI.into(),
            subject: None,
            attachments: vec![],
            reply_to: None,
            csat_survey: false,
            template: None,
        },
    }
}

/// acme's Meta app: two pages and an Instagram account.
fn meta_tenant(human_agent_tag: bool) -> MessengerTenant {
    MessengerTenant {
        app_secret: Secret::new("s"),
        verify_token: Secret::new("v"),
        accept_sha1: false,
        pages: HashMap::from([
            (
                PAGE.to_owned(),
                PageSettings {
                    access_token: Secret::new("PAGE-TOKEN"),
                    human_agent_tag,
                },
            ),
            (
                "222333444555".to_owned(),
                PageSettings {
                    access_token: Secret::new("SECOND-PAGE-TOKEN"),
                    human_agent_tag: false,
                },
            ),
        ]),
        instagram: HashMap::from([(
            IG.to_owned(),
            PageSettings {
                access_token: Secret::new("IG-TOKEN"),
                human_agent_tag,
            },
        )]),
    }
}

fn graph_settings(graph: &StandIn) -> MessengerSendSettings {
    MessengerSendSettings {
        graph_base_url: graph.url.clone(),
        api_version: "v23.0".into(),
        rate_per_page: 0.0,
        timeout: Duration::from_secs(5),
    }
}

fn messenger(graph: &StandIn, human_agent_tag: bool) -> MessengerSender {
    let tenant = TenantId::new("acme").unwrap();
    let m = meta_tenant(human_agent_tag);
    MessengerSender::new([(&tenant, &m)], graph_settings(graph)).unwrap()
}

fn instagram(graph: &StandIn, human_agent_tag: bool) -> MessengerSender {
    let tenant = TenantId::new("acme").unwrap();
    let m = meta_tenant(human_agent_tag);
    MessengerSender::instagram([(&tenant, &m)], graph_settings(graph)).unwrap()
}

/// The Instagram professional account.
const IG: &str = "17841400000000001";
/// An Instagram-scoped user id.
const IGSID: &str = "6543210987654321";
/// Instagram's Send API: the account the token belongs to.
const IG_SEND_PATH: &str = "/v23.0/me/messages";

const SEND_PATH: &str = "/v23.0/104912345678901/messages";

#[tokio::test]
async fn messenger_sends_exactly_the_documented_request_per_part() {
    let graph = StandIn::start().await;
    graph.answer(
        SEND_PATH,
        200,
        r#"{"recipient_id":"5384937120339286147","message_id":"m_text"}"#,
    );
    graph.answer(
        SEND_PATH,
        200,
        r#"{"recipient_id":"5384937120339286147","message_id":"m_img"}"#,
    );
    let sender = messenger(&graph, false);
    let mut request = reply(ChannelKind::Messenger, PAGE, PSID, Some("agent-7"));
    request.message.reply_to = Some("m_customer".into());
    request.message.attachments = vec![Attachment {
        url: "https://cdn.shop.example.vn/hoa-don.png".into(),
        content_type: Some("image/png".into()),
        name: None,
        size: None,
    }];
    let mut progress = SendProgress::default();
    let receipt = sender.send(&request, &mut progress).await.unwrap();
    assert_eq!(receipt.provider_message_id.as_deref(), Some("m_text"));
    assert_eq!(progress.provider_message_ids, ["m_text", "m_img"]);
    let sent = graph.requests_to(SEND_PATH);
    assert_eq!(sent.len(), 2);
    for r in &sent {
        assert_eq!(r.method, "POST");
        assert_eq!(r.headers["authorization"], "Bearer PAGE-TOKEN");
        assert!(r.query.is_empty(), "no token in the URL: {}", r.query);
        assert_eq!(r.headers["content-type"], "application/json");
    }
    let marker = format!("omnirouter:{}", request.event_id);
    assert_eq!(
        sent[0].json(),
        json!({
            "recipient": {"id": PSID},
            "messaging_type": "RESPONSE",
            "message": {"text": VI, "metadata": marker, "reply_to": {"mid": "m_customer"}},
        })
    );
    assert_eq!(
        sent[1].json(),
        json!({
            "recipient": {"id": PSID},
            "messaging_type": "RESPONSE",
            "message": {
                "attachment": {"type": "image", "payload": {
                    "url": "https://cdn.shop.example.vn/hoa-don.png", "is_reusable": true}},
                "metadata": marker,
            },
        })
    );
    // The UTF-8 bytes on the wire are the Vietnamese text itself, not a lossy rewrite.
    assert!(String::from_utf8(sent[0].body.clone())
        .unwrap()
        .contains(VI));
}

#[tokio::test]
async fn a_csat_survey_goes_to_messenger_with_quick_replies_one_to_five() {
    let graph = StandIn::start().await;
    graph.answer(
        SEND_PATH,
        200,
        r#"{"recipient_id":"5384937120339286147","message_id":"m_survey"}"#,
    );
    let sender = messenger(&graph, false);
    let mut request = reply(ChannelKind::Messenger, PAGE, PSID, None);
    request.message.text = "Anh/chị hài lòng với hỗ trợ của shop không? Chọn 1-5".into();
    request.message.csat_survey = true;
    sender
        .send(&request, &mut SendProgress::default())
        .await
        .unwrap();
    let sent = graph.requests_to(SEND_PATH);
    assert_eq!(sent.len(), 1);
    let marker = format!("omnirouter:{}", request.event_id);
    let quick: Vec<Value> = (1..=5)
        .map(|n| json!({"content_type": "text", "title": n.to_string(), "payload": format!("CSAT_{n}")}))
        .collect();
    assert_eq!(
        sent[0].json(),
        json!({
            "recipient": {"id": PSID},
            "messaging_type": "RESPONSE",
            "message": {"text": request.message.text, "metadata": marker, "quick_replies": quick},
        })
    );
}

#[tokio::test]
async fn messenger_errors_are_classified_by_graph_code() {
    let graph = StandIn::start().await;
    let sender = messenger(&graph, false);
    let cases = [
        (
            400,
            r#"{"error":{"message":"(#613) Calls to this api have exceeded the rate limit.","type":"OAuthException","code":613}}"#,
            FailureReason::RateLimited,
            true,
        ),
        (
            400,
            r#"{"error":{"message":"(#551) This person isn't available right now.","type":"OAuthException","code":551,"error_subcode":1545041}}"#,
            FailureReason::UserUnavailable,
            false,
        ),
        (
            400,
            r#"{"error":{"message":"Error validating access token","type":"OAuthException","code":190,"error_subcode":463}}"#,
            FailureReason::BadToken,
            false,
        ),
        (
            400,
            r#"{"error":{"message":"(#10) This message is sent outside of allowed window.","type":"OAuthException","code":10,"error_subcode":2018278}}"#,
            FailureReason::OutsideWindow,
            false,
        ),
        (
            503,
            "<html>unavailable</html>",
            FailureReason::ProviderUnavailable,
            true,
        ),
    ];
    for (status, body, reason, retryable) in cases {
        graph.answer(SEND_PATH, status, body);
        let request = reply(ChannelKind::Messenger, PAGE, PSID, Some("a"));
        let err = sender
            .send(&request, &mut SendProgress::default())
            .await
            .unwrap_err();
        assert_eq!((err.reason, err.retryable), (reason, retryable), "{body}");
        assert!(!err.detail.contains("PAGE-TOKEN"), "no token in details");
    }
    // An unknown page is a clear, permanent failure without a call.
    let before = graph.requests().len();
    let err = sender
        .send(
            &reply(ChannelKind::Messenger, "999", PSID, None),
            &mut SendProgress::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason, FailureReason::AccountNotConfigured);
    assert_eq!(graph.requests().len(), before);
}

#[tokio::test]
async fn outside_the_24h_window_a_human_reply_goes_again_with_the_human_agent_tag() {
    let outside = r#"{"error":{"message":"(#10) This message is sent outside of allowed window.","code":10,"error_subcode":2018278}}"#;
    let graph = StandIn::start().await;
    graph.answer(SEND_PATH, 400, outside);
    graph.answer(
        SEND_PATH,
        200,
        r#"{"recipient_id":"1","message_id":"m_tagged"}"#,
    );
    let sender = messenger(&graph, true);
    let receipt = sender
        .send(
            &reply(ChannelKind::Messenger, PAGE, PSID, Some("agent-7")),
            &mut SendProgress::default(),
        )
        .await
        .unwrap();
    assert_eq!(receipt.provider_message_id.as_deref(), Some("m_tagged"));
    let sent = graph.requests_to(SEND_PATH);
    assert_eq!(sent[0].json()["messaging_type"], "RESPONSE");
    assert_eq!(sent[1].json()["messaging_type"], "MESSAGE_TAG");
    assert_eq!(sent[1].json()["tag"], "HUMAN_AGENT");
    // Past 7 days the tagged send fails too: a clear outside_window failure.
    graph.answer(SEND_PATH, 400, outside);
    graph.answer(SEND_PATH, 400, outside);
    let err = sender
        .send(
            &reply(ChannelKind::Messenger, PAGE, PSID, Some("agent-7")),
            &mut SendProgress::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason, FailureReason::OutsideWindow);
    assert!(err.detail.contains("7-day"), "{}", err.detail);
    // A bot's reply (no agent) is never tagged.
    graph.answer(SEND_PATH, 400, outside);
    let before = graph.requests_to(SEND_PATH).len();
    let err = sender
        .send(
            &reply(ChannelKind::Messenger, PAGE, PSID, None),
            &mut SendProgress::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason, FailureReason::OutsideWindow);
    assert_eq!(graph.requests_to(SEND_PATH).len(), before + 1);
}

#[tokio::test]
async fn instagram_sends_1000_character_pieces_to_me_messages_without_messenger_extras() {
    let graph = StandIn::start().await;
    for id in ["ig_1", "ig_2", "ig_img"] {
        let answer = format!(r#"{{"recipient_id":"{IGSID}","message_id":"{id}"}}"#);
        graph.answer(IG_SEND_PATH, 200, &answer);
    }
    let sender = instagram(&graph, false);
    let mut request = reply(ChannelKind::Instagram, IG, IGSID, Some("agent-7"));
    request.message.text = "Dạ vâng ".repeat(190); // 1,520 characters with spaces
    request.message.reply_to = Some("ig_customer".into());
    request.message.attachments = vec![Attachment {
        url: "https://cdn.shop.example.vn/bang-size.jpg".into(),
        content_type: Some("image/jpeg".into()),
        name: None,
        size: None,
    }];
    let mut progress = SendProgress::default();
    let receipt = sender.send(&request, &mut progress).await.unwrap();
    assert_eq!(receipt.provider_message_id.as_deref(), Some("ig_1"));
    assert_eq!(progress.provider_message_ids, ["ig_1", "ig_2", "ig_img"]);
    let sent = graph.requests_to(IG_SEND_PATH);
    assert_eq!(sent.len(), 3, "{:?}", graph.requests());
    for r in &sent {
        assert_eq!(r.headers["authorization"], "Bearer IG-TOKEN");
        assert!(r.query.is_empty(), "no token in the URL: {}", r.query);
        let body = r.json();
        assert_eq!(body["recipient"], json!({"id": IGSID}));
        assert_eq!(body["messaging_type"], "RESPONSE");
        // Instagram documents neither metadata nor reply_to.
        let keys: Vec<&String> = body["message"].as_object().unwrap().keys().collect();
        assert!(keys == ["text"] || keys == ["attachment"], "{keys:?}");
    }
    let texts: Vec<String> = sent[..2]
        .iter()
        .map(|r| r.json()["message"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(texts.iter().all(|t| t.chars().count() <= 1000));
    assert_eq!(texts.join(" "), request.message.text.trim_end());
    let image = json!({"type": "image", "payload": {
        "url": "https://cdn.shop.example.vn/bang-size.jpg", "is_reusable": true}});
    assert_eq!(sent[2].json()["message"]["attachment"], image);
}

#[tokio::test]
async fn instagram_uses_the_human_agent_tag_and_error_reasons_of_messenger() {
    let outside = r#"{"error":{"message":"(#10) This message is sent outside of allowed window.","code":10,"error_subcode":2018278}}"#;
    let graph = StandIn::start().await;
    graph.answer(IG_SEND_PATH, 400, outside);
    graph.answer(
        IG_SEND_PATH,
        200,
        r#"{"recipient_id":"1","message_id":"ig_tagged"}"#,
    );
    let unavailable =
        r#"{"error":{"message":"(#551) This person isn't available right now.","code":551}}"#;
    graph.answer(IG_SEND_PATH, 400, unavailable);
    let sender = instagram(&graph, true);
    let human = reply(ChannelKind::Instagram, IG, IGSID, Some("agent-7"));
    let receipt = sender
        .send(&human, &mut SendProgress::default())
        .await
        .unwrap();
    assert_eq!(receipt.provider_message_id.as_deref(), Some("ig_tagged"));
    let sent = graph.requests_to(IG_SEND_PATH);
    assert_eq!(sent[0].json()["messaging_type"], "RESPONSE");
    assert_eq!(sent[1].json()["messaging_type"], "MESSAGE_TAG");
    assert_eq!(sent[1].json()["tag"], "HUMAN_AGENT");
    let err = sender
        .send(&human, &mut SendProgress::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.reason, err.retryable),
        (FailureReason::UserUnavailable, false)
    );
    assert!(!err.detail.contains("IG-TOKEN"));
    // A page is not an Instagram account: not configured, and nothing is called.
    let before = graph.requests().len();
    let err = sender
        .send(
            &reply(ChannelKind::Instagram, PAGE, IGSID, None),
            &mut SendProgress::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason, FailureReason::AccountNotConfigured);
    assert_eq!(graph.requests().len(), before);
}

struct Zalo {
    api: StandIn,
    oauth: StandIn,
    dir: tempfile::TempDir,
    sender: ZaloSender,
    registry: prometheus::Registry,
}

const CS_PATH: &str = "/v3.0/oa/message/cs";
const OAUTH_PATH: &str = "/v4/oa/access_token";

/// A Zalo sender whose token file holds `stored`.
async fn zalo(stored: Option<StoredTokens>) -> Zalo {
    let api = StandIn::start().await;
    let oauth = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("oa.json");
    if let Some(stored) = stored {
        TokenFile::new(&file).save(&stored).unwrap();
    }
    let settings = OaSettings {
        app_id: "1183926498471234567".into(),
        oa_secret_key: Secret::new("k"),
        app_secret: Secret::new("APP-SECRET"),
        token_file: file,
        initial_refresh_token: Some(Secret::new("R0")),
        initial_access_token: None,
    };
    let registry = prometheus::Registry::new();
    let keeper = OaToken::new(
        OA,
        &settings,
        RefreshSettings {
            oauth_base_url: oauth.url.clone(),
            refresh_before: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
        },
        TokenMetrics::register(&registry).unwrap(),
    )
    .unwrap();
    let sender = ZaloSender::new(
        HashMap::from([(("acme".to_owned(), OA.to_owned()), Arc::new(keeper))]),
        ZaloSendSettings {
            openapi_base_url: api.url.clone(),
            zns_base_url: api.url.clone(),
            rate_per_oa: 0.0,
            timeout: Duration::from_secs(5),
        },
    )
    .unwrap()
    .with_media(omni_e2e::loopback_media());
    Zalo {
        api,
        oauth,
        dir,
        sender,
        registry,
    }
}

fn valid_tokens(access: &str, refresh: &str) -> StoredTokens {
    StoredTokens {
        access_token: access.into(),
        access_token_expires_at: Some(chrono::Utc::now() + chrono::Duration::hours(20)),
        refresh_token: refresh.into(),
        updated_at: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn zalo_sends_text_with_a_quote_exactly_as_documented() {
    let z = zalo(Some(valid_tokens("ACCESS-1", "R1"))).await;
    z.api.answer(CS_PATH, 200, r#"{"error":0,"message":"Success","data":{"message_id":"a0b1c2d3","user_id":"2512523625412515123"}}"#);
    let mut request = reply(ChannelKind::Zalo, OA, ZUSER, Some("agent-7"));
    request.message.reply_to = Some("9d6b1c2a".into());
    let receipt = z
        .sender
        .send(&request, &mut SendProgress::default())
        .await
        .unwrap();
    assert_eq!(receipt.provider_message_id.as_deref(), Some("a0b1c2d3"));
    let sent = z.api.requests_to(CS_PATH);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].headers["access_token"], "ACCESS-1");
    assert_eq!(
        sent[0].json(),
        json!({"recipient": {"user_id": ZUSER}, "message": {"text": VI, "quote_message_id": "9d6b1c2a"}})
    );
    assert!(
        z.oauth.requests().is_empty(),
        "a fresh token is not refreshed"
    );
}

#[tokio::test]
async fn zalo_error_codes_in_a_200_answer_are_failures_classified_by_code() {
    let z = zalo(Some(valid_tokens("ACCESS-1", "R1"))).await;
    for (body, reason, retryable) in [
        (
            r#"{"error":-230,"message":"User has not interacted with the OA in the past 7 days"}"#,
            FailureReason::OutsideWindow,
            false,
        ),
        (
            r#"{"error":-234,"message":"Cannot send messages at night"}"#,
            FailureReason::OutsideWindow,
            false,
        ),
        (
            r#"{"error":-32,"message":"Exceed rate limit"}"#,
            FailureReason::ProviderUnavailable,
            true,
        ),
        (
            r#"{"error":-999,"message":"Something new"}"#,
            FailureReason::Rejected,
            false,
        ),
    ] {
        z.api.answer(CS_PATH, 200, body);
        let err = z
            .sender
            .send(
                &reply(ChannelKind::Zalo, OA, ZUSER, None),
                &mut SendProgress::default(),
            )
            .await
            .unwrap_err();
        assert_eq!((err.reason, err.retryable), (reason, retryable), "{body}");
    }
}

const ZNS_PATH: &str = "/message/template";

/// A ZNS reply: template 231187 with two parameters, to `phone`.
fn zns_reply(phone: Option<&str>) -> SendRequest {
    let mut request = reply(ChannelKind::Zalo, OA, ZUSER, Some("agent-7"));
    request.message.template = Some(Template {
        name: "231187".into(),
        language: Some("vi".into()),
        params: [("order_code", "1024"), ("customer_name", "Nguyễn Thị Lan")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        phone: phone.map(str::to_owned),
    });
    request
}

#[tokio::test]
async fn a_template_goes_to_zns_by_phone_exactly_as_documented() {
    let z = zalo(Some(valid_tokens("ACCESS-1", "R1"))).await;
    z.api.answer(ZNS_PATH, 200, r#"{"error":0,"message":"Success","data":{"msg_id":"a3f0e1d2c4b5","sent_time":"1733212800000","quota":{"dailyQuota":"500","remainingQuota":"499"}}}"#);
    let request = zns_reply(Some("0912 345 678"));
    let mut progress = SendProgress::default();
    let receipt = z.sender.send(&request, &mut progress).await.unwrap();
    assert_eq!(receipt.provider_message_id.as_deref(), Some("a3f0e1d2c4b5"));
    let sent = z.api.requests_to(ZNS_PATH);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].headers["access_token"], "ACCESS-1");
    assert_eq!(
        sent[0].json(),
        json!({
            "phone": "84912345678",
            "template_id": "231187",
            "template_data": {"customer_name": "Nguyễn Thị Lan", "order_code": "1024"},
            "tracking_id": request.event_id.to_string(),
        }),
        "the national number in the international form, the event id to track it"
    );
    assert!(
        z.api.requests_to(CS_PATH).is_empty(),
        "the text is not sent beside the template"
    );
    // A redelivered reply whose one part was sent is not sent again.
    let again = z.sender.send(&request, &mut progress).await.unwrap();
    assert_eq!(again.provider_message_id.as_deref(), Some("a3f0e1d2c4b5"));
    assert_eq!(z.api.requests_to(ZNS_PATH).len(), 1);
}

#[tokio::test]
async fn zns_error_codes_are_classified_by_the_zns_table() {
    let z = zalo(Some(valid_tokens("ACCESS-1", "R1"))).await;
    for (code, message, reason, retryable) in [
        (
            -108,
            "Phone number invalid",
            FailureReason::InvalidRecipient,
            false,
        ),
        (
            -118,
            "Zalo account not existed",
            FailureReason::UserUnavailable,
            false,
        ),
        (
            -119,
            "Account can not receive ZNS message",
            FailureReason::UserUnavailable,
            false,
        ),
        (
            -109,
            "Template ID invalid",
            FailureReason::InvalidMessage,
            false,
        ),
        (
            -112,
            "Template data invalid",
            FailureReason::InvalidMessage,
            false,
        ),
        (-115, "Out of quota", FailureReason::QuotaExceeded, false),
        (
            -100,
            "Unknown error",
            FailureReason::ProviderUnavailable,
            true,
        ),
        (-1999, "Something new", FailureReason::Rejected, false),
    ] {
        let body = json!({"error": code, "message": message}).to_string();
        z.api.answer(ZNS_PATH, 200, &body);
        let err = z
            .sender
            .send(
                &zns_reply(Some("+84912345678")),
                &mut SendProgress::default(),
            )
            .await
            .unwrap_err();
        assert_eq!((err.reason, err.retryable), (reason, retryable), "{body}");
        assert!(err.detail.contains(message), "{}", err.detail);
    }
    assert_eq!(z.api.requests_to(ZNS_PATH).len(), 8);

    // Refused before any call: no phone, a phone that is not one, attachments.
    let before = z.api.requests().len();
    let no_phone = z
        .sender
        .send(&zns_reply(None), &mut SendProgress::default())
        .await
        .unwrap_err();
    assert_eq!(no_phone.reason, FailureReason::InvalidRecipient);
    let not_a_phone = z
        .sender
        .send(
            &zns_reply(Some("lan@example.com")),
            &mut SendProgress::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(not_a_phone.reason, FailureReason::InvalidRecipient);
    let mut with_file = zns_reply(Some("84912345678"));
    with_file.message.attachments = vec![Attachment {
        url: "https://files.shop.example/1024.pdf".into(),
        content_type: Some("application/pdf".into()),
        name: None,
        size: None,
    }];
    let with_file = z
        .sender
        .send(&with_file, &mut SendProgress::default())
        .await
        .unwrap_err();
    assert_eq!(with_file.reason, FailureReason::InvalidMessage);
    assert_eq!(z.api.requests().len(), before, "nothing was sent");

    // An invalid token: refreshed, and the next send uses the new one.
    z.oauth.answer(
        OAUTH_PATH,
        200,
        r#"{"access_token":"ACCESS-2","refresh_token":"R2","expires_in":"90000"}"#,
    );
    z.api.answer(
        ZNS_PATH,
        200,
        r#"{"error":-124,"message":"Access token is invalid"}"#,
    );
    z.api.answer(
        ZNS_PATH,
        200,
        r#"{"error":0,"message":"Success","data":{"msg_id":"b1"}}"#,
    );
    let invalid = z
        .sender
        .send(
            &zns_reply(Some("84912345678")),
            &mut SendProgress::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (invalid.reason, invalid.retryable),
        (FailureReason::BadToken, true)
    );
    z.sender
        .send(
            &zns_reply(Some("84912345678")),
            &mut SendProgress::default(),
        )
        .await
        .unwrap();
    let last = z.api.requests_to(ZNS_PATH).pop().unwrap();
    assert_eq!(last.headers["access_token"], "ACCESS-2");
}

#[tokio::test]
async fn an_expiring_token_is_refreshed_and_the_new_refresh_token_stored_before_use() {
    let z = zalo(None).await; // seeded from settings: refresh token R0, no access token
    let file = z.dir.path().join("oa.json");
    z.oauth.answer(
        OAUTH_PATH,
        200,
        r#"{"access_token":"ACCESS-2","refresh_token":"R1","expires_in":"90000"}"#,
    );
    // When the send arrives, what is in the file?
    let observed = file.clone();
    z.api.hook(CS_PATH, move |_| {
        std::fs::read_to_string(&observed).unwrap()
    });
    z.api.answer(
        CS_PATH,
        200,
        r#"{"error":0,"message":"Success","data":{"message_id":"x1"}}"#,
    );
    z.sender
        .send(
            &reply(ChannelKind::Zalo, OA, ZUSER, None),
            &mut SendProgress::default(),
        )
        .await
        .unwrap();
    let refresh = z.oauth.requests_to(OAUTH_PATH);
    assert_eq!(refresh.len(), 1);
    assert_eq!(refresh[0].headers["secret_key"], "APP-SECRET");
    let mut form = refresh[0].form();
    form.sort();
    assert_eq!(
        form,
        [
            ("app_id".to_owned(), "1183926498471234567".to_owned()),
            ("grant_type".to_owned(), "refresh_token".to_owned()),
            ("refresh_token".to_owned(), "R0".to_owned()),
        ]
    );
    let sent = z.api.requests_to(CS_PATH);
    assert_eq!(sent[0].headers["access_token"], "ACCESS-2");
    let at_send: Value = serde_json::from_str(sent[0].note.as_deref().unwrap()).unwrap();
    assert_eq!(
        at_send["refresh_token"], "R1",
        "stored before the new token was used"
    );
    assert_eq!(at_send["access_token"], "ACCESS-2");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "token file readable by its owner only");
    }
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&z.registry.gather())
        .unwrap();
    assert_eq!(
        metric_value(&text, "omni_zalo_token_refreshes_total", &["result=\"ok\""]),
        1.0
    );
}

#[tokio::test]
async fn an_invalid_token_answer_forces_a_refresh_and_a_refused_refresh_is_loud() {
    let z = zalo(Some(valid_tokens("ACCESS-OLD", "R5"))).await;
    z.api.answer(
        CS_PATH,
        200,
        r#"{"error":-216,"message":"Access token is invalid"}"#,
    );
    let request = reply(ChannelKind::Zalo, OA, ZUSER, None);
    let err = z
        .sender
        .send(&request, &mut SendProgress::default())
        .await
        .unwrap_err();
    assert_eq!((err.reason, err.retryable), (FailureReason::BadToken, true));
    // The retry refreshes first; Zalo refuses the refresh token: permanent bad_token.
    z.oauth.answer(
        OAUTH_PATH,
        400,
        r#"{"error":-14014,"error_name":"Invalid refresh token","error_description":"refresh token is invalid"}"#,
    );
    let err = z
        .sender
        .send(&request, &mut SendProgress::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.reason, err.retryable),
        (FailureReason::BadToken, false)
    );
    assert!(err.detail.contains("-14014"), "{}", err.detail);
    assert_eq!(
        z.api.requests_to(CS_PATH).len(),
        1,
        "nothing sent without a token"
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&z.registry.gather())
        .unwrap();
    assert_eq!(
        metric_value(
            &text,
            "omni_zalo_token_refreshes_total",
            &["result=\"error\""]
        ),
        1.0
    );
    // The old pair is still on disk: nothing was lost.
    let stored = TokenFile::new(z.dir.path().join("oa.json"))
        .load()
        .unwrap()
        .unwrap();
    assert_eq!(stored.refresh_token, "R5");
}

#[tokio::test]
async fn zalo_images_and_files_are_fetched_uploaded_and_sent_by_their_ids() {
    let z = zalo(Some(valid_tokens("ACCESS-1", "R1"))).await;
    let png = b"\x89PNG\r\n\x1a\nnot-really-an-image".to_vec();
    z.api.always("/media/bill.png", 200, "image/png", &png);
    z.api.always(
        "/media/bill.pdf",
        200,
        "application/pdf",
        b"%PDF-1.4 hoa don",
    );
    z.api.answer(
        "/v2.0/oa/upload/image",
        200,
        r#"{"error":0,"message":"Success","data":{"attachment_id":"ATT-1"}}"#,
    );
    z.api.answer(
        "/v2.0/oa/upload/file",
        200,
        r#"{"error":0,"message":"Success","data":{"token":"FILE-1"}}"#,
    );
    z.api
        .answer(CS_PATH, 200, r#"{"error":0,"data":{"message_id":"t1"}}"#);
    z.api
        .answer(CS_PATH, 200, r#"{"error":0,"data":{"message_id":"i1"}}"#);
    z.api
        .answer(CS_PATH, 200, r#"{"error":0,"data":{"message_id":"f1"}}"#);
    let mut request = reply(ChannelKind::Zalo, OA, ZUSER, None);
    request.message.attachments = vec![
        Attachment {
            url: format!("{}/media/bill.png", z.api.url),
            content_type: Some("image/png".into()),
            name: None,
            size: None,
        },
        Attachment {
            url: format!("{}/media/bill.pdf", z.api.url),
            content_type: Some("application/pdf".into()),
            name: Some("hoa-don.pdf".into()),
            size: None,
        },
    ];
    let mut progress = SendProgress::default();
    z.sender.send(&request, &mut progress).await.unwrap();
    assert_eq!(progress.provider_message_ids, ["t1", "i1", "f1"]);
    let upload = &z.api.requests_to("/v2.0/oa/upload/image")[0];
    assert_eq!(upload.headers["access_token"], "ACCESS-1");
    assert!(upload.headers["content-type"].starts_with("multipart/form-data"));
    assert!(
        upload.body.windows(png.len()).any(|w| w == png.as_slice()),
        "the image bytes are uploaded"
    );
    let file_upload = &z.api.requests_to("/v2.0/oa/upload/file")[0];
    assert!(String::from_utf8_lossy(&file_upload.body).contains("filename=\"hoa-don.pdf\""));
    let sent = z.api.requests_to(CS_PATH);
    assert_eq!(
        sent[1].json()["message"],
        json!({"attachment": {"type": "template", "payload": {"template_type": "media",
            "elements": [{"media_type": "image", "attachment_id": "ATT-1"}]}}})
    );
    assert_eq!(
        sent[2].json()["message"],
        json!({"attachment": {"type": "file", "payload": {"token": "FILE-1"}}})
    );
}

/// One daemon with Messenger and Zalo configured against local stand-ins of Graph, the Zalo
/// OpenAPI and Zalo's OAuth server.
struct SocialDaemon {
    broker: Broker,
    graph: StandIn,
    zapi: StandIn,
    daemon: Daemon,
    token_file: std::path::PathBuf,
    _tokens: tempfile::TempDir,
}

/// The customer's messages as the router and agents see them on `omni.inbound.v1`.
struct Inbound {
    messenger: Value,
    zalo: Value,
    instagram: Value,
}

/// The daemon end to end: webhooks in (signed as the providers sign), replies out to the
/// stand-ins, delivery events back on Kafka. (Multi-threaded: the stand-ins keep answering
/// while the test blocks reading Kafka.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_to_kafka_to_agent_reply_to_provider_and_delivery_event() {
    let run = start_with_meta_and_zalo_stand_ins().await;
    meta_subscribes_only_with_the_verify_token(&run).await;
    let mut inbound = customer_messages_on_messenger_and_zalo_reach_kafka(&run).await;
    a_tenant_publishes_only_its_own_pages_from_a_shared_meta_app(&run).await;
    inbound.instagram = instagram_direct_arrives_on_the_same_meta_webhook(&run).await;
    agents_typing_and_seen_reach_meta_as_sender_actions(&run, &inbound).await;
    a_refused_sender_action_is_counted_and_other_channels_refused(&run, &inbound).await;
    agent_replies_go_out_to_graph_and_the_zalo_openapi(&run, &inbound).await;
    every_reply_has_its_delivery_event_and_metrics(&run, &inbound).await;
    a_template_goes_out_as_zns_and_is_unsupported_on_messenger(&run, &inbound).await;
    a_reply_attaching_the_cloud_metadata_address_fails_and_fetches_nothing(&run, &inbound).await;
}

async fn start_with_meta_and_zalo_stand_ins() -> SocialDaemon {
    let broker = Broker::memory();
    let graph = StandIn::start().await;
    let zapi = StandIn::start().await;
    let oauth = StandIn::start().await;
    let tokens = tempfile::tempdir().unwrap();
    let token_file = tokens.path().join("zalo-oa.json");
    oauth.always(
        OAUTH_PATH,
        200,
        "application/json",
        br#"{"access_token":"Z-ACCESS","refresh_token":"Z-R1","expires_in":"90000"}"#,
    );
    let pages_key = format!("OMNI__TENANTS__DEMO__MESSENGER__PAGES__{PAGE}__ACCESS_TOKEN");
    let oa_key = |k: &str| format!("OMNI__TENANTS__DEMO__ZALO__OAS__{OA}__{k}");
    let env: Vec<(String, String)> = vec![
        ("OMNI__MESSENGER__GRAPH_BASE_URL".into(), graph.url.clone()),
        ("OMNI__ZALO__OPENAPI_BASE_URL".into(), zapi.url.clone()),
        ("OMNI__ZALO__ZNS_BASE_URL".into(), zapi.url.clone()),
        ("OMNI__ZALO__OAUTH_BASE_URL".into(), oauth.url.clone()),
        // Token pairs are shared through Kafka, sealed with this key (32 bytes, base64).
        (
            "OMNI__ZALO__TOKEN_KEY".into(),
            "b21uaXJvdXRlci10ZXN0LXRva2VuLWtleS0zMmJ5dGU=".into(),
        ),
        // The owner refreshes one refresh timeout after it took the tenant.
        ("OMNI__ZALO__TIMEOUT_SECS".into(), "2".into()),
        ("OMNI__OUTBOUND__INITIAL_BACKOFF_MS".into(), "100".into()),
        (
            "OMNI__TENANTS__DEMO__MESSENGER__APP_SECRET".into(),
            "META-SECRET".into(),
        ),
        (
            "OMNI__TENANTS__DEMO__MESSENGER__VERIFY_TOKEN".into(),
            "VERIFY".into(),
        ),
        (pages_key, "PAGE-TOKEN".into()),
        (
            format!("OMNI__TENANTS__DEMO__MESSENGER__INSTAGRAM__{IG}__ACCESS_TOKEN"),
            "IG-TOKEN".into(),
        ),
        (oa_key("APP_ID"), "1183926498471234567".into()),
        (oa_key("OA_SECRET_KEY"), "OA-KEY".into()),
        (oa_key("APP_SECRET"), "Z-APP-SECRET".into()),
        (
            oa_key("TOKEN_FILE"),
            token_file.to_str().unwrap().to_owned(),
        ),
        (oa_key("REFRESH_TOKEN"), "Z-R0".into()),
    ];
    let env = [env, globex_env(&tokens.path().join("zalo-globex.json"))].concat();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let daemon = Daemon::start(&broker, &env_refs).await;
    SocialDaemon {
        broker,
        graph,
        zapi,
        daemon,
        token_file,
        _tokens: tokens,
    }
}

/// A second tenant, globex, on the same Meta app (the same app secret signs its page's events)
/// and the same Zalo app (the same OA secret key), its tokens kept in `token_file`.
fn globex_env(token_file: &std::path::Path) -> Vec<(String, String)> {
    let meta = |k: &str| format!("OMNI__TENANTS__GLOBEX__MESSENGER__{k}");
    let oa = |k: &str| format!("OMNI__TENANTS__GLOBEX__ZALO__OAS__{OTHER_OA}__{k}");
    vec![
        (meta("APP_SECRET"), "META-SECRET".into()),
        (meta("VERIFY_TOKEN"), "VERIFY-G".into()),
        (
            meta(&format!("PAGES__{OTHER_PAGE}__ACCESS_TOKEN")),
            "G-TOKEN".into(),
        ),
        (oa("APP_ID"), "1183926498471234567".into()),
        (oa("OA_SECRET_KEY"), "OA-KEY".into()),
        (oa("APP_SECRET"), "Z-APP-SECRET".into()),
        (oa("TOKEN_FILE"), token_file.to_str().unwrap().to_owned()),
        (oa("REFRESH_TOKEN"), "G-R0".into()),
    ]
}

/// Meta's subscription handshake: the challenge is echoed for the verify token only.
async fn meta_subscribes_only_with_the_verify_token(run: &SocialDaemon) {
    let http = reqwest::Client::new();
    let handshake = |token: &str, challenge: &str| {
        run.daemon.url(&format!(
            "/v1/webhooks/messenger/demo?hub.mode=subscribe&hub.verify_token={token}\
             &hub.challenge={challenge}"
        ))
    };
    let ok = http.get(handshake("VERIFY", "31337")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "31337");
    let bad = http.get(handshake("nope", "1")).send().await.unwrap();
    assert_eq!(bad.status(), 403);
}

/// A customer writes on Messenger (Meta escapes non-ASCII) and on Zalo; both are published.
async fn customer_messages_on_messenger_and_zalo_reach_kafka(run: &SocialDaemon) -> Inbound {
    let escaped: String = VI
        .chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                format!("\\u{:04x}", c as u32)
            }
        })
        .collect();
    let fb = messenger_text(PAGE, PSID, "m_e2e", &escaped);
    let status = post_messenger(&run.daemon, "demo", "META-SECRET", &fb).await;
    assert_eq!(status, 200);
    let ts = &now_millis();
    let zalo_body = zalo_text("1183926498471234567", OA, ZUSER, "z_e2e", VI, ts);
    let app = ("1183926498471234567", "OA-KEY");
    assert_eq!(
        post_zalo(&run.daemon, "demo", app, &zalo_body, ts).await,
        200
    );
    // The same OA's event signed an hour ago (a captured request replayed): refused, and not
    // among the two records read below.
    let old_ts = (chrono::Utc::now().timestamp_millis() - 3_600_000).to_string();
    let replayed = zalo_text("1183926498471234567", OA, ZUSER, "z_old", VI, &old_ts);
    assert_eq!(
        post_zalo(&run.daemon, "demo", app, &replayed, &old_ts).await,
        401
    );
    let inbound = read_topic(
        &run.broker.bootstrap(),
        "omni.inbound.v1",
        2,
        Duration::from_secs(20),
        Duration::from_millis(300),
    );
    assert_eq!(inbound.len(), 2);
    let by_kind = |kind: &str| -> Value {
        inbound
            .iter()
            .map(|r| r.value.clone())
            .find(|v| v["data"]["channel"]["kind"] == kind)
            .unwrap()
    };
    let messenger = by_kind("messenger");
    let zalo = by_kind("zalo");
    assert_eq!(messenger["data"]["message"]["text"], VI);
    assert_eq!(zalo["data"]["message"]["text"], VI);
    assert_eq!(zalo["data"]["contact"]["id"], ZUSER);
    Inbound {
        messenger,
        zalo,
        instagram: Value::Null,
    }
}

/// globex's page, on the Meta app demo shares.
const OTHER_PAGE: &str = "777888999000111";
/// globex's OA, on the Zalo app demo shares.
const OTHER_OA: &str = "9100000000000000001";

/// Two tenants share one Meta app (one app secret): an event for globex's page posted to
/// demo's URL is refused (answered 200, counted, not published); in a mixed batch only demo's
/// items are published; globex's own URL publishes globex's event. The same for a Zalo event
/// for globex's OA on the Zalo app both share.
async fn a_tenant_publishes_only_its_own_pages_from_a_shared_meta_app(run: &SocialDaemon) {
    let theirs = messenger_text(OTHER_PAGE, PSID, "m_globex", "hello");
    let status = post_messenger(&run.daemon, "demo", "META-SECRET", &theirs).await;
    assert_eq!(status, 200, "refused items never make Meta retry");
    let item = |page: &str, mid: &str| {
        format!(
            r#"{{"sender":{{"id":"{PSID}"}},"recipient":{{"id":"{page}"}},"timestamp":1700000000100,"message":{{"mid":"{mid}","text":"x"}}}}"#
        )
    };
    let mixed = format!(
        r#"{{"object":"page","entry":[{{"id":"{OTHER_PAGE}","time":1,"messaging":[{}]}},{{"id":"{PAGE}","time":1,"messaging":[{},{}]}}]}}"#,
        item(OTHER_PAGE, "m_mixed_theirs"),
        item(PAGE, "m_mixed_ours"),
        item(OTHER_PAGE, "m_mixed_theirs_2"),
    );
    let status = post_messenger(&run.daemon, "demo", "META-SECRET", &mixed).await;
    assert_eq!(status, 200);
    let status = post_messenger(&run.daemon, "globex", "META-SECRET", &theirs).await;
    assert_eq!(status, 200);
    // The same on Zalo: globex's OA, signed with the key both share, at demo's URL.
    let ts = &now_millis();
    let zalo_theirs = zalo_text("1183926498471234567", OTHER_OA, ZUSER, "z_globex", "hi", ts);
    let app = ("1183926498471234567", "OA-KEY");
    assert_eq!(
        post_zalo(&run.daemon, "demo", app, &zalo_theirs, ts).await,
        200
    );
    // Two records before these posts. A refused item would be keyed "demo", like the valid
    // one posted after it, so it would be on the same partition, before it.
    let inbound = read_topic(
        &run.broker.bootstrap(),
        "omni.inbound.v1",
        4,
        Duration::from_secs(20),
        Duration::from_millis(300),
    );
    let mut seen: Vec<(String, String)> = inbound
        .iter()
        .filter(|r| {
            !["m_e2e", "z_e2e"].contains(&r.value["data"]["message"]["id"].as_str().unwrap_or(""))
        })
        .map(|r| {
            let data = &r.value["data"];
            let mid = data["message"]["id"].as_str().unwrap_or("").to_owned();
            (String::from_utf8_lossy(&r.key).into_owned(), mid)
        })
        .collect();
    seen.sort();
    let expected = [("demo", "m_mixed_ours"), ("globex", "m_globex")]
        .map(|(t, m)| (t.to_owned(), m.to_owned()));
    assert_eq!(seen, expected, "{}", run.daemon.log());
    let metrics = run.daemon.metrics().await;
    let labels = [
        "channel=\"messenger\"",
        "tenant=\"demo\"",
        "reason=\"unknown_account\"",
    ];
    let refused = metric_value(&metrics, "omni_ingress_refused_items_total", &labels);
    assert_eq!(refused, 3.0);
    let zalo = [
        "channel=\"zalo\"",
        "tenant=\"demo\"",
        "reason=\"unknown_account\"",
    ];
    let refused = metric_value(&metrics, "omni_ingress_refused_items_total", &zalo);
    assert_eq!(refused, 1.0);
}

/// An Instagram Direct message comes to the Messenger callback URL (object `instagram`, same
/// app secret) and is published on channel kind `instagram`; an object we do not handle
/// (WhatsApp on the same app) is answered 200, counted and not published.
async fn instagram_direct_arrives_on_the_same_meta_webhook(run: &SocialDaemon) -> Value {
    let whatsapp = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[]}]}"#;
    let status = post_messenger(&run.daemon, "demo", "META-SECRET", whatsapp).await;
    assert_eq!(status, 200, "never a 400 Meta would retry");
    let ig = format!(
        r#"{{"object":"instagram","entry":[{{"id":"{IG}","time":1700000000200,"messaging":[{{"sender":{{"id":"{IGSID}"}},"recipient":{{"id":"{IG}"}},"timestamp":1700000000200,"message":{{"mid":"ig_e2e","text":"C\u00f2n size M kh\u00f4ng shop?"}}}}]}}]}}"#
    );
    let status = post_messenger(&run.daemon, "demo", "META-SECRET", &ig).await;
    assert_eq!(status, 200);
    let inbound = read_topic(
        &run.broker.bootstrap(),
        "omni.inbound.v1",
        5,
        Duration::from_secs(20),
        Duration::from_millis(300),
    );
    assert_eq!(inbound.len(), 5, "the WhatsApp object published nothing");
    let event = inbound
        .iter()
        .map(|r| r.value.clone())
        .find(|v| v["data"]["channel"]["kind"] == "instagram")
        .unwrap();
    assert_eq!(event["data"]["channel"]["account"], IG);
    assert_eq!(event["data"]["contact"]["id"], IGSID);
    assert_eq!(event["data"]["message"]["text"], "Còn size M không shop?");
    let schema = omni_e2e::schema("message-received.schema.json");
    assert!(schema.is_valid(&event["data"]), "{event}");
    let metrics = run.daemon.metrics().await;
    let labels = ["channel=\"messenger\"", "kind=\"unhandled_object\""];
    assert_eq!(
        metric_value(&metrics, "omni_ingress_ignored_total", &labels),
        1.0
    );
    let labels = ["channel=\"instagram\"", "tenant=\"demo\""];
    assert_eq!(
        metric_value(&metrics, "omni_messages_received_total", &labels),
        1.0
    );
    event
}

/// The body of an agent's typing (`on`) or read mark (no `on`) in `event`'s conversation.
fn agent_signal(event: &Value, on: Option<bool>) -> Value {
    let mut body = json!({
        "conversation_id": event["subject"],
        "channel": event["data"]["channel"],
        "recipient": event["data"]["contact"]["id"],
    });
    if let Some(on) = on {
        body["on"] = json!(on);
    }
    body
}

/// Meta's sender action body.
fn sender_action(recipient: &str, action: &str) -> Value {
    json!({"recipient": {"id": recipient}, "sender_action": action})
}

/// An agent's typing on/off in the Messenger conversation and "seen" in the Instagram one
/// become exactly Meta's sender actions with the account's token (none is stored in Kafka:
/// the last step finds only the replies on the outbound topic).
async fn agents_typing_and_seen_reach_meta_as_sender_actions(
    run: &SocialDaemon,
    inbound: &Inbound,
) {
    let ok = |id: &str| format!(r#"{{"recipient_id":"{id}"}}"#);
    run.graph.answer(SEND_PATH, 200, &ok(PSID));
    run.graph.answer(SEND_PATH, 200, &ok(PSID));
    run.graph.answer(IG_SEND_PATH, 200, &ok(IGSID));
    let typing = run.daemon.url("/v1/tenants/demo/typing");
    let read = run.daemon.url("/v1/tenants/demo/read");
    let calls = [
        (
            &typing,
            agent_signal(&inbound.messenger, Some(true)),
            "typing_on",
        ),
        (
            &typing,
            agent_signal(&inbound.messenger, Some(false)),
            "typing_off",
        ),
        (&read, agent_signal(&inbound.instagram, None), "seen"),
    ];
    for (url, body, name) in calls {
        let path = if name == "seen" {
            IG_SEND_PATH
        } else {
            SEND_PATH
        };
        let before = run.graph.requests_to(path).len();
        let (status, json) = omni_e2e::post_json(url, "demo-agent-token", &body).await;
        assert_eq!(status, 202, "{json}");
        assert_eq!(json, json!({"signal": name, "delivery": "best_effort"}));
        // One at a time, so the stand-in sees them in order.
        let _ = run
            .graph
            .wait_for(path, before + 1, Duration::from_secs(10))
            .await;
    }
    let fb = run.graph.requests_to(SEND_PATH);
    assert_eq!(fb.len(), 2);
    assert_eq!(fb[0].json(), sender_action(PSID, "typing_on"));
    assert_eq!(fb[1].json(), sender_action(PSID, "typing_off"));
    assert_eq!(fb[0].headers["authorization"], "Bearer PAGE-TOKEN");
    assert!(fb[0].query.is_empty());
    let ig = run.graph.requests_to(IG_SEND_PATH);
    assert_eq!(ig.len(), 1);
    assert_eq!(ig[0].json(), sender_action(IGSID, "mark_seen"));
    assert_eq!(ig[0].headers["authorization"], "Bearer IG-TOKEN");
    assert!(ig[0].query.is_empty());
}

/// A "seen" Meta refuses is counted by its reason and not retried; channels without typing or
/// read marks (Zalo) are refused with a clear 400 and nothing is sent.
async fn a_refused_sender_action_is_counted_and_other_channels_refused(
    run: &SocialDaemon,
    inbound: &Inbound,
) {
    let unavailable =
        r#"{"error":{"message":"(#551) This person isn't available right now.","code":551}}"#;
    run.graph.answer(SEND_PATH, 400, unavailable);
    let read = run.daemon.url("/v1/tenants/demo/read");
    let token = "demo-agent-token";
    let (status, _) =
        omni_e2e::post_json(&read, token, &agent_signal(&inbound.messenger, None)).await;
    assert_eq!(status, 202);
    let labels = [
        "channel=\"messenger\"",
        "signal=\"seen\"",
        "result=\"user_unavailable\"",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric_value(
        &run.daemon.metrics().await,
        "omni_agent_signals_total",
        &labels,
    ) < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the failure is never counted"
        );
        let _ = run
            .graph
            .wait_for(SEND_PATH, 3, Duration::from_millis(50))
            .await;
    }
    assert_eq!(
        run.graph.requests_to(SEND_PATH).len(),
        3,
        "tried once, not retried"
    );
    let metrics = run.daemon.metrics().await;
    let sent = [
        "channel=\"instagram\"",
        "signal=\"seen\"",
        "result=\"sent\"",
    ];
    assert_eq!(
        metric_value(&metrics, "omni_agent_signals_total", &sent),
        1.0
    );
    let before = run.graph.requests().len();
    let (status, json) =
        omni_e2e::post_json(&read, token, &agent_signal(&inbound.zalo, None)).await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (400, Some("invalid_field"))
    );
    let typing = run.daemon.url("/v1/tenants/demo/typing");
    let on = agent_signal(&inbound.zalo, Some(true));
    let (status, _) = omni_e2e::post_json(&typing, token, &on).await;
    assert_eq!(status, 400);
    assert_eq!(run.graph.requests().len(), before);
}

/// An agent's reply to `event` through the agent API.
fn answer(event: &Value, text: &str) -> Value {
    json!({
        "conversation_id": event["subject"],
        "channel": event["data"]["channel"],
        "recipient": event["data"]["contact"]["id"],
        "agent_id": "agent-7",
        "text": text,
        "reply_to": event["data"]["message"]["id"],
    })
}

/// Agents answer both conversations through the API; Graph and the Zalo OpenAPI get exactly
/// the documented requests, Zalo's with the access token refreshed at start.
async fn agent_replies_go_out_to_graph_and_the_zalo_openapi(run: &SocialDaemon, inbound: &Inbound) {
    run.graph.answer(
        SEND_PATH,
        200,
        r#"{"recipient_id":"5384937120339286147","message_id":"m_reply"}"#,
    );
    // The third reply (below) will be refused by Meta.
    run.graph.answer(
        SEND_PATH,
        400,
        r#"{"error":{"message":"(#551) This person isn't available right now.","code":551}}"#,
    );
    run.zapi.answer(
        CS_PATH,
        200,
        r#"{"error":0,"message":"Success","data":{"message_id":"z_reply"}}"#,
    );
    run.graph.answer(
        IG_SEND_PATH,
        200,
        r#"{"recipient_id":"6543210987654321","message_id":"ig_reply"}"#,
    );
    let replies = run.daemon.url("/v1/tenants/demo/replies");
    let all = [&inbound.messenger, &inbound.zalo, &inbound.instagram];
    for body in all.map(|event| answer(event, VI)) {
        let (status, json) = omni_e2e::post_json(&replies, "demo-agent-token", &body).await;
        assert_eq!(status, 202, "{json}");
    }
    // After the three sender actions of the step before.
    let fb_sent = run
        .graph
        .wait_for(SEND_PATH, 4, Duration::from_secs(20))
        .await;
    let fb_sent = &fb_sent[3..];
    assert_eq!(fb_sent[0].json()["message"]["text"], VI);
    assert_eq!(fb_sent[0].json()["recipient"]["id"], PSID);
    let ig_sent = run
        .graph
        .wait_for(IG_SEND_PATH, 2, Duration::from_secs(20))
        .await;
    let ig_sent = &ig_sent[1..];
    let ig_expected = json!({
        "recipient": {"id": IGSID}, "messaging_type": "RESPONSE", "message": {"text": VI}
    });
    assert_eq!(ig_sent[0].json(), ig_expected);
    assert_eq!(ig_sent[0].headers["authorization"], "Bearer IG-TOKEN");
    assert!(ig_sent[0].query.is_empty());
    let z_sent = run.zapi.wait_for(CS_PATH, 1, Duration::from_secs(20)).await;
    assert_eq!(z_sent[0].json()["message"]["text"], VI);
    assert_eq!(z_sent[0].json()["message"]["quote_message_id"], "z_e2e");
    assert_eq!(
        z_sent[0].headers["access_token"], "Z-ACCESS",
        "refreshed at start"
    );
    let stored = TokenFile::new(&run.token_file).load().unwrap().unwrap();
    assert_eq!(stored.refresh_token, "Z-R1");
}

/// A reply Meta refuses is `failed` with its reason; the three sent replies are `sent` with the
/// provider's ids; every delivery event matches the schema and is keyed by tenant.
async fn every_reply_has_its_delivery_event_and_metrics(run: &SocialDaemon, inbound: &Inbound) {
    let refused = answer(&inbound.messenger, "Anh/chị còn cần hỗ trợ gì không ạ?");
    let replies = run.daemon.url("/v1/tenants/demo/replies");
    let (status, _) = omni_e2e::post_json(&replies, "demo-agent-token", &refused).await;
    assert_eq!(status, 202);
    let deliveries = read_topic(
        &run.broker.bootstrap(),
        "omni.delivery.v1",
        4,
        Duration::from_secs(30),
        Duration::from_millis(300),
    );
    let field = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let mut seen: Vec<(String, String, String)> = deliveries
        .iter()
        .map(|d| {
            let data = &d.value["data"];
            let id = data["provider_message_id"]
                .as_str()
                .or(data["reason"].as_str());
            let id = id.unwrap_or("").to_owned();
            (field(&data["channel"]["kind"]), field(&data["status"]), id)
        })
        .collect();
    seen.sort();
    let expected = [
        ("instagram", "sent", "ig_reply"),
        ("messenger", "failed", "user_unavailable"),
        ("messenger", "sent", "m_reply"),
        ("zalo", "sent", "z_reply"),
    ]
    .map(|(k, s, i)| (k.to_owned(), s.to_owned(), i.to_owned()));
    assert_eq!(seen, expected, "{}", run.daemon.log());
    // Agents' typing and "seen" were never stored: only the replies are on the outbound topic.
    let outbound = read_topic(
        &run.broker.bootstrap(),
        "omni.outbound.v1",
        4,
        Duration::from_secs(20),
        Duration::from_millis(300),
    );
    let types: Vec<&str> = outbound
        .iter()
        .map(|r| r.value["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["omni.message.send"; 4]);
    let schema = omni_e2e::schema("delivery-update.schema.json");
    for d in &deliveries {
        assert!(schema.is_valid(&d.value["data"]), "{}", d.value);
        assert_eq!(d.key, b"demo");
    }
    let metrics = run.daemon.metrics().await;
    let failures = ["channel=\"messenger\"", "reason=\"user_unavailable\""];
    let failed = metric_value(&metrics, "omni_delivery_failures_total", &failures);
    assert_eq!(failed, 1.0);
    let zalo_in = ["channel=\"zalo\""];
    let received = metric_value(&metrics, "omni_messages_received_total", &zalo_in);
    assert_eq!(received, 1.0);
}

/// A CRM sends a ZNS template through the API on the Zalo conversation: it reaches the ZNS
/// stand-in by phone and is `sent` with ZNS's message id. The same on the Messenger
/// conversation is `failed` as `unsupported`, with no call to Graph.
async fn a_template_goes_out_as_zns_and_is_unsupported_on_messenger(
    run: &SocialDaemon,
    inbound: &Inbound,
) {
    run.zapi.answer(
        ZNS_PATH,
        200,
        r#"{"error":0,"message":"Success","data":{"msg_id":"zns_e2e","sent_time":"1733212800000"}}"#,
    );
    let graph_before = run.graph.requests().len();
    let template =
        json!({"name": "231187", "params": {"order_code": "1024"}, "phone": "+84912345678"});
    let replies = run.daemon.url("/v1/tenants/demo/replies");
    let mut ids = Vec::new();
    for event in [&inbound.zalo, &inbound.messenger] {
        let mut body = answer(event, "");
        body["template"] = template.clone();
        let (status, json) = omni_e2e::post_json(&replies, "demo-agent-token", &body).await;
        assert_eq!(status, 202, "{json}");
        ids.push(json["event_id"].as_str().unwrap().to_owned());
    }
    let zns = run
        .zapi
        .wait_for(ZNS_PATH, 1, Duration::from_secs(20))
        .await;
    assert_eq!(
        zns[0].json(),
        json!({"phone": "84912345678", "template_id": "231187",
               "template_data": {"order_code": "1024"}, "tracking_id": ids[0]})
    );
    assert_eq!(zns[0].headers["access_token"], "Z-ACCESS");
    let deliveries = read_topic(
        &run.broker.bootstrap(),
        "omni.delivery.v1",
        6,
        Duration::from_secs(30),
        Duration::from_millis(300),
    );
    let fate = |id: &str| {
        deliveries
            .iter()
            .map(|d| &d.value["data"])
            .find(|d| d["outbound_event_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no delivery event for {id}; log:\n{}", run.daemon.log()))
    };
    let zns = fate(&ids[0]);
    assert_eq!(
        (zns["status"].as_str(), zns["provider_message_id"].as_str()),
        (Some("sent"), Some("zns_e2e"))
    );
    let messenger = fate(&ids[1]);
    assert_eq!(
        (messenger["status"].as_str(), messenger["reason"].as_str()),
        (Some("failed"), Some("unsupported"))
    );
    assert_eq!(
        run.graph.requests().len(),
        graph_before,
        "nothing went to Graph"
    );
}

/// A reply whose attachment points at the cloud metadata address (what an attacker with a
/// CRM account would try, to have omnirouter fetch instance credentials and upload them to
/// Zalo) fails as `invalid_message` naming the link-local address; nothing is uploaded.
async fn a_reply_attaching_the_cloud_metadata_address_fails_and_fetches_nothing(
    run: &SocialDaemon,
    inbound: &Inbound,
) {
    let uploads = run.zapi.requests_to("/v2.0/oa/upload/image").len();
    let mut body = answer(&inbound.zalo, "");
    body["attachments"] = json!([{
        "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "content_type": "image/png",
    }]);
    let replies = run.daemon.url("/v1/tenants/demo/replies");
    let (status, json) = omni_e2e::post_json(&replies, "demo-agent-token", &body).await;
    assert_eq!(status, 202, "{json}");
    let id = json["event_id"].as_str().unwrap().to_owned();
    let deliveries = read_topic(
        &run.broker.bootstrap(),
        "omni.delivery.v1",
        7,
        Duration::from_secs(30),
        Duration::from_millis(300),
    );
    let fate = deliveries
        .iter()
        .map(|d| &d.value["data"])
        .find(|d| d["outbound_event_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no delivery event for {id}; log:\n{}", run.daemon.log()));
    assert_eq!(fate["status"], "failed");
    assert_eq!(fate["reason"], "invalid_message");
    let detail = fate["detail"].as_str().unwrap();
    assert!(detail.contains("link-local"), "{detail}");
    assert!(
        !detail.contains("security-credentials"),
        "no path in the detail: {detail}"
    );
    assert_eq!(
        run.zapi.requests_to("/v2.0/oa/upload/image").len(),
        uploads,
        "nothing uploaded"
    );
}
