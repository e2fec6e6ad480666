//! What live chat exchanges with the router, over Kafka only (channel crates never depend on
//! the router): the routing events of a visitor's conversation read from `omni.routing.v1`
//! (queued with a wait estimate, assigned, ended), which the socket holding the visitor turns
//! into frames, and the `customer_left` command written to `omni.commands.v1` when the visitor
//! ends the chat.
//!
//! Routing events name no channel: the feed keeps only those of conversations its hub already
//! holds (live chat ones, known from their messages or an attached socket). Every instance
//! reads the whole routing topic, so whichever replica holds the socket tells the visitor.

use chrono::{DateTime, Utc};
use omni_core::{CloudEvent, ConversationId, EventId, EventType, TenantId};
use serde::{Deserialize, Serialize};

use crate::protocol;

/// Where a visitor's conversation stands with the router, as its latest routing event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueUpdate {
    /// Waiting in a queue (`omni.routing.queued`), with the router's estimate of the wait
    /// (`None` when the queue has too little history or is closed).
    Queued {
        /// Seconds, from when the event was written.
        estimated_wait_secs: Option<u64>,
        /// When the router queued it (the event's time).
        at: DateTime<Utc>,
    },
    /// An agent took it (`omni.routing.assigned`): the wait is over.
    Assigned,
    /// The router ended the contact without (or after) an agent: `patience` or
    /// `customer_left` (abandoned), `expired`, `resolved`.
    Ended {
        /// Why, from a bounded set.
        reason: &'static str,
    },
}

impl QueueUpdate {
    /// The frame sockets are sent when the event is read: the router's estimate as it gave it.
    pub fn frame(&self) -> String {
        match self {
            QueueUpdate::Queued {
                estimated_wait_secs,
                ..
            } => protocol::queued_frame(*estimated_wait_secs),
            QueueUpdate::Assigned => protocol::ASSIGNED_FRAME.to_owned(),
            QueueUpdate::Ended { reason } => protocol::ended_frame(reason),
        }
    }

    /// True for a `queued` update with an estimate: the only one worth repeating to a socket
    /// that attaches later (the widget shows nothing for the others).
    pub fn has_estimate(&self) -> bool {
        matches!(
            self,
            QueueUpdate::Queued {
                estimated_wait_secs: Some(_),
                ..
            }
        )
    }

    /// The frame a socket attaching later is sent, as of `now`: a `queued` frame then carries
    /// the wait left (the estimate less the time since the event), so a visitor who reconnects
    /// or opens a second tab is not shown the wait as it was at first.
    pub fn frame_at(&self, now: DateTime<Utc>) -> String {
        match self {
            QueueUpdate::Queued {
                estimated_wait_secs,
                at,
            } => {
                let elapsed = u64::try_from((now - *at).num_seconds()).unwrap_or(0);
                protocol::queued_frame(estimated_wait_secs.map(|s| s.saturating_sub(elapsed)))
            }
            _ => self.frame(),
        }
    }
}

/// The routing event types live chat follows; every other one is skipped unparsed.
fn followed(event_type: EventType) -> bool {
    matches!(
        event_type,
        EventType::RoutingQueued
            | EventType::RoutingAssigned
            | EventType::RoutingAbandoned
            | EventType::RoutingResolved
            | EventType::RoutingExpired
    )
}

/// `data` of the routing events followed; the router's other fields are not read.
#[derive(Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum RoutingData {
    Queued {
        #[serde(default)]
        estimated_wait_secs: Option<u64>,
    },
    Assigned {},
    Abandoned {
        reason: String,
    },
    Resolved {},
    Expired {},
    #[serde(other)]
    Other,
}

/// A routing record as the router writes it (`RoutingEventEnvelope` in the router's API
/// document); fields not listed are ignored.
#[derive(Deserialize)]
struct RoutingRecord<D> {
    #[serde(rename = "type")]
    event_type: EventType,
    tenant: TenantId,
    #[serde(default)]
    subject: Option<ConversationId>,
    time: DateTime<Utc>,
    data: D,
}

