//! A recorded day: what the router read and decided, turned into what the simulation replays
//! through another routing configuration or roster.
//!
//! The input is the day's records, one JSON object per line, from `omni.inbound.v1`,
//! `omni.commands.v1` and `omni.routing.v1`: either the CloudEvent itself (what a consumer
//! prints) or kcat's `-J` envelope with the CloudEvent as its `payload`, so
//! `kcat -C -t omni.inbound.v1 -t omni.commands.v1 -t omni.routing.v1 -J -e > day.jsonl`
//! exports one. Records of other tenants are skipped; so are event types the simulation has
//! no use for. From them:
//!
//! - **customers:** a customer message in a conversation not open at the time is an arrival,
//!   with its channel, language, tags and text (the routing rules see what they saw);
//! - **handling time:** from its `assigned` routing event to its `resolved` one; a customer
//!   nobody was assigned to before the conversation was resolved or expired gave up then (their
//!   patience); a conversation still open at the end takes the mean handling time of the others;
//! - **agents:** their `upsert_agent`, `set_presence` and `remove_agent` commands, when they
//!   were given. Agents' accepts, declines and transfers are not replayed: the simulation's
//!   agents accept at once and keep what they are given.

use omni_core::ConversationId;
use omni_routing::{Command, Inbound, Input, RoutingEvent};
use serde::Deserialize;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::Path;

/// One customer of a recorded day.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedArrival {
    /// When their first message arrived (ms since the epoch).
    pub at: u64,
    /// That message, as the engine takes it.
    pub inbound: Inbound,
    /// How long their agent took, from assignment to resolution.
    pub handling_ms: u64,
    /// When nobody answered them: how long they waited before the conversation ended.
    pub patience_ms: Option<u64>,
}

/// A recorded day, ready to replay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    /// Customers in arrival order.
    pub arrivals: Vec<RecordedArrival>,
    /// Agents' profile and presence commands, in time order.
    pub agents: Vec<(u64, Command)>,
    /// The first and last record's times (ms since the epoch).
    pub first_ms: u64,
    /// See `first_ms`.
    pub last_ms: u64,
    /// Records skipped: other tenants, and types the simulation has no use for.
    pub skipped: usize,
}

/// Why a recorded day cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a record.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// No customer of the tenant in the file.
    #[error("no customer message of tenant {0} in the records")]
    Empty(String),
}

/// The CloudEvent fields every record is sorted and filtered by.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    event_type: String,
    time: chrono::DateTime<chrono::Utc>,
    tenant: String,
}

/// A routing event record's data.
#[derive(Deserialize)]
struct Routed {
    data: RoutingEvent,
}

/// One record, decoded.
enum Record {
    Input(Input),
    Routed(RoutingEvent),
}

/// Reads the records at `path` for `tenant`.
pub fn read(path: &Path, tenant: &str) -> Result<Recorded, RecordError> {
    let text = std::fs::read_to_string(path).map_err(|source| RecordError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, tenant)
}

/// Parses records (one JSON object per line) for `tenant`.
pub fn parse(text: &str, tenant: &str) -> Result<Recorded, RecordError> {
    let mut day = Recorded::default();
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_error = |reason: String| RecordError::Line {
            line: i + 1,
            reason,
        };
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| line_error(e.to_string()))?;
        let event = unwrap_kcat(value).map_err(line_error)?;
        let head: Head = serde_json::from_value(event.clone())
            .map_err(|e| line_error(format!("not a CloudEvent: {e}")))?;
        if head.tenant != tenant {
            day.skipped += 1;
            continue;
        }
        let at = u64::try_from(head.time.timestamp_millis()).unwrap_or(0);
        match decode(&head, &event, tenant).map_err(line_error)? {
            Some(record) => records.push((at, records.len(), record)),
            None => day.skipped += 1,
        }
    }
    // Topics are read one after the other: put the day back in time order.
    records.sort_by_key(|(at, n, _)| (*at, *n));
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(RecordError::Empty(tenant.to_owned()));
    };
    (day.first_ms, day.last_ms) = (first.0, last.0);
    Episodes::default().follow(&mut day, records);
    if day.arrivals.is_empty() {
        return Err(RecordError::Empty(tenant.to_owned()));
    }
    Ok(day)
}

