//! The e-mail channel against real servers: dovecot (IMAP, LMTP) and opensmtpd (SMTP) from the
//! harness, and the tansu Kafka broker. Mail goes in with IMAP APPEND (as a mail client or an
//! MTA would) and out through the channel's SMTP sender; events are read back from Kafka.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_bus::{BusConfig, BusMetrics, Producer};
use omni_channel::sink::PublishFuture;
use omni_channel::{ChannelSender, EventSink, FailureReason, SendProgress, SendRequest};
use omni_core::{
    Attachment, ChannelKind, ChannelRef, ConversationId, EventId, OutboundMessage, Secret, TenantId,
};
use omni_e2e::mail::{MailServer, TokenEndpoint, PASSWORD};
use omni_e2e::{read_topic, Broker, Daemon, Read};
use omni_email::{
    AttachmentStore, Checkpoint, CheckpointStore, EmailSendSettings, EmailSender, FirstStart,
    ImapSettings, KafkaCheckpoints, MailboxReader, MailboxSettings, Metrics, Security,
    SmtpSettings, ThreadIndex, TokenSource, TokenSources,
};
use prometheus::Registry;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const VI_TEXT: &str =
    "Chào shop, tôi đặt đơn hàng #1024 hôm thứ Hai nhưng chưa nhận được. Nhờ shop kiểm tra giúp ạ.";

/// The receiving server whose `Authentication-Results` the test mailboxes believe.
const TRUSTED_MX: &str = "mx.shop.example.test";

/// One test's world: mail servers, a broker, an attachment directory.
struct World {
    mail: Arc<MailServer>,
    broker: Broker,
    bus: BusConfig,
    producer: Producer,
    registry: Registry,
    metrics: Metrics,
    threads: Arc<ThreadIndex>,
    files: tempfile::TempDir,
    tenant: TenantId,
}

impl World {
    async fn new() -> Self {
        let mail = MailServer::shared();
        let broker = Broker::memory();
        let bus = BusConfig {
            bootstrap_servers: broker.bootstrap(),
            partitions: 1,
            ..BusConfig::default()
        };
        let registry = Registry::new();
        let bus_metrics = Arc::new(BusMetrics::register(&registry).unwrap());
        omni_bus::ensure_topics(&bus, bus_metrics.clone(), Duration::from_secs(10))
            .await
            .unwrap();
        let producer = Producer::new(&bus, bus_metrics).unwrap();
        producer.check_ready(Duration::from_secs(10)).await.unwrap();
        Self {
            mail,
            broker,
            bus,
            producer,
            metrics: Metrics::register(&registry).unwrap(),
            registry,
            threads: Arc::new(ThreadIndex::default()),
            files: tempfile::tempdir().unwrap(),
            tenant: TenantId::new("acme").unwrap(),
        }
    }

    fn mailbox(&self, address: &str, folder: &str, first_start: FirstStart) -> MailboxSettings {
        let mut imap = ImapSettings::new(
            "127.0.0.1",
            self.mail.imap_port,
            Security::Plain,
            address,
            Secret::new(PASSWORD),
        );
        imap.folder = folder.to_owned();
        imap.first_start = first_start;
        imap.command_timeout = Duration::from_secs(20);
        imap.initial_backoff = Duration::from_millis(100);
        imap.max_backoff = Duration::from_secs(1);
        MailboxSettings {
            tenant: self.tenant.clone(),
            address: address.to_owned(),
            display_name: Some("CSKH Shop".into()),
            imap,
            smtp: Some(SmtpSettings {
                host: "127.0.0.1".into(),
                port: self.mail.smtp_port,
                security: Security::Plain,
                user: None,
                password: None,
                timeout: Duration::from_secs(10),
            }),
            oauth2: None,
            attachments: AttachmentStore {
                dir: self.files.path().to_path_buf(),
                base_url: None,
                max_attachment_bytes: 10 * 1024 * 1024,
            },
            trusted_authserv_ids: vec![TRUSTED_MX.to_owned()],
        }
    }

    /// A mailbox that logs in with OAuth 2.0 through `endpoint`, sending over dovecot's
    /// submission service.
    fn oauth2_mailbox(&self, address: &str, endpoint: &TokenEndpoint) -> MailboxSettings {
        let mut settings = self.mailbox(address, "INBOX", FirstStart::New);
        settings.imap.password = None;
        settings.oauth2 = Some(endpoint.settings());
        if let Some(smtp) = settings.smtp.as_mut() {
            smtp.port = self.mail.submission_port;
            smtp.user = Some(address.to_owned());
        }
        settings
    }

    /// Starts a reader on `settings`, publishing through `sink`.
    fn start(
        &self,
        settings: MailboxSettings,
        sink: Arc<dyn EventSink>,
    ) -> (watch::Sender<bool>, JoinHandle<()>) {
        self.start_reader(settings, sink, None)
    }

    /// Starts a reader on `settings`, publishing through `sink`, logging in with `tokens`
    /// when given.
    fn start_reader(
        &self,
        settings: MailboxSettings,
        sink: Arc<dyn EventSink>,
        tokens: Option<Arc<TokenSource>>,
    ) -> (watch::Sender<bool>, JoinHandle<()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let checkpoints = Arc::new(KafkaCheckpoints::new(&self.bus, sink.clone()));
        let mut reader = MailboxReader::new(
            settings,
            self.bus.topics.inbound.clone(),
            sink,
            checkpoints,
            self.metrics.clone(),
            self.threads.clone(),
        )
        .unwrap();
        if let Some(tokens) = tokens {
            reader = reader.with_tokens(tokens);
        }
        let task = tokio::spawn(async move { reader.run(stop_rx).await.unwrap() });
        (stop_tx, task)
    }

    fn producer_sink(&self) -> Arc<dyn EventSink> {
        Arc::new(self.producer.clone())
    }

    /// Reads the inbound topic (off the runtime: the reader runs on it meanwhile).
    async fn events(&self, want: usize, settle: Duration) -> Vec<Read> {
        let (bootstrap, topic) = (self.broker.bootstrap(), self.bus.topics.inbound.clone());
        tokio::task::spawn_blocking(move || {
            read_topic(&bootstrap, &topic, want, Duration::from_secs(20), settle)
        })
        .await
        .unwrap()
    }

