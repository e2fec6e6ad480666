#![allow(missing_docs)]
// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]
//! Property tests of the routing engine over random configurations and random input sequences.
//!
//! Every case builds a random [`RoutingConfig`] (1-4 queues, skills, strategies, offer timeouts,
//! SLAs, overflow steps, business hours, rules) and a random team (1-8 agents), then feeds the
//! engine up to 200 random inputs (customer messages, agent and supervisor commands, ticks) with
//! time moving forward 0-120 s per step. After every step it checks:
//!
//! 1. `Engine::check_invariants` holds.
//! 2. Every `Offered` / `Assigned` event names an agent who — per a shadow model of the profiles
//!    and presences this test sent — exists, is online and has the conversation's required
//!    skills (queue skills plus rule-added skills) at the required proficiency, lowered only by
//!    a `relax_proficiency(N)` escalation the engine announced earlier for that conversation.
//!    The queue named by routing events is checked against the shadow model too (rules for new
//!    contacts, escalations, transfers).
//! 3. Determinism: a second engine built from the same config and fed the same `(now, input)`
//!    sequence produces exactly the same outputs, step by step.
//! 4. (Single-queue, skill-less, auto-assign configs without per-channel limits.) A queue drains
//!    when capacity frees: after every step, either nothing waits or every online agent is full.
//!
//! A failure message shows the failing step, its outputs and the whole `(time, input)` log of
//! the (shrunk) case; conversation ids are shown as `conv0`..`conv11`.

use std::collections::BTreeMap;

