//! The CloudEvents 1.0 envelope (structured JSON mode) around every Kafka value.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

use crate::ids::{ConversationId, EventId, TenantId};
use crate::message::ChannelRef;

/// The event types omnirouter emits, namespaced `omni.*`. Consumers switch on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// A customer message (`data`: [`crate::MessageReceived`]).
    #[serde(rename = "omni.message.received")]
    MessageReceived,
    /// A message the business sent outside omnirouter, echoed by the channel
    /// (`data`: [`crate::MessageReceived`] with direction `outbound`).
    #[serde(rename = "omni.message.echoed")]
    MessageEchoed,
    /// Delivery/read watermarks, follows and the like (`data`: [`crate::ChannelSignal`]).
    #[serde(rename = "omni.channel.signal")]
    ChannelSignal,
    /// A reply to send (`data`: [`crate::OutboundMessage`]).
    #[serde(rename = "omni.message.send")]
    MessageSend,
    /// What became of a reply (`data`: [`crate::DeliveryUpdate`]).
    #[serde(rename = "omni.delivery.updated")]
    DeliveryUpdated,
    /// An agent's or supervisor's command to the router (`data`: a routing command).
    #[serde(rename = "omni.command")]
    Command,
    /// Tells the router time has passed, so due timers fire (`data`: `{}`).
    #[serde(rename = "omni.router.tick")]
    RouterTick,
    /// Routing event: a conversation waits in a queue.
    #[serde(rename = "omni.routing.queued")]
    RoutingQueued,
    /// Routing event: a conversation arrived outside business hours.
    #[serde(rename = "omni.routing.after_hours")]
    RoutingAfterHours,
    /// Routing event: a conversation is offered to an agent.
    #[serde(rename = "omni.routing.offered")]
    RoutingOffered,
    /// Routing event: an agent declined (or let time out) an offer.
    #[serde(rename = "omni.routing.offer_declined")]
    RoutingOfferDeclined,
    /// Routing event: a conversation is assigned to an agent.
    #[serde(rename = "omni.routing.assigned")]
    RoutingAssigned,
    /// Routing event: a conversation went back to its queue.
    #[serde(rename = "omni.routing.requeued")]
    RoutingRequeued,
    /// Routing event: a conversation was escalated.
    #[serde(rename = "omni.routing.escalated")]
    RoutingEscalated,
    /// Routing event: a conversation breached its SLA.
    #[serde(rename = "omni.routing.sla_breached")]
    RoutingSlaBreached,
    /// Routing event: a conversation was resolved.
    #[serde(rename = "omni.routing.resolved")]
    RoutingResolved,
    /// Routing event: a conversation expired.
    #[serde(rename = "omni.routing.expired")]
    RoutingExpired,
    /// Routing event: a resolved conversation was reopened.
    #[serde(rename = "omni.routing.reopened")]
    RoutingReopened,
    /// Routing event: a command or input was rejected.
    #[serde(rename = "omni.routing.rejected")]
    RoutingRejected,
    /// Routing event: the customer stopped waiting before an agent was assigned.
    #[serde(rename = "omni.routing.abandoned")]
    RoutingAbandoned,
    /// Routing event: a service-level target is close to being missed.
    #[serde(rename = "omni.routing.sla_at_risk")]
    RoutingSlaAtRisk,
    /// Routing event: an agent who let offers time out was set away.
    #[serde(rename = "omni.routing.agent_away")]
    RoutingAgentAway,
    /// Routing event: an agent's KPIs of the day that just ended.
    #[serde(rename = "omni.routing.agent_day")]
    RoutingAgentDay,
    /// Routing event: a CSAT survey goes to the customer of a resolved conversation.
    #[serde(rename = "omni.routing.csat_survey")]
    RoutingCsatSurvey,
    /// Routing event: the customer answered the CSAT survey.
    #[serde(rename = "omni.routing.csat_answered")]
    RoutingCsatAnswered,
}

