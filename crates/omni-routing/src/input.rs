//! What goes into the engine. Every input comes with the time it happened (`now`), passed
//! alongside it to [`crate::Engine::handle`].

use omni_core::{ChannelKind, ChannelRef, ConversationId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::model::{AgentId, Presence, QueueId, Skill};

/// One input to the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    /// A customer message (from `omni.inbound.v1`).
    Inbound(Inbound),
    /// An agent's, supervisor's or CRM's command (from `omni.commands.v1`).
    Command(Command),
    /// Time passed: fire due timers (offer timeouts, overflow, SLA, opening hours).
    Tick,
}

/// The routing-relevant part of an inbound customer message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbound {
    /// The conversation.
    pub conversation: ConversationId,
    /// Where it came from.
    pub channel: ChannelRef,
    /// The channel's id for the customer (sticky routing remembers their last agent).
    pub contact_id: String,
    /// Contact tags, for rules.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Contact language, for rules.
    #[serde(default)]
    pub language: Option<String>,
    /// Message text, for keyword rules.
    #[serde(default)]
    pub text: String,
}

/// An agent as the CRM describes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentProfile {
    /// The agent.
    pub agent: AgentId,
    /// Skills with proficiency 1–5 (languages are skills). Left out of the JSON when empty,
    /// as a producer may leave it out (the contract's `required` is what is always written).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skills: BTreeMap<Skill, u8>,
    /// Most open conversations at once, all channels together.
    pub capacity: u32,
    /// Most open conversations per channel kind (a kind not listed is limited only by
    /// `capacity`; 0 means the agent takes none of that kind). Left out of the JSON when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channel_capacity: BTreeMap<ChannelKind, u32>,
}

/// Where a transfer goes: `{"agent": ...}` or `{"queue": ...}` on the wire. Read tolerantly
/// (other keys a newer producer adds are ignored), as every record of the contract is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "TransferTargetWire")]
pub enum TransferTarget {
    /// A named agent (who must be online with free capacity).
    Agent(AgentId),
    /// Another queue (keeping the conversation's arrival time).
    Queue(QueueId),
}

/// A transfer target as read: serde's externally tagged enum refuses a map with any key
/// beside the variant's, so the target is read as a record and checked after.
#[derive(Deserialize)]
struct TransferTargetWire {
    #[serde(default)]
    agent: Option<AgentId>,
    #[serde(default)]
    queue: Option<QueueId>,
}

/// Why a transfer target cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransferTargetError {
    /// Neither `agent` nor `queue` is given.
    #[error("a transfer target names an `agent` or a `queue`")]
    Missing,
    /// Both are given.
    #[error("a transfer target names an `agent` or a `queue`, not both")]
    Both,
}

impl TryFrom<TransferTargetWire> for TransferTarget {
    type Error = TransferTargetError;

    fn try_from(wire: TransferTargetWire) -> Result<Self, Self::Error> {
        match (wire.agent, wire.queue) {
            (Some(agent), None) => Ok(TransferTarget::Agent(agent)),
            (None, Some(queue)) => Ok(TransferTarget::Queue(queue)),
            (None, None) => Err(TransferTargetError::Missing),
            (Some(_), Some(_)) => Err(TransferTargetError::Both),
        }
    }
}

/// Commands from agents, supervisors and CRMs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Creates or updates an agent (skills, capacity). A lower capacity than the agent's load
    /// requeues their newest conversations.
    UpsertAgent(AgentProfile),
    /// Removes an agent; their conversations are requeued.
    RemoveAgent {
        /// The agent.
        agent: AgentId,
    },
    /// Online, away or offline.
    SetPresence {
        /// The agent.
        agent: AgentId,
        /// The new presence.
        presence: Presence,
    },
    /// The agent accepts an offered conversation.
    Accept {
        /// The agent.
        agent: AgentId,
        /// The conversation offered.
        conversation: ConversationId,
    },
    /// The agent declines an offered conversation; it goes to the next agent.
    Decline {
        /// The agent.
        agent: AgentId,
        /// The conversation offered.
        conversation: ConversationId,
    },
    /// An agent's reply went out (first response and response times are measured to it).
    AgentReplied {
        /// The conversation.
        conversation: ConversationId,
        /// Who replied, if known (left out of the JSON when not).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<AgentId>,
    },
    /// The conversation is resolved; the agent's capacity frees.
    Resolve {
        /// The conversation.
        conversation: ConversationId,
    },
    /// Moves a conversation to an agent or a queue.
    Transfer {
        /// The conversation.
        conversation: ConversationId,
        /// Where to.
        to: TransferTarget,
    },
    /// Reopens a resolved conversation (counts against first-contact resolution).
    Reopen {
        /// The conversation.
        conversation: ConversationId,
    },
    /// The agent finished their after-conversation work: every wrap-up they are in ends now
    /// and their places free.
    Ready {
        /// The agent.
        agent: AgentId,
    },
    /// The customer left before anyone answered (a live chat visitor closed the chat): a
    /// conversation not yet assigned in this contact ends as abandoned; otherwise nothing
    /// changes.
    CustomerLeft {
        /// The conversation.
        conversation: ConversationId,
    },
    /// A customer satisfaction score, 1–5.
    Csat {
        /// The conversation.
        conversation: ConversationId,
        /// The score.
        score: u8,
    },
}

