//! Unit tests: one behaviour of the routing model each, read as a specification.

use omni_core::{ChannelKind, ChannelRef, ConversationId, TenantId};
use std::collections::BTreeMap;

use crate::config::*;
use crate::hours::BusinessHours;
use crate::input::*;
use crate::model::*;
use crate::output::*;
use crate::Engine;

const T0: u64 = 1_800_000_000_000; // a fixed instant; the engine never reads a clock

fn at(secs: u64) -> Timestamp {
    Timestamp(T0 + secs * 1000)
}

fn conv(n: u32) -> ConversationId {
    let t = TenantId::new("acme").unwrap();
    ConversationId::derive(
        &t,
        &ChannelRef::new(ChannelKind::Api, "web"),
        &format!("c{n}"),
        None,
    )
}

fn msg(n: u32, kind: ChannelKind) -> Input {
    Input::Inbound(Inbound {
        conversation: conv(n),
        channel: ChannelRef::new(kind, "main"),
        contact_id: format!("c{n}"),
        tags: vec![],
        language: None,
        text: "xin chào".into(),
    })
}

fn chat(n: u32) -> Input {
    msg(n, ChannelKind::Livechat)
}

fn agent(id: &str, skills: &[(&str, u8)], capacity: u32) -> Input {
    Input::Command(Command::UpsertAgent(AgentProfile {
        agent: id.into(),
        skills: skills.iter().map(|(s, l)| (Skill::from(*s), *l)).collect(),
        capacity,
        channel_capacity: BTreeMap::new(),
    }))
}

fn presence(id: &str, p: Presence) -> Input {
    Input::Command(Command::SetPresence {
        agent: id.into(),
        presence: p,
    })
}

fn cmd(c: Command) -> Input {
    Input::Command(c)
}

fn engine(queue: QueueConfig) -> Engine {
    Engine::new(RoutingConfig::single_queue(queue)).unwrap()
}

fn online(e: &mut Engine, now: Timestamp, id: &str, skills: &[(&str, u8)], capacity: u32) {
    e.handle(now, &agent(id, skills, capacity));
    e.handle(now, &presence(id, Presence::Online));
}

fn assigned(out: &[Output]) -> Vec<(ConversationId, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(RoutingEvent::Assigned {
                conversation,
                agent,
                ..
            }) => Some((*conversation, agent.0.clone())),
            _ => None,
        })
        .collect()
}

fn agent_of(e: &Engine, n: u32) -> Option<String> {
    e.conversation(conv(n)).and_then(|c| c.agent).map(|a| a.0)
}

fn observed(out: &[Output], kind: ObservationKind) -> Vec<f64> {
    out.iter()
        .filter_map(|o| match o {
            Output::Observe(ob) if ob.kind == kind => Some(ob.value),
            _ => None,
        })
        .collect()
}

fn skills(list: &[(&str, u8)]) -> BTreeMap<Skill, u8> {
    list.iter().map(|(s, l)| (Skill::from(*s), *l)).collect()
}

#[test]
fn least_loaded_spreads_work_and_ties_go_to_the_longest_idle() {
    let mut e = engine(QueueConfig::default());
    online(&mut e, at(0), "early", &[], 4);
    online(&mut e, at(10), "late", &[], 4);
    // Tie (0 open): the one idle longest ("early") gets the first conversation...
    let out = e.handle(at(20), &chat(1));
    assert_eq!(assigned(&out), vec![(conv(1), "early".into())]);
    // ...and the next goes to the less loaded agent, not again to the first to log in.
    let out = e.handle(at(21), &chat(2));
    assert_eq!(assigned(&out), vec![(conv(2), "late".into())]);
    e.handle(at(22), &chat(3));
    e.handle(at(23), &chat(4));
    assert_eq!(
        e.agent_views().iter().map(|a| a.open).collect::<Vec<_>>(),
        vec![2, 2]
    );
}

#[test]
fn least_loaded_compares_load_relative_to_capacity() {
    let mut e = engine(QueueConfig::default());
    online(&mut e, at(0), "big", &[], 10);
    online(&mut e, at(0), "small", &[], 2);
    e.handle(at(1), &chat(1)); // tie → "big" (agent order within equal idle)
    e.handle(at(2), &chat(2)); // big 1/10 = 10%, small 0/2 = 0% → small
    e.handle(at(3), &chat(3)); // big 10%, small 50% → big
    assert_eq!(agent_of(&e, 2).as_deref(), Some("small"));
    assert_eq!(agent_of(&e, 3).as_deref(), Some("big"));
}

#[test]
fn longest_idle_prefers_the_agent_whose_last_assignment_is_oldest() {
    let mut e = engine(QueueConfig {
        strategy: Strategy::LongestIdle,
        ..Default::default()
    });
    online(&mut e, at(0), "a", &[], 5);
    online(&mut e, at(5), "b", &[], 5);
    e.handle(at(10), &chat(1)); // a idle since 0
    e.handle(at(11), &chat(2)); // b idle since 5 < a's 10
    e.handle(at(12), &chat(3)); // a (10) < b (11)
    assert_eq!(agent_of(&e, 1).as_deref(), Some("a"));
    assert_eq!(agent_of(&e, 2).as_deref(), Some("b"));
    assert_eq!(agent_of(&e, 3).as_deref(), Some("a"));
}

#[test]
fn round_robin_takes_agents_in_turn() {
    let mut e = engine(QueueConfig {
        strategy: Strategy::RoundRobin,
        ..Default::default()
    });
    for id in ["a", "b", "c"] {
        online(&mut e, at(0), id, &[], 5);
    }
    let order: Vec<String> = (1..=5)
        .map(|n| {
            e.handle(at(u64::from(n)), &chat(n));
            agent_of(&e, n).unwrap()
        })
        .collect();
    assert_eq!(order, ["a", "b", "c", "a", "b"]);
}

