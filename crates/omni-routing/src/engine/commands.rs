//! Agent and supervisor commands: profiles, presence, replies, resolution, reopening, transfers.

use omni_core::{ChannelKind, ConversationId};
use std::collections::BTreeMap;

use crate::input::{AgentProfile, Command, TransferTarget};
use crate::model::{AgentId, Presence, Timestamp};
use crate::output::{Explanation, Observation, ObservationKind, Output, RoutingEvent, SlaKind};

use super::agents::Agent;
use super::conversation::{DeadlineKind, State};
use super::timers::{SlaKindOrd, Timer};
use super::{reject, touch, AgentIdx, Engine};

impl Engine {
    pub(super) fn command(&mut self, now: Timestamp, cmd: &Command, out: &mut Vec<Output>) {
        let first = out.len();
        self.apply_command(now, cmd, out);
        // A command that names a conversation and is applied is activity on it.
        let named = match cmd {
            Command::Accept { conversation, .. }
            | Command::Decline { conversation, .. }
            | Command::AgentReplied { conversation, .. }
            | Command::Transfer { conversation, .. }
            | Command::Reopen { conversation }
            | Command::CustomerLeft { conversation } => Some(*conversation),
            _ => None,
        };
        let rejected = out[first..]
            .iter()
            .any(|o| matches!(o, Output::Event(RoutingEvent::Rejected { .. })));
        if let (Some(id), false) = (named, rejected) {
            self.note_activity(now, id);
        }
    }

    fn apply_command(&mut self, now: Timestamp, cmd: &Command, out: &mut Vec<Output>) {
        match cmd {
            Command::UpsertAgent(profile) => self.upsert_agent(now, profile, out),
            Command::RemoveAgent { agent } => {
                let Some(&a) = self.agents.by_name.get(agent) else {
                    return reject(out, None, format!("unknown agent {agent}"));
                };
                // Out of every index first, so nothing is routed back to them.
                self.update_agent(a, |ag| {
                    ag.removed = true;
                    ag.presence = Presence::Offline;
                });
                self.end_wrap_ups(now, a, out);
                self.requeue_agent_conversations(now, a, "agent removed", out);
                self.agents.by_name.remove(agent);
                self.forget_agent(a);
            }
            Command::SetPresence { agent, presence } => {
                let Some(&a) = self.agents.by_name.get(agent) else {
                    return reject(out, None, format!("unknown agent {agent}"));
                };
                self.set_presence(now, a, *presence, out);
            }
            Command::Accept {
                agent,
                conversation,
            } => self.accept(now, agent, *conversation, out),
            Command::Decline {
                agent,
                conversation,
            } => self.decline(now, agent, *conversation, false, out),
            Command::AgentReplied {
                conversation,
                agent,
            } => self.replied(now, *conversation, agent.as_ref(), out),
            Command::Resolve { conversation } => self.resolve(now, *conversation, out),
            Command::Transfer { conversation, to } => self.transfer(now, *conversation, to, out),
            Command::Reopen { conversation } => {
                match self.conversations.get(conversation).map(|c| &c.state) {
                    Some(State::Resolved { .. }) => self.reopen(now, *conversation, out),
                    Some(_) => reject(
                        out,
                        Some(*conversation),
                        "conversation is not resolved".into(),
                    ),
                    None => reject(out, Some(*conversation), "unknown conversation".into()),
                }
            }
            Command::Ready { agent } => {
                let Some(&a) = self.agents.by_name.get(agent) else {
                    return reject(out, None, format!("unknown agent {agent}"));
                };
                self.end_wrap_ups(now, a, out);
            }
            Command::CustomerLeft { conversation } => {
                if !self.conversations.contains_key(conversation) {
                    return reject(out, Some(*conversation), "unknown conversation".into());
                }
                self.abandon(now, *conversation, "customer_left", out);
            }
            Command::Csat {
                conversation,
                score,
            } => {
                let Some(c) = self.conversations.get(conversation) else {
                    return reject(out, Some(*conversation), "unknown conversation".into());
                };
                if !(1..=5).contains(score) {
                    return reject(
                        out,
                        Some(*conversation),
                        format!("CSAT score {score} is not 1-5"),
                    );
                }
                out.push(Output::Observe(Observation {
                    kind: ObservationKind::Csat,
                    queue: self.queues[c.queue].id.clone(),
                    channel: c.channel.kind,
                    value: f64::from(*score),
                }));
                self.credit_csat(*conversation, *score);
                self.close_survey(*conversation);
            }
        }
    }

