//! The engine's state as records, for the router's compacted changelog: one record per agent,
//! conversation and queue cursor, keyed so compaction keeps only the latest of each. After every
//! step the runner writes [`Engine::take_changes`]; a new owner of a tenant rebuilds the engine
//! with [`Engine::restore`] from the latest records.

use omni_core::{ChannelKind, ChannelRef, ConversationId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use super::{Agent, Conversation, Engine, QueueIdx, SlaKindOrd, State, Timer};
use crate::config::RoutingConfig;
use crate::model::{AgentId, Presence, QueueId, Skill, Timestamp};
use crate::output::Explanation;
use crate::ConfigError;

/// An agent's durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent.
    pub id: AgentId,
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
    /// Last agent and when (sticky routing).
    pub last_agent: Option<(AgentId, Timestamp)>,
}

/// A queue's durable cursor (round robin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRecord {
    /// The queue.
    pub id: QueueId,
    /// The agent who got the last round-robin assignment.
    pub rr_last: Option<AgentId>,
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
}

/// A change to write: the record's key within the tenant, and the new record or `None` to
/// delete it (a compaction tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// `agent/<id>`, `conversation/<uuid>` or `queue/<id>`.
    pub key: String,
    /// The record, or `None` when the entity is gone.
    pub entry: Option<StateEntry>,
}

impl StateEntry {
    /// The record's key within its tenant.
    pub fn key(&self) -> String {
        match self {
            StateEntry::Agent(a) => format!("agent/{}", a.id),
            StateEntry::Conversation(c) => format!("conversation/{}", c.id),
            StateEntry::Queue(q) => format!("queue/{}", q.id),
        }
    }
}

impl Engine {
    /// The records of every entity changed since the last call, in a stable order.
    pub fn take_changes(&mut self) -> Vec<StateChange> {
        let mut out = Vec::new();
        for a in std::mem::take(&mut self.dirty_agents) {
            let agent = &self.agents[a as usize];
            let key = format!("agent/{}", agent.id);
            let entry = (!agent.removed).then(|| StateEntry::Agent(self.agent_record(a)));
            out.push(StateChange { key, entry });
        }
        for id in std::mem::take(&mut self.dirty_convs) {
            let key = format!("conversation/{id}");
            let entry = self
                .conversations
                .get(&id)
                .map(|c| StateEntry::Conversation(Box::new(self.conversation_record(id, c))));
            out.push(StateChange { key, entry });
        }
        for q in std::mem::take(&mut self.dirty_queues) {
            let queue = &self.queues[q];
            out.push(StateChange {
                key: format!("queue/{}", queue.id),
                entry: Some(StateEntry::Queue(QueueRecord {
                    id: queue.id.clone(),
                    rr_last: queue.rr_last.map(|a| self.agents[a as usize].id.clone()),
                })),
            });
        }
        out
    }

    /// Every entity's record (a full snapshot).
    pub fn snapshot(&self) -> Vec<StateEntry> {
        let mut out: Vec<StateEntry> = (0..self.agents.len())
            .filter(|a| !self.agents[*a].removed)
            .map(|a| StateEntry::Agent(self.agent_record(a as u32)))
            .collect();
        let mut ids: Vec<&ConversationId> = self.conversations.keys().collect();
        ids.sort();
        for id in ids {
            out.push(StateEntry::Conversation(Box::new(
                self.conversation_record(*id, &self.conversations[id]),
            )));
        }
        for q in &self.queues {
            out.push(StateEntry::Queue(QueueRecord {
                id: q.id.clone(),
                rr_last: q.rr_last.map(|a| self.agents[a as usize].id.clone()),
            }));
        }
        out
    }

    fn agent_record(&self, a: u32) -> AgentRecord {
        let agent = &self.agents[a as usize];
        AgentRecord {
            id: agent.id.clone(),
            presence: agent.presence,
            skills: agent
                .skills
                .iter()
                .map(|(s, l)| (self.skill_names[*s as usize].clone(), *l))
                .collect(),
            capacity: agent.capacity,
            channel_capacity: agent.channel_capacity.clone(),
            idle_since: agent.idle_since,
            open: agent.open.clone(),
        }
    }

    fn conversation_record(&self, id: ConversationId, c: &Conversation) -> ConversationRecord {
        let name = |a: u32| self.agents[a as usize].id.clone();
        ConversationRecord {
            id,
            channel: c.channel.clone(),
            sticky_key: c.sticky_key.clone(),
            queue: self.queues[c.queue].id.clone(),
            priority: c.priority,
            extra_skills: c
                .extra_skills
                .iter()
                .map(|(s, l)| (self.skill_names[*s as usize].clone(), *l))
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
            last_agent: c.last_agent.map(|(a, t)| (name(a), t)),
        }
    }

