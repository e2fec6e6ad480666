//! `assign-latency`: how long a customer message takes from the HTTP request to its
//! `omni.routing.assigned` record, at a steady rate, beside the same broker's own latency.
//!
//! For each rate it runs, on 127.0.0.1 against one broker:
//! - **the reference**: two plain Kafka hops with the daemon's client settings (a producer
//!   writes a record to one topic, a relay consumes it and produces it to a second topic, a
//!   consumer reads it there): what any consume → produce service on this broker pays, and
//!   the pipeline a message takes through the daemon (HTTP → inbound topic → router →
//!   routing topic) is two such hops;
//! - **the daemon**: new conversations posted open-loop at the rate (each request leaves on its
//!   schedule), the routing topic read from its end, each `omni.routing.assigned` matched to
//!   its request by conversation id. The inbound record's and the routing record's Kafka
//!   timestamps (set by the daemon's producers) split the time into request → inbound
//!   record, inbound record → routing record (the router) and routing record → read.
//!
//! Agents are created through the daemon's command API first, with capacity for every
//! conversation of the run. With `--resolve`, each conversation is resolved through the command
//! API as soon as its assignment is read: the router then sees two inputs per conversation (the
//! message and the resolve), agents' capacity frees as in a contact centre, and `--capacity`
//! sets each agent's. With `--direct`, the messages and the resolves are written straight to
//! the inbound and commands topics, as a channel adapter and a CRM would, instead of through
//! the daemon's HTTP API: the router is measured without the HTTP work of the daemon and of
//! this generator on the same CPUs. Output: one JSON line per rate on stdout and a Markdown table on
//! stderr (`benches/ingest.sh` collects both).

use clap::Parser;
use futures_util::stream::{FuturesUnordered, StreamExt};
use omni_benches::tenant_api::{TenantApi, TenantArgs};
use omni_bus::BusConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Steady-rate latency of assignment, and of two plain Kafka hops on the same broker.
#[derive(Debug, Parser)]
#[command(name = "assign-latency")]
struct Cli {
    /// The broker the daemon uses (`host:port`).
    #[arg(long)]
    brokers: String,
    #[command(flatten)]
    daemon: TenantArgs,
    /// Comma-separated message rates (messages per second).
    #[arg(long, default_value = "100,1000", value_delimiter = ',')]
    rates: Vec<u32>,
    /// Seconds measured per rate (after the warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds at each rate before measuring.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// The daemon's producer `linger.ms` (the reference uses the same).
    #[arg(long, default_value_t = 1)]
    linger_ms: u64,
    /// The daemon's consumer `fetch.wait.max.ms` (the reference uses the same).
    #[arg(long, default_value_t = 20)]
    fetch_wait_max_ms: u64,
    /// Agents created (all online, one skill-less queue).
    #[arg(long, default_value_t = 20)]
    agents: u32,
    /// Resolve each conversation once its assignment is read (two router inputs per
    /// conversation; see the module docs).
    #[arg(long)]
    resolve: bool,
    /// Each agent's capacity with `--resolve` (without it, room for every conversation).
    #[arg(long, default_value_t = 50)]
    capacity: u32,
    /// Write messages and resolves to Kafka directly (see the module docs).
    #[arg(long)]
    direct: bool,
    /// The commands topic (for `--direct` resolves).
    #[arg(long, default_value = "omni.commands.v1")]
    commands_topic: String,
    /// Reference record size in bytes (about a CloudEvent of a short message).
    #[arg(long, default_value_t = 1000)]
    record_bytes: usize,
    /// The routing topic.
    #[arg(long, default_value = "omni.routing.v1")]
    routing_topic: String,
    /// The inbound topic.
    #[arg(long, default_value = "omni.inbound.v1")]
    inbound_topic: String,
}

