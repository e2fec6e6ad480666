//! How much memory one tenant's routing state takes, and that it stays bounded.
//!
//! Builds one tenant with 10,000 agents and 100,000 open conversations, then simulates three
//! weeks of traffic at 1,000,000 new conversations a week (90 % resolved within the hour, 10 %
//! abandoned after an agent reply and never resolved), with the default retention (resolved
//! conversations kept 7 days, conversations without activity expired after 7 days, sticky
//! agents kept 24 h). It prints bytes per agent, bytes per open conversation, and per day the
//! state held and the process's resident memory, then the peak.
//!
//! Memory is read from `/proc/self/status` (Linux): resident set (`VmRSS`) and its peak
//! (`VmHWM`). A counting global allocator would need `unsafe impl GlobalAlloc`, which the
//! workspace forbids (`unsafe_code = "forbid"`). The allocator keeps freed memory for reuse,
//! so the resident set shows the high-water mark of live state rather than shrinking: a flat
//! line from the second week on is what "bounded" looks like.
//!
//! `cargo run --release -p omni-routing --example routing_memory [weeks]`
//!
//! Measured (release, glibc, 3 weeks, 3.1 M conversations): 781 B per agent, 1,099 B per
//! open conversation; from day 7 on the tenant holds ~1.0 M conversations (a week of traffic,
//! as retention says), 143 k sticky contacts and 1.29 M timers, at a flat 1,038 MiB resident
//! (peak 1,366 MiB, while the conversation map doubled).
//!
//! It lives here rather than in `benches/` so that building it does not build the benches'
//! Kafka and HTTP dependencies.
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use omni_core::{ChannelKind, ChannelRef, ConversationId, TenantId};
use omni_routing::{
    AgentId, AgentProfile, Command, Engine, Inbound, Input, Presence, QueueConfig, RoutingConfig,
    Sla, Strategy, Timestamp,
};

const AGENTS: u32 = 10_000;
const OPEN: u64 = 100_000;
const PER_WEEK: u64 = 1_000_000;
const DAY: u64 = 24 * 3600;

/// Resident and peak resident memory in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Later {
    Reply(u64),
    Resolve(u64),
}

struct Sim {
    engine: Engine,
    tenant: TenantId,
    channels: Vec<ChannelRef>,
    skills: Vec<&'static str>,
}

impl Sim {
    fn conv(&self, n: u64) -> (ConversationId, ChannelRef, String) {
        let channel = self.channels[(n % self.channels.len() as u64) as usize].clone();
        let contact = format!("contact-{n}");
        let id = ConversationId::derive(&self.tenant, &channel, &contact, None);
        (id, channel, contact)
    }

    fn message(&mut self, now: Timestamp, n: u64) {
        let (conversation, channel, contact_id) = self.conv(n);
        let language = Some(if n % 5 == 0 { "en" } else { "vi" }.to_owned());
        self.engine.handle(
            now,
            &Input::Inbound(Inbound {
                conversation,
                channel,
                contact_id,
                tags: vec![],
                language,
                text: "xin chào, tôi cần hỗ trợ về hóa đơn".into(),
            }),
        );
        self.engine.take_changes();
    }

    fn command(&mut self, now: Timestamp, command: Command) {
        self.engine.handle(now, &Input::Command(command));
        self.engine.take_changes();
    }
}

impl Sim {
    /// One tenant with the default retention and an SLA on its single queue.
    fn new() -> Self {
        let config = RoutingConfig::single_queue(QueueConfig {
            strategy: Strategy::LeastLoaded,
            sla: Sla {
                first_response_secs: Some(300),
                next_response_secs: Some(900),
                resolution_secs: Some(DAY),
                ..Sla::default()
            },
            ..QueueConfig::default()
        });
        println!(
            "retention: resolved {} d, expire after {} d, sticky {} h",
            config.resolved_retention_secs / DAY,
            config.expire_after_secs / DAY,
            config.sticky_window_secs / 3600
        );
        Sim {
            engine: Engine::new(config).expect("valid config"),
            tenant: TenantId::new("acme").expect("valid tenant"),
            channels: [
                ChannelKind::Zalo,
                ChannelKind::Messenger,
                ChannelKind::Email,
                ChannelKind::Livechat,
                ChannelKind::Sms,
            ]
            .into_iter()
            .map(|k| ChannelRef::new(k, format!("{}-main", k.as_str())))
            .collect(),
            skills: vec!["billing", "tech", "returns", "vi", "en"],
        }
    }