/// kcat's `-J` output carries the record's value as a string in `payload`.
fn unwrap_kcat(value: serde_json::Value) -> Result<serde_json::Value, String> {
    match value.get("payload") {
        Some(serde_json::Value::String(payload)) => {
            serde_json::from_str(payload).map_err(|e| format!("payload: {e}"))
        }
        Some(payload) if value.get("specversion").is_none() => Ok(payload.clone()),
        _ => Ok(value),
    }
}

fn decode(head: &Head, event: &serde_json::Value, tenant: &str) -> Result<Option<Record>, String> {
    if head.event_type.starts_with("omni.routing.") {
        let routed: Routed = serde_json::from_value(event.clone()).map_err(|e| e.to_string())?;
        return Ok(Some(Record::Routed(routed.data)));
    }
    let payload = serde_json::to_vec(event).map_err(|e| e.to_string())?;
    match omni_router::wire::decode_input(tenant.as_bytes(), &payload) {
        Ok(Some((_, input @ Input::Inbound(_)))) => Ok(Some(Record::Input(input))),
        Ok(Some((_, Input::Command(c)))) => Ok(Some(Record::Input(Input::Command(c)))),
        Ok(_) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Each conversation's open episode while the records are followed in time order.
#[derive(Default)]
struct Episodes {
    /// Open conversation → (its arrival's index, when it was assigned).
    open: HashMap<ConversationId, (usize, Option<u64>)>,
}

impl Episodes {
    fn follow(mut self, day: &mut Recorded, records: Vec<(u64, usize, Record)>) {
        let mut handled = (0_u64, 0_u64);
        for (at, _, record) in records {
            match record {
                Record::Input(Input::Inbound(inbound)) => {
                    if let Entry::Vacant(open) = self.open.entry(inbound.conversation) {
                        open.insert((day.arrivals.len(), None));
                        day.arrivals.push(RecordedArrival {
                            at,
                            inbound,
                            handling_ms: 0,
                            patience_ms: None,
                        });
                    }
                }
                Record::Input(Input::Command(
                    c @ (Command::UpsertAgent(_)
                    | Command::SetPresence { .. }
                    | Command::RemoveAgent { .. }),
                )) => day.agents.push((at, c)),
                Record::Input(_) => {}
                Record::Routed(RoutingEvent::Assigned { conversation, .. }) => {
                    if let Some((_, assigned)) = self.open.get_mut(&conversation) {
                        assigned.get_or_insert(at);
                    }
                }
                Record::Routed(
                    RoutingEvent::Resolved { conversation, .. }
                    | RoutingEvent::Expired { conversation, .. },
                ) => {
                    if let Some((i, assigned)) = self.open.remove(&conversation) {
                        let arrival = &mut day.arrivals[i];
                        match assigned {
                            Some(from) => {
                                arrival.handling_ms = at - from;
                                handled = (handled.0 + at - from, handled.1 + 1);
                            }
                            None => arrival.patience_ms = Some(at - arrival.at),
                        }
                    }
                }
                Record::Routed(_) => {}
            }
        }
        // Arrivals whose end was never recorded take the mean handling time.
        let mean = handled.0.checked_div(handled.1).unwrap_or(0);
        for (i, _) in self.open.into_values() {
            day.arrivals[i].handling_ms = mean;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use omni_core::{
        ChannelKind, ChannelRef, CloudEvent, Contact, Direction, EventId, EventType, Message,
        MessageReceived, TenantId,
    };
    use omni_routing::{AgentProfile, Explanation, Presence};

    fn at(hhmmss: &str) -> DateTime<Utc> {
        format!("2026-12-03T{hhmmss}+07:00").parse().unwrap()
    }

    fn line<T: serde::Serialize>(
        event_type: EventType,
        tenant: &str,
        time: &str,
        data: T,
    ) -> String {
        let event: CloudEvent<T, Option<ConversationId>> = CloudEvent::with_source(
            EventId::new_random(),
            event_type,
            TenantId::new(tenant).unwrap(),
            "/test".into(),
            None,
            at(time),
            data,
        );
        serde_json::to_string(&event).unwrap()
    }

    pub(crate) fn conversation(contact: &str) -> ConversationId {
        ConversationId::derive(&TenantId::new("shop").unwrap(), &chat(), contact, None)
    }

    fn chat() -> ChannelRef {
        ChannelRef::new(ChannelKind::Livechat, "web")
    }

    fn message(tenant: &str, time: &str, contact: &str) -> String {
        let data = MessageReceived {
            tenant: TenantId::new(tenant).unwrap(),
            conversation_id: conversation(contact),
            channel: chat(),
            contact: Contact {
                id: contact.into(),
                language: Some("vi".into()),
                ..Contact::default()
            },
            message: Message {
                id: format!("m-{contact}-{time}"),
                direction: Direction::Inbound,
                text: "Chào shop".into(),
                subject: None,
                attachments: vec![],
                reply_to: None,
                payload: None,
                sent_at: None,
            },
            received_at: at(time),
            authentication: None,
            flags: Vec::new(),
        };
        line(EventType::MessageReceived, tenant, time, data)
    }

    fn command(time: &str, command: Command) -> String {
        line(EventType::Command, "shop", time, command)
    }

    fn routed(time: &str, event: RoutingEvent) -> String {
        let kind = omni_router::wire::routing_type(&event);
        line(kind, "shop", time, event)
    }

    fn assigned(contact: &str) -> RoutingEvent {
        RoutingEvent::Assigned {
            conversation: conversation(contact),
            agent: "an".into(),
            queue: omni_routing::QueueId("general".into()),
            explanation: Explanation {
                strategy: "least_loaded".into(),
                eligible: 1,
                reason: "only one".into(),
            },
        }
    }

    fn resolved(contact: &str, agent: Option<&str>) -> RoutingEvent {
        RoutingEvent::Resolved {
            conversation: conversation(contact),
            agent: agent.map(Into::into),
            queue: omni_routing::QueueId("general".into()),
        }
    }

    /// One agent, online at 08:00. Customer a at 08:01, answered at once and resolved after 5
    /// minutes; b at 08:02, gave up unanswered at 08:04; c at 08:03, never ended.
    pub(crate) fn recorded_day() -> String {
        let agent = AgentProfile {
            agent: "an".into(),
            skills: [("vi".into(), 3)].into(),
            capacity: 1,
            channel_capacity: Default::default(),
        };
        let kcat = serde_json::json!({
            "topic": "omni.inbound.v1", "partition": 0, "offset": 7, "key": "shop",
            "payload": message("shop", "08:03:00", "c"),
        });
        [
            // Topics one after the other, as an export has them: time order is restored.
            message("shop", "08:01:00", "a"),
            message("shop", "08:02:00", "b"),
            kcat.to_string(),
            message("other", "08:02:30", "z"),
            String::new(),
            command("08:00:00", Command::UpsertAgent(agent)),
            command(
                "08:00:00",
                Command::SetPresence {
                    agent: "an".into(),
                    presence: Presence::Online,
                },
            ),
            command(
                "08:01:00",
                Command::Accept {
                    agent: "an".into(),
                    conversation: conversation("a"),
                },
            ),
            routed("08:01:00", assigned("a")),
            routed("08:04:00", resolved("b", None)),
            routed("08:06:00", resolved("a", Some("an"))),
        ]
        .join("\n")
    }

    #[test]
    fn a_recorded_day_becomes_customers_handling_times_and_agents() {
        let day = parse(&recorded_day(), "shop").unwrap();
        let contacts: Vec<&str> = day
            .arrivals
            .iter()
            .map(|a| a.inbound.contact_id.as_str())
            .collect();
        assert_eq!(contacts, ["a", "b", "c"]);
        let a = &day.arrivals[0];
        assert_eq!(
            a.at,
            u64::try_from(at("08:01:00").timestamp_millis()).unwrap()
        );
        assert_eq!((a.handling_ms, a.patience_ms), (300_000, None));
        assert_eq!(a.inbound.language.as_deref(), Some("vi"));
        assert_eq!(
            day.arrivals[1].patience_ms,
            Some(120_000),
            "b gave up after 2 minutes"
        );
        assert_eq!(
            day.arrivals[2].handling_ms, 300_000,
            "c takes the mean handling time"
        );
        assert_eq!(day.agents.len(), 2, "the accept is not replayed");
        assert_eq!(day.skipped, 1, "the other tenant's record");
        assert_eq!(
            day.first_ms,
            u64::try_from(at("08:00:00").timestamp_millis()).unwrap()
        );
    }

    #[test]
    fn a_bad_line_is_named_and_an_empty_day_refused() {
        let text = format!("{}\n{{\"type\": 1}}\n", recorded_day());
        let err = parse(&text, "shop").unwrap_err().to_string();
        assert!(err.starts_with("line 12: not a CloudEvent"), "{err}");
        let err = parse(&recorded_day(), "nobody").unwrap_err().to_string();
        assert_eq!(err, "no customer message of tenant nobody in the records");
    }
}
