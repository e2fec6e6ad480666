//! The machinery of the contract tests, shared by omni-core's (`tests/contract.rs`: channel
//! events and the documents) and omni-router's (`crates/omni-router/tests/contract.rs`, which
//! includes this file by path: the router's event types are defined by crates that depend on
//! omni-core, so their fixtures cannot live here without a dependency cycle).
//!
//! Real events are built by the including crate through the public constructors and handed in
//! as a [`Fixtures`]; the checks here compare them with the JSON Schemas in both directions:
//! they must validate, every property they serialize must be declared, every declared property
//! must be serialized by a fully populated event, `required` must be exactly what a minimal
//! event serializes, unknown fields and extension attributes must be taken, and a missing
//! required field must be refused.

// Each including test crate uses part of this module; unwrap is test code's way to fail.
#![allow(dead_code, clippy::unwrap_used)]

pub mod channel;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use jsonschema::{Retrieve, Uri, Validator};
use omni_core::{EventType, SCHEMA_BASE_URI};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Loading and compiling the schemas
// ---------------------------------------------------------------------------------------------

/// `crates/omni-core/schemas`, from whichever crate includes this module.
pub fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../omni-core/schemas")
}

/// A file of `schemas/`, parsed.
pub fn load(name: &str) -> Value {
    let path = schemas_dir().join(name);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// The envelope schema's file name.
pub const ENVELOPE: &str = "cloudevent.schema.json";

/// Every JSON Schema file in `schemas/` (the envelope and the data schemas), sorted.
pub fn schema_files() -> Vec<String> {
    let mut files: Vec<String> = fs::read_dir(schemas_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".schema.json"))
        .collect();
    files.sort();
    files
}

/// Every data schema file (all but the envelope's).
pub fn data_schema_files() -> Vec<String> {
    schema_files()
        .into_iter()
        .filter(|f| f != ENVELOPE)
        .collect()
}

/// Format assertions on (uuid, date-time, date, uri) and unknown formats refused, so a typo in a
/// `format` cannot silently turn a check off. Building also validates the schema against its
/// meta-schema. Relative `$ref`s resolve against the `$id`s, offline ([`SchemaDir`]).
pub fn options() -> jsonschema::ValidationOptions<'static> {
    jsonschema::options()
        .should_validate_formats(true)
        .should_ignore_unknown_formats(false)
        .with_retriever(SchemaDir)
}

/// A schema file, compiled.
pub fn compile(name: &str) -> Validator {
    options()
        .build(&load(name))
        .unwrap_or_else(|e| panic!("{name} does not compile: {e}"))
}

/// A schema from the AsyncAPI document (a message payload), compiled with the document's base
/// URI, so its relative `$ref`s (`./cloudevent.schema.json`) name the files' `$id`s.
pub fn compile_in_asyncapi(schema: &Value, what: &str) -> Validator {
    options()
        .with_base_uri(format!("{SCHEMA_BASE_URI}asyncapi.json"))
        .build(schema)
        .unwrap_or_else(|e| panic!("{what} does not compile: {e}"))
}

/// The validation errors of `value`, one line each.
pub fn errors(validator: &Validator, value: &Value) -> Vec<String> {
    validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Fails with every error when `value` does not validate.
pub fn assert_valid(validator: &Validator, value: &Value, what: &str) {
    let errs = errors(validator, value);
    assert!(
        errs.is_empty(),
        "{what} rejected by its schema:\n  {}\nvalue: {value:#}",
        errs.join("\n  ")
    );
}

/// Resolves the contract's `$id`s (`https://omnirouter.dev/schemas/v1/<file>`, which relative
/// `$ref`s in the AsyncAPI document resolve to) to the files in `schemas/`, offline, and checks
/// the file says it is that `$id`; anything else is refused.
pub struct SchemaDir;

impl Retrieve for SchemaDir {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let uri = uri.as_str();
        let name = uri
            .strip_prefix(SCHEMA_BASE_URI)
            .filter(|n| n.ends_with(".schema.json") && !n.contains('/'))
            .ok_or_else(|| format!("refusing to retrieve {uri}"))?;
        let text = fs::read_to_string(schemas_dir().join(name))?;
        let schema: Value = serde_json::from_str(&text)?;
        if schema["$id"] != uri {
            return Err(format!("{name} has $id {}, not {uri}", schema["$id"]).into());
        }
        Ok(schema)
    }
}

