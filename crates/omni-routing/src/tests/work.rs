//! Work states and KPIs: wrap-up, handling time, agents who stop answering, declined
//! conversations coming back, abandonment, at-risk warnings, business-hours SLAs and the wait
//! estimate.

use super::*;

fn resolve(n: u32) -> Input {
    cmd(Command::Resolve {
        conversation: conv(n),
    })
}

fn events(out: &[Output]) -> Vec<&RoutingEvent> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn view(e: &Engine, id: &str) -> AgentView {
    e.agent_views()
        .into_iter()
        .find(|a| a.id.0 == id)
        .expect("agent exists")
}

#[test]
fn wrap_up_holds_the_place_until_its_time_passes_or_the_agent_is_ready() {
    let mut e = engine(QueueConfig {
        wrap_up_secs: Some(60),
        ..Default::default()
    });
    online(&mut e, at(0), "a", &[], 1);
    e.handle(at(0), &chat(1));
    // Handling time runs from assignment to resolution; the wrap-up starts there.
    let out = e.handle(at(10), &resolve(1));
    assert_eq!(observed(&out, ObservationKind::Handling), vec![10.0]);
    assert_eq!((view(&e, "a").open, view(&e, "a").wrap_up), (0, 1));
    // The place is still taken: a new chat waits.
    let out = e.handle(at(20), &chat(2));
    assert!(assigned(&out).is_empty());
    // Ready ends the wrap-up early, measures it, and the waiting chat is taken at once.
    let out = e.handle(at(40), &cmd(Command::Ready { agent: "a".into() }));
    assert_eq!(observed(&out, ObservationKind::WrapUp), vec![30.0]);
    assert_eq!(assigned(&out), vec![(conv(2), "a".into())]);
    // Without a ready, the wrap-up ends on its own after 60 s.
    e.handle(at(50), &resolve(2));
    let out = e.handle(at(55), &chat(3));
    assert!(assigned(&out).is_empty());
    assert_eq!(e.next_timer(), Some(at(110)));
    let out = e.handle(at(109), &Input::Tick);
    assert!(out.is_empty());
    let out = e.handle(at(110), &Input::Tick);
    assert_eq!(observed(&out, ObservationKind::WrapUp), vec![60.0]);
    assert_eq!(assigned(&out), vec![(conv(3), "a".into())]);
    e.check_invariants().unwrap();
}

#[test]
fn going_offline_ends_the_wrap_up_and_a_queue_without_wrap_up_frees_at_once() {
    let mut e = engine(QueueConfig {
        wrap_up_secs: Some(300),
        ..Default::default()
    });
    online(&mut e, at(0), "a", &[], 1);
    e.handle(at(0), &chat(1));
    e.handle(at(5), &resolve(1));
    let out = e.handle(at(65), &presence("a", Presence::Offline));
    assert_eq!(observed(&out, ObservationKind::WrapUp), vec![60.0]);
    assert_eq!(view(&e, "a").wrap_up, 0);
    e.check_invariants().unwrap();

    let mut e = engine(QueueConfig::default());
    online(&mut e, at(0), "a", &[], 1);
    e.handle(at(0), &chat(1));
    let out = e.handle(at(5), &resolve(1));
    assert!(observed(&out, ObservationKind::WrapUp).is_empty());
    let out = e.handle(at(6), &chat(2));
    assert_eq!(assigned(&out), vec![(conv(2), "a".into())]);
}