use omni_core::{ChannelKind, ChannelRef, ConversationId, TenantId};
use omni_routing::hours::BusinessHours;
use omni_routing::{
    AfterHours, AgentId, AgentProfile, Command, Engine, Inbound, Input, Output, OverflowAction,
    OverflowStep, Presence, QueueConfig, QueueId, RoutingConfig, RoutingEvent, Rule, RuleMatch,
    Skill, Sla, Strategy as RouteStrategy, Timestamp, TransferTarget,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const SKILLS: [&str; 5] = ["billing", "tech", "vi", "en", "returns"];
const KINDS: [ChannelKind; 4] = [
    ChannelKind::Zalo,
    ChannelKind::Messenger,
    ChannelKind::Email,
    ChannelKind::Livechat,
];
const WORDS: [&str; 5] = ["refund", "broken", "hello", "invoice", "urgent"];
const TAGS: [&str; 3] = ["vip", "new", "b2b"];
/// Conversation pool: small, so conversations get many messages, resolutions and reopenings.
const CONVS: usize = 12;
/// Agent id pool: `a0`..`a9` (the initial team uses the first 1-8).
const AGENT_IDS: usize = 10;
/// 2027-02-15T00:00:00Z, a Monday.
const MONDAY_MS: u64 = 1_802_649_600_000;

fn qid(i: usize) -> QueueId {
    QueueId(format!("q{i}"))
}

fn aid(i: usize) -> AgentId {
    AgentId(format!("a{i}"))
}

// ----- strategies ------------------------------------------------------------------------------

fn skill() -> impl Strategy<Value = Skill> {
    prop::sample::select(SKILLS.to_vec()).prop_map(Skill::from)
}

fn kind() -> impl Strategy<Value = ChannelKind> {
    prop::sample::select(KINDS.to_vec())
}

fn route_strategy() -> impl Strategy<Value = RouteStrategy> {
    prop::sample::select(vec![
        RouteStrategy::LongestIdle,
        RouteStrategy::LeastLoaded,
        RouteStrategy::RoundRobin,
        RouteStrategy::BestSkill,
    ])
}

fn sla() -> impl Strategy<Value = Sla> {
    (
        prop::option::of(30u64..=600),
        prop::option::of(60u64..=900),
        prop::option::of(300u64..=7200),
    )
        .prop_map(|(first, next, resolution)| Sla {
            first_response_secs: first,
            next_response_secs: next,
            resolution_secs: resolution,
        })
}

/// Weekday windows in Ho Chi Minh City time, whole or half hours.
fn hours() -> impl Strategy<Value = BusinessHours> {
    let window = (
        prop::sample::subsequence(vec!["mon", "tue", "wed", "thu", "fri"], 1..=5),
        0u32..=22,
        any::<bool>(),
        1u32..=10,
    );
    prop::collection::vec(window, 1..=2).prop_map(|windows| {
        let owned: Vec<(Vec<&str>, String, String)> = windows
            .into_iter()
            .map(|(days, from, half, len)| {
                let m = if half { 30 } else { 0 };
                let to = (from + len).min(24);
                let to = if to == 24 {
                    "24:00".to_owned()
                } else {
                    format!("{to:02}:{m:02}")
                };
                (days, format!("{from:02}:{m:02}"), to)
            })
            .collect();
        let refs: Vec<(&[&str], &str, &str)> = owned
            .iter()
            .map(|(d, f, t)| (d.as_slice(), f.as_str(), t.as_str()))
            .collect();
        BusinessHours::new("Asia/Ho_Chi_Minh", &refs, vec![]).expect("generated hours are valid")
    })
}

fn overflow(
    action: impl Strategy<Value = OverflowAction>,
) -> impl Strategy<Value = Vec<OverflowStep>> {
    prop::collection::vec((10u64..=300, action), 0..=2).prop_map(|mut steps| {
        steps.sort_by_key(|s| s.0);
        steps
            .into_iter()
            .map(|(after_secs, action)| OverflowStep { after_secs, action })
            .collect()
    })
}

/// Queue `i` of `n`.
fn queue(n: usize, i: usize) -> impl Strategy<Value = QueueConfig> {
    let others: Vec<usize> = (0..n).filter(|j| *j != i).collect();
    let relax = (1u8..=3).prop_map(OverflowAction::RelaxProficiency);
    let (action, after_hours) = if others.is_empty() {
        (relax.boxed(), Just(AfterHours::Wait).boxed())
    } else {
        (
            prop_oneof![
                relax,
                prop::sample::select(others.clone()).prop_map(|j| OverflowAction::SpillTo(qid(j))),
            ]
            .boxed(),
            prop_oneof![
                2 => Just(AfterHours::Wait),
                1 => prop::sample::select(others).prop_map(|j| AfterHours::SpillTo(qid(j))),
            ]
            .boxed(),
        )
    };
    (
        prop::collection::btree_map(skill(), 1u8..=5, 0..=2),
        -2i32..=3,
        route_strategy(),
        prop::option::of(5u64..=60),
        sla(),
        overflow(action),
        prop::option::weighted(0.3, hours()),
        after_hours,
    )
        .prop_map(
            |(
                skills,
                priority,
                strategy,
                offer_timeout_secs,
                sla,
                overflow,
                hours,
                after_hours,
            )| {
                QueueConfig {
                    skills,
                    priority,
                    strategy,
                    offer_timeout_secs,
                    sla,
                    overflow,
                    hours,
                    after_hours,
                }
            },
        )
}

fn rule(n: usize) -> impl Strategy<Value = Rule> {
    let words = || prop::sample::subsequence(WORDS.to_vec(), 1..=2);
    let tags = || prop::sample::subsequence(TAGS.to_vec(), 1..=2);
    let when = prop_oneof![
        kind().prop_map(|k| RuleMatch {
            channel: Some(k),
            ..RuleMatch::default()
        }),
        // Keywords in upper case: matching is case-insensitive.
        (words(), any::<bool>()).prop_map(|(w, upper)| RuleMatch {
            keywords: w
                .into_iter()
                .map(|w| if upper {
                    w.to_uppercase()
                } else {
                    w.to_owned()
                })
                .collect(),
            ..RuleMatch::default()
        }),
        tags().prop_map(|t| RuleMatch {
            tags: t.into_iter().map(String::from).collect(),
            ..RuleMatch::default()
        }),
        (kind(), tags()).prop_map(|(k, t)| RuleMatch {
            channel: Some(k),
            tags: t.into_iter().map(String::from).collect(),
            ..RuleMatch::default()
        }),
    ];
    (
        when,
        0..n,
        prop::collection::btree_map(skill(), 1u8..=5, 0..=1),
        0i32..=3,
    )
        .prop_map(|(when, q, add_skills, priority_boost)| Rule {
            when,
            queue: qid(q),
            add_skills,
            priority_boost,
        })
}

/// A profile (the agent id is filled in later).
fn profile(channel_caps: bool) -> impl Strategy<Value = AgentProfile> {
    let caps = if channel_caps {
        prop::option::weighted(0.3, prop::collection::btree_map(kind(), 0u32..=3, 1..=2))
            .prop_map(Option::unwrap_or_default)
            .boxed()
    } else {
        Just(BTreeMap::new()).boxed()
    };
    // Agents lean skilled, so that random queues find someone often enough to route.
    let level = prop_oneof![1 => 1u8..=2, 3 => 3u8..=5];
    (
        prop::collection::btree_map(skill(), level, 0..=4),
        0u32..=4,
        caps,
    )
        .prop_map(|(skills, capacity, channel_capacity)| AgentProfile {
            agent: AgentId(String::new()),
            skills,
            capacity,
            channel_capacity,
        })
}

fn presence() -> impl Strategy<Value = Presence> {
    prop_oneof![
        3 => Just(Presence::Online),
        1 => Just(Presence::Away),
        1 => Just(Presence::Offline),
    ]
}

/// The initial team: 1-8 agents, mostly online.
fn team(channel_caps: bool) -> impl Strategy<Value = Vec<(AgentProfile, Presence)>> {
    prop::collection::vec(
        (
            profile(channel_caps),
            prop_oneof![
                6 => Just(Presence::Online),
                1 => Just(Presence::Away),
                1 => Just(Presence::Offline),
            ],
        ),
        1..=8,
    )
    .prop_map(|team| {
        team.into_iter()
            .enumerate()
            .map(|(i, (mut p, presence))| {
                p.agent = aid(i);
                (p, presence)
            })
            .collect()
    })
}

#[derive(Debug, Clone)]
struct Scenario {
    config: RoutingConfig,
    team: Vec<(AgentProfile, Presence)>,
    /// Channel kind of each pooled conversation.
    conv_kinds: Vec<ChannelKind>,
    /// Start time: some minute of the week starting Monday 2027-02-15 (UTC).
    start: Timestamp,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1usize..=4)
        .prop_flat_map(|n| {
            let queues: Vec<_> = (0..n).map(|i| queue(n, i)).collect();
            (
                queues,
                prop::collection::vec(rule(n), 0..=3),
                0..n,
                1u64..=120,
                prop::option::of(0u64..=3600),
                30u64..=7200,
                team(true),
                prop::collection::vec(kind(), CONVS),
                0u64..7 * 24 * 60,
            )
        })
        .prop_map(
            |(queues, rules, default, aging, sticky, reopen, team, conv_kinds, minute)| Scenario {
                config: RoutingConfig {
                    queues: queues
                        .into_iter()
                        .enumerate()
                        .map(|(i, q)| (qid(i), q))
                        .collect(),
                    rules,
                    default_queue: qid(default),
                    aging_step_secs: aging,
                    sticky_window_secs: sticky.unwrap_or(24 * 3600),
                    reopen_window_secs: reopen,
                },
                team,
                conv_kinds,
                start: Timestamp(MONDAY_MS + minute * 60_000),
            },
        )
}

