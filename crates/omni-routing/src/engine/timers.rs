//! Timers and SLA: the one ordered timer set, the deadlines that keep it exact, and what each
//! timer does when it fires (offer expiry, overflow, SLA breach, queue opening, forgetting).

use omni_core::ConversationId;

use crate::config::OverflowAction;
use crate::model::Timestamp;
use crate::output::{Observation, ObservationKind, Output, RoutingEvent, SlaKind};

use super::conversation::{Conversation, DeadlineKind, State};
use super::{touch, AgentIdx, Engine, QueueIdx};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    OfferExpiry {
        conv: ConversationId,
        seq: u64,
    },
    Overflow {
        conv: ConversationId,
        epoch: u64,
        step: usize,
    },
    Sla {
        conv: ConversationId,
        kind: SlaKindOrd,
        seq: u64,
    },
    QueueOpen {
        queue: QueueIdx,
    },
    Forget {
        conv: ConversationId,
    },
    Expire {
        conv: ConversationId,
    },
    StickyExpiry {
        key: String,
    },
    SlaRisk {
        conv: ConversationId,
        kind: SlaKindOrd,
        seq: u64,
    },
    DeclinedRetry {
        conv: ConversationId,
    },
    Abandon {
        conv: ConversationId,
        episode: u64,
    },
    WrapUpEnd {
        agent: AgentIdx,
        conv: ConversationId,
    },
    DayEnd,
}

/// `SlaKind` with an order, for the timer map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum SlaKindOrd {
    First,
    Next,
    Resolution,
}

impl SlaKindOrd {
    pub(super) fn sla(self) -> SlaKind {
        match self {
            SlaKindOrd::First => SlaKind::FirstResponse,
            SlaKindOrd::Next => SlaKind::NextResponse,
            SlaKindOrd::Resolution => SlaKind::Resolution,
        }
    }

    /// The deadline of the target itself.
    pub(super) fn deadline(self) -> DeadlineKind {
        match self {
            SlaKindOrd::First => DeadlineKind::First,
            SlaKindOrd::Next => DeadlineKind::Next,
            SlaKindOrd::Resolution => DeadlineKind::Resolution,
        }
    }

    /// The deadline of its at-risk warning.
    pub(super) fn risk(self) -> DeadlineKind {
        match self {
            SlaKindOrd::First => DeadlineKind::FirstRisk,
            SlaKindOrd::Next => DeadlineKind::NextRisk,
            SlaKindOrd::Resolution => DeadlineKind::ResolutionRisk,
        }
    }
}

impl Engine {
    pub(super) fn schedule(&mut self, at: Timestamp, timer: Timer) {
        self.timers.insert((at, timer));
    }

    /// When a conversation resolved at `at` is forgotten.
    pub(super) fn forget_at(&self, at: Timestamp) -> Timestamp {
        at.plus_secs(self.config.resolved_retention_secs)
    }

    /// When an unresolved conversation last active at `last` expires.
    pub(super) fn expire_at(&self, last: Timestamp) -> Timestamp {
        last.plus_secs(self.config.expire_after_secs)
    }

    /// When a sticky entry made at `at` is forgotten: just after its window.
    pub(super) fn sticky_until(&self, at: Timestamp) -> Timestamp {
        Timestamp(
            at.plus_secs(self.config.sticky_window_secs)
                .0
                .saturating_add(1),
        )
    }

