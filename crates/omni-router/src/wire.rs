//! What the router reads and writes on Kafka.
//!
//! Commands (`omni.commands.v1`) and routing events (`omni.routing.v1`) are CloudEvents 1.0 in
//! structured JSON mode like every omnirouter topic ([`omni_core::CloudEvent`], with the
//! subject optional: the conversation id when there is one). Command type `omni.command`
//! ([`EventType::Command`]) carries an [`omni_routing::Command`] as `data`; `omni.router.tick`
//! ([`EventType::RouterTick`]) tells the router time has passed. Routing events have type
//! `omni.routing.<event>` (`omni.routing.assigned`, …) and an [`omni_routing::RoutingEvent`]
//! as `data`.

use chrono::{DateTime, TimeZone, Utc};
use omni_core::{ConversationId, EventId, EventType, MessageReceived, OutboundMessage, TenantId};
use omni_routing::{Command, Inbound, Input, RoutingEvent};
use serde::Deserialize;

/// The envelope of the router's commands, ticks and routing events: a CloudEvent whose
/// subject may be absent (agent commands and ticks have no conversation).
pub type Envelope<T> = omni_core::CloudEvent<T, Option<ConversationId>>;

/// The CloudEvents type of a routing event (`omni.routing.assigned`…).
pub fn routing_type(event: &RoutingEvent) -> EventType {
    match event {
        RoutingEvent::Queued { .. } => EventType::RoutingQueued,
        RoutingEvent::AfterHours { .. } => EventType::RoutingAfterHours,
        RoutingEvent::Offered { .. } => EventType::RoutingOffered,
        RoutingEvent::OfferDeclined { .. } => EventType::RoutingOfferDeclined,
        RoutingEvent::Assigned { .. } => EventType::RoutingAssigned,
        RoutingEvent::Requeued { .. } => EventType::RoutingRequeued,
        RoutingEvent::Escalated { .. } => EventType::RoutingEscalated,
        RoutingEvent::SlaBreached { .. } => EventType::RoutingSlaBreached,
        RoutingEvent::Resolved { .. } => EventType::RoutingResolved,
        RoutingEvent::Expired { .. } => EventType::RoutingExpired,
        RoutingEvent::Reopened { .. } => EventType::RoutingReopened,
        RoutingEvent::Rejected { .. } => EventType::RoutingRejected,
        RoutingEvent::Abandoned { .. } => EventType::RoutingAbandoned,
        RoutingEvent::SlaAtRisk { .. } => EventType::RoutingSlaAtRisk,
        RoutingEvent::AgentAway { .. } => EventType::RoutingAgentAway,
        RoutingEvent::AgentDay { .. } => EventType::RoutingAgentDay,
        RoutingEvent::CsatSurvey { .. } => EventType::RoutingCsatSurvey,
        RoutingEvent::CsatAnswered { .. } => EventType::RoutingCsatAnswered,
    }
}

/// A routing event in its envelope, as the router writes it on `omni.routing.v1`: type
/// [`routing_type`], source `/omnirouter/{tenant}/router`, subject [`routing_conversation`]
/// (absent for events about no conversation), `dataschema` the type's schema.
pub fn routing_envelope<'e>(
    tenant: &TenantId,
    id: EventId,
    time: DateTime<Utc>,
    event: &'e RoutingEvent,
) -> Envelope<&'e RoutingEvent> {
    Envelope::with_source(
        id,
        routing_type(event),
        tenant.clone(),
        format!("/omnirouter/{tenant}/router"),
        routing_conversation(event),
        time,
        event,
    )
}

/// A command in its envelope, as omnirouter writes it on `omni.commands.v1` (the agent API):
/// type `omni.command`, subject the conversation the command names ([`Command::conversation`]).
pub fn command_envelope(
    id: EventId,
    tenant: TenantId,
    source: String,
    time: DateTime<Utc>,
    command: Command,
) -> Envelope<Command> {
    let subject = command.conversation();
    Envelope::with_source(
        id,
        EventType::Command,
        tenant,
        source,
        subject,
        time,
        command,
    )
}

/// The conversation a routing event is about.
pub fn routing_conversation(event: &RoutingEvent) -> Option<ConversationId> {
    match event {
        RoutingEvent::Queued { conversation, .. }
        | RoutingEvent::AfterHours { conversation, .. }
        | RoutingEvent::Offered { conversation, .. }
        | RoutingEvent::OfferDeclined { conversation, .. }
        | RoutingEvent::Assigned { conversation, .. }
        | RoutingEvent::Requeued { conversation, .. }
        | RoutingEvent::Escalated { conversation, .. }
        | RoutingEvent::SlaBreached { conversation, .. }
        | RoutingEvent::Resolved { conversation, .. }
        | RoutingEvent::Expired { conversation, .. }
        | RoutingEvent::Abandoned { conversation, .. }
        | RoutingEvent::SlaAtRisk { conversation, .. }
        | RoutingEvent::CsatSurvey { conversation, .. }
        | RoutingEvent::CsatAnswered { conversation, .. }
        | RoutingEvent::Reopened { conversation } => Some(*conversation),
        RoutingEvent::Rejected { conversation, .. } => *conversation,
        RoutingEvent::AgentAway { .. } | RoutingEvent::AgentDay { .. } => None,
    }
}