    async fn checkpoints(&self) -> BTreeMap<String, Checkpoint> {
        let bus = self.bus.clone();
        let topic = self.bus.topics.email_checkpoints.clone();
        tokio::task::spawn_blocking(move || omni_bus::table::read_table(&bus, &topic))
            .await
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, serde_json::from_slice(&v).unwrap()))
            .collect()
    }

    fn metric(&self, name: &str, label: &str) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| label.is_empty() || m.get_label().iter().any(|l| l.value() == label))
            // A family is either counters or gauges; the other reads 0.
            .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
            .sum()
    }

    /// Waits until `name{…label…}` reaches `value`.
    async fn wait_metric(&self, name: &str, label: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.metric(name, label) < value {
            assert!(
                Instant::now() < deadline,
                "{name}{{{label}}} = {}, wanted {value}; mail logs:\n{}",
                self.metric(name, label),
                self.mail.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn channel(address: &str) -> ChannelRef {
    ChannelRef::new(ChannelKind::Email, address)
}

/// A customer mail, CRLF line ends.
fn customer_mail(
    from: &str,
    to: &str,
    id: &str,
    extra_headers: &str,
    subject: &str,
    body: &str,
) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nMessage-ID: <{id}>\r\nDate: Mon, 1 Jul 2024 10:00:00 +0700\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n{extra_headers}Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// dovecot's UIDVALIDITY is the folder's creation time in seconds: waits until the clock has
/// passed `uidvalidity`, so a folder made again now gets a new one.
async fn clock_past(uidvalidity: u32) {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    assert!(
        u64::from(uidvalidity) + 3600 > now(),
        "UIDVALIDITY {uidvalidity} is not a recent time in seconds"
    );
    while now() <= u64::from(uidvalidity) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(events: &[Read]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.value["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_mail_appended_while_idling_arrives_on_kafka_within_seconds() {
    let w = World::new().await;
    let support = w.mail.address("support");
    let (stop, task) = w.start(
        w.mailbox(&support, "INBOX", FirstStart::New),
        w.producer_sink(),
    );
    // The first read sets the checkpoint at the folder's end, then idles.
    w.wait_metric("omni_email_checkpoint_writes_total", &support, 1.0)
        .await;
    // The reader enters IDLE right after its checkpoint; nothing says when it has, so the
    // mail comes a little later (a mail before IDLE would be found by IDLE's first update anyway).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let raw = format!(
        "From: =?UTF-8?B?Tmd1eeG7hW4gVsSDbiBBbg==?= <An.Nguyen@Khach.example.test>\r\nTo: {support}\r\nMessage-ID: <c1.an@khach.example.test>\r\nDate: Mon, 1 Jul 2024 10:00:00 +0700\r\nSubject: =?UTF-8?Q?=C4=90=C6=A1n_h=C3=A0ng_=231024_ch=C6=B0a_giao?=\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n--b1\r\nContent-Type: image/png; name=\"=?UTF-8?Q?h=C3=B3a_=C4=91=C6=A1n.png?=\"\r\nContent-Disposition: attachment; filename=\"=?UTF-8?Q?h=C3=B3a_=C4=91=C6=A1n.png?=\"\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--b1--\r\n",
        quoted_printable(VI_TEXT)
    );
    let appended = Instant::now();
    w.mail.append(&support, "INBOX", raw.as_bytes()).await;
    let events = w.events(1, Duration::from_millis(500)).await;
    let took = appended.elapsed();
    println!("APPEND → event read back from Kafka (including the reader's 0.5 s settle): {took:?}");
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(took < Duration::from_secs(5), "arrived after {took:?}");

    let e = &events[0];
    assert_eq!(e.key, b"acme");
    let v = &e.value;
    assert_eq!(v["type"], "omni.message.received");
    assert_eq!(v["tenant"], "acme");
    let ch = channel(&support);
    let expected_id = EventId::from_provider(&w.tenant, &ch, "message", "c1.an@khach.example.test");
    assert_eq!(v["id"], expected_id.to_string());
    let conversation = ConversationId::derive(
        &w.tenant,
        &ch,
        "an.nguyen@khach.example.test",
        Some("c1.an@khach.example.test"),
    );
    assert_eq!(v["subject"], conversation.to_string());
    let data = &v["data"];
    assert_eq!(data["conversation_id"], conversation.to_string());
    assert_eq!(data["channel"]["kind"], "email");
    assert_eq!(data["channel"]["account"], support);
    assert_eq!(data["contact"]["id"], "an.nguyen@khach.example.test");
    assert_eq!(data["contact"]["email"], "an.nguyen@khach.example.test");
    assert_eq!(data["contact"]["name"], "Nguyễn Văn An");
    assert_eq!(data["message"]["subject"], "Đơn hàng #1024 chưa giao");
    assert_eq!(data["message"]["text"], VI_TEXT);
    assert_eq!(data["message"]["id"], "c1.an@khach.example.test");
    let attachment = &data["message"]["attachments"][0];
    assert_eq!(attachment["name"], "hóa đơn.png");
    assert_eq!(attachment["content_type"], "image/png");
    let path = attachment["url"]
        .as_str()
        .unwrap()
        .strip_prefix("file://")
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"\x89PNG\r\n\x1a\n");
    // The whole mail is kept beside it.
    let original = std::path::Path::new(path).with_file_name("original.eml");
    assert_eq!(std::fs::read(original).unwrap(), raw.as_bytes());
    let errors: Vec<String> = omni_e2e::schema("message-received.schema.json")
        .iter_errors(data)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");

    // Read with BODY.PEEK[]: the mail is still unread for the people using the mailbox.
    let mails = w.mail.mails(&support, "INBOX").await;
    assert!(
        !mails[0].1.iter().any(|f| f.contains("Seen")),
        "{:?}",
        mails[0].1
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        w.metric("omni_email_messages_published_total", &support),
        1.0
    );
    let cps = w.checkpoints().await;
    let cp = &cps[&format!("acme/{support}/INBOX")];
    assert_eq!(cp.last_uid, 1);
}

#[tokio::test]
async fn a_reply_joins_its_conversation_and_a_new_mail_starts_another() {
    let w = World::new().await;
    let support = w.mail.address("support");
    let cust = "binh@khach.example.test";
    w.mail
        .append(
            &support,
            "INBOX",
            &customer_mail(
                cust,
                &support,
                "q1@khach.example.test",
                "",
                "Hỏi giá",
                "Áo này giá bao nhiêu?",
            ),
        )
        .await;
    // A reply to our answer (r1), as a mail client builds it.
    w.mail
        .append(
            &support,
            "INBOX",
            &customer_mail(
                cust,
                &support,
                "q2@khach.example.test",
                "In-Reply-To: <r1.omni@shop.example.test>\r\nReferences: <q1@khach.example.test> <r1.omni@shop.example.test>\r\n",
                "Re: Hỏi giá",
                "Vậy còn size M không ạ?\r\n\r\nOn Mon, 1 Jul 2024 at 11:00, CSKH Shop <s@shop> wrote:\r\n> Dạ áo giá 200.000đ ạ.",
            ),
        )
        .await;
    // A client that sends only In-Reply-To still joins.
    w.mail
        .append(
            &support,
            "INBOX",
            &customer_mail(
                cust,
                &support,
                "q3@khach.example.test",
                "In-Reply-To: <q1@khach.example.test>\r\n",
                "Re: Hỏi giá",
                "Cảm ơn shop",
            ),
        )
        .await;
    w.mail
        .append(
            &support,
            "INBOX",
            &customer_mail(
                cust,
                &support,
                "n1@khach.example.test",
                "",
                "Đổi địa chỉ",
                "Tôi muốn đổi địa chỉ giao hàng",
            ),
        )
        .await;
    let (stop, task) = w.start(
        w.mailbox(&support, "INBOX", FirstStart::All),
        w.producer_sink(),
    );
    let events = w.events(4, Duration::from_millis(500)).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(events.len(), 4);
    let conv: Vec<&str> = events
        .iter()
        .map(|e| e.value["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        conv[0], conv[1],
        "the reply joins the first mail's conversation"
    );
    assert_eq!(conv[0], conv[2], "In-Reply-To alone joins too");
    assert_ne!(conv[0], conv[3], "a new mail starts a new conversation");
    let root = ConversationId::derive(
        &w.tenant,
        &channel(&support),
        cust,
        Some("q1@khach.example.test"),
    );
    assert_eq!(conv[0], root.to_string());
    let reply = &events[1].value["data"]["message"];
    assert_eq!(
        reply["text"], "Vậy còn size M không ạ?",
        "quoted history trimmed"
    );
    assert_eq!(reply["reply_to"], "r1.omni@shop.example.test");
    assert_eq!(reply["subject"], "Re: Hỏi giá");
}

/// Sender authentication through dovecot: the trusted server's results reach the event; a mail
/// that fails DMARC while naming a customer's thread (with a forged passing header below the
/// trusted one) gets a conversation of its own; another sender reusing a known Message-ID is
/// published, flagged, under an id of its own; the real customer's reply still joins.
#[tokio::test]
async fn forged_mail_cannot_join_a_thread_and_a_reused_message_id_is_not_dropped() {
    let w = World::new().await;
    let support = w.mail.address("support");
    let cust = "hoa@khach.example.test";
    let results = |dmarc: &str| {
        format!(
            "Authentication-Results: {TRUSTED_MX}; spf={dmarc} smtp.mailfrom=khach.example.test; dkim={dmarc} header.d=khach.example.test; dmarc={dmarc} header.from=khach.example.test\r\n"
        )
    };
    let mails = [
        customer_mail(cust, &support, "a1@khach.example.test", &results("pass"), "Hoàn tiền", "Tôi cần hoàn tiền đơn #77"),
        customer_mail(
            cust,
            &support,
            "forged@evil.example.test",
            &format!("{}Authentication-Results: {TRUSTED_MX}; dmarc=pass header.from=khach.example.test\r\nReferences: <a1@khach.example.test>\r\n", results("fail")),
            "Re: Hoàn tiền",
            "Chuyển tiền vào tài khoản mới của tôi",
        ),
        customer_mail("mallory@evil.example.test", &support, "a1@khach.example.test", "", "hi", "same id, another sender"),
        customer_mail(
            cust,
            &support,
            "a2@khach.example.test",
            &format!("{}References: <a1@khach.example.test>\r\n", results("pass")),
            "Re: Hoàn tiền",
            "Shop kiểm tra giúp ạ",
        ),
    ];
    for m in &mails {
        w.mail.append(&support, "INBOX", m).await;
    }
    let (stop, task) = w.start(
        w.mailbox(&support, "INBOX", FirstStart::All),
        w.producer_sink(),
    );
    let events = w.events(4, Duration::from_millis(500)).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(events.len(), 4, "{events:?}");
    let data = |i: usize| &events[i].value["data"];
    let conv = |i: usize| events[i].value["subject"].as_str().unwrap().to_owned();
    assert_eq!(data(0)["authentication"]["authserv_id"], TRUSTED_MX);
    assert_eq!(data(0)["authentication"]["dmarc"], "pass");
    assert!(data(0).get("flags").is_none());
    // The forgery: its own conversation, flagged, with the topmost trusted results.
    assert_ne!(conv(1), conv(0));
    assert_eq!(data(1)["flags"], serde_json::json!(["thread_refused"]));
    assert_eq!(data(1)["authentication"]["dmarc"], "fail");
    // The reused Message-ID: published, not dropped as a repeat of the first mail.
    assert_eq!(data(2)["flags"], serde_json::json!(["message_id_reused"]));
    assert_eq!(data(2)["message"]["id"], "a1@khach.example.test");
    assert_ne!(events[2].value["id"], events[0].value["id"]);
    assert!(
        data(2).get("authentication").is_none(),
        "no trusted results on it"
    );
    // The customer's real reply joins the first mail's conversation.
    assert_eq!(conv(3), conv(0));
    let schema = omni_e2e::schema("message-received.schema.json");
    for e in &events {
        assert!(schema.is_valid(&e.value["data"]), "{}", e.value);
    }
    assert_eq!(
        w.metric("omni_email_messages_suspicious_total", "thread_refused"),
        1.0
    );
    assert_eq!(
        w.metric("omni_email_messages_suspicious_total", "message_id_reused"),
        1.0
    );
}

/// Publishes through the producer until `after` inbound events went out, then stops the
/// reader and fails every later write: a crash right after Kafka acknowledged a mail and
/// before its checkpoint was written.
struct CrashAfter {
    inner: Producer,
    inbound: String,
    after: usize,
    published: AtomicUsize,
    dead: AtomicBool,
    stop: watch::Sender<bool>,
}

impl EventSink for CrashAfter {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        key: &'a [u8],
        payload: &'a [u8],
    ) -> PublishFuture<'a> {
        Box::pin(async move {
            if self.dead.load(Ordering::SeqCst) {
                return Err(omni_channel::SinkError {
                    topic: topic.to_owned(),
                    reason: "crashed".into(),
                });
            }
            self.inner.publish(topic, key, payload).await?;
            if topic == self.inbound
                && self.published.fetch_add(1, Ordering::SeqCst) + 1 == self.after
            {
                self.dead.store(true, Ordering::SeqCst);
                let _ = self.stop.send(true);
            }
            Ok(())
        })
    }

    fn delete<'a>(&'a self, topic: &'a str, key: &'a [u8]) -> PublishFuture<'a> {
        self.inner.delete(topic, key)
    }
}

