//! The engine's state as records, for the router's compacted changelog: one record per agent,
//! conversation and queue cursor, keyed so compaction keeps only the latest of each. After every
//! step the runner writes [`Engine::take_changes`]; a new owner of a tenant rebuilds the engine
//! with [`Engine::restore`] from the latest records.

use omni_core::{ChannelKind, ChannelRef, ConversationId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use crate::model::{AgentId, Presence, QueueId, Skill, Timestamp};
use crate::output::Explanation;

use super::conversation::{Conversation, State};
use super::{AgentIdx, Engine, QueueIdx};

/// An agent's durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent.
    pub id: AgentId,
    /// The agent's number: given in creation order and never reused. Ties between agents
    /// (equal idle time, equal load) and round-robin turns go by it, so a restored engine
    /// decides as the live one did. 0 in records written before agents were numbered (they
    /// are numbered after all others, by id).
    #[serde(default)]
    pub seq: u64,
    /// Presence.
    pub presence: Presence,
    /// Skills.
    pub skills: BTreeMap<Skill, u8>,
    /// Total capacity.
    pub capacity: u32,
    /// Per channel kind capacity.
    pub channel_capacity: BTreeMap<ChannelKind, u32>,
    /// Last assignment or log-in.
    pub idle_since: Timestamp,
    /// When each open conversation was taken.
    pub open: BTreeMap<ConversationId, Timestamp>,
    /// Resolved conversations whose wrap-up still holds a place.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wrap_up: BTreeMap<ConversationId, WrapUpRecord>,
    /// Offers in a row the agent let time out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub missed_offers: u32,
    /// The day's figures (`None` in records written before they were kept: they start then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub today: Option<crate::AgentDay>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A wrap-up in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrapUpRecord {
    /// When it started (the resolution).
    pub since: Timestamp,
    /// When it ends unless the agent says ready first.
    pub until: Timestamp,
    /// The conversation's channel kind (the place it holds).
    pub kind: ChannelKind,
    /// The conversation's queue.
    pub queue: QueueId,
}

/// Where a conversation stands, with agents named by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StateRecord {
    /// In its queue.
    Waiting,
    /// Offered to `agent` until `expires`.
    Offered {
        /// The agent.
        agent: AgentId,
        /// Offer deadline.
        expires: Timestamp,
    },
    /// Assigned to `agent`.
    Assigned {
        /// The agent.
        agent: AgentId,
    },
    /// Resolved at `at`.
    Resolved {
        /// When.
        at: Timestamp,
    },
}

/// A conversation's durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRecord {
    /// The conversation.
    pub id: ConversationId,
    /// Its channel.
    pub channel: ChannelRef,
    /// Sticky-routing key of its contact.
    pub sticky_key: String,
    /// Its queue.
    pub queue: QueueId,
    /// Priority.
    pub priority: i32,
    /// Rule-added skills.
    pub extra_skills: BTreeMap<Skill, u8>,
    /// Original arrival.
    pub arrival: Timestamp,
    /// Start of the contact.
    pub created_at: Timestamp,
    /// Entry into the current queue.
    pub entered_queue_at: Timestamp,
    /// Queue entries so far.
    pub queue_epoch: u64,
    /// Where it stands.
    pub state: StateRecord,
    /// Proficiency relaxation from overflow.
    pub relax: u8,
    /// The next overflow step.
    pub next_step: usize,
    /// Agents who declined it.
    pub declined: Vec<AgentId>,
    /// First agent reply.
    pub first_reply_at: Option<Timestamp>,
    /// Oldest unanswered customer message.
    pub awaiting_since: Option<Timestamp>,
    /// Customer messages awaited so far.
    pub awaiting_seq: u64,
    /// Offers so far.
    pub offer_seq: u64,
    /// Contacts (new episodes) so far.
    pub episode: u64,
    /// Why the pending offer's agent was chosen.
    pub pending_explanation: Option<Explanation>,
    /// Whether the after-hours notice was given.
    pub after_hours_noted: bool,
    /// Last agent and when: read from records written before sticky agents had records of
    /// their own ([`StickyRecord`]); never written now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_agent: Option<(AgentId, Timestamp)>,
    /// The pending timers its state alone does not determine; `None` in records written before
    /// they were recorded (the timers are then recomputed from the state, as then).
    #[serde(default)]
    pub deadlines: Option<DeadlinesRecord>,
    /// The last customer message, agent reply or command naming it (expiry counts from here);
    /// `None` in records written before conversations expired (restore counts from then).
    #[serde(default)]
    pub last_activity: Option<Timestamp>,
    /// When its agent was assigned in this contact (`None`: never yet, or a record written
    /// before handling time was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_at: Option<Timestamp>,
    /// The agent it was last assigned to (a later CSAT score is theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_by: Option<AgentId>,
    /// Answers to the CSAT survey count until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survey_until: Option<Timestamp>,
}

