//! The event contract for the router's types: commands (`omni.command`), ticks
//! (`omni.router.tick`) and routing events (`omni.routing.*`), checked against their JSON
//! Schemas in `crates/omni-core/schemas/` the way omni-core's contract test checks channel
//! events (the shared checks are in omni-core's `tests/support/`, included here by path: these
//! types live in omni-routing, which depends on omni-core, so omni-core's tests cannot build
//! them without a dependency cycle).
//!
//! Real events are built with the router's own envelope code ([`wire::routing_envelope`],
//! [`wire::command_envelope`]) from every variant of [`Command`] and [`RoutingEvent`], minimal
//! and fully populated, and read back with the router's readers ([`wire::decode_input`], and
//! [`wire::Envelope`] for routing events). The AsyncAPI document's payloads are checked here
//! against the real events of every type, channel and router.

// clippy.toml allows unwrap in `#[test]` functions only; the helpers below are test code too.
#![allow(clippy::unwrap_used)]

#[path = "../../omni-core/tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use omni_core::{ChannelKind, ChannelRef, ConversationId, EventId, EventType, TenantId};
use omni_router::wire::{self, Envelope};
use omni_routing::{
    AgentId, AgentKpis, AgentProfile, Command, Explanation, Input, Presence, RoutingEvent, SlaKind,
    Strategy, Timestamp, TransferTarget,
};
use serde_json::{json, Value};

use support::channel::Channel;
use support::{
    assert_valid, assert_wrong_value_rejected, asyncapi_payloads, check_asyncapi_payloads,
    check_events_validate, check_missing_required_fields_are_rejected,
    check_required_is_exactly_what_minimal_events_serialize,
    check_schemas_declare_exactly_what_full_events_serialize,
    check_unknown_fields_and_extension_attributes_are_accepted, load, schema_enum, wire_names,
    Fixtures, Validators,
};

// ---------------------------------------------------------------------------------------------
// Real events, built by the router's envelope code
// ---------------------------------------------------------------------------------------------

fn acme() -> TenantId {
    TenantId::new("acme-vn").unwrap()
}

fn at(rfc3339: &str) -> DateTime<Utc> {
    rfc3339.parse().unwrap()
}

fn conversation() -> ConversationId {
    ConversationId::derive(
        &acme(),
        &ChannelRef::new(ChannelKind::Zalo, "1234567890123456789"),
        "8812345678901234567",
        None,
    )
}

fn agent() -> AgentId {
    "nguyen.lan".into()
}

/// Every command, minimal (optional fields absent) or fully populated; a transfer both to an
/// agent and to a queue, so both targets are seen.
fn all_commands(full: bool) -> Vec<Command> {
    let c = conversation();
    let all = vec![
        Command::UpsertAgent(AgentProfile {
            agent: agent(),
            skills: if full {
                [("vi".into(), 5), ("billing".into(), 3)]
                    .into_iter()
                    .collect()
            } else {
                BTreeMap::new()
            },
            capacity: 3,
            channel_capacity: if full {
                [(ChannelKind::Email, 1), (ChannelKind::Zalo, 0)]
                    .into_iter()
                    .collect()
            } else {
                BTreeMap::new()
            },
        }),
        Command::RemoveAgent { agent: agent() },
        Command::SetPresence {
            agent: agent(),
            presence: Presence::Online,
        },
        Command::Accept {
            agent: agent(),
            conversation: c,
        },
        Command::Decline {
            agent: agent(),
            conversation: c,
        },
        Command::AgentReplied {
            conversation: c,
            agent: full.then(agent),
        },
        Command::Resolve { conversation: c },
        Command::Transfer {
            conversation: c,
            to: TransferTarget::Agent("tran.minh".into()),
        },
        Command::Transfer {
            conversation: c,
            to: TransferTarget::Queue("billing".into()),
        },
        Command::Reopen { conversation: c },
        Command::Ready { agent: agent() },
        Command::CustomerLeft { conversation: c },
        Command::Csat {
            conversation: c,
            score: 5,
        },
    ];
    // No wildcard: a new command does not compile until it is in the list above.
    for command in &all {
        match command {
            Command::UpsertAgent(_)
            | Command::RemoveAgent { .. }
            | Command::SetPresence { .. }
            | Command::Accept { .. }
            | Command::Decline { .. }
            | Command::AgentReplied { .. }
            | Command::Resolve { .. }
            | Command::Transfer { .. }
            | Command::Reopen { .. }
            | Command::Ready { .. }
            | Command::CustomerLeft { .. }
            | Command::Csat { .. } => {}
        }
    }
    all
}

