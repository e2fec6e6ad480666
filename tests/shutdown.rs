//! A stopped daemon always exits, within `server.shutdown_grace_secs` plus a few seconds,
//! whatever Kafka and the providers are doing, and says what it left: exit 0 when everything
//! was flushed, 75 with the counts on its last log line when the grace period cut it short.
//! Nothing acknowledged is lost: after the broker (or the provider) is back, a new daemon
//! publishes or redelivers everything a client was told was taken.
//!
//! Each scenario takes traffic on the API channel and on Messenger (webhooks in, replies out
//! to a Graph stand-in that does not answer), so replies are in flight when SIGTERM arrives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use axum::body::Bytes;
use omni_channel::signature::hmac_sha256_hex;
use omni_e2e::{free_port, read_log, Broker, Daemon};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const PAGE: &str = "104912345678901";
const GRACE_SECS: u64 = 3;
/// The documented exit code of a shutdown cut short by the grace period.
const CUT_SHORT: i32 = 75;

// ---------------------------------------------------------------------------------------------
// Stand-ins: a Graph API that can hang, and a TCP proxy that can stall.

/// A Graph API stand-in: records every send; while `hang` is set it never answers.
struct Graph {
    url: String,
    hang: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Value>>>,
}

impl Graph {
    async fn start(hang: bool) -> Self {
        let hang = Arc::new(AtomicBool::new(hang));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (h, s) = (hang.clone(), sent.clone());
        let app = axum::Router::new().fallback(move |body: Bytes| {
            let (hang, sent) = (h.clone(), s.clone());
            async move {
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let n = {
                    let mut sent = sent.lock().unwrap();
                    sent.push(json);
                    sent.len()
                };
                if hang.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                axum::Json(json!({"recipient_id": "psid", "message_id": format!("m_{n}")}))
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, hang, sent }
    }

    fn answer(&self) {
        self.hang.store(false, Ordering::SeqCst);
    }

    fn sent(&self) -> Vec<Value> {
        self.sent.lock().unwrap().clone()
    }

    async fn wait_for_sends(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.sent().len() < n {
            assert!(
                Instant::now() < deadline,
                "graph got {} sends",
                self.sent().len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// A TCP proxy on 127.0.0.1 in front of the broker. Stalled, it keeps accepting and holding
/// connections but forwards nothing, as a broker that hangs does.
struct StallProxy {
    stalled: tokio::sync::watch::Sender<bool>,
}

impl StallProxy {
    async fn start(port: u16, broker_port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (stalled, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(broker) = TcpStream::connect(("127.0.0.1", broker_port)).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (br, bw) = broker.into_split();
                    tokio::spawn(forward(cr, bw, watch.clone()));
                    tokio::spawn(forward(br, cw, watch));
                });
            }
        });
        Self { stalled }
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
// Traffic and accounting.

fn env(graph: &Graph) -> Vec<(String, String)> {
    vec![
        (
            "OMNI__SERVER__SHUTDOWN_GRACE_SECS".into(),
            GRACE_SECS.to_string(),
        ),
        ("OMNI__MESSENGER__GRAPH_BASE_URL".into(), graph.url.clone()),
        ("OMNI__MESSENGER__TIMEOUT_SECS".into(), "120".into()),
        ("OMNI__OUTBOUND__INITIAL_BACKOFF_MS".into(), "100".into()),
        (
            "OMNI__KAFKA__CONSUMER__SESSION_TIMEOUT_MS".into(),
            "6000".into(),
        ),
        (
            "OMNI__KAFKA__CONSUMER__HEARTBEAT_INTERVAL_MS".into(),
            "500".into(),
        ),
        (
            "OMNI__TENANTS__DEMO__MESSENGER__APP_SECRET".into(),
            "META-SECRET".into(),
        ),
        (
            "OMNI__TENANTS__DEMO__MESSENGER__VERIFY_TOKEN".into(),
            "VERIFY".into(),
        ),
        (
            format!("OMNI__TENANTS__DEMO__MESSENGER__PAGES__{PAGE}__ACCESS_TOKEN"),
            "PAGE-TOKEN".into(),
        ),
    ]
}

async fn start_daemon(broker: &Broker, bootstrap: &str, env: &[(String, String)]) -> Daemon {
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let daemon = Daemon::spawn(bootstrap, &refs);
    let _ = broker;
    daemon.wait_ready(Duration::from_secs(60)).await;
    daemon
}

/// What clients were told was taken.
#[derive(Default, Debug)]
struct Acked {
    /// Event ids of API messages answered 202.
    inbound: BTreeSet<String>,
    /// Provider ids of Messenger messages answered 200.
    messenger_mids: BTreeSet<String>,
    /// Event ids of Messenger replies answered 202.
    messenger_replies: BTreeSet<String>,
    /// Event ids of API-channel replies answered 202.
    api_replies: BTreeSet<String>,
}

async fn post_api_message(http: &reqwest::Client, url: &str, id: &str) -> Option<String> {
    let r = http
        .post(url)
        .bearer_auth("demo-token")
        .json(
            &json!({"contact": {"id": format!("cust-{id}")}, "text": "Đơn hàng của tôi đâu?",
                      "client_message_id": id}),
        )
        .send()
        .await
        .ok()?;
    if r.status() != 202 {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    Some(v["event_id"].as_str()?.to_owned())
}

async fn post_messenger(http: &reqwest::Client, daemon: &Daemon, mid: &str, psid: &str) -> u16 {
    let body = format!(
        r#"{{"object":"page","entry":[{{"id":"{PAGE}","time":1700000000000,"messaging":[{{"sender":{{"id":"{psid}"}},"recipient":{{"id":"{PAGE}"}},"timestamp":1700000000000,"message":{{"mid":"{mid}","text":"Shop ơi"}}}}]}}]}}"#
    );
    http.post(daemon.url("/v1/webhooks/messenger/demo"))
        .header(
            "x-hub-signature-256",
            format!(
                "sha256={}",
                hmac_sha256_hex(b"META-SECRET", body.as_bytes())
            ),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Reads `topic` until `done` holds for its records (or panics after `timeout`).
fn wait_topic(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&[Value]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let records: Vec<Value> = read_log(bootstrap, topic, Duration::from_millis(800))
            .into_iter()
            .filter_map(|r| serde_json::from_slice(&r.value?).ok())
            .collect();
        if done(&records) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} incomplete after {timeout:?}: {} records",
            records.len()
        );
    }
}

/// Messages in on both channels (waited for on the topic), then replies on both channels, the
/// Messenger ones in one conversation: the first hangs at the provider, the others queue.
async fn traffic(daemon: &Daemon, bootstrap: &str, graph: &Graph, run: &str) -> Acked {
    let http = reqwest::Client::new();
    let mut acked = Acked::default();
    let url = daemon.url("/v1/inbound/demo");
    for i in 0..4 {
        let id = post_api_message(&http, &url, &format!("{run}-in-{i}"))
            .await
            .expect("api message taken");
        acked.inbound.insert(id);
    }
    let psid = format!("53849371{}", free_port());
    for i in 0..2 {
        let mid = format!("m_{run}_{i}");
        assert_eq!(post_messenger(&http, daemon, &mid, &psid).await, 200);
        acked.messenger_mids.insert(mid);
    }
    // The conversations to answer, as an agent's tool reads them from the inbound topic.
    let (mut fb, mut api) = (None, None);
    let want_mid = format!("m_{run}_0");
    let want_api = format!("{run}-in-0");
    let bootstrap_owned = bootstrap.to_owned();
    tokio::task::block_in_place(|| {
        wait_topic(
            &bootstrap_owned,
            "omni.inbound.v1",
            Duration::from_secs(30),
            |rs| {
                fb = rs
                    .iter()
                    .find(|r| r["data"]["message"]["id"] == want_mid.as_str())
                    .cloned();
                api = rs
                    .iter()
                    .find(|r| r["data"]["message"]["id"] == want_api.as_str())
                    .cloned();
                fb.is_some() && api.is_some()
            },
        );
    });
    let reply = |event: &Value, text: &str| {
        json!({
            "conversation_id": event["subject"],
            "channel": event["data"]["channel"],
            "recipient": event["data"]["contact"]["id"],
            "agent_id": "agent-7",
            "text": text,
        })
    };
    let (fb, api) = (fb.unwrap(), api.unwrap());
    let replies = daemon.url("/v1/tenants/demo/replies");
    for i in 0..3 {
        let (status, v) = omni_e2e::post_json(
            &replies,
            "demo-agent-token",
            &reply(&fb, &format!("Dạ {i}")),
        )
        .await;
        assert_eq!(status, 202, "{v}");
        acked
            .messenger_replies
            .insert(v["event_id"].as_str().unwrap().to_owned());
    }
    for i in 0..2 {
        let (status, v) = omni_e2e::post_json(
            &replies,
            "demo-agent-token",
            &reply(&api, &format!("Vâng {i}")),
        )
        .await;
        assert_eq!(status, 202, "{v}");
        acked
            .api_replies
            .insert(v["event_id"].as_str().unwrap().to_owned());
    }
    // A reply is in flight at the provider.
    graph.wait_for_sends(1, Duration::from_secs(30)).await;
    acked
}

/// API messages posted while Kafka is in trouble, left in flight across SIGTERM: whatever is
/// answered 202 must be published in the end.
fn in_flight_messages(daemon: &Daemon, run: &str) -> Vec<tokio::task::JoinHandle<Option<String>>> {
    (0..3)
        .map(|i| {
            let url = daemon.url("/v1/inbound/demo");
            let id = format!("{run}-late-{i}");
            tokio::spawn(async move { post_api_message(&reqwest::Client::new(), &url, &id).await })
        })
        .collect()
}

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

/// SIGTERM, and how long the daemon took to exit.
async fn terminate(mut daemon: Daemon) -> (Option<ExitStatus>, Duration, Daemon) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let status = daemon.terminate(Duration::from_secs(GRACE_SECS + 30));
        (status, started.elapsed(), daemon)
    })
    .await
    .unwrap()
}

/// The daemon's last log line, parsed.
fn last_line(daemon: &Daemon) -> Value {
    let log = daemon.log();
    let line = log.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line not JSON ({e}): {line}"))
}

/// Exited with the cut code within grace + 5 s, the last line counting what was left.
fn assert_cut_short(status: Option<ExitStatus>, took: Duration, daemon: &Daemon) -> Value {
    let status = status.unwrap_or_else(|| panic!("still running; log:\n{}", daemon.log()));
    assert!(
        took <= Duration::from_secs(GRACE_SECS + 5),
        "took {took:?} to exit; log:\n{}",
        daemon.log()
    );
    assert_eq!(
        status.code(),
        Some(CUT_SHORT),
        "exit {status:?}; log:\n{}",
        daemon.log()
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
        "the hanging reply is not counted: {last}"
    );
    last
}

/// Every acknowledged message is on the inbound topic, every reply on the outbound topic, and
/// every Messenger reply has a delivery event (sent or failed).
fn assert_accounted(bootstrap: &str, acked: &Acked) {
    wait_topic(
        bootstrap,
        "omni.inbound.v1",
        Duration::from_secs(60),
        |rs| {
            let ids: BTreeSet<&str> = rs.iter().filter_map(|r| r["id"].as_str()).collect();
            let mids: BTreeSet<&str> = rs
                .iter()
                .filter_map(|r| r["data"]["message"]["id"].as_str())
                .collect();
            acked.inbound.iter().all(|id| ids.contains(id.as_str()))
                && acked
                    .messenger_mids
                    .iter()
                    .all(|m| mids.contains(m.as_str()))
        },
    );
    wait_topic(
        bootstrap,
        "omni.outbound.v1",
        Duration::from_secs(30),
        |rs| {
            let ids: BTreeSet<&str> = rs.iter().filter_map(|r| r["id"].as_str()).collect();
            acked
                .messenger_replies
                .iter()
                .chain(&acked.api_replies)
                .all(|id| ids.contains(id.as_str()))
        },
    );
    wait_topic(
        bootstrap,
        "omni.delivery.v1",
        Duration::from_secs(90),
        |rs| {
            let done: BTreeSet<&str> = rs
                .iter()
                .filter(|r| matches!(r["data"]["status"].as_str(), Some("sent" | "failed")))
                .filter_map(|r| r["data"]["outbound_event_id"].as_str())
                .collect();
            acked
                .messenger_replies
                .iter()
                .all(|id| done.contains(id.as_str()))
        },
    );
}

async fn collect_late(late: Vec<tokio::task::JoinHandle<Option<String>>>, acked: &mut Acked) {
    for task in late {
        if let Some(id) = task.await.unwrap() {
            acked.inbound.insert(id);
        }
    }
}

/// A healthy daemon, once the work is done, exits 0 quickly with the clean last line.
async fn assert_clean_exit(daemon: Daemon) {
    let (status, took, daemon) = terminate(daemon).await;
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

// ---------------------------------------------------------------------------------------------
// Scenarios.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_then_sigterm_exits_in_time_and_loses_nothing_acknowledged() {
    let mut broker = Broker::durable();
    let graph = Graph::start(true).await;
    let env = env(&graph);
    let bootstrap = broker.bootstrap();
    let daemon = start_daemon(&broker, &bootstrap, &env).await;
    let mut acked = traffic(&daemon, &bootstrap, &graph, "dead").await;

    let baseline = settled_queue(&daemon).await;
    broker.stop();
    let late = in_flight_messages(&daemon, "dead");
    wait_in_flight(&daemon, baseline).await;
    let (status, took, first) = terminate(daemon).await;
    let last = assert_cut_short(status, took, &first);
    println!("broker dead: exited in {took:?}: {last}");
    collect_late(late, &mut acked).await;

    broker.restart();
    graph.answer();
    let second = start_daemon(&broker, &bootstrap, &env).await;
    tokio::task::block_in_place(|| assert_accounted(&bootstrap, &acked));
    assert_clean_exit(second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stalled_then_sigterm_exits_in_time_and_loses_nothing_acknowledged() {
    let proxy_port = free_port();
    let broker = Broker::durable_behind(proxy_port);
    let proxy = StallProxy::start(proxy_port, broker.port).await;
    let graph = Graph::start(true).await;
    let env = env(&graph);
    let bootstrap = format!("127.0.0.1:{proxy_port}");
    let daemon = start_daemon(&broker, &bootstrap, &env).await;
    let mut acked = traffic(&daemon, &bootstrap, &graph, "slow").await;

    let baseline = settled_queue(&daemon).await;
    proxy.stall();
    let late = in_flight_messages(&daemon, "slow");
    wait_in_flight(&daemon, baseline).await;
    let (status, took, first) = terminate(daemon).await;
    let last = assert_cut_short(status, took, &first);
    println!("broker stalled: exited in {took:?}: {last}");
    collect_late(late, &mut acked).await;

    proxy.resume();
    graph.answer();
    let second = start_daemon(&broker, &bootstrap, &env).await;
    tokio::task::block_in_place(|| assert_accounted(&bootstrap, &acked));
    assert_clean_exit(second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_never_answers_does_not_hold_the_exit() {
    let broker = Broker::durable();
    let graph = Graph::start(true).await;
    let env = env(&graph);
    let bootstrap = broker.bootstrap();
    let daemon = start_daemon(&broker, &bootstrap, &env).await;
    let acked = traffic(&daemon, &bootstrap, &graph, "mute").await;

    let (status, took, first) = terminate(daemon).await;
    let last = assert_cut_short(status, took, &first);
    println!("provider mute: exited in {took:?}: {last}");
    assert_eq!(
        last["records_unflushed"], 0,
        "the broker was healthy: {last}"
    );
    assert_eq!(
        last["replies_unfinished"], 3,
        "one reply at the provider, two queued behind it in its conversation: {last}"
    );

    graph.answer();
    let second = start_daemon(&broker, &bootstrap, &env).await;
    tokio::task::block_in_place(|| assert_accounted(&bootstrap, &acked));
    assert_clean_exit(second).await;
}
