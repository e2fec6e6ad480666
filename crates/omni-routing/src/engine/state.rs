//! The engine's state as records, for the router's compacted changelog: one record per agent,
//! conversation and queue cursor, keyed so compaction keeps only the latest of each. After every
//! step the runner writes [`Engine::take_changes`]; a new owner of a tenant rebuilds the engine
//! with [`Engine::restore`] from the latest records.

use omni_core::{ChannelKind, ChannelRef, ConversationId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use super::{
    Agent, AgentIdx, Conversation, DeadlineKind, Deadlines, Engine, QueueIdx, State, Timer,
};
use crate::config::RoutingConfig;
use crate::model::{AgentId, Presence, QueueId, Skill, Timestamp};
use crate::output::{Explanation, Output, RoutingEvent};
use crate::ConfigError;

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
        let mut forgotten = std::mem::take(&mut self.forgotten_agents);
        for a in std::mem::take(&mut self.dirty_agents) {
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
        for id in std::mem::take(&mut self.dirty_convs) {
            let key = format!("conversation/{id}");
            let entry = self
                .conversations
                .get(&id)
                .map(|c| StateEntry::Conversation(Box::new(self.conversation_record(id, c))));
            out.push(StateChange { key, entry });
        }
        for q in std::mem::take(&mut self.dirty_queues) {
            let record = self.queue_record(q);
            out.push(StateChange {
                key: format!("queue/{}", record.id),
                entry: Some(StateEntry::Queue(record)),
            });
        }
        for key in std::mem::take(&mut self.dirty_sticky) {
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
        if std::mem::take(&mut self.dirty_meta) {
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
            if self.queues[q].rr_last.is_some() {
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
            next_agent_seq: u64::from(self.next_agent),
            queue_opens: self
                .queues
                .iter()
                .filter_map(|q| q.open_timer.map(|at| (q.id.clone(), at)))
                .collect(),
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
                .map(|(s, l)| (self.skill_names[*s as usize].clone(), *l))
                .collect(),
            capacity: agent.capacity,
            channel_capacity: agent.channel_capacity.clone(),
            idle_since: agent.idle_since,
            open: agent.open.clone(),
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
            last_agent: None,
            deadlines: Some(DeadlinesRecord {
                overflow: c.deadlines.overflow,
                first_response: c.deadlines.first,
                next_response: c.deadlines.next,
                resolution: c.deadlines.resolution,
            }),
            last_activity: Some(c.last_activity),
        }
    }

    /// Rebuilds an engine from the latest record of each key of a tenant (as compaction leaves
    /// them) at time `now` (the time of the last input applied).
    ///
    /// From the records of a consistent state the result is the engine that wrote them, in
    /// every respect that decides anything: agent numbers, round-robin cursors, sticky agents,
    /// every pending timer (from the records' deadlines), so the restored engine answers every
    /// later input exactly as the live one would. The returned outputs are then empty, and so
    /// is [`Engine::take_changes`].
    ///
    /// Records that do not fit (a config change between runs, an older writer) are repaired
    /// rather than refused, so recovery cannot wedge: a conversation in an unknown queue waits
    /// in the default queue; one held by an unknown agent, an offline agent or an agent over a
    /// lowered capacity is requeued and routed. Those repairs are decisions like any other:
    /// their events are returned (the runner publishes them) and their records are left in
    /// [`Engine::take_changes`] (the runner writes them).
    pub fn restore(
        config: RoutingConfig,
        entries: impl IntoIterator<Item = StateEntry>,
        now: Timestamp,
    ) -> Result<(Engine, Vec<Output>), ConfigError> {
        let mut e = Engine::new(config)?;
        let mut agents = Vec::new();
        let mut convs = Vec::new();
        let mut queues = Vec::new();
        let mut sticky = Vec::new();
        let mut tenant = None;
        for entry in entries {
            match entry {
                StateEntry::Agent(a) => agents.push(a),
                StateEntry::Conversation(c) => convs.push(*c),
                StateEntry::Queue(q) => queues.push(q),
                StateEntry::Sticky(s) => sticky.push(s),
                StateEntry::Tenant(t) => tenant = Some(t),
            }
        }
        // Numbered agents in their creation order; agents from older records after them, by id.
        agents.sort_by(|a, b| (a.seq == 0, a.seq, &a.id).cmp(&(b.seq == 0, b.seq, &b.id)));
        let mut next = tenant.as_ref().map_or(1, |t| t.next_agent_seq.max(1));
        let mut repaired_agents = BTreeSet::new();
        for a in &agents {
            let number = if a.seq == 0 || e.agents.get(seq_number(a.seq)).is_some() {
                repaired_agents.insert(next);
                next += 1;
                next - 1
            } else {
                a.seq
            };
            next = next.max(number + 1);
            let idx = seq_number(number);
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
            if let Some(old) = e.agent_index.insert(a.id.clone(), idx) {
                // Two records for one id cannot come from one key; keep the newer number.
                e.agents.remove(old);
            }
            e.agents.insert(
                idx,
                Agent {
                    id: a.id.clone(),
                    // Indexed (and counted as available) below, once their conversations are
                    // known.
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
                },
            );
        }
        let meta_changed = tenant
            .as_ref()
            .map_or(next != 1, |t| t.next_agent_seq != next);
        e.next_agent = seq_number(next);
        let taken: BTreeMap<(&AgentId, ConversationId), Timestamp> = agents
            .iter()
            .flat_map(|a| a.open.iter().map(move |(c, t)| ((&a.id, *c), *t)))
            .collect();
        let mut lost_agent: Vec<(ConversationId, AgentId)> = Vec::new();
        let mut repaired_convs = BTreeSet::new();
        let mut legacy_sticky: BTreeMap<String, (AgentIdx, Timestamp)> = BTreeMap::new();
        convs.sort_by_key(|c| c.id);
        for r in convs {
            let id = r.id;
            let extra = e.intern_skills(&r.extra_skills);
            let agent_of = |name: &AgentId| e.agent_index.get(name).copied();
            let mut state = match &r.state {
                StateRecord::Waiting => State::Waiting,
                StateRecord::Offered { agent, expires } => match agent_of(agent) {
                    Some(a) => State::Offered {
                        agent: a,
                        expires: *expires,
                    },
                    None => {
                        lost_agent.push((id, agent.clone()));
                        State::Waiting
                    }
                },
                StateRecord::Assigned { agent } => match agent_of(agent) {
                    Some(a) => State::Assigned { agent: a },
                    None => {
                        lost_agent.push((id, agent.clone()));
                        State::Waiting
                    }
                },
                StateRecord::Resolved { at } => State::Resolved { at: *at },
            };
            let declined: BTreeSet<AgentIdx> = r.declined.iter().filter_map(agent_of).collect();
            if let Some((a, t)) = &r.last_agent {
                if let Some(a) = agent_of(a) {
                    let newer = legacy_sticky
                        .get(&r.sticky_key)
                        .is_none_or(|(_, old)| *old < *t);
                    if newer {
                        legacy_sticky.insert(r.sticky_key.clone(), (a, *t));
                    }
                }
            }
            let mut repaired = declined.len() != r.declined.len() || r.last_agent.is_some();
            let mut next_step = r.next_step;
            let queue = match e.queue_index.get(&r.queue).copied() {
                Some(q) => q,
                None => {
                    if !matches!(state, State::Resolved { .. }) {
                        if let State::Offered { agent, .. } | State::Assigned { agent } = state {
                            lost_agent.push((id, e.agents[agent].id.clone()));
                        }
                        state = State::Waiting;
                    }
                    next_step = 0;
                    repaired = true;
                    e.default_queue
                }
            };
            let mut conv = Conversation {
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
                next_step,
                declined,
                first_reply_at: r.first_reply_at,
                awaiting_since: r.awaiting_since,
                awaiting_seq: r.awaiting_seq,
                offer_seq: r.offer_seq,
                episode: r.episode,
                pending_explanation: r.pending_explanation.clone(),
                after_hours_noted: r.after_hours_noted,
                deadlines: Deadlines::default(),
                last_activity: r.last_activity.unwrap_or(now),
            };
            repaired |= r.last_activity.is_none();
            conv.deadlines = match r.deadlines {
                Some(d) if !repaired => Deadlines {
                    overflow: d.overflow,
                    first: d.first_response,
                    next: d.next_response,
                    resolution: d.resolution,
                },
                _ => {
                    repaired = true;
                    e.legacy_deadlines(&conv)
                }
            };
            match state {
                State::Offered { agent, .. } | State::Assigned { agent } => {
                    let since = taken
                        .get(&(&e.agents[agent].id, id))
                        .copied()
                        .unwrap_or(r.arrival);
                    let ag = &mut e.agents[agent];
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
            if repaired || state != e.state_of(&r.state) {
                repaired_convs.insert(id);
            }
            e.conversations.insert(id, conv);
            e.schedule_conversation_timers(id);
        }
        for q in queues {
            let Some(&qi) = e.queue_index.get(&q.id) else {
                continue;
            };
            e.queues[qi].rr_last = match q.rr_seq {
                Some(seq) => Some(seq_number(seq)),
                None => q
                    .rr_last
                    .as_ref()
                    .and_then(|a| e.agent_index.get(a).copied()),
            };
        }
        let mut repaired_sticky = BTreeSet::new();
        for s in sticky {
            match e.agent_index.get(&s.agent) {
                Some(&a) => {
                    e.sticky.insert(s.key, (a, s.at));
                }
                None => {
                    repaired_sticky.insert(s.key);
                }
            }
        }
        for (key, entry) in legacy_sticky {
            if !e.sticky.contains_key(&key) {
                e.sticky.insert(key.clone(), entry);
                repaired_sticky.insert(key);
            }
        }
        let sticky_timers: Vec<(Timestamp, Timer)> = e
            .sticky
            .iter()
            .map(|(key, (_, at))| {
                let key = key.clone();
                (e.sticky_until(*at), Timer::StickyExpiry { key })
            })
            .collect();
        for (at, t) in sticky_timers {
            e.schedule(at, t);
        }
        match &tenant {
            Some(t) => {
                for (queue, at) in &t.queue_opens {
                    if let Some(&q) = e.queue_index.get(queue) {
                        e.queues[q].open_timer = Some(*at);
                        e.schedule(*at, Timer::QueueOpen { queue: q });
                    }
                }
            }
            None => e.legacy_open_timers(now),
        }
        for a in e.agents.numbers() {
            e.update_agent(a, |ag| ag.removed = false);
        }
        // What the records say needs no writing; what restore changed does.
        e.dirty_agents = repaired_agents.into_iter().map(seq_number).collect();
        e.dirty_convs = repaired_convs;
        e.dirty_queues.clear();
        e.dirty_sticky = repaired_sticky;
        let opens = e.queues.iter().filter(|q| q.open_timer.is_some()).count();
        e.dirty_meta = meta_changed || tenant.map_or(0, |t| t.queue_opens.len()) != opens;
        for a in e.agents.numbers() {
            let ag = &e.agents[a];
            let recorded = agents.iter().find(|r| r.id == ag.id).map(|r| &r.open);
            if recorded != Some(&ag.open) {
                e.dirty_agents.insert(a);
            }
        }
        let mut out = Vec::new();
        // Conversations whose agent is gone wait again and are routed.
        for (id, agent) in lost_agent {
            let queue = e.conversations[&id].queue;
            out.push(Output::Event(RoutingEvent::Requeued {
                conversation: id,
                queue: e.queues[queue].id.clone(),
                from_agent: Some(agent),
                reason: "agent unknown at recovery".into(),
            }));
            e.route_if_waiting(now, id, &mut out);
        }
        // Offline agents hold nothing; agents over capacity after a config change give back
        // their newest conversations.
        for a in e.agents.numbers() {
            if e.agents[a].presence == Presence::Offline {
                e.requeue_agent_conversations(now, a, "agent offline at recovery", &mut out);
            }
            e.enforce_capacity(now, a, &mut out);
        }
        Ok((e, out))
    }

    /// The state a record names, as this engine numbers agents (for spotting repairs).
    fn state_of(&self, r: &StateRecord) -> State {
        let agent = |name: &AgentId| self.agent_index.get(name).copied().unwrap_or(AgentIdx::MAX);
        match r {
            StateRecord::Waiting => State::Waiting,
            StateRecord::Offered { agent: a, expires } => State::Offered {
                agent: agent(a),
                expires: *expires,
            },
            StateRecord::Assigned { agent: a } => State::Assigned { agent: agent(a) },
            StateRecord::Resolved { at } => State::Resolved { at: *at },
        }
    }

    /// Schedules a restored conversation's timers: its offer's expiry, its forgetting, and its
    /// recorded deadlines.
    fn schedule_conversation_timers(&mut self, id: ConversationId) {
        let c = &self.conversations[&id];
        let mut timers = Vec::new();
        match c.state {
            State::Offered { expires, .. } => timers.push((
                expires,
                Timer::OfferExpiry {
                    conv: id,
                    seq: c.offer_seq,
                },
            )),
            State::Resolved { at } => timers.push((self.forget_at(at), Timer::Forget { conv: id })),
            _ => {}
        }
        if !matches!(c.state, State::Resolved { .. }) {
            timers.push((self.expire_at(c.last_activity), Timer::Expire { conv: id }));
        }
        let d = c.deadlines;
        for (kind, at) in [
            (DeadlineKind::Overflow, d.overflow),
            (DeadlineKind::First, d.first),
            (DeadlineKind::Next, d.next),
            (DeadlineKind::Resolution, d.resolution),
        ] {
            if let Some(at) = at {
                timers.push((at, Self::deadline_timer(id, c, kind)));
            }
        }
        for (at, t) in timers {
            self.schedule(at, t);
        }
    }

    /// A conversation's deadlines computed from its state, for records written before
    /// deadlines were recorded (what such an engine used to do on restore).
    fn legacy_deadlines(&self, c: &Conversation) -> Deadlines {
        let mut d = Deadlines::default();
        if matches!(c.state, State::Resolved { .. }) {
            return d;
        }
        let q = &self.queues[c.queue].cfg;
        d.overflow = q
            .overflow
            .get(c.next_step)
            .map(|step| c.entered_queue_at.plus_secs(step.after_secs));
        if c.first_reply_at.is_none() {
            d.first = q.sla.first_response_secs.map(|s| c.created_at.plus_secs(s));
        }
        if let (Some(s), Some(_), Some(since)) =
            (q.sla.next_response_secs, c.first_reply_at, c.awaiting_since)
        {
            d.next = Some(since.plus_secs(s));
        }
        d.resolution = q.sla.resolution_secs.map(|s| c.created_at.plus_secs(s));
        d
    }

    /// Opening timers for closed queues with waiting conversations, for changelogs written
    /// before the tenant record carried them.
    fn legacy_open_timers(&mut self, now: Timestamp) {
        let closed: BTreeSet<QueueIdx> = self
            .conversations
            .values()
            .filter(|c| c.state == State::Waiting)
            .map(|c| c.queue)
            .filter(|q| {
                self.queues[*q]
                    .cfg
                    .hours
                    .as_ref()
                    .is_some_and(|h| !h.is_open(now))
            })
            .collect();
        for q in closed {
            let at = self.queues[q]
                .cfg
                .hours
                .as_ref()
                .and_then(|h| h.next_open(now));
            self.set_open_timer(q, at);
        }
    }
}

/// An agent number from a record's `seq`.
fn seq_number(seq: u64) -> AgentIdx {
    AgentIdx::try_from(seq).unwrap_or(AgentIdx::MAX)
}