#[test]
fn best_skill_picks_the_most_proficient_agent() {
    let q = QueueConfig {
        strategy: Strategy::BestSkill,
        skills: skills(&[("billing", 2)]),
        ..Default::default()
    };
    let mut e = engine(q);
    online(&mut e, at(0), "junior", &[("billing", 2)], 5);
    online(&mut e, at(0), "senior", &[("billing", 5)], 5);
    online(&mut e, at(0), "mid", &[("billing", 3)], 5);
    let out = e.handle(at(1), &chat(1));
    assert_eq!(assigned(&out), vec![(conv(1), "senior".into())]);
    let Some(Output::Event(RoutingEvent::Assigned { explanation, .. })) = out
        .iter()
        .find(|o| matches!(o, Output::Event(RoutingEvent::Assigned { .. })))
    else {
        panic!("no assignment")
    };
    assert_eq!(explanation.strategy, "best_skill");
    assert_eq!(explanation.eligible, 3);
    assert!(
        explanation.reason.contains("billing (5/5)"),
        "{}",
        explanation.reason
    );
}

#[test]
fn agents_without_the_required_proficiency_are_never_chosen() {
    let q = QueueConfig {
        skills: skills(&[("vi", 3), ("returns", 2)]),
        ..Default::default()
    };
    let mut e = engine(q);
    online(&mut e, at(0), "no-returns", &[("vi", 5)], 5);
    online(&mut e, at(0), "weak-vi", &[("vi", 2), ("returns", 5)], 5);
    let out = e.handle(at(1), &chat(1));
    assert!(assigned(&out).is_empty());
    assert_eq!(e.conversation(conv(1)).unwrap().state, "waiting");
    // A qualified agent logs in: the queue drains at once.
    e.handle(at(2), &agent("ok", &[("vi", 3), ("returns", 2)], 5));
    let out = e.handle(at(3), &presence("ok", Presence::Online));
    assert_eq!(assigned(&out), vec![(conv(1), "ok".into())]);
}

#[test]
fn capacity_is_respected_in_total_and_per_channel_kind() {
    let mut e = engine(QueueConfig::default());
    e.handle(
        at(0),
        &cmd(Command::UpsertAgent(AgentProfile {
            agent: "a".into(),
            skills: BTreeMap::new(),
            capacity: 3,
            channel_capacity: BTreeMap::from([(ChannelKind::Email, 1)]),
        })),
    );
    e.handle(at(0), &presence("a", Presence::Online));
    e.handle(at(1), &msg(1, ChannelKind::Email));
    e.handle(at(2), &msg(2, ChannelKind::Email)); // email full
    e.handle(at(3), &msg(3, ChannelKind::Livechat));
    e.handle(at(4), &msg(4, ChannelKind::Livechat));
    e.handle(at(5), &msg(5, ChannelKind::Livechat)); // total full
    assert_eq!(agent_of(&e, 1).as_deref(), Some("a"));
    assert_eq!(e.conversation(conv(2)).unwrap().state, "waiting");
    assert_eq!(agent_of(&e, 3).as_deref(), Some("a"));
    assert_eq!(agent_of(&e, 4).as_deref(), Some("a"));
    assert_eq!(e.conversation(conv(5)).unwrap().state, "waiting");
    // Resolving an e-mail frees e-mail capacity: the waiting e-mail is taken immediately.
    let out = e.handle(
        at(6),
        &cmd(Command::Resolve {
            conversation: conv(1),
        }),
    );
    assert_eq!(assigned(&out), vec![(conv(2), "a".into())]);
    e.check_invariants().unwrap();
}

#[test]
fn higher_priority_first_fifo_among_equals_and_waiting_ages_priority() {
    let config = RoutingConfig {
        rules: vec![Rule {
            when: RuleMatch {
                tags: vec!["vip".into()],
                ..Default::default()
            },
            queue: "default".into(),
            add_skills: BTreeMap::new(),
            priority_boost: 2,
        }],
        aging_step_secs: 60,
        ..RoutingConfig::single_queue(QueueConfig::default())
    };
    let mut e = Engine::new(config).unwrap();
    let tagged = |n: u32, tag: &str| {
        Input::Inbound(Inbound {
            conversation: conv(n),
            channel: ChannelRef::new(ChannelKind::Zalo, "oa"),
            contact_id: format!("c{n}"),
            tags: vec![tag.into()],
            language: None,
            text: "hi".into(),
        })
    };
    e.handle(at(0), &tagged(1, "normal")); // arrives at 0, priority 0
    e.handle(at(100), &tagged(2, "normal")); // arrives at 100, priority 0
    e.handle(at(110), &tagged(3, "vip")); // priority 2 = 120 s of aging: key 110-120 = -10 < 0
    e.handle(at(200), &tagged(4, "vip")); // key 200-120 = 80
    online(&mut e, at(300), "a", &[], 1);
    assert_eq!(
        agent_of(&e, 3).as_deref(),
        Some("a"),
        "vip that waited enough goes first"
    );
    let order: Vec<u32> = [1, 4, 2]
        .iter()
        .map(|n| {
            e.handle(
                at(400),
                &cmd(Command::Resolve {
                    conversation: conv(3),
                }),
            );
            *n
        })
        .collect();
    let _ = order;
    // Next after resolving 3: conversation 1 (key 0) beats vip 4 (key 80) — it waited longer
    // than vip's boost is worth — and 4 beats 2 (key 100).
    assert_eq!(agent_of(&e, 1).as_deref(), Some("a"));
    e.handle(
        at(401),
        &cmd(Command::Resolve {
            conversation: conv(1),
        }),
    );
    assert_eq!(agent_of(&e, 4).as_deref(), Some("a"));
    e.handle(
        at(402),
        &cmd(Command::Resolve {
            conversation: conv(4),
        }),
    );
    assert_eq!(agent_of(&e, 2).as_deref(), Some("a"));
}

