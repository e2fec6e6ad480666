//! Routing core benchmark: decisions per second and latency percentiles of the pure engine at
//! 100, 1,000 and 10,000 agents with 50 skills and 200 queues, and how the cost grows with
//! the number of agents.
//!
//! One decision = a new conversation arriving and being assigned, followed by the resolution of
//! the oldest open conversation (which frees capacity and lets the queue drain), so the engine
//! stays in a steady state around half load. Criterion measures the mean; a second pass times
//! every decision to report p50/p99/p99.9, and writes `target/bench/routing.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use criterion::{BenchmarkId, Criterion, Throughput};
use omni_core::{ChannelKind, ChannelRef, ConversationId, TenantId};
use omni_routing::{
    AgentProfile, Command, Engine, Inbound, Input, Presence, QueueConfig, QueueId, RoutingConfig,
    Rule, RuleMatch, Skill, Strategy, Timestamp,
};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

const SKILLS: usize = 50;
const QUEUES: usize = 200;

/// A small deterministic generator (no rand dependency needed for a fixed workload).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn skill(i: usize) -> Skill {
    Skill(format!("s{i}"))
}

fn config() -> RoutingConfig {
    let mut rng = Lcg(7);
    let strategies = [
        Strategy::LeastLoaded,
        Strategy::LongestIdle,
        Strategy::RoundRobin,
        Strategy::BestSkill,
    ];
    let mut queues = BTreeMap::new();
    let mut rules = Vec::new();
    for q in 0..QUEUES {
        let mut skills = BTreeMap::new();
        skills.insert(skill(rng.below(SKILLS)), 1 + rng.below(3) as u8);
        if rng.below(3) == 0 {
            skills.insert(skill(rng.below(SKILLS)), 1);
        }
        let id = QueueId(format!("q{q}"));
        queues.insert(
            id.clone(),
            QueueConfig {
                skills,
                strategy: strategies[q % 4],
                priority: (q % 3) as i32,
                ..Default::default()
            },
        );
        rules.push(Rule {
            when: RuleMatch {
                account: Some(format!("q{q}")),
                ..Default::default()
            },
            queue: id,
            add_skills: BTreeMap::new(),
            priority_boost: 0,
        });
    }
    RoutingConfig {
        queues,
        rules,
        default_queue: QueueId("q0".into()),
        aging_step_secs: 60,
        sticky_window_secs: 0,
        reopen_window_secs: 3600,
        ..RoutingConfig::single_queue(QueueConfig::default())
    }
}

struct Workload {
    engine: Engine,
    rng: Lcg,
    now: u64,
    next_conv: u64,
    open: VecDeque<ConversationId>,
    tenant: TenantId,
}

impl Workload {
    fn new(agents: usize) -> Self {
        let mut engine = Engine::new(config()).unwrap();
        let mut rng = Lcg(42);
        let now = 1_800_000_000_000u64;
        for a in 0..agents {
            let mut skills = BTreeMap::new();
            for _ in 0..(5 + rng.below(4)) {
                skills.insert(skill(rng.below(SKILLS)), 1 + rng.below(5) as u8);
            }
            let id = format!("agent-{a}");
            engine.handle(
                Timestamp(now),
                &Input::Command(Command::UpsertAgent(AgentProfile {
                    agent: id.as_str().into(),
                    skills,
                    capacity: 5,
                    channel_capacity: BTreeMap::new(),
                })),
            );
            engine.handle(
                Timestamp(now),
                &Input::Command(Command::SetPresence {
                    agent: id.as_str().into(),
                    presence: Presence::Online,
                }),
            );
        }
        engine.take_changes();
        let mut w = Workload {
            engine,
            rng,
            now,
            next_conv: 0,
            open: VecDeque::new(),
            tenant: TenantId::new("bench").unwrap(),
        };
        // Warm up to a steady state: about half of the total capacity open.
        for _ in 0..(agents * 5 / 2) {
            let (conversation, input) = w.next_arrival();
            w.engine.handle(Timestamp(w.now), &input);
            w.engine.take_changes();
            w.open.push_back(conversation);
        }
        w
    }

