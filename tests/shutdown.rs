//! A stopped daemon always exits, within `server.shutdown_grace_secs` plus a few seconds,
//! whatever Kafka and the providers are doing, and says what it left: exit 0 when everything
//! was flushed, 75 with the counts on its last log line when the grace period cut it short.
//! Nothing acknowledged is lost: after the broker (or the provider) is back, a new daemon
//! publishes or redelivers everything a client was told was taken.
//!
//! Each scenario takes traffic on every channel, with replies in flight when SIGTERM arrives:
//! - API: messages posted with the tenant's token; replies to them (read from
//!   `omni.outbound.v1` by the CRM, no provider).
//! - Messenger: signed webhooks; three replies in one conversation to a Graph stand-in that
//!   hangs (one at the provider, two queued behind it).
//! - E-mail: mail appended over IMAP to a mailbox on the real dovecot; a reply whose SMTP peer
//!   (a stalled proxy in front of opensmtpd) never sends its 220 greeting.
//! - Zalo OA: a signed webhook; a reply to an OpenAPI stand-in that hangs.
//! - SMS: a signed Twilio webhook; a reply to a Twilio stand-in that hangs.
//! - Live chat: a visitor socket, a message acknowledged and an agent reply; at SIGTERM the
//!   daemon closes the socket (1001) and the visitor resumes on the next daemon by its cursor.
//!
//! With the broker dead or stalled, more arrives while it is away (API messages, a mail, a
//! visitor message) and is in flight across SIGTERM. Then the broker and providers come back,
//! a new daemon takes over, and every acknowledged message is on `omni.inbound.v1` and every
//! reply accounted for: on `omni.outbound.v1`, with a delivery fate on `omni.delivery.v1`
//! (sent, failed or outcome unknown) for the channels with a provider, seen by the visitor for
//! live chat.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_e2e::livechat::{agent_reply, new_session, Visitor};
use omni_e2e::mail::{MailServer, PASSWORD};
use omni_e2e::standin::StandIn;
use omni_e2e::webhooks::{
    form, messenger_text, now_millis, post_messenger, post_twilio, post_zalo, zalo_text,
};
use omni_e2e::{free_port, read_log, Broker, Daemon};
use omni_social::zalo::shared::{SharedTokens, TokenSealing};
use omni_social::zalo::token::StoredTokens;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const GRACE_SECS: u64 = 3;
/// The documented exit code of a shutdown cut short by the grace period.
const CUT_SHORT: i32 = 75;
/// How long every provider call may take: longer than the test, so a hanging provider holds
/// its reply until SIGTERM.
const PROVIDER_TIMEOUT_SECS: &str = "120";

const PAGE: &str = "104912345678901";
const GRAPH_PATH: &str = "/v23.0/104912345678901/messages";
const OA: &str = "4318458798374519001";
const ZALO_APP_ID: &str = "1183926498471234567";
const ZALO_CS_PATH: &str = "/v3.0/oa/message/cs";
/// 32 bytes, base64: the key sealing the OA token pairs on Kafka.
const ZALO_TOKEN_KEY: &str = "b21uaXJvdXRlci10ZXN0LXRva2VuLWtleS0zMmJ5dGU=";
const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
const TWILIO_NUMBER: &str = "+84281234567";
const TWILIO_PATH: &str = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json";
/// The public URL Twilio calls (and signs), in front of the daemon.
const SMS_PUBLIC: &str = "https://sms.shop.example.vn";

// ---------------------------------------------------------------------------------------------
// A TCP proxy that can stall: in front of the broker, and in front of the SMTP server.

/// A TCP proxy on 127.0.0.1 in front of a server (the broker, the SMTP server). Stalled, it
/// keeps accepting and holding connections but forwards nothing, as a server that hangs does:
/// in front of SMTP, a client waits for a 220 greeting that never comes.
struct StallProxy {
    port: u16,
    stalled: tokio::sync::watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
}

impl StallProxy {
    async fn start(port: u16, server_port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (stalled, watch) = tokio::sync::watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(forward(cr, sw, watch.clone()));
                    tokio::spawn(forward(sr, cw, watch));
                });
            }
        });
        Self {
            port,
            stalled,
            accepted,
        }
    }

    /// Waits until a client connected (it is now held, when stalled).
    async fn wait_accepted(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.accepted.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "nobody connected to the proxy");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn stall(&self) {
        self.stalled.send_replace(true);
    }

    fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The world outside the daemon: providers that can hang, the mail servers.

