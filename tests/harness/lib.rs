//! The end-to-end harness: real servers on 127.0.0.1, started and stopped by the tests.
//!
//! - [`Broker`]: the tansu Kafka-protocol broker (in memory, or SQLite-backed to survive a
//!   restart), on a free port.
//! - [`Daemon`]: the `omnirouter` binary with `config/default.toml` plus environment overrides.
//! - [`read_topic`]: reads a topic back with an independent rdkafka consumer.
//! - [`browser::Chromium`]: Debian's headless chromium driven over the DevTools protocol.
//! - [`standin::StandIn`]: a local HTTP server standing in for a provider's API.
//! - [`webhooks`]: the providers' webhooks (Messenger, Zalo, Twilio), signed as they sign.
//!
//! Every process is stopped when its handle drops; logs go to the handle's temp dir and are
//! printed when a wait fails, so a red test says why.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

pub mod browser;
pub mod livechat;
pub mod mail;
pub mod oauth;
pub mod outbound;
pub mod standin;
pub mod webhooks;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A 127.0.0.1 port for a server a test is about to start (tansu, a daemon, dovecot).
///
/// A port the kernel hands out for `127.0.0.1:0` is released again before the server binds it,
/// and in that gap any outgoing connection (a Kafka client's, another daemon's) may take it as
/// its source port: the server then fails with "address already in use". So ports come from
/// below the kernel's ephemeral range, where no outgoing connection is given one, each at most
/// once per test process, and only after a bind shows no one is listening there.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let (low, high) = port_range();
    let span = high - low;
    // Processes started together (two test binaries, two clones) start far apart.
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id().wrapping_mul(7919) % span));
    for _ in 0..span {
        let port = low + next.fetch_add(1, Ordering::Relaxed) % span;
        let port = u16::try_from(port).expect("ports are below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// The ports [`free_port`] hands out: those below the kernel's ephemeral range (from
/// `ip_local_port_range`), or above it when it starts too low to leave room.
fn port_range() -> (u32, u32) {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(str::parse::<u32>);
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32768, 60999));
    match ephemeral {
        (low, _) if low >= 12_000 => (10_000, low),
        (_, high) if high <= 63_000 => (high + 1, 65_536),
        _ => panic!("the ephemeral port range {ephemeral:?} leaves no room for test servers"),
    }
}

fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = PathBuf::from(home).join(".cache/omnirouter/tansu-0.6.0/bin/tansu");
    assert!(
        p.exists(),
        "tansu not found at {} (set TANSU_BIN, or run `make deps`)",
        p.display()
    );
    p
}

