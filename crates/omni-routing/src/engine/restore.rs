//! Restore: rebuilding an engine from its changelog records so that it decides byte for byte
//! as the engine that wrote them (see the design note in [`super`]).

use omni_core::ConversationId;
use std::collections::{BTreeMap, BTreeSet};

use crate::config::RoutingConfig;
use crate::model::{AgentId, Presence, Timestamp};
use crate::output::{Output, RoutingEvent};
use crate::ConfigError;

use super::agents::{Agent, WrapUp};
use super::conversation::{Conversation, DeadlineKind, Deadlines, State};
use super::state::{
    AgentRecord, ConversationRecord, QueueRecord, StateEntry, StateRecord, StickyRecord,
    TenantRecord,
};
use super::timers::Timer;
use super::{AgentIdx, Engine, QueueIdx};

/// A tenant's records by kind, in the order restore reads them: agents by number (records
/// written before numbering after them, by id), conversations by id.
struct Records {
    agents: Vec<AgentRecord>,
    convs: Vec<ConversationRecord>,
    queues: Vec<QueueRecord>,
    sticky: Vec<StickyRecord>,
    tenant: Option<TenantRecord>,
}

impl Records {
    fn sorted(entries: impl IntoIterator<Item = StateEntry>) -> Self {
        let mut r = Records {
            agents: Vec::new(),
            convs: Vec::new(),
            queues: Vec::new(),
            sticky: Vec::new(),
            tenant: None,
        };
        for entry in entries {
            match entry {
                StateEntry::Agent(a) => r.agents.push(a),
                StateEntry::Conversation(c) => r.convs.push(*c),
                StateEntry::Queue(q) => r.queues.push(q),
                StateEntry::Sticky(s) => r.sticky.push(s),
                StateEntry::Tenant(t) => r.tenant = Some(t),
            }
        }
        // Numbered agents in their creation order; agents from older records after them, by id.
        r.agents
            .sort_by(|a, b| (a.seq == 0, a.seq, &a.id).cmp(&(b.seq == 0, b.seq, &b.id)));
        r.convs.sort_by_key(|c| c.id);
        r
    }
}