impl EventType {
    /// Every event type, channel types first: each has a data schema in `schemas/`, a
    /// `dataschema` URI and a message in `asyncapi.json`, so docs and contract tests walk them all.
    pub const ALL: [EventType; 25] = [
        EventType::MessageReceived,
        EventType::MessageEchoed,
        EventType::ChannelSignal,
        EventType::MessageSend,
        EventType::DeliveryUpdated,
        EventType::Command,
        EventType::RouterTick,
        EventType::RoutingQueued,
        EventType::RoutingAfterHours,
        EventType::RoutingOffered,
        EventType::RoutingOfferDeclined,
        EventType::RoutingAssigned,
        EventType::RoutingRequeued,
        EventType::RoutingEscalated,
        EventType::RoutingSlaBreached,
        EventType::RoutingResolved,
        EventType::RoutingExpired,
        EventType::RoutingReopened,
        EventType::RoutingRejected,
        EventType::RoutingAbandoned,
        EventType::RoutingSlaAtRisk,
        EventType::RoutingAgentAway,
        EventType::RoutingAgentDay,
        EventType::RoutingCsatSurvey,
        EventType::RoutingCsatAnswered,
    ];

    /// The event types a channel writes (their `data` is defined here in omni-core, and their
    /// envelope always has a conversation as `subject`).
    pub const CHANNEL: [EventType; 5] = [
        EventType::MessageReceived,
        EventType::MessageEchoed,
        EventType::ChannelSignal,
        EventType::MessageSend,
        EventType::DeliveryUpdated,
    ];

    /// Every event type the router writes: commands, ticks and routing events (their `data` is
    /// defined by `omni-routing`; their subject may be absent).
    pub const ROUTER: [EventType; 20] = [
        EventType::Command,
        EventType::RouterTick,
        EventType::RoutingQueued,
        EventType::RoutingAfterHours,
        EventType::RoutingOffered,
        EventType::RoutingOfferDeclined,
        EventType::RoutingAssigned,
        EventType::RoutingRequeued,
        EventType::RoutingEscalated,
        EventType::RoutingSlaBreached,
        EventType::RoutingResolved,
        EventType::RoutingExpired,
        EventType::RoutingReopened,
        EventType::RoutingRejected,
        EventType::RoutingAbandoned,
        EventType::RoutingSlaAtRisk,
        EventType::RoutingAgentAway,
        EventType::RoutingAgentDay,
        EventType::RoutingCsatSurvey,
        EventType::RoutingCsatAnswered,
    ];

    /// The CloudEvents `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::MessageReceived => "omni.message.received",
            EventType::MessageEchoed => "omni.message.echoed",
            EventType::ChannelSignal => "omni.channel.signal",
            EventType::MessageSend => "omni.message.send",
            EventType::DeliveryUpdated => "omni.delivery.updated",
            EventType::Command => "omni.command",
            EventType::RouterTick => "omni.router.tick",
            EventType::RoutingQueued => "omni.routing.queued",
            EventType::RoutingAfterHours => "omni.routing.after_hours",
            EventType::RoutingOffered => "omni.routing.offered",
            EventType::RoutingOfferDeclined => "omni.routing.offer_declined",
            EventType::RoutingAssigned => "omni.routing.assigned",
            EventType::RoutingRequeued => "omni.routing.requeued",
            EventType::RoutingEscalated => "omni.routing.escalated",
            EventType::RoutingSlaBreached => "omni.routing.sla_breached",
            EventType::RoutingResolved => "omni.routing.resolved",
            EventType::RoutingExpired => "omni.routing.expired",
            EventType::RoutingReopened => "omni.routing.reopened",
            EventType::RoutingRejected => "omni.routing.rejected",
            EventType::RoutingAbandoned => "omni.routing.abandoned",
            EventType::RoutingSlaAtRisk => "omni.routing.sla_at_risk",
            EventType::RoutingAgentAway => "omni.routing.agent_away",
            EventType::RoutingAgentDay => "omni.routing.agent_day",
            EventType::RoutingCsatSurvey => "omni.routing.csat_survey",
            EventType::RoutingCsatAnswered => "omni.routing.csat_answered",
        }
    }

    /// The JSON Schema file (in `schemas/`) that describes this type's `data`. `Some` for every
    /// type (an `Option` so callers written when only channel types had one keep compiling).
    pub fn schema_file(self) -> Option<&'static str> {
        Some(self.schema().0)
    }

    /// The `$id` of this type's data schema, set as the CloudEvents `dataschema` of every
    /// event omnirouter builds: [`SCHEMA_BASE_URI`] followed by [`EventType::schema_file`].
    pub fn dataschema(self) -> &'static str {
        self.schema().1
    }

    /// (file name, `$id`) of this type's data schema.
    fn schema(self) -> (&'static str, &'static str) {
        // `concat!` takes literals only: the base is spelled here and pinned to
        // `SCHEMA_BASE_URI` by a test.
        macro_rules! schema {
            ($file:literal) => {
                ($file, concat!("https://omnirouter.dev/schemas/v1/", $file))
            };
        }
        match self {
            EventType::MessageReceived | EventType::MessageEchoed => {
                schema!("message-received.schema.json")
            }
            EventType::ChannelSignal => schema!("channel-signal.schema.json"),
            EventType::MessageSend => schema!("outbound-message.schema.json"),
            EventType::DeliveryUpdated => schema!("delivery-update.schema.json"),
            EventType::Command => schema!("command.schema.json"),
            EventType::RouterTick => schema!("router-tick.schema.json"),
            EventType::RoutingQueued => schema!("routing-queued.schema.json"),
            EventType::RoutingAfterHours => schema!("routing-after-hours.schema.json"),
            EventType::RoutingOffered => schema!("routing-offered.schema.json"),
            EventType::RoutingOfferDeclined => schema!("routing-offer-declined.schema.json"),
            EventType::RoutingAssigned => schema!("routing-assigned.schema.json"),
            EventType::RoutingRequeued => schema!("routing-requeued.schema.json"),
            EventType::RoutingEscalated => schema!("routing-escalated.schema.json"),
            EventType::RoutingSlaBreached => schema!("routing-sla-breached.schema.json"),
            EventType::RoutingResolved => schema!("routing-resolved.schema.json"),
            EventType::RoutingExpired => schema!("routing-expired.schema.json"),
            EventType::RoutingReopened => schema!("routing-reopened.schema.json"),
            EventType::RoutingRejected => schema!("routing-rejected.schema.json"),
            EventType::RoutingAbandoned => schema!("routing-abandoned.schema.json"),
            EventType::RoutingSlaAtRisk => schema!("routing-sla-at-risk.schema.json"),
            EventType::RoutingAgentAway => schema!("routing-agent-away.schema.json"),
            EventType::RoutingAgentDay => schema!("routing-agent-day.schema.json"),
            EventType::RoutingCsatSurvey => schema!("routing-csat-survey.schema.json"),
            EventType::RoutingCsatAnswered => schema!("routing-csat-answered.schema.json"),
        }
    }
}

