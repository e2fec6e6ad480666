//! What the property tests share: random configurations, teams and input sequences, and how
//! an abstract action becomes a concrete input.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use omni_core::{ChannelKind, ChannelRef, ConversationId, TenantId};
use omni_routing::hours::BusinessHours;
use omni_routing::{
    AfterHours, AgentId, AgentProfile, BusinessHoursOnly, Command, CsatSurvey, Engine, Inbound,
    Input, OverflowAction, OverflowStep, Presence, QueueConfig, QueueId, RoutingConfig, Rule,
    RuleMatch, Skill, Sla, Strategy as RouteStrategy, Timestamp, TransferTarget,
};
use proptest::prelude::*;

pub const SKILLS: [&str; 5] = ["billing", "tech", "vi", "en", "returns"];
pub const KINDS: [ChannelKind; 4] = [
    ChannelKind::Zalo,
    ChannelKind::Messenger,
    ChannelKind::Email,
    ChannelKind::Livechat,
];
pub const WORDS: [&str; 5] = ["refund", "broken", "hello", "invoice", "urgent"];
pub const TAGS: [&str; 3] = ["vip", "new", "b2b"];
/// Conversation pool: small, so conversations get many messages, resolutions and reopenings.
pub const CONVS: usize = 12;
/// Agent id pool: `a0`..`a9` (the initial team uses the first 1-8).
pub const AGENT_IDS: usize = 10;
/// 2027-02-15T00:00:00Z, a Monday.
pub const MONDAY_MS: u64 = 1_802_649_600_000;

pub fn qid(i: usize) -> QueueId {
    QueueId(format!("q{i}"))
}

pub fn aid(i: usize) -> AgentId {
    AgentId(format!("a{i}"))
}

// ----- strategies ------------------------------------------------------------------------------

pub fn skill() -> impl Strategy<Value = Skill> {
    prop::sample::select(SKILLS.to_vec()).prop_map(Skill::from)
}

pub fn kind() -> impl Strategy<Value = ChannelKind> {
    prop::sample::select(KINDS.to_vec())
}

pub fn route_strategy() -> impl Strategy<Value = RouteStrategy> {
    prop::sample::select(vec![
        RouteStrategy::LongestIdle,
        RouteStrategy::LeastLoaded,
        RouteStrategy::RoundRobin,
        RouteStrategy::BestSkill,
    ])
}

