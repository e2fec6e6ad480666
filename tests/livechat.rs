//! Website live chat end to end: the real daemon (one or two instances) on a real tansu broker,
//! a Rust WebSocket client speaking the widget's protocol, and Debian's headless chromium
//! running the real widget on the example page.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use futures_util::{SinkExt, StreamExt};
use omni_channel::signature::hmac_sha256_hex;
use omni_e2e::browser::Chromium;
use omni_e2e::{livechat, post_json, read_topic, Broker, Daemon};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const ORIGIN: &str = "http://127.0.0.1:5173";
const AGENT: &str = "demo-agent-token";
const SECRET: &str = "demo-widget-secret-change-me";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A session as the widget gets it.
struct Session {
    token: String,
    visitor: String,
    conversation: String,
}

async fn session(daemon: &Daemon, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(daemon.url("/v1/livechat/demo/web/session"))
        .header("origin", ORIGIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn new_session(daemon: &Daemon) -> Session {
    let (status, v) = session(daemon, json!({"language": "vi"})).await;
    assert_eq!(status, 200, "{v}");
    Session {
        token: v["token"].as_str().unwrap().into(),
        visitor: v["visitor_id"].as_str().unwrap().into(),
        conversation: v["conversation_id"].as_str().unwrap().into(),
    }
}

/// A socket to open: its URL and the token the widget offers as a subprotocol.
struct WsTarget {
    url: String,
    token: String,
}

fn ws_url(daemon: &Daemon, token: &str, after: Option<&str>) -> WsTarget {
    let base = daemon
        .url("/v1/livechat/demo/web/ws")
        .replace("http://", "ws://");
    let url = match after {
        Some(a) => format!("{base}?after={a}"),
        None => base,
    };
    WsTarget {
        url,
        token: token.to_owned(),
    }
}

/// Connects with `origin` as the widget does (token as a subprotocol); `Err(status)` when
/// the upgrade is refused.
async fn connect_from(target: &WsTarget, origin: Option<&str>) -> Result<Ws, u16> {
    let request = livechat::socket_request(&target.url, Some(&target.token), origin);
    match livechat::connect_request(request).await {
        Err(0) => panic!("connect: daemon unreachable"),
        r => r,
    }
}

async fn connect(daemon: &Daemon, s: &Session, after: Option<&str>) -> Ws {
    let mut ws = connect_from(&ws_url(daemon, &s.token, after), Some(ORIGIN))
        .await
        .unwrap();
    let status = next(&mut ws).await;
    assert_eq!(status["type"], "status", "{status}");
    assert_eq!(status["conversation_id"], s.conversation.as_str());
    ws
}

/// The next JSON frame (control frames skipped); panics after 15 s.
async fn next(ws: &mut Ws) -> Value {
    try_next(ws, Duration::from_secs(15))
        .await
        .expect("no frame within 15 s")
}

async fn try_next(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match frame {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(c)) => {
                return Some(json!({"type": "closed", "code": c.map(|c| u16::from(c.code))}))
            }
            Ok(_) => continue,
            Err(_) => return Some(json!({"type": "closed"})),
        }
    }
}

/// Frames until one of `kind` arrives (others collected in the second value).
async fn next_of(ws: &mut Ws, kind: &str) -> (Value, Vec<Value>) {
    let mut other = Vec::new();
    loop {
        let v = next(ws).await;
        if v["type"] == kind {
            return (v, other);
        }
        other.push(v);
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

async fn reply(daemon: &Daemon, s: &Session, text: &str) {
    let (status, body) = post_json(
        &daemon.url("/v1/tenants/demo/replies"),
        AGENT,
        &json!({
            "conversation_id": s.conversation,
            "channel": {"kind": "livechat", "account": "web"},
            "recipient": s.visitor,
            "agent_id": "agent-lan",
            "text": text,
        }),
    )
    .await;
    assert!(status == 202 || status == 200, "{status} {body}");
}

fn livechat_events(records: &[omni_e2e::Read]) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r.value["data"]["channel"]["kind"] == "livechat")
        .map(|r| r.value.clone())
        .collect()
}

#[tokio::test]
async fn a_visitor_message_is_published_once_and_acked_after_kafka() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;
    let s = new_session(&daemon).await;
    let mut ws = connect(&daemon, &s, None).await;

    send(
        &mut ws,
        json!({"type": "message", "client_id": "c-1", "text": "Cho mình hỏi đơn #1024"}),
    )
    .await;
    let (ack, _) = next_of(&mut ws, "ack").await;
    assert_eq!(ack["client_id"], "c-1");
    assert_eq!(ack["duplicate"], false);
    // The message comes back as part of the conversation, with the client id and a cursor.
    let (echo, _) = next_of(&mut ws, "message").await;
    assert_eq!(echo["from"], "visitor");
    assert_eq!(echo["client_id"], "c-1");
    assert_eq!(echo["id"], ack["event_id"]);
    assert!(echo["cursor"].as_str().unwrap().contains('.'));

    // A resend (the widget did not see the ack) is the same event, published once.
    send(
        &mut ws,
        json!({"type": "message", "client_id": "c-1", "text": "Cho mình hỏi đơn #1024"}),
    )
    .await;
    let (again, _) = next_of(&mut ws, "ack").await;
    assert_eq!(again["event_id"], ack["event_id"]);
    assert_eq!(again["duplicate"], true);

    let records = read_topic(
        &broker.bootstrap(),
        "omni.inbound.v1",
        1,
        Duration::from_secs(15),
        Duration::from_secs(2),
    );
    let events = livechat_events(&records);
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e["specversion"], "1.0");
    assert_eq!(e["type"], "omni.message.received");
    assert_eq!(e["id"], ack["event_id"]);
    assert_eq!(e["subject"], s.conversation.as_str());
    assert_eq!(e["source"], "/omnirouter/demo/livechat/web");
    assert_eq!(e["data"]["contact"]["id"], s.visitor.as_str());
    assert_eq!(e["data"]["contact"]["language"], "vi");
    assert_eq!(e["data"]["message"]["text"], "Cho mình hỏi đơn #1024");
    assert_eq!(e["data"]["message"]["direction"], "inbound");
    assert!(omni_e2e::schema("message-received.schema.json").is_valid(&e["data"]));
    assert!(records.iter().all(|r| r.key == b"demo"));
}

