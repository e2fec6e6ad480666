//! Routing core benchmark: decisions per second and latency percentiles of the pure engine at
//! 100, 1,000 and 10,000 agents with 50 skills and 200 queues (plus one backlog queue), and how
//! the cost grows with the number of agents.
//!
//! One decision = a new conversation arriving and being routed, followed by the resolution of
//! the oldest open conversation (which frees capacity and lets the queues drain), plus what
//! that step brings due: answers to the offers made in the previous step and a tick when a
//! timer fell due. The engine stays in a steady state around half load. The workload exercises
//! every path a decision can take:
//! - the four strategies, with 1–2 required skills per queue;
//! - offers: every eighth queue offers (30 s to accept); nine offers in ten are accepted at the
//!   next step, one in ten declined (the conversation goes to the next agent);
//! - overflow: every eighth queue relaxes proficiency after 10 s and spills to the next queue
//!   after 30 s;
//! - sticky routing: a 10-minute sticky window, and one arrival in five is a customer writing
//!   again soon after their conversation was resolved (it reopens and goes to their last agent
//!   when they have room);
//! - channel caps: live chat, e-mail and Messenger arrivals, and agents who take at most two
//!   e-mails and three Messenger conversations of their five places;
//! - a backlog longer than the 64 conversations a drain used to look at: three arrivals in a
//!   hundred need a skill no agent has and wait in the `backlog` queue until the customer
//!   gives up (120 s), about 150 at a time, while that queue's other conversations (two
//!   arrivals in a hundred, which every agent can take) are routed past them;
//! - ticks: offer expiries, overflow steps, abandonment, sticky expiry and forgetting resolved
//!   conversations (a 5-minute reopen window and retention, so the state stays bounded) fire
//!   as they fall due.
//!
//! Criterion measures the mean; a second pass times every decision to report p50/p99/p99.9,
//! and writes `target/bench/routing.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use criterion::{BenchmarkId, Criterion, Throughput};
use omni_core::{ChannelKind, ChannelRef, ConversationId, TenantId};
use omni_routing::{
    AgentId, AgentProfile, Command, Engine, Inbound, Input, Output, OverflowAction, OverflowStep,
    Presence, QueueConfig, QueueId, RoutingConfig, RoutingEvent, Rule, RuleMatch, Skill, Strategy,
    Timestamp,
};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

