//! `ingest-ref`: the reference points the ingest benchmark (`benches/ingest.sh`) compares the
//! daemon against, and the generator of its signed request bodies.
//!
//! - `noop`: an HTTP server that reads the body and answers 202: the HTTP limit.
//! - `forwarder`: the thinnest possible HTTP → Kafka forwarder, with exactly the daemon's
//!   producer settings: the pipeline limit.
//! - `produce`: raw rdkafka production with C sends in flight: the Kafka limit.
//! - `gen-requests`: a Lua file of pre-signed bodies for `benches/wrk/inbound.lua`.
//!
//! Every address must be on the loopback interface; this tool only ever talks to 127.0.0.1.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use clap::{Parser, Subcommand};
use futures_util::stream::{FuturesUnordered, StreamExt};
use omni_benches::{request_body, DEFAULT_BODY_SIZE};
use omni_bus::{BusConfig, BusMetrics};
use omni_channel::signature::hmac_sha256_hex;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

/// Reference servers and load generators for the omnirouter ingest benchmark.
#[derive(Debug, Parser)]
#[command(name = "ingest-ref", about, long_about)]
struct Cli {
    /// What to run.
    #[command(subcommand)]
    command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Do-nothing HTTP: POST /v1/inbound/{tenant} reads the body and answers 202.
    Noop {
        /// Address to listen on (loopback).
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Thin forwarder: produces the raw body (key = tenant), awaits the ack, answers 202
    /// (503 when the publish fails).
    Forwarder {
        /// Address to listen on (loopback).
        #[arg(long)]
        listen: SocketAddr,
        /// Kafka bootstrap servers (loopback).
        #[arg(long)]
        brokers: String,
        /// Topic to produce to (created with the daemon's settings if missing).
        #[arg(long, default_value = "omni.inbound.v1")]
        topic: String,
        /// Producer linger.ms.
        #[arg(long, default_value_t = 1)]
        linger_ms: u64,
    },
    /// Raw production of pre-generated messages with C sends in flight; reports msgs/s and
    /// ack latency percentiles.
    Produce {
        /// Kafka bootstrap servers (loopback).
        #[arg(long)]
        brokers: String,
        /// Topic to produce to (created with the daemon's settings if missing).
        #[arg(long, default_value = "omni.inbound.v1")]
        topic: String,
        /// Messages in the measured phase (fewer if --seconds runs out first).
        #[arg(long)]
        messages: usize,
        /// Sends kept in flight.
        #[arg(long)]
        concurrency: usize,
        /// Message size in bytes (same shape as the HTTP bodies).
        #[arg(long, default_value_t = DEFAULT_BODY_SIZE)]
        size: usize,
        /// Producer linger.ms.
        #[arg(long, default_value_t = 1)]
        linger_ms: u64,
        /// Stop issuing sends after this many seconds of the measured phase.
        #[arg(long)]
        seconds: Option<f64>,
        /// Messages sent before measuring (connections, metadata, JIT of the broker's paths).
        #[arg(long, default_value_t = 5_000)]
        warmup: usize,
        /// Message key (the HTTP runs key by tenant).
        #[arg(long, default_value = "bench")]
        key: String,
    },
    /// Writes the Lua file of signed request bodies that benches/wrk/inbound.lua loads.
    GenRequests {
        /// Number of distinct bodies.
        #[arg(long)]
        count: usize,
        /// The tenant's api_hmac_secret.
        #[arg(long)]
        secret: String,
        /// The tenant (path segment of /v1/inbound/{tenant}).
        #[arg(long, default_value = "bench")]
        tenant: String,
        /// Body size in bytes.
        #[arg(long, default_value_t = DEFAULT_BODY_SIZE)]
        size: usize,
        /// Prefix of the client_message_ids (default: derived from the clock, so every
        /// generated file has ids of its own).
        #[arg(long)]
        run_id: Option<String>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Noop { listen } => noop(listen).await,
        Command::Forwarder {
            listen,
            brokers,
            topic,
            linger_ms,
        } => forwarder(listen, &brokers, topic, linger_ms).await,
        Command::Produce {
            brokers,
            topic,
            messages,
            concurrency,
            size,
            linger_ms,
            seconds,
            warmup,
            key,
        } => {
            let opts = ProduceOpts {
                messages,
                concurrency: concurrency.max(1),
                size,
                linger_ms,
                seconds,
                warmup,
            };
            produce(&brokers, &topic, &key, &opts).await
        }
        Command::GenRequests {
            count,
            secret,
            tenant,
            size,
            run_id,
            out,
        } => gen_requests(count, &secret, &tenant, size, run_id, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingest-ref: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Errors are reported as text: this is a command-line tool.
type Result<T, E = String> = std::result::Result<T, E>;

/// The tiny answer of the reference servers.
const ACCEPTED_JSON: &str = r#"{"accepted":true}"#;

fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        ACCEPTED_JSON,
    )
        .into_response()
}

/// Serves `router` on `listen` until SIGINT or SIGTERM.
async fn serve(listen: SocketAddr, router: Router) -> Result<()> {
    if !listen.ip().is_loopback() {
        return Err(format!("{listen} is not a loopback address"));
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("binding {listen}: {e}"))?;
    eprintln!(
        "ingest-ref listening on {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let server = axum::serve(listener, router);
    tokio::select! {
        r = server => r.map_err(|e| format!("http server: {e}")),
        () = shutdown_signal() => Ok(()),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// noop

async fn noop_handler(Path(_tenant): Path<String>, _body: Bytes) -> Response {
    accepted()
}

async fn noop(listen: SocketAddr) -> Result<()> {
    serve(
        listen,
        Router::new().route("/v1/inbound/{tenant}", post(noop_handler)),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Kafka helpers

/// The daemon's Kafka settings with these brokers and linger (everything else default, as in
/// config/default.toml).
fn bus_config(brokers: &str, topic: &str, linger_ms: u64) -> Result<BusConfig> {
    if !brokers
        .split(',')
        .all(|b| b.trim().starts_with("127.0.0.1:") || b.trim().starts_with("localhost:"))
    {
        return Err(format!("brokers {brokers:?} are not all on 127.0.0.1"));
    }
    let mut cfg = BusConfig {
        bootstrap_servers: brokers.to_owned(),
        linger_ms,
        ..BusConfig::default()
    };
    cfg.topics.inbound = topic.to_owned();
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// A FutureProducer with exactly the daemon's producer properties.
fn producer(cfg: &BusConfig) -> Result<FutureProducer> {
    cfg.producer_config()
        .create()
        .map_err(|e| format!("creating producer: {e}"))
}

/// Creates the daemon's topics (same partitions) if missing, retrying while the broker starts.
async fn ensure_topics(cfg: &BusConfig) -> Result<()> {
    let metrics =
        Arc::new(BusMetrics::register(&prometheus::Registry::new()).map_err(|e| e.to_string())?);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match omni_bus::ensure_topics(cfg, metrics.clone(), Duration::from_secs(10)).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                eprintln!("ingest-ref: topics not ready yet ({e}), retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(format!("creating topics: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// forwarder

/// The forwarder's shared state.
struct Forwarder {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

async fn forward(
    State(fwd): State<Arc<Forwarder>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let record = FutureRecord::to(&fwd.topic)
        .key(tenant.as_bytes())
        .payload(body.as_ref());
    match fwd.producer.send(record, Timeout::After(fwd.timeout)).await {
        Ok(_) => accepted(),
        Err((e, _)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "error": e.to_string() }).to_string(),
        )
            .into_response(),
    }
}

async fn forwarder(listen: SocketAddr, brokers: &str, topic: String, linger_ms: u64) -> Result<()> {
    let cfg = bus_config(brokers, &topic, linger_ms)?;
    ensure_topics(&cfg).await?;
    let state = Arc::new(Forwarder {
        producer: producer(&cfg)?,
        timeout: cfg.publish_timeout(),
        topic,
    });
    serve(
        listen,
        Router::new()
            .route("/v1/inbound/{tenant}", post(forward))
            .with_state(state),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// produce

/// Parameters of `produce`.
struct ProduceOpts {
    messages: usize,
    concurrency: usize,
    size: usize,
    linger_ms: u64,
    seconds: Option<f64>,
    warmup: usize,
}

/// What one phase of `produce` measured.
struct Phase {
    sent: usize,
    errors: usize,
    elapsed: Duration,
    /// Ack latencies of the successful sends, in microseconds, sorted.
    latencies_us: Vec<u64>,
}

impl Phase {
    fn percentile(&self, p: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let rank = (p / 100.0 * self.latencies_us.len() as f64).ceil() as usize;
        self.latencies_us[rank.clamp(1, self.latencies_us.len()) - 1]
    }
}

/// What `produce` sends and where.
struct Sender<'a> {
    producer: &'a FutureProducer,
    topic: &'a str,
    key: &'a str,
    /// Pre-generated bodies, cycled.
    payloads: &'a [Vec<u8>],
    /// The daemon's publish deadline.
    timeout: Duration,
}

impl Sender<'_> {
    /// Sends `count` messages with `concurrency` in flight, stopping early once `limit` has
    /// passed.
    async fn phase(&self, count: usize, concurrency: usize, limit: Option<Duration>) -> Phase {
        let send = |i: usize| {
            let payload = &self.payloads[i % self.payloads.len()];
            async move {
                let start = Instant::now();
                let record = FutureRecord::to(self.topic).key(self.key).payload(payload);
                let ok = self
                    .producer
                    .send(record, Timeout::After(self.timeout))
                    .await
                    .is_ok();
                (start.elapsed(), ok)
            }
        };
        let started = Instant::now();
        let mut in_flight = FuturesUnordered::new();
        let mut next = 0;
        while next < count && in_flight.len() < concurrency {
            in_flight.push(send(next));
            next += 1;
        }
        let mut latencies_us = Vec::with_capacity(count.min(1 << 22));
        let mut errors = 0;
        while let Some((latency, ok)) = in_flight.next().await {
            if ok {
                latencies_us.push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
            } else {
                errors += 1;
            }
            let out_of_time = limit.is_some_and(|l| started.elapsed() >= l);
            if next < count && !out_of_time {
                in_flight.push(send(next));
                next += 1;
            }
        }
        let elapsed = started.elapsed();
        latencies_us.sort_unstable();
        Phase {
            sent: next,
            errors,
            elapsed,
            latencies_us,
        }
    }
}

/// utime + stime of this process (all threads, librdkafka's included), in clock ticks.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name start at field 3 (state); utime and stime
    // are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

async fn produce(brokers: &str, topic: &str, key: &str, opts: &ProduceOpts) -> Result<()> {
    let cfg = bus_config(brokers, topic, opts.linger_ms)?;
    ensure_topics(&cfg).await?;
    let producer = producer(&cfg)?;
    // A pool of distinct pre-generated bodies, cycled: Kafka does not care about repeats.
    let run = format!("p{}", unix_millis());
    let pool = opts.messages.clamp(1, 100_000);
    let payloads: Vec<Vec<u8>> = (0..pool)
        .map(|i| request_body(&run, i, opts.size))
        .collect();
    let sender = Sender {
        producer: &producer,
        topic,
        key,
        payloads: &payloads,
        timeout: cfg.publish_timeout(),
    };

    if opts.warmup > 0 {
        let warm = sender.phase(opts.warmup, opts.concurrency, None).await;
        if warm.errors > 0 {
            eprintln!(
                "ingest-ref: {} of {} warm-up sends failed",
                warm.errors, warm.sent
            );
        }
    }

    let cpu_before = cpu_ticks();
    let phase = sender
        .phase(
            opts.messages,
            opts.concurrency,
            opts.seconds.map(Duration::from_secs_f64),
        )
        .await;
    let cpu_ticks = cpu_before
        .zip(cpu_ticks())
        .map(|(a, b)| b.saturating_sub(a));
    let acked = phase.latencies_us.len();
    let secs = phase.elapsed.as_secs_f64();
    let rate = if secs > 0.0 { acked as f64 / secs } else { 0.0 };
    let (p50, p99, p999) = (
        phase.percentile(50.0),
        phase.percentile(99.0),
        phase.percentile(99.9),
    );
    let line = serde_json::json!({
        "kind": "produce",
        "concurrency": opts.concurrency,
        "linger_ms": opts.linger_ms,
        "size": opts.size,
        "sent": phase.sent,
        "acked": acked,
        "errors": phase.errors,
        "seconds": secs,
        "msgs_per_s": rate,
        "p50_us": p50,
        "p99_us": p99,
        "p999_us": p999,
        "cpu_ticks": cpu_ticks,
    });
    println!("{line}");
    println!(
        "produce: {acked} acked ({} errors) in {secs:.2} s = {rate:.0} msgs/s at {} in flight, \
         linger.ms={}; ack latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        phase.errors,
        opts.concurrency,
        opts.linger_ms,
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0,
        p999 as f64 / 1000.0,
    );
    if acked == 0 {
        return Err("no message was acknowledged".into());
    }
    Ok(())
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// gen-requests

/// Writes `count` signed bodies as a Lua chunk returning
/// `{ tenant = …, count = …, size = …, records = [==[<hex sig> <body>\n…]==] }`.
///
/// One long string instead of a table constructor: LuaJIT parses it at memcpy speed and a
/// function may not hold more than 65,536 constants, which a table of literals would exceed.
fn gen_requests(
    count: usize,
    secret: &str,
    tenant: &str,
    size: usize,
    run_id: Option<String>,
    out: &std::path::Path,
) -> Result<()> {
    if tenant.is_empty()
        || !tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("tenant {tenant:?} is not a plain path segment"));
    }
    let run = run_id.unwrap_or_else(|| format!("b{}", unix_millis()));
    let file =
        std::fs::File::create(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e: std::io::Error| format!("writing {}: {e}", out.display());
    writeln!(
        w,
        "-- Generated by `ingest-ref gen-requests` for benches/wrk/inbound.lua: {count} bodies of \
         {size} bytes,\n-- client_message_id {run}-0 .. {run}-{}, signed with the tenant's \
         api_hmac_secret.\nreturn {{\n  tenant = \"{tenant}\",\n  count = {count},\n  size = \
         {size},\n  -- one record per line: <hex HMAC-SHA256 of the body> <space> <body>\n  \
         records = [==[",
        count.saturating_sub(1)
    )
    .map_err(io)?;
    for i in 0..count {
        let body = request_body(&run, i, size);
        if body.contains(&b'\n') || body.windows(4).any(|w| w == b"]==]") {
            return Err("a body cannot be embedded in the Lua long string".into());
        }
        let sig = hmac_sha256_hex(secret.as_bytes(), &body);
        w.write_all(sig.as_bytes()).map_err(io)?;
        w.write_all(b" ").map_err(io)?;
        w.write_all(&body).map_err(io)?;
        w.write_all(b"\n").map_err(io)?;
    }
    w.write_all(b"]==],\n}\n").map_err(io)?;
    w.flush().map_err(io)?;
    eprintln!(
        "ingest-ref: wrote {count} signed bodies to {}",
        out.display()
    );
    Ok(())
}
