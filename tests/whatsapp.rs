//! WhatsApp Business (Cloud API) end to end: the sender against a local server standing in
//! for the Graph API (asserting the exact requests and answering success and Meta's error
//! codes), and the daemon from a signed webhook to `omni.inbound.v1`, an agent's reply and a
//! template to the stand-in, the statuses Meta posts back to delivery events, and agents'
//! read marks and typing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_channel::{ChannelSender, FailureReason, SendProgress, SendRequest};
use omni_core::{
    Attachment, ChannelKind, ChannelRef, ConversationId, EventId, OutboundMessage, Secret,
    Template, TenantId,
};
use omni_e2e::standin::StandIn;
use omni_e2e::webhooks::{post_whatsapp, whatsapp_text};
use omni_e2e::{metric_value, read_topic, Broker, Daemon};
use omni_social::whatsapp::{NumberSettings, WhatsappSendSettings, WhatsappSender, WhatsappTenant};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The business number's id (not the phone number itself).
const NUMBER: &str = "106540352242922";
/// Another tenant's number on the same Meta app.
const OTHER_NUMBER: &str = "106540352249999";
/// The customer's WhatsApp id: their phone number.
const WA_ID: &str = "84901234567";
const SEND_PATH: &str = "/v23.0/106540352242922/messages";
const VI: &str = "Dạ, đơn hàng #1024 của anh/chị đã được giao hôm nay ạ. Cảm ơn quý khách!";

fn sent(wamid: &str) -> String {
    format!(
        r#"{{"messaging_product":"whatsapp","contacts":[{{"input":"{WA_ID}","wa_id":"{WA_ID}"}}],"messages":[{{"id":"{wamid}"}}]}}"#
    )
}