/// A command as the agent API writes it. A minimal one leaves out the optional attributes
/// (`dataschema`, and `subject`, which the router does not need: it reads `data`).
fn command_event(command: Command, full: bool) -> Value {
    let mut env = wire::command_envelope(
        EventId::new_random(),
        acme(),
        "/omnirouter/acme-vn/api".into(),
        at("2025-03-14T09:27:05.120Z"),
        command,
    );
    if !full {
        env.dataschema = None;
        env.subject = None;
    }
    let value = serde_json::to_value(&env).unwrap();
    let back: Envelope<Command> = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(back, env, "command does not survive a JSON round trip");
    value
}

/// A tick as the router's ticker writes it.
fn tick_event(full: bool) -> Value {
    let mut env = Envelope::with_source(
        EventId::new_random(),
        EventType::RouterTick,
        acme(),
        "/omnirouter/acme-vn/router".into(),
        None,
        at("2025-03-14T09:27:23.600Z"),
        json!({}),
    );
    if !full {
        env.dataschema = None;
    }
    serde_json::to_value(&env).unwrap()
}

fn kpis(full: bool) -> AgentKpis {
    AgentKpis {
        handled: 24,
        aht_secs: full.then_some(412.5),
        first_response_secs: full.then_some(38.2),
        occupancy: full.then_some(0.71),
        staffed_secs: 28_800.0,
        csat: full.then_some(4.6),
        csat_count: 9,
    }
}

/// The routing event of `event_type`, minimal (every `Option` `None`) or fully populated. No
/// wildcard over the types, and [`wire::routing_type`] has none over the variants.
fn routing_event(event_type: EventType, full: bool) -> RoutingEvent {
    let conversation = conversation();
    let queue = || "general".into();
    let maybe_agent = || full.then(agent);
    let t = Timestamp(1_741_944_413_589);
    let ev = match event_type {
        EventType::RoutingQueued => RoutingEvent::Queued {
            conversation,
            queue: queue(),
            priority: -3,
            estimated_wait_secs: full.then_some(120),
        },
        EventType::RoutingAfterHours => RoutingEvent::AfterHours {
            conversation,
            queue: queue(),
            opens_at: full.then_some(t),
        },
        EventType::RoutingOffered => RoutingEvent::Offered {
            conversation,
            agent: agent(),
            queue: queue(),
            expires_at: t,
        },
        EventType::RoutingOfferDeclined => RoutingEvent::OfferDeclined {
            conversation,
            agent: agent(),
            timed_out: full,
        },
        EventType::RoutingAssigned => RoutingEvent::Assigned {
            conversation,
            agent: agent(),
            queue: queue(),
            explanation: Explanation {
                strategy: Strategy::LeastLoaded.as_str().into(),
                eligible: 3,
                reason: "nguyen.lan has the fewest open conversations (0 of 3)".into(),
            },
        },
        EventType::RoutingRequeued => RoutingEvent::Requeued {
            conversation,
            queue: queue(),
            from_agent: maybe_agent(),
            reason: "agent offline".into(),
        },
        EventType::RoutingEscalated => RoutingEvent::Escalated {
            conversation,
            from_queue: "billing".into(),
            to_queue: queue(),
            action: "moved to general after 300s".into(),
        },
        EventType::RoutingSlaBreached => RoutingEvent::SlaBreached {
            conversation,
            queue: queue(),
            sla: SlaKind::FirstResponse,
        },
        EventType::RoutingResolved => RoutingEvent::Resolved {
            conversation,
            agent: maybe_agent(),
            queue: queue(),
        },
        EventType::RoutingExpired => RoutingEvent::Expired {
            conversation,
            queue: queue(),
            agent: maybe_agent(),
            last_activity: t,
        },
        EventType::RoutingReopened => RoutingEvent::Reopened { conversation },
        EventType::RoutingRejected => RoutingEvent::Rejected {
            conversation: full.then_some(conversation),
            reason: "unknown conversation".into(),
        },
        EventType::RoutingAbandoned => RoutingEvent::Abandoned {
            conversation,
            queue: queue(),
            agent: maybe_agent(),
            waiting_since: t,
            reason: "patience".into(),
        },
        EventType::RoutingSlaAtRisk => RoutingEvent::SlaAtRisk {
            conversation,
            queue: queue(),
            sla: SlaKind::Resolution,
            due_at: t,
        },
        EventType::RoutingAgentAway => RoutingEvent::AgentAway {
            agent: agent(),
            reason: "3 offers in a row timed out".into(),
        },
        EventType::RoutingAgentDay => RoutingEvent::AgentDay {
            agent: agent(),
            day: "2025-03-13".into(),
            kpis: kpis(full),
        },
        EventType::RoutingCsatSurvey => RoutingEvent::CsatSurvey {
            conversation,
            channel: ChannelRef::new(ChannelKind::Zalo, "1234567890123456789"),
            recipient: "8812345678901234567".into(),
            question: "Anh/chị đánh giá cuộc trò chuyện thế nào? Trả lời 1-5.".into(),
            answer_until: t,
        },
        EventType::RoutingCsatAnswered => RoutingEvent::CsatAnswered {
            conversation,
            score: 4,
            agent: maybe_agent(),
        },
        EventType::MessageReceived
        | EventType::MessageEchoed
        | EventType::ChannelSignal
        | EventType::MessageSend
        | EventType::DeliveryUpdated
        | EventType::Command
        | EventType::RouterTick => panic!("{event_type} is not a routing event"),
    };
    assert_eq!(wire::routing_type(&ev), event_type);
    ev
}