/// The daemon binary built by `cargo build -p omnirouter`.
pub fn omnirouter_bin() -> PathBuf {
    if let Ok(p) = std::env::var("OMNIROUTER_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> → target/<profile>/omnirouter
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("omnirouter");
    assert!(
        p.exists(),
        "omnirouter binary not found at {} (run `cargo build -p omnirouter` first; `make test` does)",
        p.display()
    );
    p
}

fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

/// Stops a child process: SIGTERM, then SIGKILL if it has not exited within `grace`. Returns
/// its exit status if it exited by itself.
pub fn stop_child(mut child: Child, grace: Duration) -> Option<std::process::ExitStatus> {
    signal(&child, "TERM");
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// POSTs `body` as JSON with a bearer token; returns the status and the JSON answer (or null).
pub async fn post_json(
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// A tansu broker on 127.0.0.1.
pub struct Broker {
    pub port: u16,
    /// The port clients are told to connect to, when it is not `port` (a proxy in front).
    advertised: Option<u16>,
    dir: tempfile::TempDir,
    storage: String,
    child: Option<Child>,
}

impl Broker {
    /// A broker keeping data in memory (fast; lost on restart).
    pub fn memory() -> Self {
        Self::start("memory://tansu/".to_owned())
    }

    /// A broker keeping data in SQLite in its temp dir (survives [`Broker::restart`]).
    pub fn durable() -> Self {
        // tansu resolves the SQLite path relative to its working directory, which is the
        // broker's temp dir (see `spawn`).
        Self::start("sqlite://tansu.db".to_owned())
    }

    /// A durable broker that tells clients to connect to `advertised_port` (a proxy in front of
    /// it, started by the test) instead of its own port; [`Broker::bootstrap`] stays direct.
    pub fn durable_behind(advertised_port: u16) -> Self {
        Self::start_advertising("sqlite://tansu.db".to_owned(), Some(advertised_port))
    }

    fn start(storage: String) -> Self {
        Self::start_advertising(storage, None)
    }

    fn start_advertising(storage: String, advertised: Option<u16>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Self {
            port: free_port(),
            advertised,
            dir,
            storage,
            child: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        if self.child.is_none() && self.dir.path().join("tansu.log").exists() {
            // The log is appended across restarts: mark where this process starts.
            let mut log = std::fs::OpenOptions::new()
                .append(true)
                .open(self.dir.path().join("tansu.log"))
                .unwrap();
            let _ = std::io::Write::write_all(&mut log, b"--- omni-e2e: tansu restarted ---\n");
        }
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", &self.storage])
            .current_dir(self.dir.path())
            // tansu's tracing writes to stdout, its panics to stderr: one log keeps their order.
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(20)),
            "tansu did not listen on {}; log: {}",
            self.port,
            self.log()
        );
    }

    /// `127.0.0.1:port`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, Duration::from_secs(5));
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Panics with tansu's exit status and log if it is no longer running: a test that goes
    /// on against a dead broker only times out later, far from the cause.
    pub fn assert_running(&mut self) {
        let Some(child) = self.child.as_mut() else {
            panic!("tansu was stopped by the test; log:\n{}", self.log());
        };
        if let Ok(Some(status)) = child.try_wait() {
            panic!("tansu exited ({status}); log:\n{}", self.log());
        }
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::env::var_os("OMNI_E2E_KEEP_TANSU_LOGS").is_some() {
            let kept = std::env::temp_dir().join(format!("omni-e2e-tansu-ok-{}.log", self.port));
            let _ = std::fs::write(kept, self.log());
        }
        if std::thread::panicking() {
            // The test failed: the broker's last words often say why.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            let kept = std::env::temp_dir().join(format!("omni-e2e-tansu-{}.log", self.port));
            let _ = std::fs::write(&kept, &log);
            let first_panic = lines
                .iter()
                .position(|l| l.contains("panicked"))
                .map(|i| lines[i..(i + 3).min(lines.len())].join("\n"));
            eprintln!(
                "tansu on {} (whole log kept in {}); first panic: {first_panic:?}; last 40 \
                 lines:\n{tail}",
                self.port,
                kept.display()
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The omnirouter daemon, started with `config/default.toml` and overrides.
///
/// Every daemon of the suite checks, when its test ends, that its log holds none of the
/// secrets it was configured with (tokens, app secrets, passwords, keys given in the
/// environment, and the demo tenant's): a secret in a log line fails the test that caused it.
pub struct Daemon {
    pub port: u16,
    /// The admin listener's port (metrics, readiness, agent API), when apart from `port`.
    pub admin_port: Option<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The configured secrets, by the key that set them.
    secrets: Vec<(String, String)>,
}

/// The environment key of the admin listener; given [`ADMIN_AUTO`] as its value, the harness
/// gives each daemon a free port of its own (so `start_many` splits every replica).
pub const ADMIN_LISTEN: &str = "OMNI__SERVER__ADMIN_LISTEN";
/// See [`ADMIN_LISTEN`].
pub const ADMIN_AUTO: &str = "auto";

/// The demo tenant's secrets in `config/default.toml`.
const DEFAULT_SECRETS: [(&str, &str); 3] = [
    ("tenants.demo.api_token", "demo-token"),
    ("tenants.demo.api_hmac_secret", "demo-secret"),
    ("tenants.demo.agent_api_token", "demo-agent-token"),
];

/// The secrets among the environment overrides: values of keys naming a token, secret,
/// password or key (not a file or URL), long enough not to match by chance.
fn secrets_of(env: &[(&str, &str)]) -> Vec<(String, String)> {
    let secret_key = |k: &str| {
        let k = k.to_ascii_uppercase();
        ["TOKEN", "SECRET", "PASSWORD", "_KEY"]
            .iter()
            .any(|s| k.contains(s))
            && !k.ends_with("_FILE")
            && !k.ends_with("_URL")
            && !k.ends_with("_ID")
    };
    env.iter()
        .filter(|(k, v)| secret_key(k) && v.len() >= 6)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .chain(
            DEFAULT_SECRETS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
        .collect()
}

impl Daemon {
    /// Starts the daemon against `broker` and waits until `/readyz` says ready.
    pub async fn start(broker: &Broker, env: &[(&str, &str)]) -> Self {
        let d = Self::spawn(&broker.bootstrap(), env);
        d.wait_ready(Duration::from_secs(30)).await;
        d
    }

    /// Starts `n` daemons sharing `broker` (one consumer group, as replicas behind a load
    /// balancer) and waits until each is ready.
    pub async fn start_many(broker: &Broker, n: usize, env: &[(&str, &str)]) -> Vec<Self> {
        let daemons: Vec<Self> = (0..n)
            .map(|_| Self::spawn(&broker.bootstrap(), env))
            .collect();
        for d in &daemons {
            d.wait_ready(Duration::from_secs(30)).await;
        }
        daemons
    }

    /// Starts the daemon with a config file of its own (`config` written to its temp dir, which
    /// [`Daemon::write_config`] replaces later) and waits until it is ready.
    pub async fn start_with_config(broker: &Broker, config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("omnirouter.toml");
        std::fs::write(&path, config).unwrap();
        let d = Self::spawn_in(dir, &path, &broker.bootstrap(), env);
        d.wait_ready(Duration::from_secs(30)).await;
        d
    }

    /// Starts the daemon without waiting for readiness.
    pub fn spawn(bootstrap: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::spawn_in(
            dir,
            &workspace().join("config/default.toml"),
            bootstrap,
            env,
        )
    }

    fn spawn_in(
        dir: tempfile::TempDir,
        config: &Path,
        bootstrap: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let admin_port = env
            .iter()
            .any(|(k, v)| *k == ADMIN_LISTEN && *v == ADMIN_AUTO)
            .then(free_port);
        let log = std::fs::File::create(dir.path().join("omnirouter.log")).unwrap();
        let mut cmd = Command::new(omnirouter_bin());
        cmd.arg("--config")
            .arg(config)
            .args(["--log-format", "json", "run"])
            .env("OMNI__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("OMNI__KAFKA__BOOTSTRAP_SERVERS", bootstrap)
            .env("OMNI__KAFKA__PARTITIONS", "3")
            .env("OMNI__KAFKA__STATISTICS_INTERVAL_MS", "1000")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(admin) = admin_port {
            cmd.env(ADMIN_LISTEN, format!("127.0.0.1:{admin}"));
        }
        let child = cmd.spawn().expect("start omnirouter");
        Self {
            port,
            admin_port,
            dir,
            child: Some(child),
            secrets: secrets_of(env),
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// The URL of `path` on the listener that serves it: the agent API, `/metrics` and
    /// `/readyz` on the admin one, everything else (webhooks, the API channel, live chat) on
    /// the public one.
    pub fn url_for(&self, path: &str) -> String {
        if path.starts_with("/v1/tenants/") || path == "/metrics" || path == "/readyz" {
            self.admin_url(path)
        } else {
            self.url(path)
        }
    }

    /// `http://127.0.0.1:admin_port` (or `port` when there is one listener).
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}{}",
            self.admin_port.unwrap_or(self.port),
            path
        )
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(r) = client.get(self.admin_url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "omnirouter not ready after {timeout:?}; log:\n{}",
            self.log()
        );
    }

    /// Sends SIGTERM and waits for the exit status (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        stop_child(self.child.take()?, timeout)
    }

    /// The config file of a daemon started with [`Daemon::start_with_config`].
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("omnirouter.toml")
    }

    /// Replaces the config file the way an editor or a config-management tool does: a new file
    /// renamed over the old one.
    pub fn write_config(&self, config: &str) {
        let tmp = self.dir.path().join("omnirouter.toml.new");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    /// Sends SIGHUP (reload the config).
    pub fn hangup(&self) {
        signal(self.child.as_ref().expect("daemon running"), "HUP");
    }

    /// The daemon's process id (`None` once stopped): the router names its member
    /// `<host>-<pid>-<random>`, so a test can tell which replica a claim or a read came from.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the daemon outright (SIGKILL): no draining, no flush, no final commit.
    pub fn terminate_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("omnirouter.log")).unwrap_or_default()
    }

    /// GET `/v1/tenants/{tenant}/{path}` of the agent API with `token`: the status, the JSON
    /// answer (or null) and the instance that answered it (`X-Omni-Served-By`).
    pub async fn get_served(
        &self,
        tenant: &str,
        path: &str,
        token: &str,
    ) -> (u16, serde_json::Value, Option<String>) {
        let r = reqwest::Client::new()
            .get(self.admin_url(&format!("/v1/tenants/{tenant}/{path}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let served_by = r
            .headers()
            .get("x-omni-served-by")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (
            status,
            r.json().await.unwrap_or(serde_json::Value::Null),
            served_by,
        )
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: keep the daemon's log for whoever reads the failure.
            let kept = std::env::temp_dir().join(format!("omni-e2e-daemon-{}.log", self.port));
            if std::fs::write(&kept, self.log()).is_ok() {
                eprintln!(
                    "omnirouter on {}: log kept in {}",
                    self.port,
                    kept.display()
                );
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let log = self.log();
            let leaked: Vec<&str> = self
                .secrets
                .iter()
                .filter(|(_, value)| log.contains(value.as_str()))
                .map(|(key, _)| key.as_str())
                .collect();
            if !leaked.is_empty() {
                let kept = std::env::temp_dir().join(format!("omni-e2e-daemon-{}.log", self.port));
                let _ = std::fs::write(&kept, &log);
                panic!(
                    "omnirouter logged the secret of {leaked:?} (log kept in {})",
                    kept.display()
                );
            }
        }
    }
}

/// The value of the first sample of `name` whose labels contain every `label="value"` given.
pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .next()
        .unwrap_or(0.0)
}

/// A record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub key: Vec<u8>,
    pub value: serde_json::Value,
}

/// Reads `topic` from the beginning with an independent consumer until `want` records arrived
/// (then for `settle` more, to catch extras) or `timeout` passed.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    want: usize,
    timeout: Duration,
    settle: Duration,
) -> Vec<Read> {
    let consumer = from_beginning(bootstrap, topic, "e2e-reader");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut settle_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline || settle_until.is_some_and(|s| now >= s) {
            break;
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let value = serde_json::from_slice(m.payload().unwrap_or_default())
                .unwrap_or(serde_json::Value::Null);
            out.push(Read {
                partition: m.partition(),
                key: m.key().unwrap_or_default().to_vec(),
                value,
            });
        }
        if out.len() >= want && settle_until.is_none() {
            settle_until = Some(Instant::now() + settle);
        }
    }
    out
}

/// The environment of a router cluster in tests: 4 partitions, a 6 s session (fast failover),
/// 200 ms ticks, and `tenants` each with API token `tok` and agent API token `agent`.
pub fn cluster_env(tenants: &[&str]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("OMNI__KAFKA__PARTITIONS".into(), "4".into()),
        (
            "OMNI__KAFKA__CONSUMER__SESSION_TIMEOUT_MS".into(),
            "6000".into(),
        ),
        (
            "OMNI__KAFKA__CONSUMER__HEARTBEAT_INTERVAL_MS".into(),
            "500".into(),
        ),
        ("OMNI__ROUTER__TICK_INTERVAL_MS".into(), "200".into()),
    ];
    for t in tenants {
        let up = t.to_uppercase();
        env.push((format!("OMNI__TENANTS__{up}__API_TOKEN"), "tok".into()));
        env.push((
            format!("OMNI__TENANTS__{up}__AGENT_API_TOKEN"),
            "agent".into(),
        ));
    }
    env
}

/// `env` as the borrowed pairs [`Daemon::start`] takes.
pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A consumer outside any group, assigned every partition of `topic` from the beginning.
fn from_beginning(bootstrap: &str, topic: &str, name: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{name}-{}", free_port()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "20")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

/// The offsets `group` committed on each partition of `topic` (`None`: nothing committed), as
/// the group's next member would start from them.
pub fn committed_offsets(bootstrap: &str, group: &str, topic: &str) -> Vec<(i32, Option<i64>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => (e.partition(), Some(o)),
            _ => (e.partition(), None),
        })
        .collect()
}

/// A record read back with its place in the log and its headers.
#[derive(Debug, Clone)]
pub struct LogRead {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub headers: std::collections::BTreeMap<String, Vec<u8>>,
}

/// Reads every partition of `topic` from the beginning to its current end (until no record
/// arrives for `quiet`), in log order per partition, with headers.
pub fn read_log(bootstrap: &str, topic: &str, quiet: Duration) -> Vec<LogRead> {
    use rdkafka::message::Headers as _;
    let consumer = from_beginning(bootstrap, topic, "e2e-log");
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            last = Instant::now();
            let headers = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(LogRead {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().unwrap_or_default().to_vec(),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
    }
    out
}

/// Produces records as a CRM written in Python would: confluent-kafka (librdkafka) with
/// `partitioner` set as given (`murmur2_random` is the Java client's partitioning). Each
/// record is `(topic, key, value, partition)`; `Some(partition)` pins it there.
pub fn python_produce(
    bootstrap: &str,
    partitioner: &str,
    records: &[(String, String, serde_json::Value, Option<i32>)],
) {
    let python = workspace().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: `make deps` creates .venv with confluent-kafka",
        python.display()
    );
    let script = r#"
import json, sys
from confluent_kafka import Producer
bootstrap, partitioner = sys.argv[1], sys.argv[2]
p = Producer({"bootstrap.servers": bootstrap, "partitioner": partitioner, "acks": "all",
              "enable.idempotence": True, "linger.ms": 1})
failed = []
def report(err, msg):
    if err is not None:
        failed.append(str(err))
for line in sys.stdin:
    r = json.loads(line)
    kw = {"key": r["key"].encode(), "value": json.dumps(r["value"]).encode(), "on_delivery": report}
    if r.get("partition") is not None:
        kw["partition"] = r["partition"]
    p.produce(r["topic"], **kw)
    p.poll(0)
left = p.flush(30)
if failed or left:
    print("delivery failed:", failed, "unflushed:", left, file=sys.stderr)
    sys.exit(1)
"#;
    let mut child = Command::new(python)
        .args(["-c", script, bootstrap, partitioner])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        for (topic, key, value, partition) in records {
            let line = serde_json::json!({"topic": topic, "key": key, "value": value, "partition": partition});
            writeln!(stdin, "{line}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A command CloudEvent as a CRM writes it to `omni.commands.v1`.
pub fn command_event(tenant: &str, data: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "specversion": "1.0",
        "id": uuid_like(),
        "source": "/crm/python",
        "type": "omni.command",
        "time": chrono::Utc::now().to_rfc3339(),
        "datacontenttype": "application/json",
        "tenant": tenant,
        "data": data,
    })
}

/// A random RFC 4122 v4-shaped id (tests need uniqueness, not a UUID crate).
pub fn uuid_like() -> String {
    let a = free_port() as u64;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let x = nanos ^ (a << 48) ^ u64::from(std::process::id());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (x >> 32) as u32,
        (x >> 16) as u16,
        (x & 0xfff) as u16,
        (a & 0xfff) as u16,
        nanos & 0xffff_ffff_ffff
    )
}

/// The safe fetcher with only `127.0.0.1` allowed beyond the public internet, no store: what
/// a sender needs to read attachments from a stand-in on this host.
pub fn loopback_media() -> std::sync::Arc<omni_media::Media> {
    let config: omni_media::MediaConfig =
        serde_json::from_value(serde_json::json!({"fetch": {"allow_networks": ["127.0.0.1/32"]}}))
            .unwrap();
    std::sync::Arc::new(omni_media::Media::new(&config.validate().unwrap()).unwrap())
}

/// A JSON Schema validator for a file in `crates/omni-core/schemas/`.
pub fn schema(file: &str) -> jsonschema::Validator {
    let path = workspace().join("crates/omni-core/schemas").join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&json)
        .unwrap_or_else(|e| panic!("schema {file}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check can fail: a daemon whose log holds a configured secret fails its test. (The
    /// "secret" here is a word every log has, passed in a variable the daemon ignores.)
    #[test]
    fn a_daemon_whose_log_holds_a_configured_secret_fails_its_test() {
        let daemon = Daemon::spawn("127.0.0.1:9", &[("OMNI_E2E_CHECK_SECRET", "omnirouter")]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !daemon.log().contains("omnirouter") {
            assert!(Instant::now() < deadline, "the daemon wrote no log");
            std::thread::sleep(Duration::from_millis(50));
        }
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(daemon)));
        let message = dropped
            .unwrap_err()
            .downcast::<String>()
            .map(|m| *m)
            .unwrap_or_default();
        assert!(message.contains("OMNI_E2E_CHECK_SECRET"), "{message}");
        assert!(
            !message.contains("\"omnirouter\""),
            "the value is not echoed"
        );
    }

    #[test]
    fn secrets_are_the_values_of_secret_keys_never_files_urls_or_ids() {
        let env = [
            ("OMNI__TENANTS__A__MESSENGER__APP_SECRET", "META-SECRET"),
            (
                "OMNI__TENANTS__A__WHATSAPP__NUMBERS__1__ACCESS_TOKEN",
                "WA-TOKEN-1",
            ),
            ("OMNI__ZALO__TOKEN_KEY", "b21uaXJvdXRlcg=="),
            ("OMNI__TENANTS__A__ZALO__OAS__1__TOKEN_FILE", "/tmp/oa.json"),
            ("OMNI__MEDIA__S3__ACCESS_KEY_ID", "test-key"),
            ("OMNI__TENANTS__A__API_TOKEN", "t"),
            ("OMNI__WHATSAPP__GRAPH_BASE_URL", "http://127.0.0.1:1"),
        ];
        let keys: Vec<String> = secrets_of(&env).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "OMNI__TENANTS__A__MESSENGER__APP_SECRET",
                "OMNI__TENANTS__A__WHATSAPP__NUMBERS__1__ACCESS_TOKEN",
                "OMNI__ZALO__TOKEN_KEY",
                "tenants.demo.api_token",
                "tenants.demo.api_hmac_secret",
                "tenants.demo.agent_api_token",
            ]
        );
    }
}