/// One always-open queue without skills or rules, assigning directly; no per-channel limits.
fn drain_scenario() -> impl Strategy<Value = Scenario> {
    (
        route_strategy(),
        sla(),
        overflow((1u8..=3).prop_map(OverflowAction::RelaxProficiency)),
        1u64..=120,
        prop::option::of(0u64..=3600),
        30u64..=7200,
        team(false),
        prop::collection::vec(kind(), CONVS),
        0u64..7 * 24 * 60,
    )
        .prop_map(
            |(strategy, sla, overflow, aging, sticky, reopen, team, conv_kinds, minute)| {
                let mut config = RoutingConfig::single_queue(QueueConfig {
                    strategy,
                    sla,
                    overflow,
                    ..QueueConfig::default()
                });
                config.aging_step_secs = aging;
                config.sticky_window_secs = sticky.unwrap_or(24 * 3600);
                config.reopen_window_secs = reopen;
                Scenario {
                    config,
                    team,
                    conv_kinds,
                    start: Timestamp(MONDAY_MS + minute * 60_000),
                }
            },
        )
}

/// Accept/decline target: with `offered`, one of the conversations currently offered (picked by
/// index among them, read from the engine's views); otherwise (or if none is offered) the
/// random conversation and agent.
#[derive(Debug, Clone)]
struct Target {
    offered: Option<usize>,
    conv: usize,
    agent: usize,
}

