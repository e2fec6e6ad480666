//! Keeps the checked-in event contract (`schemas/*.json`) honest.
//!
//! Real events are built through omni-core's public constructors, serialized as they go on the
//! wire, and checked against the JSON Schemas: they must validate, every property they serialize
//! must be declared, every declared property must be serialized by a fully populated event, and
//! `required` must be exactly what a minimal event serializes. So a schema that drifts from the
//! code in either direction fails here. Broken events must be rejected by the schemas (and, where
//! the Rust types are as strict, by serde too), so the checks can fail. The AsyncAPI document is
//! checked against [`Topics`], [`EventType`] and the schema files it references.

// clippy.toml allows unwrap in `#[test]` functions only; the helpers below are test code too.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use jsonschema::{Retrieve, Uri, Validator};
use omni_core::{
    Attachment, AuthResult, ChannelKind, ChannelRef, ChannelSignal, CloudEvent, Contact,
    ConversationId, DeliveryStatus, DeliveryUpdate, Direction, EventId, EventType, Message,
    MessageFlag, MessageReceived, OutboundMessage, SenderAuthentication, SignalKind, Template,
    TenantId, Topics,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Loading and compiling the schemas
// ---------------------------------------------------------------------------------------------

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn load(name: &str) -> Value {
    let path = schemas_dir().join(name);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// Format assertions on (uuid, date-time) and unknown formats refused, so a typo in a `format`
/// cannot silently turn a check off. Building also validates the schema against its meta-schema.
fn options() -> jsonschema::ValidationOptions<'static> {
    jsonschema::options()
        .should_validate_formats(true)
        .should_ignore_unknown_formats(false)
}

fn compile(name: &str) -> Validator {
    options()
        .build(&load(name))
        .unwrap_or_else(|e| panic!("{name} does not compile: {e}"))
}

fn errors(validator: &Validator, value: &Value) -> Vec<String> {
    validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn assert_valid(validator: &Validator, value: &Value, what: &str) {
    let errs = errors(validator, value);
    assert!(
        errs.is_empty(),
        "{what} rejected by its schema:\n  {}\nvalue: {value:#}",
        errs.join("\n  ")
    );
}

/// Schema files the contract consists of (besides the AsyncAPI document).
const SCHEMA_FILES: [&str; 5] = [
    "cloudevent.schema.json",
    "message-received.schema.json",
    "channel-signal.schema.json",
    "outbound-message.schema.json",
    "delivery-update.schema.json",
];

// ---------------------------------------------------------------------------------------------
// Real events, built through the public API
// ---------------------------------------------------------------------------------------------

fn at(rfc3339: &str) -> DateTime<Utc> {
    rfc3339.parse().unwrap()
}

fn acme() -> TenantId {
    TenantId::new("acme-vn").unwrap()
}

fn minimal_contact(id: &str) -> Contact {
    Contact {
        id: id.into(),
        name: None,
        phone: None,
        email: None,
        language: None,
        tags: vec![],
    }
}

fn full_contact(id: &str) -> Contact {
    Contact {
        id: id.into(),
        name: Some("Nguyễn Thị Minh Khai".into()),
        phone: Some("+84901234567".into()),
        email: Some("minhkhai@example.vn".into()),
        language: Some("vi".into()),
        tags: vec!["vip".into(), "khách-hàng-thân-thiết".into()],
    }
}

fn full_attachments() -> Vec<Attachment> {
    vec![
        Attachment {
            url: "https://cdn.example.vn/uploads/hoá-đơn-1024.pdf".into(),
            content_type: Some("application/pdf".into()),
            name: Some("hoá đơn #1024.pdf".into()),
            size: Some(48_213),
        },
        Attachment {
            url: "https://cdn.example.vn/uploads/anh.jpg".into(),
            content_type: None,
            name: None,
            size: None,
        },
    ]
}

/// Serializes an event and checks it deserializes back to itself.
fn wire<T>(event: &CloudEvent<T>) -> Value
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let value = serde_json::to_value(event).unwrap();
    let back: CloudEvent<T> = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(&back, event, "event does not survive a JSON round trip");
    value
}

fn message_received(event_type: EventType, full: bool) -> Value {
    let tenant = acme();
    let direction = match event_type {
        EventType::MessageEchoed => Direction::Outbound,
        _ => Direction::Inbound,
    };
    let (channel, contact, message) = if full {
        let channel = ChannelRef::new(ChannelKind::Email, "support@shop.example.vn");
        let contact = full_contact("minhkhai@example.vn");
        let message = Message {
            id: "<CAF=x1@mail.example.vn>".into(),
            direction,
            text: "Xin chào, tôi cần hỗ trợ đơn hàng #1024. Cảm ơn!".into(),
            subject: Some("Hỗ trợ đơn hàng #1024".into()),
            attachments: full_attachments(),
            reply_to: Some("<CAF=x0@mail.example.vn>".into()),
            payload: Some("XEM_DON_HANG_1024".into()),
            sent_at: Some(at("2025-03-14T09:26:52+07:00")),
        };
        (channel, contact, message)
    } else {
        let channel = ChannelRef::new(ChannelKind::Api, "default");
        let contact = minimal_contact("client-42");
        let message = Message {
            id: "m-1".into(),
            direction,
            text: String::new(),
            subject: None,
            attachments: vec![],
            reply_to: None,
            payload: None,
            sent_at: None,
        };
        (channel, contact, message)
    };
    let thread = full.then_some("<CAF=x0@mail.example.vn>");
    let conversation = ConversationId::derive(&tenant, &channel, &contact.id, thread);
    let id = EventId::from_provider(&tenant, &channel, "message", &message.id);
    let now = at("2025-03-14T02:26:53.589793238Z");
    let data = MessageReceived {
        tenant: tenant.clone(),
        conversation_id: conversation,
        channel: channel.clone(),
        contact,
        message,
        received_at: now,
        authentication: full.then(|| SenderAuthentication {
            authserv_id: "mx.google.com".into(),
            spf: Some(AuthResult::Pass),
            dkim: Some(AuthResult::Pass),
            dmarc: Some(AuthResult::Fail),
        }),
        flags: if full {
            vec![MessageFlag::ThreadRefused, MessageFlag::MessageIdReused]
        } else {
            Vec::new()
        },
    };
    wire(&CloudEvent::new(
        id,
        event_type,
        tenant,
        &channel,
        conversation,
        now,
        data,
    ))
}

fn channel_signal(full: bool) -> Value {
    let tenant = acme();
    let channel = ChannelRef::new(ChannelKind::Zalo, "1234567890123456789");
    let contact = if full {
        full_contact("8812345678901234567")
    } else {
        minimal_contact("8812345678901234567")
    };
    let conversation = ConversationId::derive(&tenant, &channel, &contact.id, None);
    let now = at("2025-03-14T09:33:00.120Z");
    let data = ChannelSignal {
        tenant: tenant.clone(),
        conversation_id: conversation,
        channel: channel.clone(),
        contact,
        signal: if full {
            SignalKind::Read
        } else {
            SignalKind::Follow
        },
        message_ids: if full {
            vec!["msg-9a8b7c".into(), "msg-9a8b7d".into()]
        } else {
            vec![]
        },
        watermark: full.then(|| at("2025-03-14T09:32:58Z")),
        payload: full.then(|| "XEM_DON_HANG_1024".into()),
        occurred_at: at("2025-03-14T09:32:59Z"),
    };
    let id = EventId::from_provider(&tenant, &channel, "signal", "msg-9a8b7c");
    wire(&CloudEvent::new(
        id,
        EventType::ChannelSignal,
        tenant,
        &channel,
        conversation,
        now,
        data,
    ))
}

fn outbound_message(full: bool) -> Value {
    let tenant = acme();
    let channel = ChannelRef::new(ChannelKind::Messenger, "104857600123456");
    let recipient = "6543210987654321";
    let conversation = ConversationId::derive(&tenant, &channel, recipient, None);
    let data = OutboundMessage {
        tenant: tenant.clone(),
        conversation_id: conversation,
        channel: channel.clone(),
        recipient: recipient.into(),
        agent_id: full.then(|| "agent-17".into()),
        text: "Chào chị, đơn hàng #1024 đang được giao, dự kiến đến trong hôm nay ạ.".into(),
        subject: full.then(|| "Re: Hỗ trợ đơn hàng #1024".into()),
        attachments: if full { full_attachments() } else { vec![] },
        reply_to: full.then(|| "m_AbCdEf".into()),
        csat_survey: full,
        template: full.then(|| Template {
            name: "231187".into(),
            language: Some("vi".into()),
            params: [("order_code", "1024"), ("customer_name", "Nguyễn Thị Lan")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            phone: Some("+84912345678".into()),
        }),
    };
    wire(&CloudEvent::new(
        EventId::new_random(),
        EventType::MessageSend,
        tenant,
        &channel,
        conversation,
        Utc::now(),
        data,
    ))
}

fn delivery_update(full: bool) -> Value {
    let tenant = acme();
    let channel = ChannelRef::new(ChannelKind::Sms, "+842873001234");
    let conversation = ConversationId::derive(&tenant, &channel, "+84901234567", None);
    let outbound = EventId::new_random();
    let data = DeliveryUpdate {
        tenant: tenant.clone(),
        conversation_id: conversation,
        outbound_event_id: outbound,
        channel: channel.clone(),
        status: if full {
            DeliveryStatus::Failed
        } else {
            DeliveryStatus::Sent
        },
        provider_message_id: full.then(|| "SM0123456789abcdef".into()),
        reason: full.then(|| "user_unavailable".into()),
        detail: full.then(|| "Thuê bao tạm thời không liên lạc được".into()),
        segments: full.then_some(3),
        occurred_at: at("2025-03-14T09:39:59.8Z"),
    };
    let id = EventId::from_provider(&tenant, &channel, "delivery", &outbound.to_string());
    wire(&CloudEvent::new(
        id,
        EventType::DeliveryUpdated,
        tenant,
        &channel,
        conversation,
        at("2025-03-14T09:40:00Z"),
        data,
    ))
}

/// A serialized event of `event_type`: minimal (every optional field absent) or fully populated.
/// The match has no wildcard, so a new event type does not compile until it has fixtures here.
fn event(event_type: EventType, full: bool) -> Value {
    match event_type {
        EventType::MessageReceived | EventType::MessageEchoed => message_received(event_type, full),
        EventType::ChannelSignal => channel_signal(full),
        EventType::MessageSend => outbound_message(full),
        EventType::DeliveryUpdated => delivery_update(full),
        EventType::Command
        | EventType::RouterTick
        | EventType::RoutingQueued
        | EventType::RoutingAfterHours
        | EventType::RoutingOffered
        | EventType::RoutingOfferDeclined
        | EventType::RoutingAssigned
        | EventType::RoutingRequeued
        | EventType::RoutingEscalated
        | EventType::RoutingSlaBreached
        | EventType::RoutingResolved
        | EventType::RoutingExpired
        | EventType::RoutingReopened
        | EventType::RoutingRejected
        | EventType::RoutingAbandoned
        | EventType::RoutingSlaAtRisk
        | EventType::RoutingAgentAway
        | EventType::RoutingAgentDay
        | EventType::RoutingCsatSurvey
        | EventType::RoutingCsatAnswered => {
            unreachable!("the router's types are not channel events: pinned in envelope.rs")
        }
    }
}

/// Whether the Rust types accept `value` as an event of `event_type`.
fn serde_accepts(event_type: EventType, value: &Value) -> bool {
    fn parses<T: DeserializeOwned>(value: &Value) -> bool {
        serde_json::from_value::<CloudEvent<T>>(value.clone()).is_ok()
    }
    match event_type {
        EventType::MessageReceived | EventType::MessageEchoed => parses::<MessageReceived>(value),
        EventType::ChannelSignal => parses::<ChannelSignal>(value),
        EventType::MessageSend => parses::<OutboundMessage>(value),
        EventType::DeliveryUpdated => parses::<DeliveryUpdate>(value),
        // `event` above lists every type: the router's never get here.
        _ => unreachable!("the router's types are not channel events: pinned in envelope.rs"),
    }
}

// ---------------------------------------------------------------------------------------------
// Walking a value alongside its schema
// ---------------------------------------------------------------------------------------------

/// One JSON object of an event, with what its schema says about it.
#[derive(Debug)]
struct Seen {
    /// JSON pointer of the object in the event, array indices written as `*`.
    path: String,
    /// Keys the object has.
    keys: BTreeSet<String>,
    /// `properties` of its schema, or `None` when the schema does not describe its keys.
    declared: Option<BTreeSet<String>>,
    /// `required` of its schema.
    required: BTreeSet<String>,
}

/// Follows a local `$ref` (`#/$defs/...`); the contract's data schemas use no other kind.
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("unexpected non-local $ref {r:?}"));
            let target = root
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r:?}"));
            resolve(root, target)
        }
        None => schema,
    }
}