#[test]
fn sticky_prefers_the_customers_last_agent_within_the_window() {
    let config = RoutingConfig {
        sticky_window_secs: 3600,
        reopen_window_secs: 60,
        ..RoutingConfig::single_queue(QueueConfig::default())
    };
    let mut e = Engine::new(config).unwrap();
    online(&mut e, at(0), "a", &[], 5);
    online(&mut e, at(0), "b", &[], 5);
    e.handle(at(1), &chat(1));
    let first = agent_of(&e, 1).unwrap();
    e.handle(
        at(2),
        &cmd(Command::Resolve {
            conversation: conv(1),
        }),
    );
    // Load the other agent less so least-loaded alone would pick them.
    let other = if first == "a" { "b" } else { "a" };
    // Back after the reopen window (a new contact) but within the sticky window.
    let out = e.handle(at(600), &chat(1));
    assert_eq!(assigned(&out), vec![(conv(1), first.clone())]);
    let explanation = out.iter().find_map(|o| match o {
        Output::Event(RoutingEvent::Assigned { explanation, .. }) => Some(explanation.clone()),
        _ => None,
    });
    assert_eq!(explanation.unwrap().strategy, "sticky");
    e.handle(
        at(601),
        &cmd(Command::Resolve {
            conversation: conv(1),
        }),
    );
    // After the sticky window, the strategy decides again.
    e.handle(at(602), &chat(2)); // goes to `other` (tie → agent order) or first; load both 0
    let out = e.handle(at(10_000), &chat(1));
    let got = assigned(&out);
    assert_eq!(got.len(), 1);
    let _ = other;
    let explanation = out.iter().find_map(|o| match o {
        Output::Event(RoutingEvent::Assigned { explanation, .. }) => Some(explanation.clone()),
        _ => None,
    });
    assert_eq!(explanation.unwrap().strategy, "least_loaded");
}

#[test]
fn offers_are_accepted_declined_or_time_out_to_the_next_agent() {
    let mut e = engine(QueueConfig {
        offer_timeout_secs: Some(30),
        strategy: Strategy::RoundRobin,
        ..Default::default()
    });
    online(&mut e, at(0), "a", &[], 2);
    online(&mut e, at(0), "b", &[], 2);
    let out = e.handle(at(1), &chat(1));
    assert!(out.iter().any(
        |o| matches!(o, Output::Event(RoutingEvent::Offered { agent, .. }) if agent.0 == "a")
    ));
    assert_eq!(e.conversation(conv(1)).unwrap().state, "offered");
    // a declines → offered to b.
    let out = e.handle(
        at(2),
        &cmd(Command::Decline {
            agent: "a".into(),
            conversation: conv(1),
        }),
    );
    assert!(out.iter().any(
        |o| matches!(o, Output::Event(RoutingEvent::Offered { agent, .. }) if agent.0 == "b")
    ));
    assert_eq!(observed(&out, ObservationKind::OfferDeclined), vec![1.0]);
    // b lets it expire → back to the queue; a declined already, so it waits.
    let out = e.handle(at(40), &Input::Tick);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(RoutingEvent::OfferDeclined {
            timed_out: true,
            ..
        })
    )));
    assert_eq!(observed(&out, ObservationKind::OfferTimedOut), vec![1.0]);
    assert_eq!(e.conversation(conv(1)).unwrap().state, "waiting");
    // Accepting something not offered is rejected and changes nothing.
    let out = e.handle(
        at(41),
        &cmd(Command::Accept {
            agent: "a".into(),
            conversation: conv(1),
        }),
    );
    assert!(matches!(
        out[0],
        Output::Event(RoutingEvent::Rejected { .. })
    ));
    // A new conversation offered to a and accepted is assigned, with the queue wait measured.
    e.handle(at(50), &chat(2));
    let offered_to = e.conversation(conv(2)).unwrap().agent.unwrap();
    let out = e.handle(
        at(55),
        &cmd(Command::Accept {
            agent: offered_to.clone(),
            conversation: conv(2),
        }),
    );
    assert_eq!(assigned(&out), vec![(conv(2), offered_to.0)]);
    assert_eq!(observed(&out, ObservationKind::QueueWait), vec![5.0]);
}

#[test]
fn overflow_relaxes_proficiency_after_waiting() {
    let q = QueueConfig {
        skills: skills(&[("billing", 4)]),
        overflow: vec![OverflowStep {
            after_secs: 60,
            action: OverflowAction::RelaxProficiency(2),
        }],
        ..Default::default()
    };
    let mut e = engine(q);
    online(&mut e, at(0), "junior", &[("billing", 2)], 5);
    e.handle(at(1), &chat(1));
    assert_eq!(e.conversation(conv(1)).unwrap().state, "waiting");
    let out = e.handle(at(61), &Input::Tick);
    assert!(out.iter().any(|o| matches!(o, Output::Event(RoutingEvent::Escalated { action, .. }) if action == "relax_proficiency(2)")));
    assert_eq!(assigned(&out), vec![(conv(1), "junior".into())]);
    e.check_invariants().unwrap();
}

#[test]
fn overflow_spills_to_a_fallback_queue_keeping_arrival() {
    let config = RoutingConfig {
        queues: BTreeMap::from([
            (
                QueueId::from("experts"),
                QueueConfig {
                    skills: skills(&[("tax", 5)]),
                    overflow: vec![OverflowStep {
                        after_secs: 120,
                        action: OverflowAction::SpillTo("general".into()),
                    }],
                    ..Default::default()
                },
            ),
            (QueueId::from("general"), QueueConfig::default()),
        ]),
        default_queue: "experts".into(),
        ..RoutingConfig::single_queue(QueueConfig::default())
    };
    let mut e = Engine::new(config).unwrap();
    online(&mut e, at(0), "generalist", &[], 5);
    e.handle(at(0), &chat(1));
    assert_eq!(e.conversation(conv(1)).unwrap().state, "waiting");
    let out = e.handle(at(121), &Input::Tick);
    assert!(out.iter().any(|o| matches!(o, Output::Event(RoutingEvent::Escalated { to_queue, .. }) if to_queue.0 == "general")));
    assert_eq!(assigned(&out), vec![(conv(1), "generalist".into())]);
    assert_eq!(
        observed(&out, ObservationKind::QueueWait),
        vec![121.0],
        "wait counts from the original arrival"
    );
}