/// Everything a scenario's daemons talk to besides the broker. Providers start hanging.
struct Providers {
    graph: StandIn,
    zalo_api: StandIn,
    zalo_oauth: StandIn,
    twilio: StandIn,
    mail: Arc<MailServer>,
    /// In front of the shared opensmtpd: stalled, an SMTP session never gets its greeting.
    smtp: StallProxy,
    /// The tenant's mailbox (read over IMAP, replies sent from it).
    mailbox: String,
    /// The customer writing to it.
    customer: String,
    /// Attachment directory and the Zalo token file.
    files: tempfile::TempDir,
}

impl Providers {
    async fn start() -> Self {
        let graph = StandIn::start().await;
        graph.always(
            GRAPH_PATH,
            200,
            "application/json",
            br#"{"recipient_id":"psid","message_id":"m_out"}"#,
        );
        let zalo_api = StandIn::start().await;
        zalo_api.always(
            ZALO_CS_PATH,
            200,
            "application/json",
            br#"{"error":0,"message":"Success","data":{"message_id":"z_out"}}"#,
        );
        let zalo_oauth = StandIn::start().await;
        zalo_oauth.always(
            "/v4/oa/access_token",
            200,
            "application/json",
            br#"{"access_token":"Z-ACCESS-2","refresh_token":"Z-R2","expires_in":"90000"}"#,
        );
        let twilio = StandIn::start().await;
        twilio.always(
            TWILIO_PATH,
            201,
            "application/json",
            br#"{"sid":"SMout","status":"queued","num_segments":"1"}"#,
        );
        let mail = tokio::task::spawn_blocking(MailServer::shared)
            .await
            .unwrap();
        let smtp = StallProxy::start(free_port(), mail.smtp_port).await;
        let files = tempfile::tempdir().unwrap();
        let this = Self {
            mailbox: mail.address("support"),
            customer: mail.address("khach"),
            graph,
            zalo_api,
            zalo_oauth,
            twilio,
            mail,
            smtp,
            files,
        };
        this.hang();
        this
    }

    /// The OA's token pair as an earlier deployment left it on the tokens topic (sealed), with
    /// an access token valid for a day: the daemons send with it at once (a first start from
    /// a token file alone waits one `zalo.timeout_secs` for the owner, longer than the test).
    async fn seed_zalo_pair(bootstrap: &str) {
        let bus = omni_bus::BusConfig {
            bootstrap_servers: bootstrap.to_owned(),
            ..omni_bus::BusConfig::default()
        };
        let metrics =
            Arc::new(omni_bus::BusMetrics::register(&prometheus::Registry::new()).unwrap());
        let producer = omni_bus::Producer::new(&bus, metrics).unwrap();
        let shared = SharedTokens::new(
            bus.topics.zalo_tokens.clone(),
            Arc::new(producer),
            TokenSealing::from_base64(ZALO_TOKEN_KEY).unwrap(),
        );
        let now = chrono::Utc::now();
        let pair = StoredTokens {
            access_token: "Z-ACCESS-1".into(),
            access_token_expires_at: Some(now + chrono::Duration::days(1)),
            refresh_token: "Z-R1".into(),
            updated_at: now,
        };
        shared
            .put(&SharedTokens::key("demo", OA), &pair)
            .await
            .unwrap();
    }

    /// Every provider stops answering (SMTP: no greeting).
    fn hang(&self) {
        for api in [&self.graph, &self.zalo_api, &self.twilio] {
            api.hold();
        }
        self.smtp.stall();
    }

    /// Every provider answers again, held calls included.
    fn answer(&self) {
        for api in [&self.graph, &self.zalo_api, &self.twilio] {
            api.release();
        }
        self.smtp.resume();
    }

    /// Waits until a reply of every channel with a provider reached it (and hangs there).
    async fn wait_replies_at_providers(&self, daemon: &Daemon) {
        let timeout = Duration::from_secs(30);
        for (name, api, path) in [
            ("graph", &self.graph, GRAPH_PATH),
            ("zalo", &self.zalo_api, ZALO_CS_PATH),
            ("twilio", &self.twilio, TWILIO_PATH),
        ] {
            let got = api.wait_for(path, 1, timeout).await;
            assert!(
                !got.is_empty(),
                "no reply reached {name}; log:\n{}",
                daemon.log()
            );
        }
        self.smtp.wait_accepted(timeout).await;
    }