/// The customer-facing message of a `csat_survey` routing event (an encoded envelope): the
/// question as an `omni.message.send` on the customer's channel, marked `csat_survey`, whose
/// id is derived from the routing event's, so every re-publication of the event (a replay, a
/// progress record) gives the same message and the channel sends it once. `None` for every
/// other event.
pub fn survey_message(routing_event: &serde_json::Value) -> Option<serde_json::Value> {
    if routing_event["type"] != EventType::RoutingCsatSurvey.as_str() {
        return None;
    }
    let tenant: TenantId = serde_json::from_value(routing_event["tenant"].clone()).ok()?;
    let time: DateTime<Utc> = serde_json::from_value(routing_event["time"].clone()).ok()?;
    let routing_id = routing_event["id"].as_str()?;
    let RoutingEvent::CsatSurvey {
        conversation,
        channel,
        recipient,
        question,
        ..
    } = serde_json::from_value(routing_event["data"].clone()).ok()?
    else {
        return None;
    };
    let id = omni_core::EventId::derived(&tenant, &[routing_id, "csat_survey"]);
    let message = OutboundMessage {
        tenant: tenant.clone(),
        conversation_id: conversation,
        channel: channel.clone(),
        recipient,
        agent_id: None,
        text: question,
        subject: None,
        attachments: Vec::new(),
        reply_to: None,
        csat_survey: true,
        template: None,
    };
    let env = omni_core::CloudEvent::new(
        id,
        EventType::MessageSend,
        tenant,
        &channel,
        conversation,
        time,
        message,
    );
    serde_json::to_value(&env).ok()
}

/// Why a record is not an engine input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON of the expected envelope.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The key and the envelope name different tenants.
    #[error("record key {key:?} does not match envelope tenant {tenant:?}")]
    TenantMismatch {
        /// The record key.
        key: String,
        /// The envelope's tenant.
        tenant: String,
    },
}

/// The envelope's fields the router looks at first; `data` is kept as its JSON text and
/// parsed once, straight into the type its `type` names (through a `serde_json::Value` it
/// cost a tree of allocations per record, the largest part of decoding).
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    event_type: std::borrow::Cow<'a, str>,
    tenant: TenantId,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

/// Decodes a record from one of the router's input topics. `Ok(None)`: a valid record the
/// engine does not care about (a delivery signal, an unknown event type from a newer producer).
pub fn decode_input(key: &[u8], payload: &[u8]) -> Result<Option<(TenantId, Input)>, DecodeError> {
    let head: Head =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if key != head.tenant.as_str().as_bytes() {
        return Err(DecodeError::TenantMismatch {
            key: String::from_utf8_lossy(key).into_owned(),
            tenant: head.tenant.to_string(),
        });
    }
    let bad = |e: serde_json::Error| DecodeError::Malformed(e.to_string());
    // A type this version does not know (a newer producer's) is not an input.
    let Ok(event_type) = EventType::deserialize(serde::de::value::StrDeserializer::<
        serde::de::value::Error,
    >::new(&head.event_type)) else {
        return Ok(None);
    };
    let input = match event_type {
        EventType::MessageReceived => {
            let m: MessageReceived = serde_json::from_str(head.data.get()).map_err(bad)?;
            Input::Inbound(Inbound {
                conversation: m.conversation_id,
                channel: m.channel,
                contact_id: m.contact.id,
                tags: m.contact.tags,
                language: m.contact.language,
                text: m.message.text,
            })
        }
        // The business answered from the provider's own tools: that is a reply too.
        EventType::MessageEchoed => {
            let m: MessageReceived = serde_json::from_str(head.data.get()).map_err(bad)?;
            Input::Command(Command::AgentReplied {
                conversation: m.conversation_id,
                agent: None,
            })
        }
        EventType::MessageSend => {
            let m: OutboundMessage = serde_json::from_str(head.data.get()).map_err(bad)?;
            // The router's own survey question is not a response to the customer.
            if m.csat_survey {
                return Ok(None);
            }
            Input::Command(Command::AgentReplied {
                conversation: m.conversation_id,
                agent: m.agent_id.map(omni_routing::AgentId),
            })
        }
        EventType::Command => Input::Command(serde_json::from_str(head.data.get()).map_err(bad)?),
        EventType::RouterTick => Input::Tick,
        _ => return Ok(None),
    };
    Ok(Some((head.tenant, input)))
}

/// Milliseconds since the epoch as a UTC time (for envelopes).
pub fn time_of(ms: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(i64::try_from(ms).unwrap_or(i64::MAX))
        .single()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_ticks_decode_and_tenant_must_match_key() {
        let t = TenantId::new("acme").unwrap();
        let cmd = Envelope::with_source(
            EventId::new_random(),
            EventType::Command,
            t.clone(),
            "/test".into(),
            None,
            Utc::now(),
            Command::SetPresence {
                agent: "a".into(),
                presence: omni_routing::Presence::Online,
            },
        );
        let bytes = serde_json::to_vec(&cmd).unwrap();
        let (tenant, input) = decode_input(b"acme", &bytes).unwrap().unwrap();
        assert_eq!(tenant, t);
        assert!(matches!(input, Input::Command(Command::SetPresence { .. })));
        assert!(matches!(
            decode_input(b"other", &bytes),
            Err(DecodeError::TenantMismatch { .. })
        ));
        assert!(decode_input(b"acme", b"{not json").is_err());
        let tick = Envelope::with_source(
            EventId::new_random(),
            EventType::RouterTick,
            t,
            "/r".into(),
            None,
            Utc::now(),
            serde_json::json!({}),
        );
        let (_, input) = decode_input(b"acme", &serde_json::to_vec(&tick).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(input, Input::Tick);
        let other =
            serde_json::json!({"type": "omni.channel.signal", "tenant": "acme", "data": {}});
        assert_eq!(
            decode_input(b"acme", other.to_string().as_bytes()).unwrap(),
            None
        );
    }
}
