//! Arrival and queue choice: a customer message opens or continues a contact, rules pick its
//! queue, and a queue entry starts its overflow clock (or waits for business hours).

use omni_core::{ChannelKind, ConversationId};
use std::collections::{BTreeSet, HashMap};

use crate::config::AfterHours;
use crate::input::Inbound;
use crate::model::{QueueId, Timestamp};
use crate::output::{Observation, ObservationKind, Output, RoutingEvent};

use super::conversation::{Conversation, DeadlineKind, Deadlines, State};
use super::timers::SlaKindOrd;
use super::waiting::Waiting;
use super::{touch, AgentIdx, Engine, QueueIdx, SkillIdx};

/// A rule with its queue resolved and its words lower-cased once, at start-up.
#[derive(Debug, Clone)]
pub(super) struct CompiledRule {
    pub(super) channel: Option<ChannelKind>,
    pub(super) account: Option<String>,
    pub(super) keywords: Vec<String>,
    pub(super) tags: Vec<String>,
    pub(super) language: Option<String>,
    pub(super) queue: QueueIdx,
    pub(super) add_skills: Vec<(SkillIdx, u8)>,
    pub(super) priority_boost: i32,
}

/// The queues, and the waiting conversations across them that overflow relaxed (which an agent
/// outside a queue's skills may take, so draining looks at them too).
#[derive(Debug, Clone)]
pub(super) struct Queues {
    list: Vec<Queue>,
    /// Queue numbers by id, for rules, transfers, spills and records.
    pub(super) by_id: HashMap<QueueId, QueueIdx>,
    /// Where a conversation goes when no rule matches.
    pub(super) default: QueueIdx,
    /// Waiting conversations with relaxed proficiency, across queues, by class and wait key.
    pub(super) relaxed: Waiting,
    /// How much one priority step is worth in waiting time (ms): the wait-key scale.
    pub(super) aging_ms: i64,
}

impl Queues {
    pub(super) fn new(aging_ms: i64) -> Self {
        Queues {
            list: Vec::new(),
            by_id: HashMap::new(),
            default: 0,
            relaxed: Waiting::default(),
            aging_ms,
        }
    }

    pub(super) fn push(&mut self, queue: Queue) {
        self.list.push(queue);
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Queue> {
        self.list.iter()
    }
}

impl std::ops::Index<QueueIdx> for Queues {
    type Output = Queue;
    fn index(&self, q: QueueIdx) -> &Queue {
        &self.list[q]
    }
}

impl std::ops::IndexMut<QueueIdx> for Queues {
    fn index_mut(&mut self, q: QueueIdx) -> &mut Queue {
        &mut self.list[q]
    }
}

/// The rules in configuration order (the first match wins).
#[derive(Debug, Clone, Default)]
pub(super) struct Rules {
    pub(super) list: Vec<CompiledRule>,
    /// Some rule matches keywords, so a message's text is lower-cased (only then).
    pub(super) need_text: bool,
}

/// One queue: its configuration as numbers, its waiting conversations and its cursors.
#[derive(Debug, Clone)]
pub(super) struct Queue {
    pub(super) id: QueueId,
    pub(super) cfg: crate::config::QueueConfig,
    /// The required skills and minimum levels, as numbers sorted by skill.
    pub(super) required: Vec<(SkillIdx, u8)>,
    /// The skill `best_skill` orders by: the highest minimum, ties by name.
    pub(super) primary: Option<SkillIdx>,
    /// Waiting conversations by class, then wait key (`arrival − priority × aging`) and id:
    /// the first of a class is the one to route next, forever, without re-sorting.
    pub(super) waiting: Waiting,
    /// Available agents with the queue's skills: lets a routing attempt skip the walk.
    pub(super) available_agents: usize,
    /// The round-robin cursor: the number of the agent who got the last turn.
    pub(super) rr_last: Option<AgentIdx>,
    /// Business hours of the current minute (minute, open), so a check is not a time-zone
    /// computation each time.
    pub(super) open_cache: Option<(u64, bool)>,
    /// The one pending opening timer while closed with conversations waiting.
    pub(super) open_timer: Option<Timestamp>,
    /// The last assignments out of this queue (at most [`super::work::RECENT_ASSIGNMENTS`]):
    /// its recent throughput, for wait estimates.
    pub(super) recent: std::collections::VecDeque<Timestamp>,
}

impl Engine {
    pub(super) fn inbound(&mut self, now: Timestamp, msg: &Inbound, out: &mut Vec<Output>) {
        let reopen_ms = self.config.reopen_window_secs.saturating_mul(1000);
        let existing = self
            .conversations
            .get(&msg.conversation)
            .map(|c| c.state.clone());
        if let Some(score) = self.survey_answer(now, msg) {
            self.answer_survey(msg.conversation, score, out);
            self.note_activity(now, msg.conversation);
            return;
        }
        self.close_survey(msg.conversation);
        match existing {
            Some(State::Resolved { at }) if now.0.saturating_sub(at.0) <= reopen_ms => {
                self.reopen(now, msg.conversation, out);
                self.note_customer_message(now, msg.conversation);
            }
            Some(State::Resolved { .. }) | None => self.new_contact(now, msg, out),
            Some(_) => self.note_customer_message(now, msg.conversation),
        }
        self.note_activity(now, msg.conversation);
    }