    /// Records activity on a conversation, moving its expiry.
    pub(super) fn note_activity(&mut self, now: Timestamp, id: ConversationId) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        let (old, open) = (c.last_activity, !matches!(c.state, State::Resolved { .. }));
        if open {
            self.timers
                .remove(&(self.expire_at(old), Timer::Expire { conv: id }));
            self.schedule(self.expire_at(now), Timer::Expire { conv: id });
        }
        if old != now {
            if let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) {
                c.last_activity = now;
            }
        }
    }

    /// Abandons an unresolved conversation without activity for `expire_after_secs`: frees its
    /// agent, says so, and forgets it.
    fn expire(&mut self, now: Timestamp, id: ConversationId, out: &mut Vec<Output>) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        if matches!(c.state, State::Resolved { .. }) || self.expire_at(c.last_activity) > now {
            return;
        }
        let (queue, last_activity) = (self.queues[c.queue].id.clone(), c.last_activity);
        self.leave_waiting(id);
        let agent = self.release(id);
        out.push(Output::Event(RoutingEvent::Expired {
            conversation: id,
            queue,
            agent: agent.map(|a| self.agents[a].id.clone()),
            last_activity,
        }));
        self.remove_conversation(id);
        if let Some(a) = agent {
            self.drain_agent(now, a, out);
        }
    }

    /// The timer a conversation's deadline of `kind` stands for, as its fields say now.
    pub(super) fn deadline_timer(
        id: ConversationId,
        c: &Conversation,
        kind: DeadlineKind,
    ) -> Timer {
        match kind {
            DeadlineKind::Overflow => Timer::Overflow {
                conv: id,
                epoch: c.queue_epoch,
                step: c.next_step,
            },
            DeadlineKind::First => Self::sla_timer(id, c, SlaKindOrd::First, false),
            DeadlineKind::Next => Self::sla_timer(id, c, SlaKindOrd::Next, false),
            DeadlineKind::Resolution => Self::sla_timer(id, c, SlaKindOrd::Resolution, false),
            DeadlineKind::FirstRisk => Self::sla_timer(id, c, SlaKindOrd::First, true),
            DeadlineKind::NextRisk => Self::sla_timer(id, c, SlaKindOrd::Next, true),
            DeadlineKind::ResolutionRisk => Self::sla_timer(id, c, SlaKindOrd::Resolution, true),
            DeadlineKind::Retry => Timer::DeclinedRetry { conv: id },
            DeadlineKind::Abandon => Timer::Abandon {
                conv: id,
                episode: c.episode,
            },
        }
    }

    /// The timer of a service-level target (`risk`: of its at-risk warning): it carries the
    /// episode, or for the next-response target the unanswered message it is about.
    fn sla_timer(id: ConversationId, c: &Conversation, kind: SlaKindOrd, risk: bool) -> Timer {
        let seq = match kind {
            SlaKindOrd::First | SlaKindOrd::Resolution => c.episode,
            SlaKindOrd::Next => c.awaiting_seq,
        };
        match risk {
            false => Timer::Sla {
                conv: id,
                kind,
                seq,
            },
            true => Timer::SlaRisk {
                conv: id,
                kind,
                seq,
            },
        }
    }

    /// Schedules (`Some`) or cancels (`None`) one of a conversation's deadlines, replacing any
    /// pending one, so the timer set holds exactly what the conversations' fields say (and a
    /// restored engine, which schedules from those fields, holds the same timers). Call it
    /// before changing the sequence numbers the timer carries.
    pub(super) fn set_deadline(
        &mut self,
        id: ConversationId,
        kind: DeadlineKind,
        at: Option<Timestamp>,
    ) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        let mut d = c.deadlines;
        if *d.slot(kind) == at {
            return;
        }
        let timer = Self::deadline_timer(id, c, kind);
        if let Some(old) = std::mem::replace(d.slot(kind), at) {
            self.timers.remove(&(old, timer.clone()));
        }
        if let Some(at) = at {
            self.timers.insert((at, timer));
        }
        if let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) {
            c.deadlines = d;
        }
    }

    /// A deadline's timer fired (it is out of the timer set already).
    fn fired(&mut self, id: ConversationId, kind: DeadlineKind, at: Timestamp) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        let mut d = c.deadlines;
        if *d.slot(kind) == Some(at) {
            *d.slot(kind) = None;
            if let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) {
                c.deadlines = d;
            }
        }
    }

    /// Cancels a pending offer's expiry (the offer was accepted, declined or withdrawn).
    pub(super) fn cancel_offer_timer(&mut self, id: ConversationId) {
        if let Some(c) = self.conversations.get(&id) {
            if let State::Offered { expires, .. } = c.state {
                let seq = c.offer_seq;
                self.timers
                    .remove(&(expires, Timer::OfferExpiry { conv: id, seq }));
            }
        }
    }

    /// Cancels every timer of a conversation (it is replaced by a new contact, or forgotten).
    pub(super) fn cancel_timers(&mut self, id: ConversationId) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        match c.state {
            State::Resolved { at } => {
                let at = self.forget_at(at);
                self.timers.remove(&(at, Timer::Forget { conv: id }));
            }
            _ => {
                let at = self.expire_at(c.last_activity);
                self.timers.remove(&(at, Timer::Expire { conv: id }));
            }
        }
        self.cancel_offer_timer(id);
        for kind in DeadlineKind::ALL {
            self.set_deadline(id, kind, None);
        }
    }

    /// Forgets a conversation (it must hold no agent): its timers, and its record (a tombstone).
    pub(super) fn remove_conversation(&mut self, id: ConversationId) {
        self.cancel_timers(id);
        self.leave_waiting(id);
        self.changes.convs.insert(id);
        self.conversations.remove(&id);
    }

    /// Sets a queue's one opening timer (the tenant record carries it).
    pub(super) fn set_open_timer(&mut self, queue: QueueIdx, at: Option<Timestamp>) {
        let old = self.queues[queue].open_timer;
        if old == at {
            return;
        }
        if let Some(old) = old {
            self.timers.remove(&(old, Timer::QueueOpen { queue }));
        }
        if let Some(at) = at {
            self.schedule(at, Timer::QueueOpen { queue });
        }
        self.queues[queue].open_timer = at;
        self.changes.tenant = true;
    }

    /// Sets (or clears) a contact's sticky agent.
    pub(super) fn set_sticky(&mut self, key: String, entry: Option<(AgentIdx, Timestamp)>) {
        let old = match entry {
            Some(e) => {
                self.schedule(
                    self.sticky_until(e.1),
                    Timer::StickyExpiry { key: key.clone() },
                );
                self.sticky.insert(key.clone(), e)
            }
            None => self.sticky.remove(&key),
        };
        if let Some((_, at)) = old {
            if entry.is_none_or(|(_, new)| new != at) {
                self.timers.remove(&(
                    self.sticky_until(at),
                    Timer::StickyExpiry { key: key.clone() },
                ));
            }
        }
        self.changes.sticky.insert(key);
    }

    /// A service-level target (`risk`: its at-risk warning) fell due: said and counted unless it
    /// was met, superseded or resolved meanwhile.
    fn sla_fired(
        &mut self,
        conv: ConversationId,
        kind: SlaKindOrd,
        seq: u64,
        at: Timestamp,
        risk: bool,
        out: &mut Vec<Output>,
    ) {
        self.fired(conv, if risk { kind.risk() } else { kind.deadline() }, at);
        let Some((queue, channel)) = self.sla_pending(conv, kind, seq) else {
            return;
        };
        let sla = kind.sla();
        let (event, observed) = if risk {
            let due = self.conversations.get(&conv).and_then(|c| {
                let mut d = c.deadlines;
                *d.slot(kind.deadline())
            });
            let Some(due_at) = due else {
                return;
            };
            let event = RoutingEvent::SlaAtRisk {
                conversation: conv,
                queue: queue.clone(),
                sla,
                due_at,
            };
            (event, ObservationKind::SlaAtRisk(sla))
        } else {
            let event = RoutingEvent::SlaBreached {
                conversation: conv,
                queue: queue.clone(),
                sla,
            };
            (event, ObservationKind::SlaBreach(sla))
        };
        out.push(Output::Event(event));
        out.push(Output::Observe(Observation {
            kind: observed,
            queue,
            channel,
            value: 1.0,
        }));
    }

    /// The queue and channel of a conversation whose target `kind` (of sequence number `seq`)
    /// is still unmet, or `None` when it was met, superseded or resolved.
    fn sla_pending(
        &self,
        id: ConversationId,
        kind: SlaKindOrd,
        seq: u64,
    ) -> Option<(crate::model::QueueId, omni_core::ChannelKind)> {
        let c = self.conversations.get(&id)?;
        let open = !matches!(c.state, State::Resolved { .. });
        let pending = match kind {
            SlaKindOrd::First => c.episode == seq && c.first_reply_at.is_none() && open,
            SlaKindOrd::Next => c.awaiting_seq == seq && c.awaiting_since.is_some() && open,
            SlaKindOrd::Resolution => c.episode == seq && open,
        };
        pending.then(|| (self.queues[c.queue].id.clone(), c.channel.kind))
    }

    /// Sets (from `start`) or cancels (`None`) a service-level target and its at-risk warning,
    /// counting in the queue's opening hours when its SLA says so.
    pub(super) fn set_sla_deadline(
        &mut self,
        id: ConversationId,
        kind: SlaKindOrd,
        start: Option<Timestamp>,
    ) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        let q = &self.queues[c.queue].cfg;
        let secs = match kind {
            SlaKindOrd::First => q.sla.first_response_secs,
            SlaKindOrd::Next => q.sla.next_response_secs,
            SlaKindOrd::Resolution => q.sla.resolution_secs,
        };
        let (due, risk) = match (start, secs) {
            (Some(start), Some(secs)) => {
                let ms = secs.saturating_mul(1000);
                let risk_ms = q
                    .sla
                    .at_risk_percent
                    .map(|p| ms.saturating_mul(u64::from(p)) / 100);
                let business = q.sla.business_hours_only.covers(kind.sla());
                let after = |ms: u64| match (&q.hours, business) {
                    (Some(h), true) => h.after_open_ms(start, ms),
                    _ => Some(Timestamp(start.0.saturating_add(ms))),
                };
                (after(ms), risk_ms.and_then(after))
            }
            _ => (None, None),
        };
        self.set_deadline(id, kind.deadline(), due);
        self.set_deadline(id, kind.risk(), risk);
    }

    /// Seconds from `from` to `to` as queue `queue`'s SLA counts them for target `kind`: in its
    /// opening hours only when its SLA says so.
    pub(super) fn sla_secs(
        &self,
        queue: QueueIdx,
        kind: SlaKind,
        from: Timestamp,
        to: Timestamp,
    ) -> f64 {
        let q = &self.queues[queue].cfg;
        match (&q.hours, q.sla.business_hours_only.covers(kind)) {
            (Some(h), true) => h.open_ms_between(from, to) as f64 / 1000.0,
            _ => to.secs_since(from),
        }
    }

    pub(super) fn tick(&mut self, now: Timestamp, out: &mut Vec<Output>) {
        while self.timers.first().is_some_and(|(at, _)| *at <= now) {
            let Some((at, timer)) = self.timers.pop_first() else {
                break;
            };
            self.fire(now, at, timer, out);
        }
    }

    fn fire(&mut self, now: Timestamp, at: Timestamp, timer: Timer, out: &mut Vec<Output>) {
        match timer {
            Timer::OfferExpiry { conv, seq } => {
                let agent = match self.conversations.get(&conv) {
                    Some(c) if c.offer_seq == seq => match c.state {
                        State::Offered { agent, .. } => Some(agent),
                        _ => None,
                    },
                    _ => None,
                };
                if let Some(a) = agent {
                    let id = self.agents[a].id.clone();
                    self.decline(now, &id, conv, true, out);
                }
            }
            Timer::Overflow { conv, epoch, step } => {
                self.fired(conv, DeadlineKind::Overflow, at);
                self.overflow(now, conv, epoch, step, out)
            }
            Timer::Sla { conv, kind, seq } => self.sla_fired(conv, kind, seq, at, false, out),
            Timer::SlaRisk { conv, kind, seq } => self.sla_fired(conv, kind, seq, at, true, out),
            Timer::DeclinedRetry { conv } => {
                self.fired(conv, DeadlineKind::Retry, at);
                let declined = self
                    .conversations
                    .get(&conv)
                    .is_some_and(|c| !c.declined.is_empty());
                if declined {
                    if let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, conv) {
                        c.declined.clear();
                    }
                    self.route_if_waiting(now, conv, out);
                }
            }
            Timer::Abandon { conv, episode } => {
                self.fired(conv, DeadlineKind::Abandon, at);
                if self
                    .conversations
                    .get(&conv)
                    .is_some_and(|c| c.episode == episode)
                {
                    self.abandon(now, conv, "patience", out);
                }
            }
            Timer::WrapUpEnd { agent, conv } => self.end_wrap_up(now, agent, conv, out),
            Timer::DayEnd => self.end_day(at, out),
            Timer::QueueOpen { queue } => {
                self.queues[queue].open_timer = None;
                self.changes.tenant = true;
                self.queues[queue].open_cache = None;
                if self.queue_open(queue, now) {
                    self.drain_queue(now, queue, out);
                } else if let Some(at) = self.queues[queue]
                    .cfg
                    .hours
                    .as_ref()
                    .and_then(|h| h.next_open(now))
                {
                    self.set_open_timer(queue, Some(at));
                }
            }
            Timer::Expire { conv } => self.expire(now, conv, out),
            Timer::StickyExpiry { key } => self.set_sticky(key, None),
            Timer::Forget { conv } => {
                if self
                    .conversations
                    .get(&conv)
                    .is_some_and(|c| matches!(c.state, State::Resolved { .. }))
                {
                    self.remove_conversation(conv);
                }
            }
        }
    }

    pub(super) fn overflow(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        epoch: u64,
        step: usize,
        out: &mut Vec<Output>,
    ) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        if c.queue_epoch != epoch || c.next_step != step || c.state != State::Waiting {
            return;
        }
        let _ = epoch;
        let queue = c.queue;
        let entered = c.entered_queue_at;
        let Some(action) = self.queues[queue]
            .cfg
            .overflow
            .get(step)
            .map(|s| s.action.clone())
        else {
            return;
        };
        // (A catch-up runs before the step's own timer fired: that timer goes.)
        self.set_deadline(id, DeadlineKind::Overflow, None);
        if let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) {
            c.next_step = step + 1;
        }
        if let Some(next) = self.queues[queue].cfg.overflow.get(step + 1) {
            let at = entered.plus_secs(next.after_secs);
            self.set_deadline(id, DeadlineKind::Overflow, Some(at));
        }
        let from = self.queues[queue].id.clone();
        match action {
            OverflowAction::RelaxProficiency(by) => {
                self.leave_waiting(id);
                {
                    let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id)
                    else {
                        return;
                    };
                    c.relax = c.relax.max(by);
                    c.declined.clear();
                }
                self.join_waiting(id);
                out.push(Output::Event(RoutingEvent::Escalated {
                    conversation: id,
                    from_queue: from.clone(),
                    to_queue: from,
                    action: format!("relax_proficiency({by})"),
                }));
                if self.queue_open(queue, now) {
                    self.route_conversation(now, id, out);
                }
            }
            OverflowAction::SpillTo(target) => {
                let to = self.queues.by_id[&target];
                self.leave_waiting(id);
                // A relaxation belongs to the queue that granted it.
                if let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) {
                    c.declined.clear();
                    c.relax = 0;
                }
                out.push(Output::Event(RoutingEvent::Escalated {
                    conversation: id,
                    from_queue: from,
                    to_queue: target,
                    action: "spill_to".into(),
                }));
                self.enter_queue(now, id, to, out);
            }
        }
    }
}