/// A conversation's pending timers (each `None` when not scheduled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeadlinesRecord {
    /// The next overflow step (`next_step` of queue entry `queue_epoch`).
    pub overflow: Option<Timestamp>,
    /// The first-response target.
    pub first_response: Option<Timestamp>,
    /// The next-response target of the unanswered customer message.
    pub next_response: Option<Timestamp>,
    /// The resolution target.
    pub resolution: Option<Timestamp>,
    /// The at-risk warning of the first-response target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_response_at_risk: Option<Timestamp>,
    /// The at-risk warning of the next-response target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_response_at_risk: Option<Timestamp>,
    /// The at-risk warning of the resolution target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution_at_risk: Option<Timestamp>,
    /// Offering it again to the agents who declined it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declined_retry: Option<Timestamp>,
    /// The customer's patience running out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abandon: Option<Timestamp>,
}

/// A queue's durable cursor (round robin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRecord {
    /// The queue.
    pub id: QueueId,
    /// The agent who got the last round-robin assignment (if they still exist).
    pub rr_last: Option<AgentId>,
    /// That agent's number ([`AgentRecord::seq`]): the cursor, which stays put when the agent
    /// is removed. `None` in records written before agents were numbered.
    #[serde(default)]
    pub rr_seq: Option<u64>,
    /// The last assignments out of the queue (its throughput, for wait estimates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_assignments: Vec<Timestamp>,
}

/// A contact's sticky agent: whom a new conversation of the contact is offered first, while
/// `at` is within the sticky window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickyRecord {
    /// The contact's sticky key (`<channel kind>/<account>/<contact>`).
    pub key: String,
    /// Their last agent.
    pub agent: AgentId,
    /// When that agent was last assigned one of the contact's conversations.
    pub at: Timestamp,
}

/// Tenant-wide state: one record per tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantRecord {
    /// The number the next new agent gets ([`AgentRecord::seq`]).
    pub next_agent_seq: u64,
    /// Pending opening timers of closed queues (at most one per queue).
    pub queue_opens: BTreeMap<QueueId, Timestamp>,
    /// When the current KPI day ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kpi_day_end: Option<Timestamp>,
}

/// One changelog entry of a tenant's routing state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "entity", rename_all = "snake_case")]
pub enum StateEntry {
    /// An agent.
    Agent(AgentRecord),
    /// A conversation.
    Conversation(Box<ConversationRecord>),
    /// A queue cursor.
    Queue(QueueRecord),
    /// A contact's sticky agent.
    Sticky(StickyRecord),
    /// Tenant-wide counters and timers.
    Tenant(TenantRecord),
}

/// A change to write: the record's key within the tenant, and the new record or `None` to
/// delete it (a compaction tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// `agent/<id>`, `conversation/<uuid>`, `queue/<id>`, `sticky/<key>` or `tenant`.
    pub key: String,
    /// The record, or `None` when the entity is gone.
    pub entry: Option<StateEntry>,
}

/// The entities changed since the last [`Engine::take_changes`], by number or key: ordered
/// sets, so the records come out in a stable order.
#[derive(Debug, Clone, Default)]
pub(super) struct Changes {
    pub(super) agents: BTreeSet<AgentIdx>,
    /// Names of agents forgotten since then (their tombstones need the name).
    pub(super) forgotten_agents: BTreeMap<AgentIdx, AgentId>,
    pub(super) convs: BTreeSet<ConversationId>,
    pub(super) queues: BTreeSet<QueueIdx>,
    pub(super) sticky: BTreeSet<String>,
    /// The tenant record (agent numbering, queue opening timers) changed.
    pub(super) tenant: bool,
}