/// An input before it is bound to the engine's state (ids from the pools, targets of offers).
#[derive(Debug, Clone)]
enum Act {
    Inbound {
        conv: usize,
        words: Vec<usize>,
        shout: bool,
        tags: Vec<usize>,
    },
    Upsert {
        agent: usize,
        profile: AgentProfile,
        bad_level: Option<(Skill, u8)>,
    },
    Presence {
        agent: usize,
        presence: Presence,
    },
    Remove {
        agent: usize,
    },
    Accept(Target),
    Decline(Target),
    Replied {
        conv: usize,
    },
    Resolve {
        conv: usize,
    },
    TransferToAgent {
        conv: usize,
        agent: usize,
    },
    /// `queue` beyond the configured queues names an unknown queue.
    TransferToQueue {
        conv: usize,
        queue: usize,
    },
    Reopen {
        conv: usize,
    },
    Csat {
        conv: usize,
        score: u8,
    },
    Tick,
    /// Jump to the next pending timer (if later) and tick.
    TickAtNextTimer,
}

fn target() -> impl Strategy<Value = Target> {
    (
        prop::option::weighted(0.85, any::<usize>()),
        0..CONVS,
        0..AGENT_IDS,
    )
        .prop_map(|(offered, conv, agent)| Target {
            offered,
            conv,
            agent,
        })
}

fn act(channel_caps: bool) -> impl Strategy<Value = Act> {
    let conv = || 0..CONVS;
    let agent = || 0..AGENT_IDS;
    let index_subset = |n: usize| prop::sample::subsequence((0..n).collect::<Vec<_>>(), 0..=2);
    prop_oneof![
        24 => (conv(), index_subset(WORDS.len()), any::<bool>(), index_subset(TAGS.len()))
            .prop_map(|(conv, words, shout, tags)| Act::Inbound { conv, words, shout, tags }),
        8 => (
            agent(),
            profile(channel_caps),
            prop::option::weighted(0.05, (skill(), prop_oneof![Just(0u8), Just(6u8)])),
        )
            .prop_map(|(agent, profile, bad_level)| Act::Upsert { agent, profile, bad_level }),
        10 => (agent(), presence()).prop_map(|(agent, presence)| Act::Presence { agent, presence }),
        2 => agent().prop_map(|agent| Act::Remove { agent }),
        12 => target().prop_map(Act::Accept),
        6 => target().prop_map(Act::Decline),
        6 => conv().prop_map(|conv| Act::Replied { conv }),
        10 => conv().prop_map(|conv| Act::Resolve { conv }),
        4 => (conv(), agent()).prop_map(|(conv, agent)| Act::TransferToAgent { conv, agent }),
        3 => (conv(), 0usize..5).prop_map(|(conv, queue)| Act::TransferToQueue { conv, queue }),
        3 => conv().prop_map(|conv| Act::Reopen { conv }),
        2 => (conv(), 0u8..=6).prop_map(|(conv, score)| Act::Csat { conv, score }),
        10 => Just(Act::Tick),
        3 => Just(Act::TickAtNextTimer),
    ]
}

fn steps(channel_caps: bool) -> impl Strategy<Value = Vec<(u64, Act)>> {
    let dt = prop_oneof![1 => Just(0u64), 3 => 0u64..=120];
    prop::collection::vec((dt, act(channel_caps)), 1..=200)
}

// ----- the harness -----------------------------------------------------------------------------

/// What the test knows about a conversation from what it sent and what the engine announced.
#[derive(Debug, Clone)]
struct ShadowConv {
    queue: QueueId,
    /// Skills added by the rule that chose the queue for this contact.
    extra: BTreeMap<Skill, u8>,
    /// Largest `relax_proficiency(N)` announced since the contact began (or since its last
    /// transfer to a queue, which starts over at full proficiency).
    relax: u8,
    /// Resolved (and not reopened or started again since).
    resolved: bool,
}

struct Harness {
    scenario: Scenario,
    engine: Engine,
    /// Fed the same `(now, input)` sequence: must give the same outputs.
    replay: Engine,
    now: Timestamp,
    log: Vec<(Timestamp, Input)>,
    conv_ids: Vec<ConversationId>,
    channels: Vec<ChannelRef>,
    /// Shadow model: agents as this test created them (removed agents are absent).
    agents: BTreeMap<AgentId, (AgentProfile, Presence)>,
    convs: BTreeMap<ConversationId, ShadowConv>,
    /// Check property 4 after every step.
    check_drain: bool,
}