fn reply(text: &str) -> SendRequest {
    let tenant = TenantId::new("acme").unwrap();
    let channel = ChannelRef::new(ChannelKind::Whatsapp, NUMBER);
    SendRequest {
        event_id: EventId::new_random(),
        message: OutboundMessage {
            tenant: tenant.clone(),
            conversation_id: ConversationId::derive(&tenant, &channel, WA_ID, None),
            channel,
            recipient: WA_ID.into(),
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

fn sender(graph: &StandIn) -> WhatsappSender {
    let tenant = TenantId::new("acme").unwrap();
    let account = WhatsappTenant {
        app_secret: Secret::new("s"),
        verify_token: Secret::new("v"),
        numbers: HashMap::from([(
            NUMBER.to_owned(),
            NumberSettings {
                access_token: Secret::new("WA-TOKEN"),
            },
        )]),
    };
    let settings = WhatsappSendSettings {
        graph_base_url: graph.url.clone(),
        api_version: "v23.0".into(),
        rate_per_number: 80.0,
        timeout: Duration::from_secs(5),
    };
    WhatsappSender::new([(&tenant, &account)], settings).unwrap()
}

/// `<outbound event id>.<conversation id>`, which Meta echoes in the part's statuses.
fn callback_data(request: &SendRequest) -> String {
    format!("{}.{}", request.event_id, request.message.conversation_id)
}

#[tokio::test]
async fn whatsapp_sends_exactly_the_documented_request_per_part() {
    let graph = StandIn::start().await;
    for id in ["wamid.TEXT", "wamid.IMG", "wamid.DOC"] {
        graph.answer(SEND_PATH, 200, &sent(id));
    }
    let sender = sender(&graph);
    let mut request = reply(VI);
    request.message.reply_to = Some("wamid.CUSTOMER".into());
    request.message.attachments = vec![
        Attachment {
            url: "https://cdn.shop.example.vn/hoa-don.png".into(),
            content_type: Some("image/png".into()),
            name: None,
            size: None,
        },
        Attachment {
            url: "https://cdn.shop.example.vn/hoa-don.pdf".into(),
            content_type: Some("application/pdf".into()),
            name: Some("hoa-don.pdf".into()),
            size: None,
        },
    ];
    let mut progress = SendProgress::default();
    let receipt = sender.send(&request, &mut progress).await.unwrap();
    assert_eq!(receipt.provider_message_id.as_deref(), Some("wamid.TEXT"));
    assert_eq!(
        progress.provider_message_ids,
        ["wamid.TEXT", "wamid.IMG", "wamid.DOC"]
    );
    let calls = graph.requests_to(SEND_PATH);
    assert_eq!(calls.len(), 3);
    for r in &calls {
        assert_eq!(r.method, "POST");
        assert_eq!(r.headers["authorization"], "Bearer WA-TOKEN");
        assert!(r.query.is_empty(), "no token in the URL: {}", r.query);
        assert_eq!(r.headers["content-type"], "application/json");
    }
    let data = callback_data(&request);
    let common = |part: Value| {
        let mut body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": WA_ID,
            "biz_opaque_callback_data": data,
        });
        body.as_object_mut()
            .unwrap()
            .extend(part.as_object().unwrap().clone());
        body
    };
    assert_eq!(
        calls[0].json(),
        common(json!({
            "type": "text",
            "text": {"body": VI, "preview_url": false},
            "context": {"message_id": "wamid.CUSTOMER"},
        }))
    );
    assert_eq!(
        calls[1].json(),
        common(json!({
            "type": "image",
            "image": {"link": "https://cdn.shop.example.vn/hoa-don.png"},
        }))
    );
    assert_eq!(
        calls[2].json(),
        common(json!({
            "type": "document",
            "document": {"link": "https://cdn.shop.example.vn/hoa-don.pdf", "filename": "hoa-don.pdf"},
        }))
    );
    assert!(String::from_utf8(calls[0].body.clone())
        .unwrap()
        .contains(VI));
}

fn template(params: &[(&str, &str)], language: Option<&str>) -> Template {
    Template {
        name: "order_shipped".into(),
        language: language.map(str::to_owned),
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        phone: None,
    }
}

#[tokio::test]
async fn a_template_goes_out_as_one_template_message_with_its_parameters() {
    let graph = StandIn::start().await;
    graph.answer(SEND_PATH, 200, &sent("wamid.T1"));
    graph.answer(SEND_PATH, 200, &sent("wamid.T2"));
    let sender = sender(&graph);
    // Positional {{1}}, {{2}}, … in numeric order (10 after 2, not after 1).
    let mut positional = reply("");
    let params = [("2", "Nguyễn Văn An"), ("10", "28/11"), ("1", "#1024")];
    positional.message.template = Some(template(&params, Some("vi")));
    let mut progress = SendProgress::default();
    sender.send(&positional, &mut progress).await.unwrap();
    let mut named = reply("");
    named.message.template = Some(template(&[("order_id", "#1024")], Some("en_US")));
    sender
        .send(&named, &mut SendProgress::default())
        .await
        .unwrap();
    let calls = graph.requests_to(SEND_PATH);
    assert_eq!(calls.len(), 2, "one call per template");
    assert_eq!(calls[0].json()["type"], "template");
    assert_eq!(
        calls[0].json()["template"],
        json!({
            "name": "order_shipped",
            "language": {"code": "vi"},
            "components": [{"type": "body", "parameters": [
                {"type": "text", "text": "#1024"},
                {"type": "text", "text": "Nguyễn Văn An"},
                {"type": "text", "text": "28/11"},
            ]}],
        })
    );
    assert_eq!(
        calls[0].json()["biz_opaque_callback_data"],
        callback_data(&positional)
    );
    assert_eq!(
        calls[1].json()["template"]["components"][0]["parameters"],
        json!([{"type": "text", "parameter_name": "order_id", "text": "#1024"}])
    );
    // Without a language there is nothing WhatsApp could send: refused here, no call.
    let mut no_language = reply("");
    no_language.message.template = Some(template(&[], None));
    let err = sender
        .send(&no_language, &mut SendProgress::default())
        .await
        .unwrap_err();
    assert_eq!(err.reason, FailureReason::InvalidMessage);
    assert!(!err.retryable);
    assert_eq!(graph.requests_to(SEND_PATH).len(), 2);
    assert!(sender.sends_templates());
}

#[tokio::test]
async fn a_csat_survey_goes_out_as_a_list_of_the_scores() {
    let graph = StandIn::start().await;
    graph.answer(SEND_PATH, 200, &sent("wamid.CSAT"));
    let sender = sender(&graph);
    let mut survey = reply("Anh/chị hài lòng với hỗ trợ hôm nay không?");
    survey.message.csat_survey = true;
    sender
        .send(&survey, &mut SendProgress::default())
        .await
        .unwrap();
    let body = graph.requests_to(SEND_PATH)[0].json();
    assert_eq!(body["type"], "interactive");
    assert_eq!(body["interactive"]["type"], "list");
    assert_eq!(
        body["interactive"]["body"]["text"],
        "Anh/chị hài lòng với hỗ trợ hôm nay không?"
    );
    let titles: Vec<&str> = body["interactive"]["action"]["sections"][0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["5", "4", "3", "2", "1"]);
}

#[tokio::test]
async fn cloud_api_errors_are_classified_by_metas_error_codes() {
    let graph = StandIn::start().await;
    let sender = sender(&graph);
    let cases = [
        (400, 131047, FailureReason::OutsideWindow, false),
        (400, 130429, FailureReason::RateLimited, true),
        (400, 131056, FailureReason::RateLimited, true),
        (400, 131026, FailureReason::UserUnavailable, false),
        (401, 190, FailureReason::BadToken, false),
        (400, 132001, FailureReason::InvalidMessage, false),
        (400, 131051, FailureReason::Unsupported, false),
        (400, 131030, FailureReason::InvalidRecipient, false),
        (500, 131000, FailureReason::ProviderUnavailable, true),
        (400, 131042, FailureReason::Rejected, false),
    ];
    for (status, code, reason, retryable) in cases {
        let body = format!(
            r#"{{"error":{{"message":"(#{code}) error","type":"OAuthException","code":{code},"error_data":{{"messaging_product":"whatsapp","details":"details of {code}"}},"fbtrace_id":"A"}}}}"#
        );
        graph.answer(SEND_PATH, status, &body);
        let err = sender
            .send(&reply("Xin chào"), &mut SendProgress::default())
            .await
            .unwrap_err();
        assert_eq!((err.reason, err.retryable), (reason, retryable), "{code}");
        assert!(
            err.detail.contains(&format!("details of {code}")),
            "{}",
            err.detail
        );
    }
    // Not Meta's error shape: by HTTP status.
    graph.answer(SEND_PATH, 503, "upstream down");
    let err = sender
        .send(&reply("Xin chào"), &mut SendProgress::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.reason, err.retryable),
        (FailureReason::ProviderUnavailable, true)
    );
}

