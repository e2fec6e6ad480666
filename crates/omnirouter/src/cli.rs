//! The command line: `omnirouter run`, `omnirouter check-config` and `omnirouter simulate`.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::settings::error_chain;

/// omnirouter: the omni-channel message router daemon.
///
/// Takes customer messages from every channel, publishes them on Kafka as CloudEvents, and
/// serves Prometheus metrics. Config comes from built-in defaults, then --config FILE, then
/// environment variables OMNI__SECTION__KEY (e.g. OMNI__KAFKA__BOOTSTRAP_SERVERS).
#[derive(Debug, Parser)]
#[command(name = "omnirouter", version, about, long_about)]
pub struct Cli {
    /// Config file (TOML); see config/default.toml for every key.
    #[arg(long, short = 'c', global = true, env = "OMNI_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format: pretty for a terminal, json for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: serve the inbound endpoints, /healthz, /readyz and /metrics until
    /// SIGTERM or SIGINT, then drain in-flight requests and flush Kafka within
    /// server.shutdown_grace_secs. Exits 0 when everything was flushed, 75 when the grace
    /// period cut the shutdown short (records not flushed or replies not finished, which
    /// clients retry and Kafka redelivers; the last log line counts them), 1 on a failure,
    /// 2 on a bad config. On SIGHUP, and when the config file changes, tenants are reloaded
    /// without a restart (a config that does not validate is refused and the one in force
    /// keeps running).
    Run,
    /// Validate the config (file + environment) without starting, exactly as a reload does;
    /// exits 2 naming the bad key. With --connect, also checks that Kafka answers and the topics
    /// exist (exit 69 when not).
    CheckConfig {
        /// Also connect to Kafka and check the topics.
        #[arg(long)]
        connect: bool,
    },
    /// Replay a contact-centre day (a profile: arrivals per interval, handling and patience,
    /// roster and shifts) through the routing engine in virtual time, and print service level,
    /// average speed of answer, abandonment and occupancy per queue and interval; with
    /// --search, the smallest roster that meets the profile's target. Needs no broker.
    Simulate(crate::simulate::SimulateArgs),
    /// Follow the event topics (inbound, outbound, delivery, commands, routing) and print a
    /// tenant's or a conversation's events as they are written, one line each (or JSON with
    /// --json), from now, --since a time or --from-beginning.
    Tail(crate::tools::TailArgs),
    /// Publish records again: the dead letters (--dead-letters), each to the topic it came
    /// from with its original key, value and headers, or a time range of a topic (--topic,
    /// --since, --until, --to). Prints how many it read and published; --dry-run publishes
    /// nothing.
    Replay(crate::tools::ReplayArgs),
    /// Print the live chat identity hash of a logged-in customer for a configured widget:
    /// hex(HMAC-SHA256(identity_secret, user_id)), what the site's server passes as
    /// user_hash.
    UserHash(crate::tools::UserHashArgs),
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Simulate(args) = &cli.command {
        return crate::simulate::run(args);
    }
    let loaded = match crate::settings::load(cli.config.as_deref()) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let settings = &loaded.settings;
    init_logging(cli.log_format, &settings.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    match cli.command {
        // Every way out of `run` ends the process here, never by dropping the runtime: its
        // drop waits for blocking tasks, and a librdkafka handle can block there for as long
        // as the broker is away.
        Command::Run => match runtime.block_on(crate::daemon::run(loaded, cli.config)) {
            Ok(leftovers) => crate::shutdown::exit(leftovers),
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "omnirouter failed");
                eprintln!("error: {e:#}");
                std::process::exit(1)
            }
        },
        Command::Simulate(_) => unreachable!("run before the config is read"),
        Command::Tail(args) => crate::tools::tail(settings, &args),
        Command::Replay(args) => crate::tools::replay(settings, &args, &runtime),
        Command::UserHash(args) => crate::tools::user_hash(settings, &args),
        Command::CheckConfig { connect } => {
            eprintln!(
                "config ok: listen {}, kafka {}, {} tenant(s) ({} on the API channel, {} on Messenger, {} on Instagram, {} on WhatsApp, {} on Zalo, {} on SMS), topics {}",
                settings.listen,
                settings.kafka.bootstrap_servers,
                settings
                    .router
                    .as_ref()
                    .map_or(settings.api_tenants.len(), |r| r.tenants.len()),
                settings.api_tenants.len(),
                settings.messenger_tenants.len(),
                settings
                    .messenger_tenants
                    .iter()
                    .filter(|(_, m)| !m.instagram.is_empty())
                    .count(),
                settings.whatsapp_tenants.len(),
                settings.zalo_tenants.len(),
                settings.sms_tenants.len(),
                settings.kafka.topics.inbound
            );
            if connect {
                let result = runtime.block_on(async {
                    let registry = prometheus::Registry::new();
                    let metrics = std::sync::Arc::new(omni_bus::BusMetrics::register(&registry)?);
                    let producer = omni_bus::Producer::new(&settings.kafka, metrics)?;
                    producer
                        .check_ready(std::time::Duration::from_secs(5))
                        .await?;
                    anyhow::Ok(())
                });
                if let Err(e) = result {
                    eprintln!("kafka check failed: {e:#}");
                    return ExitCode::from(EXIT_KAFKA_UNAVAILABLE);
                }
                eprintln!("kafka ok: reachable, topics present");
            }
            ExitCode::SUCCESS
        }
    }
}

/// `check-config --connect` when Kafka does not answer or a topic is missing: sysexits'
/// `EX_UNAVAILABLE`, so a deploy script tells "the broker is not there yet" (retry) from a bad
/// config (2, fix it).
pub(crate) const EXIT_KAFKA_UNAVAILABLE: u8 = 69;

fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("error: {}", error_chain(e));
    ExitCode::from(2)
}

fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Standard error, closed to other threads when the last line is written.
        .with_writer(crate::shutdown::LogWriter);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