#[tokio::test]
async fn replies_reach_the_socket_and_a_reconnect_resumes_exactly_the_missed_ones() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;
    let s = new_session(&daemon).await;
    let mut ws = connect(&daemon, &s, None).await;

    reply(&daemon, &s, "Dạ em chào anh/chị").await;
    let (first, _) = next_of(&mut ws, "message").await;
    assert_eq!(first["from"], "agent");
    assert_eq!(first["text"], "Dạ em chào anh/chị");
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    ws.close(None).await.unwrap();

    reply(&daemon, &s, "Đơn #1024 đang được giao").await;
    reply(&daemon, &s, "Anh/chị cần gì thêm không ạ?").await;
    // Both replies are on Kafka before the widget comes back: the resume finds them there.
    let outbound = read_topic(
        &broker.bootstrap(),
        "omni.outbound.v1",
        3,
        Duration::from_secs(15),
        Duration::ZERO,
    );
    assert!(outbound.len() >= 3, "{outbound:?}");
    let mut ws = connect(&daemon, &s, Some(&cursor)).await;
    let a = next(&mut ws).await;
    let b = next(&mut ws).await;
    assert_eq!(
        [a["text"].as_str().unwrap(), b["text"].as_str().unwrap()],
        ["Đơn #1024 đang được giao", "Anh/chị cần gì thêm không ạ?"]
    );
    assert!(
        try_next(&mut ws, Duration::from_secs(2)).await.is_none(),
        "nothing repeated"
    );

    // A `resume` frame on an open socket replays from any cursor, e.g. the beginning.
    send(&mut ws, json!({"type": "resume", "after": "-1.-1"})).await;
    let mut texts = Vec::new();
    for _ in 0..3 {
        texts.push(next(&mut ws).await["text"].as_str().unwrap().to_owned());
    }
    assert_eq!(texts[0], "Dạ em chào anh/chị");

    // The widget reports it read them: the fate of each reply is on the delivery topic.
    let last = b["cursor"].as_str().unwrap();
    send(&mut ws, json!({"type": "read", "cursor": last})).await;
    let deliveries = read_topic(
        &broker.bootstrap(),
        "omni.delivery.v1",
        6,
        Duration::from_secs(15),
        Duration::from_secs(1),
    );
    let statuses: Vec<_> = deliveries
        .iter()
        .filter(|r| r.value["data"]["channel"]["kind"] == "livechat")
        .map(|r| r.value["data"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "sent").count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "read").count(),
        3,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_reply_written_through_one_instance_reaches_a_socket_on_another() {
    let broker = Broker::memory();
    let a = Daemon::start(&broker, &[]).await;
    let b = Daemon::start(&broker, &[]).await;
    let s = new_session(&a).await;
    let mut ws = connect(&b, &s, None).await;
    // The visitor writes through B; the agent answers through A's API.
    send(
        &mut ws,
        json!({"type": "message", "client_id": "q1", "text": "Shop ơi"}),
    )
    .await;
    next_of(&mut ws, "ack").await;
    reply(&a, &s, "Dạ shop nghe ạ").await;
    let (m, _) = loop {
        let (m, o) = next_of(&mut ws, "message").await;
        if m["from"] == "agent" {
            break (m, o);
        }
    };
    assert_eq!(m["text"], "Dạ shop nghe ạ");
    // Reconnecting to A with B's cursor repeats no message. (The router's news of the
    // conversation, `queued` here, is not a message: it reaches the socket whenever the
    // router, busy with its first rebalance, gets to the visitor's message.)
    let cursor = m["cursor"].as_str().unwrap().to_owned();
    ws.close(None).await.unwrap();
    let mut ws = connect(&a, &s, Some(&cursor)).await;
    while let Some(f) = try_next(&mut ws, Duration::from_secs(2)).await {
        assert!(f["type"] != "message" && f["type"] != "closed", "{f}");
    }
}