// ---------------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------------

struct WhatsappDaemon {
    broker: Broker,
    graph: StandIn,
    daemon: Daemon,
}

async fn start() -> WhatsappDaemon {
    let broker = Broker::memory();
    let graph = StandIn::start().await;
    let demo = |k: &str| format!("OMNI__TENANTS__DEMO__WHATSAPP__{k}");
    let globex = |k: &str| format!("OMNI__TENANTS__GLOBEX__WHATSAPP__{k}");
    let env: Vec<(String, String)> = vec![
        ("OMNI__WHATSAPP__GRAPH_BASE_URL".into(), graph.url.clone()),
        ("OMNI__OUTBOUND__INITIAL_BACKOFF_MS".into(), "100".into()),
        (demo("APP_SECRET"), "WA-SECRET".into()),
        (demo("VERIFY_TOKEN"), "WA-VERIFY".into()),
        (
            demo(&format!("NUMBERS__{NUMBER}__ACCESS_TOKEN")),
            "WA-TOKEN".into(),
        ),
        // Another tenant on the same Meta app: the same secret signs its number's changes.
        (globex("APP_SECRET"), "WA-SECRET".into()),
        (globex("VERIFY_TOKEN"), "WA-VERIFY-G".into()),
        (
            globex(&format!("NUMBERS__{OTHER_NUMBER}__ACCESS_TOKEN")),
            "G-TOKEN".into(),
        ),
    ];
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let daemon = Daemon::start(&broker, &env_refs).await;
    WhatsappDaemon {
        broker,
        graph,
        daemon,
    }
}