impl StateEntry {
    /// The record's key within its tenant.
    pub fn key(&self) -> String {
        match self {
            StateEntry::Agent(a) => format!("agent/{}", a.id),
            StateEntry::Conversation(c) => format!("conversation/{}", c.id),
            StateEntry::Queue(q) => format!("queue/{}", q.id),
            StateEntry::Sticky(s) => format!("sticky/{}", s.key),
            StateEntry::Tenant(_) => "tenant".to_owned(),
        }
    }
}

impl Engine {
    /// The records of every entity changed since the last call, in a stable order (agents by
    /// number, conversations by id, queues, sticky keys, the tenant record). The runner writes
    /// them after every step; after [`Engine::restore`] they hold what the restore repaired.
    pub fn take_changes(&mut self) -> Vec<StateChange> {
        let mut out = Vec::new();
        let mut forgotten = std::mem::take(&mut self.changes.forgotten_agents);
        for a in std::mem::take(&mut self.changes.agents) {
            match self.agents.get(a) {
                Some(agent) if !agent.removed => out.push(StateChange {
                    key: format!("agent/{}", agent.id),
                    entry: Some(StateEntry::Agent(self.agent_record(a))),
                }),
                Some(agent) => out.push(StateChange {
                    key: format!("agent/{}", agent.id),
                    entry: None,
                }),
                None => {
                    if let Some(id) = forgotten.remove(&a) {
                        out.push(StateChange {
                            key: format!("agent/{id}"),
                            entry: None,
                        });
                    }
                }
            }
        }
        for id in std::mem::take(&mut self.changes.convs) {
            let key = format!("conversation/{id}");
            let entry = self
                .conversations
                .get(&id)
                .map(|c| StateEntry::Conversation(Box::new(self.conversation_record(id, c))));
            out.push(StateChange { key, entry });
        }
        for q in std::mem::take(&mut self.changes.queues) {
            let record = self.queue_record(q);
            out.push(StateChange {
                key: format!("queue/{}", record.id),
                entry: Some(StateEntry::Queue(record)),
            });
        }
        for key in std::mem::take(&mut self.changes.sticky) {
            let entry = self.sticky.get(&key).map(|(a, at)| {
                StateEntry::Sticky(StickyRecord {
                    key: key.clone(),
                    agent: self.agents[*a].id.clone(),
                    at: *at,
                })
            });
            out.push(StateChange {
                key: format!("sticky/{key}"),
                entry,
            });
        }
        if std::mem::take(&mut self.changes.tenant) {
            out.push(StateChange {
                key: "tenant".to_owned(),
                entry: Some(StateEntry::Tenant(self.tenant_record())),
            });
        }
        out
    }

    /// Every entity's record (a full snapshot), in the order of [`Engine::take_changes`].
    /// Queues without a round-robin cursor have no record.
    pub fn snapshot(&self) -> Vec<StateEntry> {
        let mut out: Vec<StateEntry> = self
            .agents
            .numbers()
            .into_iter()
            .filter(|a| !self.agents[*a].removed)
            .map(|a| StateEntry::Agent(self.agent_record(a)))
            .collect();
        let mut ids: Vec<&ConversationId> = self.conversations.keys().collect();
        ids.sort();
        for id in ids {
            out.push(StateEntry::Conversation(Box::new(
                self.conversation_record(*id, &self.conversations[id]),
            )));
        }
        for q in 0..self.queues.len() {
            if self.queues[q].rr_last.is_some() || !self.queues[q].recent.is_empty() {
                out.push(StateEntry::Queue(self.queue_record(q)));
            }
        }
        let mut keys: Vec<&String> = self.sticky.keys().collect();
        keys.sort();
        for key in keys {
            let (a, at) = self.sticky[key];
            out.push(StateEntry::Sticky(StickyRecord {
                key: key.clone(),
                agent: self.agents[a].id.clone(),
                at,
            }));
        }
        out.push(StateEntry::Tenant(self.tenant_record()));
        out
    }