fn office_hours() -> BusinessHours {
    BusinessHours::new(
        "Asia/Ho_Chi_Minh",
        &[(&["mon", "tue", "wed", "thu", "fri"], "08:00", "17:00")],
        vec![],
    )
    .unwrap()
}

/// 2027-02-15 (a Monday) plus `day` days at `hh:mm` in Ho Chi Minh City (UTC+7).
fn vn(day: u64, hh: u64, mm: u64) -> Timestamp {
    let midnight = chrono::DateTime::parse_from_rfc3339("2027-02-15T00:00:00+07:00").unwrap();
    let midnight = u64::try_from(midnight.timestamp_millis()).unwrap();
    Timestamp(midnight + ((day * 24 + hh) * 60 + mm) * 60_000)
}

#[test]
fn after_hours_conversations_wait_until_the_queue_opens() {
    let mut e = engine(QueueConfig {
        hours: Some(office_hours()),
        ..Default::default()
    });
    online(&mut e, vn(0, 18, 0), "night-owl", &[], 5);
    let out = e.handle(vn(0, 20, 0), &chat(1));
    let opens = out.iter().find_map(|o| match o {
        Output::Event(RoutingEvent::AfterHours { opens_at, .. }) => Some(*opens_at),
        _ => None,
    });
    assert_eq!(opens, Some(Some(vn(1, 8, 0))));
    assert!(assigned(&out).is_empty(), "closed queues route nobody");
    assert_eq!(e.next_timer(), Some(vn(1, 8, 0)));
    let out = e.handle(vn(1, 8, 0), &Input::Tick);
    assert_eq!(assigned(&out), vec![(conv(1), "night-owl".into())]);
}

#[test]
fn after_hours_can_spill_to_a_round_the_clock_queue() {
    let config = RoutingConfig {
        queues: BTreeMap::from([
            (
                QueueId::from("office"),
                QueueConfig {
                    hours: Some(office_hours()),
                    after_hours: AfterHours::SpillTo("night".into()),
                    ..Default::default()
                },
            ),
            (QueueId::from("night"), QueueConfig::default()),
        ]),
        default_queue: "office".into(),
        ..RoutingConfig::single_queue(QueueConfig::default())
    };
    let mut e = Engine::new(config).unwrap();
    online(&mut e, vn(0, 20, 0), "night-agent", &[], 5);
    let out = e.handle(vn(0, 21, 0), &chat(1));
    assert_eq!(assigned(&out), vec![(conv(1), "night-agent".into())]);
    assert_eq!(e.conversation(conv(1)).unwrap().queue.0, "night");
}

#[test]
fn an_agent_going_offline_requeues_with_original_arrival() {
    let mut e = engine(QueueConfig::default());
    online(&mut e, at(0), "a", &[], 1);
    e.handle(at(10), &chat(1)); // to a
    e.handle(at(20), &chat(2)); // waits
    let out = e.handle(at(30), &presence("a", Presence::Offline));
    assert!(out.iter().any(|o| matches!(o, Output::Event(RoutingEvent::Requeued { conversation, .. }) if *conversation == conv(1))));
    assert_eq!(e.conversation(conv(1)).unwrap().arrival, at(10));
    online(&mut e, at(40), "b", &[], 1);
    assert_eq!(
        agent_of(&e, 1).as_deref(),
        Some("b"),
        "the requeued conversation keeps its place ahead of newer ones"
    );
    assert_eq!(e.conversation(conv(2)).unwrap().state, "waiting");
    e.check_invariants().unwrap();
}

#[test]
fn away_keeps_conversations_but_takes_no_new_ones() {
    let mut e = engine(QueueConfig::default());
    online(&mut e, at(0), "a", &[], 3);
    e.handle(at(1), &chat(1));
    e.handle(at(2), &presence("a", Presence::Away));
    e.handle(at(3), &chat(2));
    assert_eq!(agent_of(&e, 1).as_deref(), Some("a"));
    assert_eq!(e.conversation(conv(2)).unwrap().state, "waiting");
}

#[test]
fn transfers_go_to_an_agent_or_a_queue_and_invalid_ones_change_nothing() {
    let config = RoutingConfig {
        queues: BTreeMap::from([
            (QueueId::from("default"), QueueConfig::default()),
            (
                QueueId::from("billing"),
                QueueConfig {
                    skills: skills(&[("billing", 3)]),
                    ..Default::default()
                },
            ),
        ]),
        ..RoutingConfig::single_queue(QueueConfig::default())
    };
    let mut e = Engine::new(config).unwrap();
    online(&mut e, at(0), "a", &[], 2);
    online(&mut e, at(0), "b", &[("billing", 4)], 2);
    online(&mut e, at(0), "c", &[("billing", 3)], 2);
    e.handle(at(0), &agent("off", &[], 2));
    e.handle(at(1), &chat(1));
    let holder = agent_of(&e, 1).unwrap();
    let out = e.handle(
        at(2),
        &cmd(Command::Transfer {
            conversation: conv(1),
            to: TransferTarget::Agent("off".into()),
        }),
    );
    assert!(matches!(
        out[0],
        Output::Event(RoutingEvent::Rejected { .. })
    ));
    assert_eq!(agent_of(&e, 1), Some(holder.clone()));
    let out = e.handle(
        at(3),
        &cmd(Command::Transfer {
            conversation: conv(1),
            to: TransferTarget::Queue("billing".into()),
        }),
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Event(RoutingEvent::Requeued { .. }))));
    let billing_agent = agent_of(&e, 1).unwrap();
    assert!(
        billing_agent == "b" || billing_agent == "c",
        "{billing_agent}"
    );
    // An agent without the queue's skills cannot receive it; one with them can.
    let to = |who: &str| {
        cmd(Command::Transfer {
            conversation: conv(1),
            to: TransferTarget::Agent(who.into()),
        })
    };
    let out = e.handle(at(4), &to("a"));
    assert!(matches!(
        out[0],
        Output::Event(RoutingEvent::Rejected { .. })
    ));
    let target = if billing_agent == "b" { "c" } else { "b" };
    let out = e.handle(at(5), &to(target));
    assert_eq!(assigned(&out), vec![(conv(1), target.to_owned())]);
    e.check_invariants().unwrap();
}