/// The daemon end to end. (Multi-threaded: the stand-in keeps answering while the test blocks
/// reading Kafka.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_webhook_to_kafka_reply_statuses_and_read_marks() {
    let run = start().await;
    meta_subscribes_only_with_the_verify_token(&run).await;
    let inbound =
        a_customer_message_reaches_kafka_and_another_tenants_number_is_refused(&run).await;
    let replies = an_agent_reply_and_a_template_reach_the_cloud_api(&run, &inbound).await;
    statuses_become_delivery_events_of_the_replies(&run, &replies).await;
    agents_mark_messages_read_with_and_without_typing(&run, &inbound).await;
}

async fn meta_subscribes_only_with_the_verify_token(run: &WhatsappDaemon) {
    let http = reqwest::Client::new();
    let handshake = |token: &str| {
        run.daemon.url(&format!(
            "/v1/webhooks/whatsapp/demo?hub.mode=subscribe&hub.verify_token={token}\
             &hub.challenge=31337"
        ))
    };
    let ok = http.get(handshake("WA-VERIFY")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "31337");
    let bad = http.get(handshake("WA-VERIFY-G")).send().await.unwrap();
    assert_eq!(bad.status(), 403, "globex's token does not subscribe demo");
}

async fn a_customer_message_reaches_kafka_and_another_tenants_number_is_refused(
    run: &WhatsappDaemon,
) -> Value {
    // Signed with the shared app secret, but for globex's number: refused, never published.
    let foreign = whatsapp_text(OTHER_NUMBER, WA_ID, "Kẻ gian", "wamid.FOREIGN", "hi");
    assert_eq!(
        post_whatsapp(&run.daemon, "demo", "WA-SECRET", &foreign).await,
        200
    );
    let unsigned = whatsapp_text(NUMBER, WA_ID, "An", "wamid.FORGED", "hi");
    assert_eq!(
        post_whatsapp(&run.daemon, "demo", "not-the-secret", &unsigned).await,
        401
    );
    let body = whatsapp_text(
        NUMBER,
        WA_ID,
        "Nguyễn Văn An",
        "wamid.IN",
        "Đơn hàng của tôi đâu?",
    );
    assert_eq!(
        post_whatsapp(&run.daemon, "demo", "WA-SECRET", &body).await,
        200
    );
    // Every earlier request was answered before this one: whatever they published is there.
    let inbound = read_topic(
        &run.broker.bootstrap(),
        "omni.inbound.v1",
        1,
        Duration::from_secs(20),
        Duration::from_millis(300),
    );
    assert_eq!(inbound.len(), 1, "only demo's own number is published");
    let event = inbound[0].value.clone();
    assert_eq!(event["type"], "omni.message.received");
    let data = &event["data"];
    assert_eq!(
        data["channel"],
        json!({"kind": "whatsapp", "account": NUMBER})
    );
    assert_eq!(data["contact"]["id"], WA_ID);
    assert_eq!(data["contact"]["name"], "Nguyễn Văn An");
    assert_eq!(data["contact"]["phone"], "+84901234567");
    assert_eq!(data["message"]["text"], "Đơn hàng của tôi đâu?");
    let schema = omni_e2e::schema("message-received.schema.json");
    assert!(schema.is_valid(data), "{event}");
    let metrics = run.daemon.metrics().await;
    let refused = [
        "channel=\"whatsapp\"",
        "tenant=\"demo\"",
        "reason=\"unknown_account\"",
    ];
    assert_eq!(
        metric_value(&metrics, "omni_ingress_refused_items_total", &refused),
        1.0
    );
    event
}

/// What the agent replies and the template were sent as: the bodies Meta received.
struct Replies {
    text: Value,
    template: Value,
}