    /// [`AGENTS`] agents with three skills each, online.
    fn add_agents(&mut self, now: Timestamp) {
        for i in 0..AGENTS {
            let agent = AgentId(format!("agent-{i:05}"));
            let skills = (0..3)
                .map(|k| {
                    let s = self.skills[((i + k) % self.skills.len() as u32) as usize];
                    (s.into(), 3 + (k as u8) % 3)
                })
                .collect();
            self.command(
                now,
                Command::UpsertAgent(AgentProfile {
                    agent: agent.clone(),
                    skills,
                    capacity: 30,
                    channel_capacity: Default::default(),
                }),
            );
            self.command(
                now,
                Command::SetPresence {
                    agent,
                    presence: Presence::Online,
                },
            );
        }
    }

    /// Handles the replies and resolutions due at or before `now`.
    fn run_due(&mut self, later: &mut BinaryHeap<Reverse<(u64, Later)>>, now: u64) {
        while let Some(Reverse((t, _))) = later.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((t, what))) = later.pop() else {
                break;
            };
            let (id, n) = match what {
                Later::Reply(n) | Later::Resolve(n) => (self.conv(n).0, n),
            };
            let _ = n;
            match what {
                Later::Reply(_) => self.command(
                    Timestamp(t),
                    Command::AgentReplied {
                        conversation: id,
                        agent: None,
                    },
                ),
                Later::Resolve(_) => {
                    self.command(Timestamp(t), Command::Resolve { conversation: id })
                }
            }
        }
    }
}

/// Prints one line of the per-day table.
fn report_day(sim: &Sim, now: Timestamp, start: Timestamp) {
    let s = sim.engine.size();
    let (rss, peak) = memory();
    println!(
        "{:3} | {:13} | {:6} | {:6} | {:7.1} | {:12.1}",
        (now.0 - start.0) / (DAY * 1000),
        s.conversations,
        s.sticky_contacts,
        s.timers,
        mib(rss),
        mib(peak)
    );
}

/// Simulates `weeks` of traffic from `start`, printing a line per day; returns how many
/// conversations there were in all.
fn simulate(sim: &mut Sim, start: Timestamp, weeks: u64) -> u64 {
    let mut now = start;
    // Traffic: one new conversation every 7 * 86400 / 1,000,000 s = 0.6048 s.
    let gap_ms = 7 * DAY * 1000 / PER_WEEK;
    let mut rng = Lcg(7);
    let mut later: BinaryHeap<Reverse<(u64, Later)>> = BinaryHeap::new();
    let mut next_conv = OPEN;
    let mut next_tick = now.0 + 60_000;
    let end = now.0 + weeks * 7 * DAY * 1000;
    let mut next_report = now.0 + DAY * 1000;
    println!("day | conversations | sticky | timers | RSS MiB | peak RSS MiB");
    while now.0 < end {
        now = Timestamp(now.0 + gap_ms);
        // Everything due before this arrival: replies, resolutions, ticks.
        sim.run_due(&mut later, now.0);
        while next_tick <= now.0 {
            sim.engine.handle(Timestamp(next_tick), &Input::Tick);
            sim.engine.take_changes();
            next_tick += 60_000;
        }
        let n = next_conv;
        next_conv += 1;
        sim.message(now, n);
        later.push(Reverse((
            now.0 + 20_000 + rng.next() % 100_000,
            Later::Reply(n),
        )));
        if rng.next() % 10 != 0 {
            let hold = 5 * 60_000 + rng.next() % (55 * 60_000);
            later.push(Reverse((now.0 + hold, Later::Resolve(n))));
        }
        if now.0 >= next_report {
            next_report += DAY * 1000;
            report_day(sim, now, start);
        }
    }
    next_conv
}

fn main() {
    let weeks: u64 = std::env::args()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or(3);
    let mut sim = Sim::new();
    let start = Timestamp(1_802_649_600_000);
    let now = start;

    let (base, _) = memory();
    sim.add_agents(now);
    let (with_agents, _) = memory();
    let per_agent = with_agents.saturating_sub(base) as f64 / f64::from(AGENTS);
    for n in 0..OPEN {
        sim.message(now, n);
    }
    let (with_open, _) = memory();
    let per_open = with_open.saturating_sub(with_agents) as f64 / OPEN as f64;
    let size = sim.engine.size();
    println!(
        "{AGENTS} agents: {per_agent:.0} B/agent; {OPEN} open conversations: {per_open:.0} \
         B/conversation (assigned, with SLA timers and a sticky agent); state {size:?}"
    );

    let next_conv = simulate(&mut sim, start, weeks);
    let (rss, peak) = memory();
    println!(
        "after {} conversations over {weeks} week(s): state {:?}; RSS {:.1} MiB, peak {:.1} MiB",
        next_conv,
        sim.engine.size(),
        mib(rss),
        mib(peak)
    );
    sim.engine.check_invariants().expect("invariants hold");
}