    /// Rebuilds an engine from the latest records of a tenant (as compaction leaves them) at
    /// time `now` (the time of the last input applied). Records naming unknown queues or agents
    /// are dropped or repaired (conversation back to waiting in the default queue), so a config
    /// change between runs cannot wedge recovery.
    pub fn restore(
        config: RoutingConfig,
        entries: impl IntoIterator<Item = StateEntry>,
        now: Timestamp,
    ) -> Result<Engine, ConfigError> {
        let mut e = Engine::new(config)?;
        let mut agents = Vec::new();
        let mut convs = Vec::new();
        let mut queues = Vec::new();
        for entry in entries {
            match entry {
                StateEntry::Agent(a) => agents.push(a),
                StateEntry::Conversation(c) => convs.push(*c),
                StateEntry::Queue(q) => queues.push(q),
            }
        }
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        convs.sort_by_key(|c| c.id);
        for a in &agents {
            let skills = e.intern_skills(&a.skills);
            let queues_ok: Vec<QueueIdx> = (0..e.queues.len())
                .filter(|q| {
                    e.queues[*q].required.iter().all(|(s, l)| {
                        skills
                            .binary_search_by_key(s, |(x, _)| *x)
                            .is_ok_and(|i| skills[i].1 >= *l)
                    })
                })
                .collect();
            let idx = u32::try_from(e.agents.len()).unwrap_or(u32::MAX);
            e.agents.push(Agent {
                id: a.id.clone(),
                // Indexed (and counted as available) below, once their conversations are known.
                removed: true,
                presence: a.presence,
                skills,
                capacity: a.capacity,
                channel_capacity: a.channel_capacity.clone(),
                open: BTreeMap::new(),
                open_by_kind: BTreeMap::new(),
                idle_since: a.idle_since,
                queue_bits: super::queue_bits(&queues_ok, e.queues.len()),
                queues: queues_ok,
                indexed: None,
            });
            e.agent_index.insert(a.id.clone(), idx);
        }
        let taken: BTreeMap<(&AgentId, ConversationId), Timestamp> = agents
            .iter()
            .flat_map(|a| a.open.iter().map(move |(c, t)| ((&a.id, *c), *t)))
            .collect();
        for r in convs {
            let extra = e.intern_skills(&r.extra_skills);
            let queue = e.queue_index.get(&r.queue).copied();
            let agent_of = |id: &AgentId| e.agent_index.get(id).copied();
            let mut state = match &r.state {
                StateRecord::Waiting => State::Waiting,
                StateRecord::Offered { agent, expires } => match agent_of(agent) {
                    Some(a) => State::Offered {
                        agent: a,
                        expires: *expires,
                    },
                    None => State::Waiting,
                },
                StateRecord::Assigned { agent } => match agent_of(agent) {
                    Some(a) => State::Assigned { agent: a },
                    None => State::Waiting,
                },
                StateRecord::Resolved { at } => State::Resolved { at: *at },
            };
            let queue = match queue {
                Some(q) => q,
                None => {
                    if !matches!(state, State::Resolved { .. }) {
                        state = State::Waiting;
                    }
                    e.default_queue
                }
            };
            let conv = Conversation {
                channel: r.channel.clone(),
                sticky_key: r.sticky_key.clone(),
                queue,
                priority: r.priority,
                extra_skills: extra,
                arrival: r.arrival,
                created_at: r.created_at,
                entered_queue_at: r.entered_queue_at,
                queue_epoch: r.queue_epoch,
                state: state.clone(),
                relax: r.relax,
                next_step: r.next_step,
                declined: r.declined.iter().filter_map(&agent_of).collect(),
                first_reply_at: r.first_reply_at,
                awaiting_since: r.awaiting_since,
                awaiting_seq: r.awaiting_seq,
                offer_seq: r.offer_seq,
                episode: r.episode,
                pending_explanation: r.pending_explanation.clone(),
                after_hours_noted: r.after_hours_noted,
                last_agent: r
                    .last_agent
                    .as_ref()
                    .and_then(|(a, t)| agent_of(a).map(|a| (a, *t))),
            };
            let id = r.id;
            match state {
                State::Offered { agent, .. } | State::Assigned { agent } => {
                    let since = taken
                        .get(&(&e.agents[agent as usize].id, id))
                        .copied()
                        .unwrap_or(r.arrival);
                    let ag = &mut e.agents[agent as usize];
                    ag.open.insert(id, since);
                    *ag.open_by_kind.entry(conv.channel.kind).or_insert(0) += 1;
                }
                State::Waiting => {
                    let key = conv.wait_key(e.aging_ms);
                    e.queues[queue].waiting.insert((key, id));
                    if conv.relax > 0 {
                        e.relaxed.insert((key, id));
                    }
                }
                State::Resolved { .. } => {}
            }
            if let Some((a, t)) = conv.last_agent {
                let newer = e
                    .sticky
                    .get(&conv.sticky_key)
                    .is_none_or(|(_, old)| *old < t);
                if newer {
                    e.sticky.insert(conv.sticky_key.clone(), (a, t));
                }
            }
            e.conversations.insert(id, conv);
        }
        for q in queues {
            if let (Some(&qi), Some(agent)) = (e.queue_index.get(&q.id), q.rr_last.as_ref()) {
                e.queues[qi].rr_last = e.agent_index.get(agent).copied();
            }
        }
        // Offline or removed agents hold nothing; agents over capacity after a config change
        // give back their newest conversations.
        let mut out = Vec::new();
        for a in 0..e.agents.len() {
            let a = u32::try_from(a).unwrap_or(u32::MAX);
            e.update_agent(a, |ag| ag.removed = false);
            if e.agents[a as usize].presence == Presence::Offline {
                e.requeue_agent_conversations(now, a, "agent offline at recovery", &mut out);
            }
            e.enforce_capacity(now, a, &mut out);
        }
        e.rebuild_timers(now);
        e.dirty_agents.clear();
        e.dirty_convs.clear();
        e.dirty_queues.clear();
        Ok(e)
    }

