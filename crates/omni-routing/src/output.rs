//! What comes out of the engine: routing events (for `omni.routing.v1`) and metric
//! observations (for the Prometheus histograms and counters).

use omni_core::{ChannelKind, ConversationId};
use serde::{Deserialize, Serialize};

use crate::config::Strategy;
use crate::model::{AgentId, QueueId, Timestamp};

/// One output of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "output", rename_all = "snake_case")]
pub enum Output {
    /// A routing decision or state change.
    Event(RoutingEvent),
    /// A measurement for metrics.
    Observe(Observation),
}

/// Which service level was breached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlaKind {
    /// No first agent reply within target.
    FirstResponse,
    /// No reply to a later customer message within target.
    NextResponse,
    /// Not resolved within target.
    Resolution,
}

impl SlaKind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SlaKind::FirstResponse => "first_response",
            SlaKind::NextResponse => "next_response",
            SlaKind::Resolution => "resolution",
        }
    }
}

/// Why an agent was chosen, so an operator can answer "why did she get this chat?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The queue's strategy (or `sticky` / `transfer`).
    pub strategy: String,
    /// How many agents were available with the queue's skills when the decision was made.
    pub eligible: usize,
    /// One sentence: what made this agent win.
    pub reason: String,
}

/// Routing events. Every event names its conversation; ids of events are derived by the runner
/// from (input offset, index in the step), so a replay produces identical events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RoutingEvent {
    /// A new (or reopened) conversation is waiting in a queue.
    Queued {
        /// The conversation.
        conversation: ConversationId,
        /// The queue.
        queue: QueueId,
        /// Its priority (queue priority + rule boost).
        priority: i32,
        /// How long it will probably wait for an agent, in seconds, from the queue's recent
        /// throughput and the conversations ahead of it (0 when an agent is free now); `None`
        /// when the queue has no recent assignments to estimate from, or is closed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        estimated_wait_secs: Option<u64>,
    },
    /// It arrived while its queue is closed.
    AfterHours {
        /// The conversation.
        conversation: ConversationId,
        /// The queue.
        queue: QueueId,
        /// When the queue opens, if within two weeks.
        opens_at: Option<Timestamp>,
    },
    /// Offered to an agent, who must accept before `expires_at`.
    Offered {
        /// The conversation.
        conversation: ConversationId,
        /// The agent.
        agent: AgentId,
        /// The queue.
        queue: QueueId,
        /// Offer deadline.
        expires_at: Timestamp,
    },
    /// An offer was declined or timed out; the conversation goes to the next agent.
    OfferDeclined {
        /// The conversation.
        conversation: ConversationId,
        /// Who declined.
        agent: AgentId,
        /// True when the offer expired rather than being declined.
        timed_out: bool,
    },
    /// The conversation belongs to an agent now.
    Assigned {
        /// The conversation.
        conversation: ConversationId,
        /// The agent.
        agent: AgentId,
        /// The queue it came from.
        queue: QueueId,
        /// Why this agent.
        explanation: Explanation,
    },
    /// Back in its queue (agent went offline, was removed, lost capacity, or transferred it).
    Requeued {
        /// The conversation.
        conversation: ConversationId,
        /// The queue.
        queue: QueueId,
        /// The agent it left.
        from_agent: Option<AgentId>,
        /// Why.
        reason: String,
    },
    /// An overflow step applied.
    Escalated {
        /// The conversation.
        conversation: ConversationId,
        /// The queue it was in.
        from_queue: QueueId,
        /// The queue it is in now (same queue for a proficiency relaxation).
        to_queue: QueueId,
        /// What the step did.
        action: String,
    },
    /// A service level was missed.
    SlaBreached {
        /// The conversation.
        conversation: ConversationId,
        /// The queue.
        queue: QueueId,
        /// Which target.
        sla: SlaKind,
    },
    /// Resolved.
    Resolved {
        /// The conversation.
        conversation: ConversationId,
        /// The agent who had it.
        agent: Option<AgentId>,
        /// The queue.
        queue: QueueId,
    },
    /// An unresolved conversation had no activity for `expire_after_secs` and was abandoned:
    /// its agent (if any) is free of it, and the router forgets it. A later customer message
    /// starts a new conversation.
    Expired {
        /// The conversation.
        conversation: ConversationId,
        /// The queue it was in.
        queue: QueueId,
        /// The agent who held it (offered or assigned), if any.
        agent: Option<AgentId>,
        /// Its last activity.
        last_activity: Timestamp,
    },
    /// The customer stopped waiting before an agent was assigned (the queue's
    /// `abandon_after_secs` passed, or they left): the conversation ends, its place frees, and
    /// the router forgets it.
    Abandoned {
        /// The conversation.
        conversation: ConversationId,
        /// The queue it waited in.
        queue: QueueId,
        /// The agent it was offered to at that moment, if any.
        agent: Option<AgentId>,
        /// When the customer started waiting (their first message of this contact).
        waiting_since: Timestamp,
        /// `patience` (the queue's abandon time passed) or `customer_left`.
        reason: String,
    },
    /// A service-level target is close to being missed (the queue's `at_risk_percent` of it
    /// passed): a supervisor can still act before `due_at`.
    SlaAtRisk {
        /// The conversation.
        conversation: ConversationId,
        /// The queue.
        queue: QueueId,
        /// Which target.
        sla: SlaKind,
        /// When it will be missed.
        due_at: Timestamp,
    },
    /// An online agent let `away_after_missed_offers` offers in a row time out and was set
    /// away, so customers stop waiting on offers nobody sees.
    AgentAway {
        /// The agent.
        agent: AgentId,
        /// Why.
        reason: String,
    },
    /// An agent's figures of the day that just ended (in the tenant's `kpi_timezone`), one
    /// per agent who was staffed or handled anything, for CRMs and workforce tools.
    AgentDay {
        /// The agent.
        agent: AgentId,
        /// The day, `YYYY-MM-DD`.
        day: String,
        /// The figures.
        kpis: crate::AgentKpis,
    },
    /// The queue's CSAT survey goes to the customer of a conversation just resolved: the
    /// router also publishes `question` as an `omni.message.send` (marked `csat_survey`) on
    /// the customer's channel.
    CsatSurvey {
        /// The conversation.
        conversation: ConversationId,
        /// The customer's channel.
        channel: omni_core::ChannelRef,
        /// The channel's id for the customer.
        recipient: String,
        /// The question.
        question: String,
        /// Answers count until then.
        answer_until: Timestamp,
    },
    /// The customer answered the survey: the score is the conversation's CSAT.
    CsatAnswered {
        /// The conversation.
        conversation: ConversationId,
        /// The score, 1-5.
        score: u8,
        /// The agent who handled the conversation, if still known.
        agent: Option<AgentId>,
    },
    /// A resolved conversation was reopened.
    Reopened {
        /// The conversation.
        conversation: ConversationId,
    },
    /// A command could not be applied; state is unchanged.
    Rejected {
        /// The conversation, if the command named one.
        conversation: Option<ConversationId>,
        /// Why.
        reason: String,
    },
}