pub fn sla() -> impl Strategy<Value = Sla> {
    (
        prop::option::of(30u64..=600),
        prop::option::of(60u64..=900),
        prop::option::of(300u64..=7200),
        prop::option::of(50u8..=95),
        (any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(|(first, next, resolution, at_risk, (f, n, r))| Sla {
            first_response_secs: first,
            next_response_secs: next,
            resolution_secs: resolution,
            at_risk_percent: at_risk,
            // Kept only for queues with hours (see `queue`).
            business_hours_only: BusinessHoursOnly {
                first_response: f,
                next_response: n,
                resolution: r,
            },
        })
}

/// Weekday windows in Ho Chi Minh City time, whole or half hours.
pub fn hours() -> impl Strategy<Value = BusinessHours> {
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

pub fn overflow(
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
pub fn queue(n: usize, i: usize) -> impl Strategy<Value = QueueConfig> {
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
        work(),
        prop::option::of(prop::sample::subsequence(KINDS.to_vec(), 0..=2)),
    )
        .prop_map(
            |(
                skills,
                priority,
                strategy,
                offer_timeout_secs,
                mut sla,
                overflow,
                hours,
                after_hours,
                (wrap_up_secs, abandon_after_secs, declined_retry_secs),
                survey,
            )| {
                if hours.is_none() {
                    sla.business_hours_only = BusinessHoursOnly::default();
                }
                QueueConfig {
                    skills,
                    priority,
                    strategy,
                    offer_timeout_secs,
                    sla,
                    overflow,
                    hours,
                    after_hours,
                    wrap_up_secs,
                    abandon_after_secs,
                    declined_retry_secs,
                    // 30 s: within every generated retention (the reopen window is >= 30 s).
                    csat_survey: survey.map(|channels| CsatSurvey {
                        channels,
                        question: "How did we do? Reply 1-5".into(),
                        answer_within_secs: 30,
                    }),
                }
            },
        )
}

/// Wrap-up, patience and the declined-retry time of a queue: short, so that a case of a few
/// hundred steps sees wrap-ups end, customers abandon and declined conversations come back.
pub fn work() -> impl Strategy<Value = (Option<u64>, Option<u64>, u64)> {
    (
        prop::option::of(5u64..=300),
        prop::option::of(30u64..=900),
        10u64..=600,
    )
}

pub fn rule(n: usize) -> impl Strategy<Value = Rule> {
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
pub fn profile(channel_caps: bool) -> impl Strategy<Value = AgentProfile> {
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

pub fn presence() -> impl Strategy<Value = Presence> {
    prop_oneof![
        3 => Just(Presence::Online),
        1 => Just(Presence::Away),
        1 => Just(Presence::Offline),
    ]
}

/// The initial team: 1-8 agents, mostly online.
pub fn team(channel_caps: bool) -> impl Strategy<Value = Vec<(AgentProfile, Presence)>> {
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
pub struct Scenario {
    pub config: RoutingConfig,
    pub team: Vec<(AgentProfile, Presence)>,
    /// Channel kind of each pooled conversation.
    pub conv_kinds: Vec<ChannelKind>,
    /// Start time: some minute of the week starting Monday 2027-02-15 (UTC).
    pub start: Timestamp,
}

pub fn scenario() -> impl Strategy<Value = Scenario> {
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
                (retention(), 0u32..=3),
            )
        })
        .prop_map(
            |(
                queues,
                rules,
                default,
                aging,
                sticky,
                reopen,
                team,
                conv_kinds,
                minute,
                ((keep, expire), away_after_missed_offers),
            )| Scenario {
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
                    resolved_retention_secs: reopen + keep,
                    expire_after_secs: expire,
                    away_after_missed_offers,
                    kpi_timezone: "Asia/Ho_Chi_Minh".into(),
                },
                team,
                conv_kinds,
                start: Timestamp(MONDAY_MS + minute * 60_000),
            },
        )
}

/// Retention beyond the reopen window, and expiry: short, so that a case of a few hundred
/// steps (0-120 s each) sees conversations forgotten and abandoned ones expire.
pub fn retention() -> impl Strategy<Value = (u64, u64)> {
    (
        prop_oneof![1 => Just(0u64), 2 => 1u64..=3600],
        prop_oneof![1 => 60u64..=600, 2 => 600u64..=7200],
    )
}

/// One always-open queue without skills or rules, assigning directly; no per-channel limits.
pub fn drain_scenario() -> impl Strategy<Value = Scenario> {
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
        retention(),
    )
        .prop_map(
            |(
                strategy,
                sla,
                overflow,
                aging,
                sticky,
                reopen,
                team,
                conv_kinds,
                minute,
                (keep, expire),
            )| {
                let mut config = RoutingConfig::single_queue(QueueConfig {
                    strategy,
                    sla: Sla {
                        business_hours_only: BusinessHoursOnly::default(),
                        ..sla
                    },
                    overflow,
                    ..QueueConfig::default()
                });
                config.aging_step_secs = aging;
                config.sticky_window_secs = sticky.unwrap_or(24 * 3600);
                config.reopen_window_secs = reopen;
                config.resolved_retention_secs = reopen + keep;
                config.expire_after_secs = expire;
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
pub struct Target {
    pub offered: Option<usize>,
    pub conv: usize,
    pub agent: usize,
}

/// An input before it is bound to the engine's state (ids from the pools, targets of offers).
#[derive(Debug, Clone)]
pub enum Act {
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
    Ready {
        agent: usize,
    },
    CustomerLeft {
        conv: usize,
    },
    /// The customer writes a survey answer ("1".."5") or a near miss ("0", "6").
    Score {
        conv: usize,
        score: u8,
    },
    Tick,
    /// Jump to the next pending timer (if later) and tick.
    TickAtNextTimer,
}

pub fn target() -> impl Strategy<Value = Target> {
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

pub fn act(channel_caps: bool) -> impl Strategy<Value = Act> {
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
        3 => agent().prop_map(|agent| Act::Ready { agent }),
        2 => conv().prop_map(|conv| Act::CustomerLeft { conv }),
        4 => (conv(), 0u8..=6).prop_map(|(conv, score)| Act::Score { conv, score }),
        10 => Just(Act::Tick),
        3 => Just(Act::TickAtNextTimer),
    ]
}

pub fn steps(channel_caps: bool) -> impl Strategy<Value = Vec<(u64, Act)>> {
    let dt = prop_oneof![1 => Just(0u64), 3 => 0u64..=120];
    prop::collection::vec((dt, act(channel_caps)), 1..=200)
}

/// The conversations of a scenario: ids and channels of the pool.
#[derive(Debug, Clone)]
pub struct World {
    pub config: RoutingConfig,
    pub conv_ids: Vec<ConversationId>,
    pub channels: Vec<ChannelRef>,
}

impl World {
    pub fn new(scenario: &Scenario) -> Self {
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
        Self {
            config: scenario.config.clone(),
            conv_ids,
            channels,
        }
    }

    /// The inputs that bring the initial team in (profiles, then presences).
    pub fn team_inputs(scenario: &Scenario) -> Vec<Input> {
        let mut out = Vec::new();
        for (profile, presence) in scenario.team.clone() {
            let agent = profile.agent.clone();
            out.push(Input::Command(Command::UpsertAgent(profile)));
            if presence != Presence::Offline {
                out.push(Input::Command(Command::SetPresence { agent, presence }));
            }
        }
        out
    }

    /// Turns an action into a concrete input, reading the engine's views for offers.
    pub fn bind(&self, act: &Act, engine: &Engine, now: &mut Timestamp) -> Input {
        let conv = |i: usize| self.conv_ids[i];
        match act {
            Act::Inbound {
                conv: i,
                words,
                shout,
                tags,
            } => self.inbound(*i, words, *shout, tags),
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
                self.answer_offer(t, matches!(act, Act::Accept(_)), engine)
            }
            Act::Replied { conv: i } => {
                let agent = engine.conversation(conv(*i)).and_then(|v| v.agent);
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
                let to = if *queue < self.config.queues.len() {
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
            Act::Ready { agent } => Input::Command(Command::Ready { agent: aid(*agent) }),
            Act::CustomerLeft { conv: i } => Input::Command(Command::CustomerLeft {
                conversation: conv(*i),
            }),
            Act::Score { conv: i, score } => Input::Inbound(Inbound {
                conversation: self.conv_ids[*i],
                channel: self.channels[*i].clone(),
                contact_id: format!("contact{i}"),
                tags: vec![],
                language: None,
                text: score.to_string(),
            }),
            Act::Tick => Input::Tick,
            Act::TickAtNextTimer => {
                if let Some(t) = engine.next_timer() {
                    *now = (*now).max(t);
                }
                Input::Tick
            }
        }
    }

    /// A customer message in conversation `i`, its text built from the word pool.
    fn inbound(&self, i: usize, words: &[usize], shout: bool, tags: &[usize]) -> Input {
        let mut text = words
            .iter()
            .map(|w| WORDS[*w])
            .collect::<Vec<_>>()
            .join(" please ");
        if shout {
            text = text.to_uppercase();
        }
        Input::Inbound(Inbound {
            conversation: self.conv_ids[i],
            channel: self.channels[i].clone(),
            contact_id: format!("contact{i}"),
            tags: tags.iter().map(|t| TAGS[*t].to_owned()).collect(),
            language: None,
            text,
        })
    }

    /// An agent's answer to an offer: one of the engine's open offers when there are any and
    /// the action asks for one, otherwise the action's own (maybe never offered) pair.
    fn answer_offer(&self, t: &Target, accept: bool, engine: &Engine) -> Input {
        let offered: Vec<(ConversationId, AgentId)> = self
            .conv_ids
            .iter()
            .filter_map(|id| {
                let v = engine.conversation(*id)?;
                (v.state == "offered").then_some((*id, v.agent?))
            })
            .collect();
        let (conversation, agent) = match t.offered {
            Some(k) if !offered.is_empty() => offered[k % offered.len()].clone(),
            _ => (self.conv_ids[t.conv], aid(t.agent)),
        };
        Input::Command(if accept {
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
}