/// What a record of the routing topic means for live chat: (tenant, conversation, update),
/// or `None` for any other event, a record about a conversation `known` refuses (not a live
/// chat one held here), or garbage. `known` is asked before the event's data is parsed, so
/// the many records of other channels cost one shallow parse each.
pub fn decode(
    payload: &[u8],
    known: impl FnOnce(ConversationId) -> bool,
) -> Option<(TenantId, ConversationId, QueueUpdate)> {
    let probe: RoutingRecord<serde::de::IgnoredAny> = serde_json::from_slice(payload).ok()?;
    let conversation = probe.subject?;
    if !followed(probe.event_type) || !known(conversation) {
        return None;
    }
    let record: RoutingRecord<RoutingData> = serde_json::from_slice(payload).ok()?;
    let update = match record.data {
        RoutingData::Queued {
            estimated_wait_secs,
        } => QueueUpdate::Queued {
            estimated_wait_secs,
            at: record.time,
        },
        RoutingData::Assigned {} => QueueUpdate::Assigned,
        RoutingData::Abandoned { reason } => QueueUpdate::Ended {
            reason: if reason == "customer_left" {
                "customer_left"
            } else {
                "patience"
            },
        },
        RoutingData::Resolved {} => QueueUpdate::Ended { reason: "resolved" },
        RoutingData::Expired {} => QueueUpdate::Ended { reason: "expired" },
        RoutingData::Other => return None,
    };
    Some((record.tenant, conversation, update))
}

/// A router command live chat writes, as the router reads it (`data` of an `omni.command`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum RouterCommand {
    /// The visitor ended the chat: a conversation no agent took yet ends as abandoned.
    CustomerLeft {
        /// The visitor's conversation.
        conversation: ConversationId,
    },
}

