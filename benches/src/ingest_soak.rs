//! `ingest-soak`: the load-shedding soak. Against one running daemon it first measures the
//! saturation rate (closed loop, `--connections` requests always in flight, for
//! `--saturation-secs`), then offers `--factor` times that rate open-loop (requests sent on a
//! schedule whether or not earlier ones were answered, as providers' webhooks arrive) for
//! `--seconds`, and reports what the daemon held: accepted messages per second (mean and the
//! worst second), the share answered 503 (`overloaded` = shed, `kafka_unavailable`), other
//! errors, latency of accepted requests, and the daemon's resident memory (sampled, and its
//! peak `VmHWM`). Everything is on 127.0.0.1.
//!
//! Output: one JSON line on stdout (`make bench` turns it into the docs/benchmarks.md row) and a summary on
//! stderr.

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use omni_benches::memory_kib;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Saturation, then an open-loop soak at a multiple of it.
#[derive(Debug, Parser)]
#[command(name = "ingest-soak")]
struct Cli {
    /// The inbound endpoint, e.g. `http://127.0.0.1:8080/v1/inbound/bench`.
    #[arg(long)]
    url: String,
    /// The tenant's API bearer token.
    #[arg(long)]
    token: String,
    /// The daemon's process id (its memory is sampled from /proc).
    #[arg(long)]
    pid: u32,
    /// Requests in flight while measuring saturation.
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Seconds of the saturation measurement.
    #[arg(long, default_value_t = 10)]
    saturation_secs: u64,
    /// The soak offers this many times the saturation rate.
    #[arg(long, default_value_t = 2.0)]
    factor: f64,
    /// Seconds of the soak.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Requests the generator keeps outstanding at most (and connections it opens); beyond
    /// it a scheduled request is counted as not sent.
    #[arg(long, default_value_t = 4096)]
    max_outstanding: usize,
}

/// What the requests of one phase got.
#[derive(Default)]
struct Tally {
    accepted: AtomicU64,
    overloaded: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
    not_sent: AtomicU64,
    /// Accepted requests by the second they were answered in.
    per_second: Mutex<Vec<u64>>,
    /// Latency of accepted requests, microseconds.
    latencies: Mutex<Vec<u32>>,
}