/// A routing event as the router writes it; a minimal one without `dataschema`.
fn routing_json(event: &RoutingEvent, full: bool) -> Value {
    let id = EventId::derived(&acme(), &["omni.inbound.v1", "0", "42", "1"]);
    let mut env = wire::routing_envelope(&acme(), id, at("2025-03-14T09:26:53.589Z"), event);
    if !full {
        env.dataschema = None;
    }
    let value = serde_json::to_value(&env).unwrap();
    let back: Envelope<RoutingEvent> = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(
        &back.data, event,
        "routing event does not survive a JSON round trip"
    );
    value
}

/// Whether the router's input reader takes `value` (a record keyed by its tenant) as a
/// command or a tick.
fn router_reads(event_type: EventType, value: &Value) -> bool {
    let key = value["tenant"].as_str().unwrap_or("acme-vn");
    let payload = serde_json::to_vec(value).unwrap();
    match wire::decode_input(key.as_bytes(), &payload) {
        Ok(Some((_, Input::Command(_)))) => event_type == EventType::Command,
        Ok(Some((_, Input::Tick))) => event_type == EventType::RouterTick,
        _ => false,
    }
}

/// The router's types' fixtures.
struct Router;

impl Fixtures for Router {
    fn events(&self, event_type: EventType, full: bool) -> Vec<Value> {
        match event_type {
            EventType::Command => all_commands(full)
                .into_iter()
                .map(|c| command_event(c, full))
                .collect(),
            EventType::RouterTick => vec![tick_event(full)],
            _ => vec![routing_json(&routing_event(event_type, full), full)],
        }
    }

    fn reader_accepts(&self, event_type: EventType, value: &Value) -> bool {
        if value["type"] != event_type.as_str() {
            return false;
        }
        match event_type {
            EventType::Command | EventType::RouterTick => router_reads(event_type, value),
            _ => serde_json::from_value::<Envelope<RoutingEvent>>(value.clone())
                .is_ok_and(|e| wire::routing_type(&e.data) == event_type),
        }
    }

    fn reader_requires(
        &self,
        event_type: EventType,
        parent: &str,
        key: &str,
        nullable: bool,
    ) -> bool {
        match (event_type, parent) {
            // The input reader needs only these of an envelope: it does not check the rest.
            (EventType::Command | EventType::RouterTick, "") => {
                ["type", "tenant", "data"].contains(&key)
            }
            // The subject is optional in the Rust envelope of the router's events.
            (_, "") if key == "subject" => false,
            _ => !nullable,
        }
    }
}

/// Channel and router types together, for the AsyncAPI document.
struct Every;