/// Why the router was not told the visitor left; the visitor is sent `leave_failed`.
#[derive(Debug, thiserror::Error)]
pub enum LeaveError {
    /// The command could not be encoded (a bug, never an empty record).
    #[error(transparent)]
    Encode(#[from] omni_core::EncodeError),
    /// Kafka did not acknowledge the command in time.
    #[error(transparent)]
    Publish(#[from] omni_channel::SinkError),
}

/// The `customer_left` command for `conversation`, in the envelope the agent API writes
/// commands in (an `omni.command` CloudEvent whose subject is the conversation), with live
/// chat's source `/omnirouter/{tenant}/livechat/{widget}`.
pub fn customer_left(
    tenant: &TenantId,
    widget: &str,
    conversation: ConversationId,
    now: DateTime<Utc>,
) -> CloudEvent<RouterCommand, Option<ConversationId>> {
    CloudEvent::with_source(
        EventId::new_random(),
        EventType::Command,
        tenant.clone(),
        format!("/omnirouter/{tenant}/livechat/{widget}"),
        Some(conversation),
        now,
        RouterCommand::CustomerLeft { conversation },
    )
}

/// Publishes [`customer_left`] on the commands topic, keyed by tenant like every router
/// input (so it lands on the tenant's partition, behind the visitor's messages), and
/// resolves once Kafka acknowledged it.
pub async fn publish_customer_left(
    sink: &dyn omni_channel::EventSink,
    topic: &str,
    tenant: &TenantId,
    widget: &str,
    conversation: ConversationId,
) -> Result<(), LeaveError> {
    let event = customer_left(tenant, widget, conversation, Utc::now());
    let payload = omni_core::to_json("customer_left command", &event)?;
    sink.publish(topic, tenant.as_str().as_bytes(), &payload)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use omni_core::{ChannelKind, ChannelRef};
    use serde_json::{json, Value};

    fn conversation() -> (TenantId, ConversationId) {
        let tenant = TenantId::new("demo").unwrap();
        let c = ConversationId::derive(
            &tenant,
            &ChannelRef::new(ChannelKind::Livechat, "web"),
            "v_1",
            None,
        );
        (tenant, c)
    }

    /// A routing record exactly as the router writes it.
    fn record(c: ConversationId, event_type: &str, data: Value, at: DateTime<Utc>) -> Vec<u8> {
        json!({
            "specversion": "1.0",
            "id": "0190a6c4-6f1e-7b3c-9a55-3c2d1e0f9a01",
            "source": "/omnirouter/demo/router",
            "type": event_type,
            "time": at.to_rfc3339(),
            "subject": c,
            "datacontenttype": "application/json",
            "tenant": "demo",
            "data": data,
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_queued_event_becomes_a_queued_frame_with_the_wait_left() {
        let (tenant, c) = conversation();
        let at = Utc::now();
        let data = json!({"event": "queued", "conversation": c, "queue": "general",
                          "priority": 0, "estimated_wait_secs": 42});
        let payload = record(c, "omni.routing.queued", data, at);
        let (t, conv, update) = decode(&payload, |k| k == c).unwrap();
        assert_eq!((t, conv), (tenant, c));
        let frame: Value = serde_json::from_str(&update.frame()).unwrap();
        assert_eq!(frame, json!({"type": "queued", "estimated_wait_secs": 42}));
        // Sent to a visitor who reconnects 40 s later: what is left of it.
        let later: Value =
            serde_json::from_str(&update.frame_at(at + chrono::Duration::seconds(40))).unwrap();
        assert_eq!(later["estimated_wait_secs"], 2);
        let past: Value =
            serde_json::from_str(&update.frame_at(at + chrono::Duration::hours(1))).unwrap();
        assert_eq!(past["estimated_wait_secs"], 0);

        // No estimate: the field is absent in the event, and in the frame.
        let data = json!({"event": "queued", "conversation": c, "queue": "general", "priority": 3});
        let (_, _, update) = decode(&record(c, "omni.routing.queued", data, at), |_| true).unwrap();
        assert_eq!(update.frame(), r#"{"type":"queued"}"#);
        assert_eq!(update.frame_at(at), r#"{"type":"queued"}"#);
    }

    #[test]
    fn assigned_and_ended_events_end_the_wait_and_others_are_skipped() {
        let (_, c) = conversation();
        let at = Utc::now();
        let assigned = json!({"event": "assigned", "conversation": c, "agent": "lan",
            "queue": "general", "explanation": {"strategy": "least_loaded", "reason": "x"}});
        let (_, _, update) =
            decode(&record(c, "omni.routing.assigned", assigned, at), |_| true).unwrap();
        assert_eq!(update, QueueUpdate::Assigned);
        assert_eq!(update.frame(), r#"{"type":"assigned"}"#);
        assert!(!update.frame().contains("lan"), "agent ids stay internal");
        let abandoned = json!({"event": "abandoned", "conversation": c, "queue": "general",
            "agent": null, "waiting_since": 1, "reason": "customer_left"});
        let (_, _, update) = decode(&record(c, "omni.routing.abandoned", abandoned, at), |_| {
            true
        })
        .unwrap();
        assert_eq!(
            update.frame_at(at),
            r#"{"type":"ended","reason":"customer_left"}"#
        );

        // Not held here (another channel's conversation): not even parsed further.
        let data = json!({"event": "queued", "conversation": c, "queue": "general", "priority": 0});
        assert!(
            decode(&record(c, "omni.routing.queued", data.clone(), at), |_| {
                false
            })
            .is_none()
        );
        // Events live chat does not follow, garbage, and a record without a subject.
        let offered = json!({"event": "offered", "conversation": c, "agent": "lan"});
        assert!(decode(&record(c, "omni.routing.offered", offered, at), |_| true).is_none());
        assert!(decode(b"{not json", |_| true).is_none());
        let mut v: Value =
            serde_json::from_slice(&record(c, "omni.routing.queued", data, at)).unwrap();
        v.as_object_mut().unwrap().remove("subject");
        assert!(decode(v.to_string().as_bytes(), |_| true).is_none());
    }

    #[test]
    fn customer_left_is_an_omni_command_keyed_like_the_agent_api_writes_it() {
        let (tenant, c) = conversation();
        let event = customer_left(&tenant, "web", c, Utc::now());
        let v = serde_json::to_value(&event).unwrap();
        assert_eq!(v["type"], "omni.command");
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["tenant"], "demo");
        assert_eq!(v["subject"], json!(c));
        assert_eq!(v["source"], "/omnirouter/demo/livechat/web");
        assert_eq!(
            v["data"],
            json!({"command": "customer_left", "conversation": c})
        );
    }
}