async fn an_agent_reply_and_a_template_reach_the_cloud_api(
    run: &WhatsappDaemon,
    inbound: &Value,
) -> Replies {
    run.graph.answer(SEND_PATH, 200, &sent("wamid.REPLY"));
    run.graph.answer(SEND_PATH, 200, &sent("wamid.TEMPLATE"));
    let replies = run.daemon.url("/v1/tenants/demo/replies");
    let base = json!({
        "conversation_id": inbound["subject"],
        "channel": inbound["data"]["channel"],
        "recipient": inbound["data"]["contact"]["id"],
        "agent_id": "agent-7",
    });
    let mut text = base.clone();
    text["text"] = json!(VI);
    text["reply_to"] = inbound["data"]["message"]["id"].clone();
    let (status, json) = omni_e2e::post_json(&replies, "demo-agent-token", &text).await;
    assert_eq!(status, 202, "{json}");
    run.graph
        .wait_for(SEND_PATH, 1, Duration::from_secs(20))
        .await;
    let mut template = base;
    template["text"] = json!("");
    template["template"] =
        json!({"name": "order_shipped", "language": "vi", "params": {"1": "#1024"}});
    let (status, json) = omni_e2e::post_json(&replies, "demo-agent-token", &template).await;
    assert_eq!(status, 202, "{json}");
    let calls = run
        .graph
        .wait_for(SEND_PATH, 2, Duration::from_secs(20))
        .await;
    let (text, template) = (calls[0].json(), calls[1].json());
    assert_eq!(calls[0].headers["authorization"], "Bearer WA-TOKEN");
    assert_eq!(text["to"], WA_ID);
    assert_eq!(text["text"]["body"], VI);
    assert_eq!(text["context"]["message_id"], "wamid.IN");
    assert_eq!(template["type"], "template");
    assert_eq!(template["template"]["language"]["code"], "vi");
    assert_eq!(
        template["template"]["components"][0]["parameters"][0]["text"],
        "#1024"
    );
    Replies { text, template }
}

/// Meta's status webhooks for the two replies: the text is delivered and read, the template
/// fails (131047 is what Meta reports for a free-form message outside the window; here it
/// stands for any failure Meta reports after accepting a message).
async fn statuses_become_delivery_events_of_the_replies(run: &WhatsappDaemon, replies: &Replies) {
    let status = |wamid: &str, state: &str, data: &Value, errors: &str| {
        format!(
            r#"{{"id":"{wamid}","status":"{state}","timestamp":"1700000100","recipient_id":"{WA_ID}","biz_opaque_callback_data":{data}{errors}}}"#
        )
    };
    let text_ref = &replies.text["biz_opaque_callback_data"];
    let template_ref = &replies.template["biz_opaque_callback_data"];
    let failure = r#","errors":[{"code":131047,"title":"Re-engagement message","message":"Re-engagement message","error_data":{"details":"more than 24 hours have passed"}}]"#;
    let statuses = [
        status("wamid.REPLY", "delivered", text_ref, ""),
        status("wamid.REPLY", "read", text_ref, ""),
        status("wamid.TEMPLATE", "failed", template_ref, failure),
    ]
    .join(",");
    let body = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"84281234567","phone_number_id":"{NUMBER}"}},"statuses":[{statuses}]}}}}]}}]}}"#
    );
    assert_eq!(
        post_whatsapp(&run.daemon, "demo", "WA-SECRET", &body).await,
        200
    );
    // Two `sent` from the dispatcher, then the three statuses.
    let deliveries = read_topic(
        &run.broker.bootstrap(),
        "omni.delivery.v1",
        5,
        Duration::from_secs(30),
        Duration::from_millis(300),
    );
    let outbound = read_topic(
        &run.broker.bootstrap(),
        "omni.outbound.v1",
        2,
        Duration::from_secs(20),
        Duration::from_millis(300),
    );
    let outbound_ids: Vec<&str> = outbound
        .iter()
        .map(|r| r.value["id"].as_str().unwrap())
        .collect();
    let field = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let mut seen: Vec<(String, String, String, String)> = deliveries
        .iter()
        .map(|d| {
            let data = &d.value["data"];
            let outbound = outbound_ids
                .iter()
                .position(|id| *id == data["outbound_event_id"])
                .map_or("?".to_owned(), |i| i.to_string());
            (
                outbound,
                field(&data["status"]),
                field(&data["provider_message_id"]),
                field(&data["reason"]),
            )
        })
        .collect();
    seen.sort();
    let expected = [
        ("0", "delivered", "wamid.REPLY", ""),
        ("0", "read", "wamid.REPLY", ""),
        ("0", "sent", "wamid.REPLY", ""),
        ("1", "failed", "wamid.TEMPLATE", "outside_window"),
        ("1", "sent", "wamid.TEMPLATE", ""),
    ]
    .map(|(a, b, c, d)| (a.to_owned(), b.to_owned(), c.to_owned(), d.to_owned()));
    assert_eq!(seen, expected, "{}", run.daemon.log());
    let schema = omni_e2e::schema("delivery-update.schema.json");
    for d in &deliveries {
        assert!(schema.is_valid(&d.value["data"]), "{}", d.value);
        assert_eq!(d.key, b"demo");
        assert_eq!(d.value["data"]["channel"]["kind"], "whatsapp");
    }
}