/// Latency percentiles of one series, milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    count: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Summary {
    fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
        Self {
            count: v.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }

    fn json(&self) -> Value {
        json!({"count": self.count, "p50_ms": round2(self.p50), "p99_ms": round2(self.p99), "max_ms": round2(self.max)})
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bus(cli: &Cli) -> BusConfig {
    BusConfig {
        bootstrap_servers: cli.brokers.clone(),
        client_id: "assign-latency".into(),
        linger_ms: cli.linger_ms,
        fetch_wait_max_ms: cli.fetch_wait_max_ms,
        ..BusConfig::default()
    }
}

/// A consumer of every partition of `topic` from its current end (the high watermarks read
/// before anything is sent, so nothing sent later is missed and nothing older is read).
fn tail_from_end(bus: &BusConfig, topic: &str) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = bus
        .consumer_config(&format!("assign-latency-{}-{topic}", std::process::id()))
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("topic {topic} has no partitions").into());
    }
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Sleeps until the `i`-th send of a schedule at `rate` per second from `start`.
async fn on_schedule(start: tokio::time::Instant, i: u64, rate: u32) {
    let at = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
    tokio::time::sleep_until(at).await;
}

// ------------------------------------------------------------------------------------------
// The reference: two plain Kafka hops.

/// Two hops at `rate`: producer → topic A → relay (consume, produce) → topic B → reader.
/// Returns (one hop: A's record read by the relay; two hops: B's record read by the reader).
async fn reference(cli: &Cli, rate: u32) -> Result<(Summary, Summary)> {
    let bus = bus(cli);
    let run = format!("{}-{rate}-{}", std::process::id(), now_us());
    let (hop_a, hop_b) = (format!("bench.hop-a.{run}"), format!("bench.hop-b.{run}"));
    let admin: AdminClient<_> = bus.admin_config().create()?;
    let topics = [
        NewTopic::new(&hop_a, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&hop_b, 1, TopicReplication::Fixed(1)),
    ];
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| format!("creating {t}: {e}"))?;
    }
    let producer: FutureProducer = bus.producer_config().create()?;
    let relay_in = tail_from_end(&bus, &hop_a)?;
    let reader = tail_from_end(&bus, &hop_b)?;
    let total = u64::from(rate) * (cli.warmup_secs + cli.seconds);
    let skip = u64::from(rate) * cli.warmup_secs;

    let one_hop = Arc::new(Mutex::new(Vec::new()));
    let relay = {
        let producer = producer.clone();
        let hop_b = hop_b.clone();
        let one_hop = one_hop.clone();
        tokio::spawn(async move {
            let mut sends = FuturesUnordered::new();
            let mut relayed = 0u64;
            while relayed < total {
                tokio::select! {
                    m = relay_in.recv() => {
                        let Ok(m) = m else { continue };
                        let payload = m.payload().unwrap_or_default().to_vec();
                        if let Some((n, sent)) = header(&payload) {
                            if n >= skip {
                                lock(&one_hop).push(now_us().saturating_sub(sent) as f64 / 1000.0);
                            }
                        }
                        let producer = producer.clone();
                        let hop_b = hop_b.clone();
                        sends.push(async move {
                            producer
                                .send(FutureRecord::<[u8], _>::to(&hop_b).payload(&payload), Duration::from_secs(10))
                                .await
                                .is_ok()
                        });
                        relayed += 1;
                    }
                    Some(_) = sends.next(), if !sends.is_empty() => {}
                }
            }
            while sends.next().await.is_some() {}
        })
    };
    let read = tokio::spawn(async move {
        let mut two_hops = Vec::new();
        let mut seen = 0u64;
        while seen < total {
            let Ok(m) = reader.recv().await else { continue };
            if let Some((n, sent)) = header(m.payload().unwrap_or_default()) {
                seen += 1;
                if n >= skip {
                    two_hops.push(now_us().saturating_sub(sent) as f64 / 1000.0);
                }
            }
        }
        two_hops
    });

    let start = tokio::time::Instant::now();
    let mut sends = FuturesUnordered::new();
    for n in 0..total {
        on_schedule(start, n, rate).await;
        let mut payload = vec![b'x'; cli.record_bytes.max(16)];
        payload[..8].copy_from_slice(&n.to_be_bytes());
        payload[8..16].copy_from_slice(&now_us().to_be_bytes());
        let producer = producer.clone();
        let topic = hop_a.clone();
        sends.push(async move {
            producer
                .send(
                    FutureRecord::<[u8], _>::to(&topic).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .is_ok()
        });
        while let Some(Some(_)) = futures_util::FutureExt::now_or_never(sends.next()) {}
    }
    while sends.next().await.is_some() {}
    let two_hops = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .map_err(|_| "the reference reader did not see every record within 60 s")??;
    tokio::time::timeout(Duration::from_secs(30), relay)
        .await
        .map_err(|_| "the relay did not finish within 30 s")??;
    let one_hop = std::mem::take(&mut *lock(&one_hop));
    let _ = admin
        .delete_topics(&[&hop_a, &hop_b], &AdminOptions::new())
        .await;
    Ok((Summary::of(one_hop), Summary::of(two_hops)))
}

