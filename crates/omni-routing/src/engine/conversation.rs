//! A conversation's routing state, and the deadlines its record carries.

use omni_core::ChannelRef;
use std::collections::BTreeSet;

use crate::model::Timestamp;
use crate::output::Explanation;

use super::{AgentIdx, QueueIdx, SkillIdx};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum State {
    Waiting,
    Offered { agent: AgentIdx, expires: Timestamp },
    Assigned { agent: AgentIdx },
    Resolved { at: Timestamp },
}

#[derive(Debug, Clone)]
pub(super) struct Conversation {
    pub(super) channel: ChannelRef,
    pub(super) sticky_key: String,
    pub(super) queue: QueueIdx,
    pub(super) priority: i32,
    pub(super) extra_skills: Vec<(SkillIdx, u8)>,
    /// Original arrival: kept through requeues, so a requeued conversation is not sent back.
    pub(super) arrival: Timestamp,
    /// Start of this contact (first customer message), for first response and resolution.
    pub(super) created_at: Timestamp,
    /// When it entered its current queue (overflow steps count from here).
    pub(super) entered_queue_at: Timestamp,
    pub(super) queue_epoch: u64,
    pub(super) state: State,
    pub(super) relax: u8,
    pub(super) next_step: usize,
    pub(super) declined: BTreeSet<AgentIdx>,
    pub(super) first_reply_at: Option<Timestamp>,
    pub(super) awaiting_since: Option<Timestamp>,
    pub(super) awaiting_seq: u64,
    pub(super) offer_seq: u64,
    pub(super) episode: u64,
    pub(super) pending_explanation: Option<Explanation>,
    pub(super) after_hours_noted: bool,
    /// Pending timers of this conversation that its state alone does not determine, so that a
    /// restored engine holds exactly the live one's timers (an offer's expiry and the forget
    /// timer follow from `state`). Each is `Some` while its timer is scheduled; the timer is
    /// removed whenever it is superseded, so no stale timer outlives its reason.
    pub(super) deadlines: Deadlines,
    /// The last customer message, agent reply or command naming it: an unresolved
    /// conversation expires `expire_after_secs` later.
    pub(super) last_activity: Timestamp,
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
}

impl Conversation {
    pub(super) fn wait_key(&self, aging_ms: i64) -> i64 {
        i64::try_from(self.arrival.0).unwrap_or(i64::MAX) - i64::from(self.priority) * aging_ms
    }
}

/// Which of a conversation's [`Deadlines`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeadlineKind {
    Overflow,
    First,
    Next,
    Resolution,
}

impl Deadlines {
    pub(super) fn slot(&mut self, kind: DeadlineKind) -> &mut Option<Timestamp> {
        match kind {
            DeadlineKind::Overflow => &mut self.overflow,
            DeadlineKind::First => &mut self.first,
            DeadlineKind::Next => &mut self.next,
            DeadlineKind::Resolution => &mut self.resolution,
        }
    }
}