/// Typing both ways: the visitor's typing reaches agents as an `omni.channel.signal` on the
/// inbound topic (changes only, not every keystroke); an agent's typing, posted to the agent
/// API of another instance, reaches the visitor's socket and is not replayed as a message.
#[tokio::test]
async fn typing_travels_both_ways_and_is_never_stored() {
    let broker = Broker::memory();
    let a = Daemon::start(&broker, &[]).await;
    let b = Daemon::start(&broker, &[]).await;
    let s = new_session(&b).await;
    let mut ws = connect(&b, &s, None).await;
    // on, on (too soon: dropped), off, off (no change: dropped).
    for on in [true, true, false, false] {
        send(&mut ws, json!({"type": "typing", "on": on})).await;
    }
    send(&mut ws, json!({"type": "ping"})).await;
    next_of(&mut ws, "pong").await;
    let records = omni_e2e::read_topic(
        &broker.bootstrap(),
        "omni.inbound.v1",
        2,
        Duration::from_secs(15),
        Duration::from_millis(500),
    );
    let signals: Vec<String> = livechat_events(&records)
        .iter()
        .filter(|e| e["type"] == "omni.channel.signal")
        .map(|e| e["data"]["signal"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(signals, ["typing_on", "typing_off"]);
    let schema = omni_e2e::schema("channel-signal.schema.json");
    for e in livechat_events(&records) {
        assert!(schema.is_valid(&e["data"]), "{e}");
        assert_eq!(e["subject"], s.conversation.as_str());
    }

    // The agent types, through instance A's API.
    for on in [true, false] {
        let (status, body) = post_json(
            &a.url("/v1/tenants/demo/typing"),
            AGENT,
            &json!({
                "conversation_id": s.conversation,
                "channel": {"kind": "livechat", "account": "web"},
                "recipient": s.visitor,
                "on": on,
            }),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        let (frame, _) = next_of(&mut ws, "typing").await;
        assert_eq!(frame["from"], "agent");
        assert_eq!(frame["on"], on);
    }
    // Typing is not part of the conversation: a reconnect from the start replays nothing.
    ws.close(None).await.unwrap();
    let mut ws = connect(&b, &s, None).await;
    while let Some(f) = try_next(&mut ws, Duration::from_secs(2)).await {
        assert!(f["type"] != "message" && f["type"] != "typing", "{f}");
    }
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_limits_hold() {
    let broker = Broker::memory();
    let daemon = Daemon::start(
        &broker,
        &[
            ("OMNI__LIVECHAT__BURST", "3"),
            ("OMNI__LIVECHAT__RATE_PER_MINUTE", "1"),
            ("OMNI__LIVECHAT__MAX_CONNECTIONS_PER_IP", "3"),
            ("OMNI__LIVECHAT__MAX_FRAME_BYTES", "2048"),
        ],
    )
    .await;
    let s = new_session(&daemon).await;
    let mut ws = connect(&daemon, &s, None).await;
    for (frame, code) in [
        (Message::text("not json"), "bad_frame"),
        (Message::text(r#"{"type":"shout"}"#), "bad_frame"),
        (
            Message::text(r#"{"type":"message","client_id":"x y","text":"a"}"#),
            "bad_client_id",
        ),
        (
            Message::text(r#"{"type":"message","client_id":"e","text":" "}"#),
            "empty_message",
        ),
        (Message::binary(vec![1u8, 2, 3]), "binary_not_supported"),
    ] {
        ws.send(frame).await.unwrap();
        let err = next(&mut ws).await;
        assert_eq!(err["type"], "error", "{err}");
        assert_eq!(err["code"], code);
    }
    // Still usable; then the burst runs out.
    for i in 0..3 {
        send(
            &mut ws,
            json!({"type": "message", "client_id": format!("ok-{i}"), "text": "hi"}),
        )
        .await;
        next_of(&mut ws, "ack").await;
    }
    send(
        &mut ws,
        json!({"type": "message", "client_id": "too-many", "text": "hi"}),
    )
    .await;
    let (err, _) = next_of(&mut ws, "error").await;
    assert_eq!(err["code"], "rate_limited");
    assert_eq!(err["client_id"], "too-many");

    // Three sockets per IP: the fourth is refused, and a closed one frees its slot.
    let url = ws_url(&daemon, &s.token, None);
    let second = connect_from(&url, Some(ORIGIN)).await.unwrap();
    let _third = connect_from(&url, Some(ORIGIN)).await.unwrap();
    assert_eq!(connect_from(&url, Some(ORIGIN)).await.err(), Some(429));
    drop(second);
    wait_for_connections(&daemon, 2.0).await;
    let _again = connect_from(&url, Some(ORIGIN)).await.unwrap();

    // An oversized frame: an error frame, then the socket is closed with 1009.
    send(
        &mut ws,
        json!({"type": "message", "client_id": "big", "text": "x".repeat(4096)}),
    )
    .await;
    let (err, _) = next_of(&mut ws, "error").await;
    assert_eq!(err["code"], "frame_too_large", "{err}");
    let (closed, _) = next_of(&mut ws, "closed").await;
    assert_eq!(closed["code"], 1009, "{closed}");
    let metrics = daemon.metrics().await;
    assert!(
        omni_e2e::metric_value(
            &metrics,
            "omni_livechat_frames_rejected_total",
            &["code=\"rate_limited\""]
        ) >= 1.0
    );
}

#[tokio::test]
async fn tokens_origins_and_identities_are_checked() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[("OMNI__LIVECHAT__IDLE_TIMEOUT_SECS", "2")]).await;
    let s = new_session(&daemon).await;
    let url = ws_url(&daemon, &s.token, None);
    assert_eq!(
        connect_from(&url, Some("https://evil.example")).await.err(),
        Some(403)
    );
    assert_eq!(connect_from(&url, None).await.err(), Some(403));
    let claims = |exp: i64| omni_livechat::token::VisitorClaims {
        tenant: "demo".into(),
        widget: "web".into(),
        visitor: s.visitor.clone(),
        exp,
        iat_ms: chrono::Utc::now().timestamp_millis(),
        language: None,
    };
    let expired = omni_livechat::token::sign(
        &claims(chrono::Utc::now().timestamp() - 10),
        SECRET.as_bytes(),
    );
    assert_eq!(
        connect_from(&ws_url(&daemon, &expired, None), Some(ORIGIN))
            .await
            .err(),
        Some(401)
    );
    let forged = omni_livechat::token::sign(&claims(i64::MAX / 2), b"guessed-secret-of-the-widget");
    assert_eq!(
        connect_from(&ws_url(&daemon, &forged, None), Some(ORIGIN))
            .await
            .err(),
        Some(401)
    );

    // Sessions: wrong origin refused; a previous token keeps the visitor; identities verified.
    let r = reqwest::Client::new()
        .post(daemon.url("/v1/livechat/demo/web/session"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (_, renewed) = session(&daemon, json!({"token": s.token})).await;
    assert_eq!(renewed["visitor_id"], s.visitor.as_str());
    let (status, _) = session(&daemon, json!({"user_id": "kh-42", "user_hash": "00"})).await;
    assert_eq!(status, 403);
    let hash = hmac_sha256_hex(b"demo-identity-secret", b"kh-42");
    let (status, phone) = session(&daemon, json!({"user_id": "kh-42", "user_hash": hash})).await;
    assert_eq!(status, 200);
    let (_, laptop) = session(&daemon, json!({"user_id": "kh-42", "user_hash": hash})).await;
    assert_eq!(phone["visitor_id"], "user:kh-42");
    assert_eq!(
        phone["conversation_id"], laptop["conversation_id"],
        "one conversation across devices"
    );

    // CORS preflight for the widget's page.
    let r = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            daemon.url("/v1/livechat/demo/web/session"),
        )
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);

    // A silent socket is closed after the idle timeout; pings keep one open.
    let mut quiet = connect(&daemon, &s, None).await;
    let mut chatty = connect(&daemon, &s, None).await;
    for _ in 0..3 {
        // Time passing is what this checks: three pings spaced over more than the idle timeout.
        tokio::time::sleep(Duration::from_millis(900)).await;
        send(&mut chatty, json!({"type": "ping"})).await;
        assert_eq!(next(&mut chatty).await["type"], "pong");
    }
    let closed = try_next(&mut quiet, Duration::from_secs(3)).await.unwrap();
    assert_eq!(closed["type"], "closed", "{closed}");
    assert_eq!(closed["code"], 1000);
}

#[tokio::test]
async fn the_token_travels_as_a_subprotocol_and_never_in_the_url() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;
    let s = new_session(&daemon).await;
    // The widget's way: accepted, and the server answers omni.v1 only (connect_request
    // fails the test on any other answer, the token above all).
    let mut ws = connect(&daemon, &s, None).await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await["type"], "pong");

    // The token in the URL: refused by default, before the upgrade.
    let base = daemon
        .url("/v1/livechat/demo/web/ws")
        .replace("http://", "ws://");
    let in_url = format!("{base}?token={}", s.token);
    let refused = livechat::connect_request(livechat::socket_request(&in_url, None, Some(ORIGIN)));
    assert_eq!(refused.await.err(), Some(401));
    let bare = livechat::connect_request(livechat::socket_request(&base, None, Some(ORIGIN)));
    assert_eq!(bare.await.err(), Some(401), "no token at all");
    let metrics = daemon.metrics().await;
    for result in ["token_in_url", "token_missing"] {
        let label = format!("result=\"{result}\"");
        assert_eq!(
            omni_e2e::metric_value(
                &metrics,
                "omni_livechat_attempts_total",
                &["kind=\"socket\"", &label]
            ),
            1.0,
            "{result}"
        );
    }
    // Neither the refused URL nor the accepted socket left the token in a log line.
    assert!(!daemon.log().contains(&s.token), "the token is in the log");
    assert!(!metrics.contains(&s.token), "the token is in a metric");

    // An operator may allow the URL for the hour old widget scripts stay cached.
    let lenient = Daemon::start(&broker, &[("OMNI__LIVECHAT__ALLOW_TOKEN_IN_URL", "true")]).await;
    let url = lenient
        .url(&format!("/v1/livechat/demo/web/ws?token={}", s.token))
        .replace("http://", "ws://");
    let mut old = livechat::connect_request(livechat::socket_request(&url, None, Some(ORIGIN)))
        .await
        .unwrap();
    assert_eq!(next(&mut old).await["type"], "status");
}

#[tokio::test]
async fn every_frame_type_is_throttled_and_a_flooding_socket_is_closed() {
    let broker = Broker::memory();
    let daemon = Daemon::start(
        &broker,
        &[
            ("OMNI__LIVECHAT__FRAME_RATE_PER_SECOND", "1"),
            ("OMNI__LIVECHAT__FRAME_BURST", "5"),
        ],
    )
    .await;
    let s = new_session(&daemon).await;
    let mut ws = connect(&daemon, &s, None).await;
    // The burst: five pings, five pongs.
    for _ in 0..5 {
        send(&mut ws, json!({"type": "ping"})).await;
    }
    // Past it, without waiting: a message, typing, reads, garbage and binary frames.
    send(
        &mut ws,
        json!({"type": "message", "client_id": "over", "text": "hi"}),
    )
    .await;
    for i in 0..40 {
        let frame = match i % 4 {
            0 => Message::text(r#"{"type":"typing","on":true}"#),
            1 => Message::text(r#"{"type":"read","cursor":"-1.-1"}"#),
            2 => Message::text("garbage"),
            _ => Message::binary(vec![0u8; 4]),
        };
        if ws.send(frame).await.is_err() {
            break; // already closed
        }
    }
    let mut frames = Vec::new();
    loop {
        let f = next(&mut ws).await;
        let closed = f["type"] == "closed";
        frames.push(f);
        if closed {
            break;
        }
    }
    let of = |kind: &str| frames.iter().filter(|f| f["type"] == kind).count();
    assert_eq!(of("pong"), 5, "{frames:?}");
    assert_eq!(
        of("ack"),
        0,
        "the message over the budget was dropped: {frames:?}"
    );
    let limited: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "error" && f["code"] == "rate_limited")
        .collect();
    assert!(!limited.is_empty(), "{frames:?}");
    assert_eq!(
        limited[0]["client_id"], "over",
        "a dropped message says which"
    );
    assert_eq!(frames.last().unwrap()["code"], 1008, "{frames:?}");

    let metrics = daemon.metrics().await;
    let throttled = |frame: &str| {
        let label = format!("frame=\"{frame}\"");
        omni_e2e::metric_value(&metrics, "omni_livechat_frames_throttled_total", &[&label])
    };
    assert_eq!(throttled("message"), 1.0);
    assert!(throttled("typing") >= 1.0, "{metrics}");
    assert_eq!(
        omni_e2e::metric_value(
            &metrics,
            "omni_livechat_policy_closes_total",
            &["reason=\"flooding\""]
        ),
        1.0
    );
    // The socket went, the visitor did not: a new socket works.
    let mut again = connect(&daemon, &s, None).await;
    send(&mut again, json!({"type": "ping"})).await;
    assert_eq!(next(&mut again).await["type"], "pong");
}

/// A session request forwarded by a proxy on 127.0.0.1 with `X-Forwarded-For`.
async fn session_via_proxy(daemon: &Daemon, forwarded_for: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(daemon.url("/v1/livechat/demo/web/session"))
        .header("origin", ORIGIN)
        .header("x-forwarded-for", forwarded_for)
        .body("{}")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn sessions_are_limited_per_client_ip_behind_trusted_proxies_and_per_widget() {
    let broker = Broker::memory();
    let daemon = Daemon::start(
        &broker,
        &[
            ("OMNI__LIVECHAT__SESSIONS_PER_MINUTE_PER_IP", "3"),
            ("OMNI__LIVECHAT__SESSIONS_PER_MINUTE_PER_WIDGET", "6"),
            (
                "OMNI__LIVECHAT__TRUSTED_PROXIES",
                "127.0.0.1/32, 10.0.0.0/8",
            ),
            ("OMNI__LIVECHAT__MAX_CONNECTIONS_PER_IP", "1"),
        ],
    )
    .await;
    // The proxy itself (no header): its own address. One of the widget's six.
    let s = new_session(&daemon).await;
    for _ in 0..3 {
        assert_eq!(
            session_via_proxy(&daemon, "203.0.113.1").await.status(),
            200
        );
    }
    let r = session_via_proxy(&daemon, "203.0.113.1").await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=20).contains(&retry),
        "3 a minute: one every 20 s, not {retry}"
    );
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        ORIGIN,
        "the widget can read it"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ip_rate_limited", "{body}");

    // A client that writes the limited address first is still itself: rightmost untrusted.
    let spoofed = session_via_proxy(&daemon, "203.0.113.1, 203.0.113.2").await;
    assert_eq!(spoofed.status(), 200);
    // Through two of our proxies: the hop before them.
    let chained = session_via_proxy(&daemon, "203.0.113.1, 203.0.113.3, 10.1.2.3").await;
    assert_eq!(chained.status(), 200);
    // The widget's six are used up, whoever asks.
    let r = session_via_proxy(&daemon, "203.0.113.4").await;
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "widget_rate_limited", "{body}");
    let metrics = daemon.metrics().await;
    for result in ["ip_rate_limited", "widget_rate_limited"] {
        let label = format!("result=\"{result}\"");
        assert_eq!(
            omni_e2e::metric_value(
                &metrics,
                "omni_livechat_attempts_total",
                &["kind=\"session\"", &label]
            ),
            1.0,
            "{result}"
        );
    }

    // The per-IP socket cap (1 here) counts the same client address.
    let target = ws_url(&daemon, &s.token, None);
    let via = |xff: &'static str| {
        let mut r = livechat::socket_request(&target.url, Some(&target.token), Some(ORIGIN));
        r.headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_static(xff));
        livechat::connect_request(r)
    };
    let _first = via("198.51.100.7").await.unwrap();
    assert_eq!(via("198.51.100.7").await.err(), Some(429));
    assert_eq!(
        via("198.51.100.9, 198.51.100.7").await.err(),
        Some(429),
        "spoofed"
    );
    let _other = via("198.51.100.7, 198.51.100.8").await.unwrap();
}

/// Serves the example page (pointing at `daemon`) from its own origin on 127.0.0.1.
async fn serve_example(daemon: &Daemon) -> String {
    let page = std::fs::read_to_string(omni_e2e::workspace().join("deploy/livechat/example.html"))
        .unwrap()
        .replace("http://127.0.0.1:8080", &daemon.url(""));
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/")
}

#[tokio::test]
async fn the_widget_in_chromium_sends_to_kafka_and_shows_the_agent_reply() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;
    let page = serve_example(&daemon).await;
    let mut browser = Chromium::start().await;
    the_launcher_opens_a_dialog_that_connects(&mut browser, &page).await;
    let session = a_typed_message_reaches_kafka(&mut browser, &broker).await;
    the_agent_typing_then_replying_shows_in_the_widget(&mut browser, &daemon, &session).await;
    keep_a_screenshot(&mut browser).await;
    escape_closes_the_dialog_and_focuses_the_launcher(&mut browser).await;
}

