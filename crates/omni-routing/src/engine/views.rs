//! Read-only views of the engine for the agent/operator API and gauges.

use omni_core::ConversationId;

use crate::model::{AgentId, Presence, QueueId, Timestamp};

use super::conversation::State;
use super::Engine;

/// A queue as the agent/operator API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueView {
    /// The queue.
    pub id: QueueId,
    /// Conversations waiting.
    pub waiting: usize,
    /// Conversations offered to an agent, not yet accepted.
    pub offered: usize,
    /// Conversations assigned.
    pub assigned: usize,
    /// Arrival of the oldest waiting conversation.
    pub oldest_arrival: Option<Timestamp>,
    /// Agents available with the queue's skills.
    pub available_agents: usize,
}

/// An agent as the agent/operator API shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    /// The day's figures so far ([`crate::AgentDay::at`] gives the KPIs at a given time).
    pub today: crate::AgentDay,
    /// The agent.
    pub id: AgentId,
    /// Presence.
    pub presence: Presence,
    /// Open (offered + assigned) conversations.
    pub open: usize,
    /// Resolved conversations whose wrap-up still holds a place.
    pub wrap_up: usize,
    /// Total capacity.
    pub capacity: u32,
}

/// How much the engine holds: what retention keeps bounded (for a gauge, and for tests that
/// memory is given back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSize {
    /// Agents (removed agents are forgotten at once).
    pub agents: usize,
    /// Conversations: open ones, and resolved ones within `resolved_retention_secs`.
    pub conversations: usize,
    /// Contacts with a sticky agent within `sticky_window_secs`.
    pub sticky_contacts: usize,
    /// Pending timers.
    pub timers: usize,
}

/// A conversation's routing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationView {
    /// The queue it is (or was last) in.
    pub queue: QueueId,
    /// `waiting`, `offered`, `assigned` or `resolved`.
    pub state: &'static str,
    /// The agent it is offered or assigned to.
    pub agent: Option<AgentId>,
    /// Original arrival time.
    pub arrival: Timestamp,
    /// Priority.
    pub priority: i32,
}

impl Engine {
    /// Every queue with its depth, oldest wait and available agents.
    pub fn queue_views(&self) -> Vec<QueueView> {
        let mut offered = vec![0usize; self.queues.len()];
        let mut assigned = vec![0usize; self.queues.len()];
        for c in self.conversations.values() {
            match c.state {
                State::Offered { .. } => offered[c.queue] += 1,
                State::Assigned { .. } => assigned[c.queue] += 1,
                _ => {}
            }
        }
        self.queues
            .iter()
            .enumerate()
            .map(|(i, q)| QueueView {
                id: q.id.clone(),
                waiting: q.waiting.len(),
                offered: offered[i],
                assigned: assigned[i],
                oldest_arrival: q
                    .waiting
                    .classes()
                    .flat_map(|(_, set)| set.iter())
                    .map(|(_, id)| self.conversations[id].arrival)
                    .min(),
                available_agents: q.available_agents,
            })
            .collect()
    }

    /// Every agent with presence and load, by id.
    pub fn agent_views(&self) -> Vec<AgentView> {
        let mut v: Vec<AgentView> = self
            .agents
            .values()
            .filter(|a| !a.removed)
            .map(|a| AgentView {
                id: a.id.clone(),
                presence: a.presence,
                open: a.open.len(),
                wrap_up: a.wrap_up.len(),
                today: a.day,
                capacity: a.capacity,
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// How much the engine holds.
    pub fn size(&self) -> StateSize {
        StateSize {
            agents: self.agents.len(),
            conversations: self.conversations.len(),
            sticky_contacts: self.sticky.len(),
            timers: self.timers.len(),
        }
    }

    /// A conversation's routing state, if known.
    pub fn conversation(&self, id: ConversationId) -> Option<ConversationView> {
        let c = self.conversations.get(&id)?;
        let (state, agent) = match c.state {
            State::Waiting => ("waiting", None),
            State::Offered { agent, .. } => ("offered", Some(agent)),
            State::Assigned { agent } => ("assigned", Some(agent)),
            State::Resolved { .. } => ("resolved", None),
        };
        Some(ConversationView {
            queue: self.queues[c.queue].id.clone(),
            state,
            agent: agent.map(|a| self.agents[a].id.clone()),
            arrival: c.arrival,
            priority: c.priority,
        })
    }
}