#[tokio::test]
async fn a_restart_in_the_middle_of_a_batch_loses_and_duplicates_nothing() {
    const M: usize = 12;
    const N: usize = 5;
    let w = World::new().await;
    let support = w.mail.address("support");
    for i in 1..=M {
        w.mail
            .append(
                &support,
                "INBOX",
                &customer_mail(
                    &format!("c{i}@khach.example.test"),
                    &support,
                    &format!("m{i}@khach.example.test"),
                    "",
                    &format!("Thư {i}"),
                    "Nội dung",
                ),
            )
            .await;
    }
    let settings = w.mailbox(&support, "INBOX", FirstStart::All);
    let key = format!("acme/{support}/INBOX");

    // First run: crashes after N mails were acknowledged, before the Nth checkpoint.
    let (stop_tx, stop_rx) = watch::channel(false);
    let crash = Arc::new(CrashAfter {
        inner: w.producer.clone(),
        inbound: w.bus.topics.inbound.clone(),
        after: N,
        published: AtomicUsize::new(0),
        dead: AtomicBool::new(false),
        stop: stop_tx,
    });
    let sink: Arc<dyn EventSink> = crash.clone();
    let reader = MailboxReader::new(
        settings.clone(),
        w.bus.topics.inbound.clone(),
        sink.clone(),
        Arc::new(KafkaCheckpoints::new(&w.bus, sink)),
        w.metrics.clone(),
        w.threads.clone(),
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(20), reader.run(stop_rx))
        .await
        .unwrap()
        .unwrap();
    let cps = w.checkpoints().await;
    assert_eq!(
        cps[&key].last_uid,
        u32::try_from(N - 1).unwrap(),
        "the Nth checkpoint was lost in the crash"
    );

    // Restart with a healthy producer: picks up at mail N again, finds its event on the
    // inbound topic after the checkpoint's mark, and finishes the batch.
    let (stop, task) = w.start(settings, w.producer_sink());
    w.wait_metric(
        "omni_email_checkpoint_last_uid",
        &support,
        f64::from(u32::try_from(M).unwrap()),
    )
    .await;
    let events = w.events(M, Duration::from_millis(800)).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let all = ids(&events);
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), M, "every mail published, none lost");
    assert_eq!(
        all.len(),
        M,
        "the mail in flight at the crash was found on the inbound topic, not published again"
    );
    assert_eq!(
        w.metric("omni_email_messages_skipped_total", "duplicate"),
        1.0
    );
    let cps = w.checkpoints().await;
    assert_eq!(cps[&key].last_uid, u32::try_from(M).unwrap());
    assert!(w.metric("omni_email_checkpoint_writes_total", &support) >= M as f64);
}

#[tokio::test]
async fn a_uidvalidity_change_rescans_without_republishing() {
    let w = World::new().await;
    let support = w.mail.address("support");
    let folder = "Support";
    w.mail.create_folder(&support, folder).await;
    let mails: Vec<Vec<u8>> = (1..=3)
        .map(|i| {
            customer_mail(
                "lan@khach.example.test",
                &support,
                &format!("u{i}@khach.example.test"),
                "",
                &format!("Thư {i}"),
                "Xin chào",
            )
        })
        .collect();
    for m in &mails {
        w.mail.append(&support, folder, m).await;
    }
    let settings = w.mailbox(&support, folder, FirstStart::All);
    let (stop, task) = w.start(settings.clone(), w.producer_sink());
    assert_eq!(w.events(3, Duration::from_millis(300)).await.len(), 3);
    w.wait_metric("omni_email_checkpoint_last_uid", &support, 3.0)
        .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let before = w.mail.uidvalidity(&support, folder).await;

    // The folder is deleted and made again (a migration, a restore): same mail, new UIDs.
    w.mail.delete_folder(&support, folder).await;
    clock_past(before).await;
    w.mail.create_folder(&support, folder).await;
    for m in &mails {
        w.mail.append(&support, folder, m).await;
    }
    w.mail
        .append(
            &support,
            folder,
            &customer_mail(
                "lan@khach.example.test",
                &support,
                "u4@khach.example.test",
                "",
                "Thư 4",
                "Mới",
            ),
        )
        .await;
    assert_ne!(w.mail.uidvalidity(&support, folder).await, before);

    let (stop, task) = w.start(settings, w.producer_sink());
    w.wait_metric("omni_email_checkpoint_last_uid", &support, 4.0)
        .await;
    let events = w.events(4, Duration::from_millis(800)).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(
        events.len(),
        4,
        "only the new mail was published again: {:?}",
        ids(&events)
    );
    assert_eq!(
        events[3].value["data"]["message"]["id"],
        "u4@khach.example.test"
    );
    assert_eq!(
        w.metric("omni_email_uidvalidity_changes_total", &support),
        1.0
    );
    assert_eq!(
        w.metric("omni_email_messages_skipped_total", "duplicate"),
        3.0
    );
    let cp = &w.checkpoints().await[&format!("acme/{support}/{folder}")];
    assert_eq!(cp.uidvalidity, w.mail.uidvalidity(&support, folder).await);
    assert_eq!(cp.last_uid, 4);
}

/// Deletes `folder` and creates it again (a new UIDVALIDITY) holding `count` customer mails
/// `<tag><i>@khach.example.test` and one more, `<tag>-new@khach.example.test`.
async fn recreate_folder(w: &World, support: &str, folder: &str, tag: &str, count: usize) {
    let mails: Vec<Vec<u8>> = (1..=count)
        .map(|i| {
            customer_mail(
                "lan@khach.example.test",
                support,
                &format!("{tag}{i}@khach.example.test"),
                "",
                &format!("Thư {i}"),
                "Xin chào",
            )
        })
        .collect();
    let before = w.mail.uidvalidity(support, folder).await;
    w.mail.delete_folder(support, folder).await;
    clock_past(before).await;
    w.mail.create_folder(support, folder).await;
    for m in &mails {
        w.mail.append(support, folder, m).await;
    }
    w.mail
        .append(
            support,
            folder,
            &customer_mail(
                "lan@khach.example.test",
                support,
                &format!("{tag}-new@khach.example.test"),
                "",
                "Mới",
                "Thư mới",
            ),
        )
        .await;
    assert_ne!(w.mail.uidvalidity(support, folder).await, before);
}

#[tokio::test]
async fn a_uidvalidity_change_with_first_start_new_skips_the_folders_old_mail_and_says_so() {
    let w = World::new().await;
    let support = w.mail.address("support");
    let folder = "Support";
    w.mail.create_folder(&support, folder).await;
    let settings = w.mailbox(&support, folder, FirstStart::New);
    let (stop, task) = w.start(settings.clone(), w.producer_sink());
    w.wait_metric("omni_email_checkpoint_writes_total", &support, 1.0)
        .await;
    stop.send(true).unwrap();
    task.await.unwrap();

    // Migrated to a new server: five old mails come back under new UIDs, one is new.
    recreate_folder(&w, &support, folder, "old", 5).await;
    let (stop, task) = w.start(settings, w.producer_sink());
    w.wait_metric("omni_email_uidvalidity_changes_total", &support, 1.0)
        .await;
    w.wait_metric("omni_email_checkpoint_last_uid", &support, 6.0)
        .await;
    let arrived = customer_mail(
        "lan@khach.example.test",
        &support,
        "after@khach.example.test",
        "",
        "Sau",
        "Thư đến sau khi chuyển",
    );
    w.mail.append(&support, folder, &arrived).await;
    let events = w.events(1, Duration::from_millis(800)).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let published: Vec<&Value> = events
        .iter()
        .map(|e| &e.value["data"]["message"]["id"])
        .collect();
    assert_eq!(
        published,
        ["after@khach.example.test"],
        "the folder's existing mail is not published, mail arriving later is"
    );
    assert_eq!(
        w.metric("omni_email_messages_skipped_total", "uidvalidity_changed"),
        6.0
    );
}