/// Where the contract's JSON Schemas are published: every schema file's `$id` is this base
/// followed by its file name. The `v1` goes with the topics' `.v1`: a breaking change makes
/// `v2` schemas beside `.v2` topics.
pub const SCHEMA_BASE_URI: &str = "https://omnirouter.dev/schemas/v1/";

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The only CloudEvents version we speak; a value of another version fails to deserialize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpecVersion;

impl Serialize for SpecVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("1.0")
    }
}

impl<'de> Deserialize<'de> for SpecVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        if v == "1.0" {
            Ok(SpecVersion)
        } else {
            Err(serde::de::Error::custom(format!(
                "unsupported CloudEvents specversion {v:?}, expected \"1.0\""
            )))
        }
    }
}

/// A CloudEvent in structured JSON mode, the value of every Kafka record omnirouter writes.
/// The Kafka key is the tenant; `subject` is the conversation id; `tenant` is an extension
/// attribute so consumers can filter without parsing `data`. Channel events always have a
/// subject (`S` = [`ConversationId`]); the router's commands and ticks may have none
/// (`S` = `Option<ConversationId>`: an absent subject is left out of the JSON).
///
/// Read tolerantly: attributes it does not know (extensions such as `traceparent`, added by a
/// CRM's tracing or by a newer omnirouter) and unknown optional fields in `data` are ignored, as
/// the contract promises new optional fields may appear in a `.v1` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent<T, S: Subject = ConversationId> {
    /// Always `1.0`.
    pub specversion: SpecVersion,
    /// Unique per event; deterministic for provider messages (see [`EventId`]).
    pub id: EventId,
    /// `/omnirouter/{tenant}/{channel kind}/{account}`.
    pub source: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When the event was produced.
    pub time: DateTime<Utc>,
    /// The conversation id.
    #[serde(skip_serializing_if = "Subject::is_absent")]
    pub subject: S,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The `$id` of the JSON Schema `data` follows ([`EventType::dataschema`]): set on every
    /// event omnirouter builds, so a consumer can pick the schema without a table of types.
    /// Optional on the way in: a CRM's events may leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    /// Extension attribute: the routing domain.
    pub tenant: TenantId,
    /// The payload, described by the type's JSON Schema.
    pub data: T,
}

