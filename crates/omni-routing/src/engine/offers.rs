//! Offers and holding: giving a conversation to an agent (an offer or an assignment), taking it
//! back (decline, timeout, requeue), and routing it again.

use omni_core::{ChannelKind, ConversationId};

use crate::model::{AgentId, Timestamp};
use crate::output::{Explanation, Observation, ObservationKind, Output, RoutingEvent};

use super::conversation::{DeadlineKind, State};
use super::timers::Timer;
use super::{reject, touch, AgentIdx, Engine};

/// How an agent holds a conversation being assigned to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// As an offer (now accepted): their idle time restarts at the assignment.
    Offer,
    /// Taken just now, in the same step: their idle time restarted with it.
    JustTaken,
}

impl Engine {
    /// Gives a waiting conversation to `agent`: an offer, or an assignment in auto-assign queues.
    pub(super) fn take(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        a: AgentIdx,
        explanation: Explanation,
        out: &mut Vec<Output>,
    ) {
        self.leave_waiting(id);
        let (kind, queue) = {
            let c = &self.conversations[&id];
            (c.channel.kind, c.queue)
        };
        let timeout = self.queues[queue].cfg.offer_timeout_secs;
        let held = if timeout.is_some() {
            Held::Offer
        } else {
            Held::JustTaken
        };
        self.hold(now, a, id, kind, held);
        match timeout {
            Some(secs) => {
                let expires = now.plus_secs(secs);
                let seq = {
                    let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id)
                    else {
                        return;
                    };
                    c.offer_seq += 1;
                    c.state = State::Offered { agent: a, expires };
                    c.pending_explanation = Some(explanation);
                    c.offer_seq
                };
                self.schedule(expires, Timer::OfferExpiry { conv: id, seq });
                out.push(Output::Event(RoutingEvent::Offered {
                    conversation: id,
                    agent: self.agents[a].id.clone(),
                    queue: self.queues[queue].id.clone(),
                    expires_at: expires,
                }));
            }
            None => self.assign(now, id, a, explanation, held, out),
        }
    }

    /// Puts a conversation in agent `a`'s hands: a place taken (and for an assignment, the
    /// agent's idle time restarts), in one agent update so that the index moves once.
    fn hold(
        &mut self,
        now: Timestamp,
        a: AgentIdx,
        id: ConversationId,
        kind: ChannelKind,
        held: Held,
    ) {
        self.update_agent(a, |agent| {
            agent.open.insert(id, now);
            *agent.open_by_kind.entry(kind).or_insert(0) += 1;
            if held == Held::JustTaken {
                agent.idle_since = agent.idle_since.max(now);
            }
        });
    }

    /// Makes a conversation the agent holds theirs (`held` says how they hold it).
    fn assign(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        a: AgentIdx,
        explanation: Explanation,
        held: Held,
        out: &mut Vec<Output>,
    ) {
        self.cancel_offer_timer(id);
        let (queue, kind, arrival, sticky_key) = {
            let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) else {
                return;
            };
            c.state = State::Assigned { agent: a };
            c.declined.clear();
            c.pending_explanation = None;
            c.assigned_at = Some(now);
            c.handled_by = Some(a);
            (c.queue, c.channel.kind, c.arrival, c.sticky_key.clone())
        };
        self.set_deadline(id, DeadlineKind::Retry, None);
        self.set_deadline(id, DeadlineKind::Abandon, None);
        self.note_assignment(now, queue);
        if held == Held::Offer {
            self.update_agent(a, |agent| agent.idle_since = agent.idle_since.max(now));
        }
        self.set_sticky(sticky_key, Some((a, now)));
        out.push(Output::Event(RoutingEvent::Assigned {
            conversation: id,
            agent: self.agents[a].id.clone(),
            queue: self.queues[queue].id.clone(),
            explanation,
        }));
        out.push(Output::Observe(Observation {
            kind: ObservationKind::QueueWait,
            queue: self.queues[queue].id.clone(),
            channel: kind,
            value: now.secs_since(arrival),
        }));
    }

    /// Assigns without an offer (transfers go straight to the named agent).
    pub(super) fn assign_direct(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        a: AgentIdx,
        explanation: Explanation,
        out: &mut Vec<Output>,
    ) {
        let kind = self.conversations[&id].channel.kind;
        self.hold(now, a, id, kind, Held::JustTaken);
        self.assign(now, id, a, explanation, Held::JustTaken, out);
    }

    /// Detaches a conversation from the agent holding it (offer or assignment); returns them.
    pub(super) fn release(&mut self, id: ConversationId) -> Option<AgentIdx> {
        let c = self.conversations.get(&id)?;
        let agent = match c.state {
            State::Offered { agent, .. } | State::Assigned { agent } => agent,
            _ => return None,
        };
        let kind = c.channel.kind;
        self.cancel_offer_timer(id);
        self.update_agent(agent, |ag| {
            ag.open.remove(&id);
            if let Some(n) = ag.open_by_kind.get_mut(&kind) {
                *n = n.saturating_sub(1);
            }
        });
        Some(agent)
    }

    /// The agent, if `agent` names the one a pending offer of `id` is for.
    fn offered_to(&self, agent: &AgentId, id: ConversationId) -> Option<AgentIdx> {
        let a = self.agents.by_name.get(agent).copied()?;
        match self.conversations.get(&id).map(|c| &c.state) {
            Some(State::Offered { agent: o, .. }) if *o == a => Some(a),
            _ => None,
        }
    }

    pub(super) fn accept(
        &mut self,
        now: Timestamp,
        agent: &AgentId,
        id: ConversationId,
        out: &mut Vec<Output>,
    ) {
        match self.offered_to(agent, id) {
            Some(a) => {
                self.agent_responded(a);
                let explanation = self
                    .conversations
                    .get_mut(&id)
                    .and_then(|c| c.pending_explanation.take())
                    .unwrap_or_else(|| Explanation {
                        strategy: "offer".into(),
                        eligible: 0,
                        reason: "accepted".into(),
                    });
                self.assign(now, id, a, explanation, Held::Offer, out);
            }
            _ => reject(
                out,
                Some(id),
                format!("no pending offer of this conversation to {agent}"),
            ),
        }
    }

    pub(super) fn decline(
        &mut self,
        now: Timestamp,
        agent: &AgentId,
        id: ConversationId,
        timed_out: bool,
        out: &mut Vec<Output>,
    ) {
        let Some(a) = self.offered_to(agent, id) else {
            return reject(
                out,
                Some(id),
                format!("no pending offer of this conversation to {agent}"),
            );
        };
        self.release(id);
        let (queue, kind) = {
            let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) else {
                return;
            };
            c.declined.insert(a);
            c.state = State::Waiting;
            c.pending_explanation = None;
            (c.queue, c.channel.kind)
        };
        self.join_waiting(id);
        out.push(Output::Event(RoutingEvent::OfferDeclined {
            conversation: id,
            agent: self.agents[a].id.clone(),
            timed_out,
        }));
        out.push(Output::Observe(Observation {
            kind: if timed_out {
                ObservationKind::OfferTimedOut
            } else {
                ObservationKind::OfferDeclined
            },
            queue: self.queues[queue].id.clone(),
            channel: kind,
            value: 1.0,
        }));
        let retry = now.plus_secs(self.queues[queue].cfg.declined_retry_secs);
        self.set_deadline(id, DeadlineKind::Retry, Some(retry));
        if timed_out {
            self.missed_offer(now, a, queue, kind, out);
        } else {
            self.agent_responded(a);
        }
        self.catch_up_overflow(now, id, out);
        self.route_if_waiting(now, id, out);
        self.drain_agent(now, a, out);
    }

    pub(super) fn requeue_agent_conversations(
        &mut self,
        now: Timestamp,
        a: AgentIdx,
        reason: &str,
        out: &mut Vec<Output>,
    ) {
        let open: Vec<ConversationId> = self.agents[a].open.keys().copied().collect();
        for id in open {
            self.requeue(now, id, reason, out);
        }
    }

    /// Takes a conversation from its agent and puts it back in its queue with its original
    /// arrival time, then routes it (to someone else if possible).
    pub(super) fn requeue(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        reason: &str,
        out: &mut Vec<Output>,
    ) {
        let Some(agent) = self.release(id) else {
            return;
        };
        let queue = self.conversations[&id].queue;
        out.push(Output::Event(RoutingEvent::Requeued {
            conversation: id,
            queue: self.queues[queue].id.clone(),
            from_agent: Some(self.agents[agent].id.clone()),
            reason: reason.to_owned(),
        }));
        {
            let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) else {
                return;
            };
            c.state = State::Waiting;
        }
        self.join_waiting(id);
        self.catch_up_overflow(now, id, out);
        self.route_if_waiting(now, id, out);
        self.drain_agent(now, agent, out);
    }

    /// Routes a conversation that is (still) waiting in its current queue, or applies the
    /// queue's after-hours rule; after an overflow step it may already sit elsewhere.
    pub(super) fn route_if_waiting(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        out: &mut Vec<Output>,
    ) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        if c.state != State::Waiting {
            return;
        }
        let queue = c.queue;
        if self.queue_open(queue, now) {
            self.route_conversation(now, id, out);
        } else {
            self.after_hours(now, id, queue, out);
        }
    }

    /// Applies an overflow step that fell due while the conversation was offered or assigned,
    /// now that it waits again (its timer found it not waiting and did nothing).
    fn catch_up_overflow(&mut self, now: Timestamp, id: ConversationId, out: &mut Vec<Output>) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        let due = self.queues[c.queue]
            .cfg
            .overflow
            .get(c.next_step)
            .map(|step| c.entered_queue_at.plus_secs(step.after_secs));
        if due.is_some_and(|at| at <= now) {
            let (epoch, step) = (c.queue_epoch, c.next_step);
            self.overflow(now, id, epoch, step, out);
        }
    }
}