#[tokio::test]
async fn a_uidvalidity_change_skips_mail_published_beyond_the_checkpoints_recent_ids() {
    let w = World::new().await;
    let support = w.mail.address("support");
    let folder = "Archive";
    w.mail.create_folder(&support, folder).await;
    let settings = w.mailbox(&support, folder, FirstStart::All);
    let key = settings.checkpoint_key();
    // A mailbox that published "old1".."old3" long ago: its checkpoint's recent ids have
    // moved on (more than 2,000 mails since), only the published topic remembers them.
    let store = KafkaCheckpoints::new(&w.bus, w.producer_sink());
    for i in 1..=3 {
        let hash = omni_email::checkpoint::provider_hash(&format!("old{i}@khach.example.test"));
        store.remember_published(&key, &hash).await.unwrap();
    }
    let uidvalidity = w.mail.uidvalidity(&support, folder).await;
    store
        .save(
            &key,
            &Checkpoint {
                uidvalidity,
                last_uid: 0,
                recent: (0..2000).map(|i| format!("{i:016x}")).collect(),
                ..Checkpoint::default()
            },
        )
        .await
        .unwrap();

    recreate_folder(&w, &support, folder, "old", 3).await;
    let (stop, task) = w.start(settings, w.producer_sink());
    w.wait_metric("omni_email_checkpoint_last_uid", &support, 4.0)
        .await;
    let events = w.events(1, Duration::from_millis(800)).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let published: Vec<&Value> = events
        .iter()
        .map(|e| &e.value["data"]["message"]["id"])
        .collect();
    assert_eq!(published, ["old-new@khach.example.test"]);
    assert_eq!(
        w.metric("omni_email_messages_skipped_total", "duplicate"),
        3.0
    );
    let cp = &w.checkpoints().await[&key];
    assert_eq!(cp.rescan_until, None, "the re-read is over");
    assert_eq!(cp.last_uid, 4);
}

#[tokio::test]
async fn broken_mime_and_a_huge_mail_are_handled_without_a_crash() {
    let w = World::new().await;
    let support = w.mail.address("support");
    // Unclosed multipart, invalid base64, an unknown charset, a header with no colon.
    let broken = format!(
        "From: hoa@khach.example.test\r\nTo: {support}\r\nMessage-ID: <broken@khach.example.test>\r\nSubject: =?x-unknown?Q?=C4=90?= =?UTF-8?B?not base64!?=\r\nthis header has no colon\r\nContent-Type: multipart/mixed; boundary=\"never-closed\"\r\n\r\n--never-closed\r\nContent-Type: text/plain; charset=x-klingon\r\n\r\nvẫn đọc được\r\n--never-closed\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not*base64***\r\n"
    );
    // About 6 MB of attachment: larger than this mailbox's 1 MiB limit.
    let huge_b64 = "QUJDRA==\r\n".repeat(6 * 1024 * 1024 / 10);
    let huge = format!(
        "From: hoa@khach.example.test\r\nTo: {support}\r\nMessage-ID: <huge@khach.example.test>\r\nSubject: File lớn\r\nContent-Type: multipart/mixed; boundary=\"h\"\r\n\r\n--h\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGửi shop file video\r\n--h\r\nContent-Type: video/mp4; name=\"clip.mp4\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{huge_b64}--h--\r\n"
    );
    w.mail.append(&support, "INBOX", broken.as_bytes()).await;
    w.mail.append(&support, "INBOX", huge.as_bytes()).await;
    w.mail
        .append(
            &support,
            "INBOX",
            b"\x00\x01\x02 no headers at all \xff\xfe",
        )
        .await;
    w.mail
        .append(
            &support,
            "INBOX",
            &customer_mail(
                "hoa@khach.example.test",
                &support,
                "after@khach.example.test",
                "",
                "Sau đó",
                "Thư bình thường",
            ),
        )
        .await;
    let mut settings = w.mailbox(&support, "INBOX", FirstStart::All);
    settings.imap.max_message_bytes = 1024 * 1024;
    let (stop, task) = w.start(settings, w.producer_sink());
    w.wait_metric("omni_email_checkpoint_last_uid", &support, 4.0)
        .await;
    let events = w.events(3, Duration::from_millis(800)).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let by_id: BTreeMap<&str, &Value> = events
        .iter()
        .map(|e| {
            (
                e.value["data"]["message"]["id"].as_str().unwrap(),
                &e.value["data"]["message"],
            )
        })
        .collect();
    assert_eq!(by_id.len(), 3, "{:?}", by_id.keys());
    assert!(by_id["broken@khach.example.test"]["text"]
        .as_str()
        .unwrap()
        .contains("vẫn đọc được"));
    assert_eq!(
        by_id["huge@khach.example.test"]["text"],
        "Gửi shop file video"
    );
    assert_eq!(by_id["after@khach.example.test"]["text"], "Thư bình thường");
    assert_eq!(
        w.metric("omni_email_messages_truncated_total", &support),
        1.0
    );
    assert_eq!(
        w.metric("omni_email_messages_skipped_total", "unreadable")
            + w.metric("omni_email_messages_skipped_total", "no_sender"),
        1.0
    );
    assert_eq!(
        w.metric("omni_email_imap_reconnects_total", ""),
        0.0,
        "no session failed"
    );
}

#[tokio::test]
async fn auto_replies_and_bounces_are_not_routed_as_customer_messages() {
    let w = World::new().await;
    let support = w.mail.address("support");
    let ooo = customer_mail(
        "sale@doitac.example.test",
        &support,
        "ooo@doitac.example.test",
        "Auto-Submitted: auto-replied\r\n",
        "Vắng mặt: Re: Báo giá",
        "Tôi đang nghỉ phép đến 10/7.",
    );
    let bounce = format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.test>\r\nTo: {support}\r\nMessage-ID: <bounce1@mx.example.test>\r\nSubject: Undelivered Mail Returned to Sender\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"r\"\r\n\r\n--r\r\nContent-Type: text/plain\r\n\r\nThis is the mail system.\r\n--r\r\nContent-Type: message/delivery-status\r\n\r\nFinal-Recipient: rfc822; x@unknown.test\r\nAction: failed\r\nStatus: 5.1.1\r\n--r--\r\n"
    );
    let bulk = customer_mail(
        "news@shop.example.test",
        &support,
        "news1@shop.example.test",
        "Precedence: bulk\r\n",
        "Khuyến mãi",
        "Giảm giá 50%",
    );
    let person = customer_mail(
        "mai@khach.example.test",
        &support,
        "p1@khach.example.test",
        "",
        "Hỏi hàng",
        "Còn hàng không ạ?",
    );
    for m in [ooo, bounce.into_bytes(), bulk, person] {
        w.mail.append(&support, "INBOX", &m).await;
    }
    let (stop, task) = w.start(
        w.mailbox(&support, "INBOX", FirstStart::All),
        w.producer_sink(),
    );
    w.wait_metric("omni_email_checkpoint_last_uid", &support, 4.0)
        .await;
    let events = w.events(1, Duration::from_millis(800)).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].value["data"]["message"]["id"],
        "p1@khach.example.test"
    );
    assert_eq!(
        w.metric("omni_email_messages_skipped_total", "auto_reply"),
        2.0
    );
    assert_eq!(w.metric("omni_email_messages_skipped_total", "bounce"), 1.0);
}

fn reply_request(
    w: &World,
    support: &str,
    customer: &str,
    parent: Option<&str>,
    attachments: Vec<Attachment>,
) -> SendRequest {
    let ch = channel(support);
    SendRequest {
        event_id: EventId::new_random(),
        message: OutboundMessage {
            tenant: w.tenant.clone(),
            conversation_id: ConversationId::derive(&w.tenant, &ch, customer, parent),
            channel: ch,
            recipient: customer.into(),
            agent_id: Some("agent-7".into()),
            text: "Dạ, đơn hàng #1024 của anh/chị đã được giao hôm nay ạ. Cảm ơn quý khách!".into(),
            subject: Some("Re: Đơn hàng #1024".into()),
            attachments,
            reply_to: parent.map(str::to_owned),
            csat_survey: false,
            template: None,
        },
    }
}

