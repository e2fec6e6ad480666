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
    /// Skills with proficiency 1–5 (languages are skills).
    #[serde(default)]
    pub skills: BTreeMap<Skill, u8>,
    /// Most open conversations at once, all channels together.
    pub capacity: u32,
    /// Most open conversations per channel kind (a kind not listed is limited only by
    /// `capacity`; 0 means the agent takes none of that kind).
    #[serde(default)]
    pub channel_capacity: BTreeMap<ChannelKind, u32>,
}

/// Where a transfer goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferTarget {
    /// A named agent (who must be online with free capacity).
    Agent(AgentId),
    /// Another queue (keeping the conversation's arrival time).
    Queue(QueueId),
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
        /// Who replied, if known.
        #[serde(default)]
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