#[test]
fn rules_choose_the_queue_add_skills_and_raise_priority() {
    let config = RoutingConfig {
        queues: BTreeMap::from([
            (QueueId::from("default"), QueueConfig::default()),
            (
                QueueId::from("refunds"),
                QueueConfig {
                    skills: skills(&[("refunds", 1)]),
                    ..Default::default()
                },
            ),
        ]),
        rules: vec![
            Rule {
                when: RuleMatch {
                    keywords: vec!["hoàn tiền".into()],
                    ..Default::default()
                },
                queue: "refunds".into(),
                add_skills: BTreeMap::new(),
                priority_boost: 0,
            },
            Rule {
                when: RuleMatch {
                    channel: Some(ChannelKind::Email),
                    language: Some("en".into()),
                    ..Default::default()
                },
                queue: "default".into(),
                add_skills: skills(&[("en", 3)]),
                priority_boost: 5,
            },
        ],
        ..RoutingConfig::single_queue(QueueConfig::default())
    };
    let mut e = Engine::new(config).unwrap();
    let refund = Input::Inbound(Inbound {
        conversation: conv(1),
        channel: ChannelRef::new(ChannelKind::Zalo, "oa"),
        contact_id: "c1".into(),
        tags: vec![],
        language: Some("vi".into()),
        text: "Tôi muốn HOÀN TIỀN đơn hàng".into(),
    });
    e.handle(at(0), &refund);
    assert_eq!(e.conversation(conv(1)).unwrap().queue.0, "refunds");
    let english = Input::Inbound(Inbound {
        conversation: conv(2),
        channel: ChannelRef::new(ChannelKind::Email, "support@shop.vn"),
        contact_id: "c2".into(),
        tags: vec![],
        language: Some("en-GB".into()),
        text: "Where is my order?".into(),
    });
    e.handle(at(0), &english);
    let v = e.conversation(conv(2)).unwrap();
    assert_eq!((v.queue.0.as_str(), v.priority), ("default", 5));
    online(&mut e, at(1), "vi-only", &[("vi", 5)], 5);
    assert_eq!(
        e.conversation(conv(2)).unwrap().state,
        "waiting",
        "rule-added skill en:3 required"
    );
    online(&mut e, at(2), "english", &[("en", 4)], 5);
    assert_eq!(agent_of(&e, 2).as_deref(), Some("english"));
}

#[test]
fn response_times_resolution_and_reopen_are_measured() {
    let mut e = engine(QueueConfig::default());
    online(&mut e, at(0), "a", &[], 5);
    e.handle(at(100), &chat(1));
    let out = e.handle(
        at(130),
        &cmd(Command::AgentReplied {
            conversation: conv(1),
            agent: Some("a".into()),
        }),
    );
    assert_eq!(observed(&out, ObservationKind::FirstResponse), vec![30.0]);
    assert_eq!(observed(&out, ObservationKind::Response), vec![30.0]);
    e.handle(at(200), &chat(1)); // customer writes again
    e.handle(at(205), &chat(1)); // and again before any answer: measured from the first
    let out = e.handle(
        at(260),
        &cmd(Command::AgentReplied {
            conversation: conv(1),
            agent: None,
        }),
    );
    assert_eq!(
        observed(&out, ObservationKind::FirstResponse),
        Vec::<f64>::new()
    );
    assert_eq!(observed(&out, ObservationKind::Response), vec![60.0]);
    let out = e.handle(
        at(300),
        &cmd(Command::Resolve {
            conversation: conv(1),
        }),
    );
    assert_eq!(observed(&out, ObservationKind::Resolution), vec![200.0]);
    assert_eq!(observed(&out, ObservationKind::Resolved), vec![1.0]);
    // The customer comes back within the reopen window: a reopen (counts against FCR).
    let out = e.handle(at(400), &chat(1));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Event(RoutingEvent::Reopened { .. }))));
    assert_eq!(observed(&out, ObservationKind::Reopened), vec![1.0]);
    let out = e.handle(
        at(401),
        &cmd(Command::Csat {
            conversation: conv(1),
            score: 4,
        }),
    );
    assert_eq!(observed(&out, ObservationKind::Csat), vec![4.0]);
}

#[test]
fn sla_breaches_are_reported_once_when_targets_pass() {
    let q = QueueConfig {
        sla: Sla {
            first_response_secs: Some(60),
            next_response_secs: Some(120),
            resolution_secs: Some(3600),
        },
        ..Default::default()
    };
    let mut e = engine(q);
    e.handle(at(0), &chat(1));
    assert!(e.handle(at(59), &Input::Tick).is_empty());
    let out = e.handle(at(61), &Input::Tick);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(RoutingEvent::SlaBreached {
            sla: SlaKind::FirstResponse,
            ..
        })
    )));
    assert!(e.handle(at(62), &Input::Tick).is_empty(), "reported once");
    // Answered, then a new customer message answered in time: no next-response breach.
    e.handle(
        at(70),
        &cmd(Command::AgentReplied {
            conversation: conv(1),
            agent: None,
        }),
    );
    e.handle(at(100), &chat(1));
    e.handle(
        at(150),
        &cmd(Command::AgentReplied {
            conversation: conv(1),
            agent: None,
        }),
    );
    let out = e.handle(at(300), &Input::Tick);
    assert!(!out.iter().any(|o| matches!(
        o,
        Output::Event(RoutingEvent::SlaBreached {
            sla: SlaKind::NextResponse,
            ..
        })
    )));
    let out = e.handle(at(3601), &Input::Tick);
    assert_eq!(
        observed(&out, ObservationKind::SlaBreach(SlaKind::Resolution)),
        vec![1.0]
    );
}