const SKILLS: usize = 50;
const QUEUES: usize = 200;
/// A skill no agent has: conversations needing it wait in the backlog queue until abandoned.
const RARE: &str = "rare";

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
    // Conversations tagged `rare` need a skill nobody has: they wait in `backlog`.
    rules.push(Rule {
        when: RuleMatch {
            tags: vec![RARE.into()],
            ..Default::default()
        },
        queue: QueueId("backlog".into()),
        add_skills: BTreeMap::from([(Skill(RARE.into()), 1)]),
        priority_boost: 0,
    });
    for q in 0..QUEUES {
        let mut skills = BTreeMap::new();
        skills.insert(skill(rng.below(SKILLS)), 1 + rng.below(3) as u8);
        if rng.below(3) == 0 {
            skills.insert(skill(rng.below(SKILLS)), 1);
        }
        let id = QueueId(format!("q{q}"));
        let overflow = if q % 8 == 6 {
            vec![
                OverflowStep {
                    after_secs: 10,
                    action: OverflowAction::RelaxProficiency(1),
                },
                OverflowStep {
                    after_secs: 30,
                    action: OverflowAction::SpillTo(QueueId(format!("q{}", (q + 1) % QUEUES))),
                },
            ]
        } else {
            Vec::new()
        };
        queues.insert(
            id.clone(),
            QueueConfig {
                skills,
                strategy: strategies[q % 4],
                priority: (q % 3) as i32,
                offer_timeout_secs: (q % 8 == 5).then_some(30),
                overflow,
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
    queues.insert(
        QueueId("backlog".into()),
        QueueConfig {
            abandon_after_secs: Some(120),
            ..Default::default()
        },
    );
    RoutingConfig {
        queues,
        rules,
        default_queue: QueueId("backlog".into()),
        aging_step_secs: 60,
        sticky_window_secs: 600,
        reopen_window_secs: 300,
        resolved_retention_secs: 300,
        ..RoutingConfig::single_queue(QueueConfig::default())
    }
}

struct Workload {
    engine: Engine,
    rng: Lcg,
    now: u64,
    next_conv: u64,
    /// Conversations to resolve, oldest first (the backlog's are left to be abandoned).
    open: VecDeque<ConversationId>,
    /// How many conversations are kept open: half of the agents' places.
    target: usize,
    /// Recently resolved conversations (id, channel, contact), for customers writing again.
    resolved: VecDeque<(ConversationId, ChannelRef, String)>,
    /// Offers made in the last step, answered in the next: (agent, conversation).
    offers: Vec<(AgentId, ConversationId)>,
    /// Every conversation's channel and contact, by id, while open.
    contacts: BTreeMap<ConversationId, (ChannelRef, String)>,
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
                    channel_capacity: BTreeMap::from([
                        (ChannelKind::Email, 2),
                        (ChannelKind::Messenger, 3),
                    ]),
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
            target: agents * 5 / 2,
            resolved: VecDeque::new(),
            offers: Vec::new(),
            contacts: BTreeMap::new(),
            tenant: TenantId::new("bench").unwrap(),
        };
        // Warm up to a steady state: about half of the total capacity open.
        for _ in 0..(agents * 5 / 2) {
            let input = w.next_arrival();
            let out = w.engine.handle(Timestamp(w.now), &input);
            w.note(&out);
            w.engine.take_changes();
        }
        // Then long enough for the backlog, overflow and forgetting to reach their steady state.
        for _ in 0..8_000 {
            w.decision();
        }
        w
    }

    /// The next arriving conversation's input (built outside the timed region): a new contact
    /// on one of three channels, a returning customer, or one nobody can serve.
    fn next_arrival(&mut self) -> Input {
        self.now += 10;
        let roll = self.rng.below(100);
        if roll < 20 && self.resolved.len() > 50 {
            // A customer writing again soon after resolution: the conversation reopens.
            let pick = self.resolved.len() - 1 - self.rng.below(50);
            if let Some((conversation, channel, contact)) = self.resolved.remove(pick) {
                self.open.push_back(conversation);
                self.contacts
                    .insert(conversation, (channel.clone(), contact.clone()));
                return inbound(conversation, channel, contact, vec![]);
            }
        }
        self.next_conv += 1;
        let q = self.rng.below(QUEUES);
        let kind = match self.rng.below(10) {
            0..=6 => ChannelKind::Livechat,
            7 | 8 => ChannelKind::Email,
            _ => ChannelKind::Messenger,
        };
        // Three in a hundred need the rare skill; two go to the backlog queue and can be served.
        let account = if (95..97).contains(&roll) {
            "backlog".to_owned()
        } else {
            format!("q{q}")
        };
        let channel = ChannelRef::new(kind, account);
        let contact = format!("c{}", self.next_conv);
        let conversation = ConversationId::derive(&self.tenant, &channel, &contact, None);
        let tags = if roll >= 97 {
            vec![RARE.to_owned()]
        } else {
            self.open.push_back(conversation);
            self.contacts
                .insert(conversation, (channel.clone(), contact.clone()));
            vec![]
        };
        inbound(conversation, channel, contact, tags)
    }

    /// Remembers the offers an input made, to answer them at the next step.
    fn note(&mut self, out: &[Output]) {
        for o in out {
            if let Output::Event(RoutingEvent::Offered {
                conversation,
                agent,
                ..
            }) = o
            {
                self.offers.push((agent.clone(), *conversation));
            }
        }
    }

    /// One decision: the offers of the last step answered, a new conversation routed, the
    /// oldest open one resolved (capacity frees, the queues drain), and a tick if a timer fell
    /// due. Returns the time the engine spent deciding, and separately the time spent building
    /// the changelog records the Kafka runner writes after every input.
    fn decision(&mut self) -> (Duration, Duration) {
        let mut inputs = Vec::with_capacity(8);
        for (agent, conversation) in std::mem::take(&mut self.offers) {
            let answer = if self.rng.below(10) == 0 {
                Command::Decline {
                    agent,
                    conversation,
                }
            } else {
                Command::Accept {
                    agent,
                    conversation,
                }
            };
            inputs.push(Input::Command(answer));
        }
        inputs.push(self.next_arrival());
        // Resolve the oldest while more than the target are open (an arrival that needs the
        // rare skill adds none), so the load stays at about half.
        let oldest = (self.open.len() > self.target)
            .then(|| self.open.pop_front())
            .flatten();
        if let Some(old) = oldest {
            if let Some((channel, contact)) = self.contacts.remove(&old) {
                self.resolved.push_back((old, channel, contact));
                if self.resolved.len() > 1_000 {
                    self.resolved.pop_front();
                }
            }
            inputs.push(Input::Command(Command::Resolve { conversation: old }));
        }
        let (mut decide, mut changelog) = (Duration::ZERO, Duration::ZERO);
        for input in inputs {
            self.now += 5;
            let (d, c) = self.step(&input);
            decide += d;
            changelog += c;
        }
        if self.engine.next_timer().is_some_and(|t| t.0 <= self.now) {
            let (d, c) = self.step(&Input::Tick);
            decide += d;
            changelog += c;
        }
        (decide, changelog)
    }

    /// One input, timed, then its changelog records, timed apart.
    fn step(&mut self, input: &Input) -> (Duration, Duration) {
        let t = Instant::now();
        let out = self.engine.handle(Timestamp(self.now), input);
        let decide = t.elapsed();
        let t = Instant::now();
        std::hint::black_box(self.engine.take_changes());
        let changelog = t.elapsed();
        self.note(&out);
        (decide, changelog)
    }
}

fn inbound(
    conversation: ConversationId,
    channel: ChannelRef,
    contact: String,
    tags: Vec<String>,
) -> Input {
    Input::Inbound(Inbound {
        conversation,
        channel,
        contact_id: contact,
        tags,
        language: None,
        text: String::new(),
    })
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
    println!(
        "\nRouting core, {SKILLS} skills, {QUEUES} queues + backlog, capacity 5, ~50% load:\n{md}"
    );
    if !test_mode {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("routing.md"), md);
    }
}