    fn upsert_agent(&mut self, now: Timestamp, p: &AgentProfile, out: &mut Vec<Output>) {
        for (skill, level) in &p.skills {
            if !(1..=5).contains(level) {
                return reject(
                    out,
                    None,
                    format!("skill {} proficiency {level} is not 1-5", skill.0),
                );
            }
        }
        let skills = self.intern_skills(&p.skills);
        let queues = self.queues_served(&skills);
        let a = match self.agents.by_name.get(&p.agent) {
            Some(&a) => a,
            None => {
                let a = self.agents.next;
                self.agents.next = self.agents.next.saturating_add(1);
                self.changes.tenant = true;
                self.agents.insert(
                    a,
                    Agent {
                        id: p.agent.clone(),
                        removed: false,
                        presence: Presence::Offline,
                        skills: Vec::new(),
                        capacity: 0,
                        channel_capacity: BTreeMap::new(),
                        open: BTreeMap::new(),
                        wrap_up: BTreeMap::new(),
                        open_by_kind: BTreeMap::new(),
                        missed_offers: 0,
                        day: super::kpis::AgentDay {
                            since: now,
                            ..Default::default()
                        },
                        idle_since: now,
                        queues: Vec::new(),
                        indexed: None,
                    },
                );
                self.agents.by_name.insert(p.agent.clone(), a);
                a
            }
        };
        // Availability counters belong to the old queue list: take the agent out of every index
        // first, change the profile, then put them back as the new profile says.
        self.update_agent(a, |ag| ag.removed = true);
        {
            self.changes.agents.insert(a);
            let ag = &mut self.agents[a];
            ag.skills = skills;
            ag.capacity = p.capacity;
            ag.channel_capacity = p.channel_capacity.clone();
        }
        self.agents.set_queues(a, queues);
        self.update_agent(a, |ag| ag.removed = false);
        // Pending offers the agent no longer has the skills for go to someone else.
        let offers: Vec<ConversationId> = self.agents[a]
            .open
            .keys()
            .filter(|id| {
                self.conversations.get(id).is_some_and(|c| {
                    matches!(c.state, State::Offered { .. })
                        && !self
                            .requirement(c.class())
                            .all(|(s, l)| self.agents[a].level(s) >= l)
                })
            })
            .copied()
            .collect();
        for id in offers {
            self.requeue(now, id, "agent no longer has the required skills", out);
        }
        self.enforce_capacity(now, a, out);
        self.drain_agent(now, a, out);
    }

    /// Requeues an agent's newest conversations while they hold more than their capacity
    /// (total or per channel kind) allows, after a capacity cut.
    pub(super) fn enforce_capacity(&mut self, now: Timestamp, a: AgentIdx, out: &mut Vec<Output>) {
        loop {
            let agent = &self.agents[a];
            let over_total = agent.load() > u64::from(agent.capacity);
            let over_kind = |kind: ChannelKind| {
                agent.open_by_kind.get(&kind).copied().unwrap_or(0)
                    > agent
                        .channel_capacity
                        .get(&kind)
                        .copied()
                        .unwrap_or(agent.capacity)
            };
            let victim = agent
                .open
                .iter()
                .filter(|(id, _)| {
                    over_total
                        || self
                            .conversations
                            .get(id)
                            .is_some_and(|c| over_kind(c.channel.kind))
                })
                .max_by_key(|(id, at)| (**at, **id))
                .map(|(id, _)| *id);
            let Some(id) = victim else {
                return;
            };
            self.requeue(now, id, "agent capacity reduced", out);
        }
    }

    pub(super) fn set_presence(
        &mut self,
        now: Timestamp,
        a: AgentIdx,
        presence: Presence,
        out: &mut Vec<Output>,
    ) {
        let before = self.agents[a].presence;
        if before == presence {
            return;
        }
        self.update_agent(a, |ag| {
            ag.presence = presence;
            if presence == Presence::Online {
                ag.idle_since = ag.idle_since.max(now);
                ag.missed_offers = 0;
            }
        });
        match presence {
            Presence::Offline => {
                self.end_wrap_ups(now, a, out);
                self.requeue_agent_conversations(now, a, "agent went offline", out)
            }
            Presence::Away => {
                // Pending offers go to someone who is there; assigned conversations stay.
                let offered: Vec<ConversationId> = self.agents[a]
                    .open
                    .keys()
                    .filter(|id| {
                        matches!(
                            self.conversations.get(id).map(|c| &c.state),
                            Some(State::Offered { .. })
                        )
                    })
                    .copied()
                    .collect();
                for id in offered {
                    self.requeue(now, id, "agent went away", out);
                }
            }
            Presence::Online => self.drain_agent(now, a, out),
        }
    }