/// The launcher is a labelled button; opening it shows a dialog, focuses the input and
/// connects.
async fn the_launcher_opens_a_dialog_that_connects(browser: &mut Chromium, page: &str) {
    browser.navigate(page).await;
    browser
        .wait_for(
            "!!document.getElementById('omni-chat-launcher')",
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(
        browser
            .eval("document.getElementById('omni-chat-launcher').getAttribute('aria-label')")
            .await,
        "Mở cửa sổ trò chuyện"
    );
    browser
        .eval("document.getElementById('omni-chat-launcher').click()")
        .await;
    browser
        .wait_for(
            "document.getElementById('omni-chat-panel').getAttribute('role') === 'dialog' && !document.getElementById('omni-chat-panel').hidden && document.activeElement.id === 'omni-chat-input'",
            Duration::from_secs(5),
        )
        .await;
    browser
        .wait_for("OmniChat.state().connected", Duration::from_secs(15))
        .await;
}

/// Typed like a user, Enter pressed: the message is acknowledged and on Kafka, in Vietnamese.
/// Returns the visitor's session as the agent sees it.
async fn a_typed_message_reaches_kafka(browser: &mut Chromium, broker: &Broker) -> Session {
    let text = "Áo dài size M còn hàng không shop?";
    type_and_send(browser, text).await;
    browser
        .wait_for(
            "[...document.querySelectorAll('.omni-visitor')].some(e => e.dataset.id && !e.classList.contains('omni-pending'))",
            Duration::from_secs(15),
        )
        .await;
    let records = read_topic(
        &broker.bootstrap(),
        "omni.inbound.v1",
        1,
        Duration::from_secs(15),
        Duration::from_millis(500),
    );
    let events = livechat_events(&records);
    let event = events
        .iter()
        .find(|e| e["data"]["message"]["text"] == text)
        .unwrap_or_else(|| panic!("not on kafka: {events:#?}"));
    assert_eq!(event["data"]["contact"]["language"], "vi");
    let s = Session {
        token: String::new(),
        visitor: event["data"]["contact"]["id"].as_str().unwrap().into(),
        conversation: event["subject"].as_str().unwrap().into(),
    };
    s
}

/// Types `text` into the focused input like a user and presses Enter.
async fn type_and_send(browser: &mut Chromium, text: &str) {
    browser
        .call("Input.insertText", json!({"text": text}))
        .await;
    for kind in ["keyDown", "keyUp"] {
        browser
            .call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}),
            )
            .await;
    }
}

