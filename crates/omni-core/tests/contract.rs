//! Keeps the checked-in event contract (`schemas/*.json`, `asyncapi.json`) honest.
//!
//! Real channel events are built through omni-core's public constructors, serialized as they go
//! on the wire, and checked against the JSON Schemas by the shared checks in `support/`: they
//! must validate, every property they serialize must be declared, every declared property must
//! be serialized by a fully populated event, and `required` must be exactly what a minimal event
//! serializes. So a schema that drifts from the code in either direction fails here. Broken
//! events must be rejected by the schemas (and, where the Rust types are as strict, by serde
//! too), so the checks can fail. The router's event types (commands, ticks, routing events) get
//! the same checks in `crates/omni-router/tests/contract.rs`, which owns their Rust types.
//!
//! The documents themselves are checked here for every type: each schema file is documented,
//! tolerant and has its own `$id`, which is the `dataschema` of the types it describes; the
//! AsyncAPI document lists every topic and every event type once, on its topic.

// clippy.toml allows unwrap in `#[test]` functions only; the helpers below are test code too.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::fs;

use omni_core::{
    ChannelKind, CloudEvent, DeliveryStatus, Direction, EventId, EventType, SignalKind, TenantId,
    Topics, SCHEMA_BASE_URI,
};
use serde_json::{json, Value};

use support::channel::{event, serde_accepts, Channel};
use support::{
    assert_valid, assert_wrong_value_rejected, check_events_validate,
    check_missing_required_fields_are_rejected,
    check_required_is_exactly_what_minimal_events_serialize,
    check_schemas_declare_exactly_what_full_events_serialize,
    check_unknown_fields_and_extension_attributes_are_accepted, compile, data_schema_files,
    key_set, load, load_asyncapi, resolve, schema_enum, schema_files, schemas_dir, wire_names,
    ENVELOPE,
};

// ---------------------------------------------------------------------------------------------
// Channel events against the schemas
// ---------------------------------------------------------------------------------------------

#[test]
fn every_channel_event_type_validates_against_its_schemas() {
    check_events_validate(&Channel, &EventType::CHANNEL);
}

#[test]
fn schemas_declare_exactly_what_full_channel_events_serialize() {
    check_schemas_declare_exactly_what_full_events_serialize(&Channel, &EventType::CHANNEL);
}

#[test]
fn required_is_exactly_what_minimal_channel_events_serialize() {
    check_required_is_exactly_what_minimal_events_serialize(&Channel, &EventType::CHANNEL);
}

/// The tolerant reader of the contract: a newer producer's optional fields, anywhere, and
/// extension attributes on the envelope (a CRM's `traceparent`) are taken, by the schemas a
/// consumer validates with and by omnirouter's own reader.
#[test]
fn unknown_fields_and_extension_attributes_are_accepted_everywhere() {
    check_unknown_fields_and_extension_attributes_are_accepted(&Channel, &EventType::CHANNEL);
}

#[test]
fn missing_required_fields_are_rejected() {
    let checked = check_missing_required_fields_are_rejected(&Channel, &EventType::CHANNEL);
    // Nine envelope attributes and at least tenant, conversation_id and channel, per type.
    assert!(checked >= EventType::CHANNEL.len() * (9 + 3), "{checked}");
}

// ---------------------------------------------------------------------------------------------
// Enums and identifiers
// ---------------------------------------------------------------------------------------------

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
    assert_eq!(schema_enum(ENVELOPE, "/properties/type"), types);
}

