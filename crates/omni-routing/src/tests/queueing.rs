//! Queueing: priority and FIFO, sticky agents, offers, overflow and business hours.

use super::*;

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
    // Nothing before it opens (midnight only ends the KPI day).
    let out = e.handle(vn(1, 7, 59), &Input::Tick);
    assert!(assigned(&out).is_empty());
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
fn eligible_work_behind_a_backlog_longer_than_the_scan_window_is_not_starved() {
    // One agent with room for two conversations, but for only one e-mail at a time.
    let mut e = engine(QueueConfig::default());
    online_with_one_email_place(&mut e, at(0), "a", 2);
    e.handle(at(1), &msg(0, ChannelKind::Email));
    e.handle(at(1), &chat(1));
    assert_eq!(agent_of(&e, 0).as_deref(), Some("a"));
    assert_eq!(agent_of(&e, 1).as_deref(), Some("a"));
    // 99 more e-mails queue up ahead (more than the 64 a drain used to look at), which the
    // agent cannot take while their e-mail place is full; then a chat they could take.
    for n in 2..=100 {
        e.handle(at(2), &msg(n, ChannelKind::Email));
    }
    e.handle(at(3), &chat(101));
    assert_eq!(agent_of(&e, 101), None);
    // The chat frees a place: the agent gets conversation #101, behind the whole backlog.
    let out = e.handle(
        at(4),
        &cmd(Command::Resolve {
            conversation: conv(1),
        }),
    );
    assert_eq!(assigned(&out), vec![(conv(101), "a".to_owned())]);
    e.check_invariants().unwrap();
    assert_eq!(e.queue_views()[0].waiting, 99);
}
