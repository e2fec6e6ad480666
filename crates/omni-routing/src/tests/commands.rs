//! Commands and what they measure: presence, transfers, rules, response times, SLAs,
//! capacity cuts and removing agents.

use super::*;

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
            ..Sla::default()
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
fn every_new_contact_is_counted_as_created_once() {
    let mut e = engine(QueueConfig::default());
    online(&mut e, at(0), "a", &[], 5);
    let created = |out: &[Output]| observed(out, ObservationKind::Created);
    assert_eq!(
        created(&e.handle(at(100), &chat(1))),
        vec![1.0],
        "a new conversation"
    );
    assert!(
        created(&e.handle(at(110), &chat(1))).is_empty(),
        "a message in an open one"
    );
    e.handle(
        at(120),
        &cmd(Command::Resolve {
            conversation: conv(1),
        }),
    );
    assert!(
        created(&e.handle(at(130), &chat(1))).is_empty(),
        "a reopen within the window is the same contact"
    );
    e.handle(
        at(140),
        &cmd(Command::Resolve {
            conversation: conv(1),
        }),
    );
    let after_window = 140 + 72 * 3600 + 1;
    assert_eq!(
        created(&e.handle(at(after_window), &chat(1))),
        vec![1.0],
        "writing again after the reopen window is a new contact"
    );
}
