//! `state-memory`: the daemon's resident memory per agent and per open conversation, measured
//! on a running daemon (router on) by adding agents and then conversations through its HTTP API
//! and reading `VmRSS` from /proc before and after each step.
//!
//! Steps: (1) the idle daemon's RSS; (2) `--agents` agents created and set online through the
//! command API, with room for every conversation, until the router shows them all online;
//! (3) `--conversations` new conversations (one message from a new contact each) posted with
//! `--connections` requests in flight, until the router shows every one of them assigned
//! (the sum of the agents' open conversations). What an open conversation costs is everything
//! the daemon keeps for it: the routing engine's state, the API's routing history, the
//! ingress dedupe entry (bounded by `ingress.dedupe_capacity`) and the allocator's slack.
//!
//! Output: one JSON line on stdout, a Markdown table on stderr.

use clap::Parser;
use futures_util::stream::{self, StreamExt};
use omni_benches::memory_kib;
use omni_benches::tenant_api::{BoxError, TenantApi, TenantArgs};
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Resident memory per agent and per open conversation of a running daemon.
#[derive(Debug, Parser)]
#[command(name = "state-memory")]
struct Cli {
    #[command(flatten)]
    daemon: TenantArgs,
    /// The daemon's process id (memory from /proc).
    #[arg(long)]
    pid: u32,
    /// Agents to add.
    #[arg(long, default_value_t = 10_000)]
    agents: u32,
    /// Open conversations to add.
    #[arg(long, default_value_t = 1_000_000)]
    conversations: u64,
    /// Requests in flight while posting.
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Longest wait for the router to show every agent, then every conversation, seconds.
    #[arg(long, default_value_t = 900)]
    within_secs: u64,
}

fn rss(pid: u32) -> Result<u64, BoxError> {
    memory_kib(pid, "VmRSS:").ok_or_else(|| format!("no VmRSS for pid {pid}").into())
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "state-memory: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sum of the open conversations of the agents named `prefix…`.
async fn open_conversations(api: &TenantApi, prefix: &str) -> Result<u64, BoxError> {
    Ok(api
        .agents(prefix)
        .await?
        .iter()
        .map(|a| a["open"].as_u64().unwrap_or(0))
        .sum())
}

/// Posts one message from each new contact numbered `range`, `connections` at a time; a
/// request refused (503 when shed) is retried a few times, as a provider would.
async fn post(
    api: &TenantApi,
    run: &str,
    range: std::ops::Range<u64>,
    connections: usize,
    failed: &AtomicU64,
) {
    stream::iter(range)
        .map(|n| async move {
            let id = format!("mem-{run}-{n}");
            let mut tries = 0;
            while let Err(e) = api.message(&id, &id, "Cho mình hỏi đơn hàng ạ").await {
                tries += 1;
                if tries == 5 {
                    failed.fetch_add(1, Ordering::Relaxed);
                    let _ = writeln!(std::io::stderr(), "message {n}: {e}");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100 * tries)).await;
            }
        })
        .buffer_unordered(connections.max(1))
        .collect::<Vec<()>>()
        .await;
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let api = cli.daemon.api(cli.connections)?;
    let within = Duration::from_secs(cli.within_secs);
    let prefix = "mem-agent-";
    let idle = rss(cli.pid)?;

    let t = Instant::now();
    let capacity = u32::try_from(cli.conversations / u64::from(cli.agents.max(1)) + 1)?;
    // Half, then all: the slope between the two leaves out what warms up once (Kafka client
    // buffers, connection pools) whatever the count.
    let half_agents = cli.agents / 2;
    api.agents_online(prefix, half_agents, capacity, 64, within)
        .await?;
    let with_half_agents = rss(cli.pid)?;
    api.agents_online(prefix, cli.agents, capacity, 64, within)
        .await?;
    let agents_secs = t.elapsed().as_secs_f64();
    let with_agents = rss(cli.pid)?;

    let t = Instant::now();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let run = format!("{}-{started}", std::process::id());
    let failed = AtomicU64::new(0);
    let half = cli.conversations / 2;
    let mut with_half_conversations = 0;
    let mut open = 0;
    let mut posted_secs = 0.0;
    for (from, to) in [(0, half), (half, cli.conversations)] {
        post(&api, &run, from..to, cli.connections, &failed).await;
        posted_secs = t.elapsed().as_secs_f64();
        let want = to - failed.load(Ordering::Relaxed);
        let deadline = Instant::now() + within;
        open = loop {
            let open = open_conversations(&api, prefix).await.unwrap_or(0);
            if open >= want || Instant::now() > deadline {
                break open;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        if open < want {
            return Err(format!(
                "{open} of {want} conversations assigned after {} s",
                within.as_secs()
            )
            .into());
        }
        if to == half {
            with_half_conversations = rss(cli.pid)?;
        }
    }
    let assigned_secs = t.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    let want = cli.conversations - failed;
    let with_conversations = rss(cli.pid)?;
    let peak = memory_kib(cli.pid, "VmHWM:").unwrap_or(0);
    let per_agent = (with_agents.saturating_sub(with_half_agents) * 1024) as f64
        / f64::from((cli.agents - half_agents).max(1));
    let per_conversation = (with_conversations.saturating_sub(with_half_conversations) * 1024)
        as f64
        / open.saturating_sub(half).max(1) as f64;
    let row = json!({
        "agents": cli.agents,
        "conversations": open,
        "failed_requests": failed,
        "rss_idle_mib": mib(idle),
        "rss_half_agents_mib": mib(with_half_agents),
        "rss_agents_mib": mib(with_agents),
        "rss_half_conversations_mib": mib(with_half_conversations),
        "rss_conversations_mib": mib(with_conversations),
        "peak_mib": mib(peak),
        "bytes_per_agent": per_agent.round(),
        "bytes_per_open_conversation": per_conversation.round(),
        "agents_online_secs": (agents_secs * 10.0).round() / 10.0,
        "posted_per_s": (want as f64 / posted_secs).round(),
        "note": "per agent and per conversation: the slope from half to all",
        "all_assigned_secs": (assigned_secs * 10.0).round() / 10.0,
    });
    writeln!(std::io::stdout(), "{row}")?;
    writeln!(
        std::io::stderr(),
        "| agents | open conversations | RSS idle → ½ agents → agents → ½ conversations → conversations (MiB) | peak MiB | **per agent** | **per open conversation** | posted msgs/s | all assigned after |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n| {} | {open} | {} → {} → {} → {} → {} | {} | **{:.0} B** | **{:.0} B** | {:.0} | {:.0} s |",
        cli.agents,
        mib(idle),
        mib(with_half_agents),
        mib(with_agents),
        mib(with_half_conversations),
        mib(with_conversations),
        mib(peak),
        per_agent,
        per_conversation,
        want as f64 / posted_secs,
        assigned_secs,
    )?;
    Ok(())
}