#[test]
fn a_capacity_cut_requeues_the_newest_conversations() {
    let mut e = engine(QueueConfig::default());
    online(&mut e, at(0), "a", &[], 3);
    e.handle(at(1), &chat(1));
    e.handle(at(2), &chat(3));
    e.handle(at(3), &chat(2));
    let out = e.handle(at(4), &agent("a", &[], 1));
    let requeued: Vec<ConversationId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Event(RoutingEvent::Requeued { conversation, .. }) => Some(*conversation),
            _ => None,
        })
        .collect();
    assert_eq!(requeued, vec![conv(2), conv(3)]);
    assert_eq!(agent_of(&e, 1).as_deref(), Some("a"));
    e.check_invariants().unwrap();
}

#[test]
fn removing_an_agent_requeues_their_work() {
    let mut e = engine(QueueConfig::default());
    online(&mut e, at(0), "a", &[], 3);
    online(&mut e, at(0), "b", &[], 3);
    e.handle(at(1), &chat(1));
    let holder = agent_of(&e, 1).unwrap();
    let out = e.handle(
        at(2),
        &cmd(Command::RemoveAgent {
            agent: holder.as_str().into(),
        }),
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Event(RoutingEvent::Requeued { .. }))));
    assert_ne!(agent_of(&e, 1), Some(holder));
    assert_eq!(e.agent_views().len(), 1);
    e.check_invariants().unwrap();
}

#[test]
fn invalid_config_names_the_key() {
    let mut config = RoutingConfig::single_queue(QueueConfig::default());
    config.default_queue = "nope".into();
    assert_eq!(Engine::new(config).unwrap_err().key, "default_queue");
    let config = RoutingConfig::single_queue(QueueConfig {
        overflow: vec![OverflowStep {
            after_secs: 5,
            action: OverflowAction::SpillTo("ghost".into()),
        }],
        ..Default::default()
    });
    assert_eq!(
        Engine::new(config).unwrap_err().key,
        "queues.default.overflow[0].spill_to"
    );
    let config = RoutingConfig::single_queue(QueueConfig {
        skills: skills(&[("x", 9)]),
        ..Default::default()
    });
    assert_eq!(
        Engine::new(config).unwrap_err().key,
        "queues.default.skills.x"
    );
}

#[test]
fn config_reads_from_toml_like_serde_data() {
    let json = serde_json::json!({
        "default_queue": "general",
        "queues": {
            "general": {
                "skills": {"vi": 2},
                "strategy": "best_skill",
                "offer_timeout_secs": 20,
                "sla": {"first_response_secs": 60},
                "overflow": [{"after_secs": 120, "action": {"relax_proficiency": 1}}],
                "hours": {"open": [{"days": ["mon", "fri"], "from": "08:00", "to": "17:30"}]}
            }
        },
        "rules": [{"match": {"keywords": ["refund"]}, "queue": "general", "priority_boost": 3}]
    });
    let config: RoutingConfig = serde_json::from_value(json).unwrap();
    assert!(Engine::new(config).is_ok());
}

/// Applies changes to a key → record store the way log compaction does.
fn apply(store: &mut BTreeMap<String, crate::StateEntry>, changes: Vec<crate::StateChange>) {
    for c in changes {
        match c.entry {
            Some(e) => {
                assert_eq!(e.key(), c.key);
                store.insert(c.key, e);
            }
            None => {
                store.remove(&c.key);
            }
        }
    }
}

#[test]
fn an_engine_restored_from_its_changelog_continues_identically() {
    let q = QueueConfig {
        offer_timeout_secs: Some(30),
        sla: Sla {
            first_response_secs: Some(100),
            next_response_secs: None,
            resolution_secs: Some(1000),
        },
        overflow: vec![OverflowStep {
            after_secs: 50,
            action: OverflowAction::RelaxProficiency(1),
        }],
        skills: skills(&[("vi", 2)]),
        strategy: Strategy::RoundRobin,
        ..Default::default()
    };
    let config = RoutingConfig::single_queue(q);
    let mut original = Engine::new(config.clone()).unwrap();
    let mut store = BTreeMap::new();
    let script: Vec<(u64, Input)> = vec![
        (0, agent("a", &[("vi", 3)], 2)),
        (0, presence("a", Presence::Online)),
        (1, agent("b", &[("vi", 1)], 2)),
        (1, presence("b", Presence::Online)),
        (2, chat(1)),
        (3, chat(2)),
        (
            4,
            cmd(Command::Accept {
                agent: "a".into(),
                conversation: conv(1),
            }),
        ),
        (5, chat(3)),
    ];
    for (t, input) in &script {
        original.handle(at(*t), input);
        apply(&mut store, original.take_changes());
    }
    let (mut restored, repairs) = Engine::restore(config, store.values().cloned(), at(5)).unwrap();
    assert_eq!(repairs, vec![]);
    assert_eq!(restored.take_changes(), vec![]);
    restored.check_invariants().unwrap();
    assert_eq!(restored.queue_views(), original.queue_views());
    assert_eq!(restored.agent_views(), original.agent_views());
    for n in 1..=3 {
        assert_eq!(
            restored.conversation(conv(n)),
            original.conversation(conv(n)),
            "conversation {n}"
        );
    }
    assert_eq!(restored.next_timer(), original.next_timer());
    assert_eq!(restored.snapshot(), original.snapshot());
    // Both continue with the same inputs and say the same things: offer expiry, overflow,
    // SLA breach, a resolution that drains the queue.
    let rest: Vec<(u64, Input)> = vec![
        (40, Input::Tick),
        (60, Input::Tick),
        (
            61,
            cmd(Command::Resolve {
                conversation: conv(1),
            }),
        ),
        (120, Input::Tick),
        (
            121,
            cmd(Command::AgentReplied {
                conversation: conv(2),
                agent: None,
            }),
        ),
        (2000, Input::Tick),
    ];
    for (t, input) in &rest {
        let a = original.handle(at(*t), input);
        let b = restored.handle(at(*t), input);
        assert_eq!(a, b, "after restore, at {t}s, {input:?}");
        restored.check_invariants().unwrap();
    }
    // Forgotten conversations become tombstones.
    let mut e = engine(QueueConfig::default());
    e.handle(at(0), &chat(9));
    e.handle(
        at(1),
        &cmd(Command::Resolve {
            conversation: conv(9),
        }),
    );
    e.take_changes();
    e.handle(at(1_000_000), &Input::Tick);
    let changes = e.take_changes();
    assert!(changes
        .iter()
        .any(|c| c.key == format!("conversation/{}", conv(9)) && c.entry.is_none()));
}