// ---------------------------------------------------------------------------------------------
// Real events, from the including crate
// ---------------------------------------------------------------------------------------------

/// Real events of some event types, and the reader omnirouter uses for them.
pub trait Fixtures {
    /// Serialized events of `event_type`, built through the public constructors: minimal (every
    /// optional field and attribute absent) or fully populated. Several when `data` is a union
    /// (one per command, say), so every variant is checked.
    fn events(&self, event_type: EventType, full: bool) -> Vec<Value>;

    /// Whether omnirouter's own reader takes `value` as an event of `event_type`.
    fn reader_accepts(&self, event_type: EventType, value: &Value) -> bool;

    /// Whether the reader refuses an event without the required `key` of the object at
    /// `parent`. `nullable`: the schema allows null there (a Rust `Option` that is always
    /// written, which serde reads as `None` when absent).
    fn reader_requires(
        &self,
        event_type: EventType,
        parent: &str,
        key: &str,
        nullable: bool,
    ) -> bool {
        let _ = (event_type, parent, key);
        !nullable
    }
}

/// The one event of `event_type` a fixture builds (panics on unions).
pub fn one(f: &dyn Fixtures, event_type: EventType, full: bool) -> Value {
    let mut events = f.events(event_type, full);
    assert_eq!(events.len(), 1, "{event_type}: expected one fixture");
    events.pop().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Walking a value alongside its schema
// ---------------------------------------------------------------------------------------------

/// One JSON object of an event, with what its schema says about it.
#[derive(Debug)]
pub struct Seen {
    /// The schema file that describes the object.
    pub file: String,
    /// JSON pointer of the object in the event, array indices written as `*`.
    pub path: String,
    /// Keys the object has.
    pub keys: BTreeSet<String>,
    /// `properties` of its schema, or `None` when the schema does not describe its keys.
    pub declared: Option<BTreeSet<String>>,
    /// `required` of its schema.
    pub required: BTreeSet<String>,
    /// Declared properties whose schema allows `null`.
    pub nullable: BTreeSet<String>,
    /// A map (`additionalProperties` is a schema): any keys, not a record.
    pub map: bool,
}

/// Follows local `$ref`s (`#/$defs/...`); the contract's schemas use no other kind.
pub fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
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

/// The schema that describes `value`: `schema` with `$ref`s followed and, for a union
/// (`oneOf`), the one branch whose `required` keys `value` has and whose `const` properties it
/// matches (a command's `command`, a transfer target's `agent` or `queue`).
pub fn select<'a>(root: &'a Value, schema: &'a Value, value: &Value) -> &'a Value {
    let schema = resolve(root, schema);
    let Some(branches) = schema.get("oneOf").and_then(Value::as_array) else {
        return schema;
    };
    let matching: Vec<&Value> = branches
        .iter()
        .map(|b| select(root, b, value))
        .filter(|b| {
            let has_required = key_set(b.get("required"))
                .iter()
                .all(|k| value.get(k).is_some());
            let consts_match = b
                .get("properties")
                .and_then(Value::as_object)
                .is_none_or(|props| {
                    props
                        .iter()
                        .all(|(k, p)| match resolve(root, p).get("const") {
                            Some(c) => value.get(k) == Some(c),
                            None => true,
                        })
                });
            has_required && consts_match
        })
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "{value} matches {} branches of a oneOf",
        matching.len()
    );
    matching[0]
}