    /// The daemons' environment: the grace period, every channel of tenant `demo` pointed at
    /// these stand-ins, provider timeouts longer than the test.
    fn env(&self) -> Vec<(String, String)> {
        let v = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let mailbox = |k: &str| format!("OMNI__TENANTS__DEMO__EMAIL__MAILBOXES__SUPPORT__{k}");
        let oa = |k: &str| format!("OMNI__TENANTS__DEMO__ZALO__OAS__{OA}__{k}");
        let sms = |k: &str| format!("OMNI__TENANTS__DEMO__SMS__{k}");
        vec![
            v("OMNI__SERVER__SHUTDOWN_GRACE_SECS", &GRACE_SECS.to_string()),
            v("OMNI__OUTBOUND__INITIAL_BACKOFF_MS", "100"),
            v("OMNI__KAFKA__CONSUMER__SESSION_TIMEOUT_MS", "6000"),
            v("OMNI__KAFKA__CONSUMER__HEARTBEAT_INTERVAL_MS", "500"),
            // Messenger.
            v("OMNI__MESSENGER__GRAPH_BASE_URL", &self.graph.url),
            v("OMNI__MESSENGER__TIMEOUT_SECS", PROVIDER_TIMEOUT_SECS),
            v("OMNI__TENANTS__DEMO__MESSENGER__APP_SECRET", "META-SECRET"),
            v("OMNI__TENANTS__DEMO__MESSENGER__VERIFY_TOKEN", "VERIFY"),
            v(
                &format!("OMNI__TENANTS__DEMO__MESSENGER__PAGES__{PAGE}__ACCESS_TOKEN"),
                "PAGE-TOKEN",
            ),
            // E-mail.
            v(
                "OMNI__EMAIL__ATTACHMENT_DIR",
                &self.files.path().join("mail").display().to_string(),
            ),
            v(&mailbox("ADDRESS"), &self.mailbox),
            v(&mailbox("IMAP__HOST"), "127.0.0.1"),
            v(&mailbox("IMAP__PORT"), &self.mail.imap_port.to_string()),
            v(&mailbox("IMAP__SECURITY"), "plain"),
            v(&mailbox("IMAP__PASSWORD"), PASSWORD),
            v(&mailbox("IMAP__FIRST_START"), "all"),
            v(&mailbox("SMTP__HOST"), "127.0.0.1"),
            v(&mailbox("SMTP__PORT"), &self.smtp.port.to_string()),
            v(&mailbox("SMTP__SECURITY"), "plain"),
            // Zalo OA.
            v("OMNI__ZALO__OPENAPI_BASE_URL", &self.zalo_api.url),
            v("OMNI__ZALO__OAUTH_BASE_URL", &self.zalo_oauth.url),
            v("OMNI__ZALO__TIMEOUT_SECS", PROVIDER_TIMEOUT_SECS),
            v("OMNI__ZALO__TOKEN_KEY", ZALO_TOKEN_KEY),
            v(&oa("APP_ID"), ZALO_APP_ID),
            v(&oa("OA_SECRET_KEY"), "OA-KEY"),
            v(&oa("APP_SECRET"), "Z-APP-SECRET"),
            v(
                &oa("TOKEN_FILE"),
                &self.files.path().join("zalo.json").display().to_string(),
            ),
            v(&oa("REFRESH_TOKEN"), "Z-R0"),
            // SMS (Twilio).
            v("OMNI__SMS__TWILIO_BASE_URL", &self.twilio.url),
            v("OMNI__SMS__TIMEOUT_SECS", PROVIDER_TIMEOUT_SECS),
            v(&sms("PUBLIC_BASE_URL"), SMS_PUBLIC),
            v(&sms("TWILIO__ACCOUNT_SID"), TWILIO_SID),
            v(&sms("TWILIO__AUTH_TOKEN"), "TWILIO-TOKEN"),
            // Environment keys cannot hold '+': the digits normalize to the same number.
            v(
                &sms(&format!("NUMBERS__{}__PROVIDER", &TWILIO_NUMBER[1..])),
                "twilio",
            ),
        ]
    }
}

async fn start_daemon(bootstrap: &str, env: &[(String, String)]) -> Daemon {
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let daemon = Daemon::spawn(bootstrap, &refs);
    daemon.wait_ready(Duration::from_secs(60)).await;
    daemon
}

// ---------------------------------------------------------------------------------------------
// What clients were told was taken, and how to find it again.