    /// Recomputes every timer from the conversations' state (after a restore).
    fn rebuild_timers(&mut self, now: Timestamp) {
        let mut timers = Vec::new();
        let mut ids: Vec<ConversationId> = self.conversations.keys().copied().collect();
        ids.sort();
        let mut closed_with_waiting: BTreeSet<QueueIdx> = BTreeSet::new();
        for id in ids {
            let c = &self.conversations[&id];
            let q = &self.queues[c.queue];
            let resolved = matches!(c.state, State::Resolved { .. });
            match c.state {
                State::Offered { expires, .. } => timers.push((
                    expires,
                    Timer::OfferExpiry {
                        conv: id,
                        seq: c.offer_seq,
                    },
                )),
                State::Waiting => {
                    if q.cfg.hours.as_ref().is_some_and(|h| !h.is_open(now)) {
                        closed_with_waiting.insert(c.queue);
                    }
                }
                State::Resolved { at } => timers.push((
                    at.plus_secs(self.config.reopen_window_secs),
                    Timer::Forget {
                        conv: id,
                        episode: c.episode,
                    },
                )),
                State::Assigned { .. } => {}
            }
            if !resolved {
                // Pending overflow steps fire whenever the conversation is waiting again
                // (after a decline or requeue) in the same queue entry, as in the original.
                if let Some(step) = q.cfg.overflow.get(c.next_step) {
                    timers.push((
                        c.entered_queue_at.plus_secs(step.after_secs),
                        Timer::Overflow {
                            conv: id,
                            epoch: c.queue_epoch,
                            step: c.next_step,
                        },
                    ));
                }
                if let (Some(s), None) = (q.cfg.sla.first_response_secs, c.first_reply_at) {
                    timers.push((
                        c.created_at.plus_secs(s),
                        Timer::Sla {
                            conv: id,
                            kind: SlaKindOrd::First,
                            seq: c.episode,
                        },
                    ));
                }
                if let (Some(s), Some(_), Some(since)) = (
                    q.cfg.sla.next_response_secs,
                    c.first_reply_at,
                    c.awaiting_since,
                ) {
                    timers.push((
                        since.plus_secs(s),
                        Timer::Sla {
                            conv: id,
                            kind: SlaKindOrd::Next,
                            seq: c.awaiting_seq,
                        },
                    ));
                }
                if let Some(s) = q.cfg.sla.resolution_secs {
                    timers.push((
                        c.created_at.plus_secs(s),
                        Timer::Sla {
                            conv: id,
                            kind: SlaKindOrd::Resolution,
                            seq: c.episode,
                        },
                    ));
                }
            }
        }
        for q in closed_with_waiting {
            if let Some(at) = self.queues[q]
                .cfg
                .hours
                .as_ref()
                .and_then(|h| h.next_open(now))
            {
                self.queues[q].open_timer = Some(at);
                timers.push((at, Timer::QueueOpen { queue: q }));
            }
        }
        for (at, t) in timers {
            self.schedule(at, t);
        }
    }
}
