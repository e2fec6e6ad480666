//! A conversation's routing state, and the deadlines its record carries.

use omni_core::ChannelRef;
use std::collections::BTreeSet;

use crate::model::Timestamp;
use crate::output::Explanation;

use super::waiting::ClassRef;
use super::{AgentIdx, QueueIdx, SkillIdx};

/// Where a conversation stands; an offered or assigned one is also in its agent's `open`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum State {
    Waiting,
    Offered { agent: AgentIdx, expires: Timestamp },
    Assigned { agent: AgentIdx },
    Resolved { at: Timestamp },
}

/// One conversation (a contact and its episodes) as the router sees it. Every field is
/// written in its record ([`super::state::ConversationRecord`]), so a restore rebuilds it
/// exactly.
#[derive(Debug, Clone)]
pub(super) struct Conversation {
    pub(super) channel: ChannelRef,
    /// `<channel kind>/<account>/<contact>`: whose sticky agent it looks for.
    pub(super) sticky_key: String,
    /// The queue it waits (or waited last) in.
    pub(super) queue: QueueIdx,
    /// Its queue's priority plus any rule boost; ages with waiting time via the wait key.
    pub(super) priority: i32,
    /// Skills a rule added on top of the queue's.
    pub(super) extra_skills: Vec<(SkillIdx, u8)>,
    /// Original arrival: kept through requeues, so a requeued conversation is not sent back.
    pub(super) arrival: Timestamp,
    /// Start of this contact (first customer message), for first response and resolution.
    pub(super) created_at: Timestamp,
    /// When it entered its current queue (overflow steps count from here).
    pub(super) entered_queue_at: Timestamp,
    /// Queue entries so far: an overflow timer carries the entry it was set for, so a timer
    /// from an earlier entry (before a requeue to another queue, a transfer) is ignored.
    pub(super) queue_epoch: u64,
    pub(super) state: State,
    /// Levels of proficiency that overflow waived (0: none); it belongs to the queue that
    /// granted it and is reset on leaving it.
    pub(super) relax: u8,
    /// The queue's next overflow step (index into its `overflow` list).
    pub(super) next_step: usize,
    /// Agents who declined it or let the offer time out: not offered again while it waits
    /// in this queue.
    pub(super) declined: BTreeSet<AgentIdx>,
    /// The first agent reply of this episode (first-response time and SLA).
    pub(super) first_reply_at: Option<Timestamp>,
    /// The oldest customer message no agent has answered yet (response time, next-response
    /// SLA).
    pub(super) awaiting_since: Option<Timestamp>,
    /// Unanswered-message spells so far: the next-response timer carries it, so a reply
    /// makes an older timer stale.
    pub(super) awaiting_seq: u64,
    /// Offers so far: the offer-expiry timer carries it, so the expiry of an earlier offer of
    /// the same conversation to the same agent is ignored.
    pub(super) offer_seq: u64,
    /// Contacts (a new contact after resolution and the reopen window) so far: the
    /// first-response and resolution timers carry it.
    pub(super) episode: u64,
    /// Why the offered agent was chosen, given with the assignment once they accept.
    pub(super) pending_explanation: Option<Explanation>,
    /// The after-hours notice was given for this wait (said once, not at every attempt).
    pub(super) after_hours_noted: bool,
    /// Pending timers of this conversation that its state alone does not determine, so that a
    /// restored engine holds exactly the live one's timers (an offer's expiry and the forget
    /// timer follow from `state`). Each is `Some` while its timer is scheduled; the timer is
    /// removed whenever it is superseded, so no stale timer outlives its reason.
    pub(super) deadlines: Deadlines,
    /// The last customer message, agent reply or command naming it: an unresolved
    /// conversation expires `expire_after_secs` later.
    pub(super) last_activity: Timestamp,
    /// When its current (or last) agent was assigned in this contact; `None` until the first
    /// assignment. Handling time runs from here to resolution, and a contact never assigned
    /// is one the customer can abandon.
    pub(super) assigned_at: Option<Timestamp>,
    /// The agent it was last assigned to (kept after resolution): a later CSAT score is
    /// theirs.
    pub(super) handled_by: Option<AgentIdx>,
    /// A CSAT survey was sent at resolution and answers count until then.
    pub(super) survey_until: Option<Timestamp>,
}

/// When a conversation's pending timers fire (see [`Conversation::deadlines`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Deadlines {
    /// The overflow step `next_step` of queue entry `queue_epoch`.
    pub(super) overflow: Option<Timestamp>,
    /// The first-response target of episode `episode`.
    pub(super) first: Option<Timestamp>,
    /// The next-response target of customer message `awaiting_seq`.
    pub(super) next: Option<Timestamp>,
    /// The resolution target of episode `episode`.
    pub(super) resolution: Option<Timestamp>,
    /// The at-risk warnings of the three targets above (same sequence numbers).
    pub(super) first_risk: Option<Timestamp>,
    pub(super) next_risk: Option<Timestamp>,
    pub(super) resolution_risk: Option<Timestamp>,
    /// Offering it again to the agents who declined it (the queue's `declined_retry_secs`
    /// after the last refusal).
    pub(super) retry: Option<Timestamp>,
    /// The customer's patience running out (the queue's `abandon_after_secs`) in episode
    /// `episode`.
    pub(super) abandon: Option<Timestamp>,
}

impl Conversation {
    pub(super) fn wait_key(&self, aging_ms: i64) -> i64 {
        i64::try_from(self.arrival.0).unwrap_or(i64::MAX) - i64::from(self.priority) * aging_ms
    }

    /// What an agent needs to take it while it waits (see [`super::waiting`]).
    pub(super) fn class(&self) -> ClassRef<'_> {
        ClassRef {
            queue: self.queue,
            kind: self.channel.kind,
            relax: self.relax,
            extra: &self.extra_skills,
        }
    }
}

/// Which of a conversation's [`Deadlines`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeadlineKind {
    Overflow,
    First,
    Next,
    Resolution,
    FirstRisk,
    NextRisk,
    ResolutionRisk,
    Retry,
    Abandon,
}

impl DeadlineKind {
    /// Every kind, in the order timers are cancelled and restored.
    pub(super) const ALL: [DeadlineKind; 9] = [
        DeadlineKind::Overflow,
        DeadlineKind::First,
        DeadlineKind::Next,
        DeadlineKind::Resolution,
        DeadlineKind::FirstRisk,
        DeadlineKind::NextRisk,
        DeadlineKind::ResolutionRisk,
        DeadlineKind::Retry,
        DeadlineKind::Abandon,
    ];
}

impl Deadlines {
    pub(super) fn slot(&mut self, kind: DeadlineKind) -> &mut Option<Timestamp> {
        match kind {
            DeadlineKind::Overflow => &mut self.overflow,
            DeadlineKind::First => &mut self.first,
            DeadlineKind::Next => &mut self.next,
            DeadlineKind::Resolution => &mut self.resolution,
            DeadlineKind::FirstRisk => &mut self.first_risk,
            DeadlineKind::NextRisk => &mut self.next_risk,
            DeadlineKind::ResolutionRisk => &mut self.resolution_risk,
            DeadlineKind::Retry => &mut self.retry,
            DeadlineKind::Abandon => &mut self.abandon,
        }
    }
}