impl Tally {
    fn record(&self, started: Instant, phase_start: Instant, outcome: Outcome) {
        match outcome {
            Outcome::Accepted => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
                lock(&self.latencies).push(us);
                let second = usize::try_from(phase_start.elapsed().as_secs()).unwrap_or(0);
                let mut per_second = lock(&self.per_second);
                if per_second.len() <= second {
                    per_second.resize(second + 1, 0);
                }
                per_second[second] += 1;
            }
            Outcome::Overloaded => {
                self.overloaded.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Unavailable => {
                self.unavailable.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Other => {
                self.other.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Error => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn answered(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
            + self.overloaded.load(Ordering::Relaxed)
            + self.unavailable.load(Ordering::Relaxed)
            + self.other.load(Ordering::Relaxed)
            + self.errors.load(Ordering::Relaxed)
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let mut l = lock(&self.latencies).clone();
        if l.is_empty() {
            return 0.0;
        }
        l.sort_unstable();
        let i = ((l.len() as f64 - 1.0) * p).round() as usize;
        f64::from(l[i.min(l.len() - 1)]) / 1000.0
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Outcome {
    Accepted,
    Overloaded,
    Unavailable,
    Other,
    Error,
}

/// Sends one message with a unique id (no dedupe) and classifies the answer.
async fn send(client: &HttpClient, cli: &Cli, n: u64) -> Outcome {
    let body = format!(
        r#"{{"contact":{{"id":"soak-{}","name":"Khách {n}"}},"text":"Chào shop, đơn hàng #{n} giao chưa ạ? Cảm ơn shop nhiều.","client_message_id":"soak-{n}-{}"}}"#,
        n % 5000,
        std::process::id()
    );
    let request = match Request::post(&cli.url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", cli.token))
        .body(Full::new(Bytes::from(body)))
    {
        Ok(r) => r,
        Err(_) => return Outcome::Error,
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let response = client.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
    })
    .await;
    match answer {
        Ok(Ok((StatusCode::ACCEPTED, _))) => Outcome::Accepted,
        Ok(Ok((StatusCode::SERVICE_UNAVAILABLE, body))) => {
            if body.windows(10).any(|w| w == b"overloaded") {
                Outcome::Overloaded
            } else {
                Outcome::Unavailable
            }
        }
        Ok(Ok(_)) => Outcome::Other,
        _ => Outcome::Error,
    }
}

/// Closed loop: `connections` requests always in flight for `secs`; the accepted rate.
async fn saturation(client: &HttpClient, cli: &Arc<Cli>, next: &Arc<AtomicU64>) -> (f64, Tally) {
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let end = start + Duration::from_secs(cli.saturation_secs);
    let workers: Vec<_> = (0..cli.connections)
        .map(|_| {
            let (client, cli, next, tally) =
                (client.clone(), cli.clone(), next.clone(), tally.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    let outcome = send(&client, &cli, n).await;
                    tally.record(t, start, outcome);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = tally.accepted.load(Ordering::Relaxed) as f64 / secs;
    let tally = Arc::try_unwrap(tally).unwrap_or_default();
    (rate, tally)
}

/// Open loop at `rate` for `cli.seconds`: requests go out on schedule, each in its own task,
/// up to `max_outstanding`; the tally and the highest RSS sampled.
async fn soak(
    client: &HttpClient,
    cli: &Arc<Cli>,
    next: &Arc<AtomicU64>,
    rate: f64,
) -> (Tally, u64) {
    let tally = Arc::new(Tally::default());
    let outstanding = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let duration = Duration::from_secs(cli.seconds);
    let mut scheduled: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut max_rss = 0;
    let mut last_sample = start;
    while start.elapsed() < duration {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while scheduled < due {
            scheduled += 1;
            if outstanding.load(Ordering::Relaxed) >= cli.max_outstanding {
                tally.not_sent.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            outstanding.fetch_add(1, Ordering::Relaxed);
            let (client, cli, next, tally, outstanding) = (
                client.clone(),
                cli.clone(),
                next.clone(),
                tally.clone(),
                outstanding.clone(),
            );
            tokio::spawn(async move {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let outcome = send(&client, &cli, n).await;
                tally.record(t, start, outcome);
                outstanding.fetch_sub(1, Ordering::Relaxed);
            });
        }
        if last_sample.elapsed() >= Duration::from_millis(250) {
            last_sample = Instant::now();
            max_rss = max_rss.max(memory_kib(cli.pid, "VmRSS:").unwrap_or(0));
        }
    }
    // Let the last requests finish (each is bounded by its 10 s timeout).
    let drain = Instant::now() + Duration::from_secs(12);
    while outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tally = Arc::try_unwrap(tally).unwrap_or_default();
    (tally, max_rss)
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Arc::new(Cli::parse());
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "ingest-soak: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Arc<Cli>) -> Result<()> {
    rlimit::increase_nofile_limit(u64::MAX)?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(cli.max_outstanding)
        .build(connector);
    let next = Arc::new(AtomicU64::new(0));
    let rss_before = memory_kib(cli.pid, "VmRSS:").unwrap_or(0);
    let (saturation_rate, sat) = saturation(&client, &cli, &next).await;
    if saturation_rate < 1.0 {
        return Err(format!(
            "the daemon accepted nothing while measuring saturation ({} answered, {} errors)",
            sat.answered(),
            sat.errors.load(Ordering::Relaxed)
        )
        .into());
    }
    let offered = saturation_rate * cli.factor;
    let _ = writeln!(
        std::io::stderr(),
        "saturation {saturation_rate:.0} msgs/s (p99 {:.1} ms); soaking at {offered:.0}/s for {} s",
        sat.percentile_ms(0.99),
        cli.seconds
    );
    let (t, max_rss) = soak(&client, &cli, &next, offered).await;
    let hwm = memory_kib(cli.pid, "VmHWM:").unwrap_or(0);
    let scheduled = t.answered() + t.not_sent.load(Ordering::Relaxed);
    let accepted = t.accepted.load(Ordering::Relaxed);
    let per_second = lock(&t.per_second).clone();
    // The worst whole second after the first (which includes the ramp) and before the last.
    let steady: Vec<u64> = per_second
        .iter()
        .copied()
        .skip(1)
        .take(per_second.len().saturating_sub(2))
        .collect();
    let worst_second = steady.iter().copied().min().unwrap_or(0);
    let held = accepted as f64 / cli.seconds as f64;
    let line = serde_json::json!({
        "saturation_msgs_per_s": saturation_rate.round(),
        "saturation_p99_ms": sat.percentile_ms(0.99),
        "offered_msgs_per_s": offered.round(),
        "seconds": cli.seconds,
        "accepted_msgs_per_s": held.round(),
        "held_of_saturation": (held / saturation_rate * 100.0).round() / 100.0,
        "worst_second_msgs_per_s": worst_second,
        "scheduled": scheduled,
        "accepted": accepted,
        "shed_503": t.overloaded.load(Ordering::Relaxed),
        "shed_share": (share(t.overloaded.load(Ordering::Relaxed), scheduled) * 1000.0).round() / 1000.0,
        "kafka_503": t.unavailable.load(Ordering::Relaxed),
        "other_status": t.other.load(Ordering::Relaxed),
        "errors_or_timeouts": t.errors.load(Ordering::Relaxed),
        "not_sent": t.not_sent.load(Ordering::Relaxed),
        "accepted_p50_ms": t.percentile_ms(0.50),
        "accepted_p99_ms": t.percentile_ms(0.99),
        "rss_before_mib": rss_before / 1024,
        "rss_max_sampled_mib": max_rss / 1024,
        "rss_peak_hwm_mib": hwm / 1024,
    });
    let _ = writeln!(std::io::stdout(), "{line}");
    let _ = writeln!(
        std::io::stderr(),
        "held {held:.0} msgs/s ({:.2} of saturation, worst second {worst_second}); {} of {scheduled} shed with 503, {} kafka 503, {} errors, {} not sent; p99 {:.1} ms; RSS peak {} MiB",
        held / saturation_rate,
        t.overloaded.load(Ordering::Relaxed),
        t.unavailable.load(Ordering::Relaxed),
        t.errors.load(Ordering::Relaxed),
        t.not_sent.load(Ordering::Relaxed),
        t.percentile_ms(0.99),
        hwm / 1024
    );
    Ok(())
}