/// (sequence number, send time µs) at the start of a reference record.
fn header(payload: &[u8]) -> Option<(u64, u64)> {
    let n = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((n, sent))
}

// ------------------------------------------------------------------------------------------
// The daemon.

/// What is known of one posted conversation (times in µs since the epoch).
#[derive(Debug, Default, Clone, Copy)]
struct Trace {
    measured: bool,
    sent: Option<u64>,
    inbound_record: Option<u64>,
    routing_record: Option<u64>,
    assigned_read: Option<u64>,
}

type Traces = Arc<Mutex<HashMap<String, Trace>>>;

fn kafka_time_us(ts: Timestamp) -> Option<u64> {
    ts.to_millis()
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| ms * 1000)
}

/// Follows `topic` and records, per conversation (`subject`), the record's timestamp and when
/// it was read; `want` picks the event type. Each matching conversation is also sent to
/// `then`, if given.
fn follow(
    consumer: StreamConsumer,
    traces: Traces,
    want: &'static str,
    on: fn(&mut Trace, u64, u64),
    then: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let m = match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
                Ok(Ok(m)) => m,
                _ => continue,
            };
            let read = now_us();
            let Ok(event) = serde_json::from_slice::<Value>(m.payload().unwrap_or_default()) else {
                continue;
            };
            let matches = event["type"]
                .as_str()
                .is_some_and(|t| want.is_empty() || t == want);
            let Some(subject) = event["subject"].as_str().filter(|_| matches) else {
                continue;
            };
            let record = kafka_time_us(m.timestamp()).unwrap_or(read);
            on(
                lock(&traces).entry(subject.to_owned()).or_default(),
                record,
                read,
            );
            if let Some(then) = &then {
                let _ = then.send(subject.to_owned());
            }
        }
    })
}

