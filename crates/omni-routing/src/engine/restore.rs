//! Restore: rebuilding an engine from its changelog records so that it decides byte for byte
//! as the engine that wrote them (see the design note in [`super`]).

use omni_core::ConversationId;
use std::collections::{BTreeMap, BTreeSet};

use crate::config::RoutingConfig;
use crate::model::{AgentId, Presence, Timestamp};
use crate::output::{Output, RoutingEvent};
use crate::ConfigError;

use super::agents::{queue_bits, Agent};
use super::conversation::{Conversation, DeadlineKind, Deadlines, State};
use super::state::{StateEntry, StateRecord};
use super::timers::Timer;
use super::{AgentIdx, Engine, QueueIdx};

impl Engine {
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
                    queue_bits: queue_bits(&queues_ok, e.queues.len()),
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
pub(super) fn seq_number(seq: u64) -> AgentIdx {
    AgentIdx::try_from(seq).unwrap_or(AgentIdx::MAX)
}