fn key_set(v: Option<&Value>) -> BTreeSet<String> {
    match v {
        Some(Value::Object(map)) => map.keys().cloned().collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn walk(root: &Value, schema: &Value, value: &Value, path: &str, out: &mut Vec<Seen>) {
    let schema = resolve(root, schema);
    match value {
        // A map (`additionalProperties` is a schema, e.g. a template's `params`): any keys,
        // each value checked against that schema.
        Value::Object(map)
            if schema
                .get("additionalProperties")
                .is_some_and(Value::is_object) =>
        {
            let values = &schema["additionalProperties"];
            out.push(Seen {
                path: path.to_owned(),
                keys: map.keys().cloned().collect(),
                declared: Some(map.keys().cloned().collect()),
                required: BTreeSet::new(),
            });
            for (k, v) in map {
                walk(root, values, v, &format!("{path}/{k}"), out);
            }
        }
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            out.push(Seen {
                path: path.to_owned(),
                keys: map.keys().cloned().collect(),
                declared: props.map(|p| p.keys().cloned().collect()),
                required: key_set(schema.get("required")),
            });
            if let Some(props) = props {
                for (k, v) in map {
                    if let Some(sub) = props.get(k) {
                        walk(root, sub, v, &format!("{path}/{k}"), out);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for v in items {
                    walk(root, sub, v, &format!("{path}/*"), out);
                }
            }
        }
        _ => {}
    }
}

/// Walks a whole event: the envelope against cloudevent.schema.json (whose `data` is opaque),
/// then `data` against the schema its type names.
fn walk_event(event_type: EventType, event: &Value) -> Vec<Seen> {
    let envelope = load("cloudevent.schema.json");
    let data_schema = load(event_type.schema_file().unwrap());
    let mut seen = Vec::new();
    walk(&envelope, &envelope, event, "", &mut seen);
    let opaque: Vec<&str> = seen
        .iter()
        .filter(|s| s.declared.is_none())
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(
        opaque,
        ["/data"],
        "only the envelope's data may be undescribed"
    );
    seen.retain(|s| s.declared.is_some());
    walk(
        &data_schema,
        &data_schema,
        &event["data"],
        "/data",
        &mut seen,
    );
    if let Some(s) = seen.iter().find(|s| s.declared.is_none()) {
        panic!(
            "{}: object at {} has a schema without properties",
            event_type.schema_file().unwrap(),
            s.path
        );
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// Events against the schemas
// ---------------------------------------------------------------------------------------------

#[test]
fn every_event_type_validates_against_its_schemas() {
    let envelope = compile("cloudevent.schema.json");
    for event_type in EventType::ALL {
        let data = compile(event_type.schema_file().unwrap());
        for full in [false, true] {
            let what = format!("{event_type} ({})", if full { "full" } else { "minimal" });
            let event = event(event_type, full);
            assert_eq!(event["type"], event_type.as_str());
            assert_valid(&envelope, &event, &format!("{what} envelope"));
            assert_valid(&data, &event["data"], &format!("{what} data"));
        }
    }
}

#[test]
fn schemas_declare_exactly_what_full_events_serialize() {
    for event_type in EventType::ALL {
        let event = event(event_type, true);
        let seen = walk_event(event_type, &event);
        // Union of the keys seen per place in the event (array items share one schema).
        let mut union: BTreeMap<&str, (BTreeSet<String>, &BTreeSet<String>)> = BTreeMap::new();
        for s in &seen {
            let declared = s.declared.as_ref().unwrap();
            let undeclared: Vec<_> = s.keys.difference(declared).collect();
            assert!(
                undeclared.is_empty(),
                "{event_type}: {} serializes {undeclared:?}, which the schema does not declare",
                s.path
            );
            union
                .entry(s.path.as_str())
                .or_insert_with(|| (BTreeSet::new(), declared))
                .0
                .extend(s.keys.iter().cloned());
        }
        for (path, (keys, declared)) in union {
            let missing: Vec<_> = declared.difference(&keys).collect();
            assert!(
                missing.is_empty(),
                "{event_type}: the schema declares {missing:?} at {path}, \
                 which a fully populated event does not serialize"
            );
        }
    }
}

#[test]
fn required_is_exactly_what_minimal_events_serialize() {
    for event_type in EventType::ALL {
        for full in [false, true] {
            for s in walk_event(event_type, &event(event_type, full)) {
                if full {
                    let absent: Vec<_> = s.required.difference(&s.keys).collect();
                    assert!(
                        absent.is_empty(),
                        "{event_type}: {} requires {absent:?}",
                        s.path
                    );
                } else {
                    assert_eq!(
                        s.keys, s.required,
                        "{event_type}: at {} a minimal event serializes the left keys, \
                         the schema requires the right ones",
                        s.path
                    );
                }
            }
        }
    }
}

#[test]
fn schema_file_names_match_the_files() {
    // `EventType::schema_file` names exactly the data schemas in `schemas/`.
    let named: BTreeSet<&str> = EventType::ALL
        .iter()
        .map(|t| t.schema_file().unwrap())
        .collect();
    let on_disk: BTreeSet<&str> = SCHEMA_FILES[1..].iter().copied().collect();
    assert_eq!(named, on_disk);
}

// ---------------------------------------------------------------------------------------------
// Enums and identifiers
// ---------------------------------------------------------------------------------------------

fn wire_names<T: Serialize>(values: &[T]) -> BTreeSet<String> {
    values
        .iter()
        .map(|v| {
            serde_json::to_value(v)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn schema_enum(file: &str, pointer: &str) -> BTreeSet<String> {
    let schema = load(file);
    let node = schema
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{file} has nothing at {pointer}"));
    key_set(node.get("enum"))
}

// Exhaustive matches (no wildcard): a new variant stops compiling until it is added to the
// list right beside it, and so to the check against the schema.
fn all_directions() -> Vec<Direction> {
    let all = vec![Direction::Inbound, Direction::Outbound];
    for d in &all {
        match d {
            Direction::Inbound | Direction::Outbound => {}
        }
    }
    all
}

fn all_signal_kinds() -> Vec<SignalKind> {
    let all = vec![
        SignalKind::Delivered,
        SignalKind::Read,
        SignalKind::Follow,
        SignalKind::Unfollow,
        SignalKind::Action,
        SignalKind::TypingOn,
        SignalKind::TypingOff,
    ];
    for s in &all {
        match s {
            SignalKind::Delivered
            | SignalKind::Read
            | SignalKind::Follow
            | SignalKind::Unfollow
            | SignalKind::Action
            | SignalKind::TypingOn
            | SignalKind::TypingOff => {}
        }
    }
    all
}

fn all_delivery_statuses() -> Vec<DeliveryStatus> {
    let all = vec![
        DeliveryStatus::Sent,
        DeliveryStatus::Failed,
        DeliveryStatus::Delivered,
        DeliveryStatus::Read,
    ];
    for s in &all {
        match s {
            DeliveryStatus::Sent
            | DeliveryStatus::Failed
            | DeliveryStatus::Delivered
            | DeliveryStatus::Read => {}
        }
    }
    all
}

#[test]
fn schema_enums_list_exactly_the_rust_variants() {
    let kinds = wire_names(&ChannelKind::ALL);
    assert_eq!(
        kinds,
        ChannelKind::ALL
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect()
    );
    for file in &SCHEMA_FILES[1..] {
        assert_eq!(
            schema_enum(file, "/$defs/channel/properties/kind"),
            kinds,
            "{file}: channel kinds"
        );
    }
    assert_eq!(
        schema_enum(
            "message-received.schema.json",
            "/$defs/message/properties/direction"
        ),
        wire_names(&all_directions())
    );
    assert_eq!(
        schema_enum("channel-signal.schema.json", "/properties/signal"),
        wire_names(&all_signal_kinds())
    );
    assert_eq!(
        schema_enum("delivery-update.schema.json", "/properties/status"),
        wire_names(&all_delivery_statuses())
    );
    let types = wire_names(&EventType::ALL);
    assert_eq!(
        types,
        EventType::ALL
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect()
    );
    assert_eq!(
        schema_enum("cloudevent.schema.json", "/properties/type"),
        types
    );
}

#[test]
fn every_channel_kind_makes_a_valid_event() {
    let envelope = compile("cloudevent.schema.json");
    let data = compile("message-received.schema.json");
    for kind in ChannelKind::ALL {
        let mut event = event(EventType::MessageReceived, false);
        event["data"]["channel"]["kind"] = json!(kind.as_str());
        assert!(serde_accepts(EventType::MessageReceived, &event));
        assert_valid(&envelope, &event, kind.as_str());
        assert_valid(&data, &event["data"], kind.as_str());
    }
}

#[test]
fn tenant_pattern_matches_tenant_id_rules() {
    let envelope = compile("cloudevent.schema.json");
    let data = compile("message-received.schema.json");
    let candidates = [
        "a".to_owned(),
        "0".to_owned(),
        "acme".to_owned(),
        "shop-42_vn".to_owned(),
        "x".repeat(63),
        "x".repeat(64),
        "x".repeat(65),
        String::new(),
        "-x".to_owned(),
        "_x".to_owned(),
        "Acme".to_owned(),
        "a b".to_owned(),
        "a/b".to_owned(),
        "a.b".to_owned(),
        "việt".to_owned(),
    ];
    for candidate in candidates {
        let code_accepts = TenantId::new(candidate.clone()).is_ok();
        let mut event = event(EventType::MessageReceived, false);
        event["tenant"] = json!(candidate);
        event["data"]["tenant"] = json!(candidate);
        assert_eq!(
            envelope.is_valid(&event),
            code_accepts,
            "envelope schema and TenantId::new disagree on {candidate:?}"
        );
        assert_eq!(
            data.is_valid(&event["data"]),
            code_accepts,
            "data schema and TenantId::new disagree on {candidate:?}"
        );
        assert_eq!(
            serde_accepts(EventType::MessageReceived, &event),
            code_accepts
        );
    }
}

#[test]
fn ids_are_uuids_and_times_keep_their_precision() {
    let event = event(EventType::MessageReceived, true);
    for pointer in ["/id", "/subject", "/data/conversation_id"] {
        let s = event.pointer(pointer).unwrap().as_str().unwrap();
        assert_eq!(s.len(), 36, "{pointer} = {s}");
    }
    assert_eq!(event["subject"], event["data"]["conversation_id"]);
    assert_eq!(event["tenant"], event["data"]["tenant"]);
    assert_eq!(event["time"], "2025-03-14T02:26:53.589793238Z");
    assert_eq!(event["data"]["message"]["sent_at"], "2025-03-14T02:26:52Z");
    assert_eq!(
        event["source"],
        "/omnirouter/acme-vn/email/support@shop.example.vn"
    );
}

// ---------------------------------------------------------------------------------------------
// Broken events are rejected, so the checks above can fail
// ---------------------------------------------------------------------------------------------

/// Applies `mutate` to a fully populated event and asserts both the schemas and serde refuse it.
fn assert_rejected(event_type: EventType, what: &str, mutate: impl FnOnce(&mut Value)) {
    let envelope = compile("cloudevent.schema.json");
    let data = compile(event_type.schema_file().unwrap());
    let mut event = event(event_type, true);
    mutate(&mut event);
    let schema_accepts = envelope.is_valid(&event)
        && event
            .get("data")
            .is_some_and(|d| d.is_object() && data.is_valid(d));
    assert!(!schema_accepts, "{event_type}: schemas accept {what}");
    assert!(
        !serde_accepts(event_type, &event),
        "{event_type}: serde accepts {what}"
    );
}

/// Every JSON pointer to an object inside `value`.
fn object_pointers(value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            out.push(path.to_owned());
            for (k, v) in map {
                object_pointers(v, &format!("{path}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                object_pointers(v, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Whether both the schemas and serde take `event` (of `event_type`).
fn accepted(event_type: EventType, event: &Value) -> bool {
    let envelope = compile("cloudevent.schema.json");
    let data = compile(event_type.schema_file().unwrap());
    envelope.is_valid(event)
        && event
            .get("data")
            .is_some_and(|d| d.is_object() && data.is_valid(d))
        && serde_accepts(event_type, event)
}

/// The tolerant reader of the contract: a newer producer's optional fields, anywhere, and
/// extension attributes on the envelope (a CRM's `traceparent`) are taken, by the schemas a
/// consumer validates with and by omnirouter's own reader.
#[test]
fn unknown_fields_and_extension_attributes_are_accepted_everywhere() {
    for event_type in EventType::ALL {
        let mut pointers = Vec::new();
        object_pointers(&event(event_type, true), "", &mut pointers);
        assert!(pointers.len() >= 3, "{pointers:?}");
        for pointer in pointers {
            let mut e = event(event_type, true);
            e.pointer_mut(&pointer)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert("x_priority".into(), json!("high"));
            assert!(
                accepted(event_type, &e),
                "{event_type}: an extra field at {pointer:?} is refused"
            );
        }
        let mut e = event(event_type, true);
        e["traceparent"] = json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        e["tracestate"] = json!("crm=1");
        assert!(
            accepted(event_type, &e),
            "{event_type}: extension attributes are refused"
        );
    }
}

#[test]
fn missing_required_fields_are_rejected() {
    for event_type in EventType::ALL {
        let event = event(event_type, true);
        let mut required = BTreeSet::new();
        for s in walk_event(event_type, &event) {
            let parent = s.path.replace("/*", "/0");
            for key in s.required {
                required.insert((parent.clone(), key));
            }
        }
        // The envelope's nine attributes and at least tenant, conversation_id and channel.
        assert!(required.len() >= 9 + 3, "{event_type}: {required:?}");
        for (parent, key) in required {
            assert_rejected(event_type, &format!("no {parent}/{key}"), |e| {
                e.pointer_mut(&parent)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove(&key)
                    .unwrap();
            });
        }
    }
}

#[test]
fn wrong_values_are_rejected() {
    type Case = (EventType, &'static str, Value);
    let cases: Vec<Case> = vec![
        // enums
        (
            EventType::MessageReceived,
            "/data/channel/kind",
            json!("telegram"),
        ),
        (
            EventType::MessageReceived,
            "/data/channel/kind",
            json!("Zalo"),
        ),
        (
            EventType::MessageEchoed,
            "/data/message/direction",
            json!("sideways"),
        ),
        (EventType::ChannelSignal, "/data/signal", json!("typing")),
        (EventType::DeliveryUpdated, "/data/status", json!("bounced")),
        (
            EventType::MessageSend,
            "/type",
            json!("omni.message.deleted"),
        ),
        (EventType::MessageSend, "/specversion", json!("0.3")),
        // formats and patterns
        (EventType::MessageReceived, "/id", json!("not-a-uuid")),
        (EventType::MessageReceived, "/subject", json!("1234")),
        (
            EventType::ChannelSignal,
            "/data/conversation_id",
            json!("c-1"),
        ),
        (
            EventType::DeliveryUpdated,
            "/data/outbound_event_id",
            json!(""),
        ),
        (EventType::MessageReceived, "/time", json!("yesterday")),
        (
            EventType::MessageReceived,
            "/data/received_at",
            json!("2025-13-45T25:61:00Z"),
        ),
        (
            EventType::MessageReceived,
            "/data/message/sent_at",
            json!("2025-03-14"),
        ),
        (
            EventType::ChannelSignal,
            "/data/watermark",
            json!(1_741_944_778),
        ),
        (
            EventType::ChannelSignal,
            "/data/occurred_at",
            json!("14/03/2025 09:32"),
        ),
        (EventType::MessageSend, "/tenant", json!("Acme VN")),
        (EventType::MessageSend, "/data/tenant", json!("-acme")),
        // types and ranges
        (
            EventType::MessageReceived,
            "/data/message/attachments/0/size",
            json!(-1),
        ),
        (
            EventType::MessageReceived,
            "/data/message/attachments/0/size",
            json!("48 kB"),
        ),
        (
            EventType::MessageReceived,
            "/data/contact/tags",
            json!("vip"),
        ),
        (EventType::MessageReceived, "/data/contact/tags/0", json!(1)),
        (EventType::MessageSend, "/data/text", json!(null)),
        (EventType::MessageSend, "/data/attachments", json!({})),
        (EventType::DeliveryUpdated, "/data/segments", json!(-2)),
        (
            EventType::DeliveryUpdated,
            "/data/segments",
            json!(4_294_967_296_u64),
        ),
        (EventType::DeliveryUpdated, "/data/segments", json!(1.5)),
        (EventType::DeliveryUpdated, "/data", json!("not an object")),
    ];
    for (event_type, pointer, bad) in cases {
        assert_rejected(event_type, &format!("{pointer} = {bad}"), |e| {
            *e.pointer_mut(pointer)
                .unwrap_or_else(|| panic!("fixture has no {pointer}")) = bad.clone();
        });
    }
}

#[test]
fn envelope_constants_are_enforced() {
    // The Rust type does not check `datacontenttype` on the way in; the contract does.
    let envelope = compile("cloudevent.schema.json");
    let good = event(EventType::MessageSend, false);
    assert!(envelope.is_valid(&good));
    let mut bad = good.clone();
    bad["datacontenttype"] = json!("text/plain");
    assert!(!envelope.is_valid(&bad));
    let mut bad = good;
    bad["source"] = json!("");
    assert!(!envelope.is_valid(&bad));
}

// ---------------------------------------------------------------------------------------------
// The documents themselves
// ---------------------------------------------------------------------------------------------

/// Calls `f` with every schema object in `schema` that is the value of a `properties` entry or a
/// `$defs` entry, with its name.
fn for_each_named_schema(schema: &Value, f: &mut impl FnMut(&str, &Value)) {
    match schema {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "properties" || k == "$defs" {
                    for (name, sub) in v.as_object().unwrap() {
                        f(name, sub);
                        for_each_named_schema(sub, f);
                    }
                } else {
                    for_each_named_schema(v, f);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| for_each_named_schema(v, f)),
        _ => {}
    }
}

/// What is wrong with an object schema: extra properties refused, or required ones undeclared.
fn strictness_problems(name: &str, s: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if s.get("type") == Some(&json!("object")) && s.get("properties").is_some() {
        // The tolerant reader: a record takes fields a newer producer adds.
        if s.get("additionalProperties") == Some(&json!(false)) {
            problems.push(format!("{name}: additionalProperties is false"));
        }
        if !key_set(s.get("required")).is_subset(&key_set(s.get("properties"))) {
            problems.push(format!("{name}: requires undeclared properties"));
        }
    }
    problems
}

#[test]
fn schema_files_are_tolerant_and_documented() {
    for file in SCHEMA_FILES {
        let schema = load(file);
        compile(file);
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{file}"
        );
        for key in ["title", "description"] {
            assert!(schema[key].is_string(), "{file} has no {key}");
        }
        let mut problems = strictness_problems("(root)", &schema);
        for_each_named_schema(&schema, &mut |name, s| {
            problems.extend(strictness_problems(name, s));
            let documented = s.get("description").and_then(Value::as_str).is_some()
                || resolve(&schema, s)
                    .get("description")
                    .and_then(Value::as_str)
                    .is_some();
            if !documented {
                problems.push(format!("{name}: no description"));
            }
        });
        assert!(problems.is_empty(), "{file}: {problems:#?}");
    }
}

/// Resolves the AsyncAPI document's relative `$ref`s (`./x.schema.json`) to files in
/// `schemas/`, offline; anything else is refused.
struct SchemaDir;

impl Retrieve for SchemaDir {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let uri = uri.as_str();
        let name = uri
            .strip_prefix(ASYNCAPI_BASE_DIR)
            .filter(|n| n.ends_with(".schema.json") && !n.contains('/'))
            .ok_or_else(|| format!("refusing to retrieve {uri}"))?;
        let text = fs::read_to_string(schemas_dir().join(name))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// A made-up base URI for the AsyncAPI document; [`SchemaDir`] maps it to `schemas/`.
const ASYNCAPI_BASE_DIR: &str = "file:///omnirouter/schemas/";

/// Every `"$ref"` string in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn asyncapi_lists_every_topic_and_event_type() {
    let doc = load("asyncapi.json");
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "omnirouter");
    assert!(
        doc["servers"]
            .as_object()
            .unwrap()
            .values()
            .any(|s| { s["host"] == "127.0.0.1:9092" && s["protocol"] == "kafka" }),
        "no local kafka server"
    );

    // Channels: exactly the default topics, compaction as Topics::all says.
    let channels = doc["channels"].as_object().unwrap();
    let mut addresses = BTreeSet::new();
    for (name, channel) in channels {
        let address = channel["address"].as_str().unwrap();
        assert!(addresses.insert(address), "{address} listed twice");
        let (_, compacted) = Topics::default()
            .all()
            .into_iter()
            .find(|(topic, _)| *topic == address)
            .unwrap_or_else(|| panic!("channel {name}: {address} is not a default topic"));
        let policy = &channel["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"];
        assert_eq!(
            policy.as_array().unwrap().contains(&json!("compact")),
            compacted,
            "channel {name}: cleanup.policy {policy}"
        );
    }
    for (topic, _) in Topics::default().all() {
        assert!(addresses.contains(topic), "topic {topic} is not a channel");
    }

    // Messages: one per event type, with the envelope and the data schema the code names.
    let text = fs::read_to_string(schemas_dir().join("asyncapi.json")).unwrap();
    let mut types = BTreeSet::new();
    for (name, message) in doc["components"]["messages"].as_object().unwrap() {
        let t = message["payload"]["properties"]["type"]["const"]
            .as_str()
            .unwrap_or_else(|| panic!("message {name} does not fix its type"));
        let event_type: EventType = serde_json::from_value(json!(t)).unwrap();
        assert!(types.insert(t), "{t} has two messages");
        assert_eq!(message["name"], t);
        assert_eq!(message["contentType"], "application/json");
        assert_eq!(
            message["payload"]["allOf"],
            json!([{ "$ref": "./cloudevent.schema.json" }])
        );
        assert_eq!(
            message["payload"]["properties"]["data"]["$ref"],
            format!("./{}", event_type.schema_file().unwrap()),
            "message {name}"
        );
        // Reachable from a channel.
        let pointer = format!("#/components/messages/{name}");
        assert!(
            channels.values().any(|c| c["messages"]
                .as_object()
                .unwrap()
                .values()
                .any(|m| m["$ref"] == pointer)),
            "message {name} is on no channel"
        );
    }
    for event_type in EventType::ALL {
        assert!(
            types.contains(event_type.as_str()),
            "{event_type} has no message"
        );
        assert!(text.contains(&format!("\"{}\"", event_type.as_str())));
    }

    // The key binding says what the envelope says about tenants.
    let key = &doc["components"]["messageBindings"]["tenantKey"]["kafka"]["key"];
    assert_eq!(key["type"], "string");
    assert_eq!(
        key["pattern"],
        load("cloudevent.schema.json")["properties"]["tenant"]["pattern"]
    );
}

#[test]
fn asyncapi_refs_resolve() {
    let doc = load("asyncapi.json");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    let mut files = BTreeSet::new();
    for r in &all {
        if let Some(pointer) = r.strip_prefix('#') {
            assert!(doc.pointer(pointer).is_some(), "dangling {r}");
        } else if let Some(file) = r.strip_prefix("./") {
            assert!(file.ends_with(".schema.json"), "unexpected {r}");
            let path = schemas_dir().join(file);
            assert!(path.is_file(), "{r}: {} does not exist", path.display());
            let schema = load(file);
            options()
                .build(&schema)
                .unwrap_or_else(|e| panic!("{r} does not compile: {e}"));
            files.insert(file.to_owned());
        } else {
            panic!("unexpected $ref {r}");
        }
    }
    let expected: BTreeSet<String> = SCHEMA_FILES.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        files, expected,
        "asyncapi.json does not reference every schema"
    );
}

#[test]
fn asyncapi_payloads_accept_real_events_and_their_examples() {
    let doc = load("asyncapi.json");
    let messages = doc["components"]["messages"].as_object().unwrap();
    for (name, message) in messages {
        let payload = options()
            .with_base_uri(format!("{ASYNCAPI_BASE_DIR}asyncapi.json"))
            .with_retriever(SchemaDir)
            .build(&message["payload"])
            .unwrap_or_else(|e| panic!("payload of {name} does not compile: {e}"));
        let own: EventType =
            serde_json::from_value(message["payload"]["properties"]["type"]["const"].clone())
                .unwrap();
        let examples = message["examples"].as_array().unwrap();
        assert!(!examples.is_empty(), "message {name} has no example");
        for example in examples {
            let what = format!("example {} of {name}", example["name"]);
            assert_valid(&payload, &example["payload"], &what);
            assert!(
                serde_accepts(own, &example["payload"]),
                "serde rejects {what}"
            );
        }
        for event_type in EventType::ALL {
            for full in [false, true] {
                let event = event(event_type, full);
                // A payload takes its own type only (received and echoed share a data schema).
                assert_eq!(
                    payload.is_valid(&event),
                    event_type == own,
                    "payload of {name} and a {event_type} event"
                );
            }
        }
        let mut newer = event(own, true);
        newer["data"]["x_priority"] = json!("high");
        newer["traceparent"] = json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_valid(
            &payload,
            &newer,
            &format!("{name} with a newer producer's fields"),
        );
        let mut broken = event(own, true);
        broken["data"].as_object_mut().unwrap().remove("tenant");
        assert!(
            !payload.is_valid(&broken),
            "payload of {name}: data without its tenant"
        );
    }
}