fn parse_relax(action: &str) -> Option<u8> {
    action
        .strip_prefix("relax_proficiency(")?
        .strip_suffix(')')?
        .parse()
        .ok()
}

impl Harness {
    fn new(scenario: Scenario, check_drain: bool) -> Self {
        let tenant = TenantId::new("acme").expect("valid tenant");
        let channels: Vec<ChannelRef> = scenario
            .conv_kinds
            .iter()
            .map(|k| ChannelRef::new(*k, format!("{}-main", k.as_str())))
            .collect();
        let conv_ids = channels
            .iter()
            .enumerate()
            .map(|(i, ch)| ConversationId::derive(&tenant, ch, &format!("contact{i}"), None))
            .collect();
        let engine = Engine::new(scenario.config.clone()).expect("generated config is valid");
        let replay = Engine::new(scenario.config.clone()).expect("generated config is valid");
        Self {
            now: scenario.start,
            scenario,
            engine,
            replay,
            log: Vec::new(),
            conv_ids,
            channels,
            agents: BTreeMap::new(),
            convs: BTreeMap::new(),
            check_drain,
        }
    }

    fn run(mut self, steps: &[(u64, Act)]) -> Result<(), TestCaseError> {
        for (profile, presence) in self.scenario.team.clone() {
            let agent = profile.agent.clone();
            self.step(Input::Command(Command::UpsertAgent(profile)))?;
            if presence != Presence::Offline {
                self.step(Input::Command(Command::SetPresence { agent, presence }))?;
            }
        }
        for (dt, act) in steps {
            self.now = self.now.plus_secs(*dt);
            let input = self.bind(act);
            self.step(input)?;
        }
        Ok(())
    }

    /// Turns an action into a concrete input, reading the engine's views for offers.
    fn bind(&mut self, act: &Act) -> Input {
        let conv = |i: usize| self.conv_ids[i];
        match act {
            Act::Inbound {
                conv: i,
                words,
                shout,
                tags,
            } => {
                let mut text = words
                    .iter()
                    .map(|w| WORDS[*w])
                    .collect::<Vec<_>>()
                    .join(" please ");
                if *shout {
                    text = text.to_uppercase();
                }
                Input::Inbound(Inbound {
                    conversation: conv(*i),
                    channel: self.channels[*i].clone(),
                    contact_id: format!("contact{i}"),
                    tags: tags.iter().map(|t| TAGS[*t].to_owned()).collect(),
                    language: None,
                    text,
                })
            }
            Act::Upsert {
                agent,
                profile,
                bad_level,
            } => {
                let mut profile = profile.clone();
                profile.agent = aid(*agent);
                if let Some((skill, level)) = bad_level {
                    profile.skills.insert(skill.clone(), *level);
                }
                Input::Command(Command::UpsertAgent(profile))
            }
            Act::Presence { agent, presence } => Input::Command(Command::SetPresence {
                agent: aid(*agent),
                presence: *presence,
            }),
            Act::Remove { agent } => Input::Command(Command::RemoveAgent { agent: aid(*agent) }),
            Act::Accept(t) | Act::Decline(t) => {
                let offered: Vec<(ConversationId, AgentId)> = self
                    .conv_ids
                    .iter()
                    .filter_map(|id| {
                        let v = self.engine.conversation(*id)?;
                        (v.state == "offered").then_some((*id, v.agent?))
                    })
                    .collect();
                let (conversation, agent) = match t.offered {
                    Some(k) if !offered.is_empty() => offered[k % offered.len()].clone(),
                    _ => (conv(t.conv), aid(t.agent)),
                };
                Input::Command(if matches!(act, Act::Accept(_)) {
                    Command::Accept {
                        agent,
                        conversation,
                    }
                } else {
                    Command::Decline {
                        agent,
                        conversation,
                    }
                })
            }
            Act::Replied { conv: i } => {
                let agent = self.engine.conversation(conv(*i)).and_then(|v| v.agent);
                Input::Command(Command::AgentReplied {
                    conversation: conv(*i),
                    agent,
                })
            }
            Act::Resolve { conv: i } => Input::Command(Command::Resolve {
                conversation: conv(*i),
            }),
            Act::TransferToAgent { conv: i, agent } => Input::Command(Command::Transfer {
                conversation: conv(*i),
                to: TransferTarget::Agent(aid(*agent)),
            }),
            Act::TransferToQueue { conv: i, queue } => {
                let to = if *queue < self.scenario.config.queues.len() {
                    qid(*queue)
                } else {
                    QueueId::from("no-such-queue")
                };
                Input::Command(Command::Transfer {
                    conversation: conv(*i),
                    to: TransferTarget::Queue(to),
                })
            }
            Act::Reopen { conv: i } => Input::Command(Command::Reopen {
                conversation: conv(*i),
            }),
            Act::Csat { conv: i, score } => Input::Command(Command::Csat {
                conversation: conv(*i),
                score: *score,
            }),
            Act::Tick => Input::Tick,
            Act::TickAtNextTimer => {
                if let Some(t) = self.engine.next_timer() {
                    self.now = self.now.max(t);
                }
                Input::Tick
            }
        }
    }