#[test]
fn simultaneous_timers_fire_in_the_same_order_after_a_restore() {
    // Two offers made in the same millisecond expire together; the engine rebuilt from its
    // changelog must emit the expiries in the same order (event ids depend on the order).
    let config = RoutingConfig::single_queue(QueueConfig {
        offer_timeout_secs: Some(30),
        ..Default::default()
    });
    let mut original = Engine::new(config.clone()).unwrap();
    let mut store = BTreeMap::new();
    let script = [
        agent("b", &[], 1),
        presence("b", Presence::Online),
        agent("a", &[], 1),
        presence("a", Presence::Online),
        chat(7),
        chat(3),
    ];
    for input in &script {
        original.handle(at(0), input);
        apply(&mut store, original.take_changes());
    }
    let (mut restored, _) = Engine::restore(config, store.values().cloned(), at(0)).unwrap();
    let a = original.handle(at(31), &Input::Tick);
    let b = restored.handle(at(31), &Input::Tick);
    assert!(a.len() >= 2, "{a:?}");
    assert_eq!(a, b);
}

#[test]
fn agents_keep_their_creation_order_through_a_restore() {
    // `b` joined before `a`: with equal idle times the live engine prefers `b` (by number), and
    // so must the restored one, though `a` sorts first by name.
    let config = RoutingConfig::single_queue(QueueConfig {
        strategy: Strategy::RoundRobin,
        ..Default::default()
    });
    let mut original = Engine::new(config.clone()).unwrap();
    let mut store = BTreeMap::new();
    for input in [
        agent("b", &[], 5),
        agent("a", &[], 5),
        presence("b", Presence::Online),
        presence("a", Presence::Online),
        chat(1),
    ] {
        original.handle(at(0), &input);
        apply(&mut store, original.take_changes());
    }
    let (mut restored, out) = Engine::restore(config, store.values().cloned(), at(0)).unwrap();
    assert!(out.is_empty());
    for n in 2..6 {
        let a = original.handle(at(1), &chat(n));
        let b = restored.handle(at(1), &chat(n));
        assert_eq!(a, b);
    }
}

#[test]
fn what_a_restore_repairs_is_returned_and_left_to_write() {
    // A record says an offline agent holds a conversation (written by an older version, or a
    // config change): restore requeues it, reports the event and leaves both records to write.
    let mut e = engine(QueueConfig::default());
    e.handle(at(0), &agent("a", &[], 1));
    e.handle(at(0), &presence("a", Presence::Online));
    e.handle(at(1), &chat(1));
    let mut entries = e.snapshot();
    for entry in &mut entries {
        if let crate::StateEntry::Agent(a) = entry {
            a.presence = Presence::Offline;
        }
    }
    let config = RoutingConfig::single_queue(QueueConfig::default());
    let (mut restored, out) = Engine::restore(config, entries, at(2)).unwrap();
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::Event(RoutingEvent::Requeued { conversation, .. }) if *conversation == conv(1)
        )),
        "{out:?}"
    );
    let keys: Vec<String> = restored.take_changes().into_iter().map(|c| c.key).collect();
    assert!(
        keys.contains(&format!("conversation/{}", conv(1))),
        "{keys:?}"
    );
    assert!(keys.contains(&"agent/a".to_owned()), "{keys:?}");
    restored.check_invariants().unwrap();
}

#[test]
fn records_written_before_numbering_and_deadlines_still_restore() {
    let agent = serde_json::json!({
        "entity": "agent", "id": "a", "presence": "online", "skills": {}, "capacity": 2,
        "channel_capacity": {}, "idle_since": T0, "open": {}
    });
    let queue = serde_json::json!({"entity": "queue", "id": "default", "rr_last": "a"});
    let entries: Vec<crate::StateEntry> = vec![
        serde_json::from_value(agent).unwrap(),
        serde_json::from_value(queue).unwrap(),
    ];
    let config = RoutingConfig::single_queue(QueueConfig::default());
    let (mut restored, out) = Engine::restore(config, entries, at(0)).unwrap();
    assert!(out.is_empty());
    restored.check_invariants().unwrap();
    // The agent got a number, which is written back.
    let changes = restored.take_changes();
    assert!(changes.iter().any(|c| c.key == "agent/a"), "{changes:?}");
    assert_eq!(assigned(&restored.handle(at(1), &chat(1))).len(), 1);
}

// ----- retention: what the engine forgets ----------------------------------------------------

fn retention_config(retention: u64, expire: u64) -> RoutingConfig {
    let mut config = RoutingConfig::single_queue(QueueConfig::default());
    config.reopen_window_secs = 60;
    config.sticky_window_secs = 100;
    config.resolved_retention_secs = retention;
    config.expire_after_secs = expire;
    config
}

