//! Strategies: which agent gets a conversation; skills and capacity.

use super::*;

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
    online_with_one_email_place(&mut e, at(0), "a", 3);
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