impl Fixtures for Every {
    fn events(&self, event_type: EventType, full: bool) -> Vec<Value> {
        if EventType::CHANNEL.contains(&event_type) {
            Channel.events(event_type, full)
        } else {
            Router.events(event_type, full)
        }
    }

    fn reader_accepts(&self, event_type: EventType, value: &Value) -> bool {
        if EventType::CHANNEL.contains(&event_type) {
            Channel.reader_accepts(event_type, value)
        } else {
            Router.reader_accepts(event_type, value)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Events against the schemas
// ---------------------------------------------------------------------------------------------

#[test]
fn every_router_event_type_validates_against_its_schemas() {
    check_events_validate(&Router, &EventType::ROUTER);
}

#[test]
fn schemas_declare_exactly_what_full_router_events_serialize() {
    check_schemas_declare_exactly_what_full_events_serialize(&Router, &EventType::ROUTER);
}

#[test]
fn required_is_exactly_what_minimal_router_events_serialize() {
    check_required_is_exactly_what_minimal_events_serialize(&Router, &EventType::ROUTER);
}

#[test]
fn unknown_fields_and_extension_attributes_are_accepted_everywhere() {
    check_unknown_fields_and_extension_attributes_are_accepted(&Router, &EventType::ROUTER);
}

#[test]
fn missing_required_fields_are_rejected() {
    let checked = check_missing_required_fields_are_rejected(&Router, &EventType::ROUTER);
    // Eight envelope attributes per event, and data fields: 13 command fixtures, a tick, 18
    // routing events.
    assert!(checked >= (13 + 1 + 18) * 8 + 50, "{checked}");
}

#[test]
fn asyncapi_payloads_accept_real_events_of_every_type_and_their_examples() {
    check_asyncapi_payloads(&Every, &EventType::ALL);
}

/// A routing event about no conversation has no subject, and its message still validates; one
/// about a conversation needs it.
#[test]
fn routing_events_without_a_conversation_have_no_subject() {
    let payloads = asyncapi_payloads();
    let payload = |t: EventType| &payloads.iter().find(|(_, own, _, _)| *own == t).unwrap().3;
    for t in [
        EventType::RoutingRejected,
        EventType::RoutingAgentAway,
        EventType::RoutingAgentDay,
    ] {
        let event = Router.events(t, false).remove(0);
        assert!(event.get("subject").is_none(), "{t}: {event}");
        assert_valid(payload(t), &event, &format!("{t} without a subject"));
    }
    // The router's answer to a record it cannot read.
    let undecodable = RoutingEvent::Rejected {
        conversation: None,
        reason: "undecodable omni.commands.v1 record: expected value at line 1 column 1".into(),
    };
    let event = routing_json(&undecodable, true);
    assert!(event.get("subject").is_none());
    assert_valid(
        payload(EventType::RoutingRejected),
        &event,
        "an undecodable command's rejection",
    );
    for t in EventType::ROUTER {
        if [EventType::Command, EventType::RouterTick].contains(&t) {
            continue;
        }
        let mut event = Router.events(t, true).remove(0);
        let always = wire::routing_conversation(&routing_event(t, false)).is_some();
        let had = event.as_object_mut().unwrap().remove("subject").is_some();
        assert_eq!(
            had,
            wire::routing_conversation(&routing_event(t, true)).is_some()
        );
        assert_eq!(
            payload(t).is_valid(&event),
            !always,
            "{t}: a missing subject is accepted iff the event can be about no conversation"
        );
    }
}

/// The question the router sends after a CSAT survey event is a channel event: it follows the
/// outbound message's contract and names its schema.
#[test]
fn the_survey_question_the_router_sends_is_a_valid_outbound_message() {
    let survey = Router.events(EventType::RoutingCsatSurvey, true).remove(0);
    let question = wire::survey_message(&survey).unwrap();
    assert_eq!(question["type"], "omni.message.send");
    assert_eq!(question["dataschema"], EventType::MessageSend.dataschema());
    assert_eq!(question["data"]["csat_survey"], true);
    let payloads = asyncapi_payloads();
    let (_, _, _, payload) = payloads
        .iter()
        .find(|(_, t, _, _)| *t == EventType::MessageSend)
        .unwrap();
    assert_valid(payload, &question, "the CSAT survey question");
    assert!(Channel.reader_accepts(EventType::MessageSend, &question));
}

// ---------------------------------------------------------------------------------------------
// Enums
// ---------------------------------------------------------------------------------------------

fn all_presences() -> Vec<Presence> {
    let all = vec![Presence::Online, Presence::Away, Presence::Offline];
    for p in &all {
        match p {
            Presence::Online | Presence::Away | Presence::Offline => {}
        }
    }
    all
}

fn all_sla_kinds() -> Vec<SlaKind> {
    let all = vec![
        SlaKind::FirstResponse,
        SlaKind::NextResponse,
        SlaKind::Resolution,
    ];
    for s in &all {
        match s {
            SlaKind::FirstResponse | SlaKind::NextResponse | SlaKind::Resolution => {}
        }
    }
    all
}

fn all_strategies() -> Vec<Strategy> {
    let all = vec![
        Strategy::LongestIdle,
        Strategy::LeastLoaded,
        Strategy::RoundRobin,
        Strategy::BestSkill,
    ];
    for s in &all {
        match s {
            Strategy::LongestIdle
            | Strategy::LeastLoaded
            | Strategy::RoundRobin
            | Strategy::BestSkill => {}
        }
    }
    all
}

/// Every string literal that follows `marker` on its line in omni-routing's engine sources
/// (the values a stringly-typed field is given: `strategy: "sticky".into()`).
fn literals_after(marker: &str) -> BTreeSet<String> {
    fn scan(dir: &Path, marker: &str, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                scan(&path, marker, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices(marker) {
                    let line = text[i + marker.len()..].lines().next().unwrap_or_default();
                    // The literal opens the marker (`strategy: "`) or comes later on its line.
                    let lit = if marker.ends_with('"') {
                        Some(line)
                    } else {
                        line.find('"').map(|start| &line[start + 1..])
                    };
                    if let Some(lit) = lit {
                        let end = lit.find('"').unwrap_or_else(|| panic!("{line}"));
                        out.insert(lit[..end].to_owned());
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../omni-routing/src/engine");
    scan(&src, marker, &mut out);
    out
}

#[test]
fn schema_enums_list_exactly_the_rust_values() {
    assert_eq!(
        schema_enum(
            "command.schema.json",
            "/$defs/set_presence/properties/presence"
        ),
        wire_names(&all_presences())
    );
    let slas = wire_names(&all_sla_kinds());
    let mut files_with_sla = 0;
    for file in support::data_schema_files() {
        if load(&file).pointer("/$defs/sla").is_some() {
            assert_eq!(schema_enum(&file, "/$defs/sla"), slas, "{file}");
            files_with_sla += 1;
        }
    }
    assert_eq!(files_with_sla, 2, "sla_breached and sla_at_risk");

    // Explanation strategies: the queues' strategies and the engine's own words.
    let mut strategies = wire_names(&all_strategies());
    for s in all_strategies() {
        assert!(strategies.contains(s.as_str()));
    }
    let literal = literals_after("strategy: \"");
    assert!(literal.contains("sticky"), "{literal:?}");
    strategies.extend(literal);
    assert_eq!(
        schema_enum(
            "routing-assigned.schema.json",
            "/$defs/explanation/properties/strategy"
        ),
        strategies
    );

    // Why a customer stopped waiting: the engine's calls of `abandon`.
    let reasons = literals_after(".abandon(now, ");
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(
        schema_enum("routing-abandoned.schema.json", "/properties/reason"),
        reasons
    );
}

/// The command union lists every command once, under the tag serde writes.
#[test]
fn the_command_schema_has_a_branch_per_command() {
    let schema = load("command.schema.json");
    let branches: Vec<String> = schema["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let name = b["$ref"]
                .as_str()
                .unwrap()
                .strip_prefix("#/$defs/")
                .unwrap();
            let tag = schema["$defs"][name]["properties"]["command"]["const"]
                .as_str()
                .unwrap();
            assert_eq!(tag, name);
            tag.to_owned()
        })
        .collect();
    let tags: BTreeSet<String> = all_commands(true)
        .iter()
        .map(|c| {
            serde_json::to_value(c).unwrap()["command"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(branches.len(), tags.len(), "{branches:?}");
    assert_eq!(branches.into_iter().collect::<BTreeSet<_>>(), tags);
}

/// Each routing type's file fixes the `event` tag serde writes for it, and its `type`.
#[test]
fn every_routing_schema_fixes_its_event_tag() {
    for t in EventType::ROUTER {
        if [EventType::Command, EventType::RouterTick].contains(&t) {
            continue;
        }
        let tag = serde_json::to_value(routing_event(t, true)).unwrap()["event"].clone();
        assert_eq!(
            t.as_str(),
            format!("omni.routing.{}", tag.as_str().unwrap())
        );
        let schema = load(t.schema_file().unwrap());
        assert_eq!(schema["properties"]["event"]["const"], tag, "{t}");
        assert_eq!(schema["title"], format!("{t} data"));
    }
}

// ---------------------------------------------------------------------------------------------
// Broken events are rejected, so the checks above can fail
// ---------------------------------------------------------------------------------------------

#[test]
fn wrong_values_are_rejected() {
    let cases: Vec<(EventType, &str, Value)> = vec![
        (EventType::Command, "/type", json!("omni.commands")),
        (EventType::Command, "/data/command", json!("snooze")),
        (EventType::Command, "/data/presence", json!("busy")),
        (EventType::Command, "/data/capacity", json!(-1)),
        (
            EventType::Command,
            "/data/capacity",
            json!(4_294_967_296_u64),
        ),
        (EventType::Command, "/data/skills/vi", json!("expert")),
        (
            EventType::Command,
            "/data/channel_capacity",
            json!({"telegram": 1}),
        ),
        (EventType::Command, "/data/conversation", json!("c-1")),
        (
            EventType::Command,
            "/data/to",
            json!({"agent": "a", "queue": "q"}),
        ),
        (EventType::Command, "/data/to", json!("general")),
        (EventType::Command, "/data", json!("resolve")),
        (EventType::RoutingAssigned, "/data/event", json!("queued")),
        (
            EventType::RoutingAssigned,
            "/data/explanation/eligible",
            json!(-1),
        ),
        (
            EventType::RoutingSlaBreached,
            "/data/sla",
            json!("response"),
        ),
        (EventType::RoutingOffered, "/data/expires_at", json!(-1)),
        (EventType::RoutingOffered, "/data/expires_at", json!("soon")),
        (EventType::RoutingQueued, "/data/priority", json!(1.5)),
        (EventType::RoutingQueued, "/data/conversation", json!(7)),
        (
            EventType::RoutingCsatSurvey,
            "/data/channel/kind",
            json!("telegram"),
        ),
        (EventType::RoutingAgentDay, "/data/kpis/handled", json!(-2)),
        (
            EventType::RoutingRejected,
            "/data/conversation",
            json!("c-1"),
        ),
        (EventType::RoutingResolved, "/specversion", json!("0.3")),
    ];
    for (event_type, pointer, bad) in cases {
        assert_wrong_value_rejected(&Router, event_type, pointer, &bad);
    }
    // What the Rust types take and the contract does not: the schemas refuse it.
    let schema_only: Vec<(EventType, &str, Value)> = vec![
        (EventType::RoutingAgentDay, "/data/day", json!("13/03/2025")),
        (
            EventType::RoutingAgentDay,
            "/data/kpis/occupancy",
            json!(1.5),
        ),
        (EventType::RoutingCsatAnswered, "/data/score", json!(6)),
        (EventType::RoutingAbandoned, "/data/reason", json!("bored")),
        (
            EventType::RoutingAssigned,
            "/data/explanation/strategy",
            json!("random"),
        ),
        (EventType::Command, "/data/score", json!(0)),
        (EventType::Command, "/data/skills/vi", json!(6)),
        (EventType::RoutingQueued, "/dataschema", json!("not a URI")),
    ];
    for (event_type, pointer, bad) in schema_only {
        let schemas = Validators::of(event_type);
        let mut event = Router
            .events(event_type, true)
            .into_iter()
            .find(|e| e.pointer(pointer).is_some())
            .unwrap_or_else(|| panic!("{event_type}: no fixture has {pointer}"));
        *event.pointer_mut(pointer).unwrap() = bad.clone();
        assert!(
            !schemas.accept(&event),
            "{event_type}: schemas accept {pointer} = {bad}"
        );
    }
}