/// What restore repaired on its way: records to write again, and what to route again.
#[derive(Default)]
struct Repairs {
    /// Agents renumbered (by their new number).
    agents: BTreeSet<u64>,
    convs: BTreeSet<ConversationId>,
    sticky: BTreeSet<String>,
    /// Conversations whose agent is unknown, with that agent's name, in the order found.
    lost_agent: Vec<(ConversationId, AgentId)>,
    /// Sticky agents read from conversation records written before sticky records existed.
    legacy_sticky: BTreeMap<String, (AgentIdx, Timestamp)>,
}

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
        let records = Records::sorted(entries);
        let mut repairs = Repairs::default();
        let next = e.restore_agents(&records, &mut repairs);
        let meta_changed = records
            .tenant
            .as_ref()
            .map_or(next != 1, |t| t.next_agent_seq != next);
        e.agents.next = seq_number(next);
        let taken: BTreeMap<(&AgentId, ConversationId), Timestamp> = records
            .agents
            .iter()
            .flat_map(|a| a.open.iter().map(move |(c, t)| ((&a.id, *c), *t)))
            .collect();
        for r in &records.convs {
            e.restore_conversation(r, &taken, now, &mut repairs);
        }
        e.restore_cursors(&records.queues);
        e.restore_wrap_ups(&records.agents);
        e.restore_sticky(&records.sticky, &mut repairs);
        e.restore_open_timers(records.tenant.as_ref(), now);
        for a in e.agents.numbers() {
            e.update_agent(a, |ag| ag.removed = false);
        }
        e.mark_repaired(&records, &mut repairs, meta_changed);
        let out = e.route_repaired(now, repairs.lost_agent);
        Ok((e, out))
    }

    /// Numbers and inserts the agents (not yet indexed: that waits for their conversations);
    /// returns the number the next new agent gets.
    fn restore_agents(&mut self, records: &Records, repairs: &mut Repairs) -> u64 {
        let mut next = records
            .tenant
            .as_ref()
            .map_or(1, |t| t.next_agent_seq.max(1));
        if next > MAX_AGENT_SEQ {
            next = 1;
        }
        for a in &records.agents {
            let number = if a.seq == 0
                || a.seq > MAX_AGENT_SEQ
                || self.agents.get(seq_number(a.seq)).is_some()
            {
                repairs.agents.insert(next);
                next += 1;
                next - 1
            } else {
                a.seq
            };
            next = next.max(number + 1);
            let idx = seq_number(number);
            let skills = self.intern_skills(&a.skills);
            let queues = self.queues_served(&skills);
            if let Some(old) = self.agents.by_name.insert(a.id.clone(), idx) {
                // Two records for one id cannot come from one key; keep the newer number.
                self.agents.remove(old);
            }
            self.agents.insert(
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
                    wrap_up: BTreeMap::new(),
                    open_by_kind: BTreeMap::new(),
                    missed_offers: a.missed_offers,
                    day: a.today.unwrap_or_default(),
                    idle_since: a.idle_since,
                    queues,
                    indexed: None,
                },
            );
        }
        next
    }

    /// Rebuilds one conversation, puts it with its agent or in its queue, and schedules its
    /// timers. `taken` says when each agent took each conversation.
    fn restore_conversation(
        &mut self,
        r: &ConversationRecord,
        taken: &BTreeMap<(&AgentId, ConversationId), Timestamp>,
        now: Timestamp,
        repairs: &mut Repairs,
    ) {
        let id = r.id;
        let (conv, repaired) = self.conversation_from_record(r, now, repairs);
        let state = conv.state.clone();
        match state {
            State::Offered { agent, .. } | State::Assigned { agent } => {
                let since = taken
                    .get(&(&self.agents[agent].id, id))
                    .copied()
                    .unwrap_or(r.arrival);
                let ag = &mut self.agents[agent];
                ag.open.insert(id, since);
                *ag.open_by_kind.entry(conv.channel.kind).or_insert(0) += 1;
            }
            State::Waiting => {
                let key = (conv.wait_key(self.queues.aging_ms), id);
                self.queues[conv.queue].waiting.insert(conv.class(), key);
                if conv.relax > 0 {
                    self.queues.relaxed.insert(conv.class(), key);
                }
            }
            State::Resolved { .. } => {}
        }
        if repaired || state != self.state_of(&r.state) {
            repairs.convs.insert(id);
        }
        self.conversations.insert(id, conv);
        self.schedule_conversation_timers(id);
    }

    /// A conversation as its record says, repaired where the record no longer fits (an unknown
    /// agent or queue, an older writer); `true` when anything was repaired.
    fn conversation_from_record(
        &mut self,
        r: &ConversationRecord,
        now: Timestamp,
        repairs: &mut Repairs,
    ) -> (Conversation, bool) {
        let id = r.id;
        let extra = self.intern_skills(&r.extra_skills);
        let mut state = self.state_from_record(id, &r.state, &mut repairs.lost_agent);
        let agent_of = |name: &AgentId| self.agents.by_name.get(name).copied();
        let declined: BTreeSet<AgentIdx> = r.declined.iter().filter_map(agent_of).collect();
        if let Some((a, t)) = &r.last_agent {
            if let Some(a) = agent_of(a) {
                let newer = repairs
                    .legacy_sticky
                    .get(&r.sticky_key)
                    .is_none_or(|(_, old)| *old < *t);
                if newer {
                    repairs.legacy_sticky.insert(r.sticky_key.clone(), (a, *t));
                }
            }
        }
        let mut repaired = declined.len() != r.declined.len() || r.last_agent.is_some();
        let mut next_step = r.next_step;
        let queue = match self.queues.by_id.get(&r.queue).copied() {
            Some(q) => q,
            None => {
                if !matches!(state, State::Resolved { .. }) {
                    if let State::Offered { agent, .. } | State::Assigned { agent } = state {
                        repairs.lost_agent.push((id, self.agents[agent].id.clone()));
                    }
                    state = State::Waiting;
                }
                next_step = 0;
                repaired = true;
                self.queues.default
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
            state,
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
            assigned_at: r.assigned_at,
            handled_by: r.handled_by.as_ref().and_then(agent_of),
            survey_until: r.survey_until,
        };
        repaired |= r.last_activity.is_none();
        conv.deadlines = match r.deadlines {
            Some(d) if !repaired => Deadlines {
                overflow: d.overflow,
                first: d.first_response,
                next: d.next_response,
                resolution: d.resolution,
                first_risk: d.first_response_at_risk,
                next_risk: d.next_response_at_risk,
                resolution_risk: d.resolution_at_risk,
                retry: d.declined_retry,
                abandon: d.abandon,
            },
            _ => {
                repaired = true;
                self.legacy_deadlines(&conv)
            }
        };
        (conv, repaired)
    }

    /// A recorded state with agents numbered; a conversation whose agent is unknown waits
    /// again (and is noted in `lost`, to be requeued once everything is restored).
    fn state_from_record(
        &self,
        id: ConversationId,
        r: &StateRecord,
        lost: &mut Vec<(ConversationId, AgentId)>,
    ) -> State {
        let mut agent_of = |name: &AgentId| {
            let found = self.agents.by_name.get(name).copied();
            if found.is_none() {
                lost.push((id, name.clone()));
            }
            found
        };
        match r {
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
        }
    }

    /// Wrap-ups in progress, with their timers (a queue no longer configured is measured
    /// under the default queue).
    fn restore_wrap_ups(&mut self, agents: &[AgentRecord]) {
        for r in agents {
            let Some(&a) = self.agents.by_name.get(&r.id) else {
                continue;
            };
            for (id, w) in &r.wrap_up {
                let queue = self
                    .queues
                    .by_id
                    .get(&w.queue)
                    .copied()
                    .unwrap_or(self.queues.default);
                let ag = &mut self.agents[a];
                ag.wrap_up.insert(
                    *id,
                    WrapUp {
                        since: w.since,
                        until: w.until,
                        kind: w.kind,
                        queue,
                    },
                );
                *ag.open_by_kind.entry(w.kind).or_insert(0) += 1;
                self.schedule(
                    w.until,
                    Timer::WrapUpEnd {
                        agent: a,
                        conv: *id,
                    },
                );
            }
        }
    }

    /// Round-robin cursors, by number (or by name in records written before numbering).
    fn restore_cursors(&mut self, queues: &[QueueRecord]) {
        for q in queues {
            let Some(&qi) = self.queues.by_id.get(&q.id) else {
                continue;
            };
            self.queues[qi].recent = q
                .recent_assignments
                .iter()
                .rev()
                .take(super::work::RECENT_ASSIGNMENTS)
                .rev()
                .copied()
                .collect();
            self.queues[qi].rr_last = match q.rr_seq {
                Some(seq) => Some(seq_number(seq)),
                None => q
                    .rr_last
                    .as_ref()
                    .and_then(|a| self.agents.by_name.get(a).copied()),
            };
        }
    }

    /// Sticky agents from their records, then from older conversation records, with their
    /// expiry timers; entries naming an unknown agent are dropped (and rewritten).
    fn restore_sticky(&mut self, sticky: &[StickyRecord], repairs: &mut Repairs) {
        for s in sticky {
            match self.agents.by_name.get(&s.agent) {
                Some(&a) => {
                    self.sticky.insert(s.key.clone(), (a, s.at));
                }
                None => {
                    repairs.sticky.insert(s.key.clone());
                }
            }
        }
        for (key, entry) in std::mem::take(&mut repairs.legacy_sticky) {
            if !self.sticky.contains_key(&key) {
                self.sticky.insert(key.clone(), entry);
                repairs.sticky.insert(key);
            }
        }
        let sticky_timers: Vec<(Timestamp, Timer)> = self
            .sticky
            .iter()
            .map(|(key, (_, at))| {
                let key = key.clone();
                (self.sticky_until(*at), Timer::StickyExpiry { key })
            })
            .collect();
        for (at, t) in sticky_timers {
            self.schedule(at, t);
        }
    }

    /// Closed queues' opening timers, from the tenant record (or recomputed without one).
    fn restore_open_timers(&mut self, tenant: Option<&TenantRecord>, now: Timestamp) {
        match tenant {
            Some(t) => {
                if let Some(at) = t.kpi_day_end {
                    self.day_end = Some(at);
                    self.schedule(at, Timer::DayEnd);
                }
                for (queue, at) in &t.queue_opens {
                    if let Some(&q) = self.queues.by_id.get(queue) {
                        self.queues[q].open_timer = Some(*at);
                        self.schedule(*at, Timer::QueueOpen { queue: q });
                    }
                }
            }
            None => self.legacy_open_timers(now),
        }
    }

    /// Leaves in the changelog exactly what restore changed: what the records say needs no
    /// writing.
    fn mark_repaired(&mut self, records: &Records, repairs: &mut Repairs, meta_changed: bool) {
        self.changes.agents = std::mem::take(&mut repairs.agents)
            .into_iter()
            .map(seq_number)
            .collect();
        self.changes.convs = std::mem::take(&mut repairs.convs);
        self.changes.queues.clear();
        self.changes.sticky = std::mem::take(&mut repairs.sticky);
        let opens = self
            .queues
            .iter()
            .filter(|q| q.open_timer.is_some())
            .count();
        self.changes.tenant = meta_changed
            || records.tenant.as_ref().map_or(0, |t| t.queue_opens.len()) != opens
            || records.tenant.as_ref().and_then(|t| t.kpi_day_end) != self.day_end;
        for a in self.agents.numbers() {
            let ag = &self.agents[a];
            let recorded = records
                .agents
                .iter()
                .find(|r| r.id == ag.id)
                .map(|r| &r.open);
            if recorded != Some(&ag.open) {
                self.changes.agents.insert(a);
            }
        }
    }

    /// The repairs that are decisions: conversations whose agent is gone, held by an offline
    /// agent or beyond a lowered capacity wait again and are routed.
    fn route_repaired(
        &mut self,
        now: Timestamp,
        lost_agent: Vec<(ConversationId, AgentId)>,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        for (id, agent) in lost_agent {
            let queue = self.conversations[&id].queue;
            out.push(Output::Event(RoutingEvent::Requeued {
                conversation: id,
                queue: self.queues[queue].id.clone(),
                from_agent: Some(agent),
                reason: "agent unknown at recovery".into(),
            }));
            self.route_if_waiting(now, id, &mut out);
        }
        for a in self.agents.numbers() {
            if self.agents[a].presence == Presence::Offline {
                self.requeue_agent_conversations(now, a, "agent offline at recovery", &mut out);
            }
            self.enforce_capacity(now, a, &mut out);
        }
        out
    }

    /// The state a record names, as this engine numbers agents (for spotting repairs).
    fn state_of(&self, r: &StateRecord) -> State {
        let agent = |name: &AgentId| {
            self.agents
                .by_name
                .get(name)
                .copied()
                .unwrap_or(AgentIdx::MAX)
        };
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
        let mut d = c.deadlines;
        for kind in DeadlineKind::ALL {
            if let Some(at) = *d.slot(kind) {
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
/// The highest agent number a restore accepts. Agents live in a vector indexed by number, so a
/// damaged record with a huge number would make the restore allocate without bound; an agent
/// numbered above it (no tenant creates a million agents) is numbered again, as a repair.
pub(super) const MAX_AGENT_SEQ: u64 = 1 << 20;

pub(super) fn seq_number(seq: u64) -> AgentIdx {
    AgentIdx::try_from(seq).unwrap_or(AgentIdx::MAX)
}