#[tokio::test]
async fn an_agent_reply_goes_out_over_smtp_with_threading_headers() {
    let w = World::new().await;
    let support = w.mail.address("support");
    let customer = w.mail.address("khach");
    // The customer's second mail of a thread (root q1) arrives with an attachment; the reader
    // publishes it and records its thread.
    let inbound = format!(
        "From: {customer}\r\nTo: {support}\r\nMessage-ID: <q2@khach.example.test>\r\nIn-Reply-To: <r1.omni@example.test>\r\nReferences: <q1@khach.example.test> <r1.omni@example.test>\r\nSubject: Re: =?UTF-8?Q?=C4=90=C6=A1n_h=C3=A0ng_=231024?=\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nẢnh đơn hàng đây ạ\r\n--b\r\nContent-Type: image/png; name=\"don.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--b--\r\n"
    );
    w.mail.append(&support, "INBOX", inbound.as_bytes()).await;
    let (stop, task) = w.start(
        w.mailbox(&support, "INBOX", FirstStart::All),
        w.producer_sink(),
    );
    let events = w.events(1, Duration::from_millis(200)).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let stored: Attachment =
        serde_json::from_value(events[0].value["data"]["message"]["attachments"][0].clone())
            .unwrap();

    let sender = EmailSender::new(
        [&w.mailbox(&support, "INBOX", FirstStart::New)],
        EmailSendSettings::default(),
        w.threads.clone(),
    )
    .unwrap();
    let request = reply_request(
        &w,
        &support,
        &customer,
        Some("q2@khach.example.test"),
        vec![stored],
    );
    let mut progress = SendProgress::default();
    let receipt = sender.send(&request, &mut progress).await.unwrap();
    let message_id = format!("{}.omni@example.test", request.event_id);
    assert_eq!(
        receipt.provider_message_id.as_deref(),
        Some(message_id.as_str())
    );

    // Read back from the customer's mailbox.
    let mails = w
        .mail
        .wait_for_mails(&customer, "INBOX", 1, Duration::from_secs(10))
        .await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&mails[0])
        .unwrap();
    assert_eq!(parsed.message_id(), Some(message_id.as_str()));
    assert_eq!(parsed.subject(), Some("Re: Đơn hàng #1024"), "no Re: Re:");
    let headers: BTreeMap<String, String> = parsed
        .headers_raw()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.trim().replace(['\r', '\n'], "").replace('\t', " "),
            )
        })
        .collect();
    assert_eq!(headers["in-reply-to"], "<q2@khach.example.test>");
    let refs: Vec<&str> = headers["references"].split_whitespace().collect();
    assert_eq!(
        refs,
        [
            "<q1@khach.example.test>",
            "<r1.omni@example.test>",
            "<q2@khach.example.test>"
        ],
        "the parent's References, then the parent"
    );
    assert_eq!(
        parsed.from().unwrap().first().unwrap().address(),
        Some(support.as_str())
    );
    assert_eq!(
        parsed.from().unwrap().first().unwrap().name(),
        Some("CSKH Shop")
    );
    assert_eq!(
        parsed.body_text(0).unwrap().trim(),
        "Dạ, đơn hàng #1024 của anh/chị đã được giao hôm nay ạ. Cảm ơn quý khách!"
    );
    let attachment = parsed
        .attachments()
        .next()
        .expect("the attachment went out");
    assert_eq!(attachment.contents(), b"\x89PNG\r\n\x1a\n");

    // A retry of a reply that already went out does not send it twice.
    let again = sender.send(&request, &mut progress).await.unwrap();
    assert_eq!(again, receipt);
    // A window for a late second copy to arrive: what must not happen has no condition.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.mail.mails(&customer, "INBOX").await.len(), 1);
}

#[tokio::test]
async fn smtp_refusals_and_outages_are_classified() {
    let w = World::new().await;
    let support = w.mail.address("support");
    let sender = EmailSender::new(
        [&w.mailbox(&support, "INBOX", FirstStart::New)],
        EmailSendSettings::default(),
        w.threads.clone(),
    )
    .unwrap();
    // opensmtpd answers 550 for a domain it does not serve.
    let request = reply_request(&w, &support, "nobody@unknown.test", None, vec![]);
    let err = sender
        .send(&request, &mut SendProgress::default())
        .await
        .unwrap_err();
    assert_eq!(err.reason, FailureReason::InvalidRecipient, "{err}");
    assert!(!err.retryable);
    assert!(err.detail.contains("550"), "{}", err.detail);

    // An address that is not one.
    let request = reply_request(&w, &support, "not an address", None, vec![]);
    let err = sender
        .send(&request, &mut SendProgress::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.reason, err.retryable),
        (FailureReason::InvalidRecipient, false)
    );

    // A file outside the attachment store is never attached.
    let request = reply_request(
        &w,
        &support,
        "khach@example.test",
        None,
        vec![Attachment {
            url: "file:///etc/passwd".into(),
            content_type: None,
            name: None,
            size: None,
        }],
    );
    let err = sender
        .send(&request, &mut SendProgress::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.reason, err.retryable),
        (FailureReason::InvalidMessage, false)
    );

    // A mailbox this daemon does not send for.
    let mut request = reply_request(&w, &support, "khach@example.test", None, vec![]);
    request.message.channel.account = "other@example.test".into();
    let err = sender
        .send(&request, &mut SendProgress::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.reason, err.retryable),
        (FailureReason::AccountNotConfigured, false)
    );

    // The SMTP server is down: may pass, so the dispatcher retries.
    let mut down = w.mailbox(&support, "INBOX", FirstStart::New);
    down.smtp.as_mut().unwrap().port = omni_e2e::free_port();
    let sender =
        EmailSender::new([&down], EmailSendSettings::default(), w.threads.clone()).unwrap();
    let request = reply_request(&w, &support, "khach@example.test", None, vec![]);
    let err = sender
        .send(&request, &mut SendProgress::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.reason, err.retryable),
        (FailureReason::ProviderUnavailable, true),
        "{err}"
    );
}