/// Kafka away when the visitor sends: the daemon answers `unavailable` (not stored, resend),
/// the widget says it will retry and does so by itself on the same socket, backing off, until
/// the restarted broker takes the message; it is published under one id.
#[tokio::test]
async fn the_widget_resends_a_message_kafka_did_not_take_until_it_is_stored() {
    let mut broker = Broker::durable();
    let daemon = Daemon::start(&broker, &[]).await;
    let page = serve_example(&daemon).await;
    let mut browser = Chromium::start().await;
    the_launcher_opens_a_dialog_that_connects(&mut browser, &page).await;
    let upgrades = || async {
        let text = daemon.metrics().await;
        omni_e2e::metric_value(
            &text,
            "omni_livechat_attempts_total",
            &["kind=\"socket\"", "result=\"accepted\""],
        )
    };
    let sockets = upgrades().await;

    broker.stop();
    let text = "Shop ơi, đơn hàng của mình đến đâu rồi?";
    type_and_send(&mut browser, text).await;
    browser
        .wait_for(
            "document.getElementById('omni-chat-notice').textContent === 'Chưa gửi được, sẽ thử lại.'",
            Duration::from_secs(30),
        )
        .await;
    broker.restart();
    browser
        .wait_for(
            "[...document.querySelectorAll('.omni-visitor')].some(e => e.dataset.id && !e.classList.contains('omni-pending'))",
            Duration::from_secs(90),
        )
        .await;
    browser
        .wait_for(
            "document.getElementById('omni-chat-notice').textContent === ''",
            Duration::from_secs(5),
        )
        .await;

    let metrics = daemon.metrics().await;
    assert!(
        omni_e2e::metric_value(
            &metrics,
            "omni_livechat_frames_rejected_total",
            &["code=\"unavailable\""]
        ) >= 1.0,
        "the daemon never answered unavailable: {metrics}"
    );
    assert_eq!(
        upgrades().await,
        sockets,
        "resent on the same socket, not by reconnecting"
    );
    let records = read_topic(
        &broker.bootstrap(),
        "omni.inbound.v1",
        1,
        Duration::from_secs(15),
        Duration::from_millis(500),
    );
    let ids: std::collections::BTreeSet<_> = livechat_events(&records)
        .iter()
        .filter(|e| e["data"]["message"]["text"] == text)
        .map(|e| e["id"].to_string())
        .collect();
    assert_eq!(ids.len(), 1, "published under one id: {ids:?}");
}