    fn replied(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        agent: Option<&AgentId>,
        out: &mut Vec<Output>,
    ) {
        let Some(c) = self.conversations.get(&id) else {
            return reject(out, Some(id), "unknown conversation".into());
        };
        let (q, channel) = (c.queue, c.channel.kind);
        let first = c
            .first_reply_at
            .is_none()
            .then(|| self.sla_secs(q, SlaKind::FirstResponse, c.created_at, now));
        let response = c
            .awaiting_since
            .map(|since| self.sla_secs(q, SlaKind::NextResponse, since, now));
        let holder = match c.state {
            State::Assigned { agent } => Some(agent),
            _ => None,
        };
        let replier = agent
            .and_then(|name| self.agents.by_name.get(name).copied())
            .or(holder);
        let queue = self.queues[q].id.clone();
        if let Some(value) = first {
            out.push(Output::Observe(Observation {
                kind: ObservationKind::FirstResponse,
                queue: queue.clone(),
                channel,
                value,
            }));
        }
        if let Some(value) = response {
            out.push(Output::Observe(Observation {
                kind: ObservationKind::Response,
                queue,
                channel,
                value,
            }));
        }
        // Answered: these targets can no longer be missed.
        self.set_sla_deadline(id, SlaKindOrd::First, None);
        self.set_sla_deadline(id, SlaKindOrd::Next, None);
        if let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) {
            c.first_reply_at.get_or_insert(now);
            c.awaiting_since = None;
        }
        if let Some(a) = replier {
            if let Some(secs) = first {
                self.credit_first_reply(a, secs);
            }
            self.agent_responded(a);
        }
    }

    fn resolve(&mut self, now: Timestamp, id: ConversationId, out: &mut Vec<Output>) {
        let Some(c) = self.conversations.get(&id) else {
            return reject(out, Some(id), "unknown conversation".into());
        };
        if matches!(c.state, State::Resolved { .. }) {
            return reject(out, Some(id), "already resolved".into());
        }
        let assigned = match c.state {
            State::Assigned { agent } => c.assigned_at.map(|at| (agent, at)),
            _ => None,
        };
        self.leave_waiting(id);
        let agent = self.release(id);
        // A resolved conversation never overflows (a reopening enters its queue anew), awaits
        // no reply and cannot be abandoned.
        self.set_deadline(id, DeadlineKind::Overflow, None);
        self.set_sla_deadline(id, SlaKindOrd::Next, None);
        self.set_deadline(id, DeadlineKind::Retry, None);
        self.set_deadline(id, DeadlineKind::Abandon, None);
        let last = self.conversations[&id].last_activity;
        self.timers
            .remove(&(self.expire_at(last), Timer::Expire { conv: id }));
        let (queue, kind, created) = {
            let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) else {
                return;
            };
            c.state = State::Resolved { at: now };
            c.awaiting_since = None;
            c.relax = 0;
            (c.queue, c.channel.kind, c.created_at)
        };
        let qid = self.queues[queue].id.clone();
        out.push(Output::Event(RoutingEvent::Resolved {
            conversation: id,
            agent: agent.map(|a| self.agents[a].id.clone()),
            queue: qid.clone(),
        }));
        out.push(Output::Observe(Observation {
            kind: ObservationKind::Resolution,
            queue: qid.clone(),
            channel: kind,
            value: now.secs_since(created),
        }));
        out.push(Output::Observe(Observation {
            kind: ObservationKind::Resolved,
            queue: qid.clone(),
            channel: kind,
            value: 1.0,
        }));
        self.send_survey(now, id, kind, queue, assigned.is_some(), out);
        if let Some((a, since)) = assigned {
            self.credit_resolution(a, since, now);
            out.push(Output::Observe(Observation {
                kind: ObservationKind::Handling,
                queue: qid,
                channel: kind,
                value: now.secs_since(since),
            }));
            self.start_wrap_up(now, a, id, queue, kind);
        }
        self.schedule(self.forget_at(now), Timer::Forget { conv: id });
        if let Some(a) = agent {
            self.drain_agent(now, a, out);
        }
    }

    pub(super) fn reopen(&mut self, now: Timestamp, id: ConversationId, out: &mut Vec<Output>) {
        self.close_survey(id);
        if let Some(State::Resolved { at }) = self.conversations.get(&id).map(|c| &c.state) {
            let at = self.forget_at(*at);
            self.timers.remove(&(at, Timer::Forget { conv: id }));
        }
        let (queue, kind) = {
            let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) else {
                return;
            };
            c.arrival = now;
            c.state = State::Waiting;
            c.declined.clear();
            c.after_hours_noted = false;
            (c.queue, c.channel.kind)
        };
        out.push(Output::Event(RoutingEvent::Reopened { conversation: id }));
        out.push(Output::Observe(Observation {
            kind: ObservationKind::Reopened,
            queue: self.queues[queue].id.clone(),
            channel: kind,
            value: 1.0,
        }));
        self.enter_queue(now, id, queue, out);
    }

    fn transfer(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        to: &TransferTarget,
        out: &mut Vec<Output>,
    ) {
        let Some(c) = self.conversations.get(&id) else {
            return reject(out, Some(id), "unknown conversation".into());
        };
        if matches!(c.state, State::Resolved { .. }) {
            return reject(out, Some(id), "conversation is resolved".into());
        }
        match to {
            TransferTarget::Agent(target) => {
                let Some(&t) = self.agents.by_name.get(target) else {
                    return reject(out, Some(id), format!("unknown agent {target}"));
                };
                let current = match c.state {
                    State::Assigned { agent } | State::Offered { agent, .. } => Some(agent),
                    _ => None,
                };
                if current == Some(t) {
                    return reject(out, Some(id), format!("{target} already has it"));
                }
                // The target is checked as if the conversation were waiting (no decline history).
                let mut probe = c.clone();
                probe.declined.clear();
                if !self.can_take(t, &probe) {
                    return reject(
                        out,
                        Some(id),
                        format!(
                            "{target} is not online with free capacity and the required skills"
                        ),
                    );
                }
                let from = self.release(id);
                self.leave_waiting(id);
                if let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) {
                    c.state = State::Waiting;
                }
                let explanation = Explanation {
                    strategy: "transfer".into(),
                    eligible: 1,
                    reason: format!(
                        "transferred{}",
                        from.map(|f| format!(" from {}", self.agents[f].id))
                            .unwrap_or_default()
                    ),
                };
                self.assign_direct(now, id, t, explanation, out);
                if let Some(f) = from {
                    self.drain_agent(now, f, out);
                }
            }
            TransferTarget::Queue(target) => {
                let Some(&q) = self.queues.by_id.get(target) else {
                    return reject(out, Some(id), format!("unknown queue {target}"));
                };
                let from = self.release(id);
                self.leave_waiting(id);
                if let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) {
                    c.state = State::Waiting;
                    c.relax = 0;
                    c.declined.clear();
                }
                out.push(Output::Event(RoutingEvent::Requeued {
                    conversation: id,
                    queue: target.clone(),
                    from_agent: from.map(|f| self.agents[f].id.clone()),
                    reason: "transferred".into(),
                }));
                self.enter_queue(now, id, q, out);
                if let Some(f) = from {
                    self.drain_agent(now, f, out);
                }
            }
        }
    }

    /// Drops a removed agent, who holds nothing any more: the contacts they were sticky for
    /// and the offers they declined forget them, so that their name, if it comes back, is a new
    /// agent in every respect. Their number is never given again.
    fn forget_agent(&mut self, a: AgentIdx) {
        let keys: Vec<String> = self
            .sticky
            .iter()
            .filter(|(_, (s, _))| *s == a)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.set_sticky(key, None);
        }
        let declined: Vec<ConversationId> = self
            .conversations
            .iter()
            .filter(|(_, c)| c.declined.contains(&a))
            .map(|(id, _)| *id)
            .collect();
        for id in declined {
            if let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) {
                c.declined.remove(&a);
            }
        }
        let handled: Vec<ConversationId> = self
            .conversations
            .iter()
            .filter(|(_, c)| c.handled_by == Some(a))
            .map(|(id, _)| *id)
            .collect();
        for id in handled {
            if let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) {
                c.handled_by = None;
            }
        }
        self.changes.agents.insert(a);
        if let Some(agent) = self.agents.remove(a) {
            self.changes.forgotten_agents.insert(a, agent.id);
        }
    }
}
