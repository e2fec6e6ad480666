//! The live chat idle-socket load test: how much memory does the daemon spend per open,
//! idle visitor WebSocket?
//!
//! Starts an in-memory tansu broker and the daemon (`target/release/omnirouter` by default,
//! `config/default.toml`, router and outbound off so only live chat runs), creates one visitor
//! session per socket, then opens N sockets (default 10,000) from several loopback source
//! addresses (127.0.0.1, 127.0.0.2, … so no source runs out of ephemeral ports), each reading
//! its `status` frame, and leaves them idle. The daemon's resident memory (`VmRSS` in
//! `/proc/<pid>/status`) before and after gives the cost per idle socket. Both processes raise
//! their open-file limit to the hard limit. Exits non-zero above `--max-kib` per socket.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use clap::Parser;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[derive(Parser)]
#[command(
    about = "Open N idle live chat sockets against the daemon and report its memory per socket"
)]
struct Args {
    /// Sockets to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Loopback source addresses to spread them over (127.0.0.1 … 127.0.0.N).
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Connections opened at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// The daemon binary.
    #[arg(long, default_value = "target/release/omnirouter")]
    daemon: PathBuf,
    /// The tansu broker binary (default: $TANSU_BIN).
    #[arg(long)]
    tansu: Option<PathBuf>,
    /// Fail above this many KiB per idle socket.
    #[arg(long, default_value_t = 10.0)]
    max_kib: f64,
}

const ORIGIN: &str = "http://127.0.0.1:3000";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn wait_port(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0.0)
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("livechat-load: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let limit = rlimit::increase_nofile_limit(u64::MAX)?;
    if (limit as usize) < args.connections + 100 {
        return Err(format!(
            "open file limit {limit} is below {} sockets",
            args.connections
        )
        .into());
    }
    let dir = std::env::temp_dir().join(format!("livechat-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tansu = args
        .tansu
        .clone()
        .or_else(|| std::env::var_os("TANSU_BIN").map(PathBuf::from))
        .ok_or("give --tansu or TANSU_BIN")?;
    let kafka_port = free_port();
    let kafka = format!("tcp://127.0.0.1:{kafka_port}");
    let _broker = Killed(
        Command::new(&tansu)
            .args([
                "broker",
                "--listener-url",
                &kafka,
                "--advertised-listener-url",
                &kafka,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("tansu.log"))?)
            .spawn()?,
    );
    if !wait_port(kafka_port) {
        return Err("tansu did not start".into());
    }
    let port = free_port();
    let daemon = Killed(
        Command::new(&args.daemon)
            .args(["--config", "config/default.toml", "run"])
            .env("OMNI__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "OMNI__KAFKA__BOOTSTRAP_SERVERS",
                format!("127.0.0.1:{kafka_port}"),
            )
            .env("OMNI__KAFKA__PARTITIONS", "3")
            .env("OMNI__ROUTER__ENABLED", "false")
            .env("OMNI__OUTBOUND__ENABLED", "false")
            .env("OMNI__LIVECHAT__MAX_CONNECTIONS_PER_IP", "1000000")
            // Every session comes from 127.0.0.1: no minting limit.
            .env("OMNI__LIVECHAT__SESSIONS_PER_MINUTE_PER_IP", "0")
            .env("OMNI__LIVECHAT__SESSIONS_PER_MINUTE_PER_WIDGET", "0")
            .env("OMNI__LIVECHAT__IDLE_TIMEOUT_SECS", "3600")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("omnirouter.log"))?)
            .spawn()?,
    );
    let pid = daemon.0.id();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err("daemon not ready".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // One visitor per socket: sessions first, so the measurement covers sockets only.
    let started = Instant::now();
    let mut tokens = Vec::with_capacity(args.connections);
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    while tokens.len() < args.connections {
        while next < args.connections && pending.len() < args.concurrency {
            let (http, url) = (http.clone(), format!("{base}/v1/livechat/demo/web/session"));
            pending.push(async move {
                let r = http
                    .post(url)
                    .header("origin", ORIGIN)
                    .body("{}")
                    .send()
                    .await?;
                let v: serde_json::Value = r.json().await?;
                Ok::<_, reqwest::Error>(v["token"].as_str().unwrap_or_default().to_owned())
            });
            next += 1;
        }
        if let Some(t) = pending.next().await {
            tokens.push(t?);
        }
    }
    println!(
        "{} sessions in {:.1}s",
        tokens.len(),
        started.elapsed().as_secs_f64()
    );
    // A first socket warms up the code paths (lazy statics, thread-local caches).
    let ws_base = format!("ws://127.0.0.1:{port}/v1/livechat/demo/web/ws");
    let warm = open(&ws_base, &tokens[0], Ipv4Addr::new(127, 0, 0, 1), port).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(pid);

    let started = Instant::now();
    let mut sockets = Vec::with_capacity(args.connections);
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    while sockets.len() < args.connections {
        while next < args.connections && pending.len() < args.concurrency {
            let source = Ipv4Addr::new(
                127,
                0,
                0,
                1 + (next % usize::from(args.sources.max(1))) as u8,
            );
            pending.push(open(&ws_base, &tokens[next], source, port));
            next += 1;
        }
        if let Some(s) = pending.next().await {
            sockets.push(s?);
        }
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let open_now = metrics
        .lines()
        .find(|l| l.starts_with("omni_livechat_connections "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let per_socket = (after - before) / args.connections as f64;
    println!(
        "{} idle sockets opened in {:.1}s from {} source addresses; daemon reports {open_now} open",
        sockets.len(),
        opened.as_secs_f64(),
        args.sources
    );
    println!("daemon RSS: {before:.0} KiB before, {after:.0} KiB after");
    println!(
        "memory per idle socket: {per_socket:.2} KiB (target < {:.0} KiB)",
        args.max_kib
    );
    drop(sockets);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(per_socket < args.max_kib && open_now as usize == args.connections)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens one socket from `source` and reads its `status` frame; the socket is then left idle.
async fn open(
    base: &str,
    token: &str,
    source: Ipv4Addr,
    port: u16,
) -> Result<Ws, Box<dyn std::error::Error>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket
        .connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        .await?;
    let mut request = base.into_client_request()?;
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_static(ORIGIN));
    // The token as the widget sends it: a subprotocol, never in the URL.
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("omni.v1, omni.token.{token}"))?,
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    match ws.next().await {
        Some(Ok(_status)) => Ok(ws),
        other => Err(format!("no status frame: {other:?}").into()),
    }
}