    /// Records an unanswered customer message (for response times and the next-response SLA).
    fn note_customer_message(&mut self, now: Timestamp, id: ConversationId) {
        let first_done = {
            let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) else {
                return;
            };
            if c.awaiting_since.is_some() {
                return;
            }
            c.awaiting_since = Some(now);
            c.awaiting_seq += 1;
            c.first_reply_at.is_some()
        };
        if first_done {
            self.set_sla_deadline(id, SlaKindOrd::Next, Some(now));
        }
    }

    fn new_contact(&mut self, now: Timestamp, msg: &Inbound, out: &mut Vec<Output>) {
        let (queue, priority, extra) = self.choose_queue(msg);
        let episode = self
            .conversations
            .get(&msg.conversation)
            .map_or(0, |c| c.episode + 1);
        // The previous contact's timers go with it.
        self.cancel_timers(msg.conversation);
        let conv = Conversation {
            channel: msg.channel.clone(),
            sticky_key: format!(
                "{}/{}/{}",
                msg.channel.kind.as_str(),
                msg.channel.account,
                msg.contact_id
            ),
            queue,
            priority,
            extra_skills: extra,
            arrival: now,
            created_at: now,
            entered_queue_at: now,
            queue_epoch: 0,
            state: State::Waiting,
            relax: 0,
            next_step: 0,
            declined: BTreeSet::new(),
            first_reply_at: None,
            awaiting_since: Some(now),
            awaiting_seq: 1,
            offer_seq: 0,
            episode,
            pending_explanation: None,
            after_hours_noted: false,
            deadlines: Deadlines::default(),
            last_activity: now,
            assigned_at: None,
            handled_by: None,
            survey_until: None,
        };
        let id = msg.conversation;
        let key = (conv.wait_key(self.queues.aging_ms), id);
        self.changes.convs.insert(id);
        self.conversations.insert(id, conv);
        self.set_sla_deadline(id, SlaKindOrd::First, Some(now));
        self.set_sla_deadline(id, SlaKindOrd::Resolution, Some(now));
        if let Some(secs) = self.queues[queue].cfg.abandon_after_secs {
            self.set_deadline(id, DeadlineKind::Abandon, Some(now.plus_secs(secs)));
        }
        let estimated_wait_secs = self.estimate_wait(now, queue, key);
        out.push(Output::Observe(Observation {
            kind: ObservationKind::Created,
            queue: self.queues[queue].id.clone(),
            channel: msg.channel.kind,
            value: 1.0,
        }));
        out.push(Output::Event(RoutingEvent::Queued {
            conversation: id,
            queue: self.queues[queue].id.clone(),
            priority,
            estimated_wait_secs,
        }));
        self.enter_queue(now, id, queue, out);
    }

    fn choose_queue(&self, msg: &Inbound) -> (QueueIdx, i32, Vec<(SkillIdx, u8)>) {
        let text = if self.rules.need_text {
            msg.text.to_lowercase()
        } else {
            String::new()
        };
        let lang = msg
            .language
            .as_deref()
            .map(|l| l.split(['-', '_']).next().unwrap_or(l).to_ascii_lowercase());
        for rule in &self.rules.list {
            let ok = rule.channel.is_none_or(|k| k == msg.channel.kind)
                && rule
                    .account
                    .as_ref()
                    .is_none_or(|a| *a == msg.channel.account)
                && (rule.keywords.is_empty()
                    || rule.keywords.iter().any(|k| text.contains(k.as_str())))
                && (rule.tags.is_empty() || rule.tags.iter().any(|t| msg.tags.contains(t)))
                && rule
                    .language
                    .as_ref()
                    .is_none_or(|l| lang.as_deref() == Some(l.as_str()));
            if ok {
                let priority = self.queues[rule.queue]
                    .cfg
                    .priority
                    .saturating_add(rule.priority_boost);
                return (rule.queue, priority, rule.add_skills.clone());
            }
        }
        let q = self.queues.default;
        (q, self.queues[q].cfg.priority, Vec::new())
    }