    /// The next arriving conversation and its input (built outside the timed region).
    fn next_arrival(&mut self) -> (ConversationId, Input) {
        self.now += 10;
        self.next_conv += 1;
        let q = self.rng.below(QUEUES);
        let channel = ChannelRef::new(ChannelKind::Livechat, format!("q{q}"));
        let contact = format!("c{}", self.next_conv);
        let conversation = ConversationId::derive(&self.tenant, &channel, &contact, None);
        let input = Input::Inbound(Inbound {
            conversation,
            channel,
            contact_id: contact,
            tags: vec![],
            language: None,
            text: String::new(),
        });
        (conversation, input)
    }

    /// One decision: a new conversation routed, the oldest open one resolved (capacity frees,
    /// the queue drains). Returns the time the engine spent deciding, and separately the time
    /// spent building the changelog records the Kafka runner writes after every input.
    fn decision(&mut self) -> (Duration, Duration) {
        let (conversation, input) = self.next_arrival();
        let t = Instant::now();
        self.engine.handle(Timestamp(self.now), &input);
        let mut decide = t.elapsed();
        let t = Instant::now();
        std::hint::black_box(self.engine.take_changes());
        let mut changelog = t.elapsed();
        self.open.push_back(conversation);
        if let Some(old) = self.open.pop_front() {
            self.now += 10;
            let resolve = Input::Command(Command::Resolve { conversation: old });
            let t = Instant::now();
            self.engine.handle(Timestamp(self.now), &resolve);
            decide += t.elapsed();
            let t = Instant::now();
            std::hint::black_box(self.engine.take_changes());
            changelog += t.elapsed();
        }
        (decide, changelog)
    }
}

/// (decisions/s, p50, p99, p99.9 in µs, changelog µs per decision) over `samples` decisions.
fn percentiles(agents: usize, samples: usize) -> (f64, f64, f64, f64, f64) {
    let mut w = Workload::new(agents);
    let mut times = Vec::with_capacity(samples);
    let mut changelog = Duration::ZERO;
    for _ in 0..samples {
        let (decide, records) = w.decision();
        times.push(decide);
        changelog += records;
    }
    let total: Duration = times.iter().sum();
    times.sort_unstable();
    let at = |p: f64| {
        times[((times.len() as f64 * p) as usize).min(times.len() - 1)].as_secs_f64() * 1e6
    };
    let changelog_us = changelog.as_secs_f64() * 1e6 / samples as f64;
    (
        samples as f64 / total.as_secs_f64(),
        at(0.50),
        at(0.99),
        at(0.999),
        changelog_us,
    )
}

fn main() {
    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let sizes = [100usize, 1_000, 10_000];
    {
        let mut group = criterion.benchmark_group("routing_decision");
        group.throughput(Throughput::Elements(1));
        for &n in &sizes {
            let mut w = Workload::new(n);
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter_custom(|iters| (0..iters).map(|_| w.decision().0).sum())
            });
        }
        group.finish();
    }
    criterion.final_summary();

    // cargo test runs benches once in test mode: keep that quick.
    let test_mode =
        std::env::args().any(|a| a == "--test") || std::env::args().all(|a| a != "--bench");
    let samples = if test_mode { 2_000 } else { 200_000 };
    let mut rows = Vec::new();
    for &n in &sizes {
        rows.push((n, percentiles(n, samples)));
    }
    let base = rows[0].1 .0;
    let mut md = String::from(
        "| agents | decisions/s (one core) | p50 µs | p99 µs | p99.9 µs | cost vs 100 agents | + changelog records µs |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (n, (rate, p50, p99, p999, changelog)) in &rows {
        md.push_str(&format!(
            "| {n} | {rate:.0} | {p50:.1} | {p99:.1} | {p999:.1} | {:.2}× | {changelog:.1} |\n",
            base / rate
        ));
    }
    println!("\nRouting core, {SKILLS} skills, {QUEUES} queues, capacity 5, ~50% load:\n{md}");
    if !test_mode {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("routing.md"), md);
    }
}