    fn step(&mut self, input: Input) -> Result<(), TestCaseError> {
        let now = self.now;
        let out = self.engine.handle(now, &input);
        let again = self.replay.handle(now, &input);
        self.log.push((now, input));
        let step = self.log.len() - 1;

        // 3. Determinism.
        if out != again {
            return Err(self.fail(
                step,
                &out,
                &format!(
                    "replay gave different outputs:\n{}",
                    self.render_outputs(&again)
                ),
            ));
        }
        // 1. Invariants.
        if let Err(e) = self.engine.check_invariants() {
            return Err(self.fail(step, &out, &format!("invariant broken: {e}")));
        }
        // 2. Offers and assignments go to online agents with the skills.
        if let Err(e) = self.check_events(step, &out) {
            return Err(self.fail(step, &out, &e));
        }
        if let Err(e) = self.check_views() {
            return Err(self.fail(step, &out, &e));
        }
        // 4. Queues drain when capacity frees.
        if self.check_drain {
            if let Err(e) = self.check_drained() {
                return Err(self.fail(step, &out, &e));
            }
        }
        Ok(())
    }

    /// Updates the shadow model from the step's input and outputs, checking every offer and
    /// assignment on the way (in output order: a relaxation precedes the offer it allows).
    fn check_events(&mut self, step: usize, out: &[Output]) -> Result<(), String> {
        let input = self.log[step].1.clone();
        let rejected = out
            .iter()
            .any(|o| matches!(o, Output::Event(RoutingEvent::Rejected { .. })));
        // Agent changes apply before anything the step routes.
        if let Input::Command(cmd) = &input {
            match cmd {
                Command::UpsertAgent(p) if !rejected => {
                    let presence = self
                        .agents
                        .get(&p.agent)
                        .map_or(Presence::Offline, |(_, pr)| *pr);
                    self.agents.insert(p.agent.clone(), (p.clone(), presence));
                }
                Command::SetPresence { agent, presence } if !rejected => {
                    let (_, pr) = self
                        .agents
                        .get_mut(agent)
                        .ok_or_else(|| format!("presence of unknown agent {agent} accepted"))?;
                    *pr = *presence;
                }
                Command::RemoveAgent { agent } if !rejected => {
                    self.agents
                        .remove(agent)
                        .ok_or_else(|| format!("removal of unknown agent {agent} accepted"))?;
                }
                _ => {}
            }
        }
        for o in out {
            let Output::Event(ev) = o else { continue };
            match ev {
                RoutingEvent::Queued {
                    conversation,
                    queue,
                    ..
                } => {
                    let Input::Inbound(msg) = &input else {
                        return Err("`queued` for an input other than a message".into());
                    };
                    if msg.conversation != *conversation {
                        return Err("`queued` for another conversation than the message's".into());
                    }
                    let (expected, extra) = self.choose_queue(msg);
                    if *queue != expected {
                        return Err(format!(
                            "new contact queued in {queue}, but the rules choose {expected}"
                        ));
                    }
                    self.convs.insert(
                        *conversation,
                        ShadowConv {
                            queue: expected,
                            extra,
                            relax: 0,
                            resolved: false,
                        },
                    );
                }
                RoutingEvent::Escalated {
                    conversation,
                    from_queue,
                    to_queue,
                    action,
                } => {
                    let c = self.shadow(conversation)?;
                    if c.queue != *from_queue {
                        return Err(format!(
                            "escalated from {from_queue}, but the conversation is in {}",
                            c.queue
                        ));
                    }
                    c.queue = to_queue.clone();
                    if let Some(n) = parse_relax(action) {
                        c.relax = c.relax.max(n);
                    }
                }
                RoutingEvent::Requeued {
                    conversation,
                    queue,
                    ..
                } => {
                    let transferred = matches!(
                        &input,
                        Input::Command(Command::Transfer { conversation: c, to: TransferTarget::Queue(q) })
                            if c == conversation && q == queue
                    );
                    let c = self.shadow(conversation)?;
                    if transferred {
                        c.queue = queue.clone();
                        c.relax = 0;
                    } else if c.queue != *queue {
                        return Err(format!(
                            "requeued to {queue}, but the conversation is in {}",
                            c.queue
                        ));
                    }
                }
                RoutingEvent::Resolved {
                    conversation,
                    queue,
                    ..
                } => {
                    let c = self.shadow(conversation)?;
                    if c.queue != *queue {
                        return Err(format!(
                            "resolved in {queue}, but the conversation is in {}",
                            c.queue
                        ));
                    }
                    c.relax = 0;
                    c.resolved = true;
                }
                RoutingEvent::Reopened { conversation } => {
                    self.shadow(conversation)?.resolved = false
                }
                RoutingEvent::Offered {
                    conversation,
                    agent,
                    queue,
                    ..
                }
                | RoutingEvent::Assigned {
                    conversation,
                    agent,
                    queue,
                    ..
                } => self.check_fit(*conversation, agent, queue)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn shadow(&mut self, id: &ConversationId) -> Result<&mut ShadowConv, String> {
        self.convs
            .get_mut(id)
            .ok_or_else(|| format!("event for {id}, never queued"))
    }

    /// The rules as documented: the first rule whose every condition holds, else the default.
    fn choose_queue(&self, msg: &Inbound) -> (QueueId, BTreeMap<Skill, u8>) {
        let text = msg.text.to_lowercase();
        for rule in &self.scenario.config.rules {
            let w = &rule.when;
            let ok = w.channel.is_none_or(|k| k == msg.channel.kind)
                && w.account.as_ref().is_none_or(|a| *a == msg.channel.account)
                && (w.keywords.is_empty()
                    || w.keywords.iter().any(|k| text.contains(&k.to_lowercase())))
                && (w.tags.is_empty() || w.tags.iter().any(|t| msg.tags.contains(t)))
                && w.language.is_none();
            if ok {
                return (rule.queue.clone(), rule.add_skills.clone());
            }
        }
        (self.scenario.config.default_queue.clone(), BTreeMap::new())
    }

    /// Property 2 for one offer or assignment.
    fn check_fit(
        &self,
        id: ConversationId,
        agent: &AgentId,
        queue: &QueueId,
    ) -> Result<(), String> {
        let c = self
            .convs
            .get(&id)
            .ok_or_else(|| format!("{id} routed but never queued"))?;
        if c.queue != *queue {
            return Err(format!(
                "routed from {queue}, but the conversation is in {}",
                c.queue
            ));
        }
        let (profile, presence) = self
            .agents
            .get(agent)
            .ok_or_else(|| format!("routed to {agent}, who does not exist (or was removed)"))?;
        if *presence != Presence::Online {
            return Err(format!("routed to {agent}, who is {}", presence.as_str()));
        }
        let required = &self.scenario.config.queues[&c.queue].skills;
        for (skill, level) in required.iter().chain(c.extra.iter()) {
            let need = level.saturating_sub(c.relax).max(1);
            let has = profile.skills.get(skill).copied().unwrap_or(0);
            if has < need {
                return Err(format!(
                    "routed to {agent} with {} {has}, but {} needs {need} \
                     (required {level}, relaxed by {}; queue skills {:?}, rule skills {:?})",
                    skill.0, c.queue, c.relax, required, c.extra
                ));
            }
        }
        Ok(())
    }

    /// The engine's agents are the shadow's, with the same presences; every open conversation
    /// is in the queue the shadow expects, waiting or held by an agent who exists and is not
    /// offline.
    fn check_views(&self) -> Result<(), String> {
        let views: Vec<(AgentId, Presence)> = self
            .engine
            .agent_views()
            .into_iter()
            .map(|v| (v.id, v.presence))
            .collect();
        let shadow: Vec<(AgentId, Presence)> = self
            .agents
            .iter()
            .map(|(id, (_, p))| (id.clone(), *p))
            .collect();
        if views != shadow {
            return Err(format!(
                "agent views {views:?} differ from the agents sent {shadow:?}"
            ));
        }
        for (i, id) in self.conv_ids.iter().enumerate() {
            let Some(c) = self.convs.get(id).filter(|c| !c.resolved) else {
                continue;
            };
            let v = self
                .engine
                .conversation(*id)
                .ok_or_else(|| format!("open conversation conv{i} is lost"))?;
            if v.queue != c.queue {
                return Err(format!("conv{i} is in {}, expected {}", v.queue, c.queue));
            }
            match (v.state, &v.agent) {
                ("waiting", None) => {}
                ("offered" | "assigned", Some(agent)) => match self.agents.get(agent) {
                    Some((_, Presence::Online)) => {}
                    Some((_, Presence::Away)) if v.state == "assigned" => {}
                    Some((_, p)) => {
                        return Err(format!(
                            "conv{i} is {} to {agent}, who is {}",
                            v.state,
                            p.as_str()
                        ))
                    }
                    None => {
                        return Err(format!(
                            "conv{i} is {} to {agent}, who was removed",
                            v.state
                        ))
                    }
                },
                (state, agent) => {
                    return Err(format!(
                        "open conversation conv{i} is {state} (agent {agent:?})"
                    ))
                }
            }
        }
        Ok(())
    }

    /// Property 4 (conservative): nothing waits while an online agent has room.
    fn check_drained(&self) -> Result<(), String> {
        let waiting: usize = self.engine.queue_views().iter().map(|q| q.waiting).sum();
        if waiting == 0 {
            return Ok(());
        }
        for a in self.engine.agent_views() {
            if a.presence == Presence::Online && (a.open as u64) < u64::from(a.capacity) {
                return Err(format!(
                    "{waiting} conversation(s) waiting while {} is online with {}/{} open",
                    a.id, a.open, a.capacity
                ));
            }
        }
        Ok(())
    }

    // ----- failure reports ---------------------------------------------------------------------

    fn names(&self, text: String) -> String {
        let mut text = text;
        for (i, id) in self.conv_ids.iter().enumerate() {
            text = text
                .replace(&format!("ConversationId({id})"), &format!("conv{i}"))
                .replace(&id.to_string(), &format!("conv{i}"));
        }
        text
    }

    fn render_outputs(&self, out: &[Output]) -> String {
        out.iter()
            .map(|o| self.names(format!("    {o:?}")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn fail(&self, step: usize, out: &[Output], what: &str) -> TestCaseError {
        let start = self.scenario.start.0;
        let log = self
            .log
            .iter()
            .enumerate()
            .map(|(i, (t, input))| {
                self.names(format!(
                    "  #{i:<3} t=+{}s {input:?}",
                    t.0.saturating_sub(start) / 1000
                ))
            })
            .collect::<Vec<_>>()
            .join("\n");
        let convs = self
            .channels
            .iter()
            .enumerate()
            .map(|(i, ch)| format!("conv{i}={}", ch.kind.as_str()))
            .collect::<Vec<_>>()
            .join(" ");
        TestCaseError::fail(format!(
            "step #{step}: {what}\noutputs of step #{step}:\n{}\nconfig: {:?}\nstart: {} ms\n\
             conversations: {convs}\ninputs:\n{log}",
            self.render_outputs(out),
            self.scenario.config,
            self.scenario.start.0,
        ))
    }
}

/// `cases` cases, or `PROPTEST_CASES` from the environment for a deeper local run
/// (`PROPTEST_CASES=20000 cargo test -p omni-routing --test properties`).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // No regression files: this suite must not write into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Properties 1-3 over random configurations and input sequences.
    #[test]
    fn routing_keeps_invariants_skills_and_determinism(
        scenario in scenario(),
        steps in steps(true),
    ) {
        Harness::new(scenario, false).run(&steps)?;
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Property 4 (with 1-3): in a single skill-less auto-assign queue without per-channel
    /// limits, nothing waits while an online agent has free capacity.
    #[test]
    fn single_queue_drains_when_capacity_frees(
        scenario in drain_scenario(),
        steps in steps(false),
    ) {
        Harness::new(scenario, true).run(&steps)?;
    }
}