#[test]
fn an_agent_who_lets_offers_time_out_is_set_away_and_the_chat_goes_on() {
    let config = RoutingConfig {
        away_after_missed_offers: 2,
        ..RoutingConfig::single_queue(QueueConfig {
            offer_timeout_secs: Some(30),
            ..Default::default()
        })
    };
    let mut e = Engine::new(config).unwrap();
    online(&mut e, at(0), "a", &[], 5);
    e.handle(at(0), &chat(1));
    // One timeout: still online.
    let out = e.handle(at(30), &Input::Tick);
    assert!(!events(&out)
        .iter()
        .any(|ev| matches!(ev, RoutingEvent::AgentAway { .. })));
    assert_eq!(view(&e, "a").presence, Presence::Online);
    // An accepted offer in between starts the count again.
    e.handle(at(31), &chat(2));
    e.handle(
        at(32),
        &cmd(Command::Accept {
            agent: "a".into(),
            conversation: conv(2),
        }),
    );
    e.handle(at(33), &chat(3));
    let out = e.handle(at(63), &Input::Tick);
    assert!(!events(&out)
        .iter()
        .any(|ev| matches!(ev, RoutingEvent::AgentAway { .. })));
    // A second timeout in a row: away, said why, counted.
    e.handle(at(64), &chat(4));
    let out = e.handle(at(94), &Input::Tick);
    let away: Vec<String> = events(&out)
        .iter()
        .filter_map(|ev| match ev {
            RoutingEvent::AgentAway { agent, reason } => Some(format!("{agent}: {reason}")),
            _ => None,
        })
        .collect();
    assert_eq!(away, vec!["a: 2 offers in a row timed out".to_owned()]);
    assert_eq!(observed(&out, ObservationKind::AgentAway), vec![1.0]);
    assert_eq!(view(&e, "a").presence, Presence::Away);
    // The chats waiting go to the next agent.
    online(&mut e, at(95), "b", &[], 5);
    for n in [1, 3, 4] {
        assert_eq!(agent_of(&e, n).as_deref(), Some("b"), "chat {n}");
    }
    e.check_invariants().unwrap();
}

#[test]
fn a_conversation_every_agent_declined_is_offered_again_after_the_retry_time() {
    let mut e = engine(QueueConfig {
        offer_timeout_secs: Some(30),
        declined_retry_secs: 60,
        ..Default::default()
    });
    online(&mut e, at(0), "a", &[], 5);
    e.handle(at(0), &chat(1));
    e.handle(
        at(5),
        &cmd(Command::Decline {
            agent: "a".into(),
            conversation: conv(1),
        }),
    );
    assert_eq!(e.conversation(conv(1)).unwrap().state, "waiting");
    let out = e.handle(at(64), &Input::Tick);
    assert!(out.is_empty());
    let out = e.handle(at(65), &Input::Tick);
    assert!(
        events(&out).iter().any(|ev| matches!(
            ev,
            RoutingEvent::Offered { agent, .. } if agent.0 == "a"
        )),
        "{out:?}"
    );
    e.check_invariants().unwrap();
}

#[test]
fn a_customer_who_stops_waiting_is_abandoned_once_and_forgotten() {
    let mut e = engine(QueueConfig {
        abandon_after_secs: Some(120),
        offer_timeout_secs: Some(600),
        ..Default::default()
    });
    e.handle(at(0), &chat(1));
    assert!(e.handle(at(119), &Input::Tick).is_empty());
    let out = e.handle(at(120), &Input::Tick);
    let abandoned: Vec<(ConversationId, String, Timestamp)> = events(&out)
        .iter()
        .filter_map(|ev| match ev {
            RoutingEvent::Abandoned {
                conversation,
                reason,
                waiting_since,
                ..
            } => Some((*conversation, reason.clone(), *waiting_since)),
            _ => None,
        })
        .collect();
    assert_eq!(abandoned, vec![(conv(1), "patience".to_owned(), at(0))]);
    assert_eq!(observed(&out, ObservationKind::Abandoned), vec![1.0]);
    assert!(e.conversation(conv(1)).is_none());
    assert_eq!(e.queue_views()[0].waiting, 0);

    // A visitor who leaves while offered frees the agent's place.
    online(&mut e, at(200), "a", &[], 1);
    e.handle(at(200), &chat(2));
    assert_eq!(view(&e, "a").open, 1);
    let out = e.handle(
        at(210),
        &cmd(Command::CustomerLeft {
            conversation: conv(2),
        }),
    );
    assert_eq!(observed(&out, ObservationKind::Abandoned), vec![1.0]);
    assert_eq!(view(&e, "a").open, 0);
    // One who leaves after an agent took the chat did not abandon it.
    e.handle(at(300), &chat(3));
    e.handle(
        at(301),
        &cmd(Command::Accept {
            agent: "a".into(),
            conversation: conv(3),
        }),
    );
    let out = e.handle(
        at(302),
        &cmd(Command::CustomerLeft {
            conversation: conv(3),
        }),
    );
    assert!(out.is_empty(), "{out:?}");
    assert!(e.handle(at(1000), &Input::Tick).is_empty());
    assert_eq!(e.conversation(conv(3)).unwrap().state, "assigned");
    e.check_invariants().unwrap();
}