/// Acknowledged messages and replies, by channel.
#[derive(Default, Debug)]
struct Acked {
    /// `data.message.id` of every inbound message a client or provider was told was taken.
    inbound: BTreeMap<&'static str, BTreeSet<String>>,
    /// Event ids of replies answered 202 (live chat: see [`Chat`]).
    replies: BTreeMap<&'static str, BTreeSet<String>>,
}

impl Acked {
    fn message(&mut self, channel: &'static str, id: impl Into<String>) {
        self.inbound.entry(channel).or_default().insert(id.into());
    }

    fn reply(&mut self, channel: &'static str, answer: &Value) {
        let id = answer["event_id"].as_str().expect("a reply's event id");
        self.replies
            .entry(channel)
            .or_default()
            .insert(id.to_owned());
    }
}

/// Reads `topic` until `missing` finds nothing missing in its records (or panics after
/// `timeout`, naming what is still missing).
fn wait_topic(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    mut missing: impl FnMut(&[Value]) -> Vec<String>,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let records: Vec<Value> = read_log(bootstrap, topic, Duration::from_millis(800))
            .into_iter()
            .filter_map(|r| serde_json::from_slice(&r.value?).ok())
            .collect();
        let left = missing(&records);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} still lacks {left:?} after {timeout:?} ({} records)",
            records.len()
        );
    }
}

/// What of `want` (by channel) is not among the keys `key` finds in `records`, as
/// `channel:id`.
fn not_among(
    want: &BTreeMap<&'static str, BTreeSet<String>>,
    records: &[Value],
    key: impl Fn(&Value) -> Option<&str>,
) -> Vec<String> {
    let have: BTreeSet<&str> = records.iter().filter_map(key).collect();
    want.iter()
        .flat_map(|(channel, ids)| ids.iter().map(move |id| (*channel, id)))
        .filter(|(_, id)| !have.contains(id.as_str()))
        .map(|(channel, id)| format!("{channel}:{id}"))
        .collect()
}

/// The inbound events of the messages `ids` (`data.message.id`), once all are on the topic.
async fn inbound_events(bootstrap: &str, ids: &[String]) -> BTreeMap<String, Value> {
    let mut found = BTreeMap::new();
    tokio::task::block_in_place(|| {
        wait_topic(
            bootstrap,
            "omni.inbound.v1",
            Duration::from_secs(60),
            |rs| {
                for r in rs {
                    if let Some(id) = r["data"]["message"]["id"].as_str() {
                        if ids.iter().any(|want| want == id) {
                            found.insert(id.to_owned(), r.clone());
                        }
                    }
                }
                ids.iter()
                    .filter(|id| !found.contains_key(*id))
                    .cloned()
                    .collect()
            },
        );
    });
    found
}