/// The keys of an object, or the strings of an array.
/// How each of `values` is written on the wire (a string per unit variant).
pub fn wire_names<T: serde::Serialize>(values: &[T]) -> BTreeSet<String> {
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

/// The `enum` of the schema node at `pointer` in `file`.
pub fn schema_enum(file: &str, pointer: &str) -> BTreeSet<String> {
    let schema = load(file);
    let node = schema
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{file} has nothing at {pointer}"));
    key_set(node.get("enum"))
}

pub fn key_set(v: Option<&Value>) -> BTreeSet<String> {
    match v {
        Some(Value::Object(map)) => map.keys().cloned().collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn allows_null(root: &Value, schema: &Value) -> bool {
    match resolve(root, schema).get("type") {
        Some(Value::String(t)) => t == "null",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "null"),
        _ => false,
    }
}

/// Records every object of `value` with its schema (from `schema`, inside the document `root`).
pub fn walk(
    file: &str,
    root: &Value,
    schema: &Value,
    value: &Value,
    path: &str,
    out: &mut Vec<Seen>,
) {
    let schema = select(root, schema, value);
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
                file: file.to_owned(),
                path: path.to_owned(),
                keys: map.keys().cloned().collect(),
                declared: Some(map.keys().cloned().collect()),
                required: BTreeSet::new(),
                nullable: BTreeSet::new(),
                map: true,
            });
            for (k, v) in map {
                walk(file, root, values, v, &format!("{path}/{k}"), out);
            }
        }
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            out.push(Seen {
                file: file.to_owned(),
                path: path.to_owned(),
                keys: map.keys().cloned().collect(),
                declared: props.map(|p| p.keys().cloned().collect()),
                required: key_set(schema.get("required")),
                nullable: props
                    .map(|p| {
                        p.iter()
                            .filter(|(_, s)| allows_null(root, s))
                            .map(|(k, _)| k.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
                map: false,
            });
            if let Some(props) = props {
                for (k, v) in map {
                    if let Some(sub) = props.get(k) {
                        walk(file, root, sub, v, &format!("{path}/{k}"), out);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for v in items {
                    walk(file, root, sub, v, &format!("{path}/*"), out);
                }
            }
        }
        _ => {}
    }
}

/// What the envelope requires of an event of `type_name`: its `required`, plus the `then`
/// of each `allOf` condition on `type` that the type meets (`subject` for events always about
/// a conversation).
pub fn envelope_required(envelope: &Value, type_name: &str) -> BTreeSet<String> {
    let mut required = key_set(envelope.get("required"));
    for condition in envelope["allOf"].as_array().into_iter().flatten() {
        let types = key_set(condition.pointer("/if/properties/type/enum"));
        assert!(
            !types.is_empty(),
            "an envelope condition not on type: {condition}"
        );
        if types.contains(type_name) {
            required.extend(key_set(condition.pointer("/then/required")));
        }
    }
    required
}

/// Walks a whole event: the envelope against cloudevent.schema.json (whose `data` is opaque),
/// then `data` against the schema its type names.
pub fn walk_event(event_type: EventType, event: &Value) -> Vec<Seen> {
    let envelope = load(ENVELOPE);
    let file = event_type.schema_file().unwrap();
    let data_schema = load(file);
    let mut seen = Vec::new();
    walk(ENVELOPE, &envelope, &envelope, event, "", &mut seen);
    seen[0].required = envelope_required(&envelope, event_type.as_str());
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
        file,
        &data_schema,
        &data_schema,
        &event["data"],
        "/data",
        &mut seen,
    );
    if let Some(s) = seen.iter().find(|s| s.declared.is_none()) {
        panic!(
            "{file}: object at {} has a schema without properties",
            s.path
        );
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// The checks, for any event types
// ---------------------------------------------------------------------------------------------

/// The envelope and data validators of `event_type`.
pub struct Validators {
    envelope: Validator,
    data: Validator,
}

impl Validators {
    /// Compiles the envelope schema and `event_type`'s data schema.
    pub fn of(event_type: EventType) -> Self {
        Self {
            envelope: compile(ENVELOPE),
            data: compile(event_type.schema_file().unwrap()),
        }
    }

    /// Whether the schemas take `event`.
    pub fn accept(&self, event: &Value) -> bool {
        self.envelope.is_valid(event)
            && event
                .get("data")
                .is_some_and(|d| d.is_object() && self.data.is_valid(d))
    }
}

/// Every event validates against the envelope and its data schema, names its type, and (when
/// fully populated) names its data schema's `$id` as `dataschema`.
pub fn check_events_validate(f: &dyn Fixtures, types: &[EventType]) {
    let envelope = compile(ENVELOPE);
    for &event_type in types {
        let data = compile(event_type.schema_file().unwrap());
        let id = &load(event_type.schema_file().unwrap())["$id"];
        for full in [false, true] {
            let what = format!("{event_type} ({})", if full { "full" } else { "minimal" });
            let events = f.events(event_type, full);
            assert!(!events.is_empty(), "{what}: no fixture");
            for event in events {
                assert_eq!(event["type"], event_type.as_str());
                assert_valid(&envelope, &event, &format!("{what} envelope"));
                assert_valid(&data, &event["data"], &format!("{what} data"));
                assert!(
                    f.reader_accepts(event_type, &event),
                    "{what}: reader refuses"
                );
                if full {
                    assert_eq!(&event["dataschema"], id, "{what}: dataschema");
                }
            }
        }
    }
}

/// Every property a full event serializes is declared, and every declared one is serialized
/// (by some full event of `types`: the envelope is shared, and a tick has no subject).
pub fn check_schemas_declare_exactly_what_full_events_serialize(
    f: &dyn Fixtures,
    types: &[EventType],
) {
    // Union of the keys seen per schema and place in the events (array items share one
    // schema; so do the variants of a union with the same properties).
    type Place = (String, String, BTreeSet<String>);
    let mut union: BTreeMap<Place, (BTreeSet<String>, BTreeSet<&str>)> = BTreeMap::new();
    for &event_type in types {
        for event in f.events(event_type, true) {
            for s in walk_event(event_type, &event) {
                let declared = s.declared.unwrap();
                let undeclared: Vec<_> = s.keys.difference(&declared).collect();
                assert!(
                    undeclared.is_empty(),
                    "{event_type}: {} serializes {undeclared:?}, which the schema does not declare",
                    s.path
                );
                let (keys, seen_in) = union.entry((s.file, s.path, declared)).or_default();
                keys.extend(s.keys);
                seen_in.insert(event_type.as_str());
            }
        }
    }
    for ((file, path, declared), (keys, seen_in)) in union {
        let missing: Vec<_> = declared.difference(&keys).collect();
        assert!(
            missing.is_empty(),
            "{file} declares {missing:?} at {path}, which no fully populated event of \
             {seen_in:?} serializes"
        );
    }
}

/// `required` is exactly what a minimal event serializes, and a full event has it all.
pub fn check_required_is_exactly_what_minimal_events_serialize(
    f: &dyn Fixtures,
    types: &[EventType],
) {
    for &event_type in types {
        for full in [false, true] {
            for event in f.events(event_type, full) {
                for s in walk_event(event_type, &event) {
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
}

/// Every JSON pointer to an object inside `value`.
pub fn object_pointers(value: &Value, path: &str, out: &mut Vec<String>) {
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

/// `pointer` with array indices written `*`, as [`Seen::path`] has them.
fn generic(pointer: &str) -> String {
    pointer
        .split('/')
        .map(|seg| {
            if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The tolerant reader of the contract: a newer producer's optional fields, in any record, and
/// extension attributes on the envelope (a CRM's `traceparent`) are taken, by the schemas a
/// consumer validates with and by omnirouter's own reader.
pub fn check_unknown_fields_and_extension_attributes_are_accepted(
    f: &dyn Fixtures,
    types: &[EventType],
) {
    for &event_type in types {
        let schemas = Validators::of(event_type);
        let accepted = |e: &Value| schemas.accept(e) && f.reader_accepts(event_type, e);
        for event in f.events(event_type, true) {
            let maps: BTreeSet<String> = walk_event(event_type, &event)
                .into_iter()
                .filter(|s| s.map)
                .map(|s| s.path)
                .collect();
            let mut pointers = Vec::new();
            object_pointers(&event, "", &mut pointers);
            assert!(pointers.len() >= 2, "{pointers:?}");
            // Maps (skills, template params) take any key by definition; records are checked.
            pointers.retain(|p| !maps.contains(&generic(p)));
            for pointer in pointers {
                let mut e = event.clone();
                e.pointer_mut(&pointer)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .insert("x_priority".into(), json!("high"));
                assert!(
                    accepted(&e),
                    "{event_type}: an extra field at {pointer:?} is refused: {e}"
                );
            }
            let mut e = event.clone();
            e["traceparent"] = json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
            e["tracestate"] = json!("crm=1");
            assert!(
                accepted(&e),
                "{event_type}: extension attributes are refused"
            );
        }
    }
}

/// A full event without any one of its required fields is refused by the schemas, and by the
/// reader where the Rust types are as strict. Returns how many were checked.
pub fn check_missing_required_fields_are_rejected(f: &dyn Fixtures, types: &[EventType]) -> usize {
    let mut checked = 0;
    for &event_type in types {
        let schemas = Validators::of(event_type);
        for event in f.events(event_type, true) {
            let mut cases = BTreeSet::new();
            for s in walk_event(event_type, &event) {
                let parent = s.path.replace("/*", "/0");
                for key in &s.required {
                    cases.insert((parent.clone(), key.clone(), s.nullable.contains(key)));
                }
            }
            // The envelope's eight attributes, at least.
            assert!(cases.len() >= 8, "{event_type}: {cases:?}");
            for (parent, key, nullable) in cases {
                let mut e = event.clone();
                e.pointer_mut(&parent)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove(&key)
                    .unwrap();
                assert!(
                    !schemas.accept(&e),
                    "{event_type}: schemas accept an event without {parent}/{key}"
                );
                if f.reader_requires(event_type, &parent, &key, nullable) {
                    assert!(
                        !f.reader_accepts(event_type, &e),
                        "{event_type}: the reader accepts an event without {parent}/{key}"
                    );
                }
                checked += 1;
            }
        }
    }
    checked
}

/// Sets the value at `pointer` in a full event of `event_type` (the first that has it) to `bad`
/// and asserts both the schemas and the reader refuse it.
pub fn assert_wrong_value_rejected(
    f: &dyn Fixtures,
    event_type: EventType,
    pointer: &str,
    bad: &Value,
) {
    let schemas = Validators::of(event_type);
    let mut event = f
        .events(event_type, true)
        .into_iter()
        .find(|e| e.pointer(pointer).is_some())
        .unwrap_or_else(|| panic!("{event_type}: no fixture has {pointer}"));
    *event.pointer_mut(pointer).unwrap() = bad.clone();
    let what = format!("{pointer} = {bad}");
    assert!(
        !schemas.accept(&event),
        "{event_type}: schemas accept {what}"
    );
    assert!(
        !f.reader_accepts(event_type, &event),
        "{event_type}: the reader accepts {what}"
    );
}

// ---------------------------------------------------------------------------------------------
// The AsyncAPI document
// ---------------------------------------------------------------------------------------------

/// Every message of the AsyncAPI document with its event type and compiled payload schema.
pub fn asyncapi_payloads() -> Vec<(String, EventType, Value, Validator)> {
    let doc = load_asyncapi();
    doc["components"]["messages"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, message)| {
            let payload = compile_in_asyncapi(&message["payload"], &format!("payload of {name}"));
            let own: EventType =
                serde_json::from_value(message["payload"]["properties"]["type"]["const"].clone())
                    .unwrap_or_else(|e| panic!("message {name} does not fix a known type: {e}"));
            (name.clone(), own, message.clone(), payload)
        })
        .collect()
}

/// `asyncapi.json`, parsed.
pub fn load_asyncapi() -> Value {
    load("asyncapi.json")
}

/// Each message's payload takes the real events of its own type (every variant, minimal and
/// full, and with a newer producer's fields), and no other type's; its examples validate and
/// omnirouter's reader takes them; and it refuses a full event without a required data field.
pub fn check_asyncapi_payloads(f: &dyn Fixtures, types: &[EventType]) {
    let payloads = asyncapi_payloads();
    for &event_type in types {
        assert_eq!(
            payloads
                .iter()
                .filter(|(_, t, _, _)| *t == event_type)
                .count(),
            1,
            "{event_type} has not exactly one message"
        );
    }
    for (name, own, message, payload) in &payloads {
        let examples = message["examples"].as_array().unwrap();
        assert!(!examples.is_empty(), "message {name} has no example");
        for example in examples {
            let what = format!("example {} of {name}", example["name"]);
            assert_valid(payload, &example["payload"], &what);
            assert!(
                f.reader_accepts(*own, &example["payload"]),
                "omnirouter's reader refuses {what}"
            );
        }
        for &event_type in types {
            for full in [false, true] {
                for event in f.events(event_type, full) {
                    // A payload takes its own type only (received and echoed share a data schema).
                    assert_eq!(
                        payload.is_valid(&event),
                        event_type == *own,
                        "payload of {name} and a {event_type} event: {:?}",
                        errors(payload, &event)
                    );
                }
            }
        }
        if !types.contains(own) {
            continue;
        }
        for mut newer in f.events(*own, true) {
            newer["data"]["x_priority"] = json!("high");
            newer["traceparent"] = json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
            assert_valid(
                payload,
                &newer,
                &format!("{name} with a newer producer's fields"),
            );
        }
        let full = f.events(*own, true).swap_remove(0);
        let data_schema = load(own.schema_file().unwrap());
        let required = key_set(select(&data_schema, &data_schema, &full["data"]).get("required"));
        for key in required {
            let mut broken = full.clone();
            broken["data"].as_object_mut().unwrap().remove(&key);
            assert!(
                !payload.is_valid(&broken),
                "payload of {name}: data without its {key}"
            );
        }
    }
}