#[test]
fn at_risk_warns_before_the_target_and_not_once_it_is_met() {
    let mut e = engine(QueueConfig {
        sla: Sla {
            first_response_secs: Some(100),
            at_risk_percent: Some(80),
            ..Sla::default()
        },
        ..Default::default()
    });
    e.handle(at(0), &chat(1));
    e.handle(at(0), &chat(2));
    e.handle(
        at(50),
        &cmd(Command::AgentReplied {
            conversation: conv(2),
            agent: None,
        }),
    );
    let out = e.handle(at(80), &Input::Tick);
    let risks: Vec<(ConversationId, SlaKind, Timestamp)> = events(&out)
        .iter()
        .filter_map(|ev| match ev {
            RoutingEvent::SlaAtRisk {
                conversation,
                sla,
                due_at,
                ..
            } => Some((*conversation, *sla, *due_at)),
            _ => None,
        })
        .collect();
    assert_eq!(risks, vec![(conv(1), SlaKind::FirstResponse, at(100))]);
    assert_eq!(
        observed(&out, ObservationKind::SlaAtRisk(SlaKind::FirstResponse)),
        vec![1.0]
    );
}

/// `h:m` UTC on Monday 2027-02-15 (hours past 24 run into Tuesday).
fn monday(h: u64, m: u64) -> Timestamp {
    Timestamp(1_802_649_600_000 + (h * 60 + m) * 60_000)
}

/// Open 08:00-17:30 on weekdays in Ho Chi Minh City (UTC+7).
fn weekday_office() -> BusinessHours {
    BusinessHours::new(
        "Asia/Ho_Chi_Minh",
        &[(&["mon", "tue", "wed", "thu", "fri"], "08:00", "17:30")],
        vec![],
    )
    .unwrap()
}

#[test]
fn a_business_hours_sla_stops_its_clock_while_the_queue_is_closed() {
    let mut e = engine(QueueConfig {
        hours: Some(weekday_office()),
        sla: Sla {
            first_response_secs: Some(3600),
            at_risk_percent: Some(50),
            business_hours_only: BusinessHoursOnly::all(true),
            ..Sla::default()
        },
        ..Default::default()
    });
    // 17:00 local is 10:00 UTC: 30 min today, 30 min from 08:00 tomorrow (01:00 UTC).
    e.handle(monday(10, 0), &chat(1));
    let out = e.handle(monday(10, 29), &Input::Tick);
    assert!(out.is_empty());
    // Half the target: 17:30 local, as the queue closes.
    let out = e.handle(monday(10, 30), &Input::Tick);
    assert!(events(&out).iter().any(
        |ev| matches!(ev, RoutingEvent::SlaAtRisk { due_at, .. } if *due_at == monday(24 + 1, 30))
    ));
    // Nothing overnight; a reply at 08:10 local is 40 minutes of business time.
    assert!(e.handle(monday(24, 59), &Input::Tick).is_empty());
    let out = e.handle(
        monday(25, 10),
        &cmd(Command::AgentReplied {
            conversation: conv(1),
            agent: None,
        }),
    );
    assert_eq!(observed(&out, ObservationKind::FirstResponse), vec![2400.0]);
    assert!(e.handle(monday(26, 0), &Input::Tick).is_empty());
}