    fn tenant_record(&self) -> TenantRecord {
        TenantRecord {
            next_agent_seq: u64::from(self.agents.next),
            queue_opens: self
                .queues
                .iter()
                .filter_map(|q| q.open_timer.map(|at| (q.id.clone(), at)))
                .collect(),
            kpi_day_end: self.day_end,
        }
    }

    fn queue_record(&self, q: QueueIdx) -> QueueRecord {
        let queue = &self.queues[q];
        QueueRecord {
            id: queue.id.clone(),
            rr_last: queue
                .rr_last
                .and_then(|a| self.agents.get(a))
                .map(|a| a.id.clone()),
            rr_seq: queue.rr_last.map(u64::from),
            recent_assignments: queue.recent.iter().copied().collect(),
        }
    }

    fn agent_record(&self, a: AgentIdx) -> AgentRecord {
        let agent = &self.agents[a];
        AgentRecord {
            id: agent.id.clone(),
            seq: u64::from(a),
            presence: agent.presence,
            skills: agent
                .skills
                .iter()
                .map(|(s, l)| (self.skills.names[*s as usize].clone(), *l))
                .collect(),
            capacity: agent.capacity,
            channel_capacity: agent.channel_capacity.clone(),
            idle_since: agent.idle_since,
            open: agent.open.clone(),
            wrap_up: agent
                .wrap_up
                .iter()
                .map(|(id, w)| {
                    let record = WrapUpRecord {
                        since: w.since,
                        until: w.until,
                        kind: w.kind,
                        queue: self.queues[w.queue].id.clone(),
                    };
                    (*id, record)
                })
                .collect(),
            missed_offers: agent.missed_offers,
            today: Some(agent.day),
        }
    }

    fn conversation_record(&self, id: ConversationId, c: &Conversation) -> ConversationRecord {
        let name = |a: AgentIdx| self.agents[a].id.clone();
        ConversationRecord {
            id,
            channel: c.channel.clone(),
            sticky_key: c.sticky_key.clone(),
            queue: self.queues[c.queue].id.clone(),
            priority: c.priority,
            extra_skills: c
                .extra_skills
                .iter()
                .map(|(s, l)| (self.skills.names[*s as usize].clone(), *l))
                .collect(),
            arrival: c.arrival,
            created_at: c.created_at,
            entered_queue_at: c.entered_queue_at,
            queue_epoch: c.queue_epoch,
            state: match &c.state {
                State::Waiting => StateRecord::Waiting,
                State::Offered { agent, expires } => StateRecord::Offered {
                    agent: name(*agent),
                    expires: *expires,
                },
                State::Assigned { agent } => StateRecord::Assigned {
                    agent: name(*agent),
                },
                State::Resolved { at } => StateRecord::Resolved { at: *at },
            },
            relax: c.relax,
            next_step: c.next_step,
            declined: c.declined.iter().map(|a| name(*a)).collect(),
            first_reply_at: c.first_reply_at,
            awaiting_since: c.awaiting_since,
            awaiting_seq: c.awaiting_seq,
            offer_seq: c.offer_seq,
            episode: c.episode,
            pending_explanation: c.pending_explanation.clone(),
            after_hours_noted: c.after_hours_noted,
            last_agent: None,
            deadlines: Some(DeadlinesRecord {
                overflow: c.deadlines.overflow,
                first_response: c.deadlines.first,
                next_response: c.deadlines.next,
                resolution: c.deadlines.resolution,
                first_response_at_risk: c.deadlines.first_risk,
                next_response_at_risk: c.deadlines.next_risk,
                resolution_at_risk: c.deadlines.resolution_risk,
                declined_retry: c.deadlines.retry,
                abandon: c.deadlines.abandon,
            }),
            last_activity: Some(c.last_activity),
            assigned_at: c.assigned_at,
            handled_by: c
                .handled_by
                .and_then(|a| self.agents.get(a))
                .map(|a| a.id.clone()),
            survey_until: c.survey_until,
        }
    }
}