/// An agent's reply to the conversation of inbound `event`, as the agent API takes it.
async fn reply_to(daemon: &Daemon, event: &Value, text: &str) -> Value {
    let (status, answer) = omni_e2e::post_json(
        &daemon.url("/v1/tenants/demo/replies"),
        "demo-agent-token",
        &json!({
            "conversation_id": event["subject"],
            "channel": event["data"]["channel"],
            "recipient": event["data"]["contact"]["id"],
            "agent_id": "agent-7",
            "text": text,
        }),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    answer
}

// ---------------------------------------------------------------------------------------------
// Traffic, one part per channel.

/// The API channel: messages posted with the tenant's bearer token, and replies to one of
/// them (no provider: they count once on `omni.outbound.v1`).
async fn api_message(daemon: &Daemon, id: &str) -> Option<String> {
    let r = reqwest::Client::new()
        .post(daemon.url("/v1/inbound/demo"))
        .bearer_auth("demo-token")
        .json(
            &json!({"contact": {"id": format!("cust-{id}")}, "text": "Đơn hàng của tôi đâu?",
                      "client_message_id": id}),
        )
        .send()
        .await
        .ok()?;
    (r.status() == 202).then(|| id.to_owned())
}

/// Messenger: customer messages through the signed webhook; three replies in one
/// conversation: the first hangs at Graph, the other two queue behind it.
struct Messenger {
    psid: String,
}

impl Messenger {
    async fn messages_in(&self, daemon: &Daemon, run: &str, acked: &mut Acked) -> String {
        for i in 0..2 {
            let mid = format!("m_{run}_{i}");
            let body = messenger_text(PAGE, &self.psid, &mid, "Shop ơi");
            assert_eq!(
                post_messenger(daemon, "demo", "META-SECRET", &body).await,
                200
            );
            acked.message("messenger", mid);
        }
        format!("m_{run}_0")
    }

    async fn replies_out(daemon: &Daemon, event: &Value, acked: &mut Acked) {
        for i in 0..3 {
            let answer = reply_to(daemon, event, &format!("Dạ {i}")).await;
            acked.reply("messenger", &answer);
        }
    }
}

/// E-mail: a customer mail appended to the tenant's mailbox on dovecot (as an MTA delivers
/// it), read by the daemon's IMAP reader; the reply's SMTP session waits for a greeting.
async fn mail_in(providers: &Providers, id: &str, acked: &mut Acked) {
    let raw = format!(
        "From: Khách <{customer}>\r\nTo: {mailbox}\r\nMessage-ID: <{id}>\r\nSubject: Đơn hàng\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nChào shop, đơn hàng #1024 của tôi đâu rồi?\r\n",
        customer = providers.customer,
        mailbox = providers.mailbox,
    );
    providers
        .mail
        .append(&providers.mailbox, "INBOX", raw.as_bytes())
        .await;
    // Stored on the IMAP server: the mail counts as taken, whatever the daemon does now.
    acked.message("email", id);
}

/// Zalo OA: a customer text through the signed webhook (the reply hangs at the OpenAPI).
async fn zalo_in(daemon: &Daemon, run: &str, acked: &mut Acked) -> String {
    let msg_id = format!("z_{run}");
    let ts = &now_millis();
    let user = format!("25125236254125{}", free_port());
    let body = zalo_text(
        ZALO_APP_ID,
        OA,
        &user,
        &msg_id,
        "Shop ơi, còn hàng không?",
        ts,
    );
    assert_eq!(
        post_zalo(daemon, "demo", (ZALO_APP_ID, "OA-KEY"), &body, ts).await,
        200
    );
    acked.message("zalo", msg_id.clone());
    msg_id
}

/// SMS: a customer text through Twilio's signed webhook (the reply hangs at Twilio).
async fn sms_in(daemon: &Daemon, run: &str, acked: &mut Acked) -> String {
    let sid = format!("SM{run}{:0>30}", free_port());
    let body = form(&[
        ("MessageSid", &sid),
        ("AccountSid", TWILIO_SID),
        ("From", "+84901234567"),
        ("To", TWILIO_NUMBER),
        ("Body", "Chào shop, đơn hàng của tôi đâu rồi?"),
        ("NumMedia", "0"),
    ]);
    let path = "/v1/webhooks/sms/twilio/demo";
    let r = post_twilio(daemon, SMS_PUBLIC, path, "TWILIO-TOKEN", body).await;
    assert_eq!(r.status(), 200);
    acked.message("sms", sid.clone());
    sid
}

/// Live chat: a visitor's socket, its messages (acknowledged once on Kafka) and the agent's
/// replies, which the visitor must see on this daemon or, resuming by cursor, on the next.
struct Chat {
    visitor: Visitor,
    /// Client ids of the messages sent.
    sent: Vec<String>,
    /// Texts of the agent replies answered 202.
    replies: Vec<String>,
}

impl Chat {
    async fn open(daemon: &Daemon) -> Self {
        let mut visitor = Visitor::new(new_session(daemon).await);
        visitor.connect(daemon).await;
        Self {
            visitor,
            sent: Vec::new(),
            replies: Vec::new(),
        }
    }

    /// A message, waited for until acknowledged.
    async fn message_acked(&mut self, client_id: &str) {
        self.send(client_id).await;
        let acked = self
            .visitor
            .pump_until(Duration::from_secs(20), |v| {
                v.acked.iter().any(|c| c == client_id)
            })
            .await;
        assert!(acked, "visitor message {client_id} not acknowledged");
    }

    /// A message sent, not waited for (Kafka may be away).
    async fn send(&mut self, client_id: &str) {
        self.visitor.send(client_id, "Cho mình hỏi đơn hàng").await;
        self.sent.push(client_id.to_owned());
    }

    async fn agent_replies(&mut self, daemon: &Daemon, text: &str) {
        agent_reply(&daemon.url(""), &self.visitor.session, text).await;
        self.replies.push(text.to_owned());
    }

    /// Waits for the daemon to close the socket; the close frame's code and how long it took.
    async fn closed_by_daemon(&mut self) -> (Option<u64>, Duration) {
        let started = Instant::now();
        let closed = self
            .visitor
            .until_closed(Duration::from_secs(GRACE_SECS + 10))
            .await
            .expect("the visitor's socket was left hanging");
        (closed["code"].as_u64(), started.elapsed())
    }

    /// Reconnects to `daemon` from the last cursor (resending what was not acknowledged) and
    /// waits until every message is acknowledged and every agent reply seen.
    async fn resume(&mut self, daemon: &Daemon, acked: &mut Acked) {
        self.visitor.connect(daemon).await;
        let (sent, replies) = (self.sent.clone(), self.replies.clone());
        let done = self
            .visitor
            .pump_until(Duration::from_secs(60), |v| {
                let texts = v.texts("agent");
                sent.iter().all(|c| v.acked.contains(c))
                    && replies.iter().all(|r| texts.contains(r))
            })
            .await;
        assert!(
            done,
            "visitor after resuming: acked {:?} of {sent:?}, agent texts {:?} of {replies:?}",
            self.visitor.acked,
            self.visitor.texts("agent")
        );
        for client_id in &self.sent {
            acked.message(
                "livechat",
                format!("{}/{client_id}", self.visitor.session.visitor),
            );
        }
    }
}

/// Every channel's part of a scenario.
struct Traffic {
    run: String,
    acked: Acked,
    chat: Chat,
}

impl Traffic {
    /// Messages in on every channel (waited for on the inbound topic), then replies on every
    /// channel, until a reply of each channel with a provider hangs there.
    async fn start(daemon: &Daemon, bootstrap: &str, providers: &Providers, run: &str) -> Self {
        let mut acked = Acked::default();
        let api_id = format!("{run}-in-0");
        for i in 0..4 {
            let id = api_message(daemon, &format!("{run}-in-{i}"))
                .await
                .expect("api message taken");
            acked.message("api", id);
        }
        let messenger = Messenger {
            psid: format!("53849371{}", free_port()),
        };
        let mid = messenger.messages_in(daemon, run, &mut acked).await;
        let mail_id = format!("{run}-1@khach.example.test");
        mail_in(providers, &mail_id, &mut acked).await;
        let zalo_id = zalo_in(daemon, run, &mut acked).await;
        let sms_id = sms_in(daemon, run, &mut acked).await;
        let mut chat = Chat::open(daemon).await;
        chat.message_acked(&format!("{run}-chat-1")).await;

        // The conversations to answer, as an agent's tool reads them from the inbound topic.
        let ids = [api_id, mid, mail_id, zalo_id, sms_id];
        let events = inbound_events(bootstrap, &ids).await;
        let [api, fb, mail, zalo, sms] = ids.map(|id| events[&id].clone());
        Messenger::replies_out(daemon, &fb, &mut acked).await;
        for (channel, event, text) in [
            ("email", &mail, "Dạ, shop đã gửi hàng hôm nay ạ."),
            ("zalo", &zalo, "Dạ còn hàng ạ"),
            ("sms", &sms, "Đơn hàng đã được giao ạ"),
            ("api", &api, "Vâng 0"),
            ("api", &api, "Vâng 1"),
        ] {
            let answer = reply_to(daemon, event, text).await;
            acked.reply(channel, &answer);
        }
        chat.agent_replies(daemon, &format!("Chào bạn ({run})"))
            .await;
        providers.wait_replies_at_providers(daemon).await;
        Self {
            run: run.to_owned(),
            acked,
            chat,
        }
    }

    /// While Kafka is away: API messages posted (left in flight across SIGTERM; the ones
    /// answered 202 are collected by [`Traffic::collect_late`]), a mail delivered to the
    /// mailbox and a visitor message sent.
    async fn while_kafka_is_away(
        &mut self,
        daemon: &Daemon,
        providers: &Providers,
    ) -> Vec<tokio::task::JoinHandle<Option<String>>> {
        let late = (0..3)
            .map(|i| {
                let url = daemon.url("");
                let id = format!("{}-late-{i}", self.run);
                tokio::spawn(async move {
                    let r = reqwest::Client::new()
                        .post(format!("{url}/v1/inbound/demo"))
                        .bearer_auth("demo-token")
                        .json(&json!({"contact": {"id": format!("cust-{id}")},
                                      "text": "Còn đó không?", "client_message_id": id}))
                        .send()
                        .await
                        .ok()?;
                    (r.status() == 202).then_some(id)
                })
            })
            .collect();
        let mail_id = format!("{}-2@khach.example.test", self.run);
        mail_in(providers, &mail_id, &mut self.acked).await;
        self.chat.send(&format!("{}-chat-2", self.run)).await;
        late
    }

    async fn collect_late(&mut self, late: Vec<tokio::task::JoinHandle<Option<String>>>) {
        for task in late {
            if let Some(id) = task.await.unwrap() {
                self.acked.message("api", id);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stopping, and what must hold after.

/// Messages in the daemon's producer queue (librdkafka statistics, every second in tests).
async fn producer_queue(daemon: &Daemon) -> f64 {
    daemon
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("omni_kafka_producer_queue_messages"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The producer queue once the traffic before it was acknowledged: the statistics (one snapshot a
/// second) may still show records of that traffic in flight, which would make the late messages
/// look as if they never came. The lowest value seen within a few seconds, 0 as soon as seen.
async fn settled_queue(daemon: &Daemon) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut lowest = f64::MAX;
    loop {
        lowest = lowest.min(producer_queue(daemon).await);
        if lowest <= 0.0 || Instant::now() > deadline {
            return lowest;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the late API messages are waiting in the producer for a broker that does not
/// answer: then they are in flight across SIGTERM.
async fn wait_in_flight(daemon: &Daemon, baseline: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while producer_queue(daemon).await < baseline + 3.0 {
        assert!(
            Instant::now() < deadline,
            "the late messages never reached the producer queue\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM while the visitor watches its socket: how long the daemon took to exit, and the
/// code and time of the visitor's close.
async fn terminate(
    mut daemon: Daemon,
    chat: &mut Chat,
) -> (
    Option<ExitStatus>,
    Duration,
    Daemon,
    (Option<u64>, Duration),
) {
    let stopping = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let status = daemon.terminate(Duration::from_secs(GRACE_SECS + 30));
        (status, started.elapsed(), daemon)
    });
    let closed = chat.closed_by_daemon().await;
    let (status, took, daemon) = stopping.await.unwrap();
    (status, took, daemon, closed)
}

/// The daemon's last log line, parsed.
fn last_line(daemon: &Daemon) -> Value {
    let log = daemon.log();
    let line = log.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line not JSON ({e}): {line}"))
}

/// Exited with the cut code within grace + 5 s, the last line counting what was left; the
/// visitor's socket was closed by the daemon (1001, going away) in that time too.
fn assert_cut_short(
    (status, took, daemon, (close_code, closed_after)): &(
        Option<ExitStatus>,
        Duration,
        Daemon,
        (Option<u64>, Duration),
    ),
) -> Value {
    let status = status.unwrap_or_else(|| panic!("still running; log:\n{}", daemon.log()));
    assert!(
        *took <= Duration::from_secs(GRACE_SECS + 5),
        "took {took:?} to exit; log:\n{}",
        daemon.log()
    );
    assert_eq!(
        status.code(),
        Some(CUT_SHORT),
        "exit {status:?}; log:\n{}",
        daemon.log()
    );
    assert_eq!(
        *close_code,
        Some(1001),
        "the visitor's socket was not closed as going away"
    );
    assert!(
        *closed_after <= Duration::from_secs(GRACE_SECS + 5),
        "the visitor's socket closed after {closed_after:?}"
    );
    let last = last_line(daemon);
    assert_eq!(last["exit_code"], CUT_SHORT, "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("shutdown complete, cut short by the grace period"),
        "{last}"
    );
    assert!(last["records_unflushed"].is_u64(), "{last}");
    assert!(
        last["replies_unfinished"].as_u64().unwrap_or(0) >= 1,
        "the hanging replies are not counted: {last}"
    );
    println!("exited in {took:?}, visitor's socket closed after {closed_after:?}: {last}");
    last
}

/// Every acknowledged message is on the inbound topic, every reply on the outbound topic, and
/// every reply of a channel with a provider has its fate on the delivery topic.
fn assert_accounted(bootstrap: &str, acked: &Acked) {
    let timeout = Duration::from_secs(90);
    wait_topic(bootstrap, "omni.inbound.v1", timeout, |rs| {
        not_among(&acked.inbound, rs, |r| r["data"]["message"]["id"].as_str())
    });
    wait_topic(bootstrap, "omni.outbound.v1", timeout, |rs| {
        not_among(&acked.replies, rs, |r| r["id"].as_str())
    });
    let mut with_provider = acked.replies.clone();
    with_provider.remove("api");
    wait_topic(bootstrap, "omni.delivery.v1", timeout, |rs| {
        not_among(&with_provider, rs, |r| {
            let fate = r["data"]["status"].as_str()?;
            ["sent", "failed", "outcome_unknown"]
                .contains(&fate)
                .then(|| r["data"]["outbound_event_id"].as_str())?
        })
    });
}

/// A healthy daemon, once the work is done, exits 0 quickly with the clean last line.
async fn assert_clean_exit(mut daemon: Daemon) {
    let (status, took, daemon) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let status = daemon.terminate(Duration::from_secs(GRACE_SECS + 30));
        (status, started.elapsed(), daemon)
    })
    .await
    .unwrap();
    let status = status.unwrap_or_else(|| panic!("still running; log:\n{}", daemon.log()));
    println!("clean exit took {took:?}");
    assert!(status.success(), "exit {status:?}; log:\n{}", daemon.log());
    assert!(took < Duration::from_secs(GRACE_SECS + 2), "took {took:?}");
    let last = last_line(&daemon);
    assert_eq!(
        last["message"], "shutdown complete: everything flushed",
        "{last}"
    );
    assert_eq!(last["exit_code"], 0, "{last}");
}

/// After the restart: the visitor resumes on the new daemon, everything acknowledged is
/// accounted for, and the new daemon, its work done, exits cleanly.
async fn assert_taken_over(second: Daemon, bootstrap: &str, mut traffic: Traffic) {
    traffic.chat.resume(&second, &mut traffic.acked).await;
    tokio::task::block_in_place(|| assert_accounted(bootstrap, &traffic.acked));
    assert_clean_exit(second).await;
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_then_sigterm_exits_in_time_and_loses_nothing_acknowledged() {
    let mut broker = Broker::durable();
    let providers = Providers::start().await;
    let env = providers.env();
    let bootstrap = broker.bootstrap();
    let daemon = start_daemon(&bootstrap, &env).await;
    Providers::seed_zalo_pair(&bootstrap).await;
    let mut traffic = Traffic::start(&daemon, &bootstrap, &providers, "dead").await;

    let baseline = settled_queue(&daemon).await;
    broker.stop();
    let late = traffic.while_kafka_is_away(&daemon, &providers).await;
    wait_in_flight(&daemon, baseline).await;
    let stopped = terminate(daemon, &mut traffic.chat).await;
    let last = assert_cut_short(&stopped);
    println!("broker dead: {last}");
    traffic.collect_late(late).await;

    broker.restart();
    providers.answer();
    let second = start_daemon(&bootstrap, &env).await;
    assert_taken_over(second, &bootstrap, traffic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stalled_then_sigterm_exits_in_time_and_loses_nothing_acknowledged() {
    let proxy_port = free_port();
    let mut broker = Broker::durable_behind(proxy_port);
    let proxy = StallProxy::start(proxy_port, broker.port).await;
    let providers = Providers::start().await;
    let env = providers.env();
    let bootstrap = format!("127.0.0.1:{proxy_port}");
    let daemon = start_daemon(&bootstrap, &env).await;
    Providers::seed_zalo_pair(&bootstrap).await;
    let mut traffic = Traffic::start(&daemon, &bootstrap, &providers, "slow").await;

    let baseline = settled_queue(&daemon).await;
    proxy.stall();
    let late = traffic.while_kafka_is_away(&daemon, &providers).await;
    wait_in_flight(&daemon, baseline).await;
    let stopped = terminate(daemon, &mut traffic.chat).await;
    let last = assert_cut_short(&stopped);
    println!("broker stalled: {last}");
    traffic.collect_late(late).await;

    proxy.resume();
    broker.assert_running();
    providers.answer();
    let second = start_daemon(&bootstrap, &env).await;
    assert_taken_over(second, &bootstrap, traffic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_never_answers_does_not_hold_the_exit() {
    let broker = Broker::durable();
    let providers = Providers::start().await;
    let env = providers.env();
    let bootstrap = broker.bootstrap();
    let daemon = start_daemon(&bootstrap, &env).await;
    Providers::seed_zalo_pair(&bootstrap).await;
    let mut traffic = Traffic::start(&daemon, &bootstrap, &providers, "mute").await;

    let stopped = terminate(daemon, &mut traffic.chat).await;
    let last = assert_cut_short(&stopped);
    println!("provider mute: {last}");
    assert_eq!(
        last["records_unflushed"], 0,
        "the broker was healthy: {last}"
    );
    assert_eq!(
        last["replies_unfinished"], 6,
        "at the hanging providers: one Messenger reply (two more queued behind it in its \
         conversation), one e-mail (SMTP greeting never came), one Zalo, one SMS; API and live \
         chat replies have no provider: {last}"
    );

    providers.answer();
    let second = start_daemon(&bootstrap, &env).await;
    assert_taken_over(second, &bootstrap, traffic).await;
}
