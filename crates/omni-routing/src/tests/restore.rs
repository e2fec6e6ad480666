//! The changelog and restore: an engine rebuilt from its records continues identically.

use super::*;

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
            ..Sla::default()
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

#[test]
fn a_damaged_agent_number_is_renumbered_instead_of_allocated() {
    let config = RoutingConfig::single_queue(QueueConfig::default());
    let mut original = Engine::new(config.clone()).unwrap();
    let mut store = BTreeMap::new();
    for (t, input) in [
        (0, agent("a", &[], 2)),
        (0, presence("a", Presence::Online)),
        (1, agent("b", &[], 2)),
        (1, presence("b", Presence::Online)),
        (2, chat(1)),
    ] {
        original.handle(at(t), &input);
        apply(&mut store, original.take_changes());
    }
    // Agent b's record and the tenant's next number say 4 billion: a damaged changelog.
    for entry in store.values_mut() {
        match entry {
            crate::StateEntry::Agent(a) if a.id.0 == "b" => a.seq = u64::from(u32::MAX) - 1,
            crate::StateEntry::Tenant(t) => t.next_agent_seq = u64::from(u32::MAX),
            _ => {}
        }
    }
    let (mut restored, _) = Engine::restore(config, store.values().cloned(), at(3)).unwrap();
    // The renumbered agent is a repair: its record is left to write.
    let keys: Vec<String> = restored.take_changes().into_iter().map(|c| c.key).collect();
    assert!(keys.contains(&"agent/b".to_owned()), "{keys:?}");
    restored.check_invariants().unwrap();
    assert_eq!(restored.agent_views(), original.agent_views());
    // It routes as before, and a new agent gets a small number.
    restored.handle(at(4), &agent("c", &[], 2));
    restored.handle(at(4), &presence("c", Presence::Online));
    restored.handle(at(5), &chat(2));
    restored.check_invariants().unwrap();
    let snapshot = restored.snapshot();
    assert!(
        snapshot.iter().all(|e| match e {
            crate::StateEntry::Agent(a) => a.seq < 100,
            crate::StateEntry::Tenant(t) => t.next_agent_seq < 100,
            _ => true,
        }),
        "{snapshot:?}"
    );
}
