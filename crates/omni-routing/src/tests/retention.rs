//! Retention: what the engine forgets, and when.

use super::*;

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