/// What may stand in a CloudEvent's `subject`: a conversation, or maybe one.
pub trait Subject {
    /// Whether there is no subject (then the attribute is left out of the JSON).
    fn is_absent(&self) -> bool;
}

impl Subject for ConversationId {
    fn is_absent(&self) -> bool {
        false
    }
}

impl Subject for Option<ConversationId> {
    fn is_absent(&self) -> bool {
        self.is_none()
    }
}

impl<T, S: Subject> CloudEvent<T, S> {
    /// Wraps `data` in an envelope with the given `source` (the router's events:
    /// `/omnirouter/{tenant}/router`, `/omnirouter/{tenant}/api`); `dataschema` is the type's
    /// schema `$id`.
    pub fn with_source(
        id: EventId,
        event_type: EventType,
        tenant: TenantId,
        source: String,
        subject: S,
        time: DateTime<Utc>,
        data: T,
    ) -> Self {
        Self {
            specversion: SpecVersion,
            id,
            source,
            event_type,
            time,
            subject,
            datacontenttype: "application/json".into(),
            dataschema: Some(event_type.dataschema().to_owned()),
            tenant,
            data,
        }
    }
}

impl<T> CloudEvent<T> {
    /// Wraps `data` in an envelope for a channel event.
    pub fn new(
        id: EventId,
        event_type: EventType,
        tenant: TenantId,
        channel: &ChannelRef,
        conversation: ConversationId,
        time: DateTime<Utc>,
        data: T,
    ) -> Self {
        let source = source_for(&tenant, channel);
        Self::with_source(id, event_type, tenant, source, conversation, time, data)
    }
}