#[test]
fn the_wait_estimate_follows_the_queue_throughput_and_the_conversations_ahead() {
    let mut e = engine(QueueConfig::default());
    let queued = |out: &[Output]| {
        out.iter()
            .find_map(|o| match o {
                Output::Event(RoutingEvent::Queued {
                    estimated_wait_secs,
                    ..
                }) => Some(*estimated_wait_secs),
                _ => None,
            })
            .expect("a queued event")
    };
    // No agent and no history: no estimate.
    assert_eq!(queued(&e.handle(at(0), &chat(1))), None);
    online(&mut e, at(0), "a", &[], 1);
    online(&mut e, at(0), "b", &[], 1);
    // An agent free and nobody ahead: no wait.
    assert_eq!(queued(&e.handle(at(0), &chat(2))), Some(0));
    // Two assignments in the last 100 s: one every 50 s, so the next waits 50 s. Two seconds
    // later the pace is one every 51 s, and one more is ahead: 102 s.
    assert_eq!(queued(&e.handle(at(100), &chat(3))), Some(50));
    assert_eq!(queued(&e.handle(at(102), &chat(4))), Some(102));
}

#[test]
fn each_agent_has_the_day_s_kpis_and_a_summary_at_midnight() {
    let mut e = engine(QueueConfig::default());
    online(&mut e, at(0), "a", &[], 1);
    e.handle(at(10), &chat(1));
    e.handle(
        at(20),
        &cmd(Command::AgentReplied {
            conversation: conv(1),
            agent: Some("a".into()),
        }),
    );
    e.handle(at(70), &resolve(1));
    e.handle(
        at(80),
        &cmd(Command::Csat {
            conversation: conv(1),
            score: 4,
        }),
    );
    // Staffed 100 s, holding a conversation 60 s of them.
    let kpis = view(&e, "a").today.at(at(100), true, false);
    assert_eq!(kpis.handled, 1);
    assert_eq!(kpis.aht_secs, Some(60.0));
    assert_eq!(kpis.first_response_secs, Some(10.0));
    assert_eq!(kpis.occupancy, Some(0.6));
    assert_eq!(kpis.csat, Some(4.0));
    // T0 is 15:00 in Ho Chi Minh City: the day ends 9 hours later, with one summary for the
    // agent, and the figures start again.
    let out = e.handle(at(9 * 3600), &Input::Tick);
    let days: Vec<(String, String, u32, Option<f64>)> = events(&out)
        .iter()
        .filter_map(|ev| match ev {
            RoutingEvent::AgentDay { agent, day, kpis } => {
                Some((agent.0.clone(), day.clone(), kpis.handled, kpis.csat))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        days,
        vec![("a".to_owned(), "2027-01-15".to_owned(), 1, Some(4.0))]
    );
    let staffed = match events(&out)[0] {
        RoutingEvent::AgentDay { kpis, .. } => kpis.staffed_secs,
        _ => 0.0,
    };
    assert_eq!(staffed, 9.0 * 3600.0);
    let after = view(&e, "a").today.at(at(9 * 3600 + 60), true, false);
    assert_eq!((after.handled, after.staffed_secs), (0, 60.0));
    // The next day ends 24 hours later: a day staffed throughout, nothing handled.
    let out = e.handle(at(33 * 3600), &Input::Tick);
    let next: Vec<(String, f64, u32)> = events(&out)
        .iter()
        .filter_map(|ev| match ev {
            RoutingEvent::AgentDay { day, kpis, .. } => {
                Some((day.clone(), kpis.staffed_secs, kpis.handled))
            }
            _ => None,
        })
        .collect();
    assert_eq!(next, vec![("2027-01-16".to_owned(), 86400.0, 0)]);
}

#[test]
fn a_resolved_chat_gets_one_survey_and_its_answer_is_a_score_not_a_reopening() {
    let mut e = engine(QueueConfig {
        csat_survey: Some(CsatSurvey {
            channels: vec![ChannelKind::Livechat],
            question: "How did we do? Reply 1-5".into(),
            answer_within_secs: 3600,
        }),
        ..Default::default()
    });
    online(&mut e, at(0), "a", &[], 5);
    e.handle(at(0), &chat(1));
    let out = e.handle(at(10), &resolve(1));
    let surveys: Vec<(ConversationId, String, String, Timestamp)> = events(&out)
        .iter()
        .filter_map(|ev| match ev {
            RoutingEvent::CsatSurvey {
                conversation,
                recipient,
                question,
                answer_until,
                ..
            } => Some((
                *conversation,
                recipient.clone(),
                question.clone(),
                *answer_until,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        surveys,
        vec![(
            conv(1),
            "c1".to_owned(),
            "How did we do? Reply 1-5".to_owned(),
            at(3610)
        )]
    );
    // The answer: a score, credited to the agent, and the conversation stays resolved.
    let answer = |n: u32, text: &str| {
        Input::Inbound(Inbound {
            conversation: conv(n),
            channel: ChannelRef::new(ChannelKind::Livechat, "main"),
            contact_id: format!("c{n}"),
            tags: vec![],
            language: None,
            text: text.into(),
        })
    };
    let out = e.handle(at(20), &answer(1, "5 sao"));
    assert_eq!(observed(&out, ObservationKind::Csat), vec![5.0]);
    assert!(events(&out).iter().any(|ev| matches!(
        ev,
        RoutingEvent::CsatAnswered { score: 5, agent: Some(a), .. } if a.0 == "a"
    )));
    assert!(!events(&out)
        .iter()
        .any(|ev| matches!(ev, RoutingEvent::Reopened { .. })));
    assert_eq!(e.conversation(conv(1)).unwrap().state, "resolved");
    assert_eq!(view(&e, "a").today.at(at(20), true, false).csat, Some(5.0));
    // One answer per survey: another "4" is a message again (it reopens the conversation).
    let out = e.handle(at(30), &answer(1, "4"));
    assert!(observed(&out, ObservationKind::Csat).is_empty());
    assert!(events(&out)
        .iter()
        .any(|ev| matches!(ev, RoutingEvent::Reopened { .. })));

    // Something else than a score is a message; the survey is closed by it.
    e.handle(at(40), &chat(2));
    e.handle(at(50), &resolve(2));
    let out = e.handle(at(60), &answer(2, "one more question"));
    assert!(events(&out)
        .iter()
        .any(|ev| matches!(ev, RoutingEvent::Reopened { .. })));
    e.handle(at(70), &resolve(2));
    // ...and a late answer (after the hour) is a message too.
    let out = e.handle(at(70 + 3601), &answer(2, "5"));
    assert!(observed(&out, ObservationKind::Csat).is_empty());

    // No survey for another channel, nor for a contact nobody handled.
    let out = e.handle(at(5000), &msg(3, ChannelKind::Sms));
    assert_eq!(assigned(&out).len(), 1);
    let out = e.handle(at(5001), &resolve(3));
    assert!(!events(&out)
        .iter()
        .any(|ev| matches!(ev, RoutingEvent::CsatSurvey { .. })));
    e.handle(at(5002), &presence("a", Presence::Offline));
    e.handle(at(5003), &chat(4));
    let out = e.handle(at(5004), &resolve(4));
    assert!(!events(&out)
        .iter()
        .any(|ev| matches!(ev, RoutingEvent::CsatSurvey { .. })));
}

#[test]
fn a_target_left_out_of_business_hours_keeps_the_wall_clock() {
    let mut e = engine(QueueConfig {
        hours: Some(weekday_office()),
        sla: Sla {
            first_response_secs: Some(3600),
            resolution_secs: Some(7200),
            business_hours_only: BusinessHoursOnly {
                first_response: true,
                ..BusinessHoursOnly::default()
            },
            ..Sla::default()
        },
        ..Default::default()
    });
    // 17:00 local: resolution is due at 19:00 local on the wall clock, the first response at
    // 08:30 the next morning in opening hours.
    e.handle(monday(10, 0), &chat(1));
    let breached = |out: &[Output]| -> Vec<SlaKind> {
        events(out)
            .iter()
            .filter_map(|ev| match ev {
                RoutingEvent::SlaBreached { sla, .. } => Some(*sla),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        breached(&e.handle(monday(12, 0), &Input::Tick)),
        vec![SlaKind::Resolution]
    );
    assert!(breached(&e.handle(monday(25, 29), &Input::Tick)).is_empty());
    assert_eq!(
        breached(&e.handle(monday(25, 30), &Input::Tick)),
        vec![SlaKind::FirstResponse]
    );
}
