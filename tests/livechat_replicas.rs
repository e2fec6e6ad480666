//! Live chat with three daemons on one broker, as replicas behind a load balancer: a visitor
//! keeps a complete, ordered transcript while replicas are killed (SIGKILL) and restarted
//! under traffic; the per-IP socket cap and the per-conversation message rate count every
//! replica; a visitor's tokens revoked through one replica are refused and cut off on all,
//! including one started later.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_core::{
    ChannelKind, ChannelRef, CloudEvent, ConversationId, EventId, EventType, OutboundMessage,
    TenantId,
};
use omni_e2e::livechat::{agent_reply, agent_typing, new_session, open, Session, Visitor, Ws};
use omni_e2e::{metric_value, python_produce, read_log, Broker, Daemon};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits out of the way of the transcript test.
const UNLIMITED: [(&str, &str); 2] = [
    ("OMNI__LIVECHAT__BURST", "100000"),
    ("OMNI__LIVECHAT__RATE_PER_MINUTE", "100000"),
];

/// An agent reply as a CRM writes it straight to `omni.outbound.v1`.
fn crm_reply(s: &Session, text: &str) -> Value {
    let tenant = TenantId::new("demo").unwrap();
    let channel = ChannelRef::new(ChannelKind::Livechat, "web");
    let conversation: ConversationId = s.conversation.parse().unwrap();
    let event = CloudEvent::new(
        EventId::new_random(),
        EventType::MessageSend,
        tenant.clone(),
        &channel,
        conversation,
        chrono::Utc::now(),
        OutboundMessage {
            tenant,
            conversation_id: conversation,
            channel: channel.clone(),
            recipient: s.visitor.clone(),
            agent_id: Some("crm-bot".into()),
            text: text.into(),
            subject: None,
            attachments: vec![],
            reply_to: None,
            csat_survey: false,
            template: None,
        },
    );
    serde_json::to_value(&event).unwrap()
}

