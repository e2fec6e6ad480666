//! CSAT surveys: one question when an agent's conversation is resolved, and the customer's
//! answer recognised in their next message (a score, not a new request).

use omni_core::{ChannelKind, ConversationId};

use crate::input::Inbound;
use crate::model::Timestamp;
use crate::output::{Observation, ObservationKind, Output, RoutingEvent};

use super::conversation::State;
use super::{touch, Engine, QueueIdx};

impl Engine {
    /// Sends the queue's survey for a conversation just resolved, if it has one for this
    /// channel and an agent handled the contact (`handled`).
    pub(super) fn send_survey(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        kind: ChannelKind,
        queue: QueueIdx,
        handled: bool,
        out: &mut Vec<Output>,
    ) {
        let Some(survey) = self.queues[queue].cfg.csat_survey.clone() else {
            return;
        };
        if !handled || !survey.covers(kind) {
            return;
        }
        let until = now.plus_secs(survey.answer_within_secs);
        let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) else {
            return;
        };
        c.survey_until = Some(until);
        // The sticky key is `<kind>/<account>/<contact>`: the contact is what follows.
        let prefix = kind.as_str().len() + 1 + c.channel.account.len() + 1;
        let recipient = c.sticky_key.get(prefix..).unwrap_or_default().to_owned();
        out.push(Output::Event(RoutingEvent::CsatSurvey {
            conversation: id,
            channel: c.channel.clone(),
            recipient,
            question: survey.question,
            answer_until: until,
        }));
    }

    /// The score a customer message gives, if it answers a pending survey of its (resolved)
    /// conversation.
    pub(super) fn survey_answer(&self, now: Timestamp, msg: &Inbound) -> Option<u8> {
        let c = self.conversations.get(&msg.conversation)?;
        let pending = matches!(c.state, State::Resolved { .. })
            && c.survey_until.is_some_and(|until| now <= until);
        if !pending {
            return None;
        }
        parse_score(&msg.text)
    }

    /// Records the customer's answer: the conversation's CSAT score, credited to its agent.
    pub(super) fn answer_survey(&mut self, id: ConversationId, score: u8, out: &mut Vec<Output>) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        let (queue, channel) = (self.queues[c.queue].id.clone(), c.channel.kind);
        let agent = c
            .handled_by
            .and_then(|a| self.agents.get(a))
            .map(|a| a.id.clone());
        out.push(Output::Event(RoutingEvent::CsatAnswered {
            conversation: id,
            score,
            agent,
        }));
        out.push(Output::Observe(Observation {
            kind: ObservationKind::Csat,
            queue,
            channel,
            value: f64::from(score),
        }));
        self.credit_csat(id, score);
        self.close_survey(id);
    }

    /// No more answers to this conversation's survey (answered, or the customer moved on).
    pub(super) fn close_survey(&mut self, id: ConversationId) {
        if self
            .conversations
            .get(&id)
            .is_some_and(|c| c.survey_until.is_some())
        {
            if let Some(c) = touch(&mut self.changes.convs, &mut self.conversations, id) {
                c.survey_until = None;
            }
        }
    }
}

/// The score a survey answer gives: the first non-empty line is a score from 1 to 5 and
/// nothing else of substance ("4", "4/5", "4 sao", "5 stars!", "⭐⭐⭐⭐"), whatever follows on
/// later lines (an e-mail's quoted question). Anything else is a message, not an answer.
pub fn parse_score(text: &str) -> Option<u8> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let stars = line.chars().filter(|c| matches!(c, '⭐' | '★')).count();
    if stars > 0
        && line
            .chars()
            .all(|c| matches!(c, '⭐' | '★' | '\u{fe0f}') || c.is_whitespace())
    {
        return u8::try_from(stars).ok().filter(|s| (1..=5).contains(s));
    }
    let line = line.trim_end_matches(['.', '!', ' ']);
    let mut chars = line.chars();
    let score = chars.next()?.to_digit(10)?;
    if !(1..=5).contains(&score) {
        return None;
    }
    let rest = chars.as_str().trim().to_lowercase();
    let rest = rest.strip_prefix("/5").map_or(rest.as_str(), str::trim);
    let words = ["", "sao", "star", "stars", "điểm", "diem", "⭐", "★"];
    words
        .contains(&rest)
        .then(|| u8::try_from(score).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::parse_score;

    #[test]
    fn scores_are_recognised_and_messages_are_not() {
        for (text, want) in [
            ("5", Some(5)),
            ("  4.\n", Some(4)),
            ("3/5", Some(3)),
            ("5 sao", Some(5)),
            ("4 Stars!", Some(4)),
            ("⭐⭐⭐⭐", Some(4)),
            ("★★", Some(2)),
            (
                "2\n\nOn Mon, Shop wrote:\n> How did we do? Reply 1-5",
                Some(2),
            ),
            ("6", None),
            ("0", None),
            ("⭐⭐⭐⭐⭐⭐", None),
            ("2 more questions please", None),
            ("45", None),
            ("thanks", None),
            ("", None),
        ] {
            assert_eq!(parse_score(text), want, "{text:?}");
        }
    }
}