impl Command {
    /// The conversation the command is about, if it names one: the `subject` of its
    /// CloudEvent (agent commands such as `set_presence` have none).
    pub fn conversation(&self) -> Option<ConversationId> {
        match self {
            Command::Accept { conversation, .. }
            | Command::Decline { conversation, .. }
            | Command::AgentReplied { conversation, .. }
            | Command::Resolve { conversation }
            | Command::Transfer { conversation, .. }
            | Command::Reopen { conversation }
            | Command::CustomerLeft { conversation }
            | Command::Csat { conversation, .. } => Some(*conversation),
            Command::UpsertAgent(_)
            | Command::RemoveAgent { .. }
            | Command::SetPresence { .. }
            | Command::Ready { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_transfer_target_is_read_past_unknown_keys_and_written_as_before() {
        let agent: TransferTarget =
            serde_json::from_value(json!({"agent": "lan", "x_note": "vip"})).unwrap();
        assert_eq!(agent, TransferTarget::Agent("lan".into()));
        assert_eq!(
            serde_json::to_value(&agent).unwrap(),
            json!({"agent": "lan"})
        );
        let queue: TransferTarget = serde_json::from_value(json!({"queue": "billing"})).unwrap();
        assert_eq!(queue, TransferTarget::Queue("billing".into()));
        assert_eq!(
            serde_json::to_value(&queue).unwrap(),
            json!({"queue": "billing"})
        );
        for bad in [
            json!({}),
            json!({"x_note": "vip"}),
            json!({"agent": "lan", "queue": "billing"}),
            json!({"agent": 1}),
            json!("agent"),
        ] {
            assert!(
                serde_json::from_value::<TransferTarget>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn optional_command_fields_are_left_out_when_empty() {
        let c = conversation();
        let replied = Command::AgentReplied {
            conversation: c,
            agent: None,
        };
        let v = serde_json::to_value(&replied).unwrap();
        assert_eq!(v, json!({"command": "agent_replied", "conversation": c}));
        assert_eq!(serde_json::from_value::<Command>(v).unwrap(), replied);
        let upsert = Command::UpsertAgent(AgentProfile {
            agent: "lan".into(),
            skills: BTreeMap::new(),
            capacity: 3,
            channel_capacity: BTreeMap::new(),
        });
        let v = serde_json::to_value(&upsert).unwrap();
        assert_eq!(
            v,
            json!({"command": "upsert_agent", "agent": "lan", "capacity": 3})
        );
        assert_eq!(serde_json::from_value::<Command>(v).unwrap(), upsert);
        // Older producers wrote the empty values: still read.
        let old = json!({"command": "upsert_agent", "agent": "lan", "skills": {},
            "capacity": 3, "channel_capacity": {}});
        assert_eq!(serde_json::from_value::<Command>(old).unwrap(), upsert);
    }

    #[test]
    fn commands_name_their_conversation() {
        let c = conversation();
        assert_eq!(Command::Resolve { conversation: c }.conversation(), Some(c));
        assert_eq!(
            Command::Transfer {
                conversation: c,
                to: TransferTarget::Queue("q".into())
            }
            .conversation(),
            Some(c)
        );
        assert_eq!(
            Command::SetPresence {
                agent: "a".into(),
                presence: Presence::Online
            }
            .conversation(),
            None
        );
        assert_eq!(Command::Ready { agent: "a".into() }.conversation(), None);
    }

    fn conversation() -> ConversationId {
        "5b0d6c1e-2f3a-5b4c-9d8e-7f6a5b4c3d2e".parse().unwrap()
    }
}
