//! Configuration: errors name the key; serde data reads as TOML would.

use super::*;

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

#[test]
fn business_hours_only_is_every_target_or_a_list_and_needs_hours() {
    let sla = |v: serde_json::Value| -> Sla { serde_json::from_value(v).unwrap() };
    assert_eq!(
        sla(serde_json::json!({"business_hours_only": true})).business_hours_only,
        BusinessHoursOnly::all(true)
    );
    let some = sla(serde_json::json!({"business_hours_only": ["first_response", "next_response"]}));
    assert!(some.business_hours_only.covers(SlaKind::FirstResponse));
    assert!(some.business_hours_only.covers(SlaKind::NextResponse));
    assert!(!some.business_hours_only.covers(SlaKind::Resolution));
    assert!(
        serde_json::from_value::<Sla>(serde_json::json!({"business_hours_only": ["soon"]}))
            .is_err()
    );
    let config = RoutingConfig::single_queue(QueueConfig {
        sla: some,
        ..Default::default()
    });
    assert_eq!(
        Engine::new(config).unwrap_err().key,
        "queues.default.sla.business_hours_only"
    );
}
