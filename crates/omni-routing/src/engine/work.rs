//! Agent work states and the customer's patience: wrap-up after a resolution, an agent who
//! stops answering offers, a customer who stops waiting, and how long a new one will wait.

use omni_core::{ChannelKind, ConversationId};

use crate::model::{Presence, Timestamp};
use crate::output::{Observation, ObservationKind, Output, RoutingEvent};

use super::agents::WrapUp;
use super::conversation::{DeadlineKind, State};
use super::timers::Timer;
use super::{AgentIdx, Engine, QueueIdx};

/// Assignments remembered per queue for the wait estimate: enough to smooth one agent's
/// quick resolution, few enough to follow a change of pace within minutes.
pub(super) const RECENT_ASSIGNMENTS: usize = 20;

impl Engine {
    /// Starts after-conversation work for agent `a` on the conversation just resolved, when its
    /// queue asks for wrap-up: the place stays taken until the time passes or they are ready.
    pub(super) fn start_wrap_up(
        &mut self,
        now: Timestamp,
        a: AgentIdx,
        id: ConversationId,
        queue: QueueIdx,
        kind: ChannelKind,
    ) {
        let Some(secs) = self.queues[queue].cfg.wrap_up_secs else {
            return;
        };
        let Some(agent) = self.agents.get(a) else {
            return;
        };
        if agent.removed || agent.presence == Presence::Offline {
            return;
        }
        let until = now.plus_secs(secs);
        let wrap = WrapUp {
            since: now,
            until,
            kind,
            queue,
        };
        // A reopened conversation resolved again within its first wrap-up: one wrap-up, the
        // later one (and only its timer).
        if let Some(old) = agent.wrap_up.get(&id).map(|w| w.until) {
            self.timers
                .remove(&(old, Timer::WrapUpEnd { agent: a, conv: id }));
        }
        self.update_agent(a, |ag| {
            if ag.wrap_up.insert(id, wrap).is_none() {
                *ag.open_by_kind.entry(kind).or_insert(0) += 1;
            }
        });
        self.schedule(until, Timer::WrapUpEnd { agent: a, conv: id });
    }

    /// Ends one wrap-up (its time passed, or the agent is ready or leaving): the place frees,
    /// the time spent is measured, and the agent takes what waits for them.
    pub(super) fn end_wrap_up(
        &mut self,
        now: Timestamp,
        a: AgentIdx,
        id: ConversationId,
        out: &mut Vec<Output>,
    ) {
        let Some(wrap) = self
            .agents
            .get(a)
            .and_then(|ag| ag.wrap_up.get(&id).copied())
        else {
            return;
        };
        self.timers
            .remove(&(wrap.until, Timer::WrapUpEnd { agent: a, conv: id }));
        self.update_agent(a, |ag| {
            ag.wrap_up.remove(&id);
            if let Some(n) = ag.open_by_kind.get_mut(&wrap.kind) {
                *n = n.saturating_sub(1);
            }
        });
        out.push(Output::Observe(Observation {
            kind: ObservationKind::WrapUp,
            queue: self.queues[wrap.queue].id.clone(),
            channel: wrap.kind,
            value: now.secs_since(wrap.since),
        }));
        self.drain_agent(now, a, out);
    }

    /// Ends every wrap-up of an agent (they are ready, going offline or removed).
    pub(super) fn end_wrap_ups(&mut self, now: Timestamp, a: AgentIdx, out: &mut Vec<Output>) {
        let ids: Vec<ConversationId> = self
            .agents
            .get(a)
            .map(|ag| ag.wrap_up.keys().copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.end_wrap_up(now, a, id, out);
        }
    }

    /// The agent answered something (an offer, a customer): they are there.
    pub(super) fn agent_responded(&mut self, a: AgentIdx) {
        if self.agents.get(a).is_some_and(|ag| ag.missed_offers > 0) {
            self.update_agent(a, |ag| ag.missed_offers = 0);
        }
    }

    /// Agent `a` let an offer of a conversation in `queue` time out: one more in a row, and at
    /// the tenant's limit an online agent is set away, so customers stop waiting on offers
    /// nobody sees.
    pub(super) fn missed_offer(
        &mut self,
        now: Timestamp,
        a: AgentIdx,
        queue: QueueIdx,
        kind: ChannelKind,
        out: &mut Vec<Output>,
    ) {
        self.update_agent(a, |ag| {
            ag.missed_offers = ag.missed_offers.saturating_add(1)
        });
        let limit = self.config.away_after_missed_offers;
        let agent = &self.agents[a];
        if limit == 0 || agent.missed_offers < limit || agent.presence != Presence::Online {
            return;
        }
        out.push(Output::Event(RoutingEvent::AgentAway {
            agent: agent.id.clone(),
            reason: format!("{} offers in a row timed out", agent.missed_offers),
        }));
        out.push(Output::Observe(Observation {
            kind: ObservationKind::AgentAway,
            queue: self.queues[queue].id.clone(),
            channel: kind,
            value: 1.0,
        }));
        self.set_presence(now, a, Presence::Away, out);
    }

    /// Ends a contact whose customer stopped waiting before any agent was assigned (`reason`:
    /// `patience` or `customer_left`): it leaves its queue or its offer, is counted, and is
    /// forgotten. A contact already assigned once is not abandoned.
    pub(super) fn abandon(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        reason: &str,
        out: &mut Vec<Output>,
    ) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        let waiting = matches!(c.state, State::Waiting | State::Offered { .. });
        if !waiting || c.assigned_at.is_some() {
            return;
        }
        let (queue, channel, since) = (
            self.queues[c.queue].id.clone(),
            c.channel.kind,
            c.created_at,
        );
        self.set_deadline(id, DeadlineKind::Abandon, None);
        self.leave_waiting(id);
        let agent = self.release(id);
        out.push(Output::Event(RoutingEvent::Abandoned {
            conversation: id,
            queue: queue.clone(),
            agent: agent.map(|a| self.agents[a].id.clone()),
            waiting_since: since,
            reason: reason.to_owned(),
        }));
        out.push(Output::Observe(Observation {
            kind: ObservationKind::Abandoned,
            queue,
            channel,
            value: 1.0,
        }));
        self.remove_conversation(id);
        if let Some(a) = agent {
            self.drain_agent(now, a, out);
        }
    }

    /// Notes an assignment out of `queue`, for its throughput.
    pub(super) fn note_assignment(&mut self, now: Timestamp, queue: QueueIdx) {
        let recent = &mut self.queues[queue].recent;
        if recent.len() == RECENT_ASSIGNMENTS {
            recent.pop_front();
        }
        recent.push_back(now);
        self.changes.queues.insert(queue);
    }

    /// How long a conversation entering `queue` now with wait key `key` will probably wait, in
    /// seconds: the conversations ahead of it plus itself, at the pace the queue's last
    /// assignments went. 0 when an agent is free and nobody is ahead; `None` when the queue
    /// is closed or has too little history to say.
    pub(super) fn estimate_wait(
        &mut self,
        now: Timestamp,
        queue: QueueIdx,
        key: (i64, ConversationId),
    ) -> Option<u64> {
        if !self.queue_open(queue, now) {
            return None;
        }
        let q = &self.queues[queue];
        let ahead = q.waiting.count_before(&key) as u64;
        if ahead == 0 && q.available_agents > 0 {
            return Some(0);
        }
        let first = *q.recent.front()?;
        let n = q.recent.len() as u64;
        if n < 2 {
            return None;
        }
        let span_ms = now.0.saturating_sub(first.0);
        Some((ahead + 1).saturating_mul(span_ms) / n / 1000)
    }
}