fn tombstones(changes: Vec<crate::StateChange>) -> Vec<String> {
    changes
        .into_iter()
        .filter(|c| c.entry.is_none())
        .map(|c| c.key)
        .collect()
}

#[test]
fn a_resolved_conversation_is_forgotten_after_its_retention() {
    let mut e = Engine::new(retention_config(600, 10_000)).unwrap();
    online(&mut e, at(0), "a", &[], 5);
    e.handle(at(0), &chat(1));
    e.handle(
        at(10),
        &cmd(Command::Resolve {
            conversation: conv(1),
        }),
    );
    e.take_changes();
    // Still known within the retention (a CSAT score still finds it)…
    e.handle(at(609), &Input::Tick);
    assert_eq!(e.size().conversations, 1);
    assert_eq!(e.next_timer(), Some(at(610)));
    // …then forgotten, with a tombstone for its record.
    e.handle(at(610), &Input::Tick);
    assert_eq!(e.size().conversations, 0);
    assert!(tombstones(e.take_changes()).contains(&format!("conversation/{}", conv(1))));
    e.check_invariants().unwrap();
}

#[test]
fn a_conversation_without_activity_expires_and_frees_its_agent() {
    let mut e = Engine::new(retention_config(600, 3600)).unwrap();
    online(&mut e, at(0), "a", &[], 1);
    e.handle(at(0), &chat(1)); // assigned to a, who then never answers nor resolves
    e.handle(at(5), &chat(2)); // waits: a is full
                               // A customer message is activity: conversation 1 now expires at 100 + 3600.
    e.handle(at(100), &chat(1));
    let out = e.handle(at(3605), &Input::Tick);
    // Conversation 2 (last activity at 5 s) expires first: it only waited.
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(RoutingEvent::Expired { conversation, agent: None, .. }) if *conversation == conv(2)
    )));
    let out = e.handle(at(3700), &Input::Tick);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(RoutingEvent::Expired { conversation, agent: Some(a), .. })
            if *conversation == conv(1) && a.0 == "a"
    )));
    assert_eq!(e.agent_views()[0].open, 0);
    assert_eq!(e.size().conversations, 0);
    let gone = tombstones(e.take_changes());
    assert!(
        gone.contains(&format!("conversation/{}", conv(1))),
        "{gone:?}"
    );
    e.check_invariants().unwrap();
    // A new message starts over, and the freed agent takes it.
    assert_eq!(assigned(&e.handle(at(3800), &chat(1))).len(), 1);
}

#[test]
fn a_removed_agent_is_forgotten_and_their_name_comes_back_as_a_new_agent() {
    let mut e = Engine::new(retention_config(600, 3600)).unwrap();
    online(&mut e, at(0), "a", &[], 2);
    online(&mut e, at(0), "b", &[], 2);
    e.handle(at(1), &chat(1));
    e.take_changes();
    e.handle(at(2), &cmd(Command::RemoveAgent { agent: "a".into() }));
    assert_eq!(e.size().agents, 1);
    assert!(tombstones(e.take_changes()).contains(&"agent/a".to_owned()));
    online(&mut e, at(3), "a", &[], 2);
    assert_eq!(e.size().agents, 2);
    e.check_invariants().unwrap();
}

#[test]
fn sticky_agents_are_forgotten_after_the_window() {
    let mut e = Engine::new(retention_config(600, 3600)).unwrap();
    online(&mut e, at(0), "a", &[], 2);
    e.handle(at(0), &chat(1));
    assert_eq!(e.size().sticky_contacts, 1);
    e.take_changes();
    e.handle(at(100), &Input::Tick);
    assert_eq!(
        e.size().sticky_contacts,
        1,
        "kept through the window's last millisecond"
    );
    e.handle(at(101), &Input::Tick);
    assert_eq!(e.size().sticky_contacts, 0);
    assert!(tombstones(e.take_changes())
        .iter()
        .any(|k| k.starts_with("sticky/")));
}

#[test]
fn a_week_of_traffic_leaves_only_the_week_behind() {
    // 200 conversations a day for three weeks, half resolved, half abandoned: the engine holds
    // about one retention period's worth, not three weeks'.
    let mut config = RoutingConfig::single_queue(QueueConfig::default());
    config.resolved_retention_secs = 7 * 24 * 3600;
    config.expire_after_secs = 7 * 24 * 3600;
    let mut e = Engine::new(config).unwrap();
    online(&mut e, at(0), "a", &[], 1_000_000);
    let day = 24 * 3600;
    let mut peak = 0;
    for d in 0..21u64 {
        for i in 0..200u32 {
            let n = u32::try_from(d).unwrap() * 200 + i;
            let t = d * day + u64::from(i) * 60;
            e.handle(at(t), &chat(n));
            if i % 2 == 0 {
                e.handle(
                    at(t + 30),
                    &cmd(Command::Resolve {
                        conversation: conv(n),
                    }),
                );
            }
        }
        e.handle(at((d + 1) * day), &Input::Tick);
        e.take_changes();
        peak = peak.max(e.size().conversations);
    }
    assert!(peak <= 8 * 200, "peak {peak}");
    assert!(e.size().conversations <= 8 * 200);
    assert!(e.size().timers <= 3 * 8 * 200, "{:?}", e.size());
    e.check_invariants().unwrap();
}

#[test]
fn retention_shorter_than_the_reopen_window_is_refused() {
    let mut config = RoutingConfig::single_queue(QueueConfig::default());
    config.resolved_retention_secs = config.reopen_window_secs - 1;
    assert_eq!(
        config.validate().unwrap_err().key,
        "resolved_retention_secs"
    );
    config.resolved_retention_secs = config.reopen_window_secs;
    config.expire_after_secs = 0;
    assert_eq!(config.validate().unwrap_err().key, "expire_after_secs");
}