    /// Puts a waiting conversation into `queue` (new epoch, overflow restarts) and tries to
    /// route it: sticky agent first, then the queue's strategy.
    pub(super) fn enter_queue(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        queue: QueueIdx,
        out: &mut Vec<Output>,
    ) {
        self.set_deadline(id, DeadlineKind::Overflow, None);
        {
            let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) else {
                return;
            };
            c.queue = queue;
            c.state = State::Waiting;
            c.entered_queue_at = now;
            c.queue_epoch += 1;
            c.next_step = 0;
        }
        self.join_waiting(id);
        if let Some(step) = self.queues[queue].cfg.overflow.first() {
            let at = now.plus_secs(step.after_secs);
            self.set_deadline(id, DeadlineKind::Overflow, Some(at));
        }
        if !self.queue_open(queue, now) {
            self.after_hours(now, id, queue, out);
            return;
        }
        if !self.try_sticky(now, id, out) {
            self.route_conversation(now, id, out);
        }
    }

    pub(super) fn after_hours(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        queue: QueueIdx,
        out: &mut Vec<Output>,
    ) {
        match self.queues[queue].cfg.after_hours.clone() {
            AfterHours::SpillTo(target) => {
                let to = self.queues.by_id[&target];
                self.leave_waiting(id);
                if let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) {
                    c.relax = 0;
                }
                out.push(Output::Event(RoutingEvent::Escalated {
                    conversation: id,
                    from_queue: self.queues[queue].id.clone(),
                    to_queue: target,
                    action: "after_hours".into(),
                }));
                // A chain of closed queues ends in the last one waiting, never in a loop.
                if self.queue_open(to, now)
                    || matches!(self.queues[to].cfg.after_hours, AfterHours::Wait)
                {
                    self.enter_queue(now, id, to, out);
                } else {
                    self.enter_queue_waiting(now, id, to);
                }
            }
            AfterHours::Wait => {
                let opens = self.queues[queue]
                    .cfg
                    .hours
                    .as_ref()
                    .and_then(|h| h.next_open(now));
                let noted = self
                    .conversations
                    .get(&id)
                    .is_some_and(|c| c.after_hours_noted);
                if !noted {
                    if let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) {
                        c.after_hours_noted = true;
                    }
                    out.push(Output::Event(RoutingEvent::AfterHours {
                        conversation: id,
                        queue: self.queues[queue].id.clone(),
                        opens_at: opens,
                    }));
                }
                if let Some(at) = opens {
                    self.set_open_timer(queue, Some(at));
                }
            }
        }
    }

    /// Enters a queue without routing (the end of an after-hours spill chain).
    fn enter_queue_waiting(&mut self, now: Timestamp, id: ConversationId, queue: QueueIdx) {
        self.set_deadline(id, DeadlineKind::Overflow, None);
        if let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) {
            c.queue = queue;
            c.state = State::Waiting;
            c.entered_queue_at = now;
            c.queue_epoch += 1;
            c.next_step = 0;
        }
        self.join_waiting(id);
    }

    pub(super) fn queue_open(&mut self, queue: QueueIdx, now: Timestamp) -> bool {
        let minute = now.0 / 60_000;
        let q = &mut self.queues[queue];
        let Some(hours) = &q.cfg.hours else {
            return true;
        };
        if let Some((m, open)) = q.open_cache {
            if m == minute {
                return open;
            }
        }
        let open = hours.is_open(now);
        q.open_cache = Some((minute, open));
        open
    }

    /// Queue open state from the per-minute cache, without mutating (cache filled by
    /// `queue_open` on every routing path; a stale cache means "recompute").
    pub(super) fn queue_open_cached(&self, queue: QueueIdx, now: Timestamp) -> bool {
        let q = &self.queues[queue];
        match (&q.cfg.hours, q.open_cache) {
            (None, _) => true,
            (Some(_), Some((m, open))) if m == now.0 / 60_000 => open,
            (Some(h), _) => h.is_open(now),
        }
    }

    /// Puts a waiting conversation into its queue's waiting set (and the relaxed set when
    /// overflow relaxed it), under its current wait key and class.
    pub(super) fn join_waiting(&mut self, id: ConversationId) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        let key = (c.wait_key(self.queues.aging_ms), id);
        self.queues[c.queue].waiting.insert(c.class(), key);
        if c.relax > 0 {
            self.queues.relaxed.insert(c.class(), key);
        }
    }

    /// Removes a conversation from its queue's waiting set (and the relaxed set). Call it
    /// before changing what its wait key or class is made of.
    pub(super) fn leave_waiting(&mut self, id: ConversationId) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        let key = (c.wait_key(self.queues.aging_ms), id);
        self.queues[c.queue].waiting.remove(c.class(), &key);
        if c.relax > 0 {
            self.queues.relaxed.remove(c.class(), &key);
        }
    }
}