/// Every `enum` in `value`, with its JSON pointer.
fn enums(value: &Value, path: &str, out: &mut Vec<(String, BTreeSet<String>)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "enum" {
                    out.push((path.to_owned(), key_set(Some(v))));
                } else {
                    enums(v, &format!("{path}/{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                enums(v, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Channel kinds appear in many files (a channel, a per-kind capacity): wherever an enum lists
/// one, it lists them all.
#[test]
fn every_channel_kind_enum_lists_every_kind() {
    let kinds = wire_names(&ChannelKind::ALL);
    assert_eq!(
        kinds,
        ChannelKind::ALL
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect()
    );
    let mut found = 0;
    for file in data_schema_files() {
        let mut all = Vec::new();
        enums(&load(&file), "", &mut all);
        for (path, values) in all {
            if values.contains("sms") {
                assert_eq!(values, kinds, "{file}: channel kinds at {path}");
                found += 1;
            }
        }
    }
    // The four channel data schemas, routing-csat-survey and command (channel_capacity).
    assert!(found >= 6, "{found}");
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
        assert_wrong_value_rejected(&Channel, event_type, pointer, &bad);
    }
}

#[test]
fn envelope_constants_are_enforced() {
    // The Rust type does not check `datacontenttype` on the way in; the contract does.
    let envelope = compile("cloudevent.schema.json");
    let good = event(EventType::MessageSend, false);
    assert!(envelope.is_valid(&good));
    let mut bad = good.clone();
    bad["dataschema"] = json!("not a URI");
    assert!(!envelope.is_valid(&bad));
    // A channel event is always about a conversation.
    let mut bad = good.clone();
    bad.as_object_mut().unwrap().remove("subject");
    assert!(!envelope.is_valid(&bad));
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

/// Every object schema anywhere in `schema` (a union's branches too) that closes its record.
fn closed_records(schema: &Value, path: &str, out: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if map.get("additionalProperties") == Some(&json!(false)) {
                out.push(format!("{path}: additionalProperties is false"));
            }
            for (k, v) in map {
                closed_records(v, &format!("{path}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                closed_records(v, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn schema_files_are_tolerant_and_documented() {
    let files = schema_files();
    // The envelope, four channel data schemas, a command, a tick and 18 routing events.
    assert_eq!(files.len(), 25, "{files:?}");
    for file in &files {
        let file = file.as_str();
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
        closed_records(&schema, "", &mut problems);
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

/// Every schema file has its own absolute `$id` under [`SCHEMA_BASE_URI`], named after the
/// file; every event type's `dataschema` is the `$id` of the file `schema_file` names, and the
/// constructors put it on every event.
#[test]
fn every_schema_has_its_id_and_every_type_names_it_as_dataschema() {
    assert_eq!(SCHEMA_BASE_URI, "https://omnirouter.dev/schemas/v1/");
    let mut ids = BTreeSet::new();
    for file in schema_files() {
        let id = load(&file)["$id"]
            .as_str()
            .unwrap_or_else(|| panic!("{file} has no $id"))
            .to_owned();
        assert_eq!(id, format!("{SCHEMA_BASE_URI}{file}"));
        assert!(ids.insert(id), "{file}: $id not unique");
    }
    let tenant = TenantId::new("acme").unwrap();
    for event_type in EventType::ALL {
        let file = event_type.schema_file().unwrap();
        assert_eq!(
            load(file)["$id"],
            event_type.dataschema(),
            "{event_type}: dataschema is not the $id of {file}"
        );
        let built = CloudEvent::with_source(
            EventId::new_random(),
            event_type,
            tenant.clone(),
            "/omnirouter/acme/router".into(),
            None,
            chrono::Utc::now(),
            json!({}),
        );
        let built = serde_json::to_value(built).unwrap();
        assert_eq!(built["dataschema"], event_type.dataschema(), "{event_type}");
    }
    // Only received and echoed messages share a data schema.
    let distinct: BTreeSet<&str> = EventType::ALL.iter().map(|t| t.dataschema()).collect();
    assert_eq!(distinct.len(), EventType::ALL.len() - 1);
}

#[test]
fn schema_file_names_match_the_files() {
    // `EventType::schema_file` names exactly the data schemas in `schemas/`.
    let named: BTreeSet<String> = EventType::ALL
        .iter()
        .map(|t| t.schema_file().unwrap().to_owned())
        .collect();
    let on_disk: BTreeSet<String> = data_schema_files().into_iter().collect();
    assert_eq!(named, on_disk);
}

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

/// The topic events of `event_type` are written to (by default).
fn topic_of(event_type: EventType) -> &'static str {
    match event_type {
        EventType::MessageReceived | EventType::MessageEchoed | EventType::ChannelSignal => {
            "omni.inbound.v1"
        }
        EventType::MessageSend => "omni.outbound.v1",
        EventType::DeliveryUpdated => "omni.delivery.v1",
        EventType::Command | EventType::RouterTick => "omni.commands.v1",
        _ => {
            assert!(EventType::ROUTER.contains(&event_type));
            assert!(event_type.as_str().starts_with("omni.routing."));
            "omni.routing.v1"
        }
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
        // On the topic its events are written to.
        let pointer = format!("#/components/messages/{name}");
        let on: BTreeSet<&str> = channels
            .values()
            .filter(|c| {
                c["messages"]
                    .as_object()
                    .unwrap()
                    .values()
                    .any(|m| m["$ref"] == pointer)
            })
            .map(|c| c["address"].as_str().unwrap())
            .collect();
        assert!(
            on.contains(topic_of(event_type)),
            "message {name} is not on {} but on {on:?}",
            topic_of(event_type)
        );
    }
    assert_eq!(types.len(), EventType::ALL.len(), "{types:?}");
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
            compile(file);
            files.insert(file.to_owned());
        } else {
            panic!("unexpected $ref {r}");
        }
    }
    let expected: BTreeSet<String> = schema_files().into_iter().collect();
    assert_eq!(
        files, expected,
        "asyncapi.json does not reference every schema"
    );
}

/// The compatibility policy is part of the document CRMs read.
#[test]
fn asyncapi_states_the_compatibility_policy() {
    let doc = load_asyncapi();
    let description = doc["info"]["description"].as_str().unwrap();
    for phrase in [
        "Compatibility policy",
        "new optional fields, new event types and new enum values",
        "must ignore fields and event types they do not know",
        "`.v2` topics",
        "side by side",
        "deprecation period",
        "dataschema",
    ] {
        assert!(
            description.contains(phrase),
            "info.description does not say {phrase:?}"
        );
    }
}
