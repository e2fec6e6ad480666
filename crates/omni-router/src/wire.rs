//! What the router reads and writes on Kafka.
//!
//! Commands (`omni.commands.v1`) and routing events (`omni.routing.v1`) are CloudEvents 1.0 in
//! structured JSON mode like every omnirouter topic; `subject` is the conversation id when
//! there is one. Command type `omni.command` carries an [`omni_routing::Command`] as `data`;
//! `omni.router.tick` tells the router time has passed. Routing events have type
//! `omni.routing.<event>` (`omni.routing.assigned`, …) and an [`omni_routing::RoutingEvent`]
//! as `data`.

use chrono::{DateTime, TimeZone, Utc};
use omni_core::envelope::SpecVersion;
use omni_core::{ConversationId, EventId, MessageReceived, OutboundMessage, TenantId};
use omni_routing::{Command, Inbound, Input, RoutingEvent};
use serde::{Deserialize, Serialize};

/// CloudEvents type of an agent/supervisor command.
pub const COMMAND_TYPE: &str = "omni.command";
/// CloudEvents type of a router tick.
pub const TICK_TYPE: &str = "omni.router.tick";

/// A CloudEvent whose subject may be absent (agent commands have no conversation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Always `1.0`.
    pub specversion: SpecVersion,
    /// Event id.
    pub id: EventId,
    /// Who produced it.
    pub source: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When.
    pub time: DateTime<Utc>,
    /// The conversation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The tenant.
    pub tenant: TenantId,
    /// The payload.
    pub data: T,
}

impl<T> Envelope<T> {
    /// An envelope with the constant fields filled in.
    pub fn new(
        id: EventId,
        tenant: TenantId,
        event_type: impl Into<String>,
        source: impl Into<String>,
        time: DateTime<Utc>,
        subject: Option<String>,
        data: T,
    ) -> Self {
        Self {
            specversion: SpecVersion,
            id,
            source: source.into(),
            event_type: event_type.into(),
            time,
            subject,
            datacontenttype: "application/json".into(),
            tenant,
            data,
        }
    }
}

/// The CloudEvents type of a routing event (`omni.routing.assigned`…).
pub fn routing_type(event: &RoutingEvent) -> &'static str {
    match event {
        RoutingEvent::Queued { .. } => "omni.routing.queued",
        RoutingEvent::AfterHours { .. } => "omni.routing.after_hours",
        RoutingEvent::Offered { .. } => "omni.routing.offered",
        RoutingEvent::OfferDeclined { .. } => "omni.routing.offer_declined",
        RoutingEvent::Assigned { .. } => "omni.routing.assigned",
        RoutingEvent::Requeued { .. } => "omni.routing.requeued",
        RoutingEvent::Escalated { .. } => "omni.routing.escalated",
        RoutingEvent::SlaBreached { .. } => "omni.routing.sla_breached",
        RoutingEvent::Resolved { .. } => "omni.routing.resolved",
        RoutingEvent::Expired { .. } => "omni.routing.expired",
        RoutingEvent::Reopened { .. } => "omni.routing.reopened",
        RoutingEvent::Rejected { .. } => "omni.routing.rejected",
    }
}

/// The conversation a routing event is about, as the CloudEvents subject.
pub fn routing_subject(event: &RoutingEvent) -> Option<String> {
    routing_conversation(event).map(|c| c.to_string())
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
        | RoutingEvent::Reopened { conversation } => Some(*conversation),
        RoutingEvent::Rejected { conversation, .. } => *conversation,
    }
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

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    event_type: String,
    tenant: TenantId,
    data: serde_json::Value,
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
    let input = match head.event_type.as_str() {
        "omni.message.received" => {
            let m: MessageReceived = serde_json::from_value(head.data).map_err(bad)?;
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
        "omni.message.echoed" => {
            let m: MessageReceived = serde_json::from_value(head.data).map_err(bad)?;
            Input::Command(Command::AgentReplied {
                conversation: m.conversation_id,
                agent: None,
            })
        }
        "omni.message.send" => {
            let m: OutboundMessage = serde_json::from_value(head.data).map_err(bad)?;
            Input::Command(Command::AgentReplied {
                conversation: m.conversation_id,
                agent: m.agent_id.map(omni_routing::AgentId),
            })
        }
        COMMAND_TYPE => Input::Command(serde_json::from_value(head.data).map_err(bad)?),
        TICK_TYPE => Input::Tick,
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
        let cmd = Envelope::new(
            EventId::new_random(),
            t.clone(),
            COMMAND_TYPE,
            "/test",
            Utc::now(),
            None,
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
        let tick = Envelope::new(
            EventId::new_random(),
            t,
            TICK_TYPE,
            "/r",
            Utc::now(),
            None,
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