/// The CloudEvents `source` of events from a channel account.
pub fn source_for(tenant: &TenantId, channel: &ChannelRef) -> String {
    format!(
        "/omnirouter/{}/{}/{}",
        tenant,
        channel.kind.as_str(),
        channel.account
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::collections::BTreeSet;

    const ID: &str = "0190f1c4-7b1a-7c3e-8a51-2d4e6f708192";
    const CONVERSATION: &str = "5b0d6c1e-2f3a-5b4c-9d8e-7f6a5b4c3d2e";

    /// Every type with its wire name, written out: the names are a contract with consumers.
    const WIRE_NAMES: [(EventType, &str); 25] = [
        (EventType::MessageReceived, "omni.message.received"),
        (EventType::MessageEchoed, "omni.message.echoed"),
        (EventType::ChannelSignal, "omni.channel.signal"),
        (EventType::MessageSend, "omni.message.send"),
        (EventType::DeliveryUpdated, "omni.delivery.updated"),
        (EventType::Command, "omni.command"),
        (EventType::RouterTick, "omni.router.tick"),
        (EventType::RoutingQueued, "omni.routing.queued"),
        (EventType::RoutingAfterHours, "omni.routing.after_hours"),
        (EventType::RoutingOffered, "omni.routing.offered"),
        (
            EventType::RoutingOfferDeclined,
            "omni.routing.offer_declined",
        ),
        (EventType::RoutingAssigned, "omni.routing.assigned"),
        (EventType::RoutingRequeued, "omni.routing.requeued"),
        (EventType::RoutingEscalated, "omni.routing.escalated"),
        (EventType::RoutingSlaBreached, "omni.routing.sla_breached"),
        (EventType::RoutingResolved, "omni.routing.resolved"),
        (EventType::RoutingExpired, "omni.routing.expired"),
        (EventType::RoutingReopened, "omni.routing.reopened"),
        (EventType::RoutingRejected, "omni.routing.rejected"),
        (EventType::RoutingAbandoned, "omni.routing.abandoned"),
        (EventType::RoutingSlaAtRisk, "omni.routing.sla_at_risk"),
        (EventType::RoutingAgentAway, "omni.routing.agent_away"),
        (EventType::RoutingAgentDay, "omni.routing.agent_day"),
        (EventType::RoutingCsatSurvey, "omni.routing.csat_survey"),
        (EventType::RoutingCsatAnswered, "omni.routing.csat_answered"),
    ];

    fn time() -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_714_557_600_123).unwrap()
    }

    fn event<S: Subject>(event_type: EventType, subject: S) -> CloudEvent<serde_json::Value, S> {
        CloudEvent::with_source(
            ID.parse().unwrap(),
            event_type,
            TenantId::new("acme").unwrap(),
            "/omnirouter/acme/router".into(),
            subject,
            time(),
            serde_json::json!({"b": 1, "a": [true]}),
        )
    }

    fn json_with_subject(type_name: &str, file: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"{ID}","source":"/omnirouter/acme/router","type":"{type_name}","time":"2024-05-01T10:00:00.123Z","subject":"{CONVERSATION}","datacontenttype":"application/json","dataschema":"https://omnirouter.dev/schemas/v1/{file}","tenant":"acme","data":{{"a":[true],"b":1}}}}"#
        )
    }

    fn json_without_subject(type_name: &str, file: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"{ID}","source":"/omnirouter/acme/router","type":"{type_name}","time":"2024-05-01T10:00:00.123Z","datacontenttype":"application/json","dataschema":"https://omnirouter.dev/schemas/v1/{file}","tenant":"acme","data":{{"a":[true],"b":1}}}}"#
        )
    }

    /// The data schema file of `t`, which the test below pins.
    fn file(t: EventType) -> &'static str {
        t.schema_file().unwrap()
    }

    #[test]
    fn every_type_is_listed_once_with_its_wire_name() {
        let listed: Vec<EventType> = EventType::CHANNEL
            .iter()
            .chain(EventType::ROUTER.iter())
            .copied()
            .collect();
        assert_eq!(listed, WIRE_NAMES.map(|(t, _)| t).to_vec());
        assert_eq!(EventType::ALL.to_vec(), listed);
        let names: BTreeSet<&str> = WIRE_NAMES.iter().map(|(_, n)| *n).collect();
        assert_eq!(names.len(), WIRE_NAMES.len());
        for (t, name) in WIRE_NAMES {
            assert_eq!(t.as_str(), name);
            assert_eq!(t.to_string(), name);
            assert_eq!(serde_json::to_value(t).unwrap(), name);
        }
    }

    #[test]
    fn every_type_has_a_data_schema_and_its_dataschema_uri() {
        let mut files = BTreeSet::new();
        for t in EventType::ALL {
            let file = t.schema_file().expect("every type has a data schema");
            assert!(file.ends_with(".schema.json"), "{t}: {file}");
            assert_eq!(t.dataschema(), format!("{SCHEMA_BASE_URI}{file}"), "{t}");
            files.insert(file);
        }
        // Received and echoed messages share one; every other type has its own.
        assert_eq!(files.len(), EventType::ALL.len() - 1);
        assert_eq!(
            EventType::MessageEchoed.schema_file(),
            EventType::MessageReceived.schema_file()
        );
        // Every event built here names its schema; one read without it stays without it.
        let built = event(EventType::RoutingAssigned, None::<ConversationId>);
        assert_eq!(
            built.dataschema.as_deref(),
            Some("https://omnirouter.dev/schemas/v1/routing-assigned.schema.json")
        );
        let crm = json_without_subject("omni.command", "x")
            .replace(r#""dataschema":"https://omnirouter.dev/schemas/v1/x","#, "");
        assert!(!crm.contains("dataschema"));
        let back: CloudEvent<serde_json::Value, Option<ConversationId>> =
            serde_json::from_str(&crm).unwrap();
        assert_eq!(back.dataschema, None);
        assert_eq!(serde_json::to_string(&back).unwrap(), crm);
    }

    #[test]
    fn the_json_of_every_type_with_a_subject_is_pinned() {
        let conversation: ConversationId = CONVERSATION.parse().unwrap();
        for (t, name) in WIRE_NAMES {
            let expected = json_with_subject(name, file(t));
            let always = serde_json::to_string(&event(t, conversation)).unwrap();
            assert_eq!(always, expected, "{name}");
            let maybe = serde_json::to_string(&event(t, Some(conversation))).unwrap();
            assert_eq!(maybe, expected, "{name}");
            let back: CloudEvent<serde_json::Value, Option<ConversationId>> =
                serde_json::from_str(&expected).unwrap();
            assert_eq!(back, event(t, Some(conversation)));
        }
    }

    #[test]
    fn an_absent_subject_stays_absent() {
        for (t, name) in WIRE_NAMES {
            let expected = json_without_subject(name, file(t));
            let json = serde_json::to_string(&event(t, None::<ConversationId>)).unwrap();
            assert_eq!(json, expected, "{name}");
            let back: CloudEvent<serde_json::Value, Option<ConversationId>> =
                serde_json::from_str(&expected).unwrap();
            assert_eq!(back.subject, None);
            // A channel event must have one.
            assert!(serde_json::from_str::<CloudEvent<serde_json::Value>>(&expected).is_err());
        }
    }
}