#[tokio::test]
async fn idle_is_reissued_on_its_timer_and_a_dropped_connection_is_remade() {
    let w = World::new().await;
    let support = w.mail.address("support");
    let mut settings = w.mailbox(&support, "INBOX", FirstStart::New);
    settings.imap.idle_refresh = Duration::from_secs(1);
    let (stop, task) = w.start(settings, w.producer_sink());
    w.wait_metric("omni_email_checkpoint_writes_total", &support, 1.0)
        .await;
    w.wait_metric("omni_email_idle_refreshes_total", &support, 2.0)
        .await;
    w.mail
        .append(
            &support,
            "INBOX",
            &customer_mail(
                "x@khach.example.test",
                &support,
                "after-refresh@khach.example.test",
                "",
                "Hi",
                "Sau khi làm mới IDLE",
            ),
        )
        .await;
    assert_eq!(w.events(1, Duration::from_millis(100)).await.len(), 1);

    // The server drops the connection: the reader reconnects (with backoff) and resumes from
    // its checkpoint, so mail that arrived meanwhile is not missed.
    w.mail.kick(&support);
    w.mail
        .append(
            &support,
            "INBOX",
            &customer_mail(
                "x@khach.example.test",
                &support,
                "after-kick@khach.example.test",
                "",
                "Hi",
                "Sau khi mất kết nối",
            ),
        )
        .await;
    let events = w.events(2, Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(ids(&events).len(), 2, "{events:?}");
    assert_eq!(
        events[1].value["data"]["message"]["id"],
        "after-kick@khach.example.test"
    );
    assert!(w.metric("omni_email_imap_reconnects_total", &support) >= 1.0);
}

fn quoted_printable(s: &str) -> String {
    let mut out = String::new();
    let mut line = 0;
    for b in s.bytes() {
        let piece = if b.is_ascii_alphanumeric() || b == b' ' || b == b'.' || b == b',' {
            (b as char).to_string()
        } else {
            format!("={b:02X}")
        };
        if line + piece.len() > 72 {
            out.push_str("=\r\n");
            line = 0;
        }
        line += piece.len();
        out.push_str(&piece);
    }
    out
}

/// The daemon end to end: a mailbox configured like an operator would (environment), a mail
/// arriving while it idles reaches `omni.inbound.v1`, an agent's reply through the API goes
/// out over SMTP with the threading headers, and its delivery event says `sent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reads_a_mailbox_and_sends_the_agents_reply() {
    let mail = MailServer::shared();
    let broker = Broker::memory();
    let files = tempfile::tempdir().unwrap();
    let support = mail.address("support");
    let customer = mail.address("khach");
    let k = |s: &str| format!("OMNI__TENANTS__DEMO__EMAIL__MAILBOXES__SUPPORT__{s}");
    let env: Vec<(String, String)> = vec![
        (
            "OMNI__EMAIL__ATTACHMENT_DIR".into(),
            files.path().display().to_string(),
        ),
        (k("ADDRESS"), support.clone()),
        (k("DISPLAY_NAME"), "CSKH Shop".into()),
        (k("IMAP__HOST"), "127.0.0.1".into()),
        (k("IMAP__PORT"), mail.imap_port.to_string()),
        (k("IMAP__SECURITY"), "plain".into()),
        (k("IMAP__PASSWORD"), PASSWORD.into()),
        (k("SMTP__HOST"), "127.0.0.1".into()),
        (k("SMTP__PORT"), mail.smtp_port.to_string()),
        (k("SMTP__SECURITY"), "plain".into()),
    ];
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let daemon = omni_e2e::Daemon::start(&broker, &env_refs).await;
    // `first_start = new`: wait until the reader is idling before the mail arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    while omni_e2e::metric_value(&daemon.metrics().await, "omni_email_imap_connected", &[]) < 1.0 {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let raw = format!(
        "From: Khách <{customer}>\r\nTo: {support}\r\nMessage-ID: <d1@khach.example.test>\r\nSubject: =?UTF-8?Q?H=E1=BB=8Fi_v=E1=BB=81_=C4=91=C6=A1n_h=C3=A0ng?=\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{VI_TEXT}\r\n"
    );
    mail.append(&support, "INBOX", raw.as_bytes()).await;
    let inbound = read_topic(
        &broker.bootstrap(),
        "omni.inbound.v1",
        1,
        Duration::from_secs(20),
        Duration::from_millis(200),
    );
    assert_eq!(inbound.len(), 1, "{}", daemon.log());
    let event = &inbound[0].value;
    assert_eq!(event["data"]["message"]["text"], VI_TEXT);
    assert_eq!(event["data"]["message"]["subject"], "Hỏi về đơn hàng");
    assert_eq!(event["data"]["channel"]["kind"], "email");
    // Mail comes in through the same ingress as every webhook: counted like any message.
    let received = omni_e2e::metric_value(
        &daemon.metrics().await,
        "omni_messages_received_total",
        &[r#"channel="email""#, r#"tenant="demo""#],
    );
    assert_eq!(received, 1.0, "mail not counted as received");

    let reply = serde_json::json!({
        "conversation_id": event["subject"],
        "channel": event["data"]["channel"],
        "recipient": customer,
        "agent_id": "lan",
        "subject": "Hỏi về đơn hàng",
        "text": "Dạ, shop đã gửi hàng hôm nay ạ.",
        "reply_to": "d1@khach.example.test",
    });
    let (status, body) = omni_e2e::post_json(
        &daemon.url("/v1/tenants/demo/replies"),
        "demo-agent-token",
        &reply,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let mails = mail
        .wait_for_mails(&customer, "INBOX", 1, Duration::from_secs(20))
        .await;
    assert_eq!(mails.len(), 1, "{}", daemon.log());
    let parsed = mail_parser::MessageParser::default()
        .parse(&mails[0])
        .unwrap();
    assert_eq!(parsed.subject(), Some("Re: Hỏi về đơn hàng"));
    assert_eq!(
        parsed.in_reply_to().as_text(),
        Some("d1@khach.example.test")
    );
    assert!(parsed.body_text(0).unwrap().contains("shop đã gửi hàng"));
    let deliveries = read_topic(
        &broker.bootstrap(),
        "omni.delivery.v1",
        1,
        Duration::from_secs(20),
        Duration::from_millis(200),
    );
    assert_eq!(
        deliveries[0].value["data"]["status"],
        "sent",
        "{}",
        daemon.log()
    );
    assert_eq!(deliveries[0].value["data"]["channel"]["kind"], "email");
}

/// The environment of one mailbox of tenant `acme` read by the daemon from `first_start = all`.
fn mailbox_env(name: &str, address: &str, mail: &MailServer) -> Vec<(String, String)> {
    let k = |s: &str| format!("OMNI__TENANTS__ACME__EMAIL__MAILBOXES__{name}__{s}");
    vec![
        (k("ADDRESS"), address.to_owned()),
        (k("DISPLAY_NAME"), "CSKH Shop".into()),
        (k("IMAP__HOST"), "127.0.0.1".into()),
        (k("IMAP__PORT"), mail.imap_port.to_string()),
        (k("IMAP__SECURITY"), "plain".into()),
        (k("IMAP__PASSWORD"), PASSWORD.into()),
        (k("IMAP__FIRST_START"), "all".into()),
        (k("SMTP__HOST"), "127.0.0.1".into()),
        (k("SMTP__PORT"), mail.smtp_port.to_string()),
        (k("SMTP__SECURITY"), "plain".into()),
    ]
}

/// Every customer mail on the inbound topic, by Message-ID: how often, and the last event.
fn inbound_by_message_id(broker: &Broker, settle: Duration) -> BTreeMap<String, (usize, Value)> {
    let mut out: BTreeMap<String, (usize, Value)> = BTreeMap::new();
    for r in read_topic(
        &broker.bootstrap(),
        "omni.inbound.v1",
        usize::MAX,
        settle,
        Duration::ZERO,
    ) {
        let id = r.value["data"]["message"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let e = out.entry(id).or_insert((0, Value::Null));
        e.0 += 1;
        e.1 = r.value;
    }
    out
}

/// Waits until `customer`'s mailbox holds our reply to `parent`; returns its Message-ID and
/// its `References` ids. (A reply may arrive twice when a replica died between sending it and
/// committing it: both copies carry the same headers.)
async fn reply_to(mail: &MailServer, customer: &str, parent: &str) -> (String, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (raw, _) in mail.mails(customer, "INBOX").await {
            let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
            if parsed.in_reply_to().as_text() == Some(parent) {
                let refs = parsed
                    .references()
                    .as_text_list()
                    .map(|l| l.iter().map(|r| r.to_string()).collect())
                    .unwrap_or_else(|| {
                        parsed
                            .references()
                            .as_text()
                            .map(|r| vec![r.to_owned()])
                            .unwrap_or_default()
                    });
                return (parsed.message_id().unwrap().to_owned(), refs);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no reply to {parent} in {customer}'s mailbox"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An agent's reply to `parent` through `daemon`'s API.
async fn answer(
    daemon: &Daemon,
    mailbox: &str,
    customer: &str,
    conversation: &Value,
    parent: &str,
) {
    let reply = serde_json::json!({
        "conversation_id": conversation,
        "channel": {"kind": "email", "account": mailbox},
        "recipient": customer,
        "agent_id": "lan",
        "subject": "Hỏi đơn hàng",
        "text": "Dạ, shop kiểm tra ngay ạ.",
        "reply_to": parent,
    });
    let (status, body) =
        omni_e2e::post_json(&daemon.url("/v1/tenants/acme/replies"), "agent", &reply).await;
    assert_eq!(status, 202, "{body}");
}

/// The mail server, the broker and the replicas the e-mail chaos test shares between steps.
struct MailCluster {
    mail: Arc<MailServer>,
    broker: Broker,
    env: Vec<(String, String)>,
    /// Three mailboxes on three different router partitions.
    boxes: Vec<String>,
    /// One customer per mailbox.
    customers: Vec<String>,
    live: Vec<Daemon>,
}

impl MailCluster {
    fn logs(&self) -> String {
        self.live
            .iter()
            .map(Daemon::log)
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    fn published(&self, settle: Duration) -> BTreeMap<String, (usize, Value)> {
        tokio::task::block_in_place(|| inbound_by_message_id(&self.broker, settle))
    }
}

/// One thread per mailbox: the customer's question `q`, our reply `r`, the customer's answers
/// `a` (full References) and `b` (only In-Reply-To), and the conversation they belong to.
struct MailThread {
    q: String,
    conversation: Value,
    r: String,
    a: String,
    b: String,
}

const CHAOS_MAILS: usize = 90;

/// Three replicas behind one load balancer read three mailboxes while mail keeps arriving and
/// replicas are SIGKILLed, stopped and replaced: each mail is published exactly once, and
/// replies sent by any replica, before and after every replica restarted, carry the whole
/// thread in `References`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_publish_each_mail_once_through_kills_and_keep_threads_whole() {
    let files = tempfile::tempdir().unwrap();
    let mut cluster = three_replicas_sharing_three_mailboxes(&files).await;
    let last_change = mail_arrives_while_replicas_crash_stop_and_are_replaced(&mut cluster).await;
    let seen = every_mail_is_published_exactly_once(&cluster, last_change).await;
    exactly_one_replica_reads_each_mailbox(&cluster).await;
    let threads = replies_from_any_replica_carry_the_whole_thread(&cluster, &seen).await;
    after_every_replica_restarts_replies_still_carry_the_thread(&mut cluster, &threads).await;
}

/// Three mailboxes on three different router partitions (of four), one customer each, and
/// three replicas sharing them.
async fn three_replicas_sharing_three_mailboxes(files: &tempfile::TempDir) -> MailCluster {
    let mail = MailServer::shared();
    let broker = Broker::memory();
    let mut boxes: Vec<String> = Vec::new();
    let mut partitions = BTreeSet::new();
    while boxes.len() < 3 {
        let a = mail.address("hop-thu");
        if partitions.insert(omni_bus::partition_for(
            format!("acme/{a}/INBOX").as_bytes(),
            4,
        )) {
            boxes.push(a);
        }
    }
    let customers: Vec<String> = (0..3).map(|_| mail.address("khach")).collect();
    let mut env = omni_e2e::cluster_env(&["acme"]);
    env.push((
        "OMNI__EMAIL__ATTACHMENT_DIR".into(),
        files.path().display().to_string(),
    ));
    for (i, b) in boxes.iter().enumerate() {
        env.extend(mailbox_env(&format!("M{i}"), b, &mail));
    }
    let env_refs = omni_e2e::env_refs(&env);
    let live = Daemon::start_many(&broker, 3, &env_refs).await;

    MailCluster {
        mail,
        broker,
        env,
        boxes,
        customers,
        live,
    }
}

/// Mail arrives all along, one every 250 ms, round robin over the mailboxes, while replicas
/// die and are replaced: a crash, another crash, a graceful stop. Returns when the last
/// replica change was done, once every mail is in.
async fn mail_arrives_while_replicas_crash_stop_and_are_replaced(c: &mut MailCluster) -> Instant {
    let env_refs = omni_e2e::env_refs(&c.env);
    let appender = {
        let (mail, boxes, customers) = (c.mail.clone(), c.boxes.clone(), c.customers.clone());
        tokio::spawn(async move {
            for i in 0..CHAOS_MAILS {
                let j = i % 3;
                let raw = customer_mail(
                    &customers[j],
                    &boxes[j],
                    &format!("chaos-{i}@khach.example.test"),
                    "",
                    &format!("Đơn hàng {i}"),
                    "Nhờ shop kiểm tra giúp",
                );
                mail.append(&boxes[j], "INBOX", &raw).await;
                // The pace of the mail, not a wait for a condition.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    // The schedule of the replica changes (3 s, 9 s, 15 s into the flow of mail).
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.live.remove(0).terminate_hard();
    c.live.push(Daemon::start(&c.broker, &env_refs).await);
    tokio::time::sleep(Duration::from_secs(6)).await;
    c.live.remove(1).terminate_hard();
    c.live.push(Daemon::start(&c.broker, &env_refs).await);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut stopped = c.live.remove(0);
    let status = tokio::task::block_in_place(|| stopped.terminate(Duration::from_secs(30)));
    assert!(status.is_some_and(|s| s.success()), "{}", stopped.log());
    c.live.push(Daemon::start(&c.broker, &env_refs).await);
    let last_change = Instant::now();
    appender.await.unwrap();
    last_change
}

/// Every mail arrives, once, within a bound after the last change; nothing else is published.
async fn every_mail_is_published_exactly_once(
    c: &MailCluster,
    last_change: Instant,
) -> BTreeMap<String, (usize, Value)> {
    let deadline = last_change + Duration::from_secs(90);
    while c.published(Duration::from_secs(2)).len() < CHAOS_MAILS {
        assert!(
            Instant::now() < deadline,
            "fewer than {CHAOS_MAILS} mails published 90 s after the last replica change\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "all {CHAOS_MAILS} mails published {:?} after the last replica change",
        last_change.elapsed()
    );
    // A window for a late duplicate to show: what must not happen has no condition to wait for.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = c.published(Duration::from_secs(3));
    for i in 0..CHAOS_MAILS {
        let id = format!("chaos-{i}@khach.example.test");
        assert_eq!(
            seen.get(&id).map(|(n, _)| *n),
            Some(1),
            "{id} published {:?} times\n{}",
            seen.get(&id).map(|(n, _)| *n),
            c.logs()
        );
    }
    assert_eq!(seen.len(), CHAOS_MAILS, "nothing else published");
    seen
}

/// Exactly one replica reads each mailbox (once the last takeover settled).
async fn exactly_one_replica_reads_each_mailbox(c: &MailCluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut readers = Vec::new();
        for b in &c.boxes {
            let label = format!("mailbox=\"{b}\"");
            let mut n = 0.0;
            for d in &c.live {
                n += omni_e2e::metric_value(
                    &d.metrics().await,
                    "omni_email_mailbox_owned",
                    &[&label],
                );
            }
            readers.push(n);
        }
        if readers.iter().all(|n| *n == 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas reading each mailbox: {readers:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (n, d) in c.live.iter().enumerate() {
        let log = d.log();
        println!(
            "replica {n}: {} mailbox takeovers, {} finding mail its predecessor published",
            log.matches("reading the mailbox here from now on").count(),
            log.matches("not checkpointed: not published again").count()
        );
    }
}

/// In each mailbox, the customer's first mail q is answered (r), the customer answers r twice
/// (a: full References; b: only In-Reply-To), both join q's conversation, and the agents
/// answer a, each reply through another replica than the last: the whole chain.
async fn replies_from_any_replica_carry_the_whole_thread(
    c: &MailCluster,
    seen: &BTreeMap<String, (usize, Value)>,
) -> Vec<MailThread> {
    let (mail, boxes, customers, live) = (&c.mail, &c.boxes, &c.customers, &c.live);
    let mut threads = Vec::new();
    for j in 0..3 {
        let q = format!("chaos-{j}@khach.example.test");
        let conversation = seen[&q].1["data"]["conversation_id"].clone();
        answer(
            &live[(j + 1) % 3],
            &boxes[j],
            &customers[j],
            &conversation,
            &q,
        )
        .await;
        let (r, refs) = reply_to(mail, &customers[j], &q).await;
        assert_eq!(refs, std::slice::from_ref(&q));
        let a = format!("answer-a-{j}@khach.example.test");
        let b = format!("answer-b-{j}@khach.example.test");
        for (id, headers) in [
            (
                &a,
                format!("In-Reply-To: <{r}>\r\nReferences: <{q}> <{r}>\r\n"),
            ),
            (&b, format!("In-Reply-To: <{r}>\r\n")),
        ] {
            let raw = customer_mail(&customers[j], &boxes[j], id, &headers, "Re: Hỏi", "Vâng ạ");
            mail.append(&boxes[j], "INBOX", &raw).await;
        }
        threads.push(MailThread {
            q,
            conversation,
            r,
            a,
            b,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let seen = c.published(Duration::from_secs(2));
        if seen.len() >= CHAOS_MAILS + 6 {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "answers not published\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for (j, t) in threads.iter().enumerate() {
        for id in [&t.a, &t.b] {
            assert_eq!(seen[id].0, 1, "{id} published once");
            assert_eq!(
                &seen[id].1["data"]["conversation_id"], &t.conversation,
                "{id} (answering our reply {}) joins {}'s conversation",
                t.r, t.q
            );
        }
        answer(
            &live[(j + 2) % 3],
            &boxes[j],
            &customers[j],
            &t.conversation,
            &t.a,
        )
        .await;
        let (_, refs) = reply_to(mail, &customers[j], &t.a).await;
        assert_eq!(
            refs,
            [t.q.clone(), t.r.clone(), t.a.clone()],
            "the whole chain"
        );
    }
    threads
}

/// Every replica restarts: nothing of the threads is left in any process's memory, and a
/// reply to b still carries the chain, from the thread topic.
async fn after_every_replica_restarts_replies_still_carry_the_thread(
    c: &mut MailCluster,
    threads: &[MailThread],
) {
    for mut d in c.live.drain(..) {
        d.terminate_hard();
    }
    let env_refs = omni_e2e::env_refs(&c.env);
    c.live = Daemon::start_many(&c.broker, 3, &env_refs).await;
    for (j, t) in threads.iter().enumerate() {
        let d = &c.live[j % 3];
        answer(d, &c.boxes[j], &c.customers[j], &t.conversation, &t.b).await;
        let (_, refs) = reply_to(&c.mail, &c.customers[j], &t.b).await;
        assert_eq!(
            refs,
            [t.q.clone(), t.r.clone(), t.b.clone()],
            "after a restart of every replica, from the thread topic"
        );
    }
}

/// Appends the customer mail `<id@khach.example.test>` to `support`.
async fn customer_writes(mail: &MailServer, support: &str, customer: &str, id: &str) {
    let raw = customer_mail(
        customer,
        support,
        &format!("{id}@khach.example.test"),
        "",
        "Hỏi đơn hàng",
        VI_TEXT,
    );
    mail.append(support, "INBOX", &raw).await;
}

/// A mailbox that logs in with OAuth 2.0: read over IMAP (`AUTHENTICATE XOAUTH2`) and replied
/// to over dovecot's submission service (`AUTH XOAUTH2`) with one shared token source. A token
/// the provider revokes before its expiry is refused by the server: the reader and the sender
/// each get a fresh one and log in again, once.
#[tokio::test]
async fn an_oauth2_mailbox_logs_in_with_xoauth2_and_replaces_a_token_the_server_refuses() {
    let w = World::new().await;
    let support = w.mail.address("oauth");
    let customer = w.mail.address("khach");
    let endpoint = TokenEndpoint::start(&w.mail, &support, Duration::from_secs(3600), false).await;
    let settings = w.oauth2_mailbox(&support, &endpoint);
    let tokens = TokenSources::build([&settings], &w.metrics.oauth2_refreshes).unwrap();
    let (stop, task) = w.start_reader(settings.clone(), w.producer_sink(), tokens.get(&settings));
    w.wait_metric("omni_email_checkpoint_writes_total", &support, 1.0)
        .await;
    customer_writes(&w.mail, &support, &customer, "x1").await;
    assert_eq!(w.events(1, Duration::from_millis(100)).await.len(), 1);

    // The provider revokes the token; the server drops the session.
    let first = endpoint.issued()[0].clone();
    w.mail.bearer.revoke(&first);
    w.mail.kick(&support);
    customer_writes(&w.mail, &support, &customer, "x2").await;
    let events = w.events(2, Duration::from_millis(300)).await;
    assert_eq!(
        events[1].value["data"]["message"]["id"],
        "x2@khach.example.test",
        "read after logging in again; mail logs:\n{}",
        w.mail.log()
    );
    let asked: Vec<(String, bool)> = w
        .mail
        .bearer
        .introspected(&support)
        .into_iter()
        .map(|a| (a.token, a.active))
        .collect();
    let second = endpoint.issued()[1].clone();
    assert_eq!(
        asked,
        [
            (first.clone(), true),
            (first, false),
            (second.clone(), true)
        ],
        "the cached token, refused once, then a fresh one"
    );

    // The sender shares the reader's token: revoked too, it is replaced for the reply.
    w.mail.bearer.revoke(&second);
    let sender = EmailSender::with_tokens(
        [&settings],
        EmailSendSettings::default(),
        w.threads.clone(),
        &tokens,
    )
    .unwrap();
    let request = reply_request(
        &w,
        &support,
        &customer,
        Some("x2@khach.example.test"),
        vec![],
    );
    let mut progress = SendProgress::default();
    sender.send(&request, &mut progress).await.unwrap();
    let mails = w
        .mail
        .wait_for_mails(&customer, "INBOX", 1, Duration::from_secs(20))
        .await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&mails[0])
        .unwrap();
    assert_eq!(
        parsed.in_reply_to().as_text(),
        Some("x2@khach.example.test")
    );
    assert_eq!(endpoint.issued().len(), 3, "one refresh per refused token");
    assert_eq!(w.metric("omni_email_oauth2_refreshes_total", "ok"), 3.0);
    stop.send(true).unwrap();
    task.await.unwrap();
}

/// The environment of tenant `demo`'s mailbox `support` logging in with OAuth 2.0 through
/// `endpoint`, sending over dovecot's submission service.
fn oauth2_daemon_env(
    mail: &MailServer,
    support: &str,
    endpoint: &TokenEndpoint,
    files: &tempfile::TempDir,
) -> Vec<(String, String)> {
    let prefix = "OMNI__TENANTS__DEMO__EMAIL__MAILBOXES__SUPPORT__";
    let k = |s: &str| format!("{prefix}{s}");
    let mut env = vec![
        (
            "OMNI__EMAIL__ATTACHMENT_DIR".to_owned(),
            files.path().display().to_string(),
        ),
        (k("ADDRESS"), support.to_owned()),
        (k("IMAP__HOST"), "127.0.0.1".into()),
        (k("IMAP__PORT"), mail.imap_port.to_string()),
        (k("IMAP__SECURITY"), "plain".into()),
        (k("SMTP__HOST"), "127.0.0.1".into()),
        (k("SMTP__PORT"), mail.submission_port.to_string()),
        (k("SMTP__SECURITY"), "plain".into()),
    ];
    env.extend(endpoint.env(prefix));
    env
}

async fn start_daemon(broker: &Broker, env: &[(String, String)]) -> Daemon {
    let refs: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    Daemon::start(broker, &refs).await
}

/// Waits until the daemon's metric `name` with `labels` reaches `value`.
async fn wait_daemon_metric(daemon: &Daemon, name: &str, labels: &[&str], value: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while omni_e2e::metric_value(&daemon.metrics().await, name, labels) < value {
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} < {value}; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A customer mail `<id@…>` reaches Kafka (the `n`th inbound event) and the agent's reply to
/// it reaches the customer.
async fn mail_in_reply_out(
    mail: &MailServer,
    broker: &Broker,
    daemon: &Daemon,
    (support, customer): (&str, &str),
    id: &str,
    n: usize,
) {
    customer_writes(mail, support, customer, id).await;
    let inbound = read_topic(
        &broker.bootstrap(),
        "omni.inbound.v1",
        n,
        Duration::from_secs(30),
        Duration::from_millis(100),
    );
    let parent = format!("{id}@khach.example.test");
    let event = inbound
        .iter()
        .map(|r| &r.value)
        .find(|v| v["data"]["message"]["id"] == parent.as_str())
        .unwrap_or_else(|| panic!("{parent} not on Kafka; log:\n{}", daemon.log()));
    assert_eq!(event["data"]["message"]["text"], VI_TEXT);
    let reply = serde_json::json!({
        "conversation_id": event["subject"],
        "channel": event["data"]["channel"],
        "recipient": customer,
        "agent_id": "lan",
        "subject": "Hỏi đơn hàng",
        "text": "Dạ, shop kiểm tra ngay ạ.",
        "reply_to": parent,
    });
    let (status, body) = omni_e2e::post_json(
        &daemon.url("/v1/tenants/demo/replies"),
        "demo-agent-token",
        &reply,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    reply_to(mail, customer, &parent).await;
}

/// The daemon end to end with an OAuth 2.0 mailbox whose provider rotates refresh tokens and
/// issues 8-second access tokens: mail is read and replies go out with XOAUTH2; once every
/// token has expired and the server dropped the session, the daemon logs in again with a
/// renewed token and keeps reading and sending. It never presents an expired token, every
/// refresh is the RFC 6749 form with the newest refresh token, and no secret is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_logs_in_with_oauth2_and_renews_expiring_tokens_while_reading_and_sending() {
    let mail = MailServer::shared();
    let broker = Broker::memory();
    let files = tempfile::tempdir().unwrap();
    let (support, customer) = (mail.address("oauth"), mail.address("khach"));
    let endpoint = TokenEndpoint::start(&mail, &support, Duration::from_secs(8), true).await;
    let daemon = start_daemon(
        &broker,
        &oauth2_daemon_env(&mail, &support, &endpoint, &files),
    )
    .await;
    wait_daemon_metric(&daemon, "omni_email_imap_connected", &[], 1.0).await;
    let accounts = (support.as_str(), customer.as_str());
    mail_in_reply_out(&mail, &broker, &daemon, accounts, "o1", 1).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    while !endpoint.issued().iter().all(|t| mail.bearer.expired(t)) {
        assert!(Instant::now() < deadline, "tokens never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = endpoint.issued().len();
    mail.kick(&support);
    mail_in_reply_out(&mail, &broker, &daemon, accounts, "o2", 2).await;
    assert!(endpoint.issued().len() > before, "{}", daemon.log());

    refreshes_were_the_rfc_6749_form_with_the_newest_refresh_token(&endpoint);
    let asked = mail.bearer.introspected(&support);
    assert!(asked.len() >= 3, "{asked:?}");
    assert!(
        asked.iter().all(|a| a.active && !a.expired),
        "a token was presented expired or refused: {asked:?}"
    );
    let log = daemon.log();
    assert!(log.contains("rotated the oauth2 refresh token"), "{log}");
    for secret in endpoint.secrets() {
        assert!(!log.contains(&secret), "{secret} logged");
    }
    let ok = omni_e2e::metric_value(
        &daemon.metrics().await,
        "omni_email_oauth2_refreshes_total",
        &[r#"result="ok""#],
    );
    assert_eq!(ok as usize, endpoint.issued().len());
}

fn refreshes_were_the_rfc_6749_form_with_the_newest_refresh_token(endpoint: &TokenEndpoint) {
    let requests = endpoint.requests();
    let chain = endpoint.refresh_tokens();
    for (n, r) in requests.iter().enumerate() {
        assert_eq!(r.content_type, "application/x-www-form-urlencoded");
        let fields: Vec<(&str, &str)> = r
            .form
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                ("client_id", TokenEndpoint::CLIENT_ID),
                ("client_secret", endpoint.client_secret().as_str()),
                ("grant_type", "refresh_token"),
                ("refresh_token", chain[n].as_str()),
                ("scope", TokenEndpoint::SCOPE),
            ],
            "request {n}"
        );
        assert!(r.issued.is_some(), "request {n} refused");
    }
}

/// A refresh token the provider revoked (`invalid_grant`): the mailbox cannot log in, and the
/// daemon says so as an error asking to re-authorize the mailbox (log, metrics by result and
/// by reconnect error); replies fail as `bad_token` instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_is_an_error_asking_to_reauthorize_the_mailbox() {
    let mail = MailServer::shared();
    let broker = Broker::memory();
    let files = tempfile::tempdir().unwrap();
    let (support, customer) = (mail.address("revoked"), mail.address("khach"));
    let endpoint = TokenEndpoint::start(&mail, &support, Duration::from_secs(3600), false).await;
    endpoint.revoke_refresh_tokens();
    let daemon = start_daemon(
        &broker,
        &oauth2_daemon_env(&mail, &support, &endpoint, &files),
    )
    .await;
    let result = r#"result="invalid_grant""#;
    wait_daemon_metric(&daemon, "omni_email_oauth2_refreshes_total", &[result], 1.0).await;
    let error = r#"error="oauth2_invalid_grant""#;
    wait_daemon_metric(&daemon, "omni_email_imap_reconnects_total", &[error], 1.0).await;

    let tenant = TenantId::new("demo").unwrap();
    let conversation = ConversationId::derive(&tenant, &channel(&support), &customer, None);
    let reply = serde_json::json!({
        "conversation_id": conversation,
        "channel": {"kind": "email", "account": support},
        "recipient": customer,
        "agent_id": "lan",
        "text": "Dạ, shop kiểm tra ngay ạ.",
    });
    let (status, body) = omni_e2e::post_json(
        &daemon.url("/v1/tenants/demo/replies"),
        "demo-agent-token",
        &reply,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let deliveries = read_topic(
        &broker.bootstrap(),
        "omni.delivery.v1",
        1,
        Duration::from_secs(30),
        Duration::from_millis(100),
    );
    let data = &deliveries[0].value["data"];
    assert_eq!(
        (data["status"].as_str(), data["reason"].as_str()),
        (Some("failed"), Some("bad_token")),
        "{data}"
    );

    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("re-authorize the mailbox") && l.contains(r#""level":"ERROR""#))
        .unwrap_or_else(|| panic!("no error asking to re-authorize:\n{log}"));
    assert!(line.contains(&support), "{line}");
    for secret in endpoint.secrets() {
        assert!(!log.contains(&secret), "{secret} logged");
    }
    let connected =
        omni_e2e::metric_value(&daemon.metrics().await, "omni_email_imap_connected", &[]);
    assert_eq!(connected, 0.0);
}