/// The agent starts typing: the widget says so, until the reply arrives in the polite live
/// region.
async fn the_agent_typing_then_replying_shows_in_the_widget(
    browser: &mut Chromium,
    daemon: &Daemon,
    s: &Session,
) {
    let (status, body) = post_json(
        &daemon.url("/v1/tenants/demo/typing"),
        AGENT,
        &json!({
            "conversation_id": s.conversation,
            "channel": {"kind": "livechat", "account": "web"},
            "recipient": s.visitor,
            "on": true,
        }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    browser
        .wait_for(
            "document.getElementById('omni-chat-typing').textContent.includes('đang soạn tin')",
            Duration::from_secs(15),
        )
        .await;
    reply(daemon, s, "Dạ còn ạ, shop giữ cho anh/chị một chiếc nhé!").await;
    browser
        .wait_for(
            "[...document.querySelectorAll('#omni-chat-log .omni-agent')].some(e => e.textContent.includes('shop giữ cho anh/chị'))",
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(
        browser
            .eval("document.getElementById('omni-chat-log').getAttribute('aria-live')")
            .await,
        "polite"
    );
}

/// A screenshot, kept beside the test's build output; `OMNI_UPDATE_SCREENSHOT=1` refreshes the
/// one docs/channels.md shows.
async fn keep_a_screenshot(browser: &mut Chromium) {
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"));
    let shot = std::env::temp_dir().join(format!("livechat-widget-{}.png", std::process::id()));
    std::fs::write(&shot, &png).unwrap();
    println!("screenshot: {}", shot.display());
    if std::env::var_os("OMNI_UPDATE_SCREENSHOT").is_some() {
        let docs = omni_e2e::workspace().join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("livechat-widget.png"), &png).unwrap();
    }
}

/// Esc closes the dialog and gives focus back to the launcher.
async fn escape_closes_the_dialog_and_focuses_the_launcher(browser: &mut Chromium) {
    browser.call("Input.dispatchKeyEvent", json!({"type": "keyDown", "key": "Escape", "code": "Escape", "windowsVirtualKeyCode": 27})).await;
    browser
        .wait_for(
            "document.getElementById('omni-chat-panel').hidden && document.activeElement.id === 'omni-chat-launcher'",
            Duration::from_secs(5),
        )
        .await;
}

/// Waits until the daemon counts `want` open sockets (a closed one is gone on its side).
async fn wait_for_connections(daemon: &Daemon, want: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let open =
            omni_e2e::metric_value(&daemon.metrics().await, "omni_livechat_connections", &[]);
        if open == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} sockets open, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// POSTs a router command through `daemon`'s agent API (202: on Kafka for the router).
async fn command(daemon: &Daemon, body: Value) {
    let (status, answer) = post_json(&daemon.url("/v1/tenants/demo/commands"), AGENT, &body).await;
    assert_eq!(status, 202, "{body} -> {answer}");
}

/// One agent online with `capacity`, speaking the general queue's language; returns once the
/// router has applied it (commands and customer messages travel on different topics).
async fn agent_online(daemon: &Daemon, agent: &str, capacity: u32) {
    command(
        daemon,
        json!({"command": "upsert_agent", "agent": agent, "skills": {"vi": 4}, "capacity": capacity}),
    )
    .await;
    command(
        daemon,
        json!({"command": "set_presence", "agent": agent, "presence": "online"}),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, view, _) = daemon.get_served("demo", "agents", AGENT).await;
        let online = view["agents"].as_array().is_some_and(|a| {
            a.iter()
                .any(|a| a["id"] == agent && a["presence"] == "online")
        });
        if status == 200 && online {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{agent} not online: {status} {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A customer message through the HTTP API; returns its conversation.
async fn api_customer(daemon: &Daemon, contact: &str) -> String {
    let (status, v) = post_json(
        &daemon.url("/v1/inbound/demo"),
        "demo-token",
        &json!({"contact": {"id": contact, "language": "vi"}, "text": "Chào shop",
                "client_message_id": format!("{contact}-1")}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    v["conversation_id"].as_str().unwrap().to_owned()
}

/// Waits until the router says `conversation` is in `state` (waiting, assigned…).
async fn wait_for_state(daemon: &Daemon, conversation: &str, state: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let path = format!("conversations/{conversation}");
        let (status, view, _) = daemon.get_served("demo", &path, AGENT).await;
        if status == 200 && view["state"] == state {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{conversation} not {state}: {status} {view}\nlog:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first routing event on omni.routing.v1 that `matches`, waiting for it (at most 30 s).
fn routing_event(broker: &Broker, matches: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Everything the topic holds within a moment: the log is short in a test.
        let records = read_topic(
            &broker.bootstrap(),
            "omni.routing.v1",
            usize::MAX,
            Duration::from_millis(1500),
            Duration::ZERO,
        );
        if let Some(r) = records.iter().find(|r| matches(&r.value)) {
            assert_eq!(r.key, b"demo");
            return r.value.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no such routing event in {records:#?}"
        );
    }
}

/// What the Vietnamese widget says for the router's estimate.
fn wait_text_vi(secs: u64) -> String {
    if secs == 0 {
        "Nhân viên sẽ hỗ trợ bạn ngay".to_owned()
    } else {
        let minutes = ((secs as f64) / 60.0).round().max(1.0);
        format!("Thời gian chờ dự kiến: khoảng {minutes} phút")
    }
}

/// The router's wait estimate reaches the widget in chromium, and "End chat" ends a
/// conversation nobody took as abandoned (`customer_left`), counted on /metrics.
///
/// Deterministic by construction: one agent with capacity 1; a first conversation is assigned
/// and resolved, a second is assigned and stays open. The queue then has two recent
/// assignments to estimate from and no free agent, so the visitor's conversation is queued
/// with an estimate; the test reads it from the `queued` event and expects the widget to say
/// exactly that.
#[tokio::test]
async fn the_widget_shows_the_wait_and_ending_the_chat_abandons_it() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;
    let pace_from = an_agent_is_busy_after_two_assignments(&daemon, &broker).await;
    let page = serve_example(&daemon).await;
    let mut browser = Chromium::start().await;
    the_launcher_opens_a_dialog_that_connects(&mut browser, &page).await;
    let visitor = the_queued_visitor_sees_the_estimate(&mut browser, &broker, pace_from).await;
    ending_the_chat_abandons_it(&mut browser, &daemon, &broker, &visitor).await;
}

/// Agent `lan` (capacity 1) takes a first conversation, resolves it, and takes a second that
/// stays open. Returns when the first assignment happened (the router's time for it).
async fn an_agent_is_busy_after_two_assignments(
    daemon: &Daemon,
    broker: &Broker,
) -> chrono::DateTime<chrono::Utc> {
    agent_online(daemon, "lan", 1).await;
    let first = api_customer(daemon, "kh-truoc-1").await;
    wait_for_state(daemon, &first, "assigned").await;
    let second = api_customer(daemon, "kh-truoc-2").await;
    wait_for_state(daemon, &second, "waiting").await;
    command(daemon, json!({"command": "resolve", "conversation": first})).await;
    wait_for_state(daemon, &second, "assigned").await;
    let first_assigned = routing_event(broker, |e| {
        e["type"] == "omni.routing.assigned" && e["subject"] == first.as_str()
    });
    first_assigned["time"].as_str().unwrap().parse().unwrap()
}

/// The visitor writes while no agent is free: the widget shows the router's estimate, in
/// minutes, exactly as the `queued` event has it. Returns the visitor's session.
async fn the_queued_visitor_sees_the_estimate(
    browser: &mut Chromium,
    broker: &Broker,
    pace_from: chrono::DateTime<chrono::Utc>,
) -> Session {
    // The estimate is the queue's pace: (time since the first of its two assignments) / 2.
    // Time passing is what it is made of: at least 2 s of it makes the estimate at least 1 s,
    // which the widget shows in minutes (0 would read "an agent will be with you shortly").
    let paced = pace_from + chrono::Duration::milliseconds(2500);
    if let Ok(left) = (paced - chrono::Utc::now()).to_std() {
        tokio::time::sleep(left).await;
    }
    let visitor = a_typed_message_reaches_kafka(browser, broker).await;
    let queued = routing_event(broker, |e| {
        e["type"] == "omni.routing.queued" && e["subject"] == visitor.conversation.as_str()
    });
    let secs = queued["data"]["estimated_wait_secs"]
        .as_u64()
        .unwrap_or_else(|| panic!("no estimate in {queued}"));
    assert!(secs >= 1, "{queued}");
    let want = wait_text_vi(secs);
    browser
        .wait_for(
            &format!(
                "document.getElementById('omni-chat-wait').textContent === {}",
                json!(want)
            ),
            Duration::from_secs(15),
        )
        .await;
    visitor
}

/// "End chat" (a labelled button in the dialog's header): confirmed in the widget, the
/// router abandons the conversation (`customer_left`) and counts it on /metrics, and the
/// command is on the commands topic as the agent API writes commands.
async fn ending_the_chat_abandons_it(
    browser: &mut Chromium,
    daemon: &Daemon,
    broker: &Broker,
    visitor: &Session,
) {
    let end = "document.getElementById('omni-chat-end')";
    assert_eq!(
        browser
            .eval(&format!("{end}.getAttribute('aria-label')"))
            .await,
        "Kết thúc trò chuyện"
    );
    browser.eval(&format!("{end}.click()")).await;
    browser
        .wait_for(
            "OmniChat.state().left && document.getElementById('omni-chat-wait').textContent === '' && [...document.querySelectorAll('#omni-chat-log .omni-system')].some(e => e.textContent.includes('đã kết thúc'))",
            Duration::from_secs(15),
        )
        .await;
    let abandoned = routing_event(broker, |e| {
        e["type"] == "omni.routing.abandoned" && e["subject"] == visitor.conversation.as_str()
    });
    assert_eq!(abandoned["data"]["reason"], "customer_left");
    assert_eq!(abandoned["data"]["queue"], "general");
    let labels = [
        "tenant=\"demo\"",
        "queue=\"general\"",
        "channel=\"livechat\"",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = daemon.metrics().await;
        let n = omni_e2e::metric_value(&metrics, "omni_conversations_abandoned_total", &labels);
        if n == 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "abandoned counter at {n}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let commands = read_topic(
        &broker.bootstrap(),
        "omni.commands.v1",
        usize::MAX,
        Duration::from_secs(2),
        Duration::ZERO,
    );
    let left: Vec<_> = commands
        .iter()
        .filter(|r| r.value["data"]["command"] == "customer_left")
        .collect();
    assert_eq!(left.len(), 1, "{commands:#?}");
    assert_eq!(left[0].key, b"demo");
    assert_eq!(left[0].value["type"], "omni.command");
    assert_eq!(left[0].value["subject"], visitor.conversation.as_str());
    assert_eq!(
        left[0].value["data"]["conversation"],
        visitor.conversation.as_str()
    );
}

/// The protocol side, across replicas: the visitor's socket is on instance B, the agent is
/// set up through A and whichever instance routes the tenant decides; B still tells the
/// visitor `queued` (0 s: an agent is free) and then `assigned`. `leave` is confirmed with
/// `left` (nothing to abandon once assigned), a leave with a field is refused, and a leave
/// Kafka does not acknowledge gets `leave_failed` on a socket that stays open.
#[tokio::test]
async fn a_queued_visitor_hears_the_wait_and_the_assignment_on_any_replica() {
    let mut broker = Broker::memory();
    let env = [("OMNI__KAFKA__PUBLISH_TIMEOUT_MS", "2000")];
    let a = Daemon::start(&broker, &env).await;
    let b = Daemon::start(&broker, &env).await;
    agent_online(&a, "lan", 2).await;
    let s = new_session(&b).await;
    let mut ws = connect(&b, &s, None).await;
    send(
        &mut ws,
        json!({"type": "message", "client_id": "q1", "text": "Cho mình hỏi với"}),
    )
    .await;
    let (queued, _) = next_of(&mut ws, "queued").await;
    assert_eq!(queued, json!({"type": "queued", "estimated_wait_secs": 0}));
    let (assigned, _) = next_of(&mut ws, "assigned").await;
    assert_eq!(
        assigned,
        json!({"type": "assigned"}),
        "agent ids stay internal"
    );

    // A leave with anything in it is a bad frame; a plain one is confirmed after Kafka.
    send(
        &mut ws,
        json!({"type": "leave", "conversation": s.conversation}),
    )
    .await;
    let (err, _) = next_of(&mut ws, "error").await;
    assert_eq!(err["code"], "bad_frame");
    send(&mut ws, json!({"type": "leave"})).await;
    let (left, _) = next_of(&mut ws, "left").await;
    assert_eq!(left, json!({"type": "left"}));
    let commands = read_topic(
        &broker.bootstrap(),
        "omni.commands.v1",
        usize::MAX,
        Duration::from_secs(2),
        Duration::ZERO,
    );
    assert!(commands.iter().any(|r| {
        r.value["data"] == json!({"command": "customer_left", "conversation": s.conversation})
            && r.value["source"] == "/omnirouter/demo/livechat/web"
    }));

    // Kafka gone: the leave is refused with a clear code, and the socket stays usable.
    broker.stop();
    send(&mut ws, json!({"type": "leave"})).await;
    let (err, _) = next_of(&mut ws, "error").await;
    assert_eq!(err["code"], "leave_failed", "{err}");
    send(&mut ws, json!({"type": "ping"})).await;
    next_of(&mut ws, "pong").await;
}

/// CSAT in the widget: the agent resolves, the router's question arrives with five stars, the
/// visitor clicks the fourth, and 4 is the conversation's score on /metrics and on the routing
/// topic (credited to the agent), not a reopening.
#[tokio::test]
async fn the_survey_is_answered_with_stars_in_chromium_and_the_score_is_on_metrics() {
    const QUESTION: &str = "Bạn hài lòng với hỗ trợ hôm nay không?";
    let broker = Broker::memory();
    let daemon = Daemon::start(
        &broker,
        &[(
            "OMNI__TENANTS__DEMO__ROUTING__QUEUES__GENERAL__CSAT_SURVEY__QUESTION",
            QUESTION,
        )],
    )
    .await;
    agent_online(&daemon, "lan", 3).await;
    let page = serve_example(&daemon).await;
    let mut browser = Chromium::start().await;
    the_launcher_opens_a_dialog_that_connects(&mut browser, &page).await;
    let visitor = a_typed_message_reaches_kafka(&mut browser, &broker).await;
    wait_for_state(&daemon, &visitor.conversation, "assigned").await;
    command(
        &daemon,
        json!({"command": "resolve", "conversation": visitor.conversation}),
    )
    .await;
    browser
        .wait_for(
            &format!(
                "[...document.querySelectorAll('#omni-chat-log .omni-agent')].some(e => e.textContent.includes({}) && e.querySelectorAll('.omni-star').length === 5)",
                json!(QUESTION)
            ),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(
        browser
            .eval(
                "document.querySelector('.omni-star[data-score=\"4\"]').getAttribute('aria-label')"
            )
            .await,
        "Đánh giá 4 trên 5 sao"
    );
    browser
        .eval("document.querySelector('.omni-star[data-score=\"4\"]').click()")
        .await;
    browser
        .wait_for(
            "[...document.querySelectorAll('.omni-star')].every(b => b.disabled) && document.querySelectorAll('.omni-star-on').length === 4",
            Duration::from_secs(5),
        )
        .await;
    let labels = ["tenant=\"demo\"", "channel=\"livechat\""];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = daemon.metrics().await;
        let count = omni_e2e::metric_value(&metrics, "omni_csat_score_count", &labels);
        let sum = omni_e2e::metric_value(&metrics, "omni_csat_score_sum", &labels);
        if count == 1.0 && sum == 4.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "csat count {count}, sum {sum}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answered = routing_event(&broker, |e| {
        e["type"] == "omni.routing.csat_answered" && e["subject"] == visitor.conversation.as_str()
    });
    assert_eq!(answered["data"]["score"], 4);
    assert_eq!(answered["data"]["agent"], "lan");
    wait_for_state(&daemon, &visitor.conversation, "resolved").await;
}