/// "Seen" marks the customer's message read; typing marks it read with the typing
/// indicator; "typing off" sends nothing; a read mark without the message id is refused.
async fn agents_mark_messages_read_with_and_without_typing(run: &WhatsappDaemon, inbound: &Value) {
    let ok = r#"{"success":true}"#;
    run.graph.answer(SEND_PATH, 200, ok);
    run.graph.answer(SEND_PATH, 200, ok);
    let body = |on: Option<bool>, message_id: Option<&Value>| {
        let mut body = json!({
            "conversation_id": inbound["subject"],
            "channel": inbound["data"]["channel"],
            "recipient": inbound["data"]["contact"]["id"],
        });
        if let Some(on) = on {
            body["on"] = json!(on);
        }
        if let Some(id) = message_id {
            body["message_id"] = id.clone();
        }
        body
    };
    let message_id = &inbound["data"]["message"]["id"];
    let read = run.daemon.url("/v1/tenants/demo/read");
    let typing = run.daemon.url("/v1/tenants/demo/typing");
    let token = "demo-agent-token";
    let (status, json) = omni_e2e::post_json(&read, token, &body(None, None)).await;
    assert_eq!(status, 400, "{json}");
    assert_eq!(json["error"]["code"], "missing_field");
    let before = run.graph.requests_to(SEND_PATH).len();
    let (status, _) = omni_e2e::post_json(&read, token, &body(None, Some(message_id))).await;
    assert_eq!(status, 202);
    let calls = run
        .graph
        .wait_for(SEND_PATH, before + 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        calls[before].json(),
        json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN"})
    );
    let (status, _) =
        omni_e2e::post_json(&typing, token, &body(Some(true), Some(message_id))).await;
    assert_eq!(status, 202);
    let calls = run
        .graph
        .wait_for(SEND_PATH, before + 2, Duration::from_secs(10))
        .await;
    assert_eq!(
        calls[before + 1].json(),
        json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN",
               "typing_indicator": {"type": "text"}})
    );
    assert_eq!(
        calls[before + 1].headers["authorization"],
        "Bearer WA-TOKEN"
    );
    let (status, _) =
        omni_e2e::post_json(&typing, token, &body(Some(false), Some(message_id))).await;
    assert_eq!(status, 202);
    let labels = |signal: &str, result: &str| {
        [
            "channel=\"whatsapp\"".to_owned(),
            format!("signal=\"{signal}\""),
            format!("result=\"{result}\""),
        ]
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = run.daemon.metrics().await;
        let count = |signal, result| {
            let l = labels(signal, result);
            let refs: Vec<&str> = l.iter().map(String::as_str).collect();
            metric_value(&metrics, "omni_agent_signals_total", &refs)
        };
        let counts = [
            count("seen", "sent"),
            count("typing_on", "sent"),
            count("typing_off", "skipped"),
        ];
        if counts == [1.0; 3] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        run.graph.requests_to(SEND_PATH).len(),
        before + 2,
        "typing off sent nothing"
    );
}