/// `(inbound, outbound)` of a cursor `"<in>.<out>"`.
fn cursor_parts(c: &str) -> (i64, i64) {
    let (a, b) = c.split_once('.').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

/// Waits until `daemon`'s gauge `name` reads `want`; how long it took.
async fn wait_gauge(daemon: &Daemon, name: &str, want: f64, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = metric_value(&daemon.metrics().await, name, &[]);
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{name} is {got}, not {want}, after {timeout:?}; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens a socket on `daemon` as soon as the cap lets it (every refusal must be the cap's
/// 429); how long it took.
async fn open_when_admitted(
    daemon: &Daemon,
    token: &str,
    timeout: Duration,
) -> (omni_e2e::livechat::Ws, Duration) {
    let start = Instant::now();
    loop {
        match open(daemon, token, None).await {
            Ok(ws) => return (ws, start.elapsed()),
            Err(status) => assert_eq!(status, 429, "refused otherwise than by the cap"),
        }
        assert!(start.elapsed() < timeout, "not admitted after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The replica list agents post to, without the one the visitor is on (it is the next to be
/// killed).
type Targets = Arc<tokio::sync::RwLock<Vec<String>>>;

fn others(daemons: &[Daemon], at: usize) -> Vec<String> {
    (0..daemons.len())
        .filter(|i| *i != at)
        .map(|i| daemons[i].url(""))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_keeps_a_complete_ordered_transcript_while_replicas_are_killed_and_restarted() {
    let started = Instant::now();
    let broker = Broker::memory();
    let mut daemons = Daemon::start_many(&broker, 3, &UNLIMITED).await;
    let session = new_session(&daemons[0]).await;
    let mut visitor = Visitor::new(session.clone());
    // The replica the visitor's socket is on: the next one to be killed.
    let mut at = 0;
    visitor.connect(&daemons[at]).await;

    let targets: Targets = Arc::new(tokio::sync::RwLock::new(others(&daemons, at)));
    let stop = Arc::new(AtomicBool::new(false));
    let replier = agents_reply_all_along(&broker, &session, &targets, &stop);
    let mut sent_by_visitor = 0;
    let mut reconnects = Vec::new();
    for _round in 0..3 {
        let kill = the_visitors_replica_is_killed_mid_conversation(
            &broker,
            &mut daemons,
            &mut visitor,
            &session,
            at,
            &mut sent_by_visitor,
        )
        .await;
        reconnects.push(kill);
        at = (at + 1) % 3;
        *targets.write().await = others(&daemons, at);
    }
    stop.store(true, Ordering::Relaxed);
    let sent = replier.await.unwrap();

    let shown =
        the_transcript_is_complete_in_order_without_repeats(&mut visitor, &sent, sent_by_visitor)
            .await;
    a_replica_started_during_the_run_replays_the_same_conversation(
        &daemons[(at + 1) % 3],
        &session,
        &visitor,
        shown,
    )
    .await;
    println!(
        "transcript: {} visitor messages, {} agent replies ({} straight to Kafka), 3 kills; \
         kill to resumed and acknowledged on another replica: {reconnects:?}; run {:?}",
        sent_by_visitor,
        sent.len(),
        sent.len() / 4,
        started.elapsed()
    );
}

/// Agents reply all along: through the HTTP API of the replicas in `targets`, and every fourth
/// reply straight to omni.outbound.v1 as a CRM in Python would, until `stop`. A replica is
/// taken out of `targets` (waiting for a request in flight) before it is killed. Returns the
/// texts sent, in order.
fn agents_reply_all_along(
    broker: &Broker,
    session: &Session,
    targets: &Targets,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn({
        let (targets, stop, session) = (targets.clone(), stop.clone(), session.clone());
        let bootstrap = broker.bootstrap();
        async move {
            let mut sent = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let i = sent.len();
                let text = format!("a{i:03}");
                if i % 4 == 3 {
                    let record = (
                        "omni.outbound.v1".to_owned(),
                        "demo".to_owned(),
                        crm_reply(&session, &text),
                        None,
                    );
                    let bootstrap = bootstrap.clone();
                    tokio::task::spawn_blocking(move || {
                        python_produce(&bootstrap, "murmur2_random", &[record])
                    })
                    .await
                    .unwrap();
                } else {
                    let targets = targets.read().await;
                    agent_reply(&targets[i % targets.len()], &session, &text).await;
                }
                sent.push(text);
                // Pacing: traffic keeps flowing through every step below.
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            sent
        }
    })
}

/// One round: replies keep arriving, the visitor writes and sees typing from another replica;
/// then its replica is killed with a message in flight, the widget reconnects to the next
/// replica with its cursor and resends, and the killed one is replaced. Returns the time from
/// the kill to everything acknowledged on the next replica.
async fn the_visitors_replica_is_killed_mid_conversation(
    broker: &Broker,
    daemons: &mut [Daemon],
    visitor: &mut Visitor,
    session: &Session,
    at: usize,
    sent_by_visitor: &mut usize,
) -> Duration {
    let wait = Duration::from_secs(20);
    // Replies keep arriving, through both other replicas and Kafka.
    let replies = visitor.texts("agent").len();
    assert!(
        visitor
            .pump_until(wait, |v| v.texts("agent").len() >= replies + 4)
            .await
    );
    for _ in 0..3 {
        let id = format!("v{:03}", *sent_by_visitor);
        visitor.send(&id, &format!("khách {id}")).await;
        *sent_by_visitor += 1;
        assert!(visitor.pump_until(wait, |v| v.unacked.is_empty()).await);
    }
    // Typing posted to another replica reaches the visitor's socket.
    let typed = visitor.typing.len();
    agent_typing(&daemons[(at + 1) % 3], session, true).await;
    assert!(visitor.pump_until(wait, |v| v.typing.len() > typed).await);

    // A message in flight when the visitor's replica is killed.
    let id = format!("v{:03}", *sent_by_visitor);
    visitor.send(&id, &format!("khách {id}")).await;
    *sent_by_visitor += 1;
    daemons[at].terminate_hard();
    let killed = Instant::now();
    visitor.until_closed(wait).await.expect("the socket closes");
    // The widget reconnects, through the load balancer, to another replica with its
    // cursor, and resends what was not acknowledged under the same client id.
    let next = (at + 1) % 3;
    visitor.connect(&daemons[next]).await;
    assert!(visitor.pump_until(wait, |v| v.unacked.is_empty()).await);
    let took = killed.elapsed();
    // The orchestrator replaces the killed replica.
    daemons[at] = Daemon::start(broker, &UNLIMITED).await;
    took
}

/// Every agent reply and every visitor message is shown once, in order, and nothing more
/// comes late; cursors only move forward, one message at a time, over every socket. Returns
/// how many messages the transcript shows.
async fn the_transcript_is_complete_in_order_without_repeats(
    visitor: &mut Visitor,
    sent: &[String],
    sent_by_visitor: usize,
) -> usize {
    let all_in = visitor
        .pump_until(Duration::from_secs(30), |v| {
            v.texts("agent").len() >= sent.len() && v.texts("visitor").len() >= sent_by_visitor
        })
        .await;
    assert!(
        all_in,
        "missing: agent {:?} of {}, visitor {:?}",
        visitor.texts("agent"),
        sent.len(),
        visitor.texts("visitor")
    );
    // Nothing more comes (no repeat arrives late).
    let shown = visitor.transcript.len();
    visitor.pump_until(Duration::from_secs(2), |_| false).await;
    assert_eq!(visitor.transcript.len(), shown, "{:#?}", visitor.transcript);

    // Complete, in order, without repeats.
    assert_eq!(visitor.texts("agent"), sent);
    let visitor_ids: Vec<String> = (0..sent_by_visitor).map(|i| format!("v{i:03}")).collect();
    let shown_ids: Vec<String> = visitor
        .transcript
        .iter()
        .filter(|m| m["from"] == "visitor")
        .map(|m| m["client_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shown_ids, visitor_ids);
    let mut ids: Vec<&str> = visitor
        .transcript
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), visitor.transcript.len(), "an event shown twice");
    // Cursors only move forward, one message at a time, over every socket.
    let mut last = (-1, -1);
    for m in &visitor.transcript {
        let c = cursor_parts(m["cursor"].as_str().unwrap());
        let seq = m["seq"].as_str().unwrap();
        let offset: i64 = seq[1..].parse().unwrap();
        match &seq[..1] {
            "i" => assert!(c.0 == offset && offset > last.0 && c.1 == last.1, "{m}"),
            _ => assert!(c.1 == offset && offset > last.1 && c.0 == last.0, "{m}"),
        }
        last = c;
    }
    shown
}

/// A replica started during the run replays the same conversation from the start: the same
/// messages at the same positions.
async fn a_replica_started_during_the_run_replays_the_same_conversation(
    replica: &Daemon,
    session: &Session,
    visitor: &Visitor,
    shown: usize,
) {
    let wait = Duration::from_secs(20);
    let mut replay = Visitor::new(session.clone());
    replay.connect(replica).await;
    assert!(
        replay
            .pump_until(wait, |v| v.transcript.len() >= shown)
            .await
    );
    for from in ["visitor", "agent"] {
        let seqs = |v: &Visitor| -> Vec<Value> {
            v.transcript
                .iter()
                .filter(|m| m["from"] == from)
                .map(|m| m["seq"].clone())
                .collect()
        };
        assert_eq!(seqs(&replay), seqs(visitor), "{from}");
        assert_eq!(replay.texts(from), visitor.texts(from));
    }
}

/// How often a replica publishes its socket counts in the cap test.
const HEARTBEAT_MS: u64 = 300;
/// How long a silent replica's counts still count in the cap test.
const EXPIRY_MS: u64 = 5000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_socket_cap_counts_every_replica() {
    let (heartbeat, expiry) = (HEARTBEAT_MS.to_string(), EXPIRY_MS.to_string());
    let env = [
        ("OMNI__LIVECHAT__MAX_CONNECTIONS_PER_IP", "3"),
        ("OMNI__LIVECHAT__PRESENCE_HEARTBEAT_MS", heartbeat.as_str()),
        ("OMNI__LIVECHAT__PRESENCE_EXPIRY_MS", expiry.as_str()),
        ("OMNI__LIVECHAT__IP_HASH_SECRET", "e2e-ip-hash-secret"),
    ];
    let broker = Broker::memory();
    let mut d = Daemon::start_many(&broker, 3, &env).await;
    let s = new_session(&d[0]).await;
    for daemon in &d {
        wait_gauge(
            daemon,
            "omni_livechat_presence_replicas",
            3.0,
            Duration::from_secs(30),
        )
        .await;
    }

    let (sockets, propagation) = one_socket_on_each_replica_is_counted_by_all(&d, &s).await;
    a_fourth_socket_is_refused_on_every_replica(&d, &s).await;
    let [_a, _b, c] = sockets;
    let (_e, freed) = a_slot_closed_on_one_replica_is_admitted_on_another(&d, &s, c).await;
    let (_f, expired) = a_killed_replicas_sockets_count_until_they_expire(&mut d, &s).await;
    let (_g, stop_took, withdrawn) =
        a_stopped_replica_withdraws_its_counts_at_once(&mut d, &s).await;
    println!(
        "presence: a socket opened on one replica counted by all within {propagation:?}; a \
         slot freed on one replica admitted on another after {freed:?}; a killed replica's \
         slot after {expired:?} (expiry {EXPIRY_MS} ms); a stopped replica's slot {withdrawn:?} \
         after its stop ({stop_took:?}) returned"
    );
    the_topic_ends_with_a_tombstone_per_replica_and_holds_no_address(&mut d, &broker);
}

/// One socket from 127.0.0.1 on each replica: three, the cap, counted by every replica.
/// Returns the sockets and how long each replica took to count them.
async fn one_socket_on_each_replica_is_counted_by_all(
    d: &[Daemon],
    s: &Session,
) -> ([Ws; 3], Vec<Duration>) {
    let _a = open(&d[0], &s.token, None).await.unwrap();
    let _b = open(&d[1], &s.token, None).await.unwrap();
    let c = open(&d[2], &s.token, None).await.unwrap();
    let mut propagation = Vec::new();
    for daemon in d {
        propagation.push(
            wait_gauge(
                daemon,
                "omni_livechat_presence_sockets",
                3.0,
                Duration::from_secs(10),
            )
            .await,
        );
    }
    ([_a, _b, c], propagation)
}

/// A fourth socket is refused on every replica, though each holds only one.
async fn a_fourth_socket_is_refused_on_every_replica(d: &[Daemon], s: &Session) {
    for daemon in d {
        assert_eq!(open(daemon, &s.token, None).await.err(), Some(429));
        let m = daemon.metrics().await;
        assert_eq!(
            metric_value(
                &m,
                "omni_livechat_attempts_total",
                &["kind=\"socket\"", "result=\"too_many_connections\""]
            ),
            1.0
        );
        assert_eq!(metric_value(&m, "omni_livechat_connections", &[]), 1.0);
    }
}

/// A socket closed on one replica frees the slot on another once its count propagates; then
/// the cap is full again. Returns the new socket and how long the slot took to free.
async fn a_slot_closed_on_one_replica_is_admitted_on_another(
    d: &[Daemon],
    s: &Session,
    c: Ws,
) -> (Ws, Duration) {
    drop(c);
    let (_e, freed) = open_when_admitted(&d[0], &s.token, Duration::from_secs(10)).await;
    wait_gauge(
        &d[2],
        "omni_livechat_presence_sockets",
        3.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        open(&d[2], &s.token, None).await.err(),
        Some(429),
        "full again"
    );
    (_e, freed)
}

/// A replica killed without a goodbye: its socket counts until it expires. Returns the new
/// socket and how long the slot took to free.
async fn a_killed_replicas_sockets_count_until_they_expire(
    d: &mut [Daemon],
    s: &Session,
) -> (Ws, Duration) {
    d[1].terminate_hard();
    let (_f, expired) = open_when_admitted(&d[2], &s.token, Duration::from_secs(15)).await;
    assert!(
        expired >= Duration::from_millis(EXPIRY_MS / 2),
        "a killed replica's sockets count until they expire, not {expired:?}"
    );
    for (name, want) in [
        ("omni_livechat_presence_replicas", 2.0),
        ("omni_livechat_presence_sockets", 3.0),
    ] {
        wait_gauge(&d[0], name, want, Duration::from_secs(10)).await;
    }
    assert_eq!(
        open(&d[0], &s.token, None).await.err(),
        Some(429),
        "full again"
    );
    (_f, expired)
}

/// A replica stopped cleanly withdraws its counts at once (long before they would expire).
/// Returns the new socket, how long the stop took and how long after it the slot freed.
async fn a_stopped_replica_withdraws_its_counts_at_once(
    d: &mut [Daemon],
    s: &Session,
) -> (Ws, Duration, Duration) {
    let stopping = Instant::now();
    d[2].terminate(Duration::from_secs(40));
    let stop_took = stopping.elapsed();
    let (_g, withdrawn) = open_when_admitted(&d[0], &s.token, Duration::from_secs(10)).await;
    assert!(
        d[2].log().contains("live chat presence withdrawn"),
        "{}",
        d[2].log()
    );
    assert!(
        stop_took + withdrawn < Duration::from_millis(EXPIRY_MS - HEARTBEAT_MS),
        "withdrawn, not expired: stop {stop_took:?} + {withdrawn:?}"
    );
    (_g, stop_took, withdrawn)
}

/// The topic holds live replicas only, and no address: the last record of every replica
/// (killed, stopped, and the last one once stopped) is a tombstone.
fn the_topic_ends_with_a_tombstone_per_replica_and_holds_no_address(
    d: &mut [Daemon],
    broker: &Broker,
) {
    d[0].terminate(Duration::from_secs(40));
    let log = read_log(
        &broker.bootstrap(),
        "omni.livechat-presence.v1",
        Duration::from_secs(2),
    );
    let mut last = std::collections::BTreeMap::new();
    for r in &log {
        let value = r.value.as_deref().map(String::from_utf8_lossy);
        assert!(
            !value.as_deref().unwrap_or("").contains("127.0.0.1"),
            "{value:?}"
        );
        last.insert(r.key.clone(), r.value.is_some());
    }
    assert_eq!(last.len(), 3, "one key per replica");
    assert!(last.values().all(|live| !live), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversations_message_rate_counts_messages_sent_through_every_replica() {
    let env = [
        ("OMNI__LIVECHAT__BURST", "3"),
        ("OMNI__LIVECHAT__RATE_PER_MINUTE", "1"),
    ];
    let broker = Broker::memory();
    let d = Daemon::start_many(&broker, 2, &env).await;
    let s = new_session(&d[0]).await;
    // Two tabs of one visitor, on two replicas.
    let mut one = Visitor::new(s.clone());
    one.connect(&d[0]).await;
    let mut two = Visitor::new(s.clone());
    two.connect(&d[1]).await;
    for i in 0..3 {
        one.send(&format!("m{i}"), "hi").await;
        assert!(
            one.pump_until(Duration::from_secs(15), |v| v.unacked.is_empty())
                .await
        );
    }
    // Once the other replica has read the three back from Kafka, its tab has no burst left.
    assert!(
        two.pump_until(Duration::from_secs(15), |v| v.texts("visitor").len() == 3)
            .await
    );
    let mut ws = open(&d[1], &s.token, Some("-1.-1")).await.unwrap();
    let frame = serde_json::json!({"type": "message", "client_id": "m3", "text": "hi"});
    futures_util::SinkExt::send(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text(frame.to_string()),
    )
    .await
    .unwrap();
    let refused = loop {
        let f = omni_e2e::livechat::next_frame(&mut ws, Duration::from_secs(15))
            .await
            .expect("an answer");
        if f["type"] == "error" || f["type"] == "ack" {
            break f;
        }
    };
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited");
    assert_eq!(refused["client_id"], "m3");
}

/// Revokes `visitor`'s tokens through `daemon`'s agent API.
async fn revoke(daemon: &Daemon, visitor: &str, bearer: &str) -> (u16, Value) {
    omni_e2e::post_json(
        &daemon.url(&format!(
            "/v1/tenants/demo/livechat/visitors/{visitor}/revoke"
        )),
        bearer,
        &serde_json::json!({}),
    )
    .await
}

/// A session request of the demo widget renewing `token`: the status and the body.
async fn renew(daemon: &Daemon, token: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(daemon.url("/v1/livechat/demo/web/session"))
        .header("origin", omni_e2e::livechat::ORIGIN)
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_revoked_through_one_replica_is_cut_off_on_all_and_on_one_started_later() {
    let broker = Broker::memory();
    let d = Daemon::start_many(&broker, 2, &[]).await;
    let s = new_session(&d[0]).await;
    let bystander = new_session(&d[0]).await;
    let mut on_b = open(&d[1], &s.token, None).await.unwrap();
    let mut other = open(&d[1], &bystander.token, None).await.unwrap();
    for ws in [&mut on_b, &mut other] {
        let status = omni_e2e::livechat::next_frame(ws, Duration::from_secs(15)).await;
        assert_eq!(status.unwrap()["type"], "status");
    }

    // Only the tenant's agent token may revoke.
    assert_eq!(revoke(&d[0], &s.visitor, "not-the-token").await.0, 401);
    let started = Instant::now();
    let (status, body) = revoke(&d[0], &s.visitor, omni_e2e::livechat::AGENT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["visitor_id"], s.visitor.as_str());
    assert!(body["revoked_at"].is_string(), "{body}");

    // Replica A applied it before answering: no new socket, no renewal.
    assert_eq!(open(&d[0], &s.token, None).await.err(), Some(401));
    let (status, body) = renew(&d[0], &s.token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_revoked"))
    );

    // The visitor's socket on replica B is told and closed; the bystander's is not.
    let told = omni_e2e::livechat::next_frame(&mut on_b, Duration::from_secs(15)).await;
    let told = told.expect("no frame on B within 15 s");
    assert_eq!(
        (told["type"].as_str(), told["code"].as_str()),
        (Some("error"), Some("token_revoked")),
        "{told}"
    );
    let closed = omni_e2e::livechat::next_frame(&mut on_b, Duration::from_secs(5)).await;
    assert_eq!(closed.unwrap()["code"], 1008);
    let cut_off = started.elapsed();
    use futures_util::SinkExt;
    other
        .send(tokio_tungstenite::tungstenite::Message::text(
            r#"{"type":"ping"}"#,
        ))
        .await
        .unwrap();
    let pong = omni_e2e::livechat::next_frame(&mut other, Duration::from_secs(15)).await;
    assert_eq!(pong.unwrap()["type"], "pong");

    // A replica started afterwards reads the revocation from the topic before refusing.
    let c = Daemon::start(&broker, &[]).await;
    let learnt = wait_gauge(
        &c,
        "omni_livechat_revocations",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(open(&c, &s.token, None).await.err(), Some(401));
    let (status, _) = renew(&c, &s.token).await;
    assert_eq!(status, 401);
    // A new session (a new visitor: revocation is not a ban) works there.
    let fresh = new_session(&c).await;
    assert_ne!(fresh.visitor, s.visitor);
    let mut ws = open(&c, &fresh.token, None).await.unwrap();
    let status = omni_e2e::livechat::next_frame(&mut ws, Duration::from_secs(15)).await;
    assert_eq!(status.unwrap()["type"], "status");
    let metrics = d[1].metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "omni_livechat_policy_closes_total",
            &["reason=\"token_revoked\""]
        ),
        1.0
    );
    println!(
        "revocation: a socket on another replica closed within {cut_off:?} of the call; a \
         replica started later knew it {learnt:?} after it was ready"
    );
}