/// What a measurement is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservationKind {
    /// Seconds from the first customer message to the first agent reply.
    FirstResponse,
    /// Seconds from a customer message to the agent reply that answered it (ART).
    Response,
    /// Seconds from arrival in the queue to assignment.
    QueueWait,
    /// Seconds from the first customer message to resolution.
    Resolution,
    /// A service level was missed (value 1).
    SlaBreach(SlaKind),
    /// An offer was declined (value 1).
    OfferDeclined,
    /// An offer timed out (value 1).
    OfferTimedOut,
    /// A new contact arrived: a conversation, or a customer writing again after the reopen
    /// window (value 1). Resolution rate is resolved over created.
    Created,
    /// A conversation was resolved (value 1).
    Resolved,
    /// A conversation was reopened (value 1).
    Reopened,
    /// A CSAT score (value 1–5).
    Csat,
    /// Seconds from assignment to resolution (average handling time is its mean; wrap-up is
    /// counted apart).
    Handling,
    /// Seconds an agent spent in after-conversation work (wrap-up) after a resolution.
    WrapUp,
    /// A customer stopped waiting before assignment (value 1): abandon rate is abandoned over
    /// created.
    Abandoned,
    /// A service level came close to being missed (value 1).
    SlaAtRisk(SlaKind),
    /// An agent was set away for letting offers time out (value 1).
    AgentAway,
}

/// A measurement with the bounded labels it is recorded under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// What.
    pub kind: ObservationKind,
    /// The conversation's queue.
    pub queue: QueueId,
    /// The conversation's channel kind.
    pub channel: ChannelKind,
    /// Seconds, a score, or 1 for counts.
    pub value: f64,
}

impl Explanation {
    pub(crate) fn new(strategy: Strategy, eligible: usize, reason: String) -> Self {
        Self {
            strategy: strategy.as_str().to_owned(),
            eligible,
            reason,
        }
    }
}