/// Posts new conversations at `rate`; returns the summaries of (request → assigned read,
/// request → inbound record, inbound record → routing record, routing record → read), and
/// how many measured conversations were not assigned.
async fn daemon(cli: &Cli, api: &TenantApi, rate: u32) -> Result<([Summary; 4], usize, usize)> {
    let bus = bus(cli);
    let traces: Traces = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let customers = Customers::new(cli, api)?;
    let (assigned_tx, resolver) = if cli.resolve {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            Some(tx),
            Some(tokio::spawn(resolve_all(customers.clone(), rx))),
        )
    } else {
        (None, None)
    };
    let routing = follow(
        tail_from_end(&bus, &cli.routing_topic)?,
        traces.clone(),
        "omni.routing.assigned",
        |t, record, read| {
            t.routing_record = Some(record);
            t.assigned_read = Some(read);
        },
        assigned_tx,
        stop.clone(),
    );
    let inbound = follow(
        tail_from_end(&bus, &cli.inbound_topic)?,
        traces.clone(),
        "",
        |t, record, _| {
            t.inbound_record.get_or_insert(record);
        },
        None,
        stop.clone(),
    );
    let run = format!("{}-{rate}-{}", std::process::id(), now_us());
    let total = u64::from(rate) * (cli.warmup_secs + cli.seconds);
    let skip = u64::from(rate) * cli.warmup_secs;
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let mut posts = FuturesUnordered::new();
    for n in 0..total {
        on_schedule(start, n, rate).await;
        let (customers, traces, failed, run) = (
            customers.clone(),
            traces.clone(),
            failed.clone(),
            run.clone(),
        );
        posts.push(tokio::spawn(async move {
            let sent = now_us();
            let id = format!("lat-{run}-{n}");
            match customers.message(&id).await {
                Ok(conversation) => {
                    let mut traces = lock(&traces);
                    let t = traces.entry(conversation).or_default();
                    t.sent = Some(sent);
                    t.measured = n >= skip;
                }
                Err(_) => {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
        while let Some(Some(_)) = futures_util::FutureExt::now_or_never(posts.next()) {}
    }
    while posts.next().await.is_some() {}
    // Wait (for a condition, bounded) until every measured conversation was seen assigned.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting = lock(&traces)
            .values()
            .filter(|t| t.measured && t.assigned_read.is_none())
            .count();
        if waiting == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = routing.await;
    let _ = inbound.await;
    // The follower's end of the channel is gone with it: the resolver finishes what it has.
    let failed_resolves = match resolver {
        Some(r) => r.await.unwrap_or(0),
        None => 0,
    };
    let traces = std::mem::take(&mut *lock(&traces));
    let mut series: [Vec<f64>; 4] = Default::default();
    let mut unassigned = 0;
    let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1000.0;
    for t in traces.values().filter(|t| t.measured) {
        let (Some(sent), Some(read)) = (t.sent, t.assigned_read) else {
            unassigned += 1;
            continue;
        };
        series[0].push(ms(sent, read));
        if let (Some(inbound), Some(routing)) = (t.inbound_record, t.routing_record) {
            series[1].push(ms(sent, inbound));
            series[2].push(ms(inbound, routing));
            series[3].push(ms(routing, read));
        }
    }
    let [a, b, c, d] = series.map(Summary::of);
    Ok((
        [a, b, c, d],
        unassigned,
        failed.load(std::sync::atomic::Ordering::Relaxed) + failed_resolves,
    ))
}

/// Where the customers' messages and the CRM's resolves go: the daemon's HTTP API, or
/// (`--direct`) the topics themselves.
#[derive(Clone)]
enum Customers {
    Api(TenantApi),
    Kafka {
        producer: FutureProducer,
        tenant: omni_core::TenantId,
        inbound: String,
        commands: String,
    },
}

impl Customers {
    fn new(cli: &Cli, api: &TenantApi) -> Result<Self> {
        if !cli.direct {
            return Ok(Self::Api(api.clone()));
        }
        Ok(Self::Kafka {
            producer: bus(cli).producer_config().create()?,
            tenant: omni_core::TenantId::new(&cli.daemon.tenant)?,
            inbound: cli.inbound_topic.clone(),
            commands: cli.commands_topic.clone(),
        })
    }

    /// A new customer's first message; returns its conversation id.
    async fn message(&self, contact: &str) -> Result<String> {
        const TEXT: &str = "Chào shop, đơn hàng của mình giao chưa ạ?";
        let (producer, tenant, topic) = match self {
            Self::Api(api) => return api.message(contact, contact, TEXT).await,
            Self::Kafka {
                producer,
                tenant,
                inbound,
                ..
            } => (producer, tenant, inbound),
        };
        let now = chrono::Utc::now();
        let message = omni_core::Message {
            id: contact.to_owned(),
            direction: omni_core::Direction::Inbound,
            text: TEXT.to_owned(),
            subject: None,
            attachments: Vec::new(),
            reply_to: None,
            payload: None,
            sent_at: None,
        };
        let event = omni_channel::webhook::PreparedEvent::message(
            tenant,
            omni_core::ChannelRef::new(omni_core::ChannelKind::Api, "default"),
            omni_core::Contact::new(contact),
            omni_core::EventType::MessageReceived,
            message,
            now,
        )?;
        send(producer, topic, tenant, &event.payload).await?;
        Ok(event.conversation_id.to_string())
    }

    /// Resolves a conversation, as an agent or the CRM does.
    async fn resolve(&self, conversation: &str) -> Result<()> {
        let (producer, tenant, topic) = match self {
            Self::Api(api) => {
                return api
                    .command(json!({"command": "resolve", "conversation": conversation}))
                    .await
            }
            Self::Kafka {
                producer,
                tenant,
                commands,
                ..
            } => (producer, tenant, commands),
        };
        let conversation: omni_core::ConversationId = conversation.parse()?;
        let event = omni_core::CloudEvent::with_source(
            omni_core::EventId::new_random(),
            omni_core::EventType::Command,
            tenant.clone(),
            format!("/omnirouter/{tenant}/crm"),
            Some(conversation),
            chrono::Utc::now(),
            omni_routing::Command::Resolve { conversation },
        );
        send(producer, topic, tenant, &serde_json::to_vec(&event)?).await
    }
}

/// One record keyed by tenant (the partitioning contract), acknowledged.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    tenant: &omni_core::TenantId,
    payload: &[u8],
) -> Result<()> {
    let record = FutureRecord::to(topic)
        .key(tenant.as_str().as_bytes())
        .payload(payload)
        .headers(
            rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                key: omni_bus::producer::CONTENT_TYPE,
                value: Some(omni_bus::producer::STRUCTURED_CLOUDEVENT),
            }),
        );
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map(|_| ())
        .map_err(|(e, _)| e.into())
}

/// Resolves every conversation it is sent (up to 256 at a time); returns how many resolves
/// failed.
async fn resolve_all(
    customers: Customers,
    mut assigned: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> usize {
    let mut pending = FuturesUnordered::new();
    let mut failed = 0;
    loop {
        tokio::select! {
            next = assigned.recv(), if pending.len() < 256 => {
                let Some(conversation) = next else { break };
                let customers = customers.clone();
                pending.push(async move { customers.resolve(&conversation).await.is_ok() });
            }
            Some(ok) = pending.next(), if !pending.is_empty() => failed += usize::from(!ok),
        }
    }
    while let Some(ok) = pending.next().await {
        failed += usize::from(!ok);
    }
    failed
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "assign-latency: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let api = cli.daemon.api(1024)?;
    let conversations: u64 = cli
        .rates
        .iter()
        .map(|r| u64::from(*r) * (cli.warmup_secs + cli.seconds))
        .sum();
    let capacity = if cli.resolve {
        cli.capacity
    } else {
        u32::try_from(conversations / u64::from(cli.agents.max(1)) + 100)?
    };
    api.agents_online(
        "lat-agent-",
        cli.agents,
        capacity,
        16,
        Duration::from_secs(60),
    )
    .await?;
    let mut table = String::from(
        "| msgs/s | router inputs/s | two Kafka hops p50 / p99 ms | message → assigned p50 / p99 ms | p99 / two hops p99 | request → inbound record p50 / p99 | inbound → routing record (router) p50 / p99 | routing record → read p50 / p99 | one hop p50 / p99 | not assigned |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for &rate in &cli.rates {
        let (one_hop, two_hops) = reference(&cli, rate).await?;
        let ([total, to_inbound, router, to_read], unassigned, failed) =
            daemon(&cli, &api, rate).await?;
        let ratio = if two_hops.p99 > 0.0 {
            total.p99 / two_hops.p99
        } else {
            0.0
        };
        let inputs = rate * if cli.resolve { 2 } else { 1 };
        let row = json!({
            "rate": rate,
            "router_inputs_per_s": inputs,
            "seconds": cli.seconds,
            "reference_one_hop": one_hop.json(),
            "reference_two_hops": two_hops.json(),
            "assigned": total.json(),
            "p99_over_two_hops": round2(ratio),
            "request_to_inbound_record": to_inbound.json(),
            "inbound_to_routing_record": router.json(),
            "routing_record_to_read": to_read.json(),
            "not_assigned": unassigned,
            "failed_requests": failed,
        });
        writeln!(std::io::stdout(), "{row}")?;
        table.push_str(&format!(
            "| {rate} | {inputs} | {:.1} / {:.1} | {:.1} / {:.1} | {:.2} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {} |\n",
            two_hops.p50, two_hops.p99, total.p50, total.p99, ratio, to_inbound.p50,
            to_inbound.p99, router.p50, router.p99, to_read.p50, to_read.p99, one_hop.p50,
            one_hop.p99, unassigned + failed,
        ));
    }
    writeln!(std::io::stderr(), "{table}")?;
    Ok(())
}
